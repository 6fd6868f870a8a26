//! Sessions: opened and closed by the PAM module, and ended when their
//! process dies without a close.
//!
//! A session process outside every user's slice (a PAM stack without
//! `pam_systemd`, like cron's) is moved into the user's slice before
//! anything else waits on the user: before the user's lock, which the user's
//! own resizes hold. The PAM module keeps the session from opening until the
//! daemon answered, so the job the process starts afterwards, and its
//! children, start inside the slice.
//!
//! What the module says about the session is checked against the kernel:
//! the process is moved only when it is the one that asked (`SO_PEERCRED`)
//! or the user's own, and only from outside every user's slice (never out
//! of a logind session); a logind session id (`XDG_SESSION_ID`, which a user
//! can set through `pam_env`) is believed only when the process's cgroup is
//! that session's scope.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fairshare_policy::Identity;
use fairshare_proto::wire::{Response, SessionClose, SessionInfo, SessionOpen, Success};

use super::{OnRefusal, Peer, Reply, Service, ServiceError};
use crate::exits::OnExit;
use crate::ledger::Change;
use crate::proc::{self, Pidfd, Pinned, Placement, ProcessRef};
use crate::systemd::{Systemd, slice_name};

/// Who counts a session as opened.
#[derive(Clone, Copy, Debug)]
pub(super) enum Opener {
    /// The PAM module, as the session opens.
    Pam(Peer),
    /// The daemon, from logind's report of a login (a moment after it,
    /// sometimes before the module's call): a user with no session had
    /// their slice made with it.
    Follower,
    /// The daemon, catching up at start-up or reload with sessions opened
    /// while it was away: the user's slice may be older than this login.
    CatchUp,
}

impl Opener {
    fn peer(self) -> Option<Peer> {
        match self {
            Opener::Pam(p) => Some(p),
            Opener::Follower | Opener::CatchUp => None,
        }
    }
}

impl<S: Systemd> Service<S> {
    /// A session opened, counted by `opener`.
    pub(super) async fn session_open(self: &Arc<Self>, opener: Opener, s: SessionOpen) -> Reply {
        let peer = opener.peer();
        let (id, policy) = self.user_and_policy(s.uid).await?;
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            self.lift_exempt(&id, &up).await;
            return Ok(Response::success(format!(
                "{} is not limited ({ex})",
                id.name
            )));
        }
        self.counters
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        let place = proc::placement(s.pid);
        let session_id = match peer {
            Some(_) => confirmed_session(&id, s.pid, s.session_id.as_deref(), place.as_ref()),
            // from logind's own list of sessions (catch_up)
            None => s.session_id.clone(),
        };
        let s = SessionOpen { session_id, ..s };
        // Into the slice first, before waiting for the user's lock: nothing
        // the user does with their own requests can hold this up.
        let adopted = self.adopt_stray(&id, &s, peer, place.as_ref()).await;
        let guard = self.locks.lock(id.uid).await;
        // what the slice carries now, should anyone have set it meanwhile
        self.dropins.reread_runtime(id.uid);
        // the user's first session, announced by PAM as it opens or by
        // logind's report of it: their slice (and its kill counts) came
        // with it. One counted at start-up from logind's list (the daemon
        // was down at the login) may have an older slice whose counts are
        // old news.
        let fresh = !matches!(opener, Opener::CatchUp)
            && self
                .store
                .read(|l| l.get(id.uid).is_none_or(|e| e.sessions.is_empty()));
        // The first login since fairshared started or changed its files:
        // the slice may carry an older default than the files say (see
        // `DropIns::unverified`); one read of it, then the model knows.
        // A slice not loaded loads the files as they are now.
        if fresh && self.dropins.unverified(id.uid) {
            match self.read_back(id.uid, &id.name).await {
                Ok(()) => self.dropins.verified(id.uid),
                Err(e) => {
                    tracing::warn!(uid = id.uid, error = %e, "cannot read the limits on a slice at login")
                }
            }
        }
        let (process, pidfd) = ProcessRef::pin(s.pid);
        let info = SessionInfo {
            pid: s.pid,
            service: s.service.clone(),
            tty: s.tty.clone(),
            rhost: s.rhost.clone(),
            session_id: s.session_id.clone(),
            opened_at: self.now(),
            start_time: process.start_time,
        };
        let change = self
            .store
            .mutate(|l| l.open_session(id.uid, &id.name, &up, info));
        let why = opened(&s, &id, &change);
        let committed = self
            .apply_change(&id, &change, OnRefusal::Keep, 0, &why)
            .await;
        self.watch(id.uid, s.pid, pidfd);
        self.events_started(id.uid, fresh);
        drop(guard);
        self.store.save_later();
        // bursting's sampler runs while someone has a slice
        self.bursting.poke();
        let adopted = adopted?;
        committed?;
        Ok(Response::Success(Success {
            message: format!("{}: {}{adopted}", id.name, change.new),
            allocation: Some(change.new),
            capacity: None,
            login_line: self.login_line(id.uid, &policy, &up, &change.new),
        }))
    }

    /// Moves a session process into the user's slice when it is outside
    /// every user's slice (a PAM stack without pam_systemd), and only when it
    /// is the process that asked or one of the user's (see [`may_adopt`]).
    /// A process in a logind session, or in any user's slice, is never
    /// moved. Returns what to add to the answer (where the process went, or
    /// why it was left alone); an error only when systemd failed to move it.
    async fn adopt_stray(
        &self,
        id: &Identity,
        s: &SessionOpen,
        peer: Option<Peer>,
        place: Option<&Placement>,
    ) -> Result<String, ServiceError> {
        let Some(Placement::Outside(path)) = place else {
            return Ok(String::new());
        };
        let pinned = Pinned::pin(s.pid);
        let asker = peer.and_then(|p| p.pid);
        let pinned = match may_adopt(id.uid, s.pid, path, asker, pinned.as_ref().map(|p| p.owner)) {
            Ok(true) => pinned,
            Ok(false) => None,
            // Deliberate, like leaving logind's sessions alone: counted, not moved.
            Err(reason) => {
                tracing::warn!(uid = id.uid, user = %id.name, pid = s.pid, from = %path, "not moving a session process: {reason}");
                return Ok(format!("; pid {} left in {path}: {reason}", s.pid));
            }
        };
        // gone meanwhile: nothing to move (its watch counts the session down)
        let Some(pinned) = pinned else {
            return Ok(String::new());
        };
        // one user's flood of such sessions waits for their own places
        let _slot = self.adopt_slots.acquire(id.uid).await;
        #[cfg(feature = "test-hooks")]
        crate::testhooks::before_adopt().await;
        match self.systemd.adopt(id.uid, &pinned).await {
            Ok(scope) => {
                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(uid = id.uid, user = %id.name, pid = s.pid, from = %path, scope = %scope, "adopted a session process outside logind into the user's slice");
                Ok(format!("; pid {} moved from {path} into {scope}", s.pid))
            }
            Err(e) => {
                tracing::error!(uid = id.uid, pid = s.pid, error = %e, "could not adopt session process");
                Err(ServiceError::Adopt {
                    uid: id.uid,
                    pid: s.pid,
                    source: e,
                })
            }
        }
    }

    pub(super) async fn session_close(self: &Arc<Self>, s: SessionClose) -> Reply {
        let (id, policy) = match self.user_and_policy(s.uid).await {
            Ok(x) => x,
            Err(_) => (
                Identity {
                    uid: s.uid,
                    name: self
                        .store
                        .read(|l| l.get(s.uid).map(|e| e.name.clone()))
                        .unwrap_or_else(|| s.uid.to_string()),
                    groups: Vec::new(),
                },
                self.policy(),
            ),
        };
        let up = policy.for_user(&id);
        // The session opened by this pid; only a close from another process
        // is matched by its logind session id, confirmed from /proc: read
        // before the user's lock (their own resizes hold it), while the
        // closing process is surely still there.
        let counted = || {
            self.store
                .read(|l| l.get(id.uid).is_some_and(|e| e.session_of(s.pid).is_some()))
        };
        let place = match counted() {
            true => None,
            false => proc::placement(s.pid),
        };
        let _guard = self.locks.lock(id.uid).await;
        let session_id = match counted() {
            true => None,
            false => confirmed_session(&id, s.pid, s.session_id.as_deref(), place.as_ref()),
        };
        let change = self
            .store
            .mutate(|l| l.close_session(id.uid, s.pid, session_id.as_deref(), &up));
        self.exits.cancel(s.pid);
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            uid = id.uid,
            user = %id.name,
            pid = s.pid,
            last = change.is_some(),
            "session of {} (uid {}) closed: pid {}{}",
            id.name,
            id.uid,
            s.pid,
            if change.is_some() { ", the last one" } else { "" }
        );
        let Some(c) = change else {
            // the last login session, with the user manager left (processes
            // left behind keep it): the guarantee goes, the limits stay
            if let Some(c) = self.store.mutate(|l| l.release_guarantee(id.uid))
                && up.exempt.is_none()
            {
                if c.new.mem_low.is_some_and(|b| b.get() > 0) {
                    tracing::info!(
                        uid = id.uid,
                        user = %id.name,
                        "{} (uid {}) has no login session left (their user manager runs on): their memory guarantee is let go, their limits stay",
                        id.name,
                        id.uid
                    );
                }
                // an error is logged there, and MemoryLow tried again later
                let _ = self
                    .apply_change(&id, &c, OnRefusal::Keep, 0, "last login session closed")
                    .await;
            }
            self.store.save_later();
            let left = self
                .store
                .read(|l| l.get(id.uid).map_or(0, |e| e.sessions.len()));
            return Ok(Response::success(format!(
                "{}: session closed, {left} still open",
                id.name
            )));
        };
        // the user's own lease ended with the resize; root's may go on
        self.rearm_lease(id.uid);
        self.events_stopped(id.uid);
        if up.exempt.is_some() {
            self.store.save_later();
            return Ok(Response::success(format!(
                "{}: last session closed",
                id.name
            )));
        }
        let committed = self
            .apply_change(&id, &c, OnRefusal::Keep, 0, "last session closed")
            .await;
        self.store.save_later();
        committed?;
        Ok(Response::success(format!(
            "{}: last session closed; {} back to the default of {}",
            id.name,
            slice_name(id.uid),
            c.new
        )))
    }

    /// Counts a session down when its process ends, even without a
    /// `close_session` (a crashed sshd, `kill -9`): watches `fd`, a pidfd on
    /// the session's process; `None`: it is gone already, count it down now.
    pub(super) fn watch(self: &Arc<Self>, uid: u32, pid: u32, fd: Option<Pidfd>) {
        let this = Arc::downgrade(self);
        let on_exit = move || -> OnExit {
            Arc::new(move |uid, pid| {
                if let Some(service) = this.upgrade() {
                    tokio::spawn(async move { service.session_ended(uid, pid).await });
                }
            })
        };
        if let Err(e) = self.exits.watch(uid, pid, fd, on_exit) {
            tracing::warn!(pid, error = %e, "cannot watch a session process");
        }
    }

    /// A session process ended; forget its session (if still counted).
    pub(super) async fn session_ended(self: &Arc<Self>, uid: u32, pid: u32) {
        let counted = self.store.read(|l| {
            l.get(uid)
                .and_then(|e| e.session_of(pid).map(|s| (s.service.clone(), s.start_time)))
        });
        let Some((service, started)) = counted else {
            return;
        };
        // The pid taken again by a session counted since (this end told
        // late, behind the user's own requests): that one lives on. (The
        // ended process itself may still be a zombie, with the same start
        // time, until its parent reaps it: it is not running.)
        if started.is_some() && proc::running_since(pid) == started {
            return;
        }
        self.counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
        match service.as_deref() {
            // a user manager's session is never closed through PAM as root
            // ((sd-pam) has dropped to the user): its end is how it goes
            Some(crate::ledger::USER_MANAGER) => tracing::debug!(
                uid,
                pid,
                "the user manager of uid {uid} (pid {pid}) ended; counting its session down"
            ),
            _ => tracing::warn!(
                uid,
                pid,
                "session process {pid} of uid {uid} ended without closing its session; counting it down"
            ),
        }
        let close = SessionClose {
            uid,
            pid,
            session_id: None,
        };
        if let Err(e) = self.session_close(close).await {
            tracing::error!(uid, pid, error = %e, "could not count down an ended session");
        }
    }
}

/// Why the allocation changes, for the journal: one line per login. When the
/// allocation changes (a user's first session), `apply_change` logs it and
/// this says which session caused it; otherwise the "session opened" line is
/// logged here. Each line costs a login tens of microseconds.
fn opened(s: &SessionOpen, id: &Identity, change: &Change) -> String {
    if change.alters_allocation() {
        return format!(
            "session opened: pid {}, {} from {}{}",
            s.pid,
            s.service.as_deref().unwrap_or("?"),
            s.rhost
                .as_deref()
                .filter(|h| !h.is_empty())
                .unwrap_or("local"),
            s.session_id
                .as_deref()
                .map(|sid| format!(", logind session {sid}"))
                .unwrap_or_default(),
        );
    }
    tracing::info!(
        uid = id.uid,
        user = %id.name,
        pid = s.pid,
        service = s.service.as_deref().unwrap_or(""),
        rhost = s.rhost.as_deref().unwrap_or(""),
        session_id = s.session_id.as_deref().unwrap_or(""),
        "session opened for {} (uid {}): pid {}",
        id.name,
        id.uid,
        s.pid
    );
    "session opened".to_string()
}

/// Whether fairshare may move `pid`, a session process of `uid` outside
/// every user's slice (at `path`), into the user's slice: only when it is
/// the process that asked (`asker`, from `SO_PEERCRED`: the PAM module's own
/// process) or belongs to the user (`owner`, its real uid), and never
/// systemd's own. `Ok(false)`: it is gone (`owner` unknown), nothing to do.
fn may_adopt(
    uid: u32,
    pid: u32,
    path: &str,
    asker: Option<i32>,
    owner: Option<u32>,
) -> Result<bool, String> {
    if pid <= 1 || path == "/init.scope" || path.starts_with("/init.scope/") {
        return Err(format!("pid {pid} is systemd's own ({path})"));
    }
    if pid == std::process::id() {
        return Err(format!("pid {pid} is fairshared itself"));
    }
    let Some(owner) = owner else {
        return Ok(false);
    };
    let asked = asker.is_some_and(|a| u32::try_from(a) == Ok(pid));
    if !asked && owner != uid {
        return Err(format!(
            "pid {pid} belongs to uid {owner} and is not the process that opened the session{}; fairshare moves only the session's own process or the user's",
            asker.map(|a| format!(" (pid {a})")).unwrap_or_default()
        ));
    }
    Ok(true)
}

/// The logind session `pid` is in, for a session of `id`: the session id
/// of its cgroup (`user-UID.slice/session-ID.scope`), never only what the
/// PAM environment says (`XDG_SESSION_ID`, which users can set through
/// `pam_env` and `~/.pam_environment`). A claimed id the cgroup does not
/// confirm is logged and dropped.
fn confirmed_session(
    id: &Identity,
    pid: u32,
    claimed: Option<&str>,
    place: Option<&Placement>,
) -> Option<String> {
    let real = match place {
        Some(Placement::Session { uid, id: sid }) if *uid == id.uid => Some(sid.clone()),
        _ => None,
    };
    if let Some(claimed) = claimed
        && real.as_deref() != Some(claimed)
    {
        let there = match place {
            Some(Placement::Session { uid, id }) => format!("logind session {id} of uid {uid}"),
            Some(Placement::UserSlice { uid }) => format!("user-{uid}.slice, in no session"),
            Some(Placement::Outside(path)) => format!("{path}, in no session"),
            None => "gone".to_string(),
        };
        tracing::warn!(
            uid = id.uid,
            user = %id.name,
            pid,
            claimed,
            "ignoring session id {claimed:?} from the PAM environment: pid {pid} is in {there} \
             (XDG_SESSION_ID can come from the user's ~/.pam_environment)"
        );
    }
    real
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            uid: 1001,
            name: "alice".into(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn only_the_asker_or_the_users_own_process_is_moved() {
        let cron = "/system.slice/cron.service";
        // the PAM module's own process (root) asked: moved
        assert_eq!(may_adopt(1001, 500, cron, Some(500), Some(0)), Ok(true));
        // one of the user's processes, whoever asked: moved
        assert_eq!(may_adopt(1001, 500, cron, Some(77), Some(1001)), Ok(true));
        assert_eq!(may_adopt(1001, 500, cron, None, Some(1001)), Ok(true));
        // another process, not the user's: never
        let e = may_adopt(1001, 500, cron, Some(77), Some(0)).unwrap_err();
        assert!(
            e.contains("belongs to uid 0") && e.contains("pid 77"),
            "{e}"
        );
        assert!(may_adopt(1001, 500, cron, None, Some(1002)).is_err());
        // systemd's own, and fairshared itself
        assert!(may_adopt(1001, 1, "/init.scope", Some(1), Some(0)).is_err());
        assert!(may_adopt(1001, 9, "/init.scope", Some(9), Some(1001)).is_err());
        let me = std::process::id();
        assert!(may_adopt(1001, me, cron, Some(me as i32), Some(0)).is_err());
        // gone before it could be pinned
        assert_eq!(may_adopt(1001, 500, cron, Some(500), None), Ok(false));
    }

    #[test]
    fn a_session_id_is_what_the_cgroup_says() {
        let in_session = |uid: u32, sid: &str| Placement::Session {
            uid,
            id: sid.into(),
        };
        let c = |claimed: Option<&str>, place: &Placement| {
            confirmed_session(&alice(), 42, claimed, Some(place))
        };
        // confirmed
        assert_eq!(c(Some("5"), &in_session(1001, "5")).as_deref(), Some("5"));
        // pam_systemd did not run, but the process is in its session scope
        assert_eq!(c(None, &in_session(1001, "5")).as_deref(), Some("5"));
        // forged: another id, another user's session, or no session at all
        assert_eq!(c(Some("4"), &in_session(1001, "5")).as_deref(), Some("5"));
        assert_eq!(c(Some("5"), &in_session(1002, "5")), None);
        assert_eq!(c(Some("5"), &Placement::UserSlice { uid: 1001 }), None);
        assert_eq!(
            c(
                Some("5"),
                &Placement::Outside("/system.slice/cron.service".into())
            ),
            None
        );
        assert_eq!(confirmed_session(&alice(), 42, Some("5"), None), None);
    }
}
