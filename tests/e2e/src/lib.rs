//! Helpers for the end-to-end tests: a handle on the running test host.
//!
//! The test host (`tests/testhost/testhost.sh up`) is a container whose PID 1
//! is a real systemd, with logind, D-Bus, sshd on 127.0.0.1 and pamtester.
//! These helpers run commands in it, log users in over ssh and read the
//! cgroup files of their slices. Tests assert on those files and on
//! `/proc/PID/cgroup`, never only on what fairshared says.
//!
//! Every test takes the [`Host`] lock, so tests never overlap even when the
//! harness runs them on several threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod guest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

/// Test users of the host (see testhost.sh).
pub const TESTUSER: (&str, u32) = ("testuser", 1001);
pub const TESTUSER2: (&str, u32) = ("testuser2", 1002);
pub const STUDENT: (&str, u32) = ("student1", 1003);
pub const TESTUSER3: (&str, u32) = ("testuser3", 1004);
pub const SVCUSER: (&str, u32) = ("svcuser", 990);
pub const ALL_UIDS: [u32; 5] = [1001, 1002, 1003, 1004, 990];
/// Their names, in the same order.
pub const ALL_USERS: [&str; 5] = ["testuser", "testuser2", "student1", "testuser3", "svcuser"];

/// The result of a command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    /// Panics (with everything printed) unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "command failed: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.stdout, self.stderr
        );
        self
    }

    pub fn out(&self) -> &str {
        self.stdout.trim()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.what, self.stdout))
    }
}

pub struct Host {
    script: PathBuf,
    root: PathBuf,
    ssh_args: Vec<String>,
    _guard: MutexGuard<'static, ()>,
}

/// Runs `c` to the end (stdin from `stdin`, else none); `what` names it in failures.
pub(crate) fn run(c: &mut Command, what: String, stdin: Option<&[u8]>) -> Out {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(bytes) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(bytes).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        what,
    }
}

/// The word right after `marker` in `text`, parsed (`ok=12 rate_limited=3`).
#[track_caller]
pub fn value_after<T: std::str::FromStr>(text: &str, marker: &str) -> T {
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in: {text}"))
}

/// Waits until `f` returns `Some`, or panics after `timeout` saying `what`.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The v1 cgroup limits of a user's slice, read from the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceFiles {
    /// `cpu.cfs_quota_us` (period 100000), `None` if the cgroup does not exist
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    /// `memory.limit_in_bytes`
    pub mem_limit: Option<u64>,
    /// `pids.max` (`max` shown as u64::MAX)
    pub pids_max: Option<u64>,
}

/// The policy most tests start from.
pub const BASE_POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
max:
  cpu: 8
  mem: 32G
capacity:
  cpu: 64
  mem: 256G
";

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

impl Host {
    /// The running test host. Panics with what to do if it is not up.
    pub fn get() -> Host {
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let script = std::env::var_os("FAIRSHARE_TESTHOST")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../testhost/testhost.sh")
            });
        let root = run(
            Command::new(&script).arg("root"),
            "testhost.sh root".into(),
            None,
        );
        assert_eq!(
            root.code, 0,
            "the test host is not running; start it with: sudo tests/testhost/testhost.sh up && sudo tests/testhost/testhost.sh install target/release\n{}",
            root.stderr
        );
        let args = run(
            Command::new(&script).arg("ssh-args"),
            "testhost.sh ssh-args".into(),
            None,
        )
        .ok();
        Host {
            root: PathBuf::from(root.out()),
            ssh_args: args.stdout.lines().map(str::to_string).collect(),
            script,
            _guard: guard,
        }
    }

    /// A host path for a path inside the container.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Runs a shell command inside as root (nsenter; for systemctl, cat, …).
    pub fn sh(&self, cmd: &str) -> Out {
        let mut c = Command::new(&self.script);
        c.args(["nsexec", "sh", "-c", cmd]);
        run(&mut c, format!("[container] {cmd}"), None)
    }

    /// Runs a shell command inside as a proper transient service (its own cgroup).
    pub fn exec(&self, cmd: &str) -> Out {
        let mut c = Command::new(&self.script);
        c.args(["exec", "sh", "-c", cmd]);
        run(&mut c, format!("[container service] {cmd}"), None)
    }

    fn ssh_command(&self, user: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(&self.ssh_args)
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd);
        c
    }

    /// Logs `user` in over ssh and runs `cmd` in their login shell.
    pub fn ssh(&self, user: &str, cmd: &str) -> Out {
        run(
            &mut self.ssh_command(user, cmd),
            format!("[ssh {user}] {cmd}"),
            None,
        )
    }

    /// Starts `cmd` as `user` over ssh in the background; its stdout is piped.
    pub fn ssh_spawn(&self, user: &str, cmd: &str) -> Child {
        let mut c = self.ssh_command(user, cmd);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c.spawn()
            .unwrap_or_else(|e| panic!("cannot start ssh: {e}"))
    }

    pub fn ssh_stdin(&self, user: &str, cmd: &str, stdin: &[u8]) -> Out {
        run(
            &mut self.ssh_command(user, cmd),
            format!("[ssh {user}] {cmd}"),
            Some(stdin),
        )
    }

    /// Keeps a login session of `user` open until dropped (so their slice
    /// stays active and its cgroup files can be read). Returns once the
    /// session's shell runs.
    pub fn session(&self, user: &str) -> Session {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "e2e-hold-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut c = self.ssh_command(user, &format!("exec -a {tag} sleep 600"));
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().unwrap();
        let pid = wait_for(
            &format!("a session of {user}"),
            Duration::from_secs(20),
            || {
                let o = self.sh(&format!("pgrep -f '^{tag}' | head -1"));
                o.out().parse::<u32>().ok()
            },
        );
        Session {
            child: Some(child),
            script: self.script.clone(),
            tag,
            pid,
        }
    }

    /// Reads a file inside the container.
    pub fn read(&self, inside: &str) -> Option<String> {
        std::fs::read_to_string(self.path(inside)).ok()
    }

    pub fn write(&self, inside: &str, content: &str) {
        let p = self.path(inside);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    fn num<T: std::str::FromStr>(&self, inside: &str) -> Option<T> {
        let t = self.read(inside)?;
        let t = t.trim();
        if t == "max" {
            return "18446744073709551615".parse().ok();
        }
        t.parse().ok()
    }

    /// The limits in the v1 cgroup files of `user-UID.slice`.
    pub fn slice(&self, uid: u32) -> SliceFiles {
        let s = format!("user.slice/user-{uid}.slice");
        SliceFiles {
            cpu_quota: self.num(&format!("/sys/fs/cgroup/cpu/{s}/cpu.cfs_quota_us")),
            cpu_period: self.num(&format!("/sys/fs/cgroup/cpu/{s}/cpu.cfs_period_us")),
            mem_limit: self.num(&format!("/sys/fs/cgroup/memory/{s}/memory.limit_in_bytes")),
            pids_max: self.num(&format!("/sys/fs/cgroup/pids/{s}/pids.max")),
        }
    }

    /// Waits until the slice's files show the given CPUs (as quota), memory
    /// and tasks.
    #[track_caller]
    pub fn expect_slice(&self, uid: u32, cpus_milli: i64, mem: u64, tasks: u64) -> SliceFiles {
        let want_quota = cpus_milli * 100;
        let mut last = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let f = self.slice(uid);
            if f.cpu_quota == Some(want_quota)
                && f.mem_limit == Some(mem)
                && f.pids_max == Some(tasks)
            {
                assert_eq!(f.cpu_period, Some(100_000));
                return f;
            }
            last = Some(f);
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "user-{uid}.slice files: want cpu.cfs_quota_us={want_quota} memory.limit_in_bytes={mem} pids.max={tasks}, got {last:?}"
        );
    }

    /// Stops fairshared, forgets all state and every limit set on the test
    /// users' slices, installs `policy` and starts fairshared again.
    pub fn fresh_daemon(&self, policy: &str) {
        self.sh("systemctl stop fairshared.service fairshared.socket 2>/dev/null; systemctl reset-failed fairshared.service 2>/dev/null; true");
        self.sh("pkill -KILL -x fairshared; rm -rf /var/lib/fairshare/* /etc/fairshare/policy.d/*; rm -f /run/fairshare.sock");
        let slices: Vec<String> = ALL_UIDS.iter().map(|u| format!("user-{u}.slice")).collect();
        self.sh(&format!(
            "systemctl revert {} >/dev/null 2>&1; true",
            slices.join(" ")
        ));
        self.logout_all();
        self.write("/etc/fairshare/policy.d/50-test.yaml", policy);
        self.start_daemon();
    }

    /// Starts fairshared (the installed unit) and waits for its socket.
    pub fn start_daemon(&self) {
        self.sh("systemctl start fairshared.service").ok();
        self.wait_socket();
    }

    pub fn wait_socket(&self) {
        wait_for("fairshared's socket", Duration::from_secs(15), || {
            let o = self.sh("echo '{\"type\":\"list\"}' | nc -U -N /run/fairshare.sock");
            (o.code == 0 && o.out().contains("user_list")).then_some(())
        });
    }

    /// Ends every session of the test users.
    pub fn logout_all(&self) {
        self.sh(&format!(
            "for u in {}; do loginctl terminate-user $u 2>/dev/null; done; true",
            ALL_USERS.join(" ")
        ));
        // Processes a test left behind in a session that is already closing
        // are not killed by terminate-user (KillUserProcesses=no): end them.
        self.sh("sleep 0.3; pkill -KILL -U 1001,1002,1003,1004,990; true");
        wait_for(
            "test users to be logged out",
            Duration::from_secs(15),
            || {
                let o = self
                    .sh("pgrep -u 1001,1002,1003,1004,990 >/dev/null && echo busy || echo idle");
                (o.out() == "idle").then_some(())
            },
        );
    }

    /// `fairshare-ctl ARGS` as root inside.
    pub fn ctl(&self, args: &str) -> Out {
        self.sh(&format!("fairshare-ctl {args}"))
    }
}

/// Runs a shell command in the test host when dropped: undoes a test's
/// change even when the test fails.
pub struct Undo<'a>(pub &'a Host, pub String);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        self.0.sh(&self.1);
    }
}

/// What fairshared tracks for `uid` (`None`: nothing).
pub fn tracked(h: &Host, uid: u32) -> Option<serde_json::Value> {
    let list = h.ctl("--json list").ok().json();
    list["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["uid"] == uid).cloned())
}

/// How many of `uid`'s tracked sessions came from `service` (e.g. sshd).
pub fn sessions_from(h: &Host, uid: u32, service: &str) -> usize {
    tracked(h, uid).map_or(0, |u| {
        u["session_list"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|s| s["service"] == service).count())
    })
}

/// An open login session; logs out when dropped.
pub struct Session {
    child: Option<Child>,
    script: PathBuf,
    tag: String,
    /// The pid (inside the container) of the session's process.
    pub pid: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        // End the remote process first: without a terminal, a dropped ssh
        // connection does not signal it.
        let _ = Command::new(&self.script)
            .args(["nsexec", "pkill", "-f", &format!("^{}", self.tag)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
