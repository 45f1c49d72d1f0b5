//! Every backend compiled into this build opens from configuration alone and stores,
//! replays and queries an event. Server backends read their address from the same
//! variables the project's server scripts export; unset, they are skipped loudly, and
//! with `CI=true` that is a failure.

use futures::StreamExt;
use persistence_stores::ReadJournalExt;
use persistence_stores::{
    AtomicWrite, Config, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, Stores,
};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos}")
}

async fn exercise(stores: &Stores, backend: &str) {
    let id = PersistenceId::new(unique(&format!("open-{backend}-"))).unwrap();
    let tag = unique("open-tag-");
    let event = PersistentEvent::new(id.clone(), 1, Payload::new("t", "t/v1", b"hello".to_vec()))
        .with_tags([tag.clone()]);
    stores
        .journal
        .write(AtomicWrite::single(event).unwrap())
        .await
        .unwrap();
    let events = stores.journal.replay_all(&id).await.unwrap();
    assert_eq!(events.len(), 1, "{backend}");
    assert_eq!(events[0].payload.bytes.as_ref(), b"hello");
    let mut by_tag = stores
        .read_journal
        .current_events_by_tag(tag, Offset::NoOffset);
    let env = by_tag.next().await.expect("one tagged event").unwrap();
    assert_eq!(env.persistence_id(), &id, "{backend}");
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "dynamodb", feature = "cassandra")),
    allow(dead_code)
)]
fn server(var: &str) -> Option<String> {
    persistence_tck::server_env(var)
}

#[tokio::test]
async fn memory_opens_from_toml() {
    let config = Config::from_toml_str("backend = \"memory\"").unwrap();
    exercise(&persistence_stores::open(&config).await.unwrap(), "memory").await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_opens_from_environment_style_settings_and_is_durable() {
    let dir = std::env::temp_dir().join(unique("persistence-open-"));
    let path = dir.join("nested/journal.db");
    let mut config = Config::default();
    config
        .merge_env([
            ("PERSISTENCE_BACKEND".to_string(), "sqlite".to_string()),
            (
                "PERSISTENCE_SQLITE_PATH".to_string(),
                path.display().to_string(),
            ),
        ])
        .unwrap();
    let stores = persistence_stores::open(&config).await.unwrap();
    exercise(&stores, "sqlite").await;
    let ids: Vec<_> = stores
        .read_journal
        .current_persistence_ids()
        .collect()
        .await;
    drop(stores);
    // A second open of the same file sees what the first stored.
    let again = persistence_stores::open(&config).await.unwrap();
    let ids_again: Vec<_> = again.read_journal.current_persistence_ids().collect().await;
    assert_eq!(ids.len(), 1);
    assert_eq!(ids_again.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_opens_from_configuration() {
    let Some(url) = server("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let mut config = Config::for_backend("postgres");
    config.set("postgres", "url", url);
    config.set("postgres", "schema", unique("open_"));
    exercise(
        &persistence_stores::open(&config).await.unwrap(),
        "postgres",
    )
    .await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn dynamodb_opens_from_configuration() {
    let Some(endpoint) = server("PERSISTENCE_DYNAMODB_ENDPOINT") else {
        return;
    };
    let mut config = Config::for_backend("dynamodb");
    config.set("dynamodb", "endpoint", endpoint);
    config.set("dynamodb", "namespace", unique("open"));
    config.set("dynamodb", "create_schema", true);
    exercise(
        &persistence_stores::open(&config).await.unwrap(),
        "dynamodb",
    )
    .await;
}

#[cfg(feature = "cassandra")]
#[tokio::test]
async fn cassandra_opens_from_configuration() {
    let Some(points) = server("PERSISTENCE_CASSANDRA_CONTACT_POINTS") else {
        return;
    };
    let mut config = Config::for_backend("cassandra");
    // The comma-separated string the server script exports, as an environment variable gives it.
    config.set("cassandra", "contact_points", points);
    if let Ok(dc) = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER") {
        config.set("cassandra", "local_datacenter", dc);
    }
    config.set("cassandra", "keyspace", unique("open_"));
    config.set("cassandra", "create_schema", true);
    exercise(
        &persistence_stores::open(&config).await.unwrap(),
        "cassandra",
    )
    .await;
}
