//! Which OOM kills the user's fairshare memory limit caused.
//!
//! A process in `user-UID.slice` can be killed for several reasons: the
//! slice reached its own `MemoryMax` (fairshare's limit: an event), a lower
//! limit the user set on a unit of their own inside the slice (not fairshare's
//! doing: no event), or the whole host ran out of memory (not an event
//! either). What the kernel tells, measured in the test host and the v2
//! guest (see docs/design/notices.md):
//!
//! * cgroup v2: `memory.events.local` of the slice counts `oom` only when
//!   the slice's own limit was reached; `memory.events` of the slice counts
//!   `oom_kill` for every kill below it, whatever the reason, about 0.2 s
//!   after the `oom` (the victim is chosen and killed after the OOM is
//!   counted). [`SliceOoms`] pairs each OOM at the slice with the kill that
//!   follows it; kills without such an OOM belong to lower limits.
//! * cgroup v1: an eventfd registered on the slice's `memory.oom_control`
//!   fires for OOMs of the slice and of its ancestors (never for a child's
//!   own limit), and once more when the cgroup is removed; the slice's
//!   `memory.failcnt` moves only when its own limit was reached. The per-
//!   cgroup `oom_kill` counts are useless: v1 counts a kill in the victim's
//!   own cgroup (a session scope, gone a few milliseconds later with an
//!   `ssh host cmd` session). [`V1SliceOoms`] decides from the eventfd count
//!   and `failcnt`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::counters::MemoryEvents;

/// How long an OOM at the slice waits for its kill to be counted. The kill
/// followed within 0.25 s in the experiments (under software emulation); a
/// slice OOM that ends without a kill (the kernel found a task already
/// exiting) is forgotten after this.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// At most this many slice OOMs wait for their kill.
const MAX_PENDING: usize = 256;

/// Kills caused by the slice's own limit, from the v2 counters.
#[derive(Clone, Debug)]
pub struct SliceOoms {
    local_oom: u64,
    oom_kill: u64,
    /// Slice OOMs not yet matched with a kill, by when they were seen.
    pending: VecDeque<Instant>,
}

impl SliceOoms {
    /// Starts from the counters as they are: what happened before the
    /// watcher started is not news.
    pub fn new(subtree: MemoryEvents, local: MemoryEvents) -> SliceOoms {
        SliceOoms {
            local_oom: local.oom,
            oom_kill: subtree.oom_kill,
            pending: VecDeque::new(),
        }
    }

    /// Takes new readings of `memory.events` (`subtree`) and
    /// `memory.events.local` (`local`); returns how many kills the slice's
    /// limit caused since the last reading.
    pub fn update(&mut self, subtree: MemoryEvents, local: MemoryEvents, now: Instant) -> u64 {
        if local.oom < self.local_oom || subtree.oom_kill < self.oom_kill {
            // The counters went back: the slice was removed and made again
            // (a logout and a login). Start over from these.
            *self = SliceOoms::new(subtree, local);
            return 0;
        }
        let new_ooms = local.oom - self.local_oom;
        let new_kills = subtree.oom_kill - self.oom_kill;
        self.local_oom = local.oom;
        self.oom_kill = subtree.oom_kill;
        while self
            .pending
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > KILL_WAIT)
        {
            self.pending.pop_front();
        }
        for _ in 0..new_ooms.min(MAX_PENDING as u64) {
            if self.pending.len() == MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(now);
        }
        // One kill per OOM at the slice (a group kill, memory.oom.group,
        // kills more; those are counted as one). Kills beyond the waiting
        // OOMs were caused by lower limits inside the slice.
        let matched = new_kills.min(self.pending.len() as u64);
        for _ in 0..matched {
            self.pending.pop_front();
        }
        matched
    }

    /// Whether an OOM at the slice is still waiting for its kill (the
    /// watcher then reads again soon, instead of waiting for the next event).
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Kills caused by the slice's own limit, on cgroup v1.
#[derive(Clone, Debug, Default)]
pub struct V1SliceOoms {
    failcnt: Option<u64>,
    /// The kernel's count of kills in the slice and in each cgroup below it
    /// (by inode) at the last reading (`oom_kill` of `memory.oom_control`,
    /// kernel 4.13 and later).
    kills: Option<Counts>,
}

/// Kills per cgroup (by inode), as `cgroup::counts_below` reads them.
pub type Counts = std::collections::BTreeMap<u64, u64>;

/// What one firing of the v1 eventfd meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V1Firing {
    /// `n` OOMs at the slice's own limit (one kill each).
    Kills(u64),
    /// An OOM of an ancestor (`user.slice` has a limit of its own): not
    /// fairshare's limit.
    Ancestor,
    /// The cgroup was removed (the eventfd fires once then): stop watching.
    Removed,
}

impl V1SliceOoms {
    pub fn new(failcnt: Option<u64>) -> V1SliceOoms {
        V1SliceOoms {
            failcnt,
            kills: None,
        }
    }

    /// The kills of a burst whose firings at the slice's own limit came to
    /// `fired`: the eventfd fires once per OOM, and the kernel retries an
    /// OOM while its victim exits (hundreds of firings for one kill), so
    /// the kernel's own counts (`counts`: the slice's and each cgroup's
    /// below it, where v1 counts a kill in the victim's own cgroup; `None`
    /// where the kernel keeps none) say how many, when one moved (a cgroup
    /// not seen before counts from zero; one that went away takes nothing
    /// away). When none moved: one (a victim's scope may be gone before
    /// the count is read, and a burst at the limit killed something; the
    /// retries of the last OOM while its victim exits look the same on a
    /// very busy host, but a kill is not to be lost).
    ///
    /// `counts` is `(peak, now)`: each cgroup's highest count read during
    /// the burst (a scope gone before the end keeps what it showed), and
    /// the counts at the end (kept for the next burst).
    pub fn burst_kills(&mut self, fired: u64, counts: Option<(Counts, Counts)>) -> u64 {
        if fired == 0 {
            return 0;
        }
        let new = match (&self.kills, &counts) {
            (Some(b), Some((peak, _))) => Some(
                peak.iter()
                    .map(|(ino, c)| c.saturating_sub(b.get(ino).copied().unwrap_or(0)))
                    .fold(0u64, u64::saturating_add),
            ),
            _ => None,
        };
        self.kills = counts.map(|(_, now)| now);
        match new {
            Some(k) if k > 0 => k.min(fired),
            _ => 1,
        }
    }

    /// Takes the kernel's count as it is now (at the watcher's start: what
    /// happened before is not news).
    pub fn counted(&mut self, counts: Option<Counts>) {
        self.kills = counts;
    }

    /// The eventfd gave `count`; `failcnt` is the slice's `memory.failcnt`
    /// read right after (`None`: the cgroup is gone).
    pub fn fired(&mut self, count: u64, failcnt: Option<u64>) -> V1Firing {
        let Some(now) = failcnt else {
            return V1Firing::Removed;
        };
        let before = self.failcnt.replace(now);
        match before {
            // failcnt moves only when the slice's own limit refused a charge
            Some(b) if now <= b => V1Firing::Ancestor,
            _ => V1Firing::Kills(count.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(oom: u64, oom_kill: u64) -> MemoryEvents {
        MemoryEvents {
            oom,
            oom_kill,
            ..MemoryEvents::default()
        }
    }

    #[test]
    fn a_kill_at_the_slice_limit_as_measured() {
        // v2 guest: first notification has oom 1 (local and subtree) and no
        // kill yet; 0.2 s later the subtree's oom_kill is 1
        let t = Instant::now();
        let mut s = SliceOoms::new(ev(0, 0), ev(0, 0));
        assert_eq!(s.update(ev(1, 0), ev(1, 0), t), 0);
        assert!(s.waiting());
        assert_eq!(
            s.update(ev(1, 1), ev(1, 0), t + Duration::from_millis(219)),
            1
        );
        assert!(!s.waiting());
        // nothing new: nothing
        assert_eq!(s.update(ev(1, 1), ev(1, 0), t + Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_kill_at_a_lower_limit_inside_the_slice_is_not_an_event() {
        // systemd-run --user -p MemoryMax=50M: the subtree counts oom and
        // oom_kill, the slice's own counters do not move
        let t = Instant::now();
        let mut s = SliceOoms::new(ev(3, 3), ev(3, 0));
        assert_eq!(s.update(ev(4, 4), ev(3, 0), t), 0);
        assert!(!s.waiting());
    }

    #[test]
    fn both_in_one_reading() {
        let t = Instant::now();
        let mut s = SliceOoms::new(ev(0, 0), ev(0, 0));
        // two slice OOMs and a child's, all killed, read at once
        assert_eq!(s.update(ev(3, 3), ev(2, 0), t), 2);
        // a slice OOM that never kills is forgotten, and a later child kill
        // is not taken for it
        assert_eq!(s.update(ev(4, 3), ev(3, 0), t), 0);
        assert!(s.waiting());
        assert_eq!(s.update(ev(5, 4), ev(3, 0), t + KILL_WAIT * 2), 0);
        assert!(!s.waiting());
    }

    #[test]
    fn counters_going_back_mean_a_new_slice() {
        let t = Instant::now();
        let mut s = SliceOoms::new(ev(5, 5), ev(5, 0));
        assert_eq!(s.update(ev(1, 0), ev(1, 0), t), 0);
        assert_eq!(s.update(ev(1, 1), ev(1, 0), t), 0, "the new baseline");
        assert_eq!(s.update(ev(2, 2), ev(2, 0), t), 1);
    }

    #[test]
    fn v1_firings() {
        let mut v = V1SliceOoms::new(Some(10));
        // container: slice OOM, failcnt 10 -> 64
        assert_eq!(v.fired(1, Some(64)), V1Firing::Kills(1));
        // an ancestor's OOM: failcnt of the slice unchanged
        assert_eq!(v.fired(1, Some(64)), V1Firing::Ancestor);
        // two OOMs before the daemon read the eventfd
        assert_eq!(v.fired(2, Some(70)), V1Firing::Kills(2));
        // the slice was removed (logout): the eventfd fires once more
        assert_eq!(v.fired(1, None), V1Firing::Removed);
        // a watcher that could not read failcnt at the start takes the first
        // firing as a kill
        assert_eq!(V1SliceOoms::new(None).fired(1, Some(3)), V1Firing::Kills(1));
    }

    #[test]
    fn v1_kills_come_from_the_kernels_count_not_the_firings() {
        // the slice (inode 1) and the scopes below it: (inode, kills)
        let one = |scopes: &[(u64, u64)]| scopes.iter().copied().collect::<Counts>();
        // read the same all through the burst
        let c = |scopes: &[(u64, u64)]| Some((one(scopes), one(scopes)));
        let mut v = V1SliceOoms::new(Some(10));
        v.counted(Some(one(&[(1, 0), (2, 4)])));
        // 947 firings for one kill (the OOM retried while its victim exits)
        assert_eq!(v.burst_kills(947, c(&[(1, 0), (2, 5)])), 1);
        // more firings two seconds later, no count moved: one (a kill in a
        // scope gone before the first reading looks the same as the last
        // OOM's retries; a kill is not to be lost)
        assert_eq!(v.burst_kills(130, c(&[(1, 0), (2, 5)])), 1);
        // the scope with the kills gone, a kill in a new one at once: one
        // (the sum over the slice did not move: 5 before, 1 now)
        assert_eq!(v.burst_kills(40, c(&[(1, 0), (3, 1)])), 1);
        // long after, nothing moved: a kill whose scope went first
        assert_eq!(v.burst_kills(130, c(&[(1, 0), (3, 1)])), 1);
        // three kills in one burst, in two scopes
        assert_eq!(v.burst_kills(40, c(&[(1, 0), (3, 2), (4, 2)])), 3);
        // a kill in a scope that went before the burst's end: its peak counts
        let seen = one(&[(1, 0), (3, 2), (4, 2), (5, 1)]);
        let end = one(&[(1, 0), (3, 2), (4, 2)]);
        assert_eq!(v.burst_kills(5, Some((seen, end))), 1);
        // and the next burst starts from the end's counts
        assert_eq!(v.burst_kills(5, c(&[(1, 0), (3, 2), (4, 3)])), 1);
        // no count kept by the kernel: one per burst
        assert_eq!(v.burst_kills(9, None), 1);
        assert_eq!(v.burst_kills(0, c(&[(1, 9)])), 0);
    }
}
