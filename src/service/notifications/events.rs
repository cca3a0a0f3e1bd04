//! What is worth telling people, derived level-triggered from the store: each flight's record
//! (committed, completed, failed, stuck) and the run of passes (failing, recovered). Every
//! event has a stable id, so comparing with what the `notifications` tree already holds sends
//! each one once, across restarts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::engine::state::{rfc3339, FlightRecord, Phase};

/// Consecutive passes with errors before "passes failing" is sent.
pub(crate) const FAILING_AFTER: u32 = 3;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The flight's task was committed for processing.
    FlightCommitted,
    /// WebODM finished processing the flight.
    FlightCompleted,
    /// Processing failed after every allowed restart.
    FlightFailed,
    /// The flight has failed with the same error for longer than `stuck_after`.
    FlightStuck,
    /// Several passes in a row finished with errors.
    PassesFailing,
    /// A pass finished without errors after passes were failing.
    PassesRecovered,
}

impl EventKind {
    /// The outcome as people read it in a subject line.
    pub fn outcome(self) -> &'static str {
        match self {
            EventKind::FlightCommitted => "committed for processing",
            EventKind::FlightCompleted => "processing completed",
            EventKind::FlightFailed => "processing FAILED",
            EventKind::FlightStuck => "stuck",
            EventKind::PassesFailing => "passes failing",
            EventKind::PassesRecovered => "passes recovered",
        }
    }

    /// The snake_case name used in JSON bodies and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FlightCommitted => "flight_committed",
            EventKind::FlightCompleted => "flight_completed",
            EventKind::FlightFailed => "flight_failed",
            EventKind::FlightStuck => "flight_stuck",
            EventKind::PassesFailing => "passes_failing",
            EventKind::PassesRecovered => "passes_recovered",
        }
    }
}

/// One notification, as sent in a webhook body and described in a mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// When it was noticed (RFC 3339).
    pub at: String,
    /// One line for people.
    pub message: String,
    /// Tapis system (flight events).
    pub system_id: Option<String>,
    /// Flight folder (flight events).
    pub flight_name: Option<String>,
    /// The flight's phase when noticed.
    pub phase: Option<String>,
    /// WebODM project.
    pub project_id: Option<i64>,
    /// WebODM task.
    pub task_id: Option<String>,
    /// Images in the flight.
    pub images: Option<u64>,
    /// Where to look in WebODM (`webodm.public_url`).
    pub url: Option<String>,
    /// The error (failed, stuck, passes failing).
    pub error: Option<String>,
}

impl Event {
    /// `<flight> (<system>)` or `tapis-webodm-sync` for daemon events.
    pub fn subject_name(&self) -> String {
        match (&self.flight_name, &self.system_id) {
            (Some(f), Some(s)) => format!("{f} ({s})"),
            _ => "tapis-webodm-sync".to_string(),
        }
    }
}

/// The events a flight's record calls for now, with their ids. Committed/completed/failed are
/// one per task generation; stuck is one per run of the same error.
pub(crate) fn flight_events(
    rec: &FlightRecord,
    now_ms: i64,
    stuck_after: Duration,
    link_base: &Url,
) -> Vec<(String, Event)> {
    let mut out = Vec::new();
    let key = format!("f/{}\u{1f}{}", rec.key.system, rec.key.flight);
    let phase = rec.shown_phase();
    let url =
        crate::service::page::webodm_link(link_base, phase, rec.project_id, rec.task_id.as_deref());
    let event = |kind: EventKind, message: String, error: Option<String>| Event {
        event: kind,
        at: rfc3339(now_ms),
        message,
        system_id: Some(rec.key.system.clone()),
        flight_name: Some(rec.key.flight.clone()),
        phase: Some(phase.to_string()),
        project_id: rec.project_id,
        task_id: rec.task_id.clone(),
        images: Some(rec.images_total),
        url: Some(url.to_string()),
        error,
    };
    let name = format!("{} ({})", rec.key.flight, rec.key.system);
    let generation = rec.generation;
    if rec.phase.is_committed() {
        out.push((
            format!("{key}/committed/{generation}"),
            event(
                EventKind::FlightCommitted,
                format!(
                    "Flight {name}: {} images committed for processing in WebODM",
                    rec.images_total
                ),
                None,
            ),
        ));
    }
    match rec.phase {
        Phase::Completed | Phase::ResultsWritten => out.push((
            format!("{key}/completed/{generation}"),
            event(
                EventKind::FlightCompleted,
                format!("Flight {name}: processing completed"),
                None,
            ),
        )),
        Phase::Failed => out.push((
            format!("{key}/failed/{generation}"),
            event(
                EventKind::FlightFailed,
                format!(
                    "Flight {name}: processing failed: {}",
                    rec.last_error.as_deref().unwrap_or("no reason given")
                ),
                rec.last_error.clone(),
            ),
        )),
        _ => {}
    }
    if let (Some(err), Some(since)) = (&rec.last_error, rec.error_since_ms) {
        let lasted = now_ms - since;
        if lasted >= stuck_after.as_millis() as i64 {
            let for_ = humantime::format_duration(Duration::from_secs((lasted / 1000) as u64));
            out.push((
                format!("{key}/stuck/{since}"),
                event(
                    EventKind::FlightStuck,
                    format!("Flight {name}: stuck, failing with the same error for {for_}: {err}"),
                    Some(err.clone()),
                ),
            ));
        }
    }
    out
}

/// The run of passes with errors, kept in the store between passes and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PassRun {
    /// Passes with errors in a row.
    pub failed: u32,
    /// When the first of them finished (unix ms).
    pub since_ms: Option<i64>,
    /// "passes failing" was sent for this run.
    pub notified: bool,
}

/// Updates the run with a finished pass; returns the daemon event it calls for, with its id.
pub(crate) fn pass_event(
    run: &mut PassRun,
    errors: &[String],
    now_ms: i64,
) -> Option<(String, Event)> {
    let event = |kind: EventKind, message: String, error: Option<String>| Event {
        event: kind,
        at: rfc3339(now_ms),
        message,
        system_id: None,
        flight_name: None,
        phase: None,
        project_id: None,
        task_id: None,
        images: None,
        url: None,
        error,
    };
    if errors.is_empty() {
        let done = std::mem::take(run);
        return match (done.notified, done.since_ms) {
            (true, Some(since)) => Some((
                format!("d/passes_recovered/{since}"),
                event(
                    EventKind::PassesRecovered,
                    format!(
                        "Passes recovered: a pass finished without errors after {} failing ones",
                        done.failed
                    ),
                    None,
                ),
            )),
            _ => None,
        };
    }
    run.failed += 1;
    let since = *run.since_ms.get_or_insert(now_ms);
    if run.failed >= FAILING_AFTER && !run.notified {
        run.notified = true;
        let first = errors.first().cloned().unwrap_or_default();
        return Some((
            format!("d/passes_failing/{since}"),
            event(
                EventKind::PassesFailing,
                format!(
                    "Passes failing: the last {} passes finished with errors ({} in the last one; first: {first})",
                    run.failed,
                    errors.len()
                ),
                Some(first),
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::FlightKey;

    fn rec(phase: Phase) -> FlightRecord {
        let mut r = FlightRecord::new(FlightKey::new("sys", "F <1>"), 0);
        r.phase = phase;
        r.project_id = Some(4);
        r.task_id = Some("t-1".into());
        r.images_total = 9;
        r
    }

    fn ids(r: &FlightRecord, now: i64) -> Vec<String> {
        let base = Url::parse("https://odm.example/").unwrap();
        flight_events(r, now, Duration::from_secs(3600), &base)
            .into_iter()
            .map(|(id, _)| id.replace('\u{1f}', "|"))
            .collect()
    }

    #[test]
    fn flight_events_follow_the_phase() {
        assert!(ids(&rec(Phase::Uploading), 0).is_empty());
        assert_eq!(ids(&rec(Phase::Committed), 0), ["f/sys|F <1>/committed/0"]);
        assert_eq!(
            ids(&rec(Phase::ResultsWritten), 0),
            ["f/sys|F <1>/committed/0", "f/sys|F <1>/completed/0"]
        );
        let mut failed = rec(Phase::Failed);
        failed.generation = 2;
        failed.last_error = Some("Cannot process dataset".into());
        assert_eq!(
            ids(&failed, 0),
            ["f/sys|F <1>/committed/2", "f/sys|F <1>/failed/2"]
        );
        let base = Url::parse("https://odm.example/").unwrap();
        let (_, done) = flight_events(&rec(Phase::Completed), 0, Duration::from_secs(1), &base)
            .pop()
            .unwrap();
        assert_eq!(
            done.url.as_deref(),
            Some("https://odm.example/map/project/4/task/t-1/")
        );
        assert_eq!(done.subject_name(), "F <1> (sys)");
    }

    #[test]
    fn stuck_once_per_run_of_the_same_error() {
        let mut r = rec(Phase::Uploading);
        r.last_error = Some("HTTP 500".into());
        r.error_since_ms = Some(1_000);
        assert!(ids(&r, 1_000 + 3_599_000).is_empty());
        assert_eq!(ids(&r, 1_000 + 3_600_000), ["f/sys|F <1>/stuck/1000"]);
        r.error_since_ms = Some(5_000_000);
        assert_eq!(
            ids(&r, 5_000_000 + 7_200_000),
            ["f/sys|F <1>/stuck/5000000"]
        );
    }

    #[test]
    fn passes_failing_after_three_then_recovered_once() {
        let mut run = PassRun::default();
        let err = vec!["boom".to_string()];
        assert!(pass_event(&mut run, &err, 10).is_none());
        assert!(pass_event(&mut run, &err, 20).is_none());
        let (id, ev) = pass_event(&mut run, &err, 30).unwrap();
        assert_eq!(id, "d/passes_failing/10");
        assert_eq!(ev.event, EventKind::PassesFailing);
        assert!(
            pass_event(&mut run, &err, 40).is_none(),
            "sent once per run"
        );
        let (id, ev) = pass_event(&mut run, &[], 50).unwrap();
        assert_eq!(id, "d/passes_recovered/10");
        assert_eq!(ev.event, EventKind::PassesRecovered);
        assert_eq!(run, PassRun::default());
        // A short run of errors never says anything.
        assert!(pass_event(&mut run, &err, 60).is_none());
        assert!(pass_event(&mut run, &[], 70).is_none());
    }
}
