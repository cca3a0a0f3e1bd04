//! One pass: discover the desired state on Tapis, read the observed state from the store and
//! WebODM, plan, apply, and summarise what was done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::clients::webodm::WebodmClient;
use crate::clients::Clients;
use crate::config::Config;
use crate::engine::apply::Engine;
use crate::engine::discover::{self, Scope};
use crate::engine::plan::{self, Observed, Plan, Settings};
use crate::engine::state::{now_ms, StateError, Store};
use crate::engine::PassSummary;

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
        if !rec.phase.is_committed() && rec.task_id.is_some() {
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
    let scope =
        Scope::new(&config.tapis, &config.layout, &opts.only_systems).expect_flights_on(store);
    // Discovery changes nothing: a stop signal arriving during it ends the pass at once. (A
    // pass started with `stopping` already set still plans and creates, uploading nothing.)
    let discovered = if stopping.load(Ordering::SeqCst) {
        discover::discover(&clients.tapis, &scope).await
    } else {
        tokio::select! {
            d = discover::discover(&clients.tapis, &scope) => d,
            _ = stop_requested(&stopping) => {
                info!("stop signal during discovery: the pass ends without applying anything");
                return finish(summary, plan, clients, started, (t0, w0));
            }
        }
    };
    match discovered {
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
                on_change: config.sync.on_change_after_commit,
            };
            plan = plan::plan(&desired, &obs, now_ms(), &settings);
            if let (false, Some(store)) = (opts.dry_run, store) {
                let engine = Engine {
                    tapis: &clients.tapis,
                    webodm: &clients.webodm,
                    store,
                    config,
                    stopping,
                    policy: crate::clients::http::RetryPolicy::new(&config.retry),
                    progress: (plan.uploads().0 > 0)
                        .then(crate::service::telemetry::transfer_progress)
                        .flatten(),
                };
                engine.apply(&plan, &mut summary).await;
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

/// Resolves once `stopping` is set (polled: it is a plain flag shared with the engine).
pub(crate) async fn stop_requested(stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
