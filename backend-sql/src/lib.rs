#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Without a database feature the schema helpers have no user.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

// Without a database feature only the configuration and the schema text remain.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod backend;
pub mod config;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod journal;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod query;
pub mod schema;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
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
