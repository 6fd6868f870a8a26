//! A table of background tasks, one per key, where a new task replaces (and
//! aborts) the one before: the session process watchers (by pid) and the
//! lease timers (by uid), and whatever else runs per user or per process.
//!
//! A task leaves the table when it finishes. A task never aborts itself: a
//! watcher whose work ends in cancelling its own key (a session counted down
//! by its own watcher) just leaves the table and goes on to the end.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::task::AbortHandle;

type Table<K> = Mutex<HashMap<K, AbortHandle>>;

/// Background tasks by key; see the module's doc.
pub struct Tasks<K> {
    table: Arc<Table<K>>,
}

impl<K> Default for Tasks<K> {
    fn default() -> Self {
        Tasks {
            table: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn lock<K>(t: &Table<K>) -> MutexGuard<'_, HashMap<K, AbortHandle>> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Eq + Hash + Copy + Send + 'static> Tasks<K> {
    /// Runs `task` in the background as the one task of `key`, aborting the
    /// task it replaces.
    pub fn spawn(&self, key: K, task: impl Future<Output = ()> + Send + 'static) {
        let table: Weak<Table<K>> = Arc::downgrade(&self.table);
        // Held across the spawn, so a task that finishes at once cannot look
        // for its entry before it is there.
        let mut map = lock(&self.table);
        let handle = tokio::spawn(async move {
            task.await;
            if let Some(table) = table.upgrade() {
                let mut map = lock(&table);
                if map.get(&key).is_some_and(|h| h.id() == tokio::task::id()) {
                    map.remove(&key);
                }
            }
        })
        .abort_handle();
        if let Some(old) = map.insert(key, handle) {
            old.abort();
        }
    }

    /// Stops the task of `key`, if any. Called from that task itself, it only
    /// takes it out of the table.
    pub fn cancel(&self, key: &K) {
        let removed = lock(&self.table).remove(key);
        if let Some(h) = removed
            && tokio::task::try_id() != Some(h.id())
        {
            h.abort();
        }
    }

    /// Lets the task of `key` run on by itself, out of the table: it is no
    /// longer replaced or cancelled through `key` (it must end on its own).
    pub fn detach(&self, key: &K) {
        lock(&self.table).remove(key);
    }

    /// Whether `key` has a task (running, or about to leave the table).
    pub fn contains(&self, key: &K) -> bool {
        lock(&self.table).contains_key(key)
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Drop for Tasks<K> {
    /// Their owner is gone: so is every task.
    fn drop(&mut self) {
        for (_, h) in lock(&self.table).drain() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_new_task_replaces_and_aborts_the_old_one() {
        let tasks = Tasks::default();
        let ran = Arc::new(AtomicUsize::new(0));
        for n in [1, 10] {
            let ran = ran.clone();
            tasks.spawn(7u32, async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ran.fetch_add(n, Ordering::SeqCst);
            });
        }
        assert_eq!(tasks.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 10, "only the second one ran");
        assert!(tasks.is_empty(), "a finished task leaves the table");
    }

    #[tokio::test]
    async fn cancel_aborts_others_but_never_the_caller() {
        let tasks = Arc::new(Tasks::default());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        tasks.spawn(1u32, async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            r.fetch_add(1, Ordering::SeqCst);
        });
        tasks.cancel(&1);
        assert!(!tasks.contains(&1));
        // a task that cancels its own key, then goes on
        let (t, r) = (Arc::downgrade(&tasks), ran.clone());
        tasks.spawn(2u32, async move {
            if let Some(t) = t.upgrade() {
                t.cancel(&2);
            }
            tokio::task::yield_now().await;
            r.fetch_add(10, Ordering::SeqCst);
        });
        settle().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 10);
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn a_finished_task_does_not_take_its_successor_out() {
        let tasks = Arc::new(Tasks::default());
        // A task that leaves the table and starts its own successor (a
        // session counted down, then a new one watched under the same key):
        // when it ends, the successor stays.
        let t = Arc::downgrade(&tasks);
        tasks.spawn(3u32, async move {
            if let Some(t) = t.upgrade() {
                t.cancel(&3);
                t.spawn(3, tokio::time::sleep(Duration::from_secs(60)));
            }
        });
        settle().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tasks.contains(&3));
    }

    #[tokio::test]
    async fn dropping_the_table_stops_its_tasks() {
        let ran = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::default();
        let r = ran.clone();
        tasks.spawn(1u32, async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.fetch_add(1, Ordering::SeqCst);
        });
        drop(tasks);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
