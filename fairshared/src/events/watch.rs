//! A logged-in user's watcher, from their first session until their slice
//! goes, waiting on the slice's cgroup event files and reporting what it finds:
//! OOM kills caused by the slice's memory limit, and sustained throttling.
//!
//! [`Watchers`] keeps them: a user whose slice is there has a task of their
//! own (holding the slice's event files open); a user whose slice is not
//! there yet (a login whose `pam_systemd` has not started it, or a PAM stack
//! without one) is one entry in a list that a single task looks at every
//! [`SLICE_POLL`] for [`SLICE_WAIT`], so users without a slice cost a few
//! bytes each rather than a task.
//!
//! | wakes on | cgroup v2 | v1 (hybrid, legacy) |
//! |---|---|---|
//! | memory | `memory.events`, epoll `EPOLLPRI` (edge; re-armed by reading it) | an eventfd on `memory.oom_control` (`cgroup.event_control`) |
//! | CPU and memory stalls | PSI triggers on `cpu.pressure`, `memory.pressure` | a PSI trigger on the `unified` tree's `cpu.pressure` (hybrid) |
//! | the slice emptying | `cgroup.events`, epoll `EPOLLPRI` (`populated 0`) | (the eventfd fires at removal) |
//! | neither possible | a sample every [`FALLBACK_SAMPLE`] | the same |
//!
//! Nothing is polled in a loop while nothing happens: an idle user costs no
//! wake-ups at all. After a memory wake-up the watcher pauses
//! [`DEBOUNCE`] (page cache at the limit makes `memory.events` change
//! hundreds of times a second), except that on v2 the slice emptying ends
//! the pause: its counters are read then, before systemd removes the slice
//! and its counters with it (an `ssh host cmd` whose growth woke the
//! watcher, killed in the pause); a throttled slice is sampled every
//! [`throttle::SAMPLE_EVERY`] while it is hot. Kills that come within
//! [`GATHER`] of each other are one report. The decisions are the pure
//! parts' ([`oom`], [`throttle`]); see `docs/design/notices.md` for the
//! measurements behind them.
//!
//! The watcher ends itself when the slice goes away (v1: the eventfd fires
//! at removal; v2: a PSI fd reports it, or a file cannot be read any more;
//! at the latest, a look every [`LIVENESS`], or [`LIVENESS_WOKEN`] on v1).
//! A slice made anew at the same path is another slice (its inode differs):
//! a fresh login gets a watcher of its own at once, and the old one, left to
//! end by itself, reads no file of the new slice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use fairshare_proto::events::EventKind;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::counters::{
    self, CpuThrottling, MemoryEvents, PSI_STALL_US, PSI_WINDOW_US, Paths, Pressure,
};
use super::oom::{SliceOoms, V1Firing, V1SliceOoms};
use super::throttle::{self, Detector, Sample};
use crate::cgroup::Layout;
use crate::kernfs;
use crate::tasks::Tasks;

/// Kills this close together are reported as one.
pub const GATHER: Duration = Duration::from_secs(1);
/// While an OOM waits for its kill, the counters are read again this soon.
pub const REREAD: Duration = Duration::from_millis(300);
/// The pause after handling a memory wake-up.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// How often a watcher with nothing to do looks whether its slice is still
/// there (a removal that woke nothing).
pub const LIVENESS: Duration = Duration::from_secs(60);
/// The same, for a watcher its slice's removal wakes (v1's eventfd).
pub const LIVENESS_WOKEN: Duration = Duration::from_secs(600);
/// How often a slice is sampled when nothing can wake the watcher (no PSI,
/// or no poll support on the event files).
pub const FALLBACK_SAMPLE: Duration = Duration::from_secs(30);
/// How long a new watcher waits for its user's slice to appear.
pub const SLICE_WAIT: Duration = Duration::from_secs(30);
/// How often users waiting for their slice are looked at.
pub const SLICE_POLL: Duration = Duration::from_millis(500);

/// What a watcher reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Processes killed because the slice reached its memory limit.
    OomKills {
        count: u64,
        /// The slice's cgroup (its inode), to tell one slice from the next.
        slice: u64,
    },
    /// The slice was held back for most of the last window.
    Throttled {
        kind: EventKind,
        percent: u8,
        window_secs: u32,
    },
}

/// Why a watcher ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The slice was not there.
    NoSlice,
    /// The slice went away.
    SliceGone,
}

/// The directory whose existence says the slice is there (and whose inode
/// names it).
pub fn slice_dir(paths: &Paths) -> Option<PathBuf> {
    match paths.layout {
        Layout::Unified => paths
            .memory_events
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf),
        Layout::Hybrid | Layout::Legacy => paths.v1_memory.clone(),
    }
}

/// [`slice_dir`] of `uid`'s [`Paths::for_user`], without making them.
pub fn slice_dir_of(root: &Path, layout: Layout, uid: u32) -> PathBuf {
    let rel = format!("user.slice/user-{uid}.slice");
    match layout {
        Layout::Unified => root.join(rel),
        Layout::Hybrid | Layout::Legacy => root.join("memory").join(rel),
    }
}

/// The inode of a slice's directory (`None`: not there).
pub fn slice_inode(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The inode of the slice's cgroup directory (`None`: not there).
pub fn slice_id(paths: &Paths) -> Option<u64> {
    slice_inode(&slice_dir(paths)?)
}

/// A user's watcher task, ready to run.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How to watch a user's slice: where it is, and its watcher.
#[derive(Clone)]
pub struct Start {
    /// The inode of `uid`'s slice (`None`: not there).
    pub slice: Arc<dyn Fn(u32) -> Option<u64> + Send + Sync>,
    /// The watcher of `uid`'s slice, its inode given; `fresh` as for
    /// [`watch`].
    pub task: Arc<dyn Fn(u32, u64, bool) -> Task + Send + Sync>,
}

/// Every user's watcher; see the module's doc.
#[derive(Default)]
pub struct Watchers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Users whose slice is there: a task each.
    running: Tasks<u32>,
    /// The inode of the slice each running watcher watches.
    slices: Mutex<HashMap<u32, u64>>,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Users whose slice is not there yet, until when it is waited for.
    users: HashMap<u32, Instant>,
    /// How to start their watchers (the last one given: every caller gives
    /// the same).
    start: Option<Start>,
    /// Whether the task that looks at them runs.
    polling: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Runs `task`, the watcher of `uid`'s slice `ino`, unless that very
    /// slice is watched already. A watcher of another slice (gone, or on
    /// its way out: a slice made anew at the same path) is left to end by
    /// itself: it may still be gathering a kill of its own slice.
    fn launch(self: &Arc<Self>, uid: u32, ino: u64, task: Task) {
        let mut slices = lock(&self.slices);
        if self.running.contains(&uid) {
            if slices.get(&uid) == Some(&ino) {
                return;
            }
            self.running.detach(&uid);
        }
        slices.insert(uid, ino);
        let inner = Arc::downgrade(self);
        self.running.spawn(uid, async move {
            task.await;
            if let Some(inner) = inner.upgrade() {
                let mut slices = lock(&inner.slices);
                if slices.get(&uid) == Some(&ino) {
                    slices.remove(&uid);
                }
            }
        });
    }
}

impl Watchers {
    /// Watches `uid`'s slice (nothing if that very slice is watched
    /// already): at once if it is there, else as soon as it appears within
    /// [`SLICE_WAIT`].
    ///
    /// `fresh`: the user had no session before this login, so their slice
    /// came with it. Two more slices are known to be new: one that was not
    /// there when looked for (its counts all came after), and one other
    /// than the slice a running watcher is on (made anew at the path since
    /// that one was watched: logind removes a slice at logout unless
    /// `UserStopDelaySec` keeps it, and on cgroup v2 nothing wakes a
    /// watcher at the removal). Either gets a watcher of its own at once,
    /// whoever counted the login first (see [`Inner::launch`]).
    pub fn start(&self, uid: u32, start: Start, fresh: bool) {
        if lock(&self.inner.waiting).users.contains_key(&uid) {
            return;
        }
        if let Some(ino) = (start.slice)(uid) {
            let watched = lock(&self.inner.slices).get(&uid).copied();
            if watched == Some(ino) {
                return;
            }
            let fresh = fresh || watched.is_some();
            self.inner.launch(uid, ino, (start.task)(uid, ino, fresh));
            return;
        }
        let mut w = lock(&self.inner.waiting);
        w.users.insert(uid, Instant::now() + SLICE_WAIT);
        w.start = Some(start);
        if !w.polling {
            w.polling = true;
            tokio::spawn(poll(Arc::downgrade(&self.inner)));
        }
    }

    /// Stops watching `uid` (their watcher ends, or they wait no more).
    pub fn cancel(&self, uid: &u32) {
        lock(&self.inner.waiting).users.remove(uid);
        lock(&self.inner.slices).remove(uid);
        self.inner.running.cancel(uid);
    }

    /// `uid`'s last session closed: they wait for their slice no more. A
    /// watcher already running goes on until the slice goes: a kill as the
    /// session ends (an `ssh host cmd` whose process hit the limit) is still
    /// being gathered, and processes left running in the slice can still
    /// be killed.
    pub fn stop_waiting(&self, uid: &u32) {
        lock(&self.inner.waiting).users.remove(uid);
    }

    /// Whether `uid` is watched (or waited for).
    pub fn contains(&self, uid: &u32) -> bool {
        self.inner.running.contains(uid) || lock(&self.inner.waiting).users.contains_key(uid)
    }

    /// Users watched (or waited for).
    pub fn len(&self) -> usize {
        self.inner.running.len() + lock(&self.inner.waiting).users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The one task that looks for the slices of users waiting for theirs;
/// ends when nobody waits.
async fn poll(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(SLICE_POLL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (users, start) = {
            let mut w = lock(&inner.waiting);
            let Some(start) = w.start.clone().filter(|_| !w.users.is_empty()) else {
                w.polling = false;
                w.start = None;
                return;
            };
            let users: Vec<(u32, Instant)> = w.users.iter().map(|(u, t)| (*u, *t)).collect();
            (users, start)
        };
        let now = Instant::now();
        for (uid, until) in users {
            // the slice looked for outside the lock
            let ino = (start.slice)(uid);
            let mut w = lock(&inner.waiting);
            // stopped (or started again) meanwhile
            if w.users.get(&uid) != Some(&until) {
                continue;
            }
            match ino {
                // not there when first looked for: all it counted is news
                Some(ino) => {
                    w.users.remove(&uid);
                    drop(w);
                    inner.launch(uid, ino, (start.task)(uid, ino, true));
                }
                None if now >= until => {
                    w.users.remove(&uid);
                    tracing::debug!(uid, "no slice to watch for events");
                }
                None => {}
            }
        }
    }
}

/// Watches `paths` until the slice goes away, calling `report` with what it
/// finds. Cancel the task to stop it earlier. A slice that is not there
/// ends it at once ([`Watchers`] waits for slices).
///
/// `fresh`: the slice came with this login (the user had no session), so
/// kills already counted in it happened in this login, before the watcher
/// was set up (an `ssh host cmd` that hits the limit at once): they are
/// reported first. Otherwise what the counters hold is old news.
///
/// `slice`: the inode of the slice's directory (from [`slice_inode`]); a
/// slice at that path with another inode is not this one.
pub async fn watch<F, Fut>(paths: Paths, slice: u64, fresh: bool, report: F) -> End
where
    F: Fn(Found) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(dir) = slice_dir(&paths) else {
        return End::NoSlice;
    };
    if slice_inode(&dir) != Some(slice) {
        return End::NoSlice;
    }
    // Off the async workers: the first PSI trigger on a cgroup starts a
    // kernel thread for it (milliseconds), and a wave of logins opens many.
    let mut w =
        match tokio::task::spawn_blocking(move || Watcher::open(paths, dir, slice, fresh)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "could not set up an event watcher");
                return End::NoSlice;
            }
        };
    if w.early_kills > 0 {
        let count = std::mem::take(&mut w.early_kills);
        report(Found::OomKills {
            count,
            slice: w.slice,
        })
        .await;
    }
    w.run(&report).await
}

/// A PSI trigger (or any kernfs file) the watcher waits on.
type Pollable = AsyncFd<File>;

enum MemoryWake {
    /// v2: `memory.events`, kept open.
    Events(Pollable),
    /// v1: the eventfd, and the `memory.oom_control` it was registered for
    /// (kept open while the registration lasts).
    EventFd(AsyncFd<OwnedFd>, #[allow(dead_code)] File),
    /// Nothing wakes the watcher: counters are read at each sample.
    None,
}

struct Watcher {
    paths: Paths,
    dir: PathBuf,
    slice: u64,
    memory: MemoryWake,
    psi_cpu: Option<Pollable>,
    psi_memory: Option<Pollable>,
    /// v2: the slice's `cgroup.events`, which wakes when its last process
    /// exits (`populated 0`), before systemd removes it.
    emptied: Option<Pollable>,
    v2: Option<SliceOoms>,
    v1: V1SliceOoms,
    /// Kills in a fresh slice before the watcher was set up.
    early_kills: u64,
    cpu: Detector,
    stall: Option<Detector>,
}

/// Registers an open kernfs file for `EPOLLPRI` (kernfs files and PSI
/// triggers support poll; a regular file does not, and is refused).
fn pollable(file: File) -> io::Result<Pollable> {
    // SAFETY: the AsyncFd owns the File, whose fd stays open and the same
    // for as long as the AsyncFd lives.
    unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }
        .map_err(|e| e.into_parts().1)
}

/// Opens a PSI trigger on `path`: wake when the slice's tasks were stalled
/// 1 s out of 10 s.
fn psi_trigger(path: &Path) -> io::Result<Pollable> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    // The kernel overwrites the last byte written with a NUL: send one.
    let mut trigger = counters::psi_trigger(PSI_STALL_US, PSI_WINDOW_US).into_bytes();
    trigger.push(0);
    f.write_all(&trigger)?;
    pollable(f)
}

/// An eventfd registered for OOM notifications of the v1 memory cgroup `dir`.
fn oom_eventfd(dir: &Path) -> io::Result<(AsyncFd<OwnedFd>, File)> {
    let control = File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd takes a count and flags and returns a new fd or -1.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let efd = unsafe { OwnedFd::from_raw_fd(raw) };
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?
        .write_all(format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()).as_bytes())?;
    // SAFETY: the AsyncFd owns the OwnedFd, open for as long as it lives.
    let afd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok((afd, control))
}

/// Reads an open kernfs file again from its start (which also re-arms its
/// poll notification).
fn reread(f: &File) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = f.read_at(&mut buf, 0).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

/// Waits for a pollable file to wake; `true` when it reports an error or a
/// hang-up (its cgroup may be gone). Never resolves for `None`.
async fn woken(fd: Option<&Pollable>) -> bool {
    let Some(fd) = fd else {
        return std::future::pending().await;
    };
    match fd.ready(Interest::PRIORITY).await {
        Ok(mut guard) => {
            let r = guard.ready();
            guard.clear_ready();
            r.is_error() || r.is_read_closed()
        }
        Err(_) => true,
    }
}

impl Drop for Watcher {
    /// Closes the PSI triggers on the blocking pool: closing one waits for
    /// an RCU grace period (and stops the cgroup's kernel thread with its
    /// last trigger), milliseconds each, which must not hold up the async
    /// workers when a wave of logouts ends many watchers at once.
    fn drop(&mut self) {
        let files: Vec<File> = [self.psi_cpu.take(), self.psi_memory.take()]
            .into_iter()
            .flatten()
            .map(AsyncFd::into_inner)
            .collect();
        if files.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || drop(files));
            }
            Err(_) => drop(files),
        }
    }
}

impl Watcher {
    fn open(paths: Paths, dir: PathBuf, slice: u64, fresh: bool) -> Watcher {
        let memory = match paths.layout {
            Layout::Unified => paths
                .memory_events
                .as_ref()
                .and_then(|p| File::open(p).ok())
                .and_then(|f| pollable(f).ok())
                .map_or(MemoryWake::None, MemoryWake::Events),
            Layout::Hybrid | Layout::Legacy => match oom_eventfd(&dir) {
                Ok((afd, control)) => MemoryWake::EventFd(afd, control),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "no OOM eventfd; sampling instead");
                    MemoryWake::None
                }
            },
        };
        let trigger = |p: &Option<PathBuf>| {
            p.as_deref().and_then(|p| match psi_trigger(p) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::debug!(path = %p.display(), error = %e, "no PSI trigger; sampling instead");
                    None
                }
            })
        };
        let psi_cpu = trigger(&paths.cpu_pressure);
        let psi_memory = trigger(&paths.memory_pressure);
        let emptied = match paths.layout {
            Layout::Unified => File::open(dir.join("cgroup.events"))
                .ok()
                .and_then(|f| pollable(f).ok()),
            Layout::Hybrid | Layout::Legacy => None,
        };
        let mut w = Watcher {
            v2: None,
            v1: V1SliceOoms::new(None),
            early_kills: 0,
            cpu: Detector::new(throttle::CPU),
            stall: paths
                .memory_pressure
                .as_ref()
                .map(|_| Detector::new(throttle::MEMORY)),
            paths,
            dir,
            slice,
            memory,
            psi_cpu,
            psi_memory,
            emptied,
        };
        match w.paths.layout {
            Layout::Unified => {
                let (sub, local) = w.memory_events().unwrap_or_default();
                w.v2 = Some(match fresh {
                    // from zero: what the slice counted is this login's
                    true => {
                        let mut o =
                            SliceOoms::new(MemoryEvents::default(), MemoryEvents::default());
                        w.early_kills = o.update(sub, local, std::time::Instant::now());
                        o
                    }
                    false => SliceOoms::new(sub, local),
                });
            }
            Layout::Hybrid | Layout::Legacy => {
                w.v1 = V1SliceOoms::new(w.failcnt());
                let counted = Watcher::v1_kill_count(&w.dir);
                if fresh {
                    w.early_kills = counted
                        .as_ref()
                        .map_or(0, |c| c.values().fold(0u64, |a, n| a.saturating_add(*n)));
                }
                w.v1.counted(counted);
            }
        }
        // the first sample, at login
        w.sample();
        w
    }

    /// v2: the subtree and local memory events (zeros where the local ones
    /// are unreadable); `None` when the slice's own counters could not be
    /// read (it is gone).
    fn memory_events(&self) -> Option<(MemoryEvents, MemoryEvents)> {
        let sub = match &self.memory {
            MemoryWake::Events(fd) => reread(fd.get_ref())?,
            // read by path: from this slice, not one made anew at it since
            _ => {
                let text = self.paths.memory_events.as_deref().and_then(kernfs::read)?;
                if self.gone() {
                    return None;
                }
                text
            }
        };
        let local = self
            .paths
            .memory_events_local
            .as_deref()
            .and_then(kernfs::read);
        Some((
            MemoryEvents::parse(&sub),
            MemoryEvents::parse(local.as_deref().unwrap_or("")),
        ))
    }

    /// v1: `memory.failcnt` of the slice (`None`: gone).
    fn failcnt(&self) -> Option<u64> {
        let n = kernfs::read_u64(&self.dir.join("memory.failcnt"));
        // read from this slice, not one made anew at its path since
        n.filter(|_| !self.gone())
    }

    /// Whether the slice is gone (a slice at its path now is another one).
    fn gone(&self) -> bool {
        slice_inode(&self.dir) != Some(self.slice)
    }

    /// Whether the slice's removal wakes this watcher by itself.
    fn removal_wakes(&self) -> bool {
        matches!(self.memory, MemoryWake::EventFd(..))
    }

    /// Samples the throttling counters; a finding to report, if any.
    fn sample(&mut self) -> Vec<Found> {
        let now = Instant::now().into_std();
        let mut out = Vec::new();
        let stat = self
            .paths
            .cpu_stat
            .iter()
            .find_map(|p| kernfs::read(p))
            .as_deref()
            .and_then(CpuThrottling::parse);
        if let Some(t) = stat {
            let period = self
                .paths
                .cpu_period
                .iter()
                .find_map(|p| kernfs::read(p))
                .as_deref()
                .and_then(counters::cpu_period_us)
                .unwrap_or(counters::DEFAULT_CPU_PERIOD_US);
            if let Some(f) = self.cpu.push(Sample::cpu(now, t.throttled, period)) {
                out.push(Found::Throttled {
                    kind: EventKind::CpuThrottled,
                    percent: f.percent(),
                    window_secs: f.window.as_secs() as u32,
                });
            }
        }
        if let Some(det) = self.stall.as_mut() {
            let pressure = self
                .paths
                .memory_pressure
                .as_deref()
                .and_then(kernfs::read)
                .as_deref()
                .and_then(Pressure::parse);
            let high = self
                .paths
                .memory_events_local
                .as_deref()
                .and_then(kernfs::read)
                .map(|t| MemoryEvents::parse(&t).high);
            if let (Some(p), Some(h)) = (pressure, high)
                && let Some(f) = det.push(Sample::memory(now, p.some_us, h))
            {
                out.push(Found::Throttled {
                    kind: EventKind::MemoryStall,
                    percent: f.percent(),
                    window_secs: f.window.as_secs() as u32,
                });
            }
        }
        out
    }

    /// When to sample next without a wake-up: soon while something is
    /// going on, now and then when nothing can wake the watcher, else never.
    fn next_sample(&self) -> Option<Instant> {
        let hot = self.cpu.hot() || self.stall.as_ref().is_some_and(Detector::hot);
        let blind = self.psi_cpu.is_none()
            || matches!(self.memory, MemoryWake::None)
            || (self.stall.is_some() && self.psi_memory.is_none());
        if hot {
            Some(Instant::now() + throttle::SAMPLE_EVERY)
        } else if blind {
            Some(Instant::now() + FALLBACK_SAMPLE)
        } else {
            None
        }
    }

    /// v2: reads the memory events until the OOMs they show have their
    /// kills (or waited long enough); the kills of the slice's own OOMs,
    /// gathered over [`GATHER`].
    async fn v2_kills(&mut self) -> u64 {
        let mut kills = 0;
        let mut gather_until: Option<Instant> = None;
        loop {
            // nothing from a slice removed meanwhile: its zeros would
            // restart the count (and an OOM waiting for its kill with it)
            let read = self.memory_events();
            let now = Instant::now();
            if let (Some(o), Some((sub, local))) = (self.v2.as_mut(), read) {
                kills += o.update(sub, local, now.into_std());
            }
            if kills > 0 && gather_until.is_none() {
                gather_until = Some(now + GATHER);
            }
            let waiting = self.v2.as_ref().is_some_and(SliceOoms::waiting);
            let gathering = gather_until.is_some_and(|t| now < t);
            // gone (a slice made anew at the path is not this one's to
            // read on): what was counted is all there is
            if (!waiting && !gathering) || self.gone() {
                return kills;
            }
            // read again soon, or at once when the slice empties (systemd
            // is about to remove it, counters and all)
            tokio::select! {
                _ = tokio::time::sleep(REREAD) => {}
                problem = woken(self.emptied.as_ref()) => self.rearm_emptied(problem),
            }
        }
    }

    /// v1: the eventfd fired `count` times; the kills at the slice's own
    /// limit, gathered over [`GATHER`], or `None` when the slice is gone.
    async fn v1_kills(&mut self, count: u64) -> Option<u64> {
        let mut fired = match self.v1.fired(count, self.failcnt()) {
            V1Firing::Kills(n) => n,
            V1Firing::Ancestor => return Some(0),
            V1Firing::Removed => return None,
        };
        // The kernel counts a kill in the victim's own cgroup, which may go
        // soon after (an `ssh host cmd` session's scope): the counts are
        // read every tenth of the gathering, each cgroup's highest kept.
        let until = Instant::now() + GATHER;
        let mut peak = crate::events::oom::Counts::new();
        let mut last = None;
        loop {
            // a walk of the slice's cgroups: off the async workers
            let dir = self.dir.clone();
            let read = tokio::task::spawn_blocking(move || Watcher::v1_kill_count(&dir))
                .await
                .ok()
                .flatten();
            // a slice made anew at the path is not counted as this one's
            if self.gone() {
                break;
            }
            if let Some(c) = read {
                for (ino, n) in &c {
                    let p = peak.entry(*ino).or_insert(0);
                    *p = (*p).max(*n);
                }
                last = Some(c);
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(GATHER / 10).await;
        }
        if let Some(more) = self.read_eventfd() {
            match self.v1.fired(more, self.failcnt()) {
                V1Firing::Kills(n) => fired += n,
                V1Firing::Ancestor => {}
                // report what was found; the next wait sees the removal
                V1Firing::Removed => {}
            }
        }
        let counts = last.map(|now| (peak, now));
        Some(self.v1.burst_kills(fired, counts))
    }

    /// v1: the kernel's count of kills in the slice and every cgroup below
    /// it (a kill counts in the victim's own cgroup).
    fn v1_kill_count(dir: &Path) -> Option<crate::events::oom::Counts> {
        crate::cgroup::counts_below(dir, "memory.oom_control", "oom_kill")
    }

    /// The eventfd's count, if it fired (resets it).
    fn read_eventfd(&self) -> Option<u64> {
        let MemoryWake::EventFd(afd, _) = &self.memory else {
            return None;
        };
        let mut buf = [0u8; 8];
        match nix::unistd::read(afd.get_ref(), &mut buf) {
            Ok(8) => Some(u64::from_ne_bytes(buf)),
            _ => None,
        }
    }

    /// Waits for the memory wake-up; `Some(count)` for the v1 eventfd's
    /// count (1 for a v2 wake), `None` if it reports an error.
    async fn memory_woken(&self) -> Option<u64> {
        match &self.memory {
            MemoryWake::None => std::future::pending().await,
            MemoryWake::Events(fd) => (!woken(Some(fd)).await).then_some(1),
            MemoryWake::EventFd(afd, _) => loop {
                let Ok(mut guard) = afd.readable().await else {
                    return None;
                };
                let mut buf = [0u8; 8];
                match nix::unistd::read(afd.get_ref(), &mut buf) {
                    Ok(8) => return Some(u64::from_ne_bytes(buf)),
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    _ => return None,
                }
            },
        }
    }

    /// v2: `cgroup.events` woke: read it again (which re-arms it), or stop
    /// waiting on it if it reported an error (its cgroup is gone).
    fn rearm_emptied(&mut self, problem: bool) {
        match &self.emptied {
            Some(f) if !problem => {
                reread(f.get_ref());
            }
            _ => self.emptied = None,
        }
    }

    /// v2: `cgroup.events` woke (the slice emptied, most likely, and
    /// systemd is about to remove it): the kills counted so far, read now
    /// while the counters are still there.
    async fn on_emptied(&mut self, problem: bool) -> Option<Found> {
        self.rearm_emptied(problem);
        if self.gone() {
            return None;
        }
        let count = self.v2_kills().await;
        (count > 0).then_some(Found::OomKills {
            count,
            slice: self.slice,
        })
    }

    async fn run<F, Fut>(&mut self, report: &F) -> End
    where
        F: Fn(Found) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut next = self.next_sample();
        loop {
            let mut found = Vec::new();
            // the slice went while a wake-up was handled: report, then end
            let mut ended = false;
            tokio::select! {
                count = self.memory_woken() => {
                    let kills = match (&self.memory, count) {
                        (MemoryWake::EventFd(..), Some(c)) => match self.v1_kills(c).await {
                            Some(k) => k,
                            None => return End::SliceGone,
                        },
                        (MemoryWake::EventFd(..), None) => return End::SliceGone,
                        (_, _) => {
                            if self.gone() {
                                return End::SliceGone;
                            }
                            self.v2_kills().await
                        }
                    };
                    if kills > 0 {
                        report(Found::OomKills { count: kills, slice: self.slice }).await;
                    }
                    // The slice may have gone during the gathering (an `ssh
                    // host cmd` killed, its session the last): the v1 eventfd
                    // fired for the removal then, and that firing was read
                    // with the burst's, so no wake-up is left to tell.
                    if self.gone() {
                        return End::SliceGone;
                    }
                    // A pause, except for the slice emptying: a kill in the
                    // pause (the hog whose growth woke this) is read before
                    // systemd removes the slice, which takes its counters.
                    tokio::select! {
                        _ = tokio::time::sleep(DEBOUNCE) => {}
                        problem = woken(self.emptied.as_ref()) => {
                            found.extend(self.on_emptied(problem).await);
                            ended = self.gone();
                        }
                    }
                }
                problem = woken(self.emptied.as_ref()) => {
                    found.extend(self.on_emptied(problem).await);
                    ended = self.gone();
                }
                problem = woken(self.psi_cpu.as_ref()) => {
                    if self.gone() {
                        return End::SliceGone;
                    }
                    if problem {
                        self.psi_cpu = None;
                    }
                    found = self.sample();
                }
                problem = woken(self.psi_memory.as_ref()) => {
                    if self.gone() {
                        return End::SliceGone;
                    }
                    if problem {
                        self.psi_memory = None;
                    }
                    found = self.sample();
                }
                // a removal that woke nothing (a slice without PSI, say);
                // v1's eventfd is signalled when its cgroup is removed
                // (the kernel's memcg_event_remove): a rare look there, for
                // a slice made anew while the eventfd was being registered
                // (100 idle watchers' looks each minute cost 5 ms a minute)
                _ = tokio::time::sleep(match self.removal_wakes() {
                    true => LIVENESS_WOKEN,
                    false => LIVENESS,
                }), if next.is_none() => {
                    if self.gone() {
                        return End::SliceGone;
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    if self.gone() {
                        return End::SliceGone;
                    }
                    if matches!(self.memory, MemoryWake::None) {
                        match self.paths.layout {
                            Layout::Unified => {
                                let kills = self.v2_kills().await;
                                if kills > 0 {
                                    found.push(Found::OomKills { count: kills, slice: self.slice });
                                }
                            }
                            // v1 without the eventfd cannot tell a kill
                            // (failcnt moves at the limit, kill or not)
                            Layout::Hybrid | Layout::Legacy => {}
                        }
                    }
                    found.extend(self.sample());
                }
            }
            for f in found {
                report(f).await;
            }
            if ended {
                return End::SliceGone;
            }
            next = self.next_sample();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Layout;
    use std::sync::{Arc, Mutex};

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const SLICE: &str = "user.slice/user-1001.slice";

    fn v2_files(root: &Path, throttled: u64, oom: u64, kills: u64) {
        write(
            root,
            &format!("{SLICE}/cpu.stat"),
            &format!("usage_usec 1\nnr_periods {throttled}\nnr_throttled {throttled}\n"),
        );
        write(root, &format!("{SLICE}/cpu.max"), "50000 100000\n");
        write(
            root,
            &format!("{SLICE}/memory.events"),
            &format!("low 0\nhigh 0\nmax 0\noom {oom}\noom_kill {kills}\n"),
        );
        write(
            root,
            &format!("{SLICE}/memory.events.local"),
            &format!("low 0\nhigh 0\nmax 0\noom {oom}\noom_kill 0\n"),
        );
    }

    /// Plain files cannot be polled or carry PSI triggers: the watcher falls
    /// back to sampling, and the same decisions come out of it.
    #[tokio::test(start_paused = true)]
    async fn a_slice_that_cannot_be_polled_is_sampled() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        v2_files(&root, 0, 0, 0);
        let paths = Paths::for_user(&root, Layout::Unified, 1001);
        let seen: Arc<Mutex<Vec<Found>>> = Arc::default();
        let s = seen.clone();
        let ino = slice_id(&paths).unwrap();
        let task = tokio::spawn(watch(paths.clone(), ino, false, move |f| {
            let s = s.clone();
            async move { s.lock().unwrap().push(f) }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // an OOM at the slice's limit and its kill
        v2_files(&root, 0, 1, 1);
        tokio::time::sleep(FALLBACK_SAMPLE + Duration::from_secs(2)).await;
        let id = slice_id(&paths).unwrap();
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [Found::OomKills {
                count: 1,
                slice: id
            }]
        );
        // held at the quota: every 100 ms period throttled from now on
        let mut throttled = 0;
        for _ in 0..30 {
            throttled += 100; // 10 s of periods
            v2_files(&root, throttled, 1, 1);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let got = seen.lock().unwrap().clone();
        let throttles: Vec<&Found> = got
            .iter()
            .filter(|f| matches!(f, Found::Throttled { .. }))
            .collect();
        assert_eq!(
            throttles.len(),
            1,
            "one finding for the whole burst: {got:?}"
        );
        assert!(matches!(
            throttles[0],
            Found::Throttled { kind: EventKind::CpuThrottled, percent, window_secs: 60 } if *percent >= 50
        ));
        // the slice goes and another is made at its path (a new login):
        // this watcher ends, and read nothing of the new one
        let next = t.path().join("next");
        std::fs::create_dir(&next).unwrap();
        std::fs::remove_dir_all(root.join(SLICE)).unwrap();
        std::fs::rename(&next, root.join(SLICE)).unwrap();
        v2_files(&root, 0, 5, 5);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(task.is_finished());
        assert_eq!(task.await.unwrap(), End::SliceGone);
        assert_eq!(
            seen.lock()
                .unwrap()
                .iter()
                .filter(|f| matches!(f, Found::OomKills { .. }))
                .count(),
            1,
            "the new slice's kills are not this watcher's"
        );
    }

    /// A kill before the watcher was set up (an `ssh host cmd` that hits the
    /// limit at once, in a slice made for that login) is reported first; in
    /// a slice that was there before, the counts are old news.
    #[tokio::test(start_paused = true)]
    async fn kills_in_a_fresh_slice_before_the_watcher_count() {
        for layout in [Layout::Unified, Layout::Hybrid] {
            for fresh in [true, false] {
                let t = tempfile::tempdir().unwrap();
                let root = t.path().to_path_buf();
                match layout {
                    Layout::Unified => v2_files(&root, 0, 1, 1),
                    _ => {
                        // v1: the kill counted in the session's scope
                        write(
                            &root,
                            &format!("memory/{SLICE}/memory.oom_control"),
                            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                        );
                        write(&root, &format!("memory/{SLICE}/memory.failcnt"), "3\n");
                        write(
                            &root,
                            &format!("memory/{SLICE}/session-4.scope/memory.oom_control"),
                            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                        );
                    }
                }
                let paths = Paths::for_user(&root, layout, 1001);
                let seen: Arc<Mutex<Vec<Found>>> = Arc::default();
                let s = seen.clone();
                let ino = slice_id(&paths).unwrap();
                let task = tokio::spawn(watch(paths.clone(), ino, fresh, move |f| {
                    let s = s.clone();
                    async move { s.lock().unwrap().push(f) }
                }));
                tokio::time::sleep(Duration::from_secs(1)).await;
                let kills: Vec<u64> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|f| match f {
                        Found::OomKills { count, .. } => Some(*count),
                        _ => None,
                    })
                    .collect();
                let want: &[u64] = if fresh { &[1] } else { &[] };
                assert_eq!(kills, want, "{layout:?}, fresh {fresh}");
                task.abort();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_slice_no_watcher() {
        let t = tempfile::tempdir().unwrap();
        let paths = Paths::for_user(t.path(), Layout::Unified, 1001);
        let end = watch(paths, 1, false, |_| async {}).await;
        assert_eq!(end, End::NoSlice);
    }

    /// A user whose slice is not there waits in the list (no task of their
    /// own), gets a watcher as soon as it appears, and is given up on after
    /// [`SLICE_WAIT`]; a cancel while waiting ends the wait.
    #[tokio::test(start_paused = true)]
    async fn users_wait_for_their_slice_in_one_list() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let started: Arc<Mutex<Vec<u32>>> = Arc::default();
        let start = {
            let (root, started) = (root.clone(), started.clone());
            Start {
                slice: Arc::new(move |uid| slice_inode(&slice_dir_of(&root, Layout::Unified, uid))),
                task: Arc::new(move |uid, _, fresh| {
                    assert!(fresh, "a slice that was not there is new");
                    started.lock().unwrap().push(uid);
                    Box::pin(std::future::pending())
                }),
            }
        };
        let w = Watchers::default();
        let tasks = tokio::runtime::Handle::current().metrics();
        let before = tasks.num_alive_tasks();
        for uid in [1001, 1002, 1003] {
            w.start(uid, start.clone(), false);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(
            tasks.num_alive_tasks(),
            before + 1,
            "one task for every user waiting"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::fs::create_dir_all(slice_dir_of(&root, Layout::Unified, 1001)).unwrap();
        w.cancel(&1003);
        tokio::time::sleep(SLICE_POLL * 2).await;
        assert_eq!(started.lock().unwrap().as_slice(), [1001]);
        assert!(w.contains(&1001) && w.contains(&1002) && !w.contains(&1003));
        tokio::time::sleep(SLICE_WAIT).await;
        assert!(!w.contains(&1002), "given up on");
        assert!(w.contains(&1001), "watched while the slice is there");
        assert_eq!(w.len(), 1);
        assert_eq!(
            tasks.num_alive_tasks(),
            before + 1,
            "the waiting list's task ended, the watcher runs"
        );
        // a slice already there: watched at once
        std::fs::create_dir_all(slice_dir_of(&root, Layout::Unified, 1004)).unwrap();
        w.start(1004, start.clone(), true);
        assert_eq!(started.lock().unwrap().as_slice(), [1001, 1004]);
        w.cancel(&1001);
        assert!(!w.contains(&1001));
    }

    /// A login whose slice is a new one (made anew at the same path) while
    /// the watcher of the user's last slice still runs: the new slice is
    /// watched at once, its counts news, even when the login was not
    /// counted as the user's first (logind's report of it came first, or
    /// the last login's user manager was not yet counted down); the old
    /// watcher runs on to its own end (it may be gathering a kill) without
    /// taking the new one's place. An additional session, or a fresh login
    /// on the same slice, starts nothing.
    #[tokio::test(start_paused = true)]
    async fn a_fresh_login_on_a_new_slice_is_watched_at_once() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let dir = slice_dir_of(&root, Layout::Unified, 1001);
        std::fs::create_dir_all(&dir).unwrap();
        // the slice of each watcher that ran, and whether it was fresh
        let ran: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
        let ends: Arc<Mutex<Vec<Arc<tokio::sync::Notify>>>> = Arc::default();
        let start = {
            let (root, ran, ends) = (root.clone(), ran.clone(), ends.clone());
            Start {
                slice: Arc::new(move |uid| slice_inode(&slice_dir_of(&root, Layout::Unified, uid))),
                task: Arc::new(move |_, ino, fresh| {
                    let end = Arc::new(tokio::sync::Notify::new());
                    ends.lock().unwrap().push(end.clone());
                    let ran = ran.clone();
                    Box::pin(async move {
                        ran.lock().unwrap().push((ino, fresh));
                        end.notified().await;
                    })
                }),
            }
        };
        let settle = || tokio::time::sleep(Duration::from_millis(10));
        let w = Watchers::default();
        w.start(1001, start.clone(), true);
        w.start(1001, start.clone(), false);
        w.start(1001, start.clone(), true);
        settle().await;
        let first = slice_inode(&dir).unwrap();
        assert_eq!(ran.lock().unwrap().as_slice(), [(first, true)]);
        // logout, the slice goes, a new login makes another at the path
        let next = t.path().join("next");
        std::fs::create_dir(&next).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::rename(&next, &dir).unwrap();
        let second = slice_inode(&dir).unwrap();
        assert_ne!(first, second);
        w.start(1001, start.clone(), false);
        settle().await;
        assert_eq!(
            ran.lock().unwrap().as_slice(),
            [(first, true), (second, true)],
            "at once, and from zero"
        );
        assert_eq!(w.len(), 1, "the old one runs on out of the table");
        // the old watcher ends: the new one is still the user's watcher
        let old = ends.lock().unwrap()[0].clone();
        old.notify_one();
        settle().await;
        w.start(1001, start.clone(), true);
        settle().await;
        assert_eq!(ran.lock().unwrap().len(), 2, "the same slice: nothing new");
        assert!(w.contains(&1001));
        w.cancel(&1001);
        assert!(w.is_empty());
    }

    #[test]
    fn slice_dirs_per_layout() {
        for layout in [Layout::Unified, Layout::Hybrid, Layout::Legacy] {
            let root = Path::new("/sys/fs/cgroup");
            assert_eq!(
                slice_dir(&Paths::for_user(root, layout, 7)),
                Some(slice_dir_of(root, layout, 7))
            );
        }
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            slice_dir(&Paths::for_user(root, Layout::Unified, 7)).unwrap(),
            Path::new("/sys/fs/cgroup/user.slice/user-7.slice")
        );
        assert_eq!(
            slice_dir(&Paths::for_user(root, Layout::Hybrid, 7)).unwrap(),
            Path::new("/sys/fs/cgroup/memory/user.slice/user-7.slice")
        );
    }
}
