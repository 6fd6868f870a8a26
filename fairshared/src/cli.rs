//! The command line of `fairshared` (also used to generate its man page).

use std::path::PathBuf;

use clap::Parser;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fairshare";

#[derive(Parser, Debug)]
#[command(
    name = "fairshared",
    version,
    about = "Fair CPU, memory and task limits for every user of a shared host",
    long_about = "fairshared gives every user of a shared host fair CPU, memory and task limits, \
applied to their systemd slice (user-UID.slice) when they log in (through pam_fairshare), \
and lets users resize their own allocation within the policy (fairshare-ctl). \
It must run as root; limits it set stay in force when it stops.",
    after_help = "Examples:\n  fairshared                                 # /etc/fairshare/policy.d/, /run/fairshare.sock\n  fairshared policy.yaml /tmp/fairshare.sock # the original quick start (one fairshared per host)\n  fairshared --check /etc/fairshare/policy.d # validate a policy and exit\n\nEnvironment:\n  RUST_LOG   log filter, e.g. debug or fairshared=trace (default info)"
)]
pub struct Args {
    /// Policy file, or directory of *.yaml files merged in name order
    #[arg(value_name = "POLICY")]
    pub policy_arg: Option<PathBuf>,

    /// Socket to listen on
    #[arg(value_name = "SOCKET")]
    pub socket_arg: Option<PathBuf>,

    /// Policy file or directory [default: /etc/fairshare/policy.d/]
    #[arg(long, value_name = "PATH", conflicts_with = "policy_arg")]
    pub policy: Option<PathBuf>,

    /// Socket to listen on [default: /run/fairshare.sock]
    #[arg(long, value_name = "PATH", conflicts_with = "socket_arg")]
    pub socket: Option<PathBuf>,

    /// Where allocations and sessions are saved
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Check the policy, print what it means and what systemd's drop-ins
    /// for user slices do to it, and exit (78 on error)
    #[arg(long, conflicts_with_all = ["write_defaults", "remove_defaults", "reload"])]
    pub check: bool,

    /// Write the policy default as systemd drop-ins for user slices
    /// (/etc/systemd/system/user-.slice.d/40-fairshare.conf, and one per user
    /// whose default differs or who is exempt) and exit; a bad policy
    /// changes no file (78). Run by the package and `make install`
    #[arg(long, conflicts_with_all = ["remove_defaults", "reload"])]
    pub write_defaults: bool,

    /// Remove every drop-in fairshared wrote and the runtime values it set
    /// on user slices, then `systemctl daemon-reload`: slices get systemd's
    /// own defaults back. Run at uninstall
    #[arg(long, conflicts_with = "reload")]
    pub remove_defaults: bool,

    /// Ask the running daemon to reload its policy and wait for the answer:
    /// exits non-zero with the errors on stderr when the policy is refused
    /// (the old one stays in force). The unit's ExecReload=
    #[arg(long)]
    pub reload: bool,
}

impl Args {
    pub fn policy_path(&self) -> PathBuf {
        self.policy
            .clone()
            .or_else(|| self.policy_arg.clone())
            .unwrap_or_else(|| PathBuf::from(fairshare_policy::DEFAULT_POLICY))
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| self.socket_arg.clone())
            .unwrap_or_else(|| PathBuf::from(fairshare_proto::wire::DEFAULT_SOCKET))
    }
}

/// The clap command, for man pages and completions.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_paths_as_in_the_quick_start() {
        let a = Args::parse_from(["fairshared", "p.yaml", "/tmp/s.sock"]);
        assert_eq!(a.policy_path(), PathBuf::from("p.yaml"));
        assert_eq!(a.socket_path(), PathBuf::from("/tmp/s.sock"));
        let a = Args::parse_from(["fairshared"]);
        assert_eq!(a.policy_path(), PathBuf::from("/etc/fairshare/policy.d/"));
        assert_eq!(a.socket_path(), PathBuf::from("/run/fairshare.sock"));
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/fairshare"));
        let a = Args::parse_from(["fairshared", "--check", "x.yaml"]);
        assert!(a.check);
        assert_eq!(a.policy_path(), PathBuf::from("x.yaml"));
        command().debug_assert();
    }
}
