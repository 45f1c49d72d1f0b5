//! The read journal: persistence ids, events by persistence id, events by tag.
//!
//! # Events by tag
//! `tag_views` holds a copy of every tagged event in partitions of `(tag, time bucket)`,
//! ordered by the event's time-based UUID. A query walks the buckets from its offset to a
//! bound, page by page, and:
//! - waits out `eventual_consistency_delay` before reading a stretch of time: a current
//!   query sleeps that long once and then reads up to the moment it started; a live query
//!   reads up to `now - delay` on every poll. A write is numbered (its UUID taken) before it
//!   is stored, so without the wait a reader could pass its position while it is still in
//!   flight and skip it for good (akka-persistence-cassandra #606, #383);
//! - checks each id's `tag_pid_sequence_nr` (1, 2, 3, ... per tag and id): a jump is a
//!   gap, a delayed event that landed behind the reader. It then looks back
//!   (`gap_lookback`) for the missing events and delivers them first, retrying for
//!   `gap_timeout` before it fails the stream rather than skip silently;
//! - reports as offset the greatest UUID delivered so far (`Offset::TimeBasedUuid`), so
//!   offsets never go backwards and resuming from any of them (exclusive) neither skips nor
//!   repeats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use persistence_api::{
    EnvelopeStream, Error, ErrorKind, EventEnvelope, Offset, PersistenceId, PersistenceIdStream,
    QueryMode, ReadJournal, Result, SequenceNr,
};
use scylla::value::CqlTimeuuid;

use crate::core::Inner;
use crate::error::{unexpected, ResultExt};
use crate::journal::event_stream;
use crate::schema::TagRow;
use crate::timeuuid;

/// The Cassandra read journal.
pub struct CassandraReadJournal {
    pub(crate) inner: Arc<Inner>,
}

/// Every persistence id of this namespace in `all_persistence_ids`, page by page.
fn scan_ids(inner: Arc<Inner>) -> PersistenceIdStream {
    Box::pin(async_stream::try_stream! {
        let pager = inner
            .session
            .execute_iter(inner.stmts.select_persistence_ids.clone(), ())
            .await
            .op("persistence_ids")?;
        let mut rows = pager
            .rows_stream::<(String,)>()
            .map_err(|e| unexpected("persistence_ids", e))?;
        while let Some(row) = rows.next().await {
            let (key,) = row.op("persistence_ids")?;
            if let Some(id) = inner.pid_of_key(&key) {
                yield id?;
            }
        }
    })
}

struct TagQuery {
    inner: Arc<Inner>,
    tag: String,
    tag_key: String,
}

impl TagQuery {
    /// The earliest bucket any writer registered for the tag.
    async fn first_bucket(&self) -> Result<Option<i64>> {
        let result = self
            .inner
            .exec(
                "events_by_tag",
                &self.inner.stmts.select_tag_buckets,
                (self.tag_key.as_str(),),
            )
            .await?;
        let row: Option<(Option<Vec<i64>>,)> = Inner::first_row("events_by_tag", result)?;
        Ok(row.and_then(|r| r.0).and_then(|v| v.into_iter().min()))
    }

    /// The rows with `lower < timestamp <= upper`, bucket after bucket, in order.
    fn rows(
        &self,
        lower: CqlTimeuuid,
        upper: CqlTimeuuid,
    ) -> impl futures::Stream<Item = Result<TagRow>> + Send + 'static {
        let inner = self.inner.clone();
        let statement = inner.stmts.select_tag_views.clone();
        crate::core::bucketed_rows(
            inner,
            statement,
            "events_by_tag",
            self.tag_key.clone(),
            lower,
            upper,
        )
    }

    /// Looks back before `at` for the rows of `pid_key` numbered `from..to` (exclusive),
    /// retrying until `gap_timeout`; fails when they stay missing.
    async fn look_back(
        &self,
        pid_key: &str,
        from: u64,
        to: u64,
        at: CqlTimeuuid,
    ) -> Result<Vec<TagRow>> {
        let config = &self.inner.config;
        let started = Instant::now();
        let at_ms = timeuuid::millis_of(at.as_ref());
        let lower = timeuuid::min_of_millis(at_ms - config.gap_lookback.as_millis() as i64);
        loop {
            let mut found: HashMap<u64, TagRow> = HashMap::new();
            let mut rows = Box::pin(self.rows(lower, at));
            while let Some(row) = rows.next().await {
                let row = row?;
                let n = row.tag_pid_sequence_nr.max(0) as u64;
                if row.persistence_id == pid_key && n >= from && n < to {
                    found.insert(n, row);
                }
            }
            if found.len() as u64 == to - from {
                let mut rows: Vec<(u64, TagRow)> = found.into_iter().collect();
                rows.sort_by_key(|(n, _)| *n);
                return Ok(rows.into_iter().map(|(_, r)| r).collect());
            }
            if started.elapsed() >= config.gap_timeout {
                let id = self
                    .inner
                    .pid_of_key(pid_key)
                    .and_then(|r| r.ok())
                    .map_or_else(|| pid_key.to_owned(), |p| p.into_string());
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "events by tag {:?}: tagged events {from}..{to} (tag sequence numbers, exclusive end) of {id} are missing after looking back {:?} for {:?}",
                        self.tag, config.gap_lookback, config.gap_timeout
                    ),
                )
                .with_persistence_id(id));
            }
            tokio::time::sleep(config.poll_interval).await;
            persistence_api::metrics::record_poll(crate::Cassandra::NAME, "events_by_tag");
        }
    }
}

fn envelope(inner: &Inner, row: TagRow, offset: CqlTimeuuid) -> Result<EventEnvelope> {
    let id = inner.pid_of_key(&row.persistence_id).unwrap_or_else(|| {
        Err(Error::new(
            ErrorKind::Unexpected,
            format!("tag row of {:?} outside this namespace", row.persistence_id),
        ))
    })?;
    Ok(EventEnvelope {
        offset: Offset::TimeBasedUuid(offset.into()),
        event: row.into_event_row().into_event(id)?,
    })
}

fn tag_stream(inner: Arc<Inner>, tag: String, offset: Offset, live: bool) -> EnvelopeStream {
    Box::pin(async_stream::try_stream! {
        let query = TagQuery { tag_key: inner.tag_key(&tag), tag, inner: inner.clone() };
        let config = inner.config.clone();
        let start: Option<CqlTimeuuid> = match offset {
            Offset::NoOffset | Offset::Sequence(0) => None,
            Offset::TimeBasedUuid(u) => Some(u.into()),
            other => Err(Error::invalid_input(format!(
                "the Cassandra read journal's offsets are Offset::TimeBasedUuid, got {other:?}"
            )))?,
        };
        let from_start = start.is_none();
        // The end of the current query: nothing numbered after this moment.
        let current_end = timeuuid::now();
        if !live {
            tokio::time::sleep(config.eventual_consistency_delay).await;
        }
        let mut delivered_to: Option<CqlTimeuuid> = start;
        let mut scanned_to: Option<CqlTimeuuid> = start;
        let mut seen: HashMap<String, u64> = HashMap::new();
        loop {
            let upper = if live {
                timeuuid::max_of_millis(
                    timeuuid::now_millis() - config.eventual_consistency_delay.as_millis() as i64,
                )
            } else {
                current_end
            };
            let lower = match scanned_to {
                Some(l) => Some(l),
                None => query
                    .first_bucket()
                    .await?
                    .map(|b| timeuuid::min_of_millis(b - 1)),
            };
            if let Some(lower) = lower {
                if lower < upper {
                    let mut rows = Box::pin(query.rows(lower, upper));
                    while let Some(row) = rows.next().await {
                        let row = row?;
                        let n = row.tag_pid_sequence_nr.max(0) as u64;
                        let expected = seen
                            .get(&row.persistence_id)
                            .map(|s| s + 1)
                            .or(from_start.then_some(1));
                        if let Some(expected) = expected {
                            if n < expected {
                                continue;
                            }
                            if n > expected {
                                let missing = query
                                    .look_back(&row.persistence_id, expected, n, row.timestamp())
                                    .await?;
                                for m in missing {
                                    let off = delivered_to.map_or(m.timestamp(), |d| d.max(m.timestamp()));
                                    delivered_to = Some(off);
                                    yield envelope(&inner, m, off)?;
                                }
                            }
                        }
                        match seen.get_mut(&row.persistence_id) {
                            Some(s) => *s = n,
                            None => {
                                seen.insert(row.persistence_id.clone(), n);
                            }
                        }
                        let off = delivered_to.map_or(row.timestamp(), |d| d.max(row.timestamp()));
                        delivered_to = Some(off);
                        yield envelope(&inner, row, off)?;
                    }
                    scanned_to = Some(upper);
                }
            }
            if !live {
                break;
            }
            tokio::time::sleep(config.poll_interval).await;
            persistence_api::metrics::record_poll(crate::Cassandra::NAME, "events_by_tag");
        }
    })
}

fn by_id_stream(
    inner: Arc<Inner>,
    persistence_id: PersistenceId,
    from: SequenceNr,
    to: SequenceNr,
    live: bool,
) -> EnvelopeStream {
    Box::pin(async_stream::try_stream! {
        let pid = inner.pid_key(&persistence_id);
        let mut next = from.max(1);
        loop {
            let (highest, deleted_to) = inner.highest_and_deleted_to(&pid).await?;
            let end = to.min(highest);
            if next <= end {
                let mut events = event_stream(
                    inner.clone(),
                    persistence_id.clone(),
                    next,
                    end,
                    u64::MAX,
                    deleted_to,
                );
                while let Some(event) = events.next().await {
                    let event = event?;
                    next = event.sequence_nr + 1;
                    yield EventEnvelope { offset: Offset::Sequence(event.sequence_nr), event };
                }
                // Deleted or missing numbers below `end` are passed over.
                next = next.max(end + 1);
            }
            if !live || next > to {
                break;
            }
            tokio::time::sleep(inner.config.poll_interval).await;
            persistence_api::metrics::record_poll(crate::Cassandra::NAME, "events_by_persistence_id");
        }
    })
}

impl ReadJournal for CassandraReadJournal {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        if !mode.is_live() {
            return scan_ids(self.inner.clone());
        }
        let inner = self.inner.clone();
        Box::pin(async_stream::try_stream! {
            let mut known: HashSet<PersistenceId> = HashSet::new();
            loop {
                let mut ids = scan_ids(inner.clone());
                while let Some(id) = ids.next().await {
                    let id = id?;
                    if known.insert(id.clone()) {
                        yield id;
                    }
                }
                tokio::time::sleep(inner.config.poll_interval).await;
                persistence_api::metrics::record_poll(crate::Cassandra::NAME, "persistence_ids");
            }
        })
    }

    fn query_events_by_persistence_id(
        &self,
        persistence_id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        by_id_stream(self.inner.clone(), persistence_id, from, to, mode.is_live())
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        tag_stream(self.inner.clone(), tag, offset, mode.is_live())
    }
}
