//! From YAML files to a [`Policy`]: reading the files, then a builder that
//! takes each file's top-level keys in turn, collects every error with its
//! file, line and field, and checks the fields against each other at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Quantity, ValueError, parse_duration};
use indexmap::IndexMap;
use serde_saphyr::Spanned;

use crate::error::{Origin, PolicyError, PolicyErrors};
use crate::policy::{MemHigh, Override, Partial, Policy};
use crate::raw::{RawFile, RawLimits, RawOvercommit, RawOverride, Scalar};
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
