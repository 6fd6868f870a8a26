//! Human-readable output: `status` as a short report, `list` as a table.

use std::fmt::Write as _;

use fairshare_proto::wire::{Capacity, Limits, Source, StatusInfo, UserList};

/// `850ms`, `12.3s`, `3m12s`, `2h05m`.
pub fn cpu_time(nsec: u64) -> String {
    let ms = nsec / 1_000_000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

fn when(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match unix.checked_sub(now) {
        Some(left) => format!(
            "in {}",
            fairshare_proto::units::format_duration(std::time::Duration::from_secs(left.max(1)))
        ),
        None => "now".into(),
    }
}

fn capacity(c: &Capacity) -> String {
    format!(
        "{} of {} CPUs free, {} of {} memory free",
        c.cpu_free,
        c.cpu_total,
        c.mem_free.human(),
        c.mem_total.human()
    )
}

pub fn status(s: &StatusInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (uid {}), {}", s.user, s.uid, s.slice);
    if s.source == Source::Exempt {
        let why = s.policy.first().map(String::as_str).unwrap_or("exempt");
        let _ = writeln!(out, "  not limited by fairshare ({why})");
        return out;
    }
    if let (Some(cpu), Some(mem), Some(tasks)) =
        (s.allocated_cpu, s.allocated_mem, s.allocated_tasks)
    {
        let l = Limits {
            cpu,
            mem,
            mem_high: s.allocated_mem_high,
            tasks,
        };
        let from = match s.source {
            Source::Default => "policy default",
            Source::Resize => "your resize",
            Source::Admin => "set by root",
            Source::Exempt => "exempt",
        };
        let _ = writeln!(out, "  allocation: {l} ({from})");
    }
    if let Some(n) = &s.notice {
        let _ = writeln!(out, "  note:       {n}");
    }
    if let Some(t) = s.expires_at {
        let _ = writeln!(out, "  expires:    {} (then back to the default)", when(t));
    }
    if let Some(d) = &s.default {
        let _ = writeln!(out, "  default:    {d}");
    }
    if let Some(m) = &s.max {
        let _ = writeln!(
            out,
            "  maximum:    {}",
            Limits {
                mem_high: None,
                ..*m
            }
        );
    }
    if s.policy.iter().any(|p| p.contains('(')) {
        // a user in several groups: each group says what it gave, one a line
        for (i, p) in s.policy.iter().enumerate() {
            match i {
                0 => writeln!(out, "  policy:     {p}"),
                _ => writeln!(out, "              + {p}"),
            }
            .ok();
        }
    } else if !s.policy.is_empty() {
        let _ = writeln!(out, "  policy:     {}", s.policy.join(" + "));
    }
    let mut sessions = format!("{}", s.sessions);
    if !s.session_list.is_empty() {
        let shown: Vec<String> = s
            .session_list
            .iter()
            .map(|x| {
                let mut d = x.service.clone().unwrap_or_else(|| "session".into());
                if let Some(h) = x.rhost.as_deref().filter(|h| !h.is_empty()) {
                    d.push_str(&format!(" from {h}"));
                }
                d
            })
            .collect();
        sessions.push_str(&format!(" ({})", shown.join(", ")));
    }
    let _ = writeln!(out, "  sessions:   {sessions}");
    let u = &s.usage;
    let mut usage = Vec::new();
    if let Some(m) = u.memory_current {
        usage.push(format!("memory {}", fairshare_proto::Bytes(m).human()));
    }
    if let Some(t) = u.tasks_current {
        usage.push(format!("{t} tasks"));
    }
    if let Some(now) = cpu_now(s) {
        let secs = s
            .usage
            .cpu_recent
            .map_or(0, |r| r.window_nsec / 1_000_000_000);
        usage.push(format!("CPU now {now} over the last {secs}s"));
    } else if u.cpu_usage_nsec.is_some() {
        usage.push("CPU now: not measured yet (ask again in a few seconds)".to_string());
    }
    if let Some(c) = u.cpu_usage_nsec {
        usage.push(format!("CPU time {}", cpu_time(c)));
    }
    if let Some(t) = u.cpu_throttled_periods {
        usage.push(format!("throttled {t} times"));
    }
    if let Some(k) = u.oom_kills {
        usage.push(format!("{k} OOM kills"));
    }
    let _ = writeln!(
        out,
        "  usage:      {}",
        if usage.is_empty() {
            "none (no processes running)".to_string()
        } else {
            usage.join(", ")
        }
    );
    if let Some(c) = &s.capacity {
        let _ = writeln!(out, "  host:       {}", capacity(c));
    }
    if !s.active && s.sessions == 0 {
        let _ = writeln!(
            out,
            "  (you have no session tracked by fairshare; this is what you get at login)"
        );
    }
    out
}

/// CPUs kept busy over the daemon's recent window, and as a share of the
/// allocation: `1.95 CPUs (98%)`.
fn cpu_now(s: &StatusInfo) -> Option<String> {
    let cpus = s.usage.cpu_recent?.cpus()?;
    Some(
        match s.allocated_cpu.map(|a| a.millis()).filter(|m| *m > 0) {
            Some(m) => format!("{cpus:.2} CPUs ({:.0}%)", cpus * 100_000.0 / m as f64),
            None => format!("{cpus:.2} CPUs"),
        },
    )
}

pub fn list(l: &UserList) -> String {
    let header = [
        "USER",
        "UID",
        "CPU",
        "MEM",
        "TASKS",
        "SOURCE",
        "SESS",
        "MEM USED",
        "TASKS NOW",
        "CPU NOW",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for s in &l.users {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        rows.push(vec![
            s.user.clone(),
            s.uid.to_string(),
            opt(s.allocated_cpu.map(|c| c.to_string())),
            opt(s.allocated_mem.map(|m| m.to_string())),
            opt(s.allocated_tasks.map(|t| t.to_string())),
            s.source.to_string(),
            s.sessions.to_string(),
            opt(s
                .usage
                .memory_current
                .map(|m| fairshare_proto::Bytes(m).human())),
            opt(s.usage.tasks_current.map(|t| t.to_string())),
            opt(cpu_now(s).map(|c| c.replace(" CPUs", ""))),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if l.users.is_empty() {
        let _ = writeln!(out, "(no users hold an allocation)");
    }
    let _ = writeln!(out, "host: {}", capacity(&l.capacity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::units::{Bytes, Cpus, Tasks};
    use fairshare_proto::wire::{CpuRecent, Usage};

    fn info() -> StatusInfo {
        let l = Limits {
            cpu: Cpus::whole(3),
            mem: Bytes(3 << 30),
            mem_high: None,
            tasks: Tasks(4096),
        };
        StatusInfo {
            allocated_cpu: Some(l.cpu),
            allocated_mem: Some(l.mem),
            allocated_tasks: Some(l.tasks),
            allocated_mem_high: None,
            uid: 1001,
            user: "alice".into(),
            slice: "user-1001.slice".into(),
            source: Source::Resize,
            active: true,
            default: Some(Limits {
                cpu: Cpus::whole(2),
                ..l
            }),
            max: Some(Limits {
                cpu: Cpus::whole(8),
                ..l
            }),
            policy: vec!["defaults".into(), "group students".into()],
            sessions: 1,
            session_list: vec![],
            expires_at: None,
            notice: None,
            usage: Usage {
                memory_current: Some(5 << 20),
                tasks_current: Some(4),
                cpu_usage_nsec: Some(192_000_000_000),
                ..Usage::default()
            },
            capacity: None,
        }
    }

    #[test]
    fn status_reads_well() {
        let s = status(&info());
        assert!(s.contains("alice (uid 1001), user-1001.slice"), "{s}");
        assert!(
            s.contains("allocation: 3 CPUs, 3G memory, 4096 tasks (your resize)"),
            "{s}"
        );
        assert!(s.contains("maximum:    8 CPUs"), "{s}");
        assert!(s.contains("policy:     defaults + group students"), "{s}");
        assert!(
            s.contains("memory 5M, 4 tasks, CPU now: not measured yet (ask again in a few seconds), CPU time 3m12s"),
            "{s}"
        );
        let mut i = info();
        i.usage.cpu_recent = Some(CpuRecent {
            used_nsec: 45_000_000_000,
            window_nsec: 30_000_000_000,
        });
        let s = status(&i);
        assert!(
            s.contains("4 tasks, CPU now 1.50 CPUs (50%) over the last 30s, CPU time 3m12s"),
            "{s}"
        );
    }

    #[test]
    fn several_groups_show_one_a_line() {
        let mut i = info();
        i.policy = vec![
            "defaults".into(),
            "group students (gives defaults.mem 4G; defaults.cpu 1 lost to group staff, later in the policy)".into(),
            "group staff (gives defaults.cpu 2)".into(),
        ];
        let s = status(&i);
        assert!(
            s.contains("  policy:     defaults\n              + group students (gives defaults.mem 4G; defaults.cpu 1 lost to group staff, later in the policy)\n              + group staff (gives defaults.cpu 2)\n"),
            "{s}"
        );
    }

    #[test]
    fn list_is_aligned() {
        let l = UserList {
            users: vec![info()],
            capacity: Capacity {
                cpu_total: Cpus::whole(8),
                mem_total: Bytes(16 << 30),
                cpu_allocated: Cpus::whole(3),
                mem_allocated: Bytes(3 << 30),
                cpu_free: Cpus::whole(5),
                mem_free: Bytes(13 << 30),
            },
        };
        let t = list(&l);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("USER   UID   CPU  MEM"), "{t}");
        assert!(lines[0].ends_with("TASKS NOW  CPU NOW"), "{t}");
        assert!(lines[1].starts_with("alice  1001  3    3G"), "{t}");
        assert!(lines[1].ends_with("4          -"), "{t}");
        let mut l = l;
        l.users[0].usage.cpu_recent = Some(CpuRecent {
            used_nsec: 9_000_000_000,
            window_nsec: 30_000_000_000,
        });
        let t = list(&l);
        assert!(
            t.lines().nth(1).unwrap().ends_with("4          0.30 (10%)"),
            "{t}"
        );
        assert!(
            t.contains("host: 5 of 8 CPUs free, 13G of 16G memory free"),
            "{t}"
        );
    }

    #[test]
    fn cpu_times() {
        assert_eq!(cpu_time(850_000_000), "850ms");
        assert_eq!(cpu_time(12_300_000_000), "12.3s");
        assert_eq!(cpu_time(7_500_000_000_000), "2h05m");
    }
}
