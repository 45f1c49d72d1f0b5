//! `rebuild`: writes the journal's secondary structures (tag index, id registry, tag
//! progress) again from the events, id by id, through
//! [`persistence_stores::JournalMaintenance`], as pekko-persistence-cassandra's
//! `Reconciliation` does.
//!
//! Ids come from the command line, a file, or a scan of the journal itself (not the
//! registry, which may be what was lost). Rebuilding an id is idempotent, so a rebuild
//! stopped part-way is finished by running it again; with `--progress FILE` the ids already
//! done are recorded there and skipped by the next run. Memory holds the ids being
//! rebuilt, the progress file's ids and one page of events per id: flat in the number of
//! events.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use persistence_stores::{PersistenceId, RebuildReport, Stores};
use serde_json::json;

use crate::cleanup::{progress, read_ids_file};
use crate::error::CliError;
use crate::inspect::parse_id;
use crate::output::emit;
use crate::Out;

/// The arguments of `rebuild`.
#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Persistence ids to rebuild; without them and without `--ids`, every id the journal
    /// holds (found by scanning the journal's own records).
    pub ids: Vec<String>,
    /// A file of persistence ids, one per line (blank lines and lines starting with # are
    /// skipped).
    #[arg(long = "ids", value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// Records each id done in FILE (one per line) and skips the ids already there: a
    /// rebuild stopped part-way goes on where it stopped when run again with the same file.
    #[arg(long, value_name = "FILE")]
    pub progress: Option<PathBuf>,
    /// First remove every tag index entry and id listing entry of the journal
    /// (`truncate_indexes`), then rebuild every id the scan finds: for an index holding
    /// wrong entries. Stop the journal's writers and readers first. With `--progress`, a
    /// run that finds ids in the progress file is a resumed one and does not truncate.
    #[arg(long, conflicts_with_all = ["ids", "ids_file"])]
    pub truncate: bool,
    /// Ids rebuilt at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
}

/// The ids a progress file lists as done.
fn done_ids(path: &Path) -> Result<HashSet<String>, CliError> {
    match std::fs::File::open(path) {
        Ok(file) => std::io::BufReader::new(file)
            .lines()
            .map(|l| l.map(|l| l.trim().to_string()))
            .filter(|l| !matches!(l, Ok(l) if l.is_empty()))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                CliError::Other(format!(
                    "cannot read the progress file {}: {e}",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(CliError::Other(format!(
            "cannot read the progress file {}: {e}",
            path.display()
        ))),
    }
}

type IdStream<'a> =
    std::pin::Pin<Box<dyn Stream<Item = Result<PersistenceId, CliError>> + Send + 'a>>;

/// `rebuild`.
pub async fn run(stores: &Stores, args: &RebuildArgs, out: Out) -> Result<(), CliError> {
    let mut listed = Vec::new();
    for id in &args.ids {
        listed.push(parse_id(id)?);
    }
    if let Some(path) = &args.ids_file {
        for id in read_ids_file(path)? {
            listed.push(parse_id(&id)?);
        }
    }
    let done_before = match &args.progress {
        Some(path) => done_ids(path)?,
        None => HashSet::new(),
    };
    let mut journal = match &args.progress {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    CliError::Other(format!(
                        "cannot write the progress file {}: {e}",
                        path.display()
                    ))
                })?,
        ),
        None => None,
    };
    if args.truncate && done_before.is_empty() {
        stores.maintenance.truncate_indexes().await?;
        emit(
            out,
            json!({ "truncated": true, "backend": stores.backend() }),
            || {
                format!(
                    "truncated the tag index and the id listing ({})",
                    stores.backend()
                )
            },
        )?;
    }
    let scanning = listed.is_empty();
    let (bar, ids): (_, IdStream<'_>) = if scanning {
        (
            progress_unknown(),
            Box::pin(
                stores
                    .maintenance
                    .scan_persistence_ids()
                    .map_err(CliError::from),
            ),
        )
    } else {
        (
            progress(listed.len() as u64, "ids"),
            Box::pin(stream::iter(listed.into_iter().map(Ok))),
        )
    };
    let skipped = std::sync::atomic::AtomicU64::new(0);
    let work = ids
        .try_filter(|id| {
            let skip = done_before.contains(id.as_str());
            if skip {
                skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                bar.inc(1);
            }
            std::future::ready(!skip)
        })
        .map_ok(|id| async move {
            let report = stores.maintenance.rebuild_persistence_id(&id).await?;
            Ok::<_, CliError>((id, report))
        })
        .try_buffer_unordered(args.parallel as usize);
    futures::pin_mut!(work);
    let (mut ids_done, mut events, mut entries) = (0u64, 0u64, 0u64);
    loop {
        let (id, report): (PersistenceId, RebuildReport) = match work.next().await {
            None => break,
            Some(Ok(done)) => done,
            Some(Err(e)) => {
                bar.abandon();
                if ids_done == 0 {
                    return Err(e);
                }
                let hint = if args.progress.is_some() {
                    "; the progress file records them"
                } else {
                    "; rebuilding is idempotent, and --progress FILE would skip them"
                };
                return Err(CliError::Partial {
                    done: format!("{ids_done} ids rebuilt{hint}"),
                    cause: Box::new(e),
                });
            }
        };
        if let Some(file) = journal.as_mut() {
            writeln!(file, "{id}")
                .and_then(|()| file.flush())
                .map_err(|e| CliError::Other(format!("cannot write the progress file: {e}")))?;
        }
        ids_done += 1;
        events += report.events;
        entries += report.index_entries;
        let value = json!({
            "persistence_id": id.as_str(),
            "events": report.events,
            "index_entries": report.index_entries,
        });
        bar.suspend(|| {
            emit(out, value, || {
                format!(
                    "{id}: {} events, {} index entries",
                    report.events, report.index_entries
                )
            })
        })?;
        bar.inc(1);
        bar.set_message(format!("{events} events"));
    }
    bar.finish_and_clear();
    let skipped = skipped.load(std::sync::atomic::Ordering::Relaxed);
    let summary = json!({
        "summary": {
            "ids": ids_done,
            "skipped": skipped,
            "events": events,
            "index_entries": entries,
            "scanned": scanning,
            "backend": stores.backend(),
        }
    });
    emit(out, summary, || {
        let mut text = format!(
            "rebuilt {ids_done} ids: {events} events, {entries} index entries ({})",
            stores.backend()
        );
        if skipped > 0 {
            text.push_str(&format!(
                "; {skipped} ids skipped, done before according to the progress file"
            ));
        }
        text
    })
}

/// A counter with rate, for a stream of unknown length.
fn progress_unknown() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} {spinner} {pos} ids ({per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}
