//! The Tapis v3 client: token lifecycle, systems listing and share info, file listing and
//! stat, content streaming, folder creation and uploads.
//!
//! Follows `contracts/tapis.md`: the token travels only in `X-Tapis-Token`; logins answer 200
//! (any 2xx is accepted) and refuse bad credentials with a 400; an expired token is a 401 with a
//! plain-text body, a revoked one a 500; systems are listed with `listType=ALL` and an explicit
//! `select`, both listings are paged until a short page, and downloads carry no Content-Length.
//!
//! Reads are retried with backoff. Writes (`mkdir`, `upload_file`) are sent once: the caller
//! decides whether to try again (an upload overwrites the file with no condition).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Mutex;

use crate::clients::http::{
    secret_header, ApiError, CachedToken, Lane, Limits, Reply, RequestCounts, RetryPolicy, Service,
};
use crate::config::{RetryConfig, Secret, TapisAuth, TapisConfig};

pub use crate::clients::http::ByteStream;

const SERVICE: &str = "Tapis";
/// Systems per page (Tapis's own default, stated explicitly).
const SYSTEMS_PAGE: usize = 100;
/// Files per page (the most Tapis allows).
const FILES_PAGE: usize = 1000;
/// Most entries one listing may hold (a server that never ends a listing is refused).
const MAX_ENTRIES: usize = 1_000_000;
/// Attributes asked of each system (the default summary lacks `enabled` and `rootDir`).
/// `isPublic` and `sharedWithUsers` make the server look up each system's share info itself
/// (tapis-systems 1.7 `SystemResource.isShareInfoRequested`): who sees a system comes with the
/// listing instead of one `GET /v3/systems/share/{id}` per system.
const SYSTEM_FIELDS: &str = "id,host,systemType,enabled,rootDir,owner,isPublic,sharedWithUsers";

/// A Tapis storage system, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct System {
    /// System id, e.g. `ptdatax.project.alpha`.
    pub id: String,
    /// Host name.
    #[serde(default)]
    pub host: Option<String>,
    /// `LINUX`, `S3`, `IRODS`, `GLOBUS`, …
    #[serde(default)]
    pub system_type: Option<String>,
    /// Whether the system is enabled (taken as enabled when Tapis leaves it out).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Root directory on the host.
    #[serde(default)]
    pub root_dir: Option<String>,
    /// Owner's username.
    #[serde(default)]
    pub owner: Option<String>,
    /// Shared with every user of the tenant (Tapis writes it as a string, `"true"`, when
    /// selected); `None` when the listing left it out.
    #[serde(default, deserialize_with = "bool_or_string")]
    pub is_public: Option<bool>,
    /// Users the system is shared with by name; `None` when the listing left it out (then
    /// [`TapisClient::share_info`] tells).
    #[serde(default)]
    pub shared_with_users: Option<Vec<String>>,
}

fn enabled_by_default() -> bool {
    true
}

/// A boolean written as JSON `true`/`false` or as the string `"true"`/`"false"`; null = none.
fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Option::<Flag>::deserialize(d)? {
        None => Ok(None),
        Some(Flag::Bool(b)) => Ok(Some(b)),
        Some(Flag::Text(t)) => match t.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "expected true or false, got {other:?}"
            ))),
        },
    }
}

/// What a listed path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    SymbolicLink,
    /// Anything else (`other`, `unknown`, or a type this client does not know).
    #[serde(other)]
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Base name.
    pub name: String,
    /// Path relative to the system root, without a leading `/`.
    pub path: String,
    /// File, directory, link or other.
    #[serde(rename = "type")]
    pub kind: FileKind,
    /// Size in bytes (required: a listing without it, or with a negative one, is refused).
    pub size: u64,
    /// Modification time as Tapis writes it (RFC 3339, e.g. `2024-05-01T16:55:57Z`).
    #[serde(default)]
    pub last_modified: String,
    /// MIME type, when Tapis knows it.
    #[serde(default)]
    pub mime_type: Option<String>,
}

/// Who may see a system besides its owner (`GET /v3/systems/share/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// Shared with every user of the tenant.
    #[serde(default)]
    pub public: bool,
    /// Users it is shared with by name (users given access through permissions instead are
    /// not listed).
    #[serde(rename = "userList", default, deserialize_with = "list_or_null")]
    pub users: Vec<String>,
}

/// A list, or null read as an empty list.
fn list_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The `status` of a Tapis answer (`success` when a write went through).
#[derive(Deserialize)]
struct Outcome {
    #[serde(default)]
    status: Option<String>,
}

/// How Tapis refused a session token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Not refused (or not for the token).
    No,
    /// 401 `TAPIS_SECURITY_JWT_EXPIRED`: a new token will do.
    Expired,
    /// 500 "Token is revoked.": a new token (not a refresh) will do.
    Revoked,
    /// Any other 401: the token is bad.
    Other,
}

fn refused(err: &ApiError) -> Refused {
    let body = err.body().unwrap_or_default();
    match err.status() {
        Some(401) if body.contains("TAPIS_SECURITY_JWT_EXPIRED") => Refused::Expired,
        Some(401) => Refused::Other,
        Some(500) if body.contains("Token is revoked") => Refused::Revoked,
        _ => Refused::No,
    }
}

/// The envelope of every Tapis answer: the payload is `result`.
#[derive(Deserialize)]
struct Envelope<T> {
    result: T,
}

#[derive(Deserialize)]
struct Tokens {
    access_token: AccessToken,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct RefreshToken {
    refresh_token: Secret,
}

/// The cached access token and the refresh token that renews it.
#[derive(Default)]
struct Session {
    access: Option<CachedToken>,
    refresh: Option<Secret>,
}

/// How the session token is obtained.
enum Grant {
    Password,
    Refresh(Secret),
}

/// A Tapis v3 client. Cheap to clone: clones share one connection pool, rate limiter,
/// concurrency cap, request counter and token.
#[derive(Clone)]
pub struct TapisClient {
    inner: Arc<Inner>,
}

struct Inner {
    svc: Service,
    /// Retries of listings (systems, folders): `retry.listing_elapsed` at most, so one sick
    /// folder is reported and left for the next pass instead of holding up the others.
    listing: RetryPolicy,
    username: String,
    auth: TapisAuth,
    session: Mutex<Session>,
}

impl fmt::Debug for TapisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapisClient")
            .field("base_url", &self.inner.svc.url(&[], false).as_str())
            .field("username", &self.inner.username)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl TapisClient {
    /// A client for the tenant at `cfg.base_url`, authenticating with `cfg.auth`: metadata
    /// requests limited to `cfg.requests_per_second` and `cfg.max_concurrent_requests`,
    /// downloads to `cfg.max_concurrent_downloads` open at once and `cfg.bwlimit` bytes per
    /// second. Nothing is sent yet.
    pub fn new(cfg: &TapisConfig, retry: &RetryConfig) -> Result<Self, ApiError> {
        if matches!(cfg.auth, TapisAuth::Unresolved) {
            return Err(ApiError::Setup {
                service: SERVICE,
                detail: "no credentials: set a password or `token_file`".into(),
            });
        }
        let svc = Service::new(
            SERVICE,
            &cfg.base_url,
            Limits {
                requests_per_second: cfg.requests_per_second,
                max_requests: cfg.max_concurrent_requests,
                max_transfers: cfg.max_concurrent_downloads,
                bwlimit: cfg.bwlimit.map(|b| b.bytes()),
            },
            cfg.timeout,
            retry,
            &cfg.ca,
        )?;
        Ok(TapisClient {
            inner: Arc::new(Inner {
                svc,
                listing: RetryPolicy::new(&RetryConfig {
                    max_elapsed: retry.listing_elapsed.min(retry.max_elapsed),
                    ..retry.clone()
                }),
                username: cfg.username.clone(),
                auth: cfg.auth.clone(),
                session: Mutex::new(Session::default()),
            }),
        })
    }

    /// Logs in now (other calls log in lazily): checks the credentials. With a pre-issued
    /// token there is nothing to check until it is used.
    pub async fn login(&self) -> Result<(), ApiError> {
        self.token().await.map(drop)
    }

    /// Every system whose id matches the Tapis `like` pattern (`*` any run, `!` one
    /// character), owned by or shared with the account, in id order, all pages.
    pub async fn list_systems(&self, pattern: &str) -> Result<Vec<System>, ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&["v3", "systems"], false);
        let search = format!("(id.like.{pattern})");
        let limit = SYSTEMS_PAGE.to_string();
        let mut pages = Pages::new(format!("GET {}", url.path()), SYSTEMS_PAGE);
        loop {
            let skip = pages.received.to_string();
            let query = [
                ("listType", "ALL"),
                ("search", search.as_str()),
                ("select", SYSTEM_FIELDS),
                ("orderBy", "id(asc)"),
                ("limit", limit.as_str()),
                ("skip", skip.as_str()),
            ];
            let page: Envelope<Vec<System>> = self.get_json(&url, &query).await?;
            if let Some(all) = pages.add(page.result, |s| s.id.clone(), "system")? {
                return Ok(all);
            }
        }
    }

    /// The first system (in id order) matching `pattern` that the account can see: one
    /// authenticated, read-only request (`limit=1`) that proves the token is accepted.
    pub async fn first_system(&self, pattern: &str) -> Result<Option<System>, ApiError> {
        let url = self.inner.svc.url(&["v3", "systems"], false);
        let search = format!("(id.like.{pattern})");
        let query = [
            ("listType", "ALL"),
            ("search", search.as_str()),
            ("select", SYSTEM_FIELDS),
            ("orderBy", "id(asc)"),
            ("limit", "1"),
        ];
        let page: Envelope<Vec<System>> = self.get_json(&url, &query).await?;
        Ok(page.result.into_iter().next())
    }

    /// Every entry of a directory, all pages (`path` is relative to the system root; `""` is
    /// the root). A missing path or system is an error with `is_not_found()`.
    pub async fn list_dir(&self, system: &str, path: &str) -> Result<Vec<FileEntry>, ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&segments(&["v3", "files", "ops", system], path), false);
        let limit = FILES_PAGE.to_string();
        let mut pages = Pages::new(format!("GET {}", url.path()), FILES_PAGE);
        loop {
            let offset = pages.received.to_string();
            let query = [("limit", limit.as_str()), ("offset", offset.as_str())];
            let page: Envelope<Vec<FileEntry>> = self.get_json(&url, &query).await?;
            if let Some(all) = pages.add(page.result, |e| e.name.clone(), "entry")? {
                return Ok(all);
            }
        }
    }

    /// Who the system is shared with, and whether publicly. A missing system is an error with
    /// `is_not_found()`.
    pub async fn share_info(&self, system: &str) -> Result<ShareInfo, ApiError> {
        let url = self
            .inner
            .svc
            .url(&["v3", "systems", "share", system], false);
        let info: Envelope<ShareInfo> = self.get_json(&url, &[]).await?;
        Ok(info.result)
    }

    /// What is at `path` (relative to the system root): the listing's entry of a file, an entry
    /// of kind [`FileKind::Dir`] (size 0) for a folder, `None` when nothing is there (any 404,
    /// also for a missing system).
    pub async fn stat(&self, system: &str, path: &str) -> Result<Option<FileEntry>, ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&segments(&["v3", "files", "ops", system], path), false);
        let wanted = segments(&[], path).join("/");
        let query = [("limit", "1"), ("offset", "0")];
        let page: Envelope<Vec<FileEntry>> = match self.get_json(&url, &query).await {
            Ok(page) => page,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        // A file lists as itself; a folder lists its first entry (or nothing when empty).
        match page.result.into_iter().next() {
            Some(e) if segments(&[], &e.path).join("/") == wanted => Ok(Some(e)),
            _ => Ok(Some(FileEntry {
                name: wanted.rsplit('/').next().unwrap_or_default().to_owned(),
                path: wanted,
                kind: FileKind::Dir,
                size: 0,
                last_modified: String::new(),
                mime_type: None,
            })),
        }
    }

    /// Makes the folder `path` and its missing parents (an existing folder is no error). Sent
    /// once.
    pub async fn mkdir(&self, system: &str, path: &str) -> Result<(), ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&["v3", "files", "ops", system], false);
        let body = serde_json::json!({ "path": path });
        let reply = self
            .call(|| svc.request(Method::POST, url.clone()).json(&body))
            .await?;
        succeeded(reply).await
    }

    /// Writes `body` (exactly `len` bytes) to the file at `path`, streamed with a
    /// Content-Length and nothing buffered; Tapis overwrites a file already there with no
    /// condition and makes missing folders. Sent once: on failure the file may be left
    /// partly written; open the source again and upload the whole file. A rejected token
    /// fails with a retryable [`ApiError::TokenRejected`] (the body is spent).
    pub async fn upload_file(
        &self,
        system: &str,
        path: &str,
        body: ByteStream,
        len: u64,
    ) -> Result<(), ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&segments(&["v3", "files", "ops", system], path), false);
        let op = format!("POST {}", url.path());
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("file");
        // A transfer: under `bwlimit`, on a transfer slot, no rate-limiter token.
        let body = svc.throttle(body);
        let part = Part::stream_with_length(reqwest::Body::wrap_stream(body), len)
            .file_name(name.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::Setup {
                service: SERVICE,
                detail: e.to_string(),
            })?;
        let form = Form::new().part("file", part);
        let token = self.token().await?;
        let req = svc
            .request(Method::POST, url)
            .header("X-Tapis-Token", secret_header(SERVICE, "", &token)?)
            .multipart(form);
        let err = match svc.send_on(Lane::Transfer, req).await {
            Ok(reply) => return succeeded(reply).await,
            Err(e) => e,
        };
        let why = refused(&err);
        let pre_issued = matches!(self.inner.auth, TapisAuth::Token(_));
        match why {
            Refused::No => return Err(err),
            _ if pre_issued => return Err(pre_issued_refused(&err)),
            Refused::Other => {
                self.forget(&token, false).await;
                return Err(err);
            }
            Refused::Expired | Refused::Revoked => {}
        }
        self.forget(&token, why == Refused::Revoked).await;
        Err(ApiError::TokenRejected {
            service: SERVICE,
            op,
            status: err.status().unwrap_or(401),
            body: err.body().unwrap_or_default().to_string(),
        })
    }

    /// One listing GET answered with JSON, retried while the failure is transient, for at most
    /// `retry.listing_elapsed`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &url::Url,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let svc = &self.inner.svc;
        let what = format!("Tapis GET {}", url.path());
        self.inner
            .listing
            .run(&what, || async {
                self.call(|| svc.request(Method::GET, url.clone()).query(query))
                    .await?
                    .json()
                    .await
            })
            .await
    }

    /// The content of a file, streamed as it arrives (one attempt, no retries: a failed
    /// download is re-opened by the caller). Tapis sends no Content-Length and may cut the body
    /// short under a 200: wrap the stream in [`crate::clients::http::verify_length`] with the listed size.
    /// A download is a transfer: it waits for one of the `max_concurrent_downloads` slots (not
    /// for the rate limiter, whose tokens only a login may need) and keeps it until the stream
    /// is dropped; its bytes move under `bwlimit`.
    pub async fn download(&self, system: &str, path: &str) -> Result<ByteStream, ApiError> {
        let svc = &self.inner.svc;
        let url = svc.url(&segments(&["v3", "files", "content", system], path), false);
        let reply = self
            .call_on(Lane::Transfer, || svc.request(Method::GET, url.clone()))
            .await?;
        Ok(reply.refuse_html().await?.into_stream())
    }

    /// HTTP requests sent to Tapis so far, retries and logins included.
    pub fn requests(&self) -> u64 {
        self.counts().total()
    }

    /// HTTP requests sent to Tapis so far: metadata requests (under the rate limiter) and
    /// downloads (transfers) apart.
    pub fn counts(&self) -> RequestCounts {
        self.inner.svc.counts()
    }

    /// Sends an authenticated metadata request (see [`TapisClient::call_on`]).
    async fn call(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<Reply, ApiError> {
        self.call_on(Lane::Api, make).await
    }

    /// Sends an authenticated request on `lane`; on an expired (401) or revoked (500) token,
    /// gets a new one and sends it once more. Any other 401 drops the token so the next call
    /// logs in.
    async fn call_on(
        &self,
        lane: Lane,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, ApiError> {
        let token = self.token().await?;
        let first = self.send_with(lane, &make, &token).await;
        let err = match first {
            Err(e) => e,
            ok => return ok,
        };
        let why = refused(&err);
        if why == Refused::Other {
            // Not worth a second try now, but never keep a token Tapis refused.
            self.forget(&token, false).await;
        }
        let pre_issued = matches!(self.inner.auth, TapisAuth::Token(_));
        let renewable = matches!(why, Refused::Expired | Refused::Revoked);
        if !(renewable || (why == Refused::Other && pre_issued)) {
            return Err(err);
        }
        if pre_issued {
            return Err(pre_issued_refused(&err));
        }
        tracing::debug!(
            service = SERVICE,
            reason = if why == Refused::Expired {
                "expired"
            } else {
                "revoked"
            },
            "token rejected; logging in again"
        );
        self.forget(&token, why == Refused::Revoked).await;
        let token = self.token().await?;
        self.send_with(lane, &make, &token).await
    }

    async fn send_with(
        &self,
        lane: Lane,
        make: &impl Fn() -> reqwest::RequestBuilder,
        token: &Secret,
    ) -> Result<Reply, ApiError> {
        let header = secret_header(SERVICE, "", token)?;
        self.inner
            .svc
            .send_on(lane, make().header("X-Tapis-Token", header))
            .await
    }

    /// Drops the cached access token if it is still `used` (and the refresh token too when
    /// `everything`, which forces a password grant).
    async fn forget(&self, used: &Secret, everything: bool) {
        let mut session = self.inner.session.lock().await;
        if session.access.as_ref().is_some_and(|c| &c.token == used) {
            session.access = None;
        }
        if everything {
            session.refresh = None;
        }
    }

    /// A usable access token: the cached one while fresh, else a refreshed one, else a new
    /// one from the password grant. One login at a time.
    async fn token(&self) -> Result<Secret, ApiError> {
        let client = match &self.inner.auth {
            TapisAuth::Token(token) => return Ok(token.clone()),
            TapisAuth::Password { client, .. } => client,
            TapisAuth::Unresolved => unreachable!("rejected in TapisClient::new"),
        };
        let mut session = self.inner.session.lock().await;
        if let Some(cached) = session.access.as_ref().filter(|c| c.is_fresh()) {
            return Ok(cached.token.clone());
        }
        let refreshed = match (session.refresh.take(), client) {
            (Some(refresh), Some(_)) => match self.grant(Grant::Refresh(refresh)).await {
                Ok(tokens) => Some(tokens),
                Err(e) => {
                    tracing::debug!(service = SERVICE, error = %e, "refresh failed; using the password grant");
                    None
                }
            },
            _ => None,
        };
        let tokens = match refreshed {
            Some(tokens) => tokens,
            None => self.grant(Grant::Password).await?,
        };
        let lifetime = tokens.access_token.expires_in.map(Duration::from_secs);
        let token = tokens.access_token.access_token;
        session.access = Some(CachedToken::new(token.clone(), lifetime));
        session.refresh = tokens.refresh_token.map(|r| r.refresh_token);
        Ok(token)
    }

    /// One token request (retried while the failure is transient).
    async fn grant(&self, grant: Grant) -> Result<Tokens, ApiError> {
        let TapisAuth::Password { password, client } = &self.inner.auth else {
            unreachable!("grants are only made with a password configured")
        };
        let svc = &self.inner.svc;
        let url = svc.url(&["v3", "oauth2", "tokens"], false);
        let body = match &grant {
            Grant::Password => serde_json::json!({
                "grant_type": "password",
                "username": self.inner.username,
                "password": password.expose(),
            }),
            Grant::Refresh(refresh) => serde_json::json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh.expose(),
            }),
        };
        let result = svc
            .retry(|| async {
                let mut req = svc.request(Method::POST, url.clone()).json(&body);
                if let Some((id, key)) = client {
                    req = req.basic_auth(id, Some(key.expose()));
                }
                svc.send(req).await?.json::<Envelope<Tokens>>().await
            })
            .await;
        match result {
            Ok(envelope) => Ok(envelope.result),
            Err(e) if matches!(e.status(), Some(400 | 401 | 403)) => {
                let what = match (&grant, client) {
                    (Grant::Refresh(_), _) => "refreshing the token".to_string(),
                    (Grant::Password, Some((id, _))) => format!(
                        "as `{}` with client `{id}`: check `tapis.username`, the password, \
                         `tapis.client_id` and the client key",
                        self.inner.username
                    ),
                    (Grant::Password, None) => format!(
                        "as `{}`: check `tapis.username` and the password",
                        self.inner.username
                    ),
                };
                Err(ApiError::Auth {
                    service: SERVICE,
                    detail: format!(
                        "{what} (HTTP {}: {})",
                        e.status().unwrap_or_default(),
                        e.body().unwrap_or_default()
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// The error for a pre-issued token that Tapis no longer accepts.
fn pre_issued_refused(err: &ApiError) -> ApiError {
    ApiError::Auth {
        service: SERVICE,
        detail: format!(
            "the pre-issued token in `tapis.token_file` is not (or no longer) accepted \
             ({err}): replace it, or configure a password instead"
        ),
    }
}

/// Reads a write's answer: JSON with `"status": "success"`, else an [`ApiError::Decode`].
async fn succeeded(reply: Reply) -> Result<(), ApiError> {
    let (service, op) = reply.op();
    let (service, op) = (service, op.to_owned());
    let outcome: Outcome = reply.json().await?;
    match outcome.status.as_deref() {
        Some("success") => Ok(()),
        other => Err(ApiError::Decode {
            service,
            op,
            detail: format!("expected \"status\": \"success\", got {other:?}"),
        }),
    }
}

/// Collects a paged listing: drops entries a later page repeats unchanged, refuses a name that
/// comes back with different contents, and stops a server that never ends the listing.
struct Pages<T> {
    op: String,
    page_size: usize,
    /// Entries received so far, repeats included (the next `skip`/`offset`).
    received: usize,
    all: Vec<T>,
    seen: std::collections::HashMap<String, usize>,
}

impl<T: PartialEq + fmt::Debug> Pages<T> {
    fn new(op: String, page_size: usize) -> Self {
        Pages {
            op,
            page_size,
            received: 0,
            all: Vec::new(),
            seen: Default::default(),
        }
    }

    /// Adds one page; the whole listing once this page was the last (shorter than a full page).
    fn add(
        &mut self,
        page: Vec<T>,
        name: impl Fn(&T) -> String,
        what: &str,
    ) -> Result<Option<Vec<T>>, ApiError> {
        let fail = |detail: String| ApiError::Decode {
            service: SERVICE,
            op: self.op.clone(),
            detail,
        };
        let short = page.len() < self.page_size;
        let offset = self.received;
        self.received += page.len();
        let mut fresh = 0;
        for item in page {
            let n = name(&item);
            match self.seen.get(&n) {
                Some(&i) if self.all[i] == item => {}
                Some(&i) => {
                    return Err(fail(format!(
                        "the listing names {what} {n:?} twice with different contents: {:?} and {item:?}",
                        self.all[i]
                    )))
                }
                None => {
                    self.seen.insert(n, self.all.len());
                    self.all.push(item);
                    fresh += 1;
                }
            }
        }
        if short {
            return Ok(Some(std::mem::take(&mut self.all)));
        }
        if fresh == 0 {
            return Err(fail(format!(
                "the full page at offset {offset} only repeats earlier entries: the server does not page"
            )));
        }
        if self.received >= MAX_ENTRIES {
            return Err(fail(format!(
                "the listing goes on past {MAX_ENTRIES} entries: refused"
            )));
        }
        Ok(None)
    }
}

/// Decodes the body of one file-listing answer the way [`TapisClient::list_dir`] does (pages of
/// `page_size` entries, repeats dropped or refused). For property tests and fuzzing.
#[doc(hidden)]
pub fn decode_file_listing(body: &[u8], page_size: usize) -> Result<Vec<FileEntry>, ApiError> {
    decode_pages(body, page_size, |e: &FileEntry| e.name.clone(), "entry")
}

/// Decodes one systems-listing answer the way [`TapisClient::list_systems`] does. For property
/// tests and fuzzing.
#[doc(hidden)]
pub fn decode_systems_listing(body: &[u8], page_size: usize) -> Result<Vec<System>, ApiError> {
    decode_pages(body, page_size, |s: &System| s.id.clone(), "system")
}

fn decode_pages<T: serde::de::DeserializeOwned + PartialEq + fmt::Debug>(
    body: &[u8],
    page_size: usize,
    name: impl Fn(&T) -> String,
    what: &str,
) -> Result<Vec<T>, ApiError> {
    let op = "GET /v3/test".to_string();
    let page: Envelope<Vec<T>> =
        crate::clients::http::decode_json(SERVICE, op.clone(), "application/json", body)?;
    let mut pages = Pages::new(op, page_size.max(1));
    let mut items = page.result.into_iter().peekable();
    loop {
        let chunk: Vec<T> = items.by_ref().take(page_size.max(1)).collect();
        let last = items.peek().is_none();
        match pages.add(chunk, &name, what)? {
            Some(all) => return Ok(all),
            None if last => {
                return pages
                    .add(Vec::new(), &name, what)
                    .map(Option::unwrap_or_default)
            }
            None => {}
        }
    }
}

/// `prefix` followed by the non-empty `/`-separated parts of `path`.
fn segments<'a>(prefix: &[&'a str], path: &'a str) -> Vec<&'a str> {
    prefix
        .iter()
        .copied()
        .chain(path.split('/').filter(|s| !s.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entries_read_the_contract_shape() {
        let item = serde_json::json!({"mimeType":"image/jpeg","type":"file","owner":"1003",
            "group":"1003","nativePermissions":"rw-r--r--",
            "url":"tapis://ptdatax.project.alpha/Flight1/code/images/IMG_0001.jpg",
            "lastModified":"2024-05-01T16:55:57Z","name":"IMG_0001.jpg",
            "path":"Flight1/code/images/IMG_0001.jpg","size":2483112});
        let e: FileEntry = serde_json::from_value(item).unwrap();
        assert_eq!(e.kind, FileKind::File);
        assert_eq!(e.size, 2_483_112);
        assert_eq!(e.mime_type.as_deref(), Some("image/jpeg"));
        assert_eq!(e.last_modified, "2024-05-01T16:55:57Z");
        for (t, k) in [
            ("dir", FileKind::Dir),
            ("symbolic_link", FileKind::SymbolicLink),
            ("other", FileKind::Other),
            ("unknown", FileKind::Other),
            ("socket", FileKind::Other),
        ] {
            let v = serde_json::json!({"name":"n","path":"p","type":t,"mimeType":null,"size":0});
            assert_eq!(serde_json::from_value::<FileEntry>(v).unwrap().kind, k);
        }
    }

    #[test]
    fn systems_read_the_selected_fields() {
        let v = serde_json::json!({"id":"ptdatax.project.alpha","host":"ls6.tacc.utexas.edu",
            "systemType":"LINUX","enabled":false,"rootDir":"/data/alpha","owner":"svc"});
        let s: System = serde_json::from_value(v).unwrap();
        assert_eq!(s.system_type.as_deref(), Some("LINUX"));
        assert_eq!(s.root_dir.as_deref(), Some("/data/alpha"));
        assert!(!s.enabled);
        let s: System = serde_json::from_value(serde_json::json!({"id":"x"})).unwrap();
        assert!(s.enabled && s.owner.is_none());
    }

    #[test]
    fn share_info_reads_the_contract_shape() {
        let v = serde_json::json!({"status":"success","message":"m","version":"1",
            "result":{"public":false,"userList":["alice","bob"]},"metadata":null});
        let s: Envelope<ShareInfo> = serde_json::from_value(v).unwrap();
        assert_eq!(s.result.users, ["alice", "bob"]);
        assert!(!s.result.public);
        let v = serde_json::json!({"result":{"public":true,"userList":null}});
        let s: Envelope<ShareInfo> = serde_json::from_value(v).unwrap();
        assert!(s.result.public && s.result.users.is_empty());
    }

    #[test]
    fn token_answers_are_read() {
        let v = serde_json::json!({"status":"success","message":"Token created successfully.",
            "metadata":{},"version":"1",
            "result":{"access_token":{"access_token":"eyJa.eyJb.c","expires_at":"2025-06-09T12:51:38.123456+00:00","expires_in":14400,"jti":"j"},
                      "refresh_token":{"refresh_token":"eyJr.eyJs.t","expires_at":"x","expires_in":31536000,"jti":"k"}}});
        let t: Envelope<Tokens> = serde_json::from_value(v).unwrap();
        assert_eq!(t.result.access_token.access_token.expose(), "eyJa.eyJb.c");
        assert_eq!(t.result.access_token.expires_in, Some(14400));
        assert!(t.result.refresh_token.is_some());
        let v = serde_json::json!({"result":{"access_token":{"access_token":"a"}}});
        let t: Envelope<Tokens> = serde_json::from_value(v).unwrap();
        assert!(t.result.refresh_token.is_none());
    }

    fn entry(name: &str, size: u64) -> FileEntry {
        FileEntry {
            name: name.into(),
            path: format!("d/{name}"),
            kind: FileKind::File,
            size,
            last_modified: String::new(),
            mime_type: None,
        }
    }

    #[test]
    fn pages_drop_repeats_across_pages_and_refuse_conflicts() {
        let mut p = Pages::new("GET /x".into(), 2);
        assert_eq!(
            p.add(
                vec![entry("a", 1), entry("b", 2)],
                |e| e.name.clone(),
                "entry"
            )
            .unwrap(),
            None
        );
        assert_eq!(p.received, 2);
        // The next page repeats `b` unchanged (a file was added before it meanwhile): dropped.
        let all = p
            .add(vec![entry("b", 2)], |e| e.name.clone(), "entry")
            .unwrap()
            .unwrap();
        assert_eq!(all, vec![entry("a", 1), entry("b", 2)]);

        let mut p = Pages::new("GET /x".into(), 2);
        p.add(
            vec![entry("a", 1), entry("b", 2)],
            |e| e.name.clone(),
            "entry",
        )
        .unwrap();
        let e = p
            .add(vec![entry("b", 3)], |e| e.name.clone(), "entry")
            .unwrap_err();
        assert!(matches!(e, ApiError::Decode { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("names entry \"b\" twice with different contents"),
            "{e}"
        );

        // A server that ignores the offset and sends the same full page forever is stopped.
        let mut p = Pages::new("GET /x".into(), 2);
        p.add(
            vec![entry("a", 1), entry("b", 2)],
            |e| e.name.clone(),
            "entry",
        )
        .unwrap();
        let e = p
            .add(
                vec![entry("a", 1), entry("b", 2)],
                |e| e.name.clone(),
                "entry",
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("only repeats earlier entries"),
            "{e}"
        );
    }

    #[test]
    fn listings_decode_through_the_same_path_as_the_client() {
        let body = br#"{"result":[{"name":"a","path":"a","type":"file","size":1},
                                 {"name":"a","path":"a","type":"file","size":1}]}"#;
        assert_eq!(decode_file_listing(body, 1000).unwrap().len(), 1);
        // With pages of one, a page holding only the repeat looks like a server that ignores
        // `offset`: refused rather than looping.
        assert!(decode_file_listing(body, 1).is_err());
        assert!(decode_file_listing(b"<html>", 1000).is_err());
        assert!(decode_systems_listing(br#"{"result":[{"id":"s"}]}"#, 100).is_ok());
    }

    #[test]
    fn paths_split_into_segments() {
        assert_eq!(segments(&["v3", "s"], ""), ["v3", "s"]);
        assert_eq!(
            segments(&["v3", "s"], "/Flight 1//code/images/"),
            ["v3", "s", "Flight 1", "code", "images"]
        );
    }
}
