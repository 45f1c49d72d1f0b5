//! The one place where sqlx's errors become [`persistence_api::Error`]s.

use persistence_api::{Error, ErrorKind};

/// What the SQL layer can fail with, before it is given a public kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqlError {
    /// An error of sqlx or the database.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// Stored data that breaks an invariant (bad tags column, negative numbers).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl SqlError {
    /// The public kind: unique violations are conflicts, lost connections and busy
    /// databases are retryable, and so on.
    fn kind(&self) -> ErrorKind {
        let SqlError::Sqlx(e) = self else {
            return ErrorKind::Unexpected;
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
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::RowNotFound => ErrorKind::Unexpected,
            _ => ErrorKind::Storage,
        }
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

/// Turns an internal error into the public one, naming the operation.
pub(crate) fn to_public(e: SqlError, operation: &'static str) -> Error {
    let kind = e.kind();
    let message = match kind {
        ErrorKind::Conflict => "the sequence number is already taken".to_string(),
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
        assert_eq!(SqlError::Corrupt("x".into()).kind(), ErrorKind::Unexpected);
    }
}
