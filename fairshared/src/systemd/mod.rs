//! Every call fairshared makes to systemd and logind, behind one trait.
//!
//! [`Dbus`] (in `dbus.rs`) is the real thing: zbus on the system bus, with
//! zbus_systemd's generated proxies. `Fake` (in `fake.rs`) records calls in
//! memory, so the ledger and the request handling are tested without a bus;
//! it is built only for tests and with the `fake-systemd` feature (the
//! memory benchmark), never into the shipped daemon. End-to-end tests
//! always run against a real systemd.

mod dbus;
#[cfg(any(test, feature = "fake-systemd"))]
mod fake;

use std::future::Future;

use fairshare_proto::wire::Limits;

pub use crate::dropin::PropertyValue;
pub use dbus::Dbus;
#[cfg(any(test, feature = "fake-systemd"))]
pub use fake::{Call, Fake};

/// The unit fairshare limits for a user: logind puts every session scope and
/// `user@UID.service` there.
pub fn slice_name(uid: u32) -> String {
    format!("user-{uid}.slice")
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on the system bus: {0}")]
    Bus(String),
    #[error("systemd refused {call} on {unit}: {message}")]
    Refused {
        call: &'static str,
        unit: String,
        message: String,
    },
}

/// What fairshared needs from systemd and logind.
pub trait Systemd: Send + Sync + 'static {
    /// Writes `props` onto `user-UID.slice` as runtime properties, in one
    /// `SetUnitProperties(runtime=true)` call (systemd writes one control
    /// drop-in per property into `/run/systemd/system.control`). Works
    /// whether or not the slice is active. The properties and values come
    /// from [`crate::dropin::property`]: only the keys that differ from what
    /// is in force, never an explicit `infinity` standing in for systemd's
    /// own defaults (docs/design/defaults-from-systemd.md).
    fn set(
        &self,
        uid: u32,
        props: &[(&'static str, PropertyValue)],
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Writes `props` onto another unit (`user.slice`: the memory
    /// guarantee of all users together) as runtime properties.
    fn set_unit(
        &self,
        unit: &str,
        props: &[(&'static str, PropertyValue)],
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// `MemoryLow` in force on a slice (`None`: not loaded).
    fn memory_low(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<Option<u64>, SystemdError>> + Send;

    /// The values of fairshare's keys in force on `user-UID.slice` (`None`
    /// when the slice is not loaded): the start-up check of running slices
    /// against what the files say. Absolute amounts, `None` for no limit.
    fn slice_values(
        &self,
        uid: u32,
    ) -> impl Future<Output = Result<Option<SliceValues>, SystemdError>> + Send;

    /// Moves `process` (a session process outside any user slice) into a
    /// new transient scope inside `user-UID.slice`, so it and its children
    /// are limited. Returns the scope's name. Names the process by its pidfd
    /// where systemd takes one (253 and later); else by pid, checked right
    /// before the call to be still the pinned process
    /// ([`Pinned::still_same`](crate::proc::Pinned::still_same)).
    fn adopt(
        &self,
        uid: u32,
        process: &crate::proc::Pinned,
    ) -> impl Future<Output = Result<String, SystemdError>> + Send;

    /// Whether logind counts `pid` in one of its sessions (then it is logind's
    /// to place, never ours to move).
    fn in_logind_session(
        &self,
        pid: u32,
    ) -> impl Future<Output = Result<bool, SystemdError>> + Send;

    /// Every user logind currently knows (logged in, or lingering): `(uid, name)`.
    fn logind_users(&self)
    -> impl Future<Output = Result<Vec<(u32, String)>, SystemdError>> + Send;

    /// The main pid of `user@UID.service`, when it runs.
    fn user_manager_pid(
        &self,
        uid: u32,
    ) -> impl Future<Output = Result<Option<u32>, SystemdError>> + Send;

    /// Every session logind currently knows (only those of `only`, if given).
    fn logind_sessions(
        &self,
        only: Option<u32>,
    ) -> impl Future<Output = Result<Vec<LogindSession>, SystemdError>> + Send;
}

/// The values of the managed keys' properties on a slice, in
/// [`Key::ALL`](crate::dropin::Key::ALL) order (`CPUQuotaPerSecUSec`,
/// `MemoryMax`, `MemoryHigh`, `TasksMax`, `CPUWeight`, `IOWeight`,
/// `MemoryLow`, `MemorySwapMax`); a key's `Spec::unset` when not set.
pub type SliceValues = [u64; crate::dropin::Key::ALL.len()];

/// One logind session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogindSession {
    pub id: String,
    pub uid: u32,
    pub user: String,
    /// The process that registered the session (for sshd, the PAM caller).
    pub leader: u32,
    pub service: String,
    pub rhost: String,
    pub tty: String,
}

/// The four properties of `limits` as absolute values (the benchmarks'
/// baseline: what a `SetUnitProperties` of a whole allocation sends).
pub fn slice_properties(limits: &Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("CPUQuotaPerSecUSec", limits.cpu.quota_usec_per_sec()),
        ("MemoryMax", limits.mem.get()),
        // u64::MAX is systemd's "infinity": clears a soft limit set earlier.
        ("MemoryHigh", limits.mem_high.map_or(u64::MAX, |h| h.get())),
        ("TasksMax", limits.tasks.get()),
    ]
}
