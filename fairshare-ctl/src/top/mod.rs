//! `fairshare-ctl top`: a live view of who uses what.
//!
//! Every refresh asks the daemon once (`list` for root, `status` for anyone
//! else: a user sees their own row and the host) and reads `/proc/stat` and
//! `/proc/meminfo`. CPU "now" comes from two successive samples of each
//! slice's CPU time ([`model`]); the layout is fitted to 80 columns
//! ([`view`]); the terminal part is in [`term`].

pub mod model;
pub mod term;
pub mod view;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fairshare_proto::wire::{Request, Response};
use fairshare_proto::{Client, ClientError};

use model::{HostSample, Recent, Sample, SortKey, UserSample};

/// How `top` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds between samples; by default 2 (live) or 1 (`--once`).
    pub interval: Option<f64>,
    pub once: bool,
    pub sort: SortKey,
    pub reverse: bool,
    pub json: bool,
}

/// Shortest and longest refresh interval.
pub const MIN_INTERVAL: f64 = 0.2;
pub const MAX_INTERVAL: f64 = 3600.0;

impl Options {
    pub fn interval(&self) -> f64 {
        self.interval
            .unwrap_or(if self.once { 1.0 } else { 2.0 })
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }
}

/// Why `top` stopped.
#[derive(Debug)]
pub enum Error {
    /// The daemon could not be reached.
    Daemon(ClientError),
    /// The daemon answered with an error.
    Refused(String),
    /// The terminal could not be set up or written.
    Terminal(std::io::Error),
}

/// Takes samples: the daemon's answer and the host's counters.
pub struct Sampler {
    client: Client,
    /// Root: `list` (every user); others: `status` (their own row).
    pub everyone: bool,
    started: Instant,
    proc_dir: PathBuf,
}

impl Sampler {
    pub fn new(client: Client, everyone: bool) -> Sampler {
        Sampler {
            client,
            everyone,
            started: Instant::now(),
            proc_dir: PathBuf::from("/proc"),
        }
    }

    fn host(&self) -> Option<HostSample> {
        let stat = std::fs::read_to_string(self.proc_dir.join("stat")).ok()?;
        let mem = std::fs::read_to_string(self.proc_dir.join("meminfo")).unwrap_or_default();
        Some(model::parse_host(&stat, &mem))
    }

    /// One sample now.
    pub fn sample(&self) -> Result<Sample, Error> {
        let request = if self.everyone {
            Request::List
        } else {
            Request::Status { user: None }
        };
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| Error::Daemon(ClientError::Protocol(e.to_string())))?;
        line.push(b'\n');
        let raw = self.client.call_raw(&line).map_err(Error::Daemon)?;
        let at = self.started.elapsed().as_secs_f64();
        let unix = fairshare_now();
        let host = self.host();
        // Read twice: typed, and as JSON for figures newer than this client.
        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::Daemon(ClientError::Protocol(format!("unreadable answer: {e}"))))?;
        let response: Response = serde_json::from_value(value.clone())
            .map_err(|e| Error::Daemon(ClientError::Protocol(format!("unreadable answer: {e}"))))?;
        let (users, capacity) = match response {
            Response::UserList(l) => {
                let raw_users = value.get("users").and_then(|u| u.as_array());
                let users = l
                    .users
                    .into_iter()
                    .enumerate()
                    .map(|(i, info)| UserSample {
                        info,
                        recent: raw_users.and_then(|u| u.get(i)).and_then(Recent::from_json),
                    })
                    .collect();
                (users, Some(l.capacity))
            }
            Response::StatusInfo(s) => {
                let capacity = s.capacity;
                let user = UserSample {
                    info: *s,
                    recent: Recent::from_json(&value),
                };
                (vec![user], capacity)
            }
            Response::Error(e) => return Err(Error::Refused(e.error)),
            Response::Success(_)
            | Response::Metrics { .. }
            | Response::EventList(_)
            | Response::Event(_) => {
                return Err(Error::Daemon(ClientError::Protocol(
                    "fairshared answered something other than a user list or status".into(),
                )));
            }
        };
        Ok(Sample {
            at,
            unix,
            users,
            capacity,
            host,
        })
    }
}

fn fairshare_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host's name, for the title line.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this host".into())
}

/// Builds the frame for the latest sample (rates against the one before).
pub fn frame(
    prev: Option<&Sample>,
    cur: Option<&Sample>,
    opts: &Options,
    everyone: bool,
    hostname: &str,
) -> view::Frame {
    let mut rows = cur.map(|c| model::rows(prev, c)).unwrap_or_default();
    model::sort(&mut rows, opts.sort, opts.reverse);
    view::Frame {
        hostname: hostname.to_string(),
        interval: opts.interval(),
        sort: opts.sort,
        reverse: opts.reverse,
        everyone,
        host: cur.map_or(
            model::HostRow {
                cpus: None,
                busy: None,
                mem_total: None,
                mem_used: None,
                capacity: None,
            },
            |c| model::host_row(prev, c),
        ),
        rows,
        error: None,
    }
}

/// `--once`: two samples `interval` apart (one when the daemon already gives
/// a recent CPU figure for every user), one frame on stdout.
pub fn once(sampler: &Sampler, opts: &Options) -> Result<String, Error> {
    let first = sampler.sample()?;
    let (prev, cur) = if !first.users.is_empty() && first.users.iter().all(|u| u.recent.is_some()) {
        (None, first)
    } else {
        std::thread::sleep(Duration::from_secs_f64(opts.interval()));
        (Some(first), sampler.sample()?)
    };
    let f = frame(
        prev.as_ref(),
        Some(&cur),
        opts,
        sampler.everyone,
        &hostname(),
    );
    Ok(if opts.json {
        let mut s = serde_json::to_string_pretty(&view::json(&f)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        view::text(&f)
    })
}
