//! Admission: whether a caller may send a request of this kind now, decided
//! before the request is looked at. Root-only kinds are for root; every
//! other caller is held to per-user rate limits (every request, and a much
//! smaller allowance for those that change an allocation, see
//! [`crate::ratelimit`]). Root (the PAM module, the admin) is never limited.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fairshare_proto::wire::Kind;

use crate::ratelimit::{CHANGES, Limiter, LogThrottle, REQUESTS};

/// The other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// Why a request was turned away at the door.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("permission denied: `{0}` is for root only (run fairshare-ctl with sudo)")]
    RootOnly(Kind),
    #[error(
        "too many requests from uid {uid}; try again in {:.1} s",
        wait.as_secs_f64().max(0.1)
    )]
    RateLimited { uid: u32, wait: Duration },
}

/// The per-user rate limits, and the throttle on their warnings.
#[derive(Default)]
pub struct Admission {
    /// Every request; changes to an allocation.
    limiters: Mutex<(Limiter, Limiter)>,
    log: LogThrottle,
}

impl Admission {
    /// Lets `peer` send a request of `kind` now, or says why not.
    pub fn admit(&self, peer: Peer, kind: Kind) -> Result<(), Denied> {
        if peer.is_root() {
            return Ok(());
        }
        if kind.root_only() {
            tracing::warn!(
                uid = peer.uid,
                request = kind.name(),
                "refused a root-only request"
            );
            return Err(Denied::RootOnly(kind));
        }
        let now = Instant::now();
        let verdict = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            let (all, changes) = &mut *limiters;
            all.take(peer.uid, REQUESTS, now)
                .and_then(|()| match kind.changes_limits() {
                    true => changes.take(peer.uid, CHANGES, now),
                    false => Ok(()),
                })
        };
        verdict.map_err(|wait| {
            if let Some(held) = self.log.allow() {
                tracing::warn!(
                    uid = peer.uid,
                    request = kind.name(),
                    more = held,
                    "rate limited ({held} more refusals since the last warning)"
                );
            }
            Denied::RateLimited {
                uid: peer.uid,
                wait,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer { uid, pid: None }
    }

    #[test]
    fn root_only_kinds_are_for_root_and_root_is_never_limited() {
        let a = Admission::default();
        for kind in Kind::ALL {
            assert!(a.admit(peer(0), kind).is_ok());
            let user = a.admit(peer(1001), kind);
            assert_eq!(
                matches!(user, Err(Denied::RootOnly(k)) if k == kind),
                kind.root_only(),
                "{kind}"
            );
        }
        for _ in 0..1000 {
            assert!(a.admit(peer(0), Kind::SetUser).is_ok());
        }
    }

    #[test]
    fn changes_have_the_smaller_allowance() {
        let a = Admission::default();
        let admitted = (0..30)
            .filter(|_| a.admit(peer(1001), Kind::Release).is_ok())
            .count();
        assert_eq!(admitted, CHANGES.burst as usize);
        let e = a.admit(peer(1001), Kind::RequestResources).unwrap_err();
        assert!(e.to_string().contains("try again in"), "{e}");
        // a status is still let through
        assert!(a.admit(peer(1001), Kind::Status).is_ok());
    }
}
