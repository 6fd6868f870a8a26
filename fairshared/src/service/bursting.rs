//! Bursting into idle CPU (issue 15), wired in: the daemon's sampler reads
//! the host's CPU time and each tracked user's, [`Burster::decide`] says
//! every user's quota, and the quotas that change go onto the slices.
//!
//! * Only `CPUQuota` is ever lifted: one `SetUnitProperties(runtime=true)`
//!   of that key alone, under the user's lock. Memory, tasks and every
//!   other key stay what the allocation says. The ledger is not touched: a
//!   lifted quota is no allocation (capacity, leases, root's setting and
//!   `applied` know nothing of it).
//! * What is on the slice is the drop-in model's ([`crate::defaults`]): a
//!   burst is a runtime value there like any other, so every other change
//!   (a resize, a lease that ends, the last session's close, a reload, the
//!   start-up refresh) compares against it and puts the allocation's quota
//!   back. The next sample lifts it again if the host is still idle.
//! * A restart never leaves a lifted quota behind: the start-up refresh
//!   reads what the running slices carry and sets them to their
//!   allocations, and a new [`Burster`] starts busy. A stop puts every
//!   lifted quota back first ([`Service::end_bursts`], 5 s at most).
//! * The sampler runs only while the policy enables bursting and a tracked
//!   user with a session has a slice; it starts over (busy, no previous
//!   sample) each time it wakes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fairshare_proto::units::Cpus;
use tokio::time::Instant;

use super::Service;
use crate::burst::{Burster, HostState, Sample, UserSample};
use crate::defaults::properties;
use crate::dropin::{Key, Value};
use crate::ledger::Entry;
use crate::systemd::Systemd;
use fairshare_proto::events::cpus_word;

/// Whether the policy lets a user burst: not exempt, `burst` on, and no
/// CPU setting of root's (it binds them: no burst above it).
pub(super) fn may_burst(up: &fairshare_policy::UserPolicy, entry: Option<&Entry>) -> bool {
    up.exempt.is_none()
        && up.fair_default.burst
        && entry
            .and_then(|e| e.admin.as_ref())
            .is_none_or(|a| a.cpu.is_none())
}

/// The previous reading: when, the host's CPU time, each user's.
struct Reading {
    at: Instant,
    host: u64,
    /// CPU time in ns, stall time in µs.
    users: BTreeMap<u32, (u64, Option<u64>)>,
}

/// The sampler's state: the decision's state machine and the last reading.
pub struct BurstState {
    burster: Mutex<Option<Burster>>,
    last: Mutex<Option<Reading>>,
    /// Wakes a sleeping sampler (a session opened, a reload).
    wake: tokio::sync::Notify,
}

impl Default for BurstState {
    fn default() -> BurstState {
        BurstState {
            burster: Mutex::new(None),
            last: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl BurstState {
    /// Something that may start the sampler happened.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`BurstState::poke`] (at once if one came meanwhile).
    pub async fn poked(&self) {
        self.wake.notified().await;
    }

    /// The sampler stops: the next start watches the host anew.
    fn forget(&self) {
        *self.burster.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The quota a slice carries, as CPUs (`None`: no quota, or not known).
pub(super) fn quota_in_force(v: Option<&Option<Value>>) -> Option<Cpus> {
    match v {
        Some(Some(Value::Amount(usec))) => Some(Cpus::from_millis(usec / 1000)),
        _ => None,
    }
}

impl<S: Systemd> Service<S> {
    pub fn bursting(&self) -> &BurstState {
        &self.bursting
    }

    /// How often the sampler samples, and whether it should run at all:
    /// bursting is on and a tracked user with a session has a slice.
    pub fn burst_interval(&self) -> Option<Duration> {
        let policy = self.policy();
        let cfg = policy.bursting();
        if !cfg.enabled {
            self.bursting.forget();
            return None;
        }
        let users: Vec<u32> = self.store.read(|l| {
            l.entries()
                .filter(|(_, e)| !e.sessions.is_empty())
                .map(|(u, _)| *u)
                .collect()
        });
        if !users.iter().any(|u| self.cgroups.cpu_nsec(*u).is_some()) {
            self.bursting.forget();
            return None;
        }
        Some(cfg.interval)
    }

    /// One sample: reads the CPU times, decides, and puts the quotas that
    /// change on the slices. The first sample after a start only reads.
    pub async fn burst_tick(self: &Arc<Self>) {
        // not before the start-up catch-up has compared every slice: a
        // quota lifted meanwhile could be taken as the allocation in force
        if !*self.caught_up.borrow() {
            return;
        }
        let policy = self.policy();
        let cfg = *policy.bursting();
        let tracked: Vec<(u32, String)> = self.store.read(|l| {
            l.entries()
                .filter(|(_, e)| !e.sessions.is_empty())
                .map(|(u, e)| (*u, e.name.clone()))
                .collect()
        });
        let cg = self.cgroups.clone();
        let uids: Vec<u32> = tracked.iter().map(|(u, _)| *u).collect();
        let read = tokio::task::spawn_blocking(move || {
            let users: BTreeMap<u32, (u64, Option<u64>)> = uids
                .iter()
                .filter_map(|u| cg.cpu_nsec(*u).map(|n| (*u, (n, cg.cpu_stall_usec(*u)))))
                .collect();
            (cg.host_cpu_nsec(), users)
        })
        .await;
        let at = Instant::now();
        let (Some(host), users) = (match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "bursting: reading CPU times failed");
                return;
            }
        }) else {
            // no CPU time for the whole host: never lifted
            self.bursting.forget();
            return;
        };
        let previous = self
            .bursting
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Reading {
                at,
                host,
                users: users.clone(),
            });
        let Some(prev) = previous else {
            return;
        };
        let elapsed = at.saturating_duration_since(prev.at);
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let mut samples = Vec::new();
        for (uid, name) in &tracked {
            let (Some((now, stall_now)), Some((then, stall_then))) =
                (users.get(uid), prev.users.get(uid))
            else {
                continue;
            };
            let stalled = stall_now
                .zip(*stall_then)
                .map(|(n, t)| n.saturating_sub(t) as f64 / 1e6 / secs);
            let id = match self.identities.by_uid(*uid, policy.uses_groups()).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(uid, user = %name, error = %e, "bursting: cannot look up the user; not lifted");
                    continue;
                }
            };
            let up = policy.for_user(&id);
            let (allocation, eligible) = self
                .store
                .read(|l| (l.effective(*uid, &up).cpu, may_burst(&up, l.get(*uid))));
            let quota = quota_in_force(self.dropins.in_force(*uid).get(&Key::CpuQuota))
                .unwrap_or(Cpus::MAX);
            samples.push(UserSample {
                uid: *uid,
                // a slice made anew (a reading below the last) used nothing
                usage: now.saturating_sub(*then) as f64 / 1e9 / secs,
                allocation,
                max: up.max.cpu,
                quota,
                eligible,
                stalled,
            });
        }
        let sample = Sample {
            elapsed,
            host_cpus: self.host.cpus.as_f64(),
            host_usage: host.saturating_sub(prev.host) as f64 / 1e9 / secs,
            users: samples,
        };
        let decision = {
            let mut b = self
                .bursting
                .burster
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let b = b.get_or_insert_with(|| Burster::new(cfg));
            let was = b.state();
            b.set_policy(cfg);
            let d = b.decide(&sample);
            if d.state != was {
                tracing::info!(
                    load = d.load,
                    "bursting: the host is {} (load without bursts {:.0}% of {} CPUs): quotas {}",
                    match d.state {
                        HostState::Idle => "idle",
                        HostState::Busy => "busy",
                    },
                    d.load * 100.0,
                    self.host.cpus,
                    match d.state {
                        HostState::Idle => "lifted",
                        HostState::Busy => "back to allocations",
                    }
                );
            }
            d
        };
        for (uid, quota) in decision.changes {
            self.put_quota(uid, quota, &policy).await;
        }
    }

    /// Puts `quota` on the user's slice, `CPUQuota` alone, if they are
    /// still tracked with a session under the same policy; never below
    /// their allocation (which may have changed since the sample), and
    /// above it only while the policy lets them burst.
    async fn put_quota(
        self: &Arc<Self>,
        uid: u32,
        quota: Cpus,
        policy: &Arc<fairshare_policy::Policy>,
    ) {
        let _guard = self.locks.lock(uid).await;
        if !Arc::ptr_eq(policy, &self.policy()) {
            // a reload in between: its refresh set every slice; the next
            // sample decides under the new policy
            return;
        }
        let Some((name, alloc)) = self.store.read(|l| {
            l.get(uid)
                .filter(|e| !e.sessions.is_empty())
                .map(|e| (e.name.clone(), e.limits.cpu))
        }) else {
            return;
        };
        let quota = match policy.bursting().enabled {
            true => quota.max(alloc),
            false => alloc,
        };
        let value = Some(Value::Amount(quota.quota_usec_per_sec()));
        if self.dropins.in_force(uid).get(&Key::CpuQuota) == Some(&value) {
            return;
        }
        let keys = [(Key::CpuQuota, value)];
        match self.systemd.set(uid, &properties(&keys)).await {
            Ok(()) => {
                self.counters.slice_writes.fetch_add(1, Ordering::Relaxed);
                self.dropins.did_set(uid, &keys);
                match quota > alloc {
                    true => {
                        tracing::info!(uid, user = %name, quota = %quota, allocation = %alloc, "bursting: {name} may use up to {quota} {} while the host is idle (allocation {alloc})", cpus_word(quota))
                    }
                    false => {
                        tracing::info!(uid, user = %name, quota = %quota, "bursting: {name} is back to their allocation of {quota} {}", cpus_word(quota))
                    }
                }
                // back at the allocation: the runtime file only repeats the
                // drop-in and goes
                if self.dropins.unsettled(uid) {
                    self.settle(uid).await;
                }
            }
            Err(e) => {
                tracing::warn!(uid, user = %name, error = %e, "bursting: could not set the CPU quota of {name} to {quota} {}", cpus_word(quota));
            }
        }
    }

    /// fairshared stops: every lifted quota goes back to its allocation
    /// (nobody would take it back while fairshared is away).
    pub async fn end_bursts(self: &Arc<Self>) {
        let policy = self.policy();
        if !policy.bursting().enabled {
            return;
        }
        let lifted: Vec<(u32, Cpus)> = self.store.read(|l| {
            l.entries()
                .filter(|(_, e)| !e.sessions.is_empty())
                .map(|(u, e)| (*u, e.limits.cpu))
                .collect()
        });
        for (uid, alloc) in lifted {
            let quota = quota_in_force(self.dropins.in_force(uid).get(&Key::CpuQuota));
            if quota.is_some_and(|q| q > alloc) {
                self.put_quota(uid, alloc, &policy).await;
            }
        }
    }

    /// The quota a user bursts to now, when it is above their allocation
    /// (for `status` and `list`): what their slice carries, from the
    /// drop-in model.
    pub(super) fn burst_quota(&self, uid: u32, alloc: Cpus) -> Option<Cpus> {
        if !self.policy().bursting().enabled {
            return None;
        }
        quota_in_force(self.dropins.in_force(uid).get(&Key::CpuQuota)).filter(|q| *q > alloc)
    }
}
