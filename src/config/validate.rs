//! Every check of a config file, and how problems are reported: each with the file, the
//! line/column and the dotted key it concerns.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use url::Url;

use super::Config;

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

impl Config {
    /// Checks every value; returns all problems found.
    pub(super) fn validate(&self) -> Vec<Problem> {
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
                "tapis.max_concurrent_downloads",
                self.tapis.max_concurrent_downloads,
            ),
            (
                "webodm.max_concurrent_uploads",
                self.webodm.max_concurrent_uploads,
            ),
            ("webodm.upload_batch_files", self.webodm.upload_batch_files),
            (
                "sync.max_new_projects_per_pass",
                self.sync.max_new_projects_per_pass,
            ),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if self.webodm.upload_batch_bytes.bytes() == 0 {
            bad(
                "webodm.upload_batch_bytes",
                "must be at least 1 byte".into(),
            );
        }
        for (key, limit) in [
            ("tapis.bwlimit", self.tapis.bwlimit),
            ("webodm.bwlimit", self.webodm.bwlimit),
        ] {
            if limit.is_some_and(|l| l.bytes() == 0) {
                bad(
                    key,
                    "must be more than 0 bytes per second (leave it out for no limit)".into(),
                );
            }
        }
        for (key, d) in [
            ("tapis.timeout", self.tapis.timeout),
            ("webodm.timeout", self.webodm.timeout),
            ("sync.interval", self.sync.interval),
            ("retry.initial", self.retry.initial),
            ("retry.max", self.retry.max),
            ("retry.max_elapsed", self.retry.max_elapsed),
            ("retry.listing_elapsed", self.retry.listing_elapsed),
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
        if let Some(url) = &self.webodm.public_url {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                bad(
                    "webodm.public_url",
                    format!("`{url}` is not an http(s) URL"),
                );
            }
        }
        out.extend(self.validate_notify());
        out.extend(self.validate_results());
        out
    }

    /// The checks of `[layout] companions`, `[processing]` and `[results]`.
    fn validate_results(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push(problem(key, message));
        for name in &self.layout.companions {
            if let Some(why) = bad_file_name(name) {
                bad(
                    "layout.companions",
                    format!("`{name}` {why}: name a file of the images folder, like \"geo.txt\""),
                );
            }
        }
        if self.processing.no_node_after.is_zero() {
            bad("processing.no_node_after", "must be longer than 0s".into());
        }
        let dir = &self.results.dir;
        if dir.trim_matches('/').is_empty()
            || dir.starts_with('/')
            || dir.contains('\\')
            || dir.split('/').any(|s| s == ".." || s == ".")
        {
            bad(
                "results.dir",
                format!(
                    "`{dir}` must be a relative folder inside the flight folder, without `.`, \
                     `..` or `\\`, like \"code/odm_results\""
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for asset in &self.results.assets {
            if let Some(why) = bad_file_name(asset) {
                bad(
                    "results.assets",
                    format!("`{asset}` {why}: name a WebODM asset, like \"orthophoto.tif\""),
                );
            } else if !seen.insert(asset.as_str()) {
                bad("results.assets", format!("`{asset}` is listed twice"));
            }
        }
        out
    }

    /// The checks of `[notify]`.
    fn validate_notify(&self) -> Vec<Problem> {
        let n = &self.notify;
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push(problem(key, message));
        if let Some(url) = &n.smtp_url {
            if !matches!(url.scheme(), "smtp" | "smtps") || url.host().is_none() {
                bad(
                    "notify.smtp_url",
                    format!(
                        "`{}://{}…` must be smtp://host[:port] (STARTTLS) or smtps://host[:port] \
                         (implicit TLS)",
                        url.scheme(),
                        url.host_str().unwrap_or_default()
                    ),
                );
            }
            if url.password().is_some() || !url.username().is_empty() {
                bad(
                    "notify.smtp_url",
                    "must not hold credentials: use `smtp_username` and `smtp_password_file`"
                        .into(),
                );
            }
        }
        if n.email_to.is_empty() {
            for (key, set) in [
                ("notify.smtp_url", n.smtp_url.is_some()),
                ("notify.from", n.from.is_some()),
            ] {
                if set {
                    bad(
                        key,
                        "is set but `notify.email_to` is empty: name the recipients".into(),
                    );
                }
            }
        } else {
            if n.smtp_url.is_none() {
                bad(
                    "notify.smtp_url",
                    "missing: `email_to` is set, so name the SMTP server (smtp://host:587 or \
                     smtps://host:465)"
                        .into(),
                );
            }
            if n.from.is_none() {
                bad(
                    "notify.from",
                    "missing: `email_to` is set, so name the sender address".into(),
                );
            }
        }
        for (key, addr) in n
            .email_to
            .iter()
            .map(|a| ("notify.email_to", a))
            .chain(n.from.iter().map(|a| ("notify.from", a)))
        {
            if addr.parse::<lettre::message::Mailbox>().is_err() {
                bad(
                    key,
                    format!("`{addr}` is not a mail address (like `ops@example.org` or `Ops <ops@example.org>`)"),
                );
            }
        }
        if n.smtp_username
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            bad("notify.smtp_username", "must not be empty".into());
        }
        if let Some(url) = &n.webhook {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                bad(
                    "notify.webhook",
                    format!("`{}://…` is not an http(s) URL", url.scheme()),
                );
            }
        } else {
            if n.webhook_secret_file.is_some() {
                bad(
                    "notify.webhook_secret_file",
                    "is set but `notify.webhook` is not".into(),
                );
            }
            if n.format == super::WebhookFormat::Slack {
                bad(
                    "notify.format",
                    "is \"slack\" but `notify.webhook` is not set".into(),
                );
            }
        }
        if n.stuck_after.is_zero() {
            bad("notify.stuck_after", "must be longer than 0s".into());
        }
        if n.requests_per_second == 0 {
            bad("notify.requests_per_second", "must be at least 1".into());
        }
        out
    }

    /// The warnings as lines `<file>:<line>:<col>: key `<key>`: <message>`, like errors.
    pub fn warning_lines(&self, path: &Path) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| render_problem(path, w))
            .collect()
    }

    /// `http://` base URLs whose host is not loopback: credentials would cross the network in
    /// clear text.
    pub(super) fn warn_insecure_urls(&self) -> Vec<Problem> {
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

/// Why `name` cannot be a plain file name (one path segment), if it cannot.
fn bad_file_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is not a file name")
    } else if name.contains(['/', '\\']) {
        Some("must be a file name without `/` or `\\`")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}

pub(super) fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: key.into(),
        position: None,
        message,
    }
}

/// Most repairs tried while collecting a file's problems (each repair removes or replaces one
/// key, so a real file never comes close).
const MAX_REPAIRS: usize = 200;

/// Deserializes the file and reports every problem the schema finds, not only the first: each
/// time deserializing fails at a key, the problem is recorded (with the key's path and
/// position), the key is removed (its default applies) or, when it is required, replaced by a
/// placeholder, and deserializing starts again, until it succeeds. Returns the config so
/// repaired (for the semantic checks; `None` when the file is not TOML at all or cannot be
/// repaired) and the problems, in the order found.
pub(super) fn parse(text: &str) -> (Option<Config>, Vec<Problem>) {
    let mut doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return (None, vec![toml_problem(text, "", &e)]),
    };
    let mut problems: Vec<Problem> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let de = toml::de::Deserializer::from(doc.clone());
        let e = match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(config) => return (Some(config), problems),
            Err(e) => e,
        };
        let path: Vec<Segment> = e.path().iter().cloned().collect();
        let mut problem = toml_problem(text, &key_of(&path), e.inner());
        // A missing required key: named by its own path, placed at its table's header.
        let missing = e
            .inner()
            .message()
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_owned);
        let mut at = path.clone();
        if let Some(field) = &missing {
            at.push(Segment::Map { key: field.clone() });
            problem.key = key_of(&at);
            problem.position = key_position(text, &key_of(&path));
            problem.message = if path.is_empty() {
                format!("the required section `[{field}]` is missing")
            } else {
                "this required key is missing".to_string()
            };
        }
        // What can be removed is a table key: inside an array, the whole array goes.
        let cut = at
            .iter()
            .position(|s| !matches!(s, Segment::Map { .. }))
            .unwrap_or(at.len());
        let keys: Vec<&str> = at[..cut]
            .iter()
            .filter_map(|s| match s {
                Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let repeated = problems.iter().any(|p| p.key == problem.key);
        problems.push(problem);
        if repeated || !repair(&mut doc, &keys) {
            return (None, problems);
        }
    }
    (None, problems)
}

/// The dotted form of a key path, as problems name it (`tapis.base_url`,
/// `access.permissions[0]`); empty for the whole file.
fn key_of(path: &[Segment]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

/// What stands in for a required key (one without a default) that is missing or invalid, so
/// that parsing can go on to the file's other problems. Never part of a valid config: the key
/// has been reported.
fn placeholder(keys: &[&str]) -> Option<DeValue<'static>> {
    Some(match keys {
        ["tapis"] | ["webodm"] => DeValue::Table(DeTable::new()),
        ["tapis" | "webodm", "base_url"] => DeValue::String("https://placeholder.invalid/".into()),
        ["webodm", "username"] => DeValue::String("placeholder".into()),
        _ => return None,
    })
}

/// Removes the key at `keys` from the document, or puts a placeholder there when the key is
/// required; whether the document changed.
fn repair(doc: &mut Spanned<DeTable<'_>>, keys: &[&str]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut span = doc.span();
    let mut table = doc.get_mut();
    for k in parents {
        match table.get_mut(*k).map(|v| (v.span(), v.get_mut())) {
            Some((s, DeValue::Table(t))) => {
                span = s;
                table = t;
            }
            _ => return false,
        }
    }
    match placeholder(keys) {
        Some(value) => {
            let key = Spanned::new(span.clone(), Cow::Owned(last.to_string()));
            table.insert(key, Spanned::new(span, value));
            true
        }
        None => table.remove(*last).is_some(),
    }
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
pub(super) fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
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
