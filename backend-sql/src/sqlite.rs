//! SQLite: one database file, WAL mode, a pool of readers, writes taking turns.
//!
//! Orderings cannot become visible out of order here: SQLite has one writer at a time
//! (`BEGIN IMMEDIATE` takes the write lock before the first row is inserted, and this
//! process also queues its own writers on a mutex so they never spin on `SQLITE_BUSY`),
//! so the `AUTOINCREMENT` ordering is assigned and committed in the same order.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use persistence_api::{
    AtomicWrite, Capabilities, Error, ErrorKind, Payload, PersistenceId, PersistentEvent, Result,
    SelectedSnapshot, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Stores, Timestamp,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{watch, Mutex};

use crate::backend::{
    self, check_write_fits, clamp, decode_event, encode_tags, unsigned, Backend, IdState,
    SnapshotRow, EVENT_COLUMNS, SNAPSHOT_COLUMNS,
};
use crate::config::{SqliteConfig, SqliteSync};
use crate::error::{err, SqlError};
use crate::journal::SqlJournal;
use crate::query::SqlReadJournal;
use crate::schema::{Names, SQLITE_MIGRATIONS};
use crate::snapshot::SqlSnapshotStore;

type Sql = Arc<str>;

fn q(sql: &Sql) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(sql.clone())
}

/// The statements, rendered once for the table prefix.
struct Statements {
    upsert_id: Sql,
    insert_event: Sql,
    insert_tag: Sql,
    id_state: Sql,
    events: Sql,
    raise_deleted_to: Sql,
    delete_tags: Sql,
    delete_events: Sql,
    max_tag_ordering: Sql,
    tag_events: Sql,
    max_id_ordering: Sql,
    ids: Sql,
    save_snapshot: Sql,
    load_snapshot: Sql,
    delete_snapshot: Sql,
    delete_snapshot_at: Sql,
    delete_snapshots: Sql,
}

impl Statements {
    fn new(n: &Names) -> Statements {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let snap = n.get("snapshot");
        let s = |sql: String| -> Sql { sql.into() };
        let tag_columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        Statements {
            upsert_id: s(format!(
                "INSERT INTO {ids} (persistence_id, highest_sequence_nr) VALUES (?1, ?2) \
                 ON CONFLICT (persistence_id) DO UPDATE \
                 SET highest_sequence_nr = max(highest_sequence_nr, excluded.highest_sequence_nr) \
                 RETURNING deleted_to"
            )),
            insert_event: s(format!(
                "INSERT INTO {ev} (persistence_id, sequence_nr, writer_id, write_timestamp, \
                 event_manifest, ser_id, ser_manifest, payload, meta_ser_id, meta_ser_manifest, \
                 meta_payload, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 RETURNING ordering"
            )),
            insert_tag: s(format!(
                "INSERT INTO {tag} (tag, ordering, persistence_id, sequence_nr) \
                 VALUES (?1, ?2, ?3, ?4)"
            )),
            id_state: s(format!(
                "SELECT highest_sequence_nr, deleted_to FROM {ids} WHERE persistence_id = ?1"
            )),
            events: s(format!(
                "SELECT {EVENT_COLUMNS} FROM {ev} WHERE persistence_id = ?1 \
                 AND sequence_nr >= ?2 AND sequence_nr <= ?3 ORDER BY sequence_nr LIMIT ?4"
            )),
            raise_deleted_to: s(format!(
                "UPDATE {ids} SET deleted_to = max(deleted_to, min(?2, highest_sequence_nr)) \
                 WHERE persistence_id = ?1 RETURNING deleted_to"
            )),
            delete_tags: s(format!(
                "DELETE FROM {tag} WHERE persistence_id = ?1 AND sequence_nr <= ?2"
            )),
            delete_events: s(format!(
                "DELETE FROM {ev} WHERE persistence_id = ?1 AND sequence_nr <= ?2"
            )),
            max_tag_ordering: s(format!(
                "SELECT COALESCE(MAX(ordering), 0) FROM {tag} WHERE tag = ?1"
            )),
            tag_events: s(format!(
                "SELECT {tag_columns} FROM {tag} t JOIN {ev} e ON e.ordering = t.ordering \
                 WHERE t.tag = ?1 AND t.ordering > ?2 AND t.ordering <= ?3 \
                 ORDER BY t.ordering LIMIT ?4"
            )),
            max_id_ordering: s(format!("SELECT COALESCE(MAX(id_ordering), 0) FROM {ids}")),
            ids: s(format!(
                "SELECT id_ordering, persistence_id FROM {ids} \
                 WHERE id_ordering > ?1 AND id_ordering <= ?2 ORDER BY id_ordering LIMIT ?3"
            )),
            save_snapshot: s(format!(
                "INSERT INTO {snap} ({SNAPSHOT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (persistence_id, sequence_nr) DO UPDATE SET \
                 created = excluded.created, ser_id = excluded.ser_id, \
                 ser_manifest = excluded.ser_manifest, payload = excluded.payload, \
                 meta_ser_id = excluded.meta_ser_id, meta_ser_manifest = excluded.meta_ser_manifest, \
                 meta_payload = excluded.meta_payload"
            )),
            load_snapshot: s(format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM {snap} WHERE persistence_id = ?1 \
                 AND sequence_nr <= ?2 AND sequence_nr >= ?3 AND created <= ?4 AND created >= ?5 \
                 ORDER BY sequence_nr DESC LIMIT 1"
            )),
            delete_snapshot: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = ?1 AND sequence_nr = ?2"
            )),
            delete_snapshot_at: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = ?1 AND sequence_nr = ?2 AND created = ?3"
            )),
            delete_snapshots: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = ?1 \
                 AND sequence_nr <= ?2 AND sequence_nr >= ?3 AND created <= ?4 AND created >= ?5"
            )),
        }
    }
}

/// One opened SQLite database.
pub(crate) struct SqliteBackend {
    pool: SqlitePool,
    sql: Statements,
    write_lock: Mutex<()>,
    wake: watch::Sender<u64>,
    config: SqliteConfig,
}

/// Opens (creating when missing) the database file of `config` and its connection pool.
async fn connect(config: &SqliteConfig) -> Result<SqlitePool> {
    config.validate()?;
    if let Some(parent) = config.path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot create the directory {}", parent.display()),
                )
                .with_operation("open")
                .with_source(e)
            })?;
        }
    }
    let synchronous = match config.synchronous {
        SqliteSync::Full => SqliteSynchronous::Full,
        SqliteSync::Normal => SqliteSynchronous::Normal,
        SqliteSync::Off => SqliteSynchronous::Off,
    };
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(err("open"))?
        .filename(&config.path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(config.busy_timeout)
        .foreign_keys(false);
    SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(1)
        .idle_timeout(None::<Duration>)
        .connect_with(options)
        .await
        .map_err(err("open"))
}

/// Runs the embedded SQLite migrations that have not run yet on the database of `config`.
pub async fn migrate_sqlite(config: &SqliteConfig) -> Result<()> {
    let pool = connect(config).await?;
    let result = run_migrations(&pool, config).await;
    pool.close().await;
    result
}

async fn run_migrations(pool: &SqlitePool, config: &SqliteConfig) -> Result<()> {
    let names = Names::new(None, &config.table_prefix);
    let table = names.get("persistence_migrations");
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(err("migrate"))?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, \
         description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )))
    .execute(&mut *tx)
    .await
    .map_err(err("migrate"))?;
    let applied: Vec<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table}")))
            .fetch_all(&mut *tx)
            .await
            .map_err(err("migrate"))?;
    for m in SQLITE_MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(names.render(m.template)))
            .execute(&mut *tx)
            .await
            .map_err(err("migrate"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (version, description, applied_at) VALUES (?1, ?2, ?3)"
        )))
        .bind(m.version)
        .bind(m.description)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *tx)
        .await
        .map_err(err("migrate"))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "sqlite migration applied"
        );
    }
    tx.commit().await.map_err(err("migrate"))
}

impl SqliteBackend {
    pub(crate) async fn open(config: SqliteConfig) -> Result<SqliteBackend> {
        let pool = connect(&config).await?;
        if config.migrate {
            run_migrations(&pool, &config).await?;
        }
        let names = Names::new(None, &config.table_prefix);
        Ok(SqliteBackend {
            pool,
            sql: Statements::new(&names),
            write_lock: Mutex::new(()),
            wake: watch::Sender::new(0),
            config,
        })
    }

    /// The pool (for benchmarks and tools that issue their own statements).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The statements of one atomic write, inside the caller's transaction; on `Err` the
    /// caller rolls back (the transaction or the write's savepoint).
    async fn write_rows(
        &self,
        tx: &mut sqlx::SqliteConnection,
        write: &AtomicWrite,
    ) -> std::result::Result<(), WriteError> {
        let id = write.persistence_id().as_str();
        let deleted_to: i64 = sqlx::query_scalar(q(&self.sql.upsert_id))
            .bind(id)
            .bind(clamp(write.highest_sequence_nr()))
            .fetch_one(&mut *tx)
            .await?;
        if write.lowest_sequence_nr() <= unsigned(deleted_to, "deleted_to")? {
            return Err(WriteError::Deleted);
        }
        for event in write.events() {
            let meta = event.metadata.as_ref();
            let ordering: i64 = sqlx::query_scalar(q(&self.sql.insert_event))
                .bind(id)
                .bind(clamp(event.sequence_nr))
                .bind(event.writer_id.as_str())
                .bind(event.timestamp.as_millis())
                .bind(event.event_manifest.as_str())
                .bind(event.payload.serializer_id.as_str())
                .bind(event.payload.manifest.as_str())
                .bind(event.payload.bytes.as_ref())
                .bind(meta.map(|m| m.serializer_id.as_str()))
                .bind(meta.map(|m| m.manifest.as_str()))
                .bind(meta.map(|m| m.bytes.as_ref()))
                .bind(encode_tags(&event.tags))
                .fetch_one(&mut *tx)
                .await?;
            let mut tags: Vec<&str> = event.tags.iter().map(String::as_str).collect();
            tags.sort_unstable();
            tags.dedup();
            for tag in tags {
                sqlx::query(q(&self.sql.insert_tag))
                    .bind(tag)
                    .bind(ordering)
                    .bind(id)
                    .bind(clamp(event.sequence_nr))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// One atomic write in one transaction.
    async fn write_tx(&self, write: &AtomicWrite) -> std::result::Result<(), WriteError> {
        let _turn = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        match self.write_rows(&mut tx, write).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(())
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }

    /// Several atomic writes in one transaction (one sync to disk), each inside a savepoint
    /// so a refused one leaves nothing behind and does not stop the others.
    async fn write_batch_tx(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        let run = async {
            let _turn = self.write_lock.lock().await;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                if let Err(e) = check_write_fits(write) {
                    results.push(Err(e));
                    continue;
                }
                sqlx::query("SAVEPOINT atomic_write")
                    .execute(&mut *tx)
                    .await?;
                match self.write_rows(&mut tx, write).await {
                    Ok(()) => results.push(Ok(())),
                    Err(e) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT atomic_write")
                            .execute(&mut *tx)
                            .await?;
                        results.push(Err(e.into_public(write)));
                    }
                }
                sqlx::query("RELEASE SAVEPOINT atomic_write")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(results)
        };
        let results = run.await.map_err(err("write_events"))?;
        if results.iter().any(Result::is_ok) {
            backend::wake(&self.wake);
        }
        Ok(results)
    }
}

/// Why a write failed, before it becomes a public error.
pub(crate) enum WriteError {
    Sql(SqlError),
    /// The first sequence number is at or below the id's deleted-to mark.
    Deleted,
}

impl<E: Into<SqlError>> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError::Sql(e.into())
    }
}

impl WriteError {
    pub(crate) fn into_public(self, write: &AtomicWrite) -> Error {
        let e = match self {
            WriteError::Sql(e) => crate::error::to_public(e, "write_events"),
            WriteError::Deleted => Error::new(
                ErrorKind::Conflict,
                "the sequence number is already taken (its event was deleted)",
            )
            .with_operation("write_events"),
        };
        e.with_persistence_id(write.persistence_id().as_str())
            .with_sequence_range(write.lowest_sequence_nr(), write.highest_sequence_nr())
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn capabilities(&self) -> Capabilities {
        backend::capabilities(self.config.poll_interval)
    }

    fn page_size(&self) -> usize {
        self.config.page_size
    }

    fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    async fn write(&self, write: &AtomicWrite) -> Result<()> {
        check_write_fits(write)?;
        match self.write_tx(write).await {
            Ok(()) => {
                backend::wake(&self.wake);
                Ok(())
            }
            Err(e) => Err(e.into_public(write)),
        }
    }

    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        match writes {
            [write] => Ok(vec![self.write(write).await]),
            _ => self.write_batch_tx(writes).await,
        }
    }

    async fn id_state(&self, id: &PersistenceId) -> Result<Option<IdState>> {
        let row = sqlx::query(q(&self.sql.id_state))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err("highest_sequence_nr"))?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> std::result::Result<IdState, SqlError> {
            Ok(IdState {
                highest: unsigned(row.try_get(0)?, "highest_sequence_nr")?,
                deleted_to: unsigned(row.try_get(1)?, "deleted_to")?,
            })
        };
        read().map(Some).map_err(err("highest_sequence_nr"))
    }

    async fn events(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        limit: usize,
    ) -> Result<Vec<PersistentEvent>> {
        let rows = sqlx::query(q(&self.sql.events))
            .bind(id.as_str())
            .bind(clamp(from))
            .bind(clamp(to))
            .bind(limit as i64)
            // Each row becomes an event as it arrives, so a page never holds the raw rows
            // and the events at once.
            .try_map(|row: sqlx::sqlite::SqliteRow| decode_event(&row).map(|(_, e)| e))
            .fetch_all(&self.pool)
            .await
            .map_err(err("replay"))?;
        Ok(rows)
    }

    async fn delete_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let run = async {
            let _turn = self.write_lock.lock().await;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let deleted_to: Option<i64> = sqlx::query_scalar(q(&self.sql.raise_deleted_to))
                .bind(id.as_str())
                .bind(clamp(to))
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(deleted_to) = deleted_to {
                sqlx::query(q(&self.sql.delete_tags))
                    .bind(id.as_str())
                    .bind(deleted_to)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(q(&self.sql.delete_events))
                    .bind(id.as_str())
                    .bind(deleted_to)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        };
        run.await
            .map_err(err("delete_events_to"))
            .map_err(|e| e.with_persistence_id(id.as_str()))
    }

    async fn max_tag_ordering(&self, tag: &str) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(q(&self.sql.max_tag_ordering))
            .bind(tag)
            .fetch_one(&self.pool)
            .await
            .map_err(err("events_by_tag"))?;
        unsigned(max, "ordering").map_err(err("events_by_tag"))
    }

    async fn tag_events(
        &self,
        tag: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PersistentEvent)>> {
        let rows = sqlx::query(q(&self.sql.tag_events))
            .bind(tag)
            .bind(clamp(after))
            .bind(clamp(upto))
            .bind(limit as i64)
            .try_map(|row: sqlx::sqlite::SqliteRow| decode_event(&row))
            .fetch_all(&self.pool)
            .await
            .map_err(err("events_by_tag"))?;
        Ok(rows)
    }

    async fn max_id_ordering(&self) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(q(&self.sql.max_id_ordering))
            .fetch_one(&self.pool)
            .await
            .map_err(err("persistence_ids"))?;
        unsigned(max, "id_ordering").map_err(err("persistence_ids"))
    }

    async fn ids(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<(u64, PersistenceId)>> {
        let rows = sqlx::query(q(&self.sql.ids))
            .bind(clamp(after))
            .bind(clamp(upto))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(err("persistence_ids"))?;
        rows.iter()
            .map(|row| -> std::result::Result<_, SqlError> {
                let ordering = unsigned(row.try_get(0)?, "id_ordering")?;
                let id: String = row.try_get(1)?;
                let id = PersistenceId::new(id)
                    .map_err(|e| SqlError::Corrupt(format!("stored persistence id: {e}")))?;
                Ok((ordering, id))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(err("persistence_ids"))
    }

    async fn save_snapshot(&self, metadata: &SnapshotMetadata, snapshot: &Payload) -> Result<()> {
        let meta = metadata.metadata.as_ref();
        let run = async {
            let _turn = self.write_lock.lock().await;
            sqlx::query(q(&self.sql.save_snapshot))
                .bind(metadata.persistence_id.as_str())
                .bind(clamp(metadata.sequence_nr))
                .bind(metadata.timestamp.as_millis())
                .bind(snapshot.serializer_id.as_str())
                .bind(snapshot.manifest.as_str())
                .bind(snapshot.bytes.as_ref())
                .bind(meta.map(|m| m.serializer_id.as_str()))
                .bind(meta.map(|m| m.manifest.as_str()))
                .bind(meta.map(|m| m.bytes.as_ref()))
                .execute(&self.pool)
                .await
        };
        run.await.map_err(err("save_snapshot"))?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        let row = sqlx::query(q(&self.sql.load_snapshot))
            .bind(id.as_str())
            .bind(clamp(criteria.max_sequence_nr))
            .bind(clamp(criteria.min_sequence_nr))
            .bind(criteria.max_timestamp.as_millis())
            .bind(criteria.min_timestamp.as_millis())
            .fetch_optional(&self.pool)
            .await
            .map_err(err("load_snapshot"))?;
        row.map(|row| SnapshotRow::decode(&row).and_then(SnapshotRow::into_snapshot))
            .transpose()
            .map_err(err("load_snapshot"))
    }

    async fn delete_snapshot(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        timestamp: Option<Timestamp>,
    ) -> Result<()> {
        let _turn = self.write_lock.lock().await;
        let query = match timestamp {
            None => sqlx::query(q(&self.sql.delete_snapshot))
                .bind(id.as_str())
                .bind(clamp(sequence_nr)),
            Some(ts) => sqlx::query(q(&self.sql.delete_snapshot_at))
                .bind(id.as_str())
                .bind(clamp(sequence_nr))
                .bind(ts.as_millis()),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(err("delete_snapshot"))?;
        Ok(())
    }

    async fn delete_snapshots(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<()> {
        let _turn = self.write_lock.lock().await;
        sqlx::query(q(&self.sql.delete_snapshots))
            .bind(id.as_str())
            .bind(clamp(criteria.max_sequence_nr))
            .bind(clamp(criteria.min_sequence_nr))
            .bind(criteria.max_timestamp.as_millis())
            .bind(criteria.min_timestamp.as_millis())
            .execute(&self.pool)
            .await
            .map_err(err("delete_snapshots"))?;
        Ok(())
    }
}

/// Opens the SQLite database of `config` (creating the file, its directory and the tables
/// when missing) and returns its journal, snapshot store and read journal.
pub async fn open_sqlite(config: SqliteConfig) -> Result<Stores> {
    Ok(SqliteStores::open(config).await?.stores())
}

/// An opened SQLite database: its [`Stores`] and its connection pool.
///
/// [`open_sqlite`] is the short way; this handle also gives the pool, for tools and
/// benchmarks that issue their own statements, and closes it.
pub struct SqliteStores {
    backend: Arc<SqliteBackend>,
}

impl SqliteStores {
    /// Opens the database of `config`.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStores> {
        Ok(SqliteStores {
            backend: Arc::new(SqliteBackend::open(config).await?),
        })
    }

    /// The journal, snapshot store and read journal (behind the checking layer).
    pub fn stores(&self) -> Stores {
        Stores::new(
            Arc::new(SqlJournal {
                backend: self.backend.clone(),
            }),
            Arc::new(SqlSnapshotStore {
                backend: self.backend.clone(),
            }),
            Arc::new(SqlReadJournal {
                backend: self.backend.clone(),
            }),
        )
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        self.backend.pool()
    }

    /// Closes the pool: waits for connections in use, then closes them (checkpointing the WAL).
    pub async fn close(&self) {
        self.backend.pool().close().await;
    }
}
