//! TLS: both clients verify certificates (OS trust store by default); a private CA is trusted
//! only when the service's `ca_file` names it. A tiny rustls server on loopback with a
//! certificate made by a private CA (rcgen) answers both APIs.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tapis_webodm_sync::clients::http::ApiError;
use tapis_webodm_sync::clients::tapis::TapisClient;
use tapis_webodm_sync::clients::webodm::WebodmClient;
use tapis_webodm_sync::config::Config;

/// (CA certificate PEM, server certificate DER, server key DER) for `localhost`/`127.0.0.1`.
fn private_ca() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tws test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.der().to_vec(), key.serialize_der())
}

/// Serves HTTPS on a loopback port: Tapis systems listing and WebODM login; returns the port.
async fn serve(cert: Vec<u8>, key: Vec<u8>) -> u16 {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let body = if head.starts_with("GET /v3/systems") {
                    r#"{"status":"success","result":[{"id":"ptdatax.project.tls"}]}"#
                } else if head.starts_with("POST /api/token-auth/") {
                    r#"{"token":"opaque-test-token"}"#
                } else {
                    "{}"
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn config(port: u16, dir: &std::path::Path, ca: bool) -> Config {
    std::fs::write(dir.join("token"), "opaque-tapis-token").unwrap();
    let ca_line = if ca { "ca_file = \"ca.pem\"\n" } else { "" };
    let text = format!(
        "[tapis]\nbase_url = \"https://127.0.0.1:{port}\"\ntoken_file = \"token\"\n{ca_line}\n\
         [webodm]\nbase_url = \"https://localhost:{port}\"\nusername = \"u\"\npassword = \"p\"\n{ca_line}\n\
         [retry]\ninitial = \"10ms\"\nmax = \"20ms\"\nmax_elapsed = \"100ms\"\n"
    );
    Config::from_toml(&text, &dir.join("config.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_through_ca_file() {
    let (ca_pem, cert, key) = private_ca();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    let port = serve(cert, key).await;

    // Without ca_file: the OS trust store does not know the CA; the error names the service.
    let c = config(port, dir.path(), false);
    let tapis = TapisClient::new(&c.tapis, &c.retry).unwrap();
    let e = tapis.list_systems("ptdatax.project.*").await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
    assert!(text.starts_with("Tapis GET /v3/systems"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    let webodm = WebodmClient::new(&c.webodm, &c.retry).unwrap();
    let e = webodm.login().await.unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("WebODM POST /api/token-auth/"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // With it: both work (the Tapis URL names the IP, the WebODM one the host name).
    let c = config(port, dir.path(), true);
    let tapis = TapisClient::new(&c.tapis, &c.retry).unwrap();
    let systems = tapis.list_systems("ptdatax.project.*").await.unwrap();
    assert_eq!(systems[0].id, "ptdatax.project.tls");
    let webodm = WebodmClient::new(&c.webodm, &c.retry).unwrap();
    webodm.login().await.unwrap();
}
