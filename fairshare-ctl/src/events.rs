//! `events` and the events in `status`, as text for people.
//!
//! Every line goes through [`sanitize::line`]: events name processes, whose
//! names their owners chose (root's `events --user` puts other users'
//! process names on root's terminal). The daemon sends them escaped already;
//! this is the second guard.

use std::fmt::Write as _;

use fairshare_proto::events::{Event, Notified};
use fairshare_proto::sanitize;
use fairshare_proto::wire::{EventLine, EventList, StatusInfo};

/// Longest line printed.
const MAX_LINE: usize = 400;

/// Unix time now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2025-11-28 20:57:46 UTC` from Unix time (days to a civil date: Howard
/// Hinnant's algorithm).
pub fn utc(at: u64) -> String {
    let days = (at / 86_400) as i64;
    let secs = at % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// `3m ago`, `2h ago`, `4d ago`.
pub fn ago(at: u64, now: u64) -> String {
    let s = now.saturating_sub(at);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// What became of the notice, in a few words (`own`: the reader's own
/// events; root reading a user's says "their").
fn told(e: &Event, own: bool) -> &'static str {
    match e.notified {
        Notified::Shown if own => "told on your terminal",
        Notified::Shown => "told on their terminal",
        Notified::Held => "not told (a burst already told)",
        Notified::Off => "not told (notices off)",
        Notified::NoTerminal => "not told (no terminal took it)",
        Notified::Unknown => "",
    }
}

/// One event on one line: when, what, whether it was told.
pub fn event_line(e: &Event, now: u64, own: bool) -> String {
    let told = told(e, own);
    let told = if told.is_empty() {
        String::new()
    } else {
        format!("; {told}")
    };
    sanitize::line(
        &format!(
            "{} ({})  {}: {}{told}",
            utc(e.at),
            ago(e.at, now),
            e.kind,
            e.describe()
        ),
        MAX_LINE,
    )
}

/// `events`: the history, and what to do about it, for the user `reader`.
pub fn list(l: &EventList, reader: u32) -> String {
    let now = now();
    let own = reader == l.uid;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        sanitize::line(&format!("{} (uid {}): events", l.user, l.uid), MAX_LINE)
    );
    if l.events.is_empty() {
        let _ = match own {
            true => writeln!(
                out,
                "  none kept (fairshare records processes killed at your memory limit and times your CPU limit held you back)"
            ),
            false => writeln!(
                out,
                "  none kept (fairshare records processes killed at their memory limit and times their CPU limit held them back)"
            ),
        };
    }
    for e in &l.events {
        let _ = writeln!(out, "  {}", event_line(e, now, own));
    }
    let _ = writeln!(out, "terminal notices: {}", l.terminal_notices);
    out
}

/// `events --follow`: one new event, for the user `reader`.
pub fn followed(l: &EventLine, reader: u32) -> String {
    sanitize::line(
        &format!(
            "{}: {}",
            l.user,
            event_line(&l.event, now(), reader == l.uid)
        ),
        MAX_LINE,
    )
}

/// The events part of `status`, for the user `reader`.
pub fn status_lines(s: &StatusInfo, reader: u32) -> String {
    let now = now();
    let own = reader == s.uid;
    let mut out = String::new();
    if let Some(t) = &s.terminal_notices {
        let _ = writeln!(out, "  notices:    {t}");
    }
    for (i, e) in s.events.iter().enumerate() {
        let head = if i == 0 {
            "  events:     "
        } else {
            "              "
        };
        let _ = writeln!(out, "{head}{}", event_line(e, now, own));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::events::{EventKind, LimitHit, Process};
    use fairshare_proto::units::Bytes;
    use fairshare_proto::wire::{NoticesSetting, NoticesSource};

    fn kill(at: u64, name: &[u8]) -> Event {
        let mut e = Event::new(
            at,
            EventKind::OomKill,
            LimitHit {
                mem: Some(Bytes(256 << 20)),
                ..LimitHit::default()
            },
        );
        e.count = 1;
        e.processes = vec![Process::from_kernel(632, name)];
        e.notified = Notified::Off;
        e
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_363_466), "2025-11-28 20:57:46 UTC");
        assert_eq!(ago(100, 100), "0s ago");
        assert_eq!(ago(0, 3 * 3600 + 5), "3h ago");
        assert_eq!(ago(0, 2 * 86_400), "2d ago");
    }

    #[test]
    fn a_hostile_name_prints_harmlessly() {
        let l = EventList {
            uid: 1001,
            user: "alice".into(),
            events: vec![kill(1_764_363_466, b"e\x1b[31m\nvil\x1b]0;x\x07")],
            terminal_notices: NoticesSetting {
                enabled: false,
                source: NoticesSource::User,
            },
        };
        let t = list(&l, 1001);
        assert!(
            t.contains(r"oom_kill: process 632 (e\x1b[31m\nvil\x1b]0;x\x07) killed: memory limit 256M reached; not told (notices off)"),
            "{t}"
        );
        assert!(
            t.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)),
            "{t:?}"
        );
        assert!(t.contains("terminal notices: off (set with fairshare-ctl notices)"));
        // a name that did not come escaped from the daemon is cleaned here
        // root reading alice's events: "their", not "your"
        let mut shown = l.clone();
        shown.events[0].notified = Notified::Shown;
        let t = list(&shown, 0);
        assert!(t.contains("told on their terminal"), "{t}");
        shown.events.clear();
        let t = list(&shown, 0);
        assert!(
            t.contains("at their memory limit") && !t.contains("your"),
            "{t}"
        );
        assert!(list(&shown, 1001).contains("at your memory limit"));
        let mut raw = kill(5, b"x");
        raw.processes[0].name = "a\x1b[2Jb\nc".into();
        let line = event_line(&raw, 10, true);
        assert!(sanitize::is_clean(&line), "{line:?}");
    }
}
