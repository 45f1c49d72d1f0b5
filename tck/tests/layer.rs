//! The checking layer's own cases (`layer::*`), over the in-memory backend: what the layer
//! answers by itself and what a backend is never asked.

use std::process::ExitCode;

use persistence_api::{Result, Stores};
use persistence_memory::{Memory, MemoryConfig};

struct Factory;

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, _namespace: &str) -> Result<Stores> {
        Ok(Memory::new(MemoryConfig::default()).stores())
    }
}

fn main() -> ExitCode {
    persistence_tck::run_layer_main("layer", || async { Ok(Factory) })
}
