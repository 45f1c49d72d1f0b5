//! The journal: the write path, replay, the highest sequence number and deletes.

use async_trait::async_trait;
use persistence_api::{
    AtomicWrite, Error, ErrorKind, Journal, PersistenceId, Replay, Result, SequenceNr,
};

use crate::core::State;
use crate::Memory;

#[async_trait]
impl Journal for Memory {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        let results = {
            let mut state = self.write_lock();
            writes
                .into_iter()
                .map(|w| store_one(&mut state, w))
                .collect()
        };
        self.notify();
        Ok(results)
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let highest = self
            .read()
            .logs
            .get(persistence_id)
            .map_or(0, |l| l.highest);
        let id = persistence_id.clone();
        let to = to.min(highest);
        let events = self.paged((from, max), None, move |state, (next, left), page, buf| {
            let Some(log) = state.logs.get(&id) else {
                return true;
            };
            if *next > to || *left == 0 {
                return true;
            }
            let take = (page as u64).min(*left).min((to - *next).saturating_add(1)) as usize;
            buf.reserve(take);
            buf.extend(
                log.events
                    .range(*next..=to)
                    .take(take)
                    .map(|(_, e)| e.clone()),
            );
            let n = buf.len();
            *left -= n as u64;
            if let Some(last) = buf.back() {
                *next = last.sequence_nr + 1;
            }
            n < take || *left == 0 || *next > to
        });
        Ok(Replay {
            highest_sequence_nr: highest,
            events,
        })
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        Ok(self
            .read()
            .logs
            .get(persistence_id)
            .map_or(0, |l| l.highest))
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let mut state = self.write_lock();
        if let Some(log) = state.logs.get_mut(persistence_id) {
            let keep = log.events.split_off(&to.saturating_add(1));
            log.events = keep;
            let keep = log.orderings.split_off(&to.saturating_add(1));
            log.orderings = keep;
        }
        Ok(())
    }
}

/// Stores one atomic write under the write lock: all its events, or a `Conflict` if its
/// first sequence number is already taken.
fn store_one(state: &mut State, write: AtomicWrite) -> Result<()> {
    let id = write.persistence_id().clone();
    let (from, to) = (write.lowest_sequence_nr(), write.highest_sequence_nr());
    let highest = state.logs.get(&id).map_or(0, |l| l.highest);
    if from <= highest {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("sequence number {from} is already taken (highest is {highest}); another writer got there first"),
        )
        .with_operation("write_events")
        .with_persistence_id(id.as_str())
        .with_sequence_range(from, to));
    }
    if !state.logs.contains_key(&id) {
        state.id_order.push(id.clone());
    }
    for event in write.into_events() {
        let ordering = state.next_ordering + 1;
        state.next_ordering = ordering;
        for tag in &event.tags {
            state
                .tags
                .entry(tag.clone())
                .or_default()
                .insert(ordering, (id.clone(), event.sequence_nr));
        }
        let log = state.logs.entry(id.clone()).or_default();
        log.highest = event.sequence_nr;
        log.orderings.insert(event.sequence_nr, ordering);
        log.events.insert(event.sequence_nr, event);
    }
    Ok(())
}
