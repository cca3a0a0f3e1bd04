//! Simulated processing after commit, as `contracts/webodm.md` ("Processing outcome and
//! results") and the real WebODM + NodeODM behaved: status null → 10/20 → 40 (or 30, maybe
//! without `last_error`), assets filled with 40, `restart/`, `cancel/`, a commit that
//! re-queues, no processing node, and asset downloads with a Content-Length.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tapis_webodm_sync::sim::{key_tag, DatasetSpec, Faults, Sim};

mod sim_support;
use sim_support::{local, Webodm as Api};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 9,
        systems: 1,
        flights_per_system: 2,
        images_per_flight: 2,
        image_size: 1_000,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

async fn sim(process_ms: u64) -> Sim {
    let faults = Faults {
        process_ms,
        ..Faults::default()
    };
    Sim::start_with(&spec(), local(), faults).await.unwrap()
}

/// The calls these tests make beyond [`Api::send`].
impl Api {
    /// A project tagged as the flight's, with one task holding `files`; returns (pid, tid).
    async fn task(
        &self,
        sim: &Sim,
        flight: usize,
        options: Value,
        files: &[&str],
    ) -> (i64, String) {
        let f = &sim.dataset().expected_flights()[flight];
        let (s, p) = self
            .send(
                Method::POST,
                "/api/projects/",
                Some(json!({"name": format!("{} ({})", f.flight, f.system_id),
                            "tags": [key_tag(&f.system_id, &f.flight)]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let pid = p["id"].as_i64().unwrap();
        let (s, t) = self
            .send(
                Method::POST,
                &format!("/api/projects/{pid}/tasks/"),
                Some(json!({"name": format!("Flight {}", f.flight), "partial": true, "options": options})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let tid = t["id"].as_str().unwrap().to_owned();
        let mut form = Form::new();
        for name in files {
            form = form.part(
                "images",
                Part::bytes(vec![7; 100]).file_name(name.to_string()),
            );
        }
        let r = self
            .req(
                Method::POST,
                &format!("/api/projects/{pid}/tasks/{tid}/upload/"),
            )
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        (pid, tid)
    }

    async fn get(&self, pid: i64, tid: &str) -> Value {
        let (s, v) = self
            .send(
                Method::GET,
                &format!("/api/projects/{pid}/tasks/{tid}/"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        v
    }

    async fn action(&self, pid: i64, tid: &str, what: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/{tid}/{what}/"),
            None,
        )
        .await
    }

    /// Polls the task until its status is `want` with no action pending; every answer seen
    /// on the way.
    async fn until(&self, pid: i64, tid: &str, want: i64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let t = self.get(pid, tid).await;
            let done = t["status"] == want && t["pending_action"].is_null();
            seen.push(t);
            if done {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "status {want} never came: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn download(&self, pid: i64, tid: &str, asset: &str) -> reqwest::Response {
        self.req(
            Method::GET,
            &format!("/api/projects/{pid}/tasks/{tid}/download/{asset}"),
        )
        .send()
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn committed_task_goes_through_the_statuses_to_completed_with_assets() {
    let sim = sim(1_500).await;
    let api = Api::login(&sim).await;
    let (pid, tid) = api.task(&sim, 0, json!([]), &["IMG_0001.jpg"]).await;
    let t = api.get(pid, &tid).await;
    assert_eq!(
        (&t["status"], &t["available_assets"]),
        (&Value::Null, &json!([]))
    );

    let (s, t) = api.action(pid, &tid, "commit").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t["status"], Value::Null, "waiting for the worker");
    let seen = api.until(pid, &tid, 40).await;
    let order = [Value::Null, json!(10), json!(20), json!(40)];
    let mut at = 0;
    for t in &seen {
        let i = order.iter().position(|s| *s == t["status"]).unwrap();
        assert!(i >= at, "statuses go forward: {seen:?}");
        at = i;
        let done = t["status"] == 40;
        // Assets and processing time arrive in the same transition as 40.
        assert_eq!(!t["available_assets"].as_array().unwrap().is_empty(), done);
        assert_eq!(t["processing_time"] == json!(-1), !done);
        assert_eq!(t["last_error"], Value::Null);
    }
    let done = seen.last().unwrap();
    assert_eq!(done["processing_time"], 1_500);
    assert_eq!(done["processing_node"], 1);
    assert_eq!(done["running_progress"], 1.0);
    let assets: Vec<&str> = done["available_assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in ["all.zip", "orthophoto.tif", "dsm.tif", "report.pdf"] {
        assert!(assets.contains(&a), "{a} in {assets:?}");
    }
    assert!(
        !assets.contains(&"dtm.tif"),
        "no DTM without the dtm option"
    );
    assert!(!assets.contains(&"ground_control_points.geojson"));

    // The report shows the flight's task.
    let report = sim.report();
    let f = report.flights.iter().find(|f| f.projects == [pid]).unwrap();
    let task = f.task.as_ref().unwrap();
    assert_eq!(
        (task.status, task.attempts, task.restarts),
        (Some(40), 1, 0)
    );
    assert_eq!(task.available_assets.len(), assets.len());
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_tasks_restart_and_a_commit_requeues() {
    let sim = sim(200).await;
    let api = Api::login(&sim).await;
    let flights = sim.dataset().expected_flights();
    let (system, flight) = (&flights[0].system_id, &flights[0].flight);

    // Failing like NodeODM's test mode: FAILED with no message.
    sim.fail_processing(system, flight, None);
    let (pid, tid) = api.task(&sim, 0, json!([]), &["IMG_0001.jpg"]).await;
    api.action(pid, &tid, "commit").await;
    let t = api.until(pid, &tid, 30).await.pop().unwrap();
    assert_eq!(
        (&t["last_error"], &t["available_assets"]),
        (&Value::Null, &json!([]))
    );

    // Failing every time, with a message.
    sim.fail_processing(system, flight, Some("Cannot process dataset"));
    let (s, v) = api.action(pid, &tid, "restart").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    // Until the worker takes it, the task shows its old status, last_error cleared.
    let t = api.get(pid, &tid).await;
    assert_eq!(
        (&t["status"], &t["pending_action"], &t["last_error"]),
        (&json!(30), &json!(3), &Value::Null)
    );
    let t = api.until(pid, &tid, 30).await.pop().unwrap();
    assert_eq!(t["last_error"], "Cannot process dataset");

    // Healed: the next restart clears last_error and completes.
    sim.heal_processing(system, flight);
    api.action(pid, &tid, "restart").await;
    assert_eq!(api.get(pid, &tid).await["last_error"], Value::Null);
    api.until(pid, &tid, 40).await;

    // A second commit of a committed task processes it again.
    let (s, t) = api.action(pid, &tid, "commit").await;
    assert_eq!((s, &t["status"]), (StatusCode::OK, &Value::Null));
    assert_eq!(t["available_assets"], json!([]));
    api.until(pid, &tid, 40).await;
    let task = &sim.webodm_projects()[0].tasks[0];
    assert_eq!((task.attempts, task.restarts), (4, 2));

    // Cancel: 50 at once; a partial task stops being partial.
    let (pid2, tid2) = api.task(&sim, 1, json!([]), &["IMG_0001.jpg"]).await;
    let (s, _) = api.action(pid2, &tid2, "cancel").await;
    assert_eq!(s, StatusCode::OK);
    let t = api.get(pid2, &tid2).await;
    assert_eq!((&t["status"], &t["partial"]), (&json!(50), &json!(false)));
    let (s, _) = api
        .action(pid2, "00000000-0000-4000-8000-000000000000", "restart")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test]
async fn failure_rate_hits_first_attempts_only_and_the_same_tasks_per_seed() {
    let faults = Faults {
        process_ms: 50,
        fail_processing_rate: 0.5,
        ..Faults::default()
    };
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let sim = Sim::start_with(&spec(), local(), faults.clone())
            .await
            .unwrap();
        let api = Api::login(&sim).await;
        let mut statuses = Vec::new();
        for i in 0..12 {
            let (s, p) = api
                .send(
                    Method::POST,
                    "/api/projects/",
                    Some(json!({"name": format!("P{i}")})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED);
            let pid = p["id"].as_i64().unwrap();
            let (_, t) = api
                .send(
                    Method::POST,
                    &format!("/api/projects/{pid}/tasks/"),
                    Some(json!({"name": "T", "partial": true})),
                )
                .await;
            let tid = t["id"].as_str().unwrap().to_owned();
            let form = Form::new().part("images", Part::bytes(vec![1; 10]).file_name("a.jpg"));
            api.req(
                Method::POST,
                &format!("/api/projects/{pid}/tasks/{tid}/upload/"),
            )
            .multipart(form)
            .send()
            .await
            .unwrap();
            api.action(pid, &tid, "commit").await;
            let deadline = Instant::now() + Duration::from_secs(30);
            let t = loop {
                let t = api.get(pid, &tid).await;
                if t["status"] == 40 || t["status"] == 30 {
                    break t;
                }
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if t["status"] == 30 {
                assert_eq!(t["last_error"], "Process exited with code 1");
                api.action(pid, &tid, "restart").await;
                api.until(pid, &tid, 40).await;
            }
            statuses.push(t["status"].as_i64().unwrap());
        }
        outcomes.push(statuses);
        sim.shutdown().await;
    }
    assert_eq!(outcomes[0], outcomes[1], "deterministic by seed and names");
    assert!(
        outcomes[0].contains(&30) && outcomes[0].contains(&40),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn without_a_processing_node_status_stays_null_until_one_appears() {
    let sim = sim(0).await;
    let api = Api::login(&sim).await;
    let (pid, tid) = api.task(&sim, 0, json!([]), &["IMG_0001.jpg"]).await;
    api.action(pid, &tid, "commit").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = api.get(pid, &tid).await;
    assert_eq!(
        (&t["status"], &t["processing_node"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(t["partial"], false);
    let r = api.download(pid, &tid, "orthophoto.tif").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"detail": "Asset does not exist"}));
    // An admin grants a node: the waiting task is picked up.
    sim.set_faults(Faults {
        process_ms: 100,
        ..Faults::default()
    });
    api.until(pid, &tid, 40).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn assets_download_with_content_length_and_stable_bytes() {
    let sim = sim(50).await;
    let api = Api::login(&sim).await;
    let options = json!([{"name": "dtm", "value": true}]);
    let (pid, tid) = api
        .task(&sim, 0, options, &["IMG_0001.jpg", "gcp_list.txt"])
        .await;
    let r = api.download(pid, &tid, "orthophoto.tif").await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing before processing"
    );
    api.action(pid, &tid, "commit").await;
    let t = api.until(pid, &tid, 40).await.pop().unwrap();
    let assets = t["available_assets"].as_array().unwrap();
    assert_eq!(
        assets.len(),
        23,
        "DTM asked for, GCP file present: {assets:?}"
    );

    let r = api.download(pid, &tid, "orthophoto.tif").await;
    assert_eq!(r.status(), StatusCode::OK);
    let len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/tiff");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len() as u64, len);
    assert!(len > 100_000, "{len}");
    assert_eq!(&body[..4], b"II*\x00");
    let again = api
        .download(pid, &tid, "orthophoto.tif")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        Sha256::digest(&body),
        Sha256::digest(&again),
        "deterministic"
    );
    let dtm = api
        .download(pid, &tid, "dtm.tif")
        .await
        .bytes()
        .await
        .unwrap();
    assert_ne!(Sha256::digest(&body), Sha256::digest(&dtm));

    // An empty report.pdf, as NodeODM's test mode leaves it.
    let r = api.download(pid, &tid, "report.pdf").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "0");
    assert!(r.bytes().await.unwrap().is_empty());

    // HEAD tells the length only.
    let r = api
        .req(
            Method::HEAD,
            &format!("/api/projects/{pid}/tasks/{tid}/download/dsm.tif"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );

    let r = api.download(pid, &tid, "nope.tif").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Asset does not exist"})
    );
    let stats = sim.stats();
    assert!(stats.asset_bytes_downloaded >= 2 * len);
    assert_eq!(
        stats.requests["GET /api/projects/{project}/tasks/{task}/download/{asset}"]["404"],
        2
    );

    // A truncated asset download breaks off short of its Content-Length.
    sim.set_faults(Faults {
        process_ms: 50,
        truncate_rate: 1.0,
        ..Faults::default()
    });
    let r = api.download(pid, &tid, "orthophoto.tif").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "a short body is an error");
    // A reset streams part of the asset, then kills the connection.
    sim.set_faults(Faults {
        process_ms: 50,
        reset_rate: 1.0,
        ..Faults::default()
    });
    let r = api.download(pid, &tid, "orthophoto.tif").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err());
    let faults = sim.stats().faults_injected;
    assert_eq!((faults["truncate"], faults["reset"]), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn asset_size_sets_every_asset_but_the_empty_ones() {
    let sim = Sim::start_with(
        &spec(),
        local(),
        Faults {
            process_ms: 50,
            asset_size: Some(4 << 20),
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let api = Api::login(&sim).await;
    let (pid, tid) = api.task(&sim, 0, json!([]), &["IMG_0001.jpg"]).await;
    api.action(pid, &tid, "commit").await;
    api.until(pid, &tid, 40).await;
    for asset in ["orthophoto.tif", "cameras.json", "all.zip"] {
        let body = api.download(pid, &tid, asset).await.bytes().await.unwrap();
        let len = body.len() as u64;
        assert!((3 << 20..=5 << 20).contains(&len), "{asset}: {len}");
    }
    let r = api.download(pid, &tid, "report.pdf").await;
    assert!(r.bytes().await.unwrap().is_empty(), "empty stays empty");
}
