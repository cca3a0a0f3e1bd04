//! The pure core: (desired, observed, now, settings) → what to do for each flight. No I/O.
//!
//! Each flight gets an ordered list of [`Step`]s for this pass (kube-rs style: one reconcile per
//! object); [`retry_delay`] is the matching error policy. A new flight with `settle = 0` is
//! created, uploaded and committed in one pass; the pass after that has nothing to do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::config::{OnChange, RetryConfig};
use crate::engine::discover::{Desired, Flight, Image};
use crate::engine::state::{FlightKey, FlightRecord, Phase, UploadedImage};

/// Settings that shape a plan.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a listing must stay unchanged before commit.
    pub settle: Duration,
    /// Projects created per pass at most.
    pub max_new_projects: usize,
    /// What a change after commit leads to.
    pub on_change: OnChange,
}

/// What the store knows, as plan needs it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every flight record.
    pub records: BTreeMap<FlightKey, FlightRecord>,
    /// Confirmed images of every flight not yet committed.
    pub uploaded: BTreeMap<FlightKey, BTreeMap<String, UploadedImage>>,
    /// What WebODM holds now: project id → its task ids (`None` when it could not be listed;
    /// drift is then not checked this pass).
    pub webodm: Option<BTreeMap<i64, BTreeSet<String>>>,
}

/// One thing to do for a flight, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Find the flight's project in WebODM (exact name + key tag) or create it.
    EnsureProject {
        /// The name it gets.
        name: String,
    },
    /// Find the flight's task in the project or create it.
    EnsureTask,
    /// Stream these images from Tapis into the task.
    Upload {
        /// Images WebODM does not hold yet (or holds in an older version).
        #[serde(skip)]
        images: Vec<Image>,
        /// How many.
        count: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// Commit the task for processing (only once every image is uploaded).
    Commit,
    /// Report that images changed after commit.
    WarnChangedAfterCommit,
    /// Images changed after commit and `on_change_after_commit = "new-task"`: the next task
    /// (this generation) takes the whole current set.
    StartUpdateTask {
        /// 1 for the first update task, 2 for the next…
        generation: u32,
    },
    /// The flight's partial task vanished from WebODM (it deletes uncommitted partial tasks
    /// after 72 h): forget it and its images, then create a new one.
    ReplaceVanishedTask {
        /// The vanished task.
        task: String,
    },
    /// A person deleted the project or the committed task: record it, recreate nothing.
    MarkDeleted {
        /// What was deleted.
        what: String,
    },
}

/// Everything to do for one flight this pass.
#[derive(Debug, Clone, Serialize)]
pub struct FlightPlan {
    /// The flight as listed now.
    #[serde(skip)]
    pub flight: Flight,
    /// System id.
    pub system_id: String,
    /// Flight name.
    pub flight_name: String,
    /// When the current listing was first seen (unix ms).
    pub listing_since_ms: i64,
    /// The listing has been unchanged for `settle`.
    pub settled: bool,
    /// What to do, in order (may be empty: only the listing is recorded).
    pub steps: Vec<Step>,
}

/// Why a flight gets no steps this pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// System id.
    pub system_id: String,
    /// Flight name.
    pub flight_name: String,
    /// Why.
    pub reason: String,
}

/// What a pass will do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Flights with work or a changed listing.
    pub flights: Vec<FlightPlan>,
    /// Flights left for a later pass, and why.
    pub waiting: Vec<Waiting>,
    /// Recorded flights whose folder is gone from Tapis (nothing is deleted).
    pub vanished: Vec<FlightKey>,
}

impl Plan {
    /// Projects this plan creates or adopts.
    pub fn projects(&self) -> usize {
        self.count(|s| matches!(s, Step::EnsureProject { .. }))
    }
    /// Tasks this plan creates or adopts.
    pub fn tasks(&self) -> usize {
        self.count(|s| matches!(s, Step::EnsureTask))
    }
    /// Images and bytes this plan uploads.
    pub fn uploads(&self) -> (usize, u64) {
        self.steps()
            .filter_map(|s| match s {
                Step::Upload { count, bytes, .. } => Some((*count, *bytes)),
                _ => None,
            })
            .fold((0, 0), |(c, b), (c2, b2)| (c + c2, b + b2))
    }
    /// Commits this plan attempts.
    pub fn commits(&self) -> usize {
        self.count(|s| matches!(s, Step::Commit))
    }
    /// Whether the plan changes anything in WebODM.
    pub fn is_noop(&self) -> bool {
        self.steps()
            .all(|s| matches!(s, Step::WarnChangedAfterCommit | Step::MarkDeleted { .. }))
    }
    fn steps(&self) -> impl Iterator<Item = &Step> {
        self.flights.iter().flat_map(|f| f.steps.iter())
    }
    fn count(&self, f: impl Fn(&Step) -> bool) -> usize {
        self.steps().filter(|s| f(s)).count()
    }
}

/// Computes the plan of one pass.
pub fn plan(desired: &Desired, observed: &Observed, now_ms: i64, settings: &Settings) -> Plan {
    let mut out = Plan::default();
    let mut new_projects = 0;
    for flight in &desired.flights {
        let key = &flight.key;
        let rec = observed.records.get(key);
        let wait = |reason: String| Waiting {
            system_id: key.system.clone(),
            flight_name: key.flight.clone(),
            reason,
        };
        let fingerprint = flight.fingerprint();
        let listing_since_ms = match rec {
            Some(r) if r.listing == fingerprint => r.listing_since_ms,
            _ => now_ms,
        };
        let settled = now_ms.saturating_sub(listing_since_ms) >= settings.settle.as_millis() as i64;
        let listing_changed =
            rec.is_none_or(|r| r.listing != fingerprint || r.vanished_ms.is_some());
        let mut steps = Vec::new();
        let mut task_vanished = false;
        match rec.and_then(|r| drift(r, observed.webodm.as_ref())) {
            Some(Drift::Deleted(what)) => {
                out.flights.push(FlightPlan {
                    flight: flight.clone(),
                    system_id: key.system.clone(),
                    flight_name: key.flight.clone(),
                    listing_since_ms,
                    settled,
                    steps: vec![Step::MarkDeleted { what }],
                });
                continue;
            }
            Some(Drift::TaskVanished(task)) => {
                task_vanished = true;
                steps.push(Step::ReplaceVanishedTask { task });
            }
            None => {}
        }
        match rec {
            Some(r) if r.phase == Phase::DeletedInWebodm => {
                out.waiting.push(wait(
                    "deleted in WebODM by a person; run `forget` to sync it again".into(),
                ));
            }
            Some(r) if r.next_attempt_ms.is_some_and(|t| t > now_ms) => {
                out.waiting.push(wait(format!(
                    "retrying after {} (last error: {})",
                    crate::engine::state::rfc3339(r.next_attempt_ms.unwrap_or(0)),
                    r.last_error.as_deref().unwrap_or("none")
                )));
            }
            Some(r) if r.phase.is_committed() => {
                let changed = r.committed_listing.is_some_and(|c| c != fingerprint);
                match settings.on_change {
                    OnChange::Warn if changed && !r.change_warned => {
                        steps.push(Step::WarnChangedAfterCommit);
                    }
                    OnChange::NewTask if changed && settled => {
                        steps.push(Step::StartUpdateTask {
                            generation: r.generation + 1,
                        });
                        steps.push(Step::EnsureTask);
                        steps.extend(upload_step(flight, None));
                        steps.push(Step::Commit);
                    }
                    OnChange::NewTask if changed => out.waiting.push(wait(
                        "images changed after commit; a new task with every image follows once the listing has settled".into(),
                    )),
                    _ => {}
                }
            }
            _ => {
                if rec.is_none_or(|r| r.project_id.is_none()) {
                    if new_projects >= settings.max_new_projects {
                        out.waiting.push(wait(format!(
                            "max_new_projects_per_pass ({}) reached",
                            settings.max_new_projects
                        )));
                        continue;
                    }
                    new_projects += 1;
                    steps.push(Step::EnsureProject {
                        name: crate::engine::naming::project_name(key),
                    });
                }
                if task_vanished || rec.is_none_or(|r| r.task_id.is_none()) {
                    steps.push(Step::EnsureTask);
                }
                let done = observed.uploaded.get(key).filter(|_| !task_vanished);
                steps.extend(upload_step(flight, done));
                if settled {
                    steps.push(Step::Commit);
                } else {
                    out.waiting.push(wait(format!(
                        "settling: listing changed at {}; commit waits until it is unchanged for {}",
                        crate::engine::state::rfc3339(listing_since_ms),
                        humantime::format_duration(settings.settle)
                    )));
                }
            }
        }
        if !steps.is_empty() || listing_changed {
            out.flights.push(FlightPlan {
                flight: flight.clone(),
                system_id: key.system.clone(),
                flight_name: key.flight.clone(),
                listing_since_ms,
                settled,
                steps,
            });
        }
    }
    let listed: std::collections::BTreeSet<&FlightKey> =
        desired.flights.iter().map(|f| &f.key).collect();
    out.vanished = observed
        .records
        .values()
        .filter(|r| {
            r.vanished_ms.is_none()
                && desired.scanned.contains(&r.key.system)
                && !desired.unknown.contains(&r.key)
                && !listed.contains(&r.key)
        })
        .map(|r| r.key.clone())
        .collect();
    out
}

/// Uploads of the flight's images that `done` does not hold in their listed version.
fn upload_step(flight: &Flight, done: Option<&BTreeMap<String, UploadedImage>>) -> Option<Step> {
    let images: Vec<Image> = flight
        .images
        .iter()
        .filter(|i| {
            !done
                .and_then(|d| d.get(&i.name))
                .is_some_and(|u| u.size == i.size && u.last_modified == i.last_modified)
        })
        .cloned()
        .collect();
    (!images.is_empty()).then(|| Step::Upload {
        count: images.len(),
        bytes: images.iter().map(|i| i.size).sum(),
        images,
    })
}

/// What changed in WebODM behind the daemon's back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Drift {
    /// A person deleted the project or the committed task.
    Deleted(String),
    /// The partial task is gone (WebODM's 72 h cleanup, or a person).
    TaskVanished(String),
}

/// Compares a record with what WebODM holds now.
fn drift(rec: &FlightRecord, webodm: Option<&BTreeMap<i64, BTreeSet<String>>>) -> Option<Drift> {
    let projects = webodm?;
    if rec.phase == Phase::DeletedInWebodm {
        return None;
    }
    let project = rec.project_id?;
    let Some(tasks) = projects.get(&project) else {
        return Some(Drift::Deleted(format!("project {project}")));
    };
    let task = rec.task_id.as_ref()?;
    if tasks.contains(task) {
        None
    } else if rec.phase.is_committed() {
        Some(Drift::Deleted(format!("committed task {task}")))
    } else {
        Some(Drift::TaskVanished(task.clone()))
    }
}

/// The error policy: how long a flight waits after `failures` consecutive failed passes
/// (exponential from `retry.initial`, capped at `retry.max`).
pub fn retry_delay(failures: u32, retry: &RetryConfig) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    retry.initial.saturating_mul(factor).min(retry.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, size: u64) -> Image {
        Image {
            name: name.into(),
            size,
            last_modified: "2024-05-01T16:55:57Z".into(),
        }
    }

    fn flight(system: &str, name: &str, images: &[(&str, u64)]) -> Flight {
        Flight {
            key: FlightKey::new(system, name),
            images_path: format!("{name}/code/images"),
            images: images.iter().map(|(n, s)| image(n, *s)).collect(),
            rejected: vec![],
        }
    }

    fn desired(flights: Vec<Flight>) -> Desired {
        Desired {
            scanned: flights.iter().map(|f| f.key.system.clone()).collect(),
            flights,
            ..Default::default()
        }
    }

    fn settings(settle_s: u64) -> Settings {
        Settings {
            settle: Duration::from_secs(settle_s),
            max_new_projects: 50,
            on_change: OnChange::Warn,
        }
    }

    fn uploaded(names: &[(&str, u64)]) -> BTreeMap<String, UploadedImage> {
        names
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    UploadedImage {
                        size: *s,
                        last_modified: "2024-05-01T16:55:57Z".into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn new_flight_gets_every_step_when_settle_is_zero() {
        let d = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("b.jpg", 4)])]);
        let p = plan(&d, &Observed::default(), 1_000, &settings(0));
        assert_eq!(p.flights.len(), 1);
        let steps = &p.flights[0].steps;
        assert!(matches!(&steps[0], Step::EnsureProject { name } if name == "F1 (s)"));
        assert_eq!(steps[1], Step::EnsureTask);
        assert!(matches!(
            &steps[2],
            Step::Upload {
                count: 2,
                bytes: 7,
                ..
            }
        ));
        assert_eq!(steps[3], Step::Commit);
        assert_eq!(
            (p.projects(), p.tasks(), p.uploads(), p.commits()),
            (1, 1, (2, 7), 1)
        );
    }

    #[test]
    fn unsettled_flight_uploads_but_does_not_commit() {
        let d = desired(vec![flight("s", "F1", &[("a.jpg", 3)])]);
        let p = plan(&d, &Observed::default(), 1_000, &settings(600));
        let steps = &p.flights[0].steps;
        assert!(steps.iter().any(|s| matches!(s, Step::Upload { .. })));
        assert!(!steps.contains(&Step::Commit));
        assert!(p.waiting[0].reason.starts_with("settling"));
    }

    fn record(f: &Flight, phase: Phase, since: i64) -> FlightRecord {
        let mut r = FlightRecord::new(f.key.clone(), 0);
        r.phase = phase;
        r.project_id = Some(1);
        r.task_id = Some("t".into());
        r.listing = f.fingerprint();
        r.listing_since_ms = since;
        r
    }

    #[test]
    fn settle_counts_from_when_the_listing_last_changed() {
        let f = flight("s", "F1", &[("a.jpg", 3)]);
        let mut obs = Observed::default();
        obs.records
            .insert(f.key.clone(), record(&f, Phase::Uploading, 0));
        obs.uploaded
            .insert(f.key.clone(), uploaded(&[("a.jpg", 3)]));
        let d = desired(vec![f.clone()]);
        let early = plan(&d, &obs, 599_000, &settings(600));
        assert!(early.flights.is_empty(), "nothing to do while settling");
        let later = plan(&d, &obs, 600_000, &settings(600));
        assert_eq!(later.flights[0].steps, vec![Step::Commit]);
        // A new image resets the clock and is uploaded.
        let grown = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("b.jpg", 1)])]);
        let p = plan(&grown, &obs, 600_000, &settings(600));
        assert_eq!(p.flights[0].listing_since_ms, 600_000);
        assert!(matches!(
            &p.flights[0].steps[..],
            [Step::Upload { count: 1, .. }]
        ));
    }

    #[test]
    fn synced_flight_needs_nothing_and_changed_one_warns_once() {
        let f = flight("s", "F1", &[("a.jpg", 3)]);
        let mut rec = record(&f, Phase::Committed, 0);
        rec.committed_listing = Some(f.fingerprint());
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec.clone());
        let p = plan(&desired(vec![f.clone()]), &obs, 10, &settings(0));
        assert!(p.flights.is_empty() && p.is_noop());
        let grown = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("b.jpg", 1)])]);
        let p = plan(&grown, &obs, 10, &settings(0));
        assert_eq!(p.flights[0].steps, vec![Step::WarnChangedAfterCommit]);
        assert!(p.is_noop());
        rec.change_warned = true;
        obs.records.insert(f.key.clone(), rec);
        assert!(plan(&grown, &obs, 10, &settings(0)).flights[0]
            .steps
            .is_empty());
    }

    #[test]
    fn new_task_mode_starts_a_whole_new_task_once_settled() {
        let f = flight("s", "F1", &[("a.jpg", 3)]);
        let mut rec = record(&f, Phase::Committed, 0);
        rec.committed_listing = Some(f.fingerprint());
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec);
        let grown = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("b.jpg", 1)])]);
        let mut s = settings(60);
        s.on_change = OnChange::NewTask;
        let early = plan(&grown, &obs, 10, &s);
        assert!(early.flights[0].steps.is_empty(), "waits to settle");
        assert!(early.waiting[0].reason.contains("after commit"));
        s.settle = Duration::ZERO;
        let p = plan(&grown, &obs, 10, &s);
        let steps = &p.flights[0].steps;
        assert_eq!(steps[0], Step::StartUpdateTask { generation: 1 });
        assert_eq!(steps[1], Step::EnsureTask);
        assert!(matches!(
            &steps[2],
            Step::Upload {
                count: 2,
                bytes: 4,
                ..
            }
        ));
        assert_eq!(steps[3], Step::Commit);
    }

    #[test]
    fn changed_image_is_uploaded_again() {
        let f = flight("s", "F1", &[("a.jpg", 5)]);
        let mut obs = Observed::default();
        obs.records
            .insert(f.key.clone(), record(&f, Phase::Uploading, 0));
        obs.uploaded
            .insert(f.key.clone(), uploaded(&[("a.jpg", 3)]));
        let p = plan(&desired(vec![f]), &obs, 10, &settings(0));
        assert!(matches!(
            &p.flights[0].steps[0],
            Step::Upload {
                count: 1,
                bytes: 5,
                ..
            }
        ));
    }

    #[test]
    fn new_projects_are_capped_per_pass() {
        let flights: Vec<_> = (0..5)
            .map(|i| flight("s", &format!("F{i}"), &[("a.jpg", 1)]))
            .collect();
        let s = Settings {
            settle: Duration::ZERO,
            max_new_projects: 2,
            on_change: OnChange::Warn,
        };
        let p = plan(&desired(flights), &Observed::default(), 0, &s);
        assert_eq!(p.projects(), 2);
        assert_eq!(p.waiting.len(), 3);
    }

    #[test]
    fn failed_flight_waits_for_its_next_attempt() {
        let f = flight("s", "F1", &[("a.jpg", 1)]);
        let mut rec = record(&f, Phase::Uploading, 0);
        rec.next_attempt_ms = Some(5_000);
        rec.last_error = Some("boom".into());
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec);
        let d = desired(vec![f]);
        let p = plan(&d, &obs, 4_000, &settings(0));
        assert!(p.flights.is_empty());
        assert!(p.waiting[0].reason.contains("boom"));
        assert_eq!(plan(&d, &obs, 5_000, &settings(0)).flights.len(), 1);
    }

    #[test]
    fn vanished_only_when_its_system_was_fully_listed() {
        let gone = flight("s", "Gone", &[("a.jpg", 1)]);
        let unknown = flight("s", "Unknown", &[("a.jpg", 1)]);
        let other = flight("t", "Other", &[("a.jpg", 1)]);
        let mut obs = Observed::default();
        for f in [&gone, &unknown, &other] {
            obs.records
                .insert(f.key.clone(), record(f, Phase::Committed, 0));
        }
        let mut d = desired(vec![]);
        d.scanned.insert("s".into());
        d.unknown.insert(unknown.key.clone());
        let p = plan(&d, &obs, 0, &settings(0));
        assert_eq!(p.vanished, vec![gone.key]);
    }

    #[test]
    fn deleted_in_webodm_is_not_recreated() {
        let f = flight("s", "F1", &[("a.jpg", 1)]);
        let mut rec = record(&f, Phase::DeletedInWebodm, 0);
        rec.project_id = None;
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec);
        let p = plan(&desired(vec![f]), &obs, 0, &settings(0));
        assert!(p.flights.is_empty());
        assert!(p.waiting[0].reason.contains("forget"));
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let r = RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(retry_delay(1, &r), Duration::from_secs(1));
        assert_eq!(retry_delay(3, &r), Duration::from_secs(4));
        assert_eq!(retry_delay(40, &r), Duration::from_secs(10));
    }
}
