//! What `fairshare-ctl` tells the person running it when fairshared is
//! down or refuses a root-only command (issue 17.6), run as the real binary
//! against no daemon or a one-answer stand-in on a socket of the test's own.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

fn ctl(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fairshare-ctl"));
    c.env("FAIRSHARE_SOCKET", socket).args(args);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A socket path nobody listens on, in a directory anyone may search.
fn nobody_listens() -> PathBuf {
    std::env::temp_dir().join(format!("fairshare-ctl-test-{}.sock", std::process::id()))
}

/// Answers one request with `answer`; returns the request line it got.
fn stand_in(answer: &'static str) -> (tempfile::TempDir, PathBuf, JoinHandle<String>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fairshare.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let t = std::thread::spawn(move || {
        // no connection within 10 s (the client gave up first): no request
        let start = std::time::Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return format!("no request ({e})"),
            }
        };
        s.set_nonblocking(false).expect("blocking");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("read");
        s.write_all(answer.as_bytes()).expect("answer");
        s.write_all(b"\n").expect("answer");
        line
    });
    (dir, path, t)
}

#[test]
fn the_daemon_down_with_json_prints_a_json_error() {
    let out = ctl(&nobody_listens(), &["--json", "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "unreachable");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("fairshared is not running"),
        "{v}"
    );
    let plain = ctl(&nobody_listens(), &["status"]).output().expect("run");
    assert_eq!(plain.status.code(), Some(3));
    assert!(plain.stdout.is_empty());
    assert!(text(&plain.stderr).contains("fairshared is not running"));
}

/// As a user (the test runs as root in CI; otherwise it checks what the
/// running user gets).
#[test]
fn a_user_with_the_daemon_down_is_told_to_ask_their_admin() {
    let root = nix_is_root();
    let out: Output = match root {
        true => Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_fairshare-ctl"))
            .arg("status")
            .env("FAIRSHARE_SOCKET", nobody_listens())
            .output()
            .expect("setpriv (util-linux) runs fairshare-ctl as nobody"),
        false => ctl(&nobody_listens(), &["status"]).output().expect("run"),
    };
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ask your admin"), "{err}");
    assert!(!err.contains("systemctl"), "{err}");
    if root {
        let out = ctl(&nobody_listens(), &["status"]).output().expect("run");
        let err = text(&out.stderr);
        assert!(
            err.contains("start it with: systemctl start fairshared"),
            "{err}"
        );
    }
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_root_only_refusal_names_the_subcommand() {
    let (_dir, path, got) = stand_in(
        r#"{"type":"error","error":"permission denied: `set_user` is for root only (run fairshare-ctl with sudo)","code":"permission_denied"}"#,
    );
    let out = ctl(&path, &["set", "bob", "--cpu", "2"])
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`fairshare-ctl set` is for root only"),
        "{err}"
    );
    assert!(!err.contains("set_user"), "{err}");
    assert!(got.join().unwrap().contains(r#""type":"set_user""#));
}

#[test]
fn status_takes_the_user_by_position() {
    let (_dir, path, got) = stand_in(
        r#"{"type":"error","error":"permission denied: only root can see another user's allocation","code":"permission_denied"}"#,
    );
    let out = ctl(&path, &["status", "bob"]).output().expect("run");
    let line = got.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{e}: {line}; fairshare-ctl said: {}", text(&out.stderr)));
    assert_eq!(
        (v["type"].as_str(), v["user"].as_str()),
        (Some("status"), Some("bob"))
    );
    // not a root-only command: the daemon's own text
    assert!(text(&out.stderr).contains("only root can see another user's"));
}

/// Output into a pipe its reader closed (`fairshare-ctl … | head`) ends
/// the program quietly, the way other tools end: no panic, no exit 101.
#[test]
fn a_closed_pipe_ends_it_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let policy = dir.path().join("50-site.yaml");
    std::fs::write(
        &policy,
        "defaults: {cpu: 2, mem: 4G}\nmax: {cpu: 4, mem: 8G}\n",
    )
    .expect("policy");
    // `check` prints with println!, which panics on a closed pipe by default
    let mut child = Command::new(env!("CARGO_BIN_EXE_fairshare-ctl"))
        .arg("check")
        .arg(&policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.signal() == Some(13) || out.status.success(),
        "{:?}: {err}",
        out.status
    );
}
