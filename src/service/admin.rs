//! The admin endpoint (off unless `[admin] listen` is set; loopback addresses only):
//! `/healthz`, `/metrics` (Prometheus text) and `/status` (JSON, as `status --json`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::state::{now_ms, Store};
use crate::service::status::LastPass;

/// Slack added to two intervals before `/healthz` says passes are late.
pub const HEALTH_SLACK: Duration = Duration::from_secs(60);

/// What the endpoint reads from the daemon.
pub struct Shared {
    /// The daemon's store.
    pub store: Arc<Store>,
    /// The current `sync.interval` (changes on reload).
    pub interval: Mutex<Duration>,
    /// When the daemon started (unix ms).
    pub started_ms: i64,
    /// The last finished pass.
    pub last_pass: Mutex<Option<LastPass>>,
    /// How long the loop may show no progress (see [`crate::service::sd_notify::stall_limit`]).
    pub stall_limit: Mutex<Duration>,
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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
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
    tracing::info!(%addr, "admin endpoint listening (/healthz, /metrics, /status)");
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
        .last_pass
        .lock()
        .expect("last pass lock")
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
        let counts = crate::service::status::phase_counts(&rows);
        crate::metrics::global().set_flights(counts.iter().map(|(k, v)| (k.as_str(), *v)));
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

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match crate::service::status::rows(&shared.store) {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the state store: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_503_when_passes_are_late_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            store: Arc::new(Store::open(dir.path()).unwrap()),
            interval: Mutex::new(Duration::from_secs(60)),
            started_ms: now_ms() - 10 * 60 * 1000,
            last_pass: Mutex::new(None),
            stall_limit: Mutex::new(Duration::from_secs(1)),
        };
        // No pass finished in this process and none running: late after 2 × 60 s + 60 s.
        let (ok, why) = health(&shared);
        assert!(!ok, "{why}");
        assert!(why.starts_with("late: no pass finished for 10m"), "{why}");
        assert!(why.contains("no pass is running"), "{why}");
        // Recently started: on schedule.
        let fresh = Shared {
            started_ms: now_ms(),
            ..shared
        };
        let (ok, why) = health(&fresh);
        assert!(ok, "{why}");
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
