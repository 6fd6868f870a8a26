//! The keys of issue 15: weights, the memory guarantee, swap, IO limits per
//! device or path, `tiers:`, `bursting:` and `capacity.mem_low`, each read
//! with every mistake reported with its file, line and field.

use std::time::Duration;

use fairshare_proto::units::{
    Bandwidth, Bytes, Ceiling, Iops, Quantity, ValueError, Weight, parse_duration,
};
use serde_saphyr::Spanned;

use super::{Builder, File, join};
use crate::error::Origin;
use crate::fair::{BurstCeiling, Contention, IoTarget, MemLow, Swap, WhenFull};
use crate::policy::{IO_FIELDS, IoPartial, Partial};
use crate::raw::{Node, Scalar};

/// `bursting:` as written so far (later files override single fields).
#[derive(Default)]
pub(super) struct BurstingKeys {
    pub(super) enabled: Option<bool>,
    pub(super) busy_threshold: Option<(f64, Origin)>,
    pub(super) idle_threshold: Option<(f64, Origin)>,
    pub(super) busy_for: Option<(Duration, Origin)>,
    pub(super) idle_for: Option<(Duration, Origin)>,
    pub(super) interval: Option<(Duration, Origin)>,
    pub(super) up_to: Option<BurstCeiling>,
    pub(super) contention: Option<Contention>,
}

pub(super) const BURSTING_KEYS: &[&str] = &[
    "enabled",
    "busy_threshold",
    "idle_threshold",
    "busy_for",
    "idle_for",
    "interval",
    "up_to",
    "contention",
];

/// The shortest and longest sampling interval.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

impl Builder {
    /// One of the fair-share keys of a limits block (`defaults`, `max`,
    /// `groups.NAME.defaults`, ...); `false` when `key` is not one of them.
    pub(super) fn fair_key(
        &mut self,
        file: &File,
        field: &str,
        key: &str,
        value: &Spanned<Node>,
        p: &mut Partial,
    ) -> bool {
        if key == "io" {
            self.io_targets(file, field, value, p);
            return true;
        }
        if !matches!(key, "weight" | "io_weight" | "mem_low" | "swap" | "burst") {
            return false;
        }
        let Some((v, o)) = self.scalar(file, field, value) else {
            return true;
        };
        match key {
            "weight" | "io_weight" => {
                let w = self.quantity::<Weight>(o.clone(), field, v).map(|w| (w, o));
                match key {
                    "weight" => p.weight = w,
                    _ => p.io_weight = w,
                }
            }
            "mem_low" => p.mem_low = self.mem_low(o.clone(), field, v).map(|l| (l, o)),
            "swap" => p.swap = self.swap(o.clone(), field, v).map(|s| (s, o)),
            _ => match v {
                Scalar::Bool(b) => p.burst = Some((*b, o)),
                other => self.err(
                    o,
                    field,
                    format!("`{}` is not true or false", other.shown()),
                ),
            },
        }
        true
    }

    /// `mem_low: 1G`, `mem_low: 25%` (of mem), or `0` (`none`): no
    /// guarantee, to lift one an earlier level gave.
    fn mem_low(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<MemLow> {
        match v {
            Scalar::UInt(0) => return Some(MemLow::Size(Bytes(0))),
            Scalar::Str(s) if matches!(s.trim(), "0" | "none") => {
                return Some(MemLow::Size(Bytes(0)));
            }
            _ => {}
        }
        if let Scalar::Str(s) = v
            && let Some(p) = s.trim().strip_suffix('%')
        {
            return match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Some(MemLow::Percent(p)),
                _ => {
                    self.err(
                        o,
                        field,
                        format!("`{s}` must be a percentage above 0% and at most 100%, e.g. 25%"),
                    );
                    None
                }
            };
        }
        self.quantity::<Bytes>(o, field, v).map(MemLow::Size)
    }

    /// `swap: 0` (or `none`) for no swap, a size, or `max`.
    fn swap(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<Swap> {
        match v {
            Scalar::UInt(0) => return Some(Ceiling::Limit(Bytes(0))),
            Scalar::Str(s) if matches!(s.trim(), "0" | "none") => {
                return Some(Ceiling::Limit(Bytes(0)));
            }
            Scalar::Str(s) if Ceiling::<Bytes>::is_unlimited_word(s) => {
                return Some(Ceiling::Unlimited);
            }
            _ => {}
        }
        self.quantity::<Bytes>(o, field, v).map(Ceiling::Limit)
    }

    /// `io: {/home: {write_bw: 50M}, /dev/sdb: {read_iops: 1000}}`.
    fn io_targets(&mut self, file: &File, field: &str, node: &Spanned<Node>, p: &mut Partial) {
        let Some(entries) = self.mapping(
            file,
            field,
            node,
            "devices or paths to limits such as {/home: {write_bw: 50M}}",
        ) else {
            return;
        };
        for (key, value) in entries {
            let sub = join(field, &key.value);
            let target = match IoTarget::parse(&key.value) {
                Ok(t) => t,
                Err(e) => {
                    self.err(file.at(key), &sub, e);
                    continue;
                }
            };
            let mut io = IoPartial::default();
            let Some(limits) = self.mapping(
                file,
                &sub,
                value,
                "read_bw, write_bw, read_iops and write_iops",
            ) else {
                continue;
            };
            for (lkey, lvalue) in limits {
                let lf = join(&sub, &lkey.value);
                if !IO_FIELDS.contains(&lkey.value.as_str()) {
                    self.unknown_key(file, lkey, &sub, &lkey.value, &IO_FIELDS);
                    continue;
                }
                let Some((v, o)) = self.scalar(file, &lf, lvalue) else {
                    continue;
                };
                match lkey.value.as_str() {
                    "read_bw" => {
                        io.read_bw = self.ceiling::<Bandwidth>(o.clone(), &lf, v).map(|c| (c, o))
                    }
                    "write_bw" => {
                        io.write_bw = self.ceiling::<Bandwidth>(o.clone(), &lf, v).map(|c| (c, o))
                    }
                    "read_iops" => {
                        io.read_iops = self.ceiling::<Iops>(o.clone(), &lf, v).map(|c| (c, o))
                    }
                    _ => io.write_iops = self.ceiling::<Iops>(o.clone(), &lf, v).map(|c| (c, o)),
                }
            }
            let mut single = Partial::default();
            single.io.insert(target, io);
            p.overlay(&single);
        }
    }

    /// A limit, or `max` for none.
    fn ceiling<T: Quantity>(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<Ceiling<T>> {
        if let Scalar::Str(s) = v
            && Ceiling::<T>::is_unlimited_word(s)
        {
            return Some(Ceiling::Unlimited);
        }
        if let Scalar::UInt(n) = v
            && T::from_u64(*n).is_err_and(|e| matches!(e, ValueError::TooSmall { .. }))
            && field.ends_with("_bw")
        {
            self.err(
                o,
                field,
                format!("`{n}` bytes a second is too small for a rate (at least 1K); did you forget the unit, as in 50M?"),
            );
            return None;
        }
        self.quantity::<T>(o, field, v).map(Ceiling::Limit)
    }

    /// `tier: NAME` of a group or user; checked against `tiers:` once every
    /// file is read.
    pub(super) fn tier_name(
        &mut self,
        file: &File,
        field: &str,
        node: &Spanned<Node>,
    ) -> Option<(String, Origin)> {
        let (v, o) = self.scalar(file, field, node)?;
        match v {
            Scalar::Str(s) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => {
                Some((s.trim().to_string(), o))
            }
            other => {
                self.err(
                    o,
                    field,
                    format!(
                        "`{}` is not a tier name; name one of `tiers:`",
                        other.shown()
                    ),
                );
                None
            }
        }
    }

    /// `bursting: {enabled: true, busy_threshold: 90%, ...}`.
    pub(super) fn bursting_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(
            file,
            "bursting",
            node,
            "`enabled`, thresholds and durations",
        ) else {
            return;
        };
        for (key, value) in entries {
            let field = join("bursting", &key.value);
            if !BURSTING_KEYS.contains(&key.value.as_str()) {
                self.unknown_key(file, key, "bursting", &key.value, BURSTING_KEYS);
                continue;
            }
            let Some((v, o)) = self.scalar(file, &field, value) else {
                continue;
            };
            match key.value.as_str() {
                "enabled" => match v {
                    Scalar::Bool(b) => self.bursting.enabled = Some(*b),
                    other => self.err(o, &field, format!("`{}` is not true or false", other.shown())),
                },
                "busy_threshold" | "idle_threshold" => {
                    let Some(f) = self.percent(o.clone(), &field, v) else {
                        continue;
                    };
                    match key.value.as_str() {
                        "busy_threshold" => self.bursting.busy_threshold = Some((f, o)),
                        _ => self.bursting.idle_threshold = Some((f, o)),
                    }
                }
                "busy_for" | "idle_for" | "interval" => {
                    let text = v.shown();
                    let d = match (v, parse_duration(&text)) {
                        (Scalar::Str(_) | Scalar::UInt(_), Ok(d)) => d,
                        (_, Err(e)) => {
                            self.err(o, &field, e.to_string());
                            continue;
                        }
                        _ => {
                            self.err(o, &field, format!("`{text}` is not a duration; expected e.g. 3s or 1m"));
                            continue;
                        }
                    };
                    match key.value.as_str() {
                        "busy_for" => self.bursting.busy_for = Some((d, o)),
                        "idle_for" => self.bursting.idle_for = Some((d, o)),
                        _ => {
                            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                                self.err(o, &field, format!("`{text}` must be between 1s and 60s"));
                                continue;
                            }
                            self.bursting.interval = Some((d, o));
                        }
                    }
                }
                "up_to" => match v.shown().as_str() {
                    "max" => self.bursting.up_to = Some(BurstCeiling::Max),
                    "host" => self.bursting.up_to = Some(BurstCeiling::Host),
                    other => self.err(o, &field, format!("`{other}` is not `max` (each user's max.cpu) or `host` (every CPU)")),
                },
                _ => match v.shown().as_str() {
                    "share" => self.bursting.contention = Some(Contention::Share),
                    "allocation" => self.bursting.contention = Some(Contention::Allocation),
                    other => self.err(o, &field, format!("`{other}` is not `share` (idle CPUs shared by weight) or `allocation` (quotas back to allocations)")),
                },
            }
        }
    }

    /// `90%` as 0.9: above 0%, at most 100%.
    fn percent(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<f64> {
        let text = v.shown();
        match text
            .trim()
            .strip_suffix('%')
            .map(|p| p.trim().parse::<f64>())
        {
            Some(Ok(p)) if p > 0.0 && p <= 100.0 => Some(p / 100.0),
            _ => {
                self.err(o, field, format!("`{text}` must be a percentage of the host's CPUs above 0% and at most 100%, e.g. 90%"));
                None
            }
        }
    }

    /// `capacity.mem_low: 50%`, or `{total: 64G, when_full: first_come}`.
    pub(super) fn guarantees_key(&mut self, file: &File, field: &str, node: &Spanned<Node>) {
        if let Node::Scalar(v) = &node.value {
            let o = file.at(node);
            self.guarantee_total(o, field, v);
            return;
        }
        let Some(entries) = self.mapping(file, field, node, "`total` and `when_full`") else {
            return;
        };
        for (key, value) in entries {
            let sub = join(field, &key.value);
            let Some((v, o)) = (match key.value.as_str() {
                "total" | "when_full" => self.scalar(file, &sub, value),
                other => {
                    self.unknown_key(file, key, field, other, &["total", "when_full"]);
                    None
                }
            }) else {
                continue;
            };
            match key.value.as_str() {
                "total" => self.guarantee_total(o, &sub, v),
                _ => match v.shown().as_str() {
                    "scale" => self.guarantees.1 = Some(WhenFull::Scale),
                    "first_come" => self.guarantees.1 = Some(WhenFull::FirstCome),
                    other => self.err(o, &sub, format!("`{other}` is not `scale` (every guarantee shrinks in proportion) or `first_come` (granted in login order)")),
                },
            }
        }
    }

    fn guarantee_total(&mut self, o: Origin, field: &str, v: &Scalar) {
        if let Some(t) = self.mem_low(o, field, v) {
            self.guarantees.0 = Some(t);
        }
    }
}
