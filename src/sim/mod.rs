//! Simulated Tapis and WebODM on one loopback port (Tapis under `/v3/…`, WebODM under `/api/…`,
//! control under `/__sim/…`), strict like the real servers (see `contracts/`), with a generated
//! dataset, files written on Tapis, WebODM accounts, sharing and processing, a report that
//! checks WebODM's contents and the results on Tapis byte for byte, and request statistics.

mod auth;
mod conn;
mod dataset;
mod faults;
mod files;
mod processing;
mod report;
mod sharing;
mod tapis;
mod util;
mod webodm;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use dataset::{Dataset, DatasetSpec, Expected, ExpectedFlight, ExpectedImage, HOSTILE_FLIGHT};
pub use faults::Faults;
pub use report::{
    key_tag, CompanionReport, FlightReport, PeakRps, ProjectAccess, Report, ResultReport, Stats,
    TaskReport, WebodmReport,
};
pub use sharing::SimGrantee;
pub use webodm::{SimProject, SimTask};

use faults::{Cut, Fault, Injector, ASSET_ROUTE, DOWNLOAD_ROUTE, TAPIS_UPLOAD_ROUTE, UPLOAD_ROUTE};
use report::{Counters, Service};
use util::{html_404, json};

/// The accounts the simulator accepts (fixed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Tapis username.
    pub tapis_username: String,
    /// Tapis password.
    pub tapis_password: String,
    /// Tapis OAuth client id (Basic auth on the token endpoint).
    pub tapis_client_id: String,
    /// Tapis OAuth client key.
    pub tapis_client_key: String,
    /// WebODM username.
    pub webodm_username: String,
    /// WebODM password.
    pub webodm_password: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            tapis_username: dataset::TAPIS_USER.to_owned(),
            tapis_password: "tapis-secret".to_owned(),
            tapis_client_id: "tws-sim-client".to_owned(),
            tapis_client_key: "sim-client-key".to_owned(),
            webodm_username: "tapis-sync".to_owned(),
            webodm_password: "webodm-secret".to_owned(),
        }
    }
}

/// Who may see a Tapis system (`Sim::system_access`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemAccess {
    /// The owner's username.
    pub owner: String,
    /// Users it is shared with.
    pub shared_with: Vec<String>,
    /// Shared publicly (every user of the tenant may read it).
    pub public: bool,
}

/// State shared by every request handler.
pub(crate) struct Shared {
    dataset: std::sync::RwLock<Arc<Dataset>>,
    creds: Credentials,
    tokens: Mutex<auth::Tokens>,
    webodm: Mutex<webodm::State>,
    /// Files and folders written on Tapis.
    written: Mutex<files::Written>,
    stats: Counters,
    faults: Injector,
    /// The dataset's seed (processing failures are drawn from it).
    seed: u64,
}

/// A running simulator.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Sim {
    /// Generates the dataset of `spec` and serves both APIs on `listen` (port 0 = a free port),
    /// without faults.
    pub async fn start(spec: &DatasetSpec, listen: SocketAddr) -> std::io::Result<Sim> {
        Sim::start_with(spec, listen, Faults::default()).await
    }

    /// Like [`Sim::start`], injecting `faults` (their dice are seeded with `spec.seed`).
    pub async fn start_with(
        spec: &DatasetSpec,
        listen: SocketAddr,
        faults: Faults,
    ) -> std::io::Result<Sim> {
        let creds = Credentials::default();
        let shared = Arc::new(Shared {
            dataset: std::sync::RwLock::new(Arc::new(Dataset::generate(spec))),
            webodm: Mutex::new(webodm::State::new(&creds.webodm_username)),
            creds,
            tokens: Mutex::default(),
            written: Mutex::default(),
            stats: Counters::default(),
            faults: Injector::new(spec.seed, Faults::default()),
            seed: spec.seed,
        });
        let listener = conn::ResetListener(tokio::net::TcpListener::bind(listen).await?);
        let addr = listener.0.local_addr()?;
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<conn::Reset>();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        let sim = Sim {
            shared,
            addr,
            stop: Some(stop),
            server,
        };
        sim.set_faults(faults);
        Ok(sim)
    }

    /// Replaces the faults injected from now on (requests under way keep theirs).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.tokens.lock().expect("tokens lock").ttl_override = faults.token_ttl;
        self.shared.faults.set(faults);
    }

    /// The faults injected now.
    pub fn faults(&self) -> Faults {
        Faults::clone(&self.shared.faults.get())
    }

    /// Revokes every Tapis access token issued so far: each later use answers HTTP 500 "Token
    /// is revoked." (refresh tokens stay valid).
    pub fn revoke_tapis_tokens(&self) {
        self.shared
            .tokens
            .lock()
            .expect("tokens lock")
            .revoke_all(auth::Kind::TapisAccess);
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); serves both APIs.
    pub fn base_url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            self.addr.ip()
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The accounts it accepts.
    pub fn credentials(&self) -> &Credentials {
        &self.shared.creds
    }

    /// The generated dataset (the current one, after [`Sim::replace_dataset`]).
    pub fn dataset(&self) -> Arc<Dataset> {
        self.shared.dataset()
    }

    /// Replaces what Tapis holds with the dataset of `spec`, as if people added or removed
    /// files (a file at the same path keeps its bytes when `seed` and `image_size` stay).
    /// WebODM's contents and the files written on Tapis are kept; share lists are the new
    /// dataset's; the report checks WebODM against the new dataset.
    pub fn replace_dataset(&self, spec: &DatasetSpec) {
        *self.shared.dataset.write().expect("dataset lock") = Arc::new(Dataset::generate(spec));
    }

    /// What WebODM holds, checked against the dataset (same as `GET /__sim/report`).
    pub fn report(&self) -> Report {
        self.shared.report()
    }

    /// Request statistics (same as `GET /__sim/stats`).
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Everything WebODM holds, in creation order.
    pub fn webodm_projects(&self) -> Vec<SimProject> {
        let st = self.shared.webodm.lock().expect("webodm lock");
        st.projects.iter().map(webodm::Project::to_sim).collect()
    }

    /// Deletes a WebODM task behind the daemon's back; whether it existed.
    pub fn delete_task(&self, project_id: i64, task_id: &str) -> bool {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .delete_task(project_id, task_id)
    }

    /// Makes the next WebODM upload that carries a file stored as `name` drop it: the file is
    /// not stored and its answer's `uploaded` map leaves it out (the other files of that
    /// request are stored as usual). For tests of clients that must check the map per file.
    pub fn drop_from_next_upload(&self, name: &str) {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .drop_from_next_upload
            .insert(name.to_owned());
    }

    /// Deletes every task still partial, as WebODM does 72 h after creation; how many.
    pub fn expire_partial_tasks(&self) -> usize {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .expire_partial_tasks()
    }

    /// Deletes a WebODM project and its tasks (a person cleaning up); whether it existed.
    pub fn delete_project(&self, id: i64) -> bool {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .delete_project(id)
    }

    /// Who may see a Tapis system: its owner, share list and public flag.
    pub fn system_access(&self, system: &str) -> Option<SystemAccess> {
        let ds = self.shared.dataset();
        let sys = ds.system(system)?;
        Some(SystemAccess {
            owner: sys.owner.clone(),
            shared_with: sys.shares(),
            public: sys.public,
        })
    }

    /// Shares a Tapis system with `user` (as its owner would); false when the system does not
    /// exist or already is shared with them.
    pub fn share_system(&self, system: &str, user: &str) -> bool {
        let ds = self.shared.dataset();
        let Some(sys) = ds.system(system) else {
            return false;
        };
        let mut shares = sys.shared_with.write().expect("shares lock");
        if shares.iter().any(|u| u == user) {
            return false;
        }
        shares.push(user.to_owned());
        true
    }

    /// Stops sharing a Tapis system with `user`; whether it was shared with them.
    pub fn unshare_system(&self, system: &str, user: &str) -> bool {
        let ds = self.shared.dataset();
        let Some(sys) = ds.system(system) else {
            return false;
        };
        let mut shares = sys.shared_with.write().expect("shares lock");
        let before = shares.len();
        shares.retain(|u| u != user);
        shares.len() != before
    }

    /// Writes a file on Tapis as a person would (folders made as needed, any file there
    /// replaced); false when the system does not exist or a folder is in the way.
    pub fn put_tapis_file(&self, system: &str, path: &str, bytes: impl Into<bytes::Bytes>) -> bool {
        let ds = self.shared.dataset();
        let Some(sys) = ds.system(system) else {
            return false;
        };
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segments.is_empty() {
            return false;
        }
        let mut written = self.shared.written.lock().expect("written lock");
        written.write(sys, &segments, bytes.into()).is_ok()
    }

    /// The content of a file on Tapis (written or generated), if there is one at `path`.
    pub fn tapis_file(&self, system: &str, path: &str) -> Option<Vec<u8>> {
        let ds = self.shared.dataset();
        let sys = ds.system(system)?;
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let entry = self
            .shared
            .written
            .lock()
            .expect("written lock")
            .lookup(sys, &segments);
        match entry? {
            files::Entry::File(found) => Some(found.chunks().flat_map(|c| c.to_vec()).collect()),
            files::Entry::Dir(_) => None,
        }
    }

    /// Adds a WebODM user (email `<name>@example.org`); false when the name is taken.
    pub fn add_webodm_user(&self, name: &str) -> bool {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .accounts
            .add_user(name)
    }

    /// Adds a WebODM group; its id (the existing one when the name is taken).
    pub fn add_webodm_group(&self, name: &str) -> i64 {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .accounts
            .add_group(name)
    }

    /// Every WebODM username (the daemon's account, `AnonymousUser` and `admin` included).
    pub fn webodm_usernames(&self) -> Vec<String> {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .accounts
            .usernames()
    }

    /// Turns WebODM's users API (`/api/users/`, `/api/groups/`) on or off (off: 404, as with
    /// `ENABLE_USERS_API = False`).
    pub fn set_users_api(&self, on: bool) {
        self.shared.webodm.lock().expect("webodm lock").accounts.api = on;
    }

    /// A person sets, in WebODM's UI, what a user or group may do on a project (`perms` from
    /// `add`, `change`, `delete`, `view`; none removes them; the owner is never changed).
    /// False when the project, user or group does not exist.
    pub fn grant(&self, project_id: i64, who: SimGrantee, perms: &[&str]) -> bool {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .grant(project_id, &who, perms)
    }

    /// Makes every processing attempt started from now on (commit or restart) of the tasks of
    /// this flight's projects (found by key tag) FAIL with `last_error` (`None`: null, as
    /// NodeODM's test mode).
    pub fn fail_processing(&self, system: &str, flight: &str, last_error: Option<&str>) {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .failing
            .insert(key_tag(system, flight), last_error.map(str::to_owned));
    }

    /// Undoes [`Sim::fail_processing`]: attempts started from now on complete.
    pub fn heal_processing(&self, system: &str, flight: &str) {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .failing
            .remove(&key_tag(system, flight));
    }

    /// Cancels a task as a person would (`…/cancel/`): CANCELED (50); whether it existed.
    pub fn cancel_task(&self, project_id: i64, task_id: &str) -> bool {
        self.shared
            .webodm
            .lock()
            .expect("webodm lock")
            .cancel_task(project_id, task_id)
    }

    /// Sets the lifetime of Tapis access tokens issued from now on (default 4 h);
    /// `Faults::token_ttl`, when set, takes precedence.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.shared.tokens.lock().expect("tokens lock").tapis_ttl = ttl;
    }

    /// Sets the lifetime of WebODM tokens issued from now on (default 6 h); `Faults::token_ttl`,
    /// when set, takes precedence.
    pub fn set_webodm_token_ttl(&self, ttl: Duration) {
        self.shared.tokens.lock().expect("tokens lock").webodm_ttl = ttl;
    }

    /// A daemon config pointing at this simulator, with `state_dir` as its state directory.
    pub fn config_toml(&self, state_dir: &Path) -> String {
        let c = &self.shared.creds;
        let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let url = s(&self.base_url());
        format!(
            "[tapis]\nbase_url = {url}\nusername = {}\npassword = {}\nclient_id = {}\nclient_key = {}\nsystem_pattern = {}\n\n[webodm]\nbase_url = {url}\nusername = {}\npassword = {}\n\n[sync]\ninterval = \"2s\"\nsettle = \"0s\"\nstate_dir = {}\n",
            s(&c.tapis_username),
            s(&c.tapis_password),
            s(&c.tapis_client_id),
            s(&c.tapis_client_key),
            s(dataset::SYSTEM_PATTERN),
            s(&c.webodm_username),
            s(&c.webodm_password),
            s(&state_dir.to_string_lossy()),
        )
    }

    /// Stops serving (open downloads get two seconds to finish).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    fn report(&self) -> Report {
        let projects = self.webodm.lock().expect("webodm lock").projects.clone();
        let written = self.written.lock().expect("written lock");
        report::build(
            &self.dataset(),
            &projects,
            &written,
            self.faults.get().asset_size,
        )
    }

    /// The current dataset.
    pub(crate) fn dataset(&self) -> Arc<Dataset> {
        self.dataset.read().expect("dataset lock").clone()
    }
}

/// Every request: counts it, checks for leaked credentials, injects faults, dispatches by prefix.
async fn handle(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(reset): ConnectInfo<conn::Reset>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(control) = path.strip_prefix("/__sim/") {
        return control_endpoint(&sh, control).await;
    }
    let service = if path.starts_with("/v3/") {
        Service::Tapis
    } else if path.starts_with("/api/") {
        Service::Webodm
    } else {
        Service::Other
    };
    let transfer = match service {
        Service::Tapis => method == Method::GET && path.starts_with("/v3/files/content/"),
        Service::Webodm => method == Method::POST && path.ends_with("/upload/"),
        Service::Other => false,
    };
    sh.stats.started(service, transfer);
    let headers = req.headers();
    let leaked = match service {
        Service::Webodm => headers.contains_key("x-tapis-token"),
        Service::Tapis => headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| path != "/v3/oauth2/tokens" || !v.as_bytes().starts_with(b"Basic ")),
        Service::Other => false,
    };
    if leaked {
        sh.stats
            .leaked_credentials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let faults = sh.faults.get();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if service != Service::Other && faults.broken_paths.iter().any(|p| path.starts_with(p)) {
        sh.stats.fault("broken_path");
        let resp = fault_error(service, StatusCode::BAD_GATEWAY);
        let route = match service {
            Service::Tapis => tapis::template(&path),
            _ => webodm::template(&path),
        };
        sh.stats.answered(
            format!("{method} {}", route.unwrap_or("<unknown>")),
            resp.status().as_str().to_owned(),
        );
        return resp;
    }
    let template = match service {
        Service::Tapis => tapis::template(&path),
        Service::Webodm => webodm::template(&path),
        Service::Other => None,
    };
    let fault = template.and_then(|t| {
        let route = format!("{method} {t}");
        sh.faults.decide(&faults, &route).map(|f| (route, f))
    });
    let Some((route, fault)) = fault else {
        let (route, resp) = dispatch(&sh, service, req, None).await;
        sh.stats.answered(
            format!("{method} {route}"),
            resp.status().as_str().to_owned(),
        );
        return resp;
    };
    let resp = match fault {
        Fault::Error(status) => {
            sh.stats.fault("error");
            fault_error(service, status)
        }
        Fault::Throttle => {
            sh.stats.fault("429");
            match service {
                Service::Tapis => tapis::throttled(faults.retry_after_secs),
                _ => webodm::throttled(faults.retry_after_secs),
            }
        }
        Fault::Truncate => {
            let cut = Cut {
                share: sh.faults.share(),
                reset: None,
            };
            let (_, resp) = dispatch(&sh, service, req, Some(cut)).await;
            if resp.status() == StatusCode::OK {
                sh.stats.fault("truncate");
            }
            resp
        }
        Fault::ErrorAfter => {
            // The handler runs to the end (its side effect happens); its answer is lost.
            drop(dispatch(&sh, service, req, None).await);
            sh.stats.fault("error_after");
            fault_error(service, StatusCode::BAD_GATEWAY)
        }
        Fault::Reset => {
            sh.stats.fault("reset");
            if route == DOWNLOAD_ROUTE || route == ASSET_ROUTE {
                let cut = Cut {
                    share: sh.faults.share(),
                    reset: Some(reset.clone()),
                };
                let (_, resp) = dispatch(&sh, service, req, Some(cut)).await;
                // A 200 streams part of the file, then resets; other answers are not sent.
                if resp.status() == StatusCode::OK {
                    sh.stats.answered(route, "200".to_owned());
                    return resp;
                }
            } else if route == UPLOAD_ROUTE {
                read_part(req).await;
            } else if route == TAPIS_UPLOAD_ROUTE {
                // The handler stores what arrived before the connection died.
                drop(dispatch(&sh, service, cut_body(req), None).await);
            }
            reset.trigger();
            sh.stats.answered(route, "reset".to_owned());
            // Never sent: the connection refuses to write it.
            return Response::default();
        }
    };
    sh.stats.answered(route, resp.status().as_str().to_owned());
    resp
}

/// Hands a request to its service; returns the route template for stats and the answer.
async fn dispatch(
    sh: &Arc<Shared>,
    service: Service,
    req: Request,
    cut: Option<Cut>,
) -> (String, Response) {
    match service {
        Service::Tapis => tapis::handle(sh, req, cut).await,
        Service::Webodm => webodm::handle(sh, req, cut).await,
        Service::Other => {
            let path = req.uri().path().to_owned();
            ("<unknown>".to_owned(), html_404(&path))
        }
    }
}

/// The answer to an injected 5xx from `service` (only API routes get faults).
fn fault_error(service: Service, status: StatusCode) -> Response {
    match service {
        Service::Tapis => tapis::fault_error(status),
        _ => webodm::fault_error(status),
    }
}

/// The request with a body that ends in a connection reset after about half of its bytes.
fn cut_body(req: Request) -> Request {
    let half = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(1, |n| (n / 2).max(1));
    let (parts, body) = req.into_parts();
    let head = body.into_data_stream().scan(half, |left, chunk| {
        let out = match chunk {
            Ok(chunk) if *left > 0 => {
                let take = (*left).min(chunk.len() as u64);
                *left -= take;
                Some(Ok::<_, std::io::Error>(chunk.slice(..take as usize)))
            }
            _ => None,
        };
        std::future::ready(out)
    });
    let reset = futures_util::stream::once(async {
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    });
    Request::from_parts(parts, Body::from_stream(head.chain(reset)))
}

/// Reads about half of a request body (at least one chunk) and drops the rest unread.
async fn read_part(req: Request) {
    let half = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(1, |n| (n / 2).max(1));
    let mut body = req.into_body().into_data_stream();
    let mut read = 0u64;
    while read < half {
        match body.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => break,
        }
    }
}

async fn control_endpoint(sh: &Arc<Shared>, which: &str) -> Response {
    match which {
        "report" => {
            let sh = Arc::clone(sh);
            match tokio::task::spawn_blocking(move || sh.report()).await {
                Ok(r) => json(StatusCode::OK, &serde_json::to_value(r).unwrap_or_default()),
                Err(e) => util::text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "stats" => json(
            StatusCode::OK,
            &serde_json::to_value(sh.stats.snapshot()).unwrap_or_default(),
        ),
        _ => html_404(which),
    }
}

/// Flags of the `sim` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 = a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Seed of the generated dataset.
    #[arg(long, default_value_t = DatasetSpec::demo().seed)]
    pub seed: u64,
    /// Matching systems owned by the account (decoy systems are added unless `--no-decoys`).
    #[arg(long, default_value_t = DatasetSpec::demo().systems)]
    pub systems: usize,
    /// Regular flights per system.
    #[arg(long, default_value_t = DatasetSpec::demo().flights_per_system)]
    pub flights: usize,
    /// Images per regular flight.
    #[arg(long, default_value_t = DatasetSpec::demo().images_per_flight)]
    pub images: usize,
    /// Mean image size in bytes (each varies by up to ±25 %).
    #[arg(long, default_value_t = DatasetSpec::demo().image_size)]
    pub image_size: u64,
    /// Leave out the decoys (systems that must be ignored, the shared system, folders that
    /// are not flights, the special-case flights): only the regular flights of owned systems.
    #[arg(long)]
    pub no_decoys: bool,
    /// Delay added before every API response, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    /// Share of API requests (token endpoints spared) answered 500, 502 or 503 instead of
    /// being handled, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_rate)]
    pub error_rate: f64,
    /// Share of API requests (token endpoints spared) answered 429 with `Retry-After: 1`,
    /// from 0 to 1.
    #[arg(long = "rate-429", default_value_t = 0.0, value_name = "F", value_parser = parse_rate)]
    pub rate_429: f64,
    /// Share of API requests (token endpoints spared) whose connection is reset (downloads
    /// and uploads part-way through), from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_rate)]
    pub reset_rate: f64,
    /// Share of Tapis downloads whose body ends early under a 200, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_rate)]
    pub truncate_rate: f64,
    /// Lifetime in seconds of the Tapis access tokens and WebODM tokens issued (default: 4 h
    /// and 6 h, as the real servers).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl: Option<u64>,
    /// Time a committed task takes to reach COMPLETED (or FAILED), in milliseconds; 0 = no
    /// processing node (status stays null).
    #[arg(long, default_value_t = Faults::default().process_ms, value_name = "MS")]
    pub process_ms: u64,
    /// Share of tasks whose first processing attempt FAILS (a restart completes), from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_rate)]
    pub fail_processing_rate: f64,
    /// Put companion files (geo.txt, gcp_list.txt, image_groups.txt, a decoy notes.txt) beside
    /// the images of some flights.
    #[arg(long)]
    pub companions: bool,
    /// Write a daemon config pointing at the simulator here (with a fresh state dir beside it).
    #[arg(long)]
    pub write_config: Option<PathBuf>,
}

impl SimArgs {
    /// The faults these flags ask for.
    pub fn faults(&self) -> Faults {
        Faults {
            latency_ms: self.latency_ms,
            error_rate: self.error_rate,
            rate_429: self.rate_429,
            reset_rate: self.reset_rate,
            truncate_rate: self.truncate_rate,
            token_ttl: self.token_ttl.map(Duration::from_secs),
            process_ms: self.process_ms,
            fail_processing_rate: self.fail_processing_rate,
            ..Faults::default()
        }
    }
}

/// A probability: a number from 0 to 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(_) => Err(format!("{s} is not between 0 and 1")),
        Err(e) => Err(format!("{s} is not a number: {e}")),
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM. First line on stdout: `SIM <base url>`.
pub async fn serve_cli(args: SimArgs) -> std::io::Result<()> {
    let spec = DatasetSpec {
        seed: args.seed,
        systems: args.systems,
        flights_per_system: args.flights,
        images_per_flight: args.images,
        image_size: args.image_size,
        big_flight_images: None,
        decoys: !args.no_decoys,
        companions: args.companions,
    };
    let faults = args.faults();
    let sim = Sim::start_with(&spec, args.listen, faults.clone()).await?;
    let url = sim.base_url();
    // Written before the `SIM` line, so whoever waits for that line finds the config.
    let config = match &args.write_config {
        Some(path) => Some(write_config(&sim, path)?),
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "SIM {url}")?;
        out.flush()?;
        let c = sim.credentials();
        writeln!(
            out,
            "tapis:  {url}/v3  user {} / {}  client {} / {}",
            c.tapis_username, c.tapis_password, c.tapis_client_id, c.tapis_client_key
        )?;
        writeln!(
            out,
            "webodm: {url}/api  user {} / {}",
            c.webodm_username, c.webodm_password
        )?;
        let e = sim.dataset().expected();
        writeln!(
            out,
            "expected: {} flights, {} images, {} bytes",
            e.flights, e.images, e.bytes
        )?;
        writeln!(out, "report: {url}/__sim/report  stats: {url}/__sim/stats")?;
        if faults != Faults::default() {
            let json = serde_json::to_string(&faults).map_err(std::io::Error::other)?;
            writeln!(out, "faults: {json}")?;
        }
        if let (Some(path), Some(state)) = (&args.write_config, config) {
            writeln!(
                out,
                "config: {} (state dir {})",
                path.display(),
                state.display()
            )?;
        }
        out.flush()?;
    }
    wait_for_signal().await?;
    sim.shutdown().await;
    Ok(())
}

/// Writes the daemon config to `path` with a fresh state dir beside it; returns the state dir.
fn write_config(sim: &Sim, path: &Path) -> std::io::Result<PathBuf> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let prefix = format!(
        "{}.state-{}-",
        path.file_name()
            .map_or("config".into(), |n| n.to_string_lossy()),
        sim.addr.port()
    );
    let state = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)?
        .keep();
    std::fs::write(path, sim.config_toml(&state))?;
    Ok(state)
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
