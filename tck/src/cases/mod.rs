//! The cases, by store: `journal::*`, `snapshot::*`, `query::*`.

use futures::future::BoxFuture;
use persistence_api::Capabilities;

use crate::context::Ctx;

mod journal;
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
        };
        (!ok).then_some(name)
    }
}

/// One named case of the kit.
pub struct Case {
    /// `store::what_it_checks`.
    pub name: &'static str,
    /// What the backend must declare for the case to run.
    pub needs: &'static [Need],
    /// The case itself; it panics (asserts) on failure.
    pub run: fn(Ctx) -> BoxFuture<'static, ()>,
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
            run: |ctx| Box::pin($f(ctx)),
        }),*]
    };
}
pub(crate) use cases;

/// Every case of the kit, in order.
pub fn all_cases() -> Vec<Case> {
    let mut all = journal::cases();
    all.extend(snapshot::cases());
    all.extend(query::cases());
    all
}
