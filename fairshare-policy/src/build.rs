//! From YAML files to a [`Policy`]: reading the files, then a [`Builder`]
//! that takes each file's top-level keys in turn, collects every error with
//! its file, line and field, and checks the fields against each other at the
//! end.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Quantity, ValueError, parse_duration};
use indexmap::IndexMap;
use serde_saphyr::Spanned;

use crate::error::{Origin, PolicyError, PolicyErrors};
use crate::policy::{MemHigh, Override, Partial, Policy};
use crate::raw::{self, Entry, Node, Scalar};
use crate::{DEFAULT_OVERCOMMIT_CPU, DEFAULT_OVERCOMMIT_MEM, DEFAULT_UID_BELOW};

/// Policy files larger than this are refused (a policy is a few lines).
const MAX_FILE_SIZE: u64 = 1 << 20;

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
    "defaults", "max", "exempt", "capacity", "groups", "users", "leases",
];
/// The keys of `defaults:` and `max:`.
const LIMIT_KEYS: &[&str] = &["cpu", "mem", "mem_high", "tasks"];

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

#[derive(Clone, Copy)]
enum Overrides {
    Groups,
    Users,
}

impl Overrides {
    fn key(self) -> &'static str {
        match self {
            Overrides::Groups => "groups",
            Overrides::Users => "users",
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

/// Whether an unknown key is probably a misspelling of `known`: one letter
/// added, missing, changed or two swapped, or one a prefix of the other.
fn similar(unknown: &str, known: &str) -> bool {
    (unknown.len() >= 3 && (known.starts_with(unknown) || unknown.starts_with(known)))
        || strsim::osa_distance(unknown, known) <= 1
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
                other => self.unknown_key(&top, key, "", other, TOP_KEYS),
            }
        }
    }

    /// A file that is not valid YAML. A tab in the indentation is reported at
    /// its own line: the parser notices it only at the end of the line before.
    fn yaml_error(&mut self, file: &Arc<str>, text: &str, e: &serde_saphyr::Error) {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = clean_yaml_message(&e.without_snippet().to_string());
        if message.contains("tab") {
            let tabs: Vec<usize> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    indent.contains('\t') && !l.trim().is_empty()
                })
                .map(|(i, _)| i + 1)
                .collect();
            if !tabs.is_empty() {
                for n in tabs {
                    let origin = Origin {
                        file: file.clone(),
                        line: n as u32,
                    };
                    self.err(
                        origin,
                        &key_path_at(text, n),
                        "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces",
                    );
                }
                return;
            }
        }
        let message = match col {
            0 => message,
            c => format!("{message} (column {c})"),
        };
        let origin = Origin {
            file: file.clone(),
            line: line as u32,
        };
        self.err(origin, &key_path_at(text, line as usize), message);
    }

    /// The entries of a mapping. `~` (or nothing) is an empty mapping; anything
    /// else is an error. A key given twice is an error, and only the first
    /// one counts.
    fn mapping<'n>(
        &mut self,
        file: &File,
        field: &str,
        node: &'n Spanned<Node>,
        expected: &str,
    ) -> Option<Vec<&'n Entry>> {
        let entries = match &node.value {
            Node::Null => return Some(Vec::new()),
            Node::Map(entries) => entries,
            other => {
                let what = match field.is_empty() {
                    true => "the policy must be",
                    false => "must be",
                };
                self.err(
                    file.at(node),
                    field,
                    format!("{what} a mapping of {expected}, not {}", other.kind()),
                );
                return None;
            }
        };
        let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let (key, _) = entry;
            if !seen.insert(key.value.as_str()) {
                self.err(
                    file.at(key),
                    &join(field, &key.value),
                    format!(
                        "duplicate mapping key: `{}` is given twice in the same place; keep one",
                        key.value
                    ),
                );
                continue;
            }
            out.push(entry);
        }
        Some(out)
    }

    fn unknown_key(
        &mut self,
        file: &File,
        key: &Spanned<String>,
        parent: &str,
        name: &str,
        known: &[&str],
    ) {
        let hint = match known.iter().find(|k| similar(name, k)) {
            Some(k) => format!("; did you mean `{k}`?"),
            None => String::new(),
        };
        self.err(
            file.at(key),
            &join(parent, name),
            format!(
                "unknown field `{name}`, expected one of {}{hint}",
                known.join(", ")
            ),
        );
    }

    /// A single value; `None` when it is empty (not set) or not a scalar
    /// (an error).
    fn scalar<'n>(
        &mut self,
        file: &File,
        field: &str,
        node: &'n Spanned<Node>,
    ) -> Option<(&'n Scalar, Origin)> {
        match &node.value {
            Node::Null => None,
            Node::Scalar(s) => Some((s, file.at(node))),
            other => {
                self.err(
                    file.at(node),
                    field,
                    format!(
                        "expected a single value (a number or a string), not {}",
                        other.kind()
                    ),
                );
                None
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
        self.max.overlay(&p);
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

    /// A list of user or group names.
    fn names(&mut self, file: &File, field: &str, node: &Spanned<Node>) -> Vec<(String, Origin)> {
        let items = match &node.value {
            Node::Null => return Vec::new(),
            Node::Seq(items) => items,
            other => {
                self.err(
                    file.at(node),
                    field,
                    format!(
                        "expected a list of names such as [alice, bob], not {}",
                        other.kind()
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match &item.value {
                Node::Scalar(s @ (Scalar::Str(_) | Scalar::UInt(_))) => {
                    out.push((s.shown(), file.at(item)))
                }
                other => self.err(
                    file.at(item),
                    field,
                    format!("expected a user or group name, not {}", other.kind()),
                ),
            }
        }
        out
    }

    fn capacity_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(file, "capacity", node, "`cpu`, `mem` and `overcommit`")
        else {
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
                other => {
                    self.unknown_key(file, key, "capacity", other, &["cpu", "mem", "overcommit"])
                }
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

    /// `groups:` or `users:`: overrides of `defaults` and `max` per name.
    fn overrides_key(&mut self, file: &File, kind: Overrides, node: &Spanned<Node>) {
        let what = match kind {
            Overrides::Groups => "group names to `defaults:` and `max:`",
            Overrides::Users => "user names to `defaults:` and `max:`",
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
            if let Some(parts) = self.mapping(file, &field, value, "`defaults:` and `max:`") {
                for (pkey, pvalue) in parts {
                    let sub = join(&field, &pkey.value);
                    match pkey.value.as_str() {
                        "defaults" => defaults.overlay(&self.limits(file, &sub, pvalue)),
                        "max" => {
                            max.overlay(&self.limits(file, &sub, pvalue));
                            if let Some((_, o)) = &max.mem_high {
                                self.err(
                                    o.clone(),
                                    &format!("{sub}.mem_high"),
                                    "the soft limit is set under `defaults`; remove it from `max`",
                                );
                            }
                        }
                        other => self.unknown_key(file, pkey, &field, other, &["defaults", "max"]),
                    }
                }
            }
            let target = match kind {
                Overrides::Groups => &mut self.groups,
                Overrides::Users => &mut self.users,
            };
            let entry = target.entry(name).or_default();
            entry.origin.get_or_insert(origin);
            entry.defaults.overlay(&defaults);
            entry.max.overlay(&max);
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

    /// `cpu`, `mem`, `mem_high` and `tasks` under `path` (`defaults`,
    /// `groups.NAME.max`, ...).
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
