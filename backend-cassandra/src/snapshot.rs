//! The snapshot store: one row per `(persistence_id, sequence_nr)`, newest first.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use persistence_api::{
    Error, ErrorKind, Payload, PersistenceId, Result, SelectedSnapshot, SnapshotMetadata,
    SnapshotSelectionCriteria, SnapshotStore, Timestamp,
};

use crate::core::Inner;
use crate::error::{unexpected, ResultExt};
use crate::schema::{LoadedSnapshotRow, SnapshotRow};

/// The largest snapshot ([`persistence_api::Payload::stored_size`]) the driver stores: one
/// row, one mutation, well below Cassandra's mutation limit (half the commit-log segment).
pub const MAX_SNAPSHOT_SIZE: usize = 4 * 1024 * 1024;

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// The Cassandra snapshot store.
pub struct CassandraSnapshotStore {
    pub(crate) inner: Arc<Inner>,
}

impl CassandraSnapshotStore {
    /// `(sequence_nr, timestamp)` of the snapshots of `pid` matching `criteria`, newest first.
    async fn matching(
        &self,
        pid: &str,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<Vec<(i64, i64)>> {
        if criteria.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Option<i64>)> = self
            .inner
            .fetch_all(
                "delete_snapshots",
                &self.inner.stmts.select_snapshot_timestamps,
                (
                    pid,
                    clamp(criteria.max_sequence_nr),
                    clamp(criteria.min_sequence_nr),
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, ts)| (seq, ts.unwrap_or(0)))
            .filter(|(seq, ts)| criteria.matches(*seq as u64, Timestamp::from_millis(*ts)))
            .collect())
    }
}

#[async_trait]
impl SnapshotStore for CassandraSnapshotStore {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        // A CQL bigint: a larger number would load back as another one.
        if metadata.sequence_nr > i64::MAX as u64 {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "snapshot sequence number {} does not fit a CQL bigint (at most {})",
                    metadata.sequence_nr,
                    i64::MAX
                ),
            ));
        }
        let size =
            snapshot.stored_size() + metadata.metadata.as_ref().map_or(0, |m| m.stored_size());
        if size > MAX_SNAPSHOT_SIZE {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!("a snapshot of {size} bytes is larger than {MAX_SNAPSHOT_SIZE} bytes"),
            ));
        }
        let pid = self.inner.pid_key(&metadata.persistence_id);
        let meta = metadata.metadata.as_ref();
        let row = SnapshotRow {
            persistence_id: &pid,
            sequence_nr: clamp(metadata.sequence_nr),
            timestamp: metadata.timestamp.as_millis(),
            ser_id: &snapshot.serializer_id,
            ser_manifest: &snapshot.manifest,
            snapshot_data: &snapshot.bytes,
            meta_ser_id: meta.map(|m| m.serializer_id.as_str()),
            meta_ser_manifest: meta.map(|m| m.manifest.as_str()),
            meta: meta.map(|m| &m.bytes[..]),
        };
        self.inner
            .exec("save_snapshot", &self.inner.stmts.insert_snapshot, row)
            .await?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        if criteria.is_empty() {
            return Ok(None);
        }
        let pid = self.inner.pid_key(persistence_id);
        let pager = self
            .inner
            .session
            .execute_iter(
                self.inner.stmts.select_snapshots.clone(),
                (
                    pid.as_str(),
                    clamp(criteria.max_sequence_nr),
                    clamp(criteria.min_sequence_nr),
                ),
            )
            .await
            .op("load_snapshot")?;
        let mut rows = pager
            .rows_stream::<LoadedSnapshotRow>()
            .map_err(|e| unexpected("load_snapshot", e))?;
        // Newest first (CLUSTERING ORDER BY sequence_nr DESC): the first match wins.
        while let Some(row) = rows.next().await {
            let row = row.op("load_snapshot")?;
            let timestamp = Timestamp::from_millis(row.timestamp.unwrap_or(0));
            if !criteria.matches(row.sequence_nr.max(0) as u64, timestamp) {
                continue;
            }
            return row.into_snapshot(persistence_id).map(Some);
        }
        Ok(None)
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let pid = self.inner.pid_key(&metadata.persistence_id);
        let seq = clamp(metadata.sequence_nr);
        if metadata.timestamp != Timestamp::MIN {
            let rows: Vec<(i64, Option<i64>)> = self
                .inner
                .fetch_all(
                    "delete_snapshot",
                    &self.inner.stmts.select_snapshot_timestamps,
                    (pid.as_str(), seq, seq),
                )
                .await?;
            if !rows
                .iter()
                .any(|(_, ts)| ts.unwrap_or(0) == metadata.timestamp.as_millis())
            {
                return Ok(());
            }
        }
        self.inner
            .exec(
                "delete_snapshot",
                &self.inner.stmts.delete_snapshot,
                (pid.as_str(), seq),
            )
            .await?;
        Ok(())
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        let pid = self.inner.pid_key(persistence_id);
        for (seq, _) in self.matching(&pid, &criteria).await? {
            self.inner
                .exec(
                    "delete_snapshots",
                    &self.inner.stmts.delete_snapshot,
                    (pid.as_str(), seq),
                )
                .await?;
        }
        Ok(())
    }
}
