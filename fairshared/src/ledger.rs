//! The ledger: who holds which allocation, and which sessions are open.
//!
//! Pure decision logic, no I/O. Every change returns a [`Change`] saying what
//! the user's slice must be set to; the caller applies it to systemd and, if
//! that fails, puts the previous entry back with [`Ledger::restore`].
//!
//! A user has an entry while they have an open session or a resize in force.
//! The sum of all entries' limits is what the host has handed out; resizes
//! that would push it past the host's capacity are refused, logins never are.

use std::collections::BTreeMap;

use fairshare_policy::{CapacityLimit, UserPolicy};
use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::{Capacity, Limits, Resize, SessionInfo, Source};
use serde::{Deserialize, Serialize};

/// A resize in force: set by the user themselves or by root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub cpu: Cpus,
    pub mem: Bytes,
    pub tasks: Tasks,
    /// uid of whoever made it (the user, or 0 for root).
    pub by: u32,
    /// Unix time it was made.
    pub at: u64,
    /// Unix time it lapses back to the default, if it has a lease.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// One user's line in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(default)]
    pub sessions: Vec<SessionInfo>,
    #[serde(default)]
    pub grant: Option<Grant>,
    /// The limits this user should have now (grant, or policy default).
    pub limits: Limits,
    /// The limits last written to systemd successfully.
    #[serde(default)]
    pub applied: Option<Limits>,
    /// Something to tell the user in `status` (e.g. that a resize expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

impl Entry {
    pub fn source(&self, uid: u32) -> Source {
        match &self.grant {
            None => Source::Default,
            Some(g) if g.by == uid => Source::Resize,
            Some(_) => Source::Admin,
        }
    }
}

/// What a change asks of systemd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub uid: u32,
    /// The limits before, when the user had an entry.
    pub old: Option<Limits>,
    /// The limits the slice must get.
    pub new: Limits,
    /// True when the slice must be written even if `old == new` (for
    /// instance the first session after a daemon restart).
    pub force: bool,
}

impl Change {
    /// Whether systemd needs to be called at all.
    pub fn needs_apply(&self, applied: Option<&Limits>) -> bool {
        self.force || applied != Some(&self.new)
    }

    /// Whether the user's allocation changes (what the journal records).
    pub fn alters_allocation(&self) -> bool {
        self.old != Some(self.new)
    }
}

/// Why a resize was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Above the user's policy maximum; says which fields.
    ExceedsMax(Vec<String>),
    /// The host has not enough free capacity for the increase.
    NoCapacity(String),
}

impl std::fmt::Display for Refusal {
    /// What the user is told after "Request refused: ".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ExceedsMax(over) => f.write_str(&over.join("; ")),
            Refusal::NoCapacity(short) => {
                write!(f, "not enough free capacity on this host: {short}")
            }
        }
    }
}

/// Who asked for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The user, for themselves: bound by their maximum and capacity.
    User(u32),
    /// Root: may exceed the maximum; `force` also skips the capacity check.
    Root { force: bool },
}

impl Actor {
    /// The uid recorded as having made a grant.
    fn uid(self) -> u32 {
        match self {
            Actor::User(u) => u,
            Actor::Root { .. } => 0,
        }
    }
}

/// A resize as the ledger decides it: who, under which policy, what they
/// ask, who asks, and the host's capacity.
#[derive(Clone, Copy, Debug)]
pub struct ResizeRequest<'a> {
    pub uid: u32,
    pub name: &'a str,
    /// The user's policy (default and maximum).
    pub policy: &'a UserPolicy,
    /// What is asked; fields left out keep their current value.
    pub resize: Resize,
    pub actor: Actor,
    pub capacity: &'a CapacityLimit,
    /// Unix time now (recorded in the grant).
    pub now: u64,
    /// Unix time the resize lapses back to the default, if it has a lease.
    pub expires_at: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    users: BTreeMap<u32, Entry>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn get(&self, uid: u32) -> Option<&Entry> {
        self.users.get(&uid)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&u32, &Entry)> {
        self.users.iter()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Puts back a user's previous entry (after systemd refused a change).
    pub fn restore(&mut self, uid: u32, previous: Option<Entry>) {
        match previous {
            Some(e) => self.users.insert(uid, e),
            None => self.users.remove(&uid),
        };
    }

    /// Records that `limits` are now on the user's slice.
    pub fn mark_applied(&mut self, uid: u32, limits: Limits) {
        if let Some(e) = self.users.get_mut(&uid) {
            e.applied = Some(limits);
        }
    }

    /// Total handed out, optionally leaving one user out.
    pub fn allocated(&self, except: Option<u32>) -> (Cpus, Bytes) {
        self.users
            .iter()
            .filter(|(uid, _)| Some(**uid) != except)
            .fold((Cpus::default(), Bytes::default()), |(c, m), (_, e)| {
                (
                    c.saturating_add(e.limits.cpu),
                    m.saturating_add(e.limits.mem),
                )
            })
    }

    /// The capacity figures shown to people.
    pub fn capacity(&self, cap: &CapacityLimit) -> Capacity {
        let (cpu, mem) = self.allocated(None);
        Capacity {
            cpu_total: cap.cpu,
            mem_total: cap.mem,
            cpu_allocated: cpu,
            mem_allocated: mem,
            cpu_free: cap.cpu.saturating_sub(cpu),
            mem_free: cap.mem.saturating_sub(mem),
        }
    }

    /// The limits a user would have now: their entry's, or the policy default.
    pub fn effective(&self, uid: u32, up: &UserPolicy) -> Limits {
        self.users.get(&uid).map_or(up.default, |e| e.limits)
    }

    /// A resize (or, for root, a set). Fields left out keep their current value.
    pub fn resize(&mut self, req: ResizeRequest<'_>) -> Result<Change, Refusal> {
        let ResizeRequest {
            uid,
            name,
            policy: up,
            resize,
            actor,
            capacity: cap,
            now,
            expires_at,
        } = req;
        let current = self.effective(uid, up);
        let cpu = resize.cpu.unwrap_or(current.cpu);
        let mem = resize.mem.unwrap_or(current.mem);
        let tasks = resize.tasks.unwrap_or(current.tasks);
        if let Actor::User(_) = actor {
            check_max(up, cpu, mem, tasks)?;
        }
        if !matches!(actor, Actor::Root { force: true }) {
            self.check_capacity(uid, cpu, mem, cap)?;
        }
        let new = up.limits(cpu, mem, tasks);
        let grant = Grant {
            cpu,
            mem,
            tasks,
            by: actor.uid(),
            at: now,
            expires_at,
        };
        let old = self.users.get(&uid).map(|e| e.limits);
        let entry = self.users.entry(uid).or_insert_with(|| Entry {
            name: name.to_string(),
            sessions: Vec::new(),
            grant: None,
            limits: new,
            applied: None,
            notice: None,
        });
        entry.name = name.to_string();
        entry.grant = Some(grant);
        entry.limits = new;
        entry.notice = None;
        Ok(Change {
            uid,
            old,
            new,
            force: false,
        })
    }

    /// Refuses an increase that does not fit in what is free for this user.
    fn check_capacity(
        &self,
        uid: u32,
        cpu: Cpus,
        mem: Bytes,
        cap: &CapacityLimit,
    ) -> Result<(), Refusal> {
        let (cur_cpu, cur_mem) = self
            .users
            .get(&uid)
            .map_or((Cpus::default(), Bytes::default()), |e| {
                (e.limits.cpu, e.limits.mem)
            });
        let (others_cpu, others_mem) = self.allocated(Some(uid));
        let free_cpu = cap.cpu.saturating_sub(others_cpu);
        let free_mem = cap.mem.saturating_sub(others_mem);
        let mut short = Vec::new();
        if cpu > cur_cpu && cpu > free_cpu {
            short.push(format!(
                "cpu {cpu} asked, {free_cpu} free for you (host capacity {} CPUs = {} x overcommit {}; {others_cpu} allocated to others)",
                cap.cpu, cap.base_cpu, cap.overcommit_cpu
            ));
        }
        if mem > cur_mem && mem > free_mem {
            short.push(format!(
                "mem {mem} asked, {} free for you (host capacity {} = {} x overcommit {}; {} allocated to others)",
                free_mem.human(),
                cap.mem.human(),
                cap.base_mem.human(),
                cap.overcommit_mem,
                others_mem.human()
            ));
        }
        match short.is_empty() {
            true => Ok(()),
            false => Err(Refusal::NoCapacity(short.join("; "))),
        }
    }

    /// Drops a user's resize: back to the policy default, and out of the
    /// ledger entirely when they have no session open.
    pub fn release(&mut self, uid: u32, up: &UserPolicy) -> Change {
        let old = self.users.get(&uid).map(|e| e.limits);
        let keep = match self.users.get_mut(&uid) {
            Some(e) => {
                e.grant = None;
                e.limits = up.default;
                !e.sessions.is_empty()
            }
            None => false,
        };
        if !keep {
            self.users.remove(&uid);
        }
        Change {
            uid,
            old,
            new: up.default,
            force: false,
        }
    }

    /// A leased resize ran out: back to the default, with a notice. Does
    /// nothing (`None`) if the grant has changed since the lease was set.
    pub fn expire(
        &mut self,
        uid: u32,
        expires_at: u64,
        up: &UserPolicy,
        notice: String,
    ) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        if entry.grant.as_ref().and_then(|g| g.expires_at) != Some(expires_at) {
            return None;
        }
        let old = Some(entry.limits);
        entry.grant = None;
        entry.limits = up.default;
        entry.notice = Some(notice);
        if entry.sessions.is_empty() {
            self.users.remove(&uid);
        }
        Some(Change {
            uid,
            old,
            new: up.default,
            force: false,
        })
    }

    /// Every lease in force: `(uid, expires_at)`.
    pub fn leases(&self) -> Vec<(u32, u64)> {
        self.users
            .iter()
            .filter_map(|(u, e)| Some((*u, e.grant.as_ref()?.expires_at?)))
            .collect()
    }

    /// A session opened. The first one gives the user their allocation (the
    /// default, or a resize still in force). Never refused.
    pub fn open_session(
        &mut self,
        uid: u32,
        name: &str,
        up: &UserPolicy,
        s: SessionInfo,
    ) -> Change {
        let old = self.users.get(&uid).map(|e| e.limits);
        let entry = self.users.entry(uid).or_insert_with(|| Entry {
            name: name.to_string(),
            sessions: Vec::new(),
            grant: None,
            limits: up.default,
            applied: None,
            notice: None,
        });
        entry.name = name.to_string();
        // A pid can only hold one session; a reused pid replaces a stale record.
        entry.sessions.retain(|x| x.pid != s.pid);
        entry.sessions.push(s);
        let first = entry.sessions.len() == 1;
        Change {
            uid,
            old,
            new: entry.limits,
            force: first,
        }
    }

    /// A session closed. Returns the change when it was the user's last
    /// session: their resize ends and the slice goes back to the default.
    /// `None` when the session was unknown or others remain.
    pub fn close_session(
        &mut self,
        uid: u32,
        pid: u32,
        session_id: Option<&str>,
        up: &UserPolicy,
    ) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        let before = entry.sessions.len();
        entry.sessions.retain(|x| {
            let same_id = session_id.is_some() && x.session_id.as_deref() == session_id;
            !(x.pid == pid || same_id)
        });
        if entry.sessions.len() == before || !entry.sessions.is_empty() {
            return None;
        }
        let old = Some(entry.limits);
        self.users.remove(&uid);
        Some(Change {
            uid,
            old,
            new: up.default,
            force: false,
        })
    }

    /// Re-derives a user's limits after the policy changed: a resize beyond a
    /// lowered maximum is clamped. Returns the change if their limits moved.
    pub fn repolicy(&mut self, uid: u32, up: &UserPolicy) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        let old = entry.limits;
        let new = match &mut entry.grant {
            None => up.default,
            Some(g) => {
                g.cpu = g.cpu.min(up.max.cpu);
                g.mem = g.mem.min(up.max.mem);
                g.tasks = g.tasks.min(up.max.tasks);
                up.limits(g.cpu, g.mem, g.tasks)
            }
        };
        entry.limits = new;
        (old != new).then_some(Change {
            uid,
            old: Some(old),
            new,
            force: false,
        })
    }

    /// Entries for uids the caller no longer considers valid, e.g. users who
    /// became exempt.
    pub fn remove(&mut self, uid: u32) -> Option<Entry> {
        self.users.remove(&uid)
    }
}

/// Refuses a user's resize above their maximum, naming every field that is.
fn check_max(up: &UserPolicy, cpu: Cpus, mem: Bytes, tasks: Tasks) -> Result<(), Refusal> {
    let mut over = Vec::new();
    if cpu > up.max.cpu {
        over.push(format!(
            "cpu {cpu} is above your maximum of {} CPUs",
            up.max.cpu
        ));
    }
    if mem > up.max.mem {
        over.push(format!("mem {mem} is above your maximum of {}", up.max.mem));
    }
    if tasks > up.max.tasks {
        over.push(format!(
            "tasks {tasks} is above your maximum of {}",
            up.max.tasks
        ));
    }
    match over.is_empty() {
        true => Ok(()),
        false => Err(Refusal::ExceedsMax(over)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_policy::{HostResources, Identity, Policy};

    fn policy(text: &str) -> Policy {
        Policy::from_sources(&[("p.yaml".into(), text.into())]).unwrap()
    }

    const P: &str = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\ncapacity: {cpu: 8, mem: 64G, overcommit: 1}\n";

    fn up(p: &Policy, uid: u32) -> UserPolicy {
        p.for_user(&Identity {
            uid,
            name: format!("u{uid}"),
            groups: vec![],
        })
    }

    fn cap(p: &Policy) -> CapacityLimit {
        p.capacity(HostResources {
            cpus: Cpus::whole(2),
            mem: Bytes(4 << 30),
        })
    }

    /// A resize asked now (time 0) without a lease.
    fn ask<'a>(
        uid: u32,
        name: &'a str,
        up: &'a UserPolicy,
        resize: Resize,
        actor: Actor,
        capacity: &'a CapacityLimit,
    ) -> ResizeRequest<'a> {
        ResizeRequest {
            uid,
            name,
            policy: up,
            resize,
            actor,
            capacity,
            now: 0,
            expires_at: None,
        }
    }

    fn resize(cpu: u64, mem_g: u64) -> Resize {
        Resize {
            cpu: Some(Cpus::whole(cpu)),
            mem: Some(Bytes(mem_g << 30)),
            ..Resize::default()
        }
    }

    fn session(pid: u32) -> SessionInfo {
        SessionInfo {
            pid,
            session_id: Some(format!("s{pid}")),
            ..SessionInfo::default()
        }
    }

    #[test]
    fn resize_within_max_and_release_back_to_default() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let c = l
            .resize(ResizeRequest {
                now: 10,
                ..ask(1001, "alice", &u, resize(3, 3), Actor::User(1001), &cap(&p))
            })
            .unwrap();
        assert_eq!(c.old, None);
        assert_eq!(c.new.cpu, Cpus::whole(3));
        assert_eq!(c.new.mem, Bytes(3 << 30));
        assert_eq!(c.new.tasks, Tasks(4096));
        assert_eq!(l.get(1001).unwrap().source(1001), Source::Resize);
        assert_eq!(l.allocated(None), (Cpus::whole(3), Bytes(3 << 30)));
        let c = l.release(1001, &u);
        assert_eq!(c.new, u.default);
        assert!(l.get(1001).is_none());
        assert_eq!(l.allocated(None), (Cpus::default(), Bytes::default()));
    }

    #[test]
    fn partial_resize_keeps_other_fields() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let only_cpu = Resize {
            cpu: Some(Cpus::whole(4)),
            ..Resize::default()
        };
        let c = l
            .resize(ask(1001, "a", &u, only_cpu, Actor::User(1001), &cap(&p)))
            .unwrap();
        assert_eq!(c.new.mem, u.default.mem);
        assert_eq!(c.new.cpu, Cpus::whole(4));
    }

    #[test]
    fn beyond_max_is_refused_with_every_reason_and_nothing_changes() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let req = Resize {
            cpu: Some(Cpus::whole(16)),
            mem: Some(Bytes(64 << 30)),
            tasks: Some(Tasks(5000)),
            duration: None,
        };
        let e = l
            .resize(ask(1001, "a", &u, req, Actor::User(1001), &cap(&p)))
            .unwrap_err();
        let Refusal::ExceedsMax(reasons) = e else {
            panic!("wrong refusal")
        };
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("maximum of 8 CPUs"), "{reasons:?}");
        assert!(l.is_empty());
    }

    #[test]
    fn root_may_exceed_max_but_not_capacity_unless_forced() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let c = l
            .resize(ask(
                1001,
                "a",
                &u,
                resize(8, 40),
                Actor::Root { force: false },
                &cap(&p),
            ))
            .unwrap();
        assert_eq!(c.new.mem, Bytes(40 << 30));
        assert_eq!(l.get(1001).unwrap().source(1001), Source::Admin);
        let e = l
            .resize(ask(
                1002,
                "b",
                &up(&p, 1002),
                resize(1, 30),
                Actor::Root { force: false },
                &cap(&p),
            ))
            .unwrap_err();
        assert!(matches!(e, Refusal::NoCapacity(_)));
        assert!(
            l.resize(ask(
                1002,
                "b",
                &up(&p, 1002),
                resize(1, 30),
                Actor::Root { force: true },
                &cap(&p)
            ))
            .is_ok()
        );
    }

    #[test]
    fn capacity_counts_others_and_says_what_is_free() {
        let p = policy(P); // capacity 8 CPUs, 64G
        let mut l = Ledger::new();
        let a = up(&p, 1001);
        let b = up(&p, 1002);
        l.resize(ask(
            1001,
            "a",
            &a,
            resize(6, 8),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        let e = l
            .resize(ask(
                1002,
                "b",
                &b,
                resize(4, 8),
                Actor::User(1002),
                &cap(&p),
            ))
            .unwrap_err();
        let Refusal::NoCapacity(msg) = e else {
            panic!("wrong refusal")
        };
        assert!(msg.contains("cpu 4 asked, 2 free for you"), "{msg}");
        assert!(msg.contains("6 allocated to others"), "{msg}");
        assert!(l.get(1002).is_none());
        // exactly what is free fits
        l.resize(ask(
            1002,
            "b",
            &b,
            resize(2, 8),
            Actor::User(1002),
            &cap(&p),
        ))
        .unwrap();
        // shrinking is always allowed, even when the host is full
        l.resize(ask(
            1001,
            "a",
            &a,
            resize(1, 8),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        // a user's own allocation counts as theirs to reuse
        l.resize(ask(
            1001,
            "a",
            &a,
            resize(6, 8),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        let c = l.capacity(&cap(&p));
        assert_eq!(c.cpu_allocated, Cpus::whole(8));
        assert_eq!(c.cpu_free, Cpus::whole(0));
    }

    #[test]
    fn sessions_count_and_the_last_close_releases() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let c = l.open_session(1001, "a", &u, session(100));
        assert!(c.force && c.new == u.default);
        let c = l.open_session(1001, "a", &u, session(200));
        assert!(!c.force);
        assert_eq!(l.get(1001).unwrap().sessions.len(), 2);
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(4, 4),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        assert_eq!(l.close_session(1001, 100, None, &u), None);
        assert_eq!(l.get(1001).unwrap().limits.cpu, Cpus::whole(4));
        let c = l.close_session(1001, 999, Some("s200"), &u).unwrap();
        assert_eq!(c.new, u.default);
        assert!(l.get(1001).is_none());
        // an unknown close changes nothing
        assert_eq!(l.close_session(1001, 1, None, &u), None);
    }

    #[test]
    fn release_keeps_the_entry_while_sessions_are_open() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.open_session(1001, "a", &u, session(100));
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(4, 4),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        let c = l.release(1001, &u);
        assert_eq!(c.new, u.default);
        let e = l.get(1001).unwrap();
        assert_eq!(e.grant, None);
        assert_eq!(e.sessions.len(), 1);
    }

    #[test]
    fn a_resize_made_before_login_applies_at_the_first_session() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(5, 5),
            Actor::Root { force: false },
            &cap(&p),
        ))
        .unwrap();
        let c = l.open_session(1001, "a", &u, session(1));
        assert_eq!(c.new.cpu, Cpus::whole(5));
    }

    #[test]
    fn restore_undoes_a_change() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let before = l.get(1001).cloned();
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(3, 3),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        l.restore(1001, before);
        assert!(l.is_empty());
    }

    #[test]
    fn a_lowered_max_clamps_grants() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(6, 20),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        let p2 = policy("defaults: {cpu: 1, mem: 4G}\nmax: {cpu: 4, mem: 16G}\n");
        let c = l.repolicy(1001, &up(&p2, 1001)).unwrap();
        assert_eq!(c.new.cpu, Cpus::whole(4));
        assert_eq!(c.new.mem, Bytes(16 << 30));
        assert_eq!(l.repolicy(1001, &up(&p2, 1001)), None);
    }

    #[test]
    fn leases_expire_back_to_the_default_once() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.open_session(1001, "a", &u, session(1));
        l.resize(ResizeRequest {
            expires_at: Some(100),
            ..ask(1001, "a", &u, resize(6, 8), Actor::User(1001), &cap(&p))
        })
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, 100)]);
        assert_eq!(l.expire(1001, 99, &u, "x".into()), None);
        let c = l.expire(1001, 100, &u, "expired".into()).unwrap();
        assert_eq!(c.new, u.default);
        let e = l.get(1001).unwrap();
        assert_eq!(e.notice.as_deref(), Some("expired"));
        assert_eq!(e.grant, None);
        assert_eq!(l.expire(1001, 100, &u, "again".into()), None);
        assert!(l.leases().is_empty());
        // a new resize clears the notice
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(3, 8),
            Actor::User(1001),
            &cap(&p),
        ))
        .unwrap();
        assert_eq!(l.get(1001).unwrap().notice, None);
    }

    #[test]
    fn ledger_round_trips_through_json() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.open_session(1001, "a", &u, session(100));
        l.resize(ResizeRequest {
            now: 7,
            expires_at: Some(99),
            ..ask(1001, "a", &u, resize(3, 3), Actor::User(1001), &cap(&p))
        })
        .unwrap();
        let text = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
    }
}
