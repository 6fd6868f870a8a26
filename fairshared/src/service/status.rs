//! `status` (one user) and `list` (every tracked user): read-only answers.

use fairshare_policy::{Identity, UserPolicy};
use fairshare_proto::units::Bytes;
use fairshare_proto::wire::{
    Capacity, Limits, Response, RootSetting, Source, StatusInfo, Usage, UserList, UserRef,
};

use super::{Reply, Service, ServiceError};
use crate::admission::Peer;
use crate::ledger::Entry;
use crate::systemd::{Systemd, slice_name};

/// How long `list` waits for the start-up catch-up.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl<S: Systemd> Service<S> {
    /// The caller's allocation, or (root, or the caller by name) a named user's.
    pub(super) async fn status(&self, peer: Peer, user: Option<UserRef>) -> Reply {
        let (id, policy) = self
            .subject(peer, user.as_ref(), || ServiceError::NotYours)
            .await?;
        // someone looks at a user's CPU now (root's own status is the
        // watchdog's probe, not a look): the sampler runs for a while
        if id.uid != 0 {
            self.cpu_window.looked(tokio::time::Instant::now());
        }
        let up = policy.for_user(&id);
        let entry = self.store.read(|l| l.get(id.uid).cloned());
        let cap = self.store.read(|l| l.capacity(&policy.capacity(self.host)));
        let mut info = self.status_info(id.uid, &id.name, &up, entry.as_ref());
        if no_window(&info.usage) {
            // the first look after a quiet spell: a second sample shortly
            tokio::time::sleep(crate::cpu_window::FIRST_LOOK_WAIT).await;
            info.usage = self.durable_usage(id.uid, self.usage(id.uid));
        }
        info.capacity = Some(cap);
        if peer.is_root() {
            info.warnings = self.policy_problem().into_iter().collect();
        }
        info.events = self.notices.recent(id.uid, super::notices::STATUS_EVENTS);
        info.terminal_notices = Some(self.notices.setting(id.uid, policy.notices().terminal));
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
            fair: match exempt {
                true => Vec::new(),
                false => self.fair_parts(entry, &limits),
            },
            unenforced: match exempt {
                true => Vec::new(),
                false => unenforced(&limits, self.cgroups.layout()),
            },
            bursting: match (exempt, entry) {
                (false, Some(e)) if !e.sessions.is_empty() => self.burst_quota(uid, limits.cpu),
                _ => None,
            },
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
            // root's setting binds the user's resizes: that is their maximum
            max: (!exempt).then_some(entry.map_or(up.max, |e| e.user_ceiling(up))),
            policy,
            sessions: entry.map_or(0, |e| e.sessions.len() as u32),
            session_list: entry.map(|e| e.sessions.clone()).unwrap_or_default(),
            expires_at: entry.and_then(|e| match &e.grant {
                Some(g) => g.expires_at,
                None => e.admin.as_ref().and_then(|a| a.expires_at),
            }),
            root_setting: entry
                .and_then(|e| e.admin.as_ref())
                .filter(|_| !exempt)
                .map(|a| RootSetting {
                    cpu: a.cpu,
                    mem: a.mem,
                    tasks: a.tasks,
                    weight: a.weight,
                    io_weight: a.io_weight,
                    mem_low: a.mem_low,
                    swap: a.swap,
                    expires_at: a.expires_at,
                }),
            notice: entry.and_then(|e| e.notice.clone()),
            usage: self.durable_usage(uid, self.usage(uid)),
            capacity: None,
            warnings: Vec::new(),
            events: Vec::new(),
            terminal_notices: None,
        }
    }

    /// The fair-share settings for people, saying when the memory
    /// guarantee is less than wanted because the guarantees wanted exceed
    /// `capacity.mem_low` (issue 15).
    fn fair_parts(&self, entry: Option<&Entry>, limits: &Limits) -> Vec<String> {
        let wanted = limits.mem_low.filter(|b| b.get() > 0);
        let held = entry.is_some_and(Entry::holds_guarantee);
        let text = match (wanted, entry.and_then(|e| e.granted_mem_low)) {
            // held from login to the last logout (or while set explicitly),
            // and only then on the slice
            (Some(w), _) if !held => {
                format!("{} guaranteed while logged in (none now)", w.human())
            }
            (Some(w), Some(got)) => format!("{} guaranteed ({})", got.human(), self.cut_why(w)),
            _ => return limits.fair_parts(),
        };
        let mut parts = Limits {
            mem_low: None,
            ..*limits
        }
        .fair_parts();
        let at = usize::from(limits.weight.is_some()) + usize::from(limits.io_weight.is_some());
        parts.insert(at, text);
        parts
    }

    /// Why a guarantee is less than wanted (`capacity.mem_low`).
    fn cut_why(&self, wanted: Bytes) -> String {
        let policy = self.policy();
        let pool = self.pool(&policy);
        match pool.mode {
            fairshare_policy::WhenFull::Scale => format!(
                "scaled from {}: the guarantees wanted exceed capacity.mem_low {}",
                wanted.human(),
                pool.total.human()
            ),
            fairshare_policy::WhenFull::FirstCome => format!(
                "of {} wanted: capacity.mem_low {} is taken by earlier logins (when_full: first_come)",
                wanted.human(),
                pool.total.human()
            ),
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

    /// Whether the CPU sampler should run now (someone looked at usage
    /// within [`crate::cpu_window::HOLD`]), and a way to wait until then.
    pub fn cpu_window(&self) -> &crate::cpu_window::CpuWindow {
        &self.cpu_window
    }

    /// Samples every tracked user's CPU time, so that `status` and `list`
    /// have a window to report (fairshared calls this every
    /// [`crate::cpu_window::SAMPLE_EVERY`] while someone looks, on the blocking pool: where the
    /// host keeps no per-cgroup CPU figure it is a walk of each user's
    /// processes, whose size the user chooses). Users no longer tracked are
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

    /// Every tracked user. Right after a start, waits for the catch-up
    /// with logind (a few seconds at most), so that users it is about to
    /// count are not missing; says so if it is still going on.
    pub(super) async fn list(&self) -> Response {
        let caught_up = self.wait_caught_up(CATCH_UP_WAIT).await;
        self.cpu_window.looked(tokio::time::Instant::now());
        let (mut users, mut capacity) = self.list_rows().await;
        if users.iter().any(|u| no_window(&u.usage)) {
            // the first look after a quiet spell: a second sample shortly
            tokio::time::sleep(crate::cpu_window::FIRST_LOOK_WAIT).await;
            (users, capacity) = self.list_rows().await;
        }
        let mut warnings: Vec<String> = self.policy_problem().into_iter().collect();
        if !caught_up {
            warnings.push(
                "fairshared is still catching up with logind after its start: users whose sessions it has not counted yet are missing; ask again in a moment".into(),
            );
        }
        Response::UserList(UserList {
            users,
            capacity,
            warnings,
        })
    }
}

/// A slice with CPU time but no window over it yet (nobody looked lately).
fn no_window(u: &Usage) -> bool {
    u.cpu_usage_nsec.is_some() && u.cpu_recent.is_none()
}

/// The fair-share settings of `limits` that the host's cgroup layout cannot
/// enforce, each with why (issue 15: nothing pretends).
pub(crate) fn unenforced(limits: &Limits, layout: crate::cgroup::Layout) -> Vec<String> {
    use fairshare_policy::{CgroupLayout, unenforced_reason};
    let layout = match layout {
        crate::cgroup::Layout::Unified => CgroupLayout::Unified,
        crate::cgroup::Layout::Hybrid => CgroupLayout::Hybrid,
        crate::cgroup::Layout::Legacy => CgroupLayout::Legacy,
    };
    let mut out = Vec::new();
    if let Some(l) = limits.mem_low {
        out.extend(
            unenforced_reason("mem_low", layout).map(|why| format!("mem_low {}: {why}", l.human())),
        );
    }
    if let Some(sw) = limits.swap {
        out.extend(
            unenforced_reason("swap", layout).map(|why| format!("swap {}: {why}", sw.human())),
        );
    }
    if let Some(w) = limits.io_weight {
        out.push(format!(
            "io_weight {w}: only on disks using the BFQ scheduler (/sys/block/DISK/queue/scheduler) or, on cgroup v2, with io.cost enabled; with mq-deadline or none it is set but not enforced"
        ));
    }
    out
}

#[cfg(test)]
mod fair_tests {
    use fairshare_proto::units::{Bytes, Cpus, Tasks, Weight};

    use super::*;
    use crate::cgroup::Layout;

    #[test]
    fn status_says_which_fair_share_settings_the_layout_cannot_enforce() {
        let mut l = Limits::new(Cpus::whole(2), Bytes(8 << 30), None, Tasks(100));
        assert!(unenforced(&l, Layout::Hybrid).is_empty());
        l.weight = Weight::new(200);
        l.mem_low = Some(Bytes(256 << 20));
        l.swap = Some(Bytes(0));
        // weights are enforced everywhere; a guarantee and swap only on v2
        let v1 = unenforced(&l, Layout::Hybrid);
        assert_eq!(v1.len(), 2, "{v1:?}");
        assert!(
            v1[0].starts_with("mem_low 256M: has no effect on cgroup v1"),
            "{v1:?}"
        );
        assert!(v1[1].starts_with("swap 0"), "{v1:?}");
        assert!(unenforced(&l, Layout::Unified).is_empty());
        // an IO weight depends on the disk's scheduler on every layout
        l.io_weight = Weight::new(300);
        assert!(unenforced(&l, Layout::Unified)[0].contains("BFQ"));
        assert_eq!(
            l.fair_parts(),
            ["weight 200", "IO weight 300", "256M guaranteed", "no swap"]
        );
    }
}
