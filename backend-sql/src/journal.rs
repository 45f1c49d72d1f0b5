//! The journal: the write path (what both databases share of it: the checks, the
//! orchestration of one write, the errors), replay in pages, highest sequence number,
//! deletes. Each database's own write transaction is its [`Backend::write_tx`] and
//! [`Backend::write_all`] in `postgres.rs` / `sqlite.rs`.

use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use persistence_api::{
    AtomicWrite, Error, ErrorKind, Journal, PersistenceId, Replay, Result, SequenceNr,
};

use crate::core::{wake, Backend, Store};
use crate::error::{to_public, SqlError};

/// The journal of one opened database.
pub(crate) struct SqlJournal<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> Journal for SqlJournal<B> {
    /// Atomic writes are applied in the given order, each all or nothing; a failed one does
    /// not stop the others (one transaction; SQLite: a savepoint each; PostgreSQL: a write
    /// whose sequence number is taken leaves nothing behind, and after any other refusal
    /// the writes go one transaction each). A call of one atomic write goes through the
    /// group commit (`group_commit.rs`) unless it is turned off: concurrent calls share a
    /// transaction, each keeping its own result.
    async fn write_events(&self, mut writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        if writes.len() == 1 && self.backend.group_commit().enabled() {
            let write = writes.pop().expect("one write");
            return Ok(vec![crate::group_commit::write(&self.backend, write).await]);
        }
        self.backend.write_all(&writes).await
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let state = self
            .backend
            .store()
            .id_state(persistence_id)
            .await?
            .unwrap_or_default();
        let highest = state.highest;
        let lower = from.max(state.deleted_to.saturating_add(1)).max(1);
        let upper = to.min(highest);
        let backend = self.backend.clone();
        let id = persistence_id.clone();
        let page_size = backend.store().page_size() as u64;
        let events = Box::pin(try_stream! {
            let mut next = lower;
            let mut left = max;
            while next <= upper && left > 0 {
                let limit = page_size.min(left);
                let page = backend.store().events(&id, next, upper, limit as usize).await?;
                let n = page.len() as u64;
                for event in page {
                    next = event.sequence_nr.saturating_add(1);
                    left -= 1;
                    yield event;
                }
                if n < limit {
                    break;
                }
            }
        });
        Ok(Replay {
            highest_sequence_nr: highest,
            events,
        })
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        Ok(self
            .backend
            .store()
            .id_state(persistence_id)
            .await?
            .map_or(0, |s| s.highest))
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.backend.store().delete_to(persistence_id, to).await
    }
}

/// Stores one atomic write in one transaction, then wakes the live queries.
pub(crate) async fn write_one<B: Backend>(backend: &B, write: &AtomicWrite) -> Result<()> {
    check_write_fits(write, B::MAX_TAG_BYTES)?;
    match backend.write_tx(write).await {
        Ok(()) => {
            wake(backend.wake_sender());
            Ok(())
        }
        Err(e) => Err(e.into_public()),
    }
}

/// Refuses writes whose sequence numbers do not fit a `BIGINT`, and (PostgreSQL) tags
/// longer than the tag table's key takes, before anything is written.
pub(crate) fn check_write_fits(write: &AtomicWrite, max_tag_bytes: Option<usize>) -> Result<()> {
    if write.highest_sequence_nr() > i64::MAX as u64 {
        return Err(Error::new(
            ErrorKind::Rejected,
            format!(
                "sequence number {} is above the largest the SQL backend stores ({})",
                write.highest_sequence_nr(),
                i64::MAX
            ),
        ));
    }
    if let Some(max) = max_tag_bytes {
        let long = write
            .events()
            .iter()
            .find_map(|e| e.tags.iter().find(|t| t.len() > max).map(|t| (e, t)));
        if let Some((e, tag)) = long {
            let start: String = tag.chars().take(40).collect();
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "the tag {start:?}... of {} sequence number {} is {} bytes long; the tag table's key takes at most {max}",
                    e.persistence_id,
                    e.sequence_nr,
                    tag.len()
                ),
            )
            .with_persistence_id(e.persistence_id.as_str())
            .with_sequence_range(e.sequence_nr, e.sequence_nr));
        }
    }
    Ok(())
}

/// Commits `tx` when `result` is `Ok`, rolls it back otherwise, and passes `result` on.
pub(crate) async fn commit_or_rollback<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'_, DB>,
    result: std::result::Result<T, WriteError>,
) -> std::result::Result<T, WriteError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

/// Why a write failed, before it becomes a public error.
pub(crate) enum WriteError {
    Sql(SqlError),
    /// The first sequence number is at or below the id's stored highest (or deleted-to
    /// mark): taken, whether its event was stored, deleted, or skipped by a gap.
    Taken,
    /// [`WriteError::Taken`], found before the write changed anything (PostgreSQL: its
    /// statement inserted and updated no row), so the transaction may go on with other
    /// writes.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    TakenUntouched,
}

impl<E: Into<SqlError>> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError::Sql(e.into())
    }
}

impl WriteError {
    /// The public error; the checking layer adds the write's persistence id, sequence
    /// numbers and operation.
    pub(crate) fn into_public(self) -> Error {
        match self {
            WriteError::Sql(e) => to_public(e),
            WriteError::Taken | WriteError::TakenUntouched => Error::new(
                ErrorKind::Conflict,
                "the sequence number is already taken: it is at or below the id's highest \
                 (another writer got there first, or its event was deleted)",
            ),
        }
    }
}
