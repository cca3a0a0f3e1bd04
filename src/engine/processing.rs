//! Following a committed task: what one read of it means for the flight ([`observe`], pure),
//! and the two steps that read it ([`Engine::poll_task`], [`Engine::restart_task`]: one read of
//! the task per flight per pass, and the one log line each outcome deserves).
//!
//! A FAILED task is HTTP success and engine state: it is restarted up to
//! `processing.restart_failed` times, each restart spaced by the error policy's backoff
//! ([`crate::engine::plan::retry_delay`] of the restart's number), a counter of its own that no
//! HTTP retry touches; then the flight is `failed` with WebODM's `last_error`. A status counts
//! as final only while no `pending_action` is set (a restart waiting for WebODM's worker still
//! shows the old status).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::clients::webodm::Task;
use crate::config::RetryConfig;
use crate::engine::apply::{Engine, StepError};
use crate::engine::state::{now_ms, FlightRecord, Phase};

/// What a failed task says when WebODM gave no `last_error`.
pub const NO_MESSAGE: &str = "failed without a message from WebODM";

/// What `status` says of a task no processing node has taken for `no_node_after`.
pub const NO_NODE: &str = "no processing node: grant the daemon's WebODM user a processing node";

/// WebODM's task status codes.
const QUEUED: i64 = 10;
const RUNNING: i64 = 20;
const FAILED: i64 = 30;
const COMPLETED: i64 = 40;
const CANCELED: i64 = 50;

/// What following a task needs from the config.
#[derive(Debug, Clone)]
pub struct Follow<'a> {
    /// Restarts of a FAILED task before the flight is marked failed.
    pub restart_failed: u32,
    /// How long a task may wait without a processing node before it is reported.
    pub no_node_after: Duration,
    /// The error policy that spaces restarts.
    pub retry: &'a RetryConfig,
}

/// What a read of the task changed, for the one log line each deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a log line.
    None,
    /// WebODM finished processing (COMPLETED).
    Completed,
    /// The task FAILED; restart `attempt` is due at `at` (unix ms).
    RestartDue {
        /// Which restart.
        attempt: u32,
        /// When.
        at: i64,
    },
    /// The task FAILED with no restart left: the flight is `failed` with this error.
    Failed(String),
    /// A person canceled processing in WebODM.
    Canceled,
    /// No processing node has taken the task for longer than `no_node_after`.
    NoNode,
}

/// Records one read of the task at `now_ms` in the flight's record, moving its phase.
pub fn observe(rec: &mut FlightRecord, task: &Task, now_ms: i64, follow: &Follow) -> Change {
    let p = &mut rec.processing;
    let was = (p.status, p.pending_action);
    p.status = task.status;
    p.pending_action = task.pending_action;
    p.read_ms = Some(now_ms);
    p.time_ms = (task.processing_time >= 0).then_some(task.processing_time);
    if task.status.is_some() {
        p.unassigned_since_ms = None;
        p.no_node = false;
    }
    let pending = task.pending_action.is_some();
    let (phase, change) = match task.status {
        Some(FAILED) if !pending => {
            p.error = task.last_error.clone();
            if p.restarts >= follow.restart_failed {
                let msg = p.error.clone().unwrap_or_else(|| NO_MESSAGE.to_string());
                rec.last_error = Some(msg.clone());
                rec.error_since_ms = None;
                (Phase::Failed, Change::Failed(msg))
            } else if was == (Some(FAILED), None) && p.restart_at_ms.is_some() {
                // Seen failed before: the restart stays where it was scheduled.
                (Phase::Processing, Change::None)
            } else {
                let attempt = p.restarts + 1;
                let delay = crate::engine::plan::retry_delay(attempt, follow.retry);
                let at = now_ms + delay.as_millis() as i64;
                p.restart_at_ms = Some(at);
                (Phase::Processing, Change::RestartDue { attempt, at })
            }
        }
        Some(COMPLETED) if !pending => {
            p.assets = task.available_assets.clone();
            p.restart_at_ms = None;
            p.error = None;
            (Phase::Completed, Change::Completed)
        }
        Some(CANCELED) if !pending => {
            p.restart_at_ms = None;
            (Phase::Canceled, Change::Canceled)
        }
        None if !pending => {
            let since = *p.unassigned_since_ms.get_or_insert(now_ms);
            let waited = now_ms.saturating_sub(since);
            let change = if !p.no_node && waited >= follow.no_node_after.as_millis() as i64 {
                p.no_node = true;
                Change::NoNode
            } else {
                Change::None
            };
            (rec.phase, change)
        }
        // Queued, running, or any status with an action pending (a restart waiting for
        // WebODM's worker).
        Some(_) => (Phase::Processing, Change::None),
        None => (rec.phase, Change::None),
    };
    rec.set_phase(phase);
    change
}

impl Engine<'_> {
    /// What following a task needs from the config.
    fn follow(&self) -> Follow<'_> {
        Follow {
            restart_failed: self.config.processing.restart_failed,
            no_node_after: self.config.processing.no_node_after,
            retry: &self.config.retry,
        }
    }

    /// Reads the committed task once and records its processing.
    pub(crate) async fn poll_task(&self, rec: &mut FlightRecord) -> Result<(), StepError> {
        let task = self.read_task(rec).await?;
        self.record(rec, &task);
        Ok(())
    }

    /// Reads the failed task and, if it still is FAILED with nothing pending, asks WebODM to
    /// process it again (restart `attempt`); returns whether it did. The count is raised and
    /// flushed before the request, so a crash never grants a task more restarts than
    /// configured; a request that fails gives it back. A retry first reads the task again:
    /// a restart whose answer was lost is not sent twice.
    pub(crate) async fn restart_task(
        &self,
        rec: &mut FlightRecord,
        attempt: u32,
    ) -> Result<bool, StepError> {
        let task = self.read_task(rec).await?;
        let still_failed = task.status == Some(FAILED) && task.pending_action.is_none();
        if !still_failed || rec.processing.restarts >= self.config.processing.restart_failed {
            self.record(rec, &task);
            return Ok(false);
        }
        let (project, id) = ids(rec);
        let id = id.to_string();
        let id = id.as_str();
        let key = rec.key.clone();
        rec.processing.error = task.last_error.clone();
        rec.processing.restarts += 1;
        rec.processing.restart_at_ms = None;
        self.store.put_flight(rec).await?;
        let attempted = AtomicBool::new(false);
        let sent = self
            .policy
            .run(&format!("{key}: restart"), || async {
                if attempted.swap(true, Ordering::SeqCst) {
                    let t = self.webodm.get_task(project, id).await?;
                    if t.status != Some(FAILED) || t.pending_action.is_some() {
                        return Ok(());
                    }
                }
                self.webodm.restart_task(project, id).await
            })
            .await;
        if let Err(e) = sent {
            rec.processing.restarts -= 1;
            return Err(api_or_deleted("restarting the task", id, e));
        }
        info!(system = %key.system, flight = %key.flight, task = %id, attempt,
              of = self.config.processing.restart_failed,
              "asked WebODM to restart the failed task");
        // WebODM shows the old status with the restart pending until its worker takes it.
        rec.processing.pending_action = Some(3);
        rec.set_phase(Phase::Processing);
        Ok(true)
    }

    /// One `GET …/tasks/{id}/`; a 404 means a person deleted the task.
    async fn read_task(&self, rec: &FlightRecord) -> Result<Task, StepError> {
        let (project, id) = ids(rec);
        self.policy
            .run(&format!("{}: task status", rec.key), || {
                self.webodm.get_task(project, id)
            })
            .await
            .map_err(|e| api_or_deleted("reading the task's processing status", id, e))
    }

    /// Records a read of the task, with the one log line a change deserves.
    fn record(&self, rec: &mut FlightRecord, task: &Task) {
        let key = rec.key.clone();
        match observe(rec, task, now_ms(), &self.follow()) {
            Change::None => {}
            Change::Completed => info!(system = %key.system, flight = %key.flight, task = %task.id,
                processing_time_ms = task.processing_time, assets = task.available_assets.len(),
                "processing completed"),
            Change::RestartDue { attempt, at } => warn!(system = %key.system, flight = %key.flight,
                task = %task.id, error = %task.last_error.as_deref().unwrap_or(NO_MESSAGE),
                restart = attempt, at = %crate::engine::state::rfc3339(at),
                "processing failed; the task will be restarted"),
            Change::Failed(msg) => {
                error!(system = %key.system, flight = %key.flight, task = %task.id,
                restarts = rec.processing.restarts, error = %msg,
                "processing failed for good; the flight is marked failed")
            }
            Change::Canceled => warn!(system = %key.system, flight = %key.flight, task = %task.id,
                "processing was canceled in WebODM; the flight is no longer followed"),
            Change::NoNode => warn!(system = %key.system, flight = %key.flight, task = %task.id,
                waited = %humantime::format_duration(self.config.processing.no_node_after),
                "{NO_NODE}"),
        }
    }
}

/// The flight's project and task ids (steps after a commit always have both).
fn ids(rec: &FlightRecord) -> (i64, &str) {
    (
        rec.project_id.expect("a committed flight has a project"),
        rec.task_id
            .as_deref()
            .expect("a committed flight has a task"),
    )
}

fn api_or_deleted(what: &str, task: &str, e: crate::clients::http::ApiError) -> StepError {
    if e.is_not_found() {
        StepError::Deleted(format!("committed task {task}"))
    } else {
        StepError::Api {
            what: what.to_string(),
            source: e,
        }
    }
}

/// The task's processing as people read it in `status`: `waiting for a processing node`,
/// `queued`, `running`, `restarting`, `failed`, `completed`, `canceled`, or what the last read
/// showed.
pub fn describe(rec: &FlightRecord) -> Option<String> {
    let p = &rec.processing;
    p.read_ms?;
    Some(
        match (p.status, p.pending_action) {
            (_, Some(3)) => "restarting",
            (None, _) if p.no_node => "no processing node",
            (None, _) => "waiting for a processing node",
            (Some(QUEUED), _) => "queued",
            (Some(RUNNING), _) => "running",
            (Some(FAILED), _) => "failed",
            (Some(COMPLETED), _) => "completed",
            (Some(CANCELED), _) => "canceled",
            (Some(other), _) => return Some(format!("status {other}")),
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::FlightKey;

    fn task(status: Option<i64>, pending: Option<i64>, error: Option<&str>) -> Task {
        Task {
            id: "t".into(),
            project: 1,
            name: None,
            partial: false,
            status,
            images_count: None,
            tags: vec![],
            last_error: error.map(str::to_owned),
            processing_time: if status == Some(40) { 1234 } else { -1 },
            available_assets: if status == Some(40) {
                vec!["orthophoto.tif".into()]
            } else {
                vec![]
            },
            pending_action: pending,
        }
    }

    fn committed() -> FlightRecord {
        let mut r = FlightRecord::new(FlightKey::new("s", "F"), 0);
        r.set_phase(Phase::Committed);
        r
    }

    fn follow(retry: &RetryConfig) -> Follow<'_> {
        Follow {
            restart_failed: 1,
            no_node_after: Duration::from_secs(60),
            retry,
        }
    }

    fn retry() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(2),
            ..RetryConfig::default()
        }
    }

    #[test]
    fn queued_running_completed() {
        let retry = retry();
        let f = follow(&retry);
        let mut r = committed();
        assert_eq!(
            observe(&mut r, &task(None, None, None), 0, &f),
            Change::None
        );
        assert_eq!(r.phase, Phase::Committed, "no node yet: still committed");
        assert_eq!(
            observe(&mut r, &task(Some(20), None, None), 1, &f),
            Change::None
        );
        assert_eq!(r.phase, Phase::Processing);
        assert_eq!(
            observe(&mut r, &task(Some(40), None, None), 2, &f),
            Change::Completed
        );
        assert_eq!(r.phase, Phase::Completed);
        assert_eq!(r.processing.assets, ["orthophoto.tif"]);
        assert_eq!(r.processing.time_ms, Some(1234));
    }

    #[test]
    fn failure_is_restarted_then_final_with_webodm_error_or_a_default() {
        let retry = retry();
        let f = follow(&retry);
        let mut r = committed();
        let failed = task(Some(30), None, Some("Cannot process dataset"));
        assert_eq!(
            observe(&mut r, &failed, 1_000, &f),
            Change::RestartDue {
                attempt: 1,
                at: 3_000
            }
        );
        assert_eq!(r.phase, Phase::Processing);
        assert_eq!(
            r.last_error, None,
            "a failure with restarts left is no error"
        );
        assert_eq!(
            observe(&mut r, &failed, 2_000, &f),
            Change::None,
            "seen again: the restart keeps its time"
        );
        assert_eq!(r.processing.restart_at_ms, Some(3_000));
        r.processing.restarts = 1;
        // A restart waiting for the worker still shows FAILED: not final.
        let waiting = task(Some(30), Some(3), None);
        assert_eq!(observe(&mut r, &waiting, 3_000, &f), Change::None);
        assert_eq!(r.phase, Phase::Processing);
        assert_eq!(
            observe(&mut r, &failed, 4_000, &f),
            Change::Failed("Cannot process dataset".into())
        );
        assert_eq!(r.phase, Phase::Failed);
        assert_eq!(r.last_error.as_deref(), Some("Cannot process dataset"));
        let mut silent = committed();
        silent.processing.restarts = 1;
        assert_eq!(
            observe(&mut silent, &task(Some(30), None, None), 0, &f),
            Change::Failed(NO_MESSAGE.into())
        );
        assert_eq!(silent.last_error.as_deref(), Some(NO_MESSAGE));
    }

    #[test]
    fn no_node_is_reported_once_after_the_wait() {
        let retry = retry();
        let f = follow(&retry);
        let mut r = committed();
        let idle = task(None, None, None);
        assert_eq!(observe(&mut r, &idle, 0, &f), Change::None);
        assert_eq!(observe(&mut r, &idle, 59_999, &f), Change::None);
        assert_eq!(observe(&mut r, &idle, 60_000, &f), Change::NoNode);
        assert_eq!(describe(&r).as_deref(), Some("no processing node"));
        assert_eq!(observe(&mut r, &idle, 120_000, &f), Change::None, "once");
        observe(&mut r, &task(Some(10), None, None), 130_000, &f);
        assert!(!r.processing.no_node);
        assert_eq!(describe(&r).as_deref(), Some("queued"));
    }

    #[test]
    fn cancel_is_final() {
        let retry = retry();
        let mut r = committed();
        let change = observe(&mut r, &task(Some(50), None, None), 0, &follow(&retry));
        assert_eq!(change, Change::Canceled);
        assert_eq!(r.phase, Phase::Canceled);
        assert!(!r.follows_processing());
    }
}
