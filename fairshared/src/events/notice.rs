//! What the user reads: the notice on their terminal after an event, and
//! the line at login. Every notice names the limit that was reached and the
//! `fairshare-ctl resize` that would lift it, within what the policy allows
//! the user (or says that it is already the most they may have).
//!
//! ```text
//! fairshare: process 4242 (make) was killed: your processes reached their memory limit of 8G.
//!   You may raise it up to 32G: fairshare-ctl resize --mem 16G
//!   (fairshare-ctl events lists what happened; fairshare-ctl notices off stops these messages)
//! ```
//!
//! Everything is printable ASCII ([`sanitize::line`] on every line; process
//! names arrive escaped); [`frame`] adds the only control characters, the
//! line breaks.

use fairshare_proto::events::{Event, EventKind, cpus_word};
use fairshare_proto::sanitize;
use fairshare_proto::units::{Bytes, Cpus};
use fairshare_proto::wire::Limits;

/// The longest line written to a terminal.
pub const MAX_LINE: usize = 240;

/// What the user has, and the most they may have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allowance {
    pub allocation: Limits,
    pub max: Limits,
}

/// What would lift a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// `fairshare-ctl resize --mem 16G`, up to the maximum.
    Resize { command: String, up_to: String },
    /// The user already has the most the policy allows.
    AtMaximum { max: String },
}

/// The resize that would help with `kind`: twice the current value, at most
/// the user's maximum (memory rounded down to whole MiB).
pub fn remedy(kind: EventKind, a: &Allowance) -> Remedy {
    match kind {
        EventKind::OomKill | EventKind::MemoryStall => {
            let (now, max) = (a.allocation.mem, a.max.mem);
            let target = Bytes(now.get().saturating_mul(2).min(max.get())).floor_mib();
            if target.get() <= now.get() {
                Remedy::AtMaximum {
                    max: max.to_string(),
                }
            } else {
                Remedy::Resize {
                    command: format!("fairshare-ctl resize --mem {target}"),
                    up_to: max.to_string(),
                }
            }
        }
        EventKind::CpuThrottled => {
            let (now, max) = (a.allocation.cpu, a.max.cpu);
            let target = Cpus::from_millis(now.millis().saturating_mul(2).min(max.millis()));
            if target.millis() <= now.millis() {
                Remedy::AtMaximum {
                    max: format!("{max} {}", cpus_word(max)),
                }
            } else {
                Remedy::Resize {
                    command: format!("fairshare-ctl resize --cpu {target}"),
                    up_to: format!("{max} {}", cpus_word(max)),
                }
            }
        }
    }
}

/// The lines of a terminal notice for `event`; `held` events of its kind
/// were not told since the last notice. `allowance` is `None` when the
/// user's limits could not be had (the notice then points to `status`).
pub fn notice(event: &Event, allowance: Option<&Allowance>, held: u32) -> Vec<String> {
    let first = match event.kind {
        EventKind::OomKill => {
            let count = (event.count as usize).max(event.processes.len()).max(1);
            let named: Vec<String> = event.processes.iter().map(|p| p.to_string()).collect();
            let what = match (count, named.as_slice()) {
                (1, [one]) => format!("process {one} was killed"),
                (1, _) => "a process was killed".to_string(),
                (n, []) => format!("{n} processes were killed"),
                (n, some) => {
                    let more = if n > some.len() { ", ..." } else { "" };
                    format!("{n} processes were killed ({}{more})", some.join(", "))
                }
            };
            let limit = event.limit.mem.map_or_else(
                || "memory limit".to_string(),
                |m| format!("memory limit of {m}"),
            );
            format!("fairshare: {what}: your processes reached their {limit}.")
        }
        EventKind::CpuThrottled => {
            let limit = event.limit.cpu.map_or_else(
                || "CPU limit".to_string(),
                |c| format!("limit of {c} {}", cpus_word(c)),
            );
            let share = share(event, "most of the last minute");
            format!(
                "fairshare: your processes were held at their {limit} for {share}, and ran slower for it."
            )
        }
        EventKind::MemoryStall => {
            let limit = event.limit.mem_high.map_or_else(
                || "soft memory limit".to_string(),
                |h| format!("soft memory limit of {}", h.human()),
            );
            let share = share(event, "much of the last minute");
            format!(
                "fairshare: your processes spent {share} waiting for memory above their {limit}, and ran slower for it."
            )
        }
    };
    let second = match allowance.map(|a| remedy(event.kind, a)) {
        // the soft limit is not resized by itself: it follows the memory
        Some(Remedy::Resize { command, up_to }) if event.kind == EventKind::MemoryStall => {
            format!("  You may raise your memory up to {up_to}, the soft limit with it: {command}")
        }
        Some(Remedy::Resize { command, up_to }) => {
            format!("  You may raise it up to {up_to}: {command}")
        }
        Some(Remedy::AtMaximum { max }) => {
            format!(
                "  {max} is the most you may have on this host; ask its administrators for more."
            )
        }
        None => "  fairshare-ctl status shows your limits and how far you may raise them.".into(),
    };
    let held = match held {
        0 => String::new(),
        1 => "1 earlier event not shown on a terminal; ".into(),
        n => format!("{n} earlier events not shown on a terminal; "),
    };
    let third = format!(
        "  ({held}fairshare-ctl events lists what happened; fairshare-ctl notices off stops these messages)"
    );
    [first, second, third]
        .iter()
        .map(|l| sanitize::line(l, MAX_LINE))
        .collect()
}

fn share(event: &Event, otherwise: &str) -> String {
    match (event.share_pct, event.window_secs) {
        (Some(p), Some(60)) => format!("{p}% of the last minute"),
        (Some(p), Some(w)) => format!("{p}% of the last {w} s"),
        _ => otherwise.to_string(),
    }
}

/// The bytes written to a terminal: each line on a line of its own, with a
/// carriage return too (a terminal in raw mode, an editor, does not add it),
/// starting on a fresh line (the cursor may be in the middle of a prompt).
pub fn frame(lines: &[String]) -> Vec<u8> {
    let mut out = b"\r\n".to_vec();
    for l in lines {
        out.extend_from_slice(sanitize::line(l, MAX_LINE).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The line shown at an interactive login (in the answer to
/// `session_open`; the PAM module passes it to the login program):
///
/// `fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)`
///
/// `resized_left`: the allocation is a resize that ends in this long
/// (`"3h12m"`), or `None`.
pub fn login_line(a: &Allowance, resized_left: Option<&str>) -> String {
    let now = &a.allocation;
    let mut line = format!(
        "fairshare: {} {}, {} memory, {} tasks on this host",
        now.cpu,
        cpus_word(now.cpu),
        now.mem,
        now.tasks
    );
    if let Some(left) = resized_left {
        line.push_str(&format!(" (resized, {left} left)"));
    }
    let mut more = Vec::new();
    if a.max.cpu.millis() > now.cpu.millis() {
        more.push(format!("{} {}", a.max.cpu, cpus_word(a.max.cpu)));
    }
    if a.max.mem.get() > now.mem.get() {
        more.push(a.max.mem.to_string());
    }
    if a.max.tasks.get() > now.tasks.get() {
        more.push(format!("{} tasks", a.max.tasks));
    }
    if more.is_empty() {
        line.push_str(" (the most you may have here)");
    } else {
        line.push_str(&format!(
            " (you may resize up to {}: fairshare-ctl resize)",
            more.join(", ")
        ));
    }
    sanitize::line(&line, MAX_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::events::{LimitHit, Process};
    use fairshare_proto::units::Tasks;

    fn limits(cpu: u64, mem_g: u64, tasks: u64) -> Limits {
        Limits {
            cpu: Cpus::whole(cpu),
            mem: Bytes(mem_g << 30),
            mem_high: None,
            tasks: Tasks(tasks),
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        }
    }

    fn allowance() -> Allowance {
        Allowance {
            allocation: limits(2, 8, 4096),
            max: limits(8, 32, 4096),
        }
    }

    fn oom(procs: &[(u32, &[u8])], count: u32) -> Event {
        let mut e = Event::new(
            0,
            EventKind::OomKill,
            LimitHit {
                mem: Some(Bytes(8 << 30)),
                ..LimitHit::default()
            },
        );
        e.count = count;
        e.processes = procs
            .iter()
            .map(|(p, n)| Process::from_kernel(*p, n))
            .collect();
        e
    }

    #[test]
    fn an_oom_notice_names_the_process_the_limit_and_the_resize() {
        let lines = notice(&oom(&[(4242, b"make")], 1), Some(&allowance()), 0);
        assert_eq!(
            lines,
            vec![
                "fairshare: process 4242 (make) was killed: your processes reached their memory limit of 8G.",
                "  You may raise it up to 32G: fairshare-ctl resize --mem 16G",
                "  (fairshare-ctl events lists what happened; fairshare-ctl notices off stops these messages)",
            ]
        );
    }

    #[test]
    fn unknown_victims_several_victims_and_held_events() {
        let l = notice(&oom(&[], 1), Some(&allowance()), 0);
        assert!(
            l[0].starts_with("fairshare: a process was killed:"),
            "{}",
            l[0]
        );
        let l = notice(&oom(&[(1, b"cc1plus"), (2, b"ld")], 5), None, 3);
        assert!(
            l[0].starts_with("fairshare: 5 processes were killed (1 (cc1plus), 2 (ld), ...):"),
            "{}",
            l[0]
        );
        assert_eq!(
            l[1],
            "  fairshare-ctl status shows your limits and how far you may raise them."
        );
        assert!(
            l[2].starts_with("  (3 earlier events not shown on a terminal; "),
            "{}",
            l[2]
        );
        let l = notice(&oom(&[], 1), None, 1);
        assert!(
            l[2].starts_with("  (1 earlier event not shown on a terminal; "),
            "{}",
            l[2]
        );
    }

    #[test]
    fn a_hostile_process_name_is_harmless() {
        let e = oom(&[(632, b"e\x1b[31m\nvil\x1b]0;x\x07")], 1);
        let lines = notice(&e, Some(&allowance()), 0);
        assert_eq!(
            lines[0],
            r"fairshare: process 632 (e\x1b[31m\nvil\x1b]0;x\x07) was killed: your processes reached their memory limit of 8G."
        );
        let bytes = frame(&lines);
        // the only control bytes are the line breaks fairshare adds
        let controls: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !(0x20..=0x7e).contains(b))
            .collect();
        assert!(controls.iter().all(|b| *b == b'\r' || *b == b'\n'));
        assert_eq!(controls.len(), 2 * (lines.len() + 1));
        assert!(bytes.starts_with(b"\r\nfairshare: "));
        assert!(bytes.ends_with(b"messages)\r\n"));
        // a line that somehow holds a newline cannot break out either
        assert!(
            !frame(&["a\nb\x1b".to_string()])
                .windows(2)
                .any(|w| w == b"a\n")
        );
    }

    #[test]
    fn remedies_stay_within_the_maximum() {
        let a = allowance();
        assert_eq!(
            remedy(EventKind::OomKill, &a),
            Remedy::Resize {
                command: "fairshare-ctl resize --mem 16G".into(),
                up_to: "32G".into()
            }
        );
        assert_eq!(
            remedy(EventKind::CpuThrottled, &a),
            Remedy::Resize {
                command: "fairshare-ctl resize --cpu 4".into(),
                up_to: "8 CPUs".into()
            }
        );
        // close to the maximum: the maximum
        let near = Allowance {
            allocation: limits(6, 24, 4096),
            max: a.max,
        };
        assert_eq!(
            remedy(EventKind::OomKill, &near),
            Remedy::Resize {
                command: "fairshare-ctl resize --mem 32G".into(),
                up_to: "32G".into()
            }
        );
        assert_eq!(
            remedy(EventKind::CpuThrottled, &near),
            Remedy::Resize {
                command: "fairshare-ctl resize --cpu 8".into(),
                up_to: "8 CPUs".into()
            }
        );
        // at the maximum (or above it: root set it): nothing to resize
        let top = Allowance {
            allocation: limits(16, 64, 4096),
            max: a.max,
        };
        assert_eq!(
            remedy(EventKind::MemoryStall, &top),
            Remedy::AtMaximum { max: "32G".into() }
        );
        let l = notice(&oom(&[], 1), Some(&top), 0);
        assert_eq!(
            l[1],
            "  32G is the most you may have on this host; ask its administrators for more."
        );
        // fractions
        let small = Allowance {
            allocation: Limits {
                cpu: Cpus::from_millis(500),
                mem: Bytes(384 << 20),
                mem_high: None,
                tasks: Tasks(100),
                weight: None,
                io_weight: None,
                mem_low: None,
                swap: None,
            },
            max: Limits {
                cpu: Cpus::from_millis(1500),
                mem: Bytes(1 << 30),
                mem_high: None,
                tasks: Tasks(100),
                weight: None,
                io_weight: None,
                mem_low: None,
                swap: None,
            },
        };
        assert_eq!(
            remedy(EventKind::CpuThrottled, &small),
            Remedy::Resize {
                command: "fairshare-ctl resize --cpu 1".into(),
                up_to: "1.5 CPUs".into()
            }
        );
        assert_eq!(
            remedy(EventKind::OomKill, &small),
            Remedy::Resize {
                command: "fairshare-ctl resize --mem 768M".into(),
                up_to: "1G".into()
            }
        );
    }

    #[test]
    fn throttling_notices() {
        let mut e = Event::new(
            0,
            EventKind::CpuThrottled,
            LimitHit {
                cpu: Some(Cpus::whole(2)),
                ..LimitHit::default()
            },
        );
        e.share_pct = Some(93);
        e.window_secs = Some(60);
        let l = notice(&e, Some(&allowance()), 0);
        assert_eq!(
            l[0],
            "fairshare: your processes were held at their limit of 2 CPUs for 93% of the last minute, and ran slower for it."
        );
        assert_eq!(
            l[1],
            "  You may raise it up to 8 CPUs: fairshare-ctl resize --cpu 4"
        );
        let mut m = Event::new(
            0,
            EventKind::MemoryStall,
            LimitHit {
                mem_high: Some(Bytes(7373 << 20)),
                ..LimitHit::default()
            },
        );
        m.share_pct = Some(41);
        m.window_secs = Some(60);
        let l = notice(&m, Some(&allowance()), 0);
        assert_eq!(
            l[0],
            "fairshare: your processes spent 41% of the last minute waiting for memory above their soft memory limit of 7.2G, and ran slower for it."
        );
        assert_eq!(
            l[1],
            "  You may raise your memory up to 32G, the soft limit with it: fairshare-ctl resize --mem 16G"
        );
        for line in l {
            assert!(line.len() <= MAX_LINE);
        }
    }

    #[test]
    fn login_lines() {
        let a = allowance();
        assert_eq!(
            login_line(&a, None),
            "fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)"
        );
        let resized = Allowance {
            allocation: limits(4, 16, 4096),
            max: limits(8, 32, 8192),
        };
        assert_eq!(
            login_line(&resized, Some("3h12m")),
            "fairshare: 4 CPUs, 16G memory, 4096 tasks on this host (resized, 3h12m left) (you may resize up to 8 CPUs, 32G, 8192 tasks: fairshare-ctl resize)"
        );
        let top = Allowance {
            allocation: limits(1, 4, 512),
            max: limits(1, 4, 512),
        };
        assert_eq!(
            login_line(&top, None),
            "fairshare: 1 CPU, 4G memory, 512 tasks on this host (the most you may have here)"
        );
    }
}
