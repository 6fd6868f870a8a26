//! `fairshared`: start-up, signals, systemd integration and shutdown. See the
//! library for the rest.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fairshare_policy::Policy;
use fairshared::cgroup::Cgroups;
use fairshared::cli::Args;
use fairshared::defaults::{self, DropIns};
use fairshared::dropin::Layout;
use fairshared::lastgood;
use fairshared::server::{self, SocketGuard};
use fairshared::service::{Nss, Service};
use fairshared::state::{Loaded, StateFile};
use fairshared::systemd::Dbus;
use fairshared::{health, host, users};
use sd_notify::NotifyState;
use tracing_subscriber::prelude::*;

/// Exit status for a bad policy (sysexits EX_CONFIG); the unit file tells
/// systemd not to restart in a loop on it.
const EXIT_CONFIG: u8 = 78;

/// Threads of the blocking pool (user lookups, state saves); lookups for
/// non-root users' requests take at most `identity::USER_LOOKUPS` of them.
const BLOCKING_THREADS: usize = 16;

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

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    if args.reload {
        return reload(&args);
    }
    if args.remove_defaults {
        return remove_defaults();
    }
    let policy_path = args.policy_path();
    let mut problem = None;
    let policy = match Policy::load(&policy_path) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("fairshared: the policy has errors:\n{errors}");
            let kept = lastgood::load(&args.state_dir);
            if args.check {
                if let Some(Ok(_)) = kept {
                    eprintln!(
                        "fairshared: a running fairshared keeps the last policy that loaded ({}); fix these errors, then `systemctl reload fairshared`",
                        lastgood::dir(&args.state_dir).display()
                    );
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            if args.write_defaults {
                eprintln!("fairshared: no drop-in was changed; fix the policy first");
                return ExitCode::from(EXIT_CONFIG);
            }
            match kept {
                Some(Ok(p)) => {
                    let msg = format!(
                        "the policy at {} has errors; fairshared runs on the last policy that loaded ({}, kept {}) until it is fixed: `fairshared --check` shows the errors, then `systemctl reload fairshared`",
                        policy_path.display(),
                        lastgood::dir(&args.state_dir).display(),
                        lastgood::saved_at(&args.state_dir)
                            .map(humantime_ago)
                            .unwrap_or_else(|| "at an unknown time".into()),
                    );
                    eprintln!("fairshared: {msg}");
                    problem = Some(msg);
                    p
                }
                _ => {
                    eprintln!(
                        "fairshared: not starting (no policy ever loaded on this host to fall back on); fix the policy and check it with: fairshared --check {}",
                        policy_path.display()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    if args.check {
        return check(&policy);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fairshared: must run as root (it sets limits on user slices through systemd)");
        return ExitCode::FAILURE;
    }
    if args.write_defaults {
        return write_defaults(&policy);
    }
    fairshared::nss_check::warn_if_network_nss_unreachable();
    raise_file_limit();
    host::keep_heap_small();
    // Taken before any thread starts: the activated socket, if any.
    let activated = match activated_socket() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fairshared: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairshared: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, policy, problem, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fairshared: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `2 h ago`, for messages.
fn humantime_ago(t: std::time::SystemTime) -> String {
    match t.elapsed() {
        Ok(d) => format!(
            "{} ago",
            fairshare_proto::units::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "just now".into(),
    }
}

/// `--reload`: asks the running daemon to reload, and says what it
/// answered: on stdout and exit 0, or the errors on stderr and exit 1
/// (`systemctl reload` then fails and `systemctl status` shows them).
fn reload(args: &Args) -> ExitCode {
    use fairshare_proto::client::Client;
    use fairshare_proto::wire::{Request, Response};
    let client = Client::new(args.socket_path(), Duration::from_secs(80));
    match client.call(&Request::Reload) {
        Ok(Response::Success(s)) => {
            println!("{}", s.message);
            ExitCode::SUCCESS
        }
        Ok(Response::Error(e)) => {
            for line in e.error.split("; ") {
                eprintln!("fairshared: {line}");
            }
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("fairshared: unexpected answer to reload: {other:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fairshared: cannot ask the daemon to reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--write-defaults`: G and every user file the policy names, no D-Bus.
fn write_defaults(policy: &Policy) -> ExitCode {
    let layout = Layout::system();
    let drops = DropIns::new(Some(layout.clone()));
    if let Err(e) = drops.load() {
        eprintln!("fairshared: cannot read the drop-ins under /etc/systemd/system: {e}");
        return ExitCode::FAILURE;
    }
    let plan = defaults::plan(policy, &Nss, &drops.own_files());
    match drops.write_all(&plan.global, &plan.global_why, &plan.users) {
        Ok(w) => {
            for f in &w.written {
                println!("wrote {}", f.display());
            }
            for f in &w.removed {
                println!("removed {}", f.display());
            }
            for f in &w.foreign {
                println!(
                    "left {} (not written by fairshared; see fairshared --check)",
                    f.display()
                );
            }
            if w.written.is_empty() && w.removed.is_empty() {
                println!("the drop-ins already say what this policy says; nothing written");
            }
            println!(
                "new user slices get these values as they start; running ones get them from the daemon (fairshare-ctl reload)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fairshared: writing the drop-ins: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--remove-defaults`: every drop-in of fairshared's and the runtime values
/// of managed keys go, then one daemon-reload gives running slices
/// systemd's own defaults.
fn remove_defaults() -> ExitCode {
    use fairshared::dropin::Key;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fairshared: --remove-defaults must run as root");
        return ExitCode::FAILURE;
    }
    let layout = Layout::system();
    let mut failed = false;
    match layout.remove_all() {
        Ok(removed) => {
            for f in removed {
                println!("removed {}", f.display());
            }
        }
        Err(e) => {
            eprintln!("fairshared: removing drop-ins: {e}");
            failed = true;
        }
    }
    match layout.users_with_control_files() {
        Ok(users) => {
            for (uid, _) in users {
                match layout.remove_control_files(uid, Key::ALL) {
                    Ok(n) => println!("removed {n} runtime value(s) of user-{uid}.slice"),
                    Err(e) => {
                        eprintln!("fairshared: removing runtime values of user-{uid}.slice: {e}");
                        failed = true;
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("fairshared: listing runtime values: {e}");
            failed = true;
        }
    }
    if std::path::Path::new("/run/systemd/system").is_dir() {
        match std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
        {
            Ok(s) if s.success() => {
                println!(
                    "systemctl daemon-reload: running user slices are back to systemd's own defaults"
                )
            }
            Ok(s) => {
                eprintln!("fairshared: systemctl daemon-reload failed ({s}); run it by hand");
                failed = true;
            }
            Err(e) => {
                eprintln!("fairshared: cannot run systemctl daemon-reload: {e}; run it by hand");
                failed = true;
            }
        }
    }
    match failed {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    }
}

/// `--check`: the policy loaded; say what it means and warn about names that
/// do not exist here; then what systemd's drop-ins for user slices do.
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
    // groups that set the same field differently, and who is in several
    for line in policy.overlaps(|g| match nix::unistd::Group::from_name(g) {
        Ok(Some(g)) => g.mem,
        _ => Vec::new(),
    }) {
        println!("{line}");
    }
    for line in check_dropins(policy, &Layout::system()) {
        println!("{line}");
    }
    println!("policy OK");
    ExitCode::SUCCESS
}

/// What `--check` says about systemd's drop-ins: the default in force
/// against what this policy would write, and every file of someone else's
/// that sets a limit fairshare manages.
fn check_dropins(policy: &Policy, layout: &Layout) -> Vec<String> {
    use fairshared::dropin::{Entry, OnDisk, Settings};
    let mut out = Vec::new();
    let would = fairshared::defaults::file_settings(
        &policy.plain_default(),
        &fairshared::iodisk::io_of(&policy.plain_fair()),
    );
    let show = |s: &Settings| {
        s.iter()
            .map(|(k, v)| format!("{k}={}", v.render(k)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let g = layout.global_file();
    match layout.read_global() {
        Ok(OnDisk::Ours(Entry::Limits(s))) if s == would => {
            out.push(format!("drop-in: {} says what this policy says ({})", g.display(), show(&s)))
        }
        Ok(OnDisk::Ours(Entry::Limits(s))) => out.push(format!(
            "drop-in: the default in force for new user slices is {} ({}); this policy would write {}: run `fairshare-ctl reload` (or `fairshared --write-defaults` while the daemon is stopped)",
            show(&s),
            g.display(),
            show(&would)
        )),
        Ok(OnDisk::Missing) => out.push(format!(
            "warning: {} is missing: a login while fairshared is down gets no fairshare limit; this policy would write {}: start fairshared or run `fairshared --write-defaults`",
            g.display(),
            show(&would)
        )),
        Ok(_) => out.push(format!(
            "warning: {} is not fairshare's (see below)",
            g.display()
        )),
        Err(e) => out.push(format!("warning: cannot read {}: {e}", g.display())),
    }
    match layout.foreign() {
        Ok(found) => out.extend(found.iter().map(|f| f.to_string())),
        Err(e) => out.push(format!("warning: cannot read systemd's drop-ins: {e}")),
    }
    out
}

/// Every connection is a file descriptor: allow plenty (up to the hard limit),
/// so that many users at once never run the daemon out of them.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(65_536).max(soft);
        if want > soft
            && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        {
            eprintln!("fairshared: cannot raise the open-file limit from {soft}: {e}");
        }
    }
}

/// The listening socket systemd passed us (`fairshared.socket`), if any.
fn activated_socket() -> Result<Option<std::os::unix::net::UnixListener>, String> {
    let mut fds = sd_notify::listen_fds().map_err(|e| format!("bad socket activation: {e}"))?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.next().is_some() {
        return Err(
            "systemd passed more than one socket; fairshared.socket should have one ListenStream="
                .into(),
        );
    }
    // SAFETY: sd_listen_fds hands this fd to us alone; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    use nix::sys::socket::{
        AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
    };
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    let unix = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&owned))
        .map(|a| a.family() == Some(AddressFamily::Unix))
        .unwrap_or(false);
    if !listening || !unix {
        return Err("the socket systemd passed is not a listening Unix socket; check ListenStream= in fairshared.socket".into());
    }
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("activated socket: {e}"))?;
    Ok(Some(listener))
}

/// Where fairshared takes its one-per-host lock (the unit's
/// `RuntimeDirectory=`; made by fairshared when run by hand).
const HOST_LOCK: &str = "/run/fairshared/lock";

/// One fairshared per host, for as long as this one runs: a second (the
/// original quick start's command line, or a policy tried out with another
/// --state-dir, on a host where the installed one runs) would overwrite the
/// state or fight over the drop-ins and the users' slices.
fn one_per_host() -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    match fairshared::state::lock_file(std::path::Path::new(HOST_LOCK)) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(format!(
            "another fairshared is already running on this host (it holds {HOST_LOCK}; the installed one? `systemctl status fairshared`): stop it first; two would fight over the same users' slices"
        )),
        Err(e) => Err(format!(
            "{e}; fairshared takes {HOST_LOCK} so that only one runs on a host"
        )),
    }
}

async fn run(
    args: Args,
    policy: Policy,
    problem: Option<String>,
    activated: Option<std::os::unix::net::UnixListener>,
) -> Result<(), String> {
    let _single = one_per_host()?;
    let state = StateFile::open(&args.state_dir).map_err(|e| e.to_string())?;
    let socket_path = args.socket_path();
    // Our own socket is removed at exit; an activated one belongs to systemd,
    // which keeps it (and the connections queued on it) across restarts.
    let (listener, _guard) = match activated {
        Some(l) => (
            tokio::net::UnixListener::from_std(l).map_err(|e| format!("activated socket: {e}"))?,
            None,
        ),
        None => {
            let l = server::bind(&socket_path)?;
            (l, Some(SocketGuard::new(&socket_path)))
        }
    };

    // The saved state is read and parsed (tens of milliseconds at many
    // thousands of users) on the blocking pool while the bus connects.
    let loading = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.load())
    };
    let systemd = Dbus::connect(Duration::from_secs(25)).await.map_err(|e| {
        format!("{e}; fairshared needs systemd as init and a running D-Bus system bus")
    })?;
    let loaded = loading
        .await
        .map_err(|e| format!("cannot read state: {e}"))?;
    let saved = match loaded {
        Ok(Loaded::Ledger(l)) => Some(l),
        Ok(Loaded::Empty) => None,
        Ok(Loaded::Corrupt { reason, moved_to }) => {
            tracing::error!(
                moved_to = %moved_to.display(),
                "state file unreadable ({reason}); moved it aside as {} and rebuilding from logind and the policy",
                moved_to.display()
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
    let service = Arc::new(
        Service::new(systemd, Arc::new(Nss), policy, host, cgroups, Some(state))
            .with_policy_path(args.policy_path())
            .with_dropins(Layout::system())
            .with_last_good(args.state_dir.clone())
            .with_kernel_log(std::path::Path::new(fairshared::events::kernel_log::DEVICE)),
    );
    if let Some(p) = &problem {
        tracing::error!("{p}");
    }
    service.set_policy_problem(problem.clone());
    if let Some(ledger) = saved {
        tracing::info!(users = ledger.len(), "restoring saved allocations");
        service.load(ledger);
    }
    service.load_dropins();

    #[cfg(feature = "test-hooks")]
    {
        fairshared::testhooks::announce();
        fairshared::testhooks::wedge_on_sigusr1(BLOCKING_THREADS);
    }
    // Where the watchdog's status request goes: the socket we listen on.
    let listening = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(std::path::Path::to_path_buf));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, service.clone(), stop_rx.clone()));
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(status_line(&service)),
    ]);
    tracing::info!("ready");
    // Checking the saved ledger against the host and logind takes D-Bus
    // round trips; requests are answered meanwhile (per-user locks keep order).
    tokio::spawn({
        let service = service.clone();
        async move { service.catch_up().await }
    });
    // The policy that loaded is kept as the last good one (files written
    // and synced): after the first answer, not before it.
    if problem.is_none() {
        let service = service.clone();
        tokio::spawn(async move { service.keep_last_good().await });
    }
    tokio::spawn(follow_logind(service.clone(), stop_rx.clone()));
    tokio::spawn(sample_cpu(service.clone(), stop_rx.clone()));
    // the sampler has a stop of its own: it ends (a tick under way
    // finishes) before lifted quotas are put back at the stop
    let (burst_stop, burst_stop_rx) = tokio::sync::watch::channel(false);
    let burster = tokio::spawn(burst(service.clone(), burst_stop_rx));
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(service.clone(), listening, period, stop_rx));
    }

    signals(&service).await?;
    notify(&[NotifyState::Stopping]);
    // lifted quotas back to their allocations, within a few seconds; the
    // sampler first, so that no tick lifts one again after
    let _ = burst_stop.send(true);
    let end = async {
        let _ = burster.await;
        service.end_bursts().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), end)
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping: not every lifted CPU quota was put back in 5 s; the next start does it"
        );
    }
    tracing::info!("stopping; limits stay in force");
    let _ = stop_tx.send(true);
    let _ = server.await;
    // Logins are saved in the background: make sure the last ones are on disk.
    if let Err(e) = service.flush().await {
        tracing::error!(error = %e, "could not save state at shutdown");
    }
    Ok(())
}

/// Samples the tracked users' CPU time now and then while someone looks
/// (`status` and `list` show CPU over a recent window); asleep otherwise.
async fn sample_cpu(service: Arc<Service<Dbus>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(fairshared::cpu_window::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !service.cpu_window().wanted(tokio::time::Instant::now()) {
            tokio::select! {
                _ = stop.changed() => return,
                _ = service.cpu_window().next_look() => tick.reset(),
            }
            continue;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                // off the async workers: on v1 without cpuacct this walks
                // every user's processes
                let s = service.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || s.sample_cpu()).await {
                    tracing::warn!(error = %e, "CPU sampling failed");
                }
            }
        }
    }
}

/// Bursting into idle CPU (issue 15): samples the host's and the users'
/// CPU time every `bursting.interval` while the policy enables bursting and
/// a user with a session has a slice; asleep otherwise (a login or a
/// reload wakes it, and it looks again every minute).
async fn burst(service: Arc<Service<Dbus>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(every) = service.burst_interval() else {
            tokio::select! {
                _ = stop.changed() => return,
                _ = service.bursting().poked() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            }
            continue;
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => service.burst_tick().await,
        }
    }
}

/// The line `systemctl status` shows.
fn status_line(service: &Service<Dbus>) -> &'static str {
    match service.policy_problem() {
        Some(_) => {
            "serving with the LAST GOOD policy: the policy on disk has errors (fairshared --check)"
        }
        None => "serving",
    }
}

/// Pings systemd's watchdog four times a period, each time after the daemon
/// proved it still answers ([`health::check`]: a status request over its own
/// socket, a task on the blocking pool, the ledger's lock), each part within
/// a quarter period. A daemon wedged anywhere a login passes misses every
/// ping of a period, and systemd restarts it.
async fn watchdog(
    service: Arc<Service<Dbus>>,
    socket: Option<std::path::PathBuf>,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let quarter = period / 4;
    if socket.is_none() {
        tracing::warn!(
            "the listening socket has no path; the watchdog checks without a status request"
        );
    }
    let mut tick = tokio::time::interval(quarter);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                match health::check(&service, socket.as_deref(), quarter).await {
                    Ok(()) => notify(&[NotifyState::Watchdog]),
                    Err(e) => tracing::error!("not pinging the watchdog: {e}"),
                }
            }
        }
    }
}

/// Counts users in and out as logind reports them (UserNew, UserRemoved),
/// including lingering users who never log in through PAM.
async fn follow_logind(service: Arc<Service<Dbus>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use futures_util::StreamExt;
    loop {
        let mut events = match service.systemd().user_events().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow logind; retrying in 5 s");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        // A login announces itself through PAM a moment after logind sees
        // it: each reported user is checked 2 s later, once however many
        // events came meanwhile. The stream is drained at once, never behind
        // a check: unread signals pile up in the bus connection, and a full
        // queue stalls everything that connection receives.
        let mut due: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = stop.changed() => return,
                e = events.next() => match e {
                    Some(uid) => {
                        due.entry(uid)
                            .or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                    let now = tokio::time::Instant::now();
                    let ready: Vec<u32> = due.iter().filter(|(_, t)| **t <= now).map(|(u, _)| *u).collect();
                    for uid in ready {
                        due.remove(&uid);
                        let service = service.clone();
                        tokio::spawn(async move { service.reconcile(Some(uid)).await });
                    }
                }
            }
        }
        tracing::warn!("lost logind's signals (bus connection closed); subscribing again");
    }
}

/// Waits for SIGTERM or SIGINT; reloads the policy on SIGHUP.
async fn signals(service: &Arc<Service<Dbus>>) -> Result<(), String> {
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
                notify(&[NotifyState::Reloading]);
                let _ = service.reload_from_disk().await;
                notify(&[NotifyState::Ready, NotifyState::Status(status_line(service))]);
            }
        }
    }
}
