//! `fs-attack`: a hostile client of fairshared, for the end-to-end tests.
//! Copied into the test host and run as an ordinary user.
//!
//! ```text
//! fs-attack idle N SECS      open N connections, send nothing, hold them SECS
//! fs-attack stall SECS       send half a request, then nothing, for SECS
//! fs-attack flood N          N resize requests back to back
//! fs-attack raw              send stdin as one request, print the answer
//! fs-attack serve MODE PATH  a fake fairshared on PATH for the PAM module:
//!                            answers every connection with `garbage`, not
//!                            at all (`slow`: holds it until the client
//!                            hangs up) or with `half` an answer, then
//!                            closes it; one socket for its whole life
//! ```
//!
//! Prints one line of counts (or the answer) for the test to check; `serve`
//! prints `connection N` as it takes each one.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/fairshare.sock";

fn answer(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).unwrap_or(1);
    match args.first().map(String::as_str) {
        Some("idle") => {
            let mut held = Vec::new();
            let (mut refused, mut failed) = (0, 0);
            for _ in 0..num(1) {
                match UnixStream::connect(SOCKET) {
                    Ok(s) => held.push(s),
                    Err(_) => failed += 1,
                }
            }
            // The daemon answers connections beyond the per-user cap at once
            // and hangs up; the ones it keeps stay silent.
            std::thread::sleep(Duration::from_millis(500));
            let mut open = 0;
            for s in &mut held {
                let _ = s.set_nonblocking(true);
                let mut b = [0u8; 256];
                match s.read(&mut b) {
                    Ok(0) => refused += 1,
                    Ok(_) => refused += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                    Err(_) => refused += 1,
                }
            }
            println!("held={open} refused={refused} connect_failed={failed}");
            std::thread::sleep(Duration::from_secs(num(2)));
        }
        Some("stall") => {
            let start = Instant::now();
            match UnixStream::connect(SOCKET) {
                Ok(mut s) => {
                    let _ = s.write_all(br#"{"type":"sta"#);
                    let a = answer(&mut s);
                    println!("closed_after_ms={} answer={a}", start.elapsed().as_millis());
                }
                Err(e) => println!("connect failed: {e}"),
            }
        }
        Some("flood") => {
            let (mut ok, mut limited, mut other) = (0, 0, 0);
            for i in 0..num(1) {
                let Ok(mut s) = UnixStream::connect(SOCKET) else {
                    other += 1;
                    continue;
                };
                let req = format!("{{\"type\":\"request_resources\",\"cpu\":{}}}\n", 1 + i % 2);
                let _ = s.write_all(req.as_bytes());
                let a = answer(&mut s);
                if a.contains("\"success\"") {
                    ok += 1;
                } else if a.contains("rate_limited") {
                    limited += 1;
                } else {
                    other += 1;
                }
            }
            println!("ok={ok} rate_limited={limited} other={other}");
        }
        Some("raw") => {
            let mut input = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut input);
            match UnixStream::connect(SOCKET) {
                Ok(mut s) => {
                    // The daemon may hang up before reading all of a huge request.
                    let _ = s.write_all(&input);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    println!("{}", answer(&mut s));
                }
                Err(e) => println!("connect failed: {e}"),
            }
        }
        Some("serve") => {
            let (Some(mode), Some(path)) = (args.get(1).cloned(), args.get(2)) else {
                eprintln!("usage: fs-attack serve garbage|slow|half PATH");
                std::process::exit(2);
            };
            let _ = std::fs::remove_file(path);
            let listener = match UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("cannot listen on {path}: {e}");
                    std::process::exit(1);
                }
            };
            // as the real socket: anyone may connect
            let _ =
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666));
            println!("listening on {path} ({mode})");
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                println!("connection {}", n + 1);
                let mode = mode.clone();
                std::thread::spawn(move || fake_answer(conn, &mode));
            }
        }
        _ => {
            eprintln!(
                "usage: fs-attack idle N SECS | stall SECS | flood N | raw < request | serve MODE PATH"
            );
            std::process::exit(2);
        }
    }
}

/// One connection to the fake daemon: read the request line, then answer
/// as `mode` says.
fn fake_answer(conn: UnixStream, mode: &str) {
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let mut w = &conn;
    match mode {
        "garbage" => {
            let _ = w.write_all(b"garbage \xff\n");
        }
        "half" => {
            let _ = w.write_all(br#"{"type":"succ"#);
        }
        // slow: never answer; wait for the client to give up
        _ => {
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    }
}
