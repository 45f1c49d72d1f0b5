//! Paging cases: histories, id lists and tag streams longer than the backend's page
//! ([`Ctx::page_size`]), read across and at the page boundaries, where a backend that
//! takes a short page for the end, repeats the last row of a page or skips the first of
//! the next one is caught.

use persistence_api::ReadJournalExt;
use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use persistence_api::{AtomicWrite, JournalExt, Offset, PersistenceId};

use super::{cases, Case};
use crate::context::{collect, keys, next_within, Ctx, CATCH_UP};

const MAX: u64 = u64::MAX;

pub fn cases() -> Vec<Case> {
    cases![
        "paging::current_persistence_ids_of_more_than_1000_ids" => [QueryPersistenceIds] many_ids_current;
        "paging::live_persistence_ids_catch_up_over_more_than_1000_ids" => [QueryPersistenceIds, LiveQueries] many_ids_live;
        "paging::replay_max_at_the_page_size_and_one_more" => [] replay_max_at_page;
        "paging::events_by_id_query_of_10000_events" => [QueryEventsByPersistenceId] by_id_10000;
        "paging::live_events_by_id_catch_up_across_pages_and_complete_at_to" => [QueryEventsByPersistenceId, LiveQueries] by_id_live_pages;
        "paging::tag_query_resumed_at_every_page_boundary" => [QueryEventsByTag] by_tag_resume_at_pages;
    ]
}

/// More than 1,000 ids and more than two pages of them (`max(1001, 2 * page + 1)`).
fn many(ctx: &Ctx) -> usize {
    (2 * ctx.page_size() + 1).max(1001)
}

/// Writes one event for each of `n` ids, 16 writes in flight; returns the ids' names.
async fn write_many_ids(ctx: Ctx, n: usize) -> (Arc<Ctx>, BTreeSet<String>) {
    let ids: Vec<PersistenceId> = (0..n).map(|i| ctx.pid(&format!("i{i:05}"))).collect();
    let ctx = Arc::new(ctx);
    futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let ctx = ctx.clone();
            async move { ctx.write(&id, 1, 1).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    (ctx, ids.iter().map(|i| i.to_string()).collect())
}

async fn many_ids_current(ctx: Ctx) {
    let n = many(&ctx);
    let (ctx, want) = write_many_ids(ctx, n).await;
    let got = ctx.ids().await;
    assert_eq!(
        got.len(),
        n,
        "current_persistence_ids over {n} ids (page size {}): each id once",
        ctx.page_size()
    );
    assert_eq!(got, want, "exactly the ids written");
}

async fn many_ids_live(ctx: Ctx) {
    let n = many(&ctx);
    let (ctx, want) = write_many_ids(ctx, n).await;
    let mut live = ctx.stores.read_journal.persistence_ids();
    let mut got = BTreeSet::new();
    for i in 0..n {
        let id = next_within(&mut live, CATCH_UP).await.unwrap_or_else(|| {
            panic!(
                "the live id query caught up {i} of {n} stored ids (page size {}) and then delivered nothing for {CATCH_UP:?}",
                ctx.page_size()
            )
        });
        assert!(
            got.insert(id.to_string()),
            "{id} delivered twice while catching up"
        );
    }
    assert_eq!(got, want, "exactly the ids written");
    let extra = next_within(&mut live, ctx.quiet_window()).await;
    assert_eq!(extra, None, "nothing more once caught up: no id twice");
}

async fn replay_max_at_page(ctx: Ctx) {
    let p = ctx.page_size().max(2) as u64;
    let id = ctx.pid("p");
    ctx.write_chunked(&id, 1, p + 2, 100).await;
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<u64>>();
    for (from, to, max, want) in [
        (1, MAX, p - 1, range(1, p - 1)),
        (1, MAX, p, range(1, p)),
        (1, MAX, p + 1, range(1, p + 1)),
        (2, MAX, p, range(2, p + 1)),
        (1, p, p + 1, range(1, p)),
        (1, p + 1, p, range(1, p)),
        (p, MAX, 2, range(p, p + 1)),
    ] {
        let (got, highest) = ctx.replay(&id, from, to, max).await;
        assert_eq!(
            highest,
            p + 2,
            "replay({from}, {to}, max {max}) with page size {p} reports the stored highest"
        );
        assert_eq!(
            got, want,
            "replay({from}, {to}, max {max}) with page size {p}"
        );
    }
}

async fn by_id_10000(ctx: Ctx) {
    let p = ctx.page_size().clamp(2, 4_000) as u64;
    let id = ctx.pid("long");
    ctx.write_chunked(&id, 1, 10_000, 100).await;
    let all = ctx.by_id(&id, 1, MAX).await;
    assert_eq!(all.len(), 10_000, "every event, none twice");
    for (i, e) in all.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(e.sequence_nr(), seq, "in order, none missing");
        assert_eq!(e.offset, Offset::Sequence(seq), "the offset of {seq}");
        assert_eq!(
            e.event.payload,
            Ctx::payload(&id, seq),
            "the payload of {seq}"
        );
    }
    // Windows that start and end at the page boundaries.
    for (from, to) in [(p, p + 1), (p + 1, 2 * p), (p - 1, 2 * p + 1), (9_999, MAX)] {
        let to_seen = to.min(10_000);
        let got: Vec<u64> = ctx
            .by_id(&id, from, to)
            .await
            .iter()
            .map(|e| e.sequence_nr())
            .collect();
        assert_eq!(
            got,
            (from..=to_seen).collect::<Vec<_>>(),
            "by id from {from} to {to} with page size {p}"
        );
    }
}

async fn by_id_live_pages(ctx: Ctx) {
    let p = ctx.page_size() as u64;
    let n = 2 * p + 1;
    let id = ctx.pid("p");
    ctx.write_chunked(&id, 1, n, 100).await;
    let to = n + 2;
    let mut live = ctx
        .stores
        .read_journal
        .events_by_persistence_id(id.clone(), 1, to);
    for seq in 1..=n {
        let e = next_within(&mut live, CATCH_UP).await.unwrap_or_else(|| {
            panic!("the live query caught up to {} of {n} stored events (page size {p}) and then delivered nothing for {CATCH_UP:?}", seq - 1)
        });
        assert_eq!(e.sequence_nr(), seq, "caught up in order, none twice");
    }
    for seq in n + 1..=to {
        ctx.write(&id, seq, seq).await;
        let e = ctx
            .next_live(
                &mut live,
                std::time::Instant::now(),
                &format!("event {seq}"),
            )
            .await;
        assert_eq!(e.sequence_nr(), seq);
    }
    let end = tokio::time::timeout(ctx.quiet_window().max(CATCH_UP), live.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the live query completes once `to` ({to}) is delivered"
    );
}

/// Three ids' tagged events, more than two pages in all, written in atomic writes of up
/// to 100; a query from every offset at and around the page boundaries (after `p - 1`,
/// `p`, `p + 1`, `2p - 1`, `2p` and `2p + 1` envelopes) delivers exactly the rest.
async fn by_tag_resume_at_pages(ctx: Ctx) {
    let p = ctx.page_size().max(2);
    let n = 2 * p + 3;
    let ids: Vec<PersistenceId> = (0..3).map(|i| ctx.pid(&format!("t{i}"))).collect();
    let tag = ctx.tag("t");
    let chunk = ctx.caps.atomic_write_max_events.map_or(100, |m| m.min(100));
    let mut next = [1u64; 3];
    let mut written = 0;
    let mut i = 0;
    while written < n {
        let k = chunk.min(n - written);
        let id = &ids[i % 3];
        let from = next[i % 3];
        let events = (from..from + k as u64)
            .map(|s| ctx.event(id, s).with_tags([tag.clone()]))
            .collect();
        ctx.stores
            .journal
            .write(AtomicWrite::new(events).expect("a valid write"))
            .await
            .unwrap_or_else(|e| panic!("writing {id} from {from}: {e}"));
        next[i % 3] += k as u64;
        written += k;
        i += 1;
    }
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    let all_keys = keys(&all);
    assert_eq!(
        all_keys.iter().collect::<BTreeSet<_>>().len(),
        n,
        "the whole tag once, across pages of {p}: {} envelopes",
        all.len()
    );
    assert_eq!(all.len(), n, "no envelope twice");
    crate::context::assert_per_id_order(&all);
    for after in [p - 1, p, p + 1, 2 * p - 1, 2 * p, 2 * p + 1] {
        let rest = collect(
            ctx.stores
                .read_journal
                .current_events_by_tag(tag.clone(), all[after - 1].offset.clone()),
        )
        .await
        .expect("tag query from an offset");
        assert_eq!(
            keys(&rest),
            all_keys[after..].to_vec(),
            "resumed after {after} of {n} envelopes (page size {p}): exactly the rest, in the same order"
        );
    }
}
