//! fairshared: the root daemon behind fairshare.
//!
//! It owns the policy, the ledger of allocations and sessions, the state on
//! disk, and every call to systemd. The pure parts are kept apart from the
//! I/O so they can be tested without a bus:
//!
//! * [`ledger`]: who holds what; every decision (resize, release, sessions,
//!   capacity). No I/O. [`guarantees`]: how `capacity.mem_low` is shared
//!   when the memory guarantees wanted exceed it. No I/O.
//! * [`service`]: answers requests by orchestrating the owners of state
//!   below; one file per concern of the requests.
//! * Owners of state, each a small type: [`store`] (the ledger, the state
//!   file and the save generation), [`locks`] (per-user locks),
//!   [`identity`] (user lookups and their cache), [`admission`] (root-only
//!   requests and rate limits, before dispatch), [`tasks`] (background tasks
//!   by key: lease timers, event watchers), [`exits`] (session processes
//!   watched for their end: one epoll set, one task).
//! * [`systemd`]: the [`systemd::Systemd`] trait and its D-Bus
//!   implementation (and, for tests, an in-memory fake).
//! * [`server`]: the Unix socket and `SO_PEERCRED`; [`health`]: whether the
//!   daemon still answers (the watchdog's check).
//! * [`state`]: the ledger on disk, written atomically.
//! * [`proc`]: processes (pid + start time, pidfds, where they sit);
//!   [`cgroup`]: live usage from the cgroup files, v1 or v2; [`kernfs`]:
//!   reading their small files.
//! * [`ratelimit`]: per-user token buckets against request floods.
//! * [`iodisk`]: the disks behind the policy's IO limits.
//! * [`users`], [`host`], [`nss_check`]: NSS lookups, the host's size, and
//!   whether fairshared sees the users sshd sees.
//! * `testhooks` (only with the cargo feature `test-hooks`, never in the
//!   shipped daemon): a slow or wedged daemon for the end-to-end tests.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admission;
pub mod burst;
pub mod cgroup;
pub mod cli;
pub mod cpu_window;
pub mod defaults;
pub mod dropin;
pub mod events;
pub mod exits;
pub mod guarantees;
pub mod health;
pub mod host;
pub mod identity;
pub mod iodisk;
pub mod kernfs;
pub mod lastgood;
pub mod ledger;
pub mod locks;
pub mod nss_check;
pub mod proc;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod systemd;
pub mod tasks;
#[cfg(feature = "test-hooks")]
pub mod testhooks;
pub mod tty;
pub mod users;
