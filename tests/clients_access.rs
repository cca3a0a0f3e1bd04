//! The client methods for access (issue 11) and processing and results (issue 12), over real
//! HTTP against the simulator: Tapis share info, stat, mkdir, upload; WebODM users, groups,
//! project permissions and edit, task restart and processing fields, asset downloads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use sha2::{Digest, Sha256};
use tapis_webodm_sync::clients::http::ByteStream;
use tapis_webodm_sync::clients::tapis::{FileKind, TapisClient};
use tapis_webodm_sync::clients::webodm::{
    Grantee, NewProject, NewTask, PermissionEntry, ProjectEdit, Task, WebodmClient,
};
use tapis_webodm_sync::clients::ApiError;
use tapis_webodm_sync::config::{OptionValue, TaskOption};
use tapis_webodm_sync::sim::{key_tag, DatasetSpec, ExpectedFlight, Faults, Sim, SimGrantee};

mod sim_support;
use sim_support::{fast_config, local};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 17,
        systems: 2,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 2_000,
        big_flight_images: None,
        decoys: true,
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

/// Both clients, configured fast for tests.
fn clients(sim: &Sim) -> (TapisClient, WebodmClient) {
    let cfg = fast_config(sim);
    (
        TapisClient::new(&cfg.tapis, &cfg.retry).unwrap(),
        WebodmClient::new(&cfg.webodm, &cfg.retry).unwrap(),
    )
}

fn body(parts: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(stream::iter(
        parts.into_iter().map(|p| Ok::<_, ApiError>(Bytes::from(p))),
    ))
}

async fn collect(mut s: ByteStream) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A project for `flight` (tagged as its own) with one committed task holding one image.
async fn committed(
    webodm: &WebodmClient,
    f: &ExpectedFlight,
    options: Vec<TaskOption>,
) -> (i64, Task) {
    let key = key_tag(&f.system_id, &f.flight);
    let project = webodm
        .create_project(&NewProject {
            name: format!("{} ({})", f.flight, f.system_id),
            description: "Auto-created".into(),
            tags: vec!["tapis".into(), key.clone()],
        })
        .await
        .unwrap();
    let task = webodm
        .create_task(
            project.id,
            &NewTask {
                name: format!("Flight {}", f.flight),
                options,
                tags: vec![key],
            },
        )
        .await
        .unwrap();
    webodm
        .upload_image(
            project.id,
            &task.id,
            "IMG_0001.jpg",
            body(vec![vec![9; 300]]),
            300,
        )
        .await
        .unwrap();
    let task = webodm.commit_task(project.id, &task.id).await.unwrap();
    (project.id, task)
}

async fn until_status(webodm: &WebodmClient, pid: i64, tid: &str, want: i64) -> Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = webodm.get_task(pid, tid).await.unwrap();
        if t.status == Some(want) && t.pending_action.is_none() {
            return t;
        }
        assert!(Instant::now() < deadline, "status {want} never came: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tapis_share_info_stat_mkdir_and_upload() {
    let sim = sim(1_500).await;
    let (tapis, _) = clients(&sim);
    let flights = sim.dataset().expected_flights();
    for f in &flights {
        let info = tapis.share_info(&f.system_id).await.unwrap();
        let access = sim.system_access(&f.system_id).unwrap();
        assert_eq!(
            (info.public, &info.users),
            (access.public, &access.shared_with)
        );
    }
    let e = tapis.share_info("ptdatax.project.gone").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    let f = &flights[0];
    let sys = f.system_id.as_str();
    let img = format!("{}/code/images/{}", f.flight, f.images[0].name);
    let entry = tapis.stat(sys, &img).await.unwrap().unwrap();
    assert_eq!(
        (entry.kind, entry.size, entry.path.as_str()),
        (FileKind::File, f.images[0].size, img.as_str())
    );
    let dir = tapis
        .stat(sys, &format!("/{}/code/", f.flight))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((dir.kind, dir.name.as_str()), (FileKind::Dir, "code"));
    let root = tapis.stat(sys, "").await.unwrap().unwrap();
    assert_eq!(root.kind, FileKind::Dir);
    let results = format!("{}/code/odm_results", f.flight);
    assert_eq!(tapis.stat(sys, &results).await.unwrap(), None);

    tapis.mkdir(sys, &results).await.unwrap();
    tapis.mkdir(sys, &results).await.unwrap();
    let made = tapis.stat(sys, &results).await.unwrap().unwrap();
    assert_eq!(made.kind, FileKind::Dir, "an empty folder");

    // Streamed in parts, with a Content-Length; then overwritten.
    let target = format!("{results}/orthophoto.tif");
    let parts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100_000]).collect();
    let all: Vec<u8> = parts.concat();
    tapis
        .upload_file(sys, &target, body(parts), all.len() as u64)
        .await
        .unwrap();
    let stored = tapis.stat(sys, &target).await.unwrap().unwrap();
    assert_eq!((stored.kind, stored.size), (FileKind::File, 500_000));
    assert_eq!(sim.tapis_file(sys, &target).unwrap(), all);
    tapis
        .upload_file(sys, &target, body(vec![b"new".to_vec()]), 3)
        .await
        .unwrap();
    assert_eq!(sim.tapis_file(sys, &target).unwrap(), b"new");

    // A source that breaks off fails the upload; Tapis keeps what arrived.
    let broken: ByteStream = Box::pin(stream::iter(vec![Ok(Bytes::from(vec![1u8; 1000]))]).chain(
        stream::once(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(ApiError::Truncated {
                what: "source".into(),
                expected: 5000,
                got: 1000,
            })
        }),
    ));
    assert!(tapis.upload_file(sys, &target, broken, 5000).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.tapis_file(sys, &target).unwrap() == b"new" {
        assert!(Instant::now() < deadline, "the partial file never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sim.tapis_file(sys, &target).unwrap().len() < 5000);

    // A folder in the way is refused.
    let e = tapis
        .upload_file(sys, &results, body(vec![b"x".to_vec()]), 1)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");

    // A revoked token: the upload (its body spent) fails retryably; the next one logs in.
    sim.revoke_tapis_tokens();
    let e = tapis
        .upload_file(sys, &target, body(vec![b"again".to_vec()]), 5)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::TokenRejected { .. }) && e.is_retryable(),
        "{e}"
    );
    tapis
        .upload_file(sys, &target, body(vec![b"again".to_vec()]), 5)
        .await
        .unwrap();
    assert_eq!(sim.tapis_file(sys, &target).unwrap(), b"again");
    assert_eq!(sim.stats().leaked_credentials, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn webodm_users_groups_permissions_and_edit() {
    let sim = sim(1_500).await;
    let (_, webodm) = clients(&sim);
    let users = webodm.find_users("bob").await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["bob", "robert"], "prefix on username or email");
    assert_eq!(users[1].email, "bob.r@example.org");
    assert!(webodm.find_users("carol").await.unwrap().is_empty());
    let groups = webodm.find_groups("lab-x").await.unwrap();
    assert_eq!(
        groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["lab-x", "lab-xray"]
    );

    let f = &sim.dataset().expected_flights()[0];
    let (pid, _) = committed(&webodm, f, vec![]).await;
    let project = webodm.get_project(pid).await.unwrap();
    assert!(webodm.get_project(999).await.unwrap_err().is_not_found());
    let perms = webodm.project_permissions(pid).await.unwrap();
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].grantee, Grantee::User("tapis-sync".into()));
    assert!(perms[0].owner);

    // A person's grant, then the daemon's round trip: GET, add, send back with the project's
    // own name, description and tags.
    assert!(sim.grant(pid, SimGrantee::User("bob".into()), &["view", "change"]));
    let mut list = webodm.project_permissions(pid).await.unwrap();
    list.push(PermissionEntry {
        grantee: Grantee::User("alice".into()),
        owner: false,
        permissions: vec!["view".into()],
    });
    list.push(PermissionEntry {
        grantee: Grantee::Group("lab-x".into()),
        owner: false,
        permissions: vec!["view".into()],
    });
    let edit = ProjectEdit {
        name: project.name.clone(),
        description: project.description.clone(),
        tags: project.tags.clone(),
        permissions: Some(list),
    };
    webodm.edit_project(pid, &edit).await.unwrap();
    let after = webodm.get_project(pid).await.unwrap();
    assert_eq!(
        (&after.name, &after.description, &after.tags),
        (&project.name, &project.description, &project.tags)
    );
    let held = &sim.report().projects[0];
    assert_eq!(
        held.users["bob"],
        ["change", "view"],
        "a person's grant is kept"
    );
    assert_eq!(held.users["alice"], ["view"]);
    assert_eq!(held.groups["lab-x"], ["view"]);

    // Unknown user or group: recognisable, nothing applied.
    let mut bad = edit.clone();
    bad.name = "renamed".into();
    bad.permissions.as_mut().unwrap().push(PermissionEntry {
        grantee: Grantee::User("carol".into()),
        owner: false,
        permissions: vec!["view".into()],
    });
    let e = webodm.edit_project(pid, &bad).await.unwrap_err();
    assert!(e.is_invalid_user() && !e.is_invalid_group(), "{e}");
    let mut bad = edit.clone();
    bad.permissions.as_mut().unwrap().push(PermissionEntry {
        grantee: Grantee::Group("nobody".into()),
        owner: false,
        permissions: vec!["view".into()],
    });
    let e = webodm.edit_project(pid, &bad).await.unwrap_err();
    assert!(e.is_invalid_group(), "{e}");
    assert_eq!(webodm.get_project(pid).await.unwrap().name, project.name);
    assert_eq!(sim.stats().project_edits[&pid], 3);

    // A site without the users API: 404.
    sim.set_users_api(false);
    assert!(webodm.find_users("bob").await.unwrap_err().is_not_found());
    assert!(webodm.find_groups("lab").await.unwrap_err().is_not_found());
    sim.shutdown().await;
}

#[tokio::test]
async fn processing_fields_restart_and_asset_downloads_into_tapis() {
    let sim = sim(100).await;
    let (tapis, webodm) = clients(&sim);
    let f = sim.dataset().expected_flights()[0].clone();
    sim.fail_processing(&f.system_id, &f.flight, None);
    let dtm = TaskOption {
        name: "dtm".into(),
        value: OptionValue::Bool(true),
    };
    let (pid, task) = committed(&webodm, &f, vec![dtm]).await;
    assert!(!task.partial);
    assert_eq!((task.status, task.processing_time), (None, -1));
    let failed = until_status(&webodm, pid, &task.id, 30).await;
    assert_eq!(failed.last_error, None, "FAILED without a message");
    assert!(failed.available_assets.is_empty());

    sim.heal_processing(&f.system_id, &f.flight);
    webodm.restart_task(pid, &task.id).await.unwrap();
    // Until the worker takes the restart, the old status shows, with last_error cleared.
    let t = webodm.get_task(pid, &task.id).await.unwrap();
    assert_eq!(
        (t.status, t.pending_action, t.last_error),
        (Some(30), Some(3), None)
    );
    let done = until_status(&webodm, pid, &task.id, 40).await;
    assert_eq!((done.processing_time, done.pending_action), (100, None));
    assert!(done.available_assets.iter().any(|a| a == "dtm.tif"));
    let e = webodm
        .restart_task(pid, "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(e.is_not_found());

    // An asset streamed straight into Tapis, then checked by the report.
    let (stream, len) = webodm
        .download_asset(pid, &task.id, "orthophoto.tif")
        .await
        .unwrap();
    let dir = format!("{}/code/odm_results", f.flight);
    tapis.mkdir(&f.system_id, &dir).await.unwrap();
    let target = format!("{dir}/orthophoto.tif");
    tapis
        .upload_file(&f.system_id, &target, stream, len)
        .await
        .unwrap();
    assert_eq!(
        tapis
            .stat(&f.system_id, &target)
            .await
            .unwrap()
            .unwrap()
            .size,
        len
    );
    let report = sim.report();
    let flight = report
        .flights
        .iter()
        .find(|r| r.flight == f.flight && r.system_id == f.system_id)
        .unwrap();
    let result = &flight.results[0];
    assert_eq!(
        (result.path.as_str(), result.matches_asset),
        ("code/odm_results/orthophoto.tif", true)
    );

    // Same bytes every time; an empty asset; a missing one.
    let (again, len2) = webodm
        .download_asset(pid, &task.id, "orthophoto.tif")
        .await
        .unwrap();
    let again = collect(again).await.unwrap();
    assert_eq!(len2, len);
    assert_eq!(hex::encode(Sha256::digest(&again)), result.sha256);
    let (empty, zero) = webodm
        .download_asset(pid, &task.id, "report.pdf")
        .await
        .unwrap();
    assert_eq!((zero, collect(empty).await.unwrap().len()), (0, 0));
    let e = webodm
        .download_asset(pid, &task.id, "nope.laz")
        .await
        .err()
        .unwrap();
    assert!(e.is_not_found(), "{e}");

    // A body cut short of its Content-Length is an error, never a short success.
    sim.set_faults(Faults {
        process_ms: 100,
        truncate_rate: 1.0,
        ..Faults::default()
    });
    let (short, _) = webodm
        .download_asset(pid, &task.id, "dsm.tif")
        .await
        .unwrap();
    assert!(collect(short).await.is_err());
    assert_eq!(sim.stats().leaked_credentials, 0);
    sim.shutdown().await;
}
