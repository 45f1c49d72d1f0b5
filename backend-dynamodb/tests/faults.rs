//! DynamoDB goes away mid-write: the driver talks to DynamoDB Local through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole request (request partly sent, fully sent
//! but unanswered, answered). After every cut the caller must hold a retryable error
//! (`Unavailable`/`Timeout`), and a second store talking to DynamoDB directly must see the
//! atomic write wholly or not at all: in replay, in `highest_sequence_nr` and in
//! events-by-tag. Then the proxy is restored and the journal must work again: a retry of the
//! same write succeeds (nothing was stored) or gets `Conflict` (it was), and the next write
//! succeeds. The sweep is [`persistence_tck::sweep::run`], the same for every backend; this
//! file sets up DynamoDB and says where it differs ([`SweepTarget`]).
//!
//! `source .servers/dynamodb/env && cargo test -p persistence-dynamodb --test faults`

use std::time::Duration;

use persistence_api::{async_trait, PersistenceId, Stores};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::sweep::{run, server_env, unique, CutWrite, Shape, SweepTarget};

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
        // A cut large write leaves its first transactions behind, unfinished; a reader
        // treats an unfinished write younger than this as still in flight and waits for
        // it. The default 30 s held the judge 30 s at each such cut (60 of the 94 cuts of
        // the large shape: 32 minutes). Nothing writes concurrently here, so a write
        // unfinished after 2 s is one the cut abandoned.
        large_write_timeout: Duration::from_millis(2_000),
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

    async fn settle(&self, cut: &CutWrite<'_>) {
        if cut.result.is_err() && cut.n >= cut.size {
            // The whole request reached the server and only the answer was lost: the
            // server may still be applying it. Let it finish before judging.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// How many event items the id's partition physically holds (visible or not), read raw.
    async fn stored_events(&self, pid: &PersistenceId) -> Option<usize> {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .raw
                .query()
                .table_name(JOURNAL_TABLE)
                .key_condition_expression("pk = :pk AND sk > :meta")
                .expression_attribute_values(
                    ":pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(format!(
                        "{}|e|{pid}",
                        self.namespace
                    )),
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
                None => return Some(count),
            }
        }
    }

    /// A write larger than one transaction: the cuts must hit the later transactions and
    /// leave the first ones' events behind (invisible, removed by the retry).
    fn leftovers_required(&self, shape: Shape) -> bool {
        shape.events > 50
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
async fn transact_write_of_100_items_cut_at_every_point() {
    sweep(TX100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_larger_than_one_transaction_cut_at_every_point() {
    sweep(LARGE).await;
}
