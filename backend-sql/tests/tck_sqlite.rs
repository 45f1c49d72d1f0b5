//! The whole conformance kit against SQLite: one database file per case in a temporary
//! directory (no server, nothing to install). Run: `cargo test -p persistence-sql --test tck_sqlite`.

use std::path::PathBuf;
use std::process::ExitCode;

use persistence_api::{Error, ErrorKind, PersistenceId, Result, SequenceNr, Stores};
use persistence_sql::sqlx::{self, Connection};
use persistence_sql::SqliteConfig;
use persistence_tck::Corruption;

struct Factory {
    dir: tempfile::TempDir,
}

impl Factory {
    fn path(&self, namespace: &str) -> PathBuf {
        self.dir.path().join(format!("{namespace}.db"))
    }

    /// Damages one row of `table` (`event_journal` or `snapshot`) with a raw connection to
    /// the namespace's file, and returns the damaged column.
    async fn corrupt_row(
        &self,
        namespace: &str,
        table: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        let (column, set) = match what {
            // Bytes no codec wrote: CBOR "break" codes out of place.
            Corruption::Payload => ("payload", "payload = X'FFFFFFFFFFFFFFFF'"),
            Corruption::Tags if table == "event_journal" => ("tags", "tags = 'not json ['"),
            // The metadata bytes stay, their serializer id goes.
            Corruption::Metadata => ("meta_ser_id", "meta_ser_id = NULL"),
            // Text that is not UTF-8 in a TEXT column.
            Corruption::Column => ("ser_manifest", "ser_manifest = CAST(X'FFFE' AS TEXT)"),
            other => {
                return Err(Error::unsupported(format!(
                    "the {table} table has no column for {other:?}"
                )))
            }
        };
        let guard = if what == Corruption::Metadata {
            " AND meta_payload IS NOT NULL"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE \"{table}\" SET {set} WHERE persistence_id = ? AND sequence_nr = ?{guard}"
        );
        let storage = |e: sqlx::Error| Error::new(ErrorKind::Storage, "corrupt_row").with_source(e);
        let url = format!("sqlite://{}", self.path(namespace).display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .map_err(storage)?;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(persistence_id.as_str())
            .bind(sequence_nr as i64)
            .execute(&mut conn)
            .await
            .map_err(storage)?;
        conn.close().await.map_err(storage)?;
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
        persistence_sql::open(SqliteConfig::new(self.path(namespace))).await
    }

    fn page_size(&self) -> Option<u32> {
        Some(SqliteConfig::new(self.path("any")).page_size)
    }

    async fn cleanup(&self, namespace: &str) -> Result<()> {
        let db = self.path(namespace);
        for suffix in ["", "-wal", "-shm"] {
            let mut file = db.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
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
    /// `journal_ids` row's position (`id_ordering`, SQLite's rowid, so it is negated: the
    /// persistence-ids queries read positions above 0); the row itself is the id's
    /// metadata (highest sequence number, deleted-to mark) and stays.
    async fn drop_indexes(&self, namespace: &str) -> Result<()> {
        let storage =
            |e: sqlx::Error| Error::new(ErrorKind::Storage, "drop_indexes").with_source(e);
        let url = format!("sqlite://{}", self.path(namespace).display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .map_err(storage)?;
        sqlx::raw_sql(
            "DELETE FROM \"event_tag\"; \
             UPDATE \"journal_ids\" SET id_ordering = -id_ordering WHERE id_ordering > 0",
        )
        .execute(&mut conn)
        .await
        .map_err(storage)?;
        conn.close().await.map_err(storage)?;
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

fn main() -> ExitCode {
    persistence_tck::run_main("sqlite", || async {
        let dir = tempfile::Builder::new()
            .prefix("backend-sql-tck-")
            .tempdir()
            .map_err(|e| {
                persistence_api::Error::config("cannot create a temporary directory").with_source(e)
            })?;
        Ok(Factory { dir })
    })
}
