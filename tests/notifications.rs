//! Notifications end to end with local receivers on loopback: an SMTP sink (STARTTLS or
//! implicit TLS, with a certificate from a private CA trusted through `smtp_ca_file`, and
//! AUTH PLAIN) and an HTTP receiver. The real daemon runs against the simulator.

mod service_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use service_support::*;
use sha2::Sha256;
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const SMTP_USER: &str = "mailer";
const SMTP_PASSWORD: &str = "smtp-s3cret-pw";
const HOOK_KEY: &str = "hook-k3y-material";
const PUBLIC: &str = "https://odm.example.org";

fn dataset(flights: usize) -> DatasetSpec {
    DatasetSpec {
        seed: 21,
        systems: 1,
        flights_per_system: flights,
        images_per_flight: 2,
        image_size: 1_500,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// A simulator without a processing node: committed tasks are never processed, so the only
/// flight events are the commits.
async fn without_node(spec: &DatasetSpec) -> Sim {
    let faults = Faults {
        process_ms: 0,
        ..Faults::default()
    };
    Sim::start_with(spec, "127.0.0.1:0".parse().unwrap(), faults)
        .await
        .unwrap()
}

/// (CA certificate PEM, TLS acceptor for `localhost`).
fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tws smtp test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().to_vec().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A mail the sink accepted.
#[derive(Debug, Clone)]
struct Mail {
    /// The AUTH PLAIN identity it logged in with, if any.
    user: Option<String>,
    rcpt: Vec<String>,
    data: String,
}

impl Mail {
    /// A header's value, unfolded (long headers continue on lines starting with a space).
    fn header(&self, name: &str) -> String {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        head.replace("\r\n ", " ")
            .replace("\r\n\t", " ")
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    }
    /// The body, decoded when sent quoted-printable (soft line breaks, `=XX`).
    fn body(&self) -> String {
        let raw = self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if !self
            .header("Content-Transfer-Encoding")
            .eq_ignore_ascii_case("quoted-printable")
        {
            return raw.to_string();
        }
        let joined = raw.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 3 <= bytes.len() {
                if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
}

/// A small SMTP server: STARTTLS (`implicit = false`) or implicit TLS, AUTH PLAIN checked
/// against `SMTP_USER`/`SMTP_PASSWORD`, every accepted mail recorded.
async fn smtp_sink(implicit: bool) -> (u16, String, Arc<Mutex<Vec<Mail>>>) {
    let (ca, acceptor) = tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let sink = mails.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                if implicit {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        session(tls, true, sink).await;
                    }
                    return;
                }
                let mut plain = BufReader::new(tcp);
                if plain.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                    return;
                }
                let mut line = String::new();
                loop {
                    line.clear();
                    if plain.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.trim().to_ascii_uppercase();
                    let reply: &[u8] = if verb.starts_with("EHLO") {
                        b"250-sink\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                    } else if verb == "STARTTLS" {
                        b"220 go ahead\r\n"
                    } else if verb == "QUIT" {
                        return;
                    } else {
                        b"530 5.7.0 Must issue a STARTTLS command first\r\n"
                    };
                    if plain.write_all(reply).await.is_err() {
                        return;
                    }
                    if verb == "STARTTLS" {
                        break;
                    }
                }
                if let Ok(tls) = acceptor.accept(plain.into_inner()).await {
                    session(tls, false, sink).await;
                }
            });
        }
    });
    (port, ca, mails)
}

/// The SMTP dialogue over TLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    greet: bool,
    sink: Arc<Mutex<Vec<Mail>>>,
) {
    let mut s = BufReader::new(stream);
    if greet && s.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let (mut user, mut rcpt) = (None, Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n".to_string()
        } else if let Some(b64) = cmd.strip_prefix("AUTH PLAIN ") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            if parts.len() == 3
                && parts[1] == SMTP_USER.as_bytes()
                && parts[2] == SMTP_PASSWORD.as_bytes()
            {
                user = Some(SMTP_USER.to_string());
                "235 2.7.0 ok\r\n".to_string()
            } else {
                "535 5.7.8 Authentication credentials invalid\r\n".to_string()
            }
        } else if upper.starts_with("MAIL FROM:") {
            "250 ok\r\n".to_string()
        } else if upper.starts_with("RCPT TO:") {
            rcpt.push(cmd[8..].trim().to_string());
            "250 ok\r\n".to_string()
        } else if upper == "DATA" {
            if s.write_all(b"354 go\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(&line);
            }
            sink.lock().unwrap().push(Mail {
                user: user.clone(),
                rcpt: std::mem::take(&mut rcpt),
                data,
            });
            "250 queued\r\n".to_string()
        } else if upper == "QUIT" {
            let _ = s.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "250 ok\r\n".to_string()
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
struct Hook {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// An HTTP receiver on loopback answering `status` after `delay`; records every request.
async fn receiver(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<Hook>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(Hook {
                    headers,
                    body: body.to_vec(),
                });
                tokio::time::sleep(delay).await;
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hooks/T0K3N-in-path"), got)
}

async fn until(what: &str, timeout: Duration, log: impl Fn() -> String, check: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < end,
            "{what} within {timeout:?}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(port: u16, series: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_event_once_across_restarts_readable_mail_signed_webhook_no_password_in_log() {
    let sim: Sim = without_node(&dataset(2)).await;
    let (smtp_port, ca, mails) = smtp_sink(false).await;
    let (hook_url, hooks) = receiver(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    for (name, secret) in [("smtp-password", SMTP_PASSWORD), ("hook-key", HOOK_KEY)] {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let admin = free_port();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[
            ("sync", "interval = \"1s\""),
            ("webodm", &format!("public_url = \"{PUBLIC}\"")),
        ],
        &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[notify]\n\
             smtp_url = \"smtp://localhost:{smtp_port}\"\nsmtp_ca_file = \"ca.pem\"\n\
             smtp_username = \"{SMTP_USER}\"\nsmtp_password_file = \"smtp-password\"\n\
             from = \"tapis-webodm-sync <sync@example.org>\"\n\
             email_to = [\"ops@example.org\", \"Pilot <pilot@example.org>\"]\n\
             webhook = \"{hook_url}\"\nwebhook_secret_file = \"hook-key\"\nrequests_per_second = 50\n"
        ),
    );
    let trace = [("RUST_LOG", "trace")];
    let mut d = Daemon::start(&config, false, &trace);
    let flights = sim.dataset().expected_flights();
    until(
        "2 mails and 2 webhook calls",
        Duration::from_secs(30),
        || d.log_text(),
        || mails.lock().unwrap().len() >= 2 && hooks.lock().unwrap().len() >= 2,
    )
    .await;
    d.wait_log("pass finished", 4, Duration::from_secs(30));
    assert_eq!(mails.lock().unwrap().len(), 2, "once per event");
    assert_eq!(hooks.lock().unwrap().len(), 2, "once per event");

    // The mails: subject names flight and outcome, body links the project.
    for f in &flights {
        let all = mails.lock().unwrap().clone();
        let m = all
            .iter()
            .find(|m| m.header("Subject").contains(&f.flight))
            .unwrap_or_else(|| panic!("no mail about {} in {all:#?}", f.flight));
        assert_eq!(
            m.header("Subject"),
            format!(
                "[tapis-webodm-sync] {} ({}): committed for processing",
                f.flight, f.system_id
            )
        );
        assert_eq!(m.user.as_deref(), Some(SMTP_USER));
        assert_eq!(m.rcpt.len(), 2, "{m:?}");
        assert!(m.header("From").contains("sync@example.org"), "{m:?}");
        let body = m.body();
        assert!(body.contains(&format!("{PUBLIC}/dashboard/")), "{body}");
        assert!(
            body.contains(&format!(
                "{} images committed for processing",
                f.images.len()
            )),
            "{body}"
        );
        assert!(body.contains(&format!("Flight:   {}", f.flight)), "{body}");
    }
    // The webhook calls: JSON events, signed with HMAC-SHA256 of the body.
    for h in hooks.lock().unwrap().iter() {
        let sig = h.headers["x-tapis-webodm-sync-signature"].to_str().unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
        mac.update(&h.body);
        let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
        mac.verify_slice(&hex::decode(hex_sig).unwrap())
            .expect("the signature matches the body");
        let v: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(v["event"], "flight_committed");
        assert_eq!(h.headers["x-tapis-webodm-sync-event"], "flight_committed");
        assert!(
            flights
                .iter()
                .any(|f| v["flight_name"] == f.flight.as_str()),
            "{v}"
        );
        assert!(v["project_id"].as_i64().is_some(), "{v}");
        assert_eq!(v["url"], format!("{PUBLIC}/dashboard/"));
    }
    assert_eq!(
        metric(
            admin,
            "tapis_webodm_sync_notifications_sent_total{channel=\"email\"}"
        )
        .await,
        2.0
    );

    // A restart sends nothing again; a new flight is announced once.
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    let first_log = d.log_text();
    let mut d = Daemon::start(&config, false, &trace);
    d.wait_log("pass finished", 3, Duration::from_secs(30));
    assert_eq!(
        mails.lock().unwrap().len(),
        2,
        "nothing twice after a restart"
    );
    assert_eq!(
        hooks.lock().unwrap().len(),
        2,
        "nothing twice after a restart"
    );
    sim.replace_dataset(&dataset(3));
    until(
        "the new flight's mail",
        Duration::from_secs(30),
        || d.log_text(),
        || mails.lock().unwrap().len() >= 3 && hooks.lock().unwrap().len() >= 3,
    )
    .await;
    let passes = d.count("pass finished");
    d.wait_log("pass finished", passes + 2, Duration::from_secs(30));
    assert_eq!(mails.lock().unwrap().len(), 3);
    assert_eq!(hooks.lock().unwrap().len(), 3);
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(20));

    // Nothing secret in the logs, at trace level.
    let all = format!("{first_log}\n{}", d.log_text());
    assert!(all.contains("TRACE"), "logs were captured at trace");
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}"));
    for secret in
        SECRETS
            .iter()
            .copied()
            .chain([SMTP_PASSWORD, HOOK_KEY, plain.as_str(), "T0K3N-in-path"])
    {
        assert!(!all.contains(secret), "{secret:?} in the log");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_mail_per_pass_over_implicit_tls() {
    let sim: Sim = without_node(&dataset(3)).await;
    let (smtp_port, ca, mails) = smtp_sink(true).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1s\"")],
        &format!(
            "\n[notify]\nsmtp_url = \"smtps://localhost:{smtp_port}\"\nsmtp_ca_file = \"ca.pem\"\n\
             from = \"sync@example.org\"\nemail_to = [\"ops@example.org\"]\nemail_mode = \"digest\"\n"
        ),
    );
    let d = Daemon::start(&config, false, &[]);
    until(
        "a digest",
        Duration::from_secs(30),
        || d.log_text(),
        || !mails.lock().unwrap().is_empty(),
    )
    .await;
    d.wait_log("pass finished", 3, Duration::from_secs(30));
    let all = mails.lock().unwrap().clone();
    assert_eq!(all.len(), 1, "one mail for the pass: {all:#?}");
    let m = &all[0];
    assert_eq!(m.user, None, "no credentials configured");
    assert_eq!(
        m.header("Subject"),
        "[tapis-webodm-sync] 3 committed for processing"
    );
    let body = m.body();
    assert!(body.starts_with("3 events in this pass"), "{body}");
    for f in sim.dataset().expected_flights() {
        assert!(body.contains(&format!("Flight:   {}", f.flight)), "{body}");
    }
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_receiver_is_retried_then_given_up_without_slowing_passes() {
    let sim: Sim = without_node(&dataset(2)).await;
    let (hook_url, hooks) = receiver(503, Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"1s\"")],
        &format!(
            "\n[retry]\ninitial = \"100ms\"\nmax = \"300ms\"\nmax_elapsed = \"2s\"\n\
             \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             \n[notify]\nwebhook = \"{hook_url}\"\nformat = \"slack\"\n"
        ),
    );
    let d = Daemon::start(&config, false, &[]);
    until(
        "both events given up",
        Duration::from_secs(40),
        || d.log_text(),
        || d.count("notification given up") >= 2,
    )
    .await;
    // Retried: several calls per event; meanwhile passes went on every second.
    let calls = hooks.lock().unwrap().len();
    assert!(calls >= 4, "{calls} calls for 2 events");
    assert!(d.count("pass finished") >= 3, "{}", d.log_text());
    for line in d.log().iter().filter(|l| l.contains("pass finished")) {
        let ms: u64 = line
            .split("duration_ms=")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no duration in {line}"));
        assert!(ms < 1500, "a pass took {ms} ms: {line}");
    }
    assert_eq!(
        metric(
            admin,
            "tapis_webodm_sync_notifications_failed_total{channel=\"webhook\"}"
        )
        .await,
        2.0
    );
    let body: serde_json::Value = serde_json::from_slice(&hooks.lock().unwrap()[0].body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("committed for processing"),
        "{body}"
    );
    assert!(
        !d.log_text().contains("T0K3N-in-path"),
        "the webhook URL path is a secret"
    );
    // Given up for good: later passes do not try again.
    let passes = d.count("pass finished");
    d.wait_log("pass finished", passes + 2, Duration::from_secs(20));
    assert_eq!(
        hooks.lock().unwrap().len(),
        calls,
        "no retry after giving up"
    );
    drop(d);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processing_completed_and_failed_are_notified_once_each() {
    let faults = Faults {
        process_ms: 100,
        ..Faults::default()
    };
    let sim = Sim::start_with(&dataset(2), "127.0.0.1:0".parse().unwrap(), faults)
        .await
        .unwrap();
    let flights = sim.dataset().expected_flights();
    let (done, broken) = (&flights[0], &flights[1]);
    sim.fail_processing(
        &broken.system_id,
        &broken.flight,
        Some("Cannot process dataset"),
    );
    let (hook_url, hooks) = receiver(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(
        &sim,
        dir.path(),
        &[("sync", "interval = \"300ms\"")],
        &format!("\n[processing]\nrestart_failed = 0\n\n[notify]\nwebhook = \"{hook_url}\"\n"),
    );
    let d = Daemon::start(&config, false, &[]);
    let events = || -> Vec<serde_json::Value> {
        hooks
            .lock()
            .unwrap()
            .iter()
            .map(|h| serde_json::from_slice(&h.body).unwrap())
            .collect()
    };
    until(
        "committed, completed and failed",
        Duration::from_secs(30),
        || d.log_text(),
        || events().len() >= 4,
    )
    .await;
    let passes = d.count("pass finished");
    d.wait_log("pass finished", passes + 3, Duration::from_secs(20));
    let all = events();
    assert_eq!(all.len(), 4, "once each: {all:#?}");
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        all.iter().filter(|e| e["event"] == kind).collect()
    };
    assert_eq!(of("flight_committed").len(), 2);
    let completed = of("flight_completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["flight_name"], done.flight.as_str());
    let failed = of("flight_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["flight_name"], broken.flight.as_str());
    assert_eq!(failed[0]["error"], "Cannot process dataset");
    assert_eq!(failed[0]["phase"], "failed");
    assert_eq!(d.count("processing failed for good"), 1, "{}", d.log_text());
    assert_eq!(d.count("processing completed"), 1, "{}", d.log_text());
    drop(d);
    sim.shutdown().await;
}
