//! Transfers over real HTTP against the simulator: downloads and uploads are bounded by their
//! own slots, never by the request-rate limiter; small images go several per upload request,
//! each recorded only when WebODM's answer confirms it; `bwlimit` caps the bytes per second.

mod support;

use std::time::{Duration, Instant};

use support::{assert_no_errors, assert_synced_exactly, Rig};
use tapis_webodm_sync::config::ByteSize;
use tapis_webodm_sync::engine::state::Store;
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

const DOWNLOAD: &str = "GET /v3/files/content/{system}/{path}";
const UPLOAD: &str = "POST /api/projects/{project}/tasks/{task}/upload/";

/// The burst a `bwlimit` allows after a quiet spell (`clients::bandwidth::TOLERANCE`).
const BW_TOLERANCE: Duration = Duration::from_millis(250);

fn spec(flights: usize, images: usize, image_size: u64) -> DatasetSpec {
    DatasetSpec {
        seed: 33,
        systems: 1,
        flights_per_system: flights,
        images_per_flight: images,
        image_size,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// Requests the simulator received on `route`, by status.
fn route(sim: &Sim, route: &str) -> std::collections::BTreeMap<String, u64> {
    sim.stats().requests.get(route).cloned().unwrap_or_default()
}

fn sent(sim: &Sim, r: &str) -> u64 {
    route(sim, r).values().sum()
}

/// Fast retries so a test converges in seconds.
fn quick_retries(rig: &mut Rig) {
    rig.config.retry.initial = Duration::from_millis(20);
    rig.config.retry.max = Duration::from_millis(400);
    rig.config.retry.max_elapsed = Duration::from_secs(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_take_no_token_from_the_rate_limiter() {
    let mut rig = Rig::new(&spec(1, 40, 4_000)).await;
    // One metadata request per second: 40 downloads under this limit would take 40 s.
    rig.config.tapis.requests_per_second = 1;
    rig.reconnect();
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.images_uploaded, 40);
    assert_synced_exactly(&rig.sim);

    let stats = rig.sim.stats();
    let tapis = rig.clients.tapis.counts();
    let downloads = sent(&rig.sim, DOWNLOAD);
    assert_eq!(downloads, 40, "each image downloaded once");
    assert_eq!(tapis.transfers, downloads, "{tapis:?}");
    assert_eq!(
        tapis.rate_limited,
        stats.tapis_requests - downloads,
        "every other Tapis request went through the limiter: {tapis:?}"
    );
    // What took tokens: the login and the listings, nothing else.
    for (r, by_status) in &stats.requests {
        if r.contains("/v3/") && r != DOWNLOAD {
            assert!(
                r == "POST /v3/oauth2/tokens"
                    || r.starts_with("GET /v3/systems")
                    || r.starts_with("GET /v3/files/ops/"),
                "{r}: {by_status:?}"
            );
        }
    }
    assert!(tapis.rate_limited <= 6, "{tapis:?}");

    // WebODM: 40 images of about 4 KB are one upload request, a transfer too.
    let webodm = rig.clients.webodm.counts();
    let uploads = sent(&rig.sim, UPLOAD);
    assert_eq!(uploads, 1, "one batch: {:?}", route(&rig.sim, UPLOAD));
    assert_eq!(stats.files_uploaded, 40);
    assert_eq!(webodm.transfers, uploads, "{webodm:?}");
    assert_eq!(webodm.rate_limited, stats.webodm_requests - uploads);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_missing_from_a_batch_answer_is_retried_alone() {
    let rig = Rig::new(&spec(1, 6, 3_000)).await;
    let flight = &rig.sim.dataset().expected_flights()[0];
    let dropped = flight.images[2].name.clone();
    rig.sim.drop_from_next_upload(&dropped);
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.images_uploaded, 6);
    assert_eq!(
        route(&rig.sim, UPLOAD),
        [("200".to_string(), 2)].into(),
        "the batch of six, then the dropped image alone"
    );
    // Five stored by the batch (the dropped one was not), then the sixth by its own request:
    // had the batch's answer been trusted for it, the task would have been committed without it.
    assert_eq!(rig.sim.stats().files_uploaded, 6);
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_cut_short_download_records_nothing_falsely_and_converges() {
    let faults = Faults {
        truncate_rate: 0.2,
        ..Faults::default()
    };
    let mut rig = Rig::with_faults(&spec(3, 20, 3_000), faults).await;
    quick_retries(&mut rig);
    // Nothing is committed yet, so the store keeps what it recorded per image.
    rig.config.sync.settle = Duration::from_secs(3600);
    rig.reconnect();
    let s = rig.pass().await;
    let stats = rig.sim.stats();
    assert!(
        stats.faults_injected.get("truncate").copied().unwrap_or(0) > 0,
        "{:?}",
        stats.faults_injected
    );
    let uploads = route(&rig.sim, UPLOAD);
    assert!(
        uploads.iter().any(|(status, _)| status != "200"),
        "some batch failed on a cut-short part: {uploads:?}"
    );
    // Every image the store recorded is in WebODM at its listed size.
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    let projects = rig.sim.webodm_projects();
    let mut recorded = 0;
    for rec in store.flights().unwrap() {
        let task = projects
            .iter()
            .find(|p| Some(p.id) == rec.project_id)
            .and_then(|p| p.tasks.iter().find(|t| Some(&t.id) == rec.task_id.as_ref()))
            .unwrap_or_else(|| panic!("{}: no task in WebODM", rec.key));
        for (name, image) in store.uploaded_images(&rec.key).unwrap() {
            recorded += 1;
            assert_eq!(
                task.images.get(&name).map(|(size, _)| *size),
                Some(image.size),
                "{} {name} recorded but not in WebODM at its size",
                rec.key
            );
        }
    }
    drop(store);
    assert_eq!(recorded, s.images_uploaded);
    // Calm again: everything converges, byte for byte.
    rig.sim.set_faults(Faults::default());
    rig.config.sync.settle = Duration::ZERO;
    for _ in 0..3 {
        if support::converged(&rig.sim) {
            break;
        }
        rig.pass().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_download_slot_and_one_request_slot_are_enough() {
    // A batch opens its parts' downloads one after the other, and listings have slots of
    // their own: two uploads sharing one download slot, beside one listing slot, never wait
    // on each other for good.
    let mut rig = Rig::new(&spec(3, 12, 3_000)).await;
    rig.config.tapis.max_concurrent_requests = 1;
    rig.config.tapis.max_concurrent_downloads = 1;
    rig.config.webodm.max_concurrent_uploads = 2;
    rig.config.webodm.upload_batch_files = 5;
    rig.reconnect();
    let s = tokio::time::timeout(Duration::from_secs(60), rig.pass())
        .await
        .expect("the pass finishes");
    assert_no_errors(&s);
    assert_eq!(
        sent(&rig.sim, UPLOAD),
        9,
        "three flights of 12 images in batches of 5, 5 and 2"
    );
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

/// Syncs a flight of about 200 kB with a 100 kB/s `bwlimit` on one service; returns the time
/// taken and the bytes that service moved.
async fn sync_capped(tapis: bool) -> (Duration, u64) {
    let mut rig = Rig::new(&spec(1, 10, 20_000)).await;
    let cap = Some(ByteSize(100_000));
    if tapis {
        rig.config.tapis.bwlimit = cap;
    } else {
        rig.config.webodm.bwlimit = cap;
    }
    rig.reconnect();
    let started = Instant::now();
    assert_no_errors(&rig.pass().await);
    let took = started.elapsed();
    assert_synced_exactly(&rig.sim);
    let stats = rig.sim.stats();
    let bytes = if tapis {
        stats.bytes_downloaded
    } else {
        stats.bytes_uploaded
    };
    rig.sim.shutdown().await;
    (took, bytes)
}

/// The least time `bytes` can take under a 100 kB/s cap.
fn least_time(bytes: u64) -> Duration {
    let least = Duration::from_secs_f64(bytes as f64 / 100_000.0).saturating_sub(BW_TOLERANCE);
    assert!(
        least >= Duration::from_millis(1500),
        "enough bytes to tell: {bytes}"
    );
    least
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tapis_bwlimit_caps_download_bytes_per_second() {
    let (took, bytes) = sync_capped(true).await;
    let least = least_time(bytes);
    assert!(
        took >= least,
        "{bytes} bytes in {took:?} (at least {least:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webodm_bwlimit_caps_upload_bytes_per_second() {
    let (took, bytes) = sync_capped(false).await;
    let least = least_time(bytes);
    assert!(
        took >= least,
        "{bytes} bytes in {took:?} (at least {least:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_webodm_refuses_for_good_is_not_resent_image_by_image() {
    let spec = spec(1, 4, 3_000);
    let mut rig = Rig::new(&spec).await;
    quick_retries(&mut rig);
    // Uploaded but not committed (the listing must stay unchanged for an hour first).
    rig.config.sync.settle = Duration::from_secs(3600);
    rig.reconnect();
    assert_no_errors(&rig.pass().await);
    // New images arrive, and meanwhile a person commits the task: WebODM now refuses uploads
    // to it (400 "Task is not in partial state"), whatever the image.
    rig.sim.replace_dataset(&DatasetSpec {
        images_per_flight: 12,
        ..spec
    });
    let p = rig.sim.webodm_projects().pop().unwrap();
    rig.clients
        .webodm
        .commit_task(p.id, &p.tasks[0].id)
        .await
        .unwrap();
    let before = sent(&rig.sim, UPLOAD);
    let s = rig.pass().await;
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(
        s.errors[0].contains("not in partial state"),
        "{:?}",
        s.errors
    );
    assert_eq!(
        sent(&rig.sim, UPLOAD) - before,
        1,
        "one batch request, not one more per image"
    );
    rig.sim.shutdown().await;
}
