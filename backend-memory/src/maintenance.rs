//! `impl JournalMaintenance`: the in-memory store's tag index and id listing are derived
//! from its logs under the same lock, so a rebuild re-derives them and a purge removes an
//! id from all of them in one step.
//!
//! Each stored event keeps its place in the global order (`IdLog::orderings`), so a
//! rebuilt tag entry lands where it was and a stored `Offset::Sequence` stays valid.
//! A purge shifts the ids listed after the purged one down by one place: a live
//! `persistence_ids` stream running across a purge may miss one id (the call is for
//! retiring an id, not for a running system).

use async_trait::async_trait;
use futures::stream;
use persistence_api::{
    JournalMaintenance, PersistenceId, PersistenceIdStream, PurgeReport, RebuildReport, Result,
};

use crate::Memory;

#[async_trait]
impl JournalMaintenance for Memory {
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        // The logs are the journal's own records; a snapshot of their keys is one page.
        let ids: Vec<PersistenceId> = {
            let state = self.read();
            state
                .logs
                .iter()
                .filter(|(_, log)| log.highest > 0)
                .map(|(id, _)| id.clone())
                .collect()
        };
        Box::pin(stream::iter(ids.into_iter().map(Ok)))
    }

    async fn rebuild_persistence_id(
        &self,
        persistence_id: &PersistenceId,
    ) -> Result<RebuildReport> {
        let mut guard = self.write_lock();
        let state = &mut *guard;
        let Some(log) = state.logs.get(persistence_id) else {
            return Ok(RebuildReport::default());
        };
        let (mut events, mut entries) = (0, 0);
        for (seq, event) in &log.events {
            events += 1;
            let Some(ordering) = log.orderings.get(seq) else {
                continue;
            };
            for tag in &event.tags {
                entries += 1;
                state
                    .tags
                    .entry(tag.clone())
                    .or_default()
                    .insert(*ordering, (persistence_id.clone(), *seq));
            }
        }
        if log.highest > 0 && !state.id_order.contains(persistence_id) {
            state.id_order.push(persistence_id.clone());
        }
        drop(guard);
        self.notify();
        Ok(RebuildReport::new(events, entries))
    }

    async fn truncate_indexes(&self) -> Result<()> {
        let mut state = self.write_lock();
        state.tags.clear();
        state.id_order.clear();
        Ok(())
    }

    async fn purge_persistence_id(&self, persistence_id: &PersistenceId) -> Result<PurgeReport> {
        let mut state = self.write_lock();
        let log = state.logs.remove(persistence_id);
        let events = log.as_ref().map_or(0, |l| l.events.len() as u64);
        if log.is_some() {
            // Every entry of the id, those of events deleted earlier included.
            for index in state.tags.values_mut() {
                index.retain(|_, (id, _)| id != persistence_id);
            }
        }
        state.id_order.retain(|id| id != persistence_id);
        let snapshots = state
            .snapshots
            .remove(persistence_id)
            .map_or(0, |s| s.len() as u64);
        Ok(PurgeReport::new(events, snapshots))
    }
}
