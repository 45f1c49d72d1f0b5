//! The shared state behind every handle: the logs, the tag index and the snapshots under
//! one lock, the watch channel live queries wait on, the paging helper every stream uses,
//! and the test hooks that damage stored data.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{ready, Context, Poll};

use futures::Stream;
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
    /// Shared, so a page copies pointers under the lock and each event is cloned only
    /// when the stream hands it out.
    pub(crate) events: BTreeMap<SequenceNr, Arc<PersistentEvent>>,
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

    /// Wakes the live queries. With none open (no receiver), there is no one to wake: a
    /// query subscribes before its first read of the state, so one that subscribes after
    /// this check reads the write itself.
    pub(crate) fn notify(&self) {
        if self.shared.changed.receiver_count() > 0 {
            self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// A stream that pages through the state with `fetch`, and in live mode (`live` is the
    /// query's name, for the poll counter) waits for writes when it has caught up. `fetch`
    /// appends the next items (at most the page size it is given) to the empty buffer it
    /// is given and returns whether the stream is complete after them; a current (non-live)
    /// stream also completes on an empty page. `item` turns a buffered item into what the
    /// stream yields, outside the lock.
    ///
    /// One page is copied per read-lock acquisition into a buffer the stream keeps (its
    /// allocation is reused from page to page): for events, `Arc` pointers, so the lock is
    /// held for pointer copies only, and each event is cloned when the stream hands it out,
    /// right before the caller uses it. The per-event cost is that clone and one pop from
    /// the buffer, not a poll through layers of stream adapters.
    pub(crate) fn paged<C, B, T, F, M>(
        &self,
        cursor: C,
        live: Option<&'static str>,
        fetch: F,
        item: M,
    ) -> Pin<Box<dyn Stream<Item = Result<T>> + Send>>
    where
        C: Send + 'static,
        B: Send + 'static,
        T: Send + 'static,
        F: FnMut(&State, &mut C, usize, &mut VecDeque<B>) -> bool + Send + 'static,
        M: FnMut(B) -> T + Send + 'static,
    {
        Box::pin(Paged {
            item,
            backend: self.clone(),
            rx: Some(self.shared.changed.subscribe()),
            waiting: None,
            cursor,
            fetch,
            page: self.shared.config.page_size.max(1) as usize,
            buf: VecDeque::new(),
            live,
            done: false,
        })
    }
}

/// A live stream's wait for the next write; gives the receiver back.
type Waiting = Pin<Box<dyn Future<Output = (watch::Receiver<u64>, bool)> + Send>>;

/// The stream of [`Memory::paged`].
struct Paged<C, B, F, M> {
    item: M,
    backend: Memory,
    /// `None` while `waiting` holds it.
    rx: Option<watch::Receiver<u64>>,
    waiting: Option<Waiting>,
    cursor: C,
    fetch: F,
    page: usize,
    buf: VecDeque<B>,
    live: Option<&'static str>,
    done: bool,
}

// No field is pinned structurally: every one is moved or borrowed plainly.
impl<C, B, F, M> Unpin for Paged<C, B, F, M> {}

impl<C, B, T, F, M> Stream for Paged<C, B, F, M>
where
    F: FnMut(&State, &mut C, usize, &mut VecDeque<B>) -> bool,
    M: FnMut(B) -> T,
{
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.buf.pop_front() {
                return Poll::Ready(Some(Ok((this.item)(item))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(waiting) = &mut this.waiting {
                let (rx, changed) = ready!(waiting.as_mut().poll(cx));
                this.waiting = None;
                this.rx = Some(rx);
                if !changed {
                    this.done = true;
                    return Poll::Ready(None);
                }
                if let Some(query) = this.live {
                    persistence_api::metrics::record_poll(Memory::NAME, query);
                }
            }
            let Some(rx) = this.rx.as_mut() else {
                return Poll::Ready(None);
            };
            // Mark the current version seen before reading, so no write is missed.
            rx.borrow_and_update();
            let complete = {
                let state = this.backend.read();
                (this.fetch)(&state, &mut this.cursor, this.page, &mut this.buf)
            };
            if complete || (this.live.is_none() && this.buf.is_empty()) {
                this.done = true;
            }
            if this.buf.is_empty() && !this.done {
                let Some(mut rx) = this.rx.take() else {
                    return Poll::Ready(None);
                };
                this.waiting = Some(Box::pin(async move {
                    let changed = rx.changed().await.is_ok();
                    (rx, changed)
                }));
            }
        }
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
        // A copy if a stream still holds the old one: that stream yields what was stored.
        Arc::make_mut(event).payload.bytes = bytes.into();
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
