//! The WebODM client: JWT lifecycle, projects, tasks, streamed uploads, commit, lookups.
//!
//! Follows `contracts/webodm.md`: `Authorization: JWT <token>` (never `Bearer`), a new login
//! before the token's `exp` (there is no refresh endpoint), 403 (not 401) for a bad or expired
//! token, trailing slashes on every route, JSON bodies with tags as arrays, partial tasks filled
//! by whole-file uploads in the `images` field and then committed.
//!
//! Reads (GET, HEAD) and logins are retried with backoff. Creates (project, task, upload,
//! commit) are sent once: WebODM has no idempotency key, so the caller looks up what exists
//! before trying again. A 403 for the token is answered by logging in again and repeating the
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

use crate::clients::http::{secret_header, ApiError, ByteStream, CachedToken, Reply, Service};
use crate::config::{RetryConfig, Secret, TaskOption, WebodmConfig};

const SERVICE: &str = "WebODM";
/// Requests besides uploads that may run while every upload slot is busy.
const EXTRA_SLOTS: usize = 4;

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
    /// The processing error, if any.
    #[serde(default)]
    pub last_error: Option<String>,
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

#[derive(Deserialize)]
struct UploadReply {
    #[serde(default)]
    uploaded: HashMap<String, u64>,
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
    /// A client for the WebODM at `cfg.base_url` as `cfg.username`, limited to
    /// `cfg.requests_per_second` and `cfg.max_concurrent_uploads` + 4 requests at once.
    /// Nothing is sent yet.
    pub fn new(cfg: &WebodmConfig, retry: &RetryConfig) -> Result<Self, ApiError> {
        let svc = Service::new(
            SERVICE,
            &cfg.base_url,
            cfg.requests_per_second,
            cfg.max_concurrent_uploads + EXTRA_SLOTS,
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

    /// Uploads one whole file of `len` bytes into a partial task, streaming `body` (nothing is
    /// buffered; the request carries a Content-Length). Returns the bytes WebODM says it
    /// stored under `file_name`; an error when it stored the file under another name. Sent
    /// once: on failure, re-open the source and upload the whole file again (WebODM overwrites
    /// a file of the same name).
    pub async fn upload_image(
        &self,
        project: i64,
        task: &str,
        file_name: &str,
        body: ByteStream,
        len: u64,
    ) -> Result<u64, ApiError> {
        let pid = project.to_string();
        let url = self.url(&["api", "projects", &pid, "tasks", task, "upload"]);
        let op = format!("POST {}", url.path());
        let part = Part::stream_with_length(Body::wrap_stream(body), len)
            .file_name(file_name.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::Setup {
                service: SERVICE,
                detail: e.to_string(),
            })?;
        let form = Form::new().part("images", part);
        let token = self.token().await?;
        let req = self
            .inner
            .svc
            .request(Method::POST, url)
            .header(
                reqwest::header::AUTHORIZATION,
                secret_header(SERVICE, "JWT ", &token)?,
            )
            .multipart(form);
        let reply: UploadReply = match self.inner.svc.send(req).await {
            Ok(reply) => reply.json().await?,
            Err(e) if token_refused(&e) => {
                self.forget(&token).await;
                return Err(ApiError::TokenRejected {
                    service: SERVICE,
                    op,
                    status: e.status().unwrap_or(403),
                    body: e.body().unwrap_or_default().to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        match reply.uploaded.get(file_name) {
            Some(&stored) => Ok(stored),
            None => {
                let mut names: Vec<_> = reply.uploaded.keys().map(String::as_str).collect();
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
                    let size = reply.content_length_header();
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

    /// HTTP requests sent to WebODM so far, retries and logins included.
    pub fn requests(&self) -> u64 {
        self.inner.svc.requests()
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
        let token = self.token().await?;
        match self.send_with(&make, &token).await {
            Err(e) if token_refused(&e) => {
                tracing::debug!(service = SERVICE, error = %e, "token refused; logging in again");
                self.forget(&token).await;
                let token = self.token().await?;
                self.send_with(&make, &token).await
            }
            other => other,
        }
    }

    async fn send_with(
        &self,
        make: &impl Fn() -> RequestBuilder,
        token: &Secret,
    ) -> Result<Reply, ApiError> {
        let header = secret_header(SERVICE, "JWT ", token)?;
        self.inner
            .svc
            .send(make().header(reqwest::header::AUTHORIZATION, header))
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
