use std::os::unix::fs::{PermissionsExt, symlink};

use fairshare_proto::units::{Bytes, Cpus, Tasks};
use proptest::prelude::*;

use super::*;

fn limits(cpu_millis: u64, mem: u64, mem_high: Option<u64>, tasks: u64) -> Limits {
    Limits {
        cpu: Cpus::from_millis(cpu_millis),
        mem: Bytes(mem),
        mem_high: mem_high.map(Bytes),
        tasks: Tasks(tasks),
        weight: None,
        io_weight: None,
        mem_low: None,
        swap: None,
    }
}

fn put(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn slice(text: &str) -> String {
    format!("[Slice]\n{text}\n")
}

/// The values systemd would put in force, as `Key=value` strings.
fn shown(l: &Layout, uid: u32) -> Vec<String> {
    l.effective(uid, &|_| false)
        .unwrap()
        .into_iter()
        .map(|(k, a)| format!("{k}={}", a.raw))
        .collect()
}

fn origin(l: &Layout, uid: u32, key: Key) -> PathBuf {
    l.effective(uid, &|_| false).unwrap()[&key].path.clone()
}

// ------------------------------------------------------------ text

#[test]
fn renders_the_policy_default_as_systemd_reads_it() {
    let text = Entry::Limits(Settings::from_limits(&limits(
        1500,
        8 << 30,
        Some(7 << 30),
        4096,
    )))
    .render("the policy default: defaults");
    assert_eq!(
        text,
        "# Written by fairshared (the policy default: defaults).\n\
         # Do not edit: change the policy in /etc/fairshare/policy.d and run\n\
         # `fairshare-ctl reload`; fairshared rewrites this file from the policy.\n\
         [Slice]\n\
         CPUQuota=150%\n\
         MemoryMax=8589934592\n\
         MemoryHigh=7516192768\n\
         TasksMax=4096\n"
    );
    // What systemd reads from it: the four settings in [Slice], nothing else.
    let lines = parse(&text);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l.section == "Slice"));
}

#[test]
fn a_policy_without_a_soft_limit_leaves_memory_high_to_systemd() {
    let s = Settings::from_limits(&limits(2000, 1 << 30, None, 512));
    assert_eq!(s.get(Key::MemoryHigh), None);
    assert!(!Entry::Limits(s).render("x").contains("MemoryHigh"));
}

#[test]
fn cpu_quota_keeps_a_tenth_of_a_percent() {
    // As systemd's CPUQuota= reads them (checked on the test host: 123.4%
    // gave cpu.cfs_quota_us 123400, like CPUQuotaPerSecUSec=1234000).
    for (millis, text) in [
        (1000, "100%"),
        (1500, "150%"),
        (1234, "123.4%"),
        (10, "1%"),
        (15, "1.5%"),
        (100_000_000, "10000000%"),
    ] {
        let v = Value::Amount(Cpus::from_millis(millis).quota_usec_per_sec());
        assert_eq!(v.render(Key::CpuQuota), text);
        assert_eq!(Value::parse(Key::CpuQuota, text), Ok(Some(v)), "{text}");
    }
}

#[test]
fn reads_values_the_way_systemd_does() {
    use Value::*;
    let ok = |k, s: &str, v| assert_eq!(Value::parse(k, s), Ok(v), "{k}={s}");
    ok(Key::TasksMax, "33%", Some(Share(3300)));
    ok(Key::TasksMax, "12.5%", Some(Share(1250)));
    ok(Key::TasksMax, "0.25%", Some(Share(25)));
    ok(Key::TasksMax, "5‰", Some(Share(50)));
    ok(Key::TasksMax, "7‱", Some(Share(7)));
    ok(Key::TasksMax, "100%", Some(Share(10_000)));
    ok(Key::TasksMax, "4096", Some(Amount(4096)));
    ok(Key::TasksMax, "infinity", Some(Infinity));
    ok(Key::TasksMax, "", None);
    ok(Key::TasksMax, "  ", None);
    ok(Key::MemoryMax, "1G", Some(Amount(1 << 30)));
    ok(Key::MemoryMax, "1.5G", Some(Amount(1_610_612_736)));
    ok(Key::MemoryMax, "768M", Some(Amount(805_306_368)));
    ok(Key::MemoryMax, "2 T", Some(Amount(2 << 40)));
    ok(Key::MemoryMax, "4096", Some(Amount(4096)));
    ok(Key::MemoryMax, "50%", Some(Share(5000)));
    ok(Key::MemoryHigh, "infinity", Some(Infinity));
    ok(Key::CpuQuota, "150%", Some(Amount(1_500_000)));
    ok(Key::CpuQuota, "", None);
    let bad = |k, s: &str| assert!(Value::parse(k, s).is_err(), "{k}={s} should be refused");
    bad(Key::TasksMax, "0");
    bad(Key::TasksMax, "-1");
    bad(Key::TasksMax, "lots");
    bad(Key::TasksMax, "1.5");
    bad(Key::TasksMax, "101%");
    bad(Key::TasksMax, "0%");
    bad(Key::TasksMax, "1.234%");
    bad(Key::TasksMax, "1.%");
    bad(Key::MemoryMax, "1g");
    bad(Key::MemoryMax, "1GB");
    bad(Key::MemoryMax, "20000000T");
    bad(Key::MemoryMax, ".5G");
    bad(Key::CpuQuota, "2");
    bad(Key::CpuQuota, "0%");
    bad(Key::CpuQuota, "infinity");
}

#[test]
fn parses_sections_comments_and_continued_lines() {
    let lines = parse(
        "# comment\n\
         ; another\n\
         [Unit]\n\
         Description=User Slice of UID %j\n\
         \n\
         [Slice]\n\
         TasksMax = 33%  \n\
         MemoryMax=1\\\n\
         # skipped inside a continuation\n\
         G\n\
         NoValue\n\
         CPUQuota=\n",
    );
    let got: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l.number,
                l.section.as_str(),
                l.key.as_str(),
                l.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (4, "Unit", "Description", "User Slice of UID %j"),
            (7, "Slice", "TasksMax", "33%"),
            (8, "Slice", "MemoryMax", "1 G"),
            (12, "Slice", "CPUQuota", ""),
        ]
    );
    // Only [Slice] counts, and values systemd refuses are left out as it
    // leaves them out.
    let a = slice_assignments(
        Path::new("/x.conf"),
        "[Service]\nTasksMax=5\n[Slice]\nTasksMax=bogus\nTasksMax=7\nCPUWeight=idle\n",
    );
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].key, a[0].value, a[0].line),
        (Key::TasksMax, Some(Value::Amount(7)), 5)
    );
}

#[test]
fn sets_a_running_slice_as_a_reload_would() {
    use PropertyValue::*;
    // 33% of the host's tasks: the scale systemd derives from TasksMax=33%
    // (on the test host both gave pids.max 63600).
    assert_eq!(
        property(Key::TasksMax, Some(Value::Share(3300))),
        ("TasksMaxScale", U32(1_417_339_207))
    );
    assert_eq!(
        property(Key::MemoryMax, Some(Value::Share(10_000))),
        ("MemoryMaxScale", U32(u32::MAX))
    );
    assert_eq!(
        property(Key::TasksMax, Some(Value::Amount(4096))),
        ("TasksMax", U64(4096))
    );
    // Nothing set by anyone: systemd's built-in default, no limit (no
    // guarantee for MemoryLow, whose default is 0, not infinity).
    // (an IO limit's: the empty list, which the D-Bus call sends as an
    // empty a(st))
    for k in Key::ALL {
        let unset = match k {
            Key::MemoryLow => U64(0),
            Key::IoReadBandwidthMax
            | Key::IoWriteBandwidthMax
            | Key::IoReadIopsMax
            | Key::IoWriteIopsMax => Devices(0),
            _ => U64(u64::MAX),
        };
        assert_eq!(property(*k, None).1, unset, "{k}");
    }
    assert_eq!(
        property(Key::CpuWeight, Some(Value::Amount(200))),
        ("CPUWeight", U64(200))
    );
    assert_eq!(
        property(Key::MemorySwapMax, Some(Value::Amount(0))),
        ("MemorySwapMax", U64(0))
    );
    assert_eq!(
        property(Key::CpuQuota, Some(Value::Amount(2_000_000))),
        ("CPUQuotaPerSecUSec", U64(2_000_000))
    );
}

#[test]
fn every_key_has_its_row() {
    for (i, k) in Key::ALL.iter().enumerate() {
        assert_eq!(k.spec().key, *k);
        assert_eq!(SPECS[i].key, *k);
        assert_eq!(Key::from_name(k.name()), Some(*k));
        assert!(k.spec().control_files.iter().all(|f| f.starts_with("50-")));
        // Ours sorts between systemd's 10-defaults.conf and the control files.
        assert!(*"10-defaults.conf" < *NAME);
        assert!(k.spec().control_files.iter().all(|f| NAME < *f));
    }
    assert_eq!(SPECS.len(), Key::ALL.len());
    assert_eq!(Key::from_name("CPUWeight"), Some(Key::CpuWeight));
    assert_eq!(Key::from_name("StartupCPUWeight"), None);
}

proptest! {
    #[test]
    fn amounts_read_back_as_written(n in 1u64..u64::MAX, k in 1usize..4) {
        let key = Key::ALL[k];
        let v = Value::Amount(n);
        prop_assert_eq!(Value::parse(key, &v.render(key)), Ok(Some(v)));
    }

    #[test]
    fn cpu_counts_read_back_as_written(millis in 10u64..100_000_000) {
        let v = Value::Amount(Cpus::from_millis(millis).quota_usec_per_sec());
        prop_assert_eq!(Value::parse(Key::CpuQuota, &v.render(Key::CpuQuota)), Ok(Some(v)));
    }

    #[test]
    fn files_read_back_as_written(
        cpu in 10u64..1_000_000, mem in 1u64..u64::MAX, high in proptest::option::of(1u64..u64::MAX),
        tasks in 1u64..4_194_304, why in "[ -~]{0,60}",
    ) {
        let e = Entry::Limits(Settings::from_limits(&limits(cpu, mem, high, tasks)));
        prop_assert_eq!(recognise(&e.render(&why)), OnDisk::Ours(e));
    }

    #[test]
    fn parsing_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
        let _ = recognise(&text);
        for k in Key::ALL {
            let _ = Value::parse(*k, &text);
        }
    }
}

// ------------------------------------------------------------ files

#[test]
fn writes_atomically_and_only_when_the_text_changes() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    let s = Settings::from_limits(&limits(2000, 8 << 30, None, 4096));
    assert_eq!(l.write_global(&s, "defaults").unwrap(), Outcome::Written);
    assert_eq!(
        l.read_global().unwrap(),
        OnDisk::Ours(Entry::Limits(s.clone()))
    );
    let meta = fs::metadata(l.global_file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let ino = meta.ino();
    assert_eq!(l.write_global(&s, "defaults").unwrap(), Outcome::Unchanged);
    assert_eq!(fs::metadata(l.global_file()).unwrap().ino(), ino);
    // A changed default replaces the file (a new inode: renamed into place).
    let s2 = Settings::from_limits(&limits(1000, 4 << 30, None, 4096));
    assert_eq!(l.write_global(&s2, "defaults").unwrap(), Outcome::Written);
    assert_ne!(fs::metadata(l.global_file()).unwrap().ino(), ino);
    assert_eq!(l.read_global().unwrap(), OnDisk::Ours(Entry::Limits(s2)));
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(l.global_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [NAME]);
}

#[test]
fn a_symlink_in_the_way_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    let victim = t.path().join("victim");
    fs::write(&victim, "keep me").unwrap();
    fs::create_dir_all(l.global_dir()).unwrap();
    symlink(&victim, l.global_file()).unwrap();
    let s = Settings::from_limits(&limits(2000, 8 << 30, None, 4096));
    assert_eq!(l.write_global(&s, "defaults").unwrap(), Outcome::Written);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(fs::symlink_metadata(l.global_file()).unwrap().is_file());
}

#[test]
fn user_entries_are_written_read_listed_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    let group = Entry::Limits(Settings::from_limits(&limits(4000, 16 << 30, None, 8192)));
    assert_eq!(
        l.write_user(1002, &group, "group students").unwrap(),
        Outcome::Written
    );
    assert_eq!(
        l.write_user(0, &Entry::Exempt, "root is never limited")
            .unwrap(),
        Outcome::Written
    );
    assert_eq!(
        l.write_user(65534, &Entry::Exempt, "nobody").unwrap(),
        Outcome::Written
    );
    // An exempt entry holds no setting at all: it only masks the default.
    let text = fs::read_to_string(l.user_file(0)).unwrap();
    assert!(parse(&text).is_empty(), "{text}");
    assert_eq!(l.read_user(0).unwrap(), OnDisk::Ours(Entry::Exempt));
    // An admin's files are not fairshare's.
    put(&l.user_file(1003), &slice("TasksMax=10"));
    fs::create_dir_all(l.user_dir(1004)).unwrap();
    symlink("/dev/null", l.user_file(1004)).unwrap();
    put(
        &l.user_dir(1005).join("50-admin.conf"),
        &slice("TasksMax=10"),
    );
    assert_eq!(
        l.user_entries().unwrap(),
        [
            (0, Entry::Exempt),
            (1002, group.clone()),
            (65534, Entry::Exempt)
        ]
    );
    assert_eq!(l.read_user(1003).unwrap(), OnDisk::Foreign);
    assert_eq!(l.read_user(1004).unwrap(), OnDisk::Masked);
    assert_eq!(l.read_user(1005).unwrap(), OnDisk::Missing);
    // ... and are never overwritten or removed.
    assert_eq!(
        l.write_user(1003, &group, "x").unwrap(),
        Outcome::LeftForeign
    );
    assert_eq!(
        l.write_user(1004, &group, "x").unwrap(),
        Outcome::LeftForeign
    );
    assert_eq!(l.remove_user(1003).unwrap(), Outcome::LeftForeign);
    assert_eq!(l.remove_user(1004).unwrap(), Outcome::LeftForeign);
    assert_eq!(
        fs::read_to_string(l.user_file(1003)).unwrap(),
        slice("TasksMax=10")
    );
    // Removing ours takes the directory too, when nothing else is in it.
    assert_eq!(l.remove_user(1002).unwrap(), Outcome::Removed);
    assert!(!l.user_dir(1002).exists());
    assert_eq!(l.remove_user(1002).unwrap(), Outcome::Absent);
    put(&l.user_dir(0).join("60-admin.conf"), &slice("CPUWeight=10"));
    assert_eq!(l.remove_user(0).unwrap(), Outcome::Removed);
    assert!(l.user_dir(0).join("60-admin.conf").exists());
}

#[test]
fn uninstall_removes_every_file_of_fairshare_and_nothing_else() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    let s = Settings::from_limits(&limits(2000, 8 << 30, None, 4096));
    l.write_global(&s, "defaults").unwrap();
    l.write_user(0, &Entry::Exempt, "root").unwrap();
    l.write_user(1002, &Entry::Limits(s.clone()), "group")
        .unwrap();
    put(
        &l.global_dir().join("50-admin.conf"),
        &slice("MemoryMax=1G"),
    );
    put(&l.user_file(1003), &slice("TasksMax=10"));
    let mut removed = l.remove_all().unwrap();
    removed.sort();
    let mut want = vec![l.global_file(), l.user_file(0), l.user_file(1002)];
    want.sort();
    assert_eq!(removed, want);
    assert!(l.global_dir().join("50-admin.conf").exists());
    assert!(l.user_file(1003).exists());
    assert!(!l.user_dir(0).exists());
    assert_eq!(l.user_entries().unwrap(), []);
}

#[test]
fn control_files_of_managed_keys_are_found_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    let d = l.control_dir(1001);
    for f in [
        "50-CPUQuota.conf",
        "50-MemoryMax.conf",
        "50-MemoryMaxScale.conf",
        "50-TasksMaxScale.conf",
        "50-CPUWeight.conf",
        "50-StartupCPUWeight.conf",
    ] {
        put(&d.join(f), "[Slice]\n");
    }
    assert_eq!(
        l.control_keys(1001),
        [Key::CpuQuota, Key::MemoryMax, Key::TasksMax, Key::CpuWeight]
    );
    assert_eq!(
        l.users_with_control_files().unwrap(),
        [(
            1001,
            vec![Key::CpuQuota, Key::MemoryMax, Key::TasksMax, Key::CpuWeight]
        )]
    );
    // Both files that can set MemoryMax go.
    assert_eq!(
        l.remove_control_files(1001, &[Key::MemoryMax, Key::MemoryHigh])
            .unwrap(),
        2
    );
    assert_eq!(
        l.control_keys(1001),
        [Key::CpuQuota, Key::TasksMax, Key::CpuWeight]
    );
    assert_eq!(l.remove_control_files(1001, Key::ALL).unwrap(), 3);
    // Not ours: stays, and so does its directory.
    assert!(d.join("50-StartupCPUWeight.conf").exists());
    fs::remove_file(d.join("50-StartupCPUWeight.conf")).unwrap();
    put(&d.join("50-TasksMax.conf"), "[Slice]\n");
    l.remove_control_files(1001, Key::ALL).unwrap();
    assert!(!d.exists());
    assert_eq!(l.users_with_control_files().unwrap(), []);
}

// ------------------------------------------------------------ precedence
//
// Each case is one measured on systemd 252 (docs/design/defaults-from-systemd.md,
// experiments a): the files as they were, and what the slice got.

const DEFAULTS_10: &str = "/usr/lib/systemd/system/user-.slice.d/10-defaults.conf";

fn host() -> (tempfile::TempDir, Layout) {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::under(t.path());
    put(
        &l.at(DEFAULTS_10),
        "[Unit]\nDescription=User Slice of UID %j\nStopWhenUnneeded=yes\n\n[Slice]\nTasksMax=33%\n",
    );
    l.write_global(
        &Settings::from_limits(&limits(1500, 1 << 30, None, 2222)),
        "defaults",
    )
    .unwrap();
    (t, l)
}

#[test]
fn the_global_default_wins_over_systemds_own() {
    let (_t, l) = host();
    assert_eq!(
        shown(&l, 1001),
        ["CPUQuota=150%", "MemoryMax=1073741824", "TasksMax=2222"]
    );
    assert_eq!(
        l.dropins(1001).unwrap(),
        [(l.at(DEFAULTS_10), false), (l.global_file(), false)]
    );
}

#[test]
fn a_users_file_of_the_same_name_replaces_the_global_one_entirely() {
    // A1: user-1002.slice.d/40-fairshare.conf with TasksMax=4444 only: no
    // MemoryMax, no CPUQuota.
    let (_t, l) = host();
    put(&l.user_file(1002), &slice("TasksMax=4444"));
    assert_eq!(shown(&l, 1002), ["TasksMax=4444"]);
    assert_eq!(shown(&l, 1001).len(), 3);
}

#[test]
fn a_comment_only_file_or_a_dev_null_link_gives_systemds_own_defaults() {
    // A2, A5 and the exempt entry: TasksMax=33% from 10-defaults.conf.
    let (_t, l) = host();
    l.write_user(0, &Entry::Exempt, "root").unwrap();
    fs::create_dir_all(l.user_dir(1003)).unwrap();
    symlink("/dev/null", l.user_file(1003)).unwrap();
    for uid in [0, 1003] {
        assert_eq!(shown(&l, uid), ["TasksMax=33%"], "uid {uid}");
    }
    assert_eq!(
        l.dropins(1003).unwrap(),
        [(l.at(DEFAULTS_10), false), (l.user_file(1003), true)]
    );
}

#[test]
fn a_runtime_file_of_the_same_name_does_not_mask_the_one_in_etc() {
    // A3: /run/systemd/system/user-1004.slice.d/40-fairshare.conf is ignored;
    // A4: /run/systemd/system/user-.slice.d/40-fairshare.conf too, until the
    // one in /etc goes.
    let (_t, l) = host();
    put(
        &l.at("/run/systemd/system/user-1004.slice.d").join(NAME),
        &slice("TasksMax=5555"),
    );
    put(
        &l.at("/run/systemd/system/user-.slice.d").join(NAME),
        &slice("TasksMax=6666\nMemoryMax=6G"),
    );
    assert_eq!(origin(&l, 1004, Key::TasksMax), l.global_file());
    assert_eq!(shown(&l, 1004)[2], "TasksMax=2222");
    fs::remove_file(l.global_file()).unwrap();
    assert_eq!(shown(&l, 1001), ["MemoryMax=6G", "TasksMax=6666"]);
}

#[test]
fn resizes_win_over_the_default_and_later_names_win_over_resizes() {
    // A6: a runtime 50-TasksMax.conf wins over ours; an admin's 60-late.conf
    // in /etc wins over both.
    let (_t, l) = host();
    put(
        &l.control_dir(1001).join("50-TasksMax.conf"),
        &slice("TasksMax=3333"),
    );
    assert_eq!(shown(&l, 1001)[2], "TasksMax=3333");
    put(
        &l.global_dir().join("60-late.conf"),
        &slice("TasksMax=7777"),
    );
    assert_eq!(shown(&l, 1001)[2], "TasksMax=7777");
}

#[test]
fn a_persistent_set_property_masks_a_runtime_one_of_the_same_name() {
    // A7: /etc/systemd/system.control beats /run/systemd/system.control.
    let (_t, l) = host();
    put(
        &l.control_dir(1001).join("50-TasksMax.conf"),
        &slice("TasksMax=3000"),
    );
    put(
        &l.at("/etc/systemd/system.control/user-1001.slice.d/50-TasksMax.conf"),
        &slice("TasksMax=8888"),
    );
    assert_eq!(shown(&l, 1001)[2], "TasksMax=8888");
}

#[test]
fn a_file_of_our_name_in_the_runtime_control_directory_masks_the_global_one() {
    // A8.
    let (_t, l) = host();
    put(&l.control_dir(1001).join(NAME), &slice("TasksMax=1234"));
    assert_eq!(shown(&l, 1001), ["TasksMax=1234"]);
}

#[test]
fn an_empty_assignment_puts_systemds_built_in_default_back() {
    let (_t, l) = host();
    put(
        &l.global_dir().join("50-unset.conf"),
        &slice("TasksMax=\nCPUQuota="),
    );
    assert_eq!(shown(&l, 1001), ["MemoryMax=1073741824"]);
}

#[test]
fn a_unit_file_of_the_slice_comes_before_every_drop_in() {
    let (_t, l) = host();
    put(
        &l.at("/etc/systemd/system/user-1001.slice"),
        &slice("TasksMax=99\nMemoryHigh=1G"),
    );
    assert_eq!(
        shown(&l, 1001),
        [
            "CPUQuota=150%",
            "MemoryMax=1073741824",
            "MemoryHigh=1G",
            "TasksMax=2222"
        ]
    );
}

#[test]
fn systemds_own_values_leave_out_everything_of_fairshare() {
    // What lifting a user's limits puts back: 10-defaults.conf's 33%, an
    // admin's own setting, and no fairshare default or resize.
    let (_t, l) = host();
    put(
        &l.control_dir(1001).join("50-TasksMax.conf"),
        &slice("TasksMax=3333"),
    );
    put(
        &l.control_dir(1001).join("50-CPUQuota.conf"),
        &slice("CPUQuota=30%"),
    );
    put(&l.user_file(1001), &slice("MemoryMax=2G"));
    put(
        &l.global_dir().join("30-admin.conf"),
        &slice("MemoryHigh=3G"),
    );
    let own = l.systemd_own(1001).unwrap();
    let got: Vec<_> = own
        .iter()
        .map(|(k, a)| (*k, property(*k, a.value)))
        .collect();
    assert_eq!(
        got,
        [
            (Key::MemoryHigh, ("MemoryHigh", PropertyValue::U64(3 << 30))),
            (
                Key::TasksMax,
                ("TasksMaxScale", PropertyValue::U32(1_417_339_207))
            ),
        ]
    );
    // Keys no one else sets go back to no limit.
    assert_eq!(
        property(Key::CpuQuota, own.get(&Key::CpuQuota).and_then(|a| a.value)).1,
        PropertyValue::U64(u64::MAX)
    );
}

#[test]
fn merged_usr_is_read_once() {
    let (t, l) = host();
    // /lib -> usr/lib, as on Debian 12.
    symlink("usr/lib", t.path().join("lib")).unwrap();
    assert_eq!(l.dropins(1001).unwrap().len(), 2);
    let f = l.foreign().unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
}

// ------------------------------------------------------------ check

#[test]
fn check_reports_what_others_set_and_what_it_does() {
    let (_t, l) = host();
    l.write_user(0, &Entry::Exempt, "root").unwrap();
    l.write_user(
        1002,
        &Entry::Limits(Settings::from_limits(&limits(500, 1 << 30, None, 100))),
        "group",
    )
    .unwrap();
    put(
        &l.global_dir().join("90-admin.conf"),
        &slice("# hand-written\nMemoryMax=4G"),
    );
    put(
        &l.at("/etc/systemd/system.control/user-1003.slice.d/50-TasksMax.conf"),
        &slice("TasksMax=8888"),
    );
    put(
        &l.at("/run/systemd/system/user-.slice.d").join(NAME),
        &slice("TasksMax=6666"),
    );
    put(&l.user_file(1004), &slice("TasksMax=10"));
    // Resizes are fairshare's own business: not reported.
    put(
        &l.control_dir(1001).join("50-TasksMax.conf"),
        &slice("TasksMax=3333"),
    );
    let f = l.foreign().unwrap();
    let got: Vec<_> = f
        .iter()
        .map(|x| {
            (
                x.path
                    .strip_prefix(_t.path())
                    .unwrap()
                    .display()
                    .to_string(),
                x.line,
                x.scope,
                x.key,
                x.effect,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "etc/systemd/system.control/user-1003.slice.d/50-TasksMax.conf".into(),
                2,
                Scope::User(1003),
                Some(Key::TasksMax),
                Effect::PersistentControl
            ),
            (
                "etc/systemd/system/user-.slice.d/90-admin.conf".into(),
                3,
                Scope::Everyone,
                Some(Key::MemoryMax),
                Effect::Overrides
            ),
            (
                "etc/systemd/system/user-1004.slice.d/40-fairshare.conf".into(),
                0,
                Scope::User(1004),
                None,
                Effect::MasksFairshare
            ),
            (
                "run/systemd/system/user-.slice.d/40-fairshare.conf".into(),
                0,
                Scope::Everyone,
                None,
                Effect::MaskedByFairshare
            ),
            (
                "usr/lib/systemd/system/user-.slice.d/10-defaults.conf".into(),
                6,
                Scope::Everyone,
                Some(Key::TasksMax),
                Effect::Underneath
            ),
        ]
    );
    let warnings: Vec<String> = f
        .iter()
        .filter(|x| x.is_warning())
        .map(|x| x.to_string())
        .collect();
    assert_eq!(warnings.len(), 3);
    assert!(
        warnings[1].starts_with("warning: ")
            && warnings[1].contains(
                "90-admin.conf:3: MemoryMax=4G overrides fairshare's default for every user"
            )
            && warnings[1].contains("set defaults.mem in the policy"),
        "{}",
        warnings[1]
    );
    assert!(warnings[0].contains("for uid 1003") && warnings[0].contains("daemon-reload"));
    let note = f.last().unwrap().to_string();
    assert!(
        note.starts_with("note: ") && note.contains("10-defaults.conf:6: TasksMax=33%"),
        "{note}"
    );
}

#[test]
fn check_is_quiet_on_a_host_with_only_fairshare_and_systemd() {
    let (_t, l) = host();
    l.write_user(0, &Entry::Exempt, "root").unwrap();
    let f = l.foreign().unwrap();
    assert!(f.iter().all(|x| !x.is_warning()), "{f:?}");
}

/// IO limits: one `PATH VALUE` line per disk, read back into the same list
/// (whatever the order), an empty assignment resetting it and `infinity`
/// taking one disk out, as systemd reads them; a list is one value.
#[test]
fn io_limits_are_lists_per_disk_written_and_read_back() {
    let s = Settings::from_limits(&limits(2000, 8 << 30, None, 4096)).with_io(
        &fairshare_policy::IoDevices {
            write_bw: vec![("/home".into(), 20_000_000), ("/dev/vdb".into(), 5_000_000)],
            read_iops: vec![("/home".into(), 500)],
            ..Default::default()
        },
    );
    let text = Entry::Limits(s.clone()).render("test");
    assert!(
        text.contains(
            "IOWriteBandwidthMax=/dev/vdb 5000000\nIOWriteBandwidthMax=/home 20000000\nIOReadIOPSMax=/home 500\n"
        ),
        "{text}"
    );
    assert!(!text.contains("IOReadBandwidthMax"), "{text}");
    assert_eq!(recognise(&text), OnDisk::Ours(Entry::Limits(s.clone())));
    // systemd's control file: a reset, then the disks, in its own order
    let control = "[Slice]\nIOWriteBandwidthMax=\nIOWriteBandwidthMax=/home 20M\nIOWriteBandwidthMax=/dev/vdb 5000000\n";
    let a = slice_assignments(Path::new("/x"), control);
    let v = a
        .iter()
        .fold(None, |old, a| accumulate(a.key, old, a.value));
    assert_eq!(v, s.get(Key::IoWriteBandwidthMax));
    // a later line for one disk replaces its value; infinity takes it out;
    // an empty assignment empties the list
    let more = "[Slice]\nIOWriteBandwidthMax=/home 1M\nIOWriteBandwidthMax=/dev/vdb infinity\n";
    let v2 = slice_assignments(Path::new("/x"), more)
        .iter()
        .fold(v, |old, a| accumulate(a.key, old, a.value));
    assert_eq!(
        v2.map(|v| v.render(Key::IoWriteBandwidthMax)).as_deref(),
        Some("/home 1000000")
    );
    assert_eq!(
        accumulate(Key::IoWriteBandwidthMax, v2, None),
        None,
        "an empty assignment"
    );
    // rejected as systemd rejects them
    for bad in ["home 1M", "/home", "/home 0", "/home 1X", "/home 1 2"] {
        assert!(Value::parse(Key::IoReadIopsMax, bad).is_err(), "{bad}");
    }
    // on D-Bus: the list's number, its entries sent as a(st)
    let (name, value) = property(Key::IoReadIopsMax, s.get(Key::IoReadIopsMax));
    assert_eq!(name, "IOReadIOPSMax");
    let PropertyValue::Devices(id) = value else {
        panic!("{value:?}")
    };
    assert_eq!(&*devices::get(id), &[("/home".to_string(), 500)]);
    // the same list is the same value, however it was made
    assert_eq!(
        devices::intern(vec![("/b".into(), 1), ("/a".into(), 2)]),
        devices::intern(vec![("/a".into(), 2), ("/b".into(), 1)])
    );
    assert_eq!(devices::intern(Vec::new()), 0);
}
