//! The schema of the configured backend, for operators: the text a DBA applies by hand
//! ([`ddl`]), creating it ([`create`]) and checking what exists against it ([`check`]).
//!
//! Each backend compares against what its own `create_schema` makes: the SQL backends run
//! their embedded migrations on a scratch database (SQLite in memory, PostgreSQL in a
//! scratch schema inside a rolled-back transaction) and compare the two descriptions;
//! Cassandra reads its own `CREATE TABLE` statements back; DynamoDB builds the expected
//! key schema from the same table definitions that create the tables.

use std::fmt;

use persistence_api::Result;

use crate::Config;

/// One way the stored schema differs from what the backend creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDifference {
    /// What differs: a table, a column, a key, an index, a sequence, a keyspace.
    pub object: String,
    /// What the backend's `create_schema` makes.
    pub expected: String,
    /// What exists; `None` when the object is missing.
    pub found: Option<String>,
}

impl fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            None => write!(f, "missing {} (expected {})", self.object, self.expected),
            Some(found) => write!(
                f,
                "different {}: expected {}, found {}",
                self.object, self.expected, found
            ),
        }
    }
}

/// What [`check`] found: the backend and every difference (none when the schema is as
/// the backend creates it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaReport {
    /// The backend's name.
    pub backend: String,
    /// Where: the database file, schema and prefix, keyspace or tables checked.
    pub location: String,
    /// The differences, in the backend's order (tables in creation order).
    pub differences: Vec<SchemaDifference>,
}

impl SchemaReport {
    /// Whether nothing is missing or different.
    pub fn is_ok(&self) -> bool {
        self.differences.is_empty()
    }
}

impl fmt::Display for SchemaReport {
    /// One line per difference, under a line naming the backend and where it looked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(f, "{} schema ok ({})", self.backend, self.location);
        }
        write!(
            f,
            "{} schema differs ({}): {} difference(s)",
            self.backend,
            self.location,
            self.differences.len()
        )?;
        for d in &self.differences {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

macro_rules! differences {
    ($list:expr) => {
        $list
            .into_iter()
            .map(|d| SchemaDifference {
                object: d.object,
                expected: d.expected,
                found: d.found,
            })
            .collect::<Vec<_>>()
    };
}

/// The schema of the configured backend as the text a DBA applies by hand: SQL DDL for
/// PostgreSQL and SQLite (`psql -f`, `sqlite3 FILE <`), CQL for Cassandra (`cqlsh -f`),
/// `aws dynamodb create-table` commands with their JSON for DynamoDB, and a comment saying
/// there is none for the in-memory backend. Sends no request.
///
/// # Errors
/// [`crate::ErrorKind::ConfigInvalid`] as [`crate::open`] reports it.
pub async fn ddl(config: &Config) -> Result<String> {
    let backend = config.backend();
    match backend {
        #[cfg(feature = "memory")]
        persistence_memory::Memory::NAME => {
            let _: persistence_memory::MemoryConfig = config.section(backend)?;
            Ok("-- memory: there is no schema (the in-memory backend keeps everything in the process)\n".to_string())
        }
        #[cfg(feature = "sqlite")]
        persistence_sql::Sqlite::NAME => {
            let section: persistence_sql::SqliteConfig = config.section(backend)?;
            section.validate()?;
            Ok(persistence_sql::schema::sqlite_ddl(&section))
        }
        #[cfg(feature = "postgres")]
        persistence_sql::Postgres::NAME => {
            let section: persistence_sql::PostgresConfig = config.section(backend)?;
            section.validate()?;
            Ok(persistence_sql::schema::postgres_ddl(&section))
        }
        #[cfg(feature = "dynamodb")]
        persistence_dynamodb::DynamoDb::NAME => {
            let section: persistence_dynamodb::DynamoDbConfig = config.section(backend)?;
            section.validate()?;
            Ok(persistence_dynamodb::create_table_commands(&section))
        }
        #[cfg(feature = "cassandra")]
        persistence_cassandra::Cassandra::NAME => {
            let section: persistence_cassandra::CassandraConfig = config.section(backend)?;
            section.validate()?;
            Ok(persistence_cassandra::schema_cql(&section))
        }
        other => Err(crate::unknown_backend(other)),
    }
}

/// Creates the schema of the configured backend when missing (each backend's idempotent
/// `create_schema`, whatever the configuration's `create_schema` switch says); nothing for
/// the in-memory backend.
///
/// # Errors
/// A configuration error, an unreachable server, or what the server answers (a role
/// without the right to create tables).
pub async fn create(config: &Config) -> Result<()> {
    let backend = config.backend();
    match backend {
        #[cfg(feature = "memory")]
        persistence_memory::Memory::NAME => {
            let _: persistence_memory::MemoryConfig = config.section(backend)?;
            Ok(())
        }
        #[cfg(feature = "sqlite")]
        persistence_sql::Sqlite::NAME => {
            let section: persistence_sql::SqliteConfig = config.section(backend)?;
            persistence_sql::create_schema(&section).await
        }
        #[cfg(feature = "postgres")]
        persistence_sql::Postgres::NAME => {
            let section: persistence_sql::PostgresConfig = config.section(backend)?;
            persistence_sql::create_schema(&section).await
        }
        #[cfg(feature = "dynamodb")]
        persistence_dynamodb::DynamoDb::NAME => {
            let section: persistence_dynamodb::DynamoDbConfig = config.section(backend)?;
            let db = persistence_dynamodb::DynamoDb::open(persistence_dynamodb::DynamoDbConfig {
                create_schema: false,
                ..section
            })
            .await?;
            db.create_schema().await
        }
        #[cfg(feature = "cassandra")]
        persistence_cassandra::Cassandra::NAME => {
            let section: persistence_cassandra::CassandraConfig = config.section(backend)?;
            persistence_cassandra::create_schema(&section).await
        }
        other => Err(crate::unknown_backend(other)),
    }
}

/// Compares the schema that exists with what the configured backend's `create_schema`
/// makes, for its configured names (table prefix, schema, keyspace, table names): missing
/// or different tables, columns and their types, keys, indexes and sequences (SQL),
/// global secondary indexes (DynamoDB). Creates nothing.
///
/// # Errors
/// A configuration error, an unreachable server, or what the server answers; a schema
/// that differs is not an error but a report whose [`SchemaReport::is_ok`] is false.
pub async fn check(config: &Config) -> Result<SchemaReport> {
    let backend = config.backend();
    let (location, differences) = match backend {
        #[cfg(feature = "memory")]
        persistence_memory::Memory::NAME => {
            let _: persistence_memory::MemoryConfig = config.section(backend)?;
            ("no schema".to_string(), Vec::new())
        }
        #[cfg(feature = "sqlite")]
        persistence_sql::Sqlite::NAME => {
            let section: persistence_sql::SqliteConfig = config.section(backend)?;
            let found = persistence_sql::schema::check_sqlite(&section).await?;
            (
                format!(
                    "file {}, table prefix {:?}",
                    section.path.display(),
                    section.table_prefix()
                ),
                differences!(found),
            )
        }
        #[cfg(feature = "postgres")]
        persistence_sql::Postgres::NAME => {
            let section: persistence_sql::PostgresConfig = config.section(backend)?;
            let found = persistence_sql::schema::check_postgres(&section).await?;
            (
                format!(
                    "schema {:?}, table prefix {:?}",
                    section.schema,
                    section.table_prefix()
                ),
                differences!(found),
            )
        }
        #[cfg(feature = "dynamodb")]
        persistence_dynamodb::DynamoDb::NAME => {
            let section: persistence_dynamodb::DynamoDbConfig = config.section(backend)?;
            let db = persistence_dynamodb::DynamoDb::open(persistence_dynamodb::DynamoDbConfig {
                create_schema: false,
                ..section.clone()
            })
            .await?;
            let found = persistence_dynamodb::check_schema(db.client(), &section).await?;
            (
                format!(
                    "tables {:?} and {:?}",
                    section.journal_table, section.snapshot_table
                ),
                differences!(found),
            )
        }
        #[cfg(feature = "cassandra")]
        persistence_cassandra::Cassandra::NAME => {
            let section: persistence_cassandra::CassandraConfig = config.section(backend)?;
            let found = persistence_cassandra::check_schema(&section).await?;
            (
                format!("keyspace {:?}", section.keyspace),
                differences!(found),
            )
        }
        other => return Err(crate::unknown_backend(other)),
    };
    Ok(SchemaReport {
        backend: backend.to_string(),
        location,
        differences,
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_has_no_schema_and_checks_ok() {
        let config = crate::Config::for_backend("memory");
        assert!(super::ddl(&config).await.unwrap().contains("no schema"));
        super::create(&config).await.unwrap();
        assert!(super::check(&config).await.unwrap().is_ok());
    }
}
