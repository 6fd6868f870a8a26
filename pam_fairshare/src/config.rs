//! Module arguments, as written on the PAM line:
//!
//! ```text
//! session required pam_fairshare.so [socket=PATH] [timeout_ms=N] [fail=open|closed] [skip_uid_below=N] [debug]
//! ```
//!
//! Unknown or malformed arguments are reported (to syslog) and otherwise
//! ignored: a typo on a PAM line must never lock people out.

use std::path::PathBuf;
use std::time::Duration;

/// Default deadline for the whole round trip to fairshared.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Users below this uid pass straight through by default (root always does),
/// matching the policy's default `exempt.uid_below`.
pub const DEFAULT_SKIP_UID_BELOW: u32 = 1000;

/// What to do when fairshared cannot be reached in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// Let the login proceed, with a warning in the log (the default).
    Open,
    /// Refuse the login, telling the user why.
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub fail: Fail,
    pub skip_uid_below: u32,
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: PathBuf::from(fairshare_proto::wire::DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
            fail: Fail::Open,
            skip_uid_below: DEFAULT_SKIP_UID_BELOW,
            debug: false,
        }
    }
}

/// The module's arguments and what they do (also the man page's list).
pub const ARGUMENTS: &[(&str, &str)] = &[
    (
        "socket=PATH",
        "Where fairshared listens. Default: /run/fairshare.sock.",
    ),
    (
        "timeout_ms=N",
        "One deadline, in milliseconds, for connecting, sending and getting the answer. Default: 1000 (1 to 60000).",
    ),
    (
        "fail=open|closed",
        "What to do when fairshared cannot be reached in time, or cannot apply the limits. open (the default): the login goes ahead, with a warning in the journal. closed: the login is refused, and the user is told why. Root always gets in. Users NSS does not know pass through either way (a warning with closed). A user this login knows but fairshared does not (its name service differs, e.g. LDAP or NIS it cannot reach) gets only the host-wide default, with a warning either way.",
    ),
    (
        "skip_uid_below=N",
        "Users below this uid (and root) pass straight through without asking fairshared. Default: 1000, like the policy's exempt.uid_below; lower both together.",
    ),
    (
        "debug",
        "Also log the routine decisions: which users pass through and why, and each logout fairshared confirms (without it: the allocation at login, and every problem).",
    ),
];

/// Parses the arguments; returns the config and a warning for each argument
/// that was not understood.
pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> (Config, Vec<String>) {
    let mut c = Config::default();
    let mut warnings = Vec::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        match (key, value) {
            ("debug", None) => c.debug = true,
            ("socket", Some(v)) if v.starts_with('/') => c.socket = PathBuf::from(v),
            ("timeout_ms", Some(v)) => match v.parse::<u64>() {
                Ok(ms) if (1..=60_000).contains(&ms) => c.timeout = Duration::from_millis(ms),
                _ => warnings.push(format!("ignoring `{arg}`: timeout_ms must be 1 to 60000")),
            },
            ("fail", Some("open")) => c.fail = Fail::Open,
            ("fail", Some("closed")) => c.fail = Fail::Closed,
            ("skip_uid_below", Some(v)) => match v.parse::<u32>() {
                Ok(n) => c.skip_uid_below = n,
                Err(_) => warnings.push(format!("ignoring `{arg}`: not a uid")),
            },
            _ => warnings.push(format!(
                "ignoring unknown argument `{arg}` (known: {})",
                ARGUMENTS
                    .iter()
                    .map(|(a, _)| *a)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    (c, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let (c, w) = parse([]);
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.timeout, Duration::from_millis(1000));
        assert_eq!(c.fail, Fail::Open);
    }

    #[test]
    fn every_argument() {
        let (c, w) = parse([
            "socket=/tmp/x.sock",
            "timeout_ms=250",
            "fail=closed",
            "skip_uid_below=500",
            "debug",
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.fail, Fail::Closed);
        assert_eq!(c.skip_uid_below, 500);
        assert!(c.debug);
    }

    #[test]
    fn bad_arguments_warn_and_change_nothing() {
        let (c, w) = parse([
            "fail=maybe",
            "timeout_ms=0",
            "timeout_ms=x",
            "socket=relative",
            "frobnicate",
            "debug=1",
        ]);
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[0].contains("fail=maybe"));
    }
}
