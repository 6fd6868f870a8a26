//! Types and code shared by every part of fairshare.
//!
//! * [`units`]: CPU counts, memory sizes, task counts, weights and IO rates, parsed the same way
//!   in policy files, on the wire and on the command line.
//! * [`wire`]: the newline-delimited JSON protocol spoken on
//!   `/run/fairshare.sock`.
//! * [`client`]: a blocking client with a single deadline, safe to use inside
//!   a PAM module (no threads, no async runtime).
//! * [`placement`]: where a process sits in systemd's tree (a logind
//!   session, a user's slice, or outside), from `/proc/PID/cgroup`.
//! * [`events`]: what happened to a user's processes because of their limits
//!   (OOM kills, throttling), as recorded and shown.
//! * [`sanitize`]: text for terminals fairshare does not own (process names
//!   escaped, its own lines cleaned).
//! * [`login`]: whether a PAM session shows the login line, and its text.
//!
//! This crate has no async runtime and no D-Bus dependency on purpose: the PAM
//! module links it into every login process.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod client;
pub mod events;
pub mod login;
pub mod placement;
pub mod sanitize;
pub mod units;
pub mod wire;

pub use client::{Client, ClientError};
pub use units::{Bandwidth, Bytes, Ceiling, Cpus, Iops, Tasks, ValueError, Weight};
pub use wire::{Request, Response};
