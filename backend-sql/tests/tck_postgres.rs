//! The whole conformance kit against PostgreSQL: one schema per case (created by the
//! migrations, dropped afterwards), so runs can share one server.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p backend-sql --test tck_postgres`

use std::process::ExitCode;

use backend_sql::{open_postgres, sqlx, PostgresConfig};
use persistence_api::{Error, ErrorKind, Result, Stores};

struct Factory {
    url: String,
    admin: sqlx::PgPool,
}

#[persistence_api::async_trait]
impl tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        let mut config = PostgresConfig::new(self.url.clone()).with_schema(namespace);
        config.max_connections = 8;
        open_postgres(config).await
    }

    fn page_size(&self) -> Option<usize> {
        Some(PostgresConfig::new(self.url.clone()).page_size)
    }

    async fn cleanup(&self, namespace: &str) -> Result<()> {
        // The namespace is [a-z0-9_] (the kit's promise), so quoting it is enough.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE"
        )))
        .execute(&self.admin)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "drop schema").with_source(e))?;
        Ok(())
    }
}

fn main() -> ExitCode {
    tck::run_main_server("postgres", "PERSISTENCE_POSTGRES_URL", |url| async move {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(|e| Error::new(ErrorKind::Unavailable, "connect").with_source(e))?;
        Ok(Factory { url, admin })
    })
}
