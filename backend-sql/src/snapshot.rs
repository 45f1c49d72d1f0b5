//! The snapshot store: one row per (persistence id, sequence number); its statements and
//! the reading of its rows, the same for both databases.

use std::sync::Arc;

use async_trait::async_trait;
use persistence_api::{
    Error, ErrorKind, Payload, PersistenceId, Result, SelectedSnapshot, SequenceNr,
    SnapshotMetadata, SnapshotSelectionCriteria, SnapshotStore, Timestamp,
};

use crate::core::{q, Backend, Dialect, Sql, SqlStore};
use crate::error::{err, SqlError};
use crate::schema::{clamp, read_payloads, Columns, Names, Record};

/// The snapshot store of one opened database.
pub(crate) struct SqlSnapshotStore<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> SnapshotStore for SqlSnapshotStore<B> {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        // A BIGINT column: a larger number would load back as another one.
        if metadata.sequence_nr > i64::MAX as u64 {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "snapshot sequence number {} is above the largest the SQL backend stores ({})",
                    metadata.sequence_nr,
                    i64::MAX
                ),
            ));
        }
        self.backend
            .store()
            .save_snapshot(&metadata, &snapshot)
            .await
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        if criteria.is_empty() {
            return Ok(None);
        }
        self.backend
            .store()
            .load_snapshot(persistence_id, &criteria)
            .await
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let timestamp = (metadata.timestamp != Timestamp::MIN).then_some(metadata.timestamp);
        self.backend
            .store()
            .delete_snapshot(&metadata.persistence_id, metadata.sequence_nr, timestamp)
            .await
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        if criteria.is_empty() {
            return Ok(());
        }
        self.backend
            .store()
            .delete_snapshots(persistence_id, &criteria)
            .await
    }
}

/// The columns of a snapshot row, in order.
const SNAPSHOT_COLUMNS: &str = "persistence_id, sequence_nr, created, ser_id, \
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

/// The snapshot statements, rendered once for the schema, table prefix and dialect.
pub(crate) struct SnapshotSql {
    save: Sql,
    load: Sql,
    delete: Sql,
    delete_at: Sql,
    delete_matching: Sql,
}

impl SnapshotSql {
    pub(crate) fn new(n: &Names, d: &Dialect) -> SnapshotSql {
        let snap = n.get("snapshot");
        let Dialect {
            param: p, excluded, ..
        } = d;
        let s = |sql: String| -> Sql { sql.into() };
        let values = (1..=SNAPSHOT_COLUMNS.split(", ").count())
            .map(|i| format!("{p}{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Every column but the key (persistence id, sequence number) is replaced.
        let updates = SNAPSHOT_COLUMNS
            .split(", ")
            .skip(2)
            .map(|c| format!("{c} = {excluded}.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let criteria = format!(
            "persistence_id = {p}1 AND sequence_nr <= {p}2 AND sequence_nr >= {p}3 \
             AND created <= {p}4 AND created >= {p}5"
        );
        SnapshotSql {
            save: s(format!(
                "INSERT INTO {snap} ({SNAPSHOT_COLUMNS}) VALUES ({values}) \
                 ON CONFLICT (persistence_id, sequence_nr) DO UPDATE SET {updates}"
            )),
            load: s(format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM {snap} WHERE {criteria} \
                 ORDER BY sequence_nr DESC LIMIT 1"
            )),
            delete: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = {p}1 AND sequence_nr = {p}2"
            )),
            delete_at: s(format!(
                "DELETE FROM {snap} WHERE persistence_id = {p}1 AND sequence_nr = {p}2 \
                 AND created = {p}3"
            )),
            delete_matching: s(format!("DELETE FROM {snap} WHERE {criteria}")),
        }
    }
}

/// A statement whose parameters are a persistence id and a snapshot selection (as
/// [`SnapshotSql`] writes them: id, max and min sequence number, max and min timestamp).
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

/// The snapshot statements, the same for both databases (only their SQL spelling
/// differs); [`crate::core::SqlStore`] runs them.
#[async_trait]
pub(crate) trait SnapshotRows: Send + Sync + 'static {
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

#[async_trait]
impl<DB> SnapshotRows for SqlStore<DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    async fn save_snapshot(&self, metadata: &SnapshotMetadata, snapshot: &Payload) -> Result<()> {
        let meta = metadata.metadata.as_ref();
        let run = async {
            let _turn = self.write_turn().await;
            sqlx::query(q(&self.snapshot_sql.save))
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
        run.await.map_err(err)?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        let row = criteria_query(&self.snapshot_sql.load, id, criteria)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|row| read_snapshot(&row)).transpose().map_err(err)
    }

    async fn delete_snapshot(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        timestamp: Option<Timestamp>,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        let query = match timestamp {
            None => sqlx::query(q(&self.snapshot_sql.delete))
                .bind(id.as_str())
                .bind(clamp(sequence_nr)),
            Some(ts) => sqlx::query(q(&self.snapshot_sql.delete_at))
                .bind(id.as_str())
                .bind(clamp(sequence_nr))
                .bind(ts.as_millis()),
        };
        query.execute(&self.pool).await.map_err(err)?;
        Ok(())
    }

    async fn delete_snapshots(
        &self,
        id: &PersistenceId,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        criteria_query(&self.snapshot_sql.delete_matching, id, criteria)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }
}
