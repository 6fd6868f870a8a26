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
    BurstCeiling, Bursting, CgroupLayout, Contention, FairShare, Guarantees, IoLimits, IoTarget,
    MemLow, Swap, Unenforced, WhenFull, grant_mem_low, unenforced_reason,
};
pub use policy::{CapacityLimit, Exemption, HostResources, Identity, MemHigh, Policy, UserPolicy};

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
        "Overrides for members of group NAME, field by field. A user in several groups gets them in policy order (files by name, then as written): the last group that sets a field wins it. fairshared --check warns when groups set the same field to different values and says which group gives each user in several groups which field.",
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fair;
