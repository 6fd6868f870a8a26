#!/usr/bin/env bash
# Builds target/deb/fairshare_VERSION_ARCH.deb from a `make` build, with
# dpkg-deb (no extra tools): `make install` into a staging root with Debian's
# paths, the maintainer scripts next to this file, and the copyright and
# changelog Debian asks for. `lintian target/deb/*.deb` reports no errors
# (script/test checks it).
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(awk -F'"' '/^version *=/{print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
stage=target/deb/fairshare_${version}_${arch}
doc=$stage/usr/share/doc/fairshare
maintainer="fairshare developers <fairshare@users.noreply.invalid>"
rm -rf "$stage"
make --no-print-directory install DESTDIR="$PWD/$stage" PREFIX=/usr \
  UNITDIR=/lib/systemd/system GENERATORDIR=/lib/systemd/system-generators > /dev/null
gzip -9n "$stage"/usr/share/man/man*/*
# the compiler's version note is of no use on the host
find "$stage" -type f \( -path '*/sbin/fairshared' -o -path '*/bin/fairshare-ctl' -o -name pam_fairshare.so \) \
  -exec objcopy --remove-section=.comment {} \;
install -D -m 644 README.md "$doc/README.md"
install -m 644 etc/policy.d/00-defaults.yaml "$doc/policy.example.yaml"

# copyright (machine-readable), with every crate linked into the programs
{
  cat <<HEAD
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fairshare
Comment: The programs are built with Rust and link these crates statically
 (name, version and license, as each crate declares it):
HEAD
  cargo tree --locked --quiet -e normal --prefix none --format '{p} ({l})' \
    -p fairshared -p fairshare-ctl -p pam_fairshare |
    sed -e 's/ (\/[^)]*)//' -e 's/ (\*)$//' | grep -v -e '^fairshare' -e '^pam_fairshare' -e '(proc-macro)' -e '^$' |
    sort -u | sed 's/^/ /'
  cat <<BODY

Files: *
Copyright: 2026 the fairshare developers
License: MIT or Apache-2.0

License: MIT
$(sed -e '1,/^Copyright/d' -e 's/^$/./' -e 's/^/ /' LICENSE-MIT | sed '1{/^ \.$/d}')

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this software except in compliance with the License.
 .
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in the file /usr/share/common-licenses/Apache-2.0.
BODY
} > "$doc/copyright"
chmod 644 "$doc/copyright"

# changelog (a native package: changelog.gz), dated by the last commit
when=$(git log -1 --format=%cD 2> /dev/null || date -R)
commit=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
cat > "$doc/changelog" <<CHANGES
fairshare ($version) unstable; urgency=medium

  * Built from commit $commit. What changed: the project's history
    (git log) and README.md.

 -- $maintainer  $when
CHANGES
gzip -9n "$doc/changelog"

install -d -m 755 "$stage/DEBIAN"
for f in postinst prerm postrm; do install -m 755 "packaging/deb/$f" "$stage/DEBIAN/$f"; done
printf '%s\n' /etc/fairshare/policy.d/00-defaults.yaml /etc/default/fairshare-metrics > "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 644 "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: fairshare
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: admin
Priority: optional
Installed-Size: $size
Depends: libc6, libpam0g, libpam-runtime, systemd, libpam-systemd, dbus | dbus-system-bus, init-system-helpers (>= 1.54~)
Description: fair CPU, memory and task limits for every user of a shared host
 fairshare gives every user of a shared Linux host (login nodes, build and lab
 servers) fair CPU, memory and task limits on their systemd slice at login,
 through a PAM session module and a small root daemon, fairshared. Users can
 resize their own allocation within the admin's policy with fairshare-ctl.
 A Grafana dashboard and Prometheus alert rules for a fleet of hosts are in
 /usr/share/fairshare/monitoring.
CONTROL
dpkg-deb --root-owner-group --build "$stage" "target/deb/" > /dev/null
echo "target/deb/fairshare_${version}_${arch}.deb"
