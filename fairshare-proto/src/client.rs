//! A small blocking client with one deadline for the whole round trip.
//!
//! Used by the PAM module (which must never hang a login, and may not start
//! threads or an async runtime inside the caller's process) and by
//! `fairshare-ctl`. The deadline covers connect, write and read: connect is
//! non-blocking and retried while the daemon's listen queue is full, and every
//! read and write is given only the time that is left.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::wire::{Request, Response};

/// Longest answer accepted (a `list` of many thousand users fits easily).
pub const MAX_RESPONSE: usize = 64 << 20;

/// Why a round trip to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket: the daemon is not running.
    #[error("fairshared is not running: nothing listens on {path} ({source})")]
    NotRunning { path: PathBuf, source: io::Error },
    /// The socket exists but we may not use it.
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The daemon did not answer in time.
    #[error("fairshared did not answer within {} ms ({path})", timeout.as_millis())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to fairshared on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The daemon closed the connection without a complete answer, or sent
    /// something that is not an answer.
    #[error("fairshared sent an unreadable answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True when the daemon is simply not there (as opposed to misbehaving).
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }
}

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            path: path.into(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An I/O error on the connection: a timeout past the deadline, or the
    /// error itself.
    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    /// Sends one request and waits for its answer, all within the timeout.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let line = encode(request)?;
        let raw = self.call_raw(&line)?;
        serde_json::from_slice(&raw).map_err(|e| {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
            ClientError::Protocol(format!("{e}: {shown}"))
        })
    }

    /// Sends raw bytes and returns the raw answer line (without the newline).
    pub fn call_raw(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(deadline)?;
        let io_err = |source: io::Error| self.io_error(source);
        let mut written = 0;
        while written < bytes.len() {
            stream
                .set_write_timeout(Some(self.remaining(deadline)?))
                .map_err(io_err)?;
            match stream.write(&bytes[written..]) {
                Ok(0) => {
                    return Err(ClientError::Protocol(
                        "connection closed while sending".into(),
                    ));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let mut answer = Vec::with_capacity(512);
        let mut buf = [0u8; 8192];
        loop {
            stream
                .set_read_timeout(Some(self.remaining(deadline)?))
                .map_err(io_err)?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if let Some(end) = answer.iter().position(|&b| b == b'\n') {
                        answer.truncate(end);
                        return Ok(answer);
                    }
                    if answer.len() > MAX_RESPONSE {
                        return Err(ClientError::Protocol("answer too long".into()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if answer.is_empty() {
            Err(ClientError::Protocol(
                "connection closed without an answer".into(),
            ))
        } else {
            // Tolerate a missing final newline.
            Ok(answer)
        }
    }

    fn remaining(&self, deadline: Instant) -> Result<Duration, ClientError> {
        match deadline.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// Non-blocking connect, retried while the listen queue is full.
    fn connect(&self, deadline: Instant) -> Result<UnixStream, ClientError> {
        let addr = UnixAddr::new(&self.path).map_err(|e| ClientError::Connect {
            path: self.path.clone(),
            source: e.into(),
        })?;
        loop {
            let fd: OwnedFd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(|e| ClientError::Connect {
                path: self.path.clone(),
                source: e.into(),
            })?;
            match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => {
                    let stream = UnixStream::from(fd);
                    stream
                        .set_nonblocking(false)
                        .map_err(|source| ClientError::Io {
                            path: self.path.clone(),
                            source,
                        })?;
                    return Ok(stream);
                }
                // Listen queue full (daemon busy or restarting): wait a little.
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                    let left = self.remaining(deadline)?;
                    std::thread::sleep(left.min(Duration::from_millis(5)));
                }
                Err(e @ (Errno::ENOENT | Errno::ECONNREFUSED)) => {
                    return Err(ClientError::NotRunning {
                        path: self.path.clone(),
                        source: e.into(),
                    });
                }
                Err(e) => {
                    return Err(ClientError::Connect {
                        path: self.path.clone(),
                        source: e.into(),
                    });
                }
            }
        }
    }
}

/// One request as its wire line (JSON and a newline).
fn encode(request: &Request) -> Result<Vec<u8>, ClientError> {
    let mut line = serde_json::to_vec(request)
        .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// The answers that follow the first one on a connection that stays open
/// (`events` with `follow`): one per line, as they come, without a deadline.
pub struct Follow {
    reader: std::io::BufReader<UnixStream>,
    path: PathBuf,
}

impl Client {
    /// Sends one request that keeps its connection open: returns the first
    /// answer (within the timeout, as [`Client::call`]) and the answers that
    /// follow.
    pub fn follow(&self, request: &Request) -> Result<(Response, Follow), ClientError> {
        let line = encode(request)?;
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(deadline)?;
        let io_err = |source: io::Error| self.io_error(source);
        stream
            .set_write_timeout(Some(self.remaining(deadline)?))
            .map_err(io_err)?;
        stream.write_all(&line).map_err(io_err)?;
        stream
            .set_read_timeout(Some(self.remaining(deadline)?))
            .map_err(io_err)?;
        let mut follow = Follow {
            reader: std::io::BufReader::new(stream),
            path: self.path.clone(),
        };
        let first = match follow.next() {
            Some(r) => r.map_err(|e| match e {
                ClientError::Io { source, .. } => io_err(source),
                other => other,
            })?,
            None => {
                return Err(ClientError::Protocol(
                    "connection closed without an answer".into(),
                ));
            }
        };
        follow
            .reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(io_err)?;
        Ok((first, follow))
    }
}

impl Iterator for Follow {
    type Item = Result<Response, ClientError>;

    /// The next answer; `None` when the daemon closed the connection.
    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        let mut raw = Vec::with_capacity(512);
        let limit = MAX_RESPONSE as u64 + 1;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut raw);
        match read {
            Ok(0) => None,
            Ok(_) if raw.len() as u64 >= limit => {
                Some(Err(ClientError::Protocol("answer too long".into())))
            }
            Ok(_) => Some(serde_json::from_slice(&raw).map_err(|e| {
                let shown = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
                ClientError::Protocol(format!("{e}: {shown}"))
            })),
            Err(source) => Some(Err(ClientError::Io {
                path: self.path.clone(),
                source,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn sock(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("s.sock")
    }

    #[test]
    fn follow_reads_answers_until_the_daemon_hangs_up() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(sock(&dir)).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            let mut w = &s;
            w.write_all(b"{\"type\":\"success\",\"message\":\"one\"}\n")
                .unwrap();
            // later answers come after the first one's deadline
            std::thread::sleep(Duration::from_millis(400));
            w.write_all(b"{\"type\":\"success\",\"message\":\"two\"}\nnot json\n")
                .unwrap();
            line
        });
        let c = Client::new(sock(&dir), Duration::from_millis(200));
        let (first, mut rest) = c.follow(&Request::Release).unwrap();
        assert_eq!(first, Response::success("one"));
        assert_eq!(rest.next().unwrap().unwrap(), Response::success("two"));
        assert!(matches!(rest.next(), Some(Err(ClientError::Protocol(_)))));
        assert!(rest.next().is_none());
        assert!(server.join().unwrap().contains("release"));
    }

    #[test]
    fn no_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let c = Client::new(sock(&dir), Duration::from_millis(200));
        let e = c.call(&Request::Release).unwrap_err();
        assert!(e.is_not_running(), "{e}");
        assert!(e.to_string().contains("not running"));
    }

    #[test]
    fn stale_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        drop(UnixListener::bind(sock(&dir)).unwrap());
        let c = Client::new(sock(&dir), Duration::from_millis(200));
        assert!(c.call(&Request::Release).unwrap_err().is_not_running());
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(sock(&dir)).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(line, "{\"type\":\"release\"}\n");
            (&s).write_all(b"{\"type\":\"success\",\"message\":\"done\"}\n")
                .unwrap();
        });
        let c = Client::new(sock(&dir), Duration::from_secs(5));
        let r = c.call(&Request::Release).unwrap();
        assert_eq!(r, Response::success("done"));
        t.join().unwrap();
    }

    #[test]
    fn silent_daemon_times_out_on_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(sock(&dir)).unwrap();
        let c = Client::new(sock(&dir), Duration::from_millis(300));
        let start = Instant::now();
        let e = c.call(&Request::Release).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_millis(2000), "{took:?}");
        drop(l);
    }

    #[test]
    fn garbage_and_half_answers_are_protocol_errors() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(sock(&dir)).unwrap();
        let t = std::thread::spawn(move || {
            for reply in [&b"not json\n"[..], b"{\"type\":\"succ"] {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&s).read_line(&mut line).unwrap();
                (&s).write_all(reply).unwrap();
            }
        });
        let c = Client::new(sock(&dir), Duration::from_secs(5));
        assert!(matches!(
            c.call(&Request::Release),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            c.call(&Request::Release),
            Err(ClientError::Protocol(_))
        ));
        t.join().unwrap();
    }
}
