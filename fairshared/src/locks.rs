//! One async lock per user, held across a change to that user (ledger
//! update and systemd call, in that order), so one user's requests are
//! serialised while different users' run side by side. Not held across the
//! save that follows (a slow disk must not hold up the user's next login),
//! nor while a login's process is moved into the user's slice, which comes
//! before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

/// Per-user locks. A user's lock exists while someone holds or waits for it.
#[derive(Default)]
pub struct UserLocks {
    locks: Mutex<HashMap<u32, Weak<tokio::sync::Mutex<()>>>>,
}

/// A user's lock, held: the change to them is ours until it drops.
pub type UserGuard = OwnedMutexGuard<()>;

impl UserLocks {
    /// Waits for `uid`'s lock.
    pub async fn lock(&self, uid: u32) -> UserGuard {
        self.mutex(uid).lock_owned().await
    }

    /// `uid`'s lock if nobody holds or waits for it now.
    pub fn try_lock(&self, uid: u32) -> Option<UserGuard> {
        self.mutex(uid).try_lock_owned().ok()
    }

    fn mutex(&self, uid: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = map.get(&uid).and_then(Weak::upgrade) {
            return m;
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let m = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(uid, Arc::downgrade(&m));
        m
    }
}

/// Per-user places for work that reaches systemd outside the user's lock
/// (moving a login's process into the slice): at most `n` of one user's at
/// once, so that one user's flood of sessions (a crontab of thousands of
/// lines, say) cannot take every place on the daemon's D-Bus connection
/// (`systemd::dbus::IN_FLIGHT`) from everyone else's logins.
pub struct UserSlots {
    n: usize,
    slots: Mutex<HashMap<u32, Weak<tokio::sync::Semaphore>>>,
}

impl UserSlots {
    pub fn new(n: usize) -> UserSlots {
        UserSlots {
            n,
            slots: Mutex::default(),
        }
    }

    /// Waits for one of `uid`'s places; it is free again when dropped.
    pub async fn acquire(&self, uid: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let s = {
            let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = map.get(&uid).and_then(Weak::upgrade) {
                s
            } else {
                if map.len() > 1024 {
                    map.retain(|_, w| w.strong_count() > 0);
                }
                let s = Arc::new(tokio::sync::Semaphore::new(self.n));
                map.insert(uid, Arc::downgrade(&s));
                s
            }
        };
        s.acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_users_places_run_out_for_them_alone() {
        let slots = UserSlots::new(2);
        let a = slots.acquire(1001).await;
        let b = slots.acquire(1001).await;
        assert!(a.is_some() && b.is_some());
        let third = tokio::time::timeout(Duration::from_millis(100), slots.acquire(1001)).await;
        assert!(third.is_err(), "a third place of the same user waits");
        let other = tokio::time::timeout(Duration::from_millis(100), slots.acquire(1002)).await;
        assert!(matches!(other, Ok(Some(_))), "another user goes ahead");
        drop(a);
        let again = tokio::time::timeout(Duration::from_millis(100), slots.acquire(1001)).await;
        assert!(matches!(again, Ok(Some(_))));
    }

    #[tokio::test]
    async fn one_user_waits_for_their_own_lock_only() {
        let locks = UserLocks::default();
        let held = locks.lock(1001).await;
        // another user goes ahead
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock(1002)).await;
        assert!(other.is_ok());
        // the same user waits
        let same = tokio::time::timeout(Duration::from_millis(100), locks.lock(1001)).await;
        assert!(same.is_err());
        drop(held);
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock(1001)).await;
        assert!(again.is_ok());
    }
}
