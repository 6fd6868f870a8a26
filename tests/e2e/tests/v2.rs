//! What only pure cgroup v2 has, in the QEMU guest booted with
//! `systemd.unified_cgroup_hierarchy=1` (tests/testhost/v2vm.sh): the guest
//! really is pure v2 and fairshared detects it, `memory.high` throttles, and
//! `status` reports the v2 usage files. The core tests (login, resize,
//! refusal, release, what stays under the slice, root and system accounts
//! left alone, CPU throttling, the OOM kill, the rules of leases and root's
//! set, the policy default from systemd's drop-ins, reloads, notices) run
//! there too: they are the `on_v2_guest` variants of the [`core_test!`]s in
//! pam.rs, daemon.rs, rules.rs, defaults.rs and notices.rs.
//! Every check reads the files of `/sys/fs/cgroup/user.slice/user-UID.slice/`
//! and `/proc/PID/cgroup`.
//!
//! Run with: `sudo tests/testhost/v2vm.sh test` (every `on_v2_guest` test),
//! or with the guest up: `cargo test --release -p fairshare-e2e --tests --
//! on_v2_guest --test-threads=1`. The guest is emulated (no KVM), so
//! CPU-bound code is ~14x slower and every wait is longer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

v2_test!(the_guest_is_pure_cgroup_v2_and_fairshared_detects_it, |g| {
    let o = g
        .sh("stat -fc %T /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers; cat /proc/1/cgroup; \
             ls -d /sys/fs/cgroup/cpu /sys/fs/cgroup/memory /sys/fs/cgroup/unified 2>/dev/null | wc -l")
        .ok();
    let l: Vec<&str> = o.out().lines().collect();
    assert_eq!(l[0], "cgroup2fs", "{}", o.out());
    for c in ["cpu", "memory", "pids"] {
        assert!(l[1].split(' ').any(|x| x == c), "controllers: {}", l[1]);
    }
    assert_eq!(Layout::Unified.unit_path(l[2]), "/init.scope");
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
});

v2_test!(
    memory_high_throttles_the_slice_above_the_soft_limit_without_killing,
    |g| {
        g.fresh_daemon(CORE_POLICY);
        let (user, uid) = TESTUSER;
        let _s = g.session(user);
        g.as_user(user, "fairshare-ctl resize --mem 256M").ok();
        g.expect_limits(uid, want(2000, 256 * MIB, 4096).high(128 * MIB));
        let before = g.keyed(uid, File::MemEvents);
        // 200M: above memory.high (128M), below memory.max (256M). Without swap
        // nothing can be reclaimed: the kernel holds the allocating processes back.
        let mut hog = g.ssh_spawn(
            user,
            "exec -a fs-v2-hog sh -c 'head -c 200M /dev/zero | tail > /dev/null'",
        );
        let start = Instant::now();
        let (events, current) = wait_for(
            "the slice to go above memory.high",
            // 30 s on the machine itself, scaled for the emulation
            g.patience(30),
            || {
                let ev = g.keyed(uid, File::MemEvents);
                let cur = g.value(uid, File::MemCurrent);
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
        let ev = g.keyed(uid, File::MemEvents);
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
);

v2_test!(status_json_reports_the_v2_usage_of_the_slice, |g| {
    g.fresh_daemon(CORE_POLICY);
    let (user, uid) = TESTUSER2;
    let _s = g.session(user);
    g.as_user(user, "fairshare-ctl resize --cpu 0.5").ok();
    g.expect_limits(uid, want(500, 8 * GIB, 4096).high(4 * GIB));
    // some CPU time and some throttling to report
    g.ssh(user, "timeout 4 sh -c 'while :; do :; done'; true")
        .ok();
    // The slice is quiet now (a held sleep, and the user manager): read its
    // files right before and right after the daemon's answer, in one go.
    let files = [
        "cpu.stat",
        "memory.events",
        "pids.current",
        "memory.current",
    ];
    let dump = format!(
        "cd /sys/fs/cgroup{}; for f in {}; do echo \"== $f\"; cat $f; done",
        slice_path(uid),
        files.join(" ")
    );
    let o = g
        .sh(&format!(
            "{dump}; echo ==status; fairshare-ctl --json status --user {user}; echo ==after; {dump}"
        ))
        .ok();
    let (first, rest) = o.stdout.split_once("==status\n").unwrap();
    let (answer, second) = rest.split_once("==after\n").unwrap();
    let parse = |dump: &str| -> Vec<std::collections::BTreeMap<String, u64>> {
        dump.split("== ")
            .skip(1)
            .map(|part| {
                let (name, text) = part.split_once('\n').unwrap();
                let mut m = layout::flat_keyed(text);
                if m.is_empty() {
                    m.insert(name.to_string(), text.trim().parse().unwrap());
                }
                m
            })
            .collect()
    };
    let (b, a) = (parse(first), parse(second));
    assert_eq!(
        (b.len(), a.len()),
        (files.len(), files.len()),
        "{}",
        o.stdout
    );
    let (cpu0, ev0, pids0, mem0) = (&b[0], &b[1], b[2]["pids.current"], b[3]["memory.current"]);
    let (cpu1, ev1, pids1, mem1) = (&a[0], &a[1], a[2]["pids.current"], a[3]["memory.current"]);
    let st: serde_json::Value = serde_json::from_str(answer).unwrap();
    let u = &st["usage"];
    eprintln!("usage: {u}; memory.current {mem0} .. {mem1}");
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
    // what the files said right before and right after the answer
    let mem = u["memory_current"].as_u64().unwrap();
    assert!(
        mem > 0 && mem0.min(mem1) <= mem && mem <= mem0.max(mem1),
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
});
