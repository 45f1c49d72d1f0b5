//! The checking layer and the kit's capability-based selection, on a backend that declares
//! less than it could: the in-memory store behind a wrapper that turns capabilities off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{
    async_trait, AtomicWrite, Capabilities, EnvelopeStream, ErrorKind, Journal, JournalExt, Offset,
    Payload, PersistenceId, PersistenceIdStream, PersistentEvent, QueryMode, ReadJournal,
    ReadJournalExt, Replay, Result, SequenceNr, SnapshotStore, Stores,
};

/// Delegates to memory, declares `caps`, and counts the calls that reach it.
struct Reduced {
    inner: Memory,
    calls: Arc<AtomicUsize>,
}

impl Reduced {
    fn seen(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Journal for Reduced {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        self.seen();
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
        self.seen();
        self.inner.delete_events_to(id, to).await
    }
}

#[async_trait]
impl SnapshotStore for Reduced {
    async fn save_snapshot(
        &self,
        m: persistence_stores::SnapshotMetadata,
        p: Payload,
    ) -> Result<()> {
        self.seen();
        self.inner.save_snapshot(m, p).await
    }
    async fn load_snapshot(
        &self,
        id: &PersistenceId,
        c: persistence_stores::SnapshotSelectionCriteria,
    ) -> Result<Option<persistence_stores::SelectedSnapshot>> {
        self.seen();
        self.inner.load_snapshot(id, c).await
    }
    async fn delete_snapshot(&self, m: &persistence_stores::SnapshotMetadata) -> Result<()> {
        self.inner.delete_snapshot(m).await
    }
    async fn delete_snapshots(
        &self,
        id: &PersistenceId,
        c: persistence_stores::SnapshotSelectionCriteria,
    ) -> Result<()> {
        self.inner.delete_snapshots(id, c).await
    }
}

impl ReadJournal for Reduced {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        if mode.is_live() {
            self.seen();
        }
        self.inner.query_persistence_ids(mode)
    }
    fn query_events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        if mode.is_live() {
            self.seen();
        }
        self.inner
            .query_events_by_persistence_id(id, from, to, mode)
    }
    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        self.seen();
        self.inner.query_events_by_tag(tag, offset, mode)
    }
}

fn reduced_caps() -> Capabilities {
    Capabilities {
        atomic_write_max_events: Some(1),
        max_event_size: Some(1000),
        conflict_detection: true,
        query_persistence_ids: true,
        query_events_by_persistence_id: true,
        ..Capabilities::default()
    }
}

fn reduced(calls: Arc<AtomicUsize>) -> Stores {
    let r = Arc::new(Reduced {
        inner: Memory::new(MemoryConfig::default()),
        calls,
    });
    Stores::new("reduced", reduced_caps(), r.clone(), r.clone(), r)
}

#[tokio::test]
async fn unsupported_and_oversized_calls_never_reach_the_backend() {
    let calls = Arc::new(AtomicUsize::new(0));
    let stores = reduced(calls.clone());
    let id = PersistenceId::new("p").unwrap();
    let ev = |n| PersistentEvent::new(id.clone(), n, Payload::raw(vec![0u8; 10]));

    let err = stores
        .journal
        .write(AtomicWrite::new(vec![ev(1), ev(2)]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("limit of 1 events"), "{err}");

    let err = stores
        .journal
        .write(AtomicWrite::single(ev(1).with_tags(["t"])).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("tags"), "{err}");

    let big = PersistentEvent::new(id.clone(), 1, Payload::raw(vec![0u8; 2000]));
    let err = stores
        .journal
        .write(AtomicWrite::single(big).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.to_string().contains("at most 1000 bytes"), "{err}");

    let err = stores.journal.delete_events_to(&id, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let err = stores
        .snapshots
        .save_snapshot(
            persistence_stores::SnapshotMetadata::new(id.clone(), 1),
            Payload::raw(vec![1]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);

    for mut s in [
        stores
            .read_journal
            .events_by_tag("t".into(), Offset::NoOffset),
        stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset),
        stores
            .read_journal
            .events_by_persistence_id(id.clone(), 1, 10),
    ] {
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(s.next().await.is_none());
    }
    let err = stores
        .read_journal
        .persistence_ids()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("live queries"), "{err}");

    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "none of these calls reached the backend"
    );
    stores
        .journal
        .write(AtomicWrite::single(ev(1)).unwrap())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

struct ReducedFactory;

#[async_trait]
impl persistence_tck::StoreFactory for ReducedFactory {
    async fn create(&self, _namespace: &str) -> Result<Stores> {
        Ok(reduced(Arc::new(AtomicUsize::new(0))))
    }
}

#[tokio::test]
async fn the_kit_skips_by_capability_and_names_what_is_missing() {
    let report = persistence_tck::run_all(Arc::new(ReducedFactory), None).await;
    let (passed, failed, skipped) = report.counts();
    let failures: Vec<_> = report
        .cases
        .iter()
        .filter(|(_, o)| matches!(o, persistence_tck::Outcome::Failed(_)))
        .collect();
    assert_eq!(failed, 0, "{failures:#?}");
    assert!(
        passed >= 25,
        "the cases a single-event journal can serve run: {passed}"
    );
    assert!(skipped >= 20, "{skipped}");
    let reason = |name: &str| {
        report
            .cases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.clone())
            .expect(name)
    };
    assert_eq!(
        reason("snapshot::latest"),
        persistence_tck::Outcome::Skipped("snapshots".into())
    );
    assert_eq!(
        reason("query::live_events_by_tag"),
        persistence_tck::Outcome::Skipped("query_events_by_tag, live_queries".into())
    );
    assert_eq!(
        reason("journal::conflict_stores_nothing_of_atomic_write"),
        persistence_tck::Outcome::Skipped("atomic_write_max_events >= 2".into())
    );
    assert_eq!(
        reason("journal::atomic_write_above_declared_maximum"),
        persistence_tck::Outcome::Passed
    );
    assert_eq!(
        reason("journal::event_over_size_limit_rejects_its_atomic_write"),
        persistence_tck::Outcome::Passed
    );
    // A hook the factory does not implement is found out when the case runs: skipped with
    // the hook's name, not passed.
    match reason("corruption::garbage_event_payload_names_the_event") {
        persistence_tck::Outcome::Skipped(why) => assert!(
            why.contains("StoreFactory::corrupt_event(Corruption::Payload)"),
            "{why}"
        ),
        other => panic!("a case whose hook is missing is skipped, not {other:?}"),
    }
}

#[tokio::test]
async fn offset_calls_are_unsupported_as_declared_and_name_the_backend() {
    use persistence_stores::memory::MemoryOffsetStore;
    use persistence_stores::{ProjectionId, StoreTransaction};
    let id = ProjectionId::new("p", "k").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // No offset store at all, and none declared.
    let stores = reduced(calls.clone());
    assert!(!stores.offsets.supports_transactions());
    let mut errors = vec![
        (
            "read_offset",
            stores
                .offsets
                .read_offset(&id)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "commit_offset",
            stores
                .offsets
                .commit_offset(&id, 0, Offset::Sequence(1))
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "set_offset",
            stores
                .offsets
                .set_offset(&id, Offset::Sequence(1))
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "clear_offset",
            stores
                .offsets
                .clear_offset(&id)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "begin_transaction",
            stores
                .offsets
                .begin_transaction()
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
    ];
    // An offset store added, but only offsets declared: transactions stay unsupported, and
    // never reach the store.
    let with_offsets = Stores::new(
        "reduced",
        Capabilities {
            projection_offsets: true,
            ..reduced_caps()
        },
        stores.journal.clone(),
        stores.snapshots.clone(),
        stores.read_journal.clone(),
    )
    .with_offset_store(Arc::new(MemoryOffsetStore::new()));
    assert!(!with_offsets.offsets.supports_transactions());
    assert_eq!(
        with_offsets
            .offsets
            .commit_offset(&id, 0, Offset::Sequence(1))
            .await
            .unwrap(),
        1
    );
    errors.push((
        "begin_transaction",
        with_offsets
            .offsets
            .begin_transaction()
            .await
            .map(|_| ())
            .unwrap_err(),
    ));
    let foreign = StoreTransaction::new("memory", ());
    errors.push((
        "commit_transaction",
        with_offsets
            .offsets
            .commit_transaction(foreign, &id, 1, Offset::Sequence(2))
            .await
            .map(|_| ())
            .unwrap_err(),
    ));
    for (operation, err) in errors {
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{operation}: {err:#}");
        assert_eq!(err.operation(), Some(operation), "{err:#}");
        assert_eq!(err.backend(), Some("reduced"), "{err:#}");
    }
    // Declared: a transaction another backend opened is InvalidInput naming both.
    let full = Memory::new(MemoryConfig::default()).stores();
    let foreign = StoreTransaction::new("sqlite", ());
    let err = full
        .offsets
        .commit_transaction(foreign, &id, 0, Offset::Sequence(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:#}");
    assert!(
        err.to_string().contains("sqlite") && err.to_string().contains("memory"),
        "{err:#}"
    );
    assert_eq!(
        full.offsets.read_offset(&id).await.unwrap(),
        None,
        "nothing stored"
    );
}

#[tokio::test]
async fn durable_state_calls_are_checked_before_the_backend() {
    use persistence_stores::{DurableStateStore, QueryMode};
    let id = PersistenceId::new("p").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // None declared: every call is Unsupported, naming the operation and the backend.
    let stores = reduced(calls.clone());
    let state = &stores.durable_state;
    let errors = vec![
        ("get_state", state.get(&id).await.map(|_| ()).unwrap_err()),
        (
            "upsert_state",
            state
                .upsert(&id, 1, Payload::raw(vec![1]), None)
                .await
                .unwrap_err(),
        ),
        ("delete_state", state.delete(&id, 1).await.unwrap_err()),
        (
            "current_changes",
            state
                .query_changes("t".into(), Offset::NoOffset, QueryMode::Current)
                .next()
                .await
                .unwrap()
                .unwrap_err(),
        ),
    ];
    for (operation, err) in errors {
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{operation}: {err:#}");
        assert_eq!(err.operation(), Some(operation), "{err:#}");
        assert_eq!(err.backend(), Some("reduced"), "{err:#}");
    }
    // Declared without change queries or live queries, with a size limit, over a store
    // that counts the calls reaching it.
    struct Counting(
        Arc<AtomicUsize>,
        persistence_stores::memory::MemoryDurableStateStore,
    );
    #[async_trait]
    impl DurableStateStore for Counting {
        async fn get(
            &self,
            id: &PersistenceId,
        ) -> Result<Option<persistence_stores::DurableState>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.get(id).await
        }
        async fn upsert(
            &self,
            id: &PersistenceId,
            r: u64,
            p: Payload,
            t: Option<String>,
        ) -> Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.upsert(id, r, p, t).await
        }
        async fn delete(&self, id: &PersistenceId, r: u64) -> Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.delete(id, r).await
        }
        fn query_changes(
            &self,
            t: String,
            o: Offset,
            m: QueryMode,
        ) -> persistence_stores::ChangeStream {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.query_changes(t, o, m)
        }
    }
    let reached = Arc::new(AtomicUsize::new(0));
    let caps = Capabilities {
        durable_state: true,
        max_state_size: Some(100),
        durable_state_changes: true,
        ..reduced_caps()
    };
    let stores = Stores::new(
        "reduced",
        caps,
        stores.journal.clone(),
        stores.snapshots.clone(),
        stores.read_journal.clone(),
    )
    .with_durable_state_store(Arc::new(Counting(reached.clone(), Default::default())));
    let state = &stores.durable_state;
    let refused = vec![
        (
            ErrorKind::InvalidInput,
            state
                .upsert(&id, 0, Payload::raw(vec![1]), None)
                .await
                .unwrap_err(),
        ),
        (
            ErrorKind::InvalidInput,
            state
                .upsert(&id, 1, Payload::raw(Vec::new()), None)
                .await
                .unwrap_err(),
        ),
        (
            ErrorKind::InvalidInput,
            state
                .upsert(&id, 1, Payload::raw(vec![1]), Some(String::new()))
                .await
                .unwrap_err(),
        ),
        (
            ErrorKind::InvalidInput,
            state.delete(&id, 0).await.unwrap_err(),
        ),
        (
            ErrorKind::Rejected,
            state
                .upsert(&id, 1, Payload::raw(vec![0; 101]), None)
                .await
                .unwrap_err(),
        ),
    ];
    for (kind, err) in refused {
        assert_eq!(err.kind(), kind, "{err:#}");
        assert_eq!(err.persistence_id(), Some("p"), "{err:#}");
        assert_eq!(err.backend(), Some("reduced"), "{err:#}");
    }
    let live = state
        .query_changes("t".into(), Offset::NoOffset, QueryMode::Live)
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        live.kind(),
        ErrorKind::Unsupported,
        "live queries are not declared: {live:#}"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "none reached the backend"
    );
    state
        .upsert(&id, 1, Payload::raw(vec![0; 100]), None)
        .await
        .unwrap();
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    // Change queries not declared: Unsupported.
    let stores = Stores::new(
        "reduced",
        Capabilities {
            durable_state: true,
            ..reduced_caps()
        },
        stores.journal.clone(),
        stores.snapshots.clone(),
        stores.read_journal.clone(),
    )
    .with_durable_state_store(Arc::new(Counting(reached.clone(), Default::default())));
    let err = stores
        .durable_state
        .query_changes("t".into(), Offset::NoOffset, QueryMode::Current)
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:#}");
    assert!(err.to_string().contains("change queries"), "{err:#}");
}

#[tokio::test]
async fn maintenance_calls_are_unsupported_unless_declared_and_errors_name_the_id() {
    struct Failing(Arc<AtomicUsize>);
    #[async_trait]
    impl persistence_stores::JournalMaintenance for Failing {
        fn scan_persistence_ids(&self) -> PersistenceIdStream {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(futures::stream::empty())
        }
        async fn rebuild_persistence_id(
            &self,
            _: &PersistenceId,
        ) -> Result<persistence_stores::RebuildReport> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(persistence_stores::Error::new(
                ErrorKind::Unavailable,
                "the server went away",
            ))
        }
        async fn purge_persistence_id(
            &self,
            _: &PersistenceId,
        ) -> Result<persistence_stores::PurgeReport> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(persistence_stores::Error::new(
                ErrorKind::Unavailable,
                "the server went away",
            ))
        }
    }
    let id = PersistenceId::new("p").unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let base = reduced(Arc::new(AtomicUsize::new(0)));
    let with = |caps: Capabilities| {
        Stores::new(
            "reduced",
            caps,
            base.journal.clone(),
            base.snapshots.clone(),
            base.read_journal.clone(),
        )
        .with_maintenance(Arc::new(Failing(reached.clone())))
    };
    // Not declared: Unsupported, naming the operation and the backend; never reached.
    let stores = with(reduced_caps());
    let m = &stores.maintenance;
    let errs = vec![
        m.rebuild_persistence_id(&id).await.unwrap_err(),
        m.purge_persistence_id(&id).await.unwrap_err(),
        m.scan_persistence_ids().next().await.unwrap().unwrap_err(),
    ];
    for err in errs {
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:#}");
        assert_eq!(err.backend(), Some("reduced"), "{err:#}");
        assert!(err.to_string().contains("maintenance"), "{err:#}");
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "none reached the backend"
    );
    // Declared: the backend's error leaves with the operation, the backend and the id.
    let stores = with(Capabilities {
        maintenance: true,
        ..reduced_caps()
    });
    let err = stores
        .maintenance
        .rebuild_persistence_id(&id)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:#}");
    assert_eq!(err.persistence_id(), Some("p"), "{err:#}");
    assert_eq!(err.backend(), Some("reduced"), "{err:#}");
    assert_eq!(err.operation(), Some("rebuild_persistence_id"), "{err:#}");
    let err = stores
        .maintenance
        .purge_persistence_id(&id)
        .await
        .unwrap_err();
    assert_eq!(err.operation(), Some("purge_persistence_id"), "{err:#}");
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    // Without a maintenance of its own, a backend that declares it still answers clearly.
    let bare = Stores::new(
        "reduced",
        Capabilities {
            maintenance: true,
            ..reduced_caps()
        },
        base.journal.clone(),
        base.snapshots.clone(),
        base.read_journal.clone(),
    );
    let err = bare
        .maintenance
        .rebuild_persistence_id(&id)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:#}");
}
