//! Fault sweeps: the same write cut at many byte offsets by a
//! [`crate::fault::FaultProxy`], and what a store must show afterwards.
//!
//! The sweep itself is [`run`], once for every backend: a backend's `tests/faults.rs` sets
//! up its server, a proxy in front of it and two sets of stores (one through the proxy, one
//! straight to the server: the judge), says where its server differs by implementing
//! [`SweepTarget`], and calls [`run`] once per [`Shape`]. So "all or nothing" means the
//! same thing everywhere: the replayed events, the highest sequence number (asked directly
//! and as a replay reports it) and the id's events under the case's tag.

use persistence_api::ReadJournalExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use persistence_api::{
    async_trait, AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, Result, Stores,
};

use crate::fault::FaultProxy;

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

/// Event `seq` of `persistence_id`, with a fixed-length payload so every case's requests have the
/// calibrated size.
pub fn event(persistence_id: &PersistenceId, seq: u64, tag: Option<&str>) -> PersistentEvent {
    let e = PersistentEvent::new(
        persistence_id.clone(),
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
pub fn batch(
    persistence_id: &PersistenceId,
    from: u64,
    count: u64,
    tag: Option<&str>,
) -> AtomicWrite {
    AtomicWrite::new(
        (from..from + count)
            .map(|s| event(persistence_id, s, tag))
            .collect(),
    )
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

/// Reads what `stores` show of `persistence_id`: replay first (a backend may complete tag rows a
/// failed write left out during replay), then the highest, then the tag.
pub async fn seen(stores: &Stores, persistence_id: &PersistenceId, tag: &str) -> Seen {
    let replayed = stores
        .journal
        .replay_all(persistence_id)
        .await
        .expect("replay")
        .into_iter()
        .map(|e| (e.sequence_nr, e.payload, e.tags))
        .collect();
    let highest = stores
        .journal
        .highest_sequence_nr(persistence_id)
        .await
        .expect("highest");
    let replay_highest = stores
        .journal
        .replay(persistence_id, 1, u64::MAX, u64::MAX)
        .await
        .expect("replay")
        .highest_sequence_nr;
    let tagged = tagged(stores, persistence_id, tag).await;
    Seen {
        replayed,
        highest,
        replay_highest,
        tagged,
    }
}

/// `persistence_id`'s events under `tag`: `(seq, payload)`.
pub async fn tagged(
    stores: &Stores,
    persistence_id: &PersistenceId,
    tag: &str,
) -> Vec<(u64, Payload)> {
    stores
        .read_journal
        .current_events_by_tag(tag.to_owned(), Offset::NoOffset)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.expect("events by tag"))
        .filter(|env| env.event.persistence_id == *persistence_id)
        .map(|env| (env.event.sequence_nr, env.event.payload))
        .collect()
}

/// What a store must show when exactly the events `1..=upto` of the case are stored.
pub fn expected(persistence_id: &PersistenceId, upto: u64, shape: Shape, tag: &str) -> Seen {
    let tag = shape.tagged.then_some(tag);
    let events: Vec<PersistentEvent> = (1..=upto).map(|s| event(persistence_id, s, tag)).collect();
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

/// One server's part of a fault sweep ([`run`]): its stores, its proxy, and the hooks where
/// its server differs from the others. Every provided method's default is what a server
/// that needs nothing special gets.
#[async_trait]
pub trait SweepTarget: Send + Sync {
    /// The proxy between [`SweepTarget::via`] and the server.
    fn proxy(&self) -> &FaultProxy;

    /// The stores that talk to the server through [`SweepTarget::proxy`]: the ones whose
    /// write is cut, retried and continued.
    fn via(&self) -> &Stores;

    /// Stores of the same namespace talking to the server directly: the judge.
    fn direct(&self) -> &Stores;

    /// How many uncut writes calibrate the write's size in bytes (cases `k000`, `k001`...;
    /// the last one's size counts). One by default; more where the first write of a shape
    /// sends what later ones do not (statements it prepares).
    fn calibrations(&self) -> usize {
        1
    }

    /// A write through the proxy when the server must be there: event 1 of every case, the
    /// retry after the proxy is restored and the next write. By default one write of
    /// [`SweepTarget::via`]; a driver that reconnects in the background after a cut retries
    /// here while the answer is retryable.
    async fn write_settled(&self, write: AtomicWrite) -> Result<()> {
        self.via().journal.write(write).await
    }

    /// Runs after event 1 of `case` is written and before the proxy starts counting the
    /// case's write (calibrations included). Nothing by default.
    async fn before_cut_write(&self, _case: &str) {}

    /// Runs once the counted write has returned, before its bytes are counted (calibrations
    /// included), with the proxy still cut if it was: for traffic a write leaves behind
    /// that belongs to its exchange. Nothing by default.
    async fn after_write(&self) {}

    /// What to wait for after a cut write returned, before the proxy is restored and the
    /// store judged (the server may still be applying what reached it). Nothing by default.
    async fn settle(&self, _cut: &CutWrite<'_>) {}

    /// Cut points besides the default ones (evenly over the write's bytes, then its size
    /// less 1, its size, 1 more and 1000 more), given the calibrated size.
    fn extra_cut_points(&self, _size: u64) -> Vec<u64> {
        Vec::new()
    }

    /// How many event items the server physically holds for `persistence_id`, visible or not, read
    /// raw; `None` (the default) where a server cannot hold invisible parts of a write. A
    /// failed cut write that was not stored but leaves more than event 1 behind is counted
    /// as leaving leftovers (which the retry must remove).
    async fn stored_events(&self, _persistence_id: &PersistenceId) -> Option<usize> {
        None
    }

    /// Whether some cut of `shape` must leave leftovers ([`SweepTarget::stored_events`]):
    /// a write of several server requests, which the cut points must hit past the first.
    fn leftovers_required(&self, _shape: Shape) -> bool {
        false
    }

    /// Whether some cut must fail but store the write (the extra cut points cover the
    /// moment the server has it all and its answer is lost).
    fn stored_anyway_required(&self) -> bool {
        false
    }

    /// `Some(delay)` where a failed write may leave its tag rows to a later replay of the
    /// id or the journal's next write of it, readers seeing rows just written after
    /// `delay`. Every other case then retries before anything replays the id (the judge
    /// reads only `highest_sequence_nr` first) and checks the retry wrote them; a case
    /// whose tag rows showed only after a replay is counted apart. `None` by default.
    fn late_tag_rows(&self) -> Option<Duration> {
        None
    }

    /// More to say at the end of the summary line, if anything.
    fn notes(&self) -> Option<String> {
        None
    }

    /// Removes what the sweep stored, once it passed. Nothing by default.
    async fn clean_up(&self) {}
}

/// A cut write as [`SweepTarget::settle`] is told of it.
#[derive(Debug)]
pub struct CutWrite<'a> {
    /// The case (`c000`...).
    pub case: &'a str,
    /// The proxy cut after this many client-to-server bytes.
    pub n: u64,
    /// The calibrated size of the uncut write.
    pub size: u64,
    /// The bytes the write sent (counted after [`SweepTarget::after_write`]).
    pub sent: u64,
    /// What the write answered.
    pub result: &'a Result<()>,
}

/// How one cut point ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An error, and nothing of the write stored.
    Failed,
    /// An error, but the write was stored whole.
    StoredAnyway,
    /// As `StoredAnyway`, and the tag rows showed only after a replay or the retry wrote
    /// them (only where [`SweepTarget::late_tag_rows`]).
    StoredTagsLagging,
    /// Success.
    Ok,
}

/// What a sweep did: returned by [`run`] once every assertion held.
#[derive(Debug)]
pub struct Report {
    /// The calibrated size of the write in bytes.
    pub size: u64,
    /// The distance between the evenly spread cut points.
    pub step: u64,
    /// Every cut point with its outcome, in the order they ran (the bisection's last).
    pub outcomes: Vec<(u64, Outcome)>,
    /// The first cut point (bisected to the byte) from which the write was stored, when a
    /// failed cut point was followed by one that was not.
    pub stored_from: Option<u64>,
    /// Failed cuts that left invisible events behind ([`SweepTarget::stored_events`]).
    pub with_leftovers: usize,
    /// The most invisible events one cut left behind.
    pub most_left: usize,
    /// How long the cut points took (calibration not included).
    pub elapsed: Duration,
}

impl Report {
    /// How many cut points ended as `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.iter().filter(|(_, o)| *o == outcome).count()
    }
}

/// Sweeps `shape`'s write over `target`: calibrates its size with uncut writes, then for
/// every cut point writes event 1, cuts the write after `n` bytes, and checks
///
/// - an error is a transient `Unavailable`/`Timeout` (retryable, or its retries exhausted);
/// - the judge sees event 1 or every event, everywhere (all or nothing), and an `Ok` was
///   stored;
/// - with the proxy restored, a retry of the same write is `Ok` (it was not stored) or
///   `Conflict` (it was), and leaves every event stored;
/// - the next write goes on at the right sequence number, tag included.
///
/// The first cut point from which the write counts as stored is bisected to the byte.
/// Prints a summary line on stderr; at the end some cut must have failed the write (and,
/// as the target says, left leftovers or stored it anyway). Panics on the first broken
/// expectation.
pub async fn run<T: SweepTarget + ?Sized>(target: &T, shape: Shape) -> Report {
    let last = 1 + shape.events;

    // Calibrate: the same write uncut, to learn its size in bytes. The cases `k000`... are
    // as long as the other case names (`c000`...), so their requests have the same size.
    let mut size = 0;
    for k in 0..target.calibrations().max(1) {
        let case = format!("k{k:03}");
        let (result, bytes) = cut_write(target, shape, &case, None, 0).await;
        result.expect("the uncut write succeeds");
        size = bytes;
        let pid = pid_of(shape, &case);
        assert_eq!(
            seen(target.direct(), &pid, &tag_of(&case)).await,
            expected(&pid, last, shape, &tag_of(&case))
        );
    }
    assert!(
        size > 0,
        "the proxy forwarded nothing: is traffic bypassing it?"
    );

    // Evenly over every request of the write, then around the end: the last byte missing,
    // everything sent but no answer, and past it; and what the target adds.
    let step = (size / shape.points).max(1);
    let mut cuts: Vec<u64> = (0..shape.points).map(|i| i * step).collect();
    cuts.extend([size - 1, size, size + 1, size + 1000]);
    cuts.extend(target.extra_cut_points(size));
    cuts.sort_unstable();
    cuts.dedup();

    let started = Instant::now();
    let mut leftovers = Leftovers::default();
    let mut outcomes = Vec::new();
    for &n in &cuts {
        let outcome = case(target, shape, size, outcomes.len(), n, &mut leftovers).await;
        outcomes.push((n, outcome));
    }
    // The byte at which the write first counts as stored is where it has wholly reached
    // the server: bisect to it, so that "sent, its answer lost" is cut exactly (the sweep
    // only samples near it).
    let mut stored_from = None;
    let transition = outcomes.windows(2).find_map(|pair| {
        let ((a, oa), (b, ob)) = (pair[0], pair[1]);
        (oa == Outcome::Failed && ob != Outcome::Failed).then_some((a, b))
    });
    if let Some((mut lo, mut hi)) = transition {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let outcome = case(target, shape, size, outcomes.len(), mid, &mut leftovers).await;
            outcomes.push((mid, outcome));
            if outcome == Outcome::Failed {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        eprintln!(
            "{}: the write is stored from a cut after {hi} bytes on",
            shape.name
        );
        stored_from = Some(hi);
    }
    let report = Report {
        size,
        step,
        outcomes,
        stored_from,
        with_leftovers: leftovers.cuts,
        most_left: leftovers.most,
        elapsed: started.elapsed(),
    };

    let failed = report.count(Outcome::Failed);
    let lagging = report.count(Outcome::StoredTagsLagging);
    let stored_anyway = report.count(Outcome::StoredAnyway) + lagging;
    let mut summary = format!(
        "{}: {} cut points over {size} bytes (step {step}) in {:?}: {failed} failed and not stored, \
         {stored_anyway} failed but stored",
        shape.name,
        report.outcomes.len(),
        report.elapsed,
    );
    if target.late_tag_rows().is_some() {
        summary += &format!(
            " ({lagging} of them with their tag rows left to the next write or replay of the id)"
        );
    }
    summary += &format!(", {} succeeded", report.count(Outcome::Ok));
    if leftovers.counted {
        summary += &format!(
            "; {} of the failed ones left invisible events behind (up to {}), removed by the retry",
            report.with_leftovers, report.most_left
        );
    }
    if let Some(notes) = target.notes() {
        summary += &format!("; {notes}");
    }
    eprintln!("{summary}");

    assert!(
        failed > 0,
        "no cut hit the write: the proxy is not in the path"
    );
    if target.leftovers_required(shape) {
        assert!(
            report.with_leftovers > 0,
            "no cut left a part of the {} write behind: the sweep misses its later requests",
            shape.name
        );
    }
    if target.stored_anyway_required() {
        assert!(
            stored_anyway > 0,
            "no cut fell between the write reaching the server whole and its answer"
        );
    }
    target.clean_up().await;
    report
}

/// Leftovers of failed cut writes, as [`SweepTarget::stored_events`] shows them.
#[derive(Default)]
struct Leftovers {
    /// Whether the target counts them at all.
    counted: bool,
    /// Cuts that left some.
    cuts: usize,
    /// The most one cut left.
    most: usize,
}

/// Writes event 1 of `case`, then the cut write (events `2..=1+shape.events`) with the
/// proxy set to cut after `cut` bytes (`None`: no cut, a calibration). Returns the write's
/// result and the bytes it sent.
async fn cut_write<T: SweepTarget + ?Sized>(
    target: &T,
    shape: Shape,
    case: &str,
    cut: Option<u64>,
    size: u64,
) -> (Result<()>, u64) {
    let pid = pid_of(shape, case);
    let tag = tag_of(case);
    let tag = shape.tagged.then_some(tag.as_str());
    // Event 1 first, through the proxy too: the id (its tag numbers, its prepared
    // statements, its tag bucket) is then known, so the cut write sends the same requests
    // every time.
    target
        .write_settled(batch(&pid, 1, 1, tag))
        .await
        .unwrap_or_else(|e| panic!("{case}: the write of event 1 failed: {e:?}"));
    target.before_cut_write(case).await;
    let proxy = target.proxy();
    let before = proxy.forwarded();
    if let Some(n) = cut {
        proxy.cut_after(n);
    }
    let result = target
        .via()
        .journal
        .write(batch(&pid, 2, shape.events, tag))
        .await;
    target.after_write().await;
    let sent = proxy.forwarded() - before;
    if let Some(n) = cut {
        target
            .settle(&CutWrite {
                case,
                n,
                size,
                sent,
                result: &result,
            })
            .await;
    }
    proxy.restore();
    (result, sent)
}

/// One cut point: event 1, the write cut after `n` bytes, the judgement, the retry and the
/// next write.
async fn case<T: SweepTarget + ?Sized>(
    target: &T,
    shape: Shape,
    size: u64,
    i: usize,
    n: u64,
    leftovers: &mut Leftovers,
) -> Outcome {
    let last = 1 + shape.events;
    let case = format!("c{i:03}");
    let pid = pid_of(shape, &case);
    let tag = tag_of(&case);
    let direct = target.direct();
    let (result, _) = cut_write(target, shape, &case, Some(n), size).await;
    if let Err(e) = &result {
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
                && (e.is_retryable() || e.retries_exhausted().is_some()),
            "{} cut after {n} of {size} bytes: the error must be a transient Unavailable/Timeout (retryable, or its retries exhausted), got {e:?}",
            shape.name
        );
    }
    let before = expected(&pid, 1, shape, &tag);
    let after = expected(&pid, last, shape, &tag);
    let late_tags = target.late_tag_rows();
    // Where tag rows may come late: the tag rows as they are before anything replays the
    // id (informational: a replay writes what a failed write left out, and so does the
    // journal's next write of the id).
    let tags_first = match late_tags {
        Some(_) => Some(tagged(direct, &pid, &tag).await),
        None => None,
    };
    // There, odd cases retry before anything replays the id: the retry (the same journal's
    // next write of the id) must write them itself. Everywhere else the cut write is
    // judged first, with a replay by the judge.
    let retry_first = late_tags.is_some() && i % 2 == 1;
    let applied = if retry_first {
        // `highest_sequence_nr` reads the partitions only: it writes no tag rows.
        match direct
            .journal
            .highest_sequence_nr(&pid)
            .await
            .expect("highest")
        {
            1 => false,
            h if h == last => true,
            h => panic!(
                "{} cut after {n} of {size} bytes ({result:?}): highest {h}, expected 1 or {last}",
                shape.name
            ),
        }
    } else {
        let now = seen(direct, &pid, &tag).await;
        if now == after {
            true
        } else if now == before {
            false
        } else {
            panic!(
                "{} cut after {n} of {size} bytes ({result:?}): the atomic write is visible in part: \
                 replayed {} events, highest {} (replay says {}), {} under the tag; expected 1 or {last} everywhere",
                shape.name,
                now.replayed.len(),
                now.highest,
                now.replay_highest,
                now.tagged.len()
            )
        }
    };
    assert!(
        result.is_err() || applied,
        "{} cut after {n} of {size} bytes: Ok but not stored",
        shape.name
    );
    if !applied {
        if let Some(stored) = target.stored_events(&pid).await {
            leftovers.counted = true;
            let left = stored.saturating_sub(1);
            if left > 0 {
                leftovers.cuts += 1;
                leftovers.most = leftovers.most.max(left);
            }
        }
    }
    let outcome = match (&result, applied) {
        (Ok(()), _) => Outcome::Ok,
        (Err(_), true) if tags_first.as_ref().is_some_and(|t| *t != after.tagged) => {
            Outcome::StoredTagsLagging
        }
        (Err(_), true) => Outcome::StoredAnyway,
        (Err(_), false) => Outcome::Failed,
    };

    // The server is back (once the driver has reconnected): a retry of the same write is
    // Ok (it was not stored) or Conflict (it was), never a duplicate or a partial write.
    let retry = target
        .write_settled(batch(&pid, 2, shape.events, shape.tagged.then_some(&tag)))
        .await;
    match (&retry, applied) {
        (Ok(()), false) => {}
        (Err(e), true) if e.kind() == ErrorKind::Conflict => {}
        _ => panic!(
            "{} cut after {n} of {size} bytes (stored: {applied}): the retry after restore answered {retry:?}",
            shape.name
        ),
    }
    if let (true, Some(delay)) = (retry_first, late_tags) {
        // Past the readers' eventual-consistency delay, and still nothing has replayed the
        // id: the retry (Ok or Conflict) left every event of the write under the tag.
        tokio::time::sleep(delay).await;
        assert_eq!(
            tagged(direct, &pid, &tag).await,
            after.tagged,
            "{} cut after {n} of {size} bytes ({outcome:?}): under the tag after the retry, before any replay",
            shape.name
        );
    }
    assert_eq!(
        seen(direct, &pid, &tag).await,
        after,
        "{} cut after {n} of {size} bytes: after the retry",
        shape.name
    );
    // And the next write (the same journal, no recovery replay of its own, after the
    // failed write, its retry and the judge's replay) goes on at the right sequence
    // number, tag numbering included: its tag row must not reuse a number, or
    // events-by-tag would skip it as already delivered.
    target
        .write_settled(batch(&pid, last + 1, 1, shape.tagged.then_some(&tag)))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} cut after {n} of {size} bytes: the next write failed: {e:?}",
                shape.name
            )
        });
    assert_eq!(
        seen(direct, &pid, &tag).await,
        expected(&pid, last + 1, shape, &tag),
        "{} cut after {n} of {size} bytes ({outcome:?}): after the next write",
        shape.name
    );
    outcome
}
