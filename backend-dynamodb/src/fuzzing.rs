//! The item decoders fed with whatever an item can hold, for the fuzz targets in `fuzz/`
//! (`cargo +nightly fuzz run dynamodb_items`) and this crate's tests. Not part of the API:
//! compiled with the `fuzzing` feature only.
//!
//! An item here is a map from attribute names (mostly the ones this crate writes, so the
//! decoders get past their first check) to values of every DynamoDB type, nested a few
//! levels, as a table can hold them whatever this crate wrote. Every decoder of stored items
//! (events, tag entries, snapshot heads, projection offsets, durable states and their
//! change entries, an id's highest item, large-write markers) must return the value or an
//! [`ErrorKind::Corrupt`] error, never panic and never another kind.

use arbitrary::{Arbitrary, Result as ArbitraryResult, Unstructured};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use persistence_api::{ErrorKind, PersistenceId, ProjectionId};

use crate::schema::{self, Item};

/// The attribute names the decoders read, and two that none does.
const NAMES: &[&str] = &[
    schema::PAYLOAD,
    schema::SERIALIZER,
    schema::MANIFEST,
    schema::EVENT_MANIFEST,
    schema::WRITER,
    schema::TIMESTAMP,
    schema::TAGS,
    schema::META_SERIALIZER,
    schema::META_MANIFEST,
    schema::META_BYTES,
    schema::TAG_NUMBERS,
    schema::TOKEN_TIME,
    schema::PID,
    schema::SEQ,
    schema::AW_FROM,
    schema::AW_TO,
    schema::AW_TIME,
    schema::TOMBSTONE,
    schema::HIGHEST,
    schema::DELETED_TO,
    schema::PURGED_TO,
    schema::COUNTER,
    schema::CHUNK_VERSION,
    schema::CHUNK_COUNT,
    schema::CHUNK_LENGTH,
    schema::OFFSET,
    schema::VERSION,
    schema::COMMIT_ID,
    schema::REVISION,
    schema::DELETED,
    schema::STATE_TAG,
    schema::CHANGE_NUMBER,
    schema::WRITE_ID,
    "pk",
    "sk",
    "x",
];

/// A value of any type; numbers are mostly number-like text, as DynamoDB keeps them.
fn value(u: &mut Unstructured<'_>, depth: u32) -> ArbitraryResult<AttributeValue> {
    let number = |u: &mut Unstructured<'_>| -> ArbitraryResult<String> {
        Ok(if u.arbitrary()? {
            i128::arbitrary(u)?.to_string()
        } else {
            String::arbitrary(u)?
        })
    };
    let kinds = if depth == 0 { 8 } else { 10 };
    Ok(match u.choose_index(kinds)? {
        0 => AttributeValue::S(u.arbitrary()?),
        1 => AttributeValue::N(number(u)?),
        2 => AttributeValue::B(Blob::new(Vec::<u8>::arbitrary(u)?)),
        3 => AttributeValue::Bool(u.arbitrary()?),
        4 => AttributeValue::Null(true),
        5 => AttributeValue::Ss(u.arbitrary()?),
        6 => AttributeValue::Ns(
            (0..u.choose_index(4)?)
                .map(|_| number(u))
                .collect::<ArbitraryResult<_>>()?,
        ),
        7 => AttributeValue::Bs(
            Vec::<Vec<u8>>::arbitrary(u)?
                .into_iter()
                .map(Blob::new)
                .collect(),
        ),
        8 => AttributeValue::L(
            (0..u.choose_index(4)?)
                .map(|_| value(u, depth - 1))
                .collect::<ArbitraryResult<_>>()?,
        ),
        _ => AttributeValue::M(item(u, depth - 1)?),
    })
}

fn item(u: &mut Unstructured<'_>, depth: u32) -> ArbitraryResult<Item> {
    let mut item = Item::new();
    for _ in 0..u.choose_index(12)? {
        let name = if u.ratio(1, 8)? {
            u.arbitrary::<String>()?
        } else {
            (*u.choose(NAMES)?).to_owned()
        };
        item.insert(name, value(u, depth)?);
    }
    Ok(item)
}

/// Panics (the fuzzer's finding) unless `result` is a value or a `Corrupt` error.
fn check<T>(what: &str, item: &Item, result: persistence_api::Result<T>) {
    if let Err(e) = result {
        assert_eq!(
            e.kind(),
            ErrorKind::Corrupt,
            "{what} of {item:?}: a stored item that does not decode must be Corrupt, got {e}"
        );
    }
}

/// Decodes `data` as an item and reads it as every kind of stored item.
pub fn items(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(item) = item(&mut u, 2) else { return };
    decode_all(&item);
}

/// Reads `item` as every kind of stored item.
fn decode_all(item: &Item) {
    let item = item.clone();
    let pid = PersistenceId::new("fuzz|1").expect("a valid id");
    check(
        "an event item",
        &item,
        schema::decode_event(pid.clone(), 1, item.clone()),
    );
    check("a tag entry", &item, schema::decode_tag_entry(item.clone()));
    check(
        "a snapshot head",
        &item,
        schema::decode_snapshot_head(&pid, 1, item.clone(), Vec::new()),
    );
    check("an event's sort key", &item, schema::event_seq(&item));
    let id = ProjectionId::new("fuzz", "0").expect("a valid projection id");
    check("an offset item", &item, schema::decode_offset(&id, &item));
    check(
        "a durable state item",
        &item,
        crate::durable_state::decode_state(&pid, item.clone()),
    );
    check(
        "a change entry",
        &item,
        crate::durable_state::decode_entry("fuzz", 1, &item),
    );
    // Decoders that answer absent values instead of errors: they must not panic.
    let _ = schema::Meta::of(&item);
    let _ = schema::large_write(&item);
    let _ = schema::is_tombstone(&item);
}

#[cfg(test)]
mod tests {
    use super::{decode_all, Item, NAMES};
    use crate::schema;
    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue;
    use persistence_api::{Payload, PersistenceId, PersistentEvent};

    /// The fuzz target's body over inputs of a fixed pseudo-random sequence.
    #[test]
    fn random_items_decode_or_are_corrupt() {
        for bytes in persistence_tck::fuzz::random_inputs(4000, 400) {
            super::items(&bytes);
        }
    }

    /// Items as this crate writes them (an event with metadata and tags as a tag entry,
    /// a snapshot head, an offset, a durable state), each with one attribute removed or
    /// replaced by every kind of value (random bytes seldom build a whole item): every
    /// decoder still returns the value or `Corrupt`.
    #[test]
    fn written_items_with_one_attribute_replaced_decode_or_are_corrupt() {
        let pid = PersistenceId::new("fuzz|1").unwrap();
        let event = PersistentEvent::new(pid.clone(), 3, Payload::new("s", "m", b"x".to_vec()))
            .with_tags(["t", "u"])
            .with_metadata(Payload::new("ms", "mm", b"y".to_vec()));
        let mut tag_entry = Item::new();
        schema::event_attrs(&mut tag_entry, &event, None);
        tag_entry.insert(schema::PID.into(), AttributeValue::S(pid.to_string()));
        tag_entry.insert(schema::SEQ.into(), AttributeValue::N("3".into()));
        tag_entry.insert("sk".into(), AttributeValue::S("12".into()));
        assert!(schema::decode_tag_entry(tag_entry.clone()).is_ok());
        let n = |v: &str| AttributeValue::N(v.to_owned());
        let state: Item = [
            (schema::REVISION, n("2")),
            (schema::TIMESTAMP, n("5")),
            (schema::SERIALIZER, AttributeValue::S("s".into())),
            (schema::MANIFEST, AttributeValue::S("m".into())),
            (schema::PAYLOAD, AttributeValue::B(Blob::new(b"x".to_vec()))),
            (schema::STATE_TAG, AttributeValue::S("t".into())),
            (schema::CHANGE_NUMBER, n("4")),
            (schema::PID, AttributeValue::S(pid.to_string())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert!(crate::durable_state::decode_state(&pid, state.clone()).is_ok());
        let offset: Item = [
            (schema::OFFSET, AttributeValue::S("sequence:3".into())),
            (schema::VERSION, n("1")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let id = persistence_api::ProjectionId::new("p", "0").unwrap();
        assert!(schema::decode_offset(&id, &offset).is_ok());
        let kinds = [
            AttributeValue::S(String::new()),
            AttributeValue::S("x".into()),
            n("-1"),
            n("1e3"),
            n("99999999999999999999999999999999999999"),
            AttributeValue::B(Blob::new(Vec::new())),
            AttributeValue::Bool(true),
            AttributeValue::Null(true),
            AttributeValue::L(vec![n("1"), AttributeValue::S(String::new())]),
            AttributeValue::M(Item::new()),
            AttributeValue::Ss(vec!["a".into()]),
        ];
        for base in [tag_entry, state, offset] {
            decode_all(&base);
            for name in NAMES {
                let mut removed = base.clone();
                removed.remove(*name);
                decode_all(&removed);
                for kind in &kinds {
                    let mut item = base.clone();
                    item.insert((*name).to_owned(), kind.clone());
                    decode_all(&item);
                }
            }
        }
    }
}
