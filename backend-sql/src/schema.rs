//! Tables, keys and the embedded migrations that create them.
//!
//! The SQL lives in the crate's `migrations/<database>/NNNN_*.sql` files, embedded at
//! compile time. `{name}` placeholders in them become quoted names carrying the schema
//! (PostgreSQL) and the table prefix. The stores run the migrations when opened (unless
//! `migrate = false`); to run them by hand, call [`crate::migrate_postgres`] /
//! [`crate::migrate_sqlite`], or feed the text of [`postgres_ddl`] / [`sqlite_ddl`] to
//! `psql` / `sqlite3` (every statement is `IF NOT EXISTS`, so running it twice is harmless).

#[cfg(feature = "postgres")]
use crate::config::PostgresConfig;
#[cfg(feature = "sqlite")]
use crate::config::SqliteConfig;

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
pub const POSTGRES_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "create tables",
    template: include_str!("../migrations/postgres/0001_create_tables.sql"),
}];

/// The SQLite migrations, oldest first.
pub const SQLITE_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "create tables",
    template: include_str!("../migrations/sqlite/0001_create_tables.sql"),
}];

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
    "persistence_migrations",
];
const INDEXES: &[&str] = &[
    "event_journal_ordering_idx",
    "event_tag_event_idx",
    "journal_ids_ordering_idx",
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
            Names::new(None, "").get("event_tag_event_idx"),
            "\"event_tag_event_idx\""
        );
    }
}
