//! Cleanup: delete everything stored for given persistence ids (events, tag rows,
//! snapshots, metadata), as pekko-persistence-cassandra's `Cleanup` tool does. Dry run by
//! default: it counts what it would delete.

use persistence_api::{PersistenceId, Result};
use scylla::value::CqlTimeuuid;

use crate::core::Inner;
use crate::timeuuid;

/// What a cleanup found (and, unless a dry run, deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Whether nothing was deleted (only counted).
    pub dry_run: bool,
    /// Persistence ids processed.
    pub persistence_ids: usize,
    /// Events in `messages` (those not already removed by `delete_events_to`).
    pub events: u64,
    /// Rows in `tag_views` (found through the events' tags).
    pub tag_rows: u64,
    /// Snapshots.
    pub snapshots: u64,
}

type TaggedRow = (Option<i64>, Option<CqlTimeuuid>, Option<Vec<String>>);

pub(crate) async fn cleanup(
    inner: &Inner,
    ids: &[PersistenceId],
    dry_run: bool,
) -> Result<CleanupReport> {
    let s = &inner.stmts;
    let mut report = CleanupReport {
        dry_run,
        ..CleanupReport::default()
    };
    for id in ids {
        // Not a store call: nothing else names the operation and the id (one of several).
        let ctx = |e: persistence_api::Error| {
            e.with_operation("cleanup").with_persistence_id(id.as_str())
        };
        let pid = inner.pid_key(id);
        let (highest, _) = inner.highest_and_deleted_to(&pid).await.map_err(ctx)?;
        let last = inner.partition_of(highest.max(1)) + 1;
        for nr in 0..=last {
            let rows: Vec<TaggedRow> = inner
                .fetch_all("cleanup", &s.select_message_tags, (pid.as_str(), nr))
                .await
                .map_err(ctx)?;
            for (seq, ts, tags) in rows {
                let (Some(_), Some(ts)) = (seq, ts) else {
                    continue;
                };
                report.events += 1;
                let bucket = inner
                    .config
                    .tag_time_bucket
                    .bucket_of(timeuuid::millis_of(ts.as_ref()));
                for tag in tags.unwrap_or_default() {
                    report.tag_rows += 1;
                    if !dry_run {
                        let key = inner.tag_key(&tag);
                        inner
                            .exec("cleanup", &s.delete_tag_view, (key.as_str(), bucket, ts))
                            .await
                            .map_err(ctx)?;
                    }
                }
            }
            if !dry_run {
                inner
                    .exec("cleanup", &s.delete_partition, (pid.as_str(), nr))
                    .await
                    .map_err(ctx)?;
            }
        }
        let snapshots: Vec<(i64, Option<i64>)> = inner
            .fetch_all(
                "cleanup",
                &s.select_snapshot_timestamps,
                (pid.as_str(), i64::MAX, 0i64),
            )
            .await
            .map_err(ctx)?;
        report.snapshots += snapshots.len() as u64;
        if !dry_run {
            let key = (pid.as_str(),);
            for stmt in [
                &s.delete_all_snapshots,
                &s.delete_tag_progress,
                &s.delete_tag_scanning,
                &s.delete_metadata,
                &s.delete_persistence_id,
            ] {
                inner.exec("cleanup", stmt, key).await.map_err(ctx)?;
            }
            inner.forget_tag_seqs(&pid);
            inner.known_ids.lock().unwrap().remove(&pid);
        }
        report.persistence_ids += 1;
    }
    Ok(report)
}
