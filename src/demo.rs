//! `demo`: the simulator with a sample dataset (companion files included, processing quick,
//! some first attempts failing), passes until every flight is processed with its results on
//! Tapis, and what WebODM and Tapis then hold according to the simulator's own record (never
//! the daemon's counters).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use indicatif::HumanBytes;
use serde::Serialize;

use crate::clients::Clients;
use crate::config::{Config, Secret, TapisAuth};
use crate::engine::pass::{self, PassOptions};
use crate::engine::state::Store;
use crate::engine::PassSummary;
use crate::sim::{DatasetSpec, Expected, Faults, Report, Sim, WebodmReport};

/// The config `demo` runs with (base URLs, credentials and state dir are replaced).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Passes at most.
pub const MAX_PASSES: usize = 20;

/// How long the demo's simulated processing node takes per task.
const PROCESS_MS: u64 = 300;

/// Share of the demo's tasks whose first processing fails (and is restarted).
const FAIL_RATE: f64 = 0.25;

/// What the demo found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoResult {
    /// What the dataset holds (from the generator).
    pub expected: Expected,
    /// Each pass's summary.
    pub passes: Vec<PassSummary>,
    /// What WebODM holds, checked byte for byte by the simulator.
    pub webodm: WebodmReport,
    /// Flights whose task WebODM processed (COMPLETED).
    pub completed: u64,
    /// Flights whose task is FAILED.
    pub failed: u64,
    /// Flights with every configured result asset on Tapis, byte for byte as WebODM has it.
    pub results_written: u64,
    /// Files in the flights' folders on Tapis that differ from WebODM's asset of that name.
    pub results_differing: u64,
}

impl DemoResult {
    /// Every flight synced exactly once, byte for byte, per the simulator's full report (task
    /// counts, unknown projects, missing images and companion files included), processed,
    /// with its results on Tapis byte for byte, and the last pass did nothing.
    pub fn is_converged(&self) -> bool {
        self.problems().is_empty()
    }

    /// Why the demo did not converge: one line each; empty when it did.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.webodm.mismatches(&self.expected);
        let flights = self.expected.flights;
        for (what, got, want) in [
            ("flights processed", self.completed, flights),
            ("flights failed", self.failed, 0),
            (
                "flights with their results on Tapis",
                self.results_written,
                flights,
            ),
            (
                "result files differing from WebODM's",
                self.results_differing,
                0,
            ),
        ] {
            if got != want {
                problems.push(format!("{what}: {got}, expected {want}"));
            }
        }
        match self.passes.last() {
            Some(p) if is_idle(p) => {}
            Some(_) => problems.push("the last pass still had work to do or errors".into()),
            None => problems.push("no pass ran".into()),
        }
        problems
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Something local failed (port, temp dir).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The embedded config is broken.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store failed.
    #[error(transparent)]
    State(#[from] crate::engine::state::StateError),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] crate::clients::http::ApiError),
}

/// The demo config pointed at a running simulator, with its state in `state_dir`.
pub fn config_for(sim: &Sim, state_dir: &Path) -> Result<Config, DemoError> {
    let mut config = Config::from_toml(DEMO_CONFIG, Path::new("config/demo.toml"))?;
    let url: url::Url = sim.base_url().parse().expect("simulator URL is valid");
    let creds = sim.credentials();
    config.tapis.base_url = url.clone();
    config.tapis.username = creds.tapis_username.clone();
    config.tapis.auth = TapisAuth::Password {
        password: Secret::new(creds.tapis_password.clone()),
        client: Some((
            creds.tapis_client_id.clone(),
            Secret::new(creds.tapis_client_key.clone()),
        )),
    };
    config.webodm.base_url = url;
    config.webodm.username = creds.webodm_username.clone();
    config.webodm.resolved_password = Secret::new(creds.webodm_password.clone());
    config.sync.state_dir = state_dir.to_path_buf();
    Ok(config)
}

/// Whether a pass changed nothing and had no error (it may have read tasks' processing).
fn is_idle(p: &PassSummary) -> bool {
    p.projects_created == 0
        && p.tasks_created == 0
        && p.images_uploaded == 0
        && p.tasks_committed == 0
        && p.tasks_restarted == 0
        && p.results_written == 0
        && p.errors.is_empty()
}

/// Processing and results per the simulator's report: (completed, failed, flights with every
/// configured asset on Tapis byte for byte, result files differing from WebODM's assets).
fn outcome(report: &Report, config: &Config) -> (u64, u64, u64, u64) {
    let dir = config.results.dir.trim_matches('/');
    let (mut completed, mut failed, mut written, mut differing) = (0, 0, 0, 0);
    for f in &report.flights {
        let status = f.task.as_ref().and_then(|t| t.status);
        completed += u64::from(status == Some(40));
        failed += u64::from(status == Some(30));
        differing += f.results.iter().filter(|r| !r.matches_asset).count() as u64;
        let all = config.results.assets.iter().all(|a| {
            let path = format!("{dir}/{a}");
            f.results.iter().any(|r| r.path == path && r.matches_asset)
        });
        written += u64::from(all && !config.results.assets.is_empty());
    }
    (completed, failed, written, differing)
}

/// Whether the daemon follows no flight any more: each is processed with its results written
/// (or, results off, completed), failed, canceled or deleted in WebODM.
fn finished(store: &Store, config: &Config) -> Result<bool, DemoError> {
    use crate::engine::state::Phase;
    let results = !config.results.assets.is_empty();
    Ok(store.flights()?.iter().all(|r| match r.phase {
        Phase::ResultsWritten | Phase::Failed | Phase::Canceled | Phase::DeletedInWebodm => true,
        Phase::Completed => !results,
        _ => false,
    }))
}

/// Runs the demo: passes until every flight is processed with its results on Tapis and a
/// pass has nothing left to do (at most [`MAX_PASSES`]; a pass that only waits for processing
/// is followed by a pause of `sync.interval`).
pub async fn run() -> Result<DemoResult, DemoError> {
    let spec = DatasetSpec {
        companions: true,
        ..DatasetSpec::demo()
    };
    let faults = Faults {
        process_ms: PROCESS_MS,
        fail_processing_rate: FAIL_RATE,
        ..Faults::default()
    };
    let sim = Sim::start_with(&spec, "127.0.0.1:0".parse().expect("valid"), faults).await?;
    let state = tempfile::tempdir()?;
    let config = config_for(&sim, state.path())?;
    let clients = Clients::new(&config)?;
    let store = Store::open(&config.sync.state_dir)?;
    let mut passes = Vec::new();
    for _ in 0..MAX_PASSES {
        let report = pass::pass(
            &config,
            &clients,
            Some(&store),
            &PassOptions::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .await;
        let idle = is_idle(&report.summary);
        passes.push(report.summary);
        if idle && finished(&store, &config)? {
            break;
        }
        if idle {
            tokio::time::sleep(config.sync.interval).await;
        }
    }
    let report = sim.report();
    let (completed, failed, results_written, results_differing) = outcome(&report, &config);
    let result = DemoResult {
        expected: report.expected,
        passes,
        webodm: report.webodm,
        completed,
        failed,
        results_written,
        results_differing,
    };
    drop(store);
    sim.shutdown().await;
    Ok(result)
}

/// Prints the demo's result for people.
pub fn print(r: &DemoResult) {
    let e = &r.expected;
    println!(
        "Simulated Tapis holds {} flights, {} images ({}) across its systems (plus decoys that must be ignored).",
        e.flights,
        e.images,
        HumanBytes(e.bytes)
    );
    for (i, p) in r.passes.iter().enumerate() {
        println!(
            "pass {}: {} projects and {} tasks created, {} files ({}) uploaded, {} tasks committed, {} grants, {} restarted, {} results ({}) written to Tapis, {} errors, {} Tapis + {} WebODM requests, {:.2} s",
            i + 1,
            p.projects_created,
            p.tasks_created,
            p.images_uploaded,
            HumanBytes(p.bytes_uploaded),
            p.tasks_committed,
            p.grants_added,
            p.tasks_restarted,
            p.results_written,
            HumanBytes(p.result_bytes),
            p.errors.len(),
            p.tapis_requests,
            p.webodm_requests,
            p.duration_ms as f64 / 1000.0
        );
        for err in &p.errors {
            println!("    error: {err}");
        }
    }
    let w = &r.webodm;
    println!(
        "Simulated WebODM holds {} projects, {} tasks ({} committed), {} images ({}) and {} companion files; {} duplicate projects, {} corrupt images, {} stray files.",
        w.projects,
        w.tasks,
        w.committed_tasks,
        w.images,
        HumanBytes(w.bytes),
        w.companions,
        w.duplicate_projects,
        w.corrupt_images,
        w.stray_files
    );
    println!(
        "Processing: {} flights completed, {} failed; {} flights have their results on Tapis ({} files differ from WebODM's).",
        r.completed, r.failed, r.results_written, r.results_differing
    );
    let problems = r.problems();
    if problems.is_empty() {
        println!("OK: every flight has one project with one committed task holding its images and companion files byte for byte, processed, with its results on Tapis byte for byte; the last pass had nothing to do.");
    } else {
        println!("NOT CONVERGED:");
        for p in problems {
            println!("    {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced() -> DemoResult {
        let expected = Expected {
            flights: 3,
            images: 12,
            bytes: 1200,
            ..Expected::default()
        };
        DemoResult {
            expected,
            passes: vec![PassSummary::default()],
            webodm: WebodmReport {
                projects: 3,
                tasks: 3,
                committed_tasks: 3,
                images: 12,
                bytes: 1200,
                ..WebodmReport::default()
            },
            completed: 3,
            failed: 0,
            results_written: 3,
            results_differing: 0,
        }
    }

    #[test]
    fn ok_needs_the_whole_report_and_an_idle_last_pass() {
        assert!(synced().is_converged(), "{:?}", synced().problems());
        type Breaks = fn(&mut DemoResult);
        let broken: Vec<(&str, Breaks)> = vec![
            ("a fourth task", |r| r.webodm.tasks = 4),
            ("an uncommitted task", |r| r.webodm.committed_tasks = 2),
            ("a project of no flight", |r| r.webodm.unknown_projects = 1),
            ("a missing image", |r| r.webodm.missing_images = 1),
            ("a corrupt image", |r| r.webodm.corrupt_images = 1),
            ("a duplicate", |r| r.webodm.duplicate_projects = 1),
            ("bytes short", |r| r.webodm.bytes = 1199),
            ("a busy last pass", |r| r.passes[0].tasks_committed = 1),
            ("a restart in the last pass", |r| {
                r.passes[0].tasks_restarted = 1
            }),
            ("a result written in the last pass", |r| {
                r.passes[0].results_written = 1
            }),
            ("a flight not processed", |r| r.completed = 2),
            ("a failed flight", |r| r.failed = 1),
            ("results missing", |r| r.results_written = 2),
            ("a result differing", |r| r.results_differing = 1),
            ("a stray file in a task", |r| r.webodm.stray_files = 1),
            ("a missing companion file", |r| {
                r.webodm.missing_companions = 1
            }),
            ("an error in the last pass", |r| {
                r.passes[0].errors.push("x".into())
            }),
            ("no pass", |r| r.passes.clear()),
        ];
        for (what, breaks) in broken {
            let mut r = synced();
            breaks(&mut r);
            assert!(!r.is_converged(), "OK despite {what}");
            assert_eq!(r.problems().len(), 1, "{what}: {:?}", r.problems());
        }
    }
}
