//! The durable-state store against the real node, the cases that are Cassandra's own (the
//! generic suite is the kit's `durable_state::*`): hand-damaged rows, change rows whose
//! write never happened (a process that died between the change row and its lightweight
//! transaction) or happened late, a lost race's change row, and racing lightweight
//! transactions. Against the node from `PERSISTENCE_CASSANDRA_CONTACT_POINTS`; skipped
//! loudly when it is unset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use persistence_api::futures::TryStreamExt;
use persistence_api::{
    DurableStateChange, DurableStateStore, ErrorKind, Offset, Payload, PersistenceId, QueryMode,
};
use persistence_cassandra::scylla::value::CqlTimeuuid;
use persistence_cassandra::{Cassandra, CassandraConfig, TimeBucket};
use tokio::sync::Barrier;

/// Short delays, and a short request timeout so a dead change row settles in
/// `2 × 1 s + 0.2 s`.
fn config(contact_points: &str) -> CassandraConfig {
    CassandraConfig {
        contact_points: contact_points.split(',').map(str::to_owned).collect(),
        local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
        keyspace: "persistence_tck".into(),
        create_schema: true,
        eventual_consistency_delay: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(1),
        ..CassandraConfig::default()
    }
}

/// How long a change row whose state never came holds a query back (see `durable_state.rs`).
const SETTLE: Duration = Duration::from_millis(2_200);

async fn backend() -> Option<Cassandra> {
    let contact_points = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?;
    let ns = format!("ds{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    Some(
        Cassandra::open(config(&contact_points))
            .await
            .expect("connect")
            .with_namespace(&ns)
            .unwrap(),
    )
}

/// How a namespace prefixes the ids and tags it stores (the README's "Namespaces").
fn stored(b: &Cassandra, s: &str) -> String {
    format!("{}\u{1f}{s}", b.config().namespace)
}

fn pid(s: &str) -> PersistenceId {
    PersistenceId::new(s).unwrap()
}

fn state(text: &str) -> Payload {
    Payload::new("test", "test.State/v1", text.as_bytes().to_vec())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A version-1 UUID for now (a random node: not one the store makes).
fn timeuuid() -> CqlTimeuuid {
    let ticks = (now_millis() as u64) * 10_000 + 0x01B2_1DD2_1381_4000;
    let msb = ((ticks & 0xffff_ffff) << 32)
        | (((ticks >> 32) & 0xffff) << 16)
        | ((ticks >> 48) & 0x0fff)
        | 0x1000;
    let node = u64::from_be_bytes(uuid::Uuid::new_v4().as_bytes()[8..16].try_into().unwrap());
    CqlTimeuuid::from_u64_pair(msb, (node & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000)
}

fn millis_of(u: CqlTimeuuid) -> i64 {
    let b = u.as_ref().as_bytes();
    let ticks = u64::from_be_bytes([b[6] & 0x0f, b[7], b[4], b[5], b[0], b[1], b[2], b[3]]);
    ((ticks - 0x01B2_1DD2_1381_4000) / 10_000) as i64
}

/// Runs one CQL statement in the backend's keyspace (`{ks}` in `cql`).
async fn cql(
    b: &Cassandra,
    cql: &str,
    values: impl persistence_cassandra::scylla::serialize::row::SerializeRow,
) {
    b.session()
        .query_unpaged(cql.replace("{ks}", &b.config().keyspace), values)
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

/// Writes a change row by hand: what a writer leaves when it dies before its lightweight
/// transaction (or before that transaction lands).
async fn change_row(b: &Cassandra, tag: &str, id: &str, revision: i64, ts: CqlTimeuuid) {
    let bucket = TimeBucket::Hour.bucket_of(millis_of(ts));
    cql(
        b,
        "INSERT INTO {ks}.durable_state_changes (tag, timebucket, timestamp, persistence_id, revision) VALUES (?, ?, ?, ?, ?)",
        (stored(b, tag), bucket, ts, stored(b, id), revision),
    )
    .await;
    register(b, tag, ts).await;
}

/// Registers the bucket of `ts` as a first bucket of `tag`, as a writer does.
async fn register(b: &Cassandra, tag: &str, ts: CqlTimeuuid) {
    cql(
        b,
        "UPDATE {ks}.durable_state_buckets SET first_buckets = first_buckets + ? WHERE tag = ?",
        (
            vec![TimeBucket::Hour.bucket_of(millis_of(ts))],
            stored(b, tag),
        ),
    )
    .await;
}

async fn current(store: &dyn DurableStateStore, tag: &str) -> Vec<DurableStateChange> {
    store
        .query_changes(tag.into(), Offset::NoOffset, QueryMode::Current)
        .try_collect()
        .await
        .unwrap()
}

fn keys(changes: &[DurableStateChange]) -> Vec<(String, u64)> {
    changes
        .iter()
        .map(|c| (c.persistence_id.to_string(), c.revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_rows_are_corrupt_naming_the_id_and_the_column() {
    let Some(b) = backend().await else { return };
    let store = b.stores().durable_state;
    let id = pid("damaged");
    store
        .upsert(&id, 1, state("one"), Some("t".into()))
        .await
        .unwrap();
    for (column, value) in [
        ("state", "null"),
        ("ser_manifest", "null"),
        ("deleted", "null"),
        ("tag", "''"),
        ("timestamp", "null"),
        ("revision", "0"),
        ("revision", "null"),
    ] {
        // Restore, then damage one column.
        cql(
            &b,
            "UPDATE {ks}.durable_state SET revision = 1, ser_id = 'test', ser_manifest = 'm', state = 0x01, deleted = false, tag = 't', timestamp = now() WHERE persistence_id = ?",
            (stored(&b, "damaged"),),
        )
        .await;
        cql(
            &b,
            &format!("UPDATE {{ks}}.durable_state SET {column} = {value} WHERE persistence_id = ?"),
            (stored(&b, "damaged"),),
        )
        .await;
        let err = store.get(&id).await.expect_err("a damaged row");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{column}: {err:#}");
        let text = err.to_string();
        assert!(
            text.contains(column) && text.contains("damaged"),
            "names the column {column} and the id: {text}"
        );
    }
    // A change query meeting the damaged state fails the same way.
    cql(
        &b,
        "UPDATE {ks}.durable_state SET revision = 1, ser_id = 'test', ser_manifest = 'm', state = null, deleted = false, tag = 't2', timestamp = ? WHERE persistence_id = ?",
        (timeuuid(), stored(&b, "damaged")),
    )
    .await;
    let row_ts = {
        let rows = b
            .session()
            .query_unpaged(
                format!(
                    "SELECT timestamp FROM {}.durable_state WHERE persistence_id = ?",
                    b.config().keyspace
                ),
                (stored(&b, "damaged"),),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        rows.first_row::<(CqlTimeuuid,)>().unwrap().0
    };
    change_row(&b, "t2", "damaged", 1, row_ts).await;
    let err = store
        .query_changes("t2".into(), Offset::NoOffset, QueryMode::Current)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("a change of a damaged state");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:#}");
    assert!(err.to_string().contains("state"), "{err:#}");
    // A damaged change row: its revision NULL.
    let ts = timeuuid();
    cql(
        &b,
        "INSERT INTO {ks}.durable_state_changes (tag, timebucket, timestamp, persistence_id) VALUES (?, ?, ?, ?)",
        (
            stored(&b, "t4"),
            TimeBucket::Hour.bucket_of(millis_of(ts)),
            ts,
            stored(&b, "damaged"),
        ),
    )
    .await;
    register(&b, "t4", ts).await;
    let err = store
        .query_changes("t4".into(), Offset::NoOffset, QueryMode::Current)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("a change row without a revision");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:#}");
    let text = err.to_string();
    assert!(
        text.contains("revision") && text.contains("damaged"),
        "{text}"
    );
}

/// A writer that died after its change row and before its lightweight transaction: the
/// row names a revision never stored. The queries hold back at it (it could be a write in
/// flight) until it is older than the settle window, then drop it, and deliver what came
/// before and after it; nothing of it reaches the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_row_whose_write_never_happened_is_dropped_after_the_settle_window() {
    let Some(b) = backend().await else { return };
    let store = b.stores().durable_state;
    let (x, y) = (pid("x"), pid("y"));
    store
        .upsert(&x, 1, state("x1"), Some("crash".into()))
        .await
        .unwrap();
    // Dead rows: an id never written, and x at a revision after its stored one.
    change_row(&b, "crash", "ghost", 1, timeuuid()).await;
    change_row(&b, "crash", "x", 2, timeuuid()).await;
    store
        .upsert(&y, 1, state("y1"), Some("crash".into()))
        .await
        .unwrap();
    let started = Instant::now();
    let changes = current(&*store, "crash").await;
    assert_eq!(
        keys(&changes),
        vec![("x".to_owned(), 1), ("y".to_owned(), 1)]
    );
    assert!(
        started.elapsed() >= SETTLE - Duration::from_millis(500),
        "held back at the dead rows until they settled: {:?}",
        started.elapsed()
    );
    // Once settled, they cost nothing.
    let started = Instant::now();
    assert_eq!(keys(&current(&*store, "crash").await).len(), 2);
    assert!(started.elapsed() < SETTLE, "{:?}", started.elapsed());
    // x goes on at revision 2 (the dead row never counted), delivered after y.
    store
        .upsert(&x, 2, state("x2"), Some("crash".into()))
        .await
        .unwrap();
    assert_eq!(
        keys(&current(&*store, "crash").await),
        vec![("y".to_owned(), 1), ("x".to_owned(), 2)]
    );
}

/// A change row whose state lands after the query reached it (a slow lightweight
/// transaction): the query waits at it and delivers it, then what came after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_whose_state_lands_late_is_waited_for_not_skipped() {
    let Some(b) = backend().await else { return };
    let store = b.stores().durable_state;
    let ts = timeuuid();
    change_row(&b, "late", "slow", 1, ts).await;
    store
        .upsert(&pid("fast"), 1, state("f"), Some("late".into()))
        .await
        .unwrap();
    let query = {
        let store = store.clone();
        tokio::spawn(async move { current(&*store, "late").await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The slow write's lightweight transaction lands now, with the row's timestamp.
    cql(
        &b,
        "INSERT INTO {ks}.durable_state (persistence_id, revision, ser_id, ser_manifest, state, deleted, tag, timestamp) VALUES (?, 1, 'test', 'test.State/v1', 0x73, false, 'late', ?) IF NOT EXISTS",
        (stored(&b, "slow"), ts),
    )
    .await;
    let changes = query.await.unwrap();
    assert_eq!(
        keys(&changes),
        vec![("slow".to_owned(), 1), ("fast".to_owned(), 1)]
    );
    assert_eq!(changes[0].offset, Offset::TimeBasedUuid(ts.into()));
    // Resuming from the slow change gives only the one after it.
    let rest: Vec<_> = store
        .query_changes("late".into(), changes[0].offset.clone(), QueryMode::Current)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys(&rest), vec![("fast".to_owned(), 1)]);
}

/// A change row of a revision another write won (a loser that died before deleting its
/// row) is dropped at once: the state holds that revision with another timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_race_change_row_is_dropped_at_once() {
    let Some(b) = backend().await else { return };
    let store = b.stores().durable_state;
    let id = pid("won");
    change_row(&b, "race", "won", 1, timeuuid()).await;
    store
        .upsert(&id, 1, state("w"), Some("race".into()))
        .await
        .unwrap();
    let started = Instant::now();
    let changes = current(&*store, "race").await;
    assert_eq!(keys(&changes), vec![("won".to_owned(), 1)]);
    assert_eq!(changes[0].payload, Some(state("w")));
    assert!(started.elapsed() < SETTLE, "{:?}", started.elapsed());
}

/// Eight writers race on each revision of one tagged id with lightweight transactions:
/// one wins each, the losers get `Conflict` and their change rows are deleted; the change
/// query gives the id once, at the last winner's state. Racing deletes: one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_lightweight_transactions_one_winner_and_one_change() {
    let Some(b) = backend().await else { return };
    let store = b.stores().durable_state;
    let id = pid("raced");
    let mut last = None;
    for revision in 1..=5u64 {
        let barrier = Arc::new(Barrier::new(8));
        let tasks: Vec<_> = (0..8u8)
            .map(|w| {
                let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let payload = Payload::raw(vec![w; 4]);
                    store
                        .upsert(&id, revision, payload.clone(), Some("raced".into()))
                        .await
                        .map(|()| payload)
                })
            })
            .collect();
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(p) => won.push(p),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Conflict, "{e:#}");
                    assert!(
                        e.to_string().contains(&format!("revision {revision}")),
                        "{e}"
                    );
                }
            }
        }
        assert_eq!(won.len(), 1, "revision {revision}");
        last = won.pop();
    }
    let changes = current(&*store, "raced").await;
    assert_eq!(keys(&changes), vec![("raced".to_owned(), 5)]);
    assert_eq!(changes[0].payload, last);
    // The losers deleted their change rows: five rows remain, one per revision.
    let rows = b
        .session()
        .query_unpaged(
            format!(
                "SELECT revision FROM {}.durable_state_changes WHERE tag = ? AND timebucket = ?",
                b.config().keyspace
            ),
            (
                stored(&b, "raced"),
                TimeBucket::Hour.bucket_of(millis_of(match &changes[0].offset {
                    Offset::TimeBasedUuid(u) => (*u).into(),
                    other => panic!("{other:?}"),
                })),
            ),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut revisions: Vec<i64> = rows
        .rows::<(i64,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, vec![1, 2, 3, 4, 5]);

    let barrier = Arc::new(Barrier::new(4));
    let deletes: Vec<_> = (0..4)
        .map(|_| {
            let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete(&id, 6).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in deletes {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e:#}"),
        }
    }
    assert_eq!(ok, 1);
    let got = store.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.is_deleted()), (6, true));
    assert_eq!(got.tag.as_deref(), Some("raced"), "a delete keeps the tag");
    let changes = current(&*store, "raced").await;
    assert_eq!(keys(&changes), vec![("raced".to_owned(), 6)]);
    assert!(changes[0].is_deleted());
}
