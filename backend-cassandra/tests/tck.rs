//! The conformance kit against a real Cassandra node.
//!
//! `source .servers/cassandra/env` (after `bash scripts/servers/cassandra.sh start`), then
//! `cargo test -p backend-cassandra --test tck`. One keyspace (`persistence_tck`, created if
//! missing) serves every run; each case gets its own namespace inside it, so no schema change
//! happens per case (see the README for why), and afterwards deletes what it stored with the
//! driver's cleanup.

use std::process::ExitCode;
use std::time::Duration;

use backend_cassandra::{CassandraConfig, CassandraPersistence, ConsistencyLevel};
use persistence_api::futures::TryStreamExt;
use persistence_api::{PersistenceId, ReadJournal, Result, Stores};

struct Factory {
    base: CassandraPersistence,
    /// The configured rows per page.
    page_size: usize,
}

#[persistence_api::async_trait]
impl tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        Ok(self.base.with_namespace(namespace)?.stores())
    }

    fn page_size(&self) -> Option<usize> {
        Some(self.page_size)
    }

    /// Deletes what the case stored, with the driver's own cleanup (so every case also
    /// exercises it).
    async fn cleanup(&self, namespace: &str) -> Result<()> {
        let backend = self.base.with_namespace(namespace)?;
        let ids: Vec<PersistenceId> = backend
            .read_journal()
            .current_persistence_ids()
            .try_collect()
            .await?;
        backend.cleanup(&ids, false).await?;
        Ok(())
    }
}

/// The test configuration: the node from the environment, short delays so live queries
/// deliver within the kit's 2 s, and the development autocreate switches on.
fn config(contact_points: String, local_datacenter: Option<String>) -> CassandraConfig {
    CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter,
        keyspace: "persistence_tck".into(),
        keyspace_autocreate: true,
        tables_autocreate: true,
        consistency: ConsistencyLevel::Quorum,
        eventual_consistency_delay: Duration::from_millis(400),
        poll_interval: Duration::from_millis(200),
        gap_timeout: Duration::from_secs(3),
        ..CassandraConfig::default()
    }
}

fn main() -> ExitCode {
    let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok();
    tck::run_main_server(
        "cassandra",
        "PERSISTENCE_CASSANDRA_CONTACT_POINTS",
        |contact_points| async move {
            let config = config(contact_points, dc);
            let page_size = config.page_size as usize;
            let base = CassandraPersistence::connect(config).await?;
            Ok(Factory { base, page_size })
        },
    )
}
