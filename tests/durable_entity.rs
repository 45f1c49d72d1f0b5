//! The typed durable-state layer over the in-memory store: update reads, applies and
//! writes at the next revision; a concurrent writer makes it a `Conflict`; the retry helper
//! gets every racing increment in; delete keeps the revision counting.

use std::sync::Arc;

use persistence_stores::{
    DurableEntity, DurableStateful, ErrorKind, Payload, PersistenceId, Versioned,
};
use serde::{Deserialize, Serialize};

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

impl DurableStateful for Counter {
    const TYPE_NAME: &'static str = "test.Counter";
    fn tag(&self) -> Option<String> {
        Some("counters".into())
    }
}

fn add(state: Option<&Counter>) -> persistence_stores::Result<Counter> {
    Ok(Counter {
        n: state.map_or(0, |c| c.n) + 1,
    })
}

#[tokio::test]
async fn update_writes_the_next_revision_and_a_stale_writer_conflicts() {
    let stores = persistence_stores::memory::stores();
    let id = PersistenceId::new("counter-1").unwrap();
    let entity = DurableEntity::<Counter>::new(&stores, id.clone());
    assert_eq!(
        entity.get().await.unwrap(),
        Versioned {
            revision: 0,
            state: None
        }
    );
    assert_eq!(entity.update(add).await.unwrap().revision, 1);
    assert_eq!(
        entity.update(add).await.unwrap(),
        Versioned {
            revision: 2,
            state: Some(Counter { n: 2 })
        }
    );
    let stored = stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!(stored.tag.as_deref(), Some("counters"));
    // A change that fails writes nothing.
    let err = entity
        .update(|_| Err(persistence_stores::Error::invalid_input("no")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(entity.get().await.unwrap().revision, 2);
    // Another writer between the read and the write: Conflict, nothing written.
    let other = DurableEntity::<Counter>::new(&stores, id.clone());
    let err = entity
        .update(|state| {
            let next = add(state);
            // The other writer wins the revision meanwhile (synchronously, on the store).
            std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap()
                        .block_on(other.update(add))
                        .unwrap()
                });
            });
            next
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    assert_eq!(entity.get().await.unwrap().state, Some(Counter { n: 3 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_get_every_racing_increment_in() {
    let stores = persistence_stores::memory::stores();
    let id = PersistenceId::new("counter-race").unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let entity = Arc::new(DurableEntity::<Counter>::new(&stores, id.clone()));
            tokio::spawn(async move { entity.update_with_retries(100, add).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entity = DurableEntity::<Counter>::new(&stores, id);
    assert_eq!(
        entity.get().await.unwrap(),
        Versioned {
            revision: 16,
            state: Some(Counter { n: 16 })
        }
    );
}

#[tokio::test]
async fn delete_keeps_counting_and_bad_bytes_are_a_serialization_error() {
    let stores = persistence_stores::memory::stores();
    let id = PersistenceId::new("counter-del").unwrap();
    let entity = DurableEntity::<Counter>::new(&stores, id.clone());
    entity.update(add).await.unwrap();
    assert_eq!(entity.delete().await.unwrap(), 2);
    assert_eq!(
        entity.get().await.unwrap(),
        Versioned {
            revision: 2,
            state: None
        }
    );
    assert_eq!(
        entity.update(add).await.unwrap(),
        Versioned {
            revision: 3,
            state: Some(Counter { n: 1 })
        }
    );
    stores
        .durable_state
        .upsert(
            &id,
            4,
            Payload::new("cbor", "test.Counter/v1", vec![0xff, 0x00]),
            None,
        )
        .await
        .unwrap();
    let err = entity.get().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err:#}");
    assert_eq!(err.persistence_id(), Some("counter-del"));
}
