//! What each command does and prints; `main.rs` only parses and dispatches here.
//!
//! Every function returns the process exit code: 0 ok, 1 a pass finished with errors (or a
//! check failed), 75 the state dir is locked, 78 the config is unusable.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use indicatif::HumanBytes;
use serde::Serialize;

use crate::clients::Clients;
use crate::config::{self, Config, ConfigError};
use crate::engine::discover::{self, Scope};
use crate::engine::pass::{self, PassOptions, PassReport};
use crate::engine::plan::Step;
use crate::engine::state::{FlightKey, StateError, Store};
use crate::service::daemon;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the pass or check finished with errors.
pub const EXIT_ERRORS: u8 = 1;
/// Exit code: the state dir is locked by another process (EX_TEMPFAIL).
pub const EXIT_LOCKED: u8 = 75;
/// Exit code: the config is unusable (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// The value of a step, or return its exit code (the step already printed the problem).
macro_rules! or_exit {
    ($step:expr) => {
        match $step {
            Ok(value) => value,
            Err(code) => return code,
        }
    };
}

/// Loads the config and starts logging; prints the problem and returns 78 when it can't.
fn load(flag: Option<PathBuf>) -> Result<(PathBuf, Config), u8> {
    let path = config::locate(flag.as_deref());
    match Config::load(&path) {
        Ok(c) => {
            crate::service::telemetry::init(c.log.format, &c.log.level);
            c.warning_lines(&path)
                .iter()
                .for_each(|w| eprintln!("warning: {w}"));
            Ok((path, c))
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!(
                "error: {e}\nhint: pass --config PATH or set {}; config/example.toml documents every key",
                config::PATH_ENV
            );
            Err(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_CONFIG)
        }
    }
}

fn clients(config: &Config) -> Result<Clients, u8> {
    Clients::new(config).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CONFIG
    })
}

fn open_store(dir: &Path) -> Result<Store, u8> {
    Store::open(dir).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            StateError::Locked { .. } => EXIT_LOCKED,
            _ => EXIT_ERRORS,
        }
    })
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serializes")
    );
}

/// `run`: the daemon.
pub async fn run(flag: Option<PathBuf>) -> u8 {
    let (path, config) = or_exit!(load(flag));
    match daemon::run(path, config).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                daemon::RunError::State(StateError::Locked { .. }) => EXIT_LOCKED,
                daemon::RunError::Client(_) | daemon::RunError::Admin(_) => EXIT_CONFIG,
                _ => EXIT_ERRORS,
            }
        }
    }
}

/// `once` and `plan`: one pass (or only its plan).
pub async fn once(
    flag: Option<PathBuf>,
    dry_run: bool,
    full: bool,
    systems: Vec<String>,
    json: bool,
) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let clients = or_exit!(clients(&config));
    // A dry run on a state dir that does not exist yet plans from an empty store and creates
    // nothing on disk.
    let store = if dry_run && !config.sync.state_dir.join("db").exists() {
        None
    } else {
        Some(or_exit!(open_store(&config.sync.state_dir)))
    };
    let opts = PassOptions {
        dry_run,
        only_systems: systems,
        full,
    };
    let report = pass::pass(
        &config,
        &clients,
        store.as_ref(),
        &opts,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    match (json, dry_run) {
        (true, true) => print_json(&report),
        (true, false) => print_json(&report.summary),
        (false, true) => print_plan(&report),
        (false, false) => print_summary(&report),
    }
    if report.summary.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERRORS
    }
}

/// Describes a step for people.
fn describe(step: &Step) -> String {
    match step {
        Step::EnsureProject { name } => format!("create project {name:?}"),
        Step::EnsureTask => "create task".into(),
        Step::Upload { count, bytes, .. } => {
            format!("upload {count} images ({})", HumanBytes(*bytes))
        }
        Step::Commit => "commit".into(),
        Step::WarnChangedAfterCommit => "warn: images changed after commit".into(),
        Step::StartUpdateTask { generation } => {
            format!("images changed after commit: start update task {generation}")
        }
        Step::ReplaceVanishedTask { task } => format!("replace vanished partial task {task}"),
        Step::MarkDeleted { what } => format!("mark deleted in WebODM ({what})"),
        Step::GrantAccess { grantees } => {
            let who: Vec<String> = grantees.iter().map(crate::engine::access::shown).collect();
            format!("give access to {}", who.join(", "))
        }
        Step::NoteAccess { waiting, unshared } => {
            let mut notes = Vec::new();
            if !waiting.is_empty() {
                let names: Vec<&str> = waiting.iter().map(String::as_str).collect();
                notes.push(format!("waiting for WebODM account: {}", names.join(", ")));
            }
            if !unshared.is_empty() {
                let names: Vec<&str> = unshared.iter().map(String::as_str).collect();
                notes.push(format!(
                    "no longer shared on Tapis (access kept): {}",
                    names.join(", ")
                ));
            }
            if notes.is_empty() {
                "access notes cleared".into()
            } else {
                notes.join("; ")
            }
        }
        Step::PollTask => "read processing status".into(),
        Step::RestartTask { attempt } => format!("restart failed processing (restart {attempt})"),
        Step::CopyResults {
            assets,
            unavailable,
        } => {
            let mut out = if assets.is_empty() {
                "results: nothing left to write".to_string()
            } else {
                format!("write results to Tapis: {}", assets.join(", "))
            };
            if !unavailable.is_empty() {
                out.push_str(&format!(
                    " (not offered by WebODM: {})",
                    unavailable.join(", ")
                ));
            }
            out
        }
    }
}

fn print_plan(report: &PassReport) {
    let plan = &report.plan;
    let (images, bytes) = plan.uploads();
    println!(
        "Plan: {} projects, {} tasks, {} images ({}) to upload, {} commits, {} grants, {} task reads, {} restarts, {} results to write — {} systems, {} flights on Tapis",
        plan.projects(),
        plan.tasks(),
        images,
        HumanBytes(bytes),
        plan.commits(),
        plan.grants(),
        plan.polls(),
        plan.restarts(),
        plan.result_copies(),
        report.summary.systems_scanned,
        report.summary.flights_discovered,
    );
    for f in plan.flights.iter().filter(|f| !f.steps.is_empty()) {
        let steps: Vec<_> = f.steps.iter().map(describe).collect();
        println!(
            "  {} / {}: {}",
            f.system_id,
            f.flight_name,
            steps.join(", ")
        );
    }
    for w in &plan.waiting {
        println!(
            "  {} / {}: waiting: {}",
            w.system_id, w.flight_name, w.reason
        );
    }
    for k in &plan.vanished {
        println!(
            "  {} / {}: folder gone from Tapis (project kept)",
            k.system, k.flight
        );
    }
    print_errors(&report.summary.errors);
}

fn print_errors(errors: &[String]) {
    if !errors.is_empty() {
        println!("Errors ({}):", errors.len());
        for e in errors {
            println!("  {e}");
        }
    }
}

fn print_summary(report: &PassReport) {
    let s = &report.summary;
    println!(
        "Pass: {} systems, {} flights; created {} projects and {} tasks; uploaded {} images ({}); committed {} tasks; {} grants; restarted {} tasks; wrote {} results ({}); {} errors; {:.1} s",
        s.systems_scanned,
        s.flights_discovered,
        s.projects_created,
        s.tasks_created,
        s.images_uploaded,
        HumanBytes(s.bytes_uploaded),
        s.tasks_committed,
        s.grants_added,
        s.tasks_restarted,
        s.results_written,
        HumanBytes(s.result_bytes),
        s.errors.len(),
        s.duration_ms as f64 / 1000.0
    );
    for p in &s.created_projects {
        println!(
            "  created project {} {:?} for {} / {} ({} images)",
            p.project_id, p.project_name, p.system_id, p.flight_name, p.image_count
        );
    }
    print_errors(&s.errors);
}

pub use crate::service::status::StatusRow;

/// `status`: every flight in the store. When the daemon holds the state dir (sled allows one
/// process), the snapshot it keeps in `<state_dir>/status.json` is shown instead.
pub async fn status(flag: Option<PathBuf>, json: bool) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let dir = &config.sync.state_dir;
    let rows = match Store::open(dir) {
        Ok(store) => match crate::service::status::rows(&store) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_ERRORS;
            }
        },
        Err(StateError::Locked { holder, .. }) => {
            match crate::service::status::read_snapshot(dir) {
                Ok(snap) => {
                    eprintln!(
                        "note: the daemon (pid {}) holds {}; showing its snapshot of {}",
                        holder.map_or_else(|| snap.pid.to_string(), |p| p.to_string()),
                        dir.display(),
                        snap.written_at
                    );
                    if let (Some(p), false) = (&snap.last_pass, json) {
                        println!(
                        "Last pass {}: {} projects created, {} images uploaded, {} tasks committed, {} restarted, {} results written, {} errors",
                        p.finished_at,
                        p.summary.projects_created,
                        p.summary.images_uploaded,
                        p.summary.tasks_committed,
                        p.summary.tasks_restarted,
                        p.summary.results_written,
                        p.summary.errors.len()
                    );
                    }
                    snap.flights
                }
                Err(e) => {
                    eprintln!(
                    "error: {} is locked by another process{} and its status snapshot {} cannot be read: {e}",
                    dir.display(),
                    holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    crate::service::status::snapshot_path(dir).display()
                );
                    return EXIT_LOCKED;
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERRORS;
        }
    };
    if json {
        print_json(&rows);
        return EXIT_OK;
    }
    println!(
        "{:<28} {:<24} {:<18} {:>11} {:>8} {:<32} {:<20} {:>7} LAST ERROR",
        "SYSTEM", "FLIGHT", "PHASE", "IMAGES", "PROJECT", "TASK", "CHECKED ON TAPIS", "RESULTS"
    );
    for r in &rows {
        println!(
            "{:<28} {:<24} {:<18} {:>11} {:>8} {:<32} {:<20} {:>7} {}",
            r.system_id,
            r.flight_name,
            r.phase,
            format!("{}/{}", r.images_uploaded, r.images_total),
            r.project_id
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            task_cell(r),
            r.last_checked_at.as_deref().unwrap_or("-"),
            if r.results_written.is_empty() {
                "-".to_string()
            } else {
                r.results_written.len().to_string()
            },
            message_cell(r)
        );
    }
    if rows.is_empty() {
        println!("(no flights recorded yet: run `tapis-webodm-sync once`)");
    }
    EXIT_OK
}

/// The TASK cell of `status`: its state, restarts and processing time.
fn task_cell(r: &StatusRow) -> String {
    let mut cell = r.task_status.clone().unwrap_or_else(|| "-".into());
    if r.restarts > 0 {
        let s = if r.restarts == 1 { "" } else { "s" };
        cell.push_str(&format!(", {} restart{s}", r.restarts));
    }
    if let Some(ms) = r.processing_time_ms {
        cell.push_str(&format!(", {:.1} s", ms as f64 / 1000.0));
    }
    cell
}

/// The LAST ERROR cell of `status`: errors, then what needs a person, then what is pending.
fn message_cell(r: &StatusRow) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &r.listing_error {
        parts.push(format!("listing failed: {l}"));
    }
    parts.extend(r.last_error.clone());
    parts.extend(r.notice.clone());
    if !r.access_waiting.is_empty() {
        parts.push(format!(
            "waiting for WebODM account: {}",
            r.access_waiting.join(", ")
        ));
    }
    if !r.unshared.is_empty() {
        parts.push(format!(
            "no longer shared on Tapis (access kept in WebODM): {}",
            r.unshared.join(", ")
        ));
    }
    if let (Some(at), true) = (&r.restart_at, r.last_error.is_none()) {
        let why = r
            .processing_error
            .as_deref()
            .unwrap_or(crate::engine::processing::NO_MESSAGE);
        parts.push(format!("processing failed ({why}); restart due {at}"));
    }
    if !r.results_unavailable.is_empty() {
        parts.push(format!(
            "results not offered by WebODM: {}",
            r.results_unavailable.join(", ")
        ));
    }
    parts.join("; ")
}

/// `status --admin-token`: the running daemon's token for `POST /pass`.
pub async fn admin_token(flag: Option<PathBuf>) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let dir = &config.sync.state_dir;
    match crate::service::admin::read_token(dir) {
        Ok(token) => {
            println!("{}", token.expose());
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}\nhint: the daemon writes it at start when `[admin] listen` is set, and removes it when it stops",
                crate::service::admin::token_path(dir).display()
            );
            EXIT_ERRORS
        }
    }
}

/// One row of `systems`.
#[derive(Debug, Serialize)]
pub struct SystemRow {
    /// System id.
    pub id: String,
    /// Enabled on Tapis.
    pub enabled: bool,
    /// Owner on Tapis.
    pub owner: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Whether its flights are synced.
    pub scanned: bool,
    /// Why not, when not.
    pub skipped_because: Option<String>,
    /// The shard (`K/N`) the system falls in, when `tapis.shard` is set.
    pub shard: Option<String>,
}

/// `systems`: matching systems on Tapis.
pub async fn systems(flag: Option<PathBuf>, json: bool) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let clients = or_exit!(clients(&config));
    let scope = Scope::new(&config.tapis, &config.layout, &[]);
    let listed = match discover::systems(&clients.tapis, &scope).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: listing Tapis systems failed: {e}");
            return EXIT_ERRORS;
        }
    };
    let rows: Vec<SystemRow> = listed
        .into_iter()
        .map(|(s, why)| SystemRow {
            shard: config
                .tapis
                .shard
                .map(|sh| format!("{}/{}", config::Shard::of(&s.id, sh.count), sh.count)),
            id: s.id,
            enabled: s.enabled,
            owner: s.owner,
            host: s.host,
            scanned: why.is_none(),
            skipped_because: why,
        })
        .collect();
    if json {
        print_json(&rows);
    } else {
        println!(
            "{:<40} {:<8} {:<16} {:<6} SYNCED",
            "SYSTEM", "ENABLED", "OWNER", "SHARD"
        );
        for r in &rows {
            println!(
                "{:<40} {:<8} {:<16} {:<6} {}",
                r.id,
                r.enabled,
                r.owner.as_deref().unwrap_or("-"),
                r.shard.as_deref().unwrap_or("-"),
                r.skipped_because
                    .as_deref()
                    .map(|w| format!("no ({w})"))
                    .unwrap_or_else(|| "yes".into())
            );
        }
    }
    EXIT_OK
}

/// One row of `flights`.
#[derive(Debug, Serialize)]
pub struct FlightRow {
    /// System id.
    pub system_id: String,
    /// Flight folder.
    pub flight_name: String,
    /// `<Flight>/<images_dir>`.
    pub images_path: String,
    /// Images.
    pub image_count: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// `flights`: flights on Tapis now.
pub async fn flights(flag: Option<PathBuf>, systems: Vec<String>, json: bool) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let clients = or_exit!(clients(&config));
    let scope = Scope::new(&config.tapis, &config.layout, &systems);
    let desired = match discover::discover(&clients.tapis, &scope).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: listing Tapis systems failed: {e}");
            return EXIT_ERRORS;
        }
    };
    let rows: Vec<FlightRow> = desired
        .flights
        .iter()
        .map(|f| FlightRow {
            system_id: f.key.system.clone(),
            flight_name: f.key.flight.clone(),
            images_path: f.images_path.clone(),
            image_count: f.image_count(),
            bytes: f.fingerprint().bytes,
        })
        .collect();
    if json {
        print_json(&rows);
    } else {
        println!(
            "{:<40} {:<32} {:>7} {:>10}",
            "SYSTEM", "FLIGHT", "IMAGES", "SIZE"
        );
        for r in &rows {
            println!(
                "{:<40} {:<32} {:>7} {:>10}",
                r.system_id,
                r.flight_name,
                r.image_count,
                HumanBytes(r.bytes).to_string()
            );
        }
        print_errors(&desired.errors);
    }
    if desired.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERRORS
    }
}

/// `forget`: drop a flight's record.
pub async fn forget(flag: Option<PathBuf>, system: String, flight: String) -> u8 {
    let (_, config) = or_exit!(load(flag));
    let store = or_exit!(open_store(&config.sync.state_dir));
    let key = FlightKey::new(system, flight);
    match store.forget(&key).await {
        Ok(true) => {
            println!("forgot {key}; the next pass treats it as new (an existing WebODM project is adopted)");
            EXIT_OK
        }
        Ok(false) => {
            eprintln!("error: no flight {key} in the store; `tapis-webodm-sync status` lists them");
            EXIT_ERRORS
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERRORS
        }
    }
}

/// `check-config`: validate, print the effective config, and make one authenticated
/// read-only call per service (with a pre-issued Tapis token nothing else would prove it works).
pub async fn check_config(flag: Option<PathBuf>) -> u8 {
    let (path, config) = or_exit!(load(flag));
    let clients = or_exit!(clients(&config));
    println!(
        "# {} is valid; effective config (secrets redacted):",
        path.display()
    );
    println!("{}", toml::to_string(&config).expect("config serializes"));
    let mut code = EXIT_OK;
    let pattern = &config.tapis.system_pattern;
    match clients.tapis.first_system(pattern).await {
        Ok(first) => {
            let found = match first {
                Some(s) => format!("first system matching `{pattern}`: {}", s.id),
                None => format!("no system matching `{pattern}` is visible to this account"),
            };
            println!(
                "Tapis: ok ({}: systems listing answered; {found})",
                config.tapis.base_url
            );
        }
        Err(e) => {
            println!("Tapis: FAILED: {e}");
            code = EXIT_ERRORS;
        }
    }
    match clients.webodm.count_projects().await {
        Ok(n) => println!(
            "WebODM: ok ({}: logged in as `{}`; {n} projects visible)",
            config.webodm.base_url, config.webodm.username
        ),
        Err(e) => {
            println!("WebODM: FAILED: {e}");
            code = EXIT_ERRORS;
        }
    }
    if code == EXIT_OK {
        code = check_access_names(&config, &clients).await;
    }
    code
}

/// Checks `access.groups` and `access.users` against WebODM: an unknown group is a config
/// error (exit 78: every edit naming it would be refused); an unknown user only waits for an
/// account (a warning).
async fn check_access_names(config: &Config, clients: &Clients) -> u8 {
    let access = &config.access;
    let mut code = EXIT_OK;
    for group in &access.groups {
        match clients.webodm.find_groups(group).await {
            Ok(found) if found.iter().any(|g| &g.name == group) => {
                println!("access.groups: `{group}` exists in WebODM")
            }
            Ok(_) => {
                println!(
                    "access.groups: FAILED: WebODM has no group `{group}` (names are exact and \
                     case-sensitive): create it in WebODM or remove it from access.groups"
                );
                code = EXIT_CONFIG;
            }
            Err(e) if e.is_not_found() => {
                println!("access.groups: `{group}` not checked: WebODM's users API is turned off")
            }
            Err(e) => {
                println!("access.groups: FAILED: looking up `{group}`: {e}");
                code = code.max(EXIT_ERRORS);
            }
        }
    }
    for user in &access.users {
        match clients.webodm.find_users(user).await {
            Ok(found) if found.iter().any(|u| &u.username == user) => {}
            Ok(_) => println!(
                "warning: access.users: WebODM has no user `{user}` yet; they get access once \
                 the account exists"
            ),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                println!("access.users: FAILED: looking up `{user}`: {e}");
                code = code.max(EXIT_ERRORS);
            }
        }
    }
    code
}

/// `demo`: simulator + passes + report.
pub async fn demo(json: bool) -> u8 {
    // The demo's simulated node fails a quarter of first attempts on purpose: the restarts show in
    // the pass lines, not as warnings (RUST_LOG still overrides).
    crate::service::telemetry::init(Default::default(), "error");
    match crate::demo::run().await {
        Ok(result) => {
            if json {
                print_json(&result);
            } else {
                crate::demo::print(&result);
            }
            if result.is_converged() {
                EXIT_OK
            } else {
                EXIT_ERRORS
            }
        }
        Err(e) => {
            eprintln!("error: demo failed: {e}");
            EXIT_ERRORS
        }
    }
}

/// `sim`: only the simulator.
pub async fn sim(args: crate::sim::SimArgs) -> u8 {
    crate::service::telemetry::init(Default::default(), "info");
    match crate::sim::serve_cli(args).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERRORS
        }
    }
}
