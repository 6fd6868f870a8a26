//! Whether the daemon can still answer: the watchdog's check.
//!
//! systemd's watchdog is pinged only after a check that goes the way a login
//! goes: a `status` request over the daemon's own socket (the accept loop,
//! a worker thread, reading and parsing, the request handling and the
//! answer), a task on the blocking pool (which the user lookups and the
//! state file need), and the ledger's lock. A daemon wedged in any of them
//! stops pinging, and systemd restarts it (`WatchdogSec=` in
//! fairshared.service).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::service::Service;
use crate::systemd::Systemd;

/// What the check found wrong.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error(
        "the blocking pool did not run a task within {0:?} (user lookups and state saves wait there)"
    )]
    BlockingPool(Duration),
    #[error("a status request on {socket} was not answered within {within:?}")]
    NoAnswer { socket: String, within: Duration },
    #[error("a status request on {socket} failed: {error}")]
    Request { socket: String, error: String },
    #[error("the ledger's lock was held for too long")]
    Ledger,
}

/// Checks that the daemon answers: each part within `within`. `socket`:
/// where it listens (`None`: not known, the request is left out).
pub async fn check<S: Systemd>(
    service: &Arc<Service<S>>,
    socket: Option<&Path>,
    within: Duration,
) -> Result<(), Unhealthy> {
    let pool = tokio::task::spawn_blocking(|| ());
    match tokio::time::timeout(within, pool).await {
        Ok(Ok(())) => {}
        _ => return Err(Unhealthy::BlockingPool(within)),
    }
    if let Some(socket) = socket {
        let shown = socket.display().to_string();
        match tokio::time::timeout(within, status(socket)).await {
            Err(_) => {
                return Err(Unhealthy::NoAnswer {
                    socket: shown,
                    within,
                });
            }
            Ok(Err(error)) => {
                return Err(Unhealthy::Request {
                    socket: shown,
                    error,
                });
            }
            Ok(Ok(())) => {}
        }
    }
    match service.healthy().await {
        true => Ok(()),
        false => Err(Unhealthy::Ledger),
    }
}

/// One `status` round trip over `socket`, as a client would make it.
async fn status(socket: &Path) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"{\"type\":\"status\"}\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    match line.contains("\"type\":\"status_info\"") {
        true => Ok(()),
        false => Err(format!("unexpected answer: {}", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Cgroups;
    use crate::identity::Directory;
    use crate::systemd::Fake;
    use crate::users::LookupError;
    use fairshare_policy::{HostResources, Identity, Policy};
    use fairshare_proto::units::{Bytes, Cpus};

    struct Root;

    impl Directory for Root {
        fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
            Ok(Some(Identity {
                uid,
                name: format!("u{uid}"),
                groups: Vec::new(),
            }))
        }
        fn by_name(&self, _: &str) -> Result<Option<Identity>, LookupError> {
            Ok(None)
        }
    }

    fn service() -> Arc<Service<Fake>> {
        let policy = Policy::from_sources(&[(
            "p.yaml".into(),
            "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\n".into(),
        )])
        .unwrap();
        Arc::new(Service::new(
            Fake::default(),
            Arc::new(Root),
            policy,
            HostResources {
                cpus: Cpus::whole(2),
                mem: Bytes(8 << 30),
            },
            Cgroups::detect("/nonexistent-cgroup-root"),
            None,
        ))
    }

    /// A runtime like the daemon's, with a small blocking pool.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_wedged_blocking_pool_or_a_silent_socket_is_unhealthy() {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("fs.sock");
            let s = service();
            let listener = crate::server::bind(&sock).unwrap();
            let (_stop, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(crate::server::serve(listener, s.clone(), stop_rx));
            let within = Duration::from_secs(2);
            check(&s, Some(&sock), within).await.unwrap();
            // a socket nobody answers on
            let silent_path = dir.path().join("silent.sock");
            let _silent = tokio::net::UnixListener::bind(&silent_path).unwrap();
            let e = check(&s, Some(&silent_path), Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(matches!(e, Unhealthy::NoAnswer { .. }), "{e}");
            // every thread of the blocking pool stuck
            for _ in 0..2 {
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(3)));
            }
            let e = check(&s, Some(&sock), Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(matches!(e, Unhealthy::BlockingPool(_)), "{e}");
            assert!(e.to_string().contains("blocking pool"), "{e}");
        });
        rt.shutdown_timeout(Duration::from_millis(10));
    }
}
