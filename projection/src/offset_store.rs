//! [`OffsetStore`]: where a projection keeps how far it got, committed conditionally; and
//! [`MemoryOffsetStore`], the in-memory one.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use persistence_api::{Error, ErrorKind, Offset, Result};

use crate::ProjectionId;

/// A projection's stored offset and the version of that store: every commit (and every
/// clear) makes a new version, so a commit based on an old one is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOffset {
    /// The offset of the last envelope the projection handled (and committed).
    pub offset: Offset,
    /// 1 for the first commit, then one more per commit or clear; never goes down.
    pub version: u64,
}

/// Where projections keep their offsets, one per [`ProjectionId`].
///
/// Commits are conditional, so two running instances of one projection never both
/// commit: each commit names the version it read, and a commit over a version that has
/// moved on (another instance committed meanwhile) is [`ErrorKind::Conflict`].
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// The stored offset of `id`, `None` if it never committed.
    ///
    /// # Behavior
    /// - Reads what the last successful [`OffsetStore::commit_offset`] or
    ///   [`OffsetStore::clear_offset`] stored, with its version.
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>>;

    /// Stores `offset` for `id` if the stored version is still `expected` (0: nothing
    /// stored yet); returns the new version (`expected + 1`).
    ///
    /// # Behavior
    /// - Another version stored (another instance committed or cleared meanwhile): an
    ///   [`ErrorKind::Conflict`] naming the id, the expected and the stored version;
    ///   nothing stored.
    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64>;

    /// Forgets `id`'s offset, so the projection starts from the beginning of its source;
    /// the version still goes up (a running instance's next commit is a conflict).
    ///
    /// # Behavior
    /// - Unconditional; reading afterwards gives [`Offset::NoOffset`] at a new version.
    async fn clear_offset(&self, id: &ProjectionId) -> Result<()>;
}

/// The in-memory offset store: the one-line swap for tests. Clones do not share; wrap it
/// in an `Arc` to share it.
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    offsets: Mutex<HashMap<ProjectionId, StoredOffset>>,
}

impl MemoryOffsetStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The conflict of a commit whose expected version is not the stored one.
pub fn version_conflict(id: &ProjectionId, expected: u64, stored: u64) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "projection {id}: the offset was committed by another instance meanwhile (expected version {expected}, stored version {stored}); two instances of one projection must not run at once"
        ),
    )
    .with_operation("commit_offset")
}

#[async_trait]
impl OffsetStore for MemoryOffsetStore {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        Ok(offsets.get(id).cloned())
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let stored = offsets.get(id).map_or(0, |s| s.version);
        if stored != expected {
            return Err(version_conflict(id, expected, stored));
        }
        let version = expected + 1;
        offsets.insert(id.clone(), StoredOffset { offset, version });
        Ok(version)
    }

    async fn clear_offset(&self, id: &ProjectionId) -> Result<()> {
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let version = offsets.get(id).map_or(0, |s| s.version) + 1;
        offsets.insert(
            id.clone(),
            StoredOffset {
                offset: Offset::NoOffset,
                version,
            },
        );
        Ok(())
    }
}
