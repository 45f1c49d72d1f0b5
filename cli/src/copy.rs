//! `copy`: every id's events and latest snapshot (and durable states found by tag) from one
//! backend to another, resumable and verified.
//!
//! - Events keep their sequence numbers, tags, timestamps, writer ids, manifests and
//!   metadata. They are written in atomic writes of up to `--batch` events (at most the
//!   target's `atomic_write_max_events`) and `--batch-bytes` bytes, streamed from the
//!   source's replay: memory holds one batch per id being copied, never a whole journal.
//! - Resumable: each id starts after the target's highest sequence number, so a run
//!   stopped part-way (killed, or a server gone) goes on where it stopped, and a batch that
//!   was stored although its answer was lost is recognised by the target's `Conflict` and
//!   highest sequence number.
//! - Verified: at the end each id's events are replayed from both stores and compared by
//!   count and a SHA-256 over every stored field; the latest snapshots are compared whole.
//! - Projection offsets named with `--offsets NAME/KEY=tag:TAG` (or `=id:ID`) are
//!   translated to the target's offsets after the events verify: see [`translate_tag`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use futures::{stream, StreamExt, TryStreamExt};
use persistence_stores::{
    AtomicWrite, Capabilities, Config, ErrorKind, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, ProjectionId, QueryMode, ReadJournalExt, SnapshotSelectionCriteria, Stores,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cleanup::{progress, read_ids_file};
use crate::error::CliError;
use crate::inspect::{parse_id, projection_id};
use crate::output::{emit, to_hex};
use crate::Out;

/// The arguments of `copy`.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The source's configuration file (TOML, as the facade reads it).
    #[arg(long, value_name = "CONFIG_FILE")]
    pub from: PathBuf,
    /// The target's configuration file.
    #[arg(long, value_name = "CONFIG_FILE")]
    pub to: PathBuf,
    /// Copy only the ids in this file, one per line (default: every id of the source).
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,
    /// Durable-state tags whose states to copy (states are found only through a change
    /// query by tag); comma-separated.
    #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
    pub state_tags: Vec<String>,
    /// A projection whose offset to translate to the target, and what it reads:
    /// `NAME/KEY=tag:TAG` (events by tag) or `NAME/KEY=id:PERSISTENCE_ID` (one id's
    /// events); repeatable. Written after the events are copied and verified.
    #[arg(long = "offsets", value_name = "NAME/KEY=SOURCE")]
    pub offsets: Vec<String>,
    /// A file of projections as for `--offsets`, one per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    pub offsets_file: Option<PathBuf>,
    /// The most events per atomic write (lowered to the target's limit).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The most bytes (events' stored sizes) per atomic write.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub batch_bytes: usize,
    /// How many ids are copied at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

#[derive(Default)]
struct IdResult {
    copied: u64,
    resumed_after: u64,
    snapshot: bool,
}

struct Limits {
    batch: usize,
    batch_bytes: usize,
    caps: Capabilities,
    backend: &'static str,
}

fn open_config(path: &std::path::Path, side: &str) -> Result<Config, CliError> {
    Config::from_file(path).map_err(|e| {
        CliError::Api(persistence_stores::Error::config(format!(
            "the {side} configuration: {}",
            e.message()
        )))
    })
}

async fn open_side(path: &std::path::Path, side: &str) -> Result<Stores, CliError> {
    let config = open_config(path, side)?;
    let name = config.backend().to_string();
    persistence_stores::open(&config).await.map_err(|e| {
        let full = format!("{e:#}");
        let prefix = format!("{}: ", e.kind());
        let text = full.strip_prefix(&prefix).unwrap_or(&full);
        CliError::Api(
            persistence_stores::Error::new(
                e.kind(),
                format!(
                    "opening the {side} (backend {name}, {}): {text}",
                    path.display()
                ),
            )
            .with_retryable(e.is_retryable()),
        )
    })
}

/// The ids to copy and verify, in a list (ids are short; events are what is streamed).
async fn id_list(source: &Stores, args: &CopyArgs) -> Result<Vec<PersistenceId>, CliError> {
    match &args.ids {
        Some(path) => read_ids_file(path)?.iter().map(|id| parse_id(id)).collect(),
        None => Ok(source
            .read_journal
            .query_persistence_ids(QueryMode::Current)
            .try_collect()
            .await?),
    }
}

/// `copy --from CONFIG_FILE --to CONFIG_FILE`.
pub async fn run(args: &CopyArgs, backend: Option<&str>, out: Out) -> Result<(), CliError> {
    if backend.is_some() {
        return Err(CliError::Usage(
            "--backend does not apply to copy: the two configuration files name the backends"
                .into(),
        ));
    }
    if args.batch == 0 || args.parallel == 0 || args.batch_bytes == 0 {
        return Err(CliError::Usage(
            "--batch, --batch-bytes and --parallel must be at least 1".into(),
        ));
    }
    let specs = offset_specs(args)?;
    let source = open_side(&args.from, "source").await?;
    let target = open_side(&args.to, "target").await?;
    let caps = target.capabilities();
    let limits = Limits {
        batch: caps
            .atomic_write_max_events
            .map_or(args.batch, |m| m.min(args.batch))
            .max(1),
        batch_bytes: args.batch_bytes,
        caps,
        backend: target.backend(),
    };
    let note = |text: String| emit(out, json!({ "note": text }), || format!("note: {text}"));
    note(format!(
        "copying from {} to {} in atomic writes of up to {} events",
        source.backend(),
        target.backend(),
        limits.batch
    ))?;

    // The source's offsets first: a stale or foreign one stops the copy before it starts.
    let offset_plans = plan_offsets(&source, &specs).await?;

    let ids = id_list(&source, args).await?;
    let started = Instant::now();
    let events_total = Arc::new(AtomicU64::new(0));
    let bar = progress(ids.len() as u64, "ids");
    let mut results = stream::iter(ids.iter().cloned())
        .map(|pid| {
            let (source, target, limits, events_total) =
                (&source, &target, &limits, events_total.clone());
            async move {
                let r = copy_id(source, target, &pid, limits, &events_total).await;
                (pid, r)
            }
        })
        .buffer_unordered(args.parallel);
    let mut done = 0usize;
    while let Some((pid, result)) = results.next().await {
        match result {
            Ok(r) => {
                done += 1;
                bar.inc(1);
                let n = events_total.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("{n} events, {:.0} events/s", n as f64 / secs));
                if out.json {
                    bar.suspend(|| {
                        emit(
                            out,
                            json!({
                                "persistence_id": pid.as_str(),
                                "copied": r.copied,
                                "resumed_after": r.resumed_after,
                                "snapshot": r.snapshot,
                            }),
                            String::new,
                        )
                    })?;
                }
            }
            Err(e) => {
                bar.abandon();
                drop(results);
                let total = events_total.load(Ordering::Relaxed);
                let done_text = format!(
                    "{done} of {} ids copied, {total} events written; failed at {pid}",
                    ids.len()
                );
                return Err(if done > 0 || total > 0 {
                    CliError::Partial {
                        done: done_text,
                        cause: Box::new(e),
                    }
                } else {
                    e
                });
            }
        }
    }
    drop(results);
    bar.finish_and_clear();
    let copied = events_total.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();

    let states = if args.state_tags.is_empty() {
        note(
            "durable states are not copied: a backend cannot list them; give --state-tags \
             TAG,... to copy the states with those tags"
                .into(),
        )?;
        0
    } else {
        copy_states(&source, &target, &args.state_tags, out).await?
    };

    // Verify every id: counts and checksums of the events, the latest snapshot.
    let bar = progress(ids.len() as u64, "ids verified");
    let mut checks = stream::iter(ids.iter().cloned())
        .map(|pid| {
            let (source, target) = (&source, &target);
            async move {
                let r = verify_id(source, target, &pid).await;
                (pid, r)
            }
        })
        .buffer_unordered(args.parallel);
    let mut mismatches = Vec::new();
    let mut verified_events = 0u64;
    while let Some((pid, result)) = checks.next().await {
        let (count, digest, problem) = result?;
        verified_events += count;
        bar.inc(1);
        if out.json {
            bar.suspend(|| {
                emit(
                    out,
                    json!({
                        "persistence_id": pid.as_str(),
                        "events": count,
                        "sha256": digest,
                        "verified": problem.is_none(),
                        "problem": problem,
                    }),
                    String::new,
                )
            })?;
        }
        if let Some(p) = problem {
            mismatches.push(format!("{pid}: {p}"));
        }
    }
    drop(checks);
    bar.finish_and_clear();

    // Projection offsets, once the events are in the target and verified.
    let (offsets_written, redelivered) = if specs.is_empty() {
        note(
            "projection offsets are not copied unless named: an offset is a position in the \
             source backend's own stream (meaningless in the target), so give --offsets \
             NAME/KEY=tag:TAG (or =id:ID) for each projection and copy translates it"
                .into(),
        )?;
        (0, 0)
    } else if !mismatches.is_empty() {
        note(format!(
            "projection offsets are not written: {} ids did not verify",
            mismatches.len()
        ))?;
        (0, 0)
    } else {
        let done = write_offsets(&target, offset_plans, out).await?;
        note(format!(
            "projection offsets translated conservatively: no event after a projection's \
             offset in the source is skipped on the target, but {} events the projections \
             have handled already will be delivered again (at-least-once: they see them twice)",
            done.1
        ))?;
        done
    };
    let rate = if secs > 0.0 {
        copied as f64 / secs
    } else {
        0.0
    };
    emit(
        out,
        json!({ "summary": {
            "ids": ids.len(), "events_copied": copied, "seconds": secs, "events_per_second": rate,
            "events_verified": verified_events, "states": states, "mismatches": mismatches.len(),
            "offsets": specs.len(), "offsets_written": offsets_written, "redelivered": redelivered,
            "source": source.backend(), "target": target.backend(),
        }}),
        || {
            format!(
                "copied {copied} events of {} ids from {} to {} in {secs:.1} s ({rate:.0} events/s); \
                 verified {verified_events} events: {}",
                ids.len(),
                source.backend(),
                target.backend(),
                if mismatches.is_empty() { "all match".to_string() } else { format!("{} ids differ", mismatches.len()) }
            )
        },
    )?;
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(CliError::Other(format!(
            "verification failed for {} ids:\n  {}",
            mismatches.len(),
            mismatches.join("\n  ")
        )))
    }
}

fn check_event(e: &PersistentEvent, limits: &Limits) -> Result<(), CliError> {
    let name = || format!("{} sequence number {}", e.persistence_id, e.sequence_nr);
    if let Some(max) = limits.caps.max_event_size {
        let size = e.stored_size();
        if size > max {
            return Err(CliError::Other(format!(
                "event of persistence id {} is {size} bytes; the target ({}) stores events of at most {max} bytes",
                name(),
                limits.backend
            )));
        }
    }
    if !e.tags.is_empty() && !limits.caps.tags {
        return Err(CliError::Other(format!(
            "event of persistence id {} has tags; the target ({}) does not store tags",
            name(),
            limits.backend
        )));
    }
    if e.metadata.is_some() && !limits.caps.event_metadata {
        return Err(CliError::Other(format!(
            "event of persistence id {} has metadata; the target ({}) does not store event metadata",
            name(),
            limits.backend
        )));
    }
    Ok(())
}

async fn write_batch(
    target: &Stores,
    pid: &PersistenceId,
    batch: Vec<PersistentEvent>,
) -> Result<u64, CliError> {
    let n = batch.len() as u64;
    let write = AtomicWrite::new(batch)?;
    let (lo, hi) = (write.lowest_sequence_nr(), write.highest_sequence_nr());
    match target.journal.write(write).await {
        Ok(()) => Ok(n),
        // Stored already (an earlier attempt whose answer was lost, or another copy).
        Err(e) if e.kind() == ErrorKind::Conflict => {
            let highest = target.journal.highest_sequence_nr(pid).await?;
            if highest >= hi {
                Ok(0)
            } else {
                Err(CliError::Api(
                    e.with_persistence_id(pid.as_str())
                        .with_sequence_range(lo, hi),
                ))
            }
        }
        Err(e) => Err(CliError::Api(e)),
    }
}

async fn copy_id(
    source: &Stores,
    target: &Stores,
    pid: &PersistenceId,
    limits: &Limits,
    events_total: &AtomicU64,
) -> Result<IdResult, CliError> {
    let resumed_after = target.journal.highest_sequence_nr(pid).await?;
    let replay = source
        .journal
        .replay(pid, resumed_after.saturating_add(1), u64::MAX, u64::MAX)
        .await?;
    let mut events = replay.events;
    let mut batch: Vec<PersistentEvent> = Vec::with_capacity(limits.batch);
    let mut bytes = 0usize;
    let mut copied = 0u64;
    while let Some(event) = events.next().await {
        let event = event?;
        check_event(&event, limits)?;
        let size = event.stored_size();
        let gap = batch
            .last()
            .is_some_and(|last| last.sequence_nr + 1 != event.sequence_nr);
        if !batch.is_empty()
            && (batch.len() >= limits.batch || bytes + size > limits.batch_bytes || gap)
        {
            let n = write_batch(target, pid, std::mem::take(&mut batch)).await?;
            copied += n;
            events_total.fetch_add(n, Ordering::Relaxed);
            bytes = 0;
        }
        bytes += size;
        batch.push(event);
    }
    if !batch.is_empty() {
        let n = write_batch(target, pid, batch).await?;
        copied += n;
        events_total.fetch_add(n, Ordering::Relaxed);
    }
    let snapshot = copy_snapshot(source, target, pid).await?;
    Ok(IdResult {
        copied,
        resumed_after,
        snapshot,
    })
}

/// Copies the latest snapshot unless the target has the same one; true when one exists.
async fn copy_snapshot(
    source: &Stores,
    target: &Stores,
    pid: &PersistenceId,
) -> Result<bool, CliError> {
    if !source.capabilities().snapshots {
        return Ok(false);
    }
    let Some(latest) = source
        .snapshots
        .load_snapshot(pid, SnapshotSelectionCriteria::latest())
        .await?
    else {
        return Ok(false);
    };
    let there = target
        .snapshots
        .load_snapshot(pid, SnapshotSelectionCriteria::latest())
        .await?;
    if there.as_ref() != Some(&latest) {
        target
            .snapshots
            .save_snapshot(latest.metadata, latest.snapshot)
            .await?;
    }
    Ok(true)
}

/// Copies the latest state of every id found under `tags`: the target's revision is
/// brought up to the source's by upserts of the source's payload (the API stores revision
/// n only after n - 1), so revisions match. Deleted states are not copied.
async fn copy_states(
    source: &Stores,
    target: &Stores,
    tags: &[String],
    out: Out,
) -> Result<u64, CliError> {
    let mut copied = 0;
    for tag in tags {
        let mut changes =
            source
                .durable_state
                .query_changes(tag.clone(), Offset::NoOffset, QueryMode::Current);
        while let Some(change) = changes.next().await {
            let change = change?;
            let Some(payload) = change.payload.clone() else {
                continue;
            };
            let stored = target
                .durable_state
                .get(&change.persistence_id)
                .await?
                .map_or(0, |s| s.revision);
            for revision in stored + 1..=change.revision {
                target
                    .durable_state
                    .upsert(
                        &change.persistence_id,
                        revision,
                        payload.clone(),
                        change.tag.clone(),
                    )
                    .await?;
            }
            if change.revision > stored {
                copied += 1;
                emit(
                    out,
                    json!({ "state": change.persistence_id.as_str(), "revision": change.revision, "tag": tag }),
                    || {
                        format!(
                            "state {} copied at revision {}",
                            change.persistence_id, change.revision
                        )
                    },
                )?;
            }
        }
    }
    Ok(copied)
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn put_payload(h: &mut Sha256, p: &Payload) {
    put(h, p.serializer_id.as_bytes());
    put(h, p.manifest.as_bytes());
    put(h, &p.bytes);
}

/// Feeds every stored field of `e` into `h`, each length-prefixed.
fn hash_event(h: &mut Sha256, e: &PersistentEvent) {
    h.update(e.sequence_nr.to_be_bytes());
    put_payload(h, &e.payload);
    put(h, e.event_manifest.as_bytes());
    put(h, e.writer_id.as_bytes());
    h.update(e.timestamp.as_millis().to_be_bytes());
    h.update((e.tags.len() as u64).to_be_bytes());
    for tag in &e.tags {
        put(h, tag.as_bytes());
    }
    match &e.metadata {
        Some(m) => {
            h.update([1]);
            put_payload(h, m);
        }
        None => h.update([0]),
    }
}

async fn digest(stores: &Stores, pid: &PersistenceId) -> Result<(u64, String), CliError> {
    let replay = stores.journal.replay(pid, 1, u64::MAX, u64::MAX).await?;
    let mut events = replay.events;
    let mut h = Sha256::new();
    let mut n = 0;
    while let Some(e) = events.next().await {
        hash_event(&mut h, &e?);
        n += 1;
    }
    Ok((n, to_hex(&h.finalize())))
}

/// Count, checksum and what differs (if anything) of one id.
async fn verify_id(
    source: &Stores,
    target: &Stores,
    pid: &PersistenceId,
) -> Result<(u64, String, Option<String>), CliError> {
    let ((n_src, d_src), (n_dst, d_dst)) =
        futures::try_join!(digest(source, pid), digest(target, pid))?;
    let mut problem = None;
    if n_src != n_dst {
        problem = Some(format!(
            "{n_src} events in the source, {n_dst} in the target"
        ));
    } else if d_src != d_dst {
        problem = Some(format!(
            "the events differ (sha256 {d_src} in the source, {d_dst} in the target)"
        ));
    } else if source.capabilities().snapshots {
        let latest = SnapshotSelectionCriteria::latest();
        let (a, b) = futures::try_join!(
            source.snapshots.load_snapshot(pid, latest),
            target.snapshots.load_snapshot(pid, latest)
        )?;
        if a.is_some() && a != b {
            problem = Some("the latest snapshot differs".into());
        }
    }
    Ok((n_src, d_src, problem))
}

/// What a projection named in `--offsets` reads.
#[derive(Debug, Clone)]
enum OffsetSource {
    /// Events by tag: the offset is translated (see [`translate_tag`]).
    Tag(String),
    /// One id's events: the offset is `sequence:<n>`, the same in both stores.
    Id(PersistenceId),
}

impl std::fmt::Display for OffsetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetSource::Tag(tag) => write!(f, "tag:{tag}"),
            OffsetSource::Id(id) => write!(f, "id:{id}"),
        }
    }
}

/// One `--offsets` entry.
#[derive(Debug, Clone)]
struct OffsetSpec {
    projection: ProjectionId,
    source: OffsetSource,
}

/// Parses `NAME/KEY=tag:TAG` or `NAME/KEY=id:PERSISTENCE_ID`: the name ends at the first
/// `/`, the key at the first `=` followed by a source kind and `:`.
fn parse_offset_spec(text: &str) -> Result<OffsetSpec, CliError> {
    let bad = |why: String| {
        CliError::Usage(format!(
            "invalid --offsets {text:?}: {why}; expected NAME/KEY=tag:TAG or NAME/KEY=id:PERSISTENCE_ID"
        ))
    };
    let Some((name, rest)) = text.split_once('/') else {
        return Err(bad("no '/' between the projection's name and key".into()));
    };
    let split =
        rest.match_indices('=').find_map(|(i, _)| {
            let after = &rest[i + 1..];
            let (kind, value) = after.split_once(':')?;
            (!kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .then_some((&rest[..i], kind, value))
        });
    let Some((key, kind, value)) = split else {
        return Err(bad("no =tag:TAG or =id:PERSISTENCE_ID after the key".into()));
    };
    let projection = projection_id(name, key)?;
    let source = match kind {
        "tag" if value.is_empty() => return Err(bad("the tag is empty".into())),
        "tag" => OffsetSource::Tag(value.to_string()),
        "id" => OffsetSource::Id(parse_id(value)?),
        "state-tag" | "state" | "changes" => {
            return Err(bad(format!(
                "projections of durable-state changes ({kind}:) are not supported: the change \
                 query gives only each state's latest change, so the set a projection has \
                 handled cannot be rebuilt; clear the offset on the target (`persistence \
                 offsets clear {name} {key}`) so it starts from the beginning"
            )))
        }
        other => return Err(bad(format!("unknown source kind {other:?}"))),
    };
    Ok(OffsetSpec { projection, source })
}

/// The `--offsets` and `--offsets-file` entries, each projection id once.
fn offset_specs(args: &CopyArgs) -> Result<Vec<OffsetSpec>, CliError> {
    let mut texts = args.offsets.clone();
    if let Some(path) = &args.offsets_file {
        let read_error = |e: std::io::Error| {
            CliError::Usage(format!(
                "cannot read the offsets file {}: {e}",
                path.display()
            ))
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        texts.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let mut specs: Vec<OffsetSpec> = Vec::with_capacity(texts.len());
    for text in &texts {
        let spec = parse_offset_spec(text)?;
        if let Some(seen) = specs.iter().find(|s| s.projection == spec.projection) {
            return Err(CliError::Usage(format!(
                "projection {} is named twice in --offsets (sources {} and {})",
                spec.projection, seen.source, spec.source
            )));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// What the source says of one projection, read before the events are copied.
enum OffsetPlan {
    /// The source stores no offset for it: nothing to write.
    NotStored,
    /// Written to the target as it is: `none`, or a by-id `sequence:<n>`.
    Same(Offset),
    /// A tag projection's offset `x` and the set of events it has handled: per id, the
    /// highest sequence number (each id's tagged events come in sequence order).
    Tag {
        x: Offset,
        handled: HashMap<PersistenceId, u64>,
        events: u64,
    },
}

/// Reads the projection's offset in the source and, for a tag projection, the events up
/// to and including it; an offset the source's query never handed out is an error.
async fn plan_offset(source: &Stores, spec: &OffsetSpec) -> Result<OffsetPlan, CliError> {
    let id = &spec.projection;
    let Some(stored) = source.offsets.read_offset(id).await? else {
        return Ok(OffsetPlan::NotStored);
    };
    let x = stored.offset;
    if x == Offset::NoOffset {
        return Ok(OffsetPlan::Same(x));
    }
    match &spec.source {
        OffsetSource::Id(pid) => {
            let Offset::Sequence(n) = x else {
                return Err(CliError::Other(format!(
                    "projection {id}: its offset in the source ({}) is {x}, not a sequence number: \
                     it does not read the events of {pid} (is the source right?); nothing was copied",
                    source.backend()
                )));
            };
            let highest = source.journal.highest_sequence_nr(pid).await?;
            if n > highest {
                return Err(CliError::Other(format!(
                    "projection {id}: its offset in the source ({}) is {x}, but {pid} has events \
                     up to {highest} only (a stale or foreign offset, or the wrong id?); nothing was copied",
                    source.backend()
                )));
            }
            Ok(OffsetPlan::Same(x))
        }
        OffsetSource::Tag(tag) => {
            let mut handled: HashMap<PersistenceId, u64> = HashMap::new();
            let mut events = 0u64;
            let mut stream = source
                .read_journal
                .current_events_by_tag(tag.clone(), Offset::NoOffset);
            while let Some(envelope) = stream.next().await {
                let envelope = envelope?;
                let seq = handled
                    .entry(envelope.event.persistence_id.clone())
                    .or_insert(0);
                *seq = (*seq).max(envelope.event.sequence_nr);
                events += 1;
                if envelope.offset == x {
                    return Ok(OffsetPlan::Tag { x, handled, events });
                }
            }
            Err(CliError::Other(format!(
                "projection {id}: its offset in the source ({}) is {x}, which is not the offset of \
                 any of the {events} events with tag {tag:?} there (a stale offset, one from \
                 another store, or not the tag this projection reads?); nothing was copied",
                source.backend()
            )))
        }
    }
}

/// The target's offset of a tag projection: scans the target's events by tag from the
/// beginning and takes the offset of the last envelope of the longest prefix the projection
/// has handled (each envelope's id and sequence number within `handled`). Everything after
/// it is delivered, so no event is skipped; the handled events after the prefix are counted:
/// they will be delivered again. Returns the offset and that count.
async fn translate_tag(
    target: &Stores,
    tag: &str,
    handled: &HashMap<PersistenceId, u64>,
    events: u64,
) -> Result<(Offset, u64), CliError> {
    let mut y = Offset::NoOffset;
    let (mut prefix, mut again) = (0u64, 0u64);
    let mut in_prefix = true;
    let mut stream = target
        .read_journal
        .current_events_by_tag(tag.to_string(), Offset::NoOffset);
    while prefix + again < events {
        let Some(envelope) = stream.next().await else {
            break;
        };
        let envelope = envelope?;
        let was_handled = handled
            .get(&envelope.event.persistence_id)
            .is_some_and(|&seq| envelope.event.sequence_nr <= seq);
        match (in_prefix, was_handled) {
            (true, true) => {
                prefix += 1;
                y = envelope.offset;
            }
            (true, false) => in_prefix = false,
            (false, true) => again += 1,
            (false, false) => {}
        }
    }
    Ok((y, again))
}

/// Reads every named projection's offset in the source (before anything is copied, so a
/// bad offset stops the command early).
async fn plan_offsets(
    source: &Stores,
    specs: &[OffsetSpec],
) -> Result<Vec<(OffsetSpec, OffsetPlan)>, CliError> {
    let mut plans = Vec::with_capacity(specs.len());
    for spec in specs {
        let plan = plan_offset(source, spec).await?;
        plans.push((spec.clone(), plan));
    }
    Ok(plans)
}

/// Translates and writes every planned offset (after the events are copied and verified);
/// returns how many were written and the events that will be delivered again in all.
async fn write_offsets(
    target: &Stores,
    plans: Vec<(OffsetSpec, OffsetPlan)>,
    out: Out,
) -> Result<(u64, u64), CliError> {
    let (mut written, mut again_total) = (0u64, 0u64);
    for (spec, plan) in plans {
        let id = &spec.projection;
        let (x, y, again) = match plan {
            OffsetPlan::NotStored => {
                emit(
                    out,
                    json!({ "projection": id.to_string(), "name": id.name(), "key": id.key(),
                            "source": spec.source.to_string(), "source_offset": null,
                            "target_offset": null, "written": false }),
                    || format!("projection {id}: no offset stored in the source, nothing written"),
                )?;
                continue;
            }
            OffsetPlan::Same(x) => {
                if let (OffsetSource::Id(pid), Offset::Sequence(n)) = (&spec.source, &x) {
                    let highest = target.journal.highest_sequence_nr(pid).await?;
                    if highest < *n {
                        return Err(CliError::Other(format!(
                            "projection {id}: its offset {x} is past the events of {pid} in the \
                             target ({}, up to {highest}): copy that id too (is it missing from --ids?)",
                            target.backend()
                        )));
                    }
                }
                (x.clone(), x, 0)
            }
            OffsetPlan::Tag { x, handled, events } => {
                let OffsetSource::Tag(tag) = &spec.source else {
                    unreachable!("a tag plan comes from a tag source")
                };
                let (y, again) = translate_tag(target, tag, &handled, events).await?;
                (x, y, again)
            }
        };
        let previous = target.offsets.read_offset(id).await?;
        let unchanged = previous.as_ref().is_some_and(|p| p.offset == y);
        let version = if unchanged {
            previous.as_ref().map_or(0, |p| p.version)
        } else {
            written += 1;
            target.offsets.set_offset(id, y.clone()).await?
        };
        again_total += again;
        emit(
            out,
            json!({ "projection": id.to_string(), "name": id.name(), "key": id.key(),
                    "source": spec.source.to_string(), "source_offset": x.to_string(),
                    "target_offset": y.to_string(), "redelivered": again,
                    "previous": previous.as_ref().map(|p| p.offset.to_string()),
                    "written": !unchanged, "version": version }),
            || {
                format!(
                    "projection {id} ({}): {x} in the source -> {y} in the target ({}); \
                     {again} events will be delivered again",
                    spec.source,
                    if unchanged {
                        "stored already".to_string()
                    } else {
                        format!("written, version {version}")
                    }
                )
            },
        )?;
    }
    Ok((written, again_total))
}
