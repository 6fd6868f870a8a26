//! The floor of one allocation: fairshared's session-open path end to end
//! (connect, `session_open` as the PAM module sends it, the daemon's lookup,
//! ledger, SetUnitProperties, state save and pid watch, the answer) against
//! a bare SetUnitProperties with the same properties on the same slice, over
//! the same system bus, from zbus. The two are interleaved (ABBA).
//!
//! A login whose slice already carries the user's limits makes no D-Bus
//! call (issue 12), so before each timed open the slice is set (untimed)
//! to other limits, as root's `systemctl set-property --runtime` would: the
//! open must then write every key back, which is the path measured. The
//! bus monitor proves it (one daemon SetUnitProperties per open).

use std::path::Path;
use std::time::{Duration, Instant};

use fairshare_proto::Client;
use fairshare_proto::wire::{Limits, Request, Response, SessionClose, SessionOpen};
use serde::{Deserialize, Serialize};
use zbus::zvariant::OwnedVariant;
use zbus_systemd::systemd1::ManagerProxy;

use crate::report::{Report, Row, Samples};
use crate::{Result, fail};

/// `alloc`: the daemon's session open against a bare SetUnitProperties.
#[derive(Serialize, Deserialize)]
pub struct AllocSamples {
    pub user: String,
    pub uid: u32,
    pub slice: String,
    pub limits: String,
    pub n: usize,
    pub daemon_ns: Vec<f64>,
    pub bare_ns: Vec<f64>,
    /// SetUnitProperties calls on the slice seen on the system bus during
    /// the timed runs, less the bare calls and the scrambles: the daemon's,
    /// for `n` opens and closes (each open writes the scrambled slice back;
    /// the close, at the user's default, needs none).
    pub daemon_set_calls: u64,
}

impl Samples for AllocSamples {
    const FILE: &'static str = "alloc.json";
}

/// `probe`: the parts of a login, each timed alone (microseconds).
#[derive(Serialize, Deserialize)]
pub struct ProbeSamples {
    pub user: String,
    pub lookup_us: f64,
    pub lookup_passwd_only_us: f64,
    pub usage_no_slice_us: f64,
    pub usage_slice_us: f64,
    pub spawn_blocking_us: f64,
    pub save_median_us: f64,
    pub save_p99_us: f64,
}

impl Samples for ProbeSamples {
    const FILE: &'static str = "probe.json";
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A systemd manager proxy on the system bus.
pub async fn manager() -> Result<ManagerProxy<'static>> {
    let conn = zbus::Connection::system().await?;
    Ok(ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// The properties fairshared writes for `limits`, as D-Bus values.
pub fn props(limits: &Limits) -> Vec<(String, OwnedVariant)> {
    fairshared::systemd::slice_properties(limits)
        .into_iter()
        .map(|(k, v)| (k.to_string(), OwnedVariant::from(v)))
        .collect()
}

pub fn uid_of(user: &str) -> Result<u32> {
    match nix::unistd::User::from_name(user)? {
        Some(u) => Ok(u.uid.as_raw()),
        None => fail(format!("no user {user}")),
    }
}

fn open_request(uid: u32, user: &str, session_id: &str) -> Request {
    Request::SessionOpen(SessionOpen {
        uid,
        pid: std::process::id(),
        user: Some(user.to_string()),
        service: Some("fairshare-bench".into()),
        session_id: Some(session_id.to_string()),
        ..SessionOpen::default()
    })
}

fn close_request(uid: u32, session_id: &str) -> Request {
    Request::SessionClose(SessionClose {
        uid,
        pid: std::process::id(),
        session_id: Some(session_id.to_string()),
    })
}

/// One session open through the daemon (timed) and its close (not timed).
fn daemon_open(client: &Client, uid: u32, user: &str) -> Result<(f64, Limits)> {
    let t = Instant::now();
    let r = client.call(&open_request(uid, user, "bench-alloc"))?;
    let ns = t.elapsed().as_nanos() as f64;
    let limits = match r {
        Response::Success(s) => match s.allocation {
            Some(l) => l,
            None => return fail(format!("session_open gave no allocation: {}", s.message)),
        },
        other => return fail(format!("session_open failed: {other:?}")),
    };
    match client.call(&close_request(uid, "bench-alloc"))? {
        Response::Success(_) => Ok((ns, limits)),
        other => fail(format!("session_close failed: {other:?}")),
    }
}

pub fn run(user: &str, n: usize, socket: &Path, dir: &Path) -> Result<()> {
    let uid = uid_of(user)?;
    let client = Client::new(socket, Duration::from_secs(5));
    let rt = runtime()?;
    let mgr = rt.block_on(manager())?;
    let slice = fairshared::systemd::slice_name(uid);
    // The first open tells us the limits the daemon writes for this user.
    let (_, limits) = daemon_open(&client, uid, user)?;
    let p = props(&limits);
    let bare = || -> Result<f64> {
        let (m, s, p) = (mgr.clone(), slice.clone(), p.clone());
        let t = Instant::now();
        rt.block_on(async move { m.set_unit_properties(s, true, p).await })?;
        Ok(t.elapsed().as_nanos() as f64)
    };
    let other = props(&crate::storm::scrambled());
    // untimed: the slice carries other limits, so the next open must write it
    let scramble = || -> Result<()> {
        let (m, s, p) = (mgr.clone(), slice.clone(), other.clone());
        rt.block_on(async move { m.set_unit_properties(s, true, p).await })?;
        Ok(())
    };
    let daemon = || -> Result<f64> {
        scramble()?;
        Ok(daemon_open(&client, uid, user)?.0)
    };
    for _ in 0..10 {
        daemon()?;
        bare()?;
    }
    let (mut daemon_ns, mut bare_ns) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let bus = crate::busmon::BusMonitor::start()?;
    let mark = bus.sync()?;
    for i in 0..n {
        if i % 4 == 0 || i % 4 == 3 {
            daemon_ns.push(daemon()?);
            bare_ns.push(bare()?);
        } else {
            bare_ns.push(bare()?);
            daemon_ns.push(daemon()?);
        }
    }
    let seen = bus.sync()?.since(&mark);
    let on_slice = seen
        .seen
        .iter()
        .filter(|x| x.member == "SetUnitProperties" && x.unit == slice)
        .count() as u64;
    AllocSamples {
        user: user.into(),
        uid,
        slice,
        limits: limits.to_string(),
        n,
        daemon_ns,
        bare_ns,
        // less the bare calls and the scrambles
        daemon_set_calls: on_slice.saturating_sub(2 * n as u64),
    }
    .save(dir)
}

/// Times fairshared's user lookup (`users::by_uid`: passwd entry, group
/// list, group names) against the passwd entry alone.
/// `state_dir`: where the state saves are timed; `results`: where the
/// samples go (none: only printed).
pub fn probe(state_dir: &Path, user: &str, n: usize, results: Option<&Path>) -> Result<()> {
    let uid = uid_of(user)?;
    let time = |f: &dyn Fn() -> bool| -> Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            if !f() {
                return fail("lookup failed");
            }
        }
        Ok(t.elapsed().as_nanos() as f64 / n as f64 / 1e3)
    };
    let full = time(&|| matches!(fairshared::users::by_uid(uid), Ok(Some(_))))?;
    let passwd = time(&|| {
        matches!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Ok(Some(_))
        )
    })?;
    println!("{user}: by_uid (passwd + groups) {full:.1} us, passwd only {passwd:.1} us");
    let cg = fairshared::cgroup::Cgroups::detect("/sys/fs/cgroup");
    let usage_us = |u: u32| -> Result<f64> {
        let usage = time(&|| {
            std::hint::black_box(cg.usage(u));
            true
        })?;
        println!("cgroup usage of uid {u}: {usage:.1} us");
        Ok(usage)
    };
    let (usage_no_slice_us, usage_slice_us) = (usage_us(0)?, usage_us(uid)?);
    let rt = runtime()?;
    let hop = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            let _ = tokio::task::spawn_blocking(|| 1).await;
        }
        t.elapsed().as_nanos() as f64 / n as f64 / 1e3
    });
    println!("spawn_blocking round trip: {hop:.1} us");
    let probe = state_dir.join("fairshare-bench-probe");
    let state = fairshared::state::StateFile::open(&probe)?;
    let bytes = vec![b' '; 300];
    let mut saves = Vec::new();
    for _ in 0..n.min(200) {
        let t = Instant::now();
        state.save(&bytes)?;
        saves.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    let _ = std::fs::remove_dir_all(&probe);
    let (save_med, save_p99) = (
        crate::stats::median(&saves).unwrap_or(0.0),
        crate::stats::percentile(&saves, 99.0).unwrap_or(0.0),
    );
    println!(
        "state save in {}: median {save_med:.1} us, p99 {save_p99:.1} us",
        state_dir.display()
    );
    if let Some(results) = results {
        ProbeSamples {
            user: user.into(),
            lookup_us: full,
            lookup_passwd_only_us: passwd,
            usage_no_slice_us,
            usage_slice_us,
            spawn_blocking_us: hop,
            save_median_us: save_med,
            save_p99_us: save_p99,
        }
        .save(results)?;
    }
    Ok(())
}

pub fn report(dir: &Path, r: &mut Report) -> Result<()> {
    const FIGURE: &str =
        "one allocation: session_open of a first session vs bare SetUnitProperties";
    const TARGET: &str = "≤ 1.3× the bare call";
    match AllocSamples::load(dir)? {
        Some(v) => {
            let mut row = Row::paired(FIGURE, &v.daemon_ns, &v.bare_ns, TARGET, 1.3);
            // the floor is one SetUnitProperties: an open that made none
            // measured another path
            let per_open = v.daemon_set_calls as f64 / v.n.max(1) as f64;
            if v.daemon_set_calls != v.n as u64 {
                row.verdict =
                    format!("NOT THIS PATH ({per_open:.2} SetUnitProperties per open+close)");
            }
            r.row(row);
            r.note(format!(
                "one allocation: `session_open` over /run/fairshare.sock with fairshare's own client (as pam_fairshare sends it; the user's first session, and before each (untimed) the slice is set to other limits ({other}) as root's `systemctl set-property --runtime` would, so the daemon must write it back: a slice already at the user's limits makes no call) against a bare `SetUnitProperties(user-{}.slice, runtime, CPUQuotaPerSecUSec+MemoryMax+MemoryHigh+TasksMax)` from zbus on the container's system bus with the same values ({}); {} each, interleaved; a `session_close` (untimed) follows each open. SetUnitProperties calls on the slice from the daemon, seen on the system bus: {per_open:.2} per open+close (1 expected: the open's; the close at the default makes none).",
                v.uid,
                v.limits,
                v.daemon_ns.len(),
                other = crate::storm::scrambled(),
            ));
        }
        None => r.row(Row::missing(FIGURE, TARGET)),
    }
    if let Some(v) = ProbeSamples::load(dir)? {
        let us = |x: f64| format!("{x:.0} µs");
        r.note(format!(
            "parts of a login in fairshared, measured alone in the container (`fairshare-bench probe`): the user lookup as fairshared does it (passwd, group list, group names; nss-systemd makes the group list a varlink call into PID 1) {} (passwd entry alone {}); the usage reads of `status` {} for a user with a slice, {} without one; a hop to the blocking pool {}; one state save (write, fsync, rename, fsync dir) median {}, p99 {}.",
            us(v.lookup_us),
            us(v.lookup_passwd_only_us),
            us(v.usage_slice_us),
            us(v.usage_no_slice_us),
            us(v.spawn_blocking_us),
            us(v.save_median_us),
            us(v.save_p99_us),
        ));
    }
    Ok(())
}
