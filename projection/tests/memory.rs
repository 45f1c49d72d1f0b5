//! Projections over the in-memory journal and offset store: offsets resume exactly, a
//! second instance is refused, failures stop or skip, commits are grouped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use persistence_api::{
    AtomicWrite, ErrorKind, EventEnvelope, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, QueryMode, Result, Stores,
};
use persistence_memory::MemoryOffsetStore;
use persistence_projection::{
    Delivery, Handler, OffsetStore, OnFailure, Projection, ProjectionId, ProjectionSettings, Source,
};

/// Records what it handled; fails on the sequence numbers in `fail_on` (every attempt).
#[derive(Default)]
struct Recorder {
    seen: Vec<(String, u64)>,
    fail_on: HashSet<u64>,
    attempts: u64,
}

#[persistence_api::async_trait]
impl Handler for Recorder {
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
        self.attempts += 1;
        if self.fail_on.contains(&envelope.sequence_nr()) {
            return Err(persistence_api::Error::new(
                ErrorKind::Unavailable,
                "the read model is down",
            ));
        }
        self.seen.push((
            envelope.persistence_id().as_str().to_owned(),
            envelope.sequence_nr(),
        ));
        Ok(())
    }
}

async fn write(stores: &Stores, id: &str, from: u64, to: u64) {
    let pid = PersistenceId::new(id).unwrap();
    let events = (from..=to)
        .map(|s| {
            PersistentEvent::new(
                pid.clone(),
                s,
                Payload::raw(format!("{id}#{s}").into_bytes()),
            )
            .with_tags(["t"])
        })
        .collect();
    stores
        .journal
        .write(AtomicWrite::new(events).unwrap())
        .await
        .unwrap();
}

fn by_tag(mode: QueryMode) -> Source {
    Source::EventsByTag {
        tag: "t".into(),
        mode,
    }
}

fn settings(delivery: Delivery, on_failure: OnFailure) -> ProjectionSettings {
    ProjectionSettings {
        delivery,
        handler_retries: 2,
        retry_backoff: Duration::from_millis(1),
        retry_max_backoff: Duration::from_millis(4),
        on_failure,
    }
}

fn every(n: usize) -> Delivery {
    Delivery::AtLeastOnce {
        commit_every: n,
        commit_interval: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn a_restarted_projection_resumes_after_the_last_committed_envelope() {
    let stores = persistence_memory::stores();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let id = ProjectionId::new("p", "t").unwrap();
    write(&stores, "a", 1, 3).await;
    write(&stores, "b", 1, 2).await;
    let run = |handler: Recorder| {
        Projection::new(
            id.clone(),
            by_tag(QueryMode::Current),
            stores.read_journal.clone(),
            offsets.clone(),
            handler,
        )
        .with_settings(settings(every(2), OnFailure::Stop))
        .run_returning_handler(std::future::pending())
    };
    let (status, first) = run(Recorder::default()).await.unwrap();
    assert_eq!(first.seen.len(), 5);
    assert_eq!(status.handled, 5);
    // Every 2 envelopes, and the fifth when the source completed.
    assert_eq!(status.commits, 3);
    write(&stores, "a", 4, 5).await;
    let (status, second) = run(Recorder::default()).await.unwrap();
    assert_eq!(
        second.seen,
        vec![("a".to_string(), 4), ("a".to_string(), 5)],
        "only the new events, none repeated"
    );
    assert_eq!(status.handled, 2);
    let stored = offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 4);
}

#[tokio::test]
async fn a_second_instance_is_refused_with_a_conflict_and_commits_nothing() {
    let offsets = MemoryOffsetStore::new();
    let id = ProjectionId::new("p", "k").unwrap();
    let v1 = offsets
        .commit_offset(&id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    assert_eq!(v1, 1);
    // Both instances read version 1; the first commits, the second is refused.
    offsets
        .commit_offset(&id, 1, Offset::Sequence(5))
        .await
        .unwrap();
    let err = offsets
        .commit_offset(&id, 1, Offset::Sequence(3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("p/k"), "{err}");
    assert_eq!(
        offsets.read_offset(&id).await.unwrap().unwrap().offset,
        Offset::Sequence(5)
    );
    // Clearing also moves the version on.
    offsets.clear_offset(&id).await.unwrap();
    let cleared = offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!((cleared.offset, cleared.version), (Offset::NoOffset, 3));
    assert_eq!(
        offsets
            .commit_offset(&id, 2, Offset::Sequence(9))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
}

#[tokio::test]
async fn two_running_instances_never_both_commit() {
    let stores = persistence_memory::stores();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let id = ProjectionId::new("p", "t").unwrap();
    write(&stores, "a", 1, 4).await;
    // The first instance commits after every envelope of a live source and runs on.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let first = Projection::new(
        id.clone(),
        by_tag(QueryMode::Live),
        stores.read_journal.clone(),
        offsets.clone(),
        Recorder::default(),
    )
    .with_settings(settings(every(1), OnFailure::Stop));
    let first_status = first.status();
    let first = tokio::spawn(first.run(async {
        let _ = stop_rx.await;
    }));
    while first_status.lock().unwrap().handled < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A second instance starts from what the first committed and commits the next event.
    write(&stores, "b", 1, 1).await;
    let second = Projection::new(
        id.clone(),
        by_tag(QueryMode::Current),
        stores.read_journal.clone(),
        offsets.clone(),
        Recorder::default(),
    )
    .with_settings(settings(every(1), OnFailure::Stop));
    let second_result = second.run(std::future::pending()).await;
    // The first instance handles that event too (it reads the tag live), and commits it
    // over the version it read, unless it was refused already.
    while first_status.lock().unwrap().handled < 5 && !first.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(());
    let first_result = first.await.unwrap();
    // Whichever committed over the other's version was refused with a Conflict.
    let conflicts = [&first_result, &second_result]
        .iter()
        .filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::Conflict))
        .count();
    assert_eq!(
        conflicts, 1,
        "exactly one instance is refused: {first_result:?} / {second_result:?}"
    );
}

#[tokio::test]
async fn a_failing_handler_stops_after_its_retries_and_the_offset_stays_before_it() {
    let stores = persistence_memory::stores();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let id = ProjectionId::new("p", "a").unwrap();
    write(&stores, "a", 1, 5).await;
    let source = Source::EventsByPersistenceId {
        persistence_id: PersistenceId::new("a").unwrap(),
        mode: QueryMode::Current,
    };
    let failing = Recorder {
        fail_on: HashSet::from([3]),
        ..Recorder::default()
    };
    let err = Projection::new(
        id.clone(),
        source.clone(),
        stores.read_journal.clone(),
        offsets.clone(),
        failing,
    )
    .with_settings(settings(every(10), OnFailure::Stop))
    .run(std::future::pending())
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(err.persistence_id(), Some("a"), "{err}");
    assert_eq!(err.sequence_range(), Some((3, 3)), "{err}");
    // Events 1 and 2 were handled and committed when it stopped; 3 was not.
    assert_eq!(
        offsets.read_offset(&id).await.unwrap().unwrap().offset,
        Offset::Sequence(2)
    );
    // Skipping instead: 3 is skipped (after its retries), 4 and 5 are handled.
    let skipping = Recorder {
        fail_on: HashSet::from([3]),
        ..Recorder::default()
    };
    let (status, handler) = Projection::new(
        id.clone(),
        source,
        stores.read_journal.clone(),
        offsets.clone(),
        skipping,
    )
    .with_settings(settings(every(10), OnFailure::Skip))
    .run_returning_handler(std::future::pending())
    .await
    .unwrap();
    assert_eq!(
        handler.attempts,
        1 + 2 + 2,
        "3 tried once and retried twice"
    );
    assert_eq!(
        handler.seen,
        vec![("a".to_string(), 4), ("a".to_string(), 5)]
    );
    assert_eq!((status.handled, status.skipped), (2, 1));
    assert_eq!(
        offsets.read_offset(&id).await.unwrap().unwrap().offset,
        Offset::Sequence(5)
    );
}

#[tokio::test]
async fn at_most_once_commits_before_handling() {
    let stores = persistence_memory::stores();
    let offsets: Arc<dyn OffsetStore> = Arc::new(MemoryOffsetStore::new());
    let id = ProjectionId::new("p", "t").unwrap();
    write(&stores, "a", 1, 3).await;
    let failing = Recorder {
        fail_on: HashSet::from([2]),
        ..Recorder::default()
    };
    let err = Projection::new(
        id.clone(),
        by_tag(QueryMode::Current),
        stores.read_journal.clone(),
        offsets.clone(),
        failing,
    )
    .with_settings(settings(Delivery::AtMostOnce, OnFailure::Stop))
    .run(std::future::pending())
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    // Event 2's offset was committed before its handler failed: a restart goes on at 3.
    let (_, handler) = Projection::new(
        id.clone(),
        by_tag(QueryMode::Current),
        stores.read_journal.clone(),
        offsets.clone(),
        Recorder::default(),
    )
    .with_settings(settings(Delivery::AtMostOnce, OnFailure::Stop))
    .run_returning_handler(std::future::pending())
    .await
    .unwrap();
    assert_eq!(handler.seen, vec![("a".to_string(), 3)]);
}

#[tokio::test]
async fn an_offset_of_the_wrong_kind_for_the_source_is_invalid_input() {
    let stores = persistence_memory::stores();
    let source = Source::EventsByPersistenceId {
        persistence_id: PersistenceId::new("a").unwrap(),
        mode: QueryMode::Current,
    };
    let err = match source.open(
        stores.read_journal.as_ref(),
        Offset::Token("b17:0003".into()),
    ) {
        Ok(_) => panic!("a token offset cannot resume a by-id source"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("token:b17:0003"), "{err}");
}
