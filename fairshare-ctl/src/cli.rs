//! The command line of `fairshare-ctl` (also used for its man page and shell
//! completions).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use fairshare_proto::units::{Bytes, Cpus, Tasks, Weight};

#[derive(Parser, Debug)]
#[command(
    name = "fairshare-ctl",
    version,
    about = "See and resize your fairshare allocation (CPU, memory, tasks)",
    long_about = "See and resize your fairshare allocation: the CPU, memory and task limits of your \
user slice on this host. Resizes stay within the maximum the admin's policy allows you and the \
host's free capacity. Root can also list every user and set anyone's allocation.",
    after_help = "Examples:\n  fairshare-ctl status\n  fairshare-ctl resize --cpu 4 --mem 16G\n  fairshare-ctl resize --cpu 8 --for 4h\n  fairshare-ctl release\n  fairshare-ctl events\n  fairshare-ctl notices off\n  sudo fairshare-ctl list\n  sudo fairshare-ctl set alice --cpu 8 --mem 32G\n\nExit status: 0 done; 1 refused by fairshared (the reason is on stderr); 2 bad usage; 3 fairshared unreachable or not answering; 78 (check) the policy has errors.",
    propagate_version = true
)]
pub struct Cli {
    /// Given before the subcommand (`fairshare-ctl --json status`).
    #[command(flatten)]
    pub conn: Conn,

    #[command(subcommand)]
    pub command: Command,
}

/// How to reach fairshared and how to show its answer. Accepted before the
/// subcommand and after it, by every subcommand that talks to fairshared
/// (so not by `check`, which reads files only). These are not `global`
/// options: clap would then give them to `check` too, in its help, man page
/// and completions.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct Conn {
    /// Socket fairshared listens on [default: /run/fairshare.sock, or FAIRSHARE_SOCKET]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print the daemon's answer as JSON
    #[arg(long)]
    pub json: bool,

    /// Seconds to wait for fairshared [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// The options in force: those after the subcommand win over those before
/// it, which win over `FAIRSHARE_SOCKET` and the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub socket: PathBuf,
    pub json: bool,
    pub timeout: f64,
}

impl Cli {
    pub fn connection(&self) -> Connection {
        let sub = self.command.conn().cloned().unwrap_or_default();
        let env = std::env::var_os(fairshare_proto::wire::SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Connection {
            socket: sub
                .socket
                .or_else(|| self.conn.socket.clone())
                .or(env)
                .unwrap_or_else(|| PathBuf::from(fairshare_proto::wire::DEFAULT_SOCKET)),
            json: self.conn.json || sub.json,
            timeout: sub.timeout.or(self.conn.timeout).unwrap_or(10.0),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show your allocation, defaults, maximum, sessions and usage
    Status {
        /// Another user's, by name or uid (root only; your own is fine)
        #[arg(value_name = "USER", conflicts_with = "user")]
        name: Option<String>,
        /// The same as USER
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resize your allocation (fields not given keep their value)
    #[command(
        visible_alias = "request",
        long_about = "Resize your allocation (fields not given keep their value). Each field you give \
must be within your maximum (or, for a field root set for you, at most root's value) and at least \
0.1 CPU, 64M memory or 32 tasks (or your default, where that is less); the host must have the \
capacity free. With leases.max_duration in the policy, a resize above your default is a lease: it \
ends at most that long after you first went above the default; resizing again during it keeps \
its end, and release starts afresh."
    )]
    Resize(Sizes),
    /// Go back to the policy default (or to root's setting for you, while one is in force)
    Release(Conn),
    /// Every user fairshared tracks, with usage (root only); a FAIR SHARE column
    /// (weights, memory guarantees, swap) when anyone has such a setting
    List(Conn),
    /// Set a user's allocation, or reset it with --default (root only)
    #[command(
        long_about = "Set a user's allocation, or reset it with --default (root only). The fields \
given may exceed the user's maximum and bind the user until set USER --default or the end of \
--for: the user's own resizes of those fields may go lower but not higher, and their release and \
last logout go back to this value, not the policy default."
    )]
    Set {
        /// User name or uid
        user: String,
        #[command(flatten)]
        sizes: Sizes,
        /// Back to the policy default
        #[arg(long, conflicts_with_all = ["cpu", "mem", "tasks", "force", "duration"])]
        default: bool,
        /// Allow the set even beyond the host's free capacity
        #[arg(long)]
        force: bool,
    },
    /// Re-read the policy and apply it to everyone (root only; as systemctl reload fairshared)
    Reload(Conn),
    /// Print allocations, usage and counters in Prometheus text format (root only)
    #[command(
        long_about = "Print allocations, usage and counters in Prometheus text format (root only).\n\n\
With --output, write them to a file for node_exporter's textfile collector instead, as \
fairshare-metrics.service does every minute. The file holds only host-wide series (capacity, \
what is allocated in all, users tracked, request and refusal counters) unless --per-user is \
given: node_exporter serves it to anyone who can reach its port, and every user's usage is \
theirs. The file is replaced at once (written under a new random name, then renamed), so \
node_exporter never reads half of it; a symlink, hard link or file planted under its name is \
replaced, never written through, and the directory is reached without following symlinks \
that anyone but root could have made.\n\n\
fairshare-metrics.service (enabled with systemctl enable --now fairshare-metrics.timer) takes \
the file from FAIRSHARE_METRICS_FILE (default /var/lib/prometheus/node-exporter/fairshare.prom) \
and these options from FAIRSHARE_METRICS_OPTIONS, both set in /etc/default/fairshare-metrics."
    )]
    Metrics(MetricsArgs),
    /// What your limits did: processes killed at your memory limit, time held at your CPU limit
    #[command(
        long_about = "What your limits did: processes the kernel killed because your processes \
reached their memory limit, and times your CPU limit held your processes back for most of a \
minute (or reclaim above your soft memory limit stalled them). fairshared keeps your last 32 \
events for a week. When one happens, your terminals (ssh -t logins) get a notice like this, \
once per burst:\n\n\
  fairshare: process 4242 (make) was killed: your processes reached their memory limit of 8G.\n\
    You may raise it up to 32G: fairshare-ctl resize --mem 16G\n\
    (fairshare-ctl events lists what happened; fairshare-ctl notices off stops these messages)\n\n\
Process names are shown escaped (\\x1b for an escape character, \\n for a line break): they \
are chosen by whoever ran the process.",
        after_help = "Examples:\n  fairshare-ctl events\n  fairshare-ctl events --since 1h\n  fairshare-ctl events --follow\n  sudo fairshare-ctl events --user alice --json"
    )]
    Events(EventsArgs),
    /// Turn the notices on your terminals off or on (saved; events are recorded either way)
    #[command(
        long_about = "Turn the notices fairshare writes to your terminals off or on, or back to \
the policy's default (notices.terminal, on unless the admin says otherwise). The choice is \
saved and kept across logins and restarts. Events are recorded either way: fairshare-ctl \
events lists them. Terminals closed with `mesg n` get no notices either.",
        after_help = "Examples:\n  fairshare-ctl notices\n  fairshare-ctl notices off\n  fairshare-ctl notices on\n  sudo fairshare-ctl notices default --user alice"
    )]
    Notices(NoticesArgs),
    /// A live view of every user's CPU, memory and limits (your own as a user)
    #[command(
        long_about = "A live view, refreshed every few seconds: one row per user with the CPUs they use now \
(over the last interval) as a share of their allocation and of the host, memory used against their limit, \
CPU throttling, OOM kills, sessions and where their allocation comes from (default, resize, root, or a lease \
with the time left); above it the host's size, how busy it is, and what fairshare has allocated and left free. \
Root sees every user; anyone else sees their own row and the host. Fits an 80-column terminal.\n\n\
Keys: q quit, s next sort, c/a/m/t/o/n sort by CPU/share of allocation/memory/throttling/OOM kills/name, \
r reverse, + and - slower and faster, space refresh now."
    )]
    Top {
        /// Seconds between refreshes [default: 2; with --once: 1]
        #[arg(long, short = 'd', value_name = "SECONDS", value_parser = parse_interval)]
        interval: Option<f64>,
        /// Print one frame and exit (two samples one interval apart, so CPU figures are real); --json prints the figures as JSON and implies --once
        #[arg(long)]
        once: bool,
        /// Sort by cpu (in use now), share (of the allocation), mem, throttle, oom or name
        #[arg(long, value_enum, default_value = "cpu", hide_possible_values = true)]
        sort: crate::top::model::SortKey,
        /// Smallest first
        #[arg(long)]
        reverse: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check a policy file or directory without a daemon (as fairshared --check)
    #[command(
        long_about = "Check a policy file or directory without a daemon and without root, as \
fairshared --check does: print what the policy means, warn about users and groups that do not \
exist and about groups that set the same field to different values, and say which group gives \
each user in several groups which field. Every error is printed with its file, line and field; \
the exit status is then 78.",
        after_help = "Exit status: 0 the policy is valid (warnings may have been printed); 78 it has errors."
    )]
    Check {
        /// Policy file or directory
        #[arg(default_value = fairshare_policy::DEFAULT_POLICY)]
        policy: PathBuf,
    },
}

impl Command {
    /// The user `status` asks about, given by name (`status USER`) or with
    /// `--user`.
    pub fn status_user(&self) -> Option<&str> {
        match self {
            Command::Status { name, user, .. } => name.as_deref().or(user.as_deref()),
            _ => None,
        }
    }

    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status { .. } => "status",
            Command::Resize(_) => "resize",
            Command::Release(_) => "release",
            Command::List(_) => "list",
            Command::Set { .. } => "set",
            Command::Reload(_) => "reload",
            Command::Metrics(_) => "metrics",
            Command::Events(_) => "events",
            Command::Notices(_) => "notices",
            Command::Top { .. } => "top",
            Command::Check { .. } => "check",
        }
    }

    /// The connection options given after the subcommand.
    pub fn conn(&self) -> Option<&Conn> {
        match self {
            Command::Status { conn, .. }
            | Command::Release(conn)
            | Command::List(conn)
            | Command::Reload(conn) => Some(conn),
            Command::Metrics(m) => Some(&m.conn),
            Command::Events(e) => Some(&e.conn),
            Command::Notices(n) => Some(&n.conn),
            Command::Top { conn, .. } => Some(conn),
            Command::Resize(sizes) | Command::Set { sizes, .. } => Some(&sizes.conn),
            Command::Check { .. } => None,
        }
    }
}

#[derive(ClapArgs, Debug, Clone)]
pub struct EventsArgs {
    /// Keep watching and print each new event as it happens (Ctrl-C ends it)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events of the last DURATION, e.g. 1h, 2d
    #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
    pub since: Option<Duration>,
    /// Another user's (root only)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `notices off|on|default`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticesState {
    /// No notices on your terminals
    Off,
    /// Notices on your terminals
    On,
    /// As the policy says (notices.terminal)
    Default,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct NoticesArgs {
    /// off (no notices on your terminals), on, or default (the policy's choice); without it, show the setting
    #[arg(value_enum, hide_possible_values = true)]
    pub state: Option<NoticesState>,
    /// Another user's (root only)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct MetricsArgs {
    /// Write to FILE (an absolute path) instead of printing, replacing it at once
    #[arg(long, short = 'o', value_name = "FILE", value_parser = absolute)]
    pub output: Option<PathBuf>,
    /// With --output: also write each user's allocation, usage and sessions (labels user, uid)
    ///
    /// Off by default; needs --group: the file is then readable only by root and that group
    /// (mode 0640).
    #[arg(long, requires = "group")]
    pub per_user: bool,
    /// With --output: the group that may read the file (mode 0640; without it 0644)
    ///
    /// node_exporter's group on Debian is prometheus.
    #[arg(long, value_name = "GROUP", requires = "output")]
    pub group: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

fn absolute(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match p.is_absolute() && p.file_name().is_some() {
        true => Ok(p),
        false => Err(format!(
            "{s}: give the file's absolute path, e.g. /var/lib/prometheus/node-exporter/fairshare.prom"
        )),
    }
}

#[derive(ClapArgs, Debug, Clone)]
pub struct Sizes {
    /// CPUs, e.g. 4 or 1.5
    #[arg(long, value_name = "N", value_parser = parse::<Cpus>)]
    pub cpu: Option<Cpus>,
    /// Memory, e.g. 16G or 512M (powers of 1024)
    #[arg(long, value_name = "SIZE", value_parser = parse::<Bytes>)]
    pub mem: Option<Bytes>,
    /// Tasks (processes and threads), e.g. 4096
    #[arg(long, value_name = "N", value_parser = parse::<Tasks>)]
    pub tasks: Option<Tasks>,
    /// CPU weight (CPUWeight, 1-10000; 100 is systemd's default): your share of contended CPU
    #[arg(long, value_name = "N", value_parser = parse::<Weight>)]
    pub weight: Option<Weight>,
    /// IO weight (IOWeight, 1-10000): your share of contended disk time (BFQ or io.cost only)
    #[arg(long, value_name = "N", value_parser = parse::<Weight>)]
    pub io_weight: Option<Weight>,
    /// Memory guarantee (MemoryLow), e.g. 1G; 0 for none. Within the maximum and what is free of the host's total for guarantees (capacity.mem_low); held while logged in (cgroup v2 only)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_or_zero)]
    pub mem_low: Option<Bytes>,
    /// Swap (MemorySwapMax), e.g. 2G; 0 for none; max for no limit, where your maximum has none (cgroup v2 only)
    #[arg(long, value_name = "SIZE", value_parser = parse_swap)]
    pub swap: Option<Bytes>,
    /// How long the resize lasts, e.g. 30m, 4h, 2d; then back to the default (within a lease: at most what is left of it)
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_lease)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub conn: Conn,
}

fn parse_size_or_zero(s: &str) -> Result<Bytes, String> {
    match s.trim() {
        "0" => Ok(Bytes(0)),
        s => parse::<Bytes>(s),
    }
}

/// A swap size, `0` for none, or `max` (also `infinity`) for no limit
/// (sent as [`fairshare_proto::wire::SWAP_MAX`]).
fn parse_swap(s: &str) -> Result<Bytes, String> {
    match s.trim() {
        "max" | "infinity" => Ok(fairshare_proto::wire::SWAP_MAX),
        s => parse_size_or_zero(s),
    }
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    fairshare_proto::units::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let (lo, hi) = (crate::top::MIN_INTERVAL, crate::top::MAX_INTERVAL);
    match s.trim().parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds from {lo} to {hi}, e.g. 2 or 0.5"
        )),
    }
}

fn parse<T: std::str::FromStr<Err = fairshare_proto::ValueError>>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|e| e.to_string())
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        command().debug_assert();
        let c = Cli::try_parse_from(["fairshare-ctl", "resize", "--cpu", "1.5", "--mem", "3G"])
            .unwrap();
        match c.command {
            Command::Resize(s) => {
                assert_eq!(s.cpu, Some(Cpus::from_millis(1500)));
                assert_eq!(s.mem, Some(Bytes(3 << 30)));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["fairshare-ctl", "request", "--cpu", "2", "--json"]).unwrap();
        assert!(c.connection().json);
        assert!(matches!(c.command, Command::Resize(_)));
        let e = Cli::try_parse_from(["fairshare-ctl", "resize", "--mem", "8X"]).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let c =
            Cli::try_parse_from(["fairshare-ctl", "resize", "--cpu", "6", "--for", "4h"]).unwrap();
        match c.command {
            Command::Resize(s) => assert_eq!(s.duration, Some(Duration::from_secs(4 * 3600))),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["fairshare-ctl", "resize", "--cpu", "6", "--for", "soon"])
                .is_err()
        );
        for args in [
            &["fairshare-ctl", "status", "bob"][..],
            &["fairshare-ctl", "status", "--user", "bob"],
        ] {
            match Cli::try_parse_from(args).unwrap().command {
                c @ Command::Status { .. } => assert_eq!(c.status_user(), Some("bob"), "{args:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["fairshare-ctl", "status", "bob", "--user", "al"]).is_err());
        let c = Cli::try_parse_from([
            "fairshare-ctl",
            "top",
            "--once",
            "-d",
            "0.5",
            "--sort",
            "mem",
        ])
        .unwrap();
        match c.command {
            Command::Top {
                interval,
                once,
                sort,
                reverse,
                ..
            } => {
                assert_eq!(interval, Some(0.5));
                assert!(once && !reverse);
                assert_eq!(sort, crate::top::model::SortKey::Mem);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["fairshare-ctl", "top", "--sort", "colour"]).is_err());
        for bad in ["0", "-1", "NaN", "inf", "soon", "0.1"] {
            assert!(
                Cli::try_parse_from(["fairshare-ctl", "top", "-d", bad]).is_err(),
                "{bad}"
            );
        }
        let c = Cli::try_parse_from(["fairshare-ctl", "set", "bob", "--default"]).unwrap();
        assert!(matches!(c.command, Command::Set { default: true, .. }));
        assert!(
            Cli::try_parse_from(["fairshare-ctl", "set", "bob", "--default", "--cpu", "2"])
                .is_err()
        );
    }

    #[test]
    fn connection_options_before_or_after_the_subcommand_but_not_for_check() {
        let conn = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.connection());
        let c = conn(&["fairshare-ctl", "--json", "status"]).unwrap();
        assert!(c.json);
        assert_eq!(c.timeout, 10.0);
        let c = conn(&[
            "fairshare-ctl",
            "--socket",
            "/a",
            "status",
            "--json",
            "--socket",
            "/b",
        ])
        .unwrap();
        assert_eq!((c.socket, c.json), (PathBuf::from("/b"), true));
        let c = conn(&["fairshare-ctl", "resize", "--cpu", "2", "--timeout", "3"]).unwrap();
        assert_eq!(c.timeout, 3.0);
        let c = conn(&["fairshare-ctl", "set", "bob", "--default", "--json"]).unwrap();
        assert!(c.json);
        for sub in ["release", "list", "reload", "metrics", "events"] {
            assert!(
                conn(&["fairshare-ctl", sub, "--json"]).unwrap().json,
                "{sub}"
            );
        }
        // check reads files and talks to no daemon: no such options there
        assert!(conn(&["fairshare-ctl", "check", "--json", "p.yaml"]).is_err());
        assert!(conn(&["fairshare-ctl", "check", "--socket", "/s"]).is_err());
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("check")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            !help.contains("--json") && !help.contains("--socket") && !help.contains("--timeout"),
            "{help}"
        );
    }

    #[test]
    fn events_and_notices() {
        let c = Cli::try_parse_from([
            "fairshare-ctl",
            "events",
            "--follow",
            "--since",
            "1h",
            "--user",
            "bob",
            "--json",
        ])
        .unwrap();
        assert!(c.connection().json);
        match c.command {
            Command::Events(e) => {
                assert!(e.follow);
                assert_eq!(e.since, Some(Duration::from_secs(3600)));
                assert_eq!(e.user.as_deref(), Some("bob"));
            }
            other => panic!("{other:?}"),
        }
        for (word, want) in [
            ("off", NoticesState::Off),
            ("on", NoticesState::On),
            ("default", NoticesState::Default),
        ] {
            match Cli::try_parse_from(["fairshare-ctl", "notices", word])
                .unwrap()
                .command
            {
                Command::Notices(n) => assert_eq!(n.state, Some(want)),
                other => panic!("{other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["fairshare-ctl", "notices", "maybe"]).is_err());
        // without a state: show the setting
        match Cli::try_parse_from(["fairshare-ctl", "notices"])
            .unwrap()
            .command
        {
            Command::Notices(n) => assert_eq!(n.state, None),
            other => panic!("{other:?}"),
        }
        let help = command()
            .find_subcommand_mut("events")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("You may raise it up to 32G: fairshare-ctl resize --mem 16G"),
            "the help shows a notice: {help}"
        );
    }

    #[test]
    fn metrics_options_go_together() {
        let m = |args: &[&str]| {
            let mut v = vec!["fairshare-ctl", "metrics"];
            v.extend(args);
            Cli::try_parse_from(v).map(|c| match c.command {
                Command::Metrics(m) => m,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(m(&[]).unwrap().output, None);
        let a = m(&[
            "--output",
            "/x/f.prom",
            "--per-user",
            "--group",
            "prometheus",
        ])
        .unwrap();
        assert!(a.per_user);
        assert_eq!(a.group.as_deref(), Some("prometheus"));
        // per-user series only into a file someone chose to let read
        assert!(m(&["--output", "/x/f.prom", "--per-user"]).is_err());
        assert!(m(&["--group", "prometheus"]).is_err());
        assert!(m(&["--output", "f.prom"]).is_err());
        assert!(m(&["--output", "/"]).is_err());
    }
}
