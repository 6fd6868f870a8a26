//! fairshared: the root daemon behind fairshare.
//!
//! It owns the policy, the ledger of allocations and sessions, the state on
//! disk, and every call to systemd. The pure parts are kept apart from the
//! I/O so they can be tested without a bus:
//!
//! * [`ledger`]: who holds what; every decision (resize, release, sessions,
//!   capacity). No I/O.
//! * [`service`]: answers requests; glues the ledger to the policy, the user
//!   directory, systemd and the state file.
//! * [`systemd`]: the [`systemd::Systemd`] trait, its D-Bus implementation
//!   and an in-memory fake.
//! * [`server`]: the Unix socket and `SO_PEERCRED`.
//! * [`state`]: the ledger on disk, written atomically.
//! * [`cgroup`]: live usage from the cgroup files, v1 or v2.
//! * [`pidwatch`]: noticing session processes that end without a close.
//! * [`ratelimit`]: per-user token buckets against request floods.
//! * [`users`], [`host`]: NSS lookups and the host's size.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod burst;
pub mod cgroup;
pub mod cli;
pub mod host;
pub mod ledger;
pub mod pidwatch;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod state;
pub mod systemd;
pub mod users;
