//! The Prometheus text exposition (`fairshare-ctl metrics`).
//!
//! fairshared does not listen on the network and does no periodic work: the
//! exposition is made on request, over the socket. The shipped
//! `fairshare-metrics.timer` writes it once a minute into node_exporter's
//! textfile directory, so scraping costs the daemon nothing between requests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use fairshare_proto::wire::{ErrorCode, Kind};

use super::Service;
use crate::systemd::Systemd;

/// Counters since the daemon started.
#[derive(Default)]
pub struct Counters {
    requests: [AtomicU64; Kind::ALL.len()],
    refused_max: AtomicU64,
    refused_capacity: AtomicU64,
    refused_rate: AtomicU64,
    errors: AtomicU64,
    pub(super) sessions_opened: AtomicU64,
    pub(super) sessions_closed: AtomicU64,
    pub(super) sessions_ended: AtomicU64,
    pub(super) adopted: AtomicU64,
    pub(super) leases_expired: AtomicU64,
}

impl Counters {
    pub(super) fn request(&self, kind: Kind) {
        self.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refused(&self, reason: &str) {
        match reason {
            "no_capacity" => &self.refused_capacity,
            "rate_limited" => &self.refused_rate,
            _ => &self.refused_max,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn error(&self, code: ErrorCode) {
        if !matches!(
            code,
            ErrorCode::ExceedsMax | ErrorCode::NoCapacity | ErrorCode::RateLimited
        ) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
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

impl<S: Systemd> Service<S> {
    pub(super) async fn metrics(&self) -> String {
        let (users, cap) = self.list_rows().await;
        let c = &self.counters;
        let mut o = Out(String::with_capacity(256 + users.len() * 600));
        let who: Vec<String> = users
            .iter()
            .map(|u| format!("user=\"{}\",uid=\"{}\"", label(&u.user), u.uid))
            .collect();
        type Pick = fn(&fairshare_proto::wire::StatusInfo) -> Option<f64>;
        let per_user: [(&str, &str, &str, Pick); 9] = [
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
                    Some(if u.source == fairshare_proto::wire::Source::Default {
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
                "Processes of the user's slice killed for reaching its memory limit.",
                |u| u.usage.oom_kills.map(|v| v as f64),
            ),
        ];
        for (name, kind, help, pick) in per_user {
            o.family(name, kind, help);
            for (u, labels) in users.iter().zip(&who) {
                if let Some(v) = pick(u) {
                    o.sample(name, labels, v);
                }
            }
        }
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
        o.sample("fairshare_users", "", users.len());
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
        o.sample(
            "fairshare_refused_total",
            "reason=\"exceeds_max\"",
            c.refused_max.load(Ordering::Relaxed),
        );
        o.sample(
            "fairshare_refused_total",
            "reason=\"no_capacity\"",
            c.refused_capacity.load(Ordering::Relaxed),
        );
        o.sample(
            "fairshare_refused_total",
            "reason=\"rate_limited\"",
            c.refused_rate.load(Ordering::Relaxed),
        );
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
        ];
        for (name, help, n) in totals {
            o.family(name, "counter", help);
            o.sample(name, "", n.load(Ordering::Relaxed));
        }
        o.0
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
