//! Property tests: config parsing and listing parsing never panic on arbitrary input, and valid
//! configs survive a round trip through their printed (redacted) form.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

use tapis_webodm_sync::clients::tapis::{decode_file_listing, decode_systems_listing};
use tapis_webodm_sync::clients::webodm::{decode_projects, decode_task, decode_upload};
use tapis_webodm_sync::config::Config;

/// Arbitrary JSON, biased towards the keys the listings use.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("result".to_string()),
        Just("name".to_string()),
        Just("path".to_string()),
        Just("type".to_string()),
        Just("size".to_string()),
        Just("id".to_string()),
        Just("tags".to_string()),
        Just("tasks".to_string()),
        Just("uploaded".to_string()),
        Just("lastModified".to_string()),
        Just("enabled".to_string()),
        Just("project".to_string()),
        Just("partial".to_string()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("file".to_string()),
            Just("dir".to_string()),
            any::<String>()
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A listing-shaped body: `{"result": [entries…]}` with arbitrary entries.
fn listing() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(json(), 0..8)
        .prop_map(|items| serde_json::to_vec(&serde_json::json!({ "result": items })).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn listings_never_panic_on_arbitrary_json(v in json(), body in listing(), page in 1usize..4) {
        let raw = serde_json::to_vec(&v).unwrap();
        for b in [&raw, &body] {
            let _ = decode_file_listing(b, page);
            let _ = decode_systems_listing(b, page);
            let _ = decode_projects(b);
            let _ = decode_task(b);
            let _ = decode_upload(b, "IMG_0001.jpg");
        }
    }

    #[test]
    fn listings_never_panic_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_file_listing(&b, 1000);
        let _ = decode_systems_listing(&b, 100);
        let _ = decode_projects(&b);
        let _ = decode_upload(&b, "x.jpg");
    }

    #[test]
    fn config_parsing_never_panics(text in toml_ish()) {
        let _ = Config::from_toml(&text, Path::new("/nonexistent/config.toml"));
    }

    #[test]
    fn valid_configs_round_trip(
        rps in 1u32..10_000,
        conc in 1usize..64,
        uploads in 1usize..32,
        secs in 1u64..100_000,
        user in "[a-z][a-z0-9_.-]{0,20}",
        pattern in "[a-z.]{1,10}\\*?",
        dir in "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
        json_logs in any::<bool>(),
    ) {
        // Secrets come from the environment here, so the printed form (which never holds them)
        // can be read back.
        std::env::set_var("TAPIS_WEBODM_SYNC_TAPIS_PASSWORD", "pw-from-env");
        std::env::set_var("TAPIS_WEBODM_SYNC_WEBODM_PASSWORD", "pw2-from-env");
        let text = format!(
            "[tapis]\nbase_url = \"https://t.example.org/\"\nusername = \"{user}\"\n\
             system_pattern = \"{pattern}\"\nrequests_per_second = {rps}\nmax_concurrent_requests = {conc}\n\
             [webodm]\nbase_url = \"http://127.0.0.1:8000/\"\nusername = \"{user}\"\nmax_concurrent_uploads = {uploads}\n\
             [layout]\nimages_dir = \"{dir}\"\n[sync]\ninterval = \"{secs}s\"\nsettle = \"{secs}ms\"\n\
             [log]\nformat = \"{}\"\n",
            if json_logs { "json" } else { "text" }
        );
        let path = Path::new("/nonexistent/config.toml");
        let first = Config::from_toml(&text, path).unwrap();
        let printed = toml::to_string(&first).unwrap();
        let second = Config::from_toml(&printed, path).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        prop_assert_eq!(&printed, &toml::to_string(&second).unwrap());
        prop_assert_eq!(first.tapis.requests_per_second, rps);
        prop_assert_eq!(second.sync.interval, std::time::Duration::from_secs(secs));
        prop_assert!(!printed.contains("pw-from-env") && !printed.contains("pw2-from-env"));
    }
}

/// Text made of TOML fragments: sections, the daemon's keys, values of every type, and noise.
fn toml_ish() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("[tapis]"),
        Just("[webodm]"),
        Just("[sync]"),
        Just("[layout]"),
        Just("[retry]"),
        Just("[access]"),
        Just("[admin]"),
        Just("[log]"),
        Just("[[tapis]]"),
        Just("[tapis.x]"),
    ]
    .prop_map(str::to_string);
    let key = prop_oneof![
        Just("base_url"),
        Just("username"),
        Just("password"),
        Just("password_file"),
        Just("token_file"),
        Just("client_id"),
        Just("client_key"),
        Just("ca_file"),
        Just("requests_per_second"),
        Just("max_concurrent_uploads"),
        Just("interval"),
        Just("settle"),
        Just("images_dir"),
        Just("extensions"),
        Just("task_options"),
        Just("listen"),
        Just("permissions"),
        Just("initial"),
        Just("max"),
    ];
    let value = prop_oneof![
        Just("\"https://h.example/\"".to_string()),
        Just("\"http://127.0.0.1:8000\"".to_string()),
        Just("\"${HOME}/x\"".to_string()),
        Just("\"${\"".to_string()),
        Just("\"5m\"".to_string()),
        Just("[\"jpg\"]".to_string()),
        Just("[{ name = \"a\", value = 0 }]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "\"[^\"\\\\\\n]{0,12}\"",
        "[ -~]{0,12}",
    ];
    let line = prop_oneof![
        section,
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        "[ -~é\t]{0,20}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}
