//! Durability cases: new stores over the same namespace ([`Ctx::reopen`], as after a process
//! restart) see everything the first stores wrote, refuse what they would refuse, and let
//! queries resume from offsets taken before the restart. The first stores stay open, so
//! the cases also check two processes on one namespace.

use persistence_api::ReadJournalExt;
use std::time::Instant;

use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent,
    SnapshotMetadata, SnapshotSelectionCriteria as Criteria, Stores, Timestamp,
};

use super::{cases, Case};
use crate::context::{
    assert_per_id_order, by_id, by_tag, ids, keys, next_within, replay_of, write_tagged, Ctx,
    CATCH_UP,
};

pub fn cases() -> Vec<Case> {
    cases![
        "durability::events_and_highest_survive_reopen" => [Durable] events_survive;
        "durability::taken_numbers_conflict_after_reopen" => [Durable, ConflictDetection] taken_conflict;
        "durability::partial_delete_survives_reopen" => [Durable, DeleteEvents, ConflictDetection] partial_delete;
        "durability::next_free_number_after_reopen_and_two_processes" => [Durable, ConflictDetection] next_free;
        "durability::snapshots_survive_reopen" => [Durable, Snapshots] snapshots;
        "durability::persistence_ids_survive_reopen" => [Durable, QueryPersistenceIds] persistence_ids;
        "durability::tag_query_resumes_after_reopen" => [Durable, QueryEventsByTag] tag_resume;
        "durability::events_by_id_resume_after_reopen" => [Durable, QueryEventsByPersistenceId] by_id_resume;
        "durability::live_tag_query_resumes_after_reopen" => [Durable, QueryEventsByTag, LiveQueries] live_tag_resume;
    ]
}

/// Events 1..5 of `id` as {1}, {2}, {3}, {4, 5}, carrying every field the API has (tags
/// and metadata where the backend supports them), returned as written.
async fn write_rich(ctx: &Ctx, id: &PersistenceId) -> Vec<PersistentEvent> {
    let events: Vec<PersistentEvent> = (1..=5)
        .map(|seq| {
            let mut e = ctx
                .event(id, seq)
                .with_timestamp(Timestamp::from_millis(1_650_000_000_000 + seq as i64));
            e.event_manifest = format!("manifest-{seq}");
            if ctx.caps.tags {
                e = e.with_tags([ctx.tag("durable")]);
            }
            if ctx.caps.event_metadata && seq % 2 == 1 {
                e = e.with_metadata(Payload::new("m", "m/v1", vec![seq as u8; 3]));
            }
            e
        })
        .collect();
    let multi = ctx.caps.atomic_write_max_events.is_none_or(|m| m >= 2);
    let groups: Vec<Vec<PersistentEvent>> = if multi {
        vec![
            events[0..1].to_vec(),
            events[1..2].to_vec(),
            events[2..3].to_vec(),
            events[3..5].to_vec(),
        ]
    } else {
        events.iter().map(|e| vec![e.clone()]).collect()
    };
    for g in groups {
        ctx.stores
            .journal
            .write(AtomicWrite::new(g).unwrap())
            .await
            .expect("write");
    }
    events
}

async fn events_survive(ctx: Ctx) {
    let id = ctx.pid("p");
    let written = write_rich(&ctx, &id).await;
    let other = ctx.pid("q");
    ctx.write(&other, 1, 2).await;
    let reopened = ctx.reopen().await;
    assert_eq!(
        reopened.journal.highest_sequence_nr(&id).await.unwrap(),
        5,
        "the highest after the restart"
    );
    let (events, highest) = replay_of(&reopened, &id).await;
    assert_eq!(highest, 5);
    let mut events = events;
    for e in &mut events {
        e.tags.sort();
    }
    assert_eq!(
        events, written,
        "every event, every field, after the restart"
    );
    let (q, q_highest) = replay_of(&reopened, &other).await;
    assert_eq!(
        (
            q.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
            q_highest
        ),
        (vec![1, 2], 2)
    );
    assert_eq!(
        reopened
            .journal
            .highest_sequence_nr(&ctx.pid("never"))
            .await
            .unwrap(),
        0
    );
}

/// Expects a write of `seq` by `stores` to be a `Conflict`.
async fn expect_conflict(ctx: &Ctx, stores: &Stores, id: &PersistenceId, from: u64, to: u64) {
    let mut events: Vec<PersistentEvent> = (from..=to).map(|s| ctx.event(id, s)).collect();
    for e in &mut events {
        e.payload = Payload::raw(b"intruder".to_vec());
        e.writer_id = "w2".into();
    }
    let err = stores
        .journal
        .write(AtomicWrite::new(events).unwrap())
        .await
        .expect_err("a taken number is refused after the restart");
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "{from}..={to} is taken: {err}"
    );
}

async fn taken_conflict(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let reopened = ctx.reopen().await;
    for seq in [1, 3, 5] {
        expect_conflict(&ctx, &reopened, &id, seq, seq).await;
    }
    if ctx.caps.atomic_write_max_events.is_none_or(|m| m >= 2) {
        expect_conflict(&ctx, &reopened, &id, 5, 6).await;
    }
    let (events, highest) = replay_of(&reopened, &id).await;
    assert_eq!(highest, 5);
    assert!(
        events
            .iter()
            .all(|e| e.payload == Ctx::payload(&id, e.sequence_nr) && e.writer_id == "w1"),
        "nothing overwritten"
    );
    assert_eq!(events.len(), 5);
}

async fn partial_delete(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 3)
        .await
        .expect("delete");
    let reopened = ctx.reopen().await;
    let (events, highest) = replay_of(&reopened, &id).await;
    assert_eq!(
        (
            events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
            highest
        ),
        (vec![4, 5], 5),
        "the delete survives the restart"
    );
    for seq in [2, 3] {
        expect_conflict(&ctx, &reopened, &id, seq, seq).await;
    }
    if ctx.caps.query_events_by_persistence_id {
        assert_eq!(
            keys(&by_id(&reopened, &id, 0, u64::MAX).await),
            vec![(id.to_string(), 4), (id.to_string(), 5)]
        );
    }
}

async fn next_free(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let reopened = ctx.reopen().await;
    reopened
        .journal
        .write(ctx.atomic(&id, 6, 6))
        .await
        .expect("the next free number after the restart is 6");
    // The first stores are still open: another process on the same data.
    assert_eq!(
        ctx.highest(&id).await,
        6,
        "the first stores see the other's write"
    );
    expect_conflict(&ctx, &ctx.stores, &id, 6, 6).await;
    ctx.write(&id, 7, 7).await;
    expect_conflict(&ctx, &reopened, &id, 7, 7).await;
    reopened
        .journal
        .write(ctx.atomic(&id, 8, 8))
        .await
        .expect("8 is free");
    let (events, highest) = replay_of(&reopened, &id).await;
    assert_eq!(highest, 8);
    assert_eq!(
        events.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(events
        .iter()
        .all(|e| e.payload == Ctx::payload(&id, e.sequence_nr)));
}

async fn snapshots(ctx: Ctx) {
    let id = ctx.pid("p");
    let mut saved = Vec::new();
    for seq in [3u64, 7, 9] {
        let mut meta = SnapshotMetadata::new(id.clone(), seq)
            .with_timestamp(Timestamp::from_millis(1_600_000_000_000 + seq as i64));
        if ctx.caps.snapshot_metadata {
            meta.metadata = Some(Payload::new("m", "m/v1", vec![seq as u8]));
        }
        let snap = Payload::new("tck", "state/v1", format!("state-{seq}").into_bytes());
        ctx.stores
            .snapshots
            .save_snapshot(meta.clone(), snap.clone())
            .await
            .expect("save");
        saved.push((meta, snap));
    }
    let meta9 = saved[2].0.clone();
    ctx.stores
        .snapshots
        .delete_snapshot(&meta9)
        .await
        .expect("delete 9");
    let reopened = ctx.reopen().await;
    let latest = reopened
        .snapshots
        .load_snapshot(&id, Criteria::latest())
        .await
        .expect("load")
        .expect("a snapshot after the restart");
    assert_eq!(
        (latest.metadata, latest.snapshot),
        saved[1].clone(),
        "7 is the latest (9 was deleted)"
    );
    let at3 = reopened
        .snapshots
        .load_snapshot(&id, Criteria::latest().with_max_sequence_nr(6))
        .await
        .expect("load")
        .expect("3");
    assert_eq!((at3.metadata, at3.snapshot), saved[0].clone());
}

async fn persistence_ids(ctx: Ctx) {
    let before: Vec<PersistenceId> = (0..5).map(|i| ctx.pid(&format!("id{i}"))).collect();
    for id in &before {
        ctx.write(id, 1, 1).await;
    }
    let reopened = ctx.reopen().await;
    let expected: std::collections::BTreeSet<String> =
        before.iter().map(|i| i.to_string()).collect();
    assert_eq!(ids(&reopened).await, expected, "every id after the restart");
    // A known id writing again adds nothing; a new id appears once.
    reopened
        .journal
        .write(ctx.atomic(&before[0], 2, 2))
        .await
        .expect("write");
    let new = ctx.pid("new");
    reopened
        .journal
        .write(ctx.atomic(&new, 1, 1))
        .await
        .expect("write");
    let mut expected = expected;
    expected.insert(new.to_string());
    assert_eq!(ids(&reopened).await, expected);
    assert_eq!(
        ids(&ctx.stores).await,
        expected,
        "the first stores see the new id"
    );
}

async fn tag_resume(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let t = ctx.tag("t");
    for seq in 1..=3 {
        ctx.write_tagged(&a, seq, &[&t]).await;
        ctx.write_tagged(&b, seq, &[&t]).await;
    }
    let before = ctx.by_tag(&t, Offset::NoOffset).await;
    assert_eq!(before.len(), 6);
    let resume_at = before[2].offset.clone();
    let reopened = ctx.reopen().await;
    for seq in 4..=5 {
        write_tagged(&reopened, ctx.event(&a, seq), &[&t]).await;
        write_tagged(&reopened, ctx.event(&b, seq), &[&t]).await;
    }
    let rest = by_tag(&reopened, &t, resume_at).await;
    let mut want = keys(&before[3..]);
    for seq in 4..=5 {
        want.push((a.to_string(), seq));
        want.push((b.to_string(), seq));
    }
    let mut got = keys(&rest);
    assert_per_id_order(&rest);
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "resumed after the restart from an offset taken before it: the rest, once each"
    );
    assert_eq!(
        keys(&rest[..3]),
        keys(&before[3..]),
        "the events after the offset come first, in the order they had"
    );
    // From the last offset of the first stores' order, only what was written after.
    let all = by_tag(&reopened, &t, Offset::NoOffset).await;
    assert_eq!(keys(&all[..6]), keys(&before), "the old order is kept");
}

async fn by_id_resume(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let before = ctx.by_id(&id, 1, u64::MAX).await;
    let Offset::Sequence(resume) = before[2].offset.clone() else {
        panic!(
            "events-by-id offsets are sequence numbers: {:?}",
            before[2].offset
        );
    };
    let reopened = ctx.reopen().await;
    reopened
        .journal
        .write(ctx.atomic(&id, 6, 6))
        .await
        .expect("write");
    let rest = by_id(&reopened, &id, resume + 1, u64::MAX).await;
    assert_eq!(
        rest.iter().map(|e| e.sequence_nr()).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(rest
        .iter()
        .all(|e| e.event.payload == Ctx::payload(&id, e.sequence_nr())));
}

async fn live_tag_resume(ctx: Ctx) {
    let a = ctx.pid("a");
    let t = ctx.tag("t");
    for seq in 1..=3 {
        ctx.write_tagged(&a, seq, &[&t]).await;
    }
    let before = ctx.by_tag(&t, Offset::NoOffset).await;
    let reopened = ctx.reopen().await;
    let mut live = reopened
        .read_journal
        .events_by_tag(t.clone(), before[0].offset.clone());
    for seq in 2..=3 {
        let e = next_within(&mut live, CATCH_UP)
            .await
            .expect("a stored event");
        assert_eq!(keys(&[e]), vec![(a.to_string(), seq)]);
    }
    // Written by the first stores (another process), seen by the reopened live query.
    ctx.write_tagged(&a, 4, &[&t]).await;
    let e = ctx.next_live(&mut live, Instant::now(), "event 4").await;
    assert_eq!(keys(&[e]), vec![(a.to_string(), 4)]);
    ctx.assert_quiet(&mut live, "nothing more was written")
        .await;
}
