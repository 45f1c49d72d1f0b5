//! [`DynamoDbConfig`]: every setting of the DynamoDB backend, with defaults.

use std::fmt;
use std::time::Duration;

use persistence_api::{Error, Result};
use serde::{Deserialize, Serialize};

/// The configuration of the DynamoDB backend (the facade's `[dynamodb]` section).
///
/// Every field has a default (`#[serde(default)]`), so an empty section is valid and talks
/// to the real AWS endpoint of the region found by the standard AWS chain. Credentials set
/// here are hidden from `Debug`; leave them out to use the standard credential chain
/// (environment, profile, web identity, ECS, IMDS).
///
/// ```
/// use persistence_dynamodb::DynamoDbConfig;
/// let c: DynamoDbConfig = toml::from_str(r#"
///     endpoint = "http://127.0.0.1:8000"
///     namespace = "orders"
///     secret_access_key = "s3cr3t"
/// "#).unwrap();
/// assert_eq!(c.journal_table, "persistence_journal");
/// assert!(c.consistent_reads);
/// assert!(!format!("{c:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoDbConfig {
    /// Endpoint URL override, e.g. `http://127.0.0.1:8000` for DynamoDB Local. `None`: the
    /// region's AWS endpoint (which needs the crate feature `tls`).
    pub endpoint: Option<String>,
    /// The region; `None` uses the standard chain (`AWS_REGION`, profile, IMDS), falling
    /// back to `us-east-1` when an endpoint is set.
    pub region: Option<String>,
    /// Static access key id; `None` uses the standard credential chain.
    pub access_key_id: Option<String>,
    /// Static secret access key (hidden from `Debug`).
    pub secret_access_key: Option<String>,
    /// Static session token (hidden from `Debug`).
    pub session_token: Option<String>,
    /// A PEM file of certificate authorities to trust for `https://` endpoints, on top of
    /// the operating system's roots: for a TLS-intercepting corporate proxy, a private
    /// endpoint with its own authority, or a test endpoint. `None`: the OS roots only.
    /// Needs the crate feature `tls`.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The table holding events, the highest/deleted-to item per id, the persistence-id
    /// registry and the tag index.
    pub journal_table: String,
    /// The table holding snapshots and their chunks.
    pub snapshot_table: String,
    /// Keeps this journal's data apart from others' in the same tables: the prefix of every
    /// key it writes, so several journals (services, test runs) share one pair of tables.
    /// `[A-Za-z0-9_.-]`, 1 to 64 characters. Default `default`.
    pub namespace: String,
    /// Strongly consistent reads for replay, queries and snapshots (the default; turning it
    /// off halves read cost but may replay a stale history).
    pub consistent_reads: bool,
    /// Items per `Query` page (DynamoDB also stops a page at 1 MB).
    pub page_size: u32,
    /// How many sequence-number ranges of one replay are fetched concurrently, ahead of
    /// the caller (memory: about `replay_parallelism + 1` pages).
    pub replay_parallelism: usize,
    /// Shards of each tag's index: a busy tag spreads its entries and its number counters
    /// over this many partition keys (an id always lands in the same shard). Do not change
    /// it on a journal with tagged events: offsets name one number per shard.
    pub tag_shards: u32,
    /// Length of one time bucket of the new-id feed (live `persistence_ids`), in seconds.
    pub feed_bucket_secs: u64,
    /// Shards of the persistence-id registry.
    pub id_shards: u32,
    /// How often live queries poll.
    #[serde(with = "persistence_api::duration_ms", rename = "poll_interval_ms")]
    pub poll_interval: Duration,
    /// How far behind the wall clock the live `persistence_ids` query reads the new-id
    /// feed, so an id's first write still in flight is not passed over.
    #[serde(with = "persistence_api::duration_ms", rename = "feed_settle_delay_ms")]
    pub feed_settle_delay: Duration,
    /// How long a tag query waits for a tag index number that was handed out but has no
    /// entry yet (its write is in flight, or its writer died) before it fills the number
    /// with a tombstone and reads on. A write whose number was filled is
    /// not stored and tries again with new numbers, so nothing acknowledged is ever
    /// skipped; this only bounds how long a dead writer holds a tag's readers up.
    #[serde(with = "persistence_api::duration_ms", rename = "tag_gap_timeout_ms")]
    pub tag_gap_timeout: Duration,
    /// How long a live query waits for an unfinished multi-transaction atomic write before
    /// treating it as abandoned.
    #[serde(
        with = "persistence_api::duration_ms",
        rename = "large_write_timeout_ms"
    )]
    pub large_write_timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "persistence_api::duration_ms", rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
    /// Timeout of one HTTP attempt.
    #[serde(with = "persistence_api::duration_ms", rename = "attempt_timeout_ms")]
    pub attempt_timeout: Duration,
    /// Retries after the first attempt of a throttled or transiently failed request.
    pub max_retries: u32,
    /// First retry delay; doubles per retry, with full jitter.
    #[serde(with = "persistence_api::duration_ms", rename = "retry_base_delay_ms")]
    pub retry_base_delay: Duration,
    /// The cap of the retry delay.
    #[serde(with = "persistence_api::duration_ms", rename = "retry_max_delay_ms")]
    pub retry_max_delay: Duration,
    /// Whether [`crate::open`] creates missing tables (on-demand billing). Default true;
    /// with false, create them by hand ([`crate::create_schema`] or the README's layout).
    pub create_schema: bool,
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        DynamoDbConfig {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            tls_ca_file: None,
            journal_table: "persistence_journal".into(),
            snapshot_table: "persistence_snapshot".into(),
            namespace: "default".into(),
            consistent_reads: true,
            page_size: 1000,
            replay_parallelism: 4,
            tag_shards: 4,
            feed_bucket_secs: 3600,
            id_shards: 8,
            poll_interval: Duration::from_millis(200),
            feed_settle_delay: Duration::from_millis(1000),
            tag_gap_timeout: Duration::from_millis(5000),
            large_write_timeout: Duration::from_millis(30_000),
            connect_timeout: Duration::from_millis(3_000),
            attempt_timeout: Duration::from_millis(5_000),
            max_retries: 8,
            retry_base_delay: Duration::from_millis(20),
            retry_max_delay: Duration::from_millis(2_000),
            create_schema: true,
        }
    }
}

impl fmt::Debug for DynamoDbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("DynamoDbConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("journal_table", &self.journal_table)
            .field("snapshot_table", &self.snapshot_table)
            .field("namespace", &self.namespace)
            .field("consistent_reads", &self.consistent_reads)
            .field("page_size", &self.page_size)
            .field("replay_parallelism", &self.replay_parallelism)
            .field("tag_shards", &self.tag_shards)
            .field("feed_bucket_secs", &self.feed_bucket_secs)
            .field("id_shards", &self.id_shards)
            .field("poll_interval_ms", &self.poll_interval.as_millis())
            .field("feed_settle_delay_ms", &self.feed_settle_delay.as_millis())
            .field("tag_gap_timeout_ms", &self.tag_gap_timeout.as_millis())
            .field(
                "large_write_timeout_ms",
                &self.large_write_timeout.as_millis(),
            )
            .field("connect_timeout_ms", &self.connect_timeout.as_millis())
            .field("attempt_timeout_ms", &self.attempt_timeout.as_millis())
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay_ms", &self.retry_base_delay.as_millis())
            .field("retry_max_delay_ms", &self.retry_max_delay.as_millis())
            .field("create_schema", &self.create_schema)
            .finish()
    }
}

impl DynamoDbConfig {
    /// A configuration for DynamoDB Local (or any endpoint) at `endpoint`, otherwise default.
    pub fn local(endpoint: impl Into<String>) -> Self {
        DynamoDbConfig {
            endpoint: Some(endpoint.into()),
            ..DynamoDbConfig::default()
        }
    }

    /// Checks the values; [`crate::open`] calls it.
    pub fn validate(&self) -> Result<()> {
        let name_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 64
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(Error::config(format!(
                "dynamodb.namespace {:?} must be 1 to 64 characters of [A-Za-z0-9_.-]",
                self.namespace
            )));
        }
        for (key, table) in [
            ("journal_table", &self.journal_table),
            ("snapshot_table", &self.snapshot_table),
        ] {
            let ok = (3..=255).contains(&table.len())
                && table
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(Error::config(format!(
                    "dynamodb.{key} {table:?} is not a valid DynamoDB table name (3 to 255 of [A-Za-z0-9_.-])"
                )));
            }
        }
        if self.journal_table == self.snapshot_table {
            return Err(Error::config(
                "dynamodb.journal_table and dynamodb.snapshot_table must differ",
            ));
        }
        for (key, v) in [
            ("page_size", self.page_size as u64),
            ("replay_parallelism", self.replay_parallelism as u64),
            ("tag_shards", self.tag_shards as u64),
            ("feed_bucket_secs", self.feed_bucket_secs),
            (
                "tag_gap_timeout_ms",
                self.tag_gap_timeout.as_millis() as u64,
            ),
            ("id_shards", self.id_shards as u64),
            ("poll_interval_ms", self.poll_interval.as_millis() as u64),
            (
                "attempt_timeout_ms",
                self.attempt_timeout.as_millis() as u64,
            ),
            (
                "connect_timeout_ms",
                self.connect_timeout.as_millis() as u64,
            ),
        ] {
            if v == 0 {
                return Err(Error::config(format!("dynamodb.{key} must be at least 1")));
            }
        }
        if self.tag_shards > 1000 || self.id_shards > 1000 {
            return Err(Error::config(
                "dynamodb.tag_shards and dynamodb.id_shards must be at most 1000",
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Error::config(
                "dynamodb.access_key_id and dynamodb.secret_access_key are set together or not at all",
            ));
        }
        Ok(())
    }
}
