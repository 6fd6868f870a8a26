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
//! the disk; concurrent requests share one write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use fairshare_policy::{CapacityLimit, HostResources, Identity, Policy, UserPolicy};
use fairshare_proto::wire::{
    ErrorCode, ErrorReply, Limits, Request, Resize, Response, SessionClose, SessionInfo,
    SessionOpen, Source, StatusInfo, Success, UserList, UserRef,
};

use crate::cgroup::{self, Cgroups, Placement};
use crate::ledger::{Actor, Change, Entry, Ledger, Refusal};
use crate::pidwatch;
use crate::state::StateFile;
use crate::systemd::{Systemd, slice_name};
use crate::users;

/// Where user names and groups come from (NSS in the daemon, a table in tests).
pub trait Directory: Send + Sync + 'static {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, String>;
    fn by_name(&self, name: &str) -> Result<Option<Identity>, String>;
}

/// The system's user database, through NSS.
pub struct Nss;

impl Directory for Nss {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, String> {
        users::by_uid(uid)
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

fn fail(code: ErrorCode, msg: impl Into<String>) -> Response {
    Response::error(code, msg)
}

pub struct Service<S: Systemd> {
    systemd: S,
    directory: Arc<dyn Directory>,
    policy: RwLock<Arc<Policy>>,
    host: HostResources,
    cgroups: Cgroups,
    ledger: Mutex<Ledger>,
    generation: AtomicU64,
    persisted: tokio::sync::Mutex<u64>,
    state: Option<StateFile>,
    locks: Mutex<HashMap<u32, Weak<tokio::sync::Mutex<()>>>>,
    /// Watches on session processes, by pid (see [`crate::pidwatch`]).
    watchers: Mutex<HashMap<u32, tokio::task::AbortHandle>>,
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

/// `2 CPUs, 8G memory (soft 7.2G), 4096 tasks`
pub fn describe(l: &Limits) -> String {
    let cpus = if l.cpu.millis() == 1000 {
        "CPU"
    } else {
        "CPUs"
    };
    let high = l
        .mem_high
        .map(|h| format!(" (soft {})", h.human()))
        .unwrap_or_default();
    format!(
        "{} {cpus}, {} memory{high}, {} tasks",
        l.cpu, l.mem, l.tasks
    )
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
            host,
            cgroups,
            ledger: Mutex::new(Ledger::new()),
            generation: AtomicU64::new(0),
            persisted: tokio::sync::Mutex::new(0),
            state,
            locks: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        }
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

    fn capacity_limit(&self) -> CapacityLimit {
        self.policy().capacity(self.host)
    }

    /// A copy of the ledger (for tests and the metrics).
    pub fn ledger(&self) -> Ledger {
        lock(&self.ledger).clone()
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

    async fn identity(&self, uid: u32) -> Result<Identity, Response> {
        let dir = self.directory.clone();
        match tokio::task::spawn_blocking(move || dir.by_uid(uid)).await {
            Ok(Ok(Some(id))) => Ok(id),
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
        match user {
            UserRef::Uid(uid) => self.identity(*uid).await,
            UserRef::Name(name) => {
                if let Ok(uid) = name.parse::<u32>() {
                    return self.identity(uid).await;
                }
                let dir = self.directory.clone();
                let n = name.clone();
                match tokio::task::spawn_blocking(move || dir.by_name(&n)).await {
                    Ok(Ok(Some(id))) => Ok(id),
                    Ok(Ok(None)) => Err(fail(
                        ErrorCode::UnknownUser,
                        format!(
                            "no user named {name} on this host (`getent passwd {name}` finds nothing)"
                        ),
                    )),
                    Ok(Err(e)) => Err(fail(ErrorCode::Internal, e)),
                    Err(e) => Err(fail(
                        ErrorCode::Internal,
                        format!("user lookup failed: {e}"),
                    )),
                }
            }
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle(self: &Arc<Self>, peer: Peer, req: Request) -> Response {
        let kind = req.kind();
        let root_only = matches!(
            req,
            Request::SessionOpen(_)
                | Request::SessionClose(_)
                | Request::List
                | Request::SetUser { .. }
        );
        if root_only && !peer.is_root() {
            tracing::warn!(
                uid = peer.uid,
                request = kind,
                "refused a root-only request"
            );
            return fail(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: `{kind}` is for root only (run fairshare-ctl with sudo)"
                ),
            );
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
        };
        reply.unwrap_or_else(|e| e)
    }

    async fn status(&self, peer: Peer, user: Option<UserRef>) -> Reply {
        let id = match &user {
            None => self.identity(peer.uid).await?,
            Some(r) => {
                let id = self.resolve(r).await?;
                if id.uid != peer.uid && !peer.is_root() {
                    return Err(fail(
                        ErrorCode::PermissionDenied,
                        "permission denied: only root can see another user's allocation; `fairshare-ctl status` shows your own",
                    ));
                }
                id
            }
        };
        let up = self.policy().for_user(&id);
        let entry = self.read(|l| l.get(id.uid).cloned());
        let cap = self.read(|l| l.capacity(&self.capacity_limit()));
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
        let mut policy = up.sources.clone();
        if let Some(ex) = &up.exempt {
            policy = vec![format!("exempt: {ex}")];
        }
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
            usage: self.cgroups.usage(uid),
            capacity: None,
        }
    }

    async fn list(&self) -> Response {
        let policy = self.policy();
        let entries: Vec<(u32, Entry)> =
            self.read(|l| l.entries().map(|(u, e)| (*u, e.clone())).collect());
        let mut users = Vec::with_capacity(entries.len());
        for (uid, e) in entries {
            let id = match self.identity(uid).await {
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
        if change.old != Some(change.new) {
            let old = change
                .old
                .map_or_else(|| "none".to_string(), |o| describe(&o));
            tracing::info!(
                uid = id.uid,
                user = %id.name,
                by,
                reason = why,
                old = %old,
                new = %describe(&change.new),
                cpu_quota_usec = change.new.cpu.quota_usec_per_sec(),
                memory_max = change.new.mem.get(),
                tasks_max = change.new.tasks.get(),
                "allocation of {} changed: {old} -> {}",
                id.name,
                describe(&change.new)
            );
        }
        self.persist().await.map_err(|e| {
            fail(
                ErrorCode::Persistence,
                format!(
                    "the limits were applied, but the state could not be saved: {e}; the change will be forgotten if fairshared restarts (free space or fix permissions in the state directory)"
                ),
            )
        })
    }

    async fn resize(&self, id: Identity, req: Resize, actor: Actor) -> Reply {
        if req == Resize::default() {
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
        let _guard = self.lock_user(id.uid).await;
        let cap = policy.capacity(self.host);
        let result = self.mutate(|l| {
            let prev = l.get(id.uid).cloned();
            l.resize(id.uid, &id.name, &up, req, actor, &cap, now(), None)
                .map(|c| (prev, c))
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
                tracing::info!(uid = id.uid, user = %id.name, reason = %why, "resize refused");
                return Err(Response::Error(ErrorReply {
                    error: format!(
                        "Request refused: {why} (you may have up to {}; free on this host: {} CPUs, {})",
                        describe(&up.max),
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
        let capacity = self.read(|l| l.capacity(&cap));
        Ok(Response::Success(Success {
            message: format!(
                "Resources allocated: {} on {} (max {}; free on this host now: {} CPUs, {})",
                describe(&change.new),
                slice_name(id.uid),
                describe(&up.max),
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
                describe(&change.new)
            ),
            allocation: Some(change.new),
            capacity: Some(self.read(|l| l.capacity(&policy.capacity(self.host)))),
        }))
    }

    async fn session_open(self: &Arc<Self>, s: SessionOpen) -> Reply {
        let id = self.identity(s.uid).await?;
        let up = self.policy().for_user(&id);
        if let Some(ex) = &up.exempt {
            return Ok(Response::success(format!(
                "{} is not limited ({ex})",
                id.name
            )));
        }
        let _guard = self.lock_user(id.uid).await;
        let info = SessionInfo {
            pid: s.pid,
            service: s.service.clone(),
            tty: s.tty.clone(),
            rhost: s.rhost.clone(),
            session_id: s.session_id.clone(),
            opened_at: now(),
            start_time: cgroup::start_time(s.pid),
        };
        let start_time = info.start_time;
        let (prev, change) = self.mutate(|l| {
            (
                l.get(id.uid).cloned(),
                l.open_session(id.uid, &id.name, &up, info),
            )
        });
        tracing::info!(
            uid = id.uid,
            user = %id.name,
            pid = s.pid,
            service = s.service.as_deref().unwrap_or(""),
            rhost = s.rhost.as_deref().unwrap_or(""),
            session_id = s.session_id.as_deref().unwrap_or(""),
            "session opened"
        );
        let committed = self
            .commit(&id, prev, &change, false, 0, "session opened")
            .await;
        self.watch(id.uid, s.pid, start_time);
        // Limit the slice first, then put a stray session process into it.
        let adopted = match cgroup::placement(s.pid, id.uid) {
            Placement::Elsewhere(path) => match self.systemd.adopt(id.uid, s.pid).await {
                Ok(scope) => {
                    tracing::info!(uid = id.uid, user = %id.name, pid = s.pid, from = %path, scope = %scope, "adopted a session process outside logind into the user's slice");
                    format!("; pid {} moved from {path} into {scope}", s.pid)
                }
                Err(e) => {
                    tracing::error!(uid = id.uid, pid = s.pid, error = %e, "could not adopt session process");
                    return Err(fail(
                        ErrorCode::Systemd,
                        format!(
                            "session counted, but pid {} could not be moved into {}: {e}",
                            s.pid,
                            slice_name(id.uid)
                        ),
                    ));
                }
            },
            Placement::InUserSlice | Placement::Gone => String::new(),
        };
        committed?;
        Ok(Response::Success(Success {
            message: format!("{}: {}{adopted}", id.name, describe(&change.new)),
            allocation: Some(change.new),
            capacity: None,
        }))
    }

    async fn session_close(&self, s: SessionClose) -> Reply {
        let id = match self.identity(s.uid).await {
            Ok(id) => id,
            Err(_) => Identity {
                uid: s.uid,
                name: self
                    .read(|l| l.get(s.uid).map(|e| e.name.clone()))
                    .unwrap_or_else(|| s.uid.to_string()),
                groups: Vec::new(),
            },
        };
        let up = self.policy().for_user(&id);
        let _guard = self.lock_user(id.uid).await;
        let (prev, change) = self.mutate(|l| {
            (
                l.get(id.uid).cloned(),
                l.close_session(id.uid, s.pid, s.session_id.as_deref(), &up),
            )
        });
        if let Some(w) = lock(&self.watchers).remove(&s.pid) {
            w.abort();
        }
        tracing::info!(uid = id.uid, user = %id.name, pid = s.pid, last = change.is_some(), "session closed");
        match change {
            None => {
                self.persist().await.ok();
                let left = self.read(|l| l.get(id.uid).map_or(0, |e| e.sessions.len()));
                Ok(Response::success(format!(
                    "{}: session closed, {left} still open",
                    id.name
                )))
            }
            Some(c) => {
                if up.exempt.is_some() {
                    self.persist().await.ok();
                    return Ok(Response::success(format!(
                        "{}: last session closed",
                        id.name
                    )));
                }
                self.commit(&id, prev, &c, false, 0, "last session closed")
                    .await?;
                Ok(Response::success(format!(
                    "{}: last session closed; {} back to the default of {}",
                    id.name,
                    slice_name(id.uid),
                    describe(&c.new)
                )))
            }
        }
    }

    /// Counts a session down when its process ends, even without a
    /// `close_session` (a crashed sshd, `kill -9`).
    fn watch(self: &Arc<Self>, uid: u32, pid: u32, start_time: Option<u64>) {
        let this = Arc::downgrade(self);
        let fd = pidwatch::open(pid).ok();
        // With the pidfd open, the pid cannot be reused under us; compare
        // start times to be sure it is still the process that opened the session.
        let same = fd.is_some() && (start_time.is_none() || cgroup::start_time(pid) == start_time);
        let task = tokio::spawn(async move {
            if let (true, Some(fd)) = (same, fd)
                && let Err(e) = pidwatch::exited(fd).await
            {
                tracing::warn!(pid, error = %e, "cannot watch a session process");
                return;
            }
            if let Some(service) = this.upgrade() {
                service.session_ended(uid, pid).await;
            }
        });
        if let Some(old) = lock(&self.watchers).insert(pid, task.abort_handle()) {
            old.abort();
        }
    }

    /// A session process ended; forget its session (if still counted).
    async fn session_ended(&self, uid: u32, pid: u32) {
        lock(&self.watchers).remove(&pid);
        let counted = self.read(|l| {
            l.get(uid)
                .is_some_and(|e| e.sessions.iter().any(|s| s.pid == pid))
        });
        if !counted {
            return;
        }
        tracing::warn!(
            uid,
            pid,
            "session process ended without closing its session; counting it down"
        );
        let close = SessionClose {
            uid,
            pid,
            session_id: None,
        };
        if let Err(e) = self.session_close(close).await {
            tracing::error!(uid, pid, error = ?e, "could not count down an ended session");
        }
    }

    /// Brings the ledger in line with the host: sessions whose process is gone
    /// are counted down, sessions logind knows but the ledger does not (opened
    /// while fairshared was down) are counted and their users limited.
    pub async fn reconcile(self: &Arc<Self>) {
        let tracked: Vec<(u32, u32, Option<u64>)> = self.read(|l| {
            l.entries()
                .flat_map(|(uid, e)| e.sessions.iter().map(move |s| (*uid, s.pid, s.start_time)))
                .collect()
        });
        for (uid, pid, start) in tracked {
            let same = cgroup::alive(pid) && (start.is_none() || cgroup::start_time(pid) == start);
            if same {
                self.watch(uid, pid, start);
            } else {
                self.session_ended(uid, pid).await;
            }
        }
        let sessions = match self.systemd.logind_sessions().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list logind sessions; only sessions opened through PAM are counted");
                return;
            }
        };
        let mut added = 0;
        for s in sessions {
            let known = self.read(|l| {
                l.get(s.uid).is_some_and(|e| {
                    e.sessions.iter().any(|x| {
                        x.pid == s.leader || x.session_id.as_deref() == Some(s.id.as_str())
                    })
                })
            });
            if known || s.leader == 0 || !cgroup::alive(s.leader) {
                continue;
            }
            let open = SessionOpen {
                uid: s.uid,
                pid: s.leader,
                user: Some(s.user.clone()),
                service: Some(s.service).filter(|x| !x.is_empty()),
                tty: Some(s.tty).filter(|x| !x.is_empty()),
                rhost: Some(s.rhost).filter(|x| !x.is_empty()),
                session_id: Some(s.id.clone()),
            };
            match self.session_open(open).await {
                Ok(_) => added += 1,
                Err(e) => {
                    tracing::debug!(uid = s.uid, session = %s.id, answer = ?e, "logind session not counted")
                }
            }
        }
        if added > 0 {
            tracing::info!(
                sessions = added,
                "counted logind sessions opened while fairshared was away"
            );
        }
    }

    /// Puts a new policy in force and re-applies every tracked user's limits
    /// under it: resizes beyond a lowered maximum are clamped, users who became
    /// exempt are let go. Returns how many users' limits changed.
    pub async fn reload(&self, policy: Policy) -> usize {
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

    /// At start: takes over the saved ledger, brings it in line with the
    /// current policy and user database, and writes every user's limits to
    /// systemd again (the runtime drop-ins normally survive, but a host may
    /// have rebooted or someone may have run `systemctl revert`).
    pub async fn restore(&self, saved: Ledger) {
        let policy = self.policy();
        let mut ledger = saved;
        let uids: Vec<u32> = ledger.entries().map(|(u, _)| *u).collect();
        for uid in &uids {
            let id = match self.identity(*uid).await {
                Ok(id) => id,
                Err(_) => {
                    tracing::warn!(uid, "dropping saved allocation: the user no longer exists");
                    ledger.remove(*uid);
                    continue;
                }
            };
            let up = policy.for_user(&id);
            if up.exempt.is_some() {
                tracing::warn!(uid, user = %id.name, "dropping saved allocation: the user is now exempt");
                ledger.remove(*uid);
                continue;
            }
            if let Some(c) = ledger.repolicy(*uid, &up) {
                tracing::info!(uid, user = %id.name, old = %c.old.map(|o| describe(&o)).unwrap_or_default(), new = %describe(&c.new), "policy changed while fairshared was stopped");
            }
        }
        *lock(&self.ledger) = ledger;
        self.generation.fetch_add(1, Ordering::SeqCst);
        let todo: Vec<(u32, Limits)> =
            self.read(|l| l.entries().map(|(u, e)| (*u, e.limits)).collect());
        for (uid, limits) in todo {
            match self.systemd.apply(uid, &limits).await {
                Ok(()) => self.mutate(|l| l.mark_applied(uid, limits)),
                Err(e) => tracing::error!(uid, error = %e, "could not re-apply saved limits"),
            }
        }
        if let Err(e) = self.persist().await {
            tracing::error!(error = %e, "could not save state after start-up");
        }
    }
}

#[cfg(test)]
mod tests;
