//! The daemon loop: `run` repeats a pass (`engine::pass`) every `interval`, starts one
//! at once on SIGUSR1, reloads the config on SIGHUP (keeping the old one when the new one is
//! invalid), and stops on SIGTERM/SIGINT: nothing new starts, the images in flight get
//! `sync.shutdown_timeout` to finish and are abandoned after that (an image is recorded only
//! once WebODM confirmed it, so the store stays consistent); a second signal exits at once.
//! It also talks to systemd (READY/RELOADING/STOPPING/STATUS and the watchdog), serves the
//! admin endpoint, and writes the status snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{error, info, warn};

use crate::clients::{ApiError, Clients};
use crate::config::Config;
use crate::engine::pass::{pass, stop_requested, PassOptions};
use crate::engine::state::{now_ms, StateError, Store};
use crate::engine::PassSummary;
use crate::service::sd_notify;

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
    /// The admin endpoint is misconfigured or cannot listen.
    #[error("{0}")]
    Admin(String),
}

/// What the signal listener and the admin endpoint ask of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM/SIGINT (the `stopping` flag is already set).
    Stop,
    /// SIGHUP.
    Reload,
    /// A pass now: SIGUSR1 or `POST /pass` (`from` names which, for the log).
    PassNow {
        /// `SIGUSR1` or `POST /pass`.
        from: &'static str,
    },
}

/// Status snapshots are written this often while a pass runs.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// The idle loop ticks (and beats the heartbeat) this often between passes.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Runs passes every `interval` until SIGTERM/SIGINT: tells systemd READY/RELOADING/STOPPING
/// and the last pass in STATUS, feeds the watchdog while the loop makes progress, serves the
/// admin endpoint when configured, and writes the status snapshot.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), RunError> {
    if let Some(listen) = config.admin.listen {
        crate::service::admin::check_listen(listen).map_err(RunError::Admin)?;
    }
    let store = Arc::new(Store::open(&config.sync.state_dir)?);
    let mut config = config;
    let mut clients = Clients::new(&config)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let signals = listen_for_signals(
        stopping.clone(),
        events_tx.clone(),
        config.sync.shutdown_timeout,
    )
    .map_err(RunError::Signals)?;
    let token = match config.admin.listen {
        Some(_) => crate::service::admin::write_token(store.dir()).map_err(|e| {
            RunError::Admin(format!(
                "cannot write the admin token {}: {e}",
                crate::service::admin::token_path(store.dir()).display()
            ))
        })?,
        None => Default::default(),
    };
    let shared = Arc::new(crate::service::admin::Shared {
        store: store.clone(),
        interval: Mutex::new(config.sync.interval),
        started_ms: now_ms(),
        passes: Mutex::default(),
        next_pass_ms: AtomicI64::new(0),
        stall_limit: Mutex::new(sd_notify::stall_limit(&config)),
        stuck_after: Mutex::new(config.notify.stuck_after),
        webodm_url: Mutex::new(config.webodm.link_base().clone()),
        token,
        events: events_tx,
    });
    crate::metrics::global().set_pass_interval(config.sync.interval);
    let notifier = crate::service::notifications::Notifier::start(&config, store.clone());
    let admin = match config.admin.listen {
        Some(listen) => Some(
            crate::service::admin::serve(listen, shared.clone())
                .await
                .map_err(RunError::Admin)?,
        ),
        None => None,
    };
    write_snapshot(&shared);
    crate::metrics::beat();
    let watchdog = sd_notify::spawn_watchdog(sd_notify::stall_limit(&config));
    info!(state_dir = %store.dir().display(), interval = %humantime::format_duration(config.sync.interval), "daemon started");
    sd_notify::ready("started; first pass running");
    let mut pending_reload = false;
    let mut pending_pass = false;
    let opts = PassOptions::default();
    while !stopping.load(Ordering::SeqCst) {
        crate::metrics::global().pass_started(now_ms());
        let finished = {
            let pass = pass(&config, &clients, Some(&store), &opts, stopping.clone());
            tokio::pin!(pass);
            let abandon = async {
                stop_requested(&stopping).await;
                tokio::time::sleep(config.sync.shutdown_timeout).await;
            };
            tokio::pin!(abandon);
            let mut snapshots = tokio::time::interval(SNAPSHOT_EVERY);
            snapshots.tick().await;
            loop {
                tokio::select! {
                    report = &mut pass => break Some(report),
                    _ = &mut abandon => break None,
                    _ = snapshots.tick() => write_snapshot(&shared),
                    Some(ev) = events.recv() => match ev {
                        Event::Reload => pending_reload = true,
                        Event::PassNow { from } => {
                            info!("{from} during a pass: another pass follows right after it");
                            pending_pass = true;
                        }
                        Event::Stop => {}
                    },
                }
            }
        };
        match finished {
            Some(report) => {
                record_pass(&shared, &report.summary, config.sync.interval);
                if let Some(n) = &notifier {
                    n.after_pass(&report.summary);
                }
                drop(report);
                release_freed_memory();
            }
            None => {
                warn!(
                    timeout = %humantime::format_duration(config.sync.shutdown_timeout),
                    "shutdown timeout: abandoning the images still in flight (they are not recorded and are uploaded again next time)"
                );
                break;
            }
        }
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        // Idle until the next pass, SIGUSR1 or a stop; SIGHUP reloads and keeps waiting.
        let next = tokio::time::Instant::now() + config.sync.interval;
        loop {
            if pending_reload {
                pending_reload = false;
                sd_notify::reloading();
                if let Some((c, cl)) = reload_config(&config_path, &config) {
                    config = c;
                    clients = cl;
                    *shared.interval.lock().expect("interval lock") = config.sync.interval;
                    *shared.stall_limit.lock().expect("stall lock") =
                        sd_notify::stall_limit(&config);
                    *shared.webodm_url.lock().expect("url lock") =
                        config.webodm.link_base().clone();
                    crate::metrics::global().set_pass_interval(config.sync.interval);
                    shared.next_pass_ms.store(
                        now_ms() + (next - tokio::time::Instant::now()).as_millis() as i64,
                        Ordering::SeqCst,
                    );
                    sd_notify::ready(&format!(
                        "config reloaded; {}",
                        last_status(&shared).unwrap_or_else(|| "no pass finished yet".into())
                    ));
                } else {
                    sd_notify::ready(&format!(
                        "config reload FAILED (see the log); running with the previous config; {}",
                        last_status(&shared).unwrap_or_else(|| "no pass finished yet".into())
                    ));
                }
            }
            if pending_pass || stopping.load(Ordering::SeqCst) {
                pending_pass = false;
                shared.next_pass_ms.store(0, Ordering::SeqCst);
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= next {
                shared.next_pass_ms.store(0, Ordering::SeqCst);
                break;
            }
            crate::metrics::beat();
            tokio::select! {
                _ = tokio::time::sleep((next - now).min(IDLE_TICK)) => {}
                Some(ev) = events.recv() => match ev {
                    Event::Reload => pending_reload = true,
                    Event::PassNow { from } => {
                        info!("{from}: starting a pass now");
                        pending_pass = true;
                    }
                    Event::Stop => {}
                },
            }
        }
    }
    sd_notify::stopping("stopping: flushing the state store");
    if let Some(n) = notifier {
        n.shutdown().await;
    }
    let flushed = store.flush().await;
    write_snapshot(&shared);
    if let Some(admin) = admin {
        admin.shutdown().await;
        let _ = std::fs::remove_file(crate::service::admin::token_path(store.dir()));
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    signals.close();
    flushed?;
    info!("daemon stopped");
    Ok(())
}

/// Records a finished pass for `/healthz`, `/metrics`, the snapshot and systemd's STATUS.
/// Gives the heap a pass freed back to the kernel. glibc keeps freed memory for reuse, so
/// without this an idle daemon's RSS stays at its largest pass (measured: 186 MiB idle after a
/// 2 000-flight pass, 36 MiB after a trim).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel; it touches no
    // live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn record_pass(shared: &crate::service::admin::Shared, summary: &PassSummary, interval: Duration) {
    let end = now_ms();
    crate::metrics::global().pass_finished(
        summary.errors.is_empty(),
        Duration::from_millis(summary.duration_ms),
        end,
    );
    crate::service::status::push_pass(
        &mut shared.passes.lock().expect("passes lock"),
        crate::service::status::LastPass {
            finished_at: crate::engine::state::rfc3339(end),
            errors_total: summary.errors.len(),
            summary: summary.clone(),
        },
    );
    shared
        .next_pass_ms
        .store(end + interval.as_millis() as i64, Ordering::SeqCst);
    sd_notify::status(&sd_notify::pass_status(summary, end));
    write_snapshot(shared);
}

fn last_status(shared: &crate::service::admin::Shared) -> Option<String> {
    shared.last_pass().map(|p| {
        let end = humantime::parse_rfc3339(&p.finished_at)
            .map(crate::engine::state::to_ms)
            .unwrap_or_else(|_| now_ms());
        sd_notify::pass_status(&p.summary, end)
    })
}

/// Writes `<state_dir>/status.json` and refreshes the flights-by-phase gauge; failures are
/// logged, never fatal.
fn write_snapshot(shared: &crate::service::admin::Shared) {
    match shared.snapshot() {
        Ok(snap) => {
            crate::service::admin::refresh_flight_gauges(shared, &snap.flights);
            if let Err(e) = crate::service::status::write_snapshot(shared.store.dir(), &snap) {
                warn!(error = %e, "cannot write the status snapshot; `status` shows an older one");
            }
        }
        Err(e) => warn!(error = %e, "cannot read the state store for the status snapshot"),
    }
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
    if let Some(listen) = new.admin.listen {
        if let Err(e) = crate::service::admin::check_listen(listen) {
            error!(error = %e, "config reload failed; keeping the running config");
            return None;
        }
    }
    for line in new.warning_lines(path) {
        warn!("{line}");
    }
    if new.sync.state_dir != old.sync.state_dir {
        warn!("sync.state_dir changed: it takes effect at the next restart");
    }
    if new.admin.listen != old.admin.listen {
        warn!("admin.listen changed: it takes effect at the next restart");
    }
    if new.log.format != old.log.format || new.log.level != old.log.level {
        warn!("[log] changed: it takes effect at the next restart");
    }
    if toml::to_string(&new.notify).ok() != toml::to_string(&old.notify).ok() {
        warn!("[notify] changed: it takes effect at the next restart");
    }
    match Clients::new(&new) {
        Ok(clients) => {
            info!(path = %path.display(), interval = %humantime::format_duration(new.sync.interval), "config reloaded");
            Some((new, clients))
        }
        Err(e) => {
            error!(error = %e, "config reload failed; keeping the running config");
            None
        }
    }
}

/// Spawns the signal listener: TERM/INT set `stopping` and tell systemd STOPPING=1 (a second
/// one exits at once: every record is flushed as it is written, so the store is consistent),
/// HUP asks for a reload, USR1 for a pass now.
fn listen_for_signals(
    stopping: Arc<AtomicBool>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    shutdown_timeout: Duration,
) -> std::io::Result<signal_hook_tokio::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let handle = signals.handle();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            let event = match sig {
                SIGTERM | SIGINT => {
                    if stopping.swap(true, Ordering::SeqCst) {
                        warn!("second stop signal: exiting now; the store is consistent (images in flight are not recorded)");
                        sd_notify::stopping("second stop signal: exiting now");
                        std::process::exit(130);
                    }
                    let wait = humantime::format_duration(shutdown_timeout);
                    info!(timeout = %wait, "stop signal: finishing the images in flight, starting nothing new (a second signal exits at once)");
                    sd_notify::stopping(&format!(
                        "stopping: finishing the images in flight (at most {wait})"
                    ));
                    Event::Stop
                }
                SIGHUP => {
                    info!("SIGHUP: reloading the config");
                    Event::Reload
                }
                _ => Event::PassNow { from: "SIGUSR1" },
            };
            let _ = events.send(event);
        }
    });
    Ok(handle)
}
