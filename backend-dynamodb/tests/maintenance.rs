//! The DynamoDB journal maintenance's own cases, against DynamoDB Local (the generic ones
//! are the kit's `maintenance::*`): a large atomic write and deleted events through a
//! truncation and a rebuild (same envelopes and offsets, no tag number left for readers to
//! wait on), the requests a rebuild sends, a tombstone where a stored event's entry
//! belongs, and a purge of a large write.
//!
//! An interceptor counts every attempt by operation (`X-Amz-Target`). The tag gap timeout
//! is 30 s, so a tag query that had to wait for a missing number would take that long: the
//! cases time their queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::TryStreamExt;
use persistence_api::{
    AtomicWrite, ErrorKind, EventEnvelope, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, PurgeReport, QueryMode, RebuildReport, Stores,
};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig, PK, SK};

/// Longer than any case may take: a query that waits for a gap fails the timing checks.
const GAP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Default, Debug)]
struct Counts(Arc<Mutex<HashMap<String, usize>>>);

impl Counts {
    fn reset(&self) {
        self.0.lock().unwrap().clear();
    }
    fn get(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Counter(Counts);

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
        let op = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("?")
            .to_owned();
        *self.0 .0.lock().unwrap().entry(op).or_default() += 1;
        Ok(())
    }
}

struct Env {
    db: DynamoDb,
    stores: Stores,
    counts: Counts,
    namespace: String,
}

async fn env() -> Option<Env> {
    let endpoint = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT")?;
    let namespace = format!("m{}", uuid::Uuid::new_v4().simple());
    let config = DynamoDbConfig {
        journal_table: "maintenance_journal".into(),
        snapshot_table: "maintenance_snapshot".into(),
        namespace: namespace.clone(),
        tag_gap_timeout: GAP_TIMEOUT,
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        ..DynamoDbConfig::local(endpoint)
    };
    let counts = Counts::default();
    let sdk = persistence_dynamodb::sdk_config(&config)
        .await
        .unwrap()
        .interceptor(Counter(counts.clone()))
        .build();
    let db = DynamoDb::with_client(aws_sdk_dynamodb::Client::from_conf(sdk), config).unwrap();
    db.create_schema().await.unwrap();
    Some(Env {
        stores: db.stores(),
        db,
        counts,
        namespace,
    })
}

impl Env {
    fn pid(&self, name: &str) -> PersistenceId {
        PersistenceId::new(format!("{}-{name}", self.namespace)).unwrap()
    }

    fn tag(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    /// Writes `from..=to` of `id` in one atomic write, every event tagged `tags`.
    async fn write(&self, id: &PersistenceId, from: u64, to: u64, tags: &[&str]) {
        let events = (from..=to)
            .map(|seq| {
                PersistentEvent::new(id.clone(), seq, Payload::raw(format!("{id}/{seq}")))
                    .with_tags(tags.iter().map(|t| t.to_string()))
            })
            .collect();
        self.stores
            .journal
            .write(AtomicWrite::new(events).unwrap())
            .await
            .unwrap();
    }

    /// The current events of `tag`, and how long the query took.
    async fn by_tag(&self, tag: &str) -> (Vec<EventEnvelope>, Duration) {
        let started = Instant::now();
        let events = self
            .stores
            .read_journal
            .query_events_by_tag(tag.to_owned(), Offset::NoOffset, QueryMode::Current)
            .try_collect()
            .await
            .unwrap();
        (events, started.elapsed())
    }

    async fn scan(&self) -> Vec<PersistenceId> {
        let mut ids: Vec<PersistenceId> = self
            .stores
            .maintenance
            .scan_persistence_ids()
            .try_collect()
            .await
            .unwrap();
        ids.sort();
        ids
    }

    async fn rebuild(&self, id: &PersistenceId) -> RebuildReport {
        self.stores
            .maintenance
            .rebuild_persistence_id(id)
            .await
            .unwrap()
    }

    /// The tag index entry of event `seq` of `id` under `tag`: its key and its number,
    /// found by querying every shard of the tag (the shard hash is the driver's).
    async fn entry_key(
        &self,
        id: &PersistenceId,
        seq: u64,
        tag: &str,
    ) -> (HashMap<String, AttributeValue>, u64) {
        let config = self.db.config();
        for shard in 0..config.tag_shards {
            let out = self
                .db
                .client()
                .query()
                .table_name(&config.journal_table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(
                    ":pk",
                    AttributeValue::S(format!("{}|t|{shard:03}|{tag}", self.namespace)),
                )
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            for item in out.items() {
                let pid = item.get("pid").and_then(|v| v.as_s().ok());
                let s = item.get("seq").and_then(|v| v.as_n().ok());
                if pid == Some(&id.to_string()) && s == Some(&seq.to_string()) {
                    let sk = item[SK].as_s().unwrap().clone();
                    let key = HashMap::from([
                        (PK.to_owned(), item[PK].clone()),
                        (SK.to_owned(), AttributeValue::S(sk.clone())),
                    ]);
                    return (key, sk.parse().unwrap());
                }
            }
        }
        panic!("no tag entry of {id} {seq} under {tag}");
    }
}

fn ops(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_and_deleted_events_come_back_at_their_numbers_without_gaps() {
    let Some(e) = env().await else { return };
    let (a, b, c) = (e.pid("a"), e.pid("b"), e.pid("c"));
    let (t, u) = (e.tag("t"), e.tag("u"));
    // 150 events and 150 entries: a large write, over several transactions.
    e.write(&a, 1, 150, &[&t]).await;
    for seq in 1..=3 {
        e.write(&b, seq, seq, &[&t, &u]).await;
    }
    e.write(&c, 1, 2, &[&t]).await;
    e.stores.journal.delete_events_to(&b, 1).await.unwrap();
    let (before_t, _) = e.by_tag(&t).await;
    let (before_u, _) = e.by_tag(&u).await;
    assert_eq!((before_t.len(), before_u.len()), (154, 2));

    // On an intact journal: reads only, and the registry item put again.
    e.counts.reset();
    assert_eq!(e.rebuild(&a).await, RebuildReport::new(150, 150));
    assert_eq!(
        e.counts.get(),
        ops(&[
            // The highest, one page of events.
            ("Query", 2),
            // The `#` item, the large write's last event.
            ("GetItem", 2),
            // The registry item.
            ("PutItem", 1),
            // The counter of (t, a's shard).
            ("UpdateItem", 1),
            // 150 slots, 100 a request.
            ("BatchGetItem", 2),
        ])
    );

    e.stores.maintenance.truncate_indexes().await.unwrap();
    assert!(e.by_tag(&t).await.0.is_empty());
    assert_eq!(e.scan().await, {
        let mut ids = vec![a.clone(), b.clone(), c.clone()];
        ids.sort();
        ids
    });
    e.counts.reset();
    assert_eq!(e.rebuild(&b).await, RebuildReport::new(2, 4));
    // The registry item, 4 entries, and tombstones on the 2 numbers deleted event 1 took.
    assert_eq!(
        e.counts.get().get("PutItem"),
        Some(&7),
        "{:?}",
        e.counts.get()
    );
    assert_eq!(e.rebuild(&a).await, RebuildReport::new(150, 150));
    assert_eq!(e.rebuild(&c).await, RebuildReport::new(2, 2));

    let (after_t, took_t) = e.by_tag(&t).await;
    let (after_u, took_u) = e.by_tag(&u).await;
    assert_eq!(after_t, before_t);
    assert_eq!(after_u, before_u);
    assert!(
        took_t + took_u < GAP_TIMEOUT / 3,
        "the queries waited for numbers: {took_t:?}, {took_u:?}"
    );
    // New writes take numbers after the restored ones.
    e.write(&c, 3, 3, &[&t]).await;
    let (last, _) = e.by_tag(&t).await;
    assert_eq!(last.len(), 155);
    assert_eq!(last[..154], after_t[..]);
    assert_eq!(last[154].event.sequence_nr, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_where_a_stored_event_s_entry_belongs_is_corrupt() {
    let Some(e) = env().await else { return };
    let d = e.pid("d");
    let v = e.tag("v");
    e.write(&d, 1, 2, &[&v]).await;
    let (slot, number) = e.entry_key(&d, 2, &v).await;
    let mut tombstone = slot.clone();
    tombstone.insert("d".into(), AttributeValue::N("1".into()));
    e.db.client()
        .put_item()
        .table_name(&e.db.config().journal_table)
        .set_item(Some(tombstone))
        .send()
        .await
        .unwrap();
    let err = e
        .stores
        .maintenance
        .rebuild_persistence_id(&d)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(err.persistence_id(), Some(d.as_str()));
    assert_eq!(err.sequence_range(), Some((2, 2)));
    let text = err.to_string();
    assert!(text.contains(&format!("number {number}")), "{text}");
    assert!(text.contains(&format!("{v:?}")), "{text}");
    assert!(text.contains("tombstone"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_large_write_leaves_tombstones_not_gaps() {
    let Some(e) = env().await else { return };
    let (a, b) = (e.pid("a"), e.pid("b"));
    let t = e.tag("t");
    e.write(&b, 1, 1, &[&t]).await;
    e.write(&a, 1, 150, &[&t]).await;
    e.write(&b, 2, 2, &[&t]).await;
    e.counts.reset();
    assert_eq!(
        e.stores.maintenance.purge_persistence_id(&a).await.unwrap(),
        PurgeReport::new(150, 0)
    );
    let (left, took) = e.by_tag(&t).await;
    let left: Vec<_> = left
        .iter()
        .map(|env| (env.event.persistence_id.clone(), env.event.sequence_nr))
        .collect();
    assert_eq!(left, vec![(b.clone(), 1), (b.clone(), 2)]);
    assert!(
        took < GAP_TIMEOUT / 3,
        "the query waited for numbers: {took:?}"
    );
    assert_eq!(e.stores.journal.highest_sequence_nr(&a).await.unwrap(), 0);
    assert_eq!(e.scan().await, vec![b.clone()]);
    assert_eq!(
        e.stores.maintenance.purge_persistence_id(&a).await.unwrap(),
        PurgeReport::new(0, 0)
    );
    // Written again from 1 by the same stores: its registry item too.
    e.write(&a, 1, 1, &[&t]).await;
    let ids: Vec<PersistenceId> = e
        .stores
        .read_journal
        .query_persistence_ids(QueryMode::Current)
        .try_collect()
        .await
        .unwrap();
    assert!(ids.contains(&a), "{ids:?}");
}
