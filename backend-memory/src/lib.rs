#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
mod core;
mod durable_state;
mod journal;
mod maintenance;
mod offsets;
mod query;
mod snapshot;

use std::sync::Arc;

use persistence_api::{Capabilities, Result, Stores};

pub use config::MemoryConfig;
pub use durable_state::MemoryDurableStateStore;
pub use offsets::{MemoryEffect, MemoryOffsetStore, MemoryTransaction};

/// The stores of a fresh, empty in-memory backend with the default settings: the one-line
/// swap for tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_api::Result<()> {
/// use persistence_api::{AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent};
/// let stores = persistence_memory::stores();
/// let id = PersistenceId::new("account-1")?;
/// stores.journal.write(AtomicWrite::single(PersistentEvent::new(id.clone(), 1, Payload::raw(b"opened".to_vec())))?).await?;
/// assert_eq!(stores.journal.highest_sequence_nr(&id).await?, 1);
/// # Ok(()) }
/// ```
pub fn stores() -> Stores {
    Memory::new(MemoryConfig::default()).stores()
}

/// Opens a fresh, empty in-memory store with `config`: the one-call entry point every
/// backend has (`persistence_<backend>::open(config)`). Sends no request (there is no
/// server) and has no schema to create. An invalid `config` is an
/// `ErrorKind::ConfigInvalid` error ([`MemoryConfig::validate`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_api::Result<()> {
/// let stores = persistence_memory::open(persistence_memory::MemoryConfig::default()).await?;
/// assert_eq!(stores.backend(), "memory");
/// # Ok(()) }
/// ```
pub async fn open(config: MemoryConfig) -> Result<Stores> {
    Ok(Memory::open(config).await?.stores())
}

/// An in-memory journal, snapshot store and read journal sharing one state. Clones share it.
#[derive(Clone)]
pub struct Memory {
    shared: Arc<crate::core::Shared>,
    offsets: Arc<MemoryOffsetStore>,
    durable_state: MemoryDurableStateStore,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "memory";

    /// A fresh, empty backend. Does not check `config` ([`Memory::open`] does); a
    /// `page_size` of 0 is taken as 1.
    pub fn new(config: MemoryConfig) -> Self {
        Memory {
            shared: Arc::new(crate::core::Shared::new(config)),
            offsets: Arc::new(MemoryOffsetStore::new()),
            durable_state: MemoryDurableStateStore::new(),
        }
    }

    /// A fresh, empty store with `config`, as a handle ([`open`] gives its [`Stores`]).
    /// Checks `config` first ([`MemoryConfig::validate`]): an invalid one is an
    /// `ErrorKind::ConfigInvalid` error naming the key.
    pub async fn open(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Memory::new(config))
    }

    /// What this backend declares: its configured limits, everything else supported,
    /// not durable.
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.shared.config;
        Capabilities {
            atomic_write_max_events: c.atomic_write_max_events,
            max_event_size: c.max_event_size,
            max_snapshot_size: c.max_snapshot_size,
            durable: false,
            live_query_max_delay: Some(std::time::Duration::from_millis(10)),
            ..Capabilities::all()
        }
    }

    /// This backend's stores behind the checking layer: journal, snapshots, read journal,
    /// journal maintenance, projection offsets ([`MemoryOffsetStore`]) and durable state
    /// ([`MemoryDurableStateStore`]).
    pub fn stores(&self) -> Stores {
        Stores::new(
            Self::NAME,
            self.capabilities(),
            Arc::new(self.clone()),
            Arc::new(self.clone()),
            Arc::new(self.clone()),
        )
        .with_offset_store(self.offsets.clone())
        .with_durable_state_store(Arc::new(self.durable_state.clone()))
        .with_maintenance(Arc::new(self.clone()))
    }
}
