//! Every backend case against the in-memory backend behind a [`persistence_tck::layer::Recorder`] that
//! declares limits memory does not have: at most 10 events per atomic write, events of at
//! most 64 KiB and snapshots of at most 256 KiB. The cases at and above a declared maximum
//! (`journal::atomic_write_at_declared_maximum`, `..._above_...`, the size-limit cases of
//! events and snapshots) run here on every `cargo test`, and every other case must still
//! pass within those limits; the ones that need more are skipped by name.

use std::process::ExitCode;

use persistence_api::{Capabilities, Result, Stores};
use persistence_memory::{Memory, MemoryConfig};

/// The limits this run declares, each below what memory itself declares.
const ATOMIC_WRITE_MAX_EVENTS: usize = 10;
const MAX_EVENT_SIZE: usize = 64 * 1024;
const MAX_SNAPSHOT_SIZE: usize = 256 * 1024;
const MAX_STATE_SIZE: usize = 64 * 1024;

fn below(own: Option<usize>, declared: usize, what: &str) -> Option<usize> {
    assert!(
        own.is_none_or(|m| m > declared),
        "the in-memory backend declares {what} = {own:?}, not above the {declared} this run declares"
    );
    Some(declared)
}

struct Factory;

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, _namespace: &str) -> Result<Stores> {
        let memory = Memory::new(MemoryConfig::default()).stores();
        let own = memory.capabilities();
        let declared = Capabilities {
            atomic_write_max_events: below(
                own.atomic_write_max_events,
                ATOMIC_WRITE_MAX_EVENTS,
                "atomic_write_max_events",
            ),
            max_event_size: below(own.max_event_size, MAX_EVENT_SIZE, "max_event_size"),
            max_snapshot_size: below(
                own.max_snapshot_size,
                MAX_SNAPSHOT_SIZE,
                "max_snapshot_size",
            ),
            max_state_size: below(own.max_state_size, MAX_STATE_SIZE, "max_state_size"),
            // The in-memory store's transactions name the "memory" backend, and these
            // stores are the "recorder"'s: the checking layer refuses to mix them.
            exactly_once_projections: false,
            ..own
        };
        Ok(persistence_tck::layer::Recorder::wrap(memory, declared).0)
    }

    fn page_size(&self) -> Option<u32> {
        Some(MemoryConfig::default().page_size)
    }
}

fn main() -> ExitCode {
    persistence_tck::run_main("memory-with-declared-limits", || async { Ok(Factory) })
}
