//! The rules a user cannot talk their way around (issue 11 items 1-3, issue
//! 17 items 6-8 and 11), through real logins, with the proof in the cgroup
//! files of the user's slice: a lease ends on time whatever the user sends,
//! root's set outlives the user's release and logout, resizes have a lower
//! bound, and the messages and journal lines name who they are about.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

/// A lease of 10 s (long enough to send a few requests during it, short
/// enough to wait for).
const LEASE: u64 = 10;

fn leased_policy(lease: u64) -> String {
    format!("{BASE_POLICY}leases:\n  max_duration: {lease}s\n")
}

/// A raw request sent by `user` from their own login, as a user could.
fn raw(h: &dyn TestHost, user: &str, line: &str) -> Out {
    h.ssh(
        user,
        &format!("echo '{line}' | nc -U -N /run/fairshare.sock"),
    )
}

/// Waits until the slice's CPU quota is the default again (2 CPUs) and
/// returns when that was seen.
fn wait_default_quota(h: &dyn TestHost, uid: u32, within: Duration) -> Instant {
    wait_for("the slice back at the default quota", within, || {
        (h.slice(uid).and_then(|l| l.cpu_quota_us) == Some(200_000)).then(Instant::now)
    })
}

/// How late the end of a lease may be seen: a second or so of the daemon's
/// timer and the polling, slower in the emulated guest.
fn lease_slack(h: &dyn TestHost) -> Duration {
    Duration::from_secs(3 * u64::from(h.slowness()))
}

// Issue 11.1: a partial resize (`{"tasks":100}`) sent during a lease used
// to keep the leased CPUs with no end. The slice's quota goes back to the
// default at the lease's end all the same.
core_test!(a_partial_resize_does_not_keep_a_lease_past_its_end, |h| {
    h.fresh_daemon(&leased_policy(LEASE));
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    h.ssh(user, "fairshare-ctl resize --cpu 6").ok();
    let granted = Instant::now();
    h.expect_limits(uid, want(6000, 8 * GIB, 4096));
    let o = raw(h, user, r#"{"type":"request_resources","tasks":100}"#);
    assert!(o.out().contains("success"), "{}", o.out());
    // the partial resize is in force, on top of the leased CPUs
    h.expect_limits(uid, want(6000, 8 * GIB, 100));
    let back = wait_default_quota(
        h,
        uid,
        Duration::from_secs(LEASE + 15 * u64::from(h.slowness())),
    );
    let took = back - granted;
    assert!(
        took <= Duration::from_secs(LEASE) + lease_slack(h),
        "the lease ended {took:?} after the resize (max_duration {LEASE}s)"
    );
    // the whole resize ended with it
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    let st = h.ssh(user, "fairshare-ctl status").ok();
    assert!(st.out().contains("reached its end"), "{}", st.out());
});

// Issue 17.11: asking again during a lease does not start a new one, so a
// user cannot hold more than the default longer than `max_duration` in one
// go; a longer `--for` is refused and says how long is left.
core_test!(asking_again_does_not_extend_a_lease, |h| {
    // The lease must outlast the two requests sent during it: three ssh
    // logins take a few seconds each in the emulated guest, so the lease
    // and the pause scale with the host's slowness (10 s and 4 s in the
    // container, 40 s and 16 s in the guest).
    let lease = LEASE * u64::from(h.slowness());
    h.fresh_daemon(&leased_policy(lease));
    let (user, uid) = TESTUSER2;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 6").ok();
    let granted = Instant::now();
    h.expect_limits(uid, want(6000, 8 * GIB, 4096));
    // late enough that a renewed lease (the old behaviour) would end more
    // than the slack after the first one
    let pause = Duration::from_secs(4 * u64::from(h.slowness()));
    assert!(pause > lease_slack(h));
    std::thread::sleep(pause);
    h.ssh(user, "fairshare-ctl resize --cpu 6 --mem 9G").ok();
    let e = h.ssh(
        user,
        &format!("fairshare-ctl resize --cpu 6 --for {lease}s"),
    );
    assert!(
        granted.elapsed() < Duration::from_secs(lease),
        "the requests took {:?}, longer than the {lease}s lease: the test proves nothing",
        granted.elapsed()
    );
    assert_eq!(e.code, 1, "{e:?}");
    assert!(
        e.stderr.contains("resizing again does not extend it")
            && e.stderr.contains("fairshare-ctl release"),
        "{}",
        e.stderr
    );
    let back = wait_default_quota(
        h,
        uid,
        Duration::from_secs(lease + 15 * u64::from(h.slowness())),
    );
    let took = back - granted;
    assert!(
        took <= Duration::from_secs(lease) + lease_slack(h),
        "the lease ended {took:?} after the first resize, not within {lease}s: asking again extended it"
    );
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
});

// Issue 11.2 and 17.7-8: root's set binds the user: their release goes back
// to root's value, not the default, their resize above it is refused
// (saying why), their logout and next login keep it, a resize of another
// field is fine; root's `set --default` ends it. The journal's refusal line
// names the user and uid.
core_test!(roots_set_survives_the_users_release_and_logout, |h| {
    h.fresh_daemon(BASE_POLICY);
    let (user, uid) = STUDENT;
    let s = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    let o = h.ctl(&format!("set {user} --cpu 0.5")).ok();
    assert!(
        o.out().starts_with(&format!("{user}'s allocation set to")),
        "{}",
        o.out()
    );
    h.expect_limits(uid, want(500, 8 * GIB, 4096));

    let o = h.ssh(user, "fairshare-ctl release").ok();
    assert!(o.out().contains("root's setting"), "{}", o.out());
    assert_eq!(
        h.slice(uid).and_then(|l| l.cpu_quota_us),
        Some(50_000),
        "release undid root's set"
    );

    let since = h.sh("date +%s.%N").ok().stdout.trim().to_string();
    let e = h.ssh(user, "fairshare-ctl resize --cpu 4");
    assert_eq!(e.code, 1, "{e:?}");
    assert!(
        e.stderr.contains("above root's setting of 0.5 CPUs"),
        "{}",
        e.stderr
    );
    assert_eq!(h.slice(uid).and_then(|l| l.cpu_quota_us), Some(50_000));
    let journal = h
        .sh(&format!(
            "journalctl --sync; journalctl -u fairshared -o cat --since @{since}"
        ))
        .ok();
    assert!(
        journal.stdout.contains(&format!(
            "resize of {user} (uid {uid}) asked by the user refused"
        )),
        "{}",
        journal.stdout
    );

    // another field than root's: only what is asked is checked
    h.ssh(user, "fairshare-ctl resize --mem 10G").ok();
    h.expect_limits(uid, want(500, 10 * GIB, 4096));

    // the last logout drops the user's own resize, not root's set
    drop(s);
    h.logout_all();
    let _s = h.session(user);
    h.expect_limits(uid, want(500, 8 * GIB, 4096));

    h.ctl(&format!("set {user} --default")).ok();
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    h.ssh(user, "fairshare-ctl resize --cpu 4").ok();
    h.expect_limits(uid, want(4000, 8 * GIB, 4096));
});

// Issue 11.3: a resize below the minimum is refused, naming it, and the
// slice keeps its limits.
core_test!(a_resize_below_the_minimum_is_refused, |h| {
    h.fresh_daemon(BASE_POLICY);
    let (user, uid) = TESTUSER3;
    let _s = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    for (args, want) in [
        ("--mem 1", "minimum of 64M"),
        ("--tasks 1", "minimum of 32"),
    ] {
        let e = h.ssh(user, &format!("fairshare-ctl resize {args}"));
        assert_eq!(e.code, 1, "{e:?}");
        assert!(e.stderr.contains(want), "{args}: {}", e.stderr);
    }
    let o = raw(h, user, r#"{"type":"request_resources","mem":1}"#);
    assert!(o.out().contains("minimum of 64M"), "{}", o.out());
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
});

// Issue 17.6: root reading another user's status is told about that user
// (given by position); a user's `set` names the command.
core_test!(messages_name_the_user_they_are_about, |h| {
    h.fresh_daemon(BASE_POLICY);
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 3").ok();
    h.expect_limits(uid, want(3000, 8 * GIB, 4096));
    let st = h.ctl(&format!("status {user}")).ok();
    assert!(
        st.out().contains(&format!("({user}'s resize)")),
        "{}",
        st.out()
    );
    assert!(!st.out().contains("your"), "{}", st.out());
    // a user naming themselves is fine
    let own = h.ssh(user, &format!("fairshare-ctl status {user}")).ok();
    assert!(own.out().contains("(your resize)"), "{}", own.out());
    let e = h.ssh(user, "fairshare-ctl set testuser2 --cpu 1");
    assert_eq!(e.code, 1, "{e:?}");
    assert!(
        e.stderr.contains("`fairshare-ctl set` is for root only") && !e.stderr.contains("set_user"),
        "{}",
        e.stderr
    );
});
