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
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(m) = map.get(&uid).and_then(Weak::upgrade) {
                m
            } else {
                if map.len() > 1024 {
                    map.retain(|_, w| w.strong_count() > 0);
                }
                let m = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(uid, Arc::downgrade(&m));
                m
            }
        };
        m.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
