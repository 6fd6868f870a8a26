//! Fair share under contention (issue 15): the weights, the memory
//! guarantee, swap and IO limits a policy gives a user beside the ceilings of
//! [`Limits`](fairshare_proto::wire::Limits), bursting into idle CPU, and
//! what each cgroup layout can enforce.
//!
//! [`FairShare`] is what the policy resolves for a user; the settings
//! systemd applies per slice (weights, guarantee, swap) are copied into the
//! wire type's `Limits` (`with_fair` in policy.rs), which the daemon
//! writes into drop-ins and onto slices. IO limits stay here: the daemon
//! takes them per disk ([`io_devices`]) from the user's policy (they are not
//! resized). Bursting is decided in `fairshared/src/burst.rs` and applied
//! by the daemon's sampler (`fairshared/src/service/bursting.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use fairshare_proto::units::{Bandwidth, Bytes, Ceiling, Iops, Weight};

use crate::error::Origin;

/// The memory guarantee (`mem_low`, systemd's `MemoryLow=`): a size, or a
/// share of the hard limit `mem`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemLow {
    /// Percent of `mem`, above 0 and at most 100; resizes of `mem` keep it.
    Percent(f64),
    /// An absolute size.
    Size(Bytes),
}

impl MemLow {
    /// The guarantee at a given hard limit.
    pub fn at(self, mem: Bytes) -> Bytes {
        match self {
            MemLow::Percent(p) => mem.scale(p / 100.0).floor_mib(),
            MemLow::Size(s) => s,
        }
    }
}

impl fmt::Display for MemLow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemLow::Percent(p) => write!(f, "{p}%"),
            MemLow::Size(s) if s.get() == 0 => f.write_str("0"),
            MemLow::Size(s) => write!(f, "{s}"),
        }
    }
}

/// Swap a user may use (`swap`, systemd's `MemorySwapMax=`): `Limit(0)` is
/// none at all, `Unlimited` is systemd's default.
pub type Swap = Ceiling<Bytes>;

/// Shows a swap limit as written (`0` for none).
pub fn show_swap(s: &Swap) -> String {
    match s {
        Ceiling::Limit(b) if b.get() == 0 => "0 (none)".into(),
        other => other.to_string(),
    }
}

/// The four IO limits on one device, as the policy gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoLimits {
    pub read_bw: Option<Ceiling<Bandwidth>>,
    pub write_bw: Option<Ceiling<Bandwidth>>,
    pub read_iops: Option<Ceiling<Iops>>,
    pub write_iops: Option<Ceiling<Iops>>,
}

impl IoLimits {
    /// Whether any of the four is an actual limit (not unset or `max`).
    pub fn limits_anything(&self) -> bool {
        self.read_bw.and_then(Ceiling::limit).is_some()
            || self.write_bw.and_then(Ceiling::limit).is_some()
            || self.read_iops.and_then(Ceiling::limit).is_some()
            || self.write_iops.and_then(Ceiling::limit).is_some()
    }

    /// The lower of each limit (two targets on one disk).
    pub fn tightest(&self, other: &IoLimits) -> IoLimits {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        IoLimits {
            read_bw: min(self.read_bw, other.read_bw),
            write_bw: min(self.write_bw, other.write_bw),
            read_iops: min(self.read_iops, other.read_iops),
            write_iops: min(self.write_iops, other.write_iops),
        }
    }
}

impl fmt::Display for IoLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.read_bw {
            parts.push(format!("read_bw {v}"));
        }
        if let Some(v) = self.write_bw {
            parts.push(format!("write_bw {v}"));
        }
        if let Some(v) = self.read_iops {
            parts.push(format!("read_iops {v}"));
        }
        if let Some(v) = self.write_iops {
            parts.push(format!("write_iops {v}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A user's IO limits as systemd takes them: for each of the four kinds,
/// `(device or path, value)` per disk (bytes a second, or operations a
/// second), for `IO{Read,Write}{Bandwidth,IOPS}Max=`. Made by
/// [`io_devices`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoDevices {
    pub read_bw: Vec<(String, u64)>,
    pub write_bw: Vec<(String, u64)>,
    pub read_iops: Vec<(String, u64)>,
    pub write_iops: Vec<(String, u64)>,
}

impl IoDevices {
    pub fn is_empty(&self) -> bool {
        self.read_bw.is_empty()
            && self.write_bw.is_empty()
            && self.read_iops.is_empty()
            && self.write_iops.is_empty()
    }
}

/// The IO limits of `io` per disk: each target resolved to its disk by
/// `resolve` (`None`: no disk, the target's limits do not apply; `--check`
/// says so), targets on one disk merged with [`IoLimits::tightest`] (systemd
/// keeps one entry per disk, the last written), each disk named by its
/// first target in policy order (systemd resolves a device node or a path
/// to the disk again when it applies the limit). `max` (no limit) is left
/// out: it is systemd's default.
pub fn io_devices<D: PartialEq>(
    io: &BTreeMap<IoTarget, IoLimits>,
    resolve: impl Fn(&IoTarget) -> Option<D>,
) -> IoDevices {
    let mut disks: Vec<(D, String, IoLimits)> = Vec::new();
    for (target, limits) in io {
        let Some(disk) = resolve(target) else {
            continue;
        };
        match disks.iter_mut().find(|(d, _, _)| *d == disk) {
            Some((_, _, l)) => *l = l.tightest(limits),
            None => disks.push((disk, target.to_string(), limits.clone())),
        }
    }
    let mut out = IoDevices::default();
    for (_, name, l) in disks {
        let put = |list: &mut Vec<(String, u64)>, v: Option<u64>| {
            if let Some(v) = v {
                list.push((name.clone(), v));
            }
        };
        put(
            &mut out.read_bw,
            l.read_bw
                .and_then(Ceiling::limit)
                .map(Bandwidth::bytes_per_sec),
        );
        put(
            &mut out.write_bw,
            l.write_bw
                .and_then(Ceiling::limit)
                .map(Bandwidth::bytes_per_sec),
        );
        put(
            &mut out.read_iops,
            l.read_iops.and_then(Ceiling::limit).map(Iops::get),
        );
        put(
            &mut out.write_iops,
            l.write_iops.and_then(Ceiling::limit).map(Iops::get),
        );
    }
    out
}

/// Where an IO limit applies: a block device node (`/dev/sda`), or a path
/// whose file system's disk fairshare finds (`/home`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoTarget {
    Device(String),
    Path(String),
}

impl IoTarget {
    /// Reads a policy key: an absolute path; under `/dev/` a device node.
    pub fn parse(key: &str) -> Result<IoTarget, String> {
        let k = key.trim();
        if !k.starts_with('/') {
            return Err(format!(
                "`{k}` is not an absolute path; name a device (/dev/sda) or a directory on the disk to limit (/home)"
            ));
        }
        if k.contains(['\n', '\r', ' ', '\t']) || k.split('/').any(|c| c == "..") {
            return Err(format!(
                "`{k}` is not a plain path (no spaces, no ..); name a device (/dev/sda) or a directory (/home)"
            ));
        }
        let norm = match k.len() > 1 {
            true => k.trim_end_matches('/'),
            false => k,
        };
        Ok(match norm.starts_with("/dev/") {
            true => IoTarget::Device(norm.to_string()),
            false => IoTarget::Path(norm.to_string()),
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            IoTarget::Device(p) | IoTarget::Path(p) => Path::new(p),
        }
    }
}

impl fmt::Display for IoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoTarget::Device(p) | IoTarget::Path(p) => f.write_str(p),
        }
    }
}

/// What a user gets besides CPU, memory and task ceilings. `None` leaves a
/// setting to systemd (weight 100, no guarantee, unlimited swap, no IO
/// limit).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FairShare {
    /// `CPUWeight=` (v1: `cpu.shares` = weight × 1024 / 100).
    pub weight: Option<Weight>,
    /// `IOWeight=` (v1: `blkio.bfq.weight`; v2: `io.weight`, `io.bfq.weight`).
    pub io_weight: Option<Weight>,
    /// `MemoryLow=` at this allocation's `mem`, before capacity accounting
    /// (see [`grant_mem_low`](crate::grant_mem_low)).
    pub mem_low: Option<Bytes>,
    /// `MemorySwapMax=`.
    pub swap: Option<Swap>,
    /// `IO{Read,Write}{Bandwidth,IOPS}Max=` per target, in target order.
    /// Two targets may sit on one disk: the daemon resolves them
    /// ([`crate::blockdev`]) and merges them with [`IoLimits::tightest`],
    /// because systemd applies same-disk entries one after the other and the
    /// last one wins.
    pub io: BTreeMap<IoTarget, IoLimits>,
    /// Whether the user's quota may burst into idle CPU (only when
    /// `bursting.enabled`).
    pub burst: bool,
}

/// How far a burst goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BurstCeiling {
    /// The user's own `max.cpu`.
    Max,
    /// Every CPU of the host.
    Host,
}

/// What contention does to bursts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contention {
    /// Users who all want more than their allocation keep their lifted
    /// quotas and share the idle CPUs by their weights (the kernel does that
    /// at once); quotas return to allocations only when the host is busy.
    Share,
    /// As `Share`, and a host where two or more users want more than their
    /// allocation also counts as busy: quotas return to allocations.
    Allocation,
}

/// `bursting:`: quotas lifted while the host has idle CPU (opt-in).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bursting {
    pub enabled: bool,
    /// Busy above this share of the host's CPUs (0..1), counting everything
    /// but the part of each burst above the user's allocation.
    pub busy_threshold: f64,
    /// Idle again below this share (hysteresis; below `busy_threshold`).
    pub idle_threshold: f64,
    /// Busy samples in a row for this long before quotas return.
    pub busy_for: Duration,
    /// Idle samples in a row for this long before bursting resumes.
    pub idle_for: Duration,
    /// How often the daemon samples.
    pub interval: Duration,
    pub up_to: BurstCeiling,
    pub contention: Contention,
}

impl Default for Bursting {
    fn default() -> Bursting {
        Bursting {
            enabled: false,
            busy_threshold: 0.9,
            idle_threshold: 0.7,
            busy_for: Duration::from_secs(3),
            idle_for: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            up_to: BurstCeiling::Max,
            contention: Contention::Share,
        }
    }
}

/// What to do when the memory guarantees wanted add up to more than the
/// host can honour (`capacity.mem_low.when_full`). Logins are never refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Every guarantee shrinks in proportion, so that they add up to the
    /// total; they grow back as users leave.
    Scale,
    /// Guarantees are granted in login order: a newcomer gets what is left
    /// (possibly nothing), and a resize of `mem_low` beyond what is free is
    /// refused with how much is.
    FirstCome,
}

/// `capacity.mem_low`: the memory guarantees the host hands out in total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guarantees {
    /// A size, or a percentage of `capacity.mem` (default: the host's RAM).
    pub total: MemLow,
    pub when_full: WhenFull,
}

/// Default total of guarantees: half the memory, the rest left to the
/// system and to reclaim.
pub const DEFAULT_MEM_LOW_TOTAL: MemLow = MemLow::Percent(50.0);

impl Default for Guarantees {
    fn default() -> Guarantees {
        Guarantees {
            total: DEFAULT_MEM_LOW_TOTAL,
            when_full: WhenFull::Scale,
        }
    }
}

/// Shares the memory guarantee `total` among users. `wants` lists each
/// user's wanted guarantee in login order (oldest first). The answer has the
/// same users in the same order with what each gets; the sum never exceeds
/// `total`.
pub fn grant_mem_low(total: Bytes, mode: WhenFull, wants: &[(u32, Bytes)]) -> Vec<(u32, Bytes)> {
    let sum: u128 = wants.iter().map(|(_, b)| u128::from(b.get())).sum();
    if sum <= u128::from(total.get()) {
        return wants.to_vec();
    }
    match mode {
        WhenFull::Scale => wants
            .iter()
            .map(|(uid, want)| {
                // floor(want × total / sum): the parts never add up to more
                let part = u128::from(want.get()) * u128::from(total.get()) / sum;
                (*uid, Bytes(u64::try_from(part).unwrap_or(u64::MAX)))
            })
            .collect(),
        WhenFull::FirstCome => {
            let mut left = total.get();
            wants
                .iter()
                .map(|(uid, want)| {
                    let got = want.get().min(left);
                    left -= got;
                    (*uid, Bytes(got))
                })
                .collect()
        }
    }
}

/// The cgroup layout of the host, which decides what can be enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2.
    Unified,
    /// v1 controllers with a v2 hierarchy for systemd (Debian's container
    /// hosts, older distributions).
    Hybrid,
    /// v1 only.
    Legacy,
}

impl CgroupLayout {
    /// The layout mounted at `root` (normally `/sys/fs/cgroup`), judged as
    /// fairshared's `cgroup` module does.
    pub fn detect(root: &Path) -> CgroupLayout {
        if root.join("cgroup.controllers").exists() {
            CgroupLayout::Unified
        } else if root.join("unified").is_dir() {
            CgroupLayout::Hybrid
        } else {
            CgroupLayout::Legacy
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CgroupLayout::Unified => "cgroup v2",
            CgroupLayout::Hybrid => "hybrid cgroups (v1 controllers)",
            CgroupLayout::Legacy => "cgroup v1",
        }
    }
}

/// A policy key one layout cannot enforce, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unenforced {
    /// `defaults.mem_low`, `groups.NAME.max.swap`, ...
    pub field: String,
    pub origin: Origin,
    pub why: &'static str,
}

impl fmt::Display for Unenforced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}: {}", self.origin, self.field, self.why)
    }
}

/// Why a key has no effect on a layout (measured with systemd 252 on kernel
/// 6.x; docs/design/fair-share.md), or `None` when it works there.
pub fn unenforced_reason(key: &str, layout: CgroupLayout) -> Option<&'static str> {
    let v1 = matches!(layout, CgroupLayout::Hybrid | CgroupLayout::Legacy);
    match key {
        "mem_low" if v1 => Some(
            "has no effect on cgroup v1: there is no memory.low (systemd sets MemoryLow but no file takes it); boot with systemd.unified_cgroup_hierarchy=1 for memory guarantees",
        ),
        "swap" if v1 => Some(
            "has no effect on cgroup v1: systemd applies MemorySwapMax on cgroup v2 only (memory.memsw.limit_in_bytes stays unlimited)",
        ),
        "read_iops" | "write_iops" if v1 => Some(
            "has no effect on cgroup v1: systemd translates IO bandwidth limits to blkio.throttle.*_bps_device but has no IOPS counterpart",
        ),
        _ => None,
    }
}

/// What every layout needs to know about `io_weight`: the kernel honours it
/// only on disks with the BFQ scheduler, or (v2) with io.cost enabled.
pub const IO_WEIGHT_NOTE: &str = "note: io_weight takes effect only on disks using the BFQ scheduler (/sys/block/DISK/queue/scheduler) or, on cgroup v2, with io.cost enabled (/sys/fs/cgroup/io.cost.qos); with mq-deadline or none it is set but not enforced";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_targets() {
        assert_eq!(
            IoTarget::parse("/home/"),
            Ok(IoTarget::Path("/home".into()))
        );
        assert_eq!(IoTarget::parse("/"), Ok(IoTarget::Path("/".into())));
        assert_eq!(
            IoTarget::parse("/dev/sda"),
            Ok(IoTarget::Device("/dev/sda".into()))
        );
        assert!(IoTarget::parse("home").is_err());
        assert!(IoTarget::parse("/home/../etc").is_err());
        assert!(IoTarget::parse("/my disk").is_err());
    }

    #[test]
    fn io_limits_per_disk_merged_and_named_by_their_first_target() {
        let bw = |m: u64| Some(Ceiling::Limit(Bandwidth::new(m * 1_000_000).unwrap()));
        let mut io = BTreeMap::new();
        io.insert(
            IoTarget::Path("/home".into()),
            IoLimits {
                read_bw: bw(50),
                write_bw: bw(20),
                ..IoLimits::default()
            },
        );
        io.insert(
            IoTarget::Path("/tmp".into()),
            IoLimits {
                write_bw: bw(10),
                read_iops: Some(Ceiling::Limit(Iops::new(500).unwrap())),
                write_iops: Some(Ceiling::Unlimited),
                ..IoLimits::default()
            },
        );
        io.insert(
            IoTarget::Device("/dev/sdb".into()),
            IoLimits {
                read_bw: bw(5),
                ..IoLimits::default()
            },
        );
        io.insert(
            IoTarget::Path("/net".into()),
            IoLimits {
                read_bw: bw(1),
                ..IoLimits::default()
            },
        );
        // /home and /tmp on one disk, /dev/sdb another, /net on none
        let disk = |t: &IoTarget| match t.to_string().as_str() {
            "/home" | "/tmp" => Some(1),
            "/dev/sdb" => Some(2),
            _ => None,
        };
        let d = io_devices(&io, disk);
        assert_eq!(
            d.read_bw,
            vec![("/dev/sdb".into(), 5_000_000), ("/home".into(), 50_000_000)]
        );
        // the lower of the two on the shared disk
        assert_eq!(d.write_bw, vec![("/home".into(), 10_000_000)]);
        assert_eq!(d.read_iops, vec![("/home".into(), 500)]);
        // max is systemd's default: not listed
        assert!(d.write_iops.is_empty());
        assert!(io_devices(&io, |_| None::<u8>).is_empty());
    }

    #[test]
    fn guarantees_scale_or_first_come_never_exceed_the_total() {
        let g = |v: u64| Bytes(v << 30);
        let wants = [(1, g(4)), (2, g(2)), (3, g(2))];
        // enough for all: everyone gets what they want
        assert_eq!(grant_mem_low(g(8), WhenFull::Scale, &wants), wants.to_vec());
        assert_eq!(
            grant_mem_low(g(8), WhenFull::FirstCome, &wants),
            wants.to_vec()
        );
        // 4G for 8G wanted: halved, or the first comer keeps theirs
        assert_eq!(
            grant_mem_low(g(4), WhenFull::Scale, &wants),
            vec![(1, g(2)), (2, g(1)), (3, g(1))]
        );
        assert_eq!(
            grant_mem_low(g(5), WhenFull::FirstCome, &wants),
            vec![(1, g(4)), (2, g(1)), (3, Bytes(0))]
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn grants_never_exceed_total_or_wants(
                total in 0u64..(1 << 40),
                wants in proptest::collection::vec(0u64..(1 << 38), 0..50),
                first in any::<bool>(),
            ) {
                let mode = if first { WhenFull::FirstCome } else { WhenFull::Scale };
                let wants: Vec<(u32, Bytes)> =
                    wants.iter().enumerate().map(|(i, w)| (i as u32, Bytes(*w))).collect();
                let got = grant_mem_low(Bytes(total), mode, &wants);
                prop_assert_eq!(got.len(), wants.len());
                let sum: u128 = got.iter().map(|(_, b)| u128::from(b.get())).sum();
                let wanted: u128 = wants.iter().map(|(_, b)| u128::from(b.get())).sum();
                prop_assert!(sum <= u128::from(total));
                // nothing is held back while there is enough for everyone
                if wanted <= u128::from(total) {
                    prop_assert_eq!(sum, wanted);
                }
                for ((u1, g), (u2, w)) in got.iter().zip(&wants) {
                    prop_assert_eq!(u1, u2);
                    prop_assert!(g <= w);
                }
            }
        }
    }
}
