//! The kit's store factory on DynamoDB (`tests/tck.rs`, and behind injected faults
//! `tests/tck_throttled.rs`).

use aws_smithy_runtime_api::client::http::SharedHttpClient;
use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use persistence_api::{Error, ErrorKind, PersistenceId, Result, SequenceNr, Stores};
use persistence_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig, PK, SK};
use persistence_tck::Corruption;

/// Bytes no codec wrote: CBOR "break" codes out of place.
const GARBAGE: [u8; 8] = [0xff; 8];

type Item = HashMap<String, AttributeValue>;

fn storage(what: &'static str) -> impl Fn(String) -> Error {
    move |e| Error::new(ErrorKind::Storage, format!("{what}: {e}"))
}

/// The attribute a corruption damages, and the update that does it (the layout is the
/// backend's README's: `p` payload, `tg` tags, `ms`/`mm`/`mb` metadata, `pm` manifest).
fn damage(what: Corruption) -> (&'static str, &'static str, Option<AttributeValue>) {
    match what {
        Corruption::Payload => (
            "p",
            "SET p = :v",
            Some(AttributeValue::B(Blob::new(GARBAGE.to_vec()))),
        ),
        Corruption::Tags => (
            "tg",
            "SET tg = :v",
            Some(AttributeValue::S("not a list".into())),
        ),
        // The metadata bytes stay, their serializer id goes.
        Corruption::Metadata => ("ms", "REMOVE ms", None),
        // A number where the manifest string belongs.
        Corruption::Column => ("pm", "SET pm = :v", Some(AttributeValue::N("7".into()))),
        _ => ("", "", None),
    }
}

/// The kit's store factory on DynamoDB: each case's stores under its own namespace in two
/// shared tables, and the corruption hooks, which damage items with a raw client.
pub struct Factory {
    /// The raw client of the hooks (never behind injected faults).
    client: aws_sdk_dynamodb::Client,
    /// The client of the stores the cases get.
    stores_client: aws_sdk_dynamodb::Client,
    config: DynamoDbConfig,
    /// See [`persistence_tck::StoreFactory::live_delay_allowance`].
    live_delay_allowance: std::time::Duration,
}

impl Factory {
    /// The kit's configuration against `endpoint`.
    pub fn config(endpoint: String) -> DynamoDbConfig {
        DynamoDbConfig {
            journal_table: "tck_journal".into(),
            snapshot_table: "tck_snapshot".into(),
            poll_interval: std::time::Duration::from_millis(100),
            feed_settle_delay: std::time::Duration::from_millis(500),
            tag_gap_timeout: std::time::Duration::from_millis(1000),
            ..DynamoDbConfig::local(endpoint)
        }
    }

    /// Stores through the driver's own client.
    pub async fn connect(endpoint: String) -> Result<Self> {
        Self::connect_with(Self::config(endpoint), |_| None).await
    }

    /// Stores with `config`, through the HTTP client `http` makes of the driver's own
    /// (`None`: the driver's own).
    pub async fn connect_with(
        config: DynamoDbConfig,
        http: impl FnOnce(SharedHttpClient) -> Option<SharedHttpClient>,
    ) -> Result<Self> {
        let db = DynamoDb::open(config.clone()).await?;
        db.create_schema().await?;
        let stores_client = match http(persistence_dynamodb::http_client(&config)?) {
            None => db.client().clone(),
            Some(http) => aws_sdk_dynamodb::Client::from_conf(
                persistence_dynamodb::sdk_config(&config)
                    .await?
                    .http_client(http)
                    .build(),
            ),
        };
        Ok(Factory {
            client: db.client().clone(),
            stores_client,
            config,
            live_delay_allowance: std::time::Duration::ZERO,
        })
    }

    /// The factory, allowing live deliveries `allowance` beyond the declared delay (a run
    /// with injected faults).
    pub fn with_live_delay_allowance(mut self, allowance: std::time::Duration) -> Self {
        self.live_delay_allowance = allowance;
        self
    }
}

impl Factory {
    /// Applies `what` to the item `key` of `table` with the raw client; the item must exist
    /// (and, for metadata, carry it).
    async fn damage_item(&self, table: &str, key: Item, what: Corruption) -> Result<String> {
        let (attribute, update, value) = damage(what);
        if attribute.is_empty() {
            return Err(Error::unsupported(format!("no attribute for {what:?}")));
        }
        let condition = if what == Corruption::Metadata {
            "attribute_exists(pk) AND attribute_exists(mb)"
        } else {
            "attribute_exists(pk)"
        };
        let mut req = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(update)
            .condition_expression(condition);
        if let Some(v) = value {
            req = req.expression_attribute_values(":v", v);
        }
        req.send().await.map_err(|e| {
            storage("update_item")(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
        })?;
        Ok(attribute.to_owned())
    }

    /// The keys of the tag index entries (copies) of the event `(pid, seq)` of `namespace`,
    /// by the layout of the backend's README: the event item records each tag's entry
    /// number (`tn`, tag -> number); the entry is in the partition of the tag and one of its
    /// shards, under the zero-padded number. A tag whose entry is not found is an error, so
    /// a change of layout fails here loudly instead of leaving good copies behind.
    async fn tag_entry_keys(&self, namespace: &str, pid: &str, seq: u64) -> Result<Vec<Item>> {
        let event = self
            .get(key(
                format!("{namespace}|e|{pid}"),
                AttributeValue::S(format!("{seq:020}")),
            ))
            .await?
            .ok_or_else(|| Error::invalid_input(format!("no stored event {pid} {seq}")))?;
        let numbers = match event.get("tn") {
            Some(AttributeValue::M(m)) => m.clone(),
            None => return Ok(Vec::new()),
            Some(other) => {
                return Err(Error::invalid_input(format!(
                    "the tag numbers of {pid} {seq} are {other:?}, not a map"
                )))
            }
        };
        let mut keys = Vec::new();
        for (tag, number) in numbers {
            let number: u64 = match &number {
                AttributeValue::N(v) => v.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "the tag number of {pid} {seq} for {tag:?} is {number:?}"
                ))
            })?;
            let found = keys.len();
            for shard in 0..self.config.tag_shards {
                let entry = key(
                    format!("{namespace}|t|{shard:03}|{tag}"),
                    AttributeValue::S(format!("{number:020}")),
                );
                let copy = self.get(entry.clone()).await?;
                if copy.is_some_and(|c| {
                    c.get("pid").and_then(|v| v.as_s().ok()).map(String::as_str) == Some(pid)
                }) {
                    keys.push(entry);
                }
            }
            if keys.len() != found + 1 {
                return Err(Error::invalid_input(format!(
                    "the tag entry of {pid} {seq} under tag {tag:?} (number {number}) was found {} times where the layout puts it, not once",
                    keys.len() - found
                )));
            }
        }
        Ok(keys)
    }

    /// The item `key` of the journal table, read consistently.
    async fn get(&self, key: Item) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.journal_table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                storage("get_item")(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
            })?;
        Ok(out.item)
    }
}

fn key(pk: String, sk: AttributeValue) -> Item {
    Item::from([(PK.to_owned(), AttributeValue::S(pk)), (SK.to_owned(), sk)])
}

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        let config = DynamoDbConfig {
            namespace: namespace.to_owned(),
            ..self.config.clone()
        };
        Ok(DynamoDb::with_client(self.stores_client.clone(), config)?.stores())
    }

    async fn corrupt_event(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        let pid = persistence_id.as_str();
        // The event item, then every tag index entry that copies it.
        let event = key(
            format!("{namespace}|e|{pid}"),
            AttributeValue::S(format!("{sequence_nr:020}")),
        );
        let entries = self.tag_entry_keys(namespace, pid, sequence_nr).await?;
        let attribute = self
            .damage_item(&self.config.journal_table, event, what)
            .await?;
        for entry in entries {
            self.damage_item(&self.config.journal_table, entry, what)
                .await?;
        }
        Ok(attribute)
    }

    /// Deletes, with the raw client, every tag index entry and tag counter
    /// (`<ns>|t|<shard>|<tag>`), every registry item (`<ns>|p|<shard>`) and every new-id feed
    /// item (`<ns>|n|<bucket>|<shard>`) of `namespace`, found by a `Scan` of the journal
    /// table; events and the ids' `#` items stay.
    async fn drop_indexes(&self, namespace: &str) -> Result<()> {
        let table = &self.config.journal_table;
        let mut doomed: Vec<Item> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(table)
                .filter_expression(
                    "begins_with(pk, :t) OR begins_with(pk, :p) OR begins_with(pk, :n)",
                )
                .projection_expression("pk, sk")
                .expression_attribute_values(":t", AttributeValue::S(format!("{namespace}|t|")))
                .expression_attribute_values(":p", AttributeValue::S(format!("{namespace}|p|")))
                .expression_attribute_values(":n", AttributeValue::S(format!("{namespace}|n|")))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    storage("scan")(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
                })?;
            doomed.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        for k in doomed {
            self.client
                .delete_item()
                .table_name(table)
                .set_key(Some(k))
                .send()
                .await
                .map_err(|e| {
                    storage("delete_item")(
                        aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                    )
                })?;
        }
        Ok(())
    }

    async fn corrupt_snapshot(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        if what == Corruption::Tags {
            return Err(Error::unsupported("snapshots have no tags"));
        }
        // The kit's snapshots are small, so their payload is inline in the head item.
        let head = key(
            format!("{namespace}|s|{}", persistence_id.as_str()),
            AttributeValue::N(sequence_nr.to_string()),
        );
        self.damage_item(&self.config.snapshot_table, head, what)
            .await
    }

    fn page_size(&self) -> Option<u32> {
        Some(self.config.page_size)
    }

    fn live_delay_allowance(&self) -> std::time::Duration {
        self.live_delay_allowance
    }
}
