//! A loaded policy and what it says about one user: the resolution of
//! defaults, group and user overrides, exemptions and capacity.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fairshare_proto::units::{Bandwidth, Bytes, Ceiling, Cpus, Iops, Tasks, Weight};
use fairshare_proto::wire::Limits;
use indexmap::IndexMap;

use crate::error::Origin;
use crate::fair::{
    Bursting, CgroupLayout, FairShare, Guarantees, IO_WEIGHT_NOTE, IoLimits, IoTarget, MemLow,
    Swap, Unenforced, show_swap, unenforced_reason,
};
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

fn pick<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
    if b.is_some() {
        a.clone_from(b);
    }
}

/// Some of the IO limits of one target, each with where it was set.
#[derive(Clone, Debug, Default)]
pub(crate) struct IoPartial {
    pub(crate) read_bw: Option<(Ceiling<Bandwidth>, Origin)>,
    pub(crate) write_bw: Option<(Ceiling<Bandwidth>, Origin)>,
    pub(crate) read_iops: Option<(Ceiling<Iops>, Origin)>,
    pub(crate) write_iops: Option<(Ceiling<Iops>, Origin)>,
}

/// The four IO fields, as named in the policy.
pub(crate) const IO_FIELDS: [&str; 4] = ["read_bw", "write_bw", "read_iops", "write_iops"];

impl IoPartial {
    fn overlay(&mut self, other: &IoPartial) {
        pick(&mut self.read_bw, &other.read_bw);
        pick(&mut self.write_bw, &other.write_bw);
        pick(&mut self.read_iops, &other.read_iops);
        pick(&mut self.write_iops, &other.write_iops);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.read_bw.is_none()
            && self.write_bw.is_none()
            && self.read_iops.is_none()
            && self.write_iops.is_none()
    }

    /// One field shown as written, with where it was set.
    pub(crate) fn shown(&self, field: &str) -> Option<(String, Origin)> {
        fn s<T: fmt::Display>(v: &Option<(T, Origin)>) -> Option<(String, Origin)> {
            v.as_ref().map(|(v, o)| (v.to_string(), o.clone()))
        }
        match field {
            "read_bw" => s(&self.read_bw),
            "write_bw" => s(&self.write_bw),
            "read_iops" => s(&self.read_iops),
            "write_iops" => s(&self.write_iops),
            _ => None,
        }
    }

    fn limits(&self) -> IoLimits {
        IoLimits {
            read_bw: self.read_bw.as_ref().map(|v| v.0),
            write_bw: self.write_bw.as_ref().map(|v| v.0),
            read_iops: self.read_iops.as_ref().map(|v| v.0),
            write_iops: self.write_iops.as_ref().map(|v| v.0),
        }
    }
}

/// Some of the limits, each with where it was set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Partial {
    pub(crate) cpu: Option<(Cpus, Origin)>,
    pub(crate) mem: Option<(Bytes, Origin)>,
    pub(crate) mem_high: Option<(MemHigh, Origin)>,
    pub(crate) tasks: Option<(Tasks, Origin)>,
    pub(crate) weight: Option<(Weight, Origin)>,
    pub(crate) io_weight: Option<(Weight, Origin)>,
    pub(crate) mem_low: Option<(MemLow, Origin)>,
    pub(crate) swap: Option<(Swap, Origin)>,
    pub(crate) io: BTreeMap<IoTarget, IoPartial>,
    pub(crate) burst: Option<(bool, Origin)>,
}

impl Partial {
    pub(crate) fn overlay(&mut self, other: &Partial) {
        pick(&mut self.cpu, &other.cpu);
        pick(&mut self.mem, &other.mem);
        pick(&mut self.mem_high, &other.mem_high);
        pick(&mut self.tasks, &other.tasks);
        pick(&mut self.weight, &other.weight);
        pick(&mut self.io_weight, &other.io_weight);
        pick(&mut self.mem_low, &other.mem_low);
        pick(&mut self.swap, &other.swap);
        pick(&mut self.burst, &other.burst);
        for (target, io) in &other.io {
            self.io.entry(target.clone()).or_default().overlay(io);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.mem.is_none()
            && self.mem_high.is_none()
            && self.tasks.is_none()
            && self.weight.is_none()
            && self.io_weight.is_none()
            && self.mem_low.is_none()
            && self.swap.is_none()
            && self.burst.is_none()
            && self.io.values().all(IoPartial::is_empty)
    }

    /// Whether the value of `field` (as [`Partial::fair_settings`] names
    /// it) lifts a limit rather than setting one.
    pub(crate) fn lifts(&self, field: &str) -> bool {
        if let Some(io) = field.strip_prefix("io.")
            && let Some((target, f)) = io.rsplit_once('.')
        {
            return self
                .io
                .iter()
                .find(|(t, _)| t.to_string() == target)
                .and_then(|(_, l)| l.shown(f))
                .is_some_and(|(v, _)| v == "max");
        }
        match field {
            "mem_low" => matches!(&self.mem_low, Some((MemLow::Size(b), _)) if b.get() == 0),
            "swap" => matches!(&self.swap, Some((Ceiling::Unlimited, _))),
            _ => false,
        }
    }

    /// Every value set here with its field name relative to the part
    /// (`mem_low`, `io./home.write_bw`) and where it was set.
    pub(crate) fn fair_settings(&self) -> Vec<(String, Origin)> {
        let mut out = Vec::new();
        let mut add = |name: &str, o: Option<&Origin>| {
            if let Some(o) = o {
                out.push((name.to_string(), o.clone()));
            }
        };
        add("weight", self.weight.as_ref().map(|v| &v.1));
        add("io_weight", self.io_weight.as_ref().map(|v| &v.1));
        add("mem_low", self.mem_low.as_ref().map(|v| &v.1));
        add("swap", self.swap.as_ref().map(|v| &v.1));
        add("burst", self.burst.as_ref().map(|v| &v.1));
        for (target, io) in &self.io {
            for f in IO_FIELDS {
                if let Some((_, o)) = io.shown(f) {
                    out.push((format!("io.{target}.{f}"), o));
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Override {
    pub(crate) origin: Option<Origin>,
    pub(crate) defaults: Partial,
    pub(crate) max: Partial,
    /// The tier this group or user is in (never set on a tier itself).
    pub(crate) tier: Option<(String, Origin)>,
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
    /// `tiers:`: named sets of defaults and max that groups and users name.
    pub(crate) tiers: IndexMap<String, Override>,
    pub(crate) bursting: Bursting,
    pub(crate) guarantees: Guarantees,
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
    /// The guarantee as a share of `mem`, when written as a percentage.
    pub mem_low_ratio: Option<f64>,
    /// What the user gets at login and after `release`.
    pub default: Limits,
    /// The most the user may resize to.
    pub max: Limits,
    /// The soft limit as a share of `mem` (resizes keep it).
    pub mem_high_ratio: Option<f64>,
    /// Weights, the memory guarantee, swap, IO limits and bursting at the
    /// default (issue 15; beside `default` until the wire type carries them).
    pub fair_default: FairShare,
    /// The most a user may raise those to (an IO limit or swap: the
    /// highest; a weight or guarantee: the largest).
    pub fair_max: FairShare,
    /// The named tier the user is in (`tiers:`), and what put them there
    /// (`group NAME` or `user NAME`).
    pub tier: Option<(String, String)>,
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
        let mut l = Limits::new(
            cpu,
            mem,
            self.mem_high_ratio.map(|r| mem.scale(r).floor_mib()),
            tasks,
        );
        with_fair(&mut l, &self.fair(mem));
        l
    }

    /// The fair-share settings at a given hard limit: a guarantee written as
    /// a percentage follows `mem`, and no guarantee is above `mem`.
    pub fn fair(&self, mem: Bytes) -> FairShare {
        let mut f = self.fair_default.clone();
        f.mem_low = match (self.mem_low_ratio, f.mem_low) {
            (Some(r), _) => Some(mem.scale(r).floor_mib()),
            (None, low) => low.map(|l| l.min(mem)),
        };
        f
    }
}

/// Carries the fair-share settings systemd applies per slice in `limits`
/// (weights, guarantee, swap); IO limits and bursting stay in
/// [`FairShare`].
pub fn with_fair(limits: &mut Limits, f: &FairShare) {
    limits.weight = f.weight;
    limits.io_weight = f.io_weight;
    limits.mem_low = f.mem_low.filter(|l| l.get() > 0);
    limits.swap = f.swap.and_then(|s| s.limit());
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
    /// The memory guarantees that may be handed out in total
    /// (`capacity.mem_low`, [`Policy::mem_low_capacity`]).
    pub mem_low: Bytes,
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
        let tier = self.tier_of(who);
        if let Some((name, _)) = &tier
            && let Some(t) = self.tiers.get(name.as_str())
        {
            d.overlay(&t.defaults);
            m.overlay(&t.max);
        }
        for (_, o) in self.matching_groups(who) {
            d.overlay(&o.defaults);
            m.overlay(&o.max);
        }
        if let Some(o) = self.users.get(&who.name) {
            d.overlay(&o.defaults);
            m.overlay(&o.max);
        }
        let r = resolve(&d, &m);
        let burst = self.bursting.enabled;
        let fair_default = resolve_fair(&d, r.default.mem, burst);
        let mut fair_max = resolve_fair(&m, r.max.mem, false);
        raise_to(&mut fair_max, &fair_default);
        let mut default = r.default;
        with_fair(&mut default, &fair_default);
        let mut max = r.max;
        with_fair(&mut max, &fair_max);
        UserPolicy {
            exempt: self.exemption(who),
            mem_low_ratio: match d.mem_low.as_ref().map(|v| v.0) {
                Some(MemLow::Percent(p)) => Some(p / 100.0),
                _ => None,
            },
            default,
            max,
            mem_high_ratio: r.ratio,
            fair_default,
            fair_max,
            tier: tier.map(|(n, by)| (n.clone(), by)),
            sources: self.sources(who),
        }
    }

    /// The tier a user is in: their own `users.NAME.tier`, else the last of
    /// their groups (in policy order) that names one; with what set it.
    pub(crate) fn tier_of<'a>(&'a self, who: &'a Identity) -> Option<(&'a String, String)> {
        if let Some(o) = self.users.get(&who.name)
            && let Some((t, _)) = &o.tier
        {
            return Some((t, format!("user {}", who.name)));
        }
        self.matching_groups(who)
            .filter_map(|(g, o)| o.tier.as_ref().map(|(t, _)| (t, format!("group {g}"))))
            .last()
    }

    /// `bursting:`, with its defaults.
    pub fn bursting(&self) -> &Bursting {
        &self.bursting
    }

    /// `capacity.mem_low`: how much memory may be guaranteed in total.
    pub fn guarantees(&self) -> &Guarantees {
        &self.guarantees
    }

    /// The memory guarantees the host may hand out in total: a size, or a
    /// share of `capacity.mem` (the host's RAM by default). Never
    /// overcommitted.
    pub fn mem_low_capacity(&self, host: HostResources) -> Bytes {
        let base = self.capacity_mem.unwrap_or(host.mem);
        self.guarantees.total.at(base).min(base)
    }

    /// Whether any part of the policy names a memory guarantee (`mem_low`
    /// in `defaults`, `max`, a tier, group or user).
    pub fn gives_guarantees(&self) -> bool {
        std::iter::once(&self.defaults)
            .chain(std::iter::once(&self.max))
            .chain(
                [&self.tiers, &self.groups, &self.users]
                    .into_iter()
                    .flat_map(|m| m.values().flat_map(|o| [&o.defaults, &o.max])),
            )
            .any(|p| p.mem_low.is_some())
    }

    /// The policy's tier names, in the order written.
    pub fn tier_names(&self) -> impl Iterator<Item = &String> {
        self.tiers.keys()
    }

    /// The keys this policy sets that `layout` cannot enforce, each with
    /// where it is set and why (for `--check` and `status`).
    pub fn unenforced(&self, layout: CgroupLayout) -> Vec<Unenforced> {
        let mut out = Vec::new();
        let mut parts: Vec<(String, &Partial)> = vec![
            ("defaults.".into(), &self.defaults),
            ("max.".into(), &self.max),
        ];
        for (kind, map) in [
            ("tiers", &self.tiers),
            ("groups", &self.groups),
            ("users", &self.users),
        ] {
            for (name, o) in map {
                parts.push((format!("{kind}.{name}.defaults."), &o.defaults));
                parts.push((format!("{kind}.{name}.max."), &o.max));
            }
        }
        for (prefix, p) in parts {
            for (field, origin) in p.fair_settings() {
                let key = field.rsplit('.').next().unwrap_or(&field);
                // lifting something (`mem_low: 0`, `swap: max`, `write_iops:
                // max`) needs nothing enforced
                if p.lifts(&field) {
                    continue;
                }
                if let Some(why) = unenforced_reason(key, layout) {
                    out.push(Unenforced {
                        field: format!("{prefix}{field}"),
                        origin,
                        why,
                    });
                }
            }
        }
        out
    }

    /// The `--check` summary with what `layout` cannot enforce; `None` when
    /// the layout is not known (no warnings then).
    pub fn summary_on(&self, layout: Option<CgroupLayout>) -> Vec<String> {
        let mut out = self.summary_lines();
        if let Some(layout) = layout {
            let uses = |pick: fn(&Partial) -> bool| {
                pick(&self.defaults)
                    || pick(&self.max)
                    || [&self.tiers, &self.groups, &self.users]
                        .iter()
                        .any(|m| m.values().any(|o| pick(&o.defaults) || pick(&o.max)))
            };
            // one line per reason, with every place that sets such a key
            let missing = self.unenforced(layout);
            let mut reasons: Vec<(&str, &str, Vec<String>)> = Vec::new();
            for m in &missing {
                let key = m.field.rsplit('.').next().unwrap_or(&m.field);
                let key = match key {
                    "read_iops" | "write_iops" => "read_iops, write_iops",
                    k => k,
                };
                let place = format!("{} ({})", m.origin, m.field);
                match reasons.iter_mut().find(|(_, why, _)| *why == m.why) {
                    Some((_, _, places)) => places.push(place),
                    None => reasons.push((key, m.why, vec![place])),
                }
            }
            for (key, why, places) in reasons {
                out.push(format!(
                    "warning: {key} {why}; this host uses {}; set at {}",
                    layout.name(),
                    places.join(", ")
                ));
            }
            if uses(|p| p.io_weight.is_some()) {
                out.push(IO_WEIGHT_NOTE.to_string());
            }
        }
        out
    }

    /// Total capacity the daemon may hand out on a host of this size.
    pub fn capacity(&self, host: HostResources) -> CapacityLimit {
        let base_cpu = self.capacity_cpu.unwrap_or(host.cpus);
        let base_mem = self.capacity_mem.unwrap_or(host.mem);
        CapacityLimit {
            cpu: base_cpu.scale(self.overcommit_cpu),
            mem: base_mem.scale(self.overcommit_mem),
            mem_low: self.mem_low_capacity(host),
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
        let mut l = resolve(&self.defaults, &self.max).default;
        let fair = resolve_fair(&self.defaults, l.mem, self.bursting.enabled);
        with_fair(&mut l, &fair);
        l
    }

    /// The fair-share settings of the policy default for a user no group or
    /// user rule names (its IO limits go into systemd's drop-in for every
    /// user slice).
    pub fn plain_fair(&self) -> FairShare {
        let l = resolve(&self.defaults, &self.max).default;
        resolve_fair(&self.defaults, l.mem, self.bursting.enabled)
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

    /// A short human summary, for `fairshared --check`, with what this
    /// host's cgroup layout (found at `/sys/fs/cgroup`) cannot enforce.
    /// and where each IO limit goes on this host's disks.
    pub fn summary(&self) -> Vec<String> {
        let mut out = self.summary_on(Some(CgroupLayout::detect(std::path::Path::new(
            "/sys/fs/cgroup",
        ))));
        out.extend(
            self.io_findings(|t| {
                crate::blockdev::resolve(t, std::path::Path::new("/sys/dev/block"))
            }),
        );
        out
    }

    /// Every IO target the policy names (anywhere), resolved to its disk by
    /// `resolve` ([`crate::blockdev::resolve`] on a real host): where each
    /// limit goes, a warning for a target that has no disk, and a note for
    /// targets sharing one (their limits are merged, the lower of each
    /// kind winning).
    pub fn io_findings(
        &self,
        resolve: impl Fn(&IoTarget) -> Result<crate::blockdev::Disk, String>,
    ) -> Vec<String> {
        let mut targets: Vec<(&IoTarget, &Origin)> = Vec::new();
        let all = [&self.tiers, &self.groups, &self.users];
        for p in [&self.defaults, &self.max].into_iter().chain(
            all.iter()
                .flat_map(|m| m.values().flat_map(|o| [&o.defaults, &o.max])),
        ) {
            for (t, io) in &p.io {
                let origin = [&io.read_bw, &io.write_bw]
                    .iter()
                    .find_map(|v| v.as_ref().map(|v| &v.1))
                    .or_else(|| {
                        [&io.read_iops, &io.write_iops]
                            .iter()
                            .find_map(|v| v.as_ref().map(|v| &v.1))
                    });
                if let Some(o) = origin
                    && !targets.iter().any(|(seen, _)| *seen == t)
                {
                    targets.push((t, o));
                }
            }
        }
        let mut out = Vec::new();
        let mut disks: Vec<(crate::blockdev::Disk, Vec<&IoTarget>)> = Vec::new();
        for (t, origin) in targets {
            match resolve(t) {
                Ok(disk) => {
                    out.push(format!("io {t}: on disk {disk}"));
                    match disks.iter_mut().find(|(d, _)| *d == disk) {
                        Some((_, ts)) => ts.push(t),
                        None => disks.push((disk, vec![t])),
                    }
                }
                Err(e) => out.push(format!(
                    "warning: {origin}: io {t}: {e}; the limits for {t} are not applied on this host"
                )),
            }
        }
        for (disk, ts) in disks.iter().filter(|(_, ts)| ts.len() > 1) {
            let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
            out.push(format!(
                "note: io {} are all on disk {disk}: a user's limits for them are merged, the lower of each kind applying to the whole disk",
                names.join(", ")
            ));
        }
        out
    }

    fn summary_lines(&self) -> Vec<String> {
        let base = self.for_user(&Identity {
            uid: u32::MAX,
            ..Identity::default()
        });
        let mut out = vec![
            format!("defaults: {}", show_limits(&base.default)),
            format!("max:      {}", show_limits(&base.max)),
        ];
        let fair = show_fair(&base.fair_default);
        if !fair.is_empty() {
            out.push(format!("defaults: {fair}"));
        }
        let fair = show_fair(&base.fair_max);
        if !fair.is_empty() {
            out.push(format!("max:      {fair}"));
        }
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
        let g = &self.guarantees;
        if self.gives_guarantees() {
            let of = match g.total {
                MemLow::Percent(_) => format!(
                    " of {}",
                    cap(self.capacity_mem.map(|m| m.to_string()))
                        .replace("host", "the host's memory")
                ),
                MemLow::Size(_) => String::new(),
            };
            let full = match g.when_full {
                crate::fair::WhenFull::Scale => "every guarantee scaled down in proportion",
                crate::fair::WhenFull::FirstCome => {
                    "first come, first served (resizes beyond what is free are refused)"
                }
            };
            out.push(format!(
                "guarantees: mem_low at most {}{of} in total; when more is wanted: {full}",
                g.total
            ));
        }
        let b = &self.bursting;
        if b.enabled {
            let up_to = match b.up_to {
                crate::fair::BurstCeiling::Max => "each user's max.cpu",
                crate::fair::BurstCeiling::Host => "every CPU of the host",
            };
            let contention = match b.contention {
                crate::fair::Contention::Share => {
                    "users who all want more share idle CPUs by weight"
                }
                crate::fair::Contention::Allocation => {
                    "two or more users wanting more also count as busy"
                }
            };
            out.push(format!(
                "bursting: on, up to {up_to}; back to allocations after {} busy (above {}% of the CPUs, bursts above allocations not counted), again after {} idle (below {}%); sampled every {}; {contention}",
                fairshare_proto::units::format_duration(b.busy_for),
                b.busy_threshold * 100.0,
                fairshare_proto::units::format_duration(b.idle_for),
                b.idle_threshold * 100.0,
                fairshare_proto::units::format_duration(b.interval),
            ));
        }
        for (name, o) in &self.tiers {
            let mut parts = Vec::new();
            if !o.defaults.is_empty() {
                parts.push(format!("defaults {}", show_partial(&o.defaults)));
            }
            if !o.max.is_empty() {
                parts.push(format!("max {}", show_partial(&o.max)));
            }
            out.push(format!("tier {name}: {}", parts.join("; ")));
        }
        for (kind, map) in [("group", &self.groups), ("user", &self.users)] {
            for (name, o) in map {
                let mut parts = Vec::new();
                if let Some((t, _)) = &o.tier {
                    parts.push(format!("tier {t}"));
                }
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

/// `weight 200, io_weight 100, mem_low 1G, swap 0 (none), io /home read_bw 50MB/s`
fn show_fair(f: &FairShare) -> String {
    let mut parts = Vec::new();
    if let Some(w) = f.weight {
        parts.push(format!("weight {w}"));
    }
    if let Some(w) = f.io_weight {
        parts.push(format!("io_weight {w}"));
    }
    if let Some(l) = f.mem_low {
        parts.push(format!("mem_low {l}"));
    }
    if let Some(s) = &f.swap {
        parts.push(format!("swap {}", show_swap(s)));
    }
    for (t, io) in &f.io {
        parts.push(format!("io {t} {io}"));
    }
    parts.join(", ")
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
    if let Some((w, _)) = &p.weight {
        parts.push(format!("weight {w}"));
    }
    if let Some((w, _)) = &p.io_weight {
        parts.push(format!("io_weight {w}"));
    }
    if let Some((l, _)) = &p.mem_low {
        parts.push(format!("mem_low {l}"));
    }
    if let Some((s, _)) = &p.swap {
        parts.push(format!("swap {}", show_swap(s)));
    }
    if let Some((b, _)) = &p.burst {
        parts.push(format!("burst {b}"));
    }
    for (t, io) in &p.io {
        if !io.is_empty() {
            parts.push(format!("io {t} {}", io.limits()));
        }
    }
    parts.join(", ")
}

/// The fair-share part of one side (defaults or max), at its `mem`.
/// `burst` is whether bursting is on; a part's own `burst: false` opts out.
fn resolve_fair(p: &Partial, mem: Bytes, burst: bool) -> FairShare {
    FairShare {
        weight: p.weight.as_ref().map(|v| v.0),
        io_weight: p.io_weight.as_ref().map(|v| v.0),
        mem_low: p.mem_low.as_ref().map(|v| v.0.at(mem).min(mem)),
        swap: p.swap.as_ref().map(|v| v.0),
        io: p
            .io
            .iter()
            .map(|(t, io)| (t.clone(), io.limits()))
            .filter(|(_, l)| *l != IoLimits::default())
            .collect(),
        burst: burst && p.burst.as_ref().is_none_or(|v| v.0),
    }
}

/// A maximum is never below the default: what `max` leaves out follows
/// the default, as for cpu, mem and tasks.
fn raise_to(max: &mut FairShare, d: &FairShare) {
    fn up<T: Ord + Copy>(m: &mut Option<T>, d: Option<T>) {
        *m = match (*m, d) {
            (Some(m), Some(d)) => Some(m.max(d)),
            (m, d) => m.or(d),
        };
    }
    up(&mut max.weight, d.weight);
    up(&mut max.io_weight, d.io_weight);
    up(&mut max.mem_low, d.mem_low);
    up(&mut max.swap, d.swap);
    for (t, dl) in &d.io {
        let ml = max.io.entry(t.clone()).or_default();
        up(&mut ml.read_bw, dl.read_bw);
        up(&mut ml.write_bw, dl.write_bw);
        up(&mut ml.read_iops, dl.read_iops);
        up(&mut ml.write_iops, dl.write_iops);
    }
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
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        },
        max: Limits {
            cpu: mcpu,
            mem: mmem,
            mem_high: high(mmem),
            tasks: mtasks,
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        },
        ratio,
    }
}
