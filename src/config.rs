//! The configuration file: schema, defaults, validation and secrets.
//!
//! Everything is parsed and validated here, in one place, and every problem is reported at once
//! with the file, the line/column and the key it concerns. Secrets are resolved from an inline
//! value, a `*_file` (with `${VAR}` expansion, e.g. `${CREDENTIALS_DIRECTORY}`) or an environment
//! variable, and are held in [`Secret`], which never prints its value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/tapis-webodm-sync/config.toml";
/// Environment variable naming the config file.
pub const PATH_ENV: &str = "TAPIS_WEBODM_SYNC_CONFIG";
/// Environment variable holding the Tapis password when no `password`/`password_file` is set.
pub const TAPIS_PASSWORD_ENV: &str = "TAPIS_WEBODM_SYNC_TAPIS_PASSWORD";
/// Environment variable holding the Tapis client key when no `client_key`/`client_key_file` is set.
pub const TAPIS_CLIENT_KEY_ENV: &str = "TAPIS_WEBODM_SYNC_TAPIS_CLIENT_KEY";
/// Environment variable holding the WebODM password when no `password`/`password_file` is set.
pub const WEBODM_PASSWORD_ENV: &str = "TAPIS_WEBODM_SYNC_WEBODM_PASSWORD";

/// A secret string: printed, logged and serialized only as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

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
    /// Who sees each project (later work; accepted now).
    #[serde(default)]
    pub access: AccessConfig,
    /// Processing outcome (later work; accepted now).
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// Results back to Tapis (later work; accepted now).
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
    /// Request rate limit towards Tapis.
    #[serde(default = "default_tapis_rps")]
    pub requests_per_second: u32,
    /// Requests in flight towards Tapis at once.
    #[serde(default = "default_tapis_concurrency")]
    pub max_concurrent_requests: usize,
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
    /// Companion files uploaded with the images (later work).
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
    /// Images streamed Tapis → WebODM at once.
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
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
    fn is_falsy(&self) -> bool {
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

/// `[access]`: who sees each project besides the daemon's account (later work).
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

/// `[processing]` (later work).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Restarts of a FAILED task before the flight is marked failed.
    #[serde(default = "one")]
    pub restart_failed: u32,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig { restart_failed: 1 }
    }
}

/// `[results]` (later work; off while `assets` is empty).
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
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_retry_initial(),
            max: default_retry_max(),
            max_elapsed: default_retry_elapsed(),
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
fn default_log_level() -> String {
    "info".into()
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `tapis.requests_per_second` (empty for a syntax error).
    pub key: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what to do.
    pub message: String,
}

/// A config file that cannot be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "invalid config file {} ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&render_problem(path, p));
    }
    out
}

/// `<file>[:<line>:<col>][: key `<key>`]: <message>`.
fn render_problem(path: &Path, p: &Problem) -> String {
    let mut out = path.display().to_string();
    if let Some((line, col)) = p.position {
        out.push_str(&format!(":{line}:{col}"));
    }
    if !p.key.is_empty() {
        out.push_str(&format!(": key `{}`", p.key));
    }
    out.push_str(": ");
    out.push_str(&p.message);
    out
}

/// Where the config file is: the flag, else `$TAPIS_WEBODM_SYNC_CONFIG`, else the default.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(PATH_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

impl Config {
    /// Reads, parses and validates a config file, resolving its secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative files.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let mut config: Config = parse(text).map_err(|p| invalid(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = config.validate();
        problems.extend(config.resolve_secrets(base));
        problems.extend(config.resolve_ca_files(base));
        if problems.is_empty() {
            let mut warnings = config.warn_insecure_urls();
            warnings.extend(secret_file_warnings(&config, base));
            for w in &mut warnings {
                w.position = w.position.or_else(|| key_position(text, &w.key));
            }
            config.warnings = warnings;
            Ok(config)
        } else {
            for p in &mut problems {
                p.position = p.position.or_else(|| key_position(text, &p.key));
            }
            Err(invalid(problems))
        }
    }

    /// Checks every value; returns all problems found.
    fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.into(),
                position: None,
                message,
            })
        };
        for (key, url) in [
            ("tapis.base_url", &self.tapis.base_url),
            ("webodm.base_url", &self.webodm.base_url),
        ] {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                bad(key, format!("`{url}` is not an http(s) URL"));
            }
        }
        let pat = &self.tapis.system_pattern;
        if pat.is_empty() || pat.contains(['~', ',', '(', ')', ' ']) {
            bad(
                "tapis.system_pattern",
                format!("`{pat}` must be non-empty and free of `~ , ( )` and spaces"),
            );
        }
        for (key, v) in [
            ("tapis.requests_per_second", self.tapis.requests_per_second),
            (
                "webodm.requests_per_second",
                self.webodm.requests_per_second,
            ),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            (
                "tapis.max_concurrent_requests",
                self.tapis.max_concurrent_requests,
            ),
            (
                "webodm.max_concurrent_uploads",
                self.webodm.max_concurrent_uploads,
            ),
            (
                "sync.max_new_projects_per_pass",
                self.sync.max_new_projects_per_pass,
            ),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, d) in [
            ("tapis.timeout", self.tapis.timeout),
            ("webodm.timeout", self.webodm.timeout),
            ("sync.interval", self.sync.interval),
            ("retry.initial", self.retry.initial),
            ("retry.max", self.retry.max),
            ("retry.max_elapsed", self.retry.max_elapsed),
        ] {
            if d.is_zero() {
                bad(key, "must be longer than 0s".into());
            }
        }
        if self.retry.initial > self.retry.max {
            bad(
                "retry.initial",
                "must not be longer than `retry.max`".to_string(),
            );
        }
        if self.webodm.username.trim().is_empty() {
            bad("webodm.username", "must not be empty".into());
        }
        let dir = &self.layout.images_dir;
        if dir.trim_matches('/').is_empty() || dir.split('/').any(|s| s == "..") {
            bad(
                "layout.images_dir",
                format!("`{dir}` must be a relative folder inside the flight folder, without `..`"),
            );
        }
        if self.layout.extensions.is_empty() {
            bad("layout.extensions", "name at least one extension".into());
        }
        for ext in &self.layout.extensions {
            if ext.is_empty() || ext.contains(['.', '/', '\\']) {
                bad(
                    "layout.extensions",
                    format!("`{ext}` must be an extension without the dot, like \"jpg\""),
                );
            }
        }
        for opt in &self.webodm.task_options {
            if opt.value.is_falsy() {
                bad(
                    "webodm.task_options",
                    format!(
                        "option `{}` has a false/zero/empty value, which WebODM rejects: leave it out",
                        opt.name
                    ),
                );
            }
        }
        for sys in self.tapis.systems.iter().chain(&self.tapis.exclude_systems) {
            if sys.trim().is_empty() {
                bad("tapis.systems", "system ids must not be empty".into());
            }
        }
        out
    }

    /// Resolves passwords, keys and tokens; returns the problems found.
    fn resolve_secrets(&mut self, base: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        let t = &mut self.tapis;
        if let Some(token_file) = &t.token_file {
            match read_secret_file(base, token_file) {
                Ok(tok) => t.auth = TapisAuth::Token(tok),
                Err(message) => out.push(problem("tapis.token_file", message)),
            }
            if t.password.is_some() || t.password_file.is_some() {
                out.push(problem(
                    "tapis.token_file",
                    "set either `token_file` or a password, not both".into(),
                ));
            }
        } else {
            if t.username.trim().is_empty() {
                out.push(problem(
                    "tapis.username",
                    "must be set (or use `token_file`)".into(),
                ));
            }
            let password = resolve_one(
                "tapis.password",
                t.password.take(),
                t.password_file.as_deref(),
                TAPIS_PASSWORD_ENV,
                base,
                &mut out,
            );
            let client = match (&t.client_id, &t.client_key, &t.client_key_file) {
                (None, None, None) => None,
                (Some(id), key, file) => {
                    let key = resolve_one(
                        "tapis.client_key",
                        key.clone(),
                        file.as_deref(),
                        TAPIS_CLIENT_KEY_ENV,
                        base,
                        &mut out,
                    );
                    key.map(|k| (id.clone(), k))
                }
                (None, _, _) => {
                    out.push(problem(
                        "tapis.client_id",
                        "a client key is set but `client_id` is missing".into(),
                    ));
                    None
                }
            };
            t.client_key = None;
            if let Some(password) = password {
                t.auth = TapisAuth::Password { password, client };
            }
        }
        let w = &mut self.webodm;
        if let Some(p) = resolve_one(
            "webodm.password",
            w.password.take(),
            w.password_file.as_deref(),
            WEBODM_PASSWORD_ENV,
            base,
            &mut out,
        ) {
            w.resolved_password = p;
        }
        out
    }
}

impl Config {
    /// The warnings as lines `<file>:<line>:<col>: key `<key>`: <message>`, like errors.
    pub fn warning_lines(&self, path: &Path) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| render_problem(path, w))
            .collect()
    }

    /// Reads each service's `ca_file` into its [`CaBundle`]; returns the problems found.
    fn resolve_ca_files(&mut self, base: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        for (key, file, ca) in [
            ("tapis.ca_file", &self.tapis.ca_file, &mut self.tapis.ca),
            ("webodm.ca_file", &self.webodm.ca_file, &mut self.webodm.ca),
        ] {
            if let Some(file) = file {
                match read_ca_file(base, file) {
                    Ok(bundle) => *ca = bundle,
                    Err(message) => out.push(problem(key, message)),
                }
            }
        }
        out
    }

    /// `http://` base URLs whose host is not loopback: credentials would cross the network in
    /// clear text.
    fn warn_insecure_urls(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (key, url) in [
            ("tapis.base_url", &self.tapis.base_url),
            ("webodm.base_url", &self.webodm.base_url),
        ] {
            if url.scheme() == "http" && !is_loopback(url) {
                out.push(problem(
                    key,
                    format!(
                        "`{url}` is plain http:// to a host that is not loopback: the password and \
                         tokens cross the network unencrypted; use https://"
                    ),
                ));
            }
        }
        out
    }
}

/// Whether a URL's host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// Secret files (`password_file`, `client_key_file`, `token_file`) that group or other may read.
fn secret_file_warnings(config: &Config, base: &Path) -> Vec<Problem> {
    let t = &config.tapis;
    let files = [
        ("tapis.password_file", &t.password_file),
        ("tapis.client_key_file", &t.client_key_file),
        ("tapis.token_file", &t.token_file),
        ("webodm.password_file", &config.webodm.password_file),
    ];
    let mut out = Vec::new();
    for (key, file) in files {
        let Some(file) = file else { continue };
        let Ok(expanded) = expand_vars(&file.to_string_lossy()) else {
            continue;
        };
        let path = base.join(expanded);
        if let Some(mode) = loose_mode(&path) {
            let shown = std::path::absolute(&path).unwrap_or(path);
            out.push(problem(
                key,
                format!(
                    "secret file {} has mode {mode:04o}: group or other may read it; \
                     fix: chmod 600 {}",
                    shown.display(),
                    shell_quote(&shown.to_string_lossy())
                ),
            ));
        }
    }
    out
}

/// The permission bits of a file that group or other can access, if any.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_path: &Path) -> Option<u32> {
    None
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Reads a PEM bundle of CA certificates (`${VAR}` expanded, relative to the config's folder).
fn read_ca_file(base: &Path, file: &Path) -> Result<CaBundle, String> {
    let expanded = expand_vars(&file.to_string_lossy())?;
    let path = base.join(expanded);
    let pem =
        std::fs::read(&path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        format!(
            "CA file {} is not a PEM bundle of certificates: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        ));
    }
    Ok(CaBundle {
        pem,
        count: certs.len(),
    })
}

fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: key.into(),
        position: None,
        message,
    }
}

/// One secret from exactly one of: inline value, file, environment variable.
fn resolve_one(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
    env: &str,
    base: &Path,
    out: &mut Vec<Problem>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            out.push(problem(
                key,
                format!("set either `{key}` or `{key}_file`, not both"),
            ));
            None
        }
        (Some(s), None) if s.expose().is_empty() => {
            out.push(problem(key, "is empty".into()));
            None
        }
        (Some(s), None) => Some(s),
        (None, Some(f)) => match read_secret_file(base, f) {
            Ok(s) => Some(s),
            Err(message) => {
                out.push(problem(&format!("{key}_file"), message));
                None
            }
        },
        (None, None) => match std::env::var(env) {
            Ok(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                out.push(problem(
                    key,
                    format!("missing: set `{key}_file`, `{key}` or the environment variable {env}"),
                ));
                None
            }
        },
    }
}

/// Reads a secret file (`${VAR}` expanded, relative to the config's folder), trimming the
/// trailing newline.
fn read_secret_file(base: &Path, file: &Path) -> Result<Secret, String> {
    let expanded = expand_vars(&file.to_string_lossy())?;
    let path = base.join(expanded);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret(value))
}

/// Expands `${VAR}` references (e.g. `${CREDENTIALS_DIRECTORY}` under systemd).
fn expand_vars(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let var = &after[..end];
        let value = std::env::var(var)
            .map_err(|_| format!("`{s}` names ${{{var}}}, which is not set in the environment"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Deserializes the file, keeping the key path and position of the first error.
fn parse(text: &str) -> Result<Config, Problem> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_problem(text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        toml_problem(text, &key, e.inner())
    })
}

fn toml_problem(text: &str, key: &str, e: &toml::de::Error) -> Problem {
    Problem {
        key: key.to_string(),
        position: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Position of a dotted key in the file, for problems found after parsing.
fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (k, v) = table.get_key_value(part)?;
        if parts.peek().is_none() {
            return Some(line_col(text, k.span().start));
        }
        table = v.get_ref().as_table()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[tapis]
base_url = "https://portals.tapis.io"
username = "svc"
password = "pw"

[webodm]
base_url = "http://127.0.0.1:8000"
username = "sync"
password = "pw2"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tws/config.toml"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        match load(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_gets_design_defaults() {
        let c = load(MIN).unwrap();
        assert_eq!(c.tapis.system_pattern, "ptdatax.project.*");
        assert_eq!(c.tapis.requests_per_second, 10);
        assert_eq!(c.webodm.max_concurrent_uploads, 4);
        assert_eq!(c.sync.interval, Duration::from_secs(300));
        assert_eq!(c.sync.settle, Duration::from_secs(600));
        assert_eq!(c.layout.images_dir, "code/images");
        assert_eq!(c.layout.extensions, vec!["jpg", "jpeg"]);
        assert_eq!(c.sync.on_change_after_commit, OnChange::Warn);
        assert!(matches!(
            c.tapis.auth,
            TapisAuth::Password { client: None, .. }
        ));
        assert_eq!(c.webodm.resolved_password.expose(), "pw2");
    }

    #[test]
    fn unknown_key_is_named_with_line_and_column() {
        let text = MIN.replace("username = \"svc\"", "username = \"svc\"\nusernme = \"x\"");
        let p = problems(&text);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("usernme"), "{:?}", p[0]);
        assert_eq!(p[0].position.map(|x| x.0), Some(5));
    }

    #[test]
    fn bad_duration_names_key() {
        let text = format!("{MIN}\n[sync]\ninterval = \"five minutes\"\n");
        let p = problems(&text);
        assert_eq!(p[0].key, "sync.interval");
        assert_eq!(p[0].position.map(|x| x.0), Some(13));
    }

    #[test]
    fn every_semantic_problem_is_reported_with_position() {
        let text = format!(
            "{MIN}\n[sync]\nmax_new_projects_per_pass = 0\n[layout]\nextensions = [\".jpg\"]\n"
        )
        .replace("requests_per_second", "x");
        let text = text.replace(
            "password = \"pw\"\n",
            "password = \"pw\"\nrequests_per_second = 0\n",
        );
        let p = problems(&text);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"tapis.requests_per_second"), "{keys:?}");
        assert!(keys.contains(&"sync.max_new_projects_per_pass"), "{keys:?}");
        assert!(keys.contains(&"layout.extensions"), "{keys:?}");
        assert!(p.iter().all(|p| p.position.is_some()), "{p:?}");
    }

    #[test]
    fn error_text_names_file_line_and_key() {
        let text = format!("{MIN}\n[sync]\nmax_new_projects_per_pass = 0\n");
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("/etc/tws/config.toml:13:1: key `sync.max_new_projects_per_pass`"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_files_with_env_expansion_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tapis-pw"), "s3cret-tapis\n").unwrap();
        std::fs::write(dir.path().join("key"), "s3cret-key").unwrap();
        std::env::set_var("TWS_TEST_CRED_DIR", dir.path());
        let text = MIN.replace(
            "password = \"pw\"",
            "password_file = \"${TWS_TEST_CRED_DIR}/tapis-pw\"\nclient_id = \"cid\"\nclient_key_file = \"key\"",
        );
        let c = Config::from_toml(&text, &dir.path().join("config.toml")).unwrap();
        match &c.tapis.auth {
            TapisAuth::Password {
                password,
                client: Some((id, key)),
            } => {
                assert_eq!(password.expose(), "s3cret-tapis");
                assert_eq!(id, "cid");
                assert_eq!(key.expose(), "s3cret-key");
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{c:?} {}", toml::to_string(&c).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("pw2"), "{shown}");
    }

    #[test]
    fn missing_secret_says_how_to_provide_it() {
        let text = MIN.replace("password = \"pw2\"\n", "");
        std::env::remove_var(WEBODM_PASSWORD_ENV);
        let p = problems(&text);
        assert_eq!(p[0].key, "webodm.password");
        assert!(p[0].message.contains(WEBODM_PASSWORD_ENV), "{:?}", p[0]);
    }

    #[test]
    fn falsy_task_option_is_rejected() {
        let text = MIN.replace(
            "username = \"sync\"",
            "username = \"sync\"\ntask_options = [{ name = \"dsm\", value = false }]",
        );
        let p = problems(&text);
        assert_eq!(p[0].key, "webodm.task_options");
    }

    #[test]
    fn option_numbers_are_sent_as_strings() {
        assert_eq!(OptionValue::Int(3).to_json(), serde_json::json!("3"));
        assert_eq!(OptionValue::Bool(true).to_json(), serde_json::json!(true));
    }

    #[test]
    fn example_and_demo_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["example.toml", "demo.toml"] {
            let text = std::fs::read_to_string(root.join(name)).unwrap();
            // The example points at files that exist only on a real host: check the schema.
            let parsed = parse(&text);
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
            assert!(parsed.unwrap().validate().is_empty(), "{name}");
        }
    }
}
