//! The shared state behind every handle: the logs, the tag index and the snapshots under
//! one lock, the watch channel live queries wait on, the paging helper every stream uses,
//! and the test hooks that damage stored data.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{stream, Stream, StreamExt};
use persistence_api::{
    Error, Payload, PersistenceId, PersistentEvent, Result, SequenceNr, SnapshotMetadata,
};
use tokio::sync::watch;

use crate::{Memory, MemoryConfig};

/// What the clones of one [`Memory`] share.
pub(crate) struct Shared {
    pub(crate) state: RwLock<State>,
    /// Bumped after every write; live queries wait on it when they have caught up.
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) config: MemoryConfig,
}

impl Shared {
    pub(crate) fn new(config: MemoryConfig) -> Self {
        let (changed, _) = watch::channel(0);
        Shared {
            state: RwLock::new(State::default()),
            changed,
            config,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) logs: HashMap<PersistenceId, IdLog>,
    /// Ids in the order of their first event.
    pub(crate) id_order: Vec<PersistenceId>,
    /// tag -> ordering -> (id, sequence number).
    pub(crate) tags: HashMap<String, BTreeMap<u64, (PersistenceId, SequenceNr)>>,
    pub(crate) next_ordering: u64,
    pub(crate) snapshots: HashMap<PersistenceId, BTreeMap<SequenceNr, (SnapshotMetadata, Payload)>>,
}

#[derive(Default)]
pub(crate) struct IdLog {
    pub(crate) events: BTreeMap<SequenceNr, PersistentEvent>,
    /// The place of each stored event in the global order (its tag entries' key), so a
    /// rebuild restores entries where they were.
    pub(crate) orderings: BTreeMap<SequenceNr, u64>,
    pub(crate) highest: SequenceNr,
}

impl Memory {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_lock(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the live queries.
    pub(crate) fn notify(&self) {
        self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A stream that pages through the state with `fetch`, and in live mode (`live` is the
    /// query's name, for the poll counter) waits for writes when it has caught up. `fetch` returns the next items and whether the stream
    /// is complete after them; a current (non-live) stream also completes on an empty page.
    pub(crate) fn paged<C, T, F>(
        &self,
        cursor: C,
        live: Option<&'static str>,
        fetch: F,
    ) -> Pin<Box<dyn Stream<Item = Result<T>> + Send>>
    where
        C: Send + 'static,
        T: Send + 'static,
        F: FnMut(&State, &mut C, usize) -> (Vec<T>, bool) + Send + 'static,
    {
        struct Paging<C, F> {
            backend: Memory,
            rx: watch::Receiver<u64>,
            cursor: C,
            fetch: F,
            done: bool,
        }
        let page = self.shared.config.page_size.max(1) as usize;
        let init = Paging {
            backend: self.clone(),
            rx: self.shared.changed.subscribe(),
            cursor,
            fetch,
            done: false,
        };
        // Yields whole pages, flattened below, so the per-event cost is an iterator step.
        let pages = stream::unfold(init, move |mut s| async move {
            loop {
                if s.done {
                    return None;
                }
                // Mark the current version seen before reading, so no write is missed.
                s.rx.borrow_and_update();
                let (items, complete) = {
                    let state = s.backend.read();
                    (s.fetch)(&state, &mut s.cursor, page)
                };
                if complete || (live.is_none() && items.is_empty()) {
                    s.done = true;
                }
                if !items.is_empty() {
                    return Some((items, s));
                }
                if !s.done && s.rx.changed().await.is_err() {
                    return None;
                }
                if let Some(query) = live {
                    persistence_api::metrics::record_poll(Memory::NAME, query);
                }
            }
        });
        Box::pin(pages.flat_map(|items: Vec<T>| stream::iter(items.into_iter().map(Ok))))
    }
}

// Test hooks (corruption): damage stored data so the conformance kit can check how a
// backend reads it.
impl Memory {
    /// Replaces the payload bytes of the stored event `(id, sequence_nr)` and keeps
    /// everything else: a test seam for reading damaged data (the conformance kit's
    /// `corruption::*` cases). The in-memory store holds typed events, so the payload's
    /// bytes are the only part of one that can be unreadable. An `InvalidInput` error if no
    /// such event is stored.
    pub fn overwrite_stored_payload(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        bytes: impl Into<persistence_api::Bytes>,
    ) -> Result<()> {
        let mut state = self.write_lock();
        let event = state
            .logs
            .get_mut(id)
            .and_then(|log| log.events.get_mut(&sequence_nr))
            .ok_or_else(|| Error::invalid_input(format!("no stored event {id} {sequence_nr}")))?;
        event.payload.bytes = bytes.into();
        Ok(())
    }

    /// Replaces the bytes of the stored snapshot `(id, sequence_nr)`, like
    /// [`Memory::overwrite_stored_payload`] for an event.
    pub fn overwrite_stored_snapshot(
        &self,
        id: &PersistenceId,
        sequence_nr: SequenceNr,
        bytes: impl Into<persistence_api::Bytes>,
    ) -> Result<()> {
        let mut state = self.write_lock();
        let (_, payload) = state
            .snapshots
            .get_mut(id)
            .and_then(|snaps| snaps.get_mut(&sequence_nr))
            .ok_or_else(|| {
                Error::invalid_input(format!("no stored snapshot {id} {sequence_nr}"))
            })?;
        payload.bytes = bytes.into();
        Ok(())
    }
}
