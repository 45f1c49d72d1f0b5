//! A small typed layer: an event-sourced entity recovered from a snapshot plus events.
//!
//! No actor system: an [`Entity`] is a value you hold, recover, and persist through.

use std::sync::Arc;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{CborCodec, Codec};
use crate::error::{Error, ErrorKind, Result};
use crate::replay_filter::ReplayFilter;
use crate::stores::Stores;
use crate::traits::JournalExt;
use crate::types::{
    AtomicWrite, PersistenceId, PersistentEvent, SequenceNr, SnapshotMetadata,
    SnapshotSelectionCriteria, Timestamp,
};

/// The state of an event-sourced entity and how events change it.
///
/// ```
/// use persistence_api::EventSourced;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { total: i64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterEvent { Added(i64) }
///
/// impl EventSourced for Counter {
///     type Event = CounterEvent;
///     const TYPE_NAME: &'static str = "example.Counter";
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Added(n) => self.total += n }
///     }
/// }
/// ```
pub trait EventSourced: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The events that change the state.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The name used in manifests: events are `"<TYPE_NAME>.Event/v<n>"`, snapshots
    /// `"<TYPE_NAME>/v<n>"`.
    const TYPE_NAME: &'static str;

    /// Applies one event to the state. Must not fail: validate commands before persisting.
    fn apply(&mut self, event: &Self::Event);

    /// The tags an event is stored under (none by default).
    fn tags(_event: &Self::Event) -> Vec<String> {
        Vec::new()
    }
}

/// How an [`Entity`] encodes, snapshots and filters.
pub struct EntityConfig<S: EventSourced> {
    /// The event codec (CBOR, version 1, by default).
    pub event_codec: Arc<dyn Codec<S::Event>>,
    /// The snapshot codec (CBOR, version 1, by default).
    pub snapshot_codec: Arc<dyn Codec<S>>,
    /// Take a snapshot after every this many events (`None`: never).
    pub snapshot_every: Option<u64>,
    /// The replay filter applied during recovery.
    pub replay_filter: ReplayFilter,
}

impl<S: EventSourced> Default for EntityConfig<S> {
    fn default() -> Self {
        EntityConfig {
            event_codec: Arc::new(CborCodec::<S::Event>::new(format!(
                "{}.Event",
                S::TYPE_NAME
            ))),
            snapshot_codec: Arc::new(CborCodec::<S>::new(S::TYPE_NAME)),
            snapshot_every: None,
            replay_filter: ReplayFilter::default(),
        }
    }
}

impl<S: EventSourced> Clone for EntityConfig<S> {
    fn clone(&self) -> Self {
        EntityConfig {
            event_codec: self.event_codec.clone(),
            snapshot_codec: self.snapshot_codec.clone(),
            snapshot_every: self.snapshot_every,
            replay_filter: self.replay_filter,
        }
    }
}

impl<S: EventSourced> EntityConfig<S> {
    /// Snapshot after every `n` events.
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = Some(n.max(1));
        self
    }

    /// Uses `codec` for events (for example a [`CborCodec`] with upcasters).
    pub fn with_event_codec(mut self, codec: impl Codec<S::Event> + 'static) -> Self {
        self.event_codec = Arc::new(codec);
        self
    }

    /// Uses `filter` during recovery.
    pub fn with_replay_filter(mut self, filter: ReplayFilter) -> Self {
        self.replay_filter = filter;
        self
    }

    /// Uses `codec` for snapshots.
    pub fn with_snapshot_codec(mut self, codec: impl Codec<S> + 'static) -> Self {
        self.snapshot_codec = Arc::new(codec);
        self
    }
}

/// What a recovery found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The sequence number of the snapshot it started from, if any.
    pub snapshot_sequence_nr: Option<SequenceNr>,
    /// How many events it replayed after the snapshot.
    pub events_replayed: u64,
}

/// One event-sourced entity: its state, its sequence number, and the stores behind it.
///
/// ```
/// # use persistence_api::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] struct Counter { total: i64 }
/// # #[derive(Serialize, Deserialize)] enum Ev { Added(i64) }
/// # impl EventSourced for Counter { type Event = Ev; const TYPE_NAME: &'static str = "c";
/// #   fn apply(&mut self, e: &Ev) { match e { Ev::Added(n) => self.total += n } } }
/// # async fn demo(stores: Stores) -> Result<()> {
/// let id = PersistenceId::new("counter-1")?;
/// let mut counter = Entity::<Counter>::recover(&stores, id, EntityConfig::default().snapshot_every(100)).await?;
/// counter.persist(vec![Ev::Added(2), Ev::Added(3)]).await?; // one atomic write
/// assert_eq!(counter.state().total % 5, 0);
/// # Ok(()) }
/// ```
pub struct Entity<S: EventSourced> {
    id: PersistenceId,
    state: S,
    sequence_nr: SequenceNr,
    last_snapshot_nr: SequenceNr,
    writer_id: String,
    stores: Stores,
    config: EntityConfig<S>,
    recovery: RecoveryInfo,
}

impl<S: EventSourced> std::fmt::Debug for Entity<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entity")
            .field("id", &self.id)
            .field("sequence_nr", &self.sequence_nr)
            .field("writer_id", &self.writer_id)
            .finish_non_exhaustive()
    }
}

impl<S: EventSourced> Entity<S> {
    /// Recovers the entity: the latest snapshot, then the events after it, upcast by the
    /// codecs and passed through the replay filter. A fresh writer id is drawn.
    ///
    /// A snapshot or event the codec cannot decode fails the recovery with the codec's
    /// error ([`ErrorKind::Serialization`]) naming that snapshot or event: its persistence id
    /// and sequence number, in the error's fields and text.
    pub async fn recover(
        stores: &Stores,
        id: PersistenceId,
        config: EntityConfig<S>,
    ) -> Result<Self> {
        let caps = stores.capabilities();
        let mut state = S::default();
        let mut from = 1;
        let mut recovery = RecoveryInfo::default();
        if caps.snapshots {
            if let Some(snapshot) = stores
                .snapshots
                .load_snapshot(&id, SnapshotSelectionCriteria::latest())
                .await?
            {
                state = snapshot.decode_snapshot(config.snapshot_codec.as_ref())?;
                from = snapshot.metadata.sequence_nr + 1;
                recovery.snapshot_sequence_nr = Some(snapshot.metadata.sequence_nr);
            }
        }
        let replay = stores.journal.replay(&id, from, u64::MAX, u64::MAX).await?;
        let mut events = config.replay_filter.apply(replay.events);
        let mut sequence_nr = from - 1;
        while let Some(event) = events.next().await {
            let event = event?;
            let decoded = event.decode_payload(config.event_codec.as_ref())?;
            state.apply(&decoded);
            sequence_nr = event.sequence_nr;
            recovery.events_replayed += 1;
        }
        let sequence_nr = sequence_nr.max(replay.highest_sequence_nr);
        Ok(Entity {
            id,
            state,
            sequence_nr,
            last_snapshot_nr: recovery.snapshot_sequence_nr.unwrap_or(0),
            writer_id: uuid::Uuid::new_v4().to_string(),
            stores: stores.clone(),
            config,
            recovery,
        })
    }

    /// The current state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The entity's id.
    pub fn persistence_id(&self) -> &PersistenceId {
        &self.id
    }

    /// The sequence number of the last event persisted or recovered.
    pub fn sequence_nr(&self) -> SequenceNr {
        self.sequence_nr
    }

    /// What the recovery found.
    pub fn recovery_info(&self) -> RecoveryInfo {
        self.recovery
    }

    /// Persists `events` as one atomic write at the next sequence numbers, then applies
    /// them. On [`ErrorKind::Conflict`] another writer got there first: the state is left
    /// unchanged, recover again to see what it wrote.
    pub async fn persist(&mut self, events: Vec<S::Event>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let timestamp = Timestamp::now();
        let mut stored = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let payload = self.config.event_codec.encode(event)?;
            stored.push(
                PersistentEvent::new(self.id.clone(), self.sequence_nr + 1 + i as u64, payload)
                    .with_writer_id(self.writer_id.clone())
                    .with_timestamp(timestamp)
                    .with_tags(S::tags(event)),
            );
        }
        let write = AtomicWrite::new(stored)?;
        self.stores.journal.write(write).await?;
        for event in &events {
            self.state.apply(event);
        }
        self.sequence_nr += events.len() as u64;
        if let Some(every) = self.config.snapshot_every {
            if self.sequence_nr - self.last_snapshot_nr >= every
                && self.stores.capabilities().snapshots
            {
                self.save_snapshot().await?;
            }
        }
        Ok(())
    }

    /// Persists one event.
    pub async fn persist_one(&mut self, event: S::Event) -> Result<()> {
        self.persist(vec![event]).await
    }

    /// Saves a snapshot of the current state now.
    pub async fn save_snapshot(&mut self) -> Result<()> {
        let payload = self.config.snapshot_codec.encode(&self.state)?;
        let meta = SnapshotMetadata::new(self.id.clone(), self.sequence_nr);
        self.stores.snapshots.save_snapshot(meta, payload).await?;
        self.last_snapshot_nr = self.sequence_nr;
        Ok(())
    }

    /// Whether an error means another writer took this entity's next sequence number.
    pub fn is_conflict(error: &Error) -> bool {
        error.kind() == ErrorKind::Conflict
    }
}
