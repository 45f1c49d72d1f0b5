#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod schema;

pub use config::{Config, DEFAULT_BACKEND, ENV_PREFIX};
pub use persistence_api::*;

/// The in-memory backend (cargo feature `memory`, on by default).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use persistence_memory as memory;

/// The SQL backends: PostgreSQL (cargo feature `postgres`) and SQLite (`sqlite`, on by default).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use persistence_sql as sql;

/// The DynamoDB backend (cargo feature `dynamodb`).
#[cfg(feature = "dynamodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "dynamodb")))]
pub use persistence_dynamodb as dynamodb;

/// The Cassandra backend (cargo feature `cassandra`).
#[cfg(feature = "cassandra")]
#[cfg_attr(docsrs, doc(cfg(feature = "cassandra")))]
pub use persistence_cassandra as cassandra;

/// Every backend this crate knows, whether compiled in or not: each is the name of a
/// cargo feature, a configuration section and an environment prefix
/// (`PERSISTENCE_<BACKEND>_<KEY>`). Each backend crate declares its own name as `NAME`
/// (`Memory::NAME`, `Sqlite::NAME`, ...); a unit test keeps the two in step.
pub const BACKENDS: [&str; 5] = ["memory", "sqlite", "postgres", "dynamodb", "cassandra"];

/// Projections: read models fed from the queries, resuming from stored offsets (cargo
/// feature `projection`, on by default).
#[cfg(feature = "projection")]
#[cfg_attr(docsrs, doc(cfg(feature = "projection")))]
pub use persistence_projection as projection;

/// The names of the backends compiled into this build, by cargo feature.
pub fn compiled_backends() -> Vec<&'static str> {
    [
        #[cfg(feature = "memory")]
        persistence_memory::Memory::NAME,
        #[cfg(feature = "sqlite")]
        persistence_sql::Sqlite::NAME,
        #[cfg(feature = "postgres")]
        persistence_sql::Postgres::NAME,
        #[cfg(feature = "dynamodb")]
        persistence_dynamodb::DynamoDb::NAME,
        #[cfg(feature = "cassandra")]
        persistence_cassandra::Cassandra::NAME,
    ]
    .to_vec()
}

/// Opens the stores of the backend `config` names, with that backend's section of the
/// configuration.
///
/// Switching stores is a configuration change: the same code opens the in-memory store in
/// tests and DynamoDB, Cassandra, PostgreSQL or SQLite in production.
///
/// # Errors
/// [`ErrorKind::ConfigInvalid`] for an unknown backend, one this build was compiled
/// without (the message names the cargo feature), or a section that does not parse; and
/// whatever the backend reports when it connects.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_stores::Result<()> {
/// let config = persistence_stores::Config::from_toml_str(r#"
///     backend = "memory"
///     [memory]
///     max_event_size = 409600
/// "#)?;
/// let stores = persistence_stores::open(&config).await?;
/// assert_eq!(stores.capabilities().max_event_size, Some(409600));
/// # Ok(()) }
/// ```
pub async fn open(config: &Config) -> Result<Stores> {
    let backend = config.backend();
    tracing::info!(backend, "opening persistence backend");
    match backend {
        #[cfg(feature = "memory")]
        persistence_memory::Memory::NAME => {
            let section: persistence_memory::MemoryConfig = config.section(backend)?;
            persistence_memory::open(section).await
        }
        #[cfg(feature = "sqlite")]
        persistence_sql::Sqlite::NAME => {
            let section: persistence_sql::SqliteConfig = config.section(backend)?;
            persistence_sql::open(section).await
        }
        #[cfg(feature = "postgres")]
        persistence_sql::Postgres::NAME => {
            let section: persistence_sql::PostgresConfig = config.section(backend)?;
            persistence_sql::open(section).await
        }
        #[cfg(feature = "dynamodb")]
        persistence_dynamodb::DynamoDb::NAME => {
            persistence_dynamodb::open(config.section(backend)?).await
        }
        #[cfg(feature = "cassandra")]
        persistence_cassandra::Cassandra::NAME => {
            persistence_cassandra::open(config.section(backend)?).await
        }
        other => Err(unknown_backend(other)),
    }
}

fn unknown_backend(name: &str) -> Error {
    let known = BACKENDS;
    let compiled = compiled_backends().join(", ");
    if known.contains(&name) {
        Error::config(format!(
            "backend {name:?} is not compiled into this build; enable the cargo feature \"{name}\" of the persistence crate (compiled in: {compiled})"
        ))
    } else {
        Error::config(format!(
            "unknown backend {name:?}; known backends are {known:?} (compiled in: {compiled})"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_shows_the_tested_tck_example() {
        let readme = include_str!("../README.md");
        let example = include_str!("../tests/readme_tck.rs");
        assert!(
            readme.contains(example),
            "README.md must show tests/readme_tck.rs verbatim"
        );
    }

    #[test]
    fn every_compiled_backend_is_known() {
        for name in crate::compiled_backends() {
            assert!(
                crate::BACKENDS.contains(&name),
                "{name} is compiled in but not in BACKENDS"
            );
        }
    }

    #[tokio::test]
    async fn unknown_and_missing_backends_are_config_errors() {
        let err = crate::open(&crate::Config::for_backend("mongodb"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ConfigInvalid);
        assert!(err.to_string().contains("unknown backend"), "{err}");
        let bad = crate::Config::from_toml_str("backend = \"memory\"\n[memory]\nno_such_key = 1\n")
            .unwrap();
        let err = crate::open(&bad).await.unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }
}
