//! What the kit does not ask but this backend promises: the SQLite file survives a restart
//! (the quick start's default), a deleted sequence number stays taken, migrations are
//! idempotent and safe to run concurrently, and an unreachable server is a retryable
//! `Unavailable`/`Timeout`, never a panic.
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`).

use persistence_api::ReadJournalExt;
use std::time::Duration;

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Payload, PersistenceId, PersistentEvent, SnapshotMetadata,
    SnapshotSelectionCriteria, Stores, Timestamp,
};
use persistence_sql::{schema, sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig};

fn postgres_url() -> Option<String> {
    persistence_tck::server_env("PERSISTENCE_POSTGRES_URL")
}

fn write(id: &PersistenceId, from: u64, to: u64) -> AtomicWrite {
    AtomicWrite::new(
        (from..=to)
            .map(|s| {
                PersistentEvent::new(id.clone(), s, Payload::raw(vec![s as u8]))
                    .with_tags(["t"])
                    .with_writer_id("w")
            })
            .collect(),
    )
    .unwrap()
}

async fn deleted_sequence_numbers_stay_taken(stores: &Stores) {
    let id = PersistenceId::new("deleted").unwrap();
    stores.journal.write(write(&id, 1, 3)).await.unwrap();
    stores.journal.delete_events_to(&id, 2).await.unwrap();
    let again = stores.journal.write(write(&id, 2, 2)).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict, "{again}");
    let taken = stores.journal.write(write(&id, 3, 4)).await.unwrap_err();
    assert_eq!(taken.kind(), ErrorKind::Conflict, "{taken}");
    // Nothing of the refused writes was stored; the next number is free.
    assert_eq!(stores.journal.highest_sequence_nr(&id).await.unwrap(), 3);
    stores.journal.write(write(&id, 4, 5)).await.unwrap();
    let seqs: Vec<u64> = stores
        .journal
        .replay_all(&id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence_nr)
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    // Tag rows of deleted events are gone with them.
    let tagged: Vec<_> = stores
        .read_journal
        .current_events_by_tag("t".into(), persistence_api::Offset::NoOffset)
        .map(|e| e.unwrap().event.sequence_nr)
        .collect()
        .await;
    assert_eq!(tagged, vec![3, 4, 5]);
}

#[tokio::test]
async fn sqlite_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/deeper/app.db");
    let id = PersistenceId::new("account-1").unwrap();
    {
        let opened = Sqlite::open(SqliteConfig::new(&path)).await.unwrap();
        let stores = opened.stores();
        stores.journal.write(write(&id, 1, 3)).await.unwrap();
        stores
            .snapshots
            .save_snapshot(
                SnapshotMetadata::new(id.clone(), 2).with_timestamp(Timestamp::from_millis(7)),
                Payload::raw(b"state at 2".to_vec()),
            )
            .await
            .unwrap();
        opened.close().await;
    }
    assert!(path.is_file());
    let stores = persistence_sql::open(SqliteConfig::new(&path))
        .await
        .unwrap();
    assert_eq!(stores.journal.highest_sequence_nr(&id).await.unwrap(), 3);
    assert_eq!(stores.journal.replay_all(&id).await.unwrap().len(), 3);
    let snapshot = stores
        .snapshots
        .load_snapshot(&id, SnapshotSelectionCriteria::latest())
        .await
        .unwrap()
        .expect("the snapshot is back");
    assert_eq!(snapshot.snapshot.bytes.as_ref(), b"state at 2");
    assert_eq!(snapshot.metadata.timestamp, Timestamp::from_millis(7));
    // The next write continues after what the first run left.
    stores.journal.write(write(&id, 4, 4)).await.unwrap();
    let dup = stores.journal.write(write(&id, 3, 3)).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn sqlite_deleted_sequence_numbers_stay_taken() {
    let dir = tempfile::tempdir().unwrap();
    let stores = persistence_sql::open(SqliteConfig::new(dir.path().join("d.db")))
        .await
        .unwrap();
    deleted_sequence_numbers_stay_taken(&stores).await;
}

#[tokio::test]
async fn sqlite_migrations_by_hand_then_open_without_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("m.db"));
    config.namespace = "app".into();
    persistence_sql::create_schema(&config).await.unwrap();
    persistence_sql::create_schema(&config).await.unwrap();
    config.create_schema = false;
    let stores = persistence_sql::open(config.clone()).await.unwrap();
    let id = PersistenceId::new("a").unwrap();
    stores.journal.write(write(&id, 1, 1)).await.unwrap();
    assert!(schema::sqlite_ddl(&config).contains("\"app_event_journal\""));
}

#[tokio::test]
async fn sqlite_unwritable_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = persistence_sql::open(SqliteConfig::new(file.join("db.sqlite")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn postgres_deleted_sequence_numbers_stay_taken() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("deleted_{}", std::process::id());
    let opened = Postgres::open(PostgresConfig::new(url).with_schema(&schema))
        .await
        .unwrap();
    deleted_sequence_numbers_stay_taken(&opened.stores()).await;
    drop_schema(opened.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_and_prefixes() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("migr_{}", std::process::id());
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.namespace = "app".into();
    // Eight processes starting at once: the advisory lock lets one create, the rest see it.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { persistence_sql::create_schema(&config).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    config.create_schema = false;
    let opened = Postgres::open(config.clone()).await.unwrap();
    let stores = opened.stores();
    let id = PersistenceId::new("a").unwrap();
    stores.journal.write(write(&id, 1, 2)).await.unwrap();
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".app_persistence_migrations"
    )))
    .fetch_one(opened.pool())
    .await
    .unwrap();
    assert_eq!(applied, schema::POSTGRES_MIGRATIONS.len() as i64);
    assert!(schema::postgres_ddl(&config).contains(&format!("\"{schema}\".\"app_event_journal\"")));
    drop_schema(opened.pool(), &schema).await;
}

#[tokio::test]
async fn postgres_unreachable_server_is_retryable() {
    // Nothing listens on port 1.
    let mut config = PostgresConfig::new("postgres://nobody:secret@127.0.0.1:1/nothing");
    config.acquire_timeout = Duration::from_secs(2);
    let err = persistence_sql::open(config).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(!format!("{err:?}").contains("secret"), "{err:?}");
}

#[tokio::test]
async fn bad_configuration_is_config_invalid() {
    let err = persistence_sql::open(PostgresConfig::new("mysql://x").with_schema("s"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    let err = persistence_sql::open(PostgresConfig::new("postgres://x/y").with_schema("bad-name"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

async fn batch_with_a_conflict_in_the_middle(stores: &Stores) {
    let (a, b, c) = (
        PersistenceId::new("batch-a").unwrap(),
        PersistenceId::new("batch-b").unwrap(),
        PersistenceId::new("batch-c").unwrap(),
    );
    stores.journal.write(write(&b, 1, 1)).await.unwrap();
    let results = stores
        .journal
        .write_events(vec![
            write(&a, 1, 2),
            write(&b, 1, 2),
            write(&c, 1, 1),
            write(&a, 3, 3),
        ])
        .await
        .unwrap();
    assert!(
        results[0].is_ok() && results[2].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(stores.journal.replay_all(&a).await.unwrap().len(), 3);
    assert_eq!(stores.journal.replay_all(&b).await.unwrap().len(), 1);
    assert_eq!(stores.journal.highest_sequence_nr(&b).await.unwrap(), 1);
    assert_eq!(stores.journal.replay_all(&c).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_batch_with_a_conflict_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let stores = persistence_sql::open(SqliteConfig::new(dir.path().join("b.db")))
        .await
        .unwrap();
    batch_with_a_conflict_in_the_middle(&stores).await;
}

#[tokio::test]
async fn postgres_batch_with_a_conflict_in_the_middle() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("batch_{}", std::process::id());
    let opened = Postgres::open(PostgresConfig::new(url).with_schema(&schema))
        .await
        .unwrap();
    batch_with_a_conflict_in_the_middle(&opened.stores()).await;
    drop_schema(opened.pool(), &schema).await;
}

#[tokio::test]
async fn postgres_without_notify_or_tag_lock_still_writes_and_reads() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("plain_{}", std::process::id());
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.notify = false;
    config.tag_order_lock = false;
    config.poll_interval = Duration::from_millis(50);
    let opened = Postgres::open(config).await.unwrap();
    let stores = opened.stores();
    let id = PersistenceId::new("plain").unwrap();
    let mut live = stores
        .read_journal
        .events_by_tag("t".into(), persistence_api::Offset::NoOffset);
    stores.journal.write(write(&id, 1, 1)).await.unwrap();
    stores.journal.write(write(&id, 2, 4)).await.unwrap();
    for seq in 1..=4 {
        let env = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("polling delivers")
            .unwrap()
            .unwrap();
        assert_eq!(env.event.sequence_nr, seq);
    }
    drop_schema(opened.pool(), &schema).await;
}

/// PostgreSQL's B-tree entries hold at most 2,704 bytes: a tag longer than the tag table's
/// and the changes index's keys take (2,600 bytes) is `Rejected` naming the id, before
/// anything is written (it used to fail the statement with `Storage`); a tag of 2,600
/// bytes of letters no compression shortens is stored and queried.
#[tokio::test]
async fn postgres_tags_longer_than_the_index_takes_are_rejected() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("longtag_{}", std::process::id());
    let opened = Postgres::open(PostgresConfig::new(url).with_schema(&schema))
        .await
        .unwrap();
    let stores = opened.stores();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let letters = |n: usize, x: &mut u64| -> String {
        (0..n)
            .map(|_| {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                (b'a' + (*x % 26) as u8) as char
            })
            .collect()
    };
    let id = PersistenceId::new("long-tag").unwrap();
    let too_long = letters(2_601, &mut x);
    let event = |seq: u64, tag: &str| {
        PersistentEvent::new(id.clone(), seq, Payload::raw(vec![1])).with_tags([tag.to_owned()])
    };
    let err = stores
        .journal
        .write(AtomicWrite::single(event(1, &too_long)).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("long-tag"), "{err}");
    assert_eq!(stores.journal.highest_sequence_nr(&id).await.unwrap(), 0);
    let err = stores
        .durable_state
        .upsert(&id, 1, Payload::raw(vec![1]), Some(too_long.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(stores.durable_state.get(&id).await.unwrap().is_none());

    let longest = letters(2_600, &mut x);
    stores
        .journal
        .write(AtomicWrite::single(event(1, &longest)).unwrap())
        .await
        .unwrap();
    let tagged: Vec<_> = stores
        .read_journal
        .current_events_by_tag(longest.clone(), persistence_api::Offset::NoOffset)
        .collect()
        .await;
    assert_eq!(tagged.len(), 1);
    stores
        .durable_state
        .upsert(&id, 1, Payload::raw(vec![1]), Some(longest))
        .await
        .unwrap();
    drop_schema(opened.pool(), &schema).await;
}
