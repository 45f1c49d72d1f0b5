//! Tables, keys and the embedded migrations that create them.
//!
//! The SQL lives in the crate's `migrations/<database>/NNNN_*.sql` files, embedded at
//! compile time. `{name}` placeholders in them become quoted names carrying the schema
//! (PostgreSQL) and the table prefix. The stores run the migrations when opened (unless
//! `create_schema = false`); to run them by hand, call [`crate::create_schema`], or feed
//! the text of [`postgres_ddl`] / [`sqlite_ddl`] to `psql` / `sqlite3` (every statement is
//! `IF NOT EXISTS`, so running it twice is harmless).
//!
//! Also here, for the crate itself: running and recording the migrations, and the layout
//! of the rows (the columns of an event row, how they are bound and read back).

#[cfg(feature = "postgres")]
use crate::config::PostgresConfig;
#[cfg(feature = "sqlite")]
use crate::config::SqliteConfig;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::core::Dialect;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::error::err_in;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use persistence_api::{Result, Timestamp};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use sqlx::AssertSqlSafe;

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Applied in ascending order, each once (recorded in the `persistence_migrations` table).
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// The SQL, with `{name}` placeholders.
    pub template: &'static str,
}

/// The PostgreSQL migrations, oldest first.
pub const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "create tables",
        template: include_str!("../migrations/postgres/0001_create_tables.sql"),
    },
    Migration {
        version: 2,
        description: "projection offsets",
        template: include_str!("../migrations/postgres/0002_projection_offsets.sql"),
    },
    Migration {
        version: 3,
        description: "durable state",
        template: include_str!("../migrations/postgres/0003_durable_state.sql"),
    },
];

/// The SQLite migrations, oldest first.
pub const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "create tables",
        template: include_str!("../migrations/sqlite/0001_create_tables.sql"),
    },
    Migration {
        version: 2,
        description: "projection offsets",
        template: include_str!("../migrations/sqlite/0002_projection_offsets.sql"),
    },
    Migration {
        version: 3,
        description: "durable state",
        template: include_str!("../migrations/sqlite/0003_durable_state.sql"),
    },
];

/// The quoted names of every table, index and sequence, for one schema and prefix.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pairs: Vec<(&'static str, String)>,
}

const OBJECTS: &[&str] = &[
    "event_journal",
    "event_tag",
    "journal_ids",
    "journal_ids_ordering_seq",
    "snapshot",
    "projection_offsets",
    "durable_state",
    "durable_state_ordering_seq",
    "persistence_migrations",
];
const INDEXES: &[&str] = &[
    "event_journal_ordering_idx",
    "event_tag_event_idx",
    "journal_ids_ordering_idx",
    "durable_state_tag_idx",
    "durable_state_ordering_idx",
];

impl Names {
    /// `schema` is `None` for SQLite (one database per file).
    pub(crate) fn new(schema: Option<&str>, prefix: &str) -> Names {
        // Identifiers were checked to be [A-Za-z0-9_], so quoting cannot be escaped.
        let qualify = |name: &str| match schema {
            Some(s) => format!("\"{s}\".\"{prefix}{name}\""),
            None => format!("\"{prefix}{name}\""),
        };
        let mut pairs: Vec<(&'static str, String)> = Vec::new();
        if let Some(s) = schema {
            pairs.push(("schema", format!("\"{s}\"")));
        }
        for name in OBJECTS {
            pairs.push((name, qualify(name)));
        }
        // Index names are never schema-qualified (an index lives in its table's schema).
        for name in INDEXES {
            pairs.push((name, format!("\"{prefix}{name}\"")));
        }
        Names { pairs }
    }

    /// The quoted name of `object` (one of the placeholders).
    pub(crate) fn get(&self, object: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| *k == object)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("unknown schema object {object}"))
    }

    /// Replaces every `{name}` placeholder of `template`.
    pub(crate) fn render(&self, template: &str) -> String {
        let mut out = template.to_string();
        for (k, v) in &self.pairs {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
}

/// The SQL of every PostgreSQL migration for `config`'s schema and prefix, in order: what
/// the stores run when opened, for running by hand (`psql -f`).
#[cfg(feature = "postgres")]
pub fn postgres_ddl(config: &PostgresConfig) -> String {
    let names = Names::new(Some(&config.schema), &config.table_prefix());
    render_all(&names, POSTGRES_MIGRATIONS)
}

/// The SQL of every SQLite migration for `config`'s prefix, in order, for running by hand
/// (`sqlite3 FILE < ddl.sql`).
#[cfg(feature = "sqlite")]
pub fn sqlite_ddl(config: &SqliteConfig) -> String {
    let names = Names::new(None, &config.table_prefix());
    render_all(&names, SQLITE_MIGRATIONS)
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn render_all(names: &Names, migrations: &[Migration]) -> String {
    migrations
        .iter()
        .map(|m| names.render(m.template))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the SQL of migration `m` and records it in the migrations table `table`, on the
/// caller's connection (inside its transaction).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
async fn apply_migration<DB>(
    conn: &mut DB::Connection,
    names: &Names,
    table: &str,
    m: &Migration,
    d: &Dialect,
) -> Result<()>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    sqlx::raw_sql(AssertSqlSafe(names.render(m.template)))
        .execute(&mut *conn)
        .await
        .map_err(err_in("migrate"))?;
    let p = d.param;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (version, description, applied_at) VALUES ({p}1, {p}2, {p}3)"
    )))
    .bind(m.version)
    .bind(m.description)
    .bind(Timestamp::now().as_millis())
    .execute(&mut *conn)
    .await
    .map_err(err_in("migrate"))?;
    Ok(())
}

/// Runs the embedded PostgreSQL migrations that have not run yet in `config`'s schema
/// (creating the schema when missing), on a connection of `pool`. Safe to run from several
/// processes at once: they take turns on an advisory lock of the schema.
#[cfg(feature = "postgres")]
pub(crate) async fn migrate_postgres(pool: &sqlx::PgPool, config: &PostgresConfig) -> Result<()> {
    let names = Names::new(Some(&config.schema), &config.table_prefix());
    let key = crate::postgres::fnv1a(&format!("backend-sql:migrate:{}", config.schema)) as i64;
    let mut conn = pool.acquire().await.map_err(err_in("migrate"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(err_in("migrate"))?;
    let result = apply_postgres_migrations(&mut conn, &names).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        conn.close_on_drop();
    }
    result
}

/// The PostgreSQL migrations not recorded yet, each in its own transaction (the caller
/// holds the migration lock).
#[cfg(feature = "postgres")]
async fn apply_postgres_migrations(conn: &mut sqlx::PgConnection, names: &Names) -> Result<()> {
    let table = names.get("persistence_migrations");
    let schema = names.get("schema");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )))
    .execute(&mut *conn)
    .await
    .map_err(err_in("migrate"))?;
    let applied: Vec<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table}")))
            .fetch_all(&mut *conn)
            .await
            .map_err(err_in("migrate"))?;
    for m in POSTGRES_MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(err_in("migrate"))?;
        apply_migration::<sqlx::Postgres>(&mut tx, names, table, m, &crate::core::POSTGRES).await?;
        tx.commit().await.map_err(err_in("migrate"))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "postgres migration applied"
        );
    }
    Ok(())
}

/// Runs the embedded SQLite migrations that have not run yet on the database of `pool`,
/// all in one `BEGIN IMMEDIATE` transaction (so other processes wait for it).
#[cfg(feature = "sqlite")]
pub(crate) async fn migrate_sqlite(pool: &sqlx::SqlitePool, config: &SqliteConfig) -> Result<()> {
    let names = Names::new(None, &config.table_prefix());
    let table = names.get("persistence_migrations");
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(err_in("migrate"))?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, \
         description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )))
    .execute(&mut *tx)
    .await
    .map_err(err_in("migrate"))?;
    let applied: Vec<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table}")))
            .fetch_all(&mut *tx)
            .await
            .map_err(err_in("migrate"))?;
    for m in SQLITE_MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        apply_migration::<sqlx::Sqlite>(&mut tx, &names, table, m, &crate::core::SQLITE).await?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "sqlite migration applied"
        );
    }
    tx.commit().await.map_err(err_in("migrate"))
}

// ---- Checking an existing schema ----------------------------------------------------------

/// One way a database's schema differs from what [`crate::create_schema`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDifference {
    /// What differs: `table "p_event_journal"`, `column "p_event_journal"."tags"`,
    /// `primary key of "p_snapshot"`, `index "p_event_tag_event_idx"`, `sequence "..."`.
    pub object: String,
    /// What the migrations create.
    pub expected: String,
    /// What the database has; `None` when the object is missing.
    pub found: Option<String>,
}

impl std::fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            None => write!(f, "missing {} (expected {})", self.object, self.expected),
            Some(found) => write!(
                f,
                "different {}: expected {}, found {}",
                self.object, self.expected, found
            ),
        }
    }
}

/// The layout of the tables of one schema and prefix, as the database describes it.
#[derive(Clone, Debug, Default)]
struct Layout {
    tables: std::collections::BTreeMap<String, TableLayout>,
    /// Sequence names (PostgreSQL).
    sequences: std::collections::BTreeSet<String>,
}

#[derive(Clone, Debug, Default)]
struct TableLayout {
    /// Name, type and nullability, in column order.
    columns: Vec<(String, String, bool)>,
    primary_key: Vec<String>,
    /// Index name and its description (unique or not, method, columns).
    indexes: std::collections::BTreeMap<String, String>,
}

/// The differences between `expected` (the migrations run on an empty scratch database)
/// and `found`: missing or different tables, columns (type and nullability), primary keys,
/// indexes and sequences. Objects `found` has beyond those are not differences.
fn compare(expected: &Layout, found: &Layout) -> Vec<SchemaDifference> {
    let mut out = Vec::new();
    let diff = |out: &mut Vec<SchemaDifference>, object: String, e: &str, f: Option<&str>| {
        out.push(SchemaDifference {
            object,
            expected: e.to_string(),
            found: f.map(str::to_string),
        })
    };
    for (name, want) in &expected.tables {
        let Some(have) = found.tables.get(name) else {
            let cols = want
                .columns
                .iter()
                .map(|(c, _, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            diff(
                &mut out,
                format!("table {name:?}"),
                &format!("columns {cols}"),
                None,
            );
            continue;
        };
        for (col, ty, not_null) in &want.columns {
            let describe = |ty: &str, not_null: bool| {
                format!("{ty}{}", if not_null { " NOT NULL" } else { "" })
            };
            let object = format!("column {name:?}.{col:?}");
            match have.columns.iter().find(|(c, _, _)| c == col) {
                None => diff(&mut out, object, &describe(ty, *not_null), None),
                Some((_, t, n)) if !t.eq_ignore_ascii_case(ty) || n != not_null => diff(
                    &mut out,
                    object,
                    &describe(ty, *not_null),
                    Some(&describe(t, *n)),
                ),
                Some(_) => {}
            }
        }
        if want.primary_key != have.primary_key {
            let show = |k: &[String]| {
                if k.is_empty() {
                    "none".to_string()
                } else {
                    format!("({})", k.join(", "))
                }
            };
            diff(
                &mut out,
                format!("primary key of {name:?}"),
                &show(&want.primary_key),
                Some(&show(&have.primary_key)),
            );
        }
        for (index, def) in &want.indexes {
            let object = format!("index {index:?} on {name:?}");
            match have.indexes.get(index) {
                None => diff(&mut out, object, def, None),
                Some(d) if d != def => diff(&mut out, object, def, Some(d)),
                Some(_) => {}
            }
        }
    }
    for seq in &expected.sequences {
        if !found.sequences.contains(seq) {
            diff(&mut out, format!("sequence {seq:?}"), "present", None);
        }
    }
    out
}

/// Compares the PostgreSQL schema of `config` (its schema and table prefix) with what
/// [`crate::create_schema`] makes, through `information_schema` and `pg_indexes`: missing or
/// different tables, columns and their types and nullability, primary keys, indexes and
/// sequences. An empty list means the schema is complete.
///
/// What is expected is not written down twice: the embedded migrations are run into a
/// scratch schema inside a transaction that is rolled back, and the two are described
/// the same way (so the role needs the right to create a schema, not to keep one).
#[cfg(feature = "postgres")]
pub async fn check_postgres(config: &PostgresConfig) -> Result<Vec<SchemaDifference>> {
    let options = crate::postgres::connect_options(config)?;
    let pool = crate::postgres::connect(config, &options).await?;
    let result = check_postgres_on(&pool, config).await;
    pool.close().await;
    result
}

#[cfg(feature = "postgres")]
async fn check_postgres_on(
    pool: &sqlx::PgPool,
    config: &PostgresConfig,
) -> Result<Vec<SchemaDifference>> {
    let prefix = config.table_prefix();
    let mut tx = pool.begin().await.map_err(err_in("check_schema"))?;
    let found = describe_postgres(&mut tx, &config.schema, &prefix).await?;
    let scratch = format!(
        "persistence_check_{}_{}",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    let names = Names::new(Some(&scratch), &prefix);
    for m in POSTGRES_MIGRATIONS {
        sqlx::raw_sql(AssertSqlSafe(names.render(m.template)))
            .execute(&mut *tx)
            .await
            .map_err(err_in("check_schema"))?;
    }
    let expected = describe_postgres(&mut tx, &scratch, &prefix).await;
    tx.rollback().await.map_err(err_in("check_schema"))?;
    Ok(compare(&expected?, &found))
}

/// The tables, sequences and indexes of `schema` whose names start with `prefix`.
#[cfg(feature = "postgres")]
async fn describe_postgres(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    prefix: &str,
) -> Result<Layout> {
    use sqlx::Row;
    let like = format!("{}%", prefix.replace('_', "\\_"));
    let mut layout = Layout::default();
    let columns = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = $1 AND table_name LIKE $2 \
         ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .bind(&like)
    .fetch_all(&mut *conn)
    .await
    .map_err(err_in("check_schema"))?;
    for row in columns {
        let table: String = row.get(0);
        let nullable: String = row.get(3);
        layout.tables.entry(table).or_default().columns.push((
            row.get(1),
            row.get::<String, _>(2).to_uppercase(),
            nullable == "NO",
        ));
    }
    let keys = sqlx::query(
        "SELECT tc.table_name::text, kcu.column_name::text \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu \
           ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema \
          AND tc.table_name = kcu.table_name \
         WHERE tc.table_schema = $1 AND tc.table_name LIKE $2 AND tc.constraint_type = 'PRIMARY KEY' \
         ORDER BY tc.table_name, kcu.ordinal_position",
    )
    .bind(schema)
    .bind(&like)
    .fetch_all(&mut *conn)
    .await
    .map_err(err_in("check_schema"))?;
    for row in keys {
        let table: String = row.get(0);
        if let Some(t) = layout.tables.get_mut(&table) {
            t.primary_key.push(row.get(1));
        }
    }
    let indexes = sqlx::query(
        "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes \
         WHERE schemaname = $1 AND tablename LIKE $2",
    )
    .bind(schema)
    .bind(&like)
    .fetch_all(&mut *conn)
    .await
    .map_err(err_in("check_schema"))?;
    for row in indexes {
        let (table, index, def): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        // `CREATE [UNIQUE] INDEX name ON schema.table USING btree (cols)`: the schema is
        // left out so that the scratch schema's indexes read the same.
        let unique = def.starts_with("CREATE UNIQUE");
        let using = def.find(" USING ").map(|i| &def[i + 7..]).unwrap_or(&def);
        let description = format!("{}{using}", if unique { "unique " } else { "" });
        if let Some(t) = layout.tables.get_mut(&table) {
            t.indexes.insert(index, description);
        }
    }
    let sequences: Vec<String> = sqlx::query_scalar(
        "SELECT sequence_name::text FROM information_schema.sequences \
         WHERE sequence_schema = $1 AND sequence_name LIKE $2",
    )
    .bind(schema)
    .bind(&like)
    .fetch_all(&mut *conn)
    .await
    .map_err(err_in("check_schema"))?;
    layout.sequences = sequences.into_iter().collect();
    // The table the migration runner keeps is not part of the migrations.
    layout
        .tables
        .remove(&format!("{prefix}persistence_migrations"));
    Ok(layout)
}

/// Compares the SQLite schema of `config` (its file and table prefix) with what
/// [`crate::create_schema`] makes, through `pragma table_info` and `pragma index_list`:
/// missing or different tables, columns and their declared types and nullability, primary
/// keys and indexes. An empty list means the schema is complete. A file that does not
/// exist is not created: every table is reported missing.
///
/// What is expected is not written down twice: the embedded migrations are run on an
/// in-memory database and both are described the same way.
#[cfg(feature = "sqlite")]
pub async fn check_sqlite(config: &SqliteConfig) -> Result<Vec<SchemaDifference>> {
    config.validate()?;
    let prefix = config.table_prefix();
    let scratch = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .map_err(err_in("check_schema"))?;
    let names = Names::new(None, &prefix);
    let expected = async {
        sqlx::raw_sql(AssertSqlSafe(render_all(&names, SQLITE_MIGRATIONS)))
            .execute(&scratch)
            .await
            .map_err(err_in("check_schema"))?;
        describe_sqlite(&scratch, &prefix).await
    }
    .await;
    scratch.close().await;
    let expected = expected?;
    let found = if config.path.exists() {
        let pool = crate::sqlite::connect(config).await?;
        let found = describe_sqlite(&pool, &prefix).await;
        pool.close().await;
        found?
    } else {
        Layout::default()
    };
    Ok(compare(&expected, &found))
}

#[cfg(feature = "sqlite")]
async fn describe_sqlite(pool: &sqlx::SqlitePool, prefix: &str) -> Result<Layout> {
    use sqlx::Row;
    let like = format!("{}%", prefix.replace('_', "\\_"));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1 ESCAPE '\\' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .map_err(err_in("check_schema"))?;
    let mut layout = Layout::default();
    for table in tables {
        if table == format!("{prefix}persistence_migrations") {
            continue;
        }
        let mut t = TableLayout::default();
        let mut key: Vec<(i64, String)> = Vec::new();
        let columns = sqlx::query(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .map_err(err_in("check_schema"))?;
        for row in columns {
            let name: String = row.get(0);
            let pk: i64 = row.get(3);
            if pk > 0 {
                key.push((pk, name.clone()));
            }
            let not_null: i64 = row.get(2);
            t.columns
                .push((name, row.get::<String, _>(1).to_uppercase(), not_null != 0));
        }
        key.sort();
        t.primary_key = key.into_iter().map(|(_, c)| c).collect();
        let indexes = sqlx::query("SELECT name, \"unique\" FROM pragma_index_list(?1)")
            .bind(&table)
            .fetch_all(pool)
            .await
            .map_err(err_in("check_schema"))?;
        for row in indexes {
            let (index, unique): (String, i64) = (row.get(0), row.get(1));
            let cols: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(pool)
                    .await
                    .map_err(err_in("check_schema"))?;
            let description = format!(
                "{}({})",
                if unique != 0 { "unique " } else { "" },
                cols.join(", ")
            );
            t.indexes.insert(index, description);
        }
        layout.tables.insert(table, t);
    }
    Ok(layout)
}

// The row layout of the tables, for the crate's reads and writes.
#[cfg(feature = "postgres")]
pub(crate) use rows::encode_tags;
#[cfg(all(feature = "fuzzing", any(feature = "postgres", feature = "sqlite")))]
pub(crate) use rows::read_event;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use rows::{
    bind_event, clamp, decode_event, read_payloads, read_tags, stored_id, unsigned, Columns,
    Record, EVENT_COLUMNS,
};

/// How the rows of the tables are laid out: the values an event row is bound with and read
/// back from, the `BIGINT` conversions, and the checks that name a record whose column
/// does not decode.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod rows {
    use persistence_api::{Bytes, Payload, PersistenceId, PersistentEvent, Timestamp};

    use crate::error::{corrupt, into_sqlx, SqlError};

    /// Sequence numbers and orderings are `BIGINT`: values above `i64::MAX` are clamped
    /// (bounds) or refused (stored values, see [`unsigned`]).
    pub(crate) fn clamp(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    /// A value read back from a `BIGINT` column.
    pub(crate) fn unsigned(v: i64, column: &'static str) -> std::result::Result<u64, SqlError> {
        u64::try_from(v).map_err(|_| corrupt(None, None, column, format!("{v} is negative")))
    }

    /// Tags are stored beside the event as a JSON array (readable in `psql`/`sqlite3`), and
    /// once per tag in the tag table for the queries.
    pub(crate) fn encode_tags(tags: &[String]) -> String {
        if tags.is_empty() {
            return "[]".to_string();
        }
        serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_string())
    }

    /// The columns of a row of either database, read by index: the sqlx bounds in one place.
    pub(crate) trait Columns {
        /// A `BIGINT` column.
        fn int(&self, index: usize) -> std::result::Result<i64, sqlx::Error>;
        /// A text column.
        fn text(&self, index: usize) -> std::result::Result<String, sqlx::Error>;
        /// A nullable text column.
        fn opt_text(&self, index: usize) -> std::result::Result<Option<String>, sqlx::Error>;
        /// A binary column.
        fn bytes(&self, index: usize) -> std::result::Result<Vec<u8>, sqlx::Error>;
        /// A nullable binary column.
        fn opt_bytes(&self, index: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error>;
    }

    impl<R> Columns for R
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        fn int(&self, index: usize) -> std::result::Result<i64, sqlx::Error> {
            self.try_get(index)
        }
        fn text(&self, index: usize) -> std::result::Result<String, sqlx::Error> {
            self.try_get(index)
        }
        fn opt_text(&self, index: usize) -> std::result::Result<Option<String>, sqlx::Error> {
            self.try_get(index)
        }
        fn bytes(&self, index: usize) -> std::result::Result<Vec<u8>, sqlx::Error> {
            self.try_get(index)
        }
        fn opt_bytes(&self, index: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error> {
            self.try_get(index)
        }
    }

    /// A persistence id read back from a table.
    pub(crate) fn stored_id(id: String) -> std::result::Result<PersistenceId, SqlError> {
        PersistenceId::new(id.as_str()).map_err(|e| corrupt(None, None, "persistence_id", e))
    }

    /// The record a row holds, once its persistence id (and sequence number) are read: every
    /// later column that does not decode names it.
    pub(crate) struct Record {
        pub(crate) persistence_id: PersistenceId,
        sequence_nr: Option<u64>,
    }

    impl Record {
        /// Reads the persistence id at `id_index` and the sequence number at `seq_index`.
        pub(crate) fn read(
            row: &impl Columns,
            id_index: usize,
            seq_index: usize,
        ) -> std::result::Result<Record, SqlError> {
            let text = row
                .text(id_index)
                .map_err(|e| corrupt(None, None, "persistence_id", e))?;
            let mut record = Record {
                persistence_id: stored_id(text)?,
                sequence_nr: None,
            };
            let seq = record.int(row, seq_index, "sequence_nr")?;
            record.sequence_nr = Some(record.unsigned(seq, "sequence_nr")?);
            Ok(record)
        }

        pub(crate) fn sequence_nr(&self) -> u64 {
            self.sequence_nr.unwrap_or(0)
        }

        /// `column` of this record does not decode.
        pub(crate) fn corrupt(
            &self,
            column: &'static str,
            detail: impl std::fmt::Display,
        ) -> SqlError {
            corrupt(
                Some(self.persistence_id.as_str()),
                self.sequence_nr,
                column,
                detail,
            )
        }

        pub(crate) fn int(
            &self,
            row: &impl Columns,
            index: usize,
            column: &'static str,
        ) -> std::result::Result<i64, SqlError> {
            row.int(index).map_err(|e| self.corrupt(column, e))
        }

        pub(crate) fn unsigned(
            &self,
            v: i64,
            column: &'static str,
        ) -> std::result::Result<u64, SqlError> {
            u64::try_from(v).map_err(|_| self.corrupt(column, format!("{v} is negative")))
        }

        pub(crate) fn text(
            &self,
            row: &impl Columns,
            index: usize,
            column: &'static str,
        ) -> std::result::Result<String, SqlError> {
            row.text(index).map_err(|e| self.corrupt(column, e))
        }
    }

    /// Binds the twelve values of one event row in the order both databases' insert
    /// statements take them: persistence id, sequence number, writer, timestamp, event
    /// manifest, payload (3), metadata (3), tags.
    pub(crate) fn bind_event<'q, DB>(
        query: sqlx::query::Query<'q, DB, DB::Arguments>,
        id: &str,
        event: &PersistentEvent,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        DB: sqlx::Database,
        for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        for<'a> String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        for<'a> Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        for<'a> Option<&'a [u8]>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    {
        let meta = event.metadata.as_ref();
        query
            .bind(id)
            .bind(clamp(event.sequence_nr))
            .bind(event.writer_id.as_str())
            .bind(event.timestamp.as_millis())
            .bind(event.event_manifest.as_str())
            .bind(event.payload.serializer_id.as_str())
            .bind(event.payload.manifest.as_str())
            .bind(event.payload.bytes.as_ref())
            .bind(meta.map(|m| m.serializer_id.as_str()))
            .bind(meta.map(|m| m.manifest.as_str()))
            .bind(meta.map(|m| m.bytes.as_ref()))
            .bind(encode_tags(&event.tags))
    }

    /// The names of the six columns in which both tables keep a payload and its optional
    /// metadata, in order: the payload's and the metadata's.
    const PAYLOAD_COLUMNS: [&str; 3] = ["ser_id", "ser_manifest", "payload"];
    const META_COLUMNS: [&str; 3] = ["meta_ser_id", "meta_ser_manifest", "meta_payload"];

    /// Reads the payload and the optional metadata of `record` from the six columns starting
    /// at index `first`. The metadata is stored with all
    /// three of its columns or none; some of them without the others is corrupt.
    pub(crate) fn read_payloads(
        row: &impl Columns,
        record: &Record,
        first: usize,
    ) -> std::result::Result<(Payload, Option<Payload>), SqlError> {
        let payload = Payload {
            serializer_id: record.text(row, first, PAYLOAD_COLUMNS[0])?,
            manifest: record.text(row, first + 1, PAYLOAD_COLUMNS[1])?,
            bytes: Bytes::from(
                row.bytes(first + 2)
                    .map_err(|e| record.corrupt(PAYLOAD_COLUMNS[2], e))?,
            ),
        };
        let meta_ser_id = row
            .opt_text(first + 3)
            .map_err(|e| record.corrupt(META_COLUMNS[0], e))?;
        let meta_ser_manifest = row
            .opt_text(first + 4)
            .map_err(|e| record.corrupt(META_COLUMNS[1], e))?;
        let meta_payload = row
            .opt_bytes(first + 5)
            .map_err(|e| record.corrupt(META_COLUMNS[2], e))?;
        let metadata = match (meta_ser_id, meta_ser_manifest, meta_payload) {
            (Some(serializer_id), Some(manifest), Some(bytes)) => Some(Payload {
                serializer_id,
                manifest,
                bytes: Bytes::from(bytes),
            }),
            (None, None, None) => None,
            (id, manifest, bytes) => {
                let missing = [id.is_none(), manifest.is_none(), bytes.is_none()];
                let column = META_COLUMNS
                    .iter()
                    .zip(missing)
                    .find_map(|(c, m)| m.then_some(*c))
                    .unwrap_or(META_COLUMNS[0]);
                return Err(record.corrupt(
                column,
                "is NULL while other metadata columns are set (metadata is stored with all three or none)",
            ));
            }
        };
        Ok((payload, metadata))
    }

    /// The columns of an event row, in order, for `SELECT` lists.
    pub(crate) const EVENT_COLUMNS: &str = "ordering, persistence_id, sequence_nr, writer_id, \
    write_timestamp, event_manifest, ser_id, ser_manifest, payload, meta_ser_id, \
    meta_ser_manifest, meta_payload, tags";

    /// Reads the [`EVENT_COLUMNS`] of a row of either database: the ordering and the event. A
    /// column that does not decode is a corrupt-column error naming the event (its persistence
    /// id and sequence number, read first) and the column.
    pub(crate) fn read_event(
        row: &impl Columns,
    ) -> std::result::Result<(u64, PersistentEvent), SqlError> {
        let record = Record::read(row, 1, 2)?;
        let ordering = record.int(row, 0, "ordering")?;
        let ordering = record.unsigned(ordering, "ordering")?;
        let writer_id = record.text(row, 3, "writer_id")?;
        let write_timestamp = record.int(row, 4, "write_timestamp")?;
        let event_manifest = record.text(row, 5, "event_manifest")?;
        let (payload, metadata) = read_payloads(row, &record, 6)?;
        let tags = read_tags(row, &record, 12)?;
        let event = PersistentEvent {
            sequence_nr: record.sequence_nr(),
            persistence_id: record.persistence_id,
            payload,
            event_manifest,
            writer_id,
            timestamp: Timestamp::from_millis(write_timestamp),
            tags,
            metadata,
        };
        Ok((ordering, event))
    }

    /// Reads the `tags` column (a JSON array of strings) of `record` at `index`; anything
    /// else is a corrupt-column error naming the event. The replay, the tag queries and the
    /// rebuild of the tag table read tags through here.
    pub(crate) fn read_tags(
        row: &impl Columns,
        record: &Record,
        index: usize,
    ) -> std::result::Result<Vec<String>, SqlError> {
        let tags_text = record.text(row, index, "tags")?;
        serde_json::from_str(&tags_text).map_err(|e| {
            record.corrupt(
                "tags",
                format!("{tags_text:?} is not a JSON array of strings: {e}"),
            )
        })
    }

    /// [`read_event`] inside sqlx's row mapping (`try_map`); `to_public` unwraps the error.
    pub(crate) fn decode_event(
        row: &impl Columns,
    ) -> std::result::Result<(u64, PersistentEvent), sqlx::Error> {
        read_event(row).map_err(into_sqlx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_known() {
        let names = Names::new(Some("s"), "p_");
        for m in POSTGRES_MIGRATIONS.iter().chain(SQLITE_MIGRATIONS) {
            let sql = names.render(m.template);
            // No `{word}` placeholder may remain (the SQL itself uses no braces).
            assert!(!sql.contains('{'), "unrendered placeholder in {sql}");
        }
        assert_eq!(names.get("event_journal"), "\"s\".\"p_event_journal\"");
        assert_eq!(
            names.get("projection_offsets"),
            "\"s\".\"p_projection_offsets\""
        );
        assert_eq!(
            Names::new(None, "").get("event_tag_event_idx"),
            "\"event_tag_event_idx\""
        );
    }
}
