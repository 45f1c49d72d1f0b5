//! The projection offset store against the real node, the cases that are Cassandra's own
//! (the generic offset conformance suite is the kit's): racing lightweight transactions,
//! concurrent sets, no exactly-once, a corrupt row written by hand, the schema created
//! twice, namespaces. Against the node from `PERSISTENCE_CASSANDRA_CONTACT_POINTS`; skipped
//! loudly when it is unset.

use std::sync::Arc;

use persistence_api::{ErrorKind, Offset, OffsetStore, ProjectionId};
use persistence_cassandra::{Cassandra, CassandraConfig};
use tokio::sync::Barrier;

fn config(contact_points: &str) -> CassandraConfig {
    CassandraConfig {
        contact_points: contact_points.split(',').map(str::to_owned).collect(),
        local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
        keyspace: "persistence_tck".into(),
        create_schema: true,
        ..CassandraConfig::default()
    }
}

/// A fresh namespace in the kit's keyspace (as `tests/cassandra.rs` does).
fn namespace() -> String {
    format!("off{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn backend() -> Option<Cassandra> {
    let contact_points = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?;
    Some(
        Cassandra::open(config(&contact_points))
            .await
            .expect("connect")
            .with_namespace(&namespace())
            .unwrap(),
    )
}

/// How a namespace prefixes the projection name it stores (the README's "Namespaces").
fn stored_name(b: &Cassandra, name: &str) -> String {
    format!("{}\u{1f}{name}", b.config().namespace)
}

fn id(name: &str) -> ProjectionId {
    ProjectionId::new(name, "tag-a").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commits_over_one_version_one_wins_the_other_conflicts_naming_both() {
    let Some(b) = backend().await else { return };
    let offsets = b.stores().offsets;
    for round in 0..5u64 {
        let id = id(&format!("race{round}"));
        // The first commit (INSERT IF NOT EXISTS), then a later one (UPDATE IF version = 1).
        for expected in [0, 1] {
            let barrier = Arc::new(Barrier::new(2));
            let tasks: Vec<_> = (0..2u64)
                .map(|n| {
                    let (offsets, id, barrier) = (offsets.clone(), id.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        offsets
                            .commit_offset(&id, expected, Offset::Sequence(10 * expected + n))
                            .await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won, vec![&(expected + 1)], "round {round}: {results:?}");
            let err = results.into_iter().find_map(|r| r.err()).unwrap();
            assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("expected version {expected}"))
                    && text.contains(&format!("stored version {}", expected + 1))
                    && text.contains(&id.to_string()),
                "{text}"
            );
            let stored = offsets.read_offset(&id).await.unwrap().unwrap();
            assert_eq!(stored.version, expected + 1);
            assert!(
                [0, 1]
                    .map(|n| Offset::Sequence(10 * expected + n))
                    .contains(&stored.offset),
                "{stored:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sets_each_move_the_version_on_by_one() {
    let Some(b) = backend().await else { return };
    let offsets = b.stores().offsets;
    let id = id("sets");
    assert_eq!(
        offsets
            .commit_offset(&id, 0, Offset::Sequence(1))
            .await
            .unwrap(),
        1
    );
    const PER_TASK: u64 = 10;
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2u64)
        .map(|n| {
            let (offsets, id, barrier) = (offsets.clone(), id.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut versions = Vec::new();
                for i in 0..PER_TASK {
                    let offset = if i % 5 == 4 {
                        Offset::NoOffset
                    } else {
                        Offset::Sequence(100 * n + i)
                    };
                    versions.push(offsets.set_offset(&id, offset).await.unwrap());
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let versions = t.await.unwrap();
        // One task's sets are in order, so its versions increase.
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort_unstable();
    assert_eq!(all, (2..=1 + 2 * PER_TASK).collect::<Vec<_>>());
    let stored = offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1 + 2 * PER_TASK);
    // A commit over the version the sets moved past is a conflict; over the last one, fine.
    let err = offsets
        .commit_offset(&id, 1, Offset::Sequence(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(
        offsets
            .commit_offset(&id, stored.version, Offset::Sequence(2))
            .await
            .unwrap(),
        stored.version + 1
    );
    // clear is a set: it moves the version on and stores "none".
    assert_eq!(offsets.clear_offset(&id).await.unwrap(), stored.version + 2);
    let cleared = offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!(cleared.offset, Offset::NoOffset);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_exactly_once_transactions() {
    let Some(b) = backend().await else { return };
    let stores = b.stores();
    let caps = stores.capabilities();
    assert!(caps.projection_offsets);
    assert!(!caps.exactly_once_projections);
    assert!(!stores.offsets.supports_transactions());
    let err = stores.offsets.begin_transaction().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("exactly-once"), "{err}");
    // The store itself answers the same, without the checking layer.
    let err = b.offsets().begin_transaction().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_stored_as_text_and_a_corrupt_row_is_corrupt_naming_the_projection() {
    let Some(b) = backend().await else { return };
    let offsets = b.stores().offsets;
    let config = b.config();
    let table = format!("{}.{}", config.keyspace, config.tables.projection_offsets);
    let session = b.session();

    // The stored form: Offset's text, the version, the update time.
    let good = id("text");
    let uuid = uuid::Uuid::parse_str("5f1c7a60-3b2a-11ef-8000-0242ac120002").unwrap();
    offsets
        .commit_offset(&good, 0, Offset::TimeBasedUuid(uuid))
        .await
        .unwrap();
    let row = session
        .query_unpaged(
            format!(
                "SELECT offset, version, updated FROM {table} WHERE projection_name = ? AND projection_key = ?"
            ),
            (stored_name(&b, good.name()), good.key()),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(String, i64, Option<persistence_cassandra::scylla::value::CqlTimestamp>)>()
        .unwrap()
        .unwrap();
    assert_eq!(row.0, format!("timeuuid:{uuid}"));
    assert_eq!(row.1, 1);
    assert!(row.2.is_some(), "updated is set");

    // Rows damaged by hand: an offset that is no offset's text, a NULL or zero version.
    for (name, offset, version, column) in [
        ("badoffset", Some("sequence:twelve"), Some(3i64), "offset"),
        ("nulloffset", None, Some(3), "offset"),
        ("nullversion", Some("sequence:12"), None, "version"),
        ("zeroversion", Some("sequence:12"), Some(0), "version"),
    ] {
        let bad = id(name);
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {table} (projection_name, projection_key, offset, version) VALUES (?, ?, ?, ?)"
                ),
                (stored_name(&b, bad.name()), bad.key(), offset, version),
            )
            .await
            .unwrap();
        let err = offsets.read_offset(&bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&bad.to_string()) && text.contains(&format!("column {column}")),
            "{name}: {text}"
        );
        if column == "offset" {
            // An operator's set replaces an offset that does not decode.
            assert_eq!(
                offsets
                    .set_offset(&bad, Offset::Sequence(12))
                    .await
                    .unwrap(),
                4
            );
            let fixed = offsets.read_offset(&bad).await.unwrap().unwrap();
            assert_eq!(fixed.offset, Offset::Sequence(12));
        } else {
            let err = offsets
                .set_offset(&bad, Offset::Sequence(12))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_the_schema_twice_is_fine_and_namespaces_keep_offsets_apart() {
    let Some(contact_points) = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")
    else {
        return;
    };
    // Both opens run every CREATE ... IF NOT EXISTS, the offsets table's included.
    let first = Cassandra::open(config(&contact_points)).await.unwrap();
    let second = Cassandra::open(config(&contact_points)).await.unwrap();
    assert!(persistence_cassandra::schema_cql(first.config())
        .contains("CREATE TABLE IF NOT EXISTS persistence_tck.projection_offsets ("));

    let a = first.with_namespace(&namespace()).unwrap().stores().offsets;
    let b = second
        .with_namespace(&namespace())
        .unwrap()
        .stores()
        .offsets;
    let id = id("shared-name");
    assert_eq!(
        a.commit_offset(&id, 0, Offset::Sequence(5)).await.unwrap(),
        1
    );
    assert_eq!(b.read_offset(&id).await.unwrap(), None);
    assert_eq!(
        b.commit_offset(&id, 0, Offset::Sequence(7)).await.unwrap(),
        1
    );
    assert_eq!(
        a.read_offset(&id).await.unwrap().unwrap().offset,
        Offset::Sequence(5)
    );
}
