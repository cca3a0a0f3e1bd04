//! Fault injection: which faults the simulator injects ([`Faults`], with the simulated
//! processing's speed and failures) and the seeded dice that decide, per request, whether one
//! happens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Stats route of Tapis file downloads.
pub(crate) const DOWNLOAD_ROUTE: &str = "GET /v3/files/content/{system}/{path}";
/// Stats route of WebODM asset downloads.
pub(crate) const ASSET_ROUTE: &str = "GET /api/projects/{project}/tasks/{task}/download/{asset}";
/// Stats route of Tapis uploads.
pub(crate) const TAPIS_UPLOAD_ROUTE: &str = "POST /v3/files/ops/{system}/{path}";
/// Stats route of WebODM image uploads.
pub(crate) const UPLOAD_ROUTE: &str = "POST /api/projects/{project}/tasks/{task}/upload/";
/// Stats routes of the token endpoints.
pub(crate) const TOKEN_ROUTES: [&str; 2] = ["POST /v3/oauth2/tokens", "POST /api/token-auth/"];

/// Faults the simulator injects into both APIs; the default injects none.
///
/// Rates are probabilities (0 = never, 1 = always) drawn per request from an RNG seeded with the
/// dataset's seed, so a run is reproducible given the seed and the order of requests. The token
/// endpoints (`POST /v3/oauth2/tokens`, `POST /api/token-auth/`) are spared by `error_rate`,
/// `error_after_rate`, `rate_429` and `reset_rate` unless `error_rate_tokens` is set; an entry
/// for them in `route_rates` or `route_after_rates` applies regardless. Only known API routes
/// get faults (unknown URLs answer their usual 404).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of requests answered 500, 502 or 503 before the handler runs (nothing happened).
    pub error_rate: f64,
    /// Whether the token endpoints get the blanket rates too (`error_rate`, `error_after_rate`,
    /// `rate_429`, `reset_rate`).
    pub error_rate_tokens: bool,
    /// Share of requests handled (the side effect happens: project or task created, upload
    /// stored, commit done) and then answered 502 anyway.
    pub error_after_rate: f64,
    /// `error_rate` per stats route (`"POST /api/projects/"`), overriding the blanket rate.
    pub route_rates: BTreeMap<String, f64>,
    /// `error_after_rate` per stats route, overriding the blanket rate.
    pub route_after_rates: BTreeMap<String, f64>,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub rate_429: f64,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
    /// Delay added before every API response (token endpoints included), in milliseconds.
    pub latency_ms: u64,
    /// Share of requests whose connection is reset: downloads (Tapis content, WebODM assets)
    /// stream part of the body first, WebODM uploads read part of the request body first
    /// (nothing is stored), Tapis uploads read part of it too (and keep the partial file, as a
    /// write over SSH does), other routes answer nothing.
    pub reset_rate: f64,
    /// Share of downloads (Tapis content, WebODM assets) answered 200 whose body ends before
    /// the end of the file: cleanly for Tapis (no Content-Length), short of the announced
    /// Content-Length for WebODM.
    pub truncate_rate: f64,
    /// Lifetime of the Tapis access tokens and WebODM tokens issued from now on (`None`: the
    /// servers' defaults, 4 h and 6 h, or what `Sim::set_token_ttl` and
    /// `Sim::set_webodm_token_ttl` set).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Option<Duration>,
    /// Share of Tapis calls with a valid token that find it revoked: HTTP 500 "Token is
    /// revoked." for this and every later use of that token.
    pub revoke_rate: f64,
    /// Whether the Tapis refresh grant fails (400), so clients must use the password grant.
    pub refresh_fails: bool,
    /// Time from a commit (or `restart/`) to COMPLETED or FAILED, in milliseconds, read when
    /// the attempt starts; 0 = no processing node: `status` stays null, and waiting tasks
    /// start once this is set non-zero again.
    pub process_ms: u64,
    /// Share of tasks whose first processing attempt FAILS (a later commit or restart
    /// completes), decided by the seed, the project name and the task name.
    pub fail_processing_rate: f64,
    /// API paths (as sent, percent-encoded) that are sick: every request whose path starts
    /// with one of these answers 502 with the proxy's HTML page, like a storage system in
    /// maintenance behind the gateway.
    pub broken_paths: Vec<String>,
    /// The systems listing leaves out `isPublic` and `sharedWithUsers` even when selected, as
    /// a Tapis older than tapis-systems 1.3 would: clients must ask `GET /v3/systems/share/{id}`.
    pub listing_without_shares: bool,
    /// A WebODM asset download sends the first half of its body, then pauses this long (in
    /// milliseconds) before the rest: a result transfer reliably under way, for kill tests.
    /// 0 = no pause.
    pub asset_stall_ms: u64,
    /// Every non-empty WebODM asset is about this many bytes (±25 %) instead of its typical
    /// size (e.g. 0.4 MB for `orthophoto.tif`): result transfers big enough to time. Read at
    /// each asset download and by the report, so set it before tasks complete and keep it.
    /// `None`: the typical sizes.
    pub asset_size: Option<u64>,
    /// Time each WebODM image upload request takes besides reading its body, in milliseconds
    /// (added before the answer): the real server's work per request (authentication, task
    /// lookup, saving), which batching several images per request saves. 0 = none.
    pub upload_request_ms: u64,
    /// Time added per file of an upload request, in milliseconds (on top of
    /// `upload_request_ms`). 0 = none.
    pub upload_file_ms: u64,
    /// Bytes per second at which an upload request's files are taken in, as by a server that
    /// parses and saves each file: the request is answered no sooner than its bytes / this
    /// rate after it came in (reading the body counts), plus `upload_request_ms`. 0 = as fast
    /// as the simulator reads them.
    pub upload_bytes_per_sec: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_rate_tokens: false,
            error_after_rate: 0.0,
            route_rates: BTreeMap::new(),
            route_after_rates: BTreeMap::new(),
            rate_429: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            reset_rate: 0.0,
            truncate_rate: 0.0,
            token_ttl: None,
            revoke_rate: 0.0,
            refresh_fails: false,
            process_ms: 1500,
            fail_processing_rate: 0.0,
            broken_paths: Vec::new(),
            listing_without_shares: false,
            asset_stall_ms: 0,
            asset_size: None,
            upload_request_ms: 0,
            upload_file_ms: 0,
            upload_bytes_per_sec: 0,
        }
    }
}

/// The fault chosen for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer this 5xx instead of handling the request.
    Error(StatusCode),
    /// Answer 429 instead of handling the request.
    Throttle,
    /// Reset the connection (downloads and uploads part-way).
    Reset,
    /// Download: end the body early, cleanly.
    Truncate,
    /// Handle the request, then answer 502.
    ErrorAfter,
}

/// A download cut short: after this share of the file's bytes (see [`Cut::limit`]).
#[derive(Clone, Debug)]
pub(crate) struct Cut {
    /// Where to cut, as a share of the file's size, in `[0, 1)`.
    pub share: f64,
    /// `Some`: reset the connection after the cut; `None`: end the body cleanly.
    pub reset: Option<super::conn::Reset>,
}

impl Cut {
    /// Bytes to send of a file of `size` bytes: at least one and fewer than all when the file
    /// has two bytes or more.
    pub fn limit(&self, size: u64) -> u64 {
        if size < 2 {
            return 0;
        }
        ((size as f64 * self.share) as u64).clamp(1, size - 1)
    }
}

/// The faults in force and the dice.
#[derive(Debug)]
pub(crate) struct Injector {
    faults: Mutex<Arc<Faults>>,
    rng: Mutex<StdRng>,
}

impl Injector {
    /// Injects `faults`, with dice seeded by `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        Injector {
            faults: Mutex::new(Arc::new(faults)),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5EED_FA17)),
        }
    }

    /// The faults in force.
    pub fn get(&self) -> Arc<Faults> {
        Arc::clone(&self.faults.lock().expect("faults lock"))
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = Arc::new(faults);
    }

    /// True with probability `p` (no draw when `p` is 0 or 1).
    pub fn roll(&self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        self.rng.lock().expect("rng lock").random::<f64>() < p
    }

    /// A uniform share in `[0, 1)`.
    pub fn share(&self) -> f64 {
        self.rng.lock().expect("rng lock").random::<f64>()
    }

    /// The fault for a request to stats route `route` (`"<METHOD> <template>"`), if any.
    pub fn decide(&self, f: &Faults, route: &str) -> Option<Fault> {
        let spared = TOKEN_ROUTES.contains(&route) && !f.error_rate_tokens;
        let blanket = |rate: f64| if spared { 0.0 } else { rate };
        let error = f
            .route_rates
            .get(route)
            .copied()
            .unwrap_or(blanket(f.error_rate));
        if self.roll(error) {
            let codes = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ];
            let i = self
                .rng
                .lock()
                .expect("rng lock")
                .random_range(0..codes.len());
            return Some(Fault::Error(codes[i]));
        }
        if self.roll(blanket(f.rate_429)) {
            return Some(Fault::Throttle);
        }
        if self.roll(blanket(f.reset_rate)) {
            return Some(Fault::Reset);
        }
        if (route == DOWNLOAD_ROUTE || route == ASSET_ROUTE) && self.roll(f.truncate_rate) {
            return Some(Fault::Truncate);
        }
        let after = f
            .route_after_rates
            .get(route)
            .copied()
            .unwrap_or(blanket(f.error_after_rate));
        self.roll(after).then_some(Fault::ErrorAfter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults() {
        let f = Faults {
            error_rate: 0.3,
            rate_429: 0.3,
            ..Faults::default()
        };
        let run = || {
            let inj = Injector::new(9, f.clone());
            (0..200)
                .map(|_| inj.decide(&f, "GET /v3/systems"))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().any(Option::is_none));
        assert!(a.iter().any(|x| matches!(x, Some(Fault::Error(_)))));
        assert!(a.contains(&Some(Fault::Throttle)));
    }

    #[test]
    fn tokens_spared_unless_asked() {
        let mut f = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        let inj = Injector::new(1, f.clone());
        assert_eq!(inj.decide(&f, "POST /v3/oauth2/tokens"), None);
        f.route_rates.insert("POST /api/token-auth/".into(), 1.0);
        assert!(matches!(
            inj.decide(&f, "POST /api/token-auth/"),
            Some(Fault::Error(_))
        ));
        f.error_rate_tokens = true;
        assert!(matches!(
            inj.decide(&f, "POST /v3/oauth2/tokens"),
            Some(Fault::Error(_))
        ));
    }

    #[test]
    fn cut_keeps_some_but_not_all() {
        let cut = |share| Cut { share, reset: None };
        assert_eq!(cut(0.0).limit(1000), 1);
        assert_eq!(cut(0.5).limit(1000), 500);
        assert_eq!(cut(0.9999).limit(1000), 999);
        assert_eq!(cut(0.5).limit(1), 0);
    }
}
