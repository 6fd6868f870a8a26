//! The login storm: `sessions` PAM sessions for `users` distinct users,
//! opened at once and then closed at once, each in its own process through
//! the real module (a stack with pam_fairshare only; the child sets
//! XDG_SESSION_ID as pam_systemd would, so the daemon treats them as logind
//! sessions and does not move them). Floor: the SetUnitProperties calls the
//! daemon makes for these sessions (one per user when their first session
//! opens, one when their last closes), issued directly, all at once, on one
//! bus connection.
//!
//! Before each arm every slice is set to other limits, so the check
//! afterwards (the cgroup files of every slice, and the daemon's ledger)
//! proves the arm did its work.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::{Limits, Request, Response, UserRef};
use fairshared::systemd::slice_name;
use serde::{Deserialize, Serialize};
use zbus::zvariant::OwnedVariant;
use zbus_systemd::systemd1::ManagerProxy;

use crate::alloc::{manager, props, runtime};
use crate::report::{Report, Row, Samples, ms, verdict};
use crate::stats::{median, percentile};
use crate::{Result, fail};

/// `storm`: every round's wall times and CPU, and the per-session figures.
#[derive(Serialize, Deserialize)]
pub struct StormSamples {
    pub users: u32,
    pub sessions: u32,
    pub service: String,
    pub limits: String,
    pub calls_per_phase: u32,
    pub rounds: Vec<StormRound>,
    pub failures: u32,
    pub problems: Vec<String>,
    pub session_open_ns: Vec<f64>,
    pub session_cpu_ns: Vec<f64>,
    pub module_threads_created_max: i64,
}

impl Samples for StormSamples {
    const FILE: &'static str = "storm.json";
}

/// One round: the daemon arm, the direct floor and the null stack.
#[derive(Serialize, Deserialize)]
pub struct StormRound {
    pub daemon_open_ns: f64,
    pub daemon_close_ns: f64,
    pub daemon_ns: f64,
    pub direct_open_ns: f64,
    pub direct_close_ns: f64,
    pub direct_ns: f64,
    pub daemon_failures: u32,
    pub direct_failures: u32,
    /// CPU time (ms) by process name during the arm.
    pub daemon_cpu_ms: BTreeMap<String, f64>,
    pub direct_cpu_ms: BTreeMap<String, f64>,
    pub null_open_ns: Option<f64>,
    pub null_close_ns: Option<f64>,
    pub null_ns: Option<f64>,
}

pub struct Setup {
    pub prefix: String,
    pub first_uid: u32,
    pub users: u32,
    pub sessions: u32,
    pub service: String,
    /// A stack without the module, timed for context (processes alone).
    pub null_service: Option<String>,
    pub rounds: usize,
    pub socket: PathBuf,
    /// The results directory.
    pub dir: PathBuf,
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        self.stdout.read_line(&mut l)?;
        if l.is_empty() {
            return fail("a pam-session child exited early (see its error above)");
        }
        Ok(l.trim().to_string())
    }

    fn say(&mut self, word: &str) -> Result<()> {
        writeln!(self.stdin, "{word}")?;
        self.stdin.flush()?;
        Ok(())
    }
}

/// Fields of a child's answer after the leading word.
fn numbers(line: &str, word: &str) -> Result<Vec<i64>> {
    let mut it = line.split_whitespace();
    if it.next() != Some(word) {
        return fail(format!("expected `{word} …` from a child, got `{line}`"));
    }
    it.map(|x| {
        x.parse::<i64>()
            .map_err(|e| format!("`{line}`: {e}").into())
    })
    .collect()
}

/// Reads the v1 cgroup files of each slice and lists every difference from
/// `want`.
fn check_slices(uids: &[u32], want: &Limits) -> Vec<String> {
    let quota = (want.cpu.quota_usec_per_sec() / 10).to_string();
    let mem = want.mem.get().to_string();
    let tasks = want.tasks.get().to_string();
    let mut bad = Vec::new();
    for uid in uids {
        let s = slice_name(*uid);
        for (file, expect) in [
            (format!("cpu/user.slice/{s}/cpu.cfs_quota_us"), &quota),
            (format!("memory/user.slice/{s}/memory.limit_in_bytes"), &mem),
            (format!("pids/user.slice/{s}/pids.max"), &tasks),
        ] {
            let path = format!("/sys/fs/cgroup/{file}");
            match std::fs::read_to_string(&path) {
                Ok(v) if v.trim() == expect.as_str() => {}
                Ok(v) => bad.push(format!("{path}: {} (want {expect})", v.trim())),
                Err(e) => bad.push(format!("{path}: {e}")),
            }
        }
    }
    bad
}

/// Sessions the daemon counts for each of `uids` (0 when not tracked).
fn counted(client: &Client, uids: &[u32]) -> Result<Vec<u32>> {
    let Response::UserList(list) = client.call(&Request::List)? else {
        return fail("`list` did not answer with a user list");
    };
    Ok(uids
        .iter()
        .map(|u| {
            list.users
                .iter()
                .find(|s| s.uid == *u)
                .map_or(0, |s| s.sessions)
        })
        .collect())
}

/// Limits nobody would choose: set before each arm.
fn scrambled() -> Limits {
    Limits {
        cpu: Cpus::from_millis(500),
        mem: Bytes(Bytes::GIB),
        mem_high: None,
        tasks: Tasks(1111),
    }
}

async fn set_all(
    mgr: &ManagerProxy<'static>,
    uids: &[u32],
    p: &[(String, OwnedVariant)],
) -> Result<(f64, u32)> {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for uid in uids {
        let (m, p, s) = (mgr.clone(), p.to_vec(), slice_name(*uid));
        set.spawn(async move { m.set_unit_properties(s, true, p).await });
    }
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            errors += 1;
        }
    }
    Ok((t.elapsed().as_nanos() as f64, errors))
}

/// CPU time (ms) of every process in this pid namespace, by command name;
/// `children` is what this process's waited-for children used (the storm's
/// PAM sessions).
fn cpu_by_comm() -> BTreeMap<String, f64> {
    let tick_ms = 1000.0
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
    let mut out = BTreeMap::new();
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<u64> = stat[close + 1..]
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 4 {
            continue;
        }
        *out.entry(comm).or_insert(0.0) += (f[0] + f[1]) as f64 * tick_ms;
        if name == me {
            *out.entry("children".into()).or_insert(0.0) += (f[2] + f[3]) as f64 * tick_ms;
        }
    }
    out
}

fn cpu_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

struct Arm {
    open_ns: f64,
    close_ns: f64,
    failures: u32,
    problems: Vec<String>,
    session_open_ns: Vec<f64>,
    /// CPU of each session process from open to closed (the module's side).
    session_cpu_ns: Vec<f64>,
    thread_delta_max: i64,
}

/// The storm through PAM: `service` is the stack with the module; with
/// `check`, the slices and the daemon's counts are checked after each phase
/// (untimed). Without (the null stack) the slices are not checked, and the
/// daemon must count no session at all.
fn daemon_arm(
    s: &Setup,
    round: usize,
    uids: &[u32],
    want: &Limits,
    client: &Client,
    service: &str,
    check: bool,
) -> Result<Arm> {
    let exe = std::env::current_exe()?;
    let mut kids = Vec::with_capacity(s.sessions as usize);
    for i in 0..s.sessions {
        let user = format!("{}{:03}", s.prefix, i % s.users + 1);
        let mut child = Command::new(&exe)
            .args(["pam-session", "--service", service, "--user", &user])
            .arg(format!("--session-id=bench-storm-{round}-{i}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return fail("no pipes to a child");
        };
        kids.push(Session {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        });
    }
    for k in &mut kids {
        let l = k.line()?;
        if l != "ready" {
            return fail(format!("child: {l}"));
        }
    }
    let mut arm = Arm {
        open_ns: 0.0,
        close_ns: 0.0,
        failures: 0,
        problems: Vec::new(),
        session_open_ns: Vec::new(),
        session_cpu_ns: Vec::new(),
        thread_delta_max: 0,
    };
    // open, all at once
    let t = Instant::now();
    for k in &mut kids {
        k.say("open")?;
    }
    for k in &mut kids {
        let v = numbers(&k.line()?, "opened")?;
        if v.len() != 4 {
            return fail("short `opened` line");
        }
        if v[0] != 0 {
            arm.failures += 1;
            arm.problems
                .push(format!("pam_open_session returned {}", v[0]));
        }
        arm.thread_delta_max = arm.thread_delta_max.max(v[2] - v[1]);
        arm.session_open_ns.push(v[3] as f64);
    }
    arm.open_ns = t.elapsed().as_nanos() as f64;
    // every session counted, every slice limited
    let per_user = if check { s.sessions / s.users } else { 0 };
    for (uid, n) in uids.iter().zip(counted(client, uids)?) {
        if n != per_user {
            arm.failures += 1;
            arm.problems.push(format!(
                "uid {uid}: daemon counts {n} sessions, want {per_user}"
            ));
        }
    }
    if check {
        let bad = check_slices(uids, want);
        arm.failures += bad.len() as u32;
        arm.problems.extend(bad);
    }
    // close, all at once
    let t = Instant::now();
    for k in &mut kids {
        k.say("close")?;
    }
    for k in &mut kids {
        let v = numbers(&k.line()?, "closed")?;
        if v.first() != Some(&0) {
            arm.failures += 1;
            arm.problems
                .push(format!("pam_close_session returned {v:?}"));
        }
        if let Some(cpu) = v.get(2) {
            arm.session_cpu_ns.push(*cpu as f64);
        }
    }
    arm.close_ns = t.elapsed().as_nanos() as f64;
    for k in &mut kids {
        k.say("quit")?;
    }
    for k in &mut kids {
        k.child.wait()?;
    }
    for (uid, n) in uids.iter().zip(counted(client, uids)?) {
        if n != 0 {
            arm.failures += 1;
            arm.problems.push(format!(
                "uid {uid}: {n} sessions still counted after closing"
            ));
        }
    }
    if check {
        let bad = check_slices(uids, want);
        arm.failures += bad.len() as u32;
        arm.problems.extend(bad);
    }
    Ok(arm)
}

fn direct_arm(
    rt: &tokio::runtime::Runtime,
    mgr: &ManagerProxy<'static>,
    uids: &[u32],
    want: &Limits,
) -> Result<Arm> {
    let p = props(want);
    let (open_ns, e1) = rt.block_on(set_all(mgr, uids, &p))?;
    let mut problems = check_slices(uids, want);
    let (close_ns, e2) = rt.block_on(set_all(mgr, uids, &p))?;
    problems.extend(check_slices(uids, want));
    Ok(Arm {
        open_ns,
        close_ns,
        failures: e1 + e2 + problems.len() as u32,
        problems,
        session_open_ns: Vec::new(),
        session_cpu_ns: Vec::new(),
        thread_delta_max: 0,
    })
}

pub fn run(s: &Setup) -> Result<()> {
    if s.users == 0 || s.sessions % s.users != 0 {
        return fail("sessions must be a multiple of users");
    }
    let uids: Vec<u32> = (0..s.users).map(|i| s.first_uid + i).collect();
    let client = Client::new(&s.socket, Duration::from_secs(30));
    let first = format!("{}001", s.prefix);
    let want = match client.call(&Request::Status {
        user: Some(UserRef::Name(first.clone())),
    })? {
        Response::StatusInfo(i) => match i.default {
            Some(d) => d,
            None => return fail(format!("{first} has no default limits (exempt?)")),
        },
        other => return fail(format!("status of {first}: {other:?}")),
    };
    let rt = runtime()?;
    let mgr = rt.block_on(manager())?;
    let scramble = props(&scrambled());
    let mut rounds = Vec::new();
    let (mut fails, mut threads) = (0u32, 0i64);
    let mut problems: Vec<String> = Vec::new();
    let mut open_lat = Vec::new();
    let mut session_cpu = Vec::new();
    for round in 0..s.rounds {
        let mut daemon = None;
        let mut direct = None;
        let (mut daemon_cpu, mut direct_cpu) = (BTreeMap::new(), BTreeMap::new());
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for d in order {
            let (_, e) = rt.block_on(set_all(&mgr, &uids, &scramble))?;
            if e > 0 {
                return fail(format!("{e} slices could not be scrambled"));
            }
            std::thread::sleep(Duration::from_millis(300));
            let before = cpu_by_comm();
            if d {
                daemon = Some(daemon_arm(
                    s, round, &uids, &want, &client, &s.service, true,
                )?);
                daemon_cpu = cpu_delta(&before, &cpu_by_comm());
            } else {
                direct = Some(direct_arm(&rt, &mgr, &uids, &want)?);
                direct_cpu = cpu_delta(&before, &cpu_by_comm());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let (Some(d), Some(x)) = (daemon, direct) else {
            return fail("an arm did not run");
        };
        // Context, not a floor: the same 200 processes through a stack
        // without the module (pam_permit), so nothing reaches the daemon.
        let null = match &s.null_service {
            Some(svc) => {
                let n = daemon_arm(s, round, &uids, &want, &client, svc, false)?;
                if n.failures > 0 {
                    return fail(format!("the null stack {svc}: {:?}", n.problems));
                }
                Some((n.open_ns, n.close_ns))
            }
            None => None,
        };
        eprintln!(
            "storm round {round}: daemon open {:.1} ms + close {:.1} ms, direct {:.1} + {:.1} ms, processes alone {:.1} + {:.1} ms, failures {}",
            d.open_ns / 1e6,
            d.close_ns / 1e6,
            x.open_ns / 1e6,
            x.close_ns / 1e6,
            null.map_or(f64::NAN, |n| n.0 / 1e6),
            null.map_or(f64::NAN, |n| n.1 / 1e6),
            d.failures + x.failures
        );
        fails += d.failures + x.failures;
        threads = threads.max(d.thread_delta_max);
        problems.extend(d.problems.iter().chain(&x.problems).take(20).cloned());
        open_lat.extend(d.session_open_ns.iter().copied());
        session_cpu.extend(d.session_cpu_ns.iter().copied());
        rounds.push(StormRound {
            daemon_open_ns: d.open_ns,
            daemon_close_ns: d.close_ns,
            daemon_ns: d.open_ns + d.close_ns,
            direct_open_ns: x.open_ns,
            direct_close_ns: x.close_ns,
            direct_ns: x.open_ns + x.close_ns,
            daemon_failures: d.failures,
            direct_failures: x.failures,
            daemon_cpu_ms: daemon_cpu,
            direct_cpu_ms: direct_cpu,
            null_open_ns: null.map(|n| n.0),
            null_close_ns: null.map(|n| n.1),
            null_ns: null.map(|n| n.0 + n.1),
        });
    }
    StormSamples {
        users: s.users,
        sessions: s.sessions,
        service: s.service.clone(),
        limits: want.to_string(),
        calls_per_phase: s.users,
        rounds,
        failures: fails,
        problems,
        session_open_ns: open_lat,
        session_cpu_ns: session_cpu,
        module_threads_created_max: threads,
    }
    .save(&s.dir)
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str = "login storm: 200 sessions, 100 users, open+close wall";
    const TARGET: &str = "0 failures, limits right, ≤ 1.5×";
    const MAX_RATIO: f64 = 1.5;
    const THREADS: &str = "module: threads created by open_session";
    let Some(v) = StormSamples::load(dir)? else {
        r.row(Row::missing(FIGURE, TARGET));
        r.row(Row::missing(THREADS, "0"));
        return Ok(());
    };
    let d: Vec<f64> = v.rounds.iter().map(|x| x.daemon_ns).collect();
    let x: Vec<f64> = v.rounds.iter().map(|x| x.direct_ns).collect();
    let mut row = Row::paired(FIGURE, &d, &x, TARGET, MAX_RATIO);
    row.figure = format!(
        "login storm: {} sessions, {} users, open+close wall (rounds={})",
        v.sessions,
        v.users,
        d.len()
    );
    let ratio_ok = median(&d)
        .zip(median(&x))
        .map(|(a, b)| a / b <= MAX_RATIO && v.failures == 0);
    row.verdict = format!("{} ({} failures)", verdict(ratio_ok), v.failures);
    r.row(row);
    let part = |f: fn(&StormRound) -> Option<f64>| {
        ms(median(&v.rounds.iter().filter_map(f).collect::<Vec<_>>()))
    };
    // CPU by process over each arm (open, checks, close), medians
    let cpu = |f: fn(&StormRound) -> &BTreeMap<String, f64>| -> String {
        let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for round in &v.rounds {
            for (k, x) in f(round) {
                by.entry(k).or_default().push(*x);
            }
        }
        let mut m: Vec<(&str, f64)> = by
            .into_iter()
            .filter_map(|(k, xs)| Some((k, median(&xs)?)))
            .filter(|(_, m)| *m >= 10.0)
            .collect();
        m.sort_by(|a, b| b.1.total_cmp(&a.1));
        m.iter()
            .map(|(k, m)| format!("{k} {m:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    r.note(format!(
        "login storm, CPU time by process during each arm (medians over rounds, clock ticks of 10 ms; `children` = the 200 session processes over their whole life, start-up and exit included, with the module): with the daemon: {}; direct calls: {}. The module's own side, measured inside each session process from pam_open_session to the end of pam_close_session: median {:.0} µs CPU per session (p99 {:.0} µs).",
        cpu(|x| &x.daemon_cpu_ms),
        cpu(|x| &x.direct_cpu_ms),
        median(&v.session_cpu_ns).unwrap_or(0.0) / 1e3,
        percentile(&v.session_cpu_ns, 99.0).unwrap_or(0.0) / 1e3,
    ));
    let lat = &v.session_open_ns;
    r.note(format!(
        "login storm: each session is its own process calling pam_open_session on a stack with only pam_fairshare (`{}`; XDG_SESSION_ID set as pam_systemd would, so no logind work is included), all released at once, then all closed at once. Floor: the {} SetUnitProperties calls per phase the daemon makes (a user's first open, their last close), issued directly, all at once, on one bus connection. Before each arm every slice is set to other limits; after each phase the cgroup files of all {} slices (cpu.cfs_quota_us, memory.limit_in_bytes, pids.max) and the daemon's session counts are checked. Medians: open {} + close {} (daemon) vs {} + {} (direct); for context, the same 200 processes through a stack without the module (pam_permit only, nothing reaches the daemon): open {} + close {}. Per-session pam_open_session latency in the storm: median {}, p99 {}. Failures: {}{}",
        v.service,
        v.calls_per_phase,
        v.users,
        part(|x| Some(x.daemon_open_ns)),
        part(|x| Some(x.daemon_close_ns)),
        part(|x| Some(x.direct_open_ns)),
        part(|x| Some(x.direct_close_ns)),
        part(|x| x.null_open_ns),
        part(|x| x.null_close_ns),
        ms(median(lat)),
        ms(percentile(lat, 99.0)),
        v.failures,
        if v.problems.is_empty() {
            String::new()
        } else {
            format!(
                " (first: {})",
                v.problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        }
    ));
    let threads = v.module_threads_created_max;
    r.row(Row::single(
        THREADS,
        threads.to_string(),
        "0",
        Some(threads == 0),
    ));
    r.note(format!(
        "module threads: `Threads:` of /proc/self/status in each storm process just before and after pam_open_session (largest difference over {} sessions).",
        lat.len()
    ));
    Ok(())
}
