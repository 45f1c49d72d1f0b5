//! The snapshot store.

use async_trait::async_trait;
use persistence_api::{
    Payload, PersistenceId, Result, SelectedSnapshot, SnapshotMetadata, SnapshotSelectionCriteria,
    SnapshotStore, Timestamp,
};

use crate::Memory;

#[async_trait]
impl SnapshotStore for Memory {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        let mut state = self.write_lock();
        state
            .snapshots
            .entry(metadata.persistence_id.clone())
            .or_default()
            .insert(metadata.sequence_nr, (metadata, snapshot));
        Ok(())
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        let state = self.read();
        let Some(snaps) = state.snapshots.get(persistence_id) else {
            return Ok(None);
        };
        Ok(snaps
            .values()
            .rev()
            .find(|(m, _)| criteria.matches(m.sequence_nr, m.timestamp))
            .map(|(m, p)| SelectedSnapshot {
                metadata: m.clone(),
                snapshot: p.clone(),
            }))
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let mut state = self.write_lock();
        if let Some(snaps) = state.snapshots.get_mut(&metadata.persistence_id) {
            let matches = snaps.get(&metadata.sequence_nr).is_some_and(|(m, _)| {
                metadata.timestamp == Timestamp::MIN || metadata.timestamp == m.timestamp
            });
            if matches {
                snaps.remove(&metadata.sequence_nr);
            }
        }
        Ok(())
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        let mut state = self.write_lock();
        if let Some(snaps) = state.snapshots.get_mut(persistence_id) {
            snaps.retain(|_, (m, _)| !criteria.matches(m.sequence_nr, m.timestamp));
        }
        Ok(())
    }
}
