//! Why a request failed, typed, and the one place where that becomes the
//! wire's `error` answer. The texts are what users read (and scripts match):
//! they say what happened and what to do.

use fairshare_policy::PolicyErrors;
use fairshare_proto::wire::{Capacity, ErrorCode, ErrorReply, Limits, Response};

use super::metrics::Refused;
use crate::admission::Denied;
use crate::identity::IdentityError;
use crate::ledger::Refusal;
use crate::store::SaveError;
use crate::systemd::{SystemdError, slice_name};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "permission denied: only root can see another user's allocation; `fairshare-ctl status` shows your own"
    )]
    NotYours,
    /// `events` or `notices` naming another user, from someone not root.
    #[error("permission denied: only root can {0} another user; leave out --user for your own")]
    NotYourEvents(&'static str),
    /// A bad quantity or duration; the text names the field.
    #[error("{0}")]
    BadValue(String),
    #[error("nothing to change: give at least one of cpu, mem or tasks")]
    NothingToChange,
    #[error("{name} is not limited by fairshare ({reason}); there is nothing to resize")]
    Exempt { name: String, reason: String },
    /// The ledger refused a resize: outside its bounds (the maximum, root's
    /// setting, the minimum), no room on the host, or past the lease. The
    /// text is the ledger's, written for whoever asked.
    #[error("Request refused: {refusal}")]
    Refused {
        refusal: Refusal,
        max: Limits,
        capacity: Capacity,
    },
    #[error(
        "could not apply limits to {}: {source}; the limits in force before stay (try again; if it keeps failing, root can see why with `journalctl -u fairshared`)",
        slice_name(*uid)
    )]
    Apply { uid: u32, source: SystemdError },
    #[error(
        "session counted, but pid {pid} could not be moved into {}: {source} (root: `journalctl -u fairshared` and `systemctl status {}`)",
        slice_name(*uid),
        slice_name(*uid)
    )]
    Adopt {
        uid: u32,
        pid: u32,
        source: SystemdError,
    },
    #[error(
        "the limits were applied, but the state could not be saved: {0}; the change will be forgotten if fairshared restarts (free space or fix permissions in the state directory)"
    )]
    Save(#[from] SaveError),
    #[error(
        "this fairshared was started without a policy path, so there is nothing to reload from (start it with --policy DIR_OR_FILE, as the packaged unit does)"
    )]
    NoPolicyPath,
    #[error(
        "loading the policy failed inside fairshared ({0}); the old policy stays in force (`journalctl -u fairshared` for more)"
    )]
    PolicyTask(tokio::task::JoinError),
    #[error(
        "policy not reloaded, the old one stays in force: {}",
        .0.to_string().replace('\n', "; ")
    )]
    InvalidPolicy(PolicyErrors),
}

impl ServiceError {
    /// The code on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Denied(Denied::RootOnly(_))
            | ServiceError::NotYours
            | ServiceError::NotYourEvents(_) => ErrorCode::PermissionDenied,
            ServiceError::Denied(Denied::RateLimited { .. }) => ErrorCode::RateLimited,
            ServiceError::Identity(IdentityError::NoUid(_) | IdentityError::NoName(_)) => {
                ErrorCode::UnknownUser
            }
            ServiceError::Identity(IdentityError::Lookup(_) | IdentityError::Task(_))
            | ServiceError::NoPolicyPath
            | ServiceError::PolicyTask(_) => ErrorCode::Internal,
            ServiceError::BadValue(_) | ServiceError::NothingToChange => ErrorCode::BadRequest,
            ServiceError::Exempt { .. } => ErrorCode::Exempt,
            ServiceError::Refused { refusal, .. } => match refusal {
                Refusal::Bounds { over, .. } if over.is_empty() => ErrorCode::BadRequest,
                Refusal::Bounds { .. }
                | Refusal::LeaseTooLong { .. }
                | Refusal::LeaseRunning { .. } => ErrorCode::ExceedsMax,
                Refusal::NoCapacity(_) => ErrorCode::NoCapacity,
            },
            ServiceError::Apply { .. } | ServiceError::Adopt { .. } => ErrorCode::Systemd,
            ServiceError::Save(_) => ErrorCode::Persistence,
            ServiceError::InvalidPolicy(_) => ErrorCode::InvalidPolicy,
        }
    }

    /// The reason counted in `fairshare_refused_total`, for refusals (as
    /// opposed to failures).
    pub fn refusal(&self) -> Option<Refused> {
        match self {
            ServiceError::Denied(Denied::RateLimited { .. }) => Some(Refused::RateLimited),
            ServiceError::Refused { refusal, .. } => match refusal {
                // a value below the minimum is a bad value, not a refusal
                Refusal::Bounds { over, .. } if over.is_empty() => None,
                Refusal::Bounds { .. }
                | Refusal::LeaseTooLong { .. }
                | Refusal::LeaseRunning { .. } => Some(Refused::ExceedsMax),
                Refusal::NoCapacity(_) => Some(Refused::NoCapacity),
            },
            _ => None,
        }
    }
}

impl From<ServiceError> for Response {
    /// The `error` answer: the text, the code, and for a refused resize
    /// what would have been allowed.
    fn from(e: ServiceError) -> Response {
        let (max, capacity) = match &e {
            ServiceError::Refused {
                refusal: Refusal::NoCapacity(_),
                capacity,
                ..
            } => (None, Some(*capacity)),
            ServiceError::Refused { max, .. } => (Some(*max), None),
            _ => (None, None),
        };
        Response::Error(ErrorReply {
            error: e.to_string(),
            code: e.code(),
            max,
            capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_refusal_code_is_counted_as_a_refusal_and_nothing_else_is() {
        let refusals = [
            ServiceError::Denied(Denied::RateLimited {
                uid: 1,
                wait: Duration::from_secs(1),
            }),
            refused(Refusal::LeaseTooLong {
                max: Duration::from_secs(60),
                asked: Duration::from_secs(120),
            }),
            refused(Refusal::LeaseRunning {
                left: 60,
                max: Duration::from_secs(120),
            }),
            refused(Refusal::Bounds {
                over: vec!["cpu 9 is above your maximum of 8 CPUs".into()],
                under: vec![],
            }),
            refused(Refusal::NoCapacity("x".into())),
        ];
        for e in refusals {
            assert!(e.refusal().is_some(), "{e}");
            assert!(matches!(
                e.code(),
                ErrorCode::ExceedsMax | ErrorCode::NoCapacity | ErrorCode::RateLimited
            ));
        }
        for e in [
            ServiceError::NotYours,
            ServiceError::NothingToChange,
            ServiceError::Denied(Denied::RootOnly(fairshare_proto::wire::Kind::List)),
            ServiceError::Identity(IdentityError::NoUid(5)),
            ServiceError::NoPolicyPath,
            refused(Refusal::Bounds {
                over: vec![],
                under: vec!["mem 1B is below the minimum of 64M".into()],
            }),
        ] {
            assert_eq!(e.refusal(), None, "{e}");
        }
        let r = Response::from(refused(Refusal::LeaseTooLong {
            max: Duration::from_secs(7200),
            asked: Duration::from_secs(3 * 3600),
        }));
        let Response::Error(e) = r else {
            panic!("not an error: {r:?}")
        };
        assert_eq!(
            e.error,
            "Request refused: a resize above the default may last at most 2h on this host (asked for 3h)"
        );
        assert_eq!(e.code, ErrorCode::ExceedsMax);
        assert_eq!((e.max.is_some(), e.capacity), (true, None));
    }

    fn refused(refusal: Refusal) -> ServiceError {
        use fairshare_proto::units::{Bytes, Cpus, Tasks};
        let l = Limits {
            cpu: Cpus::whole(1),
            mem: Bytes(1 << 30),
            mem_high: None,
            tasks: Tasks(100),
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        };
        ServiceError::Refused {
            refusal,
            max: l,
            capacity: Capacity {
                cpu_total: l.cpu,
                mem_total: l.mem,
                cpu_allocated: l.cpu,
                mem_allocated: l.mem,
                cpu_free: Cpus::default(),
                mem_free: Bytes(0),
            },
        }
    }

    /// A capacity refusal shows one figure of what is free, labelled; a
    /// bound's refusal shows none.
    #[test]
    fn a_capacity_refusal_has_one_free_figure() {
        let e = refused(Refusal::NoCapacity(
            "cpu 4 asked, 2 CPUs free for you (host capacity 8 CPUs = 2 x overcommit 4, minus 6 allocated to others)".into(),
        ));
        let text = e.to_string();
        assert_eq!(text.matches("free").count(), 1, "{text}");
        let Response::Error(r) = Response::from(e) else {
            panic!("not an error")
        };
        assert_eq!((r.max, r.capacity.is_some()), (None, true));
    }
}
