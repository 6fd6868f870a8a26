//! Noticing that a session process has ended, without polling.
//!
//! A pidfd (Linux 5.3+) becomes readable when its process exits. Session
//! processes that die without a `close_session` (a crashed sshd, `kill -9`)
//! are counted down this way, so a user's session count cannot leak upward.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Opens a pidfd for `pid`. Fails with ESRCH when the process is gone.
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Resolves when the process behind `fd` has exited.
pub async fn exited(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the AsyncFd owns `fd` (an OwnedFd), which stays open and the
    // same for as long as the AsyncFd lives.
    let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let _ready = afd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_an_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = open(child.id()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), exited(fd))
            .await
            .expect("exit noticed")
            .unwrap();
        child.wait().unwrap();
        assert!(open(u32::MAX).is_err());
    }
}
