//! Request throughput: `clients` threads, each sending one request per
//! connection as fast as answers come (fairshare's own blocking client), to
//! the daemon and to a trivial echo server with the same runtime shape (tokio,
//! two workers, one line per connection). Rounds alternate between the two.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::report::{Report, Row, Samples, verdict};
use crate::stats::median;
use crate::{Result, fail};

/// `throughput`: answers per second, daemon and echo floor, per round.
#[derive(Serialize, Deserialize)]
pub struct ThroughputSamples {
    pub clients: usize,
    pub secs: f64,
    pub request: String,
    pub daemon_per_sec: Vec<f64>,
    pub echo_per_sec: Vec<f64>,
    pub errors: u64,
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
    pub request: String,
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

pub fn run(s: &Setup) -> Result<()> {
    let mut line = s.request.clone().into_bytes();
    line.push(b'\n');
    // The daemon answers `status` with a status_info line.
    let expect_daemon = br#"{"type":"status_info""#;
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
        measure(s, &line, expect_daemon)
    } else {
        fail("the echo server did not start")
    };
    let _ = echo.kill();
    let _ = echo.wait();
    let _ = std::fs::remove_file(&s.echo_socket);
    let (daemon, echo_rates, errors) = result?;
    ThroughputSamples {
        clients: s.clients,
        secs: s.secs,
        request: s.request.clone(),
        daemon_per_sec: daemon,
        echo_per_sec: echo_rates,
        errors,
    }
    .save(&s.dir)
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    const TARGET: &str = "≥ 0.5× the echo floor";
    const MIN_RATIO: f64 = 0.5;
    let Some(v) = ThroughputSamples::load(dir)? else {
        r.row(Row::missing("request throughput", TARGET));
        return Ok(());
    };
    let (d, e) = (&v.daemon_per_sec, &v.echo_per_sec);
    let ratio = median(d).zip(median(e)).map(|(a, b)| a / b);
    r.row(Row {
        figure: format!(
            "request throughput: `status`, {} clients (rounds={})",
            v.clients,
            d.len()
        ),
        median: median(d).map_or("—".into(), |x| format!("{x:.0}/s")),
        p99: "—".into(),
        baseline: median(e).map_or("—".into(), |x| format!("{x:.0}/s echo")),
        ratio: ratio.map_or("—".into(), |r| format!("{r:.3}×")),
        target: TARGET.into(),
        verdict: verdict(ratio.map(|r| r >= MIN_RATIO)),
    });
    r.note(format!(
        "request throughput: {} threads each sending `{}` on a fresh connection per request (fairshare's blocking client), as root (non-root users are rate-limited to 50 requests/s each by design), for {} s per round, alternating with a tokio echo server (two workers, like fairshared; one line per connection) on another Unix socket in the container. Errors: {}.",
        v.clients, v.request, v.secs, v.errors
    ));
    Ok(())
}

type Rates = (Vec<f64>, Vec<f64>, u64);

fn measure(s: &Setup, line: &[u8], expect_daemon: &[u8]) -> Result<Rates> {
    // warm both up
    hammer(&s.socket, s.clients, 0.5, line, expect_daemon);
    hammer(&s.echo_socket, s.clients, 0.5, line, line.trim_ascii_end());
    let (mut daemon, mut echo, mut errors) = (Vec::new(), Vec::new(), 0);
    for round in 0..s.rounds {
        for d in [round % 2 == 0, round % 2 == 1] {
            if d {
                let (r, e) = hammer(&s.socket, s.clients, s.secs, line, expect_daemon);
                daemon.push(r);
                errors += e;
            } else {
                let (r, e) = hammer(
                    &s.echo_socket,
                    s.clients,
                    s.secs,
                    line,
                    line.trim_ascii_end(),
                );
                echo.push(r);
                errors += e;
            }
        }
        eprintln!(
            "throughput round {round}: daemon {:.0}/s, echo {:.0}/s",
            daemon.last().copied().unwrap_or(0.0),
            echo.last().copied().unwrap_or(0.0)
        );
    }
    Ok((daemon, echo, errors))
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
