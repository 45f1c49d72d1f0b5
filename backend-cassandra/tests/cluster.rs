//! A three-node Cassandra cluster that loses nodes (issue 14, "A cluster that loses a node").
//!
//! `bash scripts/servers/cassandra.sh cluster-start && source .servers/cassandra-cluster/env`,
//! then `cargo test -p persistence-cassandra --test cluster -- --nocapture`. The nodes run on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3; the keyspace `persistence_cluster` has replication
//! factor 3, and every read and write is at `QUORUM` (lightweight transactions at `SERIAL`).
//! Without `PERSISTENCE_CASSANDRA_CLUSTER_CONTACT_POINTS` the test says it is skipped; with
//! `CI=true` that is a failure. The test kills and restarts nodes with the script
//! (`cluster-kill N`, `cluster-restart N..`), in this order:
//!
//! 0. every node up (`cluster-restart 1 2 3` starts again on their data any node a failed
//!    earlier run left down; a no-op otherwise);
//! 1. the kit's journal suite (`journal::*`) on the whole cluster;
//! 2. writers stream tagged atomic writes, one id each, and node 3 is SIGKILLed in the middle:
//!    the writes go on (every writer has writes acknowledged after the kill); at most one
//!    write per writer fails (the most that can be in flight at the kill), each with a
//!    retryable kind, and each is settled by retrying it (stored then, or a `Conflict`
//!    because the failed attempt had been applied);
//!    a replay at `QUORUM` holds every acknowledged write whole (lost 0, partial 0);
//! 3. node 3 restarts on its data folder and rejoins; then, while the writers stream again,
//!    node 2 is SIGKILLed: the writes go on through nodes 1 and 3, which proves node 3 serves
//!    as a replica again; the replay check again;
//! 4. node 3 is SIGKILLed as well (two of three down): every write and replay fails with
//!    `Unavailable` or `Timeout`, retryable, within the request timeout (no hang);
//! 5. nodes 2 and 3 restart together; the replay check on the whole cluster, and a write at
//!    highest + 1 on each id succeeds.
//!
//! Counts and timings are printed (run with `--nocapture` to see them).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Payload, PersistenceId, PersistentEvent, Stores,
};
use persistence_cassandra::{Cassandra, CassandraConfig, ConsistencyLevel, Replication};

#[allow(dead_code)] // its `main` is the plain kit's; the factory and the settings are used here
#[path = "tck.rs"]
mod plain;

const VAR: &str = "PERSISTENCE_CASSANDRA_CLUSTER_CONTACT_POINTS";
/// Writers, one persistence id each.
const WRITERS: usize = 4;
/// Events per atomic write.
const EVENTS_PER_WRITE: u64 = 20;
/// The tag every event carries (so each write also writes the tag tables).
const TAG: &str = "cluster";
/// How long the writers stream before a node is killed, and after.
const BEFORE_KILL: Duration = Duration::from_secs(3);
const AFTER_KILL: Duration = Duration::from_secs(8);
/// How long a writer keeps retrying a write whose outcome is unknown.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// Runs `scripts/servers/cassandra.sh ARGS` (blocking, on tokio's blocking pool) and returns
/// how long it took; panics with its output when it fails.
async fn script(args: &[&str]) -> Duration {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers/cassandra.sh");
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&path)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "cassandra.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    })
    .await
    .expect("the script's thread")
}

/// The kit's settings, on the cluster: its own keyspace at replication factor 3, `QUORUM`.
fn config(contact_points: String) -> CassandraConfig {
    let dc = std::env::var("PERSISTENCE_CASSANDRA_CLUSTER_LOCAL_DATACENTER").ok();
    CassandraConfig {
        keyspace: "persistence_cluster".into(),
        replication: Replication::SimpleStrategy {
            replication_factor: 3,
        },
        consistency: ConsistencyLevel::Quorum,
        ..plain::config(contact_points, dc)
    }
}

fn pid(k: usize) -> PersistenceId {
    PersistenceId::new(format!("cluster-{k}")).unwrap()
}

/// One atomic write of [`EVENTS_PER_WRITE`] tagged events from `from`.
fn batch(id: &PersistenceId, from: u64) -> AtomicWrite {
    let events = (from..from + EVENTS_PER_WRITE)
        .map(|seq| {
            PersistentEvent::new(
                id.clone(),
                seq,
                Payload::raw(format!("{id}/{seq}").into_bytes()),
            )
            .with_tags([TAG])
        })
        .collect();
    AtomicWrite::new(events).unwrap()
}

/// What the writers of one id saw.
#[derive(Default, Debug)]
struct Writer {
    /// The next sequence number to write.
    next: u64,
    /// First sequence numbers of writes known to be stored: acknowledged, or settled as
    /// applied by a `Conflict` on their retry.
    stored: Vec<u64>,
}

/// What the whole test counted.
#[derive(Default, Debug)]
struct Tally {
    /// Writes answered Ok on their first attempt.
    acknowledged: usize,
    /// Writes whose first attempt failed with a retryable error.
    failed_retryably: usize,
    /// ... of which a retry stored (answered Ok).
    settled_by_retry: usize,
    /// ... of which a retry found applied (`Conflict`: the first attempt had been stored).
    settled_applied: usize,
    lost: usize,
    partial: usize,
    problems: Vec<String>,
}

/// One failed first attempt: when (since the stream started), the kind, the message.
type Failure = (Duration, ErrorKind, String);

/// What one stream of the writers saw.
struct Stream {
    failures: Vec<Failure>,
    /// Per writer, the times (since the stream started) of its acknowledged writes.
    acks: Vec<Vec<Duration>>,
    /// When the writers stopped (since the stream started).
    end: Duration,
}

/// Writes at `next` until it is stored (Ok, or a `Conflict` on a retry: the earlier attempt
/// was applied); returns whether the first attempt succeeded, and a failure if it did not.
async fn write_settled(
    stores: &Stores,
    id: &PersistenceId,
    from: u64,
    tally: &Mutex<Tally>,
    start: Instant,
) -> Result<Option<Failure>, String> {
    let first = match stores.journal.write(batch(id, from)).await {
        Ok(()) => {
            tally.lock().unwrap().acknowledged += 1;
            return Ok(None);
        }
        Err(e) => e,
    };
    let failure = (start.elapsed(), first.kind(), first.to_string());
    if !first.is_retryable() {
        return Err(format!(
            "{id} write at {from}: not retryable: {:?}: {first}",
            first.kind()
        ));
    }
    tally.lock().unwrap().failed_retryably += 1;
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match stores.journal.write(batch(id, from)).await {
            Ok(()) => {
                tally.lock().unwrap().settled_by_retry += 1;
                return Ok(Some(failure));
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                tally.lock().unwrap().settled_applied += 1;
                return Ok(Some(failure));
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {}
            Err(e) => {
                return Err(format!(
                    "{id} write at {from}: its retry failed: {:?}: {e}",
                    e.kind()
                ))
            }
        }
    }
}

/// Streams writes on every id, SIGKILLs `node` after [`BEFORE_KILL`], streams
/// [`AFTER_KILL`] more, and returns what happened (the kill's time since the start, too).
async fn stream_and_kill(
    stores: &Stores,
    writers: &Arc<Vec<Mutex<Writer>>>,
    tally: &Arc<Mutex<Tally>>,
    node: &str,
) -> (Stream, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..WRITERS {
        let (stores, writers, tally, stop) =
            (stores.clone(), writers.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let id = pid(k);
            let mut failures = Vec::new();
            let mut acks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let from = writers[k].lock().unwrap().next;
                match write_settled(&stores, &id, from, &tally, start).await {
                    Ok(failure) => {
                        let mut w = writers[k].lock().unwrap();
                        w.stored.push(from);
                        w.next = from + EVENTS_PER_WRITE;
                        match failure {
                            None => acks.push(start.elapsed()),
                            Some(f) => failures.push(f),
                        }
                    }
                    Err(problem) => {
                        tally.lock().unwrap().problems.push(problem);
                        break;
                    }
                }
            }
            (failures, acks)
        }));
    }
    tokio::time::sleep(BEFORE_KILL).await;
    let kill_at = start.elapsed();
    let took = script(&["cluster-kill", node]).await;
    eprintln!("cluster: node {node} SIGKILLed at {kill_at:.1?} of the stream ({took:.1?})");
    tokio::time::sleep(AFTER_KILL).await;
    stop.store(true, Ordering::Relaxed);
    let mut stream = Stream {
        failures: Vec::new(),
        acks: Vec::new(),
        end: Duration::ZERO,
    };
    for t in tasks {
        let (failures, acks) = t.await.expect("a writer task");
        stream.failures.extend(failures);
        stream.acks.push(acks);
    }
    stream.end = start.elapsed();
    (stream, kill_at)
}

/// Checks and prints one stream around a kill: every writer acknowledged writes after the
/// kill; with `strict`, at most one failed (in-flight) write per writer. (Every failure is
/// retryable and settled, or `write_settled` already recorded a problem.)
fn check_stream(
    phase: &str,
    stream: &Stream,
    kill_at: Duration,
    strict: bool,
    tally: &Mutex<Tally>,
) {
    let mut tally = tally.lock().unwrap();
    let acked: usize = stream.acks.iter().map(Vec::len).sum();
    let after: Vec<usize> = stream
        .acks
        .iter()
        .map(|a| a.iter().filter(|t| **t > kill_at).count())
        .collect();
    // The longest time without any acknowledged write after the kill.
    let mut times: Vec<Duration> = stream.acks.iter().flatten().copied().collect();
    times.push(kill_at);
    times.push(stream.end);
    times.sort();
    let stall = times
        .windows(2)
        .filter(|w| w[1] > kill_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "cluster: {phase}: {acked} writes acknowledged ({:?} per writer after the kill), {} failed retryably {:?}; longest pause in acknowledgements after the kill {stall:.1?}",
        after,
        stream.failures.len(),
        stream
            .failures
            .iter()
            .map(|(t, k, _)| format!("{k:?} at {t:.1?}"))
            .collect::<Vec<_>>()
    );
    for (t, kind, message) in &stream.failures {
        eprintln!("cluster: {phase}: failed at {t:.1?}: {kind:?}: {message}");
    }
    if strict && stream.failures.len() > WRITERS {
        tally.problems.push(format!(
            "{phase}: {} writes failed, more than the {WRITERS} that can be in flight at the kill",
            stream.failures.len()
        ));
    }
    if after.contains(&0) {
        tally.problems.push(format!(
            "{phase}: a writer acknowledged no write after the kill ({after:?} per writer)"
        ));
    }
}

/// Replays every id at `QUORUM`: each a whole number of writes numbered 1..=n (else
/// partial), every stored write present (else lost), `highest_sequence_nr` = n.
async fn check_replay(
    phase: &str,
    stores: &Stores,
    writers: &[Mutex<Writer>],
    tally: &Mutex<Tally>,
) {
    let started = Instant::now();
    let mut events = 0;
    for (k, writer) in writers.iter().enumerate() {
        let id = pid(k);
        let replayed = match stores.journal.replay_all(&id).await {
            Ok(r) => r,
            Err(e) => {
                tally
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("{phase}: replay of {id} failed: {e}"));
                continue;
            }
        };
        let seqs: Vec<u64> = replayed.iter().map(|e| e.sequence_nr).collect();
        let n = seqs.len() as u64;
        events += n;
        let whole = seqs.iter().copied().eq(1..=n) && n.is_multiple_of(EVENTS_PER_WRITE);
        let payloads_ok = replayed
            .iter()
            .all(|e| e.payload.bytes[..] == *format!("{id}/{}", e.sequence_nr).as_bytes());
        let stored = writer.lock().unwrap().stored.clone();
        let lost: Vec<u64> = stored
            .iter()
            .copied()
            .filter(|from| from + EVENTS_PER_WRITE - 1 > n)
            .collect();
        let highest = stores.journal.highest_sequence_nr(&id).await;
        let mut tally = tally.lock().unwrap();
        if !whole || !payloads_ok {
            tally.partial += 1;
            tally.problems.push(format!(
                "{phase}: {id}: {n} events replayed, numbered 1..=n in whole writes: {whole}, payloads as written: {payloads_ok}"
            ));
        }
        if !lost.is_empty() {
            tally.lost += lost.len();
            tally.problems.push(format!(
                "{phase}: {id}: {} stored write(s) missing (first sequence numbers {lost:?}); replay ends at {n}",
                lost.len()
            ));
        }
        match highest {
            Ok(h) if h == n => {}
            other => tally.problems.push(format!(
                "{phase}: {id}: highest_sequence_nr {other:?}, replay ends at {n}"
            )),
        }
    }
    eprintln!(
        "cluster: {phase}: replay at QUORUM of {WRITERS} ids, {events} events, in {:.1?}",
        started.elapsed()
    );
}

/// The write at `next` on every id and a replay, with two nodes of three down: each must
/// fail, retryably, as `Unavailable` or `Timeout`, within the request timeout (and a
/// margin).
async fn check_unavailable(
    round: &str,
    stores: &Stores,
    writers: &[Mutex<Writer>],
    bound: Duration,
    tally: &Mutex<Tally>,
) {
    let mut seen = Vec::new();
    for (k, writer) in writers.iter().enumerate() {
        let id = pid(k);
        let from = writer.lock().unwrap().next;
        let started = Instant::now();
        let write = stores.journal.write(batch(&id, from)).await;
        let write_took = started.elapsed();
        let started = Instant::now();
        let replay = stores.journal.replay_all(&id).await.map(|_| ());
        let replay_took = started.elapsed();
        for (what, result, took) in [
            ("write", write, write_took),
            ("replay", replay, replay_took),
        ] {
            let mut tally = tally.lock().unwrap();
            match result {
                Ok(()) => tally.problems.push(format!(
                    "{round}: the {what} of {id} succeeded with two nodes of three down"
                )),
                Err(e) => {
                    seen.push(format!("{what} {:?} in {took:.1?}", e.kind()));
                    if !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
                        || !e.is_retryable()
                    {
                        tally.problems.push(format!(
                            "{round}: the {what} of {id} failed with {:?} (retryable: {}), not Unavailable or Timeout: {e}",
                            e.kind(),
                            e.is_retryable()
                        ));
                    }
                    if took > bound {
                        tally.problems.push(format!(
                            "{round}: the {what} of {id} took {took:.1?} to fail, more than {bound:?}"
                        ));
                    }
                    if k == 0 {
                        eprintln!("cluster: {round}: the {what} of {id}: {:?}: {e}", e.kind());
                    }
                }
            }
        }
    }
    eprintln!("cluster: {round}: {}", seen.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_loses_a_node() {
    let Some(contact_points) = persistence_tck::server_env(VAR) else {
        return;
    };
    let test_started = Instant::now();

    // 0. Every node up.
    let took = script(&["cluster-restart", "1", "2", "3"]).await;
    eprintln!("cluster: three nodes up ({took:.1?})");
    let config = config(contact_points);
    let request_timeout = config.request_timeout;
    let page_size = config.page_size;
    let started = Instant::now();
    let base = Cassandra::open(config).await.expect("open the cluster");
    eprintln!(
        "cluster: session and schema (RF 3) in {:.1?}",
        started.elapsed()
    );

    // 1. The kit's journal suite on the whole cluster, case by case. Its racing-writers case
    // meets Paxos contention timeouts here (4 in a run), which it settles from the replay.
    let started = Instant::now();
    let factory: Arc<dyn persistence_tck::StoreFactory> = Arc::new(plain::Factory {
        base: base.clone(),
        page_size,
    });
    let mut outcomes = Vec::new();
    for case in persistence_tck::all_cases() {
        if !case.name.starts_with("journal::") {
            continue;
        }
        // The filter is a substring: keep only this case's own row.
        let report = persistence_tck::run_all(factory.clone(), Some(case.name)).await;
        outcomes.extend(report.cases.into_iter().filter(|(n, _)| n == case.name));
    }
    let report = persistence_tck::Report { cases: outcomes };
    let failed: Vec<_> = report
        .cases
        .iter()
        .filter(|(_, o)| matches!(o, persistence_tck::Outcome::Failed(_)))
        .collect();
    eprintln!(
        "cluster: the kit's journal suite on three nodes: {} in {:.1?}",
        report.summary(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "journal cases failed on the cluster: {failed:#?}"
    );
    let (passed, _, _) = report.counts();
    assert!(passed > 0, "no journal case ran: {}", report.summary());

    // The streams' ids, in a namespace of their own (a rerun on the same cluster starts afresh).
    let namespace = format!("c{}", uuid_ish());
    let stores = base.with_namespace(&namespace).unwrap().stores();
    let writers: Arc<Vec<Mutex<Writer>>> = Arc::new(
        (0..WRITERS)
            .map(|_| {
                Mutex::new(Writer {
                    next: 1,
                    stored: Vec::new(),
                })
            })
            .collect(),
    );
    let tally = Arc::new(Mutex::new(Tally::default()));

    // 2. Node 3 killed during the stream.
    let (stream, kill_at) = stream_and_kill(&stores, &writers, &tally, "3").await;
    check_stream("node 3 killed", &stream, kill_at, true, &tally);
    check_replay("node 3 down", &stores, &writers, &tally).await;

    // 3. Node 3 rejoins; node 2 killed during the next stream (nodes 1 and 3 carry it).
    let took = script(&["cluster-restart", "3"]).await;
    eprintln!("cluster: node 3 restarted on its data and back in the ring in {took:.1?}");
    let (stream, kill_at) = stream_and_kill(&stores, &writers, &tally, "2").await;
    // Not strict: right after the rejoin, writes through nodes 1 and 3 slow to a trickle on
    // this machine (probably node 3 catching up: hints, flushes, a cold JIT) and some
    // end in Cassandra's 5 s WriteTimeout although they started after the kill; in four runs
    // 1, 4, 4 and 2 writes failed (all retryable, all settled, nothing lost). Printed, counted.
    check_stream(
        "node 2 killed (node 3 rejoined)",
        &stream,
        kill_at,
        false,
        &tally,
    );
    check_replay("node 2 down", &stores, &writers, &tally).await;

    // 4. Node 3 killed as well: two of three down.
    script(&["cluster-kill", "3"]).await;
    let bound = request_timeout + Duration::from_secs(3);
    check_unavailable("two nodes down, at once", &stores, &writers, bound, &tally).await;
    // Again once the failure detector has had time to mark the node down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    check_unavailable(
        "two nodes down, 5 s later",
        &stores,
        &writers,
        bound,
        &tally,
    )
    .await;

    // 5. Nodes 2 and 3 back: everything stored is there, and each id writes on.
    let took = script(&["cluster-restart", "2", "3"]).await;
    eprintln!("cluster: nodes 2 and 3 restarted together in {took:.1?}");
    check_replay("all nodes back", &stores, &writers, &tally).await;
    for (k, writer) in writers.iter().enumerate() {
        let id = pid(k);
        let from = writer.lock().unwrap().next;
        // A write of the unavailable rounds may have been applied after all (its outcome was
        // unknown): then the next number is taken, and the one after it is free.
        let mut result = stores.journal.write(batch(&id, from)).await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Conflict) {
            let highest = stores.journal.highest_sequence_nr(&id).await.unwrap();
            eprintln!("cluster: {id}: {from} was taken (highest {highest}): a write of unknown outcome was applied");
            result = stores.journal.write(batch(&id, highest + 1)).await;
        }
        match result {
            Ok(()) => tally.lock().unwrap().acknowledged += 1,
            Err(e) => tally
                .lock()
                .unwrap()
                .problems
                .push(format!("{id}: the write after the restart failed: {e}")),
        }
    }

    let tally = tally.lock().unwrap();
    eprintln!(
        "cluster: writes acknowledged {}, failed retryably {} (settled: {} stored by the retry, {} found applied), lost {}, partial {}; whole test {:.1?}",
        tally.acknowledged,
        tally.failed_retryably,
        tally.settled_by_retry,
        tally.settled_applied,
        tally.lost,
        tally.partial,
        test_started.elapsed()
    );
    assert!(
        tally.problems.is_empty(),
        "the cluster test found problems:\n{}",
        tally.problems.join("\n")
    );
    assert_eq!((tally.lost, tally.partial), (0, 0));
}

/// Eight hex digits from the clock and the process id (a namespace per run).
fn uuid_ish() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:08x}",
        (nanos ^ (u64::from(std::process::id()) << 20)) as u32
    )
}
