//! Sessions against hostile users: another user's logins are answered in
//! time whatever a user floods the daemon with; a cron job never runs outside
//! the user's slice, even when the daemon is slow; processes are moved only
//! when they are the user's; a session id from the PAM environment is
//! believed only when the process's cgroup confirms it; the watchdog sees a
//! wedged daemon. Every check reads the cgroup files, `/proc/PID/cgroup` and
//! the module's journal lines, not what the daemon says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fairshare_e2e::*;

/// Copies a helper binary of this crate into the test host.
fn install_bin(h: &Host, name: &str, path: &str) {
    let dst = h.path(&format!("/usr/local/bin/{name}"));
    let tmp = h.path(&format!("/usr/local/bin/.{name}.tmp"));
    std::fs::copy(path, &tmp).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
}

/// The journal's cursor now (to read only what comes after).
fn cursor(h: &Host) -> String {
    let o = h
        .sh("journalctl --no-pager -n 0 --show-cursor | sed -n 's/^-- cursor: //p'")
        .ok();
    o.out().to_string()
}

fn journal_since(h: &Host, cursor: &str) -> String {
    h.sh(&format!(
        "journalctl --sync; journalctl --no-pager -o cat --after-cursor='{cursor}'"
    ))
    .ok()
    .stdout
}

/// Users for the load test: ten in group `fsload` (uids 1201..1210), and
/// `fsbig`, a member of 3000 groups. Removed again when the guard drops.
fn load_users(h: &Host) -> Undo<'_> {
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
    let h = Host::get();
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
