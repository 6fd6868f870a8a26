//! Session processes watched for their end: one epoll set holding a pidfd
//! per watched process, driven by one task.
//!
//! A session is counted down when its process ends, even without a
//! `close_session` (a crashed sshd, `kill -9`). A task per session waiting
//! on its own pidfd would cost each session a tokio task and an I/O
//! registration (about 1 KB at 10 000 sessions, more than the session's own
//! record); here a session costs its pidfd and one map entry. The epoll set
//! is itself registered with tokio, so the one task sleeps until a process
//! ends.
//!
//! A watch is replaced by a later watch of the same pid and ended by
//! [`Exits::cancel`]; an ended process is taken out of the set before its
//! owner is told, so it is told once.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;

use crate::proc::Pidfd;

/// What is told when a watched process ends: its user's uid, its pid.
pub type OnExit = Arc<dyn Fn(u32, u32) + Send + Sync>;

/// Ended processes taken from the set per `epoll_wait`.
const BATCH: usize = 64;

/// How long the driver waits after a failure to wait.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The watched processes; see the module's doc.
#[derive(Default)]
pub struct Exits {
    /// Made at the first watch (it needs the runtime).
    driver: Mutex<Option<Running>>,
}

struct Running {
    driver: Arc<Driver>,
    task: AbortHandle,
}

struct Driver {
    epoll: AsyncFd<EpollFd>,
    watched: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    by_pid: HashMap<u32, Watch>,
    /// Told apart from an earlier watch of the same pid in the epoll data.
    next: u32,
}

struct Watch {
    uid: u32,
    generation: u32,
    fd: Pidfd,
}

/// The epoll set, as tokio registers it.
struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn token(pid: u32, generation: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(generation)
}

impl Exits {
    /// Watches `pid`, a session process of `uid`, through `fd`, its pidfd
    /// (replacing an earlier watch of the same pid); `None`: it is gone
    /// already, told at once. Who is told: `on_exit`'s, called when the
    /// driving task is started (at the first watch; every caller gives the
    /// same), on that task: it should only hand the work on. Must be
    /// called within the tokio runtime.
    pub fn watch(
        &self,
        uid: u32,
        pid: u32,
        fd: Option<Pidfd>,
        on_exit: impl FnOnce() -> OnExit,
    ) -> io::Result<()> {
        let Some(fd) = fd else {
            self.cancel(pid);
            on_exit()(uid, pid);
            return Ok(());
        };
        let driver = self.driver(on_exit)?;
        let mut w = lock(&driver.watched);
        let generation = w.next;
        w.next = w.next.wrapping_add(1);
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token(pid, generation));
        driver.epoll.get_ref().0.add(fd.as_fd(), event)?;
        let new = Watch {
            uid,
            generation,
            fd,
        };
        if let Some(old) = w.by_pid.insert(pid, new) {
            let _ = driver.epoll.get_ref().0.delete(old.fd.as_fd());
        }
        Ok(())
    }

    /// Stops watching `pid`, if it is watched.
    pub fn cancel(&self, pid: u32) {
        if let Some(r) = lock(&self.driver).as_ref() {
            let mut w = lock(&r.driver.watched);
            if let Some(old) = w.by_pid.remove(&pid) {
                let _ = r.driver.epoll.get_ref().0.delete(old.fd.as_fd());
            }
        }
    }

    /// Whether `pid` is watched.
    pub fn contains(&self, pid: u32) -> bool {
        lock(&self.driver)
            .as_ref()
            .is_some_and(|r| lock(&r.driver.watched).by_pid.contains_key(&pid))
    }

    /// How many processes are watched.
    pub fn len(&self) -> usize {
        lock(&self.driver)
            .as_ref()
            .map_or(0, |r| lock(&r.driver.watched).by_pid.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The driver, made and started if there is none yet (a failure to
    /// make it is tried again at the next watch). Its task never ends by
    /// itself: every watch stays with the one driver.
    fn driver(&self, on_exit: impl FnOnce() -> OnExit) -> io::Result<Arc<Driver>> {
        let mut running = lock(&self.driver);
        if let Some(r) = running.as_ref() {
            return Ok(r.driver.clone());
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // SAFETY: the AsyncFd owns the epoll set (an OwnedFd in `Epoll`),
        // which stays open and the same for as long as the AsyncFd lives.
        let epoll = unsafe { AsyncFd::register_with_interest(EpollFd(epoll), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let driver = Arc::new(Driver {
            epoll,
            watched: Mutex::new(Watched::default()),
        });
        let task = tokio::spawn(drive(driver.clone(), on_exit())).abort_handle();
        *running = Some(Running {
            driver: driver.clone(),
            task,
        });
        Ok(driver)
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.driver).take() {
            r.task.abort();
        }
    }
}

/// The one task: waits for the set to be readable, takes the ended
/// processes out and tells of each. It does not end (but with its owner):
/// a failure to wait, which nothing a user does can cause, is logged and
/// the wait tried again a second later, so no watch is ever dropped.
async fn drive(driver: Arc<Driver>, on_exit: OnExit) {
    let mut events = [EpollEvent::empty(); BATCH];
    loop {
        let failure = match driver.epoll.readable().await {
            Ok(mut ready) => match driver
                .epoll
                .get_ref()
                .0
                .wait(&mut events, EpollTimeout::ZERO)
            {
                Ok(0) => {
                    ready.clear_ready();
                    continue;
                }
                Ok(n) => {
                    drop(ready);
                    for (uid, pid) in driver.take(&events[..n]) {
                        on_exit(uid, pid);
                    }
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => io::Error::from(e),
            },
            Err(e) => e,
        };
        tracing::error!(error = %failure, "cannot wait for session processes to end; trying again in 1 s");
        tokio::time::sleep(RETRY).await;
    }
}

impl Driver {
    /// The processes these events say ended, out of the set (an event of a
    /// watch replaced or cancelled meanwhile is not theirs: left alone).
    fn take(&self, events: &[EpollEvent]) -> Vec<(u32, u32)> {
        let mut w = lock(&self.watched);
        let mut ended = Vec::with_capacity(events.len());
        for e in events {
            let (pid, generation) = ((e.data() >> 32) as u32, e.data() as u32);
            if w.by_pid
                .get(&pid)
                .is_some_and(|x| x.generation == generation)
                && let Some(x) = w.by_pid.remove(&pid)
            {
                let _ = self.epoll.get_ref().0.delete(x.fd.as_fd());
                ended.push((x.uid, pid));
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn sleeper() -> (Child, Pidfd) {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let fd = Pidfd::open(child.id()).unwrap();
        (child, fd)
    }

    /// Watches whose ends are sent on the channel.
    struct Told {
        exits: Exits,
        tx: mpsc::UnboundedSender<(u32, u32)>,
    }

    impl Told {
        fn watch(&self, uid: u32, pid: u32, fd: Option<Pidfd>) -> io::Result<()> {
            let tx = self.tx.clone();
            self.exits.watch(uid, pid, fd, move || {
                Arc::new(move |uid, pid| {
                    let _ = tx.send((uid, pid));
                })
            })
        }
    }

    impl std::ops::Deref for Told {
        type Target = Exits;
        fn deref(&self) -> &Exits {
            &self.exits
        }
    }

    fn exits() -> (Told, mpsc::UnboundedReceiver<(u32, u32)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let told = Told {
            exits: Exits::default(),
            tx,
        };
        (told, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(u32, u32)>) -> Option<(u32, u32)> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Whether nothing is told for `ms` milliseconds.
    async fn told_nothing(rx: &mut mpsc::UnboundedReceiver<(u32, u32)>, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), rx.recv())
            .await
            .is_err()
    }

    #[test]
    fn a_watched_process_costs_a_map_entry() {
        // what every tracked session costs the daemon while it waits
        // (besides its pidfd in the kernel): no task, no registration
        let size = std::mem::size_of::<(u32, Watch)>();
        assert!(size <= 16, "a watch is {size} bytes");
    }

    #[tokio::test]
    async fn an_ended_process_is_told_once_and_leaves_the_set() {
        let (exits, mut rx) = exits();
        let (mut a, fa) = sleeper();
        let (mut b, fb) = sleeper();
        exits.watch(1001, a.id(), Some(fa)).unwrap();
        exits.watch(1002, b.id(), Some(fb)).unwrap();
        assert_eq!(exits.len(), 2);
        a.kill().unwrap();
        a.wait().unwrap();
        assert_eq!(next(&mut rx).await, Some((1001, a.id())));
        assert!(!exits.contains(a.id()));
        assert!(exits.contains(b.id()), "the other one is still watched");
        // told once: nothing more until b ends
        assert!(told_nothing(&mut rx, 200).await);
        b.kill().unwrap();
        b.wait().unwrap();
        assert_eq!(next(&mut rx).await, Some((1002, b.id())));
        assert!(exits.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_watch_tells_nothing() {
        let (exits, mut rx) = exits();
        let (mut a, fa) = sleeper();
        exits.watch(1001, a.id(), Some(fa)).unwrap();
        exits.cancel(a.id());
        assert!(exits.is_empty());
        a.kill().unwrap();
        a.wait().unwrap();
        assert!(told_nothing(&mut rx, 300).await);
    }

    #[tokio::test]
    async fn a_later_watch_of_the_pid_replaces_the_earlier_one() {
        let (exits, mut rx) = exits();
        let (mut a, fa) = sleeper();
        let again = Pidfd::open(a.id()).unwrap();
        exits.watch(1001, a.id(), Some(fa)).unwrap();
        exits.watch(1005, a.id(), Some(again)).unwrap();
        assert_eq!(exits.len(), 1);
        a.kill().unwrap();
        a.wait().unwrap();
        assert_eq!(
            next(&mut rx).await,
            Some((1005, a.id())),
            "told once, as the later watch's"
        );
        assert!(told_nothing(&mut rx, 200).await);
    }

    #[tokio::test]
    async fn a_process_gone_already_is_told_at_once() {
        let (exits, mut rx) = exits();
        exits.watch(1001, 4242, None).unwrap();
        assert_eq!(next(&mut rx).await, Some((1001, 4242)));
        // and one that ended before it was watched is told too
        let (mut a, fa) = sleeper();
        a.kill().unwrap();
        a.wait().unwrap();
        exits.watch(1002, a.id(), Some(fa)).unwrap();
        assert_eq!(next(&mut rx).await, Some((1002, a.id())));
    }

    #[tokio::test]
    async fn many_ending_at_once_are_all_told() {
        let (exits, mut rx) = exits();
        let mut children = Vec::new();
        for uid in 0..(BATCH as u32 + 10) {
            let (c, fd) = sleeper();
            exits.watch(2000 + uid, c.id(), Some(fd)).unwrap();
            children.push(c);
        }
        for c in &mut children {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let mut told = Vec::new();
        while told.len() < children.len() {
            told.push(next(&mut rx).await.expect("every end is told"));
        }
        told.sort();
        let mut want: Vec<_> = children
            .iter()
            .zip(2000..)
            .map(|(c, uid)| (uid, c.id()))
            .collect();
        want.sort();
        assert_eq!(told, want);
        assert!(exits.is_empty());
    }
}
