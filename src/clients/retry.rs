//! The retry policy shared by both clients and the engine: exponential backoff with full
//! jitter, `Retry-After` as the minimum wait, and [`ApiError::is_retryable`] deciding what is
//! worth another try.

use std::future::Future;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

use super::error::ApiError;
use crate::config::RetryConfig;

/// How long an operation may keep retrying before one warn line says so (what, why, the next
/// wait), so the log never goes quiet while the daemon waits.
pub const WARN_AFTER: Duration = Duration::from_secs(30);

/// Parses a `Retry-After` value: delay seconds or an HTTP-date (a date in the past is zero).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The retry policy of `[retry]`: exponential backoff from `initial` to `max` with full jitter
/// (each wait drawn uniformly from zero to the exponential delay), unlimited tries while the
/// time since the first try (wall clock, tries included) stays within `max_elapsed` (the last
/// one at its end), and `Retry-After` honoured as the minimum wait.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    backoff: ExponentialBuilder,
    max_elapsed: Duration,
}

impl RetryPolicy {
    /// The policy a `[retry]` section describes.
    pub fn new(retry: &RetryConfig) -> Self {
        RetryPolicy {
            // backon's own jitter adds up to one more delay (so waits land between d and 2d);
            // full jitter is applied in `wait` instead.
            backoff: ExponentialBuilder::new()
                .with_min_delay(retry.initial)
                .with_max_delay(retry.max)
                .without_max_times(),
            max_elapsed: retry.max_elapsed,
        }
    }

    /// The wait before the next try, with `remaining` of the budget left: `unit` (uniform in
    /// 0..1) of the exponential delay, at least what the server's `Retry-After` asks, cut to
    /// `remaining` so the last try comes at the end of the budget; `None` (give up) when the
    /// budget is spent or the server asks for more than remains.
    pub fn wait(
        &self,
        exponential: Option<Duration>,
        retry_after: Option<Duration>,
        unit: f64,
        remaining: Duration,
    ) -> Option<Duration> {
        let jittered = exponential?.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            _ if remaining.is_zero() => None,
            Some(asked) if asked > remaining => None,
            Some(asked) => Some(jittered.max(asked).min(remaining)),
            None => Some(jittered.min(remaining)),
        }
    }

    /// Runs `op` until it succeeds, fails for good ([`ApiError::is_retryable`] is false), or the
    /// budget is spent. Each retry is counted in metrics (by service and error class) and
    /// logged at debug with `what`, the reason and the wait; once the operation has been
    /// retrying for [`WARN_AFTER`], one warn line says so.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = tokio::time::Instant::now();
        let mut warned = false;
        op.retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(ApiError::is_retryable)
            .adjust(|e: &ApiError, wait| {
                // The budget is wall-clock time: the next try must start within it.
                let remaining = self.max_elapsed.checked_sub(started.elapsed())?;
                self.wait(wait, e.retry_after(), rand::random::<f64>(), remaining)
            })
            .notify(|e: &ApiError, wait| {
                crate::metrics::retry(e.service(), e.class());
                let elapsed = started.elapsed();
                if elapsed >= WARN_AFTER && !warned {
                    warned = true;
                    let round = |d: Duration| Duration::from_millis(d.as_millis() as u64);
                    tracing::warn!(
                        what,
                        error = %e,
                        retrying_for = %humantime::format_duration(round(elapsed)),
                        next_try_in = %humantime::format_duration(round(wait)),
                        "still retrying"
                    );
                } else {
                    tracing::debug!(what, error = %e, wait = ?wait, "retrying");
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_takes_seconds_or_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn waits_use_full_jitter_and_honour_retry_after() {
        let p = RetryPolicy::new(&RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(60),
            listing_elapsed: Duration::from_secs(60),
        });
        let d = Some(Duration::from_secs(4));
        let all = Duration::from_secs(60);
        assert_eq!(p.wait(d, None, 0.0, all), Some(Duration::ZERO));
        assert_eq!(p.wait(d, None, 0.5, all), Some(Duration::from_secs(2)));
        assert_eq!(p.wait(d, None, 1.0, all), Some(Duration::from_secs(4)));
        let ra = Some(Duration::from_secs(3));
        assert_eq!(p.wait(d, ra, 0.1, all), Some(Duration::from_secs(3)));
        assert_eq!(p.wait(d, Some(Duration::from_secs(61)), 0.5, all), None);
        assert_eq!(p.wait(None, None, 0.5, all), None, "budget spent");
        // Near the deadline: a long draw is cut to what remains; a Retry-After beyond it,
        // or no time left at all, gives up.
        let little = Duration::from_secs(1);
        assert_eq!(p.wait(d, None, 1.0, little), Some(little));
        assert_eq!(p.wait(d, ra, 0.1, little), None);
        assert_eq!(p.wait(d, None, 0.5, Duration::ZERO), None);
    }

    /// A subscriber that writes warn (and worse) lines into a buffer.
    fn capture() -> (impl tracing::Subscriber, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Buf(Arc::clone(&buf));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (subscriber, buf)
    }

    /// Runs an operation that answers 503 until `fails_for` (virtual time) has passed; returns
    /// the warn lines logged meanwhile.
    async fn warnings_while_failing(fails_for: Duration) -> Vec<String> {
        let p = RetryPolicy::new(&RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            max_elapsed: Duration::from_secs(600),
            listing_elapsed: Duration::from_secs(60),
        });
        let (subscriber, buf) = capture();
        let _guard = tracing::subscriber::set_default(subscriber);
        let start = tokio::time::Instant::now();
        let r = p
            .run("sys.a/Flight 1: listing", || async {
                if start.elapsed() < fails_for {
                    Err(ApiError::Status {
                        service: "Tapis",
                        op: "GET /v3/files/ops/sys.a/Flight 1/code/images".into(),
                        status: 503,
                        body: String::new(),
                        retry_after: None,
                    })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_logs_one_warning_with_what_why_and_next_wait() {
        let lines = warnings_while_failing(Duration::from_secs(100)).await;
        assert_eq!(lines.len(), 1, "{lines:#?}");
        let line = &lines[0];
        for part in [
            "WARN",
            "still retrying",
            "what=\"sys.a/Flight 1: listing\"",
            "HTTP 503",
            "retrying_for=3",
            "next_try_in=",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_operation_is_retried_until_the_end_of_its_budget() {
        let p = RetryPolicy::new(&RetryConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(16),
            max_elapsed: Duration::from_secs(6),
            listing_elapsed: Duration::from_secs(6),
        });
        for _ in 0..20 {
            let start = tokio::time::Instant::now();
            let tries = std::cell::Cell::new(0);
            let r: Result<(), ApiError> = p
                .run("listing", || async {
                    tries.set(tries.get() + 1);
                    Err(ApiError::Status {
                        service: "Tapis",
                        op: "GET /v3/files/ops/s/F/code/images".into(),
                        status: 502,
                        body: String::new(),
                        retry_after: None,
                    })
                })
                .await;
            assert!(r.is_err());
            // Whatever the draws, the last try is at the deadline, never past it.
            assert_eq!(
                start.elapsed(),
                Duration::from_secs(6),
                "{} tries",
                tries.get()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_logs_no_warning() {
        let lines = warnings_while_failing(Duration::from_secs(20)).await;
        assert!(lines.is_empty(), "{lines:#?}");
    }
}
