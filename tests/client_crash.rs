//! Crash tests for the client: the process that writes is killed with SIGKILL in the middle
//! of its writes, and what the store kept is checked (the client-side twin of
//! `tests/server_crash.rs`; for SQLite, the embedded database, this is the crash that
//! matters: the writing process dies with the database file open).
//!
//! For each backend compiled in (features `sqlite`, `postgres`, `dynamodb`, `cassandra`)
//! and chosen by `PERSISTENCE_CRASH_BACKENDS` (comma-separated names, default all), in a
//! fresh namespace (SQLite: a database file in a temporary directory, with the default
//! `synchronous = full`), per cycle:
//!
//! 1. The parent (the `#[test]`) runs this very test binary again as the child
//!    (`std::env::current_exe()` with `--exact <its own name> --nocapture`), with
//!    [`CHILD_ENV`] naming the backend, where the store is and the namespace. Under that
//!    variable the test is the child ([`child`]): it opens the stores from configuration
//!    (`persistence_stores::open` of a [`Config`]), reads each id's highest sequence number,
//!    and runs [`WRITERS`] writer tasks, one persistence id each, streaming atomic writes
//!    of [`EVENTS_PER_WRITE`] events tagged [`TAG`] from the id's highest+1. It prints
//!    `CRASH send <k> <from> <to>` before each write and `CRASH ack <k> <from> <to>` when
//!    it is acknowledged, flushed at once.
//! 2. The parent reads those lines, waits for the first acknowledgement, then a random
//!    0.3–2 s more, and SIGKILLs the child (`Child::kill`); it must die of that signal.
//! 3. The parent opens the stores itself and checks (`crash_common::verify`, the checks of
//!    `server_crash`): every acknowledged write present whole (else lost); each id's events
//!    a multiple of 100 numbered 1..=n (else partial: a write in flight at the kill must be
//!    all there or not at all); `current_events_by_tag` equal to the replay;
//!    `highest_sequence_nr` equal to the replayed highest (and to what the next child reads);
//!    a write at highest+1 on each id succeeds; and a live tag query resumed from the
//!    current query's last offset delivers exactly that write's events, nothing else.
//!
//! The next cycle's child continues each id from its highest, on the same data.
//!
//! DynamoDB writes 100 events and their tag entries over several transactions (the
//! backend's large-write path, `backend-dynamodb/src/large_write.rs`), so a kill between
//! two of them leaves the first ones' items behind. Before the check the parent counts, in
//! the table itself, the event items above each id's acknowledged highest that belong to
//! no complete write ("unfinished" in the table: kills that landed there, and their
//! events); the checks above must not see them, and after the write at highest+1 none may
//! be left above the new highest. (The queries wait `tag_gap_timeout_ms` and
//! `large_write_timeout_ms`, set to 1 s and 3 s here, before passing what a dead writer
//! left.)
//!
//! Only the client dies: the servers stay up, so the shared test servers
//! (`scripts/servers/<name>.sh start; source .servers/<name>/env`) serve, and their
//! durability settings (off, for speed) do not matter here. A server backend whose
//! variable is unset is skipped with a message (`persistence_tck::server_env`); with
//! `CI=true` that is a failure.
//!
//! Cycles: [`DEFAULT_CYCLES`] per backend (the bounded mode CI runs), or
//! `PERSISTENCE_CLIENT_CRASH_CYCLES=N` for a longer campaign:
//! `PERSISTENCE_CLIENT_CRASH_CYCLES=10 cargo test --all-features --test client_crash -- --nocapture`.
//! A table line per backend is printed on stderr (cycles, acknowledged writes, writes in
//! flight at the kill and how many of them were stored, DynamoDB's unfinished writes,
//! lost, partial); lost and partial must be 0, and any other failed check fails the test.

#![cfg(unix)]

mod crash_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crash_common::{
    batch, chosen, pid_name, verify, Checks, Rng, Tally, EVENTS_PER_WRITE, TAG, WRITERS,
};
use persistence_stores::{Config, JournalExt, PersistenceId, Stores};

/// Set in the child: the [`Spec`] it runs.
const CHILD_ENV: &str = "PERSISTENCE_CLIENT_CRASH_CHILD";
/// Kill cycles per backend unless `PERSISTENCE_CLIENT_CRASH_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 2;
/// The kill comes this long (ms, inclusive range) after the first acknowledged write.
const KILL_AFTER_MS: (u64, u64) = (300, 2000);
/// The longest a child may take to open the stores and have a first write acknowledged.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// A child nobody kills stops writing after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(300);
/// The test's own name: the child runs it again with `--exact`.
const TEST_NAME: &str = "acknowledged_writes_survive_sigkill_of_the_writing_process";

/// A backend of this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    DynamoDb,
    Cassandra,
}

const ALL: [Backend; 4] = [
    Backend::Sqlite,
    Backend::Postgres,
    Backend::DynamoDb,
    Backend::Cassandra,
];

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::DynamoDb => "dynamodb",
            Backend::Cassandra => "cassandra",
        }
    }

    fn compiled(self) -> bool {
        persistence_stores::compiled_backends().contains(&self.name())
    }

    fn parse(name: &str) -> Backend {
        ALL.into_iter()
            .find(|b| b.name() == name)
            .unwrap_or_else(|| panic!("unknown backend {name:?} in {CHILD_ENV}"))
    }
}

/// What the parent tells the child: the backend, where the store is (the SQLite file, the
/// PostgreSQL URL, the DynamoDB endpoint, the Cassandra contact points) and the namespace.
/// Encoded as `backend;location;namespace`.
#[derive(Clone, Debug)]
struct Spec {
    backend: Backend,
    location: String,
    namespace: String,
}

impl Spec {
    fn encode(&self) -> String {
        format!(
            "{};{};{}",
            self.backend.name(),
            self.location,
            self.namespace
        )
    }

    fn decode(text: &str) -> Spec {
        let mut parts = text.splitn(3, ';');
        let mut next = || {
            parts
                .next()
                .unwrap_or_else(|| panic!("{CHILD_ENV}={text:?} is not backend;location;namespace"))
                .to_owned()
        };
        Spec {
            backend: Backend::parse(&next()),
            location: next(),
            namespace: next(),
        }
    }

    /// The configuration `persistence_stores::open` takes; `create_schema` in the parent only.
    fn config(&self, create_schema: bool) -> Config {
        let name = self.backend.name();
        let mut config = Config::for_backend(name);
        match self.backend {
            Backend::Sqlite => {
                // `synchronous` stays the default, `full`.
                config.set(name, "path", self.location.clone());
                config.set(name, "busy_timeout_ms", 30_000);
            }
            Backend::Postgres => {
                config.set(name, "url", self.location.clone());
                config.set(name, "schema", self.namespace.clone());
            }
            Backend::DynamoDb => {
                config.set(name, "endpoint", self.location.clone());
                config.set(name, "namespace", self.namespace.clone());
                // A write in flight at the kill leaves a gap in the tag's order (and, for
                // a write over several transactions, an unfinished write): the queries wait
                // this long for each before they pass it.
                config.set(name, "tag_gap_timeout_ms", 1000);
                config.set(name, "large_write_timeout_ms", 3000);
                config.set(name, "feed_settle_delay_ms", 200);
                config.set(name, "poll_interval_ms", 200);
            }
            Backend::Cassandra => {
                config.set(name, "contact_points", self.location.clone());
                if let Ok(dc) = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER") {
                    config.set(name, "local_datacenter", dc);
                }
                config.set(name, "keyspace", "persistence_tck");
                config.set(name, "namespace", self.namespace.clone());
                // The only writer is dead when the parent queries.
                config.set(name, "eventual_consistency_delay_ms", 500);
                config.set(name, "poll_interval_ms", 300);
            }
        }
        config.set(name, "create_schema", create_schema);
        config
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos:x}{:x}", std::process::id())
}

/// Writes a line to the real stderr (libtest captures `eprintln!` of a passing test).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Where `backend`'s store is; `None` (after `server_env`'s message) when its server is
/// not configured. With `CI=true`, `server_env` fails instead.
fn locate(backend: Backend) -> Option<String> {
    let var = match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(unique("persistence-client-crash-"));
            return Some(dir.join("journal.db").display().to_string());
        }
        Backend::Postgres => "PERSISTENCE_POSTGRES_URL",
        Backend::DynamoDb => "PERSISTENCE_DYNAMODB_ENDPOINT",
        Backend::Cassandra => "PERSISTENCE_CASSANDRA_CONTACT_POINTS",
    };
    if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
        note(&format!(
            "client_crash: {var} is not set: {} skipped (a failure with CI=true)",
            backend.name()
        ));
    }
    persistence_tck::server_env(var)
}

async fn open(spec: &Spec, create_schema: bool) -> Stores {
    let config = spec.config(create_schema);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match persistence_stores::open(&config).await {
            Ok(stores) => return stores,
            Err(e) if Instant::now() < deadline => {
                note(&format!(
                    "client_crash[{}]: open failed ({e}), retrying",
                    spec.backend.name()
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{}: open: {e}", spec.backend.name()),
        }
    }
}

/// One line to the parent, on stdout, flushed at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "CRASH {line}").expect("stdout");
    out.flush().expect("stdout");
}

/// The child: opens the stores and writes on every id until it is killed.
async fn child(spec: Spec) {
    let stores = Arc::new(open(&spec, false).await);
    let mut tasks = Vec::new();
    for k in 0..WRITERS {
        let id = PersistenceId::new(pid_name(k)).unwrap();
        let highest = stores
            .journal
            .highest_sequence_nr(&id)
            .await
            .expect("highest_sequence_nr in the child");
        say(&format!("start {k} {highest}"));
        let stores = stores.clone();
        tasks.push(tokio::spawn(async move {
            let mut from = highest + 1;
            loop {
                let to = from + EVENTS_PER_WRITE - 1;
                say(&format!("send {k} {from} {to}"));
                match stores.journal.write(batch(&id, from)).await {
                    Ok(()) => say(&format!("ack {k} {from} {to}")),
                    Err(e) => {
                        say(&format!("error {k} {from} {to} {e}"));
                        return;
                    }
                }
                from += EVENTS_PER_WRITE;
            }
        }));
    }
    let _ = tokio::time::timeout(CHILD_LIFETIME, futures::future::join_all(tasks)).await;
    say("end");
}

/// What the parent saw of one child.
#[derive(Debug, Default)]
struct ChildRun {
    /// Per id: the highest the child read at its start.
    started: Vec<Option<u64>>,
    /// Per id: the first sequence numbers of the acknowledged writes.
    acked: Vec<Vec<u64>>,
    /// Per id: the write sent and not acknowledged when the child died (at most one).
    in_flight: Vec<Option<u64>>,
    /// `error` lines: writes the child saw fail.
    errors: Vec<String>,
    /// How long after the first acknowledgement the child was killed.
    killed_after: Duration,
    status: Option<ExitStatus>,
}

/// Runs one child on `spec` and SIGKILLs it a random while after its first acknowledged
/// write.
fn run_child(spec: &Spec, rng: &mut Rng) -> ChildRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec.encode())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest's `test <name> ... ` has no newline: the child's first line follows it.
            if let Some(at) = line.find("CRASH ") {
                if tx.send(line[at + "CRASH ".len()..].to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let mut run = ChildRun {
        started: vec![None; WRITERS],
        acked: vec![Vec::new(); WRITERS],
        in_flight: vec![None; WRITERS],
        ..ChildRun::default()
    };
    let record = |run: &mut ChildRun, line: &str| {
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        let num = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("a child's line {line:?}"))
        };
        match words[0] {
            "start" => run.started[num(1) as usize] = Some(num(2)),
            "send" => run.in_flight[num(1) as usize] = Some(num(2)),
            "ack" => {
                let k = num(1) as usize;
                run.acked[k].push(num(2));
                if run.in_flight[k] == Some(num(2)) {
                    run.in_flight[k] = None;
                }
            }
            "error" => {
                run.in_flight[num(1) as usize] = None;
                run.errors.push(line.to_owned());
            }
            _ => {}
        }
    };
    // Until the first acknowledgement (or the child's end).
    let deadline = Instant::now() + FIRST_ACK_TIMEOUT;
    let mut first_ack = None;
    while first_ack.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                record(&mut run, &line);
                if line.starts_with("ack ") {
                    first_ack = Some(Instant::now());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: the child had no write acknowledged within {FIRST_ACK_TIMEOUT:?}",
                    spec.backend.name()
                );
            }
        }
    }
    if let Some(first) = first_ack {
        let delay = Duration::from_millis(rng.between(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
        // Record the lines as they come while waiting.
        let kill_at = first + delay;
        while let Ok(line) = rx.recv_timeout(kill_at.saturating_duration_since(Instant::now())) {
            record(&mut run, &line);
            if Instant::now() >= kill_at {
                break;
            }
        }
        // Child::kill sends SIGKILL on Unix; an error means the child is gone already.
        let _ = child.kill();
        run.killed_after = first.elapsed();
    }
    run.status = Some(child.wait().expect("reap the child"));
    reader.join().expect("the output reader");
    for line in rx.try_iter() {
        record(&mut run, &line);
    }
    run
}

/// DynamoDB only: per id, the events stored as items above `highest` (read from the table
/// itself, past the journal): what a write over several transactions left when the kill
/// came between its transactions. The journal must hide them (its replay, highest and tag
/// query) and the next write must clear them; this count shows that kills landed there.
#[cfg(feature = "dynamodb")]
async fn raw_events_above(spec: &Spec, highest: &[u64]) -> Option<Vec<u64>> {
    use persistence_stores::dynamodb::aws_sdk_dynamodb::types::AttributeValue;
    use persistence_stores::dynamodb::{DynamoDb, DynamoDbConfig};
    if spec.backend != Backend::DynamoDb {
        return None;
    }
    let config: DynamoDbConfig = spec.config(false).section("dynamodb").expect("the section");
    let db = DynamoDb::open(config).await.expect("open dynamodb");
    let table = db.config().journal_table.clone();
    let mut counts = Vec::new();
    for (k, h) in highest.iter().enumerate() {
        // The event items' partition and sort keys (`<namespace>|e|<id>`, the zero-padded
        // sequence number), as backend-dynamodb/src/schema.rs lays them out.
        let pk = format!("{}|e|{}", spec.namespace, pid_name(k));
        let mut count = 0;
        let mut start = None;
        loop {
            let page = db
                .client()
                .query()
                .table_name(&table)
                .consistent_read(true)
                .key_condition_expression("pk = :p AND sk > :s")
                .expression_attribute_values(":p", AttributeValue::S(pk.clone()))
                .expression_attribute_values(":s", AttributeValue::S(format!("{h:020}")))
                .projection_expression("sk")
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("query the journal table");
            count += page
                .items()
                .iter()
                .filter(|item| {
                    item.get("sk")
                        .and_then(|v| v.as_s().ok())
                        .is_some_and(|sk| sk.len() == 20 && sk.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64;
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        counts.push(count);
    }
    Some(counts)
}

#[cfg(not(feature = "dynamodb"))]
async fn raw_events_above(_spec: &Spec, _highest: &[u64]) -> Option<Vec<u64>> {
    None
}

/// What one backend's campaign counted beyond the [`Tally`].
#[derive(Debug, Default)]
struct InFlight {
    /// Writes sent and not acknowledged when the child died.
    writes: usize,
    /// Of those, the ones found stored (whole) afterwards.
    stored: usize,
    /// DynamoDB: kills that left an unfinished write over several transactions (events
    /// stored as items above the id's highest), and those events.
    unfinished: Option<(usize, u64)>,
}

/// Runs the campaign on one backend.
fn campaign(spec: &Spec, cycles: usize, rng: &mut Rng) -> (Tally, InFlight) {
    let name = spec.backend.name();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The parent creates the schema; the children only open.
    runtime.block_on(async { drop(open(spec, true).await) });
    let mut tally = Tally::default();
    let mut in_flight = InFlight::default();
    let mut acked: Vec<Vec<u64>> = vec![Vec::new(); WRITERS];
    let mut highest = vec![0u64; WRITERS];
    for cycle in 0..cycles {
        let run = run_child(spec, rng);
        if run.status.and_then(|s| s.signal()) != Some(9) {
            tally.problems.push(format!(
                "{name} cycle {}: the child did not die of SIGKILL ({:?}); its failed writes: {:?}",
                cycle + 1,
                run.status,
                run.errors
            ));
        }
        if !run.errors.is_empty() {
            tally.problems.push(format!(
                "{name} cycle {}: the child's writes failed before the kill: {:?}",
                cycle + 1,
                run.errors
            ));
        }
        for (k, start) in run.started.iter().enumerate() {
            if *start != Some(highest[k]) {
                tally.problems.push(format!(
                    "{name} {}: the child of cycle {} read highest_sequence_nr {start:?}, the parent's check before it found {}",
                    pid_name(k),
                    cycle + 1,
                    highest[k]
                ));
            }
        }
        let written: usize = run.acked.iter().map(Vec::len).sum();
        tally.acknowledged += written;
        for (k, done) in run.acked.iter().enumerate() {
            acked[k].extend(done);
        }
        let flying: Vec<(usize, u64)> = run
            .in_flight
            .iter()
            .enumerate()
            .filter_map(|(k, f)| f.map(|f| (k, f)))
            .collect();
        tally.unknown += flying.len();
        in_flight.writes += flying.len();
        let t = Instant::now();
        // What the kill left above each acknowledged highest, before anything reads or writes.
        let acked_highest: Vec<u64> = acked
            .iter()
            .map(|a| a.iter().max().map_or(0, |f| f + EVENTS_PER_WRITE - 1))
            .collect();
        let leftovers = runtime.block_on(raw_events_above(spec, &acked_highest));
        let verified = runtime.block_on(async {
            let stores = open(spec, true).await;
            let checks = Checks {
                losses_are_the_emulators: false,
                live_resume: true,
            };
            let verified = verify(name, &stores, &mut acked, &mut tally, checks).await;
            // After the check's write at highest+1, nothing may be left above it.
            let after = raw_events_above(
                spec,
                &verified.next.iter().map(|n| n - 1).collect::<Vec<_>>(),
            )
            .await;
            (verified, after)
        });
        let (verified, after) = verified;
        if let Some(above) = &leftovers {
            let (kills, events) = in_flight.unfinished.get_or_insert((0, 0));
            for (k, n) in above.iter().enumerate() {
                // Less the events of a whole write stored without its acknowledgement.
                let unfinished =
                    n.saturating_sub(verified.highest[k].saturating_sub(acked_highest[k]));
                if unfinished > 0 {
                    *kills += 1;
                    *events += unfinished;
                }
            }
        }
        if let Some(after) = after {
            for (k, n) in after.iter().enumerate() {
                if *n > 0 {
                    tally.problems.push(format!(
                        "{name} {}: {n} event item(s) of an unfinished write still stored above the highest after the write at highest+1 (cycle {})",
                        pid_name(k),
                        cycle + 1
                    ));
                }
            }
        }
        let stored = flying
            .iter()
            .filter(|(k, from)| verified.highest[*k] >= from + EVENTS_PER_WRITE - 1)
            .count();
        in_flight.stored += stored;
        highest = verified.next.iter().map(|n| n - 1).collect();
        tally.cycles += 1;
        note(&format!(
            "client_crash[{name}]: cycle {}/{cycles}: killed {} ms after the first acknowledgement, {written} writes acknowledged, {} in flight ({stored} of them stored), check {:.1} s, lost {}, partial {}, problems {}",
            cycle + 1,
            run.killed_after.as_millis(),
            flying.len(),
            t.elapsed().as_secs_f64(),
            tally.lost,
            tally.partial,
            tally.problems.len()
        ));
    }
    tally.elapsed = started.elapsed();
    (tally, in_flight)
}

fn cycles() -> usize {
    match std::env::var("PERSISTENCE_CLIENT_CRASH_CYCLES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PERSISTENCE_CLIENT_CRASH_CYCLES={v:?} is not a number")),
        Err(_) => DEFAULT_CYCLES,
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_writing_process() {
    if let Ok(text) = std::env::var(CHILD_ENV) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the child's runtime")
            .block_on(child(Spec::decode(&text)));
        return;
    }
    let cycles = cycles();
    let mut rng = Rng::seeded();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut sqlite_dirs = Vec::new();
    for backend in ALL {
        if !backend.compiled() || !chosen(backend.name()) {
            continue;
        }
        let Some(location) = locate(backend) else {
            continue;
        };
        if backend == Backend::Sqlite {
            sqlite_dirs.extend(
                std::path::Path::new(&location)
                    .parent()
                    .map(|p| p.to_owned()),
            );
        }
        let spec = Spec {
            backend,
            location,
            namespace: unique("client_crash_"),
        };
        let (tally, in_flight) = campaign(&spec, cycles, &mut rng);
        if !tally.problems.is_empty() {
            note(&format!(
                "client_crash[{}]: the data stays for a look: {CHILD_ENV}={}",
                backend.name(),
                spec.encode()
            ));
        }
        failures.extend(tally.problems.iter().cloned());
        rows.push((backend, tally, in_flight));
    }
    note(&format!(
        "\nclient_crash: SIGKILL of the writing process while {WRITERS} writers stream {EVENTS_PER_WRITE}-event atomic writes tagged {TAG:?}"
    ));
    note(&format!(
        "{:<10} {:>6} {:>13} {:>10} {:>7} {:>22} {:>5} {:>8} {:>8}",
        "backend",
        "cycles",
        "acknowledged",
        "in flight",
        "stored",
        "unfinished (events)",
        "lost",
        "partial",
        "total"
    ));
    let mut summary = BTreeMap::new();
    for (backend, t, f) in &rows {
        note(&format!(
            "{:<10} {:>6} {:>13} {:>10} {:>7} {:>22} {:>5} {:>8} {:>7.1}s",
            backend.name(),
            t.cycles,
            t.acknowledged,
            f.writes,
            f.stored,
            f.unfinished
                .map_or("-".to_owned(), |(kills, events)| format!(
                    "{kills} ({events})"
                )),
            t.lost,
            t.partial,
            t.elapsed.as_secs_f64()
        ));
        summary.insert(backend.name(), t.problems.is_empty());
    }
    if failures.is_empty() {
        for dir in sqlite_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    assert!(
        failures.is_empty(),
        "client crash test failed ({summary:?}):\n{}",
        failures.join("\n")
    );
}
