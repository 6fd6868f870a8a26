//! The policy default from systemd's own drop-ins (issue 12) and reloads
//! that fail visibly and never take the socket down (issue 17 items 1, 2, 3,
//! 8, 9), against the real systemd, logind, sshd and PAM of the test host.
//! Every check reads the cgroup files of the user's slice.
//!
//! The core tests run on both test hosts; a reboot, `make uninstall` and the
//! Debian package are the container's own tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fairshare_e2e::*;

const POLICY: &str = "\
defaults: {cpu: 2, mem: 8G, tasks: 4096}
max: {cpu: 8, mem: 32G, tasks: 8192}
capacity: {cpu: 64, mem: 256G}
exempt:
  users: [testuser3]
groups:
  students:
    defaults: {cpu: 1, mem: 2G}
";

const GLOBAL: &str = "/etc/systemd/system/user-.slice.d/40-fairshare.conf";
/// What systemd's own `TasksMax=33%` comes to on this host, measured on a
/// transient unit of its own (not on a user slice).
fn systemds_33_percent(h: &dyn TestHost) -> u64 {
    let o = h
        .sh(
            "systemd-run -q --unit fs-e2e-tasks-probe -p TasksMax=33% sleep 30 && \
             systemctl show -P TasksMax fs-e2e-tasks-probe.service; \
             systemctl stop fs-e2e-tasks-probe.service 2>/dev/null; true",
        )
        .ok();
    let n: u64 = o.out().lines().last().unwrap().parse().unwrap();
    // not a figure of the policies here (it depends on the host's pid_max)
    assert!(![4096, 8192].contains(&n) && n < u64::MAX, "{n}");
    n
}

/// Waits until the slice carries systemd's own defaults: no CPU quota, no
/// memory limit, 33% of the tasks, and no fairshare value in any file. (On
/// v1 a slice with no CPU limit may have no `cpu` cgroup at all: a missing
/// file is no limit.)
#[track_caller]
fn expect_systemds_own(h: &dyn TestHost, uid: u32, tasks33: u64) {
    let read = || {
        let f = |file| h.slice_file(uid, file).and_then(|p| h.read(&p));
        (f(File::CpuQuota), f(File::MemMax), f(File::TasksMax))
    };
    // no limit: v2 `max`, v1 -1 or the largest page-aligned value
    let none = |t: &Option<String>| {
        t.as_deref().is_none_or(|t| {
            let first = t.split_whitespace().next().unwrap_or("max");
            first == "max" || first == "-1" || first.parse::<u64>().is_ok_and(|v| v >= 1 << 62)
        })
    };
    let own = |(cpu, mem, tasks): &(Option<String>, Option<String>, Option<String>)| {
        none(cpu)
            && mem.is_some()
            && none(mem)
            && tasks.as_deref().map(str::trim) == Some(&*tasks33.to_string())
    };
    let start = Instant::now();
    let mut last = read();
    while !own(&last) && start.elapsed() < h.patience(10) {
        std::thread::sleep(Duration::from_millis(50));
        last = read();
    }
    assert!(
        own(&last),
        "user-{uid}.slice on the {}: want systemd's own defaults (no quota, no memory limit, {tasks33} tasks), got (CPU quota, memory, tasks) {last:?}",
        h.name()
    );
    let inf = h.sh(&format!(
        "grep -rl infinity /run/systemd/system.control/user-{uid}.slice.d /etc/systemd/system/user-{uid}.slice.d 2>/dev/null; true"
    ));
    assert!(inf.out().is_empty(), "an explicit infinity: {}", inf.out());
}

/// The runtime control files of fairshare's keys on a user's slice.
fn control_files(h: &dyn TestHost, uid: u32) -> String {
    h.sh(&format!(
        "cd /run/systemd/system.control/user-{uid}.slice.d 2>/dev/null && \
         ls 50-CPUQuota.conf 50-MemoryMax*.conf 50-MemoryHigh*.conf 50-TasksMax*.conf 2>/dev/null; true"
    ))
    .out()
    .to_string()
}

/// One counter of `fairshare-ctl metrics`.
fn metric(h: &dyn TestHost, name: &str) -> u64 {
    let m = h.ctl("metrics").ok();
    value_after(m.out(), &format!("\n{name} "))
}

/// fairshared and its socket stopped for the rest of the scope.
fn stop_daemon(h: &dyn TestHost) -> Undo<'_> {
    h.sh("systemctl stop fairshared.socket fairshared.service")
        .ok();
    Undo(
        h,
        "systemctl reset-failed fairshared.service fairshared.socket 2>/dev/null; \
         systemctl start fairshared.socket fairshared.service; true"
            .into(),
    )
}

/// Ends the test users' sessions and waits until their slices are gone, so
/// the next login starts a slice from the files.
fn no_slices(h: &dyn TestHost) {
    h.logout_all();
    // Where root's commands are an ssh login themselves (the guest), root's
    // slice stays: ending it would end the harness's own connection.
    let root_cmds_log_in = h
        .sh("cat /proc/self/cgroup")
        .ok()
        .stdout
        .contains("/user-0.slice");
    if !root_cmds_log_in {
        h.sh("loginctl terminate-user root 2>/dev/null; true");
    }
    let root = (!root_cmds_log_in).then_some(0);
    let slices: Vec<String> = root
        .into_iter()
        .chain(ALL_UIDS)
        .map(|u| format!("user-{u}.slice"))
        .collect();
    wait_for("user slices to stop", h.patience(20), || {
        let o = h.sh(&format!(
            "systemctl list-units --no-legend --state=active {} | wc -l",
            slices.join(" ")
        ));
        (o.out() == "0").then_some(())
    });
}

/// First logins with fairshared unreachable: the ordinary user gets the
/// policy default, the group member (named by the policy) their group's,
/// root and the exempt user systemd's own defaults. Returns the sessions.
fn first_logins_get_the_files(h: &dyn TestHost) -> Vec<Session> {
    let tasks33 = systemds_33_percent(h);
    let s = vec![
        h.session(TESTUSER.0),
        h.session(STUDENT.0),
        h.session(TESTUSER3.0),
        h.session("root"),
    ];
    h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
    h.expect_limits(STUDENT.1, want(1000, 2 * GIB, 4096));
    expect_systemds_own(h, TESTUSER3.1, tasks33);
    expect_systemds_own(h, 0, tasks33);
    // the shells are in those slices
    for (uid, sess) in [(TESTUSER.1, &s[0]), (STUDENT.1, &s[1])] {
        h.assert_in_slice(sess.pid, uid, "a first login's shell");
    }
    s
}

core_test!(
    daemon_and_socket_stopped_logins_get_the_policy_default_from_systemd,
    |h| {
        h.fresh_daemon(POLICY);
        let g = h.read(GLOBAL).expect("the policy default drop-in");
        assert!(
            g.starts_with("# Written by fairshared")
                && g.contains("CPUQuota=200%")
                && g.contains("MemoryMax=8589934592")
                && g.contains("TasksMax=4096"),
            "{g}"
        );
        no_slices(h);
        let before = h
            .sh("journalctl -n 1 --show-cursor --no-pager -o cat | sed -n 's/^-- cursor: //p'")
            .ok()
            .out()
            .to_string();
        {
            let _down = stop_daemon(h);
            let sessions = first_logins_get_the_files(h);
            // the module says what the login really got
            let log = h
                .sh(&format!(
                    "journalctl --no-pager -o cat --after-cursor='{before}' | grep pam_fairshare"
                ))
                .ok();
            assert!(
                log.out().contains(
                    "testuser logs in with the policy default from systemd's drop-in (CPUQuota=200%"
                ),
                "{}",
                log.out()
            );
            assert!(
                log.out()
                    .contains("student1 logs in with their own default from systemd's drop-in"),
                "{}",
                log.out()
            );
            assert!(!log.out().contains("WITHOUT"), "{}", log.out());
            // the daemon comes back (Undo) while the sessions are open
            drop(_down);
            h.wait_socket();
            // catching up counted the sessions and wrote nothing: every slice
            // already had what it should
            assert_eq!(metric(h, "fairshare_slice_writes_total"), 0);
            assert_eq!(h.sessions_from(TESTUSER.1, "sshd"), 1);
            h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
            // a resize works, with one call
            h.ssh(TESTUSER.0, "fairshare-ctl resize --cpu 3").ok();
            h.expect_limits(TESTUSER.1, want(3000, 8 * GIB, 4096));
            assert_eq!(metric(h, "fairshare_slice_writes_total"), 1);
            drop(sessions);
        }
    }
);

core_test!(
    with_the_daemon_binary_missing_logins_get_the_policy_default_from_systemd,
    |h| {
        h.fresh_daemon(POLICY);
        no_slices(h);
        h.sh("systemctl stop fairshared.service").ok();
        h.sh("mv /usr/local/sbin/fairshared /usr/local/sbin/fairshared.away")
            .ok();
        let _back = Undo(
            h,
            "mv /usr/local/sbin/fairshared.away /usr/local/sbin/fairshared 2>/dev/null; \
         systemctl reset-failed fairshared.service fairshared.socket 2>/dev/null; \
         systemctl restart fairshared.socket fairshared.service; true"
                .into(),
        );
        let sessions = first_logins_get_the_files(h);
        assert_ne!(
            h.sh("systemctl is-active fairshared.service").out(),
            "active"
        );
        drop(_back);
        h.wait_socket();
        h.ssh(TESTUSER.0, "fairshare-ctl resize --mem 9G").ok();
        h.expect_limits(TESTUSER.1, want(2000, 9 * GIB, 4096));
        drop(sessions);
    }
);

#[test]
fn after_a_reboot_with_fairshared_disabled_logins_get_the_policy_default_from_systemd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testhost/testhost.sh");
    {
        let h = Container::get();
        h.fresh_daemon(POLICY);
        h.sh("systemctl disable --now fairshared.socket fairshared.service")
            .ok();
    }
    // the container's root (and so /etc) is kept; /run is new
    for step in ["down", "up"] {
        let o = Command::new(&script).arg(step).output().unwrap();
        assert!(
            o.status.success(),
            "testhost.sh {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let h = Container::get();
    let _enable = Undo(
        &h,
        "systemctl enable --now fairshared.socket fairshared.service".into(),
    );
    assert_eq!(
        h.sh("systemctl is-active fairshared.service fairshared.socket")
            .out(),
        "inactive\ninactive"
    );
    assert!(
        !h.path("/run/systemd/system.control/user-1001.slice.d")
            .exists(),
        "runtime values survived the reboot?"
    );
    let sessions = first_logins_get_the_files(&h);
    drop(_enable);
    h.wait_socket();
    assert_eq!(metric(&h, "fairshare_slice_writes_total"), 0);
    drop(sessions);
}

core_test!(
    a_reload_with_a_changed_default_reaches_live_slices_and_new_logins,
    |h| {
        h.fresh_daemon(POLICY);
        let _a = h.session(TESTUSER.0);
        h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
        let writes = metric(h, "fairshare_slice_writes_total");
        h.write(
            "/etc/fairshare/policy.d/50-test.yaml",
            &POLICY.replace("cpu: 2, mem: 8G", "cpu: 3, mem: 8G"),
        );
        let o = h.sh("systemctl reload fairshared 2>&1").ok();
        assert!(o.out().is_empty(), "{}", o.out());
        h.expect_limits(TESTUSER.1, want(3000, 8 * GIB, 4096));
        // one call for the one live user at the default, and no runtime file
        // holds the default (it is the file's)
        assert_eq!(metric(h, "fairshare_slice_writes_total"), writes + 1);
        wait_for("control files removed", h.patience(5), || {
            control_files(h, TESTUSER.1).is_empty().then_some(())
        });
        assert!(h.read(GLOBAL).unwrap().contains("CPUQuota=300%"));
        // the reload names who changed
        let log = h
            .sh("journalctl -u fairshared --no-pager -o cat -n 30 | grep 'policy reloaded'")
            .ok();
        assert!(
            log.out().contains("limits changed for 1 user(s): testuser"),
            "{}",
            log.out()
        );
        // a new login gets it from systemd's file
        let _b = h.session(TESTUSER2.0);
        h.expect_limits(TESTUSER2.1, want(3000, 8 * GIB, 4096));
        assert_eq!(metric(h, "fairshare_slice_writes_total"), writes + 1);
        // memory and disk agree
        h.sh("systemctl daemon-reload").ok();
        h.expect_limits(TESTUSER.1, want(3000, 8 * GIB, 4096));
        h.expect_limits(TESTUSER2.1, want(3000, 8 * GIB, 4096));
    }
);

core_test!(
    a_bad_policy_fails_the_reload_visibly_keeps_the_drop_ins_and_never_the_socket_down,
    |h| {
        h.fresh_daemon(POLICY);
        let _fix = Undo(
            h,
            format!(
                "cat > /etc/fairshare/policy.d/50-test.yaml <<'EOF'\n{POLICY}EOF\n\
             systemctl reset-failed fairshared.service fairshared.socket 2>/dev/null; \
             systemctl restart fairshared.socket fairshared.service"
            ),
        );
        let stat = |h: &dyn TestHost| {
            h.sh(&format!("stat -c '%Y.%y %s' {GLOBAL}; md5sum {GLOBAL}"))
                .ok()
                .stdout
        };
        let before = stat(h);
        h.write(
            "/etc/fairshare/policy.d/50-test.yaml",
            "defaults: {cpu: 0, mem: 8G}\n",
        );
        // 17.1: systemctl reload fails, and says why where an admin looks
        let o = h.sh("systemctl reload fairshared 2>&1");
        assert_ne!(o.code, 0, "{o:?}");
        let status = h
            .sh("systemctl status --no-pager -l -n 20 fairshared 2>&1")
            .stdout;
        assert!(
            status.contains("defaults.cpu: `0` must be greater than zero"),
            "{status}"
        );
        assert!(status.contains("LAST GOOD policy"), "{status}");
        assert_eq!(h.sh("systemctl is-active fairshared").out(), "active");
        assert_eq!(stat(h), before, "the drop-in changed");
        let list = h.ctl("list").ok();
        assert!(
            list.out().contains("WARNING: the policy at"),
            "{}",
            list.out()
        );
        // 17.2: a restart serves with the last good policy; logins work and are
        // limited; the socket never fails
        h.sh("systemctl restart fairshared").ok();
        assert_eq!(h.sh("systemctl is-active fairshared").out(), "active");
        let _s = h.session(TESTUSER.0);
        h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
        // stopped with the socket listening: logins start it again (before,
        // each exited 78 until the socket hit its start limit)
        for _ in 0..3 {
            h.sh("systemctl stop fairshared.service").ok();
            assert_eq!(h.ssh(TESTUSER2.0, "echo in").ok().out(), "in");
            assert_eq!(h.sh("systemctl is-active fairshared").out(), "active");
        }
        assert_ne!(
            h.sh("systemctl is-failed fairshared.socket").out(),
            "failed"
        );
        let check = h.sh("fairshared --check 2>&1");
        assert_eq!(check.code, 78);
        assert!(
            check.out().contains("keeps the last policy that loaded"),
            "{}",
            check.out()
        );
        assert!(h.ctl("list").ok().out().contains("WARNING: the policy at"));
        assert_eq!(stat(h), before, "the drop-in changed");
        // fixed: one reload works and the warning is gone
        h.write(
            "/etc/fairshare/policy.d/50-test.yaml",
            &POLICY.replace("cpu: 2, mem: 8G", "cpu: 4, mem: 8G"),
        );
        h.sh("systemctl reload fairshared").ok();
        h.expect_limits(TESTUSER.1, want(4000, 8 * GIB, 4096));
        assert!(!h.ctl("list").ok().out().contains("WARNING"));
    }
);

core_test!(
    a_user_removed_from_an_exempt_group_is_counted_and_limited_at_the_reload,
    |h| {
        h.sh("groupadd -f fs-admins && gpasswd -a testuser fs-admins >/dev/null")
            .ok();
        let _g = Undo(h, "groupdel fs-admins 2>/dev/null; true".into());
        h.fresh_daemon(&format!("{POLICY}  \n").replace(
            "exempt:\n  users: [testuser3]",
            "exempt:\n  users: [testuser3]\n  groups: [fs-admins]",
        ));
        let tasks33 = systemds_33_percent(h);
        let _s = h.session(TESTUSER.0);
        expect_systemds_own(h, TESTUSER.1, tasks33);
        assert!(h.tracked(TESTUSER.1).is_none());
        h.sh("gpasswd -d testuser fs-admins >/dev/null").ok();
        let o = h.ctl("reload").ok();
        assert!(o.out().contains("testuser"), "{}", o.out());
        h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
        let row = h.tracked(TESTUSER.1).expect("testuser in list");
        assert!(row["sessions"].as_u64().unwrap() >= 1, "{row}");
        let st = h
            .ctl(&format!("--json status --user {}", TESTUSER.0))
            .ok()
            .json();
        assert_eq!(st["allocated_cpu"], 2);
        // the exempt file is gone: the next login is limited without the daemon
        assert!(
            h.read("/etc/systemd/system/user-1001.slice.d/40-fairshare.conf")
                .is_none()
        );
    }
);

core_test!(
    a_user_made_exempt_gets_systemds_own_defaults_never_infinity,
    |h| {
        h.fresh_daemon(POLICY);
        let tasks33 = systemds_33_percent(h);
        let _s = h.session(TESTUSER.0);
        h.ssh(
            TESTUSER.0,
            "fairshare-ctl resize --cpu 3 --mem 9G --tasks 5000",
        )
        .ok();
        h.expect_limits(TESTUSER.1, want(3000, 9 * GIB, 5000));
        h.write(
            "/etc/fairshare/policy.d/50-test.yaml",
            &POLICY.replace("users: [testuser3]", "users: [testuser3, testuser]"),
        );
        h.sh("systemctl reload fairshared").ok();
        expect_systemds_own(h, TESTUSER.1, tasks33);
        wait_for("control files removed", h.patience(5), || {
            control_files(h, TESTUSER.1).is_empty().then_some(())
        });
        // what the files say is what is in force
        h.sh("systemctl daemon-reload").ok();
        expect_systemds_own(h, TESTUSER.1, tasks33);
    }
);

core_test!(
    the_first_list_after_a_start_shows_sessions_opened_while_it_was_down,
    |h| {
        h.fresh_daemon(POLICY);
        let _s;
        {
            let _down = stop_daemon(h);
            _s = h.session(TESTUSER2.0);
        }
        // the socket starts the daemon; its first answer already has the user
        let list = h.ctl("--json list").ok().json();
        let users = list["users"].as_array().unwrap();
        assert!(users.iter().any(|u| u["uid"] == TESTUSER2.1), "{list}");
    }
);

#[test]
fn uninstalling_leaves_no_drop_in_and_slices_at_systemds_own_defaults() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let tasks33 = systemds_33_percent(&h);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let _reinstall = Reinstall(&h);
    let _s = h.session(TESTUSER.0);
    h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
    // make uninstall (staged into the container's root, as the tests install)
    h.sh("pam-auth-update --package --remove fairshare; systemctl disable --now fairshared.service fairshared.socket").ok();
    let pamdir = h
        .sh("dirname /lib/*-linux-gnu/security/pam_unix.so")
        .ok()
        .out()
        .to_string();
    let un = Command::new("make")
        .args([
            "--no-print-directory",
            "-C",
            repo.to_str().unwrap(),
            "uninstall",
            "PREFIX=/usr/local",
        ])
        .arg(format!("DESTDIR={}", h.path("/").display()))
        .arg(format!("PAMDIR={pamdir}"))
        .output()
        .unwrap();
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    no_fairshare_drop_in(&h);
    // what make uninstall runs last on a host (the staged run cannot)
    h.sh("systemctl daemon-reload").ok();
    expect_systemds_own(&h, TESTUSER.1, tasks33);

    // dpkg -i, then dpkg -r: the package's scripts write and remove them
    let deb = Command::new(repo.join("packaging/deb/build.sh"))
        .output()
        .unwrap();
    assert!(
        deb.status.success(),
        "{}",
        String::from_utf8_lossy(&deb.stderr)
    );
    let deb = repo.join(String::from_utf8_lossy(&deb.stdout).trim());
    std::fs::copy(&deb, h.path("/tmp/fairshare.deb")).unwrap();
    h.write("/etc/fairshare/policy.d/50-test.yaml", POLICY);
    let o = h.sh("dpkg -i /tmp/fairshare.deb 2>&1").ok();
    assert!(
        h.read(GLOBAL).is_some(),
        "postinst wrote no drop-in: {}",
        o.out()
    );
    h.expect_limits(TESTUSER.1, want(2000, 8 * GIB, 4096));
    h.ssh(TESTUSER.0, "fairshare-ctl resize --cpu 3").ok();
    h.expect_limits(TESTUSER.1, want(3000, 8 * GIB, 4096));
    h.sh("dpkg -r fairshare 2>&1").ok();
    no_fairshare_drop_in(&h);
    assert!(control_files(&h, TESTUSER.1).is_empty());
    expect_systemds_own(&h, TESTUSER.1, tasks33);
}

fn no_fairshare_drop_in(h: &dyn TestHost) {
    let left = h.sh("ls /etc/systemd/system/user-*.slice.d/40-fairshare.conf 2>/dev/null; true");
    assert!(left.out().is_empty(), "left behind: {}", left.out());
}

/// Puts the test host back to the `make install` build, whatever happened.
struct Reinstall<'a>(&'a Container);

impl Drop for Reinstall<'_> {
    fn drop(&mut self) {
        self.0.sh("dpkg --purge fairshare >/dev/null 2>&1; true");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let _ = Command::new(repo.join("tests/testhost/install-fairshare.sh")).status();
    }
}
