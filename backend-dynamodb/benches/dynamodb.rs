//! The issue's five workloads against DynamoDB Local, each beside the same requests sent
//! with the raw aws-sdk client in the same run (the bound the driver can reach), plus the
//! layout experiments the table design was chosen by.
//!
//! ```text
//! bash scripts/servers/dynamodb.sh start && source .servers/dynamodb/env
//! cargo bench -p persistence-dynamodb --bench dynamodb          # BENCH_EVENTS=10000 by default
//! cargo bench -p persistence-dynamodb --bench dynamodb -- --states   # the durable-state rows only
//! cargo bench -p persistence-dynamodb --bench dynamodb -- group      # group commit (issue 16), see `mod group`
//! ```
//!
//! `cargo bench -p persistence-dynamodb --features tls --bench dynamodb -- --tls`: the
//! cost of TLS alone. The driver talks to DynamoDB Local through a
//! plain TCP relay and through a TLS-terminating
//! proxy ([`persistence_tck::tls::TlsProxy`], the certificates of scripts/servers/certs.sh),
//! the same workloads in alternating order: both paths have the same extra hop, so the
//! ratio is what the handshake and encryption cost (`BENCH_TLS_EVENTS`, default 2,000).
//!
//! The durable-state rows: `BENCH_STATES` (2,000) tagged upserts of one id and of 16 ids,
//! and a current change query over `BENCH_CHANGE_IDS` (10,000) ids.

use persistence_api::ReadJournalExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, Stores,
};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig};

type Item = HashMap<String, AttributeValue>;

const PAYLOAD: usize = 100;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The item the driver writes for an untagged event, built by hand.
fn raw_event(pk: &str, seq: u64) -> Item {
    HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("sk".to_owned(), s(format!("{seq:020}"))),
        (
            "p".to_owned(),
            AttributeValue::B(Blob::new(vec![b'x'; PAYLOAD])),
        ),
        ("ps".to_owned(), s("bench")),
        ("pm".to_owned(), s("bench.Event/v1")),
        ("w".to_owned(), s("w1")),
        ("ts".to_owned(), n(1_700_000_000_000i64)),
    ])
}

fn event(id: &PersistenceId, seq: u64, tags: &[&str]) -> PersistentEvent {
    PersistentEvent::new(
        id.clone(),
        seq,
        Payload::new("bench", "bench.Event/v1", vec![b'x'; PAYLOAD]),
    )
    .with_writer_id("w1")
    .with_tags(tags.iter().copied())
}

struct Row {
    name: String,
    events: u64,
    driver: Duration,
    raw: Duration,
}

impl Row {
    fn print(&self) {
        let d = self.events as f64 / self.driver.as_secs_f64();
        let r = self.events as f64 / self.raw.as_secs_f64();
        println!(
            "| {:<44} | {:>6} | {:>10.0} | {:>10.0} | {:>5.2} |",
            self.name,
            self.events,
            d,
            r,
            d / r
        );
    }
}

async fn put(client: &Client, table: &str, item: Item) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .expect("raw put");
}

async fn transact(client: &Client, table: &str, items: Vec<Item>) {
    let actions = items
        .into_iter()
        .map(|i| {
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(i))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .unwrap(),
                )
                .build()
        })
        .collect();
    client
        .transact_write_items()
        .set_transact_items(Some(actions))
        .send()
        .await
        .expect("raw transaction");
}

/// The items of one partition key with sort keys in `range`, `Query` page after page.
async fn query_range(
    client: &Client,
    table: &str,
    pk: &str,
    (a, b): (String, String),
    limit: i32,
) -> usize {
    let mut count = 0;
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":a", s(&a))
            .expression_attribute_values(":b", s(&b))
            .consistent_read(true)
            .limit(limit)
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

/// All items of one partition key, `Query` page after page (optionally from/to sort keys).
async fn query_all(client: &Client, table: &str, pk: &str, limit: Option<i32>) -> usize {
    let mut count = 0;
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .set_limit(limit)
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

struct Bench {
    client: Client,
    stores: Stores,
    config: DynamoDbConfig,
    events: u64,
    /// Upserts per durable-state write workload.
    states: u64,
    /// Ids of the change query.
    change_ids: u64,
}

impl Bench {
    fn table(&self) -> &str {
        &self.config.journal_table
    }

    fn raw_pk(&self, name: &str) -> String {
        format!("{}raw|e|{name}", self.config.namespace)
    }

    fn pid(&self, name: &str) -> PersistenceId {
        PersistenceId::new(name).unwrap()
    }

    /// `events` single-event writes to one id.
    async fn single_writes(&self, round: u32, driver: bool) -> (u64, Duration) {
        let name = format!("single-{round}");
        let t = Instant::now();
        if driver {
            let id = self.pid(&name);
            for seq in 1..=self.events {
                self.stores
                    .journal
                    .write(AtomicWrite::single(event(&id, seq, &[])).unwrap())
                    .await
                    .unwrap();
            }
        } else {
            let pk = self.raw_pk(&name);
            for seq in 1..=self.events {
                put(&self.client, self.table(), raw_event(&pk, seq)).await;
            }
        }
        (self.events, t.elapsed())
    }

    /// `events / 4` single-event writes with one tag to one id. The raw side sends what
    /// the previous version of the driver sent (one transaction: the event and its
    /// time-keyed tag entry), so the ratio is the price of numbered tag entries (one
    /// `UpdateItem` more per write).
    async fn single_tagged_writes(&self, round: u32, driver: bool) -> (u64, Duration) {
        let name = format!("tagged-single-{round}");
        let count = self.events / 4;
        let t = Instant::now();
        if driver {
            let id = self.pid(&name);
            for seq in 1..=count {
                self.stores
                    .journal
                    .write(AtomicWrite::single(event(&id, seq, &["single-tag"])).unwrap())
                    .await
                    .unwrap();
            }
        } else {
            let pk = self.raw_pk(&name);
            let tag_pk = format!(
                "{}raw|t|1700000000000|000|single-tag",
                self.config.namespace
            );
            for seq in 1..=count {
                let mut entry = raw_event(&tag_pk, seq);
                entry.insert("sk".into(), s(format!("1700000000000|{name}|{seq:020}")));
                entry.insert("pid".into(), s(&name));
                entry.insert("seq".into(), n(seq));
                let mut ev = raw_event(&pk, seq);
                ev.insert("tg".into(), AttributeValue::L(vec![s("single-tag")]));
                ev.insert("tt".into(), n(1_700_000_000_000i64));
                transact(&self.client, self.table(), vec![ev, entry]).await;
            }
        }
        (count, t.elapsed())
    }

    /// The same spread over 16 ids, one task each.
    async fn concurrent_writes(&self, round: u32, driver: bool) -> (u64, Duration) {
        let per = self.events / 16;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..16 {
            let name = format!("conc-{round}-{task}");
            if driver {
                let journal = self.stores.journal.clone();
                let id = self.pid(&name);
                tasks.push(tokio::spawn(async move {
                    for seq in 1..=per {
                        journal
                            .write(AtomicWrite::single(event(&id, seq, &[])).unwrap())
                            .await
                            .unwrap();
                    }
                }));
            } else {
                let client = self.client.clone();
                let table = self.table().to_owned();
                let pk = self.raw_pk(&name);
                tasks.push(tokio::spawn(async move {
                    for seq in 1..=per {
                        put(&client, &table, raw_event(&pk, seq)).await;
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        (per * 16, t.elapsed())
    }

    /// 100-event atomic writes.
    async fn atomic_writes(&self, round: u32, driver: bool) -> (u64, Duration) {
        let writes = self.events / 100;
        let name = format!("atomic-{round}");
        if driver {
            let id = self.pid(&name);
            // The id's first write also carries its registry item; keep it out of the timing
            // (the raw side writes its first event alike).
            self.stores
                .journal
                .write(AtomicWrite::single(event(&id, 1, &[])).unwrap())
                .await
                .unwrap();
            let t = Instant::now();
            for w in 0..writes {
                let events = (1..=100)
                    .map(|i| event(&id, 1 + w * 100 + i, &[]))
                    .collect();
                self.stores
                    .journal
                    .write(AtomicWrite::new(events).unwrap())
                    .await
                    .unwrap();
            }
            (writes * 100, t.elapsed())
        } else {
            let pk = self.raw_pk(&name);
            put(&self.client, self.table(), raw_event(&pk, 1)).await;
            let t = Instant::now();
            for w in 0..writes {
                let items = (1..=100).map(|i| raw_event(&pk, 1 + w * 100 + i)).collect();
                transact(&self.client, self.table(), items).await;
            }
            (writes * 100, t.elapsed())
        }
    }

    /// Replays what the driver's atomic-write workload stored; the raw side sends the
    /// driver's requests (highest, deleted-to, page-sized ranges `replay_parallelism` at a
    /// time) on the same items.
    async fn replay(&self, _round: u32, driver: bool) -> (u64, Duration) {
        let id = self.pid("atomic-0");
        let t = Instant::now();
        let count = if driver {
            self.stores.journal.replay_all(&id).await.unwrap().len() as u64
        } else {
            let pk = format!("{}|e|atomic-0", self.config.namespace);
            let (hi, _meta) = futures::join!(
                self.client
                    .query()
                    .table_name(self.table())
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(&pk))
                    .scan_index_forward(false)
                    .limit(1)
                    .consistent_read(true)
                    .send(),
                self.client
                    .get_item()
                    .table_name(self.table())
                    .key("pk", s(&pk))
                    .key("sk", s("#"))
                    .consistent_read(true)
                    .send()
            );
            let hi: u64 = hi.unwrap().items()[0]["sk"]
                .as_s()
                .unwrap()
                .parse()
                .unwrap();
            let page = self.config.page_size as u64;
            let ranges: Vec<(u64, u64)> = (0..hi.div_ceil(page))
                .map(|i| (1 + i * page, ((i + 1) * page).min(hi)))
                .collect();
            let counts: Vec<usize> = futures::stream::iter(ranges)
                .map(|(a, b)| range_query(&self.client, self.table(), &pk, a, b))
                .buffered(self.config.replay_parallelism)
                .collect()
                .await;
            counts.iter().sum::<usize>() as u64
        };
        (count, t.elapsed())
    }

    async fn tag_query(&self, _round: u32, driver: bool) -> (u64, Duration) {
        let tag = "bench-tag";
        let t = Instant::now();
        let count = if driver {
            self.stores
                .read_journal
                .current_events_by_tag(tag.into(), Offset::NoOffset)
                .fold(0u64, |acc, e| async move {
                    e.unwrap();
                    acc + 1
                })
                .await
        } else {
            // The driver's requests: every shard's counter, then every shard's entries up
            // to it, all shards at once, page after page.
            let shards = (0..self.config.tag_shards).map(|shard| {
                let pk = format!("{}|t|{shard:03}|{tag}", self.config.namespace);
                let client = self.client.clone();
                let table = self.table().to_owned();
                let limit = self.config.page_size as i32;
                async move {
                    let counter = client
                        .get_item()
                        .table_name(&table)
                        .key("pk", s(&pk))
                        .key("sk", s("~"))
                        .consistent_read(true)
                        .send()
                        .await
                        .expect("raw counter");
                    let last = counter
                        .item()
                        .and_then(|i| i.get("n"))
                        .and_then(|n| n.as_n().ok())
                        .map_or("0", |v| v.as_str())
                        .parse::<u64>()
                        .unwrap();
                    if last == 0 {
                        return 0;
                    }
                    let range = (format!("{:020}", 1), format!("{last:020}"));
                    query_range(&client, &table, &pk, range, limit).await
                }
            });
            futures::future::join_all(shards)
                .await
                .iter()
                .sum::<usize>() as u64
        };
        (count, t.elapsed())
    }

    /// Writes the tagged events the tag query reads: atomic writes of 50 events with one
    /// tag (100 items, one transaction each).
    async fn write_tagged(&self) -> u64 {
        let tag = "bench-tag";
        let id = self.pid("tagged");
        self.stores
            .journal
            .write(AtomicWrite::single(event(&id, 1, &[tag])).unwrap())
            .await
            .unwrap();
        let writes = self.events / 50 - 1;
        for w in 0..writes {
            let events = (1..=50)
                .map(|i| event(&id, 1 + w * 50 + i, &[tag]))
                .collect();
            self.stores
                .journal
                .write(AtomicWrite::new(events).unwrap())
                .await
                .unwrap();
        }
        1 + writes * 50
    }
}

/// The durable-state workloads: tagged upserts (the driver: a counter `UpdateItem`, then the
/// state and its change entry in one `TransactWriteItems`), and a current change query.
impl Bench {
    fn state_payload() -> Payload {
        Payload::new("bench", "bench.State/v1", vec![b'x'; PAYLOAD])
    }

    /// What the driver sends for one tagged upsert, with the raw client: the counter's
    /// `UpdateItem`, then the state (conditioned on the revision before, ALL_OLD on
    /// failure) and its change entry (conditioned on its number being free).
    async fn raw_upsert(client: &Client, table: &str, ns: &str, name: &str, revision: u64) {
        let tag = "state-tag";
        let shard = 0;
        let change_pk = format!("{ns}raw|u|{shard:03}|{tag}");
        let out = client
            .update_item()
            .table_name(table)
            .key("pk", s(&change_pk))
            .key("sk", s("~"))
            .update_expression("ADD n :k")
            .expression_attribute_values(":k", n(1))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .expect("raw counter");
        let number: u64 = out.attributes().unwrap()["n"]
            .as_n()
            .unwrap()
            .parse()
            .unwrap();
        let state = HashMap::from([
            ("pk".to_owned(), s(format!("{ns}raw|d|{name}"))),
            ("sk".to_owned(), s("#")),
            ("rv".to_owned(), n(revision)),
            (
                "p".to_owned(),
                AttributeValue::B(Blob::new(vec![b'x'; PAYLOAD])),
            ),
            ("ps".to_owned(), s("bench")),
            ("pm".to_owned(), s("bench.State/v1")),
            ("sg".to_owned(), s(tag)),
            ("ch".to_owned(), n(number)),
            ("ts".to_owned(), n(1_700_000_000_000i64)),
            ("wi".to_owned(), s(uuid::Uuid::new_v4().to_string())),
        ]);
        let entry = HashMap::from([
            ("pk".to_owned(), s(&change_pk)),
            ("sk".to_owned(), s(format!("{number:020}"))),
            ("pid".to_owned(), s(name)),
            ("rv".to_owned(), n(revision)),
            ("tt".to_owned(), n(1_700_000_000_000i64)),
        ]);
        let mut state_put = Put::builder()
            .table_name(table)
            .set_item(Some(state))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            );
        state_put = if revision == 1 {
            state_put.condition_expression("attribute_not_exists(pk)")
        } else {
            state_put
                .condition_expression("rv = :prev")
                .expression_attribute_values(":prev", n(revision - 1))
        };
        let entry_put = Put::builder()
            .table_name(table)
            .set_item(Some(entry))
            .condition_expression("attribute_not_exists(pk)");
        client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .put(state_put.build().unwrap())
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .put(entry_put.build().unwrap())
                    .build(),
            )
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .send()
            .await
            .expect("raw state transaction");
    }

    /// `states` tagged upserts of one id.
    async fn state_upserts(&self, round: u32, driver: bool) -> (u64, Duration) {
        let name = format!("state-{round}");
        let count = self.states;
        let t = Instant::now();
        for revision in 1..=count {
            if driver {
                self.stores
                    .durable_state
                    .upsert(
                        &self.pid(&name),
                        revision,
                        Self::state_payload(),
                        Some("state-tag".into()),
                    )
                    .await
                    .unwrap();
            } else {
                let ns = &self.config.namespace;
                Self::raw_upsert(&self.client, self.table(), ns, &name, revision).await;
            }
        }
        (count, t.elapsed())
    }

    /// The same spread over 16 ids, one task each.
    async fn concurrent_state_upserts(&self, round: u32, driver: bool) -> (u64, Duration) {
        let per = self.states / 16;
        let t = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let name = format!("state-conc-{round}-{task}");
                let store = self.stores.durable_state.clone();
                let (client, table) = (self.client.clone(), self.table().to_owned());
                let ns = self.config.namespace.clone();
                tokio::spawn(async move {
                    let id = PersistenceId::new(name.clone()).unwrap();
                    for revision in 1..=per {
                        if driver {
                            store
                                .upsert(
                                    &id,
                                    revision,
                                    Self::state_payload(),
                                    Some("state-tag".into()),
                                )
                                .await
                                .unwrap();
                        } else {
                            Self::raw_upsert(&client, &table, &ns, &name, revision).await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (per * 16, t.elapsed())
    }

    /// Stores `ids` states under `tag` (16 writers), revision 1 each, for the change query.
    async fn write_states(&self, tag: &str, ids: u64) {
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let store = self.stores.durable_state.clone();
                let tag = tag.to_owned();
                tokio::spawn(async move {
                    for i in (task..ids).step_by(16) {
                        let id = PersistenceId::new(format!("changed-{i}")).unwrap();
                        store
                            .upsert(&id, 1, Self::state_payload(), Some(tag.clone()))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    /// A current change query over every state of `tag`. The raw side sends the driver's
    /// requests: every shard's counter, then each shard's entries page by page, and after
    /// each page the states it names (`BatchGetItem`s of 100, strongly consistent, 4 at a
    /// time).
    async fn change_query(&self, tag: &str, driver: bool) -> (u64, Duration) {
        let t = Instant::now();
        if driver {
            let count = self
                .stores
                .durable_state
                .query_changes(
                    tag.into(),
                    Offset::NoOffset,
                    persistence_api::QueryMode::Current,
                )
                .fold(0u64, |acc, c| async move {
                    c.unwrap();
                    acc + 1
                })
                .await;
            return (count, t.elapsed());
        }
        let ns = &self.config.namespace;
        let (client, table) = (&self.client, self.table());
        let mut limits = Vec::new();
        for shard in 0..self.config.tag_shards {
            let pk = format!("{ns}|u|{shard:03}|{tag}");
            let out = client
                .get_item()
                .table_name(table)
                .key("pk", s(&pk))
                .key("sk", s("~"))
                .consistent_read(true)
                .send()
                .await
                .expect("raw counter");
            let last: u64 = out
                .item()
                .and_then(|i| i.get("n"))
                .and_then(|v| v.as_n().ok())
                .map_or(Ok(0), |v| v.parse())
                .unwrap();
            limits.push((pk, last));
        }
        let mut count = 0u64;
        for (pk, last) in limits {
            if last == 0 {
                continue;
            }
            let mut start = None;
            loop {
                let out = client
                    .query()
                    .table_name(table)
                    .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                    .expression_attribute_values(":pk", s(&pk))
                    .expression_attribute_values(":a", s(format!("{:020}", 1)))
                    .expression_attribute_values(":b", s(format!("{last:020}")))
                    .limit(self.config.page_size as i32)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .expect("raw entries");
                let keys: Vec<Item> = out
                    .items()
                    .iter()
                    .map(|e| {
                        let pid = e["pid"].as_s().unwrap();
                        HashMap::from([
                            ("pk".to_owned(), s(format!("{ns}|d|{pid}"))),
                            ("sk".to_owned(), s("#")),
                        ])
                    })
                    .collect();
                let batches = keys.chunks(100).map(|chunk| {
                    let keys = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                        .set_keys(Some(chunk.to_vec()))
                        .consistent_read(true)
                        .build()
                        .unwrap();
                    async move {
                        let out = client
                            .batch_get_item()
                            .request_items(table, keys)
                            .send()
                            .await
                            .expect("raw states");
                        out.responses().map_or(0, |r| r[table].len())
                    }
                });
                count += futures::stream::iter(batches)
                    .buffer_unordered(4)
                    .fold(0usize, |a, b| async move { a + b })
                    .await as u64;
                match out.last_evaluated_key() {
                    Some(k) => start = Some(k.clone()),
                    None => break,
                }
            }
        }
        (count, t.elapsed())
    }

    /// The durable-state rows.
    async fn state_rows(&self) {
        compare("tagged state upserts, one id", 2, |r, d| {
            self.state_upserts(r, d)
        })
        .await
        .print();
        compare("tagged state upserts, 16 ids concurrently", 2, |r, d| {
            self.concurrent_state_upserts(r, d)
        })
        .await
        .print();
        let tag = "changes-tag";
        self.write_states(tag, self.change_ids).await;
        let row = compare(
            &format!("current change query, {} ids", self.change_ids),
            6,
            |_, d| self.change_query(tag, d),
        )
        .await;
        assert_eq!(row.events, self.change_ids);
        row.print();
    }
}

async fn range_query(client: &Client, table: &str, pk: &str, a: u64, b: u64) -> usize {
    client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
        .expression_attribute_values(":pk", s(pk))
        .expression_attribute_values(":a", s(format!("{a:020}")))
        .expression_attribute_values(":b", s(format!("{b:020}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items()
        .len()
}

/// Runs a workload `rounds` times each way, alternating which side goes first (raw, driver,
/// driver, raw, ...), so neither gains from the server warming up or its tables growing.
async fn compare<'a, F, Fut>(name: &str, rounds: u32, f: F) -> Row
where
    F: Fn(u32, bool) -> Fut,
    Fut: std::future::Future<Output = (u64, Duration)> + 'a,
{
    let mut row = Row {
        name: name.into(),
        events: 0,
        driver: Duration::ZERO,
        raw: Duration::ZERO,
    };
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for driver in order {
            let (events, took) = f(round, driver).await;
            if driver {
                row.driver += took;
                row.events += events;
            } else {
                row.raw += took;
            }
        }
    }
    row.events /= rounds as u64;
    row.driver /= rounds;
    row.raw /= rounds;
    row
}

/// Layout experiments, raw SDK only: how the candidate layouts replay and write.
async fn layouts(client: &Client, table: &str, prefix: &str, events: u64) {
    println!("\nLayout experiments (raw aws-sdk, {events} events of {PAYLOAD} B):");
    // A: one partition per id (sk = seq), written in 100-item transactions.
    let by_id = format!("{prefix}lay|e|one");
    for w in 0..events / 100 {
        let items = (1..=100).map(|i| raw_event(&by_id, w * 100 + i)).collect();
        transact(client, table, items).await;
    }
    // B: the 1.x plugin's partitions of 100 sequence numbers (pk = id-seq/100).
    for w in 0..events / 100 {
        let pk = format!("{prefix}lay|e|hundreds-{w}");
        let items = (1..=100).map(|i| raw_event(&pk, w * 100 + i)).collect();
        transact(client, table, items).await;
    }
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let t = Instant::now();
    let c = query_all(client, table, &by_id, None).await;
    assert_eq!(c as u64, events);
    println!(
        "  by id, sequential 1 MB pages:                {:>8.0} events/s",
        rate(t.elapsed())
    );
    for (page, par) in [(1000u64, 1usize), (1000, 4), (500, 8)] {
        let t = Instant::now();
        let ranges: Vec<(u64, u64)> = (0..events.div_ceil(page))
            .map(|i| (1 + i * page, ((i + 1) * page).min(events)))
            .collect();
        let counts: Vec<usize> = futures::stream::iter(ranges)
            .map(|(a, b)| {
                let client = client.clone();
                let by_id = by_id.clone();
                let table = table.to_owned();
                async move {
                    client
                        .query()
                        .table_name(table)
                        .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                        .expression_attribute_values(":pk", s(by_id))
                        .expression_attribute_values(":a", s(format!("{a:020}")))
                        .expression_attribute_values(":b", s(format!("{b:020}")))
                        .consistent_read(true)
                        .send()
                        .await
                        .unwrap()
                        .items()
                        .len()
                }
            })
            .buffered(par)
            .collect()
            .await;
        assert_eq!(counts.iter().sum::<usize>() as u64, events);
        println!(
            "  by id, ranges of {page:>4}, {par} in parallel:       {:>8.0} events/s",
            rate(t.elapsed())
        );
    }
    for par in [1usize, 4, 8] {
        let t = Instant::now();
        let counts: Vec<usize> = futures::stream::iter(0..events / 100)
            .map(|w| {
                let client = client.clone();
                let table = table.to_owned();
                let pk = format!("{prefix}lay|e|hundreds-{w}");
                async move { query_all(&client, &table, &pk, None).await }
            })
            .buffered(par)
            .collect()
            .await;
        assert_eq!(counts.iter().sum::<usize>() as u64, events);
        println!(
            "  1.x partitions of 100, {par} in parallel:        {:>8.0} events/s",
            rate(t.elapsed())
        );
    }
    // Write cost of keeping a highest item current in every write.
    let k = 1000u64.min(events);
    let t = Instant::now();
    for seq in 1..=k {
        put(client, table, raw_event(&format!("{prefix}lay|e|put"), seq)).await;
    }
    let plain = t.elapsed();
    let t = Instant::now();
    for seq in 1..=k {
        let pk = format!("{prefix}lay|e|puthi");
        let mut hi = HashMap::from([("pk".to_owned(), s(&pk)), ("sk".to_owned(), s("#"))]);
        hi.insert("hi".into(), n(seq));
        let actions = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(raw_event(&pk, seq)))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .unwrap(),
                )
                .build(),
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(hi))
                        .build()
                        .unwrap(),
                )
                .build(),
        ];
        client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
            .unwrap();
    }
    let with_hi = t.elapsed();
    println!(
        "  single event, conditional PutItem:           {:>8.0} events/s",
        k as f64 / plain.as_secs_f64()
    );
    println!(
        "  single event + highest item, 2-item tx:      {:>8.0} events/s",
        k as f64 / with_hi.as_secs_f64()
    );
}

/// `--tls`: the driver through a plain relay against the driver through a TLS proxy.
async fn tls_cost(endpoint: &str, events: u64) {
    if cfg!(not(feature = "tls")) {
        eprintln!("--tls needs the crate feature: cargo bench -p persistence-dynamodb --features tls --bench dynamodb -- --tls");
        return;
    }
    let target = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let certs = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/servers/certs.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(certs.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed");
    // The plain relay forwards the way the TLS proxy does after its handshake
    // (`copy_bidirectional`, no delay), so the two paths differ by TLS alone.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let relay_target = target.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            let target = relay_target.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let tls = persistence_tck::tls::TlsProxy::start(
        target,
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
    )
    .await
    .unwrap();
    let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let open = |endpoint: String| {
        let config = DynamoDbConfig {
            journal_table: "bench_journal".into(),
            snapshot_table: "bench_snapshot".into(),
            namespace: namespace.clone(),
            tls_ca_file: Some(certs.path().join("ca.pem")),
            ..DynamoDbConfig::local(endpoint)
        };
        async move {
            let db = DynamoDb::open(config).await.unwrap();
            db.create_schema().await.unwrap();
            db.stores()
        }
    };
    let plain = open(format!("http://127.0.0.1:{relay_port}")).await;
    let secure = open(format!("https://localhost:{}", tls.addr().port())).await;
    println!(
        "persistence-dynamodb: TLS cost against {endpoint} ({events} events of {PAYLOAD} B; events/s)\n"
    );
    println!(
        "| {:<32} | {:>12} | {:>12} | {:>9} |",
        "workload", "plain relay", "TLS proxy", "TLS/plain"
    );
    println!("|{:-<34}|{:->14}|{:->14}|{:->11}|", "", "", "", "");
    let (mut write, mut replay) = ([Duration::ZERO; 2], [Duration::ZERO; 2]);
    let rounds = 4u32;
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let stores = if side == 0 { &plain } else { &secure };
            let id = PersistenceId::new(format!("tls-{side}-{round}")).unwrap();
            let t = Instant::now();
            for seq in 1..=events {
                stores
                    .journal
                    .write(AtomicWrite::single(event(&id, seq, &[])).unwrap())
                    .await
                    .unwrap();
            }
            write[side] += t.elapsed();
            let t = Instant::now();
            assert_eq!(
                stores.journal.replay_all(&id).await.unwrap().len() as u64,
                events
            );
            replay[side] += t.elapsed();
        }
    }
    for (name, times) in [("single-event writes, one id", write), ("replay", replay)] {
        let rate = |d: Duration| (events * rounds as u64) as f64 / d.as_secs_f64();
        let (p, t) = (rate(times[0]), rate(times[1]));
        println!("| {name:<32} | {p:>12.0} | {t:>12.0} | {:>9.2} |", t / p);
    }
    println!(
        "\nTLS handshakes: {} (connections are pooled and kept alive)",
        tls.handshakes()
    );
}

fn main() {
    let Ok(endpoint) = std::env::var("PERSISTENCE_DYNAMODB_ENDPOINT") else {
        eprintln!("PERSISTENCE_DYNAMODB_ENDPOINT is not set: start DynamoDB Local with scripts/servers/dynamodb.sh start and source .servers/dynamodb/env");
        return;
    };
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let only_layouts = std::env::args().any(|a| a == "--layouts");
    let only_states = std::env::args().any(|a| a == "--states");
    let only_tls = std::env::args().any(|a| a == "--tls");
    let only_group = std::env::args().any(|a| a == "--group" || a == "group");
    let env_u64 = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        if only_tls {
            tls_cost(&endpoint, env_u64("BENCH_TLS_EVENTS", 2_000)).await;
            return;
        }
        let config = DynamoDbConfig {
            journal_table: "bench_journal".into(),
            snapshot_table: "bench_snapshot".into(),
            namespace: format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            ..DynamoDbConfig::local(endpoint)
        };
        let db = DynamoDb::open(config.clone()).await.unwrap();
        db.create_schema().await.unwrap();
        let bench = Arc::new(Bench {
            client: db.client().clone(),
            stores: db.stores(),
            config: config.clone(),
            events,
            states: env_u64("BENCH_STATES", 2_000),
            change_ids: env_u64("BENCH_CHANGE_IDS", 10_000),
        });
        // Warm up DynamoDB Local's JIT and the connection pool before anything is timed.
        let warm = format!("{}warm|e|w", config.namespace);
        for seq in 1..=1500u64 {
            put(&bench.client, bench.table(), raw_event(&warm, seq)).await;
        }
        for w in 0..15u64 {
            let items = (1..=100)
                .map(|i| raw_event(&warm, 10_000 + w * 100 + i))
                .collect();
            transact(&bench.client, bench.table(), items).await;
        }
        for _ in 0..5 {
            query_all(&bench.client, bench.table(), &warm, None).await;
        }
        if only_group {
            group::bench(&bench).await;
            return;
        }
        if only_states {
            println!(
                "persistence-dynamodb durable state against {} (states of {PAYLOAD} B; upserts or changes/s)\n",
                config.endpoint.as_deref().unwrap_or("")
            );
            println!(
                "| {:<44} | {:>6} | {:>10} | {:>10} | {:>5} |",
                "workload", "count", "driver", "raw sdk", "ratio"
            );
            println!("|{:-<46}|{:->8}|{:->12}|{:->12}|{:->7}|", "", "", "", "", "");
            bench.state_rows().await;
            return;
        }
        if !only_layouts {
            println!(
                "persistence-dynamodb against {} ({} events of {PAYLOAD} B per workload; events/s)\n",
                config.endpoint.as_deref().unwrap_or(""),
                events
            );
            println!(
                "| {:<44} | {:>6} | {:>10} | {:>10} | {:>5} |",
                "workload", "events", "driver", "raw sdk", "ratio"
            );
            println!(
                "|{:-<46}|{:->8}|{:->12}|{:->12}|{:->7}|",
                "", "", "", "", ""
            );
            let b = &bench;
            compare("single-event writes, one id", 2, |r, d| {
                b.single_writes(r, d)
            })
            .await
            .print();
            compare("single-event writes, 16 ids concurrently", 2, |r, d| {
                b.concurrent_writes(r, d)
            })
            .await
            .print();
            compare(
                "single tagged writes (raw: the previous version)",
                2,
                |r, d| b.single_tagged_writes(r, d),
            )
            .await
            .print();
            compare("100-event atomic writes", 2, |r, d| b.atomic_writes(r, d))
                .await
                .print();
            compare("replay", 10, |r, d| b.replay(r, d)).await.print();
            let tagged = b.write_tagged().await;
            let row = compare("tag query", 10, |r, d| b.tag_query(r, d)).await;
            assert_eq!(row.events, tagged);
            row.print();
            b.state_rows().await;
            let t = Instant::now();
            let pk = format!("{}|e|atomic-0", config.namespace);
            let c = query_all(&b.client, b.table(), &pk, None).await;
            println!(
                "\nReference: replay as sequential 1 MB Query pages (raw): {:.0} events/s",
                c as f64 / t.elapsed().as_secs_f64()
            );
        }
        layouts(&bench.client, bench.table(), &config.namespace, events).await;
    });
}

/// `-- group`: the group-commit question of issue 16 on DynamoDB. 1,000 entities, 1 / 10 /
/// 100 / 1,000 concurrent tasks (`BENCH_GC_TASKS`, comma-separated), `BENCH_GC_EVENTS`
/// (3,000) single-event writes per run, each task writing its own entities in turn (an
/// entity's next write waits for its previous one, as an entity's do). Every entity's first
/// event is written before the timing (the store's first write of an id also carries its
/// registry items, a 3-item transaction), so every timed write is the steady state: the
/// store's one conditional `PutItem`.
///
/// Paths, at the same concurrency: (a) the raw SDK sending that one conditional `PutItem`
/// per event (the per-request bound), (b) the stores, (c) the alternative the issue names:
/// concurrent writes of different ids gathered into one `TransactWriteItems` of up to 100
/// items (`BENCH_GC_TX_ITEMS`), a committer taking what queued while the previous
/// transactions were in flight, up to `BENCH_GC_TX_INFLIGHT` (4) transactions at once (a
/// group of one goes as a plain conditional `PutItem`).
/// Then the write capacity each path consumes (`ReturnConsumedCapacity`), and what one
/// conflicting item does to a 100-item transaction.
mod group {
    use super::*;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

    use persistence_tck::bench::{env_list, env_usize, Figures, Gather, ENTITIES};

    /// [`persistence_tck::bench::run`] from sequence number 2 (1 is written untimed).
    async fn run<F, Fut>(tasks: usize, events: usize, write: F) -> Figures
    where
        F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        persistence_tck::bench::run(tasks, events, 2, write).await
    }

    /// Writes event 1 of every entity, `concurrency` at a time, untimed.
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

    fn raw_pk(ns: &str, path: &str, tasks: usize, entity: usize) -> String {
        format!("{ns}{path}{tasks}|e|entity-{entity}")
    }

    /// (a) One conditional `PutItem` per event, as the store sends.
    async fn raw(b: &Bench, tasks: usize, events: usize) -> Figures {
        let (client, table, ns) = (
            b.client.clone(),
            b.table().to_owned(),
            b.config.namespace.clone(),
        );
        seed(|e| put(&client, &table, raw_event(&raw_pk(&ns, "raw", tasks, e), 1))).await;
        run(tasks, events, move |e, seq| {
            let (client, table, pk) = (client.clone(), table.clone(), raw_pk(&ns, "raw", tasks, e));
            async move { put(&client, &table, raw_event(&pk, seq)).await }
        })
        .await
    }

    fn entity(tasks: usize, e: usize) -> PersistenceId {
        PersistenceId::new(format!("gc{tasks}-{e}")).unwrap()
    }

    /// (b) The stores.
    async fn stores(b: &Bench, tasks: usize, events: usize) -> Figures {
        let journal = b.stores.journal.clone();
        seed(|e| {
            let journal = journal.clone();
            async move {
                let id = entity(tasks, e);
                journal
                    .write(AtomicWrite::single(event(&id, 1, &[])).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await;
        run(tasks, events, move |e, seq| {
            let journal = journal.clone();
            async move {
                let id = entity(tasks, e);
                journal
                    .write(AtomicWrite::single(event(&id, seq, &[])).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await
    }

    /// Writes of different ids gathered (see [`Gather`]) into one `TransactWriteItems`
    /// each; a group of one needs no transaction (nor its double cost) and goes as a
    /// `PutItem`.
    fn committer(client: Client, table: String, max: usize, inflight: usize) -> Gather<Item> {
        Gather::start(max, inflight, move |mut items: Vec<Item>| {
            let (client, table) = (client.clone(), table.clone());
            async move {
                if items.len() == 1 {
                    put(&client, &table, items.pop().unwrap()).await;
                } else {
                    transact(&client, &table, items).await;
                }
            }
        })
    }

    /// (c) Concurrent writes of different ids in shared `TransactWriteItems`.
    async fn grouped(
        b: &Bench,
        tasks: usize,
        events: usize,
        max: usize,
        inflight: usize,
    ) -> (Figures, f64, f64) {
        let (client, table, ns) = (
            b.client.clone(),
            b.table().to_owned(),
            b.config.namespace.clone(),
        );
        seed(|e| put(&client, &table, raw_event(&raw_pk(&ns, "tx", tasks, e), 1))).await;
        let queue = committer(client, table, max, inflight);
        let gathered = queue.clone();
        let f = run(tasks, events, move |e, seq| {
            let (queue, pk) = (gathered.clone(), raw_pk(&ns, "tx", tasks, e));
            async move { queue.submit(raw_event(&pk, seq)).await }
        })
        .await;
        let sizes = queue.sizes();
        let items = sizes.iter().sum::<usize>() as f64;
        let mean = items / sizes.len().max(1) as f64;
        // AWS's billing: a lone PutItem 1 WCU, an item of a transaction 2.
        let wcu: f64 = sizes
            .iter()
            .map(|&n| if n == 1 { 1.0 } else { 2.0 * n as f64 })
            .sum();
        (f, mean, wcu / items)
    }

    /// Write capacity units DynamoDB reports for one conditional `PutItem` of an event and
    /// for one 100-item `TransactWriteItems` of events (per event).
    async fn capacity(b: &Bench) -> (Option<f64>, Option<f64>) {
        let ns = &b.config.namespace;
        let out = b
            .client
            .put_item()
            .table_name(b.table())
            .set_item(Some(raw_event(&format!("{ns}wcu|e|put"), 1)))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .expect("put");
        let put_wcu = out.consumed_capacity().and_then(|c| c.capacity_units());
        let actions = (0..100)
            .map(|i| {
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(b.table())
                            .set_item(Some(raw_event(&format!("{ns}wcu|e|tx-{i}"), 1)))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        let out = b
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .expect("transaction");
        let tx_wcu = out
            .consumed_capacity()
            .iter()
            .map(|c| c.capacity_units().unwrap_or(0.0))
            .sum::<f64>();
        let tx_wcu = (!out.consumed_capacity().is_empty()).then_some(tx_wcu);
        (put_wcu, tx_wcu)
    }

    /// One item of a 100-item transaction conflicts: what DynamoDB answers, what is stored,
    /// and the time of the cancelled attempt and of re-submitting the other 99.
    async fn conflict(b: &Bench) {
        let ns = &b.config.namespace;
        let pks: Vec<String> = (0..100).map(|i| format!("{ns}cf|e|{i}")).collect();
        // Item 37 is taken already.
        put(&b.client, b.table(), raw_event(&pks[37], 1)).await;
        let actions = |skip: Option<usize>| -> Vec<TransactWriteItem> {
            pks.iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(_, pk)| {
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(b.table())
                                .set_item(Some(raw_event(pk, 1)))
                                .condition_expression("attribute_not_exists(pk)")
                                .build()
                                .unwrap(),
                        )
                        .build()
                })
                .collect()
        };
        let t = Instant::now();
        let err = b
            .client
            .transact_write_items()
            .set_transact_items(Some(actions(None)))
            .send()
            .await
            .expect_err("item 37 is taken");
        let cancelled = t.elapsed();
        let reasons: Vec<String> = err
            .as_service_error()
            .and_then(|e| match e {
                TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                _ => None,
            })
            .map(|e| {
                e.cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut codes: Vec<(String, usize)> = Vec::new();
        for r in &reasons {
            match codes.iter_mut().find(|(c, _)| c == r) {
                Some((_, n)) => *n += 1,
                None => codes.push((r.clone(), 1)),
            }
        }
        let stored = futures::stream::iter(pks.iter().enumerate().filter(|(i, _)| *i != 37))
            .map(|(_, pk)| query_all(&b.client, b.table(), pk, None))
            .buffer_unordered(16)
            .fold(0usize, |a, c| async move { a + c })
            .await;
        let t = Instant::now();
        b.client
            .transact_write_items()
            .set_transact_items(Some(actions(Some(37))))
            .send()
            .await
            .expect("the 99 others");
        let again = t.elapsed();
        println!(
            "\nOne conflicting item in a 100-item TransactWriteItems: {} ({:?}); items of the 99 others stored: {stored}; the cancelled attempt took {:.1} ms, re-submitting the 99 {:.1} ms",
            err.as_service_error().map(|e| e.meta().code().unwrap_or("?").to_owned()).unwrap_or_else(|| format!("{err:?}")),
            codes,
            cancelled.as_secs_f64() * 1e3,
            again.as_secs_f64() * 1e3,
        );
    }

    fn row(tasks: usize, path: &str, f: &Figures, raw: f64, note: &str) {
        println!(
            "| {tasks:>5} | {path:<34} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5.2} | {note}",
            f.rate,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.rate / raw
        );
    }

    pub async fn bench(b: &Bench) {
        let tasks = env_list("BENCH_GC_TASKS", &[1, 10, 100, 1000]);
        let events = env_usize("BENCH_GC_EVENTS", 3000);
        let max = env_usize("BENCH_GC_TX_ITEMS", 100).clamp(1, 100);
        let inflight = env_usize("BENCH_GC_TX_INFLIGHT", 4).max(1);
        let (put_wcu, tx_wcu) = capacity(b).await;
        let fmt = |w: Option<f64>| w.map_or_else(|| "not reported".to_owned(), |w| format!("{w}"));
        println!(
            "persistence-dynamodb group commit against {} ({events} single-event writes of {} entities per run, {PAYLOAD} B payloads; grouped: up to {max} items per TransactWriteItems, {inflight} in flight)",
            b.config.endpoint.as_deref().unwrap_or(""),
            ENTITIES
        );
        println!(
            "Write capacity the endpoint reports (ReturnConsumedCapacity): one conditional PutItem of an event {} WCU; one TransactWriteItems of 100 such events {} WCU in all (AWS bills a transactional write 2 WCU per item of up to 1 KB: 200)\n",
            fmt(put_wcu),
            fmt(tx_wcu)
        );
        println!(
            "| tasks | path                               |  events/s | p50 ms  | p99 ms  | / raw | "
        );
        println!("|------:|------------------------------------|----------:|--------:|--------:|------:|");
        for (i, t) in tasks.into_iter().enumerate() {
            let t = t.clamp(1, ENTITIES);
            // Every other concurrency runs the paths in reverse order, so none gains from
            // always going first (a fresher JVM heap, fewer items) or last.
            let (raw_f, store_f, (tx_f, mean, wcu)) = if i % 2 == 0 {
                let r = raw(b, t, events).await;
                let s = stores(b, t, events).await;
                (r, s, grouped(b, t, events, max, inflight).await)
            } else {
                let g = grouped(b, t, events, max, inflight).await;
                let s = stores(b, t, events).await;
                (raw(b, t, events).await, s, g)
            };
            row(t, "raw PutItem, 1 request/event", &raw_f, raw_f.rate, "");
            row(t, "store (1 PutItem/event)", &store_f, raw_f.rate, "");
            row(
                t,
                "raw TransactWriteItems, grouped",
                &tx_f,
                raw_f.rate,
                &format!("mean {mean:.1} writes/request, {wcu:.2} WCU/event on AWS"),
            );
        }
        conflict(b).await;
    }
}
