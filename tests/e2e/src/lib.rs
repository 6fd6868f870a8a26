//! The end-to-end harness: one handle on either test host, and the macros
//! that run each test on them.
//!
//! Two test hosts run fairshare under a real systemd, logind, PAM
//! (pamtester) and sshd: the container of `tests/testhost/testhost.sh`
//! ([`Container`], hybrid cgroups: v1 controllers) and the QEMU guest of
//! `tests/testhost/v2vm.sh` ([`Guest`], pure cgroup v2). Both are a
//! [`TestHost`]: run a root command, log a user in over ssh, keep a session
//! open, read a slice's limits from whichever files the layout has
//! ([`Limits`]), start a fresh daemon. Tests assert on those files and on
//! `/proc/PID/cgroup`, never only on what fairshared says.
//!
//! A core test is written once and runs on both hosts ([`core_test!`]):
//! `NAME::on_container` and `NAME::on_v2_guest`, the way ripgrep's `rgtest!`
//! runs each test with both regex engines. Tests of one host only are
//! `#[test]` functions taking [`Container::get`] (what the container alone
//! can do: pamtester stacks, failures injected into the daemon, the Debian
//! package) or [`v2_test!`] (what only cgroup v2 has: `memory.high`, its
//! usage files). `script/test` runs the container with
//! `-- --skip on_v2_guest`, then the guest with `-- on_v2_guest`.
//!
//! Every test holds its host's lock, so tests never overlap even when the
//! harness runs them on several threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod container;
pub mod guest;
pub mod host;
pub mod layout;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use container::Container;
pub use guest::Guest;
pub use host::{LoginProbe, Session, TestHost, Undo, login_probe_cmd, quote};
pub use layout::{CpuStat, File, Layout, Limits, Want, slice_path, want};

/// The test users of both hosts, as `tests/testhost/common.sh` creates them
/// (`TEST_USERS` there; a unit test keeps the two lists the same).
pub const TESTUSER: (&str, u32) = ("testuser", 1001);
pub const TESTUSER2: (&str, u32) = ("testuser2", 1002);
pub const STUDENT: (&str, u32) = ("student1", 1003);
pub const TESTUSER3: (&str, u32) = ("testuser3", 1004);
/// A system account (uid below 1000): exempt.
pub const SVCUSER: (&str, u32) = ("svcuser", 990);
pub const ALL: [(&str, u32); 5] = [TESTUSER, TESTUSER2, STUDENT, TESTUSER3, SVCUSER];
pub const ALL_UIDS: [u32; 5] = [ALL[0].1, ALL[1].1, ALL[2].1, ALL[3].1, ALL[4].1];
/// Their names, in the same order.
pub const ALL_USERS: [&str; 5] = [ALL[0].0, ALL[1].0, ALL[2].0, ALL[3].0, ALL[4].0];

/// A test that runs on both test hosts: `core_test!(NAME, |h: &dyn
/// TestHost| { ... })` makes the tests `NAME::on_container` and
/// `NAME::on_v2_guest`, each calling the closure with its host.
#[macro_export]
macro_rules! core_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            const BODY: fn(&dyn $crate::TestHost) = $body;

            #[test]
            fn on_container() {
                BODY(&$crate::Container::get())
            }

            #[test]
            fn on_v2_guest() {
                BODY(&$crate::Guest::get())
            }
        }
    };
}

/// A test of what only the cgroup v2 guest has: `v2_test!(NAME, |g: &Guest|
/// { ... })` makes the test `NAME::on_v2_guest`.
#[macro_export]
macro_rules! v2_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            const BODY: fn(&$crate::Guest) = $body;

            #[test]
            fn on_v2_guest() {
                BODY(&$crate::Guest::get())
            }
        }
    };
}

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

/// The policy of the core tests (on both hosts): a soft memory limit at
/// half the hard one, a task maximum above the default, and a group with
/// its own defaults and maximum.
pub const CORE_POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
  mem_high: 50%
max:
  cpu: 8
  mem: 32G
  tasks: 8192
capacity:
  cpu: 64
  mem: 256G
groups:
  students:
    defaults: {cpu: 1, mem: 2G, tasks: 512}
    max: {cpu: 2, mem: 4G, tasks: 1024}
";

/// [`CORE_POLICY`] without the soft memory limit: a memory hog goes
/// straight to the hard one.
pub const CORE_POLICY_NO_HIGH: &str = "\
defaults:
  cpu: 2
  mem: 8G
max:
  cpu: 8
  mem: 32G
  tasks: 8192
capacity:
  cpu: 64
  mem: 256G
";

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// The users `tests/testhost/common.sh` creates on both hosts are the
    /// ones the tests know.
    #[test]
    fn the_test_users_are_the_test_hosts_users() {
        let sh = include_str!("../../testhost/common.sh");
        let line = sh
            .lines()
            .find_map(|l| l.strip_prefix("TEST_USERS=("))
            .expect("TEST_USERS=( in common.sh");
        let users: Vec<(String, u32)> = line
            .trim_end_matches(')')
            .split_whitespace()
            .map(|u| {
                let mut f = u.split(':');
                (
                    f.next().unwrap().to_string(),
                    f.next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let ours: Vec<(String, u32)> = ALL.iter().map(|(n, u)| (n.to_string(), *u)).collect();
        assert_eq!(users, ours);
    }
}
