//! What a backend can do, declared rather than guessed.

use std::time::Duration;

/// The capabilities of one backend, filled in by its driver.
///
/// A flat `Copy` struct: a driver sets what it supports and leaves the rest to
/// `..Capabilities::default()` (everything off, no limits declared). The checking layer
/// that [`crate::Stores::new`] puts in front of every backend rejects calls the backend
/// cannot serve with [`crate::ErrorKind::Unsupported`] or [`crate::ErrorKind::Rejected`]
/// before the backend sees them, and the conformance kit picks its cases from it.
///
/// ```
/// use persistence_api::Capabilities;
/// let caps = Capabilities {
///     tags: true,
///     atomic_write_max_events: Some(100),
///     max_event_size: Some(400 * 1024 - 2048),
///     ..Capabilities::default()
/// };
/// assert!(caps.tags && !caps.live_queries);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The most events one atomic write may hold; `None` means no limit. A larger write is
    /// rejected whole with [`crate::ErrorKind::Rejected`]; a backend never stores part.
    pub atomic_write_max_events: Option<usize>,
    /// The largest [`crate::PersistentEvent::stored_size`] the backend stores; `None`
    /// means no limit. A larger event is rejected with its whole atomic write.
    pub max_event_size: Option<usize>,
    /// The largest snapshot [`crate::Payload::stored_size`]; `None` means no limit.
    pub max_snapshot_size: Option<usize>,
    /// Events may carry tags, and events-by-tag queries find them.
    pub tags: bool,
    /// Events may carry metadata, which replays and queries return.
    pub event_metadata: bool,
    /// Snapshots may carry metadata.
    pub snapshot_metadata: bool,
    /// `delete_events_to` is supported.
    pub delete_events: bool,
    /// A second writer on a taken sequence number gets [`crate::ErrorKind::Conflict`]
    /// instead of overwriting.
    pub conflict_detection: bool,
    /// Data survives a restart of the process.
    pub durable: bool,
    /// The snapshot store is available.
    pub snapshots: bool,
    /// `current_persistence_ids` (and `persistence_ids` with `live_queries`).
    pub query_persistence_ids: bool,
    /// `current_events_by_persistence_id` (and the live form with `live_queries`).
    pub query_events_by_persistence_id: bool,
    /// `current_events_by_tag` (and the live form with `live_queries`); needs `tags`.
    pub query_events_by_tag: bool,
    /// Live (never-completing) forms of the queries it supports.
    pub live_queries: bool,
    /// The longest a live query may take to deliver an event after its write was
    /// acknowledged (polling interval plus any eventual-consistency delay waited out).
    pub live_query_max_delay: Option<Duration>,
    /// Projection offsets are stored ([`crate::Stores::offsets`]), with conditional
    /// commits.
    pub projection_offsets: bool,
    /// A projection's effects and its offset can be written in one transaction
    /// ([`crate::OffsetStore::begin_transaction`]): exactly-once delivery. Needs
    /// `projection_offsets`.
    pub exactly_once_projections: bool,
    /// The durable-state store ([`crate::Stores::durable_state`]): the latest state per id
    /// with a revision check.
    pub durable_state: bool,
    /// The largest state [`crate::Payload::stored_size`] the durable-state store keeps;
    /// `None` means no limit. A larger upsert is rejected before any request.
    pub max_state_size: Option<usize>,
    /// [`crate::DurableStateStore::query_changes`] (and its live form with
    /// `live_queries`); needs `durable_state`.
    pub durable_state_changes: bool,
    /// Journal maintenance ([`crate::Stores::maintenance`]): scanning the journal's ids,
    /// rebuilding an id's tag index entries and registry entry from its events, and
    /// purging every trace of an id.
    pub maintenance: bool,
}

impl Capabilities {
    /// Everything the API defines, with no limits: the base a backend's declaration starts
    /// from, naming only what differs (`Capabilities { max_event_size: Some(..),
    /// durable: false, ..Capabilities::all() }`).
    pub fn all() -> Self {
        Capabilities {
            atomic_write_max_events: None,
            max_event_size: None,
            max_snapshot_size: None,
            tags: true,
            event_metadata: true,
            snapshot_metadata: true,
            delete_events: true,
            conflict_detection: true,
            durable: true,
            snapshots: true,
            query_persistence_ids: true,
            query_events_by_persistence_id: true,
            query_events_by_tag: true,
            live_queries: true,
            live_query_max_delay: Some(Duration::from_millis(100)),
            projection_offsets: true,
            exactly_once_projections: true,
            durable_state: true,
            max_state_size: None,
            durable_state_changes: true,
            maintenance: true,
        }
    }
}
