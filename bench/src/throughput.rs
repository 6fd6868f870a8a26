//! Request throughput: `clients` threads, each sending one request per
//! connection as fast as answers come (fairshare's own blocking client), to
//! the daemon and to a trivial echo server with the same runtime shape (tokio,
//! two workers, one line per connection).
//!
//! Two daemon figures: `status` of a limited user with a live slice (the
//! user lookup and the usage reads from the slice's cgroup files, what a
//! user's `fairshare-ctl status` costs), and root's own `status` (root is
//! exempt and has no slice, so no usage is read: the cheapest request). Both
//! are sent as root: a user asking for themselves is rate-limited to 50
//! requests/s by design. Rounds rotate the three arms.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use fairshare_proto::wire::{Request, Response, SessionClose, SessionOpen, UserRef};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::report::{Report, Row, Samples, verdict};
use crate::stats::median;
use crate::view::{Host, status};
use crate::{Result, fail};

/// `throughput`: answers per second per round, for each arm.
#[derive(Serialize, Deserialize)]
pub struct ThroughputSamples {
    pub clients: usize,
    pub secs: f64,
    /// The limited user whose `status` is asked.
    pub user: String,
    /// What fairshared said of them just before the rounds: sessions
    /// counted, limits applied, and the usage read from their slice.
    pub user_sessions: u32,
    pub user_active: bool,
    pub user_tasks_current: Option<u64>,
    pub user_memory_current: Option<u64>,
    pub user_request: String,
    pub root_request: String,
    pub user_per_sec: Vec<f64>,
    pub root_per_sec: Vec<f64>,
    pub echo_per_sec: Vec<f64>,
    pub user_errors: u64,
    pub root_errors: u64,
    pub echo_errors: u64,
}

impl Samples for ThroughputSamples {
    const FILE: &'static str = "throughput.json";
}

pub struct Setup {
    pub socket: PathBuf,
    pub echo_socket: PathBuf,
    pub clients: usize,
    pub secs: f64,
    pub rounds: usize,
    /// The limited user, and a unit whose main process runs in their slice
    /// (it becomes their session's process for the measurement).
    pub user: String,
    pub hold_unit: String,
    /// The results directory.
    pub dir: PathBuf,
}

/// `(answers per second, errors)` for `clients` clients over `secs`.
fn hammer(socket: &Path, clients: usize, secs: f64, line: &[u8], expect: &[u8]) -> (f64, u64) {
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    std::thread::scope(|sc| {
        for _ in 0..clients {
            sc.spawn(|| {
                let c = Client::new(socket, Duration::from_secs(5));
                while Instant::now() < until {
                    match c.call_raw(line) {
                        Ok(a) if a.starts_with(expect) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let took = start.elapsed().as_secs_f64();
    (
        ok.load(Ordering::Relaxed) as f64 / took,
        errors.load(Ordering::Relaxed),
    )
}

const SESSION_ID: &str = "bench-throughput";

/// Opens a session for `user` whose process is `hold_unit`'s main process,
/// so the user is tracked and limited while the rounds run.
fn open_session(client: &Client, s: &Setup) -> Result<(u32, u32)> {
    let uid = crate::alloc::uid_of(&s.user)?;
    let pid = Host::connect()?.main_pid(&s.hold_unit)?;
    if pid == 0 {
        return fail(format!("{} has no main process", s.hold_unit));
    }
    let open = Request::SessionOpen(SessionOpen {
        uid,
        pid,
        user: Some(s.user.clone()),
        service: Some("fairshare-bench".into()),
        session_id: Some(SESSION_ID.into()),
        ..SessionOpen::default()
    });
    match client.call(&open)? {
        Response::Success(x) if x.allocation.is_some() => Ok((uid, pid)),
        other => fail(format!("session_open for {}: {other:?}", s.user)),
    }
}

pub fn run(s: &Setup) -> Result<()> {
    let client = Client::new(&s.socket, Duration::from_secs(5));
    let (uid, pid) = open_session(&client, s)?;
    let result = measure_all(&client, s);
    let close = Request::SessionClose(SessionClose {
        uid,
        pid,
        session_id: Some(SESSION_ID.into()),
    });
    let closed = client.call(&close);
    let samples = result?;
    match closed? {
        Response::Success(_) => {}
        other => return fail(format!("session_close for {}: {other:?}", s.user)),
    }
    samples.save(&s.dir)
}

fn measure_all(client: &Client, s: &Setup) -> Result<ThroughputSamples> {
    let st = status(client, &s.user)?;
    if st.allocated_cpu.is_none()
        || !st.active
        || st.sessions == 0
        || st.usage.tasks_current.is_none()
    {
        return fail(format!(
            "{} is not a limited user with a live slice: allocation {:?}, limits applied {}, {} sessions, usage {:?}",
            s.user, st.allocated_cpu, st.active, st.sessions, st.usage
        ));
    }
    let user_request = serde_json::to_string(&Request::Status {
        user: Some(UserRef::Name(s.user.clone())),
    })?;
    let root_request = serde_json::to_string(&Request::Status { user: None })?;
    let _ = std::fs::remove_file(&s.echo_socket);
    let mut echo = Command::new(std::env::current_exe()?)
        .arg("echo-server")
        .arg("--socket")
        .arg(&s.echo_socket)
        .stdin(Stdio::null())
        .spawn()?;
    let probe = Client::new(&s.echo_socket, Duration::from_millis(200));
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        probe.call_raw(b"ping\n").is_ok()
    });
    let result = if up {
        measure(s, &user_request, &root_request)
    } else {
        fail("the echo server did not start")
    };
    let _ = echo.kill();
    let _ = echo.wait();
    let _ = std::fs::remove_file(&s.echo_socket);
    let [user, root, echo] = result?;
    Ok(ThroughputSamples {
        clients: s.clients,
        secs: s.secs,
        user: s.user.clone(),
        user_sessions: st.sessions,
        user_active: st.active,
        user_tasks_current: st.usage.tasks_current,
        user_memory_current: st.usage.memory_current,
        user_request,
        root_request,
        user_per_sec: user.0,
        root_per_sec: root.0,
        echo_per_sec: echo.0,
        user_errors: user.1,
        root_errors: root.1,
        echo_errors: echo.1,
    })
}

/// Rates per round and errors, of one arm.
type Rates = (Vec<f64>, u64);

fn measure(s: &Setup, user_request: &str, root_request: &str) -> Result<[Rates; 3]> {
    let line = |r: &str| {
        let mut l = r.as_bytes().to_vec();
        l.push(b'\n');
        l
    };
    let (user_line, root_line) = (line(user_request), line(root_request));
    // The daemon answers `status` with a status_info line; the echo server
    // with the line itself.
    let status_info: &[u8] = br#"{"type":"status_info""#;
    type Arm<'a> = (&'a Path, &'a [u8], &'a [u8]);
    let arms: [Arm; 3] = [
        (&s.socket, &user_line, status_info),
        (&s.socket, &root_line, status_info),
        (&s.echo_socket, &user_line, user_line.trim_ascii_end()),
    ];
    for (socket, l, expect) in arms {
        hammer(socket, s.clients, 0.5, l, expect);
    }
    let mut out: [Rates; 3] = Default::default();
    for round in 0..s.rounds {
        for k in 0..arms.len() {
            let i = (k + round) % arms.len();
            let (socket, l, expect) = arms[i];
            let (r, e) = hammer(socket, s.clients, s.secs, l, expect);
            out[i].0.push(r);
            out[i].1 += e;
        }
        eprintln!(
            "throughput round {round}: status of {} {:.0}/s, root's own status {:.0}/s, echo {:.0}/s",
            s.user,
            out[0].0.last().copied().unwrap_or(0.0),
            out[1].0.last().copied().unwrap_or(0.0),
            out[2].0.last().copied().unwrap_or(0.0)
        );
    }
    Ok(out)
}

const TARGET: &str = "≥ 0.5× the echo floor; 0 errors";
const MIN_RATIO: f64 = 0.5;

/// A limited user's `status` reads their slice's usage (a dozen cgroup
/// files, see the probe note): reported against the echo floor, with no
/// target of its own.
const USER_TARGET: &str = "reported (reads the slice's usage); 0 errors";

fn rate_row(figure: String, d: &[f64], e: &[f64], errors: u64, target: Option<f64>) -> Row {
    let ratio = median(d).zip(median(e)).map(|(a, b)| a / b);
    Row {
        figure,
        median: median(d).map_or("—".into(), |x| format!("{x:.0}/s")),
        p99: "—".into(),
        baseline: median(e).map_or("—".into(), |x| format!("{x:.0}/s echo")),
        ratio: ratio.map_or("—".into(), |r| format!("{r:.3}×")),
        target: if target.is_some() {
            TARGET
        } else {
            USER_TARGET
        }
        .into(),
        verdict: if errors > 0 {
            format!("MISSED ({errors} errors)")
        } else if let Some(min) = target {
            verdict(ratio.map(|r| r >= min))
        } else {
            "reported".into()
        },
    }
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    let Some(v) = ThroughputSamples::load(dir)? else {
        r.row(Row::missing(
            "request throughput: `status` of a limited user with a live slice",
            USER_TARGET,
        ));
        r.row(Row::missing(
            "request throughput: root's own `status` (no slice, no usage reads)",
            TARGET,
        ));
        return Ok(());
    };
    let e = &v.echo_per_sec;
    r.row(rate_row(
        format!(
            "request throughput: `status` of a limited user with a live slice ({}), {} clients (rounds={})",
            v.user,
            v.clients,
            v.user_per_sec.len()
        ),
        &v.user_per_sec,
        e,
        v.user_errors + v.echo_errors,
        None,
    ));
    r.row(rate_row(
        format!(
            "request throughput: root's own `status` (exempt, no slice: no usage reads), {} clients (rounds={})",
            v.clients,
            v.root_per_sec.len()
        ),
        &v.root_per_sec,
        e,
        v.root_errors + v.echo_errors,
        Some(MIN_RATIO),
    ));
    r.note(format!(
        "request throughput: {} threads each sending one request per connection (fairshare's blocking client) for {} s per round, rounds rotating three arms: `{}` (a limited user's status: {} tracked with {} session(s), limits applied: {}, usage read from the slice: {} tasks, {} bytes of memory, checked before the rounds), root's own `{}` (root is exempt and has no slice, so fairshared reads no usage: the cheapest request), and a tokio echo server (two workers, like fairshared; one line per connection) on another Unix socket in the container. All sent as root: a user asking for themselves is rate-limited to 50 requests/s by design. The user's session is opened for the rounds (as root, its process a sleeping service in their slice) and closed after. Errors: {} (user), {} (root), {} (echo).",
        v.clients,
        v.secs,
        v.user_request,
        v.user,
        v.user_sessions,
        v.user_active,
        v.user_tasks_current.map_or("?".into(), |x| x.to_string()),
        v.user_memory_current.map_or("?".into(), |x| x.to_string()),
        v.root_request,
        v.user_errors,
        v.root_errors,
        v.echo_errors
    ));
    Ok(())
}

/// The echo floor: per connection, read one line and send it back.
pub fn echo_server(socket: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served: std::io::Result<()> = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let mut s = BufReader::new(stream);
                let mut l = Vec::with_capacity(256);
                if s.read_until(b'\n', &mut l).await.is_ok() {
                    let mut stream = s.into_inner();
                    let _ = stream.write_all(&l).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    served?;
    Ok(())
}
