//! The DynamoDB durable-state store's own cases, against DynamoDB Local (the generic
//! durable-state cases are the kit's): the requests each call sends, conflicts answered
//! from the refusal itself (ALL_OLD, no read), damaged items, retries of attempts that were
//! applied, and change queries under writers whose transactions are held in flight past
//! the gap timeout.
//!
//! An interceptor counts every attempt by operation (`X-Amz-Target`); a wrapping HTTP
//! client can answer chosen operations with a 500 after the server applied them, or hold
//! every n-th request of an operation before sending it.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{error_body, operation, response};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use futures::StreamExt;
use persistence_api::{
    DurableStateChange, ErrorKind, Offset, Payload, PersistenceId, QueryMode, Stores,
};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig, MAX_STATE_SIZE, PK, SK};

#[derive(Default, Debug)]
struct State {
    /// Attempts per operation, counted by the interceptor.
    attempts: HashMap<String, usize>,
    /// Operations answered with a 500 after the server applied them, and how many times.
    fail_after_apply: HashMap<String, usize>,
    /// Every `n`th attempt of an operation is held `ms` before it is sent: (n, ms, seen).
    delays: HashMap<String, (usize, u64, usize)>,
}

#[derive(Clone, Default, Debug)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn reset(&self) {
        let mut s = self.0.lock().unwrap();
        s.attempts.clear();
        s.fail_after_apply.clear();
        s.delays.clear();
    }
    fn attempts(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().attempts.clone()
    }
    fn count(&self, op: &str) -> usize {
        self.attempts().get(op).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.attempts().values().sum()
    }
    fn fail_after_apply(&self, op: &str, times: usize) {
        self.0
            .lock()
            .unwrap()
            .fail_after_apply
            .insert(op.into(), times);
    }
    fn delay_every(&self, op: &str, n: usize, ms: u64) {
        self.0.lock().unwrap().delays.insert(op.into(), (n, ms, 0));
    }
    fn delay(&self, op: &str) -> Option<u64> {
        let mut s = self.0.lock().unwrap();
        let (n, ms, seen) = s.delays.get_mut(op)?;
        *seen += 1;
        (*seen % *n == 0).then_some(*ms)
    }
    fn take_fault(&self, op: &str) -> bool {
        let mut s = self.0.lock().unwrap();
        match s.fail_after_apply.get_mut(op) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Counter(Shared);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request-counter"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = operation(context.request().headers());
        *self.0 .0.lock().unwrap().attempts.entry(op).or_default() += 1;
        Ok(())
    }
}

#[derive(Debug)]
struct Faulty {
    inner: SharedHttpConnector,
    shared: Shared,
}

impl HttpConnector for Faulty {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let op = operation(request.headers());
        if let Some(ms) = self.shared.delay(&op) {
            let inner = self.inner.clone();
            return HttpConnectorFuture::new(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                inner.call(request).await
            });
        }
        if !self.shared.take_fault(&op) {
            return self.inner.call(request);
        }
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            let _applied = inner.call(request).await?;
            Ok(response(500, error_body("InternalServerError", "")))
        })
    }
}

struct Env {
    stores: Stores,
    shared: Shared,
    db: DynamoDb,
    namespace: String,
}

impl Env {
    /// The key of the state item of `id`, as the README's table layout names it.
    fn state_key(&self, id: &PersistenceId) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (
                PK.to_owned(),
                AttributeValue::S(format!("{}|d|{}", self.namespace, id.as_str())),
            ),
            (SK.to_owned(), AttributeValue::S("#".into())),
        ])
    }

    /// Applies `update` (with `:v` = `value` when given) to the item `key` with the raw
    /// client.
    async fn damage(
        &self,
        key: HashMap<String, AttributeValue>,
        update: &str,
        value: Option<AttributeValue>,
    ) {
        self.db
            .client()
            .update_item()
            .table_name(&self.db.config().journal_table)
            .set_key(Some(key))
            .update_expression(update)
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_values(value.map(|v| HashMap::from([(":v".to_owned(), v)])))
            .send()
            .await
            .unwrap();
    }

    fn pid(&self, name: &str) -> PersistenceId {
        PersistenceId::new(name).unwrap()
    }

    fn tag(&self, name: &str) -> String {
        format!("{name}-{}", self.namespace)
    }

    async fn changes(&self, tag: &str, offset: Offset) -> Vec<DurableStateChange> {
        self.stores
            .durable_state
            .query_changes(tag.to_owned(), offset, QueryMode::Current)
            .map(|r| r.unwrap())
            .collect()
            .await
    }
}

async fn env_with(gap_timeout_ms: u64) -> Option<Env> {
    let endpoint = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT")?;
    let namespace = format!("s{}", uuid::Uuid::new_v4().simple());
    let config = DynamoDbConfig {
        journal_table: "state_journal".into(),
        snapshot_table: "state_snapshot".into(),
        namespace: namespace.clone(),
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        poll_interval: Duration::from_millis(50),
        tag_gap_timeout: Duration::from_millis(gap_timeout_ms),
        ..DynamoDbConfig::local(endpoint)
    };
    let shared = Shared::default();
    let base = persistence_dynamodb::http_client(&config).unwrap();
    let faults = shared.clone();
    let http = http_client_fn(move |settings, components| {
        SharedHttpConnector::new(Faulty {
            inner: aws_smithy_runtime_api::client::http::HttpClient::http_connector(
                &base, settings, components,
            ),
            shared: faults.clone(),
        })
    });
    let sdk = persistence_dynamodb::sdk_config(&config)
        .await
        .unwrap()
        .http_client(http)
        .interceptor(Counter(shared.clone()))
        .build();
    let db = DynamoDb::with_client(aws_sdk_dynamodb::Client::from_conf(sdk), config).unwrap();
    db.create_schema().await.unwrap();
    shared.reset();
    Some(Env {
        stores: db.stores(),
        shared,
        db,
        namespace,
    })
}

async fn env() -> Option<Env> {
    env_with(5000).await
}

fn state(text: &str) -> Payload {
    Payload::new("s", "m", text.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_sends_the_requests_the_readme_counts() {
    let Some(e) = env().await else { return };
    let caps = e.stores.capabilities();
    assert!(caps.durable_state && caps.durable_state_changes);
    assert_eq!(caps.max_state_size, Some(MAX_STATE_SIZE));
    let store = &e.stores.durable_state;
    let (plain, tagged) = (e.pid("plain"), e.pid("tagged"));
    let tag = e.tag("counts");

    assert_eq!(store.get(&plain).await.unwrap(), None);
    assert_eq!((e.shared.count("GetItem"), e.shared.total()), (1, 1));

    // Untagged: one conditional PutItem.
    e.shared.reset();
    store.upsert(&plain, 1, state("a"), None).await.unwrap();
    store.upsert(&plain, 2, state("b"), None).await.unwrap();
    assert_eq!(e.shared.count("PutItem"), 2);
    assert_eq!(e.shared.total(), 2, "{:?}", e.shared.attempts());

    // Tagged: the counter's UpdateItem, then one TransactWriteItems.
    e.shared.reset();
    store
        .upsert(&tagged, 1, state("t1"), Some(tag.clone()))
        .await
        .unwrap();
    assert_eq!(e.shared.count("UpdateItem"), 1);
    assert_eq!(e.shared.count("TransactWriteItems"), 1);
    assert_eq!(e.shared.total(), 2, "{:?}", e.shared.attempts());

    // A delete reads first (the tag to keep), then writes as an upsert does.
    e.shared.reset();
    store.delete(&plain, 3).await.unwrap();
    assert_eq!(
        (e.shared.count("GetItem"), e.shared.count("PutItem")),
        (1, 1)
    );
    assert_eq!(e.shared.total(), 2, "{:?}", e.shared.attempts());
    e.shared.reset();
    store.delete(&tagged, 2).await.unwrap();
    assert_eq!(e.shared.count("GetItem"), 1);
    assert_eq!(e.shared.count("UpdateItem"), 1);
    assert_eq!(e.shared.count("TransactWriteItems"), 1);
    assert_eq!(e.shared.total(), 3, "{:?}", e.shared.attempts());
    // A delete at the wrong revision is refused after the read, without a write.
    e.shared.reset();
    let err = store.delete(&tagged, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    assert_eq!((e.shared.count("GetItem"), e.shared.total()), (1, 1));

    // A current change query: the shards' counters, a Query per shard with entries, one
    // BatchGetItem per 100 ids.
    let ids: Vec<_> = (0..150).map(|i| e.pid(&format!("q{i}"))).collect();
    for id in &ids {
        store
            .upsert(id, 1, state("q"), Some(tag.clone()))
            .await
            .unwrap();
    }
    e.shared.reset();
    let changes = e.changes(&tag, Offset::NoOffset).await;
    assert_eq!(changes.len(), 151, "150 ids and the deleted one");
    let shards = e.db.config().tag_shards as usize;
    assert_eq!(e.shared.count("GetItem"), shards);
    assert!(
        e.shared.count("Query") <= shards,
        "{:?}",
        e.shared.attempts()
    );
    assert_eq!(
        e.shared.count("BatchGetItem"),
        2,
        "{:?}",
        e.shared.attempts()
    );
    assert_eq!(
        e.shared.total(),
        shards + e.shared.count("Query") + 2,
        "{:?}",
        e.shared.attempts()
    );

    // Over the size limit: refused before any request.
    e.shared.reset();
    let big = Payload::new("s", "m", vec![1u8; MAX_STATE_SIZE - 1]);
    let err = store.upsert(&e.pid("big"), 1, big, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:#}");
    assert_eq!(e.shared.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_names_the_stored_revision_from_the_refusal_without_a_read() {
    let Some(e) = env().await else { return };
    let store = &e.stores.durable_state;
    let (plain, tagged) = (e.pid("plain"), e.pid("tagged"));
    let tag = e.tag("conflicts");
    for r in 1..=3 {
        store.upsert(&plain, r, state("p"), None).await.unwrap();
        store
            .upsert(&tagged, r, state("t"), Some(tag.clone()))
            .await
            .unwrap();
    }
    for given in [1, 3, 7] {
        e.shared.reset();
        let err = store
            .upsert(&plain, given, state("x"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
        let text = err.to_string();
        assert!(
            text.contains("at revision 3") && text.contains(&format!("got revision {given}")),
            "{text}"
        );
        assert_eq!(e.shared.count("PutItem"), 1);
        assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

        // Tagged: the number taken, the refused transaction, the number given back (a
        // tombstone, so readers need not wait for it); still no read.
        e.shared.reset();
        let err = store
            .upsert(&tagged, given, state("x"), Some(tag.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
        assert!(err.to_string().contains("at revision 3"), "{err}");
        assert_eq!(e.shared.count("GetItem"), 0, "{:?}", e.shared.attempts());
        assert_eq!(e.shared.count("UpdateItem"), 1);
        assert_eq!(e.shared.count("TransactWriteItems"), 1);
        assert_eq!(e.shared.count("PutItem"), 1, "the give-back");
        assert_eq!(e.shared.total(), 3, "{:?}", e.shared.attempts());
    }
    // The given-back numbers hold no reader up: a current query ends at once.
    let started = Instant::now();
    let changes = e.changes(&tag, Offset::NoOffset).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].revision, 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_item_is_corrupt_naming_the_id_and_the_attribute() {
    let Some(e) = env().await else { return };
    let store = &e.stores.durable_state;
    let damages: [(&str, &str, Option<AttributeValue>); 5] = [
        ("rv", "SET rv = :v", Some(AttributeValue::S("three".into()))),
        ("rv", "REMOVE rv", None),
        ("ts", "REMOVE ts", None),
        ("p", "REMOVE p", None),
        ("sg", "SET sg = :v", Some(AttributeValue::N("1".into()))),
    ];
    for (i, (attribute, update, value)) in damages.into_iter().enumerate() {
        let id = e.pid(&format!("damaged-{i}"));
        let tag = e.tag(&format!("corrupt{i}"));
        store
            .upsert(&id, 1, state("ok"), Some(tag.clone()))
            .await
            .unwrap();
        e.damage(e.state_key(&id), update, value).await;
        let err = store.get(&id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{update}: {err:#}");
        assert_eq!(err.persistence_id(), Some(id.as_str()), "{err:#}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("attribute {attribute}")) && text.contains(id.as_str()),
            "{update}: {text}"
        );
        // The change query meets it too, and says the same.
        let err = e
            .stores
            .durable_state
            .query_changes(tag.clone(), Offset::NoOffset, QueryMode::Current)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .find_map(|r| r.err())
            .expect("the change query fails on the damaged state");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_whose_first_attempt_was_applied_succeeds_once() {
    let Some(e) = env().await else { return };
    let store = &e.stores.durable_state;
    let tag = e.tag("retried");
    let (plain, tagged) = (e.pid("plain"), e.pid("tagged"));

    // The PutItem is applied, its answer is a 500; the retry is refused by its own write,
    // which it recognizes from the old item.
    e.shared.fail_after_apply("PutItem", 1);
    store.upsert(&plain, 1, state("one"), None).await.unwrap();
    assert_eq!(e.shared.count("PutItem"), 2);
    let got = store.get(&plain).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (1, Some(state("one"))));

    // The transaction is applied, its answer is a 500; the retry carries the same token.
    e.shared.reset();
    e.shared.fail_after_apply("TransactWriteItems", 1);
    store
        .upsert(&tagged, 1, state("t"), Some(tag.clone()))
        .await
        .unwrap();
    assert_eq!(e.shared.count("TransactWriteItems"), 2);
    let changes = e.changes(&tag, Offset::NoOffset).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].revision, 1);
    // Another writer at the same revision is still refused.
    let err = store
        .upsert(&plain, 1, state("two"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_skipped_while_transactions_are_held_past_the_gap_timeout() {
    let Some(e) = env_with(300).await else { return };
    let tag = e.tag("held");
    let store = e.stores.durable_state.clone();
    let mut live = store.query_changes(tag.clone(), Offset::NoOffset, QueryMode::Live);
    // Every fifth transaction waits 1 s (three gap timeouts) before it is sent: readers
    // fill its number, it fails whole and takes a new one.
    e.shared.delay_every("TransactWriteItems", 5, 1000);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, tag) = (store.clone(), tag.clone());
            let id = e.pid(&format!("w{w}"));
            tokio::spawn(async move {
                for revision in 1..=5u64 {
                    store
                        .upsert(
                            &id,
                            revision,
                            state(&format!("{revision}")),
                            Some(tag.clone()),
                        )
                        .await
                        .unwrap_or_else(|err| panic!("{id} at {revision}: {err:#}"));
                }
            })
        })
        .collect();
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_offset = Offset::NoOffset;
    while latest.len() < 16 || latest.values().any(|&r| r < 5) {
        assert!(
            Instant::now() < deadline,
            "live query stalled at {latest:?}"
        );
        let Ok(Some(change)) = tokio::time::timeout(Duration::from_secs(1), live.next()).await
        else {
            continue;
        };
        let change = change.unwrap();
        let seen = latest.entry(change.persistence_id.to_string()).or_default();
        assert!(change.revision > *seen, "{change:?} after {seen}");
        *seen = change.revision;
        last_offset = change.offset;
    }
    for w in writers {
        w.await.unwrap();
    }
    // Readers did fill numbers under held writes (else the test proved nothing).
    assert!(
        e.shared.count("TransactWriteItems") > 80,
        "{:?}",
        e.shared.attempts()
    );
    // A current query sees each id once at revision 5; resuming after the live query's
    // last offset gives nothing new.
    let all = e.changes(&tag, Offset::NoOffset).await;
    assert_eq!(all.len(), 16);
    assert!(all.iter().all(|c| c.revision == 5), "{all:?}");
    assert!(e.changes(&tag, last_offset).await.is_empty());
}
