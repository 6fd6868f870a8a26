//! Telling users what their limits did (issue 14): the login line in the
//! answer to `session_open`, the `events` and `notices` requests, the
//! per-user watchers (started at a user's first session, ending with the
//! slice), and what happens when a watcher finds something: the event is
//! made (victims named from the kernel log), told on the user's terminals
//! unless they turned that off or the burst was told already, and recorded
//! (history, journal, metrics, followers). The state is
//! [`crate::events::hub::Notices`]'s; the design is `docs/design/notices.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fairshare_policy::{Policy, UserPolicy};
use fairshare_proto::events::{Event, EventKind, LimitHit, MAX_PROCESSES, Notified};
use fairshare_proto::units::format_duration;
use fairshare_proto::wire::{
    EventList, EventsQuery, Limits, NoticesChoice, Request, Response, Terminal, Usage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{Reply, Service, ServiceError};
use crate::admission::Peer;
use crate::events::counters::Paths;
use crate::events::hub::Decision;
use crate::events::kernel_log::KernelLog;
use crate::events::notice::{self, Allowance};
use crate::events::watch::{self, End, Found};
use crate::systemd::Systemd;
use crate::tty::{self, Written};

/// How long a follower may take to read one event before it is dropped.
const FOLLOW_WRITE: Duration = Duration::from_secs(10);
/// Events shown in `status`.
pub const STATUS_EVENTS: usize = 5;

impl<S: Systemd> Service<S> {
    /// Names OOM victims from the kernel log at `path` (`/dev/kmsg`), read
    /// from now on; where it cannot be opened, notices say "a process".
    pub fn with_kernel_log(self, path: &Path) -> Service<S> {
        let (log, error) = KernelLog::open(path);
        if let Some(e) = error {
            tracing::info!(path = %path.display(), error = %e, "cannot read the kernel log; notices of OOM kills will not name the process");
        }
        self.notices.set_kernel_log(log);
        self
    }

    /// `events`: a user's history, oldest first.
    pub(super) async fn events(&self, peer: Peer, q: EventsQuery) -> Reply {
        let (id, _) = self
            .subject(peer, q.user.as_ref(), || {
                ServiceError::NotYourEvents("see the events of")
            })
            .await?;
        let default_on = self.policy().notices().terminal;
        Ok(Response::EventList(EventList {
            uid: id.uid,
            user: id.name,
            events: self.notices.events(id.uid, q.since),
            terminal_notices: self.notices.setting(id.uid, default_on),
        }))
    }

    /// `notices`: the user's choice about terminal notices, saved.
    pub(super) async fn set_notices(&self, peer: Peer, c: NoticesChoice) -> Reply {
        let (id, _) = self
            .subject(peer, c.user.as_ref(), || {
                ServiceError::NotYourEvents("turn notices off or on for")
            })
            .await?;
        self.notices.set_choice(id.uid, c.terminal.choice());
        let default_on = self.policy().notices().terminal;
        let now = self.notices.setting(id.uid, default_on);
        tracing::info!(uid = id.uid, user = %id.name, by = peer.uid, terminal = %now, "terminal notices set");
        let whose = match peer.uid == id.uid {
            true => "your",
            false => "their",
        };
        let what = match c.terminal {
            Terminal::Off => format!(
                "no notices on {whose} terminals from now on (fairshare-ctl events still lists what happens)"
            ),
            Terminal::On => format!("notices on {whose} terminals from now on"),
            Terminal::Default => "terminal notices as the policy says".to_string(),
        };
        Ok(Response::success(format!("{}: {what}; now {now}", id.name)))
    }

    /// The line an interactive login shows (in the answer to
    /// `session_open`), unless the policy turns it off.
    pub(super) fn login_line(
        &self,
        uid: u32,
        policy: &Policy,
        up: &UserPolicy,
        limits: &Limits,
    ) -> Option<String> {
        if !policy.notices().login_line {
            return None;
        }
        let now = self.now();
        let left = self
            .store
            .read(|l| l.get(uid).and_then(|e| e.grant.as_ref()?.expires_at))
            .filter(|t| *t > now)
            .map(|t| format_duration(Duration::from_secs(t - now)));
        let max = self
            .store
            .read(|l| l.get(uid).map(|e| e.user_ceiling(up)))
            .unwrap_or(up.max);
        let a = Allowance {
            allocation: *limits,
            max,
        };
        Some(notice::login_line(&a, left.as_deref()))
    }

    /// A session of `uid` opened: watch their slice unless it is watched
    /// already (when it appears, if it is not there yet).
    /// `fresh`: the user had no session before this one (their slice came
    /// with it; see [`watch::Watchers::start`]).
    pub(super) fn events_started(self: &Arc<Self>, uid: u32, fresh: bool) {
        let this = Arc::downgrade(self);
        let (root, layout) = (self.cgroups.root().to_path_buf(), self.cgroups.layout());
        let dir_root = root.clone();
        let start = watch::Start {
            slice: Arc::new(move |uid| {
                watch::slice_inode(&watch::slice_dir_of(&dir_root, layout, uid))
            }),
            task: Arc::new(move |uid, ino, fresh| {
                let paths = Paths::for_user(&root, layout, uid);
                let this = this.clone();
                Box::pin(async move {
                    let report = |found: Found| {
                        let this = this.clone();
                        async move {
                            if let Some(s) = this.upgrade() {
                                s.event_found(uid, found).await;
                            }
                        }
                    };
                    match watch::watch(paths, ino, fresh, report).await {
                        End::NoSlice => tracing::debug!(uid, "no slice to watch for events"),
                        End::SliceGone => {
                            tracing::debug!(uid, "slice gone; its event watcher ends")
                        }
                    }
                })
            }),
        };
        self.notices.watchers.start(uid, start, fresh);
    }

    /// The last session of `uid` closed: no more waiting for their slice;
    /// a running watcher ends with the slice (see
    /// [`watch::Watchers::stop_waiting`]).
    pub(super) fn events_stopped(&self, uid: u32) {
        self.notices.watchers.stop_waiting(&uid);
    }

    /// `uid` is no longer limited here (exempt now, or gone): their
    /// watcher ends at once.
    pub(super) fn events_cancelled(&self, uid: u32) {
        self.notices.watchers.cancel(&uid);
    }

    /// Watches every user with sessions (restored from the saved ledger, or
    /// counted from logind) and nobody else (`only`: that user alone).
    pub(super) fn sweep_event_watchers(self: &Arc<Self>, only: Option<u32>) {
        let users: Vec<(u32, bool)> = self.store.read(|l| match only {
            // a user logind reports: not in the ledger means no sessions
            Some(u) => vec![(u, l.get(u).is_some_and(|e| !e.sessions.is_empty()))],
            None => l
                .entries()
                .map(|(u, e)| (*u, !e.sessions.is_empty()))
                .collect(),
        });
        for (uid, sessions) in users {
            match sessions {
                true => self.events_started(uid, false),
                false => self.events_stopped(uid),
            }
        }
    }

    /// A watcher found something: make the event, tell it, record it.
    pub(super) async fn event_found(self: &Arc<Self>, uid: u32, found: Found) {
        let now = self.now();
        let policy = self.policy();
        let entry = self.store.read(|l| l.get(uid).cloned());
        let id = self.identities.by_uid(uid, policy.uses_groups()).await.ok();
        let name = entry
            .as_ref()
            .map(|e| e.name.clone())
            .or_else(|| id.as_ref().map(|i| i.name.clone()))
            .unwrap_or_else(|| uid.to_string());
        let up = id.as_ref().map(|i| policy.for_user(i));
        let limits = entry
            .as_ref()
            .map(|e| e.limits)
            .or_else(|| up.as_ref().map(|u| u.default));
        let mut allowance = match (limits, &up) {
            (Some(allocation), Some(u)) => Some(Allowance {
                allocation,
                // root's setting binds the user's resizes: no remedy above it
                max: entry.as_ref().map_or(u.max, |e| e.user_ceiling(u)),
            }),
            _ => None,
        };
        let mut event = match found {
            Found::OomKills { count, slice } => {
                self.notices.add_kills(uid, slice, count);
                let mut e = Event::new(
                    now,
                    EventKind::OomKill,
                    LimitHit {
                        mem: limits.map(|l| l.mem),
                        ..LimitHit::default()
                    },
                );
                e.count = u32::try_from(count).unwrap_or(u32::MAX);
                let n = (count as usize).min(MAX_PROCESSES);
                e.processes = self.notices.victims(uid, n).unwrap_or_default();
                e
            }
            Found::Throttled {
                kind,
                percent,
                window_secs,
            } => {
                // a user bursting is held at the lifted quota, not at the allocation
                let held_at = limits.map(|l| self.burst_quota(uid, l.cpu).unwrap_or(l.cpu));
                if let (Some(a), Some(cpu), EventKind::CpuThrottled) =
                    (allowance.as_mut(), held_at, kind)
                {
                    a.allocation.cpu = cpu;
                }
                let limit = match kind {
                    EventKind::CpuThrottled => LimitHit {
                        cpu: held_at,
                        ..LimitHit::default()
                    },
                    _ => LimitHit {
                        mem_high: limits.and_then(|l| l.mem_high),
                        ..LimitHit::default()
                    },
                };
                let mut e = Event::new(now, kind, limit);
                e.share_pct = Some(percent);
                e.window_secs = Some(window_secs);
                e
            }
        };
        let terminals = self.user_terminals(uid).await;
        let default_on = policy.notices().terminal;
        let at = std::time::Instant::now();
        match self.notices.decide(uid, event.kind, default_on, at) {
            Decision::Off => event.notified = Notified::Off,
            Decision::Held => event.notified = Notified::Held,
            Decision::Notify { held } => {
                let shown = match terminals.is_empty() {
                    true => 0,
                    false => {
                        let text = notice::frame(&notice::notice(&event, allowance.as_ref(), held));
                        write_terminals(uid, terminals, text).await
                    }
                };
                // a notice no terminal took (none open, `mesg n`) holds
                // nothing back: the next event of the burst is told
                self.notices.settle(uid, event.kind, shown > 0, at);
                event.terminals = shown;
                event.notified = match shown {
                    0 => Notified::NoTerminal,
                    _ => Notified::Shown,
                };
            }
        }
        self.notices.record(uid, &name, event, now);
    }

    /// The terminals of `uid`'s logind sessions (an `ssh -t` login's
    /// `pts/N`; none for `ssh host cmd`).
    async fn user_terminals(&self, uid: u32) -> Vec<PathBuf> {
        match self.systemd.logind_sessions(Some(uid)).await {
            Ok(sessions) => tty::terminals(sessions.iter().map(|s| s.tty.as_str())),
            Err(e) => {
                tracing::warn!(uid, error = %e, "cannot list the user's sessions for a notice");
                Vec::new()
            }
        }
    }

    /// Usage with the OOM kill count fairshare counted in the slice when
    /// the kernel's is lower: on cgroup v1 the kernel counts a kill in the
    /// victim's own cgroup, which goes with it (an `ssh host cmd` session's
    /// scope), so its count vanishes; ours stays until the slice goes.
    pub(super) fn durable_usage(&self, uid: u32, mut usage: Usage) -> Usage {
        let paths = Paths::for_user(self.cgroups.root(), self.cgroups.layout(), uid);
        if let Some(ours) = watch::slice_id(&paths).and_then(|s| self.notices.kills(uid, s)) {
            usage.oom_kills = Some(usage.oom_kills.unwrap_or(0).max(ours));
        }
        usage
    }

    /// Tells the `events --follow` connections to hang up (the daemon stops).
    pub fn stop_followers(&self) {
        self.notices.close_followers();
    }

    /// `events` with `follow`: answers as `events` does, then writes each
    /// new event of that user on its own line until the client hangs up or
    /// the daemon stops. The connection counts against the caller's
    /// connection cap all along.
    pub async fn follow_events(self: &Arc<Self>, peer: Peer, q: EventsQuery, stream: UnixStream) {
        // subscribe first: nothing recorded after the list is missed
        let mut feed = self.notices.subscribe();
        let mut closing = self.notices.closing();
        let first = self.handle(peer, Request::Events(q)).await;
        let (mut rd, mut wr) = stream.into_split();
        let listed = match &first {
            Response::EventList(l) => Some((l.uid, l.events.clone())),
            _ => None,
        };
        if write_line(&mut wr, &first).await.is_err() {
            return;
        }
        let Some((uid, listed)) = listed else {
            let _ = wr.shutdown().await;
            return;
        };
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                _ = closing.changed() => break,
                // the client hung up (or sends what nobody reads)
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                next = feed.recv() => match next {
                    Ok(line) if line.uid == uid && !listed.contains(&line.event) => {
                        if write_line(&mut wr, &Response::Event(line)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(uid, missed = n, "a follower fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let _ = wr.shutdown().await;
    }
}

/// Writes a notice to each terminal, on the blocking pool; how many took it.
async fn write_terminals(uid: u32, terminals: Vec<PathBuf>, text: Vec<u8>) -> u32 {
    tokio::task::spawn_blocking(move || {
        let mut shown = 0;
        for t in &terminals {
            match tty::write_notice(t, uid, &text) {
                Ok(Written::All | Written::Partial(_)) => shown += 1,
                Ok(w) => {
                    tracing::debug!(uid, tty = %t.display(), outcome = ?w, "notice not written")
                }
                Err(e) => {
                    tracing::debug!(uid, tty = %t.display(), error = %e, "notice not written")
                }
            }
        }
        shown
    })
    .await
    .unwrap_or(0)
}

/// One answer line, within [`FOLLOW_WRITE`].
async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    tokio::time::timeout(FOLLOW_WRITE, w.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "follower does not read"))?
}
