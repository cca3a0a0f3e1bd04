//! Arbitrary text as a config file: `Config::from_toml` must answer Ok or a list of problems,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            tapis_webodm_sync::config::Config::from_toml(text, Path::new("/nonexistent/c.toml"));
    }
});
