//! Leases: a resize that lapses back to the policy default at a set time.
//!
//! One timer task per leased user (in the lease [`Tasks`](crate::tasks::Tasks)
//! table, so a new resize replaces the timer); the expiry time lives in the
//! ledger (and so in the state file), so leases survive a restart:
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
        self.leases.spawn(uid, async move {
            tokio::time::sleep(wait).await;
            if let Some(service) = this.upgrade() {
                service.expire_lease(uid, expires_at).await;
            }
        });
    }

    async fn expire_lease(&self, uid: u32, expires_at: u64) {
        let _guard = self.locks.lock(uid).await;
        // From here on this timer is no longer the user's to replace.
        self.leases.cancel(&uid);
        let Ok(id) = self.identity(uid).await else {
            return;
        };
        let up = self.policy().for_user(&id);
        let grant = self
            .store
            .read(|l| l.get(uid).and_then(|e| e.grant.clone()));
        let Some(grant) = grant else {
            return;
        };
        let notice = format!(
            "your resize to {} CPUs, {} memory expired; back to the default",
            grant.cpu, grant.mem
        );
        let Some(change) = self
            .store
            .mutate(|l| l.expire(uid, expires_at, &up, notice))
        else {
            return;
        };
        self.counters.leases_expired.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self
            .commit(&id, &change, OnRefusal::Keep, 0, "lease expired")
            .await
        {
            tracing::error!(uid, error = %e, "could not apply the default after a lease expired");
        }
    }
}
