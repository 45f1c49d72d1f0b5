//! What a projection reads: [`Source`] (events by tag or by id) and [`ChangeSource`]
//! (durable-state changes by tag), both [`SourceProvider`]s of an [`Envelope`] type.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use persistence_api::{
    DurableStateChange, DurableStateStore, Error, EventEnvelope, Offset, PersistenceId, QueryMode,
    ReadJournal, Result, Stores, Timestamp,
};

/// What a projection hands its handler: an event envelope or a durable-state change.
pub trait Envelope: Clone + Send + Sync + 'static {
    /// Where a query resumes after this envelope.
    fn offset(&self) -> &Offset;
    /// The id it is about.
    fn persistence_id(&self) -> &PersistenceId;
    /// The event's sequence number, or the change's revision.
    fn sequence_nr(&self) -> u64;
    /// When it was written.
    fn timestamp(&self) -> Timestamp;
}

impl Envelope for EventEnvelope {
    fn offset(&self) -> &Offset {
        &self.offset
    }
    fn persistence_id(&self) -> &PersistenceId {
        &self.event.persistence_id
    }
    fn sequence_nr(&self) -> u64 {
        self.event.sequence_nr
    }
    fn timestamp(&self) -> Timestamp {
        self.event.timestamp
    }
}

impl Envelope for DurableStateChange {
    fn offset(&self) -> &Offset {
        &self.offset
    }
    fn persistence_id(&self) -> &PersistenceId {
        &self.persistence_id
    }
    fn sequence_nr(&self) -> u64 {
        self.revision
    }
    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
}

/// A boxed stream of a source's envelopes.
pub type SourceStream<E> = Pin<Box<dyn Stream<Item = Result<E>> + Send>>;

/// The stores a source reads from (taken from [`Stores`] by the builder).
#[derive(Clone)]
pub struct SourceStores {
    /// For events.
    pub read_journal: Arc<dyn ReadJournal>,
    /// For durable-state changes.
    pub durable_state: Arc<dyn DurableStateStore>,
}

impl SourceStores {
    /// The read journal and durable-state store of `stores`.
    pub fn of(stores: &Stores) -> Self {
        SourceStores {
            read_journal: stores.read_journal.clone(),
            durable_state: stores.durable_state.clone(),
        }
    }
}

/// A kind of source: what it reads, the envelopes it gives, the offsets it resumes from.
pub trait SourceProvider: Clone + fmt::Display + Send + Sync + 'static {
    /// What it gives the handler.
    type Envelope: Envelope;

    /// Current (completes at the end of what is stored) or live.
    fn mode(&self) -> QueryMode;

    /// Checks that `offset` is of a kind this source resumes from.
    ///
    /// # Errors
    /// [`persistence_api::ErrorKind::InvalidInput`] naming the source and the offset.
    fn check_offset(&self, offset: &Offset) -> Result<()>;

    /// The envelopes after `offset`, in `mode`.
    ///
    /// # Errors
    /// As [`SourceProvider::check_offset`].
    fn open_in(
        &self,
        stores: &SourceStores,
        offset: Offset,
        mode: QueryMode,
    ) -> Result<SourceStream<Self::Envelope>>;

    /// The envelopes after `offset`, in this source's mode.
    ///
    /// # Errors
    /// As [`SourceProvider::check_offset`].
    fn open(&self, stores: &SourceStores, offset: Offset) -> Result<SourceStream<Self::Envelope>> {
        self.open_in(stores, offset, self.mode())
    }

    /// The envelopes stored now after `offset` (the current form, whatever this source's
    /// mode): what the lag is counted on.
    ///
    /// # Errors
    /// As [`SourceProvider::check_offset`].
    fn open_current(
        &self,
        stores: &SourceStores,
        offset: Offset,
    ) -> Result<SourceStream<Self::Envelope>> {
        self.open_in(stores, offset, QueryMode::Current)
    }
}

/// Durable-state changes of the states tagged `tag`
/// ([`persistence_api::DurableStateStore::query_changes`]): each id's latest change
/// after the offset, a delete included ([`DurableStateChange::is_deleted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSource {
    /// The tag.
    pub tag: String,
    /// Current (stop at the end) or live.
    pub mode: QueryMode,
}

impl ChangeSource {
    /// The changes of the states tagged `tag`, current or live.
    pub fn tag(tag: impl Into<String>, mode: QueryMode) -> Self {
        ChangeSource {
            tag: tag.into(),
            mode,
        }
    }
}

impl fmt::Display for ChangeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state changes by tag {:?} ({:?})", self.tag, self.mode)
    }
}

impl SourceProvider for ChangeSource {
    type Envelope = DurableStateChange;

    fn mode(&self) -> QueryMode {
        self.mode
    }

    /// Any offset the backend's change query handed out.
    fn check_offset(&self, _offset: &Offset) -> Result<()> {
        Ok(())
    }

    fn open_in(
        &self,
        stores: &SourceStores,
        offset: Offset,
        mode: QueryMode,
    ) -> Result<SourceStream<DurableStateChange>> {
        Ok(stores
            .durable_state
            .query_changes(self.tag.clone(), offset, mode))
    }
}

/// What a projection reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`persistence_api::ReadJournal::query_events_by_tag`]; the stored offset is the tag
    /// query's offset.
    EventsByTag {
        /// The tag.
        tag: String,
        /// Current (stop at the end) or live.
        mode: QueryMode,
    },
    /// The events of one id; the stored offset is `Offset::Sequence` of the last event
    /// handled.
    EventsByPersistenceId {
        /// The id.
        persistence_id: PersistenceId,
        /// Current (stop at the end) or live.
        mode: QueryMode,
    },
}

impl Source {
    /// Events by `tag`, current or live.
    pub fn tag(tag: impl Into<String>, mode: QueryMode) -> Self {
        Source::EventsByTag {
            tag: tag.into(),
            mode,
        }
    }

    /// The events of `persistence_id`, current or live.
    pub fn persistence_id(persistence_id: PersistenceId, mode: QueryMode) -> Self {
        Source::EventsByPersistenceId {
            persistence_id,
            mode,
        }
    }

    /// Whether it completes at the end of what is stored ([`QueryMode::Current`]).
    pub fn mode(&self) -> QueryMode {
        match self {
            Source::EventsByTag { mode, .. } | Source::EventsByPersistenceId { mode, .. } => *mode,
        }
    }
}

impl SourceProvider for Source {
    type Envelope = EventEnvelope;

    fn mode(&self) -> QueryMode {
        Source::mode(self)
    }

    /// A by-id source resumes from `Offset::Sequence` or `Offset::NoOffset` only; anything
    /// else is `InvalidInput` naming the id and the offset.
    fn check_offset(&self, offset: &Offset) -> Result<()> {
        match (self, offset) {
            (Source::EventsByPersistenceId { persistence_id, .. }, other)
                if !matches!(other, Offset::NoOffset | Offset::Sequence(_)) =>
            {
                Err(Error::invalid_input(format!(
                    "an events-by-persistence-id source ({persistence_id}) resumes from a sequence offset, not from {other}"
                ))
                .with_persistence_id(persistence_id.as_str()))
            }
            _ => Ok(()),
        }
    }

    fn open_in(
        &self,
        stores: &SourceStores,
        offset: Offset,
        mode: QueryMode,
    ) -> Result<SourceStream<EventEnvelope>> {
        self.check_offset(&offset)?;
        let read_journal = &stores.read_journal;
        match self {
            Source::EventsByTag { tag, .. } => {
                Ok(read_journal.query_events_by_tag(tag.clone(), offset, mode))
            }
            Source::EventsByPersistenceId { persistence_id, .. } => {
                let from = match offset {
                    Offset::Sequence(n) => n + 1,
                    _ => 1,
                };
                Ok(read_journal.query_events_by_persistence_id(
                    persistence_id.clone(),
                    from,
                    u64::MAX,
                    mode,
                ))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::EventsByTag { tag, mode } => write!(f, "events by tag {tag:?} ({mode:?})"),
            Source::EventsByPersistenceId {
                persistence_id,
                mode,
            } => write!(f, "events of {persistence_id} ({mode:?})"),
        }
    }
}
