//! What a slice's limits and counters are, whatever the cgroup layout: the
//! files to read on each layout and how to read them.
//!
//! | figure               | hybrid (v1 controllers)                       | unified (v2)                 |
//! |----------------------|-----------------------------------------------|------------------------------|
//! | CPU quota, period    | `cpu/…/cpu.cfs_quota_us`, `cpu.cfs_period_us` | `cpu.max`                    |
//! | hard memory limit    | `memory/…/memory.limit_in_bytes`              | `memory.max`                 |
//! | soft memory limit    | (none in v1)                                  | `memory.high`                |
//! | task limit, count    | `pids/…/pids.max`, `pids.current`             | `pids.max`, `pids.current`   |
//! | throttling           | `cpu/…/cpu.stat` (`throttled_time` in ns)     | `cpu.stat` (`throttled_usec`)|
//! | CPU time             | (no per-slice `cpuacct` on these hosts)       | `cpu.stat` `usage_usec`      |
//! | memory in use        | `memory/…/memory.usage_in_bytes`              | `memory.current`             |
//! | hits of the limit    | `memory/…/memory.failcnt`                     | `memory.events` `max`        |
//! | OOM kills            | `oom_kill` of every `memory.oom_control` in the subtree (v1 counts a kill where the victim was) | `memory.events` `oom_kill` |

use std::collections::BTreeMap;

/// The cgroup layout of a test host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// v1 controller hierarchies (plus the v2 `unified` one for systemd): the container.
    Hybrid,
    /// Pure cgroup v2: the QEMU guest.
    Unified,
}

/// The cgroup path of `user-UID.slice`, below a hierarchy's root.
pub fn slice_path(uid: u32) -> String {
    format!("/user.slice/user-{uid}.slice")
}

/// Which figure of a slice: see the table in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    CpuQuota,
    CpuPeriod,
    MemMax,
    MemHigh,
    TasksMax,
    TasksCurrent,
    CpuStat,
    /// v1 only: `cpuacct.usage` (v2 has the figure in `cpu.stat`)
    CpuacctUsage,
    MemCurrent,
    MemFailcnt,
    MemEvents,
}

impl Layout {
    /// The absolute path of `file` for `uid`'s slice (`None`: the layout has
    /// no such file).
    pub fn file(self, uid: u32, file: File) -> Option<String> {
        let s = slice_path(uid);
        Some(match self {
            Layout::Hybrid => {
                let (ctrl, name) = match file {
                    File::CpuQuota => ("cpu", "cpu.cfs_quota_us"),
                    File::CpuPeriod => ("cpu", "cpu.cfs_period_us"),
                    File::MemMax => ("memory", "memory.limit_in_bytes"),
                    File::MemHigh | File::MemEvents => return None,
                    File::TasksMax => ("pids", "pids.max"),
                    File::TasksCurrent => ("pids", "pids.current"),
                    File::CpuStat => ("cpu", "cpu.stat"),
                    File::CpuacctUsage => ("cpuacct", "cpuacct.usage"),
                    File::MemCurrent => ("memory", "memory.usage_in_bytes"),
                    File::MemFailcnt => ("memory", "memory.failcnt"),
                };
                format!("/sys/fs/cgroup/{ctrl}{s}/{name}")
            }
            Layout::Unified => {
                let name = match file {
                    File::CpuQuota | File::CpuPeriod => "cpu.max",
                    File::MemMax => "memory.max",
                    File::MemHigh => "memory.high",
                    File::TasksMax => "pids.max",
                    File::TasksCurrent => "pids.current",
                    File::CpuStat => "cpu.stat",
                    File::CpuacctUsage => return None,
                    File::MemCurrent => "memory.current",
                    File::MemFailcnt | File::MemEvents => "memory.events",
                };
                format!("/sys/fs/cgroup{s}/{name}")
            }
        })
    }

    /// The files [`Limits::parse`] reads, in its order.
    pub fn limit_files(self, uid: u32) -> Vec<String> {
        let files = match self {
            Layout::Hybrid => [
                File::CpuQuota,
                File::CpuPeriod,
                File::MemMax,
                File::TasksMax,
            ],
            // cpu.max holds quota and period
            Layout::Unified => [File::CpuQuota, File::MemMax, File::MemHigh, File::TasksMax],
        };
        files.iter().filter_map(|f| self.file(uid, *f)).collect()
    }

    /// A shell command printing the number of OOM kills counted for `uid`'s
    /// slice (v1: summed over the slice and every cgroup below it, since v1
    /// counts a kill only where the victim was; run it before that cgroup
    /// goes away).
    pub fn oom_kills_cmd(self, uid: u32) -> String {
        match self {
            Layout::Hybrid => format!(
                "find /sys/fs/cgroup/memory{} -name memory.oom_control -exec cat {{}} + | \
                 awk '$1 == \"oom_kill\" {{ n += $2 }} END {{ print n + 0 }}'",
                slice_path(uid)
            ),
            Layout::Unified => format!(
                "awk '$1 == \"oom_kill\" {{ print $2 }}' /sys/fs/cgroup{}/memory.events",
                slice_path(uid)
            ),
        }
    }

    /// A shell command printing the slice's CPU time in microseconds, or
    /// nothing where the layout does not account it per slice.
    pub fn cpu_usage_cmd(self, uid: u32) -> String {
        match self {
            Layout::Hybrid => format!(
                "cat /sys/fs/cgroup/cpuacct{}/cpuacct.usage 2>/dev/null | awk '{{ print int($1 / 1000) }}'",
                slice_path(uid)
            ),
            Layout::Unified => format!(
                "awk '$1 == \"usage_usec\" {{ print $2 }}' /sys/fs/cgroup{}/cpu.stat",
                slice_path(uid)
            ),
        }
    }

    /// The paths of the controllers that limit a process, one per line of
    /// its `/proc/PID/cgroup`: `cpu`, `memory`, `pids` and systemd's own
    /// hierarchy on v1; the single path on v2. Panics if one is missing (or,
    /// on v2, if there is more than one line).
    #[track_caller]
    pub fn cgroup_paths(self, proc_cgroup: &str) -> Vec<(&'static str, &str)> {
        let lines: Vec<(&str, &str)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                Some((ctrl, path))
            })
            .collect();
        match self {
            Layout::Hybrid => ["cpu", "memory", "pids", "name=systemd"]
                .into_iter()
                .map(|want| {
                    let path = lines
                        .iter()
                        .find(|(ctrl, _)| ctrl.split(',').any(|c| c == want))
                        .map(|(_, p)| *p)
                        .unwrap_or_else(|| panic!("no {want} line in\n{proc_cgroup}"));
                    (want, path)
                })
                .collect(),
            Layout::Unified => {
                assert!(
                    lines.len() == 1 && lines[0].0.is_empty(),
                    "not a pure v2 /proc/PID/cgroup:\n{proc_cgroup}"
                );
                vec![("", lines[0].1)]
            }
        }
    }

    /// The systemd unit path of a process (v1: its `name=systemd` line).
    #[track_caller]
    pub fn unit_path(self, proc_cgroup: &str) -> &str {
        let paths = self.cgroup_paths(proc_cgroup);
        paths
            .iter()
            .find(|(c, _)| *c == "name=systemd" || c.is_empty())
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no systemd path in\n{proc_cgroup}"))
    }

    /// Panics unless every limiting controller places the process at or
    /// below `prefix` (`what` names it in the failure).
    #[track_caller]
    pub fn assert_under(self, proc_cgroup: &str, prefix: &str, what: &str) {
        for (ctrl, path) in self.cgroup_paths(proc_cgroup) {
            assert!(
                path == prefix || path.starts_with(&format!("{}/", prefix.trim_end_matches('/'))),
                "{what}: {ctrl} is {path}, not under {prefix}\n{proc_cgroup}"
            );
        }
    }
}

/// A number in a cgroup file: `max` (v2) and v1's "no limit" (the largest
/// page-aligned value, around 2^63) are `None`.
fn limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" || t == "-1" {
        return None;
    }
    t.parse::<u64>().ok().filter(|v| *v < 1 << 62)
}

/// Limits of a slice as its files show them, whatever the layout. `None`
/// in a field: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Microseconds of CPU per period.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub mem_max: Option<u64>,
    /// Always `None` on v1, which has no soft limit.
    pub mem_high: Option<u64>,
    pub tasks_max: Option<u64>,
}

impl Limits {
    /// From the contents of [`Layout::limit_files`], in that order. `None`
    /// when a file is missing (the slice's cgroup does not exist).
    pub fn parse(layout: Layout, files: &[Option<String>]) -> Option<Limits> {
        let f: Vec<&str> = files.iter().map(|f| f.as_deref()).collect::<Option<_>>()?;
        Some(match layout {
            Layout::Hybrid => {
                let [quota, period, mem, tasks] = f[..] else {
                    panic!("want 4 v1 limit files, got {files:?}")
                };
                Limits {
                    cpu_quota_us: limit(quota),
                    cpu_period_us: limit(period),
                    mem_max: limit(mem),
                    mem_high: None,
                    tasks_max: limit(tasks),
                }
            }
            Layout::Unified => {
                let [cpu_max, mem, high, tasks] = f[..] else {
                    panic!("want 4 v2 limit files, got {files:?}")
                };
                let mut cpu = cpu_max.split_whitespace();
                Limits {
                    cpu_quota_us: cpu.next().and_then(limit),
                    cpu_period_us: cpu.next().and_then(limit),
                    mem_max: limit(mem),
                    mem_high: limit(high),
                    tasks_max: limit(tasks),
                }
            }
        })
    }

    /// Whether these are the limits `want` describes (on v1, whose files
    /// have no soft limit, the soft limit is not compared).
    pub fn matches(&self, layout: Layout, want: &Want) -> bool {
        self.cpu_quota_us == Some(want.cpu_milli * 100)
            && self.cpu_period_us == Some(100_000)
            && self.mem_max == Some(want.mem)
            && (layout == Layout::Hybrid || self.mem_high == want.mem_high)
            && self.tasks_max == Some(want.tasks)
    }
}

/// Limits a test expects: `cpu_milli` thousandths of a CPU (over the 100 ms
/// period), a hard memory limit, a soft one (`None`: none) and a task limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub cpu_milli: u64,
    pub mem: u64,
    pub mem_high: Option<u64>,
    pub tasks: u64,
}

/// Limits with no soft memory limit; add one with [`Want::high`].
pub fn want(cpu_milli: u64, mem: u64, tasks: u64) -> Want {
    Want {
        cpu_milli,
        mem,
        mem_high: None,
        tasks,
    }
}

impl Want {
    pub fn high(self, mem_high: u64) -> Want {
        Want {
            mem_high: Some(mem_high),
            ..self
        }
    }
}

/// A flat-keyed cgroup file (`key value` lines) as a map.
pub fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// The slice's CPU throttling, whatever the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStat {
    /// CPU time (`None`: not accounted per slice, as on hybrid hosts
    /// without a `cpuacct` cgroup for it).
    pub usage_usec: Option<u64>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

impl CpuStat {
    /// From the text of the slice's `cpu.stat`.
    #[track_caller]
    pub fn parse(text: &str) -> CpuStat {
        let m = flat_keyed(text);
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("no {k} in cpu.stat:\n{text}"))
        };
        CpuStat {
            usage_usec: m.get("usage_usec").copied(),
            nr_periods: get("nr_periods"),
            nr_throttled: get("nr_throttled"),
            throttled_usec: m
                .get("throttled_usec")
                .copied()
                .unwrap_or_else(|| get("throttled_time") / 1000),
        }
    }

    /// The share of periods since `before` in which the slice was throttled.
    pub fn throttled_since(&self, before: &CpuStat) -> f64 {
        (self.nr_throttled - before.nr_throttled) as f64
            / (self.nr_periods - before.nr_periods).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(format!("{s}\n"))).collect()
    }

    #[test]
    fn limits_read_alike_from_either_layout() {
        let v1 = Limits::parse(
            Layout::Hybrid,
            &some(&["200000", "100000", "8589934592", "4096"]),
        )
        .unwrap();
        let v2 = Limits::parse(
            Layout::Unified,
            &some(&["200000 100000", "8589934592", "max", "4096"]),
        )
        .unwrap();
        assert_eq!(v1, v2);
        let w = want(2000, 8 << 30, 4096);
        assert!(v1.matches(Layout::Hybrid, &w) && v2.matches(Layout::Unified, &w));
        // the soft limit counts on v2 only
        assert!(v1.matches(Layout::Hybrid, &w.high(4 << 30)));
        assert!(!v2.matches(Layout::Unified, &w.high(4 << 30)));
        assert!(!v2.matches(Layout::Unified, &want(2000, 8 << 30, 4097)));
        // no limit
        let none = Limits::parse(
            Layout::Hybrid,
            &some(&["-1", "100000", "9223372036854771712", "max"]),
        )
        .unwrap();
        assert_eq!(
            (none.cpu_quota_us, none.mem_max, none.tasks_max),
            (None, None, None)
        );
        let none =
            Limits::parse(Layout::Unified, &some(&["max 100000", "max", "max", "max"])).unwrap();
        assert_eq!(
            (none.cpu_quota_us, none.cpu_period_us, none.mem_max),
            (None, Some(100_000), None)
        );
        // a missing file: no slice
        let mut gone = some(&["200000", "100000", "8589934592", "4096"]);
        gone[2] = None;
        assert_eq!(Limits::parse(Layout::Hybrid, &gone), None);
    }

    #[test]
    fn cgroup_paths_of_either_layout() {
        let v1 = "9:name=systemd:/user.slice/user-1001.slice/session-5.scope\n8:pids:/user.slice/user-1001.slice/session-5.scope\n\
                  4:memory:/user.slice/user-1001.slice/session-5.scope\n2:cpuacct:/\n1:cpu:/user.slice/user-1001.slice\n\
                  0::/user.slice/user-1001.slice/session-5.scope\n";
        let p = Layout::Hybrid.cgroup_paths(v1);
        assert_eq!(p[0], ("cpu", "/user.slice/user-1001.slice"));
        assert_eq!(
            Layout::Hybrid.unit_path(v1),
            "/user.slice/user-1001.slice/session-5.scope"
        );
        Layout::Hybrid.assert_under(v1, "/user.slice/user-1001.slice", "v1");
        // co-mounted controllers
        let co = "3:cpu,cpuacct:/a\n2:memory:/a\n1:pids:/a/b\n0:name=systemd:/a/b\n";
        Layout::Hybrid.assert_under(co, "/a", "co-mounted");
        let v2 = "0::/user.slice/user-1001.slice/session-5.scope\n";
        assert_eq!(
            Layout::Unified.unit_path(v2),
            "/user.slice/user-1001.slice/session-5.scope"
        );
        Layout::Unified.assert_under(v2, "/user.slice/user-1001.slice/", "v2");
        assert!(std::panic::catch_unwind(|| Layout::Unified.cgroup_paths(v1)).is_err());
        assert!(
            std::panic::catch_unwind(|| Layout::Hybrid.assert_under(
                v1,
                "/user.slice/user-1002.slice",
                "other"
            ))
            .is_err()
        );
        // a sibling whose name starts alike is not below
        assert!(
            std::panic::catch_unwind(|| Layout::Unified.assert_under(
                "0::/user.slice/user-10011.slice\n",
                "/user.slice/user-1001.slice",
                "prefix"
            ))
            .is_err()
        );
    }

    #[test]
    fn flat_keyed_files_and_cpu_stat() {
        let m = flat_keyed("usage_usec 2500\nnr_throttled 3\nbad\nx y\n");
        assert_eq!(m.get("usage_usec"), Some(&2500));
        assert_eq!(m.get("nr_throttled"), Some(&3));
        assert_eq!(m.len(), 2);
        let v1 = CpuStat::parse("nr_periods 10\nnr_throttled 4\nthrottled_time 5000000\n");
        let v2 = CpuStat::parse(
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 10\nnr_throttled 4\nthrottled_usec 5000\n",
        );
        assert_eq!((v1.usage_usec, v2.usage_usec), (None, Some(1)));
        assert_eq!(
            (v1.nr_periods, v1.nr_throttled, v1.throttled_usec),
            (v2.nr_periods, v2.nr_throttled, v2.throttled_usec)
        );
        let later = CpuStat {
            usage_usec: None,
            nr_periods: 20,
            nr_throttled: 9,
            throttled_usec: 0,
        };
        assert_eq!(later.throttled_since(&v1), 0.5);
    }
}
