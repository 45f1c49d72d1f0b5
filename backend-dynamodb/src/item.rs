//! Events and snapshots as DynamoDB items, and the item size DynamoDB counts.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use persistence_api::{Error, Payload, PersistenceId, PersistentEvent, Result, Timestamp};

use crate::error::corrupt;
use crate::schema::{PK, SK};

/// One item.
pub(crate) type Item = HashMap<String, AttributeValue>;

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
// longer complete (see `Inner::fence` in journal.rs).
/// On an id's highest/deleted-to item.
pub(crate) const HIGHEST: &str = "hi";
pub(crate) const DELETED_TO: &str = "del";

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
