//! Shared by the end-to-end tests: a simulator with a daemon config pointing at it, library
//! passes, and the check that WebODM holds exactly the dataset's flights.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tapis_webodm_sync::clients::Clients;
use tapis_webodm_sync::config::Config;
use tapis_webodm_sync::engine::naming;
use tapis_webodm_sync::engine::pass::{self, PassOptions, PassReport};
use tapis_webodm_sync::engine::state::{FlightKey, Store};
use tapis_webodm_sync::engine::PassSummary;
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

pub struct Rig {
    pub sim: Sim,
    pub state: tempfile::TempDir,
    pub config: Config,
    pub clients: Clients,
}

impl Rig {
    pub async fn new(spec: &DatasetSpec) -> Rig {
        Rig::with_faults(spec, Faults::default()).await
    }

    pub async fn with_faults(spec: &DatasetSpec, faults: Faults) -> Rig {
        let sim = Sim::start_with(spec, "127.0.0.1:0".parse().unwrap(), faults)
            .await
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut config = tapis_webodm_sync::demo::config_for(&sim, state.path()).unwrap();
        // Results back to Tapis (on in the demo) are off unless a test turns them on.
        config.results.assets.clear();
        let clients = Clients::new(&config).unwrap();
        Rig {
            sim,
            state,
            config,
            clients,
        }
    }

    /// Rebuilds the clients after a config change.
    pub fn reconnect(&mut self) {
        self.clients = Clients::new(&self.config).unwrap();
    }

    pub async fn pass_with(&self, opts: PassOptions, stopping: bool) -> PassReport {
        let store = Store::open(&self.config.sync.state_dir).unwrap();
        pass::pass(
            &self.config,
            &self.clients,
            Some(&store),
            &opts,
            Arc::new(AtomicBool::new(stopping)),
        )
        .await
    }

    /// A dry run: the plan of a pass, nothing applied.
    pub async fn dry_run(&self) -> PassReport {
        let opts = PassOptions {
            dry_run: true,
            ..Default::default()
        };
        self.pass_with(opts, false).await
    }

    pub async fn pass(&self) -> PassSummary {
        self.pass_with(PassOptions::default(), false).await.summary
    }

    pub fn wipe_state(&self) {
        std::fs::remove_dir_all(self.state.path()).unwrap();
    }
}

pub fn small_spec() -> DatasetSpec {
    DatasetSpec {
        seed: 7,
        systems: 2,
        flights_per_system: 2,
        images_per_flight: 6,
        image_size: 3_000,
        big_flight_images: None,
        decoys: true,
        companions: false,
    }
}

pub fn assert_no_errors(s: &PassSummary) {
    assert!(s.errors.is_empty(), "pass errors: {:#?}", s.errors);
}

/// Whether the simulator's own record shows every flight synced once, byte for byte.
pub fn converged(sim: &Sim) -> bool {
    let r = sim.report();
    r.webodm.mismatches(&r.expected).is_empty()
}

/// Literal tags of a few flights (system, flight, tags), key tags from
/// `printf '<system>/<flight>' | sha256sum | cut -c1-16`. `harbor-001` is the first system of
/// seeds 7 (`small_spec`) and 21 (the resilience tests); `shared-lab` a decoy system shared
/// with the account.
pub const PINNED_TAGS: [(&str, &str, [&str; 5]); 4] = [
    (
        "ptdatax.project.harbor-001",
        "Flight001",
        [
            "tapis",
            "flight",
            "ptdatax.project.harbor-001",
            "Flight001",
            ".tws-aebd1bb87fe27dc9",
        ],
    ),
    (
        "ptdatax.project.harbor-001",
        "Vuelo Año 2",
        [
            "tapis",
            "flight",
            "ptdatax.project.harbor-001",
            "Vuelo_Año_2",
            ".tws-11092229a6c9bca3",
        ],
    ),
    (
        "ptdatax.project.harbor-001",
        "Flight Extras",
        [
            "tapis",
            "flight",
            "ptdatax.project.harbor-001",
            "Flight_Extras",
            ".tws-61e24954a4032d75",
        ],
    ),
    (
        "ptdatax.project.shared-lab",
        "Flight001",
        [
            "tapis",
            "flight",
            "ptdatax.project.shared-lab",
            "Flight001",
            ".tws-74131d79b909bbd3",
        ],
    ),
];

/// How many of the [`PINNED_TAGS`] flights the simulator's dataset holds.
pub fn pinned_flights(sim: &Sim) -> usize {
    let expected = sim.dataset().expected_flights();
    PINNED_TAGS
        .iter()
        .filter(|(s, f, _)| expected.iter().any(|e| e.system_id == *s && e.flight == *f))
        .count()
}

/// Every expected flight has exactly one project, with the specified name, description and
/// tags, holding exactly one committed task with exactly its images, byte for byte; nothing
/// else exists in WebODM.
pub fn assert_synced_exactly(sim: &Sim) {
    let expected = sim.dataset().expected_flights();
    let projects = sim.webodm_projects();
    assert_eq!(
        projects.len(),
        expected.len(),
        "one project per expected flight (decoys produce nothing)"
    );
    for flight in &expected {
        let key = FlightKey::new(flight.system_id.clone(), flight.flight.clone());
        let tag = naming::key_tag(&key);
        let mine: Vec<_> = projects.iter().filter(|p| p.tags.contains(&tag)).collect();
        assert_eq!(mine.len(), 1, "exactly one project for {key}");
        let p = mine[0];
        assert_eq!(
            p.name,
            format!("{} ({})", flight.flight.trim(), flight.system_id)
        );
        // Built here from the design's rule (the key tag by the simulator's own hash), not by
        // the daemon's `naming`; a few flights are pinned literally in `PINNED_TAGS`.
        let key_tag = tapis_webodm_sync::sim::key_tag(&flight.system_id, &flight.flight);
        let want_tags = [
            "tapis".to_string(),
            "flight".to_string(),
            flight.system_id.clone(),
            flight.flight.trim().replace(char::is_whitespace, "_"),
            key_tag,
        ];
        assert_eq!(p.tags, want_tags, "tags of {key}");
        assert_eq!(tag, want_tags[4], "key tag of {key}");
        if let Some((_, _, pinned)) = PINNED_TAGS
            .iter()
            .find(|(s, f, _)| *s == flight.system_id && *f == flight.flight)
        {
            assert_eq!(p.tags, pinned, "pinned tags of {key}");
        }
        let lines: Vec<&str> = p.description.lines().collect();
        assert_eq!(
            lines[0],
            format!("Auto-created from Tapis system {}", flight.system_id)
        );
        assert_eq!(lines[1], format!("Flight: {}", flight.flight));
        assert_eq!(
            lines[2],
            format!("Images path: {}/code/images", flight.flight)
        );
        assert_eq!(lines[3], format!("Image count: {}", flight.images.len()));
        assert!(lines[4].starts_with("Discovered: 20"), "{}", lines[4]);
        assert_eq!(p.tasks.len(), 1, "exactly one task for {key}");
        let t = &p.tasks[0];
        assert!(!t.partial, "task of {key} committed");
        assert_eq!(
            t.name.as_deref(),
            Some(format!("Flight {}", flight.flight.trim()).as_str())
        );
        let want: BTreeMap<String, (u64, String)> = flight
            .images
            .iter()
            .map(|i| (i.name.clone(), (i.size, i.sha256.clone())))
            .collect();
        assert_eq!(t.images, want, "images of {key} byte for byte");
    }
    assert_eq!(
        sim.stats().leaked_credentials,
        0,
        "no credential sent to the wrong service"
    );
    assert_one_commit_per_task(sim);
}

/// Every task WebODM holds was committed exactly once, and no task (not even a deleted one)
/// more than once: WebODM queues processing again on every commit.
pub fn assert_one_commit_per_task(sim: &Sim) {
    let commits = sim.stats().commits;
    for p in sim.webodm_projects() {
        for t in p.tasks.iter().filter(|t| !t.partial) {
            assert_eq!(
                commits.get(&t.id).copied(),
                Some(1),
                "task {} of project {:?} committed once",
                t.id,
                p.name
            );
        }
    }
    let twice: Vec<_> = commits.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks committed more than once: {twice:?}"
    );
}
