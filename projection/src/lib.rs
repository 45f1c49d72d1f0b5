#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod runner;

pub use persistence_api::{
    OffsetStore, ProjectionId, StoreTransaction, StoredOffset, MAX_PROJECTION_ID_PART_BYTES,
};
pub use runner::{
    Delivery, Handler, OnFailure, Projection, ProjectionSettings, ProjectionStatus, Source,
};
