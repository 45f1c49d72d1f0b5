//! Criterion benchmarks of the memory driver and the CBOR codec, each beside the same work
//! done directly on a `Vec` in the same run (the bound).
//!
//! Run: `cargo bench -p persistence-memory --bench memory`. Throughputs are in events/s.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::StreamExt;
use persistence_api::{
    AtomicWrite, CborCodec, Codec, JournalExt, Payload, PersistenceId, PersistentEvent, Stores,
};
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

fn appends(c: &mut Criterion) {
    let codec = CborCodec::<Deposited>::new("bench.Deposited");
    let payload = codec.encode(&typical()).unwrap();
    let id = PersistenceId::new("bench-1").unwrap();
    let rt = rt();
    for batch in [1u64, 100] {
        let mut g = c.benchmark_group(format!("append_{batch}_event_atomic_writes"));
        g.throughput(Throughput::Elements(batch));
        let stores: Stores = persistence_memory::stores();
        let mut next = 1u64;
        g.bench_function("memory_journal", |b| {
            b.iter(|| {
                let events = (next..next + batch)
                    .map(|s| event(&id, s, &payload))
                    .collect();
                next += batch;
                rt.block_on(stores.journal.write(AtomicWrite::new(events).unwrap()))
                    .unwrap();
            })
        });
        let mut vec: Vec<PersistentEvent> = Vec::new();
        let mut next = 1u64;
        g.bench_function("vec_push_baseline", |b| {
            b.iter(|| {
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

fn replay(c: &mut Criterion) {
    let codec = CborCodec::<Deposited>::new("bench.Deposited");
    let payload = codec.encode(&typical()).unwrap();
    let id = PersistenceId::new("bench-replay").unwrap();
    let rt = rt();
    let stores = persistence_memory::stores();
    let mut vec = Vec::new();
    for start in (1..=10_000u64).step_by(100) {
        let events: Vec<_> = (start..start + 100)
            .map(|s| event(&id, s, &payload))
            .collect();
        vec.extend(events.iter().cloned());
        rt.block_on(stores.journal.write(AtomicWrite::new(events).unwrap()))
            .unwrap();
    }
    let mut g = c.benchmark_group("replay_10000_events");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("memory_journal", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = stores
                    .journal
                    .replay(&id, 1, u64::MAX, u64::MAX)
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
        })
    });
    g.bench_function("vec_clone_baseline", |b| {
        b.iter(|| {
            let n = vec
                .iter()
                .cloned()
                .fold(0usize, |n, e| n + e.payload.bytes.len().min(1));
            assert_eq!(n, 10_000);
        })
    });
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
criterion_main!(benches);
