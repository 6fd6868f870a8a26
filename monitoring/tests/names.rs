//! The shipped dashboard and alert rules read only metrics (and labels)
//! fairshared really exports. The exposition is made by the daemon's own
//! code: a `Service` on the in-memory systemd, a user with a resize and a
//! cgroup tree with usage figures, asked for `metrics` as root, exactly as
//! `fairshare-ctl metrics` asks it. No hand-kept list of names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use fairshare_monitoring::{check, dashboard_queries, exposition, recording, rule_queries};
use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::units::{Bytes, Cpus};
use fairshare_proto::wire::{Request, Response, parse_request};
use fairshared::cgroup::Cgroups;
use fairshared::service::{Directory, Peer, Service};
use fairshared::systemd::Fake;
use fairshared::users::LookupError;

struct Users;

impl Directory for Users {
    fn by_uid(&self, uid: u32) -> Result<Option<Identity>, LookupError> {
        Ok(match uid {
            0 => Some(Identity {
                uid: 0,
                name: "root".into(),
                groups: vec!["root".into()],
            }),
            1001 => Some(Identity {
                uid,
                name: "alice".into(),
                groups: vec!["alice".into()],
            }),
            _ => None,
        })
    }
    fn by_name(&self, name: &str) -> Result<Option<Identity>, LookupError> {
        match name {
            "alice" => self.by_uid(1001),
            "root" => self.by_uid(0),
            _ => Ok(None),
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The exposition fairshared's code produces for a host with one busy user.
fn daemon_exposition() -> String {
    let cg = tempfile::tempdir().unwrap();
    // a cgroup v2 tree with alice's slice and its usage files
    std::fs::write(cg.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let slice = cg.path().join("user.slice/user-1001.slice");
    std::fs::create_dir_all(&slice).unwrap();
    for (f, v) in [
        ("memory.current", "104857600\n"),
        ("pids.current", "7\n"),
        (
            "cpu.stat",
            "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\nnr_periods 50\nnr_throttled 20\nthrottled_usec 300\n",
        ),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        ),
    ] {
        std::fs::write(slice.join(f), v).unwrap();
    }
    let policy = Policy::from_sources(&[(
        "p.yaml".into(),
        "defaults: {cpu: 1, mem: 1G}\nmax: {cpu: 4, mem: 4G}\n".into(),
    )])
    .unwrap();
    let service = Arc::new(Service::new(
        Fake::default(),
        Arc::new(Users),
        policy,
        HostResources {
            cpus: Cpus::whole(4),
            mem: Bytes(16 << 30),
        },
        Cgroups::detect(cg.path()),
        None,
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let send = |uid: u32, line: &str| {
            let req: Request = parse_request(line.as_bytes()).unwrap();
            let s = Arc::clone(&service);
            async move { s.handle(Peer { uid, pid: None }, req).await }
        };
        send(1001, r#"{"type":"request_resources","cpu":2}"#).await;
        send(1001, r#"{"type":"request_resources","cpu":99}"#).await;
        match send(0, r#"{"type":"metrics"}"#).await {
            Response::Metrics { text } => text,
            other => panic!("metrics answered {other:?}"),
        }
    })
}

fn families() -> BTreeMap<String, BTreeSet<String>> {
    let text = daemon_exposition();
    let f = exposition(&text);
    // the exposition is the real one, with per-user usage
    for want in [
        "fairshare_cpu_usage_seconds_total",
        "fairshare_memory_usage_bytes",
        "fairshare_oom_kills",
        "fairshare_capacity_cpus",
    ] {
        assert!(f.contains_key(want), "{want} missing from\n{text}");
    }
    assert!(
        f["fairshare_memory_usage_bytes"].contains("user"),
        "no per-user usage in\n{text}"
    );
    f
}

#[test]
fn dashboard_reads_only_exported_metrics() {
    let fam = families();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("grafana/fairshare-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&json).unwrap();
    assert!(queries.len() > 20, "{queries:?}");
    let problems = check(&queries, &fam, &[]);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // every family the daemon exports about users and capacity is shown somewhere
    let shown: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| {
            fairshare_monitoring::used_in(q)
                .unwrap()
                .metrics
                .into_keys()
        })
        .collect();
    let missing: Vec<&String> = fam.keys().filter(|m| !shown.contains(*m)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn alert_rules_read_only_exported_metrics() {
    let fam = families();
    let yaml = std::fs::read_to_string(root().join("prometheus/fairshare-alerts.yml")).unwrap();
    let (queries, recorded) = rule_queries(&yaml).unwrap();
    assert!(queries.len() >= 8, "{queries:?}");
    let problems = check(&queries, &fam, &recorded);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_recorded_series_are_exported_ones_and_in_the_promtool_test() {
    let fam = families();
    let rec =
        recording(&std::fs::read_to_string(root().join("tests/recorded.prom")).unwrap()).unwrap();
    assert!(rec.samples.len() >= 40, "{} samples", rec.samples.len());
    // a recording from an older daemon would test rules against names it no longer exports
    for (i, s) in rec.samples.iter().enumerate() {
        for (name, labels) in exposition(s) {
            let known = fam
                .get(&name)
                .unwrap_or_else(|| panic!("sample {i}: {name} is not exported any more"));
            assert!(labels.is_subset(known), "sample {i}: {name} {labels:?}");
        }
    }
    let test_file = root().join("tests/fairshare-alerts.test.yml");
    let test = std::fs::read_to_string(&test_file).unwrap();
    let want = fairshare_monitoring::splice(
        &test,
        &fairshare_monitoring::input_series(
            &rec,
            &[("instance", "login1:9100"), ("job", "node")],
            6,
        ),
    )
    .unwrap();
    assert!(
        want == test,
        "{} is not up to date with tests/recorded.prom; run: cargo run -p fairshare-monitoring -- series monitoring/tests/recorded.prom monitoring/tests/fairshare-alerts.test.yml",
        test_file.display()
    );
}
