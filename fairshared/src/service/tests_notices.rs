//! The service's side of issue 14 on the fake systemd: the login line in
//! `session_open`'s answer, the `events` and `notices` requests, status,
//! watchers per user, and what becomes of an event found.

use std::sync::Arc;

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::events::{EventKind, Notified};
use fairshare_proto::units::{Bytes, Cpus};
use fairshare_proto::wire::{ErrorCode, NoticesSource, Response, parse_request};

use super::*;
use crate::events::watch::Found;
use crate::systemd::{Fake, LogindSession};

use super::tests::Table;

fn service(policy: &str) -> Arc<Service<Fake>> {
    service_in(policy, Cgroups::detect("/nonexistent-cgroup-root"))
}

fn service_in(policy: &str, cgroups: Cgroups) -> Arc<Service<Fake>> {
    let ids = ["root", "alice", "bob"]
        .iter()
        .zip([0, 1001, 1002])
        .map(|(n, u)| Identity {
            uid: u,
            name: n.to_string(),
            groups: vec![n.to_string()],
        })
        .collect();
    Arc::new(Service::new(
        Fake::default(),
        Arc::new(Table(ids)),
        Policy::from_sources(&[("p.yaml".into(), policy.into())]).unwrap(),
        HostResources {
            cpus: Cpus::whole(16),
            mem: Bytes(64 << 30),
        },
        cgroups,
        None,
    ))
}

const POLICY: &str = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\n";

async fn send(s: &Arc<Service<Fake>>, uid: u32, line: &str) -> Response {
    s.handle(
        Peer { uid, pid: None },
        parse_request(line.as_bytes()).unwrap(),
    )
    .await
}

fn open_line(uid: u32) -> String {
    format!(
        r#"{{"type":"session_open","uid":{uid},"pid":{},"service":"sshd","tty":"ssh"}}"#,
        std::process::id()
    )
}

#[tokio::test]
async fn the_login_line_comes_with_the_answer_to_session_open() {
    let s = service(POLICY);
    let Response::Success(ok) = send(&s, 0, &open_line(1001)).await else {
        panic!("not a success")
    };
    assert_eq!(
        ok.login_line.as_deref(),
        Some(
            "fairshare: 2 CPUs, 8G memory, 4096 tasks on this host (you may resize up to 8 CPUs, 32G: fairshare-ctl resize)"
        )
    );
    // a resize with a lease says how long it has left
    let r = send(
        &s,
        1001,
        r#"{"type":"request_resources","cpu":4,"duration":"2h"}"#,
    )
    .await;
    assert!(matches!(r, Response::Success(_)), "{r:?}");
    let Response::Success(ok) = send(&s, 0, &open_line(1001)).await else {
        panic!("not a success")
    };
    let line = ok.login_line.unwrap();
    assert!(
        line.starts_with("fairshare: 4 CPUs, 8G memory, 4096 tasks on this host (resized, 1h59m")
            || line
                .starts_with("fairshare: 4 CPUs, 8G memory, 4096 tasks on this host (resized, 2h"),
        "{line}"
    );
    // exempt users get none, nor does anyone when the policy says so
    let Response::Success(ok) = send(&s, 0, &open_line(0)).await else {
        panic!("not a success")
    };
    assert_eq!(ok.login_line, None);
    let quiet = service(&format!("{POLICY}notices: {{login_line: false}}\n"));
    let Response::Success(ok) = send(&quiet, 0, &open_line(1002)).await else {
        panic!("not a success")
    };
    assert_eq!(ok.login_line, None);
    assert!(ok.allocation.is_some());
}

#[tokio::test]
async fn watchers_start_at_the_first_session_and_stop_at_the_last() {
    let s = service(POLICY);
    assert!(!s.notices.watchers.contains(&1001));
    send(&s, 0, &open_line(1001)).await;
    assert!(s.notices.watchers.contains(&1001));
    let close = format!(
        r#"{{"type":"session_close","uid":1001,"pid":{}}}"#,
        std::process::id()
    );
    let r = send(&s, 0, &close).await;
    assert!(matches!(r, Response::Success(_)), "{r:?}");
    assert!(!s.notices.watchers.contains(&1001));
    // the sweep (start-up, logind) starts watchers for users with sessions
    // and stops those of users without
    send(&s, 0, &open_line(1002)).await;
    s.events_stopped(1002);
    s.events_started(1001, false);
    s.sweep_event_watchers(None);
    assert!(s.notices.watchers.contains(&1002));
    s.sweep_event_watchers(Some(1001));
    assert!(!s.notices.watchers.contains(&1001));
}

#[tokio::test]
async fn a_follower_gets_the_list_then_each_new_event_of_its_user() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s = service(POLICY);
    let (client, server) = tokio::net::UnixStream::pair().unwrap();
    let q = fairshare_proto::wire::EventsQuery {
        follow: true,
        ..Default::default()
    };
    let task = tokio::spawn({
        let s = s.clone();
        async move {
            s.follow_events(
                Peer {
                    uid: 1001,
                    pid: None,
                },
                q,
                server,
            )
            .await
        }
    });
    let mut lines = BufReader::new(client).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.contains(r#""type":"event_list""#), "{first}");
    s.event_found(1002, Found::OomKills { count: 1, slice: 1 })
        .await;
    s.event_found(1001, Found::OomKills { count: 3, slice: 1 })
        .await;
    let next = lines.next_line().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(v["type"], "event");
    assert_eq!(v["uid"], 1001, "only the follower's own: {next}");
    assert_eq!(v["event"]["count"], 3);
    // the daemon stops: followers hang up
    s.stop_followers();
    assert_eq!(lines.next_line().await.unwrap(), None);
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn events_are_the_callers_own_unless_root() {
    let s = service(POLICY);
    let Response::EventList(l) = send(&s, 1001, r#"{"type":"events"}"#).await else {
        panic!("not an event list")
    };
    assert_eq!((l.uid, l.user.as_str()), (1001, "alice"));
    assert!(l.events.is_empty());
    assert_eq!(l.terminal_notices.source, NoticesSource::Policy);
    assert!(l.terminal_notices.enabled);
    for line in [
        r#"{"type":"events","user":"bob"}"#,
        r#"{"type":"events","user":1002}"#,
        r#"{"type":"notices","terminal":"off","user":"bob"}"#,
        // refused before any look-up: no telling who exists
        r#"{"type":"events","user":"nosuch"}"#,
        r#"{"type":"notices","terminal":"on","user":123456}"#,
    ] {
        let Response::Error(e) = send(&s, 1001, line).await else {
            panic!("{line} allowed")
        };
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{line}");
        assert!(e.error.contains("leave out --user"), "{}", e.error);
    }
    let Response::EventList(l) = send(&s, 0, r#"{"type":"events","user":"bob"}"#).await else {
        panic!("root may")
    };
    assert_eq!(l.uid, 1002);
    let Response::Error(e) = send(&s, 0, r#"{"type":"events","user":"nosuch"}"#).await else {
        panic!("no such user")
    };
    assert_eq!(e.code, ErrorCode::UnknownUser);
}

#[tokio::test]
async fn an_event_is_recorded_told_or_not_and_shown_in_status() {
    let s = service(POLICY);
    send(&s, 0, &open_line(1001)).await;
    // no terminal: recorded, not told
    s.event_found(1001, Found::OomKills { count: 2, slice: 9 })
        .await;
    // notices off (saved choice): recorded as off, even with a terminal
    let r = send(&s, 1001, r#"{"type":"notices","terminal":"off"}"#).await;
    let Response::Success(ok) = r else {
        panic!("{r:?}")
    };
    assert!(
        ok.message.contains("off (set with fairshare-ctl notices)"),
        "{}",
        ok.message
    );
    s.systemd().sessions.lock().unwrap().push(LogindSession {
        id: "3".into(),
        uid: 1001,
        user: "alice".into(),
        leader: 1,
        tty: "pts/9999".into(),
        ..LogindSession::default()
    });
    s.event_found(
        1001,
        Found::Throttled {
            kind: EventKind::CpuThrottled,
            percent: 93,
            window_secs: 60,
        },
    )
    .await;
    let st = match send(&s, 1001, r#"{"type":"status"}"#).await {
        Response::StatusInfo(st) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!(st.events.len(), 2);
    let (kill, busy) = (&st.events[0], &st.events[1]);
    assert_eq!(kill.kind, EventKind::OomKill);
    assert_eq!((kill.count, kill.notified), (2, Notified::NoTerminal));
    assert_eq!(kill.limit.mem, Some(Bytes(8 << 30)));
    assert!(kill.processes.is_empty(), "no kernel log here");
    assert_eq!(busy.kind, EventKind::CpuThrottled);
    assert_eq!(busy.limit.cpu, Some(Cpus::whole(2)));
    assert_eq!((busy.share_pct, busy.notified), (Some(93), Notified::Off));
    let t = st.terminal_notices.unwrap();
    assert!(!t.enabled);
    assert_eq!(t.source, NoticesSource::User);
    // back to the policy's default; events still listed, `since` filters
    send(&s, 1001, r#"{"type":"notices","terminal":"default"}"#).await;
    let Response::EventList(l) = send(&s, 1001, r#"{"type":"events"}"#).await else {
        panic!("not an event list")
    };
    assert_eq!(l.events.len(), 2);
    assert_eq!(l.terminal_notices.source, NoticesSource::Policy);
    let since = format!(r#"{{"type":"events","since":{}}}"#, now() + 60);
    let Response::EventList(l) = send(&s, 1001, &since).await else {
        panic!("not an event list")
    };
    assert!(l.events.is_empty());
    // the metrics count them
    let Response::Metrics { text } = send(&s, 0, r#"{"type":"metrics"}"#).await else {
        panic!("no metrics")
    };
    assert!(
        text.contains("fairshare_events_total{kind=\"oom_kill\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fairshare_events_total{kind=\"cpu_throttled\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fairshare_notices_total{outcome=\"off\"} 1"),
        "{text}"
    );
    assert!(text.contains("fairshare_event_watchers 1"), "{text}");
}

/// A notice no terminal took (the user's terminal refuses messages, or is
/// gone) holds nothing back: the next kill of the burst is told when it can
/// be, not recorded as "a burst already told".
#[tokio::test]
async fn a_notice_no_terminal_took_holds_nothing_back() {
    let s = service(POLICY);
    send(&s, 0, &open_line(1001)).await;
    // a logind session whose terminal cannot be written
    s.systemd().sessions.lock().unwrap().push(LogindSession {
        id: "3".into(),
        uid: 1001,
        user: "alice".into(),
        leader: 1,
        tty: "pts/9999".into(),
        ..LogindSession::default()
    });
    for slice in [9, 9, 9] {
        s.event_found(1001, Found::OomKills { count: 1, slice })
            .await;
    }
    let Response::EventList(l) = send(&s, 1001, r#"{"type":"events"}"#).await else {
        panic!("not an event list")
    };
    let told: Vec<Notified> = l.events.iter().map(|e| e.notified).collect();
    assert_eq!(told, vec![Notified::NoTerminal; 3]);
}

#[tokio::test]
async fn the_policy_can_turn_terminal_notices_off_by_default() {
    let s = service(&format!("{POLICY}notices: {{terminal: false}}\n"));
    s.event_found(1001, Found::OomKills { count: 1, slice: 1 })
        .await;
    let Response::EventList(l) = send(&s, 1001, r#"{"type":"events"}"#).await else {
        panic!("not an event list")
    };
    assert_eq!(l.events[0].notified, Notified::Off);
    assert!(!l.terminal_notices.enabled);
    send(&s, 1001, r#"{"type":"notices","terminal":"on"}"#).await;
    let Response::EventList(l) = send(&s, 1001, r#"{"type":"events"}"#).await else {
        panic!("not an event list")
    };
    assert!(l.terminal_notices.enabled);
    assert_eq!(l.terminal_notices.source, NoticesSource::User);
}

/// Root's setting binds the user's resizes: the login line offers no resize
/// above it.
#[tokio::test]
async fn the_login_line_offers_nothing_above_roots_setting() {
    let s = service(POLICY);
    let r = send(&s, 0, r#"{"type":"set_user","user":"alice","cpu":1}"#).await;
    assert!(matches!(r, Response::Success(_)), "{r:?}");
    let Response::Success(ok) = send(&s, 0, &open_line(1001)).await else {
        panic!("not a success")
    };
    assert_eq!(
        ok.login_line.as_deref(),
        Some(
            "fairshare: 1 CPU, 8G memory, 4096 tasks on this host (you may resize up to 32G: fairshare-ctl resize)"
        )
    );
    // root's setting at the top of every field: nothing left to offer
    let r = send(&s, 0, r#"{"type":"set_user","user":"alice","mem":"8G"}"#).await;
    assert!(matches!(r, Response::Success(_)), "{r:?}");
    let Response::Success(ok) = send(&s, 0, &open_line(1001)).await else {
        panic!("not a success")
    };
    assert_eq!(
        ok.login_line.as_deref(),
        Some("fairshare: 1 CPU, 8G memory, 4096 tasks on this host (the most you may have here)")
    );
}

/// A cgroup v2 root in a temporary directory, with alice's slice counting
/// `kills` OOM kills at its own limit; made anew (another inode) when
/// there already.
fn v2_slice(root: &std::path::Path, kills: u64) {
    let dir = root.join("user.slice/user-1001.slice");
    let next = root.join("next-slice");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    for f in ["memory.events", "memory.events.local"] {
        let own = if f == "memory.events" { kills } else { 0 };
        std::fs::write(
            next.join(f),
            format!("low 0\nhigh 0\nmax 0\noom {kills}\noom_kill {own}\n"),
        )
        .unwrap();
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::rename(&next, &dir).unwrap();
}

/// The OOM kills recorded for alice, once `want` are (at most 10 s).
async fn kills_recorded(s: &Arc<Service<Fake>>, want: u32) -> u32 {
    let count = || {
        s.notices
            .events(1001, None)
            .iter()
            .filter(|e| e.kind == EventKind::OomKill)
            .map(|e| e.count)
            .sum::<u32>()
    };
    for _ in 0..200 {
        if count() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    count()
}

/// A login logind reports before the PAM module's call reaches the daemon
/// (a slow login: the follower counts it first) is a first session all
/// the same: a kill in its slice before any watcher was there is an event,
/// once. Counted at start-up instead, the same kill is old news.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_logind_reports_first_is_watched_from_its_start() {
    for live in [true, false] {
        let t = tempfile::tempdir().unwrap();
        v2_slice(t.path(), 1);
        let s = service_in(POLICY, Cgroups::detect(t.path()));
        s.systemd().sessions.lock().unwrap().push(LogindSession {
            id: "7".into(),
            uid: 1001,
            user: "alice".into(),
            leader: std::process::id(),
            ..LogindSession::default()
        });
        s.reconcile(live.then_some(1001)).await;
        assert!(s.notices.watchers.contains(&1001));
        let want = u32::from(live);
        assert_eq!(kills_recorded(&s, want).await, want, "live {live}");
        // the module's own call comes after: nothing more
        send(&s, 0, &open_line(1001)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(kills_recorded(&s, want).await, want, "live {live}");
    }
}

/// The slice of the user's last login, whose watcher still runs (on v2
/// nothing wakes it when the slice goes), and a new login whose first
/// session was counted before the last one's were counted down (logind's
/// report first, or a user manager slow to exit): the new slice is another
/// slice, watched at once, and its kills from before the watcher are this
/// login's. The issue-14 relogins, the v2 guest's failing case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slice_is_watched_whoever_counted_the_login() {
    let t = tempfile::tempdir().unwrap();
    v2_slice(t.path(), 0);
    let s = service_in(POLICY, Cgroups::detect(t.path()));
    send(&s, 0, &open_line(1001)).await;
    assert!(s.notices.watchers.contains(&1001));
    // its watcher past its first look at the slice (else it ends at once,
    // seeing the next one, and nothing runs)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // the next login's slice, with its kill, while the session is counted
    v2_slice(t.path(), 1);
    s.events_started(1001, false);
    assert_eq!(kills_recorded(&s, 1).await, 1);
    // more sessions on that slice: nothing more
    s.events_started(1001, false);
    s.events_started(1001, true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(kills_recorded(&s, 1).await, 1);
}
