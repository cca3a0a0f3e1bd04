//! End-to-end: the library's passes over real HTTP against the simulator.

mod support;

use std::time::Duration;

use support::{assert_no_errors, assert_synced_exactly, small_spec, Rig};
use tapis_webodm_sync::engine::pass::PassOptions;
use tapis_webodm_sync::engine::state::Store;
use tapis_webodm_sync::sim::{DatasetSpec, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_pass_syncs_everything_and_second_does_nothing() {
    let rig = Rig::new(&small_spec()).await;
    assert_eq!(
        support::pinned_flights(&rig.sim),
        4,
        "every flight with pinned tags is in the dataset"
    );
    let first = rig.pass().await;
    assert_no_errors(&first);
    let expected = rig.sim.dataset().expected();
    assert_eq!(first.flights_discovered as u64, expected.flights);
    assert_eq!(first.projects_created as u64, expected.flights);
    assert_eq!(first.tasks_committed as u64, expected.flights);
    assert_eq!(first.images_uploaded as u64, expected.images);
    assert_eq!(first.bytes_uploaded, expected.bytes);
    assert_eq!(first.created_projects.len(), first.projects_created);
    assert_synced_exactly(&rig.sim);

    let second = rig.pass().await;
    assert_no_errors(&second);
    assert_eq!(
        (
            second.projects_created,
            second.tasks_created,
            second.images_uploaded,
            second.tasks_committed
        ),
        (0, 0, 0, 0)
    );
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_past_100_systems_and_1000_images() {
    let spec = DatasetSpec {
        seed: 3,
        systems: 105,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 200,
        big_flight_images: Some(1_005),
        decoys: false,
        companions: false,
    };
    let mut rig = Rig::new(&spec).await;
    rig.config.sync.max_new_projects_per_pass = 500;
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert!(s.systems_scanned >= 105, "{}", s.systems_scanned);
    assert_synced_exactly(&rig.sim);
    let big = rig
        .sim
        .webodm_projects()
        .iter()
        .flat_map(|p| p.tasks.iter())
        .map(|t| t.images.len())
        .max()
        .unwrap();
    assert!(big >= 1_005, "the big flight holds all its images: {big}");
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_predicts_the_pass() {
    let rig = Rig::new(&small_spec()).await;
    let dry = rig.dry_run().await;
    assert_no_errors(&dry.summary);
    assert!(
        rig.sim.webodm_projects().is_empty(),
        "dry run created nothing"
    );
    assert_eq!(dry.summary.projects_created, 0);
    let writes: u64 = rig
        .sim
        .stats()
        .requests
        .iter()
        .filter(|(route, _)| route.starts_with("POST /api/projects"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum();
    assert_eq!(writes, 0, "a dry run writes nothing to WebODM");
    let plan = &dry.plan;
    let real = rig.pass().await;
    assert_no_errors(&real);
    assert_eq!(plan.projects(), real.projects_created);
    assert_eq!(plan.tasks(), real.tasks_created);
    assert_eq!(
        plan.uploads(),
        (real.images_uploaded as usize, real.bytes_uploaded)
    );
    assert_eq!(plan.commits(), real.tasks_committed);
    // After the pass, a dry run plans nothing.
    let after = rig.dry_run().await;
    assert!(after.plan.is_noop(), "{:?}", after.plan);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_projects_are_capped_per_pass_and_the_rest_follow() {
    let mut rig = Rig::new(&small_spec()).await;
    rig.config.sync.max_new_projects_per_pass = 2;
    let flights = rig.sim.dataset().expected().flights as usize;
    assert!(flights > 2);
    let mut created = 0;
    for _ in 0..flights {
        let s = rig.pass().await;
        assert_no_errors(&s);
        assert!(s.projects_created <= 2);
        created += s.projects_created;
    }
    assert_eq!(created, flights);
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_filter_limits_the_pass() {
    let rig = Rig::new(&small_spec()).await;
    let expected = rig.sim.dataset().expected_flights();
    let one = expected[0].system_id.clone();
    let report = rig
        .pass_with(
            PassOptions {
                dry_run: false,
                only_systems: vec![one.clone()],
                ..Default::default()
            },
            false,
        )
        .await;
    assert_no_errors(&report.summary);
    assert_eq!(report.summary.systems_scanned, 1);
    let want = expected.iter().filter(|f| f.system_id == one).count();
    assert_eq!(report.summary.projects_created, want);
    assert!(report
        .summary
        .created_projects
        .iter()
        .all(|p| p.system_id == one));
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_flights_upload_but_wait_to_commit() {
    let mut rig = Rig::new(&small_spec()).await;
    rig.config.sync.settle = Duration::from_secs(3600);
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.tasks_committed, 0);
    assert_eq!(
        s.images_uploaded as u64,
        rig.sim.dataset().expected().images
    );
    assert!(rig
        .sim
        .webodm_projects()
        .iter()
        .all(|p| p.tasks.iter().all(|t| t.partial)));
    rig.config.sync.settle = Duration::ZERO;
    let s = rig.pass().await;
    assert_eq!(s.images_uploaded, 0, "nothing uploaded twice");
    assert_eq!(
        s.tasks_committed as u64,
        rig.sim.dataset().expected().flights
    );
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_state_adopts_instead_of_duplicating() {
    // Every upload fails, and retries give up at once: projects and tasks exist, no image.
    let upload = "POST /api/projects/{project}/tasks/{task}/upload/".to_string();
    let faults = Faults {
        route_rates: [(upload, 1.0)].into(),
        ..Faults::default()
    };
    let mut rig = Rig::with_faults(&small_spec(), faults).await;
    rig.config.retry.max_elapsed = Duration::from_millis(1);
    rig.reconnect();
    let failed = rig.pass().await;
    assert_eq!(failed.images_uploaded, 0);
    assert!(failed.projects_created > 0 && failed.tasks_created > 0);
    assert!(!failed.errors.is_empty());
    rig.sim.set_faults(Faults::default());
    rig.wipe_state();
    let resumed = rig.pass().await;
    assert_no_errors(&resumed);
    assert_eq!(
        resumed.projects_created, 0,
        "projects adopted, not recreated"
    );
    assert_eq!(resumed.tasks_created, 0, "tasks adopted, not recreated");
    assert_synced_exactly(&rig.sim);
    // After a full sync, a wiped state re-uploads nothing.
    rig.wipe_state();
    let again = rig.pass().await;
    assert_no_errors(&again);
    assert_eq!(
        (
            again.projects_created,
            again.tasks_created,
            again.images_uploaded
        ),
        (0, 0, 0)
    );
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

/// Files WebODM stored from uploads (small images go several per request).
fn uploads_sent(rig: &Rig) -> u64 {
    rig.sim.stats().files_uploaded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_trusts_sizes_not_names() {
    let spec = small_spec();
    let mut rig = Rig::new(&spec).await;
    // Long settle: every image is in a task that stays partial.
    rig.config.sync.settle = Duration::from_secs(3600);
    assert_no_errors(&rig.pass().await);
    let images = rig.sim.dataset().expected().images;
    assert_eq!(uploads_sent(&rig), images);

    // State lost, nothing changed: every image WebODM holds has the listed size, none is
    // uploaded again.
    rig.wipe_state();
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!((s.tasks_created, s.images_uploaded), (0, 0));
    assert_eq!(uploads_sent(&rig), images, "no image uploaded twice");

    // State lost and every image replaced on Tapis by other bytes of another size (sizes
    // between 6 750 and 11 250 bytes instead of 2 250 to 3 750): same names, new versions.
    rig.wipe_state();
    rig.sim.replace_dataset(&DatasetSpec {
        image_size: 9_000,
        ..spec
    });
    rig.config.sync.settle = Duration::ZERO;
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.tasks_created, 0, "tasks adopted");
    assert_eq!(
        s.images_uploaded as u64, images,
        "every new version uploaded"
    );
    assert_eq!(uploads_sent(&rig), 2 * images);
    // The report checks WebODM's images byte for byte against the new dataset.
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_partial_task_is_recreated_deleted_committed_task_is_not() {
    let mut rig = Rig::new(&small_spec()).await;
    let flights = rig.sim.dataset().expected().flights as usize;
    // Long settle: every task stays partial after the first pass.
    rig.config.sync.settle = Duration::from_secs(3600);
    assert_no_errors(&rig.pass().await);
    // WebODM deletes partial tasks that stay uncommitted for 72 h.
    for p in rig.sim.webodm_projects() {
        for t in p.tasks.iter().filter(|t| t.partial) {
            assert!(rig.sim.delete_task(p.id, &t.id));
        }
    }
    rig.config.sync.settle = Duration::ZERO;
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.projects_created, 0);
    assert_eq!(
        s.tasks_created, flights,
        "each vanished partial task is recreated"
    );
    assert_eq!(s.images_uploaded, rig.sim.dataset().expected().images);
    assert_synced_exactly(&rig.sim);

    // A person deletes one committed task: it is not recreated until `forget`.
    let victim = rig.sim.webodm_projects()[0].clone();
    assert!(rig.sim.delete_task(victim.id, &victim.tasks[0].id));
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(
        (s.projects_created, s.tasks_created, s.images_uploaded),
        (0, 0, 0)
    );
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    let deleted: Vec<_> = store
        .flights()
        .unwrap()
        .into_iter()
        .filter(|r| r.shown_phase() == "deleted_in_webodm")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].project_id, Some(victim.id));
    assert!(store.forget(&deleted[0].key).await.unwrap());
    drop(store);
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(
        s.projects_created, 0,
        "the project still exists and is adopted"
    );
    assert_eq!(s.tasks_created, 1);
    assert_synced_exactly(&rig.sim);
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_pass_starts_nothing_new() {
    let rig = Rig::new(&small_spec()).await;
    let s = rig.pass_with(PassOptions::default(), true).await.summary;
    assert_no_errors(&s);
    assert_eq!(
        (s.projects_created, s.tasks_created, s.images_uploaded),
        (0, 0, 0)
    );
    assert!(rig.sim.webodm_projects().is_empty());
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_added_after_commit_warn_or_start_a_whole_new_task() {
    let spec = small_spec();
    let mut rig = Rig::new(&spec).await;
    // Every pass lists every flight (no resync period), so the change is seen at once.
    rig.config.sync.recheck_committed = std::time::Duration::ZERO;
    assert_no_errors(&rig.pass().await);
    let before = rig.sim.dataset().expected_flights();
    rig.sim.replace_dataset(&DatasetSpec {
        images_per_flight: spec.images_per_flight + 2,
        ..spec
    });
    let after = rig.sim.dataset().expected_flights();
    let changed: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
    assert!(!changed.is_empty());

    // Default "warn": WebODM keeps the committed set; the change is recorded once.
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!((s.tasks_created, s.images_uploaded), (0, 0));
    {
        let store = Store::open(&rig.config.sync.state_dir).unwrap();
        let warned = store
            .flights()
            .unwrap()
            .into_iter()
            .filter(|r| r.change_warned)
            .count();
        assert_eq!(warned, changed.len());
    }

    // "new-task": each changed flight gets a second task holding its whole current set.
    rig.config.sync.on_change_after_commit = tapis_webodm_sync::config::OnChange::NewTask;
    let s = rig.pass().await;
    assert_no_errors(&s);
    assert_eq!(s.projects_created, 0);
    assert_eq!(s.tasks_created, changed.len());
    assert_eq!(s.tasks_committed, changed.len());
    let want: usize = changed.iter().map(|f| f.images.len()).sum();
    assert_eq!(s.images_uploaded as usize, want);
    let projects = rig.sim.webodm_projects();
    for f in &changed {
        let name = format!("{} ({})", f.flight.trim(), f.system_id);
        let p = projects.iter().find(|p| p.name == name).unwrap();
        assert_eq!(p.tasks.len(), 2, "{name}");
        let update = p
            .tasks
            .iter()
            .find(|t| t.name.as_deref() == Some(&format!("Flight {} (update 1)", f.flight.trim())))
            .unwrap();
        assert!(!update.partial);
        let names: Vec<_> = update.images.keys().cloned().collect();
        let mut expected: Vec<_> = f.images.iter().map(|i| i.name.clone()).collect();
        expected.sort();
        assert_eq!(names, expected);
    }
    let idle = rig.pass().await;
    assert_eq!((idle.tasks_created, idle.images_uploaded), (0, 0));
    rig.sim.shutdown().await;
}
