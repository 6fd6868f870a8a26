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
    /// Writes `limits` onto `user-UID.slice` as runtime properties. Works
    /// whether or not the slice is active.
    fn apply(
        &self,
        uid: u32,
        limits: &Limits,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Lifts every limit fairshare set on `user-UID.slice` (for users who
    /// became exempt or no longer exist).
    fn reset(&self, uid: u32) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Moves `pid` (a session process outside any user slice) into a new
    /// transient scope inside `user-UID.slice`, so it and its children are
    /// limited. Returns the scope's name.
    fn adopt(
        &self,
        uid: u32,
        pid: u32,
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

/// The properties written onto a user's slice.
pub fn slice_properties(limits: &Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("CPUQuotaPerSecUSec", limits.cpu.quota_usec_per_sec()),
        ("MemoryMax", limits.mem.get()),
        // u64::MAX is systemd's "infinity": clears a soft limit set earlier.
        ("MemoryHigh", limits.mem_high.map_or(u64::MAX, |h| h.get())),
        ("TasksMax", limits.tasks.get()),
    ]
}
