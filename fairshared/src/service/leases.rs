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

/// How soon an expiry whose user lookup failed is tried again.
const LOOKUP_RETRY: Duration = Duration::from_secs(5);

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

    /// Ends what is due of `uid`'s leases, and makes sure their slice
    /// carries what the ledger says (a no-op without a D-Bus call when it
    /// does). Then arms the timer for what is left.
    async fn expire_lease(self: &Arc<Self>, uid: u32) {
        let guard = self.locks.lock(uid).await;
        let id = match self.identity(uid).await {
            Ok(id) => id,
            Err(ServiceError::Identity(IdentityError::NoUid(_))) => {
                // gone from the user database: the next refresh (reload,
                // restart) lets their allocation go
                tracing::warn!(
                    uid,
                    "a lease of uid {uid} ended, but uid {uid} no longer exists; its allocation goes at the next reload"
                );
                self.leases.cancel(&uid);
                return;
            }
            Err(e) => {
                tracing::warn!(uid, error = %e, "a lease of uid {uid} ended, but the user lookup failed ({e}); trying again in {}s", LOOKUP_RETRY.as_secs());
                self.schedule_lease(uid, self.now() + LOOKUP_RETRY.as_secs());
                return;
            }
        };
        let up = self.policy().for_user(&id);
        let now = self.now();
        let change = self.store.mutate(|l| l.expire_due(uid, now, &up));
        if change.is_some() {
            self.counters.leases_expired.fetch_add(1, Ordering::Relaxed);
        }
        // The change, or what the ledger says and the slice was last given
        // otherwise (an apply that failed): set again.
        let pending = change.clone().or_else(|| {
            self.store.read(|l| {
                l.get(uid)
                    .filter(|e| e.applied.is_some_and(|a| a != e.limits))
                    .map(|e| Change {
                        uid,
                        old: e.applied,
                        new: e.limits,
                        force: false,
                    })
            })
        });
        if let Some(change) = &pending
            && let Err(e) = self
                .apply_change(&id, change, OnRefusal::Keep, 0, "lease expired")
                .await
        {
            tracing::error!(
                uid,
                user = %id.name,
                error = %e,
                "could not apply the limits of {} (uid {uid}) after a lease expired: {e}",
                id.name
            );
        }
        // What is left (the other layer's end, or a timer that woke early),
        // armed with the lock held, so timers follow the ledger's order.
        self.rearm_lease(uid);
        if pending.is_some()
            && let Err(e) = self.save_unlocked(guard).await
        {
            tracing::error!(uid, user = %id.name, error = %e, "could not save the state after a lease expired: {e}");
        }
    }
}
