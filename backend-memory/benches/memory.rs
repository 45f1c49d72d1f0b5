//! Criterion benchmarks of the memory driver and the CBOR codec, each beside the same work
//! done directly on a `Vec` in the same run (the bound).
//!
//! Run: `cargo bench -p persistence-memory --bench memory`. Throughputs are in events/s.
//! `memory_journal` measures through `Stores` (the checking layer, as users call it),
//! `memory_backend_direct` calls the backend's `Journal` without the layer.
//!
//! Ratios on a loaded machine: `MEMORY_BENCH_RATIOS=<rounds>` runs replay and 1-event
//! appends through `Stores`, through the backend and on the `Vec` in turn, `rounds`
//! times, and prints the fastest of each and their ratios.
//!
//! Profiling: with `MEMORY_BENCH_PROFILE=replay` (or `append_1`, `append_100`) the binary
//! skips criterion and runs a fixed amount of that workload, through `Stores` and directly
//! and beside its `Vec` bound, so `valgrind --tool=callgrind` counts exact instructions:
//! `replay_stores`, `replay_direct`, `replay_vec` and `replay_setup` run one part of `replay`
//! (10 replays of 10,000 events after the setup; `replay_setup` only the setup, to subtract):
//! `MEMORY_BENCH_PROFILE=replay valgrind --tool=callgrind target/release/deps/memory-<hash>`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, CborCodec, Codec, Journal, JournalExt, Payload, PersistenceId, PersistentEvent,
    Stores,
};
use persistence_memory::{Memory, MemoryConfig};
use serde::{Deserialize, Serialize};

/// A typical event: an account deposit with a reference and a few fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Deposited {
    account: String,
    amount_cents: i64,
    currency: String,
    reference: String,
    booked_at: i64,
}

fn typical() -> Deposited {
    Deposited {
        account: "account-0042".into(),
        amount_cents: 12_345,
        currency: "EUR".into(),
        reference: "invoice 2026-11-0042, thank you".into(),
        booked_at: 1_795_000_000_000,
    }
}

fn event(id: &PersistenceId, seq: u64, payload: &Payload) -> PersistentEvent {
    PersistentEvent::new(id.clone(), seq, payload.clone()).with_writer_id("bench")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Events an append benchmark writes to one store (or `Vec`) before it starts on a fresh
/// one: the store stays the size of a test's, rather than growing by millions of events
/// (gigabytes, then page faults) over a criterion run. Both sides pay for dropping theirs.
const APPEND_LOG: u64 = 10_000;

fn appends(c: &mut Criterion) {
    let codec = CborCodec::<Deposited>::new("bench.Deposited");
    let payload = codec.encode(&typical()).unwrap();
    let id = PersistenceId::new("bench-1").unwrap();
    let rt = rt();
    for batch in [1u64, 100] {
        let mut g = c.benchmark_group(format!("append_{batch}_event_atomic_writes"));
        g.throughput(Throughput::Elements(batch));
        let mut stores: Stores = persistence_memory::stores();
        let mut next = 1u64;
        g.bench_function("memory_journal", |b| {
            b.iter(|| {
                if next > APPEND_LOG {
                    stores = persistence_memory::stores();
                    next = 1;
                }
                let events = (next..next + batch)
                    .map(|s| event(&id, s, &payload))
                    .collect();
                next += batch;
                rt.block_on(stores.journal.write(AtomicWrite::new(events).unwrap()))
                    .unwrap();
            })
        });
        let mut direct = Memory::new(MemoryConfig::default());
        let mut next = 1u64;
        g.bench_function("memory_backend_direct", |b| {
            b.iter(|| {
                if next > APPEND_LOG {
                    direct = Memory::new(MemoryConfig::default());
                    next = 1;
                }
                let events = (next..next + batch)
                    .map(|s| event(&id, s, &payload))
                    .collect();
                next += batch;
                let r = rt
                    .block_on(direct.write_events(vec![AtomicWrite::new(events).unwrap()]))
                    .unwrap();
                r.into_iter().next().unwrap().unwrap();
            })
        });
        let mut vec: Vec<PersistentEvent> = Vec::new();
        let mut next = 1u64;
        g.bench_function("vec_push_baseline", |b| {
            b.iter(|| {
                if next > APPEND_LOG {
                    vec.clear();
                    next = 1;
                }
                let events: Vec<_> = (next..next + batch)
                    .map(|s| event(&id, s, &payload))
                    .collect();
                next += batch;
                let w = AtomicWrite::new(events).unwrap();
                vec.extend(w.into_events());
            })
        });
        g.finish();
    }
}

/// 10,000 events of one id, written in atomic writes of 100, into `Stores`, into a bare
/// backend, and into a `Vec`.
struct ReplaySetup {
    id: PersistenceId,
    rt: tokio::runtime::Runtime,
    stores: Stores,
    direct: Memory,
    vec: Vec<PersistentEvent>,
}

fn replay_setup() -> ReplaySetup {
    let codec = CborCodec::<Deposited>::new("bench.Deposited");
    let payload = codec.encode(&typical()).unwrap();
    let id = PersistenceId::new("bench-replay").unwrap();
    let rt = rt();
    let stores = persistence_memory::stores();
    let direct = Memory::new(MemoryConfig::default());
    let mut vec = Vec::new();
    for start in (1..=10_000u64).step_by(100) {
        let events: Vec<_> = (start..start + 100)
            .map(|s| event(&id, s, &payload))
            .collect();
        vec.extend(events.iter().cloned());
        rt.block_on(
            stores
                .journal
                .write(AtomicWrite::new(events.clone()).unwrap()),
        )
        .unwrap();
        rt.block_on(direct.write_events(vec![AtomicWrite::new(events).unwrap()]))
            .unwrap();
    }
    ReplaySetup {
        id,
        rt,
        stores,
        direct,
        vec,
    }
}

impl ReplaySetup {
    fn through(&self, journal: &dyn Journal) {
        self.rt.block_on(async {
            let r = journal
                .replay(&self.id, 1, u64::MAX, u64::MAX)
                .await
                .unwrap();
            let n = r
                .events
                .fold(0usize, |n, e| async move {
                    n + e.unwrap().payload.bytes.len().min(1)
                })
                .await;
            assert_eq!(n, 10_000);
        })
    }

    fn stores(&self) {
        self.through(&*self.stores.journal)
    }

    fn direct(&self) {
        self.through(&self.direct)
    }

    fn vec(&self) {
        let n = self
            .vec
            .iter()
            .cloned()
            .fold(0usize, |n, e| n + e.payload.bytes.len().min(1));
        assert_eq!(n, 10_000);
    }
}

fn replay(c: &mut Criterion) {
    let setup = replay_setup();
    let mut g = c.benchmark_group("replay_10000_events");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("memory_journal", |b| b.iter(|| setup.stores()));
    g.bench_function("memory_backend_direct", |b| b.iter(|| setup.direct()));
    g.bench_function("vec_clone_baseline", |b| b.iter(|| setup.vec()));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let codec = CborCodec::<Deposited>::new("bench.Deposited");
    let value = typical();
    let payload = codec.encode(&value).unwrap();
    let mut g = c.benchmark_group("cbor_codec_typical_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec.encode(&value).unwrap()));
    g.bench_function("decode", |b| b.iter(|| codec.decode(&payload).unwrap()));
    g.bench_function("clone_baseline", |b| {
        b.iter_batched(|| (), |_| value.clone(), BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(benches, appends, replay, codec);

/// A fixed amount of one workload, for `valgrind --tool=callgrind` (see the crate docs).
fn profile(workload: &str) {
    match workload {
        "replay" | "replay_stores" | "replay_direct" | "replay_vec" | "replay_setup" => {
            let setup = replay_setup();
            for _ in 0..10 {
                if matches!(workload, "replay" | "replay_stores") {
                    setup.stores();
                }
                if matches!(workload, "replay" | "replay_direct") {
                    setup.direct();
                }
                if matches!(workload, "replay" | "replay_vec") {
                    setup.vec();
                }
            }
        }
        "append_1" | "append_100" => {
            let batch: u64 = if workload == "append_1" { 1 } else { 100 };
            let payload = CborCodec::<Deposited>::new("bench.Deposited")
                .encode(&typical())
                .unwrap();
            let id = PersistenceId::new("bench-1").unwrap();
            let rt = rt();
            let stores = persistence_memory::stores();
            let direct = Memory::new(MemoryConfig::default());
            let mut vec = Vec::new();
            let writes = |from: u64| {
                AtomicWrite::new(
                    (from..from + batch)
                        .map(|s| event(&id, s, &payload))
                        .collect(),
                )
                .unwrap()
            };
            for i in 0..10_000 / batch {
                let from = 1 + i * batch;
                rt.block_on(stores.journal.write(writes(from))).unwrap();
                rt.block_on(direct.write_events(vec![writes(from)]))
                    .unwrap();
                vec.extend(writes(from).into_events());
            }
        }
        other => panic!("MEMORY_BENCH_PROFILE: unknown workload {other:?}"),
    }
}

/// Wall-clock ratios robust to a loaded machine: each workload and its bound run in turn,
/// `rounds` times, and the fastest of each is compared (interference only slows a run).
fn ratios(rounds: usize) {
    use std::time::Instant;
    fn fastest(f: impl FnMut()) -> impl FnMut() -> f64 {
        let mut f = f;
        let mut best = f64::MAX;
        move || {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
            best
        }
    }
    let setup = replay_setup();
    let mut stores = fastest(|| setup.stores());
    let mut direct = fastest(|| setup.direct());
    let mut vec = fastest(|| setup.vec());
    let (mut s, mut d, mut v) = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        s = stores();
        d = direct();
        v = vec();
    }
    println!(
        "replay 10,000 events, fastest of {rounds}: Stores {:.2} M/s, backend {:.2} M/s, Vec clone {:.2} M/s; ratio Stores {:.2}, backend {:.2}",
        1e4 / s / 1e6,
        1e4 / d / 1e6,
        1e4 / v / 1e6,
        v / s,
        v / d
    );
    // 1-event appends, 1,000 at a time (fresh stores every APPEND_LOG events).
    let payload = CborCodec::<Deposited>::new("bench.Deposited")
        .encode(&typical())
        .unwrap();
    let id = PersistenceId::new("bench-1").unwrap();
    let rt = rt();
    let write = |s: u64| AtomicWrite::single(event(&id, s, &payload)).unwrap();
    let (mut st, mut di, mut ve) = (
        persistence_memory::stores(),
        Memory::new(MemoryConfig::default()),
        Vec::new(),
    );
    let (mut ns, mut nd, mut nv) = (1u64, 1u64, 1u64);
    let mut stores = fastest(|| {
        for _ in 0..1000 {
            if ns > APPEND_LOG {
                (st, ns) = (persistence_memory::stores(), 1);
            }
            rt.block_on(st.journal.write(write(ns))).unwrap();
            ns += 1;
        }
    });
    let mut direct = fastest(|| {
        for _ in 0..1000 {
            if nd > APPEND_LOG {
                (di, nd) = (Memory::new(MemoryConfig::default()), 1);
            }
            rt.block_on(di.write_events(vec![write(nd)])).unwrap();
            nd += 1;
        }
    });
    let mut vec = fastest(|| {
        for _ in 0..1000 {
            if nv > APPEND_LOG {
                (ve, nv) = (Vec::new(), 1);
            }
            ve.extend(write(nv).into_events());
            nv += 1;
        }
    });
    for _ in 0..rounds {
        s = stores();
        d = direct();
        v = vec();
    }
    println!(
        "1-event appends, fastest 1,000 of {rounds}: Stores {:.2} us, backend {:.2} us, Vec push {:.2} us; ratio Stores {:.2}, backend {:.2}",
        s * 1e3,
        d * 1e3,
        v * 1e3,
        v / s,
        v / d
    );
}

fn main() {
    if let Ok(workload) = std::env::var("MEMORY_BENCH_PROFILE") {
        return profile(&workload);
    }
    if let Ok(rounds) = std::env::var("MEMORY_BENCH_RATIOS") {
        return ratios(
            rounds
                .parse()
                .expect("MEMORY_BENCH_RATIOS: a number of rounds"),
        );
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
