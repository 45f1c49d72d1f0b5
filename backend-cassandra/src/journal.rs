//! The journal: the write path (guarded batches, tag rows), replay, highest, deletes.
//!
//! # How an atomic write is stored
//! 1. With the id's first event (or the first time this process writes the id), its key is
//!    inserted into `all_persistence_ids` (an idempotent upsert, before the events, so a
//!    stored event's id is always listed).
//! 2. All events go into ONE `messages` partition, the one of the first event
//!    (`partition_nr = (lowest - 1) / target_partition_size`), even past the target size, in
//!    one batch. A single-partition batch is one mutation: Cassandra applies it atomically and
//!    isolated, so it is never seen or replayed in part.
//! 3. The overwrite guard: the same batch carries `UPDATE messages SET used = <highest> ...
//!    IF used < <lowest>` (or `IF used = null` for a partition's first write). `used` is a
//!    static column, the highest sequence number the partition holds. A conditional batch
//!    must stay in one partition, which it does, so the condition and the events commit
//!    together through one Paxos round. `[applied] = false` becomes `Conflict` and nothing is
//!    stored. With `overwrite_guard = false` the same batch goes out unconditional.
//! 4. Tagged events are copied into `tag_views`, one unlogged batch per `(tag, time bucket)`
//!    partition, numbered per `(tag, persistence id)` (`tag_pid_sequence_nr`) so readers
//!    detect gaps; then `tag_write_progress` and `tag_scanning` record the progress. The
//!    numbers are cached per id only while this journal is its one writer (see
//!    [`TagSeqs`](crate::store::TagSeqs)); after any failed write of an id they are derived
//!    afresh, after the repair of what the failed write may have left out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::try_join_all;
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, Capabilities, Error, ErrorKind, EventStream, Journal, Payload, PersistenceId,
    PersistentEvent, Replay, Result, SequenceNr, Timestamp,
};
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimeuuid, MaybeUnset};
use scylla::{DeserializeRow, SerializeRow};

use crate::error::{metadata, required, unexpected, ResultExt};
use crate::store::{Inner, TagSeqs, CACHE_LIMIT};
use crate::timeuuid;

/// The most bytes (sum of [`PersistentEvent::stored_size`]) of one atomic write: it is one
/// mutation, and Cassandra refuses mutations above half the commit-log segment (16 MiB by
/// default).
pub const MAX_ATOMIC_WRITE_SIZE: usize = 8 * 1024 * 1024;
/// The largest event the driver declares ([`Capabilities::max_event_size`]).
pub const MAX_EVENT_SIZE: usize = 1024 * 1024;

/// Absent optional columns are left unset, not bound to null: an event row is written once,
/// and a null would store a tombstone per column and event.
fn unset_none<T>(v: Option<T>) -> MaybeUnset<T> {
    v.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

#[derive(SerializeRow)]
pub(crate) struct MessageRow<'a> {
    pub persistence_id: &'a str,
    pub partition_nr: i64,
    pub sequence_nr: i64,
    pub timestamp: CqlTimeuuid,
    pub timebucket: i64,
    pub writer_uuid: &'a str,
    pub ser_id: &'a str,
    pub ser_manifest: &'a str,
    pub event_manifest: &'a str,
    pub event: &'a [u8],
    pub meta_ser_id: MaybeUnset<&'a str>,
    pub meta_ser_manifest: MaybeUnset<&'a str>,
    pub meta: MaybeUnset<&'a [u8]>,
    pub tags: MaybeUnset<&'a [String]>,
    pub event_time: i64,
}

#[derive(SerializeRow)]
pub(crate) struct GuardRow<'a> {
    pub used: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
    pub lowest: i64,
}

#[derive(SerializeRow)]
pub(crate) struct UsedRow<'a> {
    pub used: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
}

#[derive(SerializeRow)]
pub(crate) struct TagViewRow<'a> {
    pub tag_name: &'a str,
    pub timebucket: i64,
    pub timestamp: CqlTimeuuid,
    pub persistence_id: &'a str,
    pub tag_pid_sequence_nr: i64,
    pub sequence_nr: i64,
    pub writer_uuid: &'a str,
    pub ser_id: &'a str,
    pub ser_manifest: &'a str,
    pub event_manifest: &'a str,
    pub event: &'a [u8],
    pub meta_ser_id: MaybeUnset<&'a str>,
    pub meta_ser_manifest: MaybeUnset<&'a str>,
    pub meta: MaybeUnset<&'a [u8]>,
    pub tags: MaybeUnset<&'a [String]>,
    pub event_time: i64,
}

#[derive(SerializeRow)]
pub(crate) struct PendingRow<'a> {
    pub pending: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
}

/// One statement's values in a batch whose statements differ.
pub(crate) enum BatchRow<'a> {
    Guard(GuardRow<'a>),
    Used(UsedRow<'a>),
    Pending(PendingRow<'a>),
    Message(MessageRow<'a>),
}

impl SerializeRow for BatchRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> std::result::Result<(), SerializationError> {
        match self {
            BatchRow::Guard(r) => r.serialize(ctx, writer),
            BatchRow::Used(r) => r.serialize(ctx, writer),
            BatchRow::Pending(r) => r.serialize(ctx, writer),
            BatchRow::Message(r) => r.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// An event as read back from `messages` or `tag_views`.
#[derive(DeserializeRow)]
pub(crate) struct EventRow {
    pub sequence_nr: Option<i64>,
    pub timestamp: Option<CqlTimeuuid>,
    pub writer_uuid: Option<String>,
    pub ser_id: Option<String>,
    pub ser_manifest: Option<String>,
    pub event_manifest: Option<String>,
    pub event: Option<Vec<u8>>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta: Option<Vec<u8>>,
    pub tags: Option<Vec<String>>,
    pub event_time: Option<i64>,
}

impl EventRow {
    /// The event of `persistence_id` this row holds. A column the driver always writes that
    /// is NULL, a negative sequence number or metadata set in part is
    /// [`persistence_api::ErrorKind::Corrupt`] naming the event and the column.
    pub fn into_event(self, persistence_id: PersistenceId) -> Result<PersistentEvent> {
        let id = &persistence_id;
        // Without a sequence number the error names the id only.
        let seq = match self.sequence_nr {
            Some(seq) if seq >= 0 => seq as u64,
            other => {
                let detail = match other {
                    Some(seq) => format!("{seq} is negative"),
                    None => "is NULL, but the driver always writes it".to_owned(),
                };
                return Err(persistence_api::Error::corrupt("sequence_nr", detail)
                    .with_persistence_id(id.as_str()));
            }
        };
        let metadata = metadata(
            (self.meta_ser_id, self.meta_ser_manifest, self.meta),
            id,
            seq,
        )?;
        let payload = Payload::new(
            required(self.ser_id, id, seq, "ser_id")?,
            required(self.ser_manifest, id, seq, "ser_manifest")?,
            required(self.event, id, seq, "event")?,
        );
        let event_manifest = required(self.event_manifest, id, seq, "event_manifest")?;
        // An empty list is stored as NULL; an empty tag is refused on every write.
        let tags = self.tags.unwrap_or_default();
        if let Some(i) = tags.iter().position(|t| t.is_empty()) {
            return Err(crate::error::corrupt(
                id,
                seq,
                "tags",
                format!("tag {i} is empty, and an empty tag is refused on every write"),
            ));
        }
        let writer_id = required(self.writer_uuid, id, seq, "writer_uuid")?;
        let timestamp = Timestamp::from_millis(self.event_time.unwrap_or_else(|| {
            self.timestamp
                .map(|t| timeuuid::millis_of(t.as_ref()))
                .unwrap_or(0)
        }));
        Ok(PersistentEvent {
            persistence_id,
            sequence_nr: seq,
            payload,
            event_manifest,
            writer_id,
            timestamp,
            tags,
            metadata,
        })
    }
}

/// The capabilities this driver declares (the same for all three stores).
pub(crate) fn capabilities(inner: &Inner) -> Capabilities {
    let c = &inner.config;
    Capabilities {
        atomic_write_max_events: None,
        max_event_size: Some(MAX_EVENT_SIZE),
        max_snapshot_size: Some(crate::snapshot::MAX_SNAPSHOT_SIZE),
        tags: true,
        event_metadata: true,
        snapshot_metadata: true,
        delete_events: true,
        conflict_detection: c.overwrite_guard,
        durable: true,
        snapshots: true,
        query_persistence_ids: true,
        query_events_by_persistence_id: true,
        query_events_by_tag: true,
        live_queries: true,
        live_query_max_delay: Some(
            c.eventual_consistency_delay + c.poll_interval * 2 + std::time::Duration::from_secs(1),
        ),
    }
}

/// The Cassandra journal.
pub struct CassandraJournal {
    pub(crate) inner: Arc<Inner>,
}

impl CassandraJournal {
    /// One atomic write. Whatever the error (a lost answer, a `Conflict`, a failure between
    /// the events and their tag rows), the id's cached tag numbers are dropped and its next
    /// write repairs first: the events may be stored without their tag rows, or another
    /// writer may have stored tagged events of the id.
    async fn write_one(&self, write: &AtomicWrite) -> Result<()> {
        let result = self.write_guarded(write).await;
        if result.is_err() {
            self.inner
                .write_failed(&self.inner.pid_key(write.persistence_id()));
        }
        result
    }

    async fn write_guarded(&self, write: &AtomicWrite) -> Result<()> {
        let inner = &*self.inner;
        let pid = inner.pid_key(write.persistence_id());
        let lowest = write.lowest_sequence_nr();
        let highest = write.highest_sequence_nr();
        let ctx = |e: Error| {
            e.with_persistence_id(write.persistence_id().as_str())
                .with_sequence_range(lowest, highest)
        };
        let total: usize = write.events().iter().map(|e| e.stored_size()).sum();
        if total > MAX_ATOMIC_WRITE_SIZE {
            return Err(ctx(Error::new(
                ErrorKind::Rejected,
                format!(
                    "an atomic write of {total} bytes is larger than one Cassandra mutation may be ({MAX_ATOMIC_WRITE_SIZE} bytes)"
                ),
            )
            .with_operation("write_events")));
        }
        if lowest > i64::MAX as u64 || highest > i64::MAX as u64 {
            return Err(ctx(Error::new(
                ErrorKind::Rejected,
                "sequence numbers above i64::MAX do not fit a CQL bigint",
            )
            .with_operation("write_events")));
        }

        // 1. all_persistence_ids, with the id's first event.
        let known = inner.known_ids.lock().unwrap().contains(&pid);
        if lowest == 1 || !known {
            inner
                .exec(
                    "write_events",
                    &inner.stmts.insert_persistence_id,
                    (pid.as_str(),),
                )
                .await
                .map_err(ctx)?;
            let mut ids = inner.known_ids.lock().unwrap();
            if ids.len() >= CACHE_LIMIT {
                ids.clear();
            }
            ids.insert(pid.clone());
        }

        // 2. + 3. The events, in one partition, guarded.
        let partition_nr = inner.partition_of(lowest);
        let bucket_size = inner.config.tag_time_bucket;
        // A new incarnation's first tagged write, a tagged write not right after this
        // journal's last write of the id (another writer may have written in between), and
        // any write after a failed one: repair what a failed write left out, derive the tag
        // numbers from the tables, and move this process's clock past the id's last tag row,
        // so a new writer whose clock is behind the old one's still writes after it.
        let tagged = write.events().iter().any(|e| !e.tags.is_empty());
        let holds = inner.tag_seqs_hold(&pid, lowest);
        let due = inner.repair_due.lock().unwrap().contains(&pid);
        if due || (tagged && !holds) {
            let mut pending = Vec::new();
            for nr in [partition_nr - 1, partition_nr] {
                if nr >= 0 {
                    let (_, p) = inner.partition_state(&pid, nr).await.map_err(ctx)?;
                    if !p.is_empty() {
                        pending.push((nr, p));
                    }
                }
            }
            if pending.is_empty() {
                self.load_tag_seqs(&pid, lowest).await.map_err(ctx)?;
            } else {
                self.repair_tags(&pid, &pending, lowest)
                    .await
                    .map_err(ctx)?;
            }
            inner.repair_due.lock().unwrap().remove(&pid);
        }
        let stamps: Vec<CqlTimeuuid> = write.events().iter().map(|_| timeuuid::now()).collect();
        let buckets: Vec<i64> = stamps
            .iter()
            .map(|t| bucket_size.bucket_of(timeuuid::millis_of(t.as_ref())))
            .collect();
        let message_rows =
            write
                .events()
                .iter()
                .zip(stamps.iter().zip(&buckets))
                .map(|(e, (ts, bucket))| MessageRow {
                    persistence_id: &pid,
                    partition_nr,
                    sequence_nr: e.sequence_nr as i64,
                    timestamp: *ts,
                    timebucket: *bucket,
                    writer_uuid: &e.writer_id,
                    ser_id: &e.payload.serializer_id,
                    ser_manifest: &e.payload.manifest,
                    event_manifest: &e.event_manifest,
                    event: &e.payload.bytes,
                    meta_ser_id: unset_none(e.metadata.as_ref().map(|m| m.serializer_id.as_str())),
                    meta_ser_manifest: unset_none(e.metadata.as_ref().map(|m| m.manifest.as_str())),
                    meta: unset_none(e.metadata.as_ref().map(|m| &m.bytes[..])),
                    tags: unset_none((!e.tags.is_empty()).then_some(&e.tags[..])),
                    event_time: e.timestamp.as_millis(),
                });
        let first_in_partition = (lowest - 1).is_multiple_of(inner.config.target_partition_size);
        // A tagged write records its first sequence number in the partition's static
        // `tag_pending`, in the same batch as its events. Before the first tagged write of an
        // incarnation (and at each replay) `repair_tags` checks the events from there against
        // `tag_write_progress` and writes what a failed write left out.
        let pending_row = || {
            tagged.then(|| {
                BatchRow::Pending(PendingRow {
                    pending: lowest as i64,
                    persistence_id: &pid,
                    partition_nr,
                })
            })
        };
        if inner.config.overwrite_guard {
            let mut use_new = first_in_partition;
            loop {
                if use_new && partition_nr > 0 {
                    // The first write into a partition: an earlier write may have spilled
                    // over the boundary and taken `lowest` in the previous partition. That
                    // partition is closed (its writer moved on), so a read suffices outside
                    // a truly concurrent race at the boundary (see the README).
                    if let Some(prev) = inner
                        .partition_highest(&pid, partition_nr - 1)
                        .await
                        .map_err(ctx)?
                    {
                        if prev >= lowest {
                            return Err(ctx(Error::new(
                                ErrorKind::Conflict,
                                format!("sequence number {lowest} is already taken: the previous partition holds up to {prev}"),
                            )
                            .with_operation("write_events")));
                        }
                    }
                }
                let (stmt, guard) = if use_new {
                    let row = UsedRow {
                        used: highest as i64,
                        persistence_id: &pid,
                        partition_nr,
                    };
                    (&inner.stmts.guard_new, BatchRow::Used(row))
                } else {
                    let row = GuardRow {
                        used: highest as i64,
                        persistence_id: &pid,
                        partition_nr,
                        lowest: lowest as i64,
                    };
                    (&inner.stmts.guard_below, BatchRow::Guard(row))
                };
                let values: Vec<BatchRow> = std::iter::once(guard)
                    .chain(pending_row())
                    .chain(message_rows.clone().map(BatchRow::Message))
                    .collect();
                let batch = self.batch(BatchType::Logged, stmt, tagged, write.len());
                let result = inner
                    .session
                    .batch(&batch, &values)
                    .await
                    .op("write_events")
                    .map_err(ctx)?;
                let (applied, used) = Inner::lwt_outcome("write_events", result).map_err(ctx)?;
                if applied {
                    break;
                }
                match used {
                    // `used < lowest` cannot hold for a partition never written: try as its first write.
                    None if !use_new => use_new = true,
                    _ => {
                        return Err(ctx(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "sequence number {lowest} is already taken: the partition's highest is {}",
                                used.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                            ),
                        )
                        .with_operation("write_events")));
                    }
                }
            }
        } else {
            let used = UsedRow {
                used: highest as i64,
                persistence_id: &pid,
                partition_nr,
            };
            let values: Vec<BatchRow> = std::iter::once(BatchRow::Used(used))
                .chain(pending_row())
                .chain(message_rows.map(BatchRow::Message))
                .collect();
            let batch = self.batch(
                BatchType::Unlogged,
                &inner.stmts.set_used,
                tagged,
                write.len(),
            );
            inner
                .session
                .batch(&batch, &values)
                .await
                .op("write_events")
                .map_err(ctx)?;
        }

        // The events are stored: the tag numbers (valid for this write) go on after it.
        inner.tag_seqs_advance(&pid, lowest, highest);

        // 4. Tags.
        if tagged {
            self.write_tags(&pid, write, &stamps, &buckets)
                .await
                .map_err(ctx)?;
        }
        Ok(())
    }

    fn batch(
        &self,
        kind: BatchType,
        first: &scylla::statement::prepared::PreparedStatement,
        tagged: bool,
        messages: usize,
    ) -> Batch {
        let stmts = &self.inner.stmts;
        let mut batch = Batch::new(kind);
        batch.append_statement(first.clone());
        if tagged {
            batch.append_statement(stmts.set_tag_pending.clone());
        }
        for _ in 0..messages {
            batch.append_statement(stmts.insert_message.clone());
        }
        if let Some(c) = stmts.insert_message.get_consistency() {
            batch.set_consistency(c);
        }
        batch.set_serial_consistency(stmts.insert_message.get_serial_consistency());
        batch
    }

    /// Per stored tag: `(sequence_nr, tag_pid_sequence_nr)` of the last tag row written.
    async fn load_progress(&self, pid: &str) -> Result<HashMap<String, (u64, u64)>> {
        #[derive(DeserializeRow)]
        struct Progress {
            tag: String,
            sequence_nr: Option<i64>,
            tag_pid_sequence_nr: Option<i64>,
            offset: Option<CqlTimeuuid>,
        }
        let inner = &*self.inner;
        let rows: Vec<Progress> = inner
            .fetch_all("write_events", &inner.stmts.select_tag_progress, (pid,))
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
    /// event from there on beyond the recorded progress of its tag. The rows come out exactly as the
    /// failed attempt would have written them (the event's own timestamp, the next tag
    /// sequence number after the recorded progress), so rewriting one that did land is a
    /// no-op.
    /// The numbers are then cached as valid for a write starting at `next`.
    pub(crate) async fn repair_tags(
        &self,
        pid: &str,
        pending: &[(i64, Vec<u64>)],
        next: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        let mut progress = self.load_progress(pid).await?;
        let id = inner
            .pid_of_key(pid)
            .unwrap_or_else(|| PersistenceId::new(pid))?;
        for (nr, firsts) in pending {
            let from = firsts.iter().copied().min().unwrap_or(1);
            let rows: Vec<EventRow> = inner
                .fetch_all(
                    "repair_tags",
                    &inner.stmts.select_messages,
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
                .map(|(e, _)| e.tags.iter().map(|t| inner.tag_key(t)).collect())
                .collect();
            let mut rows = Vec::new();
            let mut last: BTreeMap<&str, (i64, i64, CqlTimeuuid)> = BTreeMap::new();
            let mut first_buckets: BTreeMap<&str, i64> = BTreeMap::new();
            for ((e, ts), keys) in events.iter().zip(&keys) {
                let bucket = inner
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
        inner.cache_tag_seqs(pid, TagSeqs { next, per_tag });
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
        self.inner.cache_tag_seqs(pid, TagSeqs { next, per_tag });
        Ok(())
    }

    /// The next tag sequence numbers of `pid` for each tag in `tags`, reserved.
    async fn reserve_tag_seqs(
        &self,
        pid: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Result<BTreeMap<String, u64>> {
        let inner = &*self.inner;
        let cached = inner.tag_seqs.lock().unwrap().contains_key(pid);
        if !cached {
            // Forgotten since this write derived them (a replay here meanwhile): load them
            // again, valid for no further write (the next one derives them afresh).
            self.load_tag_seqs(pid, 0).await?;
        }
        let mut map = inner.tag_seqs.lock().unwrap();
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
    async fn register_bucket(&self, tag: &str, bucket: i64) -> Result<()> {
        let inner = &*self.inner;
        let known = inner.tag_first_bucket.lock().unwrap().get(tag).copied();
        let known = match known {
            Some(k) => Some(k),
            None => {
                let result = inner
                    .exec("write_events", &inner.stmts.select_tag_buckets, (tag,))
                    .await?;
                let row: Option<(Option<Vec<i64>>,)> = Inner::first_row("write_events", result)?;
                row.and_then(|r| r.0).and_then(|v| v.into_iter().min())
            }
        };
        if known.is_none_or(|k| bucket < k) {
            inner
                .exec(
                    "write_events",
                    &inner.stmts.add_tag_bucket,
                    (vec![bucket], tag),
                )
                .await?;
        }
        let mut map = inner.tag_first_bucket.lock().unwrap();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        let entry = map.entry(tag.to_owned()).or_insert(bucket);
        *entry = (*entry).min(known.unwrap_or(bucket)).min(bucket);
        Ok(())
    }

    async fn write_tags(
        &self,
        pid: &str,
        write: &AtomicWrite,
        stamps: &[CqlTimeuuid],
        buckets: &[i64],
    ) -> Result<()> {
        let inner = &*self.inner;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for e in write.events() {
            for tag in &e.tags {
                *counts.entry(inner.tag_key(tag)).or_default() += 1;
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
            .map(|e| e.tags.iter().map(|t| inner.tag_key(t)).collect())
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
            inner.forget_tag_seqs(pid);
            return Err(e);
        }
        Ok(())
    }

    /// Writes tag rows (one unlogged batch per `tag_views` partition, concurrently), then
    /// the progress per tag and `tag_scanning`.
    async fn write_tag_rows(
        &self,
        pid: &str,
        rows: Vec<TagViewRow<'_>>,
        progress: BTreeMap<&str, (i64, i64, CqlTimeuuid)>,
        scanned_to: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        let mut groups: BTreeMap<(&str, i64), Vec<&TagViewRow>> = BTreeMap::new();
        for r in &rows {
            groups
                .entry((r.tag_name, r.timebucket))
                .or_default()
                .push(r);
        }
        try_join_all(groups.values().map(|rows| {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in 0..rows.len() {
                batch.append_statement(inner.stmts.insert_tag_view.clone());
            }
            if let Some(c) = inner.stmts.insert_tag_view.get_consistency() {
                batch.set_consistency(c);
            }
            batch.set_is_idempotent(true);
            async move { inner.session.batch(&batch, rows).await.op("write_tags") }
        }))
        .await?;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        for (tag, (seq, tag_seq, ts)) in &progress {
            batch.append_statement(inner.stmts.insert_tag_progress.clone());
            values.push((pid, *tag, *seq, *tag_seq, *ts));
        }
        if let Some(c) = inner.stmts.insert_tag_progress.get_consistency() {
            batch.set_consistency(c);
        }
        // Both only after every tag row landed: progress is what repairs trust.
        futures::try_join!(
            async { inner.session.batch(&batch, &values).await.op("write_tags") },
            inner.exec(
                "write_tags",
                &inner.stmts.insert_tag_scanning,
                (pid, scanned_to as i64),
            ),
        )?;
        Ok(())
    }
}

fn tag_view_row<'a>(
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

/// Streams the events of `pid_key` with `from <= seq <= to` (at most `max`), partition
/// after partition, page by page; skips anything at or below `deleted_to` and repeats.
pub(crate) fn event_stream(
    inner: Arc<Inner>,
    persistence_id: PersistenceId,
    from: SequenceNr,
    to: SequenceNr,
    max: u64,
    deleted_to: u64,
) -> EventStream {
    let from = from.max(deleted_to.saturating_add(1)).max(1);
    Box::pin(async_stream::try_stream! {
        if from <= to && max > 0 {
            let pid = inner.pid_key(&persistence_id);
            let first = inner.partition_of(from);
            // A write spilling over a boundary keeps its events in the previous partition.
            let mut nr = (first - 1).max(0);
            let last = inner.partition_of(to);
            let mut delivered = 0u64;
            let mut last_seq = from - 1;
            'partitions: while nr <= last {
                let pager = inner
                    .session
                    .execute_iter(
                        inner.stmts.select_messages.clone(),
                        (pid.as_str(), nr, from.min(i64::MAX as u64) as i64, to.min(i64::MAX as u64) as i64),
                    )
                    .await
                    .op("replay")?;
                let mut rows = pager
                    .rows_stream::<EventRow>()
                    .map_err(|e| unexpected("replay", e))?;
                while let Some(row) = rows.next().await {
                    let row = row.op("replay")?;
                    let Some(seq) = row.sequence_nr else { continue };
                    let seq = seq.max(0) as u64;
                    if seq <= last_seq {
                        continue;
                    }
                    last_seq = seq;
                    yield row.into_event(persistence_id.clone()).map_err(|e| e.with_operation("replay"))?;
                    delivered += 1;
                    if delivered >= max || seq >= to {
                        break 'partitions;
                    }
                }
                nr += 1;
            }
        }
    })
}

#[async_trait]
impl Journal for CassandraJournal {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        // Writes of one id in order; different ids concurrently.
        let mut by_id: BTreeMap<&PersistenceId, Vec<usize>> = BTreeMap::new();
        for (i, w) in writes.iter().enumerate() {
            by_id.entry(w.persistence_id()).or_default().push(i);
        }
        let mut results: Vec<Option<Result<()>>> = (0..writes.len()).map(|_| None).collect();
        let outcomes = futures::future::join_all(by_id.into_values().map(|indices| {
            let writes = &writes;
            async move {
                let mut out = Vec::with_capacity(indices.len());
                for i in indices {
                    out.push((i, self.write_one(&writes[i]).await));
                }
                out
            }
        }))
        .await;
        for (i, r) in outcomes.into_iter().flatten() {
            results[i] = Some(r);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every write answered"))
            .collect())
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let pid = self.inner.pid_key(persistence_id);
        let ctx = |e: Error| e.with_persistence_id(persistence_id.as_str());
        // A replay starts a (new) writer's incarnation: its tag numbers come from the table,
        // and tag rows an earlier incarnation failed to write are written now.
        self.inner.forget_tag_seqs(&pid);
        let walk = self.inner.walk(&pid).await.map_err(ctx)?;
        if !walk.pending.is_empty() {
            self.repair_tags(&pid, &walk.pending, walk.highest + 1)
                .await
                .map_err(ctx)?;
        }
        // Every partition's pending mark is checked: what a failed write left out is written.
        self.inner.repair_due.lock().unwrap().remove(&pid);
        let (highest, deleted_to) = (walk.highest, walk.deleted_to);
        Ok(Replay {
            highest_sequence_nr: highest,
            events: event_stream(
                self.inner.clone(),
                persistence_id.clone(),
                from,
                to.min(highest),
                max,
                deleted_to,
            ),
        })
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        let pid = self.inner.pid_key(persistence_id);
        self.inner.forget_tag_seqs(&pid);
        let (highest, _) = self
            .inner
            .highest_and_deleted_to(&pid)
            .await
            .map_err(|e| e.with_persistence_id(persistence_id.as_str()))?;
        Ok(highest)
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let inner = &*self.inner;
        let pid = inner.pid_key(persistence_id);
        let ctx = |e: Error| e.with_persistence_id(persistence_id.as_str());
        let (highest, deleted_to) = inner.highest_and_deleted_to(&pid).await.map_err(ctx)?;
        let to = to.min(highest);
        if to <= deleted_to {
            return Ok(());
        }
        // The low-water mark first: deleted events never replay, even if the range
        // deletes below fail half-way.
        inner
            .exec(
                "delete_events_to",
                &inner.stmts.insert_deleted_to,
                (pid.as_str(), to as i64),
            )
            .await
            .map_err(ctx)?;
        let first = (inner.partition_of(deleted_to.max(1)) - 1).max(0);
        let last = inner.partition_of(to);
        for nr in first..=last {
            inner
                .exec(
                    "delete_events_to",
                    &inner.stmts.delete_messages_to,
                    (pid.as_str(), nr, to as i64),
                )
                .await
                .map_err(ctx)?;
        }
        Ok(())
    }
}
