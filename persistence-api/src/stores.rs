//! [`Stores`]: a backend's three stores behind one checking and tracing layer.
//!
//! Every call passes through here before a backend sees it, so input validation against
//! [`Capabilities`] and the `tracing` spans are decided in one place, the same for every
//! backend.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{stream, StreamExt};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::capabilities::Capabilities;
use crate::durable_state::{
    ChangeStream, DurableState, DurableStateStore, NoDurableStateStore, Revision,
};
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{JournalMaintenance, NoMaintenance, PurgeReport, RebuildReport};
use crate::metrics;
use crate::offsets::{NoOffsetStore, OffsetStore, ProjectionId, StoreTransaction, StoredOffset};
use crate::traits::{
    EnvelopeStream, EventStream, Journal, PersistenceIdStream, QueryMode, ReadJournal, Replay,
    SnapshotStore,
};
use crate::types::{
    AtomicWrite, Offset, Payload, PersistenceId, SelectedSnapshot, SequenceNr, SnapshotMetadata,
    SnapshotSelectionCriteria,
};

/// A backend's journal, snapshot store and read journal, each behind the checking layer.
///
/// ```
/// # use persistence_api::*;
/// # fn demo(j: std::sync::Arc<dyn Journal>, s: std::sync::Arc<dyn SnapshotStore>, r: std::sync::Arc<dyn ReadJournal>) {
/// let stores = Stores::new("my-backend", Capabilities::default(), j, s, r);
/// let caps: Capabilities = stores.capabilities();
/// assert_eq!(stores.backend(), "my-backend");
/// # let _ = caps;
/// # }
/// ```
#[derive(Clone)]
pub struct Stores {
    /// The journal, checked and traced.
    pub journal: Arc<dyn Journal>,
    /// The snapshot store, checked and traced.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The read journal, checked and traced.
    pub read_journal: Arc<dyn ReadJournal>,
    /// The projection offset store, checked and traced; every call is
    /// [`ErrorKind::Unsupported`] unless the backend added one
    /// ([`Stores::with_offset_store`]) and declared
    /// [`Capabilities::projection_offsets`].
    pub offsets: Arc<dyn OffsetStore>,
    /// The durable-state store, checked and traced; every call is
    /// [`ErrorKind::Unsupported`] unless the backend added one
    /// ([`Stores::with_durable_state_store`]) and declared [`Capabilities::durable_state`].
    pub durable_state: Arc<dyn DurableStateStore>,
    /// Journal maintenance (rebuilding secondary structures, purging an id), checked and
    /// traced; every call is [`ErrorKind::Unsupported`] unless the backend added it
    /// ([`Stores::with_maintenance`]) and declared [`Capabilities::maintenance`].
    pub maintenance: Arc<dyn JournalMaintenance>,
    capabilities: Capabilities,
    backend: &'static str,
    ctx: Ctx,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Wraps a backend's stores in the checking and tracing layer. `backend` names the
    /// backend in every error and span (`"sqlite"`, `"dynamodb"`, ...); `capabilities` is
    /// what the backend declares, enforced here for all three stores.
    ///
    /// # Behavior
    /// - A call the declared capabilities rule out (tags, event or snapshot metadata,
    ///   deleting events, snapshots, a kind of query, live queries) fails with
    ///   [`ErrorKind::Unsupported`] naming what is missing and the operation; the backend
    ///   is never asked.
    /// - An atomic write of more than [`Capabilities::atomic_write_max_events`] events, or
    ///   holding an event larger than [`Capabilities::max_event_size`], gets
    ///   [`ErrorKind::Rejected`] in its place in the results and is never sent; the
    ///   call's other writes are sent and their results come back in their places.
    /// - A snapshot larger than [`Capabilities::max_snapshot_size`] is
    ///   [`ErrorKind::Rejected`] and never sent.
    /// - An empty tag is [`ErrorKind::InvalidInput`] for its atomic write.
    /// - A replay with `from > to` or `max == 0` asks the backend only for the highest; a
    ///   delete to 0, criteria that select nothing and a by-id query with `from > to` are
    ///   answered without the backend; `from` 0 reaches it as 1.
    /// - A backend that answers `write_events` with the wrong number of results makes
    ///   the call fail with [`ErrorKind::Unexpected`].
    /// - Every error a backend returns leaves with the operation, the backend's name, and
    ///   the persistence id and sequence range of the call (an error that already names
    ///   a more precise id or range keeps it); backends do not add them themselves.
    /// - Every call is counted in the metrics of [`crate::metrics`] by backend and
    ///   operation, with its duration, its error's kind, the events and bytes of the
    ///   atomic writes acknowledged, each failed atomic write's kind, the events streams
    ///   deliver and, for live queries, each event's delay; nothing is exported unless the
    ///   application installs a recorder.
    pub fn new(
        backend: &'static str,
        capabilities: Capabilities,
        journal: Arc<dyn Journal>,
        snapshots: Arc<dyn SnapshotStore>,
        read_journal: Arc<dyn ReadJournal>,
    ) -> Self {
        let ctx = Ctx {
            backend,
            caps: capabilities,
            shared: Arc::new(Shared::new()),
        };
        Stores {
            journal: Arc::new(CheckedJournal {
                inner: journal,
                ctx: ctx.clone(),
            }),
            snapshots: Arc::new(CheckedSnapshotStore {
                inner: snapshots,
                ctx: ctx.clone(),
            }),
            read_journal: Arc::new(CheckedReadJournal {
                inner: read_journal,
                ctx: ctx.clone(),
            }),
            offsets: Arc::new(CheckedOffsetStore {
                inner: Arc::new(NoOffsetStore),
                ctx: ctx.clone(),
            }),
            durable_state: Arc::new(CheckedDurableStateStore {
                inner: Arc::new(NoDurableStateStore),
                ctx: ctx.clone(),
            }),
            maintenance: Arc::new(CheckedMaintenance {
                inner: Arc::new(NoMaintenance),
                ctx: ctx.clone(),
            }),
            capabilities,
            backend,
            ctx,
        }
    }

    /// The same stores with the backend's projection offset store, behind the same
    /// checking and tracing layer.
    ///
    /// # Behavior
    /// - Without [`Capabilities::projection_offsets`] every offset call is
    ///   [`ErrorKind::Unsupported`]; without [`Capabilities::exactly_once_projections`]
    ///   the transaction calls are, and `supports_transactions` is false.
    /// - An offset store error leaves with the operation and the backend's name.
    pub fn with_offset_store(mut self, offsets: Arc<dyn OffsetStore>) -> Self {
        self.offsets = Arc::new(CheckedOffsetStore {
            inner: offsets,
            ctx: self.ctx.clone(),
        });
        self
    }

    /// The same stores with the backend's durable-state store, behind the same checking
    /// and tracing layer.
    ///
    /// # Behavior
    /// - Without [`Capabilities::durable_state`] every call is [`ErrorKind::Unsupported`];
    ///   without [`Capabilities::durable_state_changes`] (or `live_queries` for the live
    ///   form) change queries are.
    /// - An upsert or delete at revision 0, an upsert with an empty payload or an empty
    ///   tag, and a change query for an empty tag are [`ErrorKind::InvalidInput`]; a state
    ///   over [`Capabilities::max_state_size`] is [`ErrorKind::Rejected`] naming its size
    ///   and the limit; none reaches the backend.
    /// - Every error leaves with the operation, the backend's name and the id.
    pub fn with_durable_state_store(mut self, store: Arc<dyn DurableStateStore>) -> Self {
        self.durable_state = Arc::new(CheckedDurableStateStore {
            inner: store,
            ctx: self.ctx.clone(),
        });
        self
    }

    /// The same stores with the backend's journal maintenance, behind the same checking
    /// and tracing layer.
    ///
    /// # Behavior
    /// - Without [`Capabilities::maintenance`] every call is [`ErrorKind::Unsupported`].
    /// - Every error leaves with the operation, the backend's name and the id.
    pub fn with_maintenance(mut self, maintenance: Arc<dyn JournalMaintenance>) -> Self {
        self.maintenance = Arc::new(CheckedMaintenance {
            inner: maintenance,
            ctx: self.ctx.clone(),
        });
        self
    }

    /// The backend's name, as given to [`Stores::new`].
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What the backend declared.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Whether the backend is reachable and its schema present, answered within
    /// `timeout`: for readiness probes.
    ///
    /// ```
    /// # use persistence_api::*;
    /// # async fn demo(stores: Stores) -> Result<()> {
    /// let health = stores.health(std::time::Duration::from_secs(2)).await?;
    /// println!("{} answered in {:?}", health.backend, health.latency);
    /// # Ok(()) }
    /// ```
    ///
    /// # Behavior
    /// - Probes by reading, never by writing: the journal's highest sequence number of
    ///   the id [`HEALTH_PROBE_ID`] and, when the backend declares
    ///   [`Capabilities::snapshots`], its latest snapshot; each reads a table, so a
    ///   missing table fails the probe as the backend reports it, the error keeping its
    ///   kind, the backend's name and the operation that failed.
    /// - A probe not answered within `timeout` is abandoned and the call fails with
    ///   [`ErrorKind::Timeout`] naming the backend and the timeout.
    /// - On success, [`Health`] names the backend, what was probed and the round trip's
    ///   latency.
    pub async fn health(&self, timeout: Duration) -> Result<Health> {
        let backend = self.backend;
        let span = tracing::info_span!("persistence.health", backend, ?timeout);
        let probe = async move {
            let start = Instant::now();
            let id = PersistenceId::new(HEALTH_PROBE_ID)?;
            let mut probed = vec!["journal"];
            self.journal.highest_sequence_nr(&id).await?;
            if self.capabilities.snapshots {
                self.snapshots
                    .load_snapshot(&id, SnapshotSelectionCriteria::latest())
                    .await?;
                probed.push("snapshots");
            }
            Ok((probed, start.elapsed()))
        };
        let call = async move {
            match tokio::time::timeout(timeout, probe).await {
                Ok(Ok((probed, latency))) => {
                    tracing::debug!(?latency, "healthy");
                    Ok(Health {
                        backend,
                        latency,
                        probed,
                    })
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "health probe failed");
                    Err(e)
                }
                Err(_) => {
                    let e = Error::new(
                        ErrorKind::Timeout,
                        format!("the {backend} backend did not answer the health probe within {timeout:?}"),
                    )
                    .with_operation("health")
                    .with_backend(backend);
                    tracing::warn!(error = %e, "health probe timed out");
                    Err(e)
                }
            }
        }
        .instrument(span);
        self.ctx.run("health", Access::Read, call).await
    }
}

impl Stores {
    /// Stops the stores accepting writes, waits up to `deadline` for the calls in flight,
    /// and ends live queries: for an application shutting down.
    ///
    /// ```
    /// # use persistence_api::*;
    /// # async fn demo(stores: Stores) -> Result<()> {
    /// let report = stores.shutdown(std::time::Duration::from_secs(10)).await?;
    /// if !report.finished {
    ///     eprintln!("{} calls were still running at the deadline", report.still_in_flight);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Behavior
    /// - From the call on, every write through these stores or any clone of them
    ///   (`write_events`, `delete_events_to`, snapshot saves and deletes, offset commits and
    ///   transactions, durable-state upserts and deletes, maintenance) fails with
    ///   [`ErrorKind::Rejected`], not retryable, saying the stores are shut down and naming
    ///   the backend and the operation; nothing of it reaches the backend. Reads go on.
    /// - Calls already in flight are never cancelled: each gets its true result. The call
    ///   waits for them up to `deadline` and reports how many there were and whether they
    ///   all finished in time ([`ShutdownReport`]).
    /// - Live queries (through the read journal and the durable-state store) complete
    ///   after the item they are delivering; a live query started afterwards completes at
    ///   once. Current queries and replays run to their end.
    /// - Calling it again waits again and reports the calls in flight then.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport> {
        let shared = &self.ctx.shared;
        let backend = self.backend;
        let span = tracing::info_span!("persistence.shutdown", backend, ?deadline);
        async move {
            // The flag is set before the count is read (see `Shared::enter`).
            shared.closed.send_replace(true);
            let in_flight = shared.in_flight.load(Ordering::SeqCst);
            tracing::info!(in_flight, "shutting down: new writes are refused");
            let drained = async {
                loop {
                    let idle = shared.idle.notified();
                    tokio::pin!(idle);
                    idle.as_mut().enable();
                    if shared.in_flight.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    idle.await;
                }
            };
            let finished = tokio::time::timeout(deadline, drained).await.is_ok();
            let still_in_flight = shared.in_flight.load(Ordering::SeqCst);
            if finished {
                tracing::info!(in_flight, "shut down: every call in flight finished");
            } else {
                tracing::warn!(
                    in_flight,
                    still_in_flight,
                    "shut down: calls still in flight at the deadline"
                );
            }
            Ok(ShutdownReport {
                backend,
                in_flight,
                finished,
                still_in_flight: if finished { 0 } else { still_in_flight },
            })
        }
        .instrument(span)
        .await
    }

    /// Whether [`Stores::shutdown`] has been called on these stores or a clone of them.
    pub fn is_shut_down(&self) -> bool {
        *self.ctx.shared.closed.borrow()
    }
}

/// What [`Stores::shutdown`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The backend's name, as [`Stores::backend`] gives it.
    pub backend: &'static str,
    /// Calls (reads and writes) in flight when the shutdown began.
    pub in_flight: usize,
    /// Whether every call in flight had finished by the deadline.
    pub finished: bool,
    /// Calls still in flight at the deadline (0 when `finished`); they go on and get
    /// their true results.
    pub still_in_flight: usize,
}

/// The persistence id [`Stores::health`] reads: never written by it, and nothing needs to
/// be stored under it.
pub const HEALTH_PROBE_ID: &str = "__health__";

/// What [`Stores::health`] found: the backend answered its probes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The backend's name, as [`Stores::backend`] gives it.
    pub backend: &'static str,
    /// How long the probes took together, one after the other.
    pub latency: Duration,
    /// What was probed: `"journal"`, then `"snapshots"` when the backend declares them.
    pub probed: Vec<&'static str>,
}

/// Whether a call reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// What the checking layer knows of the backend behind it, and the state every clone of
/// the stores shares.
#[derive(Clone)]
struct Ctx {
    backend: &'static str,
    caps: Capabilities,
    shared: Arc<Shared>,
}

/// The state all clones of a [`Stores`] share: whether it is shut down, and the calls in
/// flight.
struct Shared {
    /// True once [`Stores::shutdown`] has begun; live queries end when it turns.
    closed: watch::Sender<bool>,
    /// Calls inside [`Ctx::run`].
    in_flight: AtomicUsize,
    /// Told when `in_flight` drops to 0.
    idle: Notify,
}

impl Shared {
    fn new() -> Self {
        Shared {
            closed: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Counts a call in flight; `None` (counting nothing) for a write once shut down.
    /// The count goes up before the flag is read, and [`Stores::shutdown`] sets the flag
    /// before reading the count: a call is either refused or waited for.
    fn enter(&self, access: Access) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let call = InFlight(self);
        if access == Access::Write && *self.closed.borrow() {
            return None;
        }
        Some(call)
    }

    /// Completes when the stores are shut down.
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            if rx.wait_for(|closed| *closed).await.is_err() {
                // Every handle of these stores is gone, so nothing can shut them down any
                // more: a live query goes on for as long as its consumer reads it.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One call in flight, counted until dropped.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Ctx {
    /// Adds the call's context to a backend's error (see [`Error::with_context`]).
    /// Borrows the id: nothing is allocated unless an error happens.
    fn err<'a>(
        &self,
        operation: &'static str,
        id: Option<&'a str>,
        range: Option<(u64, u64)>,
    ) -> impl Fn(Error) -> Error + Send + Sync + 'a {
        let backend = self.backend;
        move |e: Error| e.with_context(backend, operation, id, range)
    }

    /// [`Ctx::err`] owning the id, for a stream that outlives the call.
    fn err_owned(
        &self,
        operation: &'static str,
        id: &str,
    ) -> impl Fn(Error) -> Error + Send + Sync + 'static {
        let backend = self.backend;
        let id = id.to_owned();
        move |e: Error| e.with_context(backend, operation, Some(&id), None)
    }

    /// Runs one call of `operation`, measured ([`metrics::Call`]): every checked method
    /// that answers with a `Result` passes through here.
    async fn run<T>(
        &self,
        operation: &'static str,
        access: Access,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let measured = metrics::Call::start(self.backend, operation);
        let result = match self.shared.enter(access) {
            // Held until the call has its result: never cancelled by a shutdown.
            Some(_in_flight) => call.await,
            None => Err(Error::new(
                ErrorKind::Rejected,
                "the stores are shut down: this write was refused and nothing of it was stored",
            )
            .with_retryable(false)
            .with_operation(operation)
            .with_backend(self.backend)),
        };
        measured.finish(&result);
        result
    }

    /// A stream of `operation` behind the layer: the call counted, its items measured
    /// ([`metrics::observe_stream`]).
    fn stream<T: metrics::Item + Send + 'static>(
        &self,
        operation: &'static str,
        mode: QueryMode,
        stream: BoxedStream<T>,
    ) -> BoxedStream<T> {
        metrics::count_call(self.backend, operation);
        let stream = metrics::observe_stream(self.backend, operation, mode.is_live(), stream);
        if mode.is_live() {
            // A live query completes when the stores shut down.
            Box::pin(stream.take_until(self.shared.closed()))
        } else {
            stream
        }
    }

    fn unsupported(&self, operation: &'static str, what: &str) -> Error {
        Error::unsupported(format!("this backend does not support {what}"))
            .with_operation(operation)
            .with_backend(self.backend)
    }
}

/// Checks one atomic write against the capabilities; `Err` is that write's result.
fn check_write(ctx: &Ctx, write: &AtomicWrite) -> Result<()> {
    let caps = &ctx.caps;
    let id = write.persistence_id().as_str();
    let range = Some((write.lowest_sequence_nr(), write.highest_sequence_nr()));
    let err = ctx.err("write_events", Some(id), range);
    if let Some(max) = caps.atomic_write_max_events {
        if write.len() > max {
            return Err(err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "an atomic write of {} events is larger than this backend's limit of {max} events",
                    write.len()
                ),
            )));
        }
    }
    for event in write.events() {
        if !event.tags.is_empty() && !caps.tags {
            return Err(err(ctx.unsupported("write_events", "tags")));
        }
        if event.metadata.is_some() && !caps.event_metadata {
            return Err(err(ctx.unsupported("write_events", "event metadata")));
        }
        if let Some(tag) = event.tags.iter().find(|t| t.is_empty()) {
            return Err(err(Error::invalid_input(format!(
                "tags must not be empty (got {tag:?})"
            ))));
        }
        if let Some(max) = caps.max_event_size {
            let size = event.stored_size();
            if size > max {
                return Err(err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "event {} of {id} is {size} bytes; this backend stores at most {max} bytes per event",
                        event.sequence_nr
                    ),
                )
                .with_sequence_range(event.sequence_nr, event.sequence_nr)));
            }
        }
    }
    Ok(())
}

struct CheckedJournal {
    inner: Arc<dyn Journal>,
    ctx: Ctx,
}

#[async_trait]
impl Journal for CheckedJournal {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        let events: usize = writes.iter().map(AtomicWrite::len).sum();
        let first_id = writes
            .first()
            .map(|w| w.persistence_id().as_str().to_owned());
        let whole = match (writes.first(), writes.last()) {
            (Some(f), Some(l))
                if writes
                    .iter()
                    .all(|w| w.persistence_id() == f.persistence_id()) =>
            {
                Some((f.lowest_sequence_nr(), l.highest_sequence_nr()))
            }
            _ => None,
        };
        let span = tracing::info_span!(
            "persistence.write_events",
            backend = self.ctx.backend,
            atomic_writes = writes.len(),
            events,
            persistence_id = first_id.as_deref().unwrap_or(""),
            from = writes.first().map(|w| w.lowest_sequence_nr()).unwrap_or(0),
            to = writes.last().map(|w| w.highest_sequence_nr()).unwrap_or(0),
        );
        let call = async move {
            // Each atomic write's events and bytes, counted as written once acknowledged.
            let sizes: Vec<(u64, u64)> = writes
                .iter()
                .map(|w| {
                    let bytes = w.events().iter().map(|e| e.stored_size() as u64).sum();
                    (w.len() as u64, bytes)
                })
                .collect();
            let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(writes.len());
            let mut accepted = Vec::with_capacity(writes.len());
            let mut contexts = Vec::with_capacity(writes.len());
            for write in writes {
                match check_write(&self.ctx, &write) {
                    Ok(()) => {
                        results.push(None);
                        contexts.push((
                            write.persistence_id().as_str().to_owned(),
                            (write.lowest_sequence_nr(), write.highest_sequence_nr()),
                        ));
                        accepted.push(write);
                    }
                    Err(e) => results.push(Some(Err(e))),
                }
            }
            if !accepted.is_empty() {
                let n = accepted.len();
                // A failure of the whole call names the id (and range) when all its
                // writes are of one id.
                let one_id = contexts.iter().all(|(id, _)| Some(id) == first_id.as_ref());
                let call_err = self.ctx.err(
                    "write_events",
                    if one_id { first_id.as_deref() } else { None },
                    if one_id { whole } else { None },
                );
                let inner = match self.inner.write_events(accepted).await {
                    Ok(r) => r,
                    Err(e) => {
                        let e = call_err(e);
                        tracing::warn!(error = %e, "write_events failed");
                        return Err(e);
                    }
                };
                if inner.len() != n {
                    return Err(call_err(Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "backend answered {} results for {n} atomic writes",
                            inner.len()
                        ),
                    )));
                }
                let mut inner = inner.into_iter().zip(contexts);
                for slot in results.iter_mut().filter(|s| s.is_none()) {
                    *slot = inner.next().map(|(r, (id, range))| {
                        r.map_err(self.ctx.err("write_events", Some(&id), Some(range)))
                    });
                }
            }
            let results: Vec<Result<()>> =
                results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
            let failed = results.iter().filter(|r| r.is_err()).count();
            tracing::debug!(failed, "write_events done");
            let (mut events, mut bytes) = (0, 0);
            for (result, (n, b)) in results.iter().zip(sizes) {
                match result {
                    Ok(()) => (events, bytes) = (events + n, bytes + b),
                    Err(e) => metrics::record_error(self.ctx.backend, "write_events", e.kind()),
                }
            }
            metrics::record_written(self.ctx.backend, events, bytes);
            Ok(results)
        }
        .instrument(span);
        self.ctx.run("write_events", Access::Write, call).await
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        let span = tracing::info_span!(
            "persistence.replay",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str(),
            from,
            to,
            max
        );
        let call = async move {
            let from = from.max(1);
            let err = self.ctx.err("replay", Some(persistence_id.as_str()), None);
            if from > to || max == 0 {
                let highest = self
                    .inner
                    .highest_sequence_nr(persistence_id)
                    .await
                    .map_err(&err)?;
                let events: EventStream = Box::pin(stream::empty());
                return Ok(Replay {
                    highest_sequence_nr: highest,
                    events,
                });
            }
            let replay = self
                .inner
                .replay(persistence_id, from, to, max)
                .await
                .map_err(&err)?;
            tracing::debug!(highest = replay.highest_sequence_nr, "replay started");
            let err = self.ctx.err_owned("replay", persistence_id.as_str());
            // The call is counted by `run`; its events as they pass (errors given the
            // context in the same layer).
            let events: EventStream = metrics::observe_stream_mapped(
                self.ctx.backend,
                "replay",
                false,
                replay.events,
                err,
            );
            Ok(Replay {
                highest_sequence_nr: replay.highest_sequence_nr,
                events,
            })
        }
        .instrument(span);
        self.ctx.run("replay", Access::Read, call).await
    }

    async fn highest_sequence_nr(&self, persistence_id: &PersistenceId) -> Result<SequenceNr> {
        let span = tracing::info_span!(
            "persistence.highest_sequence_nr",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str()
        );
        let call = self
            .inner
            .highest_sequence_nr(persistence_id)
            .instrument(span);
        let call = async move {
            call.await.map_err(self.ctx.err(
                "highest_sequence_nr",
                Some(persistence_id.as_str()),
                None,
            ))
        };
        self.ctx
            .run("highest_sequence_nr", Access::Read, call)
            .await
    }

    async fn delete_events_to(&self, persistence_id: &PersistenceId, to: SequenceNr) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_events_to",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str(),
            to
        );
        let err = self
            .ctx
            .err("delete_events_to", Some(persistence_id.as_str()), None);
        let call = async move {
            if !self.ctx.caps.delete_events {
                return Err(err(self
                    .ctx
                    .unsupported("delete_events_to", "deleting events")));
            }
            if to == 0 {
                return Ok(());
            }
            self.inner
                .delete_events_to(persistence_id, to)
                .await
                .map_err(&err)
        }
        .instrument(span);
        self.ctx.run("delete_events_to", Access::Write, call).await
    }
}

struct CheckedSnapshotStore {
    inner: Arc<dyn SnapshotStore>,
    ctx: Ctx,
}

#[async_trait]
impl SnapshotStore for CheckedSnapshotStore {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.save_snapshot",
            backend = self.ctx.backend,
            persistence_id = metadata.persistence_id.as_str(),
            sequence_nr = metadata.sequence_nr,
            bytes = snapshot.bytes.len()
        );
        let seq = metadata.sequence_nr;
        // The backend takes `metadata`; its errors still name the id.
        let id = metadata.persistence_id.clone();
        let err = self
            .ctx
            .err("save_snapshot", Some(id.as_str()), Some((seq, seq)));
        let call = async move {
            let caps = &self.ctx.caps;
            if !caps.snapshots {
                return Err(err(self.ctx.unsupported("save_snapshot", "snapshots")));
            }
            if metadata.metadata.is_some() && !caps.snapshot_metadata {
                return Err(err(self
                    .ctx
                    .unsupported("save_snapshot", "snapshot metadata")));
            }
            if let Some(max) = caps.max_snapshot_size {
                let size = snapshot.stored_size();
                if size > max {
                    return Err(err(Error::new(
                        ErrorKind::Rejected,
                        format!(
                            "snapshot is {size} bytes; this backend stores at most {max} bytes"
                        ),
                    )));
                }
            }
            self.inner
                .save_snapshot(metadata, snapshot)
                .await
                .map_err(&err)
        }
        .instrument(span);
        self.ctx.run("save_snapshot", Access::Write, call).await
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        let span = tracing::info_span!(
            "persistence.load_snapshot",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str()
        );
        let err = self
            .ctx
            .err("load_snapshot", Some(persistence_id.as_str()), None);
        let call = async move {
            if !self.ctx.caps.snapshots {
                return Err(err(self.ctx.unsupported("load_snapshot", "snapshots")));
            }
            if criteria.is_empty() {
                return Ok(None);
            }
            let loaded = self
                .inner
                .load_snapshot(persistence_id, criteria)
                .await
                .map_err(&err)?;
            tracing::debug!(
                found = loaded.as_ref().map(|s| s.metadata.sequence_nr),
                "load_snapshot done"
            );
            Ok(loaded)
        }
        .instrument(span);
        self.ctx.run("load_snapshot", Access::Read, call).await
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_snapshot",
            backend = self.ctx.backend,
            persistence_id = metadata.persistence_id.as_str(),
            sequence_nr = metadata.sequence_nr
        );
        let seq = metadata.sequence_nr;
        let err = self.ctx.err(
            "delete_snapshot",
            Some(metadata.persistence_id.as_str()),
            Some((seq, seq)),
        );
        let call = async move {
            if !self.ctx.caps.snapshots {
                return Err(err(self.ctx.unsupported("delete_snapshot", "snapshots")));
            }
            self.inner.delete_snapshot(metadata).await.map_err(&err)
        }
        .instrument(span);
        self.ctx.run("delete_snapshot", Access::Write, call).await
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_snapshots",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str()
        );
        let err = self
            .ctx
            .err("delete_snapshots", Some(persistence_id.as_str()), None);
        let call = async move {
            if !self.ctx.caps.snapshots {
                return Err(err(self.ctx.unsupported("delete_snapshots", "snapshots")));
            }
            if criteria.is_empty() {
                return Ok(());
            }
            self.inner
                .delete_snapshots(persistence_id, criteria)
                .await
                .map_err(&err)
        }
        .instrument(span);
        self.ctx.run("delete_snapshots", Access::Write, call).await
    }
}

struct CheckedReadJournal {
    inner: Arc<dyn ReadJournal>,
    ctx: Ctx,
}

fn failing<T: Send + 'static>(error: Error) -> BoxedStream<T> {
    Box::pin(stream::once(async move { Err(error) }))
}

/// The three kinds of query, for the capability check.
#[derive(Clone, Copy)]
enum QueryKind {
    PersistenceIds,
    EventsById,
    EventsByTag,
}

impl QueryKind {
    /// The Pekko name of the query in `mode`, as errors and spans name it.
    fn operation(self, mode: QueryMode) -> &'static str {
        match (self, mode) {
            (QueryKind::PersistenceIds, QueryMode::Current) => "current_persistence_ids",
            (QueryKind::PersistenceIds, QueryMode::Live) => "persistence_ids",
            (QueryKind::EventsById, QueryMode::Current) => "current_events_by_persistence_id",
            (QueryKind::EventsById, QueryMode::Live) => "events_by_persistence_id",
            (QueryKind::EventsByTag, QueryMode::Current) => "current_events_by_tag",
            (QueryKind::EventsByTag, QueryMode::Live) => "events_by_tag",
        }
    }
}

pub(crate) type BoxedStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>>;

impl CheckedReadJournal {
    /// Runs `query` if the backend supports `kind` (and live queries when live), adding
    /// the call's context to every error it yields; else a stream of one `Unsupported`
    /// error.
    fn guard<T: metrics::Item + Send + 'static>(
        &self,
        kind: QueryKind,
        mode: QueryMode,
        persistence_id: Option<&str>,
        query: impl FnOnce(&dyn ReadJournal) -> BoxedStream<T>,
    ) -> BoxedStream<T> {
        let caps = &self.ctx.caps;
        let operation = kind.operation(mode);
        let (supported, what) = match kind {
            QueryKind::PersistenceIds => (caps.query_persistence_ids, "persistence id queries"),
            QueryKind::EventsById => (
                caps.query_events_by_persistence_id,
                "events-by-persistence-id queries",
            ),
            QueryKind::EventsByTag => (
                caps.query_events_by_tag && caps.tags,
                "events-by-tag queries",
            ),
        };
        let ctx = self.ctx.clone();
        let id = persistence_id.map(str::to_owned);
        let err = move |e: Error| e.with_context(ctx.backend, operation, id.as_deref(), None);
        let stream = if !supported {
            failing(err(self.ctx.unsupported(operation, what)))
        } else if mode.is_live() && !caps.live_queries {
            failing(err(self.ctx.unsupported(operation, "live queries")))
        } else {
            tracing::info!(target: "persistence", backend = ctx.backend, operation, "query started");
            Box::pin(query(self.inner.as_ref()).map(move |r| r.map_err(&err)))
        };
        self.ctx.stream(operation, mode, stream)
    }
}

impl ReadJournal for CheckedReadJournal {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        self.guard(QueryKind::PersistenceIds, mode, None, |r| {
            r.query_persistence_ids(mode)
        })
    }

    fn query_events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        let from = from.max(1);
        let name = id.as_str().to_owned();
        self.guard(QueryKind::EventsById, mode, Some(&name), |r| {
            if from > to {
                Box::pin(stream::empty())
            } else {
                r.query_events_by_persistence_id(id, from, to, mode)
            }
        })
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        self.guard(QueryKind::EventsByTag, mode, None, |r| {
            r.query_events_by_tag(tag, offset, mode)
        })
    }
}

struct CheckedOffsetStore {
    inner: Arc<dyn OffsetStore>,
    ctx: Ctx,
}

impl CheckedOffsetStore {
    fn check(&self, operation: &'static str, transaction: bool) -> Result<()> {
        if !self.ctx.caps.projection_offsets {
            return Err(self.ctx.unsupported(operation, "projection offsets"));
        }
        if transaction && !self.ctx.caps.exactly_once_projections {
            return Err(self.ctx.unsupported(
                operation,
                "writing a projection's effects and its offset in one transaction (exactly-once delivery)",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl OffsetStore for CheckedOffsetStore {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        let span = tracing::info_span!("persistence.read_offset", backend = self.ctx.backend, projection = %id);
        let call = async move {
            self.check("read_offset", false)?;
            self.inner
                .read_offset(id)
                .await
                .map_err(self.ctx.err("read_offset", None, None))
        }
        .instrument(span);
        self.ctx.run("read_offset", Access::Read, call).await
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        let span = tracing::info_span!("persistence.commit_offset", backend = self.ctx.backend, projection = %id, expected, offset = %offset);
        let call = async move {
            self.check("commit_offset", false)?;
            self.inner
                .commit_offset(id, expected, offset)
                .await
                .map_err(self.ctx.err("commit_offset", None, None))
        }
        .instrument(span);
        self.ctx.run("commit_offset", Access::Write, call).await
    }

    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        let span = tracing::info_span!("persistence.set_offset", backend = self.ctx.backend, projection = %id, offset = %offset);
        let call = async move {
            self.check("set_offset", false)?;
            self.inner
                .set_offset(id, offset)
                .await
                .map_err(self.ctx.err("set_offset", None, None))
        }
        .instrument(span);
        self.ctx.run("set_offset", Access::Write, call).await
    }

    async fn clear_offset(&self, id: &ProjectionId) -> Result<u64> {
        let span = tracing::info_span!("persistence.clear_offset", backend = self.ctx.backend, projection = %id);
        let call = async move {
            self.check("clear_offset", false)?;
            self.inner
                .clear_offset(id)
                .await
                .map_err(self.ctx.err("clear_offset", None, None))
        }
        .instrument(span);
        self.ctx.run("clear_offset", Access::Write, call).await
    }

    fn supports_transactions(&self) -> bool {
        self.ctx.caps.projection_offsets && self.ctx.caps.exactly_once_projections
    }

    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        let call = async move {
            self.check("begin_transaction", true)?;
            self.inner.begin_transaction().await.map_err(self.ctx.err(
                "begin_transaction",
                None,
                None,
            ))
        };
        self.ctx.run("begin_transaction", Access::Write, call).await
    }

    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let span = tracing::info_span!("persistence.commit_transaction", backend = self.ctx.backend, projection = %id, expected, offset = %offset);
        let call = async move {
            self.check("commit_transaction", true)?;
            if transaction.backend() != self.ctx.backend {
                return Err(Error::invalid_input(format!(
                    "projection {id}: this transaction was opened by the {} backend, and this offset store is {}'s",
                    transaction.backend(),
                    self.ctx.backend
                ))
                .with_operation("commit_transaction")
                .with_backend(self.ctx.backend));
            }
            self.inner
                .commit_transaction(transaction, id, expected, offset)
                .await
                .map_err(self.ctx.err("commit_transaction", None, None))
        }
        .instrument(span);
        self.ctx
            .run("commit_transaction", Access::Write, call)
            .await
    }
}

struct CheckedMaintenance {
    inner: Arc<dyn JournalMaintenance>,
    ctx: Ctx,
}

impl CheckedMaintenance {
    fn check(&self, operation: &'static str) -> Result<()> {
        if !self.ctx.caps.maintenance {
            return Err(self
                .ctx
                .unsupported(operation, "journal maintenance (rebuild, purge)"));
        }
        Ok(())
    }
}

#[async_trait]
impl JournalMaintenance for CheckedMaintenance {
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        let stream = if let Err(e) = self.check("scan_persistence_ids") {
            failing(e)
        } else {
            let err = self.ctx.err("scan_persistence_ids", None, None);
            Box::pin(
                self.inner
                    .scan_persistence_ids()
                    .map(move |r| r.map_err(&err)),
            )
        };
        self.ctx
            .stream("scan_persistence_ids", QueryMode::Current, stream)
    }

    async fn rebuild_persistence_id(&self, id: &PersistenceId) -> Result<RebuildReport> {
        let span = tracing::info_span!("persistence.rebuild_persistence_id", backend = self.ctx.backend, persistence_id = %id);
        let call = async move {
            self.check("rebuild_persistence_id")?;
            self.inner
                .rebuild_persistence_id(id)
                .await
                .map_err(
                    self.ctx
                        .err("rebuild_persistence_id", Some(id.as_str()), None),
                )
        }
        .instrument(span);
        self.ctx
            .run("rebuild_persistence_id", Access::Write, call)
            .await
    }

    async fn truncate_indexes(&self) -> Result<()> {
        let span = tracing::info_span!("persistence.truncate_indexes", backend = self.ctx.backend);
        let call = async move {
            self.check("truncate_indexes")?;
            self.inner.truncate_indexes().await.map_err(self.ctx.err(
                "truncate_indexes",
                None,
                None,
            ))
        }
        .instrument(span);
        self.ctx.run("truncate_indexes", Access::Write, call).await
    }

    async fn purge_persistence_id(&self, id: &PersistenceId) -> Result<PurgeReport> {
        let span = tracing::info_span!("persistence.purge_persistence_id", backend = self.ctx.backend, persistence_id = %id);
        let call = async move {
            self.check("purge_persistence_id")?;
            self.inner
                .purge_persistence_id(id)
                .await
                .map_err(
                    self.ctx
                        .err("purge_persistence_id", Some(id.as_str()), None),
                )
        }
        .instrument(span);
        self.ctx
            .run("purge_persistence_id", Access::Write, call)
            .await
    }
}

struct CheckedDurableStateStore {
    inner: Arc<dyn DurableStateStore>,
    ctx: Ctx,
}

impl CheckedDurableStateStore {
    fn check(&self, operation: &'static str) -> Result<()> {
        if !self.ctx.caps.durable_state {
            return Err(self.ctx.unsupported(operation, "durable state"));
        }
        Ok(())
    }
}

fn check_revision(revision: Revision) -> Result<()> {
    if revision == 0 {
        return Err(Error::invalid_input(
            "revision 0 is never written: the first upsert of an id is revision 1",
        ));
    }
    Ok(())
}

#[async_trait]
impl DurableStateStore for CheckedDurableStateStore {
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>> {
        let span = tracing::info_span!(
            "persistence.get_state",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str()
        );
        let err = self
            .ctx
            .err("get_state", Some(persistence_id.as_str()), None);
        let call = async move {
            self.check("get_state").map_err(&err)?;
            self.inner.get(persistence_id).await.map_err(&err)
        }
        .instrument(span);
        self.ctx.run("get_state", Access::Read, call).await
    }

    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.upsert_state",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str(),
            revision,
            bytes = payload.bytes.len()
        );
        let err = self.ctx.err(
            "upsert_state",
            Some(persistence_id.as_str()),
            Some((revision, revision)),
        );
        let call = async move {
            self.check("upsert_state").map_err(&err)?;
            check_revision(revision).map_err(&err)?;
            if payload.bytes.is_empty() {
                return Err(err(Error::invalid_input(
                    "a durable state's payload must not be empty (delete the state instead)",
                )));
            }
            if let Some(tag) = tag.as_deref().filter(|t| t.is_empty()) {
                return Err(err(Error::invalid_input(format!(
                    "a durable state's tag must not be empty (got {tag:?}); give None for no tag"
                ))));
            }
            if let Some(max) = self.ctx.caps.max_state_size {
                let size = payload.stored_size();
                if size > max {
                    return Err(err(Error::new(
                        ErrorKind::Rejected,
                        format!(
                            "the state of {persistence_id} is {size} bytes; this backend stores at most {max} bytes per state"
                        ),
                    )));
                }
            }
            self.inner
                .upsert(persistence_id, revision, payload, tag)
                .await
                .map_err(&err)
        }
        .instrument(span);
        self.ctx.run("upsert_state", Access::Write, call).await
    }

    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()> {
        let span = tracing::info_span!(
            "persistence.delete_state",
            backend = self.ctx.backend,
            persistence_id = persistence_id.as_str(),
            revision
        );
        let err = self.ctx.err(
            "delete_state",
            Some(persistence_id.as_str()),
            Some((revision, revision)),
        );
        let call = async move {
            self.check("delete_state").map_err(&err)?;
            check_revision(revision).map_err(&err)?;
            self.inner
                .delete(persistence_id, revision)
                .await
                .map_err(&err)
        }
        .instrument(span);
        self.ctx.run("delete_state", Access::Write, call).await
    }

    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream {
        let operation = if mode.is_live() {
            "changes"
        } else {
            "current_changes"
        };
        let changes = self.checked_changes(operation, tag, offset, mode);
        self.ctx.stream(operation, mode, changes)
    }
}

impl CheckedDurableStateStore {
    /// [`DurableStateStore::query_changes`] checked, before it is measured.
    fn checked_changes(
        &self,
        operation: &'static str,
        tag: String,
        offset: Offset,
        mode: QueryMode,
    ) -> ChangeStream {
        let ctx = self.ctx.clone();
        let err = move |e: Error| e.with_context(ctx.backend, operation, None, None);
        let caps = &self.ctx.caps;
        if !caps.durable_state {
            return failing(err(self.ctx.unsupported(operation, "durable state")));
        }
        if !caps.durable_state_changes {
            return failing(err(self
                .ctx
                .unsupported(operation, "durable state change queries")));
        }
        if mode.is_live() && !caps.live_queries {
            return failing(err(self.ctx.unsupported(operation, "live queries")));
        }
        if tag.is_empty() {
            return failing(err(Error::invalid_input(
                "a change query needs a tag (got an empty one)",
            )));
        }
        tracing::info!(target: "persistence", backend = ctx.backend, operation, "query started");
        Box::pin(
            self.inner
                .query_changes(tag, offset, mode)
                .map(move |r| r.map_err(&err)),
        )
    }
}
