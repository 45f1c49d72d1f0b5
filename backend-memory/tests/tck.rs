//! The whole conformance kit against the in-memory backend; every case runs, none is skipped.

use std::process::ExitCode;

use backend_memory::{MemoryBackend, MemoryConfig};
use persistence_api::{Result, Stores};

struct Factory;

#[persistence_api::async_trait]
impl tck::StoreFactory for Factory {
    async fn create(&self, _namespace: &str) -> Result<Stores> {
        // A fresh backend per case is the memory driver's namespace.
        Ok(MemoryBackend::new(MemoryConfig::default()).stores())
    }

    fn page_size(&self) -> Option<usize> {
        Some(MemoryConfig::default().page_size)
    }
}

fn main() -> ExitCode {
    tck::run_main("memory", || async { Ok(Factory) })
}
