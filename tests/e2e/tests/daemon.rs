//! fairshared and fairshare-ctl against a real systemd: resize, refuse,
//! release, the original wire protocol, identity, real enforcement, restart.
//! Every check reads the cgroup files of the user's slice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fairshare_e2e::*;

const POLICY: &str = "\
defaults:
  cpu: 2
  mem: 8G
max:
  cpu: 8
  mem: 32G
  tasks: 8192
capacity:
  cpu: 64
  mem: 256G
";

#[test]
fn resize_within_max_changes_the_slice_files_and_release_restores_the_default() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    let o = h.ssh(user, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    assert!(
        o.out().contains("Resources allocated: 3 CPUs, 3G memory"),
        "{}",
        o.out()
    );
    h.expect_slice(uid, 3000, 3 * GIB, 4096);

    // The user's own shell is inside user-UID.slice in every controller that limits.
    let cg = h.ssh(user, "cat /proc/self/cgroup").ok();
    for ctrl in [":cpu:", ":memory:", ":pids:", ":name=systemd:"] {
        let line = cg
            .stdout
            .lines()
            .find(|l| l.contains(ctrl))
            .unwrap_or_else(|| panic!("no {ctrl} in {}", cg.stdout));
        assert!(
            line.contains(&format!("/user.slice/user-{uid}.slice")),
            "{line}"
        );
    }
    // ... and so is the long-lived session held open above.
    let held = h.read(&format!("/proc/{}/cgroup", _s.pid)).unwrap();
    assert!(
        held.lines()
            .any(|l| l.contains(":cpu:") && l.contains(&format!("user-{uid}.slice"))),
        "{held}"
    );

    let st = h.ssh(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["allocated_cpu"], 3);
    assert_eq!(st["allocated_mem"], "3G");
    assert_eq!(st["source"], "resize");
    let human = h.ssh(user, "fairshare-ctl status").ok();
    assert!(
        human
            .out()
            .contains("allocation: 3 CPUs, 3G memory, 4096 tasks (your resize)"),
        "{}",
        human.out()
    );

    // Fractions and tasks.
    h.ssh(user, "fairshare-ctl request --cpu 1.5 --tasks 5000")
        .ok();
    h.expect_slice(uid, 1500, 3 * GIB, 5000);

    let o = h.ssh(user, "fairshare-ctl release").ok();
    assert!(
        o.out().contains("back to the default of 2 CPUs, 8G memory"),
        "{}",
        o.out()
    );
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
    let st = h.ssh(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["source"], "default");
}

#[test]
fn beyond_max_is_refused_with_the_reason_and_nothing_changes() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 4 --mem 4G").ok();
    let before = h.expect_slice(uid, 4000, 4 * GIB, 4096);
    for (args, reason) in [
        ("--cpu 16", "cpu 16 is above your maximum of 8 CPUs"),
        ("--mem 64G", "mem 64G is above your maximum of 32G"),
        ("--tasks 9000", "tasks 9000 is above your maximum of 8192"),
    ] {
        let o = h.ssh(user, &format!("fairshare-ctl resize {args}"));
        assert_eq!(o.code, 1, "{o:?}");
        // the reason names the maximum of the field asked for
        assert!(o.stderr.contains(reason), "{}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
        assert_eq!(h.slice(uid), before);
    }
    // bad values never reach systemd either
    let o = h.ssh(user, "fairshare-ctl resize --mem 0G");
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(h.slice(uid), before);
    let o = h.ssh(user, r#"echo '{"type":"request_resources","cpu":-1,"mem":"NaN"}' | nc -U -N /run/fairshare.sock"#).ok();
    let v = o.json();
    assert_eq!(v["type"], "error");
    assert!(v["error"].as_str().unwrap().starts_with("cpu:"), "{v}");
    assert_eq!(h.slice(uid), before);
}

#[test]
fn the_reference_quick_start_works_with_nc() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER2;
    let _s = h.session(user);
    // exactly the quick start's requests, one per connection, plain `nc -U`
    let nc = |req: &str| {
        h.ssh(user, &format!("echo '{req}' | nc -U /run/fairshare.sock"))
            .ok()
            .json()
    };
    let v = nc(r#"{"type":"request_resources","cpu":4,"mem":"16G"}"#);
    assert_eq!(v["type"], "success", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Resources allocated: 4 CPUs, 16G memory"),
        "{v}"
    );
    h.expect_slice(uid, 4000, 16 * GIB, 4096);
    let v = nc(r#"{"type":"status"}"#);
    assert_eq!(v["type"], "status_info");
    assert_eq!(v["allocated_cpu"], 4);
    assert_eq!(v["allocated_mem"], "16G");
    // a resize while allocated is accepted (no "release it first")
    let v = nc(r#"{"type":"request_resources","cpu":6,"mem":"12G"}"#);
    assert_eq!(v["type"], "success", "{v}");
    h.expect_slice(uid, 6000, 12 * GIB, 4096);
    let v = nc(r#"{"type":"release"}"#);
    assert_eq!(v["type"], "success", "{v}");
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
    let v = nc(r#"{"type":"request_resources","cpu":16,"mem":"8G"}"#);
    assert_eq!(v["type"], "error");
    assert!(
        v["error"].as_str().unwrap().contains("exceeds")
            || v["error"].as_str().unwrap().contains("above your maximum"),
        "{v}"
    );
    let v = nc("this is not json");
    assert_eq!(v["type"], "error");
    let v = nc(r#"{"type":"explode"}"#);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown request type"),
        "{v}"
    );
}

#[test]
fn a_user_cannot_change_another_users_allocation_whatever_the_json_says() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (a, a_uid) = TESTUSER;
    let (b, b_uid) = TESTUSER2;
    let _sa = h.session(a);
    let _sb = h.session(b);
    h.ssh(b, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    let b_files = h.expect_slice(b_uid, 3000, 3 * GIB, 4096);

    let attempts = [
        r#"{"type":"request_resources","cpu":7,"mem":"7G","uid":1002,"user":"testuser2"}"#,
        r#"{"type":"release","uid":1002,"user":"testuser2"}"#,
        r#"{"type":"set_user","user":"testuser2","cpu":1,"mem":"1G"}"#,
        r#"{"type":"set_user","user":1002,"release":true}"#,
        r#"{"type":"session_close","uid":1002,"pid":1}"#,
        r#"{"type":"session_open","uid":1002,"pid":1}"#,
        r#"{"type":"status","user":"testuser2"}"#,
        r#"{"type":"list"}"#,
    ];
    for req in attempts {
        let v = h
            .ssh(a, &format!("echo '{req}' | nc -U /run/fairshare.sock"))
            .ok()
            .json();
        if req.contains("request_resources") || req.contains(r#""release","#) {
            // acted on A, never on B
            assert_eq!(v["type"], "success", "{req}: {v}");
        } else {
            assert_eq!(v["type"], "error", "{req}: {v}");
            assert_eq!(v["code"], "permission_denied", "{req}: {v}");
        }
        assert_eq!(h.slice(b_uid), b_files, "after {req}");
    }
    // The first attempt resized A herself; the release put her back.
    h.expect_slice(a_uid, 2000, 8 * GIB, 4096);
    let o = h.ssh(a, "fairshare-ctl set testuser2 --cpu 1");
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("root only"), "{}", o.stderr);
    // root may
    h.ctl("set testuser2 --cpu 5 --mem 5G").ok();
    h.expect_slice(b_uid, 5000, 5 * GIB, 4096);
    let list = h.ctl("list").ok();
    assert!(
        list.out()
            .lines()
            .any(|l| l.starts_with("testuser2") && l.contains(" admin ")),
        "{}",
        list.out()
    );
}

/// utime+stime of a busy loop over a few seconds, in % of one CPU.
const BUSY_SHARE: &str = r#"
sh -c 'while :; do :; done' & P=$!
sleep 1
a=$(awk '{print $14+$15}' /proc/$P/stat); t0=$(date +%s%N)
sleep 4
b=$(awk '{print $14+$15}' /proc/$P/stat); t1=$(date +%s%N)
kill $P
echo $(( (b - a) * 1000000000 / $(getconf CLK_TCK) * 100 / (t1 - t0) ))
"#;

#[test]
fn half_a_cpu_is_half_a_cpu_and_a_memory_hog_is_killed() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = TESTUSER3;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 0.5 --mem 256M")
        .ok();
    h.expect_slice(uid, 500, 256 * MIB, 4096);
    let throttled = |h: &Host| -> u64 {
        h.read(&format!(
            "/sys/fs/cgroup/cpu/user.slice/user-{uid}.slice/cpu.stat"
        ))
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nr_throttled ").map(|v| v.parse().unwrap()))
        })
        .unwrap()
    };
    let t0 = throttled(&h);
    let share: u64 = h.ssh(user, BUSY_SHARE).ok().out().parse().unwrap();
    assert!(
        (30..=65).contains(&share),
        "busy loop used {share}% of a CPU under a 0.5 CPU quota"
    );
    assert!(throttled(&h) > t0, "the slice was never throttled");

    // 400M of zeroes held in memory by `tail` cannot fit in a 256M slice.
    // cgroup v1 counts the kill where the victim was (this ssh session's
    // scope, under the slice), so read the counters before the session ends.
    let o = h
        .ssh(
            user,
            &format!(
                "head -c 400M /dev/zero | tail > /dev/null; echo status=$?; \
                 grep -h '^oom_kill ' $(find /sys/fs/cgroup/memory/user.slice/user-{uid}.slice -name memory.oom_control); \
                 fairshare-ctl --json status | tr -d '\\n'"
            ),
        )
        .ok();
    let lines: Vec<&str> = o.out().lines().collect();
    assert_eq!(lines[0], "status=137", "memory hog not killed: {}", o.out());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("oom_kill ") && *l != "oom_kill 0"),
        "{}",
        o.out()
    );
    let st: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(st["usage"]["oom_kills"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn allocations_and_limits_survive_a_daemon_restart_and_stop() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = STUDENT;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 5 --mem 6G").ok();
    h.expect_slice(uid, 5000, 6 * GIB, 4096);

    h.sh("systemctl stop fairshared.socket fairshared.service")
        .ok();
    // stopped: limits stay, the client says what to do
    assert_eq!(h.slice(uid).cpu_quota, Some(500_000));
    let o = h.ssh(user, "fairshare-ctl status");
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("fairshared is not running")
            && o.stderr.contains("ask your admin to start it"),
        "{}",
        o.stderr
    );

    h.start_daemon();
    h.expect_slice(uid, 5000, 6 * GIB, 4096);
    let st = h.ssh(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["allocated_cpu"], 5);
    assert_eq!(st["allocated_mem"], "6G");
    assert_eq!(st["source"], "resize");

    h.sh("systemctl restart fairshared").ok();
    h.wait_socket();
    h.expect_slice(uid, 5000, 6 * GIB, 4096);
    h.ssh(user, "fairshare-ctl release").ok();
    h.expect_slice(uid, 2000, 8 * GIB, 4096);
}

#[test]
fn refuses_to_start_on_a_bad_policy_and_check_names_file_line_and_field() {
    let h = Host::get();
    h.fresh_daemon(POLICY);
    h.write(
        "/tmp/bad.yaml",
        "defaults:\n  cpu: 2\n  mem: 8X\nmax:\n  cpu: 1\n",
    );
    let o = h.sh("fairshared --check /tmp/bad.yaml");
    assert_eq!(o.code, 78, "{o:?}");
    assert!(
        o.stderr
            .contains("/tmp/bad.yaml:3: defaults.mem: `8X` has an unknown unit"),
        "{}",
        o.stderr
    );
    let o = h.sh("fairshared --check /etc/fairshare/policy.d").ok();
    assert!(o.out().contains("policy OK"), "{}", o.out());
    // a second daemon never steals the socket of a running one
    let o = h.sh("timeout 5 fairshared /etc/fairshare/policy.d /run/fairshare.sock");
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("another fairshared is already running on this host"),
        "{}",
        o.stderr
    );
    h.ctl("status").ok();
    // nor runs beside it from another socket (the original quick start's
    // command line), with or without a state directory of its own: two would
    // fight over the same users' slices and drop-ins
    let before = h
        .sh("stat -c %Y /var/lib/fairshare/state.json 2>/dev/null || echo none")
        .ok()
        .out()
        .to_string();
    for (extra, held) in [
        ("", "/var/lib/fairshare"),
        (" --state-dir /tmp/second-state", "/etc/systemd/system"),
    ] {
        let o = h.sh(&format!(
            "timeout 5 fairshared /etc/fairshare/policy.d /tmp/second.sock{extra}"
        ));
        assert_ne!(o.code, 0, "{o:?}");
        assert_ne!(o.code, 124, "it ran: {o:?}");
        assert!(
            o.stderr.contains(&format!(
                "another fairshared is already running on this host (it holds {held};"
            )),
            "{}",
            o.stderr
        );
        assert!(!h.path("/tmp/second.sock").exists());
    }
    h.sh("rm -rf /tmp/second-state").ok();
    assert_eq!(
        h.sh("stat -c %Y /var/lib/fairshare/state.json 2>/dev/null || echo none")
            .ok()
            .out(),
        before
    );
    h.wait_socket();
}
