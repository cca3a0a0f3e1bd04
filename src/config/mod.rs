//! The configuration file: schema, defaults, validation and secrets.
//!
//! Everything is parsed and validated here, in one place, and every problem is reported at once
//! with the file, the line/column and the key it concerns. Secrets are resolved from an inline
//! value, a `*_file` (with `${VAR}` expansion, e.g. `${CREDENTIALS_DIRECTORY}`) or an environment
//! variable, and are held in [`Secret`], which never prints its value.

//!
//! `schema` holds the file's structure and defaults, `validate` every check and how problems
//! are reported, `secrets` where passwords, keys, tokens and CA bundles come from.

mod schema;
mod secrets;
mod size;
mod validate;

use std::path::{Path, PathBuf};

pub use schema::*;
pub use secrets::Secret;
pub use size::ByteSize;
pub use validate::{is_loopback, ConfigError, Problem};

use secrets::secret_file_warnings;
use validate::{key_position, parse};

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
/// Environment variable holding the SMTP password when `notify.smtp_username` is set and no
/// `smtp_password`/`smtp_password_file` is.
pub const SMTP_PASSWORD_ENV: &str = "TAPIS_WEBODM_SYNC_SMTP_PASSWORD";

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
    /// Every problem of the file is reported at once: schema problems (unknown keys, wrong
    /// types, missing required keys) in every section, then the semantic checks, secrets and
    /// CA files, each with its line:column and key, in file order.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (parsed, reported) = parse(text);
        // Once a key is reported, nothing more is said about it or what it holds (it was
        // removed or replaced to go on parsing).
        let mut problems: Vec<Problem> = Vec::new();
        for p in reported {
            if !problems.iter().any(|r| covers(&r.key, &p.key)) {
                problems.push(p);
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = match parsed {
            Some(config) => config,
            None => return Err(invalid(path, text, problems)),
        };
        let mut later = config.validate();
        later.extend(config.resolve_secrets(base));
        later.extend(config.resolve_ca_files(base));
        later.retain(|p| !problems.iter().any(|r| covers(&r.key, &p.key)));
        problems.extend(later);
        if !problems.is_empty() {
            return Err(invalid(path, text, problems));
        }
        let mut warnings = config.warn_insecure_urls();
        warnings.extend(secret_file_warnings(&config, base));
        for w in &mut warnings {
            w.position = w.position.or_else(|| key_position(text, &w.key));
        }
        config.warnings = warnings;
        Ok(config)
    }
}

/// Whether a problem about `reported` already covers `key`: the same key or one inside it.
fn covers(reported: &str, key: &str) -> bool {
    key.strip_prefix(reported)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The error for `problems`, each placed in the file and listed in file order (problems
/// without a position last).
fn invalid(path: &Path, text: &str, mut problems: Vec<Problem>) -> ConfigError {
    for p in &mut problems {
        p.position = p.position.or_else(|| key_position(text, &p.key));
    }
    problems.sort_by_key(|p| p.position.map_or((usize::MAX, usize::MAX), |x| x));
    ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn transfer_keys_default_and_read_human_sizes() {
        let c = load(MIN).unwrap();
        assert_eq!(c.tapis.max_concurrent_downloads, 8);
        assert_eq!((c.tapis.bwlimit, c.webodm.bwlimit), (None, None));
        assert_eq!(c.webodm.upload_batch_files, 50);
        assert_eq!(c.webodm.upload_batch_bytes, ByteSize(32 << 20));
        let text = MIN
            .replace(
                "password = \"pw\"\n",
                "password = \"pw\"\nmax_concurrent_downloads = 3\nbwlimit = \"50MiB\"\n",
            )
            .replace(
                "password = \"pw2\"\n",
                "password = \"pw2\"\nbwlimit = 1000000\nupload_batch_files = 1\nupload_batch_bytes = \"8 MB\"\n",
            );
        let c = load(&text).unwrap();
        assert_eq!(c.tapis.max_concurrent_downloads, 3);
        assert_eq!(c.tapis.bwlimit, Some(ByteSize(50 << 20)));
        assert_eq!(c.webodm.bwlimit, Some(ByteSize(1_000_000)));
        assert_eq!(c.webodm.upload_batch_files, 1);
        assert_eq!(c.webodm.upload_batch_bytes, ByteSize(8_000_000));
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
    fn notify_problems_are_reported_together() {
        let text = format!(
            "{MIN}\n[notify]\nemail_to = [\"not an address\"]\nformat = \"slack\"\n\
             smtp_password = \"x\"\nstuck_after = \"0s\"\n"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        for k in [
            "notify.smtp_url",
            "notify.from",
            "notify.email_to",
            "notify.format",
            "notify.stuck_after",
            "notify.smtp_username",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
    }

    #[test]
    fn notify_secrets_resolve_and_the_webhook_path_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smtp-pw"), "s3cret-smtp\n").unwrap();
        std::fs::write(dir.path().join("hook-key"), "s3cret-hook").unwrap();
        let text = format!(
            "{MIN}\n[notify]\nsmtp_url = \"smtps://mail.example.org\"\nsmtp_username = \"u\"\n\
             smtp_password_file = \"smtp-pw\"\nfrom = \"Sync <sync@example.org>\"\n\
             email_to = [\"ops@example.org\"]\nwebhook = \"https://hooks.example.org/T/s3cret-path\"\n\
             webhook_secret_file = \"hook-key\"\n"
        );
        let c = Config::from_toml(&text, &dir.path().join("config.toml")).unwrap();
        let n = &c.notify;
        assert!(n.enabled() && n.email_enabled());
        assert_eq!(
            n.resolved_smtp_password.as_ref().map(|s| s.expose()),
            Some("s3cret-smtp")
        );
        assert_eq!(
            n.resolved_webhook_secret.as_ref().map(|s| s.expose()),
            Some("s3cret-hook")
        );
        let shown = format!("{c:?} {}", toml::to_string(&c).unwrap());
        assert!(!toml::to_string(&c).unwrap().contains("s3cret"), "{shown}");
        assert!(toml::to_string(&c)
            .unwrap()
            .contains("webhook = \"https://hooks.example.org/<redacted>\""));
        assert_eq!(c.webodm.link_base().as_str(), "http://127.0.0.1:8000/");
    }

    #[test]
    fn example_and_demo_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["example.toml", "demo.toml"] {
            let text = std::fs::read_to_string(root.join(name)).unwrap();
            // The example points at files that exist only on a real host: check the schema.
            let (parsed, problems) = parse(&text);
            assert!(problems.is_empty(), "{name}: {problems:?}");
            assert!(parsed.unwrap().validate().is_empty(), "{name}");
        }
    }
}
