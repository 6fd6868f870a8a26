#!/usr/bin/env bash
# Installs a fairshare build into the running test host: the binaries (via
# testhost.sh install), the systemd unit and the example policy, as an admin
# would on a real host. Usage: install-fairshare.sh TARGET_DIR (e.g. target/release)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
host=$here/testhost.sh
dir=${1:?usage: $0 TARGET_DIR}

"$host" install "$dir"
root=$("$host" root)
install -m 644 "$repo/etc/systemd/fairshared.service" "$root/etc/systemd/system/fairshared.service"
install -d "$root/etc/fairshare/policy.d"
[ -e "$root/etc/fairshare/policy.d/00-defaults.yaml" ] ||
  install -m 644 "$repo/etc/policy.d/00-defaults.yaml" "$root/etc/fairshare/policy.d/00-defaults.yaml"
"$host" nsexec systemctl daemon-reload
# PAM: the Debian way, through the pam-auth-update profile (as the package does)
install -m 644 "$repo/etc/pam-configs/fairshare" "$root/usr/share/pam-configs/fairshare"
"$host" nsexec env DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable fairshare
