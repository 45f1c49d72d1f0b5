//! Events/s of the Cassandra driver against a real node, each beside the same statements
//! issued directly with the scylla driver (the bound) in the same run, plus the cost of the
//! overwrite guard and of creating a schema (why the TCK shares one keyspace), and the
//! durable-state store (upserts, a current change query) beside its statements.
//!
//! ```text
//! bash scripts/servers/cassandra.sh start && source .servers/cassandra/env
//! cargo bench -p persistence-cassandra --bench cassandra
//! cargo bench -p persistence-cassandra --bench cassandra -- durable_state   # only durable state
//! cargo bench -p persistence-cassandra --bench cassandra -- serial   # a serial read of the highest against a plain one
//! cargo bench -p persistence-cassandra --bench cassandra -- group    # group commit (issue 16), see `mod group`
//! ```
//!
//! The cost of TLS: the same workloads through the driver against one node, with and
//! without TLS (both with password authentication), alternating, in one run. The secure node
//! must take both, so start it with `CASSANDRA_TLS_OPTIONAL=1` (and restart it without for
//! the tests, which expect TLS only):
//!
//! ```text
//! bash scripts/servers/cassandra.sh secure-stop
//! CASSANDRA_TLS_OPTIONAL=1 bash scripts/servers/cassandra.sh secure-start && source .servers/cassandra-secure/env
//! cargo bench -p persistence-cassandra --bench cassandra -- tls
//! ```

use persistence_api::ReadJournalExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent};
use persistence_cassandra::scylla::client::session::Session;
use persistence_cassandra::scylla::statement::batch::{Batch, BatchType};
use persistence_cassandra::scylla::statement::prepared::PreparedStatement;
use persistence_cassandra::scylla::statement::{Consistency, SerialConsistency};
use persistence_cassandra::scylla::value::{CqlTimeuuid, Row};
use persistence_cassandra::{Cassandra, CassandraConfig};

const EVENTS: u64 = 10_000;
/// Ids written concurrently by the single-event workload (each id's writes in order).
const SINGLE_IDS: u64 = 16;
/// Ids written concurrently by the 100-event workload.
const BATCH_IDS: u64 = 4;
const PAYLOAD: usize = 100;

struct Raw {
    session: Arc<Session>,
    guarded_first: PreparedStatement,
    guarded_next: PreparedStatement,
    plain_used: PreparedStatement,
    insert: PreparedStatement,
    insert_tag: PreparedStatement,
    set_pending: PreparedStatement,
    progress: PreparedStatement,
    scanning: PreparedStatement,
    select: PreparedStatement,
    select_tag: PreparedStatement,
}

async fn prepare(session: &Session, cql: String) -> PreparedStatement {
    let mut p = session.prepare(cql).await.expect("prepare");
    p.set_consistency(Consistency::Quorum);
    p.set_serial_consistency(Some(SerialConsistency::Serial));
    p.set_page_size(1000);
    p
}

impl Raw {
    async fn new(session: Arc<Session>, ks: &str) -> Raw {
        let m = format!("{ks}.messages");
        let tv = format!("{ks}.tag_views");
        Raw {
            guarded_first: prepare(&session, format!("UPDATE {m} SET used = ? WHERE persistence_id = ? AND partition_nr = ? IF used = null")).await,
            guarded_next: prepare(&session, format!("UPDATE {m} SET used = ? WHERE persistence_id = ? AND partition_nr = ? IF used < ?")).await,
            plain_used: prepare(&session, format!("UPDATE {m} SET used = ? WHERE persistence_id = ? AND partition_nr = ?")).await,
            insert: prepare(&session, format!("INSERT INTO {m} (persistence_id, partition_nr, sequence_nr, timestamp, timebucket, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, 0, ?, ?, ?, 'w', 'raw', 'm', '', ?, ?, ?)")).await,
            insert_tag: prepare(&session, format!("INSERT INTO {tv} (tag_name, timebucket, timestamp, persistence_id, tag_pid_sequence_nr, sequence_nr, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, ?, ?, ?, ?, ?, 'w', 'raw', 'm', '', ?, ?, ?)")).await,
            set_pending: prepare(&session, format!("UPDATE {m} SET tag_pending = ? WHERE persistence_id = ? AND partition_nr = ?")).await,
            progress: prepare(&session, format!("INSERT INTO {ks}.tag_write_progress (persistence_id, tag, sequence_nr, tag_pid_sequence_nr, offset) VALUES (?, ?, ?, ?, ?)")).await,
            scanning: prepare(&session, format!("INSERT INTO {ks}.tag_scanning (persistence_id, sequence_nr) VALUES (?, ?)")).await,
            select: prepare(&session, format!("SELECT sequence_nr, timestamp, writer_uuid, ser_id, ser_manifest, event_manifest, event, meta_ser_id, meta_ser_manifest, meta, tags, event_time FROM {m} WHERE persistence_id = ? AND partition_nr = ? AND sequence_nr >= ? AND sequence_nr <= ?")).await,
            select_tag: prepare(&session, format!("SELECT persistence_id, tag_pid_sequence_nr, sequence_nr, timestamp, writer_uuid, ser_id, ser_manifest, event_manifest, event, meta_ser_id, meta_ser_manifest, meta, tags, event_time FROM {tv} WHERE tag_name = ? AND timebucket = ? AND timestamp > ? AND timestamp <= ?")).await,
            session,
        }
    }

    /// One atomic write of `from..=to` as the driver issues it: the guard (or the plain
    /// `used` update) and the inserts in one single-partition batch.
    async fn write(&self, id: &str, from: i64, to: i64, guarded: bool, tag: Option<&str>) {
        let mut batch = Batch::new(if guarded {
            BatchType::Logged
        } else {
            BatchType::Unlogged
        });
        batch.set_consistency(Consistency::Quorum);
        batch.set_serial_consistency(Some(SerialConsistency::Serial));
        let mut values: Vec<Vec<persistence_cassandra::scylla::value::CqlValue>> = Vec::new();
        use persistence_cassandra::scylla::value::CqlValue as V;
        let first = if !guarded {
            batch.append_statement(self.plain_used.clone());
            vec![V::BigInt(to), V::Text(id.into()), V::BigInt(0)]
        } else if from == 1 {
            batch.append_statement(self.guarded_first.clone());
            vec![V::BigInt(to), V::Text(id.into()), V::BigInt(0)]
        } else {
            batch.append_statement(self.guarded_next.clone());
            vec![
                V::BigInt(to),
                V::Text(id.into()),
                V::BigInt(0),
                V::BigInt(from),
            ]
        };
        values.push(first);
        if tag.is_some() {
            batch.append_statement(self.set_pending.clone());
            values.push(vec![V::BigInt(from), V::Text(id.into()), V::BigInt(0)]);
        }
        let now = now_millis();
        let bucket = now - now % 3_600_000;
        let mut stamps = Vec::new();
        for seq in from..=to {
            let ts = timeuuid(seq);
            stamps.push(ts);
            batch.append_statement(self.insert.clone());
            values.push(vec![
                V::Text(id.into()),
                V::BigInt(seq),
                V::Timeuuid(ts),
                V::BigInt(bucket),
                V::Blob(vec![b'x'; PAYLOAD]),
                V::List(tag.iter().map(|t| V::Text(t.to_string())).collect()),
                V::BigInt(now),
            ]);
        }
        let result = self
            .session
            .batch(&batch, &values)
            .await
            .expect("raw batch");
        if guarded {
            let rows = result.into_rows_result().expect("lwt rows");
            let row = rows.first_row::<Row>().expect("an LWT answer");
            assert!(
                matches!(row.columns.first(), Some(Some(V::Boolean(true)))),
                "raw guarded write applied"
            );
        }
        if let Some(tag) = tag {
            let mut tb = Batch::new(BatchType::Unlogged);
            tb.set_consistency(Consistency::Quorum);
            let mut tvals = Vec::new();
            for (i, seq) in (from..=to).enumerate() {
                tb.append_statement(self.insert_tag.clone());
                tvals.push(vec![
                    V::Text(tag.into()),
                    V::BigInt(bucket),
                    V::Timeuuid(stamps[i]),
                    V::Text(id.into()),
                    V::BigInt(seq),
                    V::BigInt(seq),
                    V::Blob(vec![b'x'; PAYLOAD]),
                    V::List(vec![V::Text(tag.into())]),
                    V::BigInt(now),
                ]);
            }
            self.session
                .batch(&tb, &tvals)
                .await
                .expect("raw tag batch");
            let (progress, scanning) = futures::join!(
                self.session
                    .execute_unpaged(&self.progress, (id, tag, to, to, stamps[stamps.len() - 1])),
                self.session.execute_unpaged(&self.scanning, (id, to))
            );
            progress.expect("raw progress");
            scanning.expect("raw scanning");
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A version-1 UUID for now; `salt` keeps those of one millisecond apart.
fn timeuuid(salt: i64) -> CqlTimeuuid {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ticks = (now_millis() as u64) * 10_000 + 0x01B2_1DD2_1381_4000 + (n % 10_000);
    let msb = ((ticks & 0xffff_ffff) << 32)
        | (((ticks >> 32) & 0xffff) << 16)
        | ((ticks >> 48) & 0x0fff)
        | 0x1000;
    CqlTimeuuid::from_u64_pair(
        msb,
        0x8000_0000_0000_0000 | (salt as u64 & 0x3fff_ffff_ffff),
    )
}

fn event(id: &PersistenceId, seq: u64, tag: Option<&str>) -> PersistentEvent {
    let e = PersistentEvent::new(
        id.clone(),
        seq,
        Payload::new("raw", "m", vec![b'x'; PAYLOAD]),
    )
    .with_writer_id("w");
    match tag {
        Some(t) => e.with_tags([t]),
        None => e,
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Line {
    name: &'static str,
    driver: f64,
    raw: f64,
}

/// Runs `ids` tasks concurrently; task `i` runs `f(i)`.
async fn concurrently<F, Fut>(ids: u64, f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    futures::future::join_all((0..ids).map(f)).await;
    start.elapsed()
}

fn main() {
    let Some(contact_points) = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "serial") {
        rt.block_on(serial_read_cost(contact_points));
        return;
    }
    if std::env::args().any(|a| a == "tls") {
        let Some(secure) =
            persistence_tck::server_env("PERSISTENCE_TEST_CASSANDRA_SECURE_CONTACT_POINT")
        else {
            return;
        };
        rt.block_on(tls_cost(contact_points, secure));
        return;
    }
    rt.block_on(run(contact_points));
}

/// `serial`: what reading a partition's highest number as a serial read costs (the
/// crash test's fix: a serial read completes a Paxos round a crash left accepted but not
/// committed, which a plain read does not see). The same `SELECT used, tag_pending` of
/// one written partition, raw through the driver's session, at QUORUM and at SERIAL, in
/// alternating rounds; then the store's `highest_sequence_nr` (one serial read plus the
/// deleted-to read).
async fn serial_read_cost(contact_points: String) {
    let config = CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter: Some("datacenter1".into()),
        keyspace: "persistence_bench".into(),
        create_schema: true,
        ..CassandraConfig::default()
    };
    let reads: usize = std::env::var("BENCH_SERIAL_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let namespace = format!("serial{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cassandra = Cassandra::open(config.clone())
        .await
        .unwrap()
        .with_namespace(&namespace)
        .unwrap();
    let stores = cassandra.stores();
    let id = PersistenceId::new("serial-1").unwrap();
    let events: Vec<_> = (1..=10)
        .map(|n| PersistentEvent::new(id.clone(), n, Payload::raw(vec![1; 100])))
        .collect();
    stores
        .journal
        .write(AtomicWrite::new(events).unwrap())
        .await
        .unwrap();
    let session = cassandra.session().clone();
    let cql = format!(
        "SELECT used, tag_pending FROM {}.{} WHERE persistence_id = ? AND partition_nr = ? LIMIT 1",
        config.keyspace, config.tables.messages
    );
    // The partition the write above used: the namespace prefixes the id in the key.
    let key_rows = session
        .query_unpaged(
            format!(
                "SELECT persistence_id FROM {}.{} LIMIT 100000",
                config.keyspace, config.tables.messages
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let key = key_rows
        .rows::<(String,)>()
        .unwrap()
        .filter_map(|r| r.ok())
        .map(|(k,)| k)
        .find(|k| k.contains(&namespace) && k.ends_with("serial-1"))
        .expect("the written partition");
    let mut quorum = session.prepare(cql.clone()).await.unwrap();
    quorum.set_consistency(Consistency::Quorum);
    let mut serial = session.prepare(cql).await.unwrap();
    serial.set_consistency(Consistency::Serial);
    let statements = [quorum, serial];
    let mut took = [Duration::ZERO; 2];
    let rounds = 8;
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let t = Instant::now();
            for _ in 0..reads / rounds {
                session
                    .execute_unpaged(&statements[side], (&key, 0i64))
                    .await
                    .unwrap();
            }
            took[side] += t.elapsed();
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / reads as f64;
    let t = Instant::now();
    for _ in 0..reads / 4 {
        stores.journal.highest_sequence_nr(&id).await.unwrap();
    }
    let highest = t.elapsed().as_secs_f64() * 1e6 / (reads / 4) as f64;
    println!("persistence-cassandra: the highest number read plain and serial ({reads} reads each, one node, loopback)\n");
    println!("| read | µs per read | reads/s |");
    println!("|---|---:|---:|");
    for (name, i) in [("QUORUM (plain)", 0), ("SERIAL (Paxos read)", 1)] {
        println!(
            "| {name} | {:.0} | {:.0} |",
            per(took[i]),
            1e6 / per(took[i])
        );
    }
    println!(
        "\nSERIAL / QUORUM time: {:.2}x; the store's highest_sequence_nr: {highest:.0} µs per call",
        per(took[1]) / per(took[0])
    );
}

/// The driver's workloads against the secure node (started with `optional: true`) without
/// TLS and with TLS (verified against the test CA), both logged in as the role
/// `persistence` (PasswordAuthenticator, CassandraAuthorizer), alternating which goes first
/// each round: the ratio is what TLS alone costs on this machine, on one node and one
/// loopback. (`_plain_points`, the shared test node, is not used: other suites load it.)
async fn tls_cost(_plain_points: String, secure_point: String) {
    let ks = "persistence_bench";
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let tls_dir = std::path::PathBuf::from(var("PERSISTENCE_TEST_TLS_DIR"));
    let plain_config = CassandraConfig {
        contact_points: vec![secure_point.clone()],
        local_datacenter: Some("datacenter1".into()),
        keyspace: ks.into(),
        create_schema: true,
        eventual_consistency_delay: Duration::ZERO,
        username: Some(var("PERSISTENCE_TEST_CASSANDRA_SECURE_USERNAME")),
        password_file: Some(var("PERSISTENCE_TEST_CASSANDRA_SECURE_PASSWORD_FILE").into()),
        ..CassandraConfig::default()
    };
    let secure_config = CassandraConfig {
        tls: true,
        tls_ca_file: Some(tls_dir.join("ca.pem")),
        tls_server_name: Some("localhost".into()),
        ..plain_config.clone()
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let plain = Cassandra::open(plain_config.clone()).await.unwrap_or_else(|e| {
        panic!("{e:#}\n(the secure node must take plaintext too: restart it with CASSANDRA_TLS_OPTIONAL=1)")
    });
    let secure = Cassandra::open(secure_config.clone())
        .await
        .expect("connect secure");
    let sides = [
        plain
            .with_namespace(&format!("p{run_id}"))
            .unwrap()
            .stores(),
        secure
            .with_namespace(&format!("s{run_id}"))
            .unwrap()
            .stores(),
    ];
    // Opening: a session (TCP, TLS and CQL handshakes, authentication, metadata) and the
    // prepared statements, schema present.
    let mut opens = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for k in [round % 2, 1 - round % 2] {
            let config = if k == 0 {
                &plain_config
            } else {
                &secure_config
            };
            let start = Instant::now();
            let backend = Cassandra::open(config.clone()).await.expect("open");
            opens[k].push(start.elapsed().as_secs_f64() * 1000.0);
            drop(backend);
        }
    }
    // Warm-up of both nodes.
    for (k, stores) in sides.iter().enumerate() {
        for i in 0..400u64 {
            let id = PersistenceId::new(format!("warm{k}_{}", i % 4)).unwrap();
            stores
                .journal
                .write(AtomicWrite::single(event(&id, i / 4 + 1, None)).unwrap())
                .await
                .unwrap();
        }
    }
    let mut lines = Vec::new();
    for (w, (name, ids, size)) in [
        (
            "10,000 single-event writes (guarded), 16 ids concurrently",
            SINGLE_IDS,
            1u64,
        ),
        (
            "10,000 events in 100-event atomic writes (guarded), 4 ids",
            BATCH_IDS,
            100,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            for k in [round % 2, 1 - round % 2] {
                let journal = &sides[k].journal;
                let per_id = EVENTS / ids;
                let d = concurrently(ids, |i| async move {
                    let id = PersistenceId::new(format!("t{w}r{round}i{i}")).unwrap();
                    let mut s = 1;
                    while s <= per_id {
                        let write =
                            AtomicWrite::new((s..s + size).map(|n| event(&id, n, None)).collect())
                                .unwrap();
                        journal.write(write).await.unwrap();
                        s += size;
                    }
                })
                .await;
                rates[k].push(rate(EVENTS, d));
            }
        }
        let [p, t] = rates;
        lines.push((name, median(p), median(t)));
    }
    // Replay of 10,000 events of one id.
    let long = PersistenceId::new("long").unwrap();
    for stores in &sides {
        let mut s = 1;
        while s <= EVENTS {
            stores
                .journal
                .write(
                    AtomicWrite::new((s..s + 100).map(|n| event(&long, n, None)).collect())
                        .unwrap(),
                )
                .await
                .unwrap();
            s += 100;
        }
    }
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for k in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            let n = sides[k]
                .journal
                .replay(&long, 1, u64::MAX, u64::MAX)
                .await
                .unwrap()
                .events
                .fold(0u64, |n, e| async move {
                    e.unwrap();
                    n + 1
                })
                .await;
            assert_eq!(n, EVENTS);
            rates[k].push(rate(EVENTS, start.elapsed()));
        }
    }
    let [p, t] = rates;
    lines.push(("replay of 10,000 events", median(p), median(t)));

    println!("\nTLS cost on one node, {secure_point} (client_encryption_options optional, PasswordAuthenticator + CassandraAuthorizer, role `persistence` on both sides): without TLS against with TLS; {PAYLOAD}-byte payloads, QUORUM; medians of {ROUNDS} rounds, the two sides alternating which goes first\n");
    println!("| workload | no TLS events/s | TLS events/s | TLS / no TLS |");
    println!("|---|---:|---:|---:|");
    for (name, p, t) in lines {
        println!("| {name} | {p:.0} | {t:.0} | {:.2} |", t / p);
    }
    let [p, t] = opens;
    let (p, t) = (median(p), median(t));
    println!(
        "| open (session + prepared statements, schema present), ms | {p:.0} | {t:.0} | {:.2} |",
        t / p
    );
}

/// Median of the runs' rates.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const ROUNDS: usize = 5;

async fn run(contact_points: String) {
    let ks = "persistence_bench";
    let config = |guard: bool| CassandraConfig {
        contact_points: contact_points.split(',').map(str::to_owned).collect(),
        local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
        keyspace: ks.into(),
        create_schema: true,
        overwrite_guard: guard,
        eventual_consistency_delay: Duration::ZERO,
        ..CassandraConfig::default()
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let run_id = run_id.as_str();
    let base = Cassandra::open(config(true)).await.expect("connect");
    let guarded = base.with_namespace(&format!("b{run_id}")).unwrap().stores();
    let unguarded_base = Cassandra::open(config(false)).await.expect("connect");
    let unguarded = unguarded_base
        .with_namespace(&format!("u{run_id}"))
        .unwrap()
        .stores();
    let raw = Raw::new(base.session().clone(), ks).await;
    let mut lines = Vec::new();
    if std::env::args().any(|a| a == "durable_state") {
        let lines = durable_state(&base, run_id, ks).await;
        print_lines(&contact_points, &lines);
        return;
    }

    // Warm-up (connections, the node's JIT).
    for i in 0..400u64 {
        let id = PersistenceId::new(format!("warm{}", i % 4)).unwrap();
        guarded
            .journal
            .write(AtomicWrite::single(event(&id, i / 4 + 1, None)).unwrap())
            .await
            .unwrap();
        raw.write(
            &format!("rawwarm{run_id}{}", i % 4),
            (i / 4 + 1) as i64,
            (i / 4 + 1) as i64,
            true,
            None,
        )
        .await;
    }

    if std::env::args().any(|a| a == "group") {
        group::bench(raw, &guarded, &unguarded, run_id, &contact_points).await;
        return;
    }

    // Write workloads: `ids` concurrent ids, each writing `EVENTS / ids` events in atomic
    // writes of `size`, in order. Driver and raw alternate for ROUNDS rounds; medians.
    #[derive(Clone, Copy)]
    struct W {
        name: &'static str,
        ids: u64,
        size: u64,
        guard: bool,
        tag: Option<&'static str>,
    }
    let workloads = [
        W {
            name: "10,000 single-event writes (guarded, default)",
            ids: SINGLE_IDS,
            size: 1,
            guard: true,
            tag: None,
        },
        W {
            name: "10,000 single-event writes (overwrite_guard = false)",
            ids: SINGLE_IDS,
            size: 1,
            guard: false,
            tag: None,
        },
        W {
            name: "10,000 events in 100-event atomic writes (guarded)",
            ids: BATCH_IDS,
            size: 100,
            guard: true,
            tag: None,
        },
        W {
            name: "10,000 events in 100-event atomic writes (overwrite_guard = false)",
            ids: BATCH_IDS,
            size: 100,
            guard: false,
            tag: None,
        },
        W {
            name: "10,000 tagged events in 100-event atomic writes (guarded)",
            ids: BATCH_IDS,
            size: 100,
            guard: true,
            tag: Some("benchtag"),
        },
    ];
    for (k, w) in workloads.iter().enumerate() {
        let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let per_id = EVENTS / w.ids;
            let stores = if w.guard { &guarded } else { &unguarded };
            let driver_run = || {
                concurrently(w.ids, |i| {
                    let j = stores.journal.clone();
                    async move {
                        let id = PersistenceId::new(format!("w{k}r{round}i{i}")).unwrap();
                        let mut s = 1;
                        while s <= per_id {
                            let write = AtomicWrite::new(
                                (s..s + w.size).map(|n| event(&id, n, w.tag)).collect(),
                            )
                            .unwrap();
                            j.write(write).await.unwrap();
                            s += w.size;
                        }
                    }
                })
            };
            let raw_tag = w.tag.map(|t| format!("raw{t}{run_id}"));
            let raw_run = || {
                concurrently(w.ids, |i| {
                    let raw = &raw;
                    let raw_tag = raw_tag.clone();
                    async move {
                        let id = format!("raw{run_id}w{k}r{round}i{i}");
                        let mut s = 1;
                        while s <= per_id as i64 {
                            raw.write(&id, s, s + w.size as i64 - 1, w.guard, raw_tag.as_deref())
                                .await;
                            s += w.size as i64;
                        }
                    }
                })
            };
            // Alternate who goes first, so a neighbour's load spike hits both alike.
            let (d, r) = if round % 2 == 0 {
                let d = driver_run().await;
                (d, raw_run().await)
            } else {
                let r = raw_run().await;
                (driver_run().await, r)
            };
            d_rates.push(rate(EVENTS, d));
            r_rates.push(rate(EVENTS, r));
        }
        lines.push(Line {
            name: w.name,
            driver: median(d_rates),
            raw: median(r_rates),
        });
    }

    // Replay of 10,000 events of one id (written in 100-event writes above: round 0, id 0 of
    // workload 2 holds 2,500; write a dedicated one).
    let long = PersistenceId::new("long").unwrap();
    let mut s = 1;
    while s <= EVENTS {
        guarded
            .journal
            .write(AtomicWrite::new((s..s + 100).map(|n| event(&long, n, None)).collect()).unwrap())
            .await
            .unwrap();
        raw.write(
            &format!("rawlong{run_id}"),
            s as i64,
            s as i64 + 99,
            true,
            None,
        )
        .await;
        s += 100;
    }
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let replay = guarded
            .journal
            .replay(&long, 1, u64::MAX, u64::MAX)
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
        d_rates.push(rate(EVENTS, start.elapsed()));
        let start = Instant::now();
        let pager = raw
            .session
            .execute_iter(
                raw.select.clone(),
                (format!("rawlong{run_id}"), 0i64, 1i64, EVENTS as i64),
            )
            .await
            .unwrap();
        let n = pager
            .rows_stream::<Row>()
            .unwrap()
            .fold(0u64, |n, r| async move {
                r.unwrap();
                n + 1
            })
            .await;
        assert_eq!(n, EVENTS);
        r_rates.push(rate(EVENTS, start.elapsed()));
    }
    lines.push(Line {
        name: "replay of 10,000 events",
        driver: median(d_rates),
        raw: median(r_rates),
    });

    // A current tag query over the 3 x 10,000 tagged events written above.
    let tagged = EVENTS * ROUNDS as u64;
    let raw_tag = format!("rawbenchtag{run_id}");
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let n = guarded
            .read_journal
            .current_events_by_tag("benchtag".into(), Offset::NoOffset)
            .fold(0u64, |n, e| async move {
                e.unwrap();
                n + 1
            })
            .await;
        assert_eq!(n, tagged);
        d_rates.push(rate(tagged, start.elapsed()));
        let start = Instant::now();
        let now = now_millis();
        let mut n = 0u64;
        // The raw bound reads the same buckets (the current and, near a boundary, the last).
        for bucket in [now - now % 3_600_000 - 3_600_000, now - now % 3_600_000] {
            let pager = raw
                .session
                .execute_iter(
                    raw.select_tag.clone(),
                    (
                        raw_tag.as_str(),
                        bucket,
                        CqlTimeuuid::from_u64_pair(0x1000, 0x8080_8080_8080_8080),
                        timeuuid(0),
                    ),
                )
                .await
                .unwrap();
            n += pager
                .rows_stream::<Row>()
                .unwrap()
                .fold(0u64, |n, r| async move {
                    r.unwrap();
                    n + 1
                })
                .await;
        }
        assert_eq!(n, tagged);
        r_rates.push(rate(tagged, start.elapsed()));
    }
    lines.push(Line {
        name: "current events by tag over 30,000 events",
        driver: median(d_rates),
        raw: median(r_rates),
    });

    // The cost of a schema: a keyspace and the 8 tables (what a keyspace per TCK case costs).
    let probe = format!("ddl_probe_{run_id}");
    let mut probe_config = config(true);
    probe_config.keyspace = probe.clone();
    let start = Instant::now();
    base.session()
        .query_unpaged(persistence_cassandra::create_keyspace(&probe_config), ())
        .await
        .unwrap();
    for cql in persistence_cassandra::create_tables(&probe_config) {
        base.session().query_unpaged(cql, ()).await.unwrap();
    }
    let ddl = start.elapsed();
    base.session()
        .query_unpaged(format!("DROP KEYSPACE {probe}"), ())
        .await
        .unwrap();

    let guard_lines = lines.len();
    lines.extend(durable_state(&base, run_id, ks).await);
    print_lines(&contact_points, &lines);
    let lines = &lines[..guard_lines];
    println!(
        "\noverwrite guard cost (unguarded / guarded events/s): single-event writes {:.2}x (driver), {:.2}x (raw); 100-event writes {:.2}x (driver), {:.2}x (raw)",
        lines[1].driver / lines[0].driver,
        lines[1].raw / lines[0].raw,
        lines[3].driver / lines[2].driver,
        lines[3].raw / lines[2].raw,
    );
    println!(
        "a keyspace and its 8 tables: {:.2} s to create (x 72 kit cases = {:.0} s)",
        ddl.as_secs_f64(),
        ddl.as_secs_f64() * 72.0
    );
}

fn print_lines(contact_points: &str, lines: &[Line]) {
    println!("\nbackend-cassandra against {contact_points}: {PAYLOAD}-byte payloads, QUORUM, single-event writes from {SINGLE_IDS} ids concurrently, atomic writes from {BATCH_IDS} ids; medians of {ROUNDS} rounds, driver and raw alternating in turn\n");
    println!("| workload | driver ops/s | raw scylla ops/s (bound) | driver / bound |");
    println!("|---|---:|---:|---:|");
    for l in lines {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} |",
            l.name,
            l.driver,
            l.raw,
            l.driver / l.raw
        );
    }
}

/// Durable-state upserts of one tag.
const STATE_TAG: &str = "statetag";
/// Upserts of one id in sequence, per round.
const STATE_ONE_ID: u64 = 500;
/// Upserts per id of the 16-id workload, per round.
const STATE_PER_ID: u64 = 50;
/// Ids of the change query.
const STATE_QUERY_IDS: u64 = 2_000;

/// The durable-state statements as the driver issues them.
struct RawState {
    session: Arc<Session>,
    change: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    changes: PreparedStatement,
    select: PreparedStatement,
}

impl RawState {
    async fn new(session: Arc<Session>, ks: &str) -> RawState {
        let (ds, dsc) = (
            format!("{ks}.durable_state"),
            format!("{ks}.durable_state_changes"),
        );
        RawState {
            change: prepare(&session, format!("INSERT INTO {dsc} (tag, timebucket, timestamp, persistence_id, revision) VALUES (?, ?, ?, ?, ?)")).await,
            insert: prepare(&session, format!("INSERT INTO {ds} (persistence_id, revision, ser_id, ser_manifest, state, deleted, tag, timestamp) VALUES (?, ?, ?, ?, ?, false, ?, ?) IF NOT EXISTS")).await,
            update: prepare(&session, format!("UPDATE {ds} SET revision = ?, ser_id = ?, ser_manifest = ?, state = ?, deleted = false, tag = ?, timestamp = ? WHERE persistence_id = ? IF revision = ?")).await,
            changes: prepare(&session, format!("SELECT timestamp, persistence_id, revision FROM {dsc} WHERE tag = ? AND timebucket = ? AND timestamp > ? AND timestamp <= ?")).await,
            select: prepare(&session, format!("SELECT revision, ser_id, ser_manifest, state, deleted, tag, timestamp FROM {ds} WHERE persistence_id = ?")).await,
            session,
        }
    }

    /// One tagged upsert: the change row, then the lightweight transaction.
    async fn upsert(&self, id: &str, tag: &str, revision: i64) {
        let ts = timeuuid(revision);
        let now = now_millis();
        let bucket = now - now % 3_600_000;
        self.session
            .execute_unpaged(&self.change, (tag, bucket, ts, id, revision))
            .await
            .expect("raw change row");
        let bytes = [b'x'; PAYLOAD];
        let result = if revision == 1 {
            self.session
                .execute_unpaged(
                    &self.insert,
                    (id, revision, "raw", "m", &bytes[..], tag, ts),
                )
                .await
        } else {
            self.session
                .execute_unpaged(
                    &self.update,
                    (revision, "raw", "m", &bytes[..], tag, ts, id, revision - 1),
                )
                .await
        }
        .expect("raw lwt");
        let rows = result.into_rows_result().expect("lwt rows");
        let row = rows.first_row::<Row>().expect("an LWT answer");
        assert!(
            matches!(
                row.columns.first(),
                Some(Some(
                    persistence_cassandra::scylla::value::CqlValue::Boolean(true)
                ))
            ),
            "raw upsert applied"
        );
    }

    /// A current change query: the change rows of the hour's buckets, each with its
    /// state read, 32 at a time, in order. Returns the changes delivered.
    async fn query(&self, tag: &str) -> u64 {
        let now = now_millis();
        let mut n = 0u64;
        for bucket in [now - now % 3_600_000 - 3_600_000, now - now % 3_600_000] {
            let pager = self
                .session
                .execute_iter(
                    self.changes.clone(),
                    (
                        tag,
                        bucket,
                        CqlTimeuuid::from_u64_pair(0x1000, 0x8080_8080_8080_8080),
                        timeuuid(0),
                    ),
                )
                .await
                .unwrap();
            n += pager
                .rows_stream::<(CqlTimeuuid, String, i64)>()
                .unwrap()
                .map(|row| async move {
                    let (ts, id, _) = row.unwrap();
                    let state = self
                        .session
                        .execute_unpaged(&self.select, (id,))
                        .await
                        .unwrap()
                        .into_rows_result()
                        .unwrap()
                        .first_row::<Row>()
                        .unwrap();
                    matches!(
                        state.columns.last(),
                        Some(Some(persistence_cassandra::scylla::value::CqlValue::Timeuuid(t))) if *t == ts
                    )
                })
                .buffered(32)
                .fold(0u64, |n, delivered| async move { n + u64::from(delivered) })
                .await;
        }
        n
    }
}

/// Durable state beside its raw statements: tagged upserts of one id in sequence, of 16
/// ids concurrently, and a current change query over 2,000 ids.
async fn durable_state(base: &Cassandra, run_id: &str, ks: &str) -> Vec<Line> {
    let store = base
        .with_namespace(&format!("s{run_id}"))
        .unwrap()
        .stores()
        .durable_state;
    let raw = RawState::new(base.session().clone(), ks).await;
    let payload = || Payload::new("raw", "m", vec![b'x'; PAYLOAD]);
    let raw_tag = format!("rawstate{run_id}");
    let mut lines = Vec::new();
    // Revisions go on from round to round.
    let mut next = 1u64;
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let from = next;
        let driver = || async {
            let start = Instant::now();
            let id = PersistenceId::new("one").unwrap();
            for r in from..from + STATE_ONE_ID {
                store
                    .upsert(&id, r, payload(), Some(STATE_TAG.into()))
                    .await
                    .unwrap();
            }
            rate(STATE_ONE_ID, start.elapsed())
        };
        let raw_run = || async {
            let start = Instant::now();
            for r in from..from + STATE_ONE_ID {
                raw.upsert(&format!("rawone{run_id}"), &raw_tag, r as i64)
                    .await;
            }
            rate(STATE_ONE_ID, start.elapsed())
        };
        if round % 2 == 0 {
            d_rates.push(driver().await);
            r_rates.push(raw_run().await);
        } else {
            r_rates.push(raw_run().await);
            d_rates.push(driver().await);
        }
        next += STATE_ONE_ID;
    }
    lines.push(Line {
        name: "durable-state upserts of one id in sequence (tagged)",
        driver: median(d_rates),
        raw: median(r_rates),
    });

    let mut next = 1u64;
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    let total = STATE_PER_ID * SINGLE_IDS;
    for round in 0..ROUNDS {
        let from = next;
        let driver = || async {
            let d = concurrently(SINGLE_IDS, |i| {
                let store = store.clone();
                async move {
                    let id = PersistenceId::new(format!("many{i}")).unwrap();
                    for r in from..from + STATE_PER_ID {
                        store
                            .upsert(&id, r, payload(), Some(STATE_TAG.into()))
                            .await
                            .unwrap();
                    }
                }
            })
            .await;
            rate(total, d)
        };
        let raw_run = || async {
            let d = concurrently(SINGLE_IDS, |i| {
                let (raw, raw_tag) = (&raw, &raw_tag);
                async move {
                    for r in from..from + STATE_PER_ID {
                        raw.upsert(&format!("rawmany{run_id}{i}"), raw_tag, r as i64)
                            .await;
                    }
                }
            })
            .await;
            rate(total, d)
        };
        if round % 2 == 0 {
            d_rates.push(driver().await);
            r_rates.push(raw_run().await);
        } else {
            r_rates.push(raw_run().await);
            d_rates.push(driver().await);
        }
        next += STATE_PER_ID;
    }
    lines.push(Line {
        name: "durable-state upserts, 16 ids concurrently (tagged)",
        driver: median(d_rates),
        raw: median(r_rates),
    });

    // 2,000 ids once each under their own tag, then the current change query.
    let query_tag = "statequery";
    let raw_query_tag = format!("rawstatequery{run_id}");
    concurrently(SINGLE_IDS, |i| {
        let (store, raw, raw_query_tag) = (store.clone(), &raw, &raw_query_tag);
        async move {
            for k in (i..STATE_QUERY_IDS).step_by(SINGLE_IDS as usize) {
                let id = PersistenceId::new(format!("q{k}")).unwrap();
                store
                    .upsert(&id, 1, payload(), Some(query_tag.into()))
                    .await
                    .unwrap();
                raw.upsert(&format!("rawq{run_id}{k}"), raw_query_tag, 1)
                    .await;
            }
        }
    })
    .await;
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let driver = || async {
            let start = Instant::now();
            let n = store
                .query_changes(
                    query_tag.into(),
                    Offset::NoOffset,
                    persistence_api::QueryMode::Current,
                )
                .fold(0u64, |n, c| async move {
                    c.unwrap();
                    n + 1
                })
                .await;
            assert_eq!(n, STATE_QUERY_IDS);
            rate(n, start.elapsed())
        };
        let raw_run = || async {
            let start = Instant::now();
            let n = raw.query(&raw_query_tag).await;
            assert_eq!(n, STATE_QUERY_IDS);
            rate(n, start.elapsed())
        };
        if round % 2 == 0 {
            d_rates.push(driver().await);
            r_rates.push(raw_run().await);
        } else {
            r_rates.push(raw_run().await);
            d_rates.push(driver().await);
        }
    }
    lines.push(Line {
        name: "current change query over 2,000 ids (changes/s)",
        driver: median(d_rates),
        raw: median(r_rates),
    });
    lines
}

/// `group`: the group-commit question of issue 16 on Cassandra. 1,000 entities, 1 / 10 /
/// 100 / 1,000 concurrent tasks (`BENCH_GC_TASKS`, comma-separated), `BENCH_GC_EVENTS`
/// (3,000) single-event writes per run, each task writing its own entities in turn (an
/// entity's next write waits for its previous one). Every entity's first event is written
/// before the timing (the store's first write of an id in a process also registers it in
/// `all_persistence_ids`), so each timed write is the steady state: one request.
///
/// Paths, at the same concurrency: the raw scylla session sending the store's request per
/// event (guarded: the single-partition logged batch of `UPDATE .. SET used .. IF used <
/// seq` and the event's `INSERT`, one Paxos round; unguarded: the same batch unlogged without the
/// condition), the stores (`overwrite_guard` true and false), and the alternative the issue
/// calls an anti-pattern: the unguarded writes of different ids gathered into one unlogged
/// batch over up to `BENCH_GC_BATCH` (100) partitions, a committer taking what queued while
/// the previous batches were in flight, up to `BENCH_GC_INFLIGHT` (4) at once. A guarded
/// write cannot be grouped that way: the bench sends a conditional batch over two partitions
/// and prints Cassandra's refusal.
mod group {
    use super::*;
    use persistence_api::Stores;
    use persistence_cassandra::scylla::value::CqlValue as V;

    use persistence_tck::bench::{env_list, env_usize, Figures, Gather, ENTITIES};

    /// [`persistence_tck::bench::run`] from sequence number 2 (1 is written untimed), with
    /// CQL's `bigint` sequence numbers.
    async fn run<F, Fut>(tasks: usize, events: usize, write: F) -> Figures
    where
        F: Fn(usize, i64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        persistence_tck::bench::run(tasks, events, 2, move |e, seq| write(e, seq as i64)).await
    }

    /// Writes event 1 of every entity, 64 at a time, untimed.
    async fn seed<F, Fut>(write: F)
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        futures::stream::iter(0..ENTITIES)
            .map(write)
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }

    /// The store's request per event, raw: guarded or not, one request per event.
    async fn one_each(
        raw: &Arc<Raw>,
        prefix: &str,
        tasks: usize,
        events: usize,
        guarded: bool,
    ) -> Figures {
        let key = |e: usize| format!("{prefix}-{tasks}-{e}");
        seed(|e| {
            let (raw, id) = (raw.clone(), key(e));
            async move { raw.write(&id, 1, 1, guarded, None).await }
        })
        .await;
        let raw = raw.clone();
        let prefix = prefix.to_owned();
        run(tasks, events, move |e, seq| {
            let (raw, id) = (raw.clone(), format!("{prefix}-{tasks}-{e}"));
            async move { raw.write(&id, seq, seq, guarded, None).await }
        })
        .await
    }

    fn entity(tasks: usize, e: usize) -> PersistenceId {
        PersistenceId::new(format!("gc{tasks}-{e}")).unwrap()
    }

    async fn stores(stores: &Stores, tasks: usize, events: usize) -> Figures {
        let journal = stores.journal.clone();
        seed(|e| {
            let journal = journal.clone();
            async move {
                journal
                    .write(AtomicWrite::single(event(&entity(tasks, e), 1, None)).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await;
        run(tasks, events, move |e, seq| {
            let journal = journal.clone();
            async move {
                journal
                    .write(AtomicWrite::single(event(&entity(tasks, e), seq as u64, None)).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await
    }

    /// The unguarded write of one event as bound values: `used`, then the event row.
    fn unguarded_values(id: &str, seq: i64) -> [Vec<V>; 2] {
        let now = now_millis();
        [
            vec![V::BigInt(seq), V::Text(id.into()), V::BigInt(0)],
            vec![
                V::Text(id.into()),
                V::BigInt(seq),
                V::Timeuuid(timeuuid(seq)),
                V::BigInt(now - now % 3_600_000),
                V::Blob(vec![b'x'; PAYLOAD]),
                V::List(Vec::new()),
                V::BigInt(now),
            ],
        ]
    }

    /// Unguarded writes of different ids gathered (see [`Gather`]) into one unlogged batch
    /// each (each write's two statements to its own partition).
    fn committer(raw: Arc<Raw>, max: usize, inflight: usize) -> Gather<(String, i64)> {
        Gather::start(max, inflight, move |group: Vec<(String, i64)>| {
            let raw = raw.clone();
            async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(Consistency::Quorum);
                let mut values = Vec::with_capacity(group.len() * 2);
                for (id, seq) in group {
                    batch.append_statement(raw.plain_used.clone());
                    batch.append_statement(raw.insert.clone());
                    values.extend(unguarded_values(&id, seq));
                }
                raw.session
                    .batch(&batch, &values)
                    .await
                    .expect("multi-partition batch");
            }
        })
    }

    /// Unguarded writes of different ids gathered into multi-partition unlogged batches.
    async fn grouped(
        raw: &Arc<Raw>,
        prefix: &str,
        tasks: usize,
        events: usize,
        max: usize,
        inflight: usize,
    ) -> (Figures, f64) {
        seed(|e| {
            let (raw, id) = (raw.clone(), format!("{prefix}-{tasks}-{e}"));
            async move { raw.write(&id, 1, 1, false, None).await }
        })
        .await;
        let queue = committer(raw.clone(), max, inflight);
        let prefix = prefix.to_owned();
        let gathered = queue.clone();
        let f = run(tasks, events, move |e, seq| {
            let (queue, id) = (gathered.clone(), format!("{prefix}-{tasks}-{e}"));
            async move { queue.submit((id, seq)).await }
        })
        .await;
        let sizes = queue.sizes();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
        (f, mean)
    }

    /// Two guarded writes (the store's conditional statement and its event) of two ids in
    /// one batch: what Cassandra answers.
    async fn conditional_across_partitions(raw: &Raw, prefix: &str) -> String {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::Quorum);
        batch.set_serial_consistency(Some(SerialConsistency::Serial));
        let mut values = Vec::new();
        for id in [format!("{prefix}-a"), format!("{prefix}-b")] {
            batch.append_statement(raw.guarded_first.clone());
            values.push(vec![V::BigInt(1), V::Text(id.clone()), V::BigInt(0)]);
            batch.append_statement(raw.insert.clone());
            values.push(unguarded_values(&id, 1)[1].clone());
        }
        match raw.session.batch(&batch, &values).await {
            Ok(_) => "accepted (unexpected)".to_owned(),
            Err(e) => format!("refused: {e}"),
        }
    }

    fn row(tasks: usize, path: &str, f: &Figures, base: f64, note: &str) {
        println!(
            "| {tasks:>5} | {path:<40} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5.2} | {note}",
            f.rate,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.rate / base
        );
    }

    pub async fn bench(
        raw: Raw,
        guarded: &Stores,
        unguarded: &Stores,
        run_id: &str,
        contact_points: &str,
    ) {
        let raw = Arc::new(raw);
        let tasks = env_list("BENCH_GC_TASKS", &[1, 10, 100, 1000]);
        let events = env_usize("BENCH_GC_EVENTS", 3000);
        let max = env_usize("BENCH_GC_BATCH", 100).max(1);
        let inflight = env_usize("BENCH_GC_INFLIGHT", 4).max(1);
        let refusal = conditional_across_partitions(&raw, &format!("rawgclwt{run_id}")).await;
        println!(
            "persistence-cassandra group commit against {contact_points} ({events} single-event writes of {ENTITIES} entities per run, {PAYLOAD} B payloads, QUORUM; grouped: up to {max} writes per multi-partition unlogged batch, {inflight} in flight)"
        );
        println!("A logged batch of two guarded writes to two partitions: {refusal}\n");
        println!(
            "| tasks | path                                     |  events/s | p50 ms  | p99 ms  | ratio | "
        );
        println!(
            "|------:|------------------------------------------|----------:|--------:|--------:|------:|"
        );
        for (i, t) in tasks.into_iter().enumerate() {
            let t = t.clamp(1, ENTITIES);
            // Every other concurrency runs the paths in reverse order, so none gains from
            // always going first or last.
            let (raw_g, store_g, raw_u, store_u, (grp, mean)) = if i % 2 == 0 {
                let a = one_each(&raw, &format!("rawgcg{run_id}"), t, events, true).await;
                let b = stores(guarded, t, events).await;
                let c = one_each(&raw, &format!("rawgcu{run_id}"), t, events, false).await;
                let d = stores(unguarded, t, events).await;
                let e = grouped(&raw, &format!("rawgcb{run_id}"), t, events, max, inflight).await;
                (a, b, c, d, e)
            } else {
                let e = grouped(&raw, &format!("rawgcb{run_id}"), t, events, max, inflight).await;
                let d = stores(unguarded, t, events).await;
                let c = one_each(&raw, &format!("rawgcu{run_id}"), t, events, false).await;
                let b = stores(guarded, t, events).await;
                let a = one_each(&raw, &format!("rawgcg{run_id}"), t, events, true).await;
                (a, b, c, d, e)
            };
            row(
                t,
                "raw guarded (LWT batch), 1/event",
                &raw_g,
                raw_g.rate,
                "/ raw guarded",
            );
            row(
                t,
                "store, overwrite_guard = true",
                &store_g,
                raw_g.rate,
                "/ raw guarded",
            );
            row(
                t,
                "raw unguarded, 1 batch/event",
                &raw_u,
                raw_u.rate,
                "/ raw unguarded",
            );
            row(
                t,
                "store, overwrite_guard = false",
                &store_u,
                raw_u.rate,
                "/ raw unguarded",
            );
            row(
                t,
                "raw unguarded, multi-partition batches",
                &grp,
                raw_u.rate,
                &format!("/ raw unguarded; mean {mean:.1} writes/batch"),
            );
        }
    }
}
