//! The Unix socket: one request per connection, identity from the kernel.
//!
//! Each connection is read for one line (at most [`MAX_REQUEST_LINE`] bytes,
//! within [`READ_TIMEOUT`]), answered with one line and closed. The caller's
//! uid comes from `SO_PEERCRED`, never from the message. A user can hold only
//! [`PER_USER_CONNECTIONS`] connections at once, so nobody can starve the
//! daemon of file descriptors and keep others from logging in.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairshare_proto::wire::{ErrorCode, MAX_REQUEST_LINE, Request, Response, parse_request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::admission::Peer;
use crate::service::Service;
use crate::systemd::Systemd;

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon waits to hand over an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one non-root user may hold open at once.
pub const PER_USER_CONNECTIONS: usize = 32;
/// Connections open at once, all users together (fairshared raises its file
/// limit well above this at start).
pub const MAX_CONNECTIONS: usize = 8192;

/// Binds the socket at `path`. A stale socket (nobody listening) is removed;
/// a live one is never taken over.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(format!(
            "cannot create socket {shown}: directory {} does not exist",
            dir.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "another fairshared is already listening on {shown}; stop it first (systemctl stop fairshared) or choose another --socket"
                    ));
                }
                Err(_) => {
                    tracing::info!(socket = %shown, "removing stale socket (nobody listens on it)");
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove stale socket {shown}: {e}"))?;
                }
            }
        }
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; move it away or choose another --socket"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot use {shown}: {e}")),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot create socket {shown}: {e}"))?;
    // Every user must be able to connect; the daemon checks who they are.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot make {shown} world-writable: {e}"))?;
    Ok(listener)
}

/// Removes the socket at exit if it is still the one we created.
pub struct SocketGuard {
    pub path: PathBuf,
    pub ino: Option<u64>,
}

impl SocketGuard {
    pub fn new(path: &Path) -> SocketGuard {
        use std::os::unix::fs::MetadataExt;
        SocketGuard {
            path: path.to_path_buf(),
            ino: std::fs::symlink_metadata(path).ok().map(|m| m.ino()),
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::symlink_metadata(&self.path).ok().map(|m| m.ino());
        if now.is_some() && now == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Counts open connections per uid.
#[derive(Default)]
struct Counts(Mutex<HashMap<u32, usize>>, crate::ratelimit::LogThrottle);

struct Slot<'a> {
    counts: &'a Counts,
    uid: u32,
}

impl Counts {
    fn take(&self, uid: u32) -> Option<Slot<'_>> {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(uid).or_insert(0);
        if uid != 0 && *n >= PER_USER_CONNECTIONS {
            return None;
        }
        *n += 1;
        Some(Slot { counts: self, uid })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut m = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

/// Accepts connections until `shutdown` fires, then waits for the requests
/// already being answered.
pub async fn serve<S: Systemd>(
    listener: UnixListener,
    service: Arc<Service<S>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let counts = Arc::new(Counts::default());
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        // Full: say so and hang up at once, so the queue moves.
                        tasks.spawn(async move {
                            let r = Response::error(ErrorCode::RateLimited, "fairshared is busy (too many open connections); try again");
                            let _ = answer(&mut stream, &r).await;
                        });
                        continue;
                    };
                    let (service, counts) = (service.clone(), counts.clone());
                    tasks.spawn(async move {
                        connection(stream, &service, &counts).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    service.stop_followers();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        tracing::warn!("gave up waiting for requests in flight");
    }
}

async fn connection<S: Systemd>(
    mut stream: UnixStream,
    service: &Arc<Service<S>>,
    counts: &Counts,
) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    let Some(_slot) = counts.take(peer.uid) else {
        if let Some(held) = counts.1.allow() {
            tracing::warn!(
                uid = peer.uid,
                more = held,
                "too many connections from one user; refusing ({held} more since the last warning)"
            );
        }
        let r = Response::error(
            ErrorCode::RateLimited,
            format!(
                "too many open connections from uid {} (at most {PER_USER_CONNECTIONS}): close some (a `fairshare-ctl top` or `events --follow` left running?) and try again",
                peer.uid
            ),
        );
        let _ = answer(&mut stream, &r).await;
        return;
    };
    if let Some(r) = service.admit_connection(peer) {
        let _ = answer(&mut stream, &r).await;
        return;
    }
    let response = match read_request(&mut stream).await {
        Ok(line) => match parse_request(&line) {
            Ok(req) => {
                tracing::debug!(uid = peer.uid, request = req.kind().name(), "request");
                // `events --follow` keeps the connection (and its slot)
                if let Request::Events(q) = &req
                    && q.follow
                {
                    return service.follow_events(peer, q.clone(), stream).await;
                }
                service.handle(peer, req).await
            }
            Err(e) => Response::error(ErrorCode::BadRequest, e),
        },
        Err(ReadError::Closed) => return,
        Err(ReadError::TooLong) => Response::error(
            ErrorCode::BadRequest,
            format!("request too long (more than {MAX_REQUEST_LINE} bytes without a newline)"),
        ),
        Err(ReadError::Timeout) => Response::error(
            ErrorCode::BadRequest,
            format!("no complete request within {} s", READ_TIMEOUT.as_secs()),
        ),
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "read failed");
            return;
        }
    };
    if let Err(e) = answer(&mut stream, &response).await {
        tracing::debug!(uid = peer.uid, error = %e, "could not send the answer");
    }
}

enum ReadError {
    Closed,
    TooLong,
    Timeout,
    Io(io::Error),
}

async fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, ReadError> {
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(
        &mut *stream,
        MAX_REQUEST_LINE as u64 + 1,
    ));
    let mut line = Vec::with_capacity(256);
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(0)) => Err(ReadError::Closed),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_LINE => Err(ReadError::TooLong),
        Ok(Ok(_)) => Ok(line),
    }
}

async fn answer(stream: &mut UnixStream, r: &Response) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(r).map_err(io::Error::other)?;
    bytes.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read its answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fs.sock");
        let live = bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert!(e.contains("already listening"), "{e}");
        drop(live);
        // the file is still there but nobody listens
        assert!(p.exists());
        let _again = bind(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[tokio::test]
    async fn unusable_paths_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = bind(&dir.path().join("missing/fs.sock")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = bind(&f).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
    }

    #[test]
    fn per_user_connection_cap() {
        let c = Counts::default();
        let slots: Vec<_> = (0..PER_USER_CONNECTIONS)
            .map(|_| c.take(1001).unwrap())
            .collect();
        assert!(c.take(1001).is_none());
        assert!(c.take(1002).is_some());
        assert!(c.take(0).is_some());
        drop(slots);
        assert!(c.take(1001).is_some());
    }
}
