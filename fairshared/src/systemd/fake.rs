//! `Fake`: an in-memory systemd for unit tests and the memory benchmark
//! (feature `fake-systemd`); never in the shipped daemon.

use std::sync::Mutex;
use std::time::Duration;

use fairshare_proto::wire::Limits;

use super::{LogindSession, Systemd, SystemdError, slice_name};

/// One recorded call to the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Apply(u32, Limits),
    Reset(u32),
    Adopt(u32, u32),
}

/// An in-memory systemd for unit tests (and the memory benchmark).
#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<Call>>,
    /// Make the next `apply` calls fail.
    pub fail_apply: std::sync::atomic::AtomicBool,
    /// Delay every call (to test that users do not queue behind each other).
    pub delay: Mutex<Option<Duration>>,
    pub sessions: Mutex<Vec<LogindSession>>,
    /// Users logind knows, and the pids of their user managers.
    pub users: Mutex<Vec<(u32, String)>>,
    pub managers: Mutex<Vec<(u32, u32)>>,
    in_flight: std::sync::atomic::AtomicUsize,
    /// The most `apply` calls ever running at once.
    pub max_in_flight: std::sync::atomic::AtomicUsize,
}

impl Fake {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The last limits applied to a user's slice.
    pub fn applied(&self, uid: u32) -> Option<Limits> {
        self.calls().into_iter().rev().find_map(|c| match c {
            Call::Apply(u, l) if u == uid => Some(l),
            _ => None,
        })
    }

    async fn pause(&self) {
        let d = self.delay.lock().ok().and_then(|d| *d);
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    fn record(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

impl Systemd for Fake {
    async fn apply(&self, uid: u32, limits: &Limits) -> Result<(), SystemdError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        self.pause().await;
        self.in_flight.fetch_sub(1, SeqCst);
        if self.fail_apply.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SystemdError::Refused {
                call: "SetUnitProperties",
                unit: slice_name(uid),
                message: "injected failure".into(),
            });
        }
        self.record(Call::Apply(uid, *limits));
        Ok(())
    }

    async fn reset(&self, uid: u32) -> Result<(), SystemdError> {
        self.pause().await;
        self.record(Call::Reset(uid));
        Ok(())
    }

    async fn adopt(&self, uid: u32, pid: u32) -> Result<String, SystemdError> {
        self.pause().await;
        self.record(Call::Adopt(uid, pid));
        Ok(format!("fairshare-session-{uid}-{pid}.scope"))
    }

    async fn in_logind_session(&self, pid: u32) -> Result<bool, SystemdError> {
        Ok(self
            .sessions
            .lock()
            .map(|s| s.iter().any(|x| x.leader == pid))
            .unwrap_or(false))
    }

    async fn logind_users(&self) -> Result<Vec<(u32, String)>, SystemdError> {
        Ok(self.users.lock().map(|u| u.clone()).unwrap_or_default())
    }

    async fn user_manager_pid(&self, uid: u32) -> Result<Option<u32>, SystemdError> {
        Ok(self
            .managers
            .lock()
            .ok()
            .and_then(|m| m.iter().find(|(u, _)| *u == uid).map(|(_, p)| *p)))
    }

    async fn logind_sessions(&self, only: Option<u32>) -> Result<Vec<LogindSession>, SystemdError> {
        let all = self.sessions.lock().map(|u| u.clone()).unwrap_or_default();
        Ok(all
            .into_iter()
            .filter(|s| only.is_none_or(|o| o == s.uid))
            .collect())
    }
}
