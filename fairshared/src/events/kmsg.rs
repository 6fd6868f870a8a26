//! The victims of an OOM kill, from the kernel's log (`/dev/kmsg`).
//!
//! The cgroup counters say how many processes were killed, never which. The
//! kernel's report does, in two lines (Linux 6.1 and 6.18, as read in the v2
//! guest and on the test machine):
//!
//! ```text
//! 6,477,212861633,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/user.slice/user-1001.slice,task_memcg=/user.slice/user-1001.slice/session-19.scope,task=perl,pid=491,uid=1001
//! 3,478,212862618,-;Memory cgroup out of memory: Killed process 491 (perl) total-vm:315080kB, anon-rss:126416kB, file-rss:2056kB, shmem-rss:0kB, UID:1001 pgtables:304kB oom_score_adj:0
//! ```
//!
//! `/dev/kmsg` writes every byte below 0x20, from 0x7f up, and `\` as
//! `\xNN`, so a record is one line of printable ASCII; a process name
//! written with escape sequences and a newline arrives as
//! `e\x1b[31m\x0avil`. It is taken apart from the right, where only the
//! kernel writes: the name (`task=`) and the cgroup paths are chosen by users
//! (`/proc/self/comm`, cgroups they create in their delegated subtree), the
//! trailing `pid=` and `uid=` are not. A report is only ever used to name
//! the victims of a kill the cgroup counters already attributed to the
//! user's slice, and only when its `uid=` is the user's: a made-up line
//! cannot create an event, nor reach another user.
//!
//! The daemon keeps `/dev/kmsg` open (non-blocking, at its end) and reads
//! what is new only when a slice OOM has happened; this module is the pure
//! part.

use std::collections::VecDeque;

/// One record of `/dev/kmsg`: `PRI,SEQ,TIMESTAMP_US,FLAGS[,…];MESSAGE`,
/// possibly followed by continuation lines (` KEY=VALUE`), which are
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// syslog facility × 8 + level; the kernel's own messages have facility 0.
    pub priority: u32,
    pub seq: u64,
    /// Microseconds since boot (the kernel's monotonic clock).
    pub ts_us: u64,
    /// The message, still escaped as the kernel wrote it.
    pub message: &'a str,
}

impl Record<'_> {
    /// Whether the kernel wrote it (root can write records of its own to
    /// `/dev/kmsg`; they come with a user facility unless forged by root).
    pub fn from_kernel(&self) -> bool {
        self.priority >> 3 == 0
    }
}

/// Parses one record as `read(2)` on `/dev/kmsg` returns it.
pub fn parse_record(raw: &[u8]) -> Option<Record<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let first = text.split('\n').next()?;
    let (prefix, message) = first.split_once(';')?;
    let mut fields = prefix.split(',');
    let priority = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let ts_us = fields.next()?.parse().ok()?;
    Some(Record {
        priority,
        seq,
        ts_us,
        message,
    })
}

/// Reverses the kernel's `\xNN` escapes: the bytes as they were.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A process the kernel reported killed because a memory cgroup reached its
/// limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomReport {
    pub seq: u64,
    pub ts_us: u64,
    pub pid: u32,
    /// The uid the process ran as (not necessarily the slice's owner: a
    /// root process in a user's session is killed as uid 0).
    pub uid: u32,
    /// The name, as bytes (unescaped).
    pub name: Vec<u8>,
    /// Whether the OOM was at the slice of `uid`'s user (see [`memcg_is_slice`]).
    pub memcg: Memcg,
}

/// Where the OOM happened, as far as the report says it unambiguously.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Memcg {
    /// `oom_memcg=` names exactly this path (the kernel writes it from the
    /// root of the hierarchy, so inside a container it has a prefix).
    Path(String),
    /// Not said, or said more than once (a user-made cgroup or process name
    /// contains `,oom_memcg=`): unknown.
    Unknown,
}

/// Parses the two kinds of kernel line that name an OOM victim; anything
/// else (and a global OOM, `Out of memory: Killed process`) is `None`.
pub fn parse_oom(rec: &Record<'_>) -> Option<OomReport> {
    if !rec.from_kernel() {
        return None;
    }
    let m = rec.message;
    if let Some(rest) = m.strip_prefix("oom-kill:") {
        // the first field is the kernel's: only memory cgroup OOMs
        if !rest.starts_with("constraint=CONSTRAINT_MEMCG,") {
            return None;
        }
        let (before_uid, uid) = rest.rsplit_once(",uid=")?;
        let uid = uid.trim_end().parse().ok()?;
        let (before_pid, pid) = before_uid.rsplit_once(",pid=")?;
        let pid = pid.parse().ok()?;
        // the name follows the last ",task=" before ",pid=": if the name
        // itself holds ",task=", what is before it is lost (display only)
        let (head, name) = before_pid.rsplit_once(",task=")?;
        Some(OomReport {
            seq: rec.seq,
            ts_us: rec.ts_us,
            pid,
            uid,
            name: unescape(name),
            memcg: oom_memcg(head),
        })
    } else if let Some(rest) = m.strip_prefix("Memory cgroup out of memory: Killed process ") {
        let (pid, rest) = rest.split_once(" (")?;
        let pid = pid.parse().ok()?;
        // the kernel's text after the name starts with ") total-vm:"; the
        // last one is the kernel's
        let (name, tail) = rest.rsplit_once(") total-vm:")?;
        let uid = tail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("UID:"))?
            .parse()
            .ok()?;
        Some(OomReport {
            seq: rec.seq,
            ts_us: rec.ts_us,
            pid,
            uid,
            name: unescape(name),
            memcg: Memcg::Unknown,
        })
    } else {
        None
    }
}

/// The `oom_memcg=` path of a summary line's head (everything before
/// `,task=`), when the head says it exactly once.
fn oom_memcg(head: &str) -> Memcg {
    const KEY: &str = ",oom_memcg=";
    const NEXT: &str = ",task_memcg=";
    if head.matches(KEY).count() != 1 {
        return Memcg::Unknown;
    }
    let Some((_, after)) = head.split_once(KEY) else {
        return Memcg::Unknown;
    };
    match after.split_once(NEXT) {
        Some((path, _)) => Memcg::Path(path.to_string()),
        None => Memcg::Unknown,
    }
}

/// Whether an `oom_memcg=` path is the slice of `uid` (cgroup names cannot
/// hold `/`, so a path that ends in `/user.slice/user-UID.slice` is that
/// slice, whatever prefix a container adds).
pub fn memcg_is_slice(path: &str, uid: u32) -> bool {
    path.ends_with(&format!("/user.slice/user-{uid}.slice"))
}

/// Reports read from the kernel log and not yet used, for every user: the
/// log is read once for everyone, and each user's watcher takes its own.
#[derive(Clone, Debug, Default)]
pub struct RecentReports {
    reports: VecDeque<OomReport>,
}

/// At most this many reports are kept.
const MAX_REPORTS: usize = 256;
/// Reports older than this (kernel time) are dropped.
const REPORT_TTL_US: u64 = 120_000_000;

impl RecentReports {
    /// Adds what the kernel log had; a victim reported in both lines is
    /// kept once (the summary line, which says where the OOM was, wins).
    pub fn add(&mut self, report: OomReport) {
        if let Some(old) = self
            .reports
            .iter_mut()
            .find(|r| r.pid == report.pid && r.uid == report.uid)
        {
            if old.memcg == Memcg::Unknown {
                old.memcg = report.memcg;
            }
            return;
        }
        if self.reports.len() == MAX_REPORTS {
            self.reports.pop_front();
        }
        self.reports.push_back(report);
        let newest = self.reports.iter().map(|r| r.ts_us).max().unwrap_or(0);
        self.reports
            .retain(|r| newest.saturating_sub(r.ts_us) <= REPORT_TTL_US);
    }

    /// Takes up to `n` victims of OOMs at the slice of user `uid`: reports
    /// with that uid whose OOM was at that slice, or at a place the report
    /// does not say.
    pub fn take(&mut self, uid: u32, n: usize) -> Vec<OomReport> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.reports.len() && out.len() < n {
            let r = &self.reports[i];
            let here = match &r.memcg {
                Memcg::Path(p) => memcg_is_slice(p, uid),
                Memcg::Unknown => true,
            };
            if r.uid == uid && here {
                if let Some(r) = self.reports.remove(i) {
                    out.push(r);
                }
            } else {
                i += 1;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read with `cat /dev/kmsg` in the v2 guest (Debian 6.1 kernel) after a
    // perl process that had written "e\e[31m\nvil\e]0;x\a" to
    // /proc/self/comm was killed at the slice's 128M limit.
    const SUMMARY: &str = r"6,566,307795789,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/user.slice/user-1001.slice,task_memcg=/user.slice/user-1001.slice/session-30.scope,task=e\x1b[31m\x0avil\x1b]0;x,pid=632,uid=1001";
    const KILLED: &str = r"3,567,307795901,-;Memory cgroup out of memory: Killed process 632 (e\x1b[31m\x0avil\x1b]0;x) total-vm:315080kB, anon-rss:126308kB, file-rss:2068kB, shmem-rss:0kB, UID:1001 pgtables:304kB oom_score_adj:0";
    // On the test machine (6.18), from the container test host: the paths
    // are written from the root of the host's hierarchy.
    const CONTAINER: &str = "6,9001,2882843349,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=fs-s14-notice,mems_allowed=0,oom_memcg=/process_api/2fa56c4052254c12b0c3d18af9894ff1/fs-s14-notice/user.slice/user-1001.slice,task_memcg=/process_api/2fa56c4052254c12b0c3d18af9894ff1/fs-s14-notice/user.slice/user-1001.slice/session-768.scope,task=perl,pid=7114,uid=1001";

    fn parse(line: &str) -> Option<OomReport> {
        parse_oom(&parse_record(line.as_bytes()).unwrap())
    }

    #[test]
    fn records() {
        let r = parse_record(b"6,477,212861633,-;hello\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(
            (r.priority, r.seq, r.ts_us, r.message),
            (6, 477, 212861633, "hello")
        );
        assert!(r.from_kernel());
        assert!(!parse_record(b"14,1,2,-;from a user").unwrap().from_kernel());
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"6,x,1,-;m").is_none());
        assert!(parse_record(b"\xff,1,1,-;m").is_none());
    }

    #[test]
    fn a_hostile_name_from_both_lines() {
        let want = b"e\x1b[31m\nvil\x1b]0;x".to_vec();
        let s = parse(SUMMARY).unwrap();
        assert_eq!((s.pid, s.uid, s.seq), (632, 1001, 566));
        assert_eq!(s.name, want);
        assert_eq!(s.memcg, Memcg::Path("/user.slice/user-1001.slice".into()));
        let k = parse(KILLED).unwrap();
        assert_eq!((k.pid, k.uid), (632, 1001));
        assert_eq!(k.name, want);
        assert_eq!(k.memcg, Memcg::Unknown);
        let c = parse(CONTAINER).unwrap();
        let Memcg::Path(p) = &c.memcg else {
            panic!("{c:?}")
        };
        assert!(memcg_is_slice(p, 1001));
        assert!(!memcg_is_slice(p, 100));
        assert!(!memcg_is_slice(
            "/user.slice/user-1001.slice/user@1001.service/x",
            1001
        ));
    }

    #[test]
    fn other_lines_are_not_reports() {
        for l in [
            "4,436,212641461,-;perl invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            "6,1,1,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice/user-1001.slice/session-2.scope,task=perl,pid=5,uid=1001",
            "3,2,2,-;Out of memory: Killed process 5 (perl) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:1001 pgtables:1kB oom_score_adj:0",
            // a user cannot write kernel records (facility 1 = user)
            "11,3,3,-;Memory cgroup out of memory: Killed process 1 (init) total-vm:1kB, UID:0 pgtables:1kB",
            "6,4,4,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=x,pid=notanumber,uid=1",
        ] {
            assert_eq!(parse(l), None, "{l}");
        }
    }

    #[test]
    fn names_that_imitate_the_kernels_fields() {
        // comm is at most 15 bytes, but cgroup names are not: a user's own
        // cgroup named to look like another slice's OOM
        let fake = r"6,10,10,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,oom_memcg=/user.slice/user-1002.slice,task_memcg=y,mems_allowed=0,oom_memcg=/user.slice/user-1001.slice/user@1001.service/app.slice/z,task_memcg=/user.slice/user-1001.slice/user@1001.service/app.slice/z,task=a,pid=1,uid=2,pid=700,uid=1001";
        let r = parse(fake).unwrap();
        assert_eq!(
            (r.pid, r.uid),
            (700, 1001),
            "the rightmost fields are the kernel's"
        );
        assert_eq!(r.memcg, Memcg::Unknown, "two oom_memcg= fields: unknown");
        // a name holding ") total-vm:" does not end the name early
        let k = parse(r"3,11,11,-;Memory cgroup out of memory: Killed process 9 (a) total-vm:1) total-vm:315080kB, anon-rss:1kB, file-rss:1kB, shmem-rss:0kB, UID:1001 pgtables:1kB oom_score_adj:0").unwrap();
        assert_eq!((k.pid, k.uid), (9, 1001));
        assert_eq!(k.name, b"a) total-vm:1".to_vec());
        // escapes are undone only where they are whole; the kernel writes a
        // backslash as \x5c, so a name that spells "\x41" stays that text
        assert_eq!(unescape(r"a\x1bb"), b"a\x1bb".to_vec());
        assert_eq!(unescape(r"\x5cx41"), br"\x41".to_vec());
        assert_eq!(unescape(r"\xzz\x4"), br"\xzz\x4".to_vec());
    }

    #[test]
    fn victims_go_to_their_own_user() {
        let mut recent = RecentReports::default();
        recent.add(parse(SUMMARY).unwrap());
        recent.add(parse(KILLED).unwrap());
        assert_eq!(recent.len(), 1, "both lines of one kill are one victim");
        let mut other = parse(SUMMARY).unwrap();
        other.pid = 633;
        other.uid = 1002;
        other.memcg = Memcg::Path("/user.slice/user-1002.slice".into());
        recent.add(other);
        // a child-limit victim of 1001 is not taken for the slice
        let mut child = parse(SUMMARY).unwrap();
        child.pid = 634;
        child.memcg = Memcg::Path(
            "/user.slice/user-1001.slice/user@1001.service/app.slice/hog.service".into(),
        );
        recent.add(child);
        assert_eq!(recent.take(1003, 8), vec![]);
        let mine = recent.take(1001, 8);
        assert_eq!(mine.iter().map(|r| r.pid).collect::<Vec<_>>(), vec![632]);
        assert_eq!(recent.take(1001, 8), vec![], "taken once");
        assert_eq!(recent.take(1002, 8).len(), 1);
        assert_eq!(
            recent.len(),
            1,
            "the child-limit victim waits until it ages out"
        );
    }

    #[test]
    fn old_reports_age_out() {
        let mut recent = RecentReports::default();
        let mut a = parse(SUMMARY).unwrap();
        a.ts_us = 1;
        recent.add(a);
        let mut b = parse(SUMMARY).unwrap();
        b.pid = 1;
        b.ts_us = REPORT_TTL_US + 2;
        recent.add(b);
        assert_eq!(recent.len(), 1);
        for i in 0..(MAX_REPORTS as u32 + 10) {
            let mut r = parse(SUMMARY).unwrap();
            r.pid = 10_000 + i;
            r.ts_us = REPORT_TTL_US + 2;
            recent.add(r);
        }
        assert_eq!(recent.len(), MAX_REPORTS);
    }
}
