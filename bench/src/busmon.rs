//! Watching systemd from outside the daemon: a monitor on the system bus
//! (`BecomeMonitor`, what `busctl monitor` does) that counts the calls every
//! client makes to systemd's manager that change a unit (`SetUnitProperties`,
//! `StartTransientUnit`), by unit name and with the time each was seen.
//!
//! A figure uses it to say which path it measured (a first login writes the
//! user's slice, an additional session does not) from what reached systemd,
//! not from what the daemon says it did.
//!
//! [`BusMonitor::sync`] makes the counts exact at a point in time: it sends
//! a marker call (`GetUnit` of a unit name nobody else uses) and waits until
//! the monitor has seen it. The bus delivers messages to a monitor in the
//! order it routes them, and a call the daemon made before answering the
//! PAM module was routed before the marker, so it is counted.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::{MatchRule, Message, MessageStream, OwnedVariant};
use zbus_systemd::systemd1::ManagerProxy;

use crate::{Result, fail};

const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The calls counted.
const COUNTED: [&str; 2] = ["SetUnitProperties", "StartTransientUnit"];
const MARKER: &str = "fairshare-bench-marker-";

/// One counted call: when the monitor saw it (CLOCK_MONOTONIC, ns), which
/// method, which unit.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at_ns: u64,
    pub member: String,
    pub unit: String,
}

/// Everything counted up to a [`BusMonitor::sync`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub seen: Vec<Seen>,
}

impl Snapshot {
    /// Calls since `earlier` (a snapshot of the same monitor).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            seen: self.seen[earlier.seen.len().min(self.seen.len())..].to_vec(),
        }
    }
}

/// Monotonic clock in nanoseconds (comparable across processes of one
/// machine, containers included).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

type Reply = mpsc::Sender<Result<Snapshot>>;

/// A running monitor (a thread with its own bus connections).
pub struct BusMonitor {
    requests: Option<tokio::sync::mpsc::UnboundedSender<Reply>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusMonitor {
    /// Connects twice to the system bus (one connection becomes the monitor,
    /// the other sends the markers) and starts counting.
    pub fn start() -> Result<BusMonitor> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (req_tx, req_rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
        let thread = std::thread::Builder::new()
            .name("bus-monitor".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(monitor(ready_tx, req_rx));
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(BusMonitor {
                requests: Some(req_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => fail(format!("cannot monitor the system bus: {e}")),
            Err(_) => fail("the bus monitor did not start within 10 s"),
        }
    }

    /// Every call counted so far, including all the bus routed before this
    /// call.
    pub fn sync(&self) -> Result<Snapshot> {
        let (tx, rx) = mpsc::channel();
        let Some(req) = &self.requests else {
            return fail("the bus monitor is stopped");
        };
        if req.send(tx).is_err() {
            return fail("the bus monitor stopped");
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r,
            Err(_) => fail("the bus monitor did not see its marker within 10 s"),
        }
    }
}

impl Drop for BusMonitor {
    fn drop(&mut self) {
        // closing the request channel ends the thread
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rule(member: &str) -> zbus::Result<MatchRule<'static>> {
    MatchRule::builder()
        .msg_type(MessageType::MethodCall)
        .interface(MANAGER)
        .member(member.to_string())
        .build()
}

/// The unit a counted call or a marker is about (its first argument).
fn unit_of(msg: &Message) -> Option<(String, String)> {
    let h = msg.header();
    let member = h.member()?.to_string();
    let body = msg.body();
    let unit = match member.as_str() {
        "SetUnitProperties" => {
            let (u, _, _): (String, bool, Vec<(String, OwnedVariant)>) = body.deserialize().ok()?;
            u
        }
        "StartTransientUnit" => {
            type Aux = Vec<(String, Vec<(String, OwnedVariant)>)>;
            let (u, _, _, _): (String, String, Vec<(String, OwnedVariant)>, Aux) =
                body.deserialize().ok()?;
            u
        }
        "GetUnit" => {
            let (u,): (String,) = body.deserialize().ok()?;
            u
        }
        _ => return None,
    };
    Some((member, unit))
}

async fn monitor(
    ready: mpsc::Sender<Result<()>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Reply>,
) {
    let setup = async {
        let client = zbus::Connection::system().await?;
        let manager = ManagerProxy::builder(&client)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        // a deep queue: a burst waits in it rather than holding up the bus
        let mon = zbus::connection::Builder::system()
            .max_queued(std::num::NonZeroUsize::MIN.saturating_add(1 << 16))
            .build()
            .await?;
        let mut rules = Vec::new();
        for m in COUNTED.iter().chain(&["GetUnit"]) {
            rules.push(rule(m)?);
        }
        zbus::fdo::MonitoringProxy::new(&mon)
            .await?
            .become_monitor(&rules, 0)
            .await?;
        Ok::<_, zbus::Error>((manager, MessageStream::from(&mon)))
    };
    let (manager, mut stream) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut seen: Vec<Seen> = Vec::new();
    let mut waiting: BTreeMap<String, Reply> = BTreeMap::new();
    let mut next = 0u64;
    loop {
        tokio::select! {
            req = requests.recv() => {
                let Some(reply) = req else { return };
                let name = format!("{MARKER}{}-{next}.service", std::process::id());
                next += 1;
                waiting.insert(name.clone(), reply);
                // The answer (NoSuchUnit) does not matter, only that the
                // bus routed the call; sent from a task so the stream is
                // read meanwhile.
                let m = manager.clone();
                tokio::spawn(async move { let _ = m.get_unit(name).await; });
            }
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else {
                    for (_, r) in std::mem::take(&mut waiting) {
                        let _ = r.send(fail("the bus monitor lost its connection"));
                    }
                    return;
                };
                let Some((member, unit)) = unit_of(&msg) else { continue };
                if member == "GetUnit" {
                    if let Some(r) = waiting.remove(&unit) {
                        let _ = r.send(Ok(Snapshot { seen: seen.clone() }));
                    }
                    continue;
                }
                seen.push(Seen { at_ns: now_ns(), member, unit });
            }
        }
    }
}
