//! Simulated processing of committed WebODM tasks, computed from the clock on every read (no
//! background work): after a commit or `restart/` an attempt starts; its `status` goes null
//! (waiting for the worker) → 10 QUEUED → 20 RUNNING → 40 COMPLETED or 30 FAILED within
//! `process_ms`, and `available_assets` is filled in the same transition that sets 40. While a
//! restart waits for the worker, the task still shows its old status (30, say) with
//! `last_error` cleared and `pending_action` 3, as WebODM's `restart/` leaves it. With
//! `process_ms` 0 there is no processing node: `status` stays null until a node appears (a
//! non-zero `process_ms`), as on a WebODM whose node the daemon's account may not use.
//! Asset bytes are derived from the task id and the asset name.

use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::dataset::{is_companion, mix, File};

/// `pending_action` of a restart waiting for the worker (WebODM's `pending_actions.RESTART`).
const PENDING_RESTART: i64 = 3;
/// What a failed attempt says in `last_error` when the failure comes from the failure rate.
pub(crate) const RATE_FAILURE: &str = "Process exited with code 1";

/// How an attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Complete,
    /// FAILED with this `last_error` (`None`: null, as NodeODM's test mode leaves it).
    Fail(Option<String>),
}

/// One processing attempt (from a commit or a restart).
#[derive(Clone, Debug)]
struct Attempt {
    /// When a node took it; `None` while no node is available.
    started: Option<Instant>,
    process_ms: u64,
    outcome: Outcome,
    /// `Some` for a restart: the status the task had when it was asked for.
    restarted_from: Option<Option<i64>>,
    canceled: bool,
}

/// A task's processing history.
#[derive(Clone, Debug, Default)]
pub(crate) struct Processing {
    current: Option<Attempt>,
    /// Attempts started: commits (also of a task already committed) and restarts.
    pub attempts: u32,
    /// `restart/` requests.
    pub restarts: u32,
}

/// What a task's processing looks like at one instant.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    pub status: Option<i64>,
    pub last_error: Option<String>,
    pub processing_time: i64,
    pub pending_action: Option<i64>,
    pub running_progress: f64,
    /// A processing node has the task.
    pub on_node: bool,
    pub completed: bool,
}

impl Processing {
    /// Starts an attempt now (commit or restart); `process_ms` 0 = no node yet.
    pub fn start(&mut self, process_ms: u64, outcome: Outcome, restart: bool) {
        self.attempts += 1;
        self.restarts += u32::from(restart);
        let restarted_from = restart.then(|| self.view().status);
        self.current = Some(Attempt {
            started: (process_ms > 0).then(Instant::now),
            process_ms,
            outcome,
            restarted_from,
            canceled: false,
        });
    }

    /// Cancels the current attempt (or the task that never had one): CANCELED at once.
    pub fn cancel(&mut self) {
        match &mut self.current {
            Some(a) => a.canceled = true,
            None => {
                self.current = Some(Attempt {
                    started: None,
                    process_ms: 0,
                    outcome: Outcome::Complete,
                    restarted_from: None,
                    canceled: true,
                })
            }
        }
    }

    /// Hands an attempt waiting for a node to one, now, when `process_ms` (the current
    /// setting) says there is one.
    pub fn tick(&mut self, process_ms: u64) {
        if let Some(a) = &mut self.current {
            if a.started.is_none() && !a.canceled && process_ms > 0 {
                a.started = Some(Instant::now());
                a.process_ms = process_ms;
            }
        }
    }

    /// The processing state now.
    pub fn view(&self) -> View {
        let idle = View {
            status: None,
            last_error: None,
            processing_time: -1,
            pending_action: None,
            running_progress: 0.0,
            on_node: false,
            completed: false,
        };
        let Some(a) = &self.current else {
            return idle;
        };
        if a.canceled {
            return View {
                status: Some(50),
                on_node: a.started.is_some(),
                ..idle
            };
        }
        // Waiting for the worker: a restart keeps showing the old status.
        let waiting = View {
            status: a.restarted_from.flatten(),
            pending_action: a.restarted_from.map(|_| PENDING_RESTART),
            completed: a.restarted_from == Some(Some(40)),
            ..idle.clone()
        };
        let Some(started) = a.started else {
            return waiting;
        };
        let p = a.process_ms as f64;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if elapsed < p / 10.0 {
            return waiting;
        }
        let on_node = View {
            on_node: true,
            ..idle
        };
        if elapsed < p / 4.0 {
            return View {
                status: Some(10),
                ..on_node
            };
        }
        if elapsed < p {
            return View {
                status: Some(20),
                running_progress: (elapsed - p / 4.0) / (p * 0.75),
                ..on_node
            };
        }
        let done = View {
            processing_time: a.process_ms as i64,
            running_progress: 1.0,
            ..on_node
        };
        match &a.outcome {
            Outcome::Complete => View {
                status: Some(40),
                completed: true,
                ..done
            },
            Outcome::Fail(msg) => View {
                status: Some(30),
                last_error: msg.clone(),
                ..done
            },
        }
    }
}

/// WebODM's assets in the order it lists them, with a typical size in bytes (0 = empty, as
/// NodeODM's test mode leaves `report.pdf`) and the first bytes of their format.
const ASSETS: [(&str, u64, &[u8]); 23] = [
    ("all.zip", 1_200_000, b"PK\x03\x04"),
    ("orthophoto.tif", 400_000, b"II*\x00"),
    ("orthophoto.png", 150_000, b"\x89PNG"),
    ("orthophoto.mbtiles", 200_000, b"SQLite format 3\x00"),
    ("orthophoto.kmz", 100_000, b"PK\x03\x04"),
    ("cutline.gpkg", 40_000, b"SQLite format 3\x00"),
    ("georeferenced_model.las", 300_000, b"LASF"),
    ("georeferenced_model.laz", 80_000, b"LASF"),
    ("georeferenced_model.ply", 250_000, b"ply\n"),
    ("georeferenced_model.csv", 200_000, b"X,Y,Z\n"),
    ("textured_model.zip", 300_000, b"PK\x03\x04"),
    ("textured_model.glb", 200_000, b"glTF"),
    ("3d_tiles_model.zip", 150_000, b"PK\x03\x04"),
    ("3d_tiles_pointcloud.zip", 150_000, b"PK\x03\x04"),
    ("dtm.tif", 150_000, b"II*\x00"),
    ("dsm.tif", 200_000, b"II*\x00"),
    ("dtm_tiles.zip", 100_000, b"PK\x03\x04"),
    ("dsm_tiles.zip", 100_000, b"PK\x03\x04"),
    ("orthophoto_tiles.zip", 300_000, b"PK\x03\x04"),
    ("cameras.json", 2_000, b"{"),
    ("shots.geojson", 20_000, b"{"),
    ("report.pdf", 0, b"%PDF"),
    ("ground_control_points.geojson", 3_000, b"{"),
];

/// The assets a completed task offers: all of WebODM's but `dtm.tif` and `dtm_tiles.zip`
/// unless its options ask for a DTM, and `ground_control_points.geojson` only when it holds a
/// ground-control file (a `.txt` other than `geo.txt` and `image_groups.txt`).
pub(crate) fn assets<'a>(options: &Value, files: impl Iterator<Item = &'a String>) -> Vec<String> {
    let dtm = options.as_array().is_some_and(|o| {
        o.iter().any(|opt| {
            opt.get("name").and_then(Value::as_str) == Some("dtm")
                && opt.get("value").is_some_and(truthy)
        })
    });
    let mut gcp = false;
    for f in files {
        let lower = f.to_lowercase();
        gcp |= lower.ends_with(".txt") && (!is_companion(f) || lower == "gcp_list.txt");
    }
    ASSETS
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|n| dtm || !n.starts_with("dtm"))
        .filter(|n| gcp || *n != "ground_control_points.geojson")
        .map(str::to_owned)
        .collect()
}

/// Python truthiness of an option value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The bytes of asset `name` of task `task_id`: a size within ±25 % of the asset's typical
/// size (of `size`, when set, for an asset that is not empty), its format's first bytes, then
/// bytes derived from both names.
pub(crate) fn asset_file(task_id: &str, name: &str, size: Option<u64>) -> File {
    let digest = Sha256::digest(format!("{task_id}/{name}"));
    let key = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let (typical, magic) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or((10_000, &b""[..]), |(_, size, magic)| (*size, *magic));
    let typical = match size {
        Some(s) if typical > 0 => s,
        _ => typical,
    };
    let size = if typical == 0 {
        0
    } else {
        typical - typical / 4 + mix(key ^ 0x5A) % (typical / 2 + 1)
    };
    File::synthetic(name, key, size, magic)
}

/// Whether a task's first attempt fails under `rate` (0..1): decided by the seed, the project
/// name and the task name, so the same flights fail on every run with one seed.
pub(crate) fn first_attempt_fails(rate: f64, seed: u64, project: &str, task: &str) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 || rate.is_nan() {
        return false;
    }
    let digest = Sha256::digest(format!("{seed}/{project}/{task}"));
    let draw = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (draw as f64 / u64::MAX as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timeline_reaches_the_outcome() {
        let mut p = Processing::default();
        assert_eq!(p.view().status, None);
        p.start(0, Outcome::Complete, false);
        assert_eq!(p.view().status, None, "no node: null");
        assert!(!p.view().on_node);
        p.tick(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let v = p.view();
        assert_eq!(
            (v.status, v.processing_time, v.completed),
            (Some(40), 1, true)
        );
        p.start(1, Outcome::Fail(None), true);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let v = p.view();
        assert_eq!(
            (v.status, v.last_error, v.completed),
            (Some(30), None, false)
        );
        assert_eq!((p.attempts, p.restarts), (2, 1));
        p.start(60_000, Outcome::Complete, true);
        let v = p.view();
        assert_eq!(
            (v.status, v.last_error, v.pending_action),
            (Some(30), None, Some(PENDING_RESTART))
        );
        p.cancel();
        assert_eq!(p.view().status, Some(50));
    }

    #[test]
    fn assets_follow_options_and_files() {
        let none: Vec<String> = Vec::new();
        let plain = assets(&json!([]), none.iter());
        assert_eq!(plain.len(), 20);
        assert!(plain.contains(&"orthophoto.tif".to_owned()));
        assert!(!plain.iter().any(|a| a.starts_with("dtm")));
        let files = ["IMG.jpg".to_owned(), "GCP_List.txt".to_owned()];
        let all = assets(&json!([{"name": "dtm", "value": true}]), files.iter());
        assert_eq!(all.len(), 23);
        let a = asset_file("t", "orthophoto.tif", None);
        assert_eq!(a.size, asset_file("t", "orthophoto.tif", None).size);
        assert!((300_000..=500_000).contains(&a.size));
        assert_ne!(a.sha256(), asset_file("u", "orthophoto.tif", None).sha256());
        assert_eq!(asset_file("t", "report.pdf", None).size, 0);
        let big = asset_file("t", "orthophoto.tif", Some(8 << 20)).size;
        assert!((6 << 20..=10 << 20).contains(&big), "{big}");
        assert_eq!(asset_file("t", "report.pdf", Some(8 << 20)).size, 0);
    }

    #[test]
    fn failure_rate_is_deterministic() {
        let fails = (0..1000)
            .filter(|i| first_attempt_fails(0.3, 5, &format!("P{i}"), "t"))
            .count();
        assert!((200..400).contains(&fails), "{fails}");
        assert!(!first_attempt_fails(0.0, 5, "P", "t"));
        assert!(first_attempt_fails(1.0, 5, "P", "t"));
        assert_eq!(
            first_attempt_fails(0.5, 9, "P", "t"),
            first_attempt_fails(0.5, 9, "P", "t")
        );
    }
}
