#!/usr/bin/env bash
# Installs this build of fairshare into the running test host the way an admin
# would on a real host: `make install` (PREFIX=/usr/local) into the container's
# root, then enable the socket and service and add the PAM module with
# pam-auth-update. Run `make` first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
host=$here/testhost.sh

root=$("$host" root)
pamdir=$("$host" nsexec sh -c 'for f in /lib/*-linux-gnu/security/pam_unix.so; do dirname "$f"; break; done')
# the old unit location of earlier test hosts would shadow /usr/local/lib
rm -f "$root/etc/systemd/system/fairshared.service"
make --no-print-directory -C "$repo" install DESTDIR="$root" PREFIX=/usr/local PAMDIR="$pamdir" > /dev/null
"$host" nsexec systemctl daemon-reload
"$host" nsexec systemctl enable --quiet fairshared.socket fairshared.service
"$host" nsexec systemctl restart fairshared.socket fairshared.service
"$host" nsexec env DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable fairshare 2>&1 |
  grep -v '^debconf' || true
echo "fairshare installed in the test host ($("$host" nsexec fairshared --version))"
