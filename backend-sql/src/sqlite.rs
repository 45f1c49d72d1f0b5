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
use persistence_api::{AtomicWrite, Error, ErrorKind, Result, Stores};
use sqlx::sqlite::{
    Sqlite as SqliteDb, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::watch;

use crate::config::{SqliteConfig, SqliteSync};
use crate::core::{q, wake, Backend, Sql, SqlStore, SQLITE};
use crate::error::{err, err_in, to_public, SqlError};
use crate::journal::{check_write_fits, commit_or_rollback, write_one, WriteError};
use crate::schema::{bind_event, clamp, migrate_sqlite, unsigned, Columns, Names};

/// The write statements, rendered once for the table prefix.
struct Statements {
    upsert_id: Sql,
    insert_event: Sql,
    insert_tag: Sql,
    read_ids: Sql,
    /// The tables' names, for the group statements (whose row count varies).
    ids: String,
    ev: String,
    tag: String,
}

impl Statements {
    fn new(n: &Names) -> Statements {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let s = |sql: String| -> Sql { sql.into() };
        Statements {
            upsert_id: s(format!(
                "INSERT INTO {ids} (persistence_id, highest_sequence_nr) VALUES (?1, ?2) \
                 ON CONFLICT (persistence_id) DO UPDATE \
                 SET highest_sequence_nr = max(highest_sequence_nr, excluded.highest_sequence_nr) \
                 WHERE highest_sequence_nr < ?3 \
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
            read_ids: s(format!(
                "SELECT persistence_id, highest_sequence_nr, deleted_to FROM {ids} \
                 WHERE persistence_id IN (SELECT value FROM json_each(?1))"
            )),
            ids: ids.to_owned(),
            ev: ev.to_owned(),
            tag: tag.to_owned(),
        }
    }
}

/// One opened SQLite database.
pub(crate) struct SqliteBackend {
    /// The pool, the shared statements and the write turns.
    store: SqlStore<SqliteDb>,
    sql: Statements,
    wake: watch::Sender<u64>,
    group_commit: crate::group_commit::GroupCommit,
}

/// Opens (creating when missing) the database file of `config` and its connection pool.
pub(crate) async fn connect(config: &SqliteConfig) -> Result<SqlitePool> {
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
        .map_err(err_in("open"))?
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
        .map_err(err_in("open"))
}

/// Runs the embedded SQLite migrations that have not run yet on the database of `config`.
pub(crate) async fn create_schema(config: &SqliteConfig) -> Result<()> {
    let pool = connect(config).await?;
    let result = migrate_sqlite(&pool, config).await;
    pool.close().await;
    result
}

impl SqliteBackend {
    pub(crate) async fn open(config: SqliteConfig) -> Result<SqliteBackend> {
        let pool = connect(&config).await?;
        if config.create_schema {
            migrate_sqlite(&pool, &config).await?;
        }
        let names = Names::new(None, &config.table_prefix());
        Ok(SqliteBackend {
            store: SqlStore::new(
                pool,
                &names,
                &SQLITE,
                crate::durable_state::StateSql::sqlite(&names),
                crate::maintenance::MaintenanceSql::sqlite(&names),
                config.page_size as usize,
                config.poll_interval,
                true,
                Some("BEGIN IMMEDIATE"),
            ),
            sql: Statements::new(&names),
            wake: watch::Sender::new(0),
            group_commit: crate::group_commit::GroupCommit::new(
                crate::group_commit::GroupCommitSettings {
                    enabled: config.group_commit,
                    window: config.group_commit_window,
                    max_events: config.group_commit_max_events as usize,
                    max_bytes: usize::try_from(config.group_commit_max_bytes).unwrap_or(usize::MAX),
                    max_in_flight: 1,
                },
            ),
        })
    }

    /// The pool (for benchmarks and tools that issue their own statements).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.store.pool
    }

    /// The statements of one atomic write, inside the caller's transaction; on `Err` the
    /// caller rolls back (the transaction or the write's savepoint).
    async fn write_rows(
        &self,
        tx: &mut sqlx::SqliteConnection,
        write: &AtomicWrite,
    ) -> std::result::Result<(), WriteError> {
        let id = write.persistence_id().as_str();
        // Every number up to the stored highest is taken (stored, deleted, or skipped by
        // a write that left a gap): the upsert updates, and returns, nothing then.
        let deleted_to: Option<i64> = sqlx::query_scalar(q(&self.sql.upsert_id))
            .bind(id)
            .bind(clamp(write.highest_sequence_nr()))
            .bind(clamp(write.lowest_sequence_nr()))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(deleted_to) = deleted_to else {
            return Err(WriteError::Taken);
        };
        if write.lowest_sequence_nr() <= unsigned(deleted_to, "deleted_to")? {
            return Err(WriteError::Taken);
        }
        for event in write.events() {
            let ordering = bind_event(sqlx::query(q(&self.sql.insert_event)), id, event)
                .fetch_one(&mut *tx)
                .await?
                .int(0)?;
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

    /// A group of atomic writes in a fixed number of statements, whatever its size (group
    /// commit; see the README's "Group commit"): the ids' stored highest numbers and
    /// deleted-to marks read in one statement, each write checked against them in arrival
    /// order (this transaction is the database's only writer: `BEGIN IMMEDIATE`), then the
    /// accepted writes' id rows, events and tag rows inserted in multi-row statements. A
    /// write that does not fit or whose number is taken gets its error and writes nothing;
    /// the rest are written. One result per write, in order. On `Err` the caller rolls back.
    async fn write_group_rows(
        &self,
        tx: &mut sqlx::SqliteConnection,
        writes: &[AtomicWrite],
    ) -> std::result::Result<Vec<Result<()>>, SqlError> {
        use std::collections::HashMap;
        let mut results: Vec<Option<Result<()>>> = writes
            .iter()
            .map(|w| check_write_fits(w, Self::MAX_TAG_BYTES).err().map(Err))
            .collect();
        let mut ids: Vec<&str> = writes
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(w, _)| w.persistence_id().as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut stored: HashMap<String, (u64, u64)> = HashMap::with_capacity(ids.len());
        if !ids.is_empty() {
            let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
            for row in sqlx::query(q(&self.sql.read_ids))
                .bind(json)
                .fetch_all(&mut *tx)
                .await?
            {
                let highest = unsigned(row.int(1)?, "highest_sequence_nr")?;
                let deleted_to = unsigned(row.int(2)?, "deleted_to")?;
                stored.insert(row.text(0)?, (highest, deleted_to));
            }
        }
        // Each write against the highest as the writes before it in the group left it.
        let mut accepted: Vec<&AtomicWrite> = Vec::new();
        let mut highest: HashMap<&str, u64> = HashMap::new();
        for (write, slot) in writes.iter().zip(results.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let id = write.persistence_id().as_str();
            let (stored_highest, deleted_to) = stored.get(id).copied().unwrap_or((0, 0));
            let current = highest.entry(id).or_insert(stored_highest);
            if write.lowest_sequence_nr() > *current && write.lowest_sequence_nr() > deleted_to {
                *current = write.highest_sequence_nr();
                accepted.push(write);
                *slot = Some(Ok(()));
            } else {
                *slot = Some(Err(WriteError::Taken.into_public()));
            }
        }
        if !accepted.is_empty() {
            self.insert_group(tx, &accepted, &highest).await?;
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
    }

    /// The multi-row statements of [`SqliteBackend::write_group_rows`]: the id rows at their
    /// new highest, the events in order, the tag rows of the events inserted. Rows per
    /// statement stay under SQLite's 32,766 bound variables.
    async fn insert_group(
        &self,
        tx: &mut sqlx::SqliteConnection,
        accepted: &[&AtomicWrite],
        highest: &std::collections::HashMap<&str, u64>,
    ) -> std::result::Result<(), SqlError> {
        let values = |rows: usize, columns: usize| -> String {
            let row = format!("({})", vec!["?"; columns].join(", "));
            vec![row.as_str(); rows].join(", ")
        };
        let mut new_highest: Vec<(&str, u64)> = highest.iter().map(|(id, h)| (*id, *h)).collect();
        new_highest.sort_unstable();
        for chunk in new_highest.chunks(10_000) {
            let sql = format!(
                "INSERT INTO {} (persistence_id, highest_sequence_nr) VALUES {} \
                 ON CONFLICT (persistence_id) DO UPDATE \
                 SET highest_sequence_nr = max(highest_sequence_nr, excluded.highest_sequence_nr)",
                self.sql.ids,
                values(chunk.len(), 2)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, h) in chunk {
                query = query.bind(*id).bind(clamp(*h));
            }
            query.execute(&mut *tx).await?;
        }
        let events: Vec<(&str, &persistence_api::PersistentEvent)> = accepted
            .iter()
            .flat_map(|w| {
                let id = w.persistence_id().as_str();
                w.events().iter().map(move |e| (id, e))
            })
            .collect();
        let mut tag_rows: Vec<(&str, i64, &str, i64)> = Vec::new();
        for chunk in events.chunks(2_000) {
            let sql = format!(
                "INSERT INTO {} (persistence_id, sequence_nr, writer_id, write_timestamp, \
                 event_manifest, ser_id, ser_manifest, payload, meta_ser_id, meta_ser_manifest, \
                 meta_payload, tags) VALUES {} RETURNING ordering, persistence_id, sequence_nr",
                self.sql.ev,
                values(chunk.len(), 12)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, event) in chunk {
                query = bind_event(query, id, event);
            }
            let rows = query.fetch_all(&mut *tx).await?;
            if chunk.iter().all(|(_, e)| e.tags.is_empty()) {
                continue;
            }
            let mut orderings = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                orderings.insert((row.text(1)?, row.int(2)?), row.int(0)?);
            }
            for (id, event) in chunk {
                if event.tags.is_empty() {
                    continue;
                }
                let seq = clamp(event.sequence_nr);
                let ordering = *orderings.get(&((*id).to_owned(), seq)).ok_or_else(|| {
                    SqlError::Invariant(format!("no ordering returned for {id} #{seq}"))
                })?;
                let mut tags: Vec<&str> = event.tags.iter().map(String::as_str).collect();
                tags.sort_unstable();
                tags.dedup();
                tag_rows.extend(tags.into_iter().map(|t| (t, ordering, *id, seq)));
            }
        }
        for chunk in tag_rows.chunks(8_000) {
            let sql = format!(
                "INSERT INTO {} (tag, ordering, persistence_id, sequence_nr) VALUES {}",
                self.sql.tag,
                values(chunk.len(), 4)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (tag, ordering, id, seq) in chunk {
                query = query.bind(*tag).bind(*ordering).bind(*id).bind(*seq);
            }
            query.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Several atomic writes in one transaction (one sync to disk): first in one pass
    /// ([`SqliteBackend::write_group_rows`]); should that fail, rolled back and written again
    /// each inside a savepoint, so a refused one leaves nothing behind and does not stop
    /// the others.
    async fn write_batch_tx(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        let _turn = self.store.write_turn().await;
        let one_pass = async {
            let mut tx = self.store.begin().await?;
            match self.write_group_rows(&mut tx, writes).await {
                Ok(results) => {
                    tx.commit().await?;
                    Ok(Some(results))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "one-pass group write failed; writing each alone");
                    tx.rollback().await?;
                    Ok::<_, SqlError>(None)
                }
            }
        };
        match one_pass.await {
            Ok(Some(results)) => {
                if results.iter().any(Result::is_ok) {
                    wake(&self.wake);
                }
                return Ok(results);
            }
            Ok(None) => {}
            Err(e) => return Err(to_public(e)),
        }
        let run = async {
            let mut tx = self.store.begin().await?;
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                if let Err(e) = check_write_fits(write, None) {
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
                        results.push(Err(e.into_public()));
                    }
                }
                sqlx::query("RELEASE SAVEPOINT atomic_write")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(results)
        };
        let results = run.await.map_err(err)?;
        if results.iter().any(Result::is_ok) {
            wake(&self.wake);
        }
        Ok(results)
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    const NAME: &'static str = Sqlite::NAME;
    type Store = SqlStore<SqliteDb>;

    fn store(&self) -> &SqlStore<SqliteDb> {
        &self.store
    }

    fn wake_sender(&self) -> &watch::Sender<u64> {
        &self.wake
    }

    fn group_commit(&self) -> &crate::group_commit::GroupCommit {
        &self.group_commit
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// One atomic write in one transaction.
    async fn write_tx(&self, write: &AtomicWrite) -> std::result::Result<(), WriteError> {
        let _turn = self.store.write_turn().await;
        let mut tx = self.store.begin().await?;
        let result = self.write_rows(&mut tx, write).await;
        commit_or_rollback(tx, result).await
    }

    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        match writes {
            [write] => Ok(vec![write_one(self, write).await]),
            _ => self.write_batch_tx(writes).await,
        }
    }
}

/// An opened SQLite database: its [`Stores`] and its connection pool.
///
/// [`crate::open`] is the short way; this handle also gives the pool, for tools and
/// benchmarks that issue their own statements, and closes it.
pub struct Sqlite {
    backend: Arc<SqliteBackend>,
}

impl Sqlite {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "sqlite";

    /// Opens the database file of `config` (creating it and its directories when missing)
    /// and creates the schema when `create_schema` is set.
    pub async fn open(config: SqliteConfig) -> Result<Sqlite> {
        Ok(Sqlite {
            backend: Arc::new(SqliteBackend::open(config).await?),
        })
    }

    /// What this backend declares (the same for both databases: everything, no size
    /// limits, live queries within the poll interval plus 500 ms, projection offsets with
    /// exactly-once transactions).
    pub fn capabilities(&self) -> persistence_api::Capabilities {
        use crate::core::Store;
        crate::capabilities(self.backend.store().poll_interval())
    }

    /// The journal, snapshot store, read journal and projection offset store (behind the
    /// checking layer).
    pub fn stores(&self) -> Stores {
        crate::stores(&self.backend)
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
