//! tests/tck.rs of a third-party backend crate (Cargo.toml: [[test]] name = "tck", harness = false).
//! Here the "backend" is the in-memory store configured with DynamoDB's limits.
use std::process::ExitCode;

use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{Result, Stores};

struct MyFactory;

#[persistence_stores::async_trait]
impl persistence_tck::StoreFactory for MyFactory {
    async fn create(&self, _namespace: &str) -> Result<Stores> {
        // Build stores that see nothing of other namespaces: a journal name, table prefix,
        // schema or keyspace derived from `namespace`. A fresh in-memory store is one.
        let config = MemoryConfig {
            atomic_write_max_events: Some(100),
            max_event_size: Some(400 * 1024 - 2048),
            ..MemoryConfig::default()
        };
        Ok(Memory::new(config).stores())
    }
}

fn main() -> ExitCode {
    persistence_tck::run_main("my-backend", || async { Ok(MyFactory) })
}
