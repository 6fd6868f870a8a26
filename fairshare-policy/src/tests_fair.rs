//! The fair-share keys of issue 15: weights, guarantees, swap, IO limits,
//! tiers, bursting and capacity.mem_low.

use std::time::Duration;

use fairshare_proto::units::{Bandwidth, Bytes, Ceiling, Cpus, Iops, Weight};

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

fn w(v: u64) -> Weight {
    Weight::new(v).unwrap()
}

fn bw(s: &str) -> Option<Ceiling<Bandwidth>> {
    Some(s.parse().unwrap())
}

fn iops(v: u64) -> Option<Ceiling<Iops>> {
    Some(Ceiling::Limit(Iops::new(v).unwrap()))
}

fn home() -> IoTarget {
    IoTarget::Path("/home".into())
}

#[test]
fn every_key_at_the_top_level() {
    let p = one("\
defaults:
  cpu: 1
  mem: 4G
  weight: 200
  io_weight: 50
  mem_low: 1G
  swap: 0
  io:
    /home/: {read_bw: 50M, write_bw: 20MB/s, read_iops: 1000, write_iops: 500}
    /dev/sdb: {write_bw: max}
max:
  cpu: 2
  mem: 8G
  weight: 400
  mem_low: 2G
  swap: 1G
  io:
    /home: {write_bw: 100M}
")
    .unwrap();
    let u = p.for_user(&user(1001, "ann", &[]));
    let d = &u.fair_default;
    assert_eq!(d.weight, Some(w(200)));
    assert_eq!(d.io_weight, Some(w(50)));
    assert_eq!(d.mem_low, Some(Bytes(1 << 30)));
    assert_eq!(d.swap, Some(Ceiling::Limit(Bytes(0))));
    let h = &d.io[&home()];
    assert_eq!(h.read_bw, bw("50M"));
    assert_eq!(h.write_bw, bw("20M"));
    assert_eq!(h.read_iops, iops(1000));
    assert_eq!(h.write_iops, iops(500));
    assert_eq!(
        d.io[&IoTarget::Device("/dev/sdb".into())].write_bw,
        Some(Ceiling::Unlimited)
    );
    assert!(!d.burst, "bursting is off unless enabled");
    let m = &u.fair_max;
    assert_eq!(m.weight, Some(w(400)));
    // max leaves io_weight out: it follows the default, as cpu does
    assert_eq!(m.io_weight, Some(w(50)));
    assert_eq!(m.mem_low, Some(Bytes(2 << 30)));
    assert_eq!(m.swap, Some(Ceiling::Limit(Bytes(1 << 30))));
    assert_eq!(m.io[&home()].write_bw, bw("100M"));
    assert_eq!(m.io[&home()].read_bw, bw("50M"));
    // a policy without these keys leaves everything to systemd
    let plain = one("defaults: {cpu: 1, mem: 1G}\n").unwrap();
    let f = plain.for_user(&user(1001, "ann", &[])).fair_default;
    assert_eq!(f, FairShare::default());
}

#[test]
fn mem_low_as_a_share_of_mem_follows_resizes_and_never_exceeds_mem() {
    let p = one("defaults: {cpu: 1, mem: 4G, mem_low: 25%}\nmax: {cpu: 2, mem: 16G}\n").unwrap();
    let u = p.for_user(&user(1001, "ann", &[]));
    assert_eq!(u.fair_default.mem_low, Some(Bytes(1 << 30)));
    assert_eq!(u.fair(Bytes(8 << 30)).mem_low, Some(Bytes(2 << 30)));
    let p = one("defaults: {cpu: 1, mem: 4G, mem_low: 3G}\nmax: {cpu: 2, mem: 16G}\n").unwrap();
    let u = p.for_user(&user(1001, "ann", &[]));
    assert_eq!(u.fair(Bytes(8 << 30)).mem_low, Some(Bytes(3 << 30)));
    // a resize below the guarantee lowers it to the new hard limit
    assert_eq!(u.fair(Bytes(2 << 30)).mem_low, Some(Bytes(2 << 30)));
}

const TIERS: &str = "\
defaults: {cpu: 1, mem: 1G, weight: 100, io: {/home: {write_bw: 50M}}}
max: {cpu: 2, mem: 4G}
tiers:
  batch:
    defaults: {cpu: 0.5, weight: 50, io: {/home: {write_bw: 20M, read_iops: 500}}}
    max: {cpu: 1}
  interactive:
    defaults: {cpu: 2, mem: 2G, weight: 200, mem_low: 512M}
    max: {cpu: 4}
groups:
  students: {tier: batch, defaults: {mem: 512M}}
  staff: {tier: interactive}
  gpu: {defaults: {weight: 300}}
users:
  alice: {tier: interactive, defaults: {cpu: 3}}
";

#[test]
fn tiers_apply_after_defaults_and_before_groups_and_users() {
    let p = one(TIERS).unwrap();
    // a student: batch, with the group's own mem on top
    let s = p.for_user(&user(1003, "stu", &["students"]));
    assert_eq!(s.default.cpu, Cpus::from_millis(500));
    assert_eq!(s.default.mem, Bytes(512 << 20));
    assert_eq!(s.max.cpu, Cpus::whole(1));
    assert_eq!(s.fair_default.weight, Some(w(50)));
    let io = &s.fair_default.io[&home()];
    assert_eq!(io.write_bw, bw("20M"));
    assert_eq!(io.read_iops, iops(500));
    assert_eq!(s.tier, Some(("batch".into(), "group students".into())));
    assert_eq!(
        s.sources,
        vec![
            "defaults",
            "tier batch (from group students)",
            "group students"
        ]
    );
    // a user's own values beat their tier; a group's own weight beats it too
    let a = p.for_user(&user(1001, "alice", &["students", "gpu"]));
    assert_eq!(a.tier, Some(("interactive".into(), "user alice".into())));
    assert_eq!(a.default.cpu, Cpus::whole(3));
    assert_eq!(a.max.cpu, Cpus::whole(4));
    assert_eq!(
        a.default.mem,
        Bytes(512 << 20),
        "students' own mem beats the tier"
    );
    assert_eq!(
        a.fair_default.weight,
        Some(w(300)),
        "gpu's own weight beats the tier"
    );
    // mem_low 512M from the tier is at most the student's 512M mem
    assert_eq!(a.fair_default.mem_low, Some(Bytes(512 << 20)));
    // in two tiered groups: the tier of the group later in the policy,
    // whatever order the group database lists them in
    for groups in [["staff", "students"], ["students", "staff"]] {
        let b = p.for_user(&user(1005, "bob", &groups));
        assert_eq!(b.tier, Some(("interactive".into(), "group staff".into())));
    }
    // nobody's tier: the plain defaults
    let n = p.for_user(&user(1007, "nina", &[]));
    assert_eq!(n.tier, None);
    assert_eq!(n.fair_default.weight, Some(w(100)));
    // explain names the tier as the source of what it gave
    let f = p.explain(&user(1003, "stu", &["students"]));
    let weight = f.iter().find(|f| f.field == "defaults.weight").unwrap();
    assert_eq!(weight.winner.source, "tier batch");
    assert_eq!(weight.winner.origin.line, 5);
    let io = f
        .iter()
        .find(|f| f.field == "defaults.io./home.write_bw")
        .unwrap();
    assert_eq!(
        (io.winner.source.as_str(), io.winner.value.as_str()),
        ("tier batch", "20MB/s")
    );
    let tier = f.iter().find(|f| f.field == "tier").unwrap();
    assert_eq!(
        (tier.winner.source.as_str(), tier.winner.value.as_str()),
        ("group students", "batch")
    );
}

#[test]
fn groups_naming_different_tiers_are_warned_about() {
    let p = one(TIERS).unwrap();
    let members = |g: &str| -> Vec<String> {
        match g {
            "students" | "staff" => vec!["carl".to_string()],
            _ => vec![],
        }
    };
    let out = p.overlaps(members);
    assert!(
        out.iter().any(|l| l.starts_with(
            "warning: groups students (batch at p.yaml:11) and staff (interactive at p.yaml:12) set tier to different values"
        ) && l.ends_with("carl gets interactive from group staff")),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("user carl (groups students, staff): ")
                && l.contains("tier interactive from staff (not batch from students)")),
        "{out:#?}"
    );
}

#[test]
fn tiers_merge_across_files_and_may_be_named_before_they_are_defined() {
    let p = load(&[
        (
            "00.yaml",
            "defaults: {cpu: 1, mem: 1G}\ngroups: {students: {tier: batch}}\n",
        ),
        ("10.yaml", "tiers: {batch: {defaults: {weight: 50}}}\n"),
        ("20.yaml", "tiers: {batch: {defaults: {io_weight: 20}}}\n"),
    ])
    .unwrap();
    let s = p.for_user(&user(1003, "stu", &["students"]));
    assert_eq!(s.fair_default.weight, Some(w(50)));
    assert_eq!(s.fair_default.io_weight, Some(w(20)));
    assert_eq!(p.tier_names().collect::<Vec<_>>(), vec!["batch"]);
}

#[test]
fn tier_mistakes_name_file_line_and_field() {
    let e = errors(
        "defaults: {cpu: 1, mem: 1G}\ntiers: {batch: {}}\ngroups:\n  students: {tier: bacth}\n",
    );
    assert_eq!(
        e,
        vec!["p.yaml:4: groups.students.tier: unknown tier `bacth`; the policy's tiers are batch"]
    );
    let e = errors("defaults: {cpu: 1, mem: 1G}\nusers:\n  ann: {tier: gold}\n");
    assert!(
        e[0].starts_with(
            "p.yaml:3: users.ann.tier: unknown tier `gold`; the policy has no `tiers:`"
        ),
        "{e:?}"
    );
    // a tier cannot be in a tier
    let e = errors("defaults: {cpu: 1, mem: 1G}\ntiers:\n  a: {tier: b}\n  b: {}\n");
    assert!(
        e[0].starts_with(
            "p.yaml:3: tiers.a.tier: unknown field `tier`, expected one of defaults, max"
        ),
        "{e:?}"
    );
    // a tier's own defaults must fit within its max, blamed on the tier
    let e = errors(
        "defaults: {cpu: 1, mem: 1G}\ntiers:\n  big:\n    defaults: {weight: 500}\n    max: {weight: 300}\n",
    );
    assert_eq!(
        e,
        vec![
            "p.yaml:4: tiers.big.defaults.weight: default weight 500 is above max weight 300 (defaults at p.yaml:4, max at p.yaml:5); raise max.weight or lower defaults.weight"
        ]
    );
    // a group's own value is checked on top of its tier
    let e = errors(
        "defaults: {cpu: 1, mem: 1G}\ntiers: {t: {max: {cpu: 2}}}\ngroups:\n  g: {tier: t, defaults: {cpu: 3}}\n",
    );
    assert!(
        e[0].starts_with("p.yaml:4: groups.g.defaults.cpu: default cpu 3 is above max cpu 2"),
        "{e:?}"
    );
}

#[test]
fn bad_fair_values_name_file_line_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            "defaults: {cpu: 1, mem: 1G, weight: 0}",
            "p.yaml:1: defaults.weight: `0` must be greater than zero",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, weight: 10001}",
            "p.yaml:1: defaults.weight: `10001` is too large (at most 10000)",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io_weight: 1.5}",
            "p.yaml:1: defaults.io_weight: `1.5` must be a whole number",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, mem_low: 150%}",
            "p.yaml:1: defaults.mem_low: `150%` must be a percentage above 0% and at most 100%, e.g. 25%",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, mem_low: 2G}",
            "p.yaml:1: defaults.mem_low: guarantee 2G (p.yaml:1) is above the hard limit mem 1G (p.yaml:1)",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, swap: -1G}",
            "p.yaml:1: defaults.swap: `-1G` must be greater than zero",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, burst: maybe}",
            "p.yaml:1: defaults.burst: `maybe` is not true or false",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {home: {read_bw: 1M}}}",
            "p.yaml:1: defaults.io.home: `home` is not an absolute path",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: {read: 1M}}}",
            "p.yaml:1: defaults.io./home.read: unknown field `read`, expected one of read_bw, write_bw, read_iops, write_iops; did you mean `read_bw`?",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: {write_bw: 20}}}",
            "p.yaml:1: defaults.io./home.write_bw: `20` bytes a second is too small for a rate (at least 1K); did you forget the unit, as in 50M?",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: {write_bw: 20X}}}",
            "p.yaml:1: defaults.io./home.write_bw: `20X` has an unknown unit `X`; use K, M, G or T (powers of 1000",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: {read_iops: 0}}}",
            "p.yaml:1: defaults.io./home.read_iops: `0` must be greater than zero",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: 5M}}",
            "p.yaml:1: defaults.io./home: must be a mapping of read_bw, write_bw, read_iops and write_iops, not a string",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nmax: {burst: true}",
            "p.yaml:2: max.burst: whether a user may burst is set under `defaults`; remove it from `max`",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, weight: 300}\nmax: {weight: 200}",
            "p.yaml:1: defaults.weight: default weight 300 is above max weight 200",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, swap: 2G}\nmax: {swap: 1G}",
            "p.yaml:1: defaults.swap: default swap 2G is above max swap 1G",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, swap: max}\nmax: {swap: 1G}",
            "p.yaml:1: defaults.swap: default swap max is above max swap 1G",
        ),
        (
            "defaults: {cpu: 1, mem: 1G, io: {/home: {write_bw: 50M}}}\nmax: {io: {/home: {write_bw: 20M}}}",
            "p.yaml:1: defaults.io./home.write_bw: default io./home.write_bw 50MB/s is above max io./home.write_bw 20MB/s",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nmax: {io: {/home: {write_bw: 20M}}}",
            "p.yaml:2: max.io./home.write_bw: max io./home.write_bw 20MB/s is below the default (no limit, as defaults.io./home.write_bw is not set); set defaults.io./home.write_bw too, at most 20MB/s",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nmax: {swap: 1G}",
            "p.yaml:2: max.swap: max swap 1G is below the default (no limit",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nmax: {weight: 50}",
            "p.yaml:2: max.weight: max weight 50 is below the default (100, systemd's",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\ngroups: {g: {max: {io_weight: 20}}}",
            "p.yaml:2: groups.g.max.io_weight: max io_weight 20 is below the default (100, systemd's",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {enabled: 1}",
            "p.yaml:2: bursting.enabled: `1` is not true or false",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {busy_threshold: 0.9}",
            "p.yaml:2: bursting.busy_threshold: `0.9` must be a percentage of the host's CPUs above 0% and at most 100%, e.g. 90%",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {idle_threshold: 95%}",
            "p.yaml:2: bursting.idle_threshold: idle_threshold 95% must be below busy_threshold 90%",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {interval: 2m}",
            "p.yaml:2: bursting.interval: `2m` must be between 1s and 60s",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {interval: 5s, busy_for: 2s}",
            "p.yaml:2: bursting.busy_for: 2s is shorter than the sampling interval 5s",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {up_to: all}",
            "p.yaml:2: bursting.up_to: `all` is not `max`",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {contention: fair}",
            "p.yaml:2: bursting.contention: `fair` is not `share`",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\nbursting: {enable: true}",
            "p.yaml:2: bursting.enable: unknown field `enable`, expected one of enabled, busy_threshold",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\ncapacity: {mem_low: {total: 50%, when_full: refuse}}",
            "p.yaml:2: capacity.mem_low.when_full: `refuse` is not `scale`",
        ),
        (
            "defaults: {cpu: 1, mem: 1G}\ncapacity: {mem_low: 120%}",
            "p.yaml:2: capacity.mem_low: `120%` must be a percentage",
        ),
    ];
    for (text, want) in cases {
        let e = errors(text);
        assert!(
            e.iter().any(|e| e.starts_with(want)),
            "{text}:\n  want {want}\n  got  {e:#?}"
        );
    }
    // every mistake at once
    let e =
        errors("defaults: {cpu: 1, mem: 1G, weight: 0, io_weight: 0}\nbursting: {enabled: 1}\n");
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn bursting_options_and_their_defaults() {
    let p = one("defaults: {cpu: 1, mem: 1G}\n").unwrap();
    assert_eq!(*p.bursting(), Bursting::default());
    assert!(!p.bursting().enabled);
    let p = load(&[
        ("00.yaml", "defaults: {cpu: 0.5, mem: 1G}\nbursting: {enabled: true, busy_for: 5s}\n"),
        ("10.yaml", "bursting: {busy_threshold: 80%, idle_threshold: 50%, idle_for: 20s, interval: 2s, up_to: host, contention: allocation}\ngroups: {batch: {defaults: {burst: false}}}\n"),
    ])
    .unwrap();
    let b = p.bursting();
    assert!(b.enabled);
    assert_eq!(b.busy_threshold, 0.8);
    assert_eq!(b.idle_threshold, 0.5);
    assert_eq!(b.busy_for, Duration::from_secs(5));
    assert_eq!(b.idle_for, Duration::from_secs(20));
    assert_eq!(b.interval, Duration::from_secs(2));
    assert_eq!(b.up_to, BurstCeiling::Host);
    assert_eq!(b.contention, Contention::Allocation);
    assert!(p.for_user(&user(1001, "ann", &[])).fair_default.burst);
    assert!(
        !p.for_user(&user(1002, "bob", &["batch"]))
            .fair_default
            .burst
    );
    let s = p.summary_on(None).join("\n");
    assert!(s.contains("bursting: on, up to every CPU of the host; back to allocations after 5s busy (above 80% of the CPUs"), "{s}");
}

#[test]
fn guarantees_capacity_and_what_happens_when_full() {
    let host = HostResources {
        cpus: Cpus::whole(2),
        mem: Bytes(16 << 30),
    };
    let p = one("defaults: {cpu: 1, mem: 1G, mem_low: 512M}\n").unwrap();
    assert_eq!(p.guarantees().when_full, WhenFull::Scale);
    assert_eq!(
        p.mem_low_capacity(host),
        Bytes(8 << 30),
        "half the host by default"
    );
    let p = one("defaults: {cpu: 1, mem: 1G}\ncapacity: {mem: 64G, mem_low: 25%}\n").unwrap();
    assert_eq!(
        p.mem_low_capacity(host),
        Bytes(16 << 30),
        "a share of capacity.mem"
    );
    let p = one(
        "defaults: {cpu: 1, mem: 1G}\ncapacity: {mem_low: {total: 6G, when_full: first_come}}\n",
    )
    .unwrap();
    assert_eq!(p.mem_low_capacity(host), Bytes(6 << 30));
    assert_eq!(p.guarantees().when_full, WhenFull::FirstCome);
    // never more than the memory there is
    let p = one("defaults: {cpu: 1, mem: 1G}\ncapacity: {mem_low: 1T}\n").unwrap();
    assert_eq!(p.mem_low_capacity(host), Bytes(16 << 30));
    let s = one("defaults: {cpu: 1, mem: 1G, mem_low: 512M}\ncapacity: {mem_low: {total: 6G, when_full: first_come}}\n")
        .unwrap()
        .summary_on(None)
        .join("\n");
    assert!(
        s.contains(
            "guarantees: mem_low at most 6G in total; when more is wanted: first come, first served"
        ),
        "{s}"
    );
}

#[test]
fn check_says_what_a_layout_cannot_enforce() {
    let text = "\
defaults:
  cpu: 1
  mem: 4G
  weight: 200
  io_weight: 200
  mem_low: 1G
  swap: 0
  io:
    /home: {write_bw: 20M, write_iops: 500}
groups:
  staff:
    max: {swap: 2G}
";
    let p = one(text).unwrap();
    let v2 = p.summary_on(Some(CgroupLayout::Unified)).join("\n");
    assert!(v2.contains("defaults: weight 200, io_weight 200, mem_low 1G, swap 0 (none), io /home write_bw 20MB/s, write_iops 500"), "{v2}");
    assert!(!v2.contains("warning:"), "v2 enforces every key: {v2}");
    assert!(
        v2.contains("note: io_weight takes effect only on disks using the BFQ scheduler"),
        "{v2}"
    );
    let v1 = p.summary_on(Some(CgroupLayout::Hybrid));
    let warnings: Vec<&String> = v1.iter().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{v1:#?}");
    assert_eq!(
        warnings[0],
        "warning: mem_low has no effect on cgroup v1: there is no memory.low (systemd sets MemoryLow but no file takes it); boot with systemd.unified_cgroup_hierarchy=1 for memory guarantees; this host uses hybrid cgroups (v1 controllers); set at p.yaml:6 (defaults.mem_low)"
    );
    assert!(
        warnings[1].starts_with("warning: swap has no effect on cgroup v1")
            && warnings[1]
                .ends_with("set at p.yaml:7 (defaults.swap), p.yaml:12 (groups.staff.max.swap)"),
        "{v1:#?}"
    );
    assert!(
        warnings[2].starts_with("warning: read_iops, write_iops has no effect on cgroup v1")
            && warnings[2].ends_with("set at p.yaml:9 (defaults.io./home.write_iops)"),
        "{v1:#?}"
    );
    // the same, one by one, for the daemon
    let each = p.unenforced(CgroupLayout::Legacy);
    assert_eq!(each.len(), 4, "{each:#?}");
    assert_eq!(
        (each[0].field.as_str(), each[0].origin.line),
        ("defaults.mem_low", 6)
    );
    // lifting a guarantee or a limit is nothing to enforce
    let lift = one(
        "defaults: {cpu: 1, mem: 1G, mem_low: 0, swap: max, io: {/home: {write_iops: max}}}
",
    )
    .unwrap();
    assert!(lift.unenforced(CgroupLayout::Hybrid).is_empty());
    // weights and bandwidth limits work on v1
    assert!(
        !warnings
            .iter()
            .any(|l| l.contains("weight") || l.contains("write_bw")),
        "{v1:#?}"
    );
    // a policy without such keys says nothing about layouts
    let plain = one("defaults: {cpu: 1, mem: 1G}\n").unwrap();
    assert_eq!(
        plain.summary_on(Some(CgroupLayout::Legacy)),
        plain.summary_on(None)
    );
}

#[test]
fn check_says_which_disk_each_io_target_is_on() {
    let p = one("\
defaults:
  cpu: 1
  mem: 1G
  io:
    /home: {write_bw: 20M}
    /tmp: {read_iops: 100}
groups:
  g:
    defaults:
      io:
        /scratch: {write_bw: 5M}
")
    .unwrap();
    let vda = crate::blockdev::Disk {
        major: 254,
        minor: 0,
        name: "vda".into(),
    };
    let out = p.io_findings(|t| match t.to_string().as_str() {
        "/home" | "/tmp" => Ok(vda.clone()),
        other => Err(format!("{other} is on device 0:45, which is not a disk")),
    });
    assert_eq!(
        out,
        vec![
            "io /home: on disk vda (254:0)",
            "io /tmp: on disk vda (254:0)",
            "warning: p.yaml:11: io /scratch: /scratch is on device 0:45, which is not a disk; the limits for /scratch are not applied on this host",
            "note: io /home, /tmp are all on disk vda (254:0): a user's limits for them are merged, the lower of each kind applying to the whole disk",
        ]
    );
    // with the real resolver: /proc has no disk
    let p = one("defaults: {cpu: 1, mem: 1G, io: {/proc: {write_bw: 1M}}}\n").unwrap();
    let s = p.summary().join("\n");
    assert!(
        s.contains("warning: p.yaml:1: io /proc: /proc is on device"),
        "{s}"
    );
}

#[test]
fn five_tiers_example_loads_as_is() {
    let text = include_str!("../../docs/examples/tiers.yaml");
    let p = load(&[("docs/examples/tiers.yaml", text)]).unwrap();
    assert_eq!(
        p.tier_names().collect::<Vec<_>>(),
        vec!["critical", "high", "normal", "low", "scavenger"]
    );
    // (group, weight, cpu millis, mem, guarantee, bandwidth, iops), as in issue 15
    let rows: &[(&str, u64, u64, u64, u64, &str, u64)] = &[
        ("admins", 200, 2000, 4 << 30, 2 << 30, "500M", 10_000),
        ("staff", 150, 1500, 2 << 30, 1 << 30, "200M", 5_000),
        ("", 100, 1000, 1 << 30, 256 << 20, "50M", 1_000),
        ("students", 50, 500, 512 << 20, 0, "20M", 500),
        ("guests", 12, 250, 256 << 20, 0, "5M", 100),
    ];
    for (group, weight, cpu, mem, low, rate, ops) in rows {
        let u = p.for_user(&user(2000, "someone", &[group]));
        assert_eq!(u.fair_default.weight, Some(w(*weight)), "{group}");
        assert_eq!(u.fair_default.io_weight, Some(w(*weight)), "{group}");
        assert_eq!(u.default.cpu, Cpus::from_millis(*cpu), "{group}");
        assert_eq!(u.default.mem, Bytes(*mem), "{group}");
        assert_eq!(u.fair_default.mem_low, Some(Bytes(*low)), "{group}");
        let io = &u.fair_default.io[&home()];
        assert_eq!((io.read_bw, io.write_bw), (bw(rate), bw(rate)), "{group}");
        assert_eq!(
            (io.read_iops, io.write_iops),
            (iops(*ops), iops(*ops)),
            "{group}"
        );
        assert!(u.fair_default.burst, "{group}");
    }
    let backup = p.for_user(&user(2001, "backup", &[]));
    assert_eq!(
        backup.tier,
        Some(("scavenger".into(), "user backup".into()))
    );
    assert_eq!(backup.fair_default.swap, Some(Ceiling::Limit(Bytes(0))));
    assert!(p.bursting().enabled);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn weights_in_range_load_and_out_of_range_are_refused(d in 0u64..12_000, m in 0u64..12_000) {
            let text = format!("defaults: {{cpu: 1, mem: 1G, weight: {d}}}\nmax: {{weight: {m}}}\n");
            let ok = (1..=10_000).contains(&d) && (1..=10_000).contains(&m) && d <= m;
            match one(&text) {
                Ok(p) => {
                    prop_assert!(ok);
                    let u = p.for_user(&user(1001, "ann", &[]));
                    prop_assert_eq!(u.fair_default.weight, Weight::new(d));
                    prop_assert_eq!(u.fair_max.weight, Weight::new(m));
                }
                Err(e) => {
                    prop_assert!(!ok);
                    let shown = e.to_string();
                    prop_assert!(shown.starts_with("p.yaml:"), "{}", shown);
                }
            }
        }

        #[test]
        fn fair_keys_with_any_value_never_panic(
            key in prop::sample::select(vec!["weight", "io_weight", "mem_low", "swap", "burst", "io"]),
            value in "\\PC{0,16}",
        ) {
            let v = format!("'{}'", value.replace('\'', "''"));
            let text = format!("defaults: {{cpu: 1, mem: 1G, {key}: {v}}}\ntiers: {{t: {{defaults: {{{key}: {v}}}}}}}\ngroups: {{g: {{tier: t}}}}\n");
            if let Ok(p) = one(&text) {
                let _ = p.summary_on(Some(CgroupLayout::Hybrid));
                let _ = p.for_user(&user(1001, "ann", &["g"]));
                let _ = p.explain(&user(1001, "ann", &["g"]));
            }
        }
    }
}
