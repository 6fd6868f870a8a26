//! CPU "now" for `status` and `list`: the growth of each slice's CPU time
//! over a recent window, from samples the daemon takes every
//! [`SAMPLE_EVERY`] (and whenever it reads a slice's usage for an answer).
//!
//! On demand: the daemon samples only while someone looks, for [`HOLD`]
//! after the last `status` of a user or `list` (`fairshare-ctl top` asks
//! one of them every refresh; the metrics, with cumulative CPU time only,
//! and root's own status, the watchdog's probe, are not looks). A host nobody watches pays nothing
//! for it; the first look after a quiet spell waits [`FIRST_LOOK_WAIT`] for
//! a second sample, so it shows CPU now over about a second; the next ones
//! have the full window.
//!
//! Bounded: at most `WINDOW / SAMPLE_EVERY + 2` samples per user, and only
//! for users the ledger tracks (the others are dropped at each sampling).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use fairshare_proto::wire::CpuRecent;
use tokio::time::Instant;

/// How far back the window reaches.
pub const WINDOW: Duration = Duration::from_secs(30);
/// How often the daemon samples every tracked slice.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The shortest window worth reporting (a shorter one is mostly noise).
const SHORTEST: Duration = Duration::from_secs(1);
/// How long a look that finds no window yet waits for one: a second
/// sample this much after the first gives CPU now over a short window.
pub const FIRST_LOOK_WAIT: Duration = Duration::from_millis(1050);
/// How long the daemon goes on sampling after the last look.
pub const HOLD: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct CpuWindow {
    samples: Mutex<BTreeMap<u32, VecDeque<(Instant, u64)>>>,
    /// When an answer last read a user's usage.
    looked: Mutex<Option<Instant>>,
    /// Wakes a sampler that waits for a look.
    look: tokio::sync::Notify,
}

impl CpuWindow {
    /// Someone looked at a user's usage at `at`: sampling goes on (or
    /// starts again) for [`HOLD`].
    pub fn looked(&self, at: Instant) {
        let mut l = self.looked.lock().unwrap_or_else(PoisonError::into_inner);
        let was_sampling = l.is_some_and(|t| at.saturating_duration_since(t) < HOLD);
        *l = Some(l.map_or(at, |t| t.max(at)));
        drop(l);
        if !was_sampling {
            self.look.notify_one();
        }
    }

    /// Whether the sampler should sample at `at`: someone looked within
    /// [`HOLD`].
    pub fn wanted(&self, at: Instant) -> bool {
        self.looked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| at.saturating_duration_since(t) < HOLD)
    }

    /// Waits for the next look (returns at once if one came since the last
    /// wait ended).
    pub async fn next_look(&self) {
        self.look.notified().await;
    }

    /// Records `nsec` (the slice's CPU time read at `at`) and answers the
    /// CPU time used since the oldest sample within [`WINDOW`] that is at
    /// least a second old. A reading below the last one (the slice was
    /// stopped and made anew) starts over.
    pub fn observe(&self, uid: u32, at: Instant, nsec: u64) -> Option<CpuRecent> {
        let mut all = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let q = all.entry(uid).or_default();
        if q.back().is_some_and(|&(t, n)| n > nsec || t > at) {
            q.clear();
        }
        // Drop what is older than the window, but keep one sample at or
        // just inside its edge.
        while q.len() >= 2 && q[1].0 + WINDOW <= at {
            q.pop_front();
        }
        if q.front().is_some_and(|&(t, _)| t + WINDOW < at) {
            q.pop_front();
        }
        let recent = q
            .iter()
            .find(|&&(t, _)| at.duration_since(t) >= SHORTEST)
            .map(|&(t, n)| CpuRecent {
                used_nsec: nsec - n,
                window_nsec: at.duration_since(t).as_nanos() as u64,
            });
        // A sample at most every SAMPLE_EVERY / 2: answers read often (top
        // at 1 s) do not grow the queue.
        if q.back()
            .is_none_or(|&(t, _)| at.duration_since(t) >= SAMPLE_EVERY / 2)
        {
            q.push_back((at, nsec));
        }
        recent
    }

    /// Forgets users no longer tracked.
    pub fn retain(&self, keep: impl Fn(u32) -> bool) {
        let mut all = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|uid, _| keep(*uid));
    }

    #[cfg(test)]
    fn len(&self, uid: u32) -> usize {
        let all = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(&uid).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn samples_only_while_someone_looks() {
        let w = std::sync::Arc::new(CpuWindow::default());
        let t0 = Instant::now();
        assert!(!w.wanted(t0), "nobody looked yet");
        // a sampler waiting for a look wakes when one comes
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.next_look().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        w.looked(t0);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the look wakes the sampler")
            .expect("no panic");
        assert!(w.wanted(t0 + HOLD - Duration::from_secs(1)));
        assert!(!w.wanted(t0 + HOLD), "quiet for HOLD: no more sampling");
        // a look later keeps it going from then; an older one does not
        // move it back
        w.looked(t0 + HOLD);
        w.looked(t0);
        assert!(w.wanted(t0 + 2 * HOLD - Duration::from_secs(1)));
        assert!(!w.wanted(t0 + 2 * HOLD));
    }

    #[test]
    fn first_reading_has_no_window() {
        let w = CpuWindow::default();
        assert_eq!(w.observe(1001, Instant::now(), 5 * S), None);
    }

    #[test]
    fn share_over_the_window() {
        let w = CpuWindow::default();
        let t0 = Instant::now();
        // two CPUs busy: 2 s of CPU time each second
        for i in 0..=20u64 {
            let r = w.observe(1001, t0 + Duration::from_secs(i), 100 * S + 2 * i * S);
            if i >= 1 {
                let r = r.unwrap();
                assert!((r.cpus().unwrap() - 2.0).abs() < 1e-9, "{r:?}");
            }
        }
        // the window reaches back at most WINDOW
        let t = t0 + Duration::from_secs(100);
        w.observe(1001, t - Duration::from_secs(40), 200 * S);
        w.observe(1001, t - Duration::from_secs(20), 210 * S);
        let r = w.observe(1001, t, 230 * S).unwrap();
        assert_eq!(r.used_nsec, 20 * S);
        assert_eq!(r.window_nsec, 20 * S);
        assert!(w.len(1001) <= (WINDOW.as_secs() / (SAMPLE_EVERY.as_secs() / 2)) as usize + 2);
    }

    #[test]
    fn a_recent_only_sample_is_not_a_window() {
        let w = CpuWindow::default();
        let t0 = Instant::now();
        w.observe(1001, t0, S);
        assert_eq!(
            w.observe(1001, t0 + Duration::from_millis(300), 2 * S),
            None
        );
    }

    #[test]
    fn a_slice_made_anew_starts_over() {
        let w = CpuWindow::default();
        let t0 = Instant::now();
        w.observe(1001, t0, 50 * S);
        assert_eq!(w.observe(1001, t0 + Duration::from_secs(10), S), None);
        let r = w
            .observe(1001, t0 + Duration::from_secs(20), 6 * S)
            .unwrap();
        assert_eq!(r.used_nsec, 5 * S);
    }

    #[test]
    fn queue_stays_small_when_read_often() {
        let w = CpuWindow::default();
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            w.observe(1001, t0 + Duration::from_millis(100 * i), i * S / 10);
        }
        assert!(w.len(1001) <= 14, "{}", w.len(1001));
        w.retain(|u| u != 1001);
        assert_eq!(w.len(1001), 0);
    }
}
