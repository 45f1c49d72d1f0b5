//! The in-memory projection offset store, with exactly-once transactions: a
//! [`MemoryTransaction`] holds the handler's effects as closures, run under the store's
//! lock together with the conditional offset write, so the effects happen only with
//! their offset, and never for a projection whose offset another instance moved on.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use persistence_api::{
    version_conflict, Offset, OffsetStore, ProjectionId, Result, StoreTransaction, StoredOffset,
};

use crate::Memory;

/// One effect of an exactly-once handler, run once its transaction commits.
pub type MemoryEffect = Box<dyn FnOnce() + Send>;

/// The in-memory backend's transaction: the effects an exactly-once handler wants done,
/// run in order under the offset store's lock when (and only when) the offset commits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> persistence_api::Result<()> {
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use persistence_api::{Offset, ProjectionId};
/// use persistence_memory::MemoryTransaction;
/// let stores = persistence_memory::stores();
/// let total = Arc::new(AtomicU64::new(0));
/// let id = ProjectionId::new("totals", "all")?;
///
/// let mut tx = stores.offsets.begin_transaction().await?;
/// let t = total.clone();
/// MemoryTransaction::of(&mut tx)?.push(move || { t.fetch_add(5, Ordering::SeqCst); });
/// stores.offsets.commit_transaction(tx, &id, 0, Offset::Sequence(1)).await?;
/// assert_eq!(total.load(Ordering::SeqCst), 5);
///
/// // A commit over a moved-on version runs none of its effects.
/// let mut tx = stores.offsets.begin_transaction().await?;
/// let t = total.clone();
/// MemoryTransaction::of(&mut tx)?.push(move || { t.fetch_add(5, Ordering::SeqCst); });
/// assert!(stores.offsets.commit_transaction(tx, &id, 0, Offset::Sequence(2)).await.is_err());
/// assert_eq!(total.load(Ordering::SeqCst), 5);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct MemoryTransaction {
    effects: Vec<MemoryEffect>,
}

impl std::fmt::Debug for MemoryTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransaction")
            .field("effects", &self.effects.len())
            .finish()
    }
}

impl MemoryTransaction {
    /// The in-memory transaction inside `transaction`.
    ///
    /// # Errors
    /// `ErrorKind::InvalidInput` when another backend opened it.
    pub fn of(transaction: &mut StoreTransaction) -> Result<&mut MemoryTransaction> {
        transaction.downcast_mut::<MemoryTransaction>()
    }

    /// Adds an effect, run when the transaction commits.
    pub fn push(&mut self, effect: impl FnOnce() + Send + 'static) {
        self.effects.push(Box::new(effect));
    }

    /// The effects added so far.
    pub fn len(&self) -> usize {
        self.effects.len()
    }

    /// Whether no effect was added.
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty()
    }
}

/// The in-memory offset store (what [`Memory::stores`] puts in [`persistence_api::Stores::offsets`]).
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    offsets: Mutex<HashMap<ProjectionId, StoredOffset>>,
}

impl MemoryOffsetStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectionId, StoredOffset>> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn commit_locked(
    offsets: &mut HashMap<ProjectionId, StoredOffset>,
    id: &ProjectionId,
    expected: u64,
    offset: Offset,
) -> Result<u64> {
    let stored = offsets.get(id).map_or(0, |s| s.version);
    if stored != expected {
        return Err(version_conflict(id, expected, stored));
    }
    let version = expected + 1;
    offsets.insert(id.clone(), StoredOffset { offset, version });
    Ok(version)
}

#[async_trait]
impl OffsetStore for MemoryOffsetStore {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        Ok(self.lock().get(id).cloned())
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        commit_locked(&mut self.lock(), id, expected, offset)
    }

    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        let mut offsets = self.lock();
        let version = offsets.get(id).map_or(0, |s| s.version) + 1;
        offsets.insert(id.clone(), StoredOffset { offset, version });
        Ok(version)
    }

    fn supports_transactions(&self) -> bool {
        true
    }

    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        Ok(StoreTransaction::new(
            Memory::NAME,
            MemoryTransaction::default(),
        ))
    }

    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let transaction = transaction.into_inner::<MemoryTransaction>()?;
        let mut offsets = self.lock();
        let version = commit_locked(&mut offsets, id, expected, offset)?;
        for effect in transaction.effects {
            effect();
        }
        Ok(version)
    }
}
