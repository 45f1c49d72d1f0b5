//! What a projection does with its envelopes: [`Handler`] (one at a time),
//! [`GroupedHandler`] (a group at a time), [`ExactlyOnceHandler`] (a group in the offset
//! store's transaction), their typed forms ([`Typed`]), and the [`idempotency_key`] for
//! at-least-once effects.

use std::marker::PhantomData;

use async_trait::async_trait;
use persistence_api::{Codec, EventEnvelope, Result, StoreTransaction};

use crate::Envelope;

/// What a projection does with each envelope: update a read model, call a service.
///
/// Used with at-least-once or at-most-once delivery
/// ([`crate::ProjectionBuilder::at_least_once`], [`crate::ProjectionBuilder::at_most_once`]).
#[async_trait]
pub trait Handler<E: Envelope = EventEnvelope>: Send + 'static {
    /// Handles one envelope. An `Err` is retried as [`crate::ProjectionSettings`] says.
    async fn handle(&mut self, envelope: &E) -> Result<()>;
}

/// A handler that takes envelopes in groups of up to
/// [`crate::ProjectionSettings::group_max_envelopes`], gathered for at most
/// [`crate::ProjectionSettings::group_max_wait`] (Akka's `groupedWithin`): one write to
/// the read model per group instead of per envelope. At-least-once: the offset of a
/// group's last envelope is committed after the group was handled.
#[async_trait]
pub trait GroupedHandler<E: Envelope = EventEnvelope>: Send + 'static {
    /// Handles one group, in source order (never empty). An `Err` is retried (the whole
    /// group) as [`crate::ProjectionSettings`] says.
    async fn handle_group(&mut self, envelopes: &[E]) -> Result<()>;
}

/// A handler whose effects live in the same store as the projection's offsets: it writes
/// them in `transaction`, and the projection writes the offset in the same transaction
/// and commits both, or neither (exactly-once delivery,
/// [`crate::ProjectionBuilder::exactly_once`]).
///
/// Get the backend's own transaction type out of `transaction`:
/// `persistence_sql::SqliteTransaction::of(transaction)?` (or `PostgresTransaction`),
/// `persistence_dynamodb::DynamoDbTransaction::of(transaction)?`,
/// `persistence_memory::MemoryTransaction::of(transaction)?`.
///
/// Groups hold one envelope unless [`crate::ProjectionBuilder::group_within`] says more.
/// A handler error drops the transaction (nothing of it is stored) and is retried with a
/// new one.
#[async_trait]
pub trait ExactlyOnceHandler<E: Envelope = EventEnvelope>: Send + 'static {
    /// Writes the effects of `envelopes` (never empty, in source order) in `transaction`.
    async fn handle(&mut self, transaction: &mut StoreTransaction, envelopes: &[E]) -> Result<()>;
}

/// How the runner calls a handler of any kind: one group at a time, with the transaction
/// when the delivery is exactly-once. Implemented by [`PerEnvelope`], [`Grouped`] and
/// [`Transactional`], which the builder wraps handlers in; not meant to be implemented
/// outside this crate.
#[async_trait]
pub trait Process<E: Envelope>: Send + 'static {
    /// Handles `envelopes` (one, unless the projection groups), in `transaction` when
    /// exactly-once.
    async fn process(
        &mut self,
        transaction: Option<&mut StoreTransaction>,
        envelopes: &[E],
    ) -> Result<()>;
}

/// A [`Handler`] as the runner calls it. [`PerEnvelope::into_inner`] gives it back.
#[derive(Debug)]
pub struct PerEnvelope<H>(pub(crate) H);

/// A [`GroupedHandler`] as the runner calls it.
#[derive(Debug)]
pub struct Grouped<H>(pub(crate) H);

/// An [`ExactlyOnceHandler`] as the runner calls it.
#[derive(Debug)]
pub struct Transactional<H>(pub(crate) H);

macro_rules! into_inner {
    ($($t:ident),*) => {$(
        impl<H> $t<H> {
            /// The handler (with the read model it built).
            pub fn into_inner(self) -> H {
                self.0
            }
            /// The handler, borrowed.
            pub fn get_ref(&self) -> &H {
                &self.0
            }
        }
    )*};
}
into_inner!(PerEnvelope, Grouped, Transactional);

#[async_trait]
impl<E: Envelope, H: Handler<E>> Process<E> for PerEnvelope<H> {
    async fn process(
        &mut self,
        _transaction: Option<&mut StoreTransaction>,
        envelopes: &[E],
    ) -> Result<()> {
        for envelope in envelopes {
            self.0.handle(envelope).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<E: Envelope, H: GroupedHandler<E>> Process<E> for Grouped<H> {
    async fn process(
        &mut self,
        _transaction: Option<&mut StoreTransaction>,
        envelopes: &[E],
    ) -> Result<()> {
        self.0.handle_group(envelopes).await
    }
}

#[async_trait]
impl<E: Envelope, H: ExactlyOnceHandler<E>> Process<E> for Transactional<H> {
    async fn process(
        &mut self,
        transaction: Option<&mut StoreTransaction>,
        envelopes: &[E],
    ) -> Result<()> {
        let transaction = transaction.ok_or_else(|| {
            persistence_api::Error::new(
                persistence_api::ErrorKind::Unexpected,
                "an exactly-once handler was called without a transaction",
            )
        })?;
        self.0.handle(transaction, envelopes).await
    }
}

/// A handler of decoded events: what [`Typed`] calls after decoding each envelope's
/// payload through a [`Codec`] (with its upcasters), as `Entity` decodes on replay.
#[async_trait]
pub trait TypedHandler<E: Send + 'static>: Send + 'static {
    /// Handles one decoded event; `envelope` has its id, sequence number, offset, tags.
    async fn handle(&mut self, event: E, envelope: &EventEnvelope) -> Result<()>;
}

/// An exactly-once [`TypedHandler`]: decoded events, written in the offset store's
/// transaction.
#[async_trait]
pub trait TypedExactlyOnceHandler<E: Send + 'static>: Send + 'static {
    /// Writes the effects of one decoded event in `transaction`.
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        event: E,
        envelope: &EventEnvelope,
    ) -> Result<()>;
}

/// Decodes each envelope's payload with a codec and hands the event to a
/// [`TypedHandler`] (it is then a [`Handler`]) or a [`TypedExactlyOnceHandler`] (an
/// [`ExactlyOnceHandler`]). A payload the codec cannot decode is the handler's error
/// ([`persistence_api::ErrorKind::Serialization`], naming the id and sequence number),
/// retried and then stopped on or skipped as any handler error.
///
/// ```
/// # use persistence_api::{CborCodec, EventEnvelope, Result};
/// # use persistence_projection::{Typed, TypedHandler};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Deposited { cents: u64 }
/// struct Total(u64);
/// #[persistence_api::async_trait]
/// impl TypedHandler<Deposited> for Total {
///     async fn handle(&mut self, event: Deposited, _envelope: &EventEnvelope) -> Result<()> {
///         self.0 += event.cents;
///         Ok(())
///     }
/// }
/// let handler = Typed::new(CborCodec::<Deposited>::new("bank.Deposited"), Total(0));
/// # let _ = handler;
/// ```
pub struct Typed<E, C, H> {
    codec: C,
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E, C: Codec<E>, H> Typed<E, C, H> {
    /// `handler`, fed with events `codec` decodes.
    pub fn new(codec: C, handler: H) -> Self {
        Typed {
            codec,
            handler,
            _event: PhantomData,
        }
    }

    /// The handler (with the read model it built).
    pub fn into_inner(self) -> H {
        self.handler
    }
}

fn decode<E, C: Codec<E>>(codec: &C, envelope: &EventEnvelope) -> Result<E> {
    codec.decode(&envelope.event.payload).map_err(|e| {
        e.with_persistence_id(envelope.persistence_id().as_str())
            .with_sequence_range(envelope.sequence_nr(), envelope.sequence_nr())
    })
}

#[async_trait]
impl<E, C, H> Handler for Typed<E, C, H>
where
    E: Send + 'static,
    C: Codec<E> + 'static,
    H: TypedHandler<E>,
{
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
        let event = decode(&self.codec, envelope)?;
        self.handler.handle(event, envelope).await
    }
}

#[async_trait]
impl<E, C, H> ExactlyOnceHandler for Typed<E, C, H>
where
    E: Send + 'static,
    C: Codec<E> + 'static,
    H: TypedExactlyOnceHandler<E>,
{
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        envelopes: &[EventEnvelope],
    ) -> Result<()> {
        for envelope in envelopes {
            let event = decode(&self.codec, envelope)?;
            self.handler.handle(transaction, event, envelope).await?;
        }
        Ok(())
    }
}

/// A key that names one event for good: `"<persistence id>#<sequence number>"`.
///
/// At-least-once delivery may hand an envelope to the handler again after a crash or a
/// restart (the envelopes since the last commit). Where the read model cannot share a
/// transaction with the offset (Cassandra, or any external service), make each effect
/// idempotent by keying it with this: an insert keyed by it is an upsert the second time
/// (Cassandra's `INSERT` always is; SQL's `INSERT ... ON CONFLICT DO NOTHING`; DynamoDB's
/// `PutItem` conditioned on `attribute_not_exists`), and a service call can pass it as its
/// idempotency key.
///
/// ```
/// # use persistence_api::{EventEnvelope, Offset, Payload, PersistenceId, PersistentEvent};
/// let event = PersistentEvent::new(PersistenceId::new("account-1").unwrap(), 7, Payload::raw(b"x".to_vec()));
/// let envelope = EventEnvelope { offset: Offset::Sequence(7), event };
/// assert_eq!(persistence_projection::idempotency_key(&envelope), "account-1#7");
/// ```
pub fn idempotency_key(envelope: &EventEnvelope) -> String {
    format!(
        "{}#{}",
        envelope.persistence_id().as_str(),
        envelope.sequence_nr()
    )
}
