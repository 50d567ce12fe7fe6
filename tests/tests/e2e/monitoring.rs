//! The monitoring that ships in `deploy/`: the Prometheus config and alert
//! rules pass `promtool check` and their unit tests (`promtool test rules`),
//! the Grafana dashboard is well-formed, its queries parse as PromQL, and
//! every metric name the rules and the dashboard use is one the binaries
//! declare: renaming a metric without them fails here.
//!
//! `promtool` comes from Debian's `prometheus` package
//! (`deploy/install-debian-packages.sh`).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::exposition::{declared, declared_problems, promql_names, series_names};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is missing: run deploy/install-debian-packages.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no .{ext} file in {}", dir.display());
    v
}

/// The `expr:` values of a rules file (inline or `|` blocks).
fn rule_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let ind = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && ind <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                out.push(block.join("\n"));
                continue;
            }
            out.push(rest.to_string());
        }
        i += 1;
    }
    out
}

/// Metric names used in `exprs` that the binaries do not declare.
fn unknown_names(exprs: &[String], known: &BTreeSet<String>) -> Vec<String> {
    exprs
        .iter()
        .flat_map(|e| promql_names(e))
        .filter(|n| !known.contains(n))
        .collect()
}

#[test]
fn declared_metrics_follow_the_naming_rules() {
    let d = declared();
    let problems = declared_problems(&d);
    assert!(problems.is_empty(), "{problems:#?}");
    // What the issue asks operators to see, by name.
    let names: HashSet<&str> = d.iter().map(|f| f.name.as_str()).collect();
    for must in [
        "ingest_requests_total",
        "ingest_verification_failures_total",
        "ingest_signature_secret_matches_total",
        "ingest_body_bytes",
        "ingest_ack_latency_seconds",
        "ingest_produce_latency_seconds",
        "ingest_in_flight_requests",
        "ingest_producer_queue_depth",
        "ingest_broker_errors_total",
        "processors_consumed_total",
        "processors_consumer_lag",
        "processors_quarantined_total",
        "processors_reorder_buffered",
        "processors_reorder_gaps_total",
        "processors_late_events_total",
        "processors_duplicates_dropped_total",
        "processors_dedupe_entries",
        "processors_routed_total",
        "processors_sink_retries_total",
        "processors_dead_lettered_total",
        "processors_sink_latency_seconds",
        "processors_crm_breaker_open",
        "processors_commit_latency_seconds",
    ] {
        assert!(names.contains(must), "{must} is not declared");
    }
}

#[test]
fn prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    // Also loads every rule file the config names.
    promtool(&["check", "config", "prometheus.yml"], &dir);
    let rules = files(&dir.join("rules"), "yml");
    for r in &rules {
        promtool(&["check", "rules", r.to_str().unwrap()], &dir);
    }
    for t in files(&dir.join("tests"), "yml") {
        let out = promtool(&["test", "rules", t.to_str().unwrap()], &dir);
        assert!(out.contains("SUCCESS"), "{out}");
    }
    // Every alert has a unit test that expects it to fire.
    let tests: String = files(&dir.join("tests"), "yml")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut known = series_names(&declared());
    known.insert("up".into());
    for r in &rules {
        let text = std::fs::read_to_string(r).unwrap();
        let exprs = rule_exprs(&text);
        assert!(!exprs.is_empty(), "{}: no expr", r.display());
        let unknown = unknown_names(&exprs, &known);
        assert!(
            unknown.is_empty(),
            "{} uses metrics the binaries do not declare: {unknown:?}",
            r.display()
        );
        for alert in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
        {
            let fires = tests
                .split("alertname: ")
                .skip(1)
                .filter_map(|t| t.strip_prefix(alert)?.strip_prefix('\n'))
                .any(|t| !t.trim_start().starts_with("exp_alerts: []"));
            assert!(
                fires,
                "no unit test in deploy/prometheus/tests expects {alert} to fire"
            );
        }
    }
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels is an array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

#[test]
fn grafana_dashboard_is_well_formed_and_queries_only_declared_metrics() {
    let dir = deploy().join("grafana");
    let mut known = series_names(&declared());
    known.insert("up".into());
    let mut used = BTreeSet::new();
    for path in files(&dir.join("dashboards"), "json") {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let d: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        for field in ["title", "uid"] {
            assert!(
                d[field].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: no {field}"
            );
        }
        assert!(
            d["schemaVersion"].as_u64().is_some(),
            "{name}: no schemaVersion"
        );
        assert!(
            d["id"].is_null(),
            "{name}: a provisioned dashboard has id null"
        );
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has_ds_var = vars
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource");
        assert!(has_ds_var, "{name}: no `datasource` variable");
        let mut ids = HashSet::new();
        let mut exprs = Vec::new();
        let all = panels(&d);
        assert!(all.len() >= 10, "{name}: {} panels", all.len());
        for p in all {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} twice ({title:?})");
            assert!(!title.is_empty(), "{name}: panel {id} has no title");
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            assert!(
                matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && w > 0 && h > 0)
                    && g["y"].as_u64().is_some(),
                "{name}: panel {id} {title:?}: bad gridPos {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {id} {title:?} does not use the datasource variable"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(
                !targets.is_empty(),
                "{name}: panel {id} {title:?} has no query"
            );
            let mut refs = HashSet::new();
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default().to_string();
                let ours = promql_names(&expr);
                assert!(
                    !ours.is_empty() || expr.contains("up{"),
                    "{name}: panel {id} {title:?}: {expr:?} queries none of our metrics"
                );
                assert!(
                    refs.insert(t["refId"].as_str().unwrap_or_default().to_string()),
                    "{name}: panel {id} {title:?}: refId twice"
                );
                used.extend(ours);
                exprs.push(expr);
            }
        }
        let unknown = unknown_names(&exprs, &known);
        assert!(
            unknown.is_empty(),
            "{name} queries metrics the binaries do not declare: {unknown:?}"
        );
        // Every query parses as PromQL: promtool checks them as recording
        // rules, with Grafana's variables replaced by what they stand for.
        let tmp = tempfile::tempdir().unwrap();
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, e) in exprs.iter().enumerate() {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            let e = e.replace('\n', " ").replace('\'', "''");
            rules.push_str(&format!(
                "      - record: dashboard:q{i}\n        expr: '{e}'\n"
            ));
        }
        let file = tmp.path().join("dashboard.yml");
        std::fs::write(&file, rules).unwrap();
        promtool(&["check", "rules", file.to_str().unwrap()], tmp.path());
    }
    // What the issue asks the dashboard to show.
    for must in [
        "ingest_requests_total",
        "ingest_refusals_total",
        "ingest_ack_latency_seconds_bucket",
        "processors_routed_total",
        "processors_consumer_lag",
        "processors_sink_retries_total",
        "processors_crm_breaker_open",
        "processors_dead_lettered_total",
        "processors_quarantined_total",
    ] {
        assert!(used.contains(must), "no dashboard panel shows {must}");
    }
    // Provisioning files name the dashboards folder and a Prometheus
    // data source.
    let prov = dir.join("provisioning");
    let dashboards =
        std::fs::read_to_string(prov.join("dashboards/webhook-pipeline.yaml")).unwrap();
    assert!(dashboards.contains("apiVersion: 1") && dashboards.contains("type: file"));
    let ds = std::fs::read_to_string(prov.join("datasources/prometheus.yaml")).unwrap();
    assert!(ds.contains("apiVersion: 1") && ds.contains("type: prometheus"));
}

#[test]
fn a_renamed_metric_is_caught() {
    let mut known = series_names(&declared());
    known.insert("up".into());
    let exprs = vec![
        "sum(rate(ingest_requests_total[5m]))".to_string(),
        "sum(rate(ingest_request_total[5m]))".to_string(),
        "histogram_quantile(0.99, sum by (le) (rate(ingest_ack_latency_seconds_bucket[5m])))"
            .to_string(),
    ];
    assert_eq!(unknown_names(&exprs, &known), ["ingest_request_total"]);
    let rules = "      - alert: A\n        expr: |\n          sum(x_total)\n            > processors_nope\n        for: 1m\n      - alert: B\n        expr: up == 0\n";
    assert_eq!(
        rule_exprs(rules),
        ["sum(x_total)\n> processors_nope", "up == 0"]
    );
}
