//! The real binary: exit codes, output formats, `demo`, `sim`, and the state dir lock.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tapis_webodm_sync::sim::{DatasetSpec, Sim};

mod service_support;
mod sim_support;
use sim_support::tapis_token;

const BIN: &str = env!("CARGO_BIN_EXE_tapis-webodm-sync");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TAPIS_WEBODM_SYNC_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn sim_with_config(dir: &Path) -> (Sim, String) {
    let spec = DatasetSpec {
        seed: 11,
        systems: 2,
        flights_per_system: 2,
        images_per_flight: 4,
        image_size: 2_000,
        big_flight_images: None,
        decoys: true,
        companions: false,
    };
    let sim = Sim::start(&spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, sim.config_toml(&dir.join("state"))).unwrap();
    (sim, path.to_string_lossy().into_owned())
}

#[test]
fn demo_json_converges() {
    let o = run(&["demo", "--json"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    let (e, w) = (&v["expected"], &v["webodm"]);
    assert!(e["flights"].as_u64().unwrap() >= 8, "{e}");
    assert_eq!(w["projects"], e["flights"]);
    assert_eq!(w["tasks"], e["flights"]);
    assert_eq!(w["committed_tasks"], e["flights"]);
    assert_eq!(w["images"], e["images"]);
    assert_eq!(w["bytes"], e["bytes"]);
    assert_eq!(w["duplicate_projects"], 0);
    assert_eq!(w["corrupt_images"], 0);
    // The whole loop: companion files in the tasks, every flight processed, results on Tapis.
    assert!(e["companions"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(w["companions"], e["companions"]);
    assert_eq!(w["stray_files"], 0);
    assert_eq!(v["completed"], e["flights"]);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["results_written"], e["flights"]);
    assert_eq!(v["results_differing"], 0);
    let passes = v["passes"].as_array().unwrap();
    assert!(passes.len() >= 2 && passes.len() <= tapis_webodm_sync::demo::MAX_PASSES);
    let sum = |key: &str| passes.iter().map(|p| p[key].as_u64().unwrap()).sum::<u64>();
    assert!(sum("tasks_restarted") > 0, "the demo shows a restart");
    assert_eq!(
        sum("results_written"),
        3 * e["flights"].as_u64().unwrap(),
        "each result once"
    );
    let last = passes.last().unwrap();
    assert_eq!(last["projects_created"], 0);
    assert_eq!(last["images_uploaded"], 0);
    for key in [
        "systems_scanned",
        "flights_discovered",
        "projects_created",
        "errors",
        "created_projects",
        "tasks_created",
        "images_uploaded",
        "bytes_uploaded",
        "tasks_committed",
        "tasks_restarted",
        "results_written",
        "result_bytes",
        "duration_ms",
        "tapis_requests",
        "webodm_requests",
    ] {
        assert!(passes[0].get(key).is_some(), "pass summary lacks {key}");
    }
    assert_eq!(
        passes[0]["created_projects"].as_array().unwrap().len() as u64,
        e["flights"].as_u64().unwrap()
    );
}

#[test]
fn bad_config_exits_78_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[tapis]\nbase_url = \"https://x.tapis.io\"\nusername = \"u\"\npassword = \"p\"\n\n[webodm]\nbase_url = \"http://127.0.0.1:8000\"\nusername = \"w\"\npassword = \"p\"\nrequests_per_second = \"fast\"\n",
    )
    .unwrap();
    let o = run(&["--config", path.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(78), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:10:", path.display())), "{err}");
    assert!(err.contains("webodm.requests_per_second"), "{err}");
    assert!(!err.contains("\"p\""), "no secret in the message: {err}");

    // Every problem of a file at once, in every section, each with line:column and key.
    std::fs::write(
        &path,
        "[tapis]\nbase_url = \"not a url\"\nusername = \"svc\"\npassword = \"x\"\nrequests_per_second = -3\ncolour = \"blue\"\n[webodm]\nbase_url = \"http://127.0.0.1:8000\"\nusername = \"u\"\npassword = \"p\"\n[sync]\ninterval = \"five minutes\"\n",
    )
    .unwrap();
    let o = run(&["--config", path.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(78), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("(4 problems)"), "{err}");
    for (at, key) in [
        ("2:12", "tapis.base_url"),
        ("5:23", "tapis.requests_per_second"),
        ("6:1", "tapis.colour"),
        ("12:12", "sync.interval"),
    ] {
        let line = format!("{}:{at}: key `{key}`: ", path.display());
        assert!(err.contains(&line), "{line:?} not in {err}");
    }

    let o = run(&["--config", "/nonexistent/config.toml", "once"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("/nonexistent/config.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_status_plan_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = sim_with_config(dir.path()).await;
    let expected = sim.dataset().expected();

    let plan = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run(&["--config", &config, "plan"])
    })
    .await
    .unwrap();
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(
        stdout(&plan).contains(&format!("Plan: {} projects", expected.flights)),
        "{}",
        stdout(&plan)
    );

    let once = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run(&["--config", &config, "once", "--json"])
    })
    .await
    .unwrap();
    assert!(once.status.success(), "{}", stderr(&once));
    let v: Value = serde_json::from_slice(&once.stdout).unwrap();
    assert_eq!(v["projects_created"].as_u64(), Some(expected.flights));
    assert_eq!(v["images_uploaded"].as_u64(), Some(expected.images));
    let secrets = ["tapis-secret", "webodm-secret", "sim-client-key"];
    for s in secrets {
        assert!(
            !stderr(&once).contains(s) && !stdout(&once).contains(s),
            "secret {s} leaked"
        );
    }

    let status = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run(&["--config", &config, "status", "--json"])
    })
    .await
    .unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows.len() as u64, expected.flights);
    assert!(rows.iter().all(|r| r["phase"] == "committed"));

    // A second process on the same state dir is refused with 75, naming the holder.
    let state = dir.path().join("state");
    let store = tapis_webodm_sync::engine::state::Store::open(&state).unwrap();
    let locked = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run(&["--config", &config, "once"])
    })
    .await
    .unwrap();
    assert_eq!(locked.status.code(), Some(75), "{}", stderr(&locked));
    assert!(
        stderr(&locked).contains(&format!("pid {}", std::process::id())),
        "{}",
        stderr(&locked)
    );
    drop(store);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_prints_its_url_first_and_writes_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sim.toml");
    let mut child = Command::new(BIN)
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--systems",
            "1",
            "--flights",
            "1",
            "--images",
            "2",
            "--write-config",
            cfg.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Keep reading end open: the simulator goes on printing after its first line.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("SIM ")
        .expect("first line is `SIM <url>`");
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(written.contains(url), "{written}");
    let report: Value = reqwest::get(format!("{url}/__sim/report"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(report["expected"]["flights"].as_u64().unwrap() >= 1);
    let o = run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    let _ = child.kill();
    let _ = child.wait();
    drop(out);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Tapis: ok"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("tapis-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_without_decoys_serves_only_the_regular_flights() {
    let mut child = Command::new(BIN)
        .args([
            "sim",
            "--systems",
            "2",
            "--flights",
            "3",
            "--images",
            "2",
            "--no-decoys",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("SIM ").unwrap().to_owned();
    let report: Value = reqwest::get(format!("{url}/__sim/report"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(out);
    assert_eq!(report["expected"]["flights"], 6, "{}", report["expected"]);
    assert_eq!(report["expected"]["images"], 12, "{}", report["expected"]);
}

#[test]
fn sim_rejects_out_of_range_fault_rates() {
    let o = run(&["sim", "--error-rate", "2"]);
    assert_eq!(o.status.code(), Some(2));
}

async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_and_flights_show_what_tapis_holds_within_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config) = sim_with_config(dir.path()).await;
    let expected = sim.dataset().expected_flights();

    let o = run_async(vec![
        "--config".into(),
        config.clone(),
        "systems".into(),
        "--json".into(),
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(rows
        .iter()
        .all(|r| r["id"].as_str().unwrap().starts_with("ptdatax.project.")));
    let disabled: Vec<_> = rows.iter().filter(|r| r["enabled"] == false).collect();
    assert!(
        !disabled.is_empty(),
        "the disabled decoy is listed: {rows:?}"
    );
    assert!(disabled
        .iter()
        .all(|r| r["scanned"] == false
            && r["skipped_because"].as_str().unwrap().contains("disabled")));
    for f in &expected {
        assert!(
            rows.iter()
                .any(|r| r["id"] == f.system_id.as_str() && r["scanned"] == true),
            "{} (owned or only shared) is listed and synced",
            f.system_id
        );
    }

    let o = run_async(vec![
        "--config".into(),
        config.clone(),
        "flights".into(),
        "--json".into(),
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let flights: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(flights.len(), expected.len());
    for f in &expected {
        let row = flights
            .iter()
            .find(|r| {
                r["system_id"] == f.system_id.as_str() && r["flight_name"] == f.flight.as_str()
            })
            .unwrap_or_else(|| panic!("{} / {} listed", f.system_id, f.flight));
        assert_eq!(row["image_count"].as_u64(), Some(f.images.len() as u64));
    }

    // exclude_systems drops a system's flights; --systems narrows to one.
    let excluded = expected[0].system_id.clone();
    std::fs::create_dir(dir.path().join("narrow")).unwrap();
    let (narrow, _) = service_support::write_config(
        &sim,
        &dir.path().join("narrow"),
        &[("tapis", &format!("exclude_systems = [\"{excluded}\"]"))],
        "",
    );
    let o = run_async(vec![
        "--config".into(),
        narrow.to_string_lossy().into_owned(),
        "flights".into(),
        "--json".into(),
    ])
    .await;
    let flights: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!flights.is_empty());
    assert!(flights.iter().all(|r| r["system_id"] != excluded.as_str()));
    let o = run_async(vec![
        "--config".into(),
        config,
        "flights".into(),
        "--systems".into(),
        excluded.clone(),
        "--json".into(),
    ])
    .await;
    let flights: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let want = expected.iter().filter(|f| f.system_id == excluded).count();
    assert_eq!(flights.len(), want);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_proves_a_pre_issued_token_with_a_real_call() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = sim_with_config(dir.path()).await;
    let c = sim.credentials().clone();
    let url = sim.base_url();
    let token = tapis_token(&sim).await;
    let config = dir.path().join("token.toml");
    std::fs::write(
        &config,
        format!(
            "[tapis]\nbase_url = \"{url}\"\ntoken_file = \"token\"\n\n[webodm]\nbase_url = \"{url}\"\nusername = \"{}\"\npassword = \"{}\"\n\n[sync]\nstate_dir = \"state\"\n",
            c.webodm_username, c.webodm_password
        ),
    )
    .unwrap();
    let check = || {
        run_async(vec![
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "check-config".into(),
        ])
    };

    // A token Tapis does not accept: check-config fails, naming Tapis and what to do.
    std::fs::write(dir.path().join("token"), "not-a-valid-token").unwrap();
    let o = check().await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("Tapis: "))
        .unwrap_or_else(|| panic!("no Tapis line in {out}"));
    assert!(line.starts_with("Tapis: FAILED"), "{line}");
    assert!(
        line.contains("tapis.token_file") && line.contains("replace it"),
        "{line}"
    );
    assert!(out.contains("WebODM: ok"), "{out}");
    assert!(!out.contains("not-a-valid-token"), "{out}");

    // The simulator's own token: both services answer.
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let o = check().await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Tapis: ok"), "{out}");
    assert!(
        out.contains("first system matching `ptdatax.project.*`: ptdatax.project."),
        "{out}"
    );
    assert!(
        out.contains("WebODM: ok") && out.contains("projects visible"),
        "{out}"
    );
    assert!(!out.contains(&token), "{out}");
    let systems: u64 = sim.stats().requests["GET /v3/systems"].values().sum();
    assert_eq!(systems, 2, "one systems listing per check");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_fails_with_78_on_an_unknown_webodm_group() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = sim_with_config(dir.path()).await;
    let (cfg, _) = service_support::write_config(
        &sim,
        dir.path(),
        &[],
        "\n[access]\ngroups = [\"lab-x\", \"no-such-group\"]\n",
    );
    let o = run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(78), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("`lab-x` exists in WebODM"), "{out}");
    assert!(out.contains("WebODM has no group `no-such-group`"), "{out}");
    // Known groups only: fine.
    let (cfg, _) =
        service_support::write_config(&sim, dir.path(), &[], "\n[access]\ngroups = [\"lab-x\"]\n");
    let o = run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    sim.shutdown().await;
}
