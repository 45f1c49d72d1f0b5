#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use futures::{stream, Stream, StreamExt};
use persistence_api::{
    AtomicWrite, Capabilities, EnvelopeStream, Error, ErrorKind, EventEnvelope, Journal, Offset,
    Payload, PersistenceId, PersistenceIdStream, PersistentEvent, QueryMode, ReadJournal, Replay,
    Result, SelectedSnapshot, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria,
    SnapshotStore, Stores, Timestamp,
};
use serde::Deserialize;
use tokio::sync::watch;

/// Settings of the in-memory backend. Its limits are declared as capabilities, so a test
/// suite can make the memory store refuse what a production store would (for example
/// `max_event_size = 400 KB` and `atomic_write_max_events = 100`, like DynamoDB).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The most events in one atomic write (default 10,000).
    pub atomic_write_max_events: Option<usize>,
    /// The largest event, as `PersistentEvent::stored_size` (default 4 MiB).
    pub max_event_size: Option<usize>,
    /// The largest snapshot (default 64 MiB).
    pub max_snapshot_size: Option<usize>,
    /// Events copied out per lock acquisition when replaying and querying (default 1,000).
    pub page_size: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            atomic_write_max_events: Some(10_000),
            max_event_size: Some(4 * 1024 * 1024),
            max_snapshot_size: Some(64 * 1024 * 1024),
            page_size: 1000,
        }
    }
}

/// The stores of a fresh, empty in-memory backend with the default settings: the one-line
/// swap for tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_api::Result<()> {
/// use persistence_api::{AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent};
/// let stores = persistence_memory::stores();
/// let id = PersistenceId::new("account-1")?;
/// stores.journal.write(AtomicWrite::single(PersistentEvent::new(id.clone(), 1, Payload::raw(b"opened".to_vec())))?).await?;
/// assert_eq!(stores.journal.highest_sequence_nr(&id).await?, 1);
/// # Ok(()) }
/// ```
pub fn stores() -> Stores {
    Memory::new(MemoryConfig::default()).stores()
}

/// Opens a fresh, empty in-memory store with `config`: the one-call entry point every
/// backend has (`persistence_<backend>::open(config)`). Sends no request (there is no
/// server) and has no schema to create.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_api::Result<()> {
/// let stores = persistence_memory::open(persistence_memory::MemoryConfig::default()).await?;
/// assert_eq!(stores.backend(), "memory");
/// # Ok(()) }
/// ```
pub async fn open(config: MemoryConfig) -> Result<Stores> {
    Ok(Memory::open(config).await?.stores())
}

/// An in-memory journal, snapshot store and read journal sharing one state. Clones share it.
#[derive(Clone)]
pub struct Memory {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: RwLock<State>,
    changed: watch::Sender<u64>,
    config: MemoryConfig,
}

#[derive(Default)]
struct State {
    logs: HashMap<PersistenceId, IdLog>,
    /// Ids in the order of their first event.
    id_order: Vec<PersistenceId>,
    /// tag -> ordering -> (id, sequence number).
    tags: HashMap<String, BTreeMap<u64, (PersistenceId, SequenceNr)>>,
    next_ordering: u64,
    snapshots: HashMap<PersistenceId, BTreeMap<SequenceNr, (SnapshotMetadata, Payload)>>,
}

#[derive(Default)]
struct IdLog {
    events: BTreeMap<SequenceNr, PersistentEvent>,
    highest: SequenceNr,
}

impl Memory {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "memory";

    /// A fresh, empty backend.
    pub fn new(config: MemoryConfig) -> Self {
        let (changed, _) = watch::channel(0);
        Memory {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                changed,
                config,
            }),
        }
    }

    /// A fresh, empty store with `config`, as a handle ([`open`] gives its [`Stores`]).
    pub async fn open(config: MemoryConfig) -> Result<Self> {
        Ok(Memory::new(config))
    }

    /// What this backend declares: its configured limits, everything else supported,
    /// not durable.
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.shared.config;
        Capabilities {
            atomic_write_max_events: c.atomic_write_max_events,
            max_event_size: c.max_event_size,
            max_snapshot_size: c.max_snapshot_size,
            durable: false,
            live_query_max_delay: Some(std::time::Duration::from_millis(10)),
            ..Capabilities::all()
        }
    }

    /// This backend's three stores behind the checking layer.
    pub fn stores(&self) -> Stores {
        Stores::new(
            Self::NAME,
            self.capabilities(),
            Arc::new(self.clone()),
            Arc::new(self.clone()),
            Arc::new(self.clone()),
        )
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

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

    fn notify(&self) {
        self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

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
            log.events.insert(event.sequence_nr, event);
        }
        Ok(())
    }

    /// A stream that pages through the state with `fetch`, and in live mode waits for
    /// writes when it has caught up. `fetch` returns the next items and whether the stream
    /// is complete after them; a current (non-live) stream also completes on an empty page.
    fn paged<C, T, F>(
        &self,
        cursor: C,
        live: bool,
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
                if complete || (!live && items.is_empty()) {
                    s.done = true;
                }
                if !items.is_empty() {
                    return Some((items, s));
                }
                if !s.done && s.rx.changed().await.is_err() {
                    return None;
                }
            }
        });
        Box::pin(pages.flat_map(|items: Vec<T>| stream::iter(items.into_iter().map(Ok))))
    }
}

fn envelope(event: &PersistentEvent, offset: Offset) -> EventEnvelope {
    EventEnvelope {
        offset,
        event: event.clone(),
    }
}

#[async_trait]
impl Journal for Memory {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        let results = {
            let mut state = self.write_lock();
            writes
                .into_iter()
                .map(|w| Self::store_one(&mut state, w))
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
        let events = self.paged((from, max), false, move |state, (next, left), page| {
            let Some(log) = state.logs.get(&id) else {
                return (Vec::new(), true);
            };
            if *next > to || *left == 0 {
                return (Vec::new(), true);
            }
            let take = (page as u64).min(*left) as usize;
            let items: Vec<PersistentEvent> = log
                .events
                .range(*next..=to)
                .take(take)
                .map(|(_, e)| e.clone())
                .collect();
            *left -= items.len() as u64;
            let complete = items.len() < take || *left == 0;
            if let Some(last) = items.last() {
                *next = last.sequence_nr + 1;
            }
            (items, complete)
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
        }
        Ok(())
    }
}

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

impl Memory {
    fn ids(&self, live: bool) -> PersistenceIdStream {
        self.paged(
            (0usize, None::<usize>),
            live,
            move |state, (next, bound), page| {
                let end = *bound.get_or_insert(state.id_order.len());
                let end = if live { state.id_order.len() } else { end };
                let items: Vec<PersistenceId> = state.id_order[*next..end]
                    .iter()
                    .take(page)
                    .cloned()
                    .collect();
                *next += items.len();
                (items, !live && *next >= end)
            },
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
            live,
            move |state, (next, bound), page| {
                let log = state.logs.get(&id);
                let highest = log.map_or(0, |l| l.highest);
                let end = if live {
                    to
                } else {
                    (*bound.get_or_insert(highest)).min(to)
                };
                let items: Vec<EventEnvelope> = match log {
                    Some(log) if *next <= end => log
                        .events
                        .range(*next..=end)
                        .take(page)
                        .map(|(s, e)| envelope(e, Offset::Sequence(*s)))
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(last) = items.last() {
                    *next = last.sequence_nr() + 1;
                }
                let complete = *next > end || (!live && items.len() < page);
                (items, complete)
            },
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
            live,
            move |state, (last, bound), page| {
                let end = if live {
                    u64::MAX
                } else {
                    *bound.get_or_insert(state.next_ordering)
                };
                let mut items = Vec::new();
                if let Some(index) = state.tags.get(&tag).filter(|_| *last < end) {
                    // A page is `page` events that still exist: entries of deleted events
                    // are passed over, so a page of them is not taken for the end.
                    for (ordering, (id, seq)) in index.range(last.saturating_add(1)..=end) {
                        *last = *ordering;
                        if let Some(e) = state.logs.get(id).and_then(|l| l.events.get(seq)) {
                            items.push(envelope(e, Offset::Sequence(*ordering)));
                            if items.len() == page {
                                break;
                            }
                        }
                    }
                }
                let complete = !live && (items.is_empty() || *last >= end);
                (items, complete)
            },
        )
    }
}

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
