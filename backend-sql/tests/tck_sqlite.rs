//! The whole conformance kit against SQLite: one database file per case in a temporary
//! directory (no server, nothing to install). Run: `cargo test -p backend-sql --test tck_sqlite`.

use std::path::PathBuf;
use std::process::ExitCode;

use backend_sql::{open_sqlite, SqliteConfig};
use persistence_api::{Result, Stores};

struct Factory {
    dir: tempfile::TempDir,
}

impl Factory {
    fn path(&self, namespace: &str) -> PathBuf {
        self.dir.path().join(format!("{namespace}.db"))
    }
}

#[persistence_api::async_trait]
impl tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        open_sqlite(SqliteConfig::new(self.path(namespace))).await
    }

    fn page_size(&self) -> Option<usize> {
        Some(SqliteConfig::new(self.path("any")).page_size)
    }

    async fn cleanup(&self, namespace: &str) -> Result<()> {
        let db = self.path(namespace);
        for suffix in ["", "-wal", "-shm"] {
            let mut file = db.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    tck::run_main("sqlite", || async {
        let dir = tempfile::Builder::new()
            .prefix("backend-sql-tck-")
            .tempdir()
            .map_err(|e| {
                persistence_api::Error::config("cannot create a temporary directory").with_source(e)
            })?;
        Ok(Factory { dir })
    })
}
