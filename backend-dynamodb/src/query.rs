//! [`DynamoDbReadJournal`]: persistence ids from the registry, events by id from the
//! journal, events by tag from the tag index; live forms poll.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_stream::try_stream;
use futures::StreamExt;
use persistence_api::{
    Capabilities, EnvelopeStream, Error, EventEnvelope, Offset, PersistenceId, PersistenceIdStream,
    ReadJournal, Result, SequenceNr,
};

use crate::client::{now_ms, Inner};
use crate::item::{decode_event, decode_tag_entry, event_seq, large_write, s, sk_str, Item};
use crate::journal::{is_tombstone, range_stream, LargeWrites};
use crate::schema::{bucket_sk, token_time, token_upper};

/// The read journal on DynamoDB. Build it with [`crate::DynamoDb`].
#[derive(Clone)]
pub struct DynamoDbReadJournal {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbReadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbReadJournal")
            .field("table", &self.inner.config.journal_table)
            .field("journal_name", &self.inner.config.journal_name)
            .finish()
    }
}

impl ReadJournal for DynamoDbReadJournal {
    fn capabilities(&self) -> Capabilities {
        crate::journal::capabilities(&self.inner)
    }

    fn current_persistence_ids(&self) -> PersistenceIdStream {
        Box::pin(ids_stream(self.inner.clone(), false))
    }

    fn persistence_ids(&self) -> PersistenceIdStream {
        Box::pin(ids_stream(self.inner.clone(), true))
    }

    fn current_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        Box::pin(by_id(self.inner.clone(), persistence_id, from, to, false))
    }

    fn events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> EnvelopeStream {
        Box::pin(by_id(self.inner.clone(), persistence_id, from, to, true))
    }

    fn current_events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        Box::pin(by_tag(self.inner.clone(), tag, offset, false))
    }

    fn events_by_tag(&self, tag: String, offset: Offset) -> EnvelopeStream {
        Box::pin(by_tag(self.inner.clone(), tag, offset, true))
    }
}

/// One page of a `Query` on the journal table.
async fn query_page(
    inner: &Inner,
    operation: &'static str,
    condition: &'static str,
    values: Vec<(&'static str, String)>,
    start: Option<Item>,
) -> Result<(Vec<Item>, Option<Item>)> {
    let mut req = inner
        .client
        .query()
        .table_name(inner.journal_table())
        .key_condition_expression(condition)
        .limit(inner.config.page_size as i32)
        .consistent_read(inner.consistent())
        .set_exclusive_start_key(start);
    for (name, value) in values {
        req = req.expression_attribute_values(name, s(value));
    }
    let out = inner
        .retry
        .run(operation, || req.clone().send())
        .await
        .map_err(|f| f.into_error(operation))?;
    let last = out.last_evaluated_key().cloned();
    Ok((out.items.unwrap_or_default(), last))
}

fn ids_stream(
    inner: Arc<Inner>,
    live: bool,
) -> impl futures::Stream<Item = Result<PersistenceId>> + Send + 'static {
    let operation = if live {
        "persistence_ids"
    } else {
        "current_persistence_ids"
    };
    // A live query follows the new-id feed from a little before it started.
    let started = inner.token_time();
    try_stream! {
        let mut seen: HashSet<String> = HashSet::new();
        // Every id once, from the registry.
        for shard in 0..inner.keys.id_shards() {
            let mut start = None;
            loop {
                let (items, next) = query_page(
                    &inner,
                    operation,
                    "pk = :pk",
                    vec![(":pk", inner.keys.ids_pk(shard))],
                    start,
                )
                .await?;
                for item in items {
                    let pid = sk_str(&item).to_owned();
                    if live {
                        seen.insert(pid.clone());
                    }
                    yield PersistenceId::new(pid)?;
                }
                match next {
                    Some(k) => start = Some(k),
                    None => break,
                }
            }
        }
        if live {
            // Then new ids from the time-ordered feed, per shard from where the last poll
            // ended, staying `tag_settle_delay_ms` behind the clock like live tag queries.
            let settle = inner.config.tag_settle_delay_ms as i64;
            let shards = inner.keys.id_shards();
            let mut lo: Vec<String> = vec![feed_sk(started - settle - 1, ""); shards as usize];
            loop {
                tokio::time::sleep(inner.config.poll_interval()).await;
                let upper = now_ms() - settle;
                let hi = token_upper(upper);
                for shard in 0..shards {
                    let s = shard as usize;
                    if lo[s] >= hi {
                        continue;
                    }
                    let from = token_time(&lo[s]).unwrap_or(upper);
                    let mut bucket = inner.keys.bucket_of(from);
                    while bucket <= upper {
                        let mut start = None;
                        loop {
                            let (items, next) = query_page(
                                &inner,
                                operation,
                                "pk = :pk AND sk BETWEEN :a AND :b",
                                vec![
                                    (":pk", inner.keys.ids_feed_pk(bucket, shard)),
                                    (":a", lo[s].clone()),
                                    (":b", hi.clone()),
                                ],
                                start,
                            )
                            .await?;
                            for item in items {
                                let sk = sk_str(&item);
                                if sk == lo[s] {
                                    continue;
                                }
                                lo[s] = sk.to_owned();
                                let pid = sk.get(14..).unwrap_or("").to_owned();
                                if seen.insert(pid.clone()) {
                                    yield PersistenceId::new(pid)?;
                                }
                            }
                            match next {
                                Some(k) => start = Some(k),
                                None => break,
                            }
                        }
                        bucket += inner.keys.bucket_ms();
                    }
                    // Everything up to `upper` is read: the next poll starts there even if
                    // nothing was new (so an idle feed costs one query per shard and poll).
                    let floor = token_upper(upper - 1);
                    if floor > lo[s] {
                        lo[s] = floor;
                    }
                }
            }
        }
    }
}

/// The sort key of a new-id feed entry: write time (13 digits), `|`, the id.
pub(crate) fn feed_sk(time_ms: i64, pid: &str) -> String {
    format!("{time_ms:013}|{pid}")
}

fn envelope(event: persistence_api::PersistentEvent) -> EventEnvelope {
    EventEnvelope {
        offset: Offset::Sequence(event.sequence_nr),
        event,
    }
}

fn by_id(
    inner: Arc<Inner>,
    pid: PersistenceId,
    from: SequenceNr,
    to: SequenceNr,
    live: bool,
) -> impl futures::Stream<Item = Result<EventEnvelope>> + Send + 'static {
    let operation = if live {
        "events_by_persistence_id"
    } else {
        "current_events_by_persistence_id"
    };
    try_stream! {
        if !live {
            let (highest, meta) =
                futures::try_join!(inner.highest(pid.as_str()), inner.meta(pid.as_str()))?;
            let start = from.max(meta.deleted_to.saturating_add(1)).max(1);
            let end = to.min(highest);
            if start <= end {
                let events = range_stream(inner.clone(), pid.clone(), start, end, u64::MAX);
                futures::pin_mut!(events);
                while let Some(event) = events.next().await {
                    yield envelope(event?);
                }
            }
        } else {
            // Page by page from the start, so an atomic write still being stored over several
            // transactions is waited for instead of dropped.
            let meta = inner.meta(pid.as_str()).await?;
            let mut next = from.max(meta.deleted_to.saturating_add(1)).max(1);
            let mut large = LargeWrites::new();
            // The first sequence number of leftovers of an abandoned large write with nothing
            // delivered above them yet: the poll reads from there again, because a write that
            // removes them (the retry of that write, say) stores its events at those numbers.
            let mut resume: Option<u64> = None;
            while next <= to {
                let items = inner
                    .query_events(operation, pid.as_str(), next, to, Some(inner.config.page_size as i32))
                    .await?;
                let full = items.len() >= inner.config.page_size as usize;
                let mut waiting = false;
                let mut finished = false;
                for item in items {
                    let seq = event_seq(&item)?;
                    if is_tombstone(&item) {
                        // Deleted meanwhile: its number is taken, never delivered.
                        next = seq.saturating_add(1);
                        continue;
                    }
                    if let Some(lw) = large_write(&item) {
                        match large.check(&inner, pid.as_str(), lw, true).await? {
                            Some(true) => {}
                            Some(false) => {
                                resume.get_or_insert(seq);
                                next = seq + 1;
                                continue;
                            }
                            None => {
                                waiting = true;
                                break;
                            }
                        }
                    }
                    resume = None;
                    next = seq.saturating_add(1);
                    yield envelope(decode_event(pid.clone(), seq, item)?);
                    if seq >= to {
                        finished = true;
                        break;
                    }
                }
                if finished {
                    break;
                }
                if !waiting && !full {
                    if let Some(r) = resume {
                        next = r;
                        waiting = true;
                    }
                }
                if next > to {
                    break;
                }
                if waiting || !full {
                    tokio::time::sleep(inner.config.poll_interval()).await;
                }
            }
        }
    }
}

type Page = Result<(Vec<Item>, Option<Item>)>;

struct Cursor {
    pk: String,
    buf: VecDeque<Item>,
    /// The next page, being fetched.
    pending: Option<tokio::task::JoinHandle<Page>>,
}

/// Fetches one page of tag index entries of `pk` with `lo <= sk <= hi` in a task.
fn spawn_page(
    inner: Arc<Inner>,
    operation: &'static str,
    pk: String,
    lo: String,
    hi: String,
    start: Option<Item>,
) -> tokio::task::JoinHandle<Page> {
    tokio::spawn(async move {
        query_page(
            &inner,
            operation,
            "pk = :pk AND sk BETWEEN :a AND :b",
            vec![(":pk", pk), (":a", lo), (":b", hi)],
            start,
        )
        .await
    })
}

fn by_tag(
    inner: Arc<Inner>,
    tag: String,
    offset: Offset,
    live: bool,
) -> impl futures::Stream<Item = Result<EventEnvelope>> + Send + 'static {
    let operation = if live {
        "events_by_tag"
    } else {
        "current_events_by_tag"
    };
    // A current query ends at the moment it was asked for.
    let started = inner.token_time();
    try_stream! {
        let mut after: Option<String> = match offset {
            Offset::NoOffset | Offset::Sequence(0) => None,
            Offset::Token(t) => {
                if token_time(&t).is_none() {
                    Err(Error::invalid_input(format!("{t:?} is not an offset of this backend")).with_operation(operation))?;
                }
                Some(t)
            }
            other => {
                Err(Error::invalid_input(format!(
                    "the DynamoDB backend's offsets are Offset::Token values, got {other:?}"
                ))
                .with_operation(operation))?;
                None
            }
        };
        let settle = inner.config.tag_settle_delay_ms as i64;
        let mut large = LargeWrites::new();
        loop {
            let upper_ms = if live { now_ms() - settle } else { started };
            let hi = token_upper(upper_ms);
            let from_bucket = after
                .as_deref()
                .and_then(token_time)
                .map(|t| inner.keys.bucket_of(t))
                .unwrap_or(0);
            let to_bucket = inner.keys.bucket_of(upper_ms);
            let mut buckets = Vec::new();
            if from_bucket <= to_bucket {
                let mut start = None;
                loop {
                    let (items, next) = query_page(
                        &inner,
                        operation,
                        "pk = :pk AND sk BETWEEN :a AND :b",
                        vec![
                            (":pk", inner.keys.tag_buckets_pk(&tag)),
                            (":a", bucket_sk(from_bucket)),
                            (":b", bucket_sk(to_bucket)),
                        ],
                        start,
                    )
                    .await?;
                    for item in items {
                        if let Ok(b) = sk_str(&item).parse::<i64>() {
                            buckets.push(b);
                        }
                    }
                    match next {
                        Some(k) => start = Some(k),
                        None => break,
                    }
                }
            }
            'pass: for bucket in buckets {
                let lo = after.clone().unwrap_or_else(|| "0".to_owned());
                if lo >= hi {
                    // The offset is ahead of what this pass may read (a live query's settle delay).
                    break 'pass;
                }
                // One cursor per shard; each fetches its next page in a task as soon as
                // the previous one arrives, so the network overlaps the caller's work.
                let mut cursors: Vec<Cursor> = (0..inner.keys.tag_shards())
                    .map(|shard| {
                        let pk = inner.keys.tag_pk(&tag, bucket, shard);
                        Cursor {
                            pending: Some(spawn_page(inner.clone(), operation, pk.clone(), lo.clone(), hi.clone(), None)),
                            pk,
                            buf: VecDeque::new(),
                        }
                    })
                    .collect();
                loop {
                    let mut fetched = false;
                    for c in cursors.iter_mut() {
                        if c.buf.is_empty() {
                            if let Some(pending) = c.pending.take() {
                                let (items, next) = pending
                                    .await
                                    .map_err(|e| Error::new(persistence_api::ErrorKind::Unexpected, e.to_string()))??;
                                if let Some(next) = next {
                                    c.pending = Some(spawn_page(inner.clone(), operation, c.pk.clone(), lo.clone(), hi.clone(), Some(next)));
                                }
                                c.buf.extend(items.into_iter().filter(|it| sk_str(it) != lo));
                                fetched = true;
                            }
                        }
                    }
                    if fetched {
                        continue;
                    }
                    let mut best: Option<usize> = None;
                    for (i, c) in cursors.iter().enumerate() {
                        if let Some(it) = c.buf.front() {
                            let better = match best {
                                None => true,
                                Some(b) => cursors[b].buf.front().is_some_and(|bt| sk_str(it) < sk_str(bt)),
                            };
                            if better {
                                best = Some(i);
                            }
                        }
                    }
                    let Some(i) = best else { break };
                    let Some(item) = cursors[i].buf.pop_front() else { break };
                    let lw = large_write(&item);
                    let (event, token) = decode_tag_entry(item)?;
                    if let Some(lw) = lw {
                        match large.check(&inner, event.persistence_id.as_str(), lw, live).await? {
                            Some(true) => {}
                            Some(false) => {
                                after = Some(token);
                                continue;
                            }
                            None => break 'pass,
                        }
                    }
                    after = Some(token.clone());
                    yield EventEnvelope {
                        offset: Offset::Token(token),
                        event,
                    };
                }
            }
            if !live {
                break;
            }
            tokio::time::sleep(inner.config.poll_interval()).await;
        }
    }
}
