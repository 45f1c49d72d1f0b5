//! What the kit's durable-state cases cannot see of this backend: a row damaged by hand
//! is `Corrupt` naming the id and the column; many concurrent upserters across ids while
//! a reader resumes current change queries page by page (the change orderings' visibility
//! gap): no id's latest change is skipped; the same trap replayed deterministically on
//! PostgreSQL (an upsert held after taking its ordering while another of the tag commits):
//! with the tag lock nothing is missed, without it a resumed query never delivers the held
//! change; migration 3 applies to a database made before it, and opening again changes
//! nothing.
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`); each works in its own schema, dropped afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, QueryMode,
    Stores,
};
use persistence_sql::{schema, sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig};

fn postgres_url() -> Option<String> {
    persistence_tck::server_env("PERSISTENCE_POSTGRES_URL")
}

/// A schema name no other test (or run) uses.
fn pg_schema(case: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("state_{case}_{}_{nanos}", std::process::id())
}

fn pg_config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url).with_schema(schema);
    config.namespace = "st".into();
    config
}

fn sqlite_config(dir: &std::path::Path) -> SqliteConfig {
    let mut config = SqliteConfig::new(dir.join("state.db"));
    config.namespace = "st".into();
    config
}

/// Raw statements on either database, with `{t}` standing for the quoted name of a table
/// of the namespace `st`.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool, String),
}

impl Raw {
    fn name(&self, table: &str) -> String {
        match self {
            Raw::Sqlite(_) => format!("\"st_{table}\""),
            Raw::Postgres(_, schema) => format!("\"{schema}\".\"st_{table}\""),
        }
    }

    /// Runs `sql` with `{state}`, `{migrations}` and `{seq}` filled in.
    async fn exec(&self, sql: &str) {
        let sql = sql
            .replace("{state}", &self.name("durable_state"))
            .replace("{migrations}", &self.name("persistence_migrations"))
            .replace("{seq}", &self.name("durable_state_ordering_seq"));
        match self {
            Raw::Sqlite(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Raw::Postgres(pool, _) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    async fn drop_schema(&self) {
        if let Raw::Postgres(pool, schema) = self {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

fn pid(s: &str) -> PersistenceId {
    PersistenceId::new(s).unwrap()
}

fn state(text: &str) -> Payload {
    Payload::new("test", "test.State/v1", text.as_bytes().to_vec())
}

async fn current_changes(
    stores: &Stores,
    tag: &str,
    offset: Offset,
) -> persistence_api::Result<Vec<persistence_api::DurableStateChange>> {
    stores
        .durable_state
        .query_changes(tag.into(), offset, QueryMode::Current)
        .try_collect()
        .await
}

fn assert_corrupt(err: &persistence_api::Error, id: &str, column: &str) {
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:#}");
    assert_eq!(err.persistence_id(), Some(id), "{err:#}");
    assert!(err.to_string().contains(column), "names {column}: {err:#}");
}

// ---------------------------------------------------------------------------------------
// Corrupt rows.

async fn corrupt_rows(stores: &Stores, raw: &Raw) {
    let (a, b) = (pid("corrupt-a"), pid("corrupt-b"));
    for id in [&a, &b] {
        stores
            .durable_state
            .upsert(id, 1, state("ok"), Some("t".into()))
            .await
            .unwrap();
    }
    // A negative revision.
    raw.exec("UPDATE {state} SET revision = -3 WHERE persistence_id = 'corrupt-a'")
        .await;
    let e = stores.durable_state.get(&a).await.unwrap_err();
    assert_corrupt(&e, "corrupt-a", "revision");
    // A conflict read-back of that revision is corrupt too, not a conflict.
    let e = stores
        .durable_state
        .upsert(&a, 2, state("x"), None)
        .await
        .unwrap_err();
    assert_corrupt(&e, "corrupt-a", "revision");
    // The change query stops at it, naming it.
    let e = current_changes(stores, "t", Offset::NoOffset)
        .await
        .unwrap_err();
    assert_corrupt(&e, "corrupt-a", "revision");

    // Serializer columns NULL while the bytes stay.
    raw.exec("UPDATE {state} SET ser_id = NULL WHERE persistence_id = 'corrupt-b'")
        .await;
    let e = stores.durable_state.get(&b).await.unwrap_err();
    assert_corrupt(&e, "corrupt-b", "ser_id");
    raw.exec(
        "UPDATE {state} SET ser_id = 'test', ser_manifest = NULL WHERE persistence_id = 'corrupt-b'",
    )
    .await;
    let e = stores.durable_state.get(&b).await.unwrap_err();
    assert_corrupt(&e, "corrupt-b", "ser_manifest");
    // Bytes gone, serializer columns set: not a delete.
    raw.exec(
        "UPDATE {state} SET ser_manifest = 'm', payload = NULL WHERE persistence_id = 'corrupt-b'",
    )
    .await;
    let e = stores.durable_state.get(&b).await.unwrap_err();
    assert_corrupt(&e, "corrupt-b", "payload");
}

#[tokio::test]
async fn sqlite_corrupt_rows_are_corrupt_naming_id_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Sqlite::open(sqlite_config(dir.path())).await.unwrap();
    let raw = Raw::Sqlite(opened.pool().clone());
    corrupt_rows(&opened.stores(), &raw).await;
}

#[tokio::test]
async fn postgres_corrupt_rows_are_corrupt_naming_id_and_column() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("corrupt");
    let opened = Postgres::open(pg_config(&url, &schema)).await.unwrap();
    let raw = Raw::Postgres(opened.pool().clone(), schema);
    corrupt_rows(&opened.stores(), &raw).await;
    raw.drop_schema().await;
}

// ---------------------------------------------------------------------------------------
// No change skipped under concurrent writers.

const WRITERS: usize = 16;
const IDS_PER_WRITER: usize = 6;
const REVISIONS: u64 = 8;

/// `WRITERS` tasks upsert their own ids, round after round, all with one tag (the
/// orderings of concurrent transactions interleave), while a reader resumes current change
/// queries from its last offset, a few rows per page. When the writers are done the reader
/// resumes once more: every id must then have been read at its last revision. A change
/// committed after the reader had moved past its ordering would never be read again.
async fn no_change_skipped(stores: Stores) {
    let tag = "busy";
    let stores = Arc::new(stores);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let stores = stores.clone();
            tokio::spawn(async move {
                for revision in 1..=REVISIONS {
                    for i in 0..IDS_PER_WRITER {
                        let id = pid(&format!("w{w}-{i}"));
                        stores
                            .durable_state
                            .upsert(
                                &id,
                                revision,
                                state(&format!("{revision}")),
                                Some(tag.into()),
                            )
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut offset = Offset::NoOffset;
    let mut reads = 0usize;
    let read = async |offset: &mut Offset, seen: &mut HashMap<String, u64>| {
        let changes = current_changes(&stores, tag, offset.clone()).await.unwrap();
        for c in changes {
            let last = seen.entry(c.persistence_id.to_string()).or_default();
            assert!(
                c.revision > *last,
                "{} went back from {} to {}",
                c.persistence_id,
                last,
                c.revision
            );
            *last = c.revision;
            *offset = c.offset;
        }
    };
    while !writers.iter().all(|w| w.is_finished()) {
        read(&mut offset, &mut seen).await;
        reads += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    read(&mut offset, &mut seen).await;
    let missed: Vec<_> = (0..WRITERS)
        .flat_map(|w| (0..IDS_PER_WRITER).map(move |i| format!("w{w}-{i}")))
        .filter(|id| seen.get(id) != Some(&REVISIONS))
        .map(|id| (seen.get(&id).copied(), id))
        .collect();
    assert!(
        missed.is_empty(),
        "after {reads} resumed reads, ids whose latest change was skipped: {missed:?}"
    );
    assert!(reads > 1, "the reader ran while the writers wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_upserters_no_change_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    config.page_size = 7;
    no_change_skipped(persistence_sql::open(config).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_upserters_no_change_skipped() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("skip");
    let mut config = pg_config(&url, &schema);
    config.page_size = 7;
    config.max_connections = WRITERS as u32 + 4;
    let opened = Postgres::open(config).await.unwrap();
    no_change_skipped(opened.stores()).await;
    Raw::Postgres(opened.pool().clone(), schema)
        .drop_schema()
        .await;
}

// ---------------------------------------------------------------------------------------
// Migration 3 on a database made before it.

/// `reopen` opens the same database again. The first opening's data is made to look like
/// a database from before migration 3 (its table and record gone); the next opening adds
/// the table and keeps the journal, and a third changes nothing.
async fn migrates_existing(first: Stores, raw: &Raw, reopen: impl AsyncFn() -> Stores) {
    let id = pid("old-1");
    first
        .journal
        .write(AtomicWrite::single(PersistentEvent::new(id.clone(), 1, state("e"))).unwrap())
        .await
        .unwrap();
    let before = "DROP TABLE {state}; DELETE FROM {migrations} WHERE version = 3";
    match raw {
        Raw::Sqlite(_) => raw.exec(before).await,
        Raw::Postgres(..) => raw.exec(&format!("{before}; DROP SEQUENCE {{seq}}")).await,
    }
    let again = reopen().await;
    assert_eq!(again.journal.replay_all(&id).await.unwrap().len(), 1);
    again
        .durable_state
        .upsert(&id, 1, state("s1"), Some("t".into()))
        .await
        .unwrap();
    let third = reopen().await;
    let got = third.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (1, Some(state("s1"))));
    third.durable_state.delete(&id, 2).await.unwrap();
    let changes = current_changes(&third, "t", Offset::NoOffset)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].is_deleted());
}

#[tokio::test]
async fn sqlite_migration_3_applies_to_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path());
    assert!(schema::sqlite_ddl(&config).contains("\"st_durable_state\""));
    let opened = Sqlite::open(config.clone()).await.unwrap();
    let raw = Raw::Sqlite(opened.pool().clone());
    let reopen = async || persistence_sql::open(config.clone()).await.unwrap();
    migrates_existing(opened.stores(), &raw, reopen).await;
}

#[tokio::test]
async fn postgres_migration_3_applies_to_an_existing_database() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("migrate");
    let config = pg_config(&url, &schema);
    let ddl = schema::postgres_ddl(&config);
    assert!(ddl.contains("\"st_durable_state\"") && ddl.contains("st_durable_state_ordering_seq"));
    let opened = Postgres::open(config.clone()).await.unwrap();
    let raw = Raw::Postgres(opened.pool().clone(), schema);
    let reopen = async || persistence_sql::open(config.clone()).await.unwrap();
    migrates_existing(opened.stores(), &raw, reopen).await;
    raw.drop_schema().await;
}

// ---------------------------------------------------------------------------------------
// The visibility gap, replayed deterministically on PostgreSQL.

async fn wait_for_waiters(pool: &sqlx::PgPool, blocker: i32, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "WITH RECURSIVE w(pid) AS ( \
               SELECT a.pid FROM pg_stat_activity a WHERE $1 = ANY(pg_blocking_pids(a.pid)) \
               UNION \
               SELECT a.pid FROM pg_stat_activity a, w WHERE w.pid = ANY(pg_blocking_pids(a.pid)) \
             ) SELECT count(*) FROM w",
        )
        .bind(blocker)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} sessions waiting on {blocker}, saw {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds the upsert of `x` after it took its ordering (a transaction of the test holds an
/// uncommitted row of `x`, so the upsert's insert waits on the key), lets the upsert of `y`
/// of the same tag try to commit, reads the current changes, then lets `x` commit and
/// resumes from the last offset read. The ids of both reads.
async fn change_order(tag_order_lock: bool) -> (Vec<String>, Vec<String>) {
    let url = postgres_url().expect("checked by the caller");
    let schema = pg_schema(if tag_order_lock { "gap_on" } else { "gap_off" });
    let mut config = pg_config(&url, &schema);
    config.tag_order_lock = tag_order_lock;
    let opened = Postgres::open(config).await.unwrap();
    let stores = opened.stores();
    let pool = opened.pool().clone();
    let raw = Raw::Postgres(pool.clone(), schema.clone());

    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (persistence_id, revision, write_timestamp, ordering) \
         VALUES ('x', 1, 0, 0)",
        raw.name("durable_state")
    )))
    .execute(&mut *blocker)
    .await
    .unwrap();
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();

    let upsert = |id: &'static str| {
        let stores = stores.clone();
        tokio::spawn(async move {
            stores
                .durable_state
                .upsert(&pid(id), 1, state(id), Some("t".into()))
                .await
        })
    };
    let write_x = upsert("x");
    wait_for_waiters(&pool, blocker_pid, 1).await;
    let mut write_y = Some(upsert("y"));
    if tag_order_lock {
        // y waits for x's tag lock.
        wait_for_waiters(&pool, blocker_pid, 2).await;
    } else if let Some(y) = write_y.take() {
        y.await
            .unwrap()
            .expect("y commits at once without the lock");
    }
    let ids = |v: Vec<persistence_api::DurableStateChange>| -> (Vec<String>, Offset) {
        let last = v.last().map(|c| c.offset.clone());
        (
            v.iter().map(|c| c.persistence_id.to_string()).collect(),
            last.unwrap_or(Offset::NoOffset),
        )
    };
    let (first, resume_from) = ids(current_changes(&stores, "t", Offset::NoOffset)
        .await
        .unwrap());
    blocker.rollback().await.unwrap();
    write_x
        .await
        .unwrap()
        .expect("x commits once the blocker is gone");
    if let Some(y) = write_y {
        y.await.unwrap().expect("y commits after x");
    }
    let (second, _) = ids(current_changes(&stores, "t", resume_from).await.unwrap());
    raw.drop_schema().await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_change_order_with_tag_lock_misses_nothing() {
    if postgres_url().is_none() {
        return;
    }
    let (first, second) = change_order(true).await;
    assert!(
        first.is_empty(),
        "nothing visible while x is in flight: {first:?}"
    );
    assert_eq!(second, vec!["x", "y"], "x (the lower ordering) then y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_change_order_without_tag_lock_shows_the_trap() {
    if postgres_url().is_none() {
        return;
    }
    let (first, second) = change_order(false).await;
    assert_eq!(
        first,
        vec!["y"],
        "y committed while x held a lower ordering"
    );
    assert!(
        second.is_empty(),
        "resuming after y never delivers x: the trap the lock closes ({second:?})"
    );
}
