//! Journal maintenance ([`JournalMaintenance`]): listing the ids the journal holds from its
//! own tables, rebuilding an id's tag rows, tag progress and registry row from its events,
//! and purging every trace of an id (what pekko-persistence-cassandra's `Reconciliation` and
//! `Cleanup` tools do).
//!
//! # Scan
//! `SELECT DISTINCT persistence_id, partition_nr FROM messages` (a token-range scan, paged)
//! yields only the rows of partition 0, then `metadata` adds the ids with a `deleted_to`
//! whose partition 0 is gone. Every id with a highest above 0 has a partition 0: the
//! highest walk (`Inner::walk`) starts there unless `deleted_to` is set, and stops at an
//! empty partition no earlier write reached past, so an id without `deleted_to` and
//! without partition 0 has highest 0; a partition, once written, keeps its static `used`
//! (range deletes leave it), and only a purge deletes whole partitions. So each id is
//! yielded once, from one row, and nothing but a page is held: no set of the ids seen.
//!
//! # Rebuild
//! The id's stored events are read page by page, and for each tag of each event its
//! `tag_views` row is written again with the key the write path gave it: the tag, the
//! time bucket of the event's own time-based UUID, that UUID, the id and the event's
//! number per `(tag, id)` (`tag_pid_sequence_nr`, 1, 2, 3, ... over the id's tagged events
//! in sequence order, as the write path and its repair number them). With no deleted
//! events the numbers are counted from 1; after `delete_events_to` the first stored
//! event's number under each tag is read from its row when that row is still there, else
//! derived from `tag_write_progress` (its last number minus the tagged events stored up
//! to it), else 1 (every row of the id under the tag is lost, so a reader from the start
//! waits for 1). Then `tag_write_progress` (unless it records a later event, written
//! meanwhile), `tag_scanning`, the tag's first bucket in `tag_buckets` and the
//! `all_persistence_ids` row.
//!
//! # Truncate
//! Each index table (`tag_views`, `tag_write_progress`, `tag_scanning`, `tag_buckets`,
//! `all_persistence_ids`) is scanned for its keys (`SELECT DISTINCT` of the partition key,
//! paged), and the partitions whose key belongs to this namespace are deleted: no
//! `TRUNCATE`, which would take every namespace sharing the tables with it. The pending
//! marks of tagged writes (`messages.tag_pending`) are cleared as well: a replay or write
//! before the rebuild would otherwise "repair" the tag rows they point at, numbering them
//! from 1 with the progress gone.
//!
//! # Purge
//! The partitions from the last to the first (so an interrupted purge leaves a prefix the
//! highest walk still finds): the `tag_views` rows of each partition's events (found
//! through their tags), then the partition. Tag rows of events already deleted by
//! `delete_events_to` are no longer reachable through the events: they are found by
//! reading the tag's buckets, from its first bucket to the id's last tag row
//! (`tag_write_progress`), and keeping the id's rows. Then the snapshots,
//! `tag_write_progress`, `tag_scanning`, `metadata` and the `all_persistence_ids` row.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use persistence_api::{
    JournalMaintenance, PersistenceId, PersistenceIdStream, PersistentEvent, PurgeReport,
    RebuildReport, Result,
};
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;

use crate::core::{bucketed_rows, Inner};
use crate::error::{unexpected, ResultExt};
use crate::journal::message_rows;
use crate::schema::TagProgressRow;
use crate::tags::tag_view_row;
use crate::timeuuid;

const SCAN: &str = "scan_persistence_ids";
const REBUILD: &str = "rebuild_persistence_id";
const PURGE: &str = "purge_persistence_id";
const TRUNCATE: &str = "truncate_indexes";
/// Deletes a truncation keeps in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

/// The Cassandra journal maintenance: scan, rebuild and purge of persistence ids (see
/// [`JournalMaintenance`] and the README's "Maintenance").
pub struct CassandraMaintenance {
    pub(crate) inner: Arc<Inner>,
}

/// What a rebuild keeps per tag of the id: the next number, the earliest bucket
/// registered, and the last row written (`sequence_nr`, number, time-based UUID).
struct TagState {
    next: u64,
    first_bucket: i64,
    last: (u64, u64, CqlTimeuuid),
}

impl CassandraMaintenance {
    fn bucket_of(&self, ts: CqlTimeuuid) -> i64 {
        self.inner
            .config
            .tag_time_bucket
            .bucket_of(timeuuid::millis_of(ts.as_ref()))
    }

    /// The number per `(tag, id)` of the first stored event of `pid` under the tag key
    /// `tag` (`seq`, at `ts`), as the write path gave it (see the module docs).
    async fn first_number(
        &self,
        pid: &str,
        tag: &str,
        seq: u64,
        ts: CqlTimeuuid,
        highest: u64,
        deleted_to: u64,
    ) -> Result<u64> {
        let inner = &*self.inner;
        if deleted_to == 0 {
            return Ok(1);
        }
        let result = inner
            .exec(
                REBUILD,
                &inner.stmts.select_tag_view_number,
                (tag, self.bucket_of(ts), ts, pid),
            )
            .await?;
        if let Some((n,)) = Inner::first_row::<(i64,)>(REBUILD, result)? {
            return Ok(n.max(1) as u64);
        }
        let progress: Vec<TagProgressRow> = inner
            .fetch_all(REBUILD, &inner.stmts.select_tag_progress, (pid,))
            .await?;
        let Some((to, last)) = progress.into_iter().find(|r| r.tag == tag).map(|r| {
            (
                r.sequence_nr.unwrap_or(0).max(0) as u64,
                r.tag_pid_sequence_nr.unwrap_or(0).max(0) as u64,
            )
        }) else {
            return Ok(1);
        };
        // The tagged events stored from `seq` to the last one progress records: the first
        // of them is numbered that many below the last's number, plus one.
        let mut stored = 0u64;
        let mut rows = pin!(message_rows(
            self.inner.clone(),
            pid.to_owned(),
            seq,
            to.min(highest),
            REBUILD
        ));
        while let Some(row) = rows.next().await {
            let tags = row?.tags.unwrap_or_default();
            stored += tags.iter().filter(|t| inner.tag_key(t) == tag).count() as u64;
        }
        Ok((last + 1).saturating_sub(stored).max(1))
    }

    /// Writes the `tag_views` rows of one page of tagged events, numbering them on from
    /// `tags`; returns how many it wrote.
    async fn rebuild_page(
        &self,
        pid: &str,
        events: &[(PersistentEvent, CqlTimeuuid)],
        tags: &mut HashMap<String, TagState>,
        highest: u64,
        deleted_to: u64,
    ) -> Result<u64> {
        let inner = &*self.inner;
        let keys: Vec<Vec<String>> = events
            .iter()
            .map(|(e, _)| e.tags.iter().map(|t| inner.tag_key(t)).collect())
            .collect();
        let mut rows = Vec::new();
        for ((e, ts), keys) in events.iter().zip(&keys) {
            let bucket = self.bucket_of(*ts);
            for key in keys {
                if !tags.contains_key(key) {
                    let next = self
                        .first_number(pid, key, e.sequence_nr, *ts, highest, deleted_to)
                        .await?;
                    // The cached first bucket may be one the loss took with it: read the
                    // table again.
                    inner.tag_first_bucket.lock().unwrap().remove(key);
                    inner.register_bucket(key, bucket).await?;
                    tags.insert(
                        key.clone(),
                        TagState {
                            next,
                            first_bucket: bucket,
                            last: (0, 0, *ts),
                        },
                    );
                }
                let state = tags.get_mut(key).expect("inserted above");
                if bucket < state.first_bucket {
                    inner.register_bucket(key, bucket).await?;
                    state.first_bucket = bucket;
                }
                let n = state.next;
                state.next += 1;
                state.last = (e.sequence_nr, n, *ts);
                rows.push(tag_view_row(key, bucket, *ts, pid, n as i64, e));
            }
        }
        inner.insert_tag_views(REBUILD, &rows).await?;
        Ok(rows.len() as u64)
    }

    /// Writes `tag_write_progress` per tag of the rebuild (unless the stored row records a
    /// later event, written while the rebuild ran) and `tag_scanning`.
    async fn rebuild_progress(&self, pid: &str, tags: &HashMap<String, TagState>) -> Result<()> {
        let inner = &*self.inner;
        let stored: HashMap<String, u64> = inner
            .fetch_all::<TagProgressRow>(REBUILD, &inner.stmts.select_tag_progress, (pid,))
            .await?
            .into_iter()
            .map(|r| (r.tag, r.sequence_nr.unwrap_or(0).max(0) as u64))
            .collect();
        let mut scanned_to = None;
        for (tag, state) in tags {
            let (seq, n, ts) = state.last;
            if stored.get(tag).is_some_and(|s| *s > seq) {
                continue;
            }
            inner
                .exec(
                    REBUILD,
                    &inner.stmts.insert_tag_progress,
                    (pid, tag.as_str(), seq as i64, n as i64, ts),
                )
                .await?;
            scanned_to = scanned_to.max(Some(seq));
        }
        if let Some(seq) = scanned_to {
            inner
                .exec(REBUILD, &inner.stmts.insert_tag_scanning, (pid, seq as i64))
                .await?;
        }
        Ok(())
    }

    /// Deletes the `tag_views` rows of `pid` under each tag `tag_write_progress` records,
    /// reading the tag's buckets from its first one to the id's last row there: the rows of
    /// events `delete_events_to` removed, which the events no longer lead to.
    async fn purge_unreachable_tag_rows(&self, pid: &str) -> Result<()> {
        let inner = &*self.inner;
        let progress: Vec<TagProgressRow> = inner
            .fetch_all(PURGE, &inner.stmts.select_tag_progress, (pid,))
            .await?;
        for row in progress {
            let Some(upper) = row.offset else { continue };
            let result = inner
                .exec(PURGE, &inner.stmts.select_tag_buckets, (row.tag.as_str(),))
                .await?;
            let first: Option<(Option<Vec<i64>>,)> = Inner::first_row(PURGE, result)?;
            let Some(first) = first.and_then(|r| r.0).and_then(|b| b.into_iter().min()) else {
                continue;
            };
            let mut rows = pin!(bucketed_rows::<(CqlTimeuuid, String)>(
                self.inner.clone(),
                inner.stmts.select_tag_view_keys.clone(),
                PURGE,
                row.tag.clone(),
                timeuuid::min_of_millis(first - 1),
                upper,
            ));
            while let Some(found) = rows.next().await {
                let (ts, owner) = found?;
                if owner == pid {
                    inner
                        .exec(
                            PURGE,
                            &inner.stmts.delete_tag_view,
                            (row.tag.as_str(), self.bucket_of(ts), ts),
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the rows `select` lists (a scan of a whole table, paged) whose key `owner`
    /// belongs to this namespace, with `delete` bound to the row, several at a time.
    async fn delete_owned<R>(
        &self,
        select: &PreparedStatement,
        delete: &PreparedStatement,
        owner: fn(&R) -> &str,
    ) -> Result<()>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + SerializeRow + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let pager = inner
            .session
            .execute_iter(select.clone(), ())
            .await
            .op(TRUNCATE)?;
        pager
            .rows_stream::<R>()
            .map_err(|e| unexpected(TRUNCATE, e))?
            .map(|row| row.op(TRUNCATE))
            .try_filter(|row| std::future::ready(inner.owns_key(owner(row))))
            .try_for_each_concurrent(DELETES_IN_FLIGHT, |row| async move {
                inner.exec(TRUNCATE, delete, row).await.map(drop)
            })
            .await
    }

    /// Deletes partition `nr` of `pid` and the `tag_views` rows of its events; returns how
    /// many events it held.
    async fn purge_partition(&self, pid: &str, nr: i64) -> Result<u64> {
        let inner = &*self.inner;
        let s = &inner.stmts;
        let pager = inner
            .session
            .execute_iter(s.select_message_tags.clone(), (pid, nr))
            .await
            .op(PURGE)?;
        let mut rows = pager
            .rows_stream::<(Option<i64>, Option<CqlTimeuuid>, Option<Vec<String>>)>()
            .map_err(|e| unexpected(PURGE, e))?;
        let mut events = 0;
        while let Some(row) = rows.next().await {
            let (seq, ts, tags) = row.op(PURGE)?;
            if seq.is_none() {
                continue;
            }
            events += 1;
            let Some(ts) = ts else { continue };
            let bucket = self.bucket_of(ts);
            for tag in tags.unwrap_or_default() {
                let key = inner.tag_key(&tag);
                inner
                    .exec(PURGE, &s.delete_tag_view, (key.as_str(), bucket, ts))
                    .await?;
            }
        }
        inner.exec(PURGE, &s.delete_partition, (pid, nr)).await?;
        Ok(events)
    }
}

#[async_trait]
impl JournalMaintenance for CassandraMaintenance {
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        let inner = self.inner.clone();
        Box::pin(async_stream::try_stream! {
            // Partition 0 of every id with a highest above 0 (see the module docs): one row
            // per id, whatever its number of partitions.
            let pager = inner
                .session
                .execute_iter(inner.stmts.select_message_partitions.clone(), ())
                .await
                .op(SCAN)?;
            let mut rows = pager
                .rows_stream::<(String, i64, Option<i64>)>()
                .map_err(|e| unexpected(SCAN, e))?;
            while let Some(row) = rows.next().await {
                let (key, nr, _) = row.op(SCAN)?;
                if nr != 0 {
                    continue;
                }
                if let Some(id) = inner.pid_of_key(&key) {
                    yield id?;
                }
            }
            // An id with a `deleted_to` has a highest above 0 even when its partition 0 is
            // gone (a purge interrupted part-way); with partition 0 it was yielded above.
            let pager = inner
                .session
                .execute_iter(inner.stmts.select_all_metadata.clone(), ())
                .await
                .op(SCAN)?;
            let mut rows = pager
                .rows_stream::<(String, Option<i64>)>()
                .map_err(|e| unexpected(SCAN, e))?;
            while let Some(row) = rows.next().await {
                let (key, deleted_to) = row.op(SCAN)?;
                if deleted_to.unwrap_or(0) <= 0 {
                    continue;
                }
                let Some(id) = inner.pid_of_key(&key) else { continue };
                let id = id?;
                if inner.partition_highest(&key, 0).await?.is_none() {
                    yield id;
                }
            }
        })
    }

    async fn rebuild_persistence_id(
        &self,
        persistence_id: &PersistenceId,
    ) -> Result<RebuildReport> {
        let inner = &*self.inner;
        let pid = inner.pid_key(persistence_id);
        let (highest, deleted_to) = inner.highest_and_deleted_to(&pid).await?;
        if highest == 0 {
            return Ok(RebuildReport::default());
        }
        inner.register_id(REBUILD, &pid).await?;
        let page = inner.config.page_size.max(1) as usize;
        let mut tags: HashMap<String, TagState> = HashMap::new();
        let (mut events, mut entries) = (0u64, 0u64);
        let mut tagged: Vec<(PersistentEvent, CqlTimeuuid)> = Vec::with_capacity(page);
        let mut rows = pin!(message_rows(
            self.inner.clone(),
            pid.clone(),
            deleted_to.saturating_add(1),
            highest,
            REBUILD
        ));
        let mut done = false;
        while !done {
            match rows.next().await {
                Some(row) => {
                    let row = row?;
                    // A row without its time-based UUID has no place in a tag's order.
                    let ts = row.timestamp;
                    let event = row.into_event(persistence_id.clone())?;
                    events += 1;
                    if let (Some(ts), false) = (ts, event.tags.is_empty()) {
                        tagged.push((event, ts));
                    }
                }
                None => done = true,
            }
            if tagged.len() >= page || (done && !tagged.is_empty()) {
                entries += self
                    .rebuild_page(&pid, &tagged, &mut tags, highest, deleted_to)
                    .await?;
                tagged.clear();
            }
        }
        if !tags.is_empty() {
            self.rebuild_progress(&pid, &tags).await?;
        }
        // This process's tag numbers of the id are derived afresh from the progress written.
        inner.forget_tag_seqs(&pid);
        Ok(RebuildReport::new(events, entries))
    }

    async fn truncate_indexes(&self) -> Result<()> {
        let inner = &*self.inner;
        let s = &inner.stmts;
        self.delete_owned::<(String, i64)>(
            &s.select_tag_view_partitions,
            &s.delete_tag_view_partition,
            |r| &r.0,
        )
        .await?;
        for (select, delete) in [
            (&s.select_tag_progress_ids, &s.delete_tag_progress),
            (&s.select_tag_scanning_ids, &s.delete_tag_scanning),
            (&s.select_tag_bucket_tags, &s.delete_tag_buckets),
            (&s.select_persistence_ids, &s.delete_persistence_id),
        ] {
            self.delete_owned::<(String,)>(select, delete, |r| &r.0)
                .await?;
        }
        // The pending marks point at tag rows a failed write may have left out, to be
        // repaired from `tag_write_progress` at the id's next write or replay: with the
        // progress gone such a repair would number the rows from 1 again. The rebuild that
        // follows writes every tag row, so the marks go too.
        let pager = inner
            .session
            .execute_iter(s.select_message_partitions.clone(), ())
            .await
            .op(TRUNCATE)?;
        pager
            .rows_stream::<(String, i64, Option<i64>)>()
            .map_err(|e| unexpected(TRUNCATE, e))?
            .map(|row| row.op(TRUNCATE))
            .try_filter(|(key, _, pending)| {
                std::future::ready(pending.is_some() && inner.owns_key(key))
            })
            .try_for_each_concurrent(DELETES_IN_FLIGHT, |(key, nr, _)| async move {
                inner
                    .exec(TRUNCATE, &s.clear_tag_pending, (key.as_str(), nr))
                    .await
                    .map(drop)
            })
            .await?;
        // What this process cached about the tables is gone with them.
        inner.known_ids.lock().unwrap().clear();
        inner.tag_seqs.lock().unwrap().clear();
        inner.tag_first_bucket.lock().unwrap().clear();
        Ok(())
    }

    async fn purge_persistence_id(&self, persistence_id: &PersistenceId) -> Result<PurgeReport> {
        let inner = &*self.inner;
        let s = &inner.stmts;
        let pid = inner.pid_key(persistence_id);
        let (highest, deleted_to) = inner.highest_and_deleted_to(&pid).await?;
        if deleted_to > 0 {
            self.purge_unreachable_tag_rows(&pid).await?;
        }
        // One partition past the last, as the highest walk looks one past an empty one.
        let last = inner.partition_of(highest.max(1)) + 1;
        let mut events = 0;
        for nr in (0..=last).rev() {
            events += self.purge_partition(&pid, nr).await?;
        }
        let snapshots: Vec<(i64, Option<i64>)> = inner
            .fetch_all(
                PURGE,
                &s.select_snapshot_timestamps,
                (pid.as_str(), i64::MAX, 0i64),
            )
            .await?;
        let key = (pid.as_str(),);
        for stmt in [
            &s.delete_all_snapshots,
            &s.delete_tag_progress,
            &s.delete_tag_scanning,
            &s.delete_metadata,
            &s.delete_persistence_id,
        ] {
            inner.exec(PURGE, stmt, key).await?;
        }
        inner.forget_tag_seqs(&pid);
        inner.repair_due.lock().unwrap().remove(&pid);
        inner.known_ids.lock().unwrap().remove(&pid);
        Ok(PurgeReport::new(events, snapshots.len() as u64))
    }
}
