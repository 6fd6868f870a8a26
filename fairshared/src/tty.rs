//! Writing a notice to a user's terminal, safely, from root.
//!
//! The terminals are those of the user's logind sessions: the session's
//! `TTY` property (`pts/3` for an `ssh -t` login, `tty1` on a console; empty
//! for `ssh host cmd`), or the controlling terminal of a session's processes
//! (`/proc/PID/stat`, field 7). A name becomes a path only when it is one of
//! those shapes ([`device_path`]): nothing else is ever opened.
//!
//! [`write_notice`] then:
//!
//! * opens it `O_WRONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC`:
//!   never becomes the daemon's controlling terminal, never waits for a
//!   carrier, never follows a link;
//! * checks on the open file (not the path, which may have changed
//!   meanwhile: a pty number is reused as soon as it is free) that it is a
//!   character device of a terminal kind (a pty, or major 4: virtual consoles
//!   and serial lines), that it is a terminal, and that the user owns it (a
//!   reused pty belongs to whoever has it now);
//! * respects `mesg n`: a terminal without group write permission is left
//!   alone, as `write(1)` and `wall(1)` leave it (the daemon writes as group
//!   `tty`, without `CAP_DAC_OVERRIDE`, so the kernel enforces this too);
//! * writes once, without blocking: a stopped terminal (Ctrl-S) or one whose
//!   reader has stalled gives `EAGAIN` at once (measured: 0.0 ms, where a
//!   blocking `echo > /dev/pts/N` hung until killed), and is given up on. No
//!   retry, no loop, no thread waits on a user's terminal.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest notice written at once (a few lines; a pty takes 4 KiB in
/// one write when its reader keeps up).
pub const MAX_NOTICE: usize = 2048;

/// Pseudo-terminal slaves (`/dev/pts/N`) have majors 136 to 143.
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
/// Virtual consoles (`/dev/ttyN`, minor 1 to 63) and serial lines
/// (`/dev/ttySN`, minor 64 up); minor 0 is `/dev/tty0`, "the current
/// console", which is nobody's own.
const TTY_MAJOR: u32 = 4;

/// The device path of a terminal name as logind gives it (`pts/3`, `tty1`,
/// `ttyS0`, or the same under `/dev/`); `None` for anything else (`ssh`,
/// `:0`, `cron`, `pts/../..`, an empty name).
pub fn device_path(name: &str) -> Option<PathBuf> {
    let name = name.strip_prefix("/dev/").unwrap_or(name);
    let ok = if let Some(n) = name.strip_prefix("pts/") {
        is_number(n)
    } else if let Some(n) = name.strip_prefix("ttyS") {
        is_number(n)
    } else if let Some(n) = name.strip_prefix("tty") {
        is_number(n) && n != "0"
    } else {
        false
    };
    ok.then(|| Path::new("/dev").join(name))
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The controlling terminal of a process, from its `/proc/PID/stat` line
/// (field 7, `tty_nr`; 0 for none), as a device path.
pub fn controlling_tty(stat: &str) -> Option<PathBuf> {
    // the command name may hold spaces and parentheses: count after the last ')'
    let after = &stat[stat.rfind(')')? + 1..];
    let tty_nr: u32 = after.split_whitespace().nth(4)?.parse().ok()?;
    if tty_nr == 0 {
        return None;
    }
    // the kernel's 32-bit device encoding
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    if PTS_MAJORS.contains(&major) {
        device_path(&format!(
            "pts/{}",
            (major - PTS_MAJORS.start()) * 256 + minor
        ))
    } else if major == TTY_MAJOR && (1..64).contains(&minor) {
        device_path(&format!("tty{minor}"))
    } else if major == TTY_MAJOR && minor >= 64 {
        device_path(&format!("ttyS{}", minor - 64))
    } else {
        None
    }
}

/// What became of a notice.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it is on its way to the terminal.
    All,
    /// Only the first bytes fit; the rest was dropped.
    Partial(usize),
    /// The user said `mesg n`: not written.
    MesgOff,
    /// The terminal takes nothing now (stopped with Ctrl-S, or its reader
    /// is not reading): not written.
    Stalled,
}

/// Why nothing could be written.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("the terminal is gone")]
    Gone,
    #[error("not a terminal")]
    NotATerminal,
    #[error("the terminal belongs to uid {owner}, not {uid}")]
    NotOwned { owner: u32, uid: u32 },
    #[error("no permission to write to the terminal")]
    Denied,
    #[error("{0}")]
    Io(io::Error),
}

/// Writes `text` to the terminal at `path` if it is `uid`'s and takes
/// messages; see the module's doc. Never blocks.
pub fn write_notice(path: &Path, uid: u32, text: &[u8]) -> Result<Written, TtyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENXIO | libc::EIO | libc::ENODEV) => TtyError::Gone,
            Some(libc::EACCES | libc::EPERM) => TtyError::Denied,
            // O_NOFOLLOW on a link
            Some(libc::ELOOP) => TtyError::NotATerminal,
            _ => TtyError::Io(e),
        })?;
    let meta = file.metadata().map_err(TtyError::Io)?;
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let terminal_kind = PTS_MAJORS.contains(&major) || (major == TTY_MAJOR && minor >= 1);
    if !meta.file_type().is_char_device() || !terminal_kind || !file.is_terminal() {
        return Err(TtyError::NotATerminal);
    }
    if meta.uid() != uid {
        return Err(TtyError::NotOwned {
            owner: meta.uid(),
            uid,
        });
    }
    if meta.permissions().mode() & 0o020 == 0 {
        return Ok(Written::MesgOff);
    }
    let text = &text[..text.len().min(MAX_NOTICE)];
    match file.write(text) {
        Ok(n) if n == text.len() => Ok(Written::All),
        Ok(0) => Ok(Written::Stalled),
        Ok(n) => Ok(Written::Partial(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Written::Stalled),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENXIO)) => Err(TtyError::Gone),
        Err(e) => Err(TtyError::Io(e)),
    }
}

/// The distinct terminals among `names` (logind `TTY` properties and
/// controlling terminals found in the sessions), in a stable order.
pub fn terminals<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = names.into_iter().filter_map(device_path).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    /// A new pty: its master, and the path of its slave (owned by us, mode
    /// as the devpts mount gives it).
    fn pty() -> (File, PathBuf) {
        // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes
        // at most buf.len() bytes into buf.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", io::Error::last_os_error());
            let master = File::from(OwnedFd::from_raw_fd(fd));
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut buf = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()), 0);
            let path = PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_str().unwrap());
            (master, path)
        }
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    /// A pty slave that takes messages (mode 620, as sshd leaves it), kept
    /// open so the pty stays usable while the test writes to it.
    fn open_pty() -> (File, PathBuf, File) {
        let (master, path) = pty();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        (master, path, slave)
    }

    fn read_some(master: &mut File) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let n = master.read(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn a_notice_reaches_the_terminal() {
        let (mut master, path, _slave) = open_pty();
        assert_eq!(
            write_notice(&path, me(), b"\r\nfairshare: hello\r\n").unwrap(),
            Written::All
        );
        let got = read_some(&mut master);
        // the terminal's own output processing may add a CR before each LF
        let text = String::from_utf8_lossy(&got).replace('\r', "");
        assert_eq!(text, "\nfairshare: hello\n");
    }

    #[test]
    fn someone_elses_terminal_is_left_alone() {
        let (_master, path, _slave) = open_pty();
        match write_notice(&path, me().wrapping_add(1), b"x") {
            Err(TtyError::NotOwned { owner, .. }) => assert_eq!(owner, me()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mesg_n_is_respected() {
        let (mut master, path, _slave) = open_pty();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(write_notice(&path, me(), b"x").unwrap(), Written::MesgOff);
        // nothing arrived: the next read sees only what we write now
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert_eq!(write_notice(&path, me(), b"y").unwrap(), Written::All);
        assert_eq!(read_some(&mut master), b"y");
    }

    #[test]
    fn a_stopped_terminal_never_blocks() {
        let (mut master, path, _slave) = open_pty();
        // Ctrl-S typed on the terminal (IXON is on by default): output stops
        master.write_all(&[0x13]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(
            write_notice(&path, me(), b"\r\nfairshare: notice\r\n").unwrap(),
            Written::Stalled
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn a_terminal_nobody_reads_never_blocks() {
        let (_master, path, _slave) = open_pty();
        // nobody reads the master: the buffers fill up, then every write is
        // given up on at once
        let t = Instant::now();
        let chunk = vec![b'x'; MAX_NOTICE];
        let mut last = Written::All;
        for _ in 0..10_000 {
            last = write_notice(&path, me(), &chunk).unwrap();
            if last == Written::Stalled {
                break;
            }
        }
        assert_eq!(last, Written::Stalled);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn only_terminals_are_written() {
        // a regular file, a link, /dev/null, a missing pty
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            write_notice(&file, me(), b"x"),
            Err(TtyError::NotATerminal)
        ));
        let (_master, pts, _slave) = open_pty();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&pts, &link).unwrap();
        assert!(matches!(
            write_notice(&link, me(), b"x"),
            Err(TtyError::NotATerminal)
        ));
        assert!(matches!(
            write_notice(Path::new("/dev/null"), me(), b"x"),
            Err(TtyError::NotATerminal)
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        assert!(matches!(
            write_notice(Path::new("/dev/pts/999999"), me(), b"x"),
            Err(TtyError::Gone)
        ));
    }

    #[test]
    fn a_pty_whose_master_is_closed_is_gone() {
        let (master, path) = pty();
        drop(master);
        assert!(write_notice(&path, me(), b"x").is_err());
    }

    #[test]
    fn terminal_names() {
        assert_eq!(device_path("pts/3"), Some(PathBuf::from("/dev/pts/3")));
        assert_eq!(
            device_path("/dev/pts/12"),
            Some(PathBuf::from("/dev/pts/12"))
        );
        assert_eq!(device_path("tty1"), Some(PathBuf::from("/dev/tty1")));
        assert_eq!(device_path("ttyS0"), Some(PathBuf::from("/dev/ttyS0")));
        for bad in [
            "",
            "ssh",
            ":0",
            "cron",
            "tty",
            "tty0",
            "pts/",
            "pts/3x",
            "pts/../../etc/passwd",
            "/dev/pts/3/..",
            "/etc/passwd",
            "console",
            "ttyUSB0",
            "pts/1234567",
            "/dev/tty",
        ] {
            assert_eq!(device_path(bad), None, "{bad}");
        }
        assert_eq!(
            terminals(["pts/3", "ssh", "pts/1", "/dev/pts/3", ""]),
            vec![PathBuf::from("/dev/pts/1"), PathBuf::from("/dev/pts/3")]
        );
    }

    #[test]
    fn controlling_terminals_from_proc() {
        // as read in the container: bash on pts/1 (tty_nr 34817 = 136:1)
        let bash = "1018 (bash) S 1017 1018 1018 34817 1018 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 1 1";
        assert_eq!(controlling_tty(bash), Some(PathBuf::from("/dev/pts/1")));
        // sshd has none
        let sshd = "1017 (sshd) S 1009 1009 1009 0 -1 4194624 1 0 0 0 0 0 0 0 20 0 1 0 5 1 1";
        assert_eq!(controlling_tty(sshd), None);
        // a name with spaces and parentheses; pts/300 (major 137, minor 44)
        let nr = (137 << 8) | 44;
        let odd = format!("7 (a) b (c) S 1 7 7 {nr} 7 0");
        assert_eq!(controlling_tty(&odd), Some(PathBuf::from("/dev/pts/300")));
        // tty2 and ttyS1
        assert_eq!(
            controlling_tty(&format!("7 (x) S 1 7 7 {} 7 0", (4 << 8) | 2)),
            Some(PathBuf::from("/dev/tty2"))
        );
        assert_eq!(
            controlling_tty(&format!("7 (x) S 1 7 7 {} 7 0", (4 << 8) | 65)),
            Some(PathBuf::from("/dev/ttyS1"))
        );
        // /dev/console (5:1) and garbage
        assert_eq!(
            controlling_tty(&format!("7 (x) S 1 7 7 {} 7", (5 << 8) | 1)),
            None
        );
        assert_eq!(controlling_tty("garbage"), None);
        // the real thing: our own stat parses (a terminal or not)
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let _ = controlling_tty(&own);
    }
}
