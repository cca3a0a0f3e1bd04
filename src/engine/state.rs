//! The observed state: what the daemon created in WebODM, kept in an embedded sled store.
//!
//! Trees: `flights` (one [`FlightRecord`] per flight), `images` (one [`UploadedImage`] per image
//! WebODM confirmed), `intents` (creates that may have happened), `notifications` (what was
//! notified, as records the notifier defines) and `meta` (schema version).
//! Every record that must survive a crash is flushed before the call that depends on it returns.
//! One process owns a state dir at a time: [`Store::open`] takes an exclusive lock on
//! `<state_dir>/lock` and names the holder's pid when it is taken.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clients::webodm::Grantee;

/// Version of the record layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// What went wrong with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the state dir.
    #[error("state dir {dir} is in use by another tapis-webodm-sync process{}; stop it first, or give this one its own `sync.state_dir`", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid, when it wrote one.
        holder: Option<u32>,
    },
    /// The state dir cannot be created or opened.
    #[error("cannot open state dir {dir}: {source}")]
    Io {
        /// The state dir.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// sled failed.
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("state record {key} is unreadable: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store was written by a newer version.
    #[error("state dir {dir} has schema version {found}, newer than this binary's {SCHEMA_VERSION}; run the newer version or move the dir away")]
    TooNew {
        /// The state dir.
        dir: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// Identity of a flight: the Tapis system and the flight folder name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlightKey {
    /// Tapis system id.
    pub system: String,
    /// Flight folder name.
    pub flight: String,
}

impl FlightKey {
    /// A key from its parts.
    pub fn new(system: impl Into<String>, flight: impl Into<String>) -> Self {
        FlightKey {
            system: system.into(),
            flight: flight.into(),
        }
    }
    fn db_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.system.len() + self.flight.len() + 1);
        k.extend_from_slice(self.system.as_bytes());
        k.push(0);
        k.extend_from_slice(self.flight.as_bytes());
        k
    }
    fn image_prefix(&self) -> Vec<u8> {
        let mut k = self.db_key();
        k.push(0);
        k
    }
}

impl std::fmt::Display for FlightKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.system, self.flight)
    }
}

/// Where a flight is in its life (see design.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Seen on Tapis, nothing created yet.
    Discovered,
    /// The project exists.
    ProjectCreated,
    /// The partial task exists.
    TaskCreated,
    /// Images are being uploaded.
    Uploading,
    /// The task was committed for processing.
    Committed,
    /// A processing node is working on the task (WebODM status QUEUED or RUNNING).
    Processing,
    /// Processing finished (WebODM status COMPLETED).
    Completed,
    /// Processing finished and the configured result assets are on Tapis.
    ResultsWritten,
    /// Processing failed after every allowed restart (WebODM status FAILED).
    Failed,
    /// A person canceled processing in WebODM (status CANCELED).
    Canceled,
    /// A person deleted the project or the committed task; nothing is recreated until `forget`.
    DeletedInWebodm,
}

impl Phase {
    /// The name shown in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Discovered => "discovered",
            Phase::ProjectCreated => "project_created",
            Phase::TaskCreated => "task_created",
            Phase::Uploading => "uploading",
            Phase::Committed => "committed",
            Phase::Processing => "processing",
            Phase::Completed => "completed",
            Phase::ResultsWritten => "results_written",
            Phase::Failed => "failed",
            Phase::Canceled => "canceled",
            Phase::DeletedInWebodm => "deleted_in_webodm",
        }
    }

    /// Whether the task was committed (this phase or any later one): no image is added to it.
    pub fn is_committed(self) -> bool {
        matches!(
            self,
            Phase::Committed
                | Phase::Processing
                | Phase::Completed
                | Phase::ResultsWritten
                | Phase::Failed
                | Phase::Canceled
        )
    }
}

/// A flight's listing summary; a change means images are still arriving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Number of images.
    pub count: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// Newest `lastModified` as unix milliseconds.
    pub newest_ms: i64,
}

/// Everything the daemon knows about one flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlightRecord {
    /// Which flight.
    pub key: FlightKey,
    /// Where it is in its life.
    pub phase: Phase,
    /// First time it was discovered (unix ms).
    pub first_seen_ms: i64,
    /// The WebODM project, once created or adopted.
    #[serde(default)]
    pub project_id: Option<i64>,
    /// The project's name as WebODM stores it.
    #[serde(default)]
    pub project_name: Option<String>,
    /// The WebODM task, once created or adopted.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Which task of the flight that is: 0 for the first, n for the n-th update task
    /// (`on_change_after_commit = "new-task"`).
    #[serde(default)]
    pub generation: u32,
    /// True when the task was adopted rather than created: WebODM may already hold images
    /// this store does not know about, so each is checked with `HEAD` before upload.
    #[serde(default)]
    pub verify_uploads: bool,
    /// Images in the latest listing.
    #[serde(default)]
    pub images_total: u64,
    /// Images WebODM confirmed.
    #[serde(default)]
    pub images_uploaded: u64,
    /// The latest listing's summary.
    #[serde(default)]
    pub listing: Fingerprint,
    /// When that summary was first seen (unix ms); the flight is settled `settle` after this.
    #[serde(default)]
    pub listing_since_ms: i64,
    /// The listing at commit time, to notice changes after commit.
    #[serde(default)]
    pub committed_listing: Option<Fingerprint>,
    /// When the flight folder was last found missing on Tapis (unix ms); cleared when it returns.
    #[serde(default)]
    pub vanished_ms: Option<i64>,
    /// A change after commit was already reported.
    #[serde(default)]
    pub change_warned: bool,
    /// The last error, shown in `status`.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Consecutive failed passes.
    #[serde(default)]
    pub failures: u32,
    /// Do not try again before this time (unix ms).
    #[serde(default)]
    pub next_attempt_ms: Option<i64>,
    /// Since when `last_error` has been the same (unix ms): a flight failing the same way for
    /// long is stuck.
    #[serde(default)]
    pub error_since_ms: Option<i64>,
    /// When the images folder was last listed (unix ms); a committed flight is listed again
    /// when its recheck comes due (`sync.recheck_committed`).
    #[serde(default)]
    pub last_checked_ms: Option<i64>,
    /// Why the last listing of this flight (or of its system's root) failed; cleared by the
    /// next listing that succeeds. The flight is left as it was meanwhile.
    #[serde(default)]
    pub listing_error: Option<String>,
    /// WebODM users and groups the daemon gave access to the project, or found already holding
    /// it; never granted again (a person's later change in WebODM stands).
    #[serde(default)]
    pub granted: BTreeSet<Grantee>,
    /// WebODM usernames that should see the project but have no account yet.
    #[serde(default)]
    pub access_waiting: BTreeSet<String>,
    /// Users granted earlier whom Tapis no longer lists: their access is kept (a person decides).
    #[serde(default)]
    pub unshared: BTreeSet<String>,
    /// When the phase last changed (unix ms; set by [`FlightRecord::set_phase`]).
    #[serde(default)]
    pub phase_since_ms: Option<i64>,
    /// What the last read of the committed task showed of its processing.
    #[serde(default)]
    pub processing: Processing,
    /// What became of each configured result asset on Tapis, by asset name.
    #[serde(default)]
    pub results: BTreeMap<String, AssetResult>,
}

/// What the daemon knows of a committed task's processing, from its last read of the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Processing {
    /// WebODM's `status` then: `None` (no processing node has the task), 10 queued,
    /// 20 running, 30 failed, 40 completed, 50 canceled.
    pub status: Option<i64>,
    /// WebODM's `pending_action` then (3: a restart waits for WebODM's worker); a status is
    /// final only without one.
    pub pending_action: Option<i64>,
    /// WebODM's `last_error` of the last failed attempt (a failed task may have none).
    pub error: Option<String>,
    /// Processing time in milliseconds, once WebODM reports it.
    pub time_ms: Option<i64>,
    /// Assets WebODM offers for download (recorded when the task completed).
    pub assets: Vec<String>,
    /// Restarts of this task the daemon asked for.
    pub restarts: u32,
    /// When the next restart of the failed task is due (unix ms).
    pub restart_at_ms: Option<i64>,
    /// Since when the task has had no processing node (`status` null; unix ms).
    pub unassigned_since_ms: Option<i64>,
    /// It has had none for longer than `processing.no_node_after` (logged once per stretch).
    pub no_node: bool,
    /// When the task was last read (unix ms).
    pub read_ms: Option<i64>,
}

impl Processing {
    /// A task just committed (or adopted committed): no node has it yet, since `now_ms`.
    pub fn waiting_since(now_ms: i64) -> Processing {
        Processing {
            unassigned_since_ms: Some(now_ms),
            ..Processing::default()
        }
    }
}

/// What became of one result asset on Tapis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetResult {
    /// The task generation it was last handled for (a new task writes its results again).
    pub generation: u32,
    /// Its path on Tapis, relative to the flight folder (`code/odm_results/orthophoto.tif`).
    #[serde(default)]
    pub path: String,
    /// What happened.
    #[serde(flatten)]
    pub state: AssetState,
}

/// The state of one result asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AssetState {
    /// The daemon is writing it: the intent, flushed before the write, so that a file of
    /// another size found there later is known as the daemon's own half-written one.
    Writing {
        /// WebODM's size of the asset.
        size: u64,
    },
    /// On Tapis at WebODM's size.
    Written {
        /// Its size.
        size: u64,
        /// The daemon wrote it (else it was found there at the right size).
        by_daemon: bool,
    },
    /// Something the daemon did not write is at the path, of another size (or a folder):
    /// left untouched.
    Conflict {
        /// Size of the file found (`None`: a folder).
        found: Option<u64>,
        /// WebODM's size of the asset.
        expected: u64,
    },
    /// WebODM does not offer this asset for the task (e.g. `dtm.tif` without the DTM
    /// option).
    Unavailable,
}

impl AssetResult {
    /// Whether the asset needs nothing more for task generation `generation` (written, in
    /// conflict or unavailable then).
    pub fn settled_for(&self, generation: u32) -> bool {
        self.generation == generation && !matches!(self.state, AssetState::Writing { .. })
    }

    /// Whether a file of `size` bytes at `path` (relative to the flight folder) is one the
    /// daemon wrote there (or began to write), so that it may be replaced.
    pub fn owns(&self, path: &str, size: u64) -> bool {
        if self.path != path {
            return false;
        }
        match self.state {
            AssetState::Writing { .. } => true,
            AssetState::Written {
                size: written,
                by_daemon,
            } => by_daemon && written == size,
            AssetState::Conflict { .. } | AssetState::Unavailable => false,
        }
    }
}

impl FlightRecord {
    /// A record for a flight seen for the first time.
    pub fn new(key: FlightKey, now_ms: i64) -> Self {
        FlightRecord {
            key,
            phase: Phase::Discovered,
            first_seen_ms: now_ms,
            project_id: None,
            project_name: None,
            task_id: None,
            generation: 0,
            verify_uploads: false,
            images_total: 0,
            images_uploaded: 0,
            listing: Fingerprint::default(),
            listing_since_ms: now_ms,
            committed_listing: None,
            vanished_ms: None,
            change_warned: false,
            last_error: None,
            failures: 0,
            next_attempt_ms: None,
            error_since_ms: None,
            last_checked_ms: None,
            listing_error: None,
            granted: BTreeSet::new(),
            access_waiting: BTreeSet::new(),
            unshared: BTreeSet::new(),
            phase_since_ms: Some(now_ms),
            processing: Processing::default(),
            results: BTreeMap::new(),
        }
    }

    /// Moves the flight to `phase`, stamping when (the one place phases change).
    pub fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            tracing::debug!(system = %self.key.system, flight = %self.key.flight,
                            from = self.phase.as_str(), to = phase.as_str(), "phase changed");
            self.phase = phase;
            self.phase_since_ms = Some(now_ms());
        }
    }

    /// Whether the daemon follows the task's processing: committed and not finished.
    pub fn follows_processing(&self) -> bool {
        matches!(self.phase, Phase::Committed | Phase::Processing)
    }

    /// The phase as shown to people (`vanished` overrides while the folder is gone).
    pub fn shown_phase(&self) -> &'static str {
        if self.vanished_ms.is_some() {
            "vanished"
        } else {
            self.phase.as_str()
        }
    }
}

/// An image WebODM confirmed holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedImage {
    /// Bytes WebODM reported, equal to the listing's size.
    pub size: u64,
    /// The listing's `lastModified` when uploaded.
    pub last_modified: String,
}

/// A create that was started; until cleared, it may or may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    /// `POST /api/projects/`.
    CreateProject,
    /// `POST /api/projects/{id}/tasks/`.
    CreateTask,
    /// `POST …/commit/`.
    Commit,
}

/// An open intent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Which flight.
    pub key: FlightKey,
    /// Which create.
    pub kind: IntentKind,
    /// When it was written (unix ms).
    pub started_ms: i64,
}

/// The sled store behind one state dir.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    flights: sled::Tree,
    images: sled::Tree,
    intents: sled::Tree,
    notifications: sled::Tree,
    flushes: Flushes,
    _lock: File,
}

/// Group-commit bookkeeping for [`Store::flush`].
#[derive(Default)]
struct Flushes {
    /// One flush at a time.
    turn: tokio::sync::Mutex<()>,
    /// Flush requests so far (each after its write).
    written: AtomicU64,
    /// Requests known to be on disk.
    durable: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking the state dir's lock.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let io = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock_dir(dir)?;
        let db = open_compacted(dir)?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StateError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a 4-byte integer".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StateError::TooNew {
                        dir: dir.to_path_buf(),
                        found,
                    });
                }
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            flights: db.open_tree("flights")?,
            images: db.open_tree("images")?,
            intents: db.open_tree("intents")?,
            notifications: db.open_tree("notifications")?,
            flushes: Flushes::default(),
            db,
            _lock: lock,
        })
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every flight record, ordered by key.
    pub fn flights(&self) -> Result<Vec<FlightRecord>, StateError> {
        flight_records(&self.flights)
    }

    /// One flight's record.
    pub fn flight(&self, key: &FlightKey) -> Result<Option<FlightRecord>, StateError> {
        self.flights
            .get(key.db_key())?
            .map(|v| decode(&v, &key.to_string()))
            .transpose()
    }

    /// Writes a flight record and flushes it to disk.
    pub async fn put_flight(&self, rec: &FlightRecord) -> Result<(), StateError> {
        self.put_flight_unflushed(rec)?;
        self.flush().await
    }

    /// Writes a flight record without waiting for the disk (sled writes it within 500 ms): for
    /// bookkeeping whose loss in a crash costs nothing but a repeated listing (when a flight was
    /// last checked, a listing error).
    pub fn put_flight_unflushed(&self, rec: &FlightRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(rec).expect("records serialize");
        self.flights.insert(rec.key.db_key(), bytes)?;
        Ok(())
    }

    /// The images WebODM confirmed for a flight, by file name.
    pub fn uploaded_images(
        &self,
        key: &FlightKey,
    ) -> Result<BTreeMap<String, UploadedImage>, StateError> {
        let prefix = key.image_prefix();
        self.images
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let rec = decode(&v, &format!("image {key}/{name}"))?;
                Ok((name, rec))
            })
            .collect()
    }

    /// Records an image WebODM confirmed, and flushes.
    pub async fn mark_uploaded(
        &self,
        key: &FlightKey,
        name: &str,
        image: &UploadedImage,
    ) -> Result<(), StateError> {
        let mut k = key.image_prefix();
        k.extend_from_slice(name.as_bytes());
        self.images
            .insert(k, serde_json::to_vec(image).expect("records serialize"))?;
        self.flush().await
    }

    /// Drops a flight's image records (its task is gone and will be recreated).
    pub fn clear_images(&self, key: &FlightKey) -> Result<(), StateError> {
        for k in self.images.scan_prefix(key.image_prefix()).keys() {
            self.images.remove(k?)?;
        }
        Ok(())
    }

    /// Writes an intent and flushes it, before the create it announces.
    pub async fn open_intent(&self, key: &FlightKey, kind: IntentKind) -> Result<(), StateError> {
        let intent = Intent {
            key: key.clone(),
            kind,
            started_ms: now_ms(),
        };
        self.intents.insert(
            intent_key(key, kind),
            serde_json::to_vec(&intent).expect("records serialize"),
        )?;
        self.flush().await
    }

    /// Clears an intent once the create's outcome is recorded.
    pub async fn close_intent(&self, key: &FlightKey, kind: IntentKind) -> Result<(), StateError> {
        self.intents.remove(intent_key(key, kind))?;
        self.flush().await
    }

    /// Whether an intent is open for this flight and create.
    pub fn has_intent(&self, key: &FlightKey, kind: IntentKind) -> Result<bool, StateError> {
        Ok(self.intents.contains_key(intent_key(key, kind))?)
    }

    /// Every open intent.
    pub fn intents(&self) -> Result<Vec<Intent>, StateError> {
        self.intents
            .iter()
            .values()
            .map(|v| decode(&v?, "intents"))
            .collect()
    }

    /// The notification record stored under `id`, if any.
    pub fn notification<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
    ) -> Result<Option<T>, StateError> {
        self.notifications
            .get(id.as_bytes())?
            .map(|v| decode(&v, &format!("notification {id:?}")))
            .transpose()
    }

    /// Stores a notification record under `id` (not flushed: sled writes it out within
    /// 500 ms, and a flush on shutdown covers the rest).
    pub fn put_notification<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(record).expect("records serialize");
        self.notifications.insert(id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Every notification record whose id starts with `prefix`, ordered by id.
    pub fn notifications<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StateError> {
        self.notifications
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k).into_owned();
                let rec = decode(&v, &format!("notification {id:?}"))?;
                Ok((id, rec))
            })
            .collect()
    }

    /// Drops everything known about a flight; returns whether it was known.
    pub async fn forget(&self, key: &FlightKey) -> Result<bool, StateError> {
        let known = self.flights.remove(key.db_key())?.is_some();
        self.clear_images(key)?;
        for kind in [
            IntentKind::CreateProject,
            IntentKind::CreateTask,
            IntentKind::Commit,
        ] {
            self.intents.remove(intent_key(key, kind))?;
        }
        self.flush().await?;
        Ok(known)
    }

    /// Flushes everything written so far to disk.
    ///
    /// sled 0.34's `flush_async` deadlocks when many run at once (they occupy every thread of
    /// sled's I/O pool while waiting for writes that need a thread of that pool), so flushes
    /// are serialized and run with the blocking `flush` on tokio's blocking pool. They are also
    /// grouped: a caller whose write was covered by a flush that started after it returns at once.
    pub async fn flush(&self) -> Result<(), StateError> {
        let mine = self.flushes.written.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.flushes.turn.lock().await;
        if self.flushes.durable.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let covers = self.flushes.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StateError::Io {
                dir: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        self.flushes.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

fn intent_key(key: &FlightKey, kind: IntentKind) -> Vec<u8> {
    let mut k = key.image_prefix();
    k.push(kind as u8);
    k
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8], what: &str) -> Result<T, StateError> {
    serde_json::from_slice(v).map_err(|e| StateError::Corrupt {
        key: what.to_string(),
        reason: e.to_string(),
    })
}

/// Opens sled's database. The state dir's own lock is held, so a sled lock still taken can only
/// be this process's previous store of the same dir, whose background flusher thread lets go of
/// the file a moment after the store was dropped: wait for it (a few seconds at most).
/// Every flight record of the `flights` tree, ordered by key.
fn flight_records(tree: &sled::Tree) -> Result<Vec<FlightRecord>, StateError> {
    tree.iter()
        .values()
        .map(|v| decode(&v?, "flights"))
        .collect()
}

/// The mark, in `meta`, that the store holds no image records of committed flights.
pub const COMMITTED_IMAGES_DROPPED: &str = "committed_images_dropped";

/// Opens `<dir>/db`. Once per store, a store that older versions left holding the image
/// records of committed flights (nothing reads them; committing now drops them) is rewritten
/// without them: removing them in place would leave sled's page table and segments sized
/// for the old store, costing the daemon memory and idle CPU for good. The rewrite goes to
/// `db.new`, which then replaces `db`; an interrupted rewrite is finished or discarded here.
fn open_compacted(dir: &Path) -> Result<sled::Db, StateError> {
    let (path, new, old) = (dir.join("db"), dir.join("db.new"), dir.join("db.old"));
    let io = |source| StateError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    if old.exists() {
        if !path.exists() && new.exists() {
            std::fs::rename(&new, &path).map_err(io)?;
        }
        std::fs::remove_dir_all(&old).map_err(io)?;
    }
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(io)?;
    }
    let db = open_sled(&path, None)?;
    if db
        .open_tree("meta")?
        .get(COMMITTED_IMAGES_DROPPED)?
        .is_some()
    {
        return Ok(db);
    }
    // Read (and rewrite) with a small cache: the old records are read once.
    drop(db);
    let db = open_sled(&path, Some(REWRITE_CACHE))?;
    let meta = db.open_tree("meta")?;
    let flights = flight_records(&db.open_tree("flights")?)?;
    let images = db.open_tree("images")?;
    let mut stale = 0usize;
    for rec in flights.iter().filter(|r| r.phase.is_committed()) {
        stale += images.scan_prefix(rec.key.image_prefix()).count();
    }
    if stale == 0 {
        meta.insert(COMMITTED_IMAGES_DROPPED, &[1u8])?;
        db.flush()?;
        drop((images, meta, db));
        return open_sled(&path, None);
    }
    let fresh = open_sled(&new, Some(REWRITE_CACHE))?;
    for name in db.tree_names() {
        if name == b"__sled__default" as &[u8] || name == b"images" as &[u8] {
            continue;
        }
        let (from, to) = (db.open_tree(&name)?, fresh.open_tree(&name)?);
        for kv in from.iter() {
            let (k, v) = kv?;
            to.insert(k, v)?;
        }
    }
    let to = fresh.open_tree("images")?;
    for rec in flights.iter().filter(|r| !r.phase.is_committed()) {
        for kv in images.scan_prefix(rec.key.image_prefix()) {
            let (k, v) = kv?;
            to.insert(k, v)?;
        }
    }
    fresh
        .open_tree("meta")?
        .insert(COMMITTED_IMAGES_DROPPED, &[1u8])?;
    fresh.flush()?;
    drop((fresh, to, images, meta, db));
    std::fs::rename(&path, &old).map_err(io)?;
    std::fs::rename(&new, &path).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)?;
    tracing::info!(
        records = stale,
        "rewrote the state store without the image records of committed flights (kept by older versions)"
    );
    open_sled(&path, None)
}

/// sled's page cache while a store is rewritten (its default is 1 GiB).
const REWRITE_CACHE: u64 = 8 << 20;

/// Opens a sled db, waiting up to 5 s for a lock this process may still hold (a db just
/// dropped); `cache` overrides sled's page cache size.
fn open_sled(path: &Path, cache: Option<u64>) -> Result<sled::Db, StateError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut config = sled::Config::new().path(path).flush_every_ms(Some(500));
        if let Some(bytes) = cache {
            config = config.cache_capacity(bytes);
        }
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Takes `<dir>/lock` exclusively and writes this process's pid into it.
fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join("lock");
    let io = |source| StateError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // The lock is held by this process itself only when one of its stores of this dir was just
    // dropped and a child it is starting still has the descriptor between fork and exec: wait
    // for that a moment. Another process's lock is reported at once.
    let deadline = std::time::Instant::now() + OWN_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io)?;
                file.rewind().map_err(io)?;
                writeln!(file, "{}", std::process::id()).map_err(io)?;
                file.flush().map_err(io)?;
                return Ok(file);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                file.rewind().map_err(io)?;
                let _ = file.read_to_string(&mut text);
                let holder: Option<u32> = text.trim().parse().ok();
                if holder == Some(std::process::id()) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

/// How long [`lock_dir`] waits for a lock this process itself holds.
const OWN_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The current time as unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A time as unix milliseconds.
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_and_forget_drops_everything() {
        let dir = tempfile::tempdir().unwrap();
        let key = FlightKey::new("ptdatax.project.a", "Vuelo Año 2");
        {
            let store = Store::open(dir.path()).unwrap();
            let mut rec = FlightRecord::new(key.clone(), 1000);
            rec.project_id = Some(7);
            store.put_flight(&rec).await.unwrap();
            let img = UploadedImage {
                size: 12,
                last_modified: "2024-01-01T00:00:00Z".into(),
            };
            store.mark_uploaded(&key, "IMG 1.jpg", &img).await.unwrap();
            store
                .open_intent(&key, IntentKind::CreateTask)
                .await
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let rec = store.flight(&key).unwrap().unwrap();
        assert_eq!(rec.project_id, Some(7));
        assert_eq!(
            store
                .uploaded_images(&key)
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["IMG 1.jpg"]
        );
        assert!(store.has_intent(&key, IntentKind::CreateTask).unwrap());
        assert!(!store.has_intent(&key, IntentKind::Commit).unwrap());
        // A flight whose name extends another's must not share its images.
        let other = FlightKey::new("ptdatax.project.a", "Vuelo");
        assert!(store.uploaded_images(&other).unwrap().is_empty());
        assert!(store.forget(&key).await.unwrap());
        assert!(store.flight(&key).unwrap().is_none());
        assert!(store.uploaded_images(&key).unwrap().is_empty());
        assert!(store.intents().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_older_store_is_rewritten_without_its_committed_flights_image_records() {
        let dir = tempfile::tempdir().unwrap();
        let img = UploadedImage {
            size: 1,
            last_modified: String::new(),
        };
        let (done, busy) = (FlightKey::new("s", "done"), FlightKey::new("s", "busy"));
        {
            let store = Store::open(dir.path()).unwrap();
            for (key, phase) in [(&done, Phase::Completed), (&busy, Phase::Uploading)] {
                let mut rec = FlightRecord::new(key.clone(), 1);
                rec.set_phase(phase);
                store.put_flight(&rec).await.unwrap();
                for i in 0..3 {
                    store
                        .mark_uploaded(key, &format!("{i}.jpg"), &img)
                        .await
                        .unwrap();
                }
            }
            store.open_intent(&busy, IntentKind::Commit).await.unwrap();
            store.put_notification("daemon/passes", &3u32).unwrap();
            // As an older version left it: without the mark of the clean-up.
            store
                .db
                .open_tree("meta")
                .unwrap()
                .remove(COMMITTED_IMAGES_DROPPED)
                .unwrap();
            store.flush().await.unwrap();
        }
        // A rewrite interrupted before its swap leaves a `db.new` that is thrown away.
        std::fs::create_dir(dir.path().join("db.new")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.uploaded_images(&done).unwrap().is_empty());
        assert_eq!(store.uploaded_images(&busy).unwrap().len(), 3);
        assert_eq!(store.flights().unwrap().len(), 2, "records stay");
        assert!(store.has_intent(&busy, IntentKind::Commit).unwrap());
        assert_eq!(store.notification::<u32>("daemon/passes").unwrap(), Some(3));
        assert!(!dir.path().join("db.new").exists() && !dir.path().join("db.old").exists());
        drop(store);
        // Interrupted between the two renames: `db.new` is the store.
        std::fs::rename(dir.path().join("db"), dir.path().join("db.new")).unwrap();
        std::fs::create_dir(dir.path().join("db.old")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.uploaded_images(&busy).unwrap().len(), 3);
        assert!(!dir.path().join("db.old").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushes_complete() {
        // sled's own flush_async deadlocks under this load; Store::flush must not.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = FlightKey::new("s", "f");
        let img = UploadedImage {
            size: 1,
            last_modified: String::new(),
        };
        let writes = (0..256).map(|i| {
            let (store, key, img) = (&store, &key, &img);
            async move { store.mark_uploaded(key, &format!("{i}.jpg"), img).await }
        });
        let all = futures_util::future::try_join_all(writes);
        tokio::time::timeout(std::time::Duration::from_secs(120), all)
            .await
            .expect("flushes finish")
            .unwrap();
        assert_eq!(store.uploaded_images(&key).unwrap().len(), 256);
    }

    #[tokio::test]
    async fn notification_records_survive_reopen_and_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_notification("flight/a/committed", &1u32).unwrap();
            store.put_notification("flight/b/committed", &2u32).unwrap();
            store.put_notification("daemon/passes", &3u32).unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.notification::<u32>("daemon/passes").unwrap(), Some(3));
        assert_eq!(store.notification::<u32>("nope").unwrap(), None);
        let flights: Vec<(String, u32)> = store.notifications("flight/").unwrap();
        assert_eq!(
            flights,
            vec![
                ("flight/a/committed".to_string(), 1),
                ("flight/b/committed".to_string(), 2)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_right_after_a_drop_is_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let store = Store::open(dir.path()).unwrap();
            let rec = FlightRecord::new(FlightKey::new("s", format!("f{i}")), i);
            store.put_flight(&rec).await.unwrap();
        }
        assert_eq!(
            Store::open(dir.path()).unwrap().flights().unwrap().len(),
            50
        );
    }

    #[test]
    fn second_open_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StateError::Locked { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
