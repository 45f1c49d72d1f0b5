//! [`CassandraConfig`]: every setting of the driver, with defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use persistence_api::{Error, Result};
use serde::{Deserialize, Serialize};

/// The consistency level of reads and writes (LWTs use the matching serial level).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsistencyLevel {
    /// A quorum of all replicas; lightweight transactions use `SERIAL`. The default.
    #[default]
    Quorum,
    /// A quorum of the replicas in the local data centre; LWTs use `LOCAL_SERIAL`.
    LocalQuorum,
    /// One replica (development only: reads may miss acknowledged writes on a cluster).
    One,
}

/// How much time one `tag_views` partition covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeBucket {
    /// One partition per tag and day: for rarely written tags.
    Day,
    /// One partition per tag and hour. The default.
    #[default]
    Hour,
    /// One partition per tag and minute: for tags written thousands of times a minute.
    Minute,
}

impl TimeBucket {
    /// The length of one bucket in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            TimeBucket::Day => 86_400_000,
            TimeBucket::Hour => 3_600_000,
            TimeBucket::Minute => 60_000,
        }
    }

    /// The start (epoch milliseconds) of the bucket holding `millis`.
    pub fn bucket_of(self, millis: i64) -> i64 {
        millis - millis.rem_euclid(self.millis())
    }
}

/// The replication of the keyspace when [`CassandraConfig::create_schema`] creates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class")]
pub enum Replication {
    /// `SimpleStrategy` with a replication factor (development and single-DC test clusters).
    SimpleStrategy {
        /// Copies of each row.
        replication_factor: u32,
    },
    /// `NetworkTopologyStrategy` with a replication factor per data centre.
    NetworkTopologyStrategy {
        /// `(data centre, replication factor)` pairs.
        data_centers: Vec<(String, u32)>,
    },
}

impl Default for Replication {
    fn default() -> Self {
        Replication::SimpleStrategy {
            replication_factor: 1,
        }
    }
}

impl Replication {
    /// The CQL map literal of this replication.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::SimpleStrategy { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopologyStrategy { data_centers } => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in data_centers {
                    s.push_str(&format!(", '{}': {rf}", dc.replace('\'', "''")));
                }
                s.push('}');
                s
            }
        }
    }
}

/// The names of the tables, all in [`CassandraConfig::keyspace`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableNames {
    /// The events, partitioned by `(persistence_id, partition_nr)`.
    pub messages: String,
    /// The tagged events, partitioned by `(tag_name, timebucket)`.
    pub tag_views: String,
    /// Per `(persistence_id, tag)`: the last tag sequence number written.
    pub tag_write_progress: String,
    /// Per `persistence_id`: the sequence number up to which tag rows are written.
    pub tag_scanning: String,
    /// Per tag: the earliest time buckets written, where a query from the start begins.
    pub tag_buckets: String,
    /// Per `persistence_id`: `deleted_to`.
    pub metadata: String,
    /// Every persistence id that wrote an event.
    pub all_persistence_ids: String,
    /// The snapshots.
    pub snapshots: String,
    /// Per projection `(name, key)`: its offset and version (see `offsets.rs`).
    pub projection_offsets: String,
    /// Per `persistence_id`: its durable state and revision (see `durable_state.rs`).
    pub durable_state: String,
    /// The durable-state changes, partitioned by `(tag, timebucket)`, in time order.
    pub durable_state_changes: String,
    /// Per tag: the earliest time buckets of `durable_state_changes` written, where a
    /// change query from the start begins.
    pub durable_state_buckets: String,
}

impl Default for TableNames {
    fn default() -> Self {
        TableNames {
            messages: "messages".into(),
            tag_views: "tag_views".into(),
            tag_write_progress: "tag_write_progress".into(),
            tag_scanning: "tag_scanning".into(),
            tag_buckets: "tag_buckets".into(),
            metadata: "metadata".into(),
            all_persistence_ids: "all_persistence_ids".into(),
            snapshots: "snapshots".into(),
            projection_offsets: "projection_offsets".into(),
            durable_state: "durable_state".into(),
            durable_state_changes: "durable_state_changes".into(),
            durable_state_buckets: "durable_state_buckets".into(),
        }
    }
}

/// The configuration of the Cassandra backend. Every key has a default (`#[serde(default)]`),
/// so a TOML section needs only what differs:
///
/// ```
/// let config: persistence_cassandra::CassandraConfig = toml::from_str(r#"
///     contact_points = ["10.0.0.1:9042", "10.0.0.2:9042"]
///     local_datacenter = "eu-west"
///     consistency = "LOCAL_QUORUM"
///     tag_time_bucket = "Minute"
///     eventual_consistency_delay_ms = 5000
///     replication = { class = "NetworkTopologyStrategy", data_centers = [["eu-west", 3]] }
/// "#).unwrap();
/// assert_eq!(
///     config.replication.to_cql(),
///     "{'class': 'NetworkTopologyStrategy', 'eu-west': 3}"
/// );
/// assert_eq!(config.eventual_consistency_delay, std::time::Duration::from_secs(5));
/// assert_eq!(config.keyspace, "pekko");
/// assert_eq!(config.target_partition_size, 500_000);
/// ```
///
/// A managed cluster (DataStax Astra, Amazon Keyspaces, a TLS-only cluster of one's own):
/// TLS verified against the provider's CA, the password read from a file at open:
///
/// ```
/// let config: persistence_cassandra::CassandraConfig = toml::from_str(r#"
///     contact_points = ["cassandra.eu-west-1.amazonaws.com:9142"]
///     local_datacenter = "eu-west-1"
///     consistency = "LOCAL_QUORUM"
///     tls = true
///     tls_ca_file = "/etc/app/sf-class2-root.pem"
///     username = "app-at-123456789012"
///     password_file = "/run/secrets/cassandra-password"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// // Debug never shows a password (nor, here, the file's contents: it is read at open).
/// assert!(format!("{config:?}").contains("password_file"));
///
/// // A password both inline and in a file is refused.
/// let both: persistence_cassandra::CassandraConfig = toml::from_str(r#"
///     password = "secret"
///     password_file = "/run/secrets/cassandra-password"
/// "#).unwrap();
/// let err = both.validate().unwrap_err();
/// assert_eq!(err.kind(), persistence_api::ErrorKind::ConfigInvalid);
/// assert!(!err.to_string().contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraConfig {
    /// `host:port` of one or more nodes (default `["127.0.0.1:9042"]`).
    #[serde(deserialize_with = "one_or_many")]
    pub contact_points: Vec<String>,
    /// The data centre whose nodes are preferred (token-aware within it); `None` for any.
    pub local_datacenter: Option<String>,
    /// User name, if the cluster requires authentication (`PasswordAuthenticator`): sent
    /// with [`password`](Self::password) or the contents of
    /// [`password_file`](Self::password_file).
    pub username: Option<String>,
    /// Password (never printed by `Debug`, nor in errors or logs). Prefer `password_file`.
    pub password: Option<String>,
    /// A file whose contents, without a trailing newline, are the password: read at
    /// [`crate::open`] (a Kubernetes or Docker secret). Not together with `password`.
    pub password_file: Option<PathBuf>,
    /// Connect with TLS (default false; needs the cargo feature `tls`, on by default). The
    /// server's certificate is verified against [`tls_ca_file`](Self::tls_ca_file) and
    /// [`tls_server_name`](Self::tls_server_name).
    pub tls: bool,
    /// The PEM file of the certificate authorities to trust; default: the operating system's
    /// roots (rustls-native-certs). Only with `tls = true`.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM, its chain after it), for clusters that require one
    /// (`require_client_auth`). Together with [`tls_key_file`](Self::tls_key_file).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The name every node's certificate must carry. Default: the host part of the contact
    /// point a node was reached through, a DNS name or an IP address (an IP address is
    /// checked against the certificate's IP SANs); nodes found through the cluster's
    /// topology, not a contact point, are checked against their IP address. Set it when the
    /// certificates name the cluster (`cassandra.example.com`) and the contact points are
    /// addresses.
    pub tls_server_name: Option<String>,
    /// The keyspace of all tables (default `pekko`, as pekko-persistence-cassandra's journal).
    pub keyspace: String,
    /// The table names.
    pub tables: TableNames,
    /// A logical namespace inside the keyspace (`[a-z0-9_]`, default empty = none): prefixes
    /// persistence ids and tag names in every key, so several journals, or test runs, share
    /// one keyspace's tables without seeing each other.
    pub namespace: String,
    /// Read and write consistency (default `QUORUM`).
    pub consistency: ConsistencyLevel,
    /// Events per `messages` partition (default 500,000): `partition_nr = (sequence_nr - 1) / this`.
    pub target_partition_size: u64,
    /// The time span of one `tag_views` partition (default `Hour`).
    pub tag_time_bucket: TimeBucket,
    /// Guard every atomic write with a lightweight transaction so a second writer gets
    /// `Conflict` instead of overwriting (default true). Off saves the Paxos round trips
    /// (see the README's figures) and is only safe with a single writer per id.
    pub overwrite_guard: bool,
    /// Rows per page of replays and queries (default 1,000): bounds the memory of a replay.
    pub page_size: u32,
    /// Create the keyspace and the tables when missing, at [`crate::open`] (default true).
    /// Where several processes first start at once on a new cluster, concurrent schema
    /// changes can break Cassandra's schema agreement: there apply [`crate::schema_cql`]
    /// by hand and set it to false.
    pub create_schema: bool,
    /// The keyspace's replication when `create_schema` creates it.
    pub replication: Replication,
    /// How long events-by-tag waits before reading a stretch of time, so that writes still
    /// in flight (and writers' clock skew) land first (default 2 s).
    #[serde(
        with = "persistence_api::duration_ms",
        rename = "eventual_consistency_delay_ms"
    )]
    pub eventual_consistency_delay: Duration,
    /// How often live queries look for new events (default 1 s).
    #[serde(with = "persistence_api::duration_ms", rename = "poll_interval_ms")]
    pub poll_interval: Duration,
    /// How long events-by-tag keeps looking for a missing tagged event (a gap in an id's tag
    /// sequence numbers) before it fails the stream (default 10 s).
    #[serde(with = "persistence_api::duration_ms", rename = "gap_timeout_ms")]
    pub gap_timeout: Duration,
    /// How far before a gap events-by-tag looks back for the missing events (default 1 min).
    #[serde(with = "persistence_api::duration_ms", rename = "gap_lookback_ms")]
    pub gap_lookback: Duration,
    /// The client-side timeout of one request (default 12 s).
    #[serde(with = "persistence_api::duration_ms", rename = "request_timeout_ms")]
    pub request_timeout: Duration,
    /// How long opening one connection may take: TCP connect, the TLS handshake and the CQL
    /// handshake with authentication (default 5 s). A server that accepts the connection and
    /// then stays silent fails within it.
    #[serde(with = "persistence_api::duration_ms", rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            local_datacenter: None,
            username: None,
            password: None,
            password_file: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            keyspace: "pekko".into(),
            tables: TableNames::default(),
            namespace: String::new(),
            consistency: ConsistencyLevel::Quorum,
            target_partition_size: 500_000,
            tag_time_bucket: TimeBucket::Hour,
            overwrite_guard: true,
            page_size: 1000,
            create_schema: false,
            replication: Replication::default(),
            eventual_consistency_delay: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            gap_timeout: Duration::from_secs(10),
            gap_lookback: Duration::from_secs(60),
            request_timeout: Duration::from_secs(12),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for CassandraConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassandraConfig")
            .field("contact_points", &self.contact_points)
            .field("local_datacenter", &self.local_datacenter)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_server_name", &self.tls_server_name)
            .field("keyspace", &self.keyspace)
            .field("tables", &self.tables)
            .field("namespace", &self.namespace)
            .field("consistency", &self.consistency)
            .field("target_partition_size", &self.target_partition_size)
            .field("tag_time_bucket", &self.tag_time_bucket)
            .field("overwrite_guard", &self.overwrite_guard)
            .field("page_size", &self.page_size)
            .field("create_schema", &self.create_schema)
            .field("replication", &self.replication)
            .field(
                "eventual_consistency_delay",
                &self.eventual_consistency_delay,
            )
            .field("poll_interval", &self.poll_interval)
            .field("gap_timeout", &self.gap_timeout)
            .field("gap_lookback", &self.gap_lookback)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

impl CassandraConfig {
    /// The TLS and credential keys: which go together, which exclude each other.
    fn validate_security(&self) -> Result<()> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Error::config(
                "cassandra: password and password_file are both set: keep one",
            ));
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            return Err(Error::config(
                "cassandra: a password (password or password_file) is set without username",
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(Error::config(
                    "cassandra: tls_cert_file is set without tls_key_file: a client certificate needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "cassandra: tls_key_file is set without tls_cert_file: a client key needs its certificate",
                ))
            }
            _ => {}
        }
        if !self.tls {
            for (key, set) in [
                ("tls_ca_file", self.tls_ca_file.is_some()),
                ("tls_cert_file", self.tls_cert_file.is_some()),
                ("tls_server_name", self.tls_server_name.is_some()),
            ] {
                if set {
                    return Err(Error::config(format!(
                        "cassandra: {key} is set but tls is false: set tls = true to connect with TLS"
                    )));
                }
            }
        }
        if self.tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "cassandra: tls = true, but persistence-cassandra was built without its cargo feature `tls`",
            ));
        }
        for (key, path) in [
            ("password_file", &self.password_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(Error::config(format!("cassandra: {key} must not be empty")));
            }
        }
        if self.tls_server_name.as_deref() == Some("") {
            return Err(Error::config(
                "cassandra: tls_server_name must not be empty",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "cassandra: connect_timeout_ms must be at least 1",
            ));
        }
        Ok(())
    }

    /// The password to send: `password`, or the contents of `password_file` without a
    /// trailing newline (read now). A missing or unreadable file is `ConfigInvalid` naming
    /// the path, never the contents.
    pub(crate) fn resolved_password(&self) -> Result<Option<String>> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!(
                    "cassandra: cannot read password_file {}: {e}",
                    path.display()
                ))
            })?;
            let password = text.strip_suffix('\n').unwrap_or(&text);
            let password = password.strip_suffix('\r').unwrap_or(password);
            return Ok(Some(password.to_string()));
        }
        Ok(self.password.clone())
    }

    /// Checks the values; an invalid one is an `ErrorKind::ConfigInvalid` error.
    pub fn validate(&self) -> Result<()> {
        if self.contact_points.is_empty() {
            return Err(Error::config("cassandra: contact_points must not be empty"));
        }
        self.validate_security()?;
        let t = &self.tables;
        for name in [
            &self.keyspace,
            &t.messages,
            &t.tag_views,
            &t.tag_write_progress,
            &t.tag_scanning,
            &t.tag_buckets,
            &t.metadata,
            &t.all_persistence_ids,
            &t.snapshots,
            &t.projection_offsets,
            &t.durable_state,
            &t.durable_state_changes,
            &t.durable_state_buckets,
        ] {
            if !is_identifier(name) {
                return Err(Error::config(format!(
                    "cassandra: {name:?} is not a valid keyspace or table name (a letter, then letters, digits or _, at most 48)"
                )));
            }
        }
        if !self
            .namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(Error::config(format!(
                "cassandra: namespace {:?} may hold only [a-z0-9_]",
                self.namespace
            )));
        }
        if self.target_partition_size == 0 || self.target_partition_size > i64::MAX as u64 {
            return Err(Error::config(
                "cassandra: target_partition_size must be at least 1",
            ));
        }
        if self.page_size < 1 || self.page_size > i32::MAX as u32 {
            return Err(Error::config(
                "cassandra: page_size must be between 1 and 2,147,483,647",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config("cassandra: poll_interval must not be zero"));
        }
        Ok(())
    }
}

/// Accepts `["a:9042", "b:9042"]` or one string `"a:9042,b:9042"` (as an environment
/// variable such as `PERSISTENCE_CASSANDRA_CONTACT_POINTS` gives it).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod security_tests {
    use super::CassandraConfig;
    use persistence_api::ErrorKind;

    fn invalid(toml_text: &str) -> String {
        let config: CassandraConfig = toml::from_str(toml_text).unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
        err.to_string()
    }

    #[test]
    fn the_tls_and_credential_keys_are_checked_together() {
        assert!(
            invalid("username = \"u\"\npassword = \"s3cret\"\npassword_file = \"/p\"")
                .contains("password and password_file")
        );
        assert!(invalid("password = \"s3cret\"").contains("without username"));
        assert!(invalid("tls = true\ntls_cert_file = \"/c.pem\"").contains("tls_key_file"));
        assert!(invalid("tls = true\ntls_key_file = \"/c.key\"").contains("tls_cert_file"));
        assert!(invalid("tls_ca_file = \"/ca.pem\"").contains("tls = true"));
        assert!(invalid("tls = true\ntls_server_name = \"\"").contains("tls_server_name"));
        assert!(invalid("connect_timeout_ms = 0").contains("connect_timeout_ms"));
        let ok: CassandraConfig = toml::from_str(
            "tls = true\ntls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"\ntls_server_name = \"localhost\"\nusername = \"u\"\npassword_file = \"/p\"\nconnect_timeout_ms = 2000",
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.connect_timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let config: CassandraConfig =
            toml::from_str("username = \"u\"\npassword = \"s3cret-pw\"\npassword_file = \"/p\"")
                .unwrap();
        assert!(!format!("{config:?}").contains("s3cret-pw"));
        assert!(!config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("s3cret-pw"));
    }

    #[test]
    fn password_file_is_read_without_its_trailing_newline() {
        let path = std::env::temp_dir().join(format!("cassandra-pw-{}", std::process::id()));
        std::fs::write(&path, "pw with spaces \n").unwrap();
        let config = CassandraConfig {
            username: Some("u".into()),
            password_file: Some(path.clone()),
            ..CassandraConfig::default()
        };
        assert_eq!(
            config.resolved_password().unwrap().as_deref(),
            Some("pw with spaces ")
        );
        std::fs::remove_file(&path).unwrap();
        let err = config.resolved_password().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
        assert!(err.to_string().contains("password_file"), "{err}");
    }
}

#[cfg(test)]
mod contact_points_tests {
    use super::CassandraConfig;

    #[test]
    fn contact_points_from_a_list_or_a_comma_separated_string() {
        let a: CassandraConfig = toml::from_str(r#"contact_points = "h1:9042, h2:9043""#).unwrap();
        let b: CassandraConfig =
            toml::from_str(r#"contact_points = ["h1:9042", "h2:9043"]"#).unwrap();
        assert_eq!(a.contact_points, vec!["h1:9042", "h2:9043"]);
        assert_eq!(a.contact_points, b.contact_points);
    }
}
