//! The one place where the scylla driver's errors become [`persistence_api::Error`]s.
//!
//! | driver error | kind |
//! |---|---|
//! | LWT answered `[applied] = false` | `Conflict` (raised by the journal, see `journal.rs`, and the offset store, see `offsets.rs`) |
//! | a projection offset's LWT: `WriteTimeout` (write type `CAS` or the commit phase's), client request timeout | `Timeout` (retryable), the message saying the commit may or may not have been applied ([`lwt_failed`]) |
//! | a projection offset's LWT: broken connection | `Unavailable` (retryable), the same message |
//! | `Overloaded`, `RateLimitReached` | `RateLimited` (retryable) |
//! | `ReadTimeout`, `WriteTimeout` (incl. CAS), client request timeout | `Timeout` (retryable) |
//! | `Unavailable`, `IsBootstrapping`, broken connection, empty pool or plan | `Unavailable` (retryable) |
//! | `Invalid`, `SyntaxError`, `ConfigError`, `Unauthorized`, ... | `Storage` |
//! | (de)serialization of values | `Unexpected` (a bug or a foreign schema) |
//! | opening the session: authentication failed or missing, a TLS certificate not trusted, for another name, expired, a server not speaking TLS or refusing plaintext | `ConfigInvalid`, naming the contact points, the cause and the key to check ([`connect_failed`]) |
//! | opening the session: refused, unreachable, TCP connect timeout | `Unavailable` (retryable); no session within `connect_timeout + request_timeout`: `Timeout` |
//! | a stored event or snapshot column NULL where the driver always writes it, metadata columns set in part, an empty tag | `Corrupt`, naming the persistence id, sequence number and column |
//! | a stored projection offset or version that does not decode | `Corrupt`, naming the projection id and the column (`offsets.rs`) |
//! | a durable state's LWT: as a projection offset's (`durable_state.rs`); a stored state or change row that does not decode | `Corrupt`, naming the persistence id and the column |
//!
//! A mapped error's message says which step failed (`cassandra read_highest failed`), and
//! the driver's error is its [`source`](std::error::Error::source), not copied into the
//! message. The call's operation, persistence id and sequence range are added by the
//! checking layer ([`persistence_api::Stores`]); errors here name only what is more precise
//! than the call (the one event of a corrupt row), or, outside the stores (opening the
//! session, cleanup), their operation.

use persistence_api::{Error, ErrorKind};
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, NextPageError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, RequestError, WriteType,
};

use crate::config::CassandraConfig;

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

    /// The public error for a failed `step`, with this one as its source.
    fn into_error(self, step: &'static str) -> Error {
        Error::new(self.kind(), format!("cassandra {step} failed")).with_source(self)
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

/// Why a lightweight transaction that failed with `e` may still have been applied, and the
/// kind of its error; `None` when it certainly was not (the coordinator refused it before
/// the Paxos round, or it was never sent).
///
/// A `WriteTimeout` of write type `CAS` comes from the Paxos prepare or propose phase: a
/// proposal may have been accepted by some replicas and a later round (any reader at the
/// serial level, or the next LWT on the row) completes it. One of another write type on an
/// LWT comes from its commit phase: the value was accepted and will be committed. A client
/// timeout or a broken connection leaves the request's fate unseen.
pub(crate) fn lwt_unknown(e: &ExecutionError) -> Option<(ErrorKind, &'static str)> {
    match e {
        ExecutionError::RequestTimeout(_) => Some((
            ErrorKind::Timeout,
            "the lightweight transaction got no answer within the client timeout",
        )),
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::DbError(
                DbError::WriteTimeout {
                    write_type: WriteType::Cas,
                    ..
                },
                _,
            ) => Some((
                ErrorKind::Timeout,
                "the lightweight transaction timed out in its Paxos round (WriteTimeout, write type CAS)",
            )),
            RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _) => Some((
                ErrorKind::Timeout,
                "the lightweight transaction timed out in its commit phase (WriteTimeout)",
            )),
            RequestAttemptError::BrokenConnectionError(_) => Some((
                ErrorKind::Unavailable,
                "the connection broke before the lightweight transaction's answer",
            )),
            _ => None,
        },
        _ => None,
    }
}

/// The error of a conditional write (lightweight transaction) of `step` that failed with
/// `e`. When its outcome is unknown ([`lwt_unknown`]), a retryable `Timeout` (or
/// `Unavailable`) whose message says the commit may or may not have been applied; else as
/// [`ResultExt::op`].
pub(crate) fn lwt_failed(step: &'static str, e: ExecutionError) -> Error {
    match lwt_unknown(&e) {
        Some((kind, cause)) => Error::new(
            kind,
            format!(
                "cassandra {step}: {cause}, so the commit may or may not have been applied (a retry with the same expected version settles it: applied, or a Conflict naming the next version if this one was applied after all)"
            ),
        )
        .with_source(e),
        None => e.into_error(step),
    }
}

/// Wraps any other driver-side failure of `step` (result shape, row decoding) as
/// `Unexpected`, with it as the source.
pub(crate) fn unexpected(
    step: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("cassandra {step}: unexpected result"),
    )
    .with_source(e)
}

/// A stored column of the record `(id, seq)` that does not decode: [`ErrorKind::Corrupt`]
/// naming the record and the column.
pub(crate) fn corrupt(
    id: &persistence_api::PersistenceId,
    seq: u64,
    column: &str,
    detail: impl std::fmt::Display,
) -> Error {
    Error::corrupt(column, detail)
        .with_persistence_id(id.as_str())
        .with_sequence_range(seq, seq)
}

/// A column the driver always writes, found NULL in the record `(id, seq)`.
pub(crate) fn required<T>(
    value: Option<T>,
    id: &persistence_api::PersistenceId,
    seq: u64,
    column: &str,
) -> persistence_api::Result<T> {
    value.ok_or_else(|| corrupt(id, seq, column, "is NULL, but the driver always writes it"))
}

/// The optional metadata of the record `(id, seq)` from its three columns: all set, or all
/// NULL (as the driver writes them); some without the others is corrupt.
pub(crate) fn metadata(
    (serializer_id, manifest, bytes): (Option<String>, Option<String>, Option<Vec<u8>>),
    id: &persistence_api::PersistenceId,
    seq: u64,
) -> persistence_api::Result<Option<persistence_api::Payload>> {
    match (serializer_id, manifest, bytes) {
        (None, None, None) => Ok(None),
        (Some(s), Some(m), Some(b)) => Ok(Some(persistence_api::Payload::new(s, m, b))),
        (s, m, _) => {
            let column = if s.is_none() {
                "meta_ser_id"
            } else if m.is_none() {
                "meta_ser_manifest"
            } else {
                "meta"
            };
            Err(corrupt(
                id,
                seq,
                column,
                "is NULL while other metadata columns are set (metadata is stored with all three or none)",
            ))
        }
    }
}

/// `Result<T, DriverError>` → `Result<T, persistence_api::Error>`.
pub(crate) trait ResultExt<T> {
    /// For a `step` of a store call (the checking layer adds the call's context).
    fn op(self, step: &'static str) -> persistence_api::Result<T>;

    /// For an `operation` outside the stores (opening the session), which nothing else
    /// names: the error carries it as its operation.
    fn op_outside_stores(self, operation: &'static str) -> persistence_api::Result<T>;
}

impl<T, E: DriverError> ResultExt<T> for Result<T, E> {
    fn op(self, step: &'static str) -> persistence_api::Result<T> {
        self.map_err(|e| e.into_error(step))
    }

    fn op_outside_stores(self, operation: &'static str) -> persistence_api::Result<T> {
        self.map_err(|e| e.into_error(operation).with_operation(operation))
    }
}

/// A failed connection to the contact points, with the driver's error as the source.
///
/// A failure the configuration causes is `ConfigInvalid`, its message naming the cause and
/// the key to check ([`misconfiguration`]); anything else (refused, unreachable, timed out)
/// stays `Unavailable`, retryable.
pub(crate) fn connect_failed(config: &CassandraConfig, e: NewSessionError) -> Error {
    let points = &config.contact_points;
    match misconfiguration(config, &e) {
        Some(cause) => Error::new(
            ErrorKind::ConfigInvalid,
            format!("cassandra: cannot connect to {points:?}: {cause}"),
        ),
        None => Error::new(e.kind(), format!("cassandra: cannot connect to {points:?}")),
    }
    .with_operation("connect")
    .with_source(e)
}

/// Opening the session took longer than `bound` (`connect_timeout + request_timeout`):
/// nodes that accept connections but never finish the handshakes.
pub(crate) fn connect_timed_out(config: &CassandraConfig, bound: std::time::Duration) -> Error {
    let hint = if config.tls {
        "is the server speaking TLS on this port? check tls"
    } else {
        "a server that requires TLS may wait for a TLS handshake: check tls"
    };
    Error::new(
        ErrorKind::Timeout,
        format!(
            "cassandra: cannot connect to {:?}: no session within {} ms (connect_timeout_ms + request_timeout_ms); {hint}",
            config.contact_points,
            bound.as_millis()
        ),
    )
    .with_operation("connect")
}

/// The cause of a failed connection when it lies in the configuration (credentials, TLS),
/// with the key to check; `None` for a server that is down or unreachable.
fn misconfiguration(config: &CassandraConfig, e: &NewSessionError) -> Option<String> {
    match e {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error,
            },
        )) => connection_cause(config, last_connection_error),
        _ => {
            // Any other path: look for a connection error down the chain.
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
            while let Some(err) = next {
                if let Some(c) = err.downcast_ref::<ConnectionError>() {
                    return connection_cause(config, c);
                }
                next = err.source();
            }
            None
        }
    }
}

fn connection_cause(config: &CassandraConfig, e: &ConnectionError) -> Option<String> {
    match e {
        ConnectionError::IoError(io) => io_cause(config, io),
        ConnectionError::BrokenConnection(b) => broken_cause(config, b),
        ConnectionError::ConnectionSetupRequestError(setup) => match &setup.error {
            ConnectionSetupRequestErrorKind::DbError(DbError::AuthenticationError, _) => {
                Some(match &config.username {
                    Some(user) => format!(
                        "authentication failed for user {user}: check username/password (or password_file)"
                    ),
                    None => "authentication failed: check username/password (or password_file)"
                        .to_string(),
                })
            }
            ConnectionSetupRequestErrorKind::MissingAuthentication => Some(
                "the server requires authentication and no credentials are configured: set username and password (or password_file)"
                    .to_string(),
            ),
            ConnectionSetupRequestErrorKind::BrokenConnection(b) => broken_cause(config, b),
            _ => None,
        },
        _ => None,
    }
}

/// A connection that broke during its set-up: a TLS error inside, or, with TLS off, a
/// server that closed it (a TLS-only server does so on the first plaintext bytes).
fn broken_cause(
    config: &CassandraConfig,
    b: &scylla::errors::BrokenConnectionError,
) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(b);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(cause) = io_cause(config, io) {
                return Some(cause);
            }
        }
        next = err.source();
    }
    (!config.tls).then(|| {
        "the server closed the connection during the CQL handshake, as a server that requires TLS does: check tls".to_string()
    })
}

fn io_cause(config: &CassandraConfig, io: &std::io::Error) -> Option<String> {
    #[cfg(feature = "tls")]
    if let Some(tls) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(tls_cause(tls));
    }
    use std::io::ErrorKind as Io;
    match io.kind() {
        // The TCP connection was accepted, then closed or reset before any CQL answer.
        Io::UnexpectedEof | Io::ConnectionReset if !config.tls => Some(
            "the server closed the connection during the CQL handshake, as a server that requires TLS does: check tls"
                .to_string(),
        ),
        Io::UnexpectedEof | Io::ConnectionReset => Some(
            "the server closed the connection during the TLS handshake (does it require a client certificate?): check tls_cert_file/tls_key_file".to_string(),
        ),
        _ => None,
    }
}

/// What a rustls handshake error means for the configuration.
#[cfg(feature = "tls")]
fn tls_cause(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "certificate not trusted (UnknownIssuer): check tls_ca_file".to_string()
            }
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "certificate not valid for the expected name (NotValidForName: expected {}, the certificate names {}): check tls_server_name (default: the contact point's host; an IP address must be in the certificate's IP SANs)",
                expected.to_str(),
                presented.join(", ")
            ),
            C::NotValidForName => {
                "certificate not valid for the expected name (NotValidForName): check tls_server_name (default: the contact point's host; an IP address must be in the certificate's IP SANs)".to_string()
            }
            C::Expired | C::ExpiredContext { .. } => format!(
                "the server's certificate has expired ({c:?}): the server needs a renewed certificate (check also this machine's clock; tls_ca_file cannot fix it)"
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => format!(
                "the server's certificate is not valid yet ({c:?}): check this machine's clock"
            ),
            other => format!(
                "the server's certificate was refused ({other:?}): check tls_ca_file and tls_server_name"
            ),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server did not answer with TLS ({e}): check tls (the server's client_encryption_options)"
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "the server refused the TLS handshake (alert {alert:?}): check tls_cert_file/tls_key_file (a client certificate the server trusts)"
        ),
        other => format!("TLS handshake failed ({other}): check tls, tls_ca_file and tls_server_name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::statement::Consistency;

    fn write_timeout(write_type: WriteType) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout {
                consistency: Consistency::Serial,
                received: 0,
                required: 1,
                write_type,
            },
            "timed out".into(),
        ))
    }

    #[test]
    fn an_lwt_timeout_is_a_retryable_timeout_that_may_have_been_applied() {
        for e in [
            write_timeout(WriteType::Cas),
            write_timeout(WriteType::Simple),
            ExecutionError::RequestTimeout(std::time::Duration::from_secs(12)),
        ] {
            let err = lwt_failed("commit_offset", e);
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(err.is_retryable(), "{err}");
            assert!(
                err.to_string()
                    .contains("the commit may or may not have been applied"),
                "{err}"
            );
        }
        assert!(lwt_failed("commit_offset", write_timeout(WriteType::Cas))
            .to_string()
            .contains("CAS"));
    }

    #[test]
    fn an_lwt_the_coordinator_refused_is_mapped_as_any_error() {
        let e = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Unavailable {
                consistency: Consistency::Serial,
                required: 2,
                alive: 1,
            },
            "unavailable".into(),
        ));
        let err = lwt_failed("commit_offset", e);
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(!err.to_string().contains("may or may not"), "{err}");
    }
}
