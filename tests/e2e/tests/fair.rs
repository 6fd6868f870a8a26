//! Fair share under contention (issue 15): CPU weights from the policy reach
//! the drop-ins and the kernel, and the kernel splits the CPUs by them.
//! Asserted on the cgroup files (`cpu.shares` on v1, `cpu.weight` on v2) and
//! on the CPU time the two slices really used (`usage_usec` of their
//! `cpu.stat`), never on what fairshared reports.
//!
//! Core tests: each runs in the container (hybrid cgroups) and in the v2
//! guest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

const A: (&str, u32) = TESTUSER;
const B: (&str, u32) = TESTUSER2;

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

/// The CPU weight of a user's slice as the kernel has it, in CPUWeight's
/// units: v2 `cpu.weight` as is, v1 `cpu.shares` × 100 / 1024.
fn weight(h: &dyn TestHost, uid: u32) -> Option<u64> {
    let s = slice_path(uid);
    match h.layout() {
        Layout::Hybrid => h
            .read(&format!("/sys/fs/cgroup/cpu{s}/cpu.shares"))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|shares| shares * 100 / 1024),
        Layout::Unified => h
            .read(&format!("/sys/fs/cgroup{s}/cpu.weight"))
            .and_then(|t| t.trim().parse().ok()),
    }
}

#[track_caller]
fn expect_weight(h: &dyn TestHost, uid: u32, want: u64) {
    let start = Instant::now();
    while start.elapsed() < h.patience(10) && weight(h, uid) != Some(want) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        weight(h, uid),
        Some(want),
        "CPU weight of user-{uid}.slice on the {}",
        h.name()
    );
}

/// CPU time of both users' slices, in µs, from the kernel's accounting:
/// `usage_usec` of the v2 `cpu.stat` (on the hybrid layout the `unified`
/// hierarchy keeps it for every cgroup; the container has no per-slice
/// `cpuacct`). One read of both, so they are taken at the same moment.
fn usage(h: &dyn TestHost) -> (u64, u64) {
    let root = match h.layout() {
        Layout::Hybrid => "/sys/fs/cgroup/unified",
        Layout::Unified => "/sys/fs/cgroup",
    };
    let files: Vec<String> = [A.1, B.1]
        .iter()
        .map(|uid| format!("{root}{}/cpu.stat", slice_path(*uid)))
        .collect();
    let got = h.read_many(&files);
    let v: Vec<u64> = got
        .iter()
        .zip(&files)
        .map(|(t, f)| {
            let t = t
                .as_deref()
                .unwrap_or_else(|| panic!("no {f} on the {}", h.name()));
            *layout::flat_keyed(t)
                .get("usage_usec")
                .unwrap_or_else(|| panic!("no usage_usec in {f}:\n{t}"))
        })
        .collect();
    (v[0], v[1])
}

/// CPU seconds A and B used over 10 s while both run 4 busy threads.
fn split(h: &dyn TestHost) -> (f64, f64) {
    // let the scheduler settle after a change of weights
    std::thread::sleep(Duration::from_secs(3));
    let (a0, b0) = usage(h);
    std::thread::sleep(Duration::from_secs(10));
    let (a1, b1) = usage(h);
    ((a1 - a0) as f64 / 1e6, (b1 - b0) as f64 / 1e6)
}

core_test!(
    cpu_time_splits_by_weight_one_to_one_then_two_to_one_after_a_reload,
    |h| {
        h.fresh_daemon(POLICY);
        let _undo = Undo(h, "pkill -KILL -u 1001,1002 -f fs-e2e-busy; true".into());
        // the policy default's drop-in carries the fair-share keys
        let g = h.read(host::GLOBAL_DROPIN).unwrap();
        for line in [
            "CPUWeight=100\n",
            "MemoryLow=268435456\n",
            "MemorySwapMax=0\n",
        ] {
            assert!(g.contains(line), "{line} in {}:\n{g}", host::GLOBAL_DROPIN);
        }
        let busy = "for i in 1 2 3 4; do (exec -a fs-e2e-busy bash -c 'while :; do :; done') & done; \
                    sleep 90; kill $(jobs -p)";
        let mut a = h.ssh_spawn(A.0, busy);
        let mut b = h.ssh_spawn(B.0, busy);
        wait_for("8 busy threads", h.patience(20), || {
            let o = h.sh("pgrep -c -f '^fs-e2e-busy'");
            (o.out() == "8").then_some(())
        });
        expect_weight(h, A.1, 100);
        expect_weight(h, B.1, 100);
        // the quota never binds: 4 CPUs each on a 2-CPU host
        let l = h.slice(A.1).unwrap();
        assert_eq!(l.cpu_quota_us, Some(400_000), "{l:?}");
        let (ta, tb) = split(h);
        let r = ta / tb;
        eprintln!(
            "{}: equal weights: {ta:.2} s and {tb:.2} s of CPU in 10 s, ratio {r:.3}",
            h.name()
        );
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
        expect_weight(h, A.1, 200);
        expect_weight(h, B.1, 100);
        let own = h
            .read(&format!(
                "/etc/systemd/system/user-{}.slice.d/40-fairshare.conf",
                A.1
            ))
            .unwrap_or_default();
        assert!(
            own.contains("CPUWeight=200\n"),
            "testuser's drop-in:\n{own}"
        );
        let (ta, tb) = split(h);
        let r = ta / tb;
        eprintln!(
            "{}: weights 200:100: {ta:.2} s and {tb:.2} s of CPU in 10 s, ratio {r:.3}",
            h.name()
        );
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
);
