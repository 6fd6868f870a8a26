//! Per-user rate limits, so one user's flood cannot slow everyone else down.
//!
//! Token buckets: every request from a non-root user takes a token from that
//! user's general bucket; resizes and releases (which call systemd) also take
//! one from a much smaller bucket. Root (the PAM module, the admin) is never
//! limited. Buckets of users who have gone quiet are forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Tokens a quiet user has (the burst allowed).
    pub burst: f64,
    /// Tokens added per second.
    pub per_sec: f64,
}

/// Every request: bursts of 100, then 50 a second.
pub const REQUESTS: Rate = Rate {
    burst: 100.0,
    per_sec: 50.0,
};
/// Changes that reach systemd: bursts of 10, then one a second.
pub const CHANGES: Rate = Rate {
    burst: 10.0,
    per_sec: 1.0,
};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<u32, Bucket>,
}

impl Limiter {
    /// Takes a token for `uid`; `Err(wait)` says how long until one is there.
    pub fn take(&mut self, uid: u32, rate: Rate, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() > 4096 {
            // Forget users whose bucket has filled up again: they are quiet.
            self.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_sec < rate.burst
            });
        }
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate.per_sec;
        b.tokens = (b.tokens + refill).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.take(7, CHANGES, t0).is_ok());
        }
        let wait = l.take(7, CHANGES, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        // someone else is not affected
        assert!(l.take(8, CHANGES, t0).is_ok());
        // a second later there is one more token
        assert!(l.take(7, CHANGES, t0 + Duration::from_millis(1001)).is_ok());
        assert!(
            l.take(7, CHANGES, t0 + Duration::from_millis(1001))
                .is_err()
        );
    }
}
