//! Durable-state cases: [`persistence_api::DurableStateStore`] through
//! `Stores::durable_state`. Revisions are checked at every edge (create twice, stale or
//! future revisions, delete and go on), racing writers have one winner per revision, the
//! payload comes back as written, the size limit holds, states survive a reopen, and
//! change queries give each id's latest change in order, resuming exactly, live within
//! the declared delay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistence_api::{
    DurableStateChange, ErrorKind, Offset, Payload, PersistenceId, QueryMode, Timestamp,
};

use super::{cases, Case};
use crate::context::{collect, next_within, Ctx, CATCH_UP};

pub fn cases() -> Vec<Case> {
    cases![
        "durable_state::never_written_reads_none" => [DurableState] never_written;
        "durable_state::revision_1_creates_and_creating_twice_is_a_conflict" => [DurableState] create_twice;
        "durable_state::stale_or_future_revision_is_a_conflict_naming_both" => [DurableState] stale_or_future;
        "durable_state::payload_tag_and_timestamp_round_trip" => [DurableState] round_trip;
        "durable_state::delete_is_a_revision_and_the_count_goes_on" => [DurableState] delete_goes_on;
        "durable_state::racing_writers_one_winner_per_revision" => [DurableState] racing_writers;
        "durable_state::bad_input_is_refused_before_the_backend" => [DurableState] bad_input;
        "durable_state::state_at_the_declared_size_limit_and_over" => [StateSizeLimit] size_limit;
        "durable_state::state_of_1_mb_round_trips" => [LargeStates] large_state;
        "durable_state::states_survive_reopen" => [DurableState, Durable] survive_reopen;
        "durable_state::current_changes_give_each_id_once_at_its_latest" => [DurableStateChanges] latest_per_id;
        "durable_state::changes_resume_from_every_offset" => [DurableStateChanges] resume_everywhere;
        "durable_state::deletes_appear_as_changes" => [DurableStateChanges] deletes_as_changes;
        "durable_state::changes_are_selected_by_tag" => [DurableStateChanges] by_tag;
        "durable_state::live_changes_arrive_within_the_declared_delay" => [DurableStateChanges, LiveQueries] live_delay;
        "durable_state::live_changes_of_16_concurrent_writers_reach_every_latest" => [DurableStateChanges, LiveQueries] live_many_writers;
    ]
}

fn state(id: &PersistenceId, revision: u64) -> Payload {
    Payload::new(
        "test",
        "test.State/v1",
        format!("{id}@{revision}").into_bytes(),
    )
}

async fn upsert(ctx: &Ctx, id: &PersistenceId, revision: u64, tag: Option<&str>) {
    ctx.stores
        .durable_state
        .upsert(id, revision, state(id, revision), tag.map(str::to_owned))
        .await
        .unwrap_or_else(|e| panic!("upsert {id} at revision {revision}: {e:#}"));
}

async fn revision_of(ctx: &Ctx, id: &PersistenceId) -> Option<u64> {
    ctx.stores
        .durable_state
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("get {id}: {e:#}"))
        .map(|s| s.revision)
}

async fn current_changes(ctx: &Ctx, tag: &str, offset: Offset) -> Vec<DurableStateChange> {
    collect(
        ctx.stores
            .durable_state
            .query_changes(tag.to_owned(), offset, QueryMode::Current),
    )
    .await
    .unwrap_or_else(|e| panic!("current changes of {tag}: {e:#}"))
}

fn keys(changes: &[DurableStateChange]) -> Vec<(String, u64, bool)> {
    changes
        .iter()
        .map(|c| (c.persistence_id.to_string(), c.revision, c.is_deleted()))
        .collect()
}

/// An id never written reads `None`.
async fn never_written(ctx: Ctx) {
    assert_eq!(revision_of(&ctx, &ctx.pid("nobody")).await, None);
}

/// Revision 1 creates; a second revision 1 is a `Conflict` naming revision 1 as stored,
/// and the first state stays.
async fn create_twice(ctx: Ctx) {
    let id = ctx.pid("twice");
    upsert(&ctx, &id, 1, None).await;
    let err = ctx
        .stores
        .durable_state
        .upsert(&id, 1, Payload::raw(b"other".to_vec()), None)
        .await
        .expect_err("creating twice");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    assert_eq!(err.persistence_id(), Some(id.as_str()), "{err:#}");
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (1, Some(state(&id, 1))));
}

/// At revision 3, writing 3 (stale), 2, 5 (future) or `u64::MAX` is a `Conflict` that
/// names the stored revision and the given one; nothing is written.
async fn stale_or_future(ctx: Ctx) {
    let id = ctx.pid("stale");
    for r in 1..=3 {
        upsert(&ctx, &id, r, None).await;
    }
    for given in [3, 2, 1, 5, u64::MAX] {
        let err = ctx
            .stores
            .durable_state
            .upsert(&id, given, Payload::raw(b"x".to_vec()), None)
            .await
            .expect_err("a revision other than 4");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
        let text = err.to_string();
        assert!(
            text.contains("revision 3") && text.contains(&format!("revision {given}")),
            "names the stored and the given revision: {text}"
        );
        let err = ctx
            .stores
            .durable_state
            .delete(&id, given)
            .await
            .expect_err("a delete at a revision other than 4");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    }
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (3, Some(state(&id, 3))));
    upsert(&ctx, &id, 4, None).await;
}

/// The serializer id, manifest and bytes (every byte value), the tag and a timestamp of
/// the write come back as written; a new revision replaces them all (the tag too).
async fn round_trip(ctx: Ctx) {
    let id = ctx.pid("round");
    let tag = ctx.tag("round");
    let payload = Payload::new("ser-ü", "a.B/v7", (0..=255u8).collect::<Vec<_>>());
    let before = Timestamp::now().as_millis();
    ctx.stores
        .durable_state
        .upsert(&id, 1, payload.clone(), Some(tag.clone()))
        .await
        .unwrap();
    let after = Timestamp::now().as_millis();
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!(got.persistence_id, id);
    assert_eq!(got.revision, 1);
    assert_eq!(got.payload, Some(payload));
    assert_eq!(got.tag, Some(tag));
    let ts = got.timestamp.as_millis();
    assert!(
        ts >= before - 5_000 && ts <= after + 5_000,
        "the timestamp {ts} is the write's ({before}..{after})"
    );
    upsert(&ctx, &id, 2, None).await;
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (got.revision, got.payload, got.tag),
        (2, Some(state(&id, 2)), None)
    );
}

/// A delete at the next revision leaves the revision with no payload; the next upsert is
/// at the revision after the delete, never at 1 again.
async fn delete_goes_on(ctx: Ctx) {
    let id = ctx.pid("del");
    upsert(&ctx, &id, 1, None).await;
    upsert(&ctx, &id, 2, None).await;
    ctx.stores.durable_state.delete(&id, 3).await.unwrap();
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.is_deleted()), (3, true));
    for given in [1, 3] {
        let err = ctx
            .stores
            .durable_state
            .upsert(&id, given, state(&id, given), None)
            .await
            .expect_err("the count goes on after a delete");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    }
    upsert(&ctx, &id, 4, None).await;
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (4, Some(state(&id, 4))));
    // Deleting an id never written: revision 1 is a delete.
    let never = ctx.pid("del-never");
    ctx.stores.durable_state.delete(&never, 1).await.unwrap();
    assert_eq!(revision_of(&ctx, &never).await, Some(1));
}

/// Eight writers race on each of five revisions of one id: each revision is won by
/// exactly one, the others get `Conflict`, and the stored state is the last winner's.
async fn racing_writers(ctx: Ctx) {
    let id = ctx.pid("race");
    let store = ctx.stores.durable_state.clone();
    let mut winners = Vec::new();
    for revision in 1..=5u64 {
        let tasks: Vec<_> = (0..8u8)
            .map(|w| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .upsert(&id, revision, Payload::raw(vec![w; 10]), None)
                        .await
                        .map(|()| w)
                })
            })
            .collect();
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => won.push(w),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e:#}"),
            }
        }
        assert_eq!(won.len(), 1, "revision {revision}: one winner, got {won:?}");
        winners.push(won[0]);
    }
    let got = store.get(&id).await.unwrap().unwrap();
    assert_eq!(got.revision, 5);
    assert_eq!(
        got.payload.unwrap().bytes.to_vec(),
        vec![winners[4]; 10],
        "the last winner's state"
    );
}

/// Revision 0, an empty payload and an empty tag are `InvalidInput` naming the id;
/// nothing is written.
async fn bad_input(ctx: Ctx) {
    let id = ctx.pid("bad");
    let store = &ctx.stores.durable_state;
    let cases = [
        store.upsert(&id, 0, state(&id, 0), None).await,
        store.upsert(&id, 1, Payload::raw(Vec::new()), None).await,
        store
            .upsert(&id, 1, state(&id, 1), Some(String::new()))
            .await,
        store.delete(&id, 0).await,
    ];
    for result in cases {
        let err = result.expect_err("bad input");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:#}");
        assert_eq!(err.persistence_id(), Some(id.as_str()), "{err:#}");
    }
    assert_eq!(revision_of(&ctx, &id).await, None, "nothing written");
    let err = collect(store.query_changes(String::new(), Offset::NoOffset, QueryMode::Current))
        .await
        .expect_err("a change query without a tag");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:#}");
}

/// A state of exactly the declared maximum is stored; one byte more is `Rejected` naming
/// both sizes, and the stored state stays.
async fn size_limit(ctx: Ctx) {
    let max = ctx.caps.max_state_size.expect("a declared max_state_size");
    let id = ctx.pid("limit");
    let at = Payload::new("s", "m", vec![7u8; max - 2]);
    assert_eq!(at.stored_size(), max);
    ctx.stores
        .durable_state
        .upsert(&id, 1, at.clone(), None)
        .await
        .unwrap_or_else(|e| panic!("a state of exactly {max} bytes: {e:#}"));
    let over = Payload::new("s", "m", vec![7u8; max - 1]);
    let err = ctx
        .stores
        .durable_state
        .upsert(&id, 2, over, None)
        .await
        .expect_err("one byte over the limit");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:#}");
    let text = err.to_string();
    assert!(
        text.contains(&(max + 1).to_string()) && text.contains(&max.to_string()),
        "{text}"
    );
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (1, Some(at)));
}

/// A state of 1 MB is stored and read back whole, and replaced by a small one.
async fn large_state(ctx: Ctx) {
    let id = ctx.pid("large");
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let payload = Payload::new("s", "m", big);
    ctx.stores
        .durable_state
        .upsert(&id, 1, payload.clone(), None)
        .await
        .unwrap();
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert!(got.payload == Some(payload), "1 MB round trip");
    upsert(&ctx, &id, 2, None).await;
    let got = ctx.stores.durable_state.get(&id).await.unwrap().unwrap();
    assert_eq!(got.payload, Some(state(&id, 2)));
}

/// New stores over the same namespace read the states, deletes and revisions, and refuse
/// a stale revision.
async fn survive_reopen(ctx: Ctx) {
    let (a, b) = (ctx.pid("keep-a"), ctx.pid("keep-b"));
    upsert(&ctx, &a, 1, Some(&ctx.tag("keep"))).await;
    upsert(&ctx, &a, 2, Some(&ctx.tag("keep"))).await;
    upsert(&ctx, &b, 1, None).await;
    ctx.stores.durable_state.delete(&b, 2).await.unwrap();
    let reopened = ctx.reopen().await;
    let got = reopened.durable_state.get(&a).await.unwrap().unwrap();
    assert_eq!((got.revision, got.payload), (2, Some(state(&a, 2))));
    assert_eq!(got.tag, Some(ctx.tag("keep")));
    let got = reopened.durable_state.get(&b).await.unwrap().unwrap();
    assert_eq!((got.revision, got.is_deleted()), (2, true));
    let err = reopened
        .durable_state
        .upsert(&a, 2, state(&a, 2), None)
        .await
        .expect_err("stale after reopening too");
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

/// a, b, c created, then a updated twice: the current changes give b, c, a, each once, a
/// at revision 3 (its latest).
async fn latest_per_id(ctx: Ctx) {
    let tag = ctx.tag("latest");
    let (a, b, c) = (ctx.pid("a"), ctx.pid("b"), ctx.pid("c"));
    upsert(&ctx, &a, 1, Some(&tag)).await;
    upsert(&ctx, &b, 1, Some(&tag)).await;
    upsert(&ctx, &c, 1, Some(&tag)).await;
    upsert(&ctx, &a, 2, Some(&tag)).await;
    upsert(&ctx, &a, 3, Some(&tag)).await;
    let changes = current_changes(&ctx, &tag, Offset::NoOffset).await;
    assert_eq!(
        keys(&changes),
        vec![
            (b.to_string(), 1, false),
            (c.to_string(), 1, false),
            (a.to_string(), 3, false)
        ]
    );
    assert_eq!(changes[2].payload, Some(state(&a, 3)));
    assert_eq!(changes[2].tag.as_deref(), Some(tag.as_str()));
}

/// Twelve changes to six ids: from each change's offset, the query gives exactly the
/// changes after it (as the query from the start lists them, each id at its latest).
async fn resume_everywhere(ctx: Ctx) {
    let tag = ctx.tag("resume");
    let ids: Vec<_> = (0..6).map(|i| ctx.pid(&format!("r{i}"))).collect();
    for round in 1..=2u64 {
        for id in &ids {
            upsert(&ctx, id, round, Some(&tag)).await;
        }
    }
    let all = current_changes(&ctx, &tag, Offset::NoOffset).await;
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|c| c.revision == 2));
    for (i, change) in all.iter().enumerate() {
        let rest = current_changes(&ctx, &tag, change.offset.clone()).await;
        assert_eq!(keys(&rest), keys(&all[i + 1..]), "after change {i}");
    }
    // A change after the last offset is the only one after it.
    let last = all.last().unwrap().offset.clone();
    upsert(&ctx, &ids[0], 3, Some(&tag)).await;
    let after = current_changes(&ctx, &tag, last).await;
    assert_eq!(keys(&after), vec![(ids[0].to_string(), 3, false)]);
}

/// A delete appears as the id's latest change, marked deleted, with the state's tag.
async fn deletes_as_changes(ctx: Ctx) {
    let tag = ctx.tag("dels");
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    upsert(&ctx, &a, 1, Some(&tag)).await;
    upsert(&ctx, &b, 1, Some(&tag)).await;
    let before = current_changes(&ctx, &tag, Offset::NoOffset).await;
    ctx.stores.durable_state.delete(&a, 2).await.unwrap();
    let changes = current_changes(&ctx, &tag, Offset::NoOffset).await;
    assert_eq!(
        keys(&changes),
        vec![(b.to_string(), 1, false), (a.to_string(), 2, true)]
    );
    let after = current_changes(&ctx, &tag, before[1].offset.clone()).await;
    assert_eq!(keys(&after), vec![(a.to_string(), 2, true)]);
}

/// Only states carrying the tag are listed; a state whose new revision carries the tag
/// appears under it.
async fn by_tag(ctx: Ctx) {
    let (t1, t2) = (ctx.tag("one"), ctx.tag("two"));
    let (a, b, c) = (ctx.pid("a"), ctx.pid("b"), ctx.pid("c"));
    upsert(&ctx, &a, 1, Some(&t1)).await;
    upsert(&ctx, &b, 1, Some(&t2)).await;
    upsert(&ctx, &c, 1, None).await;
    assert_eq!(
        keys(&current_changes(&ctx, &t1, Offset::NoOffset).await),
        vec![(a.to_string(), 1, false)]
    );
    assert_eq!(
        keys(&current_changes(&ctx, &t2, Offset::NoOffset).await),
        vec![(b.to_string(), 1, false)]
    );
    upsert(&ctx, &c, 2, Some(&t1)).await;
    let t1_changes = current_changes(&ctx, &t1, Offset::NoOffset).await;
    assert_eq!(
        keys(&t1_changes),
        vec![(a.to_string(), 1, false), (c.to_string(), 2, false)]
    );
}

/// A live change query started before the writes delivers each within the declared live
/// delay after its write was acknowledged, and first what was stored before it started.
async fn live_delay(ctx: Ctx) {
    let tag = ctx.tag("live");
    let old = ctx.pid("old");
    upsert(&ctx, &old, 1, Some(&tag)).await;
    let mut live =
        ctx.stores
            .durable_state
            .query_changes(tag.clone(), Offset::NoOffset, QueryMode::Live);
    let first = next_within(&mut live, CATCH_UP)
        .await
        .expect("the stored change");
    assert_eq!(first.persistence_id, old);
    let id = ctx.pid("new");
    for revision in 1..=3u64 {
        upsert(&ctx, &id, revision, Some(&tag)).await;
        let acked = Instant::now();
        let change = ctx
            .next_live(&mut live, acked, &format!("revision {revision}"))
            .await;
        assert_eq!(
            (change.persistence_id.clone(), change.revision),
            (id.clone(), revision)
        );
    }
}

/// Sixteen writers update their own id ten times each while a live change query runs:
/// for every id the query reaches revision 10, and the revisions it sees of one id only
/// go up.
async fn live_many_writers(ctx: Ctx) {
    let tag = ctx.tag("many");
    let mut live =
        ctx.stores
            .durable_state
            .query_changes(tag.clone(), Offset::NoOffset, QueryMode::Live);
    let ctx = Arc::new(ctx);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (ctx, tag) = (ctx.clone(), tag.clone());
            tokio::spawn(async move {
                let id = ctx.pid(&format!("w{w}"));
                for revision in 1..=10 {
                    upsert(&ctx, &id, revision, Some(&tag)).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + CATCH_UP + ctx.live_delay() * 4;
    while latest.len() < 16 || latest.values().any(|&r| r < 10) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "not every id reached revision 10 through the live query: {latest:?}"
        );
        let Some(change) = next_within(&mut live, left.min(Duration::from_secs(1))).await else {
            continue;
        };
        let seen = latest.entry(change.persistence_id.to_string()).or_default();
        assert!(
            change.revision > *seen,
            "{}: revision {} after {}",
            change.persistence_id,
            change.revision,
            seen
        );
        *seen = change.revision;
    }
}
