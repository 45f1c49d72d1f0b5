//! The tag machinery of the journal: tag numbering, the pending marks and the tag repair.
//!
//! # Numbering
//! Every copy of a tagged event in `tag_views` is numbered per `(tag, persistence id)`
//! (`tag_pid_sequence_nr` 1, 2, 3, ...) so readers detect gaps. The numbers are cached per
//! id ([`TagSeqs`]) only while this journal is the id's one writer; `tag_write_progress`
//! records the last number written per `(id, tag)` and is where they are derived from
//! afresh. `tag_buckets` records the first time bucket of each tag, where queries start.
//!
//! # Pending marks and repair
//! A tagged write records its first sequence number in its partition's static `tag_pending`
//! ([`pending_mark`]), in the same batch as its events, so the mark commits with them. The
//! tag rows follow in separate batches: a crash or a failure in between leaves events
//! without their tag rows. Before the first tagged write of an incarnation, at every write
//! after a failed one, and at each replay, [`Inner::repair_tags`] checks the events from the
//! marks on against `tag_write_progress` and writes the rows that were left out, exactly as
//! the failed attempt would have written them.

use std::collections::{BTreeMap, HashMap};

use futures::future::try_join_all;
use persistence_api::{AtomicWrite, PersistenceId, PersistentEvent, Result};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimeuuid, MaybeUnset};

use crate::core::{Inner, Walk, CACHE_LIMIT};
use crate::error::ResultExt;
use crate::schema::{unset_none, EventRow, PendingRow, TagProgressRow, TagViewRow};
use crate::timeuuid;

/// The tag numbers of one id as this journal continues them.
///
/// They hold only while this journal is the id's one writer: `next` is the first sequence
/// number of the write they are valid for (the write they were derived for, then one past
/// each write of the id that this journal stored). A write starting anywhere else means
/// another writer (or a write whose outcome this journal does not know) came in between, so
/// the numbers are derived afresh from the tables. With the overwrite guard, a write that
/// starts at `next` and is applied proves no other writer stored events of the id since.
#[derive(Default)]
pub(crate) struct TagSeqs {
    /// The first sequence number of the write these numbers are valid for (0: none).
    pub next: u64,
    /// Per stored tag: the last tag sequence number written.
    pub per_tag: HashMap<String, u64>,
}

/// The pending mark of a tagged write of `pid` starting at `lowest` in partition
/// `partition_nr`: goes into the batch of its events (after the statement
/// `set_tag_pending`).
pub(crate) fn pending_mark(pid: &str, partition_nr: i64, lowest: u64) -> PendingRow<'_> {
    PendingRow {
        pending: lowest as i64,
        persistence_id: pid,
        partition_nr,
    }
}

impl Inner {
    /// Forgets what this process cached about an id's tags (it may have a new writer).
    pub fn forget_tag_seqs(&self, pid_key: &str) {
        self.tag_seqs.lock().unwrap().remove(pid_key);
    }

    /// After a failed write of an id (any error, `Conflict` included: the events may be
    /// stored without their tag rows, or another writer may have stored tagged events):
    /// forget its tag numbers and have its next write repair and derive them afresh.
    pub fn write_failed(&self, pid_key: &str) {
        self.forget_tag_seqs(pid_key);
        let mut due = self.repair_due.lock().unwrap();
        if due.len() >= CACHE_LIMIT {
            // Cleared, the ids are still repaired at their next replay.
            due.clear();
        }
        due.insert(pid_key.to_owned());
    }

    /// Caches the tag numbers of an id (bounded: past [`CACHE_LIMIT`] ids the cache is
    /// cleared and refilled from the tables).
    pub fn cache_tag_seqs(&self, pid_key: &str, seqs: TagSeqs) {
        let mut map = self.tag_seqs.lock().unwrap();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(pid_key.to_owned(), seqs);
    }

    /// Whether the cached tag numbers of an id hold for a write starting at `lowest`;
    /// stale ones are forgotten.
    pub fn tag_seqs_hold(&self, pid_key: &str, lowest: u64) -> bool {
        let mut map = self.tag_seqs.lock().unwrap();
        match map.get(pid_key) {
            Some(seqs) if seqs.next == lowest => true,
            Some(_) => {
                map.remove(pid_key);
                false
            }
            None => false,
        }
    }

    /// A write of `lowest..=highest` was stored: the cached numbers (if they were valid for
    /// it) now hold for the write after it.
    pub fn tag_seqs_advance(&self, pid_key: &str, lowest: u64, highest: u64) {
        let mut map = self.tag_seqs.lock().unwrap();
        if let Some(seqs) = map.get_mut(pid_key) {
            if seqs.next == lowest {
                seqs.next = highest + 1;
            } else {
                map.remove(pid_key);
            }
        }
    }

    /// Before a write of `pid` starting at `lowest` (in partition `partition_nr`): a new
    /// incarnation's first tagged write, a tagged write not right after this journal's last
    /// write of the id (another writer may have written in between), and any write after a
    /// failed one repair what a failed write left out, derive the tag numbers from the
    /// tables, and move this process's clock past the id's last tag row, so a new writer
    /// whose clock is behind the old one's still writes after it.
    pub(crate) async fn prepare_tags(
        &self,
        pid: &str,
        partition_nr: i64,
        lowest: u64,
        tagged: bool,
    ) -> Result<()> {
        let holds = self.tag_seqs_hold(pid, lowest);
        let due = self.repair_due.lock().unwrap().contains(pid);
        if due || (tagged && !holds) {
            let mut pending = Vec::new();
            for nr in [partition_nr - 1, partition_nr] {
                if nr >= 0 {
                    let (_, p) = self.partition_state(pid, nr).await?;
                    if !p.is_empty() {
                        pending.push((nr, p));
                    }
                }
            }
            if pending.is_empty() {
                self.load_tag_seqs(pid, lowest).await?;
            } else {
                self.repair_tags(pid, &pending, lowest).await?;
            }
            self.repair_due.lock().unwrap().remove(pid);
        }
        Ok(())
    }

    /// At a replay of `pid` (a new writer's incarnation), after `walk`: writes the tag rows
    /// that the pending marks it found show an earlier incarnation failed to write. Every
    /// partition's mark is then checked, so no repair is due.
    pub(crate) async fn repair_walked(&self, pid: &str, walk: &Walk) -> Result<()> {
        if !walk.pending.is_empty() {
            self.repair_tags(pid, &walk.pending, walk.highest + 1)
                .await?;
        }
        self.repair_due.lock().unwrap().remove(pid);
        Ok(())
    }

    /// Per stored tag: `(sequence_nr, tag_pid_sequence_nr)` of the last tag row written.
    async fn load_progress(&self, pid: &str) -> Result<HashMap<String, (u64, u64)>> {
        let rows: Vec<TagProgressRow> = self
            .fetch_all("read_tag_progress", &self.stmts.select_tag_progress, (pid,))
            .await?;
        for offset in rows.iter().filter_map(|r| r.offset) {
            timeuuid::advance_past(offset);
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let seq = r.sequence_nr.unwrap_or(0).max(0) as u64;
                (
                    r.tag,
                    (seq, r.tag_pid_sequence_nr.unwrap_or(0).max(0) as u64),
                )
            })
            .collect())
    }

    /// Writes the tag rows that the latest tagged writes of the given partitions may have
    /// left out (a crash or a failure between the events and their tag rows): every tagged
    /// event from there on beyond the recorded progress of its tag. The rows come out
    /// exactly as the failed attempt would have written them (the event's own timestamp, the
    /// next tag sequence number after the recorded progress), so rewriting one that did land
    /// is a no-op. The numbers are then cached as valid for a write starting at `next`.
    async fn repair_tags(&self, pid: &str, pending: &[(i64, Vec<u64>)], next: u64) -> Result<()> {
        let mut progress = self.load_progress(pid).await?;
        let id = self
            .pid_of_key(pid)
            .unwrap_or_else(|| PersistenceId::new(pid))?;
        for (nr, firsts) in pending {
            let from = firsts.iter().copied().min().unwrap_or(1);
            let rows: Vec<EventRow> = self
                .fetch_all(
                    "repair_tags",
                    &self.stmts.select_messages,
                    (pid, *nr, from as i64, i64::MAX),
                )
                .await?;
            let mut events: Vec<(PersistentEvent, CqlTimeuuid)> = Vec::new();
            for r in rows {
                let Some(ts) = r.timestamp else { continue };
                let event = r.into_event(id.clone())?;
                if !event.tags.is_empty() {
                    events.push((event, ts));
                }
            }
            let keys: Vec<Vec<String>> = events
                .iter()
                .map(|(e, _)| e.tags.iter().map(|t| self.tag_key(t)).collect())
                .collect();
            let mut rows = Vec::new();
            let mut last: BTreeMap<&str, (i64, i64, CqlTimeuuid)> = BTreeMap::new();
            let mut first_buckets: BTreeMap<&str, i64> = BTreeMap::new();
            for ((e, ts), keys) in events.iter().zip(&keys) {
                let bucket = self
                    .config
                    .tag_time_bucket
                    .bucket_of(timeuuid::millis_of(ts.as_ref()));
                for key in keys {
                    let p = progress.entry(key.clone()).or_insert((0, 0));
                    if e.sequence_nr <= p.0 {
                        continue;
                    }
                    *p = (e.sequence_nr, p.1 + 1);
                    last.insert(key, (e.sequence_nr as i64, p.1 as i64, *ts));
                    let b = first_buckets.entry(key).or_insert(bucket);
                    *b = (*b).min(bucket);
                    rows.push(tag_view_row(key, bucket, *ts, pid, p.1 as i64, e));
                }
            }
            for (tag, bucket) in &first_buckets {
                self.register_bucket(tag, *bucket).await?;
            }
            if !rows.is_empty() {
                tracing::warn!(persistence_id = %id, rows = rows.len(), "repairing tag rows a failed write left out");
                let highest = events.last().map_or(0, |(e, _)| e.sequence_nr);
                self.write_tag_rows(pid, rows, last, highest).await?;
            }
        }
        let per_tag = progress.into_iter().map(|(t, (_, n))| (t, n)).collect();
        self.cache_tag_seqs(pid, TagSeqs { next, per_tag });
        Ok(())
    }

    /// Derives the tag numbers of `pid` from `tag_write_progress`, valid for a write
    /// starting at `next`.
    async fn load_tag_seqs(&self, pid: &str, next: u64) -> Result<()> {
        let per_tag = self
            .load_progress(pid)
            .await?
            .into_iter()
            .map(|(tag, (_, n))| (tag, n))
            .collect();
        self.cache_tag_seqs(pid, TagSeqs { next, per_tag });
        Ok(())
    }

    /// The next tag sequence numbers of `pid` for each tag in `tags`, reserved.
    async fn reserve_tag_seqs(
        &self,
        pid: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Result<BTreeMap<String, u64>> {
        let cached = self.tag_seqs.lock().unwrap().contains_key(pid);
        if !cached {
            // Forgotten since this write derived them (a replay here meanwhile): load them
            // again, valid for no further write (the next one derives them afresh).
            self.load_tag_seqs(pid, 0).await?;
        }
        let mut map = self.tag_seqs.lock().unwrap();
        let per_tag = &mut map.entry(pid.to_owned()).or_default().per_tag;
        let mut first = BTreeMap::new();
        for (tag, n) in counts {
            let last = per_tag.entry(tag.clone()).or_insert(0);
            first.insert(tag.clone(), *last + 1);
            *last += n;
        }
        Ok(first)
    }

    /// Registers `bucket` as a first bucket of `tag` unless an earlier one is known.
    pub(crate) async fn register_bucket(&self, tag: &str, bucket: i64) -> Result<()> {
        let known = self.tag_first_bucket.lock().unwrap().get(tag).copied();
        let known = match known {
            Some(k) => Some(k),
            None => {
                let result = self
                    .exec("read_tag_buckets", &self.stmts.select_tag_buckets, (tag,))
                    .await?;
                let row: Option<(Option<Vec<i64>>,)> =
                    Inner::first_row("read_tag_buckets", result)?;
                row.and_then(|r| r.0).and_then(|v| v.into_iter().min())
            }
        };
        if known.is_none_or(|k| bucket < k) {
            self.exec(
                "register_tag_bucket",
                &self.stmts.add_tag_bucket,
                (vec![bucket], tag),
            )
            .await?;
        }
        let mut map = self.tag_first_bucket.lock().unwrap();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        let entry = map.entry(tag.to_owned()).or_insert(bucket);
        *entry = (*entry).min(known.unwrap_or(bucket)).min(bucket);
        Ok(())
    }

    pub(crate) async fn write_tags(
        &self,
        pid: &str,
        write: &AtomicWrite,
        stamps: &[CqlTimeuuid],
        buckets: &[i64],
    ) -> Result<()> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for e in write.events() {
            for tag in &e.tags {
                *counts.entry(self.tag_key(tag)).or_default() += 1;
            }
        }
        let first_bucket = buckets[0];
        for tag in counts.keys() {
            self.register_bucket(tag, first_bucket).await?;
        }
        let mut next = self.reserve_tag_seqs(pid, &counts).await?;
        let keys: Vec<Vec<String>> = write
            .events()
            .iter()
            .map(|e| e.tags.iter().map(|t| self.tag_key(t)).collect())
            .collect();
        let mut rows = Vec::new();
        let mut progress: BTreeMap<&str, (i64, i64, CqlTimeuuid)> = BTreeMap::new();
        for (((e, ts), bucket), keys) in write.events().iter().zip(stamps).zip(buckets).zip(&keys) {
            for key in keys {
                let seq = next.get_mut(key).expect("reserved above");
                let tag_seq = *seq as i64;
                *seq += 1;
                progress.insert(key, (e.sequence_nr as i64, tag_seq, *ts));
                rows.push(tag_view_row(key, *bucket, *ts, pid, tag_seq, e));
            }
        }
        if let Err(e) = self
            .write_tag_rows(pid, rows, progress, write.highest_sequence_nr())
            .await
        {
            // The numbers reserved may or may not be stored: re-read them next time.
            self.forget_tag_seqs(pid);
            return Err(e);
        }
        Ok(())
    }

    /// Writes tag rows: one unlogged batch per `tag_views` partition, concurrently (an
    /// upsert: a row written again with the same key and content changes nothing).
    pub(crate) async fn insert_tag_views(
        &self,
        step: &'static str,
        rows: &[TagViewRow<'_>],
    ) -> Result<()> {
        let mut groups: BTreeMap<(&str, i64), Vec<&TagViewRow>> = BTreeMap::new();
        for r in rows {
            groups
                .entry((r.tag_name, r.timebucket))
                .or_default()
                .push(r);
        }
        try_join_all(groups.values().map(|rows| {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in 0..rows.len() {
                batch.append_statement(self.stmts.insert_tag_view.clone());
            }
            if let Some(c) = self.stmts.insert_tag_view.get_consistency() {
                batch.set_consistency(c);
            }
            batch.set_is_idempotent(true);
            async move { self.session.batch(&batch, rows).await.op(step) }
        }))
        .await?;
        Ok(())
    }

    /// Writes tag rows ([`Inner::insert_tag_views`]), then the progress per tag and
    /// `tag_scanning`.
    async fn write_tag_rows(
        &self,
        pid: &str,
        rows: Vec<TagViewRow<'_>>,
        progress: BTreeMap<&str, (i64, i64, CqlTimeuuid)>,
        scanned_to: u64,
    ) -> Result<()> {
        self.insert_tag_views("write_tags", &rows).await?;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        for (tag, (seq, tag_seq, ts)) in &progress {
            batch.append_statement(self.stmts.insert_tag_progress.clone());
            values.push((pid, *tag, *seq, *tag_seq, *ts));
        }
        if let Some(c) = self.stmts.insert_tag_progress.get_consistency() {
            batch.set_consistency(c);
        }
        // Both only after every tag row landed: progress is what repairs trust.
        futures::try_join!(
            async { self.session.batch(&batch, &values).await.op("write_tags") },
            self.exec(
                "write_tags",
                &self.stmts.insert_tag_scanning,
                (pid, scanned_to as i64),
            ),
        )?;
        Ok(())
    }
}

/// The `tag_views` row of event `e` of `pid` under the tag key `tag_name`, numbered
/// `tag_pid_sequence_nr`, at the event's own time-based UUID `timestamp` (in `timebucket`).
pub(crate) fn tag_view_row<'a>(
    tag_name: &'a str,
    timebucket: i64,
    timestamp: CqlTimeuuid,
    pid: &'a str,
    tag_pid_sequence_nr: i64,
    e: &'a PersistentEvent,
) -> TagViewRow<'a> {
    TagViewRow {
        tag_name,
        timebucket,
        timestamp,
        persistence_id: pid,
        tag_pid_sequence_nr,
        sequence_nr: e.sequence_nr as i64,
        writer_uuid: &e.writer_id,
        ser_id: &e.payload.serializer_id,
        ser_manifest: &e.payload.manifest,
        event_manifest: &e.event_manifest,
        event: &e.payload.bytes,
        meta_ser_id: unset_none(e.metadata.as_ref().map(|m| m.serializer_id.as_str())),
        meta_ser_manifest: unset_none(e.metadata.as_ref().map(|m| m.manifest.as_str())),
        meta: unset_none(e.metadata.as_ref().map(|m| &m.bytes[..])),
        tags: MaybeUnset::Set(&e.tags[..]),
        event_time: e.timestamp.as_millis(),
    }
}
