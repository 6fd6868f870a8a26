//! `fs-flood`: floods fairshared as an ordinary user, for the end-to-end
//! tests of `tests/e2e/tests/sessions.rs`. Copied into the test host and run
//! as an ordinary user.
//!
//! ```text
//! fs-flood status USER SECS THREADS   `status` about USER, back to back
//! fs-flood connect SECS THREADS       connections as fast as they open: half
//!                                     closed at once, half sent a line that
//!                                     is not JSON
//! fs-flood resize SECS THREADS        resizes back to back (cpu 1 and 2 in turn)
//! ```
//!
//! Each prints one line of counts for the test to check. With
//! `FS_FLOOD_STOP=PATH`, each stops early once PATH exists.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/fairshare.sock";

/// What an answer was, by its `type` and `code`.
fn kind(answer: &str) -> String {
    let field = |name: &str| {
        answer
            .split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string)
    };
    match (field("type"), field("code")) {
        (Some(t), Some(c)) => format!("{t}:{c}"),
        (Some(t), None) => t,
        _ if answer.is_empty() => "closed".into(),
        _ => "garbage".into(),
    }
}

fn ask(line: &[u8]) -> String {
    let Ok(mut s) = UnixStream::connect(SOCKET) else {
        return "connect_failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(line);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    kind(String::from_utf8_lossy(&buf).trim())
}

/// Runs `work` on `threads` threads for `secs` seconds; prints the counts.
fn flood(secs: u64, threads: u64, work: impl Fn(u64) -> String + Send + Sync + 'static) {
    let counts = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let work = Arc::new(work);
    let end = Instant::now() + Duration::from_secs(secs);
    let stop = std::env::var_os("FS_FLOOD_STOP").map(std::path::PathBuf::from);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (counts, work, stop) = (counts.clone(), work.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut mine = BTreeMap::<String, u64>::new();
                let mut i = 0;
                while Instant::now() < end && !stop.as_ref().is_some_and(|s| s.exists()) {
                    *mine.entry(work(i)).or_default() += 1;
                    i += 1;
                }
                if let Ok(mut c) = counts.lock() {
                    for (k, v) in mine {
                        *c.entry(k).or_default() += v;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let counts = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let total: u64 = counts.values().sum();
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("total={total} {}", parts.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).unwrap_or(1);
    match args.first().map(String::as_str) {
        Some("status") => {
            let user = args.get(1).cloned().unwrap_or_default();
            let line = format!("{{\"type\":\"status\",\"user\":\"{user}\"}}\n");
            flood(num(2), num(3), move |_| ask(line.as_bytes()));
        }
        Some("connect") => flood(num(1), num(2), |i| {
            let Ok(mut s) = UnixStream::connect(SOCKET) else {
                return "connect_failed".into();
            };
            if i % 2 == 1 {
                let _ = s.write_all(b"{not json\n");
            }
            "connected".into()
        }),
        Some("resize") => flood(num(1), num(2), |i| {
            ask(format!("{{\"type\":\"request_resources\",\"cpu\":{}}}\n", 1 + i % 2).as_bytes())
        }),
        _ => {
            eprintln!(
                "usage: fs-flood status USER SECS THREADS | connect SECS THREADS | resize SECS THREADS"
            );
            std::process::exit(2);
        }
    }
}
