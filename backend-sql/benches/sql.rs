//! Throughput of the SQL backend beside the same statements issued directly through sqlx
//! in the same run (the bound), on SQLite and, when `PERSISTENCE_POSTGRES_URL` is set, on
//! PostgreSQL.
//!
//! ```text
//! cargo bench -p persistence-sql --bench sql                      # SQLite only
//! bash scripts/servers/postgres.sh start && source .servers/postgres/env
//! cargo bench -p persistence-sql --bench sql                      # SQLite and PostgreSQL
//! ```
//!
//! Workloads (10,000 events each): single-event writes one after the other, 100-event
//! atomic writes, a replay of 10,000 events, a tag query over 10,000 events. Each prints
//! events/s through the stores, through raw sqlx with the same statements, and the ratio.
//! In each round the stores and raw sqlx take turns going first. A last row, stores only:
//! 10,000 single-event atomic writes of 10 ids, 100 per `write_events` call.
//! `BENCH_ROUNDS` (default 4) rounds per figure; the median is printed. `BENCH_ONLY=sqlite`
//! or `BENCH_ONLY=postgres` runs one database, `BENCH_ONLY=state` the durable-state
//! workloads only: upserts of one id one after the other, upserts of 16 ids by 16
//! concurrent tasks, and a current change query over 10,000 states, each beside raw sqlx
//! issuing the same conditional statements. A last section
//! measures what the PostgreSQL tag-order lock costs 16 concurrent writers of one tag, and
//! how many events a resuming reader misses without it.
//!
//! The PostgreSQL sections connect over plain TCP (`ssl_mode = "disable"`). `BENCH_ONLY=tls`
//! (also part of `postgres`) runs the same workloads over plain TCP and over TLS
//! (`verify-full` with the test CA of `PERSISTENCE_TEST_TLS_DIR`, written by
//! `scripts/servers/postgres.sh start`) in the same run, and connection set-up, and prints
//! the TLS/plain ratios.
//!
//! `BENCH_ONLY=group` (or `group-sqlite`, `group-postgres`) runs only the group-commit
//! workload: 1,000 entities, 1 / 10 / 100 / 1,000 concurrent tasks of single-event writes,
//! raw sqlx one transaction per event against the stores with group commit off and on
//! (events/s, p50 / p99 latency; see `mod group`). Not part of the default run.

use persistence_api::ReadJournalExt;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, Stores,
};
use persistence_sql::{sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig, SslMode};
use sqlx::{AssertSqlSafe, Row};

const EVENTS: u64 = 10_000;
const BATCH: u64 = 100;
const PAGE: i64 = 500;

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        .max(1)
}

fn event(id: &PersistenceId, seq: u64, tag: Option<&str>) -> PersistentEvent {
    let e = PersistentEvent::new(
        id.clone(),
        seq,
        Payload::new("bench", "bench.Event/v1", vec![7u8; 100]),
    )
    .with_writer_id("bench-writer");
    match tag {
        Some(t) => e.with_tags([t]),
        None => e,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn row(db: &str, workload: &str, driver: f64, raw: f64) {
    println!(
        "| {db:<10} | {workload:<32} | {driver:>12.0} | {raw:>12.0} | {:>5.2} |",
        driver / raw
    );
}

// ---------------------------------------------------------------- through the stores

async fn driver_single(stores: &Stores, id: &PersistenceId) -> f64 {
    let start = Instant::now();
    for seq in 1..=EVENTS {
        stores
            .journal
            .write(AtomicWrite::single(event(id, seq, None)).unwrap())
            .await
            .unwrap();
    }
    rate(EVENTS, start.elapsed())
}

async fn driver_batches(stores: &Stores, id: &PersistenceId, tag: Option<&str>) -> f64 {
    let start = Instant::now();
    let mut seq = 1;
    while seq <= EVENTS {
        let events = (seq..seq + BATCH).map(|s| event(id, s, tag)).collect();
        stores
            .journal
            .write(AtomicWrite::new(events).unwrap())
            .await
            .unwrap();
        seq += BATCH;
    }
    rate(EVENTS, start.elapsed())
}

/// Single-event atomic writes of 10 ids, 100 atomic writes per call (10 per id).
async fn driver_calls(stores: &Stores, prefix: &str) -> f64 {
    let ids: Vec<PersistenceId> = (0..10)
        .map(|i| PersistenceId::new(format!("{prefix}-{i}")).unwrap())
        .collect();
    let start = Instant::now();
    let mut seq = 1;
    while seq <= EVENTS / 10 {
        let writes = (seq..seq + 10)
            .flat_map(|s| {
                ids.iter()
                    .map(move |id| AtomicWrite::single(event(id, s, None)).unwrap())
            })
            .collect();
        for r in stores.journal.write_events(writes).await.unwrap() {
            r.unwrap();
        }
        seq += 10;
    }
    rate(EVENTS, start.elapsed())
}

async fn driver_replay(stores: &Stores, id: &PersistenceId) -> f64 {
    let start = Instant::now();
    let replay = stores
        .journal
        .replay(id, 1, u64::MAX, u64::MAX)
        .await
        .unwrap();
    let n = replay
        .events
        .fold(0u64, |n, e| async move {
            e.unwrap();
            n + 1
        })
        .await;
    assert_eq!(n, EVENTS);
    rate(EVENTS, start.elapsed())
}

async fn driver_tag(stores: &Stores, tag: &str) -> f64 {
    let start = Instant::now();
    let n = stores
        .read_journal
        .current_events_by_tag(tag.to_string(), Offset::NoOffset)
        .fold(0u64, |n, e| async move {
            e.unwrap();
            n + 1
        })
        .await;
    assert_eq!(n, EVENTS);
    rate(EVENTS, start.elapsed())
}

/// Reads every column of an event row, as the driver does.
type RawEvent = (
    i64,
    String,
    i64,
    String,
    i64,
    String,
    String,
    String,
    Vec<u8>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    String,
);

const COLUMNS: &str = "ordering, persistence_id, sequence_nr, writer_id, write_timestamp, \
    event_manifest, ser_id, ser_manifest, payload, meta_ser_id, meta_ser_manifest, meta_payload, tags";

fn e_columns() -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("e.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads all `EVENTS` events in pages of `PAGE` raw rows with `sql` (parameters: key,
/// from, upto, limit), each page from where `next` says the last row leaves off: a raw
/// replay (key: the id, by sequence number) or tag query (key: the tag, by ordering).
async fn raw_pages<DB>(
    pool: &sqlx::Pool<DB>,
    sql: &str,
    key: &str,
    mut from: i64,
    upto: i64,
    next: fn(&RawEvent) -> i64,
) where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> RawEvent: sqlx::FromRow<'r, DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut n = 0;
    loop {
        let rows: Vec<RawEvent> = sqlx::query_as(AssertSqlSafe(sql.to_string()))
            .bind(key)
            .bind(from)
            .bind(upto)
            .bind(PAGE)
            .fetch_all(pool)
            .await
            .unwrap();
        n += rows.len() as u64;
        let Some(last) = rows.last() else { break };
        from = next(last);
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    assert_eq!(n, EVENTS);
}

/// Binds one event row (no metadata, no tags) as both databases' raw inserts take it.
fn bind_raw_event<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    id: &str,
    e: &PersistentEvent,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a [u8]>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    query
        .bind(id)
        .bind(e.sequence_nr as i64)
        .bind(e.writer_id.as_str())
        .bind(e.timestamp.as_millis())
        .bind(e.event_manifest.as_str())
        .bind(e.payload.serializer_id.as_str())
        .bind(e.payload.manifest.as_str())
        .bind(e.payload.bytes.as_ref())
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(None::<&[u8]>)
        .bind("[]")
}

// ---------------------------------------------------------------- SQLite

mod sqlite_raw {
    use super::*;
    use sqlx::SqlitePool;

    pub const INSERT: &str = "INSERT INTO event_journal (persistence_id, sequence_nr, writer_id, \
        write_timestamp, event_manifest, ser_id, ser_manifest, payload, meta_ser_id, \
        meta_ser_manifest, meta_payload, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
        ?11, ?12) RETURNING ordering";
    pub const UPSERT: &str = "INSERT INTO journal_ids (persistence_id, highest_sequence_nr) \
        VALUES (?1, ?2) ON CONFLICT (persistence_id) DO UPDATE SET highest_sequence_nr = \
        max(highest_sequence_nr, excluded.highest_sequence_nr) RETURNING deleted_to";

    async fn insert(
        tx: &mut sqlx::SqliteConnection,
        id: &str,
        e: &PersistentEvent,
    ) -> sqlx::Result<i64> {
        bind_raw_event(sqlx::query(INSERT), id, e)
            .fetch_one(tx)
            .await?
            .try_get(0)
    }

    pub async fn write(pool: &SqlitePool, id: &PersistenceId, events: &[PersistentEvent]) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let _: i64 = sqlx::query_scalar(UPSERT)
            .bind(id.as_str())
            .bind(events.last().unwrap().sequence_nr as i64)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        for e in events {
            insert(&mut tx, id.as_str(), e).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    pub async fn single(pool: &SqlitePool, id: &PersistenceId) -> f64 {
        let start = Instant::now();
        for seq in 1..=EVENTS {
            write(pool, id, &[event(id, seq, None)]).await;
        }
        rate(EVENTS, start.elapsed())
    }

    pub async fn batches(pool: &SqlitePool, id: &PersistenceId) -> f64 {
        let start = Instant::now();
        let mut seq = 1;
        while seq <= EVENTS {
            let events: Vec<_> = (seq..seq + BATCH).map(|s| event(id, s, None)).collect();
            write(pool, id, &events).await;
            seq += BATCH;
        }
        rate(EVENTS, start.elapsed())
    }

    pub async fn replay(pool: &SqlitePool, id: &PersistenceId) -> f64 {
        let sql = format!(
            "SELECT {COLUMNS} FROM event_journal WHERE persistence_id = ?1 AND sequence_nr >= ?2 \
             AND sequence_nr <= ?3 ORDER BY sequence_nr LIMIT ?4"
        );
        let start = Instant::now();
        raw_pages(pool, &sql, id.as_str(), 1, i64::MAX, |e| e.2 + 1).await;
        rate(EVENTS, start.elapsed())
    }

    pub async fn tag(pool: &SqlitePool, tag: &str) -> f64 {
        let sql = format!(
            "SELECT {} FROM event_tag t JOIN event_journal e ON e.ordering = t.ordering \
             WHERE t.tag = ?1 AND t.ordering > ?2 AND t.ordering <= ?3 ORDER BY t.ordering LIMIT ?4",
            e_columns()
        );
        let start = Instant::now();
        let upto: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(ordering), 0) FROM event_tag WHERE tag = ?1")
                .bind(tag)
                .fetch_one(pool)
                .await
                .unwrap();
        raw_pages(pool, &sql, tag, 0, upto, |e| e.0).await;
        rate(EVENTS, start.elapsed())
    }
}

/// Folds the WAL into the database file, so reads after 20,000 fresh writes do not
/// depend on where SQLite's automatic checkpoint happened to run.
async fn checkpoint(pool: &sqlx::SqlitePool) {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .unwrap();
}

async fn bench_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("bench.db"));
    // One connection: each SQLite connection has its own page cache, and which pooled
    // connection a read gets would otherwise decide whether it meets a warm cache.
    config.max_connections = 1;
    println!(
        "\nSQLite (bundled libsqlite3), file in {}, synchronous = {:?}, WAL, page size {}, {} connection",
        dir.path().display(),
        config.synchronous,
        config.page_size,
        config.max_connections
    );
    let opened = Sqlite::open(config).await.unwrap();
    let stores = opened.stores();
    let pool = opened.pool().clone();
    let r = rounds_of(&stores, &SqliteRaw(pool)).await;
    print_table("sqlite", r);
    opened.close().await;
}

/// The same workloads through raw sqlx on one database.
trait Raw {
    async fn single(&self, id: &PersistenceId) -> f64;
    async fn batches(&self, id: &PersistenceId) -> f64;
    async fn replay(&self, id: &PersistenceId) -> f64;
    async fn tag(&self, tag: &str) -> f64;
    /// Runs (untimed) between the writes and the reads of a turn.
    async fn before_reads(&self) {}
}

struct SqliteRaw(sqlx::SqlitePool);

impl Raw for SqliteRaw {
    async fn single(&self, id: &PersistenceId) -> f64 {
        sqlite_raw::single(&self.0, id).await
    }
    async fn batches(&self, id: &PersistenceId) -> f64 {
        sqlite_raw::batches(&self.0, id).await
    }
    async fn replay(&self, id: &PersistenceId) -> f64 {
        sqlite_raw::replay(&self.0, id).await
    }
    async fn tag(&self, tag: &str) -> f64 {
        sqlite_raw::tag(&self.0, tag).await
    }
    async fn before_reads(&self) {
        checkpoint(&self.0).await;
    }
}

struct PgRaw(sqlx::PgPool, pg_raw::Sql);

impl Raw for PgRaw {
    async fn single(&self, id: &PersistenceId) -> f64 {
        pg_raw::single(&self.0, &self.1, id).await
    }
    async fn batches(&self, id: &PersistenceId) -> f64 {
        pg_raw::batches(&self.0, &self.1, id).await
    }
    async fn replay(&self, id: &PersistenceId) -> f64 {
        pg_raw::replay(&self.0, &self.1, id).await
    }
    async fn tag(&self, tag: &str) -> f64 {
        pg_raw::tag(&self.0, &self.1, tag).await
    }
}

/// Every round of every workload, through the stores and through `raw`: nine series
/// (stores and raw side by side for each workload, then the stores-only call row).
async fn rounds_of(stores: &Stores, raw: &impl Raw) -> Vec<Vec<f64>> {
    let mut r = vec![Vec::new(); 9];
    for round in 0..rounds() {
        let id = |what: &str| PersistenceId::new(format!("{what}-{round}")).unwrap();
        let tag = format!("tag-{round}");
        // Untimed: the data the reads read.
        driver_batches(stores, &id("read"), Some(&tag)).await;
        driver_replay(stores, &id("read")).await;
        // Driver and raw take turns going first, so neither always meets a cold cache.
        for turn in [round % 2 == 0, round % 2 != 0] {
            if turn {
                r[0].push(driver_single(stores, &id("d-single")).await);
                r[2].push(driver_batches(stores, &id("d-batch"), None).await);
                raw.before_reads().await;
                r[4].push(driver_replay(stores, &id("read")).await);
                r[6].push(driver_tag(stores, &tag).await);
                r[8].push(driver_calls(stores, &format!("calls-{round}")).await);
            } else {
                r[1].push(raw.single(&id("r-single")).await);
                r[3].push(raw.batches(&id("r-batch")).await);
                raw.before_reads().await;
                r[5].push(raw.replay(&id("read")).await);
                r[7].push(raw.tag(&tag).await);
            }
        }
    }
    r
}

fn print_table(db: &str, mut r: Vec<Vec<f64>>) {
    let calls = r.pop().map(median).unwrap_or(0.0);
    let m: Vec<f64> = r.into_iter().map(median).collect();
    println!(
        "| database   | workload (10,000 events)         | stores ev/s  | sqlx ev/s    | ratio |"
    );
    println!(
        "|------------|----------------------------------|--------------|--------------|-------|"
    );
    row(db, "single-event writes", m[0], m[1]);
    row(db, "100-event atomic writes", m[2], m[3]);
    row(db, "replay", m[4], m[5]);
    row(db, "current events by tag", m[6], m[7]);
    println!(
        "| {db:<10} | {:<32} | {calls:>12.0} |              |       |",
        "1-event writes, 100 per call"
    );
}

// ---------------------------------------------------------------- PostgreSQL

mod pg_raw {
    use super::*;
    use sqlx::PgPool;

    /// One column of a batch, for the `UNNEST` of the many-events write.
    fn col<'e, T>(events: &'e [PersistentEvent], f: impl Fn(&'e PersistentEvent) -> T) -> Vec<T> {
        events.iter().map(f).collect()
    }

    pub struct Sql {
        pub write_one: String,
        pub write_many: String,
        pub replay: String,
        pub tag: String,
        pub max_tag: String,
        pub channel: String,
    }

    impl Sql {
        /// The statements the driver sends, written out again.
        pub fn new(schema: &str) -> Sql {
            let ev = format!("\"{schema}\".event_journal");
            let ids = format!("\"{schema}\".journal_ids");
            let tags = format!("\"{schema}\".event_tag");
            let columns =
                "persistence_id, sequence_nr, writer_id, write_timestamp, event_manifest, \
                ser_id, ser_manifest, payload, meta_ser_id, meta_ser_manifest, meta_payload, tags";
            let one = "SELECT $1, v.s, v.w, v.ts, v.em, v.si, v.sm, v.p, v.msi, v.msm, v.mp, v.t \
                FROM (VALUES ($2::bigint, $3::text, $4::bigint, $5::text, $6::text, $7::text, \
                $8::bytea, $9::text, $10::text, $11::bytea, $12::text)) \
                AS v(s, w, ts, em, si, sm, p, msi, msm, mp, t), id_row, locks \
                WHERE id_row.deleted_to < $14";
            let many = "SELECT $1, u.s, u.w, u.ts, u.em, u.si, u.sm, u.p, u.msi, u.msm, u.mp, u.t \
                FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
                $7::text[], $8::bytea[], $9::text[], $10::text[], $11::bytea[], $12::text[]) \
                WITH ORDINALITY AS u(s, w, ts, em, si, sm, p, msi, msm, mp, t, n), id_row, locks \
                WHERE id_row.deleted_to < $14 ORDER BY u.n";
            let write = |source: &str| {
                format!(
                    "WITH id_row AS (INSERT INTO {ids} AS i (persistence_id, highest_sequence_nr) \
                     VALUES ($1, $13) ON CONFLICT (persistence_id) DO UPDATE SET \
                     highest_sequence_nr = GREATEST(i.highest_sequence_nr, EXCLUDED.highest_sequence_nr) \
                     RETURNING i.deleted_to, i.id_ordering IS NULL AS new_id), \
                     locks AS (SELECT count(pg_advisory_xact_lock(l.k)) AS n FROM id_row, \
                     (SELECT k FROM UNNEST($15::bigint[]) AS u(k) ORDER BY k) AS l), \
                     e AS (INSERT INTO {ev} ({columns}) {source} \
                     RETURNING ordering, sequence_nr, tags), \
                     t AS (INSERT INTO {tags} (tag, ordering, persistence_id, sequence_nr) \
                     SELECT DISTINCT x.tag, e.ordering, $1, e.sequence_nr \
                     FROM e CROSS JOIN LATERAL json_array_elements_text(e.tags::json) AS x(tag)) \
                     SELECT id_row.deleted_to, id_row.new_id, (SELECT 1 FROM pg_notify($16, '')) \
                     FROM id_row"
                )
            };
            Sql {
                write_one: write(one),
                write_many: write(many),
                replay: format!(
                    "SELECT {COLUMNS} FROM {ev} WHERE persistence_id = $1 AND sequence_nr >= $2 \
                     AND sequence_nr <= $3 ORDER BY sequence_nr LIMIT $4"
                ),
                tag: format!(
                    "SELECT {} FROM {tags} t JOIN {ev} e ON e.ordering = t.ordering \
                     WHERE t.tag = $1 AND t.ordering > $2 AND t.ordering <= $3 \
                     ORDER BY t.ordering LIMIT $4",
                    e_columns()
                ),
                max_tag: format!(
                    "SELECT COALESCE(MAX(ordering), 0)::bigint FROM {tags} WHERE tag = $1"
                ),
                channel: "bench_raw".to_string(),
            }
        }
    }

    /// Event `seq` of `id` in a transaction of its own: the driver's single-event write.
    pub async fn write_one(pool: &PgPool, sql: &Sql, id: &PersistenceId, seq: u64) {
        let e = event(id, seq, None);
        let mut tx = pool.begin().await.unwrap();
        bind_raw_event(
            sqlx::query(AssertSqlSafe(sql.write_one.clone())),
            id.as_str(),
            &e,
        )
        .bind(seq as i64)
        .bind(seq as i64)
        .bind(Vec::<i64>::new())
        .bind(sql.channel.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn single(pool: &PgPool, sql: &Sql, id: &PersistenceId) -> f64 {
        let start = Instant::now();
        for seq in 1..=EVENTS {
            write_one(pool, sql, id, seq).await;
        }
        rate(EVENTS, start.elapsed())
    }

    pub async fn batches(pool: &PgPool, sql: &Sql, id: &PersistenceId) -> f64 {
        let start = Instant::now();
        let mut seq = 1;
        while seq <= EVENTS {
            let events: Vec<_> = (seq..seq + BATCH).map(|s| event(id, s, None)).collect();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(AssertSqlSafe(sql.write_many.clone()))
                .bind(id.as_str())
                .bind(col(&events, |e| e.sequence_nr as i64))
                .bind(col(&events, |e| e.writer_id.as_str()))
                .bind(col(&events, |e| e.timestamp.as_millis()))
                .bind(col(&events, |e| e.event_manifest.as_str()))
                .bind(col(&events, |e| e.payload.serializer_id.as_str()))
                .bind(col(&events, |e| e.payload.manifest.as_str()))
                .bind(col(&events, |e| e.payload.bytes.as_ref()))
                .bind(vec![None::<&str>; events.len()])
                .bind(vec![None::<&str>; events.len()])
                .bind(vec![None::<&[u8]>; events.len()])
                .bind(vec!["[]"; events.len()])
                .bind((seq + BATCH - 1) as i64)
                .bind(seq as i64)
                .bind(Vec::<i64>::new())
                .bind(sql.channel.as_str())
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            seq += BATCH;
        }
        rate(EVENTS, start.elapsed())
    }

    pub async fn replay(pool: &PgPool, sql: &Sql, id: &PersistenceId) -> f64 {
        let start = Instant::now();
        raw_pages(pool, &sql.replay, id.as_str(), 1, i64::MAX, |e| e.2 + 1).await;
        rate(EVENTS, start.elapsed())
    }

    pub async fn tag(pool: &PgPool, sql: &Sql, tag: &str) -> f64 {
        let start = Instant::now();
        let upto: i64 = sqlx::query_scalar(AssertSqlSafe(sql.max_tag.clone()))
            .bind(tag)
            .fetch_one(pool)
            .await
            .unwrap();
        raw_pages(pool, &sql.tag, tag, 0, upto, |e| e.0).await;
        rate(EVENTS, start.elapsed())
    }
}

fn unique_schema(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{:x}", nanos & 0xffff_ffff_ffff)
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// `url` over plain TCP: the test server offers TLS, which the default `prefer` would take;
/// the figures of the PostgreSQL sections are of plain TCP (as before TLS existed).
fn plain(url: &str) -> PostgresConfig {
    PostgresConfig::new(url).with_ssl_mode(SslMode::Disable)
}

/// Plain TCP against TLS (`verify-full`, the test CA) in the same run: the same role, the
/// same database and schema, only the transport differs (the URL's 127.0.0.1 becomes
/// `localhost`, the name the server's certificate is for). Per round each side does
/// single-event writes, 100-event atomic writes and a replay of 10,000 events, and opens
/// and closes connections (each a TCP connect, for TLS the handshake, and the scram
/// authentication); the two take turns going first.
async fn bench_tls(url: &str) {
    const CONNECTS: u64 = 50;
    let Some(dir) = std::env::var("PERSISTENCE_TEST_TLS_DIR")
        .ok()
        .filter(|d| !d.trim().is_empty())
    else {
        println!("\nPostgreSQL TLS skipped: PERSISTENCE_TEST_TLS_DIR is not set");
        return;
    };
    let schema = unique_schema("bench_tls");
    let plain_config = plain(url).with_schema(&schema);
    let mut tls_config = PostgresConfig::new(url.replacen("@127.0.0.1:", "@localhost:", 1))
        .with_schema(&schema)
        .with_ssl_mode(SslMode::VerifyFull);
    tls_config.tls_ca_file = Some(std::path::Path::new(&dir).join("ca.pem"));
    let sides = [
        ("plain", Postgres::open(plain_config).await.unwrap()),
        ("TLS", Postgres::open(tls_config).await.unwrap()),
    ];
    for (name, opened) in &sides {
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(opened.pool())
                .await
                .unwrap();
        assert_eq!(ssl, *name == "TLS", "{name}: pg_stat_ssl.ssl = {ssl}");
    }
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(sides[1].1.pool())
        .await
        .unwrap();
    let cipher: String = sqlx::query_scalar(
        "SELECT version || ' ' || cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .fetch_one(sides[1].1.pool())
    .await
    .unwrap();
    println!(
        "\nPostgreSQL plain TCP against TLS (verify-full, {cipher}), same role and schema, {}",
        version.split(',').next().unwrap_or_default()
    );
    // [side][workload] -> figures of the rounds
    let mut r = vec![vec![Vec::new(); 4]; 2];
    for round in 0..rounds() {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (name, opened) = &sides[side];
            let stores = opened.stores();
            let id = |what: &str| PersistenceId::new(format!("{name}-{what}-{round}")).unwrap();
            r[side][0].push(driver_single(&stores, &id("single")).await);
            r[side][1].push(driver_batches(&stores, &id("batch"), None).await);
            r[side][2].push(driver_replay(&stores, &id("batch")).await);
            let options = opened.pool().connect_options();
            let start = Instant::now();
            for _ in 0..CONNECTS {
                let conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
                    .await
                    .unwrap();
                sqlx::Connection::close(conn).await.unwrap();
            }
            r[side][3].push(rate(CONNECTS, start.elapsed()));
        }
    }
    let m: Vec<Vec<f64>> = r
        .into_iter()
        .map(|side| side.into_iter().map(median).collect())
        .collect();
    println!("| workload                          | plain /s     | TLS /s       | TLS/plain |");
    println!("|-----------------------------------|--------------|--------------|-----------|");
    for (i, workload) in [
        "single-event writes (10,000)",
        "100-event atomic writes (10,000)",
        "replay of 10,000 events",
        "connection open + close (50)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {workload:<33} | {:>12.0} | {:>12.0} | {:>9.2} |",
            m[0][i],
            m[1][i],
            m[1][i] / m[0][i]
        );
    }
    drop_schema(sides[0].1.pool(), &schema).await;
    for (_, opened) in &sides {
        opened.close().await;
    }
}

async fn bench_postgres(url: &str) {
    let schema = unique_schema("bench");
    let config = plain(url).with_schema(&schema);
    let opened = Postgres::open(config.clone()).await.unwrap();
    let stores = opened.stores();
    let pool = opened.pool().clone();
    let settings: Vec<(String, String)> = sqlx::query(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'server_version')",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    println!(
        "\nPostgreSQL on loopback, {settings:?}, pool of {}, page size {}",
        config.max_connections, config.page_size
    );
    let sql = pg_raw::Sql::new(&schema);
    let r = rounds_of(&stores, &PgRaw(pool.clone(), sql)).await;
    print_table("postgres", r);
    drop_schema(&pool, &schema).await;
    opened.close().await;

    tag_lock_cost(url).await;
}

/// 16 concurrent writers of one tag, 100 single-event writes each, with and without the
/// tag-order lock; a reader resumes current tag queries from its offset meanwhile and
/// counts what it never saw.
async fn tag_lock_cost(url: &str) {
    const WRITERS: u64 = 16;
    const EACH: u64 = 100;
    println!("\nPostgreSQL tag-order lock: {WRITERS} concurrent writers of one tag, {EACH} single-event writes each, a resuming reader");
    println!("| tag_order_lock | events/s | events the resuming reader missed |");
    println!("|----------------|----------|-----------------------------------|");
    for round in 0..rounds() {
        for lock in [true, false] {
            let schema = unique_schema(if lock { "lock_on" } else { "lock_off" });
            let mut config = plain(url).with_schema(&schema);
            config.tag_order_lock = lock;
            config.max_connections = (WRITERS + 4) as u32;
            let opened = Postgres::open(config).await.unwrap();
            let stores = opened.stores();
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let stores = stores.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let mut seen = HashSet::new();
                    let mut offset = Offset::NoOffset;
                    loop {
                        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                        let page: Vec<_> = stores
                            .read_journal
                            .current_events_by_tag("hot".into(), offset.clone())
                            .collect()
                            .await;
                        for e in page {
                            let e = e.unwrap();
                            offset = e.offset.clone();
                            seen.insert((e.event.persistence_id.to_string(), e.event.sequence_nr));
                        }
                        if finished {
                            return seen.len() as u64;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            };
            let start = Instant::now();
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let stores = stores.clone();
                    tokio::spawn(async move {
                        let id = PersistenceId::new(format!("w{w}")).unwrap();
                        for seq in 1..=EACH {
                            stores
                                .journal
                                .write(AtomicWrite::single(event(&id, seq, Some("hot"))).unwrap())
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
            let elapsed = start.elapsed();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let seen = reader.await.unwrap();
            println!(
                "| {:<14} | {:>8.0} | {:>33} |",
                if lock { "on" } else { "off" },
                rate(WRITERS * EACH, elapsed),
                WRITERS * EACH - seen
            );
            drop_schema(opened.pool(), &schema).await;
            opened.close().await;
        }
        let _ = round;
    }
}

// ---------------------------------------------------------------- durable state

/// Upserts of one id one after the other.
const STATE_SEQUENTIAL: u64 = 1_000;
/// Concurrent upserters, one id each, and upserts per id.
const STATE_WRITERS: u64 = 16;
const STATE_EACH: u64 = 125;
/// States read by the change query.
const STATE_IDS: u64 = 10_000;

fn state_payload() -> Payload {
    Payload::new("bench", "bench.State/v1", vec![7u8; 100])
}

/// A change row as the store reads it: id, revision, ser_id, manifest, bytes, tag,
/// timestamp, ordering.
type RawChange = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    i64,
    i64,
);

/// The durable-state statements the store issues, through raw sqlx: the same text,
/// bound the same way (PostgreSQL: the tag lock, `nextval` and the `NOTIFY` in one
/// statement; SQLite: `MAX(ordering) + 1` in the statement, writers taking turns).
enum StateRaw {
    Sqlite(sqlx::SqlitePool, tokio::sync::Mutex<()>, String),
    Postgres(sqlx::PgPool, String),
}

impl StateRaw {
    fn table(&self) -> &str {
        match self {
            StateRaw::Sqlite(_, _, t) | StateRaw::Postgres(_, t) => t,
        }
    }

    fn insert_sql(&self, update: bool) -> String {
        let t = self.table();
        match self {
            StateRaw::Sqlite(..) => {
                let next = format!("(SELECT COALESCE(MAX(ordering), 0) + 1 FROM {t})");
                if update {
                    format!("UPDATE {t} SET revision = ?2, ser_id = ?3, ser_manifest = ?4, payload = ?5, \
                         tag = ?6, write_timestamp = ?7, ordering = {next} \
                         WHERE persistence_id = ?1 AND revision = ?2 - 1 RETURNING revision")
                } else {
                    format!("INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, tag, \
                         write_timestamp, ordering) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {next}) \
                         ON CONFLICT (persistence_id) DO NOTHING RETURNING revision")
                }
            }
            StateRaw::Postgres(..) => {
                let seq = t.replace("durable_state\"", "durable_state_ordering_seq\"");
                let lock =
                    "SELECT count(pg_advisory_xact_lock(hashtextextended($8::text || k.t, 0))) \
                     AS n FROM (SELECT $6::text AS t) k WHERE k.t IS NOT NULL";
                let write = if update {
                    format!(
                        "UPDATE {t} AS s SET revision = $2::bigint, ser_id = $3::text, \
                         ser_manifest = $4::text, payload = $5::bytea, tag = $6::text, \
                         write_timestamp = $7::bigint, ordering = nextval('{seq}') FROM l \
                         WHERE s.persistence_id = $1::text AND s.revision = $2::bigint - 1 \
                         RETURNING s.revision"
                    )
                } else {
                    format!("INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, \
                         tag, write_timestamp, ordering) SELECT $1::text, $2::bigint, $3::text, \
                         $4::text, $5::bytea, $6::text, $7::bigint, nextval('{seq}') FROM l \
                         ON CONFLICT (persistence_id) DO NOTHING RETURNING revision")
                };
                format!(
                    "WITH l AS ({lock}), w AS ({write}) \
                     SELECT w.revision, (SELECT 1 FROM pg_notify($9, '')) FROM w"
                )
            }
        }
    }

    async fn upsert(&self, id: &str, revision: i64, tag: &str) {
        let sql = self.insert_sql(revision > 1);
        let p = state_payload();
        let now = persistence_api::Timestamp::now().as_millis();
        let wrote = match self {
            StateRaw::Sqlite(pool, turns, _) => {
                let _turn = turns.lock().await;
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(revision)
                    .bind(Some(p.serializer_id.as_str()))
                    .bind(Some(p.manifest.as_str()))
                    .bind(Some(p.bytes.as_ref()))
                    .bind(Some(tag))
                    .bind(now)
                    .fetch_optional(pool)
                    .await
                    .unwrap()
                    .is_some()
            }
            StateRaw::Postgres(pool, _) => sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .bind(revision)
                .bind(Some(p.serializer_id.as_str()))
                .bind(Some(p.manifest.as_str()))
                .bind(Some(p.bytes.as_ref()))
                .bind(Some(tag))
                .bind(now)
                .bind("bench-raw:state:")
                .bind("bench_raw_channel")
                .fetch_optional(pool)
                .await
                .unwrap()
                .is_some(),
        };
        assert!(wrote, "raw upsert of {id} at {revision}");
    }

    /// The current change query of `tag`: its upper bound, then pages of `PAGE` rows.
    async fn changes(&self, tag: &str) -> u64 {
        let t = self.table();
        let (p, bigint) = match self {
            StateRaw::Sqlite(..) => ('?', ""),
            StateRaw::Postgres(..) => ('$', "::bigint"),
        };
        let max_sql =
            format!("SELECT COALESCE(MAX(ordering), 0){bigint} FROM {t} WHERE tag = {p}1");
        let page_sql = format!(
            "SELECT persistence_id, revision, ser_id, ser_manifest, payload, tag, write_timestamp, \
             ordering FROM {t} WHERE tag = {p}1 AND ordering > {p}2 AND ordering <= {p}3 \
             ORDER BY ordering LIMIT {p}4"
        );
        macro_rules! pages {
            ($pool:expr) => {{
                let upto: i64 = sqlx::query_scalar(AssertSqlSafe(max_sql))
                    .bind(tag)
                    .fetch_one($pool)
                    .await
                    .unwrap();
                let mut after = 0i64;
                let mut n = 0u64;
                loop {
                    let page: Vec<RawChange> = sqlx::query_as(AssertSqlSafe(page_sql.clone()))
                        .bind(tag)
                        .bind(after)
                        .bind(upto)
                        .bind(PAGE)
                        .fetch_all($pool)
                        .await
                        .unwrap();
                    let len = page.len();
                    for c in page {
                        let changed = (
                            PersistenceId::new(c.0).unwrap(),
                            u64::try_from(c.1).unwrap(),
                            c.4.map(|b| Payload::new(c.2.unwrap(), c.3.unwrap(), b)),
                            c.5,
                            persistence_api::Timestamp::from_millis(c.6),
                        );
                        std::hint::black_box(changed);
                        after = c.7;
                        n += 1;
                    }
                    if len < PAGE as usize {
                        break n;
                    }
                }
            }};
        }
        match self {
            StateRaw::Sqlite(pool, _, _) => pages!(pool),
            StateRaw::Postgres(pool, _) => pages!(pool),
        }
    }

    /// Stores `STATE_IDS` states of `tag` in one transaction (untimed setup).
    async fn fill(&self, tag: &str) {
        let t = self.table();
        match self {
            StateRaw::Sqlite(pool, _, _) => {
                sqlx::query(AssertSqlSafe(format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
                     INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, tag, \
                     write_timestamp, ordering) SELECT 'q-' || i, 1, 'bench', 'bench.State/v1', \
                     zeroblob(100), ?1, 0, (SELECT COALESCE(MAX(ordering), 0) FROM {t}) + i FROM n"
                )))
                .bind(tag)
                .bind(STATE_IDS as i64)
                .execute(pool)
                .await
                .unwrap();
            }
            StateRaw::Postgres(pool, _) => {
                let seq = t.replace("durable_state\"", "durable_state_ordering_seq\"");
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, tag, \
                     write_timestamp, ordering) SELECT 'q-' || i, 1, 'bench', 'bench.State/v1', \
                     decode(repeat('07', 100), 'hex'), $1, 0, nextval('{seq}') \
                     FROM generate_series(1, $2::bigint) AS i"
                )))
                .bind(tag)
                .bind(STATE_IDS as i64)
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }
}

async fn state_sequential(stores: &Stores, raw: Option<&StateRaw>, id: &str) -> f64 {
    let start = Instant::now();
    for revision in 1..=STATE_SEQUENTIAL {
        match raw {
            Some(raw) => raw.upsert(id, revision as i64, "seq").await,
            None => stores
                .durable_state
                .upsert(
                    &PersistenceId::new(id).unwrap(),
                    revision,
                    state_payload(),
                    Some("seq".into()),
                )
                .await
                .unwrap(),
        }
    }
    rate(STATE_SEQUENTIAL, start.elapsed())
}

async fn state_concurrent(
    stores: &Stores,
    raw: Option<&std::sync::Arc<StateRaw>>,
    prefix: &str,
) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..STATE_WRITERS)
        .map(|w| {
            let stores = stores.clone();
            let raw = raw.cloned();
            let id = format!("{prefix}-{w}");
            tokio::spawn(async move {
                for revision in 1..=STATE_EACH {
                    match &raw {
                        Some(raw) => raw.upsert(&id, revision as i64, "conc").await,
                        None => stores
                            .durable_state
                            .upsert(
                                &PersistenceId::new(id.as_str()).unwrap(),
                                revision,
                                state_payload(),
                                Some("conc".into()),
                            )
                            .await
                            .unwrap(),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    rate(STATE_WRITERS * STATE_EACH, start.elapsed())
}

async fn state_query(stores: &Stores, raw: Option<&StateRaw>, tag: &str) -> f64 {
    let start = Instant::now();
    let n = match raw {
        Some(raw) => raw.changes(tag).await,
        None => {
            stores
                .durable_state
                .query_changes(
                    tag.into(),
                    Offset::NoOffset,
                    persistence_api::QueryMode::Current,
                )
                .fold(0u64, |n, c| async move {
                    c.unwrap();
                    n + 1
                })
                .await
        }
    };
    assert_eq!(n, STATE_IDS);
    rate(STATE_IDS, start.elapsed())
}

/// The three durable-state workloads, stores and raw taking turns going first; medians.
async fn state_rounds(db: &str, stores: &Stores, raw: StateRaw) {
    let raw = std::sync::Arc::new(raw);
    raw.fill("query").await;
    let mut r = vec![Vec::new(); 6];
    for round in 0..rounds() {
        for turn in 0..2 {
            let raw_first = (round + turn) % 2 == 1;
            for side in [raw_first, !raw_first] {
                let who = if side { "raw" } else { "stores" };
                let raw_ref = side.then_some(&*raw);
                let k = usize::from(side);
                if turn == 0 {
                    r[k].push(
                        state_sequential(stores, raw_ref, &format!("seq-{who}-{round}")).await,
                    );
                    r[2 + k].push(
                        state_concurrent(
                            stores,
                            side.then_some(&raw),
                            &format!("conc-{who}-{round}"),
                        )
                        .await,
                    );
                } else {
                    r[4 + k].push(state_query(stores, raw_ref, "query").await);
                }
            }
        }
    }
    let names = [
        "state upserts of one id, sequential",
        "state upserts, 16 ids concurrently",
        "current changes over 10,000 ids",
    ];
    for (i, name) in names.iter().enumerate() {
        row(
            db,
            name,
            median(r[2 * i].clone()),
            median(r[2 * i + 1].clone()),
        );
    }
}

async fn bench_states_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    config.max_connections = 1;
    let opened = Sqlite::open(config).await.unwrap();
    println!("\nDurable state, SQLite (synchronous = full, WAL, 1 connection): states/s");
    println!(
        "| database   | workload                         |       stores |          raw | ratio |"
    );
    println!(
        "|------------|----------------------------------|--------------|--------------|-------|"
    );
    let raw = StateRaw::Sqlite(
        opened.pool().clone(),
        tokio::sync::Mutex::new(()),
        "\"durable_state\"".into(),
    );
    state_rounds("sqlite", &opened.stores(), raw).await;
    opened.close().await;
}

async fn bench_states_postgres(url: &str) {
    let schema = unique_schema("state");
    let mut config = plain(url).with_schema(&schema);
    config.max_connections = (STATE_WRITERS + 4) as u32;
    let opened = Postgres::open(config).await.unwrap();
    println!(
        "\nDurable state, PostgreSQL on loopback, pool of {}: states/s",
        STATE_WRITERS + 4
    );
    println!(
        "| database   | workload                         |       stores |          raw | ratio |"
    );
    println!(
        "|------------|----------------------------------|--------------|--------------|-------|"
    );
    let raw = StateRaw::Postgres(
        opened.pool().clone(),
        format!("\"{schema}\".\"durable_state\""),
    );
    state_rounds("postgres", &opened.stores(), raw).await;
    drop_schema(opened.pool(), &schema).await;
    opened.close().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // BENCH_ONLY=sqlite or BENCH_ONLY=postgres runs one database; BENCH_ONLY=state runs
    // the durable-state workloads only (of both).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let url = std::env::var("PERSISTENCE_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    runtime.block_on(async {
        if only == "group" || only == "group-sqlite" {
            bench_group_sqlite().await;
        }
        if only == "group" || only == "group-postgres" {
            match &url {
                Some(url) => bench_group_postgres(url).await,
                None => println!(
                    "\nPostgreSQL group commit skipped: PERSISTENCE_POSTGRES_URL is not set"
                ),
            }
        }
        if only.starts_with("group") {
            return;
        }
        if only.is_empty() || only == "sqlite" {
            bench_sqlite().await;
        }
        if only.is_empty() || only == "postgres" {
            match &url {
                Some(url) => bench_postgres(url).await,
                None => println!("\nPostgreSQL skipped: PERSISTENCE_POSTGRES_URL is not set"),
            }
        }
        if only.is_empty() || only == "postgres" || only == "tls" {
            match &url {
                Some(url) => bench_tls(url).await,
                None => println!("\nPostgreSQL TLS skipped: PERSISTENCE_POSTGRES_URL is not set"),
            }
        }
        if only.is_empty() || only == "sqlite" || only == "state" {
            bench_states_sqlite().await;
        }
        if only.is_empty() || only == "postgres" || only == "state" {
            match &url {
                Some(url) => bench_states_postgres(url).await,
                None => println!(
                    "\nPostgreSQL durable state skipped: PERSISTENCE_POSTGRES_URL is not set"
                ),
            }
        }
    });
}

// ---------------------------------------------------------------- group commit

/// `BENCH_ONLY=group`: 1,000 entities written by 1 / 10 / 100 / 1,000 concurrent tasks,
/// single-event atomic writes (one `write_events` call each), each task writing its own
/// entities in turn (task t owns entities t, t + n, t + 2n, …, so no write conflicts).
/// Three paths per concurrency: raw sqlx, one transaction per event (the per-request
/// bound; SQLite's raw writers take turns on a mutex as the stores' do), the stores with
/// `group_commit = false`, and with `group_commit = true` (the default). Events/s, and the
/// p50 / p99 latency of one write call. `BENCH_GC_EVENTS` (default 3,000) events per run.
mod group {
    use super::*;
    use std::sync::Arc;

    use persistence_tck::bench::ENTITIES;
    pub const TASKS: [usize; 4] = [1, 10, 100, 1000];

    /// `BENCH_GC_TASKS` (comma-separated) instead of [`TASKS`].
    pub fn tasks() -> Vec<usize> {
        persistence_tck::bench::env_list("BENCH_GC_TASKS", &TASKS)
    }

    /// `BENCH_GC_MAX_EVENTS` and `BENCH_GC_WINDOW_MS` for the group-commit side (else the
    /// defaults).
    pub fn tuning() -> (Option<u32>, Option<u64>) {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        (
            var("BENCH_GC_MAX_EVENTS").map(|v| v as u32),
            var("BENCH_GC_WINDOW_MS"),
        )
    }

    /// `BENCH_GC_EVENTS`, else 3,000.
    pub fn events() -> usize {
        persistence_tck::bench::env_usize("BENCH_GC_EVENTS", 3000)
    }

    pub use persistence_tck::bench::Figures;

    /// [`persistence_tck::bench::run`] over the ids `<prefix>-<entity>`, from sequence
    /// number 1.
    pub async fn run<F, Fut>(tasks: usize, events: usize, prefix: &str, write: F) -> Figures
    where
        F: Fn(PersistenceId, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let ids: Arc<Vec<PersistenceId>> = Arc::new(
            (0..ENTITIES)
                .map(|i| PersistenceId::new(format!("{prefix}-{i}")).unwrap())
                .collect(),
        );
        persistence_tck::bench::run(tasks, events, 1, move |e, seq| write(ids[e].clone(), seq))
            .await
    }

    pub async fn stores(stores: &Stores, tasks: usize, events: usize, prefix: &str) -> Figures {
        let stores = stores.clone();
        run(tasks, events, prefix, move |id, seq| {
            let stores = stores.clone();
            async move {
                stores
                    .journal
                    .write(AtomicWrite::single(event(&id, seq, None)).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await
    }

    pub async fn sqlite_raw(
        pool: &sqlx::SqlitePool,
        tasks: usize,
        events: usize,
        prefix: &str,
    ) -> Figures {
        let pool = pool.clone();
        let turns = Arc::new(tokio::sync::Mutex::new(()));
        run(tasks, events, prefix, move |id, seq| {
            let (pool, turns) = (pool.clone(), turns.clone());
            async move {
                let _turn = turns.lock().await;
                sqlite_raw::write(&pool, &id, &[event(&id, seq, None)]).await;
            }
        })
        .await
    }

    pub async fn pg_raw(
        pool: &sqlx::PgPool,
        sql: Arc<pg_raw::Sql>,
        tasks: usize,
        events: usize,
        prefix: &str,
    ) -> Figures {
        let pool = pool.clone();
        run(tasks, events, prefix, move |id, seq| {
            let (pool, sql) = (pool.clone(), sql.clone());
            async move { pg_raw::write_one(&pool, &sql, &id, seq).await }
        })
        .await
    }

    pub fn header(what: &str) {
        println!("\n{what}");
        println!(
            "| database   | tasks | path                 |   events/s | p50 ms | p99 ms | / raw |"
        );
        println!(
            "|------------|------:|----------------------|-----------:|-------:|-------:|------:|"
        );
    }

    pub fn row(db: &str, tasks: usize, path: &str, f: &Figures, raw: f64) {
        println!(
            "| {db:<10} | {tasks:>5} | {path:<20} | {:>10.0} | {:>6.2} | {:>6.2} | {:>5.2} |",
            f.rate,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.rate / raw
        );
    }
}

async fn bench_group_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("group.db"));
    let mut off_config = config.clone();
    off_config.group_commit = false;
    let (max_events, window) = group::tuning();
    if let Some(m) = max_events {
        config.group_commit_max_events = m;
    }
    if let Some(w) = window {
        config.group_commit_window = Duration::from_millis(w);
    }
    let on = Sqlite::open(config.clone()).await.unwrap();
    let off = Sqlite::open(off_config).await.unwrap();
    let events = group::events();
    group::header(&format!(
        "Group commit, SQLite (synchronous = {:?}, WAL), {events} single-event writes of 1,000 entities per run, group_commit_max_events {}, window {:?}",
        config.synchronous, config.group_commit_max_events, config.group_commit_window
    ));
    for tasks in group::tasks() {
        let raw = group::sqlite_raw(off.pool(), tasks, events, &format!("raw-{tasks}")).await;
        let no = group::stores(&off.stores(), tasks, events, &format!("off-{tasks}")).await;
        let yes = group::stores(&on.stores(), tasks, events, &format!("on-{tasks}")).await;
        group::row("sqlite", tasks, "raw sqlx, 1 tx/event", &raw, raw.rate);
        group::row("sqlite", tasks, "group_commit = false", &no, raw.rate);
        group::row("sqlite", tasks, "group_commit = true", &yes, raw.rate);
    }
    on.close().await;
    off.close().await;
}

async fn bench_group_postgres(url: &str) {
    let schema = unique_schema("bench_group");
    let mut config = plain(url).with_schema(&schema);
    let mut off_config = config.clone();
    off_config.group_commit = false;
    let (max_events, window) = group::tuning();
    if let Some(m) = max_events {
        config.group_commit_max_events = m;
    }
    if let Some(w) = window {
        config.group_commit_window = Duration::from_millis(w);
    }
    let on = Postgres::open(config.clone()).await.unwrap();
    let off = Postgres::open(off_config).await.unwrap();
    let settings: Vec<(String, String)> = sqlx::query(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'commit_delay')",
    )
    .fetch_all(on.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let events = group::events();
    group::header(&format!(
        "Group commit, PostgreSQL on loopback {settings:?}, pool of {}, {events} single-event writes of 1,000 entities per run, group_commit_max_events {}, window {:?}",
        config.max_connections, config.group_commit_max_events, config.group_commit_window
    ));
    let sql = std::sync::Arc::new(pg_raw::Sql::new(&schema));
    for tasks in group::tasks() {
        let raw = group::pg_raw(
            off.pool(),
            sql.clone(),
            tasks,
            events,
            &format!("raw-{tasks}"),
        )
        .await;
        let no = group::stores(&off.stores(), tasks, events, &format!("off-{tasks}")).await;
        let yes = group::stores(&on.stores(), tasks, events, &format!("on-{tasks}")).await;
        group::row("postgres", tasks, "raw sqlx, 1 tx/event", &raw, raw.rate);
        group::row("postgres", tasks, "group_commit = false", &no, raw.rate);
        group::row("postgres", tasks, "group_commit = true", &yes, raw.rate);
    }
    drop_schema(on.pool(), &schema).await;
    on.close().await;
    off.close().await;
}
