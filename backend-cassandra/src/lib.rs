#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod cleanup;
mod config;
mod error;
mod journal;
mod query;
mod schema;
mod snapshot;
mod store;
mod timeuuid;

use std::sync::Arc;

use persistence_api::{PersistenceId, Result, Stores};
use scylla::client::session::Session;

pub use cleanup::CleanupReport;
pub use config::{CassandraConfig, ConsistencyLevel, Replication, TableNames, TimeBucket};
pub use journal::{CassandraJournal, MAX_ATOMIC_WRITE_BYTES, MAX_EVENT_BYTES};
pub use query::CassandraReadJournal;
pub use schema::{create_keyspace, create_tables, schema_cql};
pub use snapshot::{CassandraSnapshotStore, MAX_SNAPSHOT_BYTES};

/// Re-exported so users and benchmarks name the driver version this crate was built with.
pub use scylla;

use store::Inner;

/// Connects to Cassandra and returns the journal, snapshot store and read journal behind
/// the checking layer of [`Stores`].
pub async fn connect(config: CassandraConfig) -> Result<Stores> {
    Ok(CassandraPersistence::connect(config).await?.stores())
}

/// One connected backend: a session, its prepared statements and a namespace.
///
/// Cheap to clone; [`CassandraPersistence::with_namespace`] makes stores of another
/// namespace on the same session and statements.
#[derive(Clone)]
pub struct CassandraPersistence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraPersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraPersistence")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl CassandraPersistence {
    /// Connects a session, creates the schema when the autocreate switches say so (with a
    /// warning), and prepares every statement.
    pub async fn connect(config: CassandraConfig) -> Result<Self> {
        let (session, stmts) = store::connect(&config).await?;
        Ok(CassandraPersistence {
            inner: Arc::new(Inner::new(session, stmts, config)),
        })
    }

    /// The same session and statements in another namespace (`[a-z0-9_]`; empty for none).
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        let mut config = self.inner.config.clone();
        config.namespace = namespace.to_owned();
        config.validate()?;
        Ok(CassandraPersistence {
            inner: Arc::new(Inner::new(
                self.inner.session.clone(),
                self.inner.stmts.clone(),
                config,
            )),
        })
    }

    /// The three stores behind the checking and tracing layer.
    pub fn stores(&self) -> Stores {
        Stores::new(
            Arc::new(self.journal()),
            Arc::new(self.snapshot_store()),
            Arc::new(self.read_journal()),
        )
    }

    /// The journal, unchecked (prefer [`CassandraPersistence::stores`]).
    pub fn journal(&self) -> CassandraJournal {
        CassandraJournal {
            inner: self.inner.clone(),
        }
    }

    /// The snapshot store, unchecked.
    pub fn snapshot_store(&self) -> CassandraSnapshotStore {
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

    /// The driver session (for raw CQL beside the stores, as the benchmark does).
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The configuration in use.
    pub fn config(&self) -> &CassandraConfig {
        &self.inner.config
    }

    /// Deletes everything stored for `ids`: events, their tag rows, snapshots, metadata and
    /// the ids themselves. With `dry_run` (what the command does unless told otherwise) it
    /// only counts. Tag rows of events already removed by `delete_events_to` cannot be found
    /// through the events and stay (as in pekko-persistence-cassandra's tool).
    pub async fn cleanup(&self, ids: &[PersistenceId], dry_run: bool) -> Result<CleanupReport> {
        cleanup::cleanup(&self.inner, ids, dry_run).await
    }
}
