//! What `status`, `/status` and the status snapshot show: one row per flight in the store.
//!
//! sled lets one process open a store, so the running daemon writes `<state_dir>/status.json`
//! (atomically: temp file + rename) at start, every few seconds during a pass and after each
//! pass; `status` reads it when the daemon holds the state dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::state::{FlightRecord, Phase, StateError, Store};
use crate::engine::PassSummary;

/// The snapshot's file name inside the state dir.
pub const SNAPSHOT_FILE: &str = "status.json";

/// One row of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRow {
    /// Tapis system.
    pub system_id: String,
    /// Flight folder.
    pub flight_name: String,
    /// Phase (`vanished` while the folder is gone).
    pub phase: String,
    /// Files WebODM confirmed (images and companion files).
    pub images_uploaded: u64,
    /// Files listed (images and companion files).
    pub images_total: u64,
    /// WebODM project.
    pub project_id: Option<i64>,
    /// WebODM task.
    pub task_id: Option<String>,
    /// The task's state as far as the daemon knows: `partial` (taking images), `committed`
    /// (not read since), then what the last read of it showed: `waiting for a processing
    /// node`, `no processing node`, `queued`, `running`, `restarting`, `failed`, `completed`,
    /// `canceled`; `deleted` when a person deleted it.
    pub task_status: Option<String>,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Next attempt after a failure (RFC 3339).
    pub next_attempt_at: Option<String>,
    /// Why the last listing of the flight (or its system) failed; the flight is left as it was
    /// and listed again next pass.
    #[serde(default)]
    pub listing_error: Option<String>,
    /// When its images folder was last listed on Tapis (RFC 3339); a committed flight is
    /// listed again once per `sync.recheck_committed`.
    #[serde(default)]
    pub last_checked_at: Option<String>,
    /// Since when `last_error` has been the same (RFC 3339).
    #[serde(default)]
    pub error_since: Option<String>,
    /// WebODM users and groups the project is shared with.
    #[serde(default)]
    pub shared_with: Vec<String>,
    /// WebODM usernames that should see the project but have no account yet.
    #[serde(default)]
    pub access_waiting: Vec<String>,
    /// Users granted earlier whom Tapis no longer lists (their access is kept).
    #[serde(default)]
    pub unshared: Vec<String>,
    /// Since when the flight has been in its phase (RFC 3339).
    #[serde(default)]
    pub phase_since: Option<String>,
    /// How long WebODM took to process the task (ms), once known.
    #[serde(default)]
    pub processing_time_ms: Option<i64>,
    /// Restarts of the failed task the daemon asked for.
    #[serde(default)]
    pub restarts: u32,
    /// WebODM's error of the last failed processing attempt (also while a restart is due).
    #[serde(default)]
    pub processing_error: Option<String>,
    /// When the failed task's next restart is due (RFC 3339).
    #[serde(default)]
    pub restart_at: Option<String>,
    /// Result assets on Tapis for the current task (written, or found at the right size).
    #[serde(default)]
    pub results_written: Vec<String>,
    /// Result assets left unwritten because a file the daemon did not write is in the way,
    /// one `results conflict: …` line each.
    #[serde(default)]
    pub results_conflicts: Vec<String>,
    /// Configured result assets WebODM does not offer for the task.
    #[serde(default)]
    pub results_unavailable: Vec<String>,
    /// What needs a person that is no error of the daemon's: "no processing node: …", or the
    /// results conflicts.
    #[serde(default)]
    pub notice: Option<String>,
}

impl StatusRow {
    /// The row of one record.
    pub fn of(r: &FlightRecord) -> StatusRow {
        use crate::engine::state::AssetState;
        let mut written = Vec::new();
        let mut conflicts = Vec::new();
        let mut unavailable = Vec::new();
        for (asset, res) in r
            .results
            .iter()
            .filter(|(_, a)| a.generation == r.generation)
        {
            match res.state {
                AssetState::Written { .. } => written.push(asset.clone()),
                AssetState::Conflict { found, expected } => conflicts.push(
                    crate::engine::results::conflict_message(&res.path, asset, found, expected),
                ),
                AssetState::Unavailable => unavailable.push(asset.clone()),
                AssetState::Writing { .. } => {}
            }
        }
        let p = &r.processing;
        let following = r.phase.is_committed() && r.phase != Phase::DeletedInWebodm;
        let notice = if p.no_node && r.follows_processing() {
            Some(crate::engine::processing::NO_NODE.to_string())
        } else if !conflicts.is_empty() {
            Some(conflicts.join("; "))
        } else {
            None
        };
        StatusRow {
            system_id: r.key.system.clone(),
            flight_name: r.key.flight.clone(),
            phase: r.shown_phase().to_string(),
            images_uploaded: r.images_uploaded,
            images_total: r.images_total,
            project_id: r.project_id,
            task_id: r.task_id.clone(),
            task_status: r.task_id.as_ref().map(|_| match r.phase {
                Phase::DeletedInWebodm => "deleted".to_string(),
                p if p.is_committed() => crate::engine::processing::describe(r)
                    .unwrap_or_else(|| "committed".to_string()),
                _ => "partial".to_string(),
            }),
            last_error: r.last_error.clone(),
            next_attempt_at: r.next_attempt_ms.map(crate::engine::state::rfc3339),
            listing_error: r.listing_error.clone(),
            last_checked_at: r.last_checked_ms.map(crate::engine::state::rfc3339),
            error_since: r
                .last_error
                .as_ref()
                .and(r.error_since_ms)
                .map(crate::engine::state::rfc3339),
            shared_with: r.granted.iter().map(crate::engine::access::shown).collect(),
            access_waiting: r.access_waiting.iter().cloned().collect(),
            unshared: r.unshared.iter().cloned().collect(),
            phase_since: r.phase_since_ms.map(crate::engine::state::rfc3339),
            processing_time_ms: p.time_ms.filter(|_| following),
            restarts: p.restarts,
            processing_error: p.error.clone().filter(|_| following),
            restart_at: p
                .restart_at_ms
                .filter(|_| r.follows_processing())
                .map(crate::engine::state::rfc3339),
            results_written: written,
            results_conflicts: conflicts,
            results_unavailable: unavailable,
            notice,
        }
    }

    /// Whether the flight has failed the same way for longer than `stuck_after` at `now_ms`.
    pub fn is_stuck(&self, stuck_after: std::time::Duration, now_ms: i64) -> bool {
        self.last_error.is_some()
            && self
                .error_since
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map(crate::engine::state::to_ms)
                .is_some_and(|since| now_ms - since >= stuck_after.as_millis() as i64)
    }
}

/// Every flight of the store, ordered by key.
pub fn rows(store: &Store) -> Result<Vec<StatusRow>, StateError> {
    Ok(store.flights()?.iter().map(StatusRow::of).collect())
}

/// A finished pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastPass {
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// How many errors it had (`summary.errors` may be cut short in the history).
    #[serde(default)]
    pub errors_total: usize,
    /// What it did.
    #[serde(flatten)]
    pub summary: PassSummary,
}

/// Errors and created projects kept per pass once it is no longer the newest.
const HISTORY_ITEMS: usize = 10;

/// Adds a finished pass to the history (newest first, at most [`PASS_HISTORY`]); older passes
/// keep only their first errors and created projects, so the history stays small.
pub fn push_pass(history: &mut std::collections::VecDeque<LastPass>, pass: LastPass) {
    if let Some(prev) = history.front_mut() {
        prev.summary.errors.truncate(HISTORY_ITEMS);
        prev.summary.created_projects.truncate(HISTORY_ITEMS);
    }
    history.push_front(pass);
    history.truncate(PASS_HISTORY);
}

/// Finished passes kept for the status page (newest first).
pub const PASS_HISTORY: usize = 20;

/// `<state_dir>/status.json`, and what the status page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The daemon that wrote it.
    pub pid: u32,
    /// When (RFC 3339).
    pub written_at: String,
    /// The last finished pass, if any.
    pub last_pass: Option<LastPass>,
    /// The last [`PASS_HISTORY`] finished passes, newest first.
    #[serde(default)]
    pub passes: Vec<LastPass>,
    /// When the next pass is due (RFC 3339); `None` while one runs.
    #[serde(default)]
    pub next_pass_at: Option<String>,
    /// Every flight.
    pub flights: Vec<StatusRow>,
}

/// The snapshot path of a state dir.
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SNAPSHOT_FILE)
}

/// Writes the snapshot atomically (temp file in the same dir, then rename).
pub fn write_snapshot(state_dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::with_prefix_in(".status-", state_dir)?;
    serde_json::to_writer_pretty(&mut tmp, snapshot)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_data()?;
    tmp.persist(snapshot_path(state_dir)).map_err(|e| e.error)?;
    Ok(())
}

/// Reads the snapshot of a state dir.
pub fn read_snapshot(state_dir: &Path) -> std::io::Result<Snapshot> {
    let text = std::fs::read(snapshot_path(state_dir))?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// Builds a snapshot from the store, the passes kept (newest first) and when the next pass is
/// due (unix ms; `None` while one runs).
pub fn snapshot(
    store: &Store,
    passes: &[LastPass],
    next_pass_ms: Option<i64>,
) -> Result<Snapshot, StateError> {
    Ok(Snapshot {
        pid: std::process::id(),
        written_at: crate::engine::state::rfc3339(crate::engine::state::now_ms()),
        last_pass: passes.first().cloned(),
        passes: passes.to_vec(),
        next_pass_at: next_pass_ms.map(crate::engine::state::rfc3339),
        flights: rows(store)?,
    })
}

/// Counts rows per shown phase (for the flights-by-phase gauge).
pub fn phase_counts(rows: &[StatusRow]) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        *out.entry(r.phase.clone()).or_insert(0) += 1;
    }
    out
}
