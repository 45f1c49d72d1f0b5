//! Journal cases: replay bounds, deletes, conflicts, limits, ids, round trips.

use persistence_api::ReadJournalExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Payload, PersistenceId, PersistentEvent, Timestamp,
    MAX_PERSISTENCE_ID_BYTES,
};

use super::{cases, Case};
use crate::context::{collect, Ctx};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "journal::replay_all" => [] replay_all;
        "journal::replay_from_middle" => [] replay_from_middle;
        "journal::replay_to_bound_reports_stored_highest" => [] replay_to_bound;
        "journal::replay_max_bounds_count" => [] replay_max;
        "journal::replay_from_2_to_3" => [] replay_2_3;
        "journal::replay_from_2_to_5_max_2" => [] replay_2_5_max_2;
        "journal::replay_single_event" => [] replay_2_2;
        "journal::replay_from_2_to_4_max_1" => [] replay_2_4_max_1;
        "journal::replay_max_0_is_empty" => [] replay_max_0;
        "journal::replay_from_above_to_is_empty" => [] replay_from_above_to;
        "journal::replay_unknown_id" => [] replay_unknown;
        "journal::replay_from_0_behaves_as_1" => [] replay_from_0;
        "journal::delete_to_3" => [DeleteEvents] delete_to_3;
        "journal::highest_survives_delete" => [DeleteEvents] highest_after_delete;
        "journal::delete_beyond_highest_then_write_on" => [DeleteEvents] delete_beyond_highest;
        "journal::delete_twice_is_idempotent" => [DeleteEvents] delete_twice;
        "journal::deleted_sequence_nrs_stay_taken" => [DeleteEvents, ConflictDetection] deleted_stay_taken;
        "journal::deleted_sequence_nrs_stay_taken_after_reopen" => [DeleteEvents, ConflictDetection, Durable] deleted_stay_taken_after_reopen;
        "journal::results_per_atomic_write" => [ConflictDetection] results_per_atomic_write;
        "journal::rejected_write_alone_in_a_call" => [] rejected_write_alone;
        "journal::event_round_trips_every_field" => [Tags] round_trip;
        "journal::metadata_round_trips" => [EventMetadata] metadata_round_trip;
        "journal::conflict_on_taken_sequence_nr" => [ConflictDetection] conflict_single;
        "journal::conflict_stores_nothing_of_atomic_write" => [ConflictDetection, MultiEventAtomic] conflict_atomic;
        "journal::racing_writers_one_winner_per_sequence_nr" => [ConflictDetection] racing_writers;
        "journal::atomic_write_at_declared_maximum" => [AtomicWriteLimit] atomic_at_max;
        "journal::atomic_write_above_declared_maximum" => [AtomicWriteLimit] atomic_above_max;
        "journal::atomic_write_of_5000_events_is_stored_whole" => [LargeAtomicWrites] atomic_5000;
        "journal::event_at_size_limit_is_stored" => [EventSizeLimit] event_at_size_limit;
        "journal::event_over_size_limit_rejects_its_atomic_write" => [EventSizeLimit] event_over_size_limit;
        "journal::event_of_4_mib_is_stored" => [LargeEvents] event_of_4_mib;
        "journal::replay_10000_events" => [] replay_10000;
        "journal::replay_more_than_5_mb" => [] replay_5_mb;
        "journal::unusual_and_255_byte_ids" => [] unusual_ids;
        "journal::invalid_ids_are_rejected" => [] invalid_ids;
        "journal::replay_stops_at_highest_when_started" => [] replay_stops_at_highest;
        "journal::writes_of_many_ids_interleaved" => [] many_ids;
    ]
}

async fn setup(ctx: &Ctx) -> PersistenceId {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    id
}

async fn replay_all(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![1, 2, 3, 4, 5], 5));
    let (events, _) = ctx.replay_events(&id, 1, MAX, MAX).await;
    for e in &events {
        assert_eq!(
            e.payload,
            Ctx::payload(&id, e.sequence_nr),
            "payload of {}",
            e.sequence_nr
        );
        assert_eq!(e.persistence_id, id);
        assert_eq!(
            e.writer_id, "w1",
            "replayed events carry the original writer id"
        );
    }
}

async fn replay_from_middle(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 3, MAX, MAX).await, (vec![3, 4, 5], 5));
}

async fn replay_to_bound(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 1, 3, MAX).await, (vec![1, 2, 3], 5));
}

async fn replay_max(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 1, MAX, 3).await, (vec![1, 2, 3], 5));
}

async fn replay_2_3(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 2, 3, MAX).await.0, vec![2, 3]);
}

async fn replay_2_5_max_2(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 2, 5, 2).await.0, vec![2, 3]);
}

async fn replay_2_2(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 2, 2, MAX).await.0, vec![2]);
}

async fn replay_2_4_max_1(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 2, 4, 1).await.0, vec![2]);
}

async fn replay_max_0(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 2, 4, 0).await, (vec![], 5));
}

async fn replay_from_above_to(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 3, 2, MAX).await, (vec![], 5));
}

async fn replay_unknown(ctx: Ctx) {
    let _ = setup(&ctx).await;
    let unknown = ctx.pid("never-wrote");
    assert_eq!(ctx.replay(&unknown, 1, MAX, MAX).await, (vec![], 0));
    assert_eq!(ctx.highest(&unknown).await, 0);
}

async fn replay_from_0(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(ctx.replay(&id, 0, 2, MAX).await, (vec![1, 2], 5));
}

async fn delete_to_3(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 3)
        .await
        .expect("delete");
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![4, 5], 5));
    assert_eq!(ctx.replay(&id, 2, 4, MAX).await.0, vec![4]);
}

async fn highest_after_delete(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 3)
        .await
        .expect("delete");
    assert_eq!(ctx.highest(&id).await, 5);
    ctx.stores
        .journal
        .delete_events_to(&id, 5)
        .await
        .expect("delete all");
    assert_eq!(
        ctx.highest(&id).await,
        5,
        "the highest survives deleting everything"
    );
}

async fn delete_beyond_highest(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .journal
        .delete_events_to(&id, MAX)
        .await
        .expect("delete beyond the highest succeeds");
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![], 5));
    assert_eq!(ctx.highest(&id).await, 5);
    ctx.write(&id, 6, 6).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![6], 6));
    // A delete beyond the highest does not swallow later writes.
    ctx.write(&id, 7, 7).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![6, 7], 7));
}

async fn delete_twice(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 2)
        .await
        .expect("delete");
    ctx.stores
        .journal
        .delete_events_to(&id, 2)
        .await
        .expect("delete again");
    ctx.stores
        .journal
        .delete_events_to(&id, 1)
        .await
        .expect("delete lower");
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![3, 4, 5], 5));
}

async fn results_per_atomic_write(ctx: Ctx) {
    let id = setup(&ctx).await;
    let other = ctx.pid("other");
    let taken = ctx.atomic(&id, 3, 3);
    let writes = vec![
        ctx.atomic(&id, 6, 6),
        taken,
        ctx.atomic(&other, 1, 1),
        ctx.atomic(&id, 7, 7),
    ];
    let results = ctx
        .stores
        .journal
        .write_events(writes)
        .await
        .expect("write_events");
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(results[3].is_ok(), "{:?}", results[3]);
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![1, 2, 3, 4, 5, 6, 7], 7)
    );
    assert_eq!(ctx.replay(&other, 1, MAX, MAX).await, (vec![1], 1));
}

/// An event too large for the backend (or, with no size limit, an invalid tag) rejects
/// its own atomic write and nothing else.
async fn rejected_write_alone(ctx: Ctx) {
    let id = ctx.pid("p");
    let base = ctx.event(&id, 2);
    // Over the declared size, or an empty tag (refused whether or not tags are supported).
    let bad_event = match ctx.caps.max_event_size {
        Some(max) => sized_event(&ctx, &id, 2, max + 1),
        None => base.with_tags([""]),
    };
    let bad =
        AtomicWrite::new(vec![bad_event, ctx.event(&id, 3)]).unwrap_or_else(|_| unreachable!());
    let bad = if ctx.caps.atomic_write_max_events.is_some_and(|m| m < 2) {
        AtomicWrite::new(vec![bad.events()[0].clone()]).unwrap()
    } else {
        bad
    };
    let other = ctx.pid("q");
    let results = ctx
        .stores
        .journal
        .write_events(vec![ctx.atomic(&id, 1, 1), bad, ctx.atomic(&other, 1, 1)])
        .await
        .expect("write_events");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let err = results[1]
        .as_ref()
        .expect_err("the bad atomic write is refused");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Rejected | ErrorKind::InvalidInput | ErrorKind::Unsupported
        ),
        "a refusal, not a failure: {err}"
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await.0, vec![1]);
    assert_eq!(ctx.replay(&other, 1, MAX, MAX).await.0, vec![1]);
}

async fn round_trip(ctx: Ctx) {
    let id = ctx.pid("p");
    let ts = Timestamp::from_millis(1_700_000_000_123);
    let event = PersistentEvent {
        persistence_id: id.clone(),
        sequence_nr: 1,
        payload: Payload::new("ser-7", "bank.Deposited/v3", vec![0u8, 1, 2, 255, 254, 0]),
        event_manifest: "adapter-manifest".into(),
        writer_id: "writer-ä".into(),
        timestamp: ts,
        tags: vec![ctx.tag("a"), ctx.tag("b")],
        metadata: None,
    };
    ctx.stores
        .journal
        .write(AtomicWrite::single(event.clone()).unwrap())
        .await
        .expect("write");
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, 1);
    assert_eq!(events.len(), 1);
    let mut got = events[0].clone();
    got.tags.sort();
    assert_eq!(got, event);
}

async fn metadata_round_trip(ctx: Ctx) {
    let id = ctx.pid("p");
    let meta = Payload::new("meta-ser", "meta/v1", b"meta-bytes".to_vec());
    let event = ctx.event(&id, 1).with_metadata(meta.clone());
    ctx.stores
        .journal
        .write(AtomicWrite::single(event).unwrap())
        .await
        .expect("write");
    ctx.write(&id, 2, 2).await;
    let (events, _) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(events[0].metadata.as_ref(), Some(&meta));
    assert_eq!(events[1].metadata, None);
}

async fn conflict_single(ctx: Ctx) {
    let id = setup(&ctx).await;
    let mut intruder = ctx.event(&id, 5);
    intruder.payload = Payload::raw(b"intruder".to_vec());
    intruder.writer_id = "w2".into();
    let err = ctx
        .stores
        .journal
        .write(AtomicWrite::single(intruder).unwrap())
        .await
        .expect_err("a taken sequence number is a conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, 5);
    assert_eq!(
        events[4].payload,
        Ctx::payload(&id, 5),
        "no silent overwrite"
    );
    assert_eq!(events[4].writer_id, "w1");
}

async fn conflict_atomic(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write(&id, 1, 3).await;
    let err = ctx
        .stores
        .journal
        .write(ctx.atomic(&id, 3, 4))
        .await
        .expect_err("conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![1, 2, 3], 3),
        "nothing of the conflicting write is stored"
    );
    ctx.write(&id, 4, 5).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![1, 2, 3, 4, 5], 5));
}

/// What one racing writer tried in one round, and what it was answered.
struct Attempt {
    writer: usize,
    round: usize,
    from: u64,
    to: u64,
    stored: bool,
}

/// Racing writers on one id, with contention forced: in every round all writers read the
/// same highest `h`, meet at a barrier, and then write at once. Even rounds: four writes
/// that all start at `h + 1` (lengths 1, 2, 3 and 1), so exactly one may win. Odd rounds:
/// overlapping writes that start at different numbers (`{h+1, h+2}` against `{h+2, h+3}`,
/// `{h+1}` and `{h+1..h+3}`), so a write over a number another write took must lose whole.
/// Afterwards the whole history is checked: every acknowledged write is wholly present
/// with its own payloads, every refused one wholly absent, each number owned by exactly
/// one write, and no number missing except the one a write that started above `h + 1` left
/// below itself. A write that fails retryably (a lightweight transaction under contention
/// on a loaded cluster times out) has an unknown outcome: the replay settles it, and it
/// must be there whole or not at all.
async fn racing_writers(ctx: Ctx) {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 20;
    let id = ctx.pid("raced");
    let multi = ctx.caps.atomic_write_max_events.is_none_or(|m| m >= 3);
    let ctx = Arc::new(ctx);
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let go = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (ctx, id, start, go) = (ctx.clone(), id.clone(), start.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let mut attempts = Vec::new();
            for round in 0..ROUNDS {
                start.wait().await;
                // A serial read of a contended id may time out on a cluster (Paxos): a
                // retryable error is read again.
                let mut tries = 0;
                let h = loop {
                    match ctx.stores.journal.highest_sequence_nr(&id).await {
                        Ok(h) => break h,
                        Err(e) if e.is_retryable() && tries < 10 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("writer {writer}, round {round}: highest: {e}"),
                    }
                };
                // (first, length) relative to h + 1.
                let (offset, len) = match (round % 2, writer, multi) {
                    (0, w, true) => (0, [1, 2, 3, 1][w]),
                    (0, _, false) => (0, 1),
                    (_, 0, true) => (0, 2),
                    (_, 1, true) => (1, 2),
                    (_, 2, _) => (0, 1),
                    (_, 3, true) => (0, 3),
                    (_, 1, false) => (1, 1),
                    (_, _, false) => (0, 1),
                    _ => unreachable!(),
                };
                let from = h + 1 + offset;
                let to = from + len - 1;
                let events = (from..=to)
                    .map(|seq| {
                        PersistentEvent::new(
                            id.clone(),
                            seq,
                            Payload::raw(format!("w{writer}-r{round}-{seq}").into_bytes()),
                        )
                        .with_writer_id(format!("w{writer}"))
                    })
                    .collect();
                go.wait().await;
                let r = ctx
                    .stores
                    .journal
                    .write(AtomicWrite::new(events).unwrap())
                    .await;
                // Success, Conflict, or (a lightweight transaction under contention on a
                // cluster) a retryable timeout whose outcome is unknown: settled below
                // from the replay, whole or not at all.
                let stored = match r {
                    Ok(()) => Some(true),
                    Err(e) if e.kind() == ErrorKind::Conflict => Some(false),
                    Err(e) if e.is_retryable() => None,
                    Err(e) => panic!(
                        "writer {writer}, round {round}, {from}..={to}: expected success, Conflict or a retryable error, got {e}"
                    ),
                };
                attempts.push((
                    Attempt {
                        writer,
                        round,
                        from,
                        to,
                        stored: false,
                    },
                    stored,
                ));
            }
            attempts
        }));
    }
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(t.await.expect("a writer"));
    }
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    let by_seq: HashMap<u64, &PersistentEvent> =
        events.iter().map(|e| (e.sequence_nr, e)).collect();
    assert_eq!(by_seq.len(), events.len(), "each number replays once");
    // Writes whose outcome was unknown: stored when their events replay, whole.
    let mut unknown = 0;
    let attempts: Vec<Attempt> = attempts
        .into_iter()
        .map(|(a, stored): (Attempt, Option<bool>)| {
            let stored = stored.unwrap_or_else(|| {
                unknown += 1;
                let payload = |seq: u64| format!("w{}-r{}-{seq}", a.writer, a.round).into_bytes();
                let present: Vec<bool> = (a.from..=a.to)
                    .map(|seq| {
                        by_seq
                            .get(&seq)
                            .is_some_and(|e| e.payload.bytes.as_ref() == payload(seq).as_slice())
                    })
                    .collect();
                assert!(
                    present.iter().all(|p| *p) || present.iter().all(|p| !*p),
                    "writer {} round {} ({}..={}) timed out and is stored in part: {present:?}",
                    a.writer,
                    a.round,
                    a.from,
                    a.to
                );
                present[0]
            });
            Attempt { stored, ..a }
        })
        .collect();
    if unknown > 0 {
        eprintln!("racing writers: {unknown} writes timed out, settled from the replay");
    }
    let mut owner: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut allowed_gaps = BTreeSet::new();
    for round in 0..ROUNDS {
        let won: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.round == round && a.stored)
            .collect();
        assert!(
            !won.is_empty(),
            "round {round}: some write must win, all {WRITERS} got Conflict"
        );
        if round % 2 == 0 {
            assert_eq!(
                won.len(),
                1,
                "round {round}: writes that all start at the same number, one winner"
            );
        }
    }
    let lowest_start: HashMap<usize, u64> = (0..ROUNDS)
        .map(|r| {
            let h = attempts
                .iter()
                .filter(|a| a.round == r)
                .map(|a| a.from)
                .min()
                .unwrap();
            (r, h)
        })
        .collect();
    for a in &attempts {
        let payload = |seq: u64| format!("w{}-r{}-{seq}", a.writer, a.round).into_bytes();
        if a.stored {
            if a.from > lowest_start[&a.round] {
                allowed_gaps.insert(a.from - 1);
            }
            for seq in a.from..=a.to {
                if let Some(prev) = owner.insert(seq, (a.writer, a.round)) {
                    panic!(
                        "sequence number {seq} acknowledged to two writes: writer {} round {} and writer {} round {}",
                        prev.0, prev.1, a.writer, a.round
                    );
                }
                let e = by_seq.get(&seq).unwrap_or_else(|| {
                    panic!(
                        "writer {} round {} was acknowledged for {}..={}, but {seq} does not replay",
                        a.writer, a.round, a.from, a.to
                    )
                });
                assert_eq!(
                    e.payload.bytes.as_ref(),
                    payload(seq).as_slice(),
                    "{seq} replays the acknowledged write's event"
                );
                assert_eq!(e.writer_id, format!("w{}", a.writer));
            }
        } else {
            for seq in a.from..=a.to {
                if let Some(e) = by_seq.get(&seq) {
                    assert_ne!(
                        e.payload.bytes.as_ref(),
                        payload(seq).as_slice(),
                        "writer {} round {} got Conflict for {}..={}, but its {seq} was stored",
                        a.writer,
                        a.round,
                        a.from,
                        a.to
                    );
                }
            }
        }
    }
    let acked_max = owner.keys().copied().max().unwrap_or(0);
    assert_eq!(
        highest, acked_max,
        "the highest is the last acknowledged number"
    );
    for seq in by_seq.keys() {
        assert!(
            owner.contains_key(seq),
            "{seq} replays but no write of it was acknowledged"
        );
    }
    for seq in 1..=highest {
        assert!(
            owner.contains_key(&seq) || allowed_gaps.contains(&seq),
            "{seq} is missing: no acknowledged write holds it and none left a gap there"
        );
    }
}

/// The declared maximum (the case needs one).
fn declared_atomic_max(ctx: &Ctx) -> u64 {
    ctx.caps
        .atomic_write_max_events
        .expect("the case needs a declared atomic_write_max_events") as u64
}

/// One atomic write of `1..=n` is stored whole, replays in order with its payloads.
async fn write_one_atomic_of(ctx: &Ctx, n: u64) {
    let id = ctx.pid("p");
    ctx.stores
        .journal
        .write(ctx.atomic(&id, 1, n))
        .await
        .unwrap_or_else(|e| panic!("one atomic write of {n} events: {e}"));
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, n);
    assert_eq!(
        events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    assert!(events
        .iter()
        .all(|e| e.payload == Ctx::payload(&id, e.sequence_nr)));
}

async fn atomic_at_max(ctx: Ctx) {
    let n = declared_atomic_max(&ctx);
    write_one_atomic_of(&ctx, n).await;
}

async fn atomic_5000(ctx: Ctx) {
    write_one_atomic_of(&ctx, super::LARGE_ATOMIC_WRITE as u64).await;
}

async fn atomic_above_max(ctx: Ctx) {
    let id = ctx.pid("p");
    let n = declared_atomic_max(&ctx) + 1;
    let err = ctx
        .stores
        .journal
        .write(ctx.atomic(&id, 1, n))
        .await
        .expect_err("above the maximum");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![], 0),
        "nothing stored"
    );
    ctx.write(&id, 1, 1).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![1], 1));
}

/// An event whose `stored_size()` is exactly `size`.
fn sized_event(ctx: &Ctx, id: &PersistenceId, seq: u64, size: usize) -> PersistentEvent {
    let mut e = ctx.event(id, seq);
    e.payload.bytes = Vec::new().into();
    let overhead = e.stored_size();
    assert!(
        size >= overhead,
        "size {size} below the event's overhead {overhead}"
    );
    e.payload.bytes = vec![b'x'; size - overhead].into();
    assert_eq!(e.stored_size(), size);
    e
}

/// The declared limit (the case needs one).
fn declared_size_limit(ctx: &Ctx) -> usize {
    ctx.caps
        .max_event_size
        .expect("the case needs a declared max_event_size")
}

/// A single event of `size` is stored and replays byte for byte.
async fn store_event_of(ctx: &Ctx, size: usize) {
    let id = ctx.pid("p");
    let e = sized_event(ctx, &id, 1, size);
    ctx.stores
        .journal
        .write(AtomicWrite::single(e.clone()).unwrap())
        .await
        .unwrap_or_else(|err| panic!("an event of {size} bytes is stored: {err}"));
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, 1);
    assert_eq!(events.len(), 1);
    assert!(events[0] == e, "the event of {size} bytes replays equal");
}

async fn event_of_4_mib(ctx: Ctx) {
    store_event_of(&ctx, super::LARGE_EVENT).await;
}

async fn event_at_size_limit(ctx: Ctx) {
    store_event_of(&ctx, declared_size_limit(&ctx)).await;
}

async fn event_over_size_limit(ctx: Ctx) {
    let id = ctx.pid("p");
    let max = declared_size_limit(&ctx);
    let mut events = vec![ctx.event(&id, 1), sized_event(&ctx, &id, 2, max + 1)];
    if ctx.caps.atomic_write_max_events.is_some_and(|m| m < 2) {
        events.remove(0);
        events[0].sequence_nr = 1;
    }
    let err = ctx
        .stores
        .journal
        .write(AtomicWrite::new(events).unwrap())
        .await
        .expect_err("an event over the limit is rejected");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(
        err.persistence_id(),
        Some(id.as_str()),
        "the error names the id: {err}"
    );
    assert!(
        err.to_string().contains(&(max + 1).to_string()),
        "the error names the size: {err}"
    );
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![], 0),
        "nothing of its atomic write is stored"
    );
}

async fn replay_10000(ctx: Ctx) {
    let id = ctx.pid("long");
    ctx.write_chunked(&id, 1, 10_000, 100).await;
    let replay = ctx
        .stores
        .journal
        .replay(&id, 1, MAX, MAX)
        .await
        .expect("replay");
    assert_eq!(replay.highest_sequence_nr, 10_000);
    let events = collect(replay.events).await.expect("replay");
    assert_eq!(events.len(), 10_000);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence_nr == i as u64 + 1),
        "in order, none missing"
    );
    assert_eq!(events[9_999].payload, Ctx::payload(&id, 10_000));
    // And a window in the middle.
    assert_eq!(
        ctx.replay(&id, 5_000, 5_004, MAX).await.0,
        vec![5_000, 5_001, 5_002, 5_003, 5_004]
    );
}

/// An event of `size` whose payload bytes differ from every other event's (a pattern
/// seeded by the sequence number), so a replay that swaps, repeats or mangles events fails.
fn patterned_event(ctx: &Ctx, id: &PersistenceId, seq: u64, size: usize) -> PersistentEvent {
    let mut e = sized_event(ctx, id, seq, size);
    let len = e.payload.bytes.len();
    let seed = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    e.payload.bytes = (0..len as u64)
        .map(|i| (seed.wrapping_add(i.wrapping_mul(31)) >> 3) as u8)
        .collect::<Vec<u8>>()
        .into();
    e
}

async fn replay_5_mb(ctx: Ctx) {
    let id = ctx.pid("big");
    let size = ctx
        .caps
        .max_event_size
        .unwrap_or(usize::MAX)
        .min(100 * 1024);
    let count = (5 * 1024 * 1024 / size + 2) as u64;
    let chunk = ctx.caps.atomic_write_max_events.unwrap_or(10).min(10) as u64;
    let written: Vec<PersistentEvent> = (1..=count)
        .map(|s| patterned_event(&ctx, &id, s, size))
        .collect();
    for events in written.chunks(chunk as usize) {
        ctx.stores
            .journal
            .write(AtomicWrite::new(events.to_vec()).unwrap())
            .await
            .expect("write");
    }
    let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
    assert_eq!(highest, count);
    assert_eq!(events.len() as u64, count);
    let total: usize = events.iter().map(|e| e.stored_size()).sum();
    assert!(total > 5 * 1024 * 1024, "replayed {total} bytes");
    for (i, (got, want)) in events.iter().zip(&written).enumerate() {
        assert!(
            got == want,
            "event {} of the 5 MB replay is the one written at {} (sequence number {}), byte for byte",
            i + 1,
            want.sequence_nr,
            got.sequence_nr
        );
    }
}

async fn unusual_ids(ctx: Ctx) {
    let prefix = format!("{}-", ctx.namespace);
    let long = format!(
        "{prefix}{}",
        "é".repeat((MAX_PERSISTENCE_ID_BYTES - prefix.len()) / 2)
    );
    let long = format!(
        "{long}{}",
        "x".repeat(MAX_PERSISTENCE_ID_BYTES - long.len())
    );
    assert_eq!(long.len(), MAX_PERSISTENCE_ID_BYTES);
    let names = [
        format!("{prefix}ünïcödé-名前-🙂"),
        format!("{prefix}a-b"),
        format!("{prefix}a|b"),
        format!("{prefix}a#b"),
        format!("{prefix}a b"),
        format!("{prefix}a"),
        format!("{prefix}a-P-1"),
        long,
    ];
    for (i, name) in names.iter().enumerate() {
        let id = PersistenceId::new(name.clone()).expect("valid id");
        ctx.write(&id, 1, 1).await;
        if i % 2 == 0 {
            ctx.write(&id, 2, 2).await;
        }
    }
    for (i, name) in names.iter().enumerate() {
        let id = PersistenceId::new(name.clone()).unwrap();
        let expected: Vec<u64> = if i % 2 == 0 { vec![1, 2] } else { vec![1] };
        let (events, highest) = ctx.replay_events(&id, 1, MAX, MAX).await;
        assert_eq!(
            events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
            expected,
            "id {name:?}"
        );
        assert_eq!(highest, expected.len() as u64, "id {name:?}");
        assert!(
            events.iter().all(|e| e.persistence_id.as_str() == name),
            "id {name:?} round-trips"
        );
        assert_eq!(
            events[0].payload,
            Ctx::payload(&id, 1),
            "id {name:?} sees its own events only"
        );
    }
    if ctx.caps.query_persistence_ids {
        let mut ids: Vec<String> = collect(ctx.stores.read_journal.current_persistence_ids())
            .await
            .expect("ids")
            .into_iter()
            .map(|p| p.into_string())
            .collect();
        ids.sort();
        let mut expected = names.to_vec();
        expected.sort();
        assert_eq!(ids, expected);
    }
}

async fn invalid_ids(_ctx: Ctx) {
    for bad in ["", "a\nb", "tab\tid", "nul\0"] {
        let err = PersistenceId::new(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    let err = PersistenceId::new("x".repeat(MAX_PERSISTENCE_ID_BYTES + 1)).unwrap_err();
    assert!(err.to_string().contains("256 bytes"), "{err}");
    let id = PersistenceId::new("valid").unwrap();
    let e = |n| PersistentEvent::new(id.clone(), n, Payload::raw(vec![]));
    assert_eq!(
        AtomicWrite::new(vec![e(0)]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        AtomicWrite::new(vec![e(1), e(3)]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

async fn replay_stops_at_highest(ctx: Ctx) {
    let id = setup(&ctx).await;
    let replay = ctx
        .stores
        .journal
        .replay(&id, 1, MAX, MAX)
        .await
        .expect("replay");
    assert_eq!(replay.highest_sequence_nr, 5);
    ctx.write(&id, 6, 8).await;
    let events = collect(replay.events).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence_nr).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "a replay stops at the highest it reported"
    );
    assert_eq!(ctx.highest(&id).await, 8);
}

async fn many_ids(ctx: Ctx) {
    let ids: Vec<_> = (0..5).map(|i| ctx.pid(&format!("m{i}"))).collect();
    for seq in 1..=4 {
        let writes = ids.iter().map(|id| ctx.atomic(id, seq, seq)).collect();
        for r in ctx
            .stores
            .journal
            .write_events(writes)
            .await
            .expect("write_events")
        {
            r.expect("stored");
        }
    }
    for id in &ids {
        let (events, highest) = ctx.replay_events(id, 1, MAX, MAX).await;
        assert_eq!(highest, 4);
        assert_eq!(
            events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(events
            .iter()
            .all(|e| &e.persistence_id == id && e.payload == Ctx::payload(id, e.sequence_nr)));
    }
}

/// Expects the single-event write at `seq` to fail with `Conflict` naming the id.
async fn expect_taken(
    ctx: &Ctx,
    journal: &std::sync::Arc<dyn persistence_api::Journal>,
    id: &PersistenceId,
    seq: u64,
    why: &str,
) {
    let w = ctx.atomic(id, seq, seq);
    let err = journal.write(w).await.expect_err(&format!(
        "a write at sequence number {seq} must be refused: {why}"
    ));
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "a write at deleted sequence number {seq} is a Conflict ({why}); got {err}"
    );
}

/// A deleted sequence number stays taken forever: writing there again is a `Conflict`,
/// nothing is stored, and the highest never goes down (Pekko never reuses a number).
async fn deleted_stay_taken(ctx: Ctx) {
    let id = setup(&ctx).await;
    let journal = ctx.stores.journal.clone();
    journal.delete_events_to(&id, 3).await.expect("delete to 3");
    for seq in [1, 2, 3] {
        expect_taken(&ctx, &journal, &id, seq, "deleted by delete_events_to(3)").await;
    }
    if ctx.caps.atomic_write_max_events.is_none_or(|m| m >= 2) {
        let err = journal
            .write(ctx.atomic(&id, 2, 3))
            .await
            .expect_err("an atomic write over deleted numbers 2..=3 is refused");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    }
    assert_eq!(ctx.highest(&id).await, 5, "the highest stays 5");
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![4, 5], 5));
    journal.delete_events_to(&id, 5).await.expect("delete to 5");
    for seq in [1, 4, 5] {
        expect_taken(&ctx, &journal, &id, seq, "deleted by delete_events_to(5)").await;
    }
    assert_eq!(ctx.highest(&id).await, 5, "highest_sequence_nr stays 5");
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        (vec![], 5),
        "replay reports highest 5 and no event"
    );
    ctx.write(&id, 6, 6).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![6], 6));
}

/// After a restart (new stores over the same data) a deleted number is still taken and the
/// next free number is the one after the highest.
async fn deleted_stay_taken_after_reopen(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write(&id, 1, 1).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 1)
        .await
        .expect("delete to 1");
    let reopened = ctx.reopen().await;
    expect_taken(
        &ctx,
        &reopened.journal,
        &id,
        1,
        "deleted before the restart",
    )
    .await;
    assert_eq!(
        reopened
            .journal
            .highest_sequence_nr(&id)
            .await
            .expect("highest"),
        1,
        "the highest survives the restart"
    );
    reopened
        .journal
        .write(ctx.atomic(&id, 2, 2))
        .await
        .expect("the next free number is 2");
    let replay = reopened
        .journal
        .replay(&id, 1, MAX, MAX)
        .await
        .expect("replay");
    let events = collect(replay.events).await.expect("replay stream");
    assert_eq!(
        (
            events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
            replay.highest_sequence_nr
        ),
        (vec![2], 2)
    );
}
