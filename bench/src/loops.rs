//! Timing whole commands: pamtester with and without the module, and ssh.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::report::{Report, Row, Samples, ms_signed, verdict};
use crate::stats::{median, percentile};
use crate::{Result, fail};

/// `pam-loop`: pamtester open+close, with and without the module.
#[derive(Serialize, Deserialize)]
pub struct PamSamples {
    pub users: usize,
    pub with_service: String,
    pub without_service: String,
    pub n: usize,
    pub failures: u32,
    pub with_ns: Vec<f64>,
    pub without_ns: Vec<f64>,
}

impl Samples for PamSamples {
    const FILE: &'static str = "pam.json";
}

/// One timed ssh login (`time-cmd`), a line of `ssh.jsonl`.
#[derive(Serialize, Deserialize)]
pub struct SshRun {
    pub arm: String,
    pub ns: f64,
    pub ok: bool,
}

impl SshRun {
    pub const FILE: &'static str = "ssh.jsonl";
}

/// Runs `cmd` once; `(nanoseconds, succeeded)`.
fn timed(cmd: &[String]) -> Result<(u128, bool)> {
    let Some((prog, args)) = cmd.split_first() else {
        return fail("empty command");
    };
    let t = Instant::now();
    let status = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    Ok((t.elapsed().as_nanos(), status.success()))
}

fn pamtester(service: &str, user: &str) -> Vec<String> {
    ["pamtester", service, user, "open_session", "close_session"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `n` logins through each of two PAM services, interleaved (ABBA) so drift
/// on a noisy machine falls on both alike. Iteration `i` logs in
/// `users[i % len]` with both. script/bench passes one lingering user; a user
/// without lingering logging in dozens of times a second would hit systemd's
/// start limit for user-runtime-dir@UID.service (5 in 10 s), so give several.
pub fn pam_loop(
    users: &[String],
    with: &str,
    without: &str,
    n: usize,
    warmup: usize,
    dir: &Path,
) -> Result<()> {
    if users.is_empty() {
        return fail("no users");
    }
    for i in 0..warmup {
        let u = &users[i % users.len()];
        timed(&pamtester(with, u))?;
        timed(&pamtester(without, u))?;
    }
    let (mut with_ns, mut without_ns, mut failures) = (Vec::new(), Vec::new(), 0u32);
    for i in 0..n {
        let u = &users[(warmup + i) % users.len()];
        let (a, b) = (pamtester(with, u), pamtester(without, u));
        let order = if i % 4 == 0 || i % 4 == 3 {
            [true, false]
        } else {
            [false, true]
        };
        for w in order {
            let (ns, ok) = timed(if w { &a } else { &b })?;
            if !ok {
                failures += 1;
            }
            if w {
                with_ns.push(ns as f64);
            } else {
                without_ns.push(ns as f64);
            }
        }
    }
    PamSamples {
        users: users.len(),
        with_service: with.into(),
        without_service: without.into(),
        n,
        failures,
        with_ns,
        without_ns,
    }
    .save(dir)?;
    if failures > 0 {
        eprintln!("pam-loop: {failures} pamtester runs failed");
    }
    Ok(())
}

/// Runs `cmd` `n` times, appending one [`SshRun`] line per run to
/// `dir/ssh.jsonl`.
pub fn time_cmd(n: usize, arm: &str, dir: &Path, cmd: &[String]) -> Result<()> {
    let out = dir.join(SshRun::FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .map_err(|e| format!("opening {}: {e}", out.display()))?;
    for _ in 0..n {
        let (ns, ok) = timed(cmd)?;
        let run = SshRun {
            arm: arm.into(),
            ns: ns as f64,
            ok,
        };
        writeln!(f, "{}", serde_json::to_string(&run)?)?;
    }
    Ok(())
}

pub fn report_pam(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str = "login overhead, pamtester open+close";
    const TARGET: &str = "added: median ≤ 2 ms, p99 ≤ 10 ms";
    let Some(v) = PamSamples::load(dir)? else {
        r.row(Row::missing(FIGURE, TARGET));
        return Ok(());
    };
    let (w, wo) = (&v.with_ns, &v.without_ns);
    let added = median(w).zip(median(wo)).map(|(a, b)| a - b);
    let added99 = percentile(w, 99.0)
        .zip(percentile(wo, 99.0))
        .map(|(a, b)| a - b);
    let ok = added.zip(added99).map(|(a, p)| a <= 2e6 && p <= 10e6);
    let mut row = Row::paired(FIGURE, w, wo, TARGET, f64::INFINITY);
    row.median = format!("{} ({})", row.median, ms_signed(added));
    row.p99 = format!("{} ({})", row.p99, ms_signed(added99));
    row.verdict = verdict(ok);
    r.row(row);
    r.note(format!(
        "login overhead: `pamtester SVC USER open_session close_session`, {} runs per stack, interleaved (ABBA), 10 warm-up runs each, for {} user(s) with lingering on (`loginctl enable-linger`), so their user manager stays up between runs, as for a user already logged in elsewhere: without it every run starts and stops a whole user@UID.service, whose time varies by hundreds of milliseconds and drowns the module's. Each run is still the user's only PAM session, so fairshared applies the allocation at open and puts the slice back to the default at close: both D-Bus calls in every run. SVC = `{}` (pam_unix + pam_systemd + pam_fairshare) vs `{}` (the same without pam_fairshare). Added = difference of the medians (of the p99s). Failed runs: {}.",
        w.len(),
        v.users,
        v.with_service,
        v.without_service,
        v.failures,
    ));
    Ok(())
}

pub fn report_ssh(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str = "ssh login, `ssh user@127.0.0.1 true`";
    const TARGET: &str = "≤ 1.05×";
    let path = dir.join(SshRun::FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return fail(format!("reading {}: {e}", path.display())),
    };
    let mut runs = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let run: SshRun =
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        runs.push(run);
    }
    if runs.is_empty() {
        r.row(Row::missing("ssh login", TARGET));
        return Ok(());
    }
    let arm = |name: &str| -> Vec<f64> {
        runs.iter()
            .filter(|x| x.arm == name)
            .map(|x| x.ns)
            .collect()
    };
    // warm-up runs (arm `warmup`) are in the file too, outside the figure
    let failed = runs.iter().filter(|x| x.arm != "warmup" && !x.ok).count();
    r.row(Row::paired(
        FIGURE,
        &arm("with"),
        &arm("without"),
        TARGET,
        1.05,
    ));
    r.note(format!(
        "ssh login: from the host to the container's sshd, public key, users in turn over the 100 bench users; blocks of runs alternate between the PAM configuration with the module (`pam-auth-update --enable fairshare`) and without it (`--remove fairshare`). Failed runs: {failed}."
    ));
    Ok(())
}
