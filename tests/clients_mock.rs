//! The clients against a small scripted server on loopback: the contract's traps (plain-text
//! 401 on expiry, 500 on revocation, 403 for WebODM tokens, 400 for bad logins, 429 with
//! Retry-After, paging, percent-encoding, streamed uploads with a Content-Length) one by one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use tapis_webodm_sync::clients::http::{verify_length, ApiError, ByteStream};
use tapis_webodm_sync::clients::tapis::{FileKind, TapisClient};
use tapis_webodm_sync::clients::webodm::{NewProject, NewTask, WebodmClient};
use tapis_webodm_sync::config::{Config, OptionValue, Secret, TapisAuth, TaskOption};

/// A canned answer the next matching request gets instead of the normal one.
struct Fault {
    path_prefix: &'static str,
    status: u16,
    body: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

#[derive(Default)]
struct Mock {
    /// Every request: method, raw path, raw query, headers.
    log: Vec<(String, String, String, HeaderMap)>,
    faults: VecDeque<Fault>,
    logins: u32,
    /// `grant_type` of every Tapis token request.
    grants: Vec<String>,
    /// Valid tokens.
    tokens: Vec<String>,
    /// Lifetime of new tokens in seconds.
    ttl: u64,
}

type Shared = Arc<Mutex<Mock>>;

fn jwt(exp: u64, n: u32) -> String {
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        enc(br#"{"alg":"HS256","typ":"JWT"}"#),
        enc(format!(r#"{{"exp":{exp},"n":{n}}}"#).as_bytes()),
        enc(b"sig")
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn json(status: u16, v: serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn query_get(q: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Deterministic content of a file.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn handle(State(st): State<Shared>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let mut m = st.lock().unwrap();
    m.log
        .push((method.clone(), path.clone(), query.clone(), headers.clone()));
    if let Some(i) = m
        .faults
        .iter()
        .position(|f| path.starts_with(f.path_prefix))
    {
        let f = m.faults.remove(i).unwrap();
        let mut resp = (StatusCode::from_u16(f.status).unwrap(), f.body).into_response();
        for (k, v) in f.headers {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        return resp;
    }
    let ttl = m.ttl;
    // --- logins
    if path == "/v3/oauth2/tokens" {
        let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
        m.grants
            .push(b["grant_type"].as_str().unwrap_or("").to_string());
        let basic = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let ok = match b["grant_type"].as_str() {
            Some("password") => b["username"] == "svc" && b["password"] == "pw",
            Some("refresh_token") => {
                basic.is_some()
                    && m.tokens
                        .iter()
                        .any(|t| b["refresh_token"] == format!("r{t}"))
            }
            _ => false,
        };
        if !ok {
            return json(
                400,
                serde_json::json!({"status":"error","message":"Invalid username/password combination.","result":null}),
            );
        }
        m.logins += 1;
        let tok = jwt(now() + ttl, m.logins);
        m.tokens.push(tok.clone());
        let refresh = basic.map(
            |_| serde_json::json!({"refresh_token": format!("r{tok}"), "expires_in": 31536000}),
        );
        return json(
            200,
            serde_json::json!({"status":"success","result":{"access_token":{"access_token":tok,"expires_in":ttl},"refresh_token":refresh}}),
        );
    }
    if path == "/api/token-auth/" {
        let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if b["username"] != "sync" || b["password"] != "pw2" {
            return json(
                400,
                serde_json::json!({"non_field_errors":["Unable to login with provided credentials."]}),
            );
        }
        m.logins += 1;
        let tok = jwt(now() + ttl, m.logins);
        m.tokens.push(tok.clone());
        return json(200, serde_json::json!({ "token": tok }));
    }
    // --- Tapis
    if path.starts_with("/v3/") {
        let tok = headers
            .get("x-tapis-token")
            .map(|v| v.to_str().unwrap().to_string());
        if headers.contains_key("x-tapis-tenant") || headers.contains_key("x-tapis-user") {
            return (StatusCode::UNAUTHORIZED, "TAPIS_SECURITY_UNEXPECTED_HEADER").into_response();
        }
        if !tok.is_some_and(|t| m.tokens.contains(&t)) {
            return (StatusCode::UNAUTHORIZED, "TAPIS_SECURITY_MISSING_JWT_INFO").into_response();
        }
        if path == "/v3/systems" {
            let skip: usize = query_get(&query, "skip").unwrap().parse().unwrap();
            let limit: usize = query_get(&query, "limit")
                .unwrap_or("100".into())
                .parse()
                .unwrap();
            let all = query_get(&query, "listType").as_deref() == Some("ALL");
            let ids: Vec<String> = (0..250)
                .filter(|i| all || i % 2 == 0)
                .map(|i| format!("ptdatax.project.s{i:03}"))
                .collect();
            let page: Vec<_> = ids
                .iter()
                .skip(skip)
                .take(limit)
                .map(|id| serde_json::json!({"id": id, "systemType": "LINUX", "enabled": true, "owner": "svc", "rootDir": "/d"}))
                .collect();
            return json(
                200,
                serde_json::json!({"status":"success","result": page,"metadata":{}}),
            );
        }
        if let Some(rest) = path.strip_prefix("/v3/files/ops/") {
            let decoded = percent_decode(rest);
            if decoded == "sys/big" {
                let offset: usize = query_get(&query, "offset").unwrap().parse().unwrap();
                let limit: usize = query_get(&query, "limit").unwrap().parse().unwrap();
                assert!(limit <= 1000);
                let page: Vec<_> = (offset..1005.min(offset + limit))
                    .map(|i| serde_json::json!({"name": format!("IMG_{i:04}.jpg"), "path": format!("big/IMG_{i:04}.jpg"), "type": "file", "size": i, "mimeType": null, "lastModified": "2024-05-01T16:55:57Z"}))
                    .collect();
                return json(
                    200,
                    serde_json::json!({"status":"success","result": page,"metadata":{}}),
                );
            }
            if decoded == "sys/Flight #1/ü?%" || decoded == "sys" {
                return json(
                    200,
                    serde_json::json!({"status":"success","result": [{"name":"x","path":"x","type":"dir","size":0}],"metadata":{}}),
                );
            }
            return json(
                404,
                serde_json::json!({"result":null,"status":"Not Found","message":"FILES_CLIENT_SSH_NOT_FOUND Path not found.","metadata":null}),
            );
        }
        if path.starts_with("/v3/files/content/") {
            let data = content(100_000);
            let chunks: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(8192)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            return Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap();
        }
    }
    // --- WebODM
    if path.starts_with("/api/") {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let Some(tok) = auth.strip_prefix("JWT ") else {
            return json(
                403,
                serde_json::json!({"detail":"Authentication credentials were not provided."}),
            );
        };
        if !m.tokens.iter().any(|t| t == tok) {
            return json(
                403,
                serde_json::json!({"detail":"Error decoding signature."}),
            );
        }
        if path == "/api/projects/" && method == "GET" {
            return json(
                200,
                serde_json::json!([{"id": 1, "name": query_get(&query, "name"), "description": "d", "tags": ["a"]}]),
            );
        }
        if path == "/api/projects/" && method == "POST" {
            let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(b["tags"].is_array());
            return json(
                201,
                serde_json::json!({"id": 7, "name": b["name"], "description": b["description"], "tags": b["tags"], "tasks": []}),
            );
        }
        if path == "/api/projects/7/tasks/" && method == "GET" {
            return json(200, serde_json::json!([]));
        }
        if path == "/api/projects/7/tasks/" && method == "POST" {
            let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(b["partial"], true);
            assert_eq!(b["auto_processing_node"], true);
            assert!(b.get("processing_node").is_none());
            return json(
                201,
                serde_json::json!({"id": "3c1a2b7e-4f7e-4a43-9a0e-0d6f0f9f5a11", "project": 7, "name": b["name"], "partial": true, "status": null, "tags": b["tags"], "images_count": 0, "options": b["options"]}),
            );
        }
        if path.ends_with("/upload/") {
            assert!(
                headers.contains_key("content-length"),
                "upload without Content-Length"
            );
            let (name, len) = multipart_file(&headers, &body);
            let stored = name.rsplit(['/', '\\']).next().unwrap().to_string();
            return json(
                200,
                serde_json::json!({"success": true, "uploaded": {stored: len}}),
            );
        }
        if path.contains("/images/download/") {
            return if percent_decode(&path).ends_with("/IMG 1 ü#?.jpg") {
                Response::builder()
                    .header("content-length", "3")
                    .body(Body::empty())
                    .unwrap()
            } else {
                StatusCode::NOT_FOUND.into_response()
            };
        }
        if path.ends_with("/commit/") {
            return json(
                200,
                serde_json::json!({"id": "3c1a2b7e-4f7e-4a43-9a0e-0d6f0f9f5a11", "project": 7, "partial": false, "status": null, "tags": []}),
            );
        }
    }
    (StatusCode::NOT_FOUND, "<html>no route</html>").into_response()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned()
}

/// The file name and byte count of the single file part of a multipart body.
fn multipart_file(headers: &HeaderMap, body: &[u8]) -> (String, usize) {
    let ct = headers["content-type"].to_str().unwrap();
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let text = body;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let fname_at = find(text, b"filename=\"", 0).unwrap() + 10;
    let fname_end = find(text, b"\"\r\n", fname_at).unwrap();
    assert!(
        std::str::from_utf8(&text[..fname_at])
            .unwrap()
            .contains("name=\"images\""),
        "field must be `images`"
    );
    let name = String::from_utf8(text[fname_at..fname_end].to_vec()).unwrap();
    let data_at = find(text, b"\r\n\r\n", fname_end).unwrap() + 4;
    let end = find(text, format!("\r\n--{boundary}--").as_bytes(), data_at).unwrap();
    assert_eq!(&text[data_at..end], content(end - data_at).as_slice());
    (name, end - data_at)
}

async fn start(ttl: u64) -> (SocketAddr, Shared) {
    let st: Shared = Arc::new(Mutex::new(Mock {
        ttl,
        ..Mock::default()
    }));
    let app = axum::Router::new().fallback(handle).with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, st)
}

fn config(addr: SocketAddr) -> Config {
    let text = format!(
        r#"
[tapis]
base_url = "http://{addr}"
username = "svc"
password = "pw"
requests_per_second = 1000
max_concurrent_requests = 4

[webodm]
base_url = "http://{addr}/"
username = "sync"
password = "pw2"
requests_per_second = 1000

[retry]
initial = "5ms"
max = "20ms"
max_elapsed = "2s"
"#
    );
    Config::from_toml(&text, Path::new("/nonexistent/config.toml")).unwrap()
}

fn clients(cfg: &Config) -> (TapisClient, WebodmClient) {
    (
        TapisClient::new(&cfg.tapis, &cfg.retry).unwrap(),
        WebodmClient::new(&cfg.webodm, &cfg.retry).unwrap(),
    )
}

fn fault(path_prefix: &'static str, status: u16, body: &'static str) -> Fault {
    Fault {
        path_prefix,
        status,
        body,
        headers: vec![],
    }
}

fn assert_no_secrets(st: &Shared) {
    let m = st.lock().unwrap();
    for (method, path, query, headers) in &m.log {
        assert!(!query.contains("pw"), "{method} {path}?{query}");
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("");
        assert!(!auth.starts_with("Bearer"), "{method} {path}");
        if path.starts_with("/v3/") && path != "/v3/oauth2/tokens" {
            assert!(auth.is_empty(), "Tapis call with Authorization: {path}");
        }
        if path.starts_with("/api/") {
            assert!(!headers.contains_key("x-tapis-token"), "{path}");
        }
    }
}

#[tokio::test]
async fn tapis_lists_every_system_and_file_page_with_one_login() {
    let (addr, st) = start(3600).await;
    let cfg = config(addr);
    let (tapis, _) = clients(&cfg);
    let systems = tapis.list_systems("ptdatax.project.*").await.unwrap();
    assert_eq!(systems.len(), 250, "listType=ALL and paging past 100");
    assert!(systems.windows(2).all(|w| w[0].id < w[1].id));
    let files = tapis.list_dir("sys", "big").await.unwrap();
    assert_eq!(files.len(), 1005);
    assert_eq!(files[1004].size, 1004);
    assert_eq!(files[0].kind, FileKind::File);
    assert!(tapis.list_dir("sys", "").await.is_ok(), "root listing");
    assert!(tapis.list_dir("sys", "/Flight #1/ü?%/").await.is_ok());
    let missing = tapis.list_dir("sys", "nope").await.unwrap_err();
    assert!(
        missing.is_not_found() && !missing.is_retryable(),
        "{missing}"
    );
    let msg = missing.to_string();
    assert!(
        msg.starts_with("Tapis GET /v3/files/ops/sys/nope: HTTP 404:")
            && msg.contains("FILES_CLIENT_SSH_NOT_FOUND"),
        "{msg}"
    );
    let m = st.lock().unwrap();
    assert_eq!(m.logins, 1);
    // 3 system pages + 2 file pages + root + encoded + missing + 1 login
    assert_eq!(tapis.requests(), 9);
    let sys_q = &m.log.iter().find(|r| r.1 == "/v3/systems").unwrap().2;
    for part in [
        "listType=ALL",
        "search=%28id.like.ptdatax.project.*%29",
        "select=id%2Chost%2CsystemType%2Cenabled%2CrootDir%2Cowner",
        "orderBy=id%28asc%29",
        "limit=100",
        "skip=0",
    ] {
        assert!(sys_q.contains(part), "{sys_q} lacks {part}");
    }
    assert!(m
        .log
        .iter()
        .any(|r| r.1 == "/v3/files/ops/sys/Flight%20%231/%C3%BC%3F%25"));
    assert!(m.log.iter().any(|r| r.1 == "/v3/files/ops/sys"));
    drop(m);
    assert_no_secrets(&st);
}

#[tokio::test]
async fn tapis_relogs_in_on_expired_and_revoked_tokens() {
    let (addr, st) = start(3600).await;
    let cfg = config(addr);
    let (tapis, _) = clients(&cfg);
    tapis.login().await.unwrap();
    st.lock().unwrap().faults.push_back(fault(
        "/v3/systems",
        401,
        "TAPIS_SECURITY_JWT_EXPIRED Exception message: JWT expired at 2025-01-01T00:00:00Z. Allowed clock skew: 0 milliseconds.",
    ));
    assert_eq!(tapis.list_systems("*").await.unwrap().len(), 250);
    st.lock().unwrap().faults.push_back(fault(
        "/v3/files/ops/",
        500,
        r#"{"status":"error","message":"Token is revoked.","result":null}"#,
    ));
    assert_eq!(tapis.list_dir("sys", "big").await.unwrap().len(), 1005);
    assert_eq!(st.lock().unwrap().logins, 3);
    // Another 401 fails the call but the refused token is not used again.
    st.lock().unwrap().faults.push_back(fault(
        "/v3/files/ops/",
        401,
        "TAPIS_SECURITY_JWT_PARSE_ERROR Unable to parse or validate the JWT.",
    ));
    let e = tapis.list_dir("sys", "").await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable());
    tapis.list_dir("sys", "").await.unwrap();
    assert_eq!(st.lock().unwrap().logins, 4);
    assert_no_secrets(&st);
}

#[tokio::test]
async fn tapis_refresh_grant_uses_basic_auth_and_renews_early() {
    let (addr, st) = start(4).await; // renew when < 1 s of 4 s is left
    let mut cfg = config(addr);
    cfg.tapis.auth = TapisAuth::Password {
        password: Secret::new("pw"),
        client: Some(("cid".into(), Secret::new("ckey"))),
    };
    let (tapis, _) = clients(&cfg);
    tapis.login().await.unwrap();
    tapis.list_dir("sys", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    tapis.list_dir("sys", "").await.unwrap();
    let m = st.lock().unwrap();
    assert_eq!(m.logins, 2);
    let grants: Vec<_> = m
        .log
        .iter()
        .filter(|r| r.1 == "/v3/oauth2/tokens")
        .collect();
    assert_eq!(grants.len(), 2);
    assert_eq!(m.grants, ["password", "refresh_token"]);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("cid:ckey")
    );
    assert!(grants
        .iter()
        .all(|g| g.3["authorization"] == basic.as_str()));
}

#[tokio::test]
async fn tapis_bad_password_is_an_auth_error_without_the_password() {
    let (addr, _st) = start(3600).await;
    let mut cfg = config(addr);
    cfg.tapis.auth = TapisAuth::Password {
        password: Secret::new("wrong-secret"),
        client: None,
    };
    let (tapis, _) = clients(&cfg);
    let e = tapis.login().await.unwrap_err();
    assert!(matches!(e, ApiError::Auth { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("check `tapis.username` and the password"),
        "{msg}"
    );
    assert!(msg.contains("Invalid username/password"), "{msg}");
    assert!(!msg.contains("wrong-secret") && !format!("{e:?}").contains("wrong-secret"));
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn tapis_pre_issued_token_is_used_as_is() {
    let (addr, st) = start(3600).await;
    let mut cfg = config(addr);
    let tok = jwt(now() + 3600, 99);
    st.lock().unwrap().tokens.push(tok.clone());
    cfg.tapis.auth = TapisAuth::Token(Secret::new(tok.clone()));
    let (tapis, _) = clients(&cfg);
    tapis.list_dir("sys", "").await.unwrap();
    let m = st.lock().unwrap();
    assert_eq!(m.logins, 0);
    assert_eq!(m.log[0].3["x-tapis-token"], tok.as_str());
}

#[tokio::test]
async fn retries_wait_for_retry_after_and_count_every_request() {
    let (addr, st) = start(3600).await;
    let cfg = config(addr);
    let (tapis, webodm) = clients(&cfg);
    tapis.login().await.unwrap();
    {
        let mut m = st.lock().unwrap();
        m.faults.push_back(Fault {
            path_prefix: "/v3/files/ops/",
            status: 429,
            body: "slow down",
            headers: vec![("retry-after", "1")],
        });
        m.faults
            .push_back(fault("/v3/files/ops/", 502, "<html>bad gateway</html>"));
    }
    let t = Instant::now();
    tapis.list_dir("sys", "").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(tapis.requests(), 4, "login + 429 + 502 + success");
    // A permanent error is not retried.
    st.lock()
        .unwrap()
        .faults
        .push_back(fault("/api/projects/7/tasks/x/", 400, r#"["bad"]"#));
    let e = webodm.get_task(7, "x").await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(webodm.requests(), 2, "login + one GET");
}

#[tokio::test]
async fn download_streams_and_verify_length_catches_short_bodies() {
    let (addr, _st) = start(3600).await;
    let cfg = config(addr);
    let (tapis, _) = clients(&cfg);
    let s = tapis
        .download("sys", "Flight 1/code/images/IMG 1.jpg")
        .await
        .unwrap();
    let mut s = verify_length(s, 100_000, "sys/IMG 1.jpg".into());
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, content(100_000));
    let s = tapis.download("sys", "f").await.unwrap();
    let mut s = verify_length(s, 100_001, "sys/f".into());
    let mut last = None;
    while let Some(item) = s.next().await {
        last = Some(item);
    }
    assert!(matches!(
        last,
        Some(Err(ApiError::Truncated {
            expected: 100_001,
            got: 100_000,
            ..
        }))
    ));
}

#[tokio::test]
async fn webodm_flow_project_task_upload_commit() {
    let (addr, st) = start(3600).await;
    let cfg = config(addr);
    let (_, webodm) = clients(&cfg);
    webodm.login().await.unwrap();
    let found = webodm.find_projects("Flight 1 (sys)").await.unwrap();
    assert_eq!(found[0].name, "Flight 1 (sys)");
    let p = webodm
        .create_project(&NewProject {
            name: "Flight 1 (sys)".into(),
            description: "d".into(),
            tags: vec!["tapis".into(), ".tws-0123".into()],
        })
        .await
        .unwrap();
    assert_eq!((p.id, p.tags.len()), (7, 2));
    let t = webodm
        .create_task(
            7,
            &NewTask {
                name: "Flight 1".into(),
                options: vec![
                    TaskOption {
                        name: "fast-orthophoto".into(),
                        value: OptionValue::Bool(true),
                    },
                    TaskOption {
                        name: "min-num-features".into(),
                        value: OptionValue::Int(8000),
                    },
                ],
                tags: vec![".tws-0123".into()],
            },
        )
        .await
        .unwrap();
    assert!(t.partial);
    let body: ByteStream = Box::pin(futures_util::stream::iter(
        content(50_000)
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    ));
    let name = "IMG 1 ü#?.jpg";
    let n = webodm
        .upload_image(7, &t.id, name, body, 50_000)
        .await
        .unwrap();
    assert_eq!(n, 50_000);
    assert_eq!(webodm.image_size(7, &t.id, name).await.unwrap(), Some(3));
    assert_eq!(
        webodm.image_size(7, &t.id, "other.jpg").await.unwrap(),
        None
    );
    // A name WebODM stores differently is an error.
    let body: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(content(
        10,
    )))]));
    let e = webodm
        .upload_image(7, &t.id, r"a\b.jpg", body, 10)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not store the file as"), "{e}");
    let c = webodm.commit_task(7, &t.id).await.unwrap();
    assert!(!c.partial);
    let m = st.lock().unwrap();
    let create = m
        .log
        .iter()
        .find(|r| r.0 == "POST" && r.1 == "/api/projects/7/tasks/")
        .unwrap();
    assert!(create.3["authorization"]
        .to_str()
        .unwrap()
        .starts_with("JWT "));
    assert!(m.log.iter().any(|r| r.0 == "HEAD"
        && r.1
            == format!(
                "/api/projects/7/tasks/{}/images/download/IMG%201%20%C3%BC%23%3F.jpg",
                t.id
            )));
    assert_eq!(m.logins, 1);
    drop(m);
    assert_no_secrets(&st);
}

#[tokio::test]
async fn webodm_relogs_in_on_token_403_and_upload_reports_it_retryable() {
    let (addr, st) = start(3600).await;
    let cfg = config(addr);
    let (_, webodm) = clients(&cfg);
    webodm.login().await.unwrap();
    st.lock().unwrap().faults.push_back(fault(
        "/api/projects/",
        403,
        r#"{"detail":"Signature has expired."}"#,
    ));
    assert!(webodm.list_tasks(7).await.unwrap().is_empty());
    webodm.find_projects("x").await.unwrap();
    assert_eq!(st.lock().unwrap().logins, 2);
    // A permission 403 is not a token problem.
    st.lock().unwrap().faults.push_back(fault(
        "/api/projects/",
        403,
        r#"{"detail":"You do not have permission to perform this action."}"#,
    ));
    let e = webodm.find_projects("x").await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(!e.is_retryable());
    // An upload cannot be replayed: the token is dropped and the error is retryable.
    st.lock().unwrap().faults.push_back(fault(
        "/api/projects/7/tasks/t/upload/",
        403,
        r#"{"detail":"Signature has expired."}"#,
    ));
    let body: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(content(
        10,
    )))]));
    let e = webodm
        .upload_image(7, "t", "a.jpg", body, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::TokenRejected { .. }) && e.is_retryable(),
        "{e:?}"
    );
    let body: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(content(
        10,
    )))]));
    assert_eq!(
        webodm
            .upload_image(7, "t", "a.jpg", body, 10)
            .await
            .unwrap(),
        10
    );
    assert_eq!(st.lock().unwrap().logins, 3);
}

#[tokio::test]
async fn webodm_bad_password_is_an_auth_error() {
    let (addr, _st) = start(3600).await;
    let mut cfg = config(addr);
    cfg.webodm.resolved_password = Secret::new("nope-secret");
    let (_, webodm) = clients(&cfg);
    let e = webodm.login().await.unwrap_err();
    assert!(matches!(e, ApiError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("Unable to login"), "{e}");
    assert!(!e.to_string().contains("nope-secret"));
}

#[tokio::test]
async fn transport_errors_are_retryable_and_name_the_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = config(addr);
    let (_, webodm) = clients(&cfg);
    let e = webodm.login().await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(
        e.to_string().starts_with("WebODM POST /api/token-auth/"),
        "{e}"
    );
    assert!(webodm.requests() > 1, "retried until the budget ran out");
}

#[tokio::test]
async fn requests_are_rate_limited() {
    let (addr, _st) = start(3600).await;
    let mut cfg = config(addr);
    cfg.webodm.requests_per_second = 50; // bursts of 10, then one every 20 ms
    let (_, webodm) = clients(&cfg);
    let t = Instant::now();
    let calls = (0..30).map(|_| webodm.find_projects("x"));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(webodm.requests(), 31);
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
}

/// A raw HTTP/1.1 server (one request per connection) for answers hyper's server would not
/// send as written: `Content-Length` spelled as gunicorn does, or a 200 without one.
async fn raw_webodm() -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let resp = if head.starts_with("POST /api/token-auth/") {
                    let body = r#"{"token":"opaque-test-token"}"#;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else if head.starts_with("HEAD ") && head.contains("/gunicorn.jpg ") {
                    "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nContent-Type: image/jpeg\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n".to_string()
                } else if head.starts_with("HEAD ") && head.contains("/hyper.jpg ") {
                    "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: 99\r\nconnection: close\r\n\r\n".to_string()
                } else if head.starts_with("HEAD ") && head.contains("/no-length.jpg ") {
                    "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n"
                        .to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 23\r\nConnection: close\r\n\r\n{\"detail\":\"Not found.\"}".to_string()
                };
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn webodm_image_size_reads_content_length_in_any_case() {
    let cfg = config(raw_webodm().await);
    let (_, webodm) = clients(&cfg);
    let t = "3c1a2b7e-4f7e-4a43-9a0e-0d6f0f9f5a11";
    assert_eq!(
        webodm.image_size(7, t, "gunicorn.jpg").await.unwrap(),
        Some(1234)
    );
    assert_eq!(
        webodm.image_size(7, t, "hyper.jpg").await.unwrap(),
        Some(99)
    );
    // A 200 without a Content-Length: the size is unknown, so the image is uploaded again.
    assert_eq!(
        webodm.image_size(7, t, "no-length.jpg").await.unwrap(),
        None
    );
    assert_eq!(webodm.image_size(7, t, "absent.jpg").await.unwrap(), None);
}
