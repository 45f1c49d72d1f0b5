//! The visibility-gap trap of events by tag, on both databases.
//!
//! 1. `many_writers_*`: 16 concurrent writers of one tag, 4 more that write two ids per
//!    call with two tags per event (in either order), plus writers of other tags and
//!    untagged events that leave holes in the global ordering; a live tag query and a
//!    reader that keeps resuming current queries from its last offset: both must see every
//!    event exactly once, each id in sequence order.
//! 2. `postgres_commit_order_*`: a deterministic replay of the trap. A writer is held in the
//!    middle of its transaction after it took its ordering, while a second writer of the same
//!    tag commits; a reader then reads. With `tag_order_lock` (the default) the second writer
//!    waits and the reader misses nothing; with the lock turned off the reader's offset moves
//!    past the held event and a resumed query never delivers it: the trap is real, and the
//!    lock is what closes it.
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`).

use persistence_api::ReadJournalExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, EventEnvelope, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, Stores,
};
use persistence_sql::{sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig};

const WRITERS: usize = 16;
const WRITES_PER_WRITER: u64 = 40;
/// Tasks that write two ids per call (one transaction for the call on both databases).
const BATCH_WRITERS: usize = 4;
/// Every id of tag "hot".
const HOT_IDS: usize = WRITERS + 2 * BATCH_WRITERS;

fn postgres_url() -> Option<String> {
    persistence_tck::server_env("PERSISTENCE_POSTGRES_URL")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{:x}_{}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

fn event(id: &PersistenceId, seq: u64, tags: &[&str]) -> PersistentEvent {
    PersistentEvent::new(
        id.clone(),
        seq,
        Payload::raw(format!("{id}#{seq}").into_bytes()),
    )
    .with_tags(tags.iter().copied())
}

/// Every event of `tag` exactly once, each id in sequence order.
fn check_exactly_once(seen: &[EventEnvelope], expected_per_id: u64, ids: usize, who: &str) {
    let mut per_id: HashMap<String, Vec<u64>> = HashMap::new();
    let mut last_offset = 0;
    for env in seen {
        let Offset::Sequence(o) = env.offset else {
            panic!("{who}: offset {:?}", env.offset)
        };
        assert!(o > last_offset, "{who}: offsets not increasing");
        last_offset = o;
        per_id
            .entry(env.event.persistence_id.to_string())
            .or_default()
            .push(env.event.sequence_nr);
    }
    assert_eq!(per_id.len(), ids, "{who}: ids seen");
    for (id, seqs) in per_id {
        let want: Vec<u64> = (1..=expected_per_id).collect();
        assert_eq!(
            seqs, want,
            "{who}: events of {id} (missing, repeated or out of order)"
        );
    }
}

async fn many_writers(stores: Stores) {
    let tag = "hot".to_string();
    let total = HOT_IDS as u64 * WRITES_PER_WRITER;

    // A live query started before anything is written.
    let mut live = stores
        .read_journal
        .events_by_tag(tag.clone(), Offset::NoOffset);
    let live_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while (seen.len() as u64) < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, live.next()).await {
                Ok(Some(Ok(env))) => seen.push(env),
                other => panic!("live query ended early after {}: {other:?}", seen.len()),
            }
        }
        // Nothing more may arrive (no repeats).
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(300), live.next()).await
        {
            panic!("live query delivered more than was written: {extra:?}");
        }
        seen
    });

    // A reader that resumes current queries from its last offset, as a projection would.
    let reader_stores = stores.clone();
    let reader_tag = tag.clone();
    let resuming_task = tokio::spawn(async move {
        let mut seen: Vec<EventEnvelope> = Vec::new();
        let mut offset = Offset::NoOffset;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (seen.len() as u64) < total && Instant::now() < deadline {
            let page: Vec<_> = reader_stores
                .read_journal
                .current_events_by_tag(reader_tag.clone(), offset.clone())
                .collect()
                .await;
            for env in page {
                let env = env.expect("current query");
                offset = env.offset.clone();
                seen.push(env);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    });

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let stores = stores.clone();
        writers.push(tokio::spawn(async move {
            let id = PersistenceId::new(format!("writer-{w}")).unwrap();
            let mut seq = 1;
            while seq <= WRITES_PER_WRITER {
                // Alternate single events and atomic pairs.
                let n = if seq % 3 == 0 && seq < WRITES_PER_WRITER {
                    2
                } else {
                    1
                };
                let events = (seq..seq + n).map(|s| event(&id, s, &["hot"])).collect();
                stores
                    .journal
                    .write(AtomicWrite::new(events).unwrap())
                    .await
                    .expect("write");
                seq += n;
            }
        }));
    }
    // Writers of two ids per call, with two tags per event in either order.
    for w in 0..BATCH_WRITERS {
        let stores = stores.clone();
        writers.push(tokio::spawn(async move {
            let a = PersistenceId::new(format!("batch-{w}-a")).unwrap();
            let b = PersistenceId::new(format!("batch-{w}-b")).unwrap();
            let tags: &[&str] = if w % 2 == 0 {
                &["hot", "cold"]
            } else {
                &["cold", "hot"]
            };
            for seq in 1..=WRITES_PER_WRITER {
                let results = stores
                    .journal
                    .write_events(vec![
                        AtomicWrite::single(event(&a, seq, tags)).unwrap(),
                        AtomicWrite::single(event(&b, seq, tags)).unwrap(),
                    ])
                    .await
                    .expect("write call");
                for r in results {
                    r.expect("write");
                }
            }
        }));
    }
    // Writers of other tags and untagged events: holes in the global ordering.
    for w in 0..4 {
        let stores = stores.clone();
        writers.push(tokio::spawn(async move {
            let id = PersistenceId::new(format!("other-{w}")).unwrap();
            for seq in 1..=WRITES_PER_WRITER {
                let tags: &[&str] = if seq % 2 == 0 { &["cold"] } else { &[] };
                stores
                    .journal
                    .write(AtomicWrite::single(event(&id, seq, tags)).unwrap())
                    .await
                    .expect("write");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }

    let live_seen = live_task.await.expect("live reader");
    check_exactly_once(&live_seen, WRITES_PER_WRITER, HOT_IDS, "live query");
    let resumed = resuming_task.await.expect("resuming reader");
    check_exactly_once(
        &resumed,
        WRITES_PER_WRITER,
        HOT_IDS,
        "resumed current queries",
    );
    // And a final current query from the start agrees.
    let all: Vec<_> = stores
        .read_journal
        .current_events_by_tag(tag, Offset::NoOffset)
        .map(|e| e.expect("current"))
        .collect()
        .await;
    check_exactly_once(&all, WRITES_PER_WRITER, HOT_IDS, "final current query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_writers_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Sqlite::open(SqliteConfig::new(dir.path().join("gaps.db")))
        .await
        .unwrap();
    many_writers(opened.stores()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_writers_postgres() {
    let Some(url) = postgres_url() else { return };
    let schema = unique("gaps");
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.max_connections = 24;
    let opened = Postgres::open(config).await.unwrap();
    many_writers(opened.stores()).await;
    drop_schema(opened.pool(), &schema).await;
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until at least `n` sessions wait, directly or through others, on `blocker`.
async fn wait_for_waiters(pool: &sqlx::PgPool, blocker: i32, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
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
            Instant::now() < deadline,
            "expected {n} sessions waiting on {blocker}, saw {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds writer `x` after it took its ordering, lets writer `y` of the same tag try to
/// commit, reads, releases `x`, and resumes reading from the offset read before. Returns
/// the ids each read delivered.
async fn commit_order(tag_order_lock: bool) -> (Vec<String>, Vec<String>) {
    let url = postgres_url().expect("checked by the caller");
    let schema = unique(if tag_order_lock {
        "order_on"
    } else {
        "order_off"
    });
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.tag_order_lock = tag_order_lock;
    let opened = Postgres::open(config).await.unwrap();
    let stores = opened.stores();
    let pool = opened.pool().clone();
    let x = PersistenceId::new("x").unwrap();
    let y = PersistenceId::new("y").unwrap();

    // An uncommitted row at (x, 1): the journal's write of (x, 1) takes its ordering, then
    // waits on the primary key until this transaction ends.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".event_journal (persistence_id, sequence_nr, writer_id, \
         write_timestamp, event_manifest, ser_id, ser_manifest, payload) \
         VALUES ('x', 1, '', 0, '', '', '', '')"
    )))
    .execute(&mut *blocker)
    .await
    .unwrap();
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();

    let sx = stores.clone();
    let ex = event(&x, 1, &["t"]);
    let write_x =
        tokio::spawn(async move { sx.journal.write(AtomicWrite::single(ex).unwrap()).await });
    wait_for_waiters(&pool, blocker_pid, 1).await;

    let sy = stores.clone();
    let ey = event(&y, 1, &["t"]);
    let mut write_y = Some(tokio::spawn(async move {
        sy.journal.write(AtomicWrite::single(ey).unwrap()).await
    }));
    if tag_order_lock {
        // y waits for x's tag lock.
        wait_for_waiters(&pool, blocker_pid, 2).await;
    } else if let Some(y) = write_y.take() {
        y.await
            .unwrap()
            .expect("y commits at once without the lock");
    }

    let read = |offset: Offset| {
        let stores = stores.clone();
        async move {
            stores
                .read_journal
                .current_events_by_tag("t".into(), offset)
                .map(|e| e.expect("current"))
                .collect::<Vec<_>>()
                .await
        }
    };
    let first = read(Offset::NoOffset).await;
    let resume_from = first.last().map_or(Offset::NoOffset, |e| e.offset.clone());

    blocker.rollback().await.unwrap();
    write_x
        .await
        .unwrap()
        .expect("x commits once the blocker is gone");
    if let Some(y) = write_y {
        y.await.unwrap().expect("y commits after x");
    }
    let second = read(resume_from).await;

    let ids = |v: &[EventEnvelope]| {
        v.iter()
            .map(|e| e.event.persistence_id.to_string())
            .collect()
    };
    let result = (ids(&first), ids(&second));
    drop_schema(&pool, &schema).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_commit_order_with_tag_lock_misses_nothing() {
    if postgres_url().is_none() {
        return;
    }
    let (first, second) = commit_order(true).await;
    assert!(
        first.is_empty(),
        "nothing is visible while x is in flight: {first:?}"
    );
    assert_eq!(second, vec!["x", "y"], "x (the lower ordering) then y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_commit_order_without_tag_lock_shows_the_trap() {
    if postgres_url().is_none() {
        return;
    }
    let (first, second) = commit_order(false).await;
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
