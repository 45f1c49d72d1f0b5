//! Cassandra goes away mid-write: the driver's session talks to the node through
//! [`persistence_tck::fault::FaultProxy`], which cuts every connection after a chosen number of
//! client-to-server bytes, swept over the whole write (the guarded LWT batch of the events,
//! then the tag rows and their progress). After every cut the caller must hold a retryable
//! error (`Unavailable`/`Timeout`), and a second session talking to the node directly must
//! see the atomic write wholly or not at all: in replay, in `highest_sequence_nr` and in
//! events-by-tag (read after a replay: a replay is one place where this backend writes the tag
//! rows a failed write left out, see `journal.rs`). Then the proxy is restored and the journal
//! must work again: a retry of the same write succeeds (nothing was stored) or gets `Conflict`
//! (it was). In every other case the retry comes before any replay, and must itself leave
//! every event of the write under the tag (the journal's next write of an id after a failed
//! one repairs its tag rows). Finally the same journal's next tagged write, with no recovery
//! replay of its own, must show up in events-by-tag too.
//!
//! The driver learns node addresses from `system.local`/`system.peers`; for the local node
//! it keeps the port it connected to, so with a single node on 127.0.0.1 every connection
//! goes through the proxy (checked below). A multi-node cluster, or a node whose
//! `rpc_address` is not the proxy's IP, would bypass the proxy: that needs an address
//! translator hook in the backend's configuration.
//!
//! The sweep is [`persistence_tck::sweep::run`], the same for every backend; this file sets
//! up Cassandra and says where it differs ([`SweepTarget`]).
//!
//! `source .servers/cassandra/env && cargo test -p persistence-cassandra --test faults`

use persistence_api::ReadJournalExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_api::{
    async_trait, AtomicWrite, JournalExt, JournalMaintenance, PersistenceId, Stores,
};
use persistence_cassandra::{Cassandra, CassandraConfig};
use persistence_tck::fault::FaultProxy;
use persistence_tck::sweep::{run, server_env, unique, CutWrite, Shape, SweepTarget};

/// One untagged event: one guarded (LWT) batch.
const SINGLE: Shape = Shape {
    name: "single",
    events: 1,
    tagged: false,
    points: 30,
};

/// 100 tagged events: one guarded batch, then the tag rows and the tag progress.
const BATCH100: Shape = Shape {
    name: "batch100",
    events: 100,
    tagged: true,
    points: 30,
};

/// How long the driver may take to reconnect once the proxy is restored.
const RECOVERY: Duration = Duration::from_secs(15);

struct Env {
    proxy: FaultProxy,
    /// Through the proxy.
    via: Stores,
    /// Straight to the node, same keyspace and namespace: the judge.
    direct: Stores,
    /// The same, for the clean-up at the end.
    direct_backend: Cassandra,
    /// How many writes after a restore got a retryable error first.
    retried: AtomicU64,
    /// The longest a write took to get a non-retryable answer once the proxy was restored.
    slowest_recovery_ms: AtomicU64,
}

async fn env(shape: &str) -> Option<Env> {
    let contact_points = server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?;
    let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok();
    let target = contact_points
        .split(',')
        .next()
        .expect("a contact point")
        .trim()
        .to_owned();
    let proxy = FaultProxy::start(target).await.expect("start the proxy");
    let namespace = format!("faults_{shape}_{}", unique() % 1_000_000_000_000);
    let direct_config = CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter: dc,
        keyspace: "persistence_tck".into(),
        create_schema: true,
        eventual_consistency_delay: Duration::from_millis(50),
        poll_interval: Duration::from_millis(100),
        gap_timeout: Duration::from_secs(1),
        ..CassandraConfig::default()
    };
    let direct = Cassandra::open(direct_config.clone())
        .await
        .expect("connect directly")
        .with_namespace(&namespace)
        .expect("namespace");
    let via_config = CassandraConfig {
        contact_points: vec![proxy.addr().to_string()],
        create_schema: false,
        request_timeout: Duration::from_secs(2),
        ..direct_config
    };
    let via = Cassandra::open(via_config)
        .await
        .expect("connect through the proxy")
        .with_namespace(&namespace)
        .expect("namespace");
    // Every node the session knows must be the proxy: otherwise the driver would bypass it.
    let state = via.session().get_cluster_state();
    let nodes = state.get_nodes_info();
    assert!(!nodes.is_empty());
    for node in nodes {
        assert_eq!(
            (node.address.ip(), node.address.port()),
            (proxy.addr().ip(), proxy.addr().port()),
            "the driver talks to {} directly, bypassing the proxy",
            node.address
        );
    }
    Some(Env {
        proxy,
        via: via.stores(),
        direct: direct.stores(),
        direct_backend: direct,
        retried: AtomicU64::new(0),
        slowest_recovery_ms: AtomicU64::new(0),
    })
}

#[async_trait]
impl SweepTarget for Env {
    fn proxy(&self) -> &FaultProxy {
        &self.proxy
    }

    fn via(&self) -> &Stores {
        &self.via
    }

    fn direct(&self) -> &Stores {
        &self.direct
    }

    /// Twice: the first also prepares what a first write of this shape prepares.
    fn calibrations(&self) -> usize {
        2
    }

    /// Writes until the answer is not retryable (the driver reconnects after a cut with a
    /// backoff), for at most [`RECOVERY`].
    async fn write_settled(&self, write: AtomicWrite) -> persistence_api::Result<()> {
        let started = Instant::now();
        let deadline = started + RECOVERY;
        let result = loop {
            match self.via.journal.write(write.clone()).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        self.slowest_recovery_ms
            .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        result
    }

    async fn settle(&self, cut: &CutWrite<'_>) {
        if cut.sent >= cut.n {
            // The connection was cut: what reached the node may still be being applied (an
            // LWT whose answer was lost). Let it finish before judging.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A failed write's tag rows are written by the next replay of the id, or by the
    /// journal's next write of it (see `journal.rs`); the sweep checks after this long
    /// (past the readers' eventual-consistency delay, 50 ms here) that the retry did.
    fn late_tag_rows(&self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }

    fn notes(&self) -> Option<String> {
        Some(format!(
            "writes after a restore retried {} times, the slowest took {} ms",
            self.retried.load(Ordering::Relaxed),
            self.slowest_recovery_ms.load(Ordering::Relaxed),
        ))
    }

    /// Removes what this test stored (its namespace's ids), with the driver's purge.
    async fn clean_up(&self) {
        let ids: Vec<PersistenceId> = self
            .direct
            .read_journal
            .current_persistence_ids()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<persistence_api::Result<_>>()
            .expect("persistence ids");
        let maintenance = self.direct_backend.maintenance();
        for id in &ids {
            maintenance
                .purge_persistence_id(id)
                .await
                .expect("clean up");
        }
    }
}

async fn sweep(shape: Shape) {
    if let Some(env) = env(shape.name).await {
        run(&env, shape).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_guarded_write_cut_at_every_point() {
    sweep(SINGLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_write_of_100_tagged_events_cut_at_every_point() {
    sweep(BATCH100).await;
}
