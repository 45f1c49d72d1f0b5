//! What the binary's test files share: running `persistence`, reading its JSON lines, and
//! writing the configuration files it opens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use persistence_stores::{Config, Stores};
use serde_json::Value;

/// `prefix` and the current time in nanoseconds: a name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos}")
}

/// A fresh directory under the system's temporary directory, named after `prefix`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built binary, without the environment's `PERSISTENCE_*` variables: the
/// configuration comes from the files the tests write (the servers' addresses in the
/// environment would override them).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_persistence"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PERSISTENCE_") {
            c.env_remove(name);
        }
    }
    c
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

/// Runs the binary with `args`, which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every line of `text` as JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Writes `toml` to `<dir>/<name>.toml`; its path.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// The configuration of a SQLite database `<dir>/<name>.db`.
pub fn sqlite_config(dir: &Path, name: &str) -> PathBuf {
    let db = dir.join(format!("{name}.db"));
    write_config(
        dir,
        name,
        &format!(
            "backend = \"sqlite\"\n[sqlite]\npath = {:?}\n",
            db.display().to_string()
        ),
    )
}

/// The stores of the configuration file `path`.
pub async fn open(path: &Path) -> Stores {
    persistence_stores::open(&Config::from_file(path).unwrap())
        .await
        .unwrap()
}
