//! Shared by the simulator's own tests (`sim_*.rs`): a loopback address, Tapis logins and a
//! logged-in WebODM client over real HTTP. Each test file adds the calls it needs to
//! [`Webodm`] in an `impl` block of its own.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tapis_webodm_sync::config::Config;
use tapis_webodm_sync::sim::Sim;

/// Any free port on loopback.
pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The simulator's own daemon config (no state dir of its own), made fast for tests: rate
/// limits at 1000 requests per second, retries from 5 ms up to 50 ms for 5 s at most.
pub fn fast_config(sim: &Sim) -> Config {
    let mut cfg = Config::from_toml(
        &sim.config_toml(Path::new("/nonexistent/state")),
        Path::new("/nonexistent/config.toml"),
    )
    .unwrap();
    cfg.tapis.requests_per_second = 1000;
    cfg.webodm.requests_per_second = 1000;
    cfg.retry.initial = Duration::from_millis(5);
    cfg.retry.max = Duration::from_millis(50);
    cfg.retry.max_elapsed = Duration::from_secs(5);
    cfg
}

/// The `Authorization: Basic …` of the simulator's Tapis OAuth client.
pub fn tapis_basic(sim: &Sim) -> String {
    let c = sim.credentials();
    let pair = format!("{}:{}", c.tapis_client_id, c.tapis_client_key);
    format!("Basic {}", STANDARD.encode(pair))
}

/// A Tapis access token from the password grant (no client auth).
pub async fn tapis_token(sim: &Sim) -> String {
    let c = sim.credentials();
    let v: Value = Client::new()
        .post(format!("{}/v3/oauth2/tokens", sim.base_url()))
        .json(&json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["result"]["access_token"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST /api/token-auth/` with the simulator's WebODM account, the answer as it comes.
pub async fn webodm_login(sim: &Sim) -> reqwest::Response {
    let c = sim.credentials();
    Client::new()
        .post(format!("{}/api/token-auth/", sim.base_url()))
        .json(&json!({"username": c.webodm_username, "password": c.webodm_password}))
        .send()
        .await
        .unwrap()
}

/// A logged-in WebODM client.
pub struct Webodm {
    pub http: Client,
    pub base: String,
    pub auth: String,
}

impl Webodm {
    /// Logs in (asserting 200) with the simulator's WebODM account.
    pub async fn login(sim: &Sim) -> Webodm {
        let r = webodm_login(sim).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        Webodm {
            http: Client::new(),
            base: sim.base_url(),
            auth: format!("JWT {}", v["token"].as_str().unwrap()),
        }
    }

    /// A request to `path` with the JWT.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
    }

    /// Sends `body` as JSON (if any); the status and the answer's JSON, or its text as a
    /// JSON string when it is not JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}
