//! The simulated Tapis behaves like the real server described in `contracts/tapis.md`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tapis_webodm_sync::sim::{DatasetSpec, Sim};

mod sim_support;
use sim_support::{local, tapis_basic as basic, tapis_token as token};

fn small(systems: usize, decoys: bool, big: Option<usize>) -> DatasetSpec {
    DatasetSpec {
        seed: 7,
        systems,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 1_000,
        big_flight_images: big,
        decoys,
        companions: false,
    }
}

/// `base/v3/<segments…>` with each segment percent-encoded.
fn url(sim: &Sim, segments: &[&str]) -> url::Url {
    let mut u = url::Url::parse(&format!("{}/v3", sim.base_url())).unwrap();
    u.path_segments_mut().unwrap().extend(segments);
    u
}

async fn get(sim: &Sim, tok: &str, segments: &[&str], query: &[(&str, &str)]) -> reqwest::Response {
    Client::new()
        .get(url(sim, segments))
        .query(query)
        .header("X-Tapis-Token", tok)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn token_grants() {
    let sim = Sim::start(&small(1, false, None), local()).await.unwrap();
    let c = sim.credentials().clone();
    let http = Client::new();
    let tokens = format!("{}/v3/oauth2/tokens", sim.base_url());
    let pw = serde_json::json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password});

    let r = http.post(&tokens).json(&pw).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "success");
    let at = &v["result"]["access_token"];
    assert!(at["expires_at"].as_str().unwrap().ends_with("+00:00"));
    let ttl = at["expires_in"].as_u64().unwrap();
    assert!((14_390..=14_400).contains(&ttl), "{ttl}");
    assert!(
        v["result"].get("refresh_token").is_none(),
        "no refresh without client auth"
    );
    let jwt = at["access_token"].as_str().unwrap();
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["tapis/username"], c.tapis_username);
    assert!(payload["sub"]
        .as_str()
        .unwrap()
        .starts_with(&c.tapis_username));
    assert!(payload["exp"].as_u64().is_some());

    // Form body with client auth: a refresh token too.
    let r = http
        .post(&tokens)
        .header("Authorization", basic(&sim))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "password"),
                    ("username", &c.tapis_username),
                    ("password", &c.tapis_password),
                ])
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let refresh = v["result"]["refresh_token"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Refresh needs the client's Basic auth.
    let body = serde_json::json!({"grant_type": "refresh_token", "refresh_token": refresh});
    let r = http.post(&tokens).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .post(&tokens)
        .header("Authorization", basic(&sim))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(v["result"]["access_token"]["access_token"].is_string());
    assert!(v["result"]["refresh_token"]["refresh_token"].is_string());

    // Bad credentials: 400 JSON, not 401.
    let bad = serde_json::json!({"grant_type": "password", "username": c.tapis_username, "password": "nope"});
    let r = http.post(&tokens).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["message"], "Invalid username/password combination.");
    assert_eq!(
        sim.stats().leaked_credentials,
        0,
        "Basic on the token endpoint is fine"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_plain_text_401() {
    let sim = Sim::start(&small(1, false, None), local()).await.unwrap();
    let tok = token(&sim).await;
    let systems = format!("{}/v3/systems", sim.base_url());
    let http = Client::new();
    let check = |r: reqwest::Response, code: &'static str| async move {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let body = r.text().await.unwrap();
        assert!(body.starts_with(code), "{body}");
        body
    };
    check(
        http.get(&systems).send().await.unwrap(),
        "TAPIS_SECURITY_MISSING_JWT_INFO",
    )
    .await;
    let bearer = http.get(&systems).bearer_auth(&tok).send().await.unwrap();
    check(bearer, "TAPIS_SECURITY_MISSING_JWT_INFO").await;
    assert_eq!(
        sim.stats().leaked_credentials,
        1,
        "Authorization on /v3 counts as a leak"
    );
    for h in ["X-Tapis-Tenant", "X-Tapis-User"] {
        let r = http
            .get(&systems)
            .header("X-Tapis-Token", &tok)
            .header(h, "x")
            .send()
            .await
            .unwrap();
        check(r, "TAPIS_SECURITY_UNEXPECTED_HEADER").await;
    }
    let r = http
        .get(&systems)
        .header("X-Tapis-Token", "eyJ.garbage.x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    sim.set_token_ttl(Duration::ZERO);
    let expired = token(&sim).await;
    let body = check(
        http.get(&systems)
            .header("X-Tapis-Token", &expired)
            .send()
            .await
            .unwrap(),
        "TAPIS_SECURITY_JWT_EXPIRED Exception message: JWT expired at ",
    )
    .await;
    assert!(
        body.ends_with("Allowed clock skew: 0 milliseconds."),
        "{body}"
    );
    // The old token still works.
    assert_eq!(
        http.get(&systems)
            .header("X-Tapis-Token", &tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sim.shutdown().await;
}

fn ids(v: &Value) -> Vec<String> {
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn systems_listing_quirks() {
    let sim = Sim::start(&DatasetSpec::demo(), local()).await.unwrap();
    let tok = token(&sim).await;
    let search = ("search", "(id.like.ptdatax.project.*)");

    let owned: Value = get(&sim, &tok, &["systems"], &[search])
        .await
        .json()
        .await
        .unwrap();
    let owned_ids = ids(&owned);
    assert!(
        !owned_ids.iter().any(|i| i == "ptdatax.project.shared-lab"),
        "OWNED by default"
    );
    assert!(!owned_ids.iter().any(|i| i == "ptdatax.project.hidden"));
    let first = &owned["result"][0];
    assert!(
        first.get("enabled").is_none() && first.get("rootDir").is_none(),
        "summary: {first}"
    );
    assert!(first.get("owner").is_some());
    assert_eq!(owned["metadata"]["totalCount"], -1);
    assert_eq!(owned["metadata"]["recordLimit"], 100);
    assert_eq!(owned["metadata"]["orderBy"], Value::Null);

    let all: Value = get(
        &sim,
        &tok,
        &["systems"],
        &[
            ("listType", "ALL"),
            search,
            ("select", "id,enabled,rootDir"),
            ("orderBy", "id(asc)"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    let all_ids = ids(&all);
    assert!(all_ids.iter().any(|i| i == "ptdatax.project.shared-lab"));
    assert!(all_ids.iter().any(|i| i == "ptdatax.project.disabled"));
    assert!(
        !all_ids.iter().any(|i| i == "ptdatax.project.hidden"),
        "never shared: invisible"
    );
    assert!(!all_ids
        .iter()
        .any(|i| i.contains("other") || i.starts_with("something") || i.starts_with("PTDATAX")));
    let mut sorted = all_ids.clone();
    sorted.sort();
    assert_eq!(all_ids, sorted);
    for s in all["result"].as_array().unwrap() {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{s}");
    }
    assert_eq!(all["metadata"]["orderBy"], "id(asc)");

    let r = get(&sim, &tok, &["systems"], &[("listType", "EVERYTHING")]).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = get(&sim, &tok, &["systems"], &[("search", "(id.like.a,b)")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let r = get(
        &sim,
        &tok,
        &["systems"],
        &[("skip", "1"), ("startAfter", "x"), ("orderBy", "id")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let eq: Value = get(
        &sim,
        &tok,
        &["systems"],
        &[
            ("listType", "ALL"),
            ("search", "(id.eq.ptdatax.project.shared-lab)"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ids(&eq), ["ptdatax.project.shared-lab"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn systems_paging_over_100() {
    // Half of the systems belong to people and are only shared with the account: ALL.
    let sim = Sim::start(&small(105, false, None), local()).await.unwrap();
    let tok = token(&sim).await;
    let page = |skip: &'static str| {
        let (sim, tok) = (&sim, &tok);
        async move {
            let v: Value = get(
                sim,
                tok,
                &["systems"],
                &[("listType", "ALL"), ("orderBy", "id(asc)"), ("skip", skip)],
            )
            .await
            .json()
            .await
            .unwrap();
            v
        }
    };
    let p1 = page("0").await;
    let p2 = page("100").await;
    assert_eq!(
        p1["result"].as_array().unwrap().len(),
        100,
        "default limit 100"
    );
    assert_eq!(p1["metadata"]["recordCount"], 100);
    assert_eq!(p2["result"].as_array().unwrap().len(), 5);
    assert_eq!(p2["metadata"]["recordsSkipped"], 100);
    let mut got = ids(&p1);
    got.extend(ids(&p2));
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 105);
    assert_eq!(got, unique, "ordered and disjoint pages");

    let all: Value = get(
        &sim,
        &tok,
        &["systems"],
        &[("listType", "ALL"), ("limit", "-1")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(all["result"].as_array().unwrap().len(), 105);
    let after: Value = get(
        &sim,
        &tok,
        &["systems"],
        &[
            ("listType", "ALL"),
            ("orderBy", "id(asc)"),
            ("startAfter", &got[99]),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ids(&after), got[100..]);
    // Without orderBy the order changes between requests.
    let mut changed = false;
    for _ in 0..5 {
        let v: Value = get(
            &sim,
            &tok,
            &["systems"],
            &[("listType", "ALL"), ("limit", "-1")],
        )
        .await
        .json()
        .await
        .unwrap();
        changed |= ids(&v) != ids(&all);
    }
    assert!(changed, "unordered listing should not be stable");
    sim.shutdown().await;
}

#[tokio::test]
async fn files_listing() {
    let sim = Sim::start(&small(1, true, Some(1005)), local())
        .await
        .unwrap();
    let tok = token(&sim).await;
    let sys = sim.dataset().expected_flights()[0].system_id.clone();
    let images = ["files", "ops", &sys, "BigFlight", "code", "images"];

    let r = get(&sim, &tok, &images, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["metadata"], serde_json::json!({}));
    let first = v["result"].as_array().unwrap();
    assert_eq!(first.len(), 1000, "default limit 1000");
    let item = &first[0];
    assert_eq!(item["name"], "IMG_0001.jpg");
    assert_eq!(item["path"], "BigFlight/code/images/IMG_0001.jpg");
    assert_eq!(item["type"], "file");
    assert_eq!(item["mimeType"], "image/jpeg");
    assert_eq!(
        item["url"],
        format!("tapis://{sys}/BigFlight/code/images/IMG_0001.jpg")
    );
    assert!(item["size"].as_u64().unwrap() >= 750);
    assert!(item["lastModified"].as_str().unwrap().ends_with('Z'));
    let rest: Value = get(&sim, &tok, &images, &[("offset", "1000")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["result"].as_array().unwrap().len(), 5);
    assert_eq!(rest["result"][4]["name"], "IMG_1005.jpg");
    assert_eq!(
        get(&sim, &tok, &images, &[("limit", "1001")])
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    // Slashes trimmed; a file lists as itself.
    let one: Value = Client::new()
        .get(format!(
            "{}/v3/files/ops/{sys}//BigFlight/code/images/IMG_0002.jpg/",
            sim.base_url()
        ))
        .header("X-Tapis-Token", &tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["result"].as_array().unwrap().len(), 1, "{one}");

    // Root listing, sorted case-insensitively.
    let root: Value = get(&sim, &tok, &["files", "ops", &sys], &[])
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = root["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_by_key(|n| n.to_lowercase());
    assert_eq!(names, sorted);
    assert!(names.contains(&"Vuelo Año 2"));

    // Glob patterns are case-sensitive.
    let v: Value = get(
        &sim,
        &tok,
        &["files", "ops", &sys, "Vuelo Año 2", "code", "images"],
        &[("pattern", "*.jpg")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 1, "{v}");

    let r = get(&sim, &tok, &["files", "ops", &sys, "NoSuchFlight"], &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "Not Found");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("FILES_CLIENT_SSH_NOT_FOUND"));
    assert_eq!(v["result"], Value::Null);
    for missing in [
        "ptdatax.project.nope",
        "ptdatax.project.hidden",
        "ptdatax.project.disabled",
    ] {
        let r = get(&sim, &tok, &["files", "ops", missing], &[]).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    let v: Value = get(&sim, &tok, &["files", "ops", "ptdatax.project.nope"], &[])
        .await
        .json()
        .await
        .unwrap();
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("FILES_SYS_NOTFOUND"));
    // Shared (not owned) systems are readable.
    assert_eq!(
        get(
            &sim,
            &tok,
            &["files", "ops", "ptdatax.project.shared-lab"],
            &[]
        )
        .await
        .status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn content_is_streamed_without_length() {
    let sim = Sim::start(&small(1, true, None), local()).await.unwrap();
    let tok = token(&sim).await;
    let flight = sim
        .dataset()
        .expected_flights()
        .into_iter()
        .find(|f| f.flight == "Vuelo Año 2")
        .unwrap();
    let img = &flight.images[0];
    let r = get(
        &sim,
        &tok,
        &[
            "files",
            "content",
            &flight.system_id,
            &flight.flight,
            "code",
            "images",
            &img.name,
        ],
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let disposition = r.headers()["content-disposition"].as_bytes().to_vec();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"{}\"", img.name).as_bytes()
    );
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, img.size);
    assert_eq!(&bytes[..4], &[0xFF, 0xD8, 0xFF, 0xE0]);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), img.sha256);
    assert_eq!(sim.stats().bytes_downloaded, img.size);

    let dir = get(
        &sim,
        &tok,
        &["files", "content", &flight.system_id, &flight.flight],
        &[],
    )
    .await;
    assert_eq!(dir.status(), StatusCode::BAD_REQUEST);
    assert!(dir.text().await.unwrap().contains("FILES_CONT_DIR_NOZIP"));
    let missing = get(
        &sim,
        &tok,
        &["files", "content", &flight.system_id, "nope.jpg"],
        &[],
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let stats = sim.stats();
    let route = &stats.requests["GET /v3/files/content/{system}/{path}"];
    assert_eq!(route["200"], 1);
    assert_eq!(route["400"], 1);
    assert_eq!(route["404"], 1);
    assert_eq!(stats.tapis_requests, 4);
    sim.shutdown().await;
}
