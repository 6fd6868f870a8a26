//! `status` (one user) and `list` (every tracked user): read-only answers.

use fairshare_policy::{Identity, UserPolicy};
use fairshare_proto::wire::{Capacity, Response, Source, StatusInfo, Usage, UserList, UserRef};

use super::{Reply, Service, ServiceError};
use crate::admission::Peer;
use crate::ledger::Entry;
use crate::systemd::{Systemd, slice_name};

impl<S: Systemd> Service<S> {
    /// The caller's allocation, or (root, or the caller by name) a named user's.
    pub(super) async fn status(&self, peer: Peer, user: Option<UserRef>) -> Reply {
        let (id, policy) = match &user {
            None => self.user_and_policy(peer.uid).await?,
            Some(r) => {
                let id = self.identities.resolve(r).await?;
                if id.uid != peer.uid && !peer.is_root() {
                    return Err(ServiceError::NotYours);
                }
                (id, self.policy())
            }
        };
        let up = policy.for_user(&id);
        let entry = self.store.read(|l| l.get(id.uid).cloned());
        let cap = self.store.read(|l| l.capacity(&policy.capacity(self.host)));
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
            usage: self.usage(uid),
            capacity: None,
        }
    }

    /// What the user's slice uses now, with its CPU time over a recent
    /// window.
    fn usage(&self, uid: u32) -> Usage {
        let mut usage = self.cgroups.usage(uid);
        if let Some(n) = usage.cpu_usage_nsec {
            usage.cpu_recent = self.cpu_window.observe(uid, tokio::time::Instant::now(), n);
        }
        usage
    }

    /// Samples every tracked user's CPU time, so that `status` and `list`
    /// have a window to report (fairshared calls this every
    /// [`crate::cpu_window::SAMPLE_EVERY`]). Users no longer tracked are
    /// forgotten.
    pub fn sample_cpu(&self) {
        let mut uids: Vec<u32> = self.store.read(|l| l.entries().map(|(u, _)| *u).collect());
        uids.sort_unstable();
        self.cpu_window.retain(|u| uids.binary_search(&u).is_ok());
        let now = tokio::time::Instant::now();
        for uid in uids {
            if let Some(n) = self.cgroups.cpu_nsec(uid) {
                self.cpu_window.observe(uid, now, n);
            }
        }
    }

    /// Every tracked user, with their usage.
    pub(super) async fn list_rows(&self) -> (Vec<StatusInfo>, Capacity) {
        let policy = self.policy();
        let entries: Vec<(u32, Entry)> = self
            .store
            .read(|l| l.entries().map(|(u, e)| (*u, e.clone())).collect());
        let mut users = Vec::with_capacity(entries.len());
        for (uid, e) in entries {
            let id = match self.identities.by_uid(uid, policy.uses_groups()).await {
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
        let capacity = self.store.read(|l| l.capacity(&policy.capacity(self.host)));
        (users, capacity)
    }

    pub(super) async fn list(&self) -> Response {
        let (users, capacity) = self.list_rows().await;
        Response::UserList(UserList { users, capacity })
    }
}
