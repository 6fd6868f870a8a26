//! fairshared and fairshare-ctl against a real systemd: resize, refuse,
//! release, the original wire protocol, identity, real enforcement, restart.
//! Every check reads the cgroup files of the user's slice. The core tests
//! ([`core_test!`]) run on both test hosts.
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

// A resize within the maximum changes the slice's files; one beyond it, or
// with a bad value, is refused with the reason and changes nothing; a
// release puts the default back.
core_test!(
    resize_within_max_changes_the_files_beyond_max_is_refused_and_release_restores,
    |h| {
        h.fresh_daemon(CORE_POLICY);
        let layout = h.layout();
        let (user, uid) = TESTUSER2;
        let held = h.session(user);
        h.expect_limits(uid, want(2000, 8 * GIB, 4096).high(4 * GIB));

        // from a login; the login's own shell is inside the slice, in every
        // controller that limits
        let o = h
            .ssh(
                user,
                "fairshare-ctl resize --cpu 3 --mem 3G; echo ---; cat /proc/self/cgroup",
            )
            .ok();
        let (answer, cgroup) = o.stdout.split_once("---\n").unwrap();
        assert!(
            answer.contains("Resources allocated: 3 CPUs, 3G memory"),
            "{answer}"
        );
        layout.assert_under(
            cgroup,
            &slice_path(uid),
            "the shell of the login that resized",
        );
        // ... and so is the session held open above
        h.assert_in_slice(held.pid, uid, "the held session");
        // the soft limit keeps its share of the hard one
        h.expect_limits(uid, want(3000, 3 * GIB, 4096).high(1536 * MIB));
        let st = h.as_user(user, "fairshare-ctl --json status").ok().json();
        assert_eq!(st["allocated_cpu"], 3);
        assert_eq!(st["allocated_mem"], "3G");
        assert_eq!(st["source"], "resize");
        let human = h.as_user(user, "fairshare-ctl status").ok();
        assert!(
            human
                .out()
                .contains("allocation: 3 CPUs, 3G memory (soft 1.5G), 4096 tasks (your resize)"),
            "{}",
            human.out()
        );

        // fractions and tasks
        h.as_user(user, "fairshare-ctl request --cpu 1.5 --tasks 5000")
            .ok();
        let before = h.expect_limits(uid, want(1500, 3 * GIB, 5000).high(1536 * MIB));
        let st = h.as_user(user, "fairshare-ctl --json status").ok().json();
        assert_eq!(st["allocated_cpu"], 1.5);
        assert_eq!(st["source"], "resize");

        // refusals, in one go (every command in the guest is slow): the exit
        // status, stderr, and the slice's files right after each
        let refusals = [
            (
                "resize --cpu 16",
                1,
                "cpu 16 is above your maximum of 8 CPUs",
            ),
            (
                "resize --mem 64G",
                1,
                "mem 64G is above your maximum of 32G",
            ),
            (
                "resize --tasks 9000",
                1,
                "tasks 9000 is above your maximum of 8192",
            ),
            // bad values never reach systemd either
            ("resize --mem 0G", 2, ""),
        ];
        let files: Vec<String> = layout.limit_files(uid).iter().map(|f| quote(f)).collect();
        let script: Vec<String> = refusals
        .iter()
        .map(|(args, _, _)| {
            format!(
                "fairshare-ctl {args} 2>$HOME/fs-err >/dev/null; echo \"exit $?\"; cat $HOME/fs-err; \
                 for f in {}; do echo ==fs-file==; cat \"$f\" 2>/dev/null || echo ==fs-missing==; done; \
                 echo ==fs-end==",
                files.join(" ")
            )
        })
        .collect();
        let o = h.as_user(user, &script.join("; ")).ok();
        let steps: Vec<&str> = o.stdout.split_terminator("==fs-end==\n").collect();
        assert_eq!(steps.len(), refusals.len(), "{}", o.stdout);
        for ((args, code, reason), step) in refusals.iter().zip(steps) {
            let mut parts = step.split("==fs-file==\n");
            let head = parts.next().unwrap();
            let (status, stderr) = head.split_once('\n').unwrap();
            assert_eq!(status, format!("exit {code}"), "{args}: {head}");
            if *code == 1 {
                // the reason names the maximum of the field asked for
                assert!(stderr.contains(reason), "{args}: {stderr}");
                assert_eq!(
                    stderr.trim().lines().count(),
                    1,
                    "{args}, one line: {stderr}"
                );
            }
            let now: Vec<Option<String>> = parts
                .map(|t| (t.trim() != "==fs-missing==").then(|| t.to_string()))
                .collect();
            assert_eq!(
                Limits::parse(layout, &now),
                Some(before),
                "the slice's files after {args}"
            );
        }
        let o = h
        .as_user(
            user,
            r#"echo '{"type":"request_resources","cpu":-1,"mem":"NaN"}' | nc -U -N /run/fairshare.sock"#,
        )
        .ok();
        let v = o.json();
        assert_eq!(v["type"], "error");
        assert!(v["error"].as_str().unwrap().starts_with("cpu:"), "{v}");
        assert_eq!(h.slice(uid), Some(before));

        let o = h.as_user(user, "fairshare-ctl release").ok();
        assert!(
            o.out().contains("back to the default of 2 CPUs, 8G memory"),
            "{}",
            o.out()
        );
        h.expect_limits(uid, want(2000, 8 * GIB, 4096).high(4 * GIB));
        let st = h.as_user(user, "fairshare-ctl --json status").ok().json();
        assert_eq!(st["source"], "default");
    }
);

/// A busy loop's CPU share over 6 s, in % of one CPU: prints the window's
/// start and end (`date +%s%N`), the share from the loop's own process
/// times, and from the slice's CPU time (`USAGE` prints it in
/// microseconds, or nothing where the layout has no per-slice figure).
const BUSY_SHARE: &str = r#"
sh -c 'while :; do :; done' & P=$!
sleep 1
a=$(awk '{print $14+$15}' /proc/$P/stat); u0=$(USAGE); t0=$(date +%s%N)
sleep 6
b=$(awk '{print $14+$15}' /proc/$P/stat); u1=$(USAGE); t1=$(date +%s%N)
kill $P
echo $t0 $t1 $(( (b - a) * 1000000000 / $(getconf CLK_TCK) * 100 / (t1 - t0) )) ${u0:+$(( (u1 - u0) * 1000 * 100 / (t1 - t0) ))}
"#;

/// What [`BUSY_SHARE`] printed: the window, the loop's share, the slice's.
fn busy_share(o: &Out) -> (u64, u64, u64, Option<u64>) {
    let v: Vec<u64> = o
        .out()
        .split_whitespace()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{o:?}")))
        .collect();
    assert!(v.len() >= 3, "{o:?}");
    (v[0], v[1], v[2], v.get(3).copied())
}

/// An unlimited busy loop in a service of root's (no quota), its CPU time
/// sampled twice a second: how much of a CPU the machine gives a loop
/// meanwhile. On a machine shared with other work that is less than a
/// whole CPU, and a loop under a quota cannot get more than that either.
struct Reference<'a>(&'a dyn TestHost);

const REFERENCE_LOG: &str = "/run/fs-e2e-reference.log";

impl<'a> Reference<'a> {
    fn start(h: &'a dyn TestHost) -> Reference<'a> {
        let script = format!(
            "sh -c 'while :; do :; done' & P=$!; echo hz $(getconf CLK_TCK) > {REFERENCE_LOG}; \
             while :; do echo $(date +%s%N) $(awk '{{print $14+$15}}' /proc/$P/stat) >> {REFERENCE_LOG}; sleep 0.5; done"
        );
        h.sh(&format!(
            "systemctl stop fs-e2e-reference.service 2>/dev/null; rm -f {REFERENCE_LOG}; \
             systemd-run --quiet --collect --unit fs-e2e-reference sh -c {}",
            quote(&script)
        ))
        .ok();
        Reference(h)
    }

    /// The reference loop's share of a CPU between `t0` and `t1` (ns, the
    /// host's clock), in %.
    #[track_caller]
    fn share(&self, t0: u64, t1: u64) -> u64 {
        let log = self.0.read(REFERENCE_LOG).unwrap_or_default();
        let hz: u64 = value_after(&log, "hz ");
        let samples: Vec<(u64, u64)> = log
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            })
            .collect();
        let first = samples.iter().find(|(t, _)| *t >= t0);
        let last = samples.iter().rev().find(|(t, _)| *t <= t1);
        match (first, last) {
            (Some(&(a, ta)), Some(&(b, tb))) if b > a + 2_000_000_000 => {
                (tb - ta) * 1_000_000_000 / hz * 100 / (b - a)
            }
            _ => panic!("the reference loop's samples do not cover {t0}..{t1}:\n{log}"),
        }
    }
}

impl Drop for Reference<'_> {
    fn drop(&mut self) {
        self.0
            .sh("systemctl stop fs-e2e-reference.service 2>/dev/null; true");
    }
}

// Half a CPU is half a CPU: a busy loop is held to the quota, throttled in
// most periods; raised to 1.5 CPUs it rarely is. What the loop gets is
// compared with what an unlimited loop got at the same time (a reference in
// a service of root's): on a machine busy with other work a loop gets less
// than the quota, and the test says what it saw rather than flake.
core_test!(a_busy_loop_is_throttled_to_the_quota, |h| {
    h.fresh_daemon(CORE_POLICY);
    let (user, uid) = TESTUSER3;
    let _s = h.session(user);
    let busy = BUSY_SHARE.replace("USAGE", &h.layout().cpu_usage_cmd(uid));
    h.as_user(user, "fairshare-ctl resize --cpu 0.5").ok();
    h.expect_limits(uid, want(500, 8 * GIB, 4096).high(4 * GIB));
    let reference = Reference::start(h);
    let before = h.cpu_stat(uid);
    let o = h.ssh(user, &busy).ok();
    let after = h.cpu_stat(uid);
    let (t0, t1, process, slice) = busy_share(&o);
    let free = reference.share(t0, t1);
    let half = after.throttled_since(&before);
    eprintln!(
        "0.5 CPU quota on the {}: busy loop {process}%, slice {slice:?}% of a CPU, an unlimited loop meanwhile {free}%; throttled in {:.0}% of the periods",
        h.name(),
        half * 100.0
    );
    // the quota is the ceiling, whatever the machine does
    assert!(
        process <= 65,
        "busy loop used {process}% of a CPU under a 0.5 CPU quota"
    );
    // and the loop got most of what it could: half a CPU, or what an
    // unlimited loop got meanwhile if that was less
    assert!(
        process * 2 >= free.min(50),
        "busy loop used {process}% of a CPU under a 0.5 CPU quota, an unlimited loop {free}%"
    );
    if let Some(slice) = slice {
        assert!(
            slice <= 70 && slice + 5 >= process,
            "the slice used {slice}% of a CPU under a 0.5 CPU quota, its busy loop {process}%"
        );
    }
    // a loop that could have had a whole CPU runs into half a CPU in most
    // periods; one that got less than the quota from a busy machine may not
    if free >= 90 {
        assert!(
            half > 0.5 && after.throttled_usec > before.throttled_usec,
            "throttled in only {:.0}% of the periods with a CPU free: {before:?} -> {after:?}",
            half * 100.0
        );
    } else if free >= 60 {
        assert!(
            after.nr_throttled > before.nr_throttled,
            "never throttled: {before:?} -> {after:?}"
        );
    }

    // Raised to 1.5 CPUs, one busy loop is rarely held back (the login's own
    // processes may still add up to 1.5 CPUs now and then) and gets about
    // what an unlimited loop gets (at least half of it, whatever the
    // scheduler does with the two).
    h.as_user(user, "fairshare-ctl resize --cpu 1.5").ok();
    h.expect_limits(uid, want(1500, 8 * GIB, 4096).high(4 * GIB));
    let before = h.cpu_stat(uid);
    let o = h.ssh(user, &busy).ok();
    let after = h.cpu_stat(uid);
    let (t0, t1, process, slice) = busy_share(&o);
    let free = reference.share(t0, t1);
    drop(reference);
    let more = after.throttled_since(&before);
    eprintln!(
        "1.5 CPU quota: busy loop {process}%, slice {slice:?}% of a CPU, an unlimited loop meanwhile {free}%; throttled in {:.0}% of the periods",
        more * 100.0
    );
    assert!(
        more < 0.1,
        "throttled in {:.0}% of the periods under a 1.5 CPU quota ({:.0}% under 0.5)",
        more * 100.0,
        half * 100.0
    );
    assert!(
        process * 2 >= free,
        "the busy loop used {process}% of a CPU under 1.5 CPUs, an unlimited loop {free}%"
    );
    if free >= 90 {
        // a whole CPU free: more than the old quota allowed
        assert!(
            process > 65,
            "the busy loop used {process}% of a CPU under 1.5 CPUs with a CPU free"
        );
    }
    if let Some(slice) = slice {
        assert!(
            slice + 5 >= process,
            "the slice used {slice}% of a CPU, its busy loop {process}%"
        );
    }
});

// A memory hog beyond the hard limit is killed by the kernel, and the kill
// is counted: in the cgroup files and in `status`.
core_test!(
    a_memory_hog_beyond_memory_max_is_oom_killed_and_counted,
    |h| {
        h.fresh_daemon(CORE_POLICY_NO_HIGH);
        let layout = h.layout();
        let (user, uid) = TESTUSER3;
        let _s = h.session(user);
        h.as_user(user, "fairshare-ctl resize --mem 128M").ok();
        h.expect_limits(uid, want(2000, 128 * MIB, 4096));
        let (kills0, hits0) = (h.oom_kills(uid), h.mem_limit_hits(uid));
        // 300M of zeroes held in memory by `tail` cannot fit in a 128M slice.
        // The counters are read in the same login: v1 counts a kill only in the
        // victim's cgroup (this login's session scope).
        let o = h
            .ssh(
                user,
                &format!(
                    "head -c 300M /dev/zero | tail > /dev/null; echo status=$?; echo kills=$({}); \
                 fairshare-ctl --json status | tr -d '\\n'",
                    layout.oom_kills_cmd(uid)
                ),
            )
            .ok();
        let lines: Vec<&str> = o.out().lines().collect();
        assert_eq!(lines[0], "status=137", "memory hog not killed: {}", o.out());
        let kills: u64 = value_after(lines[1], "kills=");
        assert!(
            kills > kills0 && kills >= 1,
            "OOM kills {kills0} -> {kills}"
        );
        let hits = h.mem_limit_hits(uid);
        assert!(
            hits > hits0,
            "the slice's memory limit was hit {hits0} -> {hits} times"
        );
        let st: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(st["usage"]["oom_kills"], kills, "{st}");
        if layout == Layout::Unified {
            // v2 counts the kill in every ancestor of the victim's cgroup, so
            // the slice keeps it after that session ended
            assert_eq!(h.oom_kills(uid), kills);
            let st = h.ctl(&format!("--json status --user {user}")).ok().json();
            assert_eq!(st["usage"]["oom_kills"], kills, "{st}");
            let human = h.as_user(user, "fairshare-ctl status").ok();
            assert!(
                human.out().contains(&format!("{kills} OOM kill")),
                "{}",
                human.out()
            );
        }
    }
);

#[test]
fn the_reference_quick_start_works_with_nc() {
    let h = Container::get();
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
    h.expect_limits(uid, want(4000, 16 * GIB, 4096));
    let v = nc(r#"{"type":"status"}"#);
    assert_eq!(v["type"], "status_info");
    assert_eq!(v["allocated_cpu"], 4);
    assert_eq!(v["allocated_mem"], "16G");
    // a resize while allocated is accepted (no "release it first")
    let v = nc(r#"{"type":"request_resources","cpu":6,"mem":"12G"}"#);
    assert_eq!(v["type"], "success", "{v}");
    h.expect_limits(uid, want(6000, 12 * GIB, 4096));
    let v = nc(r#"{"type":"release"}"#);
    assert_eq!(v["type"], "success", "{v}");
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
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
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (a, a_uid) = TESTUSER;
    let (b, b_uid) = TESTUSER2;
    let _sa = h.session(a);
    let _sb = h.session(b);
    h.ssh(b, "fairshare-ctl resize --cpu 3 --mem 3G").ok();
    let b_files = h.expect_limits(b_uid, want(3000, 3 * GIB, 4096));

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
        assert_eq!(h.slice(b_uid), Some(b_files), "after {req}");
    }
    // The first attempt resized A herself; the release put her back.
    h.expect_limits(a_uid, want(2000, 8 * GIB, 4096));
    let o = h.ssh(a, "fairshare-ctl set testuser2 --cpu 1");
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("root only"), "{}", o.stderr);
    // root may
    h.ctl("set testuser2 --cpu 5 --mem 5G").ok();
    h.expect_limits(b_uid, want(5000, 5 * GIB, 4096));
    let list = h.ctl("list").ok();
    assert!(
        list.out()
            .lines()
            .any(|l| l.starts_with("testuser2") && l.contains(" admin ")),
        "{}",
        list.out()
    );
}

#[test]
fn allocations_and_limits_survive_a_daemon_restart_and_stop() {
    let h = Container::get();
    h.fresh_daemon(POLICY);
    let (user, uid) = STUDENT;
    let _s = h.session(user);
    h.ssh(user, "fairshare-ctl resize --cpu 5 --mem 6G").ok();
    h.expect_limits(uid, want(5000, 6 * GIB, 4096));

    h.sh("systemctl stop fairshared.socket fairshared.service")
        .ok();
    // stopped: limits stay, the client says what to do
    assert_eq!(h.slice(uid).and_then(|l| l.cpu_quota_us), Some(500_000));
    let o = h.ssh(user, "fairshare-ctl status");
    assert_eq!(o.code, 3);
    assert!(
        o.stderr.contains("fairshared is not running")
            && o.stderr.contains("ask your admin to start it"),
        "{}",
        o.stderr
    );

    h.start_daemon();
    h.expect_limits(uid, want(5000, 6 * GIB, 4096));
    let st = h.ssh(user, "fairshare-ctl --json status").ok().json();
    assert_eq!(st["allocated_cpu"], 5);
    assert_eq!(st["allocated_mem"], "6G");
    assert_eq!(st["source"], "resize");

    h.sh("systemctl restart fairshared").ok();
    h.wait_socket();
    h.expect_limits(uid, want(5000, 6 * GIB, 4096));
    h.ssh(user, "fairshare-ctl release").ok();
    h.expect_limits(uid, want(2000, 8 * GIB, 4096));
}

#[test]
fn refuses_to_start_on_a_bad_policy_and_check_names_file_line_and_field() {
    let h = Container::get();
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
        .sh("stat -c %Y /var/lib/fairshare/state.bin 2>/dev/null || echo none")
        .ok()
        .out()
        .to_string();
    for extra in ["", " --state-dir /tmp/second-state"] {
        let o = h.sh(&format!(
            "timeout 5 fairshared /etc/fairshare/policy.d /tmp/second.sock{extra}"
        ));
        assert_ne!(o.code, 0, "{o:?}");
        assert_ne!(o.code, 124, "it ran: {o:?}");
        assert!(
            o.stderr.contains(
                "another fairshared is already running on this host (it holds /run/fairshared/lock;"
            ),
            "{}",
            o.stderr
        );
        assert!(!h.path("/tmp/second.sock").exists());
    }
    h.sh("rm -rf /tmp/second-state").ok();
    assert_eq!(
        h.sh("stat -c %Y /var/lib/fairshare/state.bin 2>/dev/null || echo none")
            .ok()
            .out(),
        before
    );
    h.wait_socket();
}
