//! DynamoDB goes away mid-write: the driver talks to DynamoDB Local through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole request (request partly sent, fully sent
//! but unanswered, answered). After every cut the caller must hold a retryable error
//! (`Unavailable`/`Timeout`), and a second store talking to DynamoDB directly must see the
//! atomic write wholly or not at all: in replay, in `highest_sequence_nr` and in
//! events-by-tag. Then the proxy is restored and the journal must work again: a retry of the
//! same write succeeds (nothing was stored) or gets `Conflict` (it was), and the next write
//! succeeds.
//!
//! `source .servers/dynamodb/env && cargo test -p persistence-dynamodb --test faults`

use std::time::Duration;

use persistence_api::{AtomicWrite, ErrorKind, JournalExt, PersistenceId, Stores};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::sweep::{batch, expected, pid_of, seen, server_env, tag_of, unique, Shape};

const JOURNAL_TABLE: &str = "faults_journal";
const SNAPSHOT_TABLE: &str = "faults_snapshot";

/// One event, no tag: one conditional `PutItem`.
const SINGLE: Shape = Shape {
    name: "single",
    events: 1,
    tagged: false,
    points: 30,
};

/// 50 tagged events of a known id in a known tag bucket: 50 events + 50 tag entries = 100
/// items, one `TransactWriteItems`.
const TX100: Shape = Shape {
    name: "tx100",
    events: 50,
    tagged: true,
    points: 30,
};

/// 150 tagged events: 300 items, more than one transaction holds, so the driver marks every
/// item with the write's range and sends several transactions (100 items, then 99 plus the
/// check that the write was not fenced off).
///
/// Cuts are swept over all of them: a cut after the first transaction was applied leaves
/// its events behind while the server is away (the driver's clean-up cannot reach it
/// either). They must stay invisible everywhere, `highest_sequence_nr` included, and the
/// retry (or the next write at sequence number 2) must remove them and succeed.
const LARGE: Shape = Shape {
    name: "large",
    events: 150,
    tagged: true,
    points: 90,
};

struct Env {
    proxy: FaultProxy,
    /// Through the proxy, with few, fast retries.
    via: Stores,
    /// Straight to DynamoDB, same journal name: the judge.
    direct: Stores,
    /// The raw client and journal name, to count the items a cut left in an id's partition.
    raw: aws_sdk_dynamodb::Client,
    namespace: String,
}

async fn env(shape: &str) -> Option<Env> {
    let endpoint = server_env("PERSISTENCE_DYNAMODB_ENDPOINT")?;
    let target = endpoint
        .trim_end_matches('/')
        .rsplit("://")
        .next()
        .expect("endpoint host:port")
        .to_owned();
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let namespace = format!("faults_{shape}_{}", unique() % 1_000_000_000_000);
    let direct_config = DynamoDbConfig {
        journal_table: JOURNAL_TABLE.into(),
        snapshot_table: SNAPSHOT_TABLE.into(),
        namespace: namespace.clone(),
        // A cut write took tag numbers it never wrote (the server was away, so it could not
        // give them back); the judge's tag query fills them after this long. The default
        // 5 s made the sweep wait 5 s at nearly every cut point (about 10 of its minutes).
        tag_gap_timeout: Duration::from_millis(500),
        ..DynamoDbConfig::local(endpoint)
    };
    let direct = DynamoDb::open(direct_config.clone())
        .await
        .expect("direct client");
    direct.create_schema().await.expect("create the tables");
    let via_config = DynamoDbConfig {
        endpoint: Some(format!("http://{}", proxy.addr())),
        max_retries: 2,
        retry_base_delay: std::time::Duration::from_millis(5),
        retry_max_delay: std::time::Duration::from_millis(20),
        connect_timeout: std::time::Duration::from_millis(1_000),
        attempt_timeout: std::time::Duration::from_millis(3_000),
        ..direct_config
    };
    let via = DynamoDb::open(via_config).await.expect("proxied client");
    Some(Env {
        proxy,
        via: via.stores(),
        raw: direct.client().clone(),
        direct: direct.stores(),
        namespace,
    })
}

/// A write that must succeed (setup, or after the server is back: the driver's own retries
/// get past a pooled connection the cut left dead).
async fn write_ok(stores: &Stores, write: AtomicWrite) {
    if let Err(e) = stores.journal.write(write.clone()).await {
        panic!("the write of {write:?} failed with the server up: {e:?}");
    }
}

/// How many event items the id's partition physically holds (visible or not), read raw.
async fn stored_events(env: &Env, pid: &PersistenceId) -> usize {
    let mut count = 0;
    let mut start = None;
    loop {
        let out = env
            .raw
            .query()
            .table_name(JOURNAL_TABLE)
            .key_condition_expression("pk = :pk AND sk > :meta")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("{}|e|{pid}", env.namespace)),
            )
            .expression_attribute_values(
                ":meta",
                aws_sdk_dynamodb::types::AttributeValue::S("#".into()),
            )
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("raw query");
        count += out.items().len();
        match out.last_evaluated_key() {
            Some(k) => start = Some(k.clone()),
            None => return count,
        }
    }
}

/// The calibration case: as long as the other case names (`c000`...), so its request has
/// the same size as theirs.
const CALIBRATE: &str = "k000";

/// Writes event 1, then the cut write (events `2..=1+shape.events`) with the proxy set to
/// cut after `cut` bytes (`None`: no cut). Returns the write's result and the bytes the
/// write sent (when not cut).
async fn cut_write(
    env: &Env,
    shape: Shape,
    case: &str,
    cut: Option<u64>,
) -> (persistence_api::Result<()>, u64) {
    let pid = pid_of(shape, case);
    let tag = tag_of(case);
    let tag = shape.tagged.then_some(tag.as_str());
    // Event 1 first: the id and its tag bucket are then known, so the cut write is exactly
    // the shape's items.
    write_ok(&env.via, batch(&pid, 1, 1, tag)).await;
    let before = env.proxy.forwarded();
    if let Some(n) = cut {
        env.proxy.cut_after(n);
    }
    let result = env
        .via
        .journal
        .write(batch(&pid, 2, shape.events, tag))
        .await;
    env.proxy.restore();
    (result, env.proxy.forwarded() - before)
}

async fn run(shape: Shape) {
    let Some(env) = env(shape.name).await else {
        return;
    };
    let last = 1 + shape.events;

    // Calibrate: the same write uncut, to learn its size in bytes.
    let (result, size) = cut_write(&env, shape, CALIBRATE, None).await;
    result.expect("the uncut write succeeds");
    assert!(
        size > 0,
        "the proxy forwarded nothing: is traffic bypassing it?"
    );
    let cal_pid = pid_of(shape, CALIBRATE);
    assert_eq!(
        seen(&env.direct, &cal_pid, &tag_of(CALIBRATE)).await,
        expected(&cal_pid, last, shape, &tag_of(CALIBRATE))
    );

    // Evenly over every request of the write, then around the end: the last byte missing,
    // everything sent but no answer, and past it.
    let step = (size / shape.points).max(1);
    let mut cuts: Vec<u64> = (0..shape.points).map(|i| i * step).collect();
    cuts.extend([size - 1, size, size + 1, size + 1000]);
    cuts.sort_unstable();
    cuts.dedup();

    let started = std::time::Instant::now();
    let (mut failed, mut stored_anyway, mut ok) = (0, 0, 0);
    // Cuts that left invisible parts of the write behind, and the largest such part.
    let (mut with_leftovers, mut most_left) = (0, 0);
    for (i, &n) in cuts.iter().enumerate() {
        let case = format!("c{i:03}");
        let pid = pid_of(shape, &case);
        let tag = tag_of(&case);
        let (result, _) = cut_write(&env, shape, &case, Some(n)).await;
        if let Err(e) = &result {
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
                    && (e.is_retryable() || e.retries_exhausted().is_some()),
                "{} cut after {n} of {size} bytes: the error must be a transient Unavailable/Timeout (retryable, or its retries exhausted), got {e:?}",
                shape.name
            );
        }
        if result.is_err() && n >= size {
            // The whole request reached the server and only the answer was lost: the
            // server may still be applying it. Let it finish before judging.
            tokio::time::sleep(Duration::from_millis(300)).await;
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
        if !applied {
            let left = stored_events(&env, &pid).await - 1;
            if left > 0 {
                with_leftovers += 1;
                most_left = most_left.max(left);
            }
        }
        match (&result, applied) {
            (Ok(()), _) => ok += 1,
            (Err(_), true) => stored_anyway += 1,
            (Err(_), false) => failed += 1,
        }

        // The server is back: a retry of the same write is Ok (it was not stored) or
        // Conflict (it was), never a duplicate or a partial write.
        let retry = env
            .via
            .journal
            .write(batch(&pid, 2, shape.events, shape.tagged.then_some(&tag)))
            .await;
        match (&retry, applied) {
            (Ok(()), false) => {}
            (Err(e), true) if e.kind() == ErrorKind::Conflict => {}
            _ => panic!(
                "{} cut after {n} of {size} bytes (stored: {applied}): the retry answered {retry:?}",
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
        write_ok(
            &env.via,
            batch(&pid, last + 1, 1, shape.tagged.then_some(&tag)),
        )
        .await;
        assert_eq!(
            env.direct.journal.highest_sequence_nr(&pid).await.unwrap(),
            last + 1
        );
    }
    eprintln!(
        "{}: {} cut points over {size} bytes (step {step}) in {:?}: {failed} failed and not stored, \
         {stored_anyway} failed but stored, {ok} succeeded; {with_leftovers} of the failed ones \
         left invisible events behind (up to {most_left}), removed by the retry",
        shape.name,
        cuts.len(),
        started.elapsed()
    );
    if shape.events > 50 {
        assert!(
            with_leftovers > 0,
            "no cut left a part of the large write behind: the sweep misses the later transactions"
        );
    }
    assert!(
        failed > 0,
        "no cut hit the write: the proxy is not in the path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_write_cut_at_every_point() {
    run(SINGLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_write_of_100_items_cut_at_every_point() {
    run(TX100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_larger_than_one_transaction_cut_at_every_point() {
    run(LARGE).await;
}
