//! Catching up with the host: at start (the saved ledger against the policy,
//! the user database and systemd) and whenever logind reports a user coming
//! or going (sessions opened or ended while nobody told us).

use std::sync::Arc;

use fairshare_proto::wire::{Response, SessionOpen};

use super::Service;
use super::sessions::Opener;
use crate::ledger::Ledger;
use crate::proc::{self, ProcessRef};
use crate::systemd::{Systemd, SystemdError};

impl<S: Systemd> Service<S> {
    /// Puts a saved ledger in place at once, so requests see it from the first
    /// moment; [`Service::catch_up`] then checks it against the host.
    pub fn load(&self, saved: Ledger) {
        self.store.replace(saved);
    }

    /// Reads fairshare's drop-ins (what slices that start get), before the
    /// first request is answered. Blocking: a few small files.
    pub fn load_dropins(&self) {
        if let Err(e) = self.dropins.load() {
            tracing::error!(error = %e, "cannot read fairshare's drop-ins; writing them anew");
        }
    }

    /// [`Service::load`] and [`Service::catch_up`] in one.
    pub async fn restore(self: &Arc<Self>, saved: Ledger) {
        self.load(saved);
        self.catch_up().await;
    }

    /// After start: reads fairshare's drop-ins, brings the saved ledger in
    /// line with the current policy and user database, writes the policy's
    /// drop-ins and sets the running slices whose values differ from them
    /// (after a reboot the runtime values of resizes are gone: they are set
    /// again), restarts lease timers, then reconciles with logind. Runs
    /// while requests are already being answered; `list` waits for it.
    pub async fn catch_up(self: &Arc<Self>) {
        let d = self.dropins.clone();
        match tokio::task::spawn_blocking(move || d.load()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read fairshare's drop-ins; writing them anew")
            }
            Err(e) => tracing::error!(error = %e, "reading fairshare's drop-ins"),
        }
        self.check_running_slices().await;
        let changed = self.refresh().await;
        if !changed.is_empty() {
            tracing::info!(
                users = %super::reload::name_list(&changed),
                "slices set at start-up to what the policy and the saved allocations say (values a reboot cleared, a policy, user or group change while fairshared was stopped, or a memory guarantee due to be raised): {}",
                super::reload::name_list(&changed)
            );
        }
        // under each user's lock, from the ledger as it is then (the refresh
        // armed them already, unless it stopped early; requests answered
        // meanwhile may have changed them)
        for (uid, _) in self.store.read(|l| l.leases()) {
            let _guard = self.locks.lock(uid).await;
            self.rearm_lease(uid);
        }
        if let Err(e) = self.store.save().await {
            tracing::error!(error = %e, "could not save state after start-up");
        }
        self.reconcile(None).await;
        self.caught_up.send_replace(true);
        self.bursting.poke();
        // the start-up's passes over every user are over: give back the
        // memory they used for a while (the state file read, a write per
        // user), which the allocator would otherwise keep
        let _ = tokio::task::spawn_blocking(crate::host::give_back_heap).await;
    }

    /// Reads what every slice logind knows really carries, once at start: a
    /// slice that started before the drop-ins were written or changed
    /// (first install, a policy changed while fairshared was stopped, a
    /// crash between a file and a call) is then set right by the refresh.
    async fn check_running_slices(&self) {
        let Ok(users) = self.systemd.logind_users().await else {
            return;
        };
        for (uid, name) in users {
            if let Err(e) = self.read_back(uid, &name).await {
                tracing::warn!(uid, error = %e, "cannot read the limits on a running slice")
            }
        }
    }

    /// Reads what `uid`'s slice carries and records where it differs from
    /// what the files say ([`crate::defaults::DropIns::observed`]), so that
    /// the next sync sets it right. Nothing when the slice is not loaded.
    pub(super) async fn read_back(&self, uid: u32, name: &str) -> Result<(), SystemdError> {
        if let Some(actual) = self.systemd.slice_values(uid).await? {
            let keys = self.dropins.observed(uid, actual);
            if !keys.is_empty() {
                tracing::info!(uid, user = %name, "the slice of {name} does not carry what the drop-ins say ({keys:?}); setting it");
            }
        }
        Ok(())
    }

    /// Waits (at most `limit`) for the start-up catch-up; whether it is done.
    pub(super) async fn wait_caught_up(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Brings the ledger in line with the host: sessions whose process is gone
    /// are counted down; sessions logind knows but the ledger does not (opened
    /// while fairshared was away) are counted and their users limited; so are
    /// users with only a user manager running (lingering users). `only`
    /// limits the pass to one user (when logind reports a login of theirs:
    /// a session counted then is that login's).
    pub async fn reconcile(self: &Arc<Self>, only: Option<u32>) {
        self.check_tracked(only).await;
        self.sweep_event_watchers(only);
        // Without logind's sessions, counting users with none would be wrong.
        let Some(mut added) = self.count_logind_sessions(only).await else {
            return;
        };
        added += self.count_user_managers(only).await;
        if added > 0 {
            tracing::info!(
                sessions = added,
                "counted sessions opened while fairshared was away"
            );
        }
    }

    /// Counts down the sessions whose process is gone; watches the others.
    async fn check_tracked(self: &Arc<Self>, only: Option<u32>) {
        let tracked: Vec<(u32, ProcessRef)> = self.store.read(|l| {
            l.entries()
                .filter(|(uid, _)| only.is_none_or(|o| o == **uid))
                .flat_map(|(uid, e)| {
                    e.sessions.iter().map(move |s| {
                        let p = ProcessRef {
                            pid: s.pid,
                            start_time: s.start_time,
                        };
                        (*uid, p)
                    })
                })
                .collect()
        });
        for (uid, p) in tracked {
            if !p.is_running() {
                self.session_ended(uid, p.pid).await;
            } else if !self.exits.contains(p.pid) {
                self.watch(uid, p.pid, p.pidfd());
            }
        }
    }

    /// Counts the logind sessions the ledger does not know. Returns how
    /// many, or `None` when logind cannot list them.
    async fn count_logind_sessions(self: &Arc<Self>, only: Option<u32>) -> Option<usize> {
        let sessions = match self.systemd.logind_sessions(only).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list logind sessions; only sessions opened through PAM are counted");
                return None;
            }
        };
        let mut added = 0;
        for s in sessions {
            let known = self.store.read(|l| {
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
            if self.open_untracked(open, only.is_some()).await {
                added += 1;
            }
        }
        Some(added)
    }

    /// Counts users logind knows with no session counted: lingering, or
    /// their user manager started while we were away. Returns how many.
    async fn count_user_managers(self: &Arc<Self>, only: Option<u32>) -> usize {
        let counted = |uid: u32| {
            self.store
                .read(|l| l.get(uid).is_some_and(|e| !e.sessions.is_empty()))
        };
        // the logind follower's check of one user with a session counted:
        // nothing to ask logind for
        if only.is_some_and(counted) {
            return 0;
        }
        let users = match self.systemd.logind_users().await {
            Ok(users) => users,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list logind users");
                return 0;
            }
        };
        let mut added = 0;
        for (uid, name) in users {
            if only.is_some_and(|o| o != uid) {
                continue;
            }
            if counted(uid) {
                continue;
            }
            let Ok(Some(pid)) = self.systemd.user_manager_pid(uid).await else {
                continue;
            };
            let open = SessionOpen {
                uid,
                pid,
                user: Some(name),
                service: Some(crate::ledger::USER_MANAGER.into()),
                ..SessionOpen::default()
            };
            if self.open_untracked(open, only.is_some()).await {
                added += 1;
            }
        }
        added
    }

    /// Opens a session found on the host rather than announced by PAM
    /// (`live`: reported by logind as it opened, not found at start-up).
    /// True when it was counted (not for exempt or unknown users).
    async fn open_untracked(self: &Arc<Self>, open: SessionOpen, live: bool) -> bool {
        let (uid, pid) = (open.uid, open.pid);
        let opener = match live {
            true => Opener::Follower,
            false => Opener::CatchUp,
        };
        match self.session_open(opener, open).await {
            Ok(Response::Success(s)) if s.allocation.is_some() => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(uid, pid, error = %e, "session not counted");
                false
            }
        }
    }
}
