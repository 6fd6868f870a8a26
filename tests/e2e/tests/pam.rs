//! pam_fairshare in real logins: sshd and pamtester through the host's PAM
//! stack (enabled with pam-auth-update, as the package does). Every check
//! reads the cgroup files of the user's slice and /proc/PID/cgroup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

const POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
  tasks: 4096
max:
  cpu: 8
  mem: 32G
capacity:
  cpu: 64
  mem: 256G
groups:
  students:
    defaults: {cpu: 1, mem: 2G, tasks: 512}
    max: {cpu: 2, mem: 4G, tasks: 1024}
";

/// Sets the arguments of the pam_fairshare line (in every common-session file)
/// for the life of the guard.
struct PamArgs<'a>(&'a Host);

impl<'a> PamArgs<'a> {
    fn set(h: &'a Host, args: &str) -> PamArgs<'a> {
        h.sh(&format!(
            "sed -i 's/pam_fairshare.so.*$/pam_fairshare.so {args}/' /etc/pam.d/common-session /etc/pam.d/common-session-noninteractive"
        ))
        .ok();
        PamArgs(h)
    }
}

impl Drop for PamArgs<'_> {
    fn drop(&mut self) {
        self.0
            .sh("sed -i 's/pam_fairshare.so.*$/pam_fairshare.so /' /etc/pam.d/common-session /etc/pam.d/common-session-noninteractive");
    }
}

/// The path of one controller's line in a `/proc/PID/cgroup` dump.
fn cgroup_line<'a>(proc_cgroup: &'a str, ctrl: &str) -> &'a str {
    proc_cgroup
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, path) = (f.next()?, f.next()?, f.next()?);
            (c == ctrl).then_some(path)
        })
        .unwrap_or_else(|| panic!("no {ctrl} line in\n{proc_cgroup}"))
}

#[test]
fn an_ssh_login_gets_the_policy_default_with_no_request() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let out = h
        .ssh(
            user,
            &format!(
                "cat /proc/$$/cgroup; echo ---; cd /sys/fs/cgroup; \
                 cat cpu/user.slice/user-{uid}.slice/cpu.cfs_quota_us memory/user.slice/user-{uid}.slice/memory.limit_in_bytes pids/user.slice/user-{uid}.slice/pids.max; \
                 echo ---; fairshare-ctl status"
            ),
        )
        .ok();
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    let slice = format!("/user.slice/user-{uid}.slice");
    for ctrl in ["cpu", "memory", "pids", "name=systemd"] {
        assert!(
            cgroup_line(parts[0], ctrl).contains(&slice),
            "{ctrl}: {}",
            parts[0]
        );
    }
    let files: Vec<&str> = parts[1].lines().collect();
    assert_eq!(
        files,
        ["200000", &(8 * GIB).to_string(), "4096"],
        "{}",
        parts[1]
    );
    assert!(
        parts[2].contains("allocation: 2 CPUs, 8G memory, 4096 tasks (policy default)"),
        "{}",
        parts[2]
    );
    assert!(parts[2].contains("sshd from 127.0.0.1"), "{}", parts[2]);
}

#[test]
fn sessions_are_counted_and_the_last_logout_releases() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    let first = h.session(user);
    let second = h.session(user);
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
    h.ssh(user, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    h.expect_slice(uid, 3000, 3 * GIB, 4096);
    let sshd_sessions = |h: &Host| sessions_from(h, uid, "sshd");
    assert_eq!(sshd_sessions(&h), 2);

    drop(first);
    wait_for("one ssh session left", Duration::from_secs(10), || {
        (sshd_sessions(&h) == 1).then_some(())
    });
    // limits stay while a session is open
    h.expect_slice(uid, 3000, 3 * GIB, 4096);

    drop(second);
    wait_for(
        "the allocation to be released",
        Duration::from_secs(15),
        || tracked(&h, uid).is_none().then_some(()),
    );
    // the slice is back at the policy default (as configured in systemd; the
    // slice itself has stopped with the last session)
    let props = h
        .sh(&format!(
            "systemctl show -p CPUQuotaPerSecUSec -p MemoryMax -p TasksMax user-{uid}.slice"
        ))
        .ok();
    assert!(
        props.out().contains("CPUQuotaPerSecUSec=2s"),
        "{}",
        props.out()
    );
    assert!(
        props.out().contains(&format!("MemoryMax={}", 8 * GIB)),
        "{}",
        props.out()
    );
    assert!(props.out().contains("TasksMax=4096"), "{}", props.out());
    // and the next login starts from the default, not from the old resize
    let o = h
        .ssh(
            user,
            &format!("cat /sys/fs/cgroup/cpu/user.slice/user-{uid}.slice/cpu.cfs_quota_us"),
        )
        .ok();
    assert_eq!(o.out(), "200000");
}

#[test]
fn a_group_override_gives_different_limits_at_login() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = STUDENT;
    let _s = h.session(user);
    h.expect_slice(uid, 1000, 2 * GIB, 512);
    let st = h.ssh(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(
        st["policy"],
        serde_json::json!(["defaults", "group students"])
    );
    assert_eq!(st["max"]["cpu"], 2);
    let o = h.ssh(user, "fairshare-ctl resize --cpu 4");
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("above your maximum of 2 CPUs"),
        "{}",
        o.stderr
    );
    h.expect_slice(uid, 1000, 2 * GIB, 512);
}

#[test]
fn user_services_scopes_and_double_forks_stay_under_the_limited_slice() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 1.5 --mem 1G --tasks 300")
        .ok();
    h.expect_slice(uid, 1500, GIB, 300);
    let out = h
        .ssh(
            user,
            "systemd-run --user --scope --quiet cat /proc/self/cgroup; echo ---; \
             systemd-run --user --quiet --unit=fs-escape sleep 120 && sleep 0.5 && \
             cat /proc/$(systemctl --user show -P MainPID fs-escape)/cgroup; echo ---; \
             setsid sh -c 'sleep 120 & echo $! > /tmp/fs-df.pid' < /dev/null > /dev/null 2>&1; sleep 0.3; \
             cat /proc/$(cat /tmp/fs-df.pid)/cgroup",
        )
        .ok();
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{}", out.stdout);
    let slice = format!("/user.slice/user-{uid}.slice");
    for (what, part) in [
        "systemd-run --user --scope",
        "systemd --user service",
        "double fork + setsid",
    ]
    .iter()
    .zip(&parts)
    {
        for ctrl in ["cpu", "memory", "pids", "name=systemd"] {
            assert!(
                cgroup_line(part, ctrl).starts_with(&slice),
                "{what}, {ctrl}: {part}"
            );
        }
    }
    assert!(
        cgroup_line(parts[1], "name=systemd").contains("user@1001.service"),
        "{}",
        parts[1]
    );
    // the processes that escaped the ssh session still count against the slice
    h.expect_slice(uid, 1500, GIB, 300);
    let tasks: u64 = h
        .read(&format!(
            "/sys/fs/cgroup/pids/user.slice/user-{uid}.slice/pids.current"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(tasks >= 3, "pids.current = {tasks}");
    h.ssh(
        user,
        "systemctl --user stop fs-escape; kill $(cat /tmp/fs-df.pid)",
    )
    .ok();
}

#[test]
fn a_session_without_pam_systemd_is_adopted_into_the_users_slice() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    h.write(
        "/etc/pam.d/fairshare-nosystemd",
        "auth     required pam_permit.so\naccount  required pam_unix.so\nsession  required pam_unix.so\n\
         session  required pam_fairshare.so\nsession  optional pam_exec.so /usr/local/sbin/fs-probe\n",
    );
    h.write(
        "/usr/local/sbin/fs-probe",
        &format!(
            "#!/bin/sh\n[ \"$PAM_TYPE\" = open_session ] || exit 0\n\
             {{ cat /proc/self/cgroup; echo ---; cd /sys/fs/cgroup; \
             cat cpu/user.slice/user-{uid}.slice/cpu.cfs_quota_us memory/user.slice/user-{uid}.slice/memory.limit_in_bytes pids/user.slice/user-{uid}.slice/pids.max; }} > /run/fs-probe.out 2>&1\n"
        ),
    );
    h.sh("chmod 755 /usr/local/sbin/fs-probe; rm -f /run/fs-probe.out")
        .ok();
    let _undo = Undo(
        &h,
        "rm -f /etc/pam.d/fairshare-nosystemd /usr/local/sbin/fs-probe /run/fs-probe.out".into(),
    );
    // pamtester runs as a system service: nowhere near the user's slice
    let o = h.exec(&format!("cat /proc/self/cgroup | grep name=systemd; pamtester fairshare-nosystemd {user} open_session close_session")).ok();
    assert!(o.stdout.contains("/system.slice/"), "{}", o.stdout);
    let probe = h.read("/run/fs-probe.out").expect("the probe ran");
    let parts: Vec<&str> = probe.split("---\n").collect();
    // a child the session process forked is in a fairshare scope inside the slice
    let scope = format!("/user.slice/user-{uid}.slice/fairshare-session-{uid}-");
    assert!(
        cgroup_line(parts[0], "name=systemd").contains(&scope),
        "{}",
        parts[0]
    );
    for ctrl in ["cpu", "memory", "pids"] {
        assert!(
            cgroup_line(parts[0], ctrl).contains(&format!("/user.slice/user-{uid}.slice")),
            "{ctrl}: {}",
            parts[0]
        );
    }
    let files: Vec<&str> = parts[1].lines().collect();
    assert_eq!(files, ["200000", &(8 * GIB).to_string(), "4096"], "{probe}");
    let log = h
        .sh("journalctl -u fairshared --no-pager -o cat -n 50")
        .ok();
    assert!(
        log.out()
            .contains("adopted a session process outside logind"),
        "{}",
        log.out()
    );
}

#[test]
fn a_dead_session_process_is_counted_down() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    let held = h.session(user);
    let sshd_sessions = |h: &Host| sessions_from(h, uid, "sshd");
    wait_for("the session to be tracked", Duration::from_secs(10), || {
        (sshd_sessions(&h) == 1).then_some(())
    });
    // kill -9 the session's sshd (the process that opened the PAM session):
    // no close_session ever comes
    let leader = h
        .sh(&format!("loginctl show-session -P Leader $(loginctl list-sessions --no-legend | awk '$3==\"{user}\" {{print $1; exit}}')"))
        .ok();
    h.sh(&format!("kill -9 {}", leader.out())).ok();
    wait_for(
        "the dead session to be counted down",
        Duration::from_secs(15),
        || (sshd_sessions(&h) == 0).then_some(()),
    );
    let log = h
        .sh("journalctl -u fairshared --no-pager -o cat -n 30")
        .ok();
    assert!(
        log.out()
            .contains("ended without closing its session; counting it down"),
        "{}",
        log.out()
    );
    drop(held);
}

#[test]
fn fail_open_logs_in_without_the_daemon_fail_closed_refuses_and_the_daemon_catches_up() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;

    // slow daemon: the login waits at most the deadline
    h.sh("kill -STOP $(pidof fairshared)").ok();
    let t = Instant::now();
    let o = h.ssh(user, "echo in");
    let slow = t.elapsed();
    h.sh("kill -CONT $(pidof fairshared)").ok();
    assert_eq!(o.out(), "in", "{o:?}");
    assert!(
        slow < Duration::from_secs(5),
        "login took {slow:?} with a stopped daemon"
    );
    let log = h
        .sh("journalctl --no-pager -o cat -n 100 | grep pam_fairshare | tail -5")
        .ok();
    assert!(
        log.out().contains("did not answer within 1000 ms"),
        "{}",
        log.out()
    );

    // daemon down: fail=open logs in, quickly
    h.sh("systemctl stop fairshared.socket fairshared.service")
        .ok();
    let t = Instant::now();
    let o = h.ssh(user, "echo in");
    assert_eq!(o.out(), "in", "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let log = h
        .sh("journalctl --no-pager -o cat -n 100 | grep pam_fairshare | tail -3")
        .ok();
    assert!(
        log.out().contains("fairshared is not running")
            && log
                .out()
                .contains("logs in with the policy default from systemd's drop-in"),
        "{}",
        log.out()
    );

    // fail=closed refuses, and says why in the journal
    {
        let _closed = PamArgs::set(&h, "fail=closed");
        let o = h.ssh(user, "echo in");
        assert_ne!(o.code, 0, "login with fail=closed and no daemon: {o:?}");
        assert_ne!(o.out(), "in");
        let log = h
            .sh("journalctl --no-pager -o cat -n 100 | grep pam_fairshare | tail -3")
            .ok();
        assert!(
            log.out()
                .contains("refusing the login of testuser2 (fail=closed)"),
            "{}",
            log.out()
        );
        // root is never refused, even then
        assert_eq!(h.ssh("root", "echo in").out(), "in");
    }

    // a first login while the daemon is down gets the policy default from
    // systemd's drop-in (issue 12); the daemon counts it when it starts,
    // with no new login
    h.logout_all();
    h.sh(&format!("systemctl revert user-{uid}.slice")).ok();
    let _s = h.session(user);
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
    h.start_daemon();
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
    let st = h.ctl(&format!("--json status --user {user}")).ok().json();
    assert!(st["sessions"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn root_and_system_users_log_in_untouched() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    for (user, uid) in [("root", 0u32), SVCUSER] {
        let o = h
            .ssh(
                user,
                &format!("cat /proc/$$/cgroup | grep name=systemd; cat /sys/fs/cgroup/cpu/user.slice/user-{uid}.slice/cpu.cfs_quota_us 2>/dev/null || echo no-cpu-cgroup"),
            )
            .ok();
        assert!(
            o.out().contains(&format!("user-{uid}.slice")),
            "{}",
            o.out()
        );
        let last = o.out().lines().last().unwrap();
        assert!(
            last == "-1" || last == "no-cpu-cgroup",
            "{user}: {}",
            o.out()
        );
        assert!(tracked(&h, uid).is_none(), "{user} is tracked");
        let props = h
            .sh(&format!(
                "systemctl show -P CPUQuotaPerSecUSec user-{uid}.slice"
            ))
            .ok();
        assert_eq!(props.out(), "infinity", "{user}");
    }
}
