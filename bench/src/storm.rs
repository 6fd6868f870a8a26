//! The login storm: `sessions` PAM sessions for `users` distinct users,
//! opened at once and then closed at once, each in its own process calling
//! pam_open_session and pam_close_session through a real PAM stack.
//!
//! Two comparisons, both interleaved (the order alternates by round):
//!
//! - **the login storm**: the stack a login has (pam_unix + pam_systemd,
//!   `bench-with`) against the same stack without pam_fairshare
//!   (`bench-without`): logind creates every session in both arms. During
//!   the arm without the module fairshared is stopped (its socket too):
//!   running, it would count the logind sessions it finds when it checks the
//!   users logind reports as new, which is not a host without fairshare.
//!   script/bench keeps the bench users' managers from starting (a
//!   condition on `user@UID.service`): fairshared would count a running one
//!   as a session, making every login an additional one. So each user's
//!   first session in an arm is a first login, the second an additional one.
//! - **the module alone**: a stack with only pam_fairshare (`bench-storm`;
//!   the child sets XDG_SESSION_ID as pam_systemd would, so no logind work is
//!   included) against the SetUnitProperties calls the daemon makes for these
//!   sessions (one per user when their first session opens, one when their
//!   last closes), issued directly, all at once, on one bus connection.
//!
//! Before each arm every slice is set to other limits, so the check after
//! the open phase (the cgroup files of every slice, and the sessions the
//! daemon counts) proves the arm did its work. Before the close phase every
//! user is resized through the daemon and the slices checked again, so the
//! check after the close phase sees the slices go back to the default (a
//! close that did not reset them would leave the resized values). A monitor
//! on the system bus counts the calls that reached systemd for the users'
//! slices in each phase.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::{Limits, Request, ResizeArgs, Response, UserRef};
use fairshared::systemd::slice_name;
use serde::{Deserialize, Serialize};
use zbus::zvariant::OwnedVariant;
use zbus_systemd::systemd1::ManagerProxy;

use crate::alloc::{manager, props, runtime};
use crate::busmon::{BusMonitor, Snapshot};
use crate::report::{Report, Row, Samples, ms, verdict};
use crate::stats::{BOOTSTRAP_REPS, bootstrap_paired, median, percentile};
use crate::view::sessions_counted;
use crate::{Result, fail};

/// `storm`: every round's arms, and the per-session figures.
#[derive(Serialize, Deserialize)]
pub struct StormSamples {
    pub users: u32,
    pub sessions: u32,
    /// The stacks: a login's with and without the module, the module alone,
    /// and nothing at all (context).
    pub with_service: String,
    pub without_service: String,
    pub module_service: String,
    pub null_service: Option<String>,
    /// The policy default, and what every user is resized to before the
    /// close phase.
    pub limits: String,
    pub resized: String,
    pub rounds: Vec<StormRound>,
    pub failures: u32,
    pub problems: Vec<String>,
    /// pam_open_session of each session of the module-alone arm, and of the
    /// login stack with the module.
    pub session_open_ns: Vec<f64>,
    pub login_session_open_ns: Vec<f64>,
    /// CPU of each module-alone session process from open to closed.
    pub session_cpu_ns: Vec<f64>,
    pub module_threads_created_max: i64,
}

impl Samples for StormSamples {
    const FILE: &'static str = "storm.json";
}

/// One arm of one round.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    pub open_ns: f64,
    pub close_ns: f64,
    pub failures: u32,
    /// Calls that reached systemd for the users' slices in each phase, seen
    /// on the bus (for the direct floor: its own).
    pub open_calls: u32,
    pub close_calls: u32,
    /// CPU time (ms) by process name during the arm.
    pub cpu_ms: BTreeMap<String, f64>,
}

impl Phases {
    pub fn total_ns(&self) -> f64 {
        self.open_ns + self.close_ns
    }
}

/// One round.
#[derive(Serialize, Deserialize)]
pub struct StormRound {
    /// A login's stack, with the module and without.
    pub with: Phases,
    pub without: Phases,
    /// The module alone, and the direct floor.
    pub module: Phases,
    pub direct: Phases,
    /// No module at all: the processes alone (context).
    pub null: Option<Phases>,
}

pub struct Setup {
    /// fairshared's units, stopped during the arm without the module.
    pub daemon_units: Vec<String>,
    pub prefix: String,
    pub first_uid: u32,
    pub users: u32,
    pub sessions: u32,
    /// A login's stack with the module, and without it.
    pub with_service: String,
    pub without_service: String,
    /// A stack with only the module.
    pub module_service: String,
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

/// Limits nobody would choose: set before each arm.
pub fn scrambled() -> Limits {
    Limits {
        cpu: Cpus::from_millis(500),
        mem: Bytes(Bytes::GIB),
        mem_high: None,
        tasks: Tasks(1111),
        weight: None,
        io_weight: None,
        mem_low: None,
        swap: None,
    }
}

pub async fn set_all(
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

/// Halves every quantity of `l`: limits a resize down to them is always
/// allowed, and they differ from `l` in every cgroup file checked.
fn halved(l: &Limits) -> ResizeArgs {
    ResizeArgs::new(
        Some(Cpus::from_millis(
            (l.cpu.millis() / 2).max(Cpus::MIN.millis()),
        )),
        Some(Bytes(l.mem.get() / 2).floor_mib()),
        Some(Tasks((l.tasks.get() / 2).max(1))),
    )
}

/// Each user resizes their own allocation through the daemon
/// (`fairshare-ctl --json resize`, run as the user: a user's resize ends
/// at their last logout, where root's `set` would outlive it); the limits
/// it applied.
fn resize_all(uids: &[u32], args: &ResizeArgs) -> Result<Limits> {
    use std::os::unix::process::CommandExt;
    let mut applied = None;
    for uid in uids {
        let gid = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))? {
            Some(u) => u.gid.as_raw(),
            None => return fail(format!("no user with uid {uid}")),
        };
        let mut cmd = Command::new("fairshare-ctl");
        cmd.args(["--json", "resize"]);
        for (flag, v) in [
            ("--cpu", &args.cpu),
            ("--mem", &args.mem),
            ("--tasks", &args.tasks),
        ] {
            match v {
                Some(serde_json::Value::String(x)) => cmd.args([flag, x.as_str()]),
                Some(x) => cmd.args([flag, x.to_string().as_str()]),
                None => &mut cmd,
            };
        }
        let out = cmd
            .uid(*uid)
            .gid(gid)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run fairshare-ctl resize as uid {uid}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let l = match serde_json::from_str::<Response>(&text) {
            Ok(Response::Success(s)) => match s.allocation {
                Some(l) => l,
                None => return fail(format!("resize by uid {uid}: no allocation: {}", s.message)),
            },
            _ => {
                return fail(format!(
                    "resize by uid {uid} failed ({}): {text}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        };
        match applied {
            None => applied = Some(l),
            Some(a) if a == l => {}
            Some(a) => return fail(format!("resize by uid {uid} gave {l}, another user's {a}")),
        }
    }
    match applied {
        Some(l) => Ok(l),
        None => fail("no users to resize"),
    }
}

/// Calls on any of `uids`' slices in `s`.
fn slice_calls(s: &Snapshot, uids: &[u32]) -> u32 {
    let names: Vec<String> = uids.iter().map(|u| slice_name(*u)).collect();
    s.seen.iter().filter(|x| names.contains(&x.unit)).count() as u32
}

/// How an arm goes through PAM.
struct Stack<'a> {
    service: &'a str,
    /// Put XDG_SESSION_ID in the PAM environment (a stack without
    /// pam_systemd, which would set it).
    session_id: bool,
    /// The stack has the module: the daemon counts the sessions and limits
    /// the slices, checked after each phase; without it, the daemon must
    /// count none.
    module: bool,
    /// fairshared is stopped during the arm: nothing to ask it.
    daemon_stopped: bool,
}

struct Arm {
    phases: Phases,
    problems: Vec<String>,
    session_open_ns: Vec<f64>,
    /// CPU of each session process from open to closed (the module's side).
    session_cpu_ns: Vec<f64>,
    thread_delta_max: i64,
    /// What the daemon resized every user to before the close phase.
    resized: Option<Limits>,
}

impl Arm {
    fn fail(&mut self, problems: Vec<String>) {
        self.phases.failures += problems.len() as u32;
        self.problems.extend(problems);
    }
}

/// What an arm needs besides its stack.
struct Ctx<'a> {
    s: &'a Setup,
    uids: &'a [u32],
    want: &'a Limits,
    resize: &'a ResizeArgs,
    client: &'a Client,
    bus: &'a BusMonitor,
}

/// The storm through PAM, with `stack`.
fn pam_arm(c: &Ctx, round: usize, stack: &Stack) -> Result<Arm> {
    let s = c.s;
    let exe = std::env::current_exe()?;
    let mut kids = Vec::with_capacity(s.sessions as usize);
    for i in 0..s.sessions {
        let user = format!("{}{:03}", s.prefix, i % s.users + 1);
        let mut cmd = Command::new(&exe);
        cmd.args(["pam-session", "--service", stack.service, "--user", &user]);
        if stack.session_id {
            cmd.arg(format!("--session-id=bench-storm-{round}-{i}"));
        }
        let mut child = cmd
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
        phases: Phases::default(),
        problems: Vec::new(),
        session_open_ns: Vec::new(),
        session_cpu_ns: Vec::new(),
        thread_delta_max: 0,
        resized: None,
    };
    let mark = c.bus.sync()?;
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
            arm.fail(vec![format!("pam_open_session returned {}", v[0])]);
        }
        arm.thread_delta_max = arm.thread_delta_max.max(v[2] - v[1]);
        arm.session_open_ns.push(v[3] as f64);
    }
    arm.phases.open_ns = t.elapsed().as_nanos() as f64;
    let opened = c.bus.sync()?;
    arm.phases.open_calls = slice_calls(&opened.since(&mark), c.uids);
    // every session counted, every slice limited
    let per_user = if stack.module {
        s.sessions / s.users
    } else {
        0
    };
    if !stack.daemon_stopped {
        let mut bad = Vec::new();
        for (uid, n) in c.uids.iter().zip(sessions_counted(c.client, c.uids)?) {
            if n != per_user {
                bad.push(format!(
                    "uid {uid}: daemon counts {n} sessions, want {per_user}"
                ));
            }
        }
        arm.fail(bad);
    }
    if stack.module {
        arm.fail(check_slices(c.uids, c.want));
        // resized, so that the close phase has to put the default back
        let resized = resize_all(c.uids, c.resize)?;
        arm.fail(check_slices(c.uids, &resized));
        arm.resized = Some(resized);
    }
    let mark = c.bus.sync()?;
    // close, all at once
    let t = Instant::now();
    for k in &mut kids {
        k.say("close")?;
    }
    for k in &mut kids {
        let v = numbers(&k.line()?, "closed")?;
        if v.first() != Some(&0) {
            arm.fail(vec![format!("pam_close_session returned {v:?}")]);
        }
        if let Some(cpu) = v.get(2) {
            arm.session_cpu_ns.push(*cpu as f64);
        }
    }
    arm.phases.close_ns = t.elapsed().as_nanos() as f64;
    let closed = c.bus.sync()?;
    arm.phases.close_calls = slice_calls(&closed.since(&mark), c.uids);
    for k in &mut kids {
        k.say("quit")?;
    }
    for k in &mut kids {
        k.child.wait()?;
    }
    if !stack.daemon_stopped {
        arm.fail(none_counted(c.client, c.uids)?);
    }
    if stack.module {
        arm.fail(check_slices(c.uids, c.want));
    }
    Ok(arm)
}

/// Users of `uids` the daemon still counts sessions for.
fn none_counted(client: &Client, uids: &[u32]) -> Result<Vec<String>> {
    Ok(uids
        .iter()
        .zip(sessions_counted(client, uids)?)
        .filter(|(_, n)| *n != 0)
        .map(|(uid, n)| format!("uid {uid}: {n} sessions still counted after closing"))
        .collect())
}

fn systemctl(verb: &str, units: &[String]) -> Result<()> {
    let st = Command::new("systemctl").arg(verb).args(units).status()?;
    if !st.success() {
        return fail(format!("systemctl {verb} {} failed: {st}", units.join(" ")));
    }
    Ok(())
}

/// Starts fairshared again and waits until it has done its start-up work:
/// it answers at once, then catches up with logind and sets right what
/// changed while it was down in the background, and the next arm must not
/// measure that (nor race it).
fn start_daemon(s: &Setup, client: &Client) -> Result<()> {
    systemctl("start", &s.daemon_units)?;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        // `list` says when the catch-up is still going on
        if let Ok(Response::UserList(l)) = client.call(&Request::List)
            && !l.warnings.iter().any(|w| w.contains("catching up"))
        {
            // the slices' check after the catch-up: a few calls per user
            std::thread::sleep(Duration::from_secs(2));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fail("fairshared did not catch up within 30 s of its start")
}

fn direct_arm(c: &Ctx, rt: &tokio::runtime::Runtime, mgr: &ManagerProxy<'static>) -> Result<Arm> {
    let p = props(c.want);
    let mark = c.bus.sync()?;
    let (open_ns, e1) = rt.block_on(set_all(mgr, c.uids, &p))?;
    let opened = c.bus.sync()?;
    let mut problems = check_slices(c.uids, c.want);
    let (close_ns, e2) = rt.block_on(set_all(mgr, c.uids, &p))?;
    let closed = c.bus.sync()?;
    problems.extend(check_slices(c.uids, c.want));
    Ok(Arm {
        phases: Phases {
            open_ns,
            close_ns,
            failures: e1 + e2 + problems.len() as u32,
            open_calls: slice_calls(&opened.since(&mark), c.uids),
            close_calls: slice_calls(&closed.since(&opened), c.uids),
            cpu_ms: BTreeMap::new(),
        },
        problems,
        session_open_ns: Vec::new(),
        session_cpu_ns: Vec::new(),
        thread_delta_max: 0,
        resized: None,
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
    let resize = halved(&want);
    let rt = runtime()?;
    let mgr = rt.block_on(manager())?;
    let bus = BusMonitor::start()?;
    let c = Ctx {
        s,
        uids: &uids,
        want: &want,
        resize: &resize,
        client: &client,
        bus: &bus,
    };
    let scramble = props(&scrambled());
    let login_with = Stack {
        service: &s.with_service,
        session_id: false,
        module: true,
        daemon_stopped: false,
    };
    let login_without = Stack {
        service: &s.without_service,
        session_id: false,
        module: false,
        daemon_stopped: true,
    };
    let module = Stack {
        service: &s.module_service,
        session_id: true,
        module: true,
        daemon_stopped: false,
    };
    let mut out = StormSamples {
        users: s.users,
        sessions: s.sessions,
        with_service: s.with_service.clone(),
        without_service: s.without_service.clone(),
        module_service: s.module_service.clone(),
        null_service: s.null_service.clone(),
        limits: want.to_string(),
        resized: String::new(),
        rounds: Vec::new(),
        failures: 0,
        problems: Vec::new(),
        session_open_ns: Vec::new(),
        login_session_open_ns: Vec::new(),
        session_cpu_ns: Vec::new(),
        module_threads_created_max: 0,
    };
    // Every arm starts from scrambled slices, after a pause, and its CPU by
    // process is taken over the whole arm.
    let arm = |f: &mut dyn FnMut() -> Result<Arm>| -> Result<Arm> {
        let (_, e) = rt.block_on(set_all(&mgr, &uids, &scramble))?;
        if e > 0 {
            return fail(format!("{e} slices could not be scrambled"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu_by_comm();
        let mut a = f()?;
        a.phases.cpu_ms = cpu_delta(&before, &cpu_by_comm());
        std::thread::sleep(Duration::from_millis(300));
        Ok(a)
    };
    for round in 0..s.rounds {
        let mine_first = round % 2 == 0;
        let (mut with, mut without, mut alone, mut direct) = (None, None, None, None);
        for first in [mine_first, !mine_first] {
            if first {
                with = Some(arm(&mut || pam_arm(&c, round, &login_with))?);
            } else {
                systemctl("stop", &s.daemon_units)?;
                let a = arm(&mut || pam_arm(&c, round, &login_without));
                start_daemon(s, &client)?;
                let mut a = a?;
                // nothing the daemon found on its way back up
                let bad = none_counted(&client, &uids)?;
                a.fail(bad);
                without = Some(a);
            }
        }
        for first in [mine_first, !mine_first] {
            if first {
                alone = Some(arm(&mut || pam_arm(&c, round, &module))?);
            } else {
                direct = Some(arm(&mut || direct_arm(&c, &rt, &mgr))?);
            }
        }
        let (Some(w), Some(wo), Some(m), Some(d)) = (with, without, alone, direct) else {
            return fail("an arm did not run");
        };
        // Context, not a floor: the same processes through a stack without
        // the module (pam_permit), so nothing reaches the daemon.
        let null = match &s.null_service {
            Some(svc) => {
                let stack = Stack {
                    service: svc,
                    session_id: true,
                    module: false,
                    daemon_stopped: false,
                };
                let n = arm(&mut || pam_arm(&c, round, &stack))?;
                if n.phases.failures > 0 {
                    return fail(format!("the null stack {svc}: {:?}", n.problems));
                }
                Some(n.phases)
            }
            None => None,
        };
        eprintln!(
            "storm round {round}: login stack with the module {:.1} + {:.1} ms, without {:.1} + {:.1} ms; module alone {:.1} + {:.1} ms, direct {:.1} + {:.1} ms; processes alone {:.1} + {:.1} ms; failures {}",
            w.phases.open_ns / 1e6,
            w.phases.close_ns / 1e6,
            wo.phases.open_ns / 1e6,
            wo.phases.close_ns / 1e6,
            m.phases.open_ns / 1e6,
            m.phases.close_ns / 1e6,
            d.phases.open_ns / 1e6,
            d.phases.close_ns / 1e6,
            null.as_ref().map_or(f64::NAN, |n| n.open_ns / 1e6),
            null.as_ref().map_or(f64::NAN, |n| n.close_ns / 1e6),
            w.phases.failures + wo.phases.failures + m.phases.failures + d.phases.failures
        );
        for a in [&w, &wo, &m, &d] {
            out.failures += a.phases.failures;
            out.problems.extend(a.problems.iter().take(20).cloned());
        }
        out.module_threads_created_max = out
            .module_threads_created_max
            .max(m.thread_delta_max)
            .max(w.thread_delta_max);
        out.session_open_ns.extend(&m.session_open_ns);
        out.login_session_open_ns.extend(&w.session_open_ns);
        out.session_cpu_ns.extend(&m.session_cpu_ns);
        if let Some(r) = w.resized.or(m.resized) {
            out.resized = r.to_string();
        }
        out.rounds.push(StormRound {
            with: w.phases,
            without: wo.phases,
            module: m.phases,
            direct: d.phases,
            null,
        });
    }
    out.save(&s.dir)
}

const LOGIN_TARGET: &str = "≤ 1.2× the same stack without the module; 0 failures";
const LOGIN_MAX_RATIO: f64 = 1.2;
const MODULE_TARGET: &str = "≤ 1.5× the direct calls; 0 failures";
const MODULE_MAX_RATIO: f64 = 1.5;
const THREADS: &str = "module: threads created by open_session";

fn login_figure(v: Option<&StormSamples>) -> String {
    match v {
        Some(v) => format!(
            "login storm: {} logins, {} users, pam_unix + pam_systemd with the module vs without, open+close wall (rounds={})",
            v.sessions,
            v.users,
            v.rounds.len()
        ),
        None => {
            "login storm: 200 logins, 100 users, pam_unix + pam_systemd with the module vs without"
                .into()
        }
    }
}

fn module_figure(v: Option<&StormSamples>) -> String {
    match v {
        Some(v) => format!(
            "login storm, module alone: {} sessions, {} users, vs the daemon's SetUnitProperties calls made directly (rounds={})",
            v.sessions,
            v.users,
            v.rounds.len()
        ),
        None => "login storm, module alone: 200 sessions, 100 users, vs the daemon's SetUnitProperties calls made directly".into(),
    }
}

/// A storm row: the medians of the rounds' totals, the verdict with the
/// failures of both arms of the comparison; with the 90% interval of the
/// ratio (rounds resampled), which the notes give.
fn storm_row(
    figure: String,
    a: &[f64],
    b: &[f64],
    failures: u32,
    target: &str,
    max: f64,
) -> (Row, Option<(f64, f64)>) {
    let mut row = Row::paired("", a, b, target, max);
    row.figure = figure;
    let ok = median(a)
        .zip(median(b))
        .map(|(a, b)| a / b <= max && failures == 0);
    row.verdict = format!("{} ({failures} failures)", verdict(ok));
    // say when chance alone could carry the ratio across its target
    let chance = bootstrap_paired(a, b, median, |a, b| a / b, BOOTSTRAP_REPS, 0.9);
    if chance.is_some_and(|(lo, hi)| lo <= max && max < hi) {
        row.verdict
            .push_str(" (within chance of its target: see notes)");
    }
    (row, chance)
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    let Some(v) = StormSamples::load(dir)? else {
        r.row(Row::missing(&login_figure(None), LOGIN_TARGET));
        r.row(Row::missing(&module_figure(None), MODULE_TARGET));
        r.row(Row::missing(THREADS, "0"));
        return Ok(());
    };
    let total = |f: fn(&StormRound) -> &Phases| -> Vec<f64> {
        v.rounds.iter().map(|x| f(x).total_ns()).collect()
    };
    let fails =
        |f: fn(&StormRound) -> &Phases| -> u32 { v.rounds.iter().map(|x| f(x).failures).sum() };
    let (login_row, login_chance) = storm_row(
        login_figure(Some(&v)),
        &total(|x| &x.with),
        &total(|x| &x.without),
        fails(|x| &x.with) + fails(|x| &x.without),
        LOGIN_TARGET,
        LOGIN_MAX_RATIO,
    );
    r.row(login_row);
    r.row(
        storm_row(
            module_figure(Some(&v)),
            &total(|x| &x.module),
            &total(|x| &x.direct),
            fails(|x| &x.module) + fails(|x| &x.direct),
            MODULE_TARGET,
            MODULE_MAX_RATIO,
        )
        .0,
    );
    let part = |f: fn(&StormRound) -> Option<f64>| {
        ms(median(&v.rounds.iter().filter_map(f).collect::<Vec<_>>()))
    };
    let calls = |f: fn(&StormRound) -> u32| {
        median(&v.rounds.iter().map(|x| f64::from(f(x))).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    // CPU by process over each arm (open, checks, close), medians
    let cpu = |f: fn(&StormRound) -> &Phases| -> String {
        let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for round in &v.rounds {
            for (k, x) in &f(round).cpu_ms {
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
    let first_problems = if v.problems.is_empty() {
        String::new()
    } else {
        format!(
            " (first: {})",
            v.problems
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let login_lat = &v.login_session_open_ns;
    r.note(format!(
        "login storm: {sessions} sessions for {users} users (2 each), each its own process calling pam_open_session, all released at once, then pam_close_session, all at once; the stack of a login, `{with}` (pam_unix + pam_systemd + pam_fairshare), against the same stack without the module, `{without}`, with fairshared stopped (socket and service: running, it would count the logind sessions it finds when it checks a user logind reports as new), alternating by round; logind creates every session in both. The bench users' managers are kept from starting (a condition on user@UID.service): fairshared would count a running one as a session and make every login an additional one; so each user's first session in an arm is a first login (fairshared applies the allocation) and the second an additional one. Before each arm every slice is set to other limits; after the open phase the cgroup files of all {users} slices (cpu.cfs_quota_us, memory.limit_in_bytes, pids.max) must show the default ({limits}) and the daemon must count 2 sessions per user (and none once it is back after the arm without the module); then every user is resized through the daemon to {resized} and the files checked again, so that after the close phase they must be back at the default, with no session counted. Calls reaching systemd for the users' slices, seen on the system bus (medians per round; the resize between the phases counts in neither): open {wo_calls:.0}, close {wc_calls:.0}. Medians: open {wopen} + close {wclose} with the module vs {woopen} + {woclose} without. Per-session pam_open_session latency with the module: median {lmed}, p99 {lp99}. CPU by process during the arm with the module: {wcpu}; without: {wocpu}. Each round's own ratio (with / without, open+close), in order: {round_ratios}; how far chance moves the ratio of the medians: 90% bootstrap interval {chance} ({BOOTSTRAP_REPS} resamples of the rounds, each with both its arms). Failures: {failures}{first_problems}",
        sessions = v.sessions,
        users = v.users,
        with = v.with_service,
        without = v.without_service,
        limits = v.limits,
        resized = v.resized,
        wo_calls = calls(|x| x.with.open_calls),
        wc_calls = calls(|x| x.with.close_calls),
        wopen = part(|x| Some(x.with.open_ns)),
        wclose = part(|x| Some(x.with.close_ns)),
        woopen = part(|x| Some(x.without.open_ns)),
        woclose = part(|x| Some(x.without.close_ns)),
        lmed = ms(median(login_lat)),
        lp99 = ms(percentile(login_lat, 99.0)),
        wcpu = cpu(|x| &x.with),
        wocpu = cpu(|x| &x.without),
        failures = v.failures,
        round_ratios = v
            .rounds
            .iter()
            .map(|x| format!("{:.3}×", x.with.total_ns() / x.without.total_ns()))
            .collect::<Vec<_>>()
            .join(", "),
        chance = login_chance.map_or("—".into(), |(lo, hi)| format!("{lo:.3}× to {hi:.3}×")),
    ));
    let lat = &v.session_open_ns;
    r.note(format!(
        "login storm, module alone: the same processes on a stack with only pam_fairshare (`{module}`; XDG_SESSION_ID set as pam_systemd would, so no logind work is included), with the same scrambling, checks and resize. Floor: one SetUnitProperties per user and phase (the calls a first open and a last close make), issued directly, all at once, on one bus connection. Calls reaching systemd for the users' slices (medians per round): module open {mo:.0}, close {mc:.0}; direct open {do_:.0}, close {dc:.0}. Medians: open {mopen} + close {mclose} (module) vs {dopen} + {dclose} (direct); for context, the same processes through a stack without the module (pam_permit only, nothing reaches the daemon): open {nopen} + close {nclose}. Per-session pam_open_session latency: median {med}, p99 {p99}. CPU by process during each arm (medians over rounds, clock ticks of 10 ms; `children` = the session processes over their whole life, start-up and exit included): module: {mcpu}; direct calls: {dcpu}. The module's own side, measured inside each session process from pam_open_session to the end of pam_close_session: median {scpu:.0} µs CPU per session (p99 {scpu99:.0} µs).",
        module = v.module_service,
        mo = calls(|x| x.module.open_calls),
        mc = calls(|x| x.module.close_calls),
        do_ = calls(|x| x.direct.open_calls),
        dc = calls(|x| x.direct.close_calls),
        mopen = part(|x| Some(x.module.open_ns)),
        mclose = part(|x| Some(x.module.close_ns)),
        dopen = part(|x| Some(x.direct.open_ns)),
        dclose = part(|x| Some(x.direct.close_ns)),
        nopen = part(|x| x.null.as_ref().map(|n| n.open_ns)),
        nclose = part(|x| x.null.as_ref().map(|n| n.close_ns)),
        med = ms(median(lat)),
        p99 = ms(percentile(lat, 99.0)),
        mcpu = cpu(|x| &x.module),
        dcpu = cpu(|x| &x.direct),
        scpu = median(&v.session_cpu_ns).unwrap_or(0.0) / 1e3,
        scpu99 = percentile(&v.session_cpu_ns, 99.0).unwrap_or(0.0) / 1e3,
    ));
    let threads = v.module_threads_created_max;
    r.row(Row::single(
        THREADS,
        threads.to_string(),
        "0",
        Some(threads == 0),
    ));
    r.note(format!(
        "module threads: `Threads:` of /proc/self/status in each storm process just before and after pam_open_session (largest difference over {} sessions, both stacks with the module).",
        lat.len() + login_lat.len()
    ));
    Ok(())
}
