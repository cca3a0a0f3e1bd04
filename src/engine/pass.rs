//! One pass: discover the desired state on Tapis, read the observed state from the store and
//! WebODM, plan and apply each flight as its listing comes in, and summarise what was done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{future, stream, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use crate::clients::webodm::WebodmClient;
use crate::clients::{Clients, RetryPolicy};
use crate::config::Config;
use crate::engine::access::{Access, Resolver};
use crate::engine::apply::Engine;
use crate::engine::discover::{self, Flight, Found, Scope};
use crate::engine::plan::{
    unlisted, FlightPlan, Observed, Plan, Planner, Settings, Step, WebodmView,
};
use crate::engine::state::{now_ms, FlightKey, FlightRecord, StateError, Store, UploadedImage};
use crate::engine::PassSummary;

/// How a pass is scoped.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Plan only: nothing is created, uploaded or recorded.
    pub dry_run: bool,
    /// Only these systems (the `--systems` filter); empty = the config's scope.
    pub only_systems: Vec<String>,
    /// List every flight's images folder, also settled flights whose recheck is not due.
    pub full: bool,
}

/// A pass's plan and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// What the pass did (for a dry run: what was found, nothing applied).
    #[serde(flatten)]
    pub summary: PassSummary,
    /// What the pass planned (image lists dropped: counts only).
    pub plan: Plan,
}

/// Reads what [`plan::plan`] needs from the store: every record, and the confirmed images of
/// the flights that are not committed yet (committed flights never upload again).
pub fn observed(store: &Store) -> Result<Observed, StateError> {
    let mut obs = Observed::default();
    for rec in store.flights()? {
        if let Some(done) = uploaded_images(store, &rec)? {
            obs.uploaded.insert(rec.key.clone(), done);
        }
        obs.records.insert(rec.key.clone(), rec);
    }
    Ok(obs)
}

/// The images WebODM confirmed for a flight's current task, when it has an uncommitted one.
fn uploaded_images(
    store: &Store,
    rec: &FlightRecord,
) -> Result<Option<BTreeMap<String, UploadedImage>>, StateError> {
    if rec.phase.is_committed() || rec.task_id.is_none() {
        return Ok(None);
    }
    store.uploaded_images(&rec.key).map(Some)
}

/// Every project WebODM shows with its task ids, for drift checks; `None` (drift unchecked
/// this pass) when the listing fails.
async fn webodm_view(webodm: &WebodmClient) -> Option<WebodmView> {
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

/// What the planning stage of a pass keeps while listings come in.
struct Planning<'a> {
    store: Option<&'a Store>,
    records: &'a BTreeMap<FlightKey, FlightRecord>,
    planner: Planner<'a>,
    images_dir: &'a str,
    recheck: Duration,
    dry_run: bool,
    progress: Option<&'a indicatif::ProgressBar>,
    now: i64,
    /// Systems whose root was listed.
    scanned: BTreeSet<String>,
    /// Flights seen present (listed or settled), and folders whose state is unknown.
    present: BTreeSet<FlightKey>,
    unknown: BTreeSet<FlightKey>,
    flights: usize,
    errors: Vec<String>,
    plan: Plan,
    /// Who should see each system's projects, as resolved this pass.
    access: BTreeMap<String, Access>,
}

impl Planning<'_> {
    /// Takes one discovery item; returns a flight plan to apply now, if any.
    fn take(&mut self, found: Found) -> Option<FlightPlan> {
        match found {
            Found::Root { system, .. } => {
                self.scanned.insert(system);
                None
            }
            Found::RootFailed { system, error } => {
                let records: Vec<&FlightRecord> = self
                    .records
                    .values()
                    .filter(|r| r.key.system == system)
                    .collect();
                for rec in records {
                    self.note_listing_error(rec, &error);
                }
                self.errors.push(error);
                None
            }
            Found::Refused { error, .. } => {
                self.errors.push(error);
                None
            }
            Found::Access { system, access } => {
                match access {
                    Ok(a) => {
                        self.access.insert(system, a);
                    }
                    Err(e) => self.errors.push(e),
                }
                None
            }
            Found::ListingFailed { key, error } => {
                if let Some(rec) = self.records.get(&key) {
                    self.note_listing_error(rec, &error);
                }
                self.unknown.insert(key);
                self.errors.push(error);
                None
            }
            Found::NotAFlight(_) => None,
            Found::Flight { flight, warnings } => {
                for w in &warnings {
                    warn!(system = %flight.key.system, flight = %flight.key.flight, "{w}");
                }
                self.errors.extend(flight.rejected.iter().cloned());
                if flight.image_count() == 0 {
                    return None;
                }
                self.plan_flight(flight, true)
            }
            Found::Settled(key) => {
                let flight = Flight::unlisted(key, self.images_dir);
                self.plan_flight(flight, false)
            }
        }
    }

    fn plan_flight(&mut self, flight: Flight, listed: bool) -> Option<FlightPlan> {
        let key = flight.key.clone();
        self.flights += 1;
        self.present.insert(key.clone());
        let rec = self.records.get(&key);
        let uploaded = match (self.store, rec) {
            (Some(store), Some(rec)) => match uploaded_images(store, rec) {
                Ok(done) => done,
                Err(e) => {
                    self.errors.push(format!("{key}: {e}"));
                    return None;
                }
            },
            _ => None,
        };
        let access = self.access.get(&key.system);
        let planned = self
            .planner
            .flight(flight, listed, rec, uploaded.as_ref(), access);
        self.plan.waiting.extend(planned.waiting);
        let Some(fp) = planned.plan else {
            if let (true, Some(rec)) = (listed, rec) {
                self.note_checked(rec);
            }
            return None;
        };
        if let (Some(bar), false) = (self.progress, self.dry_run) {
            bar.inc_length(fp.steps.iter().map(upload_bytes).sum());
        }
        if self.dry_run {
            self.plan.flights.push(fp.without_images());
            return None;
        }
        self.plan.flights.push(fp.clone().without_images());
        Some(fp)
    }

    /// Records that a settled flight's folder was listed now (not flushed: losing it in a
    /// crash only brings its next recheck forward).
    fn note_checked(&self, rec: &FlightRecord) {
        if self.dry_run || self.recheck.is_zero() || !rec.phase.is_committed() {
            return;
        }
        let mut rec = rec.clone();
        rec.last_checked_ms = Some(self.now);
        self.put(&rec);
    }

    /// Records why a flight's listing failed, shown by `status` until a listing succeeds.
    fn note_listing_error(&self, rec: &FlightRecord, error: &str) {
        if self.dry_run || rec.listing_error.as_deref() == Some(error) {
            return;
        }
        let mut rec = rec.clone();
        rec.listing_error = Some(error.to_string());
        self.put(&rec);
    }

    fn put(&self, rec: &FlightRecord) {
        if let Some(store) = self.store {
            if let Err(e) = store.put_flight_unflushed(rec) {
                warn!(system = %rec.key.system, flight = %rec.key.flight, error = %e, "cannot record the listing in the state store");
            }
        }
    }

    /// Recorded flights on fully listed systems that were not found: their folders are gone.
    fn vanished(&self) -> Vec<FlightKey> {
        self.records
            .values()
            .filter(|r| {
                r.vanished_ms.is_none()
                    && self.scanned.contains(&r.key.system)
                    && !self.unknown.contains(&r.key)
                    && !self.present.contains(&r.key)
            })
            .map(|r| r.key.clone())
            .collect()
    }
}

fn upload_bytes(step: &Step) -> u64 {
    match step {
        Step::Upload { bytes, .. } => *bytes,
        _ => 0,
    }
}

/// One pass: lists the systems (and, at the same time, what WebODM holds), then each system's
/// root and each candidate folder; each flight is planned as soon as its listing is in and
/// applied right away, up to `webodm.max_concurrent_uploads` flights at once, so a slow or
/// failing listing delays only its own flight (or system). `store` is `None` for a dry run on a
/// state dir that does not exist yet.
pub async fn pass(
    config: &Config,
    clients: &Clients,
    store: Option<&Store>,
    opts: &PassOptions,
    stopping: Arc<AtomicBool>,
) -> PassReport {
    let started = Instant::now();
    let counts = (clients.tapis.requests(), clients.webodm.requests());
    let mut summary = PassSummary::default();
    let now = now_ms();
    let records: BTreeMap<FlightKey, FlightRecord> = match store.map(Store::flights).transpose() {
        Ok(rs) => rs
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect(),
        Err(e) => {
            summary.errors.push(format!("reading the state store: {e}"));
            return finish(summary, Plan::default(), clients, started, counts);
        }
    };
    let sync = &config.sync;
    let mut scope = Scope::new(&config.tapis, &config.layout, &opts.only_systems);
    scope.known_systems = records
        .values()
        .filter(|r| r.vanished_ms.is_none())
        .map(|r| r.key.system.clone())
        .collect();
    if !opts.full {
        scope.settled = unlisted(
            records.values(),
            now,
            sync.recheck_committed,
            sync.interval,
            sync.on_change_after_commit,
        );
    }
    let with_projects = records.values().any(|r| r.project_id.is_some());
    let (systems, view) = tokio::join!(discover::systems_in_scope(&clients.tapis, &scope), async {
        if with_projects {
            webodm_view(&clients.webodm).await
        } else {
            None
        }
    });
    let systems = match systems {
        Ok(s) => s,
        Err(e) => {
            summary
                .errors
                .push(format!("listing Tapis systems failed: {e}"));
            return finish(summary, Plan::default(), clients, started, counts);
        }
    };
    let settings = Settings {
        settle: sync.settle,
        max_new_projects: sync.max_new_projects_per_pass,
        on_change: sync.on_change_after_commit,
        restart_failed: config.processing.restart_failed,
        result_assets: config.results.assets.clone(),
    };
    let dry_run = opts.dry_run || store.is_none();
    let progress = (!dry_run)
        .then(crate::service::telemetry::transfer_progress)
        .flatten();
    let mut planning = Planning {
        store,
        records: &records,
        planner: Planner::new(&settings, view.as_ref(), now),
        images_dir: &scope.images_dir,
        recheck: sync.recheck_committed,
        dry_run,
        progress: progress.as_ref(),
        now,
        scanned: BTreeSet::new(),
        present: BTreeSet::new(),
        unknown: BTreeSet::new(),
        flights: 0,
        errors: Vec::new(),
        plan: Plan::default(),
        access: BTreeMap::new(),
    };
    let engine = match (dry_run, store) {
        (false, Some(store)) => Some(Engine {
            tapis: &clients.tapis,
            webodm: &clients.webodm,
            store,
            config,
            stopping: stopping.clone(),
            policy: RetryPolicy::new(&config.retry),
            progress: progress.clone(),
            uploads: Arc::new(Semaphore::new(config.webodm.max_concurrent_uploads)),
        }),
        _ => None,
    };
    // Discovery runs beside planning and applying: listings come in through a channel, each
    // flight is planned as it arrives and applied right away. A listed flight holds one of these
    // slots until it is applied, so listings run ahead of the uploads by a bounded amount.
    let slots = Arc::new(Semaphore::new(
        config.webodm.max_concurrent_uploads + scope.concurrency,
    ));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let resolver = Resolver::new(
        &config.access,
        &clients.tapis,
        &clients.webodm,
        &config.tapis.username,
        &config.webodm.username,
    );
    let access = resolver.enabled().then_some(&resolver);
    let scanning = discover::scan(
        &clients.tapis,
        &scope,
        systems,
        Some(slots),
        access,
        &stopping,
        tx,
    );
    // Stopping: no new listing is taken (and so no new flight started); flights under way
    // finish the images in flight (see `Engine::reconcile`).
    let mut cut_short = false;
    let applying = async {
        let found = stream::poll_fn(|cx| rx.poll_recv(cx)).take_while(|_| {
            let go = !stopping.load(Ordering::SeqCst);
            cut_short |= !go;
            future::ready(go)
        });
        let planned =
            found.filter_map(|(f, slot)| future::ready(planning.take(f).map(|fp| (fp, slot))));
        match &engine {
            Some(engine) => {
                planned
                    .map(|(fp, slot)| async move {
                        let outcome = engine.reconcile(&fp).await;
                        drop(slot);
                        outcome
                    })
                    .buffer_unordered(config.webodm.max_concurrent_uploads)
                    .for_each(|o| {
                        summary.absorb(o);
                        future::ready(())
                    })
                    .await
            }
            None => planned.for_each(|_| future::ready(())).await,
        }
        // Whatever is still queued is not started.
        rx.close();
    };
    tokio::join!(scanning, applying);
    // A stop during the pass leaves some folders unlisted: they are not vanished.
    cut_short |= stopping.load(Ordering::SeqCst);
    if cut_short {
        info!("stop signal: the pass ends without starting the flights not yet listed");
    }
    summary.systems_scanned = planning.scanned.len();
    summary.flights_discovered = planning.flights;
    summary.errors.append(&mut planning.errors);
    let mut plan = std::mem::take(&mut planning.plan);
    if !cut_short {
        plan.vanished = planning.vanished();
    }
    if let Some(engine) = &engine {
        for key in &plan.vanished {
            if let Err(e) = engine.mark_vanished(key).await {
                summary.errors.push(format!("{key}: {e}"));
            }
        }
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    summary
        .created_projects
        .sort_by(|a, b| (&a.system_id, &a.flight_name).cmp(&(&b.system_id, &b.flight_name)));
    summary.errors.sort();
    plan.flights
        .sort_by(|a, b| (&a.system_id, &a.flight_name).cmp(&(&b.system_id, &b.flight_name)));
    plan.waiting
        .sort_by(|a, b| (&a.system_id, &a.flight_name).cmp(&(&b.system_id, &b.flight_name)));
    finish(summary, plan, clients, started, counts)
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
        grants_added = summary.grants_added,
        tasks_restarted = summary.tasks_restarted,
        results_written = summary.results_written,
        result_bytes = summary.result_bytes,
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
