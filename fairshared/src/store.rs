//! The ledger in memory and its persister: the one owner of the ledger, the
//! state file and the save generation.
//!
//! The ledger sits behind a plain mutex that is only held for in-memory
//! updates, never across a D-Bus call or a disk write, so many users at once
//! never queue behind one slow call.
//!
//! Every change ([`Store::mutate`]) bumps a generation counter. A save
//! ([`Store::save`]) writes the ledger unless a save since the caller's
//! change already covered it, so concurrent requests share one write. A
//! request whose answer promises durability (a resize) awaits the save;
//! logins and logouts ask for one in the background ([`Store::save_later`]),
//! because their record can be rebuilt from logind if fairshared dies before
//! it lands, and the write (fsync, rename, fsync) would otherwise be the
//! largest part of a login. Background saves wait [`SAVE_DELAY`] and are
//! shared: one save covers every login and logout of that time (a short
//! session's open and close, a storm of logins), and none runs while the
//! login that asked for it is still in its PAM stack. Measured on the bench
//! VM, the two saves of an open and a close were about a third of the
//! daemon's CPU per login (fsync, rename: disk I/O that exits to the
//! hypervisor). What a crash can lose: the sessions opened and closed in
//! the last [`SAVE_DELAY`]; a restarted fairshared counts logind's sessions
//! again at start, and a session process it no longer knows of is counted
//! down by nobody, as before this delay for a crash before the write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ledger::Ledger;
use crate::state::StateFile;

/// How long a background save ([`Store::save_later`]) waits, so that the
/// logins and logouts of that time share one write.
pub const SAVE_DELAY: Duration = Duration::from_millis(250);

/// Why the ledger could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Writing the state file failed (the message names the file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The blocking task that writes it did not finish.
    #[error("saving state: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The ledger, and where and how far it is saved.
pub struct Store {
    ledger: Mutex<Ledger>,
    /// Bumped by every change.
    generation: AtomicU64,
    /// The generation last on disk; held while a save is written.
    saved: tokio::sync::Mutex<u64>,
    /// `None`: nothing is saved (tests, benchmarks without a state file).
    file: Option<StateFile>,
    /// A background save is waiting to run ([`Store::save_later`]).
    pending: AtomicBool,
}

impl Store {
    pub fn new(file: Option<StateFile>) -> Store {
        Store {
            ledger: Mutex::new(Ledger::new()),
            generation: AtomicU64::new(0),
            saved: tokio::sync::Mutex::new(0),
            file,
            pending: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the ledger.
    pub fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the ledger; the change is due for the next save.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        let mut l = self.lock();
        let r = f(&mut l);
        self.generation.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// Puts a whole ledger in place (a saved one, at start).
    pub fn replace(&self, ledger: Ledger) {
        self.mutate(|l| *l = ledger);
    }

    /// A copy of the ledger.
    pub fn snapshot(&self) -> Ledger {
        self.lock().clone()
    }

    /// Whether the ledger can be locked: part of the watchdog's check
    /// ([`crate::health`]). A daemon wedged on its own lock stops pinging,
    /// and systemd restarts it.
    pub async fn healthy(&self) -> bool {
        for _ in 0..20 {
            let busy = matches!(
                self.ledger.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            );
            if !busy {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Saves the ledger, unless a save since the last change already
    /// covered it. Failures are logged here.
    pub async fn save(&self) -> Result<(), SaveError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let wanted = self.generation.load(Ordering::SeqCst);
        let mut saved = self.saved.lock().await;
        if *saved >= wanted {
            return Ok(());
        }
        let (generation, bytes) = {
            let l = self.lock();
            (
                self.generation.load(Ordering::SeqCst),
                StateFile::encode(&l),
            )
        };
        let file = file.clone();
        let path = file.path().display().to_string();
        let write = move || {
            let bytes = bytes?;
            #[cfg(feature = "test-hooks")]
            crate::testhooks::slow_save();
            file.save(&bytes)
        };
        match tokio::task::spawn_blocking(write).await {
            Ok(Ok(())) => {
                *saved = generation;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(path = %path, error = %e, "could not save state");
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Saves in the background, [`SAVE_DELAY`] from now, together with
    /// every change made until then (for sessions, see the module's doc).
    /// Errors are logged by [`Store::save`]. A shutdown saves what is
    /// still waiting ([`Store::save`] from the daemon's flush).
    pub fn save_later(self: &Arc<Self>) {
        if self.file.is_none() || self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SAVE_DELAY).await;
            // changes from here on ask for a save of their own
            this.pending.store(false, Ordering::SeqCst);
            let _ = this.save().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Loaded;

    fn on_disk(dir: &std::path::Path) -> Option<Ledger> {
        match StateFile::open(dir).unwrap().load().unwrap() {
            Loaded::Ledger(l) => Some(l),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_save_covers_every_change_made_before_it_and_only_writes_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Some(StateFile::open(dir.path()).unwrap()));
        // nothing changed: nothing written
        store.save().await.unwrap();
        assert!(on_disk(dir.path()).is_none());
        let saved = Ledger::new();
        store.replace(saved.clone());
        store.save().await.unwrap();
        assert_eq!(on_disk(dir.path()), Some(saved));
        // already covered: the file is not written again
        std::fs::remove_file(dir.path().join("state.bin")).unwrap();
        store.save().await.unwrap();
        assert!(on_disk(dir.path()).is_none());
        store.mutate(|_| ());
        store.save().await.unwrap();
        assert!(on_disk(dir.path()).is_some());
        assert!(store.healthy().await);
    }

    /// Waits (tokio's paused clock, and real time for the blocking write)
    /// until the state file is there; false after about 5 s.
    async fn written(dir: &std::path::Path) -> bool {
        for _ in 0..500 {
            tokio::time::sleep(SAVE_DELAY).await;
            if on_disk(dir).is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn background_saves_wait_and_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(Some(StateFile::open(dir.path()).unwrap())));
        store.mutate(|_| ());
        store.save_later();
        store.mutate(|_| ());
        store.save_later();
        // not yet: the save waits for the logins of the next moments
        tokio::task::yield_now().await;
        assert!(on_disk(dir.path()).is_none());
        assert!(written(dir.path()).await);
        // the waiting save is done: the next change asks for a new one
        std::fs::remove_file(dir.path().join("state.bin")).unwrap();
        store.mutate(|_| ());
        store.save_later();
        assert!(written(dir.path()).await);
    }
}
