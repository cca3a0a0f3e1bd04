//! The config file's structure and defaults (`deny_unknown_fields` everywhere).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ByteSize, Problem, Secret};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where flights come from.
    pub tapis: TapisConfig,
    /// How a flight folder is laid out.
    #[serde(default)]
    pub layout: LayoutConfig,
    /// Where projects go.
    pub webodm: WebodmConfig,
    /// The reconcile loop.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Who sees each project besides the daemon's own account.
    #[serde(default)]
    pub access: AccessConfig,
    /// Following each committed task's processing.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// Processing results copied back to Tapis (off while `assets` is empty).
    #[serde(default)]
    pub results: ResultsConfig,
    /// Retry policy shared by both services.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Admin endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Notifications (email, webhook); off while nothing is set.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Problems that do not stop the daemon (group/other-readable secret files, plain `http://`
    /// to another host); shown by `check-config` and at startup.
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// `[tapis]`: the Tapis tenant, account and what to scan.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TapisConfig {
    /// Tenant base URL, e.g. `https://portals.tapis.io`.
    pub base_url: Url,
    /// Account used for the password grant.
    #[serde(default)]
    pub username: String,
    /// Inline password (prefer `password_file` or the environment).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OAuth client id; with a client key it enables refresh tokens.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Inline client key.
    #[serde(default)]
    pub client_key: Option<Secret>,
    /// File holding the client key.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// File holding a pre-issued access token, used instead of logging in.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Which systems hold flights (Tapis `like` pattern: `*` any run, `!` one character).
    #[serde(default = "default_system_pattern")]
    pub system_pattern: String,
    /// Allow-list of system ids; empty = every matching system.
    #[serde(default)]
    pub systems: Vec<String>,
    /// System ids never scanned.
    #[serde(default)]
    pub exclude_systems: Vec<String>,
    /// `"K/N"`: this instance serves only the systems whose id hashes to K modulo N (see
    /// [`Shard`]); unset = every system.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// Request rate limit towards Tapis.
    #[serde(default = "default_tapis_rps")]
    pub requests_per_second: u32,
    /// Metadata requests (listings, logins, lookups) in flight towards Tapis at once.
    #[serde(default = "default_tapis_concurrency")]
    pub max_concurrent_requests: usize,
    /// File downloads open at once (transfers: they wait for these slots, not for the rate
    /// limiter or the request slots).
    #[serde(default = "default_downloads")]
    pub max_concurrent_downloads: usize,
    /// Bytes per second of all downloads together; unset = no limit.
    #[serde(default)]
    pub bwlimit: Option<ByteSize>,
    /// Longest silence on a connection before the request is abandoned and retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of extra CA certificates trusted for Tapis (a private CA), on top of the OS
    /// trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Resolved credentials (not a key of the file).
    #[serde(skip)]
    pub auth: TapisAuth,
    /// The certificates read from `ca_file` (not a key of the file).
    #[serde(skip)]
    pub ca: CaBundle,
}

/// `tapis.shard = "K/N"`: N instances with K = 0…N−1 split the matching systems between them,
/// each system served by exactly one.
///
/// A system belongs to shard `u64::from_be_bytes(first 8 bytes of sha256(id)) mod N`: a stable
/// hash, the same on every host and every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Shard {
    /// This instance's shard, `0 ≤ index < count`.
    pub index: u64,
    /// How many shards there are.
    pub count: u64,
}

impl Shard {
    /// The shard a system id falls in, out of `count`.
    pub fn of(system_id: &str, count: u64) -> u64 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(system_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % count.max(1)
    }

    /// Whether this instance serves the system.
    pub fn serves(&self, system_id: &str) -> bool {
        Shard::of(system_id, self.count) == self.index
    }
}

impl TryFrom<String> for Shard {
    type Error = String;
    fn try_from(s: String) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: write \"K/N\" with 0 ≤ K < N, e.g. \"0/2\"");
        let (k, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl From<Shard> for String {
    fn from(s: Shard) -> String {
        format!("{}/{}", s.index, s.count)
    }
}

/// How the daemon authenticates to Tapis, resolved from the `[tapis]` keys.
#[derive(Debug, Clone, Default, Serialize)]
pub enum TapisAuth {
    /// Not resolved yet (only before validation).
    #[default]
    Unresolved,
    /// Password grant, with a client for refresh tokens when configured.
    Password {
        /// Account password.
        password: Secret,
        /// `(client_id, client_key)` for the Basic auth that yields refresh tokens.
        client: Option<(String, Secret)>,
    },
    /// A pre-issued access token.
    Token(Secret),
}

/// `[layout]`: where images are inside a flight folder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutConfig {
    /// Images folder relative to the flight folder.
    #[serde(default = "default_images_dir")]
    pub images_dir: String,
    /// Image extensions, case-insensitive, without the dot.
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// Companion files uploaded into the task with the images when the images folder holds
    /// them (names matched case-insensitively); any other file is left out.
    #[serde(default = "default_companions")]
    pub companions: Vec<String>,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        LayoutConfig {
            images_dir: default_images_dir(),
            extensions: default_extensions(),
            companions: default_companions(),
        }
    }
}

/// `[webodm]`: the WebODM instance and account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebodmConfig {
    /// WebODM base URL, e.g. `http://127.0.0.1:8000`.
    pub base_url: Url,
    /// WebODM's URL as people reach it, for links on the status page and in notifications
    /// (default: `base_url`).
    #[serde(default)]
    pub public_url: Option<Url>,
    /// Account that owns the created projects.
    pub username: String,
    /// Inline password (prefer `password_file` or the environment).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Request rate limit towards WebODM.
    #[serde(default = "default_webodm_rps")]
    pub requests_per_second: u32,
    /// Upload requests (each streaming one image, or a batch of small ones, Tapis → WebODM) at
    /// once; they wait for these slots, not for the rate limiter.
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
    /// Most images in one upload request (1 = one image per request).
    #[serde(default = "default_batch_files")]
    pub upload_batch_files: usize,
    /// Most bytes in one upload request; a bigger image goes alone.
    #[serde(default = "default_batch_bytes")]
    pub upload_batch_bytes: ByteSize,
    /// Bytes per second of all uploads together; unset = no limit.
    #[serde(default)]
    pub bwlimit: Option<ByteSize>,
    /// Processing options of every created task.
    #[serde(default = "default_task_options")]
    pub task_options: Vec<TaskOption>,
    /// Longest silence on a connection before the request is abandoned and retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of extra CA certificates trusted for WebODM (a private CA), on top of the OS
    /// trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Resolved password (not a key of the file).
    #[serde(skip)]
    pub resolved_password: Secret,
    /// The certificates read from `ca_file` (not a key of the file).
    #[serde(skip)]
    pub ca: CaBundle,
}

impl WebodmConfig {
    /// The URL people use to reach WebODM: `public_url`, else `base_url`.
    pub fn link_base(&self) -> &Url {
        self.public_url.as_ref().unwrap_or(&self.base_url)
    }
}

/// Extra trusted CA certificates (PEM), read and checked when the config is loaded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CaBundle {
    /// The PEM text of the bundle (empty: only the OS trust store).
    pub pem: Vec<u8>,
    /// Certificates in it.
    pub count: usize,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({} certificates)", self.count)
    }
}

/// One WebODM processing option.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskOption {
    /// Option name, e.g. `fast-orthophoto`.
    pub name: String,
    /// Option value: `true`, a number or a string (WebODM rejects false, 0 and "").
    pub value: OptionValue,
}

/// A task option's value as written in the config.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    /// A flag.
    Bool(bool),
    /// An integer (sent as a string).
    Int(i64),
    /// A float (sent as a string).
    Float(f64),
    /// A string.
    Str(String),
}

impl OptionValue {
    /// The JSON value WebODM accepts: booleans stay booleans, numbers become strings.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            OptionValue::Bool(b) => serde_json::Value::Bool(*b),
            OptionValue::Int(i) => serde_json::Value::String(i.to_string()),
            OptionValue::Float(f) => serde_json::Value::String(f.to_string()),
            OptionValue::Str(s) => serde_json::Value::String(s.clone()),
        }
    }
    pub(super) fn is_falsy(&self) -> bool {
        match self {
            OptionValue::Bool(b) => !b,
            OptionValue::Int(i) => *i == 0,
            OptionValue::Float(f) => *f == 0.0,
            OptionValue::Str(s) => s.is_empty(),
        }
    }
}

/// What to do when a committed flight's images change on Tapis.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Log once and show it in `status`.
    Warn,
    /// Create a second task with the whole current set.
    NewTask,
}

/// `[sync]`: the reconcile loop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Time between passes.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a flight's listing must stay unchanged before its task is committed.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// Projects created per pass at most.
    #[serde(default = "default_max_new")]
    pub max_new_projects_per_pass: usize,
    /// Directory of the state store.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Images added or removed after commit.
    #[serde(default = "default_on_change")]
    pub on_change_after_commit: OnChange,
    /// How long in-flight images may finish after SIGTERM.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often a committed flight's images folder is listed again to notice changes (`0s`:
    /// every pass). Each flight has its own point in the period, so each pass lists about
    /// `interval / recheck_committed` of them.
    #[serde(default = "default_recheck", with = "humantime_serde")]
    pub recheck_committed: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: default_interval(),
            settle: default_settle(),
            max_new_projects_per_pass: default_max_new(),
            state_dir: default_state_dir(),
            on_change_after_commit: default_on_change(),
            shutdown_timeout: default_shutdown_timeout(),
            recheck_committed: default_recheck(),
        }
    }
}

/// A permission WebODM can grant on a project.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// See it.
    View,
    /// Add tasks.
    Add,
    /// Edit it.
    Change,
    /// Delete it.
    Delete,
}

impl Permission {
    /// The name WebODM uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::Add => "add",
            Permission::Change => "change",
            Permission::Delete => "delete",
        }
    }
}

impl AccessConfig {
    /// The configured permissions as WebODM names, `view` always among them (WebODM needs it
    /// for the others to mean anything).
    pub fn permission_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .permissions
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        if !names.iter().any(|n| n == "view") {
            names.push("view".into());
        }
        names.sort();
        names.dedup();
        names
    }
}

/// `[access]`: who sees each project besides the daemon's account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Grant the Tapis system's owner.
    #[serde(default = "yes")]
    pub tapis_owner: bool,
    /// Grant the users the system is shared with.
    #[serde(default = "yes")]
    pub tapis_shares: bool,
    /// Always these WebODM users.
    #[serde(default)]
    pub users: Vec<String>,
    /// And these WebODM groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Permissions granted to each.
    #[serde(default = "default_permissions")]
    pub permissions: Vec<Permission>,
    /// Tapis username → WebODM username where they differ.
    #[serde(default)]
    pub usernames: std::collections::BTreeMap<String, String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            tapis_owner: true,
            tapis_shares: true,
            users: vec![],
            groups: vec![],
            permissions: default_permissions(),
            usernames: Default::default(),
        }
    }
}

/// `[processing]`: following each committed task until WebODM has processed it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Restarts of a FAILED task before the flight is marked failed.
    #[serde(default = "one")]
    pub restart_failed: u32,
    /// A committed task whose `status` stays null (no processing node took it) this long is
    /// reported as "no processing node".
    #[serde(default = "default_no_node_after", with = "humantime_serde")]
    pub no_node_after: Duration,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            restart_failed: 1,
            no_node_after: default_no_node_after(),
        }
    }
}

/// `[results]`: processing results copied back to Tapis (off while `assets` is empty).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Asset names to copy back to Tapis.
    #[serde(default)]
    pub assets: Vec<String>,
    /// Folder under the flight folder that receives them.
    #[serde(default = "default_results_dir")]
    pub dir: String,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            assets: vec![],
            dir: default_results_dir(),
        }
    }
}

/// `[retry]`: exponential backoff with full jitter, shared by both services.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub initial: Duration,
    /// Largest delay.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub max: Duration,
    /// Give up on one operation after this long.
    #[serde(default = "default_retry_elapsed", with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Give up on one Tapis listing after this long: that flight (or system) is reported and
    /// tried again next pass while the others go on.
    #[serde(default = "default_listing_elapsed", with = "humantime_serde")]
    pub listing_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_retry_initial(),
            max: default_retry_max(),
            max_elapsed: default_retry_elapsed(),
            listing_elapsed: default_listing_elapsed(),
        }
    }
}

/// Log record format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `tapis_webodm_sync=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

/// `[admin]`: the optional admin endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback address to serve `/healthz`, `/metrics`, `/status` on; off when unset.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// How notification mails are grouped.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmailMode {
    /// One mail per event.
    #[default]
    Each,
    /// One mail per pass with every event of that pass.
    Digest,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// One JSON object per event (see README).
    #[default]
    Json,
    /// A Slack/Mattermost incoming webhook: `{"text": …}`.
    Slack,
}

/// `[notify]`: who is told about flights and passes; off while neither `email_to` nor
/// `webhook` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `smtp://host:587` (STARTTLS) or `smtps://host:465` (implicit TLS).
    #[serde(default)]
    pub smtp_url: Option<Url>,
    /// SMTP account; the password then comes from `smtp_password_file`, `smtp_password` or
    /// the environment.
    #[serde(default)]
    pub smtp_username: Option<String>,
    /// Inline SMTP password (prefer `smtp_password_file`).
    #[serde(default)]
    pub smtp_password: Option<Secret>,
    /// File holding the SMTP password.
    #[serde(default)]
    pub smtp_password_file: Option<PathBuf>,
    /// PEM bundle of extra CA certificates trusted for the SMTP server, on top of the OS
    /// trust store.
    #[serde(default)]
    pub smtp_ca_file: Option<PathBuf>,
    /// Sender address, e.g. `tapis-webodm-sync <noreply@example.org>`.
    #[serde(default)]
    pub from: Option<String>,
    /// Recipients of notification mails.
    #[serde(default)]
    pub email_to: Vec<String>,
    /// One mail per event or one digest per pass.
    #[serde(default)]
    pub email_mode: EmailMode,
    /// URL receiving a POST per event (treated as a secret: its path is never printed).
    #[serde(default, serialize_with = "redact_url")]
    pub webhook: Option<Url>,
    /// File holding the key of the `X-Tapis-Webodm-Sync-Signature` HMAC-SHA256 header.
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The webhook's body format.
    #[serde(default)]
    pub format: WebhookFormat,
    /// A flight failing with the same error for this long is reported as stuck.
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    pub stuck_after: Duration,
    /// Notifications sent per second at most (mails and webhook calls together).
    #[serde(default = "default_notify_rps")]
    pub requests_per_second: u32,
    /// Resolved SMTP password (not a key of the file).
    #[serde(skip)]
    pub resolved_smtp_password: Option<Secret>,
    /// Resolved webhook key (not a key of the file).
    #[serde(skip)]
    pub resolved_webhook_secret: Option<Secret>,
    /// The certificates read from `smtp_ca_file` (not a key of the file).
    #[serde(skip)]
    pub smtp_ca: CaBundle,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            smtp_url: None,
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            smtp_ca_file: None,
            from: None,
            email_to: vec![],
            email_mode: EmailMode::Each,
            webhook: None,
            webhook_secret_file: None,
            format: WebhookFormat::Json,
            stuck_after: default_stuck_after(),
            requests_per_second: default_notify_rps(),
            resolved_smtp_password: None,
            resolved_webhook_secret: None,
            smtp_ca: CaBundle::default(),
        }
    }
}

impl NotifyConfig {
    /// Whether mails are configured.
    pub fn email_enabled(&self) -> bool {
        !self.email_to.is_empty()
    }

    /// Whether anything is to be notified.
    pub fn enabled(&self) -> bool {
        self.email_enabled() || self.webhook.is_some()
    }
}

/// Shows a URL without its path, query or credentials (webhook URLs carry tokens in the path).
fn redact_url<S: serde::Serializer>(url: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        None => s.serialize_none(),
        Some(u) => s.serialize_str(&format!(
            "{}://{}/<redacted>",
            u.scheme(),
            u.host_str().unwrap_or_default()
        )),
    }
}

fn default_stuck_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_notify_rps() -> u32 {
    2
}
fn default_system_pattern() -> String {
    "ptdatax.project.*".into()
}
fn default_tapis_rps() -> u32 {
    10
}
fn default_tapis_concurrency() -> usize {
    8
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_images_dir() -> String {
    "code/images".into()
}
fn default_extensions() -> Vec<String> {
    vec!["jpg".into(), "jpeg".into()]
}
fn default_companions() -> Vec<String> {
    vec![
        "geo.txt".into(),
        "image_groups.txt".into(),
        "gcp_list.txt".into(),
    ]
}
fn default_webodm_rps() -> u32 {
    20
}
fn default_uploads() -> usize {
    4
}
fn default_downloads() -> usize {
    8
}
fn default_batch_files() -> usize {
    50
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_task_options() -> Vec<TaskOption> {
    vec![TaskOption {
        name: "fast-orthophoto".into(),
        value: OptionValue::Bool(true),
    }]
}
fn default_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_settle() -> Duration {
    Duration::from_secs(600)
}
fn default_max_new() -> usize {
    50
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tapis-webodm-sync")
}
fn default_on_change() -> OnChange {
    OnChange::Warn
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_permissions() -> Vec<Permission> {
    vec![Permission::View]
}
fn default_no_node_after() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_results_dir() -> String {
    "code/odm_results".into()
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_retry_elapsed() -> Duration {
    Duration::from_secs(1800)
}
fn default_recheck() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_listing_elapsed() -> Duration {
    Duration::from_secs(60)
}
fn default_log_level() -> String {
    "info".into()
}
