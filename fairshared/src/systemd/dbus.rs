//! [`Dbus`]: systemd and logind over the system bus.

use std::future::Future;
use std::time::Duration;

use fairshare_proto::wire::Limits;
use zbus::Str;
use zbus::zvariant::{OwnedVariant, Variant};
use zbus_systemd::login1::{ManagerProxy as LoginManager, SessionProxy as LoginSession};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use super::{LogindSession, Systemd, SystemdError, slice_name, slice_properties};

struct Bus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

/// systemd and logind over the system bus. Reconnects when the bus
/// connection drops (dbus restarted, systemd re-executed).
pub struct Dbus {
    bus: tokio::sync::Mutex<Option<Bus>>,
    timeout: Duration,
}

impl Dbus {
    /// Connects now, so that a daemon without a bus fails at start with a
    /// clear message rather than at the first login.
    pub async fn connect(timeout: Duration) -> Result<Dbus, SystemdError> {
        let d = Dbus {
            bus: tokio::sync::Mutex::new(None),
            timeout,
        };
        let _ = d.manager().await?;
        Ok(d)
    }

    async fn open(&self) -> Result<Bus, SystemdError> {
        let conn = zbus::connection::Builder::system()
            .method_timeout(self.timeout)
            .build()
            .await
            .map_err(bus_err)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(bus_err)?;
        Ok(Bus { conn, manager })
    }

    /// The manager proxy, reconnecting if the connection has closed.
    async fn manager(&self) -> Result<(zbus::Connection, ManagerProxy<'static>), SystemdError> {
        let mut guard = self.bus.lock().await;
        if let Some(b) = guard.as_ref()
            && !b.conn.is_closed()
        {
            return Ok((b.conn.clone(), b.manager.clone()));
        }
        if guard.is_some() {
            tracing::warn!("system bus connection closed; reconnecting");
        }
        let b = self.open().await?;
        let out = (b.conn.clone(), b.manager.clone());
        *guard = Some(b);
        Ok(out)
    }

    async fn reset(&self) {
        *self.bus.lock().await = None;
    }

    /// Runs `f` once, and once more on a fresh connection if the bus went away.
    async fn with_retry<T, F, Fut>(&self, f: F) -> Result<T, zbus::Error>
    where
        F: Fn(zbus::Connection, ManagerProxy<'static>) -> Fut,
        Fut: Future<Output = Result<T, zbus::Error>>,
    {
        let first = match self.manager().await {
            Ok((c, m)) => f(c, m).await,
            Err(e) => Err(zbus::Error::Failure(e.to_string())),
        };
        match first {
            Err(e) if is_disconnect(&e) => {
                tracing::warn!(error = %e, "system bus connection lost; reconnecting");
                self.reset().await;
                let (c, m) = self
                    .manager()
                    .await
                    .map_err(|e| zbus::Error::Failure(e.to_string()))?;
                f(c, m).await
            }
            other => other,
        }
    }
}

impl Dbus {
    /// A stream of uids that logind reports appearing (`UserNew`) or going
    /// (`UserRemoved`). Ends when the bus connection does. The signals come
    /// on a connection of their own: signals left unread fill a connection's
    /// queue, and must never hold up the replies the method calls wait for.
    pub async fn user_events(
        &self,
    ) -> Result<impl futures_util::Stream<Item = u32> + Send + Unpin + use<>, SystemdError> {
        let conn = self.open().await?.conn;
        let login = LoginManager::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(bus_err)?;
        let new = login.receive_user_new().await.map_err(bus_err)?;
        let gone = login.receive_user_removed().await.map_err(bus_err)?;
        use futures_util::StreamExt;
        let new = new.filter_map(|s| async move { s.args().ok().map(|a| a.uid) });
        let gone = gone.filter_map(|s| async move { s.args().ok().map(|a| a.uid) });
        Ok(Box::pin(futures_util::stream::select(new, gone)))
    }
}

fn bus_err(e: zbus::Error) -> SystemdError {
    SystemdError::Bus(e.to_string())
}

fn is_disconnect(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::InputOutput(_) | zbus::Error::Failure(_))
}

fn refused(call: &'static str, unit: &str, e: zbus::Error) -> SystemdError {
    match e {
        zbus::Error::MethodError(name, msg, _) => SystemdError::Refused {
            call,
            unit: unit.to_string(),
            message: format!("{}: {}", name.as_str(), msg.unwrap_or_default()),
        },
        zbus::Error::InputOutput(_) | zbus::Error::Failure(_) => SystemdError::Bus(e.to_string()),
        other => SystemdError::Refused {
            call,
            unit: unit.to_string(),
            message: other.to_string(),
        },
    }
}

impl Systemd for Dbus {
    async fn apply(&self, uid: u32, limits: &Limits) -> Result<(), SystemdError> {
        let unit = slice_name(uid);
        let props = slice_properties(limits);
        self.with_retry(|_, m| {
            let unit = unit.clone();
            let props: Vec<(String, OwnedVariant)> = props
                .iter()
                .map(|(k, v)| (k.to_string(), OwnedVariant::from(*v)))
                .collect();
            async move { m.set_unit_properties(unit, true, props).await }
        })
        .await
        .map_err(|e| refused("SetUnitProperties", &unit, e))
    }

    async fn reset(&self, uid: u32) -> Result<(), SystemdError> {
        let unit = slice_name(uid);
        self.with_retry(|_, m| {
            let unit = unit.clone();
            let props: Vec<(String, OwnedVariant)> =
                ["CPUQuotaPerSecUSec", "MemoryMax", "MemoryHigh", "TasksMax"]
                    .iter()
                    .map(|k| (k.to_string(), OwnedVariant::from(u64::MAX)))
                    .collect();
            async move { m.set_unit_properties(unit, true, props).await }
        })
        .await
        .map_err(|e| refused("SetUnitProperties", &unit, e))
    }

    async fn adopt(&self, uid: u32, pid: u32) -> Result<String, SystemdError> {
        let unit = format!("fairshare-session-{uid}-{pid}.scope");
        let slice = slice_name(uid);
        let result = self
            .with_retry(|_, m| {
                let (unit, slice) = (unit.clone(), slice.clone());
                async move {
                    let props = vec![
                        ("Slice".to_string(), OwnedVariant::from(Str::from(slice))),
                        (
                            "Description".to_string(),
                            OwnedVariant::from(Str::from(format!(
                                "fairshare: session of uid {uid} outside logind (pid {pid})"
                            ))),
                        ),
                        (
                            "PIDs".to_string(),
                            OwnedVariant::try_from(Variant::from(vec![pid]))?,
                        ),
                        (
                            "CollectMode".to_string(),
                            OwnedVariant::from(Str::from("inactive-or-failed")),
                        ),
                    ];
                    m.start_transient_unit(unit, "fail".into(), props, vec![])
                        .await
                }
            })
            .await;
        result.map_err(|e| refused("StartTransientUnit", &unit, e))?;
        // The job that moves the process runs after the call returns, one
        // cgroup hierarchy after the other; the scope turns active once the
        // process is in all of them. The caller's next step (the login going
        // on) must find it moved.
        let (conn, manager) = self.manager().await?;
        for _ in 0..80 {
            if let Ok(path) = manager.get_unit(unit.clone()).await
                && let Ok(p) = UnitProxy::builder(&conn)
                    .path(path)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                && let Ok(state) = p.active_state().await
            {
                match state.as_str() {
                    "active" => return Ok(unit),
                    "failed" => {
                        return Err(SystemdError::Refused {
                            call: "StartTransientUnit",
                            unit,
                            message: "the scope failed to start (see journalctl -u for it)".into(),
                        });
                    }
                    _ => {}
                }
            }
            if crate::proc::placement(pid, uid) == crate::proc::Placement::Gone {
                return Ok(unit);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(SystemdError::Refused {
            call: "StartTransientUnit",
            unit,
            message: format!("pid {pid} was still not in its scope after 0.8 s"),
        })
    }

    async fn in_logind_session(&self, pid: u32) -> Result<bool, SystemdError> {
        self.with_retry(|c, _| async move {
            let login = LoginManager::builder(&c)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            match login.get_session_by_pid(pid).await {
                Ok(_) => Ok(true),
                // org.freedesktop.login1.NoSessionForPID
                Err(zbus::Error::MethodError(..)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| refused("GetSessionByPID", "org.freedesktop.login1", e))
    }

    async fn logind_users(&self) -> Result<Vec<(u32, String)>, SystemdError> {
        let users = self
            .with_retry(|c, _| async move {
                let login = LoginManager::builder(&c)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await?;
                login.list_users().await
            })
            .await
            .map_err(|e| refused("ListUsers", "org.freedesktop.login1", e))?;
        Ok(users
            .into_iter()
            .map(|(uid, name, _)| (uid, name))
            .collect())
    }

    async fn user_manager_pid(&self, uid: u32) -> Result<Option<u32>, SystemdError> {
        let unit = format!("user@{uid}.service");
        let pid = self
            .with_retry(|c, m| {
                let unit = unit.clone();
                async move {
                    let path = match m.get_unit(unit).await {
                        Ok(p) => p,
                        // Not loaded: no user manager.
                        Err(zbus::Error::MethodError(..)) => return Ok(0),
                        Err(e) => return Err(e),
                    };
                    let svc = ServiceProxy::builder(&c)
                        .path(path)
                        .cache_properties(zbus::proxy::CacheProperties::No)
                        .build()
                        .await?;
                    svc.main_pid().await
                }
            })
            .await
            .map_err(|e| refused("GetUnit", &unit, e))?;
        Ok((pid != 0).then_some(pid))
    }

    async fn logind_sessions(&self, only: Option<u32>) -> Result<Vec<LogindSession>, SystemdError> {
        self.with_retry(|c, _| async move {
            let login = LoginManager::builder(&c)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let mut out = Vec::new();
            for (id, uid, user, _seat, path) in login.list_sessions().await? {
                if only.is_some_and(|o| o != uid) {
                    continue;
                }
                let b = LoginSession::builder(&c).path(path);
                let Ok(p) = b
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                else {
                    continue;
                };
                // A session may end while we look at it: skip it then.
                let Ok(leader) = p.leader().await else {
                    continue;
                };
                out.push(LogindSession {
                    id,
                    uid,
                    user,
                    leader,
                    service: p.service().await.unwrap_or_default(),
                    rhost: p.remote_host().await.unwrap_or_default(),
                    tty: p.tty().await.unwrap_or_default(),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| refused("ListSessions", "org.freedesktop.login1", e))
    }
}
