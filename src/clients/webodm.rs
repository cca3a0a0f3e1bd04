//! The WebODM client: JWT lifecycle, projects, tasks, streamed uploads, commit, lookups,
//! sharing (users, groups, permissions, edit), processing (restart) and asset downloads.
//!
//! Follows `contracts/webodm.md`: `Authorization: JWT <token>` (never `Bearer`), a new login
//! before the token's `exp` (there is no refresh endpoint), 403 (not 401) for a bad or expired
//! token, trailing slashes on every route, JSON bodies with tags as arrays, partial tasks filled
//! by whole-file uploads in the `images` field and then committed.
//!
//! Reads (GET, HEAD) and logins are retried with backoff. Writes (project, task, upload,
//! commit, edit, restart) are sent once: WebODM has no idempotency key, so the caller looks
//! up what exists before trying again. A 403 for the token is answered by logging in again and repeating the
//! request once (nothing was created); an upload cannot be repeated (its body is consumed) and
//! fails with a retryable [`ApiError::TokenRejected`] instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Mutex;

use crate::clients::http::{
    secret_header, verify_length, ApiError, ByteStream, CachedToken, Lane, Limits, Reply,
    RequestCounts, Service,
};
use crate::config::{RetryConfig, Secret, TaskOption, WebodmConfig};

const SERVICE: &str = "WebODM";
/// Metadata request slots beyond `max_concurrent_uploads` (uploads have slots of their own;
/// this many lookups, creates and commits may run besides one per flight being synced).
const EXTRA_SLOTS: usize = 4;
/// Most users or groups one search returns (searches are by a whole name, so few match).
const SEARCH_LIMIT: &str = "1000";

/// A WebODM project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Project id.
    pub id: i64,
    /// Name as stored (outer whitespace trimmed by WebODM).
    pub name: String,
    /// Description.
    #[serde(default, deserialize_with = "string_or_null")]
    pub description: String,
    /// Tags (a missing or null value reads as none).
    #[serde(default, deserialize_with = "lenient_tags")]
    pub tags: Vec<String>,
    /// Ids of its tasks.
    #[serde(default)]
    pub tasks: Vec<String>,
}

/// A WebODM task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task id (a UUID).
    pub id: String,
    /// Id of the project it belongs to.
    pub project: i64,
    /// Task name.
    #[serde(default)]
    pub name: Option<String>,
    /// Whether it still accepts uploads (not committed yet). Required: a task without it is
    /// a decode error, never read as committed.
    pub partial: bool,
    /// `None` (not accepted by a node yet), 10 queued, 20 running, 30 failed, 40 completed,
    /// 50 canceled.
    #[serde(default)]
    pub status: Option<i64>,
    /// Files in the task (images and companion files).
    #[serde(default)]
    pub images_count: Option<u64>,
    /// Tags (a missing or null value reads as none).
    #[serde(default, deserialize_with = "lenient_tags")]
    pub tags: Vec<String>,
    /// The processing error, if any (a FAILED task may have none).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Processing time in milliseconds; -1 until known (also when missing or null).
    #[serde(default = "minus_one", deserialize_with = "int_or_minus_one")]
    pub processing_time: i64,
    /// Assets that can be downloaded (filled when COMPLETED; missing or null reads as none).
    #[serde(default, deserialize_with = "list_or_null")]
    pub available_assets: Vec<String>,
    /// An action asked for and not yet done by WebODM's worker: 1 cancel, 2 remove,
    /// 3 restart, 4 resize, 5 import, 6 compact.
    #[serde(default)]
    pub pending_action: Option<i64>,
}

/// A WebODM user, as the users search lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebodmUser {
    /// Username (case-sensitive).
    pub username: String,
    /// Email (may be empty).
    #[serde(default, deserialize_with = "string_or_null")]
    pub email: String,
}

/// A WebODM group, as the groups search lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebodmGroup {
    /// Group name.
    pub name: String,
    /// Group id.
    pub id: i64,
}

/// Who a project permission is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grantee {
    /// A user, by username.
    User(String),
    /// A group, by name.
    Group(String),
}

/// One entry of a project's permission list (`GET …/permissions/`, sent back by
/// [`WebodmClient::edit_project`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPermission", into = "RawPermission")]
pub struct PermissionEntry {
    /// The user or group.
    pub grantee: Grantee,
    /// The project's owner (WebODM never changes the owner's permissions).
    pub owner: bool,
    /// `view`, `add`, `change`, `delete`.
    pub permissions: Vec<String>,
}

/// A permission entry as WebODM writes it: `{username, owner, permissions}` or
/// `{groupname, permissions}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawPermission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groupname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<bool>,
    #[serde(default, deserialize_with = "list_or_null")]
    permissions: Vec<String>,
}

impl TryFrom<RawPermission> for PermissionEntry {
    type Error = String;

    fn try_from(raw: RawPermission) -> Result<Self, String> {
        // A group name takes precedence, as in WebODM's edit.
        let grantee = match (raw.groupname, raw.username) {
            (Some(g), _) if !g.is_empty() => Grantee::Group(g),
            (_, Some(u)) if !u.is_empty() => Grantee::User(u),
            _ => return Err("a permission entry names neither a user nor a group".into()),
        };
        Ok(PermissionEntry {
            grantee,
            owner: raw.owner.unwrap_or(false),
            permissions: raw.permissions,
        })
    }
}

impl From<PermissionEntry> for RawPermission {
    fn from(p: PermissionEntry) -> Self {
        let (username, groupname, owner) = match p.grantee {
            Grantee::User(u) => (Some(u), None, Some(p.owner)),
            Grantee::Group(g) => (None, Some(g), None),
        };
        RawPermission {
            username,
            groupname,
            owner,
            permissions: p.permissions,
        }
    }
}

/// A project edit: WebODM **replaces** name, description and tags with these (send the
/// project's current values to keep them) and, when `permissions` is `Some`, the whole
/// permission list (anyone left out loses access; the owner is never changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectEdit {
    /// Name (WebODM does not trim it here).
    pub name: String,
    /// Description.
    pub description: String,
    /// Tags, each without spaces.
    pub tags: Vec<String>,
    /// The whole permission list, or `None` to leave permissions alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<PermissionEntry>>,
}

/// A project to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewProject {
    /// Name (≤ 255 characters, no outer whitespace, or WebODM changes it).
    pub name: String,
    /// Description.
    pub description: String,
    /// Tags, each without spaces.
    pub tags: Vec<String>,
}

/// A partial task to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Task name.
    pub name: String,
    /// Processing options.
    pub options: Vec<TaskOption>,
    /// Tags, each without spaces.
    pub tags: Vec<String>,
}

fn minus_one() -> i64 {
    -1
}

/// An integer; null reads as -1.
fn int_or_minus_one<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.unwrap_or(-1))
}

/// A list of strings; null reads as an empty list.
fn list_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `null` reads as an empty string.
fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Tags as an array of strings, a space-separated string, or null.
fn lenient_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Option::<Tags>::deserialize(d)? {
        None => Vec::new(),
        Some(Tags::List(tags)) => tags,
        Some(Tags::Joined(s)) => s.split_whitespace().map(str::to_string).collect(),
    })
}

#[derive(Deserialize)]
struct TokenReply {
    token: Secret,
}

/// `{"success": true}`, WebODM's answer to an action.
#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    success: bool,
}

#[derive(Deserialize)]
struct UploadReply {
    #[serde(default)]
    uploaded: HashMap<String, u64>,
}

/// One file of an upload request: its name, its exact length, and its body (streamed when its
/// part of the request is sent: a body that opens its source on first poll holds nothing
/// open before then).
pub struct UploadPart {
    /// The file name sent (WebODM stores the file under it, see `contracts/webodm.md`).
    pub name: String,
    /// Exactly the bytes `body` yields.
    pub len: u64,
    /// The file's bytes.
    pub body: ByteStream,
}

/// A WebODM client. Cheap to clone: clones share one connection pool, rate limiter,
/// concurrency cap, request counter and token.
#[derive(Clone)]
pub struct WebodmClient {
    inner: Arc<Inner>,
}

struct Inner {
    svc: Service,
    username: String,
    password: Secret,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for WebodmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebodmClient")
            .field("base_url", &self.inner.svc.url(&[], false).as_str())
            .field("username", &self.inner.username)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

/// Whether a 403 is about the token (expired, undecodable, missing) rather than permissions.
fn token_refused(e: &ApiError) -> bool {
    let body = e.body().unwrap_or_default().to_ascii_lowercase();
    e.status() == Some(403) && (body.contains("signature") || body.contains("credentials"))
}

impl WebodmClient {
    /// A client for the WebODM at `cfg.base_url` as `cfg.username`: metadata requests limited
    /// to `cfg.requests_per_second` and `cfg.max_concurrent_uploads` + 4 at once, uploads to
    /// `cfg.max_concurrent_uploads` at once and `cfg.bwlimit` bytes per second. Nothing is sent
    /// yet.
    pub fn new(cfg: &WebodmConfig, retry: &RetryConfig) -> Result<Self, ApiError> {
        let svc = Service::new(
            SERVICE,
            &cfg.base_url,
            Limits {
                requests_per_second: cfg.requests_per_second,
                max_requests: cfg.max_concurrent_uploads + EXTRA_SLOTS,
                max_transfers: cfg.max_concurrent_uploads,
                bwlimit: cfg.bwlimit.map(|b| b.bytes()),
            },
            cfg.timeout,
            retry,
            &cfg.ca,
        )?;
        Ok(WebodmClient {
            inner: Arc::new(Inner {
                svc,
                username: cfg.username.clone(),
                password: cfg.resolved_password.clone(),
                token: Mutex::new(None),
            }),
        })
    }

    /// Logs in now (other calls log in lazily): checks the credentials.
    pub async fn login(&self) -> Result<(), ApiError> {
        self.token().await.map(drop)
    }

    /// Every project the account can see (one request: WebODM answers a plain array unless
    /// `?page=` is given), each with its task ids.
    pub async fn list_projects(&self) -> Result<Vec<Project>, ApiError> {
        let url = self.url(&["api", "projects"]);
        self.read(|| self.inner.svc.request(Method::GET, url.clone()))
            .await
    }

    /// How many projects the account can see: one authenticated, read-only request (the
    /// first page of the paginated listing) that proves the token is accepted.
    pub async fn count_projects(&self) -> Result<u64, ApiError> {
        #[derive(Deserialize)]
        struct Page {
            count: u64,
        }
        let url = self.url(&["api", "projects"]);
        let page: Page = self
            .read(|| {
                self.inner
                    .svc
                    .request(Method::GET, url.clone())
                    .query(&[("page", "1")])
            })
            .await?;
        Ok(page.count)
    }

    /// Projects named exactly `name` (WebODM trims the filter's outer whitespace).
    pub async fn find_projects(&self, name: &str) -> Result<Vec<Project>, ApiError> {
        let url = self.url(&["api", "projects"]);
        self.read(|| {
            self.inner
                .svc
                .request(Method::GET, url.clone())
                .query(&[("name", name)])
        })
        .await
    }

    /// Creates a project (sent once).
    pub async fn create_project(&self, p: &NewProject) -> Result<Project, ApiError> {
        let url = self.url(&["api", "projects"]);
        self.call(|| self.inner.svc.request(Method::POST, url.clone()).json(p))
            .await?
            .json()
            .await
    }

    /// Every task of a project.
    pub async fn list_tasks(&self, project: i64) -> Result<Vec<Task>, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks"]);
        self.read(|| self.inner.svc.request(Method::GET, url.clone()))
            .await
    }

    /// One task; a missing task (or project) is an error with `is_not_found()`.
    pub async fn get_task(&self, project: i64, task: &str) -> Result<Task, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks", task]);
        self.read(|| self.inner.svc.request(Method::GET, url.clone()))
            .await
    }

    /// Creates a partial task that waits for uploads and a commit (sent once; no processing
    /// node is named, WebODM picks one).
    pub async fn create_task(&self, project: i64, t: &NewTask) -> Result<Task, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks"]);
        let options: Vec<_> = t
            .options
            .iter()
            .map(|o| serde_json::json!({"name": o.name, "value": o.value.to_json()}))
            .collect();
        let body = serde_json::json!({
            "name": t.name,
            "partial": true,
            "auto_processing_node": true,
            "options": options,
            "tags": t.tags,
        });
        self.call(|| {
            self.inner
                .svc
                .request(Method::POST, url.clone())
                .json(&body)
        })
        .await?
        .json()
        .await
    }

    /// Uploads one whole file of `len` bytes into a partial task, streaming `body` (see
    /// [`WebodmClient::upload_images`]). Returns the bytes WebODM says it stored under
    /// `file_name`; an error when it stored the file under another name.
    pub async fn upload_image(
        &self,
        project: i64,
        task: &str,
        file_name: &str,
        body: ByteStream,
        len: u64,
    ) -> Result<u64, ApiError> {
        let part = UploadPart {
            name: file_name.to_string(),
            len,
            body,
        };
        let (stored, op) = self.upload(project, task, vec![part]).await?;
        match stored.get(file_name) {
            Some(&bytes) => Ok(bytes),
            None => {
                let mut names: Vec<_> = stored.keys().map(String::as_str).collect();
                names.sort_unstable();
                Err(ApiError::Decode {
                    service: SERVICE,
                    op,
                    detail: format!(
                        "WebODM did not store the file as `{file_name}` (stored: {names:?})"
                    ),
                })
            }
        }
    }

    /// Uploads whole files into a partial task in one request, one `images` part each, each
    /// body streamed in turn (nothing is buffered; the request carries a Content-Length, the
    /// sum of the parts). Returns WebODM's `uploaded` map: the bytes stored per name as WebODM
    /// stored it, which the caller compares with each name and length it sent (a file may be
    /// missing from it, or stored with another size).
    ///
    /// An upload is a transfer: it waits for one of the `max_concurrent_uploads` slots, never
    /// for the rate limiter, and its bytes move under `bwlimit`. Sent once: a body that fails
    /// fails the request with that body's error (e.g. a Tapis download cut short), and nothing
    /// of it counts as stored; re-open the sources and upload again (WebODM overwrites files of
    /// the same name). A rejected token fails with a retryable [`ApiError::TokenRejected`].
    pub async fn upload_images(
        &self,
        project: i64,
        task: &str,
        parts: Vec<UploadPart>,
    ) -> Result<HashMap<String, u64>, ApiError> {
        Ok(self.upload(project, task, parts).await?.0)
    }

    /// [`WebodmClient::upload_images`], with the request (`POST /path`) for error messages.
    async fn upload(
        &self,
        project: i64,
        task: &str,
        parts: Vec<UploadPart>,
    ) -> Result<(HashMap<String, u64>, String), ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks", task, "upload"]);
        let op = format!("POST {}", url.path());
        let svc = &self.inner.svc;
        let mut form = Form::new();
        for p in parts {
            let part = Part::stream_with_length(Body::wrap_stream(svc.throttle(p.body)), p.len)
                .file_name(p.name)
                .mime_str("application/octet-stream")
                .map_err(|e| ApiError::Setup {
                    service: SERVICE,
                    detail: e.to_string(),
                })?;
            form = form.part("images", part);
        }
        let token = self.token().await?;
        let req = svc
            .request(Method::POST, url)
            .header(
                reqwest::header::AUTHORIZATION,
                secret_header(SERVICE, "JWT ", &token)?,
            )
            .multipart(form);
        match svc.send_on(Lane::Transfer, req).await {
            Ok(reply) => Ok((reply.json::<UploadReply>().await?.uploaded, op)),
            Err(e) if token_refused(&e) => {
                self.forget(&token).await;
                Err(ApiError::TokenRejected {
                    service: SERVICE,
                    op,
                    status: e.status().unwrap_or(403),
                    body: e.body().unwrap_or_default().to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Commits a partial task: WebODM starts processing it (sent once; before trying again,
    /// [`WebodmClient::get_task`] and retry only while `partial` is still true).
    pub async fn commit_task(&self, project: i64, task: &str) -> Result<Task, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks", task, "commit"]);
        self.call(|| self.inner.svc.request(Method::POST, url.clone()))
            .await?
            .json()
            .await
    }

    /// The size in bytes of the task's image of that name as WebODM holds it (`HEAD`, 200 or
    /// 404), read from the answer's `Content-Length`. `None` when WebODM holds no such image
    /// (404, which WebODM also answers when the task or project does not exist) or answered 200
    /// without a readable `Content-Length` (size unknown): either way, upload it.
    pub async fn image_size(
        &self,
        project: i64,
        task: &str,
        file_name: &str,
    ) -> Result<Option<u64>, ApiError> {
        let pid = project.to_string();
        // This route takes the rest of the path as the file name: no trailing slash.
        let url = self.inner.svc.url(
            &[
                "api", "projects", &pid, "tasks", task, "images", "download", file_name,
            ],
            false,
        );
        let svc = &self.inner.svc;
        svc.retry(|| async {
            match self.call(|| svc.request(Method::HEAD, url.clone())).await {
                Ok(reply) => {
                    let size = reply.content_length();
                    if size.is_none() {
                        tracing::info!(
                            service = SERVICE,
                            image = file_name,
                            "HEAD answered 200 without a readable Content-Length: size unknown"
                        );
                    }
                    Ok(size)
                }
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// One project; a missing project (or one the account may not see) is an error with
    /// `is_not_found()`.
    pub async fn get_project(&self, project: i64) -> Result<Project, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid]);
        self.read(|| self.inner.svc.request(Method::GET, url.clone()))
            .await
    }

    /// Users whose username or email starts with `search`, any case (compare usernames
    /// exactly yourself; every site has an `AnonymousUser`). A site that turned its users API
    /// off answers 404: an error with `is_not_found()`.
    pub async fn find_users(&self, search: &str) -> Result<Vec<WebodmUser>, ApiError> {
        self.search("users", search).await
    }

    /// Groups whose name starts with `search`, any case (compare names exactly yourself); 404
    /// (`is_not_found()`) when the users API is off.
    pub async fn find_groups(&self, search: &str) -> Result<Vec<WebodmGroup>, ApiError> {
        self.search("groups", search).await
    }

    /// `GET /api/{route}/?search=&limit=`: users' or groups' search by prefix.
    async fn search<T: DeserializeOwned>(
        &self,
        route: &str,
        search: &str,
    ) -> Result<Vec<T>, ApiError> {
        let url = self.url(&["api", route]);
        self.read(|| {
            self.inner
                .svc
                .request(Method::GET, url.clone())
                .query(&[("search", search), ("limit", SEARCH_LIMIT)])
        })
        .await
    }

    /// Who may see a project: its owner first, then users, then groups.
    pub async fn project_permissions(
        &self,
        project: i64,
    ) -> Result<Vec<PermissionEntry>, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "permissions"]);
        self.read(|| self.inner.svc.request(Method::GET, url.clone()))
            .await
    }

    /// Edits a project (see [`ProjectEdit`] for what it replaces); sent once. WebODM applies
    /// all of it or nothing: an unknown user or group fails with
    /// [`ApiError::is_invalid_user`] or [`ApiError::is_invalid_group`].
    pub async fn edit_project(&self, project: i64, edit: &ProjectEdit) -> Result<(), ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "edit"]);
        let reply = self
            .call(|| self.inner.svc.request(Method::POST, url.clone()).json(edit))
            .await?;
        succeeded(reply).await
    }

    /// Asks WebODM to process a task again (`…/restart/`: clears `last_error`, same images and
    /// options; a partial task stops being partial). Sent once.
    pub async fn restart_task(&self, project: i64, task: &str) -> Result<(), ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks", task, "restart"]);
        let reply = self
            .call(|| self.inner.svc.request(Method::POST, url.clone()))
            .await?;
        succeeded(reply).await
    }

    /// Opens the download of a task's asset (e.g. `orthophoto.tif`): the body, streamed and
    /// checked to carry exactly its Content-Length (a short body ends in an error), and that
    /// length. Opening is retried; the body is the caller's to read (re-open on failure).
    /// An asset the task does not offer is an error with `is_not_found()`; an answer without a
    /// Content-Length is an [`ApiError::Decode`].
    pub async fn download_asset(
        &self,
        project: i64,
        task: &str,
        asset: &str,
    ) -> Result<(ByteStream, u64), ApiError> {
        let pid = project.to_string();
        // The asset is the rest of the path: no trailing slash.
        let url = self.inner.svc.url(
            &["api", "projects", &pid, "tasks", task, "download", asset],
            false,
        );
        let svc = &self.inner.svc;
        // A transfer: a transfer slot (kept until the body is dropped) and `bwlimit`, no
        // rate-limiter token.
        let reply = svc
            .retry(|| async {
                self.call_on(Lane::Transfer, || svc.request(Method::GET, url.clone()))
                    .await?
                    .refuse_html()
                    .await
            })
            .await?;
        let Some(len) = reply.content_length() else {
            let (service, op) = reply.op();
            return Err(ApiError::Decode {
                service,
                op: op.to_owned(),
                detail: "the asset download has no Content-Length".into(),
            });
        };
        let what = format!("WebODM asset {asset} of task {task}");
        Ok((verify_length(reply.into_stream(), len, what), len))
    }

    /// HTTP requests sent to WebODM so far, retries and logins included.
    pub fn requests(&self) -> u64 {
        self.counts().total()
    }

    /// HTTP requests sent to WebODM so far: metadata requests (under the rate limiter) and
    /// uploads (transfers) apart.
    pub fn counts(&self) -> RequestCounts {
        self.inner.svc.counts()
    }

    /// A route with its trailing slash.
    fn url(&self, segments: &[&str]) -> url::Url {
        self.inner.svc.url(segments, true)
    }

    /// An idempotent authenticated GET, retried, decoded from JSON.
    async fn read<T: DeserializeOwned>(
        &self,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<T, ApiError> {
        self.inner
            .svc
            .retry(|| async { self.call(&make).await?.json().await })
            .await
    }

    /// Sends an authenticated request; when the token is refused (403), logs in again and
    /// sends it once more.
    async fn call(&self, make: impl Fn() -> RequestBuilder) -> Result<Reply, ApiError> {
        self.call_on(Lane::Api, make).await
    }

    /// Like [`WebodmClient::call`], on `lane` (a transfer waits for a transfer slot, not the
    /// rate limiter).
    async fn call_on(
        &self,
        lane: Lane,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Reply, ApiError> {
        let token = self.token().await?;
        match self.send_with(lane, &make, &token).await {
            Err(e) if token_refused(&e) => {
                tracing::debug!(service = SERVICE, error = %e, "token refused; logging in again");
                self.forget(&token).await;
                let token = self.token().await?;
                self.send_with(lane, &make, &token).await
            }
            other => other,
        }
    }

    async fn send_with(
        &self,
        lane: Lane,
        make: &impl Fn() -> RequestBuilder,
        token: &Secret,
    ) -> Result<Reply, ApiError> {
        let header = secret_header(SERVICE, "JWT ", token)?;
        self.inner
            .svc
            .send_on(lane, make().header(reqwest::header::AUTHORIZATION, header))
            .await
    }

    /// Drops the cached token if it is still `used`.
    async fn forget(&self, used: &Secret) {
        let mut cached = self.inner.token.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == used) {
            *cached = None;
        }
    }

    /// A usable token: the cached one while fresh, else a new login. One login at a time.
    async fn token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.inner.token.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.is_fresh()) {
            return Ok(c.token.clone());
        }
        let svc = &self.inner.svc;
        let url = self.url(&["api", "token-auth"]);
        let body = serde_json::json!({
            "username": self.inner.username,
            "password": self.inner.password.expose(),
        });
        let result = svc
            .retry(|| async {
                svc.send(svc.request(Method::POST, url.clone()).json(&body))
                    .await?
                    .json::<TokenReply>()
                    .await
            })
            .await;
        let token = match result {
            Ok(reply) => reply.token,
            Err(e) if matches!(e.status(), Some(400 | 401 | 403)) => {
                return Err(ApiError::Auth {
                    service: SERVICE,
                    detail: format!(
                        "as `{}`: check `webodm.username` and the password (HTTP {}: {})",
                        self.inner.username,
                        e.status().unwrap_or_default(),
                        e.body().unwrap_or_default()
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        *cached = Some(CachedToken::new(token.clone(), None));
        Ok(token)
    }
}

/// Reads an action's answer: `{"success": true}`, else an [`ApiError::Decode`].
async fn succeeded(reply: Reply) -> Result<(), ApiError> {
    let (service, op) = reply.op();
    let (service, op) = (service, op.to_owned());
    let answer: Success = reply.json().await?;
    if answer.success {
        Ok(())
    } else {
        Err(ApiError::Decode {
            service,
            op,
            detail: "expected {\"success\": true}".into(),
        })
    }
}

/// Decodes a projects listing the way [`WebodmClient::list_projects`] does. For property tests
/// and fuzzing.
#[doc(hidden)]
pub fn decode_projects(body: &[u8]) -> Result<Vec<Project>, ApiError> {
    crate::clients::http::decode_json(
        SERVICE,
        "GET /api/projects/".into(),
        "application/json",
        body,
    )
}

/// Decodes a task the way [`WebodmClient::get_task`] does. For property tests and fuzzing.
#[doc(hidden)]
pub fn decode_task(body: &[u8]) -> Result<Task, ApiError> {
    crate::clients::http::decode_json(
        SERVICE,
        "GET /api/projects/1/tasks/t/".into(),
        "application/json",
        body,
    )
}

/// Decodes an upload answer and returns the bytes stored under `file_name`, the way
/// [`WebodmClient::upload_image`] reads it. For property tests and fuzzing.
#[doc(hidden)]
pub fn decode_upload(body: &[u8], file_name: &str) -> Result<Option<u64>, ApiError> {
    let reply: UploadReply = crate::clients::http::decode_json(
        SERVICE,
        "POST /api/upload/".into(),
        "application/json",
        body,
    )?;
    Ok(reply.uploaded.get(file_name).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_and_tasks_read_leniently() {
        let p: Project = serde_json::from_value(serde_json::json!({"id":12,"tasks":[],
            "owned":true,"created_at":"2026-05-20T10:11:12.345678Z",
            "permissions":["add","change","delete","view"],"tags":[".tapis-sync","x"],
            "name":"Flight001 (sys)","description":"d","public":false}))
        .unwrap();
        assert_eq!(p.tags, [".tapis-sync", "x"]);
        let p: Project =
            serde_json::from_value(serde_json::json!({"id":1,"name":"n","description":null}))
                .unwrap();
        assert!(p.tags.is_empty() && p.description.is_empty());
        let p: Project =
            serde_json::from_value(serde_json::json!({"id":1,"name":"n","tags":"a b"})).unwrap();
        assert_eq!(p.tags, ["a", "b"]);
        let t: Task = serde_json::from_value(serde_json::json!({
            "id":"3c1a2b7e-4f7e-4a43-9a0e-0d6f0f9f5a11","project":12,"name":"Flight F",
            "partial":true,"status":null,"images_count":0,"tags":null,"last_error":null,
            "processing_node":null,"available_assets":[]}))
        .unwrap();
        assert!(t.partial && t.status.is_none() && t.tags.is_empty());
        assert_eq!(t.images_count, Some(0));
        assert_eq!(t.processing_time, -1);
        assert!(t.available_assets.is_empty() && t.pending_action.is_none());
        let t: Task = serde_json::from_value(serde_json::json!({
            "id":"t","project":1,"partial":false,"status":40,"processing_time":5123,"pending_action":3,
            "available_assets":["all.zip","orthophoto.tif"],"last_error":null}))
        .unwrap();
        assert_eq!(t.processing_time, 5123);
        assert_eq!(t.available_assets, ["all.zip", "orthophoto.tif"]);
        assert_eq!(t.pending_action, Some(3));
        let t: Task = serde_json::from_value(serde_json::json!({
            "id":"t","project":1,"partial":false,"processing_time":null,"available_assets":null}))
        .unwrap();
        assert_eq!(t.processing_time, -1);
    }

    #[test]
    fn permission_entries_read_and_write_webodm_shapes() {
        let list: Vec<PermissionEntry> = serde_json::from_value(serde_json::json!([
            {"username":"tapis-sync","owner":true,"permissions":["add","change","delete","view"]},
            {"username":"alice","owner":false,"permissions":["view"]},
            {"groupname":"lab-x","permissions":["view"]}]))
        .unwrap();
        assert_eq!(list[0].grantee, Grantee::User("tapis-sync".into()));
        assert!(list[0].owner);
        assert_eq!(list[2].grantee, Grantee::Group("lab-x".into()));
        assert_eq!(
            serde_json::to_value(&list[1]).unwrap(),
            serde_json::json!({"username":"alice","owner":false,"permissions":["view"]})
        );
        assert_eq!(
            serde_json::to_value(&list[2]).unwrap(),
            serde_json::json!({"groupname":"lab-x","permissions":["view"]})
        );
        assert!(
            serde_json::from_value::<PermissionEntry>(serde_json::json!({"permissions":[]}))
                .is_err()
        );
        let edit = ProjectEdit {
            name: "n".into(),
            description: "d".into(),
            tags: vec!["a".into()],
            permissions: None,
        };
        assert_eq!(
            serde_json::to_value(&edit).unwrap(),
            serde_json::json!({"name":"n","description":"d","tags":["a"]})
        );
    }

    #[test]
    fn a_task_without_partial_is_an_error_naming_the_route_never_committed() {
        let e = decode_task(br#"{"id":"t","project":1,"status":null}"#).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ApiError::Decode { .. }), "{e:?}");
        assert!(
            text.starts_with("WebODM GET /api/projects/1/tasks/t/: unexpected response"),
            "{text}"
        );
        assert!(text.contains("missing field `partial`"), "{text}");
        let t = decode_task(br#"{"id":"t","project":1,"partial":false}"#).unwrap();
        assert!(!t.partial);
    }

    #[test]
    fn only_token_403s_trigger_a_new_login() {
        let e = |status: u16, body: &str| ApiError::Status {
            service: SERVICE,
            op: "GET /api/projects/".into(),
            status,
            body: body.into(),
            retry_after: None,
        };
        assert!(token_refused(&e(
            403,
            r#"{"detail":"Signature has expired."}"#
        )));
        assert!(token_refused(&e(
            403,
            r#"{"detail":"Error decoding signature."}"#
        )));
        assert!(token_refused(&e(
            403,
            r#"{"detail":"Authentication credentials were not provided."}"#
        )));
        assert!(!token_refused(&e(
            403,
            r#"{"detail":"You do not have permission to perform this action."}"#
        )));
        assert!(!token_refused(&e(401, "signature")));
    }
}
