//! Runs a [`Plan`]: creates or adopts projects and tasks, streams images Tapis → WebODM
//! (small ones several per upload request), commits, and records every outcome in the store.
//!
//! Crash-safety rules (design.md): an intent is flushed before every create and cleared after
//! its result is recorded; a project is always looked up (exact name + key tag) before it is
//! created, and a task whenever its project was adopted or its intent is open; an image is
//! recorded only after WebODM confirmed exactly the listing's byte count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::{future, stream, StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::clients::http::{verify_length, ApiError, ByteStream, RetryPolicy};
use crate::clients::tapis::TapisClient;
use crate::clients::webodm::{NewProject, NewTask, Project, Task, UploadPart, WebodmClient};
use crate::config::Config;
use crate::engine::discover::Image;
use crate::engine::plan::{FlightPlan, Step};
use crate::engine::state::{
    now_ms, FlightKey, FlightRecord, IntentKind, Phase, Processing, StateError, Store,
    UploadedImage,
};
use crate::engine::summary::{CreatedProject, PassSummary};
use crate::engine::{access, naming};

/// Why one step of a flight failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A WebODM or Tapis call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The failure.
        source: ApiError,
    },
    /// The store failed.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// Some images could not be transferred.
    #[error("{failed} of {total} images not uploaded; first failure: {first}")]
    Images {
        /// How many failed.
        failed: usize,
        /// How many were tried.
        total: usize,
        /// The first failure.
        first: String,
    },
    /// WebODM confirmed a different byte count than Tapis listed.
    #[error("image {name}: WebODM stored {stored} bytes, Tapis lists {listed}")]
    SizeMismatch {
        /// File name.
        name: String,
        /// Bytes WebODM reported.
        stored: u64,
        /// Bytes in the listing.
        listed: u64,
    },
    /// A person deleted the project or committed task.
    #[error("{0} was deleted in WebODM; it is not recreated until `tapis-webodm-sync forget` is run for this flight")]
    Deleted(String),
    /// A result written to Tapis is not listed at WebODM's size.
    #[error("result {asset}: Tapis lists {} after the write, WebODM's asset has {expected} bytes", listed.map_or_else(|| "no file".to_string(), |n| format!("{n} bytes")))]
    ResultSize {
        /// The asset.
        asset: String,
        /// The size Tapis lists (`None`: nothing, or a folder).
        listed: Option<u64>,
        /// WebODM's `Content-Length`.
        expected: u64,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(ApiError) -> StepError {
    let what = what.into();
    move |source| StepError::Api { what, source }
}

/// Like [`api`], except that a 404 means `gone` was deleted in WebODM.
fn api_or_deleted(what: &str, gone: String) -> impl FnOnce(ApiError) -> StepError + '_ {
    move |e| {
        if e.is_not_found() {
            StepError::Deleted(gone)
        } else {
            api(what)(e)
        }
    }
}

/// What the engine needs to run a plan.
pub struct Engine<'a> {
    /// Tapis client.
    pub tapis: &'a TapisClient,
    /// WebODM client.
    pub webodm: &'a WebodmClient,
    /// The store.
    pub store: &'a Store,
    /// The effective config.
    pub config: &'a Config,
    /// Set when the daemon is stopping: no new image is started.
    pub stopping: Arc<AtomicBool>,
    /// Transfer progress, when stdout is a terminal (its length grows as flights are planned).
    pub progress: Option<indicatif::ProgressBar>,
    /// Retries of creates, commits and transfers.
    pub policy: RetryPolicy,
    /// Upload requests in flight at once, across all flights (`webodm.max_concurrent_uploads`).
    pub uploads: Arc<Semaphore>,
}

/// What applying one flight's plan did; added into the pass summary.
#[derive(Default)]
pub struct FlightOutcome {
    created_project: Option<CreatedProject>,
    tasks_created: usize,
    images_uploaded: u64,
    bytes_uploaded: u64,
    committed: bool,
    grants_added: usize,
    restarted: bool,
    results_written: u64,
    result_bytes: u64,
    /// Problems that are no step failure (a results conflict), reported once.
    problems: Vec<String>,
    error: Option<String>,
}

impl PassSummary {
    /// Adds what one flight's plan did.
    pub fn absorb(&mut self, o: FlightOutcome) {
        self.projects_created += o.created_project.is_some() as usize;
        self.created_projects.extend(o.created_project);
        self.tasks_created += o.tasks_created;
        self.images_uploaded += o.images_uploaded;
        self.bytes_uploaded += o.bytes_uploaded;
        self.tasks_committed += o.committed as usize;
        self.grants_added += o.grants_added;
        self.tasks_restarted += o.restarted as usize;
        self.results_written += o.results_written;
        self.result_bytes += o.result_bytes;
        self.errors.extend(o.problems);
        self.errors.extend(o.error);
    }
}

impl Engine<'_> {
    /// Records that a flight's folder is gone from Tapis (nothing is deleted anywhere).
    pub async fn mark_vanished(&self, key: &FlightKey) -> Result<(), StateError> {
        if let Some(mut rec) = self.store.flight(key)? {
            warn!(system = %key.system, flight = %key.flight, "flight folder is gone from Tapis; its WebODM project is kept");
            rec.vanished_ms = Some(now_ms());
            self.store.put_flight(&rec).await?;
        }
        Ok(())
    }

    /// One flight: runs its steps in order, stopping at the first failure, and records the
    /// outcome (with the next attempt time when it failed).
    pub async fn reconcile(&self, fp: &FlightPlan) -> FlightOutcome {
        let key = &fp.flight.key;
        let mut out = FlightOutcome::default();
        let mut rec = match self.store.flight(key) {
            Ok(r) => r.unwrap_or_else(|| FlightRecord::new(key.clone(), now_ms())),
            Err(e) => {
                out.error = Some(format!("{key}: {e}"));
                return out;
            }
        };
        rec.listing = fp.fingerprint;
        rec.listing_since_ms = fp.listing_since_ms;
        rec.images_total = fp.fingerprint.count;
        if fp.listed {
            rec.last_checked_ms = Some(now_ms());
            rec.listing_error = None;
        }
        if rec.vanished_ms.take().is_some() {
            info!(system = %key.system, flight = %key.flight, "flight folder is back on Tapis");
        }
        let mut result = Ok(());
        for step in &fp.steps {
            // Stopping: finish nothing new (the images in flight finish in `upload_all`).
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            result = self.step(step, fp, &mut rec, &self.uploads, &mut out).await;
            if result.is_err() {
                break;
            }
        }
        if !rec.phase.is_committed() {
            match self.count_uploaded(&rec, &fp.flight.images) {
                Ok(n) => rec.images_uploaded = n,
                Err(e) => result = result.and(Err(e)),
            }
        }
        match result {
            Ok(()) => {
                rec.failures = 0;
                rec.next_attempt_ms = None;
                // A deleted or failed flight keeps what it says (no error that retries).
                if !matches!(rec.phase, Phase::DeletedInWebodm | Phase::Failed) {
                    rec.last_error = None;
                    rec.error_since_ms = None;
                }
            }
            Err(e) => {
                if matches!(e, StepError::Deleted(_)) {
                    rec.set_phase(Phase::DeletedInWebodm);
                }
                rec.failures += 1;
                let delay = crate::engine::plan::retry_delay(rec.failures, &self.config.retry);
                rec.next_attempt_ms = Some(now_ms() + delay.as_millis() as i64);
                let msg = e.to_string();
                warn!(system = %key.system, flight = %key.flight, error = %msg,
                      retry_in = %humantime::format_duration(delay), "flight failed; the other flights go on");
                if rec.last_error.as_deref() != Some(msg.as_str()) {
                    rec.error_since_ms = Some(now_ms());
                }
                rec.last_error = Some(msg.clone());
                out.error = Some(format!("{key}: {msg}"));
            }
        }
        if let Err(e) = self.store.put_flight(&rec).await {
            out.error.get_or_insert_with(|| format!("{key}: {e}"));
        }
        out
    }

    async fn step(
        &self,
        step: &Step,
        fp: &FlightPlan,
        rec: &mut FlightRecord,
        uploads: &Arc<Semaphore>,
        out: &mut FlightOutcome,
    ) -> Result<(), StepError> {
        match step {
            Step::EnsureProject { .. } => {
                if let Some(created) = self.ensure_project(fp, rec).await? {
                    out.created_project = Some(created);
                }
            }
            Step::EnsureTask => {
                out.tasks_created += self.ensure_task(rec).await? as usize;
            }
            Step::Upload { images, .. } => {
                let (n, bytes) = self
                    .upload_all(rec, &fp.flight.images_path, images, uploads)
                    .await?;
                out.images_uploaded += n;
                out.bytes_uploaded += bytes;
            }
            Step::Commit => out.committed = self.commit(fp, rec).await?,
            Step::ReplaceVanishedTask { task } => {
                warn!(system = %rec.key.system, flight = %rec.key.flight, task = %task,
                      "partial task vanished from WebODM (deleted after 72 h uncommitted?); creating a new one and uploading every image again");
                self.store.clear_images(&rec.key)?;
                rec.task_id = None;
                rec.images_uploaded = 0;
                rec.set_phase(Phase::ProjectCreated);
                self.store.put_flight(rec).await?;
            }
            Step::MarkDeleted { what } => {
                warn!(system = %rec.key.system, flight = %rec.key.flight,
                      "{what} was deleted in WebODM; not recreating it until `tapis-webodm-sync forget {} {}` is run", rec.key.system, rec.key.flight);
                rec.set_phase(Phase::DeletedInWebodm);
                rec.last_error = Some(format!(
                    "{what} was deleted in WebODM; run `forget` to sync this flight again"
                ));
            }
            Step::StartUpdateTask { generation } => {
                info!(system = %rec.key.system, flight = %rec.key.flight, generation,
                      "images changed after commit; starting a new task with every image");
                self.store.clear_images(&rec.key)?;
                rec.generation = *generation;
                rec.task_id = None;
                rec.images_uploaded = 0;
                rec.processing = Default::default();
                // A failed or canceled earlier task's outcome is no longer the flight's.
                rec.last_error = None;
                rec.set_phase(Phase::ProjectCreated);
                self.store.put_flight(rec).await?;
            }
            Step::WarnChangedAfterCommit => {
                warn!(system = %rec.key.system, flight = %rec.key.flight,
                      "images changed on Tapis after the task was committed; WebODM keeps the committed set");
                rec.change_warned = true;
            }
            Step::GrantAccess { grantees } => {
                out.grants_added += self.grant_access(rec, grantees).await?;
            }
            Step::NoteAccess { waiting, unshared } => {
                let key = &rec.key;
                for user in unshared.difference(&rec.unshared) {
                    warn!(system = %key.system, flight = %key.flight, user = %user,
                          "no longer listed on Tapis for this flight's system; their access in WebODM is kept (remove it there if they should lose it)");
                }
                for user in waiting.difference(&rec.access_waiting) {
                    info!(system = %key.system, flight = %key.flight, user = %user,
                          "should see the project but has no WebODM account yet; access follows once the account exists");
                }
                rec.access_waiting = waiting.clone();
                rec.unshared = unshared.clone();
            }
            Step::PollTask => self.poll_task(rec).await?,
            Step::RestartTask { attempt } => {
                out.restarted = self.restart_task(rec, *attempt).await?;
            }
            Step::CopyResults {
                assets,
                unavailable,
            } => {
                let copied = self.copy_results(rec, assets, unavailable).await?;
                out.results_written += copied.files;
                out.result_bytes += copied.bytes;
                out.problems.extend(copied.conflicts);
            }
        }
        Ok(())
    }

    /// Gives `grantees` access to the flight's project (see [`access::grant`]) and records who
    /// holds it now; returns how many entries were added in WebODM.
    async fn grant_access(
        &self,
        rec: &mut FlightRecord,
        grantees: &std::collections::BTreeSet<crate::clients::webodm::Grantee>,
    ) -> Result<usize, StepError> {
        let project = rec.project_id.expect("GrantAccess follows EnsureProject");
        let permissions = self.config.access.permission_names();
        let granted = self
            .policy
            .run(&format!("{}: access", rec.key), || {
                access::grant(self.webodm, project, grantees, &permissions)
            })
            .await
            .map_err(api_or_deleted(
                "giving access to the project",
                format!("project {project}"),
            ))?;
        if granted.added > 0 {
            let who: Vec<String> = granted.present.iter().map(access::shown).collect();
            info!(system = %rec.key.system, flight = %rec.key.flight, project, added = granted.added,
                  shared_with = %who.join(", "), "gave access to the project");
        }
        rec.granted.extend(granted.present);
        rec.access_waiting.extend(granted.unknown_users);
        self.store.put_flight(rec).await?;
        Ok(granted.added)
    }

    /// Finds the flight's project (exact name + key tag) or creates it. Every attempt looks up
    /// first, so a create that happened but whose answer was lost (502, reset, crash) is
    /// adopted instead of repeated.
    async fn ensure_project(
        &self,
        fp: &FlightPlan,
        rec: &mut FlightRecord,
    ) -> Result<Option<CreatedProject>, StepError> {
        let key = rec.key.clone();
        let name = naming::project_name(&key);
        let tag = naming::key_tag(&key);
        let new = NewProject {
            name: name.clone(),
            description: naming::description(
                &key,
                &fp.flight.images_path,
                fp.flight.image_count() as u64,
                &crate::engine::state::rfc3339(rec.first_seen_ms),
            ),
            tags: naming::tags(&key),
        };
        self.store
            .open_intent(&key, IntentKind::CreateProject)
            .await?;
        let attempted = AtomicBool::new(false);
        let (project, created) = self
            .policy
            .run(&format!("{key}: project"), || async {
                let found = self.webodm.find_projects(&name).await?;
                if let Some(p) = pick_project(found, &tag) {
                    return Ok((p, attempted.load(Ordering::SeqCst)));
                }
                attempted.store(true, Ordering::SeqCst);
                Ok((self.webodm.create_project(&new).await?, true))
            })
            .await
            .map_err(api("creating the project"))?;
        if created {
            info!(system = %key.system, flight = %key.flight, project = project.id, name = %project.name, "created project");
        } else {
            info!(system = %key.system, flight = %key.flight, project = project.id, "adopted existing project");
            // WebODM may hold a task and images this store does not know about.
            rec.verify_uploads = true;
        }
        rec.project_id = Some(project.id);
        rec.project_name = Some(project.name.clone());
        rec.task_id = None;
        rec.set_phase(Phase::ProjectCreated);
        self.store.put_flight(rec).await?;
        self.store
            .close_intent(&key, IntentKind::CreateProject)
            .await?;
        Ok(created.then(|| CreatedProject {
            project_id: project.id,
            project_name: project.name,
            flight_name: key.flight.clone(),
            system_id: key.system.clone(),
            image_count: fp.flight.image_count() as u64,
        }))
    }

    /// Finds the flight's task or creates it; returns whether it created one. The project's
    /// tasks are looked up first when the project was adopted, when an earlier create may have
    /// happened (open intent), and before every retry.
    async fn ensure_task(&self, rec: &mut FlightRecord) -> Result<bool, StepError> {
        let key = rec.key.clone();
        let project = rec.project_id.expect("EnsureTask follows EnsureProject");
        let generation = rec.generation;
        let look_first =
            rec.verify_uploads || self.store.has_intent(&key, IntentKind::CreateTask)?;
        let new = NewTask {
            name: naming::task_name(&key, generation),
            options: self.config.webodm.task_options.clone(),
            tags: naming::task_tags(&key, generation),
        };
        self.store.open_intent(&key, IntentKind::CreateTask).await?;
        let attempted = AtomicBool::new(false);
        let ((task, found_generation), created) = self
            .policy
            .run(&format!("{key}: task"), || async {
                let tried = attempted.load(Ordering::SeqCst);
                if look_first || tried {
                    let tasks = self.webodm.list_tasks(project).await?;
                    if let Some(t) = pick_task(tasks, &key, generation) {
                        return Ok((t, tried));
                    }
                }
                attempted.store(true, Ordering::SeqCst);
                let t = self.webodm.create_task(project, &new).await?;
                Ok(((t, generation), true))
            })
            .await
            .map_err(api_or_deleted(
                "creating the task",
                format!("project {project}"),
            ))?;
        if created {
            info!(system = %key.system, flight = %key.flight, task = %task.id, "created task");
            self.store.clear_images(&key)?;
            rec.images_uploaded = 0;
            rec.set_phase(Phase::TaskCreated);
        } else {
            info!(system = %key.system, flight = %key.flight, task = %task.id, partial = task.partial, "adopted existing task");
            rec.verify_uploads = true;
            if task.partial {
                rec.set_phase(Phase::TaskCreated);
            } else {
                rec.committed_listing = Some(rec.listing);
                rec.processing = Processing::waiting_since(now_ms());
                rec.set_phase(Phase::Committed);
            }
        }
        rec.task_id = Some(task.id);
        rec.generation = found_generation;
        self.store.put_flight(rec).await?;
        self.store
            .close_intent(&key, IntentKind::CreateTask)
            .await?;
        Ok(created)
    }

    /// Streams the images into the task: packed into upload requests (see [`batches`]), up to
    /// `max_concurrent_uploads` requests at once across all flights; returns the images and
    /// bytes WebODM confirmed. With `verify_uploads` (the task was adopted), an image WebODM
    /// already holds at the listed size is recorded without uploading it.
    async fn upload_all(
        &self,
        rec: &mut FlightRecord,
        images_path: &str,
        images: &[Image],
        uploads: &Arc<Semaphore>,
    ) -> Result<(u64, u64), StepError> {
        if rec.phase.is_committed() {
            // An adopted task turned out to be committed already: nothing can be added.
            return Ok((0, 0));
        }
        let target = Target {
            key: rec.key.clone(),
            project: rec.project_id.expect("Upload follows EnsureProject"),
            task: rec.task_id.clone().expect("Upload follows EnsureTask"),
            images_path: images_path.to_string(),
        };
        rec.set_phase(Phase::Uploading);
        let concurrency = self.config.webodm.max_concurrent_uploads;
        let mut results: Vec<Result<Option<u64>, StepError>> = Vec::new();
        let mut todo: Vec<&Image> = images.iter().collect();
        if rec.verify_uploads {
            let checked: Vec<(&Image, Result<bool, StepError>)> = stream::iter(todo)
                .map(|img| {
                    let target = &target;
                    async move { (img, self.already_held(target, img).await) }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            todo = Vec::new();
            for (img, held) in checked {
                match held {
                    Ok(true) => results.push(Ok(None)),
                    Ok(false) => todo.push(img),
                    Err(e) => results.push(Err(e)),
                }
            }
            todo.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let webodm = &self.config.webodm;
        let groups = batches(
            &todo,
            webodm.upload_batch_files,
            webodm.upload_batch_bytes.bytes(),
        );
        let sent: Vec<Vec<Result<Option<u64>, StepError>>> = stream::iter(groups)
            .map(|group| {
                let target = &target;
                async move {
                    let _permit = uploads.acquire().await.expect("semaphore never closed");
                    if self.stopping.load(Ordering::SeqCst) {
                        return Vec::new();
                    }
                    self.send_batch(target, &group).await
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.extend(sent.into_iter().flatten());
        let (mut n, mut bytes, mut failed, mut first) = (0, 0, 0, None);
        for r in results {
            match r {
                Ok(Some(b)) => {
                    n += 1;
                    bytes += b;
                }
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e.to_string());
                }
            }
        }
        match first {
            None => Ok((n, bytes)),
            Some(first) => Err(StepError::Images {
                failed,
                total: images.len(),
                first,
            }),
        }
    }

    /// Whether WebODM already holds this image at its listed size (then it is recorded as
    /// uploaded). Any other (or unknown) size means it is uploaded again, which overwrites it.
    async fn already_held(&self, target: &Target, img: &Image) -> Result<bool, StepError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let key = &target.key;
        let held = self
            .webodm
            .image_size(target.project, &target.task, &img.name)
            .await
            .map_err(api(format!("checking image {}", img.name)))?;
        match held {
            Some(size) if size == img.size => {
                debug!(system = %key.system, flight = %key.flight, image = %img.name, "WebODM already holds this image");
                self.store
                    .mark_uploaded(key, &img.name, &uploaded_record(img))
                    .await?;
                Ok(true)
            }
            Some(size) => {
                info!(system = %key.system, flight = %key.flight, image = %img.name, held = size, listed = img.size,
                      "WebODM holds another version of this image (its size differs from the listing); uploading it again");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Sends one batch in one upload request and records each image WebODM's answer confirms
    /// under its own name at its listed size; an image the answer leaves out or confirms at
    /// another size, and every image of a request that failed (its WebODM answer, or one
    /// part's Tapis download), is then uploaded on its own with [`Engine::transfer`]. A batch
    /// of one goes straight there. Returns each image's outcome (`Ok(Some(bytes))` uploaded).
    async fn send_batch(
        &self,
        target: &Target,
        group: &[&Image],
    ) -> Vec<Result<Option<u64>, StepError>> {
        if let [img] = group {
            return vec![self.transfer(target, img).await];
        }
        let key = &target.key;
        let parts = group.iter().map(|img| self.part(target, img)).collect();
        let (confirmed, alone): (Vec<&Image>, Vec<&Image>) = match self
            .webodm
            .upload_images(target.project, &target.task, parts)
            .await
        {
            Ok(stored) => {
                let (confirmed, alone): (Vec<&Image>, Vec<&Image>) = group
                    .iter()
                    .partition(|img| stored.get(&img.name) == Some(&img.size));
                for img in &alone {
                    info!(system = %key.system, flight = %key.flight, image = %img.name,
                          stored = ?stored.get(&img.name), listed = img.size,
                          "the batch answer does not confirm this image at its listed size; uploading it on its own");
                }
                (confirmed, alone)
            }
            // WebODM refused the request itself for good (the task is gone, no longer partial…):
            // one image at a time would be refused the same way.
            Err(e) if e.service() == "WebODM" && !e.is_retryable() => {
                return group
                    .iter()
                    .map(|img| Err(api(format!("uploading image {}", img.name))(e.clone())))
                    .collect();
            }
            Err(e) => {
                // Its images are sent again, one by one: count that as the retry it is.
                crate::metrics::retry(e.service(), e.class());
                info!(system = %key.system, flight = %key.flight, images = group.len(), error = %e,
                      "batch upload failed; uploading its images one by one");
                (Vec::new(), group.to_vec())
            }
        };
        let mut out: Vec<Result<Option<u64>, StepError>> =
            future::join_all(confirmed.iter().map(|img| self.record_upload(key, img))).await;
        for img in alone {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            out.push(self.transfer(target, img).await);
        }
        out
    }

    /// Copies one image Tapis → WebODM in a request of its own, with retries (each attempt
    /// re-opens the download); returns the bytes uploaded.
    async fn transfer(&self, target: &Target, img: &Image) -> Result<Option<u64>, StepError> {
        let attempt = || async {
            let part = self.part(target, img);
            self.webodm
                .upload_image(
                    target.project,
                    &target.task,
                    &part.name,
                    part.body,
                    part.len,
                )
                .await
        };
        let what = format!("{}: image {}", target.key, img.name);
        let stored = self
            .policy
            .run(&what, attempt)
            .await
            .map_err(api(format!("uploading image {}", img.name)))?;
        if stored != img.size {
            return Err(StepError::SizeMismatch {
                name: img.name.clone(),
                stored,
                listed: img.size,
            });
        }
        self.record_upload(&target.key, img).await
    }

    /// One image as a part of an upload request: its Tapis download, opened only when the
    /// part's first bytes are asked for (so a request holds at most one download open, and no
    /// download waits for an upload slot), checked to carry exactly the listed size, and
    /// feeding the heartbeat and the progress bar.
    fn part(&self, target: &Target, img: &Image) -> UploadPart {
        let tapis = self.tapis.clone();
        let system = target.key.system.clone();
        let path = format!("{}/{}", target.images_path, img.name);
        let size = img.size;
        let open = async move {
            let body = tapis.download(&system, &path).await?;
            Ok::<_, ApiError>(verify_length(body, size, path))
        };
        let body: ByteStream = Box::pin(
            stream::once(open)
                .try_flatten()
                .inspect(|_| crate::metrics::beat()),
        );
        let body = match &self.progress {
            Some(bar) => {
                let bar = bar.clone();
                Box::pin(body.inspect(move |c| {
                    if let Ok(c) = c {
                        bar.inc(c.len() as u64)
                    }
                }))
            }
            None => body,
        };
        UploadPart {
            name: img.name.clone(),
            len: size,
            body,
        }
    }

    /// Records an image WebODM confirmed at its listed size; returns its bytes.
    async fn record_upload(&self, key: &FlightKey, img: &Image) -> Result<Option<u64>, StepError> {
        self.store
            .mark_uploaded(key, &img.name, &uploaded_record(img))
            .await?;
        crate::metrics::image_uploaded(img.size);
        Ok(Some(img.size))
    }

    /// How many of the listed images WebODM confirmed in their listed version.
    fn count_uploaded(&self, rec: &FlightRecord, listed: &[Image]) -> Result<u64, StepError> {
        let done = self.store.uploaded_images(&rec.key)?;
        Ok(listed
            .iter()
            .filter(|i| {
                done.get(&i.name)
                    .is_some_and(|u| u.size == i.size && u.last_modified == i.last_modified)
            })
            .count() as u64)
    }

    /// Commits the task once every listed image is confirmed; returns whether this call
    /// committed it. Before a retry (or with an open intent) the task is read: a commit whose
    /// answer was lost is not sent again once the task is no longer partial.
    async fn commit(&self, fp: &FlightPlan, rec: &mut FlightRecord) -> Result<bool, StepError> {
        if rec.phase.is_committed() {
            return Ok(false);
        }
        rec.images_uploaded = self.count_uploaded(rec, &fp.flight.images)?;
        if rec.images_uploaded < rec.images_total {
            return Ok(false);
        }
        let key = rec.key.clone();
        let project = rec.project_id.expect("Commit follows EnsureProject");
        let task = rec.task_id.clone().expect("Commit follows EnsureTask");
        let look_first = self.store.has_intent(&key, IntentKind::Commit)?;
        self.store.open_intent(&key, IntentKind::Commit).await?;
        let attempted = AtomicBool::new(false);
        let committed_now = self
            .policy
            .run(&format!("{key}: commit"), || async {
                let tried = attempted.load(Ordering::SeqCst);
                if (look_first || tried) && !self.webodm.get_task(project, &task).await?.partial {
                    return Ok(tried);
                }
                attempted.store(true, Ordering::SeqCst);
                self.webodm.commit_task(project, &task).await?;
                Ok(true)
            })
            .await
            .map_err(api_or_deleted(
                "committing the task",
                format!("task {task}"),
            ))?;
        info!(system = %key.system, flight = %key.flight, task = %task, images = rec.images_total, "committed task for processing");
        rec.set_phase(Phase::Committed);
        rec.processing = Processing::waiting_since(now_ms());
        rec.committed_listing = Some(rec.listing);
        rec.change_warned = false;
        self.store.put_flight(rec).await?;
        // Nothing reads a committed flight's image records (an update task uploads the whole
        // set): drop them so the store grows with flights, not images.
        self.store.clear_images(&key)?;
        self.store.close_intent(&key, IntentKind::Commit).await?;
        Ok(committed_now)
    }
}

/// Where a flight's images go, and where they come from.
struct Target {
    key: FlightKey,
    project: i64,
    task: String,
    /// `<Flight>/<images_dir>` on Tapis.
    images_path: String,
}

/// What the store keeps of an image WebODM confirmed.
fn uploaded_record(img: &Image) -> UploadedImage {
    UploadedImage {
        size: img.size,
        last_modified: img.last_modified.clone(),
    }
}

/// Packs images, in order, into upload requests of at most `files` images and `bytes` bytes
/// each; an image of more than `bytes` goes alone.
fn batches<'i>(images: &[&'i Image], files: usize, bytes: u64) -> Vec<Vec<&'i Image>> {
    let mut out: Vec<Vec<&Image>> = Vec::new();
    let mut size = 0;
    for &img in images {
        match out.last_mut() {
            Some(batch) if batch.len() < files && size + img.size <= bytes => {
                batch.push(img);
                size += img.size;
            }
            _ => {
                out.push(vec![img]);
                size = img.size;
            }
        }
    }
    out
}

/// The daemon's project among those with the exact name: it carries the key tag; the oldest
/// wins if an earlier bug made several.
fn pick_project(found: Vec<Project>, tag: &str) -> Option<Project> {
    found
        .into_iter()
        .filter(|p| p.tags.iter().any(|t| t == tag))
        .min_by_key(|p| p.id)
}

/// The daemon's newest task of this flight from `generation` on (found by the key tag, or for
/// a task without tags by the exact first-task name), with its generation; a partial one wins
/// within a generation since it can still take images.
fn pick_task(tasks: Vec<Task>, key: &FlightKey, generation: u32) -> Option<(Task, u32)> {
    tasks
        .into_iter()
        .filter_map(|t| {
            let g = naming::task_generation(key, &t.tags, t.name.as_deref())?;
            (g >= generation).then_some((t, g))
        })
        .max_by(|(a, ga), (b, gb)| (ga, a.partial, &b.id).cmp(&(gb, b.partial, &a.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, size: u64) -> Image {
        Image {
            name: name.into(),
            size,
            last_modified: "2026-01-01T00:00:00Z".into(),
            companion: false,
        }
    }

    fn names(groups: &[Vec<&Image>]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|i| i.name.clone()).collect())
            .collect()
    }

    #[test]
    fn batches_pack_in_order_up_to_the_file_and_byte_budgets() {
        let images: Vec<Image> = (0..7).map(|i| image(&format!("i{i}"), 10)).collect();
        let refs: Vec<&Image> = images.iter().collect();
        assert_eq!(
            names(&batches(&refs, 3, 1_000)),
            [vec!["i0", "i1", "i2"], vec!["i3", "i4", "i5"], vec!["i6"]]
        );
        assert_eq!(
            names(&batches(&refs, 50, 25)),
            [
                vec!["i0", "i1"],
                vec!["i2", "i3"],
                vec!["i4", "i5"],
                vec!["i6"]
            ]
        );
        assert_eq!(batches(&refs, 1, 1_000).len(), 7, "one image per request");
        assert!(batches(&[], 50, 1_000).is_empty());
    }

    #[test]
    fn an_image_over_the_byte_budget_goes_alone() {
        let images = [
            image("a", 10),
            image("big", 500),
            image("b", 10),
            image("c", 10),
        ];
        let refs: Vec<&Image> = images.iter().collect();
        assert_eq!(
            names(&batches(&refs, 50, 100)),
            [vec!["a"], vec!["big"], vec!["b", "c"]]
        );
    }
}
