//! The pure cgroup v2 test host: a QEMU guest booted by
//! `tests/testhost/v2vm.sh` with `systemd.unified_cgroup_hierarchy=1`
//! (software emulation, so slow: waits here are scaled up).
//!
//! Root's commands share one ssh connection (a new channel each, cheap);
//! users log in for real, through sshd, PAM, logind and pam_fairshare.
//! Files are read inside the guest as root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use crate::host::TestHost;
use crate::layout::{File, Layout, flat_keyed};
use crate::{ALL_UIDS, run};

static LOCK: Mutex<()> = Mutex::new(());

const HOW_TO_START: &str = "start it with: make all && sudo tests/testhost/v2vm.sh up \
     (or run setup, tests and shutdown at once: sudo tests/testhost/v2vm.sh test); \
     to run only the container's variants, filter the tests with `-- --skip on_v2_guest`";

pub struct Guest {
    ssh_args: Vec<String>,
    mux_args: Vec<String>,
    _guard: MutexGuard<'static, ()>,
}

impl Guest {
    /// The running guest. Panics with what to do if it is not up. Every
    /// test holds it, so tests never overlap.
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

    /// A flat-keyed file of `uid`'s slice (`memory.events`, `cpu.stat`).
    #[track_caller]
    pub fn keyed(&self, uid: u32, file: File) -> std::collections::BTreeMap<String, u64> {
        let path = self
            .slice_file(uid, file)
            .unwrap_or_else(|| unreachable!("v2 has every file"));
        let text = self
            .read(&path)
            .unwrap_or_else(|| panic!("no {path} in the guest"));
        flat_keyed(&text)
    }
}

impl TestHost for Guest {
    fn name(&self) -> &'static str {
        "v2 guest"
    }

    fn layout(&self) -> Layout {
        Layout::Unified
    }

    /// Emulated (no KVM): CPU-bound code runs about 14 times slower.
    fn slowness(&self) -> u32 {
        4
    }

    /// slirp: logins come from the host's side of the virtual network.
    fn ssh_peer(&self) -> &'static str {
        "10.0.2.2"
    }

    fn root_argv(&self, cmd: &str) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["ssh".into()];
        v.extend(self.mux_args.iter().map(OsString::from));
        v.push("root@127.0.0.1".into());
        v.push(cmd.into());
        v
    }

    fn ssh_options(&self) -> &[String] {
        &self.ssh_args
    }

    fn ssh_command(&self, user: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(&self.ssh_args)
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd);
        c
    }

    /// `set-property` rather than `systemctl revert`, whose daemon-reload
    /// takes 10 s in the emulated guest.
    fn lift_limits_cmd(&self) -> String {
        let uids: Vec<String> = ALL_UIDS.iter().map(u32::to_string).collect();
        format!(
            "for u in {}; do [ -d /run/systemd/system.control/user-$u.slice.d ] && \
               systemctl set-property --runtime user-$u.slice CPUQuota= MemoryMax=infinity \
                 MemoryHigh=infinity TasksMax=infinity; done; true",
            uids.join(" ")
        )
    }
}
