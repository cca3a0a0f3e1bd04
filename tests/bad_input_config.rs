//! Bad config files, table-driven: each case must give exactly the expected problem (key,
//! position, message) and nothing else; risky but usable ones give warnings, not errors.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tapis_webodm_sync::config::{Config, ConfigError, Problem};

const MIN: &str = r#"[tapis]
base_url = "https://portals.tapis.io"
username = "svc"
password = "pw"

[webodm]
base_url = "http://127.0.0.1:8000"
username = "sync"
password = "pw2"
"#;

/// A CA certificate (PEM), made once.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

/// A folder with the files the cases point at.
fn files() -> Dir {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    let write = |name: &str, text: &str, mode: u32| {
        let p = path.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("pw", "s3cret\n", 0o600);
    write("pw-open", "s3cret\n", 0o644);
    write("pw-group", "s3cret\n", 0o640);
    write("empty", "\n", 0o600);
    write("ca.pem", &ca_pem(), 0o644);
    write(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        0o644,
    );
    write(
        "key-only.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        0o644,
    );
    write("text.pem", "hello\n", 0o644);
    // A folder: unreadable as a file even for root (these tests may run as root).
    std::fs::create_dir(path.join("unreadable")).unwrap();
    Dir { _tmp: tmp, path }
}

fn load(dir: &Dir, text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, &dir.path.join("config.toml"))
}

fn problems(dir: &Dir, text: &str) -> Vec<Problem> {
    match load(dir, text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Ok(_) => panic!("expected the config to be invalid:\n{text}"),
        Err(e) => panic!("{e}"),
    }
}

fn with_tapis(extra: &str) -> String {
    MIN.replace(
        "password = \"pw\"\n",
        &format!("password = \"pw\"\n{extra}\n"),
    )
}

fn with_webodm(extra: &str) -> String {
    format!("{MIN}{extra}\n")
}

/// (case, config text, key of the one problem, line, fragment of its message)
fn error_cases() -> Vec<(&'static str, String, &'static str, usize, &'static str)> {
    vec![
        (
            "unknown section",
            format!("{MIN}[tapiss]\nx = 1\n"),
            "tapiss",
            10,
            "unknown field `tapiss`",
        ),
        (
            "unknown key",
            with_tapis("usernme = \"x\""),
            "tapis.usernme",
            5,
            "unknown field `usernme`",
        ),
        (
            "wrong type",
            with_tapis("requests_per_second = \"ten\""),
            "tapis.requests_per_second",
            5,
            "invalid type: string",
        ),
        (
            "negative rate",
            with_tapis("requests_per_second = -1"),
            "tapis.requests_per_second",
            5,
            "invalid value",
        ),
        (
            "zero rate",
            with_tapis("requests_per_second = 0"),
            "tapis.requests_per_second",
            5,
            "at least 1",
        ),
        (
            "zero concurrency",
            with_tapis("max_concurrent_requests = 0"),
            "tapis.max_concurrent_requests",
            5,
            "at least 1",
        ),
        (
            "zero uploads",
            with_webodm("max_concurrent_uploads = 0"),
            "webodm.max_concurrent_uploads",
            10,
            "at least 1",
        ),
        (
            "zero downloads",
            with_tapis("max_concurrent_downloads = 0"),
            "tapis.max_concurrent_downloads",
            5,
            "at least 1",
        ),
        (
            "bwlimit not a size",
            with_tapis("bwlimit = \"fast\""),
            "tapis.bwlimit",
            5,
            "`fast` is not a size",
        ),
        (
            "bwlimit with an ambiguous unit",
            with_webodm("bwlimit = \"50M\""),
            "webodm.bwlimit",
            10,
            "ambiguous: say kB or KiB",
        ),
        (
            "bwlimit negative",
            with_tapis("bwlimit = -5"),
            "tapis.bwlimit",
            5,
            "-5 is negative",
        ),
        (
            "bwlimit zero",
            with_webodm("bwlimit = \"0 MiB\""),
            "webodm.bwlimit",
            10,
            "more than 0 bytes per second (leave it out for no limit)",
        ),
        (
            "zero files per upload",
            with_webodm("upload_batch_files = 0"),
            "webodm.upload_batch_files",
            10,
            "at least 1",
        ),
        (
            "zero bytes per upload",
            with_webodm("upload_batch_bytes = 0"),
            "webodm.upload_batch_bytes",
            10,
            "at least 1 byte",
        ),
        (
            "batch bytes of the wrong type",
            with_webodm("upload_batch_bytes = true"),
            "webodm.upload_batch_bytes",
            10,
            "a size like \"50MiB\"",
        ),
        (
            "zero interval",
            format!("{MIN}[sync]\ninterval = \"0s\"\n"),
            "sync.interval",
            11,
            "longer than 0s",
        ),
        (
            "unparsable interval",
            format!("{MIN}[sync]\ninterval = \"soon\"\n"),
            "sync.interval",
            11,
            "",
        ),
        (
            "negative interval",
            format!("{MIN}[sync]\ninterval = -5\n"),
            "sync.interval",
            11,
            "",
        ),
        (
            "zero timeout",
            with_webodm("timeout = \"0s\""),
            "webodm.timeout",
            10,
            "longer than 0s",
        ),
        (
            "retry initial > max",
            format!("{MIN}[retry]\ninitial = \"10m\"\nmax = \"1m\"\n"),
            "retry.initial",
            11,
            "must not be longer",
        ),
        (
            "not a URL",
            MIN.replace("https://portals.tapis.io", "portals dot tapis"),
            "tapis.base_url",
            2,
            "",
        ),
        (
            "ftp URL",
            MIN.replace("http://127.0.0.1:8000", "ftp://127.0.0.1/"),
            "webodm.base_url",
            7,
            "not an http(s) URL",
        ),
        (
            "password and password_file",
            with_tapis("password_file = \"pw\""),
            "tapis.password",
            4,
            "not both",
        ),
        (
            "password file missing",
            MIN.replace("password = \"pw\"", "password_file = \"nope\""),
            "tapis.password_file",
            4,
            "cannot read secret file",
        ),
        (
            "password file unreadable",
            MIN.replace("password = \"pw2\"", "password_file = \"unreadable\""),
            "webodm.password_file",
            9,
            "cannot read secret file",
        ),
        (
            "password file empty",
            MIN.replace("password = \"pw\"", "password_file = \"empty\""),
            "tapis.password_file",
            4,
            "is empty",
        ),
        (
            "empty inline password",
            MIN.replace("password = \"pw2\"", "password = \"\""),
            "webodm.password",
            9,
            "is empty",
        ),
        (
            "token_file and password",
            with_tapis("token_file = \"pw\""),
            "tapis.token_file",
            5,
            "not both",
        ),
        (
            "client key without client_id",
            with_tapis("client_key = \"k\""),
            "tapis.client_id",
            0,
            "client_id` is missing",
        ),
        (
            "undefined ${VAR} in a path",
            MIN.replace(
                "password = \"pw\"",
                "password_file = \"${TWS_NO_SUCH_VAR}/pw\"",
            ),
            "tapis.password_file",
            4,
            "TWS_NO_SUCH_VAR",
        ),
        (
            "ca_file missing",
            with_tapis("ca_file = \"nope.pem\""),
            "tapis.ca_file",
            5,
            "cannot read CA file",
        ),
        (
            "ca_file not base64",
            with_webodm("ca_file = \"junk.pem\""),
            "webodm.ca_file",
            10,
            "not a PEM bundle",
        ),
        (
            "ca_file holds only a key",
            with_tapis("ca_file = \"key-only.pem\""),
            "tapis.ca_file",
            5,
            "no `-----BEGIN CERTIFICATE-----`",
        ),
        (
            "ca_file is plain text",
            with_webodm("ca_file = \"text.pem\""),
            "webodm.ca_file",
            10,
            "no `-----BEGIN CERTIFICATE-----`",
        ),
        (
            "syntax error",
            MIN.replace("username = \"svc\"", "username = \"svc"),
            "",
            3,
            "",
        ),
        (
            "duplicate key",
            with_tapis("username = \"again\""),
            "",
            5,
            "duplicate key",
        ),
        (
            "images_dir escapes",
            format!("{MIN}[layout]\nimages_dir = \"../x\"\n"),
            "layout.images_dir",
            11,
            "without `..`",
        ),
        (
            "extension with a dot",
            format!("{MIN}[layout]\nextensions = [\".jpg\"]\n"),
            "layout.extensions",
            11,
            "without the dot",
        ),
        (
            "system_pattern with (",
            with_tapis("system_pattern = \"a(b\""),
            "tapis.system_pattern",
            5,
            "free of",
        ),
        (
            "falsy task option",
            with_webodm("task_options = [{ name = \"dsm\", value = false }]"),
            "webodm.task_options",
            10,
            "WebODM rejects",
        ),
        (
            "bad permission name",
            format!("{MIN}[access]\npermissions = [\"own\"]\n"),
            "access.permissions[0]",
            11,
            "unknown variant",
        ),
        (
            "results.dir climbing out",
            format!("{MIN}[results]\ndir = \"../shared\"\n"),
            "results.dir",
            11,
            "relative folder inside the flight folder",
        ),
        (
            "results.dir absolute",
            format!("{MIN}[results]\ndir = \"/data/out\"\n"),
            "results.dir",
            11,
            "relative folder",
        ),
        (
            "results.assets with a path",
            format!("{MIN}[results]\nassets = [\"odm/orthophoto.tif\"]\n"),
            "results.assets",
            11,
            "without `/`",
        ),
        (
            "results.assets twice",
            format!("{MIN}[results]\nassets = [\"dsm.tif\", \"dsm.tif\"]\n"),
            "results.assets",
            11,
            "listed twice",
        ),
        (
            "layout.companions with a path",
            format!("{MIN}[layout]\ncompanions = [\"../geo.txt\"]\n"),
            "layout.companions",
            11,
            "without `/`",
        ),
        (
            "processing.no_node_after zero",
            format!("{MIN}[processing]\nno_node_after = \"0s\"\n"),
            "processing.no_node_after",
            11,
            "longer than 0s",
        ),
        (
            "admin.listen not an address",
            format!("{MIN}[admin]\nlisten = \"here\"\n"),
            "admin.listen",
            11,
            "",
        ),
    ]
}

#[test]
fn every_bad_config_names_file_line_and_key() {
    let dir = files();
    std::env::remove_var("TAPIS_WEBODM_SYNC_WEBODM_PASSWORD");
    std::env::remove_var("TAPIS_WEBODM_SYNC_TAPIS_PASSWORD");
    let cases = error_cases();
    let mut failed = Vec::new();
    for (name, text, key, line, fragment) in &cases {
        let p = problems(&dir, text);
        let rendered = load(&dir, text).unwrap_err().to_string();
        let ok = p.len() == 1
            && p[0].key == *key
            && (*line == 0 || p[0].position.map(|x| x.0) == Some(*line))
            && p[0].message.contains(fragment)
            && rendered.contains(&dir.path.join("config.toml").display().to_string());
        if !ok {
            failed.push(format!(
                "{name}: want key {key:?} line {line} {fragment:?}, got {p:?}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = files();
    let text =
        MIN.replace(
            "password = \"pw\"\n",
            "password = \"pw\"\npassword_file = \"pw\"\nrequests_per_second = 0\n",
        )
        .replace(
            "password = \"pw2\"",
            "password_file = \"nope\"\nca_file = \"junk.pem\"",
        ) + "[sync]\ninterval = \"0s\"\nmax_new_projects_per_pass = 0\n";
    let p = problems(&dir, &text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "tapis.requests_per_second",
        "sync.interval",
        "sync.max_new_projects_per_pass",
        "tapis.password",
        "webodm.password_file",
        "webodm.ca_file",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(p.iter().all(|p| p.position.is_some()), "{p:?}");
}

/// The file of issue 10: four problems in two sections, one of each kind.
pub const FOUR_PROBLEMS: &str = r#"[tapis]
base_url = "not a url"
username = "svc"
password = "x"
requests_per_second = -3
colour = "blue"
[webodm]
base_url = "http://127.0.0.1:8000"
username = "u"
password = "p"
[sync]
interval = "five minutes"
"#;

/// (case, config text, every problem expected in file order: key, line (0: no position),
/// fragment of its message)
#[allow(clippy::type_complexity)]
fn mixture_cases() -> Vec<(
    &'static str,
    String,
    Vec<(&'static str, usize, &'static str)>,
)> {
    vec![
        (
            "bad URL, negative rate, unknown key, bad duration",
            FOUR_PROBLEMS.to_string(),
            vec![
                ("tapis.base_url", 2, "relative URL without a base"),
                ("tapis.requests_per_second", 5, "invalid value: integer `-3`"),
                ("tapis.colour", 6, "unknown field `colour`"),
                ("sync.interval", 12, ""),
            ],
        ),
        (
            "one problem in each of several sections",
            format!(
                "{}\n[retry]\nmax = 5\n[log]\nformat = \"xml\"\n[admin]\nlisten = \"here\"\n[colours]\nsky = \"blue\"\n",
                with_webodm("uploads = 3")
            ),
            vec![
                ("webodm.uploads", 10, "unknown field `uploads`"),
                ("retry.max", 13, "invalid type: integer"),
                ("log.format", 15, "unknown variant `xml`"),
                ("admin.listen", 17, ""),
                ("colours", 18, "unknown field `colours`"),
            ],
        ),
        (
            "missing required keys mixed with wrong types",
            "[tapis]\nusername = \"svc\"\npassword = \"pw\"\nrequests_per_second = \"ten\"\n\n[webodm]\nbase_url = \"http://127.0.0.1:8000\"\npassword = \"pw2\"\nmax_concurrent_uploads = -1\n".to_string(),
            vec![
                ("tapis.base_url", 1, "required key is missing"),
                ("tapis.requests_per_second", 4, "invalid type: string"),
                ("webodm.username", 6, "required key is missing"),
                ("webodm.max_concurrent_uploads", 9, "invalid value"),
            ],
        ),
        (
            "a missing section and an unknown key",
            "[tapis]\nbase_url = \"https://portals.tapis.io\"\nusername = \"svc\"\npassword = \"pw\"\nsecret = 1\n".to_string(),
            vec![
                ("tapis.secret", 5, "unknown field `secret`"),
                ("webodm", 0, "section `[webodm]` is missing"),
            ],
        ),
        (
            "an empty file names the two sections, not every key in them",
            String::new(),
            vec![
                ("tapis", 0, "section `[tapis]` is missing"),
                ("webodm", 0, "section `[webodm]` is missing"),
            ],
        ),
        (
            "a required key of the wrong type is reported once",
            MIN.replace("username = \"sync\"", "username = 5"),
            vec![("webodm.username", 8, "invalid type: integer")],
        ),
        (
            "schema, semantic and secret problems together",
            with_tapis("timeout = true\nmax_concurrent_requests = 0")
                .replace("password = \"pw2\"", "password_file = \"nope\""),
            vec![
                ("tapis.timeout", 5, "invalid type: boolean"),
                ("tapis.max_concurrent_requests", 6, "at least 1"),
                ("webodm.password_file", 11, "cannot read secret file"),
            ],
        ),
        (
            "a TOML syntax error alone: nothing else can be known",
            format!("{}\n[sync]\ninterval = \"soon\"\n", with_tapis("colour = \"blue")),
            vec![("", 5, "")],
        ),
    ]
}

#[test]
fn every_problem_of_every_section_is_reported_in_file_order() {
    let dir = files();
    std::env::remove_var("TAPIS_WEBODM_SYNC_WEBODM_PASSWORD");
    std::env::remove_var("TAPIS_WEBODM_SYNC_TAPIS_PASSWORD");
    let cases = mixture_cases();
    let mut failed = Vec::new();
    for (name, text, want) in &cases {
        let got = problems(&dir, text);
        let ok = got.len() == want.len()
            && got.iter().zip(want).all(|(p, (key, line, fragment))| {
                p.key == *key
                    && p.position.map_or(0, |x| x.0) == *line
                    && p.message.contains(fragment)
            });
        if !ok {
            failed.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[test]
fn the_issue_file_gives_line_column_and_key_of_each_problem() {
    let dir = files();
    let err = load(&dir, FOUR_PROBLEMS).unwrap_err().to_string();
    let file = dir.path.join("config.toml").display().to_string();
    assert!(err.contains("(4 problems)"), "{err}");
    for want in [
        format!("{file}:2:12: key `tapis.base_url`: "),
        format!("{file}:5:23: key `tapis.requests_per_second`: "),
        format!("{file}:6:1: key `tapis.colour`: unknown field `colour`"),
        format!("{file}:12:12: key `sync.interval`: "),
    ] {
        assert!(err.contains(&want), "{want:?} not in\n{err}");
    }
}

fn warnings(dir: &Dir, text: &str) -> Vec<String> {
    let c = load(dir, text).unwrap_or_else(|e| panic!("{e}"));
    c.warning_lines(&dir.path.join("config.toml"))
}

#[test]
fn loose_secret_files_warn_with_the_chmod_that_fixes_them() {
    let dir = files();
    let text = MIN
        .replace("password = \"pw\"", "password_file = \"pw-open\"")
        .replace("password = \"pw2\"", "password_file = \"pw-group\"");
    let w = warnings(&dir, &text);
    assert_eq!(w.len(), 2, "{w:#?}");
    let open = dir.path.join("pw-open");
    assert!(w[0].contains(":4:1: key `tapis.password_file`"), "{}", w[0]);
    assert!(w[0].contains("mode 0644"), "{}", w[0]);
    assert!(
        w[0].ends_with(&format!("fix: chmod 600 {}", open.display())),
        "{}",
        w[0]
    );
    assert!(
        w[1].contains("key `webodm.password_file`") && w[1].contains("mode 0640"),
        "{}",
        w[1]
    );
    // The fix works.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        dir.path.join("pw-group"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert!(warnings(&dir, &text).is_empty());
    // Token and client key files too.
    let text = MIN
        .replace("password = \"pw\"", "token_file = \"pw-open\"")
        .replace("username = \"svc\"\n", "");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o604)).unwrap();
    let w = warnings(&dir, &text);
    assert!(
        w.len() == 1 && w[0].contains("tapis.token_file") && w[0].contains("mode 0604"),
        "{w:?}"
    );
    let text = with_tapis("client_id = \"c\"\nclient_key_file = \"pw-open\"");
    let w = warnings(&dir, &text);
    assert!(
        w.len() == 1 && w[0].contains("tapis.client_key_file"),
        "{w:?}"
    );
}

#[test]
fn paths_with_spaces_get_a_quoted_chmod() {
    let dir = files();
    let p = dir.path.join("my pw");
    std::fs::write(&p, "x").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
    let w = warnings(
        &dir,
        &MIN.replace("password = \"pw\"", "password_file = \"my pw\""),
    );
    assert!(
        w[0].ends_with(&format!("fix: chmod 600 '{}'", p.display())),
        "{w:?}"
    );
}

#[test]
fn plain_http_warns_unless_loopback() {
    let dir = files();
    for (url, warns) in [
        ("http://127.0.0.1:8000", false),
        ("http://localhost:8000", false),
        ("http://[::1]:8000", false),
        ("http://127.8.9.10/", false),
        ("https://webodm.example.org", false),
        ("http://webodm.example.org", true),
        ("http://10.0.0.5:8000", true),
        ("http://localhost.evil.example/", true),
    ] {
        let w = warnings(&dir, &MIN.replace("http://127.0.0.1:8000", url));
        assert_eq!(!w.is_empty(), warns, "{url}: {w:?}");
        if warns {
            assert!(
                w[0].contains(":7:1: key `webodm.base_url`") && w[0].contains("use https://"),
                "{w:?}"
            );
        }
    }
    let w = warnings(
        &dir,
        &MIN.replace("https://portals.tapis.io", "http://portals.tapis.io"),
    );
    assert!(w.len() == 1 && w[0].contains("tapis.base_url"), "{w:?}");
}

#[test]
fn ca_files_are_read_at_load() {
    let dir = files();
    let c = load(&dir, &with_tapis("ca_file = \"ca.pem\"")).unwrap();
    assert_eq!(c.tapis.ca.count, 1);
    assert!(c.webodm.ca.pem.is_empty());
    // Shown by path in check-config's output, never as PEM.
    let shown = toml::to_string(&c).unwrap();
    assert!(shown.contains("ca_file = \"ca.pem\""), "{shown}");
    assert!(!shown.contains("BEGIN CERTIFICATE"), "{shown}");
}

#[test]
fn secrets_never_show() {
    let dir = files();
    let c = load(
        &dir,
        &MIN.replace("password = \"pw\"", "password_file = \"pw\""),
    )
    .unwrap();
    let shown = format!("{c:?}\n{}", toml::to_string(&c).unwrap());
    assert!(
        !shown.contains("s3cret") && !shown.contains("pw2"),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"));
    let _ = Path::new("");
}
