//! What each database provides (the SQL), beneath the stores that both share.
//!
//! [`Backend`] is implemented by the PostgreSQL and the SQLite module with their own
//! statements; `journal.rs`, `snapshot.rs` and `query.rs` implement the public traits
//! once, on top of it (paging, live polling, offsets).

use std::time::Duration;

use async_trait::async_trait;
use persistence_api::{
    AtomicWrite, Bytes, Capabilities, Error, Payload, PersistenceId, PersistentEvent, Result,
    SelectedSnapshot, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Timestamp,
};
use tokio::sync::watch;

use crate::error::SqlError;

/// The stored state of one persistence id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdState {
    /// The highest sequence number ever written.
    pub highest: SequenceNr,
    /// Events up to here are deleted.
    pub deleted_to: SequenceNr,
}

/// The statements of one database.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// What the stores declare.
    fn capabilities(&self) -> Capabilities;
    /// Rows per page.
    fn page_size(&self) -> usize;
    /// How long a live query sleeps when nothing woke it.
    fn poll_interval(&self) -> Duration;
    /// A receiver that changes whenever something may have been written (a write through
    /// these stores, or a notification from the database). Live queries wait on it.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Stores one atomic write in one transaction.
    async fn write(&self, write: &AtomicWrite) -> Result<()>;
    /// Stores several atomic writes, each all or nothing, in order, one result each; an
    /// outer `Err` when the whole call failed. By default one transaction per write.
    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.write(write).await);
        }
        Ok(results)
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
pub(crate) fn unsigned(v: i64, column: &str) -> std::result::Result<u64, SqlError> {
    u64::try_from(v).map_err(|_| SqlError::Corrupt(format!("{column} is negative ({v})")))
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

/// One event row as read from either database.
pub(crate) struct EventRow {
    pub ordering: i64,
    pub persistence_id: String,
    pub sequence_nr: i64,
    pub writer_id: String,
    pub write_timestamp: i64,
    pub event_manifest: String,
    pub ser_id: String,
    pub ser_manifest: String,
    pub payload: Vec<u8>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta_payload: Option<Vec<u8>>,
    pub tags: String,
}

/// The columns of [`EventRow`], in order, for `SELECT` lists.
pub(crate) const EVENT_COLUMNS: &str = "ordering, persistence_id, sequence_nr, writer_id, \
    write_timestamp, event_manifest, ser_id, ser_manifest, payload, meta_ser_id, \
    meta_ser_manifest, meta_payload, tags";

impl EventRow {
    /// Reads the [`EVENT_COLUMNS`] from a row of either database.
    pub(crate) fn decode<R>(row: &R) -> std::result::Result<EventRow, SqlError>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(EventRow {
            ordering: row.try_get(0)?,
            persistence_id: row.try_get(1)?,
            sequence_nr: row.try_get(2)?,
            writer_id: row.try_get(3)?,
            write_timestamp: row.try_get(4)?,
            event_manifest: row.try_get(5)?,
            ser_id: row.try_get(6)?,
            ser_manifest: row.try_get(7)?,
            payload: row.try_get(8)?,
            meta_ser_id: row.try_get(9)?,
            meta_ser_manifest: row.try_get(10)?,
            meta_payload: row.try_get(11)?,
            tags: row.try_get(12)?,
        })
    }

    /// The ordering and the event.
    pub(crate) fn into_event(self) -> std::result::Result<(u64, PersistentEvent), SqlError> {
        let persistence_id = PersistenceId::new(self.persistence_id)
            .map_err(|e| SqlError::Corrupt(format!("stored persistence id: {e}")))?;
        let tags: Vec<String> = serde_json::from_str(&self.tags)
            .map_err(|e| SqlError::Corrupt(format!("tags column {:?}: {e}", self.tags)))?;
        let metadata = match (self.meta_ser_id, self.meta_ser_manifest, self.meta_payload) {
            (Some(ser_id), Some(manifest), Some(bytes)) => Some(Payload {
                serializer_id: ser_id,
                manifest,
                bytes: Bytes::from(bytes),
            }),
            _ => None,
        };
        let event = PersistentEvent {
            persistence_id,
            sequence_nr: unsigned(self.sequence_nr, "sequence_nr")?,
            payload: Payload {
                serializer_id: self.ser_id,
                manifest: self.ser_manifest,
                bytes: Bytes::from(self.payload),
            },
            event_manifest: self.event_manifest,
            writer_id: self.writer_id,
            timestamp: Timestamp::from_millis(self.write_timestamp),
            tags,
            metadata,
        };
        Ok((unsigned(self.ordering, "ordering")?, event))
    }
}

/// Reads an event row (ordering and event) inside sqlx's row mapping.
pub(crate) fn decode_event<R>(row: &R) -> std::result::Result<(u64, PersistentEvent), sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    EventRow::decode(row)
        .and_then(EventRow::into_event)
        .map_err(|e| match e {
            SqlError::Sqlx(e) => e,
            other => sqlx::Error::Decode(Box::new(other)),
        })
}

/// One snapshot row as read from either database.
pub(crate) struct SnapshotRow {
    pub persistence_id: String,
    pub sequence_nr: i64,
    pub created: i64,
    pub ser_id: String,
    pub ser_manifest: String,
    pub payload: Vec<u8>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta_payload: Option<Vec<u8>>,
}

/// The columns of [`SnapshotRow`], in order.
pub(crate) const SNAPSHOT_COLUMNS: &str = "persistence_id, sequence_nr, created, ser_id, \
    ser_manifest, payload, meta_ser_id, meta_ser_manifest, meta_payload";

impl SnapshotRow {
    /// Reads the [`SNAPSHOT_COLUMNS`] from a row of either database.
    pub(crate) fn decode<R>(row: &R) -> std::result::Result<SnapshotRow, SqlError>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(SnapshotRow {
            persistence_id: row.try_get(0)?,
            sequence_nr: row.try_get(1)?,
            created: row.try_get(2)?,
            ser_id: row.try_get(3)?,
            ser_manifest: row.try_get(4)?,
            payload: row.try_get(5)?,
            meta_ser_id: row.try_get(6)?,
            meta_ser_manifest: row.try_get(7)?,
            meta_payload: row.try_get(8)?,
        })
    }

    /// The loaded snapshot.
    pub(crate) fn into_snapshot(self) -> std::result::Result<SelectedSnapshot, SqlError> {
        let persistence_id = PersistenceId::new(self.persistence_id)
            .map_err(|e| SqlError::Corrupt(format!("stored persistence id: {e}")))?;
        let metadata = match (self.meta_ser_id, self.meta_ser_manifest, self.meta_payload) {
            (Some(ser_id), Some(manifest), Some(bytes)) => Some(Payload {
                serializer_id: ser_id,
                manifest,
                bytes: Bytes::from(bytes),
            }),
            _ => None,
        };
        Ok(SelectedSnapshot {
            metadata: SnapshotMetadata {
                persistence_id,
                sequence_nr: unsigned(self.sequence_nr, "sequence_nr")?,
                timestamp: Timestamp::from_millis(self.created),
                metadata,
            },
            snapshot: Payload {
                serializer_id: self.ser_id,
                manifest: self.ser_manifest,
                bytes: Bytes::from(self.payload),
            },
        })
    }
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
