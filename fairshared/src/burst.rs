//! Bursting into idle CPU (issue 15): the pure decision of every user's CPU
//! quota from what the host and each user used over the last interval.
//! No I/O: the daemon samples, calls [`Burster::decide`] and applies the
//! quotas that changed ([`crate::service`], `bursting.rs`).
//!
//! While the host has idle CPU, every user allowed to burst gets a quota up
//! to their `max.cpu` (or the whole host, `bursting.up_to: host`); fairness
//! between users who all want more comes from their CPU weights, which the
//! kernel enforces at once. When the host turns busy, quotas go back to each
//! user's allocation.
//!
//! **What "busy" means.** A lone user bursting on an idle host makes it look
//! 100 % used, so neither the host's utilisation nor CPU pressure can say
//! "busy" by themselves: PSI `some` is high as soon as a user is throttled at
//! their quota (74 % on an otherwise 78 % idle guest, docs/design/fair-share.md),
//! and inside a container `/proc/stat` and `/proc/pressure` are the whole
//! machine's. The load that counts is the host's CPU time (the root cgroup's
//! `cpu.stat`) *minus the part of each burst above the user's allocation*:
//! what the host would carry if nobody burst. A sample is busy when that is
//! at or above `busy_threshold` of the host's CPUs, idle below
//! `idle_threshold`; quotas return after `busy_for` of busy samples in a row
//! and are lifted again after `idle_for` of idle ones (hysteresis: a sample
//! between the two thresholds breaks either streak).
//!
//! With `contention: allocation`, two or more users wanting more than their
//! allocation (using more than it, all of a quota held at it, or with their
//! tasks waiting for a CPU most of the interval: the `some` stall time of
//! their slice's `cpu.pressure`, which also sees a user starved by load the
//! host's own accounting does not show, a container's neighbours) also make
//! a sample busy, so that contended users return to their allocations instead
//! of sharing the idle CPUs by weight; held at their allocations they still
//! want more, so the host stays busy until one of them stops, and quotas do
//! not flap.
//!
//! Starting up, the host counts as busy until `idle_for` of idle samples have
//! been seen: a daemon never lifts quotas on a host it has not watched.

use std::time::Duration;

use fairshare_policy::{BurstCeiling, Bursting, Contention};
use fairshare_proto::units::Cpus;

/// Using this much above the allocation counts as wanting more than it.
const OVER_ALLOCATION: f64 = 0.05;
/// Using this share of a quota held at the allocation counts as wanting
/// more (the quota binds).
const QUOTA_BINDS: f64 = 0.9;
/// Tasks waiting for a CPU this share of the interval counts as wanting
/// more.
const STALLED: f64 = 0.5;

/// One user over the last interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UserSample {
    pub uid: u32,
    /// CPUs used on average over the interval (CPU time / elapsed).
    pub usage: f64,
    /// Their allocation: the policy default or a resize in force.
    pub allocation: Cpus,
    /// Their `max.cpu` (the ceiling of a burst with `up_to: max`).
    pub max: Cpus,
    /// The quota in force during the interval.
    pub quota: Cpus,
    /// Whether the policy lets them burst (`bursting.enabled` and not
    /// `burst: false`).
    pub eligible: bool,
    /// Share of the interval some of their tasks waited for a CPU (the
    /// slice's `cpu.pressure` `some`), where the host has it.
    pub stalled: Option<f64>,
}

/// The host and every tracked user over the last interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// How long the interval was (measured, not configured).
    pub elapsed: Duration,
    /// The host's CPUs.
    pub host_cpus: f64,
    /// CPUs the host used on average over the interval, all of them: system
    /// services, users, bursts.
    pub host_usage: f64,
    pub users: Vec<UserSample>,
}

/// Whether quotas are lifted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Idle CPU: eligible users burst.
    Idle,
    /// Busy (or not yet watched long enough): everyone at their allocation.
    Busy,
}

/// One user's quota, decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub uid: u32,
    pub quota: Cpus,
    /// Above their allocation (`status` says so).
    pub bursting: bool,
}

/// What to do after a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub state: HostState,
    /// Every user of the sample, in its order.
    pub quotas: Vec<Quota>,
    /// The users whose quota differs from the one in force: the only
    /// `SetUnitProperties` calls to make.
    pub changes: Vec<(u32, Cpus)>,
    /// The load that counted (share of the host's CPUs, bursts above
    /// allocations left out), for logs and `status`.
    pub load: f64,
}

/// The bursting state machine of one daemon.
#[derive(Clone, Debug)]
pub struct Burster {
    cfg: Bursting,
    state: HostState,
    /// How long the samples contrary to `state` have lasted in a row.
    streak: Duration,
}

impl Burster {
    pub fn new(cfg: Bursting) -> Burster {
        Burster {
            cfg,
            state: HostState::Busy,
            streak: Duration::ZERO,
        }
    }

    pub fn state(&self) -> HostState {
        self.state
    }

    /// A new policy: the state is kept (a reload does not restart the
    /// watch), bursting turned off takes effect at the next sample.
    pub fn set_policy(&mut self, cfg: Bursting) {
        self.cfg = cfg;
    }

    /// Every user's quota after this sample.
    pub fn decide(&mut self, s: &Sample) -> Decision {
        let load = load_share(s);
        let wanting = s
            .users
            .iter()
            .filter(|u| u.eligible && wants_more(u))
            .count();
        let contended = self.cfg.contention == Contention::Allocation && wanting >= 2;
        let busy = load >= self.cfg.busy_threshold || contended;
        let idle = load < self.cfg.idle_threshold && !contended;
        let elapsed = match s.elapsed.is_zero() {
            true => self.cfg.interval,
            false => s.elapsed,
        };
        let (contrary, needed, next) = match self.state {
            HostState::Idle => (busy, self.cfg.busy_for, HostState::Busy),
            HostState::Busy => (idle, self.cfg.idle_for, HostState::Idle),
        };
        self.streak = match contrary {
            true => self.streak.saturating_add(elapsed),
            false => Duration::ZERO,
        };
        if contrary && self.streak >= needed {
            self.state = next;
            self.streak = Duration::ZERO;
        }
        if !self.cfg.enabled {
            self.state = HostState::Busy;
        }
        let host = Cpus::from_millis(to_millis(s.host_cpus));
        let quotas: Vec<Quota> = s
            .users
            .iter()
            .map(|u| {
                let ceiling = match self.cfg.up_to {
                    BurstCeiling::Max => u.max,
                    BurstCeiling::Host => host,
                };
                let quota = match self.state == HostState::Idle && u.eligible {
                    true => ceiling.max(u.allocation),
                    false => u.allocation,
                };
                Quota {
                    uid: u.uid,
                    quota,
                    bursting: quota > u.allocation,
                }
            })
            .collect();
        let changes = quotas
            .iter()
            .zip(&s.users)
            .filter(|(q, u)| q.quota != u.quota)
            .map(|(q, _)| (q.uid, q.quota))
            .collect();
        Decision {
            state: self.state,
            quotas,
            changes,
            load,
        }
    }
}

/// The host's load without the part of each burst above its allocation, as
/// a share of its CPUs. A sample that makes no sense (no CPUs, NaN) counts
/// as fully loaded: nobody bursts on figures that cannot be trusted.
fn load_share(s: &Sample) -> f64 {
    let finite = |v: f64| v.is_finite() && v >= 0.0;
    if !finite(s.host_cpus) || s.host_cpus <= 0.0 || !finite(s.host_usage) {
        return 1.0;
    }
    let bursts: f64 = s
        .users
        .iter()
        .filter(|u| finite(u.usage))
        .map(|u| (u.usage - u.allocation.as_f64()).max(0.0))
        .sum();
    ((s.host_usage - bursts).max(0.0) / s.host_cpus).min(1.0)
}

/// Whether a user wants more CPU than their allocation: they use more than
/// it (bursting), or a quota held at it binds.
fn wants_more(u: &UserSample) -> bool {
    if !u.usage.is_finite() {
        return false;
    }
    let alloc = u.allocation.as_f64();
    u.usage > alloc + OVER_ALLOCATION
        || (u.quota <= u.allocation && u.usage >= QUOTA_BINDS * u.quota.as_f64())
        || u.stalled.is_some_and(|s| s.is_finite() && s >= STALLED)
}

fn to_millis(cpus: f64) -> u64 {
    match cpus.is_finite() && cpus > 0.0 {
        true => (cpus * 1000.0).min(Cpus::MAX.millis() as f64) as u64,
        false => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cfg() -> Bursting {
        Bursting {
            enabled: true,
            ..Bursting::default()
        }
    }

    fn c(v: f64) -> Cpus {
        Cpus::from_millis((v * 1000.0) as u64)
    }

    /// A user with a 0.5-CPU allocation, max 2, using `usage` under `quota`.
    fn u(uid: u32, usage: f64, quota: Cpus) -> UserSample {
        UserSample {
            uid,
            usage,
            allocation: c(0.5),
            max: c(2.0),
            quota,
            eligible: true,
            stalled: None,
        }
    }

    /// Runs `seconds` samples of one second on a 2-CPU host. `users` says
    /// what each user uses given the quota in force; the host carries the
    /// users plus `other` CPUs of non-user work, at most its 2 CPUs.
    /// Returns the decisions, one a second.
    fn run(
        b: &mut Burster,
        quotas: &mut [(u32, Cpus)],
        seconds: u32,
        other: f64,
        demand: impl Fn(u32) -> f64,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..seconds {
            // users with demand share what the host has left, capped by quota
            let free = (2.0 - other).max(0.0);
            let want: Vec<f64> = quotas
                .iter()
                .map(|(uid, q)| demand(*uid).min(q.as_f64()))
                .collect();
            let total: f64 = want.iter().sum();
            let scale = if total > free { free / total } else { 1.0 };
            let users: Vec<UserSample> = quotas
                .iter()
                .zip(&want)
                .map(|((uid, q), w)| u(*uid, w * scale, *q))
                .collect();
            let used: f64 = users.iter().map(|u| u.usage).sum();
            let d = b.decide(&Sample {
                elapsed: SEC,
                host_cpus: 2.0,
                host_usage: (used + other).min(2.0),
                users,
            });
            for (uid, q) in &d.changes {
                if let Some(slot) = quotas.iter_mut().find(|(u, _)| u == uid) {
                    slot.1 = *q;
                }
            }
            out.push(d);
        }
        out
    }

    #[test]
    fn a_lone_user_bursts_on_an_idle_host_and_does_not_count_against_itself() {
        let mut b = Burster::new(cfg());
        let mut quotas = vec![(1001, c(0.5))];
        // watched for idle_for (10 s) before anything is lifted
        let d = run(&mut b, &mut quotas, 9, 0.0, |_| 0.0);
        assert!(
            d.iter()
                .all(|d| d.state == HostState::Busy && d.changes.is_empty())
        );
        let d = run(&mut b, &mut quotas, 1, 0.0, |_| 0.0);
        assert_eq!(d[0].state, HostState::Idle);
        assert_eq!(d[0].changes, vec![(1001, c(2.0))]);
        // now the user runs 4 busy threads: 2 CPUs, the whole host, for a minute
        let d = run(&mut b, &mut quotas, 60, 0.0, |_| 4.0);
        assert!(
            d.iter().all(|d| d.state == HostState::Idle),
            "{:?}",
            d.last()
        );
        assert!(
            d.iter()
                .all(|d| d.quotas[0].bursting && d.quotas[0].quota == c(2.0))
        );
        // what counted: their allocation, not their burst
        assert!((d[59].load - 0.25).abs() < 1e-9, "{}", d[59].load);
    }

    #[test]
    fn under_contention_users_share_idle_cpus_by_weight_by_default() {
        let mut b = Burster::new(cfg());
        let mut quotas = vec![(1001, c(0.5)), (1002, c(0.5))];
        run(&mut b, &mut quotas, 10, 0.0, |_| 0.0);
        // both want 4 CPUs: the kernel splits the host 1:1 by weight; the
        // load without bursts is their allocations, half the host: no change
        let d = run(&mut b, &mut quotas, 30, 0.0, |_| 4.0);
        assert!(
            d.iter()
                .all(|d| d.state == HostState::Idle && d.changes.is_empty())
        );
        assert!(d[29].quotas.iter().all(|q| q.bursting));
    }

    #[test]
    fn with_contention_allocation_quotas_return_within_busy_for_and_do_not_flap() {
        let mut b = Burster::new(Bursting {
            contention: Contention::Allocation,
            ..cfg()
        });
        let mut quotas = vec![(1001, c(0.5)), (1002, c(0.5))];
        run(&mut b, &mut quotas, 10, 0.0, |_| 0.0);
        // 1001 alone: bursts
        let d = run(&mut b, &mut quotas, 10, 0.0, |uid| {
            if uid == 1001 { 4.0 } else { 0.0 }
        });
        assert!(d[9].quotas[0].bursting);
        // 1002 starts a busy loop: back to allocations after busy_for (3 s)
        let d = run(&mut b, &mut quotas, 60, 0.0, |_| 4.0);
        let back = d.iter().position(|d| d.state == HostState::Busy).unwrap();
        assert_eq!(back, 2, "3 busy samples of 1 s");
        assert_eq!(d[back].changes, vec![(1001, c(0.5)), (1002, c(0.5))]);
        // held at their allocations they still want more: no flapping
        assert!(
            d[back..].iter().all(|d| d.state == HostState::Busy),
            "flapped"
        );
        assert!(d[back + 1..].iter().all(|d| d.changes.is_empty()));
        // 1002 stops: idle_for later, 1001 bursts again
        let d = run(&mut b, &mut quotas, 10, 0.0, |uid| {
            if uid == 1001 { 4.0 } else { 0.0 }
        });
        assert_eq!(d[8].state, HostState::Busy);
        assert_eq!(d[9].state, HostState::Idle);
        assert!(d[9].quotas[0].bursting);
    }

    #[test]
    fn a_user_starved_below_their_quota_still_wants_more() {
        let mut b = Burster::new(Bursting {
            contention: Contention::Allocation,
            ..cfg()
        });
        let mut quotas = vec![(1001, c(0.5)), (1002, c(0.5))];
        run(&mut b, &mut quotas, 10, 0.0, |_| 0.0);
        assert_eq!(b.state(), HostState::Idle);
        // the host (a container) gets less CPU than it counts: 1001 bursts
        // at 0.7, 1002 gets 0.3 under a quota of 0.5, its tasks waiting
        let starved = |stalled| Sample {
            elapsed: SEC,
            host_cpus: 2.0,
            host_usage: 1.0,
            users: vec![
                u(1001, 0.7, c(2.0)),
                UserSample {
                    stalled,
                    ..u(1002, 0.3, c(0.5))
                },
            ],
        };
        for _ in 0..5 {
            assert_eq!(b.decide(&starved(None)).state, HostState::Idle);
        }
        let d: Vec<Decision> = (0..3).map(|_| b.decide(&starved(Some(0.9)))).collect();
        assert_eq!(d[2].state, HostState::Busy);
        assert_eq!(d[2].quotas[0].quota, c(0.5));
        // a light user's short waits do not count
        let mut b = Burster::new(Bursting {
            contention: Contention::Allocation,
            ..cfg()
        });
        run(&mut b, &mut quotas, 10, 0.0, |_| 0.0);
        for _ in 0..10 {
            assert_eq!(b.decide(&starved(Some(0.2))).state, HostState::Idle);
        }
    }

    #[test]
    fn load_from_elsewhere_returns_quotas_and_hysteresis_keeps_them_there() {
        let mut b = Burster::new(cfg());
        let mut quotas = vec![(1001, c(0.5))];
        run(&mut b, &mut quotas, 10, 0.0, |_| 4.0);
        assert_eq!(b.state(), HostState::Idle);
        // two seconds of a busy host (1.6 CPUs of system work + the user's
        // allocation): shorter than busy_for, nothing changes
        let d = run(&mut b, &mut quotas, 2, 1.6, |_| 4.0);
        assert!(d.iter().all(|d| d.state == HostState::Idle));
        run(&mut b, &mut quotas, 1, 0.0, |_| 4.0);
        // a busy host for good: back to the allocation on the third second
        let d = run(&mut b, &mut quotas, 3, 1.6, |_| 4.0);
        assert_eq!(d[2].state, HostState::Busy);
        assert_eq!(d[2].changes, vec![(1001, c(0.5))]);
        // load between the thresholds (0.9 + 0.5 = 70 %.. 90 %): stays busy
        let d = run(&mut b, &mut quotas, 60, 0.95, |_| 4.0);
        assert!(
            d.iter()
                .all(|d| d.state == HostState::Busy && !d.quotas[0].bursting)
        );
        // below idle_threshold for idle_for: lifted again
        let d = run(&mut b, &mut quotas, 10, 0.2, |_| 4.0);
        assert_eq!(d[9].state, HostState::Idle);
    }

    #[test]
    fn off_ineligible_or_garbage_never_above_the_allocation() {
        let mut off = Burster::new(Bursting::default());
        let mut quotas = vec![(1001, c(0.5))];
        let d = run(&mut off, &mut quotas, 60, 0.0, |_| 4.0);
        assert!(
            d.iter()
                .all(|d| d.quotas[0].quota == c(0.5) && d.changes.is_empty())
        );

        let mut b = Burster::new(cfg());
        let s = |host_cpus: f64, host_usage: f64| Sample {
            elapsed: SEC,
            host_cpus,
            host_usage,
            users: vec![
                UserSample {
                    eligible: false,
                    ..u(1001, 0.0, c(0.5))
                },
                u(1002, f64::NAN, c(0.5)),
            ],
        };
        for _ in 0..20 {
            let d = b.decide(&s(2.0, 0.0));
            assert_eq!(d.quotas[0].quota, c(0.5), "burst: false never bursts");
        }
        assert_eq!(b.state(), HostState::Idle);
        // figures that make no sense count as a loaded host
        for bad in [
            s(0.0, 0.0),
            s(f64::NAN, 1.0),
            s(2.0, f64::INFINITY),
            s(-1.0, 0.0),
        ] {
            let d = b.decide(&bad);
            assert_eq!(d.load, 1.0);
        }
        assert_eq!(b.state(), HostState::Busy);
    }

    #[test]
    fn up_to_host_bursts_to_every_cpu() {
        let mut b = Burster::new(Bursting {
            up_to: BurstCeiling::Host,
            ..cfg()
        });
        let mut quotas = vec![(1001, c(0.5))];
        let d = run(&mut b, &mut quotas, 10, 0.0, |_| 0.0);
        assert_eq!(d[9].changes, vec![(1001, c(2.0))]);
        // a user whose allocation is above max (a root set) keeps it
        let mut b = Burster::new(cfg());
        let big = UserSample {
            allocation: c(4.0),
            quota: c(4.0),
            ..u(1001, 0.0, c(4.0))
        };
        for _ in 0..10 {
            let d = b.decide(&Sample {
                elapsed: SEC,
                host_cpus: 8.0,
                host_usage: 0.0,
                users: vec![big],
            });
            assert_eq!(d.quotas[0].quota, c(4.0));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the samples, a quota is the allocation or the
            /// ceiling, and only an eligible user on an enabled policy is
            /// ever above the allocation.
            #[test]
            fn quotas_stay_between_allocation_and_ceiling(
                enabled in any::<bool>(),
                allocation in prop::sample::select(vec![250u64, 500, 1000]),
                samples in prop::collection::vec((0.0f64..8.0, 0.0f64..8.0, any::<bool>()), 1..80),
            ) {
                let mut b = Burster::new(Bursting { enabled, ..Bursting::default() });
                for (host_usage, usage, eligible) in samples {
                    let user = UserSample {
                        uid: 1,
                        usage,
                        allocation: Cpus::from_millis(allocation),
                        max: Cpus::whole(2),
                        quota: Cpus::from_millis(allocation),
                        eligible,
                        stalled: None,
                    };
                    let d = b.decide(&Sample { elapsed: SEC, host_cpus: 4.0, host_usage, users: vec![user] });
                    let q = d.quotas[0].quota;
                    prop_assert!(q == user.allocation || q == Cpus::whole(2));
                    if !enabled || !eligible {
                        prop_assert_eq!(q, user.allocation);
                    }
                    prop_assert!((0.0..=1.0).contains(&d.load));
                }
            }
        }
    }
}
