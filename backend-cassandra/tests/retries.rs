//! The driver's retries are counted as `persistence_retries_total{backend="cassandra",
//! operation="cql_request"}`: a replay (idempotent reads) whose connection is cut while
//! the request is in flight makes the driver's default policy retry it, and the counter
//! says so. Against the real node through the kit's fault proxy.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use persistence_api::{AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent};
use persistence_cassandra::{Cassandra, CassandraConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::server_env;

fn retries(snapshot: metrics_util::debugging::Snapshot) -> u64 {
    snapshot
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| {
            let key = key.key();
            key.name() == "persistence_retries_total"
                && key
                    .labels()
                    .any(|l| l.key() == "backend" && l.value() == "cassandra")
                && key
                    .labels()
                    .any(|l| l.key() == "operation" && l.value() == "cql_request")
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_read_cut_in_flight_is_retried_and_counted() {
    let Some(contact_points) = server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS") else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let target = contact_points.split(',').next().unwrap().trim().to_owned();
        let proxy = FaultProxy::start(target).await.unwrap();
        let namespace = format!("retries_{}", uuid::Uuid::new_v4().simple());
        let config = CassandraConfig {
            contact_points: vec![proxy.addr().to_string()],
            local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
            keyspace: "persistence_tck".into(),
            create_schema: true,
            request_timeout: Duration::from_secs(2),
            namespace,
            ..CassandraConfig::default()
        };
        let stores = Cassandra::open(config).await.unwrap().stores();
        let id = PersistenceId::new("retried-1").unwrap();
        let events: Vec<_> = (1..=20)
            .map(|n| PersistentEvent::new(id.clone(), n, Payload::raw(vec![1; 100])))
            .collect();
        stores
            .journal
            .write(AtomicWrite::new(events).unwrap())
            .await
            .unwrap();
        let before = retries(snapshotter.snapshot());
        // The next request is cut after a few bytes reach the node: the driver sees its
        // connection break under an idempotent read and its policy retries it. The bytes
        // may instead belong to a request no policy retries (the driver's heartbeat on the
        // control connection, the non-idempotent serial read of the highest number), so
        // up to five tries.
        let mut after = before;
        for _ in 0..5 {
            proxy.cut_after(20);
            let _ = stores.journal.replay_all(&id).await;
            proxy.restore();
            after = retries(snapshotter.snapshot());
            if after > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            after > before,
            "no retry counted for reads cut in flight ({before} before, {after} after)"
        );
        // The retried read, or the next one, gets every event.
        let mut replayed = 0;
        for _ in 0..20 {
            if let Ok(events) = stores.journal.replay_all(&id).await {
                replayed = events.len();
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(replayed, 20);
    });
}
