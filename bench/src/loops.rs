//! Timing whole commands: pamtester with and without the module, and ssh.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::{Result, fail, write_json};

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
    out: &Path,
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
    write_json(
        out,
        &json!({
            "users": users.len(),
            "with_service": with,
            "without_service": without,
            "n": n,
            "failures": failures,
            "with_ns": with_ns,
            "without_ns": without_ns,
        }),
    )?;
    if failures > 0 {
        eprintln!("pam-loop: {failures} pamtester runs failed");
    }
    Ok(())
}

/// Runs `cmd` `n` times, appending `{"arm","ns","ok"}` lines to `out`.
pub fn time_cmd(n: usize, arm: &str, out: &Path, cmd: &[String]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(|e| format!("opening {}: {e}", out.display()))?;
    for _ in 0..n {
        let (ns, ok) = timed(cmd)?;
        writeln!(f, "{}", json!({"arm": arm, "ns": ns as f64, "ok": ok}))?;
    }
    Ok(())
}
