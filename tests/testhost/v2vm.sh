#!/usr/bin/env bash
# Scripts passed to sh -c below are single-quoted on purpose (the inner shell expands them):
# shellcheck disable=SC2016
#
# v2vm.sh - pure cgroup v2 test host for fairshare: a QEMU guest.
#
# The container test host (testhost.sh) can only run the hybrid cgroup layout on these
# machines (their cgroups are hybrid, and a container inherits that).  This script boots the
# same minimal Debian root as a QEMU virtual machine with its own kernel and
# systemd.unified_cgroup_hierarchy=1, installs THIS build of fairshare in it the way an admin
# would (make install, the socket and service, the PAM profile), and forwards the guest's
# sshd to 127.0.0.1:$V2_SSH_PORT.  The end-to-end tests named *::on_v2_guest run against it: the
# core tests of tests/e2e (core_test!) and those of tests/e2e/tests/v2.rs.
#
# Usage: v2vm.sh SUBCOMMAND [ARGS...]   (as root; run `make all` first)
#
#   up [--fresh]        install host packages if missing (qemu from <suite>-backports through a
#                       private apt source list), build the guest root once (cached: a copy of
#                       the container test host's debootstrap base plus a kernel and initrd),
#                       install this build of fairshare into a fresh copy of it, make the disk
#                       image, boot, wait for sshd and systemd (running or degraded).
#                       A guest that is already running this very build (and this script) is
#                       reused; any other one (e.g. left over by an earlier run) is stopped
#                       first.  --fresh: always stop it and boot a fresh image.
#   down                power the guest off (ssh), then end qemu by PID if it does not stop
#   test [ARGS...]      up --fresh, the end-to-end tests of the guest (cargo test -p fairshare-e2e
#                       --tests -- on_v2_guest: the core tests' v2 variants and the tests of
#                       tests/e2e/tests/v2.rs), down (V2_KEEP=1: stay up).  ARGS go to
#                       the test binaries instead of the filter on_v2_guest, e.g. a test's full
#                       name a_busy_loop_is_throttled_to_the_quota::on_v2_guest
#                       (libtest ORs filters)
#   ssh USER [CMD...]   ssh to USER in the guest (harness key, BatchMode); exit code propagated
#   ssh-args [--mux]    print the ssh options, one per line (--mux: share one connection;
#                       used for root's commands by the tests)
#   status              print the guest's state; exit 0 if it is running, 3 if not
#   console             print the guest's serial console log
#   purge               down + delete the whole state dir ($V2_BASE)
#
# Environment: V2_BASE (state dir, /var/tmp/fairshare-v2vm), V2_SSH_PORT (2422), V2_MEM (MiB,
#   2048), V2_SMP (2), V2_BOOT_TIMEOUT (seconds, 300), V2_KEEP (test: leave the guest up),
#   FS_BASE (the container test host's state dir, whose base image and ssh key are reused).
#
# Inside the guest (same as the container test host):
#   users  root, testuser 1001, testuser2 1002, student1 1003 (+ group students 1100),
#          testuser3 1004, svcuser 990 (system account); all accept the harness key
#          ($FS_BASE/ssh/id_ed25519, made by testhost.sh).
#   logind UserStopDelaySec=0 (a slice stops right after the last logout).
#   fairshare  make install PREFIX=/usr/local, fairshared.socket + .service enabled,
#          pam-auth-update --enable fairshare; /etc/fairshare/policy.d, /var/lib/fairshare.
#
# Host requirements: root, a Debian/Ubuntu host with apt (any cgroup layout); no KVM needed.
# Nothing on the host is touched except apt packages (qemu-system-x86 and what it needs,
# openssh-client, e2fsprogs), $V2_BASE, and the container test host's cached base image
# (built if missing, only read).  Only the qemu this script started is ever signalled.
#
# Pitfalls this script handles (learned the hard way):
#  - KVM does not work on these machines (nested PVM): software emulation (TCG) it is.  Boot
#    to `running` takes ~25 s, CPU-bound code runs ~14x slower: tests must be generous.
#  - The host's qemu-utils comes from <suite>-backports, so qemu-system-x86 must too (else
#    apt reports held broken packages).  A private source list and private lists dir keep the
#    host's apt configuration untouched; the mirror is the one the host's apt already uses.
#  - The Debian cloud kernel needs its initrd (virtio drivers are modules): both are
#    installed into the cached copy of the root with apt in a chroot.
#  - The cloud kernel has no 9p: files go in by rebuilding the ext4 image (mkfs.ext4 -d, a
#    few seconds), never through a shared folder.
#  - slirp delivers forwarded connections to the guest's 10.0.2.15, not to its loopback:
#    sshd inside listens on 0.0.0.0; the host side of the forward is bound to 127.0.0.1 only,
#    and restrict=on cuts the guest off from every other network.
set -euo pipefail

# ------------------------------------------------------------------------------ settings
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TESTHOST=$HERE/testhost.sh
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")

V2_BASE=${V2_BASE:-/var/tmp/fairshare-v2vm}
V2_SSH_PORT=${V2_SSH_PORT:-2422}
V2_MEM=${V2_MEM:-2048}
V2_SMP=${V2_SMP:-2}
V2_CPU=${V2_CPU:-max}               # the emulated CPU model
V2_BOOT_TIMEOUT=${V2_BOOT_TIMEOUT:-300}
FS_SUITE=${FS_SUITE:-bookworm}
NAME=fairshare-v2vm                 # guest hostname

# Added to the container's root to make it bootable.  Changing this list rebuilds the cache.
KERNEL_PKGS=(linux-image-cloud-amd64 initramfs-tools zstd)
# The only modules the initrd needs to mount the root (ext4 is built in): a 5 MB initrd
# instead of 13 MB, ~7 s less boot under emulation.
INITRD_MODULES=(virtio_pci virtio_blk)
# Units that only add noise or boot time in a test guest (under emulation every unit costs
# about a second; the ones below made no difference to the tests but ~20 s to the boot).
MASK_UNITS=(apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
            e2scrub_reap.service fstrim.timer systemd-tmpfiles-clean.timer
            console-getty.service getty@.service serial-getty@.service systemd-timesyncd.service
            modprobe@.service kmod-static-nodes.service systemd-network-generator.service
            systemd-networkd.service systemd-networkd-wait-online.service systemd-pstore.service
            dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount
            sys-kernel-config.mount sys-fs-fuse-connections.mount)
KERNEL_CMDLINE="root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1 net.ifnames=0 quiet"

KROOT=$V2_BASE/kroot            # cached: base image + kernel + initrd (never booted)
STAGE=$V2_BASE/stage            # per boot: copy of $KROOT + configuration + fairshare
DISK=$V2_BASE/disk.img          # per boot: ext4 image made from $STAGE
RUN=$V2_BASE/run                # qemu.pid, console.log, build, kernel, initrd, ssh mux socket
APT_DIR=$V2_BASE/apt            # private apt source list and lists (for qemu from backports)
STAMP=.fairshare-v2vm-stamp     # file in $KROOT: base stamp + kernel packages

# ------------------------------------------------------------------------------ helpers
LOG_TAG=v2vm CHROOT_ROOT=$STAGE
# shellcheck source=tests/testhost/common.sh
. "$HERE/common.sh"
T0=$(now)

# The container test host's state dir (its base image and harness key live there).
fs_base() { printf '%s\n' "${FS_BASE:-/var/tmp/fairshare-testhost}"; }
ssh_key() { printf '%s/ssh/id_ed25519\n' "$(fs_base)"; }

# ------------------------------------------------------------------------------ PIDs
# PID of our qemu, if it is alive.  Guards against stale pid files and PID reuse: the command
# line must be qemu's and name our disk image.  Without a pid file (an earlier run that died
# half-way), our qemu is found by its command line.
qemu_pid() {
  local p cmd
  for p in $(cat "$RUN/qemu.pid" 2>/dev/null) $(pgrep -f "^qemu-system-x86_64 .*file=$DISK," || true); do
    [[ "$p" =~ ^[0-9]+$ ]] || continue
    cmd=$({ tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null) || continue
    [[ "$cmd" == qemu-system-x86_64\ *"file=$DISK,"* ]] || continue
    echo "$p"; return 0
  done
  return 1
}

# ------------------------------------------------------------------------------ ssh
ssh_opts() {
  SSH_OPTS=(-F /dev/null -i "$(ssh_key)" -o IdentitiesOnly=yes -o BatchMode=yes
            -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
            -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20
            -o ServerAliveInterval=15 -o ServerAliveCountMax=8 -p "$V2_SSH_PORT")
}
# One shared connection (for root): each command is a new channel on it, not a new login.
mux_opts() {
  SSH_OPTS+=(-o ControlMaster=auto -o "ControlPath=$RUN/mux-%r" -o ControlPersist=600)
}
gssh() {   # USER CMD...: ssh into the guest
  local u=$1; shift
  ssh_opts
  ssh "${SSH_OPTS[@]}" -- "$u@127.0.0.1" "$@"
}
mux_exit() {
  local s
  for s in "$RUN"/mux-*; do
    [ -S "$s" ] || continue
    ssh_opts
    ssh "${SSH_OPTS[@]}" -o "ControlPath=$s" -O exit dummy@127.0.0.1 > /dev/null 2>&1 || true
    rm -f "$s"
  done
}

# ------------------------------------------------------------------------------ up: phases
# apt-get with a private source list: the host's own sources (sources.list.d and
# sources.list), plus <suite>-backports from the host's mirror; lists in a private dir.
private_apt() {
  local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg opt=""
  mirror=$("$TESTHOST" mirror)
  [ -f "$keyring" ] && opt="[signed-by=$keyring] "
  mkdir -p "$APT_DIR/lists/partial"
  { cat /etc/apt/sources.list 2>/dev/null || true
    echo "deb ${opt}$mirror $FS_SUITE-backports main"; } > "$APT_DIR/sources.list"
  APT=(apt-get -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
       -o "Dir::State::Lists=$APT_DIR/lists" -o Dpkg::Options::=--force-confdef
       -o Dpkg::Options::=--force-confold)
}

host_deps() {
  phase_start "host packages"
  command -v apt-get > /dev/null || die "need a Debian-like host with apt"
  local p missing=() bpo=()
  for p in openssh-client e2fsprogs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  command -v qemu-system-x86_64 > /dev/null || bpo=(qemu-system-x86)
  if [ ${#missing[@]} -gt 0 ] || [ ${#bpo[@]} -gt 0 ]; then
    log "   installing: ${missing[*]} ${bpo[*]}${bpo[*]:+ (from $FS_SUITE-backports)}"
    private_apt
    export DEBIAN_FRONTEND=noninteractive
    "${APT[@]}" update -q < /dev/null > "$V2_BASE/apt.log" 2>&1 ||
      { tail -20 "$V2_BASE/apt.log"; die "apt-get update failed (log: $V2_BASE/apt.log)"; }
    if [ ${#missing[@]} -gt 0 ]; then
      "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}" < /dev/null >> "$V2_BASE/apt.log" 2>&1 ||
        { tail -20 "$V2_BASE/apt.log"; die "apt-get install failed (log: $V2_BASE/apt.log)"; }
    fi
    if [ ${#bpo[@]} -gt 0 ]; then
      "${APT[@]}" install -y -q --no-install-recommends -t "$FS_SUITE-backports" "${bpo[@]}" \
        < /dev/null >> "$V2_BASE/apt.log" 2>&1 ||
        { tail -20 "$V2_BASE/apt.log"; die "apt-get install failed (log: $V2_BASE/apt.log)"; }
    fi
  fi
  for p in qemu-system-x86_64 mkfs.ext4 ssh flock unshare chroot pgrep; do
    command -v "$p" > /dev/null || die "missing host command: $p"
  done
  phase_end
}

# Runs CMD in root DIR with /proc, /dev and the host's resolv.conf mounted, in a private
# mount namespace (the mounts vanish with it, even if interrupted).
in_root() {
  local dir=$1; shift
  unshare -m --propagation private -- /bin/sh -c '
      set -e; d=$1; shift
      mount -t proc proc "$d/proc"
      mount --rbind /dev "$d/dev"
      if [ -f /etc/resolv.conf ]; then
        [ -f "$d/etc/resolv.conf" ] && [ ! -L "$d/etc/resolv.conf" ] || { rm -f "$d/etc/resolv.conf"; : > "$d/etc/resolv.conf"; }
        mount --bind /etc/resolv.conf "$d/etc/resolv.conf"
      fi
      exec chroot "$d" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"' sh "$dir" "$@"
}

# The cached guest root: the container test host's pristine base (built by testhost.sh if
# missing) plus a kernel and its initrd.  Rebuilt when the base or the kernel packages change.
build_kroot() {
  local base want
  base=$("$TESTHOST" base) || die "testhost.sh base failed"
  want=$(cat "$base/.fairshare-testhost-pkgs"; printf 'kernel=%s\ninitrd=%s\n' "${KERNEL_PKGS[*]}" "${INITRD_MODULES[*]}")
  if [ -f "$KROOT/$STAMP" ] && [ "$(cat "$KROOT/$STAMP")" = "$want" ]; then
    log "== guest root cached ($KROOT)"; return 0
  fi
  phase_start "guest root: copy $base, install ${KERNEL_PKGS[*]}"
  safe_rm "$KROOT.partial"
  cp -a --reflink=auto "$base" "$KROOT.partial"
  rm -f "$KROOT.partial/.fairshare-testhost-pkgs"
  in_root "$KROOT.partial" /bin/sh -c 'set -e
      apt-get update -q
      apt-get install -y -q --no-install-recommends $1
      apt-get clean
      rm -rf /var/lib/apt/lists/*
      echo MODULES=list > /etc/initramfs-tools/conf.d/fairshare-v2vm.conf
      printf "%s\n" $2 >> /etc/initramfs-tools/modules
      update-initramfs -u' sh "${KERNEL_PKGS[*]}" "${INITRD_MODULES[*]}" \
    < /dev/null > "$V2_BASE/kernel-install.log" 2>&1 ||
    { tail -20 "$V2_BASE/kernel-install.log"; die "kernel install failed (log: $V2_BASE/kernel-install.log)"; }
  if ! compgen -G "$KROOT.partial/boot/vmlinuz-*" > /dev/null || ! compgen -G "$KROOT.partial/boot/initrd.img-*" > /dev/null; then
    die "no kernel or initrd in $KROOT.partial/boot (log: $V2_BASE/kernel-install.log)"
  fi
  printf '%s\n' "$want" > "$KROOT.partial/$STAMP"
  safe_rm "$KROOT"
  mv "$KROOT.partial" "$KROOT"
  phase_end
}

# What identifies the software a guest runs: the built artifacts and this script.
build_id() {
  local f files=("$SELF" "$HERE/common.sh")
  for f in target/release/fairshared target/release/fairshare-ctl target/release/libpam_fairshare.so \
           etc/systemd/fairshared.service.in etc/systemd/fairshared.socket etc/pam-configs/fairshare; do
    [ -f "$REPO/$f" ] || die "$REPO/$f missing: build first (make all)"
    files+=("$REPO/$f")
  done
  cat "${files[@]}" | sha256sum | cut -c1-16
}

# A fresh copy of the cached root, configured as a test host, with this build of fairshare
# installed as an admin would; then the disk image made from it.
build_image() {
  phase_start "stage root: copy $KROOT, configure, install fairshare"
  safe_rm "$STAGE"
  cp -a --reflink=auto "$KROOT" "$STAGE"
  rm -f "$STAGE/$STAMP"

  put /etc/hostname 644 <<< "$NAME"
  put /etc/hosts 644 <<EOF
127.0.0.1 localhost
127.0.1.1 $NAME
::1 localhost ip6-localhost ip6-loopback
EOF
  put /etc/fstab 644 <<< '/dev/vda / ext4 rw,errors=remount-ro 0 0'
  put /etc/default/locale 644 <<< 'LANG=C.UTF-8'
  in_chroot /bin/sh -c 'for u; do ln -sfn /dev/null "/etc/systemd/system/$u"; done' sh "${MASK_UNITS[@]}"

  # Network: slirp's fixed address on eth0 (net.ifnames=0), set by a oneshot as soon as the
  # device appears (systemd-networkd takes ~14 s to start under emulation).  No default route:
  # the guest talks to the forwarded port's peer (10.0.2.2) only.
  put /etc/systemd/system/fairshare-v2vm-net.service 644 <<'EOF'
[Unit]
Description=fairshare v2 guest: static address for the QEMU user network
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr replace 10.0.2.15/24 dev eth0

[Install]
WantedBy=sys-subsystem-net-devices-eth0.device
EOF
  systemctl --root="$STAGE" enable --quiet fairshare-v2vm-net.service

  # sshd: on every address (slirp forwards to 10.0.2.15), keys only, PAM on.
  put /etc/ssh/sshd_config.d/fairshare-v2vm.conf 644 <<'EOF'
Port 22
ListenAddress 0.0.0.0
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM yes
UseDNS no
MaxStartups 200
MaxSessions 200
EOF

  # logind: stop user@UID.service / user-UID.slice right after the last session (default 10 s)
  put /etc/systemd/logind.conf.d/fairshare-v2vm.conf 644 <<'EOF'
[Login]
UserStopDelaySec=0
EOF

  # users and groups (common.sh: the same on both test hosts)
  ensure_test_users
  local u pub; pub=$(cat "$(ssh_key).pub")
  for u in root $(test_user_names); do
    in_chroot /bin/sh -c 'set -e
      h=$(getent passwd "$1" | cut -d: -f6); g=$(id -g "$1")
      install -d -m 700 -o "$1" -g "$g" "$h/.ssh"
      printf "%s\n" "$2" > "$h/.ssh/authorized_keys"
      chown "$1:$g" "$h/.ssh/authorized_keys"; chmod 600 "$h/.ssh/authorized_keys"' sh "$u" "$pub"
  done
  in_chroot install -d -m 755 /etc/fairshare /etc/fairshare/policy.d /var/lib/fairshare

  # fairshare, as README's "Install" and "Enable on a host" say.
  local pamdir
  pamdir=$(in_chroot /bin/sh -c 'for f in /lib/*-linux-gnu/security/pam_unix.so; do [ -e "$f" ] && { dirname "$f"; exit; }; done')
  [ -n "$pamdir" ] || die "no pam_unix.so in the guest root"
  make --no-print-directory -C "$REPO" install DESTDIR="$STAGE" PREFIX=/usr/local PAMDIR="$pamdir" \
    > "$RUN/make-install.log" 2>&1 || { tail -20 "$RUN/make-install.log"; die "make install failed"; }
  systemctl --root="$STAGE" enable --quiet fairshared.socket fairshared.service
  in_root "$STAGE" pam-auth-update --package --enable fairshare < /dev/null > "$RUN/pam-auth-update.log" 2>&1 ||
    { cat "$RUN/pam-auth-update.log"; die "pam-auth-update failed"; }
  grep -q pam_fairshare.so "$STAGE/etc/pam.d/common-session" || die "pam-auth-update did not add pam_fairshare.so"
  log "   installed fairshare $("$REPO/target/release/fairshared" --version 2> /dev/null | head -1) (PAM dir $pamdir)"

  # kernel and initrd are passed to qemu directly (no boot loader)
  cp "$(find "$STAGE/boot" -name 'vmlinuz-*' | sort -V | tail -1)" "$RUN/vmlinuz"
  cp "$(find "$STAGE/boot" -name 'initrd.img-*' | sort -V | tail -1)" "$RUN/initrd.img"
  phase_end

  phase_start "disk image"
  rm -f "$DISK" "$DISK.partial"
  truncate -s 3G "$DISK.partial"     # sparse
  mkfs.ext4 -q -F -L fairshare-v2 -d "$STAGE" "$DISK.partial" > "$RUN/mkfs.log" 2>&1 ||
    { cat "$RUN/mkfs.log"; die "mkfs.ext4 failed"; }
  mv "$DISK.partial" "$DISK"
  safe_rm "$STAGE"                   # the image has it all; the cache is $KROOT
  phase_end
}

# ------------------------------------------------------------------------------ boot / wait / down
boot() {
  phase_start "boot guest (TCG)"
  port_listening "$V2_SSH_PORT" &&
    die "TCP port $V2_SSH_PORT is already in use on the host (another VM? set V2_SSH_PORT)"
  rm -f "$RUN/qemu.pid" "$RUN/console.log"
  # -daemonize: qemu detaches once the VM is set up.  fd 9 (our lock) is closed for it.
  qemu-system-x86_64 -name "$NAME" -nodefaults -no-user-config \
    -accel tcg,thread=multi -cpu "$V2_CPU" -smp "$V2_SMP" -m "$V2_MEM" \
    -display none -monitor none -serial "file:$RUN/console.log" -no-reboot \
    -daemonize -pidfile "$RUN/qemu.pid" \
    -kernel "$RUN/vmlinuz" -initrd "$RUN/initrd.img" -append "$KERNEL_CMDLINE" \
    -drive "file=$DISK,if=virtio,format=raw,cache=unsafe" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$V2_SSH_PORT-:22" \
    -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
    < /dev/null > "$RUN/qemu.log" 2>&1 9>&- || { cat "$RUN/qemu.log" >&2; die "qemu did not start"; }
  local p; p=$(qemu_pid) || { cat "$RUN/qemu.log" >&2; die "qemu is not running"; }
  log "   qemu PID $p, ssh 127.0.0.1:$V2_SSH_PORT, console $RUN/console.log"
  phase_end
}

wait_ready() {
  phase_start "wait for sshd + systemd"
  local start=$SECONDS st=""
  until gssh root true < /dev/null 2> /dev/null; do
    qemu_pid > /dev/null || { tail -30 "$RUN/console.log" >&2; die "qemu exited (console: $RUN/console.log)"; }
    [ $((SECONDS - start)) -lt "$V2_BOOT_TIMEOUT" ] ||
      { tail -30 "$RUN/console.log" >&2; die "no sshd in the guest within ${V2_BOOT_TIMEOUT}s"; }
    sleep 1
  done
  log "   sshd answers after $((SECONDS - start))s"
  st=$(gssh root timeout "$V2_BOOT_TIMEOUT" systemctl is-system-running --wait < /dev/null 2> /dev/null || true)
  log "   system state: ${st:-unknown}"
  case "$st" in
    running) ;;
    degraded) gssh root systemctl --failed --no-legend --no-pager < /dev/null >&2 || true ;;
    *) tail -30 "$RUN/console.log" >&2; die "the guest did not reach running/degraded" ;;
  esac
  local v2; v2=$(gssh root 'stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers' < /dev/null | tr '\n' ' ')
  log "   /sys/fs/cgroup: $v2"
  phase_end
}

do_down() {
  local p
  mux_exit
  if p=$(qemu_pid); then
    phase_start "shutdown (qemu $p)"
    ssh_opts   # ask systemd to power off; the connection may just drop
    timeout 20 ssh "${SSH_OPTS[@]}" root@127.0.0.1 'systemctl poweroff' < /dev/null > /dev/null 2>&1 || true
    for _ in $(seq 120); do qemu_pid > /dev/null || break; sleep 0.5; done
    if qemu_pid > /dev/null; then
      log "   no poweroff within 60s; sending TERM to qemu $p"
      kill -TERM "$p" 2> /dev/null || true
      for _ in $(seq 20); do qemu_pid > /dev/null || break; sleep 0.5; done
    fi
    if qemu_pid > /dev/null; then kill -KILL "$p" 2> /dev/null || true; sleep 0.5; fi
    qemu_pid > /dev/null && die "qemu $p would not stop"
    phase_end
  fi
  rm -f "$RUN/qemu.pid" "$RUN/build"
}

# ------------------------------------------------------------------------------ subcommands
cmd_up() {
  local fresh=0 id
  case "${1:-}" in
    "") ;;
    --fresh) fresh=1 ;;
    *) die "usage: $0 up [--fresh]" ;;
  esac
  take_lock "$V2_BASE"
  mkdir -p "$RUN"
  id=$(build_id)
  if [ $fresh = 0 ] && qemu_pid > /dev/null && [ "$(cat "$RUN/build" 2> /dev/null)" = "$id" ] &&
     gssh root true < /dev/null 2> /dev/null; then
    log "== guest already running this build ($id): reusing it"
    wait_ready
    return 0
  fi
  qemu_pid > /dev/null && log "== a guest is running (another build, or --fresh): stopping it"
  do_down
  host_deps
  build_kroot
  build_image
  boot
  echo "$id" > "$RUN/build"
  wait_ready
  log "up in $(since "$T0")s"
}

cmd_down() {
  [ -d "$V2_BASE" ] || { log "nothing to do ($V2_BASE does not exist)"; return 0; }
  take_lock "$V2_BASE"
  mkdir -p "$RUN"
  do_down
  log "down"
}

cmd_purge() {
  if [ -d "$V2_BASE" ]; then
    take_lock "$V2_BASE"
    mkdir -p "$RUN"
    do_down
    safe_rm "$V2_BASE"
  fi
  log "removed $V2_BASE"
}

cmd_status() {
  local p
  if p=$(qemu_pid); then
    echo "state:      running"
    echo "qemu:       $p"
    echo "system:     $(gssh root systemctl is-system-running < /dev/null 2> /dev/null || echo 'no answer over ssh')"
    echo "cgroup fs:  $(gssh root stat -fc %T /sys/fs/cgroup < /dev/null 2> /dev/null || echo '?')"
    echo "build:      $(cat "$RUN/build" 2> /dev/null || echo '?')"
    echo "ssh:        127.0.0.1:$V2_SSH_PORT"
    echo "console:    $RUN/console.log"
    echo "state dir:  $V2_BASE"
    return 0
  fi
  echo "state:      not running"
  echo "state dir:  $V2_BASE"
  return 3
}

cmd_test() {
  local rc=0 t
  cmd_up --fresh
  exec 9>&-                                # release the lock for the tests' own calls
  [ "${V2_KEEP:-}" = 1 ] || trap 'cmd_down' EXIT
  t=$(now)
  log "== v2 end-to-end tests"
  ( cd "$REPO" && FAIRSHARE_V2VM="$SELF" cargo test --locked --release -p fairshare-e2e --tests \
      -- --test-threads=1 "${@:-on_v2_guest}" ) || rc=$?
  log "   tests: $(since "$t")s, exit $rc"
  log "total $(since "$T0")s"
  return $rc
}

[ "$(id -u)" = 0 ] || die "must run as root"

sub=${1:-help}
[ $# -gt 0 ] && shift
case "$sub" in
  up)       cmd_up "$@" ;;
  down)     cmd_down ;;
  purge)    cmd_purge ;;
  status)   cmd_status ;;
  test)     cmd_test "$@" ;;
  console)  cat "$RUN/console.log" ;;
  ssh)      [ $# -gt 0 ] || die "usage: $0 ssh USER [CMD...]"
            qemu_pid > /dev/null || die "the guest is not running (run: $0 up)"
            ssh_opts; user=$1; shift
            exec ssh "${SSH_OPTS[@]}" -- "$user@127.0.0.1" "$@" ;;
  ssh-args) mkdir -p "$RUN"; ssh_opts; [ "${1:-}" = --mux ] && mux_opts
            printf '%s\n' "${SSH_OPTS[@]}" ;;
  help|-h|--help) usage ;;
  *)        usage >&2; exit 2 ;;
esac
