//! What the offset conformance suite cannot see of this backend: an exactly-once
//! handler's own statements on `SqliteTransaction` / `PostgresTransaction` commit with the
//! offset or not at all, two connections committing the same version race to exactly one
//! winner, an offset text damaged by hand is `Corrupt` naming the projection, and the
//! offsets table comes with the schema (idempotently, named by the namespace).
//!
//! PostgreSQL cases need `PERSISTENCE_POSTGRES_URL` (skipped loudly without it, a failure
//! with `CI=true`); each works in its own schema, dropped afterwards.

use std::path::Path;

use persistence_api::{ErrorKind, Offset, ProjectionId, Stores};
use persistence_sql::{
    schema, sqlx, Postgres, PostgresConfig, PostgresTransaction, Sqlite, SqliteConfig,
    SqliteTransaction,
};

fn postgres_url() -> Option<String> {
    persistence_tck::server_env("PERSISTENCE_POSTGRES_URL")
}

/// A schema name no other test (or run) uses.
fn pg_schema(case: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("offsets_{case}_{}_{nanos}", std::process::id())
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

fn sqlite_config(dir: &Path) -> SqliteConfig {
    let mut config = SqliteConfig::new(dir.join("offsets.db"));
    config.namespace = "proj".into();
    config
}

fn pg_config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url).with_schema(schema);
    config.namespace = "proj".into();
    config
}

fn id(key: &str) -> ProjectionId {
    ProjectionId::new("balances", key).unwrap()
}

// ---------------------------------------------------------------------------------------
// Exactly-once: the handler's rows and the offset, together or not at all.

/// What both databases show: effects written through the transaction's connection are
/// stored with their offset; over a moved-on version neither is. `effect` inserts one row
/// of `amount` into the user table in the transaction; `effects` reads the table's rows.
async fn exactly_once<Effect, Effects>(
    stores: &Stores,
    backend: &str,
    effect: Effect,
    effects: Effects,
) where
    Effect: AsyncFn(&mut persistence_api::StoreTransaction, i64),
    Effects: AsyncFn() -> Vec<i64>,
{
    let id = id("exactly-once");
    assert!(stores.offsets.supports_transactions());

    let mut tx = stores.offsets.begin_transaction().await.unwrap();
    assert_eq!(tx.backend(), backend);
    effect(&mut tx, 5).await;
    effect(&mut tx, 6).await;
    let version = stores
        .offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(2))
        .await
        .unwrap();
    assert_eq!(version, 1);
    assert_eq!(effects().await, vec![5, 6]);

    // Another instance's transaction over the same (now stale) version: its effect and
    // its offset are both refused.
    let mut stale = stores.offsets.begin_transaction().await.unwrap();
    effect(&mut stale, 100).await;
    let conflict = stores
        .offsets
        .commit_transaction(stale, &id, 0, Offset::Sequence(9))
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict}");
    assert!(
        conflict.to_string().contains("balances/exactly-once"),
        "{conflict}"
    );
    assert!(
        conflict.to_string().contains("stored version 1"),
        "{conflict}"
    );
    assert_eq!(effects().await, vec![5, 6]);

    // Over a version an operator moved on (the update path, not the insert path).
    assert_eq!(
        stores
            .offsets
            .set_offset(&id, Offset::Sequence(1))
            .await
            .unwrap(),
        2
    );
    let mut stale = stores.offsets.begin_transaction().await.unwrap();
    effect(&mut stale, 200).await;
    let conflict = stores
        .offsets
        .commit_transaction(stale, &id, 1, Offset::Sequence(3))
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict}");
    assert!(
        conflict
            .to_string()
            .contains("expected version 1, stored version 2"),
        "{conflict}"
    );
    assert_eq!(effects().await, vec![5, 6]);
    let stored = stores.offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!((stored.offset, stored.version), (Offset::Sequence(1), 2));

    // And on the current version, through the update path.
    let mut tx = stores.offsets.begin_transaction().await.unwrap();
    effect(&mut tx, 7).await;
    let version = stores
        .offsets
        .commit_transaction(tx, &id, 2, Offset::Sequence(3))
        .await
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(effects().await, vec![5, 6, 7]);

    // Dropped without committing: rolled back, the offset untouched.
    let mut dropped = stores.offsets.begin_transaction().await.unwrap();
    effect(&mut dropped, 300).await;
    drop(dropped);
    assert_eq!(effects().await, vec![5, 6, 7]);
    let stored = stores.offsets.read_offset(&id).await.unwrap().unwrap();
    assert_eq!((stored.offset, stored.version), (Offset::Sequence(3), 3));
}

#[tokio::test]
async fn sqlite_exactly_once_effects_commit_with_the_offset_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Sqlite::open(sqlite_config(dir.path())).await.unwrap();
    sqlx::query("CREATE TABLE effects (amount INTEGER NOT NULL)")
        .execute(opened.pool())
        .await
        .unwrap();
    let pool = opened.pool().clone();
    exactly_once(
        &opened.stores(),
        Sqlite::NAME,
        async |tx, amount| {
            let conn = SqliteTransaction::of(tx).unwrap().connection();
            sqlx::query("INSERT INTO effects (amount) VALUES (?1)")
                .bind(amount)
                .execute(conn)
                .await
                .unwrap();
        },
        async || {
            sqlx::query_scalar("SELECT amount FROM effects ORDER BY rowid")
                .fetch_all(&pool)
                .await
                .unwrap()
        },
    )
    .await;
}

#[tokio::test]
async fn postgres_exactly_once_effects_commit_with_the_offset_or_not_at_all() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("exactly_once");
    let opened = Postgres::open(pg_config(&url, &schema)).await.unwrap();
    let table = format!("\"{schema}\".effects");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (n BIGSERIAL, amount BIGINT NOT NULL)"
    )))
    .execute(opened.pool())
    .await
    .unwrap();
    let pool = opened.pool().clone();
    let insert = format!("INSERT INTO {table} (amount) VALUES ($1)");
    let select = format!("SELECT amount FROM {table} ORDER BY n");
    exactly_once(
        &opened.stores(),
        Postgres::NAME,
        async |tx, amount| {
            let conn = PostgresTransaction::of(tx).unwrap().connection();
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(amount)
                .execute(conn)
                .await
                .unwrap();
        },
        async || {
            sqlx::query_scalar(sqlx::AssertSqlSafe(select.clone()))
                .fetch_all(&pool)
                .await
                .unwrap()
        },
    )
    .await;

    // A transaction of another backend is refused by the checking layer, before a request.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = persistence_sql::open(sqlite_config(dir.path()))
        .await
        .unwrap();
    let mut foreign = sqlite.offsets.begin_transaction().await.unwrap();
    let err = PostgresTransaction::of(&mut foreign).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = opened
        .stores()
        .offsets
        .commit_transaction(foreign, &id("foreign"), 0, Offset::Sequence(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("sqlite"), "{err}");
    drop_schema(opened.pool(), &schema).await;
}

// ---------------------------------------------------------------------------------------
// Two connections, one expected version: exactly one commit wins.

/// `a` and `b` are stores of one database opened twice (two pools). For several rounds,
/// both commit the same expected version at once, plainly and in transactions with an
/// effect each; exactly one wins every round, and only the winner's effect is stored.
async fn concurrent_commits<Effect, Effects>(
    a: &Stores,
    b: &Stores,
    effect: Effect,
    effects: Effects,
) where
    Effect: AsyncFn(&mut persistence_api::StoreTransaction, i64),
    Effects: AsyncFn() -> Vec<i64>,
{
    // Plain commits: the insert path (round 0), then the update path.
    let plain = id("plain");
    let mut expected = 0;
    for round in 0..10u64 {
        let (ra, rb) = tokio::join!(
            a.offsets
                .commit_offset(&plain, expected, Offset::Sequence(round * 2)),
            b.offsets
                .commit_offset(&plain, expected, Offset::Sequence(round * 2 + 1)),
        );
        let winner = match (&ra, &rb) {
            (Ok(v), Err(e)) | (Err(e), Ok(v)) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "round {round}: {e}");
                *v
            }
            _ => panic!("round {round}: exactly one must win: {ra:?} {rb:?}"),
        };
        assert_eq!(winner, expected + 1);
        let stored = a.offsets.read_offset(&plain).await.unwrap().unwrap();
        let won = if ra.is_ok() { round * 2 } else { round * 2 + 1 };
        assert_eq!(
            (stored.offset, stored.version),
            (Offset::Sequence(won), winner)
        );
        expected = winner;
    }

    // Transactions: both hold a transaction with an effect; one commits.
    let tx_id = id("transactional");
    let mut expected = 0;
    let mut won_effects = Vec::new();
    for round in 0..6i64 {
        let (ea, eb) = (round * 10, round * 10 + 1);
        let commit = async |stores: &Stores, amount: i64| {
            let mut tx = stores.offsets.begin_transaction().await?;
            effect(&mut tx, amount).await;
            stores
                .offsets
                .commit_transaction(tx, &tx_id, expected, Offset::Sequence(amount as u64))
                .await
        };
        let (ra, rb) = tokio::join!(commit(a, ea), commit(b, eb));
        let (winner, amount) = match (&ra, &rb) {
            (Ok(v), Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "round {round}: {e}");
                (*v, ea)
            }
            (Err(e), Ok(v)) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "round {round}: {e}");
                (*v, eb)
            }
            _ => panic!("round {round}: exactly one must win: {ra:?} {rb:?}"),
        };
        assert_eq!(winner, expected + 1);
        won_effects.push(amount);
        expected = winner;
        let mut stored = effects().await;
        stored.sort_unstable();
        assert_eq!(stored, won_effects, "round {round}");
        let offset = b.offsets.read_offset(&tx_id).await.unwrap().unwrap();
        assert_eq!(offset.offset, Offset::Sequence(amount as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_connections_committing_one_version_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sqlite::open(sqlite_config(dir.path())).await.unwrap();
    let b = Sqlite::open(sqlite_config(dir.path())).await.unwrap();
    sqlx::query("CREATE TABLE effects (amount INTEGER NOT NULL)")
        .execute(a.pool())
        .await
        .unwrap();
    let pool = a.pool().clone();
    concurrent_commits(
        &a.stores(),
        &b.stores(),
        async |tx, amount| {
            sqlx::query("INSERT INTO effects (amount) VALUES (?1)")
                .bind(amount)
                .execute(SqliteTransaction::of(tx).unwrap().connection())
                .await
                .unwrap();
        },
        async || {
            sqlx::query_scalar("SELECT amount FROM effects")
                .fetch_all(&pool)
                .await
                .unwrap()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_connections_committing_one_version_one_wins() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("race");
    let a = Postgres::open(pg_config(&url, &schema)).await.unwrap();
    let b = Postgres::open(pg_config(&url, &schema)).await.unwrap();
    let table = format!("\"{schema}\".effects");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (amount BIGINT NOT NULL)"
    )))
    .execute(a.pool())
    .await
    .unwrap();
    let pool = a.pool().clone();
    let insert = format!("INSERT INTO {table} (amount) VALUES ($1)");
    let select = format!("SELECT amount FROM {table}");
    concurrent_commits(
        &a.stores(),
        &b.stores(),
        async |tx, amount| {
            // Hold the transaction a moment, so both are open when either commits.
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(amount)
                .execute(PostgresTransaction::of(tx).unwrap().connection())
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        },
        async || {
            sqlx::query_scalar(sqlx::AssertSqlSafe(select.clone()))
                .fetch_all(&pool)
                .await
                .unwrap()
        },
    )
    .await;
    drop_schema(a.pool(), &schema).await;
}

// ---------------------------------------------------------------------------------------
// A damaged offset text is Corrupt, naming the projection and the column.

fn assert_corrupt(err: &persistence_api::Error, key: &str) {
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("balances/{key}")), "{text}");
    assert!(text.contains("current_offset"), "{text}");
    assert!(text.contains("sequence:x"), "{text}");
    assert_eq!(err.operation(), Some("read_offset"), "{err}");
}

#[tokio::test]
async fn sqlite_a_damaged_offset_text_is_corrupt_naming_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Sqlite::open(sqlite_config(dir.path())).await.unwrap();
    let stores = opened.stores();
    let damaged = id("damaged");
    stores
        .offsets
        .commit_offset(&damaged, 0, Offset::Sequence(4))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE proj_projection_offsets SET current_offset = 'sequence:x' \
         WHERE projection_name = ?1 AND projection_key = ?2",
    )
    .bind(damaged.name())
    .bind(damaged.key())
    .execute(opened.pool())
    .await
    .unwrap();
    let err = stores.offsets.read_offset(&damaged).await.unwrap_err();
    assert_corrupt(&err, "damaged");
    // The stored version still guards commits; an operator's set repairs the row.
    let conflict = stores
        .offsets
        .commit_offset(&damaged, 0, Offset::Sequence(5))
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict}");
    assert_eq!(
        stores
            .offsets
            .set_offset(&damaged, Offset::Sequence(5))
            .await
            .unwrap(),
        2
    );
    let stored = stores.offsets.read_offset(&damaged).await.unwrap().unwrap();
    assert_eq!(stored.offset, Offset::Sequence(5));
}

#[tokio::test]
async fn postgres_a_damaged_offset_text_is_corrupt_naming_the_projection() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("corrupt");
    let opened = Postgres::open(pg_config(&url, &schema)).await.unwrap();
    let stores = opened.stores();
    let damaged = id("damaged");
    stores
        .offsets
        .commit_offset(&damaged, 0, Offset::Sequence(4))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".proj_projection_offsets SET current_offset = 'sequence:x' \
         WHERE projection_name = $1 AND projection_key = $2"
    )))
    .bind(damaged.name())
    .bind(damaged.key())
    .execute(opened.pool())
    .await
    .unwrap();
    let err = stores.offsets.read_offset(&damaged).await.unwrap_err();
    assert_corrupt(&err, "damaged");
    drop_schema(opened.pool(), &schema).await;
}

// ---------------------------------------------------------------------------------------
// The table comes with the schema: created twice without harm, named by the namespace,
// the offset readable as text.

#[tokio::test]
async fn sqlite_schema_twice_and_the_row_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    persistence_sql::create_schema(&config).await.unwrap();
    persistence_sql::create_schema(&config).await.unwrap();
    assert!(schema::sqlite_ddl(&config).contains("\"proj_projection_offsets\""));
    config.create_schema = false;
    let opened = Sqlite::open(config.clone()).await.unwrap();
    let stores = opened.stores();
    let row = id("row");
    assert_eq!(
        stores
            .offsets
            .set_offset(&row, Offset::Sequence(7))
            .await
            .unwrap(),
        1
    );
    assert_eq!(stores.offsets.clear_offset(&row).await.unwrap(), 2);
    assert_eq!(
        stores
            .offsets
            .commit_offset(&row, 2, Offset::Sequence(8))
            .await
            .unwrap(),
        3
    );
    let (text, version, updated_at): (String, i64, i64) = sqlx::query_as(
        "SELECT current_offset, version, updated_at FROM proj_projection_offsets \
         WHERE projection_name = 'balances' AND projection_key = 'row'",
    )
    .fetch_one(opened.pool())
    .await
    .unwrap();
    assert_eq!((text.as_str(), version), ("sequence:8", 3));
    assert!(
        updated_at > 1_600_000_000_000,
        "{updated_at} is ms since the epoch"
    );
    opened.close().await;
    // Opening again with create_schema = true (the default) migrates nothing new.
    config.create_schema = true;
    let again = persistence_sql::open(config).await.unwrap();
    let stored = again.offsets.read_offset(&row).await.unwrap().unwrap();
    assert_eq!((stored.offset, stored.version), (Offset::Sequence(8), 3));
}

#[tokio::test]
async fn postgres_schema_twice_and_the_row_as_stored() {
    let Some(url) = postgres_url() else { return };
    let schema = pg_schema("twice");
    let config = pg_config(&url, &schema);
    persistence_sql::create_schema(&config).await.unwrap();
    persistence_sql::create_schema(&config).await.unwrap();
    assert!(schema::postgres_ddl(&config)
        .contains(&format!("\"{schema}\".\"proj_projection_offsets\"")));
    let opened = Postgres::open(config).await.unwrap();
    let stores = opened.stores();
    let row = id("row");
    assert_eq!(
        stores
            .offsets
            .set_offset(&row, Offset::Token("b17|x".into()))
            .await
            .unwrap(),
        1
    );
    let (text, version, updated_at): (String, i64, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT current_offset, version, updated_at FROM \"{schema}\".proj_projection_offsets \
             WHERE projection_name = 'balances' AND projection_key = 'row'"
        )))
        .fetch_one(opened.pool())
        .await
        .unwrap();
    assert_eq!((text.as_str(), version), ("token:b17|x", 1));
    assert!(
        updated_at > 1_600_000_000_000,
        "{updated_at} is ms since the epoch"
    );
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".proj_persistence_migrations"
    )))
    .fetch_one(opened.pool())
    .await
    .unwrap();
    assert_eq!(applied, schema::POSTGRES_MIGRATIONS.len() as i64);
    drop_schema(opened.pool(), &schema).await;
}
