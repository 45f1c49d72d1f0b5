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
mod maintenance;
mod offsets;
mod query;
mod retry;
mod schema;
mod snapshot;
mod tags;
mod timeuuid;
#[cfg(feature = "tls")]
mod tls;

use std::sync::Arc;

use persistence_api::{Capabilities, Result, Stores};
use scylla::client::session::Session;

pub use config::{CassandraConfig, ConsistencyLevel, Replication, TableNames, TimeBucket};
pub use durable_state::{CassandraDurableStateStore, MAX_STATE_SIZE};
pub use journal::{CassandraJournal, MAX_ATOMIC_WRITE_SIZE, MAX_EVENT_SIZE};
pub use maintenance::CassandraMaintenance;
pub use offsets::CassandraOffsetStore;
pub use query::CassandraReadJournal;
pub use schema::{
    check_schema, create_keyspace, create_schema, create_tables, schema_cql, SchemaDifference,
};
pub use snapshot::{CassandraSnapshotStore, MAX_SNAPSHOT_SIZE};

/// Re-exported so users and benchmarks name the driver version this crate was built with.
pub use scylla;

use crate::core::Inner;

/// Opens the backend (see [`Cassandra::open`]) and returns its journal, snapshot store, read
/// journal, projection offset store, durable-state store and journal maintenance behind the
/// checking layer of [`Stores`]: the one-call entry point every backend has
/// (`persistence_<backend>::open`).
pub async fn open(config: CassandraConfig) -> Result<Stores> {
    Ok(Cassandra::open(config).await?.stores())
}

/// One connected backend: a session, its prepared statements and a namespace.
///
/// Cheap to clone; [`Cassandra::with_namespace`] makes stores of another
/// namespace on the same session and statements.
#[derive(Clone)]
pub struct Cassandra {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cassandra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cassandra")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Cassandra {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "cassandra";

    /// Connects a session (an unreachable cluster fails here), creates the keyspace and
    /// tables when `create_schema` is set (the default), and prepares every statement (so
    /// a missing schema fails here too).
    pub async fn open(config: CassandraConfig) -> Result<Self> {
        let (session, stmts) = crate::core::connect(&config).await?;
        Ok(Cassandra {
            inner: Arc::new(Inner::new(session, stmts, config)),
        })
    }

    /// The same session and statements in another namespace (`[a-z0-9_]`; empty for none).
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        let mut config = self.inner.config.clone();
        config.namespace = namespace.to_owned();
        config.validate()?;
        Ok(Cassandra {
            inner: Arc::new(Inner::new(
                self.inner.session.clone(),
                self.inner.stmts.clone(),
                config,
            )),
        })
    }

    /// What this backend supports (the same for all its stores). Conflicts are detected
    /// when `overwrite_guard` is on; live queries deliver within the eventual-consistency
    /// delay plus two polls.
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.inner.config;
        Capabilities {
            max_event_size: Some(MAX_EVENT_SIZE),
            max_snapshot_size: Some(MAX_SNAPSHOT_SIZE),
            conflict_detection: c.overwrite_guard,
            live_query_max_delay: Some(
                c.eventual_consistency_delay
                    + c.poll_interval * 2
                    + std::time::Duration::from_secs(1),
            ),
            // Projection offsets are declared (by `..Capabilities::all()`); exactly-once is
            // not: Cassandra has no transaction across partitions, so a projection's effects
            // cannot commit with its offset (see `offsets.rs` and the README). Projections
            // here are at-least-once, with idempotent (upserted) effects.
            exactly_once_projections: false,
            // Durable state and its change queries are declared (by `..Capabilities::all()`),
            // with the size limit of one row (see `durable_state.rs`).
            max_state_size: Some(MAX_STATE_SIZE),
            ..Capabilities::all()
        }
    }

    /// The three stores, the projection offset store, the durable-state store and the
    /// journal maintenance behind the checking and tracing layer.
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

    /// The journal, unchecked (prefer [`Cassandra::stores`]).
    pub fn journal(&self) -> CassandraJournal {
        CassandraJournal {
            inner: self.inner.clone(),
        }
    }

    /// The snapshot store, unchecked.
    pub fn snapshots(&self) -> CassandraSnapshotStore {
        CassandraSnapshotStore {
            inner: self.inner.clone(),
        }
    }

    /// The read journal, unchecked.
    pub fn read_journal(&self) -> CassandraReadJournal {
        CassandraReadJournal {
            inner: self.inner.clone(),
        }
    }

    /// The projection offset store, unchecked.
    pub fn offsets(&self) -> CassandraOffsetStore {
        CassandraOffsetStore {
            inner: self.inner.clone(),
        }
    }

    /// The durable-state store, unchecked.
    pub fn durable_state(&self) -> CassandraDurableStateStore {
        CassandraDurableStateStore {
            inner: self.inner.clone(),
        }
    }

    /// The journal maintenance (scan, rebuild, purge of persistence ids), unchecked; what
    /// `persistence rebuild` and `persistence cleanup --purge` run.
    pub fn maintenance(&self) -> CassandraMaintenance {
        CassandraMaintenance {
            inner: self.inner.clone(),
        }
    }

    /// The driver session (for raw CQL beside the stores, as the benchmark does).
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The configuration in use.
    pub fn config(&self) -> &CassandraConfig {
        &self.inner.config
    }
}
