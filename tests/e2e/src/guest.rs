//! Helpers for the end-to-end tests in the pure cgroup v2 test host: a QEMU
//! guest booted by `tests/testhost/v2vm.sh` (software emulation, so slow:
//! timeouts here are generous).
//!
//! Root's commands share one ssh connection (a new channel each, cheap);
//! users log in for real, through sshd, PAM, logind and pam_fairshare.
//! Files are read inside the guest as root. Every test takes the [`Guest`]
//! lock, so tests never overlap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Out, run, wait_for};

static LOCK: Mutex<()> = Mutex::new(());

const HOW_TO_START: &str = "start it with: make all && sudo tests/testhost/v2vm.sh up \
     (or run setup, tests and shutdown at once: sudo tests/testhost/v2vm.sh test)";

/// The v2 limit files of a user's slice (`None`: no such file, i.e. the
/// slice is not active). `max` is shown as `u64::MAX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Slice {
    /// `cpu.max` as written, e.g. `200000 100000`
    pub cpu_max: Option<String>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub pids_max: Option<u64>,
}

/// The slice of `uid` in the guest.
pub fn slice_dir(uid: u32) -> String {
    format!("/sys/fs/cgroup/user.slice/user-{uid}.slice")
}

fn num(v: Option<&String>) -> Option<u64> {
    match v.map(|s| s.trim()) {
        Some("max") => Some(u64::MAX),
        Some(s) => s.parse().ok(),
        None => None,
    }
}

/// A flat-keyed cgroup file (`key value` lines) as a map.
pub fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

pub struct Guest {
    ssh_args: Vec<String>,
    mux_args: Vec<String>,
    _guard: MutexGuard<'static, ()>,
}

impl Guest {
    /// The running guest. Panics with what to do if it is not up.
    pub fn get() -> Guest {
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let script = std::env::var_os("FAIRSHARE_V2VM")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../testhost/v2vm.sh"));
        let st = run(
            Command::new(&script).arg("status"),
            "v2vm.sh status".into(),
            None,
        );
        assert_eq!(
            st.code, 0,
            "the cgroup v2 guest is not running; {HOW_TO_START}\n{}{}",
            st.stdout, st.stderr
        );
        let args = |extra: &[&str]| -> Vec<String> {
            run(
                Command::new(&script).arg("ssh-args").args(extra),
                "v2vm.sh ssh-args".into(),
                None,
            )
            .ok()
            .stdout
            .lines()
            .map(str::to_string)
            .collect()
        };
        let g = Guest {
            ssh_args: args(&[]),
            mux_args: args(&["--mux"]),
            _guard: guard,
        };
        let fs = g.sh("stat -fc %T /sys/fs/cgroup");
        assert_eq!(
            (fs.code, fs.out()),
            (0, "cgroup2fs"),
            "the cgroup v2 guest does not answer over ssh as expected; {HOW_TO_START}\n{fs:?}"
        );
        g
    }

    fn ssh_command(&self, args: &[String], user: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(args).arg(format!("{user}@127.0.0.1")).arg(cmd);
        c
    }

    /// Runs a shell command in the guest as root (over the shared connection).
    pub fn sh(&self, cmd: &str) -> Out {
        run(
            &mut self.ssh_command(&self.mux_args, "root", cmd),
            format!("[guest root] {cmd}"),
            None,
        )
    }

    /// Like [`Guest::sh`], with `stdin` as the command's input.
    pub fn sh_stdin(&self, cmd: &str, stdin: &[u8]) -> Out {
        run(
            &mut self.ssh_command(&self.mux_args, "root", cmd),
            format!("[guest root] {cmd}"),
            Some(stdin),
        )
    }

    /// Logs `user` in over ssh (a real login) and runs `cmd` in their shell.
    pub fn ssh(&self, user: &str, cmd: &str) -> Out {
        run(
            &mut self.ssh_command(&self.ssh_args, user, cmd),
            format!("[guest ssh {user}] {cmd}"),
            None,
        )
    }

    /// Runs `cmd` as `user` without a login: `setpriv` over root's shared
    /// connection (no PAM, no new session, the process stays in root's
    /// slice). fairshared knows a caller by `SO_PEERCRED`, so a
    /// `fairshare-ctl` request made this way is the user's own. For commands
    /// that need no process in the user's slice: a login costs seconds in
    /// the emulated guest.
    pub fn as_user(&self, user: &str, cmd: &str) -> Out {
        let quoted = format!("'{}'", cmd.replace('\'', r"'\''"));
        let mut o = self.sh(&format!(
            "cd / && exec setpriv --reuid={user} --regid={user} --init-groups \
             env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/{user} LANG=C.UTF-8 sh -c {quoted}"
        ));
        o.what = format!("[guest as {user}] {cmd}");
        o
    }

    /// Starts a login of `user` running `cmd` and returns at once (the ssh
    /// client is the returned child).
    pub fn spawn_ssh(&self, user: &str, cmd: &str) -> Child {
        let mut c = self.ssh_command(&self.ssh_args, user, cmd);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().unwrap()
    }

    /// Keeps a login session of `user` open until dropped. Returns once the
    /// session's shell runs.
    pub fn session(&self, user: &str) -> GuestSession {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "e2e-v2-hold-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let child = self.spawn_ssh(user, &format!("exec -a {tag} sleep 900"));
        let pid = wait_for(
            &format!("a session of {user} in the guest"),
            Duration::from_secs(90),
            || {
                let o = self.sh(&format!("pgrep -f '^{tag}' | head -1"));
                o.out().parse::<u32>().ok()
            },
        );
        GuestSession {
            child: Some(child),
            mux_args: self.mux_args.clone(),
            tag,
            pid,
        }
    }

    /// Reads a file in the guest.
    pub fn read(&self, path: &str) -> Option<String> {
        let o = self.sh(&format!("cat '{path}'"));
        (o.code == 0).then_some(o.stdout)
    }

    /// Writes a file in the guest.
    pub fn write(&self, path: &str, content: &str) {
        self.sh_stdin(
            &format!("mkdir -p \"$(dirname '{path}')\" && cat > '{path}'"),
            content.as_bytes(),
        )
        .ok();
    }

    /// A flat-keyed file of `uid`'s slice (`cpu.stat`, `memory.events`).
    pub fn keyed(&self, uid: u32, file: &str) -> BTreeMap<String, u64> {
        let text = self
            .read(&format!("{}/{file}", slice_dir(uid)))
            .unwrap_or_else(|| panic!("no {file} in user-{uid}.slice"));
        flat_keyed(&text)
    }

    /// A single-number file of `uid`'s slice (`pids.current`, `memory.current`).
    pub fn value(&self, uid: u32, file: &str) -> u64 {
        let text = self
            .read(&format!("{}/{file}", slice_dir(uid)))
            .unwrap_or_else(|| panic!("no {file} in user-{uid}.slice"));
        num(Some(&text)).unwrap_or_else(|| panic!("{file}: {text}"))
    }

    /// The limit files of `uid`'s slice, read in one go.
    pub fn slice(&self, uid: u32) -> V2Slice {
        let o = self.sh(&format!(
            "cd {} 2>/dev/null || exit 0; for f in cpu.max memory.max memory.high pids.max; do \
             [ -f $f ] && printf '%s=%s\\n' $f \"$(cat $f)\"; done; true",
            slice_dir(uid)
        ));
        let m: BTreeMap<String, String> = o
            .ok()
            .stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        V2Slice {
            cpu_max: m.get("cpu.max").cloned(),
            memory_max: num(m.get("memory.max")),
            memory_high: num(m.get("memory.high")),
            pids_max: num(m.get("pids.max")),
        }
    }

    /// Waits until the slice's files show `cpus_milli` thousandths of a CPU
    /// (`cpu.max` with the 100 ms period), `mem` (`memory.max`), `high`
    /// (`memory.high`, `None`: no soft limit, i.e. `max`) and `tasks`.
    #[track_caller]
    pub fn expect_slice(
        &self,
        uid: u32,
        cpus_milli: u64,
        mem: u64,
        high: Option<u64>,
        tasks: u64,
    ) -> V2Slice {
        let want = V2Slice {
            cpu_max: Some(format!("{} 100000", cpus_milli * 100)),
            memory_max: Some(mem),
            memory_high: Some(high.unwrap_or(u64::MAX)),
            pids_max: Some(tasks),
        };
        let start = Instant::now();
        let mut last;
        loop {
            last = self.slice(uid);
            if last == want {
                return last;
            }
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("user-{uid}.slice files in the guest: want {want:?}, got {last:?}");
    }

    /// Stops fairshared, forgets all state and lifts every limit set on the
    /// test users' slices, logs them out, installs `policy` and starts
    /// fairshared again. One round trip: every command in the guest is slow.
    ///
    /// The limits are lifted with `set-property` rather than `systemctl
    /// revert`, whose daemon-reload takes 10 s in the emulated guest.
    pub fn fresh_daemon(&self, policy: &str) {
        let uids: Vec<String> = crate::ALL_UIDS.iter().map(u32::to_string).collect();
        self.sh_stdin(
            &format!(
                "systemctl stop fairshared.service fairshared.socket 2>/dev/null; \
                 systemctl reset-failed fairshared.service 2>/dev/null; \
                 pkill -KILL -x fairshared; rm -rf /var/lib/fairshare/* /etc/fairshare/policy.d/*; \
                 rm -f /run/fairshare.sock; \
                 for u in {}; do [ -d /run/systemd/system.control/user-$u.slice.d ] && \
                   systemctl set-property --runtime user-$u.slice CPUQuota= MemoryMax=infinity \
                     MemoryHigh=infinity TasksMax=infinity; done; \
                 for u in {}; do loginctl terminate-user $u 2>/dev/null; done; \
                 cat > /etc/fairshare/policy.d/50-test.yaml",
                uids.join(" "),
                crate::ALL_USERS.join(" ")
            ),
            policy.as_bytes(),
        )
        .ok();
        self.wait_logged_out();
        self.start_daemon();
    }

    /// Starts fairshared (the installed unit) and waits for its socket.
    pub fn start_daemon(&self) {
        self.sh("systemctl start fairshared.socket fairshared.service")
            .ok();
        self.wait_socket();
    }

    pub fn wait_socket(&self) {
        wait_for(
            "fairshared's socket in the guest",
            Duration::from_secs(60),
            || {
                let o = self.sh("echo '{\"type\":\"list\"}' | nc -U -N /run/fairshare.sock");
                (o.code == 0 && o.out().contains("user_list")).then_some(())
            },
        );
    }

    /// Ends every session of the test users and waits for their processes
    /// to be gone.
    pub fn logout_all(&self) {
        self.sh(&format!(
            "for u in {}; do loginctl terminate-user $u 2>/dev/null; done; true",
            crate::ALL_USERS.join(" ")
        ));
        self.wait_logged_out();
    }

    fn wait_logged_out(&self) {
        wait_for(
            "the test users to be logged out of the guest",
            Duration::from_secs(60),
            || {
                let o = self
                    .sh("pgrep -u 1001,1002,1003,1004,990 >/dev/null && echo busy || echo idle");
                (o.out() == "idle").then_some(())
            },
        );
    }

    /// `fairshare-ctl ARGS` as root in the guest.
    pub fn ctl(&self, args: &str) -> Out {
        self.sh(&format!("fairshare-ctl {args}"))
    }
}

/// An open login session in the guest; logs out when dropped.
pub struct GuestSession {
    child: Option<Child>,
    mux_args: Vec<String>,
    tag: String,
    /// The pid (in the guest) of the session's process.
    pub pid: u32,
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        // End the remote process first: without a terminal, a dropped ssh
        // connection does not signal it.
        let _ = Command::new("ssh")
            .args(&self.mux_args)
            .arg("root@127.0.0.1")
            .arg(format!("pkill -f '^{}'", self.tag))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files() {
        let m = flat_keyed("usage_usec 2500\nnr_throttled 3\nbad\nx y\n");
        assert_eq!(m.get("usage_usec"), Some(&2500));
        assert_eq!(m.get("nr_throttled"), Some(&3));
        assert_eq!(m.len(), 2);
        assert_eq!(num(Some(&"max\n".to_string())), Some(u64::MAX));
        assert_eq!(num(Some(&"4096\n".to_string())), Some(4096));
        assert_eq!(num(None), None);
    }
}
