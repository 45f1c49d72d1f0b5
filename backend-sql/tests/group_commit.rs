//! Group commit (see `src/group_commit.rs` and the README, "Group commit"): concurrent
//! single writes share one transaction, and each caller still gets its own result.
//!
//! - writes started together are committed in fewer groups than writes (a capturing
//!   tracing subscriber counts the `sql.group_commit` spans and their `writes`), and with
//!   `group_commit = false` there are none;
//! - two writes of one id in one group are applied in arrival order;
//! - a `Conflict` and a rejection in a group fail those writes alone, nothing of them is
//!   stored, the others are;
//! - every event of a group is in the tag query once, whole;
//! - `group_commit_max_events` bounds a group.
//!
//! SQLite always; PostgreSQL with `PERSISTENCE_POSTGRES_URL` (skipped without it, a
//! failure with `CI=true`).
//!
//! `cargo test -p persistence-sql --all-features --test group_commit`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Payload, PersistenceId, PersistentEvent, ReadJournalExt,
    Stores,
};
use persistence_sql::{PostgresConfig, SqliteConfig};

fn event(id: &PersistenceId, seq: u64, writer: &str) -> PersistentEvent {
    PersistentEvent::new(
        id.clone(),
        seq,
        Payload::raw(format!("{id}#{seq}").into_bytes()),
    )
    .with_tags(["gc"])
    .with_writer_id(writer)
}

fn one(id: &PersistenceId, seq: u64, writer: &str) -> AtomicWrite {
    AtomicWrite::new(vec![event(id, seq, writer)]).unwrap()
}

fn pid(prefix: &str, name: &str) -> PersistenceId {
    PersistenceId::new(format!("{prefix}-{name}")).unwrap()
}

/// The groups committed: the `writes` field of every `sql.group_commit` span.
#[derive(Clone, Default)]
struct Groups(Arc<Mutex<Vec<u64>>>);

struct Writes(Option<u64>);

impl tracing::field::Visit for Writes {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "writes" {
            self.0 = Some(value);
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl tracing::Subscriber for Groups {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if span.metadata().name() == "sql.group_commit" {
            let mut writes = Writes(None);
            span.record(&mut writes);
            self.0.lock().unwrap().push(writes.0.unwrap_or(0));
        }
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// 200 ids write one event each, all started together: every write stored, in fewer
/// groups than writes (when `coalescing`), none of more than `max_events`.
async fn many_in_few_groups(
    stores: &Stores,
    groups: &Groups,
    prefix: &str,
    coalescing: bool,
    max_events: u64,
) {
    groups.0.lock().unwrap().clear();
    let ids: Vec<PersistenceId> = (0..200)
        .map(|i| pid(prefix, &format!("many-{i}")))
        .collect();
    let results = join_all(ids.iter().map(|id| stores.journal.write(one(id, 1, "w")))).await;
    for (id, r) in ids.iter().zip(results) {
        r.unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    for id in &ids {
        assert_eq!(
            stores.journal.highest_sequence_nr(id).await.unwrap(),
            1,
            "{id}"
        );
    }
    // The tag rows of a group: each event once in the tag query, whole, in increasing
    // offsets.
    let tagged: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        stores
            .read_journal
            .current_events_by_tag("gc".into(), persistence_api::Offset::NoOffset),
    )
    .await
    .into_iter()
    .map(|e| e.unwrap())
    .filter(|e| ids.contains(e.persistence_id()))
    .collect();
    assert_eq!(tagged.len(), ids.len(), "every event once in the tag query");
    let mut distinct: Vec<&PersistenceId> = tagged.iter().map(|e| e.persistence_id()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len());
    for e in &tagged {
        let id = e.persistence_id();
        assert_eq!(e.sequence_nr(), 1, "{id}");
        assert_eq!(e.event.writer_id, "w", "{id}");
        assert_eq!(e.event.tags, vec!["gc".to_string()], "{id}");
        assert_eq!(e.event.payload.bytes.as_ref(), format!("{id}#1").as_bytes());
    }
    let seen = groups.0.lock().unwrap().clone();
    if coalescing {
        assert_eq!(
            seen.iter().sum::<u64>(),
            200,
            "every write in one group: {seen:?}"
        );
        assert!(
            seen.len() < 200,
            "writes started together share groups: {seen:?}"
        );
        assert!(
            seen.iter().all(|&n| n <= max_events),
            "no group above {max_events}: {seen:?}"
        );
    } else {
        assert!(seen.is_empty(), "group commit off: no groups, {seen:?}");
    }
}

/// Two writes of one id started together (1 then 2) are applied in that order: 2 first
/// would take 1.
async fn arrival_order_per_id(stores: &Stores, prefix: &str) {
    for round in 0..20 {
        let id = pid(prefix, &format!("order-{round}"));
        let others: Vec<PersistenceId> = (0..10)
            .map(|i| pid(prefix, &format!("order-{round}-{i}")))
            .collect();
        let mut calls = vec![stores.journal.write(one(&id, 1, "w"))];
        calls.push(stores.journal.write(one(&id, 2, "w")));
        calls.extend(others.iter().map(|o| stores.journal.write(one(o, 1, "w"))));
        for r in join_all(calls).await {
            r.unwrap();
        }
        let seqs: Vec<u64> = stores
            .journal
            .replay_all(&id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.sequence_nr)
            .collect();
        assert_eq!(seqs, vec![1, 2], "{id}");
    }
}

/// In one group: a write whose number was just taken (`Conflict`), one whose number does
/// not fit a `BIGINT` (`Rejected`), and writes of other ids; only the refused fail, and
/// nothing of them is stored.
async fn refusals_fail_alone(stores: &Stores, prefix: &str) {
    for round in 0..10 {
        let taken = pid(prefix, &format!("taken-{round}"));
        stores.journal.write(one(&taken, 1, "first")).await.unwrap();
        let huge = pid(prefix, &format!("huge-{round}"));
        let others: Vec<PersistenceId> = (0..20)
            .map(|i| pid(prefix, &format!("fine-{round}-{i}")))
            .collect();
        // Started with a commit in flight, so the rest gather into a group behind it.
        let mut calls =
            vec![stores
                .journal
                .write(one(&pid(prefix, &format!("lead-{round}")), 1, "w"))];
        calls.push(stores.journal.write(one(&taken, 1, "second")));
        calls.push(stores.journal.write(one(&huge, u64::MAX - 1, "w")));
        calls.extend(others.iter().map(|o| stores.journal.write(one(o, 1, "w"))));
        let results = join_all(calls).await;
        assert!(results[0].is_ok(), "{:?}", results[0]);
        let conflict = results[1].as_ref().unwrap_err();
        assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict}");
        let rejected = results[2].as_ref().unwrap_err();
        assert_eq!(rejected.kind(), ErrorKind::Rejected, "{rejected}");
        for r in &results[3..] {
            assert!(r.is_ok(), "{r:?}");
        }
        let events = stores.journal.replay_all(&taken).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].writer_id, "first",
            "the refused write left nothing"
        );
        assert_eq!(stores.journal.highest_sequence_nr(&huge).await.unwrap(), 0);
        for o in &others {
            assert_eq!(
                stores.journal.highest_sequence_nr(o).await.unwrap(),
                1,
                "{o}"
            );
        }
    }
}

async fn all_checks(
    stores: &Stores,
    groups: &Groups,
    prefix: &str,
    coalescing: bool,
    max_events: u64,
) {
    many_in_few_groups(stores, groups, prefix, coalescing, max_events).await;
    // Without group commit two calls started together are two transactions, in no
    // promised order.
    if coalescing {
        arrival_order_per_id(stores, prefix).await;
    }
    refusals_fail_alone(stores, prefix).await;
}

/// A current-thread runtime with `groups` as this thread's subscriber (the committer task
/// runs on this thread too).
fn run_with_groups<F: std::future::Future<Output = ()>>(f: impl FnOnce(Groups) -> F) {
    let groups = Groups::default();
    let _guard = tracing::subscriber::set_default(groups.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f(groups));
}

fn sqlite_config(dir: &tempfile::TempDir, on: bool, max_events: u32) -> SqliteConfig {
    let mut config = SqliteConfig::new(dir.path().join("gc.db"));
    config.group_commit = on;
    config.group_commit_max_events = max_events;
    config
}

#[test]
fn sqlite_group_commit() {
    run_with_groups(|groups| async move {
        let dir = tempfile::tempdir().unwrap();
        let stores = persistence_sql::open(sqlite_config(&dir, true, 1000))
            .await
            .unwrap();
        all_checks(&stores, &groups, "on", true, 1000).await;
    });
}

#[test]
fn sqlite_group_commit_bounded() {
    run_with_groups(|groups| async move {
        let dir = tempfile::tempdir().unwrap();
        let stores = persistence_sql::open(sqlite_config(&dir, true, 16))
            .await
            .unwrap();
        many_in_few_groups(&stores, &groups, "bounded", true, 16).await;
    });
}

#[test]
fn sqlite_group_commit_with_window() {
    run_with_groups(|groups| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = sqlite_config(&dir, true, 1000);
        config.group_commit_window = Duration::from_millis(2);
        let stores = persistence_sql::open(config).await.unwrap();
        all_checks(&stores, &groups, "window", true, 1000).await;
    });
}

#[test]
fn sqlite_group_commit_off() {
    run_with_groups(|groups| async move {
        let dir = tempfile::tempdir().unwrap();
        let stores = persistence_sql::open(sqlite_config(&dir, false, 1000))
            .await
            .unwrap();
        all_checks(&stores, &groups, "off", false, 1000).await;
    });
}

/// A fresh schema on the server of `PERSISTENCE_POSTGRES_URL`.
fn postgres_config(url: &str, schema: &str, on: bool) -> PostgresConfig {
    let mut config = PostgresConfig::new(url).with_schema(schema);
    config.group_commit = on;
    config
}

async fn drop_schema(url: &str, schema: &str) {
    let pool = persistence_sql::sqlx::PgPool::connect(url).await.unwrap();
    persistence_sql::sqlx::query(persistence_sql::sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

fn postgres_case(on: bool) {
    let Some(url) = persistence_tck::server_env("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let schema = format!(
        "gc_{}_{}",
        if on { "on" } else { "off" },
        std::process::id()
    );
    run_with_groups(|groups| async move {
        drop_schema(&url, &schema).await;
        let stores = persistence_sql::open(postgres_config(&url, &schema, on))
            .await
            .unwrap();
        all_checks(&stores, &groups, "pg", on, 1000).await;
        drop(stores);
        drop_schema(&url, &schema).await;
    });
}

#[test]
fn postgres_group_commit() {
    postgres_case(true);
}

#[test]
fn postgres_group_commit_off() {
    postgres_case(false);
}

/// On PostgreSQL several groups commit at once (up to 4 with the default pool of 10): five
/// writes of one id started together (1 to 5, among writes of 30 other ids) on a
/// multi-threaded runtime, so the committers race; a write whose id another group is
/// committing waits for that group, so all five are applied in order, each acknowledged.
#[test]
fn postgres_arrival_order_across_concurrent_groups() {
    let Some(url) = persistence_tck::server_env("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let schema = format!("gc_across_{}", std::process::id());
    // Every thread that may meet the `sql.group_commit` span has a subscriber interested in
    // it: a thread without one would let tracing cache the callsite as uninteresting, and
    // the other tests' captures would then miss their groups.
    let _guard = tracing::subscriber::set_default(Groups::default());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| {
            std::mem::forget(tracing::subscriber::set_default(Groups::default()));
        })
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            drop_schema(&url, &schema).await;
            let stores = persistence_sql::open(postgres_config(&url, &schema, true))
                .await
                .unwrap();
            for round in 0..20 {
                let id = pid("across", &format!("{round}"));
                let others: Vec<PersistenceId> = (0..30)
                    .map(|i| pid("across", &format!("{round}-{i}")))
                    .collect();
                let mut calls = Vec::new();
                for seq in 1..=5 {
                    calls.push(stores.journal.write(one(&id, seq, "w")));
                    for o in &others[(seq as usize - 1) * 6..seq as usize * 6] {
                        calls.push(stores.journal.write(one(o, 1, "w")));
                    }
                }
                for r in join_all(calls).await {
                    r.unwrap();
                }
                let seqs: Vec<u64> = stores
                    .journal
                    .replay_all(&id)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.sequence_nr)
                    .collect();
                assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{id}");
            }
            drop(stores);
            drop_schema(&url, &schema).await;
        });
}
