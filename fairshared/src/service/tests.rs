use std::sync::atomic::Ordering;
use std::time::Duration;

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::units::{Bytes, Cpus, Tasks};
use fairshare_proto::wire::{
    ErrorCode, ErrorReply, Request, ResizeArgs, SessionInfo, Source, StatusInfo, Success,
    parse_request,
};

use super::*;
use crate::systemd::{Call, Fake};
use crate::users::LookupError;

/// A user directory from a list (the service tests' NSS).
pub(super) struct Table(pub(super) Vec<Identity>);

impl Directory for Table {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        Ok(self.0.iter().find(|i| i.uid == uid).cloned())
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        Ok(self.0.iter().find(|i| i.name == name).cloned())
    }
}

fn id(uid: u32, name: &str, groups: &[&str]) -> Identity {
    Identity {
        uid,
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

const POLICY: &str = "\
defaults: {cpu: 2, mem: 8G}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 16, mem: 64G, overcommit: 1}
groups:
  students:
    defaults: {cpu: 1, mem: 2G}
";

/// A service on the fake systemd, a 2-CPU 8G host and no cgroup files;
/// systemd's unit directories under a temporary directory that lives as
/// long as the test process (the fake and the drop-ins share it).
fn new_service(
    directory: Arc<dyn Directory>,
    policy: Policy,
    state: Option<StateFile>,
) -> Service<Fake> {
    with_fake(Fake::in_tempdir(), directory, policy, state)
}

/// The same on a given fake (a restart keeps its root).
fn with_fake(
    fake: Fake,
    directory: Arc<dyn Directory>,
    policy: Policy,
    state: Option<StateFile>,
) -> Service<Fake> {
    let root = fake.root().unwrap().to_path_buf();
    Service::new(
        fake,
        directory,
        policy,
        HostResources {
            cpus: Cpus::whole(2),
            mem: Bytes(8 << 30),
        },
        Cgroups::detect("/nonexistent-cgroup-root"),
        state,
    )
    .with_dropins(crate::dropin::Layout::under(&root))
}

/// The policy in `text`, as if read from `p.yaml`.
fn parse(text: &str) -> Policy {
    Policy::from_sources(&[("p.yaml".into(), text.into())]).unwrap()
}

/// The users most tests know.
fn users() -> Arc<Table> {
    Arc::new(Table(vec![
        id(0, "root", &["root"]),
        id(1001, "alice", &["alice"]),
        id(1002, "bob", &["bob"]),
        id(1003, "stu", &["stu", "students"]),
        id(998, "daemon", &["daemon"]),
    ]))
}

fn service_with(policy: &str, state: Option<StateFile>) -> Arc<Service<Fake>> {
    Arc::new(new_service(users(), parse(policy), state))
}

fn service() -> Arc<Service<Fake>> {
    service_with(POLICY, None)
}

fn peer(uid: u32) -> Peer {
    Peer { uid, pid: None }
}

async fn send(s: &Arc<Service<Fake>>, uid: u32, line: &str) -> Response {
    let req = parse_request(line.as_bytes()).unwrap();
    s.handle(peer(uid), req).await
}

fn status(r: Response) -> StatusInfo {
    match r {
        Response::StatusInfo(s) => *s,
        other => panic!("expected status_info, got {other:?}"),
    }
}

fn error(r: Response) -> ErrorReply {
    match r {
        Response::Error(e) => e,
        other => panic!("expected error, got {other:?}"),
    }
}

fn success(r: Response) -> Success {
    match r {
        Response::Success(s) => s,
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn reference_flow_resize_status_release() {
    let s = service();
    let ok = success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"mem":"16G"}"#,
        )
        .await,
    );
    assert!(
        ok.message
            .starts_with("Resources allocated: 4 CPUs, 16G memory"),
        "{}",
        ok.message
    );
    let applied = s.systemd().applied(1001).unwrap();
    assert_eq!(applied.cpu, Cpus::whole(4));
    assert_eq!(applied.mem, Bytes(16 << 30));
    assert_eq!(applied.tasks, Tasks(4096));

    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(4)));
    assert_eq!(st.allocated_mem, Some(Bytes(16 << 30)));
    assert_eq!(st.source, Source::Resize);
    assert!(st.active);
    assert_eq!(st.max.unwrap().cpu, Cpus::whole(8));
    assert_eq!(st.default.unwrap().cpu, Cpus::whole(2));

    let ok = success(send(&s, 1001, r#"{"type":"release"}"#).await);
    assert!(
        ok.message
            .contains("back to the default of 2 CPUs, 8G memory"),
        "{}",
        ok.message
    );
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
    assert!(s.ledger().is_empty());
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.source, Source::Default);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(2)));
}

#[tokio::test]
async fn beyond_max_is_refused_and_nothing_is_applied() {
    let s = service();
    let e = error(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":16,"mem":"8G"}"#,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::ExceedsMax);
    assert!(
        e.error.contains("cpu 16 is above your maximum of 8 CPUs"),
        "{}",
        e.error
    );
    assert_eq!(e.max.unwrap().cpu, Cpus::whole(8));
    assert!(s.systemd().calls().is_empty());
    assert!(s.ledger().is_empty());
}

#[tokio::test]
async fn capacity_refusal_says_what_is_free() {
    let s = service(); // 16 CPUs, 64G, no overcommit
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":8,"mem":"32G"}"#,
        )
        .await,
    );
    success(
        send(
            &s,
            1002,
            r#"{"type":"request_resources","cpu":6,"mem":"16G"}"#,
        )
        .await,
    );
    let e = error(
        send(
            &s,
            1003,
            r#"{"type":"request_resources","cpu":1,"mem":"20G"}"#,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::NoCapacity);
    assert!(
        e.error.contains("mem 20G asked, 16G free for you"),
        "{}",
        e.error
    );
    // one figure of what is free, labelled (issue 17.6)
    assert_eq!(e.error.matches("free").count(), 1, "{}", e.error);
    assert_eq!(e.capacity.unwrap().mem_free, Bytes(16 << 30));
}

#[tokio::test]
async fn a_user_cannot_touch_another_user_whatever_the_json_says() {
    let s = service();
    success(
        send(
            &s,
            1002,
            r#"{"type":"request_resources","cpu":3,"mem":"3G"}"#,
        )
        .await,
    );
    let before = s.ledger().get(1002).cloned();
    // extra fields naming bob are ignored: alice resizes herself
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":5,"mem":"5G","uid":1002,"user":"bob"}"#,
        )
        .await,
    );
    success(send(&s, 1001, r#"{"type":"release","uid":1002,"user":"bob"}"#).await);
    assert_eq!(s.ledger().get(1002).cloned(), before);
    for line in [
        r#"{"type":"set_user","user":"bob","cpu":1}"#,
        r#"{"type":"set_user","user":1002,"release":true}"#,
        r#"{"type":"list"}"#,
        r#"{"type":"session_open","uid":1002,"pid":1}"#,
        r#"{"type":"session_close","uid":1002,"pid":1}"#,
        r#"{"type":"status","user":"bob"}"#,
    ] {
        let e = error(send(&s, 1001, line).await);
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{line}: {}", e.error);
    }
    assert_eq!(s.ledger().get(1002).cloned(), before);
    assert_eq!(s.systemd().applied(1002).unwrap().cpu, Cpus::whole(3));
    // a user may name themselves
    let st = status(send(&s, 1001, r#"{"type":"status","user":"alice"}"#).await);
    assert_eq!(st.uid, 1001);
}

#[tokio::test]
async fn root_can_set_list_and_reset_others() {
    let s = service();
    let ok = success(
        send(
            &s,
            0,
            r#"{"type":"set_user","user":"bob","cpu":12,"mem":"40G"}"#,
        )
        .await,
    );
    assert_eq!(ok.allocation.unwrap().cpu, Cpus::whole(12)); // root may exceed max
    let list = match send(&s, 0, r#"{"type":"list"}"#).await {
        Response::UserList(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(list.users.len(), 1);
    assert_eq!(list.users[0].user, "bob");
    assert_eq!(list.users[0].source, Source::Admin);
    assert_eq!(list.capacity.cpu_allocated, Cpus::whole(12));
    let st = status(send(&s, 0, r#"{"type":"status","user":"bob"}"#).await);
    assert_eq!(st.allocated_mem, Some(Bytes(40 << 30)));
    success(send(&s, 0, r#"{"type":"set_user","user":"bob","release":true}"#).await);
    assert_eq!(s.systemd().applied(1002).unwrap().cpu, Cpus::whole(2));
    let e = error(send(&s, 0, r#"{"type":"set_user","user":"nobody-here","cpu":1}"#).await);
    assert_eq!(e.code, ErrorCode::UnknownUser);
    assert!(e.error.contains("getent passwd nobody-here"), "{}", e.error);
}

#[tokio::test]
async fn exempt_users_have_nothing_to_resize() {
    let s = service();
    let e = error(send(&s, 0, r#"{"type":"request_resources","cpu":1}"#).await);
    assert_eq!(e.code, ErrorCode::Exempt);
    assert!(e.error.contains("root is never limited"), "{}", e.error);
    let e = error(send(&s, 998, r#"{"type":"request_resources","cpu":1}"#).await);
    assert_eq!(e.code, ErrorCode::Exempt);
    let st = status(send(&s, 998, r#"{"type":"status"}"#).await);
    assert_eq!(st.source, Source::Exempt);
    assert_eq!(st.allocated_cpu, None);
    let ok = success(send(&s, 0, r#"{"type":"session_open","uid":998,"pid":1}"#).await);
    assert!(ok.message.contains("not limited"), "{}", ok.message);
    assert!(s.systemd().calls().is_empty());
}

#[tokio::test]
async fn bad_values_are_bad_requests() {
    let s = service();
    for line in [
        r#"{"type":"request_resources","cpu":-1}"#,
        r#"{"type":"request_resources","cpu":"NaN"}"#,
        r#"{"type":"request_resources","mem":"1e308"}"#,
        r#"{"type":"request_resources","mem":"8Q"}"#,
        r#"{"type":"request_resources","tasks":0}"#,
        r#"{"type":"request_resources"}"#,
    ] {
        let e = error(send(&s, 1001, line).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{line}: {}", e.error);
    }
    assert!(s.systemd().calls().is_empty());
}

#[tokio::test]
async fn group_overrides_shape_the_default() {
    let s = service();
    let st = status(send(&s, 1003, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(1)));
    assert_eq!(st.allocated_mem, Some(Bytes(2 << 30)));
    assert_eq!(st.policy, vec!["defaults", "group students"]);
}

#[tokio::test]
async fn systemd_failure_leaves_the_ledger_as_it_was() {
    let s = service();
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":3}"#).await);
    let before = s.ledger();
    s.systemd().fail_apply.store(true, Ordering::SeqCst);
    let e = error(send(&s, 1001, r#"{"type":"request_resources","cpu":5}"#).await);
    assert_eq!(e.code, ErrorCode::Systemd);
    assert!(e.error.contains("user-1001.slice"), "{}", e.error);
    assert_eq!(s.ledger(), before);
}

/// A live process to stand in for a session's process.
struct Proc(std::process::Child);

impl Proc {
    fn new() -> Proc {
        Proc(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sessions_apply_the_default_and_the_last_close_releases() {
    let s = service();
    let open = |pid: u32| {
        format!(
            r#"{{"type":"session_open","uid":1001,"pid":{pid},"service":"sshd","session_id":"{pid}"}}"#
        )
    };
    let close = |pid: u32| format!(r#"{{"type":"session_close","uid":1001,"pid":{pid}}}"#);
    let (p1, p2) = (Proc::new(), Proc::new());
    let ok = success(send(&s, 0, &open(p1.pid())).await);
    assert_eq!(ok.allocation.unwrap().cpu, Cpus::whole(2));
    success(send(&s, 0, &open(p2.pid())).await);
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":6}"#).await);
    assert_eq!(
        status(send(&s, 1001, r#"{"type":"status"}"#).await).sessions,
        2
    );
    success(send(&s, 0, &close(p1.pid())).await);
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(6));
    let ok = success(send(&s, 0, &close(p2.pid())).await);
    assert!(ok.message.contains("last session closed"), "{}", ok.message);
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
    assert!(s.ledger().is_empty());
    // A session process outside every user's slice (this test's children
    // are, where the tests run as root outside any login) is moved when it
    // is the process that asked, as the PAM module's is.
    let stray = Proc::new();
    let Some(crate::proc::Placement::Outside(_)) = crate::proc::placement(stray.pid()) else {
        eprintln!("this test runs inside a user's slice: adoption not tried here");
        return;
    };
    let asked = Peer {
        uid: 0,
        pid: Some(stray.pid() as i32),
    };
    let open = format!(
        r#"{{"type":"session_open","uid":1002,"pid":{},"session_id":"c7"}}"#,
        stray.pid()
    );
    let ok = success(
        s.handle(asked, parse_request(open.as_bytes()).unwrap())
            .await,
    );
    assert!(ok.message.contains("moved from"), "{}", ok.message);
    assert!(
        s.systemd()
            .calls()
            .contains(&Call::Adopt(1002, stray.pid()))
    );
    // the session id it claimed is not its cgroup's: not believed
    assert_eq!(s.ledger().get(1002).unwrap().sessions[0].session_id, None);
    // Another process, neither the one that asked nor the user's: counted,
    // left where it is.
    let other = Proc::new();
    let ok = success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1003,"pid":{}}}"#,
                other.pid()
            ),
        )
        .await,
    );
    assert!(ok.message.contains("left in"), "{}", ok.message);
    assert!(ok.allocation.is_some());
    assert!(
        !s.systemd()
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Adopt(1003, _)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_do_not_queue_behind_each_other_but_one_user_is_serialised() {
    let s = service();
    *s.systemd().delay.lock().unwrap() = Some(Duration::from_millis(200));
    let a = {
        let s = s.clone();
        tokio::spawn(async move { send(&s, 1001, r#"{"type":"request_resources","cpu":3}"#).await })
    };
    let b = {
        let s = s.clone();
        tokio::spawn(async move { send(&s, 1002, r#"{"type":"request_resources","cpu":3}"#).await })
    };
    success(a.await.unwrap());
    success(b.await.unwrap());
    assert_eq!(s.systemd().max_in_flight.load(Ordering::SeqCst), 2);

    let s = service();
    *s.systemd().delay.lock().unwrap() = Some(Duration::from_millis(100));
    let tasks: Vec<_> = (3..6)
        .map(|c| {
            let s = s.clone();
            tokio::spawn(async move {
                send(
                    &s,
                    1001,
                    &format!(r#"{{"type":"request_resources","cpu":{c}}}"#),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        success(t.await.unwrap());
    }
    assert_eq!(s.systemd().max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = service_with(POLICY, Some(StateFile::open(dir.path()).unwrap()));
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":5,"mem":"5G"}"#,
        )
        .await,
    );
    let p = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1002,"pid":{}}}"#, p.pid()),
        )
        .await,
    );
    // the login is saved in the background
    s.flush().await.unwrap();
    let saved = match StateFile::open(dir.path()).unwrap().load().unwrap() {
        crate::state::Loaded::Ledger(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(saved.get(1001).unwrap().limits.cpu, Cpus::whole(5));

    let s2 = service_with(POLICY, Some(StateFile::open(dir.path()).unwrap()));
    s2.restore(saved).await;
    s2.reconcile(None).await;
    assert_eq!(s2.systemd().applied(1001).unwrap().cpu, Cpus::whole(5));
    assert_eq!(s2.systemd().applied(1002).unwrap().cpu, Cpus::whole(2));
    let st = status(send(&s2, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_mem, Some(Bytes(5 << 30)));
    assert!(st.active);
}

#[tokio::test]
async fn restore_clamps_to_a_lowered_max_and_drops_the_exempt() {
    let s = service();
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":8}"#).await);
    success(send(&s, 1002, r#"{"type":"request_resources","cpu":3}"#).await);
    let saved = s.ledger();
    let s2 = service_with(
        "defaults: {cpu: 1, mem: 1G}\nmax: {cpu: 4, mem: 4G}\nexempt: {users: [bob]}\n",
        None,
    );
    s2.restore(saved).await;
    assert_eq!(s2.systemd().applied(1001).unwrap().cpu, Cpus::whole(4));
    assert!(s2.ledger().get(1002).is_none());
}

#[tokio::test]
async fn resize_args_from_the_client_round_trip() {
    let s = service();
    let req = Request::RequestResources(ResizeArgs::new(
        Some(Cpus::from_millis(1500)),
        Some(Bytes(3 << 29)),
        Some(Tasks(100)),
    ));
    let ok = success(s.handle(peer(1001), req).await);
    let a = ok.allocation.unwrap();
    assert_eq!(
        (a.cpu, a.mem, a.tasks),
        (Cpus::from_millis(1500), Bytes(3 << 29), Tasks(100))
    );
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu.quota_usec_per_sec(),
        1_500_000
    );
}

#[tokio::test]
async fn a_session_whose_process_dies_without_closing_is_counted_down() {
    let s = service();
    let mut p = Proc::new();
    let keep = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1001,"pid":{}}}"#, p.pid()),
        )
        .await,
    );
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{}}}"#,
                keep.pid()
            ),
        )
        .await,
    );
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    wait_until(|| s.ledger().get(1001).is_some_and(|e| e.sessions.len() == 1)).await;
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(4));
    drop(keep);
    wait_until(|| s.ledger().is_empty()).await;
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

#[tokio::test]
async fn reconcile_counts_logind_sessions_and_forgets_dead_ones() {
    let s = service();
    let live = Proc::new();
    s.systemd()
        .sessions
        .lock()
        .unwrap()
        .push(crate::systemd::LogindSession {
            id: "12".into(),
            uid: 1002,
            user: "bob".into(),
            leader: live.pid(),
            service: "sshd".into(),
            ..Default::default()
        });
    // root's sessions are none of our business
    s.systemd()
        .sessions
        .lock()
        .unwrap()
        .push(crate::systemd::LogindSession {
            id: "13".into(),
            uid: 0,
            user: "root".into(),
            leader: live.pid(),
            ..Default::default()
        });
    // a saved session whose process is long gone
    let mut ledger = Ledger::new();
    let policy = s.policy();
    let up = policy.for_user(&id(1001, "alice", &[]));
    ledger.open_session(
        1001,
        "alice",
        &up,
        SessionInfo {
            pid: u32::MAX - 1,
            ..SessionInfo::default()
        },
    );
    s.restore(ledger).await;
    s.reconcile(None).await;
    assert!(s.ledger().get(1001).is_none());
    let bob = s.ledger().get(1002).cloned().unwrap();
    assert_eq!(bob.sessions.len(), 1);
    assert_eq!(bob.sessions[0].session_id.as_deref(), Some("12"));
    assert_eq!(s.systemd().applied(1002).unwrap().cpu, Cpus::whole(2));
    assert!(s.ledger().get(0).is_none());
    // a second pass adds nothing
    s.reconcile(None).await;
    assert_eq!(s.ledger().get(1002).unwrap().sessions.len(), 1);
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test]
async fn a_lease_runs_out_back_to_the_default_with_a_notice() {
    let s = service();
    let keep = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{}}}"#,
                keep.pid()
            ),
        )
        .await,
    );
    let ok = success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"duration":"1s"}"#,
        )
        .await,
    );
    assert!(ok.message.contains(" for "), "{}", ok.message);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert!(st.expires_at.is_some());
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(4));
    wait_until(|| s.ledger().get(1001).is_some_and(|e| e.grant.is_none())).await;
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.source, Source::Default);
    let notice = st.notice.unwrap();
    assert!(notice.contains("reached its end"), "{notice}");
}

#[tokio::test]
async fn the_policy_caps_lease_durations_and_gives_one_to_resizes_above_default() {
    let s = service_with(&format!("{POLICY}leases: {{max_duration: 2h}}\n"), None);
    let e = error(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"duration":"3h"}"#,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::ExceedsMax);
    assert!(e.error.contains("at most 2h"), "{}", e.error);
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    let left = status(send(&s, 1001, r#"{"type":"status"}"#).await)
        .expires_at
        .unwrap()
        - now();
    assert!((7100..=7200).contains(&left), "{left}");
    // at or below the default, no lease is needed
    success(send(&s, 1002, r#"{"type":"request_resources","cpu":1}"#).await);
    assert_eq!(
        status(send(&s, 1002, r#"{"type":"status"}"#).await).expires_at,
        None
    );
    // root's sets are not capped
    success(
        send(
            &s,
            0,
            r#"{"type":"set_user","user":"bob","cpu":6,"duration":"5h"}"#,
        )
        .await,
    );
}

/// The expiry time is saved: a lease outlives a restart with its original
/// end, neither restarted from zero by the restart nor lost with it. Time is
/// tokio's, paused, and the service's clock moves with it.
#[tokio::test(start_paused = true)]
async fn a_lease_survives_a_restart() {
    let clock = Clock::tokio();
    let dir = tempfile::tempdir().unwrap();
    let at = |clock| {
        let state = StateFile::open(dir.path()).unwrap();
        Arc::new(new_service(users(), parse(POLICY), Some(state)).with_clock(clock))
    };
    let s = at(clock);
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":5,"duration":"1h"}"#,
        )
        .await,
    );
    let expires = status(send(&s, 1001, r#"{"type":"status"}"#).await)
        .expires_at
        .unwrap();
    assert_eq!(expires, clock.now() + 3600);
    // fairshared stops 20 minutes into the lease, and starts 10 minutes later
    tokio::time::advance(Duration::from_secs(20 * 60)).await;
    drop(s);
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    let saved = match StateFile::open(dir.path()).unwrap().load().unwrap() {
        crate::state::Loaded::Ledger(l) => l,
        other => panic!("{other:?}"),
    };
    let s2 = at(clock);
    s2.restore(saved).await;
    assert_eq!(s2.systemd().applied(1001).unwrap().cpu, Cpus::whole(5));
    let st = status(send(&s2, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(
        st.expires_at,
        Some(expires),
        "the same end after the restart"
    );
    // still resized a second before the original end...
    tokio::time::advance(Duration::from_secs(expires - clock.now() - 1)).await;
    settle().await;
    assert_eq!(s2.systemd().applied(1001).unwrap().cpu, Cpus::whole(5));
    assert!(s2.ledger().get(1001).is_some());
    // ...and back to the default at it
    tokio::time::advance(Duration::from_secs(1)).await;
    wait_until(|| s2.ledger().get(1001).is_none()).await;
    assert!(
        clock.now() <= expires + 1,
        "{} s late",
        clock.now() - expires
    );
    assert_eq!(s2.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

/// Lets every task that can run, run (under paused time).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn reload_applies_a_good_policy_and_keeps_the_old_one_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let policy = Policy::load(&file).unwrap();
    let table = Table(vec![
        id(0, "root", &["root"]),
        id(1001, "alice", &["alice"]),
        id(1002, "bob", &["bob"]),
    ]);
    let s = Arc::new(new_service(Arc::new(table), policy, None).with_policy_path(file.clone()));
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":8,"mem":"16G"}"#,
        )
        .await,
    );
    let p2 = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1002,"pid":{}}}"#, p2.pid()),
        )
        .await,
    );

    std::fs::write(
        &file,
        "defaults: {cpu: 1, mem: 4G}\nmax: {cpu: 4, mem: 8G}\n",
    )
    .unwrap();
    let ok = success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert!(
        ok.message.contains("limits changed for 2 user(s)"),
        "{}",
        ok.message
    );
    let a = s.systemd().applied(1001).unwrap();
    assert_eq!((a.cpu, a.mem), (Cpus::whole(4), Bytes(8 << 30))); // clamped
    assert_eq!(s.systemd().applied(1002).unwrap().cpu, Cpus::whole(1)); // new default

    std::fs::write(&file, "defaults: {cpu: 0, mem: 4G}\n").unwrap();
    let e = error(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(e.code, ErrorCode::InvalidPolicy);
    assert!(
        e.error
            .contains("p.yaml:1: defaults.cpu: `0` must be greater than zero"),
        "{}",
        e.error
    );
    assert!(
        e.error.contains("the old one stays in force"),
        "{}",
        e.error
    );
    assert_eq!(
        status(send(&s, 1002, r#"{"type":"status"}"#).await).allocated_cpu,
        Some(Cpus::whole(1))
    );
    let e = error(send(&s, 1001, r#"{"type":"reload"}"#).await);
    assert_eq!(e.code, ErrorCode::PermissionDenied);
}

#[tokio::test]
async fn lingering_users_are_counted_from_logind() {
    let s = service();
    let manager = Proc::new();
    s.systemd().users.lock().unwrap().push((1002, "bob".into()));
    s.systemd()
        .managers
        .lock()
        .unwrap()
        .push((1002, manager.pid()));
    s.reconcile(None).await;
    let e = s.ledger().get(1002).cloned().unwrap();
    assert_eq!(e.sessions[0].service.as_deref(), Some("systemd-user"));
    assert_eq!(s.systemd().applied(1002).unwrap().cpu, Cpus::whole(2));
    drop(manager);
    wait_until(|| s.ledger().get(1002).is_none()).await;
}

#[tokio::test]
async fn metrics_expose_allocations_usage_and_counters() {
    let s = service();
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":3,"mem":"3G"}"#,
        )
        .await,
    );
    error(send(&s, 1001, r#"{"type":"request_resources","cpu":99}"#).await);
    let text = match send(&s, 0, r#"{"type":"metrics"}"#).await {
        Response::Metrics { text } => text,
        other => panic!("{other:?}"),
    };
    for want in [
        "# TYPE fairshare_allocation_cpus gauge",
        r#"fairshare_allocation_cpus{user="alice",uid="1001"} 3"#,
        &format!(
            r#"fairshare_allocation_memory_bytes{{user="alice",uid="1001"}} {}"#,
            3u64 << 30
        ),
        "fairshare_capacity_cpus 16",
        r#"fairshare_requests_total{type="request_resources"} 2"#,
        r#"fairshare_refused_total{reason="exceeds_max"} 1"#,
        "fairshare_users 1",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    assert_eq!(
        error(send(&s, 1001, r#"{"type":"metrics"}"#).await).code,
        ErrorCode::PermissionDenied
    );
}

#[tokio::test]
async fn a_flood_from_one_user_is_rate_limited_and_nobody_else_notices() {
    let s = service();
    let mut limited = 0;
    for i in 0..30 {
        let r = send(
            &s,
            1001,
            &format!(r#"{{"type":"request_resources","cpu":{}}}"#, 2 + i % 2),
        )
        .await;
        if let Response::Error(e) = r {
            assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.error);
            assert!(e.error.contains("try again in"), "{}", e.error);
            limited += 1;
        }
    }
    assert!((19..=20).contains(&limited), "{limited} of 30 limited");
    // status is cheap: a much larger allowance
    for _ in 0..50 {
        status(send(&s, 1002, r#"{"type":"status"}"#).await);
    }
    // others, and root (logins, the admin), are not held back
    success(send(&s, 1002, r#"{"type":"request_resources","cpu":3}"#).await);
    let p = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1001,"pid":{}}}"#, p.pid()),
        )
        .await,
    );
    for _ in 0..30 {
        success(send(&s, 0, r#"{"type":"set_user","user":"alice","cpu":2}"#).await);
    }
}

#[tokio::test]
async fn logins_do_not_wait_for_the_state_file_resizes_do() {
    let dir = tempfile::tempdir().unwrap();
    let s = service_with(POLICY, Some(StateFile::open(dir.path()).unwrap()));
    // Saving cannot work while a directory sits where the temporary file goes
    // (for root too).
    let blocker = dir.path().join("state.bin.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let p = Proc::new();
    let open = format!(
        r#"{{"type":"session_open","uid":1001,"pid":{},"session_id":"7"}}"#,
        p.pid()
    );
    let ok = success(send(&s, 0, &open).await);
    assert!(ok.allocation.is_some(), "{}", ok.message);
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
    // a resize promises durability: it still waits, and says so
    let e = error(send(&s, 1002, r#"{"type":"request_resources","cpu":3}"#).await);
    assert_eq!(e.code, ErrorCode::Persistence, "{}", e.error);
    // once the disk works again, the login lands with the next save
    std::fs::remove_dir(&blocker).unwrap();
    s.flush().await.unwrap();
    let saved = match StateFile::open(dir.path()).unwrap().load().unwrap() {
        crate::state::Loaded::Ledger(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(saved.get(1001).unwrap().sessions.len(), 1);
    // a logout does not wait either, and is saved soon after
    let close = format!(
        r#"{{"type":"session_close","uid":1001,"pid":{},"session_id":"7"}}"#,
        p.pid()
    );
    success(send(&s, 0, &close).await);
    wait_saved(dir.path(), |l| l.get(1001).is_none()).await;
}

/// Waits (at most 5 s) until the state file on disk satisfies `f`.
async fn wait_saved(dir: &std::path::Path, f: impl Fn(&Ledger) -> bool) {
    for _ in 0..500 {
        if let Ok(crate::state::Loaded::Ledger(l)) = StateFile::open(dir).unwrap().load()
            && f(&l)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the state file never caught up");
}

/// A directory that counts its lookups (with groups; without in `.2`).
struct Counting(
    std::sync::atomic::AtomicUsize,
    Table,
    std::sync::atomic::AtomicUsize,
);

impl Directory for Counting {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        self.1.by_uid(uid)
    }
    fn by_uid_without_groups(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        self.2.fetch_add(1, Ordering::SeqCst);
        self.1.by_uid(uid).map(|i| {
            i.map(|mut i| {
                i.groups.clear();
                i
            })
        })
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        self.1.by_name(name)
    }
}

#[tokio::test]
async fn user_lookups_are_reused_for_a_moment_only() {
    let dir = Arc::new(Counting(
        Default::default(),
        Table(vec![id(1001, "alice", &["alice"])]),
        Default::default(),
    ));
    let s = Arc::new(
        new_service(dir.clone(), parse(POLICY), None).with_identity_ttl(Duration::from_millis(300)),
    );
    for _ in 0..5 {
        status(send(&s, 1001, r#"{"type":"status"}"#).await);
    }
    assert_eq!(dir.0.load(Ordering::SeqCst), 1);
    // unknown users are never remembered
    error(send(&s, 1009, r#"{"type":"status"}"#).await);
    error(send(&s, 1009, r#"{"type":"status"}"#).await);
    assert_eq!(dir.0.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_millis(350)).await;
    status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(dir.0.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_lookup_cache_is_bounded() {
    let ids = (0..1100)
        .map(|i| id(5000 + i, &format!("u{i}"), &[]))
        .collect();
    let dir = Arc::new(Counting(Default::default(), Table(ids), Default::default()));
    let s = Arc::new(new_service(dir.clone(), parse(POLICY), None));
    for uid in 5000..6100 {
        status(send(&s, 0, &format!(r#"{{"type":"status","user":{uid}}}"#)).await);
    }
    assert_eq!(dir.0.load(Ordering::SeqCst), 1100);
    assert!(s.identities.cached() <= 1024);
    // the first ones are remembered, the ones past the cap are not
    status(send(&s, 0, r#"{"type":"status","user":5000}"#).await);
    status(send(&s, 0, r#"{"type":"status","user":6099}"#).await);
    assert_eq!(dir.0.load(Ordering::SeqCst), 1101);
}

#[tokio::test]
async fn groups_are_looked_up_only_when_the_policy_has_group_rules() {
    let dir = Arc::new(Counting(
        Default::default(),
        Table(vec![id(1003, "stu", &["stu", "students"])]),
        Default::default(),
    ));
    let plain = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\n";
    let s = Arc::new(new_service(dir.clone(), parse(plain), None));
    let p = Proc::new();
    let open = format!(r#"{{"type":"session_open","uid":1003,"pid":{}}}"#, p.pid());
    success(send(&s, 0, &open).await);
    assert_eq!(s.systemd().applied(1003).unwrap().cpu, Cpus::whole(2));
    status(send(&s, 1003, r#"{"type":"status"}"#).await);
    assert_eq!(dir.0.load(Ordering::SeqCst), 0, "no group lookups");
    assert_eq!(dir.2.load(Ordering::SeqCst), 1);
    // A policy with group rules: a lookup without groups no longer does,
    // and the group's defaults apply at once.
    s.reload(parse(POLICY)).await;
    assert_eq!(s.systemd().applied(1003).unwrap().cpu, Cpus::whole(1));
    let st = status(send(&s, 1003, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(1)));
    assert!(dir.0.load(Ordering::SeqCst) >= 1);
}

// ---- issue 11.1-3, 17.6-7, 17.11: leases, root's setting, bounds --------

const LEASED: &str = "\
defaults: {cpu: 2, mem: 8G}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 64, mem: 256G, overcommit: 1}
leases: {max_duration: 2h}
";

/// Issue 11.1: `{"tasks":100}` during a lease on 8 CPUs used to leave the
/// 8 CPUs without an end. The lease keeps its end; and at it, the slice goes
/// back to the default.
#[tokio::test(start_paused = true)]
async fn a_partial_resize_does_not_drop_the_lease() {
    let clock = Clock::tokio();
    let s = Arc::new(new_service(users(), parse(LEASED), None).with_clock(clock));
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":8}"#).await);
    let end = status(send(&s, 1001, r#"{"type":"status"}"#).await)
        .expires_at
        .unwrap();
    assert_eq!(end, clock.now() + 7200);
    tokio::time::advance(Duration::from_secs(60)).await;
    success(send(&s, 1001, r#"{"type":"request_resources","tasks":100}"#).await);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(8)));
    assert_eq!(
        st.expires_at,
        Some(end),
        "the partial resize kept the lease's end"
    );
    tokio::time::advance(Duration::from_secs(end - clock.now())).await;
    wait_until(|| s.ledger().get(1001).is_none()).await;
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

/// Issue 17.11, decided: asking again during a lease keeps its end (so
/// `max_duration` caps the continuous time above the default); a longer
/// `--for` is refused saying when it ends and how to start a new one.
#[tokio::test(start_paused = true)]
async fn asking_again_during_a_lease_does_not_extend_it() {
    let clock = Clock::tokio();
    let s = Arc::new(new_service(users(), parse(LEASED), None).with_clock(clock));
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    let end = clock.now() + 7200;
    tokio::time::advance(Duration::from_secs(3600)).await;
    let ok = success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    assert!(ok.message.contains("for 1h"), "{}", ok.message);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.expires_at, Some(end));
    let e = error(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"duration":"2h"}"#,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::ExceedsMax);
    assert!(
        e.error.contains("ends in 1h") && e.error.contains("fairshare-ctl release"),
        "{}",
        e.error
    );
    // a release ends the lease; a new resize starts a new one
    success(send(&s, 1001, r#"{"type":"release"}"#).await);
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert_eq!(st.expires_at, Some(clock.now() + 7200));
}

/// Issue 11.2: after root's set, the user's release goes back to root's
/// value, not the default, and their resize cannot go above it.
#[tokio::test]
async fn roots_set_survives_the_users_release_and_binds_their_resize() {
    let s = service();
    let keep = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{}}}"#,
                keep.pid()
            ),
        )
        .await,
    );
    success(send(&s, 0, r#"{"type":"set_user","user":"alice","cpu":0.5}"#).await);
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu,
        Cpus::from_millis(500)
    );
    let ok = success(send(&s, 1001, r#"{"type":"release"}"#).await);
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu,
        Cpus::from_millis(500)
    );
    assert!(ok.message.contains("root's setting"), "{}", ok.message);
    let e = error(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    assert_eq!(e.code, ErrorCode::ExceedsMax);
    assert!(
        e.error.contains("above root's setting of 0.5 CPUs")
            && e.error.contains("until root resets it"),
        "{}",
        e.error
    );
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu,
        Cpus::from_millis(500)
    );
    // the user's own resize of another field is fine; cpu stays root's
    let ok = success(send(&s, 1001, r#"{"type":"request_resources","mem":"16G"}"#).await);
    // and the answer names root's 0.5 as the user's maximum, not the policy's 8
    assert!(
        ok.message.contains("(your maximum: 0.5 CPUs, 32G memory")
            && ok.message.contains("as root set it"),
        "{}",
        ok.message
    );
    let a = s.systemd().applied(1001).unwrap();
    assert_eq!((a.cpu, a.mem), (Cpus::from_millis(500), Bytes(16 << 30)));
    // status says the same maximum
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    let max = st.max.unwrap();
    assert_eq!(
        (max.cpu, max.mem),
        (Cpus::from_millis(500), Bytes(32 << 30))
    );
    // root's --default ends it
    success(
        send(
            &s,
            0,
            r#"{"type":"set_user","user":"alice","release":true}"#,
        )
        .await,
    );
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
}

/// Issue 11.2: root's `--for` ends root's setting, back to the default.
#[tokio::test]
async fn roots_set_ends_with_its_for() {
    let s = service();
    let keep = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{}}}"#,
                keep.pid()
            ),
        )
        .await,
    );
    success(
        send(
            &s,
            0,
            r#"{"type":"set_user","user":"alice","cpu":1,"duration":"1s"}"#,
        )
        .await,
    );
    let e = error(send(&s, 1001, r#"{"type":"request_resources","cpu":2}"#).await);
    assert!(e.error.contains("for another 1s"), "{}", e.error);
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(1));
    wait_until(|| {
        s.systemd()
            .applied(1001)
            .is_some_and(|a| a.cpu == Cpus::whole(2))
    })
    .await;
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
}

/// Issue 11.3: no resize below the documented minimum, named in the answer.
#[tokio::test]
async fn resizes_below_the_minimum_are_refused() {
    let s = service();
    for (line, want) in [
        (r#"{"type":"request_resources","mem":1}"#, "minimum of 64M"),
        (r#"{"type":"request_resources","tasks":1}"#, "minimum of 32"),
        (
            r#"{"type":"request_resources","cpu":0.01}"#,
            "minimum of 0.1 CPUs",
        ),
        (
            r#"{"type":"set_user","user":"bob","mem":"1K","force":true}"#,
            "minimum of 64M",
        ),
    ] {
        let e = error(send(&s, if line.contains("set_user") { 0 } else { 1001 }, line).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
        assert!(e.error.contains(want), "{line}: {}", e.error);
    }
    assert!(s.systemd().calls().is_empty());
    assert!(s.ledger().is_empty());
}

/// Issue 17.7: root's cpu above the user's maximum does not block the
/// user's own resize of another field.
#[tokio::test]
async fn only_the_fields_a_request_changes_are_checked() {
    let s = service();
    success(send(&s, 0, r#"{"type":"set_user","user":"bob","cpu":12}"#).await);
    let ok = success(send(&s, 1002, r#"{"type":"request_resources","mem":"16G"}"#).await);
    let a = ok.allocation.unwrap();
    assert_eq!((a.cpu, a.mem), (Cpus::whole(12), Bytes(16 << 30)));
}

/// Issue 17.6: root acting on another user is told about that user, not
/// "you".
#[tokio::test]
async fn messages_to_root_about_another_user_name_them() {
    let s = service(); // 16 CPUs, no overcommit
    let ok = success(send(&s, 0, r#"{"type":"set_user","user":"bob","cpu":12}"#).await);
    assert!(
        ok.message.starts_with("bob's allocation set to 12 CPUs"),
        "{}",
        ok.message
    );
    let e = error(send(&s, 0, r#"{"type":"set_user","user":"alice","cpu":8}"#).await);
    assert_eq!(e.code, ErrorCode::NoCapacity);
    assert!(
        e.error.contains("4 CPUs free for alice") && !e.error.contains("you"),
        "{}",
        e.error
    );
    assert!(e.error.contains("--force"), "{}", e.error);
    let ok = success(send(&s, 0, r#"{"type":"set_user","user":"bob","release":true}"#).await);
    assert!(
        ok.message.starts_with("bob's allocation is back"),
        "{}",
        ok.message
    );
}

/// `status` shows root's setting and what the user's own resize may not
/// exceed; a reload that clamps a resize leaves a note (issue 17.8).
#[tokio::test]
async fn status_shows_roots_setting_and_a_clamp_leaves_a_note() {
    let s = service();
    success(
        send(
            &s,
            0,
            r#"{"type":"set_user","user":"alice","cpu":1,"duration":"1h"}"#,
        )
        .await,
    );
    success(send(&s, 1002, r#"{"type":"request_resources","cpu":6}"#).await);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    let r = st.root_setting.unwrap();
    assert_eq!((r.cpu, r.mem), (Some(Cpus::whole(1)), None));
    assert!(r.expires_at.is_some());
    assert_eq!(st.expires_at, r.expires_at);
    assert_eq!(st.source, Source::Admin);
    let changed = s
        .reload(parse(
            "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 4, mem: 32G}\n",
        ))
        .await;
    assert_eq!(changed, ["bob"]);
    let st = status(send(&s, 1002, r#"{"type":"status"}"#).await);
    assert_eq!(st.allocated_cpu, Some(Cpus::whole(4)));
    let note = st.notice.unwrap();
    assert!(
        note.contains("clamped") && note.contains("cpu 6 -> 4"),
        "{note}"
    );
}

/// A reload that sets `leases.max_duration` gives a resize above the
/// default an end, and its timer.
#[tokio::test(start_paused = true)]
async fn a_reload_that_sets_max_duration_ends_resizes_in_force() {
    let clock = Clock::tokio();
    let s = Arc::new(new_service(users(), parse(POLICY), None).with_clock(clock));
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":6}"#).await);
    assert_eq!(
        status(send(&s, 1001, r#"{"type":"status"}"#).await).expires_at,
        None
    );
    s.reload(parse(&format!("{POLICY}leases: {{max_duration: 30m}}\n")))
        .await;
    let end = status(send(&s, 1001, r#"{"type":"status"}"#).await)
        .expires_at
        .unwrap();
    assert_eq!(end, clock.now() + 1800);
    tokio::time::advance(Duration::from_secs(1800)).await;
    wait_until(|| s.ledger().get(1001).is_none()).await;
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

/// The users of [`users`], recording every lookup.
struct Recording(std::sync::Mutex<Vec<String>>, Arc<Table>);

impl Directory for Recording {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        self.0.lock().unwrap().push(format!("uid {uid}"));
        self.1.by_uid(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        self.0.lock().unwrap().push(format!("name {name}"));
        self.1.by_name(name)
    }
}

#[tokio::test]
async fn a_users_status_about_someone_else_is_refused_before_anyone_else_is_looked_up() {
    let dir = Arc::new(Recording(Default::default(), users()));
    let s = Arc::new(new_service(dir.clone(), parse(POLICY), None));
    for other in [
        r#"{"type":"status","user":"bob"}"#,
        r#"{"type":"status","user":1002}"#,
        r#"{"type":"status","user":"1002"}"#,
        r#"{"type":"status","user":"nobody-here"}"#,
    ] {
        let e = error(send(&s, 1001, other).await);
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{other}: {}", e.error);
    }
    // only the caller was ever looked up (to tell their own name)
    let seen = dir.0.lock().unwrap().clone();
    assert!(seen.iter().all(|l| l == "uid 1001"), "{seen:?}");
    // their own, by name or uid, is answered
    assert_eq!(
        status(send(&s, 1001, r#"{"type":"status","user":"alice"}"#).await).uid,
        1001
    );
    assert_eq!(
        status(send(&s, 1001, r#"{"type":"status","user":1001}"#).await).uid,
        1001
    );
    // root may ask about anyone
    assert_eq!(
        status(send(&s, 0, r#"{"type":"status","user":"bob"}"#).await).uid,
        1002
    );
}
/// Issue 12 and the reload parts of issue 17: the policy default from
/// systemd's drop-ins.
mod defaults;

/// A user database that fails every lookup while `down` (NSS unreachable).
struct Flaky {
    table: Arc<Table>,
    down: std::sync::atomic::AtomicBool,
    /// Lookups refused.
    refused: std::sync::atomic::AtomicUsize,
}

impl Directory for Flaky {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(LookupError {
                what: format!("uid {uid}"),
                source: nix::Error::EAGAIN,
            });
        }
        self.table.by_uid(uid)
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        self.table.by_name(name)
    }
}

/// The user database down at the lease's end: the lease ends once it
/// answers again, not never.
#[tokio::test(start_paused = true)]
async fn a_lease_ends_even_when_the_user_lookup_fails_at_its_end() {
    let dir = Arc::new(Flaky {
        table: users(),
        down: false.into(),
        refused: 0.into(),
    });
    let s = Arc::new(new_service(dir.clone(), parse(POLICY), None).with_clock(Clock::tokio()));
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"duration":"60s"}"#,
        )
        .await,
    );
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(4));
    dir.down.store(true, Ordering::SeqCst);
    s.identities.forget();
    tokio::time::advance(Duration::from_secs(61)).await;
    wait_until(|| dir.refused.load(Ordering::SeqCst) > 0).await;
    // the refused lookup's answer reaches the expiry, and time goes on
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu,
        Cpus::whole(4),
        "nothing to go on while the lookup fails"
    );
    dir.down.store(false, Ordering::SeqCst);
    // tried again within a few seconds
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(s.ledger().get(1001).is_none_or(|e| e.grant.is_none()));
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

/// A lease that ran out while fairshared was stopped ends in the start-up
/// catch-up itself: the slice is back at the default when it is done.
#[tokio::test(start_paused = true)]
async fn a_lease_that_ran_out_while_stopped_ends_at_start() {
    let clock = Clock::tokio();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        new_service(
            users(),
            parse(POLICY),
            Some(StateFile::open(dir.path()).unwrap()),
        )
        .with_clock(clock),
    );
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":5,"duration":"60s"}"#,
        )
        .await,
    );
    s.flush().await.unwrap();
    drop(s);
    tokio::time::advance(Duration::from_secs(120)).await;
    let saved = match StateFile::open(dir.path()).unwrap().load().unwrap() {
        crate::state::Loaded::Ledger(l) => l,
        other => panic!("{other:?}"),
    };
    let s2 = Arc::new(
        new_service(
            users(),
            parse(POLICY),
            Some(StateFile::open(dir.path()).unwrap()),
        )
        .with_clock(clock),
    );
    s2.load(saved);
    s2.catch_up().await;
    assert!(
        s2.ledger().get(1001).is_none_or(|e| e.grant.is_none()),
        "{:?}",
        s2.ledger().get(1001)
    );
    assert_eq!(s2.counters.leases_expired.load(Ordering::Relaxed), 1);
}

/// systemd failing at the lease's end: the expiry is tried again until the
/// slice is back at the default, not left at the lease's limits.
#[tokio::test(start_paused = true)]
async fn a_lease_whose_end_cannot_be_applied_is_tried_again() {
    let s = Arc::new(new_service(users(), parse(POLICY), None).with_clock(Clock::tokio()));
    let keep = Proc::new();
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{}}}"#,
                keep.pid()
            ),
        )
        .await,
    );
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":4,"duration":"60s"}"#,
        )
        .await,
    );
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(4));
    s.systemd().fail_apply.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        s.systemd().applied(1001).unwrap().cpu,
        Cpus::whole(4),
        "systemd refuses every call"
    );
    s.systemd().fail_apply.store(false, Ordering::SeqCst);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(s.systemd().applied(1001).unwrap().cpu, Cpus::whole(2));
}

/// The first look at a user's CPU after a quiet spell waits for a second
/// sample and shows CPU now over it (the sampler was asleep: no window).
#[tokio::test(start_paused = true)]
async fn the_first_look_shows_cpu_now_over_a_short_window() {
    let cg = tempfile::tempdir().unwrap();
    std::fs::write(cg.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let slice = cg.path().join("user.slice/user-1001.slice");
    std::fs::create_dir_all(&slice).unwrap();
    std::fs::write(slice.join("cpu.stat"), "usage_usec 5000000\n").unwrap();
    let fake = Fake::in_tempdir();
    let root = fake.root().unwrap().to_path_buf();
    let s = Arc::new(
        Service::new(
            fake,
            users(),
            parse(POLICY),
            HostResources {
                cpus: Cpus::whole(2),
                mem: Bytes(8 << 30),
            },
            Cgroups::detect(cg.path()),
            None,
        )
        .with_dropins(crate::dropin::Layout::under(&root)),
    );
    assert!(!s.cpu_window().wanted(tokio::time::Instant::now()));
    let t0 = tokio::time::Instant::now();
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    let r = st.usage.cpu_recent.expect("a window on the first look");
    assert!(r.window_nsec >= 1_000_000_000, "{r:?}");
    assert!(t0.elapsed() >= crate::cpu_window::FIRST_LOOK_WAIT);
    // the look woke the sampler
    assert!(s.cpu_window().wanted(tokio::time::Instant::now()));
    // the next look has its window at once
    let t1 = tokio::time::Instant::now();
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert!(st.usage.cpu_recent.is_some());
    assert_eq!(t1.elapsed(), std::time::Duration::ZERO);
}

/// The end of a session process told late (behind the user's own
/// requests), when its pid is a live session process again, counted since:
/// that session is not counted down.
#[tokio::test]
async fn a_late_end_does_not_count_down_the_session_that_took_its_pid() {
    let s = service();
    let me = std::process::id();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1001,"pid":{me},"service":"sshd"}}"#),
        )
        .await,
    );
    let started = s.ledger().get(1001).unwrap().sessions[0].start_time;
    assert!(
        started.is_some(),
        "the session's process start time is recorded"
    );
    s.session_ended(1001, me).await;
    assert_eq!(
        s.ledger().get(1001).unwrap().sessions.len(),
        1,
        "still counted"
    );
}

/// A session process killed and not yet reaped by its parent (a zombie,
/// with its pid and start time still in /proc) is counted down all the
/// same: the new-admin try's `kill -KILL` of sshd's session processes.
#[tokio::test]
async fn a_session_whose_process_is_a_zombie_is_counted_down() {
    let s = service();
    let child = std::process::Command::new("sleep")
        .arg("0.3")
        .spawn()
        .unwrap();
    let pid = child.id();
    success(
        send(
            &s,
            0,
            &format!(r#"{{"type":"session_open","uid":1001,"pid":{pid},"service":"sshd"}}"#),
        )
        .await,
    );
    // the child is not waited for: it stays a zombie while the daemon hears of its end
    for _ in 0..100 {
        if s.ledger().get(1001).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| st.contains(") Z ")),
        "still a zombie"
    );
    assert!(s.ledger().get(1001).is_none(), "counted down");
    drop(child);
}
