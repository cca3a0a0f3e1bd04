//! Arbitrary bytes as Tapis and WebODM answers: every decoder must answer Ok or an error, never
//! panic (the first byte picks a page size, so paging and repeat detection run too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapis_webodm_sync::clients::{tapis, webodm};

fuzz_target!(|data: &[u8]| {
    let (page, body) = match data.split_first() {
        Some((p, rest)) => (usize::from(*p % 8) + 1, rest),
        None => (1, data),
    };
    let _ = tapis::decode_file_listing(body, page);
    let _ = tapis::decode_systems_listing(body, page);
    let _ = webodm::decode_projects(body);
    let _ = webodm::decode_task(body);
    let _ = webodm::decode_upload(body, "IMG_0001.jpg");
});
