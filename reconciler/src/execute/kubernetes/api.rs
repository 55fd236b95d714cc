//! Calls to the API server that respect it: a client-side token bucket on every request this
//! backend makes itself, and bounded retries with backoff on throttling, server errors and
//! broken connections (honouring the server's `retryAfterSeconds`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How many times one call is tried before its error is returned.
const MAX_TRIES: u32 = 8;
/// The first pause between tries; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured, so a confused server cannot park a call for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A token bucket: `qps` requests a second sustained, `burst` at once.
#[derive(Debug)]
pub(super) struct RateLimit {
    qps: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub(super) fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimit {
            qps: if qps > 0.0 { qps } else { 1.0 },
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Waits for a token. Waiters queue on the (fair) lock, so they are served in order.
    pub(super) async fn acquire(&self) {
        let mut bucket = self.bucket.lock().await;
        loop {
            let now = Instant::now();
            let earned = now.duration_since(bucket.at).as_secs_f64() * self.qps;
            bucket.tokens = (bucket.tokens + earned).min(self.burst);
            bucket.at = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return;
            }
            let missing = (1.0 - bucket.tokens) / self.qps;
            tokio::time::sleep(Duration::from_secs_f64(missing)).await;
        }
    }
}

/// Whether trying `error` again may succeed, and after how long the server asked for.
fn retry_hint(error: &kube::Error) -> Option<Option<Duration>> {
    match error {
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => Some(
            status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)).min(MAX_RETRY_AFTER)),
        ),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Some(None)
        }
        _ => None,
    }
}

/// The HTTP status of an API error, if it is one.
pub(super) fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Runs `call` under the rate limit, trying again on throttling and transient failures.
pub(super) async fn call<T, F, Fut>(
    limit: &RateLimit,
    what: &str,
    call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    call_with(limit, what, MAX_TRIES, FIRST_BACKOFF, call).await
}

async fn call_with<T, F, Fut>(
    limit: &RateLimit,
    what: &str,
    max_tries: u32,
    first_backoff: Duration,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut backoff = first_backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        limit.acquire().await;
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(asked) = retry_hint(&error).filter(|_| tries < max_tries) else {
            return Err(error);
        };
        let pause = asked.unwrap_or(backoff);
        tracing::warn!(%what, tries, pause = ?pause, %error, "API call failed; trying again");
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api_error(code: u16, retry_after: u32) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": "TooManyRequests",
            "message": "slow down", "details": {"retryAfterSeconds": retry_after}
        }))
        .expect("status");
        kube::Error::Api(Box::new(status))
    }

    #[tokio::test]
    async fn the_bucket_lets_a_burst_through_then_paces_requests() {
        let limit = RateLimit::new(100.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limit.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
        for _ in 0..10 {
            limit.acquire().await;
        }
        let paced = start.elapsed();
        assert!(
            paced >= Duration::from_millis(95) && paced < Duration::from_millis(400),
            "{paced:?}"
        );
    }

    #[tokio::test]
    async fn throttling_is_retried_after_the_time_the_server_asks_for() {
        let limit = RateLimit::new(1000.0, 1000);
        let tries = AtomicU32::new(0);
        let start = Instant::now();
        let result = call_with(&limit, "test", 5, Duration::from_millis(1), || async {
            if tries.fetch_add(1, Ordering::SeqCst) < 1 {
                Err(api_error(429, 1))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.expect("second try succeeds"), 7);
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_client_error_is_not_retried_and_retries_are_bounded() {
        let limit = RateLimit::new(1000.0, 1000);
        let tries = AtomicU32::new(0);
        let invalid = call_with(&limit, "test", 4, Duration::from_millis(1), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(api_error(422, 0))
        })
        .await;
        assert_eq!(invalid.err().as_ref().and_then(status_code), Some(422));
        assert_eq!(tries.swap(0, Ordering::SeqCst), 1);

        let unavailable = call_with(&limit, "test", 4, Duration::from_millis(1), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(api_error(503, 0))
        })
        .await;
        assert_eq!(unavailable.err().as_ref().and_then(status_code), Some(503));
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }
}
