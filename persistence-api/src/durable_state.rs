//! Durable state: the latest state of each id with a revision check (Pekko's
//! `DurableStateStore`), and its change stream.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

#[cfg(doc)]
use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::traits::QueryMode;
use crate::types::{Offset, Payload, PersistenceId, Timestamp};

/// A revision: 1 for the first upsert of an id, then one more per upsert or delete.
pub type Revision = u64;

/// What [`DurableStateStore::get`] finds for an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    /// The id.
    pub persistence_id: PersistenceId,
    /// The stored revision: the next upsert or delete must name this plus one.
    pub revision: Revision,
    /// The state, `None` after a delete (the revision still counts).
    pub payload: Option<Payload>,
    /// The tag it was stored with (what change queries select by).
    pub tag: Option<String>,
    /// When this revision was written.
    pub timestamp: Timestamp,
}

impl DurableState {
    /// Whether the last change was a delete.
    pub fn is_deleted(&self) -> bool {
        self.payload.is_none()
    }
}

/// One change of a change query: an id's latest revision since the query's offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableStateChange {
    /// Resume a change query from here to get the changes after this one.
    pub offset: Offset,
    /// The id.
    pub persistence_id: PersistenceId,
    /// The revision this change wrote.
    pub revision: Revision,
    /// The state it stored; `None` for a delete.
    pub payload: Option<Payload>,
    /// The tag the state carries (for a delete: the tag it had).
    pub tag: Option<String>,
    /// When it was written.
    pub timestamp: Timestamp,
}

impl DurableStateChange {
    /// Whether this change deleted the state.
    pub fn is_deleted(&self) -> bool {
        self.payload.is_none()
    }
}

/// A boxed stream of state changes.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<DurableStateChange>> + Send>>;

/// The latest state per id, written with a revision check so two writers racing on one
/// id never both win (Pekko's `DurableStateUpdateStore`), and its change stream
/// (`DurableStateStoreQuery`).
///
/// Use it as [`crate::Stores::durable_state`], behind the checking layer.
#[async_trait]
pub trait DurableStateStore: Send + Sync + 'static {
    /// The stored state of `persistence_id`.
    ///
    /// # Behavior
    /// - Gives `None` when it was never written; after a delete, `Some` with the
    ///   delete's revision and no payload.
    /// - Reads the last successful upsert or delete (read-your-writes).
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>>;

    /// Stores `payload` as `persistence_id`'s state at `revision`, with `tag`.
    ///
    /// # Behavior
    /// - The revision must be the stored revision plus one (1 for an id never written);
    ///   anything else is [`crate::ErrorKind::Conflict`] naming the stored and the given
    ///   revision, and nothing is written.
    /// - Of writers racing on one revision, exactly one wins; the others get `Conflict`.
    /// - After a delete at revision n, the next upsert is at n + 1, never 1 again.
    /// - Revision 0, an empty payload or an empty tag is [`crate::ErrorKind::InvalidInput`]
    ///   and a payload over [`Capabilities::max_state_size`] is
    ///   [`crate::ErrorKind::Rejected`], before any request.
    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()>;

    /// Deletes `persistence_id`'s state; the delete is itself a revision.
    ///
    /// # Behavior
    /// - The same revision check as [`DurableStateStore::upsert`]: the revision must be
    ///   the stored one plus one, else [`crate::ErrorKind::Conflict`] and nothing changes.
    /// - Afterwards [`DurableStateStore::get`] gives the revision and no payload, and
    ///   change queries deliver the delete.
    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()>;

    /// The changes of the states tagged `tag` after `offset`: for each id, its latest
    /// change (an upsert or a delete), in the order they were stored; with
    /// [`QueryMode::Live`], then the changes made later, without completing.
    ///
    /// # Behavior
    /// - An id changed several times since `offset` appears once, with its latest
    ///   revision (earlier revisions may be skipped, never the latest).
    /// - Resuming from a change's offset gives only changes stored after it; none is
    ///   skipped, also under concurrent writers.
    /// - Live: a change arrives within [`Capabilities::live_query_max_delay`] after its
    ///   write was acknowledged.
    /// - Needs [`Capabilities::durable_state_changes`] (and [`Capabilities::live_queries`]
    ///   for the live form).
    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream;
}

/// Pekko's names for the change queries (`DurableStateStoreQuery.currentChanges` and
/// `changes`), for every [`DurableStateStore`]: `use persistence_api::DurableStateStoreExt`.
///
/// ```
/// use futures::StreamExt;
/// use persistence_api::{DurableStateStoreExt, Offset, Stores};
/// # async fn demo(stores: Stores) {
/// let mut changes = stores.durable_state.current_changes("carts".into(), Offset::NoOffset);
/// while let Some(change) = changes.next().await {
///     let change = change.unwrap();
///     println!("{} at revision {}", change.persistence_id, change.revision);
/// }
/// # }
/// ```
pub trait DurableStateStoreExt: DurableStateStore {
    /// The changes stored now after `offset`, then completes:
    /// [`DurableStateStore::query_changes`] with [`QueryMode::Current`].
    fn current_changes(&self, tag: String, offset: Offset) -> ChangeStream {
        self.query_changes(tag, offset, QueryMode::Current)
    }

    /// The changes after `offset`, then every later one, never completing:
    /// [`DurableStateStore::query_changes`] with [`QueryMode::Live`].
    fn changes(&self, tag: String, offset: Offset) -> ChangeStream {
        self.query_changes(tag, offset, QueryMode::Live)
    }
}

impl<T: DurableStateStore + ?Sized> DurableStateStoreExt for T {}

/// The durable-state store of a backend that has none: every call is
/// [`crate::ErrorKind::Unsupported`]. What [`crate::Stores::durable_state`] holds until a
/// backend adds its own with [`crate::Stores::with_durable_state_store`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDurableStateStore;

fn no_state(operation: &'static str) -> Error {
    Error::unsupported("this backend does not store durable state").with_operation(operation)
}

#[async_trait]
impl DurableStateStore for NoDurableStateStore {
    async fn get(&self, _: &PersistenceId) -> Result<Option<DurableState>> {
        Err(no_state("get_state"))
    }
    async fn upsert(
        &self,
        _: &PersistenceId,
        _: Revision,
        _: Payload,
        _: Option<String>,
    ) -> Result<()> {
        Err(no_state("upsert_state"))
    }
    async fn delete(&self, _: &PersistenceId, _: Revision) -> Result<()> {
        Err(no_state("delete_state"))
    }
    fn query_changes(&self, _: String, _: Offset, _: QueryMode) -> ChangeStream {
        Box::pin(futures::stream::once(async {
            Err(no_state("query_changes"))
        }))
    }
}

/// The conflict of an upsert or delete whose revision is not the stored one plus one:
/// what every backend returns, so the message reads the same everywhere.
pub fn revision_conflict(id: &PersistenceId, stored: Revision, given: Revision) -> Error {
    Error::new(
        crate::ErrorKind::Conflict,
        format!(
            "the state of {id} is at revision {stored}, so the next write must be revision {} (got revision {given}); another writer got there first, or the caller's copy is stale",
            stored + 1
        ),
    )
    .with_persistence_id(id.as_str())
}
