#!/usr/bin/env bash
# Records real fairshare metrics on the test host for the promtool tests of
# the alert rules (monitoring/tests/fairshare-alerts.test.yml).
#
# With the test host up and this build installed in it
# (tests/testhost/testhost.sh up && tests/testhost/install-fairshare.sh), as root:
#
#   monitoring/record.sh [SAMPLES] [STEP]      # default: 56 samples 15 s apart (14 minutes)
#
# It starts fairshared afresh with a small policy, logs three users in over ssh
# and keeps them busy the whole time:
#   testuser   four busy loops, held at their 0.2-CPU default
#   testuser2  resized to 1 CPU for 2 h, busy about 30% of the time
#   testuser3  memory limit set to 256M by root, a process holding 240M; three
#              minutes in, a second process in the same session (oom_score_adj
#              1000) asks for 64M and is OOM-killed
# (on cgroup v1 the kill is counted in the session's scope, so the victim shares
# the hog's session) and at sample 20 testuser asks six times for more than the host has free.
# Every STEP seconds it saves `fairshare-ctl metrics` into
# monitoring/tests/recorded.prom, then writes the series into the promtool test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
host=$repo/tests/testhost/testhost.sh
samples=${1:-56}
step=${2:-15}
out=$here/tests/recorded.prom
log() { printf '[record] %s\n' "$*" >&2; }

"$host" status > /dev/null || { log "the test host is not running: tests/testhost/testhost.sh up && tests/testhost/install-fairshare.sh"; exit 1; }
in_host() { "$host" nsexec sh -c "$1"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  in_host 'for u in testuser testuser2 testuser3; do loginctl terminate-user $u 2>/dev/null; done; sleep 0.3; pkill -KILL -U 1001,1002,1004; true'
}
trap cleanup EXIT

log "fresh fairshared with the recording policy"
in_host 'systemctl stop fairshared.service fairshared.socket; rm -rf /var/lib/fairshare/* /etc/fairshare/policy.d/*; systemctl revert user-1001.slice user-1002.slice user-1004.slice >/dev/null 2>&1; true'
cleanup
in_host 'mkdir -p /etc/fairshare/policy.d && cat > /etc/fairshare/policy.d/50-record.yaml' <<'EOF'
defaults: {cpu: 0.2, mem: 512M}
max: {cpu: 2, mem: 2G}
capacity: {cpu: 1.5, mem: 2G, overcommit: 1}
EOF
in_host 'systemctl start fairshared.socket fairshared.service'

# A login that stays open and runs CMD in the user's slice.
hold() {
  "$host" ssh "$1" "$2" < /dev/null > /dev/null 2>&1 &
  pids+=($!)
}
hold testuser 'for i in 1 2 3 4; do (while :; do :; done) & done; wait'
hold testuser2 'sleep 600'
sleep 3
"$host" ssh testuser2 'fairshare-ctl resize --cpu 1 --for 2h' > /dev/null
# busy in one long-lived shell (the CPU time of processes that have ended is not
# counted where the host has no per-cgroup CPU accounting)
hold testuser2 'while :; do for ((i = 0; i < 20000; i++)); do :; done; sleep 0.5; done'
hold testuser3 'sleep 1200'
sleep 2
in_host 'fairshare-ctl set testuser3 --mem 256M' > /dev/null
# (vec() fills the string in place; `x` would need twice the memory for a moment)
hold testuser3 "perl -e 'vec(\$x, 240 * 2**20 - 1, 8) = 1; sleep 1200' & sleep 180;
  (echo 1000 > /proc/self/oom_score_adj; exec perl -e 'vec(\$x, 64 * 2**20 - 1, 8) = 1; sleep 60'); wait"
sleep 5

log "recording $samples samples, $step s apart"
printf '# fairshare-record step=%s\n' "$step" > "$out.partial"
start=$(date +%s)
for ((i = 0; i < samples; i++)); do
  case $i in
    20) for _ in 1 2 3 4 5 6; do "$host" ssh testuser 'fairshare-ctl resize --cpu 2' > /dev/null 2>&1 || true; done ;;
  esac
  # wait for this sample's time, so the samples are STEP apart
  now=$(date +%s); due=$((start + i * step))
  [ "$now" -lt "$due" ] && sleep $((due - now))
  printf '# fairshare-record sample=%s\n' "$i" >> "$out.partial"
  in_host 'fairshare-ctl metrics' >> "$out.partial"
  [ $((i % 8)) = 0 ] && log "sample $i"
done
mv "$out.partial" "$out"
log "wrote $out"
cd "$repo"
cargo run --locked -q -p fairshare-monitoring -- series monitoring/tests/recorded.prom monitoring/tests/fairshare-alerts.test.yml
