//! Runs the built `persistence` binary's `schema print|create|check` against SQLite always
//! and PostgreSQL, DynamoDB and Cassandra when their variables are set (with `CI=true` a
//! missing server is a failure): create then check is ok; after dropping a column, an
//! index or a table by hand, check exits 6 naming it; the SQL that `print` gives applies
//! to an empty database and checks ok.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod support;

use support::{unique, write_config};

fn temp_dir() -> PathBuf {
    support::temp_dir("persistence-cli-schema-")
}

fn run(config: &Path, args: &[&str]) -> Output {
    support::bin()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(out.status.success(), "{args:?} failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `schema check` is ok, in text and in JSON.
fn check_ok(config: &Path) {
    let out = ok(config, &["schema", "check"]);
    assert!(out.contains("schema ok"), "{out}");
    let json: Value =
        serde_json::from_str(ok(config, &["schema", "check", "--json"]).trim()).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["differences"].as_array().unwrap().len(), 0);
}

/// `schema check` exits 6 and names every one of `missing` as missing, in text and JSON.
fn check_missing(config: &Path, missing: &[&str]) {
    let out = run(config, &["schema", "check"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for m in missing {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("missing") && l.contains(m)),
            "{m} not named missing in:\n{stdout}"
        );
    }
    let out = run(config, &["schema", "check", "--json"]);
    assert_eq!(out.status.code(), Some(6));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    let differences = json["differences"].as_array().unwrap();
    for m in missing {
        assert!(
            differences
                .iter()
                .any(|d| d["missing"] == true && d["object"].as_str().unwrap().contains(m)),
            "{m} not in {json}"
        );
    }
}

fn sqlite_config(dir: &Path, name: &str, namespace: &str) -> PathBuf {
    let db = dir.join(format!("{name}.db"));
    write_config(
        dir,
        name,
        &format!(
            "backend = \"sqlite\"\n[sqlite]\npath = {:?}\nnamespace = {namespace:?}\n",
            db.display().to_string()
        ),
    )
}

fn server(var: &str) -> Option<String> {
    persistence_tck::server_env(var)
}

#[tokio::test]
async fn sqlite_create_check_damage_and_print() {
    use persistence_stores::sql::sqlx;
    let dir = temp_dir();
    let config = sqlite_config(&dir, "created", "sch");
    // Nothing yet: every table is missing (and no file is created).
    check_missing(&config, &["\"sch_event_journal\"", "\"sch_snapshot\""]);
    assert!(!dir.join("created.db").exists());
    ok(&config, &["schema", "create"]);
    check_ok(&config);
    ok(&config, &["schema", "create"]); // idempotent
    check_ok(&config);

    let url = format!("sqlite:{}", dir.join("created.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DROP INDEX \"sch_event_tag_event_idx\"; \
         ALTER TABLE \"sch_snapshot\" DROP COLUMN meta_payload; \
         DROP TABLE \"sch_projection_offsets\";",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    check_missing(
        &config,
        &[
            "index \"sch_event_tag_event_idx\"",
            "column \"sch_snapshot\".\"meta_payload\"",
            "table \"sch_projection_offsets\"",
        ],
    );

    // What `print` gives, applied by hand to an empty database, checks ok.
    let printed = sqlite_config(&dir, "printed", "sch");
    let ddl = ok(&printed, &["schema", "print"]);
    assert!(
        ddl.contains("CREATE TABLE IF NOT EXISTS \"sch_event_journal\""),
        "{ddl}"
    );
    let url = format!("sqlite:{}?mode=rwc", dir.join("printed.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    check_ok(&printed);
    // Another namespace in the same file has nothing yet.
    let other = write_config(
        &dir,
        "other",
        &format!(
            "backend = \"sqlite\"\n[sqlite]\npath = {:?}\nnamespace = \"other\"\n",
            dir.join("printed.db").display().to_string()
        ),
    );
    check_missing(&other, &["\"other_event_journal\""]);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn postgres_create_check_damage_and_print() {
    use persistence_stores::sql::sqlx;
    let Some(url) = server("PERSISTENCE_POSTGRES_URL") else {
        return;
    };
    let dir = temp_dir();
    let ns = unique("sch");
    let config = write_config(
        &dir,
        "postgres",
        &format!("backend = \"postgres\"\n[postgres]\nurl = {url:?}\nnamespace = {ns:?}\n"),
    );
    ok(&config, &["schema", "create"]);
    check_ok(&config);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX \"{ns}_event_tag_event_idx\"; \
         ALTER TABLE \"{ns}_event_journal\" DROP COLUMN tags; \
         DROP TABLE \"{ns}_durable_state\";"
    )))
    .execute(&pool)
    .await
    .unwrap();
    check_missing(
        &config,
        &[
            &format!("index \"{ns}_event_tag_event_idx\""),
            &format!("column \"{ns}_event_journal\".\"tags\""),
            &format!("table \"{ns}_durable_state\""),
        ],
    );
    // A column of another type is named as different.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{ns}_snapshot\" ALTER COLUMN created TYPE TEXT"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let out = run(&config, &["schema", "check"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        text(&out).contains(&format!(
            "different column \"{ns}_snapshot\".\"created\": expected BIGINT NOT NULL, found TEXT NOT NULL"
        )),
        "{}",
        text(&out)
    );

    // What `print` gives, applied by hand to an empty namespace, checks ok.
    let printed_ns = unique("prn");
    let printed = write_config(
        &dir,
        "printed",
        &format!("backend = \"postgres\"\n[postgres]\nurl = {url:?}\nnamespace = {printed_ns:?}\n"),
    );
    check_missing(
        &printed,
        &[&format!("table \"{printed_ns}_event_journal\"")],
    );
    let ddl = ok(&printed, &["schema", "print"]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .unwrap();
    check_ok(&printed);
    // The check's scratch schema is rolled back.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'persistence\\_check\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    for n in [&ns, &printed_ns] {
        for t in [
            "event_journal",
            "event_tag",
            "journal_ids",
            "snapshot",
            "projection_offsets",
            "durable_state",
            "persistence_migrations",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS \"{n}_{t}\""
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    pool.close().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn dynamodb_create_check_and_damage() {
    use persistence_stores::dynamodb::{self, aws_sdk_dynamodb, DynamoDbConfig};
    let Some(endpoint) = server("PERSISTENCE_DYNAMODB_ENDPOINT") else {
        return;
    };
    let dir = temp_dir();
    let prefix = unique("sch");
    let (journal, snapshot) = (format!("{prefix}_journal"), format!("{prefix}_snapshot"));
    let config = write_config(
        &dir,
        "dynamodb",
        &format!(
            "backend = \"dynamodb\"\n[dynamodb]\nendpoint = {endpoint:?}\njournal_table = {journal:?}\nsnapshot_table = {snapshot:?}\n"
        ),
    );
    check_missing(&config, &[&format!("table {journal:?}")]);
    let printed = ok(&config, &["schema", "print"]);
    assert!(
        printed.contains(&format!("aws dynamodb create-table --table-name {journal}")),
        "{printed}"
    );
    assert!(
        printed.contains("AttributeName=sk,AttributeType=N"),
        "{printed}"
    );
    ok(&config, &["schema", "create"]);
    check_ok(&config);

    let section = DynamoDbConfig {
        endpoint: Some(endpoint.clone()),
        journal_table: journal.clone(),
        snapshot_table: snapshot.clone(),
        ..Default::default()
    };
    let client =
        aws_sdk_dynamodb::Client::from_conf(dynamodb::sdk_config(&section).await.unwrap().build());
    client
        .delete_table()
        .table_name(&snapshot)
        .send()
        .await
        .unwrap();
    check_missing(&config, &[&format!("table {snapshot:?}")]);
    dynamodb::delete_tables(&client, &section).await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn cassandra_create_check_and_damage() {
    use persistence_stores::cassandra::scylla::client::session_builder::SessionBuilder;
    let Some(points) = server("PERSISTENCE_CASSANDRA_CONTACT_POINTS") else {
        return;
    };
    let points: Vec<String> = points.split(',').map(|p| p.trim().to_string()).collect();
    let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER")
        .map(|dc| format!("local_datacenter = {dc:?}\n"))
        .unwrap_or_default();
    let dir = temp_dir();
    let keyspace = unique("sch");
    let config = write_config(
        &dir,
        "cassandra",
        &format!(
            "backend = \"cassandra\"\n[cassandra]\ncontact_points = {points:?}\n{dc}keyspace = {keyspace:?}\n"
        ),
    );
    check_missing(&config, &[&format!("keyspace {keyspace:?}")]);
    let printed = ok(&config, &["schema", "print"]);
    assert!(
        printed.contains(&format!("CREATE TABLE IF NOT EXISTS {keyspace}.messages")),
        "{printed}"
    );
    ok(&config, &["schema", "create"]);
    check_ok(&config);

    let session = SessionBuilder::new()
        .known_nodes(&points)
        .build()
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("ALTER TABLE {keyspace}.messages DROP event_time"),
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(format!("DROP TABLE {keyspace}.tag_scanning"), ())
        .await
        .unwrap();
    check_missing(
        &config,
        &[
            &format!("column {keyspace:?}.\"messages\".\"event_time\""),
            &format!("table {keyspace:?}.\"tag_scanning\""),
        ],
    );
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
