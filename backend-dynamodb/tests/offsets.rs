//! The DynamoDB offset store's own cases, against DynamoDB Local (the generic offset
//! conformance cases are the kit's): exactly-once transactions with items in a user table,
//! the transaction limit, a handler item whose condition fails, concurrent commits, a
//! corrupt offset item, retries of attempts that were applied, and the requests each call
//! sends.
//!
//! An interceptor counts every attempt by operation (`X-Amz-Target`), and a wrapping HTTP
//! client can answer chosen operations with a 500 after the server applied them.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::{error_body, operation, response};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TransactWriteItem,
};
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use persistence_api::{ErrorKind, Offset, ProjectionId, StoredOffset, Stores};
use persistence_dynamodb::{
    aws_sdk_dynamodb, DynamoDb, DynamoDbConfig, DynamoDbTransaction, MAX_TRANSACTION_ITEMS, PK, SK,
};

/// The table the handlers of these tests write their effects to.
const USER_TABLE: &str = "offsets_user";

#[derive(Default, Debug)]
struct State {
    /// Attempts per operation, counted by the interceptor.
    attempts: HashMap<String, usize>,
    /// Operations answered with a 500 after the server applied them, and how many times.
    fail_after_apply: HashMap<String, usize>,
}

#[derive(Clone, Default, Debug)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn reset(&self) {
        let mut s = self.0.lock().unwrap();
        s.attempts.clear();
        s.fail_after_apply.clear();
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
        if !self.shared.take_fault(&operation(request.headers())) {
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
    fn client(&self) -> &aws_sdk_dynamodb::Client {
        self.db.client()
    }

    /// The key of the offset item of `id`, as the README's table layout names it.
    fn offset_key(&self, id: &ProjectionId) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (
                PK.to_owned(),
                AttributeValue::S(format!("{}|o|{}", self.namespace, id.name())),
            ),
            (SK.to_owned(), AttributeValue::S(id.key().to_owned())),
        ])
    }

    /// A user-table key unique to this test.
    fn user_key(&self, name: &str) -> String {
        format!("{}|{name}", self.namespace)
    }

    /// A handler's write: puts `name` into the user table, conditioned on its absence when
    /// `only_new`.
    fn user_put(&self, name: &str, only_new: bool) -> TransactWriteItem {
        let mut put = Put::builder()
            .table_name(USER_TABLE)
            .item("id", AttributeValue::S(self.user_key(name)))
            .item("value", AttributeValue::N("1".into()));
        if only_new {
            put = put.condition_expression("attribute_not_exists(id)");
        }
        TransactWriteItem::builder()
            .put(put.build().unwrap())
            .build()
    }

    async fn user_item_exists(&self, name: &str) -> bool {
        self.client()
            .get_item()
            .table_name(USER_TABLE)
            .key("id", AttributeValue::S(self.user_key(name)))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .is_some()
    }
}

async fn env() -> Option<Env> {
    let endpoint = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT")?;
    let namespace = format!("o{}", uuid::Uuid::new_v4().simple());
    let config = DynamoDbConfig {
        journal_table: "offsets_journal".into(),
        snapshot_table: "offsets_snapshot".into(),
        namespace: namespace.clone(),
        retry_base_delay: std::time::Duration::from_millis(1),
        retry_max_delay: std::time::Duration::from_millis(5),
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
    create_user_table(db.client()).await;
    shared.reset();
    Some(Env {
        stores: db.stores(),
        shared,
        db,
        namespace,
    })
}

/// The handlers' table (`id` S hash key), created once per server.
async fn create_user_table(client: &aws_sdk_dynamodb::Client) {
    let created = client
        .create_table()
        .table_name(USER_TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await;
    if let Err(e) = created {
        let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e);
        assert_eq!(code, Some("ResourceInUseException"), "{e:?}");
    }
}

fn pid(name: &str, key: &str) -> ProjectionId {
    ProjectionId::new(name, key).unwrap()
}

fn stored(offset: Offset, version: u64) -> Option<StoredOffset> {
    Some(StoredOffset { offset, version })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capabilities_are_declared_and_every_call_is_one_request() {
    let Some(e) = env().await else { return };
    let caps = e.stores.capabilities();
    assert!(caps.projection_offsets && caps.exactly_once_projections);
    assert!(e.stores.offsets.supports_transactions());
    let id = pid("counts", "k");

    assert_eq!(e.stores.offsets.read_offset(&id).await.unwrap(), None);
    assert_eq!(e.shared.count("GetItem"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    e.shared.reset();
    let v = e
        .stores
        .offsets
        .commit_offset(&id, 0, Offset::Token("c0,c1".into()))
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(e.shared.count("PutItem"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    // A conflict: the stored version comes back with the refusal, no read after it.
    e.shared.reset();
    let err = e
        .stores
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(9))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("stored version 1"), "{err}");
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    e.shared.reset();
    assert_eq!(
        e.stores
            .offsets
            .set_offset(&id, Offset::Sequence(3))
            .await
            .unwrap(),
        2
    );
    assert_eq!(e.shared.count("UpdateItem"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    // A transaction with one handler item: one TransactWriteItems.
    e.shared.reset();
    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    assert_eq!(tx.backend(), "dynamodb");
    DynamoDbTransaction::of(&mut tx)
        .unwrap()
        .push(e.user_put("counted", false));
    let v = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 2, Offset::Sequence(4))
        .await
        .unwrap();
    assert_eq!(v, 3);
    assert_eq!(e.shared.count("TransactWriteItems"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    // An empty transaction is the offset alone: one PutItem, half the write units.
    e.shared.reset();
    let tx = e.stores.offsets.begin_transaction().await.unwrap();
    let v = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 3, Offset::NoOffset)
        .await
        .unwrap();
    assert_eq!(v, 4);
    assert_eq!(e.shared.count("PutItem"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());

    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::NoOffset, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_writes_are_stored_with_the_offset_or_not_at_all() {
    let Some(e) = env().await else { return };
    let id = pid("balances", "tag-a");

    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    let handler = DynamoDbTransaction::of(&mut tx).unwrap();
    assert!(handler.is_empty());
    handler.push(e.user_put("first", false));
    handler.push(e.user_put("second", false));
    assert_eq!(handler.len(), 2);
    let v = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert!(e.user_item_exists("first").await);
    assert!(e.user_item_exists("second").await);
    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::Sequence(1), 1)
    );

    // Another instance that read version 0: its effects are not stored, nor its offset.
    e.shared.reset();
    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    DynamoDbTransaction::of(&mut tx)
        .unwrap()
        .push(e.user_put("stale", false));
    let err = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("balances/tag-a")
            && text.contains("expected version 0")
            && text.contains("stored version 1"),
        "{text}"
    );
    // The stored version came back with the cancellation: no read after it.
    assert_eq!(e.shared.count("TransactWriteItems"), 1);
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());
    assert!(!e.user_item_exists("stale").await);
    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::Sequence(1), 1)
    );

    // A commit over a version never stored names stored version 0.
    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    DynamoDbTransaction::of(&mut tx)
        .unwrap()
        .push(e.user_put("ahead", false));
    let err = e
        .stores
        .offsets
        .commit_transaction(tx, &pid("balances", "tag-b"), 5, Offset::Sequence(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("stored version 0"), "{err}");
    assert!(!e.user_item_exists("ahead").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_limit_is_rejected_before_any_request() {
    let Some(e) = env().await else { return };
    let id = pid("limit", "k");
    assert_eq!(MAX_TRANSACTION_ITEMS, 99);

    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    let handler = DynamoDbTransaction::of(&mut tx).unwrap();
    for i in 0..100 {
        handler.push(e.user_put(&format!("over-{i}"), false));
    }
    e.shared.reset();
    let err = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("100 items") && text.contains("99") && text.contains("limit/k"),
        "{text}"
    );
    assert_eq!(e.shared.total(), 0, "{:?}", e.shared.attempts());
    assert_eq!(e.stores.offsets.read_offset(&id).await.unwrap(), None);

    // 99 fit: one request, all stored.
    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    let handler = DynamoDbTransaction::of(&mut tx).unwrap();
    for i in 0..99 {
        handler.push(e.user_put(&format!("fit-{i}"), false));
    }
    e.shared.reset();
    e.stores
        .offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    assert_eq!(e.shared.count("TransactWriteItems"), 1);
    assert!(e.user_item_exists("fit-0").await && e.user_item_exists("fit-98").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_item_whose_condition_fails_is_a_conflict_naming_it() {
    let Some(e) = env().await else { return };
    let id = pid("once", "k");
    e.stores
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    // The item the handler's second write insists on creating is there already.
    e.client()
        .put_item()
        .table_name(USER_TABLE)
        .item("id", AttributeValue::S(e.user_key("taken")))
        .send()
        .await
        .unwrap();

    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    let handler = DynamoDbTransaction::of(&mut tx).unwrap();
    handler.push(e.user_put("free", true));
    handler.push(e.user_put("taken", true));
    handler.push(e.user_put("also-free", false));
    e.shared.reset();
    let err = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 1, Offset::Sequence(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("item 1 ") && text.contains("ConditionalCheckFailed"),
        "{text}"
    );
    assert!(
        !text.contains("expected version"),
        "not a version conflict: {text}"
    );
    assert_eq!(e.shared.total(), 1, "{:?}", e.shared.attempts());
    // Nothing of the transaction is stored, and the offset did not move.
    assert!(!e.user_item_exists("free").await);
    assert!(!e.user_item_exists("also-free").await);
    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::Sequence(1), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_commits_over_one_version_one_wins() {
    let Some(e) = env().await else { return };
    for round in 0..5u64 {
        // Plain commits.
        let id = pid("race", &format!("plain-{round}"));
        let (a, b) = tokio::join!(
            e.stores.offsets.commit_offset(&id, 0, Offset::Sequence(1)),
            e.stores.offsets.commit_offset(&id, 0, Offset::Sequence(2)),
        );
        let (won, lost) = match (a, b) {
            (Ok(v), Err(err)) => ((v, 1), err),
            (Err(err), Ok(v)) => ((v, 2), err),
            other => panic!("one commit must win and one lose: {other:?}"),
        };
        assert_eq!(won.0, 1);
        assert_eq!(lost.kind(), ErrorKind::Conflict, "{lost}");
        assert!(lost.to_string().contains("stored version 1"), "{lost}");
        assert_eq!(
            e.stores.offsets.read_offset(&id).await.unwrap(),
            stored(Offset::Sequence(won.1), 1)
        );

        // Transactions, each with its own effect: only the winner's is stored.
        let id = pid("race", &format!("tx-{round}"));
        let mut txs = Vec::new();
        for side in ["left", "right"] {
            let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
            DynamoDbTransaction::of(&mut tx)
                .unwrap()
                .push(e.user_put(&format!("{side}-{round}"), false));
            txs.push(tx);
        }
        let right = txs.pop().unwrap();
        let left = txs.pop().unwrap();
        let (a, b) = tokio::join!(
            e.stores
                .offsets
                .commit_transaction(left, &id, 0, Offset::Sequence(1)),
            e.stores
                .offsets
                .commit_transaction(right, &id, 0, Offset::Sequence(2)),
        );
        let (winner, loser, lost) = match (a, b) {
            (Ok(_), Err(err)) => ("left", "right", err),
            (Err(err), Ok(_)) => ("right", "left", err),
            other => panic!("one transaction must win and one lose: {other:?}"),
        };
        assert_eq!(lost.kind(), ErrorKind::Conflict, "{lost}");
        assert!(e.user_item_exists(&format!("{winner}-{round}")).await);
        assert!(!e.user_item_exists(&format!("{loser}-{round}")).await);
        let expected = if winner == "left" { 1 } else { 2 };
        assert_eq!(
            e.stores.offsets.read_offset(&id).await.unwrap(),
            stored(Offset::Sequence(expected), 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_offset_item_is_corrupt_naming_the_projection_and_the_attribute() {
    let Some(e) = env().await else { return };
    let cases: [(&str, &str, Option<AttributeValue>, Option<AttributeValue>); 4] = [
        (
            "unparsable",
            "o",
            Some(AttributeValue::S("page:7".into())),
            Some(AttributeValue::N("1".into())),
        ),
        (
            "wrong-type",
            "o",
            Some(AttributeValue::N("7".into())),
            Some(AttributeValue::N("1".into())),
        ),
        (
            "no-version",
            "v",
            Some(AttributeValue::S("sequence:7".into())),
            None,
        ),
        (
            "text-version",
            "v",
            Some(AttributeValue::S("sequence:7".into())),
            Some(AttributeValue::S("one".into())),
        ),
    ];
    for (key, attribute, offset, version) in cases {
        let id = pid("damaged", key);
        let mut item = e.offset_key(&id);
        if let Some(o) = offset {
            item.insert("o".into(), o);
        }
        if let Some(v) = version {
            item.insert("v".into(), v);
        }
        e.client()
            .put_item()
            .table_name("offsets_journal")
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
        let err = e.stores.offsets.read_offset(&id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{key}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("damaged/{key}"))
                && text.contains(&format!("attribute {attribute} ")),
            "{key}: {text}"
        );
        assert_eq!(err.operation(), Some("read_offset"), "{err}");
        assert_eq!(err.backend(), Some("dynamodb"), "{err}");
    }
    // An operator's set repairs a damaged offset (and moves a readable version on).
    let id = pid("damaged", "unparsable");
    assert_eq!(
        e.stores
            .offsets
            .set_offset(&id, Offset::Sequence(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::Sequence(1), 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_whose_first_attempt_was_applied_counts_once() {
    let Some(e) = env().await else { return };
    let id = pid("retried", "k");

    // The PutItem is applied, its answer lost (500), the retry fails its condition on the
    // item it wrote itself: success, not a conflict.
    e.shared.fail_after_apply("PutItem", 1);
    let v = e
        .stores
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(e.shared.count("PutItem"), 2, "{:?}", e.shared.attempts());

    // The set's retry does not move the version twice.
    e.shared.reset();
    e.shared.fail_after_apply("UpdateItem", 1);
    assert_eq!(
        e.stores
            .offsets
            .set_offset(&id, Offset::Sequence(5))
            .await
            .unwrap(),
        2
    );
    assert_eq!(e.shared.count("UpdateItem"), 2, "{:?}", e.shared.attempts());

    // A transaction's retry carries the same request token: applied once, success.
    e.shared.reset();
    e.shared.fail_after_apply("TransactWriteItems", 1);
    let mut tx = e.stores.offsets.begin_transaction().await.unwrap();
    DynamoDbTransaction::of(&mut tx)
        .unwrap()
        .push(e.user_put("retried", true));
    let v = e
        .stores
        .offsets
        .commit_transaction(tx, &id, 2, Offset::Sequence(6))
        .await
        .unwrap();
    assert_eq!(v, 3);
    assert_eq!(
        e.shared.count("TransactWriteItems"),
        2,
        "{:?}",
        e.shared.attempts()
    );
    assert!(e.user_item_exists("retried").await);
    assert_eq!(
        e.stores.offsets.read_offset(&id).await.unwrap(),
        stored(Offset::Sequence(6), 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_live_under_the_namespace_and_keep_name_and_key_apart() {
    let Some(e) = env().await else { return };
    // Names and keys holding the key separator, at the longest allowed.
    let long = "ü".repeat(127) + "x";
    assert_eq!(long.len(), 255);
    let ids = [
        pid("a|b", "c"),
        pid("a", "b|c"),
        pid(&long, &long),
        pid("a", "b"),
    ];
    for (i, id) in ids.iter().enumerate() {
        e.stores
            .offsets
            .commit_offset(id, 0, Offset::Sequence(i as u64))
            .await
            .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            e.stores.offsets.read_offset(id).await.unwrap(),
            stored(Offset::Sequence(i as u64), 1),
            "{id}"
        );
    }
    // The same id in another namespace over the same table is another offset.
    let other = DynamoDb::with_client(
        e.client().clone(),
        DynamoDbConfig {
            namespace: format!("{}-other", e.namespace),
            ..e.db.config().clone()
        },
    )
    .unwrap()
    .stores();
    assert_eq!(other.offsets.read_offset(&ids[0]).await.unwrap(), None);
    // The item is where the README says, with the attributes it lists.
    let item = e
        .client()
        .get_item()
        .table_name("offsets_journal")
        .set_key(Some(e.offset_key(&ids[3])))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["o"], AttributeValue::S("sequence:3".into()));
    assert_eq!(item["v"], AttributeValue::N("1".into()));
    assert!(matches!(item["ts"], AttributeValue::N(_)));
    assert!(matches!(item["ct"], AttributeValue::S(_)));
}
