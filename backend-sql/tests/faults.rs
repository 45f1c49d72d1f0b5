//! PostgreSQL goes away mid-write: the pool talks to the server through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole exchange of one write (`BEGIN`, the write
//! statement, `COMMIT`), including the last byte before `COMMIT` reaches the server and the
//! moment right after it (committed, but no answer: the ambiguous case). After every cut the
//! caller must hold a retryable error (`Unavailable`/`Timeout`), and a second store talking
//! to the server directly must see the atomic write wholly or not at all: in replay, in
//! `highest_sequence_nr` and in events-by-tag. Then the proxy is restored and the same pool
//! must work again: a retry of the same write succeeds (nothing was stored) or gets
//! `Conflict` (it was), and the next write succeeds.
//!
//! Each test uses a fresh schema, dropped at the end.
//!
//! `source .servers/postgres/env && cargo test -p persistence-sql --test faults`
#![cfg(feature = "postgres")]

use std::time::Duration;

use persistence_api::{ErrorKind, JournalExt, Stores};
use persistence_sql::{sqlx, Postgres, PostgresConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::sweep::{batch, expected, pid_of, seen, server_env, tag_of, unique, Shape};

const SINGLE: Shape = Shape {
    name: "single",
    events: 1,
    tagged: false,
    points: 40,
};

const BATCH100: Shape = Shape {
    name: "batch100",
    events: 100,
    tagged: true,
    points: 40,
};

/// The bytes of the `COMMIT` message: `'Q'`, a 4-byte length and `"COMMIT\0"`.
const COMMIT_BYTES: u64 = 12;

/// The bytes of the ping (`Sync`) sqlx sends when a connection goes back to the pool: the
/// last bytes of every write's exchange, after `COMMIT`.
const RELEASE_PING_BYTES: u64 = 5;

/// How long the connection's traffic is given to settle after a write returns.
const SETTLE: Duration = Duration::from_millis(30);

struct Env {
    proxy: FaultProxy,
    /// Through the proxy.
    via: Stores,
    /// Its pool (one connection).
    via_pool: sqlx::PgPool,
    /// Straight to the server, same schema: the judge.
    direct: Stores,
    admin: sqlx::PgPool,
    schema: String,
}

impl Env {
    async fn drop_schema(&self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )))
        .execute(&self.admin)
        .await;
    }
}

/// `host:port` of a `postgres://user:password@host:port/db?...` URL, and the URL with
/// `host:port` replaced by `with`.
fn split_url(url: &str, with: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let auth_end = rest.rfind('@').map(|i| i + 1).unwrap_or(0);
    let host_end = rest[auth_end..]
        .find(['/', '?'])
        .map(|i| auth_end + i)
        .unwrap_or(rest.len());
    let host = &rest[auth_end..host_end];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let rewritten = format!(
        "{scheme}://{}{with}{}",
        &rest[..auth_end],
        &rest[host_end..]
    );
    (host, rewritten)
}

async fn env(shape: &str) -> Option<Env> {
    let url = server_env("PERSISTENCE_POSTGRES_URL")?;
    let (target, _) = split_url(&url, "");
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let (_, via_url) = split_url(&url, &proxy.addr().to_string());
    let schema = format!("faults_{shape}_{}", unique() % 1_000_000_000_000);
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect directly");
    let mut direct = PostgresConfig::new(url).with_schema(schema.clone());
    direct.max_connections = 2;
    let direct = Postgres::open(direct).await.expect("direct store");
    let mut via = PostgresConfig::new(via_url).with_schema(schema.clone());
    // One connection: every write runs on it (prepared statements cached), so each cut
    // write sends the same bytes as the calibration.
    via.max_connections = 1;
    via.acquire_timeout = Duration::from_secs(2);
    via.create_schema = false;
    let via = Postgres::open(via).await.expect("proxied store");
    Some(Env {
        proxy,
        via: via.stores(),
        via_pool: via.pool().clone(),
        direct: direct.stores(),
        admin,
        schema,
    })
}

/// The calibration cases: as long as the other case names (`c000`...), so their exchanges
/// have the same size as the others'.
const CALIBRATE: [&str; 2] = ["k000", "k001"];

/// Writes event 1, then the cut write (events `2..=1+shape.events`) with the proxy set to
/// cut after `cut` bytes (`None`: no cut). Returns the write's result and the bytes the
/// write sent.
async fn cut_write(
    env: &Env,
    shape: Shape,
    case: &str,
    cut: Option<u64>,
) -> (persistence_api::Result<()>, u64) {
    let pid = pid_of(shape, case);
    let tag = tag_of(case);
    let tag = shape.tagged.then_some(tag.as_str());
    // Through the proxy too: the pool's connection is then open and its statements
    // prepared, so the cut write sends the same bytes every time.
    env.via
        .journal
        .write(batch(&pid, 1, 1, tag))
        .await
        .unwrap_or_else(|e| panic!("{case}: the write of event 1 failed: {e:?}"));
    // The server process of the pool's one connection, which the cut write will use.
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&env.via_pool)
        .await
        .expect("the backend pid");
    // Let that query's release ping finish before counting.
    tokio::time::sleep(SETTLE).await;
    let before = env.proxy.forwarded();
    if let Some(n) = cut {
        env.proxy.cut_after(n);
    }
    let result = env
        .via
        .journal
        .write(batch(&pid, 2, shape.events, tag))
        .await;
    // sqlx pings a connection when it goes back to the pool, in a task of its own: let
    // that ping run under the same budget (so every exchange has the same bytes) and
    // finish before the proxy is restored.
    tokio::time::sleep(SETTLE).await;
    env.proxy.restore();
    let sent = env.proxy.forwarded() - before;
    if cut.is_some_and(|n| sent >= n) {
        // The connection was cut (the proxy cuts once the budget is used up). The server
        // may still be working on what reached it (a COMMIT sent but not yet executed
        // commits a moment later): judge only once its process has ended.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let alive: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(backend)
                    .fetch_one(&env.admin)
                    .await
                    .expect("pg_stat_activity");
            if alive == 0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                let activity: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
                    "SELECT state, query, wait_event FROM pg_stat_activity WHERE pid = $1",
                )
                .bind(backend)
                .fetch_one(&env.admin)
                .await
                .expect("pg_stat_activity");
                panic!(
                    "{case}: the server process of the cut connection is still alive after 10 s \
                     (cut after {cut:?}, sent {sent}, result {result:?}, activity {activity:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (result, sent)
}

async fn run(shape: Shape) {
    let Some(env) = env(shape.name).await else {
        return;
    };
    let last = 1 + shape.events;

    // Calibrate: the same write uncut, to learn its size in bytes. Twice: the first one
    // also prepares the statements of this write's shape on the pool's connection.
    let mut size = 0;
    for case in CALIBRATE {
        let (result, bytes) = cut_write(&env, shape, case, None).await;
        result.expect("the uncut write succeeds");
        size = bytes;
        let pid = pid_of(shape, case);
        assert_eq!(
            seen(&env.direct, &pid, &tag_of(case)).await,
            expected(&pid, last, shape, &tag_of(case))
        );
    }
    assert!(
        size > COMMIT_BYTES + RELEASE_PING_BYTES + 4,
        "the proxy forwarded {size} bytes: is traffic bypassing it?"
    );

    let step = (size / shape.points).max(1);
    let mut cuts: Vec<u64> = (0..shape.points).map(|i| i * step).collect();
    // Every byte around COMMIT: all but COMMIT, COMMIT in part, COMMIT sent but
    // unanswered (the ambiguous case), the answer received but the release ping cut, and
    // past the end.
    let commit_end = size - RELEASE_PING_BYTES;
    cuts.extend(commit_end - COMMIT_BYTES - 4..=size + 2);
    cuts.push(size + 1000);
    cuts.sort_unstable();
    cuts.dedup();

    let started = std::time::Instant::now();
    let (mut failed, mut stored_anyway, mut ok) = (0, 0, 0);
    for (i, &n) in cuts.iter().enumerate() {
        let case = format!("c{i:03}");
        let pid = pid_of(shape, &case);
        let tag = tag_of(&case);
        let (result, _) = cut_write(&env, shape, &case, Some(n)).await;
        if let Err(e) = &result {
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) && e.is_retryable(),
                "{} cut after {n} of {size} bytes: the error must be retryable Unavailable/Timeout, got {e:?}",
                shape.name
            );
        }
        let before = expected(&pid, 1, shape, &tag);
        let after = expected(&pid, last, shape, &tag);
        let now = seen(&env.direct, &pid, &tag).await;
        let applied = if now == after {
            true
        } else if now == before {
            false
        } else {
            panic!(
                "{} cut after {n} of {size} bytes ({result:?}): the atomic write is visible in part: \
                 replayed {} events, highest {} (replay says {}), {} under the tag; expected 1 or {last} everywhere",
                shape.name,
                now.replayed.len(),
                now.highest,
                now.replay_highest,
                now.tagged.len()
            );
        };
        assert!(
            result.is_err() || applied,
            "{} cut after {n} of {size} bytes: Ok but not stored",
            shape.name
        );
        match (&result, applied) {
            (Ok(()), _) => ok += 1,
            (Err(_), true) => stored_anyway += 1,
            (Err(_), false) => failed += 1,
        }

        // The server is back and the pool must be too: a retry of the same write through
        // the proxy is Ok (it was not stored) or Conflict (it was), never a duplicate or
        // a partial write.
        let retry = env
            .via
            .journal
            .write(batch(&pid, 2, shape.events, shape.tagged.then_some(&tag)))
            .await;
        match (&retry, applied) {
            (Ok(()), false) => {}
            (Err(e), true) if e.kind() == ErrorKind::Conflict => {}
            _ => panic!(
                "{} cut after {n} of {size} bytes (stored: {applied}): the retry after restore answered {retry:?}",
                shape.name
            ),
        }
        assert_eq!(
            seen(&env.direct, &pid, &tag).await,
            after,
            "{} cut after {n} of {size} bytes: after the retry",
            shape.name
        );
        // And the next write goes on at the right sequence number.
        env.via
            .journal
            .write(batch(&pid, last + 1, 1, shape.tagged.then_some(&tag)))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} cut after {n} of {size} bytes: the next write failed: {e:?}",
                    shape.name
                )
            });
        assert_eq!(
            env.direct.journal.highest_sequence_nr(&pid).await.unwrap(),
            last + 1
        );
    }
    eprintln!(
        "{}: {} cut points over {size} bytes (step {step}) in {:?}: {failed} failed and not stored, \
         {stored_anyway} failed but stored, {ok} succeeded",
        shape.name,
        cuts.len(),
        started.elapsed()
    );
    assert!(
        failed > 0,
        "no cut hit the write: the proxy is not in the path"
    );
    assert!(
        stored_anyway > 0,
        "no cut fell between COMMIT reaching the server and its answer"
    );
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_write_cut_at_every_point() {
    run(SINGLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_write_of_100_tagged_events_cut_at_every_point() {
    run(BATCH100).await;
}

#[test]
fn urls_are_rewritten_to_the_proxy() {
    assert_eq!(
        split_url("postgres://u:p@127.0.0.1:48135/db", "127.0.0.1:9"),
        (
            "127.0.0.1:48135".to_owned(),
            "postgres://u:p@127.0.0.1:9/db".to_owned()
        )
    );
    assert_eq!(
        split_url("postgresql://h/db?sslmode=disable", "p:1"),
        (
            "h:5432".to_owned(),
            "postgresql://p:1/db?sslmode=disable".to_owned()
        )
    );
}
