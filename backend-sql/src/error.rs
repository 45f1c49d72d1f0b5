//! The one place where sqlx's errors become [`persistence_api::Error`]s.

use persistence_api::{Error, ErrorKind};

/// What the SQL layer can fail with, before it is given a public kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqlError {
    /// An error of sqlx or the database.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// A stored column that does not decode (public kind `Corrupt`).
    #[error(transparent)]
    Corrupt(Box<CorruptColumn>),
    /// A statement answered what its own transaction rules out (a bug, not the data); only
    /// the PostgreSQL write path can tell.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    #[error("{0}")]
    Invariant(String),
}

/// A column of a stored row that does not decode, and the record it belongs to as far as
/// it was read before (the persistence id and sequence number come first).
#[derive(Debug)]
pub(crate) struct CorruptColumn {
    pub persistence_id: Option<String>,
    pub sequence_nr: Option<u64>,
    pub column: &'static str,
    pub detail: String,
}

impl std::fmt::Display for CorruptColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.detail)?;
        match (&self.persistence_id, self.sequence_nr) {
            (Some(id), Some(seq)) => write!(f, " (persistence id {id}, sequence number {seq})"),
            (Some(id), None) => write!(f, " (persistence id {id})"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for CorruptColumn {}

/// A stored `column` that does not decode, of the record `(persistence_id, sequence_nr)`
/// as far as it is known.
pub(crate) fn corrupt(
    persistence_id: Option<&str>,
    sequence_nr: Option<u64>,
    column: &'static str,
    detail: impl std::fmt::Display,
) -> SqlError {
    SqlError::Corrupt(Box::new(CorruptColumn {
        persistence_id: persistence_id.map(str::to_owned),
        sequence_nr,
        column,
        detail: detail.to_string(),
    }))
}

impl SqlError {
    /// The public kind: unique violations are conflicts, lost connections and busy
    /// databases are retryable, stored values that do not decode are corrupt, and so on.
    fn kind(&self) -> ErrorKind {
        let e = match self {
            SqlError::Sqlx(e) => e,
            SqlError::Corrupt(_) => return ErrorKind::Corrupt,
            SqlError::Invariant(_) => return ErrorKind::Unexpected,
        };
        match e {
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    return ErrorKind::Conflict;
                }
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                database_code_kind(&code)
            }
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
                ErrorKind::Unavailable
            }
            sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::BeginFailed => {
                ErrorKind::Unavailable
            }
            sqlx::Error::Configuration(_) => ErrorKind::ConfigInvalid,
            // A stored value that does not decode as its column's type.
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::Corrupt,
            sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::RowNotFound => ErrorKind::Unexpected,
            _ => ErrorKind::Storage,
        }
    }

    /// The error a row mapping (`try_map`) returned inside sqlx's `Decode`, unwrapped.
    fn unwrap_row_error(self) -> SqlError {
        match self {
            SqlError::Sqlx(sqlx::Error::Decode(inner)) => match inner.downcast::<SqlError>() {
                Ok(own) => own.unwrap_row_error(),
                Err(other) => SqlError::Sqlx(sqlx::Error::Decode(other)),
            },
            other => other,
        }
    }
}

/// Carries an [`SqlError`] through sqlx's row mapping (`try_map`), which wants a
/// `sqlx::Error`; [`to_public`] unwraps it again.
pub(crate) fn into_sqlx(e: SqlError) -> sqlx::Error {
    match e {
        SqlError::Sqlx(e) => e,
        other => sqlx::Error::Decode(Box::new(other)),
    }
}

/// PostgreSQL SQLSTATEs (five characters) and SQLite result codes (digits).
fn database_code_kind(code: &str) -> ErrorKind {
    match code {
        // PostgreSQL: connection exceptions, admin shutdown, cannot connect now.
        c if c.starts_with("08") => ErrorKind::Unavailable,
        "57P01" | "57P02" | "57P03" => ErrorKind::Unavailable,
        // Insufficient resources (too many connections, disk full, out of memory).
        c if c.starts_with("53") => ErrorKind::Unavailable,
        // Statement or lock timeout, query cancelled.
        "57014" | "55P03" => ErrorKind::Timeout,
        // Serialization failure, deadlock detected: retry the transaction.
        "40001" | "40P01" => ErrorKind::Unavailable,
        // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) and their extended codes.
        c if c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)) => ErrorKind::Timeout,
        // SQLite: SQLITE_FULL (13), SQLITE_IOERR (10), SQLITE_CANTOPEN (14).
        c if c
            .parse::<i32>()
            .is_ok_and(|n| matches!(n & 0xff, 10 | 13 | 14)) =>
        {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Storage,
    }
}

/// Turns an internal error into the public one, naming the operation; a corrupt column
/// names its record (persistence id and sequence number) and the column.
pub(crate) fn to_public(e: SqlError, operation: &'static str) -> Error {
    let e = e.unwrap_row_error();
    let kind = e.kind();
    if let SqlError::Corrupt(c) = e {
        let c = *c;
        let mut error = Error::corrupt(c.column, &c.detail).with_operation(operation);
        if let Some(id) = c.persistence_id {
            error = error.with_persistence_id(id);
        }
        if let Some(seq) = c.sequence_nr {
            error = error.with_sequence_range(seq, seq);
        }
        return error;
    }
    let message = match kind {
        ErrorKind::Conflict => "the sequence number is already taken".to_string(),
        ErrorKind::Corrupt => format!("{operation} failed: a stored value does not decode"),
        _ => format!("{operation} failed"),
    };
    Error::new(kind, message)
        .with_operation(operation)
        .with_source(e)
}

/// Shorthand: `.map_err(err("replay"))`.
pub(crate) fn err<E: Into<SqlError>>(operation: &'static str) -> impl Fn(E) -> Error {
    move |e| to_public(e.into(), operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(database_code_kind("08006"), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("40P01"), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("57014"), ErrorKind::Timeout);
        assert_eq!(database_code_kind("5"), ErrorKind::Timeout);
        assert_eq!(database_code_kind("517"), ErrorKind::Timeout);
        assert_eq!(database_code_kind("13"), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("42P01"), ErrorKind::Storage);
        assert_eq!(
            SqlError::Sqlx(sqlx::Error::PoolTimedOut).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            SqlError::Invariant("x".into()).kind(),
            ErrorKind::Unexpected
        );
    }

    #[test]
    fn a_corrupt_column_survives_the_row_mapping_and_names_its_record() {
        let through = into_sqlx(corrupt(Some("a-1"), Some(7), "tags", "not JSON"));
        let e = to_public(SqlError::Sqlx(through), "replay");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.persistence_id(), Some("a-1"));
        assert_eq!(e.sequence_range(), Some((7, 7)));
        assert_eq!(
            e.to_string(),
            "corrupt stored data: column tags does not decode: not JSON \
             (operation replay, persistence id a-1, sequence number 7)"
        );
    }
}
