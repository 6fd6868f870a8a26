//! The daemon's CPU with many users tracked (issues 14 and 16): USERS bench
//! users each get a session (the main process of their hold service, opened
//! through the socket as the PAM module opens one), so fairshared tracks and
//! limits them and watches each slice's event files; then windows of SECS
//! seconds:
//!
//! - **unwatched** (ROUNDS windows first): no requests, and none since the
//!   daemon started that read a user's usage, so the CPU sampler behind
//!   "CPU now" sleeps (it runs only for 10 minutes after someone looks);
//!   what runs is the event watchers and the watchdog;
//! - then every user's `status` (which proves the path: a session counted,
//!   an allocation, a live slice) wakes the sampler, and interleaved (ABBA)
//!   over ROUNDS:
//!   - **idle**: no requests; the event watchers, the 5 s sampler, the
//!     watchdog;
//!   - **users' top**: the first CLIENTS bench users each running their
//!     own `fairshare-ctl top` at a 1 s refresh: a process per user, with
//!     the user's credentials, asking what it asks (`status`) once a second;
//!   - **root's top**: CLIENTS clients each asking what root's `top` asks
//!     (`list`, every user's row) once a second.
//! - **bursting** (ROUNDS windows last): no requests, with the policy's
//!   bursting enabled by a reload (a drop-in [`BURST_FILE`], removed
//!   after), after `idle_for` and a margin, so the quotas are lifted and what
//!   is measured is the sampling: the host's and every user's CPU time each
//!   second. Against the idle windows (the same users, the 5 s sampler on).
//!
//! CPU time is the daemon's, summed over its threads from
//! `/proc/PID/task/*/schedstat`, per window; the figure is per minute.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use fairshare_proto::wire::{Request, Response, SessionClose, SessionOpen};
use serde::{Deserialize, Serialize};

use crate::idle::{IdleSamples, main_pid, snapshot};
use crate::report::{Report, Row, Samples};
use crate::stats::median;
use crate::view::{Host, status};
use crate::{Result, fail};

/// What ran in a window.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No requests, nobody has looked at usage: the sampler sleeps.
    Unwatched,
    /// No requests, someone looked within the sampler's hold: it samples.
    Idle,
    /// Users each running their own `top` (`status` as the user).
    UserTop,
    /// Root's `top`s (`list`).
    Top,
    /// No requests, the sampler on, and bursting enabled (issue 15): its
    /// sampler reads the host's and every tracked user's CPU time each
    /// second.
    Bursting,
}

/// One window.
#[derive(Clone, Serialize, Deserialize)]
pub struct Window {
    pub kind: Kind,
    pub secs: f64,
    pub cpu_ns: u64,
    pub context_switches: u64,
    /// `list` requests answered (top windows).
    pub requests: u64,
    pub errors: u64,
}

/// `load`: idle and `top` windows with USERS tracked.
#[derive(Serialize, Deserialize)]
pub struct LoadSamples {
    pub unit: String,
    pub users: u32,
    /// Users whose status said, before the first window: a session counted,
    /// an allocation, a live slice.
    pub users_tracked: u32,
    pub clients: usize,
    pub interval_secs: f64,
    /// Open file descriptors of the daemon before the sessions and after
    /// (the event watchers hold one or more per slice), and its eventfds and
    /// inotify watches after.
    pub fds_before: usize,
    pub fds_after: usize,
    pub eventfds_after: usize,
    pub inotify_watches_after: usize,
    pub settle_secs: f64,
    pub windows: Vec<Window>,
}

impl Samples for LoadSamples {
    const FILE: &'static str = "load.json";
}

pub struct Setup {
    pub unit: String,
    pub prefix: String,
    pub first_uid: u32,
    pub users: u32,
    pub clients: usize,
    pub interval: f64,
    pub secs: f64,
    pub rounds: usize,
    pub settle: f64,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

const SESSION_ID: &str = "bench-load";

/// The policy drop-in that enables bursting for the last windows.
pub const BURST_FILE: &str = "/etc/fairshare/policy.d/95-bench-bursting.yaml";

/// Reloads the policy through the socket, as `fairshare-ctl reload` does.
fn reload(client: &Client) -> Result<()> {
    match client.call(&Request::Reload)? {
        Response::Success(_) => Ok(()),
        other => fail(format!("reload: {other:?}")),
    }
}

/// (open fds, eventfds, inotify watches) of `pid`.
fn fds(pid: u32) -> (usize, usize, usize) {
    let (mut n, mut efd, mut wd) = (0, 0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0, 0);
    };
    for e in dir.flatten() {
        n += 1;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if t.contains("[eventfd]") {
            efd += 1;
        } else if t.contains("inotify") {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            wd += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    (n, efd, wd)
}

fn cpu(pid: u32) -> Result<(u64, u64)> {
    let s = snapshot(pid)?;
    Ok(s.values().fold((0, 0), |(c, w), (ns, sw)| (c + ns, w + sw)))
}

/// `top-client`: a user's `top`, `status` every `interval` from `offset`
/// for `secs`; prints `ok N errors M`.
pub fn top_client(socket: &Path, secs: f64, interval: f64, offset: f64) -> Result<()> {
    let client = Client::new(socket, Duration::from_secs(5));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut next = t0 + Duration::from_secs_f64(offset);
    let (mut ok, mut errors) = (0u64, 0u64);
    while next < end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        match client.call(&Request::Status { user: None }) {
            Ok(Response::StatusInfo(_)) => ok += 1,
            _ => errors += 1,
        }
        next += Duration::from_secs_f64(interval);
    }
    println!("ok {ok} errors {errors}");
    Ok(())
}

/// `clients` bench users' `top`s for a window: one `top-client` process
/// each, with the user's credentials; (answered, failed).
fn user_tops(s: &Setup) -> Result<(u64, u64)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for k in 0..s.clients {
        let uid = s.first_uid + k as u32;
        let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))? else {
            return fail(format!("no user with uid {uid}"));
        };
        let offset = s.interval * k as f64 / s.clients as f64;
        children.push(
            std::process::Command::new(&exe)
                .args(["top-client", "--secs", &s.secs.to_string()])
                .args(["--interval", &s.interval.to_string()])
                .args(["--offset", &offset.to_string()])
                .arg("--socket")
                .arg(&s.socket)
                .uid(uid)
                .gid(user.gid.as_raw())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start a top client as uid {uid}: {e}"))?,
        );
    }
    let (mut ok, mut errors) = (0, 0);
    for c in children {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        match f[..] {
            ["ok", n, "errors", m] if out.status.success() => {
                ok += n.parse::<u64>().unwrap_or(0);
                errors += m.parse::<u64>().unwrap_or(1);
            }
            _ => return fail(format!("a top client failed ({}): {text}", out.status)),
        }
    }
    Ok((ok, errors))
}

/// One window: with `Top`, `clients` clients asking `list` every
/// `interval`; with `UserTop`, `clients` users' own `top`s; else no
/// requests.
fn window(s: &Setup, pid: u32, kind: Kind) -> Result<Window> {
    let top = kind == Kind::Top;
    if kind == Kind::UserTop {
        let (c0, w0) = cpu(pid)?;
        let t0 = Instant::now();
        let (answered, failed) = user_tops(s)?;
        let secs = t0.elapsed().as_secs_f64();
        let (c1, w1) = cpu(pid)?;
        return Ok(Window {
            kind,
            secs,
            cpu_ns: c1.saturating_sub(c0),
            context_switches: w1.saturating_sub(w0),
            requests: answered,
            errors: failed,
        });
    }
    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let (c0, w0) = cpu(pid)?;
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        if top {
            for k in 0..s.clients {
                let (stop, ok, errors) = (&stop, &ok, &errors);
                sc.spawn(move || {
                    let client = Client::new(&s.socket, Duration::from_secs(5));
                    // the clients' ticks spread over the interval, as
                    // independent `top`s would be
                    let offset = s.interval * k as f64 / s.clients as f64;
                    let mut next = t0 + Duration::from_secs_f64(offset);
                    loop {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match client.call(&Request::List) {
                            Ok(Response::UserList(_)) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => errors.fetch_add(1, Ordering::Relaxed),
                        };
                        next += Duration::from_secs_f64(s.interval);
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_secs_f64(s.secs));
        stop.store(true, Ordering::Relaxed);
    });
    let secs = t0.elapsed().as_secs_f64();
    let (c1, w1) = cpu(pid)?;
    Ok(Window {
        kind,
        secs,
        cpu_ns: c1.saturating_sub(c0),
        context_switches: w1.saturating_sub(w0),
        requests: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    })
}

pub fn run(s: &Setup) -> Result<()> {
    let pid = main_pid(&s.unit)?;
    let client = Client::new(&s.socket, Duration::from_secs(10));
    let host = Host::connect()?;
    let (fds_before, _, _) = fds(pid);
    let mut opened = Vec::new();
    let result = (|| {
        for i in 0..s.users {
            let uid = s.first_uid + i;
            let user = format!("{}{:03}", s.prefix, i + 1);
            let hold = format!("fairshare-bench-hold-{uid}.service");
            let p = host.main_pid(&hold)?;
            if p == 0 {
                return fail(format!("{hold} has no main process"));
            }
            let open = Request::SessionOpen(SessionOpen {
                uid,
                pid: p,
                user: Some(user.clone()),
                service: Some("fairshare-bench".into()),
                session_id: Some(format!("{SESSION_ID}-{uid}")),
                ..SessionOpen::default()
            });
            match client.call(&open)? {
                Response::Success(x) if x.allocation.is_some() => opened.push((uid, p)),
                other => return fail(format!("session_open for {user}: {other:?}")),
            }
        }
        std::thread::sleep(Duration::from_secs_f64(s.settle));
        let mut windows = Vec::new();
        // before anything reads a user's usage: the sampler sleeps
        for _ in 0..s.rounds {
            windows.push(window(s, pid, Kind::Unwatched)?);
        }
        // each status reads the user's usage: the sampler runs from here
        let mut tracked = 0;
        for i in 0..s.users {
            let st = status(&client, &format!("{}{:03}", s.prefix, i + 1))?;
            if st.sessions >= 1 && st.allocated_cpu.is_some() && st.active {
                tracked += 1;
            }
        }
        let (fds_after, eventfds_after, inotify_watches_after) = fds(pid);
        for r in 0..s.rounds {
            // ABBA: idle first in even rounds
            let order = if r % 2 == 0 {
                [Kind::Idle, Kind::UserTop, Kind::Top]
            } else {
                [Kind::Top, Kind::UserTop, Kind::Idle]
            };
            for kind in order {
                windows.push(window(s, pid, kind)?);
            }
        }
        // bursting on: its sampler reads every user's CPU time each second
        std::fs::write(BURST_FILE, "bursting: {enabled: true}\n")
            .map_err(|e| format!("{BURST_FILE}: {e}"))?;
        let burst = (|| -> Result<()> {
            reload(&client)?;
            // idle_for (10 s) and the lifts of every quota, then the windows
            std::thread::sleep(Duration::from_secs(15));
            for _ in 0..s.rounds {
                windows.push(window(s, pid, Kind::Bursting)?);
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(BURST_FILE);
        let back = reload(&client);
        burst?;
        back?;
        if main_pid(&s.unit)? != pid {
            return fail(format!("{} restarted during the measurement", s.unit));
        }
        Ok(LoadSamples {
            unit: s.unit.clone(),
            users: s.users,
            users_tracked: tracked,
            clients: s.clients,
            interval_secs: s.interval,
            fds_before,
            fds_after,
            eventfds_after,
            inotify_watches_after,
            settle_secs: s.settle,
            windows,
        })
    })();
    for (uid, p) in opened {
        let close = Request::SessionClose(SessionClose {
            uid,
            pid: p,
            session_id: Some(format!("{SESSION_ID}-{uid}")),
        });
        if let Err(e) = client.call(&close) {
            eprintln!("load: session_close for uid {uid}: {e}");
        }
    }
    result?.save(&s.dir)
}

/// Target of issue 14 (as the idle figure's).
const IDLE_MAX_NS_PER_MIN: f64 = 10e6;

fn per_min(w: &Window) -> f64 {
    w.cpu_ns as f64 * 60.0 / w.secs.max(1e-9)
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    let idle0 = IdleSamples::load(dir)?;
    let Some(v) = LoadSamples::load(dir)? else {
        r.row(Row::missing(
            "idle CPU per minute, 100 tracked users, event watching on, nobody looking",
            "≤ 10 ms per minute",
        ));
        r.row(Row::missing(
            "idle CPU per minute, 100 tracked users, event watching and CPU sampler on",
            "reported",
        ));
        r.row(Row::missing(
            "`top`: 10 clients at 1 s refresh, daemon CPU per minute",
            "reported",
        ));
        return Ok(());
    };
    let of = |k: Kind| -> Vec<f64> {
        v.windows
            .iter()
            .filter(|w| w.kind == k)
            .map(per_min)
            .collect()
    };
    let (unwatched, idle, user_top, top) = (
        of(Kind::Unwatched),
        of(Kind::Idle),
        of(Kind::UserTop),
        of(Kind::Top),
    );
    let bursting = of(Kind::Bursting);
    let mb = median(&bursting);
    let (mu, mi, mut_, mt) = (
        median(&unwatched),
        median(&idle),
        median(&user_top),
        median(&top),
    );
    let all_tracked = v.users_tracked == v.users;
    let sum_of = |k: Kind| -> (u64, u64, f64) {
        v.windows
            .iter()
            .filter(|w| w.kind == k)
            .fold((0, 0, 0.0), |(r, e, t), w| {
                (r + w.requests, e + w.errors, t + w.secs)
            })
    };
    let (requests, errors, top_secs) = sum_of(Kind::Top);
    let (user_requests, user_errors, user_secs) = sum_of(Kind::UserTop);
    let base0 = idle0
        .as_ref()
        .map(|i| i.cpu_ns as f64 * 60.0 / i.secs.max(1e-9));
    let ms = |x: Option<f64>| x.map_or("—".into(), |x| format!("{:.2} ms", x / 1e6));
    let ratio = |a: Option<f64>, b: Option<f64>, digits: usize| {
        a.zip(b)
            .filter(|(_, b)| *b > 0.0)
            .map_or("—".into(), |(a, b)| format!("{:.digits$}×", a / b))
    };
    let not_this_path = || {
        format!(
            "NOT THIS PATH (only {} of {} users tracked)",
            v.users_tracked, v.users
        )
    };
    let mut row = Row::single(
        &format!(
            "idle CPU per minute, {} tracked users (a session each), event watching on, nobody looking at usage (CPU sampler asleep), no requests (windows={})",
            v.users,
            unwatched.len()
        ),
        ms(mu),
        "≤ 10 ms per minute",
        mu.map(|m| m <= IDLE_MAX_NS_PER_MIN && all_tracked),
    );
    if !all_tracked {
        row.verdict = not_this_path();
    }
    row.baseline = format!("{} (no bench user logged in, same run)", ms(base0));
    row.ratio = ratio(mu, base0, 2);
    r.row(row);
    let mut row = Row::single(
        &format!(
            "idle CPU per minute, {} tracked users, event watching on, someone looked at usage within 10 min (5 s CPU sampler on), no requests (windows={})",
            v.users,
            idle.len()
        ),
        ms(mi),
        "reported (issue 16: the sampler behind CPU now)",
        None,
    );
    row.verdict = if all_tracked {
        "reported".into()
    } else {
        not_this_path()
    };
    row.baseline = format!("{} nobody looking, same users", ms(mu));
    row.ratio = ratio(mi, mu, 2);
    r.row(row);
    let mut row = Row::single(
        &format!(
            "idle CPU per minute with bursting on (its sampler: the host's and each user's CPU time every 1 s, quotas lifted), {} tracked users, no requests (windows={})",
            v.users,
            bursting.len()
        ),
        ms(mb),
        "reported (issue 15: bursting's sampling cost)",
        None,
    );
    row.verdict = match (bursting.is_empty(), all_tracked) {
        (true, _) => "not measured (an older run)".into(),
        (false, true) => "reported".into(),
        (false, false) => not_this_path(),
    };
    row.baseline = format!("{} idle with the sampler on, same users", ms(mi));
    row.ratio = ratio(mb, mi, 2);
    r.row(row);
    let mut row = Row::single(
        &format!(
            "`top` open for {} users at a 1 s refresh (each user's own `fairshare-ctl top`: `status` as the user every {:.0} s), {} tracked users, daemon CPU per minute (windows={})",
            v.clients,
            v.interval_secs,
            v.users,
            user_top.len()
        ),
        ms(mut_),
        "reported (issue 16: a cost the daemon shrugs off; 1 % of a CPU = 600 ms per minute)",
        None,
    );
    row.baseline = format!(
        "{} idle with the sampler on, same users, interleaved",
        ms(mi)
    );
    row.ratio = ratio(mut_, mi, 1);
    row.verdict = if user_errors > 0 {
        format!("MISSED ({user_errors} failed requests)")
    } else if !all_tracked {
        not_this_path()
    } else {
        "reported".into()
    };
    r.row(row);
    let mut row = Row::single(
        &format!(
            "`top` as root on {} terminals at a 1 s refresh (`list` of every user every {:.0} s), {} tracked users, daemon CPU per minute (windows={})",
            v.clients,
            v.interval_secs,
            v.users,
            top.len()
        ),
        ms(mt),
        "reported (issue 16: a cost the daemon shrugs off; 1 % of a CPU = 600 ms per minute)",
        None,
    );
    row.baseline = format!(
        "{} idle with the sampler on, same users, interleaved",
        ms(mi)
    );
    row.ratio = ratio(mt, mi, 1);
    row.verdict = if errors > 0 {
        format!("MISSED ({errors} failed requests)")
    } else if !all_tracked {
        not_this_path()
    } else {
        "reported".into()
    };
    r.row(row);
    let per_req = |m: Option<f64>| {
        m.zip(mi)
            .map(|(t, i)| (t - i) / (v.clients as f64 * 60.0 / v.interval_secs))
            .map_or("—".into(), |x| format!("{:.0} µs", x / 1e3))
    };
    let list = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{:.2} ms", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    r.note(format!(
        "idle CPU with users tracked, and `top`'s cost: {users} bench users each get a session (their hold service's main process, opened through the socket as the PAM module opens one; each answer carried an allocation), then {settle:.0} s to settle. First {nu} windows of {secs:.0} s with no requests and none since the daemon's restart that read a user's usage, so the CPU sampler sleeps (it samples only for 10 minutes after a look): what runs is the event watchers on each slice's memory and CPU files and the watchdog. Then every user's `status` (a look: the sampler runs from here) said {tracked} of {users} users have a session counted, an allocation and a live slice (the path measured: tracked users, not the empty daemon of the plain idle figure). The daemon held {fb} open file descriptors before the sessions and {fa} after ({efd} eventfds, {wd} inotify watches). Then windows interleaved (ABC CBA): idle (no requests; watchers, the 5 s sampler, the watchdog); users' `top` ({clients} processes, each with a bench user's credentials, sending `status` as that user, what their own `fairshare-ctl top` sends every refresh, once per {iv:.0} s, ticks spread over the second; {user_requests} answered in {user_secs:.0} s, {user_errors} failed); root's `top` ({clients} clients, each sending `list` as root, what root's `top` sends every refresh, once per {iv:.0} s; {requests} answered in {top_secs:.0} s, {errors} failed). CPU time summed over the daemon's threads from /proc/PID/task/*/schedstat, per window, scaled to a minute. Nobody looking: {unwatched_list}; idle with the sampler: {idle_list}; users' top: {user_top_list}; root's top: {top_list}. Extra CPU per request: a user's `status` {per_status}, root's `list` of {users} users {per_list} (reading each user's usage from the cgroup files is most of it).",
        users = v.users,
        settle = v.settle_secs,
        nu = unwatched.len(),
        tracked = v.users_tracked,
        fb = v.fds_before,
        fa = v.fds_after,
        efd = v.eventfds_after,
        wd = v.inotify_watches_after,
        secs = v.windows.first().map_or(0.0, |w| w.secs),
        clients = v.clients,
        iv = v.interval_secs,
        unwatched_list = list(&unwatched),
        idle_list = list(&idle),
        top_list = list(&top),
        user_top_list = list(&user_top),
        user_requests = user_requests,
        user_secs = user_secs,
        user_errors = user_errors,
        per_status = per_req(mut_),
        per_list = per_req(mt),
    ));
    Ok(())
}
