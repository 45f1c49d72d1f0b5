//! Projection cases: the `persistence-projection` runner over the backend's read journal
//! and offset store. Offsets resume exactly across restarts (none skipped at-least-once,
//! none skipped or repeated exactly-once), a second instance is refused, offsets are set
//! and cleared through the handle, groups respect their size and wait, handler failures
//! stop, skip or restart as configured, live projections deliver within the declared
//! delay, and many concurrent writers lose nothing through a projection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistence_api::{DurableStateChange, Payload};
use persistence_api::{
    Error, ErrorKind, EventEnvelope, Offset, PersistenceId, QueryMode, Result, StoreTransaction,
};
use persistence_projection::{
    ChangeSource, ExactlyOnceHandler, GroupedHandler, Handler, OnFailure, Projection,
    ProjectionSettings, ProjectionState, RestartSettings, Source,
};

use super::offsets::projection_id;
use super::{cases, Case};
use crate::context::{Ctx, CATCH_UP};

pub fn cases() -> Vec<Case> {
    cases![
        "projection::at_least_once_resumes_from_the_committed_offset" => [ProjectionOffsets, QueryEventsByTag] at_least_once_resumes;
        "projection::at_least_once_repeats_only_what_was_not_committed" => [ProjectionOffsets, QueryEventsByTag] at_least_once_repeats;
        "projection::at_most_once_commits_before_handling" => [ProjectionOffsets, QueryEventsByTag] at_most_once;
        "projection::exactly_once_neither_skips_nor_repeats" => [ExactlyOnceProjections, QueryEventsByTag] exactly_once;
        "projection::exactly_once_is_refused_at_build_without_the_capability" => [ProjectionOffsets] exactly_once_as_declared;
        "projection::events_by_persistence_id_source_resumes" => [ProjectionOffsets, QueryEventsByPersistenceId] by_id_resumes;
        "projection::second_instance_is_refused" => [ProjectionOffsets, QueryEventsByTag, LiveQueries] second_instance;
        "projection::set_and_clear_offset_through_the_handle" => [ProjectionOffsets, QueryEventsByTag] set_and_clear;
        "projection::wrong_offset_kind_is_invalid_input" => [ProjectionOffsets, QueryEventsByPersistenceId] wrong_offset_kind;
        "projection::groups_respect_size_and_wait" => [ProjectionOffsets, QueryEventsByTag, LiveQueries] groups;
        "projection::handler_failure_stops_before_the_envelope" => [ProjectionOffsets, QueryEventsByTag] failure_stops;
        "projection::handler_failure_skips_when_told" => [ProjectionOffsets, QueryEventsByTag] failure_skips;
        "projection::transient_failure_restarts_with_backoff" => [ProjectionOffsets, QueryEventsByTag] failure_restarts;
        "projection::pause_resume_and_lag" => [ProjectionOffsets, QueryEventsByTag, LiveQueries] pause_resume_lag;
        "projection::live_projection_delivers_within_the_declared_delay" => [ProjectionOffsets, QueryEventsByTag, LiveQueries] live_delay;
        "projection::live_projection_gets_every_event_of_16_concurrent_writers" => [ProjectionOffsets, QueryEventsByTag, LiveQueries] many_writers;
        "projection::over_state_changes_resumes_from_the_committed_offset" => [ProjectionOffsets, DurableStateChanges] over_changes;
        "projection::exactly_once_over_state_changes" => [ExactlyOnceProjections, DurableStateChanges] exactly_once_over_changes;
    ]
}

type Seen = Arc<Mutex<Vec<(String, u64)>>>;

/// Records what it is handed; fails (with `Unavailable`) on the sequence numbers in
/// `fail_on`, each time or only the first `fail_times` times.
#[derive(Clone, Default)]
struct Recorder {
    seen: Seen,
    fail_on: Arc<Mutex<BTreeMap<u64, u32>>>,
}

impl Recorder {
    fn failing(seq: u64, times: u32) -> Self {
        let r = Recorder::default();
        r.fail_on.lock().unwrap().insert(seq, times);
        r
    }

    fn check(&self, envelope: &EventEnvelope) -> Result<()> {
        let mut fail = self.fail_on.lock().unwrap();
        if let Some(left) = fail.get_mut(&envelope.sequence_nr()) {
            if *left > 0 {
                *left -= 1;
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the read model is down (event {})", envelope.sequence_nr()),
                ));
            }
        }
        Ok(())
    }

    fn record(&self, envelope: &EventEnvelope) {
        self.seen.lock().unwrap().push((
            envelope.persistence_id().as_str().to_owned(),
            envelope.sequence_nr(),
        ));
    }

    fn seqs(&self) -> Vec<u64> {
        self.seen.lock().unwrap().iter().map(|(_, s)| *s).collect()
    }

    fn take(&self) -> Vec<u64> {
        let seqs = self.seqs();
        self.seen.lock().unwrap().clear();
        seqs
    }
}

#[persistence_api::async_trait]
impl Handler for Recorder {
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
        self.check(envelope)?;
        self.record(envelope);
        Ok(())
    }
}

#[persistence_api::async_trait]
impl ExactlyOnceHandler for Recorder {
    async fn handle(
        &mut self,
        _transaction: &mut StoreTransaction,
        envelopes: &[EventEnvelope],
    ) -> Result<()> {
        for e in envelopes {
            self.check(e)?;
        }
        for e in envelopes {
            self.record(e);
        }
        Ok(())
    }
}

/// Records the size of each group it is handed, and the envelopes.
#[derive(Clone, Default)]
struct GroupRecorder {
    groups: Arc<Mutex<Vec<usize>>>,
    seen: Seen,
}

#[persistence_api::async_trait]
impl GroupedHandler for GroupRecorder {
    async fn handle_group(&mut self, envelopes: &[EventEnvelope]) -> Result<()> {
        self.groups.lock().unwrap().push(envelopes.len());
        for e in envelopes {
            self.seen
                .lock()
                .unwrap()
                .push((e.persistence_id().as_str().to_owned(), e.sequence_nr()));
        }
        Ok(())
    }
}

/// Fast retries, no restarts, commits as given.
fn settings(commit_every: usize) -> ProjectionSettings {
    ProjectionSettings {
        commit_every,
        commit_interval: Duration::from_secs(3600),
        handler_retries: 1,
        retry_backoff: Duration::from_millis(1),
        retry_max_backoff: Duration::from_millis(2),
        restart: RestartSettings::never(),
        ..ProjectionSettings::default()
    }
}

/// Writes events `from..=to` of `id`, each tagged `tag`.
async fn write(ctx: &Ctx, id: &PersistenceId, from: u64, to: u64, tag: &str) {
    for seq in from..=to {
        ctx.write_tagged(id, seq, &[tag]).await;
    }
}

fn current(tag: &str) -> Source {
    Source::tag(tag, QueryMode::Current)
}

async fn stored_offset(ctx: &Ctx, name: &str) -> Offset {
    ctx.stores
        .offsets
        .read_offset(&projection_id(ctx, name))
        .await
        .unwrap()
        .map(|s| s.offset)
        .unwrap_or_default()
}

/// Ten events; a current projection committing every 3 handles them all and commits the
/// last one's offset; five more; the next run handles exactly those five.
async fn at_least_once_resumes(ctx: Ctx) {
    let id = ctx.pid("alo");
    let tag = ctx.tag("alo");
    write(&ctx, &id, 1, 10, &tag).await;
    let rec = Recorder::default();
    let run = |rec: Recorder| {
        Projection::builder(projection_id(&ctx, "alo"), current(&tag), &ctx.stores)
            .settings(settings(3))
            .at_least_once(rec)
            .run()
    };
    let status = run(rec.clone()).await.unwrap();
    assert_eq!(rec.take(), (1..=10).collect::<Vec<_>>());
    assert_eq!(status.handled, 10);
    assert_eq!(status.state, ProjectionState::Stopped);
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(stored_offset(&ctx, "alo").await, all[9].offset);
    assert_eq!(status.committed, all[9].offset);
    write(&ctx, &id, 11, 15, &tag).await;
    run(rec.clone()).await.unwrap();
    assert_eq!(
        rec.take(),
        (11..=15).collect::<Vec<_>>(),
        "only the new events"
    );
    run(rec.clone()).await.unwrap();
    assert_eq!(
        rec.take(),
        Vec::<u64>::new(),
        "nothing new, nothing handled"
    );
}

/// A run committing every 4 stops on event 7 (its handler keeps failing): events 1..4
/// are committed, 5 and 6 were handled and, with the stop, committed too; the next run
/// starts at 7. Every event is handled at least once, and nothing before the failure is
/// handled twice.
async fn at_least_once_repeats(ctx: Ctx) {
    let id = ctx.pid("repeat");
    let tag = ctx.tag("repeat");
    write(&ctx, &id, 1, 10, &tag).await;
    let failing = Recorder::failing(7, u32::MAX);
    let err = Projection::builder(projection_id(&ctx, "repeat"), current(&tag), &ctx.stores)
        .settings(settings(4))
        .at_least_once(failing.clone())
        .run()
        .await
        .expect_err("the handler fails on event 7");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:#}");
    assert_eq!(err.persistence_id(), Some(id.as_str()), "{err:#}");
    assert_eq!(err.sequence_range(), Some((7, 7)), "{err:#}");
    assert_eq!(failing.take(), (1..=6).collect::<Vec<_>>());
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(
        stored_offset(&ctx, "repeat").await,
        all[5].offset,
        "what was handled before the failure is committed"
    );
    let rec = Recorder::default();
    Projection::builder(projection_id(&ctx, "repeat"), current(&tag), &ctx.stores)
        .settings(settings(4))
        .at_least_once(rec.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(rec.take(), (7..=10).collect::<Vec<_>>());
}

/// At-most-once commits each offset before its handler runs: a handler failing on event 3
/// leaves the offset at event 3, and the next run starts at 4 (3 is lost, by contract).
async fn at_most_once(ctx: Ctx) {
    let id = ctx.pid("amo");
    let tag = ctx.tag("amo");
    write(&ctx, &id, 1, 5, &tag).await;
    let failing = Recorder::failing(3, u32::MAX);
    Projection::builder(projection_id(&ctx, "amo"), current(&tag), &ctx.stores)
        .settings(settings(1))
        .at_most_once(failing.clone())
        .run()
        .await
        .expect_err("the handler fails on event 3");
    assert_eq!(failing.take(), vec![1, 2]);
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(stored_offset(&ctx, "amo").await, all[2].offset);
    let rec = Recorder::default();
    Projection::builder(projection_id(&ctx, "amo"), current(&tag), &ctx.stores)
        .at_most_once(rec.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(rec.take(), vec![4, 5]);
}

/// Exactly-once: each envelope's transaction commits its offset; a handler failing on
/// event 6 leaves the offset at 5 (its transaction was dropped); the next run handles 6
/// to 12. Across both runs each event was handled successfully once. Grouped in threes,
/// the offset moves by whole groups.
async fn exactly_once(ctx: Ctx) {
    let id = ctx.pid("eo");
    let tag = ctx.tag("eo");
    write(&ctx, &id, 1, 10, &tag).await;
    let failing = Recorder::failing(6, u32::MAX);
    let projection = |rec: Recorder| {
        Projection::builder(projection_id(&ctx, "eo"), current(&tag), &ctx.stores)
            .settings(settings(1))
            .exactly_once(rec)
            .expect("exactly-once is declared")
    };
    let err = projection(failing.clone())
        .run()
        .await
        .expect_err("the handler fails on event 6");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(stored_offset(&ctx, "eo").await, all[4].offset);
    let rec = Recorder::default();
    write(&ctx, &id, 11, 12, &tag).await;
    let status = projection(rec.clone()).run().await.unwrap();
    let mut handled = failing.take();
    handled.extend(rec.take());
    assert_eq!(handled, (1..=12).collect::<Vec<_>>(), "each event once");
    assert_eq!(status.commits, 7, "one transaction per envelope");
    // Groups of three: one transaction per group, offsets of whole groups.
    let grouped = Recorder::default();
    write(&ctx, &id, 13, 18, &tag).await;
    let status = Projection::builder(projection_id(&ctx, "eo"), current(&tag), &ctx.stores)
        .settings(settings(1))
        .group_within(3, Duration::from_secs(5))
        .exactly_once(grouped.clone())
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(grouped.take(), (13..=18).collect::<Vec<_>>());
    assert_eq!(status.commits, 2, "two groups of three");
}

/// Building an exactly-once projection over an offset store without transactions is
/// `Unsupported` at once, naming the projection; with them it builds.
async fn exactly_once_as_declared(ctx: Ctx) {
    let built = Projection::builder(projection_id(&ctx, "eo-build"), current("t"), &ctx.stores)
        .exactly_once(Recorder::default());
    match built {
        Ok(_) => assert!(ctx.caps.exactly_once_projections),
        Err(e) => {
            assert!(!ctx.caps.exactly_once_projections, "declared, yet: {e:#}");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e:#}");
            assert!(e.to_string().contains("eo-build"), "{e:#}");
        }
    }
}

/// A projection over one id's events stores `Offset::Sequence` and resumes after it.
async fn by_id_resumes(ctx: Ctx) {
    let id = ctx.pid("byid");
    ctx.write(&id, 1, 4).await;
    let source = Source::persistence_id(id.clone(), QueryMode::Current);
    let run = |rec: Recorder| {
        Projection::builder(projection_id(&ctx, "byid"), source.clone(), &ctx.stores)
            .settings(settings(2))
            .at_least_once(rec)
            .run()
    };
    let rec = Recorder::default();
    run(rec.clone()).await.unwrap();
    assert_eq!(rec.take(), vec![1, 2, 3, 4]);
    assert_eq!(stored_offset(&ctx, "byid").await, Offset::Sequence(4));
    ctx.write(&id, 5, 6).await;
    run(rec.clone()).await.unwrap();
    assert_eq!(rec.take(), vec![5, 6]);
}

/// Two instances of one projection: the first (live) commits events 1 and 2 and is
/// paused; the second (current) starts from that offset, handles event 3 and commits it;
/// resumed, the first handles event 3 too, and its commit over the version the second
/// moved on is a `Conflict` naming both versions: it stops with it, and the second one's
/// offset stays.
async fn second_instance(ctx: Ctx) {
    let id = ctx.pid("twice");
    let tag = ctx.tag("twice");
    write(&ctx, &id, 1, 2, &tag).await;
    let first = Recorder::default();
    let (handle, task) = Projection::builder(
        projection_id(&ctx, "twice"),
        Source::tag(&tag, QueryMode::Live),
        &ctx.stores,
    )
    .settings(settings(1))
    .at_least_once(first.clone())
    .spawn();
    wait_for(
        || handle.status().commits == 2,
        CATCH_UP,
        "the first instance commits 1, 2",
    )
    .await;
    handle.pause();
    wait_for(
        || handle.status().state == ProjectionState::Paused,
        CATCH_UP,
        "the first instance pauses",
    )
    .await;
    write(&ctx, &id, 3, 3, &tag).await;
    let second = Recorder::default();
    Projection::builder(projection_id(&ctx, "twice"), current(&tag), &ctx.stores)
        .settings(settings(1))
        .at_least_once(second.clone())
        .run()
        .await
        .expect("the second instance handles event 3 and commits");
    assert_eq!(second.take(), vec![3]);
    handle.resume();
    let err = tokio::time::timeout(CATCH_UP + ctx.live_delay(), task)
        .await
        .expect("the first instance stops")
        .unwrap()
        .expect_err("the first instance's commit is a conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    let text = err.to_string();
    assert!(
        text.contains("expected version 2") && text.contains("stored version 3"),
        "{text}"
    );
    assert_eq!(handle.status().state, ProjectionState::Failed);
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    let stored = ctx
        .stores
        .offsets
        .read_offset(&projection_id(&ctx, "twice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.offset, stored.version), (all[2].offset.clone(), 3));
}

/// Polls `cond` every 10 ms until it holds; fails the case after `within`.
async fn wait_for(cond: impl Fn() -> bool, within: Duration, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Through the handle of a finished projection: clear the offset (the next run handles
/// everything again), set it to the third envelope's offset (the next run starts at 4).
async fn set_and_clear(ctx: Ctx) {
    let id = ctx.pid("set");
    let tag = ctx.tag("set");
    write(&ctx, &id, 1, 6, &tag).await;
    let rec = Recorder::default();
    let build = |rec: Recorder| {
        Projection::builder(projection_id(&ctx, "set"), current(&tag), &ctx.stores)
            .settings(settings(10))
            .at_least_once(rec)
    };
    let projection = build(rec.clone());
    let handle = projection.handle();
    projection.run().await.unwrap();
    assert_eq!(rec.take(), (1..=6).collect::<Vec<_>>());
    handle.clear_offset().await.unwrap();
    assert_eq!(stored_offset(&ctx, "set").await, Offset::NoOffset);
    build(rec.clone()).run().await.unwrap();
    assert_eq!(
        rec.take(),
        (1..=6).collect::<Vec<_>>(),
        "replayed from the start"
    );
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    handle.set_offset(all[2].offset.clone()).await.unwrap();
    build(rec.clone()).run().await.unwrap();
    assert_eq!(rec.take(), vec![4, 5, 6], "resumed after the offset set");
}

/// An offset of a kind the source cannot resume from is `InvalidInput` naming the
/// source's id and the offset, before anything is stored.
async fn wrong_offset_kind(ctx: Ctx) {
    let id = ctx.pid("kind");
    let projection = Projection::builder(
        projection_id(&ctx, "kind"),
        Source::persistence_id(id.clone(), QueryMode::Current),
        &ctx.stores,
    )
    .at_least_once(Recorder::default());
    let offset = Offset::Token("t-1".into());
    let err = projection
        .handle()
        .set_offset(offset.clone())
        .await
        .expect_err("a token offset for a by-id source");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:#}");
    let text = err.to_string();
    assert!(
        text.contains(id.as_str()) && text.contains(&offset.to_string()),
        "{text}"
    );
    assert_eq!(stored_offset(&ctx, "kind").await, Offset::NoOffset);
}

/// 25 stored events in groups of at most 10: 10, 10, 5. Live, three events written at
/// once arrive as one group of three within the group's wait, without waiting for ten.
async fn groups(ctx: Ctx) {
    let id = ctx.pid("groups");
    let tag = ctx.tag("groups");
    write(&ctx, &id, 1, 25, &tag).await;
    let rec = GroupRecorder::default();
    Projection::builder(projection_id(&ctx, "groups"), current(&tag), &ctx.stores)
        .settings(settings(100))
        .group_within(10, Duration::from_secs(30))
        .grouped(rec.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(*rec.groups.lock().unwrap(), vec![10, 10, 5]);
    assert_eq!(
        stored_offset(&ctx, "groups").await,
        ctx.by_tag(&tag, Offset::NoOffset).await[24].offset
    );
    // Live: the wait ends a group.
    let wait = Duration::from_millis(300);
    let live = GroupRecorder::default();
    let (handle, task) = Projection::builder(
        projection_id(&ctx, "groups"),
        Source::tag(&tag, QueryMode::Live),
        &ctx.stores,
    )
    .settings(settings(100))
    .group_within(10, wait)
    .grouped(live.clone())
    .spawn();
    let id2 = ctx.pid("groups-2");
    let mut events = Vec::new();
    for seq in 1..=3 {
        events.push(ctx.event(&id2, seq).with_tags([tag.clone()]));
    }
    let write = persistence_api::AtomicWrite::new(events).unwrap();
    let acked = {
        use persistence_api::JournalExt;
        ctx.stores.journal.write(write).await.unwrap();
        Instant::now()
    };
    wait_for(
        || live.seen.lock().unwrap().len() == 3,
        ctx.live_delay() + wait + Duration::from_secs(2),
        "three live events handled as a group",
    )
    .await;
    let groups = live.groups.lock().unwrap().clone();
    assert!(groups.iter().all(|&g| g <= 10), "{groups:?}");
    assert_eq!(groups.iter().sum::<usize>(), 3, "{groups:?}");
    assert!(acked.elapsed() < ctx.live_delay() + wait + Duration::from_secs(2));
    handle.stop();
    task.await.unwrap().unwrap();
}

/// A handler that keeps failing on event 3: after its retries the run stops with the
/// handler's error (naming the id and sequence number), the offset before event 3.
async fn failure_stops(ctx: Ctx) {
    let id = ctx.pid("stop");
    let tag = ctx.tag("stop");
    write(&ctx, &id, 1, 5, &tag).await;
    let rec = Recorder::failing(3, u32::MAX);
    let projection = Projection::builder(projection_id(&ctx, "stop"), current(&tag), &ctx.stores)
        .settings(settings(1))
        .at_least_once(rec.clone());
    let handle = projection.handle();
    let err = projection.run().await.expect_err("stops on event 3");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.sequence_range(), Some((3, 3)));
    assert_eq!(rec.take(), vec![1, 2]);
    let status = handle.status();
    assert_eq!(status.state, ProjectionState::Failed);
    assert!(status.last_error.unwrap().contains("read model is down"));
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(stored_offset(&ctx, "stop").await, all[1].offset);
}

/// With `OnFailure::Skip`, event 3 is skipped (counted) and the run goes on; the offset
/// moves past it.
async fn failure_skips(ctx: Ctx) {
    let id = ctx.pid("skip");
    let tag = ctx.tag("skip");
    write(&ctx, &id, 1, 5, &tag).await;
    let rec = Recorder::failing(3, u32::MAX);
    let status = Projection::builder(projection_id(&ctx, "skip"), current(&tag), &ctx.stores)
        .settings(ProjectionSettings {
            on_failure: OnFailure::Skip,
            ..settings(1)
        })
        .at_least_once(rec.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(rec.take(), vec![1, 2, 4, 5]);
    assert_eq!((status.handled, status.skipped), (4, 1));
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(stored_offset(&ctx, "skip").await, all[4].offset);
}

/// A handler that fails on event 2 more often than its retries allow, three times in a
/// row: the run restarts from the stored offset after a backoff each time, then handles
/// everything; each event before the failure is handled once (the offset was committed).
async fn failure_restarts(ctx: Ctx) {
    let id = ctx.pid("restart");
    let tag = ctx.tag("restart");
    write(&ctx, &id, 1, 4, &tag).await;
    // One retry per run: 2 attempts per run, 6 failures = 3 runs fail.
    let rec = Recorder::failing(2, 6);
    let started = Instant::now();
    let status = Projection::builder(projection_id(&ctx, "restart"), current(&tag), &ctx.stores)
        .settings(ProjectionSettings {
            restart: RestartSettings {
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(40),
                max_restarts: Some(5),
            },
            ..settings(1)
        })
        .at_least_once(rec.clone())
        .run()
        .await
        .expect("the restarts get past the failures");
    assert_eq!(rec.take(), vec![1, 2, 3, 4]);
    assert_eq!(status.restarts, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(20 + 40 + 40),
        "the backoffs were waited out"
    );
}

/// A live projection paused handles nothing new (and has committed what it handled);
/// the lag counts the events behind; resumed, it catches up and the lag is zero.
async fn pause_resume_lag(ctx: Ctx) {
    let id = ctx.pid("pause");
    let tag = ctx.tag("pause");
    write(&ctx, &id, 1, 2, &tag).await;
    let rec = Recorder::default();
    let (handle, task) = Projection::builder(
        projection_id(&ctx, "pause"),
        Source::tag(&tag, QueryMode::Live),
        &ctx.stores,
    )
    .settings(settings(100))
    .at_least_once(rec.clone())
    .spawn();
    wait_for(|| rec.seqs().len() == 2, CATCH_UP, "the first two events").await;
    handle.pause();
    wait_for(
        || handle.status().state == persistence_projection::ProjectionState::Paused,
        CATCH_UP,
        "the projection pauses",
    )
    .await;
    let all = ctx.by_tag(&tag, Offset::NoOffset).await;
    assert_eq!(
        stored_offset(&ctx, "pause").await,
        all[1].offset,
        "pausing commits"
    );
    write(&ctx, &id, 3, 5, &tag).await;
    tokio::time::sleep(ctx.quiet_window()).await;
    assert_eq!(rec.seqs().len(), 2, "nothing handled while paused");
    let lag = handle.lag().await.unwrap();
    assert_eq!((lag.events, lag.capped), (3, false));
    handle.resume();
    wait_for(
        || rec.seqs().len() == 5,
        CATCH_UP + ctx.live_delay(),
        "caught up after resuming",
    )
    .await;
    assert_eq!(handle.lag().await.unwrap().events, 0);
    handle.stop();
    let status = task.await.unwrap().unwrap();
    assert_eq!(status.handled, 5);
    assert_eq!(
        stored_offset(&ctx, "pause").await,
        ctx.by_tag(&tag, Offset::NoOffset).await[4].offset
    );
}

/// Each event written while a live projection runs reaches its handler within the
/// backend's declared live delay (plus 100 ms for the runner).
async fn live_delay(ctx: Ctx) {
    let id = ctx.pid("live");
    let tag = ctx.tag("live");
    let rec = Recorder::default();
    let (handle, task) = Projection::builder(
        projection_id(&ctx, "live"),
        Source::tag(&tag, QueryMode::Live),
        &ctx.stores,
    )
    .settings(settings(10))
    .at_least_once(rec.clone())
    .spawn();
    let allowed = ctx.live_delay() + Duration::from_millis(100);
    for seq in 1..=5u64 {
        ctx.write_tagged(&id, seq, &[&tag]).await;
        let acked = Instant::now();
        wait_for(
            || rec.seqs().len() == seq as usize,
            allowed * 4,
            "the live event",
        )
        .await;
        let took = acked.elapsed();
        assert!(
            took <= allowed,
            "event {seq} reached the handler {took:?} after its write; declared {:?}",
            ctx.live_delay()
        );
    }
    handle.stop();
    task.await.unwrap().unwrap();
}

/// Sixteen writers, 20 events each, while a live projection runs: every event reaches the
/// handler, once, in order per id.
async fn many_writers(ctx: Ctx) {
    let tag = ctx.tag("many");
    let rec = Recorder::default();
    let (handle, task) = Projection::builder(
        projection_id(&ctx, "many"),
        Source::tag(&tag, QueryMode::Live),
        &ctx.stores,
    )
    .settings(settings(50))
    .at_least_once(rec.clone())
    .spawn();
    let ctx = Arc::new(ctx);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (ctx, tag) = (ctx.clone(), tag.clone());
            tokio::spawn(async move {
                let id = ctx.pid(&format!("many-{w}"));
                write(&ctx, &id, 1, 20, &tag).await;
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    wait_for(
        || rec.seen.lock().unwrap().len() >= 320,
        CATCH_UP + ctx.live_delay() * 4,
        "all 320 events through the projection",
    )
    .await;
    tokio::time::sleep(ctx.quiet_window()).await;
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 320, "no event twice");
    let mut per_id: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, seq) in seen {
        per_id.entry(id).or_default().push(seq);
    }
    assert_eq!(per_id.len(), 16);
    for (id, seqs) in per_id {
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{id}: all, in order");
    }
    handle.stop();
    task.await.unwrap().unwrap();
}

/// Records the changes it is handed: (id, revision, deleted).
#[derive(Clone, Default)]
struct ChangeRecorder(Arc<Mutex<Vec<(String, u64, bool)>>>);

impl ChangeRecorder {
    fn take(&self) -> Vec<(String, u64, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn record(&self, c: &DurableStateChange) {
        self.0
            .lock()
            .unwrap()
            .push((c.persistence_id.to_string(), c.revision, c.is_deleted()));
    }
}

#[persistence_api::async_trait]
impl Handler<DurableStateChange> for ChangeRecorder {
    async fn handle(&mut self, change: &DurableStateChange) -> Result<()> {
        self.record(change);
        Ok(())
    }
}

#[persistence_api::async_trait]
impl ExactlyOnceHandler<DurableStateChange> for ChangeRecorder {
    async fn handle(
        &mut self,
        _transaction: &mut StoreTransaction,
        changes: &[DurableStateChange],
    ) -> Result<()> {
        for c in changes {
            self.record(c);
        }
        Ok(())
    }
}

async fn upsert(ctx: &Ctx, id: &PersistenceId, revision: u64, tag: &str) {
    ctx.stores
        .durable_state
        .upsert(
            id,
            revision,
            Payload::raw(vec![revision as u8]),
            Some(tag.into()),
        )
        .await
        .unwrap_or_else(|e| panic!("upsert {id} at {revision}: {e:#}"));
}

/// A current projection over state changes handles each id's latest change (a delete
/// too) and commits; the next run handles only the changes made since.
async fn over_changes(ctx: Ctx) {
    let tag = ctx.tag("states");
    let (a, b) = (ctx.pid("a"), ctx.pid("b"));
    upsert(&ctx, &a, 1, &tag).await;
    upsert(&ctx, &b, 1, &tag).await;
    upsert(&ctx, &a, 2, &tag).await;
    let rec = ChangeRecorder::default();
    let run = |rec: ChangeRecorder| {
        Projection::builder(
            projection_id(&ctx, "states"),
            ChangeSource::tag(&tag, QueryMode::Current),
            &ctx.stores,
        )
        .settings(settings(10))
        .at_least_once(rec)
        .run()
    };
    run(rec.clone()).await.unwrap();
    assert_eq!(
        rec.take(),
        vec![(b.to_string(), 1, false), (a.to_string(), 2, false)]
    );
    ctx.stores.durable_state.delete(&b, 2).await.unwrap();
    run(rec.clone()).await.unwrap();
    assert_eq!(
        rec.take(),
        vec![(b.to_string(), 2, true)],
        "only the change since"
    );
}

/// Exactly-once over state changes: each change's transaction commits its offset, and
/// the next run starts after it.
async fn exactly_once_over_changes(ctx: Ctx) {
    let tag = ctx.tag("states-eo");
    let a = ctx.pid("a");
    upsert(&ctx, &a, 1, &tag).await;
    let rec = ChangeRecorder::default();
    let run = |rec: ChangeRecorder| {
        Projection::builder(
            projection_id(&ctx, "states-eo"),
            ChangeSource::tag(&tag, QueryMode::Current),
            &ctx.stores,
        )
        .settings(settings(1))
        .exactly_once(rec)
        .expect("declared")
        .run()
    };
    let status = run(rec.clone()).await.unwrap();
    assert_eq!(
        (rec.take(), status.commits),
        (vec![(a.to_string(), 1, false)], 1)
    );
    upsert(&ctx, &a, 2, &tag).await;
    run(rec.clone()).await.unwrap();
    assert_eq!(rec.take(), vec![(a.to_string(), 2, false)]);
}
