//! `fairshare-ctl`: sends one request to fairshared and shows the answer.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fairshare_ctl::cli::{Cli, Command, MetricsArgs};
use fairshare_ctl::format;
use fairshare_ctl::textfile;
use fairshare_ctl::top;
use fairshare_policy::Policy;
use fairshare_proto::wire::{Request, ResizeArgs, Response, UserRef};
use fairshare_proto::{Client, ClientError};

const EXIT_REFUSED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;
/// A policy with errors (sysexits EX_CONFIG), as `fairshared --check`.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Command::Check { policy } => {
            let c = &cli.conn;
            if c.json || c.socket.is_some() || c.timeout.is_some() {
                eprintln!(
                    "fairshare-ctl: check reads the policy files itself and talks to no daemon: leave out --socket, --json and --timeout"
                );
                return ExitCode::from(2);
            }
            return check(policy);
        }
        Command::Top {
            interval,
            once,
            sort,
            reverse,
            ..
        } => {
            let conn = cli.connection();
            let opts = top::Options {
                interval: *interval,
                // JSON is for scripts: one frame
                once: *once || conn.json,
                sort: *sort,
                reverse: *reverse,
                json: conn.json,
            };
            return run_top(&conn, opts);
        }
        Command::Status { user, .. } => Request::Status {
            user: user.as_ref().map(|u| UserRef::Name(u.clone())),
        },
        Command::Resize(s) => {
            if s.cpu.is_none() && s.mem.is_none() && s.tasks.is_none() {
                eprintln!(
                    "fairshare-ctl: say what to resize: --cpu N, --mem SIZE and/or --tasks N"
                );
                return ExitCode::from(2);
            }
            Request::RequestResources(ResizeArgs::new(s.cpu, s.mem, s.tasks).lasting(s.duration))
        }
        Command::Release(_) => Request::Release,
        Command::Reload(_) => Request::Reload,
        Command::Metrics(_) => Request::Metrics,
        Command::List(_) => Request::List,
        Command::Set {
            user,
            sizes,
            default,
            force,
        } => {
            if !default && sizes.cpu.is_none() && sizes.mem.is_none() && sizes.tasks.is_none() {
                eprintln!(
                    "fairshare-ctl: say what to set: --cpu N, --mem SIZE, --tasks N, or --default"
                );
                return ExitCode::from(2);
            }
            Request::SetUser {
                user: UserRef::Name(user.clone()),
                args: ResizeArgs::new(sizes.cpu, sizes.mem, sizes.tasks).lasting(sizes.duration),
                release: *default,
                force: *force,
            }
        }
    };
    let conn = cli.connection();
    let timeout = Duration::from_secs_f64(conn.timeout.clamp(0.05, 3600.0));
    let client = Client::new(&conn.socket, timeout);
    let response = match client.call(&request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairshare-ctl: {}", unreachable_hint(&e));
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if conn.json {
        match serde_json::to_string_pretty(&response) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("fairshare-ctl: {e}"),
        }
    }
    match response {
        Response::Error(e) => {
            eprintln!("fairshare-ctl: {}", e.error);
            ExitCode::from(EXIT_REFUSED)
        }
        _ if conn.json => ExitCode::SUCCESS,
        Response::Success(s) => {
            println!("{}", s.message);
            ExitCode::SUCCESS
        }
        Response::StatusInfo(s) => {
            print!("{}", format::status(&s));
            ExitCode::SUCCESS
        }
        Response::UserList(l) => {
            print!("{}", format::list(&l));
            ExitCode::SUCCESS
        }
        Response::Metrics { text } => match &cli.command {
            Command::Metrics(MetricsArgs {
                output: Some(path),
                per_user,
                group,
                ..
            }) => write_metrics(path, &text, *per_user, group.as_deref()),
            _ => {
                print!("{text}");
                ExitCode::SUCCESS
            }
        },
    }
}

/// One line saying what went wrong and what to do about it.
fn unreachable_hint(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning { path, .. } => format!(
            "fairshared is not running (nothing listens on {}); start it with: sudo systemctl start fairshared",
            path.display()
        ),
        ClientError::Connect { path, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!(
                "permission denied connecting to {}; the socket should be mode 0666 (is fairshared.socket installed as shipped?)",
                path.display()
            )
        }
        ClientError::Timeout { .. } => format!("{e}; check it with: systemctl status fairshared"),
        other => other.to_string(),
    }
}

/// `metrics --output FILE`: the host-wide series (every user's too with
/// `per_user`), readable by `group` when given, else by all.
fn write_metrics(
    path: &std::path::Path,
    text: &str,
    per_user: bool,
    group: Option<&str>,
) -> ExitCode {
    let gid = match group.map(|g| (g, nix::unistd::Group::from_name(g))) {
        None => None,
        Some((_, Ok(Some(g)))) => Some(g.gid),
        Some((g, Ok(None))) => {
            eprintln!(
                "fairshare-ctl: there is no group {g:?} on this host; name the group node_exporter runs as (--group)"
            );
            return ExitCode::from(2);
        }
        Some((g, Err(e))) => {
            eprintln!("fairshare-ctl: cannot look up the group {g:?}: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let text = match per_user {
        true => text.to_string(),
        false => textfile::host_wide(text),
    };
    let access = textfile::FileAccess {
        gid,
        mode: if gid.is_some() { 0o640 } else { 0o644 },
    };
    match textfile::write(path, text.as_bytes(), access) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairshare-ctl: cannot write the metrics: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// `fairshare-ctl top`: root sees everyone (`list`), anyone else their own row.
fn run_top(conn: &fairshare_ctl::cli::Connection, opts: top::Options) -> ExitCode {
    let timeout = Duration::from_secs_f64(conn.timeout.clamp(0.05, 3600.0));
    let everyone = nix::unistd::geteuid().is_root();
    let sampler = top::Sampler::new(Client::new(&conn.socket, timeout), everyone);
    let result = if opts.once {
        top::once(&sampler, &opts).map(|text| print!("{text}"))
    } else {
        top::term::run(&sampler, opts, top_hint)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairshare-ctl: {}", top_hint(&e));
            ExitCode::from(match e {
                top::Error::Daemon(_) => EXIT_UNREACHABLE,
                top::Error::Refused(_) => EXIT_REFUSED,
                top::Error::Terminal(_) => 1,
            })
        }
    }
}

fn top_hint(e: &top::Error) -> String {
    match e {
        top::Error::Daemon(c) => unreachable_hint(c),
        top::Error::Refused(why) => why.clone(),
        top::Error::Terminal(io) => format!(
            "cannot use this terminal for the live view ({io}); try: fairshare-ctl top --once"
        ),
    }
}

/// `check`: the same report and exit status as `fairshared --check`, without
/// root and without a daemon.
fn check(path: &std::path::Path) -> ExitCode {
    match Policy::load(path) {
        Ok(p) => {
            for f in p.files() {
                println!("loaded {}", f.display());
            }
            for line in p.summary() {
                println!("  {line}");
            }
            let user = |n: &str| matches!(nix::unistd::User::from_name(n), Ok(Some(_)));
            let group = |n: &str| matches!(nix::unistd::Group::from_name(n), Ok(Some(_)));
            for w in p.unknown_names(user, group) {
                println!("{w}");
            }
            for line in p.overlaps(group_members) {
                println!("{line}");
            }
            println!("policy OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fairshare-ctl: the policy has errors:\n{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The members a group entry lists (users whose primary group it is are not
/// listed there, and so not found).
fn group_members(name: &str) -> Vec<String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => g.mem,
        _ => Vec::new(),
    }
}
