//! The Tapis and WebODM clients against the simulator over real HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tapis_webodm_sync::clients::http::verify_length;
use tapis_webodm_sync::clients::tapis::{FileKind, TapisClient};
use tapis_webodm_sync::clients::webodm::{NewProject, NewTask, WebodmClient};
use tapis_webodm_sync::config::{Config, OptionValue, TaskOption};
use tapis_webodm_sync::sim::{key_tag, DatasetSpec, ExpectedFlight, Sim};

mod sim_support;
use sim_support::{fast_config, local};

fn spec(systems: usize, big: Option<usize>) -> DatasetSpec {
    DatasetSpec {
        seed: 11,
        systems,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 3_000,
        big_flight_images: big,
        decoys: true,
        companions: false,
    }
}

fn clients(cfg: &Config) -> (TapisClient, WebodmClient) {
    (
        TapisClient::new(&cfg.tapis, &cfg.retry).unwrap(),
        WebodmClient::new(&cfg.webodm, &cfg.retry).unwrap(),
    )
}

fn flight<'a>(flights: &'a [ExpectedFlight], name: &str) -> &'a ExpectedFlight {
    flights.iter().find(|f| f.flight == name).unwrap()
}

#[tokio::test]
async fn systems_listing_pages_past_100_and_includes_shared_systems() {
    let sim = Sim::start(&spec(105, None), local()).await.unwrap();
    let cfg = fast_config(&sim);
    let (tapis, webodm) = clients(&cfg);
    tapis.login().await.unwrap();
    webodm.login().await.unwrap();
    let systems = tapis.list_systems(&cfg.tapis.system_pattern).await.unwrap();
    let ids: Vec<&str> = systems.iter().map(|s| s.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no system twice");
    assert!(ids.len() > 105, "{}", ids.len());
    for f in sim.dataset().expected_flights() {
        assert!(
            unique.contains(f.system_id.as_str()),
            "{} missing",
            f.system_id
        );
    }
    assert!(
        unique.contains("ptdatax.project.shared-lab"),
        "shared-only system"
    );
    for absent in [
        "ptdatax.project.hidden",
        "ptdatax.other.x",
        "something.ptdatax.project.y",
        "PTDATAX.PROJECT.UPPER",
    ] {
        assert!(!unique.contains(absent), "{absent} listed");
    }
    let disabled = systems.iter().find(|s| s.id == "ptdatax.project.disabled");
    assert!(disabled.is_none_or(|s| !s.enabled));
    let shared = systems
        .iter()
        .find(|s| s.id == "ptdatax.project.shared-lab")
        .unwrap();
    assert_eq!(shared.owner.as_deref(), Some("alice"));
    assert!(shared.enabled && shared.root_dir.is_some() && shared.system_type.is_some());
    assert_eq!(sim.stats().leaked_credentials, 0);
}

#[tokio::test]
async fn file_listing_pages_past_1000_and_downloads_are_byte_exact() {
    let sim = Sim::start(&spec(1, Some(1005)), local()).await.unwrap();
    let cfg = fast_config(&sim);
    let (tapis, _) = clients(&cfg);
    let flights = sim.dataset().expected_flights();
    let big = flight(&flights, "BigFlight");
    let sys = big.system_id.as_str();
    let files = tapis.list_dir(sys, "BigFlight/code/images").await.unwrap();
    assert_eq!(files.len(), 1005);
    let names: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names.len(), 1005, "no entry twice");
    assert!(files.iter().all(|f| f.kind == FileKind::File));
    assert_eq!(
        files[0].path,
        format!("BigFlight/code/images/{}", files[0].name)
    );

    let root = tapis.list_dir(sys, "").await.unwrap();
    assert!(root
        .iter()
        .any(|e| e.name == "Vuelo Año 2" && e.kind == FileKind::Dir));
    let missing = tapis.list_dir(sys, "No Such Flight").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");

    // Non-ASCII and a space in the path; every image byte-exact against the dataset.
    let vuelo = flight(&flights, "Vuelo Año 2");
    let listed = tapis
        .list_dir(sys, "Vuelo Año 2/code/images")
        .await
        .unwrap();
    for img in &vuelo.images {
        let entry = listed.iter().find(|e| e.name == img.name).unwrap();
        assert_eq!(entry.size, img.size);
        let stream = tapis.download(sys, &entry.path).await.unwrap();
        let mut stream = verify_length(stream, entry.size, entry.path.clone());
        let mut hash = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hash.update(chunk.unwrap());
        }
        assert_eq!(hex::encode(hash.finalize()), img.sha256, "{}", img.name);
    }
    // A size that does not match is caught.
    let first = &listed[0];
    let stream = tapis.download(sys, &first.path).await.unwrap();
    let mut stream = verify_length(stream, first.size + 1, first.path.clone());
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(last.unwrap().unwrap_err().is_retryable());
    assert_eq!(sim.stats().leaked_credentials, 0);
}

#[tokio::test]
async fn project_task_upload_commit_flow() {
    let sim = Sim::start(&spec(1, None), local()).await.unwrap();
    let cfg = fast_config(&sim);
    let (tapis, webodm) = clients(&cfg);
    let flights = sim.dataset().expected_flights();
    let f = flight(&flights, "Vuelo Año 2");
    let key = key_tag(&f.system_id, &f.flight);
    let name = format!("{} ({})", f.flight, f.system_id);

    assert!(webodm.find_projects(&name).await.unwrap().is_empty());
    let project = webodm
        .create_project(&NewProject {
            name: name.clone(),
            description: format!("Auto-created from Tapis system {}", f.system_id),
            tags: vec!["tapis".into(), "flight".into(), key.clone()],
        })
        .await
        .unwrap();
    assert_eq!(project.name, name);
    assert!(project.tags.contains(&key), "{:?}", project.tags);
    let found = webodm.find_projects(&name).await.unwrap();
    assert_eq!(found, vec![project.clone()]);

    let task = webodm
        .create_task(
            project.id,
            &NewTask {
                name: format!("Flight {}", f.flight),
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
                tags: vec![key.clone()],
            },
        )
        .await
        .unwrap();
    assert!(task.partial);
    assert_eq!(task.project, project.id);
    assert!(task.tags.contains(&key));

    let listed = tapis
        .list_dir(&f.system_id, &format!("{}/code/images", f.flight))
        .await
        .unwrap();
    for img in &f.images {
        assert_eq!(
            webodm
                .image_size(project.id, &task.id, &img.name)
                .await
                .unwrap(),
            None
        );
        let entry = listed.iter().find(|e| e.name == img.name).unwrap();
        let body = tapis.download(&f.system_id, &entry.path).await.unwrap();
        let body = verify_length(body, entry.size, entry.path.clone());
        let stored = webodm
            .upload_image(project.id, &task.id, &img.name, body, entry.size)
            .await
            .unwrap();
        assert_eq!(stored, img.size);
        assert_eq!(
            webodm
                .image_size(project.id, &task.id, &img.name)
                .await
                .unwrap(),
            Some(img.size)
        );
    }
    // Re-uploading a file overwrites it.
    let img = &f.images[0];
    let entry = listed.iter().find(|e| e.name == img.name).unwrap();
    let body = tapis.download(&f.system_id, &entry.path).await.unwrap();
    let body = verify_length(body, entry.size, entry.path.clone());
    webodm
        .upload_image(project.id, &task.id, &img.name, body, entry.size)
        .await
        .unwrap();

    let fetched = webodm.get_task(project.id, &task.id).await.unwrap();
    assert!(fetched.partial);
    let committed = webodm.commit_task(project.id, &task.id).await.unwrap();
    assert!(!committed.partial);
    let tasks = webodm.list_tasks(project.id).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert!(!tasks[0].partial);
    let missing = webodm
        .get_task(project.id, "00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");

    let held = sim.webodm_projects();
    let sim_task = &held[0].tasks[0];
    assert_eq!(sim_task.images.len(), f.images.len());
    for img in &f.images {
        assert_eq!(
            sim_task.images[&img.name],
            (img.size, img.sha256.clone()),
            "{}",
            img.name
        );
    }
    assert_eq!(sim_task.options[1]["value"], "8000");
    let stats = sim.stats();
    assert_eq!(stats.leaked_credentials, 0);
    assert_eq!(stats.tapis_requests, tapis.requests());
    assert_eq!(stats.webodm_requests, webodm.requests());
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_without_errors() {
    let sim = Sim::start(&spec(1, None), local()).await.unwrap();
    sim.set_token_ttl(Duration::from_secs(2));
    sim.set_webodm_token_ttl(Duration::from_secs(2));
    let cfg = fast_config(&sim);
    let (tapis, webodm) = clients(&cfg);
    let sys = sim.dataset().expected_flights()[0].system_id.clone();
    for _ in 0..3 {
        tapis.list_dir(&sys, "").await.unwrap();
        webodm.find_projects("x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let stats = sim.stats();
    assert_eq!(stats.leaked_credentials, 0);
    let refused: u64 = stats
        .requests
        .values()
        .flat_map(|by_status| by_status.iter())
        .filter(|(status, _)| matches!(status.as_str(), "401" | "403"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(refused, 0, "renewed ahead of expiry: {:?}", stats.requests);
    assert!(tapis.requests() >= 5, "logged in again");
}

#[tokio::test]
async fn bad_credentials_are_reported_as_auth_errors() {
    let sim = Sim::start(&spec(1, None), local()).await.unwrap();
    let mut cfg = fast_config(&sim);
    cfg.webodm.resolved_password = tapis_webodm_sync::config::Secret::new("wrong-pw-123");
    if let tapis_webodm_sync::config::TapisAuth::Password { password, .. } = &mut cfg.tapis.auth {
        *password = tapis_webodm_sync::config::Secret::new("wrong-pw-456");
    }
    let (tapis, webodm) = clients(&cfg);
    let e = tapis.login().await.unwrap_err();
    assert!(
        matches!(e, tapis_webodm_sync::clients::http::ApiError::Auth { .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong-pw"));
    let e = webodm.login().await.unwrap_err();
    assert!(
        matches!(e, tapis_webodm_sync::clients::http::ApiError::Auth { .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong-pw"));
}

#[tokio::test]
async fn odd_file_names_upload_and_are_found_by_name() {
    let sim = Sim::start(&spec(1, None), local()).await.unwrap();
    let cfg = fast_config(&sim);
    let (_, webodm) = clients(&cfg);
    let project = webodm
        .create_project(&NewProject {
            name: "Odd names".into(),
            description: String::new(),
            tags: vec![],
        })
        .await
        .unwrap();
    let task = webodm
        .create_task(
            project.id,
            &NewTask {
                name: "t".into(),
                options: vec![],
                tags: vec![],
            },
        )
        .await
        .unwrap();
    for name in [
        "IMG 0001 (copy).jpg",
        "año;'50%#?.JPG",
        "..jpg",
        "q\"uote.jpg",
    ] {
        let data = bytes::Bytes::from(vec![7u8; 1234]);
        let body: tapis_webodm_sync::clients::http::ByteStream =
            Box::pin(futures_util::stream::iter(vec![Ok(data)]));
        let r = webodm
            .upload_image(project.id, &task.id, name, body, 1234)
            .await;
        assert_eq!(r.unwrap(), 1234, "{name}");
        assert_eq!(
            webodm.image_size(project.id, &task.id, name).await.unwrap(),
            Some(1234),
            "{name}"
        );
    }
    // WebODM keeps only the part after the last `\`: the client says so.
    let body: tapis_webodm_sync::clients::http::ByteStream = Box::pin(futures_util::stream::iter(
        vec![Ok(bytes::Bytes::from_static(b"abc"))],
    ));
    let e = webodm
        .upload_image(project.id, &task.id, r"dir\b.jpg", body, 3)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("b.jpg"), "{e}");
    assert_eq!(sim.stats().leaked_credentials, 0);
}
