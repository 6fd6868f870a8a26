//! Daemon memory at many users, with the FAKE systemd backend.
//!
//! A child process (`memory-daemon`) runs fairshared's own socket server and
//! request handling (`fairshared::server::serve` over `Service`) with the
//! in-memory `Fake` systemd, a synthetic user directory and a real state file.
//! The parent forks one sleeping process per user (each user's session
//! process, which the daemon watches through a pidfd, as it does for real
//! logins), then opens one session per user through the socket, exactly as the
//! PAM module does, and reads the child's RSS. Only systemd is fake here: the
//! ledger, state file, pid watches, locks and server are the real ones. The
//! fake also keeps a record of every call it got (about 100 bytes per user),
//! which is counted in.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fairshare_policy::{Identity, Policy};
use fairshare_proto::Client;
use fairshare_proto::wire::{Request, Response, SessionOpen, UserRef};
use fairshared::cgroup::Cgroups;
use fairshared::service::{Directory, Service};
use fairshared::state::StateFile;
use fairshared::systemd::Fake;
use fairshared::users::LookupError;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};
use serde_json::json;

use crate::idle::status_kib;
use crate::{Result, fail, write_json};

/// Synthetic users start here, far from real accounts.
const FIRST_UID: u32 = 100_000;

const POLICY: &str = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\n";

struct Synthetic {
    users: u32,
}

impl Directory for Synthetic {
    fn by_uid(&self, uid: u32) -> std::result::Result<Option<Identity>, LookupError> {
        Ok((FIRST_UID..FIRST_UID + self.users)
            .contains(&uid)
            .then(|| Identity {
                uid,
                name: format!("u{uid}"),
                groups: vec![format!("u{uid}"), "users".into()],
            }))
    }
    fn by_name(&self, name: &str) -> std::result::Result<Option<Identity>, LookupError> {
        match name.strip_prefix('u').and_then(|n| n.parse::<u32>().ok()) {
            Some(uid) => self.by_uid(uid),
            None => Ok(None),
        }
    }
}

fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.max(65_536);
        if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard);
        }
    }
}

/// The daemon half: fairshared's server and service with the fake backend.
pub fn daemon(socket: &Path, state: &Path, users: u32) -> Result<()> {
    raise_file_limit();
    // the same allocator setting and runtime shape as fairshared's main
    fairshared::host::keep_heap_small();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    let policy = Policy::from_sources(&[("bench.yaml".into(), POLICY.into())])
        .map_err(|e| format!("policy: {e}"))?;
    let state = StateFile::open(state)?;
    rt.block_on(async {
        let service = Arc::new(Service::new(
            Fake::default(),
            Arc::new(Synthetic { users }),
            policy,
            fairshared::host::resources(),
            Cgroups::detect("/sys/fs/cgroup"),
            Some(state),
        ));
        let listener = fairshared::server::bind(socket)?;
        let (_stop, rx) = tokio::sync::watch::channel(false);
        fairshared::server::serve(listener, service, rx).await;
        Ok(())
    })
}

/// Forks `n` processes that sleep until killed (or until we die).
fn holders(n: u32) -> Result<Vec<Pid>> {
    let me = nix::unistd::getpid();
    let mut pids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        // SAFETY: we are single-threaded here (no runtime or thread started
        // yet), and the child only makes async-signal-safe calls.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != me.as_raw() {
                    libc::_exit(0);
                }
                loop {
                    libc::pause();
                }
            },
            Ok(ForkResult::Parent { child }) => pids.push(child),
            Err(e) => {
                reap(&pids);
                return fail(format!("fork failed after {} holders: {e}", pids.len()));
            }
        }
    }
    Ok(pids)
}

fn reap(pids: &[Pid]) {
    for p in pids {
        let _ = kill(*p, Signal::SIGKILL);
    }
    for p in pids {
        let _ = waitpid(*p, None);
    }
}

pub fn run(users: u32, clients: usize, out: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fairshare-bench-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let pids = holders(users)?;
    let forked_secs = t.elapsed().as_secs_f64();
    let result = measure(users, clients, &dir, &pids);
    reap(&pids);
    let _ = std::fs::remove_dir_all(&dir);
    let mut v = result?;
    v["fork_secs"] = json!(forked_secs);
    write_json(out, &v)
}

fn measure(users: u32, clients: usize, dir: &Path, pids: &[Pid]) -> Result<serde_json::Value> {
    let socket = dir.join("fairshare.sock");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("memory-daemon")
        .arg("--socket")
        .arg(&socket)
        .arg("--state")
        .arg(dir.join("state"))
        .arg(format!("--users={users}"))
        .stdin(Stdio::null())
        .spawn()?;
    let r = drive(users, clients, &socket, child.id(), pids);
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn drive(
    users: u32,
    clients: usize,
    socket: &Path,
    daemon: u32,
    pids: &[Pid],
) -> Result<serde_json::Value> {
    let client = Client::new(socket, Duration::from_secs(60));
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        client.call(&Request::List).is_ok()
    });
    if !up {
        return fail("the memory daemon did not come up");
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle = status_kib(daemon, "VmRSS:");
    let next = AtomicUsize::new(0);
    let errors = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None::<String>);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..clients {
            sc.spawn(|| {
                let c = Client::new(socket, Duration::from_secs(60));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= users as usize {
                        break;
                    }
                    let uid = FIRST_UID + i as u32;
                    let req = Request::SessionOpen(SessionOpen {
                        uid,
                        pid: pids[i].as_raw() as u32,
                        user: Some(format!("u{uid}")),
                        service: Some("sshd".into()),
                        rhost: Some("10.0.0.1".into()),
                        session_id: Some(format!("{}", i + 1)),
                        ..SessionOpen::default()
                    });
                    match c.call(&req) {
                        Ok(Response::Success(s)) if s.allocation.is_some() => {}
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(format!("{other:?}"));
                            }
                        }
                    }
                }
            });
        }
    });
    let drive_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss = status_kib(daemon, "VmRSS:");
    let hwm = status_kib(daemon, "VmHWM:");
    let fds = std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    // one user, checked through the daemon
    let probe = match client.call(&Request::Status {
        user: Some(UserRef::Uid(FIRST_UID + users - 1)),
    })? {
        Response::StatusInfo(s) => s.sessions,
        other => return fail(format!("status: {other:?}")),
    };
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!(
            "memory: {errors} session opens failed, first: {:?}",
            first_error.lock().ok().and_then(|f| f.clone())
        );
    }
    Ok(json!({
        "backend": "fake (fairshared::systemd::Fake); everything else real",
        "users": users,
        "clients": clients,
        "errors": errors,
        "drive_secs": drive_secs,
        "idle_rss_kib": idle,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "open_fds": fds,
        "last_user_sessions": probe,
    }))
}
