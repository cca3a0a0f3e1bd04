//! The pure core: (desired, observed, now, settings) → what to do for each flight. No I/O.
//!
//! Each flight gets an ordered list of [`Step`]s for this pass (kube-rs style: one reconcile per
//! object); [`retry_delay`] is the matching error policy. A new flight with `settle = 0` is
//! created, uploaded and committed in one pass; the pass after that has nothing to do.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::clients::webodm::Grantee;
use crate::config::{OnChange, RetryConfig};
use crate::engine::access::Access;
use crate::engine::discover::{Desired, Flight, Image};
use crate::engine::state::{Fingerprint, FlightKey, FlightRecord, Phase, UploadedImage};

/// Settings that shape a plan.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a listing must stay unchanged before commit.
    pub settle: Duration,
    /// Projects created per pass at most.
    pub max_new_projects: usize,
    /// What a change after commit leads to.
    pub on_change: OnChange,
    /// Restarts of a FAILED task before the flight is marked failed.
    pub restart_failed: u32,
    /// Result assets copied back to Tapis once processed (empty: none).
    pub result_assets: Vec<String>,
}

/// What WebODM holds now: project id → its task ids.
pub type WebodmView = BTreeMap<i64, BTreeSet<String>>;

/// What the store knows, as [`plan`] needs it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every flight record.
    pub records: BTreeMap<FlightKey, FlightRecord>,
    /// Confirmed images of every flight not yet committed.
    pub uploaded: BTreeMap<FlightKey, BTreeMap<String, UploadedImage>>,
    /// What WebODM holds now (`None` when it could not be listed; drift is then not checked
    /// this pass).
    pub webodm: Option<WebodmView>,
    /// Who should see the projects, per system (no entry: no grant this pass).
    pub access: BTreeMap<String, Access>,
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
    /// Give these WebODM users and groups access to the project (an entry with
    /// `access.permissions` for each that has none; nothing else changes).
    GrantAccess {
        /// Who, as shown (`alice`, `group lab-x`).
        #[serde(serialize_with = "shown_grantees")]
        grantees: BTreeSet<Grantee>,
    },
    /// Record who waits for a WebODM account and who Tapis no longer lists (shown in `status`;
    /// nothing changes in WebODM).
    NoteAccess {
        /// WebODM usernames without an account yet.
        waiting: BTreeSet<String>,
        /// Users granted earlier whom Tapis no longer lists (their access is kept).
        unshared: BTreeSet<String>,
    },
    /// Read the committed task once and record its processing (status, error, time, assets).
    PollTask,
    /// The task FAILED: read it, and if it still is, ask WebODM to process it again.
    RestartTask {
        /// Which restart of this task this is (1 for the first).
        attempt: u32,
    },
    /// Processing completed: stream these assets from WebODM into
    /// `<Flight>/<results.dir>/` on Tapis, never overwriting a file the daemon did not write.
    CopyResults {
        /// Assets WebODM offers that are not on Tapis yet.
        assets: Vec<String>,
        /// Configured assets WebODM does not offer for this task: recorded and reported once.
        unavailable: Vec<String>,
    },
}

fn shown_grantees<S: serde::Serializer>(g: &BTreeSet<Grantee>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(g.iter().map(crate::engine::access::shown))
}

/// Everything to do for one flight this pass.
#[derive(Debug, Clone, Serialize)]
pub struct FlightPlan {
    /// The flight as listed now (without images when it was not listed this pass).
    #[serde(skip)]
    pub flight: Flight,
    /// Whether the images folder was listed this pass (else the recorded listing stands).
    #[serde(skip)]
    pub listed: bool,
    /// The listing's summary: this pass's when listed, else the recorded one.
    #[serde(skip)]
    pub fingerprint: Fingerprint,
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

impl FlightPlan {
    /// Drops the image lists (kept only while the plan is applied), leaving counts: what a
    /// dry run or a pass report keeps of a plan, so it stays O(flights) in memory.
    pub fn without_images(mut self) -> FlightPlan {
        self.flight.images = Vec::new();
        for step in &mut self.steps {
            if let Step::Upload { images, .. } = step {
                *images = Vec::new();
            }
        }
        self
    }
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
    /// Tasks whose processing this plan reads (polls and restarts).
    pub fn polls(&self) -> usize {
        self.count(|s| matches!(s, Step::PollTask | Step::RestartTask { .. }))
    }
    /// Restarts of failed tasks this plan attempts.
    pub fn restarts(&self) -> usize {
        self.count(|s| matches!(s, Step::RestartTask { .. }))
    }
    /// Result assets this plan copies back to Tapis.
    pub fn result_copies(&self) -> usize {
        self.steps()
            .map(|s| match s {
                Step::CopyResults { assets, .. } => assets.len(),
                _ => 0,
            })
            .sum()
    }
    /// Grants this plan makes (grantees over all flights).
    pub fn grants(&self) -> usize {
        self.steps()
            .map(|s| match s {
                Step::GrantAccess { grantees } => grantees.len(),
                _ => 0,
            })
            .sum()
    }
    /// Whether the plan changes anything in WebODM or writes anything on Tapis (reading a
    /// task's processing status changes nothing).
    pub fn is_noop(&self) -> bool {
        self.steps().all(|s| {
            matches!(
                s,
                Step::WarnChangedAfterCommit
                    | Step::MarkDeleted { .. }
                    | Step::NoteAccess { .. }
                    | Step::PollTask
            )
        })
    }
    /// Adds one flight's outcome.
    pub fn add(&mut self, planned: Planned) {
        self.flights.extend(planned.plan);
        self.waiting.extend(planned.waiting);
    }
    fn steps(&self) -> impl Iterator<Item = &Step> {
        self.flights.iter().flat_map(|f| f.steps.iter())
    }
    fn count(&self, f: impl Fn(&Step) -> bool) -> usize {
        self.steps().filter(|s| f(s)).count()
    }
}

/// What planning one flight gave: its work (if any) and why it waits (if it does).
#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// Steps to run, or only a changed listing to record.
    pub plan: Option<FlightPlan>,
    /// Why (some of) its work waits for a later pass.
    pub waiting: Option<Waiting>,
}

/// Plans one flight at a time, as listings come in (kube-rs style: one reconcile per object,
/// [`retry_delay`] its error policy). Pure: the caller brings the records and listings.
#[derive(Debug)]
pub struct Planner<'a> {
    settings: &'a Settings,
    webodm: Option<&'a WebodmView>,
    now_ms: i64,
    new_projects: usize,
}

impl<'a> Planner<'a> {
    /// A planner for one pass at `now_ms`, with what WebODM holds (for drift checks).
    pub fn new(settings: &'a Settings, webodm: Option<&'a WebodmView>, now_ms: i64) -> Self {
        Planner {
            settings,
            webodm,
            now_ms,
            new_projects: 0,
        }
    }

    /// Plans one flight. `listed` says whether `flight` carries a fresh listing of its images;
    /// when it does not (a committed flight whose recheck is not due), the recorded listing
    /// stands. `uploaded` holds the images WebODM confirmed for its current task.
    pub fn flight(
        &mut self,
        flight: Flight,
        listed: bool,
        rec: Option<&FlightRecord>,
        uploaded: Option<&BTreeMap<String, UploadedImage>>,
        access: Option<&Access>,
    ) -> Planned {
        let settings = self.settings;
        let now_ms = self.now_ms;
        let key = flight.key.clone();
        let wait = |reason: String| {
            Some(Waiting {
                system_id: key.system.clone(),
                flight_name: key.flight.clone(),
                reason,
            })
        };
        let fingerprint = match (listed, rec) {
            (false, Some(r)) => r.listing,
            _ => flight.fingerprint(),
        };
        let listing_since_ms = match rec {
            Some(r) if r.listing == fingerprint => r.listing_since_ms,
            _ => now_ms,
        };
        let settled = now_ms.saturating_sub(listing_since_ms) >= settings.settle.as_millis() as i64;
        let listing_changed = rec.is_none_or(|r| {
            r.listing != fingerprint || r.vanished_ms.is_some() || r.listing_error.is_some()
        });
        let mut out = Planned::default();
        let mut steps = Vec::new();
        let mut task_vanished = false;
        let make = |flight: Flight, steps: Vec<Step>| FlightPlan {
            flight,
            listed,
            fingerprint,
            system_id: key.system.clone(),
            flight_name: key.flight.clone(),
            listing_since_ms,
            settled,
            steps,
        };
        match rec.and_then(|r| drift(r, self.webodm)) {
            Some(Drift::Deleted(what)) => {
                out.plan = Some(make(flight, vec![Step::MarkDeleted { what }]));
                return out;
            }
            Some(Drift::TaskVanished(task)) => {
                task_vanished = true;
                steps.push(Step::ReplaceVanishedTask { task });
            }
            None => {}
        }
        // Whether the flight has (or gets in this plan) a project that can be shared.
        let mut shareable = true;
        match rec {
            Some(r) if r.phase == Phase::DeletedInWebodm => {
                shareable = false;
                out.waiting =
                    wait("deleted in WebODM by a person; run `forget` to sync it again".into());
            }
            Some(r) if r.next_attempt_ms.is_some_and(|t| t > now_ms) => {
                shareable = false;
                out.waiting = wait(format!(
                    "retrying after {} (last error: {})",
                    crate::engine::state::rfc3339(r.next_attempt_ms.unwrap_or(0)),
                    r.last_error.as_deref().unwrap_or("none")
                ));
            }
            Some(r) if r.phase.is_committed() => {
                let changed = r.committed_listing.is_some_and(|c| c != fingerprint);
                let mut new_task = false;
                match settings.on_change {
                    OnChange::Warn if changed && !r.change_warned => {
                        steps.push(Step::WarnChangedAfterCommit);
                    }
                    OnChange::NewTask if changed && settled => {
                        new_task = true;
                        steps.push(Step::StartUpdateTask {
                            generation: r.generation + 1,
                        });
                        steps.push(Step::EnsureTask);
                        steps.extend(upload_step(&flight, None));
                        steps.push(Step::Commit);
                    }
                    OnChange::NewTask if changed => out.waiting = wait(
                        "images changed after commit; a new task with every image follows once the listing has settled".into(),
                    ),
                    _ => {}
                }
                if !new_task {
                    match after_commit(r, settings, now_ms) {
                        Ok(Some(step)) => steps.push(step),
                        Ok(None) => {}
                        Err(reason) => {
                            out.waiting = out.waiting.take().or_else(|| wait(reason));
                        }
                    }
                }
            }
            _ => {
                if rec.is_none_or(|r| r.project_id.is_none()) {
                    if self.new_projects >= settings.max_new_projects {
                        out.waiting = wait(format!(
                            "max_new_projects_per_pass ({}) reached",
                            settings.max_new_projects
                        ));
                        return out;
                    }
                    self.new_projects += 1;
                    steps.push(Step::EnsureProject {
                        name: crate::engine::naming::project_name(&key),
                    });
                }
                if task_vanished || rec.is_none_or(|r| r.task_id.is_none()) {
                    steps.push(Step::EnsureTask);
                }
                let done = uploaded.filter(|_| !task_vanished);
                steps.extend(upload_step(&flight, done));
                if settled {
                    steps.push(Step::Commit);
                } else {
                    out.waiting = wait(format!(
                        "settling: listing changed at {}; commit waits until it is unchanged for {}",
                        crate::engine::state::rfc3339(listing_since_ms),
                        humantime::format_duration(settings.settle)
                    ));
                }
            }
        }
        if let (true, Some(access)) = (shareable, access) {
            steps.extend(access_steps(rec, access));
        }
        if !steps.is_empty() || (listed && listing_changed) {
            out.plan = Some(make(flight, steps));
        }
        out
    }
}

/// What sharing a flight's project needs this pass: a grant for whoever should see it and was
/// not granted yet, and a note when who waits for an account or who Tapis stopped listing
/// changed.
fn access_steps(rec: Option<&FlightRecord>, access: &Access) -> Vec<Step> {
    let mut steps = Vec::new();
    let granted = rec.map(|r| &r.granted);
    let unshared: BTreeSet<String> = granted
        .into_iter()
        .flatten()
        .filter_map(|g| match g {
            Grantee::User(u) if !access.grantees.contains(g) && !access.waiting.contains(u) => {
                Some(u.clone())
            }
            _ => None,
        })
        .collect();
    let (was_waiting, was_unshared) = match rec {
        Some(r) => (&r.access_waiting, &r.unshared),
        None => (&BTreeSet::new(), &BTreeSet::new()),
    };
    // Noted first: a grant that finds more users without an account adds them after.
    if &access.waiting != was_waiting || &unshared != was_unshared {
        steps.push(Step::NoteAccess {
            waiting: access.waiting.clone(),
            unshared,
        });
    }
    let grantees: BTreeSet<Grantee> = access
        .grantees
        .iter()
        .filter(|g| !granted.is_some_and(|done| done.contains(g)))
        .cloned()
        .collect();
    if !grantees.is_empty() {
        steps.push(Step::GrantAccess { grantees });
    }
    steps
}

/// What follows a commit, from what the last read of the task recorded: a read of the task
/// while it is processing (one per pass), a restart once a failed task's restart is due, and
/// the copy of the results once it completed. `Err` says why the flight waits.
fn after_commit(
    r: &FlightRecord,
    settings: &Settings,
    now_ms: i64,
) -> Result<Option<Step>, String> {
    let p = &r.processing;
    if r.follows_processing() {
        let failed = p.status == Some(30) && p.pending_action.is_none();
        if !failed || p.restarts >= settings.restart_failed {
            // A failure without restarts left is recorded as final by the read.
            return Ok(Some(Step::PollTask));
        }
        return match p.restart_at_ms {
            Some(at) if at > now_ms => Err(format!(
                "processing failed ({}); restart {} of {} at {}",
                p.error
                    .as_deref()
                    .unwrap_or(crate::engine::processing::NO_MESSAGE),
                p.restarts + 1,
                settings.restart_failed,
                crate::engine::state::rfc3339(at)
            )),
            _ => Ok(Some(Step::RestartTask {
                attempt: p.restarts + 1,
            })),
        };
    }
    let finished = matches!(r.phase, Phase::Completed | Phase::ResultsWritten);
    if !finished || settings.result_assets.is_empty() {
        return Ok(None);
    }
    let (mut assets, mut unavailable) = (Vec::new(), Vec::new());
    for asset in &settings.result_assets {
        if r.results
            .get(asset)
            .is_some_and(|a| a.settled_for(r.generation))
        {
            continue;
        }
        if p.assets.contains(asset) {
            assets.push(asset.clone());
        } else {
            unavailable.push(asset.clone());
        }
    }
    let pending = !assets.is_empty() || !unavailable.is_empty();
    Ok(
        (pending || r.phase == Phase::Completed).then_some(Step::CopyResults {
            assets,
            unavailable,
        }),
    )
}

/// Computes the plan of one pass from a whole listing (for tests and benchmarks; a pass plans
/// each flight as its listing comes in).
pub fn plan(desired: &Desired, observed: &Observed, now_ms: i64, settings: &Settings) -> Plan {
    let mut out = Plan::default();
    let mut planner = Planner::new(settings, observed.webodm.as_ref(), now_ms);
    for flight in &desired.flights {
        let key = &flight.key;
        out.add(planner.flight(
            flight.clone(),
            true,
            observed.records.get(key),
            observed.uploaded.get(key),
            observed.access.get(&key.system),
        ));
    }
    let listed: BTreeSet<&FlightKey> = desired.flights.iter().map(|f| &f.key).collect();
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

/// Whether a flight's images folder is listed this pass, as far as its own record tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Always listed: not settled (uncommitted, or a change after commit waits for its new
    /// task), never checked, vanished, its last listing failed, or `recheck` is zero.
    Always,
    /// Settled, and its recheck came due at this time (unix ms).
    Due(i64),
    /// Settled, and not due before this time (unix ms).
    NotDue(i64),
}

/// Where a flight stands against its recheck (`sync.recheck_committed`): a settled flight
/// (committed, or deleted in WebODM) is listed once per `recheck` period, at a point of the
/// period fixed by its key, so each pass lists about `interval / recheck` of them.
pub fn recheck(rec: &FlightRecord, now_ms: i64, recheck: Duration, on_change: OnChange) -> Recheck {
    let settled_phase = rec.phase.is_committed() || rec.phase == Phase::DeletedInWebodm;
    let unchanged = rec.committed_listing == Some(rec.listing)
        || (on_change == OnChange::Warn && rec.change_warned)
        || rec.phase == Phase::DeletedInWebodm;
    if recheck.is_zero()
        || !settled_phase
        || !unchanged
        || rec.vanished_ms.is_some()
        || rec.listing_error.is_some()
    {
        return Recheck::Always;
    }
    let Some(last) = rec.last_checked_ms else {
        return Recheck::Always;
    };
    let next = next_recheck(&rec.key, last, recheck);
    if next <= now_ms {
        Recheck::Due(next)
    } else {
        Recheck::NotDue(next)
    }
}

/// Whether a flight's images folder needs listing this pass, by its own record alone (see
/// [`recheck`]; [`unlisted`] also spreads the due ones).
pub fn recheck_due(
    rec: &FlightRecord,
    now_ms: i64,
    recheck_every: Duration,
    on_change: OnChange,
) -> bool {
    !matches!(
        recheck(rec, now_ms, recheck_every, on_change),
        Recheck::NotDue(_)
    )
}

/// The settled flights whose images folder this pass does not list: those not due, and — when
/// more came due than `⌈settled × interval / recheck⌉` (slots fall where their hashes put them,
/// so some windows of the period hold more) — the ones that came due last, left for the next
/// pass. A flight a whole period overdue is listed whatever the count, so every settled flight
/// is listed at least once per `recheck` + a few passes.
pub fn unlisted<'a>(
    records: impl IntoIterator<Item = &'a FlightRecord>,
    now_ms: i64,
    recheck_every: Duration,
    interval: Duration,
    on_change: OnChange,
) -> HashSet<FlightKey> {
    let mut out = HashSet::new();
    if recheck_every.is_zero() {
        return out;
    }
    let (mut settled, mut due) = (0usize, Vec::new());
    for r in records {
        match recheck(r, now_ms, recheck_every, on_change) {
            Recheck::Always => {}
            Recheck::NotDue(_) => {
                settled += 1;
                out.insert(r.key.clone());
            }
            Recheck::Due(at) => {
                settled += 1;
                due.push((at, &r.key));
            }
        }
    }
    let per_pass = ((settled as u128 * interval.as_millis())
        .div_ceil(recheck_every.as_millis().max(1)))
    .max(1) as usize;
    if due.len() > per_pass {
        due.sort();
        let period = recheck_every.as_millis() as i64;
        for (at, key) in due.into_iter().skip(per_pass) {
            if now_ms - at < period {
                out.insert(key.clone());
            }
        }
    }
    out
}

/// When a settled flight last checked at `last` is listed next (unix ms).
pub fn next_recheck(key: &FlightKey, last: i64, recheck: Duration) -> i64 {
    let period = recheck.as_millis().max(1) as i64;
    let slot = recheck_slot(key, period);
    slot + ((last - slot).div_euclid(period) + 1) * period
}

/// The flight's fixed point in the recheck period (ms): a stable hash of its key.
fn recheck_slot(key: &FlightKey, period_ms: i64) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}/{}", key.system, key.flight).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % period_ms as u64) as i64
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
fn drift(rec: &FlightRecord, webodm: Option<&WebodmView>) -> Option<Drift> {
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
            companion: name.ends_with(".txt"),
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
            restart_failed: 1,
            result_assets: vec![],
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
        // Processed, results off: nothing left to follow.
        let mut rec = record(&f, Phase::Completed, 0);
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
        assert_eq!(
            early.flights[0].steps,
            [Step::PollTask],
            "waits to settle, following the committed task meanwhile"
        );
        assert!(early.waiting[0].reason.contains("after commit"));
        s.settle = Duration::ZERO;
        let p = plan(&grown, &obs, 10, &s);
        let steps = &p.flights[0].steps;
        assert_eq!(steps[0], Step::StartUpdateTask { generation: 1 });
        assert_eq!(steps[1], Step::EnsureTask);
        assert!(
            !steps.contains(&Step::PollTask),
            "the old task is no longer followed"
        );
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
            max_new_projects: 2,
            ..settings(0)
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

    /// A committed flight as a pass sees it when its folder was not listed (recheck not due).
    fn committed(phase: Phase) -> (Flight, FlightRecord) {
        let f = flight("s", "F1", &[("a.jpg", 3), ("geo.txt", 2)]);
        let mut rec = record(&f, phase, 0);
        rec.committed_listing = Some(f.fingerprint());
        (Flight::unlisted(f.key.clone(), "code/images"), rec)
    }

    fn plan_one(f: &Flight, rec: &FlightRecord, now: i64, s: &Settings) -> Planned {
        Planner::new(s, None, now).flight(f.clone(), false, Some(rec), None, None)
    }

    fn steps(p: &Planned) -> Vec<Step> {
        p.plan.as_ref().map(|f| f.steps.clone()).unwrap_or_default()
    }

    #[test]
    fn processing_is_read_once_per_pass_until_it_ends() {
        let s = settings(0);
        for phase in [Phase::Committed, Phase::Processing] {
            let (f, rec) = committed(phase);
            assert_eq!(steps(&plan_one(&f, &rec, 10, &s)), [Step::PollTask]);
        }
        // Reading changes nothing, also when the images changed after commit.
        let f = flight("s", "F1", &[("a.jpg", 3)]);
        let mut rec = record(&f, Phase::Committed, 0);
        rec.committed_listing = Some(f.fingerprint());
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec);
        let grown = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("b.jpg", 1)])]);
        let p = plan(&grown, &obs, 10, &s);
        assert_eq!(
            p.flights[0].steps,
            vec![Step::WarnChangedAfterCommit, Step::PollTask]
        );
        assert!(p.is_noop() && p.polls() == 1);
        for phase in [
            Phase::Completed,
            Phase::ResultsWritten,
            Phase::Failed,
            Phase::Canceled,
        ] {
            let (f, rec) = committed(phase);
            let p = plan_one(&f, &rec, 10, &s);
            assert!(steps(&p).is_empty(), "{phase:?} is not followed");
            assert!(p.waiting.is_none());
        }
        // The error policy comes first: a flight whose last read failed waits.
        let (f, mut rec) = committed(Phase::Processing);
        rec.next_attempt_ms = Some(20);
        rec.last_error = Some("HTTP 502".into());
        let p = plan_one(&f, &rec, 10, &s);
        assert!(steps(&p).is_empty());
        assert!(p.waiting.unwrap().reason.contains("HTTP 502"));
    }

    #[test]
    fn a_failed_task_is_restarted_when_due_and_up_to_the_limit() {
        let s = settings(0);
        let (f, mut rec) = committed(Phase::Processing);
        rec.processing.status = Some(30);
        rec.processing.error = Some("Cannot process dataset".into());
        rec.processing.restart_at_ms = Some(5_000);
        let early = plan_one(&f, &rec, 4_999, &s);
        assert!(steps(&early).is_empty());
        let why = early.waiting.unwrap().reason;
        assert!(
            why.contains("Cannot process dataset") && why.contains("restart 1 of 1"),
            "{why}"
        );
        assert_eq!(
            steps(&plan_one(&f, &rec, 5_000, &s)),
            [Step::RestartTask { attempt: 1 }]
        );
        // A restart waiting for WebODM's worker still shows FAILED: read it again.
        rec.processing.pending_action = Some(3);
        assert_eq!(steps(&plan_one(&f, &rec, 5_000, &s)), [Step::PollTask]);
        // No restart left: the read marks it failed.
        rec.processing.pending_action = None;
        rec.processing.restarts = 1;
        assert_eq!(steps(&plan_one(&f, &rec, 9_000, &s)), [Step::PollTask]);
        let two = Settings {
            restart_failed: 2,
            ..settings(0)
        };
        rec.processing.restart_at_ms = Some(8_000);
        assert_eq!(
            steps(&plan_one(&f, &rec, 9_000, &two)),
            [Step::RestartTask { attempt: 2 }]
        );
    }

    #[test]
    fn results_are_copied_once_processed_and_unavailable_ones_reported() {
        use crate::engine::state::{AssetResult, AssetState};
        let (f, mut rec) = committed(Phase::Completed);
        rec.processing.assets = vec!["orthophoto.tif".into(), "dsm.tif".into()];
        assert!(
            steps(&plan_one(&f, &rec, 10, &settings(0))).is_empty(),
            "results off"
        );
        let s = Settings {
            result_assets: vec!["orthophoto.tif".into(), "dtm.tif".into(), "dsm.tif".into()],
            ..settings(0)
        };
        assert_eq!(
            steps(&plan_one(&f, &rec, 10, &s)),
            [Step::CopyResults {
                assets: vec!["orthophoto.tif".into(), "dsm.tif".into()],
                unavailable: vec!["dtm.tif".into()],
            }]
        );
        let done = |state| AssetResult {
            generation: 0,
            path: String::new(),
            state,
        };
        rec.results.insert(
            "orthophoto.tif".into(),
            done(AssetState::Written {
                size: 9,
                by_daemon: true,
            }),
        );
        rec.results
            .insert("dtm.tif".into(), done(AssetState::Unavailable));
        // An intent is no outcome: the daemon's half-written file is written again.
        rec.results
            .insert("dsm.tif".into(), done(AssetState::Writing { size: 7 }));
        assert_eq!(
            steps(&plan_one(&f, &rec, 10, &s)),
            [Step::CopyResults {
                assets: vec!["dsm.tif".into()],
                unavailable: vec![],
            }]
        );
        rec.results.insert(
            "dsm.tif".into(),
            done(AssetState::Conflict {
                found: Some(1),
                expected: 7,
            }),
        );
        // Everything settled, still `completed`: the step only moves the phase on.
        assert_eq!(
            steps(&plan_one(&f, &rec, 10, &s)),
            [Step::CopyResults {
                assets: vec![],
                unavailable: vec![],
            }]
        );
        rec.phase = Phase::ResultsWritten;
        assert!(steps(&plan_one(&f, &rec, 10, &s)).is_empty());
        // A new task (generation) writes its results again.
        rec.generation = 1;
        assert!(matches!(
            &steps(&plan_one(&f, &rec, 10, &s))[..],
            [Step::CopyResults { assets, unavailable }] if assets.len() == 2 && unavailable.len() == 1
        ));
    }

    #[test]
    fn companion_files_are_uploaded_and_count_toward_settling() {
        let d = desired(vec![flight("s", "F1", &[("a.jpg", 3), ("geo.txt", 2)])]);
        let p = plan(&d, &Observed::default(), 1_000, &settings(0));
        assert!(matches!(
            &p.flights[0].steps[2],
            Step::Upload {
                count: 2,
                bytes: 5,
                ..
            }
        ));
        assert_eq!(p.flights[0].fingerprint.count, 2);
        // A companion file arriving late resets the settle clock like an image.
        let f = flight("s", "F1", &[("a.jpg", 3)]);
        let mut obs = Observed::default();
        obs.records
            .insert(f.key.clone(), record(&f, Phase::Uploading, 0));
        obs.uploaded
            .insert(f.key.clone(), uploaded(&[("a.jpg", 3)]));
        let p = plan(&d, &obs, 600_000, &settings(600));
        assert_eq!(p.flights[0].listing_since_ms, 600_000);
        assert!(!p.flights[0].steps.contains(&Step::Commit));
    }

    #[test]
    fn rechecks_are_spread_over_the_period_and_never_all_at_once() {
        let period = Duration::from_secs(6 * 3600);
        let interval = Duration::from_secs(5 * 60);
        let step = interval.as_millis() as i64;
        let committed_at: i64 = 1_700_000_000_000;
        let n = 2000;
        let mut recs: Vec<FlightRecord> = (0..n)
            .map(|i| {
                let f = flight("s", &format!("F{i}"), &[("a.jpg", 1)]);
                let mut r = record(&f, Phase::Committed, 0);
                r.committed_listing = Some(r.listing);
                r.last_checked_ms = Some(committed_at);
                r
            })
            .collect();
        // Passes every 5 minutes for three periods: each lists at most
        // ⌈flights × interval / recheck⌉, and every flight about once per period.
        let cap = (n * 5usize).div_ceil(360);
        let passes = 3 * (period.as_millis() as i64) / step;
        let mut per_pass = Vec::new();
        let mut gaps = Vec::new();
        for p in 1..=passes {
            let now = committed_at + p * step;
            let skip = unlisted(&recs, now, period, interval, OnChange::Warn);
            let mut listed = 0;
            for r in &mut recs {
                if !skip.contains(&r.key) {
                    let last = r.last_checked_ms.unwrap();
                    assert!(
                        next_recheck(&r.key, last, period) <= now,
                        "listed before due"
                    );
                    gaps.push(now - last);
                    r.last_checked_ms = Some(now);
                    listed += 1;
                }
            }
            per_pass.push(listed);
        }
        assert!(per_pass.iter().all(|&l| l <= cap), "{per_pass:?} > {cap}");
        let total: usize = per_pass.iter().sum();
        assert!(total >= 3 * n - n / 10, "about once per period: {total}");
        let longest = *gaps.iter().max().unwrap();
        assert!(
            longest <= period.as_millis() as i64 + 6 * step,
            "a flight waited {longest} ms"
        );
        // Not due for the uncommitted, the never-checked, the changed, the vanished.
        let f = flight("s", "G", &[("a.jpg", 1)]);
        let mut r = record(&f, Phase::Uploading, 0);
        r.last_checked_ms = Some(committed_at);
        assert!(recheck_due(&r, committed_at + 1, period, OnChange::Warn));
        r.phase = Phase::Committed;
        r.committed_listing = Some(r.listing);
        assert_eq!(
            recheck_due(&r, committed_at + 1, period, OnChange::Warn),
            next_recheck(&r.key, committed_at, period) <= committed_at + 1
        );
        r.vanished_ms = Some(1);
        assert_eq!(
            recheck(&r, committed_at + 1, period, OnChange::Warn),
            Recheck::Always
        );
        r.vanished_ms = None;
        r.committed_listing = Some(Fingerprint::default());
        assert!(recheck_due(&r, committed_at + 1, period, OnChange::NewTask));
        assert!(recheck_due(
            &r,
            committed_at + 1,
            Duration::ZERO,
            OnChange::Warn
        ));
        r.last_checked_ms = None;
        r.committed_listing = Some(r.listing);
        assert!(recheck_due(&r, committed_at + 1, period, OnChange::Warn));
    }

    #[test]
    fn grants_cover_who_is_missing_and_notes_who_waits() {
        use crate::clients::webodm::Grantee;
        let f = flight("s", "F1", &[("a.jpg", 1)]);
        // Processed (results off): nothing follows but sharing.
        let mut rec = record(&f, Phase::Completed, 0);
        rec.committed_listing = Some(rec.listing);
        rec.granted = [Grantee::User("alice".into()), Grantee::User("old".into())].into();
        let access = Access {
            grantees: [
                Grantee::User("alice".into()),
                Grantee::User("bob".into()),
                Grantee::Group("lab-x".into()),
            ]
            .into(),
            waiting: ["carol".to_string()].into(),
        };
        let mut obs = Observed::default();
        obs.records.insert(f.key.clone(), rec.clone());
        obs.access.insert("s".into(), access.clone());
        let d = desired(vec![f.clone()]);
        let p = plan(&d, &obs, 10, &settings(0));
        assert_eq!(
            p.flights[0].steps,
            vec![
                Step::NoteAccess {
                    waiting: ["carol".to_string()].into(),
                    unshared: ["old".to_string()].into(),
                },
                Step::GrantAccess {
                    grantees: [Grantee::User("bob".into()), Grantee::Group("lab-x".into())].into()
                },
            ]
        );
        assert_eq!(p.grants(), 2);
        assert!(!p.is_noop());
        // Once granted and noted: nothing at all.
        rec.granted.insert(Grantee::User("bob".into()));
        rec.granted.insert(Grantee::Group("lab-x".into()));
        rec.access_waiting = ["carol".to_string()].into();
        rec.unshared = ["old".to_string()].into();
        obs.records.insert(f.key.clone(), rec.clone());
        assert!(plan(&d, &obs, 10, &settings(0)).flights.is_empty());
        // No access resolved for the system (its share list could not be read): no grant.
        obs.access.clear();
        rec.granted.clear();
        obs.records.insert(f.key.clone(), rec);
        assert!(plan(&d, &obs, 10, &settings(0)).flights.is_empty());
        // A new flight is granted after its project is created, in the same plan.
        obs.access.insert("s".into(), access);
        obs.records.clear();
        let p = plan(&d, &obs, 10, &settings(0));
        let steps = &p.flights[0].steps;
        assert!(matches!(steps[0], Step::EnsureProject { .. }));
        assert!(
            matches!(steps.last(), Some(Step::GrantAccess { grantees }) if grantees.len() == 3)
        );
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let r = RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
            listing_elapsed: Duration::from_secs(60),
        };
        assert_eq!(retry_delay(1, &r), Duration::from_secs(1));
        assert_eq!(retry_delay(3, &r), Duration::from_secs(4));
        assert_eq!(retry_delay(40, &r), Duration::from_secs(10));
    }
}
