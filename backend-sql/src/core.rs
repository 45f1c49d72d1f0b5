//! The shared core of both databases: what each database provides ([`Backend`]: its own
//! write path and wake-ups), the reads and deletes both run the same way ([`Store`],
//! implemented once by [`SqlStore`] over either database), the [`Dialect`] that spells
//! their statements, and the wake-up of live queries.
//!
//! `journal.rs`, `snapshot.rs`, `query.rs`, `offsets.rs`, `durable_state.rs` and
//! `maintenance.rs` implement the public traits
//! once on top of these (paging, live polling, offsets, projection offsets);
//! `postgres.rs` and `sqlite.rs` implement [`Backend`].

use std::time::Duration;

use async_trait::async_trait;
use persistence_api::{AtomicWrite, PersistenceId, PersistentEvent, Result, SequenceNr};
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::durable_state::{StateRows, StateSql};
use crate::error::{err, SqlError};
use crate::journal::WriteError;
use crate::maintenance::{MaintenanceRows, MaintenanceSql};
use crate::offsets::{OffsetRows, OffsetSql};
use crate::schema::{clamp, decode_event, stored_id, unsigned, Columns, Names, EVENT_COLUMNS};
use crate::snapshot::{SnapshotRows, SnapshotSql};

/// The stored state of one persistence id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdState {
    /// The highest sequence number ever written.
    pub highest: SequenceNr,
    /// Events up to here are deleted.
    pub deleted_to: SequenceNr,
}

/// What each database does its own way: writes (locking, batching, notifications) and
/// the wake-ups of live queries. Everything else is the shared [`Store`] (and
/// [`SnapshotRows`]).
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The backend's name (`postgres` or `sqlite`), as errors and configuration name it.
    const NAME: &'static str;
    /// The longest tag (bytes) the tag table's key takes, when the database limits it.
    const MAX_TAG_BYTES: Option<usize> = None;
    /// The reads, deletes, snapshots, projection offsets and durable states, the same for
    /// both databases.
    type Store: Store + SnapshotRows + OffsetRows + StateRows + MaintenanceRows;
    /// The shared statements of this database.
    fn store(&self) -> &Self::Store;
    /// A receiver that changes whenever something may have been written (a write through
    /// these stores, or a notification from the database). Live queries wait on it.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// What [`Backend::subscribe`] hands out receivers of; bumped after every commit.
    fn wake_sender(&self) -> &watch::Sender<u64>;

    /// One atomic write (whose sequence numbers fit) in one transaction;
    /// [`crate::journal::write_one`] checks it first and wakes the live queries after.
    async fn write_tx(&self, write: &AtomicWrite) -> std::result::Result<(), WriteError>;
    /// Stores several atomic writes, each all or nothing, in order, one result each; an
    /// outer `Err` when the whole call failed.
    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>>;
    /// The group-commit queue of concurrent single writes (see `group_commit.rs`).
    fn group_commit(&self) -> &crate::group_commit::GroupCommit;
}

/// The statements whose logic both databases share (only their SQL spelling differs):
/// the journal's reads and deletes and the queries' reads. The snapshots' are
/// [`SnapshotRows`].
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Rows per page.
    fn page_size(&self) -> usize;
    /// How long a live query sleeps when nothing woke it.
    fn poll_interval(&self) -> Duration;

    /// The highest and deleted-to of `id`, `None` if it never wrote.
    async fn id_state(&self, id: &PersistenceId) -> Result<Option<IdState>>;
    /// Events of `id` with `from <= sequence_nr <= to`, ascending, at most `limit`.
    async fn events(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        limit: usize,
    ) -> Result<Vec<PersistentEvent>>;
    /// Deletes events of `id` up to `to` (bounded by its highest) and raises deleted-to.
    async fn delete_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()>;

    /// The highest ordering of `tag`, 0 if none.
    async fn max_tag_ordering(&self, tag: &str) -> Result<u64>;
    /// Events of `tag` with `after < ordering <= upto`, by ordering, at most `limit`.
    async fn tag_events(
        &self,
        tag: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PersistentEvent)>>;
    /// The highest id ordering, 0 if none.
    async fn max_id_ordering(&self) -> Result<u64>;
    /// Ids with `after < id_ordering <= upto`, by id ordering, at most `limit`.
    async fn ids(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<(u64, PersistenceId)>>;
}

/// Bumps a wake-up counter (after a commit).
pub(crate) fn wake(sender: &watch::Sender<u64>) {
    sender.send_modify(|v| *v = v.wrapping_add(1));
}

/// How one database spells the statements the two share.
pub(crate) struct Dialect {
    /// What stands before a parameter's number: `$` (PostgreSQL) or `?` (SQLite).
    pub param: char,
    /// The larger of two values.
    pub greatest: &'static str,
    /// The smaller of two values.
    pub least: &'static str,
    /// The row an upsert would have inserted.
    pub excluded: &'static str,
    /// Appended to an aggregate so it reads back as a `BIGINT`.
    pub bigint: &'static str,
}

/// PostgreSQL's spelling.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: Dialect = Dialect {
    param: '$',
    greatest: "GREATEST",
    least: "LEAST",
    excluded: "EXCLUDED",
    bigint: "::bigint",
};

/// SQLite's spelling.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: Dialect = Dialect {
    param: '?',
    greatest: "max",
    least: "min",
    excluded: "excluded",
    bigint: "",
};

/// A statement rendered once, shared by every call.
pub(crate) type Sql = std::sync::Arc<str>;

/// A rendered statement as sqlx takes it (it is built from quoted names only).
pub(crate) fn q(sql: &Sql) -> sqlx::AssertSqlSafe<Sql> {
    sqlx::AssertSqlSafe(sql.clone())
}

/// The shared statements of the journal's reads and deletes and of the queries, rendered
/// once for the schema, table prefix and dialect.
pub(crate) struct StoreSql {
    id_state: Sql,
    events: Sql,
    raise_deleted_to: Sql,
    delete_tags: Sql,
    delete_events: Sql,
    max_tag_ordering: Sql,
    tag_events: Sql,
    max_id_ordering: Sql,
    ids: Sql,
}

impl StoreSql {
    pub(crate) fn new(n: &Names, d: &Dialect) -> StoreSql {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let Dialect {
            param: p,
            greatest,
            least,
            bigint,
            ..
        } = d;
        let s = |sql: String| -> Sql { sql.into() };
        let tag_columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        StoreSql {
            id_state: s(format!(
                "SELECT highest_sequence_nr, deleted_to FROM {ids} WHERE persistence_id = {p}1"
            )),
            events: s(format!(
                "SELECT {EVENT_COLUMNS} FROM {ev} WHERE persistence_id = {p}1 \
                 AND sequence_nr >= {p}2 AND sequence_nr <= {p}3 ORDER BY sequence_nr LIMIT {p}4"
            )),
            raise_deleted_to: s(format!(
                "UPDATE {ids} SET deleted_to = \
                 {greatest}(deleted_to, {least}({p}2, highest_sequence_nr)) \
                 WHERE persistence_id = {p}1 RETURNING deleted_to"
            )),
            delete_tags: s(format!(
                "DELETE FROM {tag} WHERE persistence_id = {p}1 AND sequence_nr <= {p}2"
            )),
            delete_events: s(format!(
                "DELETE FROM {ev} WHERE persistence_id = {p}1 AND sequence_nr <= {p}2"
            )),
            max_tag_ordering: s(format!(
                "SELECT COALESCE(MAX(ordering), 0){bigint} FROM {tag} WHERE tag = {p}1"
            )),
            tag_events: s(format!(
                "SELECT {tag_columns} FROM {tag} t JOIN {ev} e ON e.ordering = t.ordering \
                 WHERE t.tag = {p}1 AND t.ordering > {p}2 AND t.ordering <= {p}3 \
                 ORDER BY t.ordering LIMIT {p}4"
            )),
            // Positions below 1 are ids taken out of the listing (see `maintenance.rs`).
            max_id_ordering: s(format!(
                "SELECT COALESCE(MAX(id_ordering), 0){bigint} FROM {ids} WHERE id_ordering > 0"
            )),
            ids: s(format!(
                "SELECT id_ordering, persistence_id FROM {ids} \
                 WHERE id_ordering > {p}1 AND id_ordering <= {p}2 ORDER BY id_ordering LIMIT {p}3"
            )),
        }
    }
}

/// The shared part of one opened database: its pool and the statements both databases
/// run the same way.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    /// The connection pool (the write paths use it too).
    pub pool: sqlx::Pool<DB>,
    sql: StoreSql,
    /// The snapshot statements (see `snapshot.rs`).
    pub(crate) snapshot_sql: SnapshotSql,
    /// The projection offset statements (see `offsets.rs`).
    pub(crate) offset_sql: OffsetSql,
    /// The durable-state statements (see `durable_state.rs`).
    pub(crate) state_sql: StateSql,
    /// The journal maintenance statements (see `maintenance.rs`).
    pub(crate) maintenance_sql: MaintenanceSql,
    page_size: usize,
    poll_interval: Duration,
    /// SQLite: this process's writers take turns here, so they never spin on
    /// `SQLITE_BUSY`. `None` when the database lets writers run side by side.
    write_turns: Option<Mutex<()>>,
    /// The statement that opens a write transaction; `None` for the driver's `BEGIN`.
    begin: Option<&'static str>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    /// The store of `pool`, its statements rendered for `names` in `dialect` (the
    /// durable-state writes and the maintenance statements by the database, in
    /// `state_sql` and `maintenance_sql`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pool: sqlx::Pool<DB>,
        names: &Names,
        dialect: &Dialect,
        state_sql: StateSql,
        maintenance_sql: MaintenanceSql,
        page_size: usize,
        poll_interval: Duration,
        writers_take_turns: bool,
        begin: Option<&'static str>,
    ) -> SqlStore<DB> {
        SqlStore {
            pool,
            sql: StoreSql::new(names, dialect),
            snapshot_sql: SnapshotSql::new(names, dialect),
            offset_sql: OffsetSql::new(names, dialect),
            state_sql,
            maintenance_sql,
            page_size,
            poll_interval,
            write_turns: writers_take_turns.then(|| Mutex::new(())),
            begin,
        }
    }

    /// Waits for this process's turn to write (held until the guard drops).
    pub(crate) async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.write_turns {
            Some(turns) => Some(turns.lock().await),
            None => None,
        }
    }

    /// Opens a write transaction.
    pub(crate) async fn begin(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
        match self.begin {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        }
    }
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    fn page_size(&self) -> usize {
        self.page_size
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    async fn id_state(&self, id: &PersistenceId) -> Result<Option<IdState>> {
        let row = sqlx::query(q(&self.sql.id_state))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> std::result::Result<IdState, SqlError> {
            Ok(IdState {
                highest: unsigned(row.int(0)?, "highest_sequence_nr")?,
                deleted_to: unsigned(row.int(1)?, "deleted_to")?,
            })
        };
        read().map(Some).map_err(err)
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
            .try_map(|row: DB::Row| decode_event(&row).map(|(_, e)| e))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows)
    }

    async fn delete_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let run = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
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
        run.await.map_err(err)
    }

    async fn max_tag_ordering(&self, tag: &str) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(q(&self.sql.max_tag_ordering))
            .bind(tag)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        unsigned(max, "ordering").map_err(err)
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
            .try_map(|row: DB::Row| decode_event(&row))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows)
    }

    async fn max_id_ordering(&self) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(q(&self.sql.max_id_ordering))
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        unsigned(max, "id_ordering").map_err(err)
    }

    async fn ids(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<(u64, PersistenceId)>> {
        let rows = sqlx::query(q(&self.sql.ids))
            .bind(clamp(after))
            .bind(clamp(upto))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|row| -> std::result::Result<_, SqlError> {
                let ordering = unsigned(row.int(0)?, "id_ordering")?;
                Ok((ordering, stored_id(row.text(1)?)?))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(err)
    }
}
