//! Cassandra goes away mid-write: the driver's session talks to the node through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole write (the guarded LWT batch of the events,
//! then the tag rows and their progress). After every cut the caller must hold a retryable
//! error (`Unavailable`/`Timeout`), and a second session talking to the node directly must
//! see the atomic write wholly or not at all: in replay, in `highest_sequence_nr` and in
//! events-by-tag (read after a replay: a replay is one place where this backend writes the tag
//! rows a failed write left out, see `journal.rs`). Then the proxy is restored and the journal
//! must work again: a retry of the same write succeeds (nothing was stored) or gets `Conflict`
//! (it was). In every other case the retry comes before any replay, and must itself leave
//! every event of the write under the tag (the journal's next write of an id after a failed
//! one repairs its tag rows). Finally the same journal's next tagged write, with no recovery
//! replay of its own, must show up in events-by-tag too.
//!
//! The driver learns node addresses from `system.local`/`system.peers`; for the local node
//! it keeps the port it connected to, so with a single node on 127.0.0.1 every connection
//! goes through the proxy (checked below). A multi-node cluster, or a node whose
//! `rpc_address` is not the proxy's IP, would bypass the proxy: that needs an address
//! translator hook in the backend's configuration.
//!
//! `source .servers/cassandra/env && cargo test -p persistence-cassandra --test faults`

use persistence_api::ReadJournalExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{AtomicWrite, ErrorKind, JournalExt, PersistenceId, Stores};
use persistence_cassandra::{Cassandra, CassandraConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::sweep::{
    batch, expected, pid_of, seen, server_env, tag_of, tagged, unique, Seen, Shape,
};

/// One untagged event: one guarded (LWT) batch.
const SINGLE: Shape = Shape {
    name: "single",
    events: 1,
    tagged: false,
    points: 30,
};

/// 100 tagged events: one guarded batch, then the tag rows and the tag progress.
const BATCH100: Shape = Shape {
    name: "batch100",
    events: 100,
    tagged: true,
    points: 30,
};

/// How long the driver may take to reconnect once the proxy is restored.
const RECOVERY: Duration = Duration::from_secs(15);

struct Env {
    proxy: FaultProxy,
    /// Through the proxy.
    via: Stores,
    /// Straight to the node, same keyspace and namespace: the judge.
    direct: Stores,
    /// The same, for the clean-up at the end.
    direct_backend: Cassandra,
}

async fn env(shape: &str) -> Option<Env> {
    let contact_points = server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?;
    let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok();
    let target = contact_points
        .split(',')
        .next()
        .expect("a contact point")
        .trim()
        .to_owned();
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let namespace = format!("faults_{shape}_{}", unique() % 1_000_000_000_000);
    let direct_config = CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter: dc,
        keyspace: "persistence_tck".into(),
        create_schema: true,
        eventual_consistency_delay: Duration::from_millis(50),
        poll_interval: Duration::from_millis(100),
        gap_timeout: Duration::from_secs(1),
        ..CassandraConfig::default()
    };
    let direct = Cassandra::open(direct_config.clone())
        .await
        .expect("connect directly")
        .with_namespace(&namespace)
        .expect("namespace");
    let via_config = CassandraConfig {
        contact_points: vec![proxy.addr().to_string()],
        create_schema: false,
        request_timeout: Duration::from_secs(2),
        ..direct_config
    };
    let via = Cassandra::open(via_config)
        .await
        .expect("connect through the proxy")
        .with_namespace(&namespace)
        .expect("namespace");
    // Every node the session knows must be the proxy: otherwise the driver would bypass it.
    let state = via.session().get_cluster_state();
    let nodes = state.get_nodes_info();
    assert!(!nodes.is_empty());
    for node in nodes {
        assert_eq!(
            (node.address.ip(), node.address.port()),
            (proxy.addr().ip(), proxy.addr().port()),
            "the driver talks to {} directly, bypassing the proxy",
            node.address
        );
    }
    Some(Env {
        proxy,
        via: via.stores(),
        direct: direct.stores(),
        direct_backend: direct,
    })
}

/// How many writes after a restore got a retryable error first.
static RETRIED: AtomicU64 = AtomicU64::new(0);

/// The longest a write took to get a non-retryable answer once the proxy was restored.
static SLOWEST_RECOVERY_MS: AtomicU64 = AtomicU64::new(0);

/// Writes until the answer is not retryable (the driver reconnects after a cut with a
/// backoff), for at most [`RECOVERY`].
async fn write_settled(stores: &Stores, write: AtomicWrite) -> persistence_api::Result<()> {
    let started = Instant::now();
    let deadline = started + RECOVERY;
    let result = loop {
        match stores.journal.write(write.clone()).await {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                RETRIED.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    SLOWEST_RECOVERY_MS.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    result
}

/// The calibration cases: as long as the other case names (`c000`...), so their requests
/// have the same size as the others'.
const CALIBRATE: [&str; 2] = ["k000", "k001"];

/// Writes event 1, then the cut write (events `2..=1+shape.events`) with the proxy set to
/// cut after `cut` bytes (`None`: no cut). Returns the write's result and the bytes it sent.
async fn cut_write(
    env: &Env,
    shape: Shape,
    case: &str,
    cut: Option<u64>,
) -> (persistence_api::Result<()>, u64) {
    let pid = pid_of(shape, case);
    let tag = tag_of(case);
    let tag = shape.tagged.then_some(tag.as_str());
    // Through the proxy too: the id is then known to the session's journal and its tag
    // numbers loaded, so the cut write sends the same requests every time.
    write_settled(&env.via, batch(&pid, 1, 1, tag))
        .await
        .unwrap_or_else(|e| panic!("{case}: the write of event 1 failed: {e:?}"));
    let before = env.proxy.forwarded();
    if let Some(n) = cut {
        env.proxy.cut_after(n);
    }
    let result = env
        .via
        .journal
        .write(batch(&pid, 2, shape.events, tag))
        .await;
    let sent = env.proxy.forwarded() - before;
    if cut.is_some_and(|n| sent >= n) {
        // The connection was cut: what reached the node may still be being applied (an
        // LWT whose answer was lost). Let it finish before judging.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.proxy.restore();
    (result, sent)
}

async fn run(shape: Shape) {
    let Some(env) = env(shape.name).await else {
        return;
    };
    let last = 1 + shape.events;

    // Calibrate: the same write uncut, to learn its size in bytes (twice: the first also
    // prepares what a first write of this shape prepares).
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
        size > 0,
        "the proxy forwarded nothing: is traffic bypassing it?"
    );

    let step = (size / shape.points).max(1);
    let mut cuts: Vec<u64> = (0..shape.points).map(|i| i * step).collect();
    // Around the end: the last byte missing, everything sent but no answer, and past it.
    cuts.extend([size - 1, size, size + 1, size + 1000]);
    cuts.sort_unstable();
    cuts.dedup();

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for &n in &cuts {
        outcomes.push((n, case(&env, shape, size, outcomes.len(), n).await));
    }
    // The byte at which the write first counts as stored is where the guarded batch has
    // wholly reached the node: bisect to it, so that "the events' batch sent, its answer
    // lost" is cut exactly (the sweep only samples near it).
    let mut stored_from = None;
    for pair in outcomes.windows(2) {
        let ((a, oa), (b, ob)) = (pair[0], pair[1]);
        if oa == Outcome::Failed && ob != Outcome::Failed {
            stored_from = Some((a, b));
            break;
        }
    }
    if let Some((mut lo, mut hi)) = stored_from {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let outcome = case(&env, shape, size, outcomes.len(), mid).await;
            outcomes.push((mid, outcome));
            if outcome == Outcome::Failed {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        eprintln!(
            "{}: the events' batch is stored from a cut after {hi} bytes on",
            shape.name
        );
    }
    let count = |o: Outcome| outcomes.iter().filter(|(_, x)| *x == o).count();
    eprintln!(
        "{}: {} cut points over {size} bytes (step {step}) in {:?}: {} failed and not stored, \
         {} failed but stored ({} of them with their tag rows left to the next write or replay of the id), {} succeeded; \
         writes after a restore retried {} times, the slowest took {} ms",
        shape.name,
        outcomes.len(),
        started.elapsed(),
        count(Outcome::Failed),
        count(Outcome::StoredAnyway) + count(Outcome::StoredTagsLagging),
        count(Outcome::StoredTagsLagging),
        count(Outcome::Ok),
        RETRIED.load(Ordering::Relaxed),
        SLOWEST_RECOVERY_MS.load(Ordering::Relaxed),
    );
    assert!(
        count(Outcome::Failed) > 0,
        "no cut hit the write: the proxy is not in the path"
    );
    // Remove what this test stored (its namespace's ids), with the driver's clean-up.
    let ids: Vec<PersistenceId> = env
        .direct
        .read_journal
        .current_persistence_ids()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<persistence_api::Result<_>>()
        .expect("persistence ids");
    env.direct_backend
        .cleanup(&ids, false)
        .await
        .expect("clean up");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// An error, and nothing of the write stored.
    Failed,
    /// An error, but the write was stored whole.
    StoredAnyway,
    /// As `StoredAnyway`, and the tag rows showed only after a replay wrote them.
    StoredTagsLagging,
    /// Success.
    Ok,
}

/// One cut point: event 1, the write cut after `n` bytes, the judgement, the retry and the
/// next write.
async fn case(env: &Env, shape: Shape, size: u64, i: usize, n: u64) -> Outcome {
    let last = 1 + shape.events;
    let case = format!("c{i:03}");
    let pid = pid_of(shape, &case);
    let tag = tag_of(&case);
    let (result, _) = cut_write(env, shape, &case, Some(n)).await;
    if let Err(e) = &result {
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) && e.is_retryable(),
            "{} cut after {n} of {size} bytes: the error must be retryable Unavailable/Timeout, got {e:?}",
            shape.name
        );
    }
    let before = expected(&pid, 1, shape, &tag);
    let after = expected(&pid, last, shape, &tag);
    // The tag rows as they are before anything replays the id (informational: a replay
    // writes what a failed write left out, and so does the journal's next write of the id).
    let tags_first = tagged(&env.direct, &pid, &tag).await;
    // Even cases judge the cut write first, with a replay by the other store (which writes
    // the tag rows the write left out), then retry. Odd cases retry before anything replays
    // the id: the retry (the same journal's next write of the id) must write them itself.
    let retry_first = i % 2 == 1;
    let judge = |now: &Seen| {
        if *now == after {
            true
        } else if *now == before {
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
            )
        }
    };
    let applied = if retry_first {
        // `highest_sequence_nr` reads the partitions only: it writes no tag rows.
        match env
            .direct
            .journal
            .highest_sequence_nr(&pid)
            .await
            .expect("highest")
        {
            1 => false,
            h if h == last => true,
            h => panic!(
                "{} cut after {n} of {size} bytes ({result:?}): highest {h}, expected 1 or {last}",
                shape.name
            ),
        }
    } else {
        judge(&seen(&env.direct, &pid, &tag).await)
    };
    assert!(
        result.is_err() || applied,
        "{} cut after {n} of {size} bytes: Ok but not stored",
        shape.name
    );
    let outcome = match (&result, applied) {
        (Ok(()), _) => Outcome::Ok,
        (Err(_), true) if tags_first != after.tagged => Outcome::StoredTagsLagging,
        (Err(_), true) => Outcome::StoredAnyway,
        (Err(_), false) => Outcome::Failed,
    };

    // The node is back (once the driver has reconnected): a retry of the same write is
    // Ok (it was not stored) or Conflict (it was), never a duplicate or a partial write.
    let retry = write_settled(
        &env.via,
        batch(&pid, 2, shape.events, shape.tagged.then_some(&tag)),
    )
    .await;
    match (&retry, applied) {
        (Ok(()), false) => {}
        (Err(e), true) if e.kind() == ErrorKind::Conflict => {}
        _ => panic!(
            "{} cut after {n} of {size} bytes (stored: {applied}): the retry after restore answered {retry:?}",
            shape.name
        ),
    }
    if retry_first {
        // Past the readers' eventual-consistency delay, and still nothing has replayed the
        // id: the retry (Ok or Conflict) left every event of the write under the tag.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            tagged(&env.direct, &pid, &tag).await,
            after.tagged,
            "{} cut after {n} of {size} bytes ({outcome:?}): under the tag after the retry, before any replay",
            shape.name
        );
    }
    assert_eq!(
        seen(&env.direct, &pid, &tag).await,
        after,
        "{} cut after {n} of {size} bytes: after the retry",
        shape.name
    );
    // And the next write (the same journal, no recovery replay of its own, after the
    // failed write, its retry and the other store's replay) goes on at the right sequence
    // number, tag numbering included: its tag row must not reuse a number, or events-by-tag
    // would skip it as already delivered.
    write_settled(
        &env.via,
        batch(&pid, last + 1, 1, shape.tagged.then_some(&tag)),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{} cut after {n} of {size} bytes: the next write failed: {e:?}",
            shape.name
        )
    });
    assert_eq!(
        seen(&env.direct, &pid, &tag).await,
        expected(&pid, last + 1, shape, &tag),
        "{} cut after {n} of {size} bytes ({outcome:?}): after the next write",
        shape.name
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_guarded_write_cut_at_every_point() {
    run(SINGLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_write_of_100_tagged_events_cut_at_every_point() {
    run(BATCH100).await;
}
