//! Read journal cases: persistence ids, events by persistence id, events by tag.

use persistence_api::ReadJournalExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, EventEnvelope, JournalExt, Offset, Payload, PersistenceId, Timestamp,
};

use super::{cases, Case};
use crate::context::{collect, keys, next_within, Ctx, CATCH_UP};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "query::current_persistence_ids" => [QueryPersistenceIds] current_ids;
        "query::current_persistence_ids_of_empty_store" => [QueryPersistenceIds] current_ids_empty;
        "query::live_persistence_ids" => [QueryPersistenceIds, LiveQueries] live_ids;
        "query::current_events_by_id_bounds" => [QueryEventsByPersistenceId] by_id_bounds;
        "query::current_events_by_id_empty_cases" => [QueryEventsByPersistenceId, DeleteEvents] by_id_empty;
        "query::current_events_by_id_skips_deleted" => [QueryEventsByPersistenceId, DeleteEvents] by_id_deleted;
        "query::current_events_by_id_stops_at_highest_when_started" => [QueryEventsByPersistenceId] by_id_stops;
        "query::live_events_by_id" => [QueryEventsByPersistenceId, LiveQueries] by_id_live;
        "query::live_events_by_id_of_id_without_events" => [QueryEventsByPersistenceId, LiveQueries] by_id_live_new;
        "query::live_events_by_id_completes_at_to" => [QueryEventsByPersistenceId, LiveQueries] by_id_live_to;
        "query::envelope_fields" => [QueryEventsByPersistenceId, Tags, EventMetadata] envelope_fields;
        "query::current_events_by_tag_exact_match" => [QueryEventsByTag] by_tag_exact;
        "query::current_events_by_tag_does_not_see_later_writes" => [QueryEventsByTag] by_tag_current_completes;
        "query::events_by_tag_resume_from_every_offset" => [QueryEventsByTag] by_tag_resume_every;
        "query::events_by_tag_per_id_order_under_concurrent_writers" => [QueryEventsByTag] by_tag_concurrent;
        "query::events_by_tag_of_unknown_tag_is_empty" => [QueryEventsByTag] by_tag_unknown;
        "query::live_events_by_tag" => [QueryEventsByTag, LiveQueries] by_tag_live;
        "query::live_events_by_tag_from_offset" => [QueryEventsByTag, LiveQueries] by_tag_live_offset;
        "query::live_events_by_tag_concurrent_writers" => [QueryEventsByTag, LiveQueries] by_tag_live_concurrent;
    ]
}

async fn ids_now(ctx: &Ctx) -> BTreeSet<String> {
    let ids = collect(ctx.stores.read_journal.current_persistence_ids())
        .await
        .expect("ids");
    let set: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(set.len(), ids.len(), "each id once: {ids:?}");
    set
}

async fn current_ids(ctx: Ctx) {
    let ids: Vec<_> = ["a", "b", "c"].iter().map(|n| ctx.pid(n)).collect();
    for id in &ids {
        ctx.write(id, 1, 1).await;
        ctx.write(id, 2, 2).await;
    }
    let expected: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(ids_now(&ctx).await, expected);
}

async fn current_ids_empty(ctx: Ctx) {
    assert_eq!(ids_now(&ctx).await, BTreeSet::new());
}

async fn live_ids(ctx: Ctx) {
    let a = ctx.pid("a");
    ctx.write(&a, 1, 1).await;
    let mut live = ctx.stores.read_journal.persistence_ids();
    let first = next_within(&mut live, CATCH_UP)
        .await
        .expect("the existing id");
    assert_eq!(first, a);
    // A further event of a known id emits nothing; a new id appears.
    ctx.write(&a, 2, 2).await;
    let b = ctx.pid("b");
    ctx.write(&b, 1, 1).await;
    let next: PersistenceId = ctx
        .next_live(&mut live, Instant::now(), "the new id's first event")
        .await;
    assert_eq!(next, b, "the new id, and not the known id again");
    ctx.write(&b, 2, 2).await;
    assert_eq!(
        next_within(&mut live, ctx.quiet_window()).await,
        None,
        "further events of known ids emit nothing, and the stream does not complete"
    );
}

async fn by_id(ctx: &Ctx, id: &PersistenceId, from: u64, to: u64) -> Vec<u64> {
    let s = ctx
        .stores
        .read_journal
        .current_events_by_persistence_id(id.clone(), from, to);
    collect(s)
        .await
        .expect("query")
        .iter()
        .map(|e| e.sequence_nr())
        .collect()
}

async fn by_id_bounds(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    assert_eq!(by_id(&ctx, &id, 0, MAX).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(by_id(&ctx, &id, 1, 3).await, vec![1, 2, 3]);
    assert_eq!(by_id(&ctx, &id, 2, 2).await, vec![2]);
    assert_eq!(by_id(&ctx, &id, 4, 9).await, vec![4, 5]);
    let s = ctx
        .stores
        .read_journal
        .current_events_by_persistence_id(id.clone(), 1, MAX);
    let envs = collect(s).await.expect("query");
    assert_eq!(
        envs.iter().map(|e| e.sequence_nr()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for e in &envs {
        assert_eq!(e.persistence_id(), &id);
        assert_eq!(e.offset, Offset::Sequence(e.sequence_nr()));
        assert_eq!(e.event.payload, Ctx::payload(&id, e.sequence_nr()));
    }
}

async fn by_id_empty(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    assert_eq!(
        by_id(&ctx, &ctx.pid("unknown"), 0, MAX).await,
        Vec::<u64>::new()
    );
    assert_eq!(by_id(&ctx, &id, 6, MAX).await, Vec::<u64>::new());
    assert_eq!(by_id(&ctx, &id, 4, 3).await, Vec::<u64>::new());
    ctx.stores
        .journal
        .delete_events_to(&id, 5)
        .await
        .expect("delete");
    assert_eq!(by_id(&ctx, &id, 0, MAX).await, Vec::<u64>::new());
}

async fn by_id_deleted(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    ctx.stores
        .journal
        .delete_events_to(&id, 2)
        .await
        .expect("delete");
    assert_eq!(by_id(&ctx, &id, 0, MAX).await, vec![3, 4, 5]);
}

async fn by_id_stops(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let mut s = ctx
        .stores
        .read_journal
        .current_events_by_persistence_id(id.clone(), 1, MAX);
    let first = s.next().await.expect("first").expect("ok");
    assert_eq!(first.sequence_nr(), 1);
    ctx.write(&id, 6, 7).await;
    let rest: Vec<u64> = collect(s)
        .await
        .expect("rest")
        .iter()
        .map(|e| e.sequence_nr())
        .collect();
    assert_eq!(
        rest,
        vec![2, 3, 4, 5],
        "a current query stops at the highest when it started"
    );
}

async fn by_id_live(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write_1_to_5(&id).await;
    let mut s = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 3, MAX);
    for expected in 3..=5 {
        let e = next_within(&mut s, CATCH_UP)
            .await
            .expect("an existing event");
        assert_eq!(e.sequence_nr(), expected);
    }
    ctx.assert_quiet(&mut s, "nothing was written").await;
    for seq in 6..=7 {
        ctx.write(&id, seq, seq).await;
        let e = ctx
            .next_live(&mut s, Instant::now(), &format!("event {seq}"))
            .await;
        assert_eq!(e.sequence_nr(), seq);
    }
    ctx.assert_quiet(&mut s, "never completes").await;
}

async fn by_id_live_new(ctx: Ctx) {
    let id = ctx.pid("fresh");
    let mut s = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 0, MAX);
    ctx.assert_quiet(&mut s, "nothing was written").await;
    ctx.write(&id, 1, 2).await;
    let acked = Instant::now();
    let a = ctx.next_live(&mut s, acked, "event 1").await;
    let b = ctx.next_live(&mut s, acked, "event 2").await;
    assert_eq!((a.sequence_nr(), b.sequence_nr()), (1, 2));
}

async fn by_id_live_to(ctx: Ctx) {
    let id = ctx.pid("p");
    ctx.write(&id, 1, 2).await;
    let mut s = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 1, 4);
    // The query has delivered everything stored and waits for more before 3..5 exist.
    for expected in 1..=2 {
        let e = next_within(&mut s, CATCH_UP).await.expect("a stored event");
        assert_eq!(e.sequence_nr(), expected);
    }
    ctx.write(&id, 3, 3).await;
    ctx.write(&id, 4, 4).await;
    let acked = Instant::now();
    ctx.write(&id, 5, 5).await;
    for expected in 3..=4 {
        let e = ctx
            .next_live(&mut s, acked, &format!("event {expected}"))
            .await;
        assert_eq!(e.sequence_nr(), expected);
    }
    let end = tokio::time::timeout(ctx.live_delay() + CATCH_UP, s.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "completes once `to` is delivered, without event 5: {:?}",
        end.map(|o| o.map(|r| r.map(|e| e.sequence_nr())))
    );
}

async fn envelope_fields(ctx: Ctx) {
    let id = ctx.pid("p");
    let tag = ctx.tag("t");
    // A timestamp no clock would give now: the envelope must carry the stored one, not
    // the time of the query or of the backend's write.
    let ts = Timestamp::from_millis(1_234_567_890_123);
    let meta = Payload::new("m", "m/v1", b"meta".to_vec());
    let mut e = ctx
        .event(&id, 1)
        .with_tags([tag.clone()])
        .with_metadata(meta.clone())
        .with_timestamp(ts);
    e.event_manifest = "adapter/v2".into();
    ctx.stores
        .journal
        .write(AtomicWrite::single(e.clone()).unwrap())
        .await
        .expect("write");
    let by_id = collect(ctx.stores.read_journal.current_events_by_persistence_id(
        id.clone(),
        1,
        MAX,
    ))
    .await
    .unwrap();
    assert_eq!(by_id.len(), 1, "the event by id");
    assert_eq!(by_id[0].offset, Offset::Sequence(1));
    let mut envs = by_id;
    if ctx.caps.query_events_by_tag {
        let by_tag = collect(
            ctx.stores
                .read_journal
                .current_events_by_tag(tag.clone(), Offset::NoOffset),
        )
        .await
        .unwrap();
        assert_eq!(by_tag.len(), 1, "the event by tag");
        assert_ne!(
            by_tag[0].offset,
            Offset::NoOffset,
            "a tag envelope has an offset"
        );
        envs.extend(by_tag);
    }
    for env in envs {
        assert_eq!(
            env.event, e,
            "every field of the envelope's event as written"
        );
    }
}

async fn write_tagged(ctx: &Ctx, id: &PersistenceId, seq: u64, tags: &[&String]) {
    let e = ctx
        .event(id, seq)
        .with_tags(tags.iter().map(|t| t.to_string()));
    ctx.stores
        .journal
        .write(AtomicWrite::single(e).unwrap())
        .await
        .unwrap_or_else(|e| panic!("write {id} {seq}: {e}"));
}

async fn by_tag(ctx: &Ctx, tag: &str, offset: Offset) -> Vec<EventEnvelope> {
    collect(
        ctx.stores
            .read_journal
            .current_events_by_tag(tag.to_string(), offset),
    )
    .await
    .expect("tag query")
}

fn assert_per_id_order(envs: &[EventEnvelope]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in envs {
        let prev = last
            .insert(e.persistence_id().to_string(), e.sequence_nr())
            .unwrap_or(0);
        assert!(
            e.sequence_nr() > prev,
            "per-id order broken at {} {}",
            e.persistence_id(),
            e.sequence_nr()
        );
    }
}

async fn by_tag_exact(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let (t, tb, t_prefix) = (ctx.tag("green"), ctx.tag("blue"), ctx.tag("gree"));
    write_tagged(&ctx, &a, 1, &[&t]).await;
    write_tagged(&ctx, &a, 2, &[]).await;
    write_tagged(&ctx, &b, 1, &[&t, &tb]).await;
    write_tagged(&ctx, &a, 3, &[&tb]).await;
    write_tagged(&ctx, &b, 2, &[&t_prefix]).await;
    let green = keys(&by_tag(&ctx, &t, Offset::NoOffset).await);
    assert_eq!(green, vec![(a.to_string(), 1), (b.to_string(), 1)]);
    let blue = keys(&by_tag(&ctx, &tb, Offset::NoOffset).await);
    assert_eq!(
        blue,
        vec![(b.to_string(), 1), (a.to_string(), 3)],
        "an event with two tags appears under both"
    );
    let prefix = keys(&by_tag(&ctx, &t_prefix, Offset::NoOffset).await);
    assert_eq!(prefix, vec![(b.to_string(), 2)], "exact match, not prefix");
}

/// The contract of a current query (the `ReadJournal` docs), on every backend, eventually
/// consistent or not: it delivers every matching event whose write was acknowledged before
/// the query was created, however shortly before (a backend with an eventual-consistency
/// delay waits it out itself), and no event whose write began after the query delivered its
/// first envelope; then it completes.
async fn by_tag_current_completes(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let t = ctx.tag("t");
    for seq in 1..=3 {
        write_tagged(&ctx, &a, seq, &[&t]).await;
    }
    write_tagged(&ctx, &b, 1, &[&t]).await;
    // Created the moment the last write was acknowledged.
    let mut s = ctx
        .stores
        .read_journal
        .current_events_by_tag(t.clone(), Offset::NoOffset);
    let first = tokio::time::timeout(CATCH_UP, s.next())
        .await
        .expect("the first envelope")
        .expect("a first envelope")
        .expect("ok");
    write_tagged(&ctx, &a, 4, &[&t]).await;
    write_tagged(&ctx, &b, 2, &[&t]).await;
    let mut all = vec![first];
    all.extend(collect(s).await.expect("rest"));
    let mut got = keys(&all);
    got.sort();
    let (a, b) = (a.to_string(), b.to_string());
    assert_eq!(
        got,
        vec![(a.clone(), 1), (a.clone(), 2), (a.clone(), 3), (b.clone(), 1)],
        "exactly what was acknowledged before the query: nothing missing, nothing written after its first envelope"
    );
    assert_per_id_order(&all);
    // A query created after the later writes were acknowledged includes them.
    let mut later = keys(&by_tag(&ctx, &t, Offset::NoOffset).await);
    later.sort();
    assert_eq!(
        later,
        vec![
            (a.clone(), 1),
            (a.clone(), 2),
            (a.clone(), 3),
            (a, 4),
            (b.clone(), 1),
            (b, 2)
        ]
    );
}

/// 3 ids and 2 tags interleaved; resuming from every offset yields exactly the rest.
async fn by_tag_resume_every(ctx: Ctx) {
    let ids: Vec<_> = (0..3).map(|i| ctx.pid(&format!("r{i}"))).collect();
    let tags = [ctx.tag("x"), ctx.tag("y")];
    let mut seq = [0u64; 3];
    for round in 0..6 {
        for (i, id) in ids.iter().enumerate() {
            seq[i] += 1;
            let tag = &tags[(round + i) % 2];
            write_tagged(&ctx, id, seq[i], &[tag]).await;
        }
    }
    for tag in &tags {
        let all = by_tag(&ctx, tag, Offset::NoOffset).await;
        assert_eq!(
            all.len(),
            9,
            "{tag}: 18 events, half of them under each tag"
        );
        assert_per_id_order(&all);
        for (i, env) in all.iter().enumerate() {
            let rest = by_tag(&ctx, tag, env.offset.clone()).await;
            assert_eq!(
                keys(&rest),
                keys(&all[i + 1..]),
                "resuming after envelope {i} of {tag}"
            );
        }
    }
}

async fn by_tag_concurrent(ctx: Ctx) {
    let ctx = Arc::new(ctx);
    let t = ctx.tag("busy");
    let mut tasks = Vec::new();
    for w in 0..4 {
        let ctx = ctx.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let id = ctx.pid(&format!("w{w}"));
            for seq in 1..=25 {
                write_tagged(&ctx, &id, seq, &[&t]).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let all = by_tag(&ctx, &t, Offset::NoOffset).await;
    assert_eq!(all.len(), 100);
    assert_per_id_order(&all);
    let unique: BTreeSet<_> = keys(&all).into_iter().collect();
    assert_eq!(unique.len(), 100, "each event exactly once");
    // Resuming half-way yields exactly the second half.
    let rest = by_tag(&ctx, &t, all[49].offset.clone()).await;
    assert_eq!(keys(&rest), keys(&all[50..]));
}

async fn by_tag_unknown(ctx: Ctx) {
    let a = ctx.pid("a");
    write_tagged(&ctx, &a, 1, &[&ctx.tag("t")]).await;
    assert!(by_tag(&ctx, &ctx.tag("never-used"), Offset::NoOffset)
        .await
        .is_empty());
}

async fn by_tag_live(ctx: Ctx) {
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    let t = ctx.tag("t");
    write_tagged(&ctx, &a, 1, &[&t]).await;
    let mut s = ctx
        .stores
        .read_journal
        .events_by_tag(t.clone(), Offset::NoOffset);
    let first = next_within(&mut s, CATCH_UP)
        .await
        .expect("the existing event");
    assert_eq!(keys(&[first]), vec![(a.to_string(), 1)]);
    for (id, seq) in [(&b, 1), (&a, 2), (&b, 2)] {
        write_tagged(&ctx, id, seq, &[&t]).await;
        let e = ctx
            .next_live(&mut s, Instant::now(), &format!("{id} {seq}"))
            .await;
        assert_eq!(keys(&[e]), vec![(id.to_string(), seq)]);
    }
    write_tagged(&ctx, &a, 3, &[]).await;
    write_tagged(&ctx, &a, 4, &[&ctx.tag("other")]).await;
    ctx.assert_quiet(&mut s, "untagged and otherwise tagged events never")
        .await;
}

async fn by_tag_live_offset(ctx: Ctx) {
    let a = ctx.pid("a");
    let t = ctx.tag("t");
    for seq in 1..=3 {
        write_tagged(&ctx, &a, seq, &[&t]).await;
    }
    let all = by_tag(&ctx, &t, Offset::NoOffset).await;
    let mut s = ctx
        .stores
        .read_journal
        .events_by_tag(t.clone(), all[0].offset.clone());
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            next_within(&mut s, CATCH_UP)
                .await
                .expect("resumed event")
                .sequence_nr(),
        );
    }
    write_tagged(&ctx, &a, 4, &[&t]).await;
    got.push(
        ctx.next_live(&mut s, Instant::now(), "event 4")
            .await
            .sequence_nr(),
    );
    assert_eq!(got, vec![2, 3, 4]);
    ctx.assert_quiet(&mut s, "nothing more was written").await;
}

async fn by_tag_live_concurrent(ctx: Ctx) {
    let ctx = Arc::new(ctx);
    let t = ctx.tag("live");
    let mut s = ctx
        .stores
        .read_journal
        .events_by_tag(t.clone(), Offset::NoOffset);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let ctx = ctx.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let id = ctx.pid(&format!("w{w}"));
            for seq in 1..=15 {
                write_tagged(&ctx, &id, seq, &[&t]).await;
            }
        }));
    }
    let mut got = Vec::new();
    let mut writers_done = None;
    while got.len() < 60 {
        if writers_done.is_none() && tasks.iter().all(|t| t.is_finished()) {
            writers_done = Some(Instant::now());
        }
        // While writers write, each event comes within the delay of the latest write;
        // once they are done, what is left comes within the delay of the last ack.
        let wait = match writers_done {
            Some(done) => (done + ctx.live_delay()).saturating_duration_since(Instant::now()),
            None => ctx.live_delay() + CATCH_UP,
        };
        match next_within(&mut s, wait).await {
            Some(e) => got.push(e),
            None => panic!(
                "only {} of 60 events arrived within the declared delay of {:?}: {:?}",
                got.len(),
                ctx.live_delay(),
                keys(&got)
            ),
        }
    }
    for task in tasks {
        task.await.expect("writer");
    }
    assert_per_id_order(&got);
    let unique: BTreeSet<_> = keys(&got).into_iter().collect();
    assert_eq!(unique.len(), 60, "each event exactly once");
    ctx.assert_quiet(&mut s, "nothing more was written").await;
}
