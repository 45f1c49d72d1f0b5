//! Crash tests for projections: the process running a projection is killed with SIGKILL
//! at random moments, again and again, and the read model it leaves behind is checked.
//!
//! Each case (backend × delivery) works like this:
//!
//! 1. The parent (the `#[test]` of the case) opens the stores in a fresh namespace, writes
//!    [`MIN_EVENTS`] tagged events (or [`EVENTS_PER_CYCLE`] per kill cycle when that is
//!    more, so a long campaign still kills projections at work) across [`IDS`]
//!    persistence ids, creates the read-model
//!    table, and waits until a current tag query returns every event.
//! 2. It runs this very test binary again as the child (`std::env::current_exe()` with
//!    `--exact <its own test name> --nocapture`), with the variable [`CHILD_ENV`] naming
//!    the backend, the delivery, where the store is and the namespace. Under that variable
//!    the same test is the child ([`child_projection`]): it opens the stores and runs the
//!    projection over the tag (current source, so
//!    it ends when it has handled everything). Its handler counts each event into the
//!    read-model table of the same store, one counter row per persistence id and sequence
//!    number, sleeping a random 0–3 ms per envelope:
//!    - exactly-once (SQLite, PostgreSQL, DynamoDB): the increment is written in the
//!      offset store's transaction (`INSERT ... ON CONFLICT DO UPDATE SET n = n + 1`,
//!      an `UpdateItem` with `ADD n :one` in the `TransactWriteItems`);
//!    - at-least-once (SQLite, PostgreSQL, DynamoDB, Cassandra): the handler writes the
//!      same increment directly, outside any transaction (a counter column on
//!      Cassandra), and the projection commits its offset every 7 envelopes.
//!
//!    The child prints `CRASH ready` when it starts the projection and
//!    `CRASH committed <offset> version=<n>` after each offset commit (its offset store is
//!    wrapped to say so), and `CRASH done` when the source has ended.
//! 3. The parent waits for `ready`, sleeps a random 50–400 ms, SIGKILLs the child
//!    (`Child::kill`), and reaps it; [`DEFAULT_CYCLES`] times, or `PROJECTION_CRASH_CYCLES`
//!    for a longer campaign (`PROJECTION_CRASH_CYCLES=200 cargo test --all-features --test
//!    projection_crash -- --nocapture`). Kills thus land in the handler, between an effect
//!    and its offset, and inside commits.
//! 4. It runs the child once more to completion (exit status 0), then reads the read
//!    model: exactly-once, every event counted exactly once, none missing, none extra;
//!    at-least-once, every event counted at least once (none skipped), and the repeats are
//!    reported (at most 7 per kill: what was handled since the last commit). The stored
//!    offset must be the last event's, every killed child must have died of SIGKILL, and
//!    at least one kill must have interrupted a child after it had committed something and
//!    before it was done, so the test cannot pass by killing nothing.
//!
//! Only the client process dies here: the servers stay up, so the default test servers
//! (`scripts/servers/*.sh`, `source .servers/<backend>/env`) are what it runs against, with
//! their default durability. SQLite uses a database file in a temporary directory that the
//! parent and its children share. A server backend whose variable is unset is skipped
//! with a message naming it (`persistence_tck::server_env`); with `CI=true` that is a
//! failure.

#![cfg(all(unix, feature = "projection"))]

mod crash_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crash_common::Rng;
use futures::StreamExt;
use persistence_stores::projection::{
    ExactlyOnceHandler, Handler, Projection, ProjectionSettings, RestartSettings, Source,
};
use persistence_stores::{
    async_trait, AtomicWrite, Error, ErrorKind, EventEnvelope, JournalExt, Offset, OffsetStore,
    Payload, PersistenceId, PersistentEvent, ProjectionId, QueryMode, ReadJournalExt, Result,
    StoreTransaction, StoredOffset, Stores,
};

/// The variable that makes a case's test run [`child_projection`] instead of the parent,
/// carrying its [`Spec`].
const CHILD_ENV: &str = "PROJECTION_CRASH_CHILD";
/// Kill cycles per case unless `PROJECTION_CRASH_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 8;
/// Persistence ids written to.
const IDS: usize = 6;
/// Events in all at least, [`IDS`] ids with the same number each.
const MIN_EVENTS: usize = 600;
/// Events per kill cycle (a child handles roughly 50 to 150 before its kill).
const EVENTS_PER_CYCLE: usize = 75;
/// The tag every event carries and the projection reads.
const TAG: &str = "crash";
/// The projection's name (its key is the tag).
const PROJECTION: &str = "crash-counts";
/// At-least-once: envelopes between two offset commits.
const COMMIT_EVERY: usize = 7;
/// The read-model table (SQL, DynamoDB) or counter table (Cassandra).
const COUNTS_TABLE: &str = "projection_crash_counts";
/// The kill delay after the child says it is ready, in ms (inclusive range).
const KILL_AFTER_MS: (u64, u64) = (50, 400);
/// The most a child may take from start to ready, and the final child to its end.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    DynamoDb,
    Cassandra,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::DynamoDb => "dynamodb",
            Backend::Cassandra => "cassandra",
        }
    }

    fn parse(name: &str) -> Backend {
        [
            Backend::Sqlite,
            Backend::Postgres,
            Backend::DynamoDb,
            Backend::Cassandra,
        ]
        .into_iter()
        .find(|b| b.name() == name)
        .unwrap_or_else(|| panic!("unknown backend {name:?} in {CHILD_ENV}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::ExactlyOnce => "exactly_once",
            Delivery::AtLeastOnce => "at_least_once",
        }
    }

    fn parse(name: &str) -> Delivery {
        match name {
            "exactly_once" => Delivery::ExactlyOnce,
            "at_least_once" => Delivery::AtLeastOnce,
            other => panic!("unknown delivery {other:?} in {CHILD_ENV}"),
        }
    }
}

/// What the parent tells the child: the backend, the delivery, where the store is (the
/// SQLite file, the PostgreSQL URL, the DynamoDB endpoint, the Cassandra contact points)
/// and the namespace (the PostgreSQL schema, the DynamoDB and Cassandra namespace).
/// Encoded as `key=value` pairs separated by `;`.
#[derive(Clone, Debug)]
struct Spec {
    backend: Backend,
    delivery: Delivery,
    location: String,
    namespace: String,
}

impl Spec {
    fn encode(&self) -> String {
        format!(
            "backend={};delivery={};location={};namespace={}",
            self.backend.name(),
            self.delivery.name(),
            self.location,
            self.namespace
        )
    }

    fn decode(text: &str) -> Spec {
        let mut fields = BTreeMap::new();
        for pair in text.split(';') {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{CHILD_ENV}: {pair:?} is not key=value"));
            fields.insert(k, v.to_owned());
        }
        let mut take = |k: &str| {
            fields
                .remove(k)
                .unwrap_or_else(|| panic!("{CHILD_ENV} has no {k}: {text:?}"))
        };
        Spec {
            backend: Backend::parse(&take("backend")),
            delivery: Delivery::parse(&take("delivery")),
            location: take("location"),
            namespace: take("namespace"),
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos:x}{:x}", std::process::id())
}

fn pid_name(n: usize) -> String {
    format!("account-{n}")
}

fn storage(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Storage, format!("{what}: {e}"))
}

/// One opened store, with what the read model needs beside the [`Stores`].
enum Opened {
    #[cfg(feature = "sqlite")]
    Sqlite(persistence_stores::sql::Sqlite),
    #[cfg(feature = "postgres")]
    Postgres {
        db: persistence_stores::sql::Postgres,
        schema: String,
    },
    #[cfg(feature = "dynamodb")]
    DynamoDb(persistence_stores::dynamodb::DynamoDb),
    #[cfg(feature = "cassandra")]
    Cassandra {
        db: persistence_stores::cassandra::Cassandra,
        increment: persistence_stores::cassandra::scylla::statement::prepared::PreparedStatement,
    },
}

/// The Cassandra keyspace the kit's tests share (namespaces keep runs apart).
#[cfg(feature = "cassandra")]
const CASSANDRA_KEYSPACE: &str = "persistence_tck";

impl Opened {
    /// Opens the stores of `spec`; `parent` creates the schema and the read-model table.
    #[allow(unreachable_patterns)]
    async fn open(spec: &Spec, parent: bool) -> Opened {
        match spec.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                use persistence_stores::sql::{sqlx, Sqlite, SqliteConfig};
                let mut config = SqliteConfig::new(&spec.location);
                config.create_schema = parent;
                config.busy_timeout = Duration::from_secs(30);
                let db = Sqlite::open(config).await.expect("open sqlite");
                if parent {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE TABLE IF NOT EXISTS {COUNTS_TABLE} \
                         (pid TEXT NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pid, seq))"
                    )))
                    .execute(db.pool())
                    .await
                    .expect("create the read-model table");
                }
                Opened::Sqlite(db)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                use persistence_stores::sql::{sqlx, Postgres, PostgresConfig};
                let mut config =
                    PostgresConfig::new(&spec.location).with_schema(spec.namespace.clone());
                config.create_schema = parent;
                config.max_connections = 4;
                let db = Postgres::open(config).await.expect("open postgres");
                if parent {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE TABLE IF NOT EXISTS \"{}\".{COUNTS_TABLE} \
                         (pid TEXT NOT NULL, seq BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (pid, seq))",
                        spec.namespace
                    )))
                    .execute(db.pool())
                    .await
                    .expect("create the read-model table");
                }
                Opened::Postgres {
                    db,
                    schema: spec.namespace.clone(),
                }
            }
            #[cfg(feature = "dynamodb")]
            Backend::DynamoDb => {
                use persistence_stores::dynamodb::{DynamoDb, DynamoDbConfig};
                let config = DynamoDbConfig {
                    journal_table: "projection_crash_journal".into(),
                    snapshot_table: "projection_crash_snapshot".into(),
                    namespace: spec.namespace.clone(),
                    poll_interval: Duration::from_millis(100),
                    feed_settle_delay: Duration::from_millis(500),
                    tag_gap_timeout: Duration::from_millis(1000),
                    create_schema: parent,
                    ..DynamoDbConfig::local(spec.location.clone())
                };
                let db = DynamoDb::open(config).await.expect("open dynamodb");
                if parent {
                    dynamodb_counts_table(db.client()).await;
                }
                Opened::DynamoDb(db)
            }
            #[cfg(feature = "cassandra")]
            Backend::Cassandra => {
                use persistence_stores::cassandra::{Cassandra, CassandraConfig};
                let config = CassandraConfig {
                    contact_points: spec.location.split(',').map(str::to_owned).collect(),
                    local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
                    keyspace: CASSANDRA_KEYSPACE.into(),
                    namespace: spec.namespace.clone(),
                    create_schema: parent,
                    // One writer, done before any reader starts: a current query need
                    // not wait long for writes in flight.
                    eventual_consistency_delay: Duration::from_millis(100),
                    ..CassandraConfig::default()
                };
                let db = Cassandra::open(config).await.expect("open cassandra");
                if parent {
                    db.session()
                        .query_unpaged(
                            format!(
                                "CREATE TABLE IF NOT EXISTS {CASSANDRA_KEYSPACE}.{COUNTS_TABLE} \
                                 (ns text, pid text, seq bigint, n counter, PRIMARY KEY ((ns, pid), seq))"
                            ),
                            (),
                        )
                        .await
                        .expect("create the counter table");
                }
                let increment = db
                    .session()
                    .prepare(format!(
                        "UPDATE {CASSANDRA_KEYSPACE}.{COUNTS_TABLE} SET n = n + 1 WHERE ns = ? AND pid = ? AND seq = ?"
                    ))
                    .await
                    .expect("prepare the increment");
                Opened::Cassandra { db, increment }
            }
            other => panic!(
                "{} is not compiled in (cargo feature {})",
                other.name(),
                other.name()
            ),
        }
    }

    fn stores(&self) -> Stores {
        match self {
            #[cfg(feature = "sqlite")]
            Opened::Sqlite(db) => db.stores(),
            #[cfg(feature = "postgres")]
            Opened::Postgres { db, .. } => db.stores(),
            #[cfg(feature = "dynamodb")]
            Opened::DynamoDb(db) => db.stores(),
            #[cfg(feature = "cassandra")]
            Opened::Cassandra { db, .. } => db.stores(),
        }
    }

    /// Adds one to the counter of `envelope`'s event: in `transaction` when given
    /// (exactly-once), else directly.
    async fn count(
        &self,
        spec: &Spec,
        transaction: Option<&mut StoreTransaction>,
        envelope: &EventEnvelope,
    ) -> Result<()> {
        let _ = spec; // the SQL arms need no namespace
        let pid = envelope.persistence_id().as_str();
        let seq = envelope.sequence_nr() as i64;
        match self {
            #[cfg(feature = "sqlite")]
            Opened::Sqlite(db) => {
                use persistence_stores::sql::{sqlx, SqliteTransaction};
                let statement = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {COUNTS_TABLE} (pid, seq, n) VALUES (?1, ?2, 1) \
                     ON CONFLICT (pid, seq) DO UPDATE SET n = n + 1"
                )))
                .bind(pid)
                .bind(seq);
                match transaction {
                    Some(tx) => statement
                        .execute(SqliteTransaction::of(tx)?.connection())
                        .await
                        .map(drop),
                    None => statement.execute(db.pool()).await.map(drop),
                }
                .map_err(|e| storage("sqlite count", e))
            }
            #[cfg(feature = "postgres")]
            Opened::Postgres { db, schema } => {
                use persistence_stores::sql::{sqlx, PostgresTransaction};
                let statement = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO \"{schema}\".{COUNTS_TABLE} AS c (pid, seq, n) VALUES ($1, $2, 1) \
                     ON CONFLICT (pid, seq) DO UPDATE SET n = c.n + 1"
                )))
                .bind(pid)
                .bind(seq);
                match transaction {
                    Some(tx) => statement
                        .execute(PostgresTransaction::of(tx)?.connection())
                        .await
                        .map(drop),
                    None => statement.execute(db.pool()).await.map(drop),
                }
                .map_err(|e| storage("postgres count", e))
            }
            #[cfg(feature = "dynamodb")]
            Opened::DynamoDb(db) => {
                use persistence_stores::dynamodb::aws_sdk_dynamodb::types::{
                    AttributeValue, TransactWriteItem, Update,
                };
                use persistence_stores::dynamodb::DynamoDbTransaction;
                let pk = AttributeValue::S(format!("{}|{pid}", spec.namespace));
                let sk = AttributeValue::N(seq.to_string());
                let one = AttributeValue::N("1".into());
                match transaction {
                    Some(tx) => {
                        let update = Update::builder()
                            .table_name(COUNTS_TABLE)
                            .key("pk", pk)
                            .key("seq", sk)
                            .update_expression("ADD n :one")
                            .expression_attribute_values(":one", one)
                            .build()
                            .map_err(|e| storage("dynamodb update", e))?;
                        DynamoDbTransaction::of(tx)?
                            .push(TransactWriteItem::builder().update(update).build());
                        Ok(())
                    }
                    None => db
                        .client()
                        .update_item()
                        .table_name(COUNTS_TABLE)
                        .key("pk", pk)
                        .key("seq", sk)
                        .update_expression("ADD n :one")
                        .expression_attribute_values(":one", one)
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| {
                            storage(
                                "dynamodb update_item",
                                persistence_stores::dynamodb::aws_sdk_dynamodb::error::DisplayErrorContext(e),
                            )
                        }),
                }
            }
            #[cfg(feature = "cassandra")]
            Opened::Cassandra { db, increment } => {
                assert!(
                    transaction.is_none(),
                    "Cassandra has no exactly-once projections"
                );
                db.session()
                    .execute_unpaged(increment, (spec.namespace.as_str(), pid, seq))
                    .await
                    .map(drop)
                    .map_err(|e| storage("cassandra counter update", e))
            }
        }
    }

    /// Every counter row of the read model: `(persistence id, sequence number) -> n`.
    async fn counts(&self, spec: &Spec) -> BTreeMap<(String, u64), i64> {
        let _ = spec;
        let mut counts = BTreeMap::new();
        match self {
            #[cfg(feature = "sqlite")]
            Opened::Sqlite(db) => {
                use persistence_stores::sql::sqlx;
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT pid, seq, n FROM {COUNTS_TABLE}"
                )))
                .fetch_all(db.pool())
                .await
                .expect("read the read model");
                for (pid, seq, n) in rows {
                    counts.insert((pid, seq as u64), n);
                }
            }
            #[cfg(feature = "postgres")]
            Opened::Postgres { db, schema } => {
                use persistence_stores::sql::sqlx;
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT pid, seq, n FROM \"{schema}\".{COUNTS_TABLE}"
                )))
                .fetch_all(db.pool())
                .await
                .expect("read the read model");
                for (pid, seq, n) in rows {
                    counts.insert((pid, seq as u64), n);
                }
            }
            #[cfg(feature = "dynamodb")]
            Opened::DynamoDb(db) => {
                use persistence_stores::dynamodb::aws_sdk_dynamodb::types::AttributeValue;
                for p in 0..IDS {
                    let pid = pid_name(p);
                    let mut start = None;
                    loop {
                        let page = db
                            .client()
                            .query()
                            .table_name(COUNTS_TABLE)
                            .key_condition_expression("pk = :pk")
                            .expression_attribute_values(
                                ":pk",
                                AttributeValue::S(format!("{}|{pid}", spec.namespace)),
                            )
                            .consistent_read(true)
                            .set_exclusive_start_key(start)
                            .send()
                            .await
                            .expect("query the read model");
                        for item in page.items() {
                            let number = |k: &str| match item.get(k) {
                                Some(AttributeValue::N(n)) => n.parse::<i64>().unwrap(),
                                other => panic!("{k} of a counter item is {other:?}"),
                            };
                            counts.insert((pid.clone(), number("seq") as u64), number("n"));
                        }
                        start = page.last_evaluated_key().cloned();
                        if start.is_none() {
                            break;
                        }
                    }
                }
            }
            #[cfg(feature = "cassandra")]
            Opened::Cassandra { db, .. } => {
                use persistence_stores::cassandra::scylla::value::Counter;
                for p in 0..IDS {
                    let pid = pid_name(p);
                    let rows = db
                        .session()
                        .query_unpaged(
                            format!("SELECT seq, n FROM {CASSANDRA_KEYSPACE}.{COUNTS_TABLE} WHERE ns = ? AND pid = ?"),
                            (spec.namespace.as_str(), pid.as_str()),
                        )
                        .await
                        .expect("read the counters")
                        .into_rows_result()
                        .expect("rows");
                    for row in rows.rows::<(i64, Counter)>().expect("typed rows") {
                        let (seq, n) = row.expect("a counter row");
                        counts.insert((pid.clone(), seq as u64), n.0);
                    }
                }
            }
        }
        counts
    }

    /// Removes what the case stored where others could see it (the SQLite file goes with
    /// its directory; the journal's DynamoDB and Cassandra rows stay under their unique
    /// namespace, as the kit's do).
    async fn cleanup(&self, spec: &Spec) {
        match self {
            #[cfg(feature = "sqlite")]
            Opened::Sqlite(db) => {
                db.close().await;
                if let Some(dir) = std::path::Path::new(&spec.location).parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            #[cfg(feature = "postgres")]
            Opened::Postgres { db, schema } => {
                use persistence_stores::sql::sqlx;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA \"{schema}\" CASCADE"
                )))
                .execute(db.pool())
                .await
                .expect("drop the case's schema");
                db.close().await;
            }
            #[cfg(feature = "dynamodb")]
            Opened::DynamoDb(db) => {
                use persistence_stores::dynamodb::aws_sdk_dynamodb::types::{
                    AttributeValue, DeleteRequest, WriteRequest,
                };
                let keys: Vec<_> = self.counts(spec).await.into_keys().collect();
                for chunk in keys.chunks(25) {
                    let requests = chunk
                        .iter()
                        .map(|(pid, seq)| {
                            let delete = DeleteRequest::builder()
                                .key("pk", AttributeValue::S(format!("{}|{pid}", spec.namespace)))
                                .key("seq", AttributeValue::N(seq.to_string()))
                                .build()
                                .unwrap();
                            WriteRequest::builder().delete_request(delete).build()
                        })
                        .collect();
                    // Best effort: unprocessed deletes leave rows under a dead namespace.
                    let _ = db
                        .client()
                        .batch_write_item()
                        .request_items(COUNTS_TABLE, requests)
                        .send()
                        .await;
                }
            }
            #[cfg(feature = "cassandra")]
            Opened::Cassandra { db, .. } => {
                for p in 0..IDS {
                    let _ = db
                        .session()
                        .query_unpaged(
                            format!("DELETE FROM {CASSANDRA_KEYSPACE}.{COUNTS_TABLE} WHERE ns = ? AND pid = ?"),
                            (spec.namespace.as_str(), pid_name(p)),
                        )
                        .await;
                }
            }
        }
    }
}

/// The DynamoDB read-model table (`pk` S hash key, `seq` N range key), created once per
/// server; cases keep apart by the namespace in `pk`.
#[cfg(feature = "dynamodb")]
async fn dynamodb_counts_table(client: &persistence_stores::dynamodb::aws_sdk_dynamodb::Client) {
    use persistence_stores::dynamodb::aws_sdk_dynamodb::{self as sdk, types::*};
    let attribute = |name: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    let key = |name: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(t)
            .build()
            .unwrap()
    };
    let created = client
        .create_table()
        .table_name(COUNTS_TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S))
        .attribute_definitions(attribute("seq", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("seq", KeyType::Range))
        .send()
        .await;
    if let Err(e) = created {
        let code = sdk::error::ProvideErrorMetadata::code(&e);
        assert_eq!(code, Some("ResourceInUseException"), "{e:?}");
    }
    // DynamoDB Local makes tables active at once; a real endpoint takes a moment.
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(COUNTS_TABLE)
            .send()
            .await
            .expect("describe the read-model table");
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the table {COUNTS_TABLE} did not become active");
}

/// The child's offset store: the real one, printing a line after each commit so the
/// parent sees the child's progress in its output.
struct Announcing(Arc<dyn OffsetStore>);

fn announce(offset: &Offset, version: u64) {
    println!("CRASH committed {offset} version={version}");
}

#[async_trait]
impl OffsetStore for Announcing {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        self.0.read_offset(id).await
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        let version = self.0.commit_offset(id, expected, offset.clone()).await?;
        announce(&offset, version);
        Ok(version)
    }

    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        self.0.set_offset(id, offset).await
    }

    fn supports_transactions(&self) -> bool {
        self.0.supports_transactions()
    }

    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        self.0.begin_transaction().await
    }

    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let version = self
            .0
            .commit_transaction(transaction, id, expected, offset.clone())
            .await?;
        announce(&offset, version);
        Ok(version)
    }
}

/// The child's handler: a random 0–3 ms of work, then one more on the event's counter.
struct Counting {
    spec: Spec,
    opened: Arc<Opened>,
    rng: Rng,
}

impl Counting {
    async fn work(&mut self) {
        let micros = self.rng.between(0, 3000);
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

#[async_trait]
impl Handler for Counting {
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
        self.work().await;
        self.opened.count(&self.spec, None, envelope).await
    }
}

#[async_trait]
impl ExactlyOnceHandler for Counting {
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        envelopes: &[EventEnvelope],
    ) -> Result<()> {
        for envelope in envelopes {
            self.work().await;
            self.opened
                .count(&self.spec, Some(transaction), envelope)
                .await?;
        }
        Ok(())
    }
}

fn projection_id() -> ProjectionId {
    ProjectionId::new(PROJECTION, TAG).unwrap()
}

/// The child: runs the projection of `spec` until its current source ends (or until the
/// parent kills it).
async fn child_projection(spec: Spec) {
    let opened = Arc::new(Opened::open(&spec, false).await);
    let stores = opened.stores();
    let settings = ProjectionSettings {
        commit_every: COMMIT_EVERY,
        // Commits every 7 envelopes, and at the end, not by the clock.
        commit_interval: Duration::from_secs(3600),
        restart: RestartSettings {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_restarts: Some(5),
        },
        ..ProjectionSettings::default()
    };
    let builder = Projection::builder(
        projection_id(),
        Source::tag(TAG, QueryMode::Current),
        &stores,
    )
    .offsets(Arc::new(Announcing(stores.offsets.clone())))
    .settings(settings);
    let handler = Counting {
        spec: spec.clone(),
        opened: opened.clone(),
        rng: Rng::seeded(),
    };
    println!("CRASH ready");
    let status = match spec.delivery {
        Delivery::AtLeastOnce => builder.at_least_once(handler).run().await,
        Delivery::ExactlyOnce => {
            builder
                .exactly_once(handler)
                .expect("the store has exactly-once transactions")
                .run()
                .await
        }
    }
    .unwrap_or_else(|e| panic!("the projection failed: {e:#}"));
    println!(
        "CRASH done handled={} commits={}",
        status.handled, status.commits
    );
}

/// What one run of the child did, from its output.
#[derive(Debug, Default)]
struct ChildRun {
    /// It printed `ready` (the projection started).
    ready: bool,
    /// Offset commits it printed.
    commits: usize,
    /// From `ready` to the first commit, as the parent read them.
    first_commit_after: Option<Duration>,
    /// It printed `done` (its source ended).
    done: bool,
    /// The parent killed it while it was still running.
    killed: bool,
    status: Option<ExitStatus>,
}

impl ChildRun {
    /// Killed in the middle of the projection: after its first commit, before its end.
    fn interrupted_after_commit(&self) -> bool {
        self.killed && self.commits > 0 && !self.done
    }
}

/// Runs the child of `spec`; with `kill_after`, SIGKILLs it that long after it is ready.
fn run_child(spec: &Spec, kill_after: Option<Duration>) -> ChildRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    // libtest runs each test on a thread named after it: the child is this same test.
    let test = std::thread::current()
        .name()
        .expect("a libtest thread named after its test")
        .to_owned();
    let mut child = Command::new(exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec.encode())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest's `test <name> ... ` has no newline: the first line of the child
            // follows it.
            if let Some(at) = line.find("CRASH ") {
                let line = line[at + "CRASH ".len()..].to_owned();
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        }
    });
    let mut run = ChildRun::default();
    let mut ready_at = None;
    let mut note = |run: &mut ChildRun, (at, line): (Instant, String)| {
        if line == "ready" {
            run.ready = true;
            ready_at = Some(at);
        } else if line.starts_with("committed ") {
            if run.commits == 0 {
                run.first_commit_after = ready_at.map(|r| at - r);
            }
            run.commits += 1;
        } else if line.starts_with("done") {
            run.done = true;
        }
    };
    let deadline = Instant::now() + CHILD_TIMEOUT;
    // Until it is ready (or gone).
    while !run.ready {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => note(&mut run, line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "the {} child was not ready within {CHILD_TIMEOUT:?}",
                    spec.encode()
                );
            }
        }
    }
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        if child.try_wait().expect("poll the child").is_none() {
            // Child::kill sends SIGKILL on Unix.
            child.kill().expect("kill the child");
            run.killed = true;
        }
    }
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "the {} child did not end within {CHILD_TIMEOUT:?}",
                spec.encode()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    run.status = Some(status);
    reader.join().expect("the output reader");
    for line in rx.try_iter() {
        note(&mut run, line);
    }
    run
}

fn cycles() -> usize {
    match std::env::var("PROJECTION_CRASH_CYCLES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PROJECTION_CRASH_CYCLES={v:?} is not a number")),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// Writes the events, interleaving the ids in the tag's order; returns every
/// `(persistence id, sequence number)`.
async fn write_events(stores: &Stores, events: usize) -> Vec<(String, u64)> {
    let per_id = events.div_ceil(IDS) as u64;
    let chunk = 10u64;
    let mut written = Vec::new();
    let mut from = 1;
    while from <= per_id {
        let to = (from + chunk - 1).min(per_id);
        for p in 0..IDS {
            let id = PersistenceId::new(pid_name(p)).unwrap();
            let events = (from..=to)
                .map(|seq| {
                    PersistentEvent::new(
                        id.clone(),
                        seq,
                        Payload::raw(format!("{p}/{seq}").into_bytes()),
                    )
                    .with_tags([TAG])
                })
                .collect();
            stores
                .journal
                .write(AtomicWrite::new(events).unwrap())
                .await
                .expect("write the events");
            written.extend((from..=to).map(|seq| (pid_name(p), seq)));
        }
        from = to + 1;
    }
    written
}

/// Waits until a current tag query returns all `expected` events; returns the last
/// envelope's offset.
async fn wait_visible(stores: &Stores, expected: usize) -> Offset {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let envelopes: Vec<EventEnvelope> = stores
            .read_journal
            .current_events_by_tag(TAG.into(), Offset::NoOffset)
            .map(|e| e.expect("the tag query"))
            .collect()
            .await;
        if envelopes.len() == expected {
            return envelopes.last().unwrap().offset.clone();
        }
        assert!(
            envelopes.len() < expected,
            "the tag query returned {} envelopes, more than the {expected} written",
            envelopes.len()
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} events visible to the tag query after 60 s",
            envelopes.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the case's store is and its namespace; `None` (after `server_env`'s message)
/// when its server is not configured.
fn locate(backend: Backend) -> Option<(String, String)> {
    let namespace = unique("crash");
    let location = match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(unique("persistence-projection-crash-"));
            dir.join("crash.db").display().to_string()
        }
        Backend::Postgres => server("PERSISTENCE_POSTGRES_URL")?,
        Backend::DynamoDb => server("PERSISTENCE_DYNAMODB_ENDPOINT")?,
        Backend::Cassandra => server("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?,
    };
    Some((location, namespace))
}

/// `persistence_tck::server_env`, first naming a missing variable on the real stderr:
/// libtest captures `eprintln!` of a test, and with `CI=true` `server_env` ends the
/// process before the captured text is shown.
fn server(var: &str) -> Option<String> {
    if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "projection_crash: {var} is not set (a failure with CI=true, else a skip)"
        );
    }
    persistence_tck::server_env(var)
}

/// One case: write, kill the projecting child again and again, finish it, check.
fn crash_case(backend: Backend, delivery: Delivery) {
    if let Ok(text) = std::env::var(CHILD_ENV) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the child's runtime")
            .block_on(child_projection(Spec::decode(&text)));
        return;
    }
    let case = format!("{} {}", backend.name(), delivery.name());
    let Some((location, namespace)) = locate(backend) else {
        eprintln!("{case}: skipped (no server configured, see above)");
        return;
    };
    let spec = Spec {
        backend,
        delivery,
        location,
        namespace,
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cycles = cycles();
    let events = (cycles * EVENTS_PER_CYCLE).max(MIN_EVENTS);
    let (opened, written, last_offset) = runtime.block_on(async {
        let opened = Opened::open(&spec, true).await;
        let stores = opened.stores();
        let written = write_events(&stores, events).await;
        let last_offset = wait_visible(&stores, written.len()).await;
        (opened, written, last_offset)
    });
    let stores = opened.stores();
    let id = projection_id();
    let version = || {
        runtime
            .block_on(stores.offsets.read_offset(&id))
            .expect("read the offset")
            .map_or(0, |s| s.version)
    };

    let mut rng = Rng::seeded();
    let mut killed = 0;
    let mut interrupted = 0;
    let mut moved_then_killed = 0;
    let mut first_commits = Vec::new();
    for _ in 0..cycles {
        let before = version();
        let delay = rng.between(KILL_AFTER_MS.0, KILL_AFTER_MS.1);
        let run = run_child(&spec, Some(Duration::from_millis(delay)));
        if run.killed {
            assert_eq!(
                run.status.and_then(|s| s.signal()),
                Some(9),
                "{case}: a killed child did not die of SIGKILL: {run:?}"
            );
        } else {
            // It ended by itself: then it must have ended well.
            assert!(
                run.status.is_some_and(|s| s.success()),
                "{case}: a child that was not killed failed: {run:?}"
            );
        }
        first_commits.extend(run.first_commit_after);
        killed += usize::from(run.killed);
        interrupted += usize::from(run.interrupted_after_commit());
        moved_then_killed += usize::from(run.killed && !run.done && version() > before);
    }
    let last = run_child(&spec, None);
    assert!(
        last.done && last.status.is_some_and(|s| s.success()),
        "{case}: the last child did not run to the end: {last:?}"
    );

    let (counts, stored) = runtime.block_on(async {
        let counts = opened.counts(&spec).await;
        let stored = stores.offsets.read_offset(&id).await.expect("read offset");
        (counts, stored)
    });
    let missing: Vec<_> = written
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    let expected: std::collections::BTreeSet<_> = written.iter().cloned().collect();
    let extra: Vec<_> = counts.keys().filter(|k| !expected.contains(*k)).collect();
    let repeated = counts.values().filter(|n| **n > 1).count();
    let repeats: i64 = counts.values().map(|n| (n - 1).max(0)).sum();
    let not_once: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    first_commits.sort();
    let median_first_commit = first_commits
        .get(first_commits.len() / 2)
        .map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    eprintln!(
        "{case}: {cycles} cycles, {killed} kills of a running child, {interrupted} after a commit and before the end ({moved_then_killed} with the stored offset moved), \
         first commit {median_first_commit} after start (median), {} events, {repeated} handled more than once ({repeats} repeats), {:.1} s",
        written.len(),
        started.elapsed().as_secs_f64()
    );
    let passed = missing.is_empty()
        && extra.is_empty()
        && (delivery == Delivery::AtLeastOnce || not_once.is_empty())
        && stored.as_ref().map(|s| &s.offset) == Some(&last_offset)
        && repeats <= (killed * COMMIT_EVERY) as i64
        && (cycles == 0 || interrupted > 0);
    if passed {
        runtime.block_on(opened.cleanup(&spec));
    } else {
        eprintln!(
            "{case}: left the data in place for a look: {}",
            spec.encode()
        );
    }
    assert!(
        missing.is_empty(),
        "{case}: events never counted (skipped): {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{case}: counters of no written event: {extra:?}"
    );
    if delivery == Delivery::ExactlyOnce {
        assert!(
            not_once.is_empty(),
            "{case}: exactly-once counted {} events other than once: {not_once:?}",
            not_once.len()
        );
    }
    // A kill repeats at most what was handled since the last commit.
    assert!(
        repeats <= (killed * COMMIT_EVERY) as i64,
        "{case}: {repeats} repeats after {killed} kills, more than {COMMIT_EVERY} (the commit interval) per kill: {not_once:?}"
    );
    assert_eq!(
        stored.map(|s| s.offset),
        Some(last_offset),
        "{case}: the stored offset is not the last event's"
    );
    assert!(
        cycles == 0 || interrupted > 0,
        "{case}: none of the {cycles} kills interrupted a child between its first commit and its end"
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_exactly_once_counts_every_event_once_across_sigkills() {
    crash_case(Backend::Sqlite, Delivery::ExactlyOnce);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_at_least_once_skips_no_event_across_sigkills() {
    crash_case(Backend::Sqlite, Delivery::AtLeastOnce);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_exactly_once_counts_every_event_once_across_sigkills() {
    crash_case(Backend::Postgres, Delivery::ExactlyOnce);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_at_least_once_skips_no_event_across_sigkills() {
    crash_case(Backend::Postgres, Delivery::AtLeastOnce);
}

#[cfg(feature = "dynamodb")]
#[test]
fn dynamodb_exactly_once_counts_every_event_once_across_sigkills() {
    crash_case(Backend::DynamoDb, Delivery::ExactlyOnce);
}

#[cfg(feature = "dynamodb")]
#[test]
fn dynamodb_at_least_once_skips_no_event_across_sigkills() {
    crash_case(Backend::DynamoDb, Delivery::AtLeastOnce);
}

#[cfg(feature = "cassandra")]
#[test]
fn cassandra_at_least_once_skips_no_event_across_sigkills() {
    crash_case(Backend::Cassandra, Delivery::AtLeastOnce);
}
