//! The webhook: one POST per event, a JSON body (the event) or a Slack/Mattermost incoming
//! webhook body (`{"text": …}`), signed with HMAC-SHA256 when `webhook_secret_file` is set.
//! The URL is treated as a secret (incoming-webhook URLs carry a token in their path): errors
//! and logs name only its scheme and host.

use crate::clients::error::with_causes;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use reqwest::header;
use sha2::Sha256;
use url::Url;

use super::events::Event;
use crate::clients::ApiError;
use crate::config::{NotifyConfig, Secret, WebhookFormat};

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Tapis-Webodm-Sync-Signature";
/// The event name header (`flight_committed`, …).
pub const EVENT_HEADER: &str = "X-Tapis-Webodm-Sync-Event";
/// A stable id per event, the same on every retry, for receivers that de-duplicate.
pub const DELIVERY_HEADER: &str = "X-Tapis-Webodm-Sync-Delivery";

/// Time allowed for one webhook call.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The webhook side.
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: Url,
    format: WebhookFormat,
    secret: Option<Secret>,
    /// `scheme://host`, what logs and errors show of the URL.
    shown: String,
}

impl Webhook {
    /// Sets up the client of `[notify]` (nothing is sent yet).
    pub(crate) fn new(n: &NotifyConfig) -> Result<Webhook, String> {
        let url = n.webhook.clone().ok_or("notify.webhook is not set")?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("tapis-webodm-sync/", env!("CARGO_PKG_VERSION")))
            .timeout(WEBHOOK_TIMEOUT)
            .tls_backend_rustls()
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        Ok(Webhook {
            client,
            url,
            format: n.format,
            secret: n.resolved_webhook_secret.clone(),
            shown,
        })
    }

    /// POSTs one event; `delivery` is its stable id.
    pub(crate) async fn send(&self, event: &Event, delivery: &str) -> Result<(), ApiError> {
        let body = body(self.format, event);
        let op = format!("POST {}/…", self.shown);
        let mut req = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, event.event.as_str())
            .header(DELIVERY_HEADER, delivery);
        if let Some(secret) = &self.secret {
            let mut value = header::HeaderValue::from_str(&sign(secret, &body))
                .expect("a hex signature is a valid header");
            value.set_sensitive(true);
            req = req.header(SIGNATURE_HEADER, value);
        }
        let resp = req.body(body).send().await;
        crate::metrics::request("webhook", resp.as_ref().ok().map(|r| r.status().as_u16()));
        let resp = resp.map_err(|e| ApiError::Transport {
            service: "webhook",
            op: op.clone(),
            detail: with_causes(&e.without_url()),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::clients::retry::parse_retry_after(v, SystemTime::now()));
        let text = resp.bytes().await.unwrap_or_default();
        Err(ApiError::Status {
            service: "webhook",
            op,
            status: status.as_u16(),
            body: crate::clients::http::snippet(&text[..text.len().min(4096)]),
            retry_after,
        })
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The request body of one event in `format`.
pub(crate) fn body(format: WebhookFormat, event: &Event) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Json => serde_json::to_value(event).expect("events serialize"),
        WebhookFormat::Slack => {
            let mut text = format!("tapis-webodm-sync: {}", slack_escape(&event.message));
            if let Some(url) = &event.url {
                text.push_str(&format!("\n<{}|Open in WebODM>", slack_escape(url)));
            }
            serde_json::json!({ "text": text })
        }
    };
    serde_json::to_vec(&value).expect("JSON serializes")
}

/// Slack's message escaping: `&`, `<` and `>` only.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::notifications::events::EventKind;

    fn event() -> Event {
        Event {
            event: EventKind::FlightFailed,
            at: "2026-05-20T10:00:00Z".into(),
            message: "Flight A<&>B (sys): processing failed".into(),
            system_id: Some("sys".into()),
            flight_name: Some("A<&>B".into()),
            phase: Some("failed".into()),
            project_id: Some(3),
            task_id: None,
            images: Some(4),
            url: Some("https://odm.example/dashboard/".into()),
            error: Some("boom".into()),
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = sign(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies() {
        let json: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &event())).unwrap();
        assert_eq!(json["event"], "flight_failed");
        assert_eq!(json["flight_name"], "A<&>B");
        let slack: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Slack, &event())).unwrap();
        assert_eq!(
            slack["text"],
            "tapis-webodm-sync: Flight A&lt;&amp;&gt;B (sys): processing failed\n<https://odm.example/dashboard/|Open in WebODM>"
        );
        assert_eq!(slack.as_object().unwrap().len(), 1);
    }
}
