//! Resilience over real HTTP against the simulator with faults: chaos convergence, failure
//! isolation, rate limits, Retry-After, token lifecycles, and crash safety under SIGKILL.

mod service_support;
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    assert_no_errors, assert_one_commit_per_task, assert_synced_exactly, converged, Rig,
};
use tapis_webodm_sync::engine::state::Store;
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

fn spec(systems: usize, flights: usize, images: usize) -> DatasetSpec {
    DatasetSpec {
        seed: 21,
        systems,
        flights_per_system: flights,
        images_per_flight: images,
        image_size: 4_000,
        big_flight_images: None,
        decoys: true,
        companions: false,
    }
}

/// Fast retries so a test converges in seconds.
fn quick_retries(rig: &mut Rig, max_elapsed: Duration) {
    rig.config.retry.initial = Duration::from_millis(20);
    rig.config.retry.max = Duration::from_millis(400);
    rig.config.retry.max_elapsed = max_elapsed;
    rig.reconnect();
}

/// Runs passes until the simulator shows every flight synced (at most `max` passes); returns
/// how many it took.
async fn converge(rig: &Rig, max: usize) -> usize {
    for n in 1..=max {
        rig.pass().await;
        if converged(&rig.sim) {
            return n;
        }
        // Let failed flights' per-flight delays run out.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "not converged after {max} passes: {:?}",
        rig.sim.report().webodm
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_converges_without_duplicates_or_corruption() {
    let started = Instant::now();
    let faults = Faults {
        error_rate: 0.2,
        error_after_rate: 0.05,
        rate_429: 0.05,
        retry_after_secs: 1,
        reset_rate: 0.03,
        truncate_rate: 0.05,
        token_ttl: Some(Duration::from_secs(30)),
        ..Faults::default()
    };
    // 4 systems × 5 flights + the decoy set's special flights: more than 20 flights.
    let mut rig = Rig::with_faults(&spec(4, 5, 8), faults).await;
    assert!(rig.sim.dataset().expected().flights >= 20);
    quick_retries(&mut rig, Duration::from_secs(5));
    let passes = converge(&rig, 40).await;
    let stats = rig.sim.stats();
    for kind in ["error", "error_after", "429", "reset", "truncate"] {
        assert!(
            stats.faults_injected.get(kind).copied().unwrap_or(0) > 0,
            "fault {kind} never happened: {:?}",
            stats.faults_injected
        );
    }
    assert_synced_exactly(&rig.sim);
    // Commits answered 502 after the fact were looked up, never sent twice.
    assert_one_commit_per_task(&rig.sim);
    assert_eq!(
        rig.sim.stats().commits.len() as u64,
        rig.sim.dataset().expected().flights,
        "exactly one commit per task"
    );
    // Calm again: nothing left to do.
    rig.sim.set_faults(Faults::default());
    let last = rig.pass().await;
    assert_no_errors(&last);
    assert_eq!(
        (
            last.projects_created,
            last.tasks_created,
            last.images_uploaded,
            last.tasks_committed
        ),
        (0, 0, 0, 0)
    );
    assert_synced_exactly(&rig.sim);
    eprintln!(
        "chaos: converged in {passes} passes, {:.1} s, faults {:?}",
        started.elapsed().as_secs_f64(),
        stats.faults_injected
    );
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_flight_does_not_stop_the_others_and_retries_later() {
    // Half of the upload requests fail and nothing is retried (a budget spent by the first
    // try): a flight fails when its batch and then one of its images sent alone fail (about
    // one in two), so of 20 flights some fail and others finish (both but once in a million).
    let upload = "POST /api/projects/{project}/tasks/{task}/upload/".to_string();
    let faults = Faults {
        route_rates: BTreeMap::from([(upload, 0.5)]),
        ..Faults::default()
    };
    let mut rig = Rig::with_faults(&spec(4, 5, 8), faults).await;
    quick_retries(&mut rig, Duration::from_millis(1));
    let first = rig.pass().await;
    let flights = rig.sim.dataset().expected().flights as usize;
    assert!(!first.errors.is_empty(), "some flights fail");
    assert!(first.tasks_committed > 0, "the others finish: {first:?}");
    assert_eq!(first.tasks_committed + first.errors.len(), flights);
    {
        let store = Store::open(&rig.config.sync.state_dir).unwrap();
        let failed: Vec<_> = store
            .flights()
            .unwrap()
            .into_iter()
            .filter(|r| r.last_error.is_some())
            .collect();
        assert_eq!(failed.len(), first.errors.len());
        for r in &failed {
            assert!(
                r.next_attempt_ms.is_some(),
                "{} waits before retrying",
                r.key
            );
            assert!(
                r.last_error.as_deref().unwrap().contains("upload"),
                "{:?}",
                r.last_error
            );
        }
    }
    rig.sim.set_faults(Faults::default());
    converge(&rig, 5).await;
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_stays_within_rate_plus_burst() {
    let mut rig = Rig::new(&spec(3, 4, 10)).await;
    rig.config.tapis.requests_per_second = 20;
    rig.config.webodm.requests_per_second = 20;
    rig.reconnect();
    assert_no_errors(&rig.pass().await);
    let peak = rig.sim.stats().peak_rps;
    // Burst is max(1, rps / 5) = 4. Transfers (downloads, uploads) are bounded by their slots,
    // not by the rate limit: the peaks of the other requests are what it governs.
    assert!(
        peak.tapis_metadata <= 24,
        "tapis peak {} > 20 + 4",
        peak.tapis_metadata
    );
    assert!(
        peak.webodm_metadata <= 24,
        "webodm peak {} > 20 + 4",
        peak.webodm_metadata
    );
    assert!(
        peak.webodm_metadata >= 10,
        "the test made enough requests to matter"
    );
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let rig = Rig::with_faults(
        &spec(1, 1, 1),
        Faults {
            rate_429: 1.0,
            retry_after_secs: 2,
            ..Faults::default()
        },
    )
    .await;
    let started = Instant::now();
    let calm = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.sim.set_faults(Faults::default());
    };
    let (listed, ()) = tokio::join!(rig.clients.tapis.list_systems("ptdatax.project.*"), calm);
    listed.expect("succeeds once the 429s stop");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retried after {:?}, before Retry-After: 2",
        started.elapsed()
    );
    let systems = rig.sim.stats().requests["GET /v3/systems"].clone();
    assert_eq!(
        systems.values().sum::<u64>(),
        2,
        "one 429, then one retry after 2 s: {systems:?}"
    );
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_revoked_and_unrefreshable_tokens_do_not_fail_a_pass() {
    let faults = Faults {
        token_ttl: Some(Duration::from_secs(1)),
        refresh_fails: true,
        revoke_rate: 0.03,
        latency_ms: 15,
        ..Faults::default()
    };
    let mut rig = Rig::with_faults(&spec(2, 3, 8), faults).await;
    rig.config.webodm.max_concurrent_uploads = 2;
    rig.reconnect();
    let started = Instant::now();
    let s = rig.pass().await;
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the pass outlives several token lifetimes ({:?})",
        started.elapsed()
    );
    assert_no_errors(&s);
    assert!(converged(&rig.sim), "{:?}", rig.sim.report().webodm);
    let stats = rig.sim.stats();
    assert!(stats.faults_injected.get("revoked").copied().unwrap_or(0) > 0);
    let tokens: u64 = stats.requests["POST /v3/oauth2/tokens"].values().sum();
    assert!(tokens >= 3, "tokens were renewed: {tokens}");
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_project_is_not_recreated() {
    let rig = Rig::new(&spec(1, 3, 2)).await;
    assert_no_errors(&rig.pass().await);
    let victim = rig.sim.webodm_projects()[0].id;
    assert!(rig.sim.delete_project(victim));
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!((s.projects_created, s.tasks_created), (0, 0));
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    let all = store.flights().unwrap();
    let rec = all
        .iter()
        .find(|r| r.project_id == Some(victim))
        .unwrap_or_else(|| panic!("no record for project {victim}: {all:#?}"))
        .clone();
    assert_eq!(rec.shown_phase(), "deleted_in_webodm");
    assert!(rec.last_error.unwrap().contains("forget"));
    rig.sim.shutdown().await;
}

/// Where a kill lands: after the n-th request of a route (counted by the simulator).
const PROJECT: &str = "POST /api/projects/";
const TASK: &str = "POST /api/projects/{project}/tasks/";
const UPLOAD: &str = "POST /api/projects/{project}/tasks/{task}/upload/";
const COMMIT: &str = "POST /api/projects/{project}/tasks/{task}/commit/";

fn route_count(sim: &Sim, route: &str) -> u64 {
    sim.stats()
        .requests
        .get(route)
        .map(|by_status| by_status.values().sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_many_points_never_duplicates_or_corrupts() {
    let started = Instant::now();
    // Flights one at a time (one upload at a time) and slow requests, so the n-th request of
    // each kind is a well-defined moment in the sync.
    let uniform = DatasetSpec {
        decoys: false,
        companions: false,
        ..spec(2, 3, 5)
    };
    let sim = Sim::start_with(
        &uniform,
        "127.0.0.1:0".parse().unwrap(),
        Faults {
            latency_ms: 15,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let flights = sim.dataset().expected().flights;
    let images = sim.dataset().expected().images;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = service_support::write_config(
        &sim,
        dir.path(),
        &[
            ("webodm", "max_concurrent_uploads = 1"),
            // Batches of two: 5 images are 3 upload requests (kills land inside batches).
            ("webodm", "upload_batch_files = 2"),
            ("webodm", "requests_per_second = 1000"),
            ("tapis", "requests_per_second = 1000"),
            // One listing at a time: flights come in (and are synced) in key order, the
            // order of the kill targets below.
            ("tapis", "max_concurrent_requests = 1"),
        ],
        "[retry]\ninitial = \"20ms\"\nmax = \"200ms\"\nmax_elapsed = \"5s\"\n",
    );
    // Kill targets in the order the sync reaches them, 5 per flight: after its project is
    // created, its task, its first upload, two uploads later, and its commit. Creates and
    // commits happen once per flight, so the f-th of each is flight f's; uploads are counted
    // from where the previous kill left off (an image killed before it was recorded is
    // uploaded again), so every target lies ahead.
    assert_eq!(images % flights, 0);
    assert!(
        images / flights >= 5,
        "room for two upload kills per flight in batches of two"
    );
    let mut targets = Vec::new();
    for f in 1..=flights {
        targets.push((PROJECT, f, false));
        targets.push((TASK, f, false));
        targets.push((UPLOAD, 1, true));
        targets.push((UPLOAD, 2, true));
        targets.push((COMMIT, f, false));
    }
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    for (route, n, from_here) in targets {
        let n = if from_here {
            route_count(&sim, route) + n
        } else {
            n
        };
        assert!(
            route_count(&sim, route) < n,
            "{route} #{n} already happened: {kills:?}"
        );
        let mut child = Command::new(service_support::BIN)
            .args(["--config", config.to_str().unwrap(), "once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if route_count(&sim, route) >= n {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                *kills.entry(route).or_default() += 1;
                break;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let total: usize = kills.values().sum();
    eprintln!(
        "sigkill: {total} kill points {kills:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let per_flight = flights as usize;
    assert_eq!(
        kills,
        BTreeMap::from([
            (PROJECT, per_flight),
            (TASK, per_flight),
            (UPLOAD, 2 * per_flight),
            (COMMIT, per_flight),
        ]),
        "every one of the 30 targets was reached and killed"
    );
    assert_eq!(total, 30);
    // Restarted without kills, it converges with nothing duplicated.
    for _ in 0..5 {
        let o = Command::new(service_support::BIN)
            .args(["--config", config.to_str().unwrap(), "once"])
            .output()
            .unwrap();
        if converged(&sim) {
            break;
        }
        assert!(
            o.status.code().is_some(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_synced_exactly(&sim);
    let projects_posted = route_count(&sim, PROJECT);
    assert_eq!(
        projects_posted, flights,
        "no project was ever created twice"
    );
    assert_one_commit_per_task(&sim);
    assert_eq!(
        route_count(&sim, COMMIT),
        flights,
        "exactly one commit per task, none sent twice"
    );
    sim.shutdown().await;
}
