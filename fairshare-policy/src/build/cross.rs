//! The checks across fields and files, once every file is read: the
//! required defaults, defaults within max and the soft limit below the hard
//! one, for the base and for every override on top of it.

use crate::error::{Origin, PolicyErrors};
use fairshare_proto::units::{Ceiling, Weight};

use crate::fair::{Bursting, Guarantees, MemLow};
use crate::policy::{IO_FIELDS, MemHigh, Override, Partial, Policy};
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
        self.check_tier_names();
        if self.errors.is_empty() {
            let (d, m) = (self.defaults.clone(), self.max.clone());
            self.check_pair(&d, &m, None);
            for (name, t) in self.tiers.clone() {
                let (mut dd, mut mm) = (d.clone(), m.clone());
                dd.overlay(&t.defaults);
                mm.overlay(&t.max);
                self.check_pair(&dd, &mm, Some((&format!("tiers.{name}."), &t)));
            }
            for (kind, map) in [
                ("groups", self.groups.clone()),
                ("users", self.users.clone()),
            ] {
                for (name, o) in map {
                    let (mut dd, mut mm) = (d.clone(), m.clone());
                    // a group's or user's own values apply on top of its tier
                    if let Some((t, _)) = &o.tier
                        && let Some(t) = self.tiers.get(t)
                    {
                        dd.overlay(&t.defaults);
                        mm.overlay(&t.max);
                    }
                    dd.overlay(&o.defaults);
                    mm.overlay(&o.max);
                    self.check_pair(&dd, &mm, Some((&format!("{kind}.{name}."), &o)));
                }
            }
        }
        let bursting = self.bursting_checked();
        let guarantees = Guarantees {
            total: self
                .guarantees
                .0
                .unwrap_or(crate::fair::DEFAULT_MEM_LOW_TOTAL),
            when_full: self.guarantees.1.unwrap_or(crate::fair::WhenFull::Scale),
        };
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
            tiers: self.tiers,
            bursting,
            guarantees,
            notices: self.notices.unwrap_or_default(),
        })
    }

    /// Every `tier:` names a tier of `tiers:` (in any file).
    fn check_tier_names(&mut self) {
        let known: Vec<String> = self.tiers.keys().cloned().collect();
        let mut bad = Vec::new();
        for (kind, map) in [("groups", &self.groups), ("users", &self.users)] {
            for (name, o) in map {
                if let Some((t, origin)) = &o.tier
                    && !known.contains(t)
                {
                    let list = match known.is_empty() {
                        true => "the policy has no `tiers:`; define it, e.g. `tiers: {batch: {defaults: {weight: 50}}}`".to_string(),
                        false => format!("the policy's tiers are {}", known.join(", ")),
                    };
                    bad.push((
                        origin.clone(),
                        format!("{kind}.{name}.tier"),
                        format!("unknown tier `{t}`; {list}"),
                    ));
                }
            }
        }
        for (o, f, m) in bad {
            self.err(o, &f, m);
        }
    }

    /// `bursting:` with its defaults, the thresholds and durations checked
    /// against each other.
    fn bursting_checked(&mut self) -> Bursting {
        let d = Bursting::default();
        let k = &self.bursting;
        let busy = k.busy_threshold.clone();
        let idle = k.idle_threshold.clone();
        let b = Bursting {
            enabled: k.enabled.unwrap_or(d.enabled),
            busy_threshold: busy.as_ref().map_or(d.busy_threshold, |v| v.0),
            idle_threshold: idle.as_ref().map_or(d.idle_threshold, |v| v.0),
            busy_for: k.busy_for.as_ref().map_or(d.busy_for, |v| v.0),
            idle_for: k.idle_for.as_ref().map_or(d.idle_for, |v| v.0),
            interval: k.interval.as_ref().map_or(d.interval, |v| v.0),
            up_to: k.up_to.unwrap_or(d.up_to),
            contention: k.contention.unwrap_or(d.contention),
        };
        if b.idle_threshold >= b.busy_threshold {
            let (origin, field) = match (idle, busy) {
                (Some((_, o)), _) => (o, "bursting.idle_threshold"),
                (None, Some((_, o))) => (o, "bursting.busy_threshold"),
                (None, None) => return b,
            };
            self.err(
                origin,
                field,
                format!(
                    "idle_threshold {}% must be below busy_threshold {}% (the gap keeps quotas from flapping)",
                    b.idle_threshold * 100.0,
                    b.busy_threshold * 100.0
                ),
            );
        }
        let k = &self.bursting;
        let mut late = Vec::new();
        for (what, d) in [("busy_for", &k.busy_for), ("idle_for", &k.idle_for)] {
            if let Some((v, o)) = d
                && *v < b.interval
            {
                late.push((o.clone(), format!("bursting.{what}"), format!(
                    "{} is shorter than the sampling interval {}; make it at least one interval",
                    fairshare_proto::units::format_duration(*v),
                    fairshare_proto::units::format_duration(b.interval)
                )));
            }
        }
        for (o, f, m) in late {
            self.err(o, &f, m);
        }
        b
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
        check(
            "weight",
            pair!(weight),
            sets(|p| p.weight.is_some(), |o| &o.defaults),
            sets(|p| p.weight.is_some(), |o| &o.max),
        );
        check(
            "io_weight",
            pair!(io_weight),
            sets(|p| p.io_weight.is_some(), |o| &o.defaults),
            sets(|p| p.io_weight.is_some(), |o| &o.max),
        );
        check(
            "swap",
            pair!(swap),
            sets(|p| p.swap.is_some(), |o| &o.defaults),
            sets(|p| p.swap.is_some(), |o| &o.max),
        );
        // the guarantee, each side at its own hard limit
        let low = match (&d.mem_low, &m.mem_low) {
            (Some((dl, dorig)), Some((ml, morig))) => {
                let dmem = d.mem.as_ref().map(|v| v.0);
                let mmem = m.mem.as_ref().map(|v| v.0).or(dmem);
                match (dmem, mmem) {
                    (Some(dm), Some(mm)) if dl.at(dm) > ml.at(mm) => {
                        Some((dl.to_string(), ml.to_string(), dorig, morig))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        check(
            "mem_low",
            low,
            sets(|p| p.mem_low.is_some() || p.mem.is_some(), |o| &o.defaults),
            sets(|p| p.mem_low.is_some() || p.mem.is_some(), |o| &o.max),
        );
        // the same for every IO limit of every target both sides name
        for (target, dio) in &d.io {
            let Some(mio) = m.io.get(target) else {
                continue;
            };
            for f in IO_FIELDS {
                let larger = match f {
                    "read_bw" => {
                        matches!((&dio.read_bw, &mio.read_bw), (Some(a), Some(b)) if a.0 > b.0)
                    }
                    "write_bw" => {
                        matches!((&dio.write_bw, &mio.write_bw), (Some(a), Some(b)) if a.0 > b.0)
                    }
                    "read_iops" => {
                        matches!((&dio.read_iops, &mio.read_iops), (Some(a), Some(b)) if a.0 > b.0)
                    }
                    _ => {
                        matches!((&dio.write_iops, &mio.write_iops), (Some(a), Some(b)) if a.0 > b.0)
                    }
                };
                if !larger {
                    continue;
                }
                let (Some((dv, dorig)), Some((mv, morig))) = (dio.shown(f), mio.shown(f)) else {
                    continue;
                };
                let io_sets = |part: fn(&Override) -> &Partial| {
                    over.is_some_and(|(_, o)| {
                        part(o).io.get(target).is_some_and(|p| p.shown(f).is_some())
                    })
                };
                check(
                    &format!("io.{target}.{f}"),
                    Some((dv, mv, &dorig, &morig)),
                    io_sets(|o| &o.defaults),
                    io_sets(|o| &o.max),
                );
            }
        }
        // a maximum below what an unset default means (weight 100, no
        // guarantee, no swap or IO limit): the default would be above it
        let mut implied: Vec<(String, String, Origin, &str)> = Vec::new();
        if d.weight.is_none()
            && let Some((mv, mo)) = &m.weight
            && *mv < Weight::DEFAULT
        {
            implied.push((
                "weight".into(),
                mv.to_string(),
                mo.clone(),
                "100, systemd's",
            ));
        }
        if d.io_weight.is_none()
            && let Some((mv, mo)) = &m.io_weight
            && *mv < Weight::DEFAULT
        {
            implied.push((
                "io_weight".into(),
                mv.to_string(),
                mo.clone(),
                "100, systemd's",
            ));
        }
        if d.swap.is_none()
            && let Some((mv @ Ceiling::Limit(_), mo)) = &m.swap
        {
            implied.push((
                "swap".into(),
                crate::fair::show_swap(mv),
                mo.clone(),
                "no limit",
            ));
        }
        for (target, mio) in &m.io {
            for f in IO_FIELDS {
                let unset = d.io.get(target).is_none_or(|dio| dio.shown(f).is_none());
                if let Some((mv, mo)) = mio.shown(f)
                    && unset
                    && mv != "max"
                {
                    implied.push((format!("io.{target}.{f}"), mv, mo, "no limit"));
                }
            }
        }
        for (field, mv, mo, default) in implied {
            let sets_max =
                over.is_none_or(|(_, o)| o.max.fair_settings().iter().any(|(f, _)| *f == field));
            if !sets_max {
                continue;
            }
            self.err(
                mo,
                &format!("{prefix}max.{field}"),
                format!(
                    "max {field} {mv} is below the default ({default}, as defaults.{field} is not set); set defaults.{field} too, at most {mv}"
                ),
            );
        }
        if let (Some((MemLow::Size(l), lorig)), Some((mem, morig))) = (&d.mem_low, &d.mem)
            && l > mem
            && (over.is_none() || sets(|p| p.mem.is_some() || p.mem_low.is_some(), |o| &o.defaults))
        {
            let (origin, field) =
                match sets(|p| p.mem_low.is_some(), |o| &o.defaults) || over.is_none() {
                    true => (lorig.clone(), format!("{prefix}defaults.mem_low")),
                    false => (morig.clone(), format!("{prefix}defaults.mem")),
                };
            self.err(
                origin,
                &field,
                format!(
                    "guarantee {l} ({lorig}) is above the hard limit mem {mem} ({morig}); lower it, or give mem_low as a percentage of mem such as 25%"
                ),
            );
        }
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
