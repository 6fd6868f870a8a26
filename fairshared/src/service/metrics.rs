//! The Prometheus text exposition (`fairshare-ctl metrics`).
//!
//! fairshared does not listen on the network and does no periodic work: the
//! exposition is made on request, over the socket. The shipped
//! `fairshare-metrics.timer` writes it once a minute into node_exporter's
//! textfile directory, so scraping costs the daemon nothing between requests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use fairshare_proto::wire::{Capacity, Kind, Source, StatusInfo};

use super::{Service, ServiceError};
use crate::admission::Denied;
use crate::systemd::Systemd;

/// Why a request was refused (as opposed to failed), as counted in
/// `fairshare_refused_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Above the user's maximum (amounts, or the longest lease).
    ExceedsMax,
    /// Not enough free capacity on the host.
    NoCapacity,
    /// Too many requests from this user.
    RateLimited,
}

impl Refused {
    /// In the order they are exposed.
    const ALL: [Refused; 3] = [
        Refused::ExceedsMax,
        Refused::NoCapacity,
        Refused::RateLimited,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::ExceedsMax => "exceeds_max",
            Refused::NoCapacity => "no_capacity",
            Refused::RateLimited => "rate_limited",
        }
    }
}

/// Counters since the daemon started.
#[derive(Default)]
pub struct Counters {
    requests: [AtomicU64; Kind::ALL.len()],
    refused: [AtomicU64; Refused::ALL.len()],
    errors: AtomicU64,
    pub(super) sessions_opened: AtomicU64,
    pub(super) sessions_closed: AtomicU64,
    pub(super) sessions_ended: AtomicU64,
    pub(super) adopted: AtomicU64,
    pub(super) leases_expired: AtomicU64,
    /// `SetUnitProperties` calls on user slices.
    pub(super) slice_writes: AtomicU64,
}

impl Counters {
    pub(super) fn request(&self, kind: Kind) {
        self.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A request that was not answered with success: a refusal, by reason,
    /// or an error. A root-only request from another user is neither (it
    /// shows in `fairshare_requests_total` only).
    pub(super) fn failed(&self, e: &ServiceError) {
        let counter = match e.refusal() {
            Some(r) => &self.refused[r as usize],
            None if matches!(e, ServiceError::Denied(Denied::RootOnly(_))) => return,
            None => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A label value, escaped as the exposition format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        match labels.is_empty() {
            true => {
                let _ = writeln!(self.0, "{name} {value}");
            }
            false => {
                let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
            }
        }
    }
}

type Pick = fn(&StatusInfo) -> Option<f64>;

/// The per-user families: name, type, help, and the figure from a user's row.
const PER_USER: [(&str, &str, &str, Pick); 9] = [
    (
        "fairshare_allocation_cpus",
        "gauge",
        "CPUs allocated to the user (CPU quota / 100%).",
        |u| u.allocated_cpu.map(|c| c.as_f64()),
    ),
    (
        "fairshare_allocation_memory_bytes",
        "gauge",
        "Hard memory limit of the user (MemoryMax).",
        |u| u.allocated_mem.map(|m| m.get() as f64),
    ),
    (
        "fairshare_allocation_tasks",
        "gauge",
        "Task limit of the user (TasksMax).",
        |u| u.allocated_tasks.map(|t| t.get() as f64),
    ),
    (
        "fairshare_sessions",
        "gauge",
        "Open sessions of the user.",
        |u| Some(f64::from(u.sessions)),
    ),
    (
        "fairshare_resized",
        "gauge",
        "1 when the user's allocation differs from the policy default.",
        |u| {
            Some(if u.source == Source::Default {
                0.0
            } else {
                1.0
            })
        },
    ),
    (
        "fairshare_memory_usage_bytes",
        "gauge",
        "Memory the user's slice uses.",
        |u| u.usage.memory_current.map(|v| v as f64),
    ),
    (
        "fairshare_tasks_usage",
        "gauge",
        "Tasks in the user's slice.",
        |u| u.usage.tasks_current.map(|v| v as f64),
    ),
    (
        "fairshare_cpu_usage_seconds_total",
        "counter",
        "CPU time used by the user's slice.",
        |u| u.usage.cpu_usage_nsec.map(|v| v as f64 / 1e9),
    ),
    (
        "fairshare_oom_kills",
        "gauge",
        "Processes of the user's slice killed for reaching its memory limit, since the slice started (it starts anew at a login after the last logout; the events counters keep counting).",
        |u| u.usage.oom_kills.map(|v| v as f64),
    ),
];

impl<S: Systemd> Service<S> {
    pub(super) async fn metrics(&self) -> String {
        let (users, cap) = self.list_rows().await;
        let mut o = Out(String::with_capacity(256 + users.len() * 600));
        per_user(&mut o, &users);
        host(&mut o, users.len(), &cap);
        counters(&mut o, &self.counters);
        o.0.push_str(&self.notices.metrics());
        o.0
    }
}

/// Every user's allocation, sessions and usage.
fn per_user(o: &mut Out, users: &[StatusInfo]) {
    let who: Vec<String> = users
        .iter()
        .map(|u| format!("user=\"{}\",uid=\"{}\"", label(&u.user), u.uid))
        .collect();
    for (name, kind, help, pick) in PER_USER {
        o.family(name, kind, help);
        for (u, labels) in users.iter().zip(&who) {
            if let Some(v) = pick(u) {
                o.sample(name, labels, v);
            }
        }
    }
}

/// The host's capacity and what is handed out.
fn host(o: &mut Out, users: usize, cap: &Capacity) {
    o.family(
        "fairshare_capacity_cpus",
        "gauge",
        "CPUs the host can hand out (after overcommit).",
    );
    o.sample("fairshare_capacity_cpus", "", cap.cpu_total.as_f64());
    o.family(
        "fairshare_capacity_memory_bytes",
        "gauge",
        "Memory the host can hand out (after overcommit).",
    );
    o.sample("fairshare_capacity_memory_bytes", "", cap.mem_total.get());
    o.family(
        "fairshare_allocated_cpus",
        "gauge",
        "CPUs allocated to all tracked users.",
    );
    o.sample("fairshare_allocated_cpus", "", cap.cpu_allocated.as_f64());
    o.family(
        "fairshare_allocated_memory_bytes",
        "gauge",
        "Memory allocated to all tracked users.",
    );
    o.sample(
        "fairshare_allocated_memory_bytes",
        "",
        cap.mem_allocated.get(),
    );
    o.family("fairshare_users", "gauge", "Users fairshare tracks.");
    o.sample("fairshare_users", "", users);
}

/// The counters since the daemon started.
fn counters(o: &mut Out, c: &Counters) {
    o.family(
        "fairshare_requests_total",
        "counter",
        "Requests answered, by type.",
    );
    for k in Kind::ALL {
        o.sample(
            "fairshare_requests_total",
            &format!("type=\"{k}\""),
            c.requests[k.index()].load(Ordering::Relaxed),
        );
    }
    o.family(
        "fairshare_refused_total",
        "counter",
        "Requests refused, by reason.",
    );
    for r in Refused::ALL {
        o.sample(
            "fairshare_refused_total",
            &format!("reason=\"{}\"", r.label()),
            c.refused[r as usize].load(Ordering::Relaxed),
        );
    }
    let totals = [
        (
            "fairshare_errors_total",
            "Requests that failed for another reason (systemd, bad input, permission).",
            &c.errors,
        ),
        (
            "fairshare_sessions_opened_total",
            "Sessions opened.",
            &c.sessions_opened,
        ),
        (
            "fairshare_sessions_closed_total",
            "Sessions closed.",
            &c.sessions_closed,
        ),
        (
            "fairshare_sessions_ended_total",
            "Sessions whose process ended without closing them.",
            &c.sessions_ended,
        ),
        (
            "fairshare_adopted_total",
            "Session processes moved into their user's slice (no pam_systemd).",
            &c.adopted,
        ),
        (
            "fairshare_leases_expired_total",
            "Leased resizes that ran out.",
            &c.leases_expired,
        ),
        (
            "fairshare_slice_writes_total",
            "SetUnitProperties calls on user slices (a login whose slice started from the right drop-in makes none).",
            &c.slice_writes,
        ),
    ];
    for (name, help, n) in totals {
        o.family(name, "counter", help);
        o.sample(name, "", n.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }
}
