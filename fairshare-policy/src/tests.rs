use std::time::Duration;

use fairshare_proto::units::{Bytes, Cpus, Tasks};

use super::*;

fn load(files: &[(&str, &str)]) -> Result<Policy, PolicyErrors> {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    Policy::from_sources(&sources)
}

fn one(text: &str) -> Result<Policy, PolicyErrors> {
    load(&[("p.yaml", text)])
}

fn errors(text: &str) -> Vec<String> {
    one(text)
        .expect_err("policy should be refused")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn user(uid: u32, name: &str, groups: &[&str]) -> Identity {
    Identity {
        uid,
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

const REFERENCE: &str = "defaults:\n  cpu: 2\n  mem: 8G\n\nmax:\n  cpu: 8\n  mem: 32G\n";

#[test]
fn reference_policy_loads_unchanged() {
    let p = one(REFERENCE).unwrap();
    let u = p.for_user(&user(1001, "alice", &["alice"]));
    assert_eq!(u.exempt, None);
    assert_eq!(u.default.cpu, Cpus::whole(2));
    assert_eq!(u.default.mem, Bytes(8 << 30));
    assert_eq!(u.default.tasks, DEFAULT_TASKS);
    assert_eq!(u.default.mem_high, None);
    assert_eq!(u.max.cpu, Cpus::whole(8));
    assert_eq!(u.max.mem, Bytes(32 << 30));
    assert_eq!(u.max.tasks, DEFAULT_TASKS);
    assert_eq!(u.sources, vec!["defaults"]);
}

#[test]
fn fractional_cpus_and_tasks() {
    let p = one(
        "defaults: {cpu: 1.5, mem: 1.5G, tasks: 512}\nmax: {cpu: 2.25, mem: 2G, tasks: 1024}\n",
    )
    .unwrap();
    let u = p.for_user(&user(2000, "bob", &[]));
    assert_eq!(u.default.cpu, Cpus::from_millis(1500));
    assert_eq!(u.default.mem, Bytes(3 << 29));
    assert_eq!(u.default.tasks, Tasks(512));
    assert_eq!(u.max.cpu, Cpus::from_millis(2250));
    assert_eq!(u.max.tasks, Tasks(1024));
}

#[test]
fn missing_max_means_no_resizing_above_default() {
    let p = one("defaults: {cpu: 2, mem: 8G}\n").unwrap();
    let u = p.for_user(&user(2000, "bob", &[]));
    assert_eq!(u.max.cpu, u.default.cpu);
    assert_eq!(u.max.mem, u.default.mem);
}

#[test]
fn soft_limit_as_percent_or_size_scales_with_resizes() {
    let p = one("defaults: {cpu: 2, mem: 8G, mem_high: 75%}\nmax: {cpu: 8, mem: 32G}\n").unwrap();
    let u = p.for_user(&user(2000, "bob", &[]));
    assert_eq!(u.default.mem_high, Some(Bytes(6 << 30)));
    assert_eq!(
        u.limits(Cpus::whole(4), Bytes(16 << 30), Tasks(10))
            .mem_high,
        Some(Bytes(12 << 30))
    );
    let p = one("defaults: {cpu: 2, mem: 8G, mem_high: 6G}\nmax: {cpu: 8, mem: 32G}\n").unwrap();
    let u = p.for_user(&user(2000, "bob", &[]));
    assert_eq!(u.default.mem_high, Some(Bytes(6 << 30)));
    assert_eq!(
        u.limits(Cpus::whole(4), Bytes(4 << 30), Tasks(10)).mem_high,
        Some(Bytes(3 << 30))
    );
}

#[test]
fn soft_limit_must_be_below_hard_limit() {
    let e = errors("defaults: {cpu: 2, mem: 8G, mem_high: 9G}\n");
    assert!(
        e[0].starts_with("p.yaml:1: defaults.mem_high: soft limit 9G"),
        "{e:?}"
    );
    let e = errors("defaults: {cpu: 2, mem: 8G, mem_high: 100%}\n");
    assert!(
        e[0].contains("defaults.mem_high") && e[0].contains("below 100%"),
        "{e:?}"
    );
    let e = errors("defaults: {cpu: 2, mem: 8G}\nmax: {mem_high: 50%}\n");
    assert!(e[0].starts_with("p.yaml:2: max.mem_high"), "{e:?}");
}

#[test]
fn directory_files_merge_in_order_field_by_field() {
    let p = load(&[
        ("00-base.yaml", REFERENCE),
        (
            "10-site.yaml",
            "defaults:\n  cpu: 1\nexempt:\n  users: [backup]\n",
        ),
        ("20-more.yaml", "exempt:\n  users: [ci]\n  uid_below: 500\n"),
    ])
    .unwrap();
    let u = p.for_user(&user(2000, "bob", &[]));
    assert_eq!(u.default.cpu, Cpus::whole(1));
    assert_eq!(u.default.mem, Bytes(8 << 30)); // kept from the first file
    assert!(p.exemption(&user(2001, "backup", &[])).is_some());
    assert!(p.exemption(&user(2002, "ci", &[])).is_some());
    assert_eq!(p.exemption(&user(600, "x", &[])), None);
    assert!(matches!(
        p.exemption(&user(499, "x", &[])),
        Some(Exemption::SystemUid { below: 500 })
    ));
}

#[test]
fn exempt_by_default_root_system_and_nobody() {
    let p = one(REFERENCE).unwrap();
    assert_eq!(p.exemption(&user(0, "root", &[])), Some(Exemption::Root));
    assert_eq!(
        p.exemption(&user(999, "daemon", &[])),
        Some(Exemption::SystemUid { below: 1000 })
    );
    assert_eq!(
        p.exemption(&user(65534, "nobody", &[])),
        Some(Exemption::Nobody)
    );
    assert_eq!(p.exemption(&user(1000, "first", &[])), None);
    let p = one("defaults: {cpu: 2, mem: 8G}\nexempt: {groups: [admins]}\n").unwrap();
    let e = p.exemption(&user(1500, "ann", &["ann", "admins"])).unwrap();
    assert!(e.to_string().contains("group admins"), "{e}");
    assert!(p.for_user(&user(1500, "ann", &["admins"])).exempt.is_some());
}

#[test]
fn group_and_user_overrides() {
    let text = "\
defaults: {cpu: 2, mem: 8G}
max: {cpu: 8, mem: 32G}
groups:
  students:
    defaults: {cpu: 1, mem: 4G}
    max: {cpu: 2, mem: 8G}
  gpu:
    max: {cpu: 16}
users:
  alice:
    defaults: {tasks: 8000}
    max: {mem: 64G, tasks: 9000}
";
    let p = one(text).unwrap();
    let s = p.for_user(&user(1003, "stu", &["stu", "students"]));
    assert_eq!(s.default.cpu, Cpus::whole(1));
    assert_eq!(s.default.mem, Bytes(4 << 30));
    assert_eq!(s.max.cpu, Cpus::whole(2));
    assert_eq!(s.sources, vec!["defaults", "group students"]);
    // groups apply in policy order: gpu after students raises the max again
    let both = p.for_user(&user(1004, "x", &["gpu", "students"]));
    assert_eq!(both.max.cpu, Cpus::whole(16));
    assert_eq!(both.default.cpu, Cpus::whole(1));
    let a = p.for_user(&user(1005, "alice", &["alice", "students"]));
    assert_eq!(a.default.tasks, Tasks(8000));
    assert_eq!(a.max.mem, Bytes(64 << 30));
    assert_eq!(a.max.cpu, Cpus::whole(2));
    assert_eq!(a.sources, vec!["defaults", "group students", "user alice"]);
    let names: Vec<String> = p.named_groups().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["students", "gpu"]);
    let (name, origin) = &p.named_users()[0];
    assert_eq!((name.as_str(), origin.line), ("alice", 10));
    let w = p.unknown_names(|u| u != "alice", |g| g == "students");
    assert_eq!(
        w,
        vec![
            "warning: p.yaml:10: user alice does not exist on this host",
            "warning: p.yaml:7: group gpu does not exist on this host"
        ]
    );
}

#[test]
fn overrides_are_checked_against_the_base() {
    let text = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\ngroups:\n  big:\n    defaults: {cpu: 12}\n";
    let e = one(text).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].field, "groups.big.defaults.cpu");
    assert_eq!(e.0[0].origin.line, 5);
    assert!(e.0[0].message.contains("above max cpu 8"), "{e}");
    let text = "defaults: {cpu: 2, mem: 8G}\nusers:\n  tiny:\n    max: {mem: 1G}\n";
    let e = one(text).unwrap_err();
    assert_eq!(e.0[0].field, "users.tiny.max.mem");
    assert_eq!(e.0[0].origin.line, 4);
}

#[test]
fn defaults_above_max_name_both_places() {
    let e = errors("defaults:\n  cpu: 10\n  mem: 8G\nmax:\n  cpu: 8\n  mem: 32G\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p.yaml:2: defaults.cpu: default cpu 10 is above max cpu 8"),
        "{e:?}"
    );
    assert!(e[0].contains("p.yaml:5"), "{e:?}");
}

#[test]
fn bad_values_name_file_line_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            "defaults:\n  cpu: 0\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu: `0` must be greater than zero",
        ),
        (
            "defaults:\n  cpu: -2\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu: `-2` must be greater than zero",
        ),
        (
            "defaults:\n  cpu: 2\n  mem: 8X\n",
            "p.yaml:3: defaults.mem: `8X` has an unknown unit `X`",
        ),
        (
            "defaults:\n  cpu: 2\n  mem: 0G\n",
            "p.yaml:3: defaults.mem: `0G` must be greater than zero",
        ),
        (
            "defaults:\n  cpu: 2\n  mem: 99999999999T\n",
            "p.yaml:3: defaults.mem: `99999999999T` is too large",
        ),
        (
            "defaults:\n  cpu: two\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu: `two` is not a number",
        ),
        (
            "defaults:\n  cpu: true\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu: `true` is not a number",
        ),
        (
            "defaults:\n  cpu: 2\n  mem: 8\n",
            "p.yaml:3: defaults.mem: 8B is too small",
        ),
        (
            "defaults:\n  cpu: 2\n  mem: 8G\n  tasks: 1.5\n",
            "p.yaml:4: defaults.tasks: `1.5` must be a whole number",
        ),
        (
            "defaults:\n  cpu: 1e999\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu:",
        ),
        (
            "defaults:\n  cpu: 2\n  memory: 8G\n",
            "p.yaml:3: defaults.memory: unknown field `memory`",
        ),
        (
            "defaults:\n  cpu: 2\n  cpu: 3\n  mem: 8G\n",
            "p.yaml:3: defaults.cpu: duplicate mapping key",
        ),
        ("defaults: [1, 2]\n", "p.yaml:1: defaults:"),
        (
            "defaults:\n  cpu: [2]\n  mem: 8G\n",
            "p.yaml:2: defaults.cpu: expected a single value",
        ),
        (
            "defaults:\n  cpu: 2\n mem: 8G\n",
            "p.yaml:3: defaults.mem: while parsing",
        ),
        (
            "defalts:\n  cpu: 2\n",
            "p.yaml:1: defalts: unknown field `defalts`",
        ),
        (
            "defaults: {cpu: 2, mem: 8G}\ncapacity: {overcommit: 0}\n",
            "p.yaml:2: capacity.overcommit: `0` is not an overcommit factor",
        ),
        (
            "defaults: {cpu: 2, mem: 8G}\ncapacity: {overcommit: {cpu: 2, disk: 3}}\n",
            "p.yaml:2: capacity.overcommit.disk: unknown field `disk`",
        ),
        (
            "defaults: {cpu: 2, mem: 8G}\nexempt: {uid_below: -1}\n",
            "p.yaml:2: exempt.uid_below: `-1` is not a uid",
        ),
        (
            "defaults: {cpu: 2, mem: 8G}\nleases: {max_duration: 4x}\n",
            "p.yaml:2: leases.max_duration:",
        ),
        ("max: {cpu: 8, mem: 32G}\n", "p.yaml: defaults.cpu: missing"),
        (
            "defaults: {cpu: .nan, mem: 8G}\n",
            "p.yaml:1: defaults.cpu: `NaN` is not a number",
        ),
    ];
    for (text, want) in cases {
        let e = errors(text);
        assert!(
            e.iter().any(|m| m.starts_with(want)),
            "for {text:?}\n  want prefix: {want}\n  got: {e:?}"
        );
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = errors("defaults:\n  cpu: 0\n  mem: 8X\n  tasks: -1\n");
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn empty_and_comment_only_files_are_fine_next_to_a_real_one() {
    let p = load(&[
        ("00.yaml", REFERENCE),
        ("50.yaml", ""),
        ("60.yaml", "# disabled\n"),
    ]);
    assert!(p.is_ok());
    let e = load(&[("50.yaml", "# nothing\n")]).unwrap_err();
    assert!(e.to_string().contains("defaults.cpu: missing"), "{e}");
}

#[test]
fn capacity_defaults_to_the_host_with_overcommit() {
    let host = HostResources {
        cpus: Cpus::whole(2),
        mem: Bytes(24 << 30),
    };
    let c = one(REFERENCE).unwrap().capacity(host);
    assert_eq!(c.cpu, Cpus::whole(8));
    assert_eq!(c.mem, Bytes(36 << 30));
    let c = one("defaults: {cpu: 2, mem: 8G}\ncapacity: {cpu: 64, mem: 256G, overcommit: 1}\n")
        .unwrap()
        .capacity(host);
    assert_eq!((c.cpu, c.mem), (Cpus::whole(64), Bytes(256 << 30)));
    let c = one("defaults: {cpu: 2, mem: 8G}\ncapacity: {overcommit: {cpu: 2}}\n")
        .unwrap()
        .capacity(host);
    assert_eq!((c.cpu, c.mem), (Cpus::whole(4), Bytes(36 << 30)));
}

#[test]
fn load_from_disk_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("20-late.yaml"), "defaults:\n  cpu: 3\n").unwrap();
    std::fs::write(d.join("10-base.yml"), REFERENCE).unwrap();
    std::fs::write(d.join(".hidden.yaml"), "garbage: [").unwrap();
    std::fs::write(d.join("README"), "not yaml: [").unwrap();
    std::fs::write(d.join("old.yaml.dpkg-old"), "garbage: [").unwrap();
    let p = Policy::load(d).unwrap();
    assert_eq!(p.files().len(), 2);
    assert_eq!(
        p.for_user(&user(2000, "b", &[])).default.cpu,
        Cpus::whole(3)
    );
    let p = Policy::load(&d.join("10-base.yml")).unwrap();
    assert_eq!(
        p.for_user(&user(2000, "b", &[])).default.cpu,
        Cpus::whole(2)
    );

    let e = Policy::load(&d.join("missing")).unwrap_err().to_string();
    assert!(
        e.contains("missing: cannot read policy") && e.contains("create it"),
        "{e}"
    );
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = Policy::load(&empty).unwrap_err().to_string();
    assert!(e.contains("no policy files"), "{e}");
    std::fs::write(d.join("30-bad.yaml"), "defaults:\n  cpu: 0\n").unwrap();
    let e = Policy::load(d).unwrap_err().to_string();
    assert!(e.contains("30-bad.yaml:2: defaults.cpu"), "{e}");
}

#[test]
fn summary_mentions_every_part() {
    let p = one("defaults: {cpu: 2, mem: 8G, mem_high: 90%}\nmax: {cpu: 8, mem: 32G}\ngroups:\n  students:\n    defaults: {cpu: 1}\nleases: {max_duration: 8h}\n").unwrap();
    let s = p.summary().join("\n");
    assert!(
        s.contains("defaults: cpu 2, mem 8G (soft 7.2G), tasks 4096"),
        "{s}"
    );
    assert_eq!(
        p.for_user(&user(2000, "u", &[])).default.mem_high,
        Some(Bytes(7372 << 20))
    );
    assert!(s.contains("group students: defaults cpu 1"), "{s}");
    assert!(s.contains("leases:   at most 8h"), "{s}");
    assert_eq!(p.max_lease(), Some(Duration::from_secs(8 * 3600)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn loader_never_panics(text in "\\PC{0,200}") {
            let _ = one(&text);
        }

        #[test]
        fn loader_never_panics_on_near_yaml(
            cpu in "(-?[0-9]{0,6}(\\.[0-9]{0,4})?|two|~|\\[1\\]|\\{\\}|\\.nan|\\.inf)",
            mem in "([0-9.]{0,8}[KMGTXBkmgi%]{0,3}|~|-1)",
            key in "(defaults|max|groups|users|exempt|capacity|leases|bogus)",
        ) {
            let text = format!("{key}:\n  cpu: {cpu}\n  mem: {mem}\nmax:\n  cpu: {cpu}\n");
            if let Err(e) = one(&text) {
                for err in &e.0 {
                    prop_assert!(err.origin.file.as_ref() == "p.yaml");
                }
            }
        }

        #[test]
        fn valid_policies_keep_defaults_within_max(d in 1u64..64, m in 1u64..64, g in 1u64..64) {
            let text = format!(
                "defaults: {{cpu: {d}, mem: {d}G}}\nmax: {{cpu: {m}, mem: {m}G}}\ngroups:\n  g:\n    defaults: {{cpu: {g}}}\n"
            );
            if let Ok(p) = one(&text) {
                for groups in [vec![], vec!["g"]] {
                    let u = p.for_user(&user(5000, "u", &groups));
                    prop_assert!(u.default.cpu <= u.max.cpu);
                    prop_assert!(u.default.mem <= u.max.mem);
                }
            } else {
                prop_assert!(d > m || g > m);
            }
        }
    }
}

#[test]
fn notices_default_on_and_can_be_turned_off() {
    let p = one("defaults: {cpu: 2, mem: 8G}\n").unwrap();
    assert_eq!(p.notices(), crate::NoticeDefaults::default());
    assert!(p.notices().terminal && p.notices().login_line);
    assert!(!p.summary().join("\n").contains("notices"));
    let p = one("defaults: {cpu: 2, mem: 8G}\nnotices: {terminal: false}\n").unwrap();
    assert!(!p.notices().terminal);
    assert!(p.notices().login_line);
    assert!(
        p.summary()
            .join("\n")
            .contains("notices:  terminal off, login line on")
    );
    // a later file overrides one field of an earlier one
    let p = load(&[
        (
            "a.yaml",
            "defaults: {cpu: 2, mem: 8G}\nnotices: {terminal: false}\n",
        ),
        ("b.yaml", "notices: {login_line: false}\n"),
    ])
    .unwrap();
    assert_eq!(
        (p.notices().terminal, p.notices().login_line),
        (false, false)
    );
    let e = errors("defaults: {cpu: 2, mem: 8G}\nnotices:\n  terminal: maybe\n  login: no\n");
    assert!(
        e.iter()
            .any(|e| e.contains(":3: notices.terminal: `maybe` is not true or false")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains(":4:") && e.contains("login")),
        "{e:?}"
    );
}

#[test]
fn group_rules_are_known() {
    let p = |t: &str| Policy::from_sources(&[("p.yaml".into(), t.into())]).unwrap();
    let base = "defaults: {cpu: 2, mem: 8G}\nmax: {cpu: 8, mem: 32G}\n";
    assert!(!p(base).uses_groups());
    assert!(!p(&format!("{base}exempt: {{users: [bob]}}\n")).uses_groups());
    assert!(p(&format!("{base}exempt: {{groups: [admins]}}\n")).uses_groups());
    assert!(
        p(&format!(
            "{base}groups:\n  students:\n    defaults: {{cpu: 1}}\n"
        ))
        .uses_groups()
    );
}

#[test]
fn an_unknown_key_does_not_hide_the_other_errors() {
    // the README's promise: three mistakes, three errors, each with file,
    // line and field (serde's deny_unknown_fields stopped at the first)
    let e = one("defaults:\n  cpu: 0\n  memroy: 8G\n  tasks: -1\n").unwrap_err();
    let got: Vec<(u32, &str)> =
        e.0.iter()
            .map(|e| (e.origin.line, e.field.as_str()))
            .collect();
    assert_eq!(
        got,
        vec![
            (2, "defaults.cpu"),
            (3, "defaults.memroy"),
            (4, "defaults.tasks")
        ],
        "{e}"
    );
    assert!(e.0.iter().all(|e| e.origin.file.as_ref() == "p.yaml"));
    assert!(
        e.0[1].message.contains("unknown field `memroy`") && e.0[1].message.contains("`mem`?"),
        "{e}"
    );
}

#[test]
fn every_level_reports_its_unknown_keys_and_bad_shapes_together() {
    let text = "\
defaults: {cpu: 2, mem: 8G, cpus: 3}
max: {cpu: [8], mem: 32G}
exempt: {users: bob, uid: 5}
capacity: {overcommit: {cpu: 2, disk: 3}}
groups:
  students:
    defaults: {cpu: 1}
    maximum: {cpu: 2}
leases: {max_duraton: 8h}
extra: 1
";
    let e = one(text).unwrap_err();
    let got: Vec<String> =
        e.0.iter()
            .map(|e| format!("{}:{}", e.origin.line, e.field))
            .collect();
    assert_eq!(
        got,
        vec![
            "1:defaults.cpus",
            "2:max.cpu",
            "3:exempt.users",
            "3:exempt.uid",
            "4:capacity.overcommit.disk",
            "8:groups.students.maximum",
            "9:leases.max_duraton",
            "10:extra",
        ],
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_reported_with_the_other_errors() {
    let e = errors("defaults:\n  cpu: 2\n  cpu: 3\n  mem: 8X\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:3: defaults.cpu: duplicate mapping key"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:4: defaults.mem: `8X` has an unknown unit"),
        "{e:?}"
    );
}

#[test]
fn a_tab_in_the_indentation_is_reported_at_its_own_line() {
    // the parser notices the tab at the end of line 3; the admin needs line 4
    let e = errors("defaults:\n  cpu: 2\n  mem: 8G\n\ttasks: 5\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:4: defaults.tasks: a tab in the indentation"),
        "{e:?}"
    );
    let e = errors("defaults:\n  cpu: 2\n  mem: 8G\n  \ttasks: 5\n");
    assert!(e[0].starts_with("p.yaml:4: "), "{e:?}");
    // a tab after the colon is fine in YAML
    assert!(one("defaults:\n  cpu:\t2\n  mem: 8G\n").is_ok());
}

const GROUPS: &str = "\
defaults: {cpu: 2, mem: 8G}
max: {cpu: 8, mem: 32G}
groups:
  students:
    defaults: {cpu: 1, mem: 4G}
    max: {cpu: 2}
  staff:
    defaults: {cpu: 2}
    max: {cpu: 4, tasks: 8000}
  gpu:
    max: {cpu: 4}
users:
  alice:
    max: {tasks: 9000}
";

#[test]
fn a_user_in_several_groups_sees_which_group_gave_which_field() {
    let p = one(GROUPS).unwrap();
    let ann = p.for_user(&user(1001, "ann", &["ann", "students", "staff"]));
    assert_eq!(ann.default.cpu, Cpus::whole(2));
    assert_eq!(ann.default.mem, Bytes(4 << 30));
    assert_eq!(
        ann.sources,
        vec![
            "defaults",
            "group students (gives defaults.mem 4G; defaults.cpu 1, max.cpu 2 lost to group staff, later in the policy)",
            "group staff (gives defaults.cpu 2, max.cpu 4, max.tasks 8000)",
        ]
    );
    let alice = p.for_user(&user(1002, "alice", &["students", "staff"]));
    assert_eq!(
        alice.sources[2],
        "group staff (gives defaults.cpu 2, max.cpu 4; max.tasks 8000 lost to user alice, which applies last)"
    );
    assert_eq!(alice.sources[3], "user alice");
    // one group: the short form, as before
    let carl = p.for_user(&user(1003, "carl", &["students"]));
    assert_eq!(carl.sources, vec!["defaults", "group students"]);

    let f = p.explain(&user(1001, "ann", &["students", "staff"]));
    let cpu = f.iter().find(|f| f.field == "defaults.cpu").unwrap();
    assert_eq!(
        (cpu.winner.source.as_str(), cpu.winner.value.as_str()),
        ("group staff", "2")
    );
    assert_eq!(cpu.winner.origin.line, 8);
    assert_eq!(cpu.overridden.len(), 1);
    assert_eq!(cpu.overridden[0].source, "group students");
    assert_eq!(cpu.overridden[0].origin.line, 5);
    let mem = f.iter().find(|f| f.field == "defaults.mem").unwrap();
    assert_eq!(mem.winner.source, "group students");
    let tasks = f.iter().find(|f| f.field == "defaults.tasks");
    assert!(tasks.is_none(), "nothing sets defaults.tasks: {tasks:?}");
}

#[test]
fn check_warns_when_groups_conflict_and_says_who_wins_and_why() {
    let p = one(GROUPS).unwrap();
    let members = |g: &str| -> Vec<String> {
        let m: &[&str] = match g {
            "students" => &["ann", "carl"],
            "staff" => &["ann", "bob"],
            "gpu" => &["bob"],
            _ => &[],
        };
        m.iter().map(|s| s.to_string()).collect()
    };
    let out = p.overlaps(members);
    let warnings: Vec<&String> = out.iter().filter(|l| l.starts_with("warning:")).collect();
    // defaults.cpu (1 vs 2) and max.cpu (2 vs 4 vs 4); not max.tasks (one group)
    assert_eq!(warnings.len(), 2, "{out:#?}");
    assert!(
        warnings[0].starts_with(
            "warning: groups students (1 at p.yaml:5) and staff (2 at p.yaml:8) set defaults.cpu to different values"
        ),
        "{out:#?}"
    );
    assert!(
        warnings[0].contains("gets the last one's, as groups apply in policy order")
            && warnings[0].ends_with(": ann gets 2 from group staff"),
        "{out:#?}"
    );
    // bob is in staff and gpu, which agree on max.cpu 4: not named there
    assert!(
        warnings[1].contains("set max.cpu")
            && warnings[1].ends_with(": ann gets 4 from group staff"),
        "{out:#?}"
    );
    let users: Vec<&String> = out.iter().filter(|l| l.starts_with("user ")).collect();
    assert_eq!(
        users,
        vec![
            "user ann (groups students, staff): defaults.cpu 2 from staff (not 1 from students), defaults.mem 4G from students, max.cpu 4 from staff (not 2 from students), max.tasks 8000 from staff",
            "user bob (groups staff, gpu): defaults.cpu 2 from staff, max.cpu 4 from gpu, max.tasks 8000 from staff",
        ]
    );
    // without a group database the conflict is still a warning
    let out = p.overlaps(|_| Vec::new());
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(
        out[0].ends_with("no user is in more than one of them now"),
        "{out:#?}"
    );
    // groups that agree raise nothing
    let agree = one("defaults: {cpu: 2, mem: 8G}\ngroups:\n  a: {defaults: {cpu: 1}}\n  b: {defaults: {cpu: 1}}\n").unwrap();
    assert!(
        agree
            .overlaps(|_| vec!["x".to_string()])
            .iter()
            .all(|l| !l.starts_with("warning")),
    );
}
