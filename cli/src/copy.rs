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

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use futures::{stream, StreamExt, TryStreamExt};
use persistence_stores::{
    AtomicWrite, Capabilities, Config, ErrorKind, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, QueryMode, SnapshotSelectionCriteria, Stores,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cleanup::{progress, read_ids_file};
use crate::error::CliError;
use crate::inspect::parse_id;
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

    note(
        "projection offsets are not copied: they are positions in the source backend's own \
         streams and mean nothing to the target; start projections on the target from the \
         beginning, or set their offsets with `persistence offsets set`"
            .into(),
    )?;
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
