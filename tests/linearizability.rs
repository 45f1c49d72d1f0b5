//! Histories checked for linearizability by Porcupine: concurrent clients run random
//! operations on a few persistence ids, with the connections to the server cut at random
//! moments, every operation's invocation, completion and result is recorded, and the
//! history is checked against a sequential model of the journal by
//! [Porcupine](https://github.com/anishathalye/porcupine) (v1.3.1), an established
//! linearizability checker, run as the small Go program in `scripts/linearizability/`
//! (its `main.go` describes the model and the history's JSON).
//!
//! For each backend compiled in and chosen by `PERSISTENCE_CRASH_BACKENDS` (comma-separated
//! names, default all; the crash tests' variable), in a fresh store (memory; SQLite: a file
//! in a temporary directory; PostgreSQL: a fresh schema; DynamoDB and Cassandra: a fresh
//! namespace):
//!
//! 1. [`CLIENTS`] clients run random operations: [`OWN_STORES`] of them each with its own
//!    stores opened from configuration (its own connection pool or session: clients as
//!    separate processes would be), the other 3 sharing one (tasks of one process: the
//!    SQL backends' group commit gathers their concurrent writes into one transaction);
//!    the memory backend has one store, shared by all. They run random operations on [`IDS`] ids until [`ops`] operations are done
//!    (or [`RUN_CAP`] has passed): `write` (40 %) of 1-3 tagged events at the number the
//!    client believes is next (one past the highest it last saw on that id, so writes
//!    conflict), `highest_sequence_nr` (15 %), `replay` (15 %: its events and the highest
//!    it reports), `save_snapshot` (15 %, at the highest the client last saw) and
//!    `load_snapshot` of the latest (15 %). Each is recorded with its invocation and
//!    completion time (nanoseconds of one monotonic clock) and its result: a write is
//!    `ok`, `conflict` (an error of kind `Conflict`) or `unknown` (any other error, or no
//!    answer within [`OP_TIMEOUT`]: it may or may not have been stored), a snapshot save
//!    `ok` or `unknown`; a read that fails is recorded as failed and left out by the
//!    checker.
//! 2. Faults, for the server backends: every client talks to the server through one
//!    [`FaultProxy`] of the tck, and a fault task cuts after every 15-50 operations (a
//!    random count: [`OPS_BETWEEN_FAULTS`]): either every open connection at once
//!    (refusing new ones for 20-100 ms), or the connection that carries the next 1-3000
//!    client-to-server bytes (in the middle of a request). A client whose operation
//!    failed backs off 100-300 ms; between operations it pauses 5-25 ms. The memory and
//!    SQLite backends run without faults (no network).
//! 3. After the run the proxy is restored and one client reads each id once more
//!    (highest and replay), so the fate of the unknown writes shows in the history.
//! 4. The history (JSON, in a temporary directory) goes to the checker (built once with
//!    `go build` into cargo's `CARGO_TARGET_TMPDIR`), which must say linearizable (exit 0).
//!    First Porcupine's standard check: every unknown write pending to the end of the
//!    history, either outcome allowed (`-no-prune`, [`STANDARD_TIMEOUT`]). Only if that is
//!    undecided, the check again without the unknown writes the final replay shows never
//!    took effect (sound for a journal without deletes, see `pruneUnseen` in `main.go`;
//!    each pending unknown write can double Porcupine's search), which must decide.
//!    On a violation the test fails with the checker's report: the failing id's
//!    operations, Porcupine's longest linearizable prefix, and a minimal failing history
//!    (reads and conflicting writes dropped while it still fails); Porcupine's HTML
//!    visualization of the whole history is written beside the history, and both paths are
//!    printed (the directory stays).
//!
//! Two more tests show the check can fail: hand-made histories (a replay missing an
//! acknowledged write, a stale snapshot load) give exit 1, and the memory backend behind
//! a journal that acknowledges every fifth write without storing it ([`Lossy`]) gives a
//! history the checker rejects.
//!
//! A line per backend is printed (operations, writes ok/conflict/unknown, snapshot saves,
//! reads failed, cuts injected, run and check time, verdict), then a table.
//!
//! Bounded for CI: [`DEFAULT_OPS`] operations per backend; a longer run:
//! `PERSISTENCE_LINEARIZABILITY_OPS=2000 cargo test -p persistence-stores --all-features --test linearizability -- --nocapture`.
//! `PERSISTENCE_LINEARIZABILITY_KEEP=1` keeps the histories and visualizations of a passing
//! run (a failing run always keeps them). A server backend whose variable is unset is
//! skipped with a message (`persistence_tck::server_env`); without Go (or without the
//! checker's source, in a packaged crate) the tests are skipped with a message. With
//! `CI=true` either is a failure.

mod crash_common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crash_common::{chosen, ci, Rng};
use persistence_stores::{
    AtomicWrite, Config, ErrorKind, Journal, JournalExt, Payload, PersistenceId, PersistentEvent,
    Replay, SequenceNr, SnapshotMetadata, SnapshotSelectionCriteria, Stores,
};
use persistence_tck::fault::{split_postgres_url, FaultProxy};

/// Concurrent clients per backend.
const CLIENTS: usize = 8;
/// Clients with stores of their own; the other `CLIENTS - OWN_STORES` share one.
const OWN_STORES: usize = 5;
/// Persistence ids the clients share.
const IDS: usize = 4;
/// Operations per backend unless `PERSISTENCE_LINEARIZABILITY_OPS` says otherwise.
const DEFAULT_OPS: usize = 400;
/// No operation is started after this long (per backend), whatever the count.
const RUN_CAP: Duration = Duration::from_secs(20);
/// A longer run (`PERSISTENCE_LINEARIZABILITY_OPS` above the default) gets this long.
const LONG_RUN_CAP: Duration = Duration::from_secs(600);
/// An operation without an answer after this long is abandoned (a write becomes unknown).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The checker gives up (verdict unknown) after this long: the standard check of every
/// unknown write gets [`STANDARD_TIMEOUT`], then the check without the unknown writes a
/// final replay shows never took effect gets this (an unknown verdict there fails).
const CHECK_TIMEOUT: &str = "60s";
/// How long the standard check (`-no-prune`) may take before the pruned one decides.
const STANDARD_TIMEOUT: &str = "20s";
/// A client pauses this long (ms, inclusive range) between two operations,
const THINK_MS: (u64, u64) = (5, 25);
/// and this long after an operation that failed (a client backing off).
const BACKOFF_MS: (u64, u64) = (100, 300);
/// The tag of every event written.
const TAG: &str = "lin";

/// A backend of this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Sqlite,
    Postgres,
    DynamoDb,
    Cassandra,
}

const ALL: [Backend; 5] = [
    Backend::Memory,
    Backend::Sqlite,
    Backend::Postgres,
    Backend::DynamoDb,
    Backend::Cassandra,
];

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::DynamoDb => "dynamodb",
            Backend::Cassandra => "cassandra",
        }
    }

    fn compiled(self) -> bool {
        persistence_stores::compiled_backends().contains(&self.name())
    }

    /// The variable that names the server, for the server backends.
    fn server_var(self) -> Option<&'static str> {
        match self {
            Backend::Memory | Backend::Sqlite => None,
            Backend::Postgres => Some("PERSISTENCE_POSTGRES_URL"),
            Backend::DynamoDb => Some("PERSISTENCE_DYNAMODB_ENDPOINT"),
            Backend::Cassandra => Some("PERSISTENCE_CASSANDRA_CONTACT_POINTS"),
        }
    }
}

/// Writes a line to the real stderr (libtest captures `eprintln!` of a passing test).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{:x}", nanos % (1 << 48), std::process::id())
}

fn ops() -> usize {
    match std::env::var("PERSISTENCE_LINEARIZABILITY_OPS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PERSISTENCE_LINEARIZABILITY_OPS={v:?} is not a number")),
        Err(_) => DEFAULT_OPS,
    }
}

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

/// The checker's source folder.
fn checker_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/linearizability")
}

/// Builds the checker once per test process (`go build`, which caches); `None` (after a
/// message) when Go is not installed or the checker's source is not there (a packaged
/// crate). With `CI=true` either is a failure; a failed build always is.
fn checker() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                assert!(
                    !ci(),
                    "Go is not installed, so the linearizability checker (scripts/linearizability, Porcupine) cannot be built; with CI=true that is a failure"
                );
                note(
                    "\n*** SKIPPED: Go is not installed, so the histories were not checked for linearizability (scripts/linearizability needs Go). ***\n",
                );
                return None;
            }
            if !checker_source().join("main.go").exists() {
                // A packaged crate has `tests/` but not the repository's `scripts/`.
                assert!(
                    !ci(),
                    "the linearizability checker's source is not in {}; with CI=true that is a failure",
                    checker_source().display()
                );
                note(&format!(
                    "\n*** SKIPPED: the linearizability checker's source is not in {} (a packaged crate?), so the histories were not checked. ***\n",
                    checker_source().display()
                ));
                return None;
            }
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-checker");
            let t = Instant::now();
            let build = Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&out)
                .arg(".")
                .current_dir(checker_source())
                .output()
                .expect("run go build");
            assert!(
                build.status.success(),
                "go build of {} failed:\n{}",
                checker_source().display(),
                String::from_utf8_lossy(&build.stderr)
            );
            note(&format!(
                "linearizability: checker built in {:.1} s: {}",
                t.elapsed().as_secs_f64(),
                out.display()
            ));
            Some(out)
        })
        .clone()
}

/// What the checker said.
struct Verdict {
    code: i32,
    output: String,
    elapsed: Duration,
}

/// Runs the checker on the history file, with the HTML visualization written to `html`
/// (and `extra` arguments before the file).
fn check(checker: &Path, history: &Path, html: &Path, extra: &[&str]) -> Verdict {
    let t = Instant::now();
    let out = Command::new(checker)
        .arg("-timeout")
        .arg(CHECK_TIMEOUT)
        .arg("-html")
        .arg(html)
        .args(extra)
        .arg(history)
        .output()
        .expect("run the checker");
    Verdict {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: t.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------
// The history
// ---------------------------------------------------------------------------------------

/// What one operation was and how it ended.
#[derive(Debug)]
enum Kind {
    Write {
        from: u64,
        events: Vec<String>,
        /// "ok", "conflict" or "unknown".
        result: &'static str,
    },
    Highest(Option<u64>),
    Replay(Option<(u64, Vec<(u64, String)>)>),
    SaveSnapshot {
        seq: u64,
        payload: String,
        /// "ok" or "unknown".
        result: &'static str,
    },
    /// The latest snapshot's sequence number and payload (inner `None`: none); outer
    /// `None`: the load failed.
    LoadSnapshot(Option<Option<(u64, String)>>),
}

/// One recorded operation.
#[derive(Debug)]
struct Rec {
    client: usize,
    id: usize,
    call: u64,
    ret: Option<u64>,
    kind: Kind,
    error: Option<String>,
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pid_name(k: usize) -> String {
    format!("lin-{k}")
}

/// The history as the checker reads it.
fn to_json(history: &[Rec]) -> String {
    let mut out = String::from("{\"ops\": [\n");
    for (n, r) in history.iter().enumerate() {
        let ret = r.ret.map_or("null".to_owned(), |t| t.to_string());
        let _ = write!(
            out,
            "{{\"client\": {}, \"id\": {}, \"call\": {}, \"return\": {ret}, ",
            r.client,
            json_str(&pid_name(r.id)),
            r.call
        );
        match &r.kind {
            Kind::Write {
                from,
                events,
                result,
            } => {
                let events: Vec<String> = events.iter().map(|e| json_str(e)).collect();
                let _ = write!(
                    out,
                    "\"op\": \"write\", \"from\": {from}, \"events\": [{}], \"result\": \"{result}\"",
                    events.join(", ")
                );
            }
            Kind::Highest(Some(h)) => {
                let _ = write!(
                    out,
                    "\"op\": \"highest\", \"result\": \"ok\", \"value\": {h}"
                );
            }
            Kind::Highest(None) => out.push_str("\"op\": \"highest\", \"result\": \"failed\""),
            Kind::Replay(Some((highest, events))) => {
                let events: Vec<String> = events
                    .iter()
                    .map(|(seq, p)| format!("[{seq}, {}]", json_str(p)))
                    .collect();
                let _ = write!(
                    out,
                    "\"op\": \"replay\", \"result\": \"ok\", \"highest\": {highest}, \"replayed\": [{}]",
                    events.join(", ")
                );
            }
            Kind::Replay(None) => out.push_str("\"op\": \"replay\", \"result\": \"failed\""),
            Kind::SaveSnapshot {
                seq,
                payload,
                result,
            } => {
                let _ = write!(
                    out,
                    "\"op\": \"save_snapshot\", \"seq\": {seq}, \"payload\": {}, \"result\": \"{result}\"",
                    json_str(payload)
                );
            }
            Kind::LoadSnapshot(Some(snapshot)) => {
                let snapshot = snapshot.as_ref().map_or("null".to_owned(), |(seq, p)| {
                    format!("[{seq}, {}]", json_str(p))
                });
                let _ = write!(
                    out,
                    "\"op\": \"load_snapshot\", \"result\": \"ok\", \"snapshot\": {snapshot}"
                );
            }
            Kind::LoadSnapshot(None) => {
                out.push_str("\"op\": \"load_snapshot\", \"result\": \"failed\"")
            }
        }
        if let Some(e) = &r.error {
            let _ = write!(out, ", \"error\": {}", json_str(e));
        }
        out.push('}');
        if n + 1 < history.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]}\n");
    out
}

// ---------------------------------------------------------------------------------------
// The stores
// ---------------------------------------------------------------------------------------

/// Where one backend's clients connect.
struct Target {
    backend: Backend,
    /// The SQLite file, the PostgreSQL URL, the DynamoDB endpoint, the Cassandra contact
    /// point: through the proxy, for the server backends.
    location: String,
    namespace: String,
    proxy: Option<FaultProxy>,
    /// A journal with a bug ([`Lossy`]: every n-th write acknowledged, not stored), to
    /// show the test catches one; memory only.
    lossy: Option<usize>,
}

impl Target {
    /// `None` when the backend's server is not configured (after `server_env`'s message;
    /// with `CI=true` `server_env` fails instead).
    async fn new(backend: Backend, dir: &Path) -> Option<Target> {
        let namespace = unique("lin_");
        let Some(var) = backend.server_var() else {
            return Some(Target {
                backend,
                location: dir.join("journal.db").display().to_string(),
                namespace,
                proxy: None,
                lossy: None,
            });
        };
        let value = persistence_tck::server_env(var)?;
        let server = match backend {
            Backend::Postgres => split_postgres_url(&value, "").0,
            Backend::DynamoDb => value
                .trim_end_matches('/')
                .rsplit("://")
                .next()
                .expect("endpoint host:port")
                .to_owned(),
            _ => value
                .split(',')
                .next()
                .expect("a contact point")
                .trim()
                .to_owned(),
        };
        let proxy = FaultProxy::start(server).await.expect("start the proxy");
        let addr = proxy.addr().to_string();
        let location = match backend {
            Backend::Postgres => split_postgres_url(&value, &addr).1,
            Backend::DynamoDb => format!("http://{addr}"),
            _ => addr,
        };
        Some(Target {
            backend,
            location,
            namespace,
            proxy: Some(proxy),
            lossy: None,
        })
    }

    fn config(&self, create_schema: bool) -> Config {
        let name = self.backend.name();
        let mut config = Config::for_backend(name);
        match self.backend {
            Backend::Memory => {}
            Backend::Sqlite => {
                config.set(name, "path", self.location.clone());
                config.set(name, "busy_timeout_ms", 30_000);
            }
            Backend::Postgres => {
                config.set(name, "url", self.location.clone());
                config.set(name, "schema", self.namespace.clone());
                config.set(name, "max_connections", 1);
                config.set(name, "acquire_timeout_ms", 2_000);
            }
            Backend::DynamoDb => {
                config.set(name, "endpoint", self.location.clone());
                config.set(name, "namespace", self.namespace.clone());
                config.set(name, "max_retries", 2);
                config.set(name, "retry_base_delay_ms", 5);
                config.set(name, "retry_max_delay_ms", 50);
                config.set(name, "connect_timeout_ms", 1_000);
                config.set(name, "attempt_timeout_ms", 2_000);
            }
            Backend::Cassandra => {
                config.set(name, "contact_points", self.location.clone());
                if let Ok(dc) = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER") {
                    config.set(name, "local_datacenter", dc);
                }
                config.set(name, "keyspace", "persistence_tck");
                config.set(name, "namespace", self.namespace.clone());
                config.set(name, "request_timeout_ms", 2_000);
            }
        }
        if self.backend != Backend::Memory {
            config.set(name, "create_schema", create_schema);
        }
        config
    }

    /// Opens one client's stores, retrying for a while (the proxy may be cutting).
    async fn open(&self, create_schema: bool) -> Stores {
        let config = self.config(create_schema);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match persistence_stores::open(&config).await {
                Ok(stores) => {
                    return match self.lossy {
                        Some(every) => Lossy::wrap(stores, every),
                        None => stores,
                    }
                }
                Err(e) if Instant::now() < deadline => {
                    note(&format!(
                        "linearizability[{}]: open failed ({e}), retrying",
                        self.backend.name()
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{}: open: {e}", self.backend.name()),
            }
        }
    }
}

/// A journal with a bug: every `every`-th `write_events` call is acknowledged and not
/// stored (a lost acknowledged write), for the test that shows the check catches it.
struct Lossy {
    inner: Arc<dyn Journal>,
    every: usize,
    calls: AtomicUsize,
}

impl Lossy {
    fn wrap(stores: Stores, every: usize) -> Stores {
        let journal = Arc::new(Lossy {
            inner: stores.journal.clone(),
            every,
            calls: AtomicUsize::new(0),
        });
        Stores::new(
            "lossy",
            stores.capabilities(),
            journal,
            stores.snapshots.clone(),
            stores.read_journal.clone(),
        )
    }
}

#[persistence_stores::async_trait]
impl Journal for Lossy {
    async fn write_events(
        &self,
        writes: Vec<AtomicWrite>,
    ) -> persistence_stores::Result<Vec<persistence_stores::Result<()>>> {
        if (self.calls.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(self.every) {
            return Ok(writes.iter().map(|_| Ok(())).collect());
        }
        self.inner.write_events(writes).await
    }

    async fn replay(
        &self,
        persistence_id: &PersistenceId,
        from: SequenceNr,
        to: SequenceNr,
        max: u64,
    ) -> persistence_stores::Result<Replay> {
        self.inner.replay(persistence_id, from, to, max).await
    }

    async fn highest_sequence_nr(
        &self,
        persistence_id: &PersistenceId,
    ) -> persistence_stores::Result<SequenceNr> {
        self.inner.highest_sequence_nr(persistence_id).await
    }

    async fn delete_events_to(
        &self,
        persistence_id: &PersistenceId,
        to: SequenceNr,
    ) -> persistence_stores::Result<()> {
        self.inner.delete_events_to(persistence_id, to).await
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// What one backend's run counted.
#[derive(Debug, Default)]
struct Tally {
    ops: usize,
    ok: usize,
    conflict: usize,
    unknown: usize,
    reads: usize,
    reads_failed: usize,
    /// Snapshot saves, and those of them with an unknown outcome.
    saves: usize,
    saves_unknown: usize,
    cuts: usize,
    cuts_mid_request: usize,
    run: Duration,
    check: Duration,
    verdict: String,
    /// The checker's summary line.
    summary: String,
    /// The errors seen, by message (the first 100 characters), with their count.
    errors: std::collections::BTreeMap<String, usize>,
}

fn ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// Runs `op` with [`OP_TIMEOUT`]: its call and return times (ns since `start`) and its
/// outcome, an error of `None` meaning no answer in time.
async fn timed<T>(
    start: Instant,
    op: impl std::future::Future<Output = persistence_stores::Result<T>>,
) -> (u64, u64, Result<T, Option<persistence_stores::Error>>) {
    let call = ns(start);
    let result = tokio::time::timeout(OP_TIMEOUT, op).await;
    let ret = ns(start);
    (
        call,
        ret,
        result.map_err(|_| None).and_then(|r| r.map_err(Some)),
    )
}

/// What an operation's failure recorded: the error, or that no answer came in time.
fn failure(error: Option<persistence_stores::Error>) -> String {
    match error {
        Some(e) => format!("{e:#}"),
        None => format!("no answer within {OP_TIMEOUT:?}"),
    }
}

/// One client: random operations until the shared budget is spent or the run is over.
async fn client(
    k: usize,
    stores: Arc<Stores>,
    start: Instant,
    budget: Arc<AtomicUsize>,
    total: usize,
    until: Instant,
) -> Vec<Rec> {
    let mut rng = Rng::seeded();
    for _ in 0..k {
        rng.next();
    }
    let mut seen = [0u64; IDS];
    let mut history = Vec::new();
    let mut writes = 0usize;
    while Instant::now() < until && budget.fetch_add(1, Ordering::SeqCst) < total {
        let id = rng.between(0, IDS as u64 - 1) as usize;
        let pid = PersistenceId::new(pid_name(id)).unwrap();
        // 40 % writes, 15 % each highest, replay, snapshot save, snapshot load.
        let roll = rng.between(0, 19);
        let rec = if roll <= 7 {
            let from = seen[id] + 1;
            let n = rng.between(1, 3);
            let payloads: Vec<String> = (0..n).map(|i| format!("c{k}.{writes}.{i}")).collect();
            writes += 1;
            let events = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    PersistentEvent::new(
                        pid.clone(),
                        from + i as u64,
                        Payload::raw(p.clone().into_bytes()),
                    )
                    .with_tags([TAG])
                })
                .collect();
            let write = AtomicWrite::new(events).unwrap();
            let (call, ret, result) = timed(start, stores.journal.write(write)).await;
            let (result, error) = match result {
                Ok(()) => {
                    seen[id] = from + n - 1;
                    ("ok", None)
                }
                Err(Some(e)) if e.kind() == ErrorKind::Conflict => ("conflict", None),
                Err(e) => ("unknown", Some(failure(e))),
            };
            Rec {
                client: k,
                id,
                call,
                ret: (result != "unknown").then_some(ret),
                kind: Kind::Write {
                    from,
                    events: payloads,
                    result,
                },
                error,
            }
        } else if roll >= 14 {
            snapshot_op(k, id, &pid, roll >= 17, seen[id], writes, &stores, start).await
        } else if roll <= 10 {
            let (call, ret, result) = timed(start, stores.journal.highest_sequence_nr(&pid)).await;
            let (value, error) = match result {
                Ok(h) => {
                    seen[id] = h;
                    (Some(h), None)
                }
                Err(e) => (None, Some(failure(e))),
            };
            Rec {
                client: k,
                id,
                call,
                ret: Some(ret),
                kind: Kind::Highest(value),
                error,
            }
        } else {
            let (call, ret, result) = timed(start, replay(&stores, &pid)).await;
            let (value, error) = match result {
                Ok(r) => {
                    seen[id] = r.0;
                    (Some(r), None)
                }
                Err(e) => (None, Some(failure(e))),
            };
            Rec {
                client: k,
                id,
                call,
                ret: Some(ret),
                kind: Kind::Replay(value),
                error,
            }
        };
        writes += usize::from(matches!(rec.kind, Kind::SaveSnapshot { .. }));
        let pause = if rec.error.is_some() {
            BACKOFF_MS
        } else {
            THINK_MS
        };
        history.push(rec);
        tokio::time::sleep(Duration::from_millis(rng.between(pause.0, pause.1))).await;
    }
    history
}

/// A snapshot save (at the highest the client last saw, at least 1; the payload names the
/// client and its operation) or a load of the latest snapshot.
#[allow(clippy::too_many_arguments)]
async fn snapshot_op(
    k: usize,
    id: usize,
    pid: &PersistenceId,
    load: bool,
    seen: u64,
    n: usize,
    stores: &Stores,
    start: Instant,
) -> Rec {
    if load {
        let (call, ret, result) = timed(
            start,
            stores
                .snapshots
                .load_snapshot(pid, SnapshotSelectionCriteria::default()),
        )
        .await;
        let (value, error) = match result {
            Ok(s) => (
                Some(s.map(|s| {
                    (
                        s.metadata.sequence_nr,
                        String::from_utf8_lossy(&s.snapshot.bytes).into_owned(),
                    )
                })),
                None,
            ),
            Err(e) => (None, Some(failure(e))),
        };
        return Rec {
            client: k,
            id,
            call,
            ret: Some(ret),
            kind: Kind::LoadSnapshot(value),
            error,
        };
    }
    let seq = seen.max(1);
    let payload = format!("s{k}.{n}");
    let (call, ret, result) = timed(
        start,
        stores.snapshots.save_snapshot(
            SnapshotMetadata::new(pid.clone(), seq),
            Payload::raw(payload.clone().into_bytes()),
        ),
    )
    .await;
    let (result, error) = match result {
        Ok(()) => ("ok", None),
        Err(e) => ("unknown", Some(failure(e))),
    };
    Rec {
        client: k,
        id,
        call,
        ret: (result == "ok").then_some(ret),
        kind: Kind::SaveSnapshot {
            seq,
            payload,
            result,
        },
        error,
    }
}

/// A replay of everything: the highest it reports and each event's number and payload.
async fn replay(
    stores: &Stores,
    pid: &PersistenceId,
) -> persistence_stores::Result<(u64, Vec<(u64, String)>)> {
    use futures::StreamExt;
    let replay = stores.journal.replay(pid, 1, u64::MAX, u64::MAX).await?;
    let highest = replay.highest_sequence_nr;
    let mut events = Vec::new();
    let mut stream = replay.events;
    while let Some(e) = stream.next().await {
        let e = e?;
        events.push((
            e.sequence_nr,
            String::from_utf8_lossy(&e.payload.bytes).into_owned(),
        ));
    }
    Ok((highest, events))
}

/// Operations (started, all clients together) between two faults: a random count in this
/// range, so every backend gets about as many faults whatever its speed.
const OPS_BETWEEN_FAULTS: (u64, u64) = (15, 50);

/// Cuts connections at random moments, each after a random number of further operations
/// ([`OPS_BETWEEN_FAULTS`], counted by `started`), until `stop`: returns (cuts of every
/// connection, cuts that fell mid-request, after a given number of client-to-server bytes).
async fn faults(proxy: &FaultProxy, started: &AtomicUsize, stop: &AtomicBool) -> (usize, usize) {
    let mut rng = Rng::seeded();
    let (mut all, mut mid) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        let at = started.load(Ordering::SeqCst)
            + rng.between(OPS_BETWEEN_FAULTS.0, OPS_BETWEEN_FAULTS.1) as usize;
        while started.load(Ordering::SeqCst) < at && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if rng.between(0, 1) == 0 {
            // Every connection at once; new ones refused for a moment.
            proxy.cut();
            all += 1;
            tokio::time::sleep(Duration::from_millis(rng.between(20, 100))).await;
        } else {
            // Whichever connection carries the budget's last byte, mid-request.
            let budget = rng.between(1, 3000);
            let before = proxy.forwarded();
            proxy.cut_after(budget);
            let armed = Instant::now();
            while proxy.forwarded() - before < budget
                && armed.elapsed() < Duration::from_millis(500)
                && !stop.load(Ordering::SeqCst)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if proxy.forwarded() - before >= budget {
                mid += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        proxy.restore();
    }
    proxy.restore();
    (all, mid)
}

/// Runs one backend: the clients, the faults, the final reads, the check.
async fn run(target: &Target, checker: &Path, dir: &Path, total: usize) -> (Tally, Option<String>) {
    let name = target.backend.name();
    let cap = if total > DEFAULT_OPS {
        LONG_RUN_CAP
    } else {
        RUN_CAP
    };
    // The first open creates the schema. The first [`OWN_STORES`] clients open their own
    // stores (separate processes, as it were); the others share one (tasks of one process:
    // the SQL backends' group commit gathers their concurrent writes into one
    // transaction). The memory backend's one store is shared by all: another open would
    // be another store.
    let first = Arc::new(target.open(true).await);
    let mut clients = vec![first.clone()];
    let opens: Vec<_> = (1..OWN_STORES)
        .map(|_| async {
            if target.backend == Backend::Memory {
                first.clone()
            } else {
                Arc::new(target.open(false).await)
            }
        })
        .collect();
    clients.extend(futures::future::join_all(opens).await);
    let shared = if target.backend == Backend::Memory {
        first.clone()
    } else {
        Arc::new(target.open(false).await)
    };
    clients.extend((OWN_STORES..CLIENTS).map(|_| shared.clone()));
    drop(shared);

    let start = Instant::now();
    let until = start + cap;
    let budget = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, stores)| {
            tokio::spawn(client(
                k,
                stores.clone(),
                start,
                budget.clone(),
                total,
                until,
            ))
        })
        .collect();
    let fault_task = async {
        match &target.proxy {
            Some(proxy) => faults(proxy, &budget, &stop).await,
            None => (0, 0),
        }
    };
    let clients_done = async {
        let mut history = Vec::new();
        for t in tasks {
            history.extend(t.await.expect("a client panicked"));
        }
        stop.store(true, Ordering::SeqCst);
        history
    };
    let (mut history, (cuts, mid)) = futures::future::join(clients_done, fault_task).await;
    let run_time = start.elapsed();

    // The final reads, faults over: the highest, then a replay that shows what the unknown
    // writes left (the checker leaves out those it shows never took effect: the replay
    // must be the id's last operation).
    for id in 0..IDS {
        let pid = PersistenceId::new(pid_name(id)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut highest = None;
        loop {
            if highest.is_none() {
                let call = ns(start);
                if let Ok(Ok(h)) =
                    tokio::time::timeout(OP_TIMEOUT, first.journal.highest_sequence_nr(&pid)).await
                {
                    highest = Some(Rec {
                        client: CLIENTS,
                        id,
                        call,
                        ret: Some(ns(start)),
                        kind: Kind::Highest(Some(h)),
                        error: None,
                    });
                }
            }
            let call = ns(start);
            let r = tokio::time::timeout(OP_TIMEOUT, replay(&first, &pid)).await;
            let ret = ns(start);
            match r {
                Ok(Ok(r)) if highest.is_some() => {
                    history.extend(highest.take());
                    history.push(Rec {
                        client: CLIENTS,
                        id,
                        call,
                        ret: Some(ret),
                        kind: Kind::Replay(Some(r)),
                        error: None,
                    });
                    break;
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                other => panic!("{name}: the final reads of {pid} failed: {other:?}"),
            }
        }
    }
    drop(clients);
    drop(first);

    let mut tally = Tally {
        ops: history.len(),
        cuts,
        cuts_mid_request: mid,
        run: run_time,
        ..Tally::default()
    };
    for r in &history {
        if let Some(e) = &r.error {
            let e: String = e.chars().take(300).collect();
            *tally.errors.entry(e).or_default() += 1;
        }
        match &r.kind {
            Kind::Write { result: "ok", .. } => tally.ok += 1,
            Kind::Write {
                result: "conflict", ..
            } => tally.conflict += 1,
            Kind::Write { .. } => tally.unknown += 1,
            Kind::Highest(v) => {
                tally.reads += 1;
                tally.reads_failed += usize::from(v.is_none());
            }
            Kind::Replay(v) => {
                tally.reads += 1;
                tally.reads_failed += usize::from(v.is_none());
            }
            Kind::SaveSnapshot { result, .. } => {
                tally.saves += 1;
                tally.saves_unknown += usize::from(*result == "unknown");
            }
            Kind::LoadSnapshot(v) => {
                tally.reads += 1;
                tally.reads_failed += usize::from(v.is_none());
            }
        }
    }

    let file = dir.join(format!("{name}.json"));
    let html = dir.join(format!("{name}.html"));
    std::fs::write(&file, to_json(&history)).expect("write the history");
    // Porcupine's standard check first: every unknown write pending to the end.
    let mut verdict = check(
        checker,
        &file,
        &html,
        &["-no-prune", "-timeout", STANDARD_TIMEOUT],
    );
    let mut how = "";
    if verdict.code == 3 {
        // Undecided: without the unknown writes the final replay shows never took effect.
        let standard = verdict.elapsed;
        verdict = check(checker, &file, &html, &[]);
        verdict.elapsed += standard;
        how = " (standard check undecided; decided without the unknown writes no replay shows)";
    }
    tally.check = verdict.elapsed;
    tally.summary = verdict.output.lines().next().unwrap_or("").to_owned();
    tally.verdict = match verdict.code {
        0 => format!("linearizable{how}"),
        1 => format!("NOT linearizable{how}"),
        3 => "unknown (timed out)".to_owned(),
        _ => "checker error".to_owned(),
    };
    let failure = (verdict.code != 0).then(|| {
        format!(
            "{name}: the checker's verdict: {} (exit {})\nhistory: {}\nvisualization: {}\n{}",
            tally.verdict,
            verdict.code,
            file.display(),
            html.display(),
            verdict.output
        )
    });
    (tally, failure)
}

#[test]
fn concurrent_clients_with_cut_connections_give_linearizable_histories() {
    let Some(checker) = checker() else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("persistence-linearizability-"));
    std::fs::create_dir_all(&dir).expect("the temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for backend in ALL {
        if !backend.compiled() || !chosen(backend.name()) {
            continue;
        }
        let backend_dir = dir.join(backend.name());
        std::fs::create_dir_all(&backend_dir).unwrap();
        let Some(target) = runtime.block_on(Target::new(backend, &backend_dir)) else {
            continue;
        };
        let (tally, failure) = runtime.block_on(run(&target, &checker, &dir, ops()));
        note(&format!(
            "linearizability[{}]: {} ops, writes ok {} / conflict {} / unknown {}, snapshot saves {} ({} unknown), reads {} ({} failed), cuts {} + {} mid-request, run {:.1} s, check {:.2} s: {}",
            backend.name(),
            tally.ops,
            tally.ok,
            tally.conflict,
            tally.unknown,
            tally.saves,
            tally.saves_unknown,
            tally.reads,
            tally.reads_failed,
            tally.cuts,
            tally.cuts_mid_request,
            tally.run.as_secs_f64(),
            tally.check.as_secs_f64(),
            tally.verdict
        ));
        note(&format!("    {}", tally.summary));
        let mut errors: Vec<_> = tally.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (e, n) in errors.iter().take(4) {
            note(&format!("    {n} x {e}"));
        }
        if let Some(f) = failure {
            note(&f);
            failures.push(f);
        }
        runtime.block_on(async move { drop(target) });
        rows.push((backend, tally));
    }
    note(&format!(
        "\nlinearizability: {CLIENTS} clients, {IDS} ids, Porcupine v1.3.1 ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    ));
    note(&format!(
        "{:<10} {:>5} {:>6} {:>9} {:>8} {:>6} {:>6} {:>13} {:>6} {:>6}  verdict",
        "backend",
        "ops",
        "ok",
        "conflict",
        "unknown",
        "saves",
        "reads",
        "reads failed",
        "cuts",
        "run"
    ));
    for (backend, t) in &rows {
        note(&format!(
            "{:<10} {:>5} {:>6} {:>9} {:>8} {:>6} {:>6} {:>13} {:>6} {:>5.1}s  {}",
            backend.name(),
            t.ops,
            t.ok,
            t.conflict,
            t.unknown,
            t.saves,
            t.reads,
            t.reads_failed,
            t.cuts + t.cuts_mid_request,
            t.run.as_secs_f64(),
            t.verdict
        ));
    }
    if failures.is_empty() && std::env::var_os("PERSISTENCE_LINEARIZABILITY_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        note(&format!(
            "linearizability: the histories (.json) and Porcupine's visualizations (.html) are in {}",
            dir.display()
        ));
    }
    assert!(
        failures.is_empty(),
        "histories not linearizable (the files stay in {}):\n{}",
        dir.display(),
        failures.join("\n")
    );
}

/// The whole pipeline catches a real bug: the memory backend behind a journal that
/// acknowledges every fifth write without storing it ([`Lossy`]) gives a history the
/// checker rejects, with the failing id's operations and a minimal failing history.
#[test]
fn a_journal_that_acknowledges_writes_it_did_not_store_is_caught() {
    let Some(checker) = checker() else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("persistence-linearizability-lossy-"));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = Target {
        backend: Backend::Memory,
        location: String::new(),
        namespace: unique("lin_"),
        proxy: None,
        lossy: Some(5),
    };
    let (tally, failure) = runtime.block_on(run(&target, &checker, &dir, 120));
    let failure = failure.unwrap_or_else(|| {
        panic!(
            "a journal that loses every fifth acknowledged write passed the check: {}",
            tally.summary
        )
    });
    assert!(
        tally.verdict.starts_with("NOT linearizable")
            && failure.contains("NOT LINEARIZABLE: persistence id")
            && failure.contains("minimal failing history"),
        "the checker's report:\n{failure}"
    );
    let report: Vec<&str> = failure.lines().collect();
    let at = report
        .iter()
        .position(|l| l.contains("minimal failing history"))
        .unwrap();
    note(&format!(
        "linearizability[lossy memory]: {} ops, {}; the first {}",
        tally.ops,
        tally.verdict,
        report[at..report.len().min(at + 12)].join("\n")
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hand-made history, three clients on one id.
fn hand_made(final_replay: &str) -> String {
    format!(
        r#"{{"ops": [
{{"client": 0, "id": "a", "call": 0, "return": 10, "op": "write", "from": 1, "events": ["x", "y"], "result": "ok"}},
{{"client": 1, "id": "a", "call": 5, "return": 12, "op": "write", "from": 1, "events": ["z"], "result": "conflict"}},
{{"client": 2, "id": "a", "call": 3, "return": null, "op": "write", "from": 3, "events": ["u"], "result": "unknown"}},
{{"client": 1, "id": "a", "call": 13, "return": 14, "op": "highest", "result": "ok", "value": 2}},
{{"client": 0, "id": "a", "call": 20, "return": 30, "op": "replay", "result": "ok", {final_replay}}}
]}}
"#
    )
}

/// The checker can fail: a replay after the acknowledged write that misses one of its
/// events is not linearizable (exit 1, the failing id's operations printed); the same
/// history with a replay that holds it, and the unknown write either stored or not, is.
#[test]
fn the_checker_rejects_a_replay_missing_an_acknowledged_write() {
    let Some(checker) = checker() else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("persistence-linearizability-unit-"));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (r#""highest": 2, "replayed": [[1, "x"]]"#, 1),
        (r#""highest": 1, "replayed": [[1, "x"]]"#, 1),
        (r#""highest": 2, "replayed": [[1, "z"]]"#, 1),
        (r#""highest": 2, "replayed": [[1, "x"], [2, "y"]]"#, 0),
        (
            r#""highest": 3, "replayed": [[1, "x"], [2, "y"], [3, "u"]]"#,
            0,
        ),
    ];
    for (n, (replay, expected)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("case{n}.json"));
        std::fs::write(&file, hand_made(replay)).unwrap();
        let verdict = check(&checker, &file, &dir.join(format!("case{n}.html")), &[]);
        assert_eq!(
            verdict.code, expected,
            "case {n} ({replay}): exit {}, expected {expected}:\n{}",
            verdict.code, verdict.output
        );
        if expected == 1 {
            assert!(
                verdict
                    .output
                    .contains("NOT LINEARIZABLE: persistence id \"a\"")
                    && verdict.output.contains("minimal failing history"),
                "case {n}: the report names the failing id and its history:\n{}",
                verdict.output
            );
        }
    }
    // Snapshots: a load after a save at a higher number returned must see it (or a later one).
    let file = dir.join("snapshots.json");
    std::fs::write(
        &file,
        r#"{"ops": [
{"client": 0, "id": "a", "call": 0, "return": 10, "op": "save_snapshot", "seq": 3, "payload": "p", "result": "ok"},
{"client": 1, "id": "a", "call": 11, "return": 20, "op": "save_snapshot", "seq": 5, "payload": "q", "result": "ok"},
{"client": 2, "id": "a", "call": 21, "return": 30, "op": "load_snapshot", "result": "ok", "snapshot": [3, "p"]}
]}"#,
    )
    .unwrap();
    let verdict = check(&checker, &file, &dir.join("snapshots.html"), &[]);
    assert_eq!(verdict.code, 1, "{}", verdict.output);
    assert!(verdict
        .output
        .contains("NOT LINEARIZABLE: persistence id \"a (snapshots)\""));
    // Bad input is exit 2.
    let file = dir.join("bad.json");
    std::fs::write(&file, "{\"ops\": [{\"op\": \"put\"}]}").unwrap();
    assert_eq!(check(&checker, &file, &dir.join("bad.html"), &[]).code, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
