//! Reading a user's live usage from the cgroup files, on either layout.
//!
//! The layout is detected at run time: the unified cgroup v2 hierarchy (most
//! current hosts), or the v1 controllers of a hybrid or legacy host. Only
//! reads happen here; every limit is written through systemd.
//!
//! | figure            | cgroup v2                  | cgroup v1                                   |
//! |-------------------|----------------------------|---------------------------------------------|
//! | memory in use     | `memory.current`           | `memory/…/memory.usage_in_bytes`            |
//! | tasks             | `pids.current`             | `pids/…/pids.current`                       |
//! | CPU time          | `cpu.stat` `usage_usec`    | `cpuacct.usage`, else the live processes' times |
//! | throttled periods | `cpu.stat` `nr_throttled`  | `cpu/…/cpu.stat` `nr_throttled`             |
//! | OOM kills         | `memory.events` `oom_kill` | `memory.oom_control` `oom_kill`             |

use std::path::{Path, PathBuf};

use fairshare_proto::wire::Usage;

/// The cgroup layout of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 only.
    Unified,
    /// v1 controllers, plus a v2 hierarchy systemd uses for tracking.
    Hybrid,
    /// v1 only.
    Legacy,
}

#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    layout: Layout,
}

impl Cgroups {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: impl Into<PathBuf>) -> Cgroups {
        let root = root.into();
        let layout = if root.join("cgroup.controllers").exists() {
            Layout::Unified
        } else if root.join("unified").is_dir() {
            Layout::Hybrid
        } else {
            Layout::Legacy
        };
        Cgroups { root, layout }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn rel(uid: u32) -> String {
        format!("user.slice/user-{uid}.slice")
    }

    fn v1(&self, controller: &str, uid: u32) -> PathBuf {
        self.root.join(controller).join(Self::rel(uid))
    }

    /// What the user's slice uses now. Figures the host does not provide are
    /// left out. Cheap: a handful of small file reads.
    pub fn usage(&self, uid: u32) -> Usage {
        // No slice (a user who is not logged in, root): nothing to read. One
        // or three lookups instead of a dozen failing opens per request.
        let exists = match self.layout {
            Layout::Unified => self.root.join(Self::rel(uid)).is_dir(),
            Layout::Hybrid | Layout::Legacy => ["memory", "pids", "systemd"]
                .iter()
                .any(|c| self.v1(c, uid).is_dir()),
        };
        if !exists {
            return Usage::default();
        }
        match self.layout {
            Layout::Unified => {
                let d = self.root.join(Self::rel(uid));
                let cpu_stat = read(&d.join("cpu.stat"));
                Usage {
                    memory_current: read_u64(&d.join("memory.current")),
                    tasks_current: read_u64(&d.join("pids.current")),
                    cpu_usage_nsec: cpu_stat
                        .as_deref()
                        .and_then(|s| key(s, "usage_usec"))
                        .map(|us| us.saturating_mul(1000)),
                    cpu_throttled_periods: cpu_stat.as_deref().and_then(|s| key(s, "nr_throttled")),
                    oom_kills: read(&d.join("memory.events"))
                        .as_deref()
                        .and_then(|s| key(s, "oom_kill")),
                }
            }
            Layout::Hybrid | Layout::Legacy => {
                let cpu_usage = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                    .iter()
                    .find_map(|c| read_u64(&self.v1(c, uid).join("cpuacct.usage")))
                    .or_else(|| self.live_process_cpu(uid));
                Usage {
                    memory_current: read_u64(&self.v1("memory", uid).join("memory.usage_in_bytes")),
                    tasks_current: read_u64(&self.v1("pids", uid).join("pids.current")),
                    cpu_usage_nsec: cpu_usage,
                    cpu_throttled_periods: ["cpu", "cpu,cpuacct", "cpuacct,cpu"]
                        .iter()
                        .find_map(|c| read(&self.v1(c, uid).join("cpu.stat")))
                        .as_deref()
                        .and_then(|s| key(s, "nr_throttled")),
                    // v1 counts a kill in the cgroup of the victim (a session
                    // scope, say), not in its ancestors: add up the subtree.
                    oom_kills: sum_below(&self.v1("memory", uid), "memory.oom_control", "oom_kill"),
                }
            }
        }
    }

    /// CPU time of the slice's live processes, where the host keeps no
    /// per-cgroup CPU accounting (cpu and cpuacct mounted apart).
    fn live_process_cpu(&self, uid: u32) -> Option<u64> {
        let dir = self.v1("systemd", uid);
        if !dir.is_dir() {
            return None;
        }
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as u64;
        let mut total_ticks = 0u64;
        for pid in procs_below(&dir) {
            let Some(stat) = read(Path::new(&format!("/proc/{pid}/stat"))) else {
                continue;
            };
            total_ticks = total_ticks.saturating_add(stat_cpu_ticks(&stat).unwrap_or(0));
        }
        Some(total_ticks.saturating_mul(1_000_000_000 / ticks))
    }
}

/// The sum of `key` in `file` of `dir` and every cgroup below it; `None`
/// when `dir` has no such file.
fn sum_below(dir: &Path, file: &str, k: &str) -> Option<u64> {
    let top = key(&read(&dir.join(file))?, k)?;
    let mut total = top;
    let mut stack: Vec<PathBuf> = subdirs(dir);
    while let Some(d) = stack.pop() {
        if let Some(v) = read(&d.join(file)).as_deref().and_then(|t| key(t, k)) {
            total = total.saturating_add(v);
        }
        stack.extend(subdirs(&d));
    }
    Some(total)
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid in `cgroup.procs` of `dir` and the cgroups below it.
fn procs_below(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Some(t) = read(&d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
    }
    out
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name may hold spaces and parentheses, so fields are counted after the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Reads a small kernel file (cgroup, /proc). These report a size of 0, so
/// `fs::read_to_string` would stat the file and then read it in growing
/// steps from 32 bytes: a dozen syscalls where two reads into a page do.
fn read(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
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

/// A process's start time (field 22 of `/proc/PID/stat`, clock ticks after
/// boot): with the pid, it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")))?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process is still alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match read(Path::new(&format!("/proc/{pid}/stat"))) {
        None => false,
        Some(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
            state.as_deref() != Some("Z")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn reads_kernel_files_of_any_size() {
        let t = tempfile::tempdir().unwrap();
        let long: String = (0..3000).map(|i| format!("{i}\n")).collect();
        assert!(long.len() > 3 * 4096);
        write(t.path(), "long", &long);
        write(t.path(), "short", "42\n");
        assert_eq!(read(&t.path().join("long")).as_deref(), Some(long.as_str()));
        assert_eq!(read_u64(&t.path().join("short")), Some(42));
        assert_eq!(read(&t.path().join("missing")), None);
        // a real /proc file, whose size reads as 0
        let own = read(Path::new("/proc/self/stat")).unwrap();
        assert!(
            own.starts_with(&format!("{} (", std::process::id())),
            "{own}"
        );
        assert_eq!(
            start_time(std::process::id()),
            start_time(std::process::id())
        );
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn unified_usage() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "cgroup.controllers", "cpu memory pids\n");
        let s = "user.slice/user-1001.slice";
        write(r, &format!("{s}/memory.current"), "1048576\n");
        write(r, &format!("{s}/pids.current"), "7\n");
        write(
            r,
            &format!("{s}/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nnr_periods 10\nnr_throttled 3\n",
        );
        write(
            r,
            &format!("{s}/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        let c = Cgroups::detect(r);
        assert_eq!(c.layout(), Layout::Unified);
        let u = c.usage(1001);
        assert_eq!(u.memory_current, Some(1 << 20));
        assert_eq!(u.tasks_current, Some(7));
        assert_eq!(u.cpu_usage_nsec, Some(2_500_000));
        assert_eq!(u.cpu_throttled_periods, Some(3));
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(c.usage(1002), Usage::default());
    }

    #[test]
    fn hybrid_usage() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("unified")).unwrap();
        let s = "user.slice/user-1001.slice";
        write(r, &format!("memory/{s}/memory.usage_in_bytes"), "4096\n");
        write(
            r,
            &format!("memory/{s}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(r, &format!("pids/{s}/pids.current"), "3\n");
        write(r, &format!("cpu,cpuacct/{s}/cpuacct.usage"), "123456789\n");
        write(
            r,
            &format!("cpu/{s}/cpu.stat"),
            "nr_periods 5\nnr_throttled 2\nthrottled_time 9\n",
        );
        let c = Cgroups::detect(r);
        assert_eq!(c.layout(), Layout::Hybrid);
        let u = c.usage(1001);
        assert_eq!(u.memory_current, Some(4096));
        assert_eq!(u.tasks_current, Some(3));
        assert_eq!(u.cpu_usage_nsec, Some(123_456_789));
        assert_eq!(u.cpu_throttled_periods, Some(2));
        assert_eq!(u.oom_kills, Some(2));
        // a user without a slice has no usage at all
        assert_eq!(c.usage(1002), Usage::default());
        // a slice only the pids controller knows still counts its tasks
        write(r, "pids/user.slice/user-1003.slice/pids.current", "5\n");
        assert_eq!(c.usage(1003).tasks_current, Some(5));
    }

    #[test]
    fn hybrid_without_cpuacct_sums_live_processes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("unified")).unwrap();
        let me = std::process::id();
        write(
            r,
            "systemd/user.slice/user-1001.slice/session-1.scope/cgroup.procs",
            &format!("{me}\n"),
        );
        // burn a little CPU so the figure is above zero
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let u = Cgroups::detect(r).usage(1001);
        assert!(u.cpu_usage_nsec.unwrap() > 0, "{u:?}");
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(12));
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
        assert_eq!(start_time(u32::MAX), None);
    }
}
