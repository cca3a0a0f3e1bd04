//! Writing on the simulated Tapis (`contracts/tapis.md`, "Writing a file"): mkdir, insert with
//! its unconditional overwrite, partial files left by a broken upload, listings and downloads
//! of written files, and the report's check of result files against WebODM's assets.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tapis_webodm_sync::sim::{key_tag, DatasetSpec, ExpectedFlight, Faults, Sim};

mod sim_support;
use sim_support::{local, tapis_token, Webodm};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 13,
        systems: 1,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 1_000,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// A logged-in Tapis client.
struct Tapis {
    http: Client,
    base: String,
    token: String,
    sys: String,
}

impl Tapis {
    async fn login(sim: &Sim) -> Tapis {
        Tapis {
            http: Client::new(),
            base: sim.base_url(),
            token: tapis_token(sim).await,
            sys: sim.dataset().expected_flights()[0].system_id.clone(),
        }
    }

    fn req(&self, method: Method, route: &str, path: &str) -> reqwest::RequestBuilder {
        let sep = if path.is_empty() { "" } else { "/" };
        self.http
            .request(
                method,
                format!("{}/v3/files/{route}/{}{sep}{path}", self.base, self.sys),
            )
            .header("X-Tapis-Token", &self.token)
    }

    async fn mkdir(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .req(Method::POST, "ops", "")
            .json(&json!({ "path": path }))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn insert(&self, path: &str, data: Vec<u8>) -> (StatusCode, Value) {
        let form = Form::new().part("file", Part::bytes(data).file_name("upload.bin"));
        let r = self
            .req(Method::POST, "ops", path)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn list(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(Method::GET, "ops", path).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn content(&self, path: &str) -> Vec<u8> {
        let r = self.req(Method::GET, "content", path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap().to_vec()
    }
}

fn names(listing: &Value) -> Vec<&str> {
    listing["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn mkdir_and_insert_overwrite_with_no_condition() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let t = Tapis::login(&sim).await;

    let (s, v) = t.mkdir("Flight001/code/odm_results").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success");
    let (s, _) = t.mkdir("/Flight001/code/odm_results/").await;
    assert_eq!(s, StatusCode::OK, "an existing folder is no error");
    let (s, _) = t.mkdir("Flight001/code/images").await;
    assert_eq!(s, StatusCode::OK, "nor is a generated one");
    let (_, v) = t.list("Flight001/code").await;
    assert_eq!(names(&v), ["images", "odm_results"]);
    assert_eq!(v["result"][1]["type"], "dir");
    let (_, v) = t.list("Flight001/code/odm_results").await;
    assert_eq!(v["result"], json!([]));
    let (s, _) = t.mkdir("Flight001/code/images/IMG_0001.jpg/x").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a file is in the way");
    let r = t
        .req(Method::POST, "ops", "")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "path is required");

    let path = "Flight001/code/odm_results/orthophoto.tif";
    let first: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let (s, v) = t.insert(path, first.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success");
    let (s, v) = t.list(path).await;
    assert_eq!(s, StatusCode::OK);
    let items = v["result"].as_array().unwrap();
    assert_eq!(items.len(), 1, "a file path lists as one item");
    assert_eq!(
        (
            &items[0]["name"],
            &items[0]["path"],
            &items[0]["size"],
            &items[0]["type"]
        ),
        (
            &json!("orthophoto.tif"),
            &json!(path),
            &json!(70_000),
            &json!("file")
        )
    );
    assert_eq!(items[0]["mimeType"], "image/tiff");
    assert_eq!(t.content(path).await, first);

    // A second upload replaces the file, whatever was there.
    let (s, _) = t.insert(path, b"small".to_vec()).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.list(path).await;
    assert_eq!(v["result"][0]["size"], 5);
    assert_eq!(t.content(path).await, b"small");
    // Even a generated image.
    let (s, _) = t
        .insert("Flight001/code/images/IMG_0001.jpg", b"xyz".to_vec())
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.list("Flight001/code/images").await;
    assert_eq!(names(&v), ["IMG_0001.jpg", "IMG_0002.jpg"]);
    assert_eq!(v["result"][0]["size"], 3);

    // Missing parent folders are made; a folder cannot be overwritten.
    let (s, _) = t.insert("Flight001/new/deep/a.txt", b"a".to_vec()).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.list("Flight001/new/deep").await;
    assert_eq!(names(&v), ["a.txt"]);
    let (s, _) = t.insert("Flight001/code", b"a".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .insert("Flight001/code/images/IMG_0002.jpg/x.txt", b"a".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Not multipart: 415; no `file` field: 400 and nothing written.
    let r = t
        .req(Method::POST, "ops", "Flight001/b.txt")
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let form = Form::new().part("other", Part::bytes(b"x".to_vec()).file_name("b.txt"));
    let r = t
        .req(Method::POST, "ops", "Flight001/b.txt")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, _) = t.list("Flight001/b.txt").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Recursive listings see written folders too; content routes stay read-only.
    let r = t
        .req(Method::GET, "ops", "Flight001")
        .query(&[("recurse", "true")])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let paths: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"Flight001/new/deep/a.txt"), "{paths:?}");
    assert!(paths.contains(&path));
    let r = t.req(Method::POST, "content", path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The test hooks write and read files as a person would.
    assert!(sim.put_tapis_file(
        &t.sys,
        "Flight001/code/odm_results/dsm.tif",
        b"mine".to_vec()
    ));
    assert!(!sim.put_tapis_file(&t.sys, "Flight001/code", b"x".to_vec()));
    assert!(!sim.put_tapis_file("ptdatax.project.nope", "a", b"x".to_vec()));
    assert_eq!(
        sim.tapis_file(&t.sys, "Flight001/code/odm_results/dsm.tif")
            .unwrap(),
        b"mine"
    );
    assert_eq!(
        t.content("Flight001/code/odm_results/dsm.tif").await,
        b"mine"
    );
    let stats = sim.stats();
    assert_eq!(stats.tapis_bytes_uploaded, 70_000 + 5 + 3 + 1);
    assert_eq!(stats.requests["POST /v3/files/ops/{system}"]["200"], 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_broken_upload_leaves_a_partial_file() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let t = Tapis::login(&sim).await;
    let path = "Flight001/code/odm_results/all.zip";
    let (s, _) = t.insert(path, vec![1; 10]).await;
    assert_eq!(s, StatusCode::OK);
    sim.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    let form = Form::new().part(
        "file",
        Part::stream_with_length(vec![2u8; 400_000], 400_000).file_name("all.zip"),
    );
    let r = t
        .req(Method::POST, "ops", path)
        .multipart(form)
        .send()
        .await;
    assert!(r.is_err(), "the connection is reset");
    sim.set_faults(Faults::default());
    // The old file is gone: what arrived before the reset is there (the server may still be
    // storing it when the client sees the reset).
    let deadline = Instant::now() + Duration::from_secs(10);
    let size = loop {
        let (_, v) = t.list(path).await;
        let size = v["result"][0]["size"].as_u64().unwrap();
        if size != 10 {
            break size;
        }
        assert!(Instant::now() < deadline, "the partial file never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(size < 400_000, "{size}");
    let content = t.content(path).await;
    assert!(content.iter().all(|b| *b == 2), "the new bytes, cut short");
    sim.shutdown().await;
}

/// A project tagged as `flight`'s with one partial task, made by a logged-in WebODM client;
/// returns (client, project id, task id).
async fn flight_task(sim: &Sim, flight: &ExpectedFlight) -> (Webodm, i64, String) {
    let w = Webodm::login(sim).await;
    let (_, p) = w
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "x", "tags": [key_tag(&flight.system_id, &flight.flight)]})),
        )
        .await;
    let pid = p["id"].as_i64().unwrap();
    let (_, t) = w
        .send(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/"),
            Some(json!({"name": "t", "partial": true})),
        )
        .await;
    let tid = t["id"].as_str().unwrap().to_owned();
    (w, pid, tid)
}

#[tokio::test]
async fn report_checks_result_files_against_assets() {
    let sim = Sim::start_with(
        &spec(),
        local(),
        Faults {
            process_ms: 50,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let t = Tapis::login(&sim).await;
    let flight = sim.dataset().expected_flights()[0].clone();
    let (w, pid, tid) = flight_task(&sim, &flight).await;
    let api = |m: Method, p: String| w.req(m, &p);
    let form = Form::new().part("images", Part::bytes(vec![1; 10]).file_name("IMG_0001.jpg"));
    api(
        Method::POST,
        format!("/api/projects/{pid}/tasks/{tid}/upload/"),
    )
    .multipart(form)
    .send()
    .await
    .unwrap();
    api(
        Method::POST,
        format!("/api/projects/{pid}/tasks/{tid}/commit/"),
    )
    .send()
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ortho = loop {
        let r = api(
            Method::GET,
            format!("/api/projects/{pid}/tasks/{tid}/download/orthophoto.tif"),
        )
        .send()
        .await
        .unwrap();
        if r.status() == StatusCode::OK {
            break r.bytes().await.unwrap().to_vec();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dir = format!("{}/code/odm_results", flight.flight);
    t.insert(&format!("{dir}/orthophoto.tif"), ortho.clone())
        .await;
    sim.put_tapis_file(
        &flight.system_id,
        &format!("{dir}/dsm.tif"),
        b"a person's".to_vec(),
    );
    sim.put_tapis_file(&flight.system_id, &format!("{dir}/notes.md"), b"n".to_vec());

    let report = sim.report();
    let f = report
        .flights
        .iter()
        .find(|f| f.flight == flight.flight)
        .unwrap();
    let by_path = |p: &str| f.results.iter().find(|r| r.path == p).unwrap();
    let o = by_path("code/odm_results/orthophoto.tif");
    assert_eq!(
        (o.size, o.asset_size, o.matches_asset),
        (ortho.len() as u64, Some(ortho.len() as u64), true)
    );
    assert_eq!(o.sha256, hex::encode(Sha256::digest(&ortho)));
    let d = by_path("code/odm_results/dsm.tif");
    assert!(!d.matches_asset && d.asset_size.is_some_and(|s| s > 0));
    let n = by_path("code/odm_results/notes.md");
    assert_eq!((n.asset_size, n.matches_asset), (None, false));
    assert_eq!(f.results.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn report_counts_companions_apart_from_images() {
    let spec = DatasetSpec {
        companions: true,
        ..spec()
    };
    let sim = Sim::start(&spec, local()).await.unwrap();
    let flight = sim.dataset().expected_flights()[0].clone();
    let companions: Vec<&str> = flight.companions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(companions, ["GCP_List.txt", "Geo.TXT"]);
    let (w, pid, tid) = flight_task(&sim, &flight).await;
    let api = |m: Method, p: String| w.req(m, &p);
    let folder = format!("{}/code/images", flight.flight);
    let mut form = Form::new();
    for name in ["IMG_0001.jpg", "IMG_0002.jpg", "GCP_List.txt", "notes.txt"] {
        let data = sim
            .tapis_file(&flight.system_id, &format!("{folder}/{name}"))
            .unwrap();
        form = form.part("images", Part::bytes(data).file_name(name));
    }
    let r = api(
        Method::POST,
        format!("/api/projects/{pid}/tasks/{tid}/upload/"),
    )
    .multipart(form)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let report = sim.report();
    let w = &report.webodm;
    assert_eq!((w.images, w.corrupt_images, w.missing_images), (2, 0, 0));
    assert_eq!(w.bytes, flight.images.iter().map(|i| i.size).sum::<u64>());
    assert_eq!((w.companions, w.corrupt_companions), (1, 0));
    assert_eq!(w.companion_bytes, flight.companions[0].size);
    assert_eq!(w.missing_companions, report.expected.companions - 1);
    assert_eq!(w.stray_files, 1, "notes.txt");
    let f = report
        .flights
        .iter()
        .find(|f| f.flight == flight.flight)
        .unwrap();
    let held: Vec<(&str, bool)> = f
        .companions
        .iter()
        .map(|c| (c.name.as_str(), c.held))
        .collect();
    assert_eq!(held, [("GCP_List.txt", true), ("Geo.TXT", false)]);
    sim.shutdown().await;
}
