//! `fairshare-ctl`: sends one request to fairshared and shows the answer.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fairshare_ctl::cli::{Cli, Command, MetricsArgs, NoticesState};
use fairshare_ctl::textfile;
use fairshare_ctl::{events, format, top};
use fairshare_policy::Policy;
use fairshare_proto::Client;
use fairshare_proto::wire::{
    ErrorCode, EventsQuery, NoticesChoice, Request, ResizeArgs, Response, Terminal, UserRef,
};

const EXIT_REFUSED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;
/// A policy with errors (sysexits EX_CONFIG), as `fairshared --check`.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Output into a pipe that closed (`fairshare-ctl events --json | head`)
    // ends the program quietly, as for other command-line tools, instead
    // of a panic in `println!`.
    // SAFETY: at the start of main, before any other thread; SIG_DFL is
    // not a handler, so nothing runs in signal context.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
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
        c @ Command::Status { .. } => Request::Status {
            user: c.status_user().map(|u| UserRef::Name(u.to_string())),
        },
        Command::Resize(s) => {
            if s.cpu.is_none()
                && s.mem.is_none()
                && s.tasks.is_none()
                && s.weight.is_none()
                && s.io_weight.is_none()
                && s.mem_low.is_none()
                && s.swap.is_none()
            {
                eprintln!(
                    "fairshare-ctl: say what to resize: --cpu N, --mem SIZE, --tasks N, --weight N, --io-weight N, --mem-low SIZE and/or --swap SIZE"
                );
                return ExitCode::from(2);
            }
            Request::RequestResources(
                ResizeArgs::new(s.cpu, s.mem, s.tasks)
                    .fair(s.weight, s.io_weight, s.mem_low, s.swap)
                    .lasting(s.duration),
            )
        }
        Command::Release(_) => Request::Release,
        Command::Reload(_) => Request::Reload,
        Command::Metrics(_) => Request::Metrics,
        Command::List(_) => Request::List,
        Command::Events(e) => Request::Events(EventsQuery {
            user: e.user.as_ref().map(|u| UserRef::Name(u.clone())),
            since: e.since.map(|d| events::now().saturating_sub(d.as_secs())),
            follow: e.follow,
        }),
        // no state: the setting, as `events` answers it (with no event:
        // only those from the next second on)
        Command::Notices(n) if n.state.is_none() => Request::Events(EventsQuery {
            user: n.user.as_ref().map(|u| UserRef::Name(u.clone())),
            since: Some(events::now().saturating_add(1)),
            follow: false,
        }),
        Command::Notices(n) => Request::Notices(NoticesChoice {
            terminal: match n.state {
                Some(NoticesState::Off) => Terminal::Off,
                Some(NoticesState::On) => Terminal::On,
                Some(NoticesState::Default) | None => Terminal::Default,
            },
            user: n.user.as_ref().map(|u| UserRef::Name(u.clone())),
        }),
        Command::Set {
            user,
            sizes,
            default,
            force,
        } => {
            if !default
                && sizes.cpu.is_none()
                && sizes.mem.is_none()
                && sizes.tasks.is_none()
                && sizes.weight.is_none()
                && sizes.io_weight.is_none()
                && sizes.mem_low.is_none()
                && sizes.swap.is_none()
            {
                eprintln!(
                    "fairshare-ctl: say what to set: --cpu N, --mem SIZE, --tasks N, --weight N, --io-weight N, --mem-low SIZE, --swap SIZE, or --default"
                );
                return ExitCode::from(2);
            }
            Request::SetUser {
                user: UserRef::Name(user.clone()),
                args: ResizeArgs::new(sizes.cpu, sizes.mem, sizes.tasks)
                    .fair(sizes.weight, sizes.io_weight, sizes.mem_low, sizes.swap)
                    .lasting(sizes.duration),
                release: *default,
                force: *force,
            }
        }
    };
    let conn = cli.connection();
    let timeout = Duration::from_secs_f64(conn.timeout.clamp(0.05, 3600.0));
    let client = Client::new(&conn.socket, timeout);
    let root = nix::unistd::geteuid().is_root();
    if let Request::Events(EventsQuery { follow: true, .. }) = &request {
        return follow(&client, &request, conn.json, root);
    }
    let response = match client.call(&request) {
        Ok(r) => r,
        Err(e) => {
            let text = format::unreachable(&e, root);
            match conn.json {
                true => println!("{}", format::error_json(&text)),
                false => eprintln!("fairshare-ctl: {text}"),
            }
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
        Response::Error(e) if e.code == ErrorCode::PermissionDenied && root_only(&request) => {
            if !conn.json {
                eprintln!("fairshare-ctl: {}", format::root_only(cli.command.name()));
            }
            ExitCode::from(EXIT_REFUSED)
        }
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
            print!("{}", format::status(&s, nix::unistd::getuid().as_raw()));
            ExitCode::SUCCESS
        }
        Response::UserList(l) => {
            print!("{}", format::list(&l));
            ExitCode::SUCCESS
        }
        Response::EventList(l) => {
            match &cli.command {
                Command::Notices(_) => println!("{}", events::notices_setting(&l)),
                _ => print!("{}", events::list(&l, nix::unistd::getuid().as_raw())),
            }
            ExitCode::SUCCESS
        }
        Response::Event(l) => {
            println!("{}", events::followed(&l, nix::unistd::getuid().as_raw()));
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

/// Whether only root may send this request (its refusal then names the
/// subcommand, not the wire request).
fn root_only(r: &Request) -> bool {
    r.kind().root_only()
}

/// `events --follow`: the history, then each new event as it comes, until
/// fairshared hangs up (it stops) or the user presses Ctrl-C. With `json`,
/// one JSON object per line.
fn follow(client: &Client, request: &Request, json: bool, root: bool) -> ExitCode {
    use std::io::Write as _;
    let (first, rest) = match client.follow(request) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("fairshare-ctl: {}", format::unreachable(&e, root));
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let reader = nix::unistd::getuid().as_raw();
    let show = |r: &Response| {
        let text = match (json, r) {
            (true, r) => serde_json::to_string(r).unwrap_or_default() + "\n",
            (false, Response::EventList(l)) => events::list(l, reader),
            (false, Response::Event(l)) => events::followed(l, reader) + "\n",
            (false, other) => format!("{other:?}\n"),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    };
    if let Response::Error(e) = &first {
        eprintln!("fairshare-ctl: {}", e.error);
        return ExitCode::from(EXIT_REFUSED);
    }
    if show(&first).is_err() {
        return ExitCode::SUCCESS;
    }
    for r in rest {
        match r {
            Ok(r) => {
                if show(&r).is_err() {
                    // stdout closed (a pipe to head): done
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                eprintln!("fairshare-ctl: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    }
    eprintln!("fairshare-ctl: fairshared closed the connection (stopped or restarted)");
    ExitCode::from(EXIT_UNREACHABLE)
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
        top::Error::Daemon(c) => format::unreachable(c, nix::unistd::geteuid().is_root()),
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
