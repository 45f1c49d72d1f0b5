//! The cases, by store: `journal::*`, `snapshot::*`, `query::*`, and across them
//! `durability::*`, `concurrency::*`, `group_commit::*`, `bad_input::*`, `deletes::*`, `paging::*`,
//! `corruption::*`, and the projection side: `offsets::*`, `projection::*`; `durable_state::*`; and `maintenance::*`.

use futures::future::BoxFuture;
use persistence_api::Capabilities;

use crate::context::Ctx;

mod bad_input;
mod concurrency;
mod corruption;
mod deletes;
mod durability;
mod durable_state;
mod group_commit;
mod journal;
mod maintenance;
mod offsets;
mod paging;
mod projection;
mod query;
mod snapshot;

/// A capability a case needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Multi-event atomic writes (`atomic_write_max_events` of at least 2 or none).
    MultiEventAtomic,
    /// Conflict detection on taken sequence numbers.
    ConflictDetection,
    /// Deleting events.
    DeleteEvents,
    /// Tags on events.
    Tags,
    /// Metadata on events.
    EventMetadata,
    /// The snapshot store.
    Snapshots,
    /// Metadata on snapshots.
    SnapshotMetadata,
    /// Snapshots of at least 1 MB.
    LargeSnapshots,
    /// Persistence id queries.
    QueryPersistenceIds,
    /// Events-by-persistence-id queries.
    QueryEventsByPersistenceId,
    /// Events-by-tag queries.
    QueryEventsByTag,
    /// Live queries.
    LiveQueries,
    /// Data that outlives the stores: new stores over the same namespace see it
    /// ([`crate::Ctx::reopen`]).
    Durable,
    /// A declared [`Capabilities::atomic_write_max_events`], to be checked at and above.
    AtomicWriteLimit,
    /// Atomic writes of 5,000 events (no declared maximum, or one of at least 5,000).
    LargeAtomicWrites,
    /// A declared [`Capabilities::max_event_size`], to be checked at and above.
    EventSizeLimit,
    /// Events of 4 MiB (no declared limit, or one of at least 4 MiB).
    LargeEvents,
    /// A declared [`Capabilities::max_snapshot_size`], to be checked at and above.
    SnapshotSizeLimit,
    /// Snapshots of 4 MiB (no declared limit, or one of at least 4 MiB).
    HugeSnapshots,
    /// A projection offset store.
    ProjectionOffsets,
    /// Exactly-once projections: transactions of the offset store.
    ExactlyOnceProjections,
    /// The durable-state store.
    DurableState,
    /// Change queries of the durable-state store.
    DurableStateChanges,
    /// A declared [`Capabilities::max_state_size`], to be checked at and above.
    StateSizeLimit,
    /// States of 1 MB (no declared limit, or one of at least 1 MB).
    LargeStates,
    /// Journal maintenance: scan, rebuild, purge.
    Maintenance,
}

impl Need {
    /// The capability's name if `caps` lacks it.
    pub fn missing(self, caps: &Capabilities) -> Option<&'static str> {
        let (ok, name) = match self {
            Need::MultiEventAtomic => (
                caps.atomic_write_max_events.is_none_or(|m| m >= 2),
                "atomic_write_max_events >= 2",
            ),
            Need::ConflictDetection => (caps.conflict_detection, "conflict_detection"),
            Need::DeleteEvents => (caps.delete_events, "delete_events"),
            Need::Tags => (caps.tags, "tags"),
            Need::EventMetadata => (caps.event_metadata, "event_metadata"),
            Need::Snapshots => (caps.snapshots, "snapshots"),
            Need::SnapshotMetadata => (caps.snapshot_metadata, "snapshot_metadata"),
            Need::LargeSnapshots => (
                caps.snapshots && caps.max_snapshot_size.is_none_or(|m| m >= 1024 * 1024 + 64),
                "max_snapshot_size >= 1 MB",
            ),
            Need::QueryPersistenceIds => (caps.query_persistence_ids, "query_persistence_ids"),
            Need::QueryEventsByPersistenceId => (
                caps.query_events_by_persistence_id,
                "query_events_by_persistence_id",
            ),
            Need::QueryEventsByTag => {
                (caps.query_events_by_tag && caps.tags, "query_events_by_tag")
            }
            Need::LiveQueries => (caps.live_queries, "live_queries"),
            Need::Durable => (caps.durable, "durable"),
            Need::AtomicWriteLimit => (
                caps.atomic_write_max_events.is_some(),
                "a declared atomic_write_max_events",
            ),
            Need::LargeAtomicWrites => (
                caps.atomic_write_max_events
                    .is_none_or(|m| m >= LARGE_ATOMIC_WRITE),
                "atomic_write_max_events >= 5000",
            ),
            Need::EventSizeLimit => (caps.max_event_size.is_some(), "a declared max_event_size"),
            Need::LargeEvents => (
                caps.max_event_size.is_none_or(|m| m >= LARGE_EVENT),
                "max_event_size >= 4 MiB",
            ),
            Need::SnapshotSizeLimit => (
                caps.snapshots && caps.max_snapshot_size.is_some(),
                "a declared max_snapshot_size",
            ),
            Need::HugeSnapshots => (
                caps.snapshots
                    && caps
                        .max_snapshot_size
                        .is_none_or(|m| m >= HUGE_SNAPSHOT + 64),
                "max_snapshot_size >= 4 MiB",
            ),
            Need::ProjectionOffsets => (caps.projection_offsets, "projection_offsets"),
            Need::DurableState => (caps.durable_state, "durable_state"),
            Need::DurableStateChanges => (
                caps.durable_state && caps.durable_state_changes,
                "durable_state_changes",
            ),
            Need::StateSizeLimit => (
                caps.durable_state && caps.max_state_size.is_some(),
                "a declared max_state_size",
            ),
            Need::LargeStates => (
                caps.durable_state && caps.max_state_size.is_none_or(|m| m >= 1024 * 1024 + 64),
                "max_state_size >= 1 MB",
            ),
            Need::Maintenance => (caps.maintenance, "maintenance"),
            Need::ExactlyOnceProjections => (
                caps.projection_offsets && caps.exactly_once_projections,
                "exactly_once_projections",
            ),
        };
        (!ok).then_some(name)
    }
}

/// The events in the atomic write of [`Need::LargeAtomicWrites`].
pub(crate) const LARGE_ATOMIC_WRITE: usize = 5000;
/// The stored size of the event of [`Need::LargeEvents`].
pub(crate) const LARGE_EVENT: usize = 4 * 1024 * 1024;
/// The bytes of the snapshot of [`Need::HugeSnapshots`].
pub(crate) const HUGE_SNAPSHOT: usize = 4 * 1024 * 1024;

/// One named case of the kit.
pub struct Case {
    /// `store::what_it_checks`.
    pub name: &'static str,
    /// What the backend must declare for the case to run.
    pub needs: &'static [Need],
    /// The case itself; it panics (asserts) on failure.
    pub run: fn(Ctx) -> BoxFuture<'static, Finish>,
}

/// How a case that did not fail ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It ran to the end: every check held.
    Passed,
    /// It found out while running that the backend's factory lacks a hook it needs (for
    /// example [`crate::StoreFactory::corrupt_event`]); the text names the hook and why.
    /// Reported as ignored, never as passed.
    Skipped(String),
}

/// What a case function returns: `()` (it ran to the end) or a [`Finish`].
pub(crate) trait IntoFinish {
    fn into_finish(self) -> Finish;
}

impl IntoFinish for () {
    fn into_finish(self) -> Finish {
        Finish::Passed
    }
}

impl IntoFinish for Finish {
    fn into_finish(self) -> Finish {
        self
    }
}

impl Case {
    /// The first capability the backend lacks, if any.
    pub fn missing(&self, caps: &Capabilities) -> Option<String> {
        let missing: Vec<&str> = self.needs.iter().filter_map(|n| n.missing(caps)).collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// Declares cases: `cases![name => [needs], fn_name; ...]`.
macro_rules! cases {
    ($($name:literal => [$($need:ident),*] $f:path;)*) => {
        vec![$(crate::cases::Case {
            name: $name,
            needs: &[$(crate::cases::Need::$need),*],
            run: |ctx| Box::pin(async move {
                crate::cases::IntoFinish::into_finish($f(ctx).await)
            }),
        }),*]
    };
}
pub(crate) use cases;

/// Every case of the kit, in order.
pub fn all_cases() -> Vec<Case> {
    let mut all = journal::cases();
    all.extend(snapshot::cases());
    all.extend(query::cases());
    all.extend(durability::cases());
    all.extend(concurrency::cases());
    all.extend(group_commit::cases());
    all.extend(bad_input::cases());
    all.extend(deletes::cases());
    all.extend(paging::cases());
    all.extend(corruption::cases());
    all.extend(offsets::cases());
    all.extend(durable_state::cases());
    all.extend(projection::cases());
    all.extend(maintenance::cases());
    all
}
