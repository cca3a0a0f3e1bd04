//! The simulator's injected faults, each observed over real HTTP, and the hooks tests use to
//! change WebODM behind a client's back.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tapis_webodm_sync::sim::{DatasetSpec, ExpectedFlight, Faults, Sim, SimArgs};

mod sim_support;
use sim_support::{local, tapis_basic as basic, webodm_login, Webodm as Api};

const CREATE_PROJECT: &str = "POST /api/projects/";
const UPLOAD: &str = "POST /api/projects/{project}/tasks/{task}/upload/";
const DOWNLOAD: &str = "GET /v3/files/content/{system}/{path}";

/// One system, one flight of two images of about 200 KB (several stream chunks each).
fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 5,
        systems: 1,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 200_000,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

async fn start(faults: Faults) -> Sim {
    Sim::start_with(&spec(), local(), faults).await.unwrap()
}

/// A password grant with client auth: `(status, access token, refresh token)`.
async fn tapis_login(sim: &Sim) -> (StatusCode, String, String) {
    let c = sim.credentials();
    let r = Client::new()
        .post(format!("{}/v3/oauth2/tokens", sim.base_url()))
        .header("Authorization", basic(sim))
        .json(&json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let tok = |k: &str| v["result"][k][k].as_str().unwrap_or("").to_owned();
    (status, tok("access_token"), tok("refresh_token"))
}

async fn tapis_token(sim: &Sim) -> String {
    let (status, access, _) = tapis_login(sim).await;
    assert_eq!(status, StatusCode::OK);
    access
}

async fn systems(sim: &Sim, tok: &str) -> reqwest::Result<reqwest::Response> {
    Client::new()
        .get(format!("{}/v3/systems", sim.base_url()))
        .query(&[("listType", "ALL")])
        .header("X-Tapis-Token", tok)
        .send()
        .await
}

fn flight(sim: &Sim) -> ExpectedFlight {
    sim.dataset().expected_flights().remove(0)
}

/// Starts a download of the flight's first image.
async fn download(sim: &Sim, tok: &str) -> reqwest::Result<reqwest::Response> {
    let f = flight(sim);
    let mut url = url::Url::parse(&format!("{}/v3", sim.base_url())).unwrap();
    url.path_segments_mut().unwrap().extend([
        "files",
        "content",
        &f.system_id,
        &f.flight,
        "code",
        "images",
        &f.images[0].name,
    ]);
    Client::new()
        .get(url)
        .header("X-Tapis-Token", tok)
        .send()
        .await
}

/// The calls these tests make beyond [`Api::send`].
impl Api {
    async fn create_project(&self, name: &str) -> reqwest::Response {
        self.req(Method::POST, "/api/projects/")
            .json(&json!({"name": name, "tags": [".tapis-sync"]}))
            .send()
            .await
            .unwrap()
    }

    async fn project(&self, name: &str) -> i64 {
        let r = self.create_project(name).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    async fn task(&self, pid: i64) -> String {
        let r = self
            .req(Method::POST, &format!("/api/projects/{pid}/tasks/"))
            .json(&json!({"name": "Flight x", "partial": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn upload(&self, pid: i64, tid: &str, size: usize) -> reqwest::Result<reqwest::Response> {
        let part = Part::bytes(vec![7u8; size]).file_name("IMG_0001.jpg");
        self.req(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/{tid}/upload/"),
        )
        .multipart(Form::new().part("images", part))
        .send()
        .await
    }

    async fn commit(&self, pid: i64, tid: &str) -> StatusCode {
        self.req(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/{tid}/commit/"),
        )
        .send()
        .await
        .unwrap()
        .status()
    }
}

fn injected(sim: &Sim, kind: &str) -> u64 {
    sim.stats().faults_injected.get(kind).copied().unwrap_or(0)
}

#[tokio::test]
async fn errors_before_handling_spare_tokens_and_change_nothing() {
    let sim = start(Faults {
        error_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let tok = tapis_token(&sim).await;
    let api = Api::login(&sim).await;
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let r = systems(&sim, &tok).await.unwrap();
        let status = r.status();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        match status.as_u16() {
            500 => {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], "Internal Server Error");
                assert!(v["result"].is_null());
            }
            502 | 503 => {
                assert!(ctype.starts_with("text/plain"), "{ctype}");
                assert!(body.starts_with(status.as_str()), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
        *seen.entry(status.as_u16()).or_insert(0) += 1;

        let r = api.create_project("never").await;
        assert!(r.status().is_server_error(), "{}", r.status());
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    assert_eq!(
        seen.len(),
        3,
        "all of 500, 502, 503 over 30 tries: {seen:?}"
    );
    assert!(sim.webodm_projects().is_empty());
    assert_eq!(injected(&sim, "error"), 60);
    let stats = sim.stats();
    assert_eq!(stats.requests["POST /v3/oauth2/tokens"]["200"], 1);
    assert_eq!(stats.requests["POST /api/token-auth/"]["200"], 1);
    assert_eq!(stats.requests[CREATE_PROJECT].values().sum::<u64>(), 30);

    // Token endpoints too, when asked.
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_rate_tokens: true,
        ..Faults::default()
    });
    assert!(tapis_login(&sim).await.0.is_server_error());
    assert!(webodm_login(&sim).await.status().is_server_error());

    // A per-route rate overrides the blanket one.
    sim.set_faults(Faults {
        route_rates: BTreeMap::from([(CREATE_PROJECT.to_owned(), 1.0)]),
        ..Faults::default()
    });
    assert_eq!(systems(&sim, &tok).await.unwrap().status(), StatusCode::OK);
    assert!(api.create_project("x").await.status().is_server_error());

    // Off again: normal service.
    sim.set_faults(Faults::default());
    assert_eq!(systems(&sim, &tok).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        api.create_project("now").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(sim.webodm_projects().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn errors_after_handling_keep_the_side_effect() {
    let sim = start(Faults {
        route_after_rates: BTreeMap::from([(CREATE_PROJECT.to_owned(), 1.0)]),
        ..Faults::default()
    })
    .await;
    let api = Api::login(&sim).await;
    let r = api.create_project("Flight001 (sys)").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.text().await.unwrap().contains("502 Bad Gateway"));
    let projects = sim.webodm_projects();
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].name, "Flight001 (sys)");
    assert_eq!(injected(&sim, "error_after"), 1);

    // Every route: the upload is stored and the commit done despite the 502s.
    let pid = projects[0].id;
    sim.set_faults(Faults::default());
    let tid = api.task(pid).await;
    sim.set_faults(Faults {
        error_after_rate: 1.0,
        ..Faults::default()
    });
    let r = api.upload(pid, &tid, 5_000).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(api.commit(pid, &tid).await, StatusCode::BAD_GATEWAY);
    let task = &sim.webodm_projects()[0].tasks[0];
    assert_eq!(task.images["IMG_0001.jpg"].0, 5_000);
    assert!(!task.partial);
    // Token endpoints are spared.
    assert_eq!(webodm_login(&sim).await.status(), StatusCode::OK);
    assert_eq!(injected(&sim, "error_after"), 3);
    assert_eq!(sim.stats().requests[UPLOAD]["502"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn throttling_carries_retry_after() {
    let sim = start(Faults::default()).await;
    let tok = tapis_token(&sim).await;
    let api = Api::login(&sim).await;
    sim.set_faults(Faults {
        rate_429: 1.0,
        retry_after_secs: 3,
        ..Faults::default()
    });
    let r = systems(&sim, &tok).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "3");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let r = api.req(Method::GET, "/api/projects/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "3");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["detail"],
        "Request was throttled. Expected available in 3 seconds."
    );
    assert_eq!(tapis_login(&sim).await.0, StatusCode::OK);
    assert_eq!(injected(&sim, "429"), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn reset_download_streams_part_then_fails() {
    let sim = start(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let tok = tapis_token(&sim).await;
    let size = flight(&sim).images[0].size;
    let r = download(&sim, &tok).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut received = 0u64;
    let error = loop {
        match body.next().await {
            Some(Ok(chunk)) => received += chunk.len() as u64,
            Some(Err(e)) => break e,
            None => panic!("clean end after {received} of {size} bytes"),
        }
    };
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    assert!(received > 0 && received < size, "{received} of {size}");

    // Other routes answer nothing at all.
    let e = systems(&sim, &tok).await.unwrap_err();
    assert!(!e.is_status(), "{e:?}");
    assert_eq!(injected(&sim, "reset"), 2);
    let stats = sim.stats();
    assert_eq!(stats.requests["GET /v3/systems"]["reset"], 1);
    assert_eq!(stats.requests[DOWNLOAD]["200"], 1);
    assert!(stats.bytes_downloaded < size);

    sim.set_faults(Faults::default());
    let r = download(&sim, &tok).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len() as u64, size);
    sim.shutdown().await;
}

/// Sends a raw request and reads until the end: the error of the read, if any.
async fn raw_read_error(sim: &Sim, request: String) -> Option<std::io::ErrorKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = sim.base_url().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.err().map(|e| e.kind())
}

#[tokio::test]
async fn a_reset_is_a_tcp_rst_not_a_clean_close() {
    let sim = start(Faults::default()).await;
    let get = "GET /v3/systems HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned();
    // Without faults the server closes cleanly after its answer.
    assert_eq!(raw_read_error(&sim, get.clone()).await, None);
    sim.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        raw_read_error(&sim, get).await,
        Some(std::io::ErrorKind::ConnectionReset)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn reset_upload_fails_and_stores_nothing() {
    let sim = start(Faults::default()).await;
    let api = Api::login(&sim).await;
    let pid = api.project("p").await;
    let tid = api.task(pid).await;
    sim.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    let e = api.upload(pid, &tid, 4 << 20).await.unwrap_err();
    assert!(!e.is_status(), "{e:?}");
    assert_eq!(sim.stats().requests[UPLOAD]["reset"], 1);
    sim.set_faults(Faults::default());
    assert!(sim.webodm_projects()[0].tasks[0].images.is_empty());
    assert_eq!(sim.stats().bytes_uploaded, 0);
    let r = api.upload(pid, &tid, 1_000).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_download_ends_cleanly_under_200() {
    let sim = start(Faults {
        truncate_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let tok = tapis_token(&sim).await;
    let size = flight(&sim).images[0].size;
    for _ in 0..5 {
        let r = download(&sim, &tok).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("content-length").is_none());
        let got = r.bytes().await.unwrap().len() as u64;
        assert!(got > 0 && got < size, "{got} of {size}");
    }
    // Only downloads are truncated.
    assert_eq!(systems(&sim, &tok).await.unwrap().status(), StatusCode::OK);
    assert_eq!(injected(&sim, "truncate"), 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn revoked_tokens_stay_revoked_until_a_new_one() {
    let sim = start(Faults {
        revoke_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let revoked = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["message"], "Token is revoked.");
        assert!(v["result"].is_null() && v["metadata"].is_null());
        assert!(v["version"].is_string());
    };
    let old = tapis_token(&sim).await;
    revoked(systems(&sim, &old).await.unwrap()).await;
    sim.set_faults(Faults::default());
    revoked(systems(&sim, &old).await.unwrap()).await;
    let (_, fresh, refresh) = tapis_login(&sim).await;
    assert_eq!(
        systems(&sim, &fresh).await.unwrap().status(),
        StatusCode::OK
    );

    // Revoking every token at once; the refresh grant still gives a working one.
    sim.revoke_tapis_tokens();
    revoked(systems(&sim, &fresh).await.unwrap()).await;
    let r: Value = Client::new()
        .post(format!("{}/v3/oauth2/tokens", sim.base_url()))
        .header("Authorization", basic(&sim))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": refresh}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let renewed = r["result"]["access_token"]["access_token"]
        .as_str()
        .unwrap();
    assert_eq!(
        systems(&sim, renewed).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(injected(&sim, "revoked"), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn failing_refresh_leaves_the_password_grant() {
    let sim = start(Faults {
        refresh_fails: true,
        ..Faults::default()
    })
    .await;
    let (_, _, refresh) = tapis_login(&sim).await;
    let r = Client::new()
        .post(format!("{}/v3/oauth2/tokens", sim.base_url()))
        .header("Authorization", basic(&sim))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(tapis_login(&sim).await.0, StatusCode::OK);
    assert_eq!(injected(&sim, "refresh"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_ttl_applies_to_both_services() {
    let sim = start(Faults {
        token_ttl: Some(Duration::from_secs(1)),
        ..Faults::default()
    })
    .await;
    let tok = tapis_token(&sim).await;
    let api = Api::login(&sim).await;
    assert_eq!(systems(&sim, &tok).await.unwrap().status(), StatusCode::OK);
    let projects = || api.req(Method::GET, "/api/projects/").send();
    assert_eq!(projects().await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = systems(&sim, &tok).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("TAPIS_SECURITY_JWT_EXPIRED"));
    let r = projects().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"], "Signature has expired.");
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let sim = start(Faults {
        latency_ms: 150,
        ..Faults::default()
    })
    .await;
    let t = Instant::now();
    let tok = tapis_token(&sim).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(systems(&sim, &tok).await.unwrap().status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(150));
    sim.set_faults(Faults::default());
    let t = Instant::now();
    systems(&sim, &tok).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(150));
    sim.shutdown().await;
}

#[tokio::test]
async fn partial_tasks_expire_and_projects_can_be_deleted() {
    let sim = start(Faults::default()).await;
    let api = Api::login(&sim).await;
    let a = api.project("a").await;
    let b = api.project("b").await;
    let committed = api.task(a).await;
    api.upload(a, &committed, 100).await.unwrap();
    assert_eq!(api.commit(a, &committed).await, StatusCode::OK);
    api.task(a).await;
    api.task(b).await;
    assert_eq!(sim.expire_partial_tasks(), 2);
    assert_eq!(sim.expire_partial_tasks(), 0);
    let projects = sim.webodm_projects();
    assert_eq!(projects[0].tasks.len(), 1);
    assert_eq!(projects[0].tasks[0].id, committed);
    assert!(projects[1].tasks.is_empty());

    assert!(sim.delete_project(b));
    assert!(!sim.delete_project(b));
    let r = api
        .req(Method::GET, &format!("/api/projects/{b}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.webodm_projects().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn peak_rps_uses_a_sliding_window_and_counts_everything() {
    let sim = start(Faults::default()).await;
    // One client, built before the clock matters: building one loads the OS trust store,
    // which on a loaded machine took long enough to spread a burst over more than a second.
    let client = Client::new();
    let burst = |n: usize| {
        let url = format!("{}/v3/systems", sim.base_url());
        let client = client.clone();
        futures_util::future::join_all((0..n).map(move |_| {
            let (url, client) = (url.clone(), client.clone());
            async move { client.get(url).send().await.unwrap().status() }
        }))
    };
    // 10 token-less calls (401s), half a second, then 9 more and a token request, all
    // within one second wherever the clock's second boundaries fall.
    burst(10).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let statuses = burst(9).await;
    assert!(statuses.iter().all(|s| s.is_server_error()));
    let c = sim.credentials();
    let token = client
        .post(format!("{}/v3/oauth2/tokens", sim.base_url()))
        .header("Authorization", basic(&sim))
        .json(&json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::OK);
    assert_eq!(sim.stats().peak_rps.tapis, 20);
    // A later, smaller burst leaves the peak alone.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    burst(5).await;
    let stats = sim.stats();
    assert_eq!(stats.peak_rps.tapis, 20);
    assert_eq!(stats.peak_rps.webodm, 0);
    assert_eq!(stats.tapis_requests, 25);

    // `/__sim/stats` carries the new fields.
    let v: Value = Client::new()
        .get(format!("{}/__sim/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["peak_rps"]["tapis"], 20);
    assert_eq!(v["faults_injected"]["error"], 14);
    sim.shutdown().await;
}

/// The `sim` flags inside any command line.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

#[test]
fn sim_flags_become_faults() {
    let cli = Cli::try_parse_from([
        "sim",
        "--latency-ms",
        "20",
        "--error-rate",
        "0.1",
        "--rate-429",
        "0.2",
        "--reset-rate",
        "0.3",
        "--truncate-rate",
        "1",
        "--token-ttl",
        "5",
        "--process-ms",
        "250",
        "--fail-processing-rate",
        "0.25",
    ])
    .unwrap();
    let f = cli.sim.faults();
    assert_eq!(f.latency_ms, 20);
    assert_eq!(f.error_rate, 0.1);
    assert_eq!(f.rate_429, 0.2);
    assert_eq!(f.reset_rate, 0.3);
    assert_eq!(f.truncate_rate, 1.0);
    assert_eq!(f.token_ttl, Some(Duration::from_secs(5)));
    assert_eq!(f.retry_after_secs, 1);
    assert_eq!((f.process_ms, f.fail_processing_rate), (250, 0.25));
    let none = Cli::try_parse_from(["sim"]).unwrap();
    assert_eq!(none.sim.faults(), Faults::default());
    assert_eq!(none.sim.faults().process_ms, 1500);

    for bad in [
        ["--error-rate", "2"],
        ["--rate-429", "-0.1"],
        ["--reset-rate", "NaN"],
        ["--truncate-rate", "half"],
        ["--token-ttl", "0"],
        ["--latency-ms", "-5"],
        ["--fail-processing-rate", "1.5"],
        ["--process-ms", "-1"],
    ] {
        let e = Cli::try_parse_from(["sim", bad[0], bad[1]])
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(e.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn binary_rejects_a_bad_rate_and_documents_the_flags() {
    let bin = env!("CARGO_BIN_EXE_tapis-webodm-sync");
    let out = Command::new(bin)
        .args(["sim", "--error-rate", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--error-rate"), "{err}");
    assert!(err.contains("between 0 and 1"), "{err}");

    let out = Command::new(bin).args(["sim", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--latency-ms",
        "--error-rate",
        "--rate-429",
        "--reset-rate",
        "--truncate-rate",
        "--token-ttl",
        "--process-ms",
        "--fail-processing-rate",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
