//! The checking layer's metrics, read back through `metrics-util`'s debugging recorder
//! after a known run on the memory backend: calls, errors by kind, events and bytes
//! written, events read, durations and live lag, counted exactly.
//!
//! Each test installs its recorder for its own thread only and runs a current-thread
//! runtime inside, so tests running side by side do not count each other's calls.

use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshot};
use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{
    AtomicWrite, ErrorKind, Offset, Payload, PersistenceId, PersistentEvent, ReadJournalExt, Stores,
};

/// Runs `body` on a current-thread runtime with a fresh recorder; its snapshot.
fn recorded<F: std::future::Future<Output = ()>>(body: impl FnOnce() -> F) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    });
    snapshotter.snapshot()
}

/// Each recorded metric: its name, its labels sorted, its value.
type Recorded = Vec<(String, Vec<(String, String)>, DebugValue)>;

/// The value of the metric `name` whose labels are exactly `labels`.
fn value<'a>(s: &'a Recorded, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    s.iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

fn flatten(snapshot: Snapshot) -> Recorded {
    snapshot
        .into_vec()
        .into_iter()
        .map(|(key, _, _, v)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            (key.name().to_string(), labels, v)
        })
        .collect()
}

fn counter(s: &Recorded, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(s, name, labels) {
        Some(DebugValue::Counter(c)) => *c,
        None => 0,
        other => panic!("{name} {labels:?} is no counter: {other:?}"),
    }
}

fn histogram(s: &Recorded, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match value(s, name, labels) {
        Some(DebugValue::Histogram(h)) => h.iter().map(|f| f.0).collect(),
        None => Vec::new(),
        other => panic!("{name} {labels:?} is no histogram: {other:?}"),
    }
}

fn id(s: &str) -> PersistenceId {
    PersistenceId::new(s).unwrap()
}

/// Events `from..=to` of `pid`, tagged `t`, with a payload of `seq` bytes.
fn write(pid: &str, from: u64, to: u64) -> AtomicWrite {
    AtomicWrite::new(
        (from..=to)
            .map(|seq| {
                PersistentEvent::new(
                    id(pid),
                    seq,
                    Payload::new("test", "E", vec![7u8; seq as usize]),
                )
                .with_tags(["t"])
            })
            .collect(),
    )
    .unwrap()
}

fn size(w: &AtomicWrite) -> u64 {
    w.events().iter().map(|e| e.stored_size() as u64).sum()
}

fn stores() -> Stores {
    Memory::new(MemoryConfig::default()).stores()
}

const M: (&str, &str) = ("backend", "memory");

#[test]
fn writes_conflicts_replays_and_queries_are_counted_exactly() {
    let writes = [write("a", 1, 3), write("a", 4, 5), write("b", 1, 2)];
    let bytes: u64 = writes.iter().map(size).sum();
    let s = flatten(recorded(|| async {
        let stores = stores();
        let [a1, a2, b] = writes.clone();
        let r = stores.journal.write_events(vec![a1, a2]).await.unwrap();
        assert!(r.iter().all(Result::is_ok));
        let r = stores.journal.write_events(vec![b]).await.unwrap();
        assert!(r.iter().all(Result::is_ok));
        // Sequence number 5 of `a` is taken: a conflict in the results.
        let r = stores
            .journal
            .write_events(vec![write("a", 5, 6)])
            .await
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
        let replay = stores
            .journal
            .replay(&id("a"), 1, u64::MAX, u64::MAX)
            .await
            .unwrap();
        assert_eq!(replay.events.count().await, 5);
        let tagged = stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset)
            .count()
            .await;
        assert_eq!(tagged, 7);
        // A call the layer refuses is counted too, with its kind.
        let err = stores.durable_state.delete(&id("s"), 0).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }));

    let op = |o: &'static str| [M, ("operation", o)];
    assert_eq!(
        counter(&s, "persistence_operations_total", &op("write_events")),
        3
    );
    assert_eq!(
        counter(
            &s,
            "persistence_errors_total",
            &[M, ("operation", "write_events"), ("kind", "conflict")]
        ),
        1
    );
    assert_eq!(counter(&s, "persistence_events_written_total", &[M]), 7);
    assert_eq!(counter(&s, "persistence_bytes_written_total", &[M]), bytes);
    assert_eq!(
        counter(&s, "persistence_operations_total", &op("replay")),
        1
    );
    assert_eq!(
        counter(&s, "persistence_events_read_total", &op("replay")),
        5
    );
    assert_eq!(
        counter(
            &s,
            "persistence_operations_total",
            &op("current_events_by_tag")
        ),
        1
    );
    assert_eq!(
        counter(
            &s,
            "persistence_events_read_total",
            &op("current_events_by_tag")
        ),
        7
    );
    assert_eq!(
        counter(
            &s,
            "persistence_errors_total",
            &[M, ("operation", "delete_state"), ("kind", "invalid_input")]
        ),
        1
    );
    let errors: u64 = s
        .iter()
        .filter(|(n, _, _)| n == "persistence_errors_total")
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum();
    assert_eq!(errors, 2, "no other error counted: {s:#?}");
    let durations = histogram(
        &s,
        "persistence_operation_duration_seconds",
        &op("write_events"),
    );
    assert_eq!(durations.len(), 3);
    assert!(
        durations.iter().all(|d| *d >= 0.0 && *d < 10.0),
        "{durations:?}"
    );
    assert_eq!(
        histogram(&s, "persistence_operation_duration_seconds", &op("replay")).len(),
        1
    );
}

#[test]
fn live_queries_record_their_lag_and_retries_their_count() {
    let s = flatten(recorded(|| async {
        let stores = stores();
        stores
            .journal
            .write_events(vec![write("a", 1, 3)])
            .await
            .unwrap();
        let live = stores
            .read_journal
            .events_by_tag("t".into(), Offset::NoOffset)
            .take(3)
            .count()
            .await;
        assert_eq!(live, 3);
        persistence_stores::metrics::record_retry("memory", "write_events");
        persistence_stores::metrics::record_retry("memory", "write_events");
    }));
    let lag = histogram(
        &s,
        "persistence_live_query_lag_seconds",
        &[M, ("query", "events_by_tag")],
    );
    assert_eq!(lag.len(), 3);
    assert!(lag.iter().all(|l| (0.0..60.0).contains(l)), "{lag:?}");
    assert_eq!(
        counter(
            &s,
            "persistence_events_read_total",
            &[M, ("operation", "events_by_tag")]
        ),
        3
    );
    assert_eq!(
        counter(
            &s,
            "persistence_retries_total",
            &[M, ("operation", "write_events")]
        ),
        2
    );
    // A current query records no lag.
    assert!(!s
        .iter()
        .any(|(n, l, _)| n == "persistence_live_query_lag_seconds"
            && l.iter().any(|(_, v)| v.starts_with("current_"))));
}

#[test]
fn a_live_query_counts_each_look_after_catching_up_as_a_poll() {
    let s = flatten(recorded(|| async {
        let stores = stores();
        stores
            .journal
            .write_events(vec![write("a", 1, 1)])
            .await
            .unwrap();
        let mut live = stores
            .read_journal
            .events_by_tag("t".into(), Offset::NoOffset);
        live.next().await.unwrap().unwrap();
        // Caught up: the next item needs a write, which wakes the query once.
        let writer = stores.journal.clone();
        let next = tokio::spawn(async move { live.next().await.map(|e| e.unwrap()) });
        tokio::task::yield_now().await;
        writer.write_events(vec![write("a", 2, 2)]).await.unwrap();
        assert_eq!(next.await.unwrap().unwrap().event.sequence_nr, 2);
        // A current query never polls.
        let current = stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset)
            .count()
            .await;
        assert_eq!(current, 2);
    }));
    assert_eq!(
        counter(
            &s,
            "persistence_live_query_polls_total",
            &[M, ("query", "events_by_tag")]
        ),
        1
    );
    assert!(!s
        .iter()
        .any(|(n, l, _)| n == "persistence_live_query_polls_total"
            && l.iter().any(|(_, v)| v.starts_with("current_"))));
}
