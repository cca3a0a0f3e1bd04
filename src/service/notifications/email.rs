//! Mails: readable text (the subject names the flight and the outcome, the body links the
//! project), one per event or one digest per pass, sent over SMTP with STARTTLS (`smtp://`) or
//! implicit TLS (`smtps://`), certificates verified against the OS trust store plus
//! `smtp_ca_file`.

use crate::clients::error::with_causes;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::events::Event;
use crate::clients::ApiError;
use crate::config::NotifyConfig;

/// Longest silence on the SMTP connection.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The SMTP side: transport and addresses.
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// `smtp[s]://host:port`, for logs and errors.
    server: String,
}

impl Mailer {
    /// Sets up the transport of `[notify]` (nothing is sent yet).
    pub(crate) fn new(n: &NotifyConfig) -> Result<Mailer, String> {
        let url = n.smtp_url.as_ref().ok_or("notify.smtp_url is not set")?;
        let host = url.host_str().ok_or("notify.smtp_url has no host")?;
        let implicit = url.scheme() == "smtps";
        let port = url.port().unwrap_or(if implicit { 465 } else { 587 });
        let mut tls = TlsParameters::builder(host.to_string());
        if !n.smtp_ca.pem.is_empty() {
            let cert = Certificate::from_pem(&n.smtp_ca.pem)
                .map_err(|e| format!("notify.smtp_ca_file: {e}"))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| format!("SMTP TLS setup: {e}"))?;
        let tls = if implicit {
            Tls::Wrapper(tls)
        } else {
            Tls::Required(tls)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&n.smtp_username, &n.resolved_smtp_password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        let parse = |a: &str| {
            a.parse::<Mailbox>()
                .map_err(|e| format!("`{a}` is not a mail address: {e}"))
        };
        Ok(Mailer {
            transport: builder.build(),
            from: parse(n.from.as_deref().ok_or("notify.from is not set")?)?,
            to: n
                .email_to
                .iter()
                .map(|a| parse(a))
                .collect::<Result<_, _>>()?,
            server: format!("{}://{host}:{port}", url.scheme()),
        })
    }

    /// Sends one mail about `events` (one event: its own mail; several: a digest).
    pub(crate) async fn send(&self, events: &[&Event]) -> Result<(), ApiError> {
        let (subject, body) = compose(events);
        let mut msg = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            msg = msg.to(to.clone());
        }
        let msg = msg.body(body).map_err(|e| ApiError::Rejected {
            service: "SMTP",
            op: "composing the mail".into(),
            detail: e.to_string(),
        })?;
        self.transport
            .send(msg)
            .await
            .map(drop)
            .map_err(|e| smtp_error(&self.server, e))
    }
}

/// Maps an SMTP failure: a permanent reply (5xx) is not retried, authentication refused is
/// [`ApiError::Auth`]; connection problems, timeouts and transient replies (4xx) are retried.
fn smtp_error(server: &str, e: lettre::transport::smtp::Error) -> ApiError {
    let detail = with_causes(&e);
    let op = format!("sending mail via {server}");
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        if matches!(code.as_deref(), Some("530" | "534" | "535")) {
            ApiError::Auth {
                service: "SMTP",
                detail: format!("{server}: {detail}; check notify.smtp_username and the password"),
            }
        } else {
            ApiError::Rejected {
                service: "SMTP",
                op,
                detail,
            }
        }
    } else {
        ApiError::Transport {
            service: "SMTP",
            op,
            detail,
        }
    }
}

/// Subject and plain-text body of a mail about `events`.
pub(crate) fn compose(events: &[&Event]) -> (String, String) {
    let mut body = String::new();
    let subject = match events {
        [one] => {
            body.push_str(&describe(one));
            format!(
                "[tapis-webodm-sync] {}: {}",
                one.subject_name(),
                one.event.outcome()
            )
        }
        many => {
            let mut counts = std::collections::BTreeMap::new();
            for e in many {
                *counts.entry(e.event.outcome()).or_insert(0usize) += 1;
            }
            let list: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            body.push_str(&format!("{} events in this pass:\n\n", many.len()));
            for (i, e) in many.iter().enumerate() {
                if i > 0 {
                    body.push_str("\n----\n\n");
                }
                body.push_str(&describe(e));
            }
            format!("[tapis-webodm-sync] {}", list.join(", "))
        }
    };
    body.push_str("\n-- \ntapis-webodm-sync: Tapis flights into WebODM\n");
    (subject, body)
}

/// The lines of one event.
fn describe(e: &Event) -> String {
    let mut out = format!("{}\n\n", e.message);
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push_str(&format!("{k:<9} {v}\n"));
        }
    };
    line("System:", e.system_id.clone());
    line("Flight:", e.flight_name.clone());
    line("Phase:", e.phase.clone());
    line("Images:", e.images.map(|n| n.to_string()));
    line("Project:", e.project_id.map(|p| p.to_string()));
    line("Task:", e.task_id.clone());
    line("WebODM:", e.url.clone());
    line("Error:", e.error.clone());
    line("When:", Some(e.at.clone()));
    out
}
