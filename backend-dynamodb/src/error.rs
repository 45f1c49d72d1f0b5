//! The one place where DynamoDB's errors become [`persistence_api::Error`]s: how a failed
//! request is classified (which the retry policy in `retry.rs` reads), and the public
//! error each class becomes.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
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
    /// The TLS handshake failed: the endpoint's certificate is not trusted, expired, or
    /// for another host name. Retrying cannot help; the settings must change.
    Tls,
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
            Class::NotFound | Class::Tls => ErrorKind::ConfigInvalid,
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
    aws_sdk_dynamodb::operation::scan::ScanError,
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
        SdkError::DispatchFailure(d) if dispatch_tls_failure(d).is_some() => Class::Tls,
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

fn dispatch_tls_failure(
    d: &aws_smithy_runtime_api::client::result::DispatchFailure,
) -> Option<String> {
    d.as_connector_error().and_then(|c| tls_failure(c))
}

/// The TLS error in a failed request's source chain, if the connection failed in its
/// handshake: rustls's description (`invalid peer certificate: UnknownIssuer`,
/// `... Expired`, `... NotValidForName`). The chain passes through `std::io::Error`, whose
/// `source()` skips the error it wraps, so each link's own text is read, not its type.
fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = tls_failure(inner) {
                    return Some(found);
                }
            }
        }
        let text = e.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(text[at..].to_owned());
        }
        next = e.source();
    }
    None
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
    /// The public error for this failure, the SDK's error as its source. A transient one
    /// (throttling, 5xx, a lost connection) was retried with backoff until the policy ran
    /// out, so it is marked [`Error::with_retries_exhausted`]: not retryable now. The
    /// operation, persistence id and sequence numbers are the call's: the checking layer
    /// (`Stores`) adds them.
    pub(crate) fn into_error(self) -> Error {
        let transient = self.class.retryable();
        let error = sdk_error(self.err, self.class, None);
        if transient {
            error.with_retries_exhausted(self.attempts)
        } else {
            error
        }
    }
}

/// The public error for a request sent once, without the retry policy.
pub(crate) fn unretried<E>(err: SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Cancellation + Send + Sync + 'static,
{
    let class = classify(&err);
    sdk_error(err, class, None)
}

/// `err` as a public error of `class`'s kind, `note` appended to its message. The message
/// says what happened in a few words (the DynamoDB error code when there is one); the
/// SDK's error, holding the service's own message or the underlying I/O error, is the
/// source and is not copied into the message.
fn sdk_error<E>(err: SdkError<E, HttpResponse>, class: Class, note: Option<String>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let mut message = match &err {
        SdkError::ServiceError(s) => match err.code() {
            Some(code) => format!("DynamoDB answered {code}"),
            None => format!("DynamoDB answered HTTP {}", s.raw().status().as_u16()),
        },
        SdkError::TimeoutError(_) => "the DynamoDB request timed out".to_owned(),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            "connecting to DynamoDB timed out".to_owned()
        }
        SdkError::DispatchFailure(d) if d.is_user() => {
            "the DynamoDB request could not be sent".to_owned()
        }
        SdkError::DispatchFailure(d) if class == Class::Tls => format!(
            "the TLS handshake with DynamoDB failed: {}; check dynamodb.tls_ca_file and the \
             endpoint's host name",
            dispatch_tls_failure(d).unwrap_or_default()
        ),
        SdkError::DispatchFailure(_) => "the connection to DynamoDB failed".to_owned(),
        SdkError::ResponseError(_) => "DynamoDB's answer could not be read".to_owned(),
        SdkError::ConstructionFailure(_) => "the DynamoDB request could not be built".to_owned(),
        _ => "the DynamoDB request failed".to_owned(),
    };
    if let Some(note) = note {
        message.push_str(&format!(" ({note})"));
    }
    if class == Class::NotFound {
        message.push_str(
            "; create the tables with persistence_dynamodb::create_schema, `create_schema = true`, \
             or the schema in the persistence-dynamodb README",
        );
    }
    Error::new(class.kind(), message)
        .with_retryable(class.retryable())
        .with_source(err)
}

/// A request (or a part of one) the SDK's builders refused: a bug of the driver, the
/// builder's error as the source.
pub(crate) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        "a DynamoDB request could not be built",
    )
    .with_source(e)
}

/// The error for a batch whose unprocessed items were still refused after every retry.
pub(crate) fn unprocessed_error(left: usize, attempts: u32) -> Error {
    Error::new(
        ErrorKind::RateLimited,
        format!("DynamoDB left {left} batch items unprocessed"),
    )
    .with_retries_exhausted(attempts)
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
