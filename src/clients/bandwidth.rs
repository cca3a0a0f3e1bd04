//! `bwlimit`: a cap on the bytes per second one service's transfers move, shared by every
//! byte stream of that service (Tapis downloads, WebODM uploads). It throttles the bytes, not
//! the requests: a stream yields each chunk only once the chunk fits under the cap, so a
//! download is read (and an upload fed) no faster than the limit, and TCP backpressure does
//! the rest.
//!
//! The schedule is a GCRA (a token bucket in virtual time): every chunk moves the time at which
//! the cap allows the next byte by `len / rate`; a chunk waits until that time minus
//! [`TOLERANCE`], the burst allowed after a quiet spell. It runs on tokio's clock, so tests can
//! prove it with paused time.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::http::ByteStream;

/// How far ahead of the schedule a chunk may pass: the burst after a pause, in time.
pub const TOLERANCE: Duration = Duration::from_millis(250);

/// A byte-rate cap shared by many streams.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    bytes_per_second: NonZeroU64,
    /// When the cap lets the next byte through (`None` before the first chunk).
    next_byte_at: Mutex<Option<Instant>>,
}

impl Bandwidth {
    /// A cap of `bytes_per_second`.
    pub(crate) fn new(bytes_per_second: NonZeroU64) -> Arc<Self> {
        Arc::new(Bandwidth {
            bytes_per_second,
            next_byte_at: Mutex::new(None),
        })
    }

    /// Books `len` bytes now and returns how long their chunk has to wait.
    fn reserve(&self, len: usize) -> Duration {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(len as f64 / self.bytes_per_second.get() as f64);
        let mut next = self.next_byte_at.lock().expect("bandwidth lock");
        let start = next.map_or(now, |at| at.max(now));
        let after = start + cost;
        *next = Some(after);
        after.saturating_duration_since(now + TOLERANCE)
    }

    /// `stream`, each chunk held back until the cap allows it.
    pub(crate) fn throttle(self: &Arc<Self>, stream: ByteStream) -> ByteStream {
        let cap = Arc::clone(self);
        Box::pin(stream.then(move |item| {
            let wait = match &item {
                Ok(chunk) => cap.reserve(chunk.len()),
                Err(_) => Duration::ZERO,
            };
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                item
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream;

    fn chunks(n: usize, size: usize) -> ByteStream {
        Box::pin(stream::iter(
            (0..n).map(move |_| Ok(Bytes::from(vec![7u8; size]))),
        ))
    }

    async fn drain(mut s: ByteStream) -> u64 {
        let mut total = 0;
        while let Some(chunk) = s.next().await {
            total += chunk.unwrap().len() as u64;
        }
        total
    }

    #[tokio::test(start_paused = true)]
    async fn one_stream_moves_at_the_cap() {
        // 1 MB at 100 kB/s: 10 s, less the burst allowance.
        let cap = Bandwidth::new(NonZeroU64::new(100_000).unwrap());
        let started = Instant::now();
        assert_eq!(drain(cap.throttle(chunks(100, 10_000))).await, 1_000_000);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) - TOLERANCE,
            "1 MB at 100 kB/s in {took:?}"
        );
        assert!(took <= Duration::from_millis(10_050), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_share_one_cap() {
        let cap = Bandwidth::new(NonZeroU64::new(50_000).unwrap());
        let started = Instant::now();
        let (a, b) = tokio::join!(
            drain(cap.throttle(chunks(25, 10_000))),
            drain(cap.throttle(chunks(25, 10_000)))
        );
        assert_eq!(a + b, 500_000);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) - TOLERANCE,
            "500 kB at 50 kB/s across two streams in {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_bigger_than_a_second_waits_its_share() {
        let cap = Bandwidth::new(NonZeroU64::new(1_000).unwrap());
        let started = Instant::now();
        assert_eq!(drain(cap.throttle(chunks(2, 5_000))).await, 10_000);
        assert!(started.elapsed() >= Duration::from_secs(10) - TOLERANCE);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_only_the_tolerance_is_a_burst() {
        let cap = Bandwidth::new(NonZeroU64::new(10_000).unwrap());
        assert_eq!(drain(cap.throttle(chunks(1, 10_000))).await, 10_000);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        assert_eq!(drain(cap.throttle(chunks(4, 5_000))).await, 20_000);
        assert!(
            started.elapsed() >= Duration::from_secs(2) - TOLERANCE,
            "idle time is not saved up: {:?}",
            started.elapsed()
        );
    }
}
