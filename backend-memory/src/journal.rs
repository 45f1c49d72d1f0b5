//! The journal: the write path, replay, the highest sequence number and deletes.

use std::collections::VecDeque;
use std::sync::Arc;

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
        let fetch =
            move |state: &State, (next, left): &mut (u64, u64), page, buf: &mut VecDeque<_>| {
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
                    match last.sequence_nr.checked_add(1) {
                        Some(after) => *next = after,
                        // `u64::MAX` delivered: no number follows it.
                        None => return true,
                    }
                }
                n < take || *left == 0 || *next > to
            };
        let events = self.paged((from, max), None, fetch, Arc::unwrap_or_clone);
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
/// first sequence number is already taken. The id is hashed twice per write (the conflict
/// check, then the log), not per event, and cloned only for a new id and for tag entries.
fn store_one(state: &mut State, write: AtomicWrite) -> Result<()> {
    let (from, to) = (write.lowest_sequence_nr(), write.highest_sequence_nr());
    let State {
        logs,
        id_order,
        tags,
        next_ordering,
        ..
    } = state;
    let id = write.persistence_id();
    let highest = logs.get(id).map_or(0, |l| l.highest);
    if from <= highest {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("sequence number {from} is already taken (highest is {highest}); another writer got there first"),
        )
        .with_operation("write_events")
        .with_persistence_id(id.as_str())
        .with_sequence_range(from, to));
    }
    let log = match logs.get_mut(id) {
        Some(log) => log,
        None => {
            id_order.push(id.clone());
            logs.entry(id.clone()).or_default()
        }
    };
    for event in write.into_events() {
        let ordering = *next_ordering + 1;
        *next_ordering = ordering;
        for tag in &event.tags {
            let entry = (event.persistence_id.clone(), event.sequence_nr);
            match tags.get_mut(tag.as_str()) {
                Some(index) => {
                    index.insert(ordering, entry);
                }
                None => {
                    tags.entry(tag.clone()).or_default().insert(ordering, entry);
                }
            }
        }
        log.highest = event.sequence_nr;
        log.orderings.insert(event.sequence_nr, ordering);
        log.events.insert(event.sequence_nr, Arc::new(event));
    }
    Ok(())
}
