#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
mod core;
mod durable_state;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod journal;
mod large_write;
mod maintenance;
mod offsets;
mod query;
mod retry;
mod schema;
mod snapshot;
mod tag_index;

use std::sync::Arc;

use persistence_api::{Capabilities, Result, Stores};

pub use crate::core::{http_client, sdk_config};
pub use config::DynamoDbConfig;
pub use durable_state::{DynamoDbDurableStateStore, MAX_STATE_SIZE};
pub use journal::DynamoDbJournal;
pub use maintenance::DynamoDbMaintenance;
pub use offsets::{DynamoDbOffsetStore, DynamoDbTransaction, MAX_TRANSACTION_ITEMS};
pub use query::DynamoDbReadJournal;
pub use schema::{
    check_schema, create_schema, create_table_commands, delete_tables, SchemaDifference,
    MAX_EVENT_SIZE, MAX_TAG_BYTES, PK, SK,
};
pub use snapshot::{DynamoDbSnapshotStore, SNAPSHOT_CHUNK_BYTES};

/// The SDK crate this backend is built on, re-exported so callers name the same version.
pub use aws_sdk_dynamodb;

/// A connected DynamoDB backend: one client and configuration shared by the journal, the
/// snapshot store, the read journal, the projection offset store and the durable-state
/// store.
#[derive(Clone)]
pub struct DynamoDb {
    inner: Arc<crate::core::Inner>,
}

impl std::fmt::Debug for DynamoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDb")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl DynamoDb {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "dynamodb";

    /// Builds the SDK client from `config` (standard AWS chains, endpoint override,
    /// timeouts) and, when `config.create_schema` is set (the default), creates the tables
    /// that are missing (a `DescribeTable` each when they exist). With `create_schema =
    /// false` it sends no request.
    pub async fn open(config: DynamoDbConfig) -> Result<Self> {
        let builder = sdk_config(&config).await?;
        let client = aws_sdk_dynamodb::Client::from_conf(builder.build());
        let db = Self::with_client(client, config)?;
        if db.config().create_schema {
            db.create_schema().await?;
        }
        Ok(db)
    }

    /// Uses a client you built (for instance from [`sdk_config`] plus interceptors). Its
    /// SDK-level retries should be off ([`sdk_config`] does that): the backend retries
    /// itself with the policy in `config`.
    pub fn with_client(client: aws_sdk_dynamodb::Client, config: DynamoDbConfig) -> Result<Self> {
        Ok(DynamoDb {
            inner: Arc::new(crate::core::Inner::new(client, config)?),
        })
    }

    /// Runs this handle's write clock `ms` ahead of the wall clock (behind when negative),
    /// as a writer on a machine whose clock is off would: for tests that the queries do
    /// not depend on writers' clocks agreeing.
    #[doc(hidden)]
    pub fn skew_clock_for_tests(&self, ms: i64) {
        self.inner.skew_clock(ms);
    }

    /// The SDK client.
    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.inner.client
    }

    /// The configuration.
    pub fn config(&self) -> &DynamoDbConfig {
        &self.inner.config
    }

    /// What this backend supports: everything, events up to [`MAX_EVENT_SIZE`], snapshots
    /// of any size, projection offsets with exactly-once transactions, durable states up to
    /// [`MAX_STATE_SIZE`] with change queries; live queries see a write within a poll plus
    /// the longer of the tag gap timeout and the new-id feed's settle delay (see the
    /// README).
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.inner.config;
        Capabilities {
            max_event_size: Some(MAX_EVENT_SIZE),
            live_query_max_delay: Some(
                // Tags: a poll, plus at most the gap timeout while an earlier number of the
                // shard is held by a write in flight; the id feed: a poll plus its settle
                // delay.
                c.poll_interval
                    + c.tag_gap_timeout.max(c.feed_settle_delay)
                    + std::time::Duration::from_millis(300),
            ),
            max_state_size: Some(MAX_STATE_SIZE),
            ..Capabilities::all()
        }
    }

    /// Creates the tables if missing (see [`create_schema`]).
    pub async fn create_schema(&self) -> Result<()> {
        create_schema(&self.inner.client, &self.inner.config).await
    }

    /// The journal alone.
    pub fn journal(&self) -> DynamoDbJournal {
        DynamoDbJournal {
            inner: self.inner.clone(),
        }
    }

    /// The snapshot store alone.
    pub fn snapshots(&self) -> DynamoDbSnapshotStore {
        DynamoDbSnapshotStore {
            inner: self.inner.clone(),
        }
    }

    /// The read journal alone.
    pub fn read_journal(&self) -> DynamoDbReadJournal {
        DynamoDbReadJournal {
            inner: self.inner.clone(),
        }
    }

    /// The projection offset store alone.
    pub fn offsets(&self) -> DynamoDbOffsetStore {
        DynamoDbOffsetStore {
            inner: self.inner.clone(),
        }
    }

    /// The durable-state store alone.
    pub fn durable_state(&self) -> DynamoDbDurableStateStore {
        DynamoDbDurableStateStore {
            inner: self.inner.clone(),
        }
    }

    /// Journal maintenance alone: scanning the journal's ids, truncating the tag index and
    /// id registry and rebuilding an id's part of them from its events, purging an id (see
    /// the README's *Maintenance*).
    pub fn maintenance(&self) -> DynamoDbMaintenance {
        DynamoDbMaintenance {
            inner: self.inner.clone(),
        }
    }

    /// The three stores, the offset store, the durable-state store and journal
    /// maintenance behind the API's checking and tracing layer.
    pub fn stores(&self) -> Stores {
        Stores::new(
            Self::NAME,
            self.capabilities(),
            Arc::new(self.journal()),
            Arc::new(self.snapshots()),
            Arc::new(self.read_journal()),
        )
        .with_offset_store(Arc::new(self.offsets()))
        .with_durable_state_store(Arc::new(self.durable_state()))
        .with_maintenance(Arc::new(self.maintenance()))
    }
}

/// Opens the backend (see [`DynamoDb::open`]) and returns its journal, snapshot store and
/// read journal: the one-call entry point every backend has
/// (`persistence_<backend>::open`).
pub async fn open(config: DynamoDbConfig) -> Result<Stores> {
    Ok(DynamoDb::open(config).await?.stores())
}
