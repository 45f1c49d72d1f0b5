//! Configuration of the two databases: [`PostgresConfig`] and [`SqliteConfig`].
//!
//! Both are serde structs with `#[serde(default)]`, so a config file names only what it
//! changes. The password is never printed by `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use persistence_api::{Error, Result};
use serde::{Deserialize, Serialize};

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
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user[:password]@host:port/database`. Default
    /// `postgres://localhost/postgres`.
    pub url: String,
    /// Password; overrides one in `url` when set. Hidden from `Debug`.
    pub password: Option<String>,
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
            schema: "public".into(),
            namespace: String::new(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            page_size: 500,
            notify: true,
            tag_order_lock: true,
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

    /// Checks the values that end up in SQL text or pool settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(Error::config(format!(
                "postgres.url must start with postgres:// or postgresql:// (got {:?})",
                redact_url(&self.url)
            )));
        }
        check_identifier("schema", &self.schema, false)?;
        check_identifier("namespace", &self.namespace, true)?;
        check_common(self.max_connections, self.page_size, self.poll_interval)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("schema", &self.schema)
            .field("namespace", &self.namespace)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("page_size", &self.page_size)
            .field("notify", &self.notify)
            .field("tag_order_lock", &self.tag_order_lock)
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
        check_common(self.max_connections, self.page_size, self.poll_interval)
    }
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
