//! The two tables, their keys, and [`create_schema`].
//!
//! Journal table (`pk` S hash key, `sk` S range key), every key prefixed by the journal
//! name `<j>` so several journals share the table:
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | event | `<j>\|e\|<persistence id>` | sequence number, 20 digits |
//! | highest / deleted-to of an id | `<j>\|e\|<persistence id>` | `#` (sorts below every event) |
//! | tombstone of a deleted event (`d` = 1, nothing else) | `<j>\|e\|<persistence id>` | sequence number, 20 digits |
//! | persistence-id registry | `<j>\|p\|<shard>` | persistence id |
//! | new-id feed | `<j>\|n\|<bucket start ms, 13 digits>\|<shard, 3 digits>` | `<write time ms, 13 digits>\|<id>` |
//! | tag index entry (a copy of the event; or a tombstone, `d` = 1, of a deleted event or a number its writer never used) | `<j>\|t\|<shard, 3 digits>\|<tag>` | the entry's number in its shard, 20 digits |
//! | tag number counter (`n` = the last number handed out) | `<j>\|t\|<shard, 3 digits>\|<tag>` | `~` (sorts above every number) |
//!
//! Snapshot table (`pk` S hash key, `sk` N range key):
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | snapshot head (inline payload, or the chunk list's version) | `<j>\|s\|<persistence id>` | sequence number |
//! | chunk of a large snapshot | `<j>\|c\|<version uuid>` | chunk index |

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use persistence_api::{Error, Result};

use crate::config::DynamoDbConfig;
use crate::error::{classify, Class, RetryPolicy};

/// Partition key attribute of both tables.
pub const PK: &str = "pk";
/// Sort key attribute of both tables.
pub const SK: &str = "sk";
/// The sort key of an id's highest/deleted-to item.
pub(crate) const META_SK: &str = "#";
/// On an id's highest/deleted-to item: how far the physical delete got (every event up to
/// it is a tombstone).
pub(crate) const PURGED_TO: &str = "pd";
/// Marks a tombstone: a deleted event's key kept with nothing else, so the sequence number
/// stays taken (a write there fails its `attribute_not_exists` condition) and the highest
/// survives. Replay and queries skip tombstones.
pub(crate) const TOMBSTONE: &str = "d";

/// On a tagged event: its tag index numbers, a map from tag to number (the entries' keys,
/// for deletes and clean-ups).
pub(crate) const TAG_NUMBERS: &str = "tn";

/// DynamoDB's item size limit.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limit of actions per `TransactWriteItems`.
pub(crate) const MAX_TX_ITEMS: usize = 100;
/// DynamoDB's limit on the aggregate size of one transaction (4 MB), with a margin.
pub(crate) const MAX_TX_BYTES: usize = 4 * 1000 * 1000;
/// DynamoDB's limit of requests per `BatchWriteItem`.
pub(crate) const MAX_BATCH_WRITE: usize = 25;
/// Largest partition key DynamoDB accepts.
pub(crate) const MAX_PK_BYTES: usize = 2048;

/// The key prefixes of one journal name.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    j: String,
    tag_shards: u32,
    id_shards: u32,
    bucket_ms: i64,
}

impl Keys {
    pub(crate) fn new(config: &DynamoDbConfig) -> Self {
        Keys {
            j: config.namespace.clone(),
            tag_shards: config.tag_shards,
            id_shards: config.id_shards,
            bucket_ms: (config.feed_bucket_secs as i64).saturating_mul(1000).max(1),
        }
    }

    pub(crate) fn event_pk(&self, pid: &str) -> String {
        format!("{}|e|{pid}", self.j)
    }

    pub(crate) fn ids_pk(&self, shard: u32) -> String {
        format!("{}|p|{shard}", self.j)
    }

    pub(crate) fn id_shard(&self, pid: &str) -> u32 {
        (fnv1a(pid.as_bytes()) % self.id_shards as u64) as u32
    }

    pub(crate) fn ids_feed_pk(&self, bucket: i64, shard: u32) -> String {
        format!("{}|n|{bucket:013}|{shard:03}", self.j)
    }

    pub(crate) fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    pub(crate) fn id_shards(&self) -> u32 {
        self.id_shards
    }

    pub(crate) fn tag_shard(&self, pid: &str) -> u32 {
        // A different mix than the id shard, so the two spreads are independent.
        (fnv1a(pid.as_bytes()).rotate_left(17) % self.tag_shards as u64) as u32
    }

    pub(crate) fn tag_shards(&self) -> u32 {
        self.tag_shards
    }

    pub(crate) fn bucket_of(&self, time_ms: i64) -> i64 {
        time_ms - time_ms.rem_euclid(self.bucket_ms)
    }

    /// The partition of one shard of a tag's index: its entries and its number counter.
    pub(crate) fn tag_pk(&self, tag: &str, shard: u32) -> String {
        format!("{}|t|{shard:03}|{tag}", self.j)
    }

    pub(crate) fn snapshot_pk(&self, pid: &str) -> String {
        format!("{}|s|{pid}", self.j)
    }

    pub(crate) fn chunk_pk(&self, version: &str) -> String {
        format!("{}|c|{version}", self.j)
    }
}

/// An event's sort key: its sequence number, zero-padded so text order is number order.
pub(crate) fn seq_sk(seq: u64) -> String {
    format!("{seq:020}")
}

/// The smallest string above every feed sort key written at `time_ms` or earlier.
pub(crate) fn feed_upper(time_ms: i64) -> String {
    format!("{time_ms:013}~")
}

/// The write time at the front of a feed sort key.
pub(crate) fn feed_time(sk: &str) -> Option<i64> {
    sk.get(..13)?.parse().ok()
}

/// FNV-1a, 64 bit: a stable hash (the shard of an id must not change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Creates the journal and snapshot tables if they do not exist (on-demand billing), and
/// waits until both are active. Idempotent: existing tables are left as they are.
pub async fn create_schema(client: &Client, config: &DynamoDbConfig) -> Result<()> {
    config.validate()?;
    let retry = RetryPolicy {
        max_retries: config.max_retries,
        base: config.retry_base_delay,
        cap: config.retry_max_delay,
    };
    for (table, sk_type) in [
        (&config.journal_table, ScalarAttributeType::S),
        (&config.snapshot_table, ScalarAttributeType::N),
    ] {
        create_table(client, &retry, table, sk_type).await?;
    }
    for table in [&config.journal_table, &config.snapshot_table] {
        wait_active(client, &retry, table).await?;
    }
    Ok(())
}

fn attr(name: &str, t: ScalarAttributeType) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .map_err(|e| Error::config(format!("table definition: {e}")))
}

fn key(name: &str, t: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .map_err(|e| Error::config(format!("table definition: {e}")))
}

async fn create_table(
    client: &Client,
    retry: &RetryPolicy,
    table: &str,
    sk_type: ScalarAttributeType,
) -> Result<()> {
    let req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(SK, sk_type)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?);
    match retry.run("create_schema", || req.clone().send()).await {
        Ok(_) => {
            tracing::info!(table, "created DynamoDB table");
            Ok(())
        }
        Err(f) => {
            let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&f.err);
            if code == Some("ResourceInUseException") {
                Ok(())
            } else {
                Err(f.into_error("create_schema"))
            }
        }
    }
}

async fn wait_active(client: &Client, retry: &RetryPolicy, table: &str) -> Result<()> {
    for _ in 0..600 {
        let out = retry
            .run("create_schema", || {
                client.describe_table().table_name(table).send()
            })
            .await;
        match out {
            Ok(out) => {
                if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(f) if f.class == Class::NotFound => {}
            Err(f) => return Err(f.into_error("create_schema")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::config(format!(
        "DynamoDB table {table} did not become active within 5 minutes"
    )))
}

/// Deletes both tables (for tests and tear-down); missing tables are fine.
pub async fn delete_tables(client: &Client, config: &DynamoDbConfig) -> Result<()> {
    for table in [&config.journal_table, &config.snapshot_table] {
        match client.delete_table().table_name(table).send().await {
            Ok(_) => {}
            Err(e) if classify(&e) == Class::NotFound => {}
            Err(e) => {
                return Err(Error::new(
                    persistence_api::ErrorKind::Storage,
                    format!("deleting table {table}: {e}"),
                )
                .with_operation("delete_tables"))
            }
        }
    }
    Ok(())
}
