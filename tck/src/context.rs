//! What a case works with: the stores under test, its namespace, and small helpers.

use persistence_api::ReadJournalExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use futures::{Stream, StreamExt};
use persistence_api::{
    AtomicWrite, Capabilities, ErrorKind, EventEnvelope, JournalExt, Offset, Payload,
    PersistenceId, PersistentEvent, Result, SequenceNr, Stores,
};

use crate::{Corruption, Finish};

/// The context one case runs in.
pub struct Ctx {
    /// The factory that built [`Ctx::stores`], for [`Ctx::reopen`].
    factory: Arc<dyn crate::StoreFactory>,
    /// The stores under test, in a namespace of their own.
    pub stores: Stores,
    /// The namespace; every id and tag the case makes starts with it.
    pub namespace: String,
    /// What the backend declared.
    pub caps: Capabilities,
}

/// How long a current query may take before the case fails.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a live query may take to deliver events that were stored before it started
/// (catching up is a read, not a wait for new writes).
pub const CATCH_UP: Duration = Duration::from_secs(10);

/// The slowest live delivery seen in this process, in microseconds after the write was
/// acknowledged (reported in the run's summary, beside the declared delay).
static LIVE_WORST_MICROS: AtomicU64 = AtomicU64::new(0);
/// How many live deliveries were timed in this process.
static LIVE_TIMED: AtomicU64 = AtomicU64::new(0);

/// The slowest live delivery timed so far and how many were timed: `(worst, count)`.
pub fn live_delivery_stats() -> (Duration, u64) {
    (
        Duration::from_micros(LIVE_WORST_MICROS.load(Ordering::Relaxed)),
        LIVE_TIMED.load(Ordering::Relaxed),
    )
}

impl Ctx {
    /// A context over `stores`, built by `factory` in `namespace`.
    pub fn new(factory: Arc<dyn crate::StoreFactory>, stores: Stores, namespace: String) -> Self {
        let caps = stores.capabilities();
        Ctx {
            factory,
            stores,
            namespace,
            caps,
        }
    }

    /// New stores over the same namespace, as a process restart would open them: nothing
    /// cached by [`Ctx::stores`] is shared with them.
    pub async fn reopen(&self) -> Stores {
        self.factory
            .create(&self.namespace)
            .await
            .unwrap_or_else(|e| panic!("reopening namespace {} failed: {e}", self.namespace))
    }

    /// The stores' page size ([`crate::StoreFactory::page_size`], else
    /// [`crate::DEFAULT_PAGE_SIZE`]), at least 1.
    pub fn page_size(&self) -> usize {
        self.factory
            .page_size()
            .unwrap_or(crate::DEFAULT_PAGE_SIZE)
            .max(1) as usize
    }

    /// Damages the stored event `(id, seq)` through the factory's
    /// [`crate::StoreFactory::corrupt_event`] and returns the column it damaged; when the
    /// factory does not support `what`, the [`Finish::Skipped`] that names the hook and its
    /// reason (the case returns it). Any other failure of the hook fails the case.
    pub async fn corrupt_event(
        &self,
        id: &PersistenceId,
        seq: SequenceNr,
        what: Corruption,
    ) -> std::result::Result<String, Finish> {
        let result = self
            .factory
            .corrupt_event(&self.namespace, id, seq, what)
            .await;
        hook_result(result, "corrupt_event", what, id, seq)
    }

    /// Empties the secondary structures through the factory's
    /// [`crate::StoreFactory::drop_indexes`]; when the factory does not implement it, the
    /// [`Finish::Skipped`] that names the hook (the case returns it). Any other failure of
    /// the hook fails the case.
    pub async fn drop_indexes(&self) -> std::result::Result<(), Finish> {
        match self.factory.drop_indexes(&self.namespace).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == persistence_api::ErrorKind::Unsupported => Err(Finish::Skipped(
                format!("the factory hook drop_indexes ({})", e.message()),
            )),
            Err(e) => panic!("the factory's drop_indexes failed: {e:#}"),
        }
    }

    /// [`Ctx::corrupt_event`] for the stored snapshot `(id, seq)`.
    pub async fn corrupt_snapshot(
        &self,
        id: &PersistenceId,
        seq: SequenceNr,
        what: Corruption,
    ) -> std::result::Result<String, Finish> {
        let result = self
            .factory
            .corrupt_snapshot(&self.namespace, id, seq, what)
            .await;
        hook_result(result, "corrupt_snapshot", what, id, seq)
    }

    /// The backend's declared [`Capabilities::live_query_max_delay`]; a backend that
    /// declares live queries must declare it, since every live case is checked against it.
    /// Plus the factory's [`crate::StoreFactory::live_delay_allowance`] (zero unless the
    /// run injects faults).
    pub fn live_delay(&self) -> Duration {
        self.declared_live_delay() + self.factory.live_delay_allowance()
    }

    fn declared_live_delay(&self) -> Duration {
        self.caps.live_query_max_delay.unwrap_or_else(|| {
            panic!(
                "the backend declares live_queries but no live_query_max_delay; \
                 the kit checks every live delivery against the declared delay"
            )
        })
    }

    /// How long a live query is watched for something it must not deliver: twice the
    /// declared delay (at least 250 ms), so anything the backend would deliver by its own
    /// contract has had the time to arrive.
    pub fn quiet_window(&self) -> Duration {
        (self.declared_live_delay() * 2).max(Duration::from_millis(250))
    }

    /// The next item of a live stream for an event whose write was acknowledged at
    /// `acked`; fails unless it arrives within [`Ctx::live_delay`] of that moment. `what`
    /// names the event for the failure message.
    pub async fn next_live<T, S>(&self, stream: &mut S, acked: Instant, what: &str) -> T
    where
        S: Stream<Item = Result<T>> + Unpin,
    {
        let delay = self.live_delay();
        let item = match tokio::time::timeout_at((acked + delay).into(), stream.next()).await {
            Ok(Some(item)) => item.unwrap_or_else(|e| panic!("a live stream item ({what}): {e}")),
            Ok(None) => panic!("the live stream completed before {what}, but live streams never complete"),
            Err(_) => panic!(
                "{what} was not delivered within {delay:?} after its write was acknowledged (the declared live_query_max_delay, plus the run's allowance for injected faults)"
            ),
        };
        let took = acked.elapsed();
        LIVE_WORST_MICROS.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        LIVE_TIMED.fetch_add(1, Ordering::Relaxed);
        item
    }

    /// Asserts that a live envelope stream delivers nothing (and does not complete) for
    /// [`Ctx::quiet_window`]; `what` says why nothing is expected.
    pub async fn assert_quiet<S>(&self, stream: &mut S, what: &str)
    where
        S: Stream<Item = Result<EventEnvelope>> + Unpin,
    {
        let window = self.quiet_window();
        assert_quiet(stream, window.as_millis() as u64, what).await
    }

    /// A persistence id unique to this case: `<namespace>-<name>`.
    pub fn pid(&self, name: &str) -> PersistenceId {
        PersistenceId::new(format!("{}-{name}", self.namespace)).expect("a valid test id")
    }

    /// A tag unique to this case.
    pub fn tag(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace)
    }

    /// The payload the kit writes for `(id, seq)`: recognisable on replay.
    pub fn payload(id: &PersistenceId, seq: SequenceNr) -> Payload {
        Payload::new("tck", "tck.Event/v1", format!("{id}#{seq}").into_bytes())
    }

    /// An event of `id` at `seq` by writer `"w1"`.
    pub fn event(&self, id: &PersistenceId, seq: SequenceNr) -> PersistentEvent {
        PersistentEvent::new(id.clone(), seq, Self::payload(id, seq)).with_writer_id("w1")
    }

    /// One atomic write of `from..=to`.
    pub fn atomic(&self, id: &PersistenceId, from: SequenceNr, to: SequenceNr) -> AtomicWrite {
        AtomicWrite::new((from..=to).map(|s| self.event(id, s)).collect())
            .expect("a valid atomic write")
    }

    /// Writes `from..=to` and expects success: one atomic write, or as few as the backend's
    /// declared atomic-write maximum allows.
    pub async fn write(&self, id: &PersistenceId, from: SequenceNr, to: SequenceNr) {
        self.write_chunked(id, from, to, u64::MAX).await
    }

    /// Writes `from..=to` in atomic writes as large as the backend allows (at most `chunk`).
    pub async fn write_chunked(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        chunk: u64,
    ) {
        let max = self
            .caps
            .atomic_write_max_events
            .map(|m| m as u64)
            .unwrap_or(u64::MAX);
        let chunk = chunk.min(max).max(1);
        let mut s = from;
        while s <= to {
            let end = s.saturating_add(chunk - 1).min(to);
            let w = self.atomic(id, s, end);
            self.stores
                .journal
                .write(w)
                .await
                .unwrap_or_else(|e| panic!("writing {id} {s}..={end} failed: {e}"));
            s = end + 1;
        }
    }

    /// The reference setup: events 1..5 written as {1}, {2}, {3}, {4, 5} (five single
    /// writes where the backend declares no multi-event atomicity).
    pub async fn write_1_to_5(&self, id: &PersistenceId) {
        let writes = if self.caps.atomic_write_max_events.is_some_and(|m| m < 2) {
            (1..=5).map(|s| self.atomic(id, s, s)).collect::<Vec<_>>()
        } else {
            vec![
                self.atomic(id, 1, 1),
                self.atomic(id, 2, 2),
                self.atomic(id, 3, 3),
                self.atomic(id, 4, 5),
            ]
        };
        let results = self
            .stores
            .journal
            .write_events(writes)
            .await
            .expect("write_events");
        for r in results {
            r.expect("each atomic write of the setup is stored");
        }
    }

    /// Replays and returns the sequence numbers and the reported highest.
    pub async fn replay(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> (Vec<SequenceNr>, SequenceNr) {
        let (events, highest) = self.replay_events(id, from, to, max).await;
        (events.iter().map(|e| e.sequence_nr).collect(), highest)
    }

    /// Replays and returns the events and the reported highest.
    pub async fn replay_events(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> (Vec<PersistentEvent>, SequenceNr) {
        let replay = self
            .stores
            .journal
            .replay(id, from, to, max)
            .await
            .expect("replay");
        let events = collect(replay.events).await.expect("replay stream");
        (events, replay.highest_sequence_nr)
    }

    /// The highest sequence number.
    pub async fn highest(&self, id: &PersistenceId) -> SequenceNr {
        self.stores
            .journal
            .highest_sequence_nr(id)
            .await
            .expect("highest_sequence_nr")
    }
}

impl Ctx {
    /// Writes the single event `(id, seq)` carrying `tags`, and expects success.
    pub async fn write_tagged(&self, id: &PersistenceId, seq: SequenceNr, tags: &[&str]) {
        write_tagged(&self.stores, self.event(id, seq), tags).await
    }

    /// A current tag query from `offset`, collected.
    pub async fn by_tag(&self, tag: &str, offset: Offset) -> Vec<EventEnvelope> {
        by_tag(&self.stores, tag, offset).await
    }

    /// A current events-by-id query, collected.
    pub async fn by_id(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
    ) -> Vec<EventEnvelope> {
        by_id(&self.stores, id, from, to).await
    }

    /// `current_persistence_ids`, checked to hold each id once.
    pub async fn ids(&self) -> BTreeSet<String> {
        ids(&self.stores).await
    }
}

/// The column a corruption hook damaged, or the skip its `Unsupported` answer means.
fn hook_result(
    result: Result<String>,
    hook: &str,
    what: Corruption,
    id: &PersistenceId,
    seq: SequenceNr,
) -> std::result::Result<String, Finish> {
    match result {
        Ok(column) => Ok(column),
        Err(e) if e.kind() == ErrorKind::Unsupported => Err(Finish::Skipped(format!(
            "StoreFactory::{hook}(Corruption::{what:?}): {}",
            e.message()
        ))),
        Err(e) => panic!("StoreFactory::{hook}(Corruption::{what:?}) of {id} {seq} failed: {e}"),
    }
}

/// Writes `event` alone with `tags`, through `stores`, and expects success.
pub async fn write_tagged(stores: &Stores, event: PersistentEvent, tags: &[&str]) {
    let (id, seq) = (event.persistence_id.clone(), event.sequence_nr);
    let e = event.with_tags(tags.iter().map(|t| t.to_string()));
    stores
        .journal
        .write(AtomicWrite::single(e).expect("a valid write"))
        .await
        .unwrap_or_else(|e| panic!("write {id} {seq}: {e}"));
}

/// A current tag query of `stores` from `offset`, collected.
pub async fn by_tag(stores: &Stores, tag: &str, offset: Offset) -> Vec<EventEnvelope> {
    collect(
        stores
            .read_journal
            .current_events_by_tag(tag.to_string(), offset),
    )
    .await
    .expect("tag query")
}

/// A current events-by-id query of `stores`, collected.
pub async fn by_id(
    stores: &Stores,
    id: &PersistenceId,
    from: SequenceNr,
    to: SequenceNr,
) -> Vec<EventEnvelope> {
    collect(
        stores
            .read_journal
            .current_events_by_persistence_id(id.clone(), from, to),
    )
    .await
    .expect("events-by-id query")
}

/// `current_persistence_ids` of `stores`, checked to hold each id once.
pub async fn ids(stores: &Stores) -> BTreeSet<String> {
    let ids = collect(stores.read_journal.current_persistence_ids())
        .await
        .expect("current_persistence_ids");
    let set: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(set.len(), ids.len(), "each id once: {ids:?}");
    set
}

/// The replayed events of `id` through `stores`, and the highest the replay reports.
pub async fn replay_of(stores: &Stores, id: &PersistenceId) -> (Vec<PersistentEvent>, SequenceNr) {
    let replay = stores
        .journal
        .replay(id, 1, u64::MAX, u64::MAX)
        .await
        .expect("replay");
    let events = collect(replay.events).await.expect("replay stream");
    (events, replay.highest_sequence_nr)
}

/// Asserts that each id's events come in increasing sequence order.
pub fn assert_per_id_order(envs: &[EventEnvelope]) {
    let mut last = std::collections::HashMap::<&str, SequenceNr>::new();
    for e in envs {
        let prev = last
            .insert(e.persistence_id().as_str(), e.sequence_nr())
            .unwrap_or(0);
        assert!(
            e.sequence_nr() > prev,
            "per-id order broken at {} {} (after {prev})",
            e.persistence_id(),
            e.sequence_nr()
        );
    }
}

/// Collects a completing stream, failing after [`QUERY_TIMEOUT`].
pub async fn collect<T, S>(stream: S) -> Result<Vec<T>>
where
    S: Stream<Item = Result<T>>,
{
    let all = tokio::time::timeout(QUERY_TIMEOUT, stream.collect::<Vec<_>>())
        .await
        .expect("a current query completes");
    all.into_iter().collect()
}

/// The next item of a live stream, or `None` if none arrives within `within`.
pub async fn next_within<T, S>(stream: &mut S, within: Duration) -> Option<T>
where
    S: Stream<Item = Result<T>> + Unpin,
{
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(item)) => Some(item.expect("a live stream item")),
        Ok(None) => panic!("the live stream completed, but live streams never complete"),
        Err(_) => None,
    }
}

/// `(persistence id, sequence number)` of envelopes, for comparisons.
pub fn keys(envelopes: &[EventEnvelope]) -> Vec<(String, SequenceNr)> {
    envelopes
        .iter()
        .map(|e| (e.persistence_id().to_string(), e.sequence_nr()))
        .collect()
}

/// Asserts that a live envelope stream delivers nothing (and does not complete) for
/// `millis` milliseconds; `what` says why nothing is expected.
pub async fn assert_quiet<S>(stream: &mut S, millis: u64, what: &str)
where
    S: Stream<Item = Result<EventEnvelope>> + Unpin,
{
    let got = next_within(stream, Duration::from_millis(millis)).await;
    assert_eq!(
        got.map(|e| (e.persistence_id().to_string(), e.sequence_nr())),
        None,
        "nothing more is delivered: {what}"
    );
}
