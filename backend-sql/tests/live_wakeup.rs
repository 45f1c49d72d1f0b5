//! Live queries wake on writes instead of waiting for the next poll.
//!
//! - PostgreSQL: a write through one opened database wakes a live query of *another*
//!   (separate pool, as in another process) through `LISTEN/NOTIFY`, with a poll interval
//!   of 60 s that would otherwise hold it back.
//! - SQLite: a write through the same opened database wakes its live queries in-process;
//!   writes from another opened database (another process) are found by polling.
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`).

use persistence_api::ReadJournalExt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent};
use persistence_sql::{sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig};

const SLOW_POLL: Duration = Duration::from_secs(60);

fn event(id: &str, seq: u64) -> AtomicWrite {
    let id = PersistenceId::new(id).unwrap();
    AtomicWrite::single(
        PersistentEvent::new(id, seq, Payload::raw(vec![1, 2, 3])).with_tags(["live"]),
    )
    .unwrap()
}

/// The next item of a live stream within 10 s (the poll interval is 60 s, so only a
/// wake-up delivers a write made after the query caught up); `what` names it.
async fn next<T>(
    s: &mut (impl futures::Stream<Item = persistence_api::Result<T>> + Unpin),
    what: &str,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap_or_else(|_| {
            panic!("{what} did not arrive within 10 s: the live query was not woken")
        })
        .expect("live streams never complete")
        .unwrap()
}

/// Writes through `write` once the live queries of `read` are sure to be woken, and
/// returns how long the event took to arrive.
///
/// No sleep decides when that is: two warm-up events (`<id>-w1`, `<id>-w2`) are written
/// one after the other, each awaited on both queries. The first may come from the
/// queries' first read; the second, written after the first arrived, can only come by a
/// wake-up (a notification, or PostgreSQL's listener announcing it has connected), so once
/// it has arrived the wake-up path is in place and the timed write can only be delivered
/// by it.
async fn delay(
    read: &persistence_api::Stores,
    write: &persistence_api::Stores,
    id: &str,
) -> Duration {
    let mut live = read
        .read_journal
        .events_by_tag("live".into(), Offset::NoOffset);
    let mut persistence_ids = read.read_journal.persistence_ids();
    for warm in [format!("{id}-w1"), format!("{id}-w2")] {
        write.journal.write(event(&warm, 1)).await.unwrap();
        let env = next(&mut live, &format!("warm-up event {warm}")).await;
        assert_eq!(env.event.persistence_id.as_str(), warm);
        let new_id = next(&mut persistence_ids, &format!("warm-up id {warm}")).await;
        assert_eq!(new_id.as_str(), warm);
    }
    let start = Instant::now();
    write.journal.write(event(id, 1)).await.unwrap();
    let env = next(&mut live, "the live tag query's event").await;
    let elapsed = start.elapsed();
    assert_eq!(env.event.persistence_id.as_str(), id);
    let new_id = next(&mut persistence_ids, "the live persistence-ids query's id").await;
    assert_eq!(new_id.as_str(), id);
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_other_instances() {
    let Some(url) = persistence_tck::server_env("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let schema = format!("live_{}", std::process::id());
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.poll_interval = SLOW_POLL;
    let reader = Postgres::open(config.clone()).await.unwrap();
    let writer = Postgres::open(config).await.unwrap();
    let took = delay(&reader.stores(), &writer.stores(), "pg-a").await;
    eprintln!("postgres: delivered {took:?} after the write (poll interval {SLOW_POLL:?})");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(reader.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wakes_in_process_and_polls_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/live.db");
    let mut config = SqliteConfig::new(&path);
    config.poll_interval = SLOW_POLL;
    let one = Sqlite::open(config.clone()).await.unwrap();
    assert!(path.exists(), "the file and its directories are created");
    let took = delay(&one.stores(), &one.stores(), "lite-a").await;
    eprintln!("sqlite, same stores: delivered {took:?} after the write");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Another opened database on the same file stands for another process: polling.
    config.poll_interval = Duration::from_millis(200);
    let reader = Sqlite::open(config.clone()).await.unwrap();
    let writer = Sqlite::open(config).await.unwrap();
    let mut live = reader
        .stores()
        .read_journal
        .events_by_tag("live".into(), Offset::NoOffset);
    for warm in ["lite-a-w1", "lite-a-w2", "lite-a"] {
        let env = live.next().await.unwrap().unwrap();
        assert_eq!(
            env.event.persistence_id.as_str(),
            warm,
            "the earlier events first"
        );
    }
    let start = Instant::now();
    writer
        .stores()
        .journal
        .write(event("lite-b", 1))
        .await
        .unwrap();
    let env = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("polling finds the other process's write")
        .unwrap()
        .unwrap();
    assert_eq!(env.event.persistence_id.as_str(), "lite-b");
    eprintln!(
        "sqlite, other stores: delivered {:?} after the write",
        start.elapsed()
    );
}
