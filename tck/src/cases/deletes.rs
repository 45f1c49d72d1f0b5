//! Deletes: to exactly the highest and beyond it, of one id among ids that share a
//! prefix, racing writes, and what replays, current and live queries (by id and by tag)
//! deliver while a delete runs and after it (the `Journal::delete_events_to` docs).

use persistence_api::ReadJournalExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use persistence_api::{
    ErrorKind, EventEnvelope, JournalExt, Offset, PersistenceId, SnapshotMetadata,
    SnapshotSelectionCriteria as Criteria,
};

use super::{cases, Case};
use crate::context::{collect, keys, next_within, Ctx, CATCH_UP};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "deletes::delete_to_exactly_the_highest_then_write_on" => [DeleteEvents] to_highest;
        "deletes::finite_delete_beyond_the_highest_then_write_on" => [DeleteEvents] beyond_highest;
        "deletes::finite_delete_beyond_the_highest_survives_reopen" => [DeleteEvents, Durable] beyond_highest_reopen;
        "deletes::delete_of_an_unknown_id_then_write_from_1" => [DeleteEvents] unknown_id;
        "deletes::delete_touches_only_its_own_id" => [DeleteEvents] only_its_id;
        "deletes::snapshots_survive_deleting_events" => [DeleteEvents, Snapshots] snapshots_stay;
        "deletes::id_stays_listed_after_deleting_everything" => [DeleteEvents, QueryPersistenceIds] id_stays_listed;
        "deletes::deletes_racing_writes_remove_nothing_above_to" => [DeleteEvents] racing_writes;
        "deletes::replay_during_a_delete" => [DeleteEvents] replay_during;
        "deletes::current_events_by_id_during_a_delete" => [DeleteEvents, QueryEventsByPersistenceId] by_id_during;
        "deletes::live_events_by_id_across_a_delete" => [DeleteEvents, QueryEventsByPersistenceId, LiveQueries] by_id_live;
        "deletes::tag_query_after_a_delete_all_or_none_of_the_deleted" => [DeleteEvents, QueryEventsByTag] by_tag_after;
        "deletes::tag_query_after_deleting_more_than_a_page" => [DeleteEvents, QueryEventsByTag] by_tag_after_page;
        "deletes::live_events_by_tag_across_a_delete" => [DeleteEvents, QueryEventsByTag, LiveQueries] by_tag_live;
    ]
}

async fn delete(ctx: &Ctx, id: &PersistenceId, to: u64) {
    ctx.stores
        .journal
        .delete_events_to(id, to)
        .await
        .unwrap_or_else(|e| panic!("delete {id} to {to}: {e}"));
}

fn seqs(envs: &[EventEnvelope]) -> Vec<u64> {
    envs.iter().map(|e| e.sequence_nr()).collect()
}

/// After 1..5 and a delete to 5, the id replays nothing with highest 5; 5 stays taken
/// (with conflict detection), and the next writes continue at 6 and replay and query.
async fn to_highest(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    delete(&ctx, &id, 5).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![], 5));
    assert_eq!(ctx.highest(&id).await, 5);
    if ctx.caps.conflict_detection {
        let err = ctx
            .stores
            .journal
            .write(ctx.atomic(&id, 5, 5))
            .await
            .expect_err("5 is taken: its event was deleted");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    }
    ctx.write(&id, 6, 6).await;
    ctx.write(&id, 7, 8).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![6, 7, 8], 8));
    assert_eq!(ctx.replay(&id, 6, 6, MAX).await, (vec![6], 8));
    if ctx.caps.query_events_by_persistence_id {
        assert_eq!(seqs(&ctx.by_id(&id, 0, MAX).await), vec![6, 7, 8]);
    }
}

/// A delete to 100 when the highest is 5 deletes 1..5 and nothing else: the highest stays
/// 5 (not 100), and writes of 6 up to 101 (past the delete's `to`) are stored and replay.
async fn beyond_highest(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    delete(&ctx, &id, 100).await;
    assert_eq!(
        ctx.highest(&id).await,
        5,
        "the highest does not become `to`"
    );
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![], 5));
    ctx.write(&id, 6, 6).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![6], 6));
    ctx.write_chunked(&id, 7, 101, 20).await;
    let want: Vec<u64> = (6..=101).collect();
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (want.clone(), 101));
    assert_eq!(ctx.replay(&id, 99, 100, MAX).await, (vec![99, 100], 101));
    if ctx.caps.query_events_by_persistence_id {
        assert_eq!(seqs(&ctx.by_id(&id, 0, MAX).await), want);
    }
}

/// The same after a restart: new stores do not find 6..100 deleted.
async fn beyond_highest_reopen(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    delete(&ctx, &id, 100).await;
    let stores = ctx.reopen().await;
    assert_eq!(stores.journal.highest_sequence_nr(&id).await.unwrap(), 5);
    crate::context::write_tagged(&stores, ctx.event(&id, 6), &[]).await;
    crate::context::write_tagged(&stores, ctx.event(&id, 7), &[]).await;
    let (events, highest) = crate::context::replay_of(&stores, &id).await;
    let got: Vec<u64> = events.iter().map(|e| e.sequence_nr).collect();
    assert_eq!((got, highest), (vec![6, 7], 7));
    let (events, _) = crate::context::replay_of(&ctx.stores, &id).await;
    assert_eq!(events.len(), 2, "and the first stores see them too");
}

/// Deleting an id that has no events succeeds, leaves its highest 0, and its first write
/// at 1 is stored: the delete took no numbers.
async fn unknown_id(ctx: Ctx) {
    let id = ctx.pid("never");
    delete(&ctx, &id, 10).await;
    assert_eq!(ctx.highest(&id).await, 0);
    ctx.write(&id, 1, 1).await;
    ctx.write(&id, 2, 2).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![1, 2], 2));
}

/// Deleting everything of one id leaves ids that share its prefix (or extend it with a
/// separator) untouched: their events, highest and queries.
async fn only_its_id(ctx: Ctx) {
    let id = ctx.pid("p");
    let others: Vec<PersistenceId> = ["p1", "p-1", "p|x", "p#", "pp"]
        .iter()
        .map(|n| ctx.pid(n))
        .collect();
    let before = PersistenceId::new(format!("{}-o", ctx.namespace)).unwrap();
    ctx.write_1_to_5(&before).await;
    ctx.write_1_to_5(&id).await;
    for o in &others {
        ctx.write_1_to_5(o).await;
    }
    delete(&ctx, &id, MAX).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![], 5));
    for o in others.iter().chain([&before]) {
        assert_eq!(
            ctx.replay(o, 1, MAX, MAX).await,
            (vec![1, 2, 3, 4, 5], 5),
            "{o} is untouched"
        );
        if ctx.caps.query_events_by_persistence_id {
            assert_eq!(
                seqs(&ctx.by_id(o, 0, MAX).await),
                vec![1, 2, 3, 4, 5],
                "{o}"
            );
        }
    }
}

/// Deleting events leaves the id's snapshots as they were.
async fn snapshots_stay(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let meta = SnapshotMetadata::new(id.clone(), 3);
    let snapshot = persistence_api::Payload::raw(b"state at 3".to_vec());
    ctx.stores
        .snapshots
        .save_snapshot(meta, snapshot.clone())
        .await
        .expect("save");
    delete(&ctx, &id, MAX).await;
    let loaded = ctx
        .stores
        .snapshots
        .load_snapshot(&id, Criteria::latest())
        .await
        .expect("load")
        .expect("the snapshot is still there");
    assert_eq!(loaded.metadata.sequence_nr, 3);
    assert_eq!(loaded.snapshot, snapshot);
}

/// An id whose events were all deleted is still listed by `current_persistence_ids` (its
/// highest survives), once.
async fn id_stays_listed(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    ctx.write_1_to_5(&a).await;
    ctx.write_1_to_5(&b).await;
    delete(&ctx, &a, MAX).await;
    let want: std::collections::BTreeSet<String> = [a.to_string(), b.to_string()].into();
    assert_eq!(ctx.ids().await, want);
}

/// A writer writes 1..=60 one event at a time while a deleter repeatedly deletes up to two
/// below the highest it just read; after each write the writer waits until the deleter has
/// started another round, so writes and deletes interleave on any store. Every write
/// succeeds, and at the end the id replays exactly what lies above the largest `to`.
async fn racing_writes(ctx: Ctx) {
    const N: u64 = 60;
    let id = ctx.pid("p");
    let ctx = Arc::new(ctx);
    let rounds = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let deleter = {
        let (ctx, id, rounds, written) = (ctx.clone(), id.clone(), rounds.clone(), written.clone());
        tokio::spawn(async move {
            let mut largest = 0u64;
            let mut during = std::collections::BTreeSet::new();
            loop {
                let finished = written.load(Ordering::SeqCst) == N;
                rounds.fetch_add(1, Ordering::SeqCst);
                let to = ctx.highest(&id).await.saturating_sub(2);
                delete(&ctx, &id, to).await;
                largest = largest.max(to);
                if !finished && to > 0 {
                    during.insert(to);
                }
                if finished {
                    return (largest, during.len());
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for seq in 1..=N {
        ctx.write(&id, seq, seq).await;
        written.store(seq, Ordering::SeqCst);
        let seen = rounds.load(Ordering::SeqCst);
        while rounds.load(Ordering::SeqCst) <= seen && !deleter.is_finished() {
            tokio::task::yield_now().await;
        }
    }
    let (largest, during) = deleter.await.expect("the deleter");
    assert!(
        during >= 2,
        "only {during} deletes ran between writes, so nothing raced"
    );
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        ((largest + 1..=N).collect::<Vec<_>>(), N),
        "everything above the largest delete's `to` ({largest}) is there"
    );
}

/// Writes a page and ten more events, returns `(n, to)`: the delete of the "during" cases
/// goes to five below the top, so the second page is read after it.
async fn long_history(ctx: &Ctx, id: &PersistenceId) -> (u64, u64) {
    let n = ctx.page_size() as u64 + 10;
    ctx.write_chunked(id, 1, n, 100).await;
    (n, n - 5)
}

/// Checks what a read running while a delete to `to` happened delivered: in order, each
/// number once and its own event, and every event above `to` (deleted ones it had read
/// before may be among them).
fn check_during(got: &[(u64, Vec<u8>)], id: &PersistenceId, n: u64, to: u64, what: &str) {
    let mut last = 0;
    for (seq, bytes) in got {
        assert!(*seq > last, "{what}: {seq} after {last}");
        last = *seq;
        assert_eq!(
            bytes,
            &Ctx::payload(id, *seq).bytes.to_vec(),
            "{what}: event {seq} whole"
        );
    }
    let above: Vec<u64> = got.iter().map(|(s, _)| *s).filter(|s| *s > to).collect();
    assert_eq!(
        above,
        (to + 1..=n).collect::<Vec<_>>(),
        "{what}: every event above the delete's `to`"
    );
}

/// A replay has delivered its first event when the id is deleted to five below its top
/// (a page and ten events): the replay goes on without failing, reports the highest it
/// started with, and delivers every event above `to`.
async fn replay_during(ctx: Ctx) {
    use futures::StreamExt;
    let id = ctx.pid("p");
    let (n, to) = long_history(&ctx, &id).await;
    let mut replay = ctx
        .stores
        .journal
        .replay(&id, 1, MAX, MAX)
        .await
        .expect("replay");
    assert_eq!(replay.highest_sequence_nr, n);
    let first = replay.events.next().await.expect("a first event").unwrap();
    delete(&ctx, &id, to).await;
    let rest = collect(replay.events).await.expect("the replay goes on");
    let got: Vec<(u64, Vec<u8>)> = std::iter::once(first)
        .chain(rest)
        .map(|e| (e.sequence_nr, e.payload.bytes.to_vec()))
        .collect();
    check_during(&got, &id, n, to, "the replay");
    assert_eq!(
        ctx.replay(&id, 1, MAX, MAX).await,
        ((to + 1..=n).collect::<Vec<_>>(), n),
        "a replay after the delete"
    );
}

/// The same for a current events-by-id query.
async fn by_id_during(ctx: Ctx) {
    use futures::StreamExt;
    let id = ctx.pid("p");
    let (n, to) = long_history(&ctx, &id).await;
    let mut s = ctx
        .stores
        .read_journal
        .current_events_by_persistence_id(id.clone(), 1, MAX);
    let first = s.next().await.expect("a first envelope").unwrap();
    delete(&ctx, &id, to).await;
    let rest = collect(s).await.expect("the query goes on");
    let got: Vec<(u64, Vec<u8>)> = std::iter::once(first)
        .chain(rest)
        .map(|e| (e.sequence_nr(), e.event.payload.bytes.to_vec()))
        .collect();
    check_during(&got, &id, n, to, "the query");
    assert_eq!(
        seqs(&ctx.by_id(&id, 1, MAX).await),
        (to + 1..=n).collect::<Vec<_>>(),
        "a query after the delete"
    );
}

/// A live events-by-id query that delivered 1..5 delivers nothing for a delete to 3 and
/// goes on with 6; a live query started after the delete delivers 4, 5, 6 and then 7.
async fn by_id_live(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let mut before = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 1, MAX);
    for seq in 1..=5 {
        let e = next_within(&mut before, CATCH_UP).await.expect("stored");
        assert_eq!(e.sequence_nr(), seq);
    }
    delete(&ctx, &id, 3).await;
    ctx.assert_quiet(&mut before, "a delete delivers nothing")
        .await;
    ctx.write(&id, 6, 6).await;
    let e = ctx.next_live(&mut before, Instant::now(), "event 6").await;
    assert_eq!(e.sequence_nr(), 6);
    let mut after = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 0, MAX);
    for seq in [4, 5, 6] {
        let e = next_within(&mut after, CATCH_UP).await.expect("stored");
        assert_eq!(e.sequence_nr(), seq, "deleted events are not delivered");
    }
    ctx.assert_quiet(&mut after, "caught up").await;
    ctx.write(&id, 7, 7).await;
    let acked = Instant::now();
    for s in [&mut before, &mut after] {
        assert_eq!(ctx.next_live(s, acked, "event 7").await.sequence_nr(), 7);
    }
}

/// Writes `a` and `b` alternately, `per` events each, all tagged `tag`; returns the keys in
/// write order.
async fn tagged_pair(
    ctx: &Ctx,
    a: &PersistenceId,
    b: &PersistenceId,
    tag: &str,
    per: u64,
) -> Vec<(String, u64)> {
    let mut written = Vec::new();
    for seq in 1..=per {
        for id in [a, b] {
            ctx.write_tagged(id, seq, &[tag]).await;
            written.push((id.to_string(), seq));
        }
    }
    written
}

/// The tag query contract after a delete: every event that was not deleted, in write
/// order, and of the deleted events all or none (`deleted` says which keys were deleted);
/// each envelope carries its own event. Returns whether the deleted ones were delivered.
fn all_or_none(
    got: &[EventEnvelope],
    written: &[(String, u64)],
    deleted: impl Fn(&(String, u64)) -> bool,
    what: &str,
) -> bool {
    for e in got {
        let id = e.persistence_id();
        assert_eq!(
            e.event.payload,
            Ctx::payload(id, e.sequence_nr()),
            "{what}: {id} {} carries its own event",
            e.sequence_nr()
        );
    }
    let kept: Vec<(String, u64)> = written.iter().filter(|k| !deleted(k)).cloned().collect();
    let got = keys(got);
    if got == kept {
        return false;
    }
    if got != written {
        let deleted_got = got.iter().filter(|k| deleted(k)).count();
        let kept_got = got.len() - deleted_got;
        let first_missing = kept.iter().find(|k| !got.contains(k));
        panic!(
            "{what}: every event not deleted, in write order, and of the deleted ones all or none: got {kept_got} \
             of the {} kept events (first missing: {first_missing:?}) and {deleted_got} of the {} \
             deleted ones, {} envelopes in all",
            kept.len(),
            written.len() - kept.len(),
            got.len()
        );
    }
    true
}

/// Ids `a` and `b` write 1..6 tagged alternately; `a` is deleted to 3. A current tag query
/// then delivers every event not deleted, in write order, and either all of `a` 1..3 or
/// none of them; resuming from each envelope's offset delivers the rest of that result;
/// a later tagged write is found after them.
async fn by_tag_after(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let tag = ctx.tag("t");
    let written = tagged_pair(&ctx, &a, &b, &tag, 6).await;
    let offsets_before = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(keys(&offsets_before), written);
    delete(&ctx, &a, 3).await;
    let a_key = a.to_string();
    let deleted = |k: &(String, u64)| k.0 == a_key && k.1 <= 3;
    let got = ctx.by_tag(&tag, Offset::NoOffset).await;
    let kept_deleted = all_or_none(&got, &written, deleted, "after the delete");
    for (i, e) in got.iter().enumerate() {
        let rest = ctx.by_tag(&tag, e.offset.clone()).await;
        assert_eq!(
            keys(&rest),
            keys(&got[i + 1..]),
            "resumed after envelope {i}"
        );
    }
    // An offset taken before the delete, at a deleted event, still resumes right after it.
    let at_a2 = &offsets_before[2];
    assert_eq!(keys(std::slice::from_ref(at_a2)), vec![(a.to_string(), 2)]);
    let rest = ctx.by_tag(&tag, at_a2.offset.clone()).await;
    let mut want: Vec<(String, u64)> = written[3..].to_vec();
    if !kept_deleted {
        want.retain(|k| !deleted(k));
    }
    assert_eq!(keys(&rest), want, "resumed from a deleted event's offset");
    ctx.write_tagged(&a, 7, &[&tag]).await;
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(keys(&all).last(), Some(&(a.to_string(), 7)));
    assert_eq!(all.len(), got.len() + 1);
}

/// More than a page of one id's tagged events deleted, then three kept and one of another
/// id: a current tag query still reaches them (a query must not take a page of deleted
/// entries for the end), with all or none of the deleted ones.
async fn by_tag_after_page(ctx: Ctx) {
    let id = ctx.pid("p");
    let other = ctx.pid("q");
    let tag = ctx.tag("t");
    let n = ctx.page_size() as u64 + 5;
    let max = ctx
        .caps
        .atomic_write_max_events
        .map_or(100, |m| (m as u64).min(100));
    let mut s = 1;
    while s <= n {
        let end = (s + max - 1).min(n);
        let events = (s..=end)
            .map(|q| ctx.event(&id, q).with_tags([tag.clone()]))
            .collect();
        ctx.stores
            .journal
            .write(persistence_api::AtomicWrite::new(events).unwrap())
            .await
            .expect("write");
        s = end + 1;
    }
    ctx.write_tagged(&other, 1, &[&tag]).await;
    let mut written: Vec<(String, u64)> = (1..=n).map(|q| (id.to_string(), q)).collect();
    written.push((other.to_string(), 1));
    let to = n - 3;
    delete(&ctx, &id, to).await;
    let id_key = id.to_string();
    let got = ctx.by_tag(&tag, Offset::NoOffset).await;
    all_or_none(
        &got,
        &written,
        |k| k.0 == id_key && k.1 <= to,
        "after deleting more than a page",
    );
}

/// A live tag query that delivered `a` 1..3 and `b` 1..3 delivers nothing for a delete of
/// `a` to 2 and goes on with a later write; a live tag query started after the delete
/// delivers all or none of the deleted events, the rest in order, then the later writes.
async fn by_tag_live(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let tag = ctx.tag("t");
    let mut written = tagged_pair(&ctx, &a, &b, &tag, 3).await;
    let mut before = ctx
        .stores
        .read_journal
        .events_by_tag(tag.clone(), Offset::NoOffset);
    let mut got = Vec::new();
    for _ in 0..written.len() {
        got.push(next_within(&mut before, CATCH_UP).await.expect("stored"));
    }
    assert_eq!(keys(&got), written);
    delete(&ctx, &a, 2).await;
    ctx.assert_quiet(&mut before, "a delete delivers nothing")
        .await;
    ctx.write_tagged(&a, 4, &[&tag]).await;
    let e = ctx.next_live(&mut before, Instant::now(), "a 4").await;
    assert_eq!(keys(&[e]), vec![(a.to_string(), 4)]);
    written.push((a.to_string(), 4));

    let a_key = a.to_string();
    let deleted = |k: &(String, u64)| k.0 == a_key && k.1 <= 2;
    let kept = written.iter().filter(|k| !deleted(k)).count();
    let mut after = ctx
        .stores
        .read_journal
        .events_by_tag(tag.clone(), Offset::NoOffset);
    let mut got = Vec::new();
    for _ in 0..kept {
        got.push(next_within(&mut after, CATCH_UP).await.expect("stored"));
    }
    // With the deleted ones delivered, the first `kept` envelopes start with `a` 1.
    if keys(&got[..1]) == vec![(a.to_string(), 1)] {
        for _ in kept..written.len() {
            got.push(next_within(&mut after, CATCH_UP).await.expect("stored"));
        }
    }
    all_or_none(&got, &written, deleted, "a live query after the delete");
    ctx.assert_quiet(&mut after, "caught up").await;
    ctx.write_tagged(&b, 4, &[&tag]).await;
    let acked = Instant::now();
    for s in [&mut before, &mut after] {
        let e = ctx.next_live(s, acked, "b 4").await;
        assert_eq!(keys(&[e]), vec![(b.to_string(), 4)]);
    }
}
