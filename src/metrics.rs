//! Process-wide counters for `/metrics` (Prometheus text format) and the heartbeat that proves
//! the loop is alive (read by the systemd watchdog task and `/healthz`).
//!
//! The hooks ([`request`], [`retry`], [`image_uploaded`], [`beat`]) are cheap and global so the
//! HTTP layer and the engine can call them without being handed anything.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `{service, class}` of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `tapis` or `webodm`.
    pub service: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `error` (no HTTP answer).
    pub class: String,
}

/// `{service, class}` of a retry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `tapis` or `webodm`.
    pub service: String,
    /// What failed: `transport`, `5xx`, `429`, `408`, `token`, `truncated`, …
    pub class: String,
}

/// `{phase}` of a flight.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// As shown by `status`.
    pub phase: String,
}

/// `{outcome}` of a pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `errors`.
    pub outcome: String,
}

/// `{channel}` of a notification.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `email` or `webhook`.
    pub channel: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    passes: Family<OutcomeLabels, Counter>,
    pass_duration: Histogram,
    flights: Family<PhaseLabels, Gauge>,
    images_uploaded: Counter,
    bytes_uploaded: Counter,
    results_written: Counter,
    result_bytes: Counter,
    requests: Family<RequestLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_pass: Gauge<f64, std::sync::atomic::AtomicU64>,
    pass_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
    flights_stuck: Gauge,
    notifications_sent: Family<ChannelLabels, Counter>,
    notifications_failed: Family<ChannelLabels, Counter>,
    known_phases: Mutex<Vec<String>>,
    started: Instant,
    heartbeat_ms: AtomicU64,
    last_pass_end_ms: AtomicI64,
    pass_running_since_ms: AtomicI64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tapis_webodm_sync");
        let passes = Family::<OutcomeLabels, Counter>::default();
        registry.register("passes", "Passes finished, by outcome", passes.clone());
        let pass_duration =
            Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0]);
        registry.register(
            "pass_duration_seconds",
            "Wall time of a pass",
            pass_duration.clone(),
        );
        let flights = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "flights",
            "Flights in the state store, by phase",
            flights.clone(),
        );
        let images_uploaded = Counter::default();
        registry.register(
            "images_uploaded",
            "Images WebODM confirmed",
            images_uploaded.clone(),
        );
        let bytes_uploaded = Counter::default();
        registry.register(
            "uploaded_bytes",
            "Bytes of the images WebODM confirmed",
            bytes_uploaded.clone(),
        );
        let results_written = Counter::default();
        registry.register(
            "results_written",
            "Result files written to Tapis",
            results_written.clone(),
        );
        let result_bytes = Counter::default();
        registry.register(
            "result_written_bytes",
            "Bytes of the result files written to Tapis",
            result_bytes.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests sent, by service and status class",
            requests.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests and transfers retried after a transient failure, by service and class of the failure",
            retries.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_pass_timestamp_seconds",
            "Unix time the last pass without errors finished",
            last_success.clone(),
        );
        let last_pass = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_pass_timestamp_seconds",
            "Unix time the last pass finished",
            last_pass.clone(),
        );
        let pass_interval = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "pass_interval_seconds",
            "The configured time between passes (sync.interval)",
            pass_interval.clone(),
        );
        let flights_stuck = Gauge::default();
        registry.register(
            "flights_stuck",
            "Flights failing with the same error for longer than notify.stuck_after",
            flights_stuck.clone(),
        );
        let notifications_sent = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "notifications_sent",
            "Notifications delivered, by channel (a digest mail counts once)",
            notifications_sent.clone(),
        );
        let notifications_failed = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "notifications_failed",
            "Notifications given up after every retry, by channel",
            notifications_failed.clone(),
        );
        Metrics {
            registry,
            pass_interval,
            flights_stuck,
            notifications_sent,
            notifications_failed,
            passes,
            pass_duration,
            flights,
            images_uploaded,
            bytes_uploaded,
            results_written,
            result_bytes,
            requests,
            retries,
            last_success,
            last_pass,
            known_phases: Mutex::default(),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            last_pass_end_ms: AtomicI64::new(0),
            pass_running_since_ms: AtomicI64::new(0),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Records a finished pass: whether it was free of errors, how long it took, and when it
    /// ended (`end_ms`: unix ms).
    pub fn pass_finished(&self, ok: bool, duration: Duration, end_ms: i64) {
        self.passes
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "errors" }.into(),
            })
            .inc();
        self.pass_duration.observe(duration.as_secs_f64());
        let secs = end_ms as f64 / 1000.0;
        self.last_pass.set(secs);
        if ok {
            self.last_success.set(secs);
        }
        self.last_pass_end_ms.store(end_ms, Ordering::SeqCst);
        self.pass_running_since_ms.store(0, Ordering::SeqCst);
        beat();
    }

    /// Records that a pass started (`now_ms`: unix ms).
    pub fn pass_started(&self, now_ms: i64) {
        self.pass_running_since_ms.store(now_ms, Ordering::SeqCst);
        beat();
    }

    /// Unix ms the last pass finished (0: none yet).
    pub fn last_pass_end_ms(&self) -> i64 {
        self.last_pass_end_ms.load(Ordering::SeqCst)
    }

    /// Unix ms the running pass started (0: none running).
    pub fn pass_running_since_ms(&self) -> i64 {
        self.pass_running_since_ms.load(Ordering::SeqCst)
    }

    /// Sets the flights-by-phase gauge from `(phase, count)` pairs; phases no longer present
    /// go to 0.
    pub fn set_flights<'a>(&self, counts: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut known = self.known_phases.lock().expect("phases lock");
        for p in known.iter() {
            self.flights
                .get_or_create(&PhaseLabels { phase: p.clone() })
                .set(0);
        }
        for (phase, n) in counts {
            if !known.iter().any(|k| k == phase) {
                known.push(phase.to_string());
            }
            self.flights
                .get_or_create(&PhaseLabels {
                    phase: phase.to_string(),
                })
                .set(n);
        }
    }

    /// Sets the configured time between passes.
    pub fn set_pass_interval(&self, interval: Duration) {
        self.pass_interval.set(interval.as_secs_f64());
    }

    /// Sets how many flights are stuck (the same error for longer than `stuck_after`).
    pub fn set_flights_stuck(&self, n: i64) {
        self.flights_stuck.set(n);
    }

    /// Time since the loop last showed progress.
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }
}

/// Notes that the loop made progress (a request answered, a chunk streamed, an idle tick).
pub fn beat() {
    let m = global();
    m.heartbeat_ms
        .store(m.started.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// Counts an HTTP request by service and status (`None`: no HTTP answer).
pub fn request(service: &str, status: Option<u16>) {
    let class = match status {
        None => "error".to_string(),
        Some(s) if s < 300 => "2xx".to_string(),
        Some(s) => format!("{}xx", (s / 100).min(5)),
    };
    global()
        .requests
        .get_or_create(&RequestLabels {
            service: service.to_lowercase(),
            class,
        })
        .inc();
    beat();
}

/// Counts a retry after a failure of `class` (`5xx`, `transport`, …) from `service`.
pub fn retry(service: &str, class: &str) {
    global()
        .retries
        .get_or_create(&RetryLabels {
            service: service.to_lowercase(),
            class: class.to_string(),
        })
        .inc();
    beat();
}

/// Counts an image WebODM confirmed.
pub fn image_uploaded(bytes: u64) {
    let m = global();
    m.images_uploaded.inc();
    m.bytes_uploaded.inc_by(bytes);
    beat();
}

/// Counts a result file written to Tapis and checked.
pub fn result_written(bytes: u64) {
    let m = global();
    m.results_written.inc();
    m.result_bytes.inc_by(bytes);
    beat();
}

/// Counts a notification delivered on `channel`.
pub fn notification_sent(channel: &str) {
    global()
        .notifications_sent
        .get_or_create(&ChannelLabels {
            channel: channel.to_string(),
        })
        .inc();
}

/// Counts a notification given up on `channel`.
pub fn notification_failed(channel: &str) {
    global()
        .notifications_failed
        .get_or_create(&ChannelLabels {
            channel: channel.to_string(),
        })
        .inc();
}

/// Makes the sent and failed series of `channel` appear (at 0) before its first notification.
pub fn notification_channel(channel: &str) {
    let labels = ChannelLabels {
        channel: channel.to_string(),
    };
    let m = global();
    let _ = m.notifications_sent.get_or_create(&labels);
    let _ = m.notifications_failed.get_or_create(&labels);
}
