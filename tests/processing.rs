//! Closing the loop over real HTTP against the simulator: companion files travel with the
//! images, each committed task's processing is followed (restarts, final failure, no
//! processing node), and the results of processed flights are streamed back to Tapis, once,
//! byte for byte, never over a file the daemon did not write — also across a kill -9.

mod service_support;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{assert_no_errors, converged, Rig};
use tapis_webodm_sync::engine::pass::PassOptions;
use tapis_webodm_sync::engine::processing::{NO_MESSAGE, NO_NODE};
use tapis_webodm_sync::engine::state::{FlightRecord, Phase, Store};
use tapis_webodm_sync::engine::PassSummary;
use tapis_webodm_sync::service::status::StatusRow;
use tapis_webodm_sync::sim::{DatasetSpec, ExpectedFlight, Faults, Sim};

/// The route of a Tapis file upload (`POST /v3/files/ops/{system}/{path}`) in `/__sim/stats`.
const TAPIS_UPLOAD: &str = "POST /v3/files/ops/{system}/{path}";
/// The route of one task's read.
const TASK_READ: &str = "GET /api/projects/{project}/tasks/{task}/";
const ASSET: &str = "GET /api/projects/{project}/tasks/{task}/download/{asset}";

fn spec(flights: usize, companions: bool) -> DatasetSpec {
    DatasetSpec {
        seed: 33,
        systems: 1,
        flights_per_system: flights,
        images_per_flight: 3,
        image_size: 2_000,
        big_flight_images: None,
        decoys: false,
        companions,
    }
}

/// A rig whose tasks are processed within `process_ms`, failing the first attempt of
/// `fail_rate` of them, with quick retries (restarts are spaced by `retry.initial`).
async fn rig(spec: &DatasetSpec, process_ms: u64, fail_rate: f64) -> Rig {
    let faults = Faults {
        process_ms,
        fail_processing_rate: fail_rate,
        ..Faults::default()
    };
    let mut rig = Rig::with_faults(spec, faults).await;
    rig.config.retry.initial = Duration::from_millis(50);
    rig.config.retry.max = Duration::from_millis(200);
    rig
}

fn records(rig: &Rig) -> Vec<FlightRecord> {
    Store::open(&rig.config.sync.state_dir)
        .unwrap()
        .flights()
        .unwrap()
}

fn rows(rig: &Rig) -> Vec<StatusRow> {
    records(rig).iter().map(StatusRow::of).collect()
}

fn route_count(sim: &Sim, route: &str, status: Option<&str>) -> u64 {
    sim.stats()
        .requests
        .get(route)
        .map(|by| {
            by.iter()
                .filter(|(s, _)| status.is_none_or(|want| want == s.as_str()))
                .map(|(_, n)| n)
                .sum()
        })
        .unwrap_or(0)
}

/// Passes (a short pause after each) until every flight's record is in one of `phases`;
/// returns the summaries.
async fn passes_until(rig: &Rig, phases: &[Phase], max: usize) -> Vec<PassSummary> {
    let mut out = Vec::new();
    for _ in 0..max {
        out.push(rig.pass().await);
        let recs = records(rig);
        if !recs.is_empty() && recs.iter().all(|r| phases.contains(&r.phase)) {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!(
        "not every flight reached {phases:?} in {max} passes: {:#?}\n{out:#?}",
        records(rig)
    );
}

fn one_flight(sim: &Sim) -> ExpectedFlight {
    let flights = sim.dataset().expected_flights();
    assert_eq!(flights.len(), 1);
    flights.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companion_files_travel_with_the_images_and_nothing_else_of_the_folder() {
    let rig = rig(&spec(3, true), 100, 0.0).await;
    let s = rig.pass().await;
    assert_no_errors(&s);
    let r = rig.sim.report();
    assert!(r.expected.companions >= 2, "{:?}", r.expected);
    assert_eq!(r.webodm.companions, r.expected.companions);
    assert_eq!(r.webodm.companion_bytes, r.expected.companion_bytes);
    assert_eq!(
        (
            r.webodm.corrupt_companions,
            r.webodm.missing_companions,
            r.webodm.stray_files
        ),
        (0, 0, 0),
        "companions byte for byte; `notes.txt` is not uploaded"
    );
    for f in &r.flights {
        assert!(f.companions.iter().all(|c| c.held), "{f:?}");
    }
    assert!(
        converged(&rig.sim),
        "{:?}",
        r.webodm.mismatches(&r.expected)
    );
    // They counted toward the commit, and the description counts images only.
    let with_companions = r.flights.iter().find(|f| !f.companions.is_empty()).unwrap();
    let expected = rig
        .sim
        .dataset()
        .expected_flights()
        .into_iter()
        .find(|e| e.flight == with_companions.flight)
        .unwrap();
    let project = rig
        .sim
        .webodm_projects()
        .into_iter()
        .find(|p| p.id == with_companions.projects[0])
        .unwrap();
    assert!(
        project
            .description
            .contains(&format!("Image count: {}\n", expected.images.len())),
        "{}",
        project.description
    );
    let rec = records(&rig)
        .into_iter()
        .find(|r| r.key.flight == expected.flight)
        .unwrap();
    let files = (expected.images.len() + expected.companions.len()) as u64;
    assert_eq!((rec.images_uploaded, rec.images_total), (files, files));
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_processing_is_restarted_and_then_completes() {
    // Every first attempt fails; the restart completes.
    let rig = rig(&spec(1, false), 100, 1.0).await;
    let passes = passes_until(&rig, &[Phase::Completed], 15).await;
    for p in &passes {
        assert_no_errors(p);
    }
    let restarted: usize = passes.iter().map(|p| p.tasks_restarted).sum();
    assert_eq!(restarted, 1, "{passes:#?}");
    let row = &rows(&rig)[0];
    assert_eq!(row.phase, "completed");
    assert_eq!(row.task_status.as_deref(), Some("completed"));
    assert_eq!(row.restarts, 1);
    assert_eq!(row.processing_time_ms, Some(100));
    assert_eq!(row.last_error, None);
    let task = rig.sim.report().flights[0].task.clone().unwrap();
    assert_eq!(
        (task.status, task.restarts, task.attempts),
        (Some(40), 1, 2)
    );
    // A completed flight (results off) is no longer read.
    let reads = route_count(&rig.sim, TASK_READ, None);
    assert_no_errors(&rig.pass().await);
    assert_eq!(route_count(&rig.sim, TASK_READ, None), reads);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_every_time_ends_failed_with_webodms_error_after_its_restarts() {
    let mut rig = rig(&spec(2, false), 100, 0.0).await;
    rig.config.processing.restart_failed = 2;
    let flights = rig.sim.dataset().expected_flights();
    let (loud, silent) = (&flights[0], &flights[1]);
    rig.sim
        .fail_processing(&loud.system_id, &loud.flight, Some("Not enough memory"));
    // NodeODM's test mode fails with `last_error` null.
    rig.sim
        .fail_processing(&silent.system_id, &silent.flight, None);
    let passes = passes_until(&rig, &[Phase::Failed], 25).await;
    let restarted: usize = passes.iter().map(|p| p.tasks_restarted).sum();
    assert_eq!(restarted, 4, "two restarts each: {passes:#?}");
    for p in &passes {
        assert_no_errors(p);
    }
    for row in rows(&rig) {
        assert_eq!(row.phase, "failed");
        assert_eq!(row.restarts, 2);
        assert_eq!(row.task_status.as_deref(), Some("failed"));
        let want = if row.flight_name == loud.flight {
            "Not enough memory"
        } else {
            NO_MESSAGE
        };
        assert_eq!(row.last_error.as_deref(), Some(want), "{row:?}");
        assert!(!row.is_stuck(Duration::ZERO, i64::MAX), "failed, not stuck");
    }
    for f in rig.sim.report().flights {
        let t = f.task.unwrap();
        assert_eq!(
            (t.status, t.restarts),
            (Some(30), 2),
            "never a third restart"
        );
    }
    // A failed flight is no longer read or restarted.
    let reads = route_count(&rig.sim, TASK_READ, None);
    let s = rig.pass().await;
    assert_eq!((s.tasks_restarted, s.errors.len()), (0, 0));
    assert_eq!(route_count(&rig.sim, TASK_READ, None), reads);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_tapis_once_byte_for_byte_and_unavailable_ones_are_reported() {
    let mut rig = rig(&spec(2, false), 100, 0.0).await;
    // `dtm.tif` needs the DTM option, which the tasks do not have.
    rig.config.results.assets = vec![
        "orthophoto.tif".into(),
        "dtm.tif".into(),
        "report.pdf".into(),
    ];
    let passes = passes_until(&rig, &[Phase::ResultsWritten], 15).await;
    for p in &passes {
        assert_no_errors(p);
    }
    let written: u64 = passes.iter().map(|p| p.results_written).sum();
    let bytes: u64 = passes.iter().map(|p| p.result_bytes).sum();
    assert_eq!(written, 4, "two assets of two flights: {passes:#?}");
    // Result copies are transfers (their own slots, `bwlimit`), not rate-limited requests:
    // every asset download from WebODM and every upload to Tapis counted as a transfer.
    let images = rig.sim.dataset().expected().images;
    assert_eq!(
        rig.clients.webodm.counts().transfers,
        route_count(
            &rig.sim,
            "POST /api/projects/{project}/tasks/{task}/upload/",
            None
        ) + written,
        "image uploads and asset downloads"
    );
    assert_eq!(
        rig.clients.tapis.counts().transfers,
        images + written,
        "image downloads and result uploads"
    );
    let report = rig.sim.report();
    let mut on_tapis = 0;
    for f in &report.flights {
        let mut paths: Vec<&str> = f.results.iter().map(|r| r.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "code/odm_results/orthophoto.tif",
                "code/odm_results/report.pdf"
            ],
            "exactly the configured assets WebODM offers"
        );
        for r in &f.results {
            assert!(r.matches_asset, "{r:?}");
            assert_eq!(Some(r.size), r.asset_size);
            on_tapis += r.size;
        }
    }
    assert_eq!(bytes, on_tapis);
    assert!(
        report
            .flights
            .iter()
            .any(|f| f.results.iter().any(|r| r.size == 0)),
        "an empty asset (report.pdf) is written too"
    );
    for row in rows(&rig) {
        assert_eq!(row.phase, "results_written");
        assert_eq!(row.results_written, ["orthophoto.tif", "report.pdf"]);
        assert_eq!(row.results_unavailable, ["dtm.tif"]);
        assert!(row.results_conflicts.is_empty() && row.notice.is_none());
    }
    // Once: another pass reads and writes nothing.
    let uploads = route_count(&rig.sim, TAPIS_UPLOAD, None);
    assert_eq!(uploads, 4);
    let downloads = route_count(&rig.sim, ASSET, None);
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.results_written, 0);
    assert_eq!(route_count(&rig.sim, TAPIS_UPLOAD, None), uploads);
    assert_eq!(route_count(&rig.sim, ASSET, None), downloads);
    let plan = rig.dry_run().await.plan;
    assert!(plan.flights.iter().all(|f| f.steps.is_empty()), "{plan:?}");
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_file_at_a_result_path_is_left_untouched_and_reported() {
    let mut rig = rig(&spec(1, false), 100, 0.0).await;
    rig.config.results.assets = vec!["orthophoto.tif".into(), "dsm.tif".into()];
    let f = one_flight(&rig.sim);
    let theirs = format!("{}/code/odm_results/orthophoto.tif", f.flight);
    let mine = b"a person's own orthophoto".to_vec();
    assert!(rig.sim.put_tapis_file(&f.system_id, &theirs, mine.clone()));
    let passes = passes_until(&rig, &[Phase::ResultsWritten], 15).await;
    assert_eq!(
        rig.sim.tapis_file(&f.system_id, &theirs),
        Some(mine),
        "never overwritten"
    );
    let conflicts: Vec<&String> = passes
        .iter()
        .flat_map(|p| &p.errors)
        .filter(|e| e.contains("results conflict"))
        .collect();
    assert_eq!(conflicts.len(), 1, "reported once: {passes:#?}");
    assert!(conflicts[0].contains("orthophoto.tif"), "{conflicts:?}");
    let row = &rows(&rig)[0];
    assert_eq!(row.results_written, ["dsm.tif"], "the rest is written");
    assert_eq!(row.results_conflicts.len(), 1);
    assert!(
        row.results_conflicts[0].starts_with("results conflict: code/odm_results/orthophoto.tif"),
        "{row:?}"
    );
    assert_eq!(row.notice.as_ref(), row.results_conflicts.first());
    let report = rig.sim.report();
    let dsm = report.flights[0]
        .results
        .iter()
        .find(|r| r.path.ends_with("dsm.tif"))
        .unwrap();
    assert!(dsm.matches_asset);
    assert_eq!(route_count(&rig.sim, TAPIS_UPLOAD, None), 1, "only dsm.tif");
    let s = rig.pass().await;
    assert_no_errors(&s);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_processing_node_is_shown_after_the_wait_and_logged_once() {
    // No processing node: `status` stays null.
    let faults = Faults {
        process_ms: 0,
        ..Faults::default()
    };
    let sim = Sim::start_with(
        &spec(1, false),
        "127.0.0.1:0".parse().unwrap(),
        faults.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = service_support::write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"300ms\"")],
        "\n[processing]\nno_node_after = \"1s\"\n",
    );
    let d = service_support::Daemon::start(&config, false, &[]);
    d.wait_log(NO_NODE, 1, Duration::from_secs(20));
    let passes = d.count("pass finished");
    d.wait_log("pass finished", passes + 3, Duration::from_secs(20));
    assert_eq!(d.count(NO_NODE), 1, "logged once:\n{}", d.log_text());
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains(NO_NODE)),
        "{}",
        d.log_text()
    );
    let status = service_support::run_async(&config, &["status", "--json"], &[]).await;
    let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["phase"], "committed");
    assert_eq!(rows[0]["task_status"], "no processing node");
    assert_eq!(rows[0]["notice"], NO_NODE);
    let table = service_support::run_async(&config, &["status"], &[]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains(NO_NODE), "{table}");
    // A node appears: the task is processed and the notice goes.
    sim.set_faults(Faults {
        process_ms: 100,
        ..faults
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = service_support::run_async(&config, &["status", "--json"], &[]).await;
        let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap();
        if rows[0]["phase"] == "completed" {
            assert_eq!(rows[0]["notice"], Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_result_transfer_leaves_a_complete_file_after_restart() {
    let sim = Sim::start_with(
        &spec(1, false),
        "127.0.0.1:0".parse().unwrap(),
        Faults {
            process_ms: 100,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let f = one_flight(&sim);
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = service_support::write_config(
        &sim,
        dir.path(),
        &[],
        "\n[results]\nassets = [\"orthophoto.tif\"]\n\n[retry]\ninitial = \"50ms\"\nmax = \"200ms\"\n",
    );
    let once = |what: &str| {
        let o = service_support::run(&config, &["once"], &[]);
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    once("commit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.report().flights[0].task.as_ref().and_then(|t| t.status) != Some(40) {
        assert!(Instant::now() < deadline, "processing never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    once("read the completed task");
    let plan = service_support::run(&config, &["plan"], &[]);
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("write results to Tapis: orthophoto.tif")
            && plan.contains("1 results to write"),
        "{plan}"
    );
    // The asset's download now pauses half-way: the transfer is reliably under way.
    sim.set_faults(Faults {
        process_ms: 100,
        asset_stall_ms: 5_000,
        ..Faults::default()
    });
    let mut child = Command::new(service_support::BIN)
        .arg("--config")
        .arg(&config)
        .arg("once")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = sim.stats();
        if stats.tapis_bytes_uploaded > 0 && route_count(&sim, TAPIS_UPLOAD, None) == 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "the result transfer was never seen under way"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let path = format!("{}/code/odm_results/orthophoto.tif", f.flight);
    // Tapis keeps what arrived (once the connection is gone): the daemon's own half-written
    // file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let partial = loop {
        match sim.tapis_file(&f.system_id, &path) {
            Some(bytes) if !bytes.is_empty() => break bytes,
            _ => {
                assert!(Instant::now() < deadline, "no partial file on Tapis");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let report = sim.report();
    let asset_size = report.flights[0].results[0].asset_size.unwrap();
    assert!(
        !partial.is_empty() && (partial.len() as u64) < asset_size,
        "{} of {asset_size} bytes",
        partial.len()
    );
    // Restarted, the daemon knows the file for its own (the intent) and writes it whole.
    sim.set_faults(Faults {
        process_ms: 100,
        ..Faults::default()
    });
    once("after the kill");
    let report = sim.report();
    let results = &report.flights[0].results;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].matches_asset, "{results:?}");
    assert_eq!(route_count(&sim, TAPIS_UPLOAD, Some("200")), 1);
    let status = service_support::run(&config, &["status", "--json"], &[]);
    let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["phase"], "results_written");
    assert_eq!(rows[0]["results_written"][0], "orthophoto.tif");
    assert_eq!(rows[0]["results_conflicts"].as_array().unwrap().len(), 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_the_processing_steps() {
    let mut rig = rig(&spec(1, false), 0, 0.0).await;
    rig.config.results.assets = vec!["orthophoto.tif".into()];
    assert_no_errors(&rig.pass().await);
    let plan = rig
        .pass_with(
            PassOptions {
                dry_run: true,
                ..PassOptions::default()
            },
            false,
        )
        .await
        .plan;
    assert_eq!(plan.polls(), 1, "{plan:?}");
    assert!(plan.is_noop());
    rig.sim.shutdown().await;
}
