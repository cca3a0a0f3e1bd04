//! Simulated Tapis and WebODM on one loopback port (Tapis under `/v3/…`, WebODM under `/api/…`,
//! control under `/__sim/…`), strict like the real servers (see `contracts/`), with a generated
//! dataset, a report that checks WebODM's contents byte for byte, and request statistics.

mod auth;
mod dataset;
mod report;
mod tapis;
mod util;
mod webodm;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use dataset::{Dataset, DatasetSpec, Expected, ExpectedFlight, ExpectedImage};
pub use report::{key_tag, PeakRps, Report, Stats, WebodmReport};
pub use webodm::{SimProject, SimTask};

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

/// State shared by every request handler.
pub(crate) struct Shared {
    dataset: Arc<Dataset>,
    creds: Credentials,
    tokens: Mutex<auth::Tokens>,
    webodm: Mutex<webodm::State>,
    stats: Counters,
}

/// A running simulator.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Sim {
    /// Generates the dataset of `spec` and serves both APIs on `listen` (port 0 = a free port).
    pub async fn start(spec: &DatasetSpec, listen: SocketAddr) -> std::io::Result<Sim> {
        let shared = Arc::new(Shared {
            dataset: Arc::new(Dataset::generate(spec)),
            creds: Credentials::default(),
            tokens: Mutex::default(),
            webodm: Mutex::default(),
            stats: Counters::default(),
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Sim {
            shared,
            addr,
            stop: Some(stop),
            server,
        })
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

    /// The generated dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.shared.dataset
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

    /// Sets the lifetime of Tapis access tokens issued from now on (default 4 h).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.shared.tokens.lock().expect("tokens lock").tapis_ttl = ttl;
    }

    /// Sets the lifetime of WebODM tokens issued from now on (default 6 h).
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
        report::build(&self.dataset, &projects)
    }
}

/// Every request: counts it, checks for leaked credentials, dispatches by prefix.
async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
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
    sh.stats.started(service);
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
    let (route, resp) = match service {
        Service::Tapis => tapis::handle(&sh, req).await,
        Service::Webodm => webodm::handle(&sh, req).await,
        Service::Other => ("<unknown>".to_owned(), html_404(&path)),
    };
    sh.stats
        .answered(format!("{method} {route}"), resp.status().as_u16());
    resp
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
    /// Matching systems owned by the account (decoy systems are always added).
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
    /// Write a daemon config pointing at the simulator here (with a fresh state dir beside it).
    #[arg(long)]
    pub write_config: Option<PathBuf>,
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
        decoys: true,
    };
    let sim = Sim::start(&spec, args.listen).await?;
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
