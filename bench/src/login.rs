//! Login overhead: `pamtester SVC USER open_session close_session` through
//! the stack with the module and the same stack without it, interleaved
//! (ABBA), for two paths through fairshared that cost differently:
//!
//! - **first** login: the user has no other session, so fairshared writes
//!   the user's allocation at open and puts the slice back at close;
//! - **additional** session: the user already has a session fairshared
//!   counts, so open and close only count.
//!
//! A lingering user's user manager counts as a session in fairshared (it is
//! one: `systemd-user`), so script/bench prepares the first-login user with
//! `user@UID.service` masked (logind keeps the user, no manager runs) and the
//! additional-session user lingering with their manager running. Each run
//! records which path it took: the sessions fairshared counted just before it
//! and, from outside the daemon, the calls that reached systemd for the user's
//! units during it (a [`BusMonitor`]); logind's and systemd's view of the user
//! is read before the first run and after the last.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use serde::{Deserialize, Serialize};

use crate::busmon::{BusMonitor, Snapshot};
use crate::report::{Report, Row, Samples, ms_signed, verdict};
use crate::stats::{median, percentile};
use crate::view::{Host, HostView, counted, status, wait_status};
use crate::{Result, fail};

/// Which path through fairshared a login takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginPath {
    First,
    Additional,
}

impl LoginPath {
    fn label(self) -> &'static str {
        match self {
            LoginPath::First => "FIRST login (no other session)",
            LoginPath::Additional => "ADDITIONAL session (another one counted)",
        }
    }

    /// Whether `sessions` counted by fairshared before a run fit the path.
    fn fits(self, sessions: u32) -> bool {
        match self {
            LoginPath::First => sessions == 0,
            LoginPath::Additional => sessions >= 1,
        }
    }

    /// Whether logind's and systemd's view before and after fits the path.
    fn host_fits(self, before: &HostView, after: &HostView) -> bool {
        match self {
            LoginPath::First => *before == HostView::default() && *after == HostView::default(),
            // the same user manager throughout, and no other session
            LoginPath::Additional => {
                before.user_manager_pid != 0
                    && before.user_manager_pid == after.user_manager_pid
                    && before.logind_sessions == 0
                    && after.logind_sessions == 0
            }
        }
    }
}

/// One arm (with or without the module) of one path.
#[derive(Default, Serialize, Deserialize)]
pub struct Arm {
    pub ns: Vec<f64>,
    pub failures: u32,
    /// Sessions fairshared counted for the user just before each run.
    pub sessions_before: Vec<u32>,
    /// Calls that reached systemd for the user's units (SetUnitProperties
    /// on the slice, StartTransientUnit of an adopted scope) from the start
    /// of each run to the start of the next, seen on the bus.
    pub calls: Vec<u32>,
}

/// One path: its user, both arms, and the host's view around the runs.
#[derive(Serialize, Deserialize)]
pub struct PathSamples {
    pub path: LoginPath,
    pub user: String,
    pub uid: u32,
    pub with: Arm,
    pub without: Arm,
    pub host_before: HostView,
    pub host_after: HostView,
    /// The sessions fairshared counted before the first run.
    pub counted_before: Vec<String>,
}

/// `pam-loop`: login overhead, per path.
#[derive(Serialize, Deserialize)]
pub struct PamSamples {
    pub with_service: String,
    pub without_service: String,
    pub n: usize,
    pub warmup: usize,
    pub paths: Vec<PathSamples>,
}

impl Samples for PamSamples {
    const FILE: &'static str = "pam.json";
}

pub struct Setup {
    pub first: Option<String>,
    pub additional: Option<String>,
    pub with: String,
    pub without: String,
    pub n: usize,
    pub warmup: usize,
    pub socket: std::path::PathBuf,
    pub dir: std::path::PathBuf,
}

/// One `pamtester` run: `(nanoseconds, succeeded)`.
fn pamtester(service: &str, user: &str) -> Result<(f64, bool)> {
    let t = Instant::now();
    let status = Command::new("pamtester")
        .args([service, user, "open_session", "close_session"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run pamtester: {e}"))?;
    Ok((t.elapsed().as_nanos() as f64, status.success()))
}

/// Calls on `uid`'s units in `s`.
fn user_calls(s: &Snapshot, uid: u32) -> u32 {
    let slice = fairshared::systemd::slice_name(uid);
    let scope = format!("fairshare-session-{uid}-");
    s.seen
        .iter()
        .filter(|x| x.unit == slice || x.unit.starts_with(&scope))
        .count() as u32
}

pub fn run(s: &Setup) -> Result<()> {
    let mut users = Vec::new();
    if let Some(u) = &s.first {
        users.push((LoginPath::First, u.clone()));
    }
    if let Some(u) = &s.additional {
        users.push((LoginPath::Additional, u.clone()));
    }
    if users.is_empty() {
        return fail("give --first USER, --additional USER or both");
    }
    let client = Client::new(&s.socket, Duration::from_secs(5));
    let host = Host::connect()?;
    let mut paths = Vec::new();
    for (path, user) in users {
        let uid = crate::alloc::uid_of(&user)?;
        // The additional user's manager is counted a moment after logind
        // reports the user (fairshared checks each new user 2 s later).
        let st = wait_status(&client, &user, Duration::from_secs(15), |st| {
            path.fits(st.sessions)
        })?;
        let host_before = host.settled_view(uid, Duration::from_secs(5))?;
        if !path.fits(st.sessions) || !path.host_fits(&host_before, &host_before) {
            return fail(format!(
                "{user} is not set up for the {path:?} path: fairshared counts {} session(s) ({}), logind {} session(s), user manager pid {}",
                st.sessions,
                counted(&st).join(", "),
                host_before.logind_sessions,
                host_before.user_manager_pid
            ));
        }
        paths.push(PathSamples {
            path,
            user,
            uid,
            with: Arm::default(),
            without: Arm::default(),
            host_before,
            host_after: HostView::default(),
            counted_before: counted(&st),
        });
    }
    for _ in 0..s.warmup {
        for p in &paths {
            pamtester(&s.with, &p.user)?;
            pamtester(&s.without, &p.user)?;
        }
    }
    let bus = BusMonitor::start()?;
    let mut mark = bus.sync()?;
    for i in 0..s.n {
        let with_first = i % 4 == 0 || i % 4 == 3;
        let count = paths.len();
        for k in 0..count {
            // the paths take turns going first, too
            let p = &mut paths[(k + i) % count];
            for w in [with_first, !with_first] {
                let (service, arm) = if w {
                    (&s.with, &mut p.with)
                } else {
                    (&s.without, &mut p.without)
                };
                arm.sessions_before.push(status(&client, &p.user)?.sessions);
                let (ns, ok) = pamtester(service, &p.user)?;
                let now = bus.sync()?;
                arm.calls.push(user_calls(&now.since(&mark), p.uid));
                mark = now;
                arm.ns.push(ns);
                if !ok {
                    arm.failures += 1;
                }
            }
        }
    }
    for p in &mut paths {
        p.host_after = host.settled_view(p.uid, Duration::from_secs(5))?;
        let failures = p.with.failures + p.without.failures;
        if failures > 0 {
            eprintln!("pam-loop: {failures} pamtester runs of {} failed", p.user);
        }
    }
    PamSamples {
        with_service: s.with.clone(),
        without_service: s.without.clone(),
        n: s.n,
        warmup: s.warmup,
        paths,
    }
    .save(&s.dir)
}

const TARGET: &str = "added: median ≤ 0.5 ms, p99 ≤ 3 ms; 0 failed runs";
const MAX_ADDED_MEDIAN_NS: f64 = 0.5e6;
const MAX_ADDED_P99_NS: f64 = 3e6;

fn mean(xs: &[u32]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64
}

fn path_row(v: &PamSamples, p: &PathSamples, r: &mut Report) {
    let (w, wo) = (&p.with.ns, &p.without.ns);
    let added = median(w).zip(median(wo)).map(|(a, b)| a - b);
    let added99 = percentile(w, 99.0)
        .zip(percentile(wo, 99.0))
        .map(|(a, b)| a - b);
    let failures = p.with.failures + p.without.failures;
    let off_path = p
        .with
        .sessions_before
        .iter()
        .chain(&p.without.sessions_before)
        .filter(|&&n| !p.path.fits(n))
        .count();
    let host_ok = p.path.host_fits(&p.host_before, &p.host_after);
    let mut row = Row::paired(
        &format!("login overhead, {}, pamtester open+close", p.path.label()),
        w,
        wo,
        TARGET,
        f64::INFINITY,
    );
    row.median = format!("{} ({})", row.median, ms_signed(added));
    row.p99 = format!("{} ({})", row.p99, ms_signed(added99));
    let fast = added
        .zip(added99)
        .map(|(a, p)| a <= MAX_ADDED_MEDIAN_NS && p <= MAX_ADDED_P99_NS);
    row.verdict = if off_path > 0 || !host_ok {
        format!("NOT THIS PATH ({off_path} runs off it; see notes)")
    } else if failures > 0 {
        format!("MISSED ({failures} failed runs)")
    } else {
        verdict(fast)
    };
    r.row(row);
    let runs = w.len() + wo.len();
    let counted_before = if p.counted_before.is_empty() {
        "none".to_string()
    } else {
        p.counted_before.join(", ")
    };
    let how = match p.path {
        LoginPath::First => format!(
            "`{}` lingering with user@{}.service masked, so logind keeps the user between runs but no user manager runs (fairshared would count one as a session and make every run an additional one)",
            p.user, p.uid
        ),
        LoginPath::Additional => format!(
            "`{}` lingering with their user manager running, which fairshared counts as a session (`systemd-user`), as for a user logged in elsewhere",
            p.user
        ),
    };
    let expect = match p.path {
        LoginPath::First => "0 before every run",
        LoginPath::Additional => "at least 1 before every run",
    };
    r.note(format!(
        "login overhead, {path}: `pamtester SVC USER open_session close_session`, {n} runs per stack, interleaved (ABBA) with the other stack and the other path, {warm} warm-up runs each; SVC = `{with}` (pam_unix + pam_systemd + pam_fairshare) vs `{without}` (the same without pam_fairshare); added = difference of the medians (of the p99s). User: {how}. Path check: sessions fairshared counted for the user, wanted {expect}: {bad} of {runs} runs off the path (counted before the first run: {counted_before}); logind and systemd before the first run / after the last: {sb} / {sa} logind session(s), user manager pid {mb} / {ma} ({host}); calls reaching systemd for the user's units (SetUnitProperties on user-{uid}.slice, StartTransientUnit of an adopted scope), seen on the system bus by a monitor outside the daemon: {cw:.2} per run with the module, {cwo:.2} without (a first login that changes the slice makes 2, apply and reset; an additional session none). Failed runs: {fw} with the module, {fwo} without.",
        path = p.path.label(),
        n = w.len(),
        warm = v.warmup,
        with = v.with_service,
        without = v.without_service,
        bad = off_path,
        sb = p.host_before.logind_sessions,
        sa = p.host_after.logind_sessions,
        mb = p.host_before.user_manager_pid,
        ma = p.host_after.user_manager_pid,
        host = if host_ok { "as the path needs" } else { "NOT as the path needs" },
        uid = p.uid,
        cw = mean(&p.with.calls),
        cwo = mean(&p.without.calls),
        fw = p.with.failures,
        fwo = p.without.failures,
    ));
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    let v = PamSamples::load(dir)?;
    for path in [LoginPath::First, LoginPath::Additional] {
        match v
            .as_ref()
            .and_then(|v| Some((v, v.paths.iter().find(|p| p.path == path)?)))
        {
            Some((v, p)) => path_row(v, p, r),
            None => r.row(Row::missing(
                &format!("login overhead, {}, pamtester open+close", path.label()),
                TARGET,
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs of 10 ms without the module and 10.2 ms with it: 0.2 ms added.
    fn path(path: LoginPath, counted: u32) -> PathSamples {
        let arm = |ms: f64| Arm {
            ns: vec![ms * 1e6; 20],
            failures: 0,
            sessions_before: vec![counted; 20],
            calls: vec![0; 20],
        };
        let host = match path {
            LoginPath::First => HostView::default(),
            LoginPath::Additional => HostView {
                logind_sessions: 0,
                user_manager_pid: 42,
            },
        };
        PathSamples {
            path,
            user: "u".into(),
            uid: 2001,
            with: arm(10.2),
            without: arm(10.0),
            host_before: host,
            host_after: host,
            counted_before: Vec::new(),
        }
    }

    fn verdict_of(p: PathSamples) -> String {
        let v = PamSamples {
            with_service: "w".into(),
            without_service: "wo".into(),
            n: 20,
            warmup: 0,
            paths: Vec::new(),
        };
        let mut r = Report::default();
        path_row(&v, &p, &mut r);
        r.rows.remove(0).verdict
    }

    #[test]
    fn fast_runs_on_their_path_meet_the_target() {
        assert_eq!(verdict_of(path(LoginPath::First, 0)), "met");
        assert_eq!(verdict_of(path(LoginPath::Additional, 1)), "met");
    }

    #[test]
    fn a_failed_run_misses_the_target() {
        let mut p = path(LoginPath::First, 0);
        p.without.failures = 1;
        assert_eq!(verdict_of(p), "MISSED (1 failed runs)");
    }

    #[test]
    fn runs_off_the_path_are_not_counted_as_it() {
        // a first login while fairshared counted a session: an additional one
        let mut p = path(LoginPath::First, 0);
        p.with.sessions_before[3] = 1;
        assert!(verdict_of(p).starts_with("NOT THIS PATH (1 runs"));
        // an additional session with nothing counted: a first login
        assert!(verdict_of(path(LoginPath::Additional, 0)).starts_with("NOT THIS PATH (40 runs"));
        // a first login with a user manager running
        let mut p = path(LoginPath::First, 0);
        p.host_after.user_manager_pid = 7;
        assert!(verdict_of(p).starts_with("NOT THIS PATH"));
        // an additional session whose user manager was replaced meanwhile
        let mut p = path(LoginPath::Additional, 1);
        p.host_after.user_manager_pid = 43;
        assert!(verdict_of(p).starts_with("NOT THIS PATH"));
    }

    #[test]
    fn too_slow_misses_the_target() {
        let mut p = path(LoginPath::First, 0);
        p.with.ns = vec![10.6e6; 20];
        assert_eq!(verdict_of(p), "MISSED");
    }
}
