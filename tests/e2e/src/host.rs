//! [`TestHost`]: what a test can do on either test host, the container
//! ([`crate::Container`], hybrid cgroups) or the QEMU guest
//! ([`crate::Guest`], pure cgroup v2). A backend says how to run a root
//! command, how to log a user in over ssh and how to read a file; everything
//! else (sessions, limits read from the layout's files, a fresh daemon, the
//! journal) is written once here.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::layout::{CpuStat, File, Layout, Limits, Want, slice_path};
use crate::{ALL_UIDS, ALL_USERS, Out, run, wait_for};

/// `s` quoted for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The uids of the test users, comma-separated (for `pgrep -u`, `pkill -U`).
pub fn uid_list() -> String {
    ALL_UIDS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Shell commands that end every session of the test users, and the
/// processes a test left behind in a session that is already closing (not
/// killed by terminate-user: KillUserProcesses=no).
fn logout_cmd() -> String {
    format!(
        "for u in {}; do loginctl terminate-user $u 2>/dev/null; done; sleep 0.3; pkill -KILL -U {}; true",
        ALL_USERS.join(" "),
        uid_list()
    )
}

/// fairshared's drop-in with the policy default for every user's slice.
pub const GLOBAL_DROPIN: &str = "/etc/systemd/system/user-.slice.d/40-fairshare.conf";

/// A test host. Object safe: core tests take `&dyn TestHost`.
pub trait TestHost {
    /// Names the host in failures ("container", "v2 guest").
    fn name(&self) -> &'static str;
    fn layout(&self) -> Layout;
    /// How many times longer than on the container things take here: waits
    /// are scaled by it (they only matter when something is wrong).
    fn slowness(&self) -> u32;
    /// The address sshd sees the tests' logins come from.
    fn ssh_peer(&self) -> &'static str;
    /// The command line that runs the shell command `cmd` as root inside.
    fn root_argv(&self, cmd: &str) -> Vec<OsString>;
    /// An ssh login of `user` running `cmd` in their login shell.
    fn ssh_command(&self, user: &str, cmd: &str) -> Command;
    /// The ssh options of a user's login (`-p PORT`, the harness's key, …),
    /// for a login of another shape (`ssh -tt`, scp, sftp) to
    /// `USER@127.0.0.1`.
    fn ssh_options(&self) -> &[String];
    /// Shell commands that lift every limit set on the test users' slices.
    fn lift_limits_cmd(&self) -> String;

    /// Reads a file inside (as root).
    fn read(&self, path: &str) -> Option<String> {
        let o = self.sh(&format!("cat {}", quote(path)));
        (o.code == 0).then_some(o.stdout)
    }

    /// Reads several files inside at once (`None`: missing).
    fn read_many(&self, paths: &[String]) -> Vec<Option<String>> {
        const MARK: &str = "==fs-file==";
        const MISSING: &str = "==fs-missing==";
        let quoted: Vec<String> = paths.iter().map(|p| quote(p)).collect();
        let o = self
            .sh(&format!(
                "for f in {}; do echo {MARK}; cat \"$f\" 2>/dev/null || echo {MISSING}; done",
                quoted.join(" ")
            ))
            .ok();
        let got: Vec<Option<String>> = o
            .stdout
            .split(&format!("{MARK}\n"))
            .skip(1)
            .map(|t| (t.trim() != MISSING).then(|| t.to_string()))
            .collect();
        assert_eq!(got.len(), paths.len(), "reading {paths:?}: {o:?}");
        got
    }

    /// Writes a file inside (as root), creating its directory.
    fn write(&self, path: &str, content: &str) {
        self.sh_stdin(
            &format!("mkdir -p \"$(dirname {p})\" && cat > {p}", p = quote(path)),
            content.as_bytes(),
        )
        .ok();
    }

    /// Runs a shell command inside as root.
    fn sh(&self, cmd: &str) -> Out {
        self.sh_stdin_opt(cmd, None)
    }

    /// Like [`TestHost::sh`], with `stdin` as the command's input.
    fn sh_stdin(&self, cmd: &str, stdin: &[u8]) -> Out {
        self.sh_stdin_opt(cmd, Some(stdin))
    }

    #[doc(hidden)]
    fn sh_stdin_opt(&self, cmd: &str, stdin: Option<&[u8]>) -> Out {
        let argv = self.root_argv(cmd);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        run(&mut c, format!("[{} root] {cmd}", self.name()), stdin)
    }

    /// Runs a shell command inside as root in a transient service of its
    /// own (its own cgroup, far from any user's slice).
    fn exec(&self, cmd: &str) -> Out {
        let mut o = self.sh(&format!(
            "exec systemd-run --quiet --wait --pipe --collect --service-type=exec sh -c {}",
            quote(cmd)
        ));
        o.what = format!("[{} service] {cmd}", self.name());
        o
    }

    /// Runs `cmd` as `user` without a login: `setpriv` from root's shell (no
    /// PAM, no session; the process stays where root's commands run).
    /// fairshared knows a caller by `SO_PEERCRED`, so a `fairshare-ctl`
    /// request made this way is the user's own. For commands that need no
    /// process in the user's slice: a login costs seconds in the guest.
    fn as_user(&self, user: &str, cmd: &str) -> Out {
        let mut o = self.sh(&format!(
            "cd / && exec setpriv --reuid={user} --regid={user} --init-groups \
             env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/{user} LANG=C.UTF-8 sh -c {}",
            quote(cmd)
        ));
        o.what = format!("[{} as {user}] {cmd}", self.name());
        o
    }

    /// Logs `user` in over ssh (a real login) and runs `cmd` in their shell.
    fn ssh(&self, user: &str, cmd: &str) -> Out {
        run(
            &mut self.ssh_command(user, cmd),
            format!("[{} ssh {user}] {cmd}", self.name()),
            None,
        )
    }

    fn ssh_stdin(&self, user: &str, cmd: &str, stdin: &[u8]) -> Out {
        run(
            &mut self.ssh_command(user, cmd),
            format!("[{} ssh {user}] {cmd}", self.name()),
            Some(stdin),
        )
    }

    /// Starts a login of `user` running `cmd` and returns at once; its
    /// stdout is piped.
    fn ssh_spawn(&self, user: &str, cmd: &str) -> Child {
        let mut c = self.ssh_command(user, cmd);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c.spawn()
            .unwrap_or_else(|e| panic!("cannot start ssh: {e}"))
    }

    /// Keeps a login session of `user` open until dropped (so their slice
    /// stays active). Returns once the session's shell runs.
    fn session(&self, user: &str) -> Session {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "e2e-hold-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut c = self.ssh_command(user, &format!("exec -a {tag} sleep 900"));
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ssh: {e}"));
        let pid = wait_for(
            &format!("a session of {user} on the {}", self.name()),
            self.patience(20),
            || {
                let o = self.sh(&format!("pgrep -f '^{tag}' | head -1"));
                o.out().parse::<u32>().ok()
            },
        );
        Session {
            child: Some(child),
            end: self.root_argv(&format!("pkill -f '^{tag}'")),
            pid,
        }
    }

    /// `secs` seconds, times the host's slowness.
    fn patience(&self, secs: u64) -> Duration {
        Duration::from_secs(secs * u64::from(self.slowness()))
    }

    /// A file of `uid`'s slice on this host's layout (`None`: the layout
    /// has none).
    fn slice_file(&self, uid: u32, file: File) -> Option<String> {
        self.layout().file(uid, file)
    }

    /// The limits in the files of `uid`'s slice (`None`: no slice).
    fn slice(&self, uid: u32) -> Option<Limits> {
        let l = self.layout();
        Limits::parse(l, &self.read_many(&l.limit_files(uid)))
    }

    /// Whether `uid`'s slice has no CPU quota (or no cgroup at all).
    fn unlimited(&self, uid: u32) -> bool {
        self.slice(uid).is_none_or(|l| l.cpu_quota_us.is_none())
    }

    /// Waits until the files of `uid`'s slice show `want`.
    #[track_caller]
    fn expect_limits(&self, uid: u32, want: Want) -> Limits {
        let start = Instant::now();
        let mut last;
        loop {
            last = self.slice(uid);
            if let Some(l) = last.filter(|l| l.matches(self.layout(), &want)) {
                return l;
            }
            if start.elapsed() > self.patience(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "user-{uid}.slice files on the {}: want {want:?}, got {last:?}",
            self.name()
        );
    }

    /// A single number in a file of `uid`'s slice (`pids.current`, …).
    #[track_caller]
    fn value(&self, uid: u32, file: File) -> u64 {
        let path = self
            .slice_file(uid, file)
            .unwrap_or_else(|| panic!("no {file:?} on the {}", self.name()));
        let text = self
            .read(&path)
            .unwrap_or_else(|| panic!("no {path} on the {}", self.name()));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{path}: {text}"))
    }

    /// The throttling counters of `uid`'s slice.
    #[track_caller]
    fn cpu_stat(&self, uid: u32) -> CpuStat {
        let path = self
            .slice_file(uid, File::CpuStat)
            .unwrap_or_else(|| unreachable!("every layout has cpu.stat"));
        let mut st = CpuStat::parse(
            &self
                .read(&path)
                .unwrap_or_else(|| panic!("no {path} on the {}", self.name())),
        );
        if let Some(acct) = self.slice_file(uid, File::CpuacctUsage) {
            st.usage_usec = self
                .read(&acct)
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map(|ns| ns / 1000);
        }
        st
    }

    /// How often `uid`'s slice ran into its hard memory limit (v1
    /// `memory.failcnt`, v2 `max` in `memory.events`).
    #[track_caller]
    fn mem_limit_hits(&self, uid: u32) -> u64 {
        match self.layout() {
            Layout::Hybrid => self.value(uid, File::MemFailcnt),
            Layout::Unified => {
                let path = self
                    .slice_file(uid, File::MemEvents)
                    .unwrap_or_else(|| unreachable!("v2 has memory.events"));
                let text = self
                    .read(&path)
                    .unwrap_or_else(|| panic!("no {path} on the {}", self.name()));
                *crate::layout::flat_keyed(&text)
                    .get("max")
                    .unwrap_or_else(|| panic!("no max in {path}: {text}"))
            }
        }
    }

    /// The OOM kills counted for `uid`'s slice ([`Layout::oom_kills_cmd`]).
    #[track_caller]
    fn oom_kills(&self, uid: u32) -> u64 {
        let o = self.sh(&self.layout().oom_kills_cmd(uid)).ok();
        o.out()
            .parse()
            .unwrap_or_else(|_| panic!("OOM kills of user-{uid}.slice: {o:?}"))
    }

    /// `/proc/PID/cgroup` of a process, read inside (in the host's cgroup
    /// namespace: read from outside, the container's paths would carry the
    /// container's own cgroup in front).
    #[track_caller]
    fn cgroup_of(&self, pid: u32) -> String {
        let o = self.sh(&format!("cat /proc/{pid}/cgroup"));
        assert_eq!(o.code, 0, "no process {pid} on the {}: {o:?}", self.name());
        o.stdout
    }

    /// Panics unless process `pid` is inside `uid`'s slice in every
    /// controller that limits it.
    #[track_caller]
    fn assert_in_slice(&self, pid: u32, uid: u32, what: &str) {
        self.layout()
            .assert_under(&self.cgroup_of(pid), &slice_path(uid), what);
    }

    /// Stops fairshared, forgets all state and every limit set on the test
    /// users' slices, logs them out, installs `policy` and starts fairshared
    /// again. One round trip: every command in the guest is slow. Returns
    /// once fairshared's policy default drop-in is there.
    fn fresh_daemon(&self, policy: &str) {
        self.sh_stdin(
            &format!(
                "systemctl stop fairshared.service fairshared.socket 2>/dev/null; \
                 systemctl reset-failed fairshared.service 2>/dev/null; \
                 pkill -KILL -x fairshared; rm -rf /var/lib/fairshare/* /etc/fairshare/policy.d/*; \
                 rm -f /run/fairshare.sock; {}; {}; \
                 mkdir -p /etc/fairshare/policy.d; cat > /etc/fairshare/policy.d/50-test.yaml",
                self.lift_limits_cmd(),
                logout_cmd()
            ),
            policy.as_bytes(),
        )
        .ok();
        self.wait_logged_out();
        self.start_daemon();
        wait_for(
            &format!("fairshared to write {GLOBAL_DROPIN} on the {}", self.name()),
            self.patience(10),
            || self.read(GLOBAL_DROPIN).map(|_| ()),
        );
    }

    /// Starts fairshared (the installed units) and waits for its socket.
    fn start_daemon(&self) {
        self.sh("systemctl start fairshared.socket fairshared.service")
            .ok();
        self.wait_socket();
    }

    fn wait_socket(&self) {
        wait_for(
            &format!("fairshared's socket on the {}", self.name()),
            self.patience(15),
            || {
                let o = self.sh("echo '{\"type\":\"list\"}' | nc -U -N /run/fairshare.sock");
                (o.code == 0 && o.out().contains("user_list")).then_some(())
            },
        );
    }

    /// Ends every session of the test users and waits for their processes
    /// to be gone.
    fn logout_all(&self) {
        self.sh(&logout_cmd());
        self.wait_logged_out();
    }

    /// Waits until no test user has a process left (ending what is left).
    fn wait_logged_out(&self) {
        let uids = uid_list();
        wait_for(
            &format!("the test users to be logged out of the {}", self.name()),
            self.patience(15),
            || {
                let o = self.sh(&format!(
                    "pgrep -u {uids} >/dev/null && {{ pkill -KILL -U {uids}; echo busy; }} || echo idle"
                ));
                (o.out() == "idle").then_some(())
            },
        );
    }

    /// `fairshare-ctl ARGS` as root inside.
    fn ctl(&self, args: &str) -> Out {
        self.sh(&format!("fairshare-ctl {args}"))
    }

    /// What fairshared tracks for `uid` (`None`: nothing).
    fn tracked(&self, uid: u32) -> Option<serde_json::Value> {
        let list = self.ctl("--json list").ok().json();
        list["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["uid"] == uid).cloned())
    }

    /// How many of `uid`'s tracked sessions came from `service` (e.g. sshd).
    fn sessions_from(&self, uid: u32, service: &str) -> usize {
        self.tracked(uid).map_or(0, |u| {
            u["session_list"]
                .as_array()
                .map_or(0, |l| l.iter().filter(|s| s["service"] == service).count())
        })
    }

    /// The journal's cursor now: read what comes after it with
    /// [`TestHost::journal_since`].
    fn journal_cursor(&self) -> String {
        let o = self
            .sh("journalctl -n 1 --show-cursor --no-pager -o cat | sed -n 's/^-- cursor: //p'")
            .ok();
        o.out().to_string()
    }

    /// The journal's messages since `cursor` (`args`: more journalctl
    /// arguments, e.g. a match).
    fn journal_since(&self, cursor: &str, args: &str) -> String {
        self.sh(&format!(
            "journalctl --no-pager -o cat --after-cursor={} {args}",
            quote(cursor)
        ))
        .ok()
        .stdout
    }

    /// The line pam_fairshare logged in process `pid` (the process that
    /// ran the login's PAM session, e.g. sshd's `[priv]` one). Waits for
    /// the journal to have it.
    #[track_caller]
    fn module_line(&self, pid: u32) -> String {
        wait_for(
            &format!("pam_fairshare's journal line of pid {pid}"),
            self.patience(10),
            || {
                let o = self.sh(&format!("journalctl --no-pager -o cat _PID={pid}"));
                o.stdout
                    .lines()
                    .find(|l| l.starts_with("pam_fairshare("))
                    .map(str::to_string)
            },
        )
    }
}

/// A shell snippet for a login: prints the PID of the process that ran
/// the login's PAM session (sshd's `[priv]` process, the shell's
/// grandparent), the shell's own `/proc/self/cgroup` and the limit files of
/// `uid`'s slice, as the shell sees them. Parse its output with
/// [`LoginProbe::parse`]. Make it the first command of a login: it shows
/// what was in place when the shell started.
pub fn login_probe_cmd(layout: Layout, uid: u32) -> String {
    let files: Vec<String> = layout.limit_files(uid).iter().map(|f| quote(f)).collect();
    format!(
        "echo \"pam_pid $(ps -o ppid= -p $PPID)\"; cat /proc/self/cgroup; \
         for f in {}; do echo ==fs-file==; cat \"$f\" 2>/dev/null || echo ==fs-missing==; done; \
         echo ==fs-end==",
        files.join(" ")
    )
}

/// What [`login_probe_cmd`] printed.
#[derive(Debug)]
pub struct LoginProbe {
    /// The process that ran the PAM session.
    pub pam_pid: u32,
    /// The shell's `/proc/self/cgroup`.
    pub cgroup: String,
    /// The limits the shell read (`None`: no slice).
    pub limits: Option<Limits>,
    /// What the login printed after the probe.
    pub rest: String,
}

impl LoginProbe {
    #[track_caller]
    pub fn parse(layout: Layout, out: &str) -> LoginProbe {
        let (probe, rest) = out
            .split_once("==fs-end==\n")
            .unwrap_or_else(|| panic!("no login probe in:\n{out}"));
        let mut parts = probe.split("==fs-file==\n");
        let head = parts.next().unwrap_or_default();
        let (first, cgroup) = head.split_once('\n').unwrap_or((head, ""));
        let pam_pid = first
            .strip_prefix("pam_pid ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pam_pid in the login probe:\n{out}"));
        let files: Vec<Option<String>> = parts
            .map(|t| (t.trim() != "==fs-missing==").then(|| t.to_string()))
            .collect();
        LoginProbe {
            pam_pid,
            cgroup: cgroup.to_string(),
            limits: Limits::parse(layout, &files),
            rest: rest.to_string(),
        }
    }
}

/// An open login session; logs out when dropped.
pub struct Session {
    child: Option<Child>,
    /// The command that ends the session's process.
    end: Vec<OsString>,
    /// The pid (inside the host) of the session's process.
    pub pid: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        // End the remote process first: without a terminal, a dropped ssh
        // connection does not signal it.
        let _ = Command::new(&self.end[0])
            .args(&self.end[1..])
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

/// Runs a shell command as root when dropped: undoes a test's change even
/// when the test fails.
pub struct Undo<'a>(pub &'a dyn TestHost, pub String);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        self.0.sh(&self.1);
    }
}
