//! Projection offsets: [`ProjectionId`], [`OffsetStore`] with conditional commits, and
//! [`StoreTransaction`], the backend's transaction an exactly-once projection writes its
//! effects and its offset in.
//!
//! Backends implement [`OffsetStore`] next to their journal, in the same schema; the
//! projection runner (crate `persistence-projection`) uses it through
//! [`crate::Stores::offsets`].

use std::any::Any;
use std::fmt;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::types::Offset;

/// The longest projection name or key, in bytes (UTF-8): what every backend can key by.
pub const MAX_PROJECTION_ID_PART_BYTES: usize = 255;

/// Identifies one projection's stored offset: a `name` (the projection, e.g.
/// `"account-balances"`) and a `key` (the part of the stream it reads, e.g. a tag or a
/// slice range), as Akka Projections' `ProjectionId(name, key)`.
///
/// Both are 1 to [`MAX_PROJECTION_ID_PART_BYTES`] bytes of UTF-8 without control
/// characters; anything else is [`ErrorKind::InvalidInput`] before any request.
///
/// ```
/// use persistence_api::ProjectionId;
/// let id = ProjectionId::new("balances", "tag-deposit").unwrap();
/// assert_eq!(id.to_string(), "balances/tag-deposit");
/// assert!(ProjectionId::new("", "k").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionId {
    name: String,
    key: String,
}

impl ProjectionId {
    /// A validated id.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the part (name or key) that is empty, longer
    /// than [`MAX_PROJECTION_ID_PART_BYTES`] or holds a control character.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let key = key.into();
        check_part("name", &name)?;
        check_part("key", &key)?;
        Ok(ProjectionId { name, key })
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The projection's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ProjectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.key)
    }
}

fn check_part(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(format!(
            "a projection {what} must not be empty"
        )));
    }
    if value.len() > MAX_PROJECTION_ID_PART_BYTES {
        return Err(Error::invalid_input(format!(
            "a projection {what} is at most {MAX_PROJECTION_ID_PART_BYTES} bytes (got {} bytes: {:?}...)",
            value.len(),
            value.chars().take(32).collect::<String>()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid_input(format!(
            "a projection {what} must not contain control characters (got {c:?} in {value:?})"
        )));
    }
    Ok(())
}

/// A projection's stored offset and the version of that store: every commit (and every
/// clear) makes a new version, so a commit based on an old one is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOffset {
    /// The offset of the last envelope the projection handled (and committed);
    /// [`Offset::NoOffset`] after a clear.
    pub offset: Offset,
    /// 1 for the first commit, then one more per commit or clear; never goes down.
    pub version: u64,
}

/// The conflict of a commit whose expected version is not the stored one: what every
/// backend returns, so the message reads the same everywhere.
pub fn version_conflict(id: &ProjectionId, expected: u64, stored: u64) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "projection {id}: the offset was committed by another instance meanwhile (expected version {expected}, stored version {stored}); two instances of one projection must not run at once"
        ),
    )
    .with_operation("commit_offset")
}

/// A backend's open transaction, handed to an exactly-once projection's handler: the
/// handler writes its effects in it, and [`OffsetStore::commit_transaction`] writes the
/// offset in it and commits both, or neither.
///
/// What is inside depends on the backend, and each backend names its own type and gives
/// a typed accessor: `sqlx::Transaction` on SQLite and PostgreSQL, a list of
/// `TransactWriteItem`s on DynamoDB, a list of closures run under the store's lock in
/// memory. Dropping it without committing rolls it back.
pub struct StoreTransaction {
    backend: &'static str,
    inner: Box<dyn Any + Send>,
}

impl fmt::Debug for StoreTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTransaction")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl StoreTransaction {
    /// Wraps a backend's transaction (for backend authors).
    pub fn new<T: Any + Send>(backend: &'static str, inner: T) -> Self {
        StoreTransaction {
            backend,
            inner: Box::new(inner),
        }
    }

    /// The backend that opened it.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The backend's transaction, as its own type.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the backend that opened it and the type asked
    /// for, when they do not match (a handler written for another backend).
    pub fn downcast_mut<T: Any + Send>(&mut self) -> Result<&mut T> {
        let backend = self.backend;
        self.inner.downcast_mut::<T>().ok_or_else(|| {
            Error::invalid_input(format!(
                "this transaction was opened by the {backend} backend, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The backend's transaction, taken out (for backend authors committing it).
    ///
    /// # Errors
    /// As [`StoreTransaction::downcast_mut`].
    pub fn into_inner<T: Any + Send>(self) -> Result<T> {
        let backend = self.backend;
        self.inner.downcast::<T>().map(|b| *b).map_err(|_| {
            Error::invalid_input(format!(
                "this transaction was opened by the {backend} backend, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Where projections keep their offsets, one per [`ProjectionId`], in the backend's own
/// schema (created with the journal's).
///
/// Commits are conditional, so two running instances of one projection never both
/// commit: each commit names the version it read, and a commit over a version that has
/// moved on (another instance committed meanwhile, or an operator set or cleared the
/// offset) is [`ErrorKind::Conflict`].
///
/// Backends that can write a projection's effects and its offset in one transaction
/// (exactly-once delivery) implement [`OffsetStore::begin_transaction`] and
/// [`OffsetStore::commit_transaction`] and declare
/// [`crate::Capabilities::exactly_once_projections`].
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// The stored offset of `id`, `None` if it never committed.
    ///
    /// # Behavior
    /// - Reads what the last successful commit, set or clear stored, with its version.
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>>;

    /// Stores `offset` for `id` if the stored version is still `expected` (0: nothing
    /// stored yet); returns the new version (`expected + 1`).
    ///
    /// # Behavior
    /// - Another version stored: [`ErrorKind::Conflict`] naming the id, the expected and
    ///   the stored version ([`version_conflict`]); nothing stored.
    /// - Any [`Offset`] kind is stored and read back equal.
    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64>;

    /// Stores `offset` for `id` whatever version is stored (an operator's "set offset":
    /// replay from an earlier point or skip ahead), moving the version on so a running
    /// instance's next commit is a conflict; returns the new version.
    ///
    /// # Behavior
    /// - Unconditional; [`Offset::NoOffset`] clears (the projection starts from the
    ///   beginning of its source).
    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64>;

    /// Forgets `id`'s offset: [`OffsetStore::set_offset`] with [`Offset::NoOffset`].
    async fn clear_offset(&self, id: &ProjectionId) -> Result<u64> {
        self.set_offset(id, Offset::NoOffset).await
    }

    /// Whether this store implements transactions (exactly-once delivery).
    fn supports_transactions(&self) -> bool {
        false
    }

    /// Opens a transaction for an exactly-once projection's effects.
    ///
    /// # Behavior
    /// - A store without transactions: [`ErrorKind::Unsupported`].
    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        Err(Error::unsupported(
            "this backend cannot write a projection's effects and its offset in one transaction (exactly-once delivery)",
        )
        .with_operation("begin_transaction"))
    }

    /// Writes `offset` for `id` in `transaction`, conditional on `expected` as
    /// [`OffsetStore::commit_offset`], and commits the transaction: the handler's effects
    /// and the offset are stored together, or neither is.
    ///
    /// # Behavior
    /// - Another version stored: [`ErrorKind::Conflict`] ([`version_conflict`]), and
    ///   nothing of the transaction is stored.
    /// - A transaction over the backend's limits (DynamoDB: 100 items with the offset):
    ///   [`ErrorKind::Rejected`] naming the limit, before any request.
    /// - A transaction another backend opened: [`ErrorKind::InvalidInput`].
    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let _ = (transaction, id, expected, offset);
        Err(Error::unsupported(
            "this backend cannot write a projection's effects and its offset in one transaction (exactly-once delivery)",
        )
        .with_operation("commit_transaction"))
    }
}

/// The offset store of a backend that has none: every call is
/// [`ErrorKind::Unsupported`]. What [`crate::Stores::offsets`] holds until a backend
/// adds its own with [`crate::Stores::with_offset_store`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOffsetStore;

fn no_offsets(operation: &'static str) -> Error {
    Error::unsupported("this backend does not store projection offsets").with_operation(operation)
}

#[async_trait]
impl OffsetStore for NoOffsetStore {
    async fn read_offset(&self, _id: &ProjectionId) -> Result<Option<StoredOffset>> {
        Err(no_offsets("read_offset"))
    }
    async fn commit_offset(&self, _: &ProjectionId, _: u64, _: Offset) -> Result<u64> {
        Err(no_offsets("commit_offset"))
    }
    async fn set_offset(&self, _: &ProjectionId, _: Offset) -> Result<u64> {
        Err(no_offsets("set_offset"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_keys_are_invalid_input_naming_the_part() {
        for (name, key, part) in [
            ("", "k", "name"),
            ("n", "", "key"),
            ("n\u{1f}x", "k", "name"),
            ("n", "k\n", "key"),
        ] {
            let err = ProjectionId::new(name, key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(part), "{err}");
        }
        let long = "x".repeat(MAX_PROJECTION_ID_PART_BYTES + 1);
        assert!(ProjectionId::new(long.clone(), "k").is_err());
        assert!(ProjectionId::new("n", &long[1..]).is_ok());
    }

    #[test]
    fn a_transaction_of_another_backend_is_invalid_input_naming_it() {
        let mut tx = StoreTransaction::new("memory", 5u32);
        assert_eq!(*tx.downcast_mut::<u32>().unwrap(), 5);
        let err = tx.downcast_mut::<String>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("memory"), "{err}");
        assert!(tx.into_inner::<String>().is_err());
    }
}
