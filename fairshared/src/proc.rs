//! Processes: which one a session is, whether it still runs, where it sits
//! in the cgroup tree, and noticing without polling when it ends.
//!
//! A pid alone does not name a process for good: the kernel hands it out
//! again once the process is gone. A [`ProcessRef`] adds the process's start
//! time, and a [`Pidfd`] (Linux 5.3+) pins the pid while it is open and
//! becomes readable when the process exits. Session processes that die
//! without a `close_session` (a crashed sshd, `kill -9`) are counted down
//! this way, so a user's session count cannot leak upward.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::kernfs::read;

/// One process: its pid, and its start time when it was known (records
/// saved by older versions have none), which tells it from a later process
/// given the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time: Option<u64>,
}

impl ProcessRef {
    /// The process now at `pid`, with a pidfd on it when it exists. The
    /// pidfd is opened first: while it is open the pid cannot be reused, so
    /// the start time read next is this process's own.
    pub fn pin(pid: u32) -> (ProcessRef, Option<Pidfd>) {
        let fd = Pidfd::open(pid).ok();
        let start_time = start_time(pid);
        (ProcessRef { pid, start_time }, fd)
    }

    /// Whether the process at `pid` is still this one (the same start time,
    /// when one was recorded).
    fn is_same(&self) -> bool {
        self.start_time.is_none() || start_time(self.pid) == self.start_time
    }

    /// Whether this process still runs (alive, not a zombie, not replaced).
    pub fn is_running(&self) -> bool {
        alive(self.pid) && self.is_same()
    }

    /// A pidfd on this process; `None` when it is gone or its pid now
    /// belongs to another process.
    pub fn pidfd(&self) -> Option<Pidfd> {
        // With the pidfd open the pid cannot be reused under us, so the
        // start time compared next is the pinned process's.
        Pidfd::open(self.pid).ok().filter(|_| self.is_same())
    }
}

/// A pidfd: pins a process's pid while it is open, and becomes readable when
/// the process exits.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens a pidfd for `pid`. Fails with ESRCH when the process is gone.
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is shared with the kernel.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Resolves when the process has exited.
    pub async fn exited(self) -> io::Result<()> {
        // SAFETY: the AsyncFd owns the fd (an OwnedFd), which stays open and
        // the same for as long as the AsyncFd lives.
        let afd = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let _ready = afd.readable().await?;
        Ok(())
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`, clock ticks after
/// boot): with the pid, it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(&stat(pid)?, 19)?.parse().ok()
}

/// Whether a process is still alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match stat(pid) {
        None => false,
        Some(stat) => stat_field(&stat, 0) != Some("Z"),
    }
}

/// CPU time a process has used, in clock ticks (utime + stime).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&stat(pid)?)
}

fn stat(pid: u32) -> Option<String> {
    read(Path::new(&format!("/proc/{pid}/stat")))
}

/// Field `n` after the command name of a `/proc/PID/stat` line (0: the
/// state). The command name may hold spaces and parentheses, so fields are
/// counted after the last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let utime: u64 = stat_field(stat, 11)?.parse().ok()?;
    let stime: u64 = stat_field(stat, 12)?.parse().ok()?;
    Some(utime + stime)
}

/// Where a process is, as far as fairshare cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside `user-UID.slice` (a logind session scope, or an earlier adoption).
    InUserSlice,
    /// Somewhere else: the path systemd tracks it under.
    Elsewhere(String),
    /// The process is gone.
    Gone,
}

/// Where `pid` is, judged from `/proc/PID/cgroup` (the systemd-tracked path:
/// the v2 line, or `name=systemd` on v1).
pub fn placement(pid: u32, uid: u32) -> Placement {
    match read(Path::new(&format!("/proc/{pid}/cgroup"))) {
        None => Placement::Gone,
        Some(t) => placement_in(&t, uid),
    }
}

fn placement_in(proc_cgroup: &str, uid: u32) -> Placement {
    let slice = format!("/user-{uid}.slice");
    let mut tracked = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrl == "name=systemd" || (ctrl.is_empty() && path != "/") {
            if path.contains(&format!("{slice}/")) || path.ends_with(&slice) {
                return Placement::InUserSlice;
            }
            tracked.get_or_insert_with(|| path.to_string());
        }
    }
    Placement::Elsewhere(tracked.unwrap_or_else(|| "/".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that sleeps, killed and reaped when dropped.
    struct Child(std::process::Child);

    impl Child {
        fn sleep(secs: &str) -> Child {
            Child(
                std::process::Command::new("sleep")
                    .arg(secs)
                    .spawn()
                    .unwrap(),
            )
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn notices_an_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), fd.exited())
            .await
            .expect("exit noticed")
            .unwrap();
        child.wait().unwrap();
        assert!(Pidfd::open(u32::MAX).is_err());
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(12));
        assert_eq!(stat_field(stat, 0), Some("S"));
    }

    #[test]
    fn placement_from_proc_cgroup() {
        let v2_in = "0::/user.slice/user-1001.slice/session-3.scope\n";
        assert_eq!(placement_in(v2_in, 1001), Placement::InUserSlice);
        assert!(matches!(placement_in(v2_in, 1002), Placement::Elsewhere(_)));
        let hybrid_out = "12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/system.slice/cron.service\n";
        assert_eq!(
            placement_in(hybrid_out, 1001),
            Placement::Elsewhere("/system.slice/cron.service".into())
        );
        let hybrid_in = "1:name=systemd:/user.slice/user-1001.slice/user@1001.service/app.slice/x.scope\n0::/\n";
        assert_eq!(placement_in(hybrid_in, 1001), Placement::InUserSlice);
        let adopted = "0::/user.slice/user-1001.slice\n";
        assert_eq!(placement_in(adopted, 1001), Placement::InUserSlice);
        assert!(matches!(
            placement_in("0::/user.slice/user-10011.slice/x\n", 1001),
            Placement::Elsewhere(_)
        ));
        assert_eq!(placement(u32::MAX, 1), Placement::Gone);
    }

    #[test]
    fn liveness() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
        let me = start_time(std::process::id()).unwrap();
        assert!(me > 0);
        assert_eq!(start_time(std::process::id()), Some(me));
        assert_eq!(
            start_time(std::process::id()),
            start_time(std::process::id())
        );
        assert_eq!(start_time(u32::MAX), None);
        assert!(cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn a_process_ref_tells_its_process_from_a_later_one() {
        let child = Child::sleep("60");
        let (p, fd) = ProcessRef::pin(child.0.id());
        assert!(fd.is_some() && p.start_time.is_some());
        assert!(p.is_running());
        assert!(p.pidfd().is_some());
        // the same pid with another start time: a later process
        let other = ProcessRef {
            start_time: p.start_time.map(|t| t + 1),
            ..p
        };
        assert!(!other.is_running());
        assert!(other.pidfd().is_none());
        // no start time recorded: the pid alone decides
        let old_record = ProcessRef {
            start_time: None,
            ..p
        };
        assert!(old_record.is_running());
        drop(child);
        assert!(!p.is_running());
        assert!(p.pidfd().is_none());
        let (gone, fd) = ProcessRef::pin(u32::MAX);
        assert!(fd.is_none() && gone.start_time.is_none());
    }
}
