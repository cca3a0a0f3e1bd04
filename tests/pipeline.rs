//! The pass pipeline over real HTTP against the simulator: a sick listing stalls only its own
//! flight or system, committed flights are listed again only when their recheck is due, and
//! shards split the systems between instances.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{assert_no_errors, small_spec, Rig};
use tapis_webodm_sync::config::Shard;
use tapis_webodm_sync::engine::discover::{self, Scope};
use tapis_webodm_sync::engine::naming;
use tapis_webodm_sync::engine::plan::next_recheck;
use tapis_webodm_sync::engine::state::{now_ms, FlightKey, FlightRecord, Store};
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

fn records(rig: &Rig) -> BTreeMap<FlightKey, FlightRecord> {
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    store
        .flights()
        .unwrap()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect()
}

/// Flights whose project holds a committed task in the simulated WebODM.
fn committed_in_webodm(sim: &Sim) -> BTreeSet<FlightKey> {
    let expected = sim.dataset().expected_flights();
    let projects = sim.webodm_projects();
    expected
        .iter()
        .map(|f| FlightKey::new(f.system_id.clone(), f.flight.clone()))
        .filter(|key| {
            let tag = naming::key_tag(key);
            projects
                .iter()
                .any(|p| p.tags.contains(&tag) && p.tasks.iter().any(|t| !t.partial))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_folder_or_system_stalls_nobody_else() {
    let spec = small_spec();
    let mut rig = Rig::new(&spec).await;
    rig.config.sync.recheck_committed = Duration::ZERO;
    // Listings give up after 6 s of retries; everything else keeps its usual budget.
    rig.config.retry.listing_elapsed = Duration::from_secs(6);
    rig.reconnect();
    assert_no_errors(&rig.pass().await);

    // New flights appear on every system; one system goes into maintenance (every listing of
    // it answers an HTML 502) and so does one flight's images folder on another system.
    let grown = DatasetSpec {
        flights_per_system: spec.flights_per_system + 1,
        ..spec.clone()
    };
    rig.sim.replace_dataset(&grown);
    let flights = rig.sim.dataset().expected_flights();
    let systems: BTreeSet<&str> = flights.iter().map(|f| f.system_id.as_str()).collect();
    let mut systems = systems.into_iter();
    let sick_system = systems.next().unwrap().to_string();
    let other_system = systems.next().unwrap().to_string();
    let sick_flight = flights
        .iter()
        .find(|f| f.system_id == other_system && f.flight.starts_with("Flight0"))
        .map(|f| FlightKey::new(f.system_id.clone(), f.flight.clone()))
        .unwrap();
    rig.sim.set_faults(Faults {
        broken_paths: vec![
            format!("/v3/files/ops/{sick_system}"),
            format!(
                "/v3/files/ops/{}/{}/",
                sick_flight.system, sick_flight.flight
            ),
        ],
        ..Faults::default()
    });
    let healthy: BTreeSet<FlightKey> = flights
        .iter()
        .map(|f| FlightKey::new(f.system_id.clone(), f.flight.clone()))
        .filter(|k| k.system != sick_system && *k != sick_flight)
        .collect();

    let done = AtomicBool::new(false);
    let started = Instant::now();
    let pass = async {
        let s = rig.pass().await;
        done.store(true, Ordering::SeqCst);
        s
    };
    let watch = async {
        // The healthy flights (old and new) are all committed while the pass still waits for
        // the sick listings.
        loop {
            if committed_in_webodm(&rig.sim).is_superset(&healthy) {
                return (done.load(Ordering::SeqCst), started.elapsed());
            }
            if done.load(Ordering::SeqCst) {
                return (true, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (summary, (pass_was_done, healthy_after)) = tokio::join!(pass, watch);
    assert!(
        !pass_was_done,
        "the healthy flights finished only when the whole pass did ({healthy_after:?})"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the sick listings were retried for their budget"
    );
    assert!(committed_in_webodm(&rig.sim).is_superset(&healthy));
    let errors = format!(
        "{}\nsick flight {sick_flight}\nstats {:?}",
        summary.errors.join("\n"),
        rig.sim.stats().requests
    );
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("{sick_system}: listing the system root failed"))),
        "{errors}"
    );
    assert!(
        summary.errors.iter().any(|e| e.starts_with(&format!(
            "{sick_flight}: listing {}/code/images failed",
            sick_flight.flight
        ))),
        "{errors}"
    );
    assert_eq!(summary.errors.len(), 2, "{errors}");

    // Left as they were: not vanished, the listing error on the record (shown by `status`).
    let recs = records(&rig);
    let untouched: Vec<&FlightRecord> = recs
        .values()
        .filter(|r| r.key.system == sick_system || r.key == sick_flight)
        .collect();
    assert!(!untouched.is_empty());
    for r in &untouched {
        assert!(r.vanished_ms.is_none(), "{} taken for vanished", r.key);
        assert!(
            r.listing_error.is_some(),
            "{} shows no listing error",
            r.key
        );
    }
    let rows =
        tapis_webodm_sync::service::status::rows(&Store::open(&rig.config.sync.state_dir).unwrap())
            .unwrap();
    assert!(rows
        .iter()
        .any(|r| r.flight_name == sick_flight.flight && r.listing_error.is_some()));

    // Healed: the next pass syncs the rest and clears the listing errors.
    rig.sim.set_faults(Faults::default());
    assert_no_errors(&rig.pass().await);
    assert!(records(&rig).values().all(|r| r.listing_error.is_none()));
    support::assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

/// Runs passes for `period` + a little; checks after each pass that exactly the committed
/// flights whose recheck came due were listed. Returns how many passes listed each flight.
async fn passes_over_one_period(rig: &Rig, period: Duration) -> BTreeMap<FlightKey, usize> {
    let mut listed: BTreeMap<FlightKey, usize> = BTreeMap::new();
    let end = Instant::now() + period + Duration::from_millis(600);
    while Instant::now() < end {
        let before = records(rig);
        let t0 = now_ms();
        let s = rig.pass().await;
        let t1 = now_ms();
        assert_no_errors(&s);
        let after = records(rig);
        let mut listed_now = 0;
        let mut due_but_left = Vec::new();
        for (key, b) in &before {
            let last = b.last_checked_ms.expect("committed flights were checked");
            let next = next_recheck(key, last, period);
            let now_listed = after[key].last_checked_ms != b.last_checked_ms;
            if next <= t0 && !now_listed {
                due_but_left.push(key.clone());
            } else if next > t1 {
                assert!(
                    !now_listed,
                    "{key} was listed before its recheck ({next} > {t1})"
                );
            }
            if now_listed {
                listed_now += 1;
                *listed.entry(key.clone()).or_default() += 1;
            }
        }
        // A due flight waits only when this pass already listed its share,
        // ⌈flights × interval / recheck⌉.
        let share = (before.len() as u128 * rig.config.sync.interval.as_millis())
            .div_ceil(period.as_millis()) as usize;
        assert!(
            due_but_left.is_empty() || listed_now >= share,
            "{due_but_left:?} were due but not listed, with only {listed_now} listed"
        );
        // The systems listing (which carries who each system is shared with), one root per
        // system, one listing per flight that came due (and a login at most): the others are
        // not listed.
        assert!(
            s.tapis_requests as usize <= 1 + s.systems_scanned + listed_now + 1,
            "{} Tapis requests for {listed_now} flights listed",
            s.tapis_requests
        );
        assert!(listed_now < before.len(), "every flight listed at once");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_flights_are_listed_again_only_when_their_recheck_is_due() {
    let spec = DatasetSpec {
        flights_per_system: 6,
        decoys: false,
        ..small_spec()
    };
    let mut rig = Rig::new(&spec).await;
    let period = Duration::from_secs(3);
    rig.config.sync.recheck_committed = period;
    assert_no_errors(&rig.pass().await);
    let flights = records(&rig).len();
    let listed = passes_over_one_period(&rig, period).await;
    // Within one period every committed flight was listed again, about once.
    assert_eq!(listed.len(), flights, "{listed:?}");
    assert!(listed.values().all(|&n| n <= 2), "{listed:?}");
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_vanished_folders_are_noticed_at_once_and_changes_within_a_period() {
    let spec = DatasetSpec {
        flights_per_system: 3,
        decoys: false,
        ..small_spec()
    };
    let mut rig = Rig::new(&spec).await;
    rig.config.sync.recheck_committed = Duration::from_secs(6 * 3600);
    assert_no_errors(&rig.pass().await);
    let idle = rig.pass().await;
    assert_no_errors(&idle);
    let systems = idle.systems_scanned as u64;
    assert!(systems >= spec.systems as u64);
    // Systems listing + one root per system (+ a login at most): no flight folder is listed.
    assert!(idle.tapis_requests <= 1 + systems + 1, "{idle:?}");

    // A new flight on systems whose flights are all committed: found on the next pass.
    rig.sim.replace_dataset(&DatasetSpec {
        flights_per_system: 4,
        ..spec.clone()
    });
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.projects_created as u64, systems, "{s:?}");
    // Besides the systems listing, the roots and a login at most: one listing per new flight
    // and one download per image.
    assert!(
        s.tapis_requests <= 1 + systems + systems + s.images_uploaded + 1,
        "only the new folders are listed: {s:?}"
    );

    // Folders gone from Tapis: noticed at once, whatever their recheck time.
    rig.sim.replace_dataset(&DatasetSpec {
        flights_per_system: 2,
        ..spec.clone()
    });
    let report = rig.pass_with(Default::default(), false).await;
    assert_no_errors(&report.summary);
    assert_eq!(report.plan.vanished.len() as u64, 2 * systems);
    let vanished = records(&rig)
        .values()
        .filter(|r| r.vanished_ms.is_some())
        .count() as u64;
    assert_eq!(vanished, 2 * systems);

    // Images added to committed flights: seen within one recheck period and handled by
    // `on_change_after_commit` (here a whole new task).
    rig.config.sync.on_change_after_commit = tapis_webodm_sync::config::OnChange::NewTask;
    let period = Duration::from_secs(3);
    rig.config.sync.recheck_committed = period;
    rig.sim.replace_dataset(&DatasetSpec {
        flights_per_system: 2,
        images_per_flight: spec.images_per_flight + 1,
        ..spec.clone()
    });
    let changed = records(&rig)
        .values()
        .filter(|r| r.vanished_ms.is_none())
        .count();
    let deadline = Instant::now() + period + Duration::from_secs(1);
    let mut updates = 0;
    while Instant::now() < deadline && updates < changed {
        let s = rig.pass().await;
        assert_no_errors(&s);
        updates += s.tasks_created;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(updates, changed, "every changed flight got its update task");
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_cover_every_system_exactly_once() {
    let spec = DatasetSpec {
        systems: 12,
        flights_per_system: 1,
        images_per_flight: 2,
        ..small_spec()
    };
    let rig = Rig::new(&spec).await;
    let all_scope = Scope::new(&rig.config.tapis, &rig.config.layout, &[]);
    let all: BTreeSet<String> = discover::systems(&rig.clients.tapis, &all_scope)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, why)| why.is_none())
        .map(|(s, _)| s.id)
        .collect();
    assert!(all.len() >= 12);
    for n in [1, 2, 3, 5] {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for k in 0..n {
            let mut tapis = rig.config.tapis.clone();
            tapis.shard = Some(Shard { index: k, count: n });
            let scope = Scope::new(&tapis, &rig.config.layout, &[]);
            for (s, why) in discover::systems(&rig.clients.tapis, &scope).await.unwrap() {
                if why.is_none() {
                    assert_eq!(Shard::of(&s.id, n), k);
                    *seen.entry(s.id).or_default() += 1;
                }
            }
        }
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            all,
            "N = {n}"
        );
        assert!(seen.values().all(|&c| c == 1), "N = {n}: {seen:?}");
    }
    rig.sim.shutdown().await;

    // Two instances, each with its own state dir, together sync every flight exactly once.
    let mut a = Rig::new(&spec).await;
    a.config.tapis.shard = Some(Shard { index: 0, count: 2 });
    a.reconnect();
    let sa = a.pass().await;
    assert_no_errors(&sa);
    let other = tempfile::tempdir().unwrap();
    let mut b_config = a.config.clone();
    b_config.tapis.shard = Some(Shard { index: 1, count: 2 });
    b_config.sync.state_dir = other.path().to_path_buf();
    let b_clients = tapis_webodm_sync::clients::Clients::new(&b_config).unwrap();
    let b_store = Store::open(&b_config.sync.state_dir).unwrap();
    let sb = tapis_webodm_sync::engine::pass::pass(
        &b_config,
        &b_clients,
        Some(&b_store),
        &Default::default(),
        std::sync::Arc::new(AtomicBool::new(false)),
    )
    .await
    .summary;
    assert_no_errors(&sb);
    assert!(sa.projects_created > 0 && sb.projects_created > 0);
    assert_eq!(
        (sa.projects_created + sb.projects_created) as u64,
        a.sim.dataset().expected().flights
    );
    support::assert_synced_exactly(&a.sim);
    a.sim.shutdown().await;
}
