//! Each user's recent events and their choice about terminal notices.
//!
//! Bounded three ways, so no user (and no flood of events) can grow it
//! without end: [`PER_USER`] events per user, none older than [`MAX_AGE`],
//! [`TOTAL`] events in all (the oldest go first, whoever they belong to).
//! Users with neither events nor a choice of their own are not kept.
//!
//! It is saved to its own file (`/var/lib/fairshare/notices.json`, next to
//! the ledger's `state.bin`, written the same atomic way, a few seconds
//! after a change), so `fairshare-ctl events` still shows yesterday's kill
//! after an upgrade restarted the daemon, and `notices off` stays off.
//! The journal keeps every event for good; this is the users' view.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use fairshare_proto::events::Event;

/// Events kept per user.
pub const PER_USER: usize = 32;
/// Events older than this (seconds) are dropped: a week.
pub const MAX_AGE: u64 = 7 * 24 * 3600;
/// Events kept in all.
pub const TOTAL: usize = 20_000;
/// The version of the file format.
pub const VERSION: u32 = 1;

/// One user's part.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct UserLog {
    /// `Some(false)`: `fairshare-ctl notices off`; `Some(true)`: on; `None`:
    /// the policy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notices: Option<bool>,
    /// Oldest first.
    #[serde(default)]
    pub events: VecDeque<Event>,
}

/// Everyone's events and choices.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct History {
    version: u32,
    #[serde(default)]
    users: BTreeMap<u32, UserLog>,
    /// Events in all (kept up to date, so pushing stays cheap).
    #[serde(skip)]
    count: usize,
}

impl Default for History {
    fn default() -> History {
        History {
            version: VERSION,
            users: BTreeMap::new(),
            count: 0,
        }
    }
}

/// Why a saved history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("not a fairshare notices file: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("written by a newer fairshare (format {0}; this one reads {VERSION})")]
    Version(u32),
}

impl History {
    /// Records an event (its `at` is taken as when it happened).
    pub fn push(&mut self, uid: u32, event: Event, now: u64) {
        let log = self.users.entry(uid).or_default();
        log.events.push_back(event);
        self.count += 1;
        self.count -= trim(log, now);
        self.trim_total();
    }

    /// The user's events, oldest first.
    pub fn events(&self, uid: u32) -> impl Iterator<Item = &Event> {
        self.users
            .get(&uid)
            .into_iter()
            .flat_map(|l| l.events.iter())
    }

    /// The user's last `n` events, oldest first (for `status`).
    pub fn recent(&self, uid: u32, n: usize) -> Vec<Event> {
        let all: Vec<&Event> = self.events(uid).collect();
        all[all.len().saturating_sub(n)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    }

    /// Whether the user gets terminal notices: their own choice, else the
    /// policy's default.
    pub fn notices(&self, uid: u32, default: bool) -> bool {
        self.users
            .get(&uid)
            .and_then(|l| l.notices)
            .unwrap_or(default)
    }

    /// The user's own choice (`None`: back to the policy's default).
    pub fn choice(&self, uid: u32) -> Option<bool> {
        self.users.get(&uid).and_then(|l| l.notices)
    }

    pub fn set_notices(&mut self, uid: u32, choice: Option<bool>) {
        match choice {
            Some(on) => self.users.entry(uid).or_default().notices = Some(on),
            None => {
                if let Some(l) = self.users.get_mut(&uid) {
                    l.notices = None;
                    if l.events.is_empty() {
                        self.users.remove(&uid);
                    }
                }
            }
        }
    }

    /// Drops what has grown too old (called before saving).
    pub fn prune(&mut self, now: u64) {
        for log in self.users.values_mut() {
            self.count -= trim(log, now);
        }
        self.users
            .retain(|_, l| !l.events.is_empty() || l.notices.is_some());
    }

    /// Events kept in all.
    pub fn total(&self) -> usize {
        self.count
    }

    /// Users with events or a choice.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn trim_total(&mut self) {
        while self.count > TOTAL {
            // the user whose oldest event is the oldest of all
            let Some(uid) = self
                .users
                .iter()
                .filter_map(|(u, l)| l.events.front().map(|e| (e.at, *u)))
                .min()
                .map(|(_, u)| u)
            else {
                break;
            };
            if let Some(l) = self.users.get_mut(&uid) {
                l.events.pop_front();
                if l.events.is_empty() && l.notices.is_none() {
                    self.users.remove(&uid);
                }
            }
            self.count -= 1;
        }
    }

    pub fn to_json(&self) -> String {
        // a map of plain data: cannot fail
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a saved history, keeping only what the bounds allow (a file
    /// edited by hand, or written with other bounds, cannot grow it).
    pub fn from_json(text: &str, now: u64) -> Result<History, HistoryError> {
        let mut h: History = serde_json::from_str(text)?;
        if h.version > VERSION {
            return Err(HistoryError::Version(h.version));
        }
        h.version = VERSION;
        h.count = h.users.values().map(|l| l.events.len()).sum();
        for log in h.users.values_mut() {
            // oldest first, whatever the file said
            log.events.make_contiguous().sort_by_key(|e| e.at);
        }
        h.prune(now);
        h.trim_total();
        Ok(h)
    }
}

/// Drops a user's events beyond the age and count bounds; returns how many.
fn trim(log: &mut UserLog, now: u64) -> usize {
    let before = log.events.len();
    let oldest = now.saturating_sub(MAX_AGE);
    while log.events.front().is_some_and(|e| e.at < oldest) {
        log.events.pop_front();
    }
    while log.events.len() > PER_USER {
        log.events.pop_front();
    }
    before - log.events.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairshare_proto::events::{EventKind, LimitHit, Process};

    const NOW: u64 = 1_800_000_000;

    fn ev(at: u64) -> Event {
        let mut e = Event::new(at, EventKind::OomKill, LimitHit::default());
        e.count = 1;
        e.processes = vec![Process::from_kernel(42, b"make")];
        e
    }

    #[test]
    fn per_user_bound_and_order() {
        let mut h = History::default();
        for i in 0..(PER_USER as u64 + 10) {
            h.push(1001, ev(NOW + i), NOW + i);
        }
        let all: Vec<u64> = h.events(1001).map(|e| e.at).collect();
        assert_eq!(all.len(), PER_USER);
        assert_eq!(all[0], NOW + 10);
        assert_eq!(*all.last().unwrap(), NOW + PER_USER as u64 + 9);
        assert_eq!(
            h.recent(1001, 2).iter().map(|e| e.at).collect::<Vec<_>>(),
            vec![NOW + PER_USER as u64 + 8, NOW + PER_USER as u64 + 9]
        );
        assert!(h.recent(1002, 3).is_empty());
        assert_eq!(h.recent(1001, 1000).len(), PER_USER);
    }

    #[test]
    fn old_events_go() {
        let mut h = History::default();
        h.push(1001, ev(NOW - MAX_AGE - 1), NOW);
        assert_eq!(h.total(), 0, "already too old");
        h.push(1001, ev(NOW), NOW);
        h.prune(NOW + MAX_AGE + 1);
        assert_eq!(h.total(), 0);
        assert_eq!(h.users(), 0, "nothing left to keep of that user");
    }

    #[test]
    fn the_total_bound_takes_the_oldest_of_anyone() {
        let mut h = History::default();
        // many users with a few events each
        let users = (TOTAL / 4) as u32 + 10;
        for u in 0..users {
            for k in 0..4u64 {
                h.push(10_000 + u, ev(NOW + u as u64 * 4 + k), NOW);
            }
        }
        assert_eq!(h.total(), TOTAL);
        // the first users lost their oldest events
        assert_eq!(h.events(10_000).count(), 0);
        assert_eq!(h.events(10_000 + users - 1).count(), 4);
    }

    #[test]
    fn notices_choice() {
        let mut h = History::default();
        assert!(h.notices(1001, true));
        assert!(!h.notices(1001, false));
        h.set_notices(1001, Some(false));
        assert!(!h.notices(1001, true));
        assert_eq!(h.choice(1001), Some(false));
        // the choice is kept without events, through pruning
        h.prune(NOW);
        assert_eq!(h.users(), 1);
        h.set_notices(1001, None);
        assert!(h.notices(1001, true));
        assert_eq!(h.users(), 0);
    }

    #[test]
    fn saved_and_read_back() {
        let mut h = History::default();
        h.push(1001, ev(NOW), NOW);
        h.set_notices(1002, Some(false));
        let text = h.to_json();
        assert!(text.contains("\"version\":1"));
        let back = History::from_json(&text, NOW).unwrap();
        assert_eq!(back, h);
        assert!(matches!(
            History::from_json(r#"{"version":2,"users":{}}"#, NOW),
            Err(HistoryError::Version(2))
        ));
        assert!(History::from_json("{", NOW).is_err());
        assert!(History::from_json(r#"{"version":1,"users":{"x":{}}}"#, NOW).is_err());
    }

    #[test]
    fn a_file_beyond_the_bounds_is_cut_down() {
        let mut log = UserLog::default();
        for i in 0..100 {
            // out of order, some too old
            log.events.push_back(ev(NOW - (i * 7919) % (MAX_AGE * 2)));
        }
        let mut users = BTreeMap::new();
        users.insert(1001u32, log);
        let text = serde_json::to_string(&History {
            version: VERSION,
            users,
            count: 0,
        })
        .unwrap();
        let h = History::from_json(&text, NOW).unwrap();
        let ats: Vec<u64> = h.events(1001).map(|e| e.at).collect();
        assert!(ats.len() <= PER_USER);
        assert_eq!(h.total(), ats.len());
        assert!(ats.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        assert!(ats.iter().all(|a| *a >= NOW - MAX_AGE));
    }
}
