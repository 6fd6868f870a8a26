//! One notice per burst: deciding which events reach the user's terminals.
//!
//! Every event is recorded (history, journal, metrics); only some are told
//! on the terminal. Per user and kind of event:
//!
//! * The first event after a quiet spell is told (`Notify`).
//! * Events that follow within [`Config::gap`] of the one before belong to
//!   the same burst and are held back (`Hold`): a `make -j` whose compilers
//!   are killed one after another gets one notice, not twenty.
//! * A burst that goes on is told again every [`Config::remind_after`].
//! * Never two notices of one kind within [`Config::min_interval`], bursts
//!   or not: a job killed every two minutes for an hour does not write to
//!   the terminal thirty times.
//!
//! A notice says how many events were held back since the one before, so
//! nothing is hidden: `fairshare-ctl events` lists them all. The watcher
//! gathers kills that arrive together (one OOM often kills several
//! processes within a second) into one event before asking. Throttling
//! findings are already one per burst ([`super::throttle`]); here they only
//! get the minimum interval. Pure: time comes in as a parameter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fairshare_proto::events::EventKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A burst ends after this long without an event.
    pub gap: Duration,
    /// A burst that lasts is told again after this long.
    pub remind_after: Duration,
    /// The shortest time between two notices of one kind.
    pub min_interval: Duration,
}

/// The rules for each kind of event.
pub fn config(kind: EventKind) -> Config {
    match kind {
        EventKind::OomKill => Config {
            gap: Duration::from_secs(60),
            remind_after: Duration::from_secs(15 * 60),
            min_interval: Duration::from_secs(5 * 60),
        },
        EventKind::CpuThrottled | EventKind::MemoryStall => Config {
            gap: Duration::from_secs(5 * 60),
            remind_after: Duration::from_secs(60 * 60),
            min_interval: Duration::from_secs(15 * 60),
        },
    }
}

/// How long a count of held events is kept for the next notice.
const HELD_KEPT: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tell the user; `held` events of this kind were held back since the
    /// last notice.
    Notify { held: u32 },
    /// Part of a burst already told, or too soon: record it only.
    Hold,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    last_event: Instant,
    /// When a notice of this kind last reached a terminal.
    last_notice: Option<Instant>,
    /// Whether the burst going on was told (a notice reached a terminal).
    burst_told: bool,
    held: u32,
}

/// The state of every user's bursts.
#[derive(Debug, Default)]
pub struct Coalescer {
    slots: HashMap<(u32, EventKind), Slot>,
}

impl Coalescer {
    /// An event of `kind` for `uid` at `now`: tell it, or not. A `Notify`
    /// is settled by [`Coalescer::told`] or [`Coalescer::not_told`]: only a
    /// notice that reached a terminal holds back the rest of its burst.
    pub fn event(&mut self, uid: u32, kind: EventKind, now: Instant) -> Verdict {
        let cfg = config(kind);
        let slot = self.slots.entry((uid, kind)).or_insert(Slot {
            last_event: now,
            last_notice: None,
            burst_told: false,
            held: 0,
        });
        if now.saturating_duration_since(slot.last_event) >= cfg.gap {
            slot.burst_told = false;
        }
        slot.last_event = now;
        let due = match slot.last_notice.map(|t| now.saturating_duration_since(t)) {
            None => true,
            Some(since) => {
                (!slot.burst_told || since >= cfg.remind_after) && since >= cfg.min_interval
            }
        };
        if due {
            Verdict::Notify { held: slot.held }
        } else {
            slot.held = slot.held.saturating_add(1);
            Verdict::Hold
        }
    }

    /// The notice [`Coalescer::event`] asked for reached a terminal at `now`:
    /// the rest of the burst is held back.
    pub fn told(&mut self, uid: u32, kind: EventKind, now: Instant) {
        if let Some(s) = self.slots.get_mut(&(uid, kind)) {
            s.last_notice = Some(now);
            s.burst_told = true;
            s.held = 0;
        }
    }

    /// The notice [`Coalescer::event`] asked for reached no terminal (none
    /// open, or all refuse messages): nothing of the burst was told, so the
    /// next event may be; this one counts as held for the next notice.
    pub fn not_told(&mut self, uid: u32, kind: EventKind) {
        if let Some(s) = self.slots.get_mut(&(uid, kind)) {
            s.held = s.held.saturating_add(1);
        }
    }

    /// Forgets users whose bursts are long over (called now and then, so
    /// the table only holds users with recent events). A count of held
    /// events waits for the next notice for a day at most.
    pub fn forget_idle(&mut self, now: Instant) {
        self.slots.retain(|(_, kind), s| {
            let cfg = config(*kind);
            let quiet = now.saturating_duration_since(s.last_event);
            quiet < cfg.gap.max(cfg.min_interval) || (s.held > 0 && quiet < HELD_KEPT)
        });
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OOM: EventKind = EventKind::OomKill;
    const CPU: EventKind = EventKind::CpuThrottled;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// An event whose notice, when asked for, reaches a terminal.
    fn shown(c: &mut Coalescer, uid: u32, kind: EventKind, now: Instant) -> Verdict {
        let v = c.event(uid, kind, now);
        if let Verdict::Notify { .. } = v {
            c.told(uid, kind, now);
        }
        v
    }

    #[test]
    fn one_notice_per_burst_then_the_count() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(shown(&mut c, 1, OOM, t), Verdict::Notify { held: 0 });
        // twenty kills, 10 s apart: one burst
        for i in 1..=20 {
            assert_eq!(
                shown(&mut c, 1, OOM, t + secs(10 * i)),
                Verdict::Hold,
                "{i}"
            );
        }
        // quiet for ten minutes, then a new kill: told, with the 20 held
        assert_eq!(
            shown(&mut c, 1, OOM, t + secs(200 + 600)),
            Verdict::Notify { held: 20 }
        );
    }

    #[test]
    fn users_and_kinds_are_apart() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(shown(&mut c, 1, OOM, t), Verdict::Notify { held: 0 });
        assert_eq!(shown(&mut c, 2, OOM, t), Verdict::Notify { held: 0 });
        assert_eq!(shown(&mut c, 1, CPU, t), Verdict::Notify { held: 0 });
        assert_eq!(shown(&mut c, 1, OOM, t + secs(1)), Verdict::Hold);
    }

    #[test]
    fn separate_bursts_still_wait_for_the_minimum_interval() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert!(matches!(shown(&mut c, 1, OOM, t), Verdict::Notify { .. }));
        // a kill every two minutes: each its own burst (gap 60 s), but at
        // most one notice per five minutes
        let mut told = 1;
        for i in 1..=30 {
            if let Verdict::Notify { .. } = shown(&mut c, 1, OOM, t + secs(120 * i)) {
                told += 1;
            }
        }
        // an hour: about one notice per 6 minutes (every third kill)
        assert_eq!(told, 11);
    }

    #[test]
    fn a_long_burst_is_told_again_now_and_then() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        let mut told = vec![];
        for i in 0..=180u64 {
            // a kill every 10 s for half an hour
            if let Verdict::Notify { held } = shown(&mut c, 1, OOM, t + secs(10 * i)) {
                told.push((i * 10, held));
            }
        }
        assert_eq!(told, vec![(0, 0), (900, 89), (1800, 89)]);
    }

    #[test]
    fn idle_users_are_forgotten() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        shown(&mut c, 1, OOM, t);
        shown(&mut c, 2, CPU, t);
        c.forget_idle(t + secs(301));
        assert_eq!(c.len(), 1, "CPU keeps its slot for its 15-minute interval");
        c.forget_idle(t + secs(901));
        assert!(c.is_empty());
        // forgotten means a fresh start
        assert_eq!(
            shown(&mut c, 1, OOM, t + secs(902)),
            Verdict::Notify { held: 0 }
        );
        // a held count waits for the next notice, for a day at most
        assert_eq!(shown(&mut c, 1, OOM, t + secs(903)), Verdict::Hold);
        c.forget_idle(t + secs(903 + 3600));
        assert_eq!(c.len(), 1);
        c.forget_idle(t + secs(903 + 24 * 3600));
        assert!(c.is_empty());
    }

    #[test]
    fn a_notice_that_reached_no_terminal_holds_nothing_back() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        // the first kill: no terminal took the notice (none open, or mesg n)
        assert_eq!(c.event(1, OOM, t), Verdict::Notify { held: 0 });
        c.not_told(1, OOM);
        // the next kill of the same burst is told, with the one not told
        assert_eq!(
            shown(&mut c, 1, OOM, t + secs(10)),
            Verdict::Notify { held: 1 }
        );
        // and now the burst is held back
        assert_eq!(shown(&mut c, 1, OOM, t + secs(20)), Verdict::Hold);
    }

    #[test]
    fn a_burst_held_for_the_minimum_interval_is_told_once_it_has_passed() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(shown(&mut c, 1, OOM, t), Verdict::Notify { held: 0 });
        // a new burst two minutes later: too soon after the last notice
        assert_eq!(shown(&mut c, 1, OOM, t + secs(120)), Verdict::Hold);
        // it goes on; once five minutes have passed it is told
        assert_eq!(shown(&mut c, 1, OOM, t + secs(170)), Verdict::Hold);
        assert_eq!(shown(&mut c, 1, OOM, t + secs(220)), Verdict::Hold);
        assert_eq!(shown(&mut c, 1, OOM, t + secs(270)), Verdict::Hold);
        assert_eq!(
            shown(&mut c, 1, OOM, t + secs(310)),
            Verdict::Notify { held: 4 }
        );
    }
}
