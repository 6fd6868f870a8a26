//! The kernel's log, `/dev/kmsg`, read for the pids and names of the
//! processes an OOM killed (the cgroup counters only say how many).
//!
//! One reader for the daemon, opened at start and moved to the end of the
//! log, so only reports made from then on are read. It is read only when a
//! watcher has kills to name ([`KernelLog::victims`]): every record since the
//! last read (at most [`MAX_RECORDS`] at a time), non-blocking. The reports
//! are kept for a while in [`RecentReports`], and each user's watcher takes
//! only reports of its own user ([`super::kmsg`] says why a forged line cannot
//! make an event or reach another user).
//!
//! Where `/dev/kmsg` cannot be read (a container without it, a unit
//! hardened with `ProtectKernelLogs=yes`), victims stay unnamed: "a process
//! was killed".

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use fairshare_proto::events::Process;

use super::kmsg::{self, RecentReports};

/// The kernel log device.
pub const DEVICE: &str = "/dev/kmsg";
/// Records read at most in one go (the log holds a few thousand).
pub const MAX_RECORDS: usize = 10_000;

/// The reader; see the module's doc.
#[derive(Debug)]
pub struct KernelLog {
    file: Option<File>,
    recent: RecentReports,
    /// OOM reports seen since start.
    reports: u64,
}

impl KernelLog {
    /// Opens `path` (normally [`DEVICE`]) and moves to its end. A log that
    /// cannot be opened is remembered as such ([`KernelLog::readable`]).
    pub fn open(path: &Path) -> (KernelLog, Option<io::Error>) {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f));
        let (file, error) = match opened {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        (
            KernelLog {
                file,
                recent: RecentReports::default(),
                reports: 0,
            },
            error,
        )
    }

    /// A reader of nothing (no kernel log).
    pub fn none() -> KernelLog {
        KernelLog {
            file: None,
            recent: RecentReports::default(),
            reports: 0,
        }
    }

    /// Whether the kernel's reports can be read at all.
    pub fn readable(&self) -> bool {
        self.file.is_some()
    }

    /// OOM reports read since start.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// Reads every record written since the last read; keeps the OOM
    /// reports among them. Never blocks.
    fn drain(&mut self) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        // one record per read; a record is at most about 1 KiB of text
        let mut buf = vec![0u8; 8192];
        for _ in 0..MAX_RECORDS {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(report) =
                        kmsg::parse_record(&buf[..n]).and_then(|r| kmsg::parse_oom(&r))
                    {
                        self.reports += 1;
                        self.recent.add(report);
                    }
                }
                Err(e) => match e.raw_os_error() {
                    // records overwritten before we read them: go on with the next
                    Some(libc::EPIPE) => continue,
                    Some(libc::EINTR) => continue,
                    // EAGAIN: nothing more for now; anything else: stop here
                    _ => break,
                },
            }
        }
    }

    /// The processes of `uid` killed in its slice that the kernel reported
    /// since the last call, at most `n`, oldest first. `None` when the log
    /// cannot be read.
    pub fn victims(&mut self, uid: u32, n: usize) -> Option<Vec<Process>> {
        if !self.readable() {
            return None;
        }
        self.drain();
        Some(
            self.recent
                .take(uid, n)
                .into_iter()
                .map(|r| Process::from_kernel(r.pid, &r.name))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_missing_log_names_nobody() {
        let (mut log, err) = KernelLog::open(Path::new("/nonexistent/kmsg"));
        assert!(err.is_some());
        assert!(!log.readable());
        assert_eq!(log.victims(1001, 3), None);
        assert!(!KernelLog::none().readable());
    }

    /// A regular file stands in for the device: each `read` of the device
    /// gives one record; here the whole file comes at once, so only its
    /// first record counts, which is enough to follow the reading path.
    #[test]
    fn reports_are_read_from_where_the_log_was_opened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        std::fs::write(&p, "6,1,1,-;an old record\n").unwrap();
        let (mut log, err) = KernelLog::open(&p);
        assert!(err.is_none());
        assert_eq!(log.victims(1001, 1), Some(vec![]), "opened at the end");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br"3,567,307795901,-;Memory cgroup out of memory: Killed process 632 (e\x1b[31m\x0avil) total-vm:315080kB, anon-rss:126308kB, file-rss:2068kB, shmem-rss:0kB, UID:1001 pgtables:304kB oom_score_adj:0").unwrap();
        drop(f);
        assert_eq!(log.victims(1002, 1), Some(vec![]), "another user's");
        let v = log.victims(1001, 1).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pid, 632);
        assert_eq!(v[0].name, r"e\x1b[31m\nvil");
        assert_eq!(log.reports(), 1);
        assert_eq!(log.victims(1001, 1), Some(vec![]), "taken once");
    }
}
