//! Sessions: opened and closed by the PAM module, and ended when their
//! process dies without a close.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fairshare_policy::Identity;
use fairshare_proto::wire::{Response, SessionClose, SessionInfo, SessionOpen, Success};

use super::{OnRefusal, Reply, Service, ServiceError};
use crate::ledger::Change;
use crate::proc::{self, Pidfd, Placement, ProcessRef};
use crate::systemd::{Systemd, slice_name};

impl<S: Systemd> Service<S> {
    pub(super) async fn session_open(self: &Arc<Self>, s: SessionOpen) -> Reply {
        let (id, policy) = self.user_and_policy(s.uid).await?;
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Ok(Response::success(format!(
                "{} is not limited ({ex})",
                id.name
            )));
        }
        self.counters
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        let guard = self.locks.lock(id.uid).await;
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
        self.store.save_later();
        self.watch(id.uid, s.pid, pidfd);
        drop(guard);
        // Limit the slice first, then put a stray session process into it.
        let adopted = self.adopt_stray(&id, &s).await?;
        committed?;
        Ok(Response::Success(Success {
            message: format!("{}: {}{adopted}", id.name, change.new),
            allocation: Some(change.new),
            capacity: None,
        }))
    }

    /// Moves a session process into the user's slice when it is outside it
    /// and logind does not own it (a PAM stack without pam_systemd). A
    /// logind session's process is logind's to place, even when its scope is
    /// still being set up. Returns what to add to the answer.
    async fn adopt_stray(&self, id: &Identity, s: &SessionOpen) -> Result<String, ServiceError> {
        if s.session_id.is_some() {
            // logind's session: not even worth a look at /proc
            return Ok(String::new());
        }
        let Placement::Elsewhere(path) = proc::placement(s.pid, id.uid) else {
            return Ok(String::new());
        };
        match self.systemd.in_logind_session(s.pid).await {
            Ok(false) => {}
            Ok(true) => return Ok(String::new()),
            Err(e) => {
                tracing::warn!(pid = s.pid, error = %e, "cannot ask logind about a session process; leaving it where it is");
                return Ok(String::new());
            }
        }
        match self.systemd.adopt(id.uid, s.pid).await {
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
        let _guard = self.locks.lock(id.uid).await;
        let change = self
            .store
            .mutate(|l| l.close_session(id.uid, s.pid, s.session_id.as_deref(), &up));
        self.watchers.cancel(&s.pid);
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(uid = id.uid, user = %id.name, pid = s.pid, last = change.is_some(), "session closed");
        let Some(c) = change else {
            self.store.save_later();
            let left = self
                .store
                .read(|l| l.get(id.uid).map_or(0, |e| e.sessions.len()));
            return Ok(Response::success(format!(
                "{}: session closed, {left} still open",
                id.name
            )));
        };
        self.leases.cancel(&id.uid);
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
        self.watchers.spawn(pid, async move {
            if let Some(fd) = fd
                && let Err(e) = fd.exited().await
            {
                tracing::warn!(pid, error = %e, "cannot watch a session process");
                return;
            }
            if let Some(service) = this.upgrade() {
                // The watch is over: out of the table before the count-down.
                service.watchers.cancel(&pid);
                service.session_ended(uid, pid).await;
            }
        });
    }

    /// A session process ended; forget its session (if still counted).
    pub(super) async fn session_ended(self: &Arc<Self>, uid: u32, pid: u32) {
        let counted = self.store.read(|l| {
            l.get(uid)
                .is_some_and(|e| e.sessions.iter().any(|s| s.pid == pid))
        });
        if !counted {
            return;
        }
        self.counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
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
        "session opened"
    );
    "session opened".to_string()
}
