//! The command line of `fairshare-ctl` (also used for its man page and shell
//! completions).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use fairshare_proto::units::{Bytes, Cpus, Tasks};

#[derive(Parser, Debug)]
#[command(
    name = "fairshare-ctl",
    version,
    about = "See and resize your fairshare allocation (CPU, memory, tasks)",
    long_about = "See and resize your fairshare allocation: the CPU, memory and task limits of your \
user slice on this host. Resizes stay within the maximum the admin's policy allows you and the \
host's free capacity. Root can also list every user and set anyone's allocation.",
    after_help = "Examples:\n  fairshare-ctl status\n  fairshare-ctl resize --cpu 4 --mem 16G\n  fairshare-ctl resize --cpu 8 --for 4h\n  fairshare-ctl release\n  sudo fairshare-ctl list\n  sudo fairshare-ctl set alice --cpu 8 --mem 32G\n\nExit status: 0 done; 1 refused by fairshared (the reason is on stderr); 2 bad usage; 3 fairshared unreachable or not answering.",
    propagate_version = true
)]
pub struct Cli {
    /// Socket fairshared listens on
    #[arg(long, global = true, value_name = "PATH", env = fairshare_proto::wire::SOCKET_ENV,
          default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Print the daemon's answer as JSON
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for fairshared
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show your allocation, defaults, maximum, sessions and usage
    Status {
        /// Another user's (root only)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Resize your allocation (fields not given keep their value)
    #[command(visible_alias = "request")]
    Resize(Sizes),
    /// Go back to the policy default
    Release,
    /// Every user fairshared tracks, with usage (root only)
    List,
    /// Set a user's allocation, or reset it with --default (root only)
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
    Reload,
    /// Print allocations, usage and counters in Prometheus text format (root only)
    Metrics,
    /// A live view of every user's CPU, memory and limits (your own as a user)
    #[command(
        long_about = "A live view, refreshed every few seconds: one row per user with the CPUs they use now \
(over the last interval) as a share of their allocation and of the host, memory used against their limit, \
CPU throttling, OOM kills, sessions and where their allocation comes from (default, resize, root, or a lease \
with the time left); above it the host's size and business and what fairshare has allocated and left free. \
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
        /// Sort by
        #[arg(long, value_enum, default_value = "cpu")]
        sort: crate::top::model::SortKey,
        /// Smallest first
        #[arg(long)]
        reverse: bool,
    },
    /// Check a policy file or directory without a daemon (as fairshared --check)
    Check {
        /// Policy file or directory
        #[arg(default_value = fairshare_policy::DEFAULT_POLICY)]
        policy: PathBuf,
    },
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
    /// How long the resize lasts, e.g. 30m, 4h, 2d; then back to the default
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_lease)]
    pub duration: Option<Duration>,
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
        assert!(c.json);
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
}
