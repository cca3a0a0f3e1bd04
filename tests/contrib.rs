//! The files in `contrib/`: the Grafana dashboard (JSON) and the Prometheus alert rules (YAML)
//! parse, and every `tapis_webodm_sync_*` series they query is one a running daemon's
//! `/metrics` declares (counters as `_total`, histograms as `_bucket`/`_sum`/`_count`).

mod service_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use service_support::*;
use yaml_rust2::{Yaml, YamlLoader};

const PREFIX: &str = "tapis_webodm_sync_";

/// Every `tapis_webodm_sync_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every `expr` of the dashboard's panels (and of its templating queries).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The series names `/metrics` declares, from its `# TYPE` lines.
fn declared(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            _ => {
                out.insert(name.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_use_only_series_the_daemon_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/tapis-webodm-sync.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for p in panels {
        assert!(p["title"].is_string() && p["gridPos"].is_object(), "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
    }
    let mut dash_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut dash_exprs);

    let rules = YamlLoader::load_from_str(
        &std::fs::read_to_string(root.join("prometheus/tapis-webodm-sync.rules.yml")).unwrap(),
    )
    .expect("the rules are YAML");
    let mut rule_exprs = Vec::new();
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_vec().expect("groups") {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: expr"));
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            assert!(
                !matches!(rule["labels"]["severity"], Yaml::BadValue),
                "{name}"
            );
            alerts.push(name.to_string());
            rule_exprs.push(expr.to_string());
        }
    }
    for wanted in [
        "TapisWebodmSyncNoSuccessfulPass",
        "TapisWebodmSyncErrorsRising",
        "TapisWebodmSyncFlightStuck",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} in {alerts:?}");
    }

    // A running daemon's /metrics, with notifications on (their series exist per channel).
    let sim = start_sim(&spec(2, 1_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1h\"")],
        &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[notify]\nwebhook = \"http://127.0.0.1:{}/\"\n",
            free_port()
        ),
    );
    let d = Daemon::start(&config, false, &[]);
    d.wait_log("pass finished", 1, Duration::from_secs(30));
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = declared(&text);
    assert!(
        exported.contains("tapis_webodm_sync_passes_total"),
        "{text}"
    );

    for (file, exprs) in [("dashboard", &dash_exprs), ("rules", &rule_exprs)] {
        let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(used.len() >= 5, "{file} uses {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries series /metrics does not declare: {missing:?}\n{text}"
        );
    }
    // Both cover the list.
    let all: BTreeSet<String> = dash_exprs.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "tapis_webodm_sync_passes_total",
        "tapis_webodm_sync_flights",
        "tapis_webodm_sync_uploaded_bytes_total",
        "tapis_webodm_sync_http_requests_total",
        "tapis_webodm_sync_retries_total",
        "tapis_webodm_sync_last_successful_pass_timestamp_seconds",
    ] {
        assert!(all.contains(needed), "the dashboard shows {needed}");
    }
    drop(d);
    sim.shutdown().await;
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        "sum by (le) (rate(tapis_webodm_sync_pass_duration_seconds_bucket{x=\"y\"}[5m])) / tapis_webodm_sync_flights",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "tapis_webodm_sync_flights",
            "tapis_webodm_sync_pass_duration_seconds_bucket"
        ]
    );
}
