//! What the Tapis and WebODM clients share: the per-service HTTP plumbing (user agent,
//! timeouts, the two lanes — metadata requests under a rate limit and a concurrency cap,
//! transfers under a concurrency cap of their own and an optional byte-rate cap — and their
//! counters), JSON decoding that explains a bad answer, token caching, and byte streams.
//! Errors and their classes are in [`super::error`], the retry policy in [`super::retry`],
//! the byte-rate cap in `bandwidth.rs`.
//!
//! Nothing here knows about flights; nothing here ever prints a token or a password: request
//! URLs are shown by path only (no query string), response bodies are cut to a short snippet
//! with anything shaped like a JWT blanked out, and credentials travel in headers marked
//! sensitive.

use std::error::Error as _;
use std::future::Future;
use std::num::{NonZeroU32, NonZeroU64};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::config::{CaBundle, RetryConfig, Secret};

use super::bandwidth::Bandwidth;
use super::error::with_causes;
pub use super::error::ApiError;
use super::retry::parse_retry_after;
pub use super::retry::RetryPolicy;

/// A response body as a stream of chunks, as returned by a download and taken by an upload.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send>>;

/// Longest part of a response body quoted in an error.
const SNIPPET_CHARS: usize = 300;
/// Most bytes of an error body read to make the snippet.
const SNIPPET_READ: usize = 4096;
/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens are renewed when less than this (or a quarter of their lifetime) remains.
const RENEW_AHEAD: Duration = Duration::from_secs(300);

/// Replaces anything shaped like a JWT (`eyJ…`) with `<redacted>`.
pub(crate) fn redact_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("eyJ") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(tail.len());
        out.push_str("<redacted>");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The start of a body for an error message: whitespace collapsed, JWTs blanked, ≤ 300 chars.
pub(crate) fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let collapsed = redact_jwts(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    if collapsed.chars().count() <= SNIPPET_CHARS {
        collapsed
    } else {
        let mut cut: String = collapsed.chars().take(SNIPPET_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), read without checking the signature.
pub(crate) fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match &claims["exp"] {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        _ => None,
    }
}

/// How long before expiry a token of this lifetime is renewed: min(5 min, lifetime / 4).
fn renew_margin(lifetime: Duration) -> Duration {
    RENEW_AHEAD.min(lifetime / 4)
}

/// A session token and when to renew it.
pub(crate) struct CachedToken {
    /// The token itself.
    pub(crate) token: Secret,
    /// When it should be replaced; `None` when its lifetime is unknown.
    renew_at: Option<Instant>,
}

impl CachedToken {
    /// Caches a token that lives `lifetime` from now, or until its JWT `exp` claim when the
    /// lifetime is not given.
    pub(crate) fn new(token: Secret, lifetime: Option<Duration>) -> Self {
        let lifetime = lifetime.or_else(|| {
            let exp = UNIX_EPOCH + Duration::from_secs(jwt_exp(token.expose())?);
            Some(
                exp.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            )
        });
        let renew_at = lifetime.map(|l| Instant::now() + (l - renew_margin(l)));
        CachedToken { token, renew_at }
    }

    /// Whether the token can still be used without renewing it first.
    pub(crate) fn is_fresh(&self) -> bool {
        self.renew_at.is_none_or(|t| Instant::now() < t)
    }
}

/// A header value holding a credential, marked sensitive so it is never logged by the stack.
pub(crate) fn secret_header(
    service: &'static str,
    prefix: &str,
    secret: &Secret,
) -> Result<HeaderValue, ApiError> {
    let mut value =
        HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).map_err(|_| {
            ApiError::Auth {
                service,
                detail: "the token contains characters not allowed in an HTTP header".into(),
            }
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A successful response, holding its slot of the service's concurrency cap until the body
/// has been read (or the body stream is dropped).
pub(crate) struct Reply {
    resp: Response,
    permit: OwnedSemaphorePermit,
    service: &'static str,
    op: String,
    /// The service's byte-rate cap, for a transfer's body.
    bandwidth: Option<Arc<Bandwidth>>,
}

impl Reply {
    /// The response's `Content-Type`, if it has a readable one.
    pub(crate) fn content_type(&self) -> Option<&str> {
        self.resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// The `Content-Length` header as sent (header names are case-insensitive), if readable.
    /// Unlike reqwest's `content_length()`, this reads the header itself, so it also works
    /// for a `HEAD` answer, whose body is empty.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.resp
            .headers()
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The service and the request (`GET /path`), for error messages.
    pub(crate) fn op(&self) -> (&'static str, &str) {
        (self.service, &self.op)
    }

    /// Reads the whole body as JSON. A body that is not the JSON expected (HTML, plain text,
    /// empty, truncated, wrong shape) is an [`ApiError::Decode`] that names the content type
    /// and quotes the start of the body.
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let content_type = self.content_type().unwrap_or("none").to_string();
        let (service, op) = (self.service, self.op);
        let bytes = self
            .resp
            .bytes()
            .await
            .map_err(|e| transport(service, &op, "reading the body", e))?;
        drop(self.permit);
        decode_json(service, op, &content_type, &bytes)
    }

    /// Refuses a `text/html` body where file content was expected (an error or login page
    /// answered with 200 by a proxy): an [`ApiError::Decode`] quoting its start.
    pub(crate) async fn refuse_html(self) -> Result<Reply, ApiError> {
        let html = self
            .content_type()
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
        if !html {
            return Ok(self);
        }
        let (service, op) = (self.service, self.op.clone());
        let body = read_snippet(self.resp).await;
        Err(ApiError::Decode {
            service,
            op,
            detail: format!(
                "expected file content, got an HTML page (content-type text/html): {body}"
            ),
        })
    }

    /// The body as a stream of chunks (under the service's `bwlimit` when this was a
    /// transfer); the concurrency slot is released when it is dropped.
    pub(crate) fn into_stream(self) -> ByteStream {
        let (service, op, permit) = (self.service, self.op, self.permit);
        let body: ByteStream = Box::pin(self.resp.bytes_stream().map(move |chunk| {
            let _slot = &permit;
            chunk.map_err(|e| transport(service, &op, "reading the body", e))
        }));
        match &self.bandwidth {
            Some(cap) => cap.throttle(body),
            None => body,
        }
    }
}

/// Decodes a JSON body, or explains why it is not the JSON expected.
pub(crate) fn decode_json<T: DeserializeOwned>(
    service: &'static str,
    op: String,
    content_type: &str,
    bytes: &[u8],
) -> Result<T, ApiError> {
    let fail = |what: String| ApiError::Decode {
        service,
        op: op.clone(),
        detail: what,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(format!(
            "empty body where JSON was expected (content-type {content_type})"
        )));
    }
    let describe = |inner: &serde_json::Error, at: String| {
        let at = if at == "." || at.is_empty() {
            String::new()
        } else {
            format!(" at `{at}`")
        };
        // serde_json reports some type mismatches (e.g. a number for an enum) as syntax
        // errors: whether the body is JSON at all decides.
        let what = if (inner.is_syntax() || inner.is_eof())
            && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err()
        {
            "not valid JSON"
        } else {
            "JSON of the wrong shape"
        };
        fail(format!(
            "{what}{at}: {} (content-type {content_type}; body starts: {})",
            redact_jwts(&inner.to_string()),
            snippet(&bytes[..bytes.len().min(SNIPPET_READ)])
        ))
    };
    // The fast path; the path of a failure is worked out only when there is one.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => de
            .end()
            .map(|()| v)
            .map_err(|e| describe(&e, String::new())),
        Err(e) => Err(describe(e.inner(), e.path().to_string())),
    }
}

/// The failure of a streamed request body, when that is what stopped the request: a Tapis
/// download feeding a WebODM upload that was cut short, reset or overlong is that download's
/// error (its service and class), not a WebODM transport failure.
fn body_failure(e: &reqwest::Error) -> Option<ApiError> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(api) = s.downcast_ref::<ApiError>() {
            return Some(api.clone());
        }
        source = s.source();
    }
    None
}

/// Turns a reqwest failure into [`ApiError::Transport`], with its causes and without its URL.
fn transport(service: &'static str, op: &str, doing: &str, e: reqwest::Error) -> ApiError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut detail = format!("{doing}: {}", with_causes(&e));
    if timeout {
        detail.push_str(" (timed out)");
    }
    ApiError::Transport {
        service,
        op: op.to_string(),
        detail: redact_jwts(&detail),
    }
}

/// Which limits a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Metadata (listings, logins, lookups, creates, commits): a request slot and a token of the
    /// rate limiter.
    Api,
    /// A file's bytes (a Tapis download, a WebODM image upload): a transfer slot only, never
    /// the rate limiter; its body moves under the service's `bwlimit`. Transfers and metadata
    /// requests have separate slots, so a transfer waiting for a slot never holds up a listing.
    Transfer,
}

/// A service's politeness limits (see [`Lane`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Metadata requests per second (bursts of a fifth of it).
    pub(crate) requests_per_second: u32,
    /// Metadata requests at once.
    pub(crate) max_requests: usize,
    /// Transfers at once.
    pub(crate) max_transfers: usize,
    /// Bytes per second of all transfers together; `None`: no cap.
    pub(crate) bwlimit: Option<u64>,
}

/// Requests sent so far by one service, by [`Lane`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Metadata requests, each of which took a token of the rate limiter (logins and retries
    /// included).
    pub rate_limited: u64,
    /// Transfers (Tapis downloads, WebODM image uploads), none of which waited for the rate
    /// limiter.
    pub transfers: u64,
}

impl RequestCounts {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.rate_limited + self.transfers
    }
}

/// One remote service: its HTTP client, politeness limits, request counters and retry policy.
pub(crate) struct Service {
    name: &'static str,
    base: Url,
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    slots: Arc<Semaphore>,
    transfer_slots: Arc<Semaphore>,
    bandwidth: Option<Arc<Bandwidth>>,
    rate_limited: AtomicU64,
    transfers: AtomicU64,
    policy: RetryPolicy,
}

impl Service {
    /// Sets up a service at `base` (`http` or `https`) with `limits`, and `timeout` of silence
    /// on a connection.
    pub(crate) fn new(
        name: &'static str,
        base: &Url,
        limits: Limits,
        timeout: Duration,
        retry: &RetryConfig,
        ca: &CaBundle,
    ) -> Result<Self, ApiError> {
        let setup = |detail: String| ApiError::Setup {
            service: name,
            detail,
        };
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(setup(format!(
                "base URL `{base}` must be an http:// or https:// URL"
            )));
        }
        let rps = NonZeroU32::new(limits.requests_per_second)
            .ok_or_else(|| setup("requests_per_second is 0".into()))?;
        let bandwidth = match limits.bwlimit {
            None => None,
            Some(bytes) => Some(Bandwidth::new(
                NonZeroU64::new(bytes).ok_or_else(|| setup("bwlimit is 0".into()))?,
            )),
        };
        let burst = NonZeroU32::new((rps.get() / 5).max(1)).unwrap_or(NonZeroU32::MIN);
        // rustls, verifying against the OS trust store (rustls-platform-verifier) plus the
        // service's `ca_file`; there is deliberately no way to turn verification off.
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tapis-webodm-sync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(timeout)
            .tls_backend_rustls();
        if !ca.pem.is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(&ca.pem)
                .map_err(|e| setup(format!("ca_file: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        Ok(Service {
            name,
            base: base.clone(),
            client,
            limiter: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)),
            slots: Arc::new(Semaphore::new(limits.max_requests.max(1))),
            transfer_slots: Arc::new(Semaphore::new(limits.max_transfers.max(1))),
            bandwidth,
            rate_limited: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
            policy: RetryPolicy::new(retry),
        })
    }

    /// The base URL with `segments` appended, each percent-encoded on its own (a segment may
    /// hold spaces, `#`, `?`, `%`, `/` or non-ASCII), plus a trailing slash when asked.
    pub(crate) fn url(&self, segments: &[&str], trailing_slash: bool) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            // `new` checked that the base URL can have a path.
            let mut path = url
                .path_segments_mut()
                .expect("base URL checked in Service::new");
            path.pop_if_empty();
            path.extend(segments);
            if trailing_slash {
                path.push("");
            }
        }
        url
    }

    /// Starts a request.
    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends one metadata request ([`Lane::Api`]).
    pub(crate) async fn send(&self, req: RequestBuilder) -> Result<Reply, ApiError> {
        self.send_on(Lane::Api, req).await
    }

    /// Sends one request on `lane`: waits for the lane's slot (and, for [`Lane::Api`], the rate
    /// limiter), counts it, and turns a non-2xx answer into [`ApiError::Status`].
    pub(crate) async fn send_on(&self, lane: Lane, req: RequestBuilder) -> Result<Reply, ApiError> {
        let req = req.build().map_err(|e| ApiError::Setup {
            service: self.name,
            detail: format!("cannot build a request: {}", e.without_url()),
        })?;
        let op = format!("{} {}", req.method(), req.url().path());
        let slots = match lane {
            Lane::Api => &self.slots,
            Lane::Transfer => &self.transfer_slots,
        };
        let permit = Arc::clone(slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match lane {
            Lane::Api => {
                self.limiter.until_ready().await;
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            Lane::Transfer => {
                self.transfers.fetch_add(1, Ordering::Relaxed);
            }
        }
        let resp = self.client.execute(req).await;
        crate::metrics::request(self.name, resp.as_ref().ok().map(|r| r.status().as_u16()));
        let resp = resp.map_err(|e| {
            body_failure(&e).unwrap_or_else(|| transport(self.name, &op, "sending the request", e))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Reply {
                resp,
                permit,
                service: self.name,
                op,
                bandwidth: (lane == Lane::Transfer)
                    .then(|| self.bandwidth.clone())
                    .flatten(),
            });
        }
        let retry_after = match status.as_u16() {
            429 | 503 => resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
            _ => None,
        };
        let body = read_snippet(resp).await;
        drop(permit);
        Err(ApiError::Status {
            service: self.name,
            op,
            status: status.as_u16(),
            body,
            retry_after,
        })
    }

    /// Runs an idempotent operation with this service's [`RetryPolicy`].
    pub(crate) async fn retry<T, F, Fut>(&self, op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.policy.run(self.name, op).await
    }

    /// `body` under the service's `bwlimit` (unchanged when there is none): for the file
    /// bytes a transfer sends.
    pub(crate) fn throttle(&self, body: ByteStream) -> ByteStream {
        match &self.bandwidth {
            Some(cap) => cap.throttle(body),
            None => body,
        }
    }

    /// HTTP requests sent so far by lane, retries and logins included.
    pub(crate) fn counts(&self) -> RequestCounts {
        RequestCounts {
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            transfers: self.transfers.load(Ordering::Relaxed),
        }
    }
}

/// Reads at most a few KiB of an error body and makes a snippet of it.
async fn read_snippet(mut resp: Response) -> String {
    let mut raw = Vec::new();
    while raw.len() < SNIPPET_READ {
        match resp.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            _ => break,
        }
    }
    snippet(&raw)
}

/// Wraps a body so that it fails when it does not carry exactly `expected` bytes:
/// [`ApiError::Overlong`] as soon as more arrive, [`ApiError::Truncated`] at its end when fewer
/// came. `what` names the body in those errors (e.g. the system and path).
pub fn verify_length(stream: ByteStream, expected: u64, what: String) -> ByteStream {
    Box::pin(LengthChecked {
        inner: stream,
        expected,
        got: 0,
        what,
        done: false,
    })
}

struct LengthChecked {
    inner: ByteStream,
    expected: u64,
    got: u64,
    what: String,
    done: bool,
}

impl Stream for LengthChecked {
    type Item = Result<Bytes, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let (expected, got) = (self.expected, self.got);
        Poll::Ready(match item {
            Some(Ok(chunk)) => {
                let got = got + chunk.len() as u64;
                self.got = got;
                if got > expected {
                    self.done = true;
                    let what = self.what.clone();
                    Some(Err(ApiError::Overlong {
                        what,
                        expected,
                        got,
                    }))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                (got < expected).then(|| {
                    Err(ApiError::Truncated {
                        what: self.what.clone(),
                        expected,
                        got,
                    })
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn status(code: u16, body: &str) -> ApiError {
        ApiError::Status {
            service: "Tapis",
            op: "GET /v3/files/ops/sys/a".into(),
            status: code,
            body: body.into(),
            retry_after: None,
        }
    }

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            enc(br#"{"alg":"HS256","typ":"JWT"}"#),
            enc(claims.to_string().as_bytes()),
            enc(b"sig")
        )
    }

    #[test]
    fn jwt_exp_is_read_without_checking_the_signature() {
        assert_eq!(
            jwt_exp(&jwt(serde_json::json!({"exp": 1_900_000_000u64}))),
            Some(1_900_000_000)
        );
        assert_eq!(jwt_exp(&jwt(serde_json::json!({"exp": 17.9}))), Some(17));
        assert_eq!(jwt_exp(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn tokens_renew_ahead_of_expiry() {
        assert_eq!(
            renew_margin(Duration::from_secs(4 * 3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert!(CachedToken::new(Secret::new("t"), Some(Duration::from_secs(3600))).is_fresh());
        assert!(!CachedToken::new(Secret::new("t"), Some(Duration::ZERO)).is_fresh());
        // Unknown lifetime: used until the server rejects it.
        assert!(CachedToken::new(Secret::new("opaque"), None).is_fresh());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = jwt(serde_json::json!({ "exp": now - 10 }));
        assert!(!CachedToken::new(Secret::new(expired), None).is_fresh());
        let ok = jwt(serde_json::json!({ "exp": now + 3600 }));
        assert!(CachedToken::new(Secret::new(ok), None).is_fresh());
        // A short lifetime still gets its first three quarters.
        let soon = jwt(serde_json::json!({ "exp": now + 2 }));
        assert!(CachedToken::new(Secret::new(soon), None).is_fresh());
    }

    #[test]
    fn snippets_are_short_single_line_and_hide_tokens() {
        let body = format!("<html>\n  <body>{}</body>", "x".repeat(1000));
        let s = snippet(body.as_bytes());
        assert_eq!(s.chars().count(), 300);
        assert!(s.starts_with("<html> <body>xxx") && s.ends_with('…'), "{s}");
        let leaky = br#"{"detail":"bad token eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl here"}"#;
        assert_eq!(snippet(leaky), r#"{"detail":"bad token <redacted> here"}"#);
        assert_eq!(snippet(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }

    async fn collect(s: ByteStream) -> (Vec<u8>, Option<ApiError>) {
        let mut s = s;
        let mut data = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => data.extend_from_slice(&b),
                Err(e) => return (data, Some(e)),
            }
        }
        (data, None)
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        Box::pin(stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn verify_length_passes_exact_bodies() {
        let (data, err) = collect(verify_length(chunks(&[b"ab", b"cd"]), 4, "f".into())).await;
        assert_eq!(data, b"abcd");
        assert!(err.is_none());
        let (data, err) = collect(verify_length(chunks(&[]), 0, "f".into())).await;
        assert!(data.is_empty() && err.is_none());
    }

    #[tokio::test]
    async fn verify_length_reports_short_bodies_at_the_end() {
        let (data, err) = collect(verify_length(chunks(&[b"ab", b"c"]), 4, "sys/f".into())).await;
        assert_eq!(data, b"abc");
        match err {
            Some(
                e @ ApiError::Truncated {
                    expected: 4,
                    got: 3,
                    ..
                },
            ) => {
                assert!(e.is_retryable());
                assert_eq!(e.to_string(), "sys/f: truncated: expected 4 bytes, got 3");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn verify_length_stops_overlong_bodies_at_once() {
        let mut s = verify_length(chunks(&[b"ab", b"cde", b"fg"]), 4, "f".into());
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"ab"));
        assert!(matches!(
            s.next().await,
            Some(Err(ApiError::Overlong {
                expected: 4,
                got: 5,
                ..
            }))
        ));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn verify_length_passes_errors_through_and_ends() {
        let inner: ByteStream = Box::pin(stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Err(ApiError::Transport {
                service: "Tapis",
                op: "GET /v3/files/content/s/f".into(),
                detail: "reset".into(),
            }),
        ]));
        let mut s = verify_length(inner, 10, "f".into());
        assert!(s.next().await.unwrap().is_ok());
        assert!(matches!(
            s.next().await,
            Some(Err(ApiError::Transport { .. }))
        ));
        assert!(s.next().await.is_none());
    }

    fn limits(requests_per_second: u32, max_requests: usize) -> Limits {
        Limits {
            requests_per_second,
            max_requests,
            max_transfers: max_requests,
            bwlimit: None,
        }
    }

    fn service(base: &str) -> Service {
        Service::new(
            "Tapis",
            &Url::parse(base).unwrap(),
            limits(10, 2),
            Duration::from_secs(5),
            &RetryConfig::default(),
            &CaBundle::default(),
        )
        .unwrap()
    }

    #[test]
    fn urls_encode_each_segment() {
        let svc = service("https://tenant.tapis.io/");
        let url = svc.url(
            &["v3", "files", "ops", "sys.a", "Flight #1", "ü?%.jpg"],
            false,
        );
        assert_eq!(
            url.as_str(),
            "https://tenant.tapis.io/v3/files/ops/sys.a/Flight%20%231/%C3%BC%3F%25.jpg"
        );
        let svc = service("http://127.0.0.1:8000/prefix?x=1");
        assert_eq!(
            svc.url(&["api", "projects"], true).as_str(),
            "http://127.0.0.1:8000/prefix/api/projects/"
        );
        assert!(Service::new(
            "WebODM",
            &Url::parse("ftp://x/").unwrap(),
            limits(1, 1),
            Duration::from_secs(1),
            &RetryConfig::default(),
            &CaBundle::default(),
        )
        .is_err());
    }

    #[tokio::test]
    async fn retry_stops_on_permanent_errors_and_retries_transient_ones() {
        let svc = Service::new(
            "Tapis",
            &Url::parse("http://127.0.0.1:9/").unwrap(),
            limits(10, 2),
            Duration::from_secs(5),
            &RetryConfig {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                max_elapsed: Duration::from_secs(5),
                listing_elapsed: Duration::from_secs(60),
            },
            &CaBundle::default(),
        )
        .unwrap();
        let calls = AtomicU64::new(0);
        let r: Result<u32, _> = svc
            .retry(|| async {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                if n < 4 {
                    Err(status(503, ""))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            5,
            "more than backon's default 3 tries"
        );
        calls.store(0, Ordering::Relaxed);
        let r: Result<u32, _> = svc
            .retry(|| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(status(404, ""))
            })
            .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
