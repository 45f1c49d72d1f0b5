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
//!    [`TagSeqs`](crate::tags::TagSeqs)); after any failed write of an id they are derived
//!    afresh, after the repair of what the failed write may have left out. The tag
//!    machinery (numbering, pending marks, repair) is in `tags.rs`; the row layouts are in
//!    `schema.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, Error, ErrorKind, EventStream, Journal, PersistenceId, Replay, Result, SequenceNr,
};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimeuuid;

use crate::core::Inner;
use crate::error::{unexpected, ResultExt};
use crate::schema::{unset_none, BatchRow, EventRow, GuardRow, MessageRow, UsedRow};
use crate::tags::pending_mark;
use crate::timeuuid;

/// The most bytes (sum of [`persistence_api::PersistentEvent::stored_size`]) of one atomic
/// write: it is one mutation, and Cassandra refuses mutations above half the commit-log
/// segment (16 MiB by default).
pub const MAX_ATOMIC_WRITE_SIZE: usize = 8 * 1024 * 1024;
/// The largest event the driver declares ([`persistence_api::Capabilities::max_event_size`]).
pub const MAX_EVENT_SIZE: usize = 1024 * 1024;

/// The longest stored tag (with the namespace prefix), in bytes: Cassandra's 65,535-byte
/// partition key less the 14 bytes `tag_views`' composite key `(tag_name, timebucket)`
/// adds around it.
pub const MAX_TAG_KEY_BYTES: usize = 65_535 - 14;

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
        let total: usize = write.events().iter().map(|e| e.stored_size()).sum();
        if total > MAX_ATOMIC_WRITE_SIZE {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "an atomic write of {total} bytes is larger than one Cassandra mutation may be ({MAX_ATOMIC_WRITE_SIZE} bytes)"
                ),
            ));
        }
        if lowest > i64::MAX as u64 || highest > i64::MAX as u64 {
            return Err(Error::new(
                ErrorKind::Rejected,
                "sequence numbers above i64::MAX do not fit a CQL bigint",
            ));
        }
        // A tag is a partition key (`tag_views`, `tag_scanning`): one too long for a key
        // would fail after the events were stored, and every later replay's repair of the
        // tag rows with it, so it is refused before anything is written.
        for e in write.events() {
            for tag in &e.tags {
                let stored = inner.tag_key(tag).len();
                if stored > MAX_TAG_KEY_BYTES {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        format!(
                            "a tag of event {} is {stored} bytes as stored; a Cassandra partition key of a tag holds at most {MAX_TAG_KEY_BYTES} bytes",
                            e.sequence_nr
                        ),
                    )
                    .with_sequence_range(e.sequence_nr, e.sequence_nr));
                }
            }
        }

        // 1. all_persistence_ids, with the id's first event.
        let known = inner.known_ids.lock().unwrap().contains(&pid);
        if lowest == 1 || !known {
            inner.register_id("write_events", &pid).await?;
        }

        // 2. + 3. The events, in one partition, guarded.
        let partition_nr = inner.partition_of(lowest);
        let bucket_size = inner.config.tag_time_bucket;
        // A new incarnation's first tagged write, a tagged write not right after this
        // journal's last write of the id, and any write after a failed one: repair what a
        // failed write left out and derive the tag numbers afresh (see `tags.rs`).
        let tagged = write.events().iter().any(|e| !e.tags.is_empty());
        inner
            .prepare_tags(&pid, partition_nr, lowest, tagged)
            .await?;
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
        let pending_row =
            || tagged.then(|| BatchRow::Pending(pending_mark(&pid, partition_nr, lowest)));
        if inner.config.overwrite_guard {
            let mut use_new = first_in_partition;
            loop {
                if use_new && partition_nr > 0 {
                    // The first write into a partition: an earlier write may have spilled
                    // over the boundary and taken `lowest` in the previous partition. That
                    // partition is closed (its writer moved on), so a read suffices outside
                    // a truly concurrent race at the boundary (see the README).
                    if let Some(prev) = inner.partition_highest(&pid, partition_nr - 1).await? {
                        if prev >= lowest {
                            return Err(Error::new(
                                ErrorKind::Conflict,
                                format!("sequence number {lowest} is already taken: the previous partition holds up to {prev}"),
                            ));
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
                    .op("write_events")?;
                let (applied, used) = Inner::lwt_outcome("write_events", result)?;
                if applied {
                    break;
                }
                match used {
                    // `used < lowest` cannot hold for a partition never written: try as its first write.
                    None if !use_new => use_new = true,
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "sequence number {lowest} is already taken: the partition's highest is {}",
                                used.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                            ),
                        ));
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
                .op("write_events")?;
        }

        // The events are stored: the tag numbers (valid for this write) go on after it.
        inner.tag_seqs_advance(&pid, lowest, highest);

        // 4. Tags.
        if tagged {
            inner.write_tags(&pid, write, &stamps, &buckets).await?;
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
}
/// Streams the stored rows of `pid_key` with `from <= seq <= to`, partition after
/// partition, page by page, each sequence number once (a write spilling over a boundary
/// keeps its events in the previous partition, so the walk starts one partition early).
/// `operation` names the step in errors. The read path of replays, and of the
/// maintenance's rebuild (which needs the rows' own time-based UUIDs).
pub(crate) fn message_rows(
    inner: Arc<Inner>,
    pid: String,
    from: SequenceNr,
    to: SequenceNr,
    operation: &'static str,
) -> impl futures::Stream<Item = Result<EventRow>> + Send + 'static {
    async_stream::try_stream! {
        if from <= to {
            let first = inner.partition_of(from);
            let mut nr = (first - 1).max(0);
            let last = inner.partition_of(to);
            let mut last_seq = from - 1;
            'partitions: while nr <= last {
                let pager = inner
                    .session
                    .execute_iter(
                        inner.stmts.select_messages.clone(),
                        (pid.as_str(), nr, from.min(i64::MAX as u64) as i64, to.min(i64::MAX as u64) as i64),
                    )
                    .await
                    .op(operation)?;
                let mut rows = pager
                    .rows_stream::<EventRow>()
                    .map_err(|e| unexpected(operation, e))?;
                while let Some(row) = rows.next().await {
                    let row = row.op(operation)?;
                    let Some(seq) = row.sequence_nr else { continue };
                    let seq = seq.max(0) as u64;
                    if seq <= last_seq {
                        continue;
                    }
                    last_seq = seq;
                    yield row;
                    if seq >= to {
                        break 'partitions;
                    }
                }
                nr += 1;
            }
        }
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
            let mut rows = std::pin::pin!(message_rows(inner, pid, from, to, "replay"));
            let mut delivered = 0u64;
            while let Some(row) = rows.next().await {
                yield row?.into_event(persistence_id.clone())?;
                delivered += 1;
                if delivered >= max {
                    break;
                }
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
        // A replay starts a (new) writer's incarnation: its tag numbers come from the table,
        // and tag rows an earlier incarnation failed to write are written now.
        self.inner.forget_tag_seqs(&pid);
        let walk = self.inner.walk(&pid).await?;
        // Every partition's pending mark is checked: what a failed write left out is written.
        self.inner.repair_walked(&pid, &walk).await?;
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
        let (highest, _) = self.inner.highest_and_deleted_to(&pid).await?;
        Ok(highest)
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let inner = &*self.inner;
        let pid = inner.pid_key(persistence_id);
        let (highest, deleted_to) = inner.highest_and_deleted_to(&pid).await?;
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
            .await?;
        let first = (inner.partition_of(deleted_to.max(1)) - 1).max(0);
        let last = inner.partition_of(to);
        for nr in first..=last {
            inner
                .exec(
                    "delete_events_to",
                    &inner.stmts.delete_messages_to,
                    (pid.as_str(), nr, to as i64),
                )
                .await?;
        }
        Ok(())
    }
}
