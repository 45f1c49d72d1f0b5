//! [`DynamoDbJournal`]: the write path (single events, one transaction, gaps' tombstones,
//! conflicts), replay, the highest sequence number and deletes. Writes over several
//! transactions are in `large_write.rs`, tag numbers in `tag_index.rs`, the ranged reads
//! replay shares with the queries in `query.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use futures::{stream, StreamExt};
use persistence_api::{
    AtomicWrite, Error, ErrorKind, EventStream, Journal, PersistenceId, Replay, Result, SequenceNr,
};

use crate::core::{put_request, Inner};
use crate::error::{build_error, Cancellation, Class, Failed};
use crate::query::range_stream;
use crate::schema::{
    deleted_event, entry_sk, event_attrs, event_seq, feed_sk, get_u64, is_tombstone, item_size,
    key, key_of, large_write, n, s, seq_sk, sk_str, tombstone, Item, LargeWrite, AW_TIME, HIGHEST,
    MAX_ITEM_BYTES, MAX_PK_BYTES, MAX_TAG_BYTES, MAX_TX_BYTES, MAX_TX_ITEMS, META_SK, PAYLOAD, PID,
    SEQ, TAGS, TAG_NUMBERS, TIMESTAMP, TOKEN_TIME, WRITER,
};
use crate::tag_index::Numbers;

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

/// The most numbers one write may skip (a write starting above the highest + 1): each
/// takes a tombstone item, written 100 to a transaction, so a far larger gap would take
/// unbounded memory and requests (a write at `u64::MAX` on a new id was a panic).
const MAX_GAP: u64 = 10_000;

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
                    feed_sk(time, pid),
                ),
                Kind::Marker,
            ));
        }
        let shard = keys.tag_shard(pid);
        // Names the refused event (the id with it: the driver is also used without the
        // checking layer, which would add the id).
        let reject = |seq: u64, msg: String| {
            Error::new(ErrorKind::Rejected, msg)
                .with_persistence_id(pid)
                .with_sequence_range(seq, seq)
        };
        for e in write.events() {
            let seq = e.sequence_nr;
            let mut tags: Vec<&String> = Vec::new();
            for t in &e.tags {
                if t.is_empty() {
                    return Err(Error::invalid_input("tags must not be empty"));
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
                // The write time its entries carry, so a rebuild of the tag index restores
                // them in the same place of the tag's order.
                ev.insert(TOKEN_TIME.into(), n(time));
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
        // Every number up to the highest is taken, also the ones a write that left a gap
        // skipped: they get tombstones, and a write at or below a known highest is a
        // `Conflict` without a request.
        let mut gap = match self.write_start(&pid, from).await? {
            Start::Taken => return Err(conflict(Some(from))),
            Start::Next => Vec::new(),
            Start::Gap(lo) if from - lo > MAX_GAP => {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "a write starting at {from} would skip the {} numbers after the highest {} of {pid}; each skipped number takes a tombstone item, and this backend skips at most {MAX_GAP} in one write",
                        from - lo,
                        lo - 1
                    ),
                )
                .with_persistence_id(pid.as_str())
                .with_sequence_range(from, to))
            }
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
            let numbers = self.inner.take_numbers(&write).await?;
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
                            Err(Fail::Other(e)) => return Err(e),
                            Err(Fail::Taken(taken)) => return Err(conflict(taken)),
                            // Only events (tombstones) here, no tag entries.
                            Err(Fail::Filled) => return Err(conflict(None)),
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
                Err(Fail::Other(e)) => return Err(e),
                Err(Fail::Filled) => {
                    filled += 1;
                    if filled > MAX_REFILLS {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!("readers of a tag filled this write's tag index numbers {filled} times (each attempt took longer than tag_gap_timeout_ms, {} ms); nothing was stored", self.inner.config.tag_gap_timeout.as_millis()),
                        ));
                    }
                    continue;
                }
                Err(Fail::Taken(taken)) => {
                    // The item in the way may be a leftover of a large write that never
                    // completed (its writer's clean-up failed): garbage that holds sequence
                    // numbers nobody sees. Remove it and write again.
                    let seq = taken.unwrap_or(from);
                    if cleared < MAX_CLEARS && self.inner.clear_leftover(&pid, seq).await? {
                        cleared += 1;
                        continue;
                    }
                    return Err(conflict(taken));
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
            Err(f) => Err(Fail::Other(f.into_error())),
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
            let put = put.build().map_err(build_error)?;
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
                .map_err(build_error)?;
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
            Err(f) => Err(Fail::Other(f.into_error())),
        }
    }

    /// After an attempt that may have been applied, whether the stored item is ours.
    async fn is_ours(&self, item: &Item) -> bool {
        match self.inner.get_item("write_events", key_of(item)).await {
            Ok(stored) => stored.is_some_and(|stored| {
                [WRITER, PAYLOAD, TIMESTAMP, TAGS, AW_TIME]
                    .iter()
                    .all(|a| stored.get(*a) == item.get(*a))
            }),
            Err(_) => false,
        }
    }
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
        let (highest, meta) = futures::try_join!(inner.highest(pid), inner.meta(pid))?;
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
        self.inner.highest(persistence_id.as_str()).await
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.inner.delete_to(persistence_id.as_str(), to).await
    }
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
            if sk_str(&top) == META_SK {
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
            .map_err(Failed::into_error)?;
        Ok(out.items.unwrap_or_default().into_iter().next())
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
                Err(f) => return Err(f.into_error()),
            }
        }
        // Physical deletes, a page at a time, from where the last finished delete stopped.
        // Each event becomes a tombstone (its key, and the tag numbers it took for a rebuild
        // of the tag index), so its sequence number stays taken: a later write there fails
        // its `attribute_not_exists` condition with `Conflict`, exactly as on a live event,
        // and the write path needs no extra request.
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
                writes.push(put_request(deleted_event(ev))?);
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
            Err(f) => return Err(f.into_error()),
        }
        Ok(())
    }
}
