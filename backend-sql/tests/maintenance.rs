//! Journal maintenance beyond the kit's `maintenance::*` cases, on both databases: a
//! rebuild that pages (more events than a page), restores an id row lost with the
//! registry (its highest and its listing), leaves an id whose events were all deleted
//! as it was; truncation run twice before a rebuild (SQLite's negated positions must not
//! collide); and a corrupt `tags` value failing the rebuild as it fails a replay.
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`).

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use persistence_api::{
    AtomicWrite, ErrorKind, EventEnvelope, JournalExt, Offset, Payload, PersistenceId,
    PersistentEvent, ReadJournalExt, RebuildReport, Stores,
};
use persistence_sql::{sqlx, Postgres, PostgresConfig, Sqlite, SqliteConfig};

/// Raw statements on the tables of the opened journal, behind the stores' back.
enum Raw {
    Sqlite(sqlx::SqlitePool, String),
    Postgres(sqlx::PgPool, String),
}

impl Raw {
    /// The quoted name of `table` (with the journal's schema and prefix).
    fn table(&self, table: &str) -> String {
        match self {
            Raw::Sqlite(_, prefix) => format!("\"{prefix}{table}\""),
            Raw::Postgres(_, schema) => format!("\"{schema}\".\"m_{table}\""),
        }
    }

    async fn exec(&self, sql: String) {
        let sql = sqlx::AssertSqlSafe(sql);
        match self {
            Raw::Sqlite(pool, _) => {
                sqlx::raw_sql(sql).execute(pool).await.unwrap();
            }
            Raw::Postgres(pool, _) => {
                sqlx::raw_sql(sql).execute(pool).await.unwrap();
            }
        }
    }
}

fn pid(name: &str) -> PersistenceId {
    PersistenceId::new(name).unwrap()
}

fn tagged(id: &PersistenceId, from: u64, to: u64, tags: &[&str]) -> AtomicWrite {
    AtomicWrite::new(
        (from..=to)
            .map(|s| {
                PersistentEvent::new(id.clone(), s, Payload::raw(vec![s as u8]))
                    .with_tags(tags.iter().map(|t| t.to_string()))
            })
            .collect(),
    )
    .unwrap()
}

async fn by_tag(stores: &Stores, tag: &str) -> Vec<EventEnvelope> {
    stores
        .read_journal
        .current_events_by_tag(tag.into(), Offset::NoOffset)
        .try_collect()
        .await
        .unwrap()
}

async fn listed(stores: &Stores) -> BTreeSet<String> {
    stores
        .read_journal
        .current_persistence_ids()
        .map(|id| id.unwrap().to_string())
        .collect()
        .await
}

async fn scanned(stores: &Stores) -> Vec<String> {
    stores
        .maintenance
        .scan_persistence_ids()
        .map(|id| id.unwrap().to_string())
        .collect()
        .await
}

async fn rebuild_all(stores: &Stores) {
    for id in scanned(stores).await {
        stores
            .maintenance
            .rebuild_persistence_id(&pid(&id))
            .await
            .unwrap();
    }
}

/// The journal of both databases opened with a page of 3 rows.
async fn rebuild_pages_restores_and_fails_on_corrupt_tags(stores: &Stores, raw: &Raw) {
    let (a, b, c) = (pid("a"), pid("b"), pid("c"));
    // a: 8 events (three pages), two tags each; b: every event deleted; c: untagged.
    stores
        .journal
        .write(tagged(&a, 1, 5, &["t", "u"]))
        .await
        .unwrap();
    stores.journal.write(tagged(&c, 1, 2, &[])).await.unwrap();
    stores
        .journal
        .write(tagged(&a, 6, 8, &["t", "u"]))
        .await
        .unwrap();
    stores
        .journal
        .write(tagged(&b, 1, 2, &["t"]))
        .await
        .unwrap();
    stores.journal.delete_events_to(&b, u64::MAX).await.unwrap();
    let before = by_tag(stores, "t").await;
    assert_eq!(before.len(), 8);
    let all: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    assert_eq!(listed(stores).await, all);

    // The tag rows and a's whole id row are lost; b's row (its only trace) stays.
    raw.exec(format!(
        "DELETE FROM {}; DELETE FROM {} WHERE persistence_id = 'a'",
        raw.table("event_tag"),
        raw.table("journal_ids")
    ))
    .await;
    assert_eq!(stores.journal.highest_sequence_nr(&a).await.unwrap(), 0);
    assert_eq!(scanned(stores).await, ["a", "b", "c"], "by id, each once");

    let report = stores.maintenance.rebuild_persistence_id(&a).await.unwrap();
    assert_eq!(report, RebuildReport::new(8, 16));
    assert_eq!(stores.journal.highest_sequence_nr(&a).await.unwrap(), 8);
    let replayed = stores.journal.replay_all(&a).await.unwrap();
    assert_eq!(replayed.len(), 8);
    let report = stores.maintenance.rebuild_persistence_id(&b).await.unwrap();
    assert_eq!(report, RebuildReport::new(0, 0));
    assert_eq!(stores.journal.highest_sequence_nr(&b).await.unwrap(), 2);
    stores.maintenance.rebuild_persistence_id(&c).await.unwrap();
    assert_eq!(
        by_tag(stores, "t").await,
        before,
        "same events, same offsets"
    );
    assert_eq!(by_tag(stores, "u").await.len(), 8);
    assert_eq!(listed(stores).await, all);

    // Truncated twice before the rebuild: the ids come back, once each.
    for _ in 0..2 {
        stores.maintenance.truncate_indexes().await.unwrap();
        assert!(listed(stores).await.is_empty());
        assert!(by_tag(stores, "t").await.is_empty());
    }
    rebuild_all(stores).await;
    assert_eq!(listed(stores).await, all);
    assert_eq!(by_tag(stores, "t").await, before);
    // A new id after all that is listed after the others.
    let d = pid("d");
    stores
        .journal
        .write(tagged(&d, 1, 1, &["t"]))
        .await
        .unwrap();
    let ids: Vec<String> = stores
        .read_journal
        .current_persistence_ids()
        .map(|id| id.unwrap().to_string())
        .collect()
        .await;
    assert_eq!(ids.len(), 4);
    assert_eq!(ids.last().map(String::as_str), Some("d"));

    // A corrupt tags value of a 7 (the third page): the replay's error, naming the event.
    raw.exec(format!(
        "UPDATE {} SET tags = 'not json [' WHERE persistence_id = 'a' AND sequence_nr = 7",
        raw.table("event_journal")
    ))
    .await;
    let replay = stores.journal.replay_all(&a).await.unwrap_err();
    let rebuild = stores
        .maintenance
        .rebuild_persistence_id(&a)
        .await
        .unwrap_err();
    for e in [&replay, &rebuild] {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert_eq!(e.persistence_id(), Some("a"), "{e}");
        assert_eq!(e.sequence_range(), Some((7, 7)), "{e}");
        assert!(e.to_string().contains("column tags"), "{e}");
    }
    assert_eq!(replay.message(), rebuild.message());
}

#[tokio::test]
async fn sqlite_rebuild_pages_restores_and_fails_on_corrupt_tags() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("maintenance.db"));
    config.namespace = "m".into();
    config.page_size = 3;
    let prefix = config.table_prefix();
    let opened = Sqlite::open(config).await.unwrap();
    let raw = Raw::Sqlite(opened.pool().clone(), prefix);
    rebuild_pages_restores_and_fails_on_corrupt_tags(&opened.stores(), &raw).await;
    opened.close().await;
}

#[tokio::test]
async fn postgres_rebuild_pages_restores_and_fails_on_corrupt_tags() {
    let Some(url) = persistence_tck::server_env("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!("maintenance_{}_{nanos}", std::process::id());
    let mut config = PostgresConfig::new(url).with_schema(&schema);
    config.namespace = "m".into();
    config.page_size = 3;
    let opened = Postgres::open(config).await.unwrap();
    let raw = Raw::Postgres(opened.pool().clone(), schema.clone());
    rebuild_pages_restores_and_fails_on_corrupt_tags(&opened.stores(), &raw).await;
    raw.exec(format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
    opened.close().await;
}
