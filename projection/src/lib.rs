#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod handler;
mod runner;
mod source;

pub use handler::{
    idempotency_key, ExactlyOnceHandler, Grouped, GroupedHandler, Handler, PerEnvelope, Process,
    Transactional, Typed, TypedExactlyOnceHandler, TypedHandler,
};
pub use persistence_api::{
    OffsetStore, ProjectionId, StoreTransaction, StoredOffset, MAX_PROJECTION_ID_PART_BYTES,
};
pub use runner::{
    Delivery, Lag, OnFailure, Projection, ProjectionBuilder, ProjectionHandle, ProjectionSettings,
    ProjectionState, ProjectionStatus, RestartSettings,
};
pub use source::{ChangeSource, Envelope, Source, SourceProvider, SourceStores, SourceStream};
