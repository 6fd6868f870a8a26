//! fairshare on pure cgroup v2: the core end-to-end tests in a QEMU guest
//! booted with `systemd.unified_cgroup_hierarchy=1` (tests/testhost/v2vm.sh).
//! Real ssh logins through PAM and pam_fairshare; every check reads the v2
//! files of `/sys/fs/cgroup/user.slice/user-UID.slice/` (`cpu.max`,
//! `memory.max`, `memory.high`, `pids.max`, `cpu.stat`, `memory.events`) and
//! `/proc/PID/cgroup` in the guest.
//!
//! Run with: `sudo tests/testhost/v2vm.sh test`, or with the guest up:
//! `cargo test --release -p fairshare-e2e --test v2 -- --test-threads=1`.
//! The guest is emulated (no KVM), so CPU-bound code is ~14x slower and
//! every timed check is generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fairshare_e2e::guest::{Guest, slice_dir};
use fairshare_e2e::*;

const POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
  mem_high: 50%
max:
  cpu: 8
  mem: 32G
  tasks: 8192
capacity:
  cpu: 64
  mem: 256G
groups:
  students:
    defaults: {cpu: 1, mem: 2G, tasks: 512}
    max: {cpu: 2, mem: 4G, tasks: 1024}
";

/// Without a soft limit: a memory hog goes straight to `memory.max`.
const POLICY_NO_HIGH: &str = "\
defaults:
  cpu: 2
  mem: 8G
max:
  cpu: 8
  mem: 32G
capacity:
  cpu: 64
  mem: 256G
";

/// The one line of a v2 `/proc/PID/cgroup`: its path.
#[track_caller]
fn v2_path(proc_cgroup: &str) -> &str {
    let lines: Vec<&str> = proc_cgroup.trim().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "not a pure v2 /proc/PID/cgroup:\n{proc_cgroup}"
    );
    lines[0]
        .strip_prefix("0::")
        .unwrap_or_else(|| panic!("not a v2 line: {}", lines[0]))
}

#[test]
fn the_guest_is_pure_cgroup_v2_and_fairshared_detects_it() {
    let g = Guest::get();
    let o = g
        .sh("stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers; cat /proc/1/cgroup; \
             ls -d /sys/fs/cgroup/cpu /sys/fs/cgroup/memory /sys/fs/cgroup/unified 2>/dev/null | wc -l")
        .ok();
    let l: Vec<&str> = o.out().lines().collect();
    assert_eq!(l[0], "cgroup2fs", "{}", o.out());
    for c in ["cpu", "memory", "pids"] {
        assert!(l[1].split(' ').any(|x| x == c), "controllers: {}", l[1]);
    }
    assert_eq!(v2_path(l[2]), "/init.scope");
    assert_eq!(
        l[3],
        "0",
        "v1 hierarchies mounted in the guest: {}",
        o.out()
    );
    let j = g
        .sh("journalctl -u fairshared -o verbose --no-pager | grep -E '^ *CGROUPS=' | tail -1")
        .ok();
    assert_eq!(j.out(), "CGROUPS=Unified");
}

#[test]
fn a_login_gets_the_policy_default_with_no_request() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    for ((user, uid), files, summary) in [
        (
            TESTUSER,
            ["200000 100000", "8589934592", "4294967296", "4096"],
            "allocation: 2 CPUs, 8G memory (soft 4G), 4096 tasks (policy default)",
        ),
        (
            STUDENT,
            ["100000 100000", "2147483648", "1073741824", "512"],
            "allocation: 1 CPU, 2G memory (soft 1G), 512 tasks (policy default)",
        ),
    ] {
        let out = g
            .ssh(
                user,
                &format!(
                    "cat /proc/$$/cgroup; echo ---; cd {}; cat cpu.max memory.max memory.high pids.max; \
                     echo ---; fairshare-ctl status; echo ---; cat cgroup.controllers",
                    slice_dir(uid)
                ),
            )
            .ok();
        let parts: Vec<&str> = out.stdout.split("---\n").collect();
        assert_eq!(parts.len(), 4, "{}", out.stdout);
        // the controllers that enforce the limits are enabled for the slice
        for c in ["cpu", "memory", "pids"] {
            assert!(
                parts[3].split_whitespace().any(|x| x == c),
                "{user}'s slice has the controllers {}",
                parts[3]
            );
        }
        let path = v2_path(parts[0]);
        assert!(
            path.starts_with(&format!("/user.slice/user-{uid}.slice/session-"))
                && path.ends_with(".scope"),
            "{user}'s login shell is in {path}"
        );
        let got: Vec<&str> = parts[1].lines().collect();
        assert_eq!(
            got, files,
            "{user}: cpu.max memory.max memory.high pids.max"
        );
        assert!(parts[2].contains(summary), "{}", parts[2]);
        // slirp: the login comes from the host's side of the virtual network
        assert!(parts[2].contains("sshd from 10.0.2.2"), "{}", parts[2]);
    }
}

#[test]
fn resize_within_max_changes_the_files_beyond_max_is_refused_and_release_restores() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    let _s = g.session(user);
    g.expect_slice(uid, 2000, 8 * GIB, Some(4 * GIB), 4096);

    let o = g.ssh(user, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    assert!(
        o.out().contains("Resources allocated: 3 CPUs, 3G memory"),
        "{}",
        o.out()
    );
    // the soft limit keeps its share of the hard one
    g.expect_slice(uid, 3000, 3 * GIB, Some(1536 * MIB), 4096);
    g.as_user(user, "fairshare-ctl request --cpu 1.5 --tasks 5000")
        .ok();
    let before = g.expect_slice(uid, 1500, 3 * GIB, Some(1536 * MIB), 5000);
    let st = g.as_user(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["allocated_cpu"], 1.5);
    assert_eq!(st["source"], "resize");

    // three refusals in one login (logins are slow in the guest): exit
    // status and stderr of each
    let refusals = [
        ("--cpu 16", "cpu 16 is above your maximum of 8 CPUs"),
        ("--mem 64G", "mem 64G is above your maximum of 32G"),
        ("--tasks 9000", "tasks 9000 is above your maximum of 8192"),
    ];
    let script: Vec<String> = refusals
        .iter()
        .map(|(args, _)| {
            format!("fairshare-ctl resize {args} 2>$HOME/fs-err >/dev/null; echo \"$? $(wc -l < $HOME/fs-err) $(cat $HOME/fs-err)\"")
        })
        .collect();
    let o = g.as_user(user, &script.join("; ")).ok();
    let lines: Vec<&str> = o.out().lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.out());
    for ((args, reason), line) in refusals.iter().zip(lines) {
        assert!(
            line.starts_with("1 1 ") && line.contains(reason),
            "resize {args}: want exit 1 and one line of stderr saying {reason:?}, got: {line}"
        );
    }
    assert_eq!(g.slice(uid), before, "after the refused resizes");

    let o = g.as_user(user, "fairshare-ctl release").ok();
    assert!(
        o.out().contains("back to the default of 2 CPUs, 8G memory"),
        "{}",
        o.out()
    );
    g.expect_slice(uid, 2000, 8 * GIB, Some(4 * GIB), 4096);
    let st = g.as_user(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["source"], "default");
}

#[test]
fn the_shell_user_scopes_and_user_services_stay_under_the_slice() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let held = g.session(user);
    g.as_user(user, "fairshare-ctl resize --cpu 1.5 --mem 1G --tasks 300")
        .ok();
    g.expect_slice(uid, 1500, GIB, Some(512 * MIB), 300);
    let out = g
        .ssh(
            user,
            "cat /proc/self/cgroup; echo ---; \
             systemd-run --user --scope --quiet cat /proc/self/cgroup; echo ---; \
             systemd-run --user --quiet --unit=fs-escape sleep 300 && sleep 1 && \
             cat /proc/$(systemctl --user show -P MainPID fs-escape)/cgroup; echo ---; \
             setsid sh -c 'sleep 300 & echo $! > /tmp/fs-df.pid' < /dev/null > /dev/null 2>&1; sleep 1; \
             cat /proc/$(cat /tmp/fs-df.pid)/cgroup",
        )
        .ok();
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{}", out.stdout);
    let slice = format!("/user.slice/user-{uid}.slice/");
    for (what, part) in [
        "login shell",
        "systemd-run --user --scope",
        "systemd --user service",
        "double fork + setsid",
    ]
    .iter()
    .zip(&parts)
    {
        assert!(v2_path(part).starts_with(&slice), "{what}: {part}");
    }
    assert!(
        v2_path(parts[1]).starts_with(&format!("{slice}user@{uid}.service/")),
        "{}",
        parts[1]
    );
    assert!(
        v2_path(parts[2]).ends_with(&format!("user@{uid}.service/app.slice/fs-escape.service")),
        "{}",
        parts[2]
    );
    // the held session too
    let held_cg = g.read(&format!("/proc/{}/cgroup", held.pid)).unwrap();
    assert!(v2_path(&held_cg).starts_with(&slice), "{held_cg}");
    // processes that left the ssh session still count against the slice
    g.expect_slice(uid, 1500, GIB, Some(512 * MIB), 300);
    let tasks = g.value(uid, "pids.current");
    assert!(tasks >= 4, "pids.current = {tasks}");
    // clean up: the user service and the double-forked sleep
    g.sh(&format!("pkill -u {uid} -f '^sleep 300'; true"));
}

/// CPU share of a busy loop over ~6 s in the guest, in % of one CPU: from
/// its own process times, and from the slice's `cpu.stat` usage_usec.
const BUSY_SHARE: &str = r#"
d=/sys/fs/cgroup/user.slice/user-$(id -u).slice
sh -c 'while :; do :; done' & P=$!
sleep 1
a=$(awk '{print $14+$15}' /proc/$P/stat); u0=$(awk '$1=="usage_usec"{print $2}' $d/cpu.stat); t0=$(date +%s%N)
sleep 6
b=$(awk '{print $14+$15}' /proc/$P/stat); u1=$(awk '$1=="usage_usec"{print $2}' $d/cpu.stat); t1=$(date +%s%N)
kill $P
echo $(( (b - a) * 1000000000 / $(getconf CLK_TCK) * 100 / (t1 - t0) )) $(( (u1 - u0) * 1000 * 100 / (t1 - t0) ))
"#;

#[test]
fn a_busy_loop_is_throttled_to_the_quota() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    let _s = g.session(user);
    g.as_user(user, "fairshare-ctl resize --cpu 0.5").ok();
    g.expect_slice(uid, 500, 8 * GIB, Some(4 * GIB), 4096);
    let before = g.keyed(uid, "cpu.stat");
    let o = g.ssh(user, BUSY_SHARE).ok();
    let after = g.keyed(uid, "cpu.stat");
    let shares: Vec<u64> = o
        .out()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let (process, slice) = (shares[0], shares[1]);
    let throttled = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
        (b["nr_throttled"] - a["nr_throttled"]) as f64
            / (b["nr_periods"] - a["nr_periods"]).max(1) as f64
    };
    let half = throttled(&before, &after);
    eprintln!(
        "0.5 CPU quota: busy loop {process}%, slice {slice}% of a CPU; throttled in {:.0}% of the periods",
        half * 100.0
    );
    // The quota is the ceiling; the floor is low because the emulated CPU
    // shares a busy host.
    assert!(
        (10..=65).contains(&process),
        "busy loop used {process}% of a CPU under a 0.5 CPU quota"
    );
    assert!(
        (10..=70).contains(&slice),
        "the slice used {slice}% of a CPU under a 0.5 CPU quota"
    );
    // a loop that wants a whole CPU runs into half a CPU in most periods
    assert!(
        half > 0.5,
        "throttled in only {:.0}% of the periods: {before:?} -> {after:?}",
        half * 100.0
    );
    assert!(after["throttled_usec"] > before["throttled_usec"]);

    // Raised to 1.5 CPUs, one busy loop is rarely held back (the login's own
    // processes may still add up to 1.5 CPUs now and then): the quota, not
    // the slow, shared emulated CPU, made the difference above.
    g.as_user(user, "fairshare-ctl resize --cpu 1.5").ok();
    g.expect_slice(uid, 1500, 8 * GIB, Some(4 * GIB), 4096);
    let before = g.keyed(uid, "cpu.stat");
    let o = g.ssh(user, BUSY_SHARE).ok();
    let after = g.keyed(uid, "cpu.stat");
    let more = throttled(&before, &after);
    eprintln!(
        "1.5 CPU quota: busy loop, slice: {}% of a CPU; throttled in {:.0}% of the periods",
        o.out(),
        more * 100.0
    );
    assert!(
        more < half / 2.0,
        "throttled in {:.0}% of the periods under a 1.5 CPU quota, {:.0}% under 0.5",
        more * 100.0,
        half * 100.0
    );
    assert!(after["usage_usec"] - before["usage_usec"] > 500_000);
}

#[test]
fn a_memory_hog_beyond_memory_max_is_oom_killed_and_counted() {
    let g = Guest::get();
    g.fresh_daemon(POLICY_NO_HIGH);
    let (user, uid) = TESTUSER3;
    let _s = g.session(user);
    g.as_user(user, "fairshare-ctl resize --mem 128M").ok();
    g.expect_slice(uid, 2000, 128 * MIB, None, 4096);
    let before = g.keyed(uid, "memory.events");
    // 300M of zeroes held in memory by `tail` cannot fit in a 128M slice.
    let o = g
        .ssh(
            user,
            "head -c 300M /dev/zero | tail > /dev/null; echo status=$?",
        )
        .ok();
    assert_eq!(o.out(), "status=137", "memory hog not killed: {o:?}");
    // v2 counts the kill in every ancestor of the victim's cgroup, so the
    // slice's own memory.events has it (even after that session ended)
    let after = g.keyed(uid, "memory.events");
    assert!(
        after["oom_kill"] > before["oom_kill"] && after["oom_kill"] >= 1,
        "{before:?} -> {after:?}"
    );
    assert!(after["max"] > before["max"], "{after:?}");
    let st = g.ctl(&format!("--json status --user {user}")).ok().json();
    assert_eq!(st["usage"]["oom_kills"], after["oom_kill"], "{st}");
    let human = g.as_user(user, "fairshare-ctl status").ok();
    assert!(
        human
            .out()
            .contains(&format!("{} OOM kill", after["oom_kill"])),
        "{}",
        human.out()
    );
}

#[test]
fn memory_high_throttles_the_slice_above_the_soft_limit_without_killing() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let _s = g.session(user);
    g.as_user(user, "fairshare-ctl resize --mem 256M").ok();
    g.expect_slice(uid, 2000, 256 * MIB, Some(128 * MIB), 4096);
    let before = g.keyed(uid, "memory.events");
    // 200M: above memory.high (128M), below memory.max (256M). Without swap
    // nothing can be reclaimed: the kernel holds the allocating processes back.
    let mut hog = g.spawn_ssh(
        user,
        "exec -a fs-v2-hog sh -c 'head -c 200M /dev/zero | tail > /dev/null'",
    );
    let start = Instant::now();
    let (events, current) = wait_for(
        "the slice to go above memory.high",
        Duration::from_secs(120),
        || {
            let ev = g.keyed(uid, "memory.events");
            let cur = g.value(uid, "memory.current");
            (ev["high"] > before["high"] && cur > 128 * MIB).then_some((ev, cur))
        },
    );
    eprintln!(
        "above memory.high after {:?}: memory.current {current}, {events:?}",
        start.elapsed()
    );
    assert!(current < 256 * MIB);
    // held back, not killed
    std::thread::sleep(Duration::from_secs(3));
    let ev = g.keyed(uid, "memory.events");
    assert_eq!(ev["oom_kill"], before["oom_kill"], "{ev:?}");
    assert_eq!(ev["max"], before["max"], "{ev:?}");
    assert!(
        g.sh("pgrep -u testuser -x tail").code == 0,
        "the hog is gone"
    );
    g.sh("pkill -KILL -u testuser -x tail; pkill -KILL -u testuser -x head; true");
    let _ = hog.kill();
    let _ = hog.wait();
}

#[test]
fn status_json_reports_the_v2_usage_of_the_slice() {
    let g = Guest::get();
    g.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    let _s = g.session(user);
    g.as_user(user, "fairshare-ctl resize --cpu 0.5").ok();
    g.expect_slice(uid, 500, 8 * GIB, Some(4 * GIB), 4096);
    // some CPU time and some throttling to report
    g.ssh(user, "timeout 4 sh -c 'while :; do :; done'; true")
        .ok();
    // The slice is quiet now (a held sleep, and the user manager): read the
    // files around the daemon's answer.
    let read = |g: &Guest| {
        (
            g.keyed(uid, "cpu.stat"),
            g.keyed(uid, "memory.events"),
            g.value(uid, "pids.current"),
            g.value(uid, "memory.current"),
        )
    };
    let (cpu0, ev0, pids0, mem0) = read(&g);
    let st = g.ctl(&format!("--json status --user {user}")).ok().json();
    let (cpu1, ev1, pids1, mem1) = read(&g);
    let u = &st["usage"];
    eprintln!("usage: {u}");
    let nsec = u["cpu_usage_nsec"].as_u64().expect("cpu_usage_nsec");
    assert!(
        cpu0["usage_usec"] * 1000 <= nsec && nsec <= cpu1["usage_usec"] * 1000,
        "cpu_usage_nsec {nsec}, cpu.stat usage_usec {} .. {}",
        cpu0["usage_usec"],
        cpu1["usage_usec"]
    );
    assert!(
        nsec > 500_000_000,
        "4 s of a busy loop at 0.5 CPU: {nsec} ns"
    );
    let thr = u["cpu_throttled_periods"].as_u64().unwrap();
    assert!(
        cpu0["nr_throttled"] <= thr && thr <= cpu1["nr_throttled"] && thr > 0,
        "{thr} vs {cpu0:?} .. {cpu1:?}"
    );
    let tasks = u["tasks_current"].as_u64().unwrap();
    assert!(
        pids0.min(pids1) <= tasks && tasks <= pids0.max(pids1) && tasks >= 2,
        "tasks_current {tasks}, pids.current {pids0} .. {pids1}"
    );
    let mem = u["memory_current"].as_u64().unwrap();
    let (lo, hi) = (mem0.min(mem1), mem0.max(mem1));
    assert!(
        mem > 0 && mem >= lo / 2 && mem <= hi * 2,
        "memory_current {mem}, memory.current {mem0} .. {mem1}"
    );
    assert_eq!(ev0["oom_kill"], ev1["oom_kill"]);
    assert_eq!(u["oom_kills"], ev0["oom_kill"], "{u}");
    // the same figures, for the user and in the list
    let own = g.as_user(user, "fairshare-ctl --json status").ok().json();
    assert!(own["usage"]["cpu_usage_nsec"].as_u64().unwrap() >= nsec);
    let list = g.ctl("--json list").ok().json();
    let row = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uid"] == uid)
        .cloned()
        .unwrap();
    assert!(
        row["usage"]["memory_current"].as_u64().unwrap() > 0
            && row["usage"]["tasks_current"].as_u64().unwrap() >= 2,
        "usage in the list: {row}"
    );
}
