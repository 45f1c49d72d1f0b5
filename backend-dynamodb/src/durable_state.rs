//! [`DynamoDbDurableStateStore`]: the latest state of each id, one item per id in the
//! journal table, written with a revision condition; and its change queries, numbered
//! change entries per (tag, shard) read like the tag index (`tag_index.rs`).
//!
//! # Writes
//! The state item is `<j>|d|<id>` / `#`. Revision 1 is conditioned on
//! `attribute_not_exists(pk)`, revision n on `rv = n - 1`, both with
//! `ReturnValuesOnConditionCheckFailure = ALL_OLD`, so a refused write learns the stored
//! revision from the refusal itself (no read). An untagged state is one conditional
//! `PutItem`. A tagged one takes the next number of its (tag, shard) counter (`UpdateItem
//! ADD`, as a tagged event does) and puts the state item and a change entry under that
//! number in one `TransactWriteItems`, the entry conditioned on its number being free: a
//! reader that gave up waiting for the number (after `tag_gap_timeout_ms`) filled it, the
//! transaction fails whole, and the write takes a new number and tries again. A delete
//! reads the item first (one consistent `GetItem`: it needs the tag to keep, and refuses a
//! wrong revision without writing), then writes the deleted marker the same way.
//!
//! # Change queries
//! A change entry holds the id and the revision only; the query reads each shard's entries
//! in number order (gaps waited for and filled exactly as in the tag index, so no change
//! is ever passed over), merges the shards by write time, and fetches the states of the
//! entries it delivers (`BatchGetItem`, strongly consistent, 100 ids a request). An entry
//! whose state has moved on is superseded: the later change has its own entry further on
//! (skipped here, delivered there), or the state left the tag (skipped). The offset is the
//! last number of every shard, `Offset::Token("c0,c1,...")`, as for events by tag.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use futures::{StreamExt, TryStreamExt};
use persistence_api::{
    revision_conflict, ChangeStream, DurableState, DurableStateChange, DurableStateStore, Error,
    ErrorKind, Offset, Payload, PersistenceId, QueryMode, Result, Revision, Timestamp,
};

use crate::core::{now_ms, Inner};
use crate::error::{build_error, corrupt, Class};
use crate::schema::{
    b, entry_sk, get_str, get_u64, is_tombstone, item_size, key, n, s, take_bytes, take_str, Item,
    CHANGE_NUMBER, DELETED, MANIFEST, MAX_BATCH_GET, MAX_ITEM_BYTES, MAX_TAG_BYTES, PAYLOAD, PID,
    REVISION, SERIALIZER, STATE_SK, STATE_TAG, TIMESTAMP, TOKEN_TIME, WRITE_ID,
};
use crate::tag_index::{encode_offset, entry_page, Gaps};

/// The largest state ([`Payload::stored_size`]) this backend stores: DynamoDB's 400 KB
/// item limit less 4 KB for the key (up to 255 bytes of id), the tag (up to
/// [`crate::MAX_TAG_BYTES`]) and the other attributes. Larger states are
/// [`ErrorKind::Rejected`] by the checking layer before any request; the driver also
/// checks the exact item size. Why not chunks as for snapshots: the README's *Durable
/// state*.
pub const MAX_STATE_SIZE: usize = MAX_ITEM_BYTES - 4 * 1024;

/// How often one write takes new numbers after readers filled the ones it took.
const MAX_REFILLS: usize = 5;

/// The cancellation code of a transaction item whose condition failed.
const CONDITION_FAILED: &str = "ConditionalCheckFailed";

/// The durable-state store on DynamoDB (what [`crate::DynamoDb::stores`] puts in
/// [`persistence_api::Stores::durable_state`]): one item per id in the journal table,
/// under the namespace's key prefix, and numbered change entries per tag (see the README's
/// table layout and *Durable state*).
#[derive(Clone)]
pub struct DynamoDbDurableStateStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbDurableStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbDurableStateStore")
            .field("table", &self.inner.journal_table())
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

/// How a conditional write of a state ended, short of an error.
enum Written {
    Done,
    /// The revision condition failed: the stored item as DynamoDB returned it.
    Refused(Option<Item>),
    /// A reader filled the change entry's number first (tagged writes only).
    Filled,
}

/// The condition of a write at `revision`, and the value it names (none for 1: DynamoDB
/// refuses values an expression does not use).
fn revision_condition(
    revision: Revision,
) -> (&'static str, Option<HashMap<String, AttributeValue>>) {
    if revision <= 1 {
        ("attribute_not_exists(pk)", None)
    } else {
        (
            "rv = :prev",
            Some(HashMap::from([(":prev".to_owned(), n(revision - 1))])),
        )
    }
}

impl DynamoDbDurableStateStore {
    fn state_key(&self, pid: &str) -> Item {
        key(self.inner.keys.state_pk(pid), STATE_SK.to_owned())
    }

    /// The item of `pid` at `revision`: the payload, or the deleted mark when `None`.
    fn state_item(
        &self,
        pid: &str,
        revision: Revision,
        payload: Option<&Payload>,
        tag: Option<&str>,
        write_id: &str,
        change: Option<u64>,
    ) -> Item {
        let mut item = self.state_key(pid);
        item.insert(REVISION.into(), n(revision));
        match payload {
            Some(p) => {
                item.insert(PAYLOAD.into(), b(&p.bytes));
                if !p.serializer_id.is_empty() {
                    item.insert(SERIALIZER.into(), s(p.serializer_id.clone()));
                }
                if !p.manifest.is_empty() {
                    item.insert(MANIFEST.into(), s(p.manifest.clone()));
                }
            }
            None => {
                item.insert(DELETED.into(), n(1));
            }
        }
        if let Some(t) = tag {
            item.insert(STATE_TAG.into(), s(t));
        }
        if let Some(c) = change {
            item.insert(CHANGE_NUMBER.into(), n(c));
        }
        item.insert(TIMESTAMP.into(), n(now_ms()));
        item.insert(WRITE_ID.into(), s(write_id));
        item
    }

    /// The stored item of `pid`, read strongly consistently.
    async fn read_item(&self, operation: &'static str, pid: &str) -> Result<Option<Item>> {
        self.inner.get_item(operation, self.state_key(pid)).await
    }

    /// Writes `revision` of `id` (a delete when `payload` is `None`) if the stored revision
    /// is `revision - 1`, with its change entry when it has a tag.
    async fn write(
        &self,
        operation: &'static str,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<Payload>,
        tag: Option<String>,
    ) -> Result<()> {
        let pid = id.as_str();
        let reject = |msg: String| Error::new(ErrorKind::Rejected, msg).with_persistence_id(pid);
        if let Some(t) = tag.as_deref() {
            if t.len() > MAX_TAG_BYTES {
                return Err(reject(format!(
                    "the tag of the state of {id} is {} bytes; at most {MAX_TAG_BYTES} are allowed",
                    t.len()
                )));
            }
        }
        let write_id = uuid::Uuid::new_v4().to_string();
        // The exact item, with the widest change number there can be, before any request.
        let widest = tag.as_ref().map(|_| u64::MAX);
        let size = item_size(&self.state_item(
            pid,
            revision,
            payload.as_ref(),
            tag.as_deref(),
            &write_id,
            widest,
        ));
        if size > MAX_ITEM_BYTES {
            return Err(reject(format!(
                "the state of {id} takes {size} bytes as an item; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"
            )));
        }
        let mut refills = 0;
        loop {
            let written = match tag.as_deref() {
                None => {
                    let item =
                        self.state_item(pid, revision, payload.as_ref(), None, &write_id, None);
                    self.put_state(operation, revision, item).await?
                }
                Some(t) => {
                    self.transact_state(operation, id, revision, payload.as_ref(), t, &write_id)
                        .await?
                }
            };
            match written {
                Written::Done => return Ok(()),
                Written::Filled => {
                    refills += 1;
                    if refills > MAX_REFILLS {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "readers of tag {:?} filled this state write's change numbers {refills} times (each attempt took longer than tag_gap_timeout_ms, {} ms); nothing was stored",
                                tag.as_deref().unwrap_or(""),
                                self.inner.config.tag_gap_timeout.as_millis()
                            ),
                        )
                        .with_persistence_id(pid));
                    }
                }
                Written::Refused(old) => {
                    let old = match old {
                        Some(item) => Some(item),
                        // Refused at revision 1 means an item is there: a server that does
                        // not return it is asked (once).
                        None if revision <= 1 => self.read_item(operation, pid).await?,
                        None => None,
                    };
                    return Err(revision_conflict(
                        id,
                        stored_revision(old.as_ref()),
                        revision,
                    ));
                }
            }
        }
    }

    /// An untagged state: one conditional `PutItem`.
    async fn put_state(
        &self,
        operation: &'static str,
        revision: Revision,
        item: Item,
    ) -> Result<Written> {
        let (condition, values) = revision_condition(revision);
        let write_id = get_str(&item, WRITE_ID).to_owned();
        let req = self
            .inner
            .client
            .put_item()
            .table_name(self.inner.journal_table())
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self.inner.retry.run(operation, || req.clone().send()).await {
            Ok(_) => Ok(Written::Done),
            Err(f) if f.class == Class::Conflict => {
                let old = match f.err.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(e)) => e.item().cloned(),
                    _ => None,
                };
                // An earlier attempt of this very write, applied with its answer lost.
                if f.ambiguous
                    && old
                        .as_ref()
                        .is_some_and(|o| get_str(o, WRITE_ID) == write_id)
                {
                    return Ok(Written::Done);
                }
                Ok(Written::Refused(old))
            }
            Err(f) => Err(f.into_error()),
        }
    }

    /// A tagged state: a number from the (tag, shard) counter, then the state item and its
    /// change entry in one `TransactWriteItems`.
    async fn transact_state(
        &self,
        operation: &'static str,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<&Payload>,
        tag: &str,
        write_id: &str,
    ) -> Result<Written> {
        let inner = &self.inner;
        let pid = id.as_str();
        let change_pk = inner.keys.change_pk(tag, inner.keys.tag_shard(pid));
        let number = inner.add_to_counter(&change_pk, 1).await?;
        let item = self.state_item(pid, revision, payload, Some(tag), write_id, Some(number));
        let mut entry = key(change_pk.clone(), entry_sk(number));
        entry.insert(PID.into(), s(pid));
        entry.insert(REVISION.into(), n(revision));
        entry.insert(TOKEN_TIME.into(), n(inner.token_time()));
        let (condition, values) = revision_condition(revision);
        let state_put = Put::builder()
            .table_name(inner.journal_table())
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let entry_put = Put::builder()
            .table_name(inner.journal_table())
            .set_item(Some(entry))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)?;
        let req = inner
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(state_put).build())
            .transact_items(TransactWriteItem::builder().put(entry_put).build())
            .client_request_token(uuid::Uuid::new_v4().to_string());
        let f = match inner.retry.run(operation, || req.clone().send()).await {
            Ok(_) => return Ok(Written::Done),
            Err(f) => f,
        };
        let reasons = match f.err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                e.cancellation_reasons().to_vec()
            }
            _ => Vec::new(),
        };
        let failed = |i: usize| reasons.get(i).and_then(|r| r.code()) == Some(CONDITION_FAILED);
        if f.class == Class::Conflict && failed(0) {
            let old = reasons[0].item().cloned();
            if f.ambiguous
                && old
                    .as_ref()
                    .is_some_and(|o| get_str(o, WRITE_ID) == write_id)
            {
                return Ok(Written::Done);
            }
            self.give_back(operation, &change_pk, number).await;
            return Ok(Written::Refused(old));
        }
        if f.class == Class::Conflict && failed(1) {
            // A reader filled the number: nothing of this attempt is stored.
            return Ok(Written::Filled);
        }
        if !f.ambiguous && !f.class.ambiguous() {
            self.give_back(operation, &change_pk, number).await;
        }
        Err(f.into_error())
    }

    /// A tombstone on a change number a write took and surely did not use, so readers need
    /// not wait for it (best effort: a reader fills it after the gap timeout otherwise).
    async fn give_back(&self, operation: &'static str, change_pk: &str, number: u64) {
        if let Err(e) = self.inner.fill(operation, change_pk, number).await {
            tracing::debug!(error = %e, "could not give back an unused change number; readers fill it after tag_gap_timeout_ms");
        }
    }
}

/// The revision of a stored state item (0 when there is none, or when it does not decode:
/// the conflict message then says 0, and a `get` reports the damage).
fn stored_revision(item: Option<&Item>) -> Revision {
    item.and_then(|i| get_u64(i, REVISION)).unwrap_or(0)
}

/// A required number attribute of the state of `id`.
fn required_u64(id: &PersistenceId, item: &Item, name: &str) -> Result<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
            corrupt(name, format!("the state of {id}: {v:?} is not a number"))
                .with_persistence_id(id.as_str())
        }),
        Some(other) => Err(corrupt(
            name,
            format!(
                "the state of {id}: expected type N, found {}",
                type_label(other)
            ),
        )
        .with_persistence_id(id.as_str())),
        None => Err(corrupt(
            name,
            format!("the state of {id}: missing (every state item is written with one)"),
        )
        .with_persistence_id(id.as_str())),
    }
}

fn type_label(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        _ => "a set",
    }
}

/// A decoded state item, with the number of its change entry.
pub(crate) struct Stored {
    state: DurableState,
    change: Option<u64>,
}

/// Decodes the state item of `id`: a missing or ill-typed attribute is
/// [`ErrorKind::Corrupt`] naming the id and the attribute.
pub(crate) fn decode_state(id: &PersistenceId, mut item: Item) -> Result<Stored> {
    let named = |e: Error| {
        Error::new(
            ErrorKind::Corrupt,
            format!("the state of {id}: {}", e.message()),
        )
        .with_persistence_id(id.as_str())
    };
    let revision = required_u64(id, &item, REVISION)?;
    let timestamp = required_u64(id, &item, TIMESTAMP)?;
    let deleted = match item.get(DELETED) {
        None => false,
        Some(AttributeValue::N(_)) => true,
        Some(other) => {
            return Err(named(corrupt(
                DELETED,
                format!("expected type N, found {}", type_label(other)),
            )))
        }
    };
    let tag = match item.remove(STATE_TAG) {
        None => None,
        Some(AttributeValue::S(t)) => Some(t),
        Some(other) => {
            return Err(named(corrupt(
                STATE_TAG,
                format!("expected type S, found {}", type_label(&other)),
            )))
        }
    };
    let change = match item.get(CHANGE_NUMBER) {
        None => None,
        Some(_) => Some(required_u64(id, &item, CHANGE_NUMBER)?),
    };
    let payload = if deleted {
        None
    } else {
        let bytes = take_bytes(&mut item, PAYLOAD)
            .map_err(named)?
            .ok_or_else(|| {
                named(corrupt(
                    PAYLOAD,
                    "missing on a state that is not deleted (every upsert stores one)",
                ))
            })?;
        Some(Payload::new(
            take_str(&mut item, SERIALIZER).map_err(named)?,
            take_str(&mut item, MANIFEST).map_err(named)?,
            bytes,
        ))
    };
    Ok(Stored {
        state: DurableState {
            persistence_id: id.clone(),
            revision,
            payload,
            tag,
            timestamp: Timestamp::from_millis(timestamp as i64),
        },
        change,
    })
}

#[async_trait]
impl DurableStateStore for DynamoDbDurableStateStore {
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>> {
        self.read_item("get_state", persistence_id.as_str())
            .await?
            .map(|item| decode_state(persistence_id, item).map(|s| s.state))
            .transpose()
    }

    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()> {
        self.write("upsert_state", persistence_id, revision, Some(payload), tag)
            .await
    }

    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()> {
        let operation = "delete_state";
        // The tag to keep, and the revision: a wrong one is refused without a write.
        let old = self.read_item(operation, persistence_id.as_str()).await?;
        let stored = stored_revision(old.as_ref());
        if revision != stored.saturating_add(1) {
            return Err(revision_conflict(persistence_id, stored, revision));
        }
        let tag = old.and_then(|mut i| match i.remove(STATE_TAG) {
            Some(AttributeValue::S(t)) => Some(t),
            _ => None,
        });
        self.write(operation, persistence_id, revision, None, tag)
            .await
    }

    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream {
        Box::pin(changes(self.inner.clone(), tag, offset, mode.is_live()))
    }
}

/// The last number of every shard in a change query's offset.
fn decode_change_offset(offset: Offset, shards: usize) -> Result<Vec<u64>> {
    match offset {
        Offset::NoOffset | Offset::Sequence(0) => Ok(vec![0; shards]),
        Offset::Token(t) => {
            let parts: Option<Vec<u64>> = t.split(',').map(|p| p.parse().ok()).collect();
            match parts {
                Some(p) if p.len() == shards => Ok(p),
                _ => Err(Error::invalid_input(format!(
                    "{t:?} is not a change query offset of this store (the last number of each of its {shards} tag shards, comma-separated)"
                ))),
            }
        }
        other => Err(Error::invalid_input(format!(
            "the DynamoDB backend's change query offsets are Offset::Token values, got {other:?}"
        ))),
    }
}

/// A change entry read, not yet delivered.
pub(crate) struct Entry {
    time: i64,
    number: u64,
    pid: String,
    revision: Revision,
}

/// One shard of a tag's change entries, as a reader walks it.
struct ChangeShard {
    pk: String,
    /// Every number up to this one is delivered, skipped or buffered.
    read: u64,
    /// Read up to this number (the counter at the start of a current query).
    limit: u64,
    buf: VecDeque<Entry>,
    gaps: Gaps,
}

/// Decodes a change entry of shard `pk`.
pub(crate) fn decode_entry(pk: &str, number: u64, item: &Item) -> Result<Entry> {
    let pid = get_str(item, PID);
    if pid.is_empty() {
        return Err(corrupt(
            PID,
            format!("the change entry {number} of {pk:?} holds no persistence id"),
        ));
    }
    let revision = get_u64(item, REVISION).ok_or_else(|| {
        corrupt(
            REVISION,
            format!("the change entry {number} of {pk:?} ({pid}) holds no revision"),
        )
        .with_persistence_id(pid)
    })?;
    Ok(Entry {
        time: crate::schema::get_i64(item, TOKEN_TIME).unwrap_or(0),
        number,
        pid: pid.to_owned(),
        revision,
    })
}

impl Inner {
    /// The state items of `pids`, by id: `BatchGetItem`s of 100 keys, strongly
    /// consistent, four at a time, unprocessed keys asked again with backoff.
    async fn states(
        &self,
        operation: &'static str,
        pids: Vec<String>,
    ) -> Result<HashMap<String, Item>> {
        let batches: Vec<Vec<String>> = pids.chunks(MAX_BATCH_GET).map(<[_]>::to_vec).collect();
        let found: Vec<Vec<(String, Item)>> = futures::stream::iter(batches)
            .map(|batch| self.states_batch(operation, batch))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn states_batch(
        &self,
        operation: &'static str,
        pids: Vec<String>,
    ) -> Result<Vec<(String, Item)>> {
        let by_pk: HashMap<String, String> = pids
            .into_iter()
            .map(|p| (self.keys.state_pk(&p), p))
            .collect();
        let keys = by_pk
            .keys()
            .map(|pk| key(pk.clone(), STATE_SK.to_owned()))
            .collect();
        let items = self.batch_get(operation, keys, &[]).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let pid = by_pk.get(get_str(&item, crate::schema::PK))?.clone();
                Some((pid, item))
            })
            .collect())
    }
}

/// The changes of `tag` after `offset`, current or live (see the module docs).
fn changes(
    inner: Arc<Inner>,
    tag: String,
    offset: Offset,
    live: bool,
) -> impl futures::Stream<Item = Result<DurableStateChange>> + Send + 'static {
    let operation = if live { "changes" } else { "current_changes" };
    try_stream! {
        let count = inner.keys.tag_shards() as usize;
        let start = decode_change_offset(offset, count)?;
        if tag.len() > MAX_TAG_BYTES {
            // No upsert stores such a tag: an unknown tag, nothing to deliver, ever.
            if live {
                futures::future::pending::<()>().await;
            }
            return;
        }
        let pks: Vec<String> = (0..count)
            .map(|i| inner.keys.change_pk(&tag, i as u32))
            .collect();
        let limits = if live {
            vec![u64::MAX; count]
        } else {
            inner.counters_of(operation, pks.clone()).await?
        };
        let mut shards: Vec<ChangeShard> = pks
            .into_iter()
            .enumerate()
            .map(|(i, pk)| ChangeShard {
                pk,
                read: start[i],
                limit: limits[i],
                buf: VecDeque::new(),
                gaps: Gaps::default(),
            })
            .collect();
        let mut delivered = start;
        let timeout = inner.config.tag_gap_timeout;
        // A current query that delivered an id's newer state (its later entry lies past
        // the query's end) skips the id's other entries up to that revision.
        let mut ahead: HashMap<String, Revision> = HashMap::new();
        loop {
            let mut again = false;
            for sh in shards.iter_mut() {
                if !sh.buf.is_empty() || sh.read >= sh.limit {
                    continue;
                }
                let (items, more) =
                    entry_page(&inner, operation, "change", &sh.pk, sh.read, sh.limit).await?;
                let mut contiguous = true;
                sh.gaps.note_page(sh.read, items.iter().map(|(num, _)| *num));
                for (num, it) in items {
                    if num != sh.read + 1 {
                        contiguous = false;
                        if let Some(due) = sh.gaps.due(sh.read + 1, num - 1, timeout) {
                            inner.fill_all(operation, &sh.pk, due).await?;
                            sh.gaps.filled(due.1);
                            again = true;
                        }
                        break;
                    }
                    sh.read = num;
                    sh.gaps.passed(num);
                    if is_tombstone(&it) {
                        continue;
                    }
                    sh.buf.push_back(decode_entry(&sh.pk, num, &it)?);
                }
                if contiguous {
                    if more.is_some() {
                        again = true;
                    } else if sh.read < sh.limit && sh.limit != u64::MAX {
                        // A current query: numbers up to the counter read at its start
                        // that have no entry yet, their writes in flight.
                        if let Some(due) = sh.gaps.due(sh.read + 1, sh.limit, timeout) {
                            inner.fill_all(operation, &sh.pk, due).await?;
                            sh.gaps.filled(due.1);
                            again = true;
                        }
                    }
                }
            }
            // Everything read, merged by write time (each shard in number order).
            let mut batch: Vec<(usize, Entry)> = Vec::new();
            loop {
                let best = shards
                    .iter()
                    .enumerate()
                    .filter_map(|(i, sh)| sh.buf.front().map(|e| (e.time, i)))
                    .min();
                let Some((_, i)) = best else { break };
                let Some(e) = shards[i].buf.pop_front() else { break };
                batch.push((i, e));
            }
            if !batch.is_empty() {
                let mut seen = HashSet::new();
                let pids: Vec<String> = batch
                    .iter()
                    .filter(|(_, e)| seen.insert(e.pid.clone()))
                    .map(|(_, e)| e.pid.clone())
                    .collect();
                let states = inner.states(operation, pids).await?;
                for (i, e) in batch {
                    delivered[i] = e.number;
                    let id = PersistenceId::new(e.pid.clone()).map_err(|err| {
                        corrupt(
                            PID,
                            format!("the change entry {} of {:?} holds no valid persistence id: {err}", e.number, shards[i].pk),
                        )
                    })?;
                    let item = states.get(&e.pid).cloned().ok_or_else(|| {
                        corrupt(
                            REVISION,
                            format!(
                                "the change entry {} of {:?} names revision {} of {id}, whose state item is missing",
                                e.number, shards[i].pk, e.revision
                            ),
                        )
                        .with_persistence_id(id.as_str())
                    })?;
                    let stored = decode_state(&id, item)?;
                    let state = stored.state;
                    if state.revision < e.revision {
                        Err(corrupt(
                            REVISION,
                            format!(
                                "the state of {id} is at revision {}, below its change entry's {}",
                                state.revision, e.revision
                            ),
                        )
                        .with_persistence_id(id.as_str()))?;
                    }
                    if state.revision > e.revision {
                        // Superseded. Its later change is further on in this shard (skip
                        // this one), unless the state left the tag (skip), or, for a
                        // current query, the later change came after the query started:
                        // then the newer state is delivered here, once.
                        let same_tag = state.tag.as_deref() == Some(tag.as_str());
                        let later = stored.change.unwrap_or(u64::MAX);
                        if !same_tag || live || later <= shards[i].limit {
                            continue;
                        }
                        if ahead.get(&e.pid).is_some_and(|r| *r >= state.revision) {
                            continue;
                        }
                        ahead.insert(e.pid.clone(), state.revision);
                    }
                    yield DurableStateChange {
                        offset: encode_offset(&delivered),
                        persistence_id: id,
                        revision: state.revision,
                        payload: state.payload,
                        tag: state.tag,
                        timestamp: state.timestamp,
                    };
                }
            }
            if !live && shards.iter().all(|sh| sh.read >= sh.limit) {
                break;
            }
            if !again {
                tokio::time::sleep(inner.config.poll_interval).await;
                persistence_api::metrics::record_poll(crate::DynamoDb::NAME, "changes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_wrong_shape_are_refused() {
        assert_eq!(
            decode_change_offset(Offset::Token("3,0,17,5".into()), 4).unwrap(),
            vec![3, 0, 17, 5]
        );
        assert_eq!(
            decode_change_offset(Offset::NoOffset, 2).unwrap(),
            vec![0, 0]
        );
        let err = decode_change_offset(Offset::Token("1,2".into()), 4).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(decode_change_offset(Offset::Sequence(3), 4).is_err());
    }

    #[test]
    fn revision_1_needs_no_item_and_n_the_one_before() {
        assert_eq!(revision_condition(1), ("attribute_not_exists(pk)", None));
        let (cond, values) = revision_condition(7);
        assert_eq!(cond, "rv = :prev");
        assert_eq!(values.unwrap()[":prev"], n(6));
    }
}
