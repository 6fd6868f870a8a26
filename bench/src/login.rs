//! Login overhead: `pamtester SVC USER open_session close_session` through
//! the stack with the module and the same stack without it, one run at a
//! time in a balanced order ([`CYCLE`]), for two paths through fairshared
//! that cost differently:
//!
//! - **first** login: the user has no other session, so fairshared counts
//!   the first one (and writes the slice only if it does not already carry
//!   the user's limits: at the default, the drop-in gave them);
//! - **additional** session: the user already has a session fairshared
//!   counts, so open and close only count.
//!
//! A running user manager counts as a session in fairshared (it is one:
//! `systemd-user`), and so would a logind session fairshared finds when it
//! checks a user logind reports as new (2 s later). So script/bench keeps
//! the first-login users' managers from starting (a condition on
//! `user@UID.service`) and the runs rotate over many of them, each user's
//! turn coming round long after that check; the additional-session user
//! lingers with their manager running. Each run records which path it took:
//! the sessions fairshared counted just before it and, from outside the
//! daemon, the calls that reached systemd for the user's units during it (a
//! [`BusMonitor`]); logind's and systemd's view of every user is read before
//! the first run and after the last.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use serde::{Deserialize, Serialize};

use crate::busmon::{BusMonitor, Snapshot};
use crate::report::{Report, Row, Samples, ms_signed, verdict};
use crate::stats::{BOOTSTRAP_REPS, bootstrap, median, percentile};
use crate::view::{Host, HostView, counted, sessions_counted, wait_status};
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

    /// Whether logind's and systemd's view of a user before and after the
    /// runs fits the path.
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

/// One arm (with or without the module) of one path; one entry per run.
#[derive(Default, Serialize, Deserialize)]
pub struct Arm {
    pub ns: Vec<f64>,
    pub failures: u32,
    /// The user of each run.
    pub uid: Vec<u32>,
    /// Sessions fairshared counted for the user just before each run.
    pub sessions_before: Vec<u32>,
    /// Calls that reached systemd for the user's units from the start of
    /// each run to the start of the next, seen on the bus:
    /// SetUnitProperties on the user's slice, and StartTransientUnit of a
    /// scope fairshared adopts a process into (a session logind did not
    /// create: pam_systemd failed).
    pub set_calls: Vec<u32>,
    pub adoptions: Vec<u32>,
}

impl Arm {
    /// Runs not on `path`: fairshared counted the wrong number of sessions
    /// before, a process was adopted, or (`module` false) fairshared wrote
    /// the slice in a run that never reached it.
    fn off_path(&self, path: LoginPath, module: bool) -> usize {
        (0..self.ns.len())
            .filter(|&i| {
                !path.fits(self.sessions_before.get(i).copied().unwrap_or(0))
                    || self.adoptions.get(i).copied().unwrap_or(0) > 0
                    || (!module && self.set_calls.get(i).copied().unwrap_or(0) > 0)
            })
            .count()
    }
}

/// logind's and systemd's view of one user before the first run and after
/// the last.
#[derive(Serialize, Deserialize)]
pub struct UserView {
    pub user: String,
    pub uid: u32,
    pub before: HostView,
    pub after: HostView,
}

/// One path: its users (in turn), both arms.
#[derive(Serialize, Deserialize)]
pub struct PathSamples {
    pub path: LoginPath,
    pub users: Vec<UserView>,
    pub with: Arm,
    pub without: Arm,
    /// The sessions fairshared counted for the first user before the runs.
    pub counted_before: Vec<String>,
}

impl PathSamples {
    fn host_ok(&self) -> usize {
        self.users
            .iter()
            .filter(|u| self.path.host_fits(&u.before, &u.after))
            .count()
    }
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
    /// Users for the first-login path, in turn.
    pub first: Vec<String>,
    /// Users for the additional-session path, in turn.
    pub additional: Vec<String>,
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

/// Calls on `uid`'s units in `s`: `(SetUnitProperties on the slice,
/// StartTransientUnit of an adopted scope)`.
fn user_calls(s: &Snapshot, uid: u32) -> (u32, u32) {
    let slice = fairshared::systemd::slice_name(uid);
    let scope = format!("fairshare-session-{uid}-");
    let n = |member: &str, f: &dyn Fn(&str) -> bool| {
        s.seen
            .iter()
            .filter(|x| x.member == member && f(&x.unit))
            .count() as u32
    };
    (
        n("SetUnitProperties", &|u| u == slice),
        n("StartTransientUnit", &|u| u.starts_with(&scope)),
    )
}

pub fn run(s: &Setup) -> Result<()> {
    let mut wanted = Vec::new();
    if !s.first.is_empty() {
        wanted.push((LoginPath::First, &s.first));
    }
    if !s.additional.is_empty() {
        wanted.push((LoginPath::Additional, &s.additional));
    }
    if wanted.is_empty() {
        return fail("give --first USERS, --additional USERS or both");
    }
    let client = Client::new(&s.socket, Duration::from_secs(5));
    let host = Host::connect()?;
    let mut paths = Vec::new();
    for (path, names) in wanted {
        let mut users = Vec::new();
        let mut counted_before = Vec::new();
        for user in names {
            let uid = crate::alloc::uid_of(user)?;
            // An additional user's manager is counted a moment after logind
            // reports the user (fairshared checks each new user 2 s later).
            let st = wait_status(&client, user, Duration::from_secs(15), |st| {
                path.fits(st.sessions)
            })?;
            let before = host.settled_view(uid, Duration::from_secs(5))?;
            if !path.fits(st.sessions) || !path.host_fits(&before, &before) {
                return fail(format!(
                    "{user} is not set up for the {path:?} path: fairshared counts {} session(s) ({}), logind {} session(s), user manager pid {}",
                    st.sessions,
                    counted(&st).join(", "),
                    before.logind_sessions,
                    before.user_manager_pid
                ));
            }
            if counted_before.is_empty() {
                counted_before = counted(&st);
            }
            users.push(UserView {
                user: user.clone(),
                uid,
                before,
                after: HostView::default(),
            });
        }
        paths.push(PathSamples {
            path,
            users,
            with: Arm::default(),
            without: Arm::default(),
            counted_before,
        });
    }
    for i in 0..s.warmup {
        for p in &paths {
            let u = &p.users[i % p.users.len()].user;
            pamtester(&s.with, u)?;
            pamtester(&s.without, u)?;
        }
    }
    let bus = BusMonitor::start()?;
    let mut mark = bus.sync()?;
    // One run at a time, the paths taking turns (first, additional, first,
    // …), the stacks following CYCLE: over a cycle each stack of one path
    // comes after each stack of the other path equally often (what a run
    // follows, a first login's logout most of all, must not favour one
    // stack). Each run is of the next user in turn: on the first-login path
    // never the user whose logout just ended (a login right after one's own
    // logout finds logind's record of the user still there, some 20 ms
    // faster). The rotation shifts by one user each time it comes round, so
    // no user always gets the same stack.
    let turn = paths
        .iter()
        .map(|p| p.users.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let count = paths.len();
    for j in 0..2 * s.n {
        let (first_with, additional_with) = CYCLE[j % 4];
        for (k, p) in paths.iter_mut().enumerate() {
            // a path alone alternates ABBA (the additional column)
            let with = if count == 2 && k == 0 {
                first_with
            } else {
                additional_with
            };
            let (user, uid) = {
                let u = &p.users[(s.warmup + j + j / turn) % p.users.len()];
                (u.user.clone(), u.uid)
            };
            let (service, arm) = if with {
                (&s.with, &mut p.with)
            } else {
                (&s.without, &mut p.without)
            };
            // the last run's after-effects (fairshared's background save,
            // logind's clean-up of the logout) are over before this one
            std::thread::sleep(GAP);
            arm.sessions_before.push(
                sessions_counted(&client, &[uid])?
                    .first()
                    .copied()
                    .unwrap_or(0),
            );
            let (ns, ok) = pamtester(service, &user)?;
            let now = bus.sync()?;
            let (set, adopted) = user_calls(&now.since(&mark), uid);
            mark = now;
            arm.ns.push(ns);
            arm.uid.push(uid);
            arm.set_calls.push(set);
            arm.adoptions.push(adopted);
            if !ok {
                arm.failures += 1;
            }
        }
    }
    for p in &mut paths {
        for u in &mut p.users {
            u.after = host.settled_view(u.uid, Duration::from_secs(5))?;
        }
        let failures = p.with.failures + p.without.failures;
        if failures > 0 {
            eprintln!(
                "pam-loop: {failures} pamtester runs on the {:?} path failed",
                p.path
            );
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

/// Stacks per turn (with the module: `true`) for (first login, additional
/// session): each stack of one path follows each stack of the other path
/// once per cycle, and each path runs both stacks twice.
const CYCLE: [(bool, bool); 4] = [(true, true), (false, false), (true, false), (false, true)];

/// Quiet before each timed run: longer than fairshared's background save
/// waits after a change ([`fairshared::store::SAVE_DELAY`]), so that save
/// falls between runs, not into the next one, whichever stack it runs.
const GAP: Duration = Duration::from_millis(300);

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
    let off_path = p.with.off_path(p.path, true) + p.without.off_path(p.path, false);
    let host_ok = p.host_ok();
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
    row.verdict = if off_path > 0 || host_ok < p.users.len() {
        format!(
            "NOT THIS PATH ({off_path} runs, {} users off it; see notes)",
            p.users.len() - host_ok
        )
    } else if failures > 0 {
        format!("MISSED ({failures} failed runs)")
    } else {
        verdict(fast)
    };
    // how far chance moves the added median and p99 (one bootstrap each)
    let chance =
        |stat: fn(&[f64]) -> Option<f64>| bootstrap(w, wo, stat, |a, b| a - b, BOOTSTRAP_REPS, 0.9);
    let (median_iv, p99_iv) = (chance(median), chance(|s| percentile(s, 99.0)));
    // say when chance alone could carry a figure across its target
    let crosses =
        |iv: Option<(f64, f64)>, max: f64| iv.is_some_and(|(lo, hi)| lo <= max && max < hi);
    let near: Vec<&str> = [
        ("median", crosses(median_iv, MAX_ADDED_MEDIAN_NS)),
        ("p99", crosses(p99_iv, MAX_ADDED_P99_NS)),
    ]
    .into_iter()
    .filter_map(|(what, x)| x.then_some(what))
    .collect();
    if !near.is_empty() {
        row.verdict = format!(
            "{} ({} within chance of the target: see notes)",
            row.verdict,
            near.join(" and ")
        );
    }
    r.row(row);
    let interval = |iv: Option<(f64, f64)>| {
        iv.map_or("—".into(), |(lo, hi)| {
            format!("{} to {}", ms_signed(Some(lo)), ms_signed(Some(hi)))
        })
    };
    let (chance_median, chance_p99) = (interval(median_iv), interval(p99_iv));
    let runs = w.len() + wo.len();
    let counted_before = if p.counted_before.is_empty() {
        "none".to_string()
    } else {
        p.counted_before.join(", ")
    };
    let names = match p.users.as_slice() {
        [] => String::new(),
        [one] => format!("`{}`", one.user),
        [first, .., last] => format!(
            "{} users in turn, `{}` … `{}`",
            p.users.len(),
            first.user,
            last.user
        ),
    };
    let how = match p.path {
        LoginPath::First => format!(
            "{names}, whose user managers are kept from starting (a condition on user@UID.service: fairshared counts a running one as a session), with no other session; each run is of the next user (never a user whose own logout just ended: logind's record of them would still be there, a faster login), and each user's turn comes round seconds apart, after the check fairshared makes 2 s after logind reports a new user (it would count a session of the stack without the module that is open then)"
        ),
        LoginPath::Additional => format!(
            "{names}, lingering with their user manager running, which fairshared counts as a session (`systemd-user`), as for a user logged in elsewhere"
        ),
    };
    let expect = match p.path {
        LoginPath::First => "0 before every run",
        LoginPath::Additional => "at least 1 before every run",
    };
    let managers = |f: fn(&UserView) -> &HostView| {
        p.users
            .iter()
            .filter(|u| f(u).user_manager_pid != 0)
            .count()
    };
    let sessions = |f: fn(&UserView) -> &HostView| -> u32 {
        p.users.iter().map(|u| f(u).logind_sessions).sum()
    };
    let sum = |xs: &[u32]| xs.iter().map(|&x| u64::from(x)).sum::<u64>();
    r.note(format!(
        "login overhead, {path}: `pamtester SVC USER open_session close_session`, {n} runs per stack, one at a time, the two paths taking turns and the stacks in an order where each stack of one path follows each stack of the other equally often (what a run follows, a first login's logout above all, favours neither stack), each run {gap} ms after the last ended (past fairshared's background save, {save} ms after a change, and logind's clean-up of the logout), {warm} warm-up runs each; SVC = `{with}` (pam_unix + pam_systemd + pam_fairshare) vs `{without}` (the same without pam_fairshare); added = difference of the medians (of the p99s). Users: {how}. Path check, per run: sessions fairshared counted for the user (root's `list`), wanted {expect}; no process adopted (StartTransientUnit of a fairshare scope: pam_systemd made no session); no slice written in a run without the module: {off_path} of {runs} runs off the path (counted before the first run: {counted_before}). logind and systemd, summed over the users, before the first run / after the last: {sb} / {sa} logind session(s), {mb} / {ma} user manager(s) running; {host_ok} of {nusers} users as the path needs. Calls reaching systemd for the user's units, seen on the system bus by a monitor outside the daemon: SetUnitProperties on the user's slice {cw:.2} per run with the module, {cwo:.2} without (a first login that changes the slice makes 2, apply and reset; an additional session none); adopted processes {aw} with the module, {awo} without. Failed runs: {fw} with the module, {fwo} without. How far chance moves these figures: 90% bootstrap interval ({BOOTSTRAP_REPS} resamples of each stack's runs) of the added median {chance_median}, of the added p99 {chance_p99} (rough: a p99 rests on a few runs).",
        path = p.path.label(),
        n = w.len(),
        gap = GAP.as_millis(),
        save = fairshared::store::SAVE_DELAY.as_millis(),
        warm = v.warmup,
        with = v.with_service,
        without = v.without_service,
        sb = sessions(|u| &u.before),
        sa = sessions(|u| &u.after),
        mb = managers(|u| &u.before),
        ma = managers(|u| &u.after),
        nusers = p.users.len(),
        cw = mean(&p.with.set_calls),
        cwo = mean(&p.without.set_calls),
        aw = sum(&p.with.adoptions),
        awo = sum(&p.without.adoptions),
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

    /// Runs of 10 ms without the module and 10.2 ms with it: 0.2 ms added;
    /// fairshared counted `counted` sessions before each; a first login
    /// writes the slice twice with the module.
    fn path(path: LoginPath, counted: u32) -> PathSamples {
        let arm = |ms: f64, set: u32| Arm {
            ns: vec![ms * 1e6; 20],
            failures: 0,
            uid: vec![2001; 20],
            sessions_before: vec![counted; 20],
            set_calls: vec![set; 20],
            adoptions: vec![0; 20],
        };
        let host = match path {
            LoginPath::First => HostView::default(),
            LoginPath::Additional => HostView {
                logind_sessions: 0,
                user_manager_pid: 42,
            },
        };
        let set = if path == LoginPath::First { 2 } else { 0 };
        PathSamples {
            path,
            users: vec![UserView {
                user: "u".into(),
                uid: 2001,
                before: host,
                after: host,
            }],
            with: arm(10.2, set),
            without: arm(10.0, 0),
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
        let off = |p: PathSamples| verdict_of(p).starts_with("NOT THIS PATH");
        // a first login while fairshared counted a session: an additional one
        let mut p = path(LoginPath::First, 0);
        p.with.sessions_before[3] = 1;
        assert!(verdict_of(p).starts_with("NOT THIS PATH (1 runs"));
        // an additional session with nothing counted: a first login
        assert!(verdict_of(path(LoginPath::Additional, 0)).starts_with("NOT THIS PATH (40 runs"));
        // pam_systemd made no session, so fairshared adopted the process
        let mut p = path(LoginPath::First, 0);
        p.with.adoptions[5] = 1;
        assert!(off(p));
        // fairshared wrote the slice in a run without the module (it found
        // the session on its own)
        let mut p = path(LoginPath::First, 0);
        p.without.set_calls[2] = 1;
        assert!(off(p));
        // a first login with a user manager running
        let mut p = path(LoginPath::First, 0);
        p.users[0].after.user_manager_pid = 7;
        assert!(off(p));
        // an additional session whose user manager was replaced meanwhile
        let mut p = path(LoginPath::Additional, 1);
        p.users[0].after.user_manager_pid = 43;
        assert!(off(p));
    }

    #[test]
    fn too_slow_misses_the_target() {
        let mut p = path(LoginPath::First, 0);
        p.with.ns = vec![10.6e6; 20];
        assert_eq!(verdict_of(p), "MISSED");
    }
}
