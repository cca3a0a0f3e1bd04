//! The loop: one pass = discover → plan → apply; `run` repeats it every `interval`, wakes on
//! SIGUSR1, reloads the config on SIGHUP, and stops cleanly on SIGTERM/SIGINT after the images
//! in flight (a second signal exits at once; every record is already flushed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::apply::{Engine, PassSummary};
use crate::config::Config;
use crate::discover::{self, Scope};
use crate::http::ApiError;
use crate::plan::{self, Observed, Plan, Settings};
use crate::state::{now_ms, Phase, StateError, Store};
use crate::tapis::TapisClient;
use crate::webodm::WebodmClient;

/// Both service clients, built from one config.
pub struct Clients {
    /// Tapis.
    pub tapis: TapisClient,
    /// WebODM.
    pub webodm: WebodmClient,
}

impl Clients {
    /// Builds both clients (no request is sent yet).
    pub fn new(config: &Config) -> Result<Clients, ApiError> {
        Ok(Clients {
            tapis: TapisClient::new(&config.tapis, &config.retry)?,
            webodm: WebodmClient::new(&config.webodm, &config.retry)?,
        })
    }
}

/// How a pass is scoped.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Plan only: nothing is created, uploaded or recorded.
    pub dry_run: bool,
    /// Only these systems (the `--systems` filter); empty = the config's scope.
    pub only_systems: Vec<String>,
}

/// A pass's plan and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// What the pass did (for a dry run: what was found, nothing applied).
    #[serde(flatten)]
    pub summary: PassSummary,
    /// What the pass planned.
    pub plan: Plan,
}

/// Reads what plan needs from the store: every record, and the confirmed images of the flights
/// that are not committed yet (committed flights never upload again).
pub fn observed(store: &Store) -> Result<Observed, StateError> {
    let mut obs = Observed::default();
    for rec in store.flights()? {
        if rec.phase != Phase::Committed && rec.task_id.is_some() {
            obs.uploaded
                .insert(rec.key.clone(), store.uploaded_images(&rec.key)?);
        }
        obs.records.insert(rec.key.clone(), rec);
    }
    Ok(obs)
}

/// Every project WebODM shows with its task ids, for drift checks; `None` (drift unchecked
/// this pass) when the listing fails.
async fn webodm_view(webodm: &WebodmClient) -> Option<BTreeMap<i64, BTreeSet<String>>> {
    match webodm.list_projects().await {
        Ok(projects) => Some(
            projects
                .into_iter()
                .map(|p| (p.id, p.tasks.into_iter().collect()))
                .collect(),
        ),
        Err(e) => {
            warn!(error = %e, "listing WebODM projects failed; deleted projects and tasks are not detected this pass");
            None
        }
    }
}

/// One pass. `store` is `None` for a dry run on a state dir that does not exist yet.
pub async fn pass(
    config: &Config,
    clients: &Clients,
    store: Option<&Store>,
    opts: &PassOptions,
    stopping: Arc<AtomicBool>,
) -> PassReport {
    let started = Instant::now();
    let (t0, w0) = (clients.tapis.requests(), clients.webodm.requests());
    let mut summary = PassSummary::default();
    let mut plan = Plan::default();
    let scope = Scope::new(&config.tapis, &config.layout, &opts.only_systems);
    match discover::discover(&clients.tapis, &scope).await {
        Err(e) => summary
            .errors
            .push(format!("listing Tapis systems failed: {e}")),
        Ok(desired) => {
            summary.systems_scanned = desired.scanned.len();
            summary.flights_discovered = desired.flights.len();
            summary.errors.extend(desired.errors.iter().cloned());
            let mut obs = match store.map(observed).transpose() {
                Ok(o) => o.unwrap_or_default(),
                Err(e) => {
                    summary.errors.push(format!("reading the state store: {e}"));
                    return finish(summary, plan, clients, started, (t0, w0));
                }
            };
            if obs.records.values().any(|r| r.project_id.is_some()) {
                obs.webodm = webodm_view(&clients.webodm).await;
            }
            let settings = Settings {
                settle: config.sync.settle,
                max_new_projects: config.sync.max_new_projects_per_pass,
            };
            plan = plan::plan(&desired, &obs, now_ms(), &settings);
            if let (false, Some(store)) = (opts.dry_run, store) {
                let engine = Engine {
                    tapis: &clients.tapis,
                    webodm: &clients.webodm,
                    store,
                    config,
                    stopping,
                    policy: crate::http::RetryPolicy::new(&config.retry),
                    progress: (plan.uploads().0 > 0)
                        .then(crate::telemetry::transfer_progress)
                        .flatten(),
                };
                let applied = engine.apply(&plan).await;
                summary.projects_created = applied.projects_created;
                summary.created_projects = applied.created_projects;
                summary.tasks_created = applied.tasks_created;
                summary.images_uploaded = applied.images_uploaded;
                summary.bytes_uploaded = applied.bytes_uploaded;
                summary.tasks_committed = applied.tasks_committed;
                summary.errors.extend(applied.errors);
            }
        }
    }
    finish(summary, plan, clients, started, (t0, w0))
}

fn finish(
    mut summary: PassSummary,
    plan: Plan,
    clients: &Clients,
    started: Instant,
    (t0, w0): (u64, u64),
) -> PassReport {
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.tapis_requests = clients.tapis.requests() - t0;
    summary.webodm_requests = clients.webodm.requests() - w0;
    info!(
        systems_scanned = summary.systems_scanned,
        flights_discovered = summary.flights_discovered,
        projects_created = summary.projects_created,
        tasks_created = summary.tasks_created,
        images_uploaded = summary.images_uploaded,
        bytes_uploaded = summary.bytes_uploaded,
        tasks_committed = summary.tasks_committed,
        errors = summary.errors.len(),
        duration_ms = summary.duration_ms,
        tapis_requests = summary.tapis_requests,
        webodm_requests = summary.webodm_requests,
        "pass finished"
    );
    for e in &summary.errors {
        warn!(error = %e, "pass error");
    }
    PassReport { summary, plan }
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state store.
    #[error(transparent)]
    State(#[from] StateError),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] ApiError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs passes every `interval` until SIGTERM/SIGINT.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), RunError> {
    let store = Store::open(&config.sync.state_dir)?;
    let mut config = config;
    let mut clients = Clients::new(&config)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let signals = listen_for_signals(stopping.clone(), reload.clone(), wake.clone())
        .map_err(RunError::Signals)?;
    info!(state_dir = %store.dir().display(), interval = %humantime::format_duration(config.sync.interval), "daemon started");
    while !stopping.load(Ordering::SeqCst) {
        pass(
            &config,
            &clients,
            Some(&store),
            &PassOptions::default(),
            stopping.clone(),
        )
        .await;
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.sync.interval) => {}
            _ = wake.notified() => {}
        }
        if reload.swap(false, Ordering::SeqCst) {
            if let Some((c, cl)) = reload_config(&config_path, &config) {
                config = c;
                clients = cl;
            }
        }
    }
    store.flush().await?;
    signals.close();
    info!("daemon stopped");
    Ok(())
}

/// Re-reads the config; keeps the old one (and says why) when the new one is invalid.
fn reload_config(path: &Path, old: &Config) -> Option<(Config, Clients)> {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "config reload failed; keeping the running config");
            return None;
        }
    };
    if new.sync.state_dir != old.sync.state_dir {
        warn!("sync.state_dir changed: it takes effect at the next restart");
    }
    match Clients::new(&new) {
        Ok(clients) => {
            info!(path = %path.display(), "config reloaded");
            Some((new, clients))
        }
        Err(e) => {
            error!(error = %e, "config reload failed; keeping the running config");
            None
        }
    }
}

/// Spawns the signal listener: TERM/INT set `stopping` (a second one exits at once), HUP sets
/// `reload`, USR1 and HUP wake the loop.
fn listen_for_signals(
    stopping: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> std::io::Result<signal_hook_tokio::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let handle = signals.handle();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGTERM | SIGINT => {
                    if stopping.swap(true, Ordering::SeqCst) {
                        warn!("second stop signal: exiting now; the store is consistent");
                        std::process::exit(130);
                    }
                    info!("stop signal: finishing the images in flight, starting nothing new");
                    wake.notify_one();
                }
                SIGHUP => {
                    reload.store(true, Ordering::SeqCst);
                    wake.notify_one();
                }
                _ => {
                    info!("SIGUSR1: starting a pass now");
                    wake.notify_one();
                }
            }
        }
    });
    Ok(handle)
}
