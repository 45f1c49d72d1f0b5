//! The two tables, their keys, the layout of every item in them (attribute names, how an
//! event, a tag entry, a tombstone, an id's highest/deleted-to item, a snapshot head and a
//! projection offset are encoded and decoded, and the size DynamoDB counts), and [`create_schema`].
//!
//! Journal table (`pk` S hash key, `sk` S range key), every key prefixed by the journal
//! name `<j>` so several journals share the table:
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | event | `<j>\|e\|<persistence id>` | sequence number, 20 digits |
//! | highest / deleted-to of an id | `<j>\|e\|<persistence id>` | `#` (sorts below every event) |
//! | tombstone of a deleted event (`d` = 1, nothing else) | `<j>\|e\|<persistence id>` | sequence number, 20 digits |
//! | persistence-id registry | `<j>\|p\|<shard>` | persistence id |
//! | new-id feed | `<j>\|n\|<bucket start ms, 13 digits>\|<shard, 3 digits>` | `<write time ms, 13 digits>\|<id>` |
//! | tag index entry (a copy of the event; or a tombstone, `d` = 1, of a deleted event or a number its writer never used) | `<j>\|t\|<shard, 3 digits>\|<tag>` | the entry's number in its shard, 20 digits |
//! | tag number counter (`n` = the last number handed out) | `<j>\|t\|<shard, 3 digits>\|<tag>` | `~` (sorts above every number) |
//! | projection offset (`o`, `v`, `ts`, `ct`) | `<j>\|o\|<projection name>` | projection key |
//! | durable state (`rv`, `p`/`ps`/`pm`, `dl`, `sg`, `ts`, `ch`, `wi`) | `<j>\|d\|<persistence id>` | `#` |
//! | durable-state change entry (`pid`, `rv`, `tt`; or a tombstone, `d` = 1, of a number never used) | `<j>\|u\|<shard, 3 digits>\|<tag>` | the entry's number in its shard, 20 digits |
//! | durable-state change counter (`n`) | `<j>\|u\|<shard, 3 digits>\|<tag>` | `~` |
//!
//! Snapshot table (`pk` S hash key, `sk` N range key):
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | snapshot head (inline payload, or the chunk list's version) | `<j>\|s\|<persistence id>` | sequence number |
//! | chunk of a large snapshot | `<j>\|c\|<version uuid>` | chunk index |

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use persistence_api::{
    Error, Offset, Payload, PersistenceId, PersistentEvent, ProjectionId, Result, SelectedSnapshot,
    SnapshotMetadata, StoredOffset, Timestamp,
};

use crate::config::DynamoDbConfig;
use crate::error::{build_error, classify, corrupt, unretried, Class};
use crate::retry::RetryPolicy;

/// Partition key attribute of both tables.
pub const PK: &str = "pk";
/// Sort key attribute of both tables.
pub const SK: &str = "sk";
/// The sort key of an id's highest/deleted-to item.
pub(crate) const META_SK: &str = "#";
/// The sort key of a tag shard's counter item: above every entry number.
pub(crate) const COUNTER_SK: &str = "~";

// Attribute names: short, since DynamoDB counts their bytes in every item.
pub(crate) const PAYLOAD: &str = "p";
pub(crate) const SERIALIZER: &str = "ps";
pub(crate) const MANIFEST: &str = "pm";
pub(crate) const EVENT_MANIFEST: &str = "em";
pub(crate) const WRITER: &str = "w";
pub(crate) const TIMESTAMP: &str = "ts";
pub(crate) const TAGS: &str = "tg";
pub(crate) const META_SERIALIZER: &str = "ms";
pub(crate) const META_MANIFEST: &str = "mm";
pub(crate) const META_BYTES: &str = "mb";
/// On a tagged event: its tag index numbers, a map from tag to number (the entries' keys,
/// for deletes and clean-ups).
pub(crate) const TAG_NUMBERS: &str = "tn";
/// On tag entries: the write time (ms), which orders entries of different shards.
pub(crate) const TOKEN_TIME: &str = "tt";
/// On tag entries: the persistence id and sequence number.
pub(crate) const PID: &str = "pid";
pub(crate) const SEQ: &str = "seq";
/// Atomic writes spread over several transactions: first and last sequence number and the
/// write time (ms), on every event and tag entry of such a write.
pub(crate) const AW_FROM: &str = "af";
pub(crate) const AW_TO: &str = "at";
pub(crate) const AW_TIME: &str = "aw";
// `ab` is set on the first event of an unfinished large write that another writer is
// removing: the write's later transactions check that it is absent, so the write can no
// longer complete (see `Inner::fence` in large_write.rs).
/// Marks a tombstone: a deleted event's key kept with nothing else, so the sequence number
/// stays taken (a write there fails its `attribute_not_exists` condition) and the highest
/// survives. Replay and queries skip tombstones.
pub(crate) const TOMBSTONE: &str = "d";
/// On an id's highest/deleted-to item.
pub(crate) const HIGHEST: &str = "hi";
pub(crate) const DELETED_TO: &str = "del";
/// On an id's highest/deleted-to item: how far the physical delete got (every event up to
/// it is a tombstone).
pub(crate) const PURGED_TO: &str = "pd";
/// On a tag shard's counter item: the last number handed out.
pub(crate) const COUNTER: &str = "n";
/// On a chunked snapshot's head: the chunks' version id, their count and the total length.
pub(crate) const CHUNK_VERSION: &str = "cv";
pub(crate) const CHUNK_COUNT: &str = "cn";
pub(crate) const CHUNK_LENGTH: &str = "cl";
/// On a snapshot chunk: its bytes.
pub(crate) const CHUNK_DATA: &str = "d";
/// On a projection offset item: the offset as text (`Offset`'s `Display` form).
pub(crate) const OFFSET: &str = "o";
/// On a projection offset item: its version (1 for the first commit, one more per commit,
/// set or clear).
pub(crate) const VERSION: &str = "v";
/// On a projection offset item: the id of the commit (or set) that wrote it, a UUID, so a
/// retried request whose earlier attempt was applied recognizes its own write.
pub(crate) const COMMIT_ID: &str = "ct";

/// On a durable state item and its change entries: the revision.
pub(crate) const REVISION: &str = "rv";
/// On a durable state item: set (N 1) when the last change was a delete.
pub(crate) const DELETED: &str = "dl";
/// On a durable state item: its tag (S), absent when it has none.
pub(crate) const STATE_TAG: &str = "sg";
/// On a tagged durable state item: the number of its change entry in its tag's shard.
pub(crate) const CHANGE_NUMBER: &str = "ch";
/// On a durable state item: the id of the write that stored it (a UUID), so a retried
/// write whose earlier attempt was applied recognizes its own item.
pub(crate) const WRITE_ID: &str = "wi";
/// The sort key of a durable state item.
pub(crate) const STATE_SK: &str = "#";

/// DynamoDB's item size limit.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limit of actions per `TransactWriteItems`.
pub(crate) const MAX_TX_ITEMS: usize = 100;
/// DynamoDB's limit on the aggregate size of one transaction (4 MB), with a margin.
pub(crate) const MAX_TX_BYTES: usize = 4 * 1000 * 1000;
/// DynamoDB's limit of requests per `BatchWriteItem`.
pub(crate) const MAX_BATCH_WRITE: usize = 25;
/// DynamoDB's limit of keys per `BatchGetItem`.
pub(crate) const MAX_BATCH_GET: usize = 100;
/// Largest partition key DynamoDB accepts.
pub(crate) const MAX_PK_BYTES: usize = 2048;

/// The largest [`PersistentEvent::stored_size`] this backend declares: DynamoDB's 400 KB
/// item limit less room for keys, attribute names and numbers. The driver also checks the
/// exact item size of every event and tag entry before sending anything.
pub const MAX_EVENT_SIZE: usize = MAX_ITEM_BYTES - 4 * 1024;

/// The longest tag (bytes): a tag is part of its index entries' partition key.
pub const MAX_TAG_BYTES: usize = 1024;

/// The key prefixes of one journal name.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    j: String,
    tag_shards: u32,
    id_shards: u32,
    bucket_ms: i64,
}

impl Keys {
    pub(crate) fn new(config: &DynamoDbConfig) -> Self {
        Keys {
            j: config.namespace.clone(),
            tag_shards: config.tag_shards,
            id_shards: config.id_shards,
            bucket_ms: (config.feed_bucket_secs as i64).saturating_mul(1000).max(1),
        }
    }

    /// The start of the partition key of every item of one kind (the letter after the
    /// journal name in the table above: `e` events, `t` tag index, `p` id registry, `n`
    /// new-id feed, ...): `<j>|<kind>|`. The journal name holds no `|`, so no other
    /// journal's keys start with it.
    pub(crate) fn kind_prefix(&self, kind: char) -> String {
        format!("{}|{kind}|", self.j)
    }

    pub(crate) fn event_pk(&self, pid: &str) -> String {
        format!("{}|e|{pid}", self.j)
    }

    pub(crate) fn ids_pk(&self, shard: u32) -> String {
        format!("{}|p|{shard}", self.j)
    }

    pub(crate) fn id_shard(&self, pid: &str) -> u32 {
        (fnv1a(pid.as_bytes()) % self.id_shards as u64) as u32
    }

    pub(crate) fn ids_feed_pk(&self, bucket: i64, shard: u32) -> String {
        format!("{}|n|{bucket:013}|{shard:03}", self.j)
    }

    pub(crate) fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    pub(crate) fn id_shards(&self) -> u32 {
        self.id_shards
    }

    pub(crate) fn tag_shard(&self, pid: &str) -> u32 {
        // A different mix than the id shard, so the two spreads are independent.
        (fnv1a(pid.as_bytes()).rotate_left(17) % self.tag_shards as u64) as u32
    }

    pub(crate) fn tag_shards(&self) -> u32 {
        self.tag_shards
    }

    pub(crate) fn bucket_of(&self, time_ms: i64) -> i64 {
        time_ms - time_ms.rem_euclid(self.bucket_ms)
    }

    /// The partition of one shard of a tag's index: its entries and its number counter.
    pub(crate) fn tag_pk(&self, tag: &str, shard: u32) -> String {
        format!("{}|t|{shard:03}|{tag}", self.j)
    }

    pub(crate) fn snapshot_pk(&self, pid: &str) -> String {
        format!("{}|s|{pid}", self.j)
    }

    pub(crate) fn chunk_pk(&self, version: &str) -> String {
        format!("{}|c|{version}", self.j)
    }

    /// The partition of one durable state: a single item.
    pub(crate) fn state_pk(&self, pid: &str) -> String {
        format!("{}|d|{pid}", self.j)
    }

    /// The partition of one shard of a tag's durable-state change entries and their
    /// number counter (an id's shard is its tag shard, [`Keys::tag_shard`]).
    pub(crate) fn change_pk(&self, tag: &str, shard: u32) -> String {
        format!("{}|u|{shard:03}|{tag}", self.j)
    }

    /// The partition of a projection's offsets: one item per projection key. The name is
    /// the rest of the partition key after the namespace (which holds no `|`), so no two
    /// (name, key) pairs share an item.
    pub(crate) fn offset_pk(&self, name: &str) -> String {
        format!("{}|o|{name}", self.j)
    }
}

/// An event's sort key: its sequence number, zero-padded so text order is number order.
pub(crate) fn seq_sk(seq: u64) -> String {
    format!("{seq:020}")
}

/// A tag index entry's sort key: its number, zero-padded so text order is number order.
pub(crate) fn entry_sk(number: u64) -> String {
    format!("{number:020}")
}

/// The sort key of a new-id feed entry: write time (13 digits), `|`, the id.
pub(crate) fn feed_sk(time_ms: i64, pid: &str) -> String {
    format!("{time_ms:013}|{pid}")
}

/// The smallest string above every feed sort key written at `time_ms` or earlier.
pub(crate) fn feed_upper(time_ms: i64) -> String {
    format!("{time_ms:013}~")
}

/// The write time at the front of a feed sort key.
pub(crate) fn feed_time(sk: &str) -> Option<i64> {
    sk.get(..13)?.parse().ok()
}

/// FNV-1a, 64 bit: a stable hash (the shard of an id must not change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// Items: values, keys, and the layout of each kind of item.

/// One item.
pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v.to_vec()))
}

/// The marker of an atomic write stored over several transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LargeWrite {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) time_ms: i64,
}

/// The attributes of an event, without its key.
pub(crate) fn event_attrs(item: &mut Item, e: &PersistentEvent, large: Option<LargeWrite>) {
    if !e.payload.bytes.is_empty() {
        item.insert(PAYLOAD.into(), b(&e.payload.bytes));
    }
    put_str(item, SERIALIZER, &e.payload.serializer_id);
    put_str(item, MANIFEST, &e.payload.manifest);
    put_str(item, EVENT_MANIFEST, &e.event_manifest);
    put_str(item, WRITER, &e.writer_id);
    item.insert(TIMESTAMP.into(), n(e.timestamp.as_millis()));
    if !e.tags.is_empty() {
        item.insert(
            TAGS.into(),
            AttributeValue::L(e.tags.iter().map(|t| s(t.clone())).collect()),
        );
    }
    if let Some(m) = &e.metadata {
        item.insert(META_SERIALIZER.into(), s(m.serializer_id.clone()));
        item.insert(META_MANIFEST.into(), s(m.manifest.clone()));
        item.insert(META_BYTES.into(), b(&m.bytes));
    }
    if let Some(lw) = large {
        item.insert(AW_FROM.into(), n(lw.from));
        item.insert(AW_TO.into(), n(lw.to));
        item.insert(AW_TIME.into(), n(lw.time_ms));
    }
}

fn put_str(item: &mut Item, name: &str, v: &str) {
    if !v.is_empty() {
        item.insert(name.into(), s(v));
    }
}

pub(crate) fn get_str<'a>(item: &'a Item, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(v)) => v,
        _ => "",
    }
}

pub(crate) fn get_u64(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

pub(crate) fn get_i64(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

/// The sort key as text.
pub(crate) fn sk_str(item: &Item) -> &str {
    get_str(item, SK)
}

/// The large-write marker of a stored item, if it has one.
pub(crate) fn large_write(item: &Item) -> Option<LargeWrite> {
    Some(LargeWrite {
        from: get_u64(item, AW_FROM)?,
        to: get_u64(item, AW_TO)?,
        time_ms: get_i64(item, AW_TIME).unwrap_or(0),
    })
}

/// The DynamoDB type of a value, for messages.
fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        _ => "unknown",
    }
}

/// `attribute` holds a value of the wrong type.
fn wrong_type(attribute: &str, expected: &str, found: &AttributeValue) -> Error {
    corrupt(
        attribute,
        format!("expected type {expected}, found {}", type_name(found)),
    )
}

/// Takes a string attribute out of `item`: absent is empty (empty strings are not
/// stored), another type is corrupt.
pub(crate) fn take_str(item: &mut Item, name: &str) -> Result<String> {
    match item.remove(name) {
        None => Ok(String::new()),
        Some(AttributeValue::S(v)) => Ok(v),
        Some(other) => Err(wrong_type(name, "S", &other)),
    }
}

/// Takes a binary attribute out of `item`: `None` when absent, another type is corrupt.
pub(crate) fn take_bytes(item: &mut Item, name: &str) -> Result<Option<Vec<u8>>> {
    match item.remove(name) {
        None => Ok(None),
        Some(AttributeValue::B(v)) => Ok(Some(v.into_inner())),
        Some(other) => Err(wrong_type(name, "B", &other)),
    }
}

/// Decodes an event's attributes (the id and sequence number come from the caller),
/// moving the values out of the item instead of copying them. An attribute of the wrong
/// type, or missing where [`event_attrs`] always writes one, is an
/// [`persistence_api::ErrorKind::Corrupt`] error naming the event and the attribute.
pub(crate) fn decode_event(pid: PersistenceId, seq: u64, item: Item) -> Result<PersistentEvent> {
    match decode_attrs(item) {
        Ok(a) => Ok(PersistentEvent {
            persistence_id: pid,
            sequence_nr: seq,
            payload: a.payload,
            event_manifest: a.event_manifest,
            writer_id: a.writer_id,
            timestamp: a.timestamp,
            tags: a.tags,
            metadata: a.metadata,
        }),
        Err(e) => Err(e
            .with_persistence_id(pid.as_str())
            .with_sequence_range(seq, seq)),
    }
}

/// The decoded attributes of an event item, beside its key.
struct EventAttrs {
    payload: Payload,
    event_manifest: String,
    writer_id: String,
    timestamp: Timestamp,
    tags: Vec<String>,
    metadata: Option<Payload>,
}

fn decode_attrs(mut item: Item) -> Result<EventAttrs> {
    let serializer = take_str(&mut item, SERIALIZER)?;
    let manifest = take_str(&mut item, MANIFEST)?;
    let event_manifest = take_str(&mut item, EVENT_MANIFEST)?;
    let writer_id = take_str(&mut item, WRITER)?;
    let payload = take_bytes(&mut item, PAYLOAD)?.unwrap_or_default();
    let metadata = take_metadata(&mut item)?;
    let tags = match item.remove(TAGS) {
        None => Vec::new(),
        Some(AttributeValue::L(l)) => l
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                AttributeValue::S(t) => Ok(t),
                other => Err(corrupt(
                    TAGS,
                    format!("tag {i} is of type {}, not S", type_name(&other)),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => return Err(wrong_type(TAGS, "L", &other)),
    };
    let timestamp = match item.get(TIMESTAMP) {
        Some(AttributeValue::N(v)) => v.parse::<i64>().map_err(|e| {
            corrupt(
                TIMESTAMP,
                format!("{v:?} is not a number of milliseconds: {e}"),
            )
        })?,
        Some(other) => return Err(wrong_type(TIMESTAMP, "N", other)),
        None => {
            return Err(corrupt(
                TIMESTAMP,
                "missing (every event is written with one)",
            ))
        }
    };
    Ok(EventAttrs {
        payload: Payload::new(serializer, manifest, payload),
        event_manifest,
        writer_id,
        timestamp: Timestamp::from_millis(timestamp),
        tags,
        metadata,
    })
}

/// Takes the optional metadata (of an event or a snapshot) out of `item`: all three
/// attributes, or none, as the driver writes them; some without the others, or one of the
/// wrong type, is corrupt.
pub(crate) fn take_metadata(item: &mut Item) -> Result<Option<Payload>> {
    // The metadata is written as all three attributes or none.
    let meta_serializer = item.remove(META_SERIALIZER);
    let meta_manifest = item.remove(META_MANIFEST);
    let meta_bytes = item.remove(META_BYTES);
    match (meta_serializer, meta_manifest, meta_bytes) {
        (None, None, None) => Ok(None),
        (
            Some(AttributeValue::S(serializer)),
            Some(AttributeValue::S(manifest)),
            Some(AttributeValue::B(bytes)),
        ) => Ok(Some(Payload::new(serializer, manifest, bytes.into_inner()))),
        (serializer, manifest, bytes) => {
            let attrs = [
                (META_SERIALIZER, serializer, "S"),
                (META_MANIFEST, manifest, "S"),
                (META_BYTES, bytes, "B"),
            ];
            let err = attrs
                .iter()
                .find_map(|(name, v, expected)| match v {
                    None => Some(corrupt(
                        name,
                        "missing while other metadata attributes are set (metadata is stored with all three or none)",
                    )),
                    Some(v) if type_name(v) != *expected => Some(wrong_type(name, expected, v)),
                    Some(_) => None,
                })
                .unwrap_or_else(|| corrupt(META_BYTES, "inconsistent metadata attributes"));
            Err(err)
        }
    }
}

/// The sequence number of an event item (from its sort key).
pub(crate) fn event_seq(item: &Item) -> Result<u64> {
    sk_str(item).parse().map_err(|_| {
        corrupt(
            SK,
            format!(
                "the event item of partition {:?} has the sort key {:?}, not a sequence number",
                get_str(item, PK),
                sk_str(item)
            ),
        )
    })
}

/// Decodes a tag index entry: the event and its token.
pub(crate) fn decode_tag_entry(item: Item) -> Result<(PersistentEvent, String)> {
    let pid = PersistenceId::new(get_str(&item, PID)).map_err(|e| {
        corrupt(
            PID,
            format!(
                "the tag entry {:?} holds no valid persistence id: {e}",
                sk_str(&item)
            ),
        )
    })?;
    let seq = get_u64(&item, SEQ).ok_or_else(|| {
        corrupt(SEQ, "the tag entry holds no sequence number").with_persistence_id(pid.as_str())
    })?;
    let token = sk_str(&item).to_owned();
    Ok((decode_event(pid, seq, item)?, token))
}

/// The size DynamoDB counts for an item (an upper bound: names plus values, numbers at
/// their largest encoding).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(s) => s.len() / 2 + 2,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(l) => l.iter().map(String::len).sum(),
        AttributeValue::Ns(l) => l.iter().map(|s| s.len() / 2 + 2).sum(),
        AttributeValue::Bs(l) => l.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// A key of the journal table.
pub(crate) fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

/// The key attributes of an item.
pub(crate) fn key_of(item: &Item) -> Item {
    item.iter()
        .filter(|(k, _)| k.as_str() == PK || k.as_str() == SK)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The tombstone that replaces a deleted event, a skipped sequence number or an unused tag
/// number: its key, marked.
pub(crate) fn tombstone(mut key: Item) -> Item {
    key.insert(TOMBSTONE.into(), n(1));
    key
}

/// The tombstone of a deleted event: its key, marked, and the tag numbers the event took
/// (`tn`), so a rebuild of the tag index knows those numbers are taken and puts
/// tombstones there instead of leaving gaps that readers wait on.
pub(crate) fn deleted_event(event: &Item) -> Item {
    let mut t = tombstone(key_of(event));
    if let Some(numbers) = event.get(TAG_NUMBERS) {
        t.insert(TAG_NUMBERS.into(), numbers.clone());
    }
    t
}

/// Whether an event item or tag entry is a tombstone.
pub(crate) fn is_tombstone(item: &Item) -> bool {
    item.contains_key(TOMBSTONE)
}

/// An id's highest/deleted-to item.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    pub(crate) highest: u64,
    pub(crate) deleted_to: u64,
    /// How far the physical delete (events turned into tombstones) got.
    pub(crate) purged_to: u64,
}

impl Meta {
    /// Decodes an id's highest/deleted-to item (zeros where an attribute is absent).
    pub(crate) fn of(item: &Item) -> Meta {
        Meta {
            highest: get_u64(item, HIGHEST).unwrap_or(0),
            deleted_to: get_u64(item, DELETED_TO).unwrap_or(0),
            purged_to: get_u64(item, PURGED_TO).unwrap_or(0),
        }
    }
}

/// A key of the snapshot table (its sort key is a number).
pub(crate) fn snapshot_key(pk: String, sk: u64) -> Item {
    Item::from([(PK.to_owned(), s(pk)), (SK.to_owned(), n(sk))])
}

/// A snapshot head without its payload: the key, timestamp, manifests and metadata.
pub(crate) fn snapshot_head(pk: String, metadata: &SnapshotMetadata, snapshot: &Payload) -> Item {
    let mut head = snapshot_key(pk, metadata.sequence_nr);
    head.insert(TIMESTAMP.into(), n(metadata.timestamp.as_millis()));
    put_str(&mut head, SERIALIZER, &snapshot.serializer_id);
    put_str(&mut head, MANIFEST, &snapshot.manifest);
    if let Some(m) = &metadata.metadata {
        head.insert(META_SERIALIZER.into(), s(m.serializer_id.clone()));
        head.insert(META_MANIFEST.into(), s(m.manifest.clone()));
        head.insert(META_BYTES.into(), b(&m.bytes));
    }
    head
}

/// A binary attribute of `item`: empty when absent (empty bytes are not stored), another
/// type is corrupt.
pub(crate) fn bytes_of(item: &Item, name: &str) -> Result<Vec<u8>> {
    match item.get(name) {
        None => Ok(Vec::new()),
        Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
        Some(_) => Err(corrupt(name, "is not of type B")),
    }
}

/// The snapshot a head item holds, with its payload `bytes`. An attribute of the wrong
/// type, or metadata attributes set in part, is
/// [`persistence_api::ErrorKind::Corrupt`] naming the attribute (the caller adds the
/// snapshot's sequence number).
pub(crate) fn decode_snapshot_head(
    pid: &PersistenceId,
    seq: u64,
    mut head: Item,
    bytes: Vec<u8>,
) -> Result<SelectedSnapshot> {
    let metadata = take_metadata(&mut head)?;
    let timestamp = match head.get(TIMESTAMP) {
        Some(AttributeValue::N(v)) => v.parse::<i64>().map_err(|e| {
            corrupt(
                TIMESTAMP,
                format!("{v:?} is not a number of milliseconds: {e}"),
            )
        })?,
        None => {
            return Err(corrupt(
                TIMESTAMP,
                "missing (every snapshot is written with one)",
            ))
        }
        Some(_) => return Err(corrupt(TIMESTAMP, "is not of type N")),
    };
    Ok(SelectedSnapshot {
        metadata: SnapshotMetadata {
            persistence_id: pid.clone(),
            sequence_nr: seq,
            timestamp: Timestamp::from_millis(timestamp),
            metadata,
        },
        snapshot: Payload::new(
            take_str(&mut head, SERIALIZER)?,
            take_str(&mut head, MANIFEST)?,
            bytes,
        ),
    })
}

/// A projection offset item: its key, the offset as text, the version, the time it was
/// written (ms) and the id of the commit that wrote it.
pub(crate) fn offset_item(
    keys: &Keys,
    id: &ProjectionId,
    offset: &Offset,
    version: u64,
    commit_id: &str,
    now_ms: i64,
) -> Item {
    let mut item = key(keys.offset_pk(id.name()), id.key().to_owned());
    item.insert(OFFSET.into(), s(offset.to_string()));
    item.insert(VERSION.into(), n(version));
    item.insert(TIMESTAMP.into(), n(now_ms));
    item.insert(COMMIT_ID.into(), s(commit_id));
    item
}

/// The version of a stored offset item, for conflict messages: 0 when there is none, or
/// when its version does not decode (the read that follows reports that).
pub(crate) fn offset_version(item: Option<&Item>) -> u64 {
    item.and_then(|i| get_u64(i, VERSION)).unwrap_or(0)
}

/// Decodes a projection offset item: an offset that is missing, not a string or not in
/// `Offset`'s text form, or a version that is missing or not a number, is
/// [`persistence_api::ErrorKind::Corrupt`] naming the projection and the attribute.
pub(crate) fn decode_offset(id: &ProjectionId, item: &Item) -> Result<StoredOffset> {
    let bad = |attribute: &str, detail: String| {
        corrupt(
            attribute,
            format!("the stored offset of projection {id}: {detail}"),
        )
    };
    let offset = match item.get(OFFSET) {
        Some(AttributeValue::S(text)) => text.parse::<Offset>().map_err(|e| {
            bad(
                OFFSET,
                format!("{text:?} is not an offset ({})", e.message()),
            )
        })?,
        Some(other) => {
            return Err(bad(
                OFFSET,
                format!("expected type S, found {}", type_name(other)),
            ))
        }
        None => {
            return Err(bad(
                OFFSET,
                "missing (every offset item is written with one)".into(),
            ))
        }
    };
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(v)) => v
            .parse::<u64>()
            .map_err(|_| bad(VERSION, format!("{v:?} is not a version number")))?,
        Some(other) => {
            return Err(bad(
                VERSION,
                format!("expected type N, found {}", type_name(other)),
            ))
        }
        None => {
            return Err(bad(
                VERSION,
                "missing (every offset item is written with one)".into(),
            ))
        }
    };
    Ok(StoredOffset { offset, version })
}

// The tables.

/// One table as [`create_schema`] creates it: its name, and the type of its range key `sk`
/// (the hash key `pk` is a string in both). The create request, the printed
/// `aws dynamodb create-table` text and the check are all built from this.
struct TableSpec<'a> {
    name: &'a str,
    sk_type: ScalarAttributeType,
}

impl TableSpec<'_> {
    /// The key attributes: name, type and role, hash key first.
    fn keys(&self) -> [(&'static str, ScalarAttributeType, KeyType); 2] {
        [
            (PK, ScalarAttributeType::S, KeyType::Hash),
            (SK, self.sk_type.clone(), KeyType::Range),
        ]
    }
}

/// The journal table (`sk` a string) and the snapshot table (`sk` a number), on-demand
/// billing, no secondary index.
fn tables(config: &DynamoDbConfig) -> [TableSpec<'_>; 2] {
    [
        TableSpec {
            name: &config.journal_table,
            sk_type: ScalarAttributeType::S,
        },
        TableSpec {
            name: &config.snapshot_table,
            sk_type: ScalarAttributeType::N,
        },
    ]
}

/// Creates the journal and snapshot tables if they do not exist (on-demand billing), and
/// waits until both are active. Idempotent: existing tables are left as they are.
pub async fn create_schema(client: &Client, config: &DynamoDbConfig) -> Result<()> {
    config.validate()?;
    let retry = RetryPolicy::new(config);
    for spec in tables(config) {
        create_table(client, &retry, &spec).await?;
    }
    for spec in tables(config) {
        wait_active(client, &retry, spec.name).await?;
    }
    Ok(())
}

/// The `aws dynamodb create-table` commands that create what [`create_schema`] creates, one
/// per table, each with its `--cli-input-json` (the `CreateTable` request body), for
/// creating the tables by hand or in infrastructure code.
///
/// ```
/// let text = persistence_dynamodb::create_table_commands(&Default::default());
/// assert!(text.contains("--table-name persistence_journal"));
/// assert!(text.contains("\"KeyType\": \"RANGE\""));
/// ```
pub fn create_table_commands(config: &DynamoDbConfig) -> String {
    let mut out = String::new();
    for spec in tables(config) {
        let keys = spec.keys();
        let attributes = keys
            .iter()
            .map(|(n, t, _)| format!("AttributeName={n},AttributeType={}", t.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        let schema = keys
            .iter()
            .map(|(n, _, k)| format!("AttributeName={n},KeyType={}", k.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        let json_attributes = keys
            .iter()
            .map(|(n, t, _)| {
                format!(
                    "    {{ \"AttributeName\": \"{n}\", \"AttributeType\": \"{}\" }}",
                    t.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join(",\n");
        let json_schema = keys
            .iter()
            .map(|(n, _, k)| {
                format!(
                    "    {{ \"AttributeName\": \"{n}\", \"KeyType\": \"{}\" }}",
                    k.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join(",\n");
        let billing = BillingMode::PayPerRequest;
        out.push_str(&format!(
            "aws dynamodb create-table --table-name {name} \\\n  --billing-mode {billing} \\\n  \
             --attribute-definitions {attributes} \\\n  --key-schema {schema}\n\n\
             # the same request as --cli-input-json:\n\
             # {{\n\
             #   \"TableName\": \"{name}\",\n\
             #   \"BillingMode\": \"{billing}\",\n\
             #   \"AttributeDefinitions\": [\n{json_attributes}\n#   ],\n\
             #   \"KeySchema\": [\n{json_schema}\n#   ]\n\
             # }}\n\n",
            name = spec.name,
            billing = billing.as_str(),
            json_attributes = comment(&json_attributes),
            json_schema = comment(&json_schema),
        ));
    }
    out
}

/// Prefixes every line of `text` with `# ` (for JSON shown inside a shell script).
fn comment(text: &str) -> String {
    text.lines()
        .map(|l| format!("# {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One way a table differs from what [`create_schema`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDifference {
    /// What differs: `table "persistence_journal"`, `key schema of "..."`, `attribute
    /// definition "sk" of "..."`, `global secondary index "..." of "..."`.
    pub object: String,
    /// What [`create_schema`] creates.
    pub expected: String,
    /// What DynamoDB describes; `None` when the object is missing.
    pub found: Option<String>,
}

impl std::fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            None => write!(f, "missing {} (expected {})", self.object, self.expected),
            Some(found) => write!(
                f,
                "different {}: expected {}, found {}",
                self.object, self.expected, found
            ),
        }
    }
}

/// Compares the journal and snapshot tables of `config` with what [`create_schema`] makes,
/// through `DescribeTable`: a missing table, a different key schema (names, types, hash and
/// range), attribute definitions, a table that is not active, and global secondary indexes
/// (none is expected, so any found is listed as a difference: the stores neither read nor
/// maintain one). An empty list means the tables are as created.
pub async fn check_schema(
    client: &Client,
    config: &DynamoDbConfig,
) -> Result<Vec<SchemaDifference>> {
    config.validate()?;
    let retry = RetryPolicy::new(config);
    let mut out = Vec::new();
    for spec in tables(config) {
        let name = spec.name;
        let keys = spec.keys();
        let describe_keys = |k: &[(String, String, String)]| {
            k.iter()
                .map(|(n, t, r)| format!("{n} {t} {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let want: Vec<(String, String, String)> = keys
            .iter()
            .map(|(n, t, k)| {
                (
                    n.to_string(),
                    t.as_str().to_string(),
                    k.as_str().to_string(),
                )
            })
            .collect();
        let described = retry
            .run("check_schema", || {
                client.describe_table().table_name(name).send()
            })
            .await;
        let table = match described {
            Ok(d) => d.table,
            Err(f) if f.class == Class::NotFound => None,
            Err(f) => return Err(f.into_error().with_operation("check_schema")),
        };
        let Some(table) = table else {
            out.push(SchemaDifference {
                object: format!("table {name:?}"),
                expected: format!("keys {}", describe_keys(&want)),
                found: None,
            });
            continue;
        };
        let types: HashMap<&str, &str> = table
            .attribute_definitions()
            .iter()
            .map(|a| (a.attribute_name(), a.attribute_type().as_str()))
            .collect();
        let have: Vec<(String, String, String)> = table
            .key_schema()
            .iter()
            .map(|k| {
                let n = k.attribute_name();
                (
                    n.to_string(),
                    types.get(n).copied().unwrap_or("?").to_string(),
                    k.key_type().as_str().to_string(),
                )
            })
            .collect();
        if have != want {
            out.push(SchemaDifference {
                object: format!("key schema of {name:?}"),
                expected: describe_keys(&want),
                found: Some(describe_keys(&have)),
            });
        }
        for (n, t, _) in &want {
            match types.get(n.as_str()) {
                Some(found) if found == t => {}
                found => out.push(SchemaDifference {
                    object: format!("attribute definition {n:?} of {name:?}"),
                    expected: t.clone(),
                    found: found.map(|f| f.to_string()),
                }),
            }
        }
        for gsi in table.global_secondary_indexes() {
            out.push(SchemaDifference {
                object: format!(
                    "global secondary index {:?} of {name:?}",
                    gsi.index_name().unwrap_or("?")
                ),
                expected: "no index (the stores use none)".to_string(),
                found: Some("present".to_string()),
            });
        }
        match table.table_status() {
            Some(TableStatus::Active) | None => {}
            Some(status) => out.push(SchemaDifference {
                object: format!("status of {name:?}"),
                expected: "ACTIVE".to_string(),
                found: Some(status.as_str().to_string()),
            }),
        }
    }
    Ok(out)
}

fn attr(name: &str, t: ScalarAttributeType) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .map_err(build_error)
}

fn key_schema(name: &str, t: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .map_err(build_error)
}

async fn create_table(client: &Client, retry: &RetryPolicy, spec: &TableSpec<'_>) -> Result<()> {
    let table = spec.name;
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, t, _) in spec.keys() {
        req = req.attribute_definitions(attr(name, t)?);
    }
    for (name, _, k) in spec.keys() {
        req = req.key_schema(key_schema(name, k)?);
    }
    match retry.run("create_schema", || req.clone().send()).await {
        Ok(_) => {
            tracing::info!(table, "created DynamoDB table");
            Ok(())
        }
        Err(f) => {
            let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&f.err);
            if code == Some("ResourceInUseException") {
                Ok(())
            } else {
                Err(f.into_error().with_operation("create_schema"))
            }
        }
    }
}

async fn wait_active(client: &Client, retry: &RetryPolicy, table: &str) -> Result<()> {
    for _ in 0..600 {
        let out = retry
            .run("create_schema", || {
                client.describe_table().table_name(table).send()
            })
            .await;
        match out {
            Ok(out) => {
                if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(f) if f.class == Class::NotFound => {}
            Err(f) => return Err(f.into_error().with_operation("create_schema")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::config(format!(
        "DynamoDB table {table} did not become active within 5 minutes"
    )))
}

/// Deletes both tables (for tests and tear-down); missing tables are fine.
pub async fn delete_tables(client: &Client, config: &DynamoDbConfig) -> Result<()> {
    for table in [&config.journal_table, &config.snapshot_table] {
        match client.delete_table().table_name(table).send().await {
            Ok(_) => {}
            Err(e) if classify(&e) == Class::NotFound => {}
            Err(e) => return Err(unretried(e).with_operation("delete_tables")),
        }
    }
    Ok(())
}
