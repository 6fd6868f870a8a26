//! Module arguments, as written on the PAM line:
//!
//! ```text
//! session required pam_fairshare.so [socket=PATH] [timeout_ms=N] [adopt_timeout_ms=N] [fail=open|closed] [skip_uid_below=N] [login_line=off|SERVICE,...] [debug]
//! ```
//!
//! Unknown or malformed arguments are reported (to syslog) and otherwise
//! ignored: a typo on a PAM line must never lock people out.

use std::path::PathBuf;
use std::time::Duration;

/// Default deadline for the whole round trip to fairshared.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default deadline when the session's process is outside every user's
/// slice (no logind session: cron and other stacks without pam_systemd),
/// which fairshared moves into the user's slice before it answers.
pub const DEFAULT_ADOPT_TIMEOUT: Duration = Duration::from_millis(5000);
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
    pub adopt_timeout: Duration,
    pub fail: Fail,
    pub skip_uid_below: u32,
    /// Which services show fairshared's login line (`login_line=`).
    pub login_line: fairshare_proto::login::Setting,
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: PathBuf::from(fairshare_proto::wire::DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
            adopt_timeout: DEFAULT_ADOPT_TIMEOUT,
            fail: Fail::Open,
            skip_uid_below: DEFAULT_SKIP_UID_BELOW,
            login_line: fairshare_proto::login::Setting::default(),
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
        "adopt_timeout_ms=N",
        "The deadline instead of timeout_ms when the session's process is outside every user's slice: no logind session (cron, and any PAM stack without pam_systemd). fairshared moves such a process into the user's slice before it answers, and nobody waits at a terminal for it. Default: 5000 (1 to 60000).",
    ),
    (
        "fail=open|closed",
        "What to do when fairshared cannot be reached in time, or cannot apply the limits. open (the default): the login goes ahead with what systemd's drop-ins give it (the policy default fairshared wrote, the user's own default, or no fairshare limit for a user it exempts), with a warning in the journal that says which. closed: the login is refused, and the user is told why. Root always gets in. Users NSS does not know pass through either way (a warning with closed). A user this login knows but fairshared does not (its name service differs, e.g. LDAP or NIS it cannot reach) gets only the host-wide default, with a warning either way. A session whose process is outside every user's slice (no logind session, as cron's) never runs outside the user's slice: when fairshared is late or fails to move it there, the session is refused whatever fail= says, since fairshared may still move the process (and not the children it started) later; it goes ahead outside the slice, without limits, only with fail=open and fairshared not running at all.",
    ),
    (
        "skip_uid_below=N",
        "Users below this uid (and root) pass straight through without asking fairshared. Default: 1000, like the policy's exempt.uid_below; lower both together.",
    ),
    (
        "login_line=off|SERVICE[,SERVICE...]",
        "Which PAM services show fairshare's line at an interactive login, such as \"fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)\". Default: sshd,login. sshd shows it only where it shows the message of the day (a shell without a command: not for ssh host cmd, scp, sftp or rsync, nor with ~/.hushlogin); login passes PAM_SILENT with ~/.hushlogin, and then it is not sent. off: never. The policy's notices.login_line: false turns it off for the whole host.",
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
            ("adopt_timeout_ms", Some(v)) => match v.parse::<u64>() {
                Ok(ms) if (1..=60_000).contains(&ms) => c.adopt_timeout = Duration::from_millis(ms),
                _ => warnings.push(format!(
                    "ignoring `{arg}`: adopt_timeout_ms must be 1 to 60000"
                )),
            },
            ("fail", Some("open")) => c.fail = Fail::Open,
            ("fail", Some("closed")) => c.fail = Fail::Closed,
            ("login_line", Some(v)) => match fairshare_proto::login::Setting::parse(v) {
                Ok(s) => c.login_line = s,
                Err(e) => warnings.push(format!("ignoring `{arg}`: {e}")),
            },
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
            "adopt_timeout_ms=700",
            "fail=closed",
            "skip_uid_below=500",
            "login_line=off",
            "debug",
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.adopt_timeout, Duration::from_millis(700));
        assert_eq!(c.fail, Fail::Closed);
        assert_eq!(c.skip_uid_below, 500);
        assert_eq!(c.login_line, fairshare_proto::login::Setting::Off);
        assert!(c.debug);
        let (c, w) = parse(["login_line=sshd,su-l"]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            c.login_line,
            fairshare_proto::login::Setting::Services(vec!["sshd".into(), "su-l".into()])
        );
    }

    #[test]
    fn bad_arguments_warn_and_change_nothing() {
        let (c, w) = parse([
            "fail=maybe",
            "timeout_ms=0",
            "timeout_ms=x",
            "adopt_timeout_ms=0",
            "socket=relative",
            "frobnicate",
            "debug=1",
            "login_line=a b",
        ]);
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 8, "{w:?}");
        assert!(w[0].contains("fail=maybe"));
    }
}
