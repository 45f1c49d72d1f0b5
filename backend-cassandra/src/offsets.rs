//! The Cassandra projection offset store: one row per projection `(name, key)` in
//! `projection_offsets`, written only by lightweight transactions (Paxos) on its `version`,
//! so two running instances of one projection never both commit.
//!
//! At-least-once only. Cassandra has no transaction across partitions (a conditional batch
//! must stay in one partition of one table), so a projection's effects, written to their
//! own tables, cannot commit together with its offset; the store keeps the default
//! [`OffsetStore::begin_transaction`] and [`OffsetStore::commit_transaction`], which answer
//! `Unsupported`, and the backend declares no `exactly_once_projections`, as Akka
//! Projections' Cassandra offset store offers no exactly-once either. A projection on
//! Cassandra gets exactly-once *effects* by making them idempotent (see the README's
//! capabilities).
//!
//! # How an offset is stored
//! - `commit_offset(id, 0, offset)`: `INSERT ... IF NOT EXISTS` with version 1.
//! - `commit_offset(id, n, offset)`: `UPDATE ... SET offset, version = n + 1 ... IF version = n`.
//! - Not applied: Cassandra answers the row's current `version` with `[applied] = false`
//!   (no row: none, i.e. 0), which becomes [`version_conflict`] naming both versions.
//! - `set_offset`: reads the version, then the same conditional write on it; when another
//!   writer got in between, the refused write's answer holds the new version and the next
//!   attempt is conditional on that one (no new read), until one applies. So every set moves
//!   the version on by exactly one, and concurrent sets are all counted.
//! - Reads are `SERIAL` (`LOCAL_SERIAL` with `LOCAL_QUORUM` or `ONE`): a Paxos read, which
//!   sees every answered lightweight transaction and completes one a quorum accepted whose
//!   commit is still in flight, so a read never returns a version older than one a commit
//!   was answered with.
//! - A lightweight transaction whose answer is lost (a `WriteTimeout`, the client timeout, a
//!   broken connection) may or may not have been applied: a retryable error that says so
//!   (see `error.rs`). A proposal only some replicas accepted can still be completed by a
//!   later Paxos round, so even a serial read does not settle it; the next conditional write
//!   does: a retry with the same expected version either applies or is a `Conflict` naming
//!   the next version (the lost one was applied after all).
//!
//! # Round trips
//! `commit_offset`: one (one lightweight transaction, which Cassandra runs as a Paxos round:
//! prepare, read, propose, commit between the replicas). `read_offset`: one (a serial read).
//! `set_offset` and `clear_offset`: two (the read, the lightweight transaction), plus one
//! per concurrent writer that gets in between.

use std::sync::Arc;

use async_trait::async_trait;
use persistence_api::{
    version_conflict, Error, ErrorKind, Offset, OffsetStore, ProjectionId, Result, StoredOffset,
};

use crate::core::Inner;
use crate::error::lwt_failed;

/// How many conditional writes one `set_offset` tries before it gives up: each refused one
/// means another writer's write of the same projection was applied in between.
const MAX_SET_ATTEMPTS: usize = 100;

/// The Cassandra offset store (what [`crate::Cassandra::stores`] puts in
/// [`persistence_api::Stores::offsets`]), in the table `projection_offsets` of the
/// configured keyspace; with a namespace, the stored `projection_name` is prefixed with it
/// as persistence ids are.
pub struct CassandraOffsetStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraOffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraOffsetStore")
            .field("keyspace", &self.inner.config.keyspace)
            .field("table", &self.inner.config.tables.projection_offsets)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

/// A stored column of projection `id` that does not decode.
fn corrupt(id: &ProjectionId, column: &str, detail: impl std::fmt::Display) -> Error {
    Error::corrupt(column, format!("projection {id}: {detail}"))
}

/// A stored version as the API counts it: at least 1 (0 stands for "nothing stored").
pub(crate) fn stored_version(id: &ProjectionId, version: Option<i64>) -> Result<u64> {
    match version {
        Some(v) if v >= 1 => Ok(v as u64),
        Some(v) => Err(corrupt(
            id,
            "version",
            format!("{v} is not a version (versions start at 1)"),
        )),
        None => Err(corrupt(id, "version", "is NULL, but every write sets it")),
    }
}

/// The stored offset text, read back with [`Offset`]'s `FromStr`.
pub(crate) fn stored_offset(id: &ProjectionId, offset: Option<String>) -> Result<Offset> {
    let text = offset.ok_or_else(|| corrupt(id, "offset", "is NULL, but every write sets it"))?;
    text.parse::<Offset>()
        .map_err(|e| corrupt(id, "offset", e.message()))
}

/// `expected` as the CQL `bigint` of the condition, and the version a write stores.
fn versions(id: &ProjectionId, expected: u64) -> Result<(i64, i64)> {
    i64::try_from(expected)
        .ok()
        .and_then(|e| Some((e, e.checked_add(1)?)))
        .ok_or_else(|| {
            Error::invalid_input(format!(
                "projection {id}: expected version {expected} is beyond what a CQL bigint stores ({})",
                i64::MAX - 1
            ))
        })
}

impl CassandraOffsetStore {
    /// The stored key of `id`: `(projection_name, projection_key)`.
    fn key(&self, id: &ProjectionId) -> String {
        self.inner.projection_name_key(id.name())
    }

    /// The row of `id` as stored, `(offset, version)`, read at the serial level.
    async fn read_row(
        &self,
        step: &'static str,
        id: &ProjectionId,
    ) -> Result<Option<(Option<String>, Option<i64>)>> {
        let name = self.key(id);
        let result = self
            .inner
            .exec(
                step,
                &self.inner.stmts.select_offset,
                (name.as_str(), id.key()),
            )
            .await?;
        Inner::first_row(step, result)
    }

    /// One conditional write of `offset` over version `expected` (0: none stored):
    /// `Ok(new version)` when applied, `Err(stored version)` when the stored one differs.
    async fn write_if(
        &self,
        step: &'static str,
        id: &ProjectionId,
        expected: u64,
        offset: &str,
    ) -> Result<std::result::Result<u64, u64>> {
        let (condition, version) = versions(id, expected)?;
        let name = self.key(id);
        let stmts = &self.inner.stmts;
        let session = &self.inner.session;
        let result = if expected == 0 {
            session
                .execute_unpaged(
                    &stmts.insert_offset,
                    (name.as_str(), id.key(), offset, version),
                )
                .await
        } else {
            session
                .execute_unpaged(
                    &stmts.update_offset,
                    (offset, version, name.as_str(), id.key(), condition),
                )
                .await
        }
        .map_err(|e| lwt_failed(step, e))?;
        let (applied, stored) = Inner::lwt_outcome_of(step, result, "version")?;
        if applied {
            return Ok(Ok(version as u64));
        }
        match (expected, stored) {
            // `IF NOT EXISTS` refused: a row is there, and it answers its columns.
            (0, stored) => Ok(Err(stored_version(id, stored)?)),
            // `IF version = n` refused without a version: no row.
            (_, None) => Ok(Err(0)),
            (_, stored) => Ok(Err(stored_version(id, stored)?)),
        }
    }
}

#[async_trait]
impl OffsetStore for CassandraOffsetStore {
    /// A serial read (`SERIAL`, or `LOCAL_SERIAL` with `LOCAL_QUORUM` or `ONE`), which sees
    /// every answered lightweight transaction and completes one a quorum accepted.
    ///
    /// # Errors
    /// A stored `offset` that is NULL or not an [`Offset`]'s text, or a `version` NULL or
    /// below 1: [`ErrorKind::Corrupt`] naming the projection and the column.
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        let Some((offset, version)) = self.read_row("read_offset", id).await? else {
            return Ok(None);
        };
        Ok(Some(StoredOffset {
            version: stored_version(id, version)?,
            offset: stored_offset(id, offset)?,
        }))
    }

    /// One lightweight transaction: `INSERT ... IF NOT EXISTS` for `expected` 0, else
    /// `UPDATE ... IF version = expected`.
    ///
    /// # Errors
    /// Another version stored: [`ErrorKind::Conflict`] ([`version_conflict`]) with the
    /// version the lightweight transaction answered. Its answer lost: a retryable error
    /// saying the commit may or may not have been applied.
    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        match self
            .write_if("commit_offset", id, expected, &offset.to_string())
            .await?
        {
            Ok(version) => Ok(version),
            Err(stored) => Err(version_conflict(id, expected, stored)),
        }
    }

    /// Reads the stored version, then writes conditionally on it until a write applies
    /// (each refused write answers the version to try next), so concurrent sets each move
    /// the version on by one. Only the version is read: a set replaces an offset that does
    /// not decode.
    ///
    /// # Errors
    /// A stored `version` that does not decode: [`ErrorKind::Corrupt`]. After
    /// 100 refused attempts (another writer applied in between each time):
    /// [`ErrorKind::Conflict`].
    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        let text = offset.to_string();
        let mut expected = match self.read_row("set_offset", id).await? {
            None => 0,
            Some((_, version)) => stored_version(id, version)?,
        };
        for _ in 0..MAX_SET_ATTEMPTS {
            match self.write_if("set_offset", id, expected, &text).await? {
                Ok(version) => return Ok(version),
                Err(stored) => expected = stored,
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "projection {id}: the offset was not set: another writer moved its version on before each of {MAX_SET_ATTEMPTS} conditional writes"
            ),
        ))
    }
}
