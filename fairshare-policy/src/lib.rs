//! fairshare's policy: what every user gets at login, how far they may resize,
//! who is exempt, and how much the host can hand out.
//!
//! A policy is one YAML file or a directory of `*.yaml`/`*.yml` files merged in
//! file-name order, like systemd drop-ins: a later file overrides single fields
//! of an earlier one, and exempt lists are added together. The original
//! two-block file loads unchanged:
//!
//! ```yaml
//! defaults: {cpu: 2, mem: 8G}
//! max:      {cpu: 8, mem: 32G}
//! ```
//!
//! Loading never stops at the first problem: [`Policy::load`] returns every
//! error, each naming the file, line and field. A loaded [`Policy`] is pure
//! data; [`Policy::for_user`] resolves one user's limits from their name and
//! groups without touching the system, so it is cheap and testable.
//!
//! The format is documented for admins in `docs/policy.md` (and the
//! `fairshare-policy(5)` man page).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Quantity, Tasks, ValueError, parse_duration};
use fairshare_proto::wire::Limits;
use indexmap::IndexMap;
use serde_saphyr::Spanned;

use raw::{RawFile, RawLimits, RawOvercommit, RawOverride, Scalar};

/// Where the daemon looks for its policy unless told otherwise.
pub const DEFAULT_POLICY: &str = "/etc/fairshare/policy.d/";
/// Task limit when the policy does not set one.
pub const DEFAULT_TASKS: Tasks = Tasks(4096);
/// Users with a uid below this are exempt unless the policy says otherwise.
pub const DEFAULT_UID_BELOW: u32 = 1000;
/// The kernel's overflow uid, `nobody`: never limited.
pub const NOBODY_UID: u32 = 65534;
/// Default overcommit of CPU quota: a quota is a ceiling on a time-shared
/// resource, so handing out more than the host has is routine.
pub const DEFAULT_OVERCOMMIT_CPU: f64 = 4.0;
/// Default overcommit of memory: beyond this, the kernel's OOM killer, not
/// fairshare, decides who loses.
pub const DEFAULT_OVERCOMMIT_MEM: f64 = 1.5;
/// Policy files larger than this are refused (a policy is a few lines).
const MAX_FILE_SIZE: u64 = 1 << 20;

/// Every key of the policy format and what it means (for fairshare-policy(5)).
pub const FIELDS: &[(&str, &str)] = &[
    (
        "defaults.cpu",
        "CPUs every user gets at login and after a release; fractions allowed (1.5). Written as CPUQuota (cpus x 100%). Required.",
    ),
    (
        "defaults.mem",
        "Hard memory limit (MemoryMax): B, K/KB, M/MB, G/GB, T/TB, powers of 1024, decimals allowed (1.5G); a bare number is bytes; at least 1M. Required.",
    ),
    (
        "defaults.mem_high",
        "Soft memory limit (MemoryHigh), above which the kernel reclaims harder: a size below mem, or a percentage of mem (90%). Resizes keep the same ratio. Default: none.",
    ),
    (
        "defaults.tasks",
        "Processes and threads (TasksMax). Default: 4096.",
    ),
    (
        "max.cpu, max.mem, max.tasks",
        "The most a user may resize to. Each defaults to the matching default, so a policy without max allows no resizing upwards.",
    ),
    (
        "exempt.uid_below",
        "Users with a uid below this are never limited. Default: 1000. Root and the overflow user nobody (65534) never are.",
    ),
    (
        "exempt.users, exempt.groups",
        "Lists of user and group names that are never limited. Lists from several files add up.",
    ),
    (
        "capacity.cpu, capacity.mem",
        "The host's size for capacity accounting. Default: the host's online CPUs and total RAM.",
    ),
    (
        "capacity.overcommit",
        "How far the host may be handed out beyond its size: a number for both, or {cpu: N, mem: N}. Default: cpu 4, mem 1.5. A resize is refused when the sum of all tracked users' allocations would exceed capacity x overcommit; logins never are.",
    ),
    (
        "groups.NAME.defaults, groups.NAME.max",
        "Overrides for members of group NAME, field by field. A user in several groups gets them in the order written (later wins).",
    ),
    (
        "users.NAME.defaults, users.NAME.max",
        "Overrides for user NAME, applied after every group.",
    ),
    (
        "leases.max_duration",
        "The longest a resize above the default may last (30m, 8h, 2d). Resizes above the default without --for get this duration; longer ones are refused. Default: no limit.",
    ),
];

// ---------------------------------------------------------------- errors

/// The place a value came from: file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// One problem in a policy: where, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub origin: Origin,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.is_empty() {
            true => write!(f, "{}: {}", self.origin, self.message),
            false => write!(f, "{}: {}: {}", self.origin, self.field, self.message),
        }
    }
}

/// Every problem found while loading a policy (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl PolicyErrors {
    fn one(file: &str, line: u32, field: &str, message: impl Into<String>) -> PolicyErrors {
        PolicyErrors(vec![PolicyError {
            origin: Origin {
                file: file.into(),
                line,
            },
            field: field.into(),
            message: message.into(),
        }])
    }
}

// ---------------------------------------------------------------- the policy

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
struct Partial {
    cpu: Option<(Cpus, Origin)>,
    mem: Option<(Bytes, Origin)>,
    mem_high: Option<(MemHigh, Origin)>,
    tasks: Option<(Tasks, Origin)>,
}

impl Partial {
    fn overlay(&mut self, other: &Partial) {
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

    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.mem.is_none() && self.mem_high.is_none() && self.tasks.is_none()
    }
}

#[derive(Clone, Debug, Default)]
struct Override {
    origin: Option<Origin>,
    defaults: Partial,
    max: Partial,
}

/// A loaded, validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    files: Vec<PathBuf>,
    defaults: Partial,
    max: Partial,
    exempt_users: BTreeMap<String, Origin>,
    exempt_groups: BTreeMap<String, Origin>,
    uid_below: u32,
    capacity_cpu: Option<Cpus>,
    capacity_mem: Option<Bytes>,
    overcommit_cpu: f64,
    overcommit_mem: f64,
    max_lease: Option<Duration>,
    groups: IndexMap<String, Override>,
    users: IndexMap<String, Override>,
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
    /// `group NAME`, `user NAME`.
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
    /// Loads a policy file, or every `*.yaml`/`*.yml` file of a directory in
    /// file-name order.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "; create it (see etc/policy.d/00-defaults.yaml in the fairshare sources) or pass another path"
                }
                _ => "",
            };
            PolicyErrors::one(&shown, 0, "", format!("cannot read policy: {e}{hint}"))
        })?;
        let files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| {
                    PolicyErrors::one(&shown, 0, "", format!("cannot list policy directory: {e}"))
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_policy_file(p))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(PolicyErrors::one(
                    &shown,
                    0,
                    "",
                    "no policy files (*.yaml or *.yml) in this directory; add one, e.g. 00-defaults.yaml with `defaults: {cpu: 2, mem: 8G}`",
                ));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut sources = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for f in &files {
            let name = f.display().to_string();
            match read_limited(f) {
                Ok(text) => sources.push((name, text)),
                Err(e) => errors.push(PolicyError {
                    origin: Origin {
                        file: name.into(),
                        line: 0,
                    },
                    field: String::new(),
                    message: e,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let mut policy = Policy::from_sources(&sources)?;
        policy.files = files;
        Ok(policy)
    }

    /// Builds a policy from `(file name, text)` pairs, merged in the given
    /// order. The names only appear in error messages.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Policy, PolicyErrors> {
        let mut b = Builder::default();
        for (name, text) in sources {
            b.add_file(name, text);
        }
        b.finish(sources.iter().map(|(n, _)| n.as_str()).collect())
    }

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
        let mut sources = vec!["defaults".to_string()];
        for (name, o) in &self.groups {
            if who.groups.iter().any(|g| g == name) {
                d.overlay(&o.defaults);
                m.overlay(&o.max);
                sources.push(format!("group {name}"));
            }
        }
        if let Some(o) = self.users.get(&who.name) {
            d.overlay(&o.defaults);
            m.overlay(&o.max);
            sources.push(format!("user {}", who.name));
        }
        let r = resolve(&d, &m);
        UserPolicy {
            exempt: self.exemption(who),
            default: r.default,
            max: r.max,
            mem_high_ratio: r.ratio,
            sources,
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

fn is_policy_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
}

fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read policy file: {e}"))?;
    let mut text = String::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read policy file: {e}"))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(format!(
            "policy file is larger than {}; is this the right file?",
            Bytes(MAX_FILE_SIZE)
        ));
    }
    Ok(text)
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

// ---------------------------------------------------------------- building

#[derive(Default)]
struct Builder {
    errors: Vec<PolicyError>,
    defaults: Partial,
    max: Partial,
    exempt_users: BTreeMap<String, Origin>,
    exempt_groups: BTreeMap<String, Origin>,
    uid_below: Option<u32>,
    capacity_cpu: Option<Cpus>,
    capacity_mem: Option<Bytes>,
    overcommit_cpu: Option<f64>,
    overcommit_mem: Option<f64>,
    max_lease: Option<Duration>,
    groups: IndexMap<String, Override>,
    users: IndexMap<String, Override>,
}

impl Builder {
    fn err(&mut self, origin: Origin, field: &str, message: impl Into<String>) {
        self.errors.push(PolicyError {
            origin,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn add_file(&mut self, name: &str, text: &str) {
        let file: Arc<str> = name.into();
        let raw: Option<RawFile> = match serde_saphyr::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                let message = clean_yaml_message(&e.without_snippet().to_string());
                let field = key_path_at(text, line as usize);
                let message = match col {
                    0 => message,
                    c => format!("{message} (column {c})"),
                };
                self.err(
                    Origin {
                        file,
                        line: line as u32,
                    },
                    &field,
                    message,
                );
                return;
            }
        };
        let Some(raw) = raw else { return }; // an empty file (or only comments)
        let at = |s: &Spanned<Scalar>| Origin {
            file: file.clone(),
            line: s.referenced.line() as u32,
        };
        if let Some(l) = &raw.defaults {
            let p = self.limits(&file, "defaults", l);
            self.defaults.overlay(&p);
        }
        if let Some(l) = &raw.max {
            let p = self.limits(&file, "max", l);
            if let Some((_, o)) = &p.mem_high {
                self.err(
                    o.clone(),
                    "max.mem_high",
                    "the soft limit is set under `defaults` (it scales with every resize); remove it from `max`",
                );
            }
            self.max.overlay(&p);
        }
        if let Some(e) = raw.exempt {
            for (list, target) in [(e.users, true), (e.groups, false)] {
                for n in list.into_iter().flatten() {
                    let o = Origin {
                        file: file.clone(),
                        line: n.referenced.line() as u32,
                    };
                    let map = if target {
                        &mut self.exempt_users
                    } else {
                        &mut self.exempt_groups
                    };
                    map.insert(n.value, o);
                }
            }
            if let Some(v) = &e.uid_below {
                match &v.value {
                    Scalar::UInt(n) if *n <= u64::from(u32::MAX) => {
                        self.uid_below = Some(*n as u32)
                    }
                    other => self.err(
                        at(v),
                        "exempt.uid_below",
                        format!(
                            "`{}` is not a uid; expected a whole number such as 1000",
                            other.shown()
                        ),
                    ),
                }
            }
        }
        if let Some(c) = raw.capacity {
            if let Some(v) = &c.cpu {
                self.capacity_cpu = self.quantity(at(v), "capacity.cpu", &v.value);
            }
            if let Some(v) = &c.mem {
                self.capacity_mem = self.quantity(at(v), "capacity.mem", &v.value);
            }
            if let Some(oc) = &c.overcommit {
                let o = Origin {
                    file: file.clone(),
                    line: oc.referenced.line() as u32,
                };
                let (cpu, mem) = match &oc.value {
                    RawOvercommit::Both(s) => (Some(s), Some(s)),
                    RawOvercommit::Each(e) => (e.cpu.as_ref(), e.mem.as_ref()),
                };
                if let Some(s) = cpu {
                    self.overcommit_cpu = self.factor(o.clone(), "capacity.overcommit", s);
                }
                if let Some(s) = mem {
                    self.overcommit_mem = self.factor(o, "capacity.overcommit", s);
                }
            }
        }
        for (kind, map) in [("groups", raw.groups), ("users", raw.users)] {
            for (key, o) in map.into_iter().flatten() {
                let origin = Origin {
                    file: file.clone(),
                    line: key.referenced.line() as u32,
                };
                let name = key.value;
                let field = format!("{kind}.{name}");
                if name.trim().is_empty() || name.contains(char::is_whitespace) {
                    self.err(origin.clone(), &field, "is not a valid name");
                }
                let o: RawOverride = o.unwrap_or_default();
                let defaults = match &o.defaults {
                    Some(l) => self.limits(&file, &format!("{field}.defaults"), l),
                    None => Partial::default(),
                };
                let max = match &o.max {
                    Some(l) => self.limits(&file, &format!("{field}.max"), l),
                    None => Partial::default(),
                };
                if let Some((_, o)) = &max.mem_high {
                    self.err(
                        o.clone(),
                        &format!("{field}.max.mem_high"),
                        "the soft limit is set under `defaults`; remove it from `max`",
                    );
                }
                let target = if kind == "groups" {
                    &mut self.groups
                } else {
                    &mut self.users
                };
                let entry = target.entry(name).or_default();
                entry.origin.get_or_insert(origin);
                entry.defaults.overlay(&defaults);
                entry.max.overlay(&max);
            }
        }
        if let Some(l) = raw.leases
            && let Some(v) = &l.max_duration
        {
            let text = v.value.shown();
            match (&v.value, parse_duration(&text)) {
                (Scalar::Str(_) | Scalar::UInt(_), Ok(d)) => self.max_lease = Some(d),
                (_, Err(e)) => self.err(at(v), "leases.max_duration", e.to_string()),
                _ => self.err(
                    at(v),
                    "leases.max_duration",
                    format!("`{text}` is not a duration; expected e.g. 8h or 2d"),
                ),
            }
        }
    }

    fn limits(&mut self, file: &Arc<str>, path: &str, l: &RawLimits) -> Partial {
        let mut p = Partial::default();
        let origin = |s: &Spanned<Scalar>| Origin {
            file: file.clone(),
            line: s.referenced.line() as u32,
        };
        if let Some(v) = &l.cpu {
            let o = origin(v);
            p.cpu = self
                .quantity(o.clone(), &format!("{path}.cpu"), &v.value)
                .map(|c| (c, o));
        }
        if let Some(v) = &l.mem {
            let o = origin(v);
            p.mem = self
                .quantity::<Bytes>(o.clone(), &format!("{path}.mem"), &v.value)
                .and_then(|m| {
                    if m.0 < Bytes::MIB {
                        self.err(
                            o.clone(),
                            &format!("{path}.mem"),
                            format!("{m} is too small for a memory limit (at least 1M); did you forget the unit, as in 8G?"),
                        );
                        None
                    } else {
                        Some((m, o))
                    }
                });
        }
        if let Some(v) = &l.mem_high {
            let o = origin(v);
            p.mem_high = self
                .mem_high(o.clone(), &format!("{path}.mem_high"), &v.value)
                .map(|h| (h, o));
        }
        if let Some(v) = &l.tasks {
            let o = origin(v);
            p.tasks = self
                .quantity(o.clone(), &format!("{path}.tasks"), &v.value)
                .map(|t| (t, o));
        }
        p
    }

    fn quantity<T: Quantity>(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<T> {
        let parsed = match v {
            Scalar::UInt(n) => T::from_u64(*n),
            Scalar::Int(n) => Err(ValueError::NotPositive(n.to_string())),
            Scalar::Float(f) => T::from_number(*f),
            Scalar::Str(s) => s.parse(),
            Scalar::Bool(b) => Err(ValueError::NotANumber {
                input: b.to_string(),
                expected: T::EXPECTED,
            }),
        };
        parsed.map_err(|e| self.err(o, field, e.to_string())).ok()
    }

    fn mem_high(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<MemHigh> {
        if let Scalar::Str(s) = v
            && let Some(p) = s.trim().strip_suffix('%')
        {
            return match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p < 100.0 => Some(MemHigh::Percent(p)),
                _ => {
                    self.err(
                        o,
                        field,
                        format!(
                            "`{s}` must be a percentage above 0% and below 100% of mem, e.g. 90%"
                        ),
                    );
                    None
                }
            };
        }
        self.quantity::<Bytes>(o, field, v).map(MemHigh::Size)
    }

    fn factor(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<f64> {
        let f = match v {
            Scalar::UInt(n) => Some(*n as f64),
            Scalar::Float(f) => Some(*f),
            Scalar::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match f {
            Some(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Some(f),
            _ => {
                self.err(
                    o,
                    field,
                    format!(
                        "`{}` is not an overcommit factor; expected a number above 0 such as 1.5 (or {{cpu: 4, mem: 1.5}})",
                        v.shown()
                    ),
                );
                None
            }
        }
    }

    /// Cross-field checks, then the finished policy.
    fn finish(mut self, files: Vec<&str>) -> Result<Policy, PolicyErrors> {
        let all = files.join(", ");
        if self.defaults.cpu.is_none() && self.errors.is_empty() {
            self.err(
                Origin { file: all.as_str().into(), line: 0 },
                "defaults.cpu",
                "missing: every policy needs a default CPU count, e.g. `defaults: {cpu: 2, mem: 8G}`",
            );
        }
        if self.defaults.mem.is_none() && self.errors.is_empty() {
            self.err(
                Origin { file: all.as_str().into(), line: 0 },
                "defaults.mem",
                "missing: every policy needs a default memory size, e.g. `defaults: {cpu: 2, mem: 8G}`",
            );
        }
        if self.errors.is_empty() {
            let (d, m) = (self.defaults.clone(), self.max.clone());
            self.check_pair(&d, &m, None);
            for (kind, map) in [
                ("groups", self.groups.clone()),
                ("users", self.users.clone()),
            ] {
                for (name, o) in map {
                    let (mut dd, mut mm) = (d.clone(), m.clone());
                    dd.overlay(&o.defaults);
                    mm.overlay(&o.max);
                    self.check_pair(&dd, &mm, Some((&format!("{kind}.{name}."), &o)));
                }
            }
        }
        if !self.errors.is_empty() {
            return Err(PolicyErrors(self.errors));
        }
        Ok(Policy {
            files: Vec::new(),
            defaults: self.defaults,
            max: self.max,
            exempt_users: self.exempt_users,
            exempt_groups: self.exempt_groups,
            uid_below: self.uid_below.unwrap_or(DEFAULT_UID_BELOW),
            capacity_cpu: self.capacity_cpu,
            capacity_mem: self.capacity_mem,
            overcommit_cpu: self.overcommit_cpu.unwrap_or(DEFAULT_OVERCOMMIT_CPU),
            overcommit_mem: self.overcommit_mem.unwrap_or(DEFAULT_OVERCOMMIT_MEM),
            max_lease: self.max_lease,
            groups: self.groups,
            users: self.users,
        })
    }

    /// Defaults must fit within max, and the soft limit below the hard one.
    /// `over` is the override being checked on top of the base (`None` for
    /// the base itself); errors point at the field the override set.
    fn check_pair(&mut self, d: &Partial, m: &Partial, over: Option<(&str, &Override)>) {
        let prefix = over.map(|(p, _)| p).unwrap_or("");
        let sets = |pick: fn(&Partial) -> bool, part: fn(&Override) -> &Partial| {
            over.is_some_and(|(_, o)| pick(part(o)))
        };
        let mut check = |what: &str,
                         pair: Option<(String, String, &Origin, &Origin)>,
                         d_set: bool,
                         m_set: bool| {
            let Some((dv, mv, dorig, morig)) = pair else {
                return;
            };
            if over.is_some() && !d_set && !m_set {
                return; // the base's own problem, reported once for the base
            }
            let (origin, field) = match (over.is_none() || d_set, m_set) {
                (true, _) => (dorig.clone(), format!("{prefix}defaults.{what}")),
                (false, _) => (morig.clone(), format!("{prefix}max.{what}")),
            };
            self.err(
                origin,
                &field,
                format!(
                    "default {what} {dv} is above max {what} {mv} (defaults at {dorig}, max at {morig}); raise max.{what} or lower defaults.{what}"
                ),
            );
        };
        macro_rules! pair {
            ($f:ident) => {
                match (&d.$f, &m.$f) {
                    (Some((dv, dorig)), Some((mv, morig))) if dv > mv => {
                        Some((dv.to_string(), mv.to_string(), dorig, morig))
                    }
                    _ => None,
                }
            };
        }
        check(
            "cpu",
            pair!(cpu),
            sets(|p| p.cpu.is_some(), |o| &o.defaults),
            sets(|p| p.cpu.is_some(), |o| &o.max),
        );
        check(
            "mem",
            pair!(mem),
            sets(|p| p.mem.is_some(), |o| &o.defaults),
            sets(|p| p.mem.is_some(), |o| &o.max),
        );
        check(
            "tasks",
            pair!(tasks),
            sets(|p| p.tasks.is_some(), |o| &o.defaults),
            sets(|p| p.tasks.is_some(), |o| &o.max),
        );
        if let (Some((MemHigh::Size(h), horig)), Some((mem, morig))) = (&d.mem_high, &d.mem)
            && h >= mem
            && (over.is_none()
                || sets(|p| p.mem.is_some() || p.mem_high.is_some(), |o| &o.defaults))
        {
            let field = match sets(|p| p.mem_high.is_some(), |o| &o.defaults) || over.is_none() {
                true => format!("{prefix}defaults.mem_high"),
                false => format!("{prefix}defaults.mem"),
            };
            let origin = match field.ends_with("mem_high") {
                true => horig.clone(),
                false => morig.clone(),
            };
            self.err(
                origin,
                &field,
                format!(
                    "soft limit {h} ({horig}) must be below mem {mem} ({morig}); lower it, or give mem_high as a percentage such as 90%"
                ),
            );
        }
    }
}

/// The dotted path of the key on a line (`defaults.cpu`), found by walking up
/// to less indented lines; used to name the field of a YAML-level error.
fn key_path_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(idx) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return String::new();
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut path = Vec::new();
    if let Some(k) = key_on_line(lines[idx]) {
        path.push(k);
    }
    let mut level = indent(lines[idx]);
    for l in lines[..idx].iter().rev() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') || indent(l) >= level {
            continue;
        }
        if let Some(k) = key_on_line(l) {
            path.push(k);
        }
        level = indent(l);
        if level == 0 {
            break;
        }
    }
    path.reverse();
    path.join(".")
}

/// The first key on a YAML line, for naming the field of a syntax error.
fn key_on_line(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches("- ");
    let key = t.split(':').next()?.trim();
    let ok = !key.is_empty()
        && t.contains(':')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| key.to_string())
}

/// serde's messages end in "at line N, column M", which we print ourselves.
fn clean_yaml_message(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    msg.replace(
        "data did not match any variant of untagged enum Scalar",
        "expected a single value (a number or a string)",
    )
    .replace(
        "data did not match any variant of untagged enum RawOvercommit",
        "expected a number, or {cpu: N, mem: N}",
    )
}

#[cfg(test)]
mod tests;
