//! Bursting wired into the service (issue 15): the sampler's ticks on
//! cgroup files written by the test, the fake systemd's slices.

use std::path::Path;
use std::time::Duration;

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::units::{Bytes, Cpus};
use fairshare_proto::wire::{Response, parse_request};

use super::*;
use crate::dropin::{Key, Value};
use crate::systemd::{Call, Fake};

use super::tests::Table;

const POLICY: &str = "\
defaults: {cpu: 0.5, mem: 1G}
max: {cpu: 2, mem: 2G}
capacity: {cpu: 16, mem: 64G}
bursting: {enabled: true, idle_for: 2s, busy_for: 2s}
";

fn parse(text: &str) -> Policy {
    Policy::from_sources(&[("p.yaml".into(), text.into())]).unwrap()
}

/// The CPU times the test makes up, in µs: the host's and alice's.
struct Clocks<'a> {
    root: &'a Path,
    host: u64,
    alice: u64,
}

impl Clocks<'_> {
    /// One second: alice uses `alice` CPUs, the rest of the host `other`.
    fn second(&mut self, alice: f64, other: f64) {
        self.alice += (alice * 1e6) as u64;
        self.host += ((alice + other) * 1e6) as u64;
        std::fs::write(
            self.root.join("cpu.stat"),
            format!("usage_usec {}\n", self.host),
        )
        .unwrap();
        std::fs::write(
            self.root.join("user.slice/user-1001.slice/cpu.stat"),
            format!("usage_usec {}\n", self.alice),
        )
        .unwrap();
    }
}

fn cpu_in_force(s: &Service<Fake>) -> Option<Value> {
    s.systemd()
        .in_force(1001)
        .get(&Key::CpuQuota)
        .copied()
        .flatten()
}

async fn tick(s: &Arc<Service<Fake>>, c: &mut Clocks<'_>, alice: f64, other: f64) {
    tokio::time::advance(Duration::from_secs(1)).await;
    c.second(alice, other);
    s.burst_tick().await;
}

/// Root sends `line`; it must succeed.
async fn as_root(s: &Arc<Service<Fake>>, line: &str) {
    let r = s
        .handle(
            Peer { uid: 0, pid: None },
            parse_request(line.as_bytes()).unwrap(),
        )
        .await;
    assert!(matches!(r, Response::Success(_)), "{line}: {r:?}");
}

/// alice's session `id` of process `pid` opens (as PAM asks, root).
async fn open(s: &Arc<Service<Fake>>, pid: u32, id: &str) {
    as_root(
        s,
        &format!(r#"{{"type":"session_open","uid":1001,"pid":{pid},"session_id":"{id}"}}"#),
    )
    .await;
}

/// alice's session of process `pid` closes (as PAM says, root).
async fn close(s: &Arc<Service<Fake>>, pid: u32) {
    as_root(
        s,
        &format!(r#"{{"type":"session_close","uid":1001,"pid":{pid}}}"#),
    )
    .await;
}

fn bursting(r: Response) -> Option<Cpus> {
    match r {
        Response::StatusInfo(s) => s.bursting,
        other => panic!("expected status_info, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_host_lifts_the_cpu_quota_alone_and_busy_or_off_puts_it_back() {
    let cg = tempfile::tempdir().unwrap();
    std::fs::write(cg.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    std::fs::create_dir_all(cg.path().join("user.slice/user-1001.slice")).unwrap();
    let fake = Fake::in_tempdir();
    let root = fake.root().unwrap().to_path_buf();
    let s = Arc::new(
        Service::new(
            fake,
            Arc::new(Table(vec![Identity {
                uid: 1001,
                name: "alice".into(),
                groups: vec!["alice".into()],
            }])),
            parse(POLICY),
            HostResources {
                cpus: Cpus::whole(2),
                mem: Bytes(8 << 30),
            },
            crate::cgroup::Cgroups::detect(cg.path()),
            None,
        )
        .with_dropins(crate::dropin::Layout::under(&root)),
    );
    let mut c = Clocks {
        root: cg.path(),
        host: 0,
        alice: 0,
    };
    c.second(0.0, 0.0);
    // nobody logged in: the sampler sleeps
    assert_eq!(s.burst_interval(), None);
    let sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    open(&s, sleeper.id(), "7").await;
    assert_eq!(s.burst_interval(), Some(Duration::from_secs(1)));
    let half = Some(Value::Amount(500_000));
    assert_eq!(cpu_in_force(&s), half);
    let sets_before = s.systemd().sets(1001);

    // nothing before the start-up catch-up is done
    for _ in 0..4 {
        tick(&s, &mut c, 0.5, 0.0).await;
    }
    assert_eq!(cpu_in_force(&s), half, "lifted before the catch-up");
    s.caught_up.send_replace(true);
    // the first tick only reads; then idle_for (2 s) of an idle host
    s.burst_tick().await;
    tick(&s, &mut c, 0.5, 0.0).await;
    assert_eq!(cpu_in_force(&s), half, "not lifted before idle_for");
    tick(&s, &mut c, 0.5, 0.0).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    // CPUQuota alone, nothing else of the slice
    let last = s.systemd().calls().into_iter().rev().find_map(|c| match c {
        Call::Set(1001, props) => Some(props),
        _ => None,
    });
    let names: Vec<String> = last.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["CPUQuotaPerSecUSec".to_string()]);
    assert_eq!(s.systemd().sets(1001), sets_before + 1);
    // the ledger knows nothing of it: the allocation stays 0.5
    assert_eq!(
        s.ledger().get(1001).unwrap().limits.cpu,
        Cpus::from_millis(500)
    );
    let peer = Peer {
        uid: 1001,
        pid: None,
    };
    let st = s
        .handle(peer, parse_request(br#"{"type":"status"}"#).unwrap())
        .await;
    assert_eq!(bursting(st), Some(Cpus::whole(2)));
    // another login of hers leaves the lifted quota as it is (the new-admin
    // try saw each login put it back to the allocation until the next
    // sample, so `ssh host fairshare-ctl status` never said "bursting")
    let mut second = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let sets = s.systemd().sets(1001);
    open(&s, second.id(), "8").await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    assert_eq!(s.systemd().sets(1001), sets, "no D-Bus call for that login");
    // that session closes, another is left: still lifted
    close(&s, second.id()).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    let _ = (second.kill(), second.wait());
    // fairshared stops: the lifted quota goes back to the allocation
    s.end_bursts().await;
    assert_eq!(cpu_in_force(&s), half);

    // alice bursts to 1.9 CPUs: her burst does not count against her
    for _ in 0..5 {
        tick(&s, &mut c, 1.9, 0.05).await;
    }
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    // the rest of the host turns busy: back to 0.5 after busy_for (2 s)
    tick(&s, &mut c, 0.5, 1.5).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    tick(&s, &mut c, 0.5, 1.5).await;
    assert_eq!(cpu_in_force(&s), half);
    let st = s
        .handle(peer, parse_request(br#"{"type":"status"}"#).unwrap())
        .await;
    assert_eq!(bursting(st), None);

    // idle again: lifted; a resize of her own puts her allocation on the
    // slice (what every change compares against), the next idle tick
    // lifts it again above the new allocation
    tick(&s, &mut c, 0.5, 0.0).await;
    tick(&s, &mut c, 0.5, 0.0).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    let r = s
        .handle(
            peer,
            parse_request(br#"{"type":"request_resources","cpu":1}"#).unwrap(),
        )
        .await;
    assert!(matches!(r, Response::Success(_)), "{r:?}");
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(1_000_000)));
    tick(&s, &mut c, 1.0, 0.0).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));

    // root's CPU setting binds her: held at it, idle host or not
    as_root(&s, r#"{"type":"set_user","user":"alice","cpu":0.75}"#).await;
    for _ in 0..4 {
        tick(&s, &mut c, 0.7, 0.0).await;
    }
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(750_000)));
    as_root(&s, r#"{"type":"set_user","user":"alice","release":true}"#).await;
    // root's --default: back to the policy default (0.5), lifted when idle
    assert_eq!(cpu_in_force(&s), half);
    tick(&s, &mut c, 0.5, 0.0).await;
    tick(&s, &mut c, 0.5, 0.0).await;
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));

    // bursting turned off by a reload: the refresh puts the allocation back,
    // and the sampler stops
    s.reload(parse(&POLICY.replace("enabled: true", "enabled: false")))
        .await;
    assert_eq!(cpu_in_force(&s), half);
    assert_eq!(s.burst_interval(), None);

    // on again and lifted: her last logout puts the quota back (nothing
    // would take it back after: the sampler looks at users with sessions)
    s.reload(parse(POLICY)).await;
    for _ in 0..4 {
        tick(&s, &mut c, 0.5, 0.0).await;
    }
    assert_eq!(cpu_in_force(&s), Some(Value::Amount(2_000_000)));
    close(&s, sleeper.id()).await;
    assert_eq!(cpu_in_force(&s), half);
    let mut sleeper = sleeper;
    let _ = (sleeper.kill(), sleeper.wait());
}
