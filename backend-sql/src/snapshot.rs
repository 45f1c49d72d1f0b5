//! The snapshot store: one row per (persistence id, sequence number).

use std::sync::Arc;

use async_trait::async_trait;
use persistence_api::{
    Payload, PersistenceId, Result, SelectedSnapshot, SnapshotMetadata, SnapshotSelectionCriteria,
    SnapshotStore, Timestamp,
};

use crate::backend::{Backend, Store};

/// The snapshot store of one opened database.
pub(crate) struct SqlSnapshotStore<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> SnapshotStore for SqlSnapshotStore<B> {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
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
