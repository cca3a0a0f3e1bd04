//! `demo`: the simulator with a sample dataset, passes until nothing is left to do, and what
//! WebODM then holds according to the simulator's own record (never the daemon's counters).

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
use crate::sim::{DatasetSpec, Expected, Sim, WebodmReport};

/// The config `demo` runs with (base URLs, credentials and state dir are replaced).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Passes at most.
const MAX_PASSES: usize = 10;

/// What the demo found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoResult {
    /// What the dataset holds (from the generator).
    pub expected: Expected,
    /// Each pass's summary.
    pub passes: Vec<PassSummary>,
    /// What WebODM holds, checked byte for byte by the simulator.
    pub webodm: WebodmReport,
}

impl DemoResult {
    /// Every flight synced exactly once, byte for byte, per the simulator's full report (task
    /// counts, unknown projects and missing images included), and the last pass did nothing.
    pub fn is_converged(&self) -> bool {
        self.problems().is_empty()
    }

    /// Why the demo did not converge: one line each; empty when it did.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.webodm.mismatches(&self.expected);
        match self.passes.last() {
            Some(p)
                if p.projects_created == 0
                    && p.tasks_created == 0
                    && p.images_uploaded == 0
                    && p.tasks_committed == 0
                    && p.errors.is_empty() => {}
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

/// Runs the demo: passes until one creates and uploads nothing (at most 10).
pub async fn run() -> Result<DemoResult, DemoError> {
    let sim = Sim::start(&DatasetSpec::demo(), "127.0.0.1:0".parse().expect("valid")).await?;
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
        let s = report.summary;
        let idle = s.projects_created == 0
            && s.tasks_created == 0
            && s.images_uploaded == 0
            && s.tasks_committed == 0
            && s.errors.is_empty();
        passes.push(s);
        if idle {
            break;
        }
    }
    let report = sim.report();
    let result = DemoResult {
        expected: report.expected,
        passes,
        webodm: report.webodm,
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
            "pass {}: {} projects and {} tasks created, {} images ({}) uploaded, {} tasks committed, {} errors, {} Tapis + {} WebODM requests, {:.2} s",
            i + 1,
            p.projects_created,
            p.tasks_created,
            p.images_uploaded,
            HumanBytes(p.bytes_uploaded),
            p.tasks_committed,
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
        "Simulated WebODM holds {} projects, {} tasks ({} committed), {} images ({}); {} duplicate projects, {} corrupt images.",
        w.projects,
        w.tasks,
        w.committed_tasks,
        w.images,
        HumanBytes(w.bytes),
        w.duplicate_projects,
        w.corrupt_images
    );
    let problems = r.problems();
    if problems.is_empty() {
        println!("OK: every flight has one project with one committed task holding its images byte for byte; the last pass had nothing to do.");
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
