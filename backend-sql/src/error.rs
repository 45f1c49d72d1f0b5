//! The one place where sqlx's errors become [`persistence_api::Error`]s: [`SqlError::kind`]
//! with [`DATABASE_CODES`] is the table from sqlx's errors and the databases' error codes
//! to the public kinds.
//!
//! The errors name no operation, persistence id or sequence numbers of the call: the
//! checking layer (`persistence_api::Stores`) adds those to every error of a store. What
//! they do name is what the call cannot know: the record and column that do not decode.
//! Outside the stores (opening a database, migrating it) [`err_in`] names the operation.

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

/// PostgreSQL SQLSTATEs, as `code()` of sqlx's database error spells them
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
mod sqlstate {
    /// Class 08, connection exception (a prefix).
    pub const CONNECTION_EXCEPTION: &str = "08";
    /// Class 53, insufficient resources: too many connections, disk full, out of memory
    /// (a prefix).
    pub const INSUFFICIENT_RESOURCES: &str = "53";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// Class 28, invalid authorization specification: no `pg_hba.conf` line admits the
    /// connection, a certificate that does not match the role (28000), a wrong password
    /// or unknown user (28P01). A prefix.
    pub const INVALID_AUTHORIZATION: &str = "28";
    /// The password did not match, or the user does not exist (the server does not say
    /// which).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub const INVALID_PASSWORD: &str = "28P01";
    /// The database of the URL does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
}

/// SQLite result codes (<https://www.sqlite.org/rescode.html>). sqlx reports the extended
/// code in decimal; its low byte is the primary code.
mod sqlite_code {
    /// `SQLITE_CONSTRAINT_PRIMARYKEY`, as sqlx spells it.
    pub const CONSTRAINT_PRIMARYKEY: &str = "1555";
    /// `SQLITE_CONSTRAINT_UNIQUE`, as sqlx spells it.
    pub const CONSTRAINT_UNIQUE: &str = "2067";
    /// `SQLITE_BUSY` (primary).
    pub const BUSY: i32 = 5;
    /// `SQLITE_LOCKED` (primary).
    pub const LOCKED: i32 = 6;
    /// `SQLITE_IOERR` (primary).
    pub const IOERR: i32 = 10;
    /// `SQLITE_FULL` (primary).
    pub const FULL: i32 = 13;
    /// `SQLITE_CANTOPEN` (primary).
    pub const CANTOPEN: i32 = 14;
}

/// What a row of [`DATABASE_CODES`] matches of a database's error code.
enum Code {
    /// Exactly this code.
    Is(&'static str),
    /// Every PostgreSQL code starting with this (a SQLSTATE class).
    Class(&'static str),
    /// Every SQLite code (digits) of this primary result code, extended or not.
    SqlitePrimary(i32),
}

impl Code {
    /// Whether `code`, of an error from SQLite (`sqlite`) or PostgreSQL, is this row's. A
    /// SQLSTATE may be all digits too (42501), so the database decides which rows apply.
    fn matches(&self, code: &str, sqlite: bool) -> bool {
        match *self {
            Code::Is(c) => code == c,
            Code::Class(prefix) => !sqlite && code.starts_with(prefix),
            Code::SqlitePrimary(primary) => {
                sqlite && code.parse::<i32>().is_ok_and(|n| n & 0xff == primary)
            }
        }
    }
}

/// The public kind of a database's error code: the first row that matches; any other code
/// is [`ErrorKind::Storage`].
const DATABASE_CODES: &[(Code, ErrorKind)] = {
    use sqlite_code as lite;
    use sqlstate as pg;
    use Code::{Class, Is, SqlitePrimary};
    use ErrorKind::{ConfigInvalid, Conflict, Timeout, Unavailable};
    &[
        // Authentication refused, database missing: retrying cannot help, the
        // configuration (or the server's) must change.
        (Class(pg::INVALID_AUTHORIZATION), ConfigInvalid),
        (Is(pg::INVALID_CATALOG_NAME), ConfigInvalid),
        // A taken key: the sequence number of a concurrent writer's event.
        (Is(pg::UNIQUE_VIOLATION), Conflict),
        (Is(lite::CONSTRAINT_UNIQUE), Conflict),
        (Is(lite::CONSTRAINT_PRIMARYKEY), Conflict),
        // PostgreSQL: connection exceptions, shutdowns, cannot connect now.
        (Class(pg::CONNECTION_EXCEPTION), Unavailable),
        (Is(pg::ADMIN_SHUTDOWN), Unavailable),
        (Is(pg::CRASH_SHUTDOWN), Unavailable),
        (Is(pg::CANNOT_CONNECT_NOW), Unavailable),
        (Class(pg::INSUFFICIENT_RESOURCES), Unavailable),
        // Statement or lock timeout, query cancelled.
        (Is(pg::QUERY_CANCELED), Timeout),
        (Is(pg::LOCK_NOT_AVAILABLE), Timeout),
        // Serialization failure, deadlock detected: retry the transaction.
        (Is(pg::SERIALIZATION_FAILURE), Unavailable),
        (Is(pg::DEADLOCK_DETECTED), Unavailable),
        // SQLite: another connection holds the lock.
        (SqlitePrimary(lite::BUSY), Timeout),
        (SqlitePrimary(lite::LOCKED), Timeout),
        // SQLite: the disk or the file.
        (SqlitePrimary(lite::IOERR), Unavailable),
        (SqlitePrimary(lite::FULL), Unavailable),
        (SqlitePrimary(lite::CANTOPEN), Unavailable),
    ]
};

/// The public kind of a database's error code (PostgreSQL SQLSTATEs, five characters;
/// SQLite result codes, digits; `sqlite` says which database answered), by
/// [`DATABASE_CODES`].
fn database_code_kind(code: &str, sqlite: bool) -> ErrorKind {
    DATABASE_CODES
        .iter()
        .find(|(c, _)| c.matches(code, sqlite))
        .map_or(ErrorKind::Storage, |(_, kind)| *kind)
}

/// Whether a database error came from SQLite.
fn from_sqlite(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "sqlite")]
    {
        db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = db;
        false
    }
}

impl SqlError {
    /// The public kind: taken keys are conflicts, lost connections and busy databases are
    /// retryable, stored values that do not decode are corrupt, and so on.
    fn kind(&self) -> ErrorKind {
        let e = match self {
            SqlError::Sqlx(e) => e,
            SqlError::Corrupt(_) => return ErrorKind::Corrupt,
            SqlError::Invariant(_) => return ErrorKind::Unexpected,
        };
        match e {
            sqlx::Error::Database(db) => {
                database_code_kind(db.code().as_deref().unwrap_or(""), from_sqlite(db.as_ref()))
            }
            // A certificate the client or the server refuses: configuration, not a passing
            // network fault.
            sqlx::Error::Io(io) if tls_refusal(io).is_some() => ErrorKind::ConfigInvalid,
            // TLS demanded of a server that does not offer it, a CA file that does not parse.
            sqlx::Error::Tls(_) => ErrorKind::ConfigInvalid,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => ErrorKind::Unavailable,
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

/// The rustls error inside an I/O error of the TLS handshake (sqlx hands rustls's
/// handshake errors up as `io::ErrorKind::InvalidData` errors wrapping them) when it is a
/// refusal: a certificate one side does not accept, or an alert the server sent about ours.
#[cfg(feature = "postgres")]
fn tls_refusal(io: &std::io::Error) -> Option<&rustls::Error> {
    let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::PeerIncompatible(_)
    )
    .then_some(tls)
}

#[cfg(not(feature = "postgres"))]
fn tls_refusal(_io: &std::io::Error) -> Option<&'static std::convert::Infallible> {
    None
}

/// What to say about a certificate of the server that the client refuses.
#[cfg(feature = "postgres")]
fn certificate_cause(
    e: &rustls::CertificateError,
    host: &str,
    ca_file: Option<&std::path::Path>,
) -> String {
    use rustls::CertificateError as C;
    let trust = match ca_file {
        Some(path) => format!("check tls_ca_file ({})", path.display()),
        None => "check tls_ca_file (unset: the operating system's roots are trusted)".to_owned(),
    };
    match e {
        C::UnknownIssuer => {
            format!("the server's certificate is not trusted (UnknownIssuer): {trust}")
        }
        C::BadSignature => {
            format!("the server's certificate is not trusted (BadSignature): {trust}")
        }
        C::NotValidForName => format!(
            "the server's certificate is not valid for host name {host} (NotValidForName): \
             connect by a name the certificate names, or use ssl_mode = \"verify-ca\""
        ),
        C::NotValidForNameContext { presented, .. } => format!(
            "the server's certificate is not valid for host name {host} (NotValidForName; it \
             names {}): connect by a name the certificate names, or use ssl_mode = \"verify-ca\"",
            presented.join(", ")
        ),
        C::Expired => {
            "the server's certificate has expired (Expired): renew it on the server".to_owned()
        }
        C::ExpiredContext { not_after, .. } => format!(
            "the server's certificate has expired (Expired; not after {} s since 1970): renew \
             it on the server",
            not_after.as_secs()
        ),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (NotValidYet): check the clocks".to_owned()
        }
        C::Revoked => "the server's certificate is revoked (Revoked)".to_owned(),
        other => format!("the server's certificate is refused ({other:?}): {trust}"),
    }
}

/// The error of a connection attempt at open (`PgPool::connect_with`), naming the backend,
/// `host:port` and, for what the configuration must fix, the cause in words: the TLS
/// refusals and authentication failures are [`ErrorKind::ConfigInvalid`] (sqlx's pool does
/// not retry them, so they return at once); an unreachable server stays retryable
/// (`Unavailable`, or `Timeout` when the pool gave up within `acquire_timeout`). Neither
/// the password nor any file's contents appear: sqlx's and the server's messages name the
/// user at most.
#[cfg(feature = "postgres")]
pub(crate) fn connect_error(
    e: sqlx::Error,
    host: &str,
    port: u16,
    user: &str,
    config: &crate::config::PostgresConfig,
) -> Error {
    let at = format!("postgres {host}:{port}");
    let mode = config
        .ssl_mode
        .map_or_else(|| "of the url".to_owned(), |m| m.to_string());
    let cause = match &e {
        sqlx::Error::Io(io) => match tls_refusal(io) {
            Some(rustls::Error::InvalidCertificate(c)) => Some(format!(
                "TLS handshake failed: {}",
                certificate_cause(c, host, config.tls_ca_file.as_deref())
            )),
            Some(rustls::Error::AlertReceived(alert)) => Some(format!(
                "TLS handshake failed: the server refused it (alert {alert:?}){}",
                if config.tls_cert_file.is_some() {
                    ": check that tls_cert_file is signed by a CA the server trusts"
                } else {
                    ""
                }
            )),
            Some(other) => Some(format!("TLS handshake failed: {other}")),
            None => None,
        },
        sqlx::Error::Tls(t) => Some(format!("TLS failed (ssl_mode {mode}): {t}")),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let message = db.message();
            if code == sqlstate::INVALID_PASSWORD {
                Some(format!(
                    "{message}: check the user {user:?}, password or password_file"
                ))
            } else if code.starts_with(sqlstate::INVALID_AUTHORIZATION) {
                let hint = if message.contains("certificate") {
                    ": set tls_cert_file and tls_key_file to a certificate whose CN is the user"
                } else if message.contains("pg_hba") {
                    ": the server admits no such connection (user, database, TLS or not)"
                } else {
                    ""
                };
                Some(format!("authentication failed: {message}{hint}"))
            } else if code == sqlstate::INVALID_CATALOG_NAME {
                Some(message.to_owned())
            } else {
                None
            }
        }
        sqlx::Error::Configuration(c) => Some(format!("configuration: {c}")),
        _ => None,
    };
    let e = SqlError::Sqlx(e);
    let kind = e.kind();
    let message = match cause {
        Some(cause) => format!("{at}: {cause}"),
        None if kind == ErrorKind::Timeout => format!(
            "{at}: no connection within acquire_timeout ({} ms): is the server up and reachable?",
            config.acquire_timeout.as_millis()
        ),
        None => format!("{at}: cannot connect"),
    };
    let error = Error::new(kind, message).with_source(e);
    error.with_operation("open").with_backend("postgres")
}

/// Carries an [`SqlError`] through sqlx's row mapping (`try_map`), which wants a
/// `sqlx::Error`; [`to_public`] unwraps it again.
pub(crate) fn into_sqlx(e: SqlError) -> sqlx::Error {
    match e {
        SqlError::Sqlx(e) => e,
        other => sqlx::Error::Decode(Box::new(other)),
    }
}

/// Turns an internal error into the public one; a corrupt column names its record
/// (persistence id and sequence number, more precise than the call's) and the column.
/// The call's operation, id and range are the checking layer's to add.
pub(crate) fn to_public(e: SqlError) -> Error {
    let e = e.unwrap_row_error();
    let kind = e.kind();
    if let SqlError::Corrupt(c) = e {
        let c = *c;
        let mut error = Error::corrupt(c.column, &c.detail);
        if let Some(id) = c.persistence_id {
            error = error.with_persistence_id(id);
        }
        if let Some(seq) = c.sequence_nr {
            error = error.with_sequence_range(seq, seq);
        }
        return error;
    }
    let message = match kind {
        ErrorKind::Conflict => "the sequence number is already taken",
        ErrorKind::Corrupt => "a stored value does not decode",
        _ => "the database call failed",
    };
    Error::new(kind, message).with_source(e)
}

/// [`to_public`] for `.map_err(err)` in the stores.
pub(crate) fn err<E: Into<SqlError>>(e: E) -> Error {
    to_public(e.into())
}

/// [`to_public`] naming `operation`, for what no checking layer wraps (opening a
/// database, migrating it): `.map_err(err_in("migrate"))`.
pub(crate) fn err_in<E: Into<SqlError>>(operation: &'static str) -> impl Fn(E) -> Error {
    move |e| to_public(e.into()).with_operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        const PG: bool = false;
        const LITE: bool = true;
        assert_eq!(database_code_kind("08006", PG), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("40P01", PG), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("57014", PG), ErrorKind::Timeout);
        assert_eq!(database_code_kind("5", LITE), ErrorKind::Timeout);
        assert_eq!(database_code_kind("517", LITE), ErrorKind::Timeout);
        assert_eq!(database_code_kind("13", LITE), ErrorKind::Unavailable);
        assert_eq!(database_code_kind("42P01", PG), ErrorKind::Storage);
        // An all-digit SQLSTATE is not read as a SQLite code: 42501 (insufficient
        // privilege) has low byte 5 (SQLITE_BUSY) but is PostgreSQL's.
        assert_eq!(database_code_kind("42501", PG), ErrorKind::Storage);
        // Unique violations (what sqlx's `is_unique_violation` answers for both databases).
        assert_eq!(database_code_kind("23505", PG), ErrorKind::Conflict);
        assert_eq!(database_code_kind("2067", LITE), ErrorKind::Conflict);
        assert_eq!(database_code_kind("1555", LITE), ErrorKind::Conflict);
        assert_eq!(database_code_kind("19", LITE), ErrorKind::Storage);
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
        // The operation is the caller's to name (in the stores, the checking layer's).
        let e = err_in("replay")(SqlError::Sqlx(through));
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
