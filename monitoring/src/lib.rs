//! Keeps the shipped Grafana dashboard and Prometheus rules true to what
//! fairshared exports, and turns expositions recorded on a test host into
//! `promtool test rules` input.
//!
//! * [`exposition`]: the metric families and label names of a Prometheus
//!   text exposition (what `fairshare-ctl metrics` prints).
//! * [`used_in`]: the metric and label names a PromQL expression reads
//!   (parsed with `promql-parser`, not pattern-matched).
//! * [`dashboard_queries`] and [`rule_queries`]: every query of the
//!   dashboard JSON and every `expr` of a rule file.
//! * [`recording`] and [`input_series`]: recorded expositions to promtool's
//!   `input_series`.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};

/// Series that come from node_exporter, not from fairshared: the textfile
/// collector's own figures about the file fairshare writes.
pub const NODE_EXPORTER_METRICS: [&str; 2] =
    ["node_textfile_mtime_seconds", "node_textfile_scrape_error"];
/// Labels node_exporter's textfile metrics carry.
pub const NODE_EXPORTER_LABELS: [&str; 1] = ["file"];
/// Labels Prometheus adds to every scraped series.
pub const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Metric families of an exposition, each with the label names its samples carry.
pub fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.entry(name.to_string()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((name, labels, _)) = sample(line) {
            out.entry(name).or_default().extend(labels.into_keys());
        }
    }
    out
}

/// One sample line: name, labels, value (as written).
pub fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, String)> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        let mut key = String::new();
        let mut val = String::new();
        let mut in_value = false;
        while let Some((i, c)) = chars.next() {
            if in_value {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(match n {
                                'n' => '\n',
                                other => other,
                            });
                        }
                    }
                    '"' => {
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut val));
                        in_value = false;
                    }
                    c => val.push(c),
                }
                continue;
            }
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                '"' => in_value = true,
                '=' | ',' | ' ' => {}
                c => key.push(c),
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.to_string();
    Some((name, labels, value))
}

/// What one PromQL expression reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Used {
    /// Metric names, each with the label names its selectors match on.
    pub metrics: BTreeMap<String, BTreeSet<String>>,
    /// Labels named in `by`, `without`, `on` and `ignoring`.
    pub grouping: BTreeSet<String>,
}

struct Collect(Used);

impl ExprVisitor for Collect {
    type Error = String;

    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        let mut select = |vs: &parser::VectorSelector| -> Result<(), String> {
            let named = vs
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone());
            let name = vs
                .name
                .clone()
                .or(named)
                .ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
            let labels = self.0.metrics.entry(name).or_default();
            for m in vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
            {
                if m.name != "__name__" {
                    labels.insert(m.name.clone());
                }
            }
            Ok(())
        };
        match e {
            Expr::VectorSelector(vs) => select(vs)?,
            Expr::MatrixSelector(ms) => select(&ms.vs)?,
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.0.grouping.extend(m.labels().labels.iter().cloned());
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    self.0.grouping.extend(m.labels().labels.iter().cloned());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Grafana's own variables, put in place of a value so the query parses.
const GRAFANA_INTERVALS: [&str; 4] = ["$__rate_interval", "$__interval", "$__range", "$__range_s"];

/// Parses `query` (a rule's `expr`, or a dashboard query with Grafana's
/// interval variables and `$var`s inside label values) and says what it reads.
pub fn used_in(query: &str) -> Result<Used, String> {
    let mut q = query.to_string();
    for v in GRAFANA_INTERVALS {
        q = q.replace(v, "5m");
    }
    let expr = parser::parse(&q).map_err(|e| format!("{query}: {e}"))?;
    let mut c = Collect(Used::default());
    walk_expr(&mut c, &expr)?;
    Ok(c.0)
}

/// Every query of a Grafana dashboard: panel targets (in rows too) and
/// `label_values(SELECTOR, LABEL)` variables, given as `(where, query)`.
/// A variable's label is checked by reading it as `count by (LABEL) (SELECTOR)`.
pub fn dashboard_queries(json: &serde_json::Value) -> Result<Queries, String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&json["panels"], &mut out);
    for v in json["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .or(v["definition"].as_str())
            .ok_or_else(|| format!("variable {} has no query", v["name"]))?;
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                format!(
                    "variable {}: only label_values(SELECTOR, LABEL) is checked: {q}",
                    v["name"]
                )
            })?;
        let (selector, label) = inner
            .rsplit_once(',')
            .ok_or_else(|| format!("variable {}: {q}", v["name"]))?;
        out.push((
            format!("variable {}", v["name"]),
            format!("count by ({}) ({})", label.trim(), selector.trim()),
        ));
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: String,
}

/// Queries as `(where it is, PromQL)`.
pub type Queries = Vec<(String, String)>;

/// Every rule's `expr` as `(where, query)`, and the names recording rules define.
pub fn rule_queries(yaml: &str) -> Result<(Queries, Vec<String>), String> {
    let f: RuleFile = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let mut queries = Vec::new();
    let mut recorded = Vec::new();
    for g in f.groups {
        for r in g.rules {
            let name = r.alert.or(r.record.clone()).unwrap_or_default();
            if let Some(rec) = r.record {
                recorded.push(rec);
            }
            queries.push((format!("rule {}/{name}", g.name), r.expr));
        }
    }
    Ok((queries, recorded))
}

/// What is wrong with `queries` given the exported `families`: unknown
/// metrics, and labels no exported series carries. Empty when all is well.
pub fn check(
    queries: &[(String, String)],
    families: &BTreeMap<String, BTreeSet<String>>,
    recorded_rules: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    let all_labels: BTreeSet<&str> = families
        .values()
        .flatten()
        .map(String::as_str)
        .chain(TARGET_LABELS)
        .chain(NODE_EXPORTER_LABELS)
        .collect();
    for (place, q) in queries {
        let used = match used_in(q) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("{place}: does not parse: {e}"));
                continue;
            }
        };
        for (metric, labels) in &used.metrics {
            let known: BTreeSet<&str> = if let Some(l) = families.get(metric) {
                l.iter().map(String::as_str).chain(TARGET_LABELS).collect()
            } else if NODE_EXPORTER_METRICS.contains(&metric.as_str()) {
                NODE_EXPORTER_LABELS
                    .into_iter()
                    .chain(TARGET_LABELS)
                    .collect()
            } else if recorded_rules.contains(metric) {
                all_labels.clone()
            } else {
                problems.push(format!(
                    "{place}: `{metric}` is not a metric fairshared exports (nor node_exporter's textfile collector): {q}"
                ));
                continue;
            };
            for l in labels {
                if !known.contains(l.as_str()) {
                    problems.push(format!("{place}: `{metric}` has no label `{l}`: {q}"));
                }
            }
        }
        for l in &used.grouping {
            if !all_labels.contains(l.as_str()) {
                problems.push(format!(
                    "{place}: no exported series has the label `{l}`: {q}"
                ));
            }
        }
    }
    problems
}

/// A recording: expositions taken `step` seconds apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub step: u64,
    pub samples: Vec<String>,
}

/// Marks the start of each exposition in a recording file.
pub const MARK: &str = "# fairshare-record";

/// Reads a recording file: a first line `# fairshare-record step=15`, then
/// each exposition after a line `# fairshare-record sample=N`.
pub fn recording(text: &str) -> Result<Recording, String> {
    let mut lines = text.lines();
    let step = lines
        .next()
        .and_then(|l| l.strip_prefix(MARK))
        .and_then(|l| l.trim().strip_prefix("step="))
        .and_then(|s| s.parse().ok())
        .ok_or("a recording starts with `# fairshare-record step=SECONDS`")?;
    let mut samples: Vec<String> = Vec::new();
    for l in lines {
        if l.starts_with(MARK) {
            samples.push(String::new());
        } else if let Some(cur) = samples.last_mut() {
            cur.push_str(l);
            cur.push('\n');
        }
    }
    if samples.is_empty() {
        return Err("the recording holds no samples".into());
    }
    Ok(Recording { step, samples })
}

/// promtool's `input_series` for a recording, as YAML list items indented by
/// `indent` spaces: every series of every sample, with the target labels
/// `extra` added, `_` where a series was missing from a sample.
pub fn input_series(r: &Recording, extra: &[(&str, &str)], indent: usize) -> String {
    let mut series: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    let n = r.samples.len();
    for (i, text) in r.samples.iter().enumerate() {
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((name, mut labels, value)) = sample(line) else {
                continue;
            };
            for (k, v) in extra {
                labels.insert((*k).to_string(), (*v).to_string());
            }
            let sel: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
                .collect();
            let key = format!("{name}{{{}}}", sel.join(","));
            series.entry(key).or_insert_with(|| vec![None; n])[i] = Some(value);
        }
    }
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (key, values) in series {
        let v: Vec<&str> = values.iter().map(|v| v.as_deref().unwrap_or("_")).collect();
        out.push_str(&format!(
            "{pad}- series: {}\n{pad}  values: \"{}\"\n",
            serde_json::Value::from(key),
            v.join(" ")
        ));
    }
    out
}

/// Lines that fence the generated part of a promtool test file.
pub const BEGIN: &str = "# BEGIN recorded series (fairshare-monitoring series; do not edit)";
pub const END: &str = "# END recorded series";

/// `test` with the lines between [`BEGIN`] and [`END`] replaced by `series`.
pub fn splice(test: &str, series: &str) -> Result<String, String> {
    let b = test.find(BEGIN).ok_or("no BEGIN line")?;
    let after_begin = test[b..]
        .find('\n')
        .map(|i| b + i + 1)
        .ok_or("nothing after BEGIN")?;
    let e = test[after_begin..]
        .find(END)
        .map(|i| after_begin + i)
        .ok_or("no END line")?;
    let end_line_start = test[..e].rfind('\n').map_or(0, |i| i + 1);
    Ok(format!(
        "{}{}{}",
        &test[..after_begin],
        series,
        &test[end_line_start..]
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_exposition() {
        let t = "# HELP a_total A.\n# TYPE a_total counter\na_total{type=\"x\",user=\"al\\\"ice\"} 3\n# TYPE b gauge\nb 1.5\n";
        let f = exposition(t);
        assert_eq!(
            f["a_total"],
            BTreeSet::from(["type".to_string(), "user".to_string()])
        );
        assert!(f["b"].is_empty());
        let (n, l, v) = sample("a_total{type=\"x\",user=\"al\\\"ice\"} 3").unwrap();
        assert_eq!(
            (n.as_str(), l["user"].as_str(), v.as_str()),
            ("a_total", "al\"ice", "3")
        );
    }

    #[test]
    fn finds_metrics_and_labels_in_queries() {
        let u = used_in(
            "sum by (instance) (rate(x_total{user=~\"$user\"}[$__rate_interval])) / on (instance) y > 0.9 or vector(0)",
        )
        .unwrap();
        assert_eq!(u.metrics.keys().collect::<Vec<_>>(), ["x_total", "y"]);
        assert!(u.metrics["x_total"].contains("user"));
        assert_eq!(u.grouping, BTreeSet::from(["instance".to_string()]));
        assert!(used_in("rate(x[5m]").is_err());
    }

    #[test]
    fn check_reports_unknown_names_and_labels() {
        let fam = exposition("# TYPE fairshare_a gauge\nfairshare_a{user=\"u\"} 1\n");
        let ok = vec![(
            "p".to_string(),
            "fairshare_a{user=\"x\",instance=\"h\"} + on (instance) (time() - node_textfile_mtime_seconds{file=\"f\"})"
                .to_string(),
        )];
        assert!(
            check(&ok, &fam, &[]).is_empty(),
            "{:?}",
            check(&ok, &fam, &[])
        );
        let bad = vec![
            ("p".to_string(), "fairshare_b".to_string()),
            ("q".to_string(), "fairshare_a{usr=\"x\"}".to_string()),
            ("r".to_string(), "sum by (colour) (fairshare_a)".to_string()),
        ];
        let p = check(&bad, &fam, &[]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("`fairshare_b` is not a metric"));
        assert!(p[1].contains("no label `usr`"));
        assert!(p[2].contains("`colour`"));
    }

    #[test]
    fn dashboard_queries_include_variables() {
        let d = serde_json::json!({
            "panels": [{"title": "r", "type": "row", "panels": [{"title": "p", "targets": [{"expr": "a"}]}]}],
            "templating": {"list": [
                {"name": "instance", "type": "query", "query": {"query": "label_values(b{x=\"1\"}, instance)"}},
                {"name": "datasource", "type": "datasource", "query": "prometheus"}
            ]}
        });
        let q = dashboard_queries(&d).unwrap();
        assert_eq!(q[0].1, "a");
        assert_eq!(q[1].1, "count by (instance) (b{x=\"1\"})");
    }

    #[test]
    fn recordings_become_input_series() {
        let r = recording(
            "# fairshare-record step=15\n# fairshare-record sample=0\n# TYPE a gauge\na{user=\"u\"} 1\nb 2\n# fairshare-record sample=1\na{user=\"u\"} 3\n",
        )
        .unwrap();
        assert_eq!(r.step, 15);
        let s = input_series(&r, &[("instance", "h:9100")], 2);
        assert_eq!(
            s,
            "  - series: \"a{instance=\\\"h:9100\\\",user=\\\"u\\\"}\"\n    values: \"1 3\"\n  - series: \"b{instance=\\\"h:9100\\\"}\"\n    values: \"2 _\"\n"
        );
        let test = "x:\n  # BEGIN recorded series (fairshare-monitoring series; do not edit)\n  - old\n  # END recorded series\ny: 1\n";
        let spliced = splice(test, "  - new\n").unwrap();
        assert_eq!(
            spliced,
            "x:\n  # BEGIN recorded series (fairshare-monitoring series; do not edit)\n  - new\n  # END recorded series\ny: 1\n"
        );
        assert!(recording("nothing").is_err());
    }
}
