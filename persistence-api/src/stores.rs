//! [`Stores`]: a backend's three stores behind one checking and tracing layer.
//!
//! Every call passes through here before a backend sees it, so input validation against
//! [`Capabilities`] and the `tracing` spans are decided in one place, the same for every
//! backend.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{stream, StreamExt};
use tracing::Instrument;

use crate::capabilities::Capabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::traits::{
    EnvelopeStream, EventStream, Journal, PersistenceIdStream, ReadJournal, Replay, SnapshotStore,
};
use crate::types::{
    AtomicWrite, Offset, Payload, PersistenceId, SelectedSnapshot, SequenceNr, SnapshotMetadata,
    SnapshotSelectionCriteria,
};

/// A backend's journal, snapshot store and read journal, each behind the checking layer.
///
/// ```
/// # use persistence_api::*;
/// # fn demo(j: std::sync::Arc<dyn Journal>, s: std::sync::Arc<dyn SnapshotStore>, r: std::sync::Arc<dyn ReadJournal>) {
/// let stores = Stores::new(j, s, r);
/// let caps: Capabilities = stores.capabilities();
/// # let _ = caps;
/// # }
/// ```
#[derive(Clone)]
pub struct Stores {
    /// The journal, checked and traced.
    pub journal: Arc<dyn Journal>,
    /// The snapshot store, checked and traced.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The read journal, checked and traced.
    pub read_journal: Arc<dyn ReadJournal>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Wraps a backend's stores in the checking and tracing layer. The journal's
    /// capabilities are the ones the layer enforces for all three.
    ///
    /// # Behavior
    /// - A call the declared capabilities rule out (tags, event or snapshot metadata,
    ///   deleting events, snapshots, a kind of query, live queries) fails with
    ///   [`ErrorKind::Unsupported`] naming what is missing and the operation; the backend
    ///   is never asked.
    /// - An atomic write of more than [`Capabilities::atomic_write_max_events`] events, or
    ///   holding an event larger than [`Capabilities::max_event_size`], gets
    ///   [`ErrorKind::Rejected`] in its place in the results and is never sent; the
    ///   call's other writes are sent and their results come back in their places.
    /// - A snapshot larger than [`Capabilities::max_snapshot_size`] is
    ///   [`ErrorKind::Rejected`] and never sent.
    /// - An empty tag is [`ErrorKind::InvalidInput`] for its atomic write.
    /// - A replay with `from > to` or `max == 0` asks the backend only for the highest; a
    ///   delete to 0, criteria that select nothing and a by-id query with `from > to` are
    ///   answered without the backend; `from` 0 reaches it as 1.
    /// - A backend that answers `write_events` with the wrong number of results makes
    ///   the call fail with [`ErrorKind::Unexpected`].
    pub fn new(
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
        read_journal: Arc<dyn ReadJournal>,
    ) -> Self {
        let capabilities = journal.capabilities();
        Stores {
            journal: Arc::new(CheckedJournal {
                inner: journal,
                caps: capabilities,
            }),
            snapshots: Arc::new(CheckedSnapshotStore {
                inner: snapshots,
                caps: capabilities,
            }),
            read_journal: Arc::new(CheckedReadJournal {
                inner: read_journal,
                caps: capabilities,
            }),
            capabilities,
        }
    }

    /// What the backend declared.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

fn unsupported(operation: &'static str, what: &str) -> Error {
    Error::unsupported(format!("this backend does not support {what}")).with_operation(operation)
}

/// Checks one atomic write against the capabilities; `Err` is that write's result.
fn check_write(caps: &Capabilities, write: &AtomicWrite) -> Result<()> {
    let id = write.persistence_id().as_str();
    let range = (write.lowest_sequence_nr(), write.highest_sequence_nr());
    let ctx = |e: Error| {
        e.with_operation("write_events")
            .with_persistence_id(id)
            .with_sequence_range(range.0, range.1)
    };
    if let Some(max) = caps.atomic_write_max_events {
        if write.len() > max {
            return Err(ctx(Error::new(
                ErrorKind::Rejected,
                format!(
                    "an atomic write of {} events is larger than this backend's limit of {max} events",
                    write.len()
                ),
            )));
        }
    }
    for event in write.events() {
        if !event.tags.is_empty() && !caps.tags {
            return Err(ctx(unsupported("write_events", "tags")));
        }
        if event.metadata.is_some() && !caps.event_metadata {
            return Err(ctx(unsupported("write_events", "event metadata")));
        }
        if let Some(tag) = event.tags.iter().find(|t| t.is_empty()) {
            return Err(ctx(Error::invalid_input(format!(
                "tags must not be empty (got {tag:?})"
            ))));
        }
        if let Some(max) = caps.max_event_size {
            let size = event.stored_size();
            if size > max {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "event {} of {id} is {size} bytes; this backend stores at most {max} bytes per event",
                        event.sequence_nr
                    ),
                )
                .with_operation("write_events")
                .with_persistence_id(id)
                .with_sequence_range(event.sequence_nr, event.sequence_nr));
            }
        }
    }
    Ok(())
}

struct CheckedJournal {
    inner: Arc<dyn Journal>,
    caps: Capabilities,
}

#[async_trait]
impl Journal for CheckedJournal {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        let events: usize = writes.iter().map(AtomicWrite::len).sum();
        let span = tracing::info_span!(
            "persistence.write_events",
            atomic_writes = writes.len(),
            events,
            persistence_id = writes
                .first()
                .map(|w| w.persistence_id().as_str())
                .unwrap_or(""),
            from = writes.first().map(|w| w.lowest_sequence_nr()).unwrap_or(0),
            to = writes.last().map(|w| w.highest_sequence_nr()).unwrap_or(0),
        );
        async move {
            let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(writes.len());
            let mut accepted = Vec::with_capacity(writes.len());
            for write in writes {
                match check_write(&self.caps, &write) {
                    Ok(()) => {
                        results.push(None);
                        accepted.push(write);
                    }
                    Err(e) => results.push(Some(Err(e))),
                }
            }
            if !accepted.is_empty() {
                let n = accepted.len();
                let inner = match self.inner.write_events(accepted).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "write_events failed");
                        return Err(e);
                    }
                };
                if inner.len() != n {
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "backend answered {} results for {n} atomic writes",
                            inner.len()
                        ),
                    )
                    .with_operation("write_events"));
                }
                let mut inner = inner.into_iter();
                for slot in results.iter_mut().filter(|s| s.is_none()) {
                    *slot = inner.next();
                }
            }
            let results: Vec<Result<()>> =
                results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
            let failed = results.iter().filter(|r| r.is_err()).count();
            tracing::debug!(failed, "write_events done");
            Ok(results)
        }
        .instrument(span)
        .await
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let span = tracing::info_span!(
            "persistence.replay",
            persistence_id = persistence_id.as_str(),
            from,
            to,
            max
        );
        async move {
            let from = from.max(1);
            if from > to || max == 0 {
                let highest = self.inner.highest_sequence_nr(persistence_id).await?;
                let events: EventStream = Box::pin(stream::empty());
                return Ok(Replay {
                    highest_sequence_nr: highest,
                    events,
                });
            }
            let replay = self.inner.replay(persistence_id, from, to, max).await?;
            tracing::debug!(highest = replay.highest_sequence_nr, "replay started");
            Ok(replay)
        }
        .instrument(span)
        .await
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        let span = tracing::info_span!(
            "persistence.highest_sequence_nr",
            persistence_id = persistence_id.as_str()
        );
        self.inner
            .highest_sequence_nr(persistence_id)
            .instrument(span)
            .await
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_events_to",
            persistence_id = persistence_id.as_str(),
            to
        );
        async move {
            if !self.caps.delete_events {
                return Err(unsupported("delete_events_to", "deleting events")
                    .with_persistence_id(persistence_id.as_str()));
            }
            if to == 0 {
                return Ok(());
            }
            self.inner.delete_events_to(persistence_id, to).await
        }
        .instrument(span)
        .await
    }
}

struct CheckedSnapshotStore {
    inner: Arc<dyn SnapshotStore>,
    caps: Capabilities,
}

#[async_trait]
impl SnapshotStore for CheckedSnapshotStore {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.save_snapshot",
            persistence_id = metadata.persistence_id.as_str(),
            sequence_nr = metadata.sequence_nr,
            bytes = snapshot.bytes.len()
        );
        async move {
            let id = metadata.persistence_id.as_str().to_owned();
            let seq = metadata.sequence_nr;
            if !self.caps.snapshots {
                return Err(unsupported("save_snapshot", "snapshots"));
            }
            if metadata.metadata.is_some() && !self.caps.snapshot_metadata {
                return Err(unsupported("save_snapshot", "snapshot metadata"));
            }
            if let Some(max) = self.caps.max_snapshot_size {
                let size = snapshot.stored_size();
                if size > max {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        format!(
                            "snapshot is {size} bytes; this backend stores at most {max} bytes"
                        ),
                    )
                    .with_operation("save_snapshot")
                    .with_persistence_id(id)
                    .with_sequence_range(seq, seq));
                }
            }
            self.inner.save_snapshot(metadata, snapshot).await
        }
        .instrument(span)
        .await
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        let span = tracing::info_span!(
            "persistence.load_snapshot",
            persistence_id = persistence_id.as_str()
        );
        async move {
            if !self.caps.snapshots {
                return Err(unsupported("load_snapshot", "snapshots"));
            }
            if criteria.is_empty() {
                return Ok(None);
            }
            let loaded = self.inner.load_snapshot(persistence_id, criteria).await?;
            tracing::debug!(
                found = loaded.as_ref().map(|s| s.metadata.sequence_nr),
                "load_snapshot done"
            );
            Ok(loaded)
        }
        .instrument(span)
        .await
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_snapshot",
            persistence_id = metadata.persistence_id.as_str(),
            sequence_nr = metadata.sequence_nr
        );
        async move {
            if !self.caps.snapshots {
                return Err(unsupported("delete_snapshot", "snapshots"));
            }
            self.inner.delete_snapshot(metadata).await
        }
        .instrument(span)
        .await
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_snapshots",
            persistence_id = persistence_id.as_str()
        );
        async move {
            if !self.caps.snapshots {
                return Err(unsupported("delete_snapshots", "snapshots"));
            }
            if criteria.is_empty() {
                return Ok(());
            }
            self.inner.delete_snapshots(persistence_id, criteria).await
        }
        .instrument(span)
        .await
    }
}

struct CheckedReadJournal {
    inner: Arc<dyn ReadJournal>,
    caps: Capabilities,
}

fn failing<T: Send + 'static>(error: Error) -> BoxedStream<T> {
    Box::pin(stream::once(async move { Err(error) }))
}

/// The three kinds of query, for the capability check.
#[derive(Clone, Copy)]
enum QueryKind {
    PersistenceIds,
    EventsById,
    EventsByTag,
}

type BoxedStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>>;

impl CheckedReadJournal {
    /// Runs `query` if the backend supports `kind` (and live queries when `live`); else a
    /// stream of one `Unsupported` error.
    fn guard<T: Send + 'static>(
        &self,
        operation: &'static str,
        kind: QueryKind,
        live: bool,
        query: impl FnOnce(&dyn ReadJournal) -> BoxedStream<T>,
    ) -> BoxedStream<T> {
        let (supported, what) = match kind {
            QueryKind::PersistenceIds => {
                (self.caps.query_persistence_ids, "persistence id queries")
            }
            QueryKind::EventsById => (
                self.caps.query_events_by_persistence_id,
                "events-by-persistence-id queries",
            ),
            QueryKind::EventsByTag => (
                self.caps.query_events_by_tag && self.caps.tags,
                "events-by-tag queries",
            ),
        };
        if !supported {
            return failing(unsupported(operation, what));
        }
        if live && !self.caps.live_queries {
            return failing(unsupported(operation, "live queries"));
        }
        tracing::info!(target: "persistence", operation, "query started");
        query(self.inner.as_ref())
    }
}

impl ReadJournal for CheckedReadJournal {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn current_persistence_ids(&self) -> PersistenceIdStream {
        self.guard(
            "current_persistence_ids",
            QueryKind::PersistenceIds,
            false,
            |r| r.current_persistence_ids(),
        )
    }

    fn persistence_ids(&self) -> PersistenceIdStream {
        self.guard("persistence_ids", QueryKind::PersistenceIds, true, |r| {
            r.persistence_ids()
        })
    }

    fn current_events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        let from = from.max(1);
        self.guard(
            "current_events_by_persistence_id",
            QueryKind::EventsById,
            false,
            |r| {
                if from > to {
                    Box::pin(stream::empty())
                } else {
                    r.current_events_by_persistence_id(id, from, to)
                }
            },
        )
    }

    fn events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        let from = from.max(1);
        self.guard(
            "events_by_persistence_id",
            QueryKind::EventsById,
            true,
            |r| {
                if from > to {
                    Box::pin(stream::empty())
                } else {
                    r.events_by_persistence_id(id, from, to)
                }
            },
        )
    }

    fn current_events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        self.guard(
            "current_events_by_tag",
            QueryKind::EventsByTag,
            false,
            |r| r.current_events_by_tag(tag, offset),
        )
    }

    fn events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        self.guard("events_by_tag", QueryKind::EventsByTag, true, |r| {
            r.events_by_tag(tag, offset)
        })
    }
}

/// Conveniences over [`Journal`], for every journal (blanket impl).
#[async_trait]
pub trait JournalExt: Journal {
    /// Writes one atomic write and returns its own result.
    async fn write(&self, write: AtomicWrite) -> Result<()> {
        let mut results = self.write_events(vec![write]).await?;
        results.pop().unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Unexpected,
                "backend answered no result for one atomic write",
            ))
        })
    }

    /// Replays everything of `persistence_id` into a `Vec` (for tests and small histories).
    async fn replay_all(
        &self,
        persistence_id: &PersistenceId,
    ) -> Result<Vec<crate::PersistentEvent>> {
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
