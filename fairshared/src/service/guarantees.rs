//! Memory guarantees within `capacity.mem_low` (issue 15): after every
//! change to the ledger ([`Service::apply_change`], reloads) the guarantees
//! are shared again ([`crate::ledger::Ledger::regrant`]); the user the
//! change is about gets theirs with the rest of their change (one call, or
//! none when their slice already carries it), and other users whose
//! guarantee moved get `MemoryLow` alone, one call each, in the background
//! after the answer: a login never waits for other users' slices.
//!
//! A guarantee lowered is set at once (the total must fit); one raised
//! waits [`RAISE_AFTER`], and is set then to what the ledger says: a user
//! logging in and out in a loop (under `when_full: scale` every login and
//! logout moves everyone's share) costs the other slices one call each, not
//! two a loop. Every pass lowers before it raises, and takes the slices
//! whose user's lock is free before waiting for the others (one user's
//! flood of logins holds up only their own). A set that fails is tried
//! again after the same wait, [`TRIES`] times in all. Each pass logs one
//! line; each slice's is at debug.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fairshare_policy::Policy;
use fairshare_proto::units::Bytes;

use super::Service;
use crate::defaults::{Values, properties};
use crate::dropin::{Key, Value};
use crate::guarantees::Pool;
use crate::systemd::Systemd;

/// How long a raised guarantee waits before it is set (see the module's
/// notes).
pub(super) const RAISE_AFTER: Duration = Duration::from_secs(30);

/// How many times a failed set of a guarantee is made in all.
const TRIES: u8 = 3;

/// Users whose slice's `MemoryLow` is still to be set, and whether a pass
/// runs.
pub(super) struct Regrants(Mutex<Pending>);

struct Pending {
    /// For the next pass: lowered at once, raises deferred.
    uids: BTreeSet<u32>,
    /// For the pass after `raise_after`: raises, and failed sets with the
    /// tries they have had.
    later: BTreeMap<u32, u8>,
    running: bool,
    /// A pass is waiting out `raise_after`.
    armed: bool,
    /// Such passes under way (after their wait).
    late: usize,
    raise_after: Duration,
}

impl Default for Regrants {
    fn default() -> Regrants {
        Regrants(Mutex::new(Pending {
            uids: BTreeSet::new(),
            later: BTreeMap::new(),
            running: false,
            armed: false,
            late: 0,
            // the unit tests wait for every pass to end; theirs of the
            // delay itself sets it ([`Service::set_raise_after`])
            raise_after: if cfg!(test) {
                Duration::from_millis(100)
            } else {
                RAISE_AFTER
            },
        }))
    }
}

impl Regrants {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a pass did to one slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Put {
    /// It carries its guarantee already.
    Same,
    Lowered,
    Raised,
    /// A raise, left for later.
    Deferred,
    Failed,
}

/// A pass's count, for its one log line.
#[derive(Default)]
struct Tally {
    lowered: Vec<u32>,
    raised: Vec<u32>,
    deferred: Vec<u32>,
    failed: Vec<u32>,
    /// Of the failed, those out of tries.
    given_up: usize,
}

impl Tally {
    fn count(&mut self, uid: u32, put: Put) {
        match put {
            Put::Same => {}
            Put::Lowered => self.lowered.push(uid),
            Put::Raised => self.raised.push(uid),
            Put::Deferred => self.deferred.push(uid),
            Put::Failed => self.failed.push(uid),
        }
    }
}

/// ` (uid 1001, 1002)`: whose slices a pass set, the first eight.
fn uids(list: &[u32]) -> String {
    match list.len() {
        0 => String::new(),
        n => {
            let shown: Vec<String> = list.iter().take(8).map(u32::to_string).collect();
            let more = if n > 8 {
                format!(" and {} more", n - 8)
            } else {
                String::new()
            };
            format!(" (uid {}{more})", shown.join(", "))
        }
    }
}

/// Resets `running` should a pass panic, so that the next change starts a
/// pass again (a pass that ends resets it under the same lock as it finds
/// nothing left to do).
struct Unwinding<'a>(&'a Regrants);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().running = false;
        }
    }
}

/// A late pass under way (counted for [`Service::regrants_pending`]).
struct Late<'a>(&'a Regrants);

impl Drop for Late<'_> {
    fn drop(&mut self) {
        let mut p = self.0.lock();
        p.late = p.late.saturating_sub(1);
    }
}

impl<S: Systemd> Service<S> {
    /// `capacity.mem_low` of `policy` on this host.
    pub(super) fn pool(&self, policy: &Policy) -> Pool {
        Pool {
            total: policy.mem_low_capacity(self.host),
            mode: policy.guarantees().when_full,
        }
    }

    /// How long a raise waits (tests shorten it).
    #[cfg(test)]
    pub(super) fn set_raise_after(&self, d: Duration) {
        self.regrants.lock().raise_after = d;
    }

    /// Sets the `MemoryLow` of these users' slices to what the ledger says,
    /// after the answer (see the module's notes).
    pub(super) fn regrant_later(self: &Arc<Self>, uids: Vec<u32>) {
        {
            let mut p = self.regrants.lock();
            p.uids.extend(uids);
            if p.running || p.uids.is_empty() {
                return;
            }
            p.running = true;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(s) = this.upgrade() else {
                return;
            };
            let _unwinding = Unwinding(&s.regrants);
            loop {
                let batch = {
                    let mut p = s.regrants.lock();
                    if p.uids.is_empty() {
                        p.running = false;
                        return;
                    }
                    std::mem::take(&mut p.uids)
                };
                let batch = batch.into_iter().map(|u| (u, 0)).collect();
                let tally = s.regrant_pass(batch, false).await;
                s.log_pass(&tally, None);
            }
        });
    }

    /// Sets these users' slices after `raise_after`, raises included (a
    /// user already waiting keeps their count of tries).
    pub(super) fn regrant_after(self: &Arc<Self>, uids: impl IntoIterator<Item = u32>) {
        self.regrant_after_tried(uids.into_iter().map(|u| (u, 0)));
    }

    fn regrant_after_tried(self: &Arc<Self>, uids: impl IntoIterator<Item = (u32, u8)>) {
        let wait = {
            let mut p = self.regrants.lock();
            for (uid, tries) in uids {
                let t = p.later.entry(uid).or_default();
                *t = (*t).max(tries);
            }
            if p.armed || p.later.is_empty() {
                return;
            }
            p.armed = true;
            p.raise_after
        };
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(s) = this.upgrade() else {
                return;
            };
            let batch = {
                let mut p = s.regrants.lock();
                // what comes from now on waits for a timer of its own
                p.armed = false;
                p.late += 1;
                std::mem::take(&mut p.later)
            };
            let _late = Late(&s.regrants);
            let tally = s.regrant_pass(batch, true).await;
            s.log_pass(&tally, Some(wait));
        });
    }

    /// One pass over `batch` (users and the tries their set has had): every
    /// lowering first, then (with `raise`) the raises, each round taking the
    /// slices whose user's lock is free before waiting for the others.
    /// Raises without `raise`, and failed sets with tries left, wait for a
    /// late pass.
    async fn regrant_pass(self: &Arc<Self>, batch: BTreeMap<u32, u8>, raise: bool) -> Tally {
        let mut tally = Tally::default();
        let lowering = self.put_each(batch.keys().copied(), false).await;
        // a lowering that failed holds every raise back: the room it was
        // to make is not there
        let failed = lowering.iter().any(|(_, p)| *p == Put::Failed);
        let mut raising = Vec::new();
        for (uid, put) in lowering {
            match put {
                Put::Deferred if raise && !failed => raising.push(uid),
                other => tally.count(uid, other),
            }
        }
        for (uid, put) in self.put_each(raising, true).await {
            tally.count(uid, put);
        }
        let mut retry = Vec::new();
        for u in &tally.failed {
            let tries = batch.get(u).copied().unwrap_or(0) + 1;
            match tries < TRIES {
                true => retry.push((*u, tries)),
                false => tally.given_up += 1,
            }
        }
        let later: Vec<(u32, u8)> = tally
            .deferred
            .iter()
            .map(|u| (*u, 0))
            .chain(retry)
            .collect();
        self.regrant_after_tried(later);
        tally
    }

    /// [`Service::put_guarantee_locked`] for each user, the free locks
    /// first.
    async fn put_each(
        self: &Arc<Self>,
        uids: impl IntoIterator<Item = u32>,
        raise: bool,
    ) -> Vec<(u32, Put)> {
        let mut out = Vec::new();
        let mut busy = Vec::new();
        for uid in uids {
            match self.locks.try_lock(uid) {
                Some(_g) => out.push((uid, self.put_guarantee_locked(uid, raise).await)),
                None => busy.push(uid),
            }
        }
        for uid in busy {
            let _g = self.locks.lock(uid).await;
            out.push((uid, self.put_guarantee_locked(uid, raise).await));
        }
        out
    }

    /// One line a pass (`late`: the wait it came after).
    fn log_pass(&self, t: &Tally, late: Option<Duration>) {
        if t.lowered.is_empty()
            && t.raised.is_empty()
            && t.deferred.is_empty()
            && t.failed.is_empty()
        {
            return;
        }
        let policy = self.policy();
        let pool = self.pool(&policy);
        let wait = late.unwrap_or_else(|| self.regrants.lock().raise_after);
        let deferred = match t.deferred.len() {
            0 => String::new(),
            n => format!(", {n} to raise in {}s", wait.as_secs()),
        };
        let failed = match (t.failed.len() - t.given_up, t.given_up) {
            (0, 0) => String::new(),
            (n, 0) => format!(", {n} failed (tried again in {}s)", wait.as_secs()),
            (0, g) => format!(
                ", {g} failed {TRIES} times (set again at that user's next login or logout, or a reload)"
            ),
            (n, g) => format!(
                ", {n} failed (tried again in {}s), {g} failed {TRIES} times (set again at that user's next login or logout, or a reload)",
                wait.as_secs()
            ),
        };
        tracing::info!(
            lowered = t.lowered.len(),
            raised = t.raised.len(),
            failed = t.failed.len(),
            "memory guarantees shared again (capacity.mem_low {}, when_full: {}): {} lowered{}, {} raised{}{deferred}{failed}",
            pool.total.human(),
            super::when_full(pool.mode),
            t.lowered.len(),
            uids(&t.lowered),
            t.raised.len(),
            uids(&t.raised),
        );
    }

    /// Whether a background pass is still to set some slice (tests).
    #[cfg(test)]
    pub(super) fn regrants_pending(&self) -> bool {
        let p = self.regrants.lock();
        p.running || p.armed || p.late > 0 || !p.uids.is_empty() || !p.later.is_empty()
    }

    /// Makes the user's slice carry the guarantee the ledger grants them
    /// (raises too), waiting for the user's lock (reloads).
    pub(super) async fn put_guarantee(self: &Arc<Self>, uid: u32) -> Put {
        let _g = self.locks.lock(uid).await;
        self.put_guarantee_locked(uid, true).await
    }

    /// Makes the user's slice carry the guarantee the ledger grants them
    /// (none when it holds none, or the ledger no longer has them: a last
    /// logout whose own call failed): `MemoryLow` alone, only when it
    /// differs from what is in force, and a raise only with `raise`. Call
    /// with the user's lock.
    async fn put_guarantee_locked(self: &Arc<Self>, uid: u32, raise: bool) -> Put {
        let (limits, want) = self.store.read(|l| {
            let limits = l.get(uid).map(|e| e.slice_limits());
            (limits, limits.and_then(|l| l.mem_low))
        });
        let target: Values = match want.filter(|b| b.get() > 0) {
            Some(b) => [(Key::MemoryLow, Some(Value::Amount(b.get())))].into(),
            None => [(
                Key::MemoryLow,
                self.dropins.own().get(&Key::MemoryLow).copied().flatten(),
            )]
            .into(),
        };
        let keys = self.dropins.differing(uid, &target);
        if keys.is_empty() {
            return Put::Same;
        }
        let amount = |v: Option<&Option<Value>>| match v {
            Some(Some(Value::Amount(n))) => *n,
            _ => 0,
        };
        let now = amount(self.dropins.in_force(uid).get(&Key::MemoryLow));
        let want = want.map_or(0, |b| b.get());
        let put = match want < now {
            true => Put::Lowered,
            false if raise => Put::Raised,
            false => return Put::Deferred,
        };
        match self.systemd.set(uid, &properties(&keys)).await {
            Ok(()) => {
                self.counters.slice_writes.fetch_add(1, Ordering::Relaxed);
                self.dropins.did_set(uid, &keys);
                if let Some(limits) = limits {
                    self.store.mutate(|l| l.mark_applied(uid, limits));
                }
                tracing::debug!(
                    uid,
                    memory_low = want,
                    "memory guarantee of uid {uid} now {} (capacity.mem_low shared again)",
                    Bytes(want).human()
                );
                if self.dropins.unsettled(uid) {
                    self.settle_later(uid);
                }
                put
            }
            Err(e) => {
                tracing::error!(uid, error = %e, "could not set the memory guarantee of uid {uid} to {}", Bytes(want).human());
                Put::Failed
            }
        }
    }
}
