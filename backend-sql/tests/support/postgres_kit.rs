//! The conformance kit's factory over PostgreSQL, shared by `tck_postgres` (plain) and
//! `tck_postgres_tls` (TLS with authentication): one schema per case (created by the
//! migrations, dropped afterwards), so runs can share one server.

use persistence_api::{Error, ErrorKind, PersistenceId, Result, SequenceNr, Stores};
use persistence_sql::{sqlx, PostgresConfig};
use persistence_tck::Corruption;

/// The kit's factory over PostgreSQL: `config` gives the configuration of a store in one
/// schema (the plain URL, or TLS with authentication), `admin` damages and drops as the
/// same user.
pub struct Factory {
    config: Box<dyn Fn() -> PostgresConfig + Send + Sync>,
    admin: sqlx::PgPool,
}

impl Factory {
    /// Opens the admin pool with `config()` (two connections, no migrations).
    pub async fn new(
        config: impl Fn() -> PostgresConfig + Send + Sync + 'static,
    ) -> Result<Factory> {
        let mut admin = config();
        admin.max_connections = 2;
        admin.create_schema = false;
        let admin = persistence_sql::Postgres::open(admin).await?;
        Ok(Factory {
            admin: admin.pool().clone(),
            config: Box::new(config),
        })
    }
}

impl Factory {
    /// Damages one row of `table` (`event_journal` or `snapshot`) in the namespace's schema
    /// through the admin pool, and returns the damaged column.
    async fn corrupt_row(
        &self,
        namespace: &str,
        table: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        // The namespace is [a-z0-9_] (the kit's promise), so quoting it is enough.
        let table = format!("\"{namespace}\".\"{table}\"");
        let (column, set, before) = match what {
            // Bytes no codec wrote: CBOR "break" codes out of place.
            Corruption::Payload => ("payload", "payload = '\\xffffffffffffffff'", None),
            Corruption::Tags if table.ends_with("\"event_journal\"") => {
                ("tags", "tags = 'not json ['", None)
            }
            // The metadata bytes stay, their serializer id goes.
            Corruption::Metadata => ("meta_ser_id", "meta_ser_id = NULL", None),
            // PostgreSQL keeps TEXT valid UTF-8, so the manifest is made NULL, which the
            // driver never writes (the schema's NOT NULL is dropped first, as a hand-made
            // migration might).
            Corruption::Column => (
                "ser_manifest",
                "ser_manifest = NULL",
                Some(format!(
                    "ALTER TABLE {table} ALTER COLUMN ser_manifest DROP NOT NULL"
                )),
            ),
            other => {
                return Err(Error::unsupported(format!(
                    "the {table} table has no column for {other:?}"
                )))
            }
        };
        let storage = |e: sqlx::Error| Error::new(ErrorKind::Storage, "corrupt_row").with_source(e);
        if let Some(before) = before {
            sqlx::query(sqlx::AssertSqlSafe(before))
                .execute(&self.admin)
                .await
                .map_err(storage)?;
        }
        let guard = if what == Corruption::Metadata {
            " AND meta_payload IS NOT NULL"
        } else {
            ""
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {set} WHERE persistence_id = $1 AND sequence_nr = $2{guard}"
        )))
        .bind(persistence_id.as_str())
        .bind(sequence_nr as i64)
        .execute(&self.admin)
        .await
        .map_err(storage)?;
        if done.rows_affected() != 1 {
            return Err(Error::invalid_input(format!(
                "no row of {table} for {persistence_id} {sequence_nr} to damage ({what:?})"
            )));
        }
        Ok(column.to_owned())
    }
}

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        let mut config = (self.config)().with_schema(namespace);
        config.max_connections = 8;
        persistence_sql::open(config).await
    }

    fn page_size(&self) -> Option<u32> {
        Some((self.config)().page_size)
    }

    async fn cleanup(&self, namespace: &str) -> Result<()> {
        // The namespace is [a-z0-9_] (the kit's promise), so quoting it is enough.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE"
        )))
        .execute(&self.admin)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "drop schema").with_source(e))?;
        Ok(())
    }

    async fn corrupt_event(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        self.corrupt_row(
            namespace,
            "event_journal",
            persistence_id,
            sequence_nr,
            what,
        )
        .await
    }

    /// Empties the tag table and takes every id out of the registry: the registry is the
    /// `journal_ids` row's position (`id_ordering`), cleared here; the row itself is the
    /// id's metadata (highest sequence number, deleted-to mark) and stays.
    async fn drop_indexes(&self, namespace: &str) -> Result<()> {
        // The namespace is [a-z0-9_] (the kit's promise), so quoting it is enough.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM \"{namespace}\".\"event_tag\"; \
             UPDATE \"{namespace}\".\"journal_ids\" SET id_ordering = NULL"
        )))
        .execute(&self.admin)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "drop_indexes").with_source(e))?;
        Ok(())
    }

    async fn corrupt_snapshot(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        self.corrupt_row(namespace, "snapshot", persistence_id, sequence_nr, what)
            .await
    }
}
