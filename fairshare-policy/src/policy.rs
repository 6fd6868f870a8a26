//! A loaded policy and what it says about one user: the resolution of
//! defaults, group and user overrides, exemptions and capacity.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::Limits;
use indexmap::IndexMap;

use crate::error::Origin;
use crate::{DEFAULT_TASKS, NOBODY_UID};

/// A soft memory limit: a share of the hard limit, or a size at the default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemHigh {
    /// Percent of `mem`, strictly between 0 and 100.
    Percent(f64),
    /// An absolute size; applies at the default `mem`, and resizes keep the
    /// same ratio.
    Size(Bytes),
}

/// Some of the four limits, each with where it was set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Partial {
    pub(crate) cpu: Option<(Cpus, Origin)>,
    pub(crate) mem: Option<(Bytes, Origin)>,
    pub(crate) mem_high: Option<(MemHigh, Origin)>,
    pub(crate) tasks: Option<(Tasks, Origin)>,
}

impl Partial {
    pub(crate) fn overlay(&mut self, other: &Partial) {
        fn pick<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
            if b.is_some() {
                a.clone_from(b);
            }
        }
        pick(&mut self.cpu, &other.cpu);
        pick(&mut self.mem, &other.mem);
        pick(&mut self.mem_high, &other.mem_high);
        pick(&mut self.tasks, &other.tasks);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.mem.is_none() && self.mem_high.is_none() && self.tasks.is_none()
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Override {
    pub(crate) origin: Option<Origin>,
    pub(crate) defaults: Partial,
    pub(crate) max: Partial,
}

/// A loaded, validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) defaults: Partial,
    pub(crate) max: Partial,
    pub(crate) exempt_users: BTreeMap<String, Origin>,
    pub(crate) exempt_groups: BTreeMap<String, Origin>,
    pub(crate) uid_below: u32,
    pub(crate) capacity_cpu: Option<Cpus>,
    pub(crate) capacity_mem: Option<Bytes>,
    pub(crate) overcommit_cpu: f64,
    pub(crate) overcommit_mem: f64,
    pub(crate) max_lease: Option<Duration>,
    pub(crate) groups: IndexMap<String, Override>,
    pub(crate) users: IndexMap<String, Override>,
    pub(crate) notices: NoticeDefaults,
}

/// What fairshare tells users unless they choose otherwise (`notices:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoticeDefaults {
    /// Live notices on the user's terminals after an OOM kill or sustained
    /// throttling (each user may turn theirs off or on).
    pub terminal: bool,
    /// The line an interactive login shows.
    pub login_line: bool,
}

impl Default for NoticeDefaults {
    fn default() -> NoticeDefaults {
        NoticeDefaults {
            terminal: true,
            login_line: true,
        }
    }
}

impl Policy {
    /// What users are told by default (`notices:`).
    pub fn notices(&self) -> NoticeDefaults {
        self.notices
    }
}

/// Who a user is, as far as the policy cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub name: String,
    /// Names of every group the user is in, primary group included.
    pub groups: Vec<String>,
}

/// Why a user is not limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exemption {
    Root,
    Nobody,
    SystemUid { below: u32 },
    User(Origin),
    Group(String, Origin),
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exemption::Root => f.write_str("root is never limited"),
            Exemption::Nobody => f.write_str("the overflow user nobody (65534) is never limited"),
            Exemption::SystemUid { below } => {
                write!(f, "system account (uid below exempt.uid_below = {below})")
            }
            Exemption::User(o) => write!(f, "listed in exempt.users ({o})"),
            Exemption::Group(g, o) => {
                write!(f, "member of group {g}, listed in exempt.groups ({o})")
            }
        }
    }
}

/// One user's limits, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct UserPolicy {
    pub exempt: Option<Exemption>,
    /// What the user gets at login and after `release`.
    pub default: Limits,
    /// The most the user may resize to.
    pub max: Limits,
    /// The soft limit as a share of `mem` (resizes keep it).
    pub mem_high_ratio: Option<f64>,
    /// The policy parts that shaped these limits, in order: `defaults`,
    /// `group NAME`, `user NAME`. For a user in several groups, each group
    /// says which fields it gave and which a later group overrode:
    /// `group students (gives defaults.mem 4G; its defaults.cpu 1 is
    /// overridden by group staff (later in the policy))`.
    pub sources: Vec<String>,
}

impl UserPolicy {
    /// Limits for a given size, with the soft limit scaled to it.
    pub fn limits(&self, cpu: Cpus, mem: Bytes, tasks: Tasks) -> Limits {
        Limits {
            cpu,
            mem,
            mem_high: self.mem_high_ratio.map(|r| mem.scale(r).floor_mib()),
            tasks,
        }
    }
}

/// The host's own size, read by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: Cpus,
    pub mem: Bytes,
}

/// How much the daemon may hand out in total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CapacityLimit {
    pub cpu: Cpus,
    pub mem: Bytes,
    /// The figures before overcommit, and the factors, for messages.
    pub base_cpu: Cpus,
    pub base_mem: Bytes,
    pub overcommit_cpu: f64,
    pub overcommit_mem: f64,
}

impl Policy {
    /// The files this policy was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Why this user is exempt, if they are.
    pub fn exemption(&self, who: &Identity) -> Option<Exemption> {
        if who.uid == 0 {
            return Some(Exemption::Root);
        }
        if who.uid == NOBODY_UID {
            return Some(Exemption::Nobody);
        }
        if who.uid < self.uid_below {
            return Some(Exemption::SystemUid {
                below: self.uid_below,
            });
        }
        if let Some(o) = self.exempt_users.get(&who.name) {
            return Some(Exemption::User(o.clone()));
        }
        who.groups.iter().find_map(|g| {
            self.exempt_groups
                .get(g)
                .map(|o| Exemption::Group(g.clone(), o.clone()))
        })
    }

    /// Resolves one user's limits: the base, then every group override the
    /// user matches (in policy order), then their own user override.
    pub fn for_user(&self, who: &Identity) -> UserPolicy {
        let mut d = self.defaults.clone();
        let mut m = self.max.clone();
        for (_, o) in self.matching_groups(who) {
            d.overlay(&o.defaults);
            m.overlay(&o.max);
        }
        if let Some(o) = self.users.get(&who.name) {
            d.overlay(&o.defaults);
            m.overlay(&o.max);
        }
        let r = resolve(&d, &m);
        UserPolicy {
            exempt: self.exemption(who),
            default: r.default,
            max: r.max,
            mem_high_ratio: r.ratio,
            sources: self.sources(who),
        }
    }

    /// Total capacity the daemon may hand out on a host of this size.
    pub fn capacity(&self, host: HostResources) -> CapacityLimit {
        let base_cpu = self.capacity_cpu.unwrap_or(host.cpus);
        let base_mem = self.capacity_mem.unwrap_or(host.mem);
        CapacityLimit {
            cpu: base_cpu.scale(self.overcommit_cpu),
            mem: base_mem.scale(self.overcommit_mem),
            base_cpu,
            base_mem,
            overcommit_cpu: self.overcommit_cpu,
            overcommit_mem: self.overcommit_mem,
        }
    }

    /// The longest a resize above the default may last (`leases.max_duration`).
    pub fn max_lease(&self) -> Option<Duration> {
        self.max_lease
    }

    /// Every user name the policy mentions, with where (to check they exist).
    pub fn named_users(&self) -> Vec<(String, Origin)> {
        let mut out: Vec<_> = self
            .exempt_users
            .iter()
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        out.extend(
            self.users
                .iter()
                .filter_map(|(n, o)| Some((n.clone(), o.origin.clone()?))),
        );
        out
    }

    /// `exempt.uid_below`: accounts below it are system accounts, exempt.
    pub fn exempt_uid_below(&self) -> u32 {
        self.uid_below
    }

    /// The policy default for a user no group or user rule names: what every
    /// user slice gets from systemd's drop-in.
    pub fn plain_default(&self) -> Limits {
        resolve(&self.defaults, &self.max).default
    }

    /// Whether any rule depends on a user's groups (`exempt.groups`,
    /// `groups`). When none does, a user's groups need not be looked up.
    pub fn uses_groups(&self) -> bool {
        !self.exempt_groups.is_empty() || !self.groups.is_empty()
    }

    /// Every group name the policy mentions, with where.
    pub fn named_groups(&self) -> Vec<(String, Origin)> {
        let mut out: Vec<_> = self
            .exempt_groups
            .iter()
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        out.extend(
            self.groups
                .iter()
                .filter_map(|(n, o)| Some((n.clone(), o.origin.clone()?))),
        );
        out
    }

    /// Warnings for user and group names the policy mentions that do not
    /// exist, judged by the given lookups (NSS in the binaries).
    pub fn unknown_names(
        &self,
        user_exists: impl Fn(&str) -> bool,
        group_exists: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let users = self
            .named_users()
            .into_iter()
            .filter(|(n, _)| !user_exists(n))
            .map(|(n, o)| format!("warning: {o}: user {n} does not exist on this host"));
        let groups = self
            .named_groups()
            .into_iter()
            .filter(|(n, _)| !group_exists(n))
            .map(|(n, o)| format!("warning: {o}: group {n} does not exist on this host"));
        users.chain(groups).collect()
    }

    /// A short human summary, for `fairshared --check`.
    pub fn summary(&self) -> Vec<String> {
        let base = self.for_user(&Identity {
            uid: u32::MAX,
            ..Identity::default()
        });
        let mut out = vec![
            format!("defaults: {}", show_limits(&base.default)),
            format!("max:      {}", show_limits(&base.max)),
        ];
        let mut exempt = vec!["root".to_string(), format!("uid < {}", self.uid_below)];
        exempt.extend(self.exempt_users.keys().map(|u| format!("user {u}")));
        exempt.extend(self.exempt_groups.keys().map(|g| format!("group {g}")));
        out.push(format!("exempt:   {}", exempt.join(", ")));
        let cap = |v: Option<String>| v.unwrap_or_else(|| "host".into());
        out.push(format!(
            "capacity: cpu {} x {}, mem {} x {}",
            cap(self.capacity_cpu.map(|c| c.to_string())),
            self.overcommit_cpu,
            cap(self.capacity_mem.map(|m| m.to_string())),
            self.overcommit_mem
        ));
        for (kind, map) in [("group", &self.groups), ("user", &self.users)] {
            for (name, o) in map {
                let mut parts = Vec::new();
                if !o.defaults.is_empty() {
                    parts.push(format!("defaults {}", show_partial(&o.defaults)));
                }
                if !o.max.is_empty() {
                    parts.push(format!("max {}", show_partial(&o.max)));
                }
                out.push(format!("{kind} {name}: {}", parts.join("; ")));
            }
        }
        if let Some(l) = self.max_lease {
            out.push(format!(
                "leases:   at most {}",
                fairshare_proto::units::format_duration(l)
            ));
        }
        let n = self.notices;
        if n != NoticeDefaults::default() {
            let on = |b: bool| if b { "on" } else { "off" };
            out.push(format!(
                "notices:  terminal {}, login line {}",
                on(n.terminal),
                on(n.login_line)
            ));
        }
        out
    }
}

fn show_limits(l: &Limits) -> String {
    let high = l
        .mem_high
        .map(|h| format!(" (soft {})", h.human()))
        .unwrap_or_default();
    format!("cpu {}, mem {}{high}, tasks {}", l.cpu, l.mem, l.tasks)
}

fn show_partial(p: &Partial) -> String {
    let mut parts = Vec::new();
    if let Some((c, _)) = &p.cpu {
        parts.push(format!("cpu {c}"));
    }
    if let Some((m, _)) = &p.mem {
        parts.push(format!("mem {m}"));
    }
    if let Some((h, _)) = &p.mem_high {
        parts.push(match h {
            MemHigh::Percent(p) => format!("mem_high {p}%"),
            MemHigh::Size(s) => format!("mem_high {s}"),
        });
    }
    if let Some((t, _)) = &p.tasks {
        parts.push(format!("tasks {t}"));
    }
    parts.join(", ")
}

struct Resolved {
    default: Limits,
    max: Limits,
    ratio: Option<f64>,
}

/// Fills in what the policy left out and keeps defaults within max.
fn resolve(d: &Partial, m: &Partial) -> Resolved {
    // The builder guarantees a base cpu and mem; these fallbacks are never used
    // by a loaded policy but keep this function total.
    let dcpu = d.cpu.as_ref().map_or(Cpus::whole(1), |v| v.0);
    let dmem = d.mem.as_ref().map_or(Bytes(Bytes::GIB), |v| v.0);
    let dtasks = d.tasks.as_ref().map_or(DEFAULT_TASKS, |v| v.0);
    let mcpu = m.cpu.as_ref().map_or(dcpu, |v| v.0);
    let mmem = m.mem.as_ref().map_or(dmem, |v| v.0);
    let mtasks = m.tasks.as_ref().map_or(dtasks, |v| v.0);
    let (dcpu, dmem, dtasks) = (dcpu.min(mcpu), dmem.min(mmem), dtasks.min(mtasks));
    let ratio = match d.mem_high.as_ref().map(|v| v.0) {
        Some(MemHigh::Percent(p)) => Some(p / 100.0),
        Some(MemHigh::Size(s)) if s < dmem => Some(s.0 as f64 / dmem.0 as f64),
        _ => None,
    };
    let high = |mem: Bytes| ratio.map(|r| mem.scale(r).floor_mib());
    Resolved {
        default: Limits {
            cpu: dcpu,
            mem: dmem,
            mem_high: high(dmem),
            tasks: dtasks,
        },
        max: Limits {
            cpu: mcpu,
            mem: mmem,
            mem_high: high(mmem),
            tasks: mtasks,
        },
        ratio,
    }
}
