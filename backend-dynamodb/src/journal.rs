//! The write path ([`DynamoDbJournal`]: writes, deletes, the highest) and the replay
//! machinery the queries share; writes over several transactions are in `large_write.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use futures::{stream, Stream, StreamExt};
use persistence_api::{
    AtomicWrite, Capabilities, Error, ErrorKind, EventStream, Journal, PersistenceId,
    PersistentEvent, Replay, Result, SequenceNr,
};

use crate::core::{put_request, Inner};
use crate::error::{Cancellation, Class};
use crate::item::{
    self, decode_event, event_attrs, event_seq, get_u64, item_size, key, large_write, n, s, Item,
    LargeWrite, AW_TIME, DELETED_TO, HIGHEST, PAYLOAD, PID, SEQ, TAGS, TIMESTAMP, TOKEN_TIME,
    WRITER,
};
use crate::large_write::LargeWrites;
use crate::schema::{
    seq_sk, MAX_ITEM_BYTES, MAX_PK_BYTES, MAX_TX_BYTES, MAX_TX_ITEMS, META_SK, PURGED_TO,
    TAG_NUMBERS, TOMBSTONE,
};
use crate::tag_index::{entry_sk, Numbers};

/// The largest [`PersistentEvent::stored_size`] this backend declares: DynamoDB's 400 KB
/// item limit less room for keys, attribute names and numbers. The driver also checks the
/// exact item size of every event and tag entry before sending anything.
pub const MAX_EVENT_SIZE: usize = MAX_ITEM_BYTES - 4 * 1024;

/// The longest tag (bytes): a tag is part of its index entries' partition key.
pub const MAX_TAG_BYTES: usize = 1024;

/// The journal on DynamoDB. Build it with [`crate::DynamoDb`].
#[derive(Clone)]
pub struct DynamoDbJournal {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbJournal")
            .field("table", &self.inner.config.journal_table)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

pub(crate) fn capabilities(inner: &Inner) -> Capabilities {
    let c = &inner.config;
    Capabilities {
        atomic_write_max_events: None,
        max_event_size: Some(MAX_EVENT_SIZE),
        max_snapshot_size: None,
        tags: true,
        event_metadata: true,
        snapshot_metadata: true,
        delete_events: true,
        conflict_detection: true,
        durable: true,
        snapshots: true,
        query_persistence_ids: true,
        query_events_by_persistence_id: true,
        query_events_by_tag: true,
        live_queries: true,
        live_query_max_delay: Some(
            // Tags: a poll, plus at most the gap timeout while an earlier number of the
            // shard is held by a write in flight; the id feed: a poll plus its settle delay.
            c.poll_interval
                + c.tag_gap_timeout.max(c.feed_settle_delay)
                + std::time::Duration::from_millis(300),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// An event: put only if its key is free.
    Event,
    /// A tag index entry of an event: put only if its number is free (a reader fills a
    /// number it waited for too long).
    TagEntry,
    /// A registry item (persistence id, new-id feed): put unconditionally.
    Marker,
}

struct Prepared {
    items: Vec<(Item, Kind)>,
    size: usize,
}

/// Why a write did not go through.
pub(crate) enum Fail {
    /// A sequence number of the write is taken (which one, when DynamoDB said so), or a
    /// later transaction of a large write found the write fenced off (see [`Inner::fence`]).
    Taken(Option<u64>),
    /// A tag index number of the write was filled by a reader that waited for it too
    /// long: nothing was stored, and the write tries again with new numbers.
    Filled,
    /// Anything else.
    Other(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Other(e)
    }
}

/// Where a write stands against the id's highest.
enum Start {
    /// Its first number is at or below the highest: taken.
    Taken,
    /// It starts right above the highest.
    Next,
    /// It leaves the numbers from this one up to its first free: they get tombstones.
    Gap(u64),
}

/// How often one write removes an unfinished large write's leftovers it collided with and
/// tries again before it answers `Conflict`.
const MAX_CLEARS: usize = 2;

/// How often one write takes new tag numbers after readers filled its numbers before it
/// gives up with a retryable error.
const MAX_REFILLS: usize = 5;

impl DynamoDbJournal {
    fn prepare(
        &self,
        write: &AtomicWrite,
        large: Option<LargeWrite>,
        time: i64,
        numbers: &Numbers,
    ) -> Result<Prepared> {
        let inner = &self.inner;
        let keys = &inner.keys;
        let pid = write.persistence_id().as_str();
        let mut items = Vec::new();
        let mut next: HashMap<&str, u64> = numbers
            .first
            .iter()
            .map(|(t, (first, _))| (t.as_str(), *first))
            .collect();
        if !inner.id_known(pid) {
            let shard = keys.id_shard(pid);
            items.push((key(keys.ids_pk(shard), pid.to_owned()), Kind::Marker));
            items.push((
                key(
                    keys.ids_feed_pk(keys.bucket_of(time), shard),
                    crate::query::feed_sk(time, pid),
                ),
                Kind::Marker,
            ));
        }
        let shard = keys.tag_shard(pid);
        let reject = |seq: u64, msg: String| {
            Error::new(ErrorKind::Rejected, msg)
                .with_operation("write_events")
                .with_persistence_id(pid)
                .with_sequence_range(seq, seq)
        };
        for e in write.events() {
            let seq = e.sequence_nr;
            let mut tags: Vec<&String> = Vec::new();
            for t in &e.tags {
                if t.is_empty() {
                    return Err(Error::invalid_input("tags must not be empty")
                        .with_operation("write_events")
                        .with_persistence_id(pid));
                }
                if t.len() > MAX_TAG_BYTES {
                    return Err(reject(
                        seq,
                        format!("a tag of event {seq} of {pid} is {} bytes; at most {MAX_TAG_BYTES} are allowed", t.len()),
                    ));
                }
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            // Each distinct tag takes the next number of its shard, in event order.
            let mut taken: Vec<(&String, u64)> = Vec::with_capacity(tags.len());
            for t in &tags {
                let num = next.get_mut(t.as_str()).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Unexpected,
                        format!("no tag number taken for {t:?}"),
                    )
                })?;
                taken.push((t, *num));
                *num += 1;
            }
            let mut ev = key(keys.event_pk(pid), seq_sk(seq));
            event_attrs(&mut ev, e, large);
            if !taken.is_empty() {
                ev.insert(
                    TAG_NUMBERS.into(),
                    AttributeValue::M(
                        taken
                            .iter()
                            .map(|(t, num)| ((*t).clone(), n(num)))
                            .collect(),
                    ),
                );
            }
            let size = item_size(&ev);
            if size > MAX_ITEM_BYTES {
                return Err(reject(
                    seq,
                    format!("event {seq} of {pid} is {size} bytes as a DynamoDB item; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
                ));
            }
            items.push((ev, Kind::Event));
            for (t, num) in taken {
                let pk = keys.tag_pk(t, shard);
                if pk.len() > MAX_PK_BYTES {
                    return Err(reject(seq, format!("tag {t:?} is too long for a key")));
                }
                let mut entry = key(pk, entry_sk(num));
                event_attrs(&mut entry, e, large);
                entry.insert(PID.into(), s(pid));
                entry.insert(SEQ.into(), n(seq));
                entry.insert(TOKEN_TIME.into(), n(time));
                let size = item_size(&entry);
                if size > MAX_ITEM_BYTES {
                    return Err(reject(
                        seq,
                        format!("the tag index entry of event {seq} of {pid} under tag {t:?} is {size} bytes; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
                    ));
                }
                items.push((entry, Kind::TagEntry));
            }
        }
        let size = items.iter().map(|(i, _)| item_size(i)).sum();
        Ok(Prepared { items, size })
    }

    async fn write_one(&self, write: AtomicWrite) -> Result<()> {
        let pid = write.persistence_id().as_str().to_owned();
        let (from, to) = (write.lowest_sequence_nr(), write.highest_sequence_nr());
        let ctx = |e: Error| {
            e.with_operation("write_events")
                .with_persistence_id(pid.clone())
                .with_sequence_range(from, to)
        };
        // Every number up to the highest is taken, also the ones a write that left a gap
        // skipped: they get tombstones, and a write at or below a known highest is a
        // `Conflict` without a request.
        let mut gap = match self.write_start(&pid, from).await.map_err(ctx)? {
            Start::Taken => return Err(ctx(conflict(Some(from)))),
            Start::Next => Vec::new(),
            Start::Gap(lo) => (lo..from)
                .map(|seq| {
                    (
                        tombstone(key(self.inner.keys.event_pk(&pid), seq_sk(seq))),
                        Kind::Event,
                    )
                })
                .collect(),
        };
        // Whatever the driver refuses (sizes, tags) is refused before any request: checked
        // with the widest tag numbers there can be.
        self.prepare(
            &write,
            None,
            self.inner.token_time(),
            &Numbers::widest(&write),
        )?;
        let mut cleared = 0;
        let mut filled = 0;
        loop {
            let numbers = self.inner.take_numbers(&write).await.map_err(ctx)?;
            let time = self.inner.token_time();
            let mut prepared = match self.prepare(&write, None, time, &numbers) {
                Ok(p) => p,
                Err(e) => {
                    self.inner.give_back(&pid, &numbers).await;
                    return Err(e);
                }
            };
            if !gap.is_empty() {
                let fits = prepared.items.len() + gap.len() <= MAX_TX_ITEMS
                    && prepared.size + gap.len() * MAX_PK_BYTES <= MAX_TX_BYTES;
                if fits {
                    // After the write's own items: the first event decides `is_ours`.
                    prepared.items.append(&mut gap);
                } else {
                    // Too many for the write's transaction: tombstones first, a
                    // transaction at a time (if the write then fails, the numbers stay
                    // taken, as a failed write may leave them).
                    for chunk in std::mem::take(&mut gap).chunks(MAX_TX_ITEMS) {
                        match self.transact(chunk, None).await {
                            Ok(()) => {}
                            Err(Fail::Other(e)) => return Err(ctx(e)),
                            Err(Fail::Taken(taken)) => return Err(ctx(conflict(taken))),
                            // Only events (tombstones) here, no tag entries.
                            Err(Fail::Filled) => return Err(ctx(conflict(None))),
                        }
                    }
                }
            }
            let result = if prepared.items.len() == 1 {
                let item = prepared.items[0].0.clone();
                self.put_event(item).await
            } else if prepared.items.len() <= MAX_TX_ITEMS && prepared.size <= MAX_TX_BYTES {
                self.transact(&prepared.items, None).await
            } else {
                let large = LargeWrite {
                    from,
                    to,
                    time_ms: time,
                };
                prepared = match self.prepare(&write, Some(large), time, &numbers) {
                    Ok(p) => p,
                    Err(e) => {
                        self.inner.give_back(&pid, &numbers).await;
                        return Err(e);
                    }
                };
                let items = std::mem::take(&mut prepared.items);
                self.write_large(&pid, large, items).await
            };
            // A write that surely stored nothing gives its tag numbers back at once, so
            // readers need not wait for them.
            let applied_maybe = matches!(&result, Ok(()))
                || matches!(&result, Err(Fail::Other(e)) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable));
            if !applied_maybe {
                self.inner.give_back(&pid, &numbers).await;
            }
            match result {
                Ok(()) => break,
                Err(Fail::Other(e)) => return Err(ctx(e)),
                Err(Fail::Filled) => {
                    filled += 1;
                    if filled > MAX_REFILLS {
                        return Err(ctx(Error::new(
                            ErrorKind::Unavailable,
                            format!("readers of a tag filled this write's tag index numbers {filled} times (each attempt took longer than tag_gap_timeout_ms, {} ms); nothing was stored", self.inner.config.tag_gap_timeout.as_millis()),
                        )));
                    }
                    continue;
                }
                Err(Fail::Taken(taken)) => {
                    // The item in the way may be a leftover of a large write that never
                    // completed (its writer's clean-up failed): garbage that holds sequence
                    // numbers nobody sees. Remove it and write again.
                    let seq = taken.unwrap_or(from);
                    if cleared < MAX_CLEARS
                        && self.inner.clear_leftover(&pid, seq).await.map_err(ctx)?
                    {
                        cleared += 1;
                        continue;
                    }
                    return Err(ctx(conflict(taken)));
                }
            }
        }
        self.inner.mark_id_known(&pid, to);
        Ok(())
    }

    /// Where a write starting at `from` stands against the id's highest: from the highest
    /// this process has seen when the write starts right above it (or at 1), else from a
    /// consistent read of the highest (one `Query`).
    async fn write_start(&self, pid: &str, from: u64) -> Result<Start> {
        let known = self.inner.known_highest(pid);
        let highest = match known {
            _ if from == 1 => known.unwrap_or(0),
            Some(h) if from <= h + 1 => h,
            _ => self.inner.highest(pid).await?,
        };
        Ok(if from <= highest {
            Start::Taken
        } else if from == highest + 1 {
            Start::Next
        } else {
            Start::Gap(highest + 1)
        })
    }

    /// One event, nothing else: one conditional `PutItem`.
    async fn put_event(&self, item: Item) -> std::result::Result<(), Fail> {
        let inner = &self.inner;
        let req = inner
            .client
            .put_item()
            .table_name(inner.journal_table())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)");
        match inner.retry.run("write_events", || req.clone().send()).await {
            Ok(_) => Ok(()),
            Err(f) if f.class == Class::Conflict => {
                let ours = match req.get_item() {
                    Some(item) if f.ambiguous => self.is_ours(item).await,
                    _ => false,
                };
                if ours {
                    Ok(())
                } else {
                    let seq = req.get_item().as_ref().and_then(|i| event_seq(i).ok());
                    Err(Fail::Taken(seq))
                }
            }
            Err(f) => Err(Fail::Other(f.into_error("write_events"))),
        }
    }

    /// Up to 100 items in one `TransactWriteItems`, events conditioned on their key being free.
    /// `fence`: a later transaction of a large write also checks (as one more item, after
    /// `items`) that the write's first event is still there and not fenced off.
    pub(crate) async fn transact(
        &self,
        items: &[(Item, Kind)],
        fence: Option<(&Item, LargeWrite)>,
    ) -> std::result::Result<(), Fail> {
        let inner = &self.inner;
        let mut actions = Vec::with_capacity(items.len());
        for (item, kind) in items {
            let mut put = Put::builder()
                .table_name(inner.journal_table())
                .set_item(Some(item.clone()));
            if matches!(kind, Kind::Event | Kind::TagEntry) {
                put = put.condition_expression("attribute_not_exists(pk)");
            }
            let put = put
                .build()
                .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        if let Some((first, lw)) = fence {
            let check = ConditionCheck::builder()
                .table_name(inner.journal_table())
                .set_key(Some(first.clone()))
                .condition_expression("af = :f AND aw = :t AND attribute_not_exists(ab)")
                .expression_attribute_values(":f", n(lw.from))
                .expression_attribute_values(":t", n(lw.time_ms))
                .build()
                .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
            actions.push(TransactWriteItem::builder().condition_check(check).build());
        }
        let req = inner
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(uuid::Uuid::new_v4().to_string());
        match inner.retry.run("write_events", || req.clone().send()).await {
            Ok(_) => Ok(()),
            Err(f) if f.class == Class::Conflict => {
                let first = items.iter().find(|(_, k)| *k == Kind::Event);
                match first {
                    Some((first, _)) if f.ambiguous && self.is_ours(first).await => Ok(()),
                    _ => {
                        // The cancellation reasons are in item order: name the taken one.
                        let failed = f
                            .err
                            .as_service_error()
                            .map(|e| e.cancellation_codes())
                            .and_then(|codes| {
                                codes.iter().position(|c| c == "ConditionalCheckFailed")
                            })
                            .and_then(|i| items.get(i));
                        match failed {
                            Some((_, Kind::TagEntry)) => Err(Fail::Filled),
                            other => Err(Fail::Taken(
                                other.and_then(|(item, _)| event_seq(item).ok()),
                            )),
                        }
                    }
                }
            }
            Err(f) => Err(Fail::Other(f.into_error("write_events"))),
        }
    }

    /// After an attempt that may have been applied, whether the stored item is ours.
    async fn is_ours(&self, item: &Item) -> bool {
        let inner = &self.inner;
        let req = inner
            .client
            .get_item()
            .table_name(inner.journal_table())
            .set_key(Some(item::key_of(item)))
            .consistent_read(true);
        match inner.retry.run("write_events", || req.clone().send()).await {
            Ok(out) => out.item().is_some_and(|stored| {
                [WRITER, PAYLOAD, TIMESTAMP, TAGS, AW_TIME]
                    .iter()
                    .all(|a| stored.get(*a) == item.get(*a))
            }),
            Err(_) => false,
        }
    }
}

/// The tombstone that replaces a deleted event: its key, marked.
pub(crate) fn tombstone(mut key: Item) -> Item {
    key.insert(TOMBSTONE.into(), n(1));
    key
}

/// Whether an event item is the tombstone of a deleted event.
pub(crate) fn is_tombstone(item: &Item) -> bool {
    item.contains_key(TOMBSTONE)
}

fn conflict(taken: Option<u64>) -> Error {
    let message = match taken {
        Some(seq) => format!(
            "sequence number {seq} is already taken by another write; nothing of this atomic write was stored"
        ),
        None => "a sequence number of this atomic write is already taken; nothing was stored".into(),
    };
    Error::new(ErrorKind::Conflict, message)
}

#[async_trait]
impl Journal for DynamoDbJournal {
    async fn write_events(&self, mut writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        let count = writes.len();
        if count == 1 {
            if let Some(write) = writes.pop() {
                return Ok(vec![self.write_one(write).await]);
            }
        }
        // Writes of one id run in order; different ids run concurrently.
        let mut groups: Vec<Vec<(usize, AtomicWrite)>> = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for (i, w) in writes.into_iter().enumerate() {
            let g = *by_id
                .entry(w.persistence_id().as_str().to_owned())
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[g].push((i, w));
        }
        let done: Vec<Vec<(usize, Result<()>)>> = stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                for (i, w) in group {
                    out.push((i, self.write_one(w).await));
                }
                out
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut results: Vec<Option<Result<()>>> = (0..count).map(|_| None).collect();
        for (i, r) in done.into_iter().flatten() {
            results[i] = Some(r);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Unexpected, "write lost"))))
            .collect())
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let inner = self.inner.clone();
        let pid = persistence_id.as_str();
        let (highest, meta) = futures::try_join!(inner.highest(pid), inner.meta(pid))
            .map_err(|e| e.with_operation("replay").with_persistence_id(pid))?;
        let highest = highest.max(meta.highest);
        let start = from.max(meta.deleted_to.saturating_add(1)).max(1);
        let end = to.min(highest);
        let events: EventStream = if start > end || max == 0 {
            Box::pin(stream::empty())
        } else {
            Box::pin(range_stream(inner, persistence_id.clone(), start, end, max))
        };
        Ok(Replay {
            highest_sequence_nr: highest,
            events,
        })
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        self.inner
            .highest(persistence_id.as_str())
            .await
            .map_err(|e| e.with_persistence_id(persistence_id.as_str()))
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let pid = persistence_id.as_str();
        self.inner.delete_to(pid, to).await.map_err(|e| {
            e.with_operation("delete_events_to")
                .with_persistence_id(pid)
        })
    }
}

/// An id's highest/deleted-to item.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    pub(crate) highest: u64,
    pub(crate) deleted_to: u64,
    /// How far the physical delete (events turned into tombstones) got.
    pub(crate) purged_to: u64,
}

impl Inner {
    /// The highest sequence number of the completed writes: one descending `Query` with
    /// `Limit 1`. The id's highest/deleted-to item sorts below every event, so it comes back
    /// only when no event is left, and then holds the highest. When the top event belongs to
    /// a large write whose last event is missing (leftovers of a write that never completed),
    /// the search goes on below that write's first sequence number: one more `Query` per
    /// unfinished large write on top of the history (none on a clean history). Leftovers are
    /// always the bottom part of their write's range (parts are removed top down), so nothing
    /// between the write's first sequence number and the top is skipped wrongly.
    pub(crate) async fn highest(&self, pid: &str) -> Result<u64> {
        let mut below: Option<u64> = None;
        let highest = loop {
            let Some(top) = self.top_item(pid, below).await? else {
                break 0;
            };
            if item::sk_str(&top) == META_SK {
                break get_u64(&top, HIGHEST).unwrap_or(0);
            }
            let seq = event_seq(&top)?;
            let Some(lw) = large_write(&top) else {
                break seq;
            };
            if seq >= lw.to {
                // The last event: the write is complete.
                break seq;
            }
            // Nothing above `seq` (below `below`) exists: when the write's last event would be
            // in that range, it is missing; otherwise ask.
            let missing = below.is_none_or(|b| lw.to < b);
            if !missing && self.write_complete(pid, lw).await? {
                break seq;
            }
            below = Some(lw.from.max(1));
        };
        if highest > 0 {
            self.mark_id_known(pid, highest);
        }
        Ok(highest)
    }

    /// The top item of the id's partition (below sequence number `below` when given).
    async fn top_item(&self, pid: &str, below: Option<u64>) -> Result<Option<Item>> {
        let mut req = self
            .client
            .query()
            .table_name(self.journal_table())
            .expression_attribute_values(":pk", s(self.keys.event_pk(pid)))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(self.consistent());
        req = match below {
            None => req.key_condition_expression("pk = :pk"),
            Some(b) => req
                .key_condition_expression("pk = :pk AND sk < :b")
                .expression_attribute_values(":b", s(seq_sk(b))),
        };
        let out = self
            .retry
            .run("highest_sequence_nr", || req.clone().send())
            .await
            .map_err(|f| f.into_error("highest_sequence_nr"))?;
        Ok(out.items.unwrap_or_default().into_iter().next())
    }

    /// The id's highest/deleted-to item (zeros when there is none).
    pub(crate) async fn meta(&self, pid: &str) -> Result<Meta> {
        let req = self
            .client
            .get_item()
            .table_name(self.journal_table())
            .set_key(Some(key(self.keys.event_pk(pid), META_SK.to_owned())))
            .consistent_read(self.consistent());
        let out = self
            .retry
            .run("replay", || req.clone().send())
            .await
            .map_err(|f| f.into_error("replay"))?;
        Ok(out
            .item()
            .map(|i| Meta {
                highest: get_u64(i, HIGHEST).unwrap_or(0),
                deleted_to: get_u64(i, DELETED_TO).unwrap_or(0),
                purged_to: get_u64(i, PURGED_TO).unwrap_or(0),
            })
            .unwrap_or_default())
    }

    /// The event items of `pid` with `from <= seq <= to`, all pages (at most `limit` items
    /// when given: one page then).
    pub(crate) async fn query_events(
        &self,
        operation: &'static str,
        pid: &str,
        from: u64,
        to: u64,
        limit: Option<i32>,
    ) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let req = self
                .client
                .query()
                .table_name(self.journal_table())
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":pk", s(self.keys.event_pk(pid)))
                .expression_attribute_values(":a", s(seq_sk(from)))
                .expression_attribute_values(":b", s(seq_sk(to)))
                .limit(limit.unwrap_or(self.config.page_size.min(i32::MAX as u32) as i32))
                .consistent_read(self.consistent())
                .set_exclusive_start_key(start.take());
            let out = self
                .retry
                .run(operation, || req.clone().send())
                .await
                .map_err(|f| f.into_error(operation))?;
            let last = out.last_evaluated_key().cloned();
            items.extend(out.items.unwrap_or_default());
            match last {
                Some(k) if limit.is_none() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// The keys of the tag index entries of a stored event (from the numbers it records).
    pub(crate) fn tag_entry_keys(&self, pid: &str, ev: &Item) -> Vec<Item> {
        let shard = self.keys.tag_shard(pid);
        match ev.get(TAG_NUMBERS) {
            Some(AttributeValue::M(m)) => m
                .iter()
                .filter_map(|(t, v)| match v {
                    AttributeValue::N(num) => num.parse::<u64>().ok().map(|num| (t, num)),
                    _ => None,
                })
                .map(|(t, num)| key(self.keys.tag_pk(t, shard), entry_sk(num)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Deletes events up to `to`: the deleted-to mark first (so nothing deleted ever
    /// replays, even if the physical delete stops half-way), then the events and their tag
    /// entries in batches.
    pub(crate) async fn delete_to(&self, pid: &str, to: u64) -> Result<()> {
        let mut target = 0;
        for _ in 0..10 {
            let highest = self.highest(pid).await?;
            target = to.min(highest);
            if target == 0 {
                return Ok(());
            }
            let req = self
                .client
                .update_item()
                .table_name(self.journal_table())
                .set_key(Some(key(self.keys.event_pk(pid), META_SK.to_owned())))
                .update_expression("SET hi = :h, del = :t")
                .condition_expression(
                    "(attribute_not_exists(hi) OR hi <= :h) AND (attribute_not_exists(del) OR del < :t)",
                )
                .expression_attribute_values(":h", n(highest))
                .expression_attribute_values(":t", n(target));
            match self
                .retry
                .run("delete_events_to", || req.clone().send())
                .await
            {
                Ok(_) => break,
                Err(f) if f.class == Class::Conflict => {
                    let meta = self.meta(pid).await?;
                    if meta.deleted_to >= target {
                        break;
                    }
                    // The highest grew meanwhile: read it again.
                }
                Err(f) => return Err(f.into_error("delete_events_to")),
            }
        }
        // Physical deletes, a page at a time, from where the last finished delete stopped.
        // Each event becomes a tombstone (its key and nothing else), so its sequence number
        // stays taken: a later write there fails its `attribute_not_exists` condition with
        // `Conflict`, exactly as on a live event, and the write path needs no extra request.
        let meta = self.meta(pid).await?;
        let mut from = meta.purged_to.saturating_add(1).max(1);
        while from <= target {
            let page = self
                .query_events(
                    "delete_events_to",
                    pid,
                    from,
                    target,
                    Some(self.config.page_size as i32),
                )
                .await?;
            let Some(last) = page.last() else { break };
            let last_seq = event_seq(last)?;
            let mut writes = Vec::with_capacity(page.len());
            for ev in &page {
                if is_tombstone(ev) {
                    continue;
                }
                writes.push(put_request(tombstone(item::key_of(ev)))?);
                // Its tag entries become tombstones too: a tag reader skips them instead
                // of waiting for a missing number.
                for k in self.tag_entry_keys(pid, ev) {
                    writes.push(put_request(tombstone(k))?);
                }
            }
            self.batch_write_all("delete_events_to", self.journal_table(), writes)
                .await?;
            if last_seq >= target {
                break;
            }
            from = last_seq + 1;
        }
        // Remember how far the physical delete got, so the next one starts there instead
        // of paging through tombstones again.
        let req = self
            .client
            .update_item()
            .table_name(self.journal_table())
            .set_key(Some(key(self.keys.event_pk(pid), META_SK.to_owned())))
            .update_expression("SET pd = :t")
            .condition_expression("attribute_not_exists(pd) OR pd < :t")
            .expression_attribute_values(":t", n(target));
        match self
            .retry
            .run("delete_events_to", || req.clone().send())
            .await
        {
            Ok(_) => {}
            // Another delete got further meanwhile.
            Err(f) if f.class == Class::Conflict => {}
            Err(f) => return Err(f.into_error("delete_events_to")),
        }
        Ok(())
    }
}

/// The events of `pid` in `start..=end`, at most `max`, fetched by a task that runs
/// `replay_parallelism` page-sized ranges ahead of the consumer.
pub(crate) fn range_stream(
    inner: Arc<Inner>,
    pid: PersistenceId,
    start: u64,
    end: u64,
    max: u64,
) -> impl Stream<Item = Result<PersistentEvent>> + Send + 'static {
    // Ranges no longer than `max`, so a small `max` reads no more than it needs.
    let page = (inner.config.page_size as u64).min(max).max(1);
    let needed_ranges = max.div_ceil(page).max(1);
    let parallelism = (inner.config.replay_parallelism as u64)
        .min(needed_ranges)
        .max(1) as usize;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<PersistentEvent>>>(1);
    let producer = async move {
        let ranges = (0u64..)
            .map(move |i| start.saturating_add(i.saturating_mul(page)))
            .take_while(move |a| *a <= end && *a >= start)
            .map(move |a| (a, a.saturating_add(page - 1).min(end)));
        let inner2 = inner.clone();
        let pid_s = pid.as_str().to_owned();
        let mut pages = stream::iter(ranges)
            .map(move |(a, b)| {
                let inner = inner2.clone();
                let pid_s = pid_s.clone();
                async move { inner.query_events("replay", &pid_s, a, b, None).await }
            })
            .buffered(parallelism);
        let mut left = max;
        let mut large = LargeWrites::new();
        while let Some(page) = pages.next().await {
            let out = async {
                let mut events = Vec::new();
                for item in page? {
                    if left == 0 {
                        break;
                    }
                    if is_tombstone(&item) {
                        continue;
                    }
                    if let Some(lw) = large_write(&item) {
                        if large.check(&inner, pid.as_str(), lw, false).await? != Some(true) {
                            continue;
                        }
                    }
                    let seq = event_seq(&item)?;
                    events.push(decode_event(pid.clone(), seq, item)?);
                    left -= 1;
                }
                Ok::<_, Error>(events)
            }
            .await;
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed || left == 0 {
                break;
            }
        }
    };
    tokio::spawn(producer);
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|page| (page, rx))
    })
    .flat_map(|page: Result<Vec<PersistentEvent>>| match page {
        Ok(events) => stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(e) => stream::iter(vec![Err(e)]),
    })
}
