//! `Stores::health`: answers on a healthy store, fails with the backend's error when the
//! schema is gone (SQLite with its tables dropped), and times out, never hangs, when the
//! backend does not answer.

use std::sync::Arc;
use std::time::Duration;

use persistence_stores::memory::{Memory, MemoryConfig};
use persistence_stores::{
    async_trait, AtomicWrite, ErrorKind, Journal, PersistenceId, Replay, Result, SequenceNr, Stores,
};

#[tokio::test]
async fn memory_is_healthy_and_says_what_it_probed() {
    let stores = Memory::new(MemoryConfig::default()).stores();
    let health = stores.health(Duration::from_secs(5)).await.unwrap();
    assert_eq!(health.backend, "memory");
    assert_eq!(health.probed, ["journal", "snapshots"]);
    assert!(health.latency < Duration::from_secs(5));
    // The probe writes nothing.
    let ids: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        persistence_stores::ReadJournalExt::current_persistence_ids(stores.read_journal.as_ref()),
    )
    .await;
    assert!(ids.is_empty(), "{ids:?}");
}

/// A journal that never answers `highest_sequence_nr`, as a server that accepted the
/// connection and then went silent.
struct Silent(Memory);

#[async_trait]
impl Journal for Silent {
    async fn write_events(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Result<()>>> {
        self.0.write_events(writes).await
    }
    async fn replay(
        &self,
        id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> Result<Replay> {
        self.0.replay(id, from, to, max).await
    }
    async fn highest_sequence_nr(&self, _: &PersistenceId) -> Result<SequenceNr> {
        futures::future::pending().await
    }
    async fn delete_events_to(&self, id: &PersistenceId, to: SequenceNr) -> Result<()> {
        self.0.delete_events_to(id, to).await
    }
}

#[tokio::test]
async fn a_silent_backend_is_a_timeout_naming_the_backend() {
    let memory = Memory::new(MemoryConfig::default());
    let stores = Stores::new(
        "silent",
        memory.capabilities(),
        Arc::new(Silent(memory.clone())),
        Arc::new(memory.clone()),
        Arc::new(memory),
    );
    let started = std::time::Instant::now();
    let err = stores.health(Duration::from_millis(100)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.backend(), Some("silent"));
    assert!(err.to_string().contains("silent"), "{err}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_with_its_tables_dropped_fails_and_does_not_hang() {
    use persistence_stores::sql::{sqlx, Sqlite, SqliteConfig};
    use persistence_stores::Config;

    let dir = std::env::temp_dir().join(format!(
        "persistence-health-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.db");
    let mut config = Config::for_backend("sqlite");
    config.set("sqlite", "path", path.display().to_string());
    let stores = persistence_stores::open(&config).await.unwrap();
    let health = stores.health(Duration::from_secs(5)).await.unwrap();
    assert_eq!(health.backend, "sqlite");

    // Another handle on the same file drops every table.
    let admin = Sqlite::open(SqliteConfig {
        path: path.clone(),
        create_schema: false,
        ..SqliteConfig::default()
    })
    .await
    .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(admin.pool())
    .await
    .unwrap();
    assert!(!tables.is_empty());
    for table in &tables {
        // The names come from sqlite_master, not from input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS \"{table}\""
        )))
        .execute(admin.pool())
        .await
        .unwrap();
    }
    admin.close().await;

    let started = std::time::Instant::now();
    let err = stores.health(Duration::from_secs(5)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(err.kind(), ErrorKind::Timeout, "{err:#}");
    assert_eq!(err.backend(), Some("sqlite"), "{err:#}");
    assert!(format!("{err:#}").contains("no such table"), "{err:#}");
    drop(stores);
    let _ = std::fs::remove_dir_all(&dir);
}
