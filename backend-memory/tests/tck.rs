//! The whole conformance kit against the in-memory backend. Every case runs except the
//! corruption cases of columns other than the payload: the store holds typed events, so
//! their tags, metadata and manifests cannot be unreadable (those cases report so).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Mutex;

use persistence_api::{Error, PersistenceId, Result, SequenceNr, Stores};
use persistence_memory::{Memory, MemoryConfig};
use persistence_tck::Corruption;

/// Bytes no codec wrote: CBOR "break" codes out of place.
const GARBAGE: [u8; 8] = [0xff; 8];

#[derive(Default)]
struct Factory {
    /// The backend of each namespace, for the corruption hooks.
    backends: Mutex<HashMap<String, Memory>>,
}

impl Factory {
    fn backend(&self, namespace: &str) -> Result<Memory> {
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        backends
            .get(namespace)
            .cloned()
            .ok_or_else(|| Error::invalid_input(format!("no stores for namespace {namespace}")))
    }
}

fn typed(what: Corruption) -> Error {
    Error::unsupported(format!(
        "the in-memory store holds typed events, so only a payload's bytes can be unreadable, not {what:?}"
    ))
}

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        // A fresh backend per case is the memory driver's namespace (and a reopen is a new,
        // empty process: the backend does not declare `durable`).
        let backend = Memory::new(MemoryConfig::default());
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(namespace.to_owned(), backend.clone());
        Ok(backend.stores())
    }

    async fn cleanup(&self, namespace: &str) -> Result<()> {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(namespace);
        Ok(())
    }

    async fn corrupt_event(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        match what {
            Corruption::Payload => {
                self.backend(namespace)?.overwrite_stored_payload(
                    persistence_id,
                    sequence_nr,
                    GARBAGE.to_vec(),
                )?;
                Ok("payload".into())
            }
            other => Err(typed(other)),
        }
    }

    async fn corrupt_snapshot(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        match what {
            Corruption::Payload => {
                self.backend(namespace)?.overwrite_stored_snapshot(
                    persistence_id,
                    sequence_nr,
                    GARBAGE.to_vec(),
                )?;
                Ok("snapshot".into())
            }
            other => Err(typed(other)),
        }
    }

    fn page_size(&self) -> Option<u32> {
        Some(MemoryConfig::default().page_size)
    }
}

fn main() -> ExitCode {
    persistence_tck::run_main("memory", || async { Ok(Factory::default()) })
}
