//! Leases: a user's resize that lapses at a set time, and root's settings
//! given a `--for`.
//!
//! One timer per user (in the lease [`Tasks`](crate::tasks::Tasks) table, so
//! a new change replaces the timer), armed for the user's next expiry
//! ([`crate::ledger::Entry::next_expiry`]); the expiry times live in the
//! ledger (and so in the state file), so leases survive a restart. A lease
//! that ran out while fairshared was stopped ends in
//! [`Service::catch_up`]'s refresh, before any timer.
//!
//! A timer only waits: the expiry itself runs as a task of its own, which a
//! timer armed meanwhile (by a login, a resize, the catch-up) cannot abort
//! half-way, between the ledger's change and the slice's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{OnRefusal, Service, ServiceError};
use crate::identity::IdentityError;
use crate::ledger::Change;
use crate::systemd::Systemd;

/// How soon an expiry whose user lookup or apply failed is tried again.
pub(super) const RETRY: Duration = Duration::from_secs(5);
/// How soon, when the user database says the user does not exist.
const GONE_RETRY: Duration = Duration::from_secs(60);

impl<S: Systemd> Service<S> {
    /// Arms (or re-arms) the lease timer of `uid` for `expires_at` (Unix time).
    pub(super) fn schedule_lease(self: &Arc<Self>, uid: u32, expires_at: u64) {
        let this = Arc::downgrade(self);
        let wait = Duration::from_secs(expires_at.saturating_sub(self.now()));
        // the deadline from now, not from when the task first runs
        let deadline = tokio::time::Instant::now() + wait;
        self.leases.spawn(uid, async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(service) = this.upgrade() {
                // detached: replacing this timer from now on must not stop
                // an expiry half-way
                tokio::spawn(async move { service.expire_lease(uid).await });
            }
        });
    }

    /// Arms the timer of `uid` for their next expiry in the ledger, or
    /// cancels it when nothing of theirs expires. Call after any change to
    /// the user (with their lock held).
    pub(super) fn rearm_lease(self: &Arc<Self>, uid: u32) {
        match self
            .store
            .read(|l| l.get(uid).and_then(|e| e.next_expiry()))
        {
            Some(at) => self.schedule_lease(uid, at),
            None => self.leases.cancel(&uid),
        }
    }

    /// Arms the timer of `uid` for `wait` from now, or for their next
    /// expiry if that comes first: the expiry runs again then, and sets
    /// what the slice still lacks. Call with the user's lock held.
    pub(super) fn retry_lease(self: &Arc<Self>, uid: u32, wait: Duration) {
        let now = self.now();
        let soon = now + wait.as_secs();
        // an expiry already due is what is being retried: not sooner
        let next = self
            .store
            .read(|l| l.get(uid).and_then(|e| e.next_expiry()))
            .filter(|n| *n > now);
        self.schedule_lease(uid, next.map_or(soon, |n| n.min(soon)));
    }

    /// Ends what is due of `uid`'s leases, and makes sure their slice
    /// carries what the ledger says (a no-op without a D-Bus call when it
    /// does). Then arms the timer for what is left.
    async fn expire_lease(self: &Arc<Self>, uid: u32) {
        let guard = self.locks.lock(uid).await;
        let id = match self.identity(uid).await {
            Ok(id) => id,
            Err(e) => {
                // gone from the user database, or NSS down (sssd offline may
                // say either): tried again, never given up; a reload or
                // restart lets a user who is really gone go
                let wait = match e {
                    ServiceError::Identity(IdentityError::NoUid(_)) => GONE_RETRY,
                    _ => RETRY,
                };
                tracing::warn!(uid, error = %e, "a lease of uid {uid} is due, but the user lookup failed ({e}); trying again in {}s", wait.as_secs());
                self.retry_lease(uid, wait);
                return;
            }
        };
        let up = self.policy().for_user(&id);
        let now = self.now();
        let change = self.store.mutate(|l| l.expire_due(uid, now, &up));
        if change.is_some() {
            self.counters.leases_expired.fetch_add(1, Ordering::Relaxed);
        }
        // The change, or what the ledger says and the slice was not given
        // (an apply that failed, or never ran): set again.
        let pending = change.clone().or_else(|| {
            self.store.read(|l| {
                l.get(uid)
                    .filter(|e| e.applied != Some(e.slice_limits()))
                    .map(|e| Change {
                        uid,
                        old: e.applied,
                        new: e.limits,
                        force: false,
                    })
            })
        });
        let mut failed = false;
        if let Some(change) = &pending
            && let Err(e) = self
                .apply_change(&id, change, OnRefusal::Keep, 0, "lease expired")
                .await
        {
            failed = true;
            tracing::error!(
                uid,
                user = %id.name,
                error = %e,
                "could not apply the limits of {} (uid {uid}) after a lease expired: {e}; trying again in {}s",
                id.name,
                RETRY.as_secs()
            );
        }
        // What is left (the other layer's end, or a timer that woke early),
        // armed with the lock held, so timers follow the ledger's order; a
        // failed apply is tried again soon.
        match failed {
            true => self.retry_lease(uid, RETRY),
            false => self.rearm_lease(uid),
        }
        if pending.is_some()
            && let Err(e) = self.save_unlocked(guard).await
        {
            tracing::error!(uid, user = %id.name, error = %e, "could not save the state after a lease expired: {e}");
        }
    }
}
