//! The ledger: who holds which allocation, and which sessions are open.
//!
//! Pure decision logic, no I/O. Every change returns a [`Change`] saying what
//! the user's slice must be set to; the caller applies it to systemd and, if
//! that fails, puts the previous entry back with [`Ledger::restore`].
//!
//! A user has an entry while they have an open session, a resize in force or
//! a setting of root's. The sum of all entries' limits is what the host has
//! handed out; resizes that would push it past the host's capacity are
//! refused, logins never are.
//!
//! ## Layers
//!
//! A user's limits are built field by field (cpu, mem, tasks) from three
//! layers, the first that has the field wins:
//!
//! 1. the user's own resize ([`Entry::grant`]): the fields they asked for;
//! 2. root's setting ([`Entry::admin`], `fairshare-ctl set`): the fields root
//!    named. It is binding: while it is in force the user's own resizes may
//!    go below it but never above it, and `release` and the last logout go
//!    back to it, not to the policy default. Root's `set --default` or the
//!    end of its `--for` ends it;
//! 3. the policy default.
//!
//! ## Leases
//!
//! With `leases.max_duration` set, a user's own resize that puts any field
//! above their base (root's setting, else the default) is a lease: it lapses
//! back to the base no later than `max_duration` after the allocation first
//! went above the base. Resizing again during a lease keeps that end (asking
//! for a longer `--for` is refused); `release` (or the lease's end) hands the
//! capacity back, after which a new resize starts a new lease and is checked
//! against the host's free capacity afresh. So `max_duration` caps the
//! continuous time above the default, whatever sequence of requests a user
//! sends.
//!
//! ## Bounds
//!
//! A resize (the user's or root's) gives no field less than [`MIN_CPU`],
//! [`MIN_MEM`] and [`MIN_TASKS`], or the user's policy default where that is
//! smaller: below that a login cannot even start a shell. A user's fields
//! stay at or below their policy maximum, or root's setting for fields root
//! set; only the fields a request names are checked.

use std::collections::BTreeMap;
use std::time::Duration;

use fairshare_policy::{CapacityLimit, UserPolicy};
use fairshare_proto::units::{Bytes, Cpus, Tasks, Weight, format_duration};
use fairshare_proto::wire::{Capacity, Limits, Resize, SessionInfo, Source};

use crate::guarantees::{Pool, Want};
use serde::{Deserialize, Serialize};

/// The PAM service of a user manager's session (`user@UID.service`).
pub const USER_MANAGER: &str = "systemd-user";

/// Whether a session is a login (anything but the user manager's): what
/// holds a memory guarantee ([`Entry::holds_guarantee`]).
fn holding(s: &SessionInfo) -> bool {
    s.service.as_deref() != Some(USER_MANAGER)
}

/// The least CPU a resize or set may give (unless the user's default is less).
pub const MIN_CPU: Cpus = Cpus::from_millis(100);
/// The least memory a resize or set may give (unless the user's default is less).
pub const MIN_MEM: Bytes = Bytes(64 << 20);
/// The fewest tasks a resize or set may give (unless the user's default is fewer).
pub const MIN_TASKS: Tasks = Tasks(32);

/// Some of a user's limits, set by the user themselves (their resize) or by
/// root (a set). Fields left out come from the layer below.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Tasks>,
    /// The fair-share fields (issue 15): `CPUWeight`, `IOWeight`,
    /// `MemoryLow` (`0`: none), `MemorySwapMax` (`0`: no swap). Absent in
    /// state saved by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_low: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Bytes>,
    /// uid of whoever made it (the user, or 0 for root).
    pub by: u32,
    /// Unix time it was last changed.
    pub at: u64,
    /// Unix time it lapses, if it has a lease (or root gave a `--for`).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Unix time the current lease began: when the user's allocation went
    /// above their base (root's setting, else the default) and has stayed
    /// above it since. A lease ends at most `max_duration` after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl Grant {
    fn empty(by: u32, at: u64) -> Grant {
        Grant {
            cpu: None,
            mem: None,
            tasks: None,
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
            by,
            at,
            expires_at: None,
            since: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.mem.is_none()
            && self.tasks.is_none()
            && self.weight.is_none()
            && self.io_weight.is_none()
            && self.mem_low.is_none()
            && self.swap.is_none()
    }

    /// Takes the fields `r` asks for.
    fn merge(&mut self, r: &Resize) {
        self.cpu = r.cpu.or(self.cpu);
        self.mem = r.mem.or(self.mem);
        self.tasks = r.tasks.or(self.tasks);
        self.weight = r.weight.or(self.weight);
        self.io_weight = r.io_weight.or(self.io_weight);
        self.mem_low = r.mem_low.or(self.mem_low);
        self.swap = r.swap.or(self.swap);
    }

    /// Leaves out the fields `other` has (root's set takes them over).
    fn without(mut self, other: &Grant) -> Option<Grant> {
        if other.cpu.is_some() {
            self.cpu = None;
        }
        if other.mem.is_some() {
            self.mem = None;
        }
        if other.tasks.is_some() {
            self.tasks = None;
        }
        if other.weight.is_some() {
            self.weight = None;
        }
        if other.io_weight.is_some() {
            self.io_weight = None;
        }
        if other.mem_low.is_some() {
            self.mem_low = None;
        }
        if other.swap.is_some() {
            self.swap = None;
        }
        (!self.is_empty()).then_some(self)
    }

    /// Whether any field it has is above the same field of `base` (more
    /// CPU, memory, tasks, weight, guarantee or swap).
    fn above(&self, base: &Limits) -> bool {
        let fair = FairOf::limits(base);
        self.cpu.is_some_and(|c| c > base.cpu)
            || self.mem.is_some_and(|m| m > base.mem)
            || self.tasks.is_some_and(|t| t > base.tasks)
            || self.weight.is_some_and(|w| w.get() > fair.weight)
            || self.io_weight.is_some_and(|w| w.get() > fair.io_weight)
            || self.mem_low.is_some_and(|l| l.get() > fair.mem_low)
            || self.swap.is_some_and(|w| w.get() > fair.swap)
    }

    /// `cpu 0.5 CPUs, mem 2G`: the fields it has, for messages.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu {
            parts.push(format!("cpu {c}"));
        }
        if let Some(m) = self.mem {
            parts.push(format!("mem {m}"));
        }
        if let Some(t) = self.tasks {
            parts.push(format!("tasks {t}"));
        }
        if let Some(w) = self.weight {
            parts.push(format!("weight {w}"));
        }
        if let Some(w) = self.io_weight {
            parts.push(format!("io_weight {w}"));
        }
        if let Some(l) = self.mem_low {
            parts.push(format!("mem_low {l}"));
        }
        if let Some(w) = self.swap {
            parts.push(format!("swap {}", show_swap(w)));
        }
        parts.join(", ")
    }

    fn quantities_positive(&self) -> bool {
        self.cpu.is_none_or(|c| c.millis() > 0)
            && self.mem.is_none_or(|m| m.get() > 0)
            && self.tasks.is_none_or(|t| t.get() > 0)
    }
}

/// One user's line in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(default, deserialize_with = "exact_list")]
    pub sessions: Vec<SessionInfo>,
    /// The user's own resize: the fields they asked for. (Boxed, as
    /// `admin`: most users have neither, and an entry is kept per user.)
    #[serde(default)]
    pub grant: Option<Box<Grant>>,
    /// Root's setting (`fairshare-ctl set`), binding on the user's own
    /// resizes and releases until root resets it or its `--for` ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Box<Grant>>,
    /// The limits this user should have now (from the layers above).
    pub limits: Limits,
    /// The limits last written to systemd successfully.
    #[serde(default)]
    pub applied: Option<Limits>,
    /// Something to tell the user in `status` (e.g. that a resize expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// The memory guarantee the slice gets when it is less than
    /// `limits.mem_low`: the guarantees wanted exceed `capacity.mem_low`
    /// ([`Ledger::regrant`], [`crate::guarantees`]). `None`: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_mem_low: Option<Bytes>,
    /// Unix time the user's current run of sessions began: their place in
    /// login order for `when_full: first_come`. Absent in older state (the
    /// oldest open session then stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged_in_at: Option<u64>,
}

/// A list of one read with room for one: serde's `Vec` makes room for four
/// at the first element, and most users have one session (shrinking it
/// afterwards would leave the rest as holes in the heap).
fn exact_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Exact<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Exact<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::new();
            while let Some(x) = seq.next_element()? {
                if v.capacity() == 0 {
                    v.reserve_exact(1);
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Exact(std::marker::PhantomData))
}

impl Entry {
    fn new(name: &str, limits: Limits) -> Entry {
        Entry {
            name: name.to_string(),
            sessions: Vec::new(),
            grant: None,
            admin: None,
            limits,
            applied: None,
            notice: None,
            granted_mem_low: None,
            logged_in_at: None,
        }
    }

    /// What the user's slice gets: their limits, with the memory guarantee
    /// that fits in `capacity.mem_low` ([`Entry::granted_mem_low`]), and
    /// none while they hold none ([`Entry::holds_guarantee`]: logged out,
    /// with nothing set explicitly), so that processes left behind keep no
    /// guarantee nobody counts.
    pub fn slice_limits(&self) -> Limits {
        let mut l = self.limits;
        if !self.holds_guarantee() {
            l.mem_low = None;
        } else if let Some(g) = self.granted_mem_low {
            l.mem_low = Some(g).filter(|g| g.get() > 0);
        }
        l
    }

    /// Whether the user's guarantee is root's setting (not their own
    /// resize): honoured first ([`crate::guarantees`]).
    pub fn root_guarantee(&self) -> bool {
        self.admin.as_ref().is_some_and(|a| a.mem_low.is_some())
            && self.grant.as_ref().is_none_or(|g| g.mem_low.is_none())
    }

    /// Whether the user's guarantee counts against `capacity.mem_low`: they
    /// have a login session ([`holding`]: not their user manager alone,
    /// which processes left behind keep running after the last logout), or
    /// root set it (a reservation, even while they are away). A user in the
    /// ledger only for root's setting of other fields does not count while
    /// away.
    pub fn holds_guarantee(&self) -> bool {
        // the user's own resize of it counts while they are logged in:
        // processes left behind keep no guarantee of their asking
        self.logged_in() || self.admin.as_ref().is_some_and(|a| a.mem_low.is_some())
    }

    /// Whether a login session of theirs is open ([`holding`]).
    fn logged_in(&self) -> bool {
        self.sessions.iter().any(holding)
    }

    /// The session opened by `pid`, if one is counted.
    pub fn session_of(&self, pid: u32) -> Option<&SessionInfo> {
        self.sessions.iter().find(|x| x.pid == pid)
    }

    /// Their place in login order (`u64::MAX`: no login session).
    fn since(&self) -> u64 {
        self.logged_in_at
            .or_else(|| {
                self.sessions
                    .iter()
                    .filter(|s| holding(s))
                    .map(|s| s.opened_at)
                    .min()
            })
            .unwrap_or(u64::MAX)
    }

    pub fn source(&self, _uid: u32) -> Source {
        match (&self.grant, &self.admin) {
            (Some(_), _) => Source::Resize,
            (None, Some(_)) => Source::Admin,
            (None, None) => Source::Default,
        }
    }

    /// How far the user may resize themselves: the policy's max, or root's
    /// setting where root set one (it binds the user's resizes).
    pub fn user_ceiling(&self, up: &UserPolicy) -> Limits {
        let mut top = up.max;
        if let Some(a) = &self.admin {
            top.cpu = a.cpu.unwrap_or(top.cpu);
            top.mem = a.mem.unwrap_or(top.mem);
            top.tasks = a.tasks.unwrap_or(top.tasks);
            top.weight = a.weight.or(top.weight);
            top.io_weight = a.io_weight.or(top.io_weight);
            top.mem_low = a.mem_low.or(top.mem_low);
            top.swap = a.swap.or(top.swap);
        }
        top
    }

    /// When the allocation next changes by itself: the user's lease, or
    /// the end of root's setting, whichever comes first.
    pub fn next_expiry(&self) -> Option<u64> {
        let user = self.grant.as_ref().and_then(|g| g.expires_at);
        let root = self.admin.as_ref().and_then(|g| g.expires_at);
        match (user, root) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the entry still has a reason to be in the ledger.
    fn needed(&self) -> bool {
        !self.sessions.is_empty() || self.grant.is_some() || self.admin.is_some()
    }

    /// What the user falls back to without their own resize: root's
    /// setting over the policy default.
    fn base(&self, up: &UserPolicy) -> Limits {
        compose(up, None, self.admin.as_deref())
    }
}

/// The limits the layers give, field by field: the user's resize, root's
/// setting, the policy default.
fn compose(up: &UserPolicy, grant: Option<&Grant>, admin: Option<&Grant>) -> Limits {
    let pick = |f: &dyn Fn(&Grant) -> Option<u64>, default: u64| {
        grant
            .and_then(f)
            .or_else(|| admin.and_then(f))
            .unwrap_or(default)
    };
    let d = up.default;
    let cpu = Cpus::from_millis(pick(&|g| g.cpu.map(Cpus::millis), d.cpu.millis()));
    let mem = Bytes(pick(&|g| g.mem.map(Bytes::get), d.mem.get()));
    let tasks = Tasks(pick(&|g| g.tasks.map(Tasks::get), d.tasks.get()));
    let mut l = match (cpu, mem, tasks) == (d.cpu, d.mem, d.tasks) {
        // exactly the default, soft limit included
        true => d,
        false => up.limits(cpu, mem, tasks),
    };
    let fair = |f: &dyn Fn(&Grant) -> Option<u64>| grant.and_then(f).or_else(|| admin.and_then(f));
    if let Some(w) = fair(&|g| g.weight.map(Weight::get)) {
        l.weight = Weight::new(w);
    }
    if let Some(w) = fair(&|g| g.io_weight.map(Weight::get)) {
        l.io_weight = Weight::new(w);
    }
    if let Some(b) = fair(&|g| g.mem_low.map(Bytes::get)) {
        // no guarantee above the hard limit
        l.mem_low = Some(Bytes(b.min(l.mem.get()))).filter(|b| b.get() > 0);
    }
    if let Some(b) = fair(&|g| g.swap.map(Bytes::get)) {
        // `max`: no limit, systemd's default
        l.swap = (b != u64::MAX).then_some(Bytes(b));
    }
    l
}

/// A resized swap as the user wrote it (`max`: no limit).
fn show_swap(b: Bytes) -> String {
    SwapSize(b.get()).to_string()
}

/// A swap size in bytes for bounds and their messages: `u64::MAX` is no
/// limit (`max`).
#[derive(Clone, Copy, PartialEq, PartialOrd)]
struct SwapSize(u64);

impl std::fmt::Display for SwapSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            u64::MAX => f.write_str("max"),
            n => write!(f, "{}", Bytes(n)),
        }
    }
}

/// The fair-share fields of some limits as numbers, with systemd's
/// defaults for those left unset (weights 100, no guarantee, swap
/// unlimited), for comparisons.
struct FairOf {
    weight: u64,
    io_weight: u64,
    mem_low: u64,
    swap: u64,
}

impl FairOf {
    fn limits(l: &Limits) -> FairOf {
        FairOf {
            weight: l.weight.map_or(100, Weight::get),
            io_weight: l.io_weight.map_or(100, Weight::get),
            mem_low: l.mem_low.map_or(0, Bytes::get),
            swap: l.swap.map_or(u64::MAX, Bytes::get),
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

/// Why a resize was refused. Each text names the field, the bound and,
/// for root's setting, until when; it is written for whoever asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Above the user's maximum or root's setting, and/or below the
    /// minimum; one reason per field.
    Bounds {
        over: Vec<String>,
        under: Vec<String>,
    },
    /// The host has not enough free capacity for the increase.
    NoCapacity(String),
    /// A `--for` longer than `leases.max_duration`.
    LeaseTooLong { max: Duration, asked: Duration },
    /// A `--for` past the end of the lease in progress, which a resize
    /// during it cannot extend.
    LeaseRunning {
        /// Seconds left of the lease in progress.
        left: u64,
        max: Duration,
    },
}

impl std::fmt::Display for Refusal {
    /// What the asker is told after "Request refused: ".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Bounds { over, under } => {
                let all: Vec<&str> = under.iter().chain(over).map(String::as_str).collect();
                f.write_str(&all.join("; "))
            }
            Refusal::NoCapacity(short) => {
                write!(f, "not enough capacity on this host: {short}")
            }
            Refusal::LeaseTooLong { max, asked } => write!(
                f,
                "a resize above the default may last at most {} on this host (asked for {})",
                format_duration(*max),
                format_duration(*asked)
            ),
            Refusal::LeaseRunning { left, max } => write!(
                f,
                "the resize above the default in force ends in {}: a lease lasts at most {} in one go on this host, and resizing again does not extend it; resize without --for to keep that end, or `fairshare-ctl release` first and then resize to start a new lease",
                format_duration(Duration::from_secs((*left).max(1))),
                format_duration(*max)
            ),
        }
    }
}

/// Who asked for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The user, for themselves: bound by their maximum, root's setting,
    /// the lease and capacity.
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
    /// What is asked (fields left out keep their value), and for how long.
    pub resize: Resize,
    pub actor: Actor,
    pub capacity: &'a CapacityLimit,
    /// Unix time now.
    pub now: u64,
    /// `leases.max_duration`, if the policy sets one.
    pub max_lease: Option<Duration>,
}

/// Why a saved ledger was not taken.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// The ledger as stored, checked on the way in ([`Ledger`]'s `try_from`).
#[derive(Deserialize)]
struct Stored {
    users: BTreeMap<u32, Box<Entry>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Stored")]
pub struct Ledger {
    /// Boxed: an entry is 600 bytes, and a B-tree node holds room for 11 of
    /// its values, about half of it empty (about 1.1 KB per user at 100 000
    /// users, where a box costs 8 bytes a slot).
    users: BTreeMap<u32, Box<Entry>>,
}

impl TryFrom<Stored> for Ledger {
    type Error = Invalid;

    /// Refuses zero quantities (no limit fairshare writes is ever zero:
    /// such a file was not written by fairshared), and moves a setting of
    /// root's saved by an older fairshared in `grant` to `admin`.
    fn try_from(s: Stored) -> Result<Ledger, Invalid> {
        let mut users = s.users;
        for (uid, e) in users.iter_mut() {
            let limits_ok = |l: &Limits| {
                l.cpu.millis() > 0
                    && l.mem.get() > 0
                    && l.tasks.get() > 0
                    && l.mem_high.is_none_or(|h| h.get() > 0)
            };
            if !limits_ok(&e.limits) || e.applied.as_ref().is_some_and(|a| !limits_ok(a)) {
                return Err(Invalid(format!(
                    "user {uid}: a limit of 0 (cpu, mem or tasks); fairshared never writes one"
                )));
            }
            for g in [&e.grant, &e.admin].into_iter().flatten() {
                if !g.quantities_positive() {
                    return Err(Invalid(format!(
                        "user {uid}: a resize of 0 (cpu, mem or tasks); fairshared never accepts one"
                    )));
                }
            }
            if e.grant.as_ref().is_some_and(|g| g.by != *uid) && e.admin.is_none() {
                e.admin = e.grant.take();
            }
        }
        Ok(Ledger { users })
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger from saved entries, checked as on every load (see
    /// `try_from`).
    pub fn from_saved(users: Vec<(u32, Box<Entry>)>) -> Result<Ledger, Invalid> {
        let users = users.into_iter().collect();
        Ledger::try_from(Stored { users })
    }

    pub fn get(&self, uid: u32) -> Option<&Entry> {
        self.users.get(&uid).map(|e| &**e)
    }

    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&u32, &Entry)> {
        self.users.iter().map(|(u, e)| (u, &**e))
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
            Some(e) => self.users.insert(uid, Box::new(e)),
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

    /// The limits a user's slice should have now: their entry's (with the
    /// guarantee that fits, [`Entry::slice_limits`]), or the policy default
    /// without its guarantee (a user the ledger does not hold has no
    /// session and holds none).
    pub fn effective(&self, uid: u32, up: &UserPolicy) -> Limits {
        self.users.get(&uid).map_or_else(
            || Limits {
                mem_low: None,
                ..up.default
            },
            |e| e.slice_limits(),
        )
    }

    /// Shares `pool` among the guarantees wanted ([`crate::guarantees`]):
    /// sets each entry's [`Entry::granted_mem_low`]. Returns the users
    /// whose slice's guarantee changed. Nothing to do, and no allocation,
    /// while the guarantees wanted fit and nobody is cut.
    pub fn regrant(&mut self, pool: Pool) -> Vec<u32> {
        let mut wanted = Bytes::default();
        let mut cut = false;
        for e in self.users.values() {
            if e.holds_guarantee() {
                wanted = wanted.saturating_add(e.limits.mem_low.unwrap_or_default());
            }
            cut |= e.granted_mem_low.is_some();
        }
        if wanted <= pool.total && !cut {
            return Vec::new();
        }
        let wants: Vec<Want> = self
            .users
            .iter()
            .filter(|(_, e)| e.holds_guarantee())
            .filter_map(|(uid, e)| {
                Some(Want {
                    uid: *uid,
                    want: e.limits.mem_low?,
                    rooted: e.root_guarantee(),
                    since: e.since(),
                })
            })
            .collect();
        let grants: BTreeMap<u32, Bytes> =
            crate::guarantees::share(pool, &wants).into_iter().collect();
        let mut changed = Vec::new();
        for (uid, e) in self.users.iter_mut() {
            let before = e.slice_limits().mem_low;
            e.granted_mem_low = grants
                .get(uid)
                .copied()
                .filter(|g| Some(*g) < e.limits.mem_low);
            if e.slice_limits().mem_low != before {
                changed.push(*uid);
            }
        }
        changed
    }

    /// A resize (the user's own) or a set (root's). Fields left out keep
    /// their value. See the module's notes for the bounds and leases.
    pub fn resize(&mut self, req: ResizeRequest<'_>) -> Result<Change, Refusal> {
        let ResizeRequest {
            uid,
            name,
            policy: up,
            resize,
            actor,
            capacity: cap,
            now,
            max_lease,
        } = req;
        let entry = self.users.get(&uid);
        let old_grant = entry.and_then(|e| e.grant.as_deref().cloned());
        let old_admin = entry.and_then(|e| e.admin.as_deref().cloned());
        check_bounds(up, old_admin.as_ref(), &resize, actor, name, now)?;
        let (grant, admin) = match actor {
            Actor::User(_) => {
                let base = compose(up, None, old_admin.as_ref());
                let mut g = old_grant
                    .clone()
                    .unwrap_or_else(|| Grant::empty(actor.uid(), now));
                g.merge(&resize);
                g.by = actor.uid();
                g.at = now;
                let was_above = old_grant.as_ref().is_some_and(|o| o.above(&base));
                let lease = lease(&g, was_above, &base, resize.duration, max_lease, now)?;
                g.since = lease.since;
                g.expires_at = lease.expires_at;
                (Some(g), old_admin)
            }
            Actor::Root { .. } => {
                let mut a = old_admin.unwrap_or_else(|| Grant::empty(0, now));
                a.merge(&resize);
                a.by = 0;
                a.at = now;
                a.expires_at = resize.duration.map(|d| now.saturating_add(d.as_secs()));
                a.since = None;
                // Root's set takes over the fields it names.
                let g = old_grant.and_then(|g| g.without(&a));
                (g, Some(a))
            }
        };
        let new = compose(up, grant.as_ref(), admin.as_ref());
        if !matches!(actor, Actor::Root { force: true }) {
            self.check_capacity(uid, name, actor, new.cpu, new.mem, cap)?;
            // a user away, whose guarantee root did not set, holds none
            let counts = self.users.get(&uid).is_some_and(|e| e.logged_in())
                || admin.as_ref().is_some_and(|g| g.mem_low.is_some());
            // a user's way back up to what they have without their resize
            // is never refused: `release` would give it all the same
            let floor = match actor {
                Actor::User(_) => compose(up, None, admin.as_ref()).mem_low,
                Actor::Root { .. } => None,
            };
            if counts {
                self.check_guarantee(uid, name, actor, new.mem_low, floor, cap)?;
            }
        }
        let old = self.users.get(&uid).map(|e| e.limits);
        let entry = self
            .users
            .entry(uid)
            .or_insert_with(|| Box::new(Entry::new(name, new)));
        entry.name = name.to_string();
        entry.grant = grant.map(Box::new);
        entry.admin = admin.map(Box::new);
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
        name: &str,
        actor: Actor,
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
        let whom = match actor {
            Actor::User(_) => "you".to_string(),
            Actor::Root { .. } => name.to_string(),
        };
        let mut short = Vec::new();
        if cpu > cur_cpu && cpu > free_cpu {
            short.push(format!(
                "cpu {cpu} asked, {free_cpu} CPUs free for {whom} (host capacity {} CPUs = {} x overcommit {}, minus {others_cpu} allocated to others)",
                cap.cpu, cap.base_cpu, cap.overcommit_cpu
            ));
        }
        if mem > cur_mem && mem > free_mem {
            short.push(format!(
                "mem {mem} asked, {} free for {whom} (host capacity {} = {} x overcommit {}, minus {} allocated to others)",
                free_mem.human(),
                cap.mem.human(),
                cap.base_mem.human(),
                cap.overcommit_mem,
                others_mem.human()
            ));
        }
        if let Actor::Root { force: false } = actor
            && !short.is_empty()
        {
            short.push("--force sets it anyway".to_string());
        }
        match short.is_empty() {
            true => Ok(()),
            false => Err(Refusal::NoCapacity(short.join("; "))),
        }
    }

    /// Refuses a larger memory guarantee than what is free of
    /// `capacity.mem_low` (the total `user.slice` carries) for this user.
    fn check_guarantee(
        &self,
        uid: u32,
        name: &str,
        actor: Actor,
        mem_low: Option<Bytes>,
        floor: Option<Bytes>,
        cap: &CapacityLimit,
    ) -> Result<(), Refusal> {
        let asked = mem_low.unwrap_or_default();
        // against what the limits wanted: lowering one's wanted guarantee
        // is always allowed (it gives no priority, see crate::guarantees),
        // and so is going back up to `floor`
        let current = self
            .users
            .get(&uid)
            .and_then(|e| e.limits.mem_low)
            .unwrap_or_default()
            .max(floor.unwrap_or_default());
        if asked <= current {
            return Ok(());
        }
        let others = self.guaranteed(Some(uid));
        let free = cap.mem_low.saturating_sub(others);
        if asked <= free {
            return Ok(());
        }
        let whom = match actor {
            Actor::User(_) => "you".to_string(),
            Actor::Root { .. } => name.to_string(),
        };
        let mut why = format!(
            "mem_low {} asked, {} free for {whom} (capacity.mem_low {}, minus {} guaranteed to others)",
            asked.human(),
            free.human(),
            cap.mem_low.human(),
            others.human()
        );
        if let Actor::Root { force: false } = actor {
            why.push_str("; --force sets it anyway");
        }
        Err(Refusal::NoCapacity(why))
    }

    /// The memory guarantees handed out in total (those that count, as
    /// their slices get them), optionally leaving one user out.
    pub fn guaranteed(&self, except: Option<u32>) -> Bytes {
        self.users
            .iter()
            .filter(|(uid, e)| Some(**uid) != except && e.holds_guarantee())
            .fold(Bytes::default(), |t, (_, e)| {
                t.saturating_add(e.slice_limits().mem_low.unwrap_or_default())
            })
    }

    /// Drops a user's own resize (`Actor::User`): back to root's setting if
    /// there is one, else the policy default. Root's release (`set
    /// --default`) drops root's setting too. Out of the ledger entirely when
    /// nothing is left to keep.
    pub fn release(&mut self, uid: u32, up: &UserPolicy, actor: Actor) -> Change {
        let old = self.users.get(&uid).map(|e| e.limits);
        let new = match self.users.get_mut(&uid) {
            Some(e) => {
                e.grant = None;
                if let Actor::Root { .. } = actor {
                    e.admin = None;
                }
                e.limits = e.base(up);
                let new = e.limits;
                if !e.needed() {
                    self.users.remove(&uid);
                }
                new
            }
            None => up.default,
        };
        Change {
            uid,
            old,
            new,
            force: false,
        }
    }

    /// Ends what has run out by `now`: the user's lease (back to root's
    /// setting or the default) and root's setting (with the user's fields
    /// under it), leaving a note for `status`. `None` when nothing was due.
    pub fn expire_due(&mut self, uid: u32, now: u64, up: &UserPolicy) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        let due = |g: &Option<Box<Grant>>| {
            g.as_ref()
                .and_then(|g| g.expires_at)
                .is_some_and(|t| t <= now)
        };
        let (user_due, root_due) = (due(&entry.grant), due(&entry.admin));
        if !user_due && !root_due {
            return None;
        }
        let old = Some(entry.limits);
        let mut notes = Vec::new();
        if user_due && let Some(g) = entry.grant.take() {
            notes.push(format!("the resize to {} reached its end", g.describe()));
        }
        if root_due && let Some(a) = entry.admin.take() {
            notes.push(format!(
                "root's setting of {} reached its end",
                a.describe()
            ));
            entry.grant = entry.grant.take().and_then(|g| g.without(&a)).map(Box::new);
        }
        entry.limits = entry.base(up);
        if let Some(g) = &entry.grant {
            entry.limits = compose(up, Some(g), entry.admin.as_deref());
        }
        let back = match (&entry.grant, &entry.admin) {
            (None, None) => "the default",
            (None, Some(_)) => "root's setting",
            (Some(_), _) => "the resize still in force",
        };
        entry.notice = Some(format!(
            "{}; back to {back}: {}",
            notes.join("; "),
            entry.limits
        ));
        let new = entry.limits;
        if !entry.needed() {
            self.users.remove(&uid);
        }
        Some(Change {
            uid,
            old,
            new,
            force: false,
        })
    }

    /// Every user whose allocation changes by itself later: `(uid, when)`,
    /// the earliest of their lease and the end of root's setting.
    pub fn leases(&self) -> Vec<(u32, u64)> {
        self.users
            .iter()
            .filter_map(|(u, e)| Some((*u, e.next_expiry()?)))
            .collect()
    }

    /// A session opened. The first one gives the user their allocation (the
    /// default, root's setting, or a resize still in force). Never refused.
    pub fn open_session(
        &mut self,
        uid: u32,
        name: &str,
        up: &UserPolicy,
        s: SessionInfo,
    ) -> Change {
        let old = self.users.get(&uid).map(|e| e.limits);
        let entry = self
            .users
            .entry(uid)
            .or_insert_with(|| Box::new(Entry::new(name, up.default)));
        if entry.name != name {
            entry.name = name.to_string();
        }
        // A pid can only hold one session; a reused pid replaces a stale record.
        entry.sessions.retain(|x| x.pid != s.pid);
        if holding(&s) && !entry.logged_in() {
            entry.logged_in_at = Some(s.opened_at);
        }
        // room for this one only (a first push makes room for four: most
        // users have one session, and a record is about 130 bytes)
        if entry.sessions.capacity() == 0 {
            entry.sessions.reserve_exact(1);
        }
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
    /// session: their own resize ends and the slice goes back to root's
    /// setting, if any, else the default. `None` when the session was
    /// unknown or others remain. The session is the one opened by `pid`;
    /// only when no session has that pid (a program that closes from
    /// another process than it opened in) is it found by its logind
    /// session id. Several PAM sessions share one logind session (`su -`
    /// to oneself inside an ssh login): closing one leaves the others.
    pub fn close_session(
        &mut self,
        uid: u32,
        pid: u32,
        session_id: Option<&str>,
        up: &UserPolicy,
    ) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        let before = entry.sessions.len();
        let by_pid = entry.session_of(pid).is_some();
        entry.sessions.retain(|x| match by_pid {
            true => x.pid != pid,
            false => session_id.is_none() || x.session_id.as_deref() != session_id,
        });
        if entry.sessions.len() == before || !entry.sessions.is_empty() {
            return None;
        }
        let old = Some(entry.limits);
        entry.grant = None;
        entry.logged_in_at = None;
        entry.limits = entry.base(up);
        let new = entry.limits;
        if !entry.needed() {
            self.users.remove(&uid);
        }
        Some(Change {
            uid,
            old,
            new,
            force: false,
        })
    }

    /// After a session closed with others left: when none left is a login
    /// session ([`holding`]: only the user manager, which processes left
    /// behind keep running), the user's run of logins ends for
    /// `capacity.mem_low`. Their place in login order goes, and the change
    /// returned (their limits as they are) takes a guarantee they held only
    /// by being logged in off their slice (no call when it has none).
    /// `None` while a login session is left.
    pub fn release_guarantee(&mut self, uid: u32) -> Option<Change> {
        let e = self.users.get_mut(&uid)?;
        if e.sessions.is_empty() || e.logged_in() {
            return None;
        }
        e.logged_in_at = None;
        Some(Change {
            uid,
            old: Some(e.limits),
            new: e.limits,
            force: false,
        })
    }

    /// Re-derives a user's limits after the policy changed: the fields of a
    /// resize beyond a lowered maximum are clamped (with a note for
    /// `status`), and with `max_lease` (at `now`) a resize above the default
    /// ends no later than the lease allows. Returns the change if their
    /// limits moved.
    pub fn repolicy(
        &mut self,
        uid: u32,
        up: &UserPolicy,
        now: u64,
        max_lease: Option<Duration>,
    ) -> Option<Change> {
        let entry = self.users.get_mut(&uid)?;
        let old = entry.limits;
        let base = entry.base(up);
        if let Some(g) = &mut entry.grant {
            let ceiling = |f: fn(&Limits) -> u64, a: Option<u64>| a.unwrap_or(f(&up.max));
            let admin = entry.admin.as_ref();
            let mut clamped = Vec::new();
            if let Some(c) = g.cpu {
                let top = Cpus::from_millis(ceiling(
                    |l| l.cpu.millis(),
                    admin.and_then(|a| a.cpu).map(Cpus::millis),
                ));
                if c > top {
                    g.cpu = Some(top);
                    clamped.push(format!("cpu {c} -> {top}"));
                }
            }
            if let Some(m) = g.mem {
                let top = Bytes(ceiling(
                    |l| l.mem.get(),
                    admin.and_then(|a| a.mem).map(Bytes::get),
                ));
                if m > top {
                    g.mem = Some(top);
                    clamped.push(format!("mem {m} -> {top}"));
                }
            }
            if let Some(t) = g.tasks {
                let top = Tasks(ceiling(
                    |l| l.tasks.get(),
                    admin.and_then(|a| a.tasks).map(Tasks::get),
                ));
                if t > top {
                    g.tasks = Some(top);
                    clamped.push(format!("tasks {t} -> {top}"));
                }
            }
            // the fair-share fields, against the policy's max (systemd's
            // defaults where it sets none) or root's setting
            let m = FairOf::limits(&up.max);
            if let Some(w) = g.weight {
                let top = admin.and_then(|a| a.weight).map_or(m.weight, Weight::get);
                if w.get() > top {
                    g.weight = Weight::new(top);
                    clamped.push(format!("weight {w} -> {top}"));
                }
            }
            if let Some(w) = g.io_weight {
                let top = admin
                    .and_then(|a| a.io_weight)
                    .map_or(m.io_weight, Weight::get);
                if w.get() > top {
                    g.io_weight = Weight::new(top);
                    clamped.push(format!("io_weight {w} -> {top}"));
                }
            }
            if let Some(l) = g.mem_low {
                let top = admin.and_then(|a| a.mem_low).map_or(m.mem_low, Bytes::get);
                if l.get() > top {
                    g.mem_low = Some(Bytes(top));
                    clamped.push(format!("mem_low {l} -> {}", Bytes(top)));
                }
            }
            if let Some(sw) = g.swap {
                let top = admin.and_then(|a| a.swap).map_or(m.swap, Bytes::get);
                if sw.get() > top {
                    g.swap = Some(Bytes(top));
                    clamped.push(format!(
                        "swap {} -> {}",
                        show_swap(sw),
                        show_swap(Bytes(top))
                    ));
                }
            }
            if !clamped.is_empty() {
                entry.notice = Some(format!(
                    "the resize was clamped to the maximum of the policy now in force ({})",
                    clamped.join(", ")
                ));
            }
            match (g.above(&base), max_lease) {
                (true, Some(max)) => {
                    let since = *g.since.get_or_insert(now);
                    let end = since.saturating_add(max.as_secs());
                    g.expires_at = Some(g.expires_at.map_or(end, |e| e.min(end)));
                }
                (true, None) => {}
                (false, _) => g.since = None,
            }
        }
        entry.limits = compose(up, entry.grant.as_deref(), entry.admin.as_deref());
        let new = entry.limits;
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
        self.users.remove(&uid).map(|e| *e)
    }
}

/// When a user's resize (`g`, already merged) lapses, and since when the
/// lease in progress runs.
struct Lease {
    expires_at: Option<u64>,
    since: Option<u64>,
}

fn lease(
    g: &Grant,
    was_above: bool,
    base: &Limits,
    asked: Option<Duration>,
    max: Option<Duration>,
    now: u64,
) -> Result<Lease, Refusal> {
    if let (Some(asked), Some(max)) = (asked, max)
        && asked > max
    {
        return Err(Refusal::LeaseTooLong { max, asked });
    }
    let at = |d: Duration| now.saturating_add(d.as_secs());
    let (Some(max), true) = (max, g.above(base)) else {
        // No lease needed: only the one asked for, if any.
        return Ok(Lease {
            expires_at: asked.map(at),
            since: None,
        });
    };
    // The lease in progress continues; otherwise one starts now.
    let since = match (was_above, g.since) {
        (true, Some(s)) if s <= now => s,
        _ => now,
    };
    let end = since.saturating_add(max.as_secs());
    match asked.map(at) {
        Some(t) if t > end => Err(Refusal::LeaseRunning {
            left: end.saturating_sub(now),
            max,
        }),
        Some(t) => Ok(Lease {
            expires_at: Some(t),
            since: Some(since),
        }),
        None => Ok(Lease {
            expires_at: Some(end),
            since: Some(since),
        }),
    }
}

/// Refuses fields of a request outside their bounds, naming every one: the
/// minimum for everyone; for a user, their maximum or root's setting. Only
/// the fields the request names are checked.
fn check_bounds(
    up: &UserPolicy,
    admin: Option<&Grant>,
    r: &Resize,
    actor: Actor,
    name: &str,
    now: u64,
) -> Result<(), Refusal> {
    let ctx = BoundsCtx {
        user: matches!(actor, Actor::User(_)),
        name,
        root_until: admin.and_then(|a| a.expires_at),
        now,
    };
    let (d, m) = (&up.default, &up.max);
    let a = |f: fn(&Grant) -> Option<u64>| admin.and_then(f);
    let mut out = (Vec::new(), Vec::new());
    ctx.field(
        "cpu",
        " CPUs",
        r.cpu,
        [MIN_CPU, d.cpu, m.cpu],
        a(|g| g.cpu.map(Cpus::millis)).map(Cpus::from_millis),
        &mut out,
    );
    ctx.field(
        "mem",
        "",
        r.mem,
        [MIN_MEM, d.mem, m.mem],
        a(|g| g.mem.map(Bytes::get)).map(Bytes),
        &mut out,
    );
    ctx.field(
        "tasks",
        "",
        r.tasks,
        [MIN_TASKS, d.tasks, m.tasks],
        a(|g| g.tasks.map(Tasks::get)).map(Tasks),
        &mut out,
    );
    // the fair-share fields: no minimum but the type's (a weight of at
    // least 1; no guarantee, no swap); a user's maximum, or root's setting
    let (df, mf) = (FairOf::limits(d), FairOf::limits(m));
    let fair = |f: fn(&Grant) -> Option<u64>| admin.and_then(f);
    ctx.field(
        "weight",
        "",
        r.weight.map(Weight::get),
        [1, df.weight, mf.weight],
        fair(|g| g.weight.map(Weight::get)),
        &mut out,
    );
    ctx.field(
        "io_weight",
        "",
        r.io_weight.map(Weight::get),
        [1, df.io_weight, mf.io_weight],
        fair(|g| g.io_weight.map(Weight::get)),
        &mut out,
    );
    ctx.field(
        "mem_low",
        "",
        r.mem_low,
        [Bytes(0), Bytes(df.mem_low), Bytes(mf.mem_low)],
        fair(|g| g.mem_low.map(Bytes::get)).map(Bytes),
        &mut out,
    );
    ctx.field(
        "swap",
        "",
        r.swap.map(|b| SwapSize(b.get())),
        [SwapSize(0), SwapSize(df.swap), SwapSize(mf.swap)],
        fair(|g| g.swap.map(Bytes::get)).map(SwapSize),
        &mut out,
    );
    let (over, under) = out;
    match over.is_empty() && under.is_empty() {
        true => Ok(()),
        false => Err(Refusal::Bounds { over, under }),
    }
}

/// Who asks about whom, for the texts of [`check_bounds`].
struct BoundsCtx<'a> {
    user: bool,
    name: &'a str,
    root_until: Option<u64>,
    now: u64,
}

impl BoundsCtx<'_> {
    /// Checks one field: `asked` against `[minimum, default, maximum]` and
    /// root's setting; pushes the reasons to `(over, under)`.
    fn field<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        field: &str,
        unit: &str,
        asked: Option<T>,
        [min, default, max]: [T; 3],
        root: Option<T>,
        (over, under): &mut (Vec<String>, Vec<String>),
    ) {
        let Some(v) = asked else { return };
        let floor = if default < min { default } else { min };
        if v < floor {
            let whose = match self.user {
                true => "your".to_string(),
                false => format!("{}'s", self.name),
            };
            under.push(format!(
                "{field} {v} is below the minimum of {floor}{unit} (no resize gives less than {MIN_CPU} CPU, {MIN_MEM} memory or {MIN_TASKS} tasks, or {whose} default where that is less)"
            ));
        }
        if !self.user {
            return;
        }
        match root {
            Some(top) if v > top => over.push(format!(
                "{field} {v} is above root's setting of {top}{unit} for you, which binds your own resizes {}; ask your admin to change it",
                match self.root_until {
                    Some(t) => format!(
                        "for another {}",
                        format_duration(Duration::from_secs(t.saturating_sub(self.now).max(1)))
                    ),
                    None => "until root resets it".to_string(),
                }
            )),
            Some(_) => {}
            None if v > max => {
                over.push(format!("{field} {v} is above your maximum of {max}{unit}"))
            }
            None => {}
        }
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

    /// A resize asked at time 0, without `leases.max_duration`.
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
            max_lease: None,
        }
    }

    fn resize(cpu: u64, mem_g: u64) -> Resize {
        Resize {
            cpu: Some(Cpus::whole(cpu)),
            mem: Some(Bytes(mem_g << 30)),
            ..Resize::default()
        }
    }

    /// User 1001 ("a") resizes to 4 CPUs and 4G.
    fn resize_a_to_4(l: &mut Ledger, p: &Policy, u: &UserPolicy) {
        l.resize(ask(1001, "a", u, resize(4, 4), Actor::User(1001), &cap(p)))
            .unwrap();
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
        let c = l.release(1001, &u, Actor::User(1001));
        assert_eq!(c.new, u.default);
        assert!(l.get(1001).is_none());
        assert_eq!(l.allocated(None), (Cpus::default(), Bytes::default()));
    }

    /// `--swap max`: no limit (systemd's default) where the user's maximum
    /// has none, refused where it has one; the user's own policy default
    /// swap comes back with a release.
    #[test]
    fn swap_resizes_to_max_only_where_the_maximum_is_unlimited() {
        let p = policy(
            "defaults: {cpu: 1, mem: 4G, swap: 1G}\n\
             max: {cpu: 2, mem: 8G, swap: max}\n\
             capacity: {cpu: 8, mem: 64G, overcommit: 1}\n",
        );
        let (u, c) = (up(&p, 1001), cap(&p));
        let max = Resize {
            swap: Some(fairshare_proto::wire::SWAP_MAX),
            ..Resize::default()
        };
        let mut l = Ledger::new();
        let ch = l
            .resize(ask(1001, "a", &u, max, Actor::User(1001), &c))
            .unwrap();
        assert_eq!(ch.new.swap, None, "no MemorySwapMax: systemd's unlimited");
        assert_eq!(u.default.swap, Some(Bytes(Bytes::GIB)));
        let grant = l.get(1001).unwrap().grant.clone().unwrap();
        assert!(
            grant.describe().contains("swap max"),
            "{}",
            grant.describe()
        );
        let settings = crate::dropin::Settings::from_limits(&ch.new);
        assert_eq!(settings.get(crate::dropin::Key::MemorySwapMax), None);
        let ch = l.release(1001, &u, Actor::User(1001));
        assert_eq!(ch.new.swap, Some(Bytes(Bytes::GIB)));

        // a maximum of 4G: max is beyond it
        let p = policy(
            "defaults: {cpu: 1, mem: 4G, swap: 1G}\n\
             max: {cpu: 2, mem: 8G, swap: 4G}\n\
             capacity: {cpu: 8, mem: 64G, overcommit: 1}\n",
        );
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        let e = l
            .resize(ask(1001, "a", &u, max, Actor::User(1001), &c))
            .unwrap_err();
        assert!(
            format!("{e}").contains("swap max is above your maximum of 4G"),
            "{e}"
        );
    }

    /// Issue 15: users resize weight, io_weight, mem_low and swap within
    /// their maximum; a guarantee beyond what is free of capacity.mem_low
    /// is refused saying how much is; release gives the policy's back.
    /// A session opened at `at` (Unix time).
    fn session_at(pid: u32, at: u64) -> SessionInfo {
        SessionInfo {
            opened_at: at,
            ..session(pid)
        }
    }

    const LOW: &str = "defaults: {cpu: 1, mem: 4G, mem_low: 1G}\n\
                       max: {cpu: 2, mem: 8G, mem_low: 2G}\n\
                       capacity: {cpu: 8, mem: 64G, overcommit: 1, mem_low: {total: 2G}}\n";

    fn pool(total_g: u64, mode: fairshare_policy::WhenFull) -> Pool {
        Pool {
            total: Bytes(total_g << 30),
            mode,
        }
    }

    /// What each user's slice gets, in MiB.
    fn lows(l: &Ledger) -> Vec<(u32, u64)> {
        l.entries()
            .map(|(u, e)| (*u, e.slice_limits().mem_low.map_or(0, |b| b.get() >> 20)))
            .collect()
    }

    #[test]
    fn logins_share_the_guarantees_by_scale_and_logouts_give_them_back() {
        use fairshare_policy::WhenFull::Scale;
        let p = policy(LOW);
        let mut l = Ledger::new();
        let scale = pool(2, Scale);
        for (i, uid) in [1001, 1002].into_iter().enumerate() {
            l.open_session(uid, "u", &up(&p, uid), session_at(10 + i as u32, 100));
            // within the total: nothing to do
            assert_eq!(l.regrant(scale), Vec::<u32>::new());
        }
        assert_eq!(lows(&l), vec![(1001, 1024), (1002, 1024)]);
        // a third login: everyone shrinks to a third of 2G, the login's
        // limits still say what it wants
        l.open_session(1003, "u", &up(&p, 1003), session_at(12, 100));
        assert_eq!(l.regrant(scale), vec![1001, 1002, 1003]);
        assert_eq!(lows(&l), vec![(1001, 682), (1002, 682), (1003, 682)]);
        assert_eq!(l.get(1003).unwrap().limits.mem_low, Some(Bytes(1 << 30)));
        assert_eq!(
            l.get(1003).unwrap().granted_mem_low.map(|b| b.get() >> 20),
            Some(682)
        );
        assert_eq!(
            l.effective(1003, &up(&p, 1003))
                .mem_low
                .map(|b| b.get() >> 20),
            Some(682)
        );
        assert!(l.guaranteed(None) <= Bytes(2 << 30));
        // a second session changes nothing
        l.open_session(1003, "u", &up(&p, 1003), session_at(13, 200));
        assert_eq!(l.regrant(scale), Vec::<u32>::new());
        // a logout gives the others theirs back, in full
        l.close_session(1002, 11, None, &up(&p, 1002)).unwrap();
        assert_eq!(l.regrant(scale), vec![1001, 1003]);
        assert_eq!(lows(&l), vec![(1001, 1024), (1003, 1024)]);
        assert!(l.entries().all(|(_, e)| e.granted_mem_low.is_none()));
        // a reload that halves the total: both shrink; one that restores it
        assert_eq!(l.regrant(pool(1, Scale)), vec![1001, 1003]);
        assert_eq!(lows(&l), vec![(1001, 512), (1003, 512)]);
        assert_eq!(l.regrant(scale), vec![1001, 1003]);
        assert_eq!(lows(&l), vec![(1001, 1024), (1003, 1024)]);
    }

    #[test]
    fn first_come_keeps_the_earlier_logins_and_the_order_survives_more_sessions() {
        use fairshare_policy::WhenFull::FirstCome;
        let p = policy(LOW);
        let mut l = Ledger::new();
        let fc = pool(2, FirstCome);
        // 1003 first, then 1002, then 1001 (uids in the other order)
        l.open_session(1003, "u", &up(&p, 1003), session_at(1, 100));
        l.open_session(1002, "u", &up(&p, 1002), session_at(2, 110));
        l.regrant(fc);
        l.open_session(1001, "u", &up(&p, 1001), session_at(3, 120));
        assert_eq!(l.regrant(fc), vec![1001]);
        assert_eq!(lows(&l), vec![(1001, 0), (1002, 1024), (1003, 1024)]);
        assert!(l.get(1001).unwrap().slice_limits().mem_low.is_none());
        // 1003 opens a later session and closes its first: still first
        l.open_session(1003, "u", &up(&p, 1003), session_at(4, 130));
        assert_eq!(l.close_session(1003, 1, None, &up(&p, 1003)), None);
        assert_eq!(l.regrant(fc), Vec::<u32>::new());
        // 1002 leaves: the newcomer gets theirs
        l.close_session(1002, 2, None, &up(&p, 1002)).unwrap();
        assert_eq!(l.regrant(fc), vec![1001]);
        assert_eq!(lows(&l), vec![(1001, 1024), (1003, 1024)]);
        // 1002 back: now the last, gets nothing
        l.open_session(1002, "u", &up(&p, 1002), session_at(5, 140));
        assert_eq!(l.regrant(fc), vec![1002]);
        assert_eq!(lows(&l), vec![(1001, 1024), (1002, 0), (1003, 1024)]);
    }

    #[test]
    fn roots_guarantee_comes_first_and_a_cut_user_cannot_resize_past_what_is_free() {
        use fairshare_policy::WhenFull::Scale;
        let p = policy(LOW);
        let c = cap(&p);
        let mut l = Ledger::new();
        let scale = pool(2, Scale);
        // root reserves 1G for 1009, away
        l.resize(ask(
            1009,
            "r",
            &up(&p, 1009),
            Resize {
                mem_low: Some(Bytes(1 << 30)),
                ..Resize::default()
            },
            Actor::Root { force: false },
            &c,
        ))
        .unwrap();
        assert!(l.get(1009).unwrap().root_guarantee());
        for (i, uid) in [1001, 1002].into_iter().enumerate() {
            l.open_session(uid, "u", &up(&p, uid), session_at(10 + i as u32, 100));
        }
        l.regrant(scale);
        // root's 1G in full; the two logins share the other 1G
        assert_eq!(lows(&l), vec![(1001, 512), (1002, 512), (1009, 1024)]);
        // raising is refused past what is free: what the others' slices
        // get counts, not what they wanted
        let e = l
            .resize(ask(
                1001,
                "u",
                &up(&p, 1001),
                Resize {
                    mem_low: Some(Bytes(1536 << 20)),
                    ..Resize::default()
                },
                Actor::User(1001),
                &c,
            ))
            .unwrap_err();
        assert!(
            format!("{e}").contains("1.5G asked, 512M free for you"),
            "{e}"
        );
        // lowering is allowed, and gives no priority: still shared
        l.resize(ask(
            1001,
            "u",
            &up(&p, 1001),
            Resize {
                mem_low: Some(Bytes(256 << 20)),
                ..Resize::default()
            },
            Actor::User(1001),
            &c,
        ))
        .unwrap();
        l.regrant(scale);
        assert_eq!(lows(&l), vec![(1001, 204), (1002, 819), (1009, 1024)]);
        // root's setting of cpu alone for an absent user reserves nothing
        l.resize(ask(
            1004,
            "v",
            &up(&p, 1004),
            Resize {
                cpu: Some(Cpus::whole(2)),
                ..Resize::default()
            },
            Actor::Root { force: false },
            &c,
        ))
        .unwrap();
        assert!(!l.get(1004).unwrap().holds_guarantee());
        assert_eq!(l.regrant(scale), Vec::<u32>::new());
    }

    #[test]
    fn state_without_the_new_fields_loads_and_orders_by_the_oldest_session() {
        let p = policy(LOW);
        let mut l = Ledger::new();
        l.open_session(1001, "u", &up(&p, 1001), session_at(1, 300));
        l.open_session(1002, "u", &up(&p, 1002), session_at(2, 200));
        let mut text = serde_json::to_string(&l).unwrap();
        assert!(text.contains("logged_in_at"), "{text}");
        text = text
            .replace(",\"logged_in_at\":300", "")
            .replace(",\"logged_in_at\":200", "");
        assert!(
            !text.contains("logged_in_at") && !text.contains("granted_mem_low"),
            "{text}"
        );
        let mut back: Ledger = serde_json::from_str(&text).unwrap();
        back.regrant(pool(1, fairshare_policy::WhenFull::FirstCome));
        assert_eq!(lows(&back), vec![(1001, 0), (1002, 1024)]);
        let again: Ledger = serde_json::from_str(&serde_json::to_string(&back).unwrap()).unwrap();
        assert_eq!(again, back);
    }

    #[test]
    fn a_guarantee_back_up_to_ones_default_is_never_refused_and_counts_only_while_logged_in() {
        let p = policy(
            "defaults: {cpu: 1, mem: 4G, mem_low: 512M}\n\
             max: {cpu: 2, mem: 8G, mem_low: 1G}\n\
             capacity: {cpu: 8, mem: 64G, overcommit: 1, mem_low: {total: 1G}}\n",
        );
        let (ua, ub, c) = (up(&p, 1001), up(&p, 1002), cap(&p));
        let mut l = Ledger::new();
        l.open_session(1001, "a", &ua, session(501));
        l.open_session(1002, "b", &ub, session(502));
        let low = |m: u64| Resize {
            mem_low: Some(Bytes(m << 20)),
            ..Resize::default()
        };
        l.resize(ask(1001, "a", &ua, low(100), Actor::User(1001), &c))
            .unwrap();
        l.resize(ask(1002, "b", &ub, low(924), Actor::User(1002), &c))
            .unwrap();
        assert_eq!(l.guaranteed(None), Bytes(1024 << 20));
        // nothing is free, yet a's way back to their default is open (a
        // release would give it all the same); the sharing keeps the total
        l.resize(ask(1001, "a", &ua, low(512), Actor::User(1001), &c))
            .unwrap();
        // beyond the default it is checked again
        let e = l
            .resize(ask(1001, "a", &ua, low(600), Actor::User(1001), &c))
            .unwrap_err();
        assert!(matches!(e, Refusal::NoCapacity(_)), "{e:?}");
        // only the user manager left: their own resize holds nothing
        l.open_session(
            1002,
            "b",
            &ub,
            SessionInfo {
                service: Some(USER_MANAGER.into()),
                ..session(503)
            },
        );
        l.close_session(1002, 502, None, &ub);
        assert!(!l.get(1002).unwrap().holds_guarantee());
        assert_eq!(l.get(1002).unwrap().slice_limits().mem_low, None);
        assert_eq!(l.guaranteed(None), Bytes(512 << 20));
    }

    #[test]
    fn fair_share_fields_resize_within_max_and_guarantees_within_the_total() {
        // capacity.mem_low: 2G in total
        let p = policy(
            "defaults: {cpu: 1, mem: 4G, weight: 100, mem_low: 512M, swap: 1G}\n\
             max: {cpu: 2, mem: 8G, weight: 400, io_weight: 200, mem_low: 2G, swap: 4G}\n\
             capacity: {cpu: 8, mem: 64G, overcommit: 1, mem_low: {total: 2G}}\n",
        );
        let (u, c) = (up(&p, 1001), cap(&p));
        assert_eq!(c.mem_low, Bytes(2 << 30));
        let mut l = Ledger::new();
        // logged in, both: a user's own guarantee counts while they are
        l.open_session(1001, "a", &u, session(501));
        l.open_session(1002, "b", &up(&p, 1002), session(502));
        let fair = |w: Option<u64>, low: Option<u64>, swap: Option<u64>| Resize {
            weight: w.and_then(Weight::new),
            mem_low: low.map(|m| Bytes(m << 20)),
            swap: swap.map(|m| Bytes(m << 20)),
            ..Resize::default()
        };
        let ch = l
            .resize(ask(
                1001,
                "a",
                &u,
                fair(Some(300), Some(1024), Some(0)),
                Actor::User(1001),
                &c,
            ))
            .unwrap();
        assert_eq!(ch.new.weight, Weight::new(300));
        assert_eq!(ch.new.mem_low, Some(Bytes(1 << 30)));
        assert_eq!(ch.new.swap, Some(Bytes(0)));
        // the ceilings and io_weight are the policy's still
        assert_eq!((ch.new.cpu, ch.new.mem), (u.default.cpu, u.default.mem));
        assert_eq!(ch.new.io_weight, None);
        // above the maximum: refused, naming each field
        let e = l
            .resize(ask(
                1001,
                "a",
                &u,
                fair(Some(500), None, Some(8192)),
                Actor::User(1001),
                &c,
            ))
            .unwrap_err();
        let t = format!("{e:?}");
        assert!(
            t.contains("weight 500") && t.contains("maximum of 400"),
            "{t}"
        );
        assert!(t.contains("swap"), "{t}");
        assert_eq!(l.get(1001).unwrap().limits.weight, Weight::new(300));
        // another user's guarantee: 1G is free of the 2G
        let u2 = up(&p, 1002);
        let e = l
            .resize(ask(
                1002,
                "b",
                &u2,
                fair(None, Some(1536), None),
                Actor::User(1002),
                &c,
            ))
            .unwrap_err();
        let Refusal::NoCapacity(why) = e else {
            panic!("{e:?}")
        };
        assert!(
            why.contains("mem_low 1.5G asked, 1G free for you")
                && why.contains("capacity.mem_low 2G")
                && why.contains("1G guaranteed to others"),
            "{why}"
        );
        l.resize(ask(
            1002,
            "b",
            &u2,
            fair(None, Some(1024), None),
            Actor::User(1002),
            &c,
        ))
        .unwrap();
        assert_eq!(l.guaranteed(None), Bytes(2 << 30));
        // lowering is always fine, even with nothing free
        l.resize(ask(
            1001,
            "a",
            &u,
            fair(None, Some(0), None),
            Actor::User(1001),
            &c,
        ))
        .unwrap();
        assert_eq!(l.get(1001).unwrap().limits.mem_low, None);
        // release: the policy's values again
        let ch = l.release(1002, &u2, Actor::User(1002));
        assert_eq!(ch.new, u2.default);
        assert_eq!(ch.new.mem_low, Some(Bytes(512 << 20)));
        // a guarantee is never above the hard limit
        let ch = l
            .resize(ask(
                1003,
                "c",
                &up(&p, 1003),
                Resize {
                    mem: Some(Bytes(1 << 30)),
                    mem_low: Some(Bytes(2 << 30)),
                    ..Resize::default()
                },
                Actor::User(1003),
                &c,
            ))
            .unwrap();
        assert_eq!(ch.new.mem_low, Some(Bytes(1 << 30)));
    }

    /// A reload that lowers the maximum clamps a resized weight or
    /// guarantee (a user keeps no more than the policy now allows).
    #[test]
    fn a_lowered_maximum_clamps_resized_fair_share_fields() {
        let text = "defaults: {cpu: 1, mem: 4G}\nmax: {cpu: 2, mem: 8G, weight: 400, mem_low: 2G}\ncapacity: {cpu: 8, mem: 64G, overcommit: 1}\n";
        let p = policy(text);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.resize(ask(
            1001,
            "a",
            &u,
            Resize {
                weight: Weight::new(400),
                mem_low: Some(Bytes(2 << 30)),
                ..Resize::default()
            },
            Actor::User(1001),
            &c,
        ))
        .unwrap();
        let p2 = policy(&text.replace("weight: 400, mem_low: 2G", "weight: 150, mem_low: 1G"));
        let u2 = up(&p2, 1001);
        let ch = l.repolicy(1001, &u2, 0, None).unwrap();
        assert_eq!(ch.new.weight, Weight::new(150));
        assert_eq!(ch.new.mem_low, Some(Bytes(1 << 30)));
        let n = l.get(1001).unwrap().notice.clone().unwrap();
        assert!(
            n.contains("weight 400 -> 150") && n.contains("mem_low"),
            "{n}"
        );
    }

    /// State saved before the fair-share fields existed still loads.
    #[test]
    fn a_grant_without_fair_share_fields_loads() {
        let g: Grant = serde_json::from_str(r#"{"cpu":2000,"by":1001,"at":5}"#).unwrap();
        assert_eq!((g.weight, g.mem_low, g.swap), (None, None, None));
        let back = serde_json::to_string(&g).unwrap();
        assert!(
            !back.contains("weight") && !back.contains("mem_low"),
            "{back}"
        );
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
            ..Resize::default()
        };
        let e = l
            .resize(ask(1001, "a", &u, req, Actor::User(1001), &cap(&p)))
            .unwrap_err();
        let Refusal::Bounds { over, under } = e else {
            panic!("wrong refusal")
        };
        assert!(under.is_empty(), "{under:?}");
        assert_eq!(over.len(), 3, "{over:?}");
        assert!(over[0].contains("maximum of 8 CPUs"), "{over:?}");
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
        assert!(msg.contains("cpu 4 asked, 2 CPUs free for you"), "{msg}");
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
        resize_a_to_4(&mut l, &p, &u);
        assert_eq!(l.close_session(1001, 100, None, &u), None);
        assert_eq!(l.get(1001).unwrap().limits.cpu, Cpus::whole(4));
        let c = l.close_session(1001, 999, Some("s200"), &u).unwrap();
        assert_eq!(c.new, u.default);
        assert!(l.get(1001).is_none());
        // an unknown close changes nothing
        assert_eq!(l.close_session(1001, 1, None, &u), None);
    }

    #[test]
    fn closing_one_of_two_sessions_in_one_logind_session_leaves_the_other() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        let in_s1 = |pid| SessionInfo {
            session_id: Some("s1".into()),
            ..session(pid)
        };
        // an ssh login, then `su - a` inside it: one logind session
        l.open_session(1001, "a", &u, in_s1(100));
        l.open_session(1001, "a", &u, in_s1(200));
        resize_a_to_4(&mut l, &p, &u);
        assert_eq!(l.close_session(1001, 200, Some("s1"), &u), None);
        let e = l.get(1001).unwrap();
        assert_eq!(e.sessions.len(), 1, "the ssh session is still open");
        assert_eq!(e.limits.cpu, Cpus::whole(4), "and keeps the resize");
        assert!(l.close_session(1001, 100, Some("s1"), &u).is_some());
    }

    #[test]
    fn release_keeps_the_entry_while_sessions_are_open() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.open_session(1001, "a", &u, session(100));
        resize_a_to_4(&mut l, &p, &u);
        let c = l.release(1001, &u, Actor::User(1001));
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
        let c = l.repolicy(1001, &up(&p2, 1001), 0, None).unwrap();
        assert_eq!(c.new.cpu, Cpus::whole(4));
        assert_eq!(c.new.mem, Bytes(16 << 30));
        let note = l.get(1001).unwrap().notice.clone().unwrap();
        assert!(
            note.contains("clamped") && note.contains("cpu 6 -> 4"),
            "{note}"
        );
        assert_eq!(l.repolicy(1001, &up(&p2, 1001), 0, None), None);
    }

    #[test]
    fn leases_expire_back_to_the_default_once() {
        let p = policy(P);
        let mut l = Ledger::new();
        let u = up(&p, 1001);
        l.open_session(1001, "a", &u, session(1));
        l.resize(ResizeRequest {
            resize: Resize {
                duration: Some(Duration::from_secs(100)),
                ..resize(6, 8)
            },
            ..ask(1001, "a", &u, resize(6, 8), Actor::User(1001), &cap(&p))
        })
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, 100)]);
        assert_eq!(l.expire_due(1001, 99, &u), None);
        let c = l.expire_due(1001, 100, &u).unwrap();
        assert_eq!(c.new, u.default);
        let e = l.get(1001).unwrap();
        let note = e.notice.clone().unwrap();
        assert!(
            note.contains("reached its end") && note.contains("back to the default"),
            "{note}"
        );
        assert_eq!(e.grant, None);
        assert_eq!(l.expire_due(1001, 100, &u), None);
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
            max_lease: Some(Duration::from_secs(99)),
            ..ask(1001, "a", &u, resize(3, 9), Actor::User(1001), &cap(&p))
        })
        .unwrap();
        l.resize(ask(
            1001,
            "a",
            &u,
            resize(1, 1),
            Actor::Root { force: false },
            &cap(&p),
        ))
        .unwrap();
        let text = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
    }

    /// A policy with a maximum below root's generous settings and a lease.
    const P2: &str = "defaults: {cpu: 1, mem: 2G}\nmax: {cpu: 2, mem: 4G}\ncapacity: {cpu: 64, mem: 256G, overcommit: 1}\nleases: {max_duration: 2h}\n";
    const H2: u64 = 7200;

    fn only(cpu: Option<u64>, mem_g: Option<u64>, tasks: Option<u64>) -> Resize {
        Resize {
            cpu: cpu.map(Cpus::whole),
            mem: mem_g.map(|g| Bytes(g << 30)),
            tasks: tasks.map(Tasks),
            duration: None,
            ..Resize::default()
        }
    }

    /// Asks at `now` under a policy with `max_lease`.
    fn at<'a>(
        now: u64,
        up: &'a UserPolicy,
        cap: &'a CapacityLimit,
        resize: Resize,
        actor: Actor,
    ) -> ResizeRequest<'a> {
        ResizeRequest {
            now,
            max_lease: Some(Duration::from_secs(H2)),
            ..ask(1001, "alice", up, resize, actor, cap)
        }
    }

    fn for_secs(mut r: Resize, secs: u64) -> Resize {
        r.duration = Some(Duration::from_secs(secs));
        r
    }

    /// Issue 11.1: a partial resize used to copy the leased fields into a
    /// new grant without an end (`{"tasks":100}` kept a leased 8 CPUs for
    /// ever). The lease in progress keeps its end whatever the user asks.
    #[test]
    fn a_partial_resize_during_a_lease_keeps_its_end() {
        let p = policy(P2);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.resize(at(0, &u, &c, only(Some(2), None, None), Actor::User(1001)))
            .unwrap();
        assert_eq!(l.leases(), vec![(1001, H2)]);
        for (now, r) in [
            (100, only(None, None, Some(100))),
            (200, only(None, Some(1), None)),
            (300, only(None, None, Some(4096))),
        ] {
            l.resize(at(now, &u, &c, r, Actor::User(1001))).unwrap();
            let g = l.get(1001).unwrap().grant.clone().unwrap();
            assert_eq!(g.cpu, Some(Cpus::whole(2)));
            assert_eq!(g.expires_at, Some(H2), "at {now}");
        }
        // tasks 100 is above the default of 4096? no: below; cpu 2 is what's above
        let c2 = l.expire_due(1001, H2, &u).unwrap();
        assert_eq!(c2.new.cpu, Cpus::whole(1));
        assert!(l.get(1001).is_none());
    }

    /// Issue 17.11, decided: a lease caps the continuous time above the
    /// default. Asking again keeps its end; a longer --for is refused with
    /// when it ends; after a release a new resize starts a new lease.
    #[test]
    fn asking_again_does_not_renew_a_lease_but_a_release_ends_it() {
        let p = policy(P2);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.resize(at(0, &u, &c, only(Some(2), None, None), Actor::User(1001)))
            .unwrap();
        // the same request an hour later: same end, not a new 2h
        l.resize(at(
            3600,
            &u,
            &c,
            only(Some(2), None, None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, H2)]);
        let e = l
            .resize(at(
                3600,
                &u,
                &c,
                for_secs(only(Some(2), Some(3), None), H2),
                Actor::User(1001),
            ))
            .unwrap_err();
        assert!(
            matches!(e, Refusal::LeaseRunning { left: 3600, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("ends in 1h")
                && text.contains("at most 2h in one go")
                && text.contains("fairshare-ctl release"),
            "{text}"
        );
        // a shorter --for is fine
        l.resize(at(
            3600,
            &u,
            &c,
            for_secs(only(Some(2), None, None), 600),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, 4200)]);
        // and asking again without --for goes back to the lease's own end
        l.resize(at(
            3700,
            &u,
            &c,
            only(None, Some(3), None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, H2)]);
        // at or below the default: no lease at all
        l.resize(at(
            3800,
            &u,
            &c,
            only(Some(1), Some(2), None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![]);
        // above again: a new lease from now
        l.resize(at(
            3900,
            &u,
            &c,
            only(Some(2), None, None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, 3900 + H2)]);
        l.release(1001, &u, Actor::User(1001));
        l.resize(at(
            4000,
            &u,
            &c,
            only(Some(2), None, None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.leases(), vec![(1001, 4000 + H2)]);
        // a --for beyond max_duration is refused as before
        let e = l
            .resize(at(
                4000,
                &u,
                &c,
                for_secs(only(Some(2), None, None), H2 + 1),
                Actor::User(1001),
            ))
            .unwrap_err();
        assert!(matches!(e, Refusal::LeaseTooLong { .. }), "{e:?}");
    }

    /// Issue 11.2: root's set binds the user's own resizes and releases, per
    /// field, until root resets it; the last logout keeps it.
    #[test]
    fn roots_setting_binds_the_users_resizes_releases_and_logouts() {
        let p = policy(P2);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.open_session(1001, "alice", &u, session(10));
        let half = Resize {
            cpu: Some(Cpus::from_millis(500)),
            ..Resize::default()
        };
        l.resize(at(0, &u, &c, half, Actor::Root { force: false }))
            .unwrap();
        let e = l
            .resize(at(10, &u, &c, only(Some(1), None, None), Actor::User(1001)))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cpu 1 is above root's setting of 0.5 CPUs for you")
                && text.contains("until root resets it"),
            "{text}"
        );
        // below root's setting, and other fields within the maximum: fine
        let quarter = Resize {
            cpu: Some(Cpus::from_millis(250)),
            mem: Some(Bytes(4 << 30)),
            ..Resize::default()
        };
        l.resize(at(20, &u, &c, quarter, Actor::User(1001)))
            .unwrap();
        assert_eq!(l.get(1001).unwrap().limits.cpu, Cpus::from_millis(250));
        // release: back to root's 0.5, not the default of 1
        let ch = l.release(1001, &u, Actor::User(1001));
        assert_eq!(ch.new.cpu, Cpus::from_millis(500));
        assert_eq!(ch.new.mem, u.default.mem);
        // the last logout and a new login: still root's 0.5
        let ch = l.close_session(1001, 10, None, &u).unwrap();
        assert_eq!(ch.new.cpu, Cpus::from_millis(500));
        let ch = l.open_session(1001, "alice", &u, session(11));
        assert_eq!(ch.new.cpu, Cpus::from_millis(500));
        // root's --default ends it
        let ch = l.release(1001, &u, Actor::Root { force: false });
        assert_eq!(ch.new, u.default);
        assert_eq!(l.get(1001).unwrap().admin, None);
        l.resize(at(30, &u, &c, only(Some(2), None, None), Actor::User(1001)))
            .unwrap();
    }

    /// Issue 11.2: root's `--for` ends root's setting and the user's own
    /// fields under it; the user's other fields keep their lease.
    #[test]
    fn roots_setting_ends_with_its_for() {
        let p = policy(P2);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.open_session(1001, "alice", &u, session(10));
        l.resize(at(
            0,
            &u,
            &c,
            for_secs(only(Some(4), None, None), 600),
            Actor::Root { force: false },
        ))
        .unwrap();
        // under root's 4 CPUs (above the maximum of 2): 3 is fine, 5 is not
        let e = l
            .resize(at(10, &u, &c, only(Some(5), None, None), Actor::User(1001)))
            .unwrap_err();
        assert!(e.to_string().contains("for another 9m50s"), "{e}");
        l.resize(at(
            10,
            &u,
            &c,
            only(Some(3), Some(4), None),
            Actor::User(1001),
        ))
        .unwrap();
        assert_eq!(l.get(1001).unwrap().limits.cpu, Cpus::whole(3));
        // mem 4G is above the default: leased; cpu 3 is under root's 4: not above its base
        assert_eq!(
            l.get(1001).unwrap().grant.as_ref().unwrap().expires_at,
            Some(10 + H2)
        );
        assert_eq!(l.leases(), vec![(1001, 600)]);
        let ch = l.expire_due(1001, 600, &u).unwrap();
        assert_eq!(ch.new.cpu, u.default.cpu, "cpu back to the default");
        assert_eq!(
            ch.new.mem,
            Bytes(4 << 30),
            "the user's own mem stays, leased"
        );
        let note = l.get(1001).unwrap().notice.clone().unwrap();
        assert!(
            note.contains("root's setting of cpu 4 reached its end"),
            "{note}"
        );
        assert_eq!(l.leases(), vec![(1001, 10 + H2)]);
    }

    /// Issue 17.7: only the fields a request names are checked: root's
    /// cpu 3 above the user's maximum does not block their own mem resize.
    #[test]
    fn only_the_fields_asked_for_are_checked() {
        let p = policy(P2);
        let (u, c) = (up(&p, 1003), cap(&p));
        let mut l = Ledger::new();
        l.resize(at(
            0,
            &u,
            &c,
            only(Some(3), None, None),
            Actor::Root { force: false },
        ))
        .unwrap();
        l.resize(at(10, &u, &c, only(None, Some(3), None), Actor::User(1001)))
            .unwrap();
        let e = l.get(1001).unwrap();
        assert_eq!(
            (e.limits.cpu, e.limits.mem),
            (Cpus::whole(3), Bytes(3 << 30))
        );
        // the user's own asking above their maximum, in a field root did not set
        let e = l
            .resize(at(20, &u, &c, only(None, Some(5), None), Actor::User(1001)))
            .unwrap_err();
        assert!(
            e.to_string().contains("mem 5G is above your maximum of 4G"),
            "{e}"
        );
    }

    /// Issue 11.3: a documented lower bound, named in the refusal, for
    /// users and root alike; a default below it is still reachable.
    #[test]
    fn resizes_have_a_lower_bound() {
        let p = policy(P);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        for (r, want) in [
            (
                Resize {
                    mem: Some(Bytes(1)),
                    ..Resize::default()
                },
                "mem 1B is below the minimum of 64M",
            ),
            (
                Resize {
                    tasks: Some(Tasks(1)),
                    ..Resize::default()
                },
                "tasks 1 is below the minimum of 32",
            ),
            (
                Resize {
                    cpu: Some(Cpus::from_millis(10)),
                    ..Resize::default()
                },
                "cpu 0.01 is below the minimum of 0.1 CPUs",
            ),
        ] {
            for actor in [Actor::User(1001), Actor::Root { force: true }] {
                let e = l.resize(ask(1001, "alice", &u, r, actor, &c)).unwrap_err();
                assert!(
                    matches!(&e, Refusal::Bounds { over, .. } if over.is_empty()),
                    "{e:?}"
                );
                assert!(e.to_string().contains(want), "{e}");
            }
        }
        assert!(l.is_empty());
        // exactly the minimum is fine
        l.resize(ask(
            1001,
            "alice",
            &u,
            Resize {
                mem: Some(MIN_MEM),
                tasks: Some(MIN_TASKS),
                cpu: Some(MIN_CPU),
                duration: None,
                ..Resize::default()
            },
            Actor::User(1001),
            &c,
        ))
        .unwrap();
        // a default below the minimum can be asked for, not less
        let small = policy("defaults: {cpu: 0.05, mem: 16M, tasks: 8}\n");
        let su = up(&small, 1002);
        let r = Resize {
            cpu: Some(Cpus::from_millis(50)),
            mem: Some(Bytes(16 << 20)),
            tasks: Some(Tasks(8)),
            duration: None,
            ..Resize::default()
        };
        l.resize(ask(1002, "b", &su, r, Actor::User(1002), &c))
            .unwrap();
        let e = l
            .resize(ask(
                1002,
                "b",
                &su,
                only(None, None, Some(7)),
                Actor::User(1002),
                &c,
            ))
            .unwrap_err();
        assert!(e.to_string().contains("below the minimum of 8"), "{e}");
    }

    /// Issue 11.3: a saved ledger with a zero quantity is refused at load
    /// (the state file is then moved aside like any corrupt one); an older
    /// file's setting of root's moves to `admin`.
    #[test]
    fn a_saved_ledger_with_zero_quantities_is_refused() {
        let good = r#"{"users":{"1001":{"name":"a","limits":{"cpu":2,"mem":"8G","tasks":4096},"grant":{"cpu":2,"mem":"8G","tasks":4096,"by":0,"at":1}}}}"#;
        let l: Ledger = serde_json::from_str(good).unwrap();
        let e = l.get(1001).unwrap();
        assert_eq!(
            (e.grant.is_none(), e.admin.as_ref().map(|a| a.by)),
            (true, Some(0))
        );
        for bad in [
            good.replace(r#""limits":{"cpu":2"#, r#""limits":{"cpu":0"#),
            good.replace(
                r#""mem":"8G","tasks":4096},"grant""#,
                r#""mem":"0B","tasks":4096},"grant""#,
            ),
            good.replace(r#""tasks":4096,"by""#, r#""tasks":0,"by""#),
            good.replace(r#""grant":{"cpu":2"#, r#""grant":{"cpu":0"#),
            good.replace(
                r#""tasks":4096},"grant""#,
                r#""tasks":4096},"applied":{"cpu":1,"mem":0,"tasks":1},"grant""#,
            ),
        ] {
            assert_ne!(bad, good);
            let e = serde_json::from_str::<Ledger>(&bad).unwrap_err();
            assert!(e.to_string().contains("user 1001"), "{e}");
        }
    }

    /// A reload that sets `leases.max_duration` gives a resize held above
    /// the default an end.
    #[test]
    fn a_new_max_duration_bounds_resizes_in_force() {
        let p = policy(P);
        let (u, c) = (up(&p, 1001), cap(&p));
        let mut l = Ledger::new();
        l.resize(ask(1001, "a", &u, resize(6, 8), Actor::User(1001), &c))
            .unwrap();
        assert!(l.leases().is_empty());
        l.repolicy(1001, &u, 50, Some(Duration::from_secs(60)));
        assert_eq!(l.leases(), vec![(1001, 110)]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            Resize {
                cpu: Option<u64>,
                mem: Option<u64>,
                tasks: Option<u64>,
                secs: Option<u64>,
            },
            Release,
            Login,
            Logout,
            Wait(u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (
                    proptest::option::of(100u64..3000),
                    proptest::option::of(1u64..5),
                    proptest::option::of(32u64..9000),
                    proptest::option::of(1u64..10_000),
                )
                    .prop_map(|(cpu, mem, tasks, secs)| Step::Resize { cpu, mem, tasks, secs }),
                1 => Just(Step::Release),
                1 => Just(Step::Login),
                1 => Just(Step::Logout),
                2 => (1u64..4000).prop_map(Step::Wait),
            ]
        }

        proptest! {
            /// Issue 11.1: whatever a user sends, with max_duration set, an
            /// allocation above their default always has an end within
            /// max_duration of now, and of when it first went above the
            /// default; and it does end then.
            #[test]
            fn above_the_default_always_ends_within_the_lease(steps in proptest::collection::vec(step(), 1..40)) {
                let p = policy(P2);
                let (u, c) = (up(&p, 1001), cap(&p));
                let max = H2;
                let mut l = Ledger::new();
                let mut now = 1000u64;
                let mut above_since: Option<u64> = None;
                let mut pid = 1;
                for s in steps {
                    match s {
                        Step::Resize { cpu, mem, tasks, secs } => {
                            let r = Resize {
                                cpu: cpu.map(Cpus::from_millis),
                                mem: mem.map(|g| Bytes(g << 30)),
                                tasks: tasks.map(Tasks),
                                duration: secs.map(Duration::from_secs),
                                ..Resize::default()
                            };
                            let _ = l.resize(at(now, &u, &c, r, Actor::User(1001)));
                        }
                        Step::Release => {
                            l.release(1001, &u, Actor::User(1001));
                        }
                        Step::Login => {
                            pid += 1;
                            l.open_session(1001, "alice", &u, session(pid));
                        }
                        Step::Logout => {
                            let pids: Vec<u32> = l.get(1001).map(|e| e.sessions.iter().map(|s| s.pid).collect()).unwrap_or_default();
                            if let Some(p0) = pids.first() {
                                l.close_session(1001, *p0, None, &u);
                            }
                        }
                        Step::Wait(d) => {
                            // the timer fires at each expiry on the way
                            let end = now + d;
                            while let Some(t) = l.get(1001).and_then(|e| e.next_expiry()).filter(|t| *t <= end) {
                                now = now.max(t);
                                l.expire_due(1001, now, &u);
                            }
                            now = end;
                        }
                    }
                    let limits = l.effective(1001, &u);
                    let d = u.default;
                    let above = limits.cpu > d.cpu || limits.mem > d.mem || limits.tasks > d.tasks;
                    if above {
                        let since = *above_since.get_or_insert(now);
                        let g = l.get(1001).and_then(|e| e.grant.clone());
                        let end = g.as_ref().and_then(|g| g.expires_at);
                        prop_assert!(end.is_some(), "above the default without an end: {g:?}");
                        let end = end.unwrap_or(0);
                        prop_assert!(end > now - 1 && end <= now + max, "end {end}, now {now}");
                        prop_assert!(end <= since + max, "end {end} beyond {since} + {max}");
                    } else {
                        above_since = None;
                    }
                }
            }
        }
    }
}
