//! Request handling: the glue between the ledger, the policy, systemd, the
//! user directory and the state file.
//!
//! Locking: each user has an async lock, held for the whole of a change to
//! that user (ledger update, systemd call, save), so one user's requests are
//! serialised. The ledger itself sits behind a plain mutex that is only held
//! for in-memory updates, never across a D-Bus call or a disk write, so many
//! users at once never queue behind one slow call.
//!
//! Saving: every ledger change bumps a generation counter. A request that
//! changed something waits until a save covering its generation has reached
//! the disk; concurrent requests share one write. Logins and logouts are the
//! exception: they are answered once systemd has the limits, and the save
//! follows in the background (`save_later`), because their record can be
//! rebuilt from logind if fairshared dies before it lands, and the write
//! (fsync, rename, fsync) would otherwise be the largest part of a login.
//!
//! Sessions (open, close, processes that die, catching up with logind) are in
//! [`sessions`](self::sessions); leases in `leases`; the Prometheus exposition
//! in `metrics`.

mod leases;
mod metrics;
mod sessions;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use fairshare_policy::{HostResources, Identity, Policy, UserPolicy};
use fairshare_proto::units::format_duration;
use fairshare_proto::wire::{
    ErrorCode, ErrorReply, Request, Resize, Response, Source, StatusInfo, Success, UserList,
    UserRef,
};

use crate::cgroup::Cgroups;
use crate::ledger::{Actor, Change, Entry, Ledger, Refusal, ResizeRequest};
use crate::state::StateFile;
use crate::systemd::{Systemd, slice_name};
use crate::users;

pub use metrics::Counters;

/// Where user names and groups come from (NSS in the daemon, a table in tests).
pub trait Directory: Send + Sync + 'static {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, String>;
    /// The same without the user's groups (`groups` empty), for policies
    /// without group rules.
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, String> {
        self.by_uid(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, String>;
}

/// The system's user database, through NSS.
pub struct Nss;

impl Directory for Nss {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, String> {
        users::by_uid(uid)
    }
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, String> {
        users::by_uid_without_groups(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, String> {
        users::by_name(name)
    }
}

/// The other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    fn is_root(self) -> bool {
        self.uid == 0
    }
}

type Reply = Result<Response, Response>;

/// How long a user lookup (NSS: name and groups) is reused. Requests come
/// in bursts (a login's open and close, a storm of logins, a `status` loop,
/// `list` and metrics over every user): they ask NSS, which may be LDAP or
/// a varlink call into systemd, once. Group changes show within this time.
pub const IDENTITY_TTL: Duration = Duration::from_secs(2);
/// At most this many user lookups are kept.
const IDENTITY_CACHE: usize = 1024;

fn fail(code: ErrorCode, msg: impl Into<String>) -> Response {
    Response::error(code, msg)
}

pub struct Service<S: Systemd> {
    systemd: S,
    directory: Arc<dyn Directory>,
    policy: RwLock<Arc<Policy>>,
    policy_path: Option<PathBuf>,
    host: HostResources,
    cgroups: Cgroups,
    ledger: Mutex<Ledger>,
    generation: AtomicU64,
    persisted: tokio::sync::Mutex<u64>,
    state: Option<StateFile>,
    locks: Mutex<HashMap<u32, Weak<tokio::sync::Mutex<()>>>>,
    /// Recent user lookups, by uid (see [`IDENTITY_TTL`]), and whether they
    /// include the user's groups.
    identities: Mutex<HashMap<u32, (std::time::Instant, Identity, bool)>>,
    identity_ttl: Duration,
    /// Watches on session processes, by pid (see [`crate::proc`]).
    watchers: Mutex<HashMap<u32, tokio::task::AbortHandle>>,
    /// Lease timers, by uid.
    leases: Mutex<HashMap<u32, tokio::task::AbortHandle>>,
    counters: Counters,
    /// Per-user rate limits: every request, and changes that reach systemd.
    limiter: Mutex<(crate::ratelimit::Limiter, crate::ratelimit::Limiter)>,
    limited_log: crate::ratelimit::LogThrottle,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
            directory,
            policy: RwLock::new(Arc::new(policy)),
            policy_path: None,
            host,
            cgroups,
            ledger: Mutex::new(Ledger::new()),
            generation: AtomicU64::new(0),
            persisted: tokio::sync::Mutex::new(0),
            state,
            locks: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            identity_ttl: IDENTITY_TTL,
            watchers: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            limiter: Mutex::new(Default::default()),
            limited_log: Default::default(),
        }
    }

    /// How long user lookups are reused (tests).
    #[cfg(test)]
    pub(crate) fn with_identity_ttl(mut self, ttl: Duration) -> Service<S> {
        self.identity_ttl = ttl;
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
        lock(&self.ledger).clone()
    }

    /// Whether the ledger can be locked: the watchdog's health check. A
    /// daemon wedged on its own lock stops pinging, and systemd restarts it.
    pub async fn healthy(&self) -> bool {
        for _ in 0..20 {
            let busy = matches!(
                self.ledger.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            );
            if !busy {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&lock(&self.ledger))
    }

    fn mutate<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        let mut l = lock(&self.ledger);
        let r = f(&mut l);
        self.generation.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// This user's lock; held across one change to them.
    async fn lock_user(&self, uid: u32) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = lock(&self.locks);
            if let Some(m) = map.get(&uid).and_then(Weak::upgrade) {
                m
            } else {
                if map.len() > 1024 {
                    map.retain(|_, w| w.strong_count() > 0);
                }
                let m = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(uid, Arc::downgrade(&m));
                m
            }
        };
        m.lock_owned().await
    }

    /// Saves the ledger in the background, for sessions: unlike a resize,
    /// whose answer promises it, a session's record can be told again after a
    /// crash (logind, the process table). Errors are logged by `persist`.
    fn save_later(self: &Arc<Self>) {
        if self.state.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.persist().await;
        });
    }

    /// Saves every change made so far (at shutdown, after background saves).
    pub async fn flush(&self) -> Result<(), String> {
        self.persist().await
    }

    /// Saves the ledger, unless a save since our change already covered it.
    async fn persist(&self) -> Result<(), String> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let wanted = self.generation.load(Ordering::SeqCst);
        let mut done = self.persisted.lock().await;
        if *done >= wanted {
            return Ok(());
        }
        let (generation, bytes) = {
            let l = lock(&self.ledger);
            (
                self.generation.load(Ordering::SeqCst),
                StateFile::encode(&l),
            )
        };
        let state = state.clone();
        let path = state.path().display().to_string();
        match tokio::task::spawn_blocking(move || state.save(&bytes)).await {
            Ok(Ok(())) => {
                *done = generation;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(path = %path, error = %e, "could not save state");
                Err(e.to_string())
            }
            Err(e) => Err(format!("saving state: {e}")),
        }
    }

    /// The user and the policy in force, consistent with each other: their
    /// groups are looked up only when that policy has group rules.
    async fn user_and_policy(&self, uid: u32) -> Result<(Identity, Arc<Policy>), Response> {
        for _ in 0..3 {
            let policy = self.policy();
            let id = self.identity_with(uid, policy.uses_groups()).await?;
            // a reload in between: look again under the new policy
            if Arc::ptr_eq(&policy, &self.policy()) {
                return Ok((id, policy));
            }
        }
        Ok((self.identity(uid).await?, self.policy()))
    }

    /// The user with their groups.
    async fn identity(&self, uid: u32) -> Result<Identity, Response> {
        self.identity_with(uid, true).await
    }

    async fn identity_with(&self, uid: u32, groups: bool) -> Result<Identity, Response> {
        let now = std::time::Instant::now();
        if let Some((at, id, with_groups)) = lock(&self.identities).get(&uid)
            && now.saturating_duration_since(*at) < self.identity_ttl
            && (*with_groups || !groups)
        {
            return Ok(id.clone());
        }
        let dir = self.directory.clone();
        let found = tokio::task::spawn_blocking(move || match groups {
            true => dir.by_uid(uid),
            false => dir.by_uid_without_groups(uid),
        })
        .await;
        match found {
            Ok(Ok(Some(id))) => {
                let mut cache = lock(&self.identities);
                if cache.len() >= IDENTITY_CACHE {
                    let ttl = self.identity_ttl;
                    cache.retain(|_, (at, _, _)| now.saturating_duration_since(*at) < ttl);
                }
                // Never more than IDENTITY_CACHE: a storm of more users
                // than that just asks NSS for the rest.
                if cache.len() < IDENTITY_CACHE {
                    cache.insert(uid, (now, id.clone(), groups));
                }
                Ok(id)
            }
            Ok(Ok(None)) => Err(fail(
                ErrorCode::UnknownUser,
                format!(
                    "uid {uid} has no account on this host (`getent passwd {uid}` finds nothing)"
                ),
            )),
            Ok(Err(e)) => Err(fail(ErrorCode::Internal, e)),
            Err(e) => Err(fail(
                ErrorCode::Internal,
                format!("user lookup failed: {e}"),
            )),
        }
    }

    async fn resolve(&self, user: &UserRef) -> Result<Identity, Response> {
        let name = match user {
            UserRef::Uid(uid) => return self.identity(*uid).await,
            UserRef::Name(name) => match name.parse::<u32>() {
                Ok(uid) => return self.identity(uid).await,
                Err(_) => name.clone(),
            },
        };
        let dir = self.directory.clone();
        let n = name.clone();
        match tokio::task::spawn_blocking(move || dir.by_name(&n)).await {
            Ok(Ok(Some(id))) => Ok(id),
            Ok(Ok(None)) => Err(fail(
                ErrorCode::UnknownUser,
                format!("no user named {name} on this host (`getent passwd {name}` finds nothing)"),
            )),
            Ok(Err(e)) => Err(fail(ErrorCode::Internal, e)),
            Err(e) => Err(fail(
                ErrorCode::Internal,
                format!("user lookup failed: {e}"),
            )),
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle(self: &Arc<Self>, peer: Peer, req: Request) -> Response {
        let kind = req.kind();
        self.counters.request(kind);
        if kind.root_only() && !peer.is_root() {
            tracing::warn!(
                uid = peer.uid,
                request = kind.name(),
                "refused a root-only request"
            );
            return fail(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: `{kind}` is for root only (run fairshare-ctl with sudo)"
                ),
            );
        }
        if !peer.is_root() {
            let now = std::time::Instant::now();
            let mut limiter = lock(&self.limiter);
            let (all, writes) = &mut *limiter;
            let verdict = all
                .take(peer.uid, crate::ratelimit::REQUESTS, now)
                .and_then(|()| match kind.changes_limits() {
                    true => writes.take(peer.uid, crate::ratelimit::CHANGES, now),
                    false => Ok(()),
                });
            drop(limiter);
            if let Err(wait) = verdict {
                self.counters.refused("rate_limited");
                if let Some(held) = self.limited_log.allow() {
                    tracing::warn!(
                        uid = peer.uid,
                        request = kind.name(),
                        more = held,
                        "rate limited ({held} more refusals since the last warning)"
                    );
                }
                return fail(
                    ErrorCode::RateLimited,
                    format!(
                        "too many requests from uid {}; try again in {:.1} s",
                        peer.uid,
                        wait.as_secs_f64().max(0.1)
                    ),
                );
            }
        }
        let reply = match req {
            Request::Status { user } => self.status(peer, user).await,
            Request::RequestResources(args) => match args.parse() {
                Err(e) => Err(fail(ErrorCode::BadRequest, e)),
                Ok(r) => match self.identity(peer.uid).await {
                    Ok(id) => self.resize(id, r, Actor::User(peer.uid)).await,
                    Err(e) => Err(e),
                },
            },
            Request::Release => match self.identity(peer.uid).await {
                Ok(id) => self.release(id, None).await,
                Err(e) => Err(e),
            },
            Request::SetUser {
                user,
                args,
                release,
                force,
            } => match (args.parse(), self.resolve(&user).await) {
                (Err(e), _) => Err(fail(ErrorCode::BadRequest, e)),
                (_, Err(e)) => Err(e),
                (Ok(_), Ok(id)) if release => self.release(id, Some(peer.uid)).await,
                (Ok(r), Ok(id)) => self.resize(id, r, Actor::Root { force }).await,
            },
            Request::List => Ok(self.list().await),
            Request::SessionOpen(s) => self.session_open(s).await,
            Request::SessionClose(s) => self.session_close(s).await,
            Request::Reload => self.reload_from_disk().await,
            Request::Metrics => Ok(Response::Metrics {
                text: self.metrics().await,
            }),
        };
        if let Err(Response::Error(e)) = &reply {
            self.counters.error(e.code);
        }
        reply.unwrap_or_else(|e| e)
    }

    async fn status(&self, peer: Peer, user: Option<UserRef>) -> Reply {
        let (id, policy) = match &user {
            None => self.user_and_policy(peer.uid).await?,
            Some(r) => {
                let id = self.resolve(r).await?;
                if id.uid != peer.uid && !peer.is_root() {
                    return Err(fail(
                        ErrorCode::PermissionDenied,
                        "permission denied: only root can see another user's allocation; `fairshare-ctl status` shows your own",
                    ));
                }
                (id, self.policy())
            }
        };
        let up = policy.for_user(&id);
        let entry = self.read(|l| l.get(id.uid).cloned());
        let cap = self.read(|l| l.capacity(&policy.capacity(self.host)));
        let mut info = self.status_info(id.uid, &id.name, &up, entry.as_ref());
        info.capacity = Some(cap);
        Ok(Response::StatusInfo(Box::new(info)))
    }

    fn status_info(
        &self,
        uid: u32,
        name: &str,
        up: &UserPolicy,
        entry: Option<&Entry>,
    ) -> StatusInfo {
        let exempt = up.exempt.is_some();
        let limits = entry.map_or(up.default, |e| e.limits);
        let policy = match &up.exempt {
            Some(ex) => vec![format!("exempt: {ex}")],
            None => up.sources.clone(),
        };
        StatusInfo {
            allocated_cpu: (!exempt).then_some(limits.cpu),
            allocated_mem: (!exempt).then_some(limits.mem),
            allocated_tasks: (!exempt).then_some(limits.tasks),
            allocated_mem_high: if exempt { None } else { limits.mem_high },
            uid,
            user: name.to_string(),
            slice: slice_name(uid),
            source: match (exempt, entry) {
                (true, _) => Source::Exempt,
                (false, Some(e)) => e.source(uid),
                (false, None) => Source::Default,
            },
            active: entry.is_some_and(|e| e.applied.is_some()),
            default: (!exempt).then_some(up.default),
            max: (!exempt).then_some(up.max),
            policy,
            sessions: entry.map_or(0, |e| e.sessions.len() as u32),
            session_list: entry.map(|e| e.sessions.clone()).unwrap_or_default(),
            expires_at: entry
                .and_then(|e| e.grant.as_ref())
                .and_then(|g| g.expires_at),
            notice: entry.and_then(|e| e.notice.clone()),
            usage: self.cgroups.usage(uid),
            capacity: None,
        }
    }

    /// Every tracked user, with their usage.
    async fn list_rows(&self) -> (Vec<StatusInfo>, fairshare_proto::wire::Capacity) {
        let policy = self.policy();
        let entries: Vec<(u32, Entry)> =
            self.read(|l| l.entries().map(|(u, e)| (*u, e.clone())).collect());
        let mut users = Vec::with_capacity(entries.len());
        for (uid, e) in entries {
            let id = match self.identity_with(uid, policy.uses_groups()).await {
                Ok(id) => id,
                Err(_) => Identity {
                    uid,
                    name: e.name.clone(),
                    groups: Vec::new(),
                },
            };
            let up = policy.for_user(&id);
            users.push(self.status_info(uid, &id.name, &up, Some(&e)));
        }
        let capacity = self.read(|l| l.capacity(&policy.capacity(self.host)));
        (users, capacity)
    }

    async fn list(&self) -> Response {
        let (users, capacity) = self.list_rows().await;
        Response::UserList(UserList { users, capacity })
    }

    /// Writes a change to systemd, logs it and saves the ledger.
    /// `undo`: put `prev` back if systemd refuses (resizes); logins keep
    /// their session record either way.
    async fn commit(
        &self,
        id: &Identity,
        prev: Option<Entry>,
        change: &Change,
        undo: bool,
        by: u32,
        why: &str,
    ) -> Result<(), Response> {
        self.apply_change(id, prev, change, undo, by, why).await?;
        self.persist().await.map_err(|e| {
            fail(
                ErrorCode::Persistence,
                format!(
                    "the limits were applied, but the state could not be saved: {e}; the change will be forgotten if fairshared restarts (free space or fix permissions in the state directory)"
                ),
            )
        })
    }

    /// [`Service::commit`] without the save (sessions save in the background).
    async fn apply_change(
        &self,
        id: &Identity,
        prev: Option<Entry>,
        change: &Change,
        undo: bool,
        by: u32,
        why: &str,
    ) -> Result<(), Response> {
        let applied = self.read(|l| l.get(id.uid).and_then(|e| e.applied));
        if change.needs_apply(applied.as_ref()) {
            if let Err(e) = self.systemd.apply(id.uid, &change.new).await {
                if undo {
                    self.mutate(|l| l.restore(id.uid, prev));
                }
                tracing::error!(uid = id.uid, user = %id.name, error = %e, "could not apply limits");
                return Err(fail(
                    ErrorCode::Systemd,
                    format!("could not apply limits to {}: {e}", slice_name(id.uid)),
                ));
            }
            self.mutate(|l| l.mark_applied(id.uid, change.new));
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

    /// When a resize lapses: what was asked, capped by the policy for users.
    fn lease_end(
        &self,
        up: &UserPolicy,
        req: &Resize,
        actor: Actor,
    ) -> Result<Option<u64>, String> {
        let max = self.policy().max_lease();
        let above = req.cpu.is_some_and(|c| c > up.default.cpu)
            || req.mem.is_some_and(|m| m > up.default.mem)
            || req.tasks.is_some_and(|t| t > up.default.tasks);
        let lasting = match (actor, req.duration, max) {
            (Actor::User(_), Some(d), Some(m)) if d > m => {
                return Err(format!(
                    "a resize may last at most {} on this host (asked for {})",
                    format_duration(m),
                    format_duration(d)
                ));
            }
            (_, Some(d), _) => Some(d),
            (Actor::User(_), None, Some(m)) if above => Some(m),
            _ => None,
        };
        Ok(lasting.map(|d| now().saturating_add(d.as_secs())))
    }

    async fn resize(self: &Arc<Self>, id: Identity, req: Resize, actor: Actor) -> Reply {
        if req.is_empty() {
            return Err(fail(
                ErrorCode::BadRequest,
                "nothing to change: give at least one of cpu, mem or tasks",
            ));
        }
        let policy = self.policy();
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Err(fail(
                ErrorCode::Exempt,
                format!(
                    "{} is not limited by fairshare ({ex}); there is nothing to resize",
                    id.name
                ),
            ));
        }
        let expires = self.lease_end(&up, &req, actor).map_err(|why| {
            self.counters.refused("exceeds_max");
            fail(ErrorCode::ExceedsMax, format!("Request refused: {why}"))
        })?;
        let _guard = self.lock_user(id.uid).await;
        let cap = policy.capacity(self.host);
        let ask = ResizeRequest {
            uid: id.uid,
            name: &id.name,
            policy: &up,
            resize: req,
            actor,
            capacity: &cap,
            now: now(),
            expires_at: expires,
        };
        let result = self.mutate(|l| {
            let prev = l.get(id.uid).cloned();
            l.resize(ask).map(|c| (prev, c))
        });
        let (prev, change) = match result {
            Ok(x) => x,
            Err(refusal) => {
                let capacity = self.read(|l| l.capacity(&cap));
                let (code, why) = match refusal {
                    Refusal::ExceedsMax(r) => (ErrorCode::ExceedsMax, r.join("; ")),
                    Refusal::NoCapacity(r) => (
                        ErrorCode::NoCapacity,
                        format!("not enough free capacity on this host: {r}"),
                    ),
                };
                self.counters.refused(match code {
                    ErrorCode::NoCapacity => "no_capacity",
                    _ => "exceeds_max",
                });
                tracing::info!(uid = id.uid, user = %id.name, reason = %why, "resize refused");
                return Err(Response::Error(ErrorReply {
                    error: format!(
                        "Request refused: {why} (you may have up to {}; free on this host: {} CPUs, {})",
                        up.max,
                        capacity.cpu_free,
                        capacity.mem_free.human()
                    ),
                    code,
                    max: Some(up.max),
                    capacity: Some(capacity),
                }));
            }
        };
        let by = match actor {
            Actor::User(u) => u,
            Actor::Root { .. } => 0,
        };
        self.commit(&id, prev, &change, true, by, "resize").await?;
        if let Some(at) = expires {
            self.schedule_lease(id.uid, at);
        }
        let capacity = self.read(|l| l.capacity(&cap));
        let until = expires
            .map(|at| {
                format!(
                    " for {}",
                    format_duration(Duration::from_secs(at.saturating_sub(now())))
                )
            })
            .unwrap_or_default();
        Ok(Response::Success(Success {
            message: format!(
                "Resources allocated: {} on {}{until} (max {}; free on this host now: {} CPUs, {})",
                change.new,
                slice_name(id.uid),
                up.max,
                capacity.cpu_free,
                capacity.mem_free.human()
            ),
            allocation: Some(change.new),
            capacity: Some(capacity),
        }))
    }

    async fn release(&self, id: Identity, by_root: Option<u32>) -> Reply {
        let policy = self.policy();
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Ok(Response::success(format!(
                "{} is not limited by fairshare ({ex}); nothing to release",
                id.name
            )));
        }
        let _guard = self.lock_user(id.uid).await;
        let (prev, change) = self.mutate(|l| (l.get(id.uid).cloned(), l.release(id.uid, &up)));
        let by = by_root.unwrap_or(id.uid);
        self.commit(&id, prev, &change, true, by, "release").await?;
        Ok(Response::Success(Success {
            message: format!(
                "Resources released: {} is back to the default of {}",
                slice_name(id.uid),
                change.new
            ),
            allocation: Some(change.new),
            capacity: Some(self.read(|l| l.capacity(&policy.capacity(self.host)))),
        }))
    }

    /// Re-reads the policy from where it was loaded; a bad one is refused
    /// with every error and the old one stays in force.
    pub async fn reload_from_disk(self: &Arc<Self>) -> Reply {
        let Some(path) = self.policy_path.clone() else {
            return Err(fail(ErrorCode::Internal, "no policy path to reload from"));
        };
        let loaded = tokio::task::spawn_blocking({
            let path = path.clone();
            move || Policy::load(&path)
        })
        .await
        .map_err(|e| fail(ErrorCode::Internal, format!("loading the policy: {e}")))?;
        match loaded {
            Ok(p) => {
                let changed = self.reload(p).await;
                tracing::info!(policy = %path.display(), changed, "policy reloaded");
                Ok(Response::success(format!(
                    "policy reloaded from {}; limits changed for {changed} user(s)",
                    path.display()
                )))
            }
            Err(errors) => {
                tracing::error!(policy = %path.display(), "policy not reloaded, the old one stays in force:\n{errors}");
                Err(fail(
                    ErrorCode::InvalidPolicy,
                    format!(
                        "policy not reloaded, the old one stays in force: {}",
                        errors.to_string().replace('\n', "; ")
                    ),
                ))
            }
        }
    }

    /// Puts a new policy in force and re-applies every tracked user's limits
    /// under it: resizes beyond a lowered maximum are clamped, users who became
    /// exempt are let go. Returns how many users' limits changed.
    pub async fn reload(self: &Arc<Self>, policy: Policy) -> usize {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        let policy = self.policy();
        let uids: Vec<u32> = self.read(|l| l.entries().map(|(u, _)| *u).collect());
        let mut changed = 0;
        for uid in uids {
            let Ok(id) = self.identity(uid).await else {
                continue;
            };
            let up = policy.for_user(&id);
            let _guard = self.lock_user(uid).await;
            if let Some(ex) = &up.exempt {
                self.mutate(|l| l.remove(uid));
                tracing::info!(uid, user = %id.name, reason = %ex, "user is now exempt; lifting their limits");
                if let Err(e) = self.systemd.reset(uid).await {
                    tracing::error!(uid, error = %e, "could not lift limits");
                }
                changed += 1;
                continue;
            }
            let prev = self.read(|l| l.get(uid).cloned());
            if let Some(c) = self.mutate(|l| l.repolicy(uid, &up)) {
                changed += 1;
                let _ = self
                    .commit(&id, prev, &c, false, 0, "policy reloaded")
                    .await;
            }
        }
        if let Err(e) = self.persist().await {
            tracing::error!(error = %e, "could not save state after reload");
        }
        changed
    }
}

#[cfg(test)]
mod tests;
