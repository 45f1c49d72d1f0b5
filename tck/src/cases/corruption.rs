//! Corruption cases: one stored event (or snapshot) damaged directly in the database
//! through the factory's [`crate::StoreFactory::corrupt_event`] hook; reading it must fail
//! with an error that names the persistence id and the sequence number (in
//! [`Error::persistence_id`] and [`Error::sequence_range`] and in its text), and every other
//! event and id must still read.
//!
//! Where decoding happens decides the kind:
//! - The payload is opaque to the store: it returns the damaged bytes as they are, and the
//!   codec fails to decode them (in `Entity::recover`, `PersistentEvent::decode_payload`,
//!   `SelectedSnapshot::decode_snapshot`) with `Serialization`, naming the event or snapshot.
//! - Every other column (tags, metadata, manifest, numbers) the store decodes itself: replay
//!   and queries fail with `Corrupt`, naming the record and the column.
//!
//! A factory without the hook, or one whose store cannot hold the damage (a typed column),
//! answers `Unsupported`, and the case is reported as ignored with that reason.

use futures::{Stream, StreamExt};
use persistence_api::ReadJournalExt;
use persistence_api::{
    AtomicWrite, CborCodec, Entity, EntityConfig, Error, ErrorKind, EventSourced, JournalExt,
    Offset, Payload, PersistenceId, PersistentEvent, SequenceNr, SnapshotSelectionCriteria,
};
use serde::{Deserialize, Serialize};

use super::{cases, Case, Finish};
use crate::context::Ctx;
use crate::Corruption;

pub fn cases() -> Vec<Case> {
    cases![
        "corruption::garbage_event_payload_names_the_event" => [] garbage_event_payload;
        "corruption::garbage_snapshot_payload_names_the_snapshot" => [Snapshots] garbage_snapshot_payload;
        "corruption::unreadable_tags_name_the_event" => [Tags] unreadable_tags;
        "corruption::unreadable_event_metadata_names_the_event" => [EventMetadata] unreadable_metadata;
        "corruption::unreadable_event_column_names_the_event" => [] unreadable_column;
        "corruption::unreadable_snapshot_column_names_the_snapshot" => [Snapshots] unreadable_snapshot_column;
    ]
}

/// The entity the payload cases recover: a running total.
#[derive(Default, Serialize, Deserialize)]
struct Total {
    sum: u64,
}

#[derive(Serialize, Deserialize)]
enum Added {
    Added(u64),
}

impl EventSourced for Total {
    type Event = Added;
    const TYPE_NAME: &'static str = "tck.Total";
    fn apply(&mut self, event: &Added) {
        let Added::Added(n) = event;
        self.sum += n;
    }
}

/// Persists `Added(1)`, `Added(2)`, ... `Added(n)` to `id`, one event per write, and returns
/// the entity.
async fn persist_totals(ctx: &Ctx, id: &PersistenceId, n: u64) -> Entity<Total> {
    let mut entity = Entity::<Total>::recover(&ctx.stores, id.clone(), EntityConfig::default())
        .await
        .unwrap_or_else(|e| panic!("recovering the fresh {id}: {e}"));
    for i in 1..=n {
        entity
            .persist_one(Added::Added(i))
            .await
            .unwrap_or_else(|e| panic!("persisting event {i} of {id}: {e}"));
    }
    entity
}

/// Asserts that `err` names the record `(id, seq)` in its fields and its text, with `kind`,
/// and (when given) the damaged `column` in its text; `what` names the read for messages.
fn assert_names(
    err: &Error,
    kind: ErrorKind,
    id: &PersistenceId,
    seq: SequenceNr,
    column: Option<&str>,
    what: &str,
) {
    let text = err.to_string();
    assert_eq!(err.kind(), kind, "{what}: the kind of {text}");
    assert_eq!(
        err.persistence_id(),
        Some(id.as_str()),
        "{what}: the error's persistence id ({text})"
    );
    assert_eq!(
        err.sequence_range(),
        Some((seq, seq)),
        "{what}: the error's sequence numbers ({text})"
    );
    assert!(
        text.contains(id.as_str()) && text.contains(&format!("sequence number {seq}")),
        "{what}: the message names {id} and sequence number {seq}: {text}"
    );
    if let Some(column) = column {
        assert!(
            text.contains(column),
            "{what}: the message names the damaged column {column:?}: {text}"
        );
    }
    assert!(!err.is_retryable(), "{what}: not retryable: {text}");
}

async fn garbage_event_payload(ctx: Ctx) -> Finish {
    let (p, q) = (ctx.pid("p"), ctx.pid("q"));
    persist_totals(&ctx, &p, 3).await;
    persist_totals(&ctx, &q, 2).await;
    let (before, _) = ctx.replay_events(&p, 1, u64::MAX, u64::MAX).await;
    if let Err(skip) = ctx.corrupt_event(&p, 2, Corruption::Payload).await {
        return skip;
    }

    // The store returns the payload as it holds it: opaque bytes, the rest unchanged.
    let (after, highest) = ctx.replay_events(&p, 1, u64::MAX, u64::MAX).await;
    assert_eq!(highest, 3);
    assert_eq!(
        after.iter().map(|e| e.sequence_nr).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "a damaged payload is still replayed"
    );
    assert_ne!(
        after[1].payload.bytes, before[1].payload.bytes,
        "the hook changed the payload of event 2"
    );
    assert_eq!(
        (&after[0], &after[2]),
        (&before[0], &before[2]),
        "events 1 and 3 are untouched"
    );

    let codec = CborCodec::<Added>::new(format!("{}.Event", Total::TYPE_NAME));
    let err = after[1]
        .decode_payload(&codec)
        .map(|_| ())
        .expect_err("the damaged payload does not decode");
    assert_names(
        &err,
        ErrorKind::Serialization,
        &p,
        2,
        None,
        "decode_payload",
    );
    after[0]
        .decode_payload(&codec)
        .expect("event 1 still decodes");

    let err = Entity::<Total>::recover(&ctx.stores, p.clone(), EntityConfig::default())
        .await
        .map(|_| ())
        .expect_err("recovering over a damaged payload fails");
    assert_names(
        &err,
        ErrorKind::Serialization,
        &p,
        2,
        None,
        "Entity::recover",
    );

    let other = Entity::<Total>::recover(&ctx.stores, q.clone(), EntityConfig::default())
        .await
        .unwrap_or_else(|e| panic!("another id recovers: {e}"));
    assert_eq!((other.state().sum, other.sequence_nr()), (3, 2));
    Finish::Passed
}

async fn garbage_snapshot_payload(ctx: Ctx) -> Finish {
    let (p, q) = (ctx.pid("p"), ctx.pid("q"));
    persist_totals(&ctx, &p, 3)
        .await
        .save_snapshot()
        .await
        .unwrap();
    let mut other = persist_totals(&ctx, &q, 3).await;
    other.save_snapshot().await.unwrap();
    if let Err(skip) = ctx.corrupt_snapshot(&p, 3, Corruption::Payload).await {
        return skip;
    }

    let loaded = ctx
        .stores
        .snapshots
        .load_snapshot(&p, SnapshotSelectionCriteria::latest())
        .await
        .unwrap_or_else(|e| panic!("the store returns the damaged snapshot as it holds it: {e}"))
        .expect("the damaged snapshot is still found");
    assert_eq!(loaded.metadata.sequence_nr, 3);
    let codec = CborCodec::<Total>::new(Total::TYPE_NAME);
    let err = loaded
        .decode_snapshot(&codec)
        .map(|_| ())
        .expect_err("the damaged snapshot does not decode");
    assert_names(
        &err,
        ErrorKind::Serialization,
        &p,
        3,
        None,
        "decode_snapshot",
    );

    let err = Entity::<Total>::recover(&ctx.stores, p.clone(), EntityConfig::default())
        .await
        .map(|_| ())
        .expect_err("recovering from a damaged snapshot fails");
    assert_names(
        &err,
        ErrorKind::Serialization,
        &p,
        3,
        None,
        "Entity::recover",
    );

    let other = Entity::<Total>::recover(&ctx.stores, q.clone(), EntityConfig::default())
        .await
        .unwrap_or_else(|e| panic!("another id recovers from its snapshot: {e}"));
    assert_eq!(other.recovery_info().snapshot_sequence_nr, Some(3));
    assert_eq!(other.state().sum, 6);
    Finish::Passed
}

async fn unreadable_tags(ctx: Ctx) -> Finish {
    damaged_event_column(ctx, Corruption::Tags).await
}

async fn unreadable_metadata(ctx: Ctx) -> Finish {
    damaged_event_column(ctx, Corruption::Metadata).await
}

async fn unreadable_column(ctx: Ctx) -> Finish {
    damaged_event_column(ctx, Corruption::Column).await
}

/// Events 1..=n of `id`, one per write, each with `tag` (where the backend has tags) and
/// metadata (where it has event metadata).
async fn write_full(ctx: &Ctx, id: &PersistenceId, n: SequenceNr, tag: &str) {
    for seq in 1..=n {
        let mut e: PersistentEvent = ctx.event(id, seq);
        if ctx.caps.tags {
            e = e.with_tags([tag.to_string()]);
        }
        if ctx.caps.event_metadata {
            e = e.with_metadata(Payload::new("m", "m/v1", vec![seq as u8; 4]));
        }
        ctx.stores
            .journal
            .write(AtomicWrite::single(e).unwrap())
            .await
            .unwrap_or_else(|e| panic!("writing {id} {seq}: {e}"));
    }
}

/// Reads `stream` until its first error and returns it, after checking that nothing at or
/// above `seq` of `id` came before it.
async fn first_error<T, S>(
    stream: S,
    id: &PersistenceId,
    seq: SequenceNr,
    key: impl Fn(&T) -> (String, SequenceNr),
    what: &str,
) -> Error
where
    S: Stream<Item = persistence_api::Result<T>> + Unpin,
{
    let mut stream = stream;
    let read = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => {
                    let (i, s) = key(&item);
                    assert!(
                        !(i == id.as_str() && s >= seq),
                        "{what}: {i} {s} was delivered, but event {seq} of {id} is damaged"
                    );
                }
                Err(e) => return e,
            }
        }
        panic!("{what}: the stream completed without an error, over a damaged event {id} {seq}")
    };
    tokio::time::timeout(crate::context::QUERY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: no error within {:?}",
                crate::context::QUERY_TIMEOUT
            )
        })
}

/// One non-payload column of event 2 of `p` damaged: replay, events-by-id and events-by-tag
/// fail with `Corrupt` naming the event and the column; the events around it, and another
/// id, still read.
async fn damaged_event_column(ctx: Ctx, what: Corruption) -> Finish {
    let (p, q) = (ctx.pid("p"), ctx.pid("q"));
    let (tag_p, tag_q) = (ctx.tag("p"), ctx.tag("q"));
    write_full(&ctx, &p, 3, &tag_p).await;
    write_full(&ctx, &q, 2, &tag_q).await;
    let (q_before, _) = ctx.replay_events(&q, 1, u64::MAX, u64::MAX).await;
    let column = match ctx.corrupt_event(&p, 2, what).await {
        Ok(column) => column,
        Err(skip) => return skip,
    };
    assert!(!column.is_empty(), "the hook names the column it damaged");
    let column = Some(column.as_str());
    let event_key = |e: &PersistentEvent| (e.persistence_id.to_string(), e.sequence_nr);

    let err = match ctx.stores.journal.replay(&p, 1, u64::MAX, u64::MAX).await {
        Err(e) => e,
        Ok(replay) => first_error(replay.events, &p, 2, event_key, "replay").await,
    };
    assert_names(&err, ErrorKind::Corrupt, &p, 2, column, "replay");

    // The damage is confined to the one event.
    assert_eq!(ctx.replay(&p, 1, 1, u64::MAX).await, (vec![1], 3));
    assert_eq!(ctx.replay(&p, 3, u64::MAX, u64::MAX).await, (vec![3], 3));
    assert_eq!(ctx.highest(&p).await, 3);

    if ctx.caps.query_events_by_persistence_id {
        let stream =
            ctx.stores
                .read_journal
                .current_events_by_persistence_id(p.clone(), 1, u64::MAX);
        let err = first_error(
            stream,
            &p,
            2,
            |e: &persistence_api::EventEnvelope| event_key(&e.event),
            "current_events_by_persistence_id",
        )
        .await;
        assert_names(
            &err,
            ErrorKind::Corrupt,
            &p,
            2,
            column,
            "current_events_by_persistence_id",
        );
    }
    if ctx.caps.tags && ctx.caps.query_events_by_tag {
        let stream = ctx
            .stores
            .read_journal
            .current_events_by_tag(tag_p.clone(), Offset::NoOffset);
        let err = first_error(
            stream,
            &p,
            2,
            |e: &persistence_api::EventEnvelope| event_key(&e.event),
            "current_events_by_tag",
        )
        .await;
        assert_names(
            &err,
            ErrorKind::Corrupt,
            &p,
            2,
            column,
            "current_events_by_tag",
        );
    }

    // Another id is unaffected, every field of it.
    let (q_after, q_highest) = ctx.replay_events(&q, 1, u64::MAX, u64::MAX).await;
    assert_eq!((&q_after, q_highest), (&q_before, 2), "another id replays");
    if ctx.caps.query_events_by_persistence_id {
        assert_eq!(ctx.by_id(&q, 1, u64::MAX).await.len(), 2);
    }
    if ctx.caps.tags && ctx.caps.query_events_by_tag {
        assert_eq!(ctx.by_tag(&tag_q, Offset::NoOffset).await.len(), 2);
    }
    Finish::Passed
}

/// One column of the snapshot at 3 of `p` damaged: loading it fails with `Corrupt` naming
/// the id, the snapshot's sequence number and the column; an older snapshot of `p` is not
/// hidden by it when asked for, and another id's snapshot loads.
async fn unreadable_snapshot_column(ctx: Ctx) -> Finish {
    let (p, q) = (ctx.pid("p"), ctx.pid("q"));
    let mut entity = persist_totals(&ctx, &p, 2).await;
    entity.save_snapshot().await.unwrap();
    entity.persist_one(Added::Added(3)).await.unwrap();
    entity.save_snapshot().await.unwrap();
    persist_totals(&ctx, &q, 3)
        .await
        .save_snapshot()
        .await
        .unwrap();
    let column = match ctx.corrupt_snapshot(&p, 3, Corruption::Column).await {
        Ok(column) => column,
        Err(skip) => return skip,
    };
    assert!(!column.is_empty(), "the hook names the column it damaged");

    let err = ctx
        .stores
        .snapshots
        .load_snapshot(&p, SnapshotSelectionCriteria::latest())
        .await
        .map(|_| ())
        .expect_err("loading the damaged snapshot fails");
    assert_names(
        &err,
        ErrorKind::Corrupt,
        &p,
        3,
        Some(&column),
        "load_snapshot",
    );
    let older = ctx
        .stores
        .snapshots
        .load_snapshot(
            &p,
            SnapshotSelectionCriteria::latest().with_max_sequence_nr(2),
        )
        .await
        .unwrap_or_else(|e| panic!("the older snapshot loads: {e}"))
        .expect("the older snapshot is found");
    assert_eq!(older.metadata.sequence_nr, 2);
    let other = ctx
        .stores
        .snapshots
        .load_snapshot(&q, SnapshotSelectionCriteria::latest())
        .await
        .unwrap_or_else(|e| panic!("another id's snapshot loads: {e}"))
        .expect("another id's snapshot is found");
    assert_eq!(other.metadata.sequence_nr, 3);
    Finish::Passed
}
