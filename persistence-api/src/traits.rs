//! The three store traits every backend implements.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

#[cfg(doc)]
use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::types::{
    AtomicWrite, EventEnvelope, Offset, Payload, PersistenceId, PersistentEvent, SelectedSnapshot,
    SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria,
};

/// A boxed stream of replayed events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<PersistentEvent>> + Send>>;
/// A boxed stream of query envelopes.
pub type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<EventEnvelope>> + Send>>;
/// A boxed stream of persistence ids.
pub type PersistenceIdStream = Pin<Box<dyn Stream<Item = Result<PersistenceId>> + Send>>;

/// What [`Journal::replay`] returns: the stored highest sequence number and the events.
pub struct Replay {
    /// The highest sequence number the id has ever stored (not `to`, and not lowered by
    /// deletes), read when the replay started.
    pub highest_sequence_nr: SequenceNr,
    /// The events in ascending sequence order.
    pub events: EventStream,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("highest_sequence_nr", &self.highest_sequence_nr)
            .finish_non_exhaustive()
    }
}

/// The append-only event journal (Pekko's `AsyncWriteJournal` plus `AsyncRecovery`).
///
/// Use it as `Arc<dyn Journal>`; build it through [`crate::Stores::new`], which puts the
/// input checks and tracing in front of it.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Stores atomic writes, each all or nothing, and answers one result per write.
    ///
    /// # Behavior
    /// - The result has one entry per atomic write, in order: `Ok(())` when stored;
    ///   `Err` with [`crate::ErrorKind::Rejected`] (or `InvalidInput`/`Unsupported`) when it
    ///   was refused and stored nothing while the journal stays healthy; any other kind
    ///   when it failed.
    /// - An atomic write is never stored in part, and never replayed in part.
    /// - An atomic write whose first sequence number is already taken fails with
    ///   [`crate::ErrorKind::Conflict`] and stores nothing: no silent overwrite.
    /// - Writes of one id in one call are applied in the given order; a failed write does
    ///   not stop the others.
    /// - A write may start above the highest plus one, as Pekko allows: it is stored and
    ///   the highest becomes its last number. Every number at or below the highest is
    ///   taken, whether its event was stored, deleted, or skipped by such a gap: a later
    ///   write starting there is a [`crate::ErrorKind::Conflict`]. A backend that stores
    ///   something per skipped number may refuse a very wide gap with
    ///   [`crate::ErrorKind::Rejected`] and say so in its documentation (DynamoDB: more
    ///   than 10,000 skipped numbers).
    /// - The outer `Err` means the whole call failed (for example the store went away);
    ///   each atomic write may or may not have been stored, but none in part.
    /// - Needs no capability for plain events; an event with tags needs
    ///   [`Capabilities::tags`], one with metadata [`Capabilities::event_metadata`].
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>>;

    /// Replays the events of `persistence_id` with `from <= sequence_nr <= to`, at most
    /// `max` of them, in ascending order. Every backend has it (no capability needed).
    ///
    /// # Behavior
    /// - Reports the stored highest sequence number as it was when the replay started;
    ///   the stream stops there even if later events arrive.
    /// - `from > to`, `max == 0` or an unknown id give an empty stream; an unknown id has
    ///   highest 0.
    /// - Deleted events are never replayed; the highest survives deleting.
    /// - Memory is bounded by the backend's page size, not by the history's length.
    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay>;

    /// The highest sequence number ever stored for `persistence_id`, 0 if none. Every
    /// backend has it (no capability needed).
    ///
    /// # Behavior
    /// - Never goes down, not even after deleting every event.
    /// - Costs a bounded number of requests whatever the history's length.
    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr>;

    /// Deletes the events of `persistence_id` up to and including `to`.
    ///
    /// # Behavior
    /// - Deleted events never replay, not even when the delete failed half-way (a
    ///   low-water mark is written first).
    /// - `to` at or beyond the highest deletes everything and succeeds; the highest stays
    ///   (it does not become `to`) and the next write continues after it, also after a
    ///   restart. Deleting an id without events succeeds and takes no numbers.
    /// - Touches this id's events only: ids that share a prefix keep theirs, the id's
    ///   snapshots stay, and the id stays in `current_persistence_ids`.
    /// - A delete racing writes of the id removes nothing above `to`.
    /// - A replay or current query running while the delete happens goes on without
    ///   failing and delivers every event above `to` (and may deliver deleted events it
    ///   had read before); a live query delivers nothing for the delete and goes on with
    ///   later writes.
    /// - Once it has returned, replays and events-by-id queries deliver no deleted event,
    ///   and a tag query delivers every event not deleted and either all of the deleted
    ///   ones or none: a backend that keeps tag rows (Cassandra, as
    ///   pekko-persistence-cassandra does) delivers them whole at their offsets; memory,
    ///   SQL and DynamoDB deliver none. An offset taken at a deleted event still resumes
    ///   right after it.
    /// - Needs [`Capabilities::delete_events`].
    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()>;
}

/// The snapshot store (Pekko's `SnapshotStore`).
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Saves a snapshot.
    ///
    /// # Behavior
    /// - Saving again at the same id and sequence number replaces the earlier snapshot.
    /// - The timestamp is stored as given and loads back equal.
    /// - A snapshot larger than [`Capabilities::max_snapshot_size`] is rejected; a
    ///   half-written snapshot is never loaded.
    /// - Needs [`Capabilities::snapshots`], and [`Capabilities::snapshot_metadata`] for a
    ///   snapshot with metadata.
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()>;

    /// Loads the snapshot with the highest sequence number matching `criteria`.
    ///
    /// # Behavior
    /// - Of the snapshots matching `criteria` (every bound inclusive), the one with the
    ///   highest sequence number, with its payload, timestamp and metadata as saved.
    /// - `None` when nothing matches (unknown id, criteria that select nothing).
    /// - Needs [`Capabilities::snapshots`].
    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>>;

    /// Deletes the one snapshot at `metadata.sequence_nr`; a timestamp of
    /// [`crate::Timestamp::MIN`] matches any timestamp, another must match exactly.
    ///
    /// # Behavior
    /// - Deleting a snapshot that does not exist succeeds.
    /// - Needs [`Capabilities::snapshots`].
    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()>;

    /// Deletes every snapshot of `persistence_id` matching `criteria`.
    ///
    /// # Behavior
    /// - Deletes exactly the snapshots matching `criteria`, lower bounds included; the
    ///   others, and other ids' snapshots, stay, and saving again afterwards works.
    /// - Needs [`Capabilities::snapshots`].
    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()>;
}

/// Whether a query completes with what is stored or goes on delivering.
///
/// Pekko names the two forms of each query `currentEventsByTag` and `eventsByTag`; here a
/// backend implements one method per query taking the mode, and [`ReadJournalExt`] gives
/// callers the Pekko names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryMode {
    /// Delivers what was stored when the query started, then completes.
    Current,
    /// Delivers what is stored, then each later write, within
    /// [`Capabilities::live_query_max_delay`]; never completes (unless a `to` bound is
    /// reached). Needs [`Capabilities::live_queries`].
    Live,
}

impl QueryMode {
    /// `true` for [`QueryMode::Live`].
    pub fn is_live(self) -> bool {
        matches!(self, QueryMode::Live)
    }
}

/// The read side: queries over what the journal stored (Pekko Persistence Query).
///
/// A backend implements the three methods here, each taking a [`QueryMode`]; callers use
/// the Pekko names (`current_events_by_tag`, `events_by_tag`, ...) from [`ReadJournalExt`],
/// which every `ReadJournal` has. "Current" queries complete once they have delivered
/// what was stored when they started; live queries never complete (unless a `to` bound is
/// reached) and deliver new events as they are written, within
/// [`Capabilities::live_query_max_delay`].
pub trait ReadJournal: Send + Sync + 'static {
    /// Every persistence id once, in any order. Current: then completes. Live: then each
    /// new id as it writes its first event, never completing; a further event of a known
    /// id emits nothing.
    ///
    /// # Behavior
    /// - Current: each id that has written an event appears exactly once, however many
    ///   there are (also past the backend's page size) and however concurrently they were
    ///   written; an id whose events were all deleted stays. Nothing of another namespace
    ///   appears.
    /// - Live: delivers the stored ids once each, then every new id within
    ///   [`Capabilities::live_query_max_delay`] of its first write; never an id twice.
    /// - Needs [`Capabilities::query_persistence_ids`], and
    ///   [`Capabilities::live_queries`] when live.
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream;

    /// The events of one id with `from <= sequence_nr <= to` (from 0 behaves as 1), in
    /// order. Current: up to the highest stored when the query started, then completes.
    /// Live: then later events too, completing once `to` is delivered, never otherwise.
    /// Each envelope's offset is `Offset::Sequence(sequence_nr)`.
    ///
    /// # Behavior
    /// - Current: delivers exactly the stored events in `from..=to` in order, each
    ///   envelope carrying the event as written (payload, timestamp, writer, tags,
    ///   metadata) and offset `Offset::Sequence(sequence_nr)`; `from > to`, an unknown id
    ///   or a range above the highest give an empty stream.
    /// - Current: stops at the highest stored when it started, even if later events
    ///   arrive.
    /// - Live: delivers what is stored, then each later event within
    ///   [`Capabilities::live_query_max_delay`] of its write's acknowledgement, in order,
    ///   also for an id that had no events when it started.
    /// - Live: completes right after delivering `to`; never completes otherwise.
    /// - Needs [`Capabilities::query_events_by_persistence_id`], and
    ///   [`Capabilities::live_queries`] when live.
    fn query_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream;

    /// The events carrying `tag` (exact match) after `offset` (exclusive). Current: then
    /// completes. Live: then later events, never completing. What it delivers of deleted
    /// events: see [`Journal::delete_events_to`].
    ///
    /// # Behavior
    /// - Current: the tag matches exactly: not by prefix, case or pattern, whatever
    ///   characters it holds; an unknown tag gives an empty stream.
    /// - Current: delivers every event carrying the tag whose write was acknowledged
    ///   before the query was created (a backend whose tag index is eventually consistent
    ///   waits it out before it completes), and none whose write started after the query
    ///   delivered its first envelope; a write in between may or may not be delivered.
    /// - Current: events of one id come in sequence order, also under concurrent writers.
    /// - Current: resuming from any delivered envelope's offset neither skips nor repeats
    ///   events, also across the backend's pages and while writers are writing.
    /// - Live: delivers what is stored after `offset`, then each later event carrying the
    ///   tag within [`Capabilities::live_query_max_delay`] of its write's
    ///   acknowledgement; never an event twice.
    /// - Live: two subscribers of one tag see each id's events in the same order.
    /// - Needs [`Capabilities::query_events_by_tag`] (and [`Capabilities::tags`]), and
    ///   [`Capabilities::live_queries`] when live.
    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream;
}

/// The Pekko names of the read journal's queries, for every [`ReadJournal`].
///
/// Implemented for every `ReadJournal` (also `dyn ReadJournal`) by a blanket impl; do not
/// implement it yourself. Each method is the [`ReadJournal`] method with the mode filled
/// in; the contracts are stated there.
pub trait ReadJournalExt: ReadJournal {
    /// Every persistence id once, then completes:
    /// [`ReadJournal::query_persistence_ids`] in [`QueryMode::Current`].
    fn current_persistence_ids(&self) -> PersistenceIdStream {
        self.query_persistence_ids(QueryMode::Current)
    }

    /// Every persistence id once, then each new one; never completes:
    /// [`ReadJournal::query_persistence_ids`] in [`QueryMode::Live`].
    fn persistence_ids(&self) -> PersistenceIdStream {
        self.query_persistence_ids(QueryMode::Live)
    }

    /// The stored events of one id in `from..=to`, then completes:
    /// [`ReadJournal::query_events_by_persistence_id`] in [`QueryMode::Current`].
    fn current_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        self.query_events_by_persistence_id(persistence_id, from, to, QueryMode::Current)
    }

    /// The events of one id in `from..=to`, stored and later ones, completing at `to`:
    /// [`ReadJournal::query_events_by_persistence_id`] in [`QueryMode::Live`].
    fn events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        self.query_events_by_persistence_id(persistence_id, from, to, QueryMode::Live)
    }

    /// The stored events carrying `tag` after `offset`, then completes:
    /// [`ReadJournal::query_events_by_tag`] in [`QueryMode::Current`].
    fn current_events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        self.query_events_by_tag(tag, offset, QueryMode::Current)
    }

    /// The events carrying `tag` after `offset`, stored and later ones; never completes:
    /// [`ReadJournal::query_events_by_tag`] in [`QueryMode::Live`].
    fn events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        self.query_events_by_tag(tag, offset, QueryMode::Live)
    }
}

impl<T: ReadJournal + ?Sized> ReadJournalExt for T {}

/// Conveniences over [`Journal`], for every journal (blanket impl; do not implement it
/// yourself).
#[async_trait]
pub trait JournalExt: Journal {
    /// Writes one atomic write and returns its own result.
    async fn write(&self, write: AtomicWrite) -> Result<()> {
        let mut results = self.write_events(vec![write]).await?;
        results.pop().unwrap_or_else(|| {
            Err(crate::Error::new(
                crate::ErrorKind::Unexpected,
                "backend answered no result for one atomic write",
            ))
        })
    }

    /// Replays everything of `persistence_id` into a `Vec` (for tests and small histories).
    async fn replay_all(&self, persistence_id: &PersistenceId) -> Result<Vec<PersistentEvent>> {
        use futures::StreamExt;
        let replay = self.replay(persistence_id, 1, u64::MAX, u64::MAX).await?;
        replay
            .events
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }
}

impl<J: Journal + ?Sized> JournalExt for J {}
