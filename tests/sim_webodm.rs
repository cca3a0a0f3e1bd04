//! The simulated WebODM behaves like the real server described in `contracts/webodm.md`, and
//! its report checks uploads against the source bytes.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tapis_webodm_sync::sim::{key_tag, DatasetSpec, Faults, Sim};

mod sim_support;
use sim_support::{local, tapis_token, Webodm as Api};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 3,
        systems: 1,
        flights_per_system: 1,
        images_per_flight: 3,
        image_size: 2_000,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// The calls these tests make beyond [`Api::send`].
impl Api {
    async fn project(&self, name: &str, tags: Value) -> i64 {
        let (s, v) = self
            .send(
                Method::POST,
                "/api/projects/",
                Some(json!({"name": name, "description": "d", "tags": tags})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_i64().unwrap()
    }

    async fn task(&self, pid: i64) -> String {
        let (s, v) = self
            .send(
                Method::POST,
                &format!("/api/projects/{pid}/tasks/"),
                Some(json!({"name": "Flight x", "partial": true, "auto_processing_node": true,
                            "options": [{"name": "fast-orthophoto", "value": true}], "tags": [".tws-x"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn upload(
        &self,
        pid: i64,
        tid: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut form = Form::new();
        for (name, data) in files {
            form = form.part("images", Part::bytes(data).file_name(name));
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
        let status = r.status();
        (status, r.json().await.unwrap())
    }
}

#[tokio::test]
async fn login_and_403s() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let http = Client::new();
    let base = sim.base_url();
    let c = sim.credentials().clone();

    let v: Value = http
        .post(format!("{base}/api/token-auth/"))
        .json(&json!({"username": c.webodm_username, "password": c.webodm_password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["username"], c.webodm_username);
    assert!(payload["user_id"].is_i64() && payload["email"].is_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(payload["exp"].as_u64().unwrap().abs_diff(now + 6 * 3600) < 10);

    let r = http
        .post(format!("{base}/api/token-auth/"))
        .json(&json!({"username": c.webodm_username, "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"non_field_errors": ["Unable to login with provided credentials."]})
    );

    let projects = format!("{base}/api/projects/");
    let detail = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let v: Value = r.json().await.unwrap();
        v["detail"].as_str().unwrap().to_owned()
    };
    let not_provided = "Authentication credentials were not provided.";
    assert_eq!(
        detail(http.get(&projects).send().await.unwrap()).await,
        not_provided
    );
    assert_eq!(
        detail(
            http.get(&projects)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
        )
        .await,
        not_provided
    );
    let garbage = http
        .get(&projects)
        .header("Authorization", "JWT abc.def.ghi")
        .send()
        .await
        .unwrap();
    assert_eq!(detail(garbage).await, "Error decoding signature.");
    sim.set_webodm_token_ttl(Duration::ZERO);
    let expired = Api::login(&sim).await;
    let r = expired
        .req(Method::GET, "/api/projects/")
        .send()
        .await
        .unwrap();
    assert_eq!(detail(r).await, "Signature has expired.");
    let ok = http
        .get(&projects)
        .header("Authorization", format!("JWT {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!([]));

    // Leaks: a Tapis token sent to WebODM.
    assert_eq!(sim.stats().leaked_credentials, 0);
    http.get(&projects)
        .header("X-Tapis-Token", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(sim.stats().leaked_credentials, 1);

    // Unknown URLs and missing trailing slashes: HTML 404.
    for path in ["/api/projects", "/api/nope/", "/api/projects/1/tasks"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("Authorization", format!("JWT {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn projects_names_tags_and_pages() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;

    let (s, v) = api
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "  Flight001 (sys)  ", "tags": ["tapis", ".tws-1"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["name"], "Flight001 (sys)", "trimmed");
    assert_eq!(v["tags"], json!(["tapis", ".tws-1"]));
    assert_eq!(v["tasks"], json!([]));
    assert_eq!(v["description"], "");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, v) = api
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "Other", "tags": "abc"})),
        )
        .await;
    assert_eq!(
        v["tags"],
        json!(["a", "b", "c"]),
        "a string is split into characters"
    );
    let (_, v) = api
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "Sp", "tags": ["has space"]})),
        )
        .await;
    assert_eq!(v["tags"], json!(["has", "space"]), "stored space-joined");

    let r = api
        .req(Method::POST, "/api/projects/")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=Form&tags=xy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["x", "y"]));

    let (s, v) = api
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "x".repeat(256)})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v,
        json!({"name": ["Ensure this field has no more than 255 characters."]})
    );
    let (s, _) = api
        .send(
            Method::POST,
            "/api/projects/",
            Some(json!({"name": "x".repeat(255)})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let (_, v) = api
        .send(
            Method::GET,
            "/api/projects/?name=%20Flight001%20(sys)",
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "exact name, value trimmed");
    let (_, v) = api
        .send(Method::GET, "/api/projects/?name=flight001%20(sys)", None)
        .await;
    assert_eq!(v, json!([]), "case-sensitive");

    for i in 0..8 {
        api.project(&format!("P{i}"), json!([])).await;
    }
    let (_, all) = api.send(Method::GET, "/api/projects/", None).await;
    assert_eq!(all.as_array().unwrap().len(), 13);
    let (_, p1) = api.send(Method::GET, "/api/projects/?page=1", None).await;
    assert_eq!(p1["count"], 13);
    assert_eq!(p1["results"].as_array().unwrap().len(), 10);
    assert!(p1["next"].as_str().unwrap().ends_with("page=2"));
    assert_eq!(p1["previous"], Value::Null);
    let (_, p2) = api.send(Method::GET, "/api/projects/?page=2", None).await;
    assert_eq!(p2["results"].as_array().unwrap().len(), 3);
    let (s, _) = api.send(Method::GET, "/api/projects/?page=3", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test]
async fn tasks_upload_overwrite_commit() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P", json!([])).await;
    let tasks = format!("/api/projects/{pid}/tasks/");

    let (s, v) = api
        .send(
            Method::POST,
            &tasks,
            Some(json!({"partial": true, "options": [{"name": "dsm", "value": false}]})),
        )
        .await;
    assert_eq!(
        (s, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"options": ["Invalid options"]})
        )
    );
    let (s, _) = api
        .send(
            Method::POST,
            &tasks,
            Some(json!({"partial": true, "processing_node": null})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .send(
            Method::POST,
            "/api/projects/999/tasks/",
            Some(json!({"partial": true})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let tid = api.task(pid).await;
    let (s, v) = api.send(Method::GET, &format!("{tasks}{tid}/"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["partial"], true);
    assert_eq!(v["status"], Value::Null);
    assert_eq!(v["images_count"], 0);
    assert_eq!(v["processing_time"], -1);
    assert_eq!(v["project"], pid);
    let (_, list) = api.send(Method::GET, &tasks, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (s, v) = api
        .send(Method::POST, &format!("{tasks}{tid}/commit/"), None)
        .await;
    assert_eq!(
        (s, v),
        (
            StatusCode::BAD_REQUEST,
            json!(["You need to upload at least 1 file before commit"])
        )
    );

    let (s, v) = api
        .upload(
            pid,
            &tid,
            vec![
                ("IMG_1.jpg".into(), vec![1; 100]),
                ("dir\\IMG_2.jpg".into(), vec![2; 50]),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"success": true, "uploaded": {"IMG_1.jpg": 100, "IMG_2.jpg": 50}})
    );
    let (_, v) = api
        .upload(pid, &tid, vec![("IMG_1.jpg".into(), vec![3; 70])])
        .await;
    assert_eq!(v["uploaded"]["IMG_1.jpg"], 70);

    let head = |name: &str| {
        api.req(
            Method::HEAD,
            &format!("{tasks}{tid}/images/download/{name}"),
        )
        .send()
    };
    let r = head("IMG_1.jpg").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "70", "overwritten");
    assert_eq!(
        head("IMG_9.jpg").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let (s, v) = api
        .send(Method::POST, &format!("{tasks}{tid}/commit/"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["partial"], false);
    assert_eq!(v["images_count"], 2);
    let project = &sim.webodm_projects()[0];
    assert_eq!(project.tasks[0].images["IMG_1.jpg"].0, 70);
    assert!(!project.tasks[0].partial);
    assert_eq!(project.tasks[0].tags, [".tws-x"]);
    assert_eq!(sim.stats().bytes_uploaded, 220);

    assert!(sim.delete_task(pid, &tid));
    let (s, v) = api.send(Method::GET, &format!("{tasks}{tid}/"), None).await;
    assert_eq!(
        (s, v),
        (StatusCode::NOT_FOUND, json!({"detail": "Not found."}))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn chunked_upload_is_refused_and_every_commit_is_counted() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P", json!([])).await;
    let tid = api.task(pid).await;
    // A streamed part without a length: reqwest sends the body chunked, without Content-Length.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(vec![7; 100]))];
    let part = Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .file_name("IMG_1.jpg");
    let r = api
        .req(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/{tid}/upload/"),
        )
        .multipart(Form::new().part("images", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!(["No files uploaded"])
    );
    assert!(sim.webodm_projects()[0].tasks[0].images.is_empty());

    let (s, _) = api
        .upload(pid, &tid, vec![("IMG_1.jpg".into(), vec![7; 100])])
        .await;
    assert_eq!(s, StatusCode::OK);
    let commit = format!("/api/projects/{pid}/tasks/{tid}/commit/");
    let (s, v) = api.send(Method::POST, &commit, None).await;
    assert_eq!((s, &v["partial"]), (StatusCode::OK, &json!(false)));
    assert_eq!(sim.stats().commits, [(tid.clone(), 1)].into());
    // A second commit is accepted, as by WebODM (which queues processing again), and counted.
    let (s, _) = api.send(Method::POST, &commit, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(sim.stats().commits, [(tid.clone(), 2)].into());
    sim.shutdown().await;
}

#[tokio::test]
async fn aborted_upload_is_not_recorded() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P", json!([])).await;
    let tid = api.task(pid).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![0xFF; 4096])),
        Err(std::io::Error::other("client gave up")),
    ];
    let part = Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .file_name("IMG_1.jpg");
    let r = api
        .req(
            Method::POST,
            &format!("/api/projects/{pid}/tasks/{tid}/upload/"),
        )
        .multipart(Form::new().part("images", part))
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.webodm_projects()[0].tasks[0].images.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn report_checks_uploads_against_source() {
    // No processing node: the task's status cannot change between two reads of the report.
    let faults = Faults {
        process_ms: 0,
        ..Faults::default()
    };
    let sim = Sim::start_with(&spec(), local(), faults).await.unwrap();
    let api = Api::login(&sim).await;
    let flight = sim.dataset().expected_flights()[0].clone();
    let expected = sim.dataset().expected();
    assert_eq!((expected.flights, expected.images), (1, 3));

    // Fetch the source bytes from the simulated Tapis.
    let tok = &tapis_token(&sim).await;
    let mut source = Vec::new();
    for img in &flight.images[..2] {
        let url = format!(
            "{}/v3/files/content/{}/{}/code/images/{}",
            sim.base_url(),
            flight.system_id,
            flight.flight,
            img.name
        );
        let data = api
            .http
            .get(url)
            .header("X-Tapis-Token", tok)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        source.push((img.name.clone(), data.to_vec()));
    }
    source.push(("IMG_0003.jpg".into(), vec![0; 10])); // corrupt
    source.push(("stray.jpg".into(), vec![0; 10])); // not a source image

    let name = format!("{} ({})", flight.flight, flight.system_id);
    let pid = api
        .project(
            &name,
            json!(["tapis", key_tag(&flight.system_id, &flight.flight)]),
        )
        .await;
    let tid = api.task(pid).await;
    assert_eq!(api.upload(pid, &tid, source).await.0, StatusCode::OK);
    api.send(
        Method::POST,
        &format!("/api/projects/{pid}/tasks/{tid}/commit/"),
        None,
    )
    .await;

    let report = sim.report();
    assert_eq!(report.expected, expected);
    let w = &report.webodm;
    assert_eq!(
        (w.projects, w.tasks, w.committed_tasks, w.images),
        (1, 1, 1, 4)
    );
    assert_eq!(
        (
            w.duplicate_projects,
            w.unknown_projects,
            w.corrupt_images,
            w.missing_images
        ),
        (0, 0, 2, 0)
    );

    // A duplicate found by name (no key tag), and a project of no flight.
    api.project(&name, json!([])).await;
    api.project("Unrelated", json!([])).await;
    let http_report: Value = api
        .http
        .get(format!("{}/__sim/report", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http_report, serde_json::to_value(sim.report()).unwrap());
    let w = sim.report().webodm;
    assert_eq!(
        (w.projects, w.duplicate_projects, w.unknown_projects),
        (3, 1, 1)
    );

    let stats: Value = api
        .http
        .get(format!("{}/__sim/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["requests"]["POST /api/projects/{project}/tasks/{task}/upload/"]["200"],
        1
    );
    assert_eq!(stats["requests"]["POST /api/projects/"]["201"], 3);
    assert!(stats["peak_rps"]["webodm"].as_u64().unwrap() >= 1);
    assert_eq!(stats["leaked_credentials"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn upload_cost_is_charged_per_request_file_and_byte() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P", json!([])).await;
    let tid = api.task(pid).await;
    let files = |n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("IMG_{i}.jpg"), vec![1; 10]))
            .collect()
    };
    let timed = |n: usize| {
        let api = &api;
        let tid = tid.clone();
        async move {
            let t = std::time::Instant::now();
            let (s, v) = api.upload(pid, &tid, files(n)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["uploaded"].as_object().unwrap().len(), n);
            t.elapsed()
        }
    };
    sim.set_faults(Faults {
        upload_request_ms: 300,
        ..Faults::default()
    });
    assert!(timed(1).await >= Duration::from_millis(300));
    sim.set_faults(Faults {
        upload_file_ms: 100,
        ..Faults::default()
    });
    assert!(timed(4).await >= Duration::from_millis(400));
    sim.set_faults(Faults {
        upload_bytes_per_sec: 100,
        ..Faults::default()
    });
    // 3 files of 10 bytes at 100 bytes/s.
    assert!(timed(3).await >= Duration::from_millis(300));
    // Every file stored (IMG_0 twice: overwritten).
    let projects = sim.webodm_projects();
    assert_eq!(projects[0].tasks[0].images.len(), 4);
}

#[tokio::test]
async fn deleting_a_project_answers_204_then_404() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P", json!([])).await;
    api.task(pid).await;
    let path = format!("/api/projects/{pid}/");
    let r = api.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        sim.webodm_projects().is_empty(),
        "the project and its task are gone"
    );
    let (s, _) = api.send(Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = api.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
