//! The journal: writes, replay in pages, highest sequence number, deletes.

use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use persistence_api::{AtomicWrite, Journal, PersistenceId, Replay, Result, SequenceNr};

use crate::backend::{Backend, Store};

/// The journal of one opened database.
pub(crate) struct SqlJournal<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> Journal for SqlJournal<B> {
    /// Atomic writes are applied in the given order, each all or nothing; a failed one does
    /// not stop the others (PostgreSQL: a transaction each; SQLite: one transaction with a
    /// savepoint each).
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        self.backend.write_all(&writes).await
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let state = self
            .backend
            .store()
            .id_state(persistence_id)
            .await?
            .unwrap_or_default();
        let highest = state.highest;
        let lower = from.max(state.deleted_to.saturating_add(1)).max(1);
        let upper = to.min(highest);
        let backend = self.backend.clone();
        let id = persistence_id.clone();
        let page_size = backend.store().page_size() as u64;
        let events = Box::pin(try_stream! {
            let mut next = lower;
            let mut left = max;
            while next <= upper && left > 0 {
                let limit = page_size.min(left);
                let page = backend.store().events(&id, next, upper, limit as usize).await?;
                let n = page.len() as u64;
                for event in page {
                    next = event.sequence_nr.saturating_add(1);
                    left -= 1;
                    yield event;
                }
                if n < limit {
                    break;
                }
            }
        });
        Ok(Replay {
            highest_sequence_nr: highest,
            events,
        })
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        Ok(self
            .backend
            .store()
            .id_state(persistence_id)
            .await?
            .map_or(0, |s| s.highest))
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.backend.store().delete_to(persistence_id, to).await
    }
}
