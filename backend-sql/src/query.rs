//! The read journal: persistence ids, events by id, events by tag; current and live.
//!
//! Every query pages with `page_size` rows per statement, so its memory is bounded by the
//! page size. A live query that has caught up waits for a wake-up (a write through the
//! same opened stores, or a PostgreSQL notification) or for `poll_interval`, whichever
//! comes first, then reads on from its position.

use std::sync::Arc;
use std::time::Duration;

use async_stream::try_stream;
use persistence_api::{
    EnvelopeStream, Error, EventEnvelope, Offset, PersistenceId, PersistenceIdStream, QueryMode,
    ReadJournal, SequenceNr,
};
use tokio::sync::watch;

use crate::core::{Backend, Store};

/// The read journal of one opened database.
pub(crate) struct SqlReadJournal<B> {
    pub(crate) backend: Arc<B>,
}

/// Waits until `rx` changes or `poll` passes.
pub(crate) async fn wait_for_change(rx: &mut watch::Receiver<u64>, poll: Duration) {
    tokio::select! {
        changed = rx.changed() => {
            if changed.is_err() {
                // The sender is gone: fall back to plain polling.
                tokio::time::sleep(poll).await;
            }
        }
        _ = tokio::time::sleep(poll) => {}
    }
}

/// The position after which a tag query (or a change query) starts.
pub(crate) fn tag_position(offset: &Offset) -> persistence_api::Result<u64> {
    match offset {
        Offset::NoOffset => Ok(0),
        Offset::Sequence(n) => Ok(*n),
        other => Err(Error::invalid_input(format!(
            "the SQL backend's tag queries take Offset::Sequence or Offset::NoOffset, not {other:?}"
        ))),
    }
}

impl<B: Backend> SqlReadJournal<B> {
    fn ids_stream(&self, live: bool) -> PersistenceIdStream {
        let backend = self.backend.clone();
        Box::pin(try_stream! {
            let page_size = backend.store().page_size();
            let poll = backend.store().poll_interval();
            let mut wake = backend.subscribe();
            let upto = if live { u64::MAX } else { backend.store().max_id_ordering().await? };
            let mut after = 0u64;
            loop {
                wake.borrow_and_update();
                let page = backend.store().ids(after, upto, page_size).await?;
                let n = page.len();
                for (ordering, id) in page {
                    after = ordering;
                    yield id;
                }
                if n == page_size {
                    continue;
                }
                if !live {
                    break;
                }
                wait_for_change(&mut wake, poll).await;
                persistence_api::metrics::record_poll(B::NAME, "persistence_ids");
            }
        })
    }

    fn id_stream(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        live: bool,
    ) -> EnvelopeStream {
        let backend = self.backend.clone();
        Box::pin(try_stream! {
            let page_size = backend.store().page_size();
            let poll = backend.store().poll_interval();
            let mut wake = backend.subscribe();
            let state = backend.store().id_state(&persistence_id).await?.unwrap_or_default();
            let upper = if live { to } else { to.min(state.highest) };
            let mut next = from.max(1).max(state.deleted_to.saturating_add(1));
            loop {
                wake.borrow_and_update();
                if next > upper {
                    break;
                }
                let page = backend.store().events(&persistence_id, next, upper, page_size).await?;
                let n = page.len();
                for event in page {
                    next = event.sequence_nr.saturating_add(1);
                    yield EventEnvelope {
                        offset: Offset::Sequence(event.sequence_nr),
                        event,
                    };
                }
                if n == page_size {
                    continue;
                }
                if !live || next > upper {
                    break;
                }
                wait_for_change(&mut wake, poll).await;
                persistence_api::metrics::record_poll(B::NAME, "events_by_persistence_id");
            }
        })
    }

    fn tag_stream(&self, tag: String, offset: Offset, live: bool) -> EnvelopeStream {
        let backend = self.backend.clone();
        Box::pin(try_stream! {
            let page_size = backend.store().page_size();
            let poll = backend.store().poll_interval();
            let mut wake = backend.subscribe();
            let mut after = tag_position(&offset)?;
            let upto = if live { u64::MAX } else { backend.store().max_tag_ordering(&tag).await? };
            loop {
                wake.borrow_and_update();
                let page = backend.store().tag_events(&tag, after, upto, page_size).await?;
                let n = page.len();
                for (ordering, event) in page {
                    after = ordering;
                    yield EventEnvelope {
                        offset: Offset::Sequence(ordering),
                        event,
                    };
                }
                if n == page_size {
                    continue;
                }
                if !live {
                    break;
                }
                wait_for_change(&mut wake, poll).await;
                persistence_api::metrics::record_poll(B::NAME, "events_by_tag");
            }
        })
    }
}

impl<B: Backend> ReadJournal for SqlReadJournal<B> {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        self.ids_stream(mode.is_live())
    }

    fn query_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        self.id_stream(persistence_id, from, to, mode.is_live())
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        self.tag_stream(tag, offset, mode.is_live())
    }
}
