//! Who a uid is, for the requests: the user directory (NSS in the daemon, a
//! table in tests) behind a short-lived cache.
//!
//! Requests come in bursts (a login's open and close, a storm of logins, a
//! `status` loop, `list` and metrics over every user): each asks NSS, which
//! may be LDAP or a varlink call into systemd, once per [`IDENTITY_TTL`].
//! Group changes show within that time.
//!
//! Lookups run on the blocking pool, which logins need too. A lookup made
//! for a non-root user's request ([`Behalf::User`]) waits for one of
//! [`USER_LOOKUPS`] places, so users' requests never hold more of the pool
//! than that, whatever they send; root's and the logins' never wait for one.
//! Lookups of one uid already under way are shared rather than repeated,
//! separately for users' requests and root's, so a user's own flood never
//! delays a root lookup either. (A user can only have themselves looked up:
//! the handlers check permission first, see `service/status.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fairshare_policy::Identity;
use fairshare_proto::wire::UserRef;

use crate::locks::UserLocks;
use crate::users::{self, LookupError};

/// On whose behalf a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behalf {
    /// Root's requests (the logins among them) and the daemon's own work.
    Root,
    /// A non-root user's request.
    User,
}

/// How many lookups for non-root users' requests run at once, all users
/// together (of the 16 threads of the blocking pool).
pub const USER_LOOKUPS: usize = 4;

/// Whether `user` names `id` (by uid, by name, or by a name of digits).
pub fn names(user: &UserRef, id: &Identity) -> bool {
    match user {
        UserRef::Uid(uid) => *uid == id.uid,
        UserRef::Name(name) => *name == id.name || name.parse::<u32>() == Ok(id.uid),
    }
}

/// Where user names and groups come from (NSS in the daemon, a table in tests).
pub trait Directory: Send + Sync + 'static {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError>;
    /// The same without the user's groups (`groups` empty), for policies
    /// without group rules.
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        self.by_uid(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError>;
    /// The names of a group's members: its member list, and the local
    /// accounts whose primary group it is (for the users' own drop-ins,
    /// written before they log in).
    fn group_members(&self, _group: &str) -> Vec<String> {
        Vec::new()
    }
    /// The uids of the local accounts (`/etc/passwd`) below `below`: system
    /// accounts, exempt by `exempt.uid_below`, which the PAM module never
    /// reports to fairshared.
    fn local_uids_below(&self, _below: u32) -> Vec<u32> {
        Vec::new()
    }
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
    fn group_members(&self, group: &str) -> Vec<String> {
        users::group_members(group)
    }
    fn local_uids_below(&self, below: u32) -> Vec<u32> {
        users::local_uids_below(below)
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
    /// Places for lookups on behalf of non-root users.
    user_lookups: tokio::sync::Semaphore,
    /// Lookups under way, by uid: for root's requests, and for users'.
    root_inflight: UserLocks,
    user_inflight: UserLocks,
}

impl Identities {
    pub fn new(directory: Arc<dyn Directory>) -> Identities {
        Identities {
            directory,
            cache: Mutex::new(HashMap::new()),
            ttl: IDENTITY_TTL,
            user_lookups: tokio::sync::Semaphore::new(USER_LOOKUPS),
            root_inflight: UserLocks::default(),
            user_inflight: UserLocks::default(),
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

    /// The directory itself (for lookups made in a blocking task).
    pub fn directory(&self) -> Arc<dyn Directory> {
        self.directory.clone()
    }

    /// Forgets every lookup (a reload reads users and groups afresh).
    pub fn forget(&self) {
        self.cache().clear();
    }

    /// How many lookups are kept now.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    fn cached_id(&self, uid: u32, groups: bool) -> Option<Identity> {
        let now = Instant::now();
        let cache = self.cache();
        let c = cache.get(&uid)?;
        (now.saturating_duration_since(c.at) < self.ttl && (c.with_groups || !groups))
            .then(|| c.id.clone())
    }

    /// The user `uid`, with their groups when `groups` (else perhaps
    /// without), for root's requests and the daemon's own work.
    pub async fn by_uid(&self, uid: u32, groups: bool) -> Result<Identity, IdentityError> {
        self.by_uid_for(uid, groups, Behalf::Root).await
    }

    /// [`Identities::by_uid`] on behalf of `behalf`.
    pub async fn by_uid_for(
        &self,
        uid: u32,
        groups: bool,
        behalf: Behalf,
    ) -> Result<Identity, IdentityError> {
        if let Some(id) = self.cached_id(uid, groups) {
            return Ok(id);
        }
        // One lookup of this uid at a time (per kind of caller): the others
        // find its result in the cache.
        let _inflight = match behalf {
            Behalf::Root => self.root_inflight.lock(uid).await,
            Behalf::User => self.user_inflight.lock(uid).await,
        };
        if let Some(id) = self.cached_id(uid, groups) {
            return Ok(id);
        }
        let _place = match behalf {
            Behalf::Root => None,
            // never closed, so acquire cannot fail
            Behalf::User => self.user_lookups.acquire().await.ok(),
        };
        let now = Instant::now();
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

    /// A user named by uid or name (a name of digits is a uid), with
    /// groups: for root's requests only (a user may only look themselves
    /// up, by uid).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory whose lookups of uids from 5000 up hang until opened;
    /// counts calls and how many ran at once.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
        now: AtomicUsize,
        most: AtomicUsize,
        calls: AtomicUsize,
    }

    struct Gated(Arc<Gate>);

    impl Directory for Gated {
        fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
            let g = &self.0;
            g.calls.fetch_add(1, Ordering::SeqCst);
            let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
            g.most.fetch_max(now, Ordering::SeqCst);
            if uid >= 5000 {
                let mut open = g.open.lock().unwrap();
                while !*open {
                    open = g.cv.wait(open).unwrap();
                }
            }
            g.now.fetch_sub(1, Ordering::SeqCst);
            Ok(Some(Identity {
                uid,
                name: format!("u{uid}"),
                groups: vec!["g".into()],
            }))
        }
        fn by_name(&self, _: &str) -> Result<Option<Identity>, LookupError> {
            Ok(None)
        }
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_hold_at_most_their_share_of_the_pool_and_root_never_waits_for_it() {
        let gate = Arc::new(Gate::default());
        let ids = Arc::new(Identities::new(Arc::new(Gated(gate.clone()))));
        // 12 users' requests whose lookups hang (a slow directory, or a user
        // in thousands of groups)
        let users: Vec<_> = (0..12)
            .map(|i| {
                let ids = ids.clone();
                tokio::spawn(async move { ids.by_uid_for(5000 + i, true, Behalf::User).await })
            })
            .collect();
        settle().await;
        assert_eq!(gate.now.load(Ordering::SeqCst), USER_LOOKUPS);
        // root's lookups (logins) go ahead meanwhile, as many as come
        for uid in 1001..1040 {
            let id = tokio::time::timeout(Duration::from_secs(2), ids.by_uid(uid, true))
                .await
                .expect("a root lookup waited for the users' ones")
                .unwrap();
            assert_eq!(id.uid, uid);
        }
        gate.open();
        for u in users {
            u.await.unwrap().unwrap();
        }
        assert!(gate.most.load(Ordering::SeqCst) <= USER_LOOKUPS + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_of_one_uid_under_way_are_shared() {
        let gate = Arc::new(Gate::default());
        let ids = Arc::new(Identities::new(Arc::new(Gated(gate.clone()))));
        let flood: Vec<_> = (0..50)
            .map(|_| {
                let ids = ids.clone();
                tokio::spawn(async move { ids.by_uid_for(5001, true, Behalf::User).await })
            })
            .collect();
        settle().await;
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
        // root's lookup of the same uid does not queue behind the user's
        let root = {
            let ids = ids.clone();
            tokio::spawn(async move { ids.by_uid(5001, true).await })
        };
        settle().await;
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
        gate.open();
        for f in flood {
            assert_eq!(f.await.unwrap().unwrap().uid, 5001);
        }
        root.await.unwrap().unwrap();
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn names_match_by_uid_name_or_digits() {
        let alice = Identity {
            uid: 1001,
            name: "alice".into(),
            groups: Vec::new(),
        };
        assert!(names(&UserRef::Uid(1001), &alice));
        assert!(names(&UserRef::Name("alice".into()), &alice));
        assert!(names(&UserRef::Name("1001".into()), &alice));
        assert!(!names(&UserRef::Uid(1002), &alice));
        assert!(!names(&UserRef::Name("bob".into()), &alice));
        assert!(!names(&UserRef::Name("01001x".into()), &alice));
    }
}
