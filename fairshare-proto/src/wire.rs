//! The wire protocol between fairshared and its clients.
//!
//! One request per connection: the client writes one JSON object on one line,
//! the daemon answers with one JSON object on one line and closes the
//! connection. That keeps `echo '{"type":"status"}' | nc -U /run/fairshare.sock`
//! working, as in the original quick start, whose three requests
//! (`request_resources`, `release`, `status`) and three answers (`success`,
//! `error`, `status_info`) are kept exactly. Everything else here is an
//! addition: new request types, and new fields on the old answers.
//!
//! Unknown fields are ignored. Quantities (`cpu`, `mem`, `tasks`) are kept as
//! raw JSON values on the way in and validated by [`ResizeArgs::parse`], so a
//! bad value is answered with an error that names the field.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::Event;
use crate::units::{Bytes, Cpus, Quantity, Tasks, ValueError, Weight, parse_duration};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/fairshare.sock";
/// Environment variable clients read the socket path from.
pub const SOCKET_ENV: &str = "FAIRSHARE_SOCKET";
/// Longest request line the daemon reads; longer requests are refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A user named by uid or by login name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum UserRef {
    Uid(u32),
    Name(String),
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Uid(u) => write!(f, "{u}"),
            UserRef::Name(n) => f.write_str(n),
        }
    }
}

/// A request, as sent by a client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Resize the caller's own allocation (within their policy maximum and the
    /// host's free capacity). Sent while already allocated, it is a resize.
    RequestResources(ResizeArgs),
    /// Return the caller's allocation to the policy default.
    Release,
    /// The caller's allocation, defaults, maximum, sessions and usage. Root may
    /// name another user.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserRef>,
    },
    /// Root only: a PAM session was opened.
    SessionOpen(SessionOpen),
    /// Root only: a PAM session was closed.
    SessionClose(SessionClose),
    /// Root only: every user the daemon tracks.
    List,
    /// Root only: re-read the policy and apply it to every tracked user.
    Reload,
    /// Root only: a Prometheus text exposition of allocations, usage and counters.
    Metrics,
    /// Root only: set (or with `release: true`, reset) another user's allocation.
    SetUser {
        user: UserRef,
        #[serde(flatten)]
        args: ResizeArgs,
        #[serde(default, skip_serializing_if = "is_false")]
        release: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// The caller's history of events (OOM kills, throttling); root may name
    /// another user. With `follow`, the connection stays open and each new
    /// event follows as an [`Response::Event`] line.
    Events(EventsQuery),
    /// Turn the caller's terminal notices off or on, or back to the policy's
    /// default; root may name another user. Saved.
    Notices(NoticesChoice),
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    /// What kind of request this is.
    pub fn kind(&self) -> Kind {
        match self {
            Request::RequestResources(_) => Kind::RequestResources,
            Request::Release => Kind::Release,
            Request::Status { .. } => Kind::Status,
            Request::SessionOpen(_) => Kind::SessionOpen,
            Request::SessionClose(_) => Kind::SessionClose,
            Request::List => Kind::List,
            Request::SetUser { .. } => Kind::SetUser,
            Request::Reload => Kind::Reload,
            Request::Metrics => Kind::Metrics,
            Request::Events(_) => Kind::Events,
            Request::Notices(_) => Kind::Notices,
        }
    }
}

/// Every kind of [`Request`], and what the daemon must know of each before
/// it looks inside: its wire name, whether only root may send it, and
/// whether it is sent to change an allocation. Adding a request means adding
/// it here; the daemon's authorization, rate limits, metrics and dispatch
/// all read this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    RequestResources,
    Release,
    Status,
    SessionOpen,
    SessionClose,
    List,
    SetUser,
    Reload,
    Metrics,
    Events,
    Notices,
}

impl Kind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [Kind; 11] = [
        Kind::RequestResources,
        Kind::Release,
        Kind::Status,
        Kind::SessionOpen,
        Kind::SessionClose,
        Kind::List,
        Kind::SetUser,
        Kind::Reload,
        Kind::Metrics,
        Kind::Events,
        Kind::Notices,
    ];

    /// The request type's name on the wire (its `"type"`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::RequestResources => "request_resources",
            Kind::Release => "release",
            Kind::Status => "status",
            Kind::SessionOpen => "session_open",
            Kind::SessionClose => "session_close",
            Kind::List => "list",
            Kind::SetUser => "set_user",
            Kind::Reload => "reload",
            Kind::Metrics => "metrics",
            Kind::Events => "events",
            Kind::Notices => "notices",
        }
    }

    /// Only root may send it: session bookkeeping (the PAM module), acting
    /// on other users, and running the daemon.
    pub fn root_only(self) -> bool {
        match self {
            Kind::SessionOpen
            | Kind::SessionClose
            | Kind::List
            | Kind::SetUser
            | Kind::Reload
            | Kind::Metrics => true,
            Kind::RequestResources
            | Kind::Release
            | Kind::Status
            | Kind::Events
            | Kind::Notices => false,
        }
    }

    /// It is sent to change an allocation, so it reaches systemd: held to the
    /// smaller of the per-user rate limits.
    pub fn changes_limits(self) -> bool {
        match self {
            Kind::RequestResources | Kind::Release | Kind::SetUser | Kind::Reload => true,
            Kind::Status
            | Kind::SessionOpen
            | Kind::SessionClose
            | Kind::List
            | Kind::Metrics
            | Kind::Events
            | Kind::Notices => false,
        }
    }

    /// Its place in [`Kind::ALL`] (for tables indexed by kind).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The quantities of a resize. Missing fields keep their current value.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ResizeArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Value>,
    /// `CPUWeight` (issue 15); the four fair-share fields are optional on
    /// the wire: older clients leave them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<Value>,
    /// `MemoryLow`: a size, `0` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_low: Option<Value>,
    /// `MemorySwapMax`: a size, `0` for no swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Value>,
    /// How long the resize lasts (`"4h"`, or seconds); back to the default after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Value>,
}

/// A validated resize: each field `None` when not asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resize {
    pub cpu: Option<Cpus>,
    pub mem: Option<Bytes>,
    pub tasks: Option<Tasks>,
    pub duration: Option<Duration>,
    pub weight: Option<Weight>,
    pub io_weight: Option<Weight>,
    /// `0`: no guarantee.
    pub mem_low: Option<Bytes>,
    /// `0`: no swap.
    pub swap: Option<Bytes>,
}

impl Resize {
    /// True when no quantity is asked for.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.mem.is_none()
            && self.tasks.is_none()
            && self.weight.is_none()
            && self.io_weight.is_none()
            && self.mem_low.is_none()
            && self.swap.is_none()
    }
}

impl ResizeArgs {
    pub fn new(cpu: Option<Cpus>, mem: Option<Bytes>, tasks: Option<Tasks>) -> ResizeArgs {
        let to_value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
        ResizeArgs {
            cpu: cpu.map(|c| to_value(serde_json::to_value(c))),
            mem: mem.map(|m| to_value(serde_json::to_value(m))),
            tasks: tasks.map(|t| to_value(serde_json::to_value(t))),
            duration: None,
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        }
    }

    /// The same resize, with the fair-share fields.
    pub fn fair(
        mut self,
        weight: Option<Weight>,
        io_weight: Option<Weight>,
        mem_low: Option<Bytes>,
        swap: Option<Bytes>,
    ) -> ResizeArgs {
        let to_value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
        self.weight = weight.map(|w| to_value(serde_json::to_value(w)));
        self.io_weight = io_weight.map(|w| to_value(serde_json::to_value(w)));
        // sizes as numbers of bytes: `0` (none) is one
        self.mem_low = mem_low.map(|b| Value::from(b.get()));
        self.swap = swap.map(|b| match b == SWAP_MAX {
            true => Value::from("max"),
            false => Value::from(b.get()),
        });
        self
    }

    /// The same resize, lasting `d`.
    pub fn lasting(mut self, d: Option<Duration>) -> ResizeArgs {
        self.duration = d.map(|d| Value::from(crate::units::format_duration(d)));
        self
    }

    /// Validates the quantities; the error names the offending field.
    pub fn parse(&self) -> Result<Resize, String> {
        let duration = match &self.duration {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(parse_duration(s).map_err(|e| format!("duration: {e}"))?)
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) if secs > 0 => {
                    Some(parse_duration(&secs.to_string()).map_err(|e| format!("duration: {e}"))?)
                }
                _ => {
                    return Err(format!(
                        "duration: `{n}` must be a whole number of seconds above 0"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "duration: `{}` is not a duration such as 4h",
                    short_json(other)
                ));
            }
        };
        Ok(Resize {
            cpu: field("cpu", &self.cpu)?,
            mem: field("mem", &self.mem)?,
            tasks: field("tasks", &self.tasks)?,
            duration,
            weight: field("weight", &self.weight)?,
            io_weight: field("io_weight", &self.io_weight)?,
            mem_low: size_or_zero("mem_low", &self.mem_low)?,
            swap: match &self.swap {
                Some(Value::String(s)) if matches!(s.trim(), "max" | "infinity") => Some(SWAP_MAX),
                other => size_or_zero("swap", other)?,
            },
        })
    }
}

fn field<T: Quantity>(name: &str, v: &Option<Value>) -> Result<Option<T>, String> {
    let parsed = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.parse::<T>(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => T::from_u64(u),
            (None, Some(i), _) => Err(ValueError::NotPositive(i.to_string())),
            (None, None, Some(f)) => T::from_number(f),
            _ => Err(ValueError::NotANumber {
                input: n.to_string(),
                expected: T::EXPECTED,
            }),
        },
        Some(other) => Err(ValueError::NotANumber {
            input: short_json(other),
            expected: T::EXPECTED,
        }),
    };
    parsed.map(Some).map_err(|e| format!("{name}: {e}"))
}

/// A resize's `swap: max` (no limit, systemd's default): the largest size,
/// as the ledger compares swap (an unlimited maximum is `u64::MAX`).
pub const SWAP_MAX: Bytes = Bytes(u64::MAX);

/// A size where `0` means none (`mem_low`, `swap`).
fn size_or_zero(name: &str, v: &Option<Value>) -> Result<Option<Bytes>, String> {
    match v {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(Bytes(0))),
        Some(Value::String(s)) if s.trim() == "0" => Ok(Some(Bytes(0))),
        other => field(name, other),
    }
}

fn short_json(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Sent by the PAM module when a session opens.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOpen {
    pub uid: u32,
    /// The session process (the PAM caller, e.g. sshd's per-connection child).
    pub pid: u32,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub tty: Option<String>,
    #[serde(default)]
    pub rhost: Option<String>,
    /// logind's session id (`XDG_SESSION_ID`), when pam_systemd ran first.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Sent by the PAM module when a session closes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionClose {
    pub uid: u32,
    pub pid: u32,
    #[serde(default)]
    pub session_id: Option<String>,
}

/// An answer from the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Success(Success),
    Error(ErrorReply),
    StatusInfo(Box<StatusInfo>),
    UserList(UserList),
    /// The answer to `metrics`: Prometheus text exposition format.
    Metrics {
        text: String,
    },
    /// The answer to `events`.
    EventList(EventList),
    /// One new event, sent on an `events` connection with `follow`.
    Event(EventLine),
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Success {
    pub message: String,
    /// The allocation now in force, for requests that change one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Limits>,
    /// Host capacity after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// `session_open`: the line an interactive login shows (the PAM module
    /// passes it to the login program), e.g. `fairshare: 2 CPUs, 8G memory,
    /// 4096 tasks on this host (you may resize up to 8 CPUs, 32G:
    /// fairshare-ctl resize)`. Absent when the policy turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_line: Option<String>,
}

/// Why a request was refused, with what would have been allowed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub error: String,
    #[serde(default)]
    pub code: ErrorCode,
    /// The caller's maximum, when the request exceeded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Limits>,
    /// The host's free capacity, when the request exceeded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed or had a bad value.
    BadRequest,
    /// Only root may do this.
    PermissionDenied,
    /// The request exceeds the caller's policy maximum.
    ExceedsMax,
    /// The host has not enough free capacity.
    NoCapacity,
    /// The user is exempt from fairshare limits.
    Exempt,
    /// No such user.
    UnknownUser,
    /// systemd refused or could not be reached.
    Systemd,
    /// The change was made but could not be saved to disk.
    Persistence,
    /// The policy on disk has errors (reload); the old one stays in force.
    InvalidPolicy,
    /// Too many requests from this user; try again a little later.
    RateLimited,
    /// fairshared could not be reached (written by the client, never sent
    /// by the daemon).
    Unreachable,
    #[default]
    Internal,
}

/// A set of limits as shown to people and programs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub cpu: Cpus,
    pub mem: Bytes,
    /// The soft memory limit (MemoryHigh), when the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_high: Option<Bytes>,
    pub tasks: Tasks,
    /// `CPUWeight=` (v1: `cpu.shares`), when the policy sets one (issue 15);
    /// unset is systemd's default, 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
    /// `IOWeight=`, when the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<Weight>,
    /// `MemoryLow=`: memory protected from other users' pressure, when the
    /// policy gives a guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_low: Option<Bytes>,
    /// `MemorySwapMax=` (`0`: no swap), when the policy limits swap; unset
    /// is systemd's default, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Bytes>,
}

impl Limits {
    /// The ceilings alone, with systemd's defaults for the fair-share
    /// settings (weights 100, no guarantee, swap unlimited).
    pub fn new(cpu: Cpus, mem: Bytes, mem_high: Option<Bytes>, tasks: Tasks) -> Limits {
        Limits {
            cpu,
            mem,
            mem_high,
            tasks,
            weight: None,
            io_weight: None,
            mem_low: None,
            swap: None,
        }
    }

    /// The fair-share settings, for people: `weight 200, IO weight 100,
    /// 1G guaranteed, no swap` (empty when none is set).
    pub fn fair_parts(&self) -> Vec<String> {
        fair_parts(self.weight, self.io_weight, self.mem_low, self.swap)
    }
}

/// `weight 200, IO weight 50, 1G guaranteed, no swap`: the fair-share
/// fields given, for a person.
fn fair_parts(
    weight: Option<Weight>,
    io_weight: Option<Weight>,
    mem_low: Option<Bytes>,
    swap: Option<Bytes>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = weight {
        out.push(format!("weight {w}"));
    }
    if let Some(w) = io_weight {
        out.push(format!("IO weight {w}"));
    }
    if let Some(l) = mem_low {
        out.push(format!("{} guaranteed", l.human()));
    }
    match swap {
        Some(s) if s.get() == 0 => out.push("no swap".into()),
        Some(s) if s == SWAP_MAX => out.push("swap unlimited".into()),
        Some(s) => out.push(format!("swap {}", s.human())),
        None => {}
    }
    out
}

impl fmt::Display for Limits {
    /// `2 CPUs, 8G memory (soft 7.2G), 4096 tasks`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = if self.cpu.millis() == 1000 {
            "CPU"
        } else {
            "CPUs"
        };
        write!(f, "{} {cpus}, {} memory", self.cpu, self.mem)?;
        if let Some(h) = self.mem_high {
            write!(f, " (soft {})", h.human())?;
        }
        write!(f, ", {} tasks", self.tasks)?;
        for p in self.fair_parts() {
            write!(f, ", {p}")?;
        }
        Ok(())
    }
}

/// Host capacity, after overcommit, and how much of it is allocated.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_total: Cpus,
    pub mem_total: Bytes,
    pub cpu_allocated: Cpus,
    pub mem_allocated: Bytes,
    pub cpu_free: Cpus,
    pub mem_free: Bytes,
}

/// Where a user's allocation comes from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The policy default for this user.
    Default,
    /// The user resized their own allocation.
    Resize,
    /// Root set this user's allocation.
    Admin,
    /// The user is exempt: fairshare does not limit them.
    Exempt,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::Resize => "resize",
            Source::Admin => "admin",
            Source::Exempt => "exempt",
        })
    }
}

/// Live usage of a user's slice, where the host provides it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_current: Option<u64>,
    /// Total CPU time used by the slice since it started, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_nsec: Option<u64>,
    /// CPU time used over a recent window the daemon measured (it samples
    /// every tracked slice now and then); absent until it has two samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_recent: Option<CpuRecent>,
    /// How often the slice was held back by its CPU quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_periods: Option<u64>,
    /// Processes killed because the slice reached its memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// CPU time a slice used over a recent window: `used_nsec / window_nsec` is
/// how many CPUs it kept busy on average.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuRecent {
    pub used_nsec: u64,
    pub window_nsec: u64,
}

impl CpuRecent {
    /// CPUs busy on average over the window (`None` for an empty window).
    pub fn cpus(&self) -> Option<f64> {
        (self.window_nsec > 0).then(|| self.used_nsec as f64 / self.window_nsec as f64)
    }
}

/// One open session as the daemon knows it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rhost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Unix time the session opened.
    pub opened_at: u64,
    /// The session process's start time (clock ticks after boot, from
    /// `/proc/PID/stat`), to tell it from a later process with the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

/// The answer to `status` (and one row of `list`). The first two fields are
/// the original protocol's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusInfo {
    /// `null` for exempt users, who have no fairshare limits.
    pub allocated_cpu: Option<Cpus>,
    pub allocated_mem: Option<Bytes>,
    #[serde(default)]
    pub allocated_tasks: Option<Tasks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_mem_high: Option<Bytes>,
    /// The allocation's fair-share settings, for people (`weight 200`,
    /// `256M guaranteed`, `no swap`; issue 15).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fair: Vec<String>,
    /// Settings of this user's that this host's cgroup layout cannot enforce,
    /// each with why (`mem_low 256M: has no effect on cgroup v1 ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced: Vec<String>,
    /// The CPU quota the user may use now while the host is idle, when
    /// bursting lifted it above `allocated_cpu` (issue 15); absent
    /// otherwise (and from daemons before bursting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bursting: Option<Cpus>,
    pub uid: u32,
    pub user: String,
    pub slice: String,
    pub source: Source,
    /// Whether the daemon currently holds limits on this user's slice.
    pub active: bool,
    pub default: Option<Limits>,
    pub max: Option<Limits>,
    /// The policy parts that shaped this user's limits, in order applied.
    #[serde(default)]
    pub policy: Vec<String>,
    pub sessions: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_list: Vec<SessionInfo>,
    /// Unix time a leased resize lapses back to the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Something the user should know, e.g. that their resize expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// Root's setting for this user (`fairshare-ctl set`), when one is in
    /// force: binding on the user's own resizes and releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_setting: Option<RootSetting>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// What root should know about the daemon itself (a broken policy file
    /// it does not run on). Only in root's answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `status`: the user's last events, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// `status`: whether the user's terminals get notices, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_notices: Option<NoticesSetting>,
}

/// Root's setting for a user: the fields root named (the others come from
/// the user's own resize or the default), and when it ends.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Tasks>,
    /// The fair-share fields root named (older daemons leave them out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_low: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Bytes>,
    /// Unix time it ends (root's `--for`); `None` until root resets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl fmt::Display for RootSetting {
    /// `cpu 0.5 CPUs, mem 2G`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu {
            parts.push(format!("cpu {c} CPUs"));
        }
        if let Some(m) = self.mem {
            parts.push(format!("mem {m}"));
        }
        if let Some(t) = self.tasks {
            parts.push(format!("tasks {t}"));
        }
        parts.extend(fair_parts(
            self.weight,
            self.io_weight,
            self.mem_low,
            self.swap,
        ));
        f.write_str(&parts.join(", "))
    }
}

/// What `events` asks for.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsQuery {
    /// Another user's (root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRef>,
    /// Only events at or after this Unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Keep the connection open and send each new event as it happens.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow: bool,
}

/// Terminal notices: off, on, or as the policy says.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Terminal {
    Off,
    On,
    Default,
}

impl Terminal {
    /// The user's own choice (`None`: the policy's default).
    pub fn choice(self) -> Option<bool> {
        match self {
            Terminal::Off => Some(false),
            Terminal::On => Some(true),
            Terminal::Default => None,
        }
    }
}

/// What `notices` asks for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NoticesChoice {
    pub terminal: Terminal,
    /// Another user's (root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRef>,
}

/// Whether a user's terminals get notices, and whose choice that is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticesSetting {
    pub enabled: bool,
    /// `user` (`fairshare-ctl notices off|on`) or `policy` (its default).
    pub source: NoticesSource,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoticesSource {
    User,
    Policy,
}

impl fmt::Display for NoticesSetting {
    /// `on (the policy's default)`, `off (your choice)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.enabled { "on" } else { "off" };
        match self.source {
            NoticesSource::User => write!(f, "{state} (set with fairshare-ctl notices)"),
            NoticesSource::Policy => write!(f, "{state} (the policy's default)"),
        }
    }
}

/// The answer to `events`: a user's history, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventList {
    pub uid: u32,
    pub user: String,
    pub events: Vec<Event>,
    pub terminal_notices: NoticesSetting,
}

/// One event as it happens (`events` with `follow`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventLine {
    pub uid: u32,
    pub user: String,
    pub event: Event,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UserList {
    pub users: Vec<StatusInfo>,
    pub capacity: Capacity,
    /// What root should know: a broken policy file fairshared does not run
    /// on, or that it is still catching up with logind after a start (users
    /// may be missing from the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Response {
    pub fn success(message: impl Into<String>) -> Response {
        Response::Success(Success {
            message: message.into(),
            ..Success::default()
        })
    }

    pub fn error(code: ErrorCode, error: impl Into<String>) -> Response {
        Response::Error(ErrorReply {
            error: error.into(),
            code,
            max: None,
            capacity: None,
        })
    }
}

/// Parses one request line. The error is ready to send back as it is.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "malformed request: not valid UTF-8 (byte {})",
            e.valid_up_to()
        )
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "empty request; send one JSON object on one line, e.g. {\"type\":\"status\"}".into(),
        );
    }
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // the request types are the variants listed with request_resources;
        // an unknown value inside a request (`"terminal":"loud"`) is malformed
        if msg.starts_with("unknown variant") && msg.contains("`request_resources`") {
            format!(
                "unknown request type: {msg}",
                msg = msg.replace("unknown variant", "got")
            )
        } else if msg.starts_with("missing field `type`") {
            "malformed request: missing field `type` (e.g. {\"type\":\"status\"})".to_string()
        } else {
            format!("malformed request: {msg}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root's set of fair-share fields alone reads as what root set (it
    /// read "root's set: ," before), and an unlimited swap reads so.
    #[test]
    fn roots_set_names_every_field_it_has() {
        let r = RootSetting {
            swap: Some(SWAP_MAX),
            ..RootSetting::default()
        };
        assert_eq!(r.to_string(), "swap unlimited");
        let r = RootSetting {
            cpu: Some(Cpus::whole(2)),
            weight: Some(Weight::new(200).unwrap()),
            mem_low: Some(Bytes(1 << 30)),
            swap: Some(Bytes(0)),
            ..RootSetting::default()
        };
        assert_eq!(
            r.to_string(),
            "cpu 2 CPUs, weight 200, 1G guaranteed, no swap"
        );
    }

    #[test]
    fn reference_requests_parse() {
        let r = parse_request(br#"{"type":"request_resources","cpu":4,"mem":"16G"}"#).unwrap();
        let Request::RequestResources(args) = r else {
            panic!("wrong variant")
        };
        let resize = args.parse().unwrap();
        assert_eq!(resize.cpu, Some(Cpus::whole(4)));
        assert_eq!(resize.mem, Some(Bytes(16 << 30)));
        assert_eq!(resize.tasks, None);
        assert_eq!(
            parse_request(br#"{"type":"release"}"#).unwrap(),
            Request::Release
        );
        assert_eq!(
            parse_request(b"{\"type\":\"status\"}\n").unwrap(),
            Request::Status { user: None }
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = parse_request(br#"{"type":"release","uid":0,"user":"root","x":[1,2]}"#).unwrap();
        assert_eq!(r, Request::Release);
        let r = parse_request(br#"{"type":"request_resources","cpu":2,"uid":1002}"#).unwrap();
        assert!(matches!(r, Request::RequestResources(_)));
    }

    #[test]
    fn malformed_requests_get_readable_errors() {
        let e = parse_request(br#"{"type":"explode"}"#).unwrap_err();
        assert!(e.starts_with("unknown request type"), "{e}");
        assert!(e.contains("request_resources"), "{e}");
        let e = parse_request(br#"{"cpu":2}"#).unwrap_err();
        assert!(e.contains("missing field `type`"), "{e}");
        let e = parse_request(b"\xff\xfe").unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        let e = parse_request(b"   ").unwrap_err();
        assert!(e.contains("empty request"), "{e}");
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse_request(deep.as_bytes()).is_err());
        let e = parse_request(br#"{"type":"session_open","uid":4294967296,"pid":1}"#).unwrap_err();
        assert!(e.starts_with("malformed request"), "{e}");
    }

    #[test]
    fn bad_quantities_name_the_field() {
        let parse = |s: &str| match parse_request(s.as_bytes()).unwrap() {
            Request::RequestResources(a) => a.parse(),
            _ => panic!("wrong variant"),
        };
        let e = parse(r#"{"type":"request_resources","cpu":-1}"#).unwrap_err();
        assert!(
            e.starts_with("cpu:") && e.contains("greater than zero"),
            "{e}"
        );
        let e = parse(r#"{"type":"request_resources","mem":"8X"}"#).unwrap_err();
        assert!(e.starts_with("mem:") && e.contains("unknown unit"), "{e}");
        let e = parse(r#"{"type":"request_resources","cpu":1e308}"#).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = parse(r#"{"type":"request_resources","mem":18446744073709551616}"#).unwrap_err();
        assert!(e.starts_with("mem:"), "{e}");
        let e = parse(r#"{"type":"request_resources","tasks":[1]}"#).unwrap_err();
        assert!(e.starts_with("tasks:"), "{e}");
        let e = parse(r#"{"type":"request_resources","cpu":"NaN"}"#).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        assert!(parse_request(br#"{"type":"request_resources","cpu":1e400}"#).is_err());
    }

    #[test]
    fn answers_keep_the_reference_shape() {
        let r = Response::success("ok");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"type":"success","message":"ok"}"#
        );
        let v: Value = serde_json::to_value(Response::error(ErrorCode::ExceedsMax, "no")).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"], "no");
        let status = StatusInfo {
            fair: Vec::new(),
            unenforced: Vec::new(),
            bursting: None,
            allocated_cpu: Some(Cpus::whole(4)),
            allocated_mem: Some(Bytes(16 << 30)),
            allocated_tasks: Some(Tasks(4096)),
            allocated_mem_high: None,
            uid: 1001,
            user: "alice".into(),
            slice: "user-1001.slice".into(),
            source: Source::Resize,
            active: true,
            default: None,
            max: None,
            policy: vec![],
            sessions: 1,
            session_list: vec![],
            expires_at: None,
            notice: None,
            root_setting: None,
            usage: Usage::default(),
            capacity: None,
            warnings: Vec::new(),
            events: vec![],
            terminal_notices: None,
        };
        let v = serde_json::to_value(Response::StatusInfo(Box::new(status.clone()))).unwrap();
        assert_eq!(v["type"], "status_info");
        assert_eq!(v["allocated_cpu"], 4);
        assert_eq!(v["allocated_mem"], "16G");
        let back: Response = serde_json::from_value(v).unwrap();
        assert_eq!(back, Response::StatusInfo(Box::new(status)));
    }

    #[test]
    fn resize_args_round_trip() {
        let args = ResizeArgs::new(Some(Cpus::from_millis(1500)), Some(Bytes(3 << 30)), None);
        let req = Request::RequestResources(args);
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"type":"request_resources","cpu":1.5,"mem":"3G"}"#);
        let Request::RequestResources(a) = parse_request(line.as_bytes()).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(a.parse().unwrap().cpu, Some(Cpus::from_millis(1500)));
    }

    #[test]
    fn durations_on_the_wire() {
        let p = |s: &str| match parse_request(s.as_bytes()).unwrap() {
            Request::RequestResources(a) => a.parse(),
            _ => panic!("wrong variant"),
        };
        let r = p(r#"{"type":"request_resources","cpu":6,"duration":"4h"}"#).unwrap();
        assert_eq!(r.duration, Some(Duration::from_secs(4 * 3600)));
        let r = p(r#"{"type":"request_resources","cpu":6,"duration":90}"#).unwrap();
        assert_eq!(r.duration, Some(Duration::from_secs(90)));
        assert!(
            p(r#"{"type":"request_resources","cpu":6,"duration":"soon"}"#)
                .unwrap_err()
                .starts_with("duration:")
        );
        assert!(
            p(r#"{"type":"request_resources","cpu":6,"duration":-5}"#)
                .unwrap_err()
                .starts_with("duration:")
        );
        let args = ResizeArgs::new(Some(Cpus::whole(2)), None, None)
            .lasting(Some(Duration::from_secs(5400)));
        assert_eq!(
            serde_json::to_string(&args).unwrap(),
            r#"{"cpu":2,"duration":"1h30m"}"#
        );
        assert_eq!(
            parse_request(br#"{"type":"reload"}"#).unwrap(),
            Request::Reload
        );
    }

    #[test]
    fn set_user_flattens_quantities() {
        let r =
            parse_request(br#"{"type":"set_user","user":"bob","cpu":3,"mem":"3G","force":true}"#)
                .unwrap();
        let Request::SetUser {
            user, args, force, ..
        } = r
        else {
            panic!("wrong variant")
        };
        assert_eq!(user, UserRef::Name("bob".into()));
        assert!(force);
        assert_eq!(args.parse().unwrap().mem, Some(Bytes(3 << 30)));
        let r = parse_request(br#"{"type":"set_user","user":1002,"release":true}"#).unwrap();
        assert!(matches!(
            r,
            Request::SetUser {
                user: UserRef::Uid(1002),
                release: true,
                ..
            }
        ));
    }

    #[test]
    fn kinds_are_named_as_on_the_wire() {
        let one_of_each = [
            Request::RequestResources(ResizeArgs::default()),
            Request::Release,
            Request::Status { user: None },
            Request::SessionOpen(SessionOpen::default()),
            Request::SessionClose(SessionClose::default()),
            Request::List,
            Request::SetUser {
                user: UserRef::Uid(1),
                args: ResizeArgs::default(),
                release: false,
                force: false,
            },
            Request::Reload,
            Request::Metrics,
            Request::Events(EventsQuery::default()),
            Request::Notices(NoticesChoice {
                terminal: Terminal::Off,
                user: None,
            }),
        ];
        let kinds: Vec<Kind> = one_of_each.iter().map(Request::kind).collect();
        assert_eq!(kinds, Kind::ALL, "Kind::ALL lists every request once");
        for (req, kind) in one_of_each.iter().zip(Kind::ALL) {
            let v = serde_json::to_value(req).unwrap();
            assert_eq!(v["type"], kind.name(), "{kind:?}");
            assert_eq!(Kind::ALL[kind.index()], kind);
            // and a request typed by that name parses back to this kind
            let line = serde_json::to_string(req).unwrap();
            assert_eq!(parse_request(line.as_bytes()).unwrap().kind(), kind);
        }
        let root_only: Vec<&str> = Kind::ALL
            .iter()
            .filter(|k| k.root_only())
            .map(|k| k.name())
            .collect();
        assert_eq!(
            root_only,
            [
                "session_open",
                "session_close",
                "list",
                "set_user",
                "reload",
                "metrics"
            ]
        );
        // what a user may send to change their own allocation
        let user_changes: Vec<&str> = Kind::ALL
            .iter()
            .filter(|k| k.changes_limits() && !k.root_only())
            .map(|k| k.name())
            .collect();
        assert_eq!(user_changes, ["request_resources", "release"]);
    }

    #[test]
    fn events_and_notices_on_the_wire() {
        assert_eq!(
            parse_request(br#"{"type":"events"}"#).unwrap(),
            Request::Events(EventsQuery::default())
        );
        let r =
            parse_request(br#"{"type":"events","user":"bob","since":5,"follow":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Events(EventsQuery {
                user: Some(UserRef::Name("bob".into())),
                since: Some(5),
                follow: true
            })
        );
        let r = parse_request(br#"{"type":"notices","terminal":"off"}"#).unwrap();
        assert_eq!(
            r,
            Request::Notices(NoticesChoice {
                terminal: Terminal::Off,
                user: None
            })
        );
        assert_eq!(Terminal::Default.choice(), None);
        assert_eq!(Terminal::On.choice(), Some(true));
        let e = parse_request(br#"{"type":"notices","terminal":"loud"}"#).unwrap_err();
        assert!(e.starts_with("malformed request"), "{e}");
        // the login line is an addition to success: old answers still read
        let old: Response = serde_json::from_str(r#"{"type":"success","message":"m"}"#).unwrap();
        assert_eq!(old, Response::success("m"));
        let with = Response::Success(Success {
            login_line: Some("fairshare: 2 CPUs".into()),
            ..Success::default()
        });
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["login_line"], "fairshare: 2 CPUs");
        let s = NoticesSetting {
            enabled: false,
            source: NoticesSource::User,
        };
        assert_eq!(s.to_string(), "off (set with fairshare-ctl notices)");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse_request(&bytes);
            }

            #[test]
            fn decoder_never_panics_on_near_json(
                t in "(request_resources|release|status|session_open|set_user|list|x)",
                cpu in "(-?[0-9]{0,20}(\\.[0-9]{0,5})?|\"[^\"]{0,10}\"|null|true|\\[\\]|\\{\\})",
                mem in "(\"[0-9.]{0,6}[KMGTXB]{0,2}\"|[0-9e.+-]{0,12}|null)",
            ) {
                let line = format!(r#"{{"type":"{t}","cpu":{cpu},"mem":{mem},"uid":1,"pid":2,"user":"u"}}"#);
                if let Ok(Request::RequestResources(a)) = parse_request(line.as_bytes()) {
                    let _ = a.parse();
                }
            }
        }
    }
}
