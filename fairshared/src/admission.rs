//! Admission: whether a caller may be heard now, decided before the request
//! is looked at. Every connection of a non-root user takes one from their
//! allowance of requests before a byte of it is read
//! ([`Admission::admit_connection`]), so lines that fail to parse, silent
//! connections and a flood of connections count as requests do. Then, by
//! kind ([`Admission::admit`]): root-only kinds are for root, and requests
//! that change an allocation take one from a much smaller allowance (see
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

    /// Whether the peer is this very daemon (the watchdog's check).
    pub fn is_this_daemon(self) -> bool {
        self.pid
            .is_some_and(|p| u32::try_from(p) == Ok(std::process::id()))
    }

    /// On whose behalf lookups for this peer's requests run.
    pub fn behalf(self) -> crate::identity::Behalf {
        match self.is_root() {
            true => crate::identity::Behalf::Root,
            false => crate::identity::Behalf::User,
        }
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
    /// Lets a connection from `peer` be read, or says why not.
    pub fn admit_connection(&self, peer: Peer) -> Result<(), Denied> {
        if peer.is_root() {
            return Ok(());
        }
        let now = Instant::now();
        let verdict = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            limiters.0.take(peer.uid, REQUESTS, now)
        };
        verdict.map_err(|wait| self.limited(peer, "any", wait))
    }

    /// Lets `peer` send a request of `kind` on a connection that was
    /// admitted, or says why not.
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
        if !kind.changes_limits() {
            return Ok(());
        }
        let now = Instant::now();
        let verdict = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            limiters.1.take(peer.uid, CHANGES, now)
        };
        verdict.map_err(|wait| self.limited(peer, kind.name(), wait))
    }

    fn limited(&self, peer: Peer, request: &str, wait: Duration) -> Denied {
        if let Some(held) = self.log.allow() {
            tracing::warn!(
                uid = peer.uid,
                request,
                more = held,
                "rate limited ({held} more refusals since the last warning)"
            );
        }
        Denied::RateLimited {
            uid: peer.uid,
            wait,
        }
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
    fn every_connection_counts_whatever_it_carries() {
        let a = Admission::default();
        let admitted = (0..300)
            .filter(|_| a.admit_connection(peer(1001)).is_ok())
            .count();
        assert_eq!(admitted, REQUESTS.burst as usize);
        let e = a.admit_connection(peer(1001)).unwrap_err();
        assert!(e.to_string().contains("try again in"), "{e}");
        // someone else, and root, are not held back
        assert!(a.admit_connection(peer(1002)).is_ok());
        for _ in 0..1000 {
            assert!(a.admit_connection(peer(0)).is_ok());
        }
        // a status on an admitted connection takes nothing more
        for _ in 0..1000 {
            assert!(a.admit(peer(1003), Kind::Status).is_ok());
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
