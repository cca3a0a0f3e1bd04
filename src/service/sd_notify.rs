//! systemd notifications (`sd_notify`): READY, RELOADING, STOPPING, STATUS, and the watchdog.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not under systemd). Failures to
//! send are logged at debug and otherwise ignored: a notification is never worth stopping for.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::config::Config;
use crate::engine::PassSummary;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` + `MONOTONIC_USEC` (as `Type=notify-reload` requires).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states.push(NotifyState::Status("reloading the config"));
    send(&states);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `STATUS=` only.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The `STATUS=` line for a finished pass: "last pass 12:03: 3 projects created, 210 images,
/// 0 errors" (local time when known, else UTC).
pub fn pass_status(summary: &PassSummary, end_ms: i64) -> String {
    let hhmm = crate::engine::state::rfc3339(end_ms)
        .get(11..16)
        .unwrap_or("?")
        .to_string();
    format!(
        "last pass {hhmm} UTC: {} projects created, {} images, {} errors",
        summary.projects_created,
        summary.images_uploaded,
        summary.errors.len()
    )
}

/// How long the loop may show no progress before the watchdog pings stop: the longest quiet
/// stretch a healthy pass can have (a retry backoff plus a request timeout), plus a minute.
pub fn stall_limit(config: &Config) -> Duration {
    config.retry.max + config.tapis.timeout.max(config.webodm.timeout) + Duration::from_secs(60)
}

/// Spawns the watchdog task when systemd asked for one (`WATCHDOG_USEC`): it sends
/// `WATCHDOG=1` every half interval while the heartbeat ([`crate::metrics::beat`]) is younger
/// than `stall_limit`, so a wedged loop gets restarted while a long pass with big transfers
/// (which beats on every request and chunk) does not.
pub fn spawn_watchdog(stall_limit: Duration) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(50));
    debug!(?interval, ?stall_limit, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tick.tick().await;
            let age = crate::metrics::global().heartbeat_age();
            if age <= stall_limit {
                if stalled {
                    warn!("the loop made progress again: watchdog pings resume");
                    stalled = false;
                }
                send(&[NotifyState::Watchdog]);
            } else if !stalled {
                stalled = true;
                warn!(
                    stalled_for = %humantime::format_duration(Duration::from_secs(age.as_secs())),
                    "no progress: withholding watchdog pings, systemd will restart the service"
                );
            }
        }
    }))
}
