//! The tag index: numbered entries per tag and shard, handed out by a counter, read in
//! number order, and gaps filled so that no reader passes over a write that lands late.
//!
//! # Why numbers, not times
//! The first design keyed entries by the writer's clock and had live queries read only
//! entries older than a settle delay. A write that took longer than the delay (throttling,
//! retries, a slow transaction, a writer whose clock ran behind) landed behind a reader
//! that had already passed its key, and was lost to that reader for good: 22 of 500 events
//! in one run of 100 concurrent writers on DynamoDB Local with a 500 ms delay (the issue
//! "Three defects"). No delay closes that, because nothing bounds a write's latency.
//!
//! Here every (tag, shard) partition has a counter item; a write takes consecutive numbers
//! from it (`UpdateItem ADD`, one request per distinct tag of the write) before it writes
//! its entries, each conditioned on its key being free. A reader delivers the numbers of a
//! shard strictly in order, so it can always tell "nothing more yet" from "a number is
//! missing": a missing number means a write that took it is still in flight (or its writer
//! died). The reader waits for it, and once it has waited
//! [`DynamoDbConfig::tag_gap_timeout_ms`] (by its own clock) fills the number with a
//! tombstone, conditioned on it being free. Either the entry landed first (the
//! reader reads it) or the tombstone did (the write's transaction fails on its entry and
//! nothing of it is stored; it takes new numbers and tries again). So an acknowledged event
//! reaches every reader, exactly once, whatever its write's latency or its writer's clock
//! (the writer's time only orders entries of different shards): the timeout only decides
//! how long a dead writer can hold a tag's readers up.
//!
//! A current query reads the counters first and reads exactly the numbers up to them:
//! every write acknowledged before the query started took its numbers before that, and
//! every write that started after it takes higher ones.
//!
//! An offset is the last delivered number of every shard (`Offset::Token("c0,c1,...")`):
//! resuming reads each shard strictly after it.
//!
//! [`DynamoDbConfig::tag_gap_timeout_ms`]: crate::DynamoDbConfig::tag_gap_timeout

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_stream::try_stream;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use persistence_api::{AtomicWrite, Error, EventEnvelope, Offset, Result};

use crate::core::{put_request, Inner};
use crate::error::{corrupt, Class, Failed};
use crate::large_write::LargeWrites;
use crate::query::query_page;
use crate::schema::{
    decode_tag_entry, entry_sk, get_i64, get_str, get_u64, is_tombstone, key, large_write, n,
    sk_str, tombstone, Item, COUNTER, COUNTER_SK, PID, SK, TAG_NUMBERS, TOKEN_TIME,
};

/// The numbers one write took: per tag, the first of `count` consecutive numbers.
#[derive(Debug, Default)]
pub(crate) struct Numbers {
    pub(crate) first: HashMap<String, (u64, u64)>,
}

impl Numbers {
    /// Numbers of the most digits there can be for every tag of `write`, to check item
    /// sizes before any number is taken.
    pub(crate) fn widest(write: &AtomicWrite) -> Numbers {
        let mut first = HashMap::new();
        for t in write.events().iter().flat_map(|e| &e.tags) {
            first.insert(t.clone(), (10_000_000_000_000_000_000, 0));
        }
        Numbers { first }
    }

    /// The entry keys of every number taken, for tombstones when the write failed.
    pub(crate) fn keys(&self, inner: &Inner, pid: &str) -> Vec<Item> {
        let shard = inner.keys.tag_shard(pid);
        self.first
            .iter()
            .flat_map(|(tag, (first, count))| (*first..first + count).map(move |num| (tag, num)))
            .map(|(tag, num)| key(inner.keys.tag_pk(tag, shard), entry_sk(num)))
            .collect()
    }
}

impl Inner {
    /// Takes numbers for the tagged events of `write`: per distinct tag, one consecutive
    /// number per event carrying it, from the counter of the id's shard (one `UpdateItem`
    /// per tag, concurrently).
    pub(crate) async fn take_numbers(&self, write: &AtomicWrite) -> Result<Numbers> {
        let pid = write.persistence_id().as_str();
        let mut counts: Vec<(String, u64)> = Vec::new();
        for e in write.events() {
            let mut seen: Vec<&String> = Vec::new();
            for t in &e.tags {
                if seen.contains(&t) {
                    continue;
                }
                seen.push(t);
                match counts.iter_mut().find(|(ct, _)| ct == t) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((t.clone(), 1)),
                }
            }
        }
        let shard = self.keys.tag_shard(pid);
        let taken = futures::future::try_join_all(counts.into_iter().map(|(tag, count)| {
            let pk = self.keys.tag_pk(&tag, shard);
            async move {
                let last = self.add_to_counter(&pk, count).await?;
                Ok::<_, Error>((tag, (last + 1 - count, count)))
            }
        }))
        .await?;
        Ok(Numbers {
            first: taken.into_iter().collect(),
        })
    }

    /// The keys of the tag index entries of a stored event of `pid` (from the numbers it
    /// records), for deletes and clean-ups.
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

    /// Adds `count` to the counter of `pk` and answers its new value.
    pub(crate) async fn add_to_counter(&self, pk: &str, count: u64) -> Result<u64> {
        let req = self
            .client
            .update_item()
            .table_name(self.journal_table())
            .set_key(Some(key(pk.to_owned(), COUNTER_SK.to_owned())))
            .update_expression("ADD n :k")
            .expression_attribute_values(":k", n(count))
            .return_values(ReturnValue::UpdatedNew);
        // Retried only when it surely was not applied: a number handed out twice would be
        // a gap (filled) at worst, but a lost answer cannot be retried blindly.
        let out = self
            .retry
            .run("write_events", || req.clone().send())
            .await
            .map_err(Failed::into_error)?;
        out.attributes()
            .and_then(|a| get_u64(a, COUNTER))
            .ok_or_else(|| corrupt(COUNTER, format!("the tag counter {pk:?} holds no number")))
    }

    /// Tombstones on numbers a failed write took and did not use (best effort: a reader
    /// fills them after the gap timeout otherwise). Only for writes known not applied.
    pub(crate) async fn give_back(&self, pid: &str, numbers: &Numbers) {
        let writes: Result<Vec<_>> = numbers
            .keys(self, pid)
            .into_iter()
            .map(|k| put_request(tombstone(k)))
            .collect();
        let result = match writes {
            Ok(w) if w.is_empty() => Ok(()),
            Ok(w) => {
                self.batch_write_all("write_events", self.journal_table(), w)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not give back unused tag numbers; readers fill them after tag_gap_timeout_ms");
        }
    }

    /// The counters of every shard of `tag` (0 where none exists).
    async fn counters(&self, operation: &'static str, tag: &str) -> Result<Vec<u64>> {
        let pks = (0..self.keys.tag_shards()).map(|shard| self.keys.tag_pk(tag, shard));
        self.counters_of(operation, pks.collect()).await
    }

    /// The counters of the numbered partitions `pks` (0 where none exists), one
    /// consistent `GetItem` each, concurrently.
    pub(crate) async fn counters_of(
        &self,
        operation: &'static str,
        pks: Vec<String>,
    ) -> Result<Vec<u64>> {
        let gets = pks.into_iter().map(|pk| async move {
            let item = self
                .get_item(operation, key(pk, COUNTER_SK.to_owned()))
                .await?;
            Ok::<_, Error>(item.as_ref().and_then(|i| get_u64(i, COUNTER)).unwrap_or(0))
        });
        futures::future::try_join_all(gets).await
    }

    /// Fills the numbers `from..=to` of `pk` that are still free with tombstones (a
    /// conditional `PutItem` each, up to 16 at a time); the reader reads them again.
    pub(crate) async fn fill_all(
        &self,
        operation: &'static str,
        pk: &str,
        (from, to): (u64, u64),
    ) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(from..=to)
            .map(|num| self.fill(operation, pk, num))
            .buffer_unordered(16)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(())
    }

    /// Fills number `num` of `pk` with a tombstone if it is still free. True: filled (the
    /// write that took it can no longer store its entry there); false: an entry is there.
    pub(crate) async fn fill(&self, operation: &'static str, pk: &str, num: u64) -> Result<bool> {
        let req = self
            .client
            .put_item()
            .table_name(self.journal_table())
            .set_item(Some(tombstone(key(pk.to_owned(), entry_sk(num)))))
            .condition_expression("attribute_not_exists(pk)");
        match self.retry.run(operation, || req.clone().send()).await {
            Ok(_) => Ok(true),
            Err(f) if f.class == Class::Conflict => Ok(false),
            Err(f) => Err(f.into_error()),
        }
    }
}

/// The text form of an offset: the last delivered number of every shard.
pub(crate) fn encode_offset(last: &[u64]) -> Offset {
    Offset::Token(
        last.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub(crate) fn decode_offset(offset: Offset, shards: usize) -> Result<Vec<u64>> {
    match offset {
        Offset::NoOffset | Offset::Sequence(0) => Ok(vec![0; shards]),
        Offset::Token(t) => {
            let parts: Option<Vec<u64>> = t.split(',').map(|p| p.parse().ok()).collect();
            match parts {
                Some(p) if p.len() == shards => Ok(p),
                _ => Err(Error::invalid_input(format!(
                    "{t:?} is not an events-by-tag offset of this journal (the last number of each of its {shards} tag shards, comma-separated)"
                ))),
            }
        }
        other => Err(Error::invalid_input(format!(
            "the DynamoDB backend's tag offsets are Offset::Token values, got {other:?}"
        ))),
    }
}

/// One shard of a tag, as a reader walks it.
struct Shard {
    pk: String,
    /// Every number up to this one is delivered, skipped or buffered.
    read: u64,
    /// Read up to this number (the counter at the start of a current query).
    limit: u64,
    /// Entries read, not yet delivered, in number order: (write time, number, entry).
    buf: VecDeque<(i64, u64, Item)>,
    /// The missing numbers this reader waits for, and since when.
    gaps: Gaps,
    /// More entries can be read at once (the last page was not the last, or a gap was just
    /// filled): while its buffer is empty, no other shard's entry may be delivered, as one
    /// of the unread entries may be older.
    readable: bool,
}

/// Numbers `from..=to` missing in a shard: all taken (a later number is there, or the
/// counter was past them) when the reader first found them missing, at `since`.
#[derive(Clone, Copy)]
struct Gap {
    from: u64,
    to: u64,
    since: Instant,
}

/// The missing numbers a reader of one shard waits for, each range with the moment this
/// reader first saw it missing. Every range a page shows is noted when the page is read,
/// not only the first: a page with several gaps (a retried counter update skips numbers
/// that no entry will ever take) costs one gap timeout, not one per gap. Only the reader's
/// own clock counts: the writers' clocks never decide anything, so a writer whose clock is
/// off cannot make a reader skip or wait.
#[derive(Default)]
pub(crate) struct Gaps {
    seen: Vec<Gap>,
}

impl Gaps {
    /// Notes the ranges missing before and between `numbers` (a page of entry numbers in
    /// order, all above `read`), each from now unless an earlier sighting holds it.
    pub(crate) fn note_page(&mut self, read: u64, numbers: impl IntoIterator<Item = u64>) {
        let mut prev = read;
        for num in numbers {
            if num > prev + 1 {
                self.note(prev + 1, num - 1);
            }
            prev = num;
        }
    }

    fn note(&mut self, from: u64, to: u64) {
        if !self.seen.iter().any(|g| g.from <= from && from <= g.to) {
            self.seen.push(Gap {
                from,
                to,
                since: Instant::now(),
            });
        }
    }

    /// The numbers of `from..=to` (all missing now) that have been missing for `timeout`
    /// since this reader first saw `from` missing: those taken by then.
    pub(crate) fn due(&mut self, from: u64, to: u64, timeout: Duration) -> Option<(u64, u64)> {
        match self.seen.iter().find(|g| g.from <= from && from <= g.to) {
            Some(g) => (g.since.elapsed() >= timeout).then_some((from, g.to.min(to))),
            None => {
                self.note(from, to);
                None
            }
        }
    }

    /// Forgets the ranges at or below `read` (delivered, skipped, or filled and read).
    pub(crate) fn passed(&mut self, read: u64) {
        self.seen.retain(|g| g.to > read);
    }

    /// Forgets the ranges that begin at or below `to` (just filled: the reader reads their
    /// tombstones next).
    pub(crate) fn filled(&mut self, to: u64) {
        self.seen.retain(|g| g.from > to);
    }
}

/// Events by tag, current or live (see the module docs).
pub(crate) fn by_tag(
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
    try_stream! {
        let count = inner.keys.tag_shards() as usize;
        let start = decode_offset(offset, count)?;
        if tag.len() > crate::MAX_TAG_BYTES {
            // No write stores such a tag (and its key would be too long to query): an
            // unknown tag, nothing to deliver, ever.
            if live {
                futures::future::pending::<()>().await;
            }
            return;
        }
        let limits = if live {
            vec![u64::MAX; count]
        } else {
            inner.counters(operation, &tag).await?
        };
        let mut shards: Vec<Shard> = (0..count)
            .map(|i| Shard {
                pk: inner.keys.tag_pk(&tag, i as u32),
                read: start[i],
                limit: limits[i],
                buf: VecDeque::new(),
                gaps: Gaps::default(),
                readable: false,
            })
            .collect();
        let mut delivered = start;
        let timeout = inner.config.tag_gap_timeout;
        let mut large = LargeWrites::new();
        loop {
            // Read every shard that has nothing buffered, as far as its numbers are
            // contiguous; `again`: something may be readable at once.
            for sh in shards.iter_mut() {
                if !sh.buf.is_empty() || sh.read >= sh.limit {
                    continue;
                }
                sh.readable = false;
                let (items, more) =
                    entry_page(&inner, operation, "tag", &sh.pk, sh.read, sh.limit).await?;
                let mut contiguous = true;
                sh.gaps.note_page(sh.read, items.iter().map(|(num, _)| *num));
                for (num, it) in items {
                    let written = get_i64(&it, TOKEN_TIME);
                    if num != sh.read + 1 {
                        contiguous = false;
                        if let Some(due) = sh.gaps.due(sh.read + 1, num - 1, timeout) {
                            inner.fill_all(operation, &sh.pk, due).await?;
                            sh.gaps.filled(due.1);
                            sh.readable = true;
                        }
                        break;
                    }
                    if is_tombstone(&it) {
                        sh.read = num;
                        continue;
                    }
                    if let Some(lw) = large_write(&it) {
                        let pid = get_str(&it, PID).to_owned();
                        match large.check(&inner, &pid, lw, true).await? {
                            Some(true) => {}
                            Some(false) => {
                                // Old and incomplete: fenced off (once per write), it can
                                // never complete.
                                if large.is_fenced(&pid, lw) || inner.fence(&pid, lw).await? {
                                    large.fenced(&pid, lw);
                                    sh.read = num;
                                    continue;
                                }
                                large.completed(&pid, lw);
                            }
                            None => {
                                contiguous = false;
                                break;
                            }
                        }
                    }
                    sh.read = num;
                    sh.gaps.passed(num);
                    sh.buf.push_back((written.unwrap_or(0), num, it));
                }
                if contiguous {
                    if more.is_some() {
                        sh.readable = true;
                    } else if sh.read < sh.limit && sh.limit != u64::MAX {
                        // A current query: numbers up to the counter read at its start
                        // that have no entry yet, their writes in flight.
                        if let Some(due) = sh.gaps.due(sh.read + 1, sh.limit, timeout) {
                            inner.fill_all(operation, &sh.pk, due).await?;
                            sh.gaps.filled(due.1);
                            sh.readable = true;
                        }
                    }
                }
            }
            let again = shards.iter().any(|sh| sh.readable);
            // Deliver what was read, merging the shards by write time; each shard in
            // number order (an id's events are all in one shard, in its order). A shard
            // with nothing buffered that is not read to its end holds the others back,
            // as its next entries may be older than theirs: in a current query always (it
            // waits for that shard anyway before it completes, so this costs no time:
            // a gap's in-flight write, or a retried counter's skipped numbers, would
            // otherwise let a later write of another shard pass ahead), in a live one
            // only while more can be read at once (a gap there may be a dead writer's,
            // which must not hold every shard up for the gap timeout).
            loop {
                if shards.iter().any(|sh| {
                    sh.buf.is_empty() && sh.read < sh.limit && (sh.readable || !live)
                }) {
                    break;
                }
                let best = shards
                    .iter()
                    .enumerate()
                    .filter_map(|(i, sh)| sh.buf.front().map(|(t, _, _)| (*t, i)))
                    .min();
                let Some((_, i)) = best else { break };
                let Some((_, num, it)) = shards[i].buf.pop_front() else { break };
                let (event, _) = decode_tag_entry(it)?;
                delivered[i] = num;
                yield EventEnvelope {
                    offset: encode_offset(&delivered),
                    event,
                };
            }
            if !live && shards.iter().all(|sh| sh.read >= sh.limit) {
                break;
            }
            if !again {
                tokio::time::sleep(inner.config.poll_interval).await;
                persistence_api::metrics::record_poll(crate::DynamoDb::NAME, "events_by_tag");
            }
        }
    }
}

/// One page of the numbered entries of partition `pk` after number `read`, up to `limit`
/// (a shard of the tag index, or of the durable-state change index: `what` names which in
/// the error), each with its number; and whether more pages follow.
pub(crate) async fn entry_page(
    inner: &Inner,
    operation: &'static str,
    what: &str,
    pk: &str,
    read: u64,
    limit: u64,
) -> Result<(Vec<(u64, Item)>, Option<Item>)> {
    let (items, more) = query_page(
        inner,
        operation,
        "pk = :pk AND sk BETWEEN :a AND :b",
        vec![
            (":pk", pk.to_owned()),
            (":a", entry_sk(read + 1)),
            (":b", entry_sk(limit.min(u64::MAX - 1))),
        ],
        None,
    )
    .await?;
    let items = items
        .into_iter()
        .map(|it| {
            let num: u64 = sk_str(&it).parse().map_err(|_| {
                corrupt(
                    SK,
                    format!(
                        "the {what} entry of {pk:?} has the sort key {:?}, not a number",
                        sk_str(&it)
                    ),
                )
            })?;
            Ok((num, it))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((items, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use persistence_api::ErrorKind;

    #[test]
    fn offsets_round_trip_and_wrong_shard_counts_are_refused() {
        let o = encode_offset(&[3, 0, 17, 5]);
        assert_eq!(o, Offset::Token("3,0,17,5".into()));
        assert_eq!(decode_offset(o.clone(), 4).unwrap(), vec![3, 0, 17, 5]);
        let err = decode_offset(o, 8).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("8 tag shards"), "{err}");
        assert_eq!(decode_offset(Offset::NoOffset, 2).unwrap(), vec![0, 0]);
        assert!(decode_offset(Offset::Token("a,b".into()), 2).is_err());
    }

    #[test]
    fn entry_keys_sort_below_the_counter_and_in_number_order() {
        assert!(entry_sk(u64::MAX - 1).as_str() < COUNTER_SK);
        assert!(entry_sk(9) < entry_sk(10));
    }
}
