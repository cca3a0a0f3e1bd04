//! Results back to Tapis: once WebODM has processed a flight, each configured asset is
//! streamed from `GET …/download/{asset}` straight into `<Flight>/<results.dir>/<asset>` on
//! Tapis (nothing spooled, memory bounded by the HTTP buffers), then listed: its size must
//! equal WebODM's `Content-Length`.
//!
//! Per asset, crash safe and idempotent: a file already there at WebODM's size is done; a
//! file of another size is replaced only when the daemon wrote it — an intent
//! ([`AssetState::Writing`]) is flushed before every write, so the daemon's own half-written
//! file is told from a person's, which is never overwritten but recorded and reported as a
//! conflict. Assets WebODM does not offer for the task are recorded as unavailable, once.
//! "All done" (phase `results_written`): every configured asset is written, in conflict or
//! unavailable for the current task.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use tracing::{info, warn};

use crate::clients::http::ByteStream;
use crate::clients::tapis::FileKind;
use crate::engine::apply::{Engine, StepError};
use crate::engine::state::{AssetResult, AssetState, FlightRecord, Phase};

/// What copying one flight's results did.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    /// Files the daemon wrote on Tapis.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Conflicts found, one line each, naming the flight.
    pub conflicts: Vec<String>,
}

/// What is at an asset's path on Tapis.
enum There {
    Nothing,
    File(u64),
    Folder,
}

/// The folder that receives a flight's results, relative to the system root.
pub fn results_dir(flight: &str, dir: &str) -> String {
    format!("{flight}/{}", dir.trim_matches('/'))
}

/// How `status` describes a conflict at `path` (relative to the flight folder):
/// `results conflict: <path> …`.
pub fn conflict_message(path: &str, asset: &str, found: Option<u64>, expected: u64) -> String {
    match found {
        Some(size) => format!(
            "results conflict: {path} on Tapis holds {size} bytes that this daemon did not \
             write (WebODM's {asset} has {expected}); left untouched"
        ),
        None => format!("results conflict: {path} on Tapis is a folder; left untouched"),
    }
}

impl Engine<'_> {
    /// Copies `assets` of the flight's completed task to Tapis and records `unavailable` ones;
    /// moves the flight to `results_written` once every configured asset is settled.
    pub(crate) async fn copy_results(
        &self,
        rec: &mut FlightRecord,
        assets: &[String],
        unavailable: &[String],
    ) -> Result<Copied, StepError> {
        let key = rec.key.clone();
        let generation = rec.generation;
        let mut copied = Copied::default();
        let relative =
            |asset: &str| format!("{}/{asset}", self.config.results.dir.trim_matches('/'));
        let not_offered = |rec: &mut FlightRecord, asset: &str| {
            warn!(system = %key.system, flight = %key.flight, asset = %asset,
                  "result asset not offered by WebODM for this task (check the task options); it is not copied");
            rec.results.insert(
                asset.to_string(),
                AssetResult {
                    generation,
                    path: relative(asset),
                    state: AssetState::Unavailable,
                },
            );
        };
        for asset in unavailable {
            not_offered(rec, asset);
        }
        let dir = results_dir(&key.flight, &self.config.results.dir);
        // What the results folder holds now: one listing for all the assets (a missing folder
        // holds nothing, and is made before the first write).
        let (mut dir_made, existing) = match self.tapis.list_dir(&key.system, &dir).await {
            Ok(entries) => (true, entries),
            Err(e) if e.is_not_found() => (false, Vec::new()),
            Err(e) => return Err(api(format!("listing the results folder {dir}"))(e)),
        };
        for asset in assets {
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(copied);
            }
            let path = format!("{dir}/{asset}");
            let _permit = self
                .uploads
                .acquire()
                .await
                .expect("semaphore never closed");
            let Some((body, len)) = self.open_asset(rec, asset).await? else {
                not_offered(rec, asset);
                continue;
            };
            let there = match existing.iter().find(|e| &e.name == asset) {
                None => There::Nothing,
                Some(e) if e.kind == FileKind::Dir => There::Folder,
                Some(e) => There::File(e.size),
            };
            let prior = rec.results.get(asset).cloned();
            let owned = |size| {
                prior
                    .as_ref()
                    .is_some_and(|p| p.owns(&relative(asset), size))
            };
            let state = match there {
                There::File(size) if size == len => AssetState::Written {
                    size,
                    by_daemon: owned(size),
                },
                There::Folder => AssetState::Conflict {
                    found: None,
                    expected: len,
                },
                There::File(size) if !owned(size) => AssetState::Conflict {
                    found: Some(size),
                    expected: len,
                },
                There::File(_) | There::Nothing => {
                    if !dir_made {
                        self.tapis
                            .mkdir(&key.system, &dir)
                            .await
                            .map_err(api(format!("making the results folder {dir}")))?;
                        dir_made = true;
                    }
                    rec.results.insert(
                        asset.clone(),
                        AssetResult {
                            generation,
                            path: relative(asset),
                            state: AssetState::Writing { size: len },
                        },
                    );
                    self.store.put_flight(rec).await?;
                    self.write_asset(rec, asset, &path, body, len).await?;
                    copied.files += 1;
                    copied.bytes += len;
                    crate::metrics::result_written(len);
                    info!(system = %key.system, flight = %key.flight, asset = %asset, path = %path, bytes = len,
                          "result written to Tapis");
                    AssetState::Written {
                        size: len,
                        by_daemon: true,
                    }
                }
            };
            if let AssetState::Conflict { found, expected } = state {
                let msg = conflict_message(&relative(asset), asset, found, expected);
                warn!(system = %key.system, flight = %key.flight, asset = %asset, "{msg}");
                copied.conflicts.push(format!("{key}: {msg}"));
            }
            rec.results.insert(
                asset.clone(),
                AssetResult {
                    generation,
                    path: relative(asset),
                    state,
                },
            );
        }
        let done = self.config.results.assets.iter().all(|a| {
            rec.results
                .get(a)
                .is_some_and(|r| r.settled_for(generation))
        });
        if done && rec.phase == Phase::Completed {
            info!(system = %key.system, flight = %key.flight, dir = %dir, "results written to Tapis");
            rec.set_phase(Phase::ResultsWritten);
        }
        Ok(copied)
    }

    /// Opens the asset's download: the body and WebODM's `Content-Length`; `None` when
    /// WebODM answers that the asset does not exist (although the task listed it).
    async fn open_asset(
        &self,
        rec: &FlightRecord,
        asset: &str,
    ) -> Result<Option<(ByteStream, u64)>, StepError> {
        let project = rec.project_id.expect("CopyResults follows a commit");
        let task = rec
            .task_id
            .as_deref()
            .expect("CopyResults follows a commit");
        match self.webodm.download_asset(project, task, asset).await {
            Ok(opened) => Ok(Some(opened)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(api(format!("downloading result {asset} from WebODM"))(e)),
        }
    }

    /// What is at `path` on Tapis (after a write: its listing's size must be WebODM's).
    async fn there(&self, system: &str, path: &str, asset: &str) -> Result<There, StepError> {
        let found = self
            .tapis
            .stat(system, path)
            .await
            .map_err(api(format!("looking for result {asset} on Tapis")))?;
        Ok(match found {
            None => There::Nothing,
            Some(e) if e.kind == FileKind::Dir => There::Folder,
            Some(e) => There::File(e.size),
        })
    }

    /// Streams the asset into the file at `path` (the first attempt with the download already
    /// open, every retry re-opening it) and checks the size Tapis then lists.
    async fn write_asset(
        &self,
        rec: &FlightRecord,
        asset: &str,
        path: &str,
        body: ByteStream,
        len: u64,
    ) -> Result<(), StepError> {
        let system = rec.key.system.as_str();
        let mut first = Some(body);
        let what = format!("{}: result {asset}", rec.key);
        self.policy
            .run(&what, || {
                let opened = first.take();
                async move {
                    let (body, len) = match opened {
                        Some(body) => (body, len),
                        None => {
                            let project = rec.project_id.expect("after a commit");
                            let task = rec.task_id.as_deref().expect("after a commit");
                            self.webodm.download_asset(project, task, asset).await?
                        }
                    };
                    let body: ByteStream = Box::pin(body.inspect(|_| crate::metrics::beat()));
                    self.tapis.upload_file(system, path, body, len).await
                }
            })
            .await
            .map_err(api(format!("writing result {asset} to Tapis")))?;
        match self.there(system, path, asset).await? {
            There::File(size) if size == len => Ok(()),
            There::File(size) => Err(StepError::ResultSize {
                asset: asset.to_string(),
                listed: Some(size),
                expected: len,
            }),
            There::Nothing | There::Folder => Err(StepError::ResultSize {
                asset: asset.to_string(),
                listed: None,
                expected: len,
            }),
        }
    }
}

fn api(what: String) -> impl FnOnce(crate::clients::http::ApiError) -> StepError {
    move |source| StepError::Api { what, source }
}
