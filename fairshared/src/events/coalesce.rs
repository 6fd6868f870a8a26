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
    last_notice: Instant,
    held: u32,
}

/// The state of every user's bursts.
#[derive(Debug, Default)]
pub struct Coalescer {
    slots: HashMap<(u32, EventKind), Slot>,
}

impl Coalescer {
    /// An event of `kind` for `uid` at `now`: tell it, or not.
    pub fn event(&mut self, uid: u32, kind: EventKind, now: Instant) -> Verdict {
        let cfg = config(kind);
        let Some(slot) = self.slots.get_mut(&(uid, kind)) else {
            self.slots.insert(
                (uid, kind),
                Slot {
                    last_event: now,
                    last_notice: now,
                    held: 0,
                },
            );
            return Verdict::Notify { held: 0 };
        };
        let in_burst = now.saturating_duration_since(slot.last_event) < cfg.gap;
        let since_notice = now.saturating_duration_since(slot.last_notice);
        slot.last_event = now;
        let due = !in_burst || since_notice >= cfg.remind_after;
        if due && since_notice >= cfg.min_interval {
            let held = slot.held;
            slot.held = 0;
            slot.last_notice = now;
            Verdict::Notify { held }
        } else {
            slot.held = slot.held.saturating_add(1);
            Verdict::Hold
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

    #[test]
    fn one_notice_per_burst_then_the_count() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.event(1, OOM, t), Verdict::Notify { held: 0 });
        // twenty kills, 10 s apart: one burst
        for i in 1..=20 {
            assert_eq!(c.event(1, OOM, t + secs(10 * i)), Verdict::Hold, "{i}");
        }
        // quiet for ten minutes, then a new kill: told, with the 20 held
        assert_eq!(
            c.event(1, OOM, t + secs(200 + 600)),
            Verdict::Notify { held: 20 }
        );
    }

    #[test]
    fn users_and_kinds_are_apart() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.event(1, OOM, t), Verdict::Notify { held: 0 });
        assert_eq!(c.event(2, OOM, t), Verdict::Notify { held: 0 });
        assert_eq!(c.event(1, CPU, t), Verdict::Notify { held: 0 });
        assert_eq!(c.event(1, OOM, t + secs(1)), Verdict::Hold);
    }

    #[test]
    fn separate_bursts_still_wait_for_the_minimum_interval() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        assert!(matches!(c.event(1, OOM, t), Verdict::Notify { .. }));
        // a kill every two minutes: each its own burst (gap 60 s), but at
        // most one notice per five minutes
        let mut told = 1;
        for i in 1..=30 {
            if let Verdict::Notify { .. } = c.event(1, OOM, t + secs(120 * i)) {
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
            if let Verdict::Notify { held } = c.event(1, OOM, t + secs(10 * i)) {
                told.push((i * 10, held));
            }
        }
        assert_eq!(told, vec![(0, 0), (900, 89), (1800, 89)]);
    }

    #[test]
    fn idle_users_are_forgotten() {
        let t = Instant::now();
        let mut c = Coalescer::default();
        c.event(1, OOM, t);
        c.event(2, CPU, t);
        c.forget_idle(t + secs(301));
        assert_eq!(c.len(), 1, "CPU keeps its slot for its 15-minute interval");
        c.forget_idle(t + secs(901));
        assert!(c.is_empty());
        // forgotten means a fresh start
        assert_eq!(c.event(1, OOM, t + secs(902)), Verdict::Notify { held: 0 });
        // a held count waits for the next notice, for a day at most
        assert_eq!(c.event(1, OOM, t + secs(903)), Verdict::Hold);
        c.forget_idle(t + secs(903 + 3600));
        assert_eq!(c.len(), 1);
        c.forget_idle(t + secs(903 + 24 * 3600));
        assert!(c.is_empty());
    }
}
