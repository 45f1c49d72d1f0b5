//! The read journal: persistence ids, events by id and events by tag, current and live,
//! all paged through the shared state by the paging helper of `core.rs`.

use std::sync::Arc;

use futures::stream;
use persistence_api::{
    EnvelopeStream, Error, EventEnvelope, Offset, PersistenceId, PersistenceIdStream,
    PersistentEvent, QueryMode, ReadJournal, SequenceNr,
};

use crate::Memory;

impl ReadJournal for Memory {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        self.ids(mode.is_live())
    }

    fn query_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        self.by_id(persistence_id, from, to, mode.is_live())
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        self.by_tag(tag, offset, mode.is_live())
    }
}

impl Memory {
    fn ids(&self, live: bool) -> PersistenceIdStream {
        self.paged(
            (0usize, None::<usize>),
            live.then_some("persistence_ids"),
            move |state, (next, bound), page, buf| {
                let end = *bound.get_or_insert(state.id_order.len());
                let end = if live { state.id_order.len() } else { end };
                buf.extend(state.id_order[*next..end].iter().take(page).cloned());
                *next += buf.len();
                !live && *next >= end
            },
            |id| id,
        )
    }

    fn by_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        live: bool,
    ) -> EnvelopeStream {
        self.paged(
            (from, None::<SequenceNr>),
            live.then_some("events_by_persistence_id"),
            move |state, (next, bound), page, buf| {
                let log = state.logs.get(&id);
                let highest = log.map_or(0, |l| l.highest);
                let end = if live {
                    to
                } else {
                    (*bound.get_or_insert(highest)).min(to)
                };
                if let Some(log) = log.filter(|_| *next <= end) {
                    // At most a page, and no more than the stored range can hold.
                    let stored = end.min(highest).saturating_sub(*next).saturating_add(1);
                    buf.reserve(stored.min(page as u64) as usize);
                    buf.extend(
                        log.events
                            .range(*next..=end)
                            .take(page)
                            .map(|(s, e)| (e.clone(), *s)),
                    );
                }
                if let Some((_, last)) = buf.back() {
                    match last.checked_add(1) {
                        Some(after) => *next = after,
                        // `u64::MAX` delivered: no number follows it.
                        None => return true,
                    }
                }
                *next > end || (!live && buf.len() < page)
            },
            envelope,
        )
    }

    fn by_tag(&self, tag: String, offset: Offset, live: bool) -> EnvelopeStream {
        let after = match offset {
            Offset::NoOffset => 0,
            Offset::Sequence(n) => n,
            other => {
                let e = Error::invalid_input(format!(
                    "the memory backend's tag offsets are Offset::Sequence, not {other:?}"
                ))
                .with_operation("events_by_tag");
                return Box::pin(stream::once(async move { Err(e) }));
            }
        };
        self.paged(
            (after, None::<u64>),
            live.then_some("events_by_tag"),
            move |state, (last, bound), page, buf| {
                let end = if live {
                    u64::MAX
                } else {
                    *bound.get_or_insert(state.next_ordering)
                };
                if let Some(index) = state.tags.get(&tag).filter(|_| *last < end) {
                    // A page is `page` events that still exist: entries of deleted events
                    // are passed over, so a page of them is not taken for the end.
                    for (ordering, (id, seq)) in index.range(last.saturating_add(1)..=end) {
                        *last = *ordering;
                        if let Some(e) = state.logs.get(id).and_then(|l| l.events.get(seq)) {
                            buf.push_back((e.clone(), *ordering));
                            if buf.len() == page {
                                break;
                            }
                        }
                    }
                }
                !live && (buf.is_empty() || *last >= end)
            },
            envelope,
        )
    }
}

/// A buffered event and its offset (`Offset::Sequence`), as the query yields it.
fn envelope((event, offset): (Arc<PersistentEvent>, u64)) -> EventEnvelope {
    EventEnvelope {
        offset: Offset::Sequence(offset),
        event: Arc::unwrap_or_clone(event),
    }
}
