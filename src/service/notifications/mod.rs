//! Notifications: email (SMTP), a webhook (JSON or Slack/Mattermost), off while `[notify]`
//! sets neither `email_to` nor `webhook`.
//!
//! After each pass the daemon calls [`Notifier::after_pass`], which derives events
//! level-triggered from the store ([`events`]) and records each new one in the store's
//! `notifications` tree as pending per channel. A background task ([`delivery`]) sends what is
//! pending, rate-limited and retried with the `[retry]` policy, and records each outcome (sent,
//! or given up: logged and counted in `notifications_failed_total{channel}`), so each event is
//! sent once, across restarts. Nothing here blocks or fails a pass.

mod delivery;
mod email;
pub mod events;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use url::Url;

use crate::config::Config;
use crate::engine::state::{now_ms, rfc3339, Store};
use crate::engine::PassSummary;
use events::{Event, PassRun};

/// Events waiting for delivery at most; more are given up at once (and counted).
const MAX_PENDING: usize = 1000;
/// Time a stopping daemon gives the delivery under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Store id of the record that says notifications started from the store's state then.
const BASELINE_ID: &str = "s/baseline";
/// Store id of the run of failing passes.
const PASS_RUN_ID: &str = "s/passes";

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Mail over SMTP.
    Email,
    /// The webhook.
    Webhook,
}

impl Channel {
    /// `email` or `webhook` (the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// What became of an event on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Not sent yet.
    Pending,
    /// Delivered (RFC 3339).
    Sent {
        /// When.
        at: String,
    },
    /// Given up after every retry (or the queue was full).
    GaveUp {
        /// When.
        at: String,
        /// The last error.
        error: String,
    },
}

/// One event as stored in the `notifications` tree. An event recorded without channels was
/// known before notifications were turned on (nothing to send).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The event.
    pub event: Event,
    /// Its outcome per channel.
    pub channels: BTreeMap<Channel, Outcome>,
}

/// The running notifier: derives events after each pass; its background task delivers them.
pub struct Notifier {
    store: Arc<Store>,
    channels: Vec<Channel>,
    stuck_after: Duration,
    link_base: Url,
    wake: Arc<Notify>,
    pending: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Notifier {
    /// Starts notifications when `[notify]` configures a channel (`None` otherwise). On the
    /// first start with a store, what the store already shows is recorded as known, so turning
    /// notifications on does not announce every flight synced before. Events left pending by a
    /// previous run are delivered now.
    pub fn start(config: &Config, store: Arc<Store>) -> Option<Notifier> {
        let n = &config.notify;
        if !n.enabled() {
            return None;
        }
        let senders = match delivery::Senders::new(n) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "notifications are off: cannot set them up");
                return None;
            }
        };
        let channels = senders.channels();
        for c in &channels {
            crate::metrics::notification_channel(c.as_str());
        }
        let link_base = config.webodm.link_base().clone();
        if let Err(e) = baseline(&store, n.stuck_after, &link_base) {
            tracing::warn!(error = %e, "notifications: cannot record the store's current state");
        }
        let wake = Arc::new(Notify::new());
        let pending = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(delivery::run(delivery::Worker {
            store: store.clone(),
            senders,
            policy: crate::clients::RetryPolicy::new(&config.retry),
            rps: n.requests_per_second,
            digest: n.email_mode == crate::config::EmailMode::Digest,
            wake: wake.clone(),
            pending: pending.clone(),
            stopped,
        }));
        wake.notify_one();
        tracing::info!(channels = ?channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(), "notifications on");
        Some(Notifier {
            store,
            channels,
            stuck_after: n.stuck_after,
            link_base,
            wake,
            pending,
            stop,
            task,
        })
    }

    /// Derives the events a finished pass calls for, records the new ones as pending and wakes
    /// the delivery task. Reads and writes only the local store: it never waits on a receiver.
    pub fn after_pass(&self, summary: &PassSummary) {
        let now = now_ms();
        let mut fresh = Vec::new();
        match self.store.notification::<PassRun>(PASS_RUN_ID) {
            Ok(run) => {
                let mut run = run.unwrap_or_default();
                if let Some(ev) = events::pass_event(&mut run, &summary.errors, now) {
                    fresh.push(ev);
                }
                if let Err(e) = self.store.put_notification(PASS_RUN_ID, &run) {
                    tracing::warn!(error = %e, "notifications: cannot record the pass run");
                }
            }
            Err(e) => tracing::warn!(error = %e, "notifications: cannot read the pass run"),
        }
        match self.store.flights() {
            Ok(flights) => {
                for rec in &flights {
                    fresh.extend(events::flight_events(
                        rec,
                        now,
                        self.stuck_after,
                        &self.link_base,
                    ));
                }
            }
            Err(e) => tracing::warn!(error = %e, "notifications: cannot read the flights"),
        }
        let mut added = 0;
        for (id, event) in fresh {
            match self.store.notification::<Record>(&id) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, id, "notifications: unreadable record; replacing it");
                }
            }
            let full = self.pending.load(Ordering::SeqCst) + added >= MAX_PENDING;
            let outcome = if full {
                tracing::warn!(event = event.event.as_str(), message = %event.message, "notification dropped: {MAX_PENDING} are already waiting");
                for c in &self.channels {
                    crate::metrics::notification_failed(c.as_str());
                }
                Outcome::GaveUp {
                    at: rfc3339(now),
                    error: format!("queue full ({MAX_PENDING} waiting)"),
                }
            } else {
                added += 1;
                Outcome::Pending
            };
            let rec = Record {
                event,
                channels: self
                    .channels
                    .iter()
                    .map(|c| (*c, outcome.clone()))
                    .collect(),
            };
            if let Err(e) = self.store.put_notification(&id, &rec) {
                tracing::warn!(error = %e, "notifications: cannot record an event");
            }
        }
        if added > 0 {
            self.pending.fetch_add(added, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Stops delivering: the send under way gets a few seconds, the rest stays pending for
    /// the next start.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// On the first start with this store: records every event the store already calls for as
/// known (no channel), then marks the baseline done.
fn baseline(
    store: &Store,
    stuck_after: Duration,
    link_base: &Url,
) -> Result<(), crate::engine::state::StateError> {
    if store.notification::<String>(BASELINE_ID)?.is_some() {
        return Ok(());
    }
    let now = now_ms();
    let mut known = 0;
    for rec in store.flights()? {
        for (id, event) in events::flight_events(&rec, now, stuck_after, link_base) {
            if store.notification::<Record>(&id)?.is_none() {
                store.put_notification(
                    &id,
                    &Record {
                        event,
                        channels: BTreeMap::new(),
                    },
                )?;
                known += 1;
            }
        }
    }
    store.put_notification(BASELINE_ID, &rfc3339(now))?;
    if known > 0 {
        tracing::info!(
            known,
            "notifications: first start on this store; events it already shows are not sent"
        );
    }
    Ok(())
}
