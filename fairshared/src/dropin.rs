//! fairshare's systemd drop-ins for user slices.
//!
//! The policy default for ordinary users is a drop-in that systemd itself
//! applies to every `user-UID.slice` as it starts, so that no login is ever
//! without limits, whether fairshared runs or not (issue 12, DESIGN.md
//! decision 6). This module is the pure, file-level half of that: what the
//! files say, where they go, how they are written and removed, and how
//! systemd combines them with everybody else's. It makes no D-Bus call.
//!
//! Every file fairshare writes is named [`NAME`] (`40-fairshare.conf`):
//!
//! * `/etc/systemd/system/user-.slice.d/40-fairshare.conf`: the policy
//!   default, for every user slice.
//! * `/etc/systemd/system/user-UID.slice.d/40-fairshare.conf`: one user's own
//!   default where it differs (a group or user override, written in full), or
//!   a comment-only file for a user who gets systemd's own defaults (root,
//!   nobody, exempt users). A unit's drop-in replaces a `user-.slice.d` one of
//!   the same name entirely.
//!
//! How systemd 252 combines drop-ins (measured on the test hosts; the figures
//! are in docs/design/defaults-from-systemd.md):
//!
//! * Of several files with the same name, the one in the directory that comes
//!   first wins: search paths in [`SEARCH_PATH`] order, and within one search
//!   path the unit's own `user-UID.slice.d` before the `user-.slice.d` prefix
//!   before the `slice.d` type directory. So a same-named file in
//!   `/etc/systemd/system/user-UID.slice.d/` masks ours in
//!   `/etc/systemd/system/user-.slice.d/`, while one in
//!   `/run/systemd/system/user-UID.slice.d/` does not.
//! * Files with different names apply in name order, whatever their
//!   directory: `10-defaults.conf` (systemd's `TasksMax=33%`), then ours, then
//!   the `50-*.conf` files `SetUnitProperties` writes into
//!   `/run/systemd/system.control/user-UID.slice.d/` (resizes, leases, root's
//!   sets), which therefore win over the default.
//! * A new or changed file takes effect for a slice that starts later without
//!   `systemctl daemon-reload`, but not for a slice already running.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fairshare_proto::wire::Limits;

/// The name of every drop-in fairshare writes. It sorts after systemd's own
/// `10-defaults.conf` (so the policy's `TasksMax` wins over systemd's 33%)
/// and before the `50-*.conf` files of `SetUnitProperties` (so a resize wins
/// over the default).
pub const NAME: &str = "40-fairshare.conf";

/// The first line of every file fairshare writes: how its files are told
/// from an admin's.
pub const HEADER: &str = "# Written by fairshared";

/// systemd 252's unit search path for the system manager, highest priority
/// first (`systemd-analyze unit-paths`).
pub const SEARCH_PATH: &[&str] = &[
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
];

/// Where `SetUnitProperties(runtime=true)` writes its drop-ins.
const RUNTIME_CONTROL: &str = "/run/systemd/system.control";
/// Where `SetUnitProperties(runtime=false)` writes them: an admin's
/// `systemctl set-property` without `--runtime`. fairshare never writes here.
const PERSISTENT_CONTROL: &str = "/etc/systemd/system.control";
/// Where fairshare's own drop-ins go.
const CONFIG: &str = "/etc/systemd/system";

/// Files larger than this are not drop-ins fairshare reads (a few lines).
const MAX_FILE: u64 = 64 * 1024;

// ---------------------------------------------------------------- keys

/// A slice setting fairshare manages. Adding one is a variant here, a
/// `Spec` constant, an arm in [`Key::spec`] and an entry in `SPECS`. The
/// fair-share keys of issue 15 (CPUWeight, IOWeight, MemoryLow,
/// MemorySwapMax) follow the four ceilings, then the IO limits, whose value is
/// a list of `(device or path, value)` per disk ([`Kind::Devices`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    CpuQuota,
    MemoryMax,
    MemoryHigh,
    TasksMax,
    CpuWeight,
    IoWeight,
    MemoryLow,
    MemorySwapMax,
    IoReadBandwidthMax,
    IoWriteBandwidthMax,
    IoReadIopsMax,
    IoWriteIopsMax,
}

/// How a key's values are written and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `CPUQuota=`: a percentage of one CPU, or empty for no quota. Held as
    /// µs of CPU time per second (`CPUQuotaPerSecUSec`).
    Quota,
    /// A size in bytes (K, M, G, T, P, E: powers of 1024), a percentage of
    /// the host's memory, or `infinity`.
    Size,
    /// A count, a percentage of the host's task limit, or `infinity`.
    Count,
    /// `CPUWeight=`, `IOWeight=`: 1 to 10000 (systemd's `idle` is not a
    /// value fairshare writes, and is not read as one).
    Weight,
    /// `IOReadBandwidthMax=` and the other IO limits: one `PATH VALUE` line
    /// per disk, each adding to the list (an empty assignment empties it).
    /// The value held is a list id of [`devices`]: `0` is the empty list,
    /// systemd's default. On D-Bus `a(st)`.
    Devices,
}

/// Everything about one key: its names in unit files, on D-Bus and in the
/// control drop-ins `SetUnitProperties` writes.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub key: Key,
    /// The unit-file setting, in `[Slice]`.
    pub name: &'static str,
    pub kind: Kind,
    /// The D-Bus property for an absolute value (`t`).
    pub property: &'static str,
    /// The D-Bus property for a share of the host (`u`, scaled to
    /// `u32::MAX`), if the key takes one.
    pub scale_property: Option<&'static str>,
    /// The files `SetUnitProperties(runtime=true)` writes for this key into
    /// `/run/systemd/system.control/user-UID.slice.d/` (one per property).
    pub control_files: &'static [&'static str],
    /// The policy field that sets it, for messages.
    pub policy_field: &'static str,
    /// The D-Bus value of "not set": systemd's built-in default
    /// (`u64::MAX`, infinity or an unset weight; `0` for `MemoryLow`).
    pub unset: u64,
    /// Whether `0` is a value (no swap, no guarantee).
    pub zero: bool,
}

const CPU_QUOTA: Spec = Spec {
    key: Key::CpuQuota,
    name: "CPUQuota",
    kind: Kind::Quota,
    property: "CPUQuotaPerSecUSec",
    scale_property: None,
    control_files: &["50-CPUQuota.conf"],
    policy_field: "defaults.cpu",
    unset: u64::MAX,
    zero: false,
};
const MEMORY_MAX: Spec = Spec {
    key: Key::MemoryMax,
    name: "MemoryMax",
    kind: Kind::Size,
    property: "MemoryMax",
    scale_property: Some("MemoryMaxScale"),
    control_files: &["50-MemoryMax.conf", "50-MemoryMaxScale.conf"],
    policy_field: "defaults.mem",
    unset: u64::MAX,
    zero: false,
};
const MEMORY_HIGH: Spec = Spec {
    key: Key::MemoryHigh,
    name: "MemoryHigh",
    kind: Kind::Size,
    property: "MemoryHigh",
    scale_property: Some("MemoryHighScale"),
    control_files: &["50-MemoryHigh.conf", "50-MemoryHighScale.conf"],
    policy_field: "defaults.mem_high",
    unset: u64::MAX,
    zero: false,
};
const TASKS_MAX: Spec = Spec {
    key: Key::TasksMax,
    name: "TasksMax",
    kind: Kind::Count,
    property: "TasksMax",
    scale_property: Some("TasksMaxScale"),
    control_files: &["50-TasksMax.conf", "50-TasksMaxScale.conf"],
    policy_field: "defaults.tasks",
    unset: u64::MAX,
    zero: false,
};
const CPU_WEIGHT: Spec = Spec {
    key: Key::CpuWeight,
    name: "CPUWeight",
    kind: Kind::Weight,
    property: "CPUWeight",
    scale_property: None,
    control_files: &["50-CPUWeight.conf"],
    policy_field: "defaults.weight",
    unset: u64::MAX,
    zero: false,
};
const IO_WEIGHT: Spec = Spec {
    key: Key::IoWeight,
    name: "IOWeight",
    kind: Kind::Weight,
    property: "IOWeight",
    scale_property: None,
    control_files: &["50-IOWeight.conf"],
    policy_field: "defaults.io_weight",
    unset: u64::MAX,
    zero: false,
};
const MEMORY_LOW: Spec = Spec {
    key: Key::MemoryLow,
    name: "MemoryLow",
    kind: Kind::Size,
    property: "MemoryLow",
    scale_property: Some("MemoryLowScale"),
    control_files: &["50-MemoryLow.conf", "50-MemoryLowScale.conf"],
    policy_field: "defaults.mem_low",
    unset: 0,
    zero: true,
};
const MEMORY_SWAP_MAX: Spec = Spec {
    key: Key::MemorySwapMax,
    name: "MemorySwapMax",
    kind: Kind::Size,
    property: "MemorySwapMax",
    scale_property: Some("MemorySwapMaxScale"),
    control_files: &["50-MemorySwapMax.conf", "50-MemorySwapMaxScale.conf"],
    policy_field: "defaults.swap",
    unset: u64::MAX,
    zero: true,
};
const fn io_spec(key: Key, name: &'static str, files: &'static [&'static str]) -> Spec {
    Spec {
        key,
        name,
        kind: Kind::Devices,
        property: name,
        scale_property: None,
        control_files: files,
        policy_field: "defaults.io",
        unset: 0,
        zero: false,
    }
}
const IO_READ_BW: Spec = io_spec(
    Key::IoReadBandwidthMax,
    "IOReadBandwidthMax",
    &["50-IOReadBandwidthMax.conf"],
);
const IO_WRITE_BW: Spec = io_spec(
    Key::IoWriteBandwidthMax,
    "IOWriteBandwidthMax",
    &["50-IOWriteBandwidthMax.conf"],
);
const IO_READ_IOPS: Spec = io_spec(
    Key::IoReadIopsMax,
    "IOReadIOPSMax",
    &["50-IOReadIOPSMax.conf"],
);
const IO_WRITE_IOPS: Spec = io_spec(
    Key::IoWriteIopsMax,
    "IOWriteIOPSMax",
    &["50-IOWriteIOPSMax.conf"],
);
const SPECS: &[Spec] = &[
    CPU_QUOTA,
    MEMORY_MAX,
    MEMORY_HIGH,
    TASKS_MAX,
    CPU_WEIGHT,
    IO_WEIGHT,
    MEMORY_LOW,
    MEMORY_SWAP_MAX,
    IO_READ_BW,
    IO_WRITE_BW,
    IO_READ_IOPS,
    IO_WRITE_IOPS,
];

impl Key {
    /// Every key fairshare manages, in the order files list them.
    pub const ALL: &[Key] = &[
        Key::CpuQuota,
        Key::MemoryMax,
        Key::MemoryHigh,
        Key::TasksMax,
        Key::CpuWeight,
        Key::IoWeight,
        Key::MemoryLow,
        Key::MemorySwapMax,
        Key::IoReadBandwidthMax,
        Key::IoWriteBandwidthMax,
        Key::IoReadIopsMax,
        Key::IoWriteIopsMax,
    ];

    pub fn spec(self) -> &'static Spec {
        match self {
            Key::CpuQuota => &CPU_QUOTA,
            Key::MemoryMax => &MEMORY_MAX,
            Key::MemoryHigh => &MEMORY_HIGH,
            Key::TasksMax => &TASKS_MAX,
            Key::CpuWeight => &CPU_WEIGHT,
            Key::IoWeight => &IO_WEIGHT,
            Key::MemoryLow => &MEMORY_LOW,
            Key::MemorySwapMax => &MEMORY_SWAP_MAX,
            Key::IoReadBandwidthMax => &IO_READ_BW,
            Key::IoWriteBandwidthMax => &IO_WRITE_BW,
            Key::IoReadIopsMax => &IO_READ_IOPS,
            Key::IoWriteIopsMax => &IO_WRITE_IOPS,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The key a `[Slice]` setting name stands for, if fairshare manages it.
    pub fn from_name(name: &str) -> Option<Key> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.key)
    }
}

/// One value per key, in [`Key::ALL`] order.
pub fn per_key(f: impl Fn(Key) -> u64) -> [u64; Key::ALL.len()] {
    let mut out = [0; Key::ALL.len()];
    for (o, k) in out.iter_mut().zip(Key::ALL) {
        *o = f(*k);
    }
    out
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------- values

/// One value of a key, as systemd understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// No limit: `infinity`, or for `CPUQuota=` the empty value.
    Infinity,
    /// An absolute amount in the key's D-Bus unit: bytes, tasks, or µs of
    /// CPU time per second.
    Amount(u64),
    /// A share of the host, in hundredths of a percent (`TasksMax=33%` is
    /// 3300): of its memory for sizes, of its task limit for counts.
    Share(u32),
}

/// Why a value is not one systemd would accept; systemd logs such a line and
/// ignores it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {key} value")]
pub struct BadValue {
    pub key: Key,
    pub value: String,
}

impl Value {
    /// Parses a value the way systemd 252 does for this key. `Ok(None)` is
    /// the empty assignment, which puts the key back to systemd's built-in
    /// default (no limit, for every key fairshare manages on a slice).
    pub fn parse(key: Key, raw: &str) -> Result<Option<Value>, BadValue> {
        let raw = raw.trim();
        let bad = || BadValue {
            key,
            value: raw.to_string(),
        };
        if raw.is_empty() {
            return Ok(None);
        }
        match key.spec().kind {
            Kind::Quota => {
                let p = parse_share(raw).ok_or_else(bad)?;
                if p == 0 {
                    return Err(bad());
                }
                // 1% of one CPU is 10 ms per second.
                Ok(Some(Value::Amount(u64::from(p) * 100)))
            }
            Kind::Weight => match raw.parse::<u64>() {
                Ok(n @ 1..=10_000) => Ok(Some(Value::Amount(n))),
                _ => Err(bad()),
            },
            Kind::Devices => {
                let mut words = raw.split_whitespace();
                let (Some(path), Some(value), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(bad());
                };
                if !path.starts_with('/') {
                    return Err(bad());
                }
                let n = match value {
                    "infinity" | "max" => u64::MAX,
                    v => parse_rate(v).filter(|n| *n > 0).ok_or_else(bad)?,
                };
                Ok(Some(Value::Amount(devices::intern(vec![(
                    path.to_string(),
                    n,
                )]))))
            }
            Kind::Size | Kind::Count => {
                if raw == "infinity" {
                    return Ok(Some(Value::Infinity));
                }
                if let Some(p) = parse_share(raw) {
                    // A share of the host: more than all of it is refused.
                    return match p {
                        1..=10_000 => Ok(Some(Value::Share(p))),
                        _ => Err(bad()),
                    };
                }
                let n = match key.spec().kind {
                    Kind::Size => parse_size(raw),
                    _ => raw.parse::<u64>().ok(),
                }
                .ok_or_else(bad)?;
                match n {
                    0 if key.spec().zero => Ok(Some(Value::Amount(0))),
                    0 | u64::MAX => Err(bad()),
                    n => Ok(Some(Value::Amount(n))),
                }
            }
        }
    }

    /// The value as it is written after `Key=` in a unit file.
    pub fn render(self, key: Key) -> String {
        match (key.spec().kind, self) {
            (Kind::Quota, Value::Infinity) => String::new(),
            (Kind::Quota, Value::Amount(usec)) => {
                // µs per second → hundredths of a percent; systemd reads two
                // decimals, and a CPU count has three (0.1%).
                fmt_share(usec / 100)
            }
            (Kind::Quota, Value::Share(p)) => fmt_share(u64::from(p)),
            // never written: an unset weight is the empty assignment
            (Kind::Weight, Value::Infinity) => String::new(),
            // for people: the lines are `render_lines`
            (Kind::Devices, Value::Amount(id)) => devices::get(id)
                .iter()
                .map(|(p, v)| format!("{p} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            (_, Value::Infinity) => "infinity".into(),
            (_, Value::Amount(n)) => n.to_string(),
            (_, Value::Share(p)) => fmt_share(u64::from(p)),
        }
    }
}

impl Value {
    /// The `Key=value` lines that set this value in a unit file: one, or for
    /// an IO limit one per disk (none for the empty list).
    pub fn render_lines(self, key: Key) -> Vec<String> {
        match (key.spec().kind, self) {
            (Kind::Devices, Value::Amount(id)) => devices::get(id)
                .iter()
                .map(|(p, v)| format!("{}={p} {v}", key.name()))
                .collect(),
            (Kind::Devices, _) => Vec::new(),
            _ => vec![format!("{}={}", key.name(), self.render(key))],
        }
    }
}

/// A key's value after one more assignment of it in a file: the new value,
/// except for an IO limit, where a `PATH VALUE` line adds to (or, for a disk
/// already listed, replaces in) the list so far, and `infinity` takes a disk
/// out of it. `None`: systemd's default (an empty assignment resets).
pub fn accumulate(key: Key, old: Option<Value>, new: Option<Value>) -> Option<Value> {
    if key.spec().kind != Kind::Devices {
        return new;
    }
    let Some(Value::Amount(new)) = new else {
        return None;
    };
    let mut list: Vec<(String, u64)> = match old {
        Some(Value::Amount(id)) => devices::get(id).to_vec(),
        _ => Vec::new(),
    };
    list.extend(devices::get(new).iter().cloned());
    let list = devices::merged(list);
    normal(
        key,
        Some(Value::Amount(devices::intern(
            list.into_iter().filter(|(_, v)| *v != u64::MAX).collect(),
        ))),
    )
}

/// The lists of `(device or path, value)` behind the values of the IO keys
/// ([`Kind::Devices`]). A [`Value`] is a small copyable thing compared with
/// `==`; a list is held here once and a value names it by a number (`0`: the
/// empty list), so that equal lists have equal numbers. The lists come from
/// the policy, fairshare's files and systemd's answers: a handful per
/// policy, never from a user's request.
pub mod devices {
    use std::sync::{Arc, Mutex, PoisonError};

    type List = Arc<[(String, u64)]>;

    /// Every list seen, the list of number `n` at `n - 1`.
    static LISTS: Mutex<Vec<List>> = Mutex::new(Vec::new());

    /// One entry per device, a later one replacing an earlier one (as
    /// systemd applies them), in path order (systemd answers in its own).
    pub fn merged(list: Vec<(String, u64)>) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (p, v) in list {
            match out.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 = v,
                None => out.push((p, v)),
            }
        }
        out.sort();
        out
    }

    /// The number of `list` (merged first).
    pub fn intern(list: Vec<(String, u64)>) -> u64 {
        let list = merged(list);
        if list.is_empty() {
            return 0;
        }
        let mut all = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = all.iter().position(|l| **l == *list) {
            return i as u64 + 1;
        }
        all.push(list.into());
        all.len() as u64
    }

    /// The list of number `id` (empty for `0` or a number never given).
    pub fn get(id: u64) -> List {
        let all = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| all.get(i).cloned())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }
}

/// A rate as systemd reads an IO limit (`parse_size(…, 1000)`): a number
/// with an optional K, M, G, T, P or E suffix, powers of 1000.
fn parse_rate(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" | "B" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `33%`, `12.5%`, `5‰`, `3‱` → hundredths of a percent.
fn parse_share(s: &str) -> Option<u32> {
    let (num, per) = if let Some(n) = s.strip_suffix('%') {
        (n, 100)
    } else if let Some(n) = s.strip_suffix('‰') {
        (n, 10)
    } else if let Some(n) = s.strip_suffix('‱') {
        (n, 1)
    } else {
        return None;
    };
    let num = num.trim_end();
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // % takes two decimals, ‰ one, ‱ none.
    let places = match per {
        100 => 2,
        10 => 1,
        _ => 0,
    };
    if frac.len() > places || (num.contains('.') && frac.is_empty()) {
        return None;
    }
    let mut v: u64 = whole.parse().ok()?;
    for i in 0..places {
        let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    u32::try_from(v).ok()
}

/// Hundredths of a percent → `150%`, `12.5%`, `0.25%`.
fn fmt_share(p: u64) -> String {
    let (whole, frac) = (p / 100, p % 100);
    match frac {
        0 => format!("{whole}%"),
        f if f % 10 == 0 => format!("{whole}.{}%", f / 10),
        f => format!("{whole}.{f:02}%"),
    }
}

/// A size as systemd's `parse_size(…, 1024)` reads it: a number with an
/// optional fraction and an optional B, K, M, G, T, P or E suffix.
fn parse_size(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let shift = match suffix.trim_start() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return None,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut v = whole.checked_mul(1u64 << shift)?;
    if !frac.is_empty() {
        // Exact enough: at most 18 digits of fraction, rounded down.
        let digits = &frac[..frac.len().min(18)];
        let f: u128 = digits.parse().ok()?;
        let scale = 10u128.pow(digits.len() as u32);
        let add = (f * (1u128 << shift)) / scale;
        v = v.checked_add(u64::try_from(add).ok()?)?;
    }
    Some(v)
}

/// A value as the model holds it: `None` for systemd's built-in default,
/// however it is written (`infinity`, an empty assignment, or the default
/// amount itself, as `MemoryLow=0`).
pub fn normal(key: Key, v: Option<Value>) -> Option<Value> {
    match v {
        None | Some(Value::Infinity) => None,
        Some(Value::Amount(n)) if n == key.spec().unset => None,
        v => v,
    }
}

/// A value to send with `SetUnitProperties`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    U64(u64),
    U32(u32),
    /// An IO limit's list ([`devices`]; `0`: empty, systemd's default). Sent
    /// as an empty `a(st)`, which resets the kind on every disk, then the
    /// list: systemd only adds to or changes the disks a list names.
    Devices(u64),
}

/// The D-Bus property and value that put `key` to `value` on a running slice
/// (`None`: systemd's built-in default, no limit). A share becomes the
/// `…Scale` property, scaled the way systemd scales a percentage from a unit
/// file, so the slice ends up exactly as a `daemon-reload` would leave it.
///
/// systemd 252 writes a wrong percentage into the control drop-in for
/// `TasksMaxScale` (33% becomes `TasksMax=3.4%`; systemd/systemd#41009). The
/// value in force is right; remove the control files after the call (see
/// [`Layout::remove_control_files`]) so that a later reload cannot read the
/// wrong one.
pub fn property(key: Key, value: Option<Value>) -> (&'static str, PropertyValue) {
    let spec = key.spec();
    if spec.kind == Kind::Devices {
        let id = match value {
            Some(Value::Amount(id)) => id,
            _ => 0,
        };
        return (spec.property, PropertyValue::Devices(id));
    }
    match value {
        None => (spec.property, PropertyValue::U64(spec.unset)),
        Some(Value::Infinity) => (spec.property, PropertyValue::U64(u64::MAX)),
        Some(Value::Amount(n)) => (spec.property, PropertyValue::U64(n)),
        Some(Value::Share(p)) => match spec.scale_property {
            Some(scale) => (
                scale,
                PropertyValue::U32(
                    u32::try_from(u64::from(p.min(10_000)) * u64::from(u32::MAX) / 10_000)
                        .unwrap_or(u32::MAX),
                ),
            ),
            // A quota held as a share: one CPU is 1 000 000 µs per second.
            None => (spec.property, PropertyValue::U64(u64::from(p) * 100)),
        },
    }
}

// ---------------------------------------------------------------- settings

/// Values for some keys: what one fairshare drop-in says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings(BTreeMap<Key, Value>);

impl Settings {
    /// The drop-in for a user's default limits. A soft memory limit the
    /// policy does not set is left out, so systemd's own value (none) applies.
    pub fn from_limits(limits: &Limits) -> Settings {
        let mut s = BTreeMap::new();
        s.insert(
            Key::CpuQuota,
            Value::Amount(limits.cpu.quota_usec_per_sec()),
        );
        s.insert(Key::MemoryMax, Value::Amount(limits.mem.get()));
        if let Some(h) = limits.mem_high {
            s.insert(Key::MemoryHigh, Value::Amount(h.get()));
        }
        s.insert(Key::TasksMax, Value::Amount(limits.tasks.get()));
        // The fair-share settings only where the policy sets them, so that
        // systemd's own defaults (weight 100, no guarantee, swap unlimited)
        // apply otherwise.
        if let Some(w) = limits.weight {
            s.insert(Key::CpuWeight, Value::Amount(w.get()));
        }
        if let Some(w) = limits.io_weight {
            s.insert(Key::IoWeight, Value::Amount(w.get()));
        }
        if let Some(l) = limits.mem_low.filter(|l| l.get() > 0) {
            s.insert(Key::MemoryLow, Value::Amount(l.get()));
        }
        if let Some(sw) = limits.swap {
            s.insert(Key::MemorySwapMax, Value::Amount(sw.get()));
        }
        Settings(s)
    }

    /// With the IO limits of `io` (systemd's default, none, for a kind it
    /// leaves empty).
    pub fn with_io(mut self, io: &fairshare_policy::IoDevices) -> Settings {
        for (key, list) in [
            (Key::IoReadBandwidthMax, &io.read_bw),
            (Key::IoWriteBandwidthMax, &io.write_bw),
            (Key::IoReadIopsMax, &io.read_iops),
            (Key::IoWriteIopsMax, &io.write_iops),
        ] {
            match devices::intern(list.clone()) {
                0 => {
                    self.0.remove(&key);
                }
                id => {
                    self.0.insert(key, Value::Amount(id));
                }
            }
        }
        self
    }

    /// With the IO limits of `other` (those of the user's base, for an
    /// allocation: IO limits are not resized).
    pub fn io_from(mut self, other: &Settings) -> Settings {
        for k in Key::ALL.iter().filter(|k| k.spec().kind == Kind::Devices) {
            match other.get(*k) {
                Some(v) => self.0.insert(*k, v),
                None => self.0.remove(k),
            };
        }
        self
    }

    pub fn get(&self, key: Key) -> Option<Value> {
        self.0.get(&key).copied()
    }

    pub fn set(&mut self, key: Key, value: Value) {
        self.0.insert(key, value);
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, Value)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys whose values differ between `self` and `other` (a key one of
    /// them leaves out counts as different from any value the other has).
    pub fn differing(&self, other: &Settings) -> Vec<Key> {
        Key::ALL
            .iter()
            .copied()
            .filter(|k| self.get(*k) != other.get(*k))
            .collect()
    }
}

/// What fairshare puts in force for a user (or, in `user-.slice.d`, for
/// every user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// These limits.
    Limits(Settings),
    /// No fairshare limit: systemd's own defaults apply (root, nobody,
    /// exempt users). A comment-only file, which masks the policy default of
    /// the same name and says why.
    Exempt,
}

impl Entry {
    /// The file's text. `why` says where the limits come from or why the user
    /// is exempt (one line: the policy parts, or the exemption).
    pub fn render(&self, why: &str) -> String {
        let why = why.replace(['\n', '\r'], " ");
        let mut out = format!("{HEADER} ({why}).\n");
        match self {
            Entry::Limits(s) => {
                out.push_str(
                    "# Do not edit: change the policy in /etc/fairshare/policy.d and run\n\
                     # `fairshare-ctl reload`; fairshared rewrites this file from the policy.\n\
                     [Slice]\n",
                );
                for (k, v) in s.iter() {
                    for line in v.render_lines(k) {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
            }
            Entry::Exempt => out.push_str(
                "# No fairshare limit: this file only masks the policy default of the same name\n\
                 # in user-.slice.d, so systemd's own defaults apply. Do not edit.\n",
            ),
        }
        out
    }
}

// ---------------------------------------------------------------- parsing

/// One `Key=value` line of a unit file or drop-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based; the first line of a continued line.
    pub number: u32,
    pub section: String,
    pub key: String,
    pub value: String,
}

/// The assignments of a unit file, as systemd reads them: `[Section]`
/// headers, `#` and `;` comments, a trailing backslash continues a line.
pub fn parse(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(u32, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let (start, mut line) = match pending.take() {
            Some((n, mut acc)) => {
                // A comment inside a continuation is skipped.
                let t = raw.trim_start();
                if t.starts_with('#') || t.starts_with(';') {
                    pending = Some((n, acc));
                    continue;
                }
                acc.push(' ');
                acc.push_str(raw);
                (n, acc)
            }
            None => {
                let t = raw.trim();
                if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                    continue;
                }
                (number, raw.to_string())
            }
        };
        if line.ends_with('\\') {
            line.pop();
            pending = Some((start, line));
            continue;
        }
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            out.push(Line {
                number: start,
                section: section.clone(),
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            });
        }
    }
    if let Some((n, line)) = pending
        && let Some((k, v)) = line.trim().split_once('=')
    {
        out.push(Line {
            number: n,
            section,
            key: k.trim().to_string(),
            value: v.trim().to_string(),
        });
    }
    out
}

/// A setting of a managed key found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub key: Key,
    /// `None`: the empty assignment (back to systemd's built-in default).
    pub value: Option<Value>,
    /// As written.
    pub raw: String,
    pub path: PathBuf,
    pub line: u32,
}

/// The managed keys a unit file sets in `[Slice]`, in order. Values systemd
/// would reject are left out, as systemd leaves them out.
pub fn slice_assignments(path: &Path, text: &str) -> Vec<Assignment> {
    parse(text)
        .into_iter()
        .filter(|l| l.section == "Slice")
        .filter_map(|l| {
            let key = Key::from_name(&l.key)?;
            let value = Value::parse(key, &l.value).ok()?;
            Some(Assignment {
                key,
                value,
                raw: l.value,
                path: path.to_path_buf(),
                line: l.number,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- files

/// What is at one of fairshare's paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnDisk {
    Missing,
    /// A file fairshare wrote.
    Ours(Entry),
    /// A symlink to /dev/null: systemd's mask, put there by someone else.
    Masked,
    /// Anything else: an admin's file of the same name. fairshare leaves it.
    Foreign,
}

/// What a write or removal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file already said exactly this: nothing was written.
    Unchanged,
    Written,
    Removed,
    /// There was nothing to remove.
    Absent,
    /// The file is not fairshare's; it was left as it is.
    LeftForeign,
}

/// Reads one of fairshare's files.
pub fn read(path: &Path) -> io::Result<OnDisk> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OnDisk::Missing),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(
            match fs::read_link(path)?.as_path() == Path::new("/dev/null") {
                true => OnDisk::Masked,
                false => OnDisk::Foreign,
            },
        );
    }
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Ok(OnDisk::Foreign);
    }
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(OnDisk::Foreign),
        Err(e) => return Err(e),
    };
    Ok(recognise(&text))
}

/// Tells fairshare's text from anyone else's, and reads it back.
fn recognise(text: &str) -> OnDisk {
    if !text.starts_with(HEADER) {
        return OnDisk::Foreign;
    }
    let lines = parse(text);
    if lines.is_empty() {
        return OnDisk::Ours(Entry::Exempt);
    }
    let mut s = Settings::default();
    for l in &lines {
        let Some(key) = Key::from_name(&l.key).filter(|_| l.section == "Slice") else {
            return OnDisk::Foreign;
        };
        match Value::parse(key, &l.value) {
            Ok(Some(v)) => match accumulate(key, s.get(key), Some(v)) {
                Some(v) => s.set(key, v),
                None => return OnDisk::Foreign,
            },
            _ => return OnDisk::Foreign,
        }
    }
    OnDisk::Ours(Entry::Limits(s))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `dir/name` with `contents` atomically: a temporary file in the
/// same directory (hidden, and not ending in `.conf`, so systemd never reads
/// it half-written), fsynced, renamed over the old one, and the directory
/// fsynced. The directory is created if missing. Mode 0644.
pub fn write_atomic(dir: &Path, name: &str, contents: &str) -> io::Result<Outcome> {
    let path = dir.join(name);
    if let Ok(meta) = fs::symlink_metadata(&path)
        && meta.is_file()
        && meta.len() == contents.len() as u64
        && fs::read(&path).is_ok_and(|old| old == contents.as_bytes())
    {
        return Ok(Outcome::Unchanged);
    }
    create_dir(dir)?;
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The mode above is cut by the umask; systemctl cat and friends run
        // as other users too.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| Outcome::Written)
}

/// Removes `path` if fairshare wrote it (or it is a /dev/null mask, when
/// `masks_too`), then its directory if that is left empty.
pub fn remove_ours(path: &Path, masks_too: bool) -> io::Result<Outcome> {
    match read(path)? {
        OnDisk::Missing => return Ok(Outcome::Absent),
        OnDisk::Foreign => return Ok(Outcome::LeftForeign),
        OnDisk::Masked if !masks_too => return Ok(Outcome::LeftForeign),
        OnDisk::Ours(_) | OnDisk::Masked => {}
    }
    remove_file(path)?;
    Ok(Outcome::Removed)
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
        // Only succeeds when empty; anything else (an admin's file) stays.
        if fs::remove_dir(dir).is_ok()
            && let Some(parent) = dir.parent()
        {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------- layout

/// Where systemd's unit directories are: under `/` on a host, under a
/// temporary directory in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::system()
    }
}

impl Layout {
    /// The host's own directories.
    pub fn system() -> Layout {
        Layout {
            root: PathBuf::from("/"),
        }
    }

    /// The same directories under `root`.
    pub fn under(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    fn at(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// `/etc/systemd/system/user-.slice.d`
    /// `user.slice`'s drop-in: the total of the memory guarantees, which
    /// bounds every user's (cgroup v2 bounds a `memory.low` by its
    /// parents').
    pub fn user_slice_file(&self) -> PathBuf {
        self.at(CONFIG).join("user.slice.d").join(NAME)
    }

    /// Writes `user.slice`'s drop-in with `MemoryLow=low`, or (`None`)
    /// removes fairshare's. Returns whether fairshare's file was there
    /// before.
    pub fn write_user_slice(&self, low: Option<u64>) -> io::Result<bool> {
        let path = self.user_slice_file();
        let had = matches!(read(&path)?, OnDisk::Ours(_));
        match low {
            Some(n) => {
                let mut s = Settings::default();
                s.set(Key::MemoryLow, Value::Amount(n));
                let text = Entry::Limits(s).render(
                    "the total of the users' memory guarantees, capacity.mem_low of the policy",
                );
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                write_atomic(&dir, NAME, &text)?;
            }
            None => {
                remove_ours(&path, false)?;
            }
        }
        Ok(had)
    }

    pub fn global_dir(&self) -> PathBuf {
        self.at(CONFIG).join("user-.slice.d")
    }

    /// `/etc/systemd/system/user-.slice.d/40-fairshare.conf`
    pub fn global_file(&self) -> PathBuf {
        self.global_dir().join(NAME)
    }

    /// `/etc/systemd/system/user-UID.slice.d`
    pub fn user_dir(&self, uid: u32) -> PathBuf {
        self.at(CONFIG).join(format!("user-{uid}.slice.d"))
    }

    /// `/etc/systemd/system/user-UID.slice.d/40-fairshare.conf`
    pub fn user_file(&self, uid: u32) -> PathBuf {
        self.user_dir(uid).join(NAME)
    }

    /// `/run/systemd/system.control/user-UID.slice.d`: runtime
    /// `SetUnitProperties` values.
    pub fn control_dir(&self, uid: u32) -> PathBuf {
        self.at(RUNTIME_CONTROL).join(format!("user-{uid}.slice.d"))
    }

    /// Writes the policy default for every user slice.
    pub fn write_global(&self, settings: &Settings, why: &str) -> io::Result<Outcome> {
        let text = Entry::Limits(settings.clone()).render(why);
        write_atomic(&self.global_dir(), NAME, &text)
    }

    /// Writes one user's own entry, unless an admin's file of the same name
    /// is there (then it is left, and reported by [`Layout::foreign`]).
    pub fn write_user(&self, uid: u32, entry: &Entry, why: &str) -> io::Result<Outcome> {
        if matches!(
            read(&self.user_file(uid))?,
            OnDisk::Foreign | OnDisk::Masked
        ) {
            return Ok(Outcome::LeftForeign);
        }
        write_atomic(&self.user_dir(uid), NAME, &entry.render(why))
    }

    pub fn read_global(&self) -> io::Result<OnDisk> {
        read(&self.global_file())
    }

    pub fn read_user(&self, uid: u32) -> io::Result<OnDisk> {
        read(&self.user_file(uid))
    }

    /// Removes a user's own entry (they are back at the policy default).
    pub fn remove_user(&self, uid: u32) -> io::Result<Outcome> {
        remove_ours(&self.user_file(uid), false)
    }

    /// Every user entry fairshare wrote: `(uid, entry)`, by uid.
    pub fn user_entries(&self) -> io::Result<Vec<(u32, Entry)>> {
        let mut out = Vec::new();
        for (uid, dir) in user_dirs(&self.at(CONFIG))? {
            if let OnDisk::Ours(e) = read(&dir.join(NAME))? {
                out.push((uid, e));
            }
        }
        out.sort_by_key(|(u, _)| *u);
        Ok(out)
    }

    /// Removes every file fairshare wrote (uninstall): the policy default and
    /// every user entry. Returns the paths removed.
    pub fn remove_all(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        if remove_ours(&self.global_file(), false)? == Outcome::Removed {
            removed.push(self.global_file());
        }
        if remove_ours(&self.user_slice_file(), false)? == Outcome::Removed {
            removed.push(self.user_slice_file());
        }
        for (uid, _) in self.user_entries()? {
            if self.remove_user(uid)? == Outcome::Removed {
                removed.push(self.user_file(uid));
            }
        }
        Ok(removed)
    }

    /// The control files `SetUnitProperties` wrote for `keys` on this user's
    /// slice that exist.
    pub fn control_files(&self, uid: u32, keys: &[Key]) -> Vec<PathBuf> {
        let dir = self.control_dir(uid);
        // no directory, no files: one stat, not one per file (a login of a
        // user at their default, the common case, looks here)
        if fs::symlink_metadata(&dir).is_err() {
            return Vec::new();
        }
        keys.iter()
            .flat_map(|k| k.spec().control_files.iter())
            .map(|f| dir.join(f))
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .collect()
    }

    /// The managed keys that have runtime `SetUnitProperties` values on this
    /// user's slice (resizes, leases, root's sets, or leftovers).
    pub fn control_keys(&self, uid: u32) -> Vec<Key> {
        Key::ALL
            .iter()
            .copied()
            .filter(|k| !self.control_files(uid, &[*k]).is_empty())
            .collect()
    }

    /// The values the runtime control files of managed keys set on this
    /// user's slice, per key (`None`: no limit). A key with two files (an
    /// absolute and a `…Scale` one) takes the later name, as systemd does.
    pub fn control_values(&self, uid: u32) -> BTreeMap<Key, Option<Value>> {
        let mut out = BTreeMap::new();
        let mut files = self.control_files(uid, Key::ALL);
        files.sort();
        for path in files {
            let Ok(Some(text)) = read_small(&path) else {
                continue;
            };
            for a in slice_assignments(&path, &text) {
                let old = out.get(&a.key).copied().flatten();
                out.insert(a.key, normal(a.key, accumulate(a.key, old, a.value)));
            }
        }
        out
    }

    /// Every user with runtime values for managed keys: `(uid, keys)`.
    pub fn users_with_control_files(&self) -> io::Result<Vec<(u32, Vec<Key>)>> {
        let mut out = Vec::new();
        for (uid, _) in user_dirs(&self.at(RUNTIME_CONTROL))? {
            let keys = self.control_keys(uid);
            if !keys.is_empty() {
                out.push((uid, keys));
            }
        }
        out.sort_by_key(|(u, _)| *u);
        Ok(out)
    }

    /// Removes the runtime control files for `keys` (after a
    /// `SetUnitProperties` that put them back to the user's default: what is
    /// on disk then says what is in force, and a later change of the default
    /// is not hidden behind them). Returns how many were removed.
    pub fn remove_control_files(&self, uid: u32, keys: &[Key]) -> io::Result<usize> {
        let files = self.control_files(uid, keys);
        for f in &files {
            remove_file(f)?;
        }
        Ok(files.len())
    }

    /// The search path under this root, without directories that resolve to
    /// one already listed (`/lib` → `/usr/lib`).
    fn search_path(&self) -> Vec<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for p in SEARCH_PATH {
            let dir = self.at(p);
            let key = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if seen.insert(key) {
                out.push(dir);
            }
        }
        out
    }

    /// The drop-ins systemd applies to `user-UID.slice`, in the order it
    /// applies them, each with whether it is masked (a symlink to /dev/null).
    pub fn dropins(&self, uid: u32) -> io::Result<Vec<(PathBuf, bool)>> {
        let unit = format!("user-{uid}.slice");
        let dirs = [
            format!("{unit}.d"),
            "user-.slice.d".into(),
            "slice.d".into(),
        ];
        // name → first path seen (search path order, the unit's own directory
        // first within a search path).
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for base in self.search_path() {
            for d in &dirs {
                let dir = base.join(d);
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // systemd skips hidden files (our temporary ones too).
                    if name.ends_with(".conf") && !name.starts_with('.') {
                        by_name
                            .entry(name)
                            .or_insert_with(|| dir.join(e.file_name()));
                    }
                }
            }
        }
        Ok(by_name
            .into_values()
            .map(|p| {
                let masked = fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/null"))
                    || fs::metadata(&p).is_ok_and(|m| is_dev_null(&m));
                (p, masked)
            })
            .collect())
    }

    /// The values systemd puts in force for `user-UID.slice` from its files,
    /// per key, with the line that set each (a key no file sets is absent:
    /// systemd's built-in default, no limit). `skip` leaves files out, e.g.
    /// fairshare's own ones for [`Layout::systemd_own`].
    pub fn effective(
        &self,
        uid: u32,
        skip: &dyn Fn(&Path) -> bool,
    ) -> io::Result<BTreeMap<Key, Assignment>> {
        let mut out: BTreeMap<Key, Assignment> = BTreeMap::new();
        let mut files = Vec::new();
        if let Some(fragment) = self.fragment(uid) {
            files.push(fragment);
        }
        files.extend(
            self.dropins(uid)?
                .into_iter()
                .filter(|(_, masked)| !masked)
                .map(|(p, _)| p),
        );
        for path in files {
            if skip(&path) {
                continue;
            }
            let Some(text) = read_small(&path)? else {
                continue;
            };
            for mut a in slice_assignments(&path, &text) {
                a.value = accumulate(a.key, out.get(&a.key).and_then(|o| o.value), a.value);
                match a.value {
                    None => {
                        out.remove(&a.key);
                    }
                    Some(_) => {
                        out.insert(a.key, a);
                    }
                }
            }
        }
        Ok(out)
    }

    /// What systemd alone would give `user-UID.slice`: every file except
    /// fairshare's (its drop-ins, wherever they are, and the runtime control
    /// files of the keys it manages). This is what lifting a user's limits
    /// puts back, key by key, with [`property`].
    pub fn systemd_own(&self, uid: u32) -> io::Result<BTreeMap<Key, Assignment>> {
        let control = self.control_dir(uid);
        let ours: BTreeSet<PathBuf> = Key::ALL
            .iter()
            .flat_map(|k| k.spec().control_files.iter())
            .map(|f| control.join(f))
            .collect();
        self.effective(uid, &|p: &Path| {
            p.file_name().is_some_and(|n| n == NAME) || ours.contains(p)
        })
    }

    /// A unit file `user-UID.slice` itself, if an admin wrote one.
    fn fragment(&self, uid: u32) -> Option<PathBuf> {
        let unit = format!("user-{uid}.slice");
        self.search_path()
            .into_iter()
            .map(|b| b.join(&unit))
            .find(|p| fs::symlink_metadata(p).is_ok())
            .filter(|p| {
                !(fs::read_link(p).is_ok_and(|t| t == Path::new("/dev/null"))
                    || fs::metadata(p).is_ok_and(|m| is_dev_null(&m)))
            })
    }

    /// Every file other than fairshare's own that sets a managed key for
    /// user slices, and what it does to fairshare's limits: for
    /// `fairshared --check`.
    pub fn foreign(&self) -> io::Result<Vec<Finding>> {
        let mut out = Vec::new();
        let ours_global = self.global_file();
        let search = self.search_path();
        let runtime_control = self.at(RUNTIME_CONTROL);
        let persistent_control = self.at(PERSISTENT_CONTROL);
        let config = self.at(CONFIG);
        // The position of /etc/systemd/system in the search path: a
        // same-named file before it masks fairshare's.
        let ours_rank = search.iter().position(|p| *p == config).unwrap_or(0);
        for (rank, base) in search.iter().enumerate() {
            if *base == runtime_control {
                // SetUnitProperties' runtime values: fairshare's resizes (or
                // an admin's `set-property --runtime`), not configuration.
                continue;
            }
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            let mut dirs: Vec<(Scope, PathBuf)> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let scope = match name.as_str() {
                        "user-.slice.d" | "slice.d" => Scope::Everyone,
                        n => Scope::User(
                            n.strip_prefix("user-")?
                                .strip_suffix(".slice.d")?
                                .parse()
                                .ok()?,
                        ),
                    };
                    Some((scope, e.path()))
                })
                .collect();
            dirs.sort();
            for (scope, dir) in dirs {
                let Ok(files) = fs::read_dir(&dir) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = files
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.ends_with(".conf") && !n.starts_with('.'))
                    })
                    .collect();
                files.sort();
                for path in files {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let mine = match scope {
                        Scope::Everyone => ours_global.clone(),
                        Scope::User(uid) => self.user_file(uid),
                    };
                    if path == mine && !matches!(read(&path)?, OnDisk::Foreign | OnDisk::Masked) {
                        continue;
                    }
                    let masked = fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null"));
                    if name == NAME {
                        // Someone else's file under fairshare's name.
                        let effect = if path == mine || rank < ours_rank {
                            Effect::MasksFairshare
                        } else {
                            Effect::MaskedByFairshare
                        };
                        out.push(Finding {
                            path,
                            line: 0,
                            scope,
                            key: None,
                            raw: String::new(),
                            effect,
                        });
                        continue;
                    }
                    if masked {
                        continue;
                    }
                    let Some(text) = read_small(&path)? else {
                        continue;
                    };
                    for a in slice_assignments(&path, &text) {
                        let effect = if *base == persistent_control {
                            Effect::PersistentControl
                        } else if name.as_str() > NAME {
                            Effect::Overrides
                        } else {
                            Effect::Underneath
                        };
                        out.push(Finding {
                            path: a.path,
                            line: a.line,
                            scope,
                            key: Some(a.key),
                            raw: a.raw,
                            effect,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn is_dev_null(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    // /dev/null is the character device 1:3.
    m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 3)
}

/// A small regular file's text; `None` for anything else (missing, a device,
/// too large, not UTF-8).
fn read_small(path: &Path) -> io::Result<Option<String>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Ok(None);
    }
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::NotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `user-UID.slice.d` directories directly under `base`: `(uid, path)`.
fn user_dirs(base: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let uid = name
                .to_str()?
                .strip_prefix("user-")?
                .strip_suffix(".slice.d")?
                .parse()
                .ok()?;
            Some((uid, e.path()))
        })
        .collect())
}

// ---------------------------------------------------------------- check

/// Which slices a file applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Everyone,
    User(u32),
}

/// What a file that is not fairshare's does to fairshare's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// It sorts after `40-fairshare.conf`: its value wins over fairshare's
    /// default (and over nothing a resize sets: those sort later still).
    Overrides,
    /// It sorts before: fairshare's default wins; its value applies only
    /// where fairshare sets none (exempt users, keys the policy leaves out).
    Underneath,
    /// A file of fairshare's name that fairshare did not write, where systemd
    /// reads it instead of fairshare's: fairshare's default is not in force.
    MasksFairshare,
    /// A file of fairshare's name in a directory systemd reads after
    /// fairshare's: it is ignored.
    MaskedByFairshare,
    /// A persistent `systemctl set-property` (without `--runtime`): after
    /// the next `daemon-reload` it wins over fairshare's runtime resizes of
    /// the same setting.
    PersistentControl,
}

/// One finding for `fairshared --check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    /// 0 when the finding is about the whole file.
    pub line: u32,
    pub scope: Scope,
    /// `None` when the finding is about the whole file.
    pub key: Option<Key>,
    pub raw: String,
    pub effect: Effect,
}

impl Finding {
    /// Whether an admin should act on it (the others are for information).
    pub fn is_warning(&self) -> bool {
        !matches!(self.effect, Effect::Underneath | Effect::MaskedByFairshare)
    }
}

impl fmt::Display for Finding {
    /// One line, for `fairshared --check`: where, what, what it means, and
    /// what to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whom = match self.scope {
            Scope::Everyone => "every user".to_string(),
            Scope::User(uid) => format!("uid {uid}"),
        };
        let at = match self.line {
            0 => self.path.display().to_string(),
            n => format!("{}:{n}", self.path.display()),
        };
        let set = match self.key {
            Some(k) => format!("{k}={}", self.raw),
            None => String::new(),
        };
        let field = self.key.map_or("the policy", |k| k.spec().policy_field);
        match self.effect {
            Effect::Overrides => write!(
                f,
                "warning: {at}: {set} overrides fairshare's default for {whom} (the file sorts after {NAME}); set {field} in the policy instead and remove the line"
            ),
            Effect::Underneath => write!(
                f,
                "note: {at}: {set} applies to {whom} only where fairshare sets no {} (exempt users, or a limit the policy leaves out)",
                self.key.map_or("limit", |k| k.name())
            ),
            Effect::MasksFairshare => write!(
                f,
                "warning: {at}: not written by fairshared, but named like its drop-in: it hides fairshare's default for {whom}; remove it and run `fairshare-ctl reload`"
            ),
            Effect::MaskedByFairshare => write!(
                f,
                "note: {at}: named like fairshare's drop-in, so systemd ignores it for {whom}; remove it"
            ),
            Effect::PersistentControl => write!(
                f,
                "warning: {at}: {set} from `systemctl set-property` without --runtime: after the next daemon-reload it wins over fairshare's resizes for {whom}; remove the file (and run `systemctl daemon-reload`)"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
