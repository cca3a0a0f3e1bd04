//! The delivery task: sends what the `notifications` tree holds as pending, channel by
//! channel, oldest first, each send rate-limited and retried with the `[retry]` policy, and
//! records the outcome. A receiver that stays down costs this task time, never a pass.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use super::email::Mailer;
use super::webhook::Webhook;
use super::{Channel, Outcome, Record};
use crate::clients::{ApiError, RetryPolicy};
use crate::config::NotifyConfig;
use crate::engine::state::{now_ms, rfc3339, Store};

/// Events in one digest mail at most.
const DIGEST_MAX: usize = 50;

/// The configured channels' senders.
pub(super) struct Senders {
    email: Option<Mailer>,
    webhook: Option<Webhook>,
}

impl Senders {
    /// Sets up every configured channel.
    pub(super) fn new(n: &NotifyConfig) -> Result<Senders, String> {
        Ok(Senders {
            email: n.email_enabled().then(|| Mailer::new(n)).transpose()?,
            webhook: n.webhook.is_some().then(|| Webhook::new(n)).transpose()?,
        })
    }

    /// The configured channels.
    pub(super) fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        if self.email.is_some() {
            out.push(Channel::Email);
        }
        if self.webhook.is_some() {
            out.push(Channel::Webhook);
        }
        out
    }
}

/// Everything the delivery task owns.
pub(super) struct Worker {
    pub store: Arc<Store>,
    pub senders: Senders,
    pub policy: RetryPolicy,
    pub rps: u32,
    pub digest: bool,
    pub wake: Arc<Notify>,
    pub pending: Arc<AtomicUsize>,
    pub stopped: watch::Receiver<bool>,
}

/// Runs until stopped: each wake-up delivers everything pending.
pub(super) async fn run(mut w: Worker) {
    let rps = NonZeroU32::new(w.rps).unwrap_or(NonZeroU32::MIN);
    let limiter = RateLimiter::direct(Quota::per_second(rps).allow_burst(rps));
    loop {
        tokio::select! {
            _ = w.wake.notified() => {}
            _ = w.stopped.changed() => return,
        }
        if *w.stopped.borrow() {
            return;
        }
        let mut stopped = w.stopped.clone();
        tokio::select! {
            _ = w.deliver_pending(&limiter) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// A stable id for receivers: the first 32 hex digits of SHA-256 of the event's store id.
fn delivery_id(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

impl Worker {
    /// Every record with something pending, oldest first.
    fn pending_records(&self) -> Vec<(String, Record)> {
        let mut all = Vec::new();
        for prefix in ["f/", "d/"] {
            match self.store.notifications::<Record>(prefix) {
                Ok(recs) => all.extend(recs),
                Err(e) => tracing::warn!(error = %e, "notifications: cannot read the queue"),
            }
        }
        all.retain(|(_, r)| r.channels.values().any(|o| *o == Outcome::Pending));
        all.sort_by(|a, b| (&a.1.event.at, &a.0).cmp(&(&b.1.event.at, &b.0)));
        all
    }

    async fn deliver_pending(&self, limiter: &DefaultDirectRateLimiter) {
        let records = self.pending_records();
        self.pending.store(records.len(), Ordering::SeqCst);
        if let Some(mailer) = &self.senders.email {
            let todo: Vec<&(String, Record)> = records
                .iter()
                .filter(|(_, r)| r.channels.get(&Channel::Email) == Some(&Outcome::Pending))
                .collect();
            let size = if self.digest { DIGEST_MAX } else { 1 };
            for batch in todo.chunks(size) {
                let events: Vec<_> = batch.iter().map(|(_, r)| &r.event).collect();
                let what = format!("mail about {} event(s)", events.len());
                let result = self
                    .policy
                    .run(&what, || async {
                        limiter.until_ready().await;
                        mailer.send(&events).await
                    })
                    .await;
                let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
                self.record(Channel::Email, &ids, result);
            }
        }
        if let Some(hook) = &self.senders.webhook {
            for (id, rec) in records
                .iter()
                .filter(|(_, r)| r.channels.get(&Channel::Webhook) == Some(&Outcome::Pending))
            {
                let delivery = delivery_id(id);
                let result = self
                    .policy
                    .run("webhook", || async {
                        limiter.until_ready().await;
                        hook.send(&rec.event, &delivery).await
                    })
                    .await;
                self.record(Channel::Webhook, &[id.as_str()], result);
            }
        }
        let left = self.pending_records().len();
        self.pending.store(left, Ordering::SeqCst);
    }

    /// Records the outcome of one send (one mail or one webhook call) for its events.
    fn record(&self, channel: Channel, ids: &[&str], result: Result<(), ApiError>) {
        let at = rfc3339(now_ms());
        let outcome = match &result {
            Ok(()) => {
                crate::metrics::notification_sent(channel.as_str());
                tracing::info!(
                    channel = channel.as_str(),
                    events = ids.len(),
                    "notification sent"
                );
                Outcome::Sent { at }
            }
            Err(e) => {
                crate::metrics::notification_failed(channel.as_str());
                tracing::warn!(channel = channel.as_str(), events = ids.len(), error = %e, "notification given up");
                Outcome::GaveUp {
                    at,
                    error: e.to_string(),
                }
            }
        };
        for id in ids {
            match self.store.notification::<Record>(id) {
                Ok(Some(mut rec)) => {
                    rec.channels.insert(channel, outcome.clone());
                    if let Err(e) = self.store.put_notification(id, &rec) {
                        tracing::warn!(error = %e, "notifications: cannot record an outcome");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "notifications: cannot record an outcome"),
            }
        }
    }
}
