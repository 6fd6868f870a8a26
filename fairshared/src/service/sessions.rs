//! Sessions: opened and closed by the PAM module, ended when their process
//! dies, and caught up with logind when fairshared starts or logind reports a
//! user coming or going.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fairshare_policy::Identity;
use fairshare_proto::wire::{ErrorCode, Response, SessionClose, SessionInfo, SessionOpen, Success};

use super::{Reply, Service, fail, lock, now};
use crate::ledger::Ledger;
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
        let _guard = self.lock_user(id.uid).await;
        let (process, pidfd) = ProcessRef::pin(s.pid);
        let info = SessionInfo {
            pid: s.pid,
            service: s.service.clone(),
            tty: s.tty.clone(),
            rhost: s.rhost.clone(),
            session_id: s.session_id.clone(),
            opened_at: now(),
            start_time: process.start_time,
        };
        let (prev, change) = self.mutate(|l| {
            (
                l.get(id.uid).cloned(),
                l.open_session(id.uid, &id.name, &up, info),
            )
        });
        // One journal line per login: apply_change logs an allocation change
        // (a user's first session), so that line says which session caused
        // it; each line costs a login tens of microseconds.
        let committed = if change.alters_allocation() {
            let why = format!(
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
            self.apply_change(&id, prev, &change, false, 0, &why).await
        } else {
            tracing::info!(
                uid = id.uid,
                user = %id.name,
                pid = s.pid,
                service = s.service.as_deref().unwrap_or(""),
                rhost = s.rhost.as_deref().unwrap_or(""),
                session_id = s.session_id.as_deref().unwrap_or(""),
                "session opened"
            );
            self.apply_change(&id, prev, &change, false, 0, "session opened")
                .await
        };
        self.save_later();
        self.watch_fd(id.uid, s.pid, pidfd);
        drop(_guard);
        // Limit the slice first, then put a stray session process into it:
        // only one outside the user's slice that logind does not own (a PAM
        // stack without pam_systemd). A logind session's process is logind's
        // to place, even when its scope is still being set up.
        let placement = match s.session_id {
            // logind's session: not even worth a look at /proc
            Some(_) => None,
            None => Some(proc::placement(s.pid, id.uid)),
        };
        let stray = match placement {
            Some(Placement::Elsewhere(path)) => match self.systemd.in_logind_session(s.pid).await {
                Ok(false) => Some(path),
                Ok(true) => None,
                Err(e) => {
                    tracing::warn!(pid = s.pid, error = %e, "cannot ask logind about a session process; leaving it where it is");
                    None
                }
            },
            _ => None,
        };
        let adopted = match stray {
            Some(path) => match self.systemd.adopt(id.uid, s.pid).await {
                Ok(scope) => {
                    self.counters.adopted.fetch_add(1, Ordering::Relaxed);
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
            None => String::new(),
        };
        committed?;
        Ok(Response::Success(Success {
            message: format!("{}: {}{adopted}", id.name, change.new),
            allocation: Some(change.new),
            capacity: None,
        }))
    }

    pub(super) async fn session_close(self: &Arc<Self>, s: SessionClose) -> Reply {
        let (id, policy) = match self.user_and_policy(s.uid).await {
            Ok(x) => x,
            Err(_) => (
                Identity {
                    uid: s.uid,
                    name: self
                        .read(|l| l.get(s.uid).map(|e| e.name.clone()))
                        .unwrap_or_else(|| s.uid.to_string()),
                    groups: Vec::new(),
                },
                self.policy(),
            ),
        };
        let up = policy.for_user(&id);
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
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(uid = id.uid, user = %id.name, pid = s.pid, last = change.is_some(), "session closed");
        let Some(c) = change else {
            self.save_later();
            let left = self.read(|l| l.get(id.uid).map_or(0, |e| e.sessions.len()));
            return Ok(Response::success(format!(
                "{}: session closed, {left} still open",
                id.name
            )));
        };
        if let Some(t) = lock(&self.leases).remove(&id.uid) {
            t.abort();
        }
        if up.exempt.is_some() {
            self.save_later();
            return Ok(Response::success(format!(
                "{}: last session closed",
                id.name
            )));
        }
        let committed = self
            .apply_change(&id, prev, &c, false, 0, "last session closed")
            .await;
        self.save_later();
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
    fn watch_fd(self: &Arc<Self>, uid: u32, pid: u32, fd: Option<Pidfd>) {
        let this = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            if let Some(fd) = fd
                && let Err(e) = fd.exited().await
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
    async fn session_ended(self: &Arc<Self>, uid: u32, pid: u32) {
        lock(&self.watchers).remove(&pid);
        let counted = self.read(|l| {
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
            tracing::error!(uid, pid, error = ?e, "could not count down an ended session");
        }
    }

    /// Puts a saved ledger in place at once, so requests see it from the first
    /// moment; [`Service::catch_up`] then checks it against the host.
    pub fn load(&self, saved: Ledger) {
        *lock(&self.ledger) = saved;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// [`Service::load`] and [`Service::catch_up`] in one.
    pub async fn restore(self: &Arc<Self>, saved: Ledger) {
        self.load(saved);
        self.catch_up().await;
    }

    /// After start: brings the saved ledger in line with the current policy
    /// and user database, writes every user's limits to systemd again (the
    /// runtime drop-ins normally survive a daemon restart, but not a reboot
    /// or `systemctl revert`), restarts lease timers, then reconciles with
    /// logind. Runs while requests are already being answered.
    pub async fn catch_up(self: &Arc<Self>) {
        let policy = self.policy();
        let uids: Vec<u32> = self.read(|l| l.entries().map(|(u, _)| *u).collect());
        for uid in uids {
            let _guard = self.lock_user(uid).await;
            let id = match self.identity(uid).await {
                Ok(id) => id,
                Err(_) => {
                    tracing::warn!(
                        uid,
                        "dropping saved allocation: the user no longer exists; lifting the limits fairshare set"
                    );
                    self.mutate(|l| l.remove(uid));
                    if let Err(e) = self.systemd.reset(uid).await {
                        tracing::error!(uid, error = %e, "could not lift limits");
                    }
                    continue;
                }
            };
            let up = policy.for_user(&id);
            if up.exempt.is_some() {
                tracing::warn!(uid, user = %id.name, "dropping saved allocation: the user is now exempt; lifting the limits fairshare set");
                self.mutate(|l| l.remove(uid));
                if let Err(e) = self.systemd.reset(uid).await {
                    tracing::error!(uid, error = %e, "could not lift limits");
                }
                continue;
            }
            if let Some(c) = self.mutate(|l| l.repolicy(uid, &up)) {
                tracing::info!(uid, user = %id.name, old = %c.old.map(|o| o.to_string()).unwrap_or_default(), new = %c.new, "policy changed while fairshared was stopped");
            }
            let Some(limits) = self.read(|l| l.get(uid).map(|e| e.limits)) else {
                continue;
            };
            match self.systemd.apply(uid, &limits).await {
                Ok(()) => self.mutate(|l| l.mark_applied(uid, limits)),
                Err(e) => tracing::error!(uid, error = %e, "could not re-apply saved limits"),
            }
        }
        for (uid, at) in self.read(|l| l.leases()) {
            self.schedule_lease(uid, at);
        }
        if let Err(e) = self.persist().await {
            tracing::error!(error = %e, "could not save state after start-up");
        }
        self.reconcile(None).await;
    }

    /// Brings the ledger in line with the host: sessions whose process is gone
    /// are counted down; sessions logind knows but the ledger does not (opened
    /// while fairshared was away) are counted and their users limited; so are
    /// users with only a user manager running (lingering users). `only`
    /// limits the pass to one user (when logind reports them).
    pub async fn reconcile(self: &Arc<Self>, only: Option<u32>) {
        let tracked: Vec<(u32, u32, Option<u64>)> = self.read(|l| {
            l.entries()
                .filter(|(uid, _)| only.is_none_or(|o| o == **uid))
                .flat_map(|(uid, e)| e.sessions.iter().map(move |s| (*uid, s.pid, s.start_time)))
                .collect()
        });
        for (uid, pid, start_time) in tracked {
            let p = ProcessRef { pid, start_time };
            if !p.is_running() {
                self.session_ended(uid, pid).await;
            } else if !lock(&self.watchers).contains_key(&pid) {
                self.watch_fd(uid, pid, p.pidfd());
            }
        }
        let sessions = match self.systemd.logind_sessions(only).await {
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
            if known || s.leader == 0 || !proc::alive(s.leader) {
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
            if self.open_untracked(open).await {
                added += 1;
            }
        }
        match self.systemd.logind_users().await {
            Ok(users) => {
                for (uid, name) in users {
                    if only.is_some_and(|o| o != uid) {
                        continue;
                    }
                    if self.read(|l| l.get(uid).is_some_and(|e| !e.sessions.is_empty())) {
                        continue;
                    }
                    // A user logind knows with no session counted: lingering,
                    // or their user manager started while we were away.
                    let Ok(Some(pid)) = self.systemd.user_manager_pid(uid).await else {
                        continue;
                    };
                    let open = SessionOpen {
                        uid,
                        pid,
                        user: Some(name),
                        service: Some("systemd-user".into()),
                        ..SessionOpen::default()
                    };
                    if self.open_untracked(open).await {
                        added += 1;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list logind users"),
        }
        if added > 0 {
            tracing::info!(
                sessions = added,
                "counted sessions opened while fairshared was away"
            );
        }
    }

    /// Opens a session found on the host rather than announced by PAM.
    /// True when it was counted (not for exempt or unknown users).
    async fn open_untracked(self: &Arc<Self>, open: SessionOpen) -> bool {
        let (uid, pid) = (open.uid, open.pid);
        match self.session_open(open).await {
            Ok(Response::Success(s)) if s.allocation.is_some() => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(uid, pid, answer = ?e, "session not counted");
                false
            }
        }
    }
}
