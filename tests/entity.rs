//! The typed layer end to end on the in-memory store: recovery from snapshot plus events,
//! snapshot policy, conflicts between two writers, schema upcasting, the replay filter.

use persistence_stores::{
    AtomicWrite, CborCodec, Entity, EntityConfig, ErrorKind, EventSourced, JournalExt,
    PersistenceId, PersistentEvent, ReplayFilter, ReplayFilterMode, SnapshotSelectionCriteria,
};
use serde::{Deserialize, Serialize};

#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: i64,
    applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Added { by: i64 },
}

impl EventSourced for Counter {
    type Event = CounterEvent;
    const TYPE_NAME: &'static str = "test.Counter";
    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { by } => self.total += by,
        }
        self.applied += 1;
    }
    fn tags(_: &CounterEvent) -> Vec<String> {
        vec!["counter".into()]
    }
}

fn id() -> PersistenceId {
    PersistenceId::new("counter-1").unwrap()
}

#[tokio::test]
async fn recovers_from_snapshot_plus_events() {
    let stores = persistence_stores::memory::stores();
    let config = EntityConfig::<Counter>::default().snapshot_every(3);
    let mut c = Entity::<Counter>::recover(&stores, id(), config.clone())
        .await
        .unwrap();
    for by in 1..=7 {
        c.persist_one(CounterEvent::Added { by }).await.unwrap();
    }
    assert_eq!(c.state().total, 28);
    let snap = stores
        .snapshots
        .load_snapshot(&id(), SnapshotSelectionCriteria::latest())
        .await
        .unwrap()
        .expect("a snapshot was taken by the policy");
    assert_eq!(snap.metadata.sequence_nr, 6);

    let again = Entity::<Counter>::recover(&stores, id(), config)
        .await
        .unwrap();
    assert_eq!(again.state(), c.state());
    assert_eq!(again.sequence_nr(), 7);
    let info = again.recovery_info();
    assert_eq!(
        (info.snapshot_sequence_nr, info.events_replayed),
        (Some(6), 1)
    );
}

#[tokio::test]
async fn second_writer_gets_conflict_and_state_is_unchanged() {
    let stores = persistence_stores::memory::stores();
    let config = EntityConfig::<Counter>::default();
    let mut a = Entity::<Counter>::recover(&stores, id(), config.clone())
        .await
        .unwrap();
    let mut b = Entity::<Counter>::recover(&stores, id(), config.clone())
        .await
        .unwrap();
    a.persist(vec![
        CounterEvent::Added { by: 1 },
        CounterEvent::Added { by: 2 },
    ])
    .await
    .unwrap();
    let err = b
        .persist_one(CounterEvent::Added { by: 100 })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(Entity::<Counter>::is_conflict(&err));
    assert_eq!(b.state().total, 0, "a refused write changes nothing");
    let fresh = Entity::<Counter>::recover(&stores, id(), config)
        .await
        .unwrap();
    assert_eq!(fresh.state().total, 3);
}

#[tokio::test]
async fn old_schema_versions_are_upcast_at_replay() {
    #[derive(Serialize)]
    enum OldEvent {
        Incremented,
    }
    let stores = persistence_stores::memory::stores();
    // Version 1 had a unit variant `Incremented`; version 2 is `Added { by }`.
    let v1 = CborCodec::<()>::new("test.Counter.Event");
    let old_payload = persistence_stores::Payload::new(
        persistence_stores::CBOR_SERIALIZER_ID,
        v1.manifest(),
        persistence_stores::to_cbor(&OldEvent::Incremented).unwrap(),
    );
    stores
        .journal
        .write(AtomicWrite::single(PersistentEvent::new(id(), 1, old_payload)).unwrap())
        .await
        .unwrap();
    let codec = CborCodec::<CounterEvent>::new("test.Counter.Event")
        .with_version(2)
        .with_upcaster(1, |_old| {
            let added = ciborium_map("Added", vec![("by", 1)]);
            Ok(added)
        });
    let config = EntityConfig::<Counter>::default().with_event_codec(codec);
    let mut c = Entity::<Counter>::recover(&stores, id(), config)
        .await
        .unwrap();
    assert_eq!(c.state().total, 1);
    c.persist_one(CounterEvent::Added { by: 5 }).await.unwrap();
    let events = stores.journal.replay_all(&id()).await.unwrap();
    assert_eq!(events[1].payload.manifest, "test.Counter.Event/v2");
}

/// `{variant: {field: value, ...}}`, serde's externally tagged enum encoding.
fn ciborium_map(variant: &str, fields: Vec<(&str, i64)>) -> persistence_stores::ciborium::Value {
    use persistence_stores::ciborium::Value;
    let inner = fields
        .into_iter()
        .map(|(k, v)| (Value::Text(k.into()), Value::Integer(v.into())))
        .collect();
    Value::Map(vec![(Value::Text(variant.into()), Value::Map(inner))])
}

#[tokio::test]
async fn replay_filter_in_fail_mode_accepts_a_clean_handover_between_writers() {
    let stores = persistence_stores::memory::stores();
    let codec = CborCodec::<CounterEvent>::new("test.Counter.Event");
    use persistence_stores::Codec;
    let payload = codec.encode(&CounterEvent::Added { by: 1 }).unwrap();
    // Writer A writes 1-2, writer B takes over at 3; then A (unaware) would have written 3
    // but the journal refused it, so the history is clean: the filter lets it through.
    for (seq, writer) in [(1, "A"), (2, "A"), (3, "B")] {
        let e = PersistentEvent::new(id(), seq, payload.clone()).with_writer_id(writer);
        stores
            .journal
            .write(AtomicWrite::single(e).unwrap())
            .await
            .unwrap();
    }
    let config = EntityConfig::<Counter>::default()
        .with_replay_filter(ReplayFilter::with_mode(ReplayFilterMode::Fail));
    let c = Entity::<Counter>::recover(&stores, id(), config)
        .await
        .unwrap();
    assert_eq!(c.state().total, 3);
}
