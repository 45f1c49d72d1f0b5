//! Concurrency cases: readers running while writers write. Every case checks that the
//! interleaving it is about actually happened (a read saw a history in between, a reader
//! resumed while writers were still writing), so a run that happened to serialise cannot
//! pass by luck.

use persistence_api::ReadJournalExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistence_api::{EventEnvelope, JournalExt, Offset, PersistenceId};

use super::{cases, Case};
use crate::context::{assert_per_id_order, keys, next_within, Ctx};

pub fn cases() -> Vec<Case> {
    cases![
        "concurrency::reads_never_see_part_of_an_atomic_write" => [MultiEventAtomic] no_partial_reads;
        "concurrency::current_tag_readers_resume_while_16_writers_write" => [QueryEventsByTag] resuming_readers;
        "concurrency::two_live_tag_subscribers_see_the_same_per_id_order" => [QueryEventsByTag, LiveQueries] two_subscribers;
        "concurrency::ids_written_concurrently_appear_once" => [QueryPersistenceIds] concurrent_ids;
        "concurrency::live_tag_query_gets_every_event_of_100_ids_writing_at_once" => [QueryEventsByTag, LiveQueries] live_tag_many_writers;
    ]
}

/// Checks that `seqs` (what one read saw of the id) is `1..=n` with `n` a whole number of
/// atomic writes of `size`; returns `n`.
fn whole_writes(seqs: &[u64], size: u64, what: &str) -> u64 {
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>().as_slice(),
        "{what}: in order, none missing"
    );
    assert_eq!(
        n % size,
        0,
        "{what} saw {n} events: part of an atomic write of {size}"
    );
    n
}

/// A writer stores 16 atomic writes of 5 events (tagged where tags are supported) while
/// readers loop over replay, the highest, a current by-id query and a current tag query.
/// After each write the writer waits until every reader has started a new read, and then
/// writes on while those reads run, so reads overlap writes in flight on any store. Every
/// read must see whole atomic writes only; at least one read of each kind must have seen
/// a history in between (neither empty nor complete), or the case fails as not having
/// tested anything.
async fn no_partial_reads(ctx: Ctx) {
    const WRITES: u64 = 16;
    let size = ctx
        .caps
        .atomic_write_max_events
        .map_or(5, |m| (m as u64).min(5));
    let total = WRITES * size;
    let id = ctx.pid("atomic");
    let tag = ctx.tag("atomic");
    let tagged = ctx.caps.tags && ctx.caps.query_events_by_tag;
    let mut kinds: Vec<&'static str> = vec!["replay", "highest"];
    if ctx.caps.query_events_by_persistence_id {
        kinds.push("by-id");
    }
    if tagged {
        kinds.push("by-tag");
    }
    let ctx = Arc::new(ctx);
    let done = Arc::new(AtomicBool::new(false));
    let started: Arc<Vec<AtomicU64>> = Arc::new(kinds.iter().map(|_| AtomicU64::new(0)).collect());
    // The readers first: the writer counts them by their handles on `started`.
    let readers: Vec<_> = kinds
        .into_iter()
        .enumerate()
        .map(|(r, kind)| {
            let (ctx, id, tag, done) = (ctx.clone(), id.clone(), tag.clone(), done.clone());
            let started = started.clone();
            tokio::spawn(async move {
                let mut between = 0u32;
                let mut reads = 0u32;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    started[r].fetch_add(1, Ordering::SeqCst);
                    let n = match kind {
                        "replay" => {
                            let (seqs, highest) = ctx.replay(&id, 1, u64::MAX, u64::MAX).await;
                            let n = whole_writes(&seqs, size, "a replay");
                            assert_eq!(highest % size, 0, "a replay's highest {highest}");
                            assert!(
                                highest >= n,
                                "a replay's highest {highest} below its {n} events"
                            );
                            n
                        }
                        "highest" => {
                            let h = ctx.highest(&id).await;
                            assert_eq!(
                                h % size,
                                0,
                                "highest_sequence_nr {h}: part of an atomic write"
                            );
                            h
                        }
                        "by-id" => {
                            let envs = ctx.by_id(&id, 1, u64::MAX).await;
                            let seqs: Vec<u64> = envs.iter().map(|e| e.sequence_nr()).collect();
                            whole_writes(&seqs, size, "a current events-by-id query")
                        }
                        _ => {
                            let envs = ctx.by_tag(&tag, Offset::NoOffset).await;
                            let seqs: Vec<u64> = envs.iter().map(|e| e.sequence_nr()).collect();
                            whole_writes(&seqs, size, "a current tag query")
                        }
                    };
                    reads += 1;
                    tokio::task::yield_now().await;
                    if n > 0 && n < total {
                        between += 1;
                    }
                    if finished {
                        assert_eq!(n, total, "{kind}: everything, once the writer is done");
                        return (kind, reads, between);
                    }
                }
            })
        })
        .collect();
    let writer = {
        let (ctx, id, tag, done) = (ctx.clone(), id.clone(), tag.clone(), done.clone());
        let started = started.clone();
        tokio::spawn(async move {
            for w in 0..WRITES {
                let from = w * size + 1;
                let mut write = ctx.atomic(&id, from, from + size - 1).into_events();
                if tagged {
                    for e in &mut write {
                        e.tags = vec![tag.clone()];
                    }
                }
                ctx.stores
                    .journal
                    .write(persistence_api::AtomicWrite::new(write).unwrap())
                    .await
                    .expect("write");
                // Wait until every reader has started a read after this write, so the next
                // write is in flight while those reads run.
                let seen: Vec<u64> = started.iter().map(|c| c.load(Ordering::SeqCst)).collect();
                // (A reader that failed has dropped its handle: stop waiting for it.)
                while Arc::strong_count(&started) == started.len() + 2
                    && started
                        .iter()
                        .zip(&seen)
                        .any(|(c, s)| c.load(Ordering::SeqCst) <= *s)
                {
                    tokio::task::yield_now().await;
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    writer.await.expect("the writer");
    for r in readers {
        let (kind, reads, between) = r.await.expect("a reader");
        assert!(
            between > 0,
            "{kind}: none of {reads} reads ran while the writes were in flight, so nothing was tested"
        );
    }
}

/// 16 writers write tagged events to their own ids while two readers run current tag
/// queries back to back, each resuming from the last offset it got: the visibility-gap
/// trap (an event committed after a reader passed its position, with an earlier position).
/// Each reader's concatenated result must hold every event exactly once, in per-id order,
/// and at least one of its passes must have started and ended while writers were writing.
async fn resuming_readers(ctx: Ctx) {
    const WRITERS: usize = 16;
    const EACH: u64 = 15;
    let tag = ctx.tag("busy");
    let ctx = Arc::new(ctx);
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(WRITERS));
    // Passes each reader completed while writers were writing. Halfway through, the writers
    // wait for both readers to have one (a slow store's single pass could otherwise outlast
    // all the writes, and the case would have tested nothing).
    let passes: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (ctx, tag, running, passes) =
                (ctx.clone(), tag.clone(), running.clone(), passes.clone());
            tokio::spawn(async move {
                let id = ctx.pid(&format!("w{w}"));
                for seq in 1..=EACH {
                    ctx.write_tagged(&id, seq, &[&tag]).await;
                    tokio::task::yield_now().await;
                    if seq == EACH / 2 {
                        let deadline = Instant::now() + Duration::from_secs(120);
                        while passes.iter().any(|p| p.load(Ordering::SeqCst) == 0) {
                            assert!(
                                Instant::now() < deadline,
                                "the readers completed no pass in 120 s while the writers waited"
                            );
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (ctx, tag, running, passes) =
                (ctx.clone(), tag.clone(), running.clone(), passes.clone());
            tokio::spawn(async move {
                let mut got: Vec<EventEnvelope> = Vec::new();
                let mut offset = Offset::NoOffset;
                let mut during = 0u32;
                loop {
                    let before = running.load(Ordering::SeqCst);
                    let page = ctx.by_tag(&tag, offset.clone()).await;
                    let after = running.load(Ordering::SeqCst);
                    if before > 0 && after > 0 {
                        during += 1;
                        passes[r].fetch_add(1, Ordering::SeqCst);
                    }
                    if let Some(last) = page.last() {
                        offset = last.offset.clone();
                    }
                    got.extend(page);
                    tokio::task::yield_now().await;
                    // The pass that started after every writer was done is the last one
                    // needed: it includes whatever was acknowledged before it started.
                    if before == 0 {
                        return (got, during);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let mut want = BTreeSet::new();
    for w in 0..WRITERS {
        for seq in 1..=EACH {
            want.insert((ctx.pid(&format!("w{w}")).to_string(), seq));
        }
    }
    for (i, r) in readers.into_iter().enumerate() {
        let (got, during) = r.await.expect("a reader");
        assert_per_id_order(&got);
        let ks = keys(&got);
        let unique: BTreeSet<_> = ks.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            ks.len(),
            "reader {i}: an event delivered twice across resumed queries"
        );
        let missing: Vec<_> = want.difference(&unique).take(10).collect();
        assert!(
            missing.is_empty(),
            "reader {i} skipped events it resumed past: {missing:?} ({} of {})",
            unique.len(),
            want.len()
        );
        assert_eq!(unique, want, "reader {i}: nothing else");
        assert!(
            during > 0,
            "reader {i}: no pass ran while the writers were writing, so nothing was tested"
        );
    }
}

/// Two live subscribers of one tag while 4 writers write 10 events each: both deliver
/// all 40 once, each id's events in order, the same for both; the last within the declared
/// delay of the last write.
async fn two_subscribers(ctx: Ctx) {
    const WRITERS: usize = 4;
    const EACH: u64 = 10;
    let tag = ctx.tag("two");
    let mut subs = [
        ctx.stores
            .read_journal
            .events_by_tag(tag.clone(), Offset::NoOffset),
        ctx.stores
            .read_journal
            .events_by_tag(tag.clone(), Offset::NoOffset),
    ];
    let ctx = Arc::new(ctx);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (ctx, tag) = (ctx.clone(), tag.clone());
            tokio::spawn(async move {
                let id = ctx.pid(&format!("w{w}"));
                for seq in 1..=EACH {
                    ctx.write_tagged(&id, seq, &[&tag]).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let acked = Instant::now();
    let total = WRITERS * EACH as usize;
    let mut per_sub: Vec<BTreeMap<String, Vec<u64>>> = Vec::new();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < total {
            let e: EventEnvelope = ctx
                .next_live(
                    sub,
                    acked,
                    &format!("subscriber {i}'s event {} of {total}", got.len() + 1),
                )
                .await;
            got.push(e);
        }
        assert_per_id_order(&got);
        let mut by_id: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &got {
            by_id
                .entry(e.persistence_id().to_string())
                .or_default()
                .push(e.sequence_nr());
        }
        for (id, seqs) in &by_id {
            assert_eq!(
                seqs,
                &(1..=EACH).collect::<Vec<_>>(),
                "subscriber {i}, {id}"
            );
        }
        assert_eq!(by_id.len(), WRITERS, "subscriber {i}: every writer's id");
        per_sub.push(by_id);
    }
    assert_eq!(
        per_sub[0], per_sub[1],
        "both subscribers, the same per-id order"
    );
    for sub in subs.iter_mut() {
        ctx.assert_quiet(sub, "nothing more was written").await;
    }
}

/// 100 ids each write two events, concurrently (16 at a time): `current_persistence_ids`
/// lists each once, and a live `persistence_ids` started before delivers each once.
async fn concurrent_ids(ctx: Ctx) {
    const IDS: usize = 100;
    let mut live = ctx
        .caps
        .live_queries
        .then(|| ctx.stores.read_journal.persistence_ids());
    let ids: Vec<PersistenceId> = (0..IDS).map(|i| ctx.pid(&format!("c{i:03}"))).collect();
    let ctx = Arc::new(ctx);
    let chunks: Vec<Vec<PersistenceId>> = ids.chunks(IDS / 16 + 1).map(|c| c.to_vec()).collect();
    let writers: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                for id in &chunk {
                    ctx.write(id, 1, 1).await;
                }
                for id in &chunk {
                    ctx.stores
                        .journal
                        .write(ctx.atomic(id, 2, 2))
                        .await
                        .expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let acked = Instant::now();
    let want: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(ctx.ids().await, want, "each id once");
    if let Some(live) = live.as_mut() {
        let mut got = BTreeSet::new();
        for n in 0..IDS {
            let id: PersistenceId = ctx
                .next_live(live, acked, &format!("new id {} of {IDS}", n + 1))
                .await;
            assert!(
                got.insert(id.to_string()),
                "{id} delivered twice by the live query"
            );
        }
        assert_eq!(got, want);
        let extra = next_within(live, ctx.quiet_window().max(Duration::from_millis(250))).await;
        assert_eq!(extra, None, "nothing more: no id twice");
    }
}

/// A live `events_by_tag` started first, then 100 tasks at once, each writing 5 events of
/// its own id under the tag: the live query delivers all 500 exactly once, each id's in
/// order, however late any write lands (a backend that reads behind a settle delay loses
/// the writes slower than it), and nothing more.
async fn live_tag_many_writers(ctx: Ctx) {
    const IDS: usize = 100;
    const EACH: u64 = 5;
    let tag = ctx.tag("many");
    let mut live = ctx
        .stores
        .read_journal
        .events_by_tag(tag.clone(), Offset::NoOffset);
    let ctx = Arc::new(ctx);
    let writers: Vec<_> = (0..IDS)
        .map(|w| {
            let (ctx, tag) = (ctx.clone(), tag.clone());
            tokio::spawn(async move {
                let id = ctx.pid(&format!("m{w:03}"));
                for seq in 1..=EACH {
                    ctx.write_tagged(&id, seq, &[&tag]).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let acked = Instant::now();
    let total = IDS * EACH as usize;
    let mut got: Vec<EventEnvelope> = Vec::new();
    let mut seen = BTreeSet::new();
    while got.len() < total {
        let e: EventEnvelope = ctx
            .next_live(
                &mut live,
                acked,
                &format!(
                    "event {} of {total} (missing, e.g.: {:?})",
                    got.len() + 1,
                    missing_of(&seen, IDS, EACH, &ctx)
                ),
            )
            .await;
        let key = (e.persistence_id().to_string(), e.sequence_nr());
        assert!(seen.insert(key.clone()), "{key:?} delivered twice");
        got.push(e);
    }
    assert_per_id_order(&got);
    ctx.assert_quiet(&mut live, "every event was delivered")
        .await;
}

/// Up to five (id, sequence number) pairs of the 100-writer case not seen yet.
fn missing_of(
    seen: &BTreeSet<(String, u64)>,
    ids: usize,
    each: u64,
    ctx: &Ctx,
) -> Vec<(String, u64)> {
    (0..ids)
        .flat_map(|w| (1..=each).map(move |s| (w, s)))
        .map(|(w, s)| (ctx.pid(&format!("m{w:03}")).to_string(), s))
        .filter(|k| !seen.contains(k))
        .take(5)
        .collect()
}
