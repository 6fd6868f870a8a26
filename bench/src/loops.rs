//! Timing whole commands: ssh logins with and without the module.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::report::{Report, Row};
use crate::stats::{BOOTSTRAP_REPS, bootstrap, median};
use crate::{Result, fail};

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

pub fn report_ssh(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str = "ssh login, `ssh user@127.0.0.1 true`";
    const TARGET: &str = "≤ 1.02×; 0 failed runs";
    const MAX_RATIO: f64 = 1.02;
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
    let mut row = Row::paired(FIGURE, &arm("with"), &arm("without"), TARGET, MAX_RATIO);
    if failed > 0 {
        row.verdict = format!("MISSED ({failed} failed runs)");
    }
    r.row(row);
    let chance = bootstrap(
        &arm("with"),
        &arm("without"),
        median,
        |a, b| a / b,
        BOOTSTRAP_REPS,
        0.9,
    )
    .map_or("—".into(), |(lo, hi)| format!("{lo:.3}× to {hi:.3}×"));
    r.note(format!(
        "ssh login: from the host to the container's sshd, public key, users in turn over the 100 bench users; blocks of runs alternate between the PAM configuration with the module (`pam-auth-update --enable fairshare`) and without it (`--remove fairshare`); after every switch script/bench checks that /etc/pam.d/common-session (which sshd's stack includes) has, or lacks, the pam_fairshare.so session line, and aborts otherwise. How far chance moves the ratio: 90% bootstrap interval {chance} ({BOOTSTRAP_REPS} resamples of each arm's runs; rough: runs come in blocks between switches, which this does not resample). Failed runs: {failed}."
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn verdict_with(runs: &[(&str, f64, bool)]) -> String {
        let dir = std::env::temp_dir().join(format!(
            "fairshare-bench-ssh-test-{}-{}",
            std::process::id(),
            runs.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let lines: Vec<String> = runs
            .iter()
            .map(|(arm, ns, ok)| {
                serde_json::to_string(&SshRun {
                    arm: arm.to_string(),
                    ns: *ns,
                    ok: *ok,
                })
                .unwrap()
            })
            .collect();
        std::fs::write(dir.join(SshRun::FILE), lines.join("\n")).unwrap();
        let mut r = Report::default();
        report_ssh(&dir, &mut r).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        r.rows.remove(0).verdict
    }

    #[test]
    fn ssh_needs_every_run_to_succeed() {
        let clean = [("with", 100.0, true), ("without", 100.0, true)];
        assert_eq!(verdict_with(&clean), "met");
        let failed = [
            ("with", 100.0, true),
            ("without", 100.0, true),
            ("with", 100.0, false),
        ];
        assert_eq!(verdict_with(&failed), "MISSED (1 failed runs)");
        // a failed warm-up run is not part of the figure
        let warmup = [
            ("warmup", 100.0, false),
            ("with", 100.0, true),
            ("without", 100.0, true),
            ("with", 101.0, true),
        ];
        assert_eq!(verdict_with(&warmup), "met");
        let slow = [("with", 103.0, true), ("without", 100.0, true)];
        assert_eq!(verdict_with(&slow), "MISSED");
    }
}
