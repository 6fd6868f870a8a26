//! Request handling: orchestrates the owners of state to answer each
//! request. It owns no state of its own beyond the policy in force; each
//! concern has a small owner:
//!
//! | owner | what it holds |
//! |---|---|
//! | [`Store`] | the ledger, the state file and the save generation |
//! | [`UserLocks`] | one async lock per user, held across a change to them (not its save) |
//! | [`Identities`] | the user directory (NSS) and a short cache of lookups |
//! | [`Admission`] | root-only kinds and per-user rate limits, before dispatch |
//! | [`Exits`] | session processes watched for their end (one epoll set, one task) |
//! | [`Tasks`] | lease timers (by uid) |
//! | [`Counters`] | what the metrics count |
//! | [`Notices`] | events: history, notices choices, event watchers (by uid) |
//! | [`CpuWindow`] | recent samples of each slice's CPU time (CPU "now") |
//! | [`BurstState`] | bursting's state machine and last CPU reading |
//!
//! One file per concern of the requests: `status` (status, list), `resize`
//! (resize, release, set_user), `reload`, `bursting`, `sessions` (open, close, processes
//! that die), `catch_up` (start-up and logind), `leases`, `metrics`. Every
//! handler returns a typed [`ServiceError`]; [`Service::handle`] turns it
//! into the wire's `error` answer, in one place.
//!
//! A change to a user follows one path: take the user's lock, decide in the
//! pure ledger (a [`Change`]), write it to systemd ([`Service::apply_change`]),
//! let go of the lock, then save ([`Service::save_unlocked`], or in the
//! background for sessions).

mod bursting;
mod catch_up;
mod defaults;
mod error;
mod guarantees;
mod leases;
mod metrics;
mod notices;
mod reload;
mod resize;
mod sessions;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
#[cfg(test)]
use std::time::Duration;

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::wire::{Limits, Request, Response};

pub use self::bursting::BurstState;
pub use self::error::ServiceError;
pub use self::metrics::{Counters, Refused};
use self::sessions::Opener;
use crate::admission::Admission;
pub use crate::admission::Peer;
use crate::cgroup::Cgroups;
use crate::cpu_window::CpuWindow;
use crate::defaults::DropIns;
use crate::dropin::Layout;
use crate::events::hub::Notices;
use crate::exits::Exits;
use crate::identity::{Behalf, Identities};
pub use crate::identity::{Directory, IDENTITY_TTL, Nss};
use crate::ledger::{Actor, Change, Entry, Ledger};
use crate::locks::{UserGuard, UserLocks, UserSlots};
use crate::state::StateFile;
use crate::store::{SaveError, Store};
use crate::systemd::Systemd;
use crate::tasks::Tasks;

/// What a handler answers: the wire answer, or why it failed.
type Reply = Result<Response, ServiceError>;

/// At most this many of one user's login processes are moved into their
/// slice at once (the rest of theirs wait; other users' do not).
const ADOPTS_PER_USER: usize = 4;

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
    /// Places for moving a user's login processes into their slice.
    adopt_slots: UserSlots,
    identities: Identities,
    admission: Admission,
    /// Session processes watched for their end, by pid.
    exits: Exits,
    /// Lease timers, by uid.
    leases: Tasks<u32>,
    counters: Counters,
    /// fairshare's drop-ins: the policy default systemd applies itself.
    dropins: Arc<DropIns>,
    /// Set once the start-up catch-up is done (`list` waits for it).
    caught_up: tokio::sync::watch::Sender<bool>,
    /// Why the policy in force is not the one on disk (a bad file), for
    /// `status` and `list`; `None` when they agree.
    policy_problem: RwLock<Option<String>>,
    /// The state directory, where the last good policy is kept.
    last_good: Option<PathBuf>,
    /// Events and notices (issue 14), with the per-user event watchers.
    notices: Arc<Notices>,
    cpu_window: CpuWindow,
    /// Bursting into idle CPU (issue 15): the sampler's state.
    bursting: BurstState,
    /// Other users' slices whose memory guarantee is still to be set.
    regrants: guarantees::Regrants,
    /// One refresh of the drop-ins at a time (start-up, reloads, SIGHUP):
    /// each counts with the files it is about to write.
    refreshing: tokio::sync::Mutex<()>,
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
        let notices_file = state
            .as_ref()
            .map(|s| s.path().with_file_name(crate::events::hub::FILE));
        Service {
            systemd,
            policy: RwLock::new(Arc::new(policy)),
            policy_path: None,
            host,
            cgroups,
            clock: Clock::System,
            store: Arc::new(Store::new(state)),
            locks: UserLocks::default(),
            adopt_slots: UserSlots::new(ADOPTS_PER_USER),
            identities: Identities::new(directory),
            admission: Admission::default(),
            exits: Exits::default(),
            leases: Tasks::default(),
            counters: Counters::default(),
            dropins: Arc::new(DropIns::default()),
            caught_up: tokio::sync::watch::channel(false).0,
            policy_problem: RwLock::new(None),
            last_good: None,
            notices: Arc::new(Notices::new(notices_file, now())),
            cpu_window: CpuWindow::default(),
            bursting: BurstState::default(),
            regrants: guarantees::Regrants::default(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Where fairshare's drop-ins are read and written (the host's
    /// `Layout::system()` in the daemon; without it, tests and benchmarks
    /// keep the same model in memory and write no file).
    pub fn with_dropins(mut self, layout: Layout) -> Service<S> {
        self.dropins = Arc::new(DropIns::new(Some(layout)));
        self
    }

    /// Keeps a copy of every policy that loads under `state_dir` (see
    /// [`crate::lastgood`]).
    pub fn with_last_good(mut self, state_dir: PathBuf) -> Service<S> {
        self.last_good = Some(state_dir);
        self
    }

    /// Says that the policy in force is not the one on disk, and why (a
    /// broken file; fairshared runs on the last one that loaded).
    pub fn set_policy_problem(&self, problem: Option<String>) {
        *self
            .policy_problem
            .write()
            .unwrap_or_else(PoisonError::into_inner) = problem;
    }

    /// Why the policy in force is not the one on disk, if it is not.
    pub fn policy_problem(&self) -> Option<String> {
        self.policy_problem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The drop-in model (tests, benchmarks).
    pub fn dropins(&self) -> &DropIns {
        &self.dropins
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

    /// Whether the ledger can be locked: the last part of the watchdog's
    /// check (see [`crate::health`]).
    pub async fn healthy(&self) -> bool {
        self.store.healthy().await
    }

    /// Saves every change made so far (at shutdown, after background saves).
    pub async fn flush(&self) -> Result<(), SaveError> {
        if let Err(e) = self.notices.save().await {
            tracing::error!(error = %e, "could not save the event history");
        }
        self.store.save().await
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Answers one request from `peer`.
    pub async fn handle(self: &Arc<Self>, peer: Peer, req: Request) -> Response {
        // The watchdog's own status requests (see crate::health) are not
        // counted: the metrics count what clients ask.
        let counted = !peer.is_this_daemon();
        if counted {
            self.counters.request(req.kind());
        }
        match self.answer(peer, req).await {
            Ok(r) => r,
            Err(e) => {
                if counted {
                    self.counters.failed(&e);
                }
                e.into()
            }
        }
    }

    /// Whether a connection from `peer` may be read (see
    /// [`Admission::admit_connection`]); `Some`: the answer to send instead.
    pub fn admit_connection(&self, peer: Peer) -> Option<Response> {
        let denied = self.admission.admit_connection(peer).err()?;
        let e = ServiceError::from(denied);
        self.counters.failed(&e);
        Some(e.into())
    }

    /// Admission, then the handler of the request's kind.
    async fn answer(self: &Arc<Self>, peer: Peer, req: Request) -> Reply {
        self.admission.admit(peer, req.kind())?;
        match req {
            Request::Status { user } => self.status(peer, user).await,
            Request::RequestResources(args) => {
                let resize = args.parse().map_err(ServiceError::BadValue)?;
                let id = self.identity_for(peer.uid, peer.behalf()).await?;
                self.resize(id, resize, Actor::User(peer.uid)).await
            }
            Request::Release => {
                let id = self.identity_for(peer.uid, peer.behalf()).await?;
                self.release(id, Actor::User(peer.uid), peer.uid).await
            }
            Request::SetUser {
                user,
                args,
                release,
                force,
            } => self.set_user(peer, user, args, release, force).await,
            Request::List => Ok(self.list().await),
            Request::SessionOpen(s) => self.session_open(Opener::Pam(peer), s).await,
            Request::SessionClose(s) => self.session_close(s).await,
            Request::Reload => self.reload_from_disk().await,
            Request::Metrics => Ok(Response::Metrics {
                text: self.metrics().await,
            }),
            Request::Events(q) => self.events(peer, q).await,
            Request::Notices(c) => self.set_notices(peer, c).await,
        }
    }

    /// The user with their groups (for root's requests and the daemon's
    /// own work).
    async fn identity(&self, uid: u32) -> Result<Identity, ServiceError> {
        self.identity_for(uid, Behalf::Root).await
    }

    async fn identity_for(&self, uid: u32, behalf: Behalf) -> Result<Identity, ServiceError> {
        Ok(self.identities.by_uid_for(uid, true, behalf).await?)
    }

    /// The user and the policy in force, consistent with each other: their
    /// groups are looked up only when that policy has group rules. For
    /// root's requests (logins) and the daemon's own work.
    async fn user_and_policy(&self, uid: u32) -> Result<(Identity, Arc<Policy>), ServiceError> {
        self.user_and_policy_for(uid, Behalf::Root).await
    }

    /// The user a request from `peer` is about, with the policy in force: the
    /// caller, or the one named. Root may name anyone; anyone else only
    /// themselves (by uid or name), refused with `not_yours` before anyone
    /// but the caller is looked up.
    async fn subject(
        &self,
        peer: Peer,
        user: Option<&fairshare_proto::wire::UserRef>,
        not_yours: impl Fn() -> ServiceError,
    ) -> Result<(Identity, Arc<Policy>), ServiceError> {
        match user {
            Some(r) if peer.is_root() => Ok((self.identities.resolve(r).await?, self.policy())),
            Some(fairshare_proto::wire::UserRef::Uid(uid)) if *uid != peer.uid => Err(not_yours()),
            _ => {
                let mine = self.user_and_policy_for(peer.uid, peer.behalf()).await?;
                if user.is_some_and(|r| !crate::identity::names(r, &mine.0)) {
                    return Err(not_yours());
                }
                Ok(mine)
            }
        }
    }

    /// [`Service::user_and_policy`] on behalf of `behalf`.
    async fn user_and_policy_for(
        &self,
        uid: u32,
        behalf: Behalf,
    ) -> Result<(Identity, Arc<Policy>), ServiceError> {
        for _ in 0..3 {
            let policy = self.policy();
            let id = self
                .identities
                .by_uid_for(uid, policy.uses_groups(), behalf)
                .await?;
            // a reload in between: look again under the new policy
            if Arc::ptr_eq(&policy, &self.policy()) {
                return Ok((id, policy));
            }
        }
        Ok((self.identity_for(uid, behalf).await?, self.policy()))
    }

    /// Saves the ledger after a change to a user, without their lock: the
    /// change is in the ledger and in systemd, and the save covers it
    /// whoever writes it. The write (fsync, rename, fsync) can be slow, and
    /// nothing of the user's, their logins least of all, waits for it.
    async fn save_unlocked(&self, guard: UserGuard) -> Result<(), ServiceError> {
        drop(guard);
        Ok(self.store.save().await?)
    }

    /// Puts a change on the user's slice, only the keys that differ from
    /// what is in force there (no D-Bus call when none does: a login whose
    /// slice started from the right drop-in), and logs it; `by` is who made
    /// it, `why` what for. The memory guarantees are shared again first
    /// ([`Ledger::regrant`]): the user's slice gets the guarantee that fits
    /// in `capacity.mem_low` with the rest of the change, and other users
    /// whose guarantee moved get theirs after the answer.
    async fn apply_change(
        self: &Arc<Self>,
        id: &Identity,
        change: &Change,
        on_refusal: OnRefusal,
        by: u32,
        why: &str,
    ) -> Result<(), ServiceError> {
        let policy = self.policy();
        let up = policy.for_user(id);
        let pool = self.pool(&policy);
        // A user bursting keeps their lifted quota through a change that
        // leaves their CPU allocation as it was (another login, a resize of
        // memory) while they still have a session and may burst: the
        // sampler decides when it goes, not a login. Their last logout puts
        // it back (the sampler looks only at users with sessions).
        let (slice, mut others, may_keep, held) = self.store.mutate(|l| {
            let others = l.regrant(pool);
            let e = l.get(id.uid);
            let may_keep = e.is_some_and(|e| !e.sessions.is_empty()) && bursting::may_burst(&up, e);
            let held = e.is_some_and(Entry::holds_guarantee);
            (e.map(|e| e.slice_limits()), others, may_keep, held)
        });
        others.retain(|u| *u != id.uid);
        // no entry left: logged out with nothing set, so no guarantee held
        let new = slice.unwrap_or(Limits {
            mem_low: None,
            ..change.new
        });
        let (base, mut target) = self.target(&up, &new);
        if may_keep
            && let Some(q) = self.burst_quota(id.uid, change.new.cpu)
            && change.old.is_some_and(|o| o.cpu == change.new.cpu)
        {
            target.insert(
                crate::dropin::Key::CpuQuota,
                Some(crate::dropin::Value::Amount(q.quota_usec_per_sec())),
            );
        }
        let sources = || format!("{}: {}", id.name, up.sources.join(", "));
        match self
            .put_on_slice(id.uid, base, sources, &target, defaults::Files::Later)
            .await
        {
            Ok(_) => {
                self.store.mutate(|l| l.mark_applied(id.uid, new));
                self.regrant_later(others);
            }
            Err(e) => {
                if let OnRefusal::Restore(prev) = on_refusal {
                    // the guarantees as they were before the change
                    let back = self.store.mutate(|l| {
                        l.restore(id.uid, prev);
                        l.regrant(pool)
                    });
                    others.extend(back);
                }
                self.regrant_later(others);
                // the guarantee at least is tried again (the total counts
                // what the ledger says, not what a failed call left)
                self.regrant_after([id.uid]);
                tracing::error!(
                    uid = id.uid,
                    user = %id.name,
                    error = %e,
                    "could not apply the limits of {} (uid {}): {e}",
                    id.name,
                    id.uid
                );
                return Err(ServiceError::Apply {
                    uid: id.uid,
                    source: e,
                });
            }
        }
        // cut down by capacity.mem_low (not merely not held: logged out)
        if held && new.mem_low != change.new.mem_low {
            let wanted = change.new.mem_low.unwrap_or_default();
            let got = new.mem_low.unwrap_or_default();
            tracing::info!(
                uid = id.uid,
                user = %id.name,
                memory_low = got.get(),
                wanted = wanted.get(),
                "memory guarantee of {} (uid {}): {} of the {} wanted (capacity.mem_low {}, when_full: {})",
                id.name,
                id.uid,
                got.human(),
                wanted.human(),
                pool.total.human(),
                when_full(pool.mode)
            );
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
                "allocation of {} (uid {}) changed ({why}): {old} -> {}",
                id.name,
                id.uid,
                change.new
            );
        }
        Ok(())
    }
}

/// `capacity.mem_low.when_full` as the policy spells it.
fn when_full(mode: fairshare_policy::WhenFull) -> &'static str {
    match mode {
        fairshare_policy::WhenFull::Scale => "scale",
        fairshare_policy::WhenFull::FirstCome => "first_come",
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bursting;
#[cfg(test)]
mod tests_notices;
