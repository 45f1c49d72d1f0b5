//! [`DynamoDbReadJournal`]: persistence ids from the registry, events by id from the
//! journal, events by tag from the tag index (`tag_index.rs`); live forms poll. Also the
//! reads replay shares: [`range_stream`] (an id's events over parallel page-sized ranges)
//! and [`query_page`].

use std::collections::HashSet;
use std::sync::Arc;

use async_stream::try_stream;
use futures::{stream, Stream, StreamExt};
use persistence_api::{
    EnvelopeStream, Error, EventEnvelope, Offset, PersistenceId, PersistenceIdStream,
    PersistentEvent, QueryMode, ReadJournal, Result, SequenceNr,
};

use crate::core::{now_ms, Inner};
use crate::error::Failed;
use crate::large_write::LargeWrites;
use crate::schema::{
    decode_event, event_seq, feed_sk, feed_time, feed_upper, is_tombstone, large_write, s, sk_str,
    Item,
};

/// The read journal on DynamoDB. Build it with [`crate::DynamoDb`].
#[derive(Clone)]
pub struct DynamoDbReadJournal {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbReadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbReadJournal")
            .field("table", &self.inner.config.journal_table)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

impl ReadJournal for DynamoDbReadJournal {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        Box::pin(ids_stream(self.inner.clone(), mode.is_live()))
    }

    fn query_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        Box::pin(by_id(
            self.inner.clone(),
            persistence_id,
            from,
            to,
            mode.is_live(),
        ))
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        Box::pin(crate::tag_index::by_tag(
            self.inner.clone(),
            tag,
            offset,
            mode.is_live(),
        ))
    }
}

/// One page of a `Query` on the journal table.
pub(crate) async fn query_page(
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
        .map_err(Failed::into_error)?;
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
            // ended, staying `feed_settle_delay_ms` behind the clock.
            let settle = inner.config.feed_settle_delay.as_millis() as i64;
            let shards = inner.keys.id_shards();
            let mut lo: Vec<String> = vec![feed_sk(started - settle - 1, ""); shards as usize];
            loop {
                tokio::time::sleep(inner.config.poll_interval).await;
                persistence_api::metrics::record_poll(crate::DynamoDb::NAME, "persistence_ids");
                let upper = now_ms() - settle;
                let hi = feed_upper(upper);
                for shard in 0..shards {
                    let s = shard as usize;
                    if lo[s] >= hi {
                        continue;
                    }
                    let from = feed_time(&lo[s]).unwrap_or(upper);
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
                    let floor = feed_upper(upper - 1);
                    if floor > lo[s] {
                        lo[s] = floor;
                    }
                }
            }
        }
    }
}

fn envelope(event: PersistentEvent) -> EventEnvelope {
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
                    tokio::time::sleep(inner.config.poll_interval).await;
                    persistence_api::metrics::record_poll(crate::DynamoDb::NAME, "events_by_persistence_id");
                }
            }
        }
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
