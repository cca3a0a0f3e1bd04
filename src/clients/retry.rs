//! The retry policy shared by both clients and the engine: exponential backoff with full
//! jitter, `Retry-After` as the minimum wait, and [`ApiError::is_retryable`] deciding what is
//! worth another try.

use std::future::Future;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

use super::error::ApiError;
use crate::config::RetryConfig;

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
/// (each wait drawn uniformly from zero to the exponential delay), unlimited tries within
/// `max_elapsed`, and `Retry-After` honoured as the minimum wait.
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
                .with_total_delay(Some(retry.max_elapsed))
                .without_max_times(),
            max_elapsed: retry.max_elapsed,
        }
    }

    /// The wait before the next try: `unit` (uniform in 0..1) of the exponential delay, at
    /// least what the server's `Retry-After` asks; `None` (give up) when the budget is spent or
    /// the server asks for more than `max_elapsed`.
    pub fn wait(
        &self,
        exponential: Option<Duration>,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let jittered = exponential?.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) if asked > self.max_elapsed => None,
            Some(asked) => Some(jittered.max(asked)),
            None => Some(jittered),
        }
    }

    /// Runs `op` until it succeeds, fails for good ([`ApiError::is_retryable`] is false), or the
    /// budget is spent. Each retry is logged at debug with `what`, the reason and the wait.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        op.retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(ApiError::is_retryable)
            .adjust(|e: &ApiError, wait| self.wait(wait, e.retry_after(), rand::random::<f64>()))
            .notify(|e: &ApiError, wait| {
                tracing::debug!(what, error = %e, wait = ?wait, "retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(p.wait(d, None, 0.0), Some(Duration::ZERO));
        assert_eq!(p.wait(d, None, 0.5), Some(Duration::from_secs(2)));
        assert_eq!(p.wait(d, None, 1.0), Some(Duration::from_secs(4)));
        let ra = Some(Duration::from_secs(3));
        assert_eq!(p.wait(d, ra, 0.1), Some(Duration::from_secs(3)));
        assert_eq!(p.wait(d, Some(Duration::from_secs(61)), 0.5), None);
        assert_eq!(p.wait(None, None, 0.5), None, "budget spent");
    }
}
