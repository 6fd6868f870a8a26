//! Human-readable output: `status` as a short report, `list` as a table,
//! and the client's own errors (fairshared unreachable, a root-only command).
//!
//! Texts are written for the person reading them: "your" when they read
//! about themselves, the user's name when root reads about someone else.

use std::fmt::Write as _;

use fairshare_proto::ClientError;
use fairshare_proto::wire::{
    Capacity, ErrorCode, ErrorReply, Limits, Response, Source, StatusInfo, UserList,
};

/// What to tell someone who could not reach fairshared, and what to do: an
/// admin (`root`) gets the command, a user is told to ask their admin.
pub fn unreachable(e: &ClientError, root: bool) -> String {
    match e {
        ClientError::NotRunning { path, .. } => {
            let todo = match root {
                true => "start it with: systemctl start fairshared".to_string(),
                false => {
                    "ask your admin to start it (logins still get the default limits meanwhile)"
                        .to_string()
                }
            };
            format!(
                "fairshared is not running (nothing listens on {}); {todo}",
                path.display()
            )
        }
        ClientError::Connect { path, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            let todo = match root {
                true => "is fairshared.socket installed as shipped?",
                false => "ask your admin to check fairshared.socket",
            };
            format!(
                "permission denied connecting to {}; the socket should be mode 0666 ({todo})",
                path.display()
            )
        }
        ClientError::Timeout { .. } => match root {
            true => format!("{e}; check it with: systemctl status fairshared"),
            false => format!("{e}; try again in a moment, or ask your admin if it persists"),
        },
        other => other.to_string(),
    }
}

/// The `--json` form of a client-side error: the daemon's `error` answer's
/// shape, with the code `unreachable`.
pub fn error_json(text: &str) -> String {
    let r = Response::Error(ErrorReply {
        error: text.to_string(),
        code: ErrorCode::Unreachable,
        max: None,
        capacity: None,
    });
    serde_json::to_string_pretty(&r).unwrap_or_else(|_| {
        format!(
            "{{\"type\":\"error\",\"error\":{:?},\"code\":\"unreachable\"}}",
            text
        )
    })
}

/// What a non-root caller of a root-only subcommand is told: the command,
/// not the wire request behind it.
pub fn root_only(subcommand: &str) -> String {
    format!(
        "`fairshare-ctl {subcommand}` is for root only; run it as root (e.g. sudo fairshare-ctl {subcommand} ...)"
    )
}

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

/// `status` for the person with uid `reader`.
pub fn status(s: &StatusInfo, reader: u32) -> String {
    let own = reader == s.uid;
    let whose = match own {
        true => "your".to_string(),
        false => format!("{}'s", s.user),
    };
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
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        };
        let from = match s.source {
            Source::Default => "policy default".to_string(),
            Source::Resize => format!("{whose} resize"),
            Source::Admin => "set by root".to_string(),
            Source::Exempt => "exempt".to_string(),
        };
        let _ = writeln!(out, "  allocation: {l} ({from})");
    }
    if let Some(q) = s.bursting {
        let _ = writeln!(
            out,
            "  bursting:   using up to {q} {} while the host is idle (back to the allocation when it is busy)",
            fairshare_proto::events::cpus_word(q)
        );
    }
    if !s.fair.is_empty() {
        let _ = writeln!(out, "  fair share: {}", s.fair.join(", "));
    }
    for u in &s.unenforced {
        let _ = writeln!(out, "  not enforced here: {u}");
    }
    if let Some(r) = &s.root_setting {
        let until = match r.expires_at {
            Some(t) => format!("ends {}", when(t)),
            None => "until root resets it".to_string(),
        };
        let _ = writeln!(
            out,
            "  root's set: {r}, {until} ({whose} own resizes and releases stay at or below it)"
        );
    }
    if let Some(n) = &s.notice {
        let _ = writeln!(out, "  note:       {n}");
    }
    for w in &s.warnings {
        let _ = writeln!(out, "  WARNING:    {w}");
    }
    if let Some(t) = s.expires_at {
        let then = match (s.source, &s.root_setting) {
            (Source::Resize, Some(_)) => "root's setting",
            _ => "the default",
        };
        let _ = writeln!(out, "  expires:    {} (then back to {then})", when(t));
    }
    if let Some(d) = &s.default {
        let _ = writeln!(out, "  default:    {d}");
    }
    if let Some(m) = &s.max {
        let _ = writeln!(
            out,
            "  maximum:    {}{}",
            Limits {
                mem_high: None,
                ..*m
            },
            match s.root_setting {
                Some(_) => " (as root set it)",
                None => "",
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
        usage.push(format!(
            "{k} OOM kills since the slice started (fairshare-ctl events: all kept)"
        ));
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
    out.push_str(&crate::events::status_lines(s, reader));
    if !s.active && s.sessions == 0 {
        let _ = match own {
            true => writeln!(
                out,
                "  (you have no session tracked by fairshare; this is what you get at login)"
            ),
            false => writeln!(
                out,
                "  ({0} has no session tracked by fairshare; this is what {0} gets at login)",
                s.user
            ),
        };
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
    let mut header = vec![
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
    // weights, memory guarantees (held now or not), swap: only where the
    // policy or root gives someone such a setting, last, as `status` words it
    let fair = l.users.iter().any(|s| !s.fair.is_empty());
    if fair {
        header.push("FAIR SHARE");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for s in &l.users {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut row = vec![
            s.user.clone(),
            s.uid.to_string(),
            // bursting: what the user may use while the host is idle
            opt(s.allocated_cpu.map(|c| match s.bursting {
                Some(q) => format!("{c} (up to {q})"),
                None => c.to_string(),
            })),
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
        ];
        if fair {
            row.push(match s.fair.is_empty() {
                true => "-".into(),
                false => s.fair.join(", "),
            });
        }
        rows.push(row);
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
    for w in &l.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
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
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        };
        StatusInfo {
            fair: Vec::new(),
            unenforced: Vec::new(),
            bursting: None,
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
            root_setting: None,
            usage: Usage {
                memory_current: Some(5 << 20),
                tasks_current: Some(4),
                cpu_usage_nsec: Some(192_000_000_000),
                ..Usage::default()
            },
            capacity: None,
            warnings: vec![],
            events: vec![],
            terminal_notices: None,
        }
    }

    #[test]
    fn status_and_list_say_when_a_user_bursts() {
        let mut i = info();
        assert!(!status(&i, 1001).contains("bursting"));
        i.bursting = Some(Cpus::whole(8));
        let s = status(&i, 1001);
        assert!(
            s.contains("bursting:   using up to 8 CPUs while the host is idle"),
            "{s}"
        );
        let l = list(&UserList {
            users: vec![i],
            capacity: Capacity {
                cpu_total: Cpus::whole(8),
                mem_total: Bytes(8 << 30),
                cpu_allocated: Cpus::whole(3),
                mem_allocated: Bytes(3 << 30),
                cpu_free: Cpus::whole(5),
                mem_free: Bytes(5 << 30),
            },
            warnings: vec![],
        });
        assert!(l.contains("3 (up to 8)"), "{l}");
    }

    #[test]
    fn status_reads_well() {
        let s = status(&info(), 1001);
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
        let s = status(&i, 1001);
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
        let s = status(&i, 1001);
        assert!(
            s.contains("  policy:     defaults\n              + group students (gives defaults.mem 4G; defaults.cpu 1 lost to group staff, later in the policy)\n              + group staff (gives defaults.cpu 2)\n"),
            "{s}"
        );
    }

    /// Issue 17.6: root reading about alice is told about alice, not "you".
    #[test]
    fn root_reading_another_users_status_reads_their_name() {
        let mut i = info();
        i.active = false;
        i.sessions = 0;
        i.root_setting = Some(fairshare_proto::wire::RootSetting {
            cpu: Some(Cpus::from_millis(500)),
            ..Default::default()
        });
        let s = status(&i, 0);
        assert!(s.contains("(alice's resize)"), "{s}");
        assert!(
            s.contains("root's set: cpu 0.5 CPUs, until root resets it (alice's own resizes"),
            "{s}"
        );
        assert!(
            s.contains(
                "(alice has no session tracked by fairshare; this is what alice gets at login)"
            ),
            "{s}"
        );
        assert!(!s.contains("you"), "{s}");
        let s = status(&i, 1001);
        assert!(
            s.contains("(your resize)") && s.contains("(your own resizes"),
            "{s}"
        );
        assert!(s.contains("you have no session"), "{s}");
    }

    /// Issue 17.6: a user is told to ask their admin, root gets the command.
    #[test]
    fn the_daemon_down_is_explained_to_whoever_reads_it() {
        let e = || ClientError::NotRunning {
            path: "/run/fairshare.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let user = unreachable(&e(), false);
        assert!(user.contains("ask your admin"), "{user}");
        assert!(!user.contains("systemctl"), "{user}");
        let root = unreachable(&e(), true);
        assert!(
            root.contains("systemctl start fairshared") && !root.contains("sudo"),
            "{root}"
        );
        let v: serde_json::Value = serde_json::from_str(&error_json(&user)).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("unreachable"))
        );
        assert_eq!(v["error"].as_str(), Some(user.as_str()));
        assert_eq!(
            root_only("set"),
            "`fairshare-ctl set` is for root only; run it as root (e.g. sudo fairshare-ctl set ...)"
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
            warnings: vec!["the policy at p.yaml has errors".into()],
        };
        let t = list(&l);
        assert!(
            t.ends_with("WARNING: the policy at p.yaml has errors\n"),
            "{t}"
        );
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
        // a fair-share setting anywhere: one more column, last
        let mut bob = l.users[0].clone();
        bob.user = "bob".into();
        bob.fair = vec![
            "weight 200".into(),
            "1G guaranteed while logged in (none now)".into(),
        ];
        l.users.push(bob);
        let t = list(&l);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("CPU NOW     FAIR SHARE"), "{t}");
        assert!(lines[1].ends_with("0.30 (10%)  -"), "{t}");
        assert!(
            lines[2].ends_with("0.30 (10%)  weight 200, 1G guaranteed while logged in (none now)"),
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
