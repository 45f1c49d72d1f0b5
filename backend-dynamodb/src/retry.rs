//! The retry policy: which failed requests are tried again, how often, and the capped
//! exponential backoff with full jitter between attempts. The SDK's own retry layer is
//! turned off (see `core::sdk_config`) so that every attempt passes through here and is
//! counted; what a failure means is decided in `error.rs`.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::config::DynamoDbConfig;
use crate::error::{classify, Cancellation, Failed};

/// Capped exponential backoff with full jitter, over our own attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl RetryPolicy {
    /// The policy `config` sets (`max_retries`, `retry_base_delay_ms`, `retry_max_delay_ms`).
    pub(crate) fn new(config: &DynamoDbConfig) -> Self {
        RetryPolicy {
            max_retries: config.max_retries,
            base: config.retry_base_delay,
            cap: config.retry_max_delay,
        }
    }

    /// The delay before retry number `retry` (0-based): uniform in `[0, min(cap, base * 2^retry)]`.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.cap);
        let nanos = ceiling.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random_u64() % (nanos + 1))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are used up.
    /// `operation` names the request in the retry logs.
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        operation: &'static str,
        attempt: F,
    ) -> Result<T, Failed<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + Cancellation,
    {
        self.run_with(operation, false, attempt).await
    }

    /// [`RetryPolicy::run`], but an attempt that may have been applied (a 5xx, a timeout, a
    /// lost connection) is not retried: it is returned at once, for a caller whose request
    /// must not be applied twice (its failure's `ambiguous` is set).
    pub(crate) async fn run_until_ambiguous<T, E, F, Fut>(
        &self,
        operation: &'static str,
        attempt: F,
    ) -> Result<T, Failed<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + Cancellation,
    {
        self.run_with(operation, true, attempt).await
    }

    async fn run_with<T, E, F, Fut>(
        &self,
        operation: &'static str,
        stop_on_ambiguous: bool,
        mut attempt: F,
    ) -> Result<T, Failed<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + Cancellation,
    {
        let mut ambiguous = false;
        let mut retry = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(err) => {
                    let class = classify(&err);
                    ambiguous |= class.ambiguous();
                    let stop = stop_on_ambiguous && class.ambiguous();
                    if class.retryable() && !stop && retry < self.max_retries {
                        let delay = self.delay(retry);
                        tracing::debug!(
                            operation,
                            ?class,
                            retry,
                            ?delay,
                            "retrying DynamoDB request"
                        );
                        persistence_api::metrics::record_retry(crate::DynamoDb::NAME, operation);
                        tokio::time::sleep(delay).await;
                        retry += 1;
                        continue;
                    }
                    return Err(Failed {
                        err,
                        class,
                        ambiguous,
                        attempts: retry + 1,
                    });
                }
            }
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let addr = &t as *const u64 as u64;
        (t ^ addr.rotate_left(32)) | 1
    });
}

/// A xorshift generator: enough for jitter, no dependency.
fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}
