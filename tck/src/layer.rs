//! The checking layer's own contract ([`persistence_api::Stores`]), kept apart from the
//! cases that test a backend.
//!
//! A [`Recorder`] sits between the layer and a backend's stores: it declares the
//! capabilities a case chooses, passes every call on, and writes down each call that
//! reached it. The `layer::*` cases ([`layer_cases`]) put `Stores::new` over a recorder and
//! check what the layer answers by itself, and what the backend is never asked. They run
//! in the kit's own tests (`tck/tests/layer.rs`, over the in-memory backend), not in a
//! backend's suite: the layer is the same code for every backend.
//!
//! The recorder also lets the kit run its backend cases against a backend that declares
//! limits it does not have (`tck/tests/declared_limits.rs`), so the cases at and above a
//! declared maximum run somewhere on every `cargo test`.

use persistence_api::{QueryMode, ReadJournalExt};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, Capabilities, EnvelopeStream, Error, ErrorKind, Journal, JournalExt, Offset,
    Payload, PersistenceId, PersistenceIdStream, PersistentEvent, ReadJournal, Replay, Result,
    SelectedSnapshot, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, SnapshotStore,
    Stores,
};

use crate::cases::{cases, Case};
use crate::context::{collect, Ctx};

/// How a [`Recorder`] misbehaves, for the cases about what the layer does with a
/// backend's wrong answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Misbehave {
    /// Passes every answer on.
    #[default]
    Never,
    /// Answers `write_events` with one result fewer than it was given writes.
    DropAResult,
    /// Fails every write, replay, snapshot load and query with a bare error that names
    /// no operation, id, sequence number or backend, as a backend is allowed to.
    FailBare,
}

fn bare() -> Error {
    Error::new(ErrorKind::Unavailable, "the backend failed")
}

/// Declares chosen capabilities in front of a backend's stores, passes every call on, and
/// records each call that reached it (`"replay(p, 1, 5, 10)"` and the like).
pub struct Recorder {
    inner: Stores,
    misbehave: Misbehave,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    /// `inner` behind a recorder declaring `caps`, behind the checking layer: the stores to
    /// call, and the recorder to ask what reached it.
    pub fn wrap(inner: Stores, caps: Capabilities) -> (Stores, Arc<Recorder>) {
        Self::wrap_misbehaving(inner, caps, Misbehave::Never)
    }

    /// [`Recorder::wrap`] with a recorder that misbehaves as `misbehave` says.
    pub fn wrap_misbehaving(
        inner: Stores,
        caps: Capabilities,
        misbehave: Misbehave,
    ) -> (Stores, Arc<Recorder>) {
        // Offsets, durable state and maintenance are not recorded: they pass through to
        // `inner`'s.
        let (offsets, durable_state, maintenance) = (
            inner.offsets.clone(),
            inner.durable_state.clone(),
            inner.maintenance.clone(),
        );
        let r = Arc::new(Recorder {
            inner,
            misbehave,
            calls: Mutex::new(Vec::new()),
        });
        (
            Stores::new("recorder", caps, r.clone(), r.clone(), r.clone())
                .with_offset_store(offsets)
                .with_durable_state_store(durable_state)
                .with_maintenance(maintenance),
            r,
        )
    }

    /// The calls that reached the recorder so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

fn ranges(writes: &[AtomicWrite]) -> String {
    let r: Vec<String> = writes
        .iter()
        .map(|w| format!("{}..={}", w.lowest_sequence_nr(), w.highest_sequence_nr()))
        .collect();
    r.join(", ")
}

#[async_trait]
impl Journal for Recorder {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        self.record(format!("write_events[{}]", ranges(&writes)));
        if self.misbehave == Misbehave::FailBare {
            return Ok(writes.iter().map(|_| Err(bare())).collect());
        }
        let mut results = self.inner.journal.write_events(writes).await?;
        if self.misbehave == Misbehave::DropAResult {
            results.pop();
        }
        Ok(results)
    }

    async fn replay(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        self.record(format!("replay({id}, {from}, {to}, {max})"));
        if self.misbehave == Misbehave::FailBare {
            return Err(bare());
        }
        self.inner.journal.replay(id, from, to, max).await
    }

    async fn highest_sequence_nr(&self, id: &PersistenceId) -> Result<SequenceNr> {
        self.record(format!("highest_sequence_nr({id})"));
        self.inner.journal.highest_sequence_nr(id).await
    }

    async fn delete_events_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.record(format!("delete_events_to({id}, {to})"));
        self.inner.journal.delete_events_to(id, to).await
    }
}

#[async_trait]
impl SnapshotStore for Recorder {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        self.record(format!(
            "save_snapshot({}, {})",
            metadata.persistence_id, metadata.sequence_nr
        ));
        self.inner.snapshots.save_snapshot(metadata, snapshot).await
    }

    async fn load_snapshot(
        &self,
        id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        self.record(format!("load_snapshot({id})"));
        if self.misbehave == Misbehave::FailBare {
            return Err(bare());
        }
        self.inner.snapshots.load_snapshot(id, criteria).await
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        self.record(format!(
            "delete_snapshot({}, {})",
            metadata.persistence_id, metadata.sequence_nr
        ));
        self.inner.snapshots.delete_snapshot(metadata).await
    }

    async fn delete_snapshots(
        &self,
        id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        self.record(format!("delete_snapshots({id})"));
        self.inner.snapshots.delete_snapshots(id, criteria).await
    }
}

impl ReadJournal for Recorder {
    fn query_persistence_ids(&self, mode: QueryMode) -> PersistenceIdStream {
        self.record(
            match mode {
                QueryMode::Current => "current_persistence_ids",
                QueryMode::Live => "persistence_ids",
            }
            .into(),
        );
        self.inner.read_journal.query_persistence_ids(mode)
    }

    fn query_events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        mode: QueryMode,
    ) -> EnvelopeStream {
        let prefix = if mode.is_live() { "" } else { "current_" };
        self.record(format!(
            "{prefix}events_by_persistence_id({id}, {from}, {to})"
        ));
        if self.misbehave == Misbehave::FailBare {
            return Box::pin(futures::stream::once(async { Err(bare()) }));
        }
        self.inner
            .read_journal
            .query_events_by_persistence_id(id, from, to, mode)
    }

    fn query_events_by_tag(&self, tag: String, offset: Offset, mode: QueryMode) -> EnvelopeStream {
        let prefix = if mode.is_live() { "" } else { "current_" };
        self.record(format!("{prefix}events_by_tag({tag})"));
        if self.misbehave == Misbehave::FailBare {
            return Box::pin(futures::stream::once(async { Err(bare()) }));
        }
        self.inner
            .read_journal
            .query_events_by_tag(tag, offset, mode)
    }
}

/// The checking layer's cases, `layer::*`: each puts the layer over a [`Recorder`] in
/// front of the stores it is given and checks what the layer answers itself.
pub fn layer_cases() -> Vec<Case> {
    cases![
        "layer::unsupported_calls_never_reach_the_backend" => [] unsupported_calls;
        "layer::an_atomic_write_over_the_declared_maximum_is_rejected_in_its_place" => [] over_max_events;
        "layer::an_event_over_the_declared_size_rejects_only_its_atomic_write" => [] over_event_size;
        "layer::a_snapshot_over_the_declared_size_is_rejected" => [] over_snapshot_size;
        "layer::an_empty_tag_is_invalid_input" => [] empty_tag;
        "layer::empty_ranges_and_criteria_never_reach_the_backend" => [] empty_requests;
        "layer::a_backend_answering_too_few_results_is_unexpected" => [] too_few_results;
        "layer::a_backend_error_leaves_with_the_call_context" => [] context_added;
    ]
}

/// Everything off: what a backend that declares nothing may be asked.
fn nothing() -> Capabilities {
    Capabilities::default()
}

fn expect_err<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, names: &str, what: &str) -> Error {
    let e = match r {
        Ok(v) => panic!("{what}: expected {kind:?} naming {names:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), kind, "{what}: {e}");
    assert!(
        e.to_string().contains(names),
        "{what}: the error names {names:?}: {e}"
    );
    e
}

async fn first_error<T>(
    mut s: impl futures::Stream<Item = Result<T>> + Unpin,
    what: &str,
) -> Error {
    let e = match s.next().await {
        Some(Err(e)) => e,
        Some(Ok(_)) => panic!("{what}: expected an Unsupported error, got an item"),
        None => panic!("{what}: expected an Unsupported error, the stream was empty"),
    };
    assert!(
        s.next().await.is_none(),
        "{what}: the stream ends after the error"
    );
    e
}

fn assert_never_asked(rec: &Recorder, what: &str) {
    assert_eq!(
        rec.calls(),
        Vec::<String>::new(),
        "the backend was never asked: {what}"
    );
}

/// With nothing declared, every call the capabilities rule out fails with `Unsupported`,
/// the error names what is missing and the operation, and the backend hears nothing.
async fn unsupported_calls(ctx: Ctx) {
    let (stores, rec) = Recorder::wrap(ctx.stores.clone(), nothing());
    let id = ctx.pid("u");
    let ev = PersistentEvent::new(id.clone(), 1, Ctx::payload(&id, 1));
    let tagged = AtomicWrite::single(ev.clone().with_tags(["t".to_string()])).unwrap();
    let e = expect_err(
        stores.journal.write(tagged).await,
        ErrorKind::Unsupported,
        "tags",
        "a tagged write",
    );
    assert_eq!(e.operation(), Some("write_events"), "{e}");
    assert_eq!(e.persistence_id(), Some(id.as_str()), "{e}");
    let with_meta = AtomicWrite::single(ev.clone().with_metadata(Ctx::payload(&id, 9))).unwrap();
    expect_err(
        stores.journal.write(with_meta).await,
        ErrorKind::Unsupported,
        "event metadata",
        "a write with metadata",
    );
    expect_err(
        stores.journal.delete_events_to(&id, 1).await,
        ErrorKind::Unsupported,
        "deleting events",
        "a delete",
    );
    let meta = SnapshotMetadata::new(id.clone(), 1);
    expect_err(
        stores
            .snapshots
            .save_snapshot(meta.clone(), Ctx::payload(&id, 1))
            .await,
        ErrorKind::Unsupported,
        "snapshots",
        "save_snapshot",
    );
    expect_err(
        stores
            .snapshots
            .load_snapshot(&id, SnapshotSelectionCriteria::latest())
            .await,
        ErrorKind::Unsupported,
        "snapshots",
        "load_snapshot",
    );
    expect_err(
        stores.snapshots.delete_snapshot(&meta).await,
        ErrorKind::Unsupported,
        "snapshots",
        "delete_snapshot",
    );
    expect_err(
        stores
            .snapshots
            .delete_snapshots(&id, SnapshotSelectionCriteria::latest())
            .await,
        ErrorKind::Unsupported,
        "snapshots",
        "delete_snapshots",
    );
    let rj = &stores.read_journal;
    for (s, names, what) in [
        (
            first_error(rj.current_persistence_ids(), "current_persistence_ids").await,
            "persistence id queries",
            "current_persistence_ids",
        ),
        (
            first_error(rj.persistence_ids(), "persistence_ids").await,
            "persistence id queries",
            "persistence_ids",
        ),
        (
            first_error(
                rj.current_events_by_persistence_id(id.clone(), 1, 5),
                "by id",
            )
            .await,
            "events-by-persistence-id",
            "current_events_by_persistence_id",
        ),
        (
            first_error(rj.events_by_persistence_id(id.clone(), 1, 5), "live by id").await,
            "events-by-persistence-id",
            "events_by_persistence_id",
        ),
        (
            first_error(
                rj.current_events_by_tag("t".into(), Offset::NoOffset),
                "by tag",
            )
            .await,
            "events-by-tag",
            "current_events_by_tag",
        ),
        (
            first_error(
                rj.events_by_tag("t".into(), Offset::NoOffset),
                "live by tag",
            )
            .await,
            "events-by-tag",
            "events_by_tag",
        ),
    ] {
        assert_eq!(s.kind(), ErrorKind::Unsupported, "{what}: {s}");
        assert!(s.to_string().contains(names), "{what} names {names:?}: {s}");
        assert_eq!(s.operation(), Some(what), "{what}: {s}");
    }
    // Tags without tag queries: writing tags is fine, querying them is not.
    let (stores, rec2) = Recorder::wrap(
        ctx.stores.clone(),
        Capabilities {
            tags: true,
            query_events_by_persistence_id: true,
            query_persistence_ids: true,
            ..nothing()
        },
    );
    let e = first_error(
        stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset),
        "by tag",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let e = first_error(
        stores
            .read_journal
            .events_by_persistence_id(id.clone(), 1, 5),
        "live by id",
    )
    .await;
    assert!(
        e.to_string().contains("live queries"),
        "live forms need live_queries: {e}"
    );
    let e = first_error(stores.read_journal.persistence_ids(), "live ids").await;
    assert!(
        e.to_string().contains("live queries"),
        "live forms need live_queries: {e}"
    );
    assert_never_asked(&rec, "with nothing declared");
    assert_never_asked(&rec2, "tag and live queries not declared");
    // What is declared does reach it.
    stores
        .journal
        .write(AtomicWrite::single(ev.with_tags(["t".to_string()])).unwrap())
        .await
        .expect("a tagged write where tags are declared");
    assert_eq!(rec2.calls(), vec![format!("write_events[1..=1]")]);
}

/// With a maximum of 3 events per atomic write, a call of `{1..3}, {4..7}, {4..6}` sends
/// `{1..3}, {4..6}` and answers `Ok, Rejected, Ok` in the writes' places.
async fn over_max_events(ctx: Ctx) {
    let caps = Capabilities {
        atomic_write_max_events: Some(3),
        conflict_detection: true,
        ..nothing()
    };
    let (stores, rec) = Recorder::wrap(ctx.stores.clone(), caps);
    let id = ctx.pid("m");
    let results = stores
        .journal
        .write_events(vec![
            ctx.atomic(&id, 1, 3),
            ctx.atomic(&id, 4, 7),
            ctx.atomic(&id, 4, 6),
        ])
        .await
        .expect("the call");
    assert_eq!(results.len(), 3, "one result per atomic write");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let e = results[1]
        .as_ref()
        .expect_err("4 events over a maximum of 3");
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(
        e.to_string().contains("limit of 3 events"),
        "names the limit: {e}"
    );
    assert_eq!(e.sequence_range(), Some((4, 7)), "{e}");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(rec.calls(), vec!["write_events[1..=3, 4..=6]".to_string()]);
    let (events, highest) = crate::context::replay_of(&ctx.stores, &id).await;
    assert_eq!(highest, 6);
    assert_eq!(
        events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    // A call made only of refused writes never reaches the backend.
    rec.clear();
    let results = stores
        .journal
        .write_events(vec![ctx.atomic(&id, 7, 10)])
        .await
        .expect("the call");
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::Rejected)
    );
    assert_never_asked(&rec, "a call of one oversized write");
}

/// With a declared event size, an atomic write holding one event a byte over it is
/// rejected whole (naming the event), and one at exactly the size is sent and stored.
async fn over_event_size(ctx: Ctx) {
    let id = ctx.pid("s");
    let sized = |seq: u64, size: usize| {
        let mut e = ctx.event(&id, seq);
        let base = e.stored_size();
        e.payload.bytes = vec![7u8; e.payload.bytes.len() + size - base].into();
        assert_eq!(e.stored_size(), size);
        e
    };
    let limit = 4096;
    let caps = Capabilities {
        max_event_size: Some(limit),
        ..nothing()
    };
    let (stores, rec) = Recorder::wrap(ctx.stores.clone(), caps);
    let over = AtomicWrite::new(vec![sized(1, 100), sized(2, limit + 1), sized(3, 100)]).unwrap();
    let at = AtomicWrite::new(vec![sized(1, limit)]).unwrap();
    let results = stores
        .journal
        .write_events(vec![over, at])
        .await
        .expect("the call");
    let e = results[0]
        .as_ref()
        .expect_err("an event a byte over the limit");
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(
        e.to_string().contains(&format!("at most {limit} bytes")),
        "names the limit: {e}"
    );
    assert_eq!(e.sequence_range(), Some((2, 2)), "names the event: {e}");
    assert!(
        results[1].is_ok(),
        "an event at exactly the limit: {:?}",
        results[1]
    );
    assert_eq!(rec.calls(), vec!["write_events[1..=1]".to_string()]);
    let (events, _) = crate::context::replay_of(&ctx.stores, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stored_size(), limit);
}

/// With a declared snapshot size, a snapshot a byte over it is rejected unsent (naming the
/// size), and one at exactly the size is saved.
async fn over_snapshot_size(ctx: Ctx) {
    let id = ctx.pid("s");
    let limit = 4096;
    let (stores, rec) = Recorder::wrap(
        ctx.stores.clone(),
        Capabilities {
            snapshots: true,
            max_snapshot_size: Some(limit),
            ..nothing()
        },
    );
    let sized = |size: usize| {
        let mut p = Payload::new("tck", "tck.Snapshot/v1", Vec::new());
        let base = p.stored_size();
        p.bytes = vec![1u8; size - base].into();
        assert_eq!(p.stored_size(), size);
        p
    };
    let e = expect_err(
        stores
            .snapshots
            .save_snapshot(SnapshotMetadata::new(id.clone(), 2), sized(limit + 1))
            .await,
        ErrorKind::Rejected,
        &format!("at most {limit} bytes"),
        "a snapshot a byte over the limit",
    );
    assert_eq!(e.sequence_range(), Some((2, 2)), "{e}");
    assert_never_asked(&rec, "an oversized snapshot");
    stores
        .snapshots
        .save_snapshot(SnapshotMetadata::new(id.clone(), 1), sized(limit))
        .await
        .expect("a snapshot at exactly the limit");
    let loaded = stores
        .snapshots
        .load_snapshot(&id, SnapshotSelectionCriteria::latest())
        .await
        .expect("load")
        .expect("the snapshot at the limit");
    assert_eq!(
        loaded.metadata.sequence_nr, 1,
        "the oversized one was not stored"
    );
}

/// An empty tag is `InvalidInput` for its atomic write and never sent.
async fn empty_tag(ctx: Ctx) {
    let (stores, rec) = Recorder::wrap(
        ctx.stores.clone(),
        Capabilities {
            tags: true,
            ..nothing()
        },
    );
    let id = ctx.pid("t");
    let w = AtomicWrite::single(
        ctx.event(&id, 1)
            .with_tags(["ok".to_string(), String::new()]),
    )
    .unwrap();
    expect_err(
        stores.journal.write(w).await,
        ErrorKind::InvalidInput,
        "tags must not be empty",
        "an empty tag",
    );
    assert_never_asked(&rec, "an empty tag");
}

/// Empty ranges, `max` 0, a delete to 0 and criteria that select nothing are answered by
/// the layer: a replay asks only for the highest, the rest ask nothing; from 0 reaches the
/// backend as 1.
async fn empty_requests(ctx: Ctx) {
    let caps = Capabilities {
        delete_events: true,
        snapshots: true,
        query_events_by_persistence_id: true,
        live_queries: true,
        live_query_max_delay: Some(std::time::Duration::from_secs(1)),
        ..nothing()
    };
    let (stores, rec) = Recorder::wrap(ctx.stores.clone(), caps);
    let id = ctx.pid("e");
    ctx.write(&id, 1, 3).await;
    for (from, to, max) in [(5, 4, u64::MAX), (1, 3, 0), (0, 0, 10)] {
        let replay = stores
            .journal
            .replay(&id, from, to, max)
            .await
            .expect("replay");
        assert_eq!(
            replay.highest_sequence_nr, 3,
            "replay({from}, {to}, {max}) reports the highest"
        );
        let events = collect(replay.events).await.expect("events");
        assert!(
            events.is_empty(),
            "replay({from}, {to}, {max}) is empty: {events:?}"
        );
    }
    assert_eq!(
        rec.calls(),
        vec![format!("highest_sequence_nr({id})"); 3],
        "only the highest is asked"
    );
    rec.clear();
    stores
        .journal
        .delete_events_to(&id, 0)
        .await
        .expect("a delete to 0");
    let none = SnapshotSelectionCriteria::none();
    let crossed = SnapshotSelectionCriteria::latest()
        .with_min_sequence_nr(5)
        .with_max_sequence_nr(4);
    for c in [none, crossed] {
        assert!(stores
            .snapshots
            .load_snapshot(&id, c)
            .await
            .expect("load")
            .is_none());
        stores
            .snapshots
            .delete_snapshots(&id, c)
            .await
            .expect("delete_snapshots");
    }
    for mut s in [
        stores
            .read_journal
            .current_events_by_persistence_id(id.clone(), 4, 3),
        stores
            .read_journal
            .events_by_persistence_id(id.clone(), 4, 3),
    ] {
        assert!(
            s.next().await.is_none(),
            "from above to: an empty stream that completes"
        );
    }
    assert_never_asked(&rec, "empty ranges, a delete to 0, empty criteria");
    let got = collect(
        stores
            .read_journal
            .current_events_by_persistence_id(id.clone(), 0, 2),
    )
    .await
    .expect("by id from 0");
    assert_eq!(
        got.iter().map(|e| e.sequence_nr()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let replay = stores
        .journal
        .replay(&id, 0, 2, 10)
        .await
        .expect("replay from 0");
    assert_eq!(collect(replay.events).await.expect("events").len(), 2);
    assert_eq!(
        rec.calls(),
        vec![
            format!("current_events_by_persistence_id({id}, 1, 2)"),
            format!("replay({id}, 1, 2, 10)"),
        ],
        "from 0 reaches the backend as 1"
    );
}

/// A backend that answers fewer results than it was given writes makes the whole call an
/// `Unexpected` error naming both counts, instead of results in the wrong places.
async fn too_few_results(ctx: Ctx) {
    let (stores, rec) = Recorder::wrap_misbehaving(
        ctx.stores.clone(),
        Capabilities {
            conflict_detection: true,
            ..nothing()
        },
        Misbehave::DropAResult,
    );
    let id = ctx.pid("r");
    let e = expect_err(
        stores
            .journal
            .write_events(vec![ctx.atomic(&id, 1, 1), ctx.atomic(&id, 2, 2)])
            .await,
        ErrorKind::Unexpected,
        "answered 1 results for 2 atomic writes",
        "one result too few",
    );
    assert_eq!(e.operation(), Some("write_events"), "{e}");
    assert_eq!(rec.calls(), vec!["write_events[1..=1, 2..=2]".to_string()]);
}

/// A backend's bare errors leave the layer naming the operation, the backend, and the
/// call's persistence id and sequence numbers.
async fn context_added(ctx: Ctx) {
    let (stores, _rec) = Recorder::wrap_misbehaving(
        ctx.stores.clone(),
        Capabilities {
            conflict_detection: true,
            snapshots: true,
            query_events_by_persistence_id: true,
            query_events_by_tag: true,
            tags: true,
            ..nothing()
        },
        Misbehave::FailBare,
    );
    let id = ctx.pid("ctx");
    let check = |e: &Error, operation: &str, range: Option<(u64, u64)>, what: &str| {
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{what}: {e}");
        assert_eq!(e.operation(), Some(operation), "{what}: {e}");
        assert_eq!(e.backend(), Some("recorder"), "{what}: {e}");
        assert_eq!(e.persistence_id(), Some(id.as_str()), "{what}: {e}");
        assert_eq!(e.sequence_range(), range, "{what}: {e}");
        let text = e.to_string();
        for part in [operation, "recorder", id.as_str()] {
            assert!(
                text.contains(part),
                "{what}: the message names {part:?}: {text}"
            );
        }
    };
    let results = stores
        .journal
        .write_events(vec![ctx.atomic(&id, 1, 2), ctx.atomic(&id, 3, 3)])
        .await
        .expect("per-write results");
    assert_eq!(results.len(), 2);
    let e = results[0].as_ref().expect_err("the first write failed");
    check(e, "write_events", Some((1, 2)), "the first write");
    let e = results[1].as_ref().expect_err("the second write failed");
    check(e, "write_events", Some((3, 3)), "the second write");
    let e = stores
        .journal
        .replay(&id, 1, 10, 10)
        .await
        .expect_err("replay failed");
    check(&e, "replay", None, "replay");
    let e = stores
        .snapshots
        .load_snapshot(&id, persistence_api::SnapshotSelectionCriteria::latest())
        .await
        .expect_err("load failed");
    check(&e, "load_snapshot", None, "load_snapshot");
    let got = collect(
        stores
            .read_journal
            .current_events_by_persistence_id(id.clone(), 1, 10),
    )
    .await
    .expect_err("the query failed");
    check(
        &got,
        "current_events_by_persistence_id",
        None,
        "events by id",
    );
    let got = collect(
        stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset),
    )
    .await
    .expect_err("the query failed");
    assert_eq!(got.operation(), Some("current_events_by_tag"), "{got}");
    assert_eq!(got.backend(), Some("recorder"), "{got}");
}
