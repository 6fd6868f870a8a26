//! pam_fairshare in real logins: sshd and pamtester through the host's PAM
//! stack (enabled with pam-auth-update, as the package does). Every check
//! reads the cgroup files of the user's slice and /proc/PID/cgroup. The
//! core tests ([`core_test!`]) run on both test hosts; the others need the
//! container's pamtester stacks and failure injection.
//!
//! A test of what the module does at login proves that the module did it,
//! not fairshared's logind follower (which catches up with a user about 2 s
//! after logind reports them): the limits are read by the login's shell as
//! its first command, and the module's own journal line for that login is
//! required.
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
struct PamArgs<'a>(&'a Container);

impl<'a> PamArgs<'a> {
    fn set(h: &'a Container, args: &str) -> PamArgs<'a> {
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

/// The module's line for a login of `user` whose PAM session ran in
/// process `pam_pid`: it must say the allocation fairshared gave.
#[track_caller]
fn assert_module_applied(h: &dyn TestHost, pam_pid: u32, user: &str, allocation: &str) {
    let line = h.module_line(pam_pid);
    assert_eq!(
        line,
        format!("pam_fairshare(sshd:session): {user}: {allocation}"),
        "pam_fairshare's line for the login of {user} (pid {pam_pid})"
    );
}

// The allocation at login is the module's doing: in place when the shell
// starts, and logged by the module for that very login.
core_test!(a_login_gets_the_policy_default_with_no_request, |h| {
    h.fresh_daemon(CORE_POLICY);
    let layout = h.layout();
    for ((user, uid), want, allocation) in [
        (
            TESTUSER,
            want(2000, 8 * GIB, 4096).high(4 * GIB),
            "2 CPUs, 8G memory (soft 4G), 4096 tasks",
        ),
        (
            STUDENT,
            want(1000, 2 * GIB, 512).high(GIB),
            "1 CPU, 2G memory (soft 1G), 512 tasks",
        ),
    ] {
        let controllers = match layout {
            Layout::Unified => format!("cat /sys/fs/cgroup{}/cgroup.controllers", slice_path(uid)),
            Layout::Hybrid => "true".into(),
        };
        let out = h
            .ssh(
                user,
                &format!(
                    "{}; fairshare-ctl status; echo ---; {controllers}",
                    login_probe_cmd(layout, uid)
                ),
            )
            .ok();
        let probe = LoginProbe::parse(layout, &out.stdout);
        let (status, controllers) = probe.rest.split_once("---\n").unwrap();
        // the login shell is in a session scope of the user's slice, in
        // every controller that limits it
        let slice = slice_path(uid);
        layout.assert_under(&probe.cgroup, &slice, &format!("{user}'s login shell"));
        let unit = layout.unit_path(&probe.cgroup);
        assert!(
            unit.starts_with(&format!("{slice}/session-")) && unit.ends_with(".scope"),
            "{user}'s login shell is in {unit}"
        );
        // the limits were in place when the shell started
        assert!(
            probe.limits.is_some_and(|l| l.matches(layout, &want)),
            "{user}: the files of {slice} at the start of the login: {:?}, want {want:?}",
            probe.limits
        );
        assert_module_applied(h, probe.pam_pid, user, allocation);
        assert!(
            status.contains(&format!("allocation: {allocation} (policy default)")),
            "{status}"
        );
        assert!(
            status.contains(&format!("sshd from {}", h.ssh_peer())),
            "{status}"
        );
        if layout == Layout::Unified {
            // the controllers that enforce the limits are enabled for the slice
            for c in ["cpu", "memory", "pids"] {
                assert!(
                    controllers.split_whitespace().any(|x| x == c),
                    "{user}'s slice has the controllers {controllers}"
                );
            }
        }
    }
});

#[test]
fn sessions_are_counted_and_the_last_logout_releases() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    let first = h.session(user);
    let second = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    h.ssh(user, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    h.expect_limits(uid, want(3000, 3 * GIB, 4096));
    let sshd_sessions = |h: &Container| h.sessions_from(uid, "sshd");
    assert_eq!(sshd_sessions(&h), 2);

    drop(first);
    wait_for("one ssh session left", h.patience(10), || {
        (sshd_sessions(&h) == 1).then_some(())
    });
    // limits stay while a session is open
    h.expect_limits(uid, want(3000, 3 * GIB, 4096));

    drop(second);
    wait_for("the allocation to be released", h.patience(15), || {
        h.tracked(uid).is_none().then_some(())
    });
    // the slice is back at the policy default (as configured in systemd; the
    // slice itself has stopped with the last session)
    let props = h
        .sh(&format!(
            "systemctl show -p CPUQuotaPerSecUSec -p MemoryMax -p TasksMax user-{uid}.slice"
        ))
        .ok();
    let mut props: Vec<&str> = props.out().lines().collect();
    props.sort_unstable();
    assert_eq!(
        props,
        [
            "CPUQuotaPerSecUSec=2s".to_string(),
            format!("MemoryMax={}", 8 * GIB),
            "TasksMax=4096".into(),
        ],
        "user-{uid}.slice as configured after the last logout"
    );
    // and the next login starts from the default, not from the old resize:
    // in place when its shell starts, and the module's doing
    let out = h.ssh(user, &login_probe_cmd(h.layout(), uid)).ok();
    let probe = LoginProbe::parse(h.layout(), &out.stdout);
    assert!(
        probe
            .limits
            .is_some_and(|l| l.matches(h.layout(), &want(2000, 8 * GIB, 4096))),
        "at the start of the next login: {:?}",
        probe.limits
    );
    assert_module_applied(&h, probe.pam_pid, user, "2 CPUs, 8G memory, 4096 tasks");
}

#[test]
fn a_group_override_gives_different_limits_at_login() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = STUDENT;
    // the group's limits are there when the login's shell starts, and the
    // module applied them
    let out = h.ssh(user, &login_probe_cmd(h.layout(), uid)).ok();
    let probe = LoginProbe::parse(h.layout(), &out.stdout);
    let group = want(1000, 2 * GIB, 512);
    assert!(
        probe.limits.is_some_and(|l| l.matches(h.layout(), &group)),
        "at the start of the login: {:?}",
        probe.limits
    );
    assert_module_applied(&h, probe.pam_pid, user, "1 CPU, 2G memory, 512 tasks");
    let _s = h.session(user);
    h.expect_limits(uid, group);
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
    h.expect_limits(uid, group);
}

// Everything a user starts stays under the limited slice: their login
// shell, `systemd-run --user` scopes and services, a double fork; and what
// outlived the login still counts against it.
core_test!(
    the_shell_user_scopes_and_user_services_stay_under_the_slice,
    |h| {
        h.fresh_daemon(CORE_POLICY);
        let layout = h.layout();
        let (user, uid) = TESTUSER;
        let held = h.session(user);
        h.as_user(user, "fairshare-ctl resize --cpu 1.5 --mem 1G --tasks 300")
            .ok();
        let limited = want(1500, GIB, 300).high(512 * MIB);
        h.expect_limits(uid, limited);
        let tasks_before = h.value(uid, File::TasksCurrent);
        let out = h
        .ssh(
            user,
            "cat /proc/self/cgroup; echo ---; \
             systemd-run --user --scope --quiet cat /proc/self/cgroup; echo ---; \
             systemd-run --user --quiet --unit=fs-escape sleep 300 && sleep 1 && \
             cat /proc/$(systemctl --user show -P MainPID fs-escape)/cgroup; echo ---; \
             setsid sh -c 'sleep 300 & echo $! > /tmp/fs-df.pid' < /dev/null > /dev/null 2>&1; sleep 1; \
             cat /proc/$(cat /tmp/fs-df.pid)/cgroup",
        )
        .ok();
        let parts: Vec<&str> = out.stdout.split("---\n").collect();
        assert_eq!(parts.len(), 4, "{}", out.stdout);
        let slice = slice_path(uid);
        for (what, part) in [
            "login shell",
            "systemd-run --user --scope",
            "systemd --user service",
            "double fork + setsid",
        ]
        .iter()
        .zip(&parts)
        {
            layout.assert_under(part, &slice, what);
        }
        assert!(
            layout
                .unit_path(parts[1])
                .starts_with(&format!("{slice}/user@{uid}.service/")),
            "{}",
            parts[1]
        );
        assert!(
            layout
                .unit_path(parts[2])
                .ends_with(&format!("user@{uid}.service/app.slice/fs-escape.service")),
            "{}",
            parts[2]
        );
        // the held session too
        h.assert_in_slice(held.pid, uid, "the held session");
        // the processes that outlived the login still count against the slice:
        // the service's sleep and the double-forked one
        h.expect_limits(uid, limited);
        let tasks_after = h.value(uid, File::TasksCurrent);
        assert!(
            tasks_after >= tasks_before + 2,
            "pids.current of {slice}: {tasks_before} before the login, {tasks_after} after it"
        );
        // clean up: the user service and the double-forked sleep; the count drops
        h.sh(&format!("pkill -u {uid} -f 'sleep 300$'; true"));
        wait_for(
            "pids.current to drop when the escaped processes end",
            h.patience(10),
            || (h.value(uid, File::TasksCurrent) <= tasks_after - 2).then_some(()),
        );
    }
);

#[test]
fn a_session_without_pam_systemd_is_adopted_into_the_users_slice() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    h.write(
        "/etc/pam.d/fairshare-nosystemd",
        "auth     required pam_permit.so\naccount  required pam_unix.so\nsession  required pam_unix.so\n\
         session  required pam_fairshare.so\nsession  optional pam_exec.so /usr/local/sbin/fs-probe\n",
    );
    let files: Vec<String> = h
        .layout()
        .limit_files(uid)
        .iter()
        .map(|f| quote(f))
        .collect();
    h.write(
        "/usr/local/sbin/fs-probe",
        &format!(
            "#!/bin/sh\n[ \"$PAM_TYPE\" = open_session ] || exit 0\n\
             {{ cat /proc/self/cgroup; echo ---; \
             for f in {}; do echo ==fs-file==; cat \"$f\" 2>/dev/null || echo ==fs-missing==; done; }} \
             > /run/fs-probe.out 2>&1\n",
            files.join(" ")
        ),
    );
    h.sh("chmod 755 /usr/local/sbin/fs-probe; rm -f /run/fs-probe.out")
        .ok();
    let _undo = Undo(
        &h,
        "rm -f /etc/pam.d/fairshare-nosystemd /usr/local/sbin/fs-probe /run/fs-probe.out".into(),
    );
    // pamtester runs as a system service: nowhere near the user's slice
    let before = h.journal_cursor();
    let o = h.exec(&format!("cat /proc/self/cgroup | grep name=systemd; pamtester fairshare-nosystemd {user} open_session close_session")).ok();
    assert!(o.stdout.contains("/system.slice/"), "{}", o.stdout);
    let probe = h.read("/run/fs-probe.out").expect("the probe ran");
    let parts: Vec<&str> = probe.split("---\n").collect();
    // a child the session process forked is in a fairshare scope inside the slice
    let scope = format!("{}/fairshare-session-{uid}-", slice_path(uid));
    assert!(
        h.layout().unit_path(parts[0]).starts_with(&scope),
        "{}",
        parts[0]
    );
    h.layout()
        .assert_under(parts[0], &slice_path(uid), "the session's child");
    let now: Vec<Option<String>> = parts[1]
        .split("==fs-file==\n")
        .skip(1)
        .map(|t| (t.trim() != "==fs-missing==").then(|| t.to_string()))
        .collect();
    let limits = Limits::parse(h.layout(), &now);
    assert!(
        limits.is_some_and(|l| l.matches(h.layout(), &want(2000, 8 * GIB, 4096))),
        "the slice's files when the session's child ran: {limits:?}\n{probe}"
    );
    let log = h.journal_since(&before, "-u fairshared");
    assert!(
        log.contains("adopted a session process outside logind"),
        "{log}"
    );
}

#[test]
fn a_dead_session_process_is_counted_down() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    let held = h.session(user);
    let sshd_sessions = |h: &Container| h.sessions_from(uid, "sshd");
    wait_for("the session to be tracked", h.patience(10), || {
        (sshd_sessions(&h) == 1).then_some(())
    });
    h.as_user(user, "fairshare-ctl resize --cpu 3").ok();
    h.expect_limits(uid, want(3000, 8 * GIB, 4096));
    // kill -9 the session's sshd (the process that opened the PAM session):
    // no close_session ever comes
    let leader = h
        .sh(&format!("loginctl show-session -P Leader $(loginctl list-sessions --no-legend | awk '$3==\"{user}\" {{print $1; exit}}')"))
        .ok();
    let leader: u32 = leader
        .out()
        .parse()
        .unwrap_or_else(|_| panic!("the leader of {user}'s session: {leader:?}"));
    let before = h.journal_cursor();
    h.sh(&format!("kill -9 {leader}")).ok();
    wait_for(
        "the dead session to be counted down",
        h.patience(15),
        || (sshd_sessions(&h) == 0).then_some(()),
    );
    // the process really is gone, and counting its session down kept the
    // allocation of the user's other session (their user manager's)
    assert_eq!(
        h.sh(&format!("kill -0 {leader}")).code,
        1,
        "the session's process {leader} is still there"
    );
    assert_eq!(h.sessions_from(uid, "systemd-user"), 1);
    h.expect_limits(uid, want(3000, 8 * GIB, 4096));
    let log = h.journal_since(&before, "-u fairshared");
    assert!(
        log.contains("ended without closing its session; counting it down"),
        "{log}"
    );
    // With the dead session's process gone, the user's last session (the
    // user manager's) closes through PAM: nothing holds the allocation any
    // more, and the slice is configured back to the default.
    drop(held);
    wait_for("the allocation to be released", h.patience(15), || {
        h.tracked(uid).is_none().then_some(())
    });
    let cpu = h
        .sh(&format!(
            "systemctl show -P CPUQuotaPerSecUSec user-{uid}.slice"
        ))
        .ok();
    assert_eq!(
        cpu.out(),
        "2s",
        "user-{uid}.slice's CPU quota after the last session"
    );
}

#[test]
fn fail_open_logs_in_without_the_daemon_fail_closed_refuses_and_the_daemon_catches_up() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    // What a login takes with the daemon answering: the bounds below are
    // this plus the module's deadline (1 s) for each of the two sessions a
    // first login opens through the module (the user manager's, then the
    // login's own), plus what waking up from the wait and the rest of a
    // login vary by on a busy machine (measured: up to 130 ms for the two
    // at a load of 15 on 2 CPUs).
    let deadline = (Duration::from_secs(1) + Duration::from_millis(250)) * 2;
    let login = |h: &Container| {
        let t = Instant::now();
        let o = h.ssh(user, "echo in");
        assert_eq!(o.out(), "in", "{o:?}");
        t.elapsed()
    };
    let baseline = (0..3).map(|_| login(&h)).max().unwrap();

    // the module's lines since `cursor`
    let module_lines = |h: &Container, cursor: &str| -> String {
        h.journal_since(cursor, "")
            .lines()
            .filter(|l| l.starts_with("pam_fairshare("))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // slow daemon: the login waits at most the deadline
    let before = h.journal_cursor();
    h.sh("kill -STOP $(pidof fairshared)").ok();
    let t = Instant::now();
    let o = h.ssh(user, "echo in");
    let slow = t.elapsed();
    h.sh("kill -CONT $(pidof fairshared)").ok();
    assert_eq!(o.out(), "in", "{o:?}");
    assert!(
        slow < baseline + deadline,
        "login took {slow:?} with a stopped daemon, {baseline:?} with a running one"
    );
    let log = module_lines(&h, &before);
    assert!(
        log.contains("fairshared did not answer within 1000 ms")
            && log.contains("testuser2 logs in with the policy default from systemd's drop-in"),
        "{log}"
    );

    // daemon down: fail=open logs in, quickly
    h.sh("systemctl stop fairshared.socket fairshared.service")
        .ok();
    let before = h.journal_cursor();
    let down = login(&h);
    assert!(
        down < baseline + deadline,
        "login took {down:?} with no daemon, {baseline:?} with a running one"
    );
    eprintln!("ssh login: {baseline:?} (at most, of 3), daemon stopped: {slow:?}, down: {down:?}");
    let log = module_lines(&h, &before);
    assert!(
        log.contains("fairshared is not running")
            && log.contains("testuser2 logs in with the policy default from systemd's drop-in"),
        "{log}"
    );

    // fail=closed refuses, and says why in the journal
    {
        let _closed = PamArgs::set(&h, "fail=closed");
        let before = h.journal_cursor();
        let o = h.ssh(user, "echo in");
        assert_ne!(o.code, 0, "login with fail=closed and no daemon: {o:?}");
        assert_ne!(o.out(), "in");
        let log = module_lines(&h, &before);
        assert!(
            log.contains("fairshared is not running")
                && log.contains("refusing the login of testuser2 (fail=closed)"),
            "{log}"
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
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    h.start_daemon();
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    let st = h.ctl(&format!("--json status --user {user}")).ok().json();
    assert!(st["sessions"].as_u64().unwrap() >= 1, "{st}");
}

// Root and system accounts (uid below 1000) are left alone: their login
// shells run in their own slices, which have no CPU or memory limit, and
// fairshared does not track them.
core_test!(root_and_system_users_log_in_untouched, |h| {
    h.fresh_daemon(CORE_POLICY);
    let layout = h.layout();
    for (user, uid) in [("root", 0u32), SVCUSER] {
        let out = h.ssh(user, &login_probe_cmd(layout, uid)).ok();
        let probe = LoginProbe::parse(layout, &out.stdout);
        // in a session of their own slice (on v1 only systemd's hierarchy
        // places it there: a slice with no limit gets no cpu cgroup)
        let unit = layout.unit_path(&probe.cgroup);
        assert!(
            unit.starts_with(&format!("{}/session-", slice_path(uid))),
            "{user}'s login shell is in {unit}"
        );
        // no slice files for a controller systemd did not enable, or no limit in them
        assert!(
            probe.limits.is_none_or(|l| l.cpu_quota_us.is_none()
                && l.mem_max.is_none()
                && l.mem_high.is_none()),
            "{user}: the files of user-{uid}.slice at the start of the login: {:?}",
            probe.limits
        );
        assert!(h.tracked(uid).is_none(), "{user} is tracked");
        let props = h
            .sh(&format!(
                "systemctl show -P CPUQuotaPerSecUSec -P MemoryMax user-{uid}.slice"
            ))
            .ok();
        assert_eq!(
            props.out().lines().collect::<Vec<_>>(),
            ["infinity", "infinity"],
            "{user}: user-{uid}.slice as configured"
        );
    }
});

// A login through the module loads the module and nothing else of its own
// (issue 12): Rust's unwinder is linked into the module
// (pam_fairshare/build.rs), so libgcc_s.so.1, which cost every login about
// 110 µs of dlopen, stays out of sshd and login. Read from the dynamic
// loader's own trace of a real login (`LD_DEBUG=files`: each object it
// brings in, and for whom) and from the module's dependencies (`ldd`).
#[test]
fn a_login_through_the_module_loads_no_library_of_its_own() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, _) = TESTUSER3;
    h.write(
        "/etc/pam.d/fairshare-ld",
        "auth     required pam_permit.so\naccount  required pam_unix.so\n\
         session  required pam_unix.so\nsession  optional pam_systemd.so\n\
         session  required pam_fairshare.so\n",
    );
    let _undo = Undo(&h, "rm -f /etc/pam.d/fairshare-ld".into());
    let o = h
        .exec(&format!(
            "LD_DEBUG=files pamtester fairshare-ld {user} open_session close_session"
        ))
        .ok();
    // `file=NAME [ns];  needed by WHO [ns]` / `dynamically loaded by WHO`
    let loaded: Vec<(&str, &str)> = o
        .stderr
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once("file=")?.1.split_once(" [")?;
            let who = rest
                .split_once("needed by ")
                .or_else(|| rest.split_once("dynamically loaded by "))?
                .1;
            Some((name, who.split(" [").next()?))
        })
        .collect();
    let module = loaded
        .iter()
        .find(|(name, _)| name.ends_with("/security/pam_fairshare.so"))
        .map(|(name, _)| *name);
    let Some(module) = module else {
        panic!(
            "the loader's trace shows no pam_fairshare.so loaded:\n{}",
            o.stderr
        );
    };
    let its_own: Vec<&str> = loaded
        .iter()
        .filter(|(_, who)| *who == module)
        .map(|(name, _)| *name)
        .collect();
    assert!(
        its_own.is_empty(),
        "objects loaded into the login for {module}: {its_own:?}"
    );
    let deps = h.exec(&format!("ldd {module}")).ok().stdout;
    assert!(deps.contains("libc.so"), "{deps}");
    assert!(
        !deps.contains("libgcc_s"),
        "{module} depends on the shared unwinder:\n{deps}"
    );
}
