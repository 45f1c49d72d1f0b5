//! `bench`: the standard workloads against the configured backend, in events per second.
//!
//! Writes go to fresh ids `bench-<time>-...` under a fresh tag, deleted at the end (the ids
//! stay listed, as deleted ids do): point it at a namespace of its own.

use std::time::Instant;

use clap::Args;
use futures::StreamExt;
use persistence_stores::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, ReadJournalExt,
    Stores,
};
use serde_json::json;

use crate::error::CliError;
use crate::output::emit;
use crate::Out;

/// The arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Events of the 100-event atomic writes, the replay and the tag query.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Events of each single-event write workload (one id; 16 ids at once).
    #[arg(long, default_value_t = 2_000)]
    pub single_events: u64,
    /// Keep the events written (by default they are deleted at the end).
    #[arg(long)]
    pub keep: bool,
}

fn event(pid: &PersistenceId, seq: u64, tag: Option<&str>) -> PersistentEvent {
    let mut bytes = format!("bench event {seq:>10} ").into_bytes();
    bytes.resize(100, b'.');
    let e = PersistentEvent::new(pid.clone(), seq, Payload::new("bench", "bench/v1", bytes))
        .with_writer_id("bench");
    match tag {
        Some(t) => e.with_tags([t]),
        None => e,
    }
}

fn report(out: Out, backend: &str, workload: &str, events: u64, secs: f64) -> Result<(), CliError> {
    let rate = if secs > 0.0 {
        events as f64 / secs
    } else {
        0.0
    };
    emit(
        out,
        json!({ "backend": backend, "workload": workload, "events": events, "seconds": secs, "events_per_second": rate }),
        || format!("{workload:<36} {events:>8} events {secs:>8.2} s {rate:>12.0} events/s"),
    )
}

async fn singles(stores: &Stores, pid: PersistenceId, n: u64) -> Result<(), CliError> {
    for seq in 1..=n {
        stores
            .journal
            .write(AtomicWrite::single(event(&pid, seq, None))?)
            .await?;
    }
    Ok(())
}

/// `bench [--events N]`.
pub async fn run(stores: &Stores, args: &BenchArgs, out: Out) -> Result<(), CliError> {
    let backend = stores.backend();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = |suffix: &str| PersistenceId::new(format!("bench-{stamp}-{suffix}"));
    let tag = format!("bench-{stamp}");
    let mut written = Vec::new();

    // Single-event writes on one id.
    let one = id("one")?;
    let start = Instant::now();
    singles(stores, one.clone(), args.single_events).await?;
    report(
        out,
        backend,
        "single-event writes, one id",
        args.single_events,
        start.elapsed().as_secs_f64(),
    )?;
    written.push(one);

    // Single-event writes on 16 ids at once.
    let ids: Vec<_> = (0..16)
        .map(|i| id(&format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let per_id = args.single_events.div_ceil(16);
    let start = Instant::now();
    futures::future::try_join_all(ids.iter().map(|pid| singles(stores, pid.clone(), per_id)))
        .await?;
    report(
        out,
        backend,
        "single-event writes, 16 ids at once",
        per_id * 16,
        start.elapsed().as_secs_f64(),
    )?;
    written.extend(ids);

    // 100-event atomic writes, tagged.
    let batch_id = id("batch")?;
    let size = stores
        .capabilities()
        .atomic_write_max_events
        .map_or(100, |m| m.min(100)) as u64;
    let start = Instant::now();
    let mut seq = 1;
    while seq <= args.events {
        let last = (seq + size - 1).min(args.events);
        let events = (seq..=last)
            .map(|s| event(&batch_id, s, Some(&tag)))
            .collect();
        stores.journal.write(AtomicWrite::new(events)?).await?;
        seq = last + 1;
    }
    report(
        out,
        backend,
        &format!("{size}-event atomic writes"),
        args.events,
        start.elapsed().as_secs_f64(),
    )?;

    // Replay.
    let start = Instant::now();
    let mut replay = stores
        .journal
        .replay(&batch_id, 1, u64::MAX, u64::MAX)
        .await?
        .events;
    let mut n = 0;
    while let Some(e) = replay.next().await {
        e?;
        n += 1;
    }
    report(out, backend, "replay", n, start.elapsed().as_secs_f64())?;

    // Current events by tag.
    let start = Instant::now();
    let mut by_tag = stores
        .read_journal
        .current_events_by_tag(tag, Offset::NoOffset);
    let mut n = 0;
    while let Some(e) = by_tag.next().await {
        e?;
        n += 1;
    }
    report(
        out,
        backend,
        "current events by tag",
        n,
        start.elapsed().as_secs_f64(),
    )?;
    written.push(batch_id);

    if !args.keep && stores.capabilities().delete_events {
        for pid in &written {
            stores.journal.delete_events_to(pid, u64::MAX).await?;
        }
    }
    Ok(())
}
