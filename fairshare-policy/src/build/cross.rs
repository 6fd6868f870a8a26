//! The checks across fields and files, once every file is read: the
//! required defaults, defaults within max and the soft limit below the hard
//! one, for the base and for every override on top of it.

use crate::error::{Origin, PolicyErrors};
use crate::policy::{MemHigh, Override, Partial, Policy};
use crate::{DEFAULT_OVERCOMMIT_CPU, DEFAULT_OVERCOMMIT_MEM, DEFAULT_UID_BELOW};

use super::Builder;

impl Builder {
    /// Cross-field checks, then the finished policy.
    pub(super) fn finish(mut self, files: Vec<&str>) -> Result<Policy, PolicyErrors> {
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
            notices: self.notices.unwrap_or_default(),
        })
    }

    /// Defaults must fit within max, and the soft limit below the hard one.
    /// `over` is the override being checked on top of the base (`None` for
    /// the base itself); errors point at the field the override set.
    pub(super) fn check_pair(&mut self, d: &Partial, m: &Partial, over: Option<(&str, &Override)>) {
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
