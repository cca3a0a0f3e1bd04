//! What an operator watches: the admin endpoint (/healthz, /metrics, /status), `status` while
//! the daemon runs, JSON and journald log records, and that no secret appears anywhere.

mod service_support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use service_support::*;
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

/// A strict reader of the Prometheus text format: every non-comment line is
/// `name{labels} value`, every sample's family has `# HELP` and `# TYPE` lines first.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "unknown"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(!k.is_empty(), "{line}");
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its # TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoint_health_metrics_status_and_status_command_while_running() {
    let sim = start_sim(&spec(5, 4_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1h\"")],
        &format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let d = Daemon::start(&config, false, &[]);
    d.wait_log("pass finished", 1, Duration::from_secs(10));
    let base = format!("http://127.0.0.1:{port}");

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let body = health.text().await.unwrap();
    assert!(body.starts_with("ok: passes on schedule"), "{body}");

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    let m = parse_prometheus(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get("tapis_webodm_sync_passes_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(get("tapis_webodm_sync_images_uploaded_total"), 5.0);
    let expected = sim.dataset().expected();
    assert_eq!(
        get("tapis_webodm_sync_uploaded_bytes_total"),
        expected.bytes as f64
    );
    assert_eq!(get("tapis_webodm_sync_flights{phase=\"committed\"}"), 1.0);
    assert_eq!(get("tapis_webodm_sync_pass_duration_seconds_count"), 1.0);
    assert!(get("tapis_webodm_sync_http_requests_total{service=\"tapis\",class=\"2xx\"}") >= 3.0);
    // Login, project lookup and create, task create, one upload (the five images in one
    // batch), commit.
    assert!(get("tapis_webodm_sync_http_requests_total{service=\"webodm\",class=\"2xx\"}") >= 6.0);
    assert!(
        !text.contains("tapis_webodm_sync_retries_total{"),
        "no fault, no retry:\n{text}"
    );
    let last = get("tapis_webodm_sync_last_successful_pass_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");

    let status: Value = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // `status --json` reads the daemon's snapshot (the store is locked) and shows the same.
    let cmd = run_async(&config, &["status", "--json"], &[]).await;
    assert!(
        cmd.status.success(),
        "{}",
        String::from_utf8_lossy(&cmd.stderr)
    );
    assert!(String::from_utf8_lossy(&cmd.stderr).contains("snapshot"));
    let from_cmd: Value = serde_json::from_slice(&cmd.stdout).unwrap();
    assert_eq!(status, from_cmd);
    let row = &status[0];
    assert_eq!(row["phase"], "committed");
    assert_eq!(row["images_uploaded"], 5);
    assert_eq!(row["images_total"], 5);
    assert_eq!(row["task_status"], "committed");
    assert!(row["project_id"].as_i64().is_some());
    let table = run_async(&config, &["status"], &[]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("SYSTEM") && table.contains("LAST ERROR"),
        "{table}"
    );
    assert!(
        table.contains("5/5") && table.contains("committed"),
        "{table}"
    );
    assert!(table.contains("Last pass"), "{table}");

    let nf = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(nf.status(), 404);
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_by_service_and_class_under_injected_faults() {
    // Only faults that each cost exactly one retry: 5xx answers before any side effect, and
    // Tapis downloads cut short under a 200. Uploads get no 5xx: an upload whose download is
    // cut short would hide it.
    let faults = Faults {
        error_rate: 0.25,
        route_rates: [(
            "POST /api/projects/{project}/tasks/{task}/upload/".to_string(),
            0.0,
        )]
        .into(),
        truncate_rate: 0.3,
        ..Faults::default()
    };
    let dataset = DatasetSpec {
        flights_per_system: 4,
        ..spec(4, 3_000)
    };
    let sim = Sim::start_with(&dataset, "127.0.0.1:0".parse().unwrap(), faults)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1h\"")],
        &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[retry]\ninitial = \"10ms\"\nmax = \"50ms\"\nmax_elapsed = \"30s\"\n"
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
    let m = parse_prometheus(&text);
    let retries = |service: &str, class: &str| {
        m.get(&format!(
            "tapis_webodm_sync_retries_total{{service=\"{service}\",class=\"{class}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    let injected = sim.stats().faults_injected;
    let errors = injected.get("error").copied().unwrap_or(0) as f64;
    let truncated = injected.get("truncate").copied().unwrap_or(0) as f64;
    assert!(errors > 0.0 && truncated > 0.0, "{injected:?}");
    assert!(retries("tapis", "5xx") > 0.0, "{text}");
    assert!(retries("webodm", "5xx") > 0.0, "{text}");
    assert_eq!(
        retries("tapis", "5xx") + retries("webodm", "5xx"),
        errors,
        "one retry per injected 5xx:\n{text}"
    );
    assert_eq!(
        retries("tapis", "truncated"),
        truncated,
        "one retry per truncated download:\n{text}"
    );
    assert!(
        !text.contains("class=\"transport\""),
        "a truncated download is not a WebODM transport failure:\n{text}"
    );
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_must_be_loopback() {
    let sim = start_sim(&spec(1, 1_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[],
        "\n[admin]\nlisten = \"0.0.0.0:9464\"\n",
    );
    let o = run_async(&config, &["run"], &[]).await;
    assert_eq!(o.status.code(), Some(78));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_records_parse_and_flight_records_name_system_and_flight() {
    let sim = start_sim(&spec(3, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(&sim, dir.path(), &[], "\n[log]\nformat = \"json\"\n");
    let o = run_async(&config, &["once"], &[]).await;
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let records: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        assert!(r["timestamp"].is_string() && r["level"].is_string(), "{r}");
    }
    let flight = sim.dataset().expected_flights()[0].clone();
    for msg in [
        "created project",
        "created task",
        "committed task for processing",
    ] {
        let r = records
            .iter()
            .find(|r| r["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} record in {err}"));
        assert_eq!(r["fields"]["system"], flight.system_id.as_str(), "{r}");
        assert_eq!(r["fields"]["flight"], flight.flight.as_str(), "{r}");
    }
    let pass: Vec<_> = records
        .iter()
        .filter(|r| r["fields"]["message"] == "pass finished")
        .collect();
    assert_eq!(pass.len(), 1);
    assert_eq!(pass[0]["level"], "INFO");
    for key in [
        "systems_scanned",
        "flights_discovered",
        "projects_created",
        "tasks_created",
        "images_uploaded",
        "bytes_uploaded",
        "tasks_committed",
        "tasks_restarted",
        "results_written",
        "result_bytes",
        "errors",
        "duration_ms",
        "tapis_requests",
        "webodm_requests",
    ] {
        assert!(pass[0]["fields"][key].is_u64(), "{key} in {}", pass[0]);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_lines_carry_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let sim = start_sim(&spec(2, 1_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(&sim, dir.path(), &[], "");
    let err_path = dir.path().join("stderr");
    let file = std::fs::File::create(&err_path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let status = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            std::process::Command::new(BIN)
                .arg("--config")
                .arg(&config)
                .arg("once")
                .env_remove("RUST_LOG")
                .env("JOURNAL_STREAM", stream)
                .stdout(std::process::Stdio::null())
                .stderr(file)
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&err_path).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let rest = line
            .strip_prefix("<6>")
            .or_else(|| line.strip_prefix("<4>"))
            .or_else(|| line.strip_prefix("<3>"))
            .or_else(|| line.strip_prefix("<7>"))
            .unwrap_or_else(|| panic!("no priority prefix: {line}"));
        assert!(
            !rest.starts_with("20") && !rest.contains("Z "),
            "timestamp in a journald line: {line}"
        );
    }
    assert!(
        text.contains("<6> INFO") || text.contains("<6>INFO"),
        "{text}"
    );
    // Without a matching JOURNAL_STREAM the plain format (with timestamps) is kept.
    let o = run_async(&config, &["once"], &[("JOURNAL_STREAM", "1:2")]).await;
    let plain = String::from_utf8_lossy(&o.stderr);
    assert!(plain.lines().all(|l| !l.starts_with('<')), "{plain}");
    sim.shutdown().await;
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    for s in SECRETS {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "{s:?} found in {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_any_output_or_state_file_at_trace_level() {
    let sim = start_sim(&spec(4, 3_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, state) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1h\"")],
        &format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let trace = [("RUST_LOG", "trace")];
    let once = run_async(&config, &["once", "--json"], &trace).await;
    assert!(once.status.success());
    assert!(
        once.stderr.len() > 10_000,
        "trace level logs a lot ({} bytes)",
        once.stderr.len()
    );
    assert_no_secret("once stdout", &once.stdout);
    assert_no_secret("once stderr", &once.stderr);
    for args in [
        &["status", "--json"][..],
        &["plan", "--json"][..],
        &["check-config"][..],
    ] {
        let o = run_async(&config, args, &trace).await;
        assert!(o.status.success(), "{args:?}");
        assert_no_secret(&format!("{args:?} stdout"), &o.stdout);
        assert_no_secret(&format!("{args:?} stderr"), &o.stderr);
    }
    // The daemon at trace level, with its admin endpoint and a reload.
    let mut d = Daemon::start(&config, true, &trace);
    d.wait_log("pass finished", 1, Duration::from_secs(10));
    for path in ["healthz", "metrics", "status"] {
        let body = reqwest::get(format!("http://127.0.0.1:{port}/{path}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_no_secret(path, &body);
    }
    d.signal(libc::SIGHUP);
    d.wait_log("config reloaded", 1, Duration::from_secs(5));
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(5));
    assert_no_secret("daemon stderr", d.log_text().as_bytes());
    assert_no_secret("notify messages", d.notes().join("\n").as_bytes());
    let mut files = 0;
    for entry in walk(&state) {
        assert_no_secret(
            &entry.display().to_string(),
            &std::fs::read(&entry).unwrap(),
        );
        files += 1;
    }
    assert!(files >= 3, "state dir has the store, lock and snapshot");
    sim.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
