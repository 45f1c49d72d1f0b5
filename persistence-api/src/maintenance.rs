//! Operators' repairs of a journal: rebuilding its secondary structures from the events,
//! and removing every trace of a persistence id.
//!
//! A journal keeps more than the events: a tag index (SQL's tag table, DynamoDB's numbered
//! tag entries and their counters, Cassandra's `tag_views` and tag progress tables) and a
//! registry of persistence ids (what [`crate::ReadJournal::query_persistence_ids`] reads).
//! Every one of them is derived from the events, written beside them on every write. When
//! one is lost (a table truncated by hand, a restore of the events table alone, a bug),
//! [`JournalMaintenance::rebuild_persistence_id`] writes it again from the events, as
//! pekko-persistence-cassandra's `Reconciliation` tool does. The command-line tool's
//! `rebuild` and `cleanup --purge` are built on this trait.

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::traits::PersistenceIdStream;
use crate::types::PersistenceId;

/// What [`JournalMaintenance::rebuild_persistence_id`] did for one id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebuildReport {
    /// Stored events read (events deleted by `delete_events_to` are not read).
    pub events: u64,
    /// Tag index entries written or found present: one per tag of each event read.
    pub index_entries: u64,
}

impl RebuildReport {
    /// A report of `events` events read and `index_entries` entries written or present.
    pub fn new(events: u64, index_entries: u64) -> Self {
        RebuildReport {
            events,
            index_entries,
        }
    }
}

/// What [`JournalMaintenance::purge_persistence_id`] removed for one id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Stored events removed.
    pub events: u64,
    /// Snapshots removed.
    pub snapshots: u64,
}

impl PurgeReport {
    /// A report of `events` events and `snapshots` snapshots removed.
    pub fn new(events: u64, snapshots: u64) -> Self {
        PurgeReport { events, snapshots }
    }
}

/// Repairs of a journal's secondary structures, for operators (declared by
/// [`crate::Capabilities::maintenance`]; reached through [`crate::Stores::maintenance`]).
///
/// Nothing here is needed in normal operation: every write keeps the secondary structures
/// up to date. These calls are for an operator who lost one of them, or who must remove an
/// id for good.
///
/// ```
/// # use persistence_api::*;
/// # use futures::TryStreamExt;
/// # async fn demo(stores: Stores) -> Result<()> {
/// // Rebuild the tag index and the id registry of every id the journal holds.
/// let mut ids = stores.maintenance.scan_persistence_ids();
/// while let Some(id) = ids.try_next().await? {
///     let report = stores.maintenance.rebuild_persistence_id(&id).await?;
///     println!("{id}: {} events, {} index entries", report.events, report.index_entries);
/// }
/// # Ok(()) }
/// ```
#[async_trait]
pub trait JournalMaintenance: Send + Sync + 'static {
    /// Every persistence id the journal holds, read from the journal's own records (the
    /// events and the per-id metadata), never from the id registry that
    /// [`crate::ReadJournal::query_persistence_ids`] reads, so it finds the ids a lost
    /// registry no longer lists.
    ///
    /// # Behavior
    /// - Yields each id whose [`crate::Journal::highest_sequence_nr`] is above 0 exactly
    ///   once (events deleted by `delete_events_to` keep their id listed, as the
    ///   registry does), in no particular order, and completes.
    /// - Streams: it reads the journal a page at a time and holds no more than a page.
    ///
    /// An id first written while the scan runs may or may not be yielded.
    fn scan_persistence_ids(&self) -> PersistenceIdStream;

    /// Writes the secondary structures of `persistence_id` again from its stored events:
    /// its entry in the id registry, and one tag index entry per tag of each stored event
    /// (with, where the backend keeps them, the tag progress records readers use).
    ///
    /// # Behavior
    /// - Afterwards `current_events_by_tag` returns every stored event of the id under
    ///   each of its tags, at the same place in the tag's order as before the loss, with
    ///   the same [`crate::Offset`]: a projection's stored offset stays valid, and events
    ///   written after the rebuild come after it.
    /// - Afterwards `current_persistence_ids` lists the id.
    /// - Idempotent: entries still present are left as they are (or written again with
    ///   the same content), so it may be run on an intact journal, run twice, or run
    ///   again after an interruption. Safe while the id is written to.
    /// - Returns how many stored events it read and how many index entries it wrote or
    ///   found present (one per tag of each event).
    /// - An id with no stored events is `Ok` with a report of zeros, and registers the
    ///   id only if the journal holds it.
    async fn rebuild_persistence_id(&self, persistence_id: &PersistenceId)
        -> Result<RebuildReport>;

    /// Removes every tag index entry of the journal (with the counters, progress and
    /// bucket records its tag queries read) and every entry of its id registry, leaving
    /// the events and the per-id metadata: the first half of rebuilding an index that may
    /// hold wrong entries (a rebuild only writes what the events say, it removes nothing),
    /// as pekko-persistence-cassandra's `Reconciliation` truncates the tag views before
    /// rebuilding them. Only this journal's data goes (its namespace, table prefix or
    /// keyspace), never another's sharing the tables.
    ///
    /// # Behavior
    /// - Afterwards `current_events_by_tag` and `current_persistence_ids` return nothing
    ///   of this journal until its ids are rebuilt; replays, `highest_sequence_nr` and
    ///   `current_events_by_persistence_id` are untouched, as is
    ///   [`JournalMaintenance::scan_persistence_ids`].
    /// - Rebuilding every id the scan yields then restores the tag queries with their
    ///   offsets and the id listing.
    ///
    /// Stop the journal's writers and readers (projections, live queries) first, and
    /// rebuild before starting them again: a tag query running across a truncation may
    /// end early or wait on entries that are gone.
    async fn truncate_indexes(&self) -> Result<()> {
        Err(no_maintenance("truncate_indexes"))
    }

    /// Removes every trace of `persistence_id`: its events, their tag index entries, its
    /// snapshots, its entry in the id registry and its metadata (the highest sequence
    /// number `delete_events_to` keeps), as pekko-persistence-cassandra's `Cleanup`
    /// removes everything of an id.
    ///
    /// # Behavior
    /// - Afterwards `highest_sequence_nr` is 0, a replay and `current_events_by_persistence_id`
    ///   return nothing, no snapshot loads, neither `current_persistence_ids` nor
    ///   [`JournalMaintenance::scan_persistence_ids`] lists the id, and no tag query
    ///   returns its events; other ids are untouched. The id may be written again from
    ///   sequence number 1.
    /// - Not atomic: a purge interrupted part-way leaves part of the id, and running it
    ///   again finishes it. Idempotent: a second purge removes nothing and reports zeros.
    /// - Returns how many stored events and snapshots it removed.
    ///
    /// The id is being retired: a purge must not race writes to the same id.
    async fn purge_persistence_id(&self, persistence_id: &PersistenceId) -> Result<PurgeReport>;
}

/// The maintenance of a backend that has none: every call is
/// [`crate::ErrorKind::Unsupported`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMaintenance;

fn no_maintenance(operation: &'static str) -> Error {
    Error::unsupported("this backend does not offer journal maintenance (rebuild, purge)")
        .with_operation(operation)
}

#[async_trait]
impl JournalMaintenance for NoMaintenance {
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        Box::pin(futures::stream::once(async {
            Err(no_maintenance("scan_persistence_ids"))
        }))
    }
    async fn rebuild_persistence_id(&self, _: &PersistenceId) -> Result<RebuildReport> {
        Err(no_maintenance("rebuild_persistence_id"))
    }
    async fn purge_persistence_id(&self, _: &PersistenceId) -> Result<PurgeReport> {
        Err(no_maintenance("purge_persistence_id"))
    }
    async fn truncate_indexes(&self) -> Result<()> {
        Err(no_maintenance("truncate_indexes"))
    }
}
