//! PostgreSQL goes away mid-write: the pool talks to the server through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole exchange of one write (`BEGIN`, the write
//! statement, `COMMIT`), including the last byte before `COMMIT` reaches the server and the
//! moment right after it (committed, but no answer: the ambiguous case). After every cut the
//! caller must hold a retryable error (`Unavailable`/`Timeout`), and a second store talking
//! to the server directly must see the atomic write wholly or not at all: in replay, in
//! `highest_sequence_nr` and in events-by-tag. Then the proxy is restored and the same pool
//! must work again: a retry of the same write succeeds (nothing was stored) or gets
//! `Conflict` (it was), and the next write succeeds. The sweep is
//! [`persistence_tck::sweep::run`], the same for every backend; this file sets up PostgreSQL
//! and says where it differs ([`SweepTarget`]).
//!
//! Each test uses a fresh schema, dropped at the end.
//!
//! `source .servers/postgres/env && cargo test -p persistence-sql --test faults`
#![cfg(feature = "postgres")]

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use persistence_api::{async_trait, Stores};
use persistence_sql::{sqlx, Postgres, PostgresConfig};
use persistence_tck::fault::{split_postgres_url, FaultProxy};
use persistence_tck::sweep::{run, server_env, unique, CutWrite, Shape, SweepTarget};

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
    /// The server process of the pool's one connection, which the cut write uses.
    backend: AtomicI32,
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

async fn env(shape: &str) -> Option<Env> {
    let url = server_env("PERSISTENCE_POSTGRES_URL")?;
    let (target, _) = split_postgres_url(&url, "");
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let (_, via_url) = split_postgres_url(&url, &proxy.addr().to_string());
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
        backend: AtomicI32::new(0),
    })
}

#[async_trait]
impl SweepTarget for Env {
    fn proxy(&self) -> &FaultProxy {
        &self.proxy
    }

    fn via(&self) -> &Stores {
        &self.via
    }

    fn direct(&self) -> &Stores {
        &self.direct
    }

    /// Twice: the first one also prepares the statements of this write's shape on the
    /// pool's connection.
    fn calibrations(&self) -> usize {
        2
    }

    async fn before_cut_write(&self, _case: &str) {
        // Event 1 went through the proxy too: the pool's connection is then open and its
        // statements prepared, so the cut write sends the same bytes every time. The server
        // process of that connection, which the cut write will use:
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&self.via_pool)
            .await
            .expect("the backend pid");
        self.backend.store(backend, Ordering::SeqCst);
        // Let that query's release ping finish before counting.
        tokio::time::sleep(SETTLE).await;
    }

    async fn after_write(&self) {
        // sqlx pings a connection when it goes back to the pool, in a task of its own: let
        // that ping run under the same budget (so every exchange has the same bytes) and
        // finish before the proxy is restored.
        tokio::time::sleep(SETTLE).await;
    }

    async fn settle(&self, cut: &CutWrite<'_>) {
        if cut.sent < cut.n {
            return;
        }
        // The connection was cut (the proxy cuts once the budget is used up). The server
        // may still be working on what reached it (a COMMIT sent but not yet executed
        // commits a moment later): judge only once its process has ended.
        let backend = self.backend.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let alive: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(backend)
                    .fetch_one(&self.admin)
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
                .fetch_one(&self.admin)
                .await
                .expect("pg_stat_activity");
                panic!(
                    "{}: the server process of the cut connection is still alive after 10 s \
                     (cut after {}, sent {}, result {:?}, activity {activity:?})",
                    cut.case, cut.n, cut.sent, cut.result
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every byte around COMMIT: all but COMMIT, COMMIT in part, COMMIT sent but
    /// unanswered (the ambiguous case), the answer received but the release ping cut, and
    /// past the end.
    fn extra_cut_points(&self, size: u64) -> Vec<u64> {
        assert!(
            size > COMMIT_BYTES + RELEASE_PING_BYTES + 4,
            "the proxy forwarded {size} bytes: is traffic bypassing it?"
        );
        let commit_end = size - RELEASE_PING_BYTES;
        (commit_end - COMMIT_BYTES - 4..=size + 2).collect()
    }

    /// The cuts around COMMIT include COMMIT reaching the server with its answer lost.
    fn stored_anyway_required(&self) -> bool {
        true
    }

    async fn clean_up(&self) {
        self.drop_schema().await;
    }
}

async fn sweep(shape: Shape) {
    if let Some(env) = env(shape.name).await {
        run(&env, shape).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_write_cut_at_every_point() {
    sweep(SINGLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_write_of_100_tagged_events_cut_at_every_point() {
    sweep(BATCH100).await;
}

/// Writes in the grouped transaction of [`grouped_write_cut_at_every_point`].
const GROUP: usize = 3;

/// How long the committer waits for a group to fill (so the writes started together are
/// always one group, whichever of them the committer meets first).
const GROUP_WINDOW: Duration = Duration::from_millis(100);

/// Three single-event writes of three ids, started together, committed as one group (one
/// transaction: `BEGIN`, three statements, the new ids' positions, `COMMIT`), with the
/// connection cut after every byte count of that exchange (every 16th byte, and each of
/// the last 48, around `COMMIT`). Every caller must get its true result (`Ok`, and its event stored) or
/// a retryable `Unavailable`/`Timeout`, and each write must be stored wholly or not at all;
/// being one transaction, the group is stored for all or for none. Then the pool works
/// again: a retry of each write succeeds (not stored) or gets `Conflict` (stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_write_cut_at_every_point() {
    use futures::future::join_all;
    use persistence_api::{AtomicWrite, ErrorKind, JournalExt, PersistenceId};
    use persistence_tck::sweep::event;

    let Some(url) = server_env("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let (target, _) = split_postgres_url(&url, "");
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let (_, via_url) = split_postgres_url(&url, &proxy.addr().to_string());
    let schema = format!("faults_group_{}", unique() % 1_000_000_000_000);
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect directly");
    let direct = Postgres::open(PostgresConfig::new(url.clone()).with_schema(schema.clone()))
        .await
        .expect("direct store");
    let direct = direct.stores();
    let mut via = PostgresConfig::new(via_url).with_schema(schema.clone());
    via.max_connections = 1;
    via.acquire_timeout = Duration::from_secs(2);
    via.create_schema = false;
    via.group_commit_window = GROUP_WINDOW;
    let via = Postgres::open(via).await.expect("proxied store");
    let (via_pool, via) = (via.pool().clone(), via.stores());

    let ids = |case: &str| -> Vec<PersistenceId> {
        (0..GROUP)
            .map(|i| PersistenceId::new(format!("{case}-{i}")).unwrap())
            .collect()
    };
    let write = |id: &PersistenceId| AtomicWrite::single(event(id, 1, Some("grouped"))).unwrap();
    // One grouped write of `case`'s ids, cut after `cut` bytes; its results and its bytes.
    let grouped = |case: String, cut: Option<u64>| {
        let (via, via_pool, proxy, admin) = (&via, &via_pool, &proxy, &admin);
        async move {
            if cut.is_some() {
                // An uncut group first (ids of names as long): after the previous cut the
                // pool's connection is new, and this prepares its statements, so the cut
                // group sends the same bytes as the calibration.
                let warm = format!("w{}", &case[1..]);
                for r in join_all(ids(&warm).iter().map(|id| via.journal.write(write(id)))).await {
                    r.expect("the uncut warm-up group succeeds");
                }
            }
            let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(via_pool)
                .await
                .expect("the backend pid");
            tokio::time::sleep(SETTLE).await;
            let before = proxy.forwarded();
            if let Some(n) = cut {
                proxy.cut_after(n);
            }
            let results = join_all(ids(&case).iter().map(|id| via.journal.write(write(id)))).await;
            tokio::time::sleep(SETTLE).await;
            let sent = proxy.forwarded() - before;
            if cut.is_some_and(|n| sent >= n) {
                // Judge only once the server process of the cut connection has ended (a
                // COMMIT that reached it may still be committing).
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let alive: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                            .bind(backend)
                            .fetch_one(admin)
                            .await
                            .expect("pg_stat_activity");
                    if alive == 0 {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{case}: the cut connection's server process still runs after 10 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            proxy.restore();
            (results, sent)
        }
    };

    // Calibration, twice (the first also prepares the statements).
    let mut size = 0;
    for k in 0..2 {
        let (results, sent) = grouped(format!("k{k:04}"), None).await;
        for r in results {
            r.expect("the uncut grouped write succeeds");
        }
        size = sent;
    }
    assert!(
        size > COMMIT_BYTES + RELEASE_PING_BYTES + 4,
        "the proxy forwarded {size} bytes"
    );
    // The group's exchange ends with more than `COMMIT` and the release ping (measured:
    // its COMMIT is complete about 25 bytes before the end), so every byte of the last 48.
    let mut cuts: Vec<u64> = (0..size).step_by(16).collect();
    cuts.extend(size - 48..=size + 2);
    cuts.sort_unstable();
    cuts.dedup();

    let (mut failed, mut stored_anyway, mut ok) = (0, 0, 0);
    for (i, &n) in cuts.iter().enumerate() {
        let case = format!("c{i:04}");
        let (results, _) = grouped(case.clone(), Some(n)).await;
        let mut stored = Vec::new();
        for (id, result) in ids(&case).iter().zip(&results) {
            let highest = direct.journal.highest_sequence_nr(id).await.unwrap();
            let events = direct.journal.replay_all(id).await.unwrap();
            assert!(
                (highest == 0 && events.is_empty()) || (highest == 1 && events.len() == 1),
                "{case} cut after {n} of {size}: {id} stored in part (highest {highest}, {} events)",
                events.len()
            );
            match result {
                Ok(()) => assert_eq!(highest, 1, "{case} cut after {n}: {id} acknowledged but not stored"),
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) && e.is_retryable(),
                    "{case} cut after {n} of {size}: {id} must get a retryable Unavailable/Timeout, got {e:?}"
                ),
            }
            stored.push(highest == 1);
        }
        assert!(
            stored.iter().all(|&s| s == stored[0]),
            "{case} cut after {n} of {size}: one transaction, yet stored {stored:?}"
        );
        match (results.iter().all(Result::is_ok), stored[0]) {
            (true, _) => ok += 1,
            (false, true) => stored_anyway += 1,
            (false, false) => failed += 1,
        }
        // The pool works again; a retry answers the truth.
        for (id, was_stored) in ids(&case).iter().zip(&stored) {
            match via.journal.write(write(id)).await {
                Ok(()) => assert!(!was_stored, "{case}: {id} stored twice"),
                Err(e) => {
                    assert!(*was_stored, "{case}: the retry of {id} failed: {e:?}");
                    assert_eq!(e.kind(), ErrorKind::Conflict, "{case}: {id}: {e:?}");
                }
            }
        }
    }
    eprintln!(
        "grouped: {} cut points over {size} bytes: {failed} failed and not stored, \
         {stored_anyway} failed but stored, {ok} succeeded",
        cuts.len()
    );
    assert!(failed > 0, "no cut hit the grouped write");
    assert!(
        stored_anyway > 0,
        "no cut fell between COMMIT reaching the server and its answer"
    );
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&admin)
    .await;
}
