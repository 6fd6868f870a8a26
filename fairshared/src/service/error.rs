//! Why a request failed, typed, and the one place where that becomes the
//! wire's `error` answer. The texts are what users read (and scripts match):
//! they say what happened and what to do.

use std::time::Duration;

use fairshare_policy::PolicyErrors;
use fairshare_proto::units::format_duration;
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
    /// A bad quantity or duration; the text names the field.
    #[error("{0}")]
    BadValue(String),
    #[error("nothing to change: give at least one of cpu, mem or tasks")]
    NothingToChange,
    #[error("{name} is not limited by fairshare ({reason}); there is nothing to resize")]
    Exempt { name: String, reason: String },
    #[error(
        "Request refused: a resize may last at most {} on this host (asked for {})",
        format_duration(*max),
        format_duration(*asked)
    )]
    LeaseTooLong { max: Duration, asked: Duration },
    /// The ledger refused a resize: above the maximum, or no room on the host.
    #[error(
        "Request refused: {refusal} (you may have up to {max}; free on this host: {} CPUs, {})",
        capacity.cpu_free,
        capacity.mem_free.human()
    )]
    Refused {
        refusal: Refusal,
        max: Limits,
        capacity: Capacity,
    },
    #[error("could not apply limits to {}: {source}", slice_name(*uid))]
    Apply { uid: u32, source: SystemdError },
    #[error("session counted, but pid {pid} could not be moved into {}: {source}", slice_name(*uid))]
    Adopt {
        uid: u32,
        pid: u32,
        source: SystemdError,
    },
    #[error(
        "the limits were applied, but the state could not be saved: {0}; the change will be forgotten if fairshared restarts (free space or fix permissions in the state directory)"
    )]
    Save(#[from] SaveError),
    #[error("no policy path to reload from")]
    NoPolicyPath,
    #[error("loading the policy: {0}")]
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
            ServiceError::Denied(Denied::RootOnly(_)) | ServiceError::NotYours => {
                ErrorCode::PermissionDenied
            }
            ServiceError::Denied(Denied::RateLimited { .. }) => ErrorCode::RateLimited,
            ServiceError::Identity(IdentityError::NoUid(_) | IdentityError::NoName(_)) => {
                ErrorCode::UnknownUser
            }
            ServiceError::Identity(IdentityError::Lookup(_) | IdentityError::Task(_))
            | ServiceError::NoPolicyPath
            | ServiceError::PolicyTask(_) => ErrorCode::Internal,
            ServiceError::BadValue(_) | ServiceError::NothingToChange => ErrorCode::BadRequest,
            ServiceError::Exempt { .. } => ErrorCode::Exempt,
            ServiceError::LeaseTooLong { .. } => ErrorCode::ExceedsMax,
            ServiceError::Refused { refusal, .. } => match refusal {
                Refusal::ExceedsMax(_) => ErrorCode::ExceedsMax,
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
            ServiceError::LeaseTooLong { .. } => Some(Refused::ExceedsMax),
            ServiceError::Refused { refusal, .. } => Some(match refusal {
                Refusal::ExceedsMax(_) => Refused::ExceedsMax,
                Refusal::NoCapacity(_) => Refused::NoCapacity,
            }),
            _ => None,
        }
    }
}

impl From<ServiceError> for Response {
    /// The `error` answer: the text, the code, and for a refused resize
    /// what would have been allowed.
    fn from(e: ServiceError) -> Response {
        let (max, capacity) = match &e {
            ServiceError::Refused { max, capacity, .. } => (Some(*max), Some(*capacity)),
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
    use super::*;

    #[test]
    fn every_refusal_code_is_counted_as_a_refusal_and_nothing_else_is() {
        let refusals = [
            ServiceError::Denied(Denied::RateLimited {
                uid: 1,
                wait: Duration::from_secs(1),
            }),
            ServiceError::LeaseTooLong {
                max: Duration::from_secs(60),
                asked: Duration::from_secs(120),
            },
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
        ] {
            assert_eq!(e.refusal(), None, "{e}");
        }
        let r = Response::from(ServiceError::LeaseTooLong {
            max: Duration::from_secs(7200),
            asked: Duration::from_secs(3 * 3600),
        });
        let Response::Error(e) = r else {
            panic!("not an error: {r:?}")
        };
        assert_eq!(
            e.error,
            "Request refused: a resize may last at most 2h on this host (asked for 3h)"
        );
        assert_eq!(e.code, ErrorCode::ExceedsMax);
        assert_eq!((e.max, e.capacity), (None, None));
    }
}
