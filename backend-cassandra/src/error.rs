//! The one place where the scylla driver's errors become [`persistence_api::Error`]s.
//!
//! | driver error | kind |
//! |---|---|
//! | LWT answered `[applied] = false` | `Conflict` (raised by the journal, see `journal.rs`) |
//! | `Overloaded`, `RateLimitReached` | `RateLimited` (retryable) |
//! | `ReadTimeout`, `WriteTimeout` (incl. CAS), client request timeout | `Timeout` (retryable) |
//! | `Unavailable`, `IsBootstrapping`, broken connection, empty pool or plan | `Unavailable` (retryable) |
//! | `Invalid`, `SyntaxError`, `ConfigError`, `Unauthorized`, ... | `Storage` |
//! | (de)serialization of values | `Unexpected` (a bug or a foreign schema) |

use persistence_api::{Error, ErrorKind};
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError, RequestError,
};

fn attempt_kind(e: &RequestAttemptError) -> ErrorKind {
    match e {
        RequestAttemptError::DbError(db, _) => match db {
            DbError::Overloaded | DbError::RateLimitReached { .. } => ErrorKind::RateLimited,
            DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => ErrorKind::Timeout,
            DbError::Unavailable { .. } | DbError::IsBootstrapping => ErrorKind::Unavailable,
            _ => ErrorKind::Storage,
        },
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => ErrorKind::Unavailable,
        RequestAttemptError::SerializationError(_) => ErrorKind::Unexpected,
        _ => ErrorKind::Storage,
    }
}

fn request_kind(e: &RequestError) -> ErrorKind {
    match e {
        RequestError::ConnectionPoolError(_) | RequestError::EmptyPlan => ErrorKind::Unavailable,
        RequestError::RequestTimeout(_) => ErrorKind::Timeout,
        RequestError::LastAttemptError(a) => attempt_kind(a),
        _ => ErrorKind::Storage,
    }
}

/// A driver error that knows its [`ErrorKind`].
pub(crate) trait DriverError: std::error::Error + Send + Sync + Sized + 'static {
    fn kind(&self) -> ErrorKind;

    /// The public error for `operation`, with this one as its source.
    fn into_error(self, operation: &'static str) -> Error {
        Error::new(self.kind(), format!("cassandra {operation} failed: {self}"))
            .with_operation(operation)
            .with_source(self)
    }
}

impl DriverError for ExecutionError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
                ErrorKind::Unavailable
            }
            ExecutionError::RequestTimeout(_) => ErrorKind::Timeout,
            ExecutionError::LastAttemptError(a) => attempt_kind(a),
            ExecutionError::PrepareError(p) => p.kind(),
            ExecutionError::BadQuery(_) => ErrorKind::Unexpected,
            _ => ErrorKind::Storage,
        }
    }
}

impl DriverError for PrepareError {
    fn kind(&self) -> ErrorKind {
        match self {
            PrepareError::ConnectionPoolError(_) => ErrorKind::Unavailable,
            PrepareError::AllAttemptsFailed { first_attempt } => attempt_kind(first_attempt),
            _ => ErrorKind::Storage,
        }
    }
}

fn next_page_kind(e: &NextPageError) -> ErrorKind {
    match e {
        NextPageError::RequestFailure(r) => request_kind(r),
        _ => ErrorKind::Unexpected,
    }
}

impl DriverError for PagerExecutionError {
    fn kind(&self) -> ErrorKind {
        match self {
            PagerExecutionError::PrepareError(p) => p.kind(),
            PagerExecutionError::NextPageError(n) => next_page_kind(n),
            PagerExecutionError::SerializationError(_) => ErrorKind::Unexpected,
            _ => ErrorKind::Storage,
        }
    }
}

impl DriverError for NextRowError {
    fn kind(&self) -> ErrorKind {
        match self {
            NextRowError::NextPageError(n) => next_page_kind(n),
            _ => ErrorKind::Unexpected,
        }
    }
}

impl DriverError for NewSessionError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

/// Wraps any other driver-side failure (result shape, row decoding) as `Unexpected`.
pub(crate) fn unexpected(
    operation: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("cassandra {operation}: unexpected result: {e}"),
    )
    .with_operation(operation)
    .with_source(e)
}

/// `Result<T, DriverError>` → `Result<T, persistence_api::Error>` for one operation.
pub(crate) trait ResultExt<T> {
    fn op(self, operation: &'static str) -> persistence_api::Result<T>;
}

impl<T, E: DriverError> ResultExt<T> for Result<T, E> {
    fn op(self, operation: &'static str) -> persistence_api::Result<T> {
        self.map_err(|e| e.into_error(operation))
    }
}
