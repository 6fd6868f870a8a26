//! Idle cost: CPU time and wake-ups of a unit's main process over a window
//! with no requests, from the scheduler's per-thread accounting
//! (`/proc/PID/task/TID/schedstat`, nanoseconds; `stat` ticks as a cross-check),
//! and its memory (`VmRSS`) at the end of the window.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::{Report, Row, Samples, mib};
use crate::{Result, fail};

/// `idle`: the daemon's CPU, wake-ups and memory over a window without
/// requests.
#[derive(Serialize, Deserialize)]
pub struct IdleSamples {
    pub unit: String,
    pub pid: u32,
    pub settle_secs: f64,
    pub secs: f64,
    pub cpu_ns: u64,
    pub cpu_ticks_ms: f64,
    pub context_switches: u64,
    pub threads: usize,
    pub threads_gone: usize,
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
}

impl Samples for IdleSamples {
    const FILE: &'static str = "idle.json";
}

pub fn main_pid(unit: &str) -> Result<u32> {
    let o = Command::new("systemctl")
        .args(["show", "-p", "MainPID", "--value", unit])
        .output()?;
    match String::from_utf8_lossy(&o.stdout).trim().parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => fail(format!("{unit} has no main process (is it running?)")),
    }
}

/// Per thread: (cpu ns, context switches).
pub fn snapshot(pid: u32) -> Result<HashMap<u32, (u64, u64)>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Ok(sched) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let ns = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(tid, (ns, switches));
    }
    Ok(out)
}

/// utime + stime of the whole process (dead threads included), in ticks.
fn ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = s.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // after the comm: state is field 3, utime 14, stime 15 (1-based overall)
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(get(11) + get(12))
}

pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn run(unit: &str, settle: f64, secs: f64, dir: &Path) -> Result<()> {
    let pid = main_pid(unit)?;
    std::thread::sleep(Duration::from_secs_f64(settle));
    let (a, ta) = (snapshot(pid)?, ticks(pid)?);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (b, tb) = (snapshot(pid)?, ticks(pid)?);
    if main_pid(unit)? != pid {
        return fail(format!("{unit} restarted during the measurement"));
    }
    let (mut cpu_ns, mut switches) = (0u64, 0u64);
    for (tid, (ns, sw)) in &b {
        let (ns0, sw0) = a.get(tid).copied().unwrap_or((0, 0));
        cpu_ns += ns.saturating_sub(ns0);
        switches += sw.saturating_sub(sw0);
    }
    let gone = a.keys().filter(|t| !b.contains_key(t)).count();
    let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    IdleSamples {
        unit: unit.into(),
        pid,
        settle_secs: settle,
        secs,
        cpu_ns,
        cpu_ticks_ms: (tb.saturating_sub(ta)) as f64 * 1000.0 / tick_hz,
        context_switches: switches,
        threads: b.len(),
        threads_gone: gone,
        rss_kib: status_kib(pid, "VmRSS:"),
        hwm_kib: status_kib(pid, "VmHWM:"),
    }
    .save(dir)
}

/// The daemon's memory at rest.
pub fn report_rss(v: Option<&IdleSamples>, r: &mut Report) {
    const MAX_KIB: f64 = 10.0 * 1024.0;
    let rss = v.and_then(|v| v.rss_kib).map(|k| k as f64);
    r.row(Row::single(
        "daemon memory: RSS idle (real fairshared)",
        mib(rss),
        "≤ 10 MiB",
        rss.map(|k| k <= MAX_KIB),
    ));
}

/// The daemon's CPU time at rest.
pub fn report_cost(v: Option<&IdleSamples>, r: &mut Report) {
    const TARGET: &str = "≤ 10 ms per minute";
    const MAX_NS: f64 = 10e6;
    let Some(v) = v else {
        r.row(Row::missing("idle cost", TARGET));
        return;
    };
    // per minute, whatever the window
    let cpu = v.cpu_ns as f64 * 60.0 / v.secs.max(1e-9);
    r.row(Row::single(
        &format!(
            "idle cost per minute: daemon CPU right after a restart, no bench user logged in, nobody looking at usage (CPU sampler asleep), no requests (window {:.0} s)",
            v.secs
        ),
        format!(
            "{:.3} ms ({} wake-ups in the window)",
            cpu / 1e6,
            v.context_switches
        ),
        TARGET,
        Some(cpu <= MAX_NS),
    ));
    r.note(format!(
        "idle cost and idle memory: the installed fairshared.service right after a restart, left alone {:.0} s to settle, then {:.0} s without requests; CPU time summed over its threads from /proc/PID/task/*/schedstat (ns), wake-ups = context switches; /proc/PID/stat ticks agree: {:.0} ms. Its timers: the watchdog (WatchdogSec=30s, its check every quarter period); the CPU sampler behind CPU now in status and list sleeps until someone looks at a user's usage. {} threads; peak RSS {}.",
        v.settle_secs,
        v.secs,
        v.cpu_ticks_ms,
        v.threads,
        mib(v.hwm_kib.map(|k| k as f64))
    ));
}
