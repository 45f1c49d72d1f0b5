//! What each database provides (the SQL), beneath the stores that both share.
//!
//! [`Backend`] is implemented by the PostgreSQL and the SQLite module with their own
//! write paths; the reads, deletes and snapshots are one [`SqlStore`] over either
//! database, its statements spelled by a [`Dialect`]. `journal.rs`, `snapshot.rs` and
//! `query.rs` implement the public traits once, on top of them (paging, live polling,
//! offsets).

use std::time::Duration;

use async_trait::async_trait;
use persistence_api::{
    AtomicWrite, Bytes, Capabilities, Error, Payload, PersistenceId, PersistentEvent, Result,
    SelectedSnapshot, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Stores, Timestamp,
};
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::error::{corrupt, err, into_sqlx, SqlError};
use crate::journal::SqlJournal;
use crate::query::SqlReadJournal;
use crate::schema::{Migration, Names};
use crate::snapshot::SqlSnapshotStore;

/// The stored state of one persistence id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdState {
    /// The highest sequence number ever written.
    pub highest: SequenceNr,
    /// Events up to here are deleted.
    pub deleted_to: SequenceNr,
}

/// What each database does its own way: writes (locking, batching, notifications) and
/// the wake-ups of live queries. Everything else is the shared [`Store`].
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The backend's name (`postgres` or `sqlite`), as errors and configuration name it.
    const NAME: &'static str;
    /// The reads, deletes and snapshots, the same for both databases.
    type Store: Store;
    /// The shared statements of this database.
    fn store(&self) -> &Self::Store;
    /// A receiver that changes whenever something may have been written (a write through
    /// these stores, or a notification from the database). Live queries wait on it.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// What [`Backend::subscribe`] hands out receivers of; bumped after every commit.
    fn wake_sender(&self) -> &watch::Sender<u64>;

    /// One atomic write (whose sequence numbers fit) in one transaction.
    async fn write_tx(&self, write: &AtomicWrite) -> std::result::Result<(), WriteError>;
    /// Stores one atomic write in one transaction, then wakes the live queries.
    async fn write(&self, write: &AtomicWrite) -> Result<()> {
        check_write_fits(write)?;
        match self.write_tx(write).await {
            Ok(()) => {
                wake(self.wake_sender());
                Ok(())
            }
            Err(e) => Err(e.into_public(write)),
        }
    }
    /// Stores several atomic writes, each all or nothing, in order, one result each; an
    /// outer `Err` when the whole call failed. By default one transaction per write.
    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.write(write).await);
        }
        Ok(results)
    }
}

/// The statements whose logic both databases share (only their SQL spelling differs).
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Rows per page.
    fn page_size(&self) -> usize;
    /// How long a live query sleeps when nothing woke it.
    fn poll_interval(&self) -> Duration;
    /// What the stores declare.
    fn capabilities(&self) -> Capabilities {
        capabilities(self.poll_interval())
    }

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

    /// Saves (or replaces) a snapshot.
    async fn save_snapshot(&self, metadata: &SnapshotMetadata, snapshot: &Payload) -> Result<()>;
    /// The matching snapshot with the highest sequence number.
    async fn load_snapshot(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>>;
    /// Deletes the snapshot at `sequence_nr`, with `timestamp` when given.
    async fn delete_snapshot(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        timestamp: Option<Timestamp>,
    ) -> Result<()>;
    /// Deletes every matching snapshot.
    async fn delete_snapshots(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<()>;
}

/// Sequence numbers and orderings are `BIGINT`: values above `i64::MAX` are clamped
/// (bounds) or refused (stored values, see [`stored_i64`]).
pub(crate) fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A value read back from a `BIGINT` column.
pub(crate) fn unsigned(v: i64, column: &'static str) -> std::result::Result<u64, SqlError> {
    u64::try_from(v).map_err(|_| corrupt(None, None, column, format!("{v} is negative")))
}

/// Refuses writes whose sequence numbers do not fit a `BIGINT`.
pub(crate) fn check_write_fits(write: &AtomicWrite) -> Result<()> {
    if write.highest_sequence_nr() > i64::MAX as u64 {
        return Err(Error::new(
            persistence_api::ErrorKind::Rejected,
            format!(
                "sequence number {} is above the largest the SQL backend stores ({})",
                write.highest_sequence_nr(),
                i64::MAX
            ),
        )
        .with_operation("write_events")
        .with_persistence_id(write.persistence_id().as_str())
        .with_sequence_range(write.lowest_sequence_nr(), write.highest_sequence_nr()));
    }
    Ok(())
}

/// Tags are stored beside the event as a JSON array (readable in `psql`/`sqlite3`), and
/// once per tag in the tag table for the queries.
pub(crate) fn encode_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        return "[]".to_string();
    }
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_string())
}

/// The distinct tags of every event of `write`, sorted (the lock order).
#[cfg(feature = "postgres")]
pub(crate) fn distinct_tags(write: &AtomicWrite) -> Vec<&str> {
    let mut tags: Vec<&str> = write
        .events()
        .iter()
        .flat_map(|e| e.tags.iter().map(String::as_str))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// The columns of a row of either database, read by index: the sqlx bounds in one place.
pub(crate) trait Columns {
    /// A `BIGINT` column.
    fn int(&self, index: usize) -> std::result::Result<i64, sqlx::Error>;
    /// A text column.
    fn text(&self, index: usize) -> std::result::Result<String, sqlx::Error>;
    /// A nullable text column.
    fn opt_text(&self, index: usize) -> std::result::Result<Option<String>, sqlx::Error>;
    /// A binary column.
    fn bytes(&self, index: usize) -> std::result::Result<Vec<u8>, sqlx::Error>;
    /// A nullable binary column.
    fn opt_bytes(&self, index: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error>;
}

impl<R> Columns for R
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn int(&self, index: usize) -> std::result::Result<i64, sqlx::Error> {
        self.try_get(index)
    }
    fn text(&self, index: usize) -> std::result::Result<String, sqlx::Error> {
        self.try_get(index)
    }
    fn opt_text(&self, index: usize) -> std::result::Result<Option<String>, sqlx::Error> {
        self.try_get(index)
    }
    fn bytes(&self, index: usize) -> std::result::Result<Vec<u8>, sqlx::Error> {
        self.try_get(index)
    }
    fn opt_bytes(&self, index: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error> {
        self.try_get(index)
    }
}

/// A persistence id read back from a table.
fn stored_id(id: String) -> std::result::Result<PersistenceId, SqlError> {
    PersistenceId::new(id.as_str()).map_err(|e| corrupt(None, None, "persistence_id", e))
}

/// The record a row holds, once its persistence id (and sequence number) are read: every
/// later column that does not decode names it.
struct Record {
    persistence_id: PersistenceId,
    sequence_nr: Option<u64>,
}

impl Record {
    /// Reads the persistence id at `id_index` and the sequence number at `seq_index`.
    fn read(
        row: &impl Columns,
        id_index: usize,
        seq_index: usize,
    ) -> std::result::Result<Record, SqlError> {
        let text = row
            .text(id_index)
            .map_err(|e| corrupt(None, None, "persistence_id", e))?;
        let mut record = Record {
            persistence_id: stored_id(text)?,
            sequence_nr: None,
        };
        let seq = record.int(row, seq_index, "sequence_nr")?;
        record.sequence_nr = Some(record.unsigned(seq, "sequence_nr")?);
        Ok(record)
    }

    fn sequence_nr(&self) -> u64 {
        self.sequence_nr.unwrap_or(0)
    }

    /// `column` of this record does not decode.
    fn corrupt(&self, column: &'static str, detail: impl std::fmt::Display) -> SqlError {
        corrupt(
            Some(self.persistence_id.as_str()),
            self.sequence_nr,
            column,
            detail,
        )
    }

    fn int(
        &self,
        row: &impl Columns,
        index: usize,
        column: &'static str,
    ) -> std::result::Result<i64, SqlError> {
        row.int(index).map_err(|e| self.corrupt(column, e))
    }

    fn unsigned(&self, v: i64, column: &'static str) -> std::result::Result<u64, SqlError> {
        u64::try_from(v).map_err(|_| self.corrupt(column, format!("{v} is negative")))
    }

    fn text(
        &self,
        row: &impl Columns,
        index: usize,
        column: &'static str,
    ) -> std::result::Result<String, SqlError> {
        row.text(index).map_err(|e| self.corrupt(column, e))
    }
}

/// Binds the twelve values of one event row in the order both databases' insert
/// statements take them: persistence id, sequence number, writer, timestamp, event
/// manifest, payload (3), metadata (3), tags.
pub(crate) fn bind_event<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    id: &str,
    event: &PersistentEvent,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a [u8]>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let meta = event.metadata.as_ref();
    query
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
}

/// The names of the six columns in which both tables keep a payload and its optional
/// metadata, in order: the payload's and the metadata's.
const PAYLOAD_COLUMNS: [&str; 3] = ["ser_id", "ser_manifest", "payload"];
const META_COLUMNS: [&str; 3] = ["meta_ser_id", "meta_ser_manifest", "meta_payload"];

/// Reads the payload and the optional metadata of `record` from the six columns starting
/// at index `first`. The metadata is stored with all
/// three of its columns or none; some of them without the others is corrupt.
fn read_payloads(
    row: &impl Columns,
    record: &Record,
    first: usize,
) -> std::result::Result<(Payload, Option<Payload>), SqlError> {
    let payload = Payload {
        serializer_id: record.text(row, first, PAYLOAD_COLUMNS[0])?,
        manifest: record.text(row, first + 1, PAYLOAD_COLUMNS[1])?,
        bytes: Bytes::from(
            row.bytes(first + 2)
                .map_err(|e| record.corrupt(PAYLOAD_COLUMNS[2], e))?,
        ),
    };
    let meta_ser_id = row
        .opt_text(first + 3)
        .map_err(|e| record.corrupt(META_COLUMNS[0], e))?;
    let meta_ser_manifest = row
        .opt_text(first + 4)
        .map_err(|e| record.corrupt(META_COLUMNS[1], e))?;
    let meta_payload = row
        .opt_bytes(first + 5)
        .map_err(|e| record.corrupt(META_COLUMNS[2], e))?;
    let metadata = match (meta_ser_id, meta_ser_manifest, meta_payload) {
        (Some(serializer_id), Some(manifest), Some(bytes)) => Some(Payload {
            serializer_id,
            manifest,
            bytes: Bytes::from(bytes),
        }),
        (None, None, None) => None,
        (id, manifest, bytes) => {
            let missing = [id.is_none(), manifest.is_none(), bytes.is_none()];
            let column = META_COLUMNS
                .iter()
                .zip(missing)
                .find_map(|(c, m)| m.then_some(*c))
                .unwrap_or(META_COLUMNS[0]);
            return Err(record.corrupt(
                column,
                "is NULL while other metadata columns are set (metadata is stored with all three or none)",
            ));
        }
    };
    Ok((payload, metadata))
}

/// The columns of an event row, in order, for `SELECT` lists.
pub(crate) const EVENT_COLUMNS: &str = "ordering, persistence_id, sequence_nr, writer_id, \
    write_timestamp, event_manifest, ser_id, ser_manifest, payload, meta_ser_id, \
    meta_ser_manifest, meta_payload, tags";

/// Reads the [`EVENT_COLUMNS`] of a row of either database: the ordering and the event. A
/// column that does not decode is a corrupt-column error naming the event (its persistence
/// id and sequence number, read first) and the column.
pub(crate) fn read_event(
    row: &impl Columns,
) -> std::result::Result<(u64, PersistentEvent), SqlError> {
    let record = Record::read(row, 1, 2)?;
    let ordering = record.int(row, 0, "ordering")?;
    let ordering = record.unsigned(ordering, "ordering")?;
    let writer_id = record.text(row, 3, "writer_id")?;
    let write_timestamp = record.int(row, 4, "write_timestamp")?;
    let event_manifest = record.text(row, 5, "event_manifest")?;
    let (payload, metadata) = read_payloads(row, &record, 6)?;
    let tags_text = record.text(row, 12, "tags")?;
    let tags: Vec<String> = serde_json::from_str(&tags_text).map_err(|e| {
        record.corrupt(
            "tags",
            format!("{tags_text:?} is not a JSON array of strings: {e}"),
        )
    })?;
    let event = PersistentEvent {
        sequence_nr: record.sequence_nr(),
        persistence_id: record.persistence_id,
        payload,
        event_manifest,
        writer_id,
        timestamp: Timestamp::from_millis(write_timestamp),
        tags,
        metadata,
    };
    Ok((ordering, event))
}

/// [`read_event`] inside sqlx's row mapping (`try_map`); `to_public` unwraps the error.
pub(crate) fn decode_event(
    row: &impl Columns,
) -> std::result::Result<(u64, PersistentEvent), sqlx::Error> {
    read_event(row).map_err(into_sqlx)
}

/// The columns of a snapshot row, in order.
pub(crate) const SNAPSHOT_COLUMNS: &str = "persistence_id, sequence_nr, created, ser_id, \
    ser_manifest, payload, meta_ser_id, meta_ser_manifest, meta_payload";

/// Reads the [`SNAPSHOT_COLUMNS`] of a row of either database; a column that does not
/// decode names the snapshot (persistence id and sequence number) and the column.
pub(crate) fn read_snapshot(row: &impl Columns) -> std::result::Result<SelectedSnapshot, SqlError> {
    let record = Record::read(row, 0, 1)?;
    let created = record.int(row, 2, "created")?;
    let (snapshot, metadata) = read_payloads(row, &record, 3)?;
    Ok(SelectedSnapshot {
        metadata: SnapshotMetadata {
            sequence_nr: record.sequence_nr(),
            persistence_id: record.persistence_id,
            timestamp: Timestamp::from_millis(created),
            metadata,
        },
        snapshot,
    })
}

/// The capabilities both databases share; `live_query_max_delay` is the poll interval
/// plus a margin for the query itself.
pub(crate) fn capabilities(poll_interval: Duration) -> Capabilities {
    Capabilities {
        atomic_write_max_events: None,
        max_event_size: None,
        max_snapshot_size: None,
        tags: true,
        event_metadata: true,
        snapshot_metadata: true,
        delete_events: true,
        conflict_detection: true,
        durable: true,
        snapshots: true,
        query_persistence_ids: true,
        query_events_by_persistence_id: true,
        query_events_by_tag: true,
        live_queries: true,
        live_query_max_delay: Some(poll_interval + Duration::from_millis(500)),
    }
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

/// The shared statements, rendered once for the schema, table prefix and dialect.
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
    save_snapshot: Sql,
    load_snapshot: Sql,
    delete_snapshot: Sql,
    delete_snapshot_at: Sql,
    delete_snapshots: Sql,
}

impl StoreSql {
    pub(crate) fn new(n: &Names, d: &Dialect) -> StoreSql {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let snap = n.get("snapshot");
        let Dialect {
            param: p,
            greatest,
            least,
            excluded,
            bigint,
        } = d;
        let s = |sql: String| -> Sql { sql.into() };
        let tag_columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let snapshot_values = (1..=SNAPSHOT_COLUMNS.split(", ").count())
            .map(|i| format!("{p}{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Every column but the key (persistence id, sequence number) is replaced.
        let snapshot_updates = SNAPSHOT_COLUMNS
            .split(", ")
            .skip(2)
            .map(|c| format!("{c} = {excluded}.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let criteria = format!(
            "persistence_id = {p}1 AND sequence_nr <= {p}2 AND sequence_nr >= {p}3 \
             AND created <= {p}4 AND created >= {p}5"
        );
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
            max_id_ordering: s(format!(
                "SELECT COALESCE(MAX(id_ordering), 0){bigint} FROM {ids}"
            )),
            ids: s(format!(
                "SELECT id_ordering, persistence_id FROM {ids} \
                 WHERE id_ordering > {p}1 AND id_ordering <= {p}2 ORDER BY id_ordering LIMIT {p}3"
            )),
            save_snapshot: s(format!(
                "INSERT INTO {snap} ({SNAPSHOT_COLUMNS}) VALUES ({snapshot_values}) \
                 ON CONFLICT (persistence_id, sequence_nr) DO UPDATE SET {snapshot_updates}"
            )),
            load_snapshot: s(format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM {snap} WHERE {criteria} \
                 ORDER BY sequence_nr DESC LIMIT 1"
            )),
            delete_snapshot: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = {p}1 AND sequence_nr = {p}2"
            )),
            delete_snapshot_at: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = {p}1 AND sequence_nr = {p}2 \
                 AND created = {p}3"
            )),
            delete_snapshots: s(format!("DELETE FROM {snap} WHERE {criteria}")),
        }
    }
}

/// A statement whose parameters are a persistence id and a snapshot selection (as
/// [`StoreSql`] writes them: id, max and min sequence number, max and min timestamp).
fn criteria_query<'q, DB>(
    sql: &Sql,
    id: &PersistenceId,
    criteria: &SnapshotSelectionCriteria,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    sqlx::query(q(sql))
        .bind(id.as_str())
        .bind(clamp(criteria.max_sequence_nr))
        .bind(clamp(criteria.min_sequence_nr))
        .bind(criteria.max_timestamp.as_millis())
        .bind(criteria.min_timestamp.as_millis())
}

/// The shared part of one opened database: its pool and the statements both databases
/// run the same way.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    /// The connection pool (the write paths use it too).
    pub pool: sqlx::Pool<DB>,
    sql: StoreSql,
    page_size: usize,
    poll_interval: Duration,
    /// SQLite: this process's writers take turns here, so they never spin on
    /// `SQLITE_BUSY`. `None` when the database lets writers run side by side.
    write_turns: Option<Mutex<()>>,
    /// The statement that opens a write transaction; `None` for the driver's `BEGIN`.
    begin: Option<&'static str>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub(crate) fn new(
        pool: sqlx::Pool<DB>,
        sql: StoreSql,
        page_size: usize,
        poll_interval: Duration,
        writers_take_turns: bool,
        begin: Option<&'static str>,
    ) -> SqlStore<DB> {
        SqlStore {
            pool,
            sql,
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
    for<'q> &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
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
            .map_err(err("highest_sequence_nr"))?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> std::result::Result<IdState, SqlError> {
            Ok(IdState {
                highest: unsigned(row.int(0)?, "highest_sequence_nr")?,
                deleted_to: unsigned(row.int(1)?, "deleted_to")?,
            })
        };
        read()
            .map(Some)
            .map_err(err("highest_sequence_nr"))
            .map_err(|e| e.with_persistence_id(id.as_str()))
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
            .map_err(err("replay"))?;
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
            .try_map(|row: DB::Row| decode_event(&row))
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
                let ordering = unsigned(row.int(0)?, "id_ordering")?;
                Ok((ordering, stored_id(row.text(1)?)?))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(err("persistence_ids"))
    }

    async fn save_snapshot(&self, metadata: &SnapshotMetadata, snapshot: &Payload) -> Result<()> {
        let meta = metadata.metadata.as_ref();
        let run = async {
            let _turn = self.write_turn().await;
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
        let row = criteria_query(&self.sql.load_snapshot, id, criteria)
            .fetch_optional(&self.pool)
            .await
            .map_err(err("load_snapshot"))?;
        row.map(|row| read_snapshot(&row))
            .transpose()
            .map_err(err("load_snapshot"))
    }

    async fn delete_snapshot(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        timestamp: Option<Timestamp>,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
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
        let _turn = self.write_turn().await;
        criteria_query(&self.sql.delete_snapshots, id, criteria)
            .execute(&self.pool)
            .await
            .map_err(err("delete_snapshots"))?;
        Ok(())
    }
}

/// Runs the SQL of migration `m` and records it in the migrations table `table`, on the
/// caller's connection (inside its transaction).
pub(crate) async fn apply_migration<DB>(
    conn: &mut DB::Connection,
    names: &Names,
    table: &str,
    m: &Migration,
    d: &Dialect,
) -> Result<()>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    sqlx::raw_sql(sqlx::AssertSqlSafe(names.render(m.template)))
        .execute(&mut *conn)
        .await
        .map_err(err("migrate"))?;
    let p = d.param;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, applied_at) VALUES ({p}1, {p}2, {p}3)"
    )))
    .bind(m.version)
    .bind(m.description)
    .bind(Timestamp::now().as_millis())
    .execute(&mut *conn)
    .await
    .map_err(err("migrate"))?;
    Ok(())
}

/// Commits `tx` when `result` is `Ok`, rolls it back otherwise, and passes `result` on.
pub(crate) async fn commit_or_rollback<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'_, DB>,
    result: std::result::Result<T, WriteError>,
) -> std::result::Result<T, WriteError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

/// Why a write failed, before it becomes a public error.
pub(crate) enum WriteError {
    Sql(SqlError),
    /// The first sequence number is at or below the id's stored highest (or deleted-to
    /// mark): taken, whether its event was stored, deleted, or skipped by a gap.
    Taken,
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
            WriteError::Taken => Error::new(
                persistence_api::ErrorKind::Conflict,
                "the sequence number is already taken: it is at or below the id's highest \
                 (another writer got there first, or its event was deleted)",
            )
            .with_operation("write_events"),
        };
        e.with_persistence_id(write.persistence_id().as_str())
            .with_sequence_range(write.lowest_sequence_nr(), write.highest_sequence_nr())
    }
}

/// The journal, snapshot store and read journal of `backend` (behind the checking layer).
pub(crate) fn stores<B: Backend>(backend: &std::sync::Arc<B>) -> Stores {
    Stores::new(
        B::NAME,
        backend.store().capabilities(),
        std::sync::Arc::new(SqlJournal {
            backend: backend.clone(),
        }),
        std::sync::Arc::new(SqlSnapshotStore {
            backend: backend.clone(),
        }),
        std::sync::Arc::new(SqlReadJournal {
            backend: backend.clone(),
        }),
    )
}
