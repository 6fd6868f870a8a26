//! The table: every figure, its floor from the same run, the ratio, the
//! target and the verdict; printed, and written to RESULTS.md with the
//! machine it ran on.
//!
//! Each measuring module owns the serde struct of its samples ([`Samples`]):
//! the subcommand writes it into the results directory and the module's
//! `report` function reads it back into rows and notes, so a field is spelt
//! once. A new figure is a module with a samples struct and a `report`
//! function, and one line in [`run`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Result;
use crate::stats::{median, percentile};

/// The samples one subcommand writes and the report reads: one JSON file
/// named [`Samples::FILE`] in the results directory.
pub trait Samples: Serialize + DeserializeOwned {
    const FILE: &'static str;

    fn save(&self, dir: &Path) -> Result<()> {
        crate::write_json(&dir.join(Self::FILE), self)
    }

    /// `None` when the figure was not measured (no file); an error when the
    /// file is there but does not parse (a writer and reader out of step).
    fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()).into())
    }
}

pub fn ms(ns: Option<f64>) -> String {
    ns.map_or("—".into(), |x| format!("{:.2} ms", x / 1e6))
}

/// A difference, always with its sign: "+0.52 ms", "-0.37 ms".
pub fn ms_signed(ns: Option<f64>) -> String {
    ns.map_or("—".into(), |x| format!("{:+.2} ms", x / 1e6))
}

pub fn mib(kib: Option<f64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

pub fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "MISSED".into(),
        None => "not measured".into(),
    }
}

/// One line of the table.
pub struct Row {
    pub figure: String,
    pub median: String,
    pub p99: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: String,
}

impl Row {
    /// A figure that was not measured in this run.
    pub fn missing(figure: &str, target: &str) -> Row {
        Row::single(figure, "—".into(), target, None)
    }

    /// A single value (no floor).
    pub fn single(figure: &str, value: String, target: &str, ok: Option<bool>) -> Row {
        Row {
            figure: figure.into(),
            median: value,
            p99: "—".into(),
            baseline: "—".into(),
            ratio: "—".into(),
            target: target.into(),
            verdict: verdict(ok),
        }
    }

    /// A timed figure against its floor, met when the ratio of the medians
    /// is at most `max_ratio`.
    pub fn paired(figure: &str, with: &[f64], base: &[f64], target: &str, max_ratio: f64) -> Row {
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

    fn cells(&self) -> [String; 7] {
        [
            self.figure.clone(),
            self.median.clone(),
            self.p99.clone(),
            self.baseline.clone(),
            self.ratio.clone(),
            self.target.clone(),
            self.verdict.clone(),
        ]
    }
}

/// The rows of the table and the notes on how each figure was measured.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&mut self, r: Row) {
        self.rows.push(r);
    }

    pub fn note(&mut self, n: String) {
        self.notes.push(n);
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

/// Every figure's rows and notes from the samples in `dir`, in table order.
pub fn collect(dir: &Path) -> Result<Report> {
    let mut r = Report::default();
    crate::login::report(dir, &mut r)?;
    crate::alloc::report(dir, &mut r)?;
    crate::loops::report_ssh(dir, &mut r)?;
    crate::storm::report(dir, &mut r)?;
    module_size(dir, &mut r);
    crate::throughput::report(dir, &mut r)?;
    let idle = crate::idle::IdleSamples::load(dir)?;
    crate::idle::report_rss(idle.as_ref(), &mut r);
    crate::memory::report(dir, &mut r)?;
    crate::startup::report(dir, &mut r)?;
    crate::idle::report_cost(idle.as_ref(), &mut r);
    crate::load::report(dir, &mut r)?;
    crate::oom::report(dir, &mut r)?;
    Ok(r)
}

/// The stripped module script/bench copies into the results directory.
fn module_size(dir: &Path, r: &mut Report) {
    const FIGURE: &str = "module: stripped pam_fairshare.so";
    const MAX: u64 = 1 << 20;
    const TARGET: &str = "≤ 1 MiB";
    r.row(match std::fs::metadata(dir.join("pam_fairshare.so")) {
        Ok(m) => Row::single(
            FIGURE,
            format!("{:.0} KiB", m.len() as f64 / 1024.0),
            TARGET,
            Some(m.len() <= MAX),
        ),
        Err(_) => Row::missing(FIGURE, TARGET),
    });
}

const HEADER: [&str; 7] = [
    "figure", "median", "p99", "baseline", "ratio", "target", "verdict",
];

/// The table as plain text, columns aligned.
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut width = HEADER.map(|h| h.chars().count());
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
    let mut out = line(&HEADER.map(String::from)) + "\n";
    for c in &cells {
        out += &line(c);
        out.push('\n');
    }
    out
}

/// RESULTS.md: the table, the machine and run, and the notes.
pub fn markdown(r: &Report, dir: &Path, command: &str) -> String {
    let m = meta(dir);
    let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut s = String::new();
    let _ = writeln!(s, "# fairshare benchmarks\n");
    let _ = writeln!(
        s,
        "Produced by `{command}` (see script/bench); every figure is a median over repeated runs, compared with a floor measured in the same run, interleaved with it where possible. Raw samples: the JSON files of the results directory.\n"
    );
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(HEADER.len()));
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} |",
            row.cells()
                .iter()
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
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if let Some(extra) = m.get("notes_file")
        && let Ok(t) = std::fs::read_to_string(extra)
    {
        let _ = writeln!(s, "\n{}", t.trim_end());
    }
    s
}

pub fn run(dir: &Path, md: Option<&Path>, command: &str) -> Result<()> {
    let r = collect(dir)?;
    print!("{}", table(&r.rows));
    let Some(md) = md else {
        return Ok(());
    };
    std::fs::write(md, markdown(&r, dir, command))
        .map_err(|e| format!("writing {}: {e}", md.display()))?;
    eprintln!("wrote {}", md.display());
    Ok(())
}
