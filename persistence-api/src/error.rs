//! The one public error type, with a kind the caller can match on.

use std::fmt;

/// What went wrong, in terms a caller can act on.
///
/// Backends map their native errors into these kinds in one place (their `error.rs`):
/// a DynamoDB `ConditionalCheckFailedException` or a Cassandra LWT `[applied] = false`
/// becomes [`ErrorKind::Conflict`], throttling becomes [`ErrorKind::RateLimited`], a lost
/// connection [`ErrorKind::Unavailable`], and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed: an invalid persistence id, sequence numbers that are not
    /// consecutive, an empty atomic write. Never retryable; nothing was stored.
    InvalidInput,
    /// The store refused this atomic write, e.g. because an event is larger than the
    /// store can hold, and stored nothing of it. The journal is healthy: other writes go on.
    Rejected,
    /// Another writer got there first: the sequence number is already taken (or a
    /// compare-and-set on the entity's version failed). Nothing of the write was stored.
    Conflict,
    /// The backend does not provide this operation; see [`crate::Capabilities`].
    Unsupported,
    /// The configuration is invalid or incomplete (unknown backend, missing key, bad value).
    ConfigInvalid,
    /// Encoding or decoding a payload failed (unknown manifest, newer schema version, bad bytes).
    Serialization,
    /// The replay filter found events of several writers interleaved and is in `Fail` mode.
    WriterConflict,
    /// The store asked us to slow down (throttling). Retryable.
    RateLimited,
    /// The store could not be reached or went away mid-request. Retryable; whether a write
    /// was stored is unknown, but an atomic write is never stored in part.
    Unavailable,
    /// The store did not answer in time. Retryable, with the same caveat as `Unavailable`.
    Timeout,
    /// The store answered with an error that fits no other kind.
    Storage,
    /// Bytes in the store that this project did not write or cannot read: a stored column
    /// or attribute of an event or snapshot (tags, metadata, manifest, a number) that does
    /// not decode. The error names the persistence id, the sequence number and the column,
    /// so the one bad record can be found and repaired; other ids are unaffected. Not
    /// retryable: reading again reads the same bytes. (A payload the codec cannot decode is
    /// [`ErrorKind::Serialization`]: the store holds it as opaque bytes.)
    Corrupt,
    /// A bug or an impossible state the store's data does not explain.
    Unexpected,
}

impl ErrorKind {
    /// Whether an operation failing with this kind may succeed when tried again unchanged.
    pub fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    /// A short, stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ConfigInvalid => "invalid configuration",
            ErrorKind::Serialization => "serialization",
            ErrorKind::WriterConflict => "writer conflict",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Storage => "storage",
            ErrorKind::Corrupt => "corrupt stored data",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every operation of this framework.
///
/// It carries a [`ErrorKind`] to match on, whether a retry may help, and context: the
/// operation, the persistence id and the sequence numbers involved, and the underlying
/// error as [`std::error::Error::source`].
///
/// ```
/// use persistence_api::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Conflict, "sequence number already taken")
///     .with_operation("write")
///     .with_persistence_id("account-1")
///     .with_sequence_range(4, 5);
/// assert_eq!(err.kind(), ErrorKind::Conflict);
/// assert!(!err.is_retryable());
/// assert_eq!(
///     err.to_string(),
///     "conflict: sequence number already taken (operation write, persistence id account-1, sequence numbers 4..=5)"
/// );
/// ```
///
/// `{:#}` adds the chain of sources, the driver's own words:
///
/// ```
/// use persistence_api::{Error, ErrorKind};
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
/// let err = Error::new(ErrorKind::Unavailable, "the database call failed").with_source(io);
/// assert_eq!(err.to_string(), "unavailable: the database call failed");
/// assert_eq!(format!("{err:#}"), "unavailable: the database call failed: connection reset by peer");
/// ```
pub struct Error {
    // Boxed: an error travels in every `Result` of the API, and a small `Err` keeps the
    // happy path's `Result`s small (clippy's `result_large_err`).
    inner: Box<ErrorInner>,
}

struct ErrorInner {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    operation: Option<&'static str>,
    persistence_id: Option<String>,
    sequence_range: Option<(u64, u64)>,
    backend: Option<&'static str>,
    retries_exhausted: Option<u32>,
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind`; retryable as [`ErrorKind::is_retryable_by_default`] says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(ErrorInner {
                kind,
                message: message.into(),
                retryable: kind.is_retryable_by_default(),
                operation: None,
                persistence_id: None,
                sequence_range: None,
                backend: None,
                retries_exhausted: None,
                source: None,
            }),
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for an [`ErrorKind::Serialization`] error.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Serialization, message)
    }

    /// Shorthand for an [`ErrorKind::Corrupt`] error: `column` of a stored record does not
    /// decode. Add the record's persistence id and sequence number with
    /// [`Error::with_persistence_id`] and [`Error::with_sequence_range`].
    ///
    /// ```
    /// use persistence_api::{Error, ErrorKind};
    /// let err = Error::corrupt("tags", "expected a JSON array")
    ///     .with_persistence_id("account-1")
    ///     .with_sequence_range(7, 7);
    /// assert_eq!(err.kind(), ErrorKind::Corrupt);
    /// assert!(!err.is_retryable());
    /// assert_eq!(
    ///     err.to_string(),
    ///     "corrupt stored data: column tags does not decode: expected a JSON array (persistence id account-1, sequence number 7)"
    /// );
    /// ```
    pub fn corrupt(column: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Corrupt,
            format!("column {column} does not decode: {detail}"),
        )
    }

    /// Shorthand for an [`ErrorKind::ConfigInvalid`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ConfigInvalid, message)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Names the operation that failed (`write`, `replay`, `load_snapshot`, ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.inner.operation = Some(operation);
        self
    }

    /// Names the persistence id involved.
    pub fn with_persistence_id(mut self, id: impl Into<String>) -> Self {
        self.inner.persistence_id = Some(id.into());
        self
    }

    /// Names the (inclusive) range of sequence numbers involved.
    pub fn with_sequence_range(mut self, from: u64, to: u64) -> Self {
        self.inner.sequence_range = Some((from, to));
        self
    }

    /// Names the backend that answered (`sqlite`, `dynamodb`, ...). [`crate::Stores`] adds
    /// it to every error a backend returns.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.inner.backend = Some(backend);
        self
    }

    /// Adds the context [`crate::Stores`] knows of a call (operation, persistence id,
    /// sequence range, backend), keeping what the error already names: a backend that
    /// named a more precise id or range (the one event that does not decode) keeps it.
    pub(crate) fn with_context(
        mut self,
        backend: &'static str,
        operation: &'static str,
        persistence_id: Option<&str>,
        sequence_range: Option<(u64, u64)>,
    ) -> Self {
        self.inner.backend.get_or_insert(backend);
        self.inner.operation.get_or_insert(operation);
        if self.inner.persistence_id.is_none() {
            self.inner.persistence_id = persistence_id.map(str::to_owned);
        }
        if self.inner.sequence_range.is_none() {
            self.inner.sequence_range = sequence_range;
        }
        self
    }

    /// Marks a transient failure (kind [`ErrorKind::RateLimited`], `Unavailable` or
    /// `Timeout`) that the backend already tried `attempts` times with its own backoff:
    /// not retryable now ([`Error::is_retryable`] is false: retrying at once repeats what
    /// just failed), though the kind says the cause may pass; retry later, or surface it.
    ///
    /// ```
    /// use persistence_api::{Error, ErrorKind};
    /// let err = Error::new(ErrorKind::RateLimited, "throttled").with_retries_exhausted(4);
    /// assert!(!err.is_retryable());
    /// assert_eq!(err.retries_exhausted(), Some(4));
    /// assert_eq!(err.to_string(), "rate limited: throttled (retries exhausted after 4 attempts)");
    /// ```
    pub fn with_retries_exhausted(mut self, attempts: u32) -> Self {
        self.inner.retries_exhausted = Some(attempts);
        self.inner.retryable = false;
        self
    }

    /// How many attempts the backend made before giving up, when this error is a transient
    /// failure whose retries are exhausted (see [`Error::with_retries_exhausted`]).
    pub fn retries_exhausted(&self) -> Option<u32> {
        self.inner.retries_exhausted
    }

    /// Overrides whether a retry may help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    /// The kind to match on.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner.retryable
    }

    /// The operation that failed, if known.
    pub fn operation(&self) -> Option<&'static str> {
        self.inner.operation
    }

    /// The persistence id involved, if any.
    pub fn persistence_id(&self) -> Option<&str> {
        self.inner.persistence_id.as_deref()
    }

    /// The inclusive range of sequence numbers involved, if any.
    pub fn sequence_range(&self) -> Option<(u64, u64)> {
        self.inner.sequence_range
    }

    /// The backend that answered, if known.
    pub fn backend(&self) -> Option<&'static str> {
        self.inner.backend
    }

    /// A copy of this error without its source (sources are not `Clone`); the source's
    /// text is kept in the message. Used where one failure answers several callers.
    pub fn clone_shallow(&self) -> Error {
        let message = match &self.inner.source {
            Some(source) => format!("{}: {}", self.inner.message, source),
            None => self.inner.message.clone(),
        };
        Error {
            inner: Box::new(ErrorInner {
                kind: self.inner.kind,
                message,
                retryable: self.inner.retryable,
                operation: self.inner.operation,
                persistence_id: self.inner.persistence_id.clone(),
                sequence_range: self.inner.sequence_range,
                backend: self.inner.backend,
                retries_exhausted: self.inner.retries_exhausted,
                source: None,
            }),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        let mut context = Vec::new();
        if let Some(op) = self.inner.operation {
            context.push(format!("operation {op}"));
        }
        if let Some(id) = &self.inner.persistence_id {
            context.push(format!("persistence id {id}"));
        }
        if let Some((from, to)) = self.inner.sequence_range {
            if from == to {
                context.push(format!("sequence number {from}"));
            } else {
                context.push(format!("sequence numbers {from}..={to}"));
            }
        }
        if let Some(backend) = self.inner.backend {
            context.push(format!("backend {backend}"));
        }
        if let Some(n) = self.inner.retries_exhausted {
            context.push(format!(
                "retries exhausted after {n} attempt{}",
                if n == 1 { "" } else { "s" }
            ));
        }
        if !context.is_empty() {
            write!(f, " ({})", context.join(", "))?;
        }
        if self.inner.retryable && !self.inner.kind.is_retryable_by_default() {
            write!(f, " [retryable]")?;
        }
        // `{:#}` appends the chain of sources (the driver's own message), which `{}` leaves
        // to `source()` so that error reporters do not print it twice.
        if f.alternate() {
            let mut source = std::error::Error::source(self);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("retryable", &self.inner.retryable);
        if let Some(op) = self.inner.operation {
            d.field("operation", &op);
        }
        if let Some(id) = &self.inner.persistence_id {
            d.field("persistence_id", id);
        }
        if let Some(range) = self.inner.sequence_range {
            d.field("sequence_range", &range);
        }
        if let Some(backend) = self.inner.backend {
            d.field("backend", &backend);
        }
        if let Some(n) = self.inner.retries_exhausted {
            d.field("retries_exhausted", &n);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The result type of this framework.
pub type Result<T, E = Error> = std::result::Result<T, E>;
