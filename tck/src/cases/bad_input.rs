//! Input that passes the checking layer and reaches the backend: the same number twice in
//! one call, writes out of order, a write that leaves a gap, unusual tags, empty payloads,
//! extreme timestamps, and offsets that went through serde or text.

use std::collections::BTreeSet;

use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent,
    SnapshotMetadata, SnapshotSelectionCriteria as Criteria, Timestamp, MAX_PERSISTENCE_ID_BYTES,
};

use super::{cases, Case};
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
