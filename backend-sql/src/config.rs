//! Configuration of the two databases: [`PostgresConfig`] and [`SqliteConfig`].
//!
//! Both are serde structs with `#[serde(default)]`, so a config file names only what it
//! changes. The password is never printed by `Debug` (nor the password file's contents,
//! which are read only when the stores are opened).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use persistence_api::{Error, Result};
use serde::{Deserialize, Serialize};

/// Whether and how the PostgreSQL connection uses TLS: libpq's `sslmode`, with libpq's
/// meanings. Written in configuration as `disable`, `prefer`, `require`, `verify-ca` or
/// `verify-full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP, never TLS.
    Disable,
    /// TLS when the server offers it, plain TCP otherwise; the server's certificate is not
    /// checked (protects against eavesdropping, not against an impostor). The default, as
    /// in libpq.
    #[default]
    Prefer,
    /// TLS or no connection; the server's certificate is not checked.
    Require,
    /// TLS or no connection; the server's certificate must chain to a trusted CA
    /// (`tls_ca_file`, else the operating system's roots). The host name is not checked.
    VerifyCa,
    /// As [`SslMode::VerifyCa`], and the certificate must be for the host name of `url`.
    /// What a server reached over a network you do not control (a cloud database) needs.
    VerifyFull,
}

impl SslMode {
    /// The name in configuration (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against trusted CAs.
    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the PostgreSQL backend (the `[postgres]` section of the facade's configuration).
///
/// ```
/// use persistence_sql::PostgresConfig;
/// let config: PostgresConfig = toml::from_str(r#"
///     url = "postgres://app@db.internal:5432/app"
///     password = "s3cret"
///     schema = "journal"
/// "#).unwrap();
/// assert_eq!(config.max_connections, 10);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
///
/// A cloud database (TLS with the host name checked against the provider's CA, the
/// password in a file a secret manager mounts):
///
/// ```
/// use persistence_sql::{PostgresConfig, SslMode};
/// let config: PostgresConfig = toml::from_str(r#"
///     url = "postgres://app@mydb.abc123.eu-west-1.rds.amazonaws.com:5432/app"
///     ssl_mode = "verify-full"
///     tls_ca_file = "/etc/ssl/rds-global-bundle.pem"
///     password_file = "/run/secrets/db-password"
/// "#).unwrap();
/// assert_eq!(config.ssl_mode, Some(SslMode::VerifyFull));
/// assert!(config.validate().is_ok());
/// ```
///
/// Certificate authentication (the client certificate's CN is the role):
///
/// ```
/// use persistence_sql::PostgresConfig;
/// let config: PostgresConfig = toml::from_str(r#"
///     url = "postgres://app@db.internal:5432/app"
///     ssl_mode = "verify-full"
///     tls_ca_file = "/etc/app/ca.pem"
///     tls_cert_file = "/etc/app/client.pem"
///     tls_key_file = "/etc/app/client.key"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user[:password]@host:port/database[?sslmode=...]`.
    /// Default `postgres://localhost/postgres`.
    pub url: String,
    /// Password; overrides one in `url` when set. Hidden from `Debug`. Not together with
    /// `password_file`.
    pub password: Option<String>,
    /// A file whose contents (one trailing newline trimmed) are the password, read when the
    /// stores are opened (a mounted secret, a Kubernetes secret volume). Overrides a
    /// password in `url`; not together with `password`.
    pub password_file: Option<PathBuf>,
    /// TLS: `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (see
    /// [`SslMode`]). When set it overrides an `sslmode` in `url`; unset, the `url`'s
    /// `sslmode` applies, else `prefer` (libpq's default).
    pub ssl_mode: Option<SslMode>,
    /// A PEM file of the CA certificates to trust for the server's certificate (with
    /// `verify-ca`/`verify-full`); unset, the operating system's root certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// A PEM client certificate, for certificate authentication (PostgreSQL's `cert` in
    /// `pg_hba.conf`: the certificate's CN is the role). Together with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM (PKCS#8, PKCS#1 or SEC1) private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The schema holding the tables (created when missing). Default `public`.
    pub schema: String,
    /// Keeps this journal's tables apart from others' in the same database: the tables
    /// are named `<namespace>_<table>` (`[A-Za-z0-9_]*`). Default empty: the plain names.
    pub namespace: String,
    /// Most pooled connections. Default 10.
    pub max_connections: u32,
    /// Pooled connections kept open. Default 0.
    pub min_connections: u32,
    /// How long to wait for a free pooled connection. Default 30 s.
    #[serde(with = "persistence_api::duration_ms", rename = "acquire_timeout_ms")]
    pub acquire_timeout: Duration,
    /// How often live queries poll when no notification woke them. Default 1 s.
    #[serde(with = "persistence_api::duration_ms", rename = "poll_interval_ms")]
    pub poll_interval: Duration,
    /// Rows per query page: the bound on memory of replays and queries. Default 500.
    pub page_size: u32,
    /// Send `NOTIFY` on each write so live queries of other processes wake at once
    /// (they poll every `poll_interval` regardless). Default true.
    pub notify: bool,
    /// Serialize writers of one tag with a transaction-scoped advisory lock so tag
    /// orderings commit in order (see the README, "The visibility gap"). Turning it off
    /// lets a live or resumed tag query skip events under concurrent writers; it exists
    /// for measurements only. Default true.
    pub tag_order_lock: bool,
    /// Group commit: single atomic writes (one per `write_events` call) arriving from
    /// concurrent callers while a commit is in flight are gathered and committed together
    /// in one transaction (one sync to disk), each keeping its own result (a `Conflict`
    /// fails that write alone). A lone writer is not delayed. See the README, "Group
    /// commit", for the measured effect. Default true.
    pub group_commit: bool,
    /// How long a group waits for more writes before it commits, on top of the time a
    /// commit in flight already gives. Default 0: a group is what arrived while the
    /// previous commit ran.
    #[serde(
        with = "persistence_api::duration_ms",
        rename = "group_commit_window_ms"
    )]
    pub group_commit_window: Duration,
    /// Most events in one group (a larger atomic write still goes, alone). Default 1000.
    pub group_commit_max_events: u32,
    /// Most bytes (payloads, manifests, ids, tags, metadata) in one group (a larger atomic
    /// write still goes, alone). Default 8 MiB.
    pub group_commit_max_bytes: u64,
    /// Create the schema (run the embedded migrations that have not run) when the stores
    /// are opened. Default true; with false, run [`crate::create_schema`] (or the SQL of
    /// [`crate::schema::postgres_ddl`]) by hand.
    pub create_schema: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://localhost/postgres".into(),
            password: None,
            password_file: None,
            ssl_mode: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            schema: "public".into(),
            namespace: String::new(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            page_size: 500,
            notify: true,
            tag_order_lock: true,
            group_commit: true,
            group_commit_window: Duration::ZERO,
            group_commit_max_events: 1000,
            group_commit_max_bytes: 8 << 20,
            create_schema: true,
        }
    }
}

impl PostgresConfig {
    /// The prefix of every table name: `<namespace>_`, or nothing for the empty namespace.
    pub fn table_prefix(&self) -> String {
        table_prefix(&self.namespace)
    }

    /// The defaults with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Sets the schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the TLS mode (overriding an `sslmode` of the URL).
    pub fn with_ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// Checks the values that end up in SQL text or pool settings, and that the TLS and
    /// password keys go together (the files are read when the stores are opened).
    pub fn validate(&self) -> Result<()> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Error::config(
                "postgres.password and postgres.password_file are both set: keep one",
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(Error::config(
                    "postgres.tls_cert_file is set without postgres.tls_key_file: a client \
                     certificate needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "postgres.tls_key_file is set without postgres.tls_cert_file: a client \
                     key needs its certificate",
                ))
            }
            _ => {}
        }
        if self.ssl_mode == Some(SslMode::Disable)
            && (self.tls_ca_file.is_some() || self.tls_cert_file.is_some())
        {
            return Err(Error::config(
                "postgres.ssl_mode is disable but TLS files (tls_ca_file, tls_cert_file) are set",
            ));
        }
        for (key, path) in [
            ("password_file", &self.password_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(Error::config(format!("postgres.{key} must not be empty")));
            }
        }
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(Error::config(format!(
                "postgres.url must start with postgres:// or postgresql:// (got {:?})",
                redact_url(&self.url)
            )));
        }
        check_identifier("schema", &self.schema, false)?;
        check_identifier("namespace", &self.namespace, true)?;
        check_group_commit(
            "postgres",
            self.group_commit_max_events,
            self.group_commit_max_bytes,
        )?;
        check_common(self.max_connections, self.page_size, self.poll_interval)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("ssl_mode", &self.ssl_mode)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("schema", &self.schema)
            .field("namespace", &self.namespace)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("page_size", &self.page_size)
            .field("notify", &self.notify)
            .field("tag_order_lock", &self.tag_order_lock)
            .field("group_commit", &self.group_commit)
            .field("group_commit_window", &self.group_commit_window)
            .field("group_commit_max_events", &self.group_commit_max_events)
            .field("group_commit_max_bytes", &self.group_commit_max_bytes)
            .field("create_schema", &self.create_schema)
            .finish()
    }
}

/// How hard SQLite syncs to disk at commit (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Sync at every commit: a committed write survives power loss. The default.
    #[default]
    Full,
    /// Sync at checkpoints (WAL): a committed write survives a crash of the process, the
    /// last ones may be lost on power loss; the database stays consistent.
    Normal,
    /// Never sync (tests and throw-away data).
    Off,
}

/// Settings of the SQLite backend (the `[sqlite]` section of the facade's configuration).
///
/// ```
/// use persistence_sql::SqliteConfig;
/// let config: SqliteConfig = toml::from_str(r#"path = "data/journal.db""#).unwrap();
/// assert_eq!(config.path.to_str(), Some("data/journal.db"));
/// assert_eq!(config.page_size, 500);
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; it and its parent directories are created when missing.
    /// Default `persistence.db`.
    pub path: PathBuf,
    /// Keeps this journal's tables apart from others' in the same database: the tables
    /// are named `<namespace>_<table>` (`[A-Za-z0-9_]*`). Default empty: the plain names.
    pub namespace: String,
    /// Most pooled connections (readers; writes take turns on one). Default 4.
    pub max_connections: u32,
    /// How long a statement waits for another process's lock on the file. Default 5 s.
    #[serde(with = "persistence_api::duration_ms", rename = "busy_timeout_ms")]
    pub busy_timeout: Duration,
    /// How often live queries poll for writes of other processes (writes through the same
    /// opened stores wake them at once). Default 1 s.
    #[serde(with = "persistence_api::duration_ms", rename = "poll_interval_ms")]
    pub poll_interval: Duration,
    /// Rows per query page: the bound on memory of replays and queries. Default 500.
    pub page_size: u32,
    /// `PRAGMA synchronous`. Default `full`.
    pub synchronous: SqliteSync,
    /// Group commit: single atomic writes (one per `write_events` call) arriving from
    /// concurrent callers while a commit is in flight are gathered and committed together
    /// in one transaction (one sync to disk), each keeping its own result (a `Conflict`
    /// fails that write alone). A lone writer is not delayed. See the README, "Group
    /// commit", for the measured effect. Default true.
    pub group_commit: bool,
    /// How long a group waits for more writes before it commits, on top of the time a
    /// commit in flight already gives. Default 0: a group is what arrived while the
    /// previous commit ran.
    #[serde(
        with = "persistence_api::duration_ms",
        rename = "group_commit_window_ms"
    )]
    pub group_commit_window: Duration,
    /// Most events in one group (a larger atomic write still goes, alone). Default 1000.
    pub group_commit_max_events: u32,
    /// Most bytes (payloads, manifests, ids, tags, metadata) in one group (a larger atomic
    /// write still goes, alone). Default 8 MiB.
    pub group_commit_max_bytes: u64,
    /// Create the schema (run the embedded migrations that have not run) when the stores
    /// are opened. Default true; with false, run [`crate::create_schema`] (or the SQL of
    /// [`crate::schema::sqlite_ddl`]) by hand.
    pub create_schema: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("persistence.db"),
            namespace: String::new(),
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            page_size: 500,
            synchronous: SqliteSync::Full,
            group_commit: true,
            group_commit_window: Duration::ZERO,
            group_commit_max_events: 1000,
            group_commit_max_bytes: 8 << 20,
            create_schema: true,
        }
    }
}

impl SqliteConfig {
    /// The prefix of every table name: `<namespace>_`, or nothing for the empty namespace.
    pub fn table_prefix(&self) -> String {
        table_prefix(&self.namespace)
    }

    /// The defaults with `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            ..Default::default()
        }
    }

    /// Checks the values that end up in SQL text or pool settings.
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config("sqlite.path must not be empty"));
        }
        check_identifier("namespace", &self.namespace, true)?;
        check_group_commit(
            "sqlite",
            self.group_commit_max_events,
            self.group_commit_max_bytes,
        )?;
        check_common(self.max_connections, self.page_size, self.poll_interval)
    }
}

/// The group-commit bounds must let at least one event through.
fn check_group_commit(section: &str, max_events: u32, max_bytes: u64) -> Result<()> {
    if max_events == 0 {
        return Err(Error::config(format!(
            "{section}.group_commit_max_events must be at least 1"
        )));
    }
    if max_bytes == 0 {
        return Err(Error::config(format!(
            "{section}.group_commit_max_bytes must be at least 1"
        )));
    }
    Ok(())
}

/// `<namespace>_`, or nothing for the empty namespace.
fn table_prefix(namespace: &str) -> String {
    if namespace.is_empty() {
        String::new()
    } else {
        format!("{namespace}_")
    }
}

fn check_common(max_connections: u32, page_size: u32, poll_interval: Duration) -> Result<()> {
    if max_connections == 0 {
        return Err(Error::config("max_connections must be at least 1"));
    }
    if page_size == 0 {
        return Err(Error::config("page_size must be at least 1"));
    }
    if poll_interval.is_zero() {
        return Err(Error::config("poll_interval must be above zero"));
    }
    Ok(())
}

/// Names go into SQL text (quoted), so only `[A-Za-z0-9_]` is accepted.
fn check_identifier(key: &str, value: &str, may_be_empty: bool) -> Result<()> {
    if value.is_empty() && !may_be_empty {
        return Err(Error::config(format!("{key} must not be empty")));
    }
    if value.len() > 40 {
        return Err(Error::config(format!(
            "{key} {value:?} is longer than 40 characters"
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(Error::config(format!(
            "{key} {value:?} may hold only ASCII letters, digits and '_' (found {c:?})"
        )));
    }
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user:<hidden>@host/db`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:<hidden>{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_hidden() {
        let mut c = PostgresConfig::new("postgres://u:pw1@h:5432/d");
        c.password = Some("pw2".into());
        let s = format!("{c:?}");
        assert!(!s.contains("pw1") && !s.contains("pw2"), "{s}");
        assert!(s.contains("postgres://u:<hidden>@h:5432/d"), "{s}");
    }

    #[test]
    fn tls_and_password_keys() {
        let c: PostgresConfig = toml::from_str(
            r#"
            ssl_mode = "verify-ca"
            tls_ca_file = "ca.pem"
            password_file = "pw"
            "#,
        )
        .unwrap();
        assert_eq!(c.ssl_mode, Some(SslMode::VerifyCa));
        assert!(c.validate().is_ok());
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let c: PostgresConfig = toml::from_str(&format!("ssl_mode = {text:?}")).unwrap();
            assert_eq!(c.ssl_mode, Some(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert!(toml::from_str::<PostgresConfig>("ssl_mode = \"verify_full\"").is_err());

        let both = PostgresConfig {
            password: Some("x".into()),
            password_file: Some("pw".into()),
            ..Default::default()
        };
        let e = both.validate().unwrap_err();
        assert_eq!(e.kind(), persistence_api::ErrorKind::ConfigInvalid);

        let cert_only = PostgresConfig {
            tls_cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            cert_only.validate().unwrap_err().kind(),
            persistence_api::ErrorKind::ConfigInvalid
        );
        let mut key_only = PostgresConfig {
            tls_key_file: Some("c.key".into()),
            ..Default::default()
        };
        assert!(key_only.validate().is_err());
        key_only.tls_cert_file = Some("c.pem".into());
        assert!(key_only.validate().is_ok());
        let s = format!("{key_only:?}");
        assert!(s.contains("c.key"), "{s}");
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(PostgresConfig::default().validate().is_ok());
        assert!(PostgresConfig::default()
            .with_schema("a\"b")
            .validate()
            .is_err());
        assert!(PostgresConfig::default()
            .with_schema("")
            .validate()
            .is_err());
        let mut s = SqliteConfig::new("x.db");
        s.namespace = "p-".into();
        assert!(s.validate().is_err());
    }
}
