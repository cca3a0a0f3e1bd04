//! The admin endpoint (off unless `[admin] listen` is set; loopback addresses only): the status
//! page `/`, `/healthz`, `/metrics` (Prometheus text), `/status` (JSON, as `status --json`;
//! `?full=1` adds the passes) and `POST /pass` (a pass now; needs the per-start token).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use crate::config::Secret;
use crate::engine::state::{now_ms, StateError, Store};
use crate::service::daemon::Event;
use crate::service::status::{LastPass, Snapshot};

/// Slack added to two intervals before `/healthz` says passes are late.
pub const HEALTH_SLACK: Duration = Duration::from_secs(60);

/// The admin token's file name inside the state dir.
pub const TOKEN_FILE: &str = "admin-token";

/// What the endpoint reads from the daemon.
pub struct Shared {
    /// The daemon's store.
    pub store: Arc<Store>,
    /// The current `sync.interval` (changes on reload).
    pub interval: Mutex<Duration>,
    /// When the daemon started (unix ms).
    pub started_ms: i64,
    /// The last finished passes, newest first (see [`crate::service::status::push_pass`]).
    pub passes: Mutex<VecDeque<LastPass>>,
    /// When the next pass is due (unix ms); 0 while one runs.
    pub next_pass_ms: AtomicI64,
    /// How long the loop may show no progress (see [`crate::service::sd_notify::stall_limit`]).
    pub stall_limit: Mutex<Duration>,
    /// `notify.stuck_after`: a flight failing the same way this long is stuck.
    pub stuck_after: Mutex<Duration>,
    /// Where links into WebODM point (`webodm.public_url`).
    pub webodm_url: Mutex<Url>,
    /// The token `POST /pass` must carry (see [`write_token`]).
    pub token: Secret,
    /// Asks the daemon loop for a pass.
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Shared {
    /// The last finished pass, if any.
    pub fn last_pass(&self) -> Option<LastPass> {
        self.passes.lock().expect("passes lock").front().cloned()
    }

    /// Everything the page and the snapshot file show.
    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        let passes: Vec<LastPass> = self
            .passes
            .lock()
            .expect("passes lock")
            .iter()
            .cloned()
            .collect();
        let next = self.next_pass_ms.load(Ordering::SeqCst);
        crate::service::status::snapshot(&self.store, &passes, (next > 0).then_some(next))
    }
}

/// The admin token file of a state dir.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// Makes a fresh random token (32 bytes, hex) and writes it to `<state_dir>/admin-token`
/// with mode 0600 (a temp file renamed over the old one).
pub fn write_token(state_dir: &Path) -> std::io::Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut tmp = tempfile::Builder::new()
        .prefix(".admin-token-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(state_dir)?;
    writeln!(tmp, "{token}")?;
    tmp.as_file().sync_data()?;
    tmp.persist(token_path(state_dir)).map_err(|e| e.error)?;
    Ok(Secret::new(token))
}

/// Reads the running daemon's admin token from its state dir.
pub fn read_token(state_dir: &Path) -> std::io::Result<Secret> {
    let text = std::fs::read_to_string(token_path(state_dir))?;
    Ok(Secret::new(text.trim()))
}

/// Why `listen` is refused.
pub fn check_listen(listen: SocketAddr) -> Result<(), String> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "admin.listen = \"{listen}\" is not a loopback address: the admin endpoint has no \
             authentication, so it only listens on 127.0.0.1 or [::1] (put a reverse proxy in \
             front to expose it)"
        ))
    }
}

/// A running admin server.
pub struct Admin {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Admin {
    /// Stops serving.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

/// Binds `listen` (loopback only) and serves.
pub async fn serve(listen: SocketAddr, shared: Arc<Shared>) -> Result<Admin, String> {
    check_listen(listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("admin endpoint: cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("admin endpoint: {e}"))?;
    let app = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/pass", post(pass_now))
        .with_state(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    tracing::info!(%addr, "admin endpoint listening (/ status page, /healthz, /metrics, /status, POST /pass)");
    Ok(Admin {
        stop: Some(stop),
        task,
        addr,
    })
}

/// Whether passes complete on schedule, and why not.
pub fn health(shared: &Shared) -> (bool, String) {
    let interval = *shared.interval.lock().expect("interval lock");
    let limit = interval * 2 + HEALTH_SLACK;
    let m = crate::metrics::global();
    let now = now_ms();
    let last_end = m.last_pass_end_ms();
    let since = if last_end > 0 {
        last_end
    } else {
        shared.started_ms
    };
    let quiet = Duration::from_millis((now - since).max(0) as u64);
    let fmt =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    let running = m.pass_running_since_ms();
    let last = shared
        .last_pass()
        .as_ref()
        .map(|p| {
            format!(
                "; last pass finished {} with {} errors",
                p.finished_at,
                p.summary.errors.len()
            )
        })
        .unwrap_or_else(|| "; no pass finished yet".into());
    if quiet <= limit {
        return (
            true,
            format!(
                "ok: passes on schedule (interval {}, last finished {} ago){last}",
                fmt(interval),
                fmt(quiet)
            ),
        );
    }
    // A long pass (a big first sync) is healthy while it makes progress.
    let stall = *shared.stall_limit.lock().expect("stall lock");
    let beat = m.heartbeat_age();
    if running > 0 && beat <= stall {
        let for_ = Duration::from_millis((now - running).max(0) as u64);
        return (
            true,
            format!(
                "ok: a pass has been running for {} and is making progress (last {} ago){last}",
                fmt(for_),
                fmt(beat)
            ),
        );
    }
    (
        false,
        format!(
            "late: no pass finished for {} (limit {} = 2 × interval + {}); {}{last}",
            fmt(quiet),
            fmt(limit),
            fmt(HEALTH_SLACK),
            if running > 0 {
                format!("the running pass shows no progress for {}", fmt(beat))
            } else {
                "no pass is running".to_string()
            }
        ),
    )
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let (ok, why) = health(&shared);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{why}\n")).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    if let Ok(rows) = crate::service::status::rows(&shared.store) {
        refresh_flight_gauges(&shared, &rows);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::global().encode(),
    )
        .into_response()
}

/// Sets the flights-by-phase and stuck-flights gauges from the rows.
pub fn refresh_flight_gauges(shared: &Shared, rows: &[crate::service::status::StatusRow]) {
    let m = crate::metrics::global();
    let counts = crate::service::status::phase_counts(rows);
    m.set_flights(counts.iter().map(|(k, v)| (k.as_str(), *v)));
    let stuck_after = *shared.stuck_after.lock().expect("stuck lock");
    let now = now_ms();
    m.set_flights_stuck(rows.iter().filter(|r| r.is_stuck(stuck_after, now)).count() as i64);
}

fn store_error(e: StateError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("reading the state store: {e}\n"),
    )
        .into_response()
}

/// `?full=1` on `/status`.
#[derive(serde::Deserialize)]
struct StatusQuery {
    #[serde(default)]
    full: Option<String>,
}

async fn status(State(shared): State<Arc<Shared>>, Query(q): Query<StatusQuery>) -> Response {
    if q.full.is_some_and(|v| v != "0") {
        return match shared.snapshot() {
            Ok(snap) => axum::Json(snap).into_response(),
            Err(e) => store_error(e),
        };
    }
    match crate::service::status::rows(&shared.store) {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => store_error(e),
    }
}

async fn page(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<crate::service::page::Filter>,
) -> Response {
    let snap = match shared.snapshot() {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let view = crate::service::page::View {
        webodm_url: shared.webodm_url.lock().expect("url lock").clone(),
        stuck_after: *shared.stuck_after.lock().expect("stuck lock"),
        now_ms: now_ms(),
    };
    let html = crate::service::page::render(&snap, &filter, &view);
    (crate::service::page::headers(), html).into_response()
}

/// `POST /pass`: a pass now, for a same-origin request carrying the token.
async fn pass_now(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(why) = check_same_origin(&headers) {
        tracing::warn!(reason = why, "POST /pass refused");
        return (StatusCode::FORBIDDEN, format!("forbidden: {why}\n")).into_response();
    }
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = sent.is_some_and(|t| constant_time_eq(t.as_bytes(), shared.token.expose().as_bytes()));
    if !ok {
        tracing::warn!("POST /pass refused: missing or wrong token");
        return (
            StatusCode::FORBIDDEN,
            "forbidden: POST /pass needs the header `Authorization: Bearer <token>`; \
             `tapis-webodm-sync status --admin-token` prints the token\n",
        )
            .into_response();
    }
    if shared
        .events
        .send(Event::PassNow { from: "POST /pass" })
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n").into_response();
    }
    (StatusCode::ACCEPTED, "pass requested\n").into_response()
}

/// Refuses a request sent by a page of another origin: an `Origin` that is not this endpoint
/// (`Host`), or a browser's `Sec-Fetch-Site` other than same-origin or none.
fn check_same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return Err("a request from another site");
        }
    }
    let Some(origin) = get(header::ORIGIN) else {
        return Ok(());
    };
    let host = get(header::HOST).ok_or("an Origin header without a Host header")?;
    let origin = Url::parse(origin).map_err(|_| "an unreadable Origin header")?;
    let origin_host = match (origin.host_str(), origin.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Err("an Origin without a host"),
    };
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("a request from another origin")
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(dir: &Path, started_ms: i64) -> Shared {
        Shared {
            store: Arc::new(Store::open(dir).unwrap()),
            interval: Mutex::new(Duration::from_secs(60)),
            started_ms,
            passes: Mutex::default(),
            next_pass_ms: AtomicI64::new(0),
            stall_limit: Mutex::new(Duration::from_secs(1)),
            stuck_after: Mutex::new(Duration::from_secs(3600)),
            webodm_url: Mutex::new(Url::parse("http://webodm.example/").unwrap()),
            token: Secret::new("t"),
            events: tokio::sync::mpsc::unbounded_channel().0,
        }
    }

    #[test]
    fn health_is_503_when_passes_are_late_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), now_ms() - 10 * 60 * 1000);
        // No pass finished in this process and none running: late after 2 × 60 s + 60 s.
        let (ok, why) = health(&shared);
        assert!(!ok, "{why}");
        assert!(why.starts_with("late: no pass finished for 10m"), "{why}");
        assert!(why.contains("no pass is running"), "{why}");
        // Recently started: on schedule.
        drop(shared);
        let fresh = super::tests::shared(dir.path(), now_ms());
        let (ok, why) = health(&fresh);
        assert!(ok, "{why}");
    }

    #[test]
    fn same_origin_check() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(check_same_origin(&h(&[("host", "127.0.0.1:9464")])).is_ok());
        assert!(check_same_origin(&h(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://127.0.0.1:9464")
        ]))
        .is_ok());
        assert!(check_same_origin(&h(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://evil.example")
        ]))
        .is_err());
        assert!(check_same_origin(&h(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://127.0.0.1:9465")
        ]))
        .is_err());
        assert!(check_same_origin(&h(&[("host", "127.0.0.1:9464"), ("origin", "null")])).is_err());
        assert!(check_same_origin(&h(&[
            ("host", "127.0.0.1:9464"),
            ("sec-fetch-site", "cross-site")
        ]))
        .is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_file_is_private_and_fresh_each_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = write_token(dir.path()).unwrap();
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(read_token(dir.path()).unwrap(), a);
        let b = write_token(dir.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(read_token(dir.path()).unwrap(), b);
    }

    #[test]
    fn only_loopback_listen_addresses() {
        assert!(check_listen("127.0.0.1:9464".parse().unwrap()).is_ok());
        assert!(check_listen("[::1]:9464".parse().unwrap()).is_ok());
        let e = check_listen("0.0.0.0:9464".parse().unwrap()).unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(check_listen("192.168.1.5:9464".parse().unwrap()).is_err());
    }
}
