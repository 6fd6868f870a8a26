//! What the host and the daemon say about a user, read between timed runs:
//! logind's sessions and the user manager from systemd (outside the
//! daemon), and the sessions fairshared counts (the daemon's own view,
//! which decides whether a login is the user's first).

use std::time::Duration;

use fairshare_proto::Client;
use fairshare_proto::wire::{Request, Response, StatusInfo, UserRef};
use serde::{Deserialize, Serialize};
use zbus_systemd::login1::ManagerProxy as LoginManager;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

use crate::{Result, fail};

/// logind's and systemd's view of one user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Sessions logind has for the user.
    pub logind_sessions: u32,
    /// `MainPID` of `user@UID.service` (0: no user manager runs).
    pub user_manager_pid: u32,
}

/// Reads logind and systemd on the system bus.
pub struct Host {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
}

impl Host {
    pub fn connect() -> Result<Host> {
        let rt = crate::alloc::runtime()?;
        let conn = rt.block_on(zbus::Connection::system())?;
        Ok(Host { rt, conn })
    }

    pub fn view(&self, uid: u32) -> Result<HostView> {
        let conn = self.conn.clone();
        self.rt.block_on(async move {
            let login = LoginManager::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let sessions = login
                .list_sessions()
                .await?
                .iter()
                .filter(|s| s.1 == uid)
                .count() as u32;
            let manager = ManagerProxy::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let pid = match manager.get_unit(format!("user@{uid}.service")).await {
                Ok(path) => {
                    ServiceProxy::builder(&conn)
                        .path(path)
                        .cache_properties(zbus::proxy::CacheProperties::No)
                        .build()
                        .await?
                        .main_pid()
                        .await?
                }
                // not loaded: no user manager
                Err(zbus::Error::MethodError(..)) => 0,
                Err(e) => return Err(e.into()),
            };
            Ok(HostView {
                logind_sessions: sessions,
                user_manager_pid: pid,
            })
        })
    }

    /// When systemd last started `unit`'s main process, on CLOCK_MONOTONIC
    /// (ns; systemd keeps it in µs).
    pub fn exec_main_start_ns(&self, unit: &str) -> Result<u64> {
        let conn = self.conn.clone();
        let unit = unit.to_string();
        self.rt.block_on(async move {
            let manager = ManagerProxy::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let path = manager.get_unit(unit).await?;
            let us = ServiceProxy::builder(&conn)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?
                .exec_main_start_timestamp_monotonic()
                .await?;
            Ok(us.saturating_mul(1000))
        })
    }

    /// [`Host::view`] once logind has let go of the user's sessions that
    /// are still closing (a session ends a moment after its last process),
    /// or after `within`.
    pub fn settled_view(&self, uid: u32, within: Duration) -> Result<HostView> {
        let until = std::time::Instant::now() + within;
        loop {
            let v = self.view(uid)?;
            if v.logind_sessions == 0 || std::time::Instant::now() >= until {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `MainPID` of a unit (0 when it has none).
    pub fn main_pid(&self, unit: &str) -> Result<u32> {
        let conn = self.conn.clone();
        let unit = unit.to_string();
        self.rt.block_on(async move {
            let manager = ManagerProxy::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let path = manager.get_unit(unit).await?;
            Ok(ServiceProxy::builder(&conn)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?
                .main_pid()
                .await?)
        })
    }
}

/// fairshared's `status` of `user`, asked as root.
pub fn status(client: &Client, user: &str) -> Result<StatusInfo> {
    match client.call(&Request::Status {
        user: Some(UserRef::Name(user.into())),
    })? {
        Response::StatusInfo(s) => Ok(*s),
        other => fail(format!("status of {user}: {other:?}")),
    }
}

/// The sessions fairshared counts for `user`, as `service pid` strings.
pub fn counted(s: &StatusInfo) -> Vec<String> {
    s.session_list
        .iter()
        .map(|x| format!("{} pid {}", x.service.as_deref().unwrap_or("?"), x.pid))
        .collect()
}

/// Sessions the daemon counts for each of `uids` (0 when not tracked),
/// from root's `list`: unlike a `status`, it waits for no CPU sample of a
/// user it does not track (`FIRST_LOOK_WAIT`).
pub fn sessions_counted(client: &Client, uids: &[u32]) -> Result<Vec<u32>> {
    let Response::UserList(list) = client.call(&Request::List)? else {
        return fail("`list` did not answer with a user list");
    };
    Ok(uids
        .iter()
        .map(|u| {
            list.users
                .iter()
                .find(|s| s.uid == *u)
                .map_or(0, |s| s.sessions)
        })
        .collect())
}

/// Polls `status` of `user` until `ok` holds (or `within` passes).
pub fn wait_status(
    client: &Client,
    user: &str,
    within: Duration,
    ok: impl Fn(&StatusInfo) -> bool,
) -> Result<StatusInfo> {
    let until = std::time::Instant::now() + within;
    loop {
        let s = status(client, user)?;
        if ok(&s) || std::time::Instant::now() >= until {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
