//! What the sections share: the daemon's limits and configs, request counts from the
//! simulator's statistics, a synced state seeded without uploading every image, and one
//! in-process pass with its requests counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use tapis_webodm_sync::clients::webodm::{NewProject, NewTask};
use tapis_webodm_sync::clients::Clients;
use tapis_webodm_sync::config::Config;
use tapis_webodm_sync::engine::discover::{self, Desired, Flight, Scope};
use tapis_webodm_sync::engine::naming;
use tapis_webodm_sync::engine::pass::{self, PassOptions, PassReport};
use tapis_webodm_sync::engine::state::{self, FlightRecord, Phase, Store, UploadedImage};
use tapis_webodm_sync::sim::{Sim, Stats};

use crate::{err, R};

/// The production defaults live here; the harness reads its rate limits from it.
const EXAMPLE_CONFIG: &str = include_str!("../../config/example.toml");
/// "Lifted" rate limit: high enough never to bind (concurrency caps stay at production values).
const LIFTED_RPS: u32 = 100_000;

// ------------------------------------------------------------------------------------------
// Limits and configs

/// Rate limits and concurrency caps of the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub tapis_rps: u32,
    pub tapis_concurrency: usize,
    pub webodm_rps: u32,
    pub uploads: usize,
}

impl Limits {
    /// The production defaults, as config/example.toml states them.
    pub fn production() -> R<Limits> {
        let t: toml::Table = EXAMPLE_CONFIG.parse().map_err(err)?;
        let int = |section: &str, key: &str| -> R<i64> {
            t.get(section)
                .and_then(|s| s.get(key))
                .and_then(toml::Value::as_integer)
                .ok_or_else(|| format!("config/example.toml has no [{section}] {key}"))
        };
        Ok(Limits {
            tapis_rps: int("tapis", "requests_per_second")? as u32,
            tapis_concurrency: int("tapis", "max_concurrent_requests")? as usize,
            webodm_rps: int("webodm", "requests_per_second")? as u32,
            uploads: int("webodm", "max_concurrent_uploads")? as usize,
        })
    }

    /// The same concurrency caps with the rate limits out of the way.
    pub fn lifted(self) -> Limits {
        Limits {
            tapis_rps: LIFTED_RPS,
            webodm_rps: LIFTED_RPS,
            ..self
        }
    }

    pub fn describe(&self) -> String {
        let rps = |r: u32| {
            if r >= LIFTED_RPS {
                "∞".to_string()
            } else {
                r.to_string()
            }
        };
        format!(
            "Tapis {} rps / {} at once, WebODM {} rps / {} uploads",
            rps(self.tapis_rps),
            self.tapis_concurrency,
            rps(self.webodm_rps),
            self.uploads
        )
    }
}

/// How a run's config differs from the shipped defaults: a config file with only the
/// required keys (URLs, credentials, state dir), as a user starts from.
#[derive(Clone, Debug, Default)]
pub struct Tweaks {
    /// Rate limits and caps; `None`: the shipped ones.
    pub limits: Option<Limits>,
    /// `sync.settle = "0s"`: a flight is committed by the pass that uploads it.
    pub no_settle: bool,
    /// `sync.interval`; `None`: the shipped one.
    pub interval: Option<&'static str>,
    /// `[results] assets` (off when empty, as shipped).
    pub results: Vec<&'static str>,
}

impl Tweaks {
    /// The shipped defaults with these limits.
    pub fn limits(l: Limits) -> Tweaks {
        Tweaks {
            limits: Some(l),
            ..Tweaks::default()
        }
    }

    /// The same with `settle = "0s"`.
    pub fn no_settle(self) -> Tweaks {
        Tweaks {
            no_settle: true,
            ..self
        }
    }
}

/// The config text of `t` pointed at `sim`, with its store in `state_dir`.
pub fn config_text(sim: &Sim, state_dir: &Path, t: &Tweaks) -> String {
    let c = sim.credentials();
    let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let url = s(&sim.base_url());
    let mut tapis = format!(
        "[tapis]\nbase_url = {url}\nusername = {}\npassword = {}\n",
        s(&c.tapis_username),
        s(&c.tapis_password)
    );
    let mut webodm = format!(
        "[webodm]\nbase_url = {url}\nusername = {}\npassword = {}\n",
        s(&c.webodm_username),
        s(&c.webodm_password)
    );
    if let Some(l) = t.limits {
        tapis += &format!(
            "requests_per_second = {}\nmax_concurrent_requests = {}\n",
            l.tapis_rps, l.tapis_concurrency
        );
        webodm += &format!(
            "requests_per_second = {}\nmax_concurrent_uploads = {}\n",
            l.webodm_rps, l.uploads
        );
    }
    let mut sync = format!("[sync]\nstate_dir = {}\n", s(&state_dir.to_string_lossy()));
    if t.no_settle {
        sync += "settle = \"0s\"\n";
    }
    if let Some(i) = t.interval {
        sync += &format!("interval = {}\n", s(i));
    }
    let mut text = format!("{tapis}\n{webodm}\n{sync}");
    if !t.results.is_empty() {
        let assets: Vec<String> = t.results.iter().map(|a| s(a)).collect();
        text += &format!("\n[results]\nassets = [{}]\n", assets.join(", "));
    }
    text
}

/// [`config_text`] parsed as the daemon parses it.
pub fn lib_config(sim: &Sim, state_dir: &Path, t: &Tweaks) -> R<Config> {
    Config::from_toml(
        &config_text(sim, state_dir, t),
        &state_dir.with_extension("toml"),
    )
    .map_err(err)
}

/// [`config_text`] written to `path`.
pub fn config_file(sim: &Sim, state_dir: &Path, t: &Tweaks, path: &Path) -> R<()> {
    std::fs::write(path, config_text(sim, state_dir, t)).map_err(err)
}

pub fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

// ------------------------------------------------------------------------------------------
// Request counts from the simulator's statistics

/// Requests per route between two snapshots of the simulator's statistics.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    per_route: BTreeMap<String, u64>,
}

impl Counts {
    pub fn between(before: &Stats, after: &Stats) -> Counts {
        let total = |s: &Stats| -> BTreeMap<String, u64> {
            s.requests
                .iter()
                .map(|(r, by_status)| (r.clone(), by_status.values().sum()))
                .collect()
        };
        let (a, b) = (total(before), total(after));
        let per_route = b
            .iter()
            .map(|(r, n)| (r.clone(), n - a.get(r).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Counts { per_route }
    }
    fn sum(&self, f: impl Fn(&str) -> bool) -> u64 {
        self.per_route
            .iter()
            .filter(|(r, _)| f(r))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn route(&self, r: &str) -> u64 {
        self.per_route.get(r).copied().unwrap_or(0)
    }
    pub fn tapis(&self) -> u64 {
        self.sum(|r| r.split(' ').nth(1).is_some_and(|p| p.starts_with("/v3/")))
    }
    pub fn tapis_tokens(&self) -> u64 {
        self.route("POST /v3/oauth2/tokens")
    }
    pub fn system_pages(&self) -> u64 {
        self.route("GET /v3/systems")
    }
    pub fn root_listings(&self) -> u64 {
        self.route("GET /v3/files/ops/{system}")
    }
    pub fn folder_listings(&self) -> u64 {
        self.route("GET /v3/files/ops/{system}/{path}")
    }
    pub fn webodm(&self) -> u64 {
        self.sum(|r| r.split(' ').nth(1).is_some_and(|p| p.starts_with("/api/")))
    }
    /// POST/PUT/PATCH/DELETE under `/api/`, logins excluded.
    pub fn webodm_writes(&self) -> u64 {
        self.sum(|r| {
            let mut it = r.split(' ');
            let (m, p) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            p.starts_with("/api/")
                && p != "/api/token-auth/"
                && matches!(m, "POST" | "PUT" | "PATCH" | "DELETE")
        })
    }
    pub fn webodm_reads(&self) -> BTreeMap<String, u64> {
        self.per_route
            .iter()
            .filter(|(r, _)| r.starts_with("GET /api/") || r.starts_with("HEAD /api/"))
            .map(|(r, n)| (r.clone(), *n))
            .collect()
    }
}

// ------------------------------------------------------------------------------------------
// A synced state without uploading every image

/// What [`seed`] did.
pub struct Seeded {
    pub desired: Desired,
    pub time: Duration,
    pub images: u64,
}

/// Makes the flights of `only` (all systems when empty) look synced: discovers them through
/// the daemon's own discovery, creates each flight's project and task in the simulated WebODM
/// (names, description and tags from `naming`, as `apply` does), and writes the records a sync
/// ends with: every image confirmed, phase `completed` (processed; results off), listing
/// settled an hour ago. Who should see each project is left to [`warm_up`].
///
/// With `image_records` false the per-image records are left out, as the engine leaves a
/// committed flight (committing drops them).
pub async fn seed(
    config: &Config,
    store: &Store,
    only: &[String],
    image_records: bool,
) -> R<Seeded> {
    let clients = Clients::new(config).map_err(err)?;
    let t = Instant::now();
    let scope = Scope::new(&config.tapis, &config.layout, only);
    let desired = discover::discover(&clients.tapis, &scope)
        .await
        .map_err(err)?;
    if !desired.errors.is_empty() {
        return Err(format!("seeding discovery: {:?}", &desired.errors[..1]));
    }
    let now = state::now_ms();
    let webodm = &clients.webodm;
    let created: Vec<R<(&Flight, i64, String, String)>> = stream::iter(&desired.flights)
        .map(|f| async move {
            let key = &f.key;
            let project = webodm
                .create_project(&NewProject {
                    name: naming::project_name(key),
                    description: naming::description(
                        key,
                        &f.images_path,
                        f.image_count() as u64,
                        &state::rfc3339(now),
                    ),
                    tags: naming::tags(key),
                })
                .await
                .map_err(err)?;
            let task = webodm
                .create_task(
                    project.id,
                    &NewTask {
                        name: naming::task_name(key, 0),
                        options: config.webodm.task_options.clone(),
                        tags: naming::tags(key),
                    },
                )
                .await
                .map_err(err)?;
            Ok((f, project.id, project.name, task.id))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let created: Vec<_> = created.into_iter().collect::<R<_>>()?;
    let since = now - 3_600_000;
    let images = AtomicU64::new(0);
    let written: Vec<R<()>> = stream::iter(created)
        .map(|(f, project_id, project_name, task_id)| {
            let images = &images;
            async move {
                let records: Vec<UploadedImage> = f
                    .images
                    .iter()
                    .filter(|_| image_records)
                    .map(|i| UploadedImage {
                        size: i.size,
                        last_modified: i.last_modified.clone(),
                    })
                    .collect();
                let marks = f
                    .images
                    .iter()
                    .zip(&records)
                    .map(|(i, r)| store.mark_uploaded(&f.key, &i.name, r));
                futures_util::future::try_join_all(marks)
                    .await
                    .map_err(err)?;
                images.fetch_add(records.len() as u64, Ordering::Relaxed);
                let fp = f.fingerprint();
                let mut rec = FlightRecord::new(f.key.clone(), since);
                // Processed already (results off): nothing left to follow, as in a store
                // whose flights are all done.
                rec.phase = Phase::Completed;
                rec.project_id = Some(project_id);
                rec.project_name = Some(project_name);
                rec.task_id = Some(task_id);
                rec.images_total = f.images.len() as u64;
                rec.images_uploaded = f.images.len() as u64;
                rec.listing = fp;
                rec.listing_since_ms = since;
                rec.committed_listing = Some(fp);
                store.put_flight(&rec).await.map_err(err)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    written.into_iter().collect::<R<Vec<()>>>()?;
    Ok(Seeded {
        desired,
        time: t.elapsed(),
        images: images.into_inner(),
    })
}

/// The daemon's own first pass over the seeded flights of `only` (every folder listed, rate
/// limits of `config`): it gives each project's access as the shipped `[access]` says and
/// records each flight checked now, as a daemon that has run for a while left them. Fails
/// on any error of the pass.
pub async fn warm_up(sim: &Sim, config: &Config, store: &Store, only: &[String]) -> R<Measured> {
    let m = measured_pass(sim, config, store, only, true).await?;
    match m.report.summary.errors.first() {
        Some(e) => Err(format!("warm-up pass: {e}")),
        None => Ok(m),
    }
}

/// Sets every record's `last_checked_ms` (flushed): `None` makes the next pass list every
/// committed flight; `now − interval` is the steady state, each flight listed at its own
/// point of the recheck period, last checked one pass ago.
pub async fn set_last_checked(store: &Store, at: Option<i64>) -> R<Vec<FlightRecord>> {
    let mut records = store.flights().map_err(err)?;
    for rec in &mut records {
        rec.last_checked_ms = at;
        store.put_flight_unflushed(rec).map_err(err)?;
    }
    store.flush().await.map_err(err)?;
    Ok(records)
}

// ------------------------------------------------------------------------------------------
// One pass of the daemon, in-process

/// One measured pass.
pub struct Measured {
    pub wall: Duration,
    pub report: PassReport,
    pub counts: Counts,
}

impl Measured {
    /// Nothing planned, nothing done, nothing failed.
    pub fn is_noop(&self) -> bool {
        let s = &self.report.summary;
        let p = &self.report.plan;
        s.errors.is_empty()
            && p.flights.is_empty()
            && p.vanished.is_empty()
            && s.projects_created == 0
            && s.tasks_created == 0
            && s.images_uploaded == 0
            && s.tasks_committed == 0
            && s.grants_added == 0
            && self.counts.webodm_writes() == 0
    }

    /// The plan column of the tables.
    pub fn plan_cell(&self) -> String {
        if self.is_noop() {
            "no-op".to_string()
        } else {
            format!(
                "NOT a no-op: {} flights planned, {} grants, {} errors",
                self.report.plan.flights.len(),
                self.report.summary.grants_added,
                self.report.summary.errors.len()
            )
        }
    }
}

/// One pass with warm clients (logged in beforehand, as in a running daemon whose token lives
/// hours), counting the requests the simulator saw during it; `full` lists every folder.
pub async fn measured_pass(
    sim: &Sim,
    config: &Config,
    store: &Store,
    only: &[String],
    full: bool,
) -> R<Measured> {
    let clients = Clients::new(config).map_err(err)?;
    clients.tapis.login().await.map_err(err)?;
    clients.webodm.login().await.map_err(err)?;
    let opts = PassOptions {
        dry_run: false,
        only_systems: only.to_vec(),
        full,
    };
    let before = sim.stats();
    let t = Instant::now();
    let report = pass::pass(config, &clients, Some(store), &opts, no_stop()).await;
    let wall = t.elapsed();
    let counts = Counts::between(&before, &sim.stats());
    Ok(Measured {
        wall,
        report,
        counts,
    })
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
