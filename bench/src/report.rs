//! The table: every figure, its floor from the same run, the ratio, the
//! target and the verdict; printed, and written to RESULTS.md with the
//! machine it ran on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::Result;
use crate::stats::{median, percentile};

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn nums(v: &Value, key: &str) -> Vec<f64> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn ms(ns: Option<f64>) -> String {
    ns.map_or("—".into(), |x| format!("{:.2} ms", x / 1e6))
}

/// A difference, always with its sign: "+0.52 ms", "-0.37 ms".
fn ms_signed(ns: Option<f64>) -> String {
    ns.map_or("—".into(), |x| format!("{:+.2} ms", x / 1e6))
}

fn mib(kib: Option<f64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

struct Row {
    figure: String,
    median: String,
    p99: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: String,
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "MISSED".into(),
        None => "not measured".into(),
    }
}

fn missing(figure: &str, target: &str) -> Row {
    Row {
        figure: figure.into(),
        median: "—".into(),
        p99: "—".into(),
        baseline: "—".into(),
        ratio: "—".into(),
        target: target.into(),
        verdict: verdict(None),
    }
}

/// A timed figure against its floor: `(row, median ratio)`.
fn paired(figure: &str, with: &[f64], base: &[f64], target: &str, max_ratio: f64) -> Row {
    let (m, b) = (median(with), median(base));
    let ratio = m.zip(b).map(|(m, b)| m / b);
    Row {
        figure: format!("{figure} (n={})", with.len()),
        median: ms(m),
        p99: ms(percentile(with, 99.0)),
        baseline: format!(
            "{} (p99 {})",
            ms(b),
            ms(percentile(base, 99.0)).trim_end_matches(" ms")
        ),
        ratio: ratio.map_or("—".into(), |r| format!("{r:.3}×")),
        target: target.into(),
        verdict: verdict(ratio.map(|r| r <= max_ratio)),
    }
}

fn meta(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("meta"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |k| {
            format!("{:.1} GiB", k / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let virt = if cpuinfo.contains(" hypervisor") {
        "virtual machine (hypervisor flag set)"
    } else {
        "no hypervisor flag"
    };
    vec![
        ("CPU".into(), format!("{model} ({virt})")),
        ("cores".into(), cores.to_string()),
        ("RAM".into(), ram),
        ("kernel".into(), kernel),
        ("OS".into(), os),
    ]
}

pub fn run(dir: &Path, md: Option<&Path>, command: &str) -> Result<()> {
    let mut rows = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // 1. login overhead (pamtester)
    match load(dir, "pam.json") {
        Some(v) => {
            let (w, wo) = (nums(&v, "with_ns"), nums(&v, "without_ns"));
            let added = median(&w).zip(median(&wo)).map(|(a, b)| a - b);
            let added99 = percentile(&w, 99.0)
                .zip(percentile(&wo, 99.0))
                .map(|(a, b)| a - b);
            let ok = added.zip(added99).map(|(a, p)| a <= 2e6 && p <= 10e6);
            let mut r = paired(
                "login overhead, pamtester open+close",
                &w,
                &wo,
                "added: median ≤ 2 ms, p99 ≤ 10 ms",
                f64::INFINITY,
            );
            r.median = format!("{} ({})", r.median, ms_signed(added));
            r.p99 = format!("{} ({})", r.p99, ms_signed(added99));
            r.verdict = verdict(ok);
            rows.push(r);
            let failures = num(&v, "failures").unwrap_or(0.0);
            notes.push(format!(
                "login overhead: `pamtester SVC USER open_session close_session`, {} runs per stack, interleaved (ABBA), 10 warm-up runs each, for {} user(s) with lingering on (`loginctl enable-linger`), so their user manager stays up between runs, as for a user already logged in elsewhere: without it every run starts and stops a whole user@UID.service, whose time varies by hundreds of milliseconds and drowns the module's. Each run is still the user's only PAM session, so fairshared applies the allocation at open and puts the slice back to the default at close: both D-Bus calls in every run. SVC = `{}` (pam_unix + pam_systemd + pam_fairshare) vs `{}` (the same without pam_fairshare). Added = difference of the medians (of the p99s). Failed runs: {failures}.",
                w.len(),
                num(&v, "users").unwrap_or(0.0),
                v.get("with_service").and_then(Value::as_str).unwrap_or("?"),
                v.get("without_service").and_then(Value::as_str).unwrap_or("?"),
            ));
        }
        None => rows.push(missing(
            "login overhead, pamtester open+close",
            "added: median ≤ 2 ms, p99 ≤ 10 ms",
        )),
    }

    // 2. floor of one allocation
    match load(dir, "alloc.json") {
        Some(v) => {
            let (d, b) = (nums(&v, "daemon_ns"), nums(&v, "bare_ns"));
            rows.push(paired(
                "one allocation: session_open vs bare SetUnitProperties",
                &d,
                &b,
                "≤ 1.3× the bare call",
                1.3,
            ));
            notes.push(format!(
                "one allocation: `session_open` over /run/fairshare.sock with fairshare's own client (as pam_fairshare sends it; the user's first session, so the daemon writes the slice) against a bare `SetUnitProperties(user-{}.slice, runtime, CPUQuotaPerSecUSec+MemoryMax+MemoryHigh+TasksMax)` from zbus on the container's system bus with the same values ({}); {} each, interleaved; a `session_close` (untimed) follows each open.",
                v.get("uid").and_then(Value::as_u64).unwrap_or(0),
                v.get("limits").and_then(Value::as_str).unwrap_or("?"),
                d.len()
            ));
        }
        None => rows.push(missing(
            "one allocation: session_open vs bare SetUnitProperties",
            "≤ 1.3× the bare call",
        )),
    }

    if let Some(v) = load(dir, "probe.json") {
        let us = |k: &str| num(&v, k).map_or("?".into(), |x| format!("{x:.0} µs"));
        notes.push(format!(
            "parts of a login in fairshared, measured alone in the container (`fairshare-bench probe`): the user lookup as fairshared does it (passwd, group list, group names; nss-systemd makes the group list a varlink call into PID 1) {} (passwd entry alone {}); the usage reads of `status` {} for a user with a slice, {} without one; a hop to the blocking pool {}; one state save (write, fsync, rename, fsync dir) median {}, p99 {}.",
            us("lookup_us"),
            us("lookup_passwd_only_us"),
            us("usage_slice_us"),
            us("usage_no_slice_us"),
            us("spawn_blocking_us"),
            us("save_median_us"),
            us("save_p99_us"),
        ));
    }

    // 3. ssh
    let ssh: Vec<Value> = std::fs::read_to_string(dir.join("ssh.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if ssh.is_empty() {
        rows.push(missing("ssh login", "≤ 1.05×"));
    } else {
        let arm = |name: &str| -> Vec<f64> {
            ssh.iter()
                .filter(|x| x.get("arm").and_then(Value::as_str) == Some(name))
                .filter_map(|x| num(x, "ns"))
                .collect()
        };
        let failed = ssh
            .iter()
            .filter(|x| x.get("ok").and_then(Value::as_bool) != Some(true))
            .count();
        rows.push(paired(
            "ssh login, `ssh user@127.0.0.1 true`",
            &arm("with"),
            &arm("without"),
            "≤ 1.05×",
            1.05,
        ));
        notes.push(format!(
            "ssh login: from the host to the container's sshd, public key, users in turn over the 100 bench users; blocks of runs alternate between the PAM configuration with the module (`pam-auth-update --enable fairshare`) and without it (`--remove fairshare`). Failed runs: {failed}."
        ));
    }

    // 4. storm
    match load(dir, "storm.json") {
        Some(v) => {
            let rounds = v
                .get("rounds")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let d: Vec<f64> = rounds.iter().filter_map(|r| num(r, "daemon_ns")).collect();
            let x: Vec<f64> = rounds.iter().filter_map(|r| num(r, "direct_ns")).collect();
            let failures = num(&v, "failures").unwrap_or(-1.0);
            let mut r = paired(
                "login storm: 200 sessions, 100 users, open+close wall",
                &d,
                &x,
                "0 failures, limits right, ≤ 1.5×",
                1.5,
            );
            r.figure = format!(
                "login storm: {} sessions, {} users, open+close wall (rounds={})",
                num(&v, "sessions").unwrap_or(0.0),
                num(&v, "users").unwrap_or(0.0),
                d.len()
            );
            let ratio_ok = median(&d)
                .zip(median(&x))
                .map(|(a, b)| a / b <= 1.5 && failures == 0.0);
            r.verdict = format!("{} ({failures} failures)", verdict(ratio_ok));
            rows.push(r);
            let part = |k: &str| {
                ms(median(
                    &rounds.iter().filter_map(|r| num(r, k)).collect::<Vec<_>>(),
                ))
            };
            let lat = nums(&v, "session_open_ns");
            // CPU by process over each arm (open, checks, close), medians
            let cpu = |arm: &str| -> String {
                let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                for r in &rounds {
                    if let Some(m) = r.get(arm).and_then(Value::as_object) {
                        for (k, x) in m {
                            by.entry(k.clone()).or_default().extend(x.as_f64());
                        }
                    }
                }
                let mut v: Vec<(String, f64)> = by
                    .into_iter()
                    .filter_map(|(k, xs)| Some((k, median(&xs)?)))
                    .filter(|(_, m)| *m >= 10.0)
                    .collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                v.iter()
                    .map(|(k, m)| format!("{k} {m:.0} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            notes.push(format!(
                "login storm, CPU time by process during each arm (medians over rounds, clock ticks of 10 ms; `children` = the 200 session processes over their whole life, start-up and exit included, with the module): with the daemon: {}; direct calls: {}. The module's own side, measured inside each session process from pam_open_session to the end of pam_close_session: median {:.0} µs CPU per session (p99 {:.0} µs).",
                cpu("daemon_cpu_ms"),
                cpu("direct_cpu_ms"),
                median(&nums(&v, "session_cpu_ns")).unwrap_or(0.0) / 1e3,
                percentile(&nums(&v, "session_cpu_ns"), 99.0).unwrap_or(0.0) / 1e3,
            ));
            notes.push(format!(
                "login storm: each session is its own process calling pam_open_session on a stack with only pam_fairshare (`{}`; XDG_SESSION_ID set as pam_systemd would, so no logind work is included), all released at once, then all closed at once. Floor: the {} SetUnitProperties calls per phase the daemon makes (a user's first open, their last close), issued directly, all at once, on one bus connection. Before each arm every slice is set to other limits; after each phase the cgroup files of all {} slices (cpu.cfs_quota_us, memory.limit_in_bytes, pids.max) and the daemon's session counts are checked. Medians: open {} + close {} (daemon) vs {} + {} (direct); for context, the same 200 processes through a stack without the module (pam_permit only, nothing reaches the daemon): open {} + close {}. Per-session pam_open_session latency in the storm: median {}, p99 {}. Failures: {failures}{}",
                v.get("service").and_then(Value::as_str).unwrap_or("?"),
                num(&v, "calls_per_phase").unwrap_or(0.0),
                num(&v, "users").unwrap_or(0.0),
                part("daemon_open_ns"),
                part("daemon_close_ns"),
                part("direct_open_ns"),
                part("direct_close_ns"),
                part("null_open_ns"),
                part("null_close_ns"),
                ms(median(&lat)),
                ms(percentile(&lat, 99.0)),
                v.get("problems")
                    .and_then(Value::as_array)
                    .filter(|p| !p.is_empty())
                    .map(|p| format!(
                        " (first: {})",
                        p.iter()
                            .take(3)
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                    .unwrap_or_default()
            ));
            let threads = num(&v, "module_threads_created_max");
            rows.push(Row {
                figure: "module: threads created by open_session".into(),
                median: threads.map_or("—".into(), |t| format!("{t:.0}")),
                p99: "—".into(),
                baseline: "—".into(),
                ratio: "—".into(),
                target: "0".into(),
                verdict: verdict(threads.map(|t| t == 0.0)),
            });
            notes.push(format!(
                "module threads: `Threads:` of /proc/self/status in each storm process just before and after pam_open_session (largest difference over {} sessions).",
                lat.len()
            ));
        }
        None => {
            rows.push(missing(
                "login storm: 200 sessions, 100 users, open+close wall",
                "0 failures, limits right, ≤ 1.5×",
            ));
            rows.push(missing("module: threads created by open_session", "0"));
        }
    }

    // module size
    match std::fs::metadata(dir.join("pam_fairshare.so")) {
        Ok(m) => rows.push(Row {
            figure: "module: stripped pam_fairshare.so".into(),
            median: format!("{:.0} KiB", m.len() as f64 / 1024.0),
            p99: "—".into(),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "≤ 1 MiB".into(),
            verdict: verdict(Some(m.len() <= 1 << 20)),
        }),
        Err(_) => rows.push(missing("module: stripped pam_fairshare.so", "≤ 1 MiB")),
    }

    // 5. throughput
    match load(dir, "throughput.json") {
        Some(v) => {
            let (d, e) = (nums(&v, "daemon_per_sec"), nums(&v, "echo_per_sec"));
            let ratio = median(&d).zip(median(&e)).map(|(a, b)| a / b);
            rows.push(Row {
                figure: format!(
                    "request throughput: `status`, {} clients (rounds={})",
                    num(&v, "clients").unwrap_or(0.0),
                    d.len()
                ),
                median: median(&d).map_or("—".into(), |x| format!("{x:.0}/s")),
                p99: "—".into(),
                baseline: median(&e).map_or("—".into(), |x| format!("{x:.0}/s echo")),
                ratio: ratio.map_or("—".into(), |r| format!("{r:.3}×")),
                target: "≥ 0.5× the echo floor".into(),
                verdict: verdict(ratio.map(|r| r >= 0.5)),
            });
            notes.push(format!(
                "request throughput: {} threads each sending `{}` on a fresh connection per request (fairshare's blocking client), as root (non-root users are rate-limited to 50 requests/s each by design), for {} s per round, alternating with a tokio echo server (two workers, like fairshared; one line per connection) on another Unix socket in the container. Errors: {}.",
                num(&v, "clients").unwrap_or(0.0),
                v.get("request").and_then(Value::as_str).unwrap_or("?"),
                num(&v, "secs").unwrap_or(0.0),
                num(&v, "errors").unwrap_or(0.0)
            ));
        }
        None => rows.push(missing("request throughput", "≥ 0.5× the echo floor")),
    }

    // 6. memory
    let idle = load(dir, "idle.json");
    let idle_rss = idle.as_ref().and_then(|v| num(v, "rss_kib"));
    rows.push(Row {
        figure: "daemon memory: RSS idle (real fairshared)".into(),
        median: mib(idle_rss),
        p99: "—".into(),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "≤ 10 MiB".into(),
        verdict: verdict(idle_rss.map(|k| k <= 10.0 * 1024.0)),
    });
    match load(dir, "memory.json") {
        Some(v) => {
            let rss = num(&v, "rss_kib");
            let users = num(&v, "users").unwrap_or(0.0);
            let errors = num(&v, "errors").unwrap_or(0.0);
            rows.push(Row {
                figure: format!("daemon memory: RSS at {users:.0} users (FAKE systemd backend)"),
                median: mib(rss),
                p99: "—".into(),
                baseline: format!("{} idle (same program)", mib(num(&v, "idle_rss_kib"))),
                ratio: "—".into(),
                target: "≤ 40 MiB".into(),
                verdict: verdict(rss.map(|k| k <= 40.0 * 1024.0 && errors == 0.0)),
            });
            notes.push(format!(
                "daemon memory at {users:.0} users uses the FAKE systemd backend (`fairshared::systemd::Fake`): fairshared's own server, request handling, ledger, state file and pid watches run in a child process with an in-memory systemd and a synthetic user directory; one session per user is opened through its socket by {} clients, each with a live session process (forked, sleeping) that the daemon watches with a pidfd, as for real logins. Peak RSS {}, {} open file descriptors, {:.1} s to open all sessions, {errors} errors.",
                num(&v, "clients").unwrap_or(0.0),
                mib(num(&v, "hwm_kib")),
                num(&v, "open_fds").unwrap_or(0.0),
                num(&v, "drive_secs").unwrap_or(0.0),
            ));
        }
        None => rows.push(missing(
            "daemon memory: RSS at 10000 users (FAKE systemd backend)",
            "≤ 40 MiB",
        )),
    }

    // 7. idle cost
    match &idle {
        Some(v) => {
            let cpu = num(v, "cpu_ns");
            let secs = num(v, "secs").unwrap_or(0.0);
            rows.push(Row {
                figure: format!("idle cost: daemon CPU time over {secs:.0} s, no requests"),
                median: cpu.map_or("—".into(), |c| {
                    format!(
                        "{:.3} ms ({:.0} wake-ups)",
                        c / 1e6,
                        num(v, "context_switches").unwrap_or(0.0)
                    )
                }),
                p99: "—".into(),
                baseline: "—".into(),
                ratio: "—".into(),
                target: "≤ 10 ms".into(),
                verdict: verdict(cpu.map(|c| c <= 10e6)),
            });
            notes.push(format!(
                "idle cost and idle memory: the installed fairshared.service right after a restart, left alone {:.0} s to settle, then {secs:.0} s without requests; CPU time summed over its threads from /proc/PID/task/*/schedstat (ns), wake-ups = context switches; /proc/PID/stat ticks agree: {:.0} ms. The watchdog (WatchdogSec=30s, pinged every 15 s) is the only timer. {} threads; peak RSS {}.",
                num(v, "settle_secs").unwrap_or(0.0),
                num(v, "cpu_ticks_ms").unwrap_or(0.0),
                num(v, "threads").unwrap_or(0.0),
                mib(num(v, "hwm_kib"))
            ));
        }
        None => rows.push(missing("idle cost", "≤ 10 ms")),
    }

    // print
    let header = [
        "figure", "median", "p99", "baseline", "ratio", "target", "verdict",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.median.clone(),
                r.p99.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                r.verdict.clone(),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            width[i] = width[i].max(s.chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        c.iter()
            .enumerate()
            .map(|(i, s)| format!("{s}{}", " ".repeat(width[i] - s.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&header.map(String::from)));
    for c in &cells {
        println!("{}", line(c));
    }

    let Some(md) = md else {
        return Ok(());
    };
    let m = meta(dir);
    let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut s = String::new();
    let _ = writeln!(s, "# fairshare benchmarks\n");
    let _ = writeln!(
        s,
        "Produced by `{command}` (see script/bench); every figure is a median over repeated runs, compared with a floor measured in the same run, interleaved with it where possible. Raw samples: the JSON files of the results directory.\n"
    );
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for c in &cells {
        let _ = writeln!(
            s,
            "| {} |",
            c.iter()
                .map(|x| x.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(s, "\n## Machine and run\n");
    for (k, v) in machine() {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "- date: {} (took {} s)", get("started"), get("seconds"));
    let _ = writeln!(s, "- command: `{command}`");
    let _ = writeln!(s, "- commit: {}", get("commit"));
    let _ = writeln!(
        s,
        "- load average (1, 5, 15 min) at start: {}; at end: {}",
        get("load_start"),
        get("load_end")
    );
    let _ = writeln!(
        s,
        "- test host: systemd-nspawn container (Debian bookworm, systemd 252, cgroup v1 hybrid) booted by tests/testhost/testhost.sh; daemon, PAM and the container's systemd all share the machine's cores with the load generators"
    );
    let _ = writeln!(s, "\n## How each figure is measured\n");
    for n in &notes {
        let _ = writeln!(s, "- {n}");
    }
    if let Some(extra) = m.get("notes_file")
        && let Ok(t) = std::fs::read_to_string(extra)
    {
        let _ = writeln!(s, "\n{}", t.trim_end());
    }
    std::fs::write(md, s).map_err(|e| format!("writing {}: {e}", md.display()))?;
    eprintln!("wrote {}", md.display());
    Ok(())
}
