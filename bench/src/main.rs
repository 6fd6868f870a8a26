//! `fairshare-bench`: the measuring half of `script/bench`.
//!
//! `script/bench` boots the test host, installs fairshare and calls the
//! subcommands below, inside the container (where the daemon's socket and
//! the container's system bus are) or on the host (ssh, the memory figure).
//! Every measuring subcommand writes one JSON file of raw samples into the
//! results directory (`--dir`), a serde struct its module owns; `report`
//! reads them back into the table and `bench/RESULTS.md`. Every figure is
//! compared with a floor measured in the same run, interleaved with it where
//! possible, because the machines this runs on are noisy. Where a figure
//! depends on the path a login takes through fairshared, it checks the path
//! from outside the daemon (`busmon`: the calls that reach systemd, seen on
//! the system bus).
//!
//! Adding a figure: a module with a subcommand that measures, a serde struct
//! for its samples implementing `report::Samples` (its file in the results
//! directory), and a `report` function that reads the struct back into rows
//! and notes, called from `report::collect`; then a step in script/bench.

mod alloc;
mod busmon;
mod idle;
mod load;
mod login;
mod loops;
mod memory;
mod oom;
mod pam;
mod report;
mod startup;
mod stats;
mod storm;
mod throughput;
mod view;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// An error with a message.
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

#[derive(Parser)]
#[command(
    name = "fairshare-bench",
    about = "fairshare's benchmark helpers (see script/bench)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Login overhead: `pamtester SVC USER open_session close_session`, the
    /// stack with the module and without, interleaved, for a first login and
    /// for an additional session.
    PamLoop {
        /// Users with no other session (no user manager either), in turn
        /// (comma-separated).
        #[arg(long, value_delimiter = ',')]
        first: Vec<String>,
        /// Users with another session fairshared counts (e.g. lingering,
        /// their user manager running), in turn (comma-separated).
        #[arg(long, value_delimiter = ',')]
        additional: Vec<String>,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "bench-with")]
        with: String,
        #[arg(long, default_value = "bench-without")]
        without: String,
        #[arg(short, long, default_value_t = 300)]
        n: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Runs a command N times and appends one JSON line per run (`arm`, `ns`,
    /// `ok`) to DIR/ssh.jsonl: the ssh figure, one block per PAM configuration.
    #[command(name = "time-cmd")]
    Timed {
        #[arg(short, long)]
        n: usize,
        #[arg(long)]
        arm: String,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Floor of one allocation: the daemon's session-open path against a bare
    /// SetUnitProperties on the same slice, interleaved.
    Alloc {
        #[arg(long)]
        user: String,
        #[arg(short, long, default_value_t = 300)]
        n: usize,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Login storm: SESSIONS concurrent PAM sessions for USERS users, a
    /// login's stack with the module against the same stack without it, and
    /// the module alone against the SetUnitProperties calls made directly.
    Storm {
        /// Users are PREFIX001, PREFIX002, … with uids FIRST_UID, FIRST_UID+1, …
        #[arg(long, default_value = "benchuser")]
        prefix: String,
        #[arg(long, default_value_t = 2001)]
        first_uid: u32,
        #[arg(long, default_value_t = 100)]
        users: u32,
        #[arg(long, default_value_t = 200)]
        sessions: u32,
        /// A login's stack with the module, and the same without it.
        #[arg(long, default_value = "bench-with")]
        with: String,
        #[arg(long, default_value = "bench-without")]
        without: String,
        /// A stack with only the module.
        #[arg(long, default_value = "bench-storm")]
        module: String,
        /// A PAM service without the module, timed for context ("" = none).
        #[arg(long, default_value = "bench-null")]
        null_service: String,
        /// fairshared's units, stopped during the arm without the module.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "fairshared.socket,fairshared.service"
        )]
        daemon_units: Vec<String>,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// One PAM session, driven over stdin/stdout by `storm` (internal).
    #[command(hide = true)]
    PamSession {
        #[arg(long)]
        service: String,
        #[arg(long)]
        user: String,
        /// Put XDG_SESSION_ID=ID in the PAM environment, as pam_systemd does.
        #[arg(long)]
        session_id: Option<String>,
    },
    /// Request throughput: CLIENTS concurrent clients asking the daemon for
    /// the `status` of USER (a limited user with a live slice) and for root's
    /// own, against a trivial echo server on a Unix socket.
    Throughput {
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "/run/fairshare-bench-echo.sock")]
        echo_socket: PathBuf,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The limited user whose status is asked.
        #[arg(long, default_value = "benchuser100")]
        user: String,
        /// A running unit in USER's slice; its main process becomes USER's
        /// session for the measurement.
        #[arg(long, default_value = "fairshare-bench-hold-2100.service")]
        hold_unit: String,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start-up of the real daemon: USERS bench users tracked, UNIT stopped
    /// and started again; to the first answer, and to every user's slice
    /// written again (seen on the system bus).
    Startup {
        #[arg(long, default_value = "fairshared.service")]
        unit: String,
        /// Users are PREFIX001, … with uids FIRST_UID, …; each needs a
        /// running fairshare-bench-hold-UID.service in their slice.
        #[arg(long, default_value = "benchuser")]
        prefix: String,
        #[arg(long, default_value_t = 2001)]
        first_uid: u32,
        #[arg(long, default_value_t = 100)]
        users: u32,
        #[arg(long, default_value_t = 5)]
        restarts: usize,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// The echo floor: answers each connection's line with itself (internal).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Idle cost and idle memory of a running unit's main process.
    Idle {
        #[arg(long, default_value = "fairshared.service")]
        unit: String,
        #[arg(long, default_value_t = 15.0)]
        settle: f64,
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// The daemon's CPU with USERS bench users tracked (a session each):
    /// idle windows against windows with CLIENTS users each running their
    /// own `top` (`status` every INTERVAL seconds) and CLIENTS root `top`s
    /// (`list`), interleaved.
    Load {
        #[arg(long, default_value = "fairshared.service")]
        unit: String,
        /// Users are PREFIX001, … with uids FIRST_UID, …; each needs a
        /// running fairshare-bench-hold-UID.service in their slice.
        #[arg(long, default_value = "benchuser")]
        prefix: String,
        #[arg(long, default_value_t = 2001)]
        first_uid: u32,
        #[arg(long, default_value_t = 100)]
        users: u32,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[arg(long, default_value_t = 30.0)]
        secs: f64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value_t = 10.0)]
        settle: f64,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prints `kill UID NS` when a user slice's OOM kill counter moves
    /// (internal, run by `load` as a bench user): what a user's
    /// `fairshare-ctl top` asks at each refresh (`status`), every INTERVAL
    /// seconds from OFFSET for SECS; prints `ok N errors M`.
    #[command(hide = true)]
    TopClient {
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[arg(long, default_value_t = 0.0)]
        offset: f64,
        #[arg(long, default_value = fairshare_proto::wire::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// (internal, run inside the test host by `oom-notice`).
    #[command(hide = true)]
    OomWatch {
        #[arg(long, default_value_t = 600.0)]
        secs: f64,
        uids: Vec<u32>,
    },
    /// OOM kill to notice: per user (NAME:UID), an `ssh -tt` terminal and a
    /// memory hog in a second ssh session; the kill's time from WATCH (a
    /// command running `oom-watch` in the test host; the uids are appended).
    OomNotice {
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        /// The memory limit root set for the users.
        #[arg(long)]
        limit: String,
        #[arg(long)]
        watch: String,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
        /// ssh's options for the test host.
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Memory and start-up with many users: fairshared's server and service
    /// with a FAKE systemd backend, in a child process, driven through its
    /// socket; SESSIONS users with a live session each, then SET users with
    /// a root-set allocation each.
    Memory {
        #[arg(long, default_value_t = 10_000)]
        sessions: u32,
        #[arg(long, default_value_t = 100_000)]
        set: u32,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Starts on the saved state, per scale.
        #[arg(long, default_value_t = 3)]
        restarts: usize,
        /// The results directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// The daemon half of `memory` (internal).
    #[command(hide = true)]
    MemoryDaemon {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        users: u32,
        /// No state saves while running; the ledger saved once at SIGTERM.
        #[arg(long)]
        save_at_stop: bool,
    },
    /// Costs of the parts of a login in fairshared: one user lookup as it
    /// does it (NSS: passwd, group list, group names) against the passwd
    /// entry alone, and one state save (write, fsync, rename, fsync dir) in STATE_DIR.
    Probe {
        #[arg(long, default_value = "/var/lib/fairshare")]
        state_dir: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(short, long, default_value_t = 1000)]
        n: usize,
        /// The results directory (none: only print).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Prints the table from a results directory and writes RESULTS.md.
    Report {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        md: Option<PathBuf>,
        /// The command line that produced the results (for RESULTS.md).
        #[arg(long, default_value = "script/bench")]
        command: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::PamLoop {
            first,
            additional,
            socket,
            with,
            without,
            n,
            warmup,
            dir,
        } => login::run(&login::Setup {
            first,
            additional,
            with,
            without,
            n,
            warmup,
            socket,
            dir,
        }),
        Cmd::Timed { n, arm, dir, cmd } => loops::time_cmd(n, &arm, &dir, &cmd),
        Cmd::Alloc {
            user,
            n,
            socket,
            dir,
        } => alloc::run(&user, n, &socket, &dir),
        Cmd::Storm {
            prefix,
            first_uid,
            users,
            sessions,
            with,
            without,
            module,
            null_service,
            daemon_units,
            rounds,
            socket,
            dir,
        } => storm::run(&storm::Setup {
            daemon_units,
            prefix,
            first_uid,
            users,
            sessions,
            with_service: with,
            without_service: without,
            module_service: module,
            null_service: Some(null_service).filter(|s| !s.is_empty()),
            rounds,
            socket,
            dir,
        }),
        Cmd::PamSession {
            service,
            user,
            session_id,
        } => pam::session_child(&service, &user, session_id.as_deref()),
        Cmd::Throughput {
            socket,
            echo_socket,
            clients,
            secs,
            rounds,
            user,
            hold_unit,
            dir,
        } => throughput::run(&throughput::Setup {
            socket,
            echo_socket,
            clients,
            secs,
            rounds,
            user,
            hold_unit,
            dir,
        }),
        Cmd::EchoServer { socket } => throughput::echo_server(&socket),
        Cmd::Startup {
            unit,
            prefix,
            first_uid,
            users,
            restarts,
            socket,
            dir,
        } => startup::run(&startup::Setup {
            unit,
            prefix,
            first_uid,
            users,
            restarts,
            socket,
            dir,
        }),
        Cmd::Idle {
            unit,
            settle,
            secs,
            dir,
        } => idle::run(&unit, settle, secs, &dir),
        Cmd::Load {
            unit,
            prefix,
            first_uid,
            users,
            clients,
            interval,
            secs,
            rounds,
            settle,
            socket,
            dir,
        } => load::run(&load::Setup {
            unit,
            prefix,
            first_uid,
            users,
            clients,
            interval,
            secs,
            rounds,
            settle,
            socket,
            dir,
        }),
        Cmd::TopClient {
            secs,
            interval,
            offset,
            socket,
        } => load::top_client(&socket, secs, interval, offset),
        Cmd::OomWatch { secs, uids } => oom::watch(&uids, secs),
        Cmd::OomNotice {
            users,
            limit,
            watch,
            dir,
            ssh_args,
        } => users
            .iter()
            .map(
                |u| match u.split_once(':').map(|(n, i)| (n, i.parse::<u32>())) {
                    Some((n, Ok(uid))) => Ok((n.to_string(), uid)),
                    _ => fail(format!("--users wants NAME:UID, not `{u}`")),
                },
            )
            .collect::<Result<Vec<_>>>()
            .and_then(|users| {
                oom::run(&oom::Setup {
                    users,
                    limit,
                    watch,
                    ssh_args,
                    dir,
                })
            }),
        Cmd::Memory {
            sessions,
            set,
            clients,
            restarts,
            dir,
        } => memory::run(
            &memory::Setup {
                sessions,
                set,
                clients,
                restarts,
            },
            &dir,
        ),
        Cmd::MemoryDaemon {
            socket,
            state,
            users,
            save_at_stop,
        } => memory::daemon(&socket, &state, users, save_at_stop),
        Cmd::Probe {
            state_dir,
            user,
            n,
            dir,
        } => alloc::probe(&state_dir, &user, n, dir.as_deref()),
        Cmd::Report { dir, md, command } => report::run(&dir, md.as_deref(), &command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairshare-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
