#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Without a database feature the schema helpers have no user.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

// The files by role: `core` (what both databases share beneath the stores), `journal`
// (the write path, replay, highest, delete), `snapshot`, `query`, `offsets` (projection
// offsets and exactly-once transactions), `durable_state` (states by revision and their
// change queries), `maintenance` (scan, rebuild, truncation and purge), `schema` (the tables,
// their migrations and row layout), `error` (sqlx's errors as public ones), and each
// database's own machinery in `postgres` and `sqlite`.
// Without a database feature only the configuration and the schema text remain.
pub mod config;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod core;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod durable_state;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod error;
#[cfg(all(feature = "fuzzing", any(feature = "postgres", feature = "sqlite")))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod group_commit;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod journal;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod maintenance;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod offsets;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod query;
pub mod schema;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod snapshot;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use config::{PostgresConfig, SqliteConfig, SqliteSync, SslMode};
#[cfg(feature = "postgres")]
pub use offsets::PostgresTransaction;
#[cfg(feature = "sqlite")]
pub use offsets::SqliteTransaction;
#[cfg(feature = "postgres")]
pub use postgres::Postgres;
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use std::{sync::Arc, time::Duration};

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use persistence_api::{Capabilities, Result, Stores};

/// What both databases declare; `live_query_max_delay` is the poll interval plus a margin
/// for the query itself.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn capabilities(poll_interval: Duration) -> Capabilities {
    Capabilities {
        live_query_max_delay: Some(poll_interval + Duration::from_millis(500)),
        ..Capabilities::all()
    }
}

/// The journal, snapshot store, read journal, offset store, durable-state store and
/// journal maintenance of `backend`, behind the checking layer
/// (which adds the operation, the backend's name, the persistence id and the sequence
/// numbers of the call to every error they return).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn stores<B: core::Backend>(backend: &Arc<B>) -> Stores {
    use crate::core::Store;
    Stores::new(
        B::NAME,
        capabilities(backend.store().poll_interval()),
        Arc::new(journal::SqlJournal {
            backend: backend.clone(),
        }),
        Arc::new(snapshot::SqlSnapshotStore {
            backend: backend.clone(),
        }),
        Arc::new(query::SqlReadJournal {
            backend: backend.clone(),
        }),
    )
    .with_offset_store(Arc::new(offsets::SqlOffsetStore {
        backend: backend.clone(),
    }))
    .with_durable_state_store(Arc::new(durable_state::SqlDurableStateStore {
        backend: backend.clone(),
    }))
    .with_maintenance(Arc::new(maintenance::SqlMaintenance {
        backend: backend.clone(),
    }))
}

/// The configuration of one of the two databases this crate serves: [`PostgresConfig`]
/// (feature `postgres`) or [`SqliteConfig`] (feature `sqlite`). [`open`] and
/// [`create_schema`] take either.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[persistence_api::async_trait]
pub trait SqlConfig: sealed::Sealed + Send + Sync + 'static {
    /// Opens the database and returns its stores (what [`open`] does).
    async fn open_stores(self) -> Result<Stores>;
    /// Runs the embedded migrations that have not run yet (what [`create_schema`] does).
    async fn create_schema(&self) -> Result<()>;
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::PostgresConfig {}
    impl Sealed for crate::SqliteConfig {}
}

#[cfg(feature = "postgres")]
#[persistence_api::async_trait]
impl SqlConfig for PostgresConfig {
    async fn open_stores(self) -> Result<Stores> {
        Ok(Postgres::open(self).await?.stores())
    }
    async fn create_schema(&self) -> Result<()> {
        postgres::create_schema(self).await
    }
}

#[cfg(feature = "sqlite")]
#[persistence_api::async_trait]
impl SqlConfig for SqliteConfig {
    async fn open_stores(self) -> Result<Stores> {
        Ok(Sqlite::open(self).await?.stores())
    }
    async fn create_schema(&self) -> Result<()> {
        sqlite::create_schema(self).await
    }
}

/// Opens the database of `config` and returns its journal, snapshot store and read
/// journal: the one-call entry point every backend has (`persistence_<backend>::open`).
/// It connects (an unreachable server or an unwritable file fails here, not at the first
/// write) and creates the schema when `create_schema` is set (the default).
///
/// ```no_run
/// # async fn demo() -> persistence_api::Result<()> {
/// let stores = persistence_sql::open(persistence_sql::SqliteConfig::new("journal.db")).await?;
/// # let _ = stores; Ok(()) }
/// ```
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub async fn open(config: impl SqlConfig) -> Result<Stores> {
    config.open_stores().await
}

/// Creates the schema of `config`'s database: runs the embedded migrations that have not
/// run yet (idempotent; several processes at once take turns). For deployments that set
/// `create_schema = false` and create the schema in a separate step.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub async fn create_schema(config: &impl SqlConfig) -> Result<()> {
    config.create_schema().await
}

/// Re-exported so callers of `Sqlite::pool` / `Postgres::pool` name the same sqlx.
pub use sqlx;
