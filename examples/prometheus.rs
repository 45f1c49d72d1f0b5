//! The stores' metrics in Prometheus' text format.
//!
//! The checking layer records every call through the `metrics` facade; this example
//! installs `metrics-exporter-prometheus`'s recorder (no HTTP server: an application
//! serves `handle.render()` on its own `/metrics` route, or lets the exporter's
//! `http-listener` feature do it), writes and replays on the in-memory store, and prints
//! what a scrape would read. The names are tabled in persistence-api's README.
//!
//! Run: `cargo run --example prometheus`

use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{
    AtomicWrite, Offset, Payload, PersistenceId, PersistentEvent, ReadJournalExt, Result,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // Buckets make the latency and lag histograms Prometheus histograms (without them the
    // exporter renders summaries).
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .expect("buckets are not empty")
        .install_recorder()
        .expect("no other recorder is installed");
    // Optional: help texts and units for the `# HELP` lines.
    persistence_stores::metrics::describe();

    let stores = Memory::new(MemoryConfig::default()).stores();
    let id = PersistenceId::new("account-1")?;
    let events = (1..=3)
        .map(|seq| {
            PersistentEvent::new(id.clone(), seq, Payload::new("json", "Deposited", "{}"))
                .with_tags(["deposits"])
        })
        .collect();
    stores
        .journal
        .write_events(vec![AtomicWrite::new(events)?])
        .await?
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    // Sequence number 3 is taken: a conflict, counted by kind.
    let again = AtomicWrite::single(PersistentEvent::new(
        id.clone(),
        3,
        Payload::new("json", "Deposited", "{}"),
    ))?;
    let results = stores.journal.write_events(vec![again]).await?;
    println!(
        "# the second write: {:?}",
        results[0].as_ref().map_err(|e| e.kind())
    );

    let replay = stores.journal.replay(&id, 1, u64::MAX, u64::MAX).await?;
    println!("# replayed {} events", replay.events.count().await);
    let tagged = stores
        .read_journal
        .current_events_by_tag("deposits".into(), Offset::NoOffset)
        .count()
        .await;
    println!("# {tagged} events tagged deposits\n");

    print!("{}", handle.render());
    Ok(())
}
