//! `fairshare-ctl check` as an admin runs it: the exit status and what it
//! prints, the same as `fairshared --check`.
#![allow(clippy::expect_used)]

use std::process::Command;

fn check(policy: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("10-site.yaml");
    std::fs::write(&path, policy).expect("write the policy");
    let out = Command::new(env!("CARGO_BIN_EXE_fairshare-ctl"))
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run fairshare-ctl");
    let text =
        |b: &[u8]| String::from_utf8_lossy(b).replace(&dir.path().display().to_string(), "DIR");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn a_bad_policy_exits_78_with_every_error() {
    let (code, out, err) = check("defaults:\n  cpu: 0\n  memory: 8G\n  tasks: -1\n");
    assert_eq!(code, 78, "stdout: {out}\nstderr: {err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert_eq!(lines[0], "fairshare-ctl: the policy has errors:");
    assert!(
        lines[1].starts_with("DIR/10-site.yaml:2: defaults.cpu: `0` must be greater than zero"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("DIR/10-site.yaml:3: defaults.memory: unknown field `memory`"),
        "{err}"
    );
    assert!(
        lines[3].starts_with("DIR/10-site.yaml:4: defaults.tasks: `-1` must be greater than zero"),
        "{err}"
    );
}

#[test]
fn a_good_policy_is_summarised_and_conflicting_groups_are_warned() {
    let (code, out, err) = check(
        "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\ngroups:\n  fs-no-such-a:\n    defaults: {cpu: 1}\n  fs-no-such-b:\n    defaults: {cpu: 3}\n",
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.starts_with("loaded DIR/10-site.yaml\n  defaults: cpu 2, mem 8G, tasks 4096\n"),
        "{out}"
    );
    assert!(
        out.contains("warning: DIR/10-site.yaml:4: group fs-no-such-a does not exist on this host"),
        "{out}"
    );
    assert!(
        out.contains("warning: groups fs-no-such-a (1 at DIR/10-site.yaml:5) and fs-no-such-b (3 at DIR/10-site.yaml:7) set defaults.cpu to different values; a user in several of them gets the last one's"),
        "{out}"
    );
    assert!(out.ends_with("policy OK\n"), "{out}");
}

#[test]
fn a_missing_policy_exits_78_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_fairshare-ctl"))
        .args(["check", "/nonexistent/fairshare-policy.d"])
        .output()
        .expect("run fairshare-ctl");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read policy"), "{err}");
}
