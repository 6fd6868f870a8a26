//! What happened to a user's processes because of their limits: the events
//! fairshared records, shows in `fairshare-ctl status` and `events`, writes
//! to the journal and tells the user about on their terminals.
//!
//! * [`EventKind::OomKill`]: the kernel killed processes because the user's
//!   slice reached its memory limit (`MemoryMax`). Kills caused by a lower
//!   limit the user set inside their slice themselves are not events.
//! * [`EventKind::CpuThrottled`]: the slice was held at its CPU quota for
//!   most of a minute.
//! * [`EventKind::MemoryStall`]: the slice's processes spent a large part of
//!   a minute waiting for memory reclaim above the soft limit (`MemoryHigh`).
//!
//! Process names come from the kernel's report and are chosen by whoever
//! ran the process: they are kept escaped ([`crate::sanitize::escape`]),
//! never raw.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sanitize;
use crate::units::{Bytes, Cpus};

/// The longest process name kept, escaped (the kernel's names are at most
/// 15 bytes; escaped, at most 60 characters).
pub const MAX_NAME: usize = 64;
/// At most this many processes are named in one event (`count` says how
/// many there were).
pub const MAX_PROCESSES: usize = 8;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    OomKill,
    CpuThrottled,
    MemoryStall,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::OomKill,
        EventKind::CpuThrottled,
        EventKind::MemoryStall,
    ];

    /// The name on the wire and in the journal (`FAIRSHARE_EVENT=oom_kill`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OomKill => "oom_kill",
            EventKind::CpuThrottled => "cpu_throttled",
            EventKind::MemoryStall => "memory_stall",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A process named in an event.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The name the kernel reported, escaped: printable ASCII only.
    pub name: String,
}

impl Process {
    /// A process as the kernel reported it; the name is escaped here.
    pub fn from_kernel(pid: u32, raw_name: &[u8]) -> Process {
        Process {
            pid,
            name: sanitize::escape(raw_name, MAX_NAME),
        }
    }
}

impl fmt::Display for Process {
    /// `4242 (make)`, as the kernel writes it; the name is cleaned again in
    /// case it did not come from [`Process::from_kernel`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pid, sanitize::line(&self.name, MAX_NAME))
    }
}

/// The limit an event is about, as it was when it happened.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_high: Option<Bytes>,
}

/// Whether the user was told about an event on their terminals.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Notified {
    /// Written to `terminals` terminals.
    Shown,
    /// Part of a burst the user was already told about, or too soon after
    /// the last notice of its kind.
    Held,
    /// The user turned terminal notices off (`fairshare-ctl notices off`),
    /// or the policy's default is off.
    Off,
    /// No terminal took it: none open, `mesg n`, or a stalled terminal.
    NoTerminal,
    /// Not known (an answer from another version).
    #[default]
    #[serde(other)]
    Unknown,
}

/// One event in a user's history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Event {
    /// When it happened (Unix time, seconds): the first kill of a burst, or
    /// when throttling was found to have lasted most of a minute.
    pub at: u64,
    pub kind: EventKind,
    #[serde(default)]
    pub limit: LimitHit,
    /// OOM kills: how many processes were killed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u32,
    /// OOM kills: the processes, as far as the kernel's report could be read
    /// (at most [`MAX_PROCESSES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    /// Throttling: the share of `window_secs` the slice was throttled or
    /// stalled, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_pct: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u32>,
    #[serde(default)]
    pub notified: Notified,
    /// How many terminals showed the notice.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terminals: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Event {
    /// A new event, not (yet) told to anyone.
    pub fn new(at: u64, kind: EventKind, limit: LimitHit) -> Event {
        Event {
            at,
            kind,
            limit,
            count: 0,
            processes: Vec::new(),
            share_pct: None,
            window_secs: None,
            notified: Notified::Unknown,
            terminals: 0,
        }
    }

    /// What happened, in a few words, without a remedy (for `status`,
    /// `events` and the journal):
    ///
    /// * `process 4242 (make) killed: memory limit 8G reached`
    /// * `3 processes killed (4242 (make), 4250 (cc1plus), ...): memory limit 8G reached`
    /// * `held at the CPU limit of 2 CPUs for 93% of 60 s`
    /// * `stalled 41% of 60 s reclaiming memory above the soft limit of 7.2G`
    pub fn describe(&self) -> String {
        let text = match self.kind {
            EventKind::OomKill => {
                let limit = self.limit.mem.map_or_else(
                    || "memory limit".to_string(),
                    |m| format!("memory limit {m}"),
                );
                let count = (self.count as usize).max(self.processes.len()).max(1);
                let named: Vec<String> = self.processes.iter().map(|p| p.to_string()).collect();
                let what = match (count, named.as_slice()) {
                    (1, [one]) => format!("process {one} killed"),
                    (1, _) => "a process was killed".to_string(),
                    (n, []) => format!("{n} processes killed"),
                    (n, some) => {
                        let more = if n > some.len() { ", ..." } else { "" };
                        format!("{n} processes killed ({}{more})", some.join(", "))
                    }
                };
                format!("{what}: {limit} reached")
            }
            EventKind::CpuThrottled => {
                let limit = self.limit.cpu.map_or_else(
                    || "the CPU limit".to_string(),
                    |c| format!("the CPU limit of {c} {}", cpus_word(c)),
                );
                match self.share() {
                    Some(share) => format!("held at {limit} for {share}"),
                    None => format!("held at {limit}"),
                }
            }
            EventKind::MemoryStall => {
                let limit = self.limit.mem_high.map_or_else(
                    || "the soft memory limit".to_string(),
                    |h| format!("the soft limit of {}", h.human()),
                );
                match self.share() {
                    Some(share) => format!("stalled {share} reclaiming memory above {limit}"),
                    None => format!("stalled reclaiming memory above {limit}"),
                }
            }
        };
        sanitize::line(&text, 400)
    }

    /// `93% of 60 s`, when known.
    fn share(&self) -> Option<String> {
        match (self.share_pct, self.window_secs) {
            (Some(p), Some(w)) => Some(format!("{p}% of {w} s")),
            (Some(p), None) => Some(format!("{p}% of the time")),
            _ => None,
        }
    }
}

/// `CPU` or `CPUs`, as the rest of fairshare writes it.
pub fn cpus_word(c: Cpus) -> &'static str {
    if c.millis() == 1000 { "CPU" } else { "CPUs" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(count: u32, procs: &[(u32, &[u8])]) -> Event {
        let mut e = Event::new(
            1_800_000_000,
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
    fn oom_descriptions() {
        assert_eq!(
            oom(1, &[(4242, b"make")]).describe(),
            "process 4242 (make) killed: memory limit 8G reached"
        );
        assert_eq!(
            oom(1, &[]).describe(),
            "a process was killed: memory limit 8G reached"
        );
        assert_eq!(oom(0, &[]).describe(), oom(1, &[]).describe());
        assert_eq!(
            oom(3, &[(1, b"a"), (2, b"b")]).describe(),
            "3 processes killed (1 (a), 2 (b), ...): memory limit 8G reached"
        );
        assert_eq!(
            oom(2, &[]).describe(),
            "2 processes killed: memory limit 8G reached"
        );
    }

    #[test]
    fn a_hostile_name_is_shown_escaped() {
        let e = oom(1, &[(632, b"e\x1b[31m\nvil\x1b]0;")]);
        let d = e.describe();
        assert_eq!(
            d,
            r"process 632 (e\x1b[31m\nvil\x1b]0;) killed: memory limit 8G reached"
        );
        assert!(sanitize::is_clean(&d));
        // a name that did not come through from_kernel is still cleaned
        let mut raw = e.clone();
        raw.processes[0].name = "x\x1b[2J\ny".into();
        assert!(sanitize::is_clean(&raw.describe()));
        // JSON keeps the escaped form
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains('\u{1b}'));
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn throttling_descriptions() {
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
        assert_eq!(
            e.describe(),
            "held at the CPU limit of 2 CPUs for 93% of 60 s"
        );
        e.limit.cpu = Some(Cpus::whole(1));
        assert_eq!(
            e.describe(),
            "held at the CPU limit of 1 CPU for 93% of 60 s"
        );
        let mut m = Event::new(
            0,
            EventKind::MemoryStall,
            LimitHit {
                mem_high: Some(Bytes(7 << 30)),
                ..LimitHit::default()
            },
        );
        m.share_pct = Some(41);
        m.window_secs = Some(60);
        assert_eq!(
            m.describe(),
            "stalled 41% of 60 s reclaiming memory above the soft limit of 7G"
        );
    }

    #[test]
    fn wire_shape() {
        let e = oom(1, &[(4242, b"make")]);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "oom_kill");
        assert_eq!(v["limit"]["mem"], "8G");
        assert_eq!(v["processes"][0]["pid"], 4242);
        assert_eq!(v["notified"], "unknown");
        assert!(v.get("share_pct").is_none());
        // an answer from a newer daemon with an unknown outcome still reads
        let newer = r#"{"at":1,"kind":"oom_kill","notified":"sent_by_mail","later_field":1}"#;
        let e: Event = serde_json::from_str(newer).unwrap();
        assert_eq!(e.notified, Notified::Unknown);
        for k in EventKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }
}
