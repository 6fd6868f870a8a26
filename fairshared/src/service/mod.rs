//! Request handling: orchestrates the owners of state to answer each
//! request. It owns no state of its own beyond the policy in force; each
//! concern has a small owner:
//!
//! | owner | what it holds |
//! |---|---|
//! | [`Store`] | the ledger, the state file and the save generation |
//! | [`UserLocks`] | one async lock per user, held across a change to them |
//! | [`Identities`] | the user directory (NSS) and a short cache of lookups |
//! | [`Admission`] | root-only kinds and per-user rate limits, before dispatch |
//! | [`Tasks`] | session process watchers (by pid), lease timers (by uid) |
//! | [`Counters`] | what the metrics count |
//! | [`CpuWindow`] | recent samples of each slice's CPU time (CPU "now") |
//!
//! One file per concern of the requests: `status` (status, list), `resize`
//! (resize, release, set_user), `reload`, `sessions` (open, close, processes
//! that die), `catch_up` (start-up and logind), `leases`, `metrics`. Every
//! handler returns a typed [`ServiceError`]; [`Service::handle`] turns it
//! into the wire's `error` answer, in one place.
//!
//! A change to a user follows one path: take the user's lock, decide in the
//! pure ledger (a [`Change`]), write it to systemd ([`Service::apply_change`]),
//! then save ([`Service::commit`], or in the background for sessions).

mod catch_up;
mod error;
mod leases;
mod metrics;
mod reload;
mod resize;
mod sessions;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
#[cfg(test)]
use std::time::Duration;

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::wire::{Request, Response};

pub use self::error::ServiceError;
pub use self::metrics::{Counters, Refused};
use crate::admission::Admission;
pub use crate::admission::Peer;
use crate::cgroup::Cgroups;
use crate::cpu_window::CpuWindow;
use crate::identity::Identities;
pub use crate::identity::{Directory, IDENTITY_TTL, Nss};
use crate::ledger::{Actor, Change, Entry, Ledger};
use crate::locks::UserLocks;
use crate::state::StateFile;
use crate::store::{SaveError, Store};
use crate::systemd::Systemd;
use crate::tasks::Tasks;

/// What a handler answers: the wire answer, or why it failed.
type Reply = Result<Response, ServiceError>;

/// Unix time now, in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the service reads Unix time from: the system clock, or in tests a
/// clock that moves with tokio's (paused) time, so lease timers and
/// expiry times can be checked to the second.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    System,
    #[cfg(test)]
    Tokio {
        unix: u64,
        at: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that reads the system time now and then moves with tokio's.
    #[cfg(test)]
    pub fn tokio() -> Clock {
        Clock::Tokio {
            unix: now(),
            at: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        match self {
            Clock::System => now(),
            #[cfg(test)]
            Clock::Tokio { unix, at } => unix + at.elapsed().as_secs(),
        }
    }
}

/// What to do with the ledger when systemd refuses a change.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per change and moved into apply_change, never stored"
)]
enum OnRefusal {
    /// Put this entry back (a resize is all or nothing).
    Restore(Option<Entry>),
    /// Keep the ledger's record (a login is counted either way).
    Keep,
}

pub struct Service<S: Systemd> {
    systemd: S,
    policy: RwLock<Arc<Policy>>,
    /// Where `reload` reads the policy from.
    policy_path: Option<PathBuf>,
    host: HostResources,
    cgroups: Cgroups,
    clock: Clock,
    store: Arc<Store>,
    locks: UserLocks,
    identities: Identities,
    admission: Admission,
    /// Watches on session processes, by pid (see [`crate::proc`]).
    watchers: Tasks<u32>,
    /// Lease timers, by uid.
    leases: Tasks<u32>,
    counters: Counters,
    cpu_window: CpuWindow,
}

impl<S: Systemd> Service<S> {
    pub fn new(
        systemd: S,
        directory: Arc<dyn Directory>,
        policy: Policy,
        host: HostResources,
        cgroups: Cgroups,
        state: Option<StateFile>,
    ) -> Service<S> {
        Service {
            systemd,
            policy: RwLock::new(Arc::new(policy)),
            policy_path: None,
            host,
            cgroups,
            clock: Clock::System,
            store: Arc::new(Store::new(state)),
            locks: UserLocks::default(),
            identities: Identities::new(directory),
            admission: Admission::default(),
            watchers: Tasks::default(),
            leases: Tasks::default(),
            counters: Counters::default(),
            cpu_window: CpuWindow::default(),
        }
    }

    /// How long user lookups are reused (tests).
    #[cfg(test)]
    pub(crate) fn with_identity_ttl(mut self, ttl: Duration) -> Service<S> {
        self.identities.set_ttl(ttl);
        self
    }

    /// Where Unix time comes from (tests).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Service<S> {
        self.clock = clock;
        self
    }

    /// Where `reload` reads the policy from.
    pub fn with_policy_path(mut self, path: PathBuf) -> Service<S> {
        self.policy_path = Some(path);
        self
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn systemd(&self) -> &S {
        &self.systemd
    }

    /// A copy of the ledger (for tests and the benchmarks).
    pub fn ledger(&self) -> Ledger {
        self.store.snapshot()
    }

    /// Whether the ledger can be locked: the watchdog's health check.
    pub async fn healthy(&self) -> bool {
        self.store.healthy().await
    }

    /// Saves every change made so far (at shutdown, after background saves).
    pub async fn flush(&self) -> Result<(), SaveError> {
        self.store.save().await
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Answers one request from `peer`.
    pub async fn handle(self: &Arc<Self>, peer: Peer, req: Request) -> Response {
        self.counters.request(req.kind());
        match self.answer(peer, req).await {
            Ok(r) => r,
            Err(e) => {
                self.counters.failed(&e);
                e.into()
            }
        }
    }

    /// Admission, then the handler of the request's kind.
    async fn answer(self: &Arc<Self>, peer: Peer, req: Request) -> Reply {
        self.admission.admit(peer, req.kind())?;
        match req {
            Request::Status { user } => self.status(peer, user).await,
            Request::RequestResources(args) => {
                let resize = args.parse().map_err(ServiceError::BadValue)?;
                let id = self.identity(peer.uid).await?;
                self.resize(id, resize, Actor::User(peer.uid)).await
            }
            Request::Release => {
                let id = self.identity(peer.uid).await?;
                self.release(id, None).await
            }
            Request::SetUser {
                user,
                args,
                release,
                force,
            } => self.set_user(peer, user, args, release, force).await,
            Request::List => Ok(self.list().await),
            Request::SessionOpen(s) => self.session_open(s).await,
            Request::SessionClose(s) => self.session_close(s).await,
            Request::Reload => self.reload_from_disk().await,
            Request::Metrics => Ok(Response::Metrics {
                text: self.metrics().await,
            }),
        }
    }

    /// The user with their groups.
    async fn identity(&self, uid: u32) -> Result<Identity, ServiceError> {
        Ok(self.identities.by_uid(uid, true).await?)
    }

    /// The user and the policy in force, consistent with each other: their
    /// groups are looked up only when that policy has group rules.
    async fn user_and_policy(&self, uid: u32) -> Result<(Identity, Arc<Policy>), ServiceError> {
        for _ in 0..3 {
            let policy = self.policy();
            let id = self.identities.by_uid(uid, policy.uses_groups()).await?;
            // a reload in between: look again under the new policy
            if Arc::ptr_eq(&policy, &self.policy()) {
                return Ok((id, policy));
            }
        }
        Ok((self.identity(uid).await?, self.policy()))
    }

    /// [`Service::apply_change`], then saves the ledger: the answer promises
    /// the change is on disk.
    async fn commit(
        &self,
        id: &Identity,
        change: &Change,
        on_refusal: OnRefusal,
        by: u32,
        why: &str,
    ) -> Result<(), ServiceError> {
        self.apply_change(id, change, on_refusal, by, why).await?;
        Ok(self.store.save().await?)
    }

    /// Writes a change to systemd (when the slice needs it) and logs it;
    /// `by` is who made it, `why` what for.
    async fn apply_change(
        &self,
        id: &Identity,
        change: &Change,
        on_refusal: OnRefusal,
        by: u32,
        why: &str,
    ) -> Result<(), ServiceError> {
        let applied = self.store.read(|l| l.get(id.uid).and_then(|e| e.applied));
        if change.needs_apply(applied.as_ref()) {
            if let Err(e) = self.systemd.apply(id.uid, &change.new).await {
                if let OnRefusal::Restore(prev) = on_refusal {
                    self.store.mutate(|l| l.restore(id.uid, prev));
                }
                tracing::error!(uid = id.uid, user = %id.name, error = %e, "could not apply limits");
                return Err(ServiceError::Apply {
                    uid: id.uid,
                    source: e,
                });
            }
            self.store.mutate(|l| l.mark_applied(id.uid, change.new));
        }
        if change.alters_allocation() {
            let old = change
                .old
                .map_or_else(|| "none".to_string(), |o| o.to_string());
            tracing::info!(
                uid = id.uid,
                user = %id.name,
                by,
                reason = why,
                old = %old,
                new = %change.new,
                cpu_quota_usec = change.new.cpu.quota_usec_per_sec(),
                memory_max = change.new.mem.get(),
                tasks_max = change.new.tasks.get(),
                "allocation of {} changed ({why}): {old} -> {}",
                id.name,
                change.new
            );
        }
        Ok(())
    }

    /// Forgets a user and lifts the limits fairshare set on their slice (a
    /// user who became exempt or no longer exists). Call with their lock.
    async fn drop_user(&self, uid: u32) {
        self.store.mutate(|l| l.remove(uid));
        if let Err(e) = self.systemd.reset(uid).await {
            tracing::error!(uid, error = %e, "could not lift limits");
        }
    }
}

#[cfg(test)]
mod tests;
