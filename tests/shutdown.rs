//! `Stores::shutdown` under a stream of writes on the memory backend: every write is
//! either acknowledged and stored or refused and absent, a write in flight gets its true
//! result however short the deadline, and live queries end.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{
    async_trait, AtomicWrite, ErrorKind, Journal, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, ProjectionId, QueryMode, ReadJournalExt, Replay, Result, SequenceNr,
    SnapshotMetadata, Stores,
};

fn id(s: &str) -> PersistenceId {
    PersistenceId::new(s).unwrap()
}

fn event(pid: &str, seq: u64) -> AtomicWrite {
    AtomicWrite::single(
        PersistentEvent::new(id(pid), seq, Payload::new("test", "E", vec![1u8; 8]))
            .with_tags(["all"]),
    )
    .unwrap()
}

fn assert_refused(err: &persistence_stores::Error, operation: &str) {
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.backend(), Some("memory"), "{err}");
    assert_eq!(err.operation(), Some(operation), "{err}");
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_write_stream_every_write_is_stored_or_refused_and_absent() {
    let stores = Memory::new(MemoryConfig::default()).stores();
    // A live query, ended by the shutdown.
    let live = tokio::spawn({
        let stores = stores.clone();
        async move {
            stores
                .read_journal
                .events_by_tag("all".into(), Offset::NoOffset)
                .count()
                .await
        }
    });
    // Eight writers, each writing its own id one event at a time until refused.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let stores = stores.clone();
            tokio::spawn(async move {
                let pid = format!("writer-{w}");
                let mut acknowledged = Vec::new();
                for seq in 1.. {
                    match stores.journal.write(event(&pid, seq)).await {
                        Ok(()) => acknowledged.push(seq),
                        Err(e) => {
                            assert_refused(&e, "write_events");
                            return (pid, acknowledged, seq);
                        }
                    }
                    if seq % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                unreachable!()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = stores
        .clone()
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.finished, "{report:?}");
    assert_eq!(report.still_in_flight, 0);
    assert_eq!(report.backend, "memory");
    assert!(stores.is_shut_down());

    let mut total = 0;
    for writer in writers {
        let (pid, acknowledged, refused) = writer.await.unwrap();
        assert!(
            !acknowledged.is_empty(),
            "{pid} wrote nothing before the shutdown"
        );
        // Reads go on: exactly the acknowledged events are stored, the refused one is not.
        let stored: Vec<u64> = stores
            .journal
            .replay_all(&id(&pid))
            .await
            .unwrap()
            .iter()
            .map(|e| e.sequence_nr)
            .collect();
        assert_eq!(stored, acknowledged, "{pid}");
        assert_eq!(
            stores.journal.highest_sequence_nr(&id(&pid)).await.unwrap(),
            refused - 1
        );
        total += acknowledged.len();
    }
    // The live query completed on its own; it delivered at most what was stored.
    let delivered = tokio::time::timeout(Duration::from_secs(5), live)
        .await
        .expect("the live query ends at the shutdown")
        .unwrap();
    assert!(delivered <= total, "{delivered} > {total}");
    // A live query started now completes at once; a current one runs to its end.
    let later = tokio::time::timeout(
        Duration::from_secs(5),
        stores
            .read_journal
            .events_by_tag("all".into(), Offset::NoOffset)
            .count(),
    )
    .await
    .expect("a live query started after the shutdown completes");
    assert!(later <= total);
    let current = stores
        .read_journal
        .current_events_by_tag("all".into(), Offset::NoOffset)
        .count()
        .await;
    assert_eq!(current, total);
}

#[tokio::test]
async fn every_kind_of_write_is_refused_and_reads_go_on() {
    let stores = Memory::new(MemoryConfig::default()).stores();
    stores.journal.write(event("a", 1)).await.unwrap();
    let changes = tokio::spawn({
        let stores = stores.clone();
        async move {
            stores
                .durable_state
                .query_changes("t".into(), Offset::NoOffset, QueryMode::Live)
                .count()
                .await
        }
    });
    let report = stores.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!((report.in_flight, report.finished), (0, true));
    // The durable-state store's live change query ends too.
    let delivered = tokio::time::timeout(Duration::from_secs(5), changes)
        .await
        .expect("the live change query ends at the shutdown")
        .unwrap();
    assert_eq!(delivered, 0);

    let a = id("a");
    assert_refused(
        &stores.journal.write(event("a", 2)).await.unwrap_err(),
        "write_events",
    );
    assert_refused(
        &stores.journal.delete_events_to(&a, 1).await.unwrap_err(),
        "delete_events_to",
    );
    assert_refused(
        &stores
            .snapshots
            .save_snapshot(
                SnapshotMetadata::new(a.clone(), 1),
                Payload::new("t", "S", "x"),
            )
            .await
            .unwrap_err(),
        "save_snapshot",
    );
    let projection = ProjectionId::new("p", "k").unwrap();
    assert_refused(
        &stores
            .offsets
            .set_offset(&projection, Offset::Sequence(1))
            .await
            .unwrap_err(),
        "set_offset",
    );
    assert_refused(
        &stores
            .durable_state
            .upsert(&a, 1, Payload::new("t", "S", "x"), None)
            .await
            .unwrap_err(),
        "upsert_state",
    );
    assert_refused(
        &stores
            .maintenance
            .purge_persistence_id(&a)
            .await
            .unwrap_err(),
        "purge_persistence_id",
    );
    // Nothing of them was stored; reads go on.
    assert_eq!(stores.journal.replay_all(&a).await.unwrap().len(), 1);
    assert!(stores.durable_state.get(&a).await.unwrap().is_none());
    assert!(stores
        .offsets
        .read_offset(&projection)
        .await
        .unwrap()
        .is_none());
    stores.health(Duration::from_secs(1)).await.unwrap();
}

/// A journal whose writes take `delay`.
struct Slow {
    inner: Memory,
    delay: Duration,
}

#[async_trait]
impl Journal for Slow {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        tokio::time::sleep(self.delay).await;
        self.inner.write_events(writes).await
    }
    async fn replay(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        self.inner.replay(id, from, to, max).await
    }
    async fn highest_sequence_nr(&self, id: &PersistenceId) -> Result<SequenceNr> {
        self.inner.highest_sequence_nr(id).await
    }
    async fn delete_events_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.inner.delete_events_to(id, to).await
    }
}

fn slow(delay: Duration) -> Stores {
    let memory = Memory::new(MemoryConfig::default());
    Stores::new(
        "memory",
        memory.capabilities(),
        Arc::new(Slow {
            inner: memory.clone(),
            delay,
        }),
        Arc::new(memory.clone()),
        Arc::new(memory),
    )
}

#[tokio::test]
async fn a_write_in_flight_finishes_within_the_deadline() {
    let stores = slow(Duration::from_millis(200));
    let write = tokio::spawn({
        let stores = stores.clone();
        async move { stores.journal.write(event("a", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = stores.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.in_flight, report.finished), (1, true), "{report:?}");
    write.await.unwrap().unwrap();
    assert_eq!(stores.journal.replay_all(&id("a")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_write_outlasting_the_deadline_is_not_cancelled() {
    let stores = slow(Duration::from_millis(500));
    let write = tokio::spawn({
        let stores = stores.clone();
        async move { stores.journal.write(event("a", 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = stores.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(
        (report.in_flight, report.finished, report.still_in_flight),
        (1, false, 1),
        "{report:?}"
    );
    // The caller still gets its true result, and the event is stored.
    write.await.unwrap().unwrap();
    assert_eq!(stores.journal.replay_all(&id("a")).await.unwrap().len(), 1);
    let again = stores.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!((again.in_flight, again.finished), (0, true));
}

/// A live query outlives the `Stores` it came from: dropping every handle is not a
/// shutdown (the stream ended at once when the layer's shared state was dropped).
#[tokio::test]
async fn a_live_query_outlives_the_stores_handle_it_came_from() {
    let memory = Memory::new(MemoryConfig::default());
    let mut live = memory
        .stores()
        .read_journal
        .events_by_tag("all".into(), Offset::NoOffset);
    memory.stores().journal.write(event("a", 1)).await.unwrap();
    let env = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("delivered while the stream is read")
        .expect("the live query goes on")
        .unwrap();
    assert_eq!(env.event.persistence_id.as_str(), "a");
}
