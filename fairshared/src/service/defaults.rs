//! The policy default from systemd's own drop-ins (issue 12,
//! docs/design/defaults-from-systemd.md): each user's slice is kept equal to
//! what fairshare's files say plus their runtime values, with one
//! `SetUnitProperties` of only the keys that differ, and none at all for a
//! login whose slice started from the right files.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fairshare_policy::{Identity, UserPolicy};
use fairshare_proto::wire::Limits;

use super::Service;
use crate::defaults::{self, Base, Values, properties, values_of};
use crate::dropin::Key;
use crate::identity::IdentityError;
use crate::systemd::{Systemd, SystemdError};

/// When the files of a change are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Files {
    /// In the background, after the answer (logins, logouts, resizes: a
    /// write with fsync costs milliseconds).
    Later,
}

impl<S: Systemd> Service<S> {
    /// What a user's file and slice should say: their base (policy
    /// default, or exempt) and the values `alloc` gives the slice.
    pub(super) fn target(&self, up: &UserPolicy, alloc: &Limits) -> (Base, Values) {
        let own = self.dropins.own();
        match &up.exempt {
            Some(_) => (Base::Exempt, own),
            None => {
                let io = crate::iodisk::io_of(&up.fair_default);
                (Base::of(&up.default, &io), values_of(alloc, &io, &own))
            }
        }
    }

    /// Makes the user's slice carry `target` and their own file say `base`:
    /// one `SetUnitProperties` with the keys that differ from what is in
    /// force (none when the slice already has them), then the file and the
    /// runtime control files that only repeat it (see
    /// [`crate::defaults`]). Returns the keys set. Call with the user's lock.
    pub(super) async fn put_on_slice(
        self: &Arc<Self>,
        uid: u32,
        base: Base,
        why: impl FnOnce() -> String,
        target: &Values,
        files: Files,
    ) -> Result<Vec<Key>, SystemdError> {
        let keys = self.dropins.differing(uid, target);
        if !keys.is_empty() {
            self.systemd.set(uid, &properties(&keys)).await?;
            self.counters.slice_writes.fetch_add(1, Ordering::Relaxed);
            self.dropins.did_set(uid, &keys);
        }
        if !self.dropins.file_is(uid, &base) {
            self.dropins.want(uid, base, why());
        }
        if self.dropins.unsettled(uid) {
            match files {
                Files::Later => self.settle_later(uid),
            }
        }
        Ok(keys.into_iter().map(|(k, _)| k).collect())
    }

    /// Writes the user's pending file and unlinks the runtime control files
    /// that only repeat the files. Call with the user's lock.
    pub(super) async fn settle(&self, uid: u32) {
        let d = self.dropins.clone();
        match tokio::task::spawn_blocking(move || d.settle(uid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(uid, error = %e, "could not write the user's drop-in or remove their runtime control files")
            }
            Err(e) => tracing::error!(uid, error = %e, "writing the user's drop-in"),
        }
    }

    /// [`Service::settle`] after the answer, under the user's lock.
    pub(super) fn settle_later(self: &Arc<Self>, uid: u32) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(s) = this.upgrade() {
                let _guard = s.locks.lock(uid).await;
                s.settle(uid).await;
            }
        });
    }

    /// `user.slice` carries the total of the memory guarantees
    /// (`capacity.mem_low`) while the policy gives any: on cgroup v2 a
    /// user's `memory.low` counts only as far as its parents' do
    /// (docs/design/fair-share.md, 1b). In its drop-in (for the next boot)
    /// and on the running slice, set only when it differs. A policy that
    /// no longer gives guarantees removes fairshare's drop-in and puts the
    /// running slice back to systemd's default, 0; `user.slice` is left
    /// alone when fairshare never set it.
    pub(super) async fn guarantee_user_slice(&self, policy: &fairshare_policy::Policy) {
        let want = policy
            .gives_guarantees()
            .then(|| policy.mem_low_capacity(self.host).get())
            .filter(|b| *b > 0);
        let had = match self.dropins.layout().cloned() {
            Some(l) => match tokio::task::spawn_blocking(move || l.write_user_slice(want)).await {
                Ok(Ok(had)) => had,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not write user.slice's drop-in with the total of the memory guarantees");
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "writing user.slice's drop-in");
                    false
                }
            },
            None => false,
        };
        if want.is_none() && !had {
            return;
        }
        let target = want.unwrap_or(0);
        match self.systemd.memory_low("user.slice").await {
            Ok(Some(n)) if n == target => {}
            Ok(_) => match self
                .systemd
                .set_unit(
                    "user.slice",
                    &[("MemoryLow", crate::dropin::PropertyValue::U64(target))],
                )
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        memory_low = target,
                        "user.slice: MemoryLow={target} (the total of the users' memory guarantees)"
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not set MemoryLow on user.slice; users' memory guarantees are not honoured on cgroup v2 until it is set (fairshare-ctl reload tries again)")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read user.slice's MemoryLow")
            }
        }
    }

    /// An exempt user logs in: their slice gets systemd's own defaults (a
    /// user of an exempt group never seen before started with the policy
    /// default). Nothing to do, and no lock taken, when their file and
    /// slice already say so.
    pub(super) async fn lift_exempt(self: &Arc<Self>, id: &Identity, up: &UserPolicy) {
        let own = self.dropins.own();
        if self.dropins.file_is(id.uid, &Base::Exempt)
            && self.dropins.differing(id.uid, &own).is_empty()
        {
            return;
        }
        let _guard = self.locks.lock(id.uid).await;
        let why = || match &up.exempt {
            Some(ex) => format!("{}: {ex}", id.name),
            None => id.name.clone(),
        };
        match self
            .put_on_slice(id.uid, Base::Exempt, why, &own, Files::Later)
            .await
        {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(uid = id.uid, user = %id.name, "{} is exempt: their slice is back to systemd's own defaults", id.name)
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(uid = id.uid, user = %id.name, error = %e, "could not lift the limits of an exempt user")
            }
        }
    }

    /// Puts the policy in force on disk and on every running slice: plans G
    /// and every own file, sets the running slices whose values change (one
    /// call each, only the keys that change), writes the files, then
    /// removes the runtime control files that only repeat them. Users whose
    /// slice does not run get the files alone. Re-evaluates the ledger on
    /// the way: resizes clamped to a lowered maximum, users who became
    /// exempt or no longer exist let go. Returns the names of the users
    /// whose limits changed.
    pub(super) async fn refresh(self: &Arc<Self>) -> Vec<String> {
        let _one = self.refreshing.lock().await;
        let policy = self.policy();
        self.guarantee_user_slice(&policy).await;
        let tracked: Vec<u32> = self.store.read(|l| l.entries().map(|(u, _)| *u).collect());
        let logind: Vec<u32> = match self.systemd.logind_users().await {
            Ok(u) => u.into_iter().map(|(uid, _)| uid).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list logind's users; only tracked users' slices are set");
                Vec::new()
            }
        };
        let known = self.dropins.known_uids();
        let running: BTreeSet<u32> = tracked
            .iter()
            .chain(&logind)
            .copied()
            .chain(
                known
                    .iter()
                    .copied()
                    .filter(|u| self.dropins.has_runtime(*u)),
            )
            .collect();
        let extra: Vec<u32> = running.iter().chain(&known).copied().collect();
        let dir = self.identities.directory();
        let plan = {
            let policy = policy.clone();
            match tokio::task::spawn_blocking(move || defaults::plan(&policy, &*dir, &extra)).await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "could not plan the policy's drop-ins");
                    return Vec::new();
                }
            }
        };
        let own = self.dropins.own();
        // Serving with the last good policy: the drop-ins stay as they are
        // until the file is fixed. Otherwise every change to a slice from
        // now until the files are written (this loop's, and a resize's or a
        // login's meanwhile) counts with the new files too.
        let broken = self.policy_problem().is_some();
        if !broken {
            self.dropins.expect(Some(plan.clone()));
        }
        // the guarantees under the new capacity.mem_low, so that the loop
        // sets each slice's with the rest of its values
        let pool = self.pool(&policy);
        let mut regranted: BTreeSet<u32> =
            self.store.mutate(|l| l.regrant(pool)).into_iter().collect();
        let mut changed = Vec::new();
        for uid in &running {
            let uid = *uid;
            let _guard = self.locks.lock(uid).await;
            let tracked_here = self.store.read(|l| l.get(uid).is_some());
            let mut name = self
                .store
                .read(|l| l.get(uid).map(|e| e.name.clone()))
                .unwrap_or_else(|| uid.to_string());
            let alloc = match self.identities.by_uid(uid, policy.uses_groups()).await {
                Ok(id) => {
                    name.clone_from(&id.name);
                    let up = policy.for_user(&id);
                    if let Some(ex) = &up.exempt {
                        if tracked_here {
                            tracing::info!(uid, user = %id.name, reason = %ex, "{} is now exempt; lifting their limits", id.name);
                            self.store.mutate(|l| l.remove(uid));
                            self.events_cancelled(uid);
                            changed.push(name.clone());
                        }
                        None
                    } else {
                        let now = self.now();
                        // a lease that ran out (while fairshared was stopped,
                        // or just now) ends here, before the slice is compared
                        if let Some(c) = self.store.mutate(|l| l.expire_due(uid, now, &up)) {
                            self.counters.leases_expired.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(uid, user = %id.name, old = %c.old.map(|o| o.to_string()).unwrap_or_default(), new = %c.new, "a lease of {} has run out: {} -> {}", id.name, c.old.map(|o| o.to_string()).unwrap_or_default(), c.new);
                            changed.push(name.clone());
                        }
                        let repolicied = self
                            .store
                            .mutate(|l| l.repolicy(uid, &up, now, policy.max_lease()));
                        // a new leases.max_duration may have given a resize an end
                        self.rearm_lease(uid);
                        if let Some(c) = repolicied {
                            tracing::info!(uid, user = %id.name, old = %c.old.map(|o| o.to_string()).unwrap_or_default(), new = %c.new, "limits of {} changed by the policy: {} -> {}", id.name, c.old.map(|o| o.to_string()).unwrap_or_default(), c.new);
                            changed.push(name.clone());
                        }
                        Some(self.store.read(|l| l.effective(uid, &up)))
                    }
                }
                Err(e @ (IdentityError::Lookup(_) | IdentityError::Task(_))) => {
                    // NSS down: nobody is dropped for that; their slice
                    // stays as it is until the next refresh
                    tracing::warn!(uid, error = %e, "cannot look up uid {uid} ({e}); their slice is left as it is");
                    continue;
                }
                Err(_) => {
                    if tracked_here {
                        tracing::warn!(
                            uid,
                            "uid {uid} no longer exists: dropping its allocation; its slice goes back to the policy default"
                        );
                        self.store.mutate(|l| l.remove(uid));
                        self.events_cancelled(uid);
                        changed.push(name.clone());
                    }
                    None
                }
            };
            let target = match (&plan.base(uid), alloc) {
                // an allocation keeps the IO limits of the user's base
                (Base::Limits(s), Some(a)) => defaults::values_of_settings(
                    &crate::dropin::Settings::from_limits(&a).io_from(s),
                    &own,
                ),
                (Base::Global, Some(a)) => defaults::values_of_settings(
                    &crate::dropin::Settings::from_limits(&a).io_from(&plan.global),
                    &own,
                ),
                (Base::Exempt, Some(a)) => values_of(&a, &Default::default(), &own),
                (Base::Limits(s), None) => defaults::values_of_settings(s, &own),
                (Base::Exempt, None) => own.clone(),
                (Base::Global, None) => defaults::values_of_settings(&plan.global, &own),
            };
            let keys = self.dropins.differing(uid, &target);
            if keys.is_empty() {
                continue;
            }
            match self.systemd.set(uid, &properties(&keys)).await {
                Ok(()) => {
                    self.counters.slice_writes.fetch_add(1, Ordering::Relaxed);
                    self.dropins.did_set(uid, &keys);
                    if let Some(a) = alloc {
                        self.store.mutate(|l| l.mark_applied(uid, a));
                    }
                    if !changed.contains(&name) {
                        changed.push(name);
                    }
                }
                Err(e) => {
                    tracing::error!(uid, error = %e, "could not set the policy on a running slice");
                    // a tracked user's limits are set again soon
                    if alloc.is_some() {
                        self.retry_lease(uid, super::leases::RETRY);
                    }
                }
            }
        }
        // and again after the loop's clamps, expiries and removals; a
        // slice the loop left alone (its user could not be looked up) gets
        // its guarantee here (no call when it has it already)
        regranted.extend(self.store.mutate(|l| l.regrant(pool)));
        for uid in regranted {
            if matches!(
                self.put_guarantee(uid).await,
                super::guarantees::Put::Lowered | super::guarantees::Put::Raised
            ) {
                let name = self.store.read(|l| l.get(uid).map(|e| e.name.clone()));
                changed.extend(name);
            }
        }
        let d = self.dropins.clone();
        let p = plan.clone();
        let written = tokio::task::spawn_blocking(move || match broken {
            false => d.write_all(&p.global, &p.global_why, &p.users).map(Some),
            true => Ok(None),
        })
        .await;
        self.dropins.expect(None);
        match written {
            Ok(Ok(None)) => tracing::warn!(
                "the policy on disk has errors: fairshare's drop-ins are left as they are"
            ),
            Ok(Ok(Some(w))) => {
                for f in &w.foreign {
                    tracing::warn!(path = %f.display(), "{} is not fairshare's: left as it is (see fairshared --check)", f.display());
                }
                if !w.written.is_empty() || !w.removed.is_empty() {
                    tracing::info!(
                        written = w.written.len(),
                        removed = w.removed.len(),
                        "policy defaults written to systemd's drop-ins"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not write the policy default drop-ins")
            }
            Err(e) => tracing::error!(error = %e, "writing the policy default drop-ins"),
        }
        let mut all: BTreeSet<u32> = running;
        all.extend(self.dropins.known_uids());
        for uid in all {
            if self.dropins.unsettled(uid) {
                let _guard = self.locks.lock(uid).await;
                self.settle(uid).await;
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }
}
