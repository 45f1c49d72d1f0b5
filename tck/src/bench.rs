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

/// A queue that gathers requests into groups, for the raw clients' grouped alternatives
/// to one request per write: the first request queued goes at once, with whatever else is
/// queued by then (up to `max`, in arrival order), while up to `inflight` groups are in
/// flight; each request is answered when its group was sent. Clones share the queue.
pub struct Gather<R> {
    queue: tokio::sync::mpsc::UnboundedSender<(R, tokio::sync::oneshot::Sender<()>)>,
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl<R> Clone for Gather<R> {
    fn clone(&self) -> Self {
        Gather {
            queue: self.queue.clone(),
            sizes: self.sizes.clone(),
        }
    }
}

impl<R: Send + 'static> Gather<R> {
    /// Starts the committer task, which sends each group with `send`.
    pub fn start<F, Fut>(max: usize, inflight: usize, send: F) -> Self
    where
        F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        use std::sync::{Arc, Mutex};
        use tokio::sync::{mpsc, Semaphore};
        let (queue, mut rx) = mpsc::unbounded_channel::<(R, tokio::sync::oneshot::Sender<()>)>();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let send = Arc::new(send);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(inflight.max(1)));
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let Some(first) = rx.recv().await else { break };
                let mut group = vec![first];
                while group.len() < max {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                seen.lock().unwrap().push(group.len());
                let send = send.clone();
                tokio::spawn(async move {
                    let (requests, answers): (Vec<R>, Vec<_>) = group.into_iter().unzip();
                    send(requests).await;
                    for answer in answers {
                        let _ = answer.send(());
                    }
                    drop(permit);
                });
            }
        });
        Gather { queue, sizes }
    }

    /// Queues `request` and waits until its group was sent.
    pub async fn submit(&self, request: R) {
        let (answer, done) = tokio::sync::oneshot::channel();
        self.queue
            .send((request, answer))
            .expect("the gathering task runs");
        done.await.expect("the group was sent");
    }

    /// The size of every group sent so far.
    pub fn sizes(&self) -> Vec<usize> {
        self.sizes.lock().unwrap().clone()
    }
}
