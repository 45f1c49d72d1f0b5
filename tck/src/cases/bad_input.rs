//! Input that passes the checking layer and reaches the backend: the same number twice in
//! one call, writes out of order, a write that leaves a gap, unusual tags, empty payloads,
//! extreme timestamps, and offsets that went through serde or text.
//!
//! And the catalogue of bad input (`bad_input::catalogue_of_*`): one table per store of
//! every bad input the API documents an error for, each entry checked the same way (an
//! `Err`, never a panic; the documented kind; a message naming what was wrong; nothing
//! written), plus writes the API documents no error for that a backend may still refuse
//! (numbers past `i64::MAX`, tags longer than a key): stored or refused, never a panic, and
//! the id still reads. See the comment above `run_catalogue`.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use persistence_api::{
    AtomicWrite, Error, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent,
    ProjectionId, SnapshotMetadata, SnapshotSelectionCriteria as Criteria, Timestamp,
    MAX_PERSISTENCE_ID_BYTES, MAX_PROJECTION_ID_PART_BYTES,
};

use super::{cases, Case, Finish};
use crate::context::{keys, Ctx};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "bad_input::same_sequence_nr_twice_in_one_call" => [ConflictDetection] same_twice;
        "bad_input::writes_of_one_id_out_of_order_in_one_call" => [ConflictDetection] out_of_order;
        "bad_input::write_leaving_a_gap_is_stored_and_the_gap_stays_taken" => [ConflictDetection] gap;
        "bad_input::unusual_tags_match_exactly" => [QueryEventsByTag] unusual_tags;
        "bad_input::empty_payload_round_trips" => [] empty_payload;
        "bad_input::empty_snapshot_round_trips" => [Snapshots] empty_snapshot;
        "bad_input::timestamps_0_and_max_round_trip" => [] extreme_timestamps;
        "bad_input::snapshot_timestamps_0_and_max" => [Snapshots] extreme_snapshot_timestamps;
        "bad_input::offsets_round_trip_through_serde_and_text" => [QueryEventsByTag] offsets_round_trip;
        "bad_input::control_characters_in_ids_are_refused" => [] control_ids;
        "bad_input::catalogue_of_constructors" => [] catalogue_of_constructors;
        "bad_input::catalogue_of_journal_writes" => [] catalogue_of_journal_writes;
        "bad_input::catalogue_of_writes_stored_or_refused" => [] catalogue_of_writes_stored_or_refused;
        "bad_input::catalogue_of_snapshots" => [Snapshots] catalogue_of_snapshots;
        "bad_input::catalogue_of_tag_query_offsets" => [QueryEventsByTag] catalogue_of_tag_query_offsets;
        "bad_input::catalogue_of_durable_state" => [DurableState] catalogue_of_durable_state;
        "bad_input::catalogue_of_projection_offsets" => [ProjectionOffsets] catalogue_of_projection_offsets;
    ]
}

/// The result kinds (`None` for stored) of one `write_events` call holding `writes`.
async fn call(ctx: &Ctx, writes: Vec<AtomicWrite>) -> Vec<Option<ErrorKind>> {
    ctx.stores
        .journal
        .write_events(writes)
        .await
        .expect("write_events")
        .into_iter()
        .map(|r| r.err().map(|e| e.kind()))
        .collect()
}

/// An event of `id` at `seq` with a payload naming `who`.
fn marked(ctx: &Ctx, id: &PersistenceId, seq: u64, who: &str) -> AtomicWrite {
    let mut e = ctx.event(id, seq);
    e.payload = Payload::raw(format!("{who}-{seq}").into_bytes());
    AtomicWrite::single(e).unwrap()
}

/// `[{6} by a, {6} by b]` after 1..5: the first is stored, the second is a `Conflict`.
async fn same_twice(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let results = call(
        &ctx,
        vec![marked(&ctx, &id, 6, "a"), marked(&ctx, &id, 6, "b")],
    )
    .await;
    assert_eq!(
        results,
        vec![None, Some(ErrorKind::Conflict)],
        "applied in order: the second {{6}} finds it taken"
    );
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, 6);
    assert_eq!(events.len(), 6);
    assert_eq!(events[5].payload.bytes.as_ref(), b"a-6");
}

/// `[{7}, {6}]` after 1..5: writes of one id in one call are applied in the given order, so
/// {7} is stored (leaving 6 as a gap) and {6}, now below the highest, is a `Conflict`.
async fn out_of_order(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let results = call(
        &ctx,
        vec![marked(&ctx, &id, 7, "a"), marked(&ctx, &id, 6, "a")],
    )
    .await;
    assert_eq!(results, vec![None, Some(ErrorKind::Conflict)]);
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![1, 2, 3, 4, 5, 7], 7)
    );
    ctx.write(&id, 8, 8).await;
    assert_eq!(ctx.highest(&id).await, 8);
}

/// The contract (the `Journal::write_events` docs): a write may start above the highest
/// plus one, as Pekko allows; it is stored, the highest becomes its last number, and the
/// numbers it skipped are taken: a later write at or below the highest is a `Conflict`.
async fn gap(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let multi = ctx.caps.atomic_write_max_events.is_none_or(|m| m >= 2);
    let top = if multi {
        ctx.write(&id, 8, 9).await;
        9
    } else {
        ctx.write(&id, 8, 8).await;
        8
    };
    assert_eq!(ctx.highest(&id).await, top);
    let mut want: Vec<u64> = vec![1, 2, 3, 4, 5, 8];
    if multi {
        want.push(9);
    }
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (want.clone(), top));
    for seq in [6, 7] {
        let err = ctx
            .stores
            .journal
            .write(marked(&ctx, &id, seq, "late"))
            .await
            .expect_err("a number in the gap is taken");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{seq}: {err}");
    }
    if multi {
        let err = ctx
            .stores
            .journal
            .write(ctx.atomic(&id, 7, 10))
            .await
            .expect_err("a write over the gap and the highest");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    }
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (want, top),
        "nothing stored in the gap"
    );
    ctx.write(&id, top + 1, top + 1).await;
    if ctx.caps.query_events_by_persistence_id {
        let seqs: Vec<u64> = ctx
            .by_id(&id, 1, MAX)
            .await
            .iter()
            .map(|e| e.sequence_nr())
            .collect();
        assert_eq!(seqs.last(), Some(&(top + 1)));
        assert!(!seqs.contains(&6) && !seqs.contains(&7));
    }
}

/// Tags with `|`, `#`, `\u{1f}`, spaces, unicode, case differences, and 255 bytes: each
/// query finds exactly the events carrying that tag.
async fn unusual_tags(ctx: Ctx) {
    let base = ctx.tag("");
    let long = format!("{base}{}", "ü".repeat((255 - base.len()) / 2));
    let long = format!("{long}{}", "x".repeat(255 - long.len()));
    assert_eq!(long.len(), 255);
    let tags: Vec<String> = vec![
        format!("{base}a|b"),
        format!("{base}a"),
        format!("{base}b"),
        format!("{base}a#b"),
        format!("{base}a\u{1f}b"),
        format!("{base}a b"),
        format!("{base}A|B"),
        format!("{base}名前-🙂"),
        format!("{base}a|"),
        long,
    ];
    let id = ctx.pid("tagged");
    let mut seq = 0;
    let mut want: Vec<(String, Vec<u64>)> = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        // Each tag on its own event, and every other one also beside the next tag.
        seq += 1;
        ctx.write_tagged(&id, seq, &[tag]).await;
        let mut own = vec![seq];
        if i % 2 == 0 {
            if let Some(next) = tags.get(i + 1) {
                seq += 1;
                ctx.write_tagged(&id, seq, &[tag, next]).await;
                own.push(seq);
            }
        }
        want.push((tag.clone(), own));
    }
    // The event beside the next tag belongs to that tag too.
    let shared: Vec<(usize, u64)> = want
        .iter()
        .enumerate()
        .filter(|(_, (_, own))| own.len() == 2)
        .map(|(i, (_, own))| (i + 1, own[1]))
        .collect();
    for (i, s) in shared {
        want[i].1.push(s);
        want[i].1.sort();
    }
    for (tag, seqs) in &want {
        let got: Vec<u64> = ctx
            .by_tag(tag, Offset::NoOffset)
            .await
            .iter()
            .map(|e| e.sequence_nr())
            .collect();
        assert_eq!(&got, seqs, "tag {tag:?}");
    }
    let (events, _) = ctx.replay_events(&id, 1, MAX, MAX).await;
    let stored: BTreeSet<String> = events.iter().flat_map(|e| e.tags.clone()).collect();
    let written: BTreeSet<String> = tags.iter().cloned().collect();
    assert_eq!(stored, written, "tags round-trip byte for byte");
}

/// An event with an empty payload, serializer id, manifest and writer id.
async fn empty_payload(ctx: Ctx) {
    let id = ctx.pid("empty");
    let e = PersistentEvent::new(id.clone(), 1, Payload::raw(Vec::new()))
        .with_timestamp(Timestamp::from_millis(1_700_000_000_000));
    ctx.stores
        .journal
        .write(AtomicWrite::single(e.clone()).unwrap())
        .await
        .expect("an empty payload is stored");
    let mut with_meta = e.clone();
    with_meta.sequence_nr = 2;
    if ctx.caps.event_metadata {
        with_meta.metadata = Some(Payload::raw(Vec::new()));
    }
    ctx.stores
        .journal
        .write(AtomicWrite::single(with_meta.clone()).unwrap())
        .await
        .expect("write");
    let (events, _) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(
        events,
        vec![e.clone(), with_meta.clone()],
        "empty is not absent"
    );
    if ctx.caps.query_events_by_persistence_id {
        let envs = ctx.by_id(&id, 1, MAX).await;
        let got: Vec<PersistentEvent> = envs.into_iter().map(|e| e.event).collect();
        assert_eq!(got, vec![e, with_meta]);
    }
}

async fn empty_snapshot(ctx: Ctx) {
    let id = ctx.pid("empty");
    let mut meta =
        SnapshotMetadata::new(id.clone(), 1).with_timestamp(Timestamp::from_millis(1_000));
    if ctx.caps.snapshot_metadata {
        meta.metadata = Some(Payload::raw(Vec::new()));
    }
    ctx.stores
        .snapshots
        .save_snapshot(meta.clone(), Payload::raw(Vec::new()))
        .await
        .expect("an empty snapshot is stored");
    let s = ctx
        .stores
        .snapshots
        .load_snapshot(&id, Criteria::latest())
        .await
        .expect("load")
        .expect("the empty snapshot loads");
    assert_eq!(s.metadata, meta);
    assert_eq!(s.snapshot, Payload::raw(Vec::new()));
}

/// Events stamped at 0 (the epoch) and at `i64::MAX` milliseconds replay and query with
/// exactly those timestamps, and tag queries find them like any other.
async fn extreme_timestamps(ctx: Ctx) {
    let id = ctx.pid("time");
    let tag = ctx.tag("time");
    let stamps = [Timestamp::MIN, Timestamp::MAX, Timestamp::from_millis(1)];
    let mut written = Vec::new();
    for (i, ts) in stamps.iter().enumerate() {
        let mut e = ctx.event(&id, i as u64 + 1).with_timestamp(*ts);
        if ctx.caps.tags {
            e = e.with_tags([tag.clone()]);
        }
        ctx.stores
            .journal
            .write(AtomicWrite::single(e.clone()).unwrap())
            .await
            .unwrap_or_else(|err| panic!("an event stamped {ts:?} is stored: {err}"));
        written.push(e);
    }
    let (events, _) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(events, written);
    if ctx.caps.query_events_by_persistence_id {
        let got: Vec<PersistentEvent> = ctx
            .by_id(&id, 1, MAX)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(got, written);
    }
    if ctx.caps.query_events_by_tag && ctx.caps.tags {
        let got: Vec<PersistentEvent> = ctx
            .by_tag(&tag, Offset::NoOffset)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            got, written,
            "a tag query orders by write, not by the stamp"
        );
    }
}

async fn extreme_snapshot_timestamps(ctx: Ctx) {
    let id = ctx.pid("time");
    for (seq, ts) in [(1, Timestamp::MIN), (2, Timestamp::MAX)] {
        let meta = SnapshotMetadata::new(id.clone(), seq).with_timestamp(ts);
        ctx.stores
            .snapshots
            .save_snapshot(meta, Payload::raw(vec![seq as u8]))
            .await
            .unwrap_or_else(|e| panic!("a snapshot stamped {ts:?} is stored: {e}"));
    }
    let load = |c: Criteria| {
        let snapshots = ctx.stores.snapshots.clone();
        let id = id.clone();
        async move {
            snapshots
                .load_snapshot(&id, c)
                .await
                .expect("load")
                .map(|s| (s.metadata.sequence_nr, s.metadata.timestamp))
        }
    };
    assert_eq!(load(Criteria::latest()).await, Some((2, Timestamp::MAX)));
    assert_eq!(
        load(Criteria::latest().with_max_timestamp(Timestamp::from_millis(i64::MAX - 1))).await,
        Some((1, Timestamp::MIN))
    );
    assert_eq!(
        load(Criteria::latest().with_max_timestamp(Timestamp::MIN)).await,
        Some((1, Timestamp::MIN))
    );
    assert_eq!(
        load(Criteria::latest().with_min_timestamp(Timestamp::from_millis(1))).await,
        Some((2, Timestamp::MAX))
    );
}

/// Every offset a tag query delivers goes through JSON (serde) and through its text form
/// and comes back equal, and resuming from the copy yields what resuming from the
/// original does.
async fn offsets_round_trip(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let tag = ctx.tag("t");
    for seq in 1..=3 {
        ctx.write_tagged(&a, seq, &[&tag]).await;
        ctx.write_tagged(&b, seq, &[&tag]).await;
    }
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(all.len(), 6);
    let mut offsets: Vec<Offset> = vec![Offset::NoOffset];
    offsets.extend(all.iter().map(|e| e.offset.clone()));
    for (i, offset) in offsets.iter().enumerate() {
        let json = serde_json::to_string(offset).expect("an offset serializes");
        let from_json: Offset = serde_json::from_str(&json).expect("and deserializes");
        assert_eq!(&from_json, offset, "through JSON {json}");
        let text = offset.to_string();
        let from_text: Offset = text.parse().expect("an offset's text parses");
        assert_eq!(&from_text, offset, "through text {text:?}");
        let rest = ctx.by_tag(&tag, from_text).await;
        assert_eq!(keys(&rest), keys(&all[i..]), "resumed from {text:?}");
    }
    assert!("sequence:x".parse::<Offset>().is_err());
}

/// Ids are refused with `InvalidInput` before any backend sees them when they hold a
/// control character, `\u{1f}` (the unit separator backends use in keys) among them, or
/// are one byte too long.
async fn control_ids(_ctx: Ctx) {
    for bad in ["a\u{1f}b", "a\u{0}b", "a\u{7f}b", "\u{85}", "a\rb"] {
        let err = PersistenceId::new(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    assert!(PersistenceId::new("x".repeat(MAX_PERSISTENCE_ID_BYTES)).is_ok());
    assert!(PersistenceId::new("x".repeat(MAX_PERSISTENCE_ID_BYTES + 1)).is_err());
    let json = serde_json::to_string("a\u{1f}b").unwrap();
    assert!(
        serde_json::from_str::<PersistenceId>(&json).is_err(),
        "deserializing checks too"
    );
}

// The catalogue of bad input.
//
// One table per store of every bad input the API documents an error for, each entry with
// the kind it must fail with and what its message must name. Every entry runs the same
// way ([`run_catalogue`]): inside the case, so a panic fails the case naming the entry;
// it must answer `Err` of the expected kind, whose text (`Display`) names each expected
// part (the id, the number, the tag, the size and the limit); and afterwards the stores
// read exactly as before (replay and highest of every id the tables use, their latest
// snapshot, durable state and projection offsets; after the table, the tag query, the
// persistence ids and the change query). An entry whose capability or limit the backend
// does not declare is skipped and named in the case's summary line.
//
// Not in the tables, because the API documents them as accepted rather than refused: a
// write that starts above the highest plus one (stored, the gap stays taken:
// `bad_input::write_leaving_a_gap_is_stored_and_the_gap_stays_taken`), the same number
// twice or out of order in one call (`bad_input::same_sequence_nr_twice_in_one_call`,
// `bad_input::writes_of_one_id_out_of_order_in_one_call`), a replay or by-id query with
// `from > to` or `max == 0` (empty), `delete_events_to` 0 or beyond the highest
// (succeeds), snapshot criteria that select nothing (`None`, nothing deleted), and an
// empty payload (stored: `bad_input::empty_payload_round_trips`). Bytes in the store this
// project did not write are the `corruption::*` cases: the factory's hooks damage a
// stored event's or snapshot's payload, tags, metadata or another column on every
// backend, and reading it must fail with `Serialization` or `Corrupt` naming the record.

/// How long one entry may take before it counts as hanging.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a live query may take to answer a bad offset with its first item.
const LIVE_ANSWER: Duration = Duration::from_secs(10);

type Call = Pin<Box<dyn Future<Output = persistence_api::Result<()>> + Send>>;

/// One bad input: the call, the kind it must fail with, and what its message must name.
struct Entry {
    what: String,
    expect: ErrorKind,
    names: Vec<String>,
    /// The error's sequence range must lie within this one (the write's).
    within: Option<(u64, u64)>,
    /// Why the entry does not run on this backend.
    skip: Option<String>,
    /// The API documents no error for it: stored or refused are both right, as long as it
    /// does not panic, the stores still read afterwards, and a refusal changes nothing.
    either: bool,
    call: Call,
}

fn entry<T: Send + 'static>(
    what: impl Into<String>,
    expect: ErrorKind,
    names: &[&str],
    call: impl Future<Output = persistence_api::Result<T>> + Send + 'static,
) -> Entry {
    Entry {
        what: what.into(),
        expect,
        names: names.iter().map(|n| n.to_string()).collect(),
        within: None,
        skip: None,
        either: false,
        call: Box::pin(call.map(|r| r.map(drop))),
    }
}

impl Entry {
    /// The error must name a sequence range within `from..=to`.
    fn within(mut self, from: u64, to: u64) -> Self {
        self.within = Some((from, to));
        self
    }

    /// Runs only when `ok`; else skipped as needing `what`.
    fn needs(mut self, ok: bool, what: &str) -> Self {
        if !ok && self.skip.is_none() {
            self.skip = Some(format!("needs {what}"));
        }
        self
    }

    /// What is wrong with `err` as this entry's answer, if anything.
    fn judge(&self, err: &Error) -> Option<String> {
        let mut wrong = Vec::new();
        if err.kind() != self.expect {
            wrong.push(format!("kind {:?}, expected {:?}", err.kind(), self.expect));
        }
        let text = err.to_string();
        let missing: Vec<&str> = self
            .names
            .iter()
            .map(String::as_str)
            .filter(|n| !text.contains(n))
            .collect();
        if !missing.is_empty() {
            wrong.push(format!("its message does not name {missing:?}"));
        }
        if let Some((from, to)) = self.within {
            match err.sequence_range() {
                Some((f, t)) if from <= f && f <= t && t <= to => {}
                other => wrong.push(format!(
                    "it names the sequence range {other:?}, not one within {from}..={to}"
                )),
            }
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

/// What the tables work on: the stores and a few ids with a known history.
#[derive(Clone)]
struct Bench {
    stores: persistence_api::Stores,
    caps: persistence_api::Capabilities,
    /// Events 1..=3 (tagged `tag` where tags are declared), a snapshot at 2, a durable
    /// state at revision 1 tagged `tag`.
    a: PersistenceId,
    /// Never written in any store.
    b: PersistenceId,
    /// Never written in any store.
    c: PersistenceId,
    tag: String,
    /// Committed once: version 1, offset `Sequence(1)`.
    projection_a: ProjectionId,
    /// Never committed.
    projection_b: ProjectionId,
}

impl Bench {
    /// Writes the known history of [`Bench::a`] and [`Bench::projection_a`] into the
    /// stores the backend declares.
    async fn new(ctx: &Ctx) -> Bench {
        let bench = Bench {
            stores: ctx.stores.clone(),
            caps: ctx.caps,
            a: ctx.pid("a"),
            b: ctx.pid("b"),
            c: ctx.pid("c"),
            tag: ctx.tag("t"),
            projection_a: ProjectionId::new(ctx.tag("projection"), "a").expect("a valid id"),
            projection_b: ProjectionId::new(ctx.tag("projection"), "b").expect("a valid id"),
        };
        let caps = ctx.caps;
        for seq in 1..=3 {
            let mut e = ctx.event(&bench.a, seq);
            if caps.tags {
                e = e.with_tags([bench.tag.clone()]);
            }
            ctx.stores
                .journal
                .write(AtomicWrite::single(e).unwrap())
                .await
                .unwrap_or_else(|e| panic!("writing the bench's event {seq}: {e:#}"));
        }
        if caps.snapshots {
            let meta = SnapshotMetadata::new(bench.a.clone(), 2);
            ctx.stores
                .snapshots
                .save_snapshot(meta, Payload::new("tck", "tck.Snapshot/v1", &b"a@2"[..]))
                .await
                .unwrap_or_else(|e| panic!("saving the bench's snapshot: {e:#}"));
        }
        if caps.durable_state {
            ctx.stores
                .durable_state
                .upsert(
                    &bench.a,
                    1,
                    Payload::new("tck", "tck.State/v1", &b"a-1"[..]),
                    Some(bench.tag.clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("writing the bench's state: {e:#}"));
        }
        if caps.projection_offsets {
            ctx.stores
                .offsets
                .commit_offset(&bench.projection_a, 0, Offset::Sequence(1))
                .await
                .unwrap_or_else(|e| panic!("committing the bench's offset: {e:#}"));
        }
        bench
    }

    /// An event of `id` at `seq`.
    fn event(&self, id: &PersistenceId, seq: u64) -> PersistentEvent {
        PersistentEvent::new(id.clone(), seq, Ctx::payload(id, seq)).with_writer_id("w1")
    }

    /// An event of `id` at `seq` whose `stored_size()` is exactly `size`.
    fn sized_event(&self, id: &PersistenceId, seq: u64, size: usize) -> PersistentEvent {
        let mut e = self.event(id, seq);
        e.payload.bytes = Vec::new().into();
        let overhead = e.stored_size();
        e.payload.bytes = vec![b'x'; size.saturating_sub(overhead)].into();
        assert_eq!(e.stored_size(), size, "an event of {size} bytes");
        e
    }

    /// Writes `events` as one atomic write.
    async fn write(self, events: Vec<PersistentEvent>) -> persistence_api::Result<()> {
        let write = AtomicWrite::new(events).expect("the table's write is well formed");
        self.stores.journal.write(write).await
    }
}

/// A payload's size and hash: enough to see a change without printing megabytes.
#[derive(Debug, PartialEq, Eq)]
struct Digest(usize, u64);

fn digest(p: &Payload) -> Digest {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&p.serializer_id, &p.manifest, p.bytes.as_ref()).hash(&mut h);
    Digest(p.stored_size(), h.finish())
}

type EventRow = (u64, Digest, Vec<String>, Option<Digest>);
type SnapshotRow = (u64, i64, Digest);
type StateRow = (u64, Option<Digest>, Option<String>);

/// What the stores hold for the bench's ids, as every read the backend declares sees it.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    journal: Vec<(String, u64, u64, Vec<EventRow>)>,
    snapshots: Vec<(String, Option<SnapshotRow>)>,
    states: Vec<(String, Option<StateRow>)>,
    offsets: Vec<(String, Option<(Offset, u64)>)>,
}

impl Observed {
    /// What differs from `after`, per id: `id: before -> after`.
    fn changes(&self, after: &Observed) -> Vec<String> {
        fn diff<T: PartialEq + std::fmt::Debug>(
            store: &str,
            before: &[T],
            after: &[T],
            out: &mut Vec<String>,
        ) {
            for (b, a) in before.iter().zip(after) {
                if b != a {
                    out.push(format!("{store} {b:?} -> {a:?}"));
                }
            }
        }
        let mut out = Vec::new();
        diff("journal", &self.journal, &after.journal, &mut out);
        diff("snapshot", &self.snapshots, &after.snapshots, &mut out);
        diff("state", &self.states, &after.states, &mut out);
        diff("offset", &self.offsets, &after.offsets, &mut out);
        out
    }
}

/// [`observe_reads`], a panic of a read answered as an error naming it.
async fn observe(b: &Bench) -> persistence_api::Result<Observed> {
    match AssertUnwindSafe(observe_reads(b)).catch_unwind().await {
        Ok(seen) => seen,
        Err(panic) => Err(Error::new(
            ErrorKind::Unexpected,
            format!("a read panicked: {}", crate::panic_message(&panic)),
        )),
    }
}

async fn observe_reads(b: &Bench) -> persistence_api::Result<Observed> {
    use futures::future::try_join_all;
    type Rows = (
        (String, u64, u64, Vec<EventRow>),
        Option<(String, Option<SnapshotRow>)>,
        Option<(String, Option<StateRow>)>,
    );
    // The reads of each id, and the ids, concurrently: one round trip's latency per entry.
    let of_id = |id: &PersistenceId| {
        let (b, id) = (b.clone(), id.clone());
        async move {
            let highest = b.stores.journal.highest_sequence_nr(&id).await?;
            let replay = b.stores.journal.replay(&id, 1, MAX, MAX).await?;
            let events = crate::context::collect(replay.events).await?;
            let rows = events
                .iter()
                .map(|e| {
                    let meta = e.metadata.as_ref().map(digest);
                    (e.sequence_nr, digest(&e.payload), e.tags.clone(), meta)
                })
                .collect();
            let journal = (id.to_string(), highest, replay.highest_sequence_nr, rows);
            let snapshot = if b.caps.snapshots {
                let s = b
                    .stores
                    .snapshots
                    .load_snapshot(&id, Criteria::latest())
                    .await?;
                let row = s.map(|s| {
                    let m = s.metadata;
                    (m.sequence_nr, m.timestamp.as_millis(), digest(&s.snapshot))
                });
                Some((id.to_string(), row))
            } else {
                None
            };
            let state = if b.caps.durable_state {
                let s = b.stores.durable_state.get(&id).await?;
                let row = s.map(|s| (s.revision, s.payload.as_ref().map(digest), s.tag));
                Some((id.to_string(), row))
            } else {
                None
            };
            persistence_api::Result::<Rows>::Ok((journal, snapshot, state))
        }
    };
    let of_projection = |p: &ProjectionId| {
        let (b, p) = (b.clone(), p.clone());
        async move {
            let o = b.stores.offsets.read_offset(&p).await?;
            persistence_api::Result::Ok((p.to_string(), o.map(|o| (o.offset, o.version))))
        }
    };
    let projections = if b.caps.projection_offsets {
        vec![&b.projection_a, &b.projection_b]
    } else {
        vec![]
    };
    let (ids, offsets) = futures::try_join!(
        try_join_all([&b.a, &b.b, &b.c].map(of_id)),
        try_join_all(projections.into_iter().map(of_projection)),
    )?;
    let mut seen = Observed {
        journal: Vec::new(),
        snapshots: Vec::new(),
        states: Vec::new(),
        offsets,
    };
    for (journal, snapshot, state) in ids {
        seen.journal.push(journal);
        seen.snapshots.extend(snapshot);
        seen.states.extend(state);
    }
    Ok(seen)
}

/// What the queries the backend declares find for the bench, read once after a table.
#[derive(Debug, PartialEq, Eq)]
struct Queried {
    by_tag: Option<Vec<(String, u64)>>,
    ids: Option<BTreeSet<String>>,
    changes: Option<Vec<(String, u64)>>,
}

async fn query(b: &Bench) -> persistence_api::Result<Queried> {
    use persistence_api::{DurableStateStoreExt, ReadJournalExt};
    let caps = &b.caps;
    let by_tag = if caps.query_events_by_tag && caps.tags {
        let stream = b
            .stores
            .read_journal
            .current_events_by_tag(b.tag.clone(), Offset::NoOffset);
        Some(keys(&crate::context::collect(stream).await?))
    } else {
        None
    };
    let ids = if caps.query_persistence_ids {
        let stream = b.stores.read_journal.current_persistence_ids();
        let ids = crate::context::collect(stream).await?;
        Some(ids.into_iter().map(|i| i.into_string()).collect())
    } else {
        None
    };
    let changes = if caps.durable_state && caps.durable_state_changes {
        let stream = b
            .stores
            .durable_state
            .current_changes(b.tag.clone(), Offset::NoOffset);
        let changes = crate::context::collect(stream).await?;
        Some(
            changes
                .into_iter()
                .map(|c| (c.persistence_id.into_string(), c.revision))
                .collect(),
        )
    } else {
        None
    };
    Ok(Queried {
        by_tag,
        ids,
        changes,
    })
}

/// Runs `entries` against the bench: each must fail as its entry says and leave the
/// stores as they were. Fails the case listing every entry that did not; a table none of
/// whose entries applies to the backend is skipped with their reasons.
async fn run_catalogue(b: &Bench, table: &str, entries: Vec<Entry>) -> Finish {
    run_table(b, table, entries, true).await
}

/// [`run_catalogue`]; with `each` false, the stores are read once after the whole table
/// rather than after each entry (for entries that never reach a store).
async fn run_table(b: &Bench, table: &str, entries: Vec<Entry>, each: bool) -> Finish {
    let started = Instant::now();
    let mut before = observe(b)
        .await
        .unwrap_or_else(|e| panic!("reading the bench before the table: {e:#}"));
    let queried = query(b)
        .await
        .unwrap_or_else(|e| panic!("querying the bench before the table: {e:#}"));
    let (mut failures, mut skipped, mut reasons, mut ran) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut outcomes: Vec<String> = Vec::new();
    for mut entry in entries {
        if let Some(why) = &entry.skip {
            skipped.push(format!("{} ({why})", entry.what));
            reasons.push(why.clone());
            continue;
        }
        ran += 1;
        let call = std::mem::replace(&mut entry.call, Box::pin(async { Ok(()) }));
        let what = &entry.what;
        let answer = tokio::time::timeout(ENTRY_TIMEOUT, AssertUnwindSafe(call).catch_unwind());
        let answer = answer.await;
        if entry.either {
            // Stored, or refused changing nothing; either way the stores still read.
            let refused = match &answer {
                Ok(Ok(Ok(()))) => {
                    outcomes.push(format!("{what}: stored"));
                    false
                }
                Ok(Ok(Err(err))) => {
                    outcomes.push(format!("{what}: {:?}", err.kind()));
                    matches!(
                        err.kind(),
                        ErrorKind::Rejected | ErrorKind::InvalidInput | ErrorKind::Unsupported
                    )
                }
                Ok(Err(panic)) => {
                    let panic = crate::panic_message(panic);
                    failures.push(format!("{what}: panicked: {panic}"));
                    false
                }
                Err(_) => {
                    failures.push(format!("{what}: no answer within {ENTRY_TIMEOUT:?}"));
                    false
                }
            };
            match observe(b).await {
                Ok(after) if refused && after != before => {
                    let changed = before.changes(&after).join("; ");
                    failures.push(format!(
                        "{what}: refused, yet the stores changed: {changed}"
                    ));
                    before = after;
                }
                Ok(after) => before = after,
                Err(e) => failures.push(format!("{what}: the stores no longer read: {e:#}")),
            }
            continue;
        }
        match answer {
            Err(_) => failures.push(format!("{what}: no answer within {ENTRY_TIMEOUT:?}")),
            Ok(Err(panic)) => failures.push(format!(
                "{what}: panicked: {}",
                crate::panic_message(&panic)
            )),
            Ok(Ok(Ok(()))) => failures.push(format!(
                "{what}: accepted, where the API documents {:?}",
                entry.expect
            )),
            Ok(Ok(Err(err))) => {
                if let Some(wrong) = entry.judge(&err) {
                    failures.push(format!("{what}: {wrong} (the error: {err:#})"));
                }
            }
        }
        if !each {
            continue;
        }
        match observe(b).await {
            Ok(after) if after == before => {}
            Ok(after) => {
                let changed = before.changes(&after).join("; ");
                failures.push(format!("{what}: the stores changed: {changed}"));
                // The next entry is judged by what it changes itself.
                before = after;
            }
            Err(e) => failures.push(format!("{what}: the stores no longer read: {e:#}")),
        }
    }
    if !each {
        match observe(b).await {
            Ok(after) if after == before => {}
            Ok(after) => failures.push(format!(
                "after the table the stores changed: {}",
                before.changes(&after).join("; ")
            )),
            Err(e) => failures.push(format!("after the table the stores no longer read: {e:#}")),
        }
    }
    match query(b).await {
        // Entries that may be stored change what the queries find.
        Ok(_) if outcomes.iter().any(|o| o.ends_with(": stored")) => {}
        Ok(after) if after == queried => {}
        Ok(after) => failures.push(format!(
            "after the table the queries changed: before {queried:?}, after {after:?}"
        )),
        Err(e) => failures.push(format!("after the table the queries fail: {e:#}")),
    }
    eprintln!(
        "{table}: {ran} bad inputs checked in {:?}, {} not refused as documented; {} skipped{}{}",
        started.elapsed(),
        failures.len(),
        skipped.len(),
        if skipped.is_empty() { "" } else { ": " },
        skipped.join(", ")
    );
    if !outcomes.is_empty() {
        eprintln!("{table}: {}", outcomes.join("; "));
    }
    if !failures.is_empty() {
        panic!(
            "{} of the {ran} bad inputs of {table} were not refused as documented:\n- {}",
            failures.len(),
            failures.join("\n- ")
        );
    }
    if ran == 0 {
        let mut needs: Vec<&str> = reasons
            .iter()
            .map(|r| r.trim_start_matches("needs "))
            .collect();
        needs.sort_unstable();
        needs.dedup();
        return Finish::Skipped(needs.join(" or "));
    }
    Finish::Passed
}

/// Ids, atomic writes, projection ids and offsets' text: refused by their constructors,
/// before any store sees them.
async fn catalogue_of_constructors(ctx: Ctx) -> Finish {
    let b = Bench::new(&ctx).await;
    let id = b.b.clone();
    let ev = |seq: u64| PersistentEvent::new(id.clone(), seq, Payload::raw(vec![1]));
    let write = |seqs: &[u64]| {
        let events: Vec<PersistentEvent> = seqs.iter().map(|s| ev(*s)).collect();
        async move { AtomicWrite::new(events) }
    };
    let (idb, idc) = (b.b.to_string(), b.c.to_string());
    let mut t = vec![
        entry(
            "an atomic write of no events",
            ErrorKind::InvalidInput,
            &["at least one event"],
            write(&[]),
        ),
        entry(
            "an atomic write of two persistence ids",
            ErrorKind::InvalidInput,
            &[&idb, &idc],
            {
                let events = vec![
                    ev(1),
                    PersistentEvent::new(b.c.clone(), 2, Payload::raw(vec![])),
                ];
                async move { AtomicWrite::new(events) }
            },
        ),
        entry(
            "an atomic write numbered 4, 6",
            ErrorKind::InvalidInput,
            &[&idb, "consecutive", "expected 5, found 6"],
            write(&[4, 6]),
        ),
        entry(
            "an atomic write numbered 4, 4",
            ErrorKind::InvalidInput,
            &[&idb, "expected 5, found 4"],
            write(&[4, 4]),
        ),
        entry(
            "an atomic write numbered 5, 4",
            ErrorKind::InvalidInput,
            &[&idb, "expected 6, found 4"],
            write(&[5, 4]),
        ),
        entry(
            "an atomic write starting at 0",
            ErrorKind::InvalidInput,
            &[&idb, "start at 1"],
            write(&[0, 1]),
        ),
        entry(
            "an atomic write numbered past u64::MAX",
            ErrorKind::InvalidInput,
            &[&idb, "consecutive"],
            write(&[u64::MAX, u64::MAX]),
        ),
        entry(
            "an empty persistence id",
            ErrorKind::InvalidInput,
            &["must not be empty"],
            async { PersistenceId::new("") },
        ),
        entry(
            "a persistence id of 256 bytes",
            ErrorKind::InvalidInput,
            &["256 bytes", "255"],
            async { PersistenceId::new("x".repeat(MAX_PERSISTENCE_ID_BYTES + 1)) },
        ),
        entry(
            "a persistence id of 128 characters and 256 bytes",
            ErrorKind::InvalidInput,
            &["256 bytes", "255"],
            async { PersistenceId::new("é".repeat(128)) },
        ),
    ];
    for c in ['\n', '\r', '\t', '\0', '\u{1f}', '\u{7f}', '\u{85}'] {
        let shown = format!("{c:?}");
        t.push(entry(
            format!("a persistence id holding the control character {shown}"),
            ErrorKind::InvalidInput,
            &["control character", &shown],
            async move { PersistenceId::new(format!("a{c}b")) },
        ));
    }
    let long = "x".repeat(MAX_PROJECTION_ID_PART_BYTES + 1);
    for (name, key, part, what) in [
        ("", "k", "name", "empty"),
        ("n", "", "key", "empty"),
        (long.as_str(), "k", "name", "256 bytes"),
        ("n", long.as_str(), "key", "256 bytes"),
        ("n\u{1f}", "k", "name", "control"),
        ("n", "k\n", "key", "control"),
    ] {
        let (name, key) = (name.to_owned(), key.to_owned());
        t.push(entry(
            format!("a projection {part} that is {what}"),
            ErrorKind::InvalidInput,
            &[&format!("projection {part}"), what],
            async move { ProjectionId::new(name, key) },
        ));
    }
    for text in [
        "",
        "offset-42",
        "Sequence:7",
        "sequence:x",
        "sequence:-1",
        "sequence:18446744073709551616",
        "timeuuid:not-a-uuid",
    ] {
        let quoted = format!("{text:?}");
        t.push(entry(
            format!("the offset text {quoted}"),
            ErrorKind::InvalidInput,
            &[&quoted, "is not an offset"],
            async move { text.parse::<Offset>() },
        ));
    }
    // Nothing here reaches a store: the stores are read once, after the table.
    run_table(&b, "bad_input::catalogue_of_constructors", t, false).await
}

/// Atomic writes the journal refuses: numbers already taken, empty tags, events over the
/// declared size, writes over the declared count, and what the backend does not declare.
async fn catalogue_of_journal_writes(ctx: Ctx) -> Finish {
    let b = Bench::new(&ctx).await;
    let caps = b.caps;
    let (ida, idb) = (b.a.to_string(), b.b.to_string());
    let multi = |n: usize| caps.atomic_write_max_events.is_none_or(|m| m >= n);
    let conflicts = caps.conflict_detection;
    let mut t = vec![
        entry(
            "{1} of an id whose highest is 3",
            ErrorKind::Conflict,
            &[&ida],
            b.clone().write(vec![b.event(&b.a, 1)]),
        )
        .within(1, 1)
        .needs(conflicts, "conflict_detection"),
        entry(
            "{3}, the highest, again",
            ErrorKind::Conflict,
            &[&ida],
            b.clone().write(vec![b.event(&b.a, 3)]),
        )
        .within(3, 3)
        .needs(conflicts, "conflict_detection"),
        entry(
            "{2, 3, 4} over the highest 3 and beyond it",
            ErrorKind::Conflict,
            &[&ida],
            b.clone().write((2..=4).map(|s| b.event(&b.a, s)).collect()),
        )
        .within(2, 4)
        .needs(conflicts, "conflict_detection")
        .needs(multi(3), "atomic_write_max_events >= 3"),
        entry(
            "an event with an empty tag",
            ErrorKind::InvalidInput,
            &[&idb, "tags must not be empty"],
            b.clone()
                .write(vec![b.event(&b.b, 1).with_tags([String::new()])]),
        )
        .within(1, 1)
        .needs(caps.tags, "tags"),
        entry(
            "an atomic write whose second event has an empty tag beside a good one",
            ErrorKind::InvalidInput,
            &[&idb, "tags must not be empty"],
            b.clone().write(vec![
                b.event(&b.b, 1).with_tags([b.tag.clone()]),
                b.event(&b.b, 2).with_tags([b.tag.clone(), String::new()]),
            ]),
        )
        .within(1, 2)
        .needs(caps.tags, "tags")
        .needs(multi(2), "atomic_write_max_events >= 2"),
    ];
    match caps.max_event_size {
        Some(max) => {
            let (size, limit) = ((max + 1).to_string(), max.to_string());
            t.push(
                entry(
                    "an event one byte over max_event_size",
                    ErrorKind::Rejected,
                    &[&idb, &size, &limit],
                    b.clone().write(vec![b.sized_event(&b.b, 1, max + 1)]),
                )
                .within(1, 1),
            );
            t.push(
                entry(
                    "an atomic write of a small event and one a byte over max_event_size",
                    ErrorKind::Rejected,
                    &[&idb, &size, &limit],
                    b.clone()
                        .write(vec![b.event(&b.b, 1), b.sized_event(&b.b, 2, max + 1)]),
                )
                .within(1, 2)
                .needs(multi(2), "atomic_write_max_events >= 2"),
            );
            t.push(
                entry(
                    "an event whose one tag is longer than max_event_size",
                    ErrorKind::Rejected,
                    &[&idb, &limit],
                    b.clone()
                        .write(vec![b.event(&b.b, 1).with_tags(["t".repeat(max + 1)])]),
                )
                .within(1, 1)
                .needs(caps.tags, "tags"),
            );
        }
        None => t.push(
            entry(
                "an event one byte over max_event_size",
                ErrorKind::Rejected,
                &[],
                async { Ok(()) },
            )
            .needs(false, "a declared max_event_size"),
        ),
    }
    match caps.atomic_write_max_events {
        Some(max) => {
            let n = max as u64 + 1;
            let (count, limit) = (format!("{n} events"), format!("{max} events"));
            t.push(
                entry(
                    "an atomic write of one event more than atomic_write_max_events",
                    ErrorKind::Rejected,
                    &[&idb, &count, &limit],
                    b.clone().write((1..=n).map(|s| b.event(&b.b, s)).collect()),
                )
                .within(1, n),
            );
        }
        None => t.push(
            entry(
                "an atomic write of one event more than atomic_write_max_events",
                ErrorKind::Rejected,
                &[],
                async { Ok(()) },
            )
            .needs(false, "a declared atomic_write_max_events"),
        ),
    }
    // What the backend does not declare is `Unsupported`, naming it.
    t.push(
        entry(
            "a tagged event where tags are not declared",
            ErrorKind::Unsupported,
            &[&idb, "tags"],
            b.clone()
                .write(vec![b.event(&b.b, 1).with_tags([b.tag.clone()])]),
        )
        .needs(!caps.tags, "a backend without tags"),
    );
    t.push(
        entry(
            "an event with metadata where event metadata is not declared",
            ErrorKind::Unsupported,
            &[&idb, "event metadata"],
            b.clone()
                .write(vec![b.event(&b.b, 1).with_metadata(Payload::raw(vec![1]))]),
        )
        .needs(!caps.event_metadata, "a backend without event_metadata"),
    );
    let stores = b.stores.clone();
    let a = b.a.clone();
    t.push(
        entry(
            "delete_events_to where deleting events is not declared",
            ErrorKind::Unsupported,
            &[&ida, "deleting events"],
            async move { stores.journal.delete_events_to(&a, 3).await },
        )
        .needs(!caps.delete_events, "a backend without delete_events"),
    );
    run_catalogue(&b, "bad_input::catalogue_of_journal_writes", t).await
}

/// Snapshots the snapshot store refuses: over the declared size, with metadata it does not
/// declare.
async fn catalogue_of_snapshots(ctx: Ctx) -> Finish {
    let b = Bench::new(&ctx).await;
    let caps = b.caps;
    let ida = b.a.to_string();
    let save = |seq: u64, payload: Payload, metadata: Option<Payload>| {
        let stores = b.stores.clone();
        let mut meta = SnapshotMetadata::new(b.a.clone(), seq);
        meta.metadata = metadata;
        async move { stores.snapshots.save_snapshot(meta, payload).await }
    };
    let mut t = Vec::new();
    match caps.max_snapshot_size {
        Some(max) => {
            let (size, limit) = ((max + 1).to_string(), max.to_string());
            let over = || Payload::new("s", "m", vec![b'x'; max - 1]);
            assert_eq!(over().stored_size(), max + 1);
            t.push(
                entry(
                    "a snapshot one byte over max_snapshot_size, above the latest",
                    ErrorKind::Rejected,
                    &[&ida, &size, &limit],
                    save(3, over(), None),
                )
                .within(3, 3),
            );
            t.push(
                entry(
                    "a snapshot one byte over max_snapshot_size, replacing the stored one",
                    ErrorKind::Rejected,
                    &[&ida, &size, &limit],
                    save(2, over(), None),
                )
                .within(2, 2),
            );
        }
        None => t.push(
            entry(
                "a snapshot one byte over max_snapshot_size",
                ErrorKind::Rejected,
                &[],
                async { Ok(()) },
            )
            .needs(false, "a declared max_snapshot_size"),
        ),
    }
    t.push(
        entry(
            "a snapshot with metadata where snapshot metadata is not declared",
            ErrorKind::Unsupported,
            &[&ida, "snapshot metadata"],
            save(3, Payload::raw(vec![1]), Some(Payload::raw(vec![2]))),
        )
        .needs(
            !caps.snapshot_metadata,
            "a backend without snapshot_metadata",
        ),
    );
    run_catalogue(&b, "bad_input::catalogue_of_snapshots", t).await
}

/// An offset that names a position; `None` for the start.
fn offset_kind(offset: &Offset) -> &'static str {
    match offset {
        Offset::NoOffset => "NoOffset",
        Offset::Sequence(_) => "Sequence",
        Offset::TimeBasedUuid(_) => "TimeBasedUuid",
        Offset::Token(_) => "Token",
    }
}

/// Offsets this backend's queries never delivered, and the text naming each: every kind
/// but the backend's own (`native`), and a token that is no token of any backend.
fn foreign_offsets(native: &str) -> Vec<(Offset, String, Option<String>)> {
    let uuid = uuid::Uuid::from_u128(0x4242_0000_0000_1000_8000_0000_0000_4242);
    let offsets = vec![
        (Offset::Sequence(4242), "4242".to_string()),
        (Offset::TimeBasedUuid(uuid), uuid.hyphenated().to_string()),
        (Offset::Token("bogus-4242".into()), "bogus-4242".to_string()),
    ];
    offsets
        .into_iter()
        .map(|(o, name)| {
            let kind = offset_kind(&o);
            // A token that is not one of the backend's own is as foreign as another kind.
            let skip = (kind == native && kind != "Token")
                .then(|| format!("{native} is the backend's own offset kind"));
            (o, name, skip)
        })
        .collect()
}

/// Tag queries from an offset the backend never delivered: another kind than its own, or
/// a token it cannot read.
async fn catalogue_of_tag_query_offsets(ctx: Ctx) -> Finish {
    use persistence_api::ReadJournalExt;
    let b = Bench::new(&ctx).await;
    let delivered = ctx.by_tag(&b.tag, Offset::NoOffset).await;
    let native = offset_kind(&delivered.first().expect("the bench's tagged events").offset);
    let mut t = Vec::new();
    for (offset, name, skip) in foreign_offsets(native) {
        let (stores, tag, o) = (b.stores.clone(), b.tag.clone(), offset.clone());
        let current = async move {
            let stream = stores.read_journal.current_events_by_tag(tag, o);
            crate::context::collect(stream).await
        };
        let mut e = entry(
            format!("a current tag query from {offset:?}"),
            ErrorKind::InvalidInput,
            &[&name],
            current,
        );
        e.skip.clone_from(&skip);
        t.push(e);
        let (stores, tag, o) = (b.stores.clone(), b.tag.clone(), offset.clone());
        let live = async move {
            let mut stream = stores.read_journal.events_by_tag(tag, o);
            match tokio::time::timeout(LIVE_ANSWER, stream.next()).await {
                Ok(Some(item)) => item.map(drop),
                Ok(None) => panic!("the live query completed without an item"),
                Err(_) => panic!("the live query answered nothing within {LIVE_ANSWER:?}"),
            }
        };
        let mut e = entry(
            format!("a live tag query from {offset:?}"),
            ErrorKind::InvalidInput,
            &[&name],
            live,
        )
        .needs(b.caps.live_queries, "live_queries");
        if e.skip.is_none() {
            e.skip = skip;
        }
        t.push(e);
    }
    run_catalogue(&b, "bad_input::catalogue_of_tag_query_offsets", t).await
}

/// Upserts, deletes and change queries the durable-state store refuses.
async fn catalogue_of_durable_state(ctx: Ctx) -> Finish {
    use persistence_api::DurableStateStoreExt;
    let b = Bench::new(&ctx).await;
    let caps = b.caps;
    let (ida, idb) = (b.a.to_string(), b.b.to_string());
    let state = || Payload::new("tck", "tck.State/v1", &b"bad"[..]);
    let upsert = |id: &PersistenceId, revision: u64, payload: Payload, tag: Option<String>| {
        let (stores, id) = (b.stores.clone(), id.clone());
        async move {
            stores
                .durable_state
                .upsert(&id, revision, payload, tag)
                .await
        }
    };
    let delete = |revision: u64| {
        let (stores, id) = (b.stores.clone(), b.a.clone());
        async move { stores.durable_state.delete(&id, revision).await }
    };
    let tag = || Some(b.tag.clone());
    let mut t = vec![
        entry(
            "an upsert at revision 0",
            ErrorKind::InvalidInput,
            &[&ida, "revision 0"],
            upsert(&b.a, 0, state(), tag()),
        ),
        entry(
            "an upsert at revision 3 where 1 is stored",
            ErrorKind::Conflict,
            &[&ida, "at revision 1", "got revision 3"],
            upsert(&b.a, 3, state(), tag()),
        ),
        entry(
            "an upsert at the stored revision 1 again",
            ErrorKind::Conflict,
            &[&ida, "at revision 1", "got revision 1"],
            upsert(&b.a, 1, state(), tag()),
        ),
        entry(
            "the first upsert of an id at revision 2",
            ErrorKind::Conflict,
            &[&idb, "at revision 0", "got revision 2"],
            upsert(&b.b, 2, state(), tag()),
        ),
        entry(
            "a delete at revision 0",
            ErrorKind::InvalidInput,
            &[&ida, "revision 0"],
            delete(0),
        ),
        entry(
            "a delete at revision 5 where 1 is stored",
            ErrorKind::Conflict,
            &[&ida, "at revision 1", "got revision 5"],
            delete(5),
        ),
        entry(
            "an upsert of an empty payload",
            ErrorKind::InvalidInput,
            &[&ida, "must not be empty"],
            upsert(
                &b.a,
                2,
                Payload::new("tck", "tck.State/v1", Vec::new()),
                tag(),
            ),
        ),
        entry(
            "an upsert with an empty tag",
            ErrorKind::InvalidInput,
            &[&ida, "tag must not be empty"],
            upsert(&b.a, 2, state(), Some(String::new())),
        ),
    ];
    match caps.max_state_size {
        Some(max) => {
            let (size, limit) = ((max + 1).to_string(), max.to_string());
            let over = Payload::new("s", "m", vec![b'x'; max - 1]);
            assert_eq!(over.stored_size(), max + 1);
            t.push(entry(
                "a state one byte over max_state_size",
                ErrorKind::Rejected,
                &[&ida, &size, &limit],
                upsert(&b.a, 2, over, tag()),
            ));
        }
        None => t.push(
            entry(
                "a state one byte over max_state_size",
                ErrorKind::Rejected,
                &[],
                async { Ok(()) },
            )
            .needs(false, "a declared max_state_size"),
        ),
    }
    let changes = caps.durable_state_changes;
    let stores = b.stores.clone();
    t.push(
        entry(
            "a change query for an empty tag",
            ErrorKind::InvalidInput,
            &["tag"],
            async move {
                let stream = stores
                    .durable_state
                    .current_changes(String::new(), Offset::NoOffset);
                crate::context::collect(stream).await
            },
        )
        .needs(changes, "durable_state_changes"),
    );
    if changes {
        let first = crate::context::collect(
            b.stores
                .durable_state
                .current_changes(b.tag.clone(), Offset::NoOffset),
        )
        .await
        .expect("the bench's change query");
        let native = offset_kind(&first.first().expect("the bench's state").offset);
        for (offset, name, skip) in foreign_offsets(native) {
            let (stores, tag, o) = (b.stores.clone(), b.tag.clone(), offset.clone());
            let mut e = entry(
                format!("a change query from {offset:?}"),
                ErrorKind::InvalidInput,
                &[&name],
                async move {
                    let stream = stores.durable_state.current_changes(tag, o);
                    crate::context::collect(stream).await
                },
            );
            e.skip = skip;
            t.push(e);
        }
    }
    run_catalogue(&b, "bad_input::catalogue_of_durable_state", t).await
}

/// Offset commits the projection offset store refuses.
async fn catalogue_of_projection_offsets(ctx: Ctx) -> Finish {
    let b = Bench::new(&ctx).await;
    let caps = b.caps;
    let (pa, pb) = (b.projection_a.to_string(), b.projection_b.to_string());
    let commit = |id: &ProjectionId, expected: u64| {
        let (stores, id) = (b.stores.clone(), id.clone());
        async move {
            stores
                .offsets
                .commit_offset(&id, expected, Offset::Sequence(99))
                .await
        }
    };
    let stores = b.stores.clone();
    let id = b.projection_a.clone();
    let foreign = async move {
        let tx = persistence_api::StoreTransaction::new("another-backend", ());
        stores
            .offsets
            .commit_transaction(tx, &id, 1, Offset::Sequence(99))
            .await
    };
    let stores = b.stores.clone();
    let t = vec![
        entry(
            "a commit expecting version 5 where 1 is stored",
            ErrorKind::Conflict,
            &[&pa, "expected version 5", "stored version 1"],
            commit(&b.projection_a, 5),
        ),
        entry(
            "a commit expecting version 0 (nothing stored) where 1 is stored",
            ErrorKind::Conflict,
            &[&pa, "expected version 0", "stored version 1"],
            commit(&b.projection_a, 0),
        ),
        entry(
            "a commit expecting version 3 where nothing is stored",
            ErrorKind::Conflict,
            &[&pb, "expected version 3", "stored version 0"],
            commit(&b.projection_b, 3),
        ),
        entry(
            "a transaction another backend opened",
            ErrorKind::InvalidInput,
            &[&pa, "another-backend"],
            foreign,
        )
        .needs(caps.exactly_once_projections, "exactly_once_projections"),
        entry(
            "a transaction where exactly-once projections are not declared",
            ErrorKind::Unsupported,
            &["exactly-once"],
            async move { stores.offsets.begin_transaction().await },
        )
        .needs(
            !caps.exactly_once_projections,
            "a backend without exactly_once_projections",
        ),
    ];
    run_catalogue(&b, "bad_input::catalogue_of_projection_offsets", t).await
}

/// Writes the API documents no error for, though a backend may not hold them: a number
/// past what its integers hold, a tag longer than its keys. Stored whole or refused
/// changing nothing, never a panic, and the stores (the id's replay among them) still read
/// afterwards.
async fn catalogue_of_writes_stored_or_refused(ctx: Ctx) -> Finish {
    let b = Bench::new(&ctx).await;
    let caps = b.caps;
    let fits = |size: usize| caps.max_event_size.is_none_or(|m| m >= size + 512);
    let either = |e: Entry| Entry { either: true, ..e };
    let mut t = Vec::new();
    for (id, seq, what) in [(&b.b, 1u64 << 63, "2^63"), (&b.c, u64::MAX, "u64::MAX")] {
        t.push(either(entry(
            format!("a first event of an id at sequence number {what}"),
            ErrorKind::Rejected,
            &[],
            b.clone().write(vec![b.event(id, seq)]),
        )));
    }
    // Letters no compression shortens, so a database's key limit meets all of them.
    let letters = |n: usize| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'a' + (x % 26) as u8) as char
            })
            .collect::<String>()
    };
    for (seq, size) in [(4u64, 3 * 1024), (5, 64 * 1024 + 1)] {
        let tag = format!("{}-{}", b.tag, letters(size));
        t.push(
            either(entry(
                format!("an event with a tag of {} bytes", tag.len()),
                ErrorKind::Rejected,
                &[],
                b.clone()
                    .write(vec![b.event(&b.a, seq).with_tags([tag.clone()])]),
            ))
            .needs(caps.tags, "tags")
            .needs(fits(tag.len()), "max_event_size above the tag"),
        );
    }
    // A snapshot numbered past what the backend's integers hold: refused, or loaded back
    // at its own number, never at another one (a separate id: the table's ids must stay
    // as they are).
    if caps.snapshots {
        for (seq, what) in [(1u64 << 63, "2^63"), (u64::MAX, "u64::MAX")] {
            let id = ctx.pid("snapshot-max");
            let saved = ctx
                .stores
                .snapshots
                .save_snapshot(
                    SnapshotMetadata::new(id.clone(), seq),
                    Payload::new("s", "m", b"x".to_vec()),
                )
                .await;
            let loaded = ctx
                .stores
                .snapshots
                .load_snapshot(&id, Criteria::latest())
                .await
                .expect("the snapshot store reads after a refused or stored snapshot");
            match saved {
                Ok(()) => assert_eq!(
                    loaded.map(|s| s.metadata.sequence_nr),
                    Some(seq),
                    "a snapshot at {what}, stored, loads back at its own number"
                ),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Rejected, "a snapshot at {what}: {e}");
                    assert!(
                        loaded.is_none(),
                        "a refused snapshot at {what} stored nothing"
                    );
                }
            }
        }
    }
    run_catalogue(&b, "bad_input::catalogue_of_writes_stored_or_refused", t).await
}
