//! The group-commit workload every backend's benchmark runs (see each backend's README,
//! "Group commit"): [`ENTITIES`] entities, single-event writes spread over a number of
//! concurrent tasks, each task writing its own entities in turn, so no two writes
//! conflict; events/s and the p50 / p99 latency of one write. One harness, so the stores,
//! the raw clients and every backend are measured the same way.

use std::future::Future;
use std::time::{Duration, Instant};

/// Entities of the workload.
pub const ENTITIES: usize = 1000;

/// The comma-separated numbers of the variable `name` (`BENCH_GC_TASKS=1,100`), else
/// `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// The number in the variable `name`, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    /// Events per second over the whole run.
    pub rate: f64,
    /// The median latency of one write.
    pub p50: Duration,
    /// The 99th percentile latency of one write.
    pub p99: Duration,
}

/// The figures of `events` writes that took `elapsed`, one latency each.
pub fn figures(events: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        rate: events as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `write(entity, seq)` for `events` writes spread over `tasks` Tokio tasks: task `t`
/// owns entities `t, t + tasks, t + 2 * tasks, ...` and writes them in turn, each from
/// sequence number `first` up. Every `write` is timed.
pub async fn run<F, Fut>(tasks: usize, events: usize, first: u64, write: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = tasks.clamp(1, ENTITIES);
    let per_task = events / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let write = write.clone();
            tokio::spawn(async move {
                let owned: Vec<usize> = (t..ENTITIES).step_by(tasks).collect();
                let mut latencies = Vec::with_capacity(per_task);
                for k in 0..per_task {
                    let entity = owned[k % owned.len()];
                    let seq = (k / owned.len()) as u64 + first;
                    let begun = Instant::now();
                    write(entity, seq).await;
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_task * tasks);
    for h in handles {
        latencies.extend(h.await.expect("a benchmark task"));
    }
    figures(per_task * tasks, start.elapsed(), latencies)
}
