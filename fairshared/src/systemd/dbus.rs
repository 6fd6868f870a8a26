//! [`Dbus`]: systemd and logind over the system bus.

use std::future::Future;
use std::time::Duration;

use zbus::Fd;
use zbus::Str;
use zbus::zvariant::{OwnedVariant, Variant};
use zbus_systemd::login1::ManagerProxy as LoginManager;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use super::{LogindSession, PropertyValue, SliceValues, Systemd, SystemdError, slice_name};
use crate::proc::Pinned;

struct Bus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

/// systemd and logind over the system bus. Reconnects when the bus
/// connection drops (dbus restarted, systemd re-executed).
pub struct Dbus {
    bus: tokio::sync::Mutex<Option<Bus>>,
    timeout: Duration,
    /// Whether systemd takes pidfds in `StartTransientUnit` (`PIDFDs`,
    /// systemd 253 and later): asked once.
    pidfds: tokio::sync::OnceCell<bool>,
    /// Calls waiting for their reply at once, at most [`IN_FLIGHT`].
    in_flight: tokio::sync::Semaphore,
}

/// The most method calls fairshared has waiting for a reply at once. The
/// bus daemon refuses a connection more than `max_replies_per_connection`
/// (128 by default on the system bus) with `LimitsExceeded`: a storm of
/// logins (and a start-up that sets many slices meanwhile) queues here
/// instead of failing.
pub const IN_FLIGHT: usize = 64;

impl Dbus {
    /// Connects now, so that a daemon without a bus fails at start with a
    /// clear message rather than at the first login.
    pub async fn connect(timeout: Duration) -> Result<Dbus, SystemdError> {
        let d = Dbus {
            bus: tokio::sync::Mutex::new(None),
            timeout,
            pidfds: tokio::sync::OnceCell::new(),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
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

    /// A place among the [`IN_FLIGHT`] calls (never closed).
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, zbus::Error> {
        self.in_flight
            .acquire()
            .await
            .map_err(|e| zbus::Error::Failure(e.to_string()))
    }

    /// Runs `f` once, and once more on a fresh connection if the bus went
    /// away; each run holds a place among the [`IN_FLIGHT`] calls.
    async fn with_retry<T, F, Fut>(&self, f: F) -> Result<T, zbus::Error>
    where
        F: Fn(zbus::Connection, ManagerProxy<'static>) -> Fut,
        Fut: Future<Output = Result<T, zbus::Error>>,
    {
        let _slot = self.slot().await?;
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

impl Dbus {
    /// Whether systemd names processes by pidfd in `StartTransientUnit`
    /// (the `PIDFDs` property, systemd 253 and later).
    async fn takes_pidfds(&self) -> bool {
        *self
            .pidfds
            .get_or_init(|| async {
                let version = self
                    .with_retry(|_, m| async move { m.version().await })
                    .await;
                let major = version.as_deref().ok().and_then(major_version);
                tracing::debug!(?major, "systemd version");
                major.is_some_and(|v| v >= 253)
            })
            .await
    }
}

/// The major version in systemd's `Version` property (`252.39-1~deb12u2`).
fn major_version(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An IO limit's list as D-Bus `a(st)`.
fn devices_variant(list: Vec<(String, u64)>) -> Result<OwnedVariant, zbus::Error> {
    OwnedVariant::try_from(Variant::from(list))
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

/// The properties of a loaded unit (`None`: not loaded, systemd's
/// `NoSuchUnit`).
async fn unit_properties(
    c: &zbus::Connection,
    m: &ManagerProxy<'static>,
    unit: String,
) -> Result<Option<zbus::fdo::PropertiesProxy<'static>>, zbus::Error> {
    let path = match m.get_unit(unit).await {
        Ok(p) => p,
        Err(zbus::Error::MethodError(..)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(properties(c, "org.freedesktop.systemd1", path).await?))
}

/// The properties of an object of `destination` (uncached: each read asks).
async fn properties(
    c: &zbus::Connection,
    destination: &'static str,
    path: zbus::OwnedObjectPath,
) -> Result<zbus::fdo::PropertiesProxy<'static>, zbus::Error> {
    zbus::fdo::PropertiesProxy::builder(c)
        .destination(destination)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

impl Systemd for Dbus {
    async fn set(
        &self,
        uid: u32,
        props: &[(&'static str, PropertyValue)],
    ) -> Result<(), SystemdError> {
        self.set_unit(&slice_name(uid), props).await
    }

    async fn memory_low(&self, unit: &str) -> Result<Option<u64>, SystemdError> {
        let unit = unit.to_string();
        self.with_retry(|c, m| {
            let unit = unit.clone();
            async move {
                let Some(props) = unit_properties(&c, &m, unit).await? else {
                    return Ok(None);
                };
                let v = props
                    .get(
                        zbus::names::InterfaceName::from_static_str_unchecked(
                            "org.freedesktop.systemd1.Slice",
                        ),
                        "MemoryLow",
                    )
                    .await?;
                Ok(u64::try_from(&v).ok())
            }
        })
        .await
        .map_err(|e| refused("Get", &unit, e))
    }

    async fn set_unit(
        &self,
        unit: &str,
        props: &[(&'static str, PropertyValue)],
    ) -> Result<(), SystemdError> {
        let unit = unit.to_string();
        self.with_retry(|_, m| {
            let unit = unit.clone();
            async move {
                let mut list: Vec<(String, OwnedVariant)> = Vec::new();
                for (k, v) in props {
                    match *v {
                        PropertyValue::U64(n) => list.push((k.to_string(), OwnedVariant::from(n))),
                        PropertyValue::U32(n) => list.push((k.to_string(), OwnedVariant::from(n))),
                        // an IO limit: the empty list resets the kind on every
                        // disk, then the list sets the disks it names
                        PropertyValue::Devices(id) => {
                            let none: Vec<(String, u64)> = Vec::new();
                            list.push((k.to_string(), devices_variant(none)?));
                            let entries = crate::dropin::devices::get(id).to_vec();
                            if !entries.is_empty() {
                                list.push((k.to_string(), devices_variant(entries)?));
                            }
                        }
                    }
                }
                m.set_unit_properties(unit, true, list).await
            }
        })
        .await
        .map_err(|e| refused("SetUnitProperties", &unit, e))
    }

    async fn slice_values(&self, uid: u32) -> Result<Option<SliceValues>, SystemdError> {
        let unit = slice_name(uid);
        self.with_retry(|c, m| {
            let unit = unit.clone();
            async move {
                let Some(props) = unit_properties(&c, &m, unit).await? else {
                    return Ok(None);
                };
                let all = props
                    .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
                        "org.freedesktop.systemd1.Slice",
                    ))
                    .await?;
                let get = |k: crate::dropin::Key| {
                    let v = all.get(k.spec().property);
                    match k.spec().kind {
                        // a(st): the disks with a limit of this kind
                        crate::dropin::Kind::Devices => v
                            .and_then(|v| Vec::<(String, u64)>::try_from(v.clone()).ok())
                            .map(|l| {
                                crate::dropin::devices::intern(
                                    l.into_iter().filter(|(_, n)| *n != u64::MAX).collect(),
                                )
                            })
                            .unwrap_or(k.spec().unset),
                        _ => v
                            .and_then(|v| u64::try_from(v).ok())
                            .unwrap_or(k.spec().unset),
                    }
                };
                Ok(Some(crate::dropin::per_key(get)))
            }
        })
        .await
        .map_err(|e| refused("GetAll", &unit, e))
    }

    async fn adopt(&self, uid: u32, process: &Pinned) -> Result<String, SystemdError> {
        let pid = process.pid();
        let unit = format!("fairshare-session-{uid}-{pid}.scope");
        let slice = slice_name(uid);
        let by_pidfd = self.takes_pidfds().await;
        let result = self
            .with_retry(|_, m| {
                let (unit, slice) = (unit.clone(), slice.clone());
                async move {
                    // systemd 253+ takes the pidfd: no pid to be reused. Else the
                    // pid, checked to be still the pinned process right before
                    // the call.
                    let who = match by_pidfd {
                        true => (
                            "PIDFDs".to_string(),
                            OwnedVariant::try_from(Variant::from(vec![Fd::from(process.pidfd())]))?,
                        ),
                        false if process.still_same() => (
                            "PIDs".to_string(),
                            OwnedVariant::try_from(Variant::from(vec![pid]))?,
                        ),
                        false => return Ok(None),
                    };
                    let props = vec![
                        ("Slice".to_string(), OwnedVariant::from(Str::from(slice))),
                        (
                            "Description".to_string(),
                            OwnedVariant::from(Str::from(format!(
                                "fairshare: session of uid {uid} outside logind (pid {pid})"
                            ))),
                        ),
                        who,
                        (
                            "CollectMode".to_string(),
                            OwnedVariant::from(Str::from("inactive-or-failed")),
                        ),
                    ];
                    m.start_transient_unit(unit, "fail".into(), props, vec![])
                        .await
                        .map(Some)
                }
            })
            .await;
        let started = result.map_err(|e| refused("StartTransientUnit", &unit, e))?;
        if started.is_none() {
            return Err(SystemdError::Refused {
                call: "StartTransientUnit",
                unit,
                message: format!(
                    "pid {pid} is no longer the process that opened the session (it exited, or changed owner); not moving it"
                ),
            });
        }
        // The job that moves the process runs after the call returns, one
        // cgroup hierarchy after the other; the scope turns active once the
        // process is in all of them. The caller's next step (the login going
        // on) must find it moved.
        let (conn, manager) = self.manager().await?;
        for _ in 0..80 {
            let slot = self.slot().await.map_err(bus_err)?;
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
            drop(slot);
            if crate::proc::placement(pid).is_none() {
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

    /// One user's sessions are asked of their logind user object (not a
    /// list of every session on the host, which the logind follower would
    /// fetch for each user it checks); each session's fields come in one
    /// `GetAll`.
    async fn logind_sessions(&self, only: Option<u32>) -> Result<Vec<LogindSession>, SystemdError> {
        self.with_retry(|c, _| async move {
            let login = LoginManager::builder(&c)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let listed: Vec<(String, u32, String, zbus::OwnedObjectPath)> = match only {
                Some(uid) => {
                    let path = match login.get_user(uid).await {
                        Ok(p) => p,
                        // not logged in (any more)
                        Err(zbus::Error::MethodError(..)) => return Ok(Vec::new()),
                        Err(e) => return Err(e),
                    };
                    let all = match login1_properties(&c, path, "org.freedesktop.login1.User").await
                    {
                        Ok(all) => all,
                        // gone since GetUser
                        Err(zbus::Error::MethodError(..)) => return Ok(Vec::new()),
                        Err(zbus::Error::FDO(e))
                            if matches!(*e, zbus::fdo::Error::UnknownObject(_)) =>
                        {
                            return Ok(Vec::new());
                        }
                        Err(e) => return Err(e),
                    };
                    let name = text(&all, "Name");
                    let Some(sessions) = all.get("Sessions").and_then(|v| {
                        Vec::<(String, zbus::OwnedObjectPath)>::try_from(v.clone()).ok()
                    }) else {
                        return Err(zbus::Error::Failure(format!(
                            "logind's user {uid} has no list of sessions"
                        )));
                    };
                    sessions
                        .into_iter()
                        .map(|(id, path)| (id, uid, name.clone(), path))
                        .collect()
                }
                None => login
                    .list_sessions()
                    .await?
                    .into_iter()
                    .map(|(id, uid, user, _seat, path)| (id, uid, user, path))
                    .collect(),
            };
            let mut out = Vec::new();
            for (id, uid, user, path) in listed {
                // A session may end while we look at it: skip it then.
                let Ok(all) = login1_properties(&c, path, "org.freedesktop.login1.Session").await
                else {
                    continue;
                };
                let Some(leader) = all.get("Leader").and_then(|v| u32::try_from(&**v).ok()) else {
                    continue;
                };
                out.push(LogindSession {
                    id,
                    uid,
                    user,
                    leader,
                    service: text(&all, "Service"),
                    rhost: text(&all, "RemoteHost"),
                    tty: text(&all, "TTY"),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| refused("ListSessions", "org.freedesktop.login1", e))
    }
}

/// A text property from a `GetAll` answer ("" when absent or not text).
fn text(all: &std::collections::HashMap<String, OwnedVariant>, key: &str) -> String {
    all.get(key)
        .and_then(|v| <&str>::try_from(&**v).ok())
        .unwrap_or_default()
        .to_string()
}

/// Every property of one interface of a logind object, in one call.
async fn login1_properties(
    c: &zbus::Connection,
    path: zbus::OwnedObjectPath,
    interface: &'static str,
) -> Result<std::collections::HashMap<String, OwnedVariant>, zbus::Error> {
    let props = properties(c, "org.freedesktop.login1", path).await?;
    Ok(props
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
            interface,
        ))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_versions() {
        assert_eq!(major_version("252.39-1~deb12u2"), Some(252));
        assert_eq!(major_version("253"), Some(253));
        assert_eq!(major_version("257.4-3"), Some(257));
        assert_eq!(major_version(""), None);
        assert_eq!(major_version("v253"), None);
    }
}
