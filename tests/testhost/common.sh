# common.sh - helpers shared by the two test host scripts, testhost.sh (the container) and
# v2vm.sh (the QEMU guest).  Sourced, not run.  Before sourcing, a script sets
#   LOG_TAG       the name in front of its log lines
# and, before using in_chroot/put/ensure_*, CHROOT_ROOT: the stopped root it prepares.
# shellcheck shell=bash
# Scripts passed to sh -c are single-quoted on purpose (the inner shell expands them):
# shellcheck disable=SC2016

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_TAG" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
phase_start() { PHASE_T=$(now); PHASE_NAME=$1; log "== $1"; }
phase_end() { log "   $PHASE_NAME: done in $(since "$PHASE_T")s"; }

usage() {   # the header comment from "Usage:" up to "Host requirements"
  awk '/^# Usage:/ { p = 1 } /^# Host requirements/ { exit } p' "$0" | sed 's/^# \{0,1\}//'
}

# rm -rf that refuses silly paths and never crosses into another file system.
safe_rm() {
  local p
  for p; do
    case "$p" in ""|/|/var|/var/tmp|/tmp) die "refusing to remove '$p'" ;; esac
    [ -e "$p" ] || [ -L "$p" ] || continue
    rm -rf --one-file-system -- "$p"
  done
}

# take_lock DIR: serialise up/down/purge on DIR/.lock (parallel test runners may all call
# `up`).  The scripts close fd 9 for what they start (container, qemu), so the lock is
# released when the script exits.
take_lock() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  flock 9
}

# Is anything listening on TCP port $1 in the host network namespace?
port_listening() {
  local hex; hex=$(printf '%04X' "$1")
  awk -v h="$hex" '$4 == "0A" { split($2, a, ":"); if (a[2] == h) f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Commands in the stopped root $CHROOT_ROOT.  chroot makes every path, including symlinks a
# previous test run may have left inside, resolve within the root, never on the host.
in_chroot() { chroot "$CHROOT_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# put PATH MODE < CONTENT: write a file inside the root atomically.
put() {
  in_chroot /bin/sh -c 'set -e; umask 022; mkdir -p "$(dirname "$1")"
    cat > "$1.testhost-tmp"; chmod "$2" "$1.testhost-tmp"; mv -f "$1.testhost-tmp" "$1"' sh "$1" "$2"
}

ensure_group() {   # NAME GID
  local cur
  if cur=$(in_chroot getent group "$1"); then
    [ "$(cut -d: -f3 <<< "$cur")" = "$2" ] || in_chroot groupmod -g "$2" "$1"
  else
    in_chroot groupadd -g "$2" "$1"
  fi
}
ensure_user() {    # NAME UID [extra useradd options...]
  local name=$1 uid=$2 cur; shift 2
  if cur=$(in_chroot getent passwd "$name"); then
    [ "$(cut -d: -f3 <<< "$cur")" = "$uid" ] || in_chroot usermod -u "$uid" "$name"
  else
    in_chroot useradd -m -u "$uid" -s /bin/bash "$@" "$name"
  fi
}

# The test users of both hosts, NAME:UID[:GROUP|:system]; tests/e2e/src/lib.rs knows the same
# list (a unit test there compares the two).
TEST_USERS=(testuser:1001 testuser2:1002 student1:1003:students testuser3:1004 svcuser:990:system)
test_user_names() { local s; for s in "${TEST_USERS[@]}"; do printf '%s\n' "${s%%:*}"; done; }

# The group students (1100) and the test users, in $CHROOT_ROOT.
ensure_test_users() {
  local spec name uid extra
  ensure_group students 1100
  for spec in "${TEST_USERS[@]}"; do
    IFS=: read -r name uid extra <<< "$spec"
    case "$extra" in
      "") ensure_user "$name" "$uid" ;;
      system) ensure_user "$name" "$uid" --system -d "/home/$name" ;;
      *) ensure_user "$name" "$uid" -G "$extra"; in_chroot usermod -a -G "$extra" "$name" ;;
    esac
  done
}
