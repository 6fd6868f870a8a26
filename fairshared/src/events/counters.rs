//! The cgroup files a user's watcher reads, where they are on each layout,
//! and what is in them. Pure parsing; the watcher does the reading.
//!
//! | what                       | cgroup v2 (`user-UID.slice/…`)      | hybrid / legacy (v1 controllers)                      |
//! |----------------------------|-------------------------------------|-------------------------------------------------------|
//! | OOM at the slice's limit   | `memory.events.local` `oom`         | eventfd on `memory/…/memory.oom_control` + `memory.failcnt` |
//! | processes killed           | `memory.events` `oom_kill` (subtree)| the eventfd's count (v1 counts kills in the victim's own cgroup, gone with it) |
//! | wake-up on memory events   | `memory.events` POLLPRI             | the eventfd                                           |
//! | CPU throttling             | `cpu.stat` `nr_periods`, `nr_throttled`; `cpu.max` period | `cpu/…/cpu.stat`, `cpu.cfs_period_us`  |
//! | reclaim above memory.high  | `memory.events` `high`, `memory.pressure` | (no memory.high on v1)                          |
//! | wake-up on stalls          | PSI triggers on `cpu.pressure`, `memory.pressure` | the same files in `unified/…` (hybrid only) |

use std::path::{Path, PathBuf};

use crate::cgroup::Layout;

/// The counters of `memory.events` or `memory.events.local` (cgroup v2).
/// Keys a kernel does not have yet read as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    pub fn parse(text: &str) -> MemoryEvents {
        let mut e = MemoryEvents::default();
        for (k, v) in pairs(text) {
            match k {
                "high" => e.high = v,
                "max" => e.max = v,
                "oom" => e.oom = v,
                "oom_kill" => e.oom_kill = v,
                "oom_group_kill" => e.oom_group_kill = v,
                _ => {}
            }
        }
        e
    }
}

/// The throttling counters of `cpu.stat` (v1 and v2 both have these two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuThrottling {
    /// Enforcement periods in which the slice had work.
    pub periods: u64,
    /// Periods in which it ran out of quota.
    pub throttled: u64,
}

impl CpuThrottling {
    pub fn parse(text: &str) -> Option<CpuThrottling> {
        let (mut periods, mut throttled) = (None, None);
        for (k, v) in pairs(text) {
            match k {
                "nr_periods" => periods = Some(v),
                "nr_throttled" => throttled = Some(v),
                _ => {}
            }
        }
        Some(CpuThrottling {
            periods: periods?,
            throttled: throttled?,
        })
    }
}

/// The enforcement period, in microseconds, from v2 `cpu.max`
/// (`QUOTA PERIOD`, or `max PERIOD`) or v1 `cpu.cfs_period_us` (`PERIOD`).
pub fn cpu_period_us(text: &str) -> Option<u64> {
    let period = text.split_whitespace().last()?.parse().ok()?;
    (period > 0).then_some(period)
}

/// The kernel's default period (100 ms), when the file cannot be read.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// Cumulative stall time from a PSI file (`cpu.pressure`, `memory.pressure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Microseconds in which at least one task of the cgroup was stalled.
    pub some_us: u64,
    /// Microseconds in which all of them were (absent for CPU on old kernels).
    pub full_us: Option<u64>,
}

impl Pressure {
    /// `some avg10=0.00 avg60=0.00 avg300=0.00 total=123\nfull … total=45`
    pub fn parse(text: &str) -> Option<Pressure> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let which = words.next();
            let total = words
                .find_map(|w| w.strip_prefix("total="))
                .and_then(|t| t.parse::<u64>().ok());
            match which {
                Some("some") => some = total,
                Some("full") => full = total,
                _ => {}
            }
        }
        Some(Pressure {
            some_us: some?,
            full_us: full,
        })
    }
}

/// A PSI trigger, as written to a pressure file (`some 1000000 10000000`):
/// wake when tasks were stalled `stall_us` in any `window_us`. The kernel
/// takes windows of 0.5 to 10 s and wakes at most once per window while the
/// stall lasts.
pub fn psi_trigger(stall_us: u64, window_us: u64) -> String {
    format!("some {stall_us} {window_us}")
}

/// What the watcher asks PSI for: a wake-up once tasks were stalled for 1 s
/// out of 10 s (10 %), far below any notice threshold. The wake-up only
/// makes the watcher read the counters; the counters decide.
pub const PSI_STALL_US: u64 = 1_000_000;
pub const PSI_WINDOW_US: u64 = 10_000_000;

/// v1 `memory.oom_control`: `oom_kill_disable 0\nunder_oom 0\noom_kill 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomControl {
    pub under_oom: bool,
    /// Kills in this cgroup itself (v1 does not add those of its children).
    pub oom_kill: u64,
}

impl OomControl {
    pub fn parse(text: &str) -> OomControl {
        let mut c = OomControl::default();
        for (k, v) in pairs(text) {
            match k {
                "under_oom" => c.under_oom = v != 0,
                "oom_kill" => c.oom_kill = v,
                _ => {}
            }
        }
        c
    }
}

fn pairs(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let k = it.next()?;
        let v = it.next()?.parse().ok()?;
        Some((k, v))
    })
}

/// Where a user's watcher finds its files. Paths that a layout does not
/// have are `None`; the v1 CPU controller may be mounted under more than one
/// name, so it comes as candidates, the first existing one wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub layout: Layout,
    /// v2: `memory.events` (subtree counters; POLLPRI wakes on any change).
    pub memory_events: Option<PathBuf>,
    /// v2: `memory.events.local` (the slice's own OOMs).
    pub memory_events_local: Option<PathBuf>,
    /// v1: the memory cgroup of the slice (`memory.oom_control`,
    /// `cgroup.event_control`, `memory.failcnt`, `memory.limit_in_bytes`).
    pub v1_memory: Option<PathBuf>,
    /// `cpu.stat` candidates.
    pub cpu_stat: Vec<PathBuf>,
    /// `cpu.max` (v2) or `cpu.cfs_period_us` (v1) candidates.
    pub cpu_period: Vec<PathBuf>,
    /// PSI files (v2, or the unified hierarchy of a hybrid host).
    pub cpu_pressure: Option<PathBuf>,
    pub memory_pressure: Option<PathBuf>,
}

impl Paths {
    pub fn for_user(root: &Path, layout: Layout, uid: u32) -> Paths {
        let rel = format!("user.slice/user-{uid}.slice");
        let v1_cpu = ["cpu", "cpu,cpuacct", "cpuacct,cpu"];
        match layout {
            Layout::Unified => {
                let d = root.join(&rel);
                Paths {
                    layout,
                    memory_events: Some(d.join("memory.events")),
                    memory_events_local: Some(d.join("memory.events.local")),
                    v1_memory: None,
                    cpu_stat: vec![d.join("cpu.stat")],
                    cpu_period: vec![d.join("cpu.max")],
                    cpu_pressure: Some(d.join("cpu.pressure")),
                    memory_pressure: Some(d.join("memory.pressure")),
                }
            }
            Layout::Hybrid | Layout::Legacy => {
                let unified = (layout == Layout::Hybrid).then(|| root.join("unified").join(&rel));
                Paths {
                    layout,
                    memory_events: None,
                    memory_events_local: None,
                    v1_memory: Some(root.join("memory").join(&rel)),
                    cpu_stat: v1_cpu
                        .iter()
                        .map(|c| root.join(c).join(&rel).join("cpu.stat"))
                        .collect(),
                    cpu_period: v1_cpu
                        .iter()
                        .map(|c| root.join(c).join(&rel).join("cpu.cfs_period_us"))
                        .collect(),
                    cpu_pressure: unified.as_ref().map(|u| u.join("cpu.pressure")),
                    // memory.high does not exist on v1: no memory stall notices there
                    memory_pressure: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_as_the_kernel_writes_them() {
        // read in the v2 guest after a kill at the slice's limit
        let hier = "low 0\nhigh 0\nmax 37\noom 1\noom_kill 1\noom_group_kill 0\n";
        let local = "low 0\nhigh 0\nmax 37\noom 1\noom_kill 0\noom_group_kill 0\n";
        let h = MemoryEvents::parse(hier);
        assert_eq!(
            h,
            MemoryEvents {
                high: 0,
                max: 37,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert_eq!(MemoryEvents::parse(local).oom_kill, 0);
        // an older kernel without oom_group_kill, and garbage
        let old = MemoryEvents::parse("low 0\nhigh 5\nmax 1\noom 0\noom_kill 0\nnonsense\nx y\n");
        assert_eq!(old.high, 5);
        assert_eq!(MemoryEvents::parse(""), MemoryEvents::default());
    }

    #[test]
    fn cpu_stat_both_layouts() {
        // v2 (guest) and v1 (container), as read in the experiments
        let v2 = "usage_usec 54393795\nuser_usec 30268059\nsystem_usec 24125735\nnr_periods 1191\nnr_throttled 1000\nthrottled_usec 53975025\nnr_bursts 0\nburst_usec 0\n";
        let v1 = "nr_periods 253\nnr_throttled 122\nthrottled_time 3156956741\nnr_bursts 0\nburst_time 0\n";
        assert_eq!(
            CpuThrottling::parse(v2),
            Some(CpuThrottling {
                periods: 1191,
                throttled: 1000
            })
        );
        assert_eq!(
            CpuThrottling::parse(v1),
            Some(CpuThrottling {
                periods: 253,
                throttled: 122
            })
        );
        // the unified cpu.stat of a hybrid host has no throttling figures
        assert_eq!(CpuThrottling::parse("usage_usec 5\nuser_usec 3\n"), None);
        assert_eq!(cpu_period_us("50000 100000\n"), Some(100_000));
        assert_eq!(cpu_period_us("max 100000\n"), Some(100_000));
        assert_eq!(cpu_period_us("100000\n"), Some(100_000));
        assert_eq!(cpu_period_us("0\n"), None);
        assert_eq!(cpu_period_us(""), None);
    }

    #[test]
    fn pressure_files() {
        let cpu = "some avg10=42.26 avg60=28.23 avg300=11.29 total=45867589\nfull avg10=42.26 avg60=28.15 avg300=11.18 total=45272674\n";
        assert_eq!(
            Pressure::parse(cpu),
            Some(Pressure {
                some_us: 45_867_589,
                full_us: Some(45_272_674)
            })
        );
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(Pressure::parse(old).unwrap().full_us, None);
        assert_eq!(Pressure::parse("full avg10=0 total=1\n"), None);
        assert_eq!(
            psi_trigger(PSI_STALL_US, PSI_WINDOW_US),
            "some 1000000 10000000"
        );
    }

    #[test]
    fn v1_oom_control() {
        let c = OomControl::parse("oom_kill_disable 0\nunder_oom 1\noom_kill 3\n");
        assert!(c.under_oom);
        assert_eq!(c.oom_kill, 3);
    }

    #[test]
    fn paths_per_layout() {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = Paths::for_user(root, Layout::Unified, 1001);
        assert_eq!(
            v2.memory_events.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/user.slice/user-1001.slice/memory.events"
            ))
        );
        assert_eq!(
            v2.memory_pressure.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/user.slice/user-1001.slice/memory.pressure"
            ))
        );
        assert!(v2.v1_memory.is_none());
        let hy = Paths::for_user(root, Layout::Hybrid, 1001);
        assert_eq!(
            hy.v1_memory.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/memory/user.slice/user-1001.slice"
            ))
        );
        assert_eq!(
            hy.cpu_pressure.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/unified/user.slice/user-1001.slice/cpu.pressure"
            ))
        );
        assert_eq!(
            hy.cpu_stat[0],
            Path::new("/sys/fs/cgroup/cpu/user.slice/user-1001.slice/cpu.stat")
        );
        assert!(hy.memory_pressure.is_none());
        assert!(
            Paths::for_user(root, Layout::Legacy, 1001)
                .cpu_pressure
                .is_none()
        );
    }
}
