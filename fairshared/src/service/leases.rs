//! Leases: a user's resize that lapses at a set time, and root's settings
//! given a `--for`.
//!
//! One timer task per user (in the lease [`Tasks`](crate::tasks::Tasks)
//! table, so a new change replaces the timer), armed for the user's next
//! expiry ([`crate::ledger::Entry::next_expiry`]); the expiry times live in
//! the ledger (and so in the state file), so leases survive a restart:
//! [`Service::catch_up`] starts the timers again, and one already past
//! fires at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{OnRefusal, Service};
use crate::systemd::Systemd;

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
                // boxed: the timer waits small, one per leased user
                Box::pin(service.expire_lease(uid)).await;
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

    async fn expire_lease(self: &Arc<Self>, uid: u32) {
        let guard = self.locks.lock(uid).await;
        // From here on this timer is no longer the user's to replace.
        self.leases.cancel(&uid);
        let Ok(id) = self.identity(uid).await else {
            return;
        };
        let up = self.policy().for_user(&id);
        let now = self.now();
        let change = self.store.mutate(|l| l.expire_due(uid, now, &up));
        if let Some(change) = &change {
            self.counters.leases_expired.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self
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
        }
        // What is left (the other layer's end, or a timer that woke early),
        // armed with the lock held, so timers follow the ledger's order.
        self.rearm_lease(uid);
        if change.is_some()
            && let Err(e) = self.save_unlocked(guard).await
        {
            tracing::error!(uid, user = %id.name, error = %e, "could not save the state after a lease expired: {e}");
        }
    }
}
