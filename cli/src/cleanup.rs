//! `delete` and `cleanup`: a dry run by default that lists what would go; `--execute`
//! deletes exactly that. Deleting is idempotent, so a run stopped part-way is finished by
//! running it again.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use persistence_stores::{
    PersistenceId, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Stores, Timestamp,
};
use serde_json::json;

use crate::error::CliError;
use crate::inspect::parse_id;
use crate::output::emit;
use crate::Out;

/// The arguments of `cleanup`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["snapshots", "events", "purge"])))]
#[command(group(ArgGroup::new("which").required(true).multiple(true).args(["ids_file", "ids"])))]
pub struct CleanupArgs {
    /// A file of persistence ids, one per line (blank lines and lines starting with # are skipped).
    #[arg(long = "ids", value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// Persistence ids.
    pub ids: Vec<String>,
    /// Delete the ids' snapshots.
    #[arg(long)]
    pub snapshots: bool,
    /// Delete the ids' events.
    #[arg(long)]
    pub events: bool,
    /// Keep each id's latest snapshot, and (with --events) the events after it: only the
    /// events the latest snapshot covers are deleted.
    #[arg(long, conflicts_with = "purge")]
    pub keep_latest_snapshot: bool,
    /// Remove every trace of each id: its events, their tag index entries, every snapshot,
    /// its entry in the id listing and its metadata; the id may then be written again
    /// from sequence number 1 (pekko-persistence-cassandra's Cleanup).
    #[arg(long, conflicts_with_all = ["events", "snapshots"])]
    pub purge: bool,
    /// Delete; without it, only print what would go.
    #[arg(long)]
    pub execute: bool,
}

/// What goes for one id.
struct Plan {
    /// Everything of the id goes (`--purge`).
    purge: bool,
    /// Delete events up to here (0: none).
    events_to: SequenceNr,
    /// How many stored events that is.
    events: u64,
    /// The sequence numbers of the snapshots that go, highest first.
    snapshots: Vec<SequenceNr>,
}

/// A progress bar on standard error (hidden when it is not a terminal).
pub fn progress(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Reads ids from `path`, one per line; blank lines and `#` comments are skipped.
pub fn read_ids_file(path: &Path) -> Result<Vec<String>, CliError> {
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::Usage(format!("cannot read the ids file {}: {e}", path.display()))
    })?;
    let mut ids = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| {
            CliError::Usage(format!("cannot read the ids file {}: {e}", path.display()))
        })?;
        let id = line.trim();
        if !id.is_empty() && !id.starts_with('#') {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

async fn count_events(
    stores: &Stores,
    pid: &PersistenceId,
    to: SequenceNr,
) -> Result<u64, CliError> {
    if to == 0 {
        return Ok(0);
    }
    let replay = stores.journal.replay(pid, 1, to, u64::MAX).await?;
    let mut events = replay.events;
    let mut n = 0;
    while let Some(e) = events.next().await {
        e?;
        n += 1;
    }
    Ok(n)
}

/// Every snapshot's sequence number, highest first (one load per snapshot: the API has no
/// listing).
async fn list_snapshots(stores: &Stores, pid: &PersistenceId) -> Result<Vec<SequenceNr>, CliError> {
    let mut found = Vec::new();
    let mut criteria = SnapshotSelectionCriteria::latest();
    while let Some(s) = stores.snapshots.load_snapshot(pid, criteria).await? {
        let seq = s.metadata.sequence_nr;
        found.push(seq);
        if seq == 0 {
            break;
        }
        criteria = criteria.with_max_sequence_nr(seq - 1);
    }
    Ok(found)
}

async fn plan(stores: &Stores, pid: &PersistenceId, args: &CleanupArgs) -> Result<Plan, CliError> {
    if args.purge {
        let highest = stores.journal.highest_sequence_nr(pid).await?;
        return Ok(Plan {
            purge: true,
            events_to: highest,
            events: count_events(stores, pid, highest).await?,
            snapshots: list_snapshots(stores, pid).await?,
        });
    }
    let snapshots = if args.snapshots || args.keep_latest_snapshot {
        list_snapshots(stores, pid).await?
    } else {
        Vec::new()
    };
    let latest = snapshots.first().copied();
    let events_to = if !args.events {
        0
    } else if args.keep_latest_snapshot {
        latest.unwrap_or(0)
    } else {
        stores.journal.highest_sequence_nr(pid).await?
    };
    let events = count_events(stores, pid, events_to).await?;
    let snapshots = if !args.snapshots {
        Vec::new()
    } else if args.keep_latest_snapshot {
        snapshots.into_iter().skip(1).collect()
    } else {
        snapshots
    };
    Ok(Plan {
        purge: false,
        events_to: if events == 0 { 0 } else { events_to },
        events,
        snapshots,
    })
}

async fn apply(stores: &Stores, pid: &PersistenceId, plan: &Plan) -> Result<(), CliError> {
    if plan.purge {
        stores.maintenance.purge_persistence_id(pid).await?;
        return Ok(());
    }
    if plan.events > 0 {
        stores.journal.delete_events_to(pid, plan.events_to).await?;
    }
    for &seq in &plan.snapshots {
        let meta = SnapshotMetadata::new(pid.clone(), seq).with_timestamp(Timestamp::MIN);
        stores.snapshots.delete_snapshot(&meta).await?;
    }
    Ok(())
}

fn describe(id: &str, plan: &Plan, execute: bool) -> String {
    if plan.purge {
        let verb = if execute { "purged" } else { "would purge" };
        if plan.events_to == 0 && plan.snapshots.is_empty() {
            return format!("{id}: nothing to purge");
        }
        let seqs: Vec<String> = plan.snapshots.iter().map(|s| format!("#{s}")).collect();
        return format!(
            "{id}: {verb} sequence numbers 1..={} ({} events stored), {} snapshot(s){}{}, its index entries and metadata",
            plan.events_to,
            plan.events,
            plan.snapshots.len(),
            if seqs.is_empty() { "" } else { " at " },
            seqs.join(", ")
        );
    }
    let verb = if execute { "deleted" } else { "would delete" };
    let mut parts = Vec::new();
    if plan.events > 0 {
        parts.push(format!(
            "events 1..={} ({} stored)",
            plan.events_to, plan.events
        ));
    }
    if !plan.snapshots.is_empty() {
        let seqs: Vec<String> = plan.snapshots.iter().map(|s| format!("#{s}")).collect();
        parts.push(format!("snapshots at {}", seqs.join(", ")));
    }
    if parts.is_empty() {
        format!("{id}: nothing to delete")
    } else {
        format!("{id}: {verb} {}", parts.join(" and "))
    }
}

/// `cleanup`.
pub async fn cleanup(stores: &Stores, args: &CleanupArgs, out: Out) -> Result<(), CliError> {
    let mut ids = args.ids.clone();
    if let Some(path) = &args.ids_file {
        ids.extend(read_ids_file(path)?);
    }
    // Check every id before deleting anything.
    let pids = ids
        .iter()
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = progress(pids.len() as u64, "ids");
    let (mut events, mut snapshots, mut done) = (0u64, 0u64, 0usize);
    for pid in &pids {
        let result = async {
            let plan = plan(stores, pid, args).await?;
            if args.execute {
                apply(stores, pid, &plan).await?;
            }
            Ok::<_, CliError>(plan)
        }
        .await;
        let plan = match result {
            Ok(plan) => plan,
            Err(e) if args.execute && done > 0 => {
                bar.abandon();
                return Err(CliError::Partial {
                    done: format!("{done} of {} ids cleaned up", pids.len()),
                    cause: Box::new(e),
                });
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        events += plan.events;
        snapshots += plan.snapshots.len() as u64;
        done += 1;
        let value = json!({
            "persistence_id": pid.as_str(),
            "events_to": plan.events_to,
            "events": plan.events,
            "snapshots": plan.snapshots,
            "purge": plan.purge,
            "executed": args.execute,
        });
        bar.suspend(|| emit(out, value, || describe(pid.as_str(), &plan, args.execute)))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = json!({
        "summary": { "ids": done, "events": events, "snapshots": snapshots, "purge": args.purge, "executed": args.execute, "backend": stores.backend() }
    });
    emit(out, summary, || {
        if args.execute && args.purge {
            format!(
                "purged {done} ids: {events} events, {snapshots} snapshots, their index entries and metadata ({})",
                stores.backend()
            )
        } else if args.execute {
            format!(
                "deleted {events} events and {snapshots} snapshots of {done} ids ({})",
                stores.backend()
            )
        } else {
            format!(
                "dry run: would delete {events} events and {snapshots} snapshots of {done} ids ({}); run again with --execute to delete",
                stores.backend()
            )
        }
    })
}

/// `delete ID --to N`.
pub async fn delete(
    stores: &Stores,
    id: &str,
    to: SequenceNr,
    execute: bool,
    out: Out,
) -> Result<(), CliError> {
    let pid = parse_id(id)?;
    let highest = stores.journal.highest_sequence_nr(&pid).await?;
    let events = count_events(stores, &pid, to.min(highest)).await?;
    let plan = Plan {
        purge: false,
        events_to: if events == 0 { 0 } else { to.min(highest) },
        events,
        snapshots: Vec::new(),
    };
    if execute && events > 0 {
        stores.journal.delete_events_to(&pid, to).await?;
    }
    let value = json!({
        "persistence_id": id,
        "events_to": plan.events_to,
        "events": events,
        "snapshots": [],
        "executed": execute,
    });
    emit(out, value, || {
        let text = describe(id, &plan, execute);
        if execute || events == 0 {
            text
        } else {
            format!("{text}; run again with --execute to delete")
        }
    })
}
