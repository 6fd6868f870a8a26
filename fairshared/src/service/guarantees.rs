//! Memory guarantees within `capacity.mem_low` (issue 15): after every
//! change to the ledger ([`Service::apply_change`], reloads) the guarantees
//! are shared again ([`crate::ledger::Ledger::regrant`]); the user the
//! change is about gets theirs with the rest of their change (one call, or
//! none when their slice already carries it), and other users whose
//! guarantee moved get `MemoryLow` alone, one call each, in the background
//! after the answer: a login never waits for other users' slices. A burst
//! of logins is coalesced: the background pass sets each slice to what the
//! ledger says when it gets there.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use fairshare_policy::Policy;

use super::Service;
use crate::defaults::{properties, values_of};
use crate::dropin::Key;
use crate::guarantees::Pool;
use crate::systemd::Systemd;

/// Users whose slice's `MemoryLow` is still to be set, and whether a pass
/// runs.
#[derive(Default)]
pub(super) struct Regrants(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    uids: BTreeSet<u32>,
    running: bool,
}

impl<S: Systemd> Service<S> {
    /// `capacity.mem_low` of `policy` on this host.
    pub(super) fn pool(&self, policy: &Policy) -> Pool {
        Pool {
            total: policy.mem_low_capacity(self.host),
            mode: policy.guarantees().when_full,
        }
    }

    /// Sets the `MemoryLow` of these users' slices to what the ledger says,
    /// after the answer (see the module's notes).
    pub(super) fn regrant_later(self: &Arc<Self>, uids: Vec<u32>) {
        {
            let mut p = self
                .regrants
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            p.uids.extend(uids);
            if p.running || p.uids.is_empty() {
                return;
            }
            p.running = true;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = this.upgrade() else {
                    return;
                };
                let batch = {
                    let mut p = s.regrants.0.lock().unwrap_or_else(PoisonError::into_inner);
                    if p.uids.is_empty() {
                        p.running = false;
                        return;
                    }
                    std::mem::take(&mut p.uids)
                };
                for uid in batch {
                    s.put_guarantee(uid).await;
                }
            }
        });
    }

    /// Whether a background pass is still to set some slice (tests).
    #[cfg(test)]
    pub(super) fn regrants_pending(&self) -> bool {
        let p = self
            .regrants
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.running || !p.uids.is_empty()
    }

    /// Makes the user's slice carry the guarantee the ledger grants them:
    /// `MemoryLow` alone, only when it differs from what is in force. A
    /// user no longer in the ledger is left alone (their last logout put
    /// their slice back to its default).
    pub(super) async fn put_guarantee(self: &Arc<Self>, uid: u32) -> bool {
        let _guard = self.locks.lock(uid).await;
        let Some(limits) = self.store.read(|l| l.get(uid).map(|e| e.slice_limits())) else {
            return false;
        };
        let own = self.dropins.own();
        let all = values_of(&limits, &Default::default(), &own);
        let target = all
            .get(&Key::MemoryLow)
            .map(|v| [(Key::MemoryLow, *v)].into_iter().collect())
            .unwrap_or_default();
        let keys = self.dropins.differing(uid, &target);
        if keys.is_empty() {
            return false;
        }
        match self.systemd.set(uid, &properties(&keys)).await {
            Ok(()) => {
                self.counters.slice_writes.fetch_add(1, Ordering::Relaxed);
                self.dropins.did_set(uid, &keys);
                self.store.mutate(|l| l.mark_applied(uid, limits));
                tracing::info!(
                    uid,
                    memory_low = limits.mem_low.map_or(0, |b| b.get()),
                    "memory guarantee of uid {uid} now {} (capacity.mem_low shared again)",
                    limits.mem_low.unwrap_or_default().human()
                );
                if self.dropins.unsettled(uid) {
                    self.settle_later(uid);
                }
                true
            }
            Err(e) => {
                tracing::error!(uid, error = %e, "could not set the memory guarantee of uid {uid}; set again at the next login, logout or reload");
                false
            }
        }
    }
}
