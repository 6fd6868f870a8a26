//! What `top` shows, computed from two samples of the daemon's answers and of
//! the host's `/proc` files. Pure: no I/O, no clock; the tests feed it
//! samples.
//!
//! CPU "now" is the growth of a slice's `cpu_usage_nsec` between two samples
//! over the wall-clock time between them: CPUs in use on average over the
//! refresh interval. Where the daemon already reports a recent figure for a
//! user (`usage.cpu_recent`, see [`Recent`]), that figure is used until two
//! samples of our own exist.

use fairshare_proto::wire::{Capacity, Source, StatusInfo};

/// CPU use over a recent window as the daemon may report it in
/// `usage.cpu_recent`: `{"cpus": 1.5, "window_secs": 10}` is 1.5 CPUs busy on
/// average over the last 10 seconds. Older daemons leave it out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    pub cpus: f64,
    pub window_secs: f64,
}

impl Recent {
    /// Reads `usage.cpu_recent` of one `status_info` object, if it is there
    /// and sane.
    pub fn from_json(info: &serde_json::Value) -> Option<Recent> {
        let r = info.get("usage")?.get("cpu_recent")?;
        let cpus = r.get("cpus")?.as_f64()?;
        let window_secs = r.get("window_secs")?.as_f64()?;
        (cpus.is_finite() && cpus >= 0.0 && window_secs.is_finite() && window_secs > 0.0)
            .then_some(Recent { cpus, window_secs })
    }
}

/// One user as sampled: the daemon's answer and its recent CPU figure.
#[derive(Debug, Clone)]
pub struct UserSample {
    pub info: StatusInfo,
    pub recent: Option<Recent>,
}

/// The host's own counters, from `/proc/stat` and `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostSample {
    /// CPUs online (the `cpuN` lines of `/proc/stat`).
    pub cpus: u32,
    /// Jiffies spent busy and in all, summed over every CPU.
    pub busy_ticks: u64,
    pub total_ticks: u64,
    pub mem_total: u64,
    pub mem_available: u64,
}

/// Everything read at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds on a monotonic clock.
    pub at: f64,
    /// Unix time, for the time left on leases.
    pub unix: u64,
    pub users: Vec<UserSample>,
    pub capacity: Option<Capacity>,
    pub host: Option<HostSample>,
}

/// Where an allocation comes from, as shown in the SOURCE column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    Resize,
    /// Set by root.
    Root,
    /// A resize (by the user or root) that lapses after this many seconds.
    Lease(u64),
    Exempt,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub uid: u32,
    pub user: String,
    /// CPUs in use now (average over the interval).
    pub cpu_used: Option<f64>,
    /// CPUs allocated.
    pub cpu_alloc: Option<f64>,
    /// `cpu_used` as a share of the allocation (1.0 = all of it).
    pub cpu_of_alloc: Option<f64>,
    /// `cpu_used` as a share of the host's CPUs.
    pub cpu_of_host: Option<f64>,
    pub mem_used: Option<u64>,
    pub mem_limit: Option<u64>,
    /// Periods held back by the CPU quota, per second, over the interval.
    pub throttled_per_sec: Option<f64>,
    /// OOM kills in the slice, and whether one happened in the interval.
    pub oom_kills: Option<u64>,
    pub oom_new: bool,
    pub sessions: u32,
    pub origin: Origin,
}

impl Row {
    pub fn mem_of_limit(&self) -> Option<f64> {
        match (self.mem_used, self.mem_limit) {
            (Some(u), Some(l)) if l > 0 => Some(u as f64 / l as f64),
            _ => None,
        }
    }

    /// Using at least this share of the CPU allocation counts as at the limit.
    pub const AT_LIMIT: f64 = 0.9;

    pub fn at_cpu_limit(&self) -> bool {
        self.cpu_of_alloc.is_some_and(|s| s >= Self::AT_LIMIT)
    }

    pub fn near_mem_limit(&self) -> bool {
        self.mem_of_limit().is_some_and(|s| s >= Self::AT_LIMIT)
    }
}

/// The host line: its size, how busy it is, and the capacity fairshare hands out.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub cpus: Option<u32>,
    /// Share of all CPU time that was busy over the interval (0..=1).
    pub busy: Option<f64>,
    pub mem_total: Option<u64>,
    pub mem_used: Option<u64>,
    pub capacity: Option<Capacity>,
}

/// Growth of a counter per second between two samples. `None` when there is
/// no earlier sample, no time passed, or the counter went backwards (the
/// slice was stopped and started again in between).
pub fn rate(prev: Option<u64>, cur: Option<u64>, dt_secs: f64) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    if dt_secs.is_nan() || dt_secs <= 0.0 || c < p {
        return None;
    }
    Some((c - p) as f64 / dt_secs)
}

/// CPUs in use on average between two readings of a `cpu_usage_nsec`.
pub fn cpus_used(prev_nsec: Option<u64>, cur_nsec: Option<u64>, dt_secs: f64) -> Option<f64> {
    rate(prev_nsec, cur_nsec, dt_secs).map(|ns_per_sec| ns_per_sec / 1e9)
}

fn ratio(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some(p / w),
        _ => None,
    }
}

fn origin(info: &StatusInfo, unix: u64) -> Origin {
    match (info.source, info.expires_at) {
        (Source::Exempt, _) => Origin::Exempt,
        (Source::Default, _) => Origin::Default,
        (_, Some(t)) => Origin::Lease(t.saturating_sub(unix)),
        (Source::Resize, None) => Origin::Resize,
        (Source::Admin, None) => Origin::Root,
    }
}

/// The rows for `cur`, with rates against `prev` (the sample before).
pub fn rows(prev: Option<&Sample>, cur: &Sample) -> Vec<Row> {
    let dt = prev.map_or(0.0, |p| cur.at - p.at);
    let host_cpus = cur.host.map(|h| f64::from(h.cpus)).filter(|c| *c > 0.0);
    cur.users
        .iter()
        .map(|u| {
            let info = &u.info;
            let before = prev.and_then(|p| p.users.iter().find(|x| x.info.uid == info.uid));
            let b = before.map(|b| &b.info.usage);
            let cpu_used = cpus_used(
                b.and_then(|b| b.cpu_usage_nsec),
                info.usage.cpu_usage_nsec,
                dt,
            )
            .or(u.recent.map(|r| r.cpus));
            let cpu_alloc = info.allocated_cpu.map(|c| c.as_f64());
            let oom_kills = info.usage.oom_kills;
            Row {
                uid: info.uid,
                user: info.user.clone(),
                cpu_used,
                cpu_alloc,
                cpu_of_alloc: ratio(cpu_used, cpu_alloc),
                cpu_of_host: ratio(cpu_used, host_cpus),
                mem_used: info.usage.memory_current,
                mem_limit: info.allocated_mem.map(|m| m.get()),
                throttled_per_sec: rate(
                    b.and_then(|b| b.cpu_throttled_periods),
                    info.usage.cpu_throttled_periods,
                    dt,
                ),
                oom_kills,
                oom_new: matches!((b.and_then(|b| b.oom_kills), oom_kills), (Some(p), Some(c)) if c > p),
                sessions: info.sessions,
                origin: origin(info, cur.unix),
            }
        })
        .collect()
}

/// The host line for `cur`, busy share against `prev`.
pub fn host_row(prev: Option<&Sample>, cur: &Sample) -> HostRow {
    let h = cur.host;
    let busy = match (prev.and_then(|p| p.host), h) {
        (Some(p), Some(c)) if c.total_ticks > p.total_ticks && c.busy_ticks >= p.busy_ticks => {
            Some((c.busy_ticks - p.busy_ticks) as f64 / (c.total_ticks - p.total_ticks) as f64)
        }
        _ => None,
    };
    HostRow {
        cpus: h.map(|h| h.cpus).filter(|c| *c > 0),
        busy,
        mem_total: h.map(|h| h.mem_total).filter(|m| *m > 0),
        mem_used: h
            .filter(|h| h.mem_total > 0)
            .map(|h| h.mem_total.saturating_sub(h.mem_available)),
        capacity: cur.capacity,
    }
}

/// What the table can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
// (plain comments: doc comments would become clap's per-value help, which the
// man page renders badly)
pub enum SortKey {
    // CPU in use now
    Cpu,
    // CPU in use as a share of the allocation
    Share,
    // memory in use
    Mem,
    // throttled periods per second
    Throttle,
    // OOM kills
    Oom,
    // user name
    Name,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::Cpu,
        SortKey::Share,
        SortKey::Mem,
        SortKey::Throttle,
        SortKey::Oom,
        SortKey::Name,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Share => "share",
            SortKey::Mem => "mem",
            SortKey::Throttle => "throttle",
            SortKey::Oom => "oom",
            SortKey::Name => "name",
        }
    }

    /// The next key, for the `s` key of the live view.
    pub fn next(self) -> SortKey {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// Sorts biggest first (names A to Z), unknown figures last, ties by name;
/// `reverse` turns the order round.
pub fn sort(rows: &mut [Row], key: SortKey, reverse: bool) {
    fn desc(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
        // Some before None, bigger before smaller
        match (a, b) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
    let f = |v: Option<u64>| v.map(|v| v as f64);
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Cpu => desc(a.cpu_used, b.cpu_used),
            SortKey::Share => desc(a.cpu_of_alloc, b.cpu_of_alloc),
            SortKey::Mem => desc(f(a.mem_used), f(b.mem_used)),
            SortKey::Throttle => desc(a.throttled_per_sec, b.throttled_per_sec),
            SortKey::Oom => desc(f(a.oom_kills), f(b.oom_kills)),
            SortKey::Name => std::cmp::Ordering::Equal,
        };
        let o = primary
            .then_with(|| a.user.cmp(&b.user))
            .then(a.uid.cmp(&b.uid));
        if reverse { o.reverse() } else { o }
    });
}

/// Reads `/proc/stat` and `/proc/meminfo` text. Unknown layouts give zeros,
/// which the view shows as unknown.
pub fn parse_host(stat: &str, meminfo: &str) -> HostSample {
    let mut h = HostSample::default();
    for line in stat.lines() {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("cpu") => {
                // user nice system idle iowait irq softirq steal (guest is in user)
                let v: Vec<u64> = words.take(8).filter_map(|w| w.parse().ok()).collect();
                if v.len() >= 4 {
                    let idle = v[3] + v.get(4).copied().unwrap_or(0);
                    h.total_ticks = v.iter().sum();
                    h.busy_ticks = h.total_ticks.saturating_sub(idle);
                }
            }
            Some(w) if w.len() > 3 && w.starts_with("cpu") => h.cpus += 1,
            _ => {}
        }
    }
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |k| k.saturating_mul(1024))
    };
    h.mem_total = kib("MemTotal:");
    h.mem_available = kib("MemAvailable:");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::units::{Bytes, Cpus, Tasks};
    use fairshare_proto::wire::Usage;

    pub(crate) fn info(
        uid: u32,
        user: &str,
        cpu_millis: u64,
        mem: u64,
        usage: Usage,
    ) -> StatusInfo {
        StatusInfo {
            fair: Vec::new(),
            unenforced: Vec::new(),
            bursting: None,
            allocated_cpu: Some(Cpus::from_millis(cpu_millis)),
            allocated_mem: Some(Bytes(mem)),
            allocated_tasks: Some(Tasks(4096)),
            allocated_mem_high: None,
            uid,
            user: user.into(),
            slice: format!("user-{uid}.slice"),
            source: Source::Default,
            active: true,
            default: None,
            max: None,
            policy: vec![],
            sessions: 1,
            session_list: vec![],
            expires_at: None,
            notice: None,
            usage,
            capacity: None,
            root_setting: None,
            warnings: vec![],
            events: vec![],
            terminal_notices: None,
        }
    }

    fn usage(cpu_nsec: u64, throttled: u64, oom: u64, mem: u64) -> Usage {
        Usage {
            memory_current: Some(mem),
            tasks_current: Some(3),
            cpu_usage_nsec: Some(cpu_nsec),
            cpu_throttled_periods: Some(throttled),
            oom_kills: Some(oom),
            cpu_recent: None,
        }
    }

    fn host(cpus: u32, busy: u64, total: u64) -> Option<HostSample> {
        Some(HostSample {
            cpus,
            busy_ticks: busy,
            total_ticks: total,
            mem_total: 8 << 30,
            mem_available: 6 << 30,
        })
    }

    fn sample(at: f64, users: Vec<StatusInfo>, h: Option<HostSample>) -> Sample {
        Sample {
            at,
            unix: 1_000_000,
            users: users
                .into_iter()
                .map(|info| UserSample { info, recent: None })
                .collect(),
            capacity: None,
            host: h,
        }
    }

    #[test]
    fn rates_need_two_samples_time_and_a_growing_counter() {
        assert_eq!(rate(None, Some(5), 1.0), None);
        assert_eq!(rate(Some(5), None, 1.0), None);
        assert_eq!(rate(Some(5), Some(5), 0.0), None);
        assert_eq!(rate(Some(5), Some(7), -1.0), None);
        assert_eq!(rate(Some(5), Some(7), f64::NAN), None);
        // the slice was restarted between the samples: no figure, not a huge one
        assert_eq!(rate(Some(9_000), Some(10), 1.0), None);
        assert_eq!(rate(Some(10), Some(30), 2.0), Some(10.0));
        assert_eq!(cpus_used(Some(0), Some(1_500_000_000), 2.0), Some(0.75));
    }

    #[test]
    fn cpu_share_of_allocation_and_of_host() {
        let a0 = info(
            1001,
            "alice",
            500,
            1 << 30,
            usage(10_000_000_000, 3, 0, 10 << 20),
        );
        let b0 = info(1002, "bob", 250, 1 << 30, usage(0, 0, 0, 1 << 20));
        // 2 s later: alice used 1 s of CPU (0.5 CPUs, all of her 0.5), bob 0.25 s
        let a1 = info(
            1001,
            "alice",
            500,
            1 << 30,
            usage(11_000_000_000, 23, 1, 900 << 20),
        );
        let b1 = info(1002, "bob", 250, 1 << 30, usage(250_000_000, 0, 0, 1 << 20));
        let s0 = sample(100.0, vec![a0, b0], host(2, 100, 1000));
        let s1 = sample(102.0, vec![a1, b1], host(2, 250, 1400));
        let r = rows(Some(&s0), &s1);
        let alice = &r[0];
        assert_eq!(alice.cpu_used, Some(0.5));
        assert_eq!(alice.cpu_of_alloc, Some(1.0));
        assert_eq!(alice.cpu_of_host, Some(0.25));
        assert_eq!(alice.throttled_per_sec, Some(10.0));
        assert!(alice.oom_new && alice.oom_kills == Some(1));
        assert!(alice.at_cpu_limit());
        assert!(!alice.near_mem_limit());
        let bob = &r[1];
        assert_eq!(bob.cpu_used, Some(0.125));
        assert_eq!(bob.cpu_of_alloc, Some(0.5));
        assert!(!bob.oom_new);
        let h = host_row(Some(&s0), &s1);
        assert_eq!(h.busy, Some(150.0 / 400.0));
        assert_eq!(h.mem_used, Some(2 << 30));
        // the first frame has no rates
        let first = rows(None, &s0);
        assert_eq!(first[0].cpu_used, None);
        assert_eq!(first[0].cpu_of_alloc, None);
        assert_eq!(host_row(None, &s0).busy, None);
    }

    #[test]
    fn the_daemons_recent_figure_fills_in_until_two_samples_exist() {
        let mut s0 = sample(
            0.0,
            vec![info(1001, "alice", 2000, 1 << 30, usage(0, 0, 0, 0))],
            host(4, 0, 0),
        );
        s0.users[0].recent = Some(Recent {
            cpus: 1.0,
            window_secs: 10.0,
        });
        let r = rows(None, &s0);
        assert_eq!(r[0].cpu_used, Some(1.0));
        assert_eq!(r[0].cpu_of_alloc, Some(0.5));
        assert_eq!(r[0].cpu_of_host, Some(0.25));
        // our own measurement wins once there is one
        let mut s1 = s0.clone();
        s1.at = 1.0;
        s1.users[0].info.usage.cpu_usage_nsec = Some(2_000_000_000);
        assert_eq!(rows(Some(&s0), &s1)[0].cpu_used, Some(2.0));
        let v = serde_json::json!({"usage": {"cpu_recent": {"cpus": 1.5, "window_secs": 10}}});
        assert_eq!(
            Recent::from_json(&v),
            Some(Recent {
                cpus: 1.5,
                window_secs: 10.0
            })
        );
        for bad in [
            serde_json::json!({"usage": {"cpu_recent": {"cpus": -1, "window_secs": 10}}}),
            serde_json::json!({"usage": {"cpu_recent": {"cpus": 1, "window_secs": 0}}}),
            serde_json::json!({"usage": {"cpu_recent": "1.5"}}),
            serde_json::json!({"usage": {}}),
        ] {
            assert_eq!(Recent::from_json(&bad), None, "{bad}");
        }
    }

    #[test]
    fn origins() {
        let mut i = info(1001, "alice", 1000, 1 << 30, Usage::default());
        assert_eq!(origin(&i, 50), Origin::Default);
        i.source = Source::Resize;
        assert_eq!(origin(&i, 50), Origin::Resize);
        i.source = Source::Admin;
        assert_eq!(origin(&i, 50), Origin::Root);
        i.expires_at = Some(3650);
        assert_eq!(origin(&i, 50), Origin::Lease(3600));
        assert_eq!(origin(&i, 4000), Origin::Lease(0));
        i.source = Source::Exempt;
        assert_eq!(origin(&i, 50), Origin::Exempt);
    }

    #[test]
    fn sorting() {
        let row = |user: &str, cpu: Option<f64>, mem: u64| Row {
            uid: 1,
            user: user.into(),
            cpu_used: cpu,
            cpu_alloc: Some(1.0),
            cpu_of_alloc: cpu,
            cpu_of_host: None,
            mem_used: Some(mem),
            mem_limit: Some(100),
            throttled_per_sec: None,
            oom_kills: Some(0),
            oom_new: false,
            sessions: 1,
            origin: Origin::Default,
        };
        let mut r = vec![
            row("carol", None, 5),
            row("bob", Some(0.2), 50),
            row("alice", Some(0.9), 10),
            row("dave", Some(0.2), 1),
        ];
        let names = |r: &[Row]| r.iter().map(|r| r.user.clone()).collect::<Vec<_>>();
        sort(&mut r, SortKey::Cpu, false);
        assert_eq!(names(&r), ["alice", "bob", "dave", "carol"]);
        sort(&mut r, SortKey::Cpu, true);
        assert_eq!(names(&r), ["carol", "dave", "bob", "alice"]);
        sort(&mut r, SortKey::Mem, false);
        assert_eq!(names(&r), ["bob", "alice", "carol", "dave"]);
        sort(&mut r, SortKey::Name, false);
        assert_eq!(names(&r), ["alice", "bob", "carol", "dave"]);
        let mut k = SortKey::Cpu;
        for _ in 0..SortKey::ALL.len() {
            k = k.next();
        }
        assert_eq!(k, SortKey::Cpu);
    }

    #[test]
    fn proc_files() {
        let stat = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 50 2 25 400 10 0 3 0 0 0\ncpu1 50 3 25 400 10 0 2 0 0 0\nintr 1 2 3\nctxt 5\n";
        let mem = "MemTotal:        8000 kB\nMemFree:  1000 kB\nMemAvailable:    6000 kB\n";
        let h = parse_host(stat, mem);
        assert_eq!(h.cpus, 2);
        assert_eq!(h.total_ticks, 980);
        assert_eq!(h.busy_ticks, 160);
        assert_eq!(h.mem_total, 8000 * 1024);
        assert_eq!(h.mem_available, 6000 * 1024);
        assert_eq!(parse_host("", ""), HostSample::default());
        assert_eq!(parse_host("cpu x y\n", "MemTotal: lots").total_ticks, 0);
    }
}
