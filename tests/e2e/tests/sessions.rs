//! Sessions against hostile users (issue 11, items 4, 5, 7 and 10):
//! another user's logins are answered in time whatever a user floods the
//! daemon with; a cron job never runs outside the user's slice, even when
//! the user floods a slow daemon with resizes, and is refused rather than
//! run outside when the daemon is too late to move it; a session id from the
//! PAM environment is believed only when the process's cgroup confirms it;
//! the watchdog restarts a daemon whose blocking pool is wedged. Every check
//! reads the cgroup files, `/proc/PID/cgroup` and the module's journal
//! lines, not what the daemon says. The slow and wedged daemons are
//! `fairshared-test-hooks` (see [`HookedDaemon`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

/// Copies a helper binary of this crate into the test host.
fn install_bin(h: &Container, name: &str, path: &str) {
    let dst = h.path(&format!("/usr/local/bin/{name}"));
    let tmp = h.path(&format!("/usr/local/bin/.{name}.tmp"));
    std::fs::copy(path, &tmp).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
}

/// The journal's cursor now (to read only what comes after).
fn cursor(h: &Container) -> String {
    let o = h
        .sh("journalctl --no-pager -n 0 --show-cursor | sed -n 's/^-- cursor: //p'")
        .ok();
    o.out().to_string()
}

fn journal_since(h: &Container, cursor: &str) -> String {
    h.sh(&format!(
        "journalctl --sync; journalctl --no-pager -o cat --after-cursor='{cursor}'"
    ))
    .ok()
    .stdout
}

/// Users for the load test: ten in group `fsload` (uids 1201..1210), and
/// `fsbig`, a member of 3000 groups. Removed again when the guard drops.
fn load_users(h: &Container) -> Undo<'_> {
    h.sh(
        "set -e; getent group fsload >/dev/null || groupadd -g 1200 fsload; \
         for n in $(seq -w 1 10); do id fsload$n >/dev/null 2>&1 || useradd -M -N -g fsload -u 12$n fsload$n; done; \
         if ! id fsbig >/dev/null 2>&1; then useradd -M -u 1299 fsbig; \
           seq 1 3000 | awk '{printf \"fsg%04d:x:%d:fsbig\\n\", $1, 30000 + $1}' >> /etc/group; fi",
    )
    .ok();
    assert_eq!(
        h.sh("id -G fsbig | wc -w").ok().out(),
        "3001",
        "fsbig is in 3000 groups"
    );
    Undo(
        h,
        "for n in $(seq -w 1 10); do userdel fsload$n; done; groupdel fsload; userdel fsbig; \
         sed -i '/^fsg[0-9]*:x:/d' /etc/group; rm -rf /run/fs-load /etc/pam.d/fs-load /usr/local/sbin/fs-load-probe; true"
            .into(),
    )
}

const LOAD_POLICY: &str = "\
defaults: {cpu: 2, mem: 8G}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 64, mem: 256G}
groups:
  fsload:
    defaults: {cpu: 3, mem: 3G, tasks: 333}
";

#[test]
fn a_status_and_connect_flood_never_holds_up_another_users_login() {
    let h = Container::get();
    let _users = load_users(&h);
    h.fresh_daemon(LOAD_POLICY);
    install_bin(&h, "fs-flood", env!("CARGO_BIN_EXE_fs-flood"));
    // A login stack with logind (as sshd's), and a probe after the module
    // that reads the user's slice files the moment the session is open.
    h.write(
        "/etc/pam.d/fs-load",
        "auth required pam_permit.so\naccount required pam_unix.so\nsession required pam_unix.so\n\
         session optional pam_systemd.so\nsession required pam_fairshare.so\n\
         session optional pam_exec.so /usr/local/sbin/fs-load-probe\n",
    );
    h.write(
        "/usr/local/sbin/fs-load-probe",
        "#!/bin/sh\n[ \"$PAM_TYPE\" = open_session ] || exit 0\n\
         u=$(id -u \"$PAM_USER\"); s=/sys/fs/cgroup; p=user.slice/user-$u.slice\n\
         echo \"$PAM_USER $(cat $s/cpu/$p/cpu.cfs_quota_us) $(cat $s/memory/$p/memory.limit_in_bytes) $(cat $s/pids/$p/pids.max)\" > /run/fs-load/probe.$$\n",
    );
    h.sh("chmod 755 /usr/local/sbin/fs-load-probe; rm -rf /run/fs-load; mkdir -p /run/fs-load")
        .ok();
    let before = cursor(&h);
    // testuser floods: status about fsbig (whose groups take 3000 lookups
    // to expand) from 8 threads, and connections as fast as they open from
    // 4 threads, one of them sending garbage.
    let status = h.ssh_spawn(TESTUSER.0, "fs-flood status fsbig 20 8");
    let connect = h.ssh_spawn(TESTUSER.0, "fs-flood connect 20 4");
    std::thread::sleep(Duration::from_secs(3));
    // 50 logins of ten users, 50 ms apart, while the flood goes on.
    let t = Instant::now();
    let o = h.exec(
        "for r in 1 2 3 4 5; do for n in $(seq -w 1 10); do \
           ( t0=$(date +%s%N); pamtester fs-load fsload$n open_session close_session > /run/fs-load/out.$n.$r 2>&1; \
             echo \"$? $(( ($(date +%s%N) - t0) / 1000000 ))\" > /run/fs-load/rc.$n.$r ) & sleep 0.05; \
         done; done; wait; cat /run/fs-load/rc.*",
    );
    let took = t.elapsed();
    let rcs: Vec<(i32, u64)> = o
        .ok()
        .stdout
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().unwrap().parse().unwrap(),
                w.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let status = {
        let o = status.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let connect = {
        let o = connect.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(rcs.len(), 50, "every login ran");
    assert!(rcs.iter().all(|(rc, _)| *rc == 0), "failed logins: {rcs:?}");
    let log = journal_since(&h, &before);
    let module: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("pam_fairshare(fs-load:session)"))
        .collect();
    let late: Vec<&&str> = module
        .iter()
        .filter(|l| l.contains("WITHOUT") || l.contains("did not answer") || l.contains("refus"))
        .collect();
    assert!(
        late.is_empty(),
        "logins the daemon did not answer in time ({} of 50):\n{}",
        late.len(),
        late.iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let answered = module
        .iter()
        .filter(|l| l.contains(": 3 CPUs, 3G memory, 333 tasks"))
        .count();
    assert_eq!(
        answered,
        50,
        "the module's lines for the 50 logins:\n{}",
        module.join("\n")
    );
    // the slice files, read by the probe the moment each session opened
    let probes = h.sh("cat /run/fs-load/probe.*").ok().stdout;
    let probes: Vec<&str> = probes.lines().collect();
    assert_eq!(probes.len(), 50, "{probes:?}");
    for p in &probes {
        let f: Vec<&str> = p.split_whitespace().collect();
        assert_eq!(
            f[1..],
            ["300000", &(3 * GIB).to_string(), "333"],
            "slice files at login: {p}"
        );
    }
    // the flood ran, and the status about someone else was refused
    let refused: u64 = value_after(&status, "error:permission_denied=");
    assert!(refused > 0, "{status}");
    let connected: u64 = value_after(&connect, "connected=");
    let mut ms: Vec<u64> = rcs.iter().map(|(_, ms)| *ms).collect();
    ms.sort_unstable();
    eprintln!(
        "50 logins in {took:?} (pamtester: median {} ms, slowest {} ms) during a flood of status about a member of 3000 groups ({status}) and of connections ({connected} opened: {connect})",
        ms[25], ms[49]
    );
}

/// The daemon of this build with the test hooks (`fairshared-test-hooks`,
/// see fairshared/src/testhooks.rs) in place of the installed one, with
/// `env` (`VAR=VALUE` lines for the unit) and a watchdog of `watchdog_s`
/// seconds, until dropped: then the installed daemon again. The binary is
/// built by script/test; alone: `cargo build --release -p fairshared
/// --features test-hooks --bin fairshared-test-hooks`.
struct HookedDaemon<'a>(&'a Container);

impl<'a> HookedDaemon<'a> {
    fn start(h: &'a Container, policy: &str, env: &[&str], watchdog_s: u32) -> HookedDaemon<'a> {
        // next to this test's binary: target/release/deps/sessions-HASH
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap()
            .join("fairshared-test-hooks");
        assert!(
            bin.exists(),
            "{} is missing: build it with cargo build --release -p fairshared --features test-hooks --bin fairshared-test-hooks",
            bin.display()
        );
        install_bin(h, "fairshared-test-hooks", bin.to_str().unwrap());
        let env: String = env.iter().map(|e| format!("Environment={e}\n")).collect();
        h.write(
            "/run/systemd/system/fairshared.service.d/test-hooks.conf",
            &format!(
                "[Service]\nExecStart=\nExecStart=/usr/local/bin/fairshared-test-hooks\n{env}WatchdogSec={watchdog_s}s\n"
            ),
        );
        h.sh("systemctl daemon-reload").ok();
        let d = HookedDaemon(h);
        h.fresh_daemon(policy);
        let exe = h
            .sh("readlink /proc/$(systemctl show -P MainPID fairshared)/exe")
            .ok();
        assert_eq!(exe.out(), "/usr/local/bin/fairshared-test-hooks");
        d
    }
}

impl Drop for HookedDaemon<'_> {
    fn drop(&mut self) {
        self.0.sh(
            "rm -rf /run/systemd/system/fairshared.service.d /usr/local/bin/fairshared-test-hooks; \
             systemctl daemon-reload; systemctl reset-failed fairshared.service; systemctl restart fairshared.service",
        );
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

/// Asserts that a `/proc/PID/cgroup` dump is inside `user-UID.slice` in
/// every hierarchy that limits (and in systemd's own).
#[track_caller]
fn assert_in_slice(proc_cgroup: &str, uid: u32, what: &str) {
    for ctrl in ["name=systemd", "cpu", "memory", "pids"] {
        let path = cgroup_line(proc_cgroup, ctrl);
        let slice = format!("/user.slice/user-{uid}.slice");
        assert!(
            path == slice || path.starts_with(&format!("{slice}/")),
            "{what}: {ctrl} is {path}, outside user-{uid}.slice:\n{proc_cgroup}"
        );
    }
}

const CRON_POLICY: &str = "\
defaults: {cpu: 2, mem: 8G, tasks: 4096}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 64, mem: 256G}
";

/// Installs a crontab for `user` whose job writes its `/proc/self/cgroup`
/// (and the slice's pids.max) to /run/fs-cron/, every minute; waits until
/// at least one job ran after `since` (a journal cursor) and cron logged
/// the session of the next one, then removes the crontab. Returns the
/// jobs' outputs.
fn cron_jobs(h: &Container, user: &str, uid: u32) -> Vec<String> {
    h.sh("rm -rf /run/fs-cron; mkdir -m 1777 /run/fs-cron").ok();
    h.sh(&format!(
        "echo '* * * * * cat /proc/self/cgroup > /run/fs-cron/job.$$; echo --- >> /run/fs-cron/job.$$; cat /sys/fs/cgroup/pids/user.slice/user-{uid}.slice/pids.max >> /run/fs-cron/job.$$ 2>&1' | crontab -u {user} -"
    ))
    .ok();
    let _undo = Undo(h, format!("crontab -r -u {user}; true"));
    // cron runs a job at the start of each minute: at most ~60 s, plus
    // cron's own rereading of the spool
    wait_for("a cron job to run", Duration::from_secs(150), || {
        let o = h.sh("ls /run/fs-cron | wc -l");
        (o.out() != "0").then_some(())
    });
    // a job's output is written before its session closes
    std::thread::sleep(Duration::from_secs(2));
    h.sh("for f in /run/fs-cron/job.*; do cat $f; echo ===; done")
        .ok()
        .stdout
        .split("===\n")
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_cron_job_runs_in_the_users_slice_while_the_user_floods_a_slow_daemon_with_resizes() {
    let h = Container::get();
    let (user, uid) = TESTUSER;
    // every save of the state file takes 1.5 s (a slow disk); the module's
    // timeout_ms (300 by default) would pass many times over while the
    // user's resizes queue on their lock
    let _d = HookedDaemon::start(&h, CRON_POLICY, &["FAIRSHARE_TEST_SAVE_DELAY_MS=1500"], 30);
    install_bin(&h, "fs-flood", env!("CARGO_BIN_EXE_fs-flood"));
    let before = cursor(&h);
    h.sh("rm -f /tmp/fs-flood.stop").ok();
    let flood = h.ssh_spawn(
        user,
        "FS_FLOOD_STOP=/tmp/fs-flood.stop fs-flood resize 180 4",
    );
    std::thread::sleep(Duration::from_secs(3));
    let jobs = cron_jobs(&h, user, uid);
    h.sh("touch /tmp/fs-flood.stop").ok();
    let flood = String::from_utf8_lossy(&flood.wait_with_output().unwrap().stdout).to_string();
    assert!(!jobs.is_empty());
    for job in &jobs {
        let (cg, pids_max) = job.split_once("---\n").unwrap();
        assert_in_slice(cg, uid, "a cron job of a user flooding a slow daemon");
        assert_eq!(pids_max.trim(), "4096", "{job}");
        assert!(
            cgroup_line(cg, "name=systemd").contains(&format!("/fairshare-session-{uid}-")),
            "{cg}"
        );
    }
    let log = journal_since(&h, &before);
    let cron: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("pam_fairshare(cron:session)"))
        .collect();
    assert!(!cron.is_empty(), "no line of the module in cron:\n{log}");
    assert!(
        cron.iter()
            .all(|l| !l.contains("WITHOUT") && !l.contains("refus")),
        "{}",
        cron.join("\n")
    );
    eprintln!(
        "{} cron job(s) in the slice during a flood of resizes ({flood})",
        jobs.len()
    );
}

#[test]
fn a_cron_job_is_refused_not_run_outside_when_the_daemon_is_too_late_to_move_it() {
    let h = Container::get();
    let (user, uid) = TESTUSER2;
    // the move comes 8 s late, beyond adopt_timeout_ms (5 s)
    let _d = HookedDaemon::start(&h, CRON_POLICY, &["FAIRSHARE_TEST_ADOPT_DELAY_MS=8000"], 30);
    let before = cursor(&h);
    h.sh("rm -rf /run/fs-cron; mkdir -m 1777 /run/fs-cron").ok();
    h.sh(&format!(
        "echo '* * * * * cat /proc/self/cgroup > /run/fs-cron/job.$$' | crontab -u {user} -"
    ))
    .ok();
    let _undo = Undo(&h, format!("crontab -r -u {user}; true"));
    let refused = wait_for(
        "cron's session to be refused",
        Duration::from_secs(150),
        || {
            let log = journal_since(&h, &before);
            log.lines()
                .find(|l| {
                    l.starts_with("pam_fairshare(cron:session)")
                        && l.contains("refusing the session")
                })
                .map(str::to_string)
        },
    );
    assert!(
        refused.contains(&format!("outside user-{uid}.slice")),
        "{refused}"
    );
    // the late move finds the refused session's process gone or moves it
    // where nothing of the job ever ran
    std::thread::sleep(Duration::from_secs(10));
    let out = h.sh("cat /run/fs-cron/job.* 2>/dev/null").stdout;
    assert!(
        out.is_empty(),
        "the job ran although its session was refused:\n{out}"
    );
}

#[test]
fn a_session_id_forged_in_the_pam_environment_does_not_keep_a_process_out_of_the_slice() {
    let h = Container::get();
    h.fresh_daemon(CRON_POLICY);
    let (user, uid) = TESTUSER3;
    // A real logind session of the user, whose id the user copies into
    // ~/.pam_environment (read by pam_env with user_readenv=1, as in
    // Debian's sshd stack), for a stack without pam_systemd.
    let held = h.session(user);
    let sid = h
        .sh(&format!(
            "loginctl list-sessions --no-legend | awk '$3==\"{user}\" {{print $1; exit}}'"
        ))
        .ok()
        .out()
        .to_string();
    assert!(!sid.is_empty());
    h.ssh(
        user,
        &format!("printf 'XDG_SESSION_ID DEFAULT={sid}\\n' > ~/.pam_environment"),
    )
    .ok();
    h.write(
        "/etc/pam.d/fs-forged",
        "auth required pam_permit.so\naccount required pam_unix.so\n\
         session required pam_env.so user_readenv=1\nsession required pam_unix.so\n\
         session required pam_fairshare.so\nsession optional pam_exec.so /usr/local/sbin/fs-forged-probe\n",
    );
    h.write(
        "/usr/local/sbin/fs-forged-probe",
        "#!/bin/sh\n[ \"$PAM_TYPE\" = open_session ] || exit 0\n\
         { echo \"XDG_SESSION_ID=$XDG_SESSION_ID\"; echo ---; cat /proc/self/cgroup; } > /run/fs-forged.out\n",
    );
    h.sh("chmod 755 /usr/local/sbin/fs-forged-probe; rm -f /run/fs-forged.out")
        .ok();
    let _undo = Undo(
        &h,
        format!(
            "rm -f /etc/pam.d/fs-forged /usr/local/sbin/fs-forged-probe /run/fs-forged.out ~{user}/.pam_environment"
        ),
    );
    let before = cursor(&h);
    let o = h.exec(&format!(
        "pamtester fs-forged {user} open_session close_session"
    ));
    let probe = h.read("/run/fs-forged.out").expect("the probe ran");
    let (env, cg) = probe.split_once("---\n").unwrap();
    // the forged id reached the PAM environment...
    assert_eq!(env.trim(), format!("XDG_SESSION_ID={sid}"), "{o:?}");
    // ...and the process was moved all the same, out of the system slice,
    // into a scope of its own (not into the session it claimed)
    assert_in_slice(cg, uid, "a session with a forged XDG_SESSION_ID");
    assert!(
        cgroup_line(cg, "name=systemd").contains(&format!("/fairshare-session-{uid}-")),
        "{cg}"
    );
    let log = journal_since(&h, &before);
    assert!(
        log.contains(&format!(
            "ignoring session id \"{sid}\" from the PAM environment"
        )),
        "{log}"
    );
    drop(held);
}

#[test]
fn the_watchdog_restarts_a_daemon_whose_blocking_pool_is_wedged() {
    let h = Container::get();
    let _d = HookedDaemon::start(&h, CRON_POLICY, &[], 10);
    let pid = |h: &Container| {
        h.sh("systemctl show -P MainPID fairshared")
            .ok()
            .out()
            .to_string()
    };
    let restarts = |h: &Container| -> u32 {
        h.sh("systemctl show -P NRestarts fairshared")
            .ok()
            .out()
            .parse()
            .unwrap()
    };
    let (first, n0) = (pid(&h), restarts(&h));
    // every thread of the blocking pool blocks for good (logins need it
    // for user lookups); the ledger's lock stays free
    h.sh("systemctl kill -s USR1 fairshared").ok();
    let second = wait_for(
        "systemd's watchdog to restart the wedged daemon",
        Duration::from_secs(60),
        || {
            let p = pid(&h);
            (restarts(&h) > n0 && p != first && p != "0").then_some(p)
        },
    );
    h.wait_socket();
    let log = h
        .sh("journalctl -u fairshared --no-pager -o cat -n 200")
        .ok()
        .stdout;
    assert!(log.contains("not pinging the watchdog"), "{log}");
    // the new daemon serves logins: the slice files get the limits
    let (user, uid) = TESTUSER;
    let s = h.session(user);
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
    let cg = h.sh(&format!("cat /proc/{}/cgroup", s.pid)).ok().stdout;
    assert_in_slice(&cg, uid, "a login after the restart");
    eprintln!("wedged daemon pid {first} restarted by the watchdog as pid {second}");
}
