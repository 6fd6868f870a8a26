//! Who a uid is, for the requests: the user directory (NSS in the daemon, a
//! table in tests) behind a short-lived cache.
//!
//! Requests come in bursts (a login's open and close, a storm of logins, a
//! `status` loop, `list` and metrics over every user): each asks NSS, which
//! may be LDAP or a varlink call into systemd, once per [`IDENTITY_TTL`].
//! Group changes show within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fairshare_policy::Identity;
use fairshare_proto::wire::UserRef;

use crate::users::{self, LookupError};

/// Where user names and groups come from (NSS in the daemon, a table in tests).
pub trait Directory: Send + Sync + 'static {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError>;
    /// The same without the user's groups (`groups` empty), for policies
    /// without group rules.
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        self.by_uid(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError>;
}

/// The system's user database, through NSS.
pub struct Nss;

impl Directory for Nss {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        users::by_uid(uid)
    }
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        users::by_uid_without_groups(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        users::by_name(name)
    }
}

/// How long a user lookup (NSS: name and groups) is reused.
pub const IDENTITY_TTL: Duration = Duration::from_secs(2);
/// At most this many user lookups are kept.
const IDENTITY_CACHE: usize = 1024;

/// Why a user could not be found.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("uid {0} has no account on this host (`getent passwd {0}` finds nothing)")]
    NoUid(u32),
    #[error("no user named {0} on this host (`getent passwd {0}` finds nothing)")]
    NoName(String),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("user lookup failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

struct Cached {
    at: Instant,
    id: Identity,
    /// Whether `id` includes the user's groups.
    with_groups: bool,
}

/// The directory and recent lookups, by uid.
pub struct Identities {
    directory: Arc<dyn Directory>,
    cache: Mutex<HashMap<u32, Cached>>,
    ttl: Duration,
}

impl Identities {
    pub fn new(directory: Arc<dyn Directory>) -> Identities {
        Identities {
            directory,
            cache: Mutex::new(HashMap::new()),
            ttl: IDENTITY_TTL,
        }
    }

    /// How long lookups are reused (tests).
    #[cfg(test)]
    pub(crate) fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<u32, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many lookups are kept now.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    /// The user `uid`, with their groups when `groups` (else perhaps without).
    pub async fn by_uid(&self, uid: u32, groups: bool) -> Result<Identity, IdentityError> {
        let now = Instant::now();
        if let Some(c) = self.cache().get(&uid)
            && now.saturating_duration_since(c.at) < self.ttl
            && (c.with_groups || !groups)
        {
            return Ok(c.id.clone());
        }
        let dir = self.directory.clone();
        let found = tokio::task::spawn_blocking(move || match groups {
            true => dir.by_uid(uid),
            false => dir.by_uid_without_groups(uid),
        })
        .await??;
        let Some(id) = found else {
            return Err(IdentityError::NoUid(uid));
        };
        let mut cache = self.cache();
        if cache.len() >= IDENTITY_CACHE {
            let ttl = self.ttl;
            cache.retain(|_, c| now.saturating_duration_since(c.at) < ttl);
        }
        // Never more than IDENTITY_CACHE: a storm of more users than that
        // just asks NSS for the rest.
        if cache.len() < IDENTITY_CACHE {
            cache.insert(
                uid,
                Cached {
                    at: now,
                    id: id.clone(),
                    with_groups: groups,
                },
            );
        }
        Ok(id)
    }

    /// A user named by uid or name (a name of digits is a uid), with groups.
    pub async fn resolve(&self, user: &UserRef) -> Result<Identity, IdentityError> {
        let name = match user {
            UserRef::Uid(uid) => return self.by_uid(*uid, true).await,
            UserRef::Name(name) => match name.parse::<u32>() {
                Ok(uid) => return self.by_uid(uid, true).await,
                Err(_) => name.clone(),
            },
        };
        let dir = self.directory.clone();
        let n = name.clone();
        tokio::task::spawn_blocking(move || dir.by_name(&n))
            .await??
            .ok_or(IdentityError::NoName(name))
    }
}
