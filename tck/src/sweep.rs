//! Helpers for fault sweeps: the same write cut at many byte offsets by a
//! [`crate::fault::FaultProxy`], and what a store must show afterwards.
//!
//! Every backend's `tests/faults.rs` uses these, so "all or nothing" means the same thing
//! everywhere: the replayed events, the highest sequence number (asked directly and as a
//! replay reports it) and the id's events under the case's tag.

use persistence_api::ReadJournalExt;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, Stores,
};

/// The shape of the write a sweep cuts.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Used as the persistence id's prefix.
    pub name: &'static str,
    /// Events in the cut write (after one event written before it).
    pub events: u64,
    /// Whether every event carries the case's tag.
    pub tagged: bool,
    /// Cut points spread evenly over the write's bytes.
    pub points: u64,
}

/// [`crate::server_env`], plus a line on stderr that shows even when the test harness
/// captures output.
pub fn server_env(var: &str) -> Option<String> {
    let value = crate::server_env(var);
    if value.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "*** SKIPPED fault test: {var} is not set (start the server with scripts/servers/*.sh) ***"
        );
    }
    value
}

/// Nanoseconds since the epoch, for unique names.
pub fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Event `seq` of `pid`, with a fixed-length payload so every case's requests have the
/// calibrated size.
pub fn event(pid: &PersistenceId, seq: u64, tag: Option<&str>) -> PersistentEvent {
    let e = PersistentEvent::new(
        pid.clone(),
        seq,
        Payload::new(
            "raw",
            "faults.Event/v1",
            format!("payload-{seq:06}").into_bytes(),
        ),
    )
    .with_writer_id("faults-writer");
    match tag {
        Some(t) => e.with_tags([t]),
        None => e,
    }
}

/// Events `from..from + count` as one atomic write.
pub fn batch(pid: &PersistenceId, from: u64, count: u64, tag: Option<&str>) -> AtomicWrite {
    AtomicWrite::new((from..from + count).map(|s| event(pid, s, tag)).collect())
        .expect("a valid atomic write")
}

/// The persistence id of one case.
pub fn pid_of(shape: Shape, case: &str) -> PersistenceId {
    PersistenceId::new(format!("{}-{case}", shape.name)).expect("a valid id")
}

/// The tag of one case.
pub fn tag_of(case: &str) -> String {
    format!("tag-{case}")
}

/// What a store shows of one id: replayed `(seq, payload, tags)`, the highest two ways,
/// and that id's events under the tag.
#[derive(Debug, PartialEq)]
pub struct Seen {
    /// Replayed `(sequence number, payload, tags)`.
    pub replayed: Vec<(u64, Payload, Vec<String>)>,
    /// `highest_sequence_nr`.
    pub highest: u64,
    /// The highest a replay reports.
    pub replay_highest: u64,
    /// The id's events under the tag: `(sequence number, payload)`.
    pub tagged: Vec<(u64, Payload)>,
}

/// Reads what `stores` show of `pid`: replay first (a backend may complete tag rows a
/// failed write left out during replay), then the highest, then the tag.
pub async fn seen(stores: &Stores, pid: &PersistenceId, tag: &str) -> Seen {
    let replayed = stores
        .journal
        .replay_all(pid)
        .await
        .expect("replay")
        .into_iter()
        .map(|e| (e.sequence_nr, e.payload, e.tags))
        .collect();
    let highest = stores
        .journal
        .highest_sequence_nr(pid)
        .await
        .expect("highest");
    let replay_highest = stores
        .journal
        .replay(pid, 1, u64::MAX, u64::MAX)
        .await
        .expect("replay")
        .highest_sequence_nr;
    let tagged = tagged(stores, pid, tag).await;
    Seen {
        replayed,
        highest,
        replay_highest,
        tagged,
    }
}

/// `pid`'s events under `tag`: `(seq, payload)`.
pub async fn tagged(stores: &Stores, pid: &PersistenceId, tag: &str) -> Vec<(u64, Payload)> {
    stores
        .read_journal
        .current_events_by_tag(tag.to_owned(), Offset::NoOffset)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.expect("events by tag"))
        .filter(|env| env.event.persistence_id == *pid)
        .map(|env| (env.event.sequence_nr, env.event.payload))
        .collect()
}

/// What a store must show when exactly the events `1..=upto` of the case are stored.
pub fn expected(pid: &PersistenceId, upto: u64, shape: Shape, tag: &str) -> Seen {
    let tag = shape.tagged.then_some(tag);
    let events: Vec<PersistentEvent> = (1..=upto).map(|s| event(pid, s, tag)).collect();
    Seen {
        replayed: events
            .iter()
            .map(|e| (e.sequence_nr, e.payload.clone(), e.tags.clone()))
            .collect(),
        highest: upto,
        replay_highest: upto,
        tagged: events
            .iter()
            .filter(|e| !e.tags.is_empty())
            .map(|e| (e.sequence_nr, e.payload.clone()))
            .collect(),
    }
}
