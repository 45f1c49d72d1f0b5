//! Projections on every configured backend, in one process: what a projection costs over
//! the raw query it reads, what exactly-once delivery costs, and how long a live
//! projection takes to see a write.
//!
//! ```text
//! source .servers/postgres/env; source .servers/dynamodb/env; source .servers/cassandra/env
//! cargo bench -p persistence-stores --all-features --bench projection
//! ```
//!
//! Memory and SQLite always run; PostgreSQL, DynamoDB and Cassandra run when
//! `PERSISTENCE_POSTGRES_URL`, `PERSISTENCE_DYNAMODB_ENDPOINT` and
//! `PERSISTENCE_CASSANDRA_CONTACT_POINTS` are set (a line names each one skipped). Each
//! backend runs with its default configuration, in a namespace of its own; what it
//! stored is removed at the end (SQLite's file is a temporary one).
//!
//! 1. **No-op projection vs raw stream.** N events under one tag, then, alternating for
//!    `BENCH_ROUNDS` rounds: (a) `query_events_by_tag(tag, NoOffset, Current)` read to the
//!    end; (b) a current at-least-once projection with a no-op handler committing every
//!    100 envelopes, from no offset, over the same tag. Medians of events/s, b/a, and the
//!    offset commits of (b).
//! 2. **Exactly-once** (memory, SQLite, PostgreSQL, DynamoDB): a handler writing one
//!    upsert per envelope (a read-model row keyed by `idempotency_key`: an `INSERT ... ON
//!    CONFLICT DO UPDATE`, a DynamoDB `Update` item, a closure in memory) in the offset
//!    store's transaction, one envelope per transaction, then groups of 50; one run each
//!    over the same N events, beside the at-least-once no-op figure.
//! 3. **End-to-end lag** (every backend with live queries): a live at-least-once
//!    projection runs; a writer writes single tagged events at `BENCH_LAG_RATE` per second
//!    for `BENCH_LAG_SECS`; for each event, the time from the write's acknowledgement to
//!    the handler's call (p50, p99, max) beside the backend's declared
//!    `live_query_max_delay`.
//!
//! Environment: `BENCH_EVENTS` (N on memory, SQLite, PostgreSQL; default 5000),
//! `BENCH_EVENTS_REMOTE` (N on DynamoDB and Cassandra; default 2000), `BENCH_ROUNDS`
//! (default 3), `BENCH_LAG_RATE` (default 50), `BENCH_LAG_SECS` (default 10),
//! `BENCH_MAX_SECS` (the longest one projection run may take before it is stopped and
//! its rate taken from what it handled; default 20).
//!
//! Prints a plain-text table per part and one JSON line per figure; writes nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use persistence_stores::cassandra::{Cassandra, CassandraConfig};
use persistence_stores::dynamodb::aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, Select, TransactWriteItem, Update,
};
use persistence_stores::dynamodb::{
    aws_sdk_dynamodb, DynamoDb, DynamoDbConfig, DynamoDbTransaction,
};
use persistence_stores::memory::MemoryTransaction;
use persistence_stores::projection::{
    idempotency_key, ExactlyOnceHandler, Handler, Projection, ProjectionSettings, ProjectionStatus,
    RestartSettings, Source,
};
use persistence_stores::sql::sqlx::{self, AssertSqlSafe, PgPool, SqlitePool};
use persistence_stores::sql::{
    Postgres, PostgresConfig, PostgresTransaction, Sqlite, SqliteConfig, SqliteTransaction,
};
use persistence_stores::{
    async_trait, AtomicWrite, Error, ErrorKind, EventEnvelope, JournalExt, Offset, Payload,
    PersistenceId, PersistentEvent, ProjectionId, QueryMode, Result, StoreTransaction, Stores,
};

const TAG: &str = "bench-throughput";
const LAG_TAG: &str = "bench-lag";
/// Events per atomic write when filling the tag.
const BATCH: u64 = 25;
const PAYLOAD: usize = 100;
const COMMIT_EVERY: usize = 100;
const GROUP: usize = 50;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn server_var(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Clone, Copy)]
struct Params {
    events_local: u64,
    events_remote: u64,
    rounds: usize,
    lag_rate: u32,
    lag_secs: u64,
    max_run: Duration,
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Storage, e.to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn event(id: &PersistenceId, seq: u64, tag: &str) -> PersistentEvent {
    PersistentEvent::new(
        id.clone(),
        seq,
        Payload::new("bench", "bench.Event/v1", vec![b'x'; PAYLOAD]),
    )
    .with_writer_id("bench-writer")
    .with_tags([tag])
}

fn settings() -> ProjectionSettings {
    ProjectionSettings {
        commit_every: COMMIT_EVERY,
        handler_retries: 0,
        restart: RestartSettings::never(),
        ..ProjectionSettings::default()
    }
}

// ------------------------------------------------------------------------- handlers

struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn handle(&mut self, _envelope: &EventEnvelope) -> Result<()> {
        Ok(())
    }
}

/// Where the exactly-once handler upserts its read-model rows.
#[derive(Clone)]
enum ReadModel {
    Memory(Arc<Mutex<HashMap<String, u64>>>),
    Sqlite {
        pool: SqlitePool,
        table: String,
    },
    Postgres {
        pool: PgPool,
        table: String,
    },
    DynamoDb {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
}

impl ReadModel {
    async fn create(&self) -> Result<()> {
        match self {
            ReadModel::Memory(_) => Ok(()),
            ReadModel::Sqlite { pool, table } => sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {table} (id TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
            )))
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(storage),
            ReadModel::Postgres { pool, table } => sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {table} (id TEXT PRIMARY KEY, seq BIGINT NOT NULL)"
            )))
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(storage),
            ReadModel::DynamoDb { client, table } => {
                client
                    .create_table()
                    .table_name(table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("id")
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(storage)?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("id")
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(storage)?,
                    )
                    .send()
                    .await
                    .map_err(|e| storage(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
                Ok(())
            }
        }
    }

    /// Rows stored, to check the effects landed.
    async fn rows(&self) -> Result<u64> {
        match self {
            ReadModel::Memory(map) => Ok(map.lock().unwrap().len() as u64),
            ReadModel::Sqlite { pool, table } => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(pool)
                    .await
                    .map(|n| n as u64)
                    .map_err(storage)
            }
            ReadModel::Postgres { pool, table } => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(pool)
                    .await
                    .map(|n| n as u64)
                    .map_err(storage)
            }
            ReadModel::DynamoDb { client, table } => {
                let mut n = 0u64;
                let mut start = None;
                loop {
                    let page = client
                        .scan()
                        .table_name(table)
                        .select(Select::Count)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| storage(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
                    n += page.count() as u64;
                    start = page.last_evaluated_key().cloned();
                    if start.is_none() {
                        return Ok(n);
                    }
                }
            }
        }
    }

    async fn drop_table(&self) -> Result<()> {
        match self {
            ReadModel::Memory(_) => Ok(()),
            ReadModel::Sqlite { pool, table } => {
                sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(storage)
            }
            ReadModel::Postgres { pool, table } => {
                sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(storage)
            }
            ReadModel::DynamoDb { client, table } => client
                .delete_table()
                .table_name(table)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| storage(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }
}

/// One upserted read-model row per envelope, in the offset store's transaction.
struct Upsert(ReadModel);

#[async_trait]
impl ExactlyOnceHandler for Upsert {
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        envelopes: &[EventEnvelope],
    ) -> Result<()> {
        for envelope in envelopes {
            let key = idempotency_key(envelope);
            let seq = envelope.sequence_nr();
            match &self.0 {
                ReadModel::Memory(map) => {
                    let map = map.clone();
                    MemoryTransaction::of(transaction)?.push(move || {
                        map.lock().unwrap().insert(key, seq);
                    });
                }
                ReadModel::Sqlite { table, .. } => {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (id, seq) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq"
                    )))
                    .bind(key)
                    .bind(seq as i64)
                    .execute(SqliteTransaction::of(transaction)?.connection())
                    .await
                    .map_err(storage)?;
                }
                ReadModel::Postgres { table, .. } => {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (id, seq) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq"
                    )))
                    .bind(key)
                    .bind(seq as i64)
                    .execute(PostgresTransaction::of(transaction)?.connection())
                    .await
                    .map_err(storage)?;
                }
                ReadModel::DynamoDb { table, .. } => {
                    let update = Update::builder()
                        .table_name(table)
                        .key("id", AttributeValue::S(key))
                        .update_expression("SET seq = :s")
                        .expression_attribute_values(":s", AttributeValue::N(seq.to_string()))
                        .build()
                        .map_err(storage)?;
                    DynamoDbTransaction::of(transaction)?
                        .push(TransactWriteItem::builder().update(update).build());
                }
            }
        }
        Ok(())
    }
}

/// Records when it was called for each sequence number.
struct Stamp(Arc<Mutex<HashMap<u64, Instant>>>);

#[async_trait]
impl Handler for Stamp {
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
        let now = Instant::now();
        self.0.lock().unwrap().insert(envelope.sequence_nr(), now);
        Ok(())
    }
}

// -------------------------------------------------------------------------- results

struct Throughput {
    backend: &'static str,
    events: u64,
    raw: f64,
    projection: f64,
    commits: u64,
}

struct ExactlyOnce {
    backend: &'static str,
    events: u64,
    at_least_once: f64,
    /// events/s and commits, one envelope per transaction; then groups of 50.
    single: Option<(f64, u64)>,
    grouped: Option<(f64, u64)>,
    note: &'static str,
}

struct Lag {
    backend: &'static str,
    written: u64,
    delivered: u64,
    early: u64,
    p50: f64,
    p99: f64,
    max: f64,
    declared: Option<Duration>,
}

#[derive(Default)]
struct Report {
    throughput: Vec<Throughput>,
    exactly_once: Vec<ExactlyOnce>,
    lag: Vec<Lag>,
    skipped: Vec<String>,
    json: Vec<String>,
}

impl Report {
    fn json(&mut self, backend: &str, metric: &str, fields: &[(&str, f64)]) {
        let fields: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "\"{k}\":{}",
                    if v.is_finite() {
                        format!("{v:.3}")
                    } else {
                        "null".into()
                    }
                )
            })
            .collect();
        self.json.push(format!(
            "{{\"bench\":\"projection\",\"backend\":\"{backend}\",\"metric\":\"{metric}\",{}}}",
            fields.join(",")
        ));
    }

    fn print(&self) {
        println!("\n1. No-op projection vs raw tag stream (current, from NoOffset; medians; commit every {COMMIT_EVERY})\n");
        println!(
            "| {:<9} | {:>6} | {:>14} | {:>16} | {:>5} | {:>7} |",
            "backend", "events", "raw events/s", "projection ev/s", "b/a", "commits"
        );
        println!(
            "|{:-<11}|{:->8}|{:->16}|{:->18}|{:->7}|{:->9}|",
            "", "", "", "", "", ""
        );
        for r in &self.throughput {
            println!(
                "| {:<9} | {:>6} | {:>14.0} | {:>16.0} | {:>5.2} | {:>7} |",
                r.backend,
                r.events,
                r.raw,
                r.projection,
                r.projection / r.raw,
                r.commits
            );
        }

        println!("\n2. Exactly-once: one upsert per envelope in the offset store's transaction (events/s; one run each)\n");
        println!(
            "| {:<9} | {:>6} | {:>13} | {:>12} | {:>5} | {:>7} | {:>13} | {:>5} | {:>7} |",
            "backend",
            "events",
            "ALO no-op",
            "EO 1/tx",
            "/ALO",
            "commits",
            "EO 50/tx",
            "/ALO",
            "commits"
        );
        println!(
            "|{:-<11}|{:->8}|{:->15}|{:->14}|{:->7}|{:->9}|{:->15}|{:->7}|{:->9}|",
            "", "", "", "", "", "", "", "", ""
        );
        for r in &self.exactly_once {
            let cell = |v: Option<(f64, u64)>| match v {
                Some((rate, commits)) => (
                    format!("{rate:.0}"),
                    format!("{:.3}", rate / r.at_least_once),
                    commits.to_string(),
                ),
                None => ("n/a".into(), "-".into(), "-".into()),
            };
            let (s, sr, sc) = cell(r.single);
            let (g, gr, gc) = cell(r.grouped);
            println!(
                "| {:<9} | {:>6} | {:>13.0} | {:>12} | {:>5} | {:>7} | {:>13} | {:>5} | {:>7} |{}",
                r.backend,
                r.events,
                r.at_least_once,
                s,
                sr,
                sc,
                g,
                gr,
                gc,
                if r.note.is_empty() {
                    String::new()
                } else {
                    format!(" {}", r.note)
                }
            );
        }

        println!("\n3. End-to-end lag of a live at-least-once projection: write acknowledged -> handler called (ms)\n");
        println!(
            "| {:<9} | {:>7} | {:>9} | {:>8} | {:>8} | {:>8} | {:>12} | {:>5} |",
            "backend", "written", "delivered", "p50", "p99", "max", "declared max", "early"
        );
        println!(
            "|{:-<11}|{:->9}|{:->11}|{:->10}|{:->10}|{:->10}|{:->14}|{:->7}|",
            "", "", "", "", "", "", "", ""
        );
        for r in &self.lag {
            println!(
                "| {:<9} | {:>7} | {:>9} | {:>8.1} | {:>8.1} | {:>8.1} | {:>12} | {:>5} |",
                r.backend,
                r.written,
                r.delivered,
                r.p50,
                r.p99,
                r.max,
                r.declared
                    .map(|d| format!("{}", d.as_millis()))
                    .unwrap_or_else(|| "none".into()),
                r.early
            );
        }
        println!(
            "\n(early: handler called before the writer had its acknowledgement; counted as 0 ms)"
        );
        if !self.skipped.is_empty() {
            println!();
            for s in &self.skipped {
                println!("skipped: {s}");
            }
        }
        println!();
        for j in &self.json {
            println!("{j}");
        }
    }
}

// ---------------------------------------------------------------------------- parts

/// Writes `n` events of one id under `tag`, `BATCH` per atomic write.
async fn fill(stores: &Stores, id: &PersistenceId, tag: &str, n: u64) -> Result<()> {
    let mut seq = 1;
    while seq <= n {
        let last = (seq + BATCH - 1).min(n);
        let events = (seq..=last).map(|s| event(id, s, tag)).collect();
        stores.journal.write(AtomicWrite::new(events)?).await?;
        seq = last + 1;
    }
    Ok(())
}

async fn raw_stream(stores: &Stores, tag: &str) -> Result<u64> {
    let mut stream = stores.read_journal.query_events_by_tag(
        tag.to_owned(),
        Offset::NoOffset,
        QueryMode::Current,
    );
    let mut n = 0;
    while let Some(envelope) = stream.next().await {
        envelope?;
        n += 1;
    }
    Ok(n)
}

/// Times a projection's run (`run_until(sleep(max))`: a current projection runs to its
/// end, or is stopped after `max`).
async fn timed(
    run: impl std::future::Future<Output = Result<ProjectionStatus>>,
) -> Result<(ProjectionStatus, Duration)> {
    let start = Instant::now();
    let status = run.await?;
    Ok((status, start.elapsed()))
}

struct Target {
    name: &'static str,
    stores: Stores,
    events: u64,
    read_model: Option<ReadModel>,
    /// Why there is no exactly-once row.
    no_exactly_once: &'static str,
}

async fn bench(target: &Target, p: Params, report: &mut Report) -> Result<()> {
    let name = target.name;
    let stores = &target.stores;
    let n = target.events;
    let caps = stores.capabilities();
    eprintln!("[{name}] writing {n} events under {TAG:?}");
    let started = Instant::now();
    fill(stores, &PersistenceId::new("bench-tp-1")?, TAG, n).await?;
    eprintln!(
        "[{name}] written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A current query may hold back the newest events for the store's consistency delay:
    // wait until it returns them all before timing anything.
    let deadline =
        Instant::now() + caps.live_query_max_delay.unwrap_or_default() + Duration::from_secs(20);
    loop {
        let seen = raw_stream(stores, TAG).await?;
        if seen == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(storage(format!(
                "the tag query returns {seen} of {n} events"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 1. raw stream vs no-op projection, alternating.
    let mut raw = Vec::new();
    let mut projected = Vec::new();
    let mut commits = 0;
    for round in 0..p.rounds {
        for step in 0..2 {
            if (round + step) % 2 == 0 {
                let start = Instant::now();
                let seen = raw_stream(stores, TAG).await?;
                let elapsed = start.elapsed();
                assert_eq!(seen, n, "{name}: raw stream");
                raw.push(rate(n, elapsed));
            } else {
                let projection = Projection::builder(
                    ProjectionId::new("noop", format!("r{round}"))?,
                    Source::tag(TAG, QueryMode::Current),
                    stores,
                )
                .settings(settings())
                .at_least_once(Noop);
                let (status, elapsed) =
                    timed(projection.run_until(tokio::time::sleep(p.max_run))).await?;
                if status.handled != n {
                    eprintln!(
                        "[{name}] no-op projection handled {} of {n} within {:?}",
                        status.handled, p.max_run
                    );
                }
                projected.push(rate(status.handled, elapsed));
                commits = status.commits;
            }
        }
    }
    let (raw, projection) = (median(raw), median(projected));
    eprintln!(
        "[{name}] raw {raw:.0}/s, no-op projection {projection:.0}/s ({:.2}), {commits} commits",
        projection / raw
    );
    report.json(
        name,
        "noop_vs_raw",
        &[
            ("events", n as f64),
            ("raw_events_per_s", raw),
            ("projection_events_per_s", projection),
            ("ratio", projection / raw),
            ("commits", commits as f64),
        ],
    );
    report.throughput.push(Throughput {
        backend: name,
        events: n,
        raw,
        projection,
        commits,
    });

    // 2. exactly-once.
    let mut row = ExactlyOnce {
        backend: name,
        events: n,
        at_least_once: projection,
        single: None,
        grouped: None,
        note: target.no_exactly_once,
    };
    if let Some(read_model) = &target.read_model {
        for (label, group) in [("eo1", 1usize), ("eo50", GROUP)] {
            let builder = Projection::builder(
                ProjectionId::new(label, "r")?,
                Source::tag(TAG, QueryMode::Current),
                stores,
            )
            .settings(settings());
            let builder = if group > 1 {
                builder.group_within(group, Duration::from_millis(200))
            } else {
                builder
            };
            let projection = builder.exactly_once(Upsert(read_model.clone()))?;
            let (status, elapsed) =
                timed(projection.run_until(tokio::time::sleep(p.max_run))).await?;
            let r = rate(status.handled, elapsed);
            let rows = read_model.rows().await?;
            eprintln!("[{name}] exactly-once {group}/tx: {} handled in {:.2} s = {r:.0}/s, {} commits, {rows} read-model rows", status.handled, elapsed.as_secs_f64(), status.commits);
            if status.handled != n {
                eprintln!(
                    "[{name}] exactly-once {group}/tx stopped at {} of {n} after {:?}",
                    status.handled, p.max_run
                );
            }
            report.json(
                name,
                &format!("exactly_once_{group}_per_tx"),
                &[
                    ("events", status.handled as f64),
                    ("events_per_s", r),
                    ("ratio_to_noop_at_least_once", r / row.at_least_once),
                    ("commits", status.commits as f64),
                ],
            );
            if group == 1 {
                row.single = Some((r, status.commits));
            } else {
                row.grouped = Some((r, status.commits));
            }
        }
    }
    report.exactly_once.push(row);

    // 3. lag.
    if caps.live_queries {
        let l = lag(name, stores, p).await?;
        report.json(
            name,
            "live_lag_ms",
            &[
                ("written", l.written as f64),
                ("delivered", l.delivered as f64),
                ("p50", l.p50),
                ("p99", l.p99),
                ("max", l.max),
                (
                    "declared_max",
                    l.declared.map_or(f64::NAN, |d| d.as_millis() as f64),
                ),
                ("early", l.early as f64),
            ],
        );
        report.lag.push(l);
    } else {
        report.skipped.push(format!("{name} lag: no live queries"));
    }
    Ok(())
}

async fn lag(name: &'static str, stores: &Stores, p: Params) -> Result<Lag> {
    let declared = stores.capabilities().live_query_max_delay;
    let id = PersistenceId::new("bench-lag-1")?;
    let calls = Arc::new(Mutex::new(HashMap::new()));
    let (handle, join) = Projection::builder(
        ProjectionId::new("lag", "live")?,
        Source::tag(LAG_TAG, QueryMode::Live),
        stores,
    )
    .settings(settings())
    .at_least_once(Stamp(calls.clone()))
    .spawn();
    // A first event, not counted: the live query is running once it arrives.
    stores
        .journal
        .write(AtomicWrite::single(event(&id, 1, LAG_TAG))?)
        .await?;
    let warm_deadline = Instant::now() + declared.unwrap_or_default() + Duration::from_secs(30);
    while !calls.lock().unwrap().contains_key(&1) {
        if Instant::now() > warm_deadline || join.is_finished() {
            handle.stop();
            let outcome = join.await;
            return Err(storage(format!(
                "the live projection never saw its first event ({outcome:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let count = p.lag_rate as u64 * p.lag_secs;
    eprintln!("[{name}] lag: writing {count} events at {}/s", p.lag_rate);
    let mut acks = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / p.lag_rate.max(1) as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 2..count + 2 {
        ticker.tick().await;
        stores
            .journal
            .write(AtomicWrite::single(event(&id, seq, LAG_TAG))?)
            .await?;
        acks.insert(seq, Instant::now());
    }
    let deadline = Instant::now() + declared.unwrap_or_default() + Duration::from_secs(5);
    while calls.lock().unwrap().len() < acks.len() + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    join.await.map_err(storage)??;
    let calls = calls.lock().unwrap();
    let mut ms = Vec::new();
    let mut early = 0;
    for (seq, ack) in &acks {
        if let Some(called) = calls.get(seq) {
            if called < ack {
                early += 1;
            }
            ms.push(called.saturating_duration_since(*ack).as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| {
        if ms.is_empty() {
            f64::NAN
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    let l = Lag {
        backend: name,
        written: count,
        delivered: ms.len() as u64,
        early,
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        declared,
    };
    eprintln!(
        "[{name}] lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, declared {:?}",
        l.p50, l.p99, l.max, declared
    );
    Ok(l)
}

// --------------------------------------------------------------------------- backends

async fn memory(run: &str, p: Params, report: &mut Report) -> Result<()> {
    let _ = run;
    let target = Target {
        name: "memory",
        stores: persistence_stores::memory::stores(),
        events: p.events_local,
        read_model: Some(ReadModel::Memory(Arc::default())),
        no_exactly_once: "",
    };
    bench(&target, p, report).await
}

async fn sqlite(run: &str, p: Params, report: &mut Report) -> Result<()> {
    let path = std::env::temp_dir().join(format!("persistence-projection-bench-{run}.db"));
    let outcome = async {
        let db = Sqlite::open(SqliteConfig::new(&path)).await?;
        let read_model = ReadModel::Sqlite {
            pool: db.pool().clone(),
            table: "bench_read_model".into(),
        };
        read_model.create().await?;
        let target = Target {
            name: "sqlite",
            stores: db.stores(),
            events: p.events_local,
            read_model: Some(read_model),
            no_exactly_once: "",
        };
        let outcome = bench(&target, p, report).await;
        drop(target);
        db.close().await;
        outcome
    }
    .await;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    outcome
}

async fn postgres(url: String, run: &str, p: Params, report: &mut Report) -> Result<()> {
    let namespace = format!("pb{run}");
    let db = Postgres::open(PostgresConfig {
        namespace: namespace.clone(),
        ..PostgresConfig::new(url)
    })
    .await?;
    let read_model = ReadModel::Postgres {
        pool: db.pool().clone(),
        table: format!("{namespace}_read_model"),
    };
    read_model.create().await?;
    let target = Target {
        name: "postgres",
        stores: db.stores(),
        events: p.events_local,
        read_model: Some(read_model),
        no_exactly_once: "",
    };
    let outcome = bench(&target, p, report).await;
    // Drop every table of the run's namespace (the read model's too).
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND starts_with(table_name, $1)",
    )
    .bind(format!("{namespace}_"))
    .fetch_all(db.pool())
    .await
    .map_err(storage)?;
    for table in tables {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS \"{table}\" CASCADE"
        )))
        .execute(db.pool())
        .await
        .map_err(storage)?;
    }
    db.close().await;
    outcome
}

async fn dynamodb(endpoint: String, run: &str, p: Params, report: &mut Report) -> Result<()> {
    let config = DynamoDbConfig {
        journal_table: format!("projbench_{run}_journal"),
        snapshot_table: format!("projbench_{run}_snapshot"),
        namespace: format!("pb{run}"),
        ..DynamoDbConfig::local(endpoint)
    };
    let db = DynamoDb::open(config.clone()).await?;
    let read_model = ReadModel::DynamoDb {
        client: db.client().clone(),
        table: format!("projbench_{run}_read_model"),
    };
    read_model.create().await?;
    let target = Target {
        name: "dynamodb",
        stores: db.stores(),
        events: p.events_remote,
        read_model: Some(read_model.clone()),
        no_exactly_once: "",
    };
    let outcome = bench(&target, p, report).await;
    read_model.drop_table().await?;
    persistence_stores::dynamodb::delete_tables(db.client(), &config).await?;
    outcome
}

async fn cassandra(
    contact_points: String,
    run: &str,
    p: Params,
    report: &mut Report,
) -> Result<()> {
    let config = CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter: server_var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER"),
        keyspace: "persistence_bench".into(),
        namespace: format!("pb{run}"),
        create_schema: true,
        ..CassandraConfig::default()
    };
    let db = Cassandra::open(config).await?;
    let target = Target {
        name: "cassandra",
        stores: db.stores(),
        events: p.events_remote,
        read_model: None,
        no_exactly_once: "(no exactly-once: no transaction across partitions)",
    };
    let outcome = bench(&target, p, report).await;
    let ids = [
        PersistenceId::new("bench-tp-1")?,
        PersistenceId::new("bench-lag-1")?,
    ];
    for id in &ids {
        target.stores.maintenance.purge_persistence_id(id).await?;
    }
    outcome
}

fn main() {
    let p = Params {
        events_local: env_or("BENCH_EVENTS", 5000u64).max(1),
        events_remote: env_or("BENCH_EVENTS_REMOTE", 2000u64).max(1),
        rounds: env_or("BENCH_ROUNDS", 3usize).max(1),
        lag_rate: env_or("BENCH_LAG_RATE", 50u32).max(1),
        lag_secs: env_or("BENCH_LAG_SECS", 10u64).max(1),
        max_run: Duration::from_secs(env_or("BENCH_MAX_SECS", 20u64).max(1)),
    };
    let run = format!(
        "{:08x}",
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u32)
            ^ std::process::id()
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::default();
    runtime.block_on(async {
        let r = &mut report;
        let mut outcome = vec![
            ("memory", memory(&run, p, r).await),
            ("sqlite", sqlite(&run, p, r).await),
        ];
        match server_var("PERSISTENCE_POSTGRES_URL") {
            Some(url) => outcome.push(("postgres", postgres(url, &run, p, r).await)),
            None => r
                .skipped
                .push("postgres: PERSISTENCE_POSTGRES_URL is not set".into()),
        }
        match server_var("PERSISTENCE_DYNAMODB_ENDPOINT") {
            Some(endpoint) => outcome.push(("dynamodb", dynamodb(endpoint, &run, p, r).await)),
            None => r
                .skipped
                .push("dynamodb: PERSISTENCE_DYNAMODB_ENDPOINT is not set".into()),
        }
        match server_var("PERSISTENCE_CASSANDRA_CONTACT_POINTS") {
            Some(points) => outcome.push(("cassandra", cassandra(points, &run, p, r).await)),
            None => r
                .skipped
                .push("cassandra: PERSISTENCE_CASSANDRA_CONTACT_POINTS is not set".into()),
        }
        for (name, result) in outcome {
            if let Err(e) = result {
                r.skipped.push(format!("{name}: failed: {e:#}"));
            }
        }
    });
    for s in &report.skipped {
        eprintln!("skipped: {s}");
    }
    println!(
        "\nprojection bench: {cores} cores, load average {load_before} before, {} after, {:.0} s; N = {} (memory, SQLite, PostgreSQL), {} (DynamoDB, Cassandra); {} rounds; lag {} events/s for {} s",
        load_average(),
        started.elapsed().as_secs_f64(),
        p.events_local,
        p.events_remote,
        p.rounds,
        p.lag_rate,
        p.lag_secs
    );
    report.print();
}
