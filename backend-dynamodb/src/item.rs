//! Events and snapshots as DynamoDB items, and the item size DynamoDB counts.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use persistence_api::{Payload, PersistenceId, PersistentEvent, Result, Timestamp};

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

pub(crate) fn get_bytes(item: &Item, name: &str) -> Vec<u8> {
    match item.get(name) {
        Some(AttributeValue::B(v)) => v.as_ref().to_vec(),
        _ => Vec::new(),
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

/// Decodes an event's attributes (the id and sequence number come from the caller),
/// moving the values out of the item instead of copying them.
pub(crate) fn decode_event(
    pid: PersistenceId,
    seq: u64,
    mut item: Item,
) -> Result<PersistentEvent> {
    let mut take_str = |name: &str| match item.remove(name) {
        Some(AttributeValue::S(v)) => v,
        _ => String::new(),
    };
    let serializer = take_str(SERIALIZER);
    let manifest = take_str(MANIFEST);
    let event_manifest = take_str(EVENT_MANIFEST);
    let writer_id = take_str(WRITER);
    let meta_serializer = take_str(META_SERIALIZER);
    let meta_manifest = take_str(META_MANIFEST);
    let mut take_bytes = |name: &str| match item.remove(name) {
        Some(AttributeValue::B(v)) => Some(v.into_inner()),
        _ => None,
    };
    let payload = take_bytes(PAYLOAD).unwrap_or_default();
    let metadata =
        take_bytes(META_BYTES).map(|bytes| Payload::new(meta_serializer, meta_manifest, bytes));
    let tags = match item.remove(TAGS) {
        Some(AttributeValue::L(l)) => l
            .into_iter()
            .map(|v| match v {
                AttributeValue::S(t) => Ok(t),
                _ => Err(corrupt(format!("event {pid}/{seq}: a tag is not a string"))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    Ok(PersistentEvent {
        persistence_id: pid,
        sequence_nr: seq,
        payload: Payload::new(serializer, manifest, payload),
        event_manifest,
        writer_id,
        timestamp: Timestamp::from_millis(get_i64(&item, TIMESTAMP).unwrap_or(0)),
        tags,
        metadata,
    })
}

/// The sequence number of an event item (from its sort key).
pub(crate) fn event_seq(item: &Item) -> Result<u64> {
    sk_str(item)
        .parse()
        .map_err(|_| corrupt(format!("event item with sort key {:?}", sk_str(item))))
}

/// Decodes a tag index entry: the event and its token.
pub(crate) fn decode_tag_entry(item: Item) -> Result<(PersistentEvent, String)> {
    let pid = PersistenceId::new(get_str(&item, PID))
        .map_err(|e| corrupt(format!("tag entry with a bad persistence id: {e}")))?;
    let seq = get_u64(&item, SEQ).ok_or_else(|| corrupt("tag entry without a sequence number"))?;
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
