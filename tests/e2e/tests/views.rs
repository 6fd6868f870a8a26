//! `fairshare-ctl top` in a real terminal: tmux in the test host runs it as
//! root while users run busy loops under different CPU quotas and a memory
//! hog fills most of its limit. The figures on the screen are checked against
//! the quotas and usage in the slices' cgroup files, not against what the
//! daemon says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

const POLICY: &str = "\
defaults: {cpu: 0.3, mem: 1G}
max: {cpu: 2, mem: 4G}
capacity: {cpu: 64, mem: 256G}
";

/// tmux on a socket of its own, so nothing else in the host is touched.
const TMUX: &str = "tmux -L fs-views";

/// Four busy loops: more than any quota here lets through, even on a busy machine.
const BUSY: &str = "for i in 1 2 3 4; do (while :; do :; done) & done; wait";

const HOG_MIB: u64 = 230;
const HOG_LIMIT: u64 = 256 * MIB;

/// One row of the table as words: USER CPUS %ALLOC %HOST MEM %MEM THR/s OOM SES SOURCE...
fn row<'a>(screen: &'a str, user: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&user) && w.len() >= 10)
}

fn number(word: &str) -> Option<f64> {
    word.trim_end_matches('%').parse().ok()
}

/// `230M` -> bytes.
fn size(word: &str) -> Option<u64> {
    let (n, unit) = word.split_at(word.len().checked_sub(1)?);
    let shift = match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "B" => 0,
        _ => return None,
    };
    Some((n.parse::<f64>().ok()? * (1u64 << shift) as f64) as u64)
}

/// CPU time of `uid`'s slice in nanoseconds: `cpuacct.usage` where the host
/// accounts CPU per cgroup, else the user and system time of the user's
/// processes (`/proc/PID/stat`; the busy loops here live throughout).
fn cpu_nsec(h: &Container, uid: u32) -> u64 {
    for dir in ["cpu,cpuacct", "cpuacct"] {
        let f = format!("/sys/fs/cgroup/{dir}/user.slice/user-{uid}.slice/cpuacct.usage");
        if let Some(v) = h.read(&f).and_then(|s| s.trim().parse().ok()) {
            return v;
        }
    }
    let o = h
        .sh(&format!(
            "for p in $(pgrep -u {uid}); do cat /proc/$p/stat 2>/dev/null; done | sed 's/^.*) //' | awk '{{t += $12 + $13}} END {{print t + 0}}'; getconf CLK_TCK"
        ))
        .ok();
    let mut w = o
        .stdout
        .split_whitespace()
        .map(|w| w.parse::<u64>().unwrap());
    let (ticks, hz) = (w.next().unwrap(), w.next().unwrap());
    ticks * 1_000_000_000 / hz
}

/// CPUs each user's slice used over `span`.
fn measured(h: &Container, uids: &[u32], span: Duration) -> Vec<f64> {
    let t0 = Instant::now();
    let before: Vec<u64> = uids.iter().map(|u| cpu_nsec(h, *u)).collect();
    std::thread::sleep(span);
    let after: Vec<u64> = uids.iter().map(|u| cpu_nsec(h, *u)).collect();
    let dt = t0.elapsed().as_secs_f64();
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / 1e9 / dt)
        .collect()
}

/// A login running a command until dropped (the test's Undo ends the
/// user's processes inside; this ends the local ssh).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[track_caller]
fn within(what: &str, got: f64, want: f64, screen: &str) {
    assert!(
        (got - want).abs() <= 0.2 * want,
        "{what}: {got} is not within 20% of {want} (a timing failure under heavy load from elsewhere: re-run once)\n{screen}"
    );
}

fn screen(h: &Container, target: &str) -> String {
    h.sh(&format!("{TMUX} capture-pane -p -t {target}"))
        .ok()
        .stdout
}

/// Waits until top's screen shows a CPU figure for every one of `users`.
fn frame_with(h: &Container, target: &str, users: &[&str]) -> String {
    wait_for(
        "a frame of top with CPU figures",
        Duration::from_secs(30),
        || {
            let s = screen(h, target);
            users
                .iter()
                .all(|u| row(&s, u).is_some_and(|w| number(w[1]).is_some()))
                .then_some(s)
        },
    )
}

#[test]
fn top_shows_each_users_cpu_share_and_memory_against_the_cgroup_files() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let _end = Undo(
        &h,
        format!(
            "{TMUX} kill-server 2>/dev/null; pkill -KILL -U {}; true",
            host::uid_list()
        ),
    );
    let (u1, uid1) = TESTUSER;
    let (u2, uid2) = TESTUSER2;
    let (u3, uid3) = TESTUSER3;
    let _s1 = h.session(u1);
    let _s2 = h.session(u2);
    let _s3 = h.session(u3);
    // testuser keeps the 0.3-CPU default; testuser2 resizes down to 0.15 for
    // an hour; root sets testuser3's memory to 256M (quotas in cpu.cfs_quota_us)
    h.ssh(u2, "fairshare-ctl resize --cpu 0.15 --for 1h").ok();
    h.ctl(&format!("set {u3} --mem 256M")).ok();
    h.expect_limits(uid1, want(300, GIB, 4096));
    h.expect_limits(uid2, want(150, GIB, 4096));
    h.expect_limits(uid3, want(300, HOG_LIMIT, 4096));

    let _busy1 = Running(h.ssh_spawn(u1, BUSY));
    let _busy2 = Running(h.ssh_spawn(u2, BUSY));
    let _hog = Running(h.ssh_spawn(
        u3,
        // vec() fills the string in place (`x` would need twice the memory)
        &format!("perl -e 'vec($x, {HOG_MIB} * 2**20 - 1, 8) = 1; sleep 600'"),
    ));
    let mem_file =
        format!("/sys/fs/cgroup/memory/user.slice/user-{uid3}.slice/memory.usage_in_bytes");
    let hog_mem: u64 = wait_for("the hog's memory", Duration::from_secs(30), || {
        h.read(&mem_file)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|m| *m >= HOG_MIB * MIB)
    });
    assert!(hog_mem <= HOG_LIMIT, "{hog_mem}");

    // The machine gives both users their whole quota (on a machine shared with
    // other builds that can take a while: wait for it, then look at top).
    let mut used = vec![];
    let ok = (0..15).any(|_| {
        used = measured(&h, &[uid1, uid2], Duration::from_secs(3));
        (used[0] - 0.3).abs() <= 0.06 && (used[1] - 0.15).abs() <= 0.03
    });
    assert!(
        ok,
        "the busy loops did not get their quotas of 0.3 and 0.15 CPUs within 45 s (got {used:?}): the machine is too busy for this test"
    );
    let at_quota = Instant::now();

    // top as root, in an 80x24 terminal
    h.sh(&format!(
        "{TMUX} new-session -d -s root -x 80 -y 24 'fairshare-ctl top -d 2 --sort name; echo top exited $?; stty -a | grep -o -- \"-*icanon\"; sleep 60'"
    ))
    .ok();
    let s = frame_with(&h, "root", &[u1, u2]);
    assert_eq!(
        h.sh(&format!(
            "{TMUX} display -p -t root '#{{alternate_on}} #{{pane_width}}'"
        ))
        .ok()
        .out(),
        "1 80",
        "top runs in the alternate screen of an 80-column terminal"
    );
    println!("{s}");
    for l in s.lines() {
        assert!(l.chars().count() <= 80, "{l}");
    }
    assert!(s.contains("USER"), "{s}");
    let r1 = row(&s, u1).unwrap();
    let r2 = row(&s, u2).unwrap();
    let r3 = row(&s, u3).unwrap_or_else(|| panic!("no row for {u3}:\n{s}"));
    // CPUS and %ALLOC against the quotas in cpu.cfs_quota_us (checked above)
    within("testuser's CPUS", number(r1[1]).unwrap(), 0.3, &s);
    within("testuser2's CPUS", number(r2[1]).unwrap(), 0.15, &s);
    within("testuser's %ALLOC", number(r1[2]).unwrap(), 100.0, &s);
    within("testuser2's %ALLOC", number(r2[2]).unwrap(), 100.0, &s);
    // %HOST: CPUS over the host's CPUs
    let cpus: f64 = h
        .sh("grep -c '^cpu[0-9]' /proc/stat")
        .ok()
        .out()
        .parse()
        .unwrap();
    within("testuser's %HOST", number(r1[3]).unwrap(), 30.0 / cpus, &s);
    // the hog: memory near its limit, as in memory.usage_in_bytes
    let (mem_used, mem_max) = r3[4].split_once('/').unwrap();
    let mem_used = size(mem_used).unwrap();
    assert_eq!(size(mem_max), Some(HOG_LIMIT), "{s}");
    let now = h.read(&mem_file).unwrap().trim().parse::<u64>().unwrap();
    within("testuser3's memory", mem_used as f64, now as f64, &s);
    assert!(number(r3[5]).unwrap() >= 85.0, "%MEM: {s}");
    // where each allocation comes from
    assert_eq!(r1[9], "default", "{s}");
    assert_eq!(r2[9], "lease", "{s}");
    assert!(
        r2[10].starts_with('5') && r2[10].ends_with('m'),
        "time left on the 1h lease: {s}"
    );
    assert_eq!(r3[9], "root", "{s}");
    // held at the quota: throttled
    assert!(number(r1[6]).unwrap() > 0.0, "THR/s: {s}");
    assert!(s.contains("at limit: CPU"), "{s}");

    // q leaves the alternate screen and raw mode
    h.sh(&format!("{TMUX} send-keys -t root q")).ok();
    let after = wait_for("top to exit", Duration::from_secs(10), || {
        let s = screen(&h, "root");
        s.contains("top exited").then_some(s)
    });
    assert!(after.contains("top exited 0"), "{after}");
    assert!(after.lines().any(|l| l.trim() == "icanon"), "{after}");
    assert_eq!(
        h.sh(&format!("{TMUX} display -p -t root '#{{alternate_on}}'"))
            .ok()
            .out(),
        "0"
    );

    // so does Ctrl-C (a key in raw mode, not a signal)
    h.sh(&format!(
        "{TMUX} new-session -d -s ctrlc -x 80 -y 24 'fairshare-ctl top; echo top exited $?; stty -a | grep -o -- \"-*icanon\"; sleep 60'"
    ))
    .ok();
    wait_for(
        "top in the alternate screen",
        Duration::from_secs(20),
        || {
            let o = h.sh(&format!("{TMUX} display -p -t ctrlc '#{{alternate_on}}'"));
            (o.out() == "1").then_some(())
        },
    );
    h.sh(&format!("{TMUX} send-keys -t ctrlc C-c")).ok();
    let after = wait_for("top to exit on Ctrl-C", Duration::from_secs(10), || {
        let s = screen(&h, "ctrlc");
        s.contains("top exited").then_some(s)
    });
    assert!(after.contains("top exited 0"), "{after}");
    assert!(after.lines().any(|l| l.trim() == "icanon"), "{after}");

    // --once --json as root: the same figures for scripts
    let once = h.ctl("--json top --once -d 2").ok().json();
    let users = once["users"].as_array().unwrap();
    let share = |name: &str| {
        users.iter().find(|u| u["user"] == name).unwrap()["cpu_share_of_allocation"]
            .as_f64()
            .unwrap()
    };
    within(
        "testuser's share in --once --json",
        share(u1),
        1.0,
        &once.to_string(),
    );
    within(
        "testuser2's share in --once --json",
        share(u2),
        1.0,
        &once.to_string(),
    );

    // list and status: CPU now over the daemon's recent window (30 s), once
    // the whole window lies after the loops reached their quotas
    if let Some(left) = Duration::from_secs(33).checked_sub(at_quota.elapsed()) {
        std::thread::sleep(left);
    }
    let list = h.ctl("--json list").ok().json();
    let recent = |name: &str| {
        let u = list["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"));
        assert!(u["usage"]["cpu_usage_nsec"].as_u64().is_some(), "{list}");
        let r = &u["usage"]["cpu_recent"];
        let window = r["window_nsec"].as_f64().unwrap_or(0.0) / 1e9;
        assert!(window >= 20.0, "a window of {window} s: {list}");
        r["used_nsec"].as_f64().unwrap() / 1e9 / window
    };
    within(
        "testuser's CPU now in list --json",
        recent(u1),
        0.3,
        &list.to_string(),
    );
    within(
        "testuser2's CPU now in list --json",
        recent(u2),
        0.15,
        &list.to_string(),
    );
    let table = h.ctl("list").ok().stdout;
    println!("{table}");
    assert!(
        table.lines().next().unwrap().ends_with("CPU NOW"),
        "{table}"
    );
    for (u, quota) in [(u1, 0.3), (u2, 0.15)] {
        let w: Vec<&str> = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&u))
            .unwrap_or_else(|| panic!("no {u} in\n{table}"));
        // ... CPU-NOW (PERCENT%)
        let share = w[w.len() - 1]
            .trim_start_matches('(')
            .trim_end_matches("%)");
        within(
            &format!("{u}'s CPU now in list"),
            number(w[w.len() - 2]).unwrap(),
            quota,
            &table,
        );
        within(
            &format!("{u}'s share in list"),
            number(share).unwrap(),
            100.0,
            &table,
        );
    }
    let status = h.ssh(u1, "fairshare-ctl status").ok().stdout;
    assert!(
        status.contains("CPU now 0.") && status.contains("CPU time"),
        "{status}"
    );
}

#[test]
fn a_users_top_shows_only_their_row_and_the_host() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let _end = Undo(&h, format!("pkill -KILL -U {}; true", host::uid_list()));
    let (u1, _) = TESTUSER;
    let (u2, _) = TESTUSER2;
    let _s2 = h.session(u2);
    let _busy = Running(h.ssh_spawn(u1, BUSY));
    let mut used = vec![];
    let ok = (0..15).any(|_| {
        used = measured(&h, &[TESTUSER.1], Duration::from_secs(3));
        (used[0] - 0.3).abs() <= 0.06
    });
    assert!(
        ok,
        "the busy loops did not get their quota of 0.3 CPUs within 45 s (got {used:?}): the machine is too busy for this test"
    );
    let me = "tmux -L fs-views-me";
    let s = h
        .ssh(
            u1,
            &format!(
                "{me} new-session -d -s me -x 80 -y 24 'fairshare-ctl top -d 1'; sleep 4; {me} capture-pane -p -t me; {me} kill-server"
            ),
        )
        .ok()
        .stdout;
    println!("{s}");
    assert!(s.contains("your own row"), "{s}");
    assert!(s.contains("allocated: CPUs"), "host totals: {s}");
    let r = row(&s, u1).unwrap_or_else(|| panic!("no row for {u1}:\n{s}"));
    within("testuser's own CPUS", number(r[1]).unwrap(), 0.3, &s);
    assert!(row(&s, u2).is_none(), "{s}");
    assert_eq!(
        s.lines().filter(|l| l.starts_with("testuser")).count(),
        1,
        "{s}"
    );
    // and in a script, as text
    let once = h.ssh(u1, "fairshare-ctl top --once").ok().stdout;
    let r = row(&once, u1).unwrap_or_else(|| panic!("no row for {u1}:\n{once}"));
    within(
        "testuser's CPUS in --once",
        number(r[1]).unwrap(),
        0.3,
        &once,
    );
    assert!(row(&once, u2).is_none(), "{once}");
    // SIGTERM from outside: the terminal is put back
    let s = h
        .ssh(
            u1,
            &format!(
                "{me} new-session -d -s me -x 80 -y 24 'fairshare-ctl top; echo top exited $?; stty -a | grep -o -- \"-*icanon\"; sleep 30'; sleep 2; pkill -TERM -x fairshare-ctl; sleep 1; {me} capture-pane -p -t me; {me} display -p -t me 'alternate=#{{alternate_on}}'; {me} kill-server"
            ),
        )
        .ok()
        .stdout;
    assert!(s.contains("top exited 0"), "{s}");
    assert!(s.lines().any(|l| l.trim() == "icanon"), "{s}");
    assert!(s.contains("alternate=0"), "{s}");
}
