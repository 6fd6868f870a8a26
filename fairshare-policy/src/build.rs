//! From YAML files to a [`Policy`]: reading the files, then a [`Builder`]
//! that takes each file's top-level keys in turn, collects every error with
//! its file, line and field, and checks the fields against each other at the
//! end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, parse_duration};
use indexmap::IndexMap;
use serde_saphyr::Spanned;

use crate::error::{Origin, PolicyError, PolicyErrors};
use crate::policy::{Override, Partial, Policy};
use crate::raw::{self, Node, Scalar};

/// Policy files larger than this are refused (a policy is a few lines).
const MAX_FILE_SIZE: u64 = 1 << 20;

mod cross;
mod fair;
mod notices;
mod shape;
mod values;

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

/// The top-level keys of a policy file.
const TOP_KEYS: &[&str] = &[
    "defaults", "max", "exempt", "capacity", "groups", "users", "leases", "notices", "tiers",
    "bursting",
];
/// The keys of `defaults:` and `max:`.
const LIMIT_KEYS: &[&str] = &[
    "cpu",
    "mem",
    "mem_high",
    "tasks",
    "weight",
    "io_weight",
    "mem_low",
    "swap",
    "io",
    "burst",
];

/// The file being read, for the origin of each value.
struct File {
    name: Arc<str>,
}

impl File {
    fn at<T>(&self, s: &Spanned<T>) -> Origin {
        Origin {
            file: self.name.clone(),
            line: s.referenced.line() as u32,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overrides {
    Groups,
    Users,
    Tiers,
}

impl Overrides {
    fn key(self) -> &'static str {
        match self {
            Overrides::Groups => "groups",
            Overrides::Users => "users",
            Overrides::Tiers => "tiers",
        }
    }
}

/// `a.b`, or `b` at the top.
fn join(parent: &str, key: &str) -> String {
    match parent.is_empty() {
        true => key.to_string(),
        false => format!("{parent}.{key}"),
    }
}

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
    tiers: IndexMap<String, Override>,
    bursting: fair::BurstingKeys,
    /// `capacity.mem_low`: total and what to do when it is full.
    guarantees: (Option<crate::fair::MemLow>, Option<crate::fair::WhenFull>),
    notices: Option<crate::policy::NoticeDefaults>,
}

impl Builder {
    fn err(&mut self, origin: Origin, field: &str, message: impl Into<String>) {
        self.errors.push(PolicyError {
            origin,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Reads one file: every top-level key has its own method below, and
    /// every mistake is recorded, so one file's errors are all reported at
    /// once. Only a YAML syntax error stops the reading of a file.
    fn add_file(&mut self, name: &str, text: &str) {
        let file: Arc<str> = name.into();
        let root = match raw::parse(text) {
            Ok(Some(root)) => root,
            Ok(None) => return, // an empty file (or only comments)
            Err(e) => return self.yaml_error(&file, text, &e),
        };
        let top = File { name: file };
        let Some(entries) = self.mapping(&top, "", &root, "policy keys such as `defaults:`") else {
            return;
        };
        for (key, value) in entries {
            match key.value.as_str() {
                "defaults" => self.defaults_key(&top, value),
                "max" => self.max_key(&top, value),
                "exempt" => self.exempt_key(&top, value),
                "capacity" => self.capacity_key(&top, value),
                "groups" => self.overrides_key(&top, Overrides::Groups, value),
                "users" => self.overrides_key(&top, Overrides::Users, value),
                "leases" => self.leases_key(&top, value),
                "tiers" => self.overrides_key(&top, Overrides::Tiers, value),
                "bursting" => self.bursting_key(&top, value),
                "notices" => self.notices_key(&top, value),
                other => self.unknown_key(&top, key, "", other, TOP_KEYS),
            }
        }
    }

    fn defaults_key(&mut self, file: &File, node: &Spanned<Node>) {
        let p = self.limits(file, "defaults", node);
        self.defaults.overlay(&p);
    }

    fn max_key(&mut self, file: &File, node: &Spanned<Node>) {
        let p = self.limits(file, "max", node);
        if let Some((_, o)) = &p.mem_high {
            self.err(
                o.clone(),
                "max.mem_high",
                "the soft limit is set under `defaults` (it scales with every resize); remove it from `max`",
            );
        }
        self.no_burst_in_max(&p, "max");
        self.max.overlay(&p);
    }

    /// `burst` says whether a user may burst at all: a default, not a maximum.
    fn no_burst_in_max(&mut self, p: &Partial, path: &str) {
        if let Some((_, o)) = &p.burst {
            self.err(
                o.clone(),
                &format!("{path}.burst"),
                "whether a user may burst is set under `defaults`; remove it from `max`",
            );
        }
    }

    fn exempt_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(file, "exempt", node, "`users`, `groups` and `uid_below`")
        else {
            return;
        };
        for (key, value) in entries {
            let field = join("exempt", &key.value);
            match key.value.as_str() {
                "users" | "groups" => {
                    for (name, origin) in self.names(file, &field, value) {
                        match key.value.as_str() {
                            "users" => self.exempt_users.insert(name, origin),
                            _ => self.exempt_groups.insert(name, origin),
                        };
                    }
                }
                "uid_below" => {
                    let Some((v, o)) = self.scalar(file, &field, value) else {
                        continue;
                    };
                    match v {
                        Scalar::UInt(n) if *n <= u64::from(u32::MAX) => {
                            self.uid_below = Some(*n as u32)
                        }
                        other => self.err(
                            o,
                            &field,
                            format!(
                                "`{}` is not a uid; expected a whole number such as 1000",
                                other.shown()
                            ),
                        ),
                    }
                }
                other => self.unknown_key(
                    file,
                    key,
                    "exempt",
                    other,
                    &["users", "groups", "uid_below"],
                ),
            }
        }
    }

    fn capacity_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(
            file,
            "capacity",
            node,
            "`cpu`, `mem`, `overcommit` and `mem_low`",
        ) else {
            return;
        };
        for (key, value) in entries {
            let field = join("capacity", &key.value);
            match key.value.as_str() {
                "cpu" => {
                    if let Some((v, o)) = self.scalar(file, &field, value) {
                        self.capacity_cpu = self.quantity(o, &field, v);
                    }
                }
                "mem" => {
                    if let Some((v, o)) = self.scalar(file, &field, value) {
                        self.capacity_mem = self.quantity(o, &field, v);
                    }
                }
                "overcommit" => self.overcommit(file, &field, value),
                "mem_low" => self.guarantees_key(file, &field, value),
                other => self.unknown_key(
                    file,
                    key,
                    "capacity",
                    other,
                    &["cpu", "mem", "overcommit", "mem_low"],
                ),
            }
        }
    }

    /// `overcommit: 1.5` for both, or `overcommit: {cpu: 4, mem: 1.5}`.
    fn overcommit(&mut self, file: &File, field: &str, node: &Spanned<Node>) {
        if let Node::Scalar(s) = &node.value {
            let o = file.at(node);
            self.overcommit_cpu = self.factor(o.clone(), field, s);
            self.overcommit_mem = self.factor(o, field, s);
            return;
        }
        let Some(entries) = self.mapping(file, field, node, "`cpu` and `mem` factors") else {
            return;
        };
        for (key, value) in entries {
            let sub = join(field, &key.value);
            match key.value.as_str() {
                "cpu" => {
                    if let Some((v, o)) = self.scalar(file, &sub, value) {
                        self.overcommit_cpu = self.factor(o, &sub, v);
                    }
                }
                "mem" => {
                    if let Some((v, o)) = self.scalar(file, &sub, value) {
                        self.overcommit_mem = self.factor(o, &sub, v);
                    }
                }
                other => self.unknown_key(file, key, field, other, &["cpu", "mem"]),
            }
        }
    }

    /// `groups:`, `users:` or `tiers:`: overrides of `defaults` and `max`
    /// per name; groups and users may name a `tier`.
    fn overrides_key(&mut self, file: &File, kind: Overrides, node: &Spanned<Node>) {
        let what = match kind {
            Overrides::Groups => "group names to `tier:`, `defaults:` and `max:`",
            Overrides::Users => "user names to `tier:`, `defaults:` and `max:`",
            Overrides::Tiers => "tier names to `defaults:` and `max:`",
        };
        let known: &[&str] = match kind {
            Overrides::Tiers => &["defaults", "max"],
            _ => &["tier", "defaults", "max"],
        };
        let Some(entries) = self.mapping(file, kind.key(), node, what) else {
            return;
        };
        for (key, value) in entries {
            let origin = file.at(key);
            let name = key.value.clone();
            let field = join(kind.key(), &name);
            if name.trim().is_empty() || name.contains(char::is_whitespace) {
                self.err(origin.clone(), &field, "is not a valid name");
            }
            let mut defaults = Partial::default();
            let mut max = Partial::default();
            let mut tier = None;
            let expected = match kind {
                Overrides::Tiers => "`defaults:` and `max:`",
                _ => "`tier:`, `defaults:` and `max:`",
            };
            if let Some(parts) = self.mapping(file, &field, value, expected) {
                for (pkey, pvalue) in parts {
                    let sub = join(&field, &pkey.value);
                    match pkey.value.as_str() {
                        "defaults" => defaults.overlay(&self.limits(file, &sub, pvalue)),
                        "max" => {
                            let m = self.limits(file, &sub, pvalue);
                            if let Some((_, o)) = &m.mem_high {
                                self.err(
                                    o.clone(),
                                    &format!("{sub}.mem_high"),
                                    "the soft limit is set under `defaults`; remove it from `max`",
                                );
                            }
                            self.no_burst_in_max(&m, &sub);
                            max.overlay(&m);
                        }
                        "tier" if kind != Overrides::Tiers => {
                            tier = self.tier_name(file, &sub, pvalue);
                        }
                        other => self.unknown_key(file, pkey, &field, other, known),
                    }
                }
            }
            let target = match kind {
                Overrides::Groups => &mut self.groups,
                Overrides::Users => &mut self.users,
                Overrides::Tiers => &mut self.tiers,
            };
            let entry = target.entry(name).or_default();
            entry.origin.get_or_insert(origin);
            entry.defaults.overlay(&defaults);
            entry.max.overlay(&max);
            if tier.is_some() {
                entry.tier = tier;
            }
        }
    }

    fn leases_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(file, "leases", node, "`max_duration`") else {
            return;
        };
        for (key, value) in entries {
            let field = join("leases", &key.value);
            if key.value != "max_duration" {
                self.unknown_key(file, key, "leases", &key.value, &["max_duration"]);
                continue;
            }
            let Some((v, o)) = self.scalar(file, &field, value) else {
                continue;
            };
            let text = v.shown();
            match (v, parse_duration(&text)) {
                (Scalar::Str(_) | Scalar::UInt(_), Ok(d)) => self.max_lease = Some(d),
                (_, Err(e)) => self.err(o, &field, e.to_string()),
                _ => self.err(
                    o,
                    &field,
                    format!("`{text}` is not a duration; expected e.g. 8h or 2d"),
                ),
            }
        }
    }

    /// `cpu`, `mem`, `mem_high`, `tasks` and the fair-share keys under
    /// `path` (`defaults`, `groups.NAME.max`, `tiers.NAME.defaults`, ...).
    fn limits(&mut self, file: &File, path: &str, node: &Spanned<Node>) -> Partial {
        let mut p = Partial::default();
        let Some(entries) = self.mapping(file, path, node, "limits such as {cpu: 2, mem: 8G}")
        else {
            return p;
        };
        for (key, value) in entries {
            let field = join(path, &key.value);
            if !LIMIT_KEYS.contains(&key.value.as_str()) {
                self.unknown_key(file, key, path, &key.value, LIMIT_KEYS);
                continue;
            }
            if self.fair_key(file, &field, &key.value, value, &mut p) {
                continue;
            }
            let Some((v, o)) = self.scalar(file, &field, value) else {
                continue;
            };
            match key.value.as_str() {
                "cpu" => p.cpu = self.quantity(o.clone(), &field, v).map(|c| (c, o)),
                "mem" => {
                    p.mem = self
                        .quantity::<Bytes>(o.clone(), &field, v)
                        .and_then(|m| {
                            if m.0 < Bytes::MIB {
                                self.err(
                                    o.clone(),
                                    &field,
                                    format!("{m} is too small for a memory limit (at least 1M); did you forget the unit, as in 8G?"),
                                );
                                None
                            } else {
                                Some((m, o))
                            }
                        })
                }
                "mem_high" => p.mem_high = self.mem_high(o.clone(), &field, v).map(|h| (h, o)),
                _ => p.tasks = self.quantity(o.clone(), &field, v).map(|t| (t, o)),
            }
        }
        p
    }
}
