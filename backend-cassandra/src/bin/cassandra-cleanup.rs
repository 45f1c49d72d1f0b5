//! `cassandra-cleanup`: deletes everything stored for given persistence ids (events, their tag
//! rows, snapshots, metadata), as pekko-persistence-cassandra's Cleanup tool. Dry run (counts
//! only) unless `--execute`.
//!
//! ```text
//! cargo run -p persistence-cassandra --bin cassandra-cleanup -- [--config FILE] [--execute] ID...
//! ```
//!
//! The connection comes from `FILE` (the keys of `CassandraConfig` in TOML: `contact_points`,
//! `local_datacenter`, `keyspace`, `namespace`, ...), else from the environment:
//! `PERSISTENCE_CASSANDRA_CONTACT_POINTS` (comma-separated), `PERSISTENCE_CASSANDRA_LOCAL_DATACENTER`,
//! `PERSISTENCE_CASSANDRA_KEYSPACE`, `PERSISTENCE_CASSANDRA_NAMESPACE`.

use std::process::ExitCode;

use persistence_api::PersistenceId;
use persistence_cassandra::{Cassandra, CassandraConfig};

const USAGE: &str = "usage: cassandra-cleanup [--config FILE] [--execute] ID...";

fn config(file: Option<String>) -> Result<CassandraConfig, String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
        return toml::from_str(&text).map_err(|e| format!("{file}: {e}"));
    }
    let mut config = CassandraConfig::default();
    if let Ok(points) = std::env::var("PERSISTENCE_CASSANDRA_CONTACT_POINTS") {
        config.contact_points = points.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if let Ok(dc) = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER") {
        config.local_datacenter = Some(dc);
    }
    if let Ok(ks) = std::env::var("PERSISTENCE_CASSANDRA_KEYSPACE") {
        config.keyspace = ks;
    }
    if let Ok(ns) = std::env::var("PERSISTENCE_CASSANDRA_NAMESPACE") {
        config.namespace = ns;
    }
    Ok(config)
}

fn main() -> ExitCode {
    let mut file = None;
    let mut execute = false;
    let mut ids = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--execute" => execute = true,
            "--config" => match args.next() {
                Some(f) => file = Some(f),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            id => match PersistenceId::new(id) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    eprintln!("cassandra-cleanup: {e}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    if ids.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let config = match config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cassandra-cleanup: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        let backend = Cassandra::open(config).await?;
        backend.cleanup(&ids, !execute).await
    });
    match result {
        Ok(report) => {
            println!(
                "{} {} persistence ids: {} events, {} tag rows, {} snapshots{}",
                if report.dry_run {
                    "would delete, of"
                } else {
                    "deleted, of"
                },
                report.persistence_ids,
                report.events,
                report.tag_rows,
                report.snapshots,
                if report.dry_run {
                    " (dry run: pass --execute to delete)"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cassandra-cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}
