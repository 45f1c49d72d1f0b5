//! The write path ([`DynamoDbJournal`]) and the replay machinery the queries share.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use futures::{stream, Stream, StreamExt};
use persistence_api::{
    AtomicWrite, Capabilities, Error, ErrorKind, EventStream, Journal, PersistenceId,
    PersistentEvent, Replay, Result, SequenceNr,
};

use crate::client::{now_ms, Inner};
use crate::error::{Cancellation, Class};
use crate::item::{
    self, decode_event, event_attrs, event_seq, get_u64, item_size, key, large_write, n, s, Item,
    LargeWrite, AW_FROM, AW_TIME, DELETED_TO, HIGHEST, PAYLOAD, PID, SEQ, TAGS, TIMESTAMP,
    TOKEN_TIME, WRITER,
};
use crate::schema::{
    bucket_sk, seq_sk, token, MAX_ITEM_BYTES, MAX_PK_BYTES, MAX_TX_BYTES, MAX_TX_ITEMS, META_SK,
};

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
            .field("journal_name", &self.inner.config.journal_name)
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
        live_query_max_delay: Some(std::time::Duration::from_millis(
            c.poll_interval_ms + c.tag_settle_delay_ms + 300,
        )),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// An event: put only if its key is free.
    Event,
    /// A tag index entry of an event.
    TagEntry,
    /// A registry item (persistence id or tag bucket): put unconditionally.
    Marker,
}

struct Prepared {
    items: Vec<(Item, Kind)>,
    size: usize,
    buckets: Vec<(String, i64)>,
}

impl DynamoDbJournal {
    fn prepare(
        &self,
        write: &AtomicWrite,
        large: Option<LargeWrite>,
        time: i64,
    ) -> Result<Prepared> {
        let inner = &self.inner;
        let keys = &inner.keys;
        let pid = write.persistence_id().as_str();
        let mut items = Vec::new();
        let mut buckets: Vec<(String, i64)> = Vec::new();
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
        let bucket = keys.bucket_of(time);
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
            let mut ev = key(keys.event_pk(pid), seq_sk(seq));
            event_attrs(&mut ev, e, large);
            if !tags.is_empty() {
                ev.insert(TOKEN_TIME.into(), n(time));
            }
            let size = item_size(&ev);
            if size > MAX_ITEM_BYTES {
                return Err(reject(
                    seq,
                    format!("event {seq} of {pid} is {size} bytes as a DynamoDB item; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
                ));
            }
            items.push((ev, Kind::Event));
            for t in tags {
                let pk = keys.tag_pk(t, bucket, shard);
                if pk.len() > MAX_PK_BYTES {
                    return Err(reject(seq, format!("tag {t:?} is too long for a key")));
                }
                let mut entry = key(pk, token(time, pid, seq));
                event_attrs(&mut entry, e, large);
                entry.insert(PID.into(), s(pid));
                entry.insert(SEQ.into(), n(seq));
                let size = item_size(&entry);
                if size > MAX_ITEM_BYTES {
                    return Err(reject(
                        seq,
                        format!("the tag index entry of event {seq} of {pid} under tag {t:?} is {size} bytes; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
                    ));
                }
                items.push((entry, Kind::TagEntry));
                if !inner.bucket_known(t, bucket) && !buckets.iter().any(|(bt, _)| bt == t) {
                    buckets.push((t.clone(), bucket));
                    items.insert(
                        0,
                        (key(keys.tag_buckets_pk(t), bucket_sk(bucket)), Kind::Marker),
                    );
                }
            }
        }
        let size = items.iter().map(|(i, _)| item_size(i)).sum();
        Ok(Prepared {
            items,
            size,
            buckets,
        })
    }

    async fn write_one(&self, write: AtomicWrite) -> Result<()> {
        let pid = write.persistence_id().as_str().to_owned();
        let (from, to) = (write.lowest_sequence_nr(), write.highest_sequence_nr());
        let time = self.inner.token_time();
        let mut prepared = self.prepare(&write, None, time)?;
        let ctx = |e: Error| {
            e.with_operation("write_events")
                .with_persistence_id(pid.clone())
                .with_sequence_range(from, to)
        };
        if prepared.items.len() == 1 {
            let item = prepared.items.pop().map(|(i, _)| i).unwrap_or_default();
            self.put_event(item).await.map_err(ctx)?;
        } else if prepared.items.len() <= MAX_TX_ITEMS && prepared.size <= MAX_TX_BYTES {
            self.transact(&prepared.items).await.map_err(ctx)?;
        } else {
            let large = LargeWrite {
                from,
                to,
                time_ms: time,
            };
            prepared = self.prepare(&write, Some(large), time)?;
            self.write_large(prepared.items).await.map_err(ctx)?;
        }
        self.inner.mark_id_known(&pid);
        for (tag, bucket) in &prepared.buckets {
            self.inner.mark_bucket_known(tag, *bucket);
        }
        let elapsed = now_ms() - time;
        let tagged = write.events().iter().any(|e| !e.tags.is_empty());
        if tagged && elapsed > self.inner.config.tag_settle_delay_ms as i64 {
            tracing::warn!(
                persistence_id = pid.as_str(),
                elapsed_ms = elapsed,
                "a tagged write took longer than tag_settle_delay_ms; a live events-by-tag query may have passed it"
            );
        }
        Ok(())
    }

    /// One event, nothing else: one conditional `PutItem`.
    async fn put_event(&self, item: Item) -> Result<()> {
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
                    Err(conflict(seq))
                }
            }
            Err(f) => Err(f.into_error("write_events")),
        }
    }

    /// Up to 100 items in one `TransactWriteItems`, events conditioned on their key being free.
    async fn transact(&self, items: &[(Item, Kind)]) -> Result<()> {
        let inner = &self.inner;
        let mut actions = Vec::with_capacity(items.len());
        for (item, kind) in items {
            let mut put = Put::builder()
                .table_name(inner.journal_table())
                .set_item(Some(item.clone()));
            if *kind == Kind::Event {
                put = put.condition_expression("attribute_not_exists(pk)");
            }
            let put = put
                .build()
                .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
            actions.push(TransactWriteItem::builder().put(put).build());
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
                        let taken = f
                            .err
                            .as_service_error()
                            .map(|e| e.cancellation_codes())
                            .and_then(|codes| {
                                codes.iter().position(|c| c == "ConditionalCheckFailed")
                            })
                            .and_then(|i| items.get(i))
                            .and_then(|(item, _)| event_seq(item).ok());
                        Err(conflict(taken))
                    }
                }
            }
            Err(f) => Err(f.into_error("write_events")),
        }
    }

    /// An atomic write too large for one transaction: several transactions, every event and
    /// tag entry marked with the write's range, the last event in the last transaction, so
    /// the write counts as stored exactly when its last event exists. A failure after the
    /// first transaction deletes what the earlier ones stored (best effort; leftovers stay
    /// invisible to replay and queries).
    async fn write_large(&self, mut items: Vec<(Item, Kind)>) -> Result<()> {
        if let Some(last) = items.iter().rposition(|(_, k)| *k == Kind::Event) {
            let last = items.remove(last);
            items.push(last);
        }
        let mut chunks: Vec<Vec<(Item, Kind)>> = Vec::new();
        let mut cur: Vec<(Item, Kind)> = Vec::new();
        let mut cur_size = 0;
        for (item, kind) in items {
            let size = item_size(&item);
            if !cur.is_empty() && (cur.len() == MAX_TX_ITEMS || cur_size + size > MAX_TX_BYTES) {
                chunks.push(std::mem::take(&mut cur));
                cur_size = 0;
            }
            cur_size += size;
            cur.push((item, kind));
        }
        if !cur.is_empty() {
            chunks.push(cur);
        }
        for (k, chunk) in chunks.iter().enumerate() {
            if let Err(e) = self.transact(chunk).await {
                // A transaction that failed ambiguously (timeout, 5xx) may still have been
                // applied: remove its events first, each only if it is ours, the last event
                // (the commit mark) before anything else; then the earlier transactions.
                if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable) {
                    self.remove_own(chunk).await;
                }
                if k > 0 {
                    let written: Vec<Item> = chunks[..k]
                        .iter()
                        .flatten()
                        .filter(|(_, kind)| *kind != Kind::Marker)
                        .map(|(i, _)| item::key_of(i))
                        .collect();
                    if let Err(re) = self
                        .inner
                        .batch_delete("write_events", self.inner.journal_table(), written)
                        .await
                    {
                        tracing::warn!(error = %re, "could not remove the stored part of a failed atomic write; it stays invisible");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the events of `chunk` that this write stored (conditioned on its large-write
    /// marker), last event first, then its tag entries (their keys hold this write's time).
    async fn remove_own(&self, chunk: &[(Item, Kind)]) {
        let inner = &self.inner;
        for (item, _) in chunk.iter().rev().filter(|(_, k)| *k == Kind::Event) {
            let (Some(from), Some(time)) = (item.get(AW_FROM), item.get(AW_TIME)) else {
                continue;
            };
            let req = inner
                .client
                .delete_item()
                .table_name(inner.journal_table())
                .set_key(Some(item::key_of(item)))
                .condition_expression("af = :f AND aw = :t AND w = :w")
                .expression_attribute_values(":f", from.clone())
                .expression_attribute_values(":t", time.clone())
                .expression_attribute_values(
                    ":w",
                    item.get(WRITER).cloned().unwrap_or_else(|| s("")),
                );
            match inner.retry.run("write_events", || req.clone().send()).await {
                Ok(_) => {}
                Err(f) if f.class == Class::Conflict => {}
                Err(f) => {
                    tracing::warn!(error = %f.into_error("write_events"), "could not remove an event of a failed atomic write");
                    return;
                }
            }
        }
        let entries: Vec<Item> = chunk
            .iter()
            .filter(|(_, k)| *k == Kind::TagEntry)
            .map(|(i, _)| item::key_of(i))
            .collect();
        if let Err(e) = inner
            .batch_delete("write_events", inner.journal_table(), entries)
            .await
        {
            tracing::warn!(error = %e, "could not remove the tag entries of a failed atomic write");
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
                [WRITER, PAYLOAD, TIMESTAMP, TAGS]
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
    fn capabilities(&self) -> Capabilities {
        capabilities(&self.inner)
    }

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
}

impl Inner {
    /// The highest sequence number: one descending `Query` with `Limit 1`. The id's
    /// highest/deleted-to item sorts below every event, so it comes back only when no event
    /// is left, and then holds the highest.
    pub(crate) async fn highest(&self, pid: &str) -> Result<u64> {
        let req = self
            .client
            .query()
            .table_name(self.journal_table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(self.keys.event_pk(pid)))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(self.consistent());
        let out = self
            .retry
            .run("highest_sequence_nr", || req.clone().send())
            .await
            .map_err(|f| f.into_error("highest_sequence_nr"))?;
        let highest = match out.items().first() {
            None => 0,
            Some(i) if item::sk_str(i) == META_SK => get_u64(i, HIGHEST).unwrap_or(0),
            Some(i) => event_seq(i)?,
        };
        if highest > 0 {
            self.mark_id_known(pid);
        }
        Ok(highest)
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

    /// Whether a multi-transaction atomic write is complete: its last event exists.
    pub(crate) async fn write_complete(&self, pid: &str, lw: LargeWrite) -> Result<bool> {
        let req = self
            .client
            .get_item()
            .table_name(self.journal_table())
            .set_key(Some(key(self.keys.event_pk(pid), seq_sk(lw.to))))
            .consistent_read(true);
        let out = self
            .retry
            .run("replay", || req.clone().send())
            .await
            .map_err(|f| f.into_error("replay"))?;
        Ok(out
            .item()
            .is_some_and(|i| large_write(i).is_some_and(|l| l.from == lw.from)))
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
        // Physical deletes, a page at a time.
        let mut from = 1;
        loop {
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
            let mut keys = Vec::with_capacity(page.len());
            for ev in &page {
                keys.push(item::key_of(ev));
                let seq = event_seq(ev)?;
                if let (Some(time), Some(tags)) = (item::get_i64(ev, TOKEN_TIME), item::tags_of(ev))
                {
                    let bucket = self.keys.bucket_of(time);
                    let shard = self.keys.tag_shard(pid);
                    let mut seen: Vec<&str> = Vec::new();
                    for t in tags {
                        if seen.contains(&t) {
                            continue;
                        }
                        seen.push(t);
                        keys.push(key(
                            self.keys.tag_pk(t, bucket, shard),
                            token(time, pid, seq),
                        ));
                    }
                }
            }
            self.batch_delete("delete_events_to", self.journal_table(), keys)
                .await?;
            if last_seq >= target {
                break;
            }
            from = last_seq + 1;
        }
        Ok(())
    }
}

/// Whether a large write is complete, asked once per write.
pub(crate) struct LargeWrites {
    known: HashMap<(String, u64), bool>,
}

impl LargeWrites {
    pub(crate) fn new() -> Self {
        LargeWrites {
            known: HashMap::new(),
        }
    }

    /// `Some(true)`: deliver; `Some(false)`: skip (incomplete, abandoned or not live);
    /// `None`: incomplete and young, and `live`: wait and look again.
    pub(crate) async fn check(
        &mut self,
        inner: &Inner,
        pid: &str,
        lw: LargeWrite,
        live: bool,
    ) -> Result<Option<bool>> {
        let k = (pid.to_owned(), lw.from);
        if let Some(done) = self.known.get(&k) {
            return Ok(Some(*done));
        }
        let complete = inner.write_complete(pid, lw).await?;
        if complete {
            self.known.insert(k, true);
            return Ok(Some(true));
        }
        let young = now_ms() - lw.time_ms < inner.config.large_write_timeout_ms as i64;
        if live && young {
            return Ok(None);
        }
        self.known.insert(k, false);
        Ok(Some(false))
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
