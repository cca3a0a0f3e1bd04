//! What a pass did: the original integration's summary fields plus this daemon's own, as plain
//! data (logged, printed by `--json`, kept for `/status`).

use serde::{Deserialize, Serialize};

/// A project created this pass (the original integration's `created_projects` item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedProject {
    /// WebODM project id.
    pub project_id: i64,
    /// Its name.
    pub project_name: String,
    /// Flight folder.
    pub flight_name: String,
    /// Tapis system.
    pub system_id: String,
    /// Images in the flight when created.
    pub image_count: u64,
}

/// What one pass did (logged at info and printed by `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassSummary {
    /// Systems whose flights were listed.
    pub systems_scanned: usize,
    /// Flights found on Tapis.
    pub flights_discovered: usize,
    /// Projects created (not adopted).
    pub projects_created: usize,
    /// What failed, one line each, naming the flight.
    pub errors: Vec<String>,
    /// The projects created.
    pub created_projects: Vec<CreatedProject>,
    /// Tasks created (not adopted).
    pub tasks_created: usize,
    /// Images WebODM confirmed this pass.
    pub images_uploaded: u64,
    /// Their bytes.
    pub bytes_uploaded: u64,
    /// Tasks committed for processing.
    pub tasks_committed: usize,
    /// Permissions added in WebODM (one per user or group given access to a project).
    #[serde(default)]
    pub grants_added: usize,
    /// Failed tasks WebODM was asked to process again.
    #[serde(default)]
    pub tasks_restarted: usize,
    /// Result files written to Tapis.
    #[serde(default)]
    pub results_written: u64,
    /// Their bytes.
    #[serde(default)]
    pub result_bytes: u64,
    /// Wall time of the pass.
    pub duration_ms: u64,
    /// HTTP requests sent to Tapis (retries and logins included).
    pub tapis_requests: u64,
    /// HTTP requests sent to WebODM (retries and logins included).
    pub webodm_requests: u64,
}
