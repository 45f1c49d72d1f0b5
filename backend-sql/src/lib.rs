#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
pub mod config;
mod error;
mod journal;
#[cfg(feature = "postgres")]
mod postgres;
mod query;
pub mod schema;
mod snapshot;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use config::{PostgresConfig, SqliteConfig, SqliteSync};
#[cfg(feature = "postgres")]
pub use postgres::{migrate_postgres, open_postgres, PostgresStores};
#[cfg(feature = "sqlite")]
pub use sqlite::{migrate_sqlite, open_sqlite, SqliteStores};

/// Re-exported so callers of [`SqliteStores::pool`] / [`PostgresStores::pool`] name the
/// same sqlx.
pub use sqlx;
