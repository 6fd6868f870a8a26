#!/usr/bin/env bash
# Scripts passed to sh -c below are single-quoted on purpose (the inner shell expands them):
# shellcheck disable=SC2016
#
# testhost.sh - end-to-end test host for fairshare.
#
# Boots a REAL systemd as PID 1 of a systemd-nspawn container on a machine whose own
# PID 1 is not systemd, with a real system D-Bus, systemd-logind, sshd (127.0.0.1 only)
# and pamtester inside, so that fairshared / fairshare-ctl / pam_fairshare.so can be
# exercised against the real systemd D-Bus API and real user-UID.slice units.
#
# Usage: testhost.sh SUBCOMMAND [ARGS...]   (as root)
#
#   up [--fresh]        install host deps if missing, build the Debian root once (cached),
#                       configure it, boot it, wait for systemd + sshd.  A running container
#                       is reused.  --fresh: stop a running one, reset the root to the
#                       pristine debootstrap image (drops everything tests changed), boot.
#   down                stop the container (graceful, by PID) and remove the host cgroups
#   purge               down + delete the whole state dir ($FS_BASE)
#   status              print PIDs / state; exit 0 if running, 3 if not
#   shell               interactive bash inside (nsenter)
#   nsexec CMD...       run CMD via nsenter in all container namespaces (keeps a host
#                       cgroup; fine for cat/systemctl/busctl/loginctl/journalctl)
#   exec [-u USER] CMD...  run CMD inside as a transient service (systemd-run --wait --pipe):
#                       proper container cgroup, stdin/stdout/stderr piped, exit code propagated
#   ssh USER [CMD...]   ssh from the host to USER@127.0.0.1 (harness key, BatchMode);
#                       stdin passed through, exit code propagated (255 = ssh failure).
#                       Like ssh itself, CMD words are joined and run by the remote shell.
#   ssh-args            print the ssh options (one per line, for `mapfile -t`)
#   ssh-cmd             print a shell-quoted command prefix: eval "$(testhost.sh ssh-cmd) testuser@127.0.0.1 id"
#   root                print the host path of the container's root (/proc/LEADER/root)
#   install DIR         copy built artifacts from DIR (e.g. target/release) into the container:
#                         fairshared          -> /usr/local/sbin/fairshared           (755)
#                         fairshare-ctl       -> /usr/local/bin/fairshare-ctl         (755)
#                         libpam_fairshare.so -> <multiarch>/security/pam_fairshare.so (644)
#                       (only those that exist; written to a temp file, then renamed)
#   base                build the pristine debootstrap image if missing (cached, as for `up`;
#                       a running container is left alone), make sure the harness ssh key
#                       exists, and print the image's path.  For other test hosts built from
#                       the same root (tests/testhost/v2vm.sh); works on any host with apt.
#   mirror              print the Debian mirror of the host's apt configuration (or FS_MIRROR)
#
# Environment: FS_BASE (state dir, default /var/tmp/fairshare-testhost), FS_SSH_PORT (2222),
#   FS_NAME (container hostname), FS_SUITE (bookworm), FS_MIRROR (default: from host apt config),
#   FS_BOOT_TIMEOUT (seconds, 90).
#
# Inside the container:
#   users  root, testuser 1001, testuser2 1002, student1 1003 (+ group students 1100),
#          testuser3 1004, svcuser 990 (system account, /bin/bash, home /home/svcuser);
#          all accept the harness key ($FS_BASE/ssh/id_ed25519).
#   PAM    /etc/pam.d/fairshare-test (with pam_systemd), /etc/pam.d/fairshare-nosystemd (without);
#          tests append their own `session ... pam_fairshare.so` lines.
#   dirs   /etc/fairshare/policy.d, /var/lib/fairshare; $FS_BASE/share is bind-mounted at /srv/fairshare.
#
# Host requirements: root; cgroup v1 or hybrid (v1 controllers, as on this project's CI machines);
# a Debian/Ubuntu host with apt.  Nothing on the host is touched except: apt packages
# (systemd-container, debootstrap, openssh-client), $FS_BASE, and one child cgroup named $FS_CG
# under the caller's own cgroup in each hierarchy (removed by `down`).  Only PIDs this script
# started are ever signalled.
#
# Pitfalls this script handles (learned the hard way):
#  - hybrid cgroups: systemd inside runs in hybrid mode and limits appear in v1 files
#    (cpu.cfs_quota_us, memory.limit_in_bytes, pids.max).  Assert on files, not D-Bus props.
#  - nspawn mounts the v1 controller hierarchies read-only; systemd then silently creates no
#    controller cgroups.  A tiny PID-1 wrapper remounts them rw before exec'ing systemd.
#  - no host systemd/machined: --register=no --keep-unit, a private tmpfs on /run/systemd in a
#    private mount namespace (nspawn's runtime files stay off the host), container placed in
#    our own child cgroup.
#  - logind keeps user-UID.slice for 10 s after logout by default -> UserStopDelaySec=0.
set -euo pipefail

# ------------------------------------------------------------------------------ settings
FS_BASE=${FS_BASE:-/var/tmp/fairshare-testhost}
FS_NAME=${FS_NAME:-fairshare-testhost}        # container hostname (and nspawn machine name)
FS_CG=${FS_CG:-fairshare-testhost}            # name of our child cgroup in each host hierarchy
FS_SSH_PORT=${FS_SSH_PORT:-2222}              # sshd inside listens on 127.0.0.1:PORT (host netns is shared)
FS_SUITE=${FS_SUITE:-bookworm}
FS_BOOT_TIMEOUT=${FS_BOOT_TIMEOUT:-90}

# Packages of the container root.  Changing this list triggers a rebuild of the cached root
# (the list is recorded in a stamp file inside the root).
ROOT_PKGS=(systemd systemd-sysv dbus libpam-systemd libnss-systemd openssh-server openssh-client
           pamtester procps iproute2 netcat-openbsd psmisc cron tmux)
HOST_PKGS=(systemd-container debootstrap openssh-client)
# Units that only add noise or boot time inside a test container.
MASK_UNITS=(apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
            e2scrub_reap.service console-getty.service getty@.service systemd-timesyncd.service)

BASE=$FS_BASE/base            # pristine debootstrap output (never booted)
ROOT=$FS_BASE/rootfs          # the booted root: copy of $BASE + our configuration
STATE=$FS_BASE/state          # nspawn.pid, cgpaths, ssh_port, console.log
SHARE=$FS_BASE/share          # bind-mounted at /srv/fairshare inside
SSH_KEY=$FS_BASE/ssh/id_ed25519
STAMP=.fairshare-testhost-pkgs   # file in the root of $BASE/$ROOT: suite + package list
CT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
INIT=/usr/local/libexec/fairshare-testhost-init   # PID-1 wrapper inside the container

# ------------------------------------------------------------------------------ helpers
LOG_TAG=testhost CHROOT_ROOT=$ROOT
# shellcheck source=tests/testhost/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
T0=$(now)

# Debian mirror from the host's apt configuration: the first enabled deb822 stanza (or
# one-line "deb" entry) serving $FS_SUITE; else the first deb source at all.
host_mirror() {
  local u="" f files=()
  for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
  if [ ${#files[@]} -gt 0 ]; then
    u=$(awk -v suite="$FS_SUITE" '
      function flush() {
        if (!found && uri != "" && enabled != "no" && (" " types " ") ~ / deb / &&
            index(" " suites " ", " " suite " ") > 0) { print uri; found = 1 }
        if (first == "" && uri != "" && enabled != "no" && (" " types " ") ~ / deb /) first = uri
        types = suites = uri = enabled = ""
      }
      FNR == 1 || /^[ \t]*$/ { flush() }
      /^[ \t]*#/ { next }
      tolower($1) == "types:"   { $1 = ""; types = $0 }
      tolower($1) == "uris:"    { uri = $2 }
      tolower($1) == "suites:"  { $1 = ""; suites = $0 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { flush(); if (!found && first != "") print first }' "${files[@]}" | head -1)
  fi
  if [ -z "$u" ]; then
    files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && files+=("$f"); done
    [ ${#files[@]} -gt 0 ] && u=$(awk -v suite="$FS_SUITE" '
      $1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }   # skip [options]
        if ($(i+1) == suite && !found) { print $i; found = 1 }
        if (first == "") first = $i
      }
      END { if (!found && first != "") print first }' "${files[@]}" | head -1)
  fi
  printf '%s\n' "$u"
}

pkg_stamp() { printf 'suite=%s\n' "$FS_SUITE"; printf '%s\n' "${ROOT_PKGS[@]}" | sort; }

# ------------------------------------------------------------------------------ PIDs
# PID of our systemd-nspawn, if it is alive (guards against stale pid files and PID reuse:
# the command line must be systemd-nspawn on our root directory).
nspawn_pid() {
  local p cmd
  p=$(cat "$STATE/nspawn.pid" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  cmd=$({ tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null) || return 1
  [[ "$cmd" == *systemd-nspawn*" -D $ROOT "* ]] || return 1
  echo "$p"
}

child_pids() {
  local f
  if compgen -G "/proc/$1/task/*/children" >/dev/null; then
    for f in /proc/"$1"/task/*/children; do cat "$f" 2>/dev/null || true; done | tr ' ' '\n'
  else   # kernel without CONFIG_PROC_CHILDREN: scan /proc
    awk -v pp="$1" '{ sub(/^.*\) /, ""); if ($2 == pp) print FILENAME }' /proc/[0-9]*/stat 2>/dev/null |
      cut -d/ -f3
  fi
}

# Host PID of the container's PID 1 (systemd); needed for nsenter and /proc/PID/root.
leader_pid() {
  local n c
  n=$(nspawn_pid) || return 1
  for c in $(child_pids "$n"); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && { echo "$c"; return 0; }
  done
  return 1
}
need_leader() { L=$(leader_pid) || die "container not running (run: $0 up)"; }

# Port of the running container's sshd (recorded at boot), else $FS_SSH_PORT.
ssh_port() { cat "$STATE/ssh_port" 2>/dev/null || echo "$FS_SSH_PORT"; }

# ------------------------------------------------------------------------------ running things inside
ct_nsexec() {
  need_leader
  nsenter -t "$L" -a -r -w -- /usr/bin/env -i PATH="$CT_PATH" HOME=/root LANG=C.UTF-8 \
    TERM="${TERM:-dumb}" SYSTEMD_PAGER=cat "$@"
}

ct_exec() {
  local run=(systemd-run --quiet --wait --pipe --collect --service-type=exec -E PATH="$CT_PATH")
  case "${1:-}" in
    -u) [ $# -ge 2 ] || die "exec -u needs a user"; run+=(--uid="$2"); shift 2 ;;
    --user=*) run+=(--uid="${1#--user=}"); shift ;;
  esac
  [ $# -gt 0 ] || die "usage: $0 exec [-u USER] CMD..."
  need_leader
  nsenter -t "$L" -a -r -w -- /usr/bin/env -i PATH="$CT_PATH" "${run[@]}" -- "$@"
}

ssh_opts() {
  SSH_OPTS=(-F /dev/null -i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes
            -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
            -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10
            -p "$(ssh_port)")
}

# ------------------------------------------------------------------------------ up: phases
host_deps() {   # [base]: only what building the base image needs (no cgroup v1 checks)
  phase_start "host packages"
  local p missing=()
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    die "need a Debian-like host with apt"
  fi
  for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "   installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q < /dev/null > "$FS_BASE/apt.log" 2>&1 || { tail -20 "$FS_BASE/apt.log"; die "apt-get update failed"; }
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
      -o Dpkg::Options::=--force-confold "${missing[@]}" < /dev/null >> "$FS_BASE/apt.log" 2>&1 ||
      { tail -20 "$FS_BASE/apt.log"; die "apt-get install failed"; }
  fi
  for p in systemd-nspawn debootstrap ssh ssh-keygen nsenter unshare setsid flock chroot; do
    command -v "$p" >/dev/null || die "missing host command: $p"
  done
  [ "${1:-}" = base ] && { phase_end; return 0; }
  # Sanity: this harness needs v1 controller hierarchies (legacy or hybrid host).  On a pure
  # cgroup-v2 host nspawn would boot the container in unified mode, which is a different
  # setup (use a VM there).
  if ! mountpoint -q /sys/fs/cgroup/cpu || ! mountpoint -q /sys/fs/cgroup/memory; then
    die "expected cgroup v1 cpu/memory hierarchies at /sys/fs/cgroup/{cpu,memory} (hybrid host)"
  fi
  mountpoint -q /sys/fs/cgroup/systemd || die "expected the name=systemd hierarchy at /sys/fs/cgroup/systemd"
  phase_end
}

# Pristine debootstrap output; rebuilt only when missing or the package list changed.
build_base() {
  local want; want=$(pkg_stamp)
  if [ -f "$BASE/$STAMP" ] && [ "$(cat "$BASE/$STAMP")" = "$want" ]; then
    log "== base image cached ($BASE)"; return 0
  fi
  [ -e "$BASE" ] && log "   package list changed (or incomplete image): rebuilding $BASE"
  local mirror=${FS_MIRROR:-$(host_mirror)}
  [ -n "$mirror" ] || die "no Debian mirror found in the host apt configuration; set FS_MIRROR"
  phase_start "debootstrap $FS_SUITE from $mirror -> $BASE"
  safe_rm "$BASE.partial"
  local pkgs; pkgs=$(IFS=,; echo "${ROOT_PKGS[*]}")
  # Private mount namespace: the /proc,/sys mounts debootstrap makes in the target vanish
  # with it even if it is interrupted.
  unshare -m --propagation private -- \
    debootstrap --variant=minbase --include="$pkgs" "$FS_SUITE" "$BASE.partial" "$mirror" \
    < /dev/null > "$FS_BASE/debootstrap.log" 2>&1 ||
    { tail -20 "$FS_BASE/debootstrap.log"; die "debootstrap failed (log: $FS_BASE/debootstrap.log)"; }
  printf '%s\n' "$want" > "$BASE.partial/$STAMP"
  safe_rm "$BASE"
  mv "$BASE.partial" "$BASE"
  phase_end
}

# The booted root is a copy of the base, so `up --fresh` can reset it in seconds.
prepare_root() {
  local fresh=$1
  if [ "$fresh" = 1 ] || [ ! -f "$ROOT/$STAMP" ] || ! cmp -s "$ROOT/$STAMP" "$BASE/$STAMP"; then
    phase_start "copy base image -> $ROOT"
    safe_rm "$ROOT.partial"
    cp -a --reflink=auto "$BASE" "$ROOT.partial"
    safe_rm "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    phase_end
  else
    log "== root cached ($ROOT)"
  fi
}

configure_root() {   # idempotent; runs on every `up` that boots (container stopped)
  phase_start "configure root"
  put /etc/hostname 644 <<< "$FS_NAME"
  put /etc/hosts 644 <<EOF
127.0.0.1 localhost
127.0.1.1 $FS_NAME
::1 localhost ip6-localhost ip6-loopback
EOF
  put /etc/default/locale 644 <<< 'LANG=C.UTF-8'     # no locales installed; quiets pam_env/perl
  in_chroot /bin/sh -c 'for u; do ln -sfn /dev/null "/etc/systemd/system/$u"; done' sh "${MASK_UNITS[@]}"

  # PID-1 wrapper: nspawn (without user namespacing) mounts the v1 controller hierarchies
  # read-only, and systemd decides at startup which controllers it can use.  Remount them
  # read-write (inside the container's mount namespace only), then become systemd.
  put "$INIT" 755 <<'EOF'
#!/bin/sh
# fairshare testhost: make the cgroup v1 controller hierarchies writable, then exec systemd.
for d in /sys/fs/cgroup/*; do
  case "$d" in */systemd|*/unified) continue ;; esac
  [ -L "$d" ] && continue
  mountpoint -q "$d" && mount -o remount,bind,rw,nosuid,nodev,noexec "$d"
done
exec /lib/systemd/systemd "$@"
EOF

  # sshd: loopback only, public-key auth only, PAM on (-> pam_systemd via common-session),
  # enough headroom for ~30 concurrent logins.  sshd_config Includes sshd_config.d/ first,
  # so these values win.
  put /etc/ssh/sshd_config.d/fairshare-testhost.conf 644 <<EOF
Port $FS_SSH_PORT
ListenAddress 127.0.0.1
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
  put /etc/systemd/logind.conf.d/fairshare-testhost.conf 644 <<'EOF'
[Login]
UserStopDelaySec=0
EOF
  # With no stop delay, tests that log one user in and out many times a second
  # would hit the start limit of the per-user units; a test host needs none.
  for u in user-runtime-dir@.service user@.service; do
    put "/etc/systemd/system/$u.d/fairshare-testhost.conf" 644 <<'EOF'
[Unit]
StartLimitIntervalSec=0
EOF
  done

  # PAM services for pamtester.  Tests add their own pam_fairshare.so lines.
  put /etc/pam.d/fairshare-test 644 <<'EOF'
# fairshare testhost: pamtester service WITH a logind session (pam_systemd)
auth     required pam_permit.so
account  required pam_unix.so
session  required pam_unix.so
session  optional pam_systemd.so
EOF
  put /etc/pam.d/fairshare-nosystemd 644 <<'EOF'
# fairshare testhost: pamtester service WITHOUT pam_systemd (no logind session)
auth     required pam_permit.so
account  required pam_unix.so
session  required pam_unix.so
EOF

  # users and groups (common.sh: the same on both test hosts)
  ensure_test_users

  # harness ssh key (client side stays on the host), authorized for root and all test users
  ensure_key
  local u pub; pub=$(cat "$SSH_KEY.pub")
  for u in root $(test_user_names); do
    in_chroot /bin/sh -c 'set -e
      h=$(getent passwd "$1" | cut -d: -f6); g=$(id -g "$1")
      [ -L "$h/.ssh" ] && rm -f "$h/.ssh"
      install -d -m 700 -o "$1" -g "$g" "$h/.ssh"
      rm -f "$h/.ssh/authorized_keys"
      printf "%s\n" "$2" > "$h/.ssh/authorized_keys"
      chown "$1:$g" "$h/.ssh/authorized_keys"; chmod 600 "$h/.ssh/authorized_keys"' sh "$u" "$pub"
  done

  in_chroot install -d -m 755 /etc/fairshare /etc/fairshare/policy.d /var/lib/fairshare /srv/fairshare
  install -d "$SHARE"
  phase_end
}

# ------------------------------------------------------------------------------ host cgroups
# One child cgroup $FS_CG per hierarchy under the caller's own cgroup; nspawn is moved there.
# The paths are recorded in $STATE/cgpaths for `down`.
cg_prepare() {
  local _id ctrl path mnt d
  : > "$STATE/cgpaths"
  while IFS=: read -r _id ctrl path; do
    case "$ctrl" in
      "") mnt=$(findmnt -rn -t cgroup2 -o TARGET | head -1) ;;
      name=systemd) mnt=/sys/fs/cgroup/systemd ;;
      name=*) continue ;;
      *) mnt=/sys/fs/cgroup/$ctrl ;;
    esac
    if [ -z "$mnt" ] || [ ! -d "$mnt" ]; then continue; fi
    path=${path%/}
    # never nest inside a leftover $FS_CG tree (e.g. when called from inside the container's cgroup)
    case "$path" in */"$FS_CG"|*/"$FS_CG"/*) path=${path%%/"$FS_CG"*} ;; esac
    d="$mnt$path/$FS_CG"
    mkdir -p "$d"
    if [ -f "$d/cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then   # v1 cpuset: must be filled
      cat "$mnt$path/cpuset.cpus" > "$d/cpuset.cpus"
      cat "$mnt$path/cpuset.mems" > "$d/cpuset.mems"
    fi
    echo "$d" >> "$STATE/cgpaths"
  done < /proc/self/cgroup
}

# Remove our child cgroups.  Processes still in them can only be ours (leftovers of the
# container); they are killed by PID.
cg_cleanup() {
  [ -f "$STATE/cgpaths" ] || return 0
  local d p i
  while read -r d; do
    if [ -z "$d" ] || [ ! -d "$d" ]; then continue; fi
    for i in 1 2 3 4 5; do
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
        kill -KILL "$p" 2>/dev/null || true
      done
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.2
    done
    [ -d "$d" ] && log "warning: could not remove host cgroup $d"
  done < "$STATE/cgpaths"
  rm -f "$STATE/cgpaths"
}

# ------------------------------------------------------------------------------ boot / wait / down
boot() {
  phase_start "boot container"
  port_listening "$FS_SSH_PORT" && die "TCP port $FS_SSH_PORT is already in use on the host (set FS_SSH_PORT)"
  cg_prepare
  echo "$FS_SSH_PORT" > "$STATE/ssh_port"
  rm -f "$STATE/nspawn.pid"
  # setsid: detached from the caller's session/terminal.  unshare -m: private mount namespace
  # in which a tmpfs covers /run/systemd, so nspawn's runtime files never land on the host.
  # The inner sh records its PID (exec'd into systemd-nspawn), joins our cgroups, then execs.
  # --register=no --keep-unit: there is no host systemd/machined to talk to.
  # The host network namespace is shared: sshd is reachable as 127.0.0.1:$FS_SSH_PORT.
  # fd 9 (our lock) is closed for the long-running process.
  setsid unshare -m --propagation private -- /bin/sh -c '
      set -e
      echo $$ > "$1"
      for d in $(cat "$2"); do echo $$ > "$d/cgroup.procs"; done
      if [ -d /run/systemd ]; then mount -t tmpfs -o mode=755 tmpfs /run/systemd
      else mount -t tmpfs -o mode=755 tmpfs /run; fi
      shift 2; exec "$@"' sh "$STATE/nspawn.pid" "$STATE/cgpaths" \
    systemd-nspawn -D "$ROOT" -q -M "$FS_NAME" --register=no --keep-unit \
      --console=read-only --kill-signal=SIGRTMIN+3 \
      --bind="$SHARE:/srv/fairshare" \
      "$INIT" \
    < /dev/null > "$STATE/console.log" 2>&1 9>&- &
  local i
  L=""
  for i in $(seq 150); do
    L=$(leader_pid) && break
    if [ "$i" -gt 20 ] && ! nspawn_pid > /dev/null; then
      tail -30 "$STATE/console.log" >&2; die "systemd-nspawn exited (log: $STATE/console.log)"
    fi
    sleep 0.1
  done
  [ -n "$L" ] || { tail -30 "$STATE/console.log" >&2; die "container did not start"; }
  log "   nspawn PID $(nspawn_pid), container PID 1 = host PID $L"
  phase_end
}

wait_ready() {
  need_leader
  phase_start "wait for systemd + sshd"
  local i st
  for i in $(seq 300); do [ -S "/proc/$L/root/run/systemd/private" ] && break; sleep 0.1; done
  st=$(timeout "$FS_BOOT_TIMEOUT" nsenter -t "$L" -a -r -w -- /usr/bin/env -i PATH="$CT_PATH" \
         systemctl is-system-running --wait 2> /dev/null || true)
  log "   system state: ${st:-unknown}"
  if [ "$st" != running ]; then
    ct_nsexec systemctl --failed --no-legend --no-pager >&2 || true
    case "$st" in
      degraded) ;;
      *) tail -30 "$STATE/console.log" >&2; die "container did not reach running/degraded within ${FS_BOOT_TIMEOUT}s" ;;
    esac
  fi
  local port; port=$(ssh_port)
  for i in $(seq 100); do port_listening "$port" && break; sleep 0.1; done
  port_listening "$port" || { ct_nsexec systemctl status ssh --no-pager >&2 || true; die "sshd is not listening on 127.0.0.1:$port"; }
  log "   sshd listening on 127.0.0.1:$port"
  phase_end
}

do_down() {
  local n L i
  if n=$(nspawn_pid); then
    phase_start "shutdown"
    # SIGRTMIN+3 asks systemd (container PID 1) to halt; nspawn then exits by itself.
    if L=$(leader_pid); then kill -s SIGRTMIN+3 "$L" 2> /dev/null || true; fi
    for i in $(seq 300); do nspawn_pid > /dev/null || break; sleep 0.1; done
    if nspawn_pid > /dev/null; then
      log "   graceful shutdown timed out; sending TERM to nspawn $n"
      kill -TERM "$n" 2> /dev/null || true
      for i in $(seq 50); do nspawn_pid > /dev/null || break; sleep 0.1; done
    fi
    if nspawn_pid > /dev/null; then kill -KILL "$n" 2> /dev/null || true; sleep 0.2; fi
    phase_end
  elif [ -f "$STATE/nspawn.pid" ] || [ -f "$STATE/cgpaths" ]; then
    log "== cleaning up stale state of an earlier run (its systemd-nspawn is gone)"
  fi
  rm -f "$STATE/nspawn.pid" "$STATE/ssh_port"
  cg_cleanup   # also kills stray container processes left in our cgroups
}

# ------------------------------------------------------------------------------ subcommands
cmd_up() {
  local fresh=0
  case "${1:-}" in
    "") ;;
    --fresh) fresh=1 ;;
    *) die "usage: $0 up [--fresh]" ;;
  esac
  take_lock "$FS_BASE"
  mkdir -p "$STATE"
  host_deps
  if [ $fresh = 1 ]; then
    do_down
  elif L=$(leader_pid); then
    log "== container already running (nspawn $(nspawn_pid), leader $L): reusing it"
    if [ -f "$ROOT/$STAMP" ] && [ "$(cat "$ROOT/$STAMP")" != "$(pkg_stamp)" ]; then
      log "warning: the running root was built with another package list; run: $0 up --fresh"
    fi
    [ "$(ssh_port)" = "$FS_SSH_PORT" ] || log "warning: running sshd uses port $(ssh_port), not FS_SSH_PORT=$FS_SSH_PORT"
    wait_ready
    log "total $(since "$T0")s"
    return 0
  fi
  # stale state from an earlier run (dead nspawn, leftover cgroups/processes)
  do_down
  build_base
  prepare_root "$fresh"
  configure_root
  boot
  wait_ready
  log "total $(since "$T0")s"
}

# The harness ssh key (the client side stays on the host).
ensure_key() {
  install -d -m 700 "$FS_BASE/ssh"
  [ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C fairshare-testhost -f "$SSH_KEY" < /dev/null
}

cmd_base() {
  take_lock "$FS_BASE"
  mkdir -p "$STATE"
  host_deps base
  build_base
  ensure_key
  echo "$BASE"
}

cmd_down() {
  [ -d "$FS_BASE" ] || { log "nothing to do ($FS_BASE does not exist)"; return 0; }
  take_lock "$FS_BASE"
  mkdir -p "$STATE"
  do_down
  log "down"
}

cmd_purge() {
  if [ -d "$FS_BASE" ]; then
    take_lock "$FS_BASE"
    mkdir -p "$STATE"
    do_down
    safe_rm "$FS_BASE"
  fi
  log "removed $FS_BASE"
}

cmd_status() {
  local n L
  if n=$(nspawn_pid) && L=$(leader_pid); then
    echo "state:      running"
    echo "nspawn:     $n"
    echo "leader:     $L (container PID 1)"
    echo "system:     $(ct_nsexec systemctl is-system-running 2> /dev/null || true)"
    echo "ssh:        127.0.0.1:$(ssh_port)"
    echo "root:       /proc/$L/root"
    echo "console:    $STATE/console.log"
    echo "state dir:  $FS_BASE"
    return 0
  fi
  echo "state:      not running"
  echo "state dir:  $FS_BASE"
  return 3
}

cmd_install() {
  local dir=${1:-}
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then die "usage: $0 install DIR   (e.g. target/release)"; fi
  need_leader
  local secdir
  secdir=$(ct_nsexec /bin/sh -c 'for f in /lib/*-linux-gnu/security/pam_unix.so; do [ -e "$f" ] && { dirname "$f"; exit; }; done')
  secdir=${secdir:-/lib/x86_64-linux-gnu/security}
  local n=0 src dst mode spec
  for spec in "fairshared:/usr/local/sbin/fairshared:755" \
              "fairshare-ctl:/usr/local/bin/fairshare-ctl:755" \
              "libpam_fairshare.so:$secdir/pam_fairshare.so:644"; do
    IFS=: read -r src dst mode <<< "$spec"
    [ -f "$dir/$src" ] || continue
    # Streamed into the container's own namespaces (so paths resolve inside it), written to a
    # temp file in the target dir and renamed over the target: a running binary keeps its
    # old inode ("text file busy" cannot happen, no half-written files).
    nsenter -t "$L" -a -r -w -- /usr/bin/env -i PATH="$CT_PATH" /bin/sh -c 'set -e
      d=$(dirname "$1"); mkdir -p "$d"
      t="$d/.$(basename "$1").tmp.$$"
      trap "rm -f \"$t\"" EXIT
      cat > "$t"; chown 0:0 "$t"; chmod "$2" "$t"; mv -f "$t" "$1"; trap - EXIT' sh "$dst" "$mode" \
      < "$dir/$src"
    log "installed $dir/$src -> $dst ($mode, $(stat -c %s "$dir/$src") bytes)"
    n=$((n + 1))
  done
  [ $n -gt 0 ] || die "nothing to install in $dir (looked for fairshared, fairshare-ctl, libpam_fairshare.so)"
}

[ "$(id -u)" = 0 ] || die "must run as root"

sub=${1:-help}
[ $# -gt 0 ] && shift
case "$sub" in
  up)       cmd_up "$@" ;;
  down)     cmd_down ;;
  purge)    cmd_purge ;;
  status)   cmd_status ;;
  shell)    need_leader
            exec nsenter -t "$L" -a -r -w -- /usr/bin/env -i PATH="$CT_PATH" HOME=/root \
              LANG=C.UTF-8 TERM="${TERM:-xterm}" /bin/bash -l ;;
  nsexec)   [ $# -gt 0 ] || die "usage: $0 nsexec CMD..."; ct_nsexec "$@" ;;
  exec)     ct_exec "$@" ;;
  ssh)      [ $# -gt 0 ] || die "usage: $0 ssh USER [CMD...]"
            need_leader; ssh_opts; user=$1; shift
            exec ssh "${SSH_OPTS[@]}" -- "$user@127.0.0.1" "$@" ;;
  ssh-args) ssh_opts; printf '%s\n' "${SSH_OPTS[@]}" ;;
  ssh-cmd)  ssh_opts; printf '%q ' ssh "${SSH_OPTS[@]}"; echo ;;
  root)     need_leader; echo "/proc/$L/root" ;;
  install)  cmd_install "$@" ;;
  base)     cmd_base ;;
  mirror)   m=${FS_MIRROR:-$(host_mirror)}; [ -n "$m" ] || die "no Debian mirror in the host apt configuration"
            echo "$m" ;;
  help|-h|--help) usage ;;
  *)        usage >&2; exit 2 ;;
esac
