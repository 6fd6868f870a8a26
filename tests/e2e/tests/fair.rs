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
        // the policy default's drop-in carries the fair-share keys, but
        // never the guarantee (set at login, held until the last logout)
        let g = h.read(host::GLOBAL_DROPIN).unwrap();
        for line in ["CPUWeight=100\n", "MemorySwapMax=0\n"] {
            assert!(g.contains(line), "{line} in {}:\n{g}", host::GLOBAL_DROPIN);
        }
        assert!(
            !g.contains("MemoryLow"),
            "no guarantee in {}:\n{g}",
            host::GLOBAL_DROPIN
        );
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

/// IO limits on `/home` (issue 15): 50 MB/s read, 20 MB/s write, 400 write
/// operations a second; systemd reads the suffixes as powers of 1000.
const IO_POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
  io:
    /home: {read_bw: 50M, write_bw: 20M, write_iops: 400}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 64, mem: 256G}
";

/// `MAJ:MIN` of the whole disk `/home` is on, as the kernel keys IO limits
/// (a partition's disk).
fn home_disk(h: &dyn TestHost) -> String {
    let o = h
        .sh(
            "d=$(stat -c '%Hd:%Ld' /home); p=$(readlink -f /sys/dev/block/$d); \
             [ -e \"$p/partition\" ] && p=$(dirname \"$p\"); cat \"$p/dev\"",
        )
        .ok();
    o.out().to_string()
}

/// The IO limits of `uid`'s slice on `disk`, as the kernel has them: v1
/// `blkio.throttle.{read,write}_bps_device` (`DISK BYTES` lines; v1 has
/// no IOPS limit from systemd), v2 the disk's `io.max` line.
fn io_files(h: &dyn TestHost, uid: u32, disk: &str) -> String {
    let s = slice_path(uid);
    match h.layout() {
        Layout::Hybrid => {
            let read = |f: &str| {
                let t = h
                    .read(&format!("/sys/fs/cgroup/blkio{s}/{f}"))
                    .unwrap_or_else(|| panic!("no blkio {f} for user-{uid}.slice"));
                t.lines()
                    .find(|l| l.starts_with(&format!("{disk} ")))
                    .unwrap_or("")
                    .to_string()
            };
            format!(
                "read_bps {} write_bps {}",
                read("blkio.throttle.read_bps_device"),
                read("blkio.throttle.write_bps_device")
            )
        }
        Layout::Unified => h
            .read(&format!("/sys/fs/cgroup{s}/io.max"))
            .unwrap_or_else(|| panic!("no io.max for user-{uid}.slice"))
            .lines()
            .find(|l| l.starts_with(&format!("{disk} ")))
            .unwrap_or("")
            .to_string(),
    }
}

/// What [`io_files`] shows for [`IO_POLICY`] (`None`: no limit).
fn io_want(h: &dyn TestHost, disk: &str, on: bool) -> String {
    match (h.layout(), on) {
        (Layout::Hybrid, true) => {
            format!("read_bps {disk} 50000000 write_bps {disk} 20000000")
        }
        (Layout::Hybrid, false) => "read_bps  write_bps ".into(),
        (Layout::Unified, true) => {
            format!("{disk} rbps=50000000 wbps=20000000 riops=max wiops=400")
        }
        // systemd removes the disk's line (or leaves it all max)
        (Layout::Unified, false) => String::new(),
    }
}

#[track_caller]
fn expect_io(h: &dyn TestHost, uid: u32, disk: &str, on: bool) {
    let want = io_want(h, disk, on);
    let ok = |got: &str| {
        got == want
            || (!on
                && h.layout() == Layout::Unified
                && got == format!("{disk} rbps=max wbps=max riops=max wiops=max"))
    };
    let start = Instant::now();
    let mut got = io_files(h, uid, disk);
    while !ok(&got) && start.elapsed() < h.patience(10) {
        std::thread::sleep(Duration::from_millis(100));
        got = io_files(h, uid, disk);
    }
    assert!(
        ok(&got),
        "IO limits of user-{uid}.slice on the {}: want {want:?}, got {got:?}",
        h.name()
    );
}

// The policy's IO limits for a path reach the kernel's files for the disk
// the path is on, from the policy default's drop-in; a reload without them
// takes them off the running slice (systemd's default: no limit), a reload
// with them puts them back on it.
core_test!(io_limits_of_a_path_reach_the_kernel_for_its_disk, |h| {
    h.fresh_daemon(IO_POLICY);
    let disk = home_disk(h);
    assert!(disk.contains(':'), "the disk of /home: {disk:?}");
    let g = h.read(host::GLOBAL_DROPIN).unwrap();
    for line in [
        "IOReadBandwidthMax=/home 50000000\n",
        "IOWriteBandwidthMax=/home 20000000\n",
        "IOWriteIOPSMax=/home 400\n",
    ] {
        assert!(g.contains(line), "{line} in {}:\n{g}", host::GLOBAL_DROPIN);
    }
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    expect_io(h, uid, &disk, true);
    // the policy without them: the running slice loses them at the reload
    h.write("/etc/fairshare/policy.d/50-test.yaml", CORE_POLICY_NO_HIGH);
    let o = h.sh("systemctl reload fairshared 2>&1").ok();
    assert!(o.out().is_empty(), "{}", o.out());
    expect_io(h, uid, &disk, false);
    let g = h.read(host::GLOBAL_DROPIN).unwrap();
    assert!(!g.contains("IO"), "{g}");
    // and back: the running slice gets them from SetUnitProperties (a(st))
    h.write("/etc/fairshare/policy.d/50-test.yaml", IO_POLICY);
    let o = h.sh("systemctl reload fairshared 2>&1").ok();
    assert!(o.out().is_empty(), "{}", o.out());
    expect_io(h, uid, &disk, true);
});

// A direct-I/O write under the 20 MB/s limit runs at 20 MB/s (±25%).
v2_test!(a_direct_write_runs_at_the_write_limit, |g| {
    g.fresh_daemon(IO_POLICY);
    let o = g
        .ssh(
            TESTUSER.0,
            "dd if=/dev/zero of=$HOME/fs-e2e-io bs=1M count=100 oflag=direct 2>&1; rm -f $HOME/fs-e2e-io",
        )
        .ok();
    // "104857600 bytes (105 MB, 100 MiB) copied, 5.2 s, 20.0 MB/s"
    let line = o
        .out()
        .lines()
        .find(|l| l.contains("copied"))
        .unwrap_or_else(|| panic!("no dd summary in: {}", o.out()));
    let bytes: f64 = line
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let secs: f64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" s"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let rate = bytes / secs / 1e6;
    eprintln!("v2 guest: direct write under a 20 MB/s limit: {rate:.1} MB/s ({line})");
    assert!(
        (15.0..=25.0).contains(&rate),
        "a direct write under IOWriteBandwidthMax 20M ran at {rate:.1} MB/s: {line}"
    );
    g.logout_all();
});

/// Guarantees: 256M each, out of a total of half of 2G.
const LOW_POLICY: &str = "\
defaults: {cpu: 2, mem: 1G, mem_low: 256M}
max: {cpu: 8, mem: 2G}
capacity: {cpu: 64, mem: 2G}
";

// A user's memory guarantee counts on v2 only as far as its parents' do:
// user.slice carries the total of the guarantees (capacity.mem_low, half of
// capacity.mem by default), the user's slice their own.
v2_test!(user_slice_carries_the_total_of_the_guarantees, |g| {
    g.fresh_daemon(LOW_POLICY);
    let (user, uid) = TESTUSER;
    let _s = g.session(user);
    let low = |path: &str| {
        g.read(path)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no number in {path}"))
    };
    wait_for("user.slice's memory.low", g.patience(10), || {
        (low("/sys/fs/cgroup/user.slice/memory.low") == GIB).then_some(())
    });
    assert_eq!(
        low(&format!("/sys/fs/cgroup{}/memory.low", slice_path(uid))),
        256 * MIB
    );
    g.logout_all();
});

/// Guarantees wanted beyond the total: 768M each, 1G in total, scaled.
const SCALE_POLICY: &str = "\
defaults: {cpu: 2, mem: 1G, mem_low: 768M}
max: {cpu: 8, mem: 2G}
capacity: {cpu: 64, mem: 4G, mem_low: {total: 1G, when_full: scale}}
";

// Two users wanting 768M each out of 1G (`when_full: scale`): alone, a
// user's slice carries all of it; with both logged in each slice's
// memory.low is 512M, the sum within the total; when one leaves, the other
// has 768M again.
v2_test!(guarantees_beyond_the_total_are_scaled_and_given_back, |g| {
    g.fresh_daemon(SCALE_POLICY);
    let low = |uid: u32| {
        g.read(&format!("/sys/fs/cgroup{}/memory.low", slice_path(uid)))
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let a = g.session(A.0);
    wait_for("memory.low 768M for one user", g.patience(10), || {
        (low(A.1) == Some(768 * MIB)).then_some(())
    });
    let b = g.session(B.0);
    wait_for("memory.low 512M for each of two", g.patience(20), || {
        (low(A.1) == Some(512 * MIB) && low(B.1) == Some(512 * MIB)).then_some(())
    });
    drop(b);
    // a raise waits RAISE_AFTER (30 s: a user logging in and out in a
    // loop must not have every other slice set twice a loop)
    wait_for(
        "memory.low 768M again once alone",
        Duration::from_secs(30) + g.patience(20),
        || (low(A.1) == Some(768 * MIB)).then_some(()),
    );
    drop(a);
    g.logout_all();
});

// A guarantee is held from login to the last logout: processes a user
// leaves behind keep their limits but not their guarantee. It is never in
// a drop-in, which systemd would give every slice that starts (these
// processes, a lingering user, a login while fairshared is down)
// uncounted against capacity.mem_low.
v2_test!(processes_left_behind_keep_no_guarantee, |g| {
    g.fresh_daemon(LOW_POLICY);
    let (user, uid) = TESTUSER;
    let dir = format!("/sys/fs/cgroup{}", slice_path(uid));
    let low = || {
        g.read(&format!("{dir}/memory.low"))
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let held = g.session(user);
    wait_for("memory.low 256M while logged in", g.patience(10), || {
        (low() == Some(256 * MIB)).then_some(())
    });
    let global = g
        .read("/etc/systemd/system/user-.slice.d/40-fairshare.conf")
        .unwrap_or_default();
    assert!(
        global.contains("MemoryMax=") && !global.contains("MemoryLow"),
        "the policy default's drop-in must carry the limits and no guarantee:\n{global}"
    );
    g.ssh(
        user,
        "setsid nohup sh -c 'sleep 300' > /dev/null 2>&1 < /dev/null & sleep 0.5",
    )
    .ok();
    drop(held);
    wait_for(
        "the last session to be counted down",
        g.patience(15),
        || (g.sessions_from(uid, "sshd") == 0).then_some(()),
    );
    wait_for(
        "memory.low 0 with only processes left behind",
        g.patience(10),
        || (low() == Some(0)).then_some(()),
    );
    let left = g.sh(&format!("pgrep -u {uid} -x sleep"));
    let pid: u32 = left
        .out()
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("the process left behind is gone: {left:?}"));
    g.assert_in_slice(pid, uid, "the process left behind");
    assert_eq!(
        g.read(&format!("{dir}/memory.max"))
            .map(|t| t.trim().to_string()),
        Some((GIB).to_string()),
        "the process left behind keeps the memory limit"
    );
    // and root's list says so, in its fair-share column
    let list = g.ctl("list").ok().stdout;
    let row = list
        .lines()
        .find(|l| l.starts_with(&format!("{user} ")))
        .unwrap_or_else(|| panic!("{user} is not in the list:\n{list}"));
    assert!(
        list.lines()
            .next()
            .is_some_and(|h| h.ends_with("FAIR SHARE"))
            && row.ends_with("256M guaranteed while logged in (none now)"),
        "list must show the guarantee as not held now:\n{list}"
    );
    g.sh(&format!("pkill -u {uid} -x sleep; true")).ok();
    g.logout_all();
});

/// Resizable fair-share keys: weight up to 400, guarantees up to 1G each
/// out of 1G in total.
const RESIZE_POLICY: &str = "\
defaults: {cpu: 2, mem: 1G, weight: 100, mem_low: 128M}
max: {cpu: 8, mem: 2G, weight: 400, mem_low: 1G}
capacity: {cpu: 64, mem: 4G, mem_low: {total: 1G}}
";

// A user raises their weight and guarantee within their maximum and the
// kernel's files follow; a second user's guarantee beyond what is left of
// the total is refused, saying how much is free.
core_test!(
    a_resize_of_weight_and_guarantee_reaches_the_kernel_within_the_total,
    |h| {
        h.fresh_daemon(RESIZE_POLICY);
        let (user, uid) = TESTUSER;
        let _s = h.session(user);
        expect_weight(h, uid, 100);
        h.as_user(user, "fairshare-ctl resize --weight 300 --mem-low 768M")
            .ok();
        expect_weight(h, uid, 300);
        if h.layout() == Layout::Unified {
            let f = format!("/sys/fs/cgroup{}/memory.low", slice_path(uid));
            wait_for("memory.low 768M", h.patience(10), || {
                (h.read(&f).and_then(|t| t.trim().parse::<u64>().ok()) == Some(768 * MIB))
                    .then_some(())
            });
        }
        // (logged in: a guarantee counts while its user is)
        let _s2 = h.session(TESTUSER2.0);
        let e = h.as_user(TESTUSER2.0, "fairshare-ctl resize --mem-low 512M");
        assert_eq!(e.code, 1, "{e:?}");
        assert!(
            e.stderr.contains("mem_low 512M asked, 256M free for you"),
            "{}",
            e.stderr
        );
        let o = h.as_user(user, "fairshare-ctl resize --weight 500");
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stderr.contains("maximum of 400"), "{}", o.stderr);
        expect_weight(h, uid, 300);
        h.as_user(user, "fairshare-ctl release").ok();
        expect_weight(h, uid, 100);
    }
);

/// Bursting (issue 15): 0.5 CPU each, up to their `max.cpu` of 2 while the
/// host is idle; with `contention: allocation` two users who both want more
/// are back at their allocations after `busy_for` (3 s).
const BURST_POLICY: &str = "\
defaults: {cpu: 0.5, mem: 2G}
max: {cpu: 2, mem: 4G}
capacity: {cpu: 64, mem: 256G}
bursting: {enabled: true, contention: allocation}
";

/// The same without bursting.
const NO_BURST_POLICY: &str = "\
defaults: {cpu: 0.5, mem: 2G}
max: {cpu: 2, mem: 4G}
capacity: {cpu: 64, mem: 256G}
";

/// A user's slice's CPU time in µs, from the kernel's accounting (see
/// [`usage`]).
fn cpu_usec(h: &dyn TestHost, uid: u32) -> u64 {
    let root = match h.layout() {
        Layout::Hybrid => "/sys/fs/cgroup/unified",
        Layout::Unified => "/sys/fs/cgroup",
    };
    let f = format!("{root}{}/cpu.stat", slice_path(uid));
    let t = h
        .read(&f)
        .unwrap_or_else(|| panic!("no {f} on the {}", h.name()));
    *layout::flat_keyed(&t)
        .get("usage_usec")
        .unwrap_or_else(|| panic!("no usage_usec in {f}:\n{t}"))
}

/// CPUs a user used on average over `secs` seconds (CPU time / wall time,
/// both measured).
fn cpus_used(h: &dyn TestHost, uid: u32, secs: u64) -> f64 {
    cpus_and_idle(h, uid, secs).0
}

/// Idle CPU time in the test host's `/proc/stat`, in clock ticks (idle +
/// iowait of the `cpu` line): the container sees the whole machine's, the
/// guest its own.
fn idle_ticks(h: &dyn TestHost) -> u64 {
    let t = h.read("/proc/stat").expect("/proc/stat");
    let cpu: Vec<u64> = t
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0)
}

/// [`cpus_used`], and the CPUs the host left idle meanwhile (on average).
fn cpus_and_idle(h: &dyn TestHost, uid: u32, secs: u64) -> (f64, f64) {
    let (t0, u0, i0) = (Instant::now(), cpu_usec(h, uid), idle_ticks(h));
    std::thread::sleep(Duration::from_secs(secs));
    let (u1, i1, t1) = (cpu_usec(h, uid), idle_ticks(h), Instant::now());
    let wall = (t1 - t0).as_secs_f64();
    // USER_HZ: 100 on every Linux this runs on
    (
        (u1 - u0) as f64 / 1e6 / wall,
        (i1 - i0) as f64 / 100.0 / wall,
    )
}

/// The quota on a user's slice in µs per 100 ms period (`cpu.max` or
/// `cpu.cfs_quota_us`), `None`: no quota.
fn quota(h: &dyn TestHost, uid: u32) -> Option<u64> {
    h.slice(uid).and_then(|l| l.cpu_quota_us)
}

#[track_caller]
fn expect_quota(h: &dyn TestHost, uid: u32, want: u64, within: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within && quota(h, uid) != Some(want) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        quota(h, uid),
        Some(want),
        "CPU quota of user-{uid}.slice on the {} after {:?}",
        h.name(),
        start.elapsed()
    );
    start.elapsed()
}

// A lone user with a 0.5-CPU allocation bursts to more than 1.5 CPUs on the
// idle 2-CPU host; when a second user starts a busy loop, the first is back
// at their allocation within 10 s (the quota file, and the CPU they get);
// with bursting off (a reload) nobody is ever above their quota. CPU time
// from the slices' own accounting, never the daemon's word.
core_test!(a_lone_user_bursts_into_idle_cpu_and_is_pushed_back, |h| {
    h.fresh_daemon(BURST_POLICY);
    let _undo = Undo(h, "pkill -KILL -u 1001,1002 -f fs-e2e-busy; true".into());
    let busy = "for i in 1 2 3 4; do (exec -a fs-e2e-busy bash -c 'while :; do :; done') & done; \
                sleep 300; kill $(jobs -p)";
    let mut a = h.ssh_spawn(A.0, busy);
    wait_for("4 busy threads", h.patience(20), || {
        (h.sh("pgrep -c -u 1001 -f '^fs-e2e-busy'").out() == "4").then_some(())
    });
    // watched idle for idle_for (10 s), then lifted to max.cpu
    expect_quota(h, A.1, 200_000, h.patience(30));
    let st = h.as_user(A.0, "fairshare-ctl status").ok();
    assert!(
        st.out()
            .contains("bursting:   using up to 2 CPUs while the host is idle"),
        "{}",
        st.out()
    );
    // more than 1.5 CPUs over 10 s, the best of up to four windows. The
    // machine under the test host may be busy with other work (the
    // container's neighbours; fairshared sees only the container's load):
    // a window whose host left no CPU idle still shows the user above their
    // 0.5-CPU quota, which they could never be without the burst.
    let mut best = (0.0f64, 0.0f64);
    for _ in 0..4 {
        let (used, idle) = cpus_and_idle(h, A.1, 10);
        eprintln!(
            "{}: alone, bursting: {used:.2} CPUs over 10 s ({idle:.2} CPUs idle meanwhile)",
            h.name()
        );
        if used > best.0 {
            best = (used, idle);
        }
        if used > 1.5 {
            break;
        }
    }
    let (used, idle) = best;
    assert!(
        used > 1.5 || (idle < 0.25 && used > 0.55),
        "a lone user bursting on the idle host used at most {used:.2} CPUs over 10 s, with {idle:.2} CPUs idle"
    );

    // a second user's busy loop: both want more, back to 0.5 within 10 s
    let mut b = h.ssh_spawn(B.0, busy);
    wait_for("testuser2's 4 busy threads", h.patience(20), || {
        (h.sh("pgrep -c -u 1002 -f '^fs-e2e-busy'").out() == "4").then_some(())
    });
    let took = expect_quota(h, A.1, 50_000, h.patience(10));
    eprintln!(
        "{}: back to the allocation {took:?} after the second user's busy loop",
        h.name()
    );
    assert_eq!(quota(h, B.1), Some(50_000));
    let (ua, ub) = (cpus_used(h, A.1, 5), cpus_used(h, B.1, 5));
    eprintln!("{}: contended: {ua:.2} and {ub:.2} CPUs over 5 s", h.name());
    assert!(ua < 0.6 && ub < 0.6, "at 0.5-CPU quotas: {ua:.2}, {ub:.2}");
    let st = h.as_user(A.0, "fairshare-ctl status").ok();
    assert!(!st.out().contains("bursting:"), "{}", st.out());

    // the second user stops: the first bursts again once the host has been
    // idle for 10 s; bursting turned off by a reload puts the quota back
    let _ = (b.kill(), b.wait());
    h.sh("pkill -KILL -u 1002 -f fs-e2e-busy; true");
    expect_quota(h, A.1, 200_000, h.patience(30));
    h.write("/etc/fairshare/policy.d/50-test.yaml", NO_BURST_POLICY);
    let o = h.sh("systemctl reload fairshared 2>&1").ok();
    assert!(o.out().is_empty(), "{}", o.out());
    expect_quota(h, A.1, 50_000, h.patience(10));
    // and it stays there: never above the quota, however idle the host
    let used = cpus_used(h, A.1, 12);
    eprintln!("{}: bursting off: {used:.2} CPUs over 12 s", h.name());
    assert!(
        used < 0.6,
        "bursting off: {used:.2} CPUs at a 0.5-CPU quota"
    );
    assert_eq!(quota(h, A.1), Some(50_000));

    let _ = (a.kill(), a.wait());
    h.logout_all();
});
