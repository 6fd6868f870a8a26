//! Fair share under contention (issue 15): CPU weights from the policy reach
//! the drop-ins and the kernel, and the kernel splits the CPUs by them.
//! Asserted on the cgroup files (`cpu.shares`) and on the CPU time the two
//! slices really used (`cpu.stat`, `cpuacct.usage`), never on what fairshared reports.
//!
//! Run in the container (hybrid cgroups) by script/test. Self-contained: it
//! uses only `Host` and its plain helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

const A: (&str, u32) = ("testuser", 1001);
const B: (&str, u32) = ("testuser2", 1002);

/// Quotas of 4 CPUs on a 2-CPU host never bind: only the weights decide.
const POLICY: &str = "\
defaults: {cpu: 4, mem: 8G, weight: 100, mem_low: 256M, swap: 0}
max: {cpu: 8, mem: 32G, weight: 400}
capacity: {cpu: 64, mem: 256G}
";

/// The same with testuser at weight 200.
fn weighted() -> String {
    format!("{POLICY}users:\n  testuser:\n    defaults: {{weight: 200}}\n")
}

const GLOBAL: &str = "/etc/systemd/system/user-.slice.d/40-fairshare.conf";

/// `cpu.shares` of a user's slice (v1: CPUWeight × 1024 / 100).
fn shares(h: &Host, uid: u32) -> Option<u64> {
    h.read(&format!(
        "/sys/fs/cgroup/cpu/user.slice/user-{uid}.slice/cpu.shares"
    ))
    .and_then(|s| s.trim().parse().ok())
}

#[track_caller]
fn expect_shares(h: &Host, uid: u32, want: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) && shares(h, uid) != Some(want) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shares(h, uid), Some(want), "cpu.shares of user-{uid}.slice");
}

/// CPU time of a user's slice, in ns, from the kernel's accounting:
/// `usage_usec` of the v2 `cpu.stat` (the hybrid layout's `unified`
/// hierarchy keeps it for every cgroup), else v1 `cpuacct.usage`.
fn usage(h: &Host, uid: u32) -> u64 {
    let s = format!("user.slice/user-{uid}.slice");
    for f in [
        format!("/sys/fs/cgroup/unified/{s}/cpu.stat"),
        format!("/sys/fs/cgroup/{s}/cpu.stat"),
    ] {
        if let Some(v) = h.read(&f).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        }) {
            return v * 1000;
        }
    }
    for dir in ["cpu,cpuacct", "cpuacct"] {
        let f = format!("/sys/fs/cgroup/{dir}/{s}/cpuacct.usage");
        if let Some(v) = h.read(&f).and_then(|t| t.trim().parse().ok()) {
            return v;
        }
    }
    panic!("no cpu.stat or cpuacct.usage for user-{uid}.slice");
}

/// CPU time A and B used over 10 s while both run 4 busy threads.
fn split(h: &Host) -> (f64, f64) {
    // let the scheduler settle after a change of weights
    std::thread::sleep(Duration::from_secs(3));
    let (a0, b0) = (usage(h, A.1), usage(h, B.1));
    std::thread::sleep(Duration::from_secs(10));
    let (a1, b1) = (usage(h, A.1), usage(h, B.1));
    ((a1 - a0) as f64 / 1e9, (b1 - b0) as f64 / 1e9)
}

#[test]
fn cpu_time_splits_by_weight_one_to_one_then_two_to_one_after_a_reload() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let _undo = Undo(&h, "pkill -KILL -u 1001,1002 -f fs-e2e-busy; true".into());
    // the policy default's drop-in carries the fair-share keys
    let g = h.read(GLOBAL).unwrap();
    for line in [
        "CPUWeight=100\n",
        "MemoryLow=268435456\n",
        "MemorySwapMax=0\n",
    ] {
        assert!(g.contains(line), "{line} in {GLOBAL}:\n{g}");
    }
    let busy = "for i in 1 2 3 4; do (exec -a fs-e2e-busy bash -c 'while :; do :; done') & done; \
                sleep 60; kill $(jobs -p)";
    let mut a = h.ssh_spawn(A.0, busy);
    let mut b = h.ssh_spawn(B.0, busy);
    wait_for("8 busy threads", Duration::from_secs(20), || {
        let o = h.sh("pgrep -c -f '^fs-e2e-busy'");
        (o.out().trim() == "8").then_some(())
    });
    expect_shares(&h, A.1, 1024);
    expect_shares(&h, B.1, 1024);
    let (ta, tb) = split(&h);
    let r = ta / tb;
    eprintln!("equal weights: {ta:.2} s and {tb:.2} s of CPU in 10 s, ratio {r:.3}");
    assert!(
        ta + tb > 2.0,
        "the two users used {ta:.2} + {tb:.2} s of CPU in 10 s"
    );
    assert!(
        (0.85..=1.15).contains(&r),
        "equal weights: {ta:.2} s vs {tb:.2} s (ratio {r:.3})"
    );

    // weight 200 for testuser: the running slice gets it from a reload
    h.write("/etc/fairshare/policy.d/50-test.yaml", &weighted());
    let o = h.sh("systemctl reload fairshared 2>&1").ok();
    assert!(o.out().is_empty(), "{}", o.out());
    expect_shares(&h, A.1, 2048);
    expect_shares(&h, B.1, 1024);
    let own = h
        .read("/etc/systemd/system/user-1001.slice.d/40-fairshare.conf")
        .unwrap_or_default();
    assert!(
        own.contains("CPUWeight=200\n"),
        "testuser's drop-in:\n{own}"
    );
    let (ta, tb) = split(&h);
    let r = ta / tb;
    eprintln!("weights 200:100: {ta:.2} s and {tb:.2} s of CPU in 10 s, ratio {r:.3}");
    assert!(
        ta + tb > 2.0,
        "the two users used {ta:.2} + {tb:.2} s of CPU in 10 s"
    );
    assert!(
        (1.7..=2.3).contains(&r),
        "weights 200:100: {ta:.2} s vs {tb:.2} s (ratio {r:.3})"
    );

    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    h.logout_all();
}
