//! The typed layer over the durable-state store, beside [`crate::Entity`]: a
//! [`DurableEntity`] reads an id's state, applies a change and writes it at the next
//! revision, and retries on a `Conflict` when the caller asks it to.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{CborCodec, Codec};
use crate::durable_state::{DurableStateStore, Revision};
use crate::error::{ErrorKind, Result};
use crate::stores::Stores;
use crate::types::PersistenceId;

/// A state kept whole under a revision (not event-sourced).
///
/// ```
/// use persistence_api::DurableStateful;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Cart { items: Vec<String> }
///
/// impl DurableStateful for Cart {
///     const TYPE_NAME: &'static str = "shop.Cart";
///     fn tag(&self) -> Option<String> { Some("carts".into()) }
/// }
/// ```
pub trait DurableStateful: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name in the manifest: `"<TYPE_NAME>/v<n>"`.
    const TYPE_NAME: &'static str;

    /// The tag the state is stored under (what change queries select by); none by
    /// default.
    fn tag(&self) -> Option<String> {
        None
    }
}

/// A state read at a revision: what [`DurableEntity::get`] and [`DurableEntity::update`]
/// give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<S> {
    /// The revision read or written (0: never written).
    pub revision: Revision,
    /// The state; `None` when never written or deleted.
    pub state: Option<S>,
}

/// The latest state of one id, read and written with the revision check.
///
/// ```
/// # use persistence_api::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
/// # struct Cart { items: Vec<String> }
/// # impl DurableStateful for Cart { const TYPE_NAME: &'static str = "shop.Cart"; }
/// # async fn demo(stores: &Stores) -> Result<()> {
/// let cart = DurableEntity::<Cart>::new(stores, PersistenceId::new("cart-1")?);
/// let written = cart
///     .update(|state| {
///         let mut cart = state.cloned().unwrap_or_default();
///         cart.items.push("apple".into());
///         Ok(cart)
///     })
///     .await?;
/// assert_eq!(written.revision, 1);
/// assert_eq!(cart.get().await?.state.unwrap().items, vec!["apple".to_string()]);
/// # Ok(()) }
/// ```
pub struct DurableEntity<S> {
    store: Arc<dyn DurableStateStore>,
    persistence_id: PersistenceId,
    codec: Arc<dyn Codec<S>>,
}

impl<S: DurableStateful> DurableEntity<S> {
    /// The state of `persistence_id` in `stores`, encoded with CBOR under
    /// [`DurableStateful::TYPE_NAME`].
    pub fn new(stores: &Stores, persistence_id: PersistenceId) -> Self {
        DurableEntity {
            store: stores.durable_state.clone(),
            persistence_id,
            codec: Arc::new(CborCodec::<S>::new(S::TYPE_NAME)),
        }
    }

    /// The same entity with another codec (a newer schema version with upcasters).
    pub fn with_codec(mut self, codec: impl Codec<S> + 'static) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// The id.
    pub fn persistence_id(&self) -> &PersistenceId {
        &self.persistence_id
    }

    /// The stored state and its revision.
    ///
    /// # Errors
    /// The store's errors; a payload the codec cannot decode is
    /// [`ErrorKind::Serialization`] naming the id.
    pub async fn get(&self) -> Result<Versioned<S>> {
        let stored = self.store.get(&self.persistence_id).await?;
        let Some(stored) = stored else {
            return Ok(Versioned {
                revision: 0,
                state: None,
            });
        };
        let state = match &stored.payload {
            Some(payload) => Some(
                self.codec
                    .decode(payload)
                    .map_err(|e| e.with_persistence_id(self.persistence_id.as_str()))?,
            ),
            None => None,
        };
        Ok(Versioned {
            revision: stored.revision,
            state,
        })
    }

    /// Reads the state, applies `change` to it and writes the result at the next
    /// revision (with the new state's [`DurableStateful::tag`]).
    ///
    /// # Errors
    /// `change`'s error (nothing is written); [`ErrorKind::Conflict`] when another writer
    /// wrote the id between the read and the write (nothing is written; see
    /// [`DurableEntity::update_with_retries`]); the store's errors.
    pub async fn update(
        &self,
        change: impl FnOnce(Option<&S>) -> Result<S>,
    ) -> Result<Versioned<S>> {
        let current = self.get().await?;
        let next = change(current.state.as_ref())?;
        self.write(current.revision + 1, next).await
    }

    /// [`DurableEntity::update`], read and applied again after a [`ErrorKind::Conflict`]
    /// (another writer won the revision), up to `attempts` times in all, waiting a little
    /// longer each time (5 ms, doubling). `change` must be safe to run more than once.
    ///
    /// # Errors
    /// The last `Conflict` when every attempt lost; any other error at once.
    pub async fn update_with_retries(
        &self,
        attempts: u32,
        mut change: impl FnMut(Option<&S>) -> Result<S>,
    ) -> Result<Versioned<S>> {
        let mut delay = Duration::from_millis(5);
        let mut attempt = 1;
        loop {
            match self.update(&mut change).await {
                Err(e) if e.kind() == ErrorKind::Conflict && attempt < attempts.max(1) => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Deletes the state at the next revision; the revision keeps counting afterwards.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when another writer wrote the id since it was read; the
    /// store's errors.
    pub async fn delete(&self) -> Result<Revision> {
        let current = self.get().await?;
        let revision = current.revision + 1;
        self.store.delete(&self.persistence_id, revision).await?;
        Ok(revision)
    }

    async fn write(&self, revision: Revision, state: S) -> Result<Versioned<S>> {
        let payload = self.codec.encode(&state)?;
        self.store
            .upsert(&self.persistence_id, revision, payload, state.tag())
            .await?;
        Ok(Versioned {
            revision,
            state: Some(state),
        })
    }
}
