//! [`Notices`]: the owner of everything the daemon keeps about events: each
//! user's history and notices choice (saved to `notices.json` a few seconds
//! after a change), the bursts already told ([`Coalescer`]), the kernel-log
//! reader, the per-user watchers, the kills counted per slice (which
//! outlive the victim's cgroup on v1), the feed of new events for `events
//! --follow`, the journal entries and the metrics counters.
//!
//! The service decides what an event says and where it goes
//! (`service/notices.rs`); this holds the state, with short locks never held
//! across I/O.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fairshare_proto::events::{Event, EventKind, Notified, Process};
use fairshare_proto::wire::{EventLine, NoticesSetting, NoticesSource};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::coalesce::{Coalescer, Verdict};
use super::history::History;
use super::kernel_log::KernelLog;
use super::watch::Watchers;

/// The file next to the ledger's `state.bin`.
pub const FILE: &str = "notices.json";
/// A change is saved at most this long after it was made.
pub const SAVE_AFTER: Duration = Duration::from_secs(5);
/// New events kept for followers that read slowly (a follower further
/// behind misses the oldest; `events` lists them all).
const FEED: usize = 256;
/// Users whose per-slice kill counts are kept, at most.
const MAX_SLICE_COUNTS: usize = 100_000;

/// What to do about an event on the user's terminals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The user (or the policy's default) has terminal notices off.
    Off,
    /// Part of a burst already told, or too soon after the last notice.
    Held,
    /// Tell it; `held` events of its kind were not told since the last.
    Notify { held: u32 },
}

/// Kills counted in one slice (a new login after the slice went away makes
/// a new one, with a new inode).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct SliceKills {
    slice: u64,
    kills: u64,
}

#[derive(Default)]
struct Inner {
    history: History,
    coalescer: Coalescer,
    slice_kills: BTreeMap<u32, SliceKills>,
}

#[derive(Serialize)]
struct OnDiskRef<'a> {
    version: u32,
    history: &'a History,
    slice_kills: &'a BTreeMap<u32, SliceKills>,
}

#[derive(Deserialize)]
struct OnDisk {
    version: u32,
    history: serde_json::Value,
    #[serde(default)]
    slice_kills: BTreeMap<u32, SliceKills>,
}

const VERSION: u32 = 1;

/// Counters since start, for the metrics.
#[derive(Default)]
struct Counters {
    events: [AtomicU64; EventKind::ALL.len()],
    /// shown, held, off, no_terminal
    notices: [AtomicU64; 4],
}

const OUTCOMES: [(Notified, &str); 4] = [
    (Notified::Shown, "shown"),
    (Notified::Held, "held"),
    (Notified::Off, "off"),
    (Notified::NoTerminal, "no_terminal"),
];

/// See the module's doc.
pub struct Notices {
    inner: Mutex<Inner>,
    file: Option<PathBuf>,
    kernel: Mutex<KernelLog>,
    warned_unnamed: AtomicBool,
    /// The users watched, by uid.
    pub watchers: Watchers,
    feed: broadcast::Sender<EventLine>,
    closing: watch::Sender<bool>,
    counters: Counters,
    save_pending: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Notices {
    /// Reads the saved history from `file` (when given; tests go without).
    pub fn new(file: Option<PathBuf>, now: u64) -> Notices {
        let inner = match &file {
            Some(f) => load(f, now),
            None => Inner::default(),
        };
        Notices {
            inner: Mutex::new(inner),
            file,
            kernel: Mutex::new(KernelLog::none()),
            warned_unnamed: AtomicBool::new(false),
            watchers: Watchers::default(),
            feed: broadcast::channel(FEED).0,
            closing: watch::channel(false).0,
            counters: Counters::default(),
            save_pending: AtomicBool::new(false),
        }
    }

    /// Reads victims' names from `log` from now on.
    pub fn set_kernel_log(&self, log: KernelLog) {
        *lock(&self.kernel) = log;
    }

    /// The processes of `uid` the kernel reported killed, at most `n`;
    /// `None` when the kernel log cannot be read (said once in the journal).
    pub fn victims(&self, uid: u32, n: usize) -> Option<Vec<Process>> {
        let v = lock(&self.kernel).victims(uid, n);
        if v.is_none() && !self.warned_unnamed.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "the kernel log (/dev/kmsg) cannot be read here: notices of OOM kills say \"a process\" instead of naming it"
            );
        }
        v
    }

    /// Whether `uid`'s terminals get an event of `kind` now.
    pub fn decide(&self, uid: u32, kind: EventKind, default_on: bool, now: Instant) -> Decision {
        let mut inner = lock(&self.inner);
        if !inner.history.notices(uid, default_on) {
            return Decision::Off;
        }
        match inner.coalescer.event(uid, kind, now) {
            Verdict::Notify { held } => Decision::Notify { held },
            Verdict::Hold => Decision::Held,
        }
    }

    /// Settles a [`Decision::Notify`]: whether the notice reached a terminal
    /// (only one that did holds back the rest of its burst).
    pub fn settle(&self, uid: u32, kind: EventKind, shown: bool, now: Instant) {
        let mut inner = lock(&self.inner);
        match shown {
            true => inner.coalescer.told(uid, kind, now),
            false => inner.coalescer.not_told(uid, kind),
        }
    }

    /// Records an event: history (saved soon), journal, metrics, followers.
    pub fn record(self: &Arc<Self>, uid: u32, user: &str, event: Event, now: u64) {
        self.counters.events[event.kind as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = OUTCOMES.iter().position(|(n, _)| *n == event.notified) {
            self.counters.notices[i].fetch_add(1, Ordering::Relaxed);
        }
        journal(uid, user, &event);
        {
            let mut inner = lock(&self.inner);
            inner.history.push(uid, event.clone(), now);
            inner.coalescer.forget_idle(Instant::now());
        }
        let _ = self.feed.send(EventLine {
            uid,
            user: user.to_string(),
            event,
        });
        self.save_later();
    }

    /// `uid`'s events at or after `since`, oldest first.
    pub fn events(&self, uid: u32, since: Option<u64>) -> Vec<Event> {
        lock(&self.inner)
            .history
            .events(uid)
            .filter(|e| since.is_none_or(|s| e.at >= s))
            .cloned()
            .collect()
    }

    /// `uid`'s last `n` events, oldest first.
    pub fn recent(&self, uid: u32, n: usize) -> Vec<Event> {
        lock(&self.inner).history.recent(uid, n)
    }

    /// Whether `uid`'s terminals get notices, and whose choice that is.
    pub fn setting(&self, uid: u32, default_on: bool) -> NoticesSetting {
        match lock(&self.inner).history.choice(uid) {
            Some(on) => NoticesSetting {
                enabled: on,
                source: NoticesSource::User,
            },
            None => NoticesSetting {
                enabled: default_on,
                source: NoticesSource::Policy,
            },
        }
    }

    /// The user's own choice (`None`: back to the policy's default); saved.
    pub fn set_choice(self: &Arc<Self>, uid: u32, choice: Option<bool>) {
        lock(&self.inner).history.set_notices(uid, choice);
        self.save_later();
    }

    /// Adds kills counted in `uid`'s slice `slice`.
    pub fn add_kills(self: &Arc<Self>, uid: u32, slice: u64, n: u64) {
        {
            let mut inner = lock(&self.inner);
            let e = inner
                .slice_kills
                .entry(uid)
                .or_insert(SliceKills { slice, kills: 0 });
            if e.slice != slice {
                *e = SliceKills { slice, kills: 0 };
            }
            e.kills = e.kills.saturating_add(n);
            while inner.slice_kills.len() > MAX_SLICE_COUNTS {
                inner.slice_kills.pop_first();
            }
        }
        self.save_later();
    }

    /// Kills counted in `uid`'s slice `slice` (`None`: none counted there).
    pub fn kills(&self, uid: u32, slice: u64) -> Option<u64> {
        lock(&self.inner)
            .slice_kills
            .get(&uid)
            .filter(|k| k.slice == slice)
            .map(|k| k.kills)
    }

    /// New events as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<EventLine> {
        self.feed.subscribe()
    }

    /// Fires when followers should hang up (the daemon stops).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Tells every follower to hang up.
    pub fn close_followers(&self) {
        self.closing.send_replace(true);
    }

    /// Saves within [`SAVE_AFTER`], once for every change made meanwhile.
    fn save_later(self: &Arc<Self>) {
        if self.file.is_none() || self.save_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(SAVE_AFTER).await;
            if let Some(n) = weak.upgrade()
                && let Err(e) = n.save().await
            {
                tracing::error!(error = %e, "could not save the event history");
            }
        });
    }

    /// Saves now (the daemon stops).
    pub async fn save(&self) -> io::Result<()> {
        let Some(path) = self.file.clone() else {
            return Ok(());
        };
        self.save_pending.store(false, Ordering::Release);
        let bytes = {
            let mut inner = lock(&self.inner);
            inner.history.prune(crate::service::now());
            let mut v = serde_json::to_vec(&OnDiskRef {
                version: VERSION,
                history: &inner.history,
                slice_kills: &inner.slice_kills,
            })
            .unwrap_or_default();
            v.push(b'\n');
            v
        };
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(io::Error::other)?
    }

    /// The Prometheus families of events (host-wide, no per-user labels).
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP fairshare_events_total Events recorded since fairshared started: processes OOM-killed at a user's memory limit, users held at their CPU limit or stalled above their soft memory limit for most of a minute.\n# TYPE fairshare_events_total counter"
        );
        for k in EventKind::ALL {
            let n = self.counters.events[k as usize].load(Ordering::Relaxed);
            let _ = writeln!(o, "fairshare_events_total{{kind=\"{k}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP fairshare_notices_total What became of each event on the user's terminals: shown, held (a burst already told), off (the user's or the policy's choice), no_terminal.\n# TYPE fairshare_notices_total counter"
        );
        for (i, (_, label)) in OUTCOMES.iter().enumerate() {
            let n = self.counters.notices[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "fairshare_notices_total{{outcome=\"{label}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP fairshare_event_watchers Users whose slices are watched for events now.\n# TYPE fairshare_event_watchers gauge\nfairshare_event_watchers {}",
            self.watchers.len()
        );
        let _ = writeln!(
            o,
            "# HELP fairshare_kernel_reports_total OOM reports read from the kernel log (to name victims).\n# TYPE fairshare_kernel_reports_total counter\nfairshare_kernel_reports_total {}",
            lock(&self.kernel).reports()
        );
        o
    }
}

/// One journal entry per event, with fields to filter on
/// (`journalctl FAIRSHARE_EVENT=oom_kill`, `USER=alice`).
fn journal(uid: u32, user: &str, e: &Event) {
    let limit = match e.kind {
        EventKind::OomKill => e.limit.mem.map(|m| m.to_string()),
        EventKind::CpuThrottled => e.limit.cpu.map(|c| c.to_string()),
        EventKind::MemoryStall => e.limit.mem_high.map(|m| m.human()),
    }
    .unwrap_or_default();
    let pids: Vec<String> = e.processes.iter().map(|p| p.pid.to_string()).collect();
    let names: Vec<&str> = e.processes.iter().map(|p| p.name.as_str()).collect();
    let notified = serde_json::to_value(e.notified)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::info!(
        fairshare_event = e.kind.as_str(),
        uid,
        user,
        kind = e.kind.as_str(),
        limit = %limit,
        count = e.count,
        pids = %pids.join(" "),
        names = %names.join(" "),
        share_pct = e.share_pct.map(u64::from),
        notified = %notified,
        terminals = e.terminals,
        "{user} (uid {uid}): {}",
        e.describe()
    );
}

/// Reads the saved file; a file that cannot be read is set aside (never
/// deleted) and the daemon starts without history.
fn load(path: &Path, now: u64) -> Inner {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Inner::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the event history; starting without it");
            return Inner::default();
        }
    };
    let parsed = serde_json::from_str::<OnDisk>(&text)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            if d.version > VERSION {
                return Err(format!(
                    "written by a newer fairshare (format {}; this one reads {VERSION})",
                    d.version
                ));
            }
            let history =
                History::from_json(&d.history.to_string(), now).map_err(|e| e.to_string())?;
            let mut slice_kills = d.slice_kills;
            while slice_kills.len() > MAX_SLICE_COUNTS {
                slice_kills.pop_first();
            }
            Ok(Inner {
                history,
                coalescer: Coalescer::default(),
                slice_kills,
            })
        });
    match parsed {
        Ok(inner) => inner,
        Err(reason) => {
            let moved = path.with_extension(format!("json.corrupt-{now}"));
            let _ = fs::rename(path, &moved);
            tracing::error!(path = %path.display(), moved_to = %moved.display(), "event history unreadable ({reason}); moved it aside and starting without it");
            Inner::default()
        }
    }
}

/// Replaces `path` with `bytes`: a temporary file, fsync, rename, fsync of
/// the directory (as the ledger's `state.bin`), mode 0600.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::events::LimitHit;
    use fairshare_proto::units::Bytes;

    fn oom(at: u64) -> Event {
        let mut e = Event::new(
            at,
            EventKind::OomKill,
            LimitHit {
                mem: Some(Bytes(256 << 20)),
                ..LimitHit::default()
            },
        );
        e.count = 1;
        e.notified = Notified::Shown;
        e.terminals = 1;
        e
    }

    #[tokio::test]
    async fn history_choices_and_kill_counts_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let now = crate::service::now();
        let n = Arc::new(Notices::new(Some(path.clone()), now));
        n.record(1001, "alice", oom(now - 10), now);
        n.set_choice(1001, Some(false));
        n.set_choice(1002, Some(true));
        n.add_kills(1001, 77, 2);
        n.save().await.unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let again = Notices::new(Some(path.clone()), now);
        assert_eq!(again.events(1001, None), vec![oom(now - 10)]);
        assert_eq!(again.events(1001, Some(now)), vec![]);
        assert!(!again.setting(1001, true).enabled);
        assert_eq!(again.setting(1001, true).source, NoticesSource::User);
        assert_eq!(again.setting(1003, false).source, NoticesSource::Policy);
        assert_eq!(again.kills(1001, 77), Some(2));
        assert_eq!(again.kills(1001, 78), None, "another slice");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        fs::write(&path, "{not json").unwrap();
        let n = Notices::new(Some(path.clone()), 1000);
        assert!(n.events(1001, None).is_empty());
        assert!(!path.exists());
        assert!(dir.path().join("notices.json.corrupt-1000").exists());
    }

    #[test]
    fn off_wins_over_the_coalescer_and_bursts_are_held() {
        let n = Arc::new(Notices::new(None, 0));
        let t = Instant::now();
        assert_eq!(
            n.decide(1001, EventKind::OomKill, true, t),
            Decision::Notify { held: 0 }
        );
        // a notice no terminal took holds nothing back
        n.settle(1001, EventKind::OomKill, false, t);
        assert_eq!(
            n.decide(1001, EventKind::OomKill, true, t + Duration::from_secs(2)),
            Decision::Notify { held: 1 }
        );
        n.settle(1001, EventKind::OomKill, true, t + Duration::from_secs(2));
        assert_eq!(
            n.decide(1001, EventKind::OomKill, true, t + Duration::from_secs(5)),
            Decision::Held
        );
        assert_eq!(
            n.decide(1002, EventKind::OomKill, false, t),
            Decision::Off,
            "the policy's default"
        );
        lock(&n.inner).history.set_notices(1001, Some(false));
        assert_eq!(
            n.decide(
                1001,
                EventKind::OomKill,
                true,
                t + Duration::from_secs(3600)
            ),
            Decision::Off
        );
    }

    #[test]
    fn kills_per_slice() {
        let n = Arc::new(Notices::new(None, 0));
        n.add_kills(1, 10, 1);
        n.add_kills(1, 10, 2);
        assert_eq!(n.kills(1, 10), Some(3));
        n.add_kills(1, 11, 1);
        assert_eq!(n.kills(1, 10), None, "a new slice starts over");
        assert_eq!(n.kills(1, 11), Some(1));
    }

    #[tokio::test]
    async fn followers_get_new_events_and_metrics_count_them() {
        let n = Arc::new(Notices::new(None, 0));
        let mut rx = n.subscribe();
        n.record(1001, "alice", oom(5), 10);
        let got = rx.recv().await.unwrap();
        assert_eq!((got.uid, got.user.as_str()), (1001, "alice"));
        let m = n.metrics();
        assert!(
            m.contains("fairshare_events_total{kind=\"oom_kill\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("fairshare_notices_total{outcome=\"shown\"} 1"),
            "{m}"
        );
        assert!(m.contains("fairshare_event_watchers 0"), "{m}");
        let mut closing = n.closing();
        n.close_followers();
        closing.changed().await.unwrap();
        assert!(*closing.borrow());
    }
}
