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
//! error, each naming the file, line and field (unknown keys, wrongly shaped
//! values and repeated keys included; only a YAML syntax error ends the
//! reading of its file). A loaded [`Policy`] is pure data;
//! [`Policy::for_user`] resolves one user's limits from their name and groups
//! without touching the system, so it is cheap and testable, and
//! [`Policy::explain`] says which part of the policy gave each field.
//!
//! Modules: `raw` (the YAML tree as written); `build` (files to a
//! [`Policy`], one method per top-level key), with `build/shape` (the
//! tree's shape), `build/values` (single values) and `build/cross` (checks
//! across fields); `policy` (the loaded policy and its resolution);
//! `explain` (which group gave which field, conflicts between groups);
//! `error`.
//!
//! The format is documented for admins in the `fairshare-policy(5)` man page,
//! generated from [`FIELDS`] by xtask.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod blockdev;
mod build;
mod error;
mod explain;
mod fair;
mod policy;
mod raw;

use fairshare_proto::units::Tasks;

pub use error::{Origin, PolicyError, PolicyErrors};
pub use explain::{FieldSource, Setting};
pub use fair::{
    BurstCeiling, Bursting, CgroupLayout, Contention, FairShare, Guarantees, IoDevices, IoLimits,
    IoTarget, MemLow, Swap, Unenforced, WhenFull, grant_mem_low, io_devices, unenforced_reason,
};
pub use policy::{
    CapacityLimit, Exemption, HostResources, Identity, MemHigh, NoticeDefaults, Policy, UserPolicy,
};

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
        "defaults.weight",
        "CPU weight (CPUWeight; cgroup v1: cpu.shares = weight x 1024 / 100), 1 to 10000, default 100: how contended CPU time is split between users, in proportion (200 against 100 is two to one), whatever their quotas. Example: weight: 200.",
    ),
    (
        "defaults.io_weight",
        "IO weight (IOWeight; v1: blkio.bfq.weight; v2: io.weight), 1 to 10000, default 100: how contended disk time is split. The kernel honours it only on disks using the BFQ scheduler, or on cgroup v2 with io.cost enabled; --check says so. Example: io_weight: 50.",
    ),
    (
        "defaults.mem_low",
        "Memory guaranteed to the user (MemoryLow): the kernel reclaims it only when every unprotected cgroup has been reclaimed first. A size, or a percentage of mem (25%), at most mem; 0 lifts a guarantee set at an earlier level. Counted against capacity.mem_low. cgroup v2 only: on v1 there is no memory.low, and --check warns. Example: mem_low: 1G.",
    ),
    (
        "defaults.swap",
        "Swap the user may use (MemorySwapMax): a size, 0 (or none) for no swap, or max for no limit (systemd's default). cgroup v2 only; --check warns on v1. Example: swap: 2G.",
    ),
    (
        "defaults.io",
        "IO limits per disk: a mapping of targets to read_bw, write_bw (bytes per second: K, M, G, T are powers of 1000, as systemd and dd count them; Ki, Mi, Gi of 1024; B/s may follow), read_iops and write_iops (operations per second), each also max for no limit. A target is a device node (/dev/sdb) or a path whose disk fairshare finds (/home): its file system's device, a partition's whole disk. A path on tmpfs or another file system without a disk cannot be limited. Targets on the same disk are merged, the lower limit of each kind winning. IOPS limits have no effect on cgroup v1. Example: io: {/home: {write_bw: 50M, write_iops: 1000}}.",
    ),
    (
        "defaults.burst",
        "Whether this user's quota may burst into idle CPU when bursting.enabled is true. Default: true; set false for a group or tier that must stay at its quota. Example: burst: false.",
    ),
    (
        "max.cpu, max.mem, max.tasks",
        "The most a user may resize to. Each defaults to the matching default, so a policy without max allows no resizing upwards.",
    ),
    (
        "max.weight, max.io_weight, max.mem_low, max.swap, max.io",
        "The most a user may raise these to, like max.cpu; each defaults to the matching default. With up_to: max, max.cpu is also how far a burst goes.",
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
        "capacity.mem_low",
        "The memory guarantees (mem_low) handed out in total, never overcommitted: a size, or a percentage of capacity.mem (default 50%); or {total: SIZE-OR-PERCENT, when_full: scale|first_come}. When logged-in users want more than the total, scale (the default) shrinks every guarantee in proportion, and first_come keeps the guarantees of those who logged in first (a newcomer gets what is left, possibly nothing, and more as earlier users log out). Guarantees root set (fairshare-ctl set --mem-low) are honoured first, the others share what is left; a user's own resize gets no priority. fairshared applies it at every login, logout, resize and reload (MemoryLow of the slices whose guarantee changes; fairshare-ctl status shows a guarantee cut down, and from what). Logins are never refused; a resize raising mem_low beyond what is free is, saying how much is. Example: mem_low: {total: 64G, when_full: first_come}.",
    ),
    (
        "tiers.NAME.defaults, tiers.NAME.max",
        "A named set of defaults and max that groups and users join with tier: NAME. A user gets, field by field: defaults and max, then their tier, then each of their groups' own values (policy order), then their own users entry. Example: tiers: {batch: {defaults: {cpu: 0.5, weight: 50}}}.",
    ),
    (
        "groups.NAME.tier, users.NAME.tier",
        "The tier of a group's members or of one user. A user's own tier wins; otherwise the last of their groups in policy order that names a tier. --check warns when groups name different tiers. Example: groups: {students: {tier: batch}}.",
    ),
    (
        "groups.NAME.defaults, groups.NAME.max",
        "Overrides for members of group NAME, field by field. A user in several groups gets them in policy order (files by name, then as written): the last group that sets a field wins it. fairshared --check warns when groups set the same field to different values and says which group gives each user in several groups which field.",
    ),
    (
        "users.NAME.defaults, users.NAME.max",
        "Overrides for user NAME, applied after every group.",
    ),
    (
        "bursting.enabled",
        "Opt in to bursting: while the host has idle CPU, quotas of users allowed to burst are lifted (up to their max.cpu, or with up_to: host to every CPU), and fairness between users who all want more comes from their weights, which the kernel enforces at once; when the host turns busy, quotas return to each user's allocation. Default: false. Example: bursting: {enabled: true, up_to: host}.",
    ),
    (
        "bursting.busy_threshold, bursting.idle_threshold",
        "Busy at or above, idle below, this share of the host's CPUs (90% and 70% by default; idle below busy). The load counted is the host's CPU time without the part of each burst above the user's allocation, so a user bursting alone on an idle host does not make it busy.",
    ),
    (
        "bursting.busy_for, bursting.idle_for, bursting.interval",
        "Quotas return to allocations after busy_for (3s) of busy samples in a row, and are lifted again after idle_for (10s) of idle ones; the host is sampled every interval (1s, between 1s and 60s).",
    ),
    (
        "bursting.up_to, bursting.contention",
        "up_to: max (each user's max.cpu, the default) or host (every CPU). contention: share (the default: users who all want more keep their lifted quotas and share the idle CPUs by weight) or allocation (two or more users wanting more than their allocation also make the host busy, so their quotas return to their allocations).",
    ),
    (
        "leases.max_duration",
        "The longest a user may hold more than their default in one go (30m, 8h, 2d): a user's resize above the default ends at most this long after the allocation first went above it. A resize without --for gets the rest of that time; resizing again during it keeps its end (it is not renewed by asking again) and a longer --for is refused; after a release, a new resize starts a new lease. Root's set is not capped. Default: no limit.",
    ),
    (
        "notices.terminal",
        "true or false: whether users get a notice on their terminals when the kernel kills one of their processes at their memory limit, or their CPU limit holds them back most of a minute (once per burst; each names the limit and the fairshare-ctl resize that lifts it). Each user may turn theirs off or on (fairshare-ctl notices off|on); this is the default for those who did not. Default: true.",
    ),
    (
        "notices.login_line",
        "true or false: whether an interactive login (ssh, login) shows one line with the user's limits and how far they may resize them, e.g. \"fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)\". The PAM module's login_line= argument can turn it off on a host too. Default: true.",
    ),
];

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fair;
