#!/usr/bin/env bash
# Builds target/deb/fairshare_VERSION_ARCH.deb from a `make` build, with
# dpkg-deb (no extra tools): `make install` into a staging root with Debian's
# paths, plus the maintainer scripts next to this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(awk -F'"' '/^version *=/{print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
stage=target/deb/fairshare_${version}_${arch}
rm -rf "$stage"
make --no-print-directory install DESTDIR="$PWD/$stage" PREFIX=/usr UNITDIR=/lib/systemd/system > /dev/null
gzip -9n "$stage"/usr/share/man/man*/*
install -D -m 644 README.md "$stage/usr/share/doc/fairshare/README.md"
install -m 644 etc/policy.d/00-defaults.yaml "$stage/usr/share/doc/fairshare/policy.example.yaml"
install -d -m 755 "$stage/DEBIAN"
for f in postinst prerm postrm; do install -m 755 "packaging/deb/$f" "$stage/DEBIAN/$f"; done
echo /etc/fairshare/policy.d/00-defaults.yaml > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: fairshare
Version: $version
Architecture: $arch
Maintainer: fairshare developers <fairshare@users.noreply.invalid>
Section: admin
Priority: optional
Installed-Size: $size
Depends: libc6, libpam0g, libpam-runtime, systemd
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
