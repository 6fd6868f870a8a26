//! How `top` lays out a frame: the header lines and the table cells, fitted
//! to 80 columns. Shared by `--once` (plain text) and the live view (which
//! puts the same cells in a ratatui table). Pure.

use fairshare_proto::Bytes;

use super::model::{HostRow, Origin, Row, SortKey};

/// The narrowest terminal everything fits in.
pub const WIDTH: usize = 80;

/// A table column: title, width, right-aligned.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub title: &'static str,
    pub width: u16,
    pub right: bool,
}

const fn col(title: &'static str, width: u16, right: bool) -> Col {
    Col {
        title,
        width,
        right,
    }
}

/// The columns, one space apart: 78 characters.
pub const COLUMNS: [Col; 10] = [
    col("USER", 12, false),
    col("CPUS", 5, true),
    col("%ALLOC", 6, true),
    col("%HOST", 5, true),
    col("MEM USED/MAX", 13, true),
    col("%MEM", 5, true),
    col("THR/s", 5, true),
    col("OOM", 4, true),
    col("SES", 3, true),
    col("SOURCE", 11, false),
];

/// Everything one frame shows.
#[derive(Debug, Clone)]
pub struct Frame {
    pub hostname: String,
    /// Seconds between samples.
    pub interval: f64,
    pub sort: SortKey,
    pub reverse: bool,
    /// Root's view (every user) rather than a user's own row.
    pub everyone: bool,
    pub host: HostRow,
    pub rows: Vec<Row>,
    /// Why the last refresh failed, if it did (the rows are the last good ones).
    pub error: Option<String>,
}

/// `0.50`, `12.5`, `128`: CPUs in use or allocated.
pub fn cpus(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `100%`, `7%`; `-` when unknown.
pub fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.0}%", (v * 100.0).clamp(0.0, 99_999.0)),
        _ => "-".into(),
    }
}

/// `45s`, `12m`, `3h05m`, `2d04h`: time left on a lease, short.
pub fn left(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs / 60) % 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs / 3600) % 24),
    }
}

pub fn origin(o: Origin) -> String {
    match o {
        Origin::Default => "default".into(),
        Origin::Resize => "resize".into(),
        Origin::Root => "root".into(),
        Origin::Lease(s) => format!("lease {}", left(s)),
        Origin::Exempt => "exempt".into(),
    }
}

fn human(b: u64) -> String {
    Bytes(b).human()
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// `s` cut to `width` characters, with `+` marking a cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('+');
    out
}

/// The cells of one row, in [`COLUMNS`] order, each fitted to its column.
pub fn cells(r: &Row) -> [String; 10] {
    let mem = match (r.mem_used, r.mem_limit) {
        (None, None) => "-".to_string(),
        (u, l) => format!("{}/{}", opt(u, human), opt(l, human)),
    };
    let raw = [
        r.user.clone(),
        opt(r.cpu_used, cpus),
        pct(r.cpu_of_alloc),
        pct(r.cpu_of_host),
        mem,
        pct(r.mem_of_limit()),
        opt(r.throttled_per_sec, |t| {
            if t < 9.95 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            }
        }),
        opt(r.oom_kills, |k| k.to_string()),
        r.sessions.to_string(),
        origin(r.origin),
    ];
    let mut out = raw;
    for (cell, c) in out.iter_mut().zip(COLUMNS) {
        *cell = fit(cell, usize::from(c.width));
    }
    out
}

fn line(cells: &[String], cols: &[Col]) -> String {
    let mut out = String::with_capacity(WIDTH);
    for (i, (cell, c)) in cells.iter().zip(cols).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let w = usize::from(c.width);
        if c.right {
            out.push_str(&format!("{cell:>w$}"));
        } else {
            out.push_str(&format!("{cell:<w$}"));
        }
    }
    out.trim_end().to_string()
}

/// The table's title line.
pub fn table_header() -> String {
    let titles: Vec<String> = COLUMNS.iter().map(|c| c.title.to_string()).collect();
    line(&titles, &COLUMNS)
}

/// One row of the table as text.
pub fn table_row(r: &Row) -> String {
    line(&cells(r), &COLUMNS)
}

/// Names of the users in `rows` that `pick` selects, as `alice, bob +3`.
fn names(rows: &[Row], pick: impl Fn(&Row) -> bool) -> (usize, String) {
    let picked: Vec<&str> = rows
        .iter()
        .filter(|r| pick(r))
        .map(|r| r.user.as_str())
        .collect();
    let shown = picked
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = picked.len().saturating_sub(3);
    let s = if more > 0 {
        format!("{shown} +{more}")
    } else {
        shown
    };
    (picked.len(), s)
}

/// The lines above the table, each at most [`WIDTH`] characters.
pub fn header(f: &Frame) -> Vec<String> {
    let mut out = Vec::with_capacity(5);
    let who = if f.everyone {
        match f.rows.len() {
            1 => "1 user".to_string(),
            n => format!("{n} users"),
        }
    } else {
        "your own row (root sees all)".to_string()
    };
    let order = if f.reverse { ", reversed" } else { "" };
    out.push(format!(
        "fairshare top on {}: {who}; every {}s, by {}{order}",
        f.hostname,
        trim_float(f.interval),
        f.sort.name()
    ));
    let h = &f.host;
    let mut host = "host:      ".to_string();
    host.push_str(&match (h.cpus, h.busy) {
        (Some(c), Some(b)) => format!("{c} CPUs, {} busy", pct(Some(b))),
        (Some(c), None) => format!("{c} CPUs"),
        _ => "CPUs unknown".into(),
    });
    if let (Some(u), Some(t)) = (h.mem_used, h.mem_total) {
        host.push_str(&format!("; memory {} of {} in use", human(u), human(t)));
    }
    if f.everyone {
        let used: f64 = f.rows.iter().filter_map(|r| r.cpu_used).sum();
        host.push_str(&format!("; users {} CPUs", cpus(used)));
    }
    out.push(host);
    if let Some(c) = &h.capacity {
        out.push(format!(
            "allocated: CPUs {} of {} ({} free), memory {} of {} ({} free)",
            c.cpu_allocated,
            c.cpu_total,
            c.cpu_free,
            human(c.mem_allocated.get()),
            human(c.mem_total.get()),
            human(c.mem_free.get())
        ));
    }
    let (n_cpu, cpu_names) = names(&f.rows, Row::at_cpu_limit);
    let (n_mem, mem_names) = names(&f.rows, Row::near_mem_limit);
    let (n_oom, oom_names) = names(&f.rows, |r| r.oom_new);
    let mut limits = Vec::new();
    if n_cpu > 0 {
        limits.push(format!("CPU {cpu_names}"));
    }
    if n_mem > 0 {
        limits.push(format!("memory {mem_names}"));
    }
    if n_oom > 0 {
        limits.push(format!("OOM kill {oom_names}"));
    }
    out.push(if limits.is_empty() {
        "at limit: nobody".to_string()
    } else {
        format!("at limit: {}", limits.join("; "))
    });
    if let Some(e) = &f.error {
        out.push(format!("refresh failed: {e}"));
    }
    out.into_iter().map(|l| fit(&l, WIDTH)).collect()
}

/// `2`, `0.5`, `1.25`.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One whole frame as plain text (`--once`).
pub fn text(f: &Frame) -> String {
    let mut out = header(f).join("\n");
    out.push('\n');
    out.push('\n');
    out.push_str(&table_header());
    out.push('\n');
    for r in &f.rows {
        out.push_str(&table_row(r));
        out.push('\n');
    }
    if f.rows.is_empty() {
        out.push_str(if f.everyone {
            "(no users hold an allocation)\n"
        } else {
            "(fairshare tracks no session of yours)\n"
        });
    }
    out
}

/// The frame as JSON (`--once --json`): the computed figures per user.
pub fn json(f: &Frame) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = f
        .rows
        .iter()
        .map(|r| {
            let (source, lease_left) = match r.origin {
                Origin::Lease(s) => ("lease", Some(s)),
                o => (
                    match o {
                        Origin::Default => "default",
                        Origin::Resize => "resize",
                        Origin::Root => "root",
                        _ => "exempt",
                    },
                    None,
                ),
            };
            serde_json::json!({
                "user": r.user,
                "uid": r.uid,
                "cpu_used": r.cpu_used,
                "cpu_allocated": r.cpu_alloc,
                "cpu_share_of_allocation": r.cpu_of_alloc,
                "cpu_share_of_host": r.cpu_of_host,
                "memory_used": r.mem_used,
                "memory_limit": r.mem_limit,
                "throttled_per_sec": r.throttled_per_sec,
                "oom_kills": r.oom_kills,
                "sessions": r.sessions,
                "source": source,
                "lease_seconds_left": lease_left,
            })
        })
        .collect();
    serde_json::json!({
        "host": {
            "cpus": f.host.cpus,
            "busy": f.host.busy,
            "memory_total": f.host.mem_total,
            "memory_used": f.host.mem_used,
            "capacity": f.host.capacity,
        },
        "interval_secs": f.interval,
        "users": rows,
    })
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use fairshare_proto::units::Cpus;
    use fairshare_proto::wire::Capacity;

    pub(crate) fn row(user: &str) -> Row {
        Row {
            uid: 1001,
            user: user.into(),
            cpu_used: Some(0.5),
            cpu_alloc: Some(0.5),
            cpu_of_alloc: Some(1.0),
            cpu_of_host: Some(0.25),
            mem_used: Some(232 << 20),
            mem_limit: Some(256 << 20),
            throttled_per_sec: Some(9.87),
            oom_kills: Some(1),
            oom_new: true,
            sessions: 2,
            origin: Origin::Lease(3 * 3600 + 5 * 60),
        }
    }

    pub(crate) fn frame(rows: Vec<Row>) -> Frame {
        Frame {
            hostname: "login1".into(),
            interval: 2.0,
            sort: SortKey::Cpu,
            reverse: false,
            everyone: true,
            host: HostRow {
                cpus: Some(2),
                busy: Some(0.5),
                mem_total: Some(8 << 30),
                mem_used: Some(3 << 30),
                capacity: Some(Capacity {
                    cpu_total: Cpus::whole(8),
                    mem_total: Bytes(16 << 30),
                    cpu_allocated: Cpus::from_millis(750),
                    mem_allocated: Bytes(1 << 30),
                    cpu_free: Cpus::from_millis(7250),
                    mem_free: Bytes(15 << 30),
                }),
            },
            rows,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{frame, row};
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(cpus(0.5), "0.50");
        assert_eq!(cpus(0.004), "0.00");
        assert_eq!(cpus(12.34), "12.3");
        assert_eq!(cpus(128.4), "128");
        assert_eq!(pct(Some(1.0)), "100%");
        assert_eq!(pct(Some(0.074)), "7%");
        assert_eq!(pct(None), "-");
        assert_eq!(pct(Some(f64::INFINITY)), "-");
        assert_eq!(pct(Some(1e12)), "99999%");
        assert_eq!(left(45), "45s");
        assert_eq!(left(59 * 60 + 59), "59m");
        assert_eq!(left(3 * 3600 + 5 * 60), "3h05m");
        assert_eq!(left(2 * 86_400 + 4 * 3600 + 1), "2d04h");
        assert_eq!(origin(Origin::Root), "root");
        assert_eq!(origin(Origin::Lease(120)), "lease 2m");
        assert_eq!(fit("abcdef", 4), "abc+");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn a_row_reads_across() {
        assert_eq!(
            table_header(),
            "USER          CPUS %ALLOC %HOST  MEM USED/MAX  %MEM THR/s  OOM SES SOURCE"
        );
        assert_eq!(
            table_row(&row("alice")),
            "alice         0.50   100%   25%     232M/256M   91%   9.9    1   2 lease 3h05m"
        );
        let mut r = row("bob");
        r.cpu_used = None;
        r.cpu_of_alloc = None;
        r.cpu_of_host = None;
        r.mem_used = None;
        r.throttled_per_sec = Some(10.0);
        r.origin = Origin::Default;
        assert_eq!(
            table_row(&r),
            "bob              -      -     -        -/256M     -    10    1   2 default"
        );
    }

    #[test]
    fn everything_fits_in_80_columns() {
        let mut r = row("a-very-long-user-name-indeed");
        r.cpu_used = Some(1234.5);
        r.cpu_of_alloc = Some(123.0);
        r.cpu_of_host = Some(99.0);
        r.mem_used = Some(1023 << 40);
        r.mem_limit = Some(1023 << 40);
        r.throttled_per_sec = Some(123_456.0);
        r.oom_kills = Some(123_456);
        r.sessions = 4000;
        r.origin = Origin::Lease(9_999 * 86_400);
        let mut f = frame(vec![r.clone(); 10]);
        f.hostname = "a-login-node-with-a-long-name.cluster.example.org".into();
        f.error = Some("fairshared did not answer within 10000 ms (/run/fairshare.sock); check it with: systemctl status fairshared".into());
        let text = text(&f);
        for l in text.lines() {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        assert!(text.contains("a-very-long+"), "{text}");
        let widths: usize = COLUMNS.iter().map(|c| usize::from(c.width)).sum();
        assert!(widths + COLUMNS.len() - 1 <= WIDTH);
    }

    #[test]
    fn the_header_names_who_is_at_a_limit() {
        let mut idle = row("bob");
        idle.cpu_of_alloc = Some(0.1);
        idle.mem_used = Some(1 << 20);
        idle.oom_new = false;
        let f = frame(vec![row("alice"), idle]);
        let h = header(&f);
        assert_eq!(h[0], "fairshare top on login1: 2 users; every 2s, by cpu");
        assert_eq!(
            h[1],
            "host:      2 CPUs, 50% busy; memory 3G of 8G in use; users 1.00 CPUs"
        );
        assert_eq!(
            h[2],
            "allocated: CPUs 0.75 of 8 (7.25 free), memory 1G of 16G (15G free)"
        );
        assert_eq!(h[3], "at limit: CPU alice; memory alice; OOM kill alice");
        let calm = frame(vec![]);
        assert_eq!(header(&calm)[3], "at limit: nobody");
        assert!(text(&calm).contains("(no users hold an allocation)"));
        let mut own = frame(vec![row("alice")]);
        own.everyone = false;
        assert!(
            header(&own)[0].contains("your own row"),
            "{:?}",
            header(&own)
        );
        assert!(!header(&own)[1].contains("users"), "{:?}", header(&own));
    }

    #[test]
    fn json_has_the_figures() {
        let v = json(&frame(vec![row("alice")]));
        assert_eq!(v["users"][0]["user"], "alice");
        assert_eq!(v["users"][0]["cpu_share_of_allocation"], 1.0);
        assert_eq!(v["users"][0]["source"], "lease");
        assert_eq!(v["users"][0]["lease_seconds_left"], 3 * 3600 + 300);
        assert_eq!(v["host"]["cpus"], 2);
    }
}
