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
//! | CPU time          | `cpu.stat` `usage_usec`    | `cpuacct.usage`, else (hybrid) the v2 tree's `cpu.stat`, else the live processes' times |
//! | throttled periods | `cpu.stat` `nr_throttled`  | `cpu/…/cpu.stat` `nr_throttled`             |
//! | OOM kills         | `memory.events` `oom_kill` | `memory.oom_control` `oom_kill`             |

use std::path::{Path, PathBuf};

use fairshare_proto::wire::Usage;

use crate::kernfs::{key, read, read_u64};

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

    /// Where the hierarchy is mounted (normally `/sys/fs/cgroup`).
    pub fn root(&self) -> &Path {
        &self.root
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
                    cpu_recent: None,
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
                let cpu_usage = self.v1_cpu_nsec(uid);
                Usage {
                    memory_current: read_u64(&self.v1("memory", uid).join("memory.usage_in_bytes")),
                    tasks_current: read_u64(&self.v1("pids", uid).join("pids.current")),
                    cpu_usage_nsec: cpu_usage,
                    cpu_recent: None,
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

    /// The slice's CPU time alone (the daemon's sampler for CPU now): one
    /// file read where the host accounts CPU per cgroup.
    pub fn cpu_nsec(&self, uid: u32) -> Option<u64> {
        match self.layout {
            Layout::Unified => read(&self.root.join(Self::rel(uid)).join("cpu.stat"))
                .as_deref()
                .and_then(|s| key(s, "usage_usec"))
                .map(|us| us.saturating_mul(1000)),
            Layout::Hybrid | Layout::Legacy => {
                if !["memory", "pids", "systemd"]
                    .iter()
                    .any(|c| self.v1(c, uid).is_dir())
                {
                    return None;
                }
                self.v1_cpu_nsec(uid)
            }
        }
    }

    /// The CPU time of the whole host (bursting, issue 15): the root
    /// cgroup's, everything the host ran. v2: the root's `cpu.stat`
    /// `usage_usec`; v1: the root's `cpuacct.usage`, else (hybrid) the v2
    /// tree's root `cpu.stat`. Inside a container the root is the
    /// container's. `None` where the host keeps none of these (the daemon
    /// then never bursts: it cannot tell an idle host).
    pub fn host_cpu_nsec(&self) -> Option<u64> {
        let unified = |dir: &Path| {
            read(&dir.join("cpu.stat"))
                .as_deref()
                .and_then(|s| key(s, "usage_usec"))
                .map(|us| us.saturating_mul(1000))
        };
        match self.layout {
            Layout::Unified => unified(&self.root),
            Layout::Hybrid | Layout::Legacy => ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .find_map(|c| read_u64(&self.root.join(c).join("cpuacct.usage")))
                .or_else(|| match self.layout {
                    Layout::Hybrid => unified(&self.root.join("unified")),
                    _ => None,
                }),
        }
    }

    /// How long some of the slice's tasks waited for a CPU, in µs
    /// (`cpu.pressure` `some` `total=`; hybrid: the v2 tree's, which keeps
    /// it without any controller). `None` without PSI or on v1 alone.
    pub fn cpu_stall_usec(&self, uid: u32) -> Option<u64> {
        let dir = match self.layout {
            Layout::Unified => self.root.join(Self::rel(uid)),
            Layout::Hybrid => self.root.join("unified").join(Self::rel(uid)),
            Layout::Legacy => return None,
        };
        let text = read(&dir.join("cpu.pressure"))?;
        text.lines()
            .find(|l| l.starts_with("some "))?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("total="))?
            .parse()
            .ok()
    }

    fn v1_cpu_nsec(&self, uid: u32) -> Option<u64> {
        ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
            .iter()
            .find_map(|c| read_u64(&self.v1(c, uid).join("cpuacct.usage")))
            .or_else(|| self.unified_cpu_nsec(uid))
            .or_else(|| self.live_process_cpu(uid))
    }

    /// Hybrid: the CPU time the kernel keeps for every cgroup of the v2
    /// tree systemd tracks processes in (`cpu.stat` `usage_usec`, there
    /// without any controller), one file instead of a walk of the
    /// processes where cpuacct is not the slice's.
    fn unified_cpu_nsec(&self, uid: u32) -> Option<u64> {
        if self.layout != Layout::Hybrid {
            return None;
        }
        read(
            &self
                .root
                .join("unified")
                .join(Self::rel(uid))
                .join("cpu.stat"),
        )
        .as_deref()
        .and_then(|s| key(s, "usage_usec"))
        .map(|us| us.saturating_mul(1000))
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
            total_ticks = total_ticks.saturating_add(crate::proc::cpu_ticks(pid).unwrap_or(0));
        }
        Some(total_ticks.saturating_mul(1_000_000_000 / ticks))
    }
}

/// The sum of `key` in `file` of `dir` and every cgroup below it; `None`
/// when `dir` has no such file.
pub(crate) fn sum_below(dir: &Path, file: &str, k: &str) -> Option<u64> {
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

/// `key` in `file` of `dir` and of every cgroup below it, per cgroup (by
/// the inode of its directory: a cgroup made again is another one); `None`
/// when `dir` has no such file.
pub(crate) fn counts_below(
    dir: &Path,
    file: &str,
    k: &str,
) -> Option<std::collections::BTreeMap<u64, u64>> {
    use std::os::unix::fs::MetadataExt;
    let ino = |d: &Path| std::fs::metadata(d).ok().map(|m| m.ino());
    let mut out = std::collections::BTreeMap::new();
    out.insert(ino(dir)?, key(&read(&dir.join(file))?, k)?);
    let mut stack: Vec<PathBuf> = subdirs(dir);
    while let Some(d) = stack.pop() {
        if let (Some(i), Some(v)) = (
            ino(&d),
            read(&d.join(file)).as_deref().and_then(|t| key(t, k)),
        ) {
            out.insert(i, v);
        }
        stack.extend(subdirs(&d));
    }
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
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
        assert_eq!(c.cpu_nsec(1001), Some(2_500_000));
        assert_eq!(c.cpu_nsec(1002), None);
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
        assert_eq!(c.cpu_nsec(1001), Some(123_456_789));
        assert_eq!(c.cpu_nsec(1002), None);
        assert_eq!(u.cpu_throttled_periods, Some(2));
        assert_eq!(u.oom_kills, Some(2));
        // a user without a slice has no usage at all
        assert_eq!(c.usage(1002), Usage::default());
        // a slice only the pids controller knows still counts its tasks
        write(r, "pids/user.slice/user-1003.slice/pids.current", "5\n");
        assert_eq!(c.usage(1003).tasks_current, Some(5));
    }

    #[test]
    fn hybrid_without_cpuacct_reads_the_v2_trees_cpu_time() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let s = "user.slice/user-1001.slice";
        write(r, &format!("memory/{s}/memory.usage_in_bytes"), "4096\n");
        // a process the walk would count, so the figure shows which it took
        write(
            r,
            &format!("systemd/{s}/session-1.scope/cgroup.procs"),
            &format!("{}\n", std::process::id()),
        );
        write(
            r,
            &format!("unified/{s}/cpu.stat"),
            "usage_usec 7000\nuser_usec 5000\nsystem_usec 2000\n",
        );
        let c = Cgroups::detect(r);
        assert_eq!(c.layout(), Layout::Hybrid);
        assert_eq!(c.usage(1001).cpu_usage_nsec, Some(7_000_000));
        assert_eq!(c.cpu_nsec(1001), Some(7_000_000));
        // cpuacct, where the slice has it, comes first
        write(r, &format!("cpuacct/{s}/cpuacct.usage"), "123\n");
        assert_eq!(c.cpu_nsec(1001), Some(123));
    }

    #[test]
    fn the_hosts_cpu_time_from_the_root_cgroup() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "cgroup.controllers", "cpu\n");
        write(r, "cpu.stat", "usage_usec 9000\nuser_usec 1\n");
        assert_eq!(Cgroups::detect(r).host_cpu_nsec(), Some(9_000_000));
        write(
            r,
            "user.slice/user-1001.slice/cpu.pressure",
            "some avg10=1.00 avg60=0.50 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        assert_eq!(Cgroups::detect(r).cpu_stall_usec(1001), Some(123_456));
        assert_eq!(Cgroups::detect(r).cpu_stall_usec(1002), None);
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("unified")).unwrap();
        assert_eq!(Cgroups::detect(r).host_cpu_nsec(), None);
        write(r, "unified/cpu.stat", "usage_usec 7\n");
        assert_eq!(Cgroups::detect(r).host_cpu_nsec(), Some(7000));
        // cpuacct first
        write(r, "cpu,cpuacct/cpuacct.usage", "123456\n");
        assert_eq!(Cgroups::detect(r).host_cpu_nsec(), Some(123_456));
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
        // Burn 5 clock ticks of CPU past what the process had used, so the
        // figure must hold them; it is this process's own CPU time (the
        // only process in the slice), read between two readings of it.
        let tick_ns = 1_000_000_000
            / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .unwrap()
                .unwrap() as u64;
        let ticks = || crate::proc::cpu_ticks(me).unwrap();
        let burnt = ticks() + 5;
        let mut x = 0u64;
        while ticks() < burnt {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let before = ticks();
        let u = Cgroups::detect(r).usage(1001);
        let after = ticks();
        let nsec = u.cpu_usage_nsec.unwrap();
        assert!(
            before * tick_ns <= nsec && nsec <= after * tick_ns,
            "cpu_usage_nsec {nsec}: this process had used {before} then {after} ticks of {tick_ns} ns; {u:?}"
        );
    }
}
