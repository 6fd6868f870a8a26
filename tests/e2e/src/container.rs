//! The container test host (`tests/testhost/testhost.sh up`): a container
//! whose PID 1 is a real systemd, with logind, D-Bus, sshd on 127.0.0.1 and
//! pamtester; hybrid cgroups (v1 controllers), as on the machines it runs on.
//! Root's commands run through `nsenter`; files are read straight from the
//! container's root, seen from the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use crate::host::TestHost;
use crate::layout::Layout;
use crate::{ALL_UIDS, run};

static LOCK: Mutex<()> = Mutex::new(());

pub struct Container {
    script: PathBuf,
    root: PathBuf,
    ssh_args: Vec<String>,
    _guard: MutexGuard<'static, ()>,
}

impl Container {
    /// The running test host. Panics with what to do if it is not up. Every
    /// test holds it, so tests never overlap even on several threads.
    pub fn get() -> Container {
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
            "the test host is not running; start it with: sudo tests/testhost/testhost.sh up && sudo tests/testhost/install-fairshare.sh\n{}",
            root.stderr
        );
        let args = run(
            Command::new(&script).arg("ssh-args"),
            "testhost.sh ssh-args".into(),
            None,
        )
        .ok();
        Container {
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
}

impl TestHost for Container {
    fn name(&self) -> &'static str {
        "container"
    }

    fn layout(&self) -> Layout {
        Layout::Hybrid
    }

    fn slowness(&self) -> u32 {
        1
    }

    fn ssh_peer(&self) -> &'static str {
        "127.0.0.1"
    }

    fn root_argv(&self, cmd: &str) -> Vec<OsString> {
        vec![
            self.script.clone().into(),
            "nsexec".into(),
            "sh".into(),
            "-c".into(),
            cmd.into(),
        ]
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

    /// `systemctl revert`: the slices are as systemd found them.
    fn lift_limits_cmd(&self) -> String {
        let slices: Vec<String> = ALL_UIDS.iter().map(|u| format!("user-{u}.slice")).collect();
        format!("systemctl revert {} >/dev/null 2>&1", slices.join(" "))
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.path(path)).ok()
    }

    fn read_many(&self, paths: &[String]) -> Vec<Option<String>> {
        paths.iter().map(|p| self.read(p)).collect()
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.path(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    /// Through the test host script (`systemd-run --wait --pipe` inside).
    fn exec(&self, cmd: &str) -> crate::Out {
        let mut c = Command::new(&self.script);
        c.args(["exec", "sh", "-c", cmd]);
        run(&mut c, format!("[container service] {cmd}"), None)
    }
}
