//! Journal maintenance: scanning the journal's ids, rebuilding the secondary structures
//! (tag index, id registry) from the events after they were lost, and purging every trace
//! of an id (the `JournalMaintenance` docs).

use std::collections::BTreeSet;

use persistence_api::{
    AtomicWrite, EventEnvelope, JournalExt, Offset, PersistenceId, PurgeReport, RebuildReport,
    SnapshotMetadata, SnapshotSelectionCriteria as Criteria,
};

use super::{cases, Case, Finish};
use crate::context::{collect, keys, Ctx};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "maintenance::scan_lists_every_id_once" => [Maintenance] scan_lists_every_id;
        "maintenance::scan_lists_ids_whose_events_were_all_deleted" => [Maintenance, DeleteEvents] scan_lists_deleted;
        "maintenance::rebuild_of_an_intact_journal_changes_nothing" => [Maintenance, Tags, QueryEventsByTag] rebuild_intact;
        "maintenance::rebuild_restores_dropped_tag_index_and_registry" => [Maintenance, Tags, QueryEventsByTag, QueryPersistenceIds] rebuild_restores;
        "maintenance::truncate_then_rebuild_restores_tag_queries_and_ids" => [Maintenance, Tags, QueryEventsByTag, QueryPersistenceIds] truncate_then_rebuild;
        "maintenance::writes_after_a_rebuild_follow_the_restored_entries" => [Maintenance, Tags, QueryEventsByTag] rebuild_then_write;
        "maintenance::rebuild_of_an_unknown_id_reports_nothing" => [Maintenance] rebuild_unknown;
        "maintenance::purge_removes_every_trace_of_one_id" => [Maintenance] purge_everything;
        "maintenance::purge_leaves_tag_queries_of_other_ids_whole" => [Maintenance, Tags, QueryEventsByTag] purge_tags;
        "maintenance::purged_id_is_written_again_from_1" => [Maintenance] purge_then_write;
    ]
}

/// The ids `scan_persistence_ids` yields, checked to hold each id once.
async fn scan(ctx: &Ctx) -> BTreeSet<String> {
    let ids = collect(ctx.stores.maintenance.scan_persistence_ids())
        .await
        .expect("scan_persistence_ids");
    let set: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(set.len(), ids.len(), "scan yielded an id twice: {ids:?}");
    set
}

/// Only this case's ids (a backend's namespace may be shared by nothing else, but the kit
/// does not rely on it).
fn own(ctx: &Ctx, ids: BTreeSet<String>) -> BTreeSet<String> {
    let prefix = format!("{}-", ctx.namespace);
    ids.into_iter().filter(|i| i.starts_with(&prefix)).collect()
}

async fn rebuild(ctx: &Ctx, id: &PersistenceId) -> RebuildReport {
    ctx.stores
        .maintenance
        .rebuild_persistence_id(id)
        .await
        .unwrap_or_else(|e| panic!("rebuild_persistence_id({id}): {e}"))
}

async fn purge(ctx: &Ctx, id: &PersistenceId) -> PurgeReport {
    ctx.stores
        .maintenance
        .purge_persistence_id(id)
        .await
        .unwrap_or_else(|e| panic!("purge_persistence_id({id}): {e}"))
}

/// `seq` of `id` with `tags`.
fn tagged(
    ctx: &Ctx,
    id: &PersistenceId,
    seq: u64,
    tags: &[String],
) -> persistence_api::PersistentEvent {
    ctx.event(id, seq).with_tags(tags.iter().cloned())
}

/// Writes `from..=to` of `id`, every event carrying `tags`, in atomic writes of up to 3.
async fn write_tagged_range(ctx: &Ctx, id: &PersistenceId, from: u64, to: u64, tags: &[String]) {
    let chunk = ctx
        .caps
        .atomic_write_max_events
        .map(|m| m as u64)
        .unwrap_or(3)
        .clamp(1, 3);
    let mut s = from;
    while s <= to {
        let end = (s + chunk - 1).min(to);
        let events = (s..=end).map(|q| tagged(ctx, id, q, tags)).collect();
        ctx.stores
            .journal
            .write(AtomicWrite::new(events).expect("a valid write"))
            .await
            .unwrap_or_else(|e| panic!("write {id} {s}..={end}: {e}"));
        s = end + 1;
    }
}

/// Three ids and two tags: `a` 1..=4 tagged [t1], `b` 1..=3 tagged [t1, t2], `c` 1..=2
/// untagged. Returns the ids and the tags.
async fn setup(ctx: &Ctx) -> (Vec<PersistenceId>, [String; 2]) {
    let (a, b, c) = (ctx.pid("a"), ctx.pid("b"), ctx.pid("c"));
    let tags = [ctx.tag("t1"), ctx.tag("t2")];
    let t1 = std::slice::from_ref(&tags[0]);
    write_tagged_range(ctx, &a, 1, 2, t1).await;
    write_tagged_range(ctx, &b, 1, 3, &tags).await;
    write_tagged_range(ctx, &a, 3, 4, t1).await;
    ctx.write(&c, 1, 2).await;
    (vec![a, b, c], tags)
}

fn names(ids: &[PersistenceId]) -> BTreeSet<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

/// Each id with events is yielded once, and nothing else of this case: more ids than a
/// page, so the scan pages.
async fn scan_lists_every_id(ctx: Ctx) {
    let n = ctx.page_size() + 2;
    let ids: Vec<PersistenceId> = (0..n).map(|i| ctx.pid(&format!("s{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        ctx.write(id, 1, 1 + i as u64 % 3).await;
    }
    assert_eq!(own(&ctx, scan(&ctx).await), names(&ids));
}

/// An id whose every event was deleted keeps its highest, so the scan lists it (as
/// `current_persistence_ids` does).
async fn scan_lists_deleted(ctx: Ctx) {
    let (kept, deleted) = (ctx.pid("kept"), ctx.pid("deleted"));
    ctx.write(&kept, 1, 2).await;
    ctx.write(&deleted, 1, 3).await;
    ctx.stores
        .journal
        .delete_events_to(&deleted, MAX)
        .await
        .expect("delete_events_to");
    assert_eq!(ctx.highest(&deleted).await, 3);
    assert_eq!(
        own(&ctx, scan(&ctx).await),
        names(&[kept, deleted]),
        "an id with highest 3 and no stored event"
    );
}

/// Rebuilding every id of an intact journal reports each id's events and entries, and
/// leaves the tag queries exactly as they were (same envelopes, same offsets).
async fn rebuild_intact(ctx: Ctx) {
    let (ids, tags) = setup(&ctx).await;
    let before: Vec<Vec<EventEnvelope>> = tag_queries(&ctx, &tags).await;
    let expected = [(4, 4), (3, 6), (2, 0)];
    for (id, (events, entries)) in ids.iter().zip(expected) {
        for round in 0..2 {
            let r = rebuild(&ctx, id).await;
            assert_eq!(
                (r.events, r.index_entries),
                (events, entries),
                "rebuild {round} of {id}: events read and index entries"
            );
        }
    }
    assert_eq!(tag_queries(&ctx, &tags).await, before);
}

/// New stores over the same data where the backend is durable; the same stores otherwise
/// (a non-durable backend's new stores start empty).
async fn fresh(ctx: &Ctx) -> persistence_api::Stores {
    if ctx.caps.durable {
        ctx.reopen().await
    } else {
        ctx.stores.clone()
    }
}

async fn tag_queries(ctx: &Ctx, tags: &[String]) -> Vec<Vec<EventEnvelope>> {
    let mut all = Vec::new();
    for t in tags {
        all.push(ctx.by_tag(t, Offset::NoOffset).await);
    }
    all
}

/// After the tag index and the registry are emptied behind the stores' back, rebuilding
/// every id the scan finds brings back exactly what the tag queries returned before,
/// with the same offsets, and the ids' listing.
async fn rebuild_restores(ctx: Ctx) -> Finish {
    lose_and_rebuild(ctx, false).await
}

/// `truncate_indexes` empties the tag queries and the listing and nothing else; rebuilding
/// every scanned id then brings them back as they were.
async fn truncate_then_rebuild(ctx: Ctx) -> Finish {
    lose_and_rebuild(ctx, true).await
}

async fn lose_and_rebuild(ctx: Ctx, truncate: bool) -> Finish {
    let (ids, tags) = setup(&ctx).await;
    let before = tag_queries(&ctx, &tags).await;
    assert_eq!(keys(&before[0]).len(), 7);
    assert_eq!(keys(&before[1]).len(), 3);
    let listed = own(&ctx, ctx.ids().await);
    assert_eq!(listed, names(&ids));
    let how = if truncate {
        ctx.stores
            .maintenance
            .truncate_indexes()
            .await
            .expect("truncate_indexes");
        "truncate_indexes"
    } else {
        if let Err(skip) = ctx.drop_indexes().await {
            return skip;
        }
        "drop_indexes"
    };
    // They are really gone (or the case would prove nothing): fresh stores where data
    // outlives them, so nothing cached answers.
    let stores = fresh(&ctx).await;
    let lost = crate::context::by_tag(&stores, &tags[0], Offset::NoOffset).await;
    assert!(
        lost.is_empty(),
        "{how} left {} entries of {}",
        lost.len(),
        tags[0]
    );
    if truncate {
        assert!(
            own(&ctx, crate::context::ids(&stores).await).is_empty(),
            "truncate_indexes empties the id listing"
        );
        for id in &ids {
            let (events, highest) = ctx.replay(id, 1, MAX, MAX).await;
            assert_eq!(
                highest,
                events.len() as u64,
                "{id} replays whole after {how}"
            );
        }
    }
    let scanned = own(&ctx, scan(&ctx).await);
    assert_eq!(
        scanned,
        names(&ids),
        "the scan reads the journal, not the registry"
    );
    for name in &scanned {
        let id = PersistenceId::new(name.clone()).expect("a scanned id is valid");
        rebuild(&ctx, &id).await;
    }
    let stores = fresh(&ctx).await;
    for (t, expected) in tags.iter().zip(&before) {
        let after = crate::context::by_tag(&stores, t, Offset::NoOffset).await;
        assert_eq!(&after, expected, "tag {t} after the rebuild");
        // Resuming from every restored offset gives the rest, as before.
        for (i, env) in expected.iter().enumerate() {
            let rest = crate::context::by_tag(&stores, t, env.offset.clone()).await;
            assert_eq!(
                keys(&rest),
                keys(&expected[i + 1..]),
                "tag {t} after {:?}",
                env.offset
            );
        }
    }
    assert_eq!(own(&ctx, crate::context::ids(&stores).await), names(&ids));
    Finish::Passed
}

/// Events written after a truncated index is rebuilt come after the restored ones in the
/// tag's order: a query from the last old offset returns the new events only.
async fn rebuild_then_write(ctx: Ctx) {
    let (ids, tags) = setup(&ctx).await;
    let before = ctx.by_tag(&tags[0], Offset::NoOffset).await;
    let last = before.last().expect("7 events").offset.clone();
    ctx.stores
        .maintenance
        .truncate_indexes()
        .await
        .expect("truncate_indexes");
    for id in &ids {
        rebuild(&ctx, id).await;
    }
    let stores = fresh(&ctx).await;
    let (a, d) = (&ids[0], ctx.pid("d"));
    let t1 = std::slice::from_ref(&tags[0]);
    stores
        .journal
        .write(AtomicWrite::single(tagged(&ctx, a, 5, t1)).expect("a valid write"))
        .await
        .expect("write a 5 after the rebuild");
    stores
        .journal
        .write(AtomicWrite::single(tagged(&ctx, &d, 1, t1)).expect("a valid write"))
        .await
        .expect("write d 1 after the rebuild");
    let after = crate::context::by_tag(&stores, &tags[0], last).await;
    let mut got = keys(&after);
    got.sort();
    assert_eq!(got, vec![(a.to_string(), 5), (d.to_string(), 1)]);
    let all = crate::context::by_tag(&stores, &tags[0], Offset::NoOffset).await;
    assert_eq!(
        keys(&all[..7]),
        keys(&before),
        "the old events first, in their order"
    );
    assert_eq!(all.len(), 9);
}

/// An id never written: zeros, and the id is not registered by it.
async fn rebuild_unknown(ctx: Ctx) {
    let id = ctx.pid("nobody");
    assert_eq!(rebuild(&ctx, &id).await, RebuildReport::new(0, 0));
    assert_eq!(ctx.highest(&id).await, 0);
    assert!(!own(&ctx, scan(&ctx).await).contains(id.as_str()));
    if ctx.caps.query_persistence_ids {
        assert!(!ctx.ids().await.contains(id.as_str()));
    }
}

/// After a purge: highest 0, nothing replays or queries, no snapshot, not listed nor
/// scanned; the other id is whole; a second purge reports zeros.
async fn purge_everything(ctx: Ctx) {
    let (gone, kept) = (ctx.pid("gone"), ctx.pid("kept"));
    ctx.write(&gone, 1, 5).await;
    ctx.write(&kept, 1, 3).await;
    ctx.stores.journal.delete_events_to(&gone, 2).await.ok(); // backends without deletes still purge
    let mut snapshots = 0;
    if ctx.caps.snapshots {
        for seq in [3, 5] {
            let meta = SnapshotMetadata::new(gone.clone(), seq);
            ctx.stores
                .snapshots
                .save_snapshot(meta, Ctx::payload(&gone, seq))
                .await
                .expect("save_snapshot");
        }
        snapshots = 2;
    }
    let stored_events = ctx.replay(&gone, 1, MAX, MAX).await.0.len() as u64;
    let report = purge(&ctx, &gone).await;
    assert_eq!(report, PurgeReport::new(stored_events, snapshots));
    assert_eq!(ctx.highest(&gone).await, 0);
    assert_eq!(ctx.replay(&gone, 1, MAX, MAX).await, (vec![], 0));
    if ctx.caps.query_events_by_persistence_id {
        assert!(ctx.by_id(&gone, 1, MAX).await.is_empty());
    }
    if ctx.caps.snapshots {
        let s = ctx
            .stores
            .snapshots
            .load_snapshot(&gone, Criteria::latest())
            .await
            .expect("load_snapshot");
        assert!(s.is_none(), "a snapshot of the purged id: {s:?}");
    }
    assert_eq!(
        own(&ctx, scan(&ctx).await),
        names(std::slice::from_ref(&kept))
    );
    if ctx.caps.query_persistence_ids {
        assert_eq!(
            own(&ctx, ctx.ids().await),
            names(std::slice::from_ref(&kept))
        );
    }
    assert_eq!(ctx.replay(&kept, 1, MAX, MAX).await, (vec![1, 2, 3], 3));
    assert_eq!(purge(&ctx, &gone).await, PurgeReport::new(0, 0));
}

/// The purged id's events leave the tag queries; the other ids' events stay, in order,
/// and a query resumed from an offset taken before the purge returns the rest of them.
async fn purge_tags(ctx: Ctx) {
    let (ids, tags) = setup(&ctx).await;
    let before = ctx.by_tag(&tags[0], Offset::NoOffset).await;
    let b = &ids[1];
    purge(&ctx, b).await;
    let after = ctx.by_tag(&tags[0], Offset::NoOffset).await;
    let expected: Vec<_> = keys(&before)
        .into_iter()
        .filter(|(id, _)| id != b.as_str())
        .collect();
    assert_eq!(keys(&after), expected);
    assert!(ctx.by_tag(&tags[1], Offset::NoOffset).await.is_empty());
    let rest = ctx.by_tag(&tags[0], before[1].offset.clone()).await;
    let expected_rest: Vec<_> = keys(&before[2..])
        .into_iter()
        .filter(|(id, _)| id != b.as_str())
        .collect();
    assert_eq!(keys(&rest), expected_rest);
}

/// A purged id starts over: 1 is free again, and replays only the new events.
async fn purge_then_write(ctx: Ctx) {
    let id = ctx.pid("again");
    ctx.write(&id, 1, 4).await;
    purge(&ctx, &id).await;
    ctx.write(&id, 1, 2).await;
    assert_eq!(ctx.replay(&id, 1, MAX, MAX).await, (vec![1, 2], 2));
    assert_eq!(ctx.highest(&id).await, 2);
    assert!(own(&ctx, scan(&ctx).await).contains(id.as_str()));
    let events = ctx.replay_events(&id, 1, 1, MAX).await.0;
    assert_eq!(events[0].payload, Ctx::payload(&id, 1));
}
