//! The Cassandra durable-state store: one row per id in `durable_state`, written only by
//! lightweight transactions (Paxos) on its `revision`, and a change row per tagged write in
//! `durable_state_changes`, read in time order by change queries.
//!
//! # Writes
//! - `upsert(id, 1, ..)`: `INSERT ... IF NOT EXISTS`; `upsert(id, n, ..)`:
//!   `UPDATE ... SET revision = n, ... IF revision = n - 1`. Refused, Cassandra answers the
//!   row's `revision` (none: 0), which becomes [`revision_conflict`] naming both revisions.
//! - `delete(id, n)`: a serial read of the stored revision and tag (a wrong revision is a
//!   `Conflict` right there), then `UPDATE ... SET deleted = true, revision = n, payload
//!   columns null ... IF revision = n - 1`, keeping the tag (revision 1 of an id never
//!   written: `INSERT` of a deleted row `IF NOT EXISTS`). The condition on the revision
//!   proves the tag read is still the stored one.
//! - Every write takes a fresh time-based UUID `T` and stores it as the state's
//!   `timestamp`. A write with a tag (a delete: the state's tag) first writes the change row
//!   `(tag, bucket(T), T, id, n)` and then runs its lightweight transaction. So a change
//!   row exists for every tagged state ever stored, whatever happens after: a process that
//!   dies between the two leaves a change row whose write never happened, never a state
//!   without its change row. A refused write deletes its change row at once; the query
//!   tells the rest apart (below).
//! - Reads (`get`) are serial (`SERIAL`, or `LOCAL_SERIAL` with `LOCAL_QUORUM` or `ONE`),
//!   as the offset store's: they see every answered lightweight transaction.
//! - A lightweight transaction whose answer is lost may or may not have been applied: a
//!   retryable error saying so ([`lwt_failed`]); its change row stays, as the write may
//!   still land.
//!
//! # Change queries
//! The change rows of a tag are read in `timestamp` order, bucket after bucket (the first
//! bucket from `durable_state_buckets`), up to `now - eventual_consistency_delay` (live;
//! a current query waits the delay once and reads up to the moment it started), as
//! events-by-tag does. For each change row `(T, id, n)` the query reads the id's state:
//! - the state's `timestamp` is `T`: this write is the id's latest, delivered with the
//!   state read (offset `T`);
//! - the state's revision is `n` or more with another `timestamp`: a later change of the
//!   id (which has its own, later, change row) or another writer's win over this one:
//!   dropped;
//! - the state is behind `n` (or absent): the write is in flight, refused or dead. The
//!   query reads again at the serial level (which completes a write a quorum accepted) and,
//!   still behind, stops there: the offset does not pass the row until it resolves, or
//!   until it is older than `2 × request_timeout + eventual_consistency_delay` (its writer
//!   gave up by then: a write sends its lightweight transaction within `request_timeout`
//!   of taking `T` or aborts), when it is dropped as a write that never happened.
//!
//! So each id appears once, at its latest change in the range read, in change order; the
//! offset of each delivered change is its `T`, and resuming from it reads only rows after
//! it. An id whose latest change lies beyond a current query's end is left to the next
//! query (its earlier rows are dropped as superseded).
//!
//! # Round trips
//! Upsert: one lightweight transaction (Paxos round); with a tag, one plain write before it
//! (the change row), plus one read and one write the first time this process writes a tag
//! in an earlier bucket than known. Delete: one serial read and the lightweight
//! transaction, plus the change row with a tag. A refused write: one more (deleting its
//! change row). `get`: one serial read. Change queries: one page read per bucket and page,
//! and one read of the state per change row (32 at a time).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use persistence_api::{
    revision_conflict, ChangeStream, DurableState, DurableStateChange, DurableStateStore, Error,
    ErrorKind, Offset, Payload, PersistenceId, QueryMode, Result, Revision, Timestamp,
};
use scylla::errors::ExecutionError;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;
use scylla::DeserializeRow;

use crate::core::{Inner, CACHE_LIMIT};
use crate::error::{lwt_failed, lwt_unknown};
use crate::timeuuid;

/// The largest state ([`Payload::stored_size`]) the store keeps
/// ([`persistence_api::Capabilities::max_state_size`]): one row, one mutation, which the
/// lightweight transaction also stores in Cassandra's Paxos table (proposal and commit),
/// kept well below the mutation limit (half the commit-log segment, 16 MiB by default), as
/// snapshots are ([`crate::MAX_SNAPSHOT_SIZE`]).
pub const MAX_STATE_SIZE: usize = 4 * 1024 * 1024;

/// States read per change query at once.
const QUERY_CONCURRENCY: usize = 32;

/// The Cassandra durable-state store (what [`crate::Cassandra::stores`] puts in
/// [`persistence_api::Stores::durable_state`]), in the tables `durable_state`,
/// `durable_state_changes` and `durable_state_buckets` of the configured keyspace; with a
/// namespace, the stored ids and tags are prefixed with it as the journal's are.
pub struct CassandraDurableStateStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraDurableStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraDurableStateStore")
            .field("keyspace", &self.inner.config.keyspace)
            .field("table", &self.inner.config.tables.durable_state)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

/// A stored row of `durable_state`, as read back.
#[derive(DeserializeRow)]
pub(crate) struct StateRow {
    pub(crate) revision: Option<i64>,
    pub(crate) ser_id: Option<String>,
    pub(crate) ser_manifest: Option<String>,
    pub(crate) state: Option<Vec<u8>>,
    pub(crate) deleted: Option<bool>,
    pub(crate) tag: Option<String>,
    pub(crate) timestamp: Option<CqlTimeuuid>,
}

/// A row of `durable_state_changes`, as read back.
#[derive(DeserializeRow)]
struct ChangeRow {
    timestamp: CqlTimeuuid,
    persistence_id: String,
    revision: Option<i64>,
}

/// A stored column of the state of `id` that does not decode: `Corrupt` naming both.
fn corrupt(id: &PersistenceId, column: &str, detail: impl std::fmt::Display) -> Error {
    Error::corrupt(column, format!("the durable state of {id}: {detail}"))
        .with_persistence_id(id.as_str())
}

impl StateRow {
    /// The stored revision (at least 1).
    fn revision(&self, id: &PersistenceId) -> Result<Revision> {
        match self.revision {
            Some(r) if r >= 1 => Ok(r as u64),
            Some(r) => Err(corrupt(
                id,
                "revision",
                format!("{r} is not a revision (revisions start at 1)"),
            )),
            None => Err(corrupt(id, "revision", "is NULL, but every write sets it")),
        }
    }

    /// The time-based UUID of the write that stored this state.
    fn timestamp(&self, id: &PersistenceId) -> Result<CqlTimeuuid> {
        self.timestamp
            .ok_or_else(|| corrupt(id, "timestamp", "is NULL, but every write sets it"))
    }

    /// The stored tag (an empty one is refused on every write).
    fn tag(&self, id: &PersistenceId) -> Result<Option<String>> {
        match &self.tag {
            Some(t) if t.is_empty() => Err(corrupt(
                id,
                "tag",
                "is empty, and an empty tag is refused on every write",
            )),
            t => Ok(t.clone()),
        }
    }

    /// The whole state of `id`: a column every write of its kind sets found NULL, or one
    /// that does not decode, is `Corrupt` naming the column.
    pub(crate) fn into_state(self, id: PersistenceId) -> Result<DurableState> {
        let revision = self.revision(&id)?;
        let timestamp = self.timestamp(&id)?;
        let tag = self.tag(&id)?;
        let payload = match self.deleted {
            Some(true) => None,
            Some(false) => {
                let required = |v: Option<String>, column: &str| {
                    v.ok_or_else(|| {
                        corrupt(
                            &id,
                            column,
                            "is NULL, but every upsert sets it (and the state is not deleted)",
                        )
                    })
                };
                let ser_id = required(self.ser_id, "ser_id")?;
                let manifest = required(self.ser_manifest, "ser_manifest")?;
                let bytes = match self.state {
                    Some(b) if !b.is_empty() => b,
                    Some(_) => {
                        return Err(corrupt(
                            &id,
                            "state",
                            "is empty, and an empty state is refused on every upsert",
                        ))
                    }
                    None => {
                        return Err(corrupt(
                            &id,
                            "state",
                            "is NULL, but every upsert sets it (and the state is not deleted)",
                        ))
                    }
                };
                Some(Payload::new(ser_id, manifest, bytes))
            }
            None => return Err(corrupt(&id, "deleted", "is NULL, but every write sets it")),
        };
        Ok(DurableState {
            persistence_id: id,
            revision,
            payload,
            tag,
            timestamp: Timestamp::from_millis(timeuuid::millis_of(timestamp.as_ref())),
        })
    }
}

/// `revision` as the CQL `bigint` it is stored as, with the revision the condition names
/// (`revision - 1`); `None` beyond what a `bigint` holds.
fn revisions(revision: Revision) -> Option<(i64, i64)> {
    let r = i64::try_from(revision).ok()?;
    Some((r, r - 1))
}

/// A write that failed before its lightweight transaction's answer: whether it may still
/// be applied, and its error.
fn lwt_error(step: &'static str, e: ExecutionError) -> (bool, Error) {
    let unknown = lwt_unknown(&e).is_some();
    (unknown, lwt_failed(step, e))
}

impl CassandraDurableStateStore {
    /// The row of `id` as stored, read with `stmt` (serial or at `consistency`).
    async fn read_row(
        inner: &Inner,
        step: &'static str,
        stmt: &PreparedStatement,
        pid: &str,
    ) -> Result<Option<StateRow>> {
        let result = inner.exec(step, stmt, (pid,)).await?;
        Inner::first_row(step, result)
    }

    /// The stored revision of `id` (0 when never written), read at the serial level.
    async fn stored_revision(&self, step: &'static str, id: &PersistenceId) -> Result<Revision> {
        let pid = self.inner.pid_key(id);
        match Self::read_row(
            &self.inner,
            step,
            &self.inner.stmts.select_state_serial,
            &pid,
        )
        .await?
        {
            None => Ok(0),
            Some(row) => row.revision(id),
        }
    }

    /// Registers `bucket` as a first bucket of the stored tag `tag_key` unless an earlier
    /// one is known (as the journal does for `tag_buckets`).
    async fn register_bucket(&self, tag_key: &str, bucket: i64) -> Result<()> {
        let inner = &*self.inner;
        let known = inner
            .state_first_bucket
            .lock()
            .unwrap()
            .get(tag_key)
            .copied();
        let known = match known {
            Some(k) => Some(k),
            None => {
                let result = inner
                    .exec(
                        "read_state_buckets",
                        &inner.stmts.select_state_buckets,
                        (tag_key,),
                    )
                    .await?;
                let row: Option<(Option<Vec<i64>>,)> =
                    Inner::first_row("read_state_buckets", result)?;
                row.and_then(|r| r.0).and_then(|v| v.into_iter().min())
            }
        };
        if known.is_none_or(|k| bucket < k) {
            inner
                .exec(
                    "register_state_bucket",
                    &inner.stmts.add_state_bucket,
                    (vec![bucket], tag_key),
                )
                .await?;
        }
        let mut map = inner.state_first_bucket.lock().unwrap();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        let entry = map.entry(tag_key.to_owned()).or_insert(bucket);
        *entry = (*entry).min(known.unwrap_or(bucket)).min(bucket);
        Ok(())
    }

    /// Writes the change row of a write of `pid` at `revision` stamped `ts` under `tag`
    /// (stored form), after registering its bucket. Returns the row's key, to delete it if
    /// the write is refused.
    async fn write_change(
        &self,
        tag_key: String,
        ts: CqlTimeuuid,
        pid: &str,
        revision: i64,
    ) -> Result<(String, i64, CqlTimeuuid)> {
        let inner = &*self.inner;
        let bucket = inner
            .config
            .tag_time_bucket
            .bucket_of(timeuuid::millis_of(ts.as_ref()));
        self.register_bucket(&tag_key, bucket).await?;
        inner
            .exec(
                "write_state_change",
                &inner.stmts.insert_state_change,
                (tag_key.as_str(), bucket, ts, pid, revision),
            )
            .await?;
        Ok((tag_key, bucket, ts))
    }

    /// Deletes the change row of a write that was refused (best effort: a row left behind
    /// is dropped by the queries, see the module's documentation).
    async fn drop_change(&self, pid: &str, change: Option<(String, i64, CqlTimeuuid)>) {
        if let Some((tag_key, bucket, ts)) = change {
            let result = self
                .inner
                .exec(
                    "delete_state_change",
                    &self.inner.stmts.delete_state_change,
                    (tag_key.as_str(), bucket, ts, pid),
                )
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "the change row of a refused durable-state write stays");
            }
        }
    }

    /// Before the lightweight transaction of a write stamped `ts`: refuses to send it
    /// later than `request_timeout` after `ts`, so change queries know when a change row
    /// whose state never came is dead (see the module's documentation).
    fn check_deadline(&self, ts: CqlTimeuuid) -> Result<()> {
        let late = timeuuid::now_millis() - timeuuid::millis_of(ts.as_ref());
        if late > self.inner.config.request_timeout.as_millis() as i64 {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "cassandra durable state: the change row took {late} ms, longer than request_timeout; the write was not sent (retry it)"
                ),
            ));
        }
        Ok(())
    }

    /// One write of `id` at `revision` (a delete when `payload` is `None`) with the tag
    /// its change row goes under, once the caller checked what it could.
    async fn write(
        &self,
        step: &'static str,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<&Payload>,
        tag: Option<&str>,
        change_tag: Option<&str>,
    ) -> Result<()> {
        let Some((rev, expected)) = revisions(revision) else {
            // Beyond a bigint: never the stored revision plus one.
            let stored = self.stored_revision(step, id).await?;
            return Err(revision_conflict(id, stored, revision));
        };
        let inner = &*self.inner;
        let pid = inner.pid_key(id);
        let ts = timeuuid::now();
        let change = match change_tag {
            Some(t) => Some(self.write_change(inner.tag_key(t), ts, &pid, rev).await?),
            None => None,
        };
        if let Err(e) = self.check_deadline(ts) {
            self.drop_change(&pid, change).await;
            return Err(e);
        }
        let stmts = &inner.stmts;
        let session = &inner.session;
        let result = match (payload, revision) {
            (Some(p), 1) => {
                session
                    .execute_unpaged(
                        &stmts.insert_state,
                        (
                            pid.as_str(),
                            rev,
                            p.serializer_id.as_str(),
                            p.manifest.as_str(),
                            &p.bytes[..],
                            tag,
                            ts,
                        ),
                    )
                    .await
            }
            (Some(p), _) => {
                session
                    .execute_unpaged(
                        &stmts.update_state,
                        (
                            rev,
                            p.serializer_id.as_str(),
                            p.manifest.as_str(),
                            &p.bytes[..],
                            tag,
                            ts,
                            pid.as_str(),
                            expected,
                        ),
                    )
                    .await
            }
            (None, 1) => {
                session
                    .execute_unpaged(&stmts.insert_deleted_state, (pid.as_str(), rev, ts))
                    .await
            }
            (None, _) => {
                session
                    .execute_unpaged(
                        &stmts.update_deleted_state,
                        (rev, ts, pid.as_str(), expected),
                    )
                    .await
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                let (unknown, err) = lwt_error(step, e);
                if !unknown {
                    self.drop_change(&pid, change).await;
                }
                return Err(err);
            }
        };
        let (applied, stored) = Inner::lwt_outcome_of(step, result, "revision")?;
        if applied {
            return Ok(());
        }
        self.drop_change(&pid, change).await;
        let stored = match (revision, stored) {
            (_, Some(s)) if s >= 1 => s as u64,
            // `IF revision = n` refused without a revision: no row.
            (r, None) if r > 1 => 0,
            (_, s) => {
                return Err(corrupt(
                    id,
                    "revision",
                    format!(
                        "{} in the answer of a refused write",
                        s.map_or("NULL".to_owned(), |s| s.to_string())
                    ),
                ))
            }
        };
        Err(revision_conflict(id, stored, revision))
    }
}

#[async_trait]
impl DurableStateStore for CassandraDurableStateStore {
    /// A serial read (`SERIAL`, or `LOCAL_SERIAL` with `LOCAL_QUORUM` or `ONE`).
    ///
    /// # Errors
    /// A stored column that does not decode: [`ErrorKind::Corrupt`] naming the id and the
    /// column.
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>> {
        let pid = self.inner.pid_key(persistence_id);
        let row = Self::read_row(
            &self.inner,
            "get_state",
            &self.inner.stmts.select_state_serial,
            &pid,
        )
        .await?;
        row.map(|r| r.into_state(persistence_id.clone()))
            .transpose()
    }

    /// The change row (with a tag), then one lightweight transaction.
    ///
    /// # Errors
    /// Another revision stored: [`ErrorKind::Conflict`] ([`revision_conflict`]) with the
    /// revision the lightweight transaction answered. Its answer lost: a retryable error
    /// saying the write may or may not have been applied.
    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()> {
        let tag = tag.as_deref();
        self.write(
            "upsert_state",
            persistence_id,
            revision,
            Some(&payload),
            tag,
            tag,
        )
        .await
    }

    /// A serial read of the stored revision and tag, the change row under that tag, then
    /// one lightweight transaction keeping the tag.
    ///
    /// # Errors
    /// As [`CassandraDurableStateStore::upsert`].
    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()> {
        let pid = self.inner.pid_key(persistence_id);
        let row = Self::read_row(
            &self.inner,
            "delete_state",
            &self.inner.stmts.select_state_serial,
            &pid,
        )
        .await?;
        let (stored, tag) = match &row {
            None => (0, None),
            Some(row) => (row.revision(persistence_id)?, row.tag(persistence_id)?),
        };
        if revision != stored + 1 {
            return Err(revision_conflict(persistence_id, stored, revision));
        }
        self.write(
            "delete_state",
            persistence_id,
            revision,
            None,
            None,
            tag.as_deref(),
        )
        .await
    }

    /// Change rows in time order, each checked against the id's state (see the module's
    /// documentation). Offsets are [`Offset::TimeBasedUuid`].
    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream {
        change_stream(self.inner.clone(), tag, offset, mode.is_live())
    }
}

/// What a change query does with one change row.
enum Outcome {
    /// The row is its id's latest change: deliver it.
    Deliver(Box<DurableStateChange>),
    /// A later change of the id, another writer's win, or a write that never happened.
    Drop,
    /// The write may still be in flight: the query waits here.
    Pending,
}

/// The change rows of `tag_key` with `lower < timestamp <= upper`, bucket after bucket.
fn change_rows(
    inner: Arc<Inner>,
    tag_key: String,
    lower: CqlTimeuuid,
    upper: CqlTimeuuid,
) -> impl futures::Stream<Item = Result<ChangeRow>> + Send + 'static {
    let statement = inner.stmts.select_state_changes.clone();
    crate::core::bucketed_rows(inner, statement, "query_changes", tag_key, lower, upper)
}

/// The earliest bucket any writer registered for the stored tag `tag_key`.
async fn first_bucket(inner: &Inner, tag_key: &str) -> Result<Option<i64>> {
    let result = inner
        .exec(
            "query_changes",
            &inner.stmts.select_state_buckets,
            (tag_key,),
        )
        .await?;
    let row: Option<(Option<Vec<i64>>,)> = Inner::first_row("query_changes", result)?;
    Ok(row.and_then(|r| r.0).and_then(|v| v.into_iter().min()))
}

/// How long after its `timestamp` a change row whose state never came is taken for a
/// write that never happened: its lightweight transaction was sent within
/// `request_timeout` of the stamp and answered (or given up) within `request_timeout`
/// more; the eventual-consistency delay covers the clocks' skew.
pub(crate) fn settle_window(inner: &Inner) -> Duration {
    inner.config.request_timeout * 2 + inner.config.eventual_consistency_delay
}

/// Decides what to do with one change row (see the module's documentation).
async fn resolve(inner: Arc<Inner>, row: ChangeRow) -> Result<Outcome> {
    let id = match inner.pid_of_key(&row.persistence_id) {
        Some(id) => id?,
        None => {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "a durable-state change row of {:?} outside this namespace",
                    row.persistence_id
                ),
            ))
        }
    };
    let revision = match row.revision {
        Some(r) if r >= 1 => r as u64,
        other => {
            return Err(corrupt(
                &id,
                "revision",
                format!(
                    "{} in its durable_state_changes row, which every write sets to at least 1",
                    other.map_or("NULL".to_owned(), |r| r.to_string())
                ),
            ))
        }
    };
    for stmt in [&inner.stmts.select_state, &inner.stmts.select_state_serial] {
        let state = CassandraDurableStateStore::read_row(
            &inner,
            "query_changes",
            stmt,
            &row.persistence_id,
        )
        .await?;
        let Some(state) = state else { continue };
        if state.timestamp(&id)? == row.timestamp {
            let state = state.into_state(id)?;
            return Ok(Outcome::Deliver(Box::new(DurableStateChange {
                offset: Offset::TimeBasedUuid(row.timestamp.into()),
                persistence_id: state.persistence_id,
                revision: state.revision,
                payload: state.payload,
                tag: state.tag,
                timestamp: state.timestamp,
            })));
        }
        if state.revision(&id)? >= revision {
            return Ok(Outcome::Drop);
        }
    }
    // Behind at the serial level too: in flight, refused or dead.
    let age = timeuuid::now_millis() - timeuuid::millis_of(row.timestamp.as_ref());
    if age > settle_window(&inner).as_millis() as i64 {
        Ok(Outcome::Drop)
    } else {
        Ok(Outcome::Pending)
    }
}

fn change_stream(inner: Arc<Inner>, tag: String, offset: Offset, live: bool) -> ChangeStream {
    Box::pin(async_stream::try_stream! {
        let tag_key = inner.tag_key(&tag);
        let config = inner.config.clone();
        let start: Option<CqlTimeuuid> = match offset {
            Offset::NoOffset | Offset::Sequence(0) => None,
            Offset::TimeBasedUuid(u) => Some(u.into()),
            other => Err(Error::invalid_input(format!(
                "the Cassandra change queries' offsets are Offset::TimeBasedUuid, got {other:?}"
            )))?,
        };
        // The end of a current query: nothing stamped after this moment.
        let current_end = timeuuid::now();
        if !live {
            tokio::time::sleep(config.eventual_consistency_delay).await;
        }
        // Every change row up to here is delivered or dropped.
        let mut position: Option<CqlTimeuuid> = start;
        loop {
            let upper = if live {
                timeuuid::max_of_millis(
                    timeuuid::now_millis() - config.eventual_consistency_delay.as_millis() as i64,
                )
            } else {
                current_end
            };
            let lower = match position {
                Some(p) => Some(p),
                None => first_bucket(&inner, &tag_key)
                    .await?
                    .map(|b| timeuuid::min_of_millis(b - 1)),
            };
            let mut pending = false;
            if let Some(lower) = lower {
                if lower < upper {
                    let rows = change_rows(inner.clone(), tag_key.clone(), lower, upper);
                    let mut outcomes = Box::pin(
                        rows.map(|row| {
                            let inner = inner.clone();
                            async move {
                                let row = row?;
                                let at = row.timestamp;
                                Ok::<_, Error>((at, resolve(inner, row).await?))
                            }
                        })
                        .buffered(QUERY_CONCURRENCY),
                    );
                    while let Some(outcome) = outcomes.next().await {
                        let (at, outcome) = outcome?;
                        match outcome {
                            Outcome::Deliver(change) => {
                                position = Some(at);
                                yield *change;
                            }
                            Outcome::Drop => position = Some(at),
                            Outcome::Pending => {
                                pending = true;
                                break;
                            }
                        }
                    }
                    if !pending {
                        position = Some(upper);
                    }
                }
            }
            if !live && !pending {
                break;
            }
            tokio::time::sleep(config.poll_interval).await;
            persistence_api::metrics::record_poll(crate::Cassandra::NAME, "changes");
        }
    })
}
