//! Secrets: resolved from an inline value, a `*_file` (with `${VAR}` expansion, e.g.
//! `${CREDENTIALS_DIRECTORY}`) or an environment variable, held in [`Secret`], which never
//! prints its value; and the CA bundles of `ca_file`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use super::validate::problem;
use super::{
    CaBundle, Config, Problem, TapisAuth, SMTP_PASSWORD_ENV, TAPIS_CLIENT_KEY_ENV,
    TAPIS_PASSWORD_ENV, WEBODM_PASSWORD_ENV,
};

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

impl Config {
    /// Resolves passwords, keys and tokens; returns the problems found.
    pub(super) fn resolve_secrets(&mut self, base: &Path) -> Vec<Problem> {
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
        let n = &mut self.notify;
        if n.smtp_username.is_some() {
            n.resolved_smtp_password = resolve_one(
                "notify.smtp_password",
                n.smtp_password.take(),
                n.smtp_password_file.as_deref(),
                SMTP_PASSWORD_ENV,
                base,
                &mut out,
            );
        } else if n.smtp_password.is_some() || n.smtp_password_file.is_some() {
            out.push(problem(
                "notify.smtp_username",
                "missing: an SMTP password is set, so name the account it belongs to".into(),
            ));
        }
        n.smtp_password = None;
        if let Some(file) = &n.webhook_secret_file {
            match read_secret_file(base, file) {
                Ok(s) => n.resolved_webhook_secret = Some(s),
                Err(message) => out.push(problem("notify.webhook_secret_file", message)),
            }
        }
        out
    }

    /// Reads each service's `ca_file` into its [`CaBundle`]; returns the problems found.
    pub(super) fn resolve_ca_files(&mut self, base: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        for (key, file, ca) in [
            ("tapis.ca_file", &self.tapis.ca_file, &mut self.tapis.ca),
            ("webodm.ca_file", &self.webodm.ca_file, &mut self.webodm.ca),
            (
                "notify.smtp_ca_file",
                &self.notify.smtp_ca_file,
                &mut self.notify.smtp_ca,
            ),
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
}

/// Secret files (`password_file`, `client_key_file`, `token_file`) that group or other may read.
pub(super) fn secret_file_warnings(config: &Config, base: &Path) -> Vec<Problem> {
    let t = &config.tapis;
    let files = [
        ("tapis.password_file", &t.password_file),
        ("tapis.client_key_file", &t.client_key_file),
        ("tapis.token_file", &t.token_file),
        ("webodm.password_file", &config.webodm.password_file),
        (
            "notify.smtp_password_file",
            &config.notify.smtp_password_file,
        ),
        (
            "notify.webhook_secret_file",
            &config.notify.webhook_secret_file,
        ),
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
