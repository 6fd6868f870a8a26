//! The policy default from systemd's drop-ins (issue 12) and what reloads
//! and starts do with it (issue 17 items 1, 2, 3, 8, 9). The fake systemd
//! reads the same files systemd does ([`Fake::start_slice`],
//! [`Fake::daemon_reload`]), so every test asserts what a slice would
//! carry, and how many `SetUnitProperties` calls it took.

use std::path::Path;
use std::sync::Mutex as StdMutex;

use super::*;
use crate::dropin::{Key, Layout, NAME, Value};

/// A directory whose users and groups a test may change. Group members are
/// enumerable (like local groups) unless the group is in the second list
/// (like an LDAP group too large to list).
struct Users(StdMutex<Vec<Identity>>, StdMutex<Vec<&'static str>>);

impl Directory for Users {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.uid == uid)
            .cloned())
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.name == name)
            .cloned())
    }
    fn group_members(&self, group: &str) -> Vec<String> {
        if self.1.lock().unwrap().contains(&group) {
            return Vec::new();
        }
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|i| i.groups.iter().any(|g| g == group))
            .map(|i| i.name.clone())
            .collect()
    }
    fn local_uids_below(&self, below: u32) -> Vec<u32> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|i| i.uid < below)
            .map(|i| i.uid)
            .collect()
    }
}

fn people() -> Arc<Users> {
    Arc::new(Users(
        StdMutex::new(vec![
            id(0, "root", &["root"]),
            id(1001, "alice", &["alice"]),
            id(1002, "bob", &["bob"]),
            id(1003, "stu", &["stu", "students"]),
            id(1004, "ann", &["ann", "admins"]),
            id(998, "daemon", &["daemon"]),
        ]),
        StdMutex::new(Vec::new()),
    ))
}

const SITE: &str = "\
defaults: {cpu: 2, mem: 8G, tasks: 500}
max: {cpu: 8, mem: 32G}
capacity: {cpu: 16, mem: 64G, overcommit: 1}
exempt: {groups: [admins]}
groups:
  students:
    defaults: {cpu: 1, mem: 2G}
";

/// A service whose policy is read from a file (for reloads), with systemd's
/// own `10-defaults.conf` (`TasksMax=33%`) in the fake's root.
fn site(policy: &str) -> (Arc<Service<Fake>>, Arc<Users>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, policy).unwrap();
    let users = people();
    let fake = Fake::in_tempdir();
    let root = fake.root().unwrap().to_path_buf();
    let sd = root.join("usr/lib/systemd/system/user-.slice.d");
    std::fs::create_dir_all(&sd).unwrap();
    std::fs::write(
        sd.join("10-defaults.conf"),
        "[Unit]\nDescription=User Slice of UID %j\n\n[Slice]\nTasksMax=33%\n",
    )
    .unwrap();
    let s =
        with_fake(fake, users.clone(), Policy::load(&file).unwrap(), None).with_policy_path(file);
    (Arc::new(s), users, dir)
}

fn layout(s: &Service<Fake>) -> Layout {
    Layout::under(s.systemd().root().unwrap())
}

fn amount(n: u64) -> Option<Value> {
    Some(Value::Amount(n))
}

/// cpu (CPUs), mem (GiB), tasks as the values on a slice.
/// The fair-share keys, unset unless a test's policy sets them.
const FAIR_KEYS: &[Key] = &[
    Key::CpuWeight,
    Key::IoWeight,
    Key::MemoryLow,
    Key::MemorySwapMax,
    Key::IoReadBandwidthMax,
    Key::IoWriteBandwidthMax,
    Key::IoReadIopsMax,
    Key::IoWriteIopsMax,
];

fn limited(cpu: u64, mem_g: u64, tasks: u64) -> crate::defaults::Values {
    [
        (Key::CpuQuota, amount(cpu * 1_000_000)),
        (Key::MemoryMax, amount(mem_g << 30)),
        (Key::MemoryHigh, None),
        (Key::TasksMax, amount(tasks)),
    ]
    .into_iter()
    .chain(FAIR_KEYS.iter().map(|k| (*k, None)))
    .collect()
}

/// systemd's own values: 33% of the tasks, nothing else.
fn systemds_own() -> crate::defaults::Values {
    [
        (Key::CpuQuota, None),
        (Key::MemoryMax, None),
        (Key::MemoryHigh, None),
        (Key::TasksMax, Some(Value::Share(3300))),
    ]
    .into_iter()
    .chain(FAIR_KEYS.iter().map(|k| (*k, None)))
    .collect()
}

async fn open(s: &Arc<Service<Fake>>, uid: u32, p: &Proc) -> Success {
    success(
        send(
            s,
            0,
            &format!(r#"{{"type":"session_open","uid":{uid},"pid":{}}}"#, p.pid()),
        )
        .await,
    )
}

async fn close(s: &Arc<Service<Fake>>, uid: u32, p: &Proc) {
    success(
        send(
            s,
            0,
            &format!(
                r#"{{"type":"session_close","uid":{uid},"pid":{}}}"#,
                p.pid()
            ),
        )
        .await,
    );
}

/// Runs the background file work of the last requests.
async fn files_settle(s: &Arc<Service<Fake>>) {
    for _ in 0..200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = s;
}

/// Every file under `root` (relative path, text).
fn files_under(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// The properties of the last `SetUnitProperties`.
fn last_set(s: &Service<Fake>) -> Vec<(String, PropertyValue)> {
    s.systemd()
        .calls()
        .into_iter()
        .rev()
        .find_map(|c| match c {
            Call::Set(_, p) => Some(p),
            _ => None,
        })
        .unwrap()
}

fn control_files(s: &Service<Fake>, uid: u32) -> Vec<std::path::PathBuf> {
    layout(s).control_files(uid, Key::ALL)
}

#[tokio::test]
async fn a_login_at_the_default_makes_no_dbus_call_first_or_additional() {
    let (s, _, _d) = site(SITE);
    s.catch_up().await;
    // G is written at start and a slice that starts gets it from systemd
    let g = std::fs::read_to_string(layout(&s).global_file()).unwrap();
    assert!(
        g.contains("CPUQuota=200%") && g.contains("TasksMax=500"),
        "{g}"
    );
    s.systemd().start_slice(1001);
    let (a, b) = (Proc::new(), Proc::new());
    let first = open(&s, 1001, &a).await;
    assert_eq!(first.allocation.unwrap().cpu, Cpus::whole(2));
    open(&s, 1001, &b).await;
    assert_eq!(s.systemd().sets(1001), 0, "{:?}", s.systemd().calls());
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
    assert_eq!(s.ledger().get(1001).unwrap().sessions.len(), 2);
    // the last logout at the default makes none either
    close(&s, 1001, &b).await;
    close(&s, 1001, &a).await;
    assert_eq!(s.systemd().sets(1001), 0);
    assert!(
        metrics_text(&s)
            .await
            .contains("fairshare_slice_writes_total 0")
    );
}

/// A slice whose unit systemd loaded before fairshare's files changed
/// starts with the old default (the v2 guest: 8G after a policy of 192M,
/// the unit kept loaded by a `systemctl set-property` on it). The user's
/// first login reads the slice once and sets it right; their next first
/// login, with nothing changed since, reads nothing.
#[tokio::test]
async fn a_first_login_sets_right_a_slice_started_from_older_files() {
    let (s, _, _d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice_with(1001, limited(8, 16, 4096));
    let a = Proc::new();
    open(&s, 1001, &a).await;
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
    assert_eq!(s.systemd().sets(1001), 1, "{:?}", s.systemd().calls());
    close(&s, 1001, &a).await;
    s.systemd().stop_slice(1001);
    // logged out and in again, the files as they were: no read, no call
    s.systemd().start_slice(1001);
    let sets = s.systemd().sets(1001);
    let b = Proc::new();
    open(&s, 1001, &b).await;
    assert_eq!(s.systemd().sets(1001), sets);
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
}

#[tokio::test]
async fn a_login_sets_right_what_root_set_on_the_slice_meanwhile() {
    let (s, _, _d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let (a, b) = (Proc::new(), Proc::new());
    open(&s, 1001, &a).await;
    assert_eq!(s.systemd().sets(1001), 0);
    // root, behind fairshared's back: `systemctl set-property --runtime
    // user-1001.slice CPUQuota=50% TasksMax=7`
    s.systemd()
        .set(
            1001,
            &crate::defaults::properties(&[
                (Key::CpuQuota, amount(500_000)),
                (Key::TasksMax, amount(7)),
            ]),
        )
        .await
        .unwrap();
    let calls = s.systemd().sets(1001);
    // the next login puts the allocation back, only the keys that differ
    open(&s, 1001, &b).await;
    assert_eq!(
        s.systemd().sets(1001),
        calls + 1,
        "{:?}",
        s.systemd().calls()
    );
    let names: Vec<String> = last_set(&s).iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, ["CPUQuotaPerSecUSec", "TasksMax"]);
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
}

async fn metrics_text(s: &Arc<Service<Fake>>) -> String {
    match send(s, 0, r#"{"type":"metrics"}"#).await {
        Response::Metrics { text } => text,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_group_member_never_seen_gets_one_call_then_their_own_file() {
    let (s, users, _d) = site(SITE);
    users.1.lock().unwrap().push("students");
    s.catch_up().await;
    // stu's slice started from G (never seen: no own file yet)
    assert!(!layout(&s).user_file(1003).exists());
    s.systemd().start_slice(1003);
    assert_eq!(s.systemd().in_force(1003), limited(2, 8, 500));
    let p = Proc::new();
    open(&s, 1003, &p).await;
    assert_eq!(s.systemd().sets(1003), 1);
    // only the keys that differ from G
    let props = last_set(&s);
    let names: Vec<&str> = props.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["CPUQuotaPerSecUSec", "MemoryMax"]);
    assert_eq!(s.systemd().in_force(1003), limited(1, 2, 500));
    files_settle(&s).await;
    // U written after the answer, the control files that repeat it gone
    let u = std::fs::read_to_string(layout(&s).user_file(1003)).unwrap();
    assert!(
        u.contains("CPUQuota=100%") && u.contains("MemoryMax=2147483648"),
        "{u}"
    );
    assert!(control_files(&s, 1003).is_empty());
    // memory and disk agree: a daemon-reload changes nothing
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1003), limited(1, 2, 500));
    // next time (daemon down or not) the slice starts with the group default
    close(&s, 1003, &p).await;
    s.systemd().stop_slice(1003);
    s.systemd().start_slice(1003);
    assert_eq!(s.systemd().in_force(1003), limited(1, 2, 500));
    let q = Proc::new();
    open(&s, 1003, &q).await;
    assert_eq!(s.systemd().sets(1003), 1, "no second call");
}

#[tokio::test]
async fn the_last_logout_resets_only_the_keys_that_differ_and_removes_their_files() {
    let (s, _, _d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":4}"#).await);
    let props = last_set(&s);
    assert_eq!(props.len(), 1, "only the CPU quota: {props:?}");
    assert_eq!(control_files(&s, 1001).len(), 1);
    close(&s, 1001, &p).await;
    let props = last_set(&s);
    assert_eq!(
        props,
        vec![(
            "CPUQuotaPerSecUSec".to_string(),
            PropertyValue::U64(2_000_000)
        )]
    );
    assert_eq!(s.systemd().sets(1001), 2);
    files_settle(&s).await;
    assert!(control_files(&s, 1001).is_empty());
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
}

use crate::systemd::PropertyValue;

#[tokio::test]
async fn root_nobody_system_and_exempt_users_get_systemds_own_defaults_from_their_files() {
    let (s, _, _d) = site(SITE);
    s.catch_up().await;
    for uid in [0, 65534, 998, 1004] {
        s.systemd().start_slice(uid);
        assert_eq!(s.systemd().in_force(uid), systemds_own(), "uid {uid}");
        let text = std::fs::read_to_string(layout(&s).user_file(uid)).unwrap();
        assert!(text.starts_with("# Written by fairshared"), "{text}");
        assert!(!text.contains("[Slice]"), "comment only: {text}");
    }
    // users at the plain default have no file of their own
    assert!(!layout(&s).user_file(1001).exists());
    assert!(layout(&s).user_file(1003).exists());
    assert!(s.systemd().calls().is_empty(), "{:?}", s.systemd().calls());
}

#[tokio::test]
async fn a_user_made_exempt_gets_systemds_own_defaults_never_infinity() {
    let (s, users, _d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":3,"mem":"9G"}"#,
        )
        .await,
    );
    // alice joins the exempt group; the reload lifts her limits
    users.0.lock().unwrap()[1].groups.push("admins".into());
    let ok = success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert!(ok.message.contains("1 user(s): alice"), "{}", ok.message);
    assert_eq!(s.systemd().in_force(1001), systemds_own());
    files_settle(&s).await;
    assert!(control_files(&s, 1001).is_empty());
    for (path, text) in files_under(s.systemd().root().unwrap()) {
        assert!(!text.contains("infinity"), "{path}: {text}");
    }
    // memory and disk agree
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), systemds_own());
    assert!(s.ledger().get(1001).is_none());
}

#[tokio::test]
async fn a_reload_with_a_changed_default_reaches_live_slices_once_and_new_logins_by_file() {
    let (s, _, d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    std::fs::write(
        d.path().join("p.yaml"),
        SITE.replace("cpu: 2, mem: 8G", "cpu: 3, mem: 8G"),
    )
    .unwrap();
    let ok = success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert!(
        ok.message.contains("limits changed for 1 user(s): alice"),
        "{}",
        ok.message
    );
    // one call, the changed key only
    assert_eq!(s.systemd().sets(1001), 1);
    let props = last_set(&s);
    assert_eq!(props.len(), 1, "{props:?}");
    assert_eq!(s.systemd().in_force(1001), limited(3, 8, 500));
    // no runtime file holds the old (or the new) default
    assert!(control_files(&s, 1001).is_empty());
    // a new login gets it from the file, without a call
    s.systemd().start_slice(1002);
    assert_eq!(s.systemd().in_force(1002), limited(3, 8, 500));
    let q = Proc::new();
    open(&s, 1002, &q).await;
    assert_eq!(s.systemd().sets(1002), 0);
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), limited(3, 8, 500));
}

#[tokio::test]
async fn a_reload_that_changes_the_default_keeps_a_resize_that_equalled_the_old_one() {
    let (s, _, d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    // CPU as the default gives it (2, from the file), memory raised
    success(
        send(
            &s,
            1001,
            r#"{"type":"request_resources","cpu":2,"mem":"9G"}"#,
        )
        .await,
    );
    assert_eq!(s.systemd().in_force(1001), limited(2, 9, 500));
    std::fs::write(
        d.path().join("p.yaml"),
        SITE.replace("cpu: 2, mem: 8G", "cpu: 3, mem: 8G"),
    )
    .unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(s.systemd().in_force(1001), limited(2, 9, 500));
    // the files changed under the slice: a daemon-reload keeps the resize
    files_settle(&s).await;
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), limited(2, 9, 500));
}

#[tokio::test]
async fn a_bad_policy_leaves_the_dropins_untouched_and_is_reported() {
    let (s, _, d) = site(SITE);
    s.catch_up().await;
    let g = layout(&s).global_file();
    let before = (
        std::fs::read(&g).unwrap(),
        std::fs::metadata(&g).unwrap().modified().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(d.path().join("p.yaml"), "defaults: {cpu: 0}\n").unwrap();
    let e = error(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(e.code, ErrorCode::InvalidPolicy);
    let after = (
        std::fs::read(&g).unwrap(),
        std::fs::metadata(&g).unwrap().modified().unwrap(),
    );
    assert_eq!(before, after);
    // loudly: root's status and list say so
    let st = status(send(&s, 0, r#"{"type":"status","user":"alice"}"#).await);
    assert!(
        st.warnings.iter().any(|w| w.contains("has errors")),
        "{:?}",
        st.warnings
    );
    let Response::UserList(l) = send(&s, 0, r#"{"type":"list"}"#).await else {
        panic!()
    };
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("last policy that loaded")),
        "{:?}",
        l.warnings
    );
    // a user's own status does not carry it
    let st = status(send(&s, 1001, r#"{"type":"status"}"#).await);
    assert!(st.warnings.is_empty());
    // fixed: one reload clears it
    std::fs::write(d.path().join("p.yaml"), SITE).unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    let Response::UserList(l) = send(&s, 0, r#"{"type":"list"}"#).await else {
        panic!()
    };
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[tokio::test]
async fn a_reload_counts_and_limits_a_user_removed_from_an_exempt_group() {
    let (s, users, _d) = site(SITE);
    let live = Proc::new();
    s.systemd()
        .sessions
        .lock()
        .unwrap()
        .push(crate::systemd::LogindSession {
            id: "7".into(),
            uid: 1004,
            user: "ann".into(),
            leader: live.pid(),
            service: "sshd".into(),
            ..Default::default()
        });
    s.systemd().users.lock().unwrap().push((1004, "ann".into()));
    s.catch_up().await;
    s.systemd().start_slice(1004);
    assert!(s.ledger().get(1004).is_none(), "exempt: not tracked");
    assert_eq!(s.systemd().in_force(1004), systemds_own());
    // gpasswd -d ann admins; fairshare-ctl reload
    users.0.lock().unwrap()[4].groups.retain(|g| g != "admins");
    let ok = success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert!(ok.message.contains("ann"), "{}", ok.message);
    assert_eq!(s.systemd().in_force(1004), limited(2, 8, 500));
    assert_eq!(s.ledger().get(1004).map(|e| e.sessions.len()), Some(1));
    files_settle(&s).await;
    assert!(
        !layout(&s).user_file(1004).exists(),
        "at the plain default now"
    );
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1004), limited(2, 8, 500));
    let st = status(send(&s, 0, r#"{"type":"status","user":"ann"}"#).await);
    assert_eq!((st.allocated_cpu, st.sessions), (Some(Cpus::whole(2)), 1));
}

#[tokio::test]
async fn the_first_list_after_a_start_waits_for_the_catch_up() {
    let (s, _, _d) = site(SITE);
    let live = Proc::new();
    s.systemd()
        .sessions
        .lock()
        .unwrap()
        .push(crate::systemd::LogindSession {
            id: "9".into(),
            uid: 1002,
            user: "bob".into(),
            leader: live.pid(),
            service: "sshd".into(),
            ..Default::default()
        });
    *s.systemd().delay.lock().unwrap() = Some(Duration::from_millis(300));
    s.systemd().start_slice(1002);
    // the catch-up runs in the background, as in the daemon
    tokio::spawn({
        let s = s.clone();
        async move { s.catch_up().await }
    });
    tokio::task::yield_now().await;
    let Response::UserList(l) = send(&s, 0, r#"{"type":"list"}"#).await else {
        panic!()
    };
    assert!(l.users.iter().any(|u| u.uid == 1002), "{:?}", l.users);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[tokio::test]
async fn a_restart_on_the_same_files_makes_no_call_for_users_at_their_default() {
    let (s, _, d) = site(SITE);
    s.catch_up().await;
    s.systemd().start_slice(1003);
    let p = Proc::new();
    open(&s, 1003, &p).await;
    files_settle(&s).await;
    let ledger = s.ledger();
    let root = s.systemd().root().unwrap().to_path_buf();
    // the second daemon on the same directories (as after a restart)
    let fake = Fake::with_root(&root);
    fake.start_slice(1003);
    let s2 = Arc::new(with_fake(
        fake,
        people(),
        Policy::load(&d.path().join("p.yaml")).unwrap(),
        None,
    ));
    s2.restore(ledger).await;
    assert_eq!(s2.systemd().sets(1003), 0, "{:?}", s2.systemd().calls());
    assert_eq!(s2.systemd().in_force(1003), limited(1, 2, 500));
    assert_eq!(
        std::fs::read_dir(layout(&s2).user_dir(1003))
            .unwrap()
            .count(),
        1
    );
    assert!(layout(&s2).user_file(1003).ends_with(NAME));
}

#[tokio::test]
async fn a_slice_that_started_before_the_files_were_written_is_set_at_start() {
    // first install: users are logged in (no limits), then the package
    // writes the drop-ins (`fairshared --write-defaults`), then the daemon
    // starts: the files say the default, the running slices do not have it
    let (s, users, _d) = site(SITE);
    s.systemd()
        .users
        .lock()
        .unwrap()
        .push((1001, "alice".into()));
    s.systemd().start_slice(1001);
    assert_eq!(s.systemd().in_force(1001)[&Key::CpuQuota], None);
    let plan = crate::defaults::plan(&s.policy(), &*users, &[]);
    let written = Layout::under(s.systemd().root().unwrap());
    let d = crate::defaults::DropIns::new(Some(written));
    d.write_all(&plan.global, &plan.global_why, &plan.users)
        .unwrap();
    s.catch_up().await;
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
    files_settle(&s).await;
    assert!(control_files(&s, 1001).is_empty());
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
}

const FAIR: &str = "\
defaults: {cpu: 2, mem: 8G, tasks: 500, weight: 200, mem_low: 1G, swap: 0}
max: {cpu: 8, mem: 32G, weight: 400}
capacity: {cpu: 16, mem: 64G, overcommit: 1}
users:
  bob:
    defaults: {weight: 100, io_weight: 300, swap: max}
";

/// Issue 15: the fair-share keys go the way of the ceilings: in the policy
/// default's drop-in, in a user's own, and on running slices by one call of
/// the keys that change (a weight alone), never a stray "infinity" for a
/// guarantee (MemoryLow's unset value is 0).
#[tokio::test]
async fn weights_guarantee_and_swap_go_into_the_dropins_and_onto_running_slices() {
    let (s, _, d) = site(FAIR);
    s.catch_up().await;
    let g = std::fs::read_to_string(layout(&s).global_file()).unwrap();
    for line in ["CPUWeight=200\n", "MemorySwapMax=0\n"] {
        assert!(g.contains(line), "{line} in {g}");
    }
    assert!(!g.contains("IOWeight"), "{g}");
    // never the guarantee: it is held from a login to the last logout,
    // counted against capacity.mem_low, not given to every slice that starts
    assert!(!g.contains("MemoryLow"), "{g}");
    // bob's own file: his weights, and no swap limit
    let u = std::fs::read_to_string(layout(&s).user_file(1002)).unwrap();
    assert!(
        u.contains("CPUWeight=100\n") && u.contains("IOWeight=300\n"),
        "{u}"
    );
    assert!(!u.contains("MemorySwapMax"), "{u}");
    // slices that start get them from the files: a login's one call
    // carries the guarantee alone
    s.systemd().start_slice(1001);
    s.systemd().start_slice(1002);
    let (a, b) = (Proc::new(), Proc::new());
    open(&s, 1001, &a).await;
    assert_eq!(
        last_set(&s),
        [("MemoryLow".to_string(), PropertyValue::U64(1 << 30))]
    );
    open(&s, 1002, &b).await;
    assert_eq!(
        last_set(&s),
        [("MemoryLow".to_string(), PropertyValue::U64(1 << 30))]
    );
    assert_eq!(s.systemd().sets(1001) + s.systemd().sets(1002), 2);
    let alice = s.systemd().in_force(1001);
    assert_eq!(alice[&Key::CpuWeight], amount(200));
    assert_eq!(alice[&Key::MemoryLow], amount(1 << 30));
    assert_eq!(alice[&Key::MemorySwapMax], amount(0));
    let bob = s.systemd().in_force(1002);
    assert_eq!(bob[&Key::IoWeight], amount(300));
    assert_eq!(bob[&Key::MemorySwapMax], None);
    // a changed weight reaches the running slice as one property
    std::fs::write(
        d.path().join("p.yaml"),
        FAIR.replace("weight: 200,", "weight: 300,"),
    )
    .unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(s.systemd().sets(1001), 2);
    assert_eq!(
        last_set(&s),
        [("CPUWeight".to_string(), PropertyValue::U64(300))]
    );
    assert_eq!(s.systemd().in_force(1001)[&Key::CpuWeight], amount(300));
    // a policy without the guarantee puts MemoryLow back to 0, not infinity
    std::fs::write(d.path().join("p.yaml"), FAIR.replace(" mem_low: 1G,", "")).unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    let props = last_set(&s);
    assert!(
        props.contains(&("MemoryLow".to_string(), PropertyValue::U64(0))),
        "{props:?}"
    );
    // memory and disk agree
    let before = s.systemd().in_force(1001);
    s.systemd().daemon_reload();
    assert_eq!(s.systemd().in_force(1001), before);
}

/// IO limits (issue 15): the policy default's drop-in lists them per disk
/// (two targets on one disk merged, the lower of each kind), a login at the
/// default makes no D-Bus call, and a reload that drops them sets the
/// running slice back to systemd's default, the empty list, in one call of
/// only those keys.
#[tokio::test]
async fn io_limits_reach_the_default_drop_in_and_lifting_them_gives_back_the_empty_list() {
    crate::iodisk::pretend("/fs-test-io", 254, 0, "vda");
    crate::iodisk::pretend("/fs-test-io2", 254, 0, "vda");
    let with_io = SITE.replace(
        "defaults: {cpu: 2, mem: 8G, tasks: 500}",
        "defaults: {cpu: 2, mem: 8G, tasks: 500, io: {/fs-test-io: {write_bw: 20M}, /fs-test-io2: {write_bw: 10M, read_iops: 300}}}",
    );
    let (s, _, d) = site(&with_io);
    s.catch_up().await;
    let g = std::fs::read_to_string(layout(&s).global_file()).unwrap();
    assert!(
        g.contains("IOWriteBandwidthMax=/fs-test-io 10000000\n")
            && g.contains("IOReadIOPSMax=/fs-test-io 300\n")
            && !g.contains("fs-test-io2"),
        "{g}"
    );
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    assert_eq!(s.systemd().sets(1001), 0, "{:?}", s.systemd().calls());
    let io = s.systemd().in_force(1001)[&Key::IoWriteBandwidthMax];
    assert_eq!(
        io.map(|v| v.render(Key::IoWriteBandwidthMax)).as_deref(),
        Some("/fs-test-io 10000000")
    );
    std::fs::write(d.path().join("p.yaml"), SITE).unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(s.systemd().sets(1001), 1);
    let mut props = last_set(&s);
    props.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        props,
        vec![
            ("IOReadIOPSMax".to_string(), PropertyValue::Devices(0)),
            ("IOWriteBandwidthMax".to_string(), PropertyValue::Devices(0)),
        ]
    );
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
    let g = std::fs::read_to_string(layout(&s).global_file()).unwrap();
    assert!(!g.contains("IO"), "{g}");
}

/// The calls that set `user.slice`.
fn user_slice_sets(s: &Service<Fake>) -> Vec<Vec<(String, PropertyValue)>> {
    s.systemd()
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetUnit(u, p) if u == "user.slice" => Some(p),
            _ => None,
        })
        .collect()
}

/// Memory guarantees (issue 15): while the policy gives any, `user.slice`
/// carries their total, `capacity.mem_low` (on v2 a user's `memory.low`
/// counts only as far as its parents' do), in its drop-in and on the running
/// slice, set once; a policy without guarantees takes both back.
#[tokio::test]
async fn user_slice_carries_the_total_of_the_guarantees_while_the_policy_gives_any() {
    let with_low = SITE.replace(
        "defaults: {cpu: 2, mem: 8G, tasks: 500}",
        "defaults: {cpu: 2, mem: 8G, tasks: 500, mem_low: 1G}",
    );
    let (s, _, d) = site(&with_low);
    s.catch_up().await;
    // half of capacity.mem (64G), the default total
    let total = 32u64 << 30;
    assert_eq!(
        user_slice_sets(&s),
        vec![vec![("MemoryLow".to_string(), PropertyValue::U64(total))]]
    );
    let f = layout(&s).user_slice_file();
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains(&format!("MemoryLow={total}\n")), "{text}");
    // a reload that changes nothing about it makes no call
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(user_slice_sets(&s).len(), 1);
    // no guarantees any more: the file goes, the slice gets systemd's 0
    std::fs::write(d.path().join("p.yaml"), SITE).unwrap();
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(
        user_slice_sets(&s).last(),
        Some(&vec![("MemoryLow".to_string(), PropertyValue::U64(0))])
    );
    assert!(!f.exists());
    // and a policy that never gave any leaves user.slice alone
    success(send(&s, 0, r#"{"type":"reload"}"#).await);
    assert_eq!(user_slice_sets(&s).len(), 2);
}

/// A user's resize of a fair-share field (issue 15) reaches their running
/// slice in one call of that key alone; an old client's request (no such
/// fields) still resizes the ceilings; release takes it back.
#[tokio::test]
async fn a_resize_of_the_weight_sets_only_cpuweight_on_the_slice() {
    let with_weight = SITE.replace(
        "max: {cpu: 8, mem: 32G}",
        "max: {cpu: 8, mem: 32G, weight: 400}",
    );
    let (s, _, _d) = site(&with_weight);
    s.catch_up().await;
    s.systemd().start_slice(1001);
    let p = Proc::new();
    open(&s, 1001, &p).await;
    success(send(&s, 1001, r#"{"type":"request_resources","weight":300}"#).await);
    assert_eq!(
        last_set(&s),
        vec![("CPUWeight".to_string(), PropertyValue::U64(300))]
    );
    let e = error(send(&s, 1001, r#"{"type":"request_resources","weight":500}"#).await);
    assert!(e.error.contains("maximum of 400"), "{}", e.error);
    success(send(&s, 1001, r#"{"type":"request_resources","cpu":3}"#).await);
    assert_eq!(s.systemd().in_force(1001)[&Key::CpuWeight], amount(300));
    success(send(&s, 1001, r#"{"type":"release"}"#).await);
    assert_eq!(s.systemd().in_force(1001), limited(2, 8, 500));
}

/// Memory guarantees within capacity.mem_low (issue 15).
mod guarantees;
