#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod id;
mod offset_store;
mod runner;

pub use id::{ProjectionId, MAX_PROJECTION_ID_PART_BYTES};
pub use offset_store::{version_conflict, MemoryOffsetStore, OffsetStore, StoredOffset};
pub use runner::{
    Delivery, Handler, OnFailure, Projection, ProjectionSettings, ProjectionStatus, Source,
};
