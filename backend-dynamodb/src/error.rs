//! The one place where DynamoDB's errors become [`persistence_api::Error`]s, and the retry
//! policy that decides which of them are tried again.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use persistence_api::{Error, ErrorKind};

/// How one failed request is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A condition failed: the key is taken (`ConditionalCheckFailedException`, or a
    /// cancelled transaction whose reason is `ConditionalCheckFailed`).
    Conflict,
    /// Throttling: the request was refused before it did anything. Retryable.
    Throttled,
    /// A transaction collided with another one on the same item, or one with the same token
    /// is still running: nothing was applied. Retryable.
    TxConflict,
    /// A 5xx answer: it may or may not have been applied. Retryable.
    ServerError,
    /// The attempt timed out: it may have been applied. Retryable.
    Timeout,
    /// The connection failed: it may have been sent. Retryable.
    Unavailable,
    /// The request was invalid (item too large, bad key, ...).
    Validation,
    /// The table does not exist.
    NotFound,
    /// Anything else.
    Other,
}

impl Class {
    pub(crate) fn retryable(self) -> bool {
        matches!(
            self,
            Class::Throttled
                | Class::TxConflict
                | Class::ServerError
                | Class::Timeout
                | Class::Unavailable
        )
    }

    /// Whether a failed attempt of this class may still have been applied.
    pub(crate) fn ambiguous(self) -> bool {
        matches!(
            self,
            Class::ServerError | Class::Timeout | Class::Unavailable
        )
    }

    fn kind(self) -> ErrorKind {
        match self {
            Class::Conflict => ErrorKind::Conflict,
            Class::Throttled | Class::TxConflict => ErrorKind::RateLimited,
            Class::ServerError | Class::Unavailable => ErrorKind::Unavailable,
            Class::Timeout => ErrorKind::Timeout,
            Class::Validation => ErrorKind::Rejected,
            Class::NotFound => ErrorKind::ConfigInvalid,
            Class::Other => ErrorKind::Storage,
        }
    }
}

/// Gives the reasons of a cancelled transaction (only `TransactWriteItems` has them).
pub(crate) trait Cancellation {
    fn cancellation_codes(&self) -> Vec<String> {
        Vec::new()
    }
}

macro_rules! no_cancellation {
    ($($t:path),* $(,)?) => { $(impl Cancellation for $t {})* };
}

no_cancellation!(
    aws_sdk_dynamodb::operation::put_item::PutItemError,
    aws_sdk_dynamodb::operation::get_item::GetItemError,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemError,
    aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    aws_sdk_dynamodb::operation::query::QueryError,
    aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError,
    aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemError,
    aws_sdk_dynamodb::operation::create_table::CreateTableError,
    aws_sdk_dynamodb::operation::describe_table::DescribeTableError,
    aws_sdk_dynamodb::operation::delete_table::DeleteTableError,
);

impl Cancellation for aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError {
    fn cancellation_codes(&self) -> Vec<String> {
        match self {
            Self::TransactionCanceledException(e) => e
                .cancellation_reasons()
                .iter()
                .filter_map(|r| r.code().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Classifies a failed request.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Class
where
    E: ProvideErrorMetadata + Cancellation,
{
    match err {
        SdkError::TimeoutError(_) => Class::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Class::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => Class::Other,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Class::Unavailable,
        SdkError::ConstructionFailure(_) => Class::Other,
        SdkError::ServiceError(s) => {
            let e = s.err();
            let codes = e.cancellation_codes();
            if !codes.is_empty() {
                // A cancelled transaction: a taken key wins over a collision.
                if codes.iter().any(|c| c == "ConditionalCheckFailed") {
                    return Class::Conflict;
                }
                if codes
                    .iter()
                    .any(|c| c == "ThrottlingError" || c == "ProvisionedThroughputExceeded")
                {
                    return Class::Throttled;
                }
                if codes.iter().any(|c| c == "TransactionConflict") {
                    return Class::TxConflict;
                }
                if codes
                    .iter()
                    .any(|c| c == "ValidationError" || c == "ItemCollectionSizeLimitExceeded")
                {
                    return Class::Validation;
                }
            }
            let status = s.raw().status().as_u16();
            match e.code().unwrap_or("") {
                "ConditionalCheckFailedException" => Class::Conflict,
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "LimitExceededException"
                | "Throttling" => Class::Throttled,
                "TransactionConflictException" | "TransactionInProgressException" => {
                    Class::TxConflict
                }
                "TransactionCanceledException" => Class::TxConflict,
                "InternalServerError" | "ServiceUnavailable" | "ServiceUnavailableException" => {
                    Class::ServerError
                }
                "ResourceNotFoundException" => Class::NotFound,
                "ValidationException" | "ItemCollectionSizeLimitExceededException" => {
                    Class::Validation
                }
                _ if status >= 500 => Class::ServerError,
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

/// A request that failed for good: the last error, its class, and whether an earlier
/// attempt may have been applied.
pub(crate) struct Failed<E> {
    pub(crate) err: SdkError<E, HttpResponse>,
    pub(crate) class: Class,
    /// Some attempt failed in a way that may still have applied it (timeout, 5xx, I/O).
    pub(crate) ambiguous: bool,
    pub(crate) attempts: u32,
}

impl<E> Failed<E>
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    /// The public error for this failure.
    pub(crate) fn into_error(self, operation: &'static str) -> Error {
        let mut message = match (&self.err, self.err.code()) {
            (SdkError::ServiceError(_), Some(code)) => {
                format!("DynamoDB {code}: {}", self.err.message().unwrap_or(""))
            }
            _ => format!(
                "DynamoDB request failed: {}",
                DisplayErrorContext(&self.err)
            ),
        };
        if self.class.retryable() {
            message.push_str(&format!(" (gave up after {} attempts)", self.attempts));
        }
        if self.class == Class::NotFound {
            message.push_str(
                "; create the tables with persistence_dynamodb::create_schema, `create_schema = true`, \
                 or the schema in the persistence-dynamodb README",
            );
        }
        let kind = self.class.kind();
        Error::new(kind, message)
            .with_operation(operation)
            .with_retryable(self.class.retryable())
            .with_source(self.err)
    }
}

/// Capped exponential backoff with full jitter, over our own attempts (the SDK's own retry
/// layer is turned off so that every attempt passes through here and is counted).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl RetryPolicy {
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
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        operation: &'static str,
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
                    if class.retryable() && retry < self.max_retries {
                        let delay = self.delay(retry);
                        tracing::debug!(
                            operation,
                            ?class,
                            retry,
                            ?delay,
                            "retrying DynamoDB request"
                        );
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

/// The error for a batch whose unprocessed items were still refused after every retry.
pub(crate) fn unprocessed_error(operation: &'static str, left: usize, attempts: u32) -> Error {
    Error::new(
        ErrorKind::RateLimited,
        format!("DynamoDB left {left} batch items unprocessed after {attempts} attempts"),
    )
    .with_operation(operation)
}

/// An error for a stored attribute that does not decode (or is missing where the driver
/// always writes one): [`ErrorKind::Corrupt`] naming the attribute. The caller adds the
/// record's persistence id and sequence number when it knows them.
pub(crate) fn corrupt(attribute: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("attribute {attribute} does not decode: {detail}"),
    )
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
pub(crate) fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}
