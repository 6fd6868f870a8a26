use crate::completions::{bash_states, fix_bash};
use crate::{completions, man};
use clap_complete::Shell;

#[test]
fn pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let pages = man::generate(dir.path()).unwrap();
    assert!(pages.len() >= 10, "{pages:?}");
    let ctl = std::fs::read_to_string(dir.path().join("fairshare-ctl.1")).unwrap();
    assert!(ctl.contains("fairshare\\-ctl\\-resize(1)"), "{ctl}");
    let resize = std::fs::read_to_string(dir.path().join("fairshare-ctl-resize.1")).unwrap();
    assert!(
        resize.contains("\\-\\-for") && resize.contains("\\-\\-mem"),
        "{resize}"
    );
    let daemon = std::fs::read_to_string(dir.path().join("fairshared.8")).unwrap();
    assert!(daemon.contains("\\-\\-check"), "{daemon}");
    let pam = std::fs::read_to_string(dir.path().join("pam_fairshare.8")).unwrap();
    assert!(
        pam.contains("fail=open|closed") && pam.contains("skip_uid_below"),
        "{pam}"
    );
    let pol = std::fs::read_to_string(dir.path().join("fairshare-policy.5")).unwrap();
    assert!(pol.contains("leases.max_duration") && pol.contains("capacity.overcommit"));
    let comp = completions::generate(dir.path()).unwrap();
    assert_eq!(comp.len(), 6);
    let bash = std::fs::read_to_string(dir.path().join("bash/fairshare-ctl")).unwrap();
    assert!(bash.contains("resize"));
    let (set, arms) = bash_states(&bash);
    assert!(set.contains("fairshare__ctl__subcmd__resize"), "{set:?}");
    assert_eq!(set, arms);
}

#[test]
fn the_pages_say_what_the_daemon_does_and_where_to_look_next() {
    let dir = tempfile::tempdir().unwrap();
    man::generate(dir.path()).unwrap();
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
    let daemon = read("fairshared.8");
    for want in [
        ".SH \"RELOADING THE POLICY\"",
        ".SH LEASES",
        ".SH FILES",
        "/var/lib/fairshare/state.bin",
        "state.bin.corrupt\\-TIME",
        ".SH \"EXIT STATUS\"",
        ".SH \"SEE ALSO\"",
        "fairshare\\-ctl(1)",
        ".nh",
    ] {
        assert!(daemon.contains(want), "fairshared.8 lacks {want:?}");
    }
    let ctl = read("fairshare-ctl.1");
    for want in [
        ".SH LEASES",
        ".SH \"EXIT STATUS\"",
        ".SH \"SEE ALSO\"",
        "FAIRSHARE_SOCKET",
    ] {
        assert!(ctl.contains(want), "fairshare-ctl.1 lacks {want:?}");
    }
    for (name, page) in [("fairshared.8", &daemon), ("fairshare-ctl.1", &ctl)] {
        assert!(!page.contains(".SH EXTRA"), "{name} has an EXTRA section");
        // an example line must not be filled into running text, where a
        // path can be broken
        let ex = page.split(".SH EXAMPLES").nth(1).unwrap();
        assert!(ex.trim_start().starts_with(".RS 4\n.nf"), "{name}: {ex}");
    }
    // every subcommand page the main page names exists
    for part in ctl.split("fairshare\\-ctl\\-").skip(1) {
        let sub = part.split('(').next().unwrap().replace("\\-", "-");
        assert!(
            dir.path().join(format!("fairshare-ctl-{sub}.1")).exists(),
            "fairshare-ctl.1 names fairshare-ctl-{sub}(1), which is not generated"
        );
    }
    let check = read("fairshare-ctl-check.1");
    assert!(
        !check.contains("\\-\\-json") && !check.contains("\\-\\-socket"),
        "{check}"
    );
    assert!(check.contains("78"), "{check}");
}

#[test]
fn bash_arms_are_spelt_as_the_loop_spells_the_state() {
    let mut cmd = fairshare_ctl::cli::command();
    let mut raw = Vec::new();
    clap_complete::generate(Shell::Bash, &mut cmd, "fairshare-ctl", &mut raw);
    let raw = String::from_utf8(raw).unwrap();
    let (set, arms) = bash_states(&raw);
    // what clap_complete itself writes (if this starts to fail, the
    // upstream bug is fixed and fix_bash can go)
    assert!(
        arms.contains("fairshare__subcmd__ctl__subcmd__resize"),
        "{arms:?}"
    );
    assert_ne!(set, arms);
    let fixed = fix_bash(&raw, "fairshare-ctl").unwrap();
    let (set, arms) = bash_states(&fixed);
    assert!(arms.contains("fairshare__ctl__subcmd__resize"), "{arms:?}");
    assert_eq!(set, arms);
}
