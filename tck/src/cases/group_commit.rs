//! Many concurrent writers, one event each: what a backend that gathers concurrent writes
//! into one commit (group commit) must still give every caller, and what one that does
//! not gather them gives anyway. 1,000 ids write their first event concurrently, then 10
//! more rounds (every id its next event, concurrently); in every round one id's sequence
//! number was taken a moment before by a second writer, so that write alone must fail
//! with `Conflict` while the others are stored. Every acknowledged write must then be
//! stored exactly once, in order per id, and nothing refused may be stored.

use futures::stream::{self, StreamExt};
use persistence_api::{AtomicWrite, ErrorKind, JournalExt, PersistenceId, PersistentEvent};

use super::{cases, Case};
use crate::context::{collect, Ctx};

pub fn cases() -> Vec<Case> {
    cases![
        "group_commit::1000_concurrent_writers_each_get_their_own_result" => [ConflictDetection] many_writers;
    ]
}

/// Ids writing concurrently.
const IDS: usize = 1000;
/// Rounds: the first event of every id, then 10 more.
const ROUNDS: u64 = 11;
/// Writes in flight at once.
const IN_FLIGHT: usize = 100;

/// One event of `id` at `seq` by `writer`, with the kit's payload.
fn one(id: &PersistenceId, seq: u64, writer: &str) -> AtomicWrite {
    AtomicWrite::single(
        PersistentEvent::new(id.clone(), seq, Ctx::payload(id, seq)).with_writer_id(writer),
    )
    .expect("a valid atomic write")
}

/// See the module's documentation. The id at index 0 is the one that conflicts: before
/// each round a second writer (`"rival"`) writes its next sequence number, then the id's
/// own writer (`"w1"`) tries the same number among everyone else's writes.
async fn many_writers(ctx: Ctx) {
    let ids: Vec<PersistenceId> = (0..IDS).map(|i| ctx.pid(&format!("gc-{i}"))).collect();
    let victim = ids[0].clone();
    for seq in 1..=ROUNDS {
        let rival = one(&victim, seq, "rival");
        ctx.stores
            .journal
            .write(rival)
            .await
            .unwrap_or_else(|e| panic!("round {seq}: the rival's write of {victim} failed: {e}"));
        let outcomes: Vec<(
            usize,
            persistence_api::Result<Vec<persistence_api::Result<()>>>,
        )> = stream::iter(ids.iter().cloned().enumerate())
            .map(|(i, id)| {
                let journal = ctx.stores.journal.clone();
                async move {
                    let write = one(&id, seq, "w1");
                    (i, journal.write_events(vec![write]).await)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        assert_eq!(outcomes.len(), IDS, "round {seq}: one outcome per call");
        for (i, outcome) in outcomes {
            let id = &ids[i];
            let results =
                outcome.unwrap_or_else(|e| panic!("round {seq}: the call of {id} failed: {e}"));
            assert_eq!(
                results.len(),
                1,
                "round {seq}: one result for the one atomic write of {id}"
            );
            let result = results.into_iter().next().expect("one result");
            if i == 0 {
                let err = result.expect_err(&format!(
                    "round {seq}: {id}'s sequence number {seq} was taken by the rival, \
                     yet its write was acknowledged"
                ));
                assert_eq!(
                    err.kind(),
                    ErrorKind::Conflict,
                    "round {seq}: the taken write of {id} fails with Conflict: {err}"
                );
            } else {
                result.unwrap_or_else(|e| {
                    panic!(
                        "round {seq}: {id} wrote {seq} beside a conflicting writer and failed: {e}"
                    )
                });
            }
        }
    }
    // Every acknowledged write exactly once, in order; the refused ones not at all.
    let checks: Vec<(usize, Vec<persistence_api::PersistentEvent>, u64)> =
        stream::iter(ids.iter().cloned().enumerate())
            .map(|(i, id)| {
                let journal = ctx.stores.journal.clone();
                async move {
                    let replay = journal
                        .replay(&id, 1, u64::MAX, u64::MAX)
                        .await
                        .unwrap_or_else(|e| panic!("replay of {id}: {e}"));
                    let events = collect(replay.events)
                        .await
                        .unwrap_or_else(|e| panic!("replay stream of {id}: {e}"));
                    (i, events, replay.highest_sequence_nr)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    for (i, events, highest) in checks {
        let id = &ids[i];
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence_nr).collect();
        assert_eq!(
            seqs,
            (1..=ROUNDS).collect::<Vec<_>>(),
            "{id}: each sequence number once, in order"
        );
        assert_eq!(highest, ROUNDS, "{id}: highest");
        let writer = if i == 0 { "rival" } else { "w1" };
        for e in &events {
            assert_eq!(
                e.writer_id, writer,
                "{id} {}: stored by the writer that was acknowledged",
                e.sequence_nr
            );
            assert_eq!(
                e.payload,
                Ctx::payload(id, e.sequence_nr),
                "{id} {}: its own payload",
                e.sequence_nr
            );
        }
    }
}
