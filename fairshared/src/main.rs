//! `fairshared`: start-up, signals and shutdown. See the library for the rest.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fairshare_policy::Policy;
use fairshared::cgroup::Cgroups;
use fairshared::cli::Args;
use fairshared::server::{self, SocketGuard};
use fairshared::service::{Nss, Service};
use fairshared::state::{Loaded, StateFile};
use fairshared::systemd::Dbus;
use fairshared::{host, users};
use tracing_subscriber::prelude::*;

/// Exit status for a bad policy (sysexits EX_CONFIG); the unit file tells
/// systemd not to restart in a loop on it.
const EXIT_CONFIG: u8 = 78;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, log to the journal with structured fields (UID, USER, …).
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journal) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                journal
                    .with_syslog_identifier("fairshared".into())
                    .with_field_prefix(None),
            )
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let policy_path = args.policy_path();
    let policy = match Policy::load(&policy_path) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("fairshared: the policy has errors:\n{errors}");
            if !args.check {
                eprintln!(
                    "fairshared: not starting; fix the policy and check it with: fairshared --check {}",
                    policy_path.display()
                );
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        return check(&policy);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fairshared: must run as root (it sets limits on user slices through systemd)");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairshared: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, policy)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fairshared: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: the policy loaded; say what it means and warn about names that
/// do not exist here.
fn check(policy: &Policy) -> ExitCode {
    for f in policy.files() {
        println!("loaded {}", f.display());
    }
    for line in policy.summary() {
        println!("  {line}");
    }
    for w in policy.unknown_names(
        |u| matches!(users::by_name(u), Ok(Some(_))),
        users::group_exists,
    ) {
        println!("{w}");
    }
    println!("policy OK");
    ExitCode::SUCCESS
}

async fn run(args: Args, policy: Policy) -> Result<(), String> {
    let socket_path = args.socket_path();
    let listener = server::bind(&socket_path)?;
    let _socket = SocketGuard::new(&socket_path);

    let systemd = Dbus::connect(Duration::from_secs(25)).await.map_err(|e| {
        format!("{e}; fairshared needs systemd as init and a running D-Bus system bus")
    })?;
    let state = StateFile::open(&args.state_dir).map_err(|e| e.to_string())?;
    let saved = match state.load() {
        Ok(Loaded::Ledger(l)) => Some(l),
        Ok(Loaded::Empty) => None,
        Ok(Loaded::Corrupt { reason, moved_to }) => {
            tracing::error!(
                path = %state.path().display(),
                moved_to = %moved_to.display(),
                "state file unreadable ({reason}); moved it aside and starting from an empty ledger"
            );
            None
        }
        Err(e) => return Err(format!("cannot read state: {e}")),
    };
    let host = host::resources();
    let cgroups = Cgroups::detect("/sys/fs/cgroup");
    let capacity = policy.capacity(host);
    tracing::info!(
        policy = %args.policy_path().display(),
        socket = %socket_path.display(),
        state = %state.path().display(),
        cgroups = ?cgroups.layout(),
        capacity_cpu = %capacity.cpu,
        capacity_mem = %capacity.mem.human(),
        "fairshared starting"
    );
    let service = Arc::new(Service::new(
        systemd,
        Arc::new(Nss),
        policy,
        host,
        cgroups,
        Some(state),
    ));
    if let Some(ledger) = saved {
        let n = ledger.len();
        service.restore(ledger).await;
        tracing::info!(users = n, "restored saved allocations");
    }
    service.reconcile().await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, service.clone(), stop_rx));
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    tracing::info!("ready");

    signals(&service, &args).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping; limits stay in force");
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads the policy on SIGHUP.
async fn signals(service: &Service<Dbus>, args: &Args) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(|e| format!("cannot handle signals: {e}"));
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let path = args.policy_path();
                match Policy::load(&path) {
                    Ok(p) => {
                        let changed = service.reload(p).await;
                        tracing::info!(policy = %path.display(), changed, "policy reloaded");
                    }
                    Err(e) => tracing::error!(policy = %path.display(), "policy not reloaded, the old one stays in force:\n{e}"),
                }
            }
        }
    }
}
