//! Memory guarantees within `capacity.mem_low` (issue 15): logins, logouts
//! and reloads share the total, and every slice carries what it is granted,
//! by as few `SetUnitProperties` as that takes: a login's one call carries
//! its guarantee (never in a drop-in), other slices get `MemoryLow` alone,
//! lowered at once and raised after a while.

use super::*;

/// Every user wants 1G; 2G are handed out in total.
fn guaranteeing(mode: &str) -> String {
    SITE.replace(
        "defaults: {cpu: 2, mem: 8G, tasks: 500}",
        "defaults: {cpu: 2, mem: 8G, tasks: 500, mem_low: 1G}",
    )
    .replace(
        "capacity: {cpu: 16, mem: 64G, overcommit: 1}",
        &format!(
            "capacity: {{cpu: 16, mem: 64G, overcommit: 1, mem_low: {{total: 2G, when_full: {mode}}}}}"
        ),
    )
}

/// The `MemoryLow` in force on the user's slice, in bytes (0: none).
fn low(s: &Service<Fake>, uid: u32) -> u64 {
    match s.systemd().in_force(uid)[&Key::MemoryLow] {
        Some(Value::Amount(n)) => n,
        None => 0,
        other => panic!("MemoryLow {other:?}"),
    }
}

/// The properties of every `SetUnitProperties` on the user's slice.
fn sets_of(s: &Service<Fake>, uid: u32) -> Vec<Vec<(String, PropertyValue)>> {
    s.systemd()
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Set(u, p) if u == uid => Some(p),
            _ => None,
        })
        .collect()
}

fn memory_low(n: u64) -> Vec<(String, PropertyValue)> {
    vec![("MemoryLow".to_string(), PropertyValue::U64(n))]
}

/// alice, bob and carol log in (their slices start from the files).
async fn three_logged_in(s: &Arc<Service<Fake>>) -> [Proc; 3] {
    let procs = [Proc::new(), Proc::new(), Proc::new()];
    for (uid, p) in [1001, 1002, 1003].into_iter().zip(&procs) {
        s.systemd().start_slice(uid);
        open(s, uid, p).await;
    }
    procs
}

/// Lets the background pass that sets other users' guarantees finish.
async fn regranted(s: &Arc<Service<Fake>>) {
    wait_until(|| !s.regrants_pending()).await;
}

const G: u64 = 1 << 30;
/// A third of 2G, rounded down to a MiB.
const THIRD: u64 = 682 << 20;

#[tokio::test]
async fn scale_shrinks_every_guarantee_at_a_login_and_gives_them_back_at_the_logout() {
    let (s, _, _d) = site(&guaranteeing("scale"));
    s.catch_up().await;
    for uid in [1001, 1002, 1003] {
        s.systemd().start_slice(uid);
    }
    let (a, b, c) = (Proc::new(), Proc::new(), Proc::new());
    open(&s, 1001, &a).await;
    open(&s, 1002, &b).await;
    regranted(&s).await;
    // within the total: each login's one call carries its guarantee alone
    // (the files give the rest, and never a guarantee)
    assert_eq!(sets_of(&s, 1001), vec![memory_low(G)]);
    assert_eq!(sets_of(&s, 1002), vec![memory_low(G)]);
    assert_eq!((low(&s, 1001), low(&s, 1002)), (G, G));
    // a third login: its own slice gets a third in its one call, the
    // others MemoryLow alone, one call each
    open(&s, 1003, &c).await;
    assert_eq!(sets_of(&s, 1003), vec![memory_low(THIRD)]);
    regranted(&s).await;
    assert_eq!(sets_of(&s, 1001), vec![memory_low(G), memory_low(THIRD)]);
    assert_eq!(sets_of(&s, 1002), vec![memory_low(G), memory_low(THIRD)]);
    let total: u64 = [1001, 1002, 1003].iter().map(|u| low(&s, *u)).sum();
    assert!(total <= 2 * G, "{total}");
    // status says so
    let st = status(send(&s, 1003, r#"{"type":"status"}"#).await);
    let fair = st.fair.join(", ");
    let want = format!(
        "{} guaranteed (scaled from 1G: the guarantees wanted exceed capacity.mem_low 2G)",
        Bytes(THIRD).human()
    );
    assert!(fair.contains(&want), "{fair}");
    // the logout: the others get theirs back in full
    close(&s, 1003, &c).await;
    regranted(&s).await;
    assert_eq!((low(&s, 1001), low(&s, 1002)), (G, G));
    assert_eq!(sets_of(&s, 1001).len(), 3);
    assert_eq!(sets_of(&s, 1001)[2], memory_low(G));
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert!(
        st.fair.iter().any(|p| p == "1G guaranteed"),
        "{:?}",
        st.fair
    );
    // memory and disk agree: the scaled values were runtime values only
    files_settle(&s).await;
    let before = s.systemd().in_force(1001);
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), before);
}

#[tokio::test]
async fn first_come_leaves_earlier_logins_alone_and_a_newcomer_gets_what_is_left() {
    let (s, _, _d) = site(&guaranteeing("first_come").replace("total: 2G", "total: 1536M"));
    s.catch_up().await;
    for uid in [1001, 1002] {
        s.systemd().start_slice(uid);
    }
    let (a, b) = (Proc::new(), Proc::new());
    open(&s, 1001, &a).await;
    open(&s, 1002, &b).await;
    regranted(&s).await;
    // the newcomer's one call carries what is left; the first has had
    // only its own login's
    assert_eq!(sets_of(&s, 1002), vec![memory_low(G / 2)]);
    assert_eq!(sets_of(&s, 1001), vec![memory_low(G)]);
    assert_eq!((low(&s, 1001), low(&s, 1002)), (G, G / 2));
    let st = status(send(&s, 1002, r#"{"type":"status"}"#).await);
    assert!(
        st.fair
            .iter()
            .any(|p| p.starts_with("512M guaranteed (of 1G wanted")
                && p.contains("when_full: first_come")),
        "{:?}",
        st.fair
    );
    // a resize to what the policy gives already puts nobody ahead: still
    // what is left
    let ok = success(send(&s, 1002, r#"{"type":"request_resources","mem_low":"1G"}"#).await);
    assert!(
        ok.message.contains("memory guarantee 512M for now"),
        "{}",
        ok.message
    );
    regranted(&s).await;
    assert_eq!((low(&s, 1001), low(&s, 1002)), (G, G / 2));
    // the first leaves: the other gets all of theirs
    close(&s, 1001, &a).await;
    regranted(&s).await;
    assert_eq!(low(&s, 1002), G);
    assert_eq!(sets_of(&s, 1002).last(), Some(&memory_low(G)));
}

#[tokio::test]
async fn a_reload_that_changes_the_total_sets_each_running_slice_once() {
    let (s, _, d) = site(&guaranteeing("scale"));
    s.catch_up().await;
    let procs = three_logged_in(&s).await;
    regranted(&s).await;
    assert_eq!(low(&s, 1001), THIRD);
    let before: Vec<usize> = [1001, 1002, 1003]
        .iter()
        .map(|u| s.systemd().sets(*u))
        .collect();
    // room for all three now
    std::fs::write(
        d.path().join("p.yaml"),
        guaranteeing("scale").replace("total: 2G", "total: 3G"),
    )
    .unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    regranted(&s).await;
    for (i, uid) in [1001, 1002, 1003].into_iter().enumerate() {
        assert_eq!(low(&s, uid), G, "uid {uid}");
        assert_eq!(s.systemd().sets(uid), before[i] + 1, "uid {uid}");
        assert_eq!(sets_of(&s, uid).last(), Some(&memory_low(G)));
    }
    // and a total of 1G: a third of that each
    std::fs::write(
        d.path().join("p.yaml"),
        guaranteeing("scale").replace("total: 2G", "total: 1G"),
    )
    .unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    regranted(&s).await;
    for uid in [1001, 1002, 1003] {
        assert_eq!(low(&s, uid), 341 << 20, "uid {uid}");
    }
    drop(procs);
}

#[tokio::test]
async fn a_guarantee_is_held_from_login_to_logout_and_never_in_a_file() {
    let (s, _, _d) = site(&guaranteeing("scale"));
    s.catch_up().await;
    // the policy default's drop-in carries the limits, not the guarantee:
    // systemd would give it to every slice that starts, counted by nobody
    let global = s.dropins.global().expect("the policy default's drop-in");
    assert!(global.get(Key::MemoryMax).is_some(), "{global:?}");
    assert_eq!(global.get(Key::MemoryLow), None, "{global:?}");
    s.systemd().start_slice(1001);
    assert_eq!(low(&s, 1001), 0, "a slice that starts has no guarantee");
    let a = Proc::new();
    open(&s, 1001, &a).await;
    assert_eq!(low(&s, 1001), G);
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert!(
        st.fair.iter().any(|p| p == "1G guaranteed"),
        "{:?}",
        st.fair
    );
    // the last logout with processes left behind (the fake's slice stays):
    // the limits stay, the guarantee goes
    close(&s, 1001, &a).await;
    regranted(&s).await;
    assert_eq!(low(&s, 1001), 0);
    assert_eq!(
        s.systemd().in_force(1001)[&Key::MemoryMax],
        Some(Value::Amount(8 << 30))
    );
    let st = status(send(&s, 0, r#"{"type":"status","user":"alice"}"#).await);
    assert!(
        st.fair
            .iter()
            .any(|p| p == "1G guaranteed while logged in (none now)"),
        "{:?}",
        st.fair
    );
    // nor does it count against the total: two others get all they want
    let (b, c) = (Proc::new(), Proc::new());
    for uid in [1002, 1003] {
        s.systemd().start_slice(uid);
    }
    open(&s, 1002, &b).await;
    open(&s, 1003, &c).await;
    regranted(&s).await;
    assert_eq!((low(&s, 1001), low(&s, 1002), low(&s, 1003)), (0, G, G));
    // and the reset's runtime file, which only repeats the files, is gone
    files_settle(&s).await;
    let before = s.systemd().in_force(1001);
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), before);
}

#[tokio::test]
async fn a_raise_waits_and_a_login_loop_costs_the_others_one_call() {
    let (s, _, _d) = site(&guaranteeing("scale"));
    s.set_raise_after(Duration::from_millis(600));
    s.catch_up().await;
    for uid in [1001, 1002, 1003] {
        s.systemd().start_slice(uid);
    }
    let (a, b) = (Proc::new(), Proc::new());
    open(&s, 1001, &a).await;
    open(&s, 1002, &b).await;
    regranted(&s).await;
    let before = sets_of(&s, 1001).len();
    // a third user logs in and out, again and again, quicker than a raise
    // waits: the others are lowered once and raised once at the end
    for _ in 0..5 {
        let c = Proc::new();
        open(&s, 1003, &c).await;
        // lowered at once: the total fits as soon as the pass has run
        wait_until(|| low(&s, 1001) == THIRD && low(&s, 1002) == THIRD).await;
        close(&s, 1003, &c).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // not raised yet
        assert_eq!(low(&s, 1001), THIRD);
    }
    regranted(&s).await;
    assert_eq!((low(&s, 1001), low(&s, 1002)), (G, G));
    assert_eq!(
        sets_of(&s, 1001)[before..],
        [memory_low(THIRD), memory_low(G)],
        "one lowering and one raise for five logins and logouts"
    );
}

#[tokio::test]
async fn the_user_manager_left_running_after_the_last_login_holds_no_guarantee() {
    let (s, _, _d) = site(&guaranteeing("first_come").replace("total: 2G", "total: 1G"));
    s.catch_up().await;
    for uid in [1001, 1002] {
        s.systemd().start_slice(uid);
    }
    let (login, manager, other) = (Proc::new(), Proc::new(), Proc::new());
    open(&s, 1001, &login).await;
    // the user manager's own session, which processes left behind keep
    // running after the last logout
    success(
        send(
            &s,
            0,
            &format!(
                r#"{{"type":"session_open","uid":1001,"pid":{},"service":"systemd-user"}}"#,
                manager.pid()
            ),
        )
        .await,
    );
    assert_eq!(low(&s, 1001), G);
    open(&s, 1002, &other).await;
    regranted(&s).await;
    assert_eq!(low(&s, 1002), 0, "first come: nothing left for the second");
    // the last login session ends, the manager stays: the guarantee goes,
    // the second user gets the room and the first place
    close(&s, 1001, &login).await;
    regranted(&s).await;
    assert_eq!(s.ledger().get(1001).map(|e| e.sessions.len()), Some(1));
    assert_eq!((low(&s, 1001), low(&s, 1002)), (0, G));
    // a login again (a second later: login order is kept in seconds)
    // comes after the second user
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = Proc::new();
    open(&s, 1001, &again).await;
    regranted(&s).await;
    assert_eq!((low(&s, 1001), low(&s, 1002)), (0, G));
    drop((manager, again, other));
}

#[tokio::test]
async fn a_failed_reset_at_the_last_logout_is_made_again() {
    let (s, _, _d) = site(&guaranteeing("scale"));
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let a = Proc::new();
    open(&s, 1001, &a).await;
    assert_eq!(low(&s, 1001), G);
    // systemd refuses the last logout's call once: the guarantee stays on
    // the slice, counted by nobody, until the retry
    s.systemd()
        .fail_apply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = send(
        &s,
        0,
        &format!(r#"{{"type":"session_close","uid":1001,"pid":{}}}"#, a.pid()),
    )
    .await;
    assert_eq!(low(&s, 1001), G);
    s.systemd()
        .fail_apply
        .store(false, std::sync::atomic::Ordering::SeqCst);
    regranted(&s).await;
    assert_eq!(low(&s, 1001), 0);
}

#[tokio::test]
async fn a_reload_keeps_roots_setting_that_equalled_the_old_default_while_guarantees_move() {
    let (s, _, d) = site(&guaranteeing("scale"));
    s.catch_up().await;
    let procs = three_logged_in(&s).await;
    // root holds alice at 8G, the default as it is
    success(send(&s, 0, r#"{"type":"set_user","user":"alice","mem":"8G"}"#).await);
    regranted(&s).await;
    assert_eq!(low(&s, 1001), THIRD);
    // a reload raises the default to 9G and the total (every guarantee
    // moves: each slice gets a call of its own, whose file work follows)
    std::fs::write(
        d.path().join("p.yaml"),
        guaranteeing("scale")
            .replace(
                "mem: 8G, tasks: 500, mem_low",
                "mem: 9G, tasks: 500, mem_low",
            )
            .replace("total: 2G", "total: 3G"),
    )
    .unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    regranted(&s).await;
    files_settle(&s).await;
    assert_eq!(low(&s, 1001), G);
    assert_eq!(
        s.systemd().in_force(1001)[&Key::MemoryMax],
        Some(Value::Amount(8 << 30))
    );
    // what the files and runtime values say holds it after a daemon-reload
    s.systemd().daemon_reload();
    assert_eq!(
        s.systemd().in_force(1001)[&Key::MemoryMax],
        Some(Value::Amount(8 << 30)),
        "root's 8G, not the new default"
    );
    assert_eq!(
        s.systemd().in_force(1002)[&Key::MemoryMax],
        Some(Value::Amount(9 << 30))
    );
    drop(procs);
}

#[tokio::test]
async fn a_resize_of_the_guarantee_without_a_login_says_it_holds_none_yet() {
    let (s, _, _d) = site(&guaranteeing("scale").replace("max: {", "max: {mem_low: 2G, "));
    s.catch_up().await;
    let ok = success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","mem_low":"1536M"}"#,
        )
        .await,
    );
    assert!(
        ok.message
            .contains("no memory guarantee for now: one is held while you are logged in"),
        "{}",
        ok.message
    );
    assert_eq!(low(&s, 1001), 0);
}
