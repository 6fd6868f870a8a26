//! Processes: which one a session is, whether it still runs, where it sits
//! in the cgroup tree, and noticing without polling when it ends.
//!
//! A pid alone does not name a process for good: the kernel hands it out
//! again once the process is gone and reaped. A [`ProcessRef`] adds the
//! process's start time. A [`Pidfd`] (Linux 5.3+) refers to one process
//! whatever happens to its pid, and becomes readable when that process
//! exits; it does not keep the pid from being reused after the process is
//! reaped, but while its process has not exited the pid is still that
//! process's. Session processes that die without a `close_session` (a
//! crashed sshd, `kill -9`) are counted down this way, so a user's session
//! count cannot leak upward.
//!
//! A process that fairshare moves into a user's slice is [`Pinned`] first
//! and checked again right before the move ([`Pinned::still_same`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use fairshare_proto::placement::Placement;

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
    /// The process now at `pid`, with a pidfd on it when it is still
    /// running. The pidfd is opened first and the start time read next; the
    /// start time is the pidfd's process's only if that process had not
    /// exited by then (afterwards its pid may belong to another one), so a
    /// process that exits meanwhile comes back without either.
    pub fn pin(pid: u32) -> (ProcessRef, Option<Pidfd>) {
        let Ok(fd) = Pidfd::open(pid) else {
            return (
                ProcessRef {
                    pid,
                    start_time: None,
                },
                None,
            );
        };
        let start_time = start_time(pid);
        if fd.has_exited() {
            return (
                ProcessRef {
                    pid,
                    start_time: None,
                },
                None,
            );
        }
        (ProcessRef { pid, start_time }, Some(fd))
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
        // The start time is compared after the pidfd is opened, and the
        // pidfd's process must not have exited by then: the start time read
        // was its own.
        Pidfd::open(self.pid)
            .ok()
            .filter(|fd| self.is_same() && !fd.has_exited())
    }
}

/// A pidfd: refers to one process (whatever later happens to its pid), and
/// becomes readable when that process exits.
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

    /// Whether the process has exited (a zombie, or reaped). While it has
    /// not, its pid is still its own.
    pub fn has_exited(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            // readable (exited), or an error: not a process to act on
            _ => true,
        }
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

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A process fairshare may move into a user's slice, pinned: its pid and
/// start time, its owner (real uid) when pinned, and a pidfd on it.
#[derive(Debug)]
pub struct Pinned {
    pub process: ProcessRef,
    /// The real uid of the process when it was pinned.
    pub owner: u32,
    pidfd: Pidfd,
}

impl Pinned {
    /// Pins the process now at `pid`; `None` when it is gone (or exits while
    /// it is being looked at).
    pub fn pin(pid: u32) -> Option<Pinned> {
        let pidfd = Pidfd::open(pid).ok()?;
        let start_time = start_time(pid)?;
        let owner = real_uid(pid)?;
        // Read while the pidfd's process had not exited: they are its own.
        if pidfd.has_exited() {
            return None;
        }
        Some(Pinned {
            process: ProcessRef {
                pid,
                start_time: Some(start_time),
            },
            owner,
            pidfd,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The pidfd, for callers that can name the process by it (systemd ≥
    /// 253 takes pidfds in `StartTransientUnit`).
    pub fn pidfd(&self) -> &Pidfd {
        &self.pidfd
    }

    /// Whether `pid` still names this very process, owned by the same user
    /// and not exiting: called right before the pid is handed to systemd.
    /// The pidfd's process has not exited, so the pid cannot have been
    /// given to another process since it was pinned; start time and owner
    /// are compared besides.
    pub fn still_same(&self) -> bool {
        let pid = self.process.pid;
        start_time(pid) == self.process.start_time
            && real_uid(pid) == Some(self.owner)
            && alive(pid)
            && !self.pidfd.has_exited()
    }
}

/// The real uid of a process (the first field of `Uid:` in `/proc/PID/status`).
pub fn real_uid(pid: u32) -> Option<u32> {
    status_uid(&read(Path::new(&format!("/proc/{pid}/status")))?)
}

fn status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's start time (field 22 of `/proc/PID/stat`, clock ticks after
/// boot): with the pid, it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(&stat(pid)?, 19)?.parse().ok()
}

/// The start time of `pid` when it is still running: `None` when it is
/// gone or a zombie (ended, not yet reaped by its parent).
pub fn running_since(pid: u32) -> Option<u64> {
    let stat = stat(pid)?;
    match stat_field(&stat, 0) {
        Some("Z" | "X") | None => None,
        Some(_) => stat_field(&stat, 19)?.parse().ok(),
    }
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

/// Where process `pid` is in systemd's tree; `None` when it is gone.
pub fn placement(pid: u32) -> Option<Placement> {
    read(Path::new(&format!("/proc/{pid}/cgroup"))).and_then(|t| Placement::of_proc_cgroup(&t))
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
    fn placement_and_owner_of_a_live_process() {
        let me = std::process::id();
        assert!(placement(me).is_some());
        assert_eq!(placement(u32::MAX), None);
        assert_eq!(real_uid(me), Some(nix::unistd::getuid().as_raw()));
        assert_eq!(real_uid(u32::MAX), None);
        assert_eq!(
            status_uid("Name:\tx\nUid:\t1001\t0\t0\t0\nGid:\t5\n"),
            Some(1001)
        );
        assert_eq!(status_uid("Name:\tx\n"), None);
    }

    #[test]
    fn a_pinned_process_is_still_the_same_until_it_exits() {
        let mut child = Child::sleep("60");
        let pid = child.0.id();
        let p = Pinned::pin(pid).unwrap();
        assert_eq!(p.pid(), pid);
        assert_eq!(p.owner, nix::unistd::getuid().as_raw());
        assert!(p.still_same());
        // another process given the same pid would have another start time
        // or owner: either is enough to refuse it
        let other_start = Pinned {
            process: ProcessRef {
                pid,
                start_time: p.process.start_time.map(|t| t + 1),
            },
            owner: p.owner,
            pidfd: Pidfd::open(pid).unwrap(),
        };
        assert!(!other_start.still_same());
        let other_owner = Pinned {
            process: p.process,
            owner: p.owner + 1,
            pidfd: Pidfd::open(pid).unwrap(),
        };
        assert!(!other_owner.still_same());
        // exited, not yet reaped: a zombie is never moved
        child.0.kill().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(p.pidfd().has_exited());
        assert!(!p.still_same());
        child.0.wait().unwrap();
        assert!(!p.still_same());
        assert!(Pinned::pin(pid).is_none_or(|q| q.process != p.process));
        assert!(Pinned::pin(u32::MAX).is_none());
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
