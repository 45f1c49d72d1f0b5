#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod capabilities;
mod codec;
mod durable_entity;
mod durable_state;
pub mod duration_ms;
mod entity;
mod error;
mod maintenance;
pub mod metrics;
mod offsets;
pub mod replay_filter;
mod stores;
mod traits;
mod types;

pub use capabilities::Capabilities;
pub use codec::{from_cbor, to_cbor, CborCodec, Codec, Upcaster, CBOR_SERIALIZER_ID};
pub use durable_entity::{DurableEntity, DurableStateful, Versioned};
pub use durable_state::{
    revision_conflict, ChangeStream, DurableState, DurableStateChange, DurableStateStore,
    DurableStateStoreExt, NoDurableStateStore, Revision,
};
pub use entity::{Entity, EntityConfig, EventSourced, RecoveryInfo};
pub use error::{Error, ErrorKind, Result};
pub use maintenance::{JournalMaintenance, NoMaintenance, PurgeReport, RebuildReport};
pub use offsets::{
    version_conflict, NoOffsetStore, OffsetStore, ProjectionId, StoreTransaction, StoredOffset,
    MAX_PROJECTION_ID_PART_BYTES,
};
pub use replay_filter::{ReplayFilter, ReplayFilterMode};
pub use stores::{Health, ShutdownReport, Stores, HEALTH_PROBE_ID};
pub use traits::{
    EnvelopeStream, EventStream, Journal, JournalExt, PersistenceIdStream, QueryMode, ReadJournal,
    ReadJournalExt, Replay, SnapshotStore,
};
pub use types::{
    AtomicWrite, EventEnvelope, Offset, Payload, PersistenceId, PersistentEvent, SelectedSnapshot,
    SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Timestamp, MAX_PERSISTENCE_ID_BYTES,
};

/// Re-exported so backends and users name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
/// The CBOR library, for writing upcasters over `ciborium::Value`.
pub use ciborium;
pub use futures;
