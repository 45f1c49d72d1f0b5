//! The conformance test kit (TCK) of the persistence framework.
//!
//! Every backend, ours or a third party's, proves itself by running the same named cases.
//! A backend hands the kit a [`StoreFactory`] that builds its [`Stores`] in a fresh
//! namespace; the kit picks the cases its [`persistence_api::Capabilities`] allow and runs
//! each as a named test, so the usual filters work and the report lists every case. A case
//! a backend cannot run is reported as ignored, and its name says which capability it lacks;
//! a case that needs a hook the factory does not provide ([`StoreFactory::corrupt_event`])
//! finds out when it runs and is reported as ignored with the hook and the factory's reason;
//! nothing passes silently.
//!
//! A backend's whole test file (`tests/tck.rs`, with `harness = false` in `Cargo.toml`;
//! a compiled and tested version is the facade's `tests/readme_tck.rs`):
//!
//! ```ignore
//! use std::process::ExitCode;
//! use persistence_api::{Result, Stores};
//!
//! struct MyFactory;
//!
//! #[persistence_api::async_trait]
//! impl persistence_tck::StoreFactory for MyFactory {
//!     async fn create(&self, namespace: &str) -> Result<Stores> {
//!         // Build your stores in a namespace no other case uses.
//!         my_backend::open(my_backend::Config::with_namespace(namespace)).await
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     persistence_tck::run_main("my-backend", || async { Ok(MyFactory) })
//! }
//! ```
//!
//! The kit's README (`tck/README.md`) maps every `# Behavior` bullet of the API to the
//! cases that prove it, and a unit test keeps that table true. The checking layer in front
//! of every backend has its own cases, [`layer::layer_cases`], run apart from a backend's.
//!
//! Cases follow `shared/tck-reference.md` (the Pekko persistence TCK and the query specs of
//! the Cassandra, JDBC and R2DBC plugins) and add what none of them checks: racing writers,
//! atomic-write and event-size limits at their edges, 10,000-event and 5 MB replays, ids at
//! 255 bytes and with unusual characters, tag offsets resumed from every position, and the
//! delay of live queries.
#![deny(missing_docs)]

pub mod bench;
mod cases;
mod context;
pub mod fault;
pub mod fuzz;
pub mod layer;
pub mod sweep;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use persistence_api::{Capabilities, Error, PersistenceId, Result, SequenceNr, Stores};

pub use cases::{all_cases, Case, Finish, Need};
pub use context::Ctx;

/// How a backend under test builds its stores.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// Builds stores in a fresh namespace: nothing any other namespace wrote is visible
    /// (not even to `current_persistence_ids`). Called again with the same namespace, it
    /// opens new stores over the same data, as a process restart would (the durability
    /// cases rely on it); nothing cached by the first stores may be shared. `namespace` is short, unique per case, and
    /// made of `[a-z0-9_]`; use it as a journal name, table prefix, schema or keyspace.
    async fn create(&self, namespace: &str) -> Result<Stores>;

    /// The events (or ids) the stores read per page of a replay or query: their
    /// configured page size. The paging cases write across its boundaries and replay with
    /// `max` at it and one above. `None` (the default): the kit takes
    /// [`DEFAULT_PAGE_SIZE`], which still runs every case at that scale.
    fn page_size(&self) -> Option<u32> {
        None
    }

    /// Time the kit allows beyond the declared [`Capabilities::live_query_max_delay`] before
    /// a live delivery counts as missing. Zero (the default) for a plain run: the declared
    /// delay holds for a server that answers. A run that slows the backend on purpose
    /// (throttling and server errors injected, so requests are retried with back-off)
    /// gives the time its faults may add: what such a run checks is that nothing is lost
    /// or delivered twice. The quiet windows (how long a stream is watched for what it must
    /// not deliver) stay at the declared delay.
    fn live_delay_allowance(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Removes what [`StoreFactory::create`] made for `namespace`, after its case ran.
    async fn cleanup(&self, _namespace: &str) -> Result<()> {
        Ok(())
    }

    /// Damages the stored event `(persistence_id, sequence_nr)` of `namespace` as `what`
    /// says, by writing directly to the database (the raw driver, not the stores), and
    /// returns the name of the column or attribute it damaged. Every stored copy of the
    /// event is damaged (a tag index that copies the event too), so every read of it meets
    /// the damage. The `corruption::*` cases check that reading it fails naming the event
    /// (see [`Corruption`]).
    ///
    /// By default, and for a `what` the store's own type system rules out, it returns an
    /// [`persistence_api::ErrorKind::Unsupported`] error saying why; the case is then
    /// reported as ignored with that reason, never as passed.
    async fn corrupt_event(
        &self,
        _namespace: &str,
        _persistence_id: &PersistenceId,
        _sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        Err(Error::unsupported(format!(
            "this factory does not implement StoreFactory::corrupt_event ({what:?})"
        )))
    }

    /// Empties the journal's secondary structures of `namespace` by writing directly to
    /// the database (the raw driver, not the stores): every tag index entry (with the
    /// counters, progress and bucket records a backend keeps for its tag queries) and
    /// every entry of the persistence-id registry, leaving the events and the per-id
    /// metadata (highest sequence number) in place, as a lost or truncated index table
    /// would. The `maintenance::*` cases then check that
    /// [`persistence_api::JournalMaintenance::rebuild_persistence_id`] restores them.
    ///
    /// By default it returns an [`persistence_api::ErrorKind::Unsupported`] error saying
    /// why; the case is then reported as ignored with that reason, never as passed.
    async fn drop_indexes(&self, _namespace: &str) -> Result<()> {
        Err(Error::unsupported(
            "this factory does not implement StoreFactory::drop_indexes",
        ))
    }

    /// Damages the stored snapshot `(persistence_id, sequence_nr)` of `namespace`, like
    /// [`StoreFactory::corrupt_event`] (never with [`Corruption::Tags`]), and returns the
    /// name of the column or attribute it damaged.
    async fn corrupt_snapshot(
        &self,
        _namespace: &str,
        _persistence_id: &PersistenceId,
        _sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        Err(Error::unsupported(format!(
            "this factory does not implement StoreFactory::corrupt_snapshot ({what:?})"
        )))
    }
}

/// How [`StoreFactory::corrupt_event`] and [`StoreFactory::corrupt_snapshot`] damage a
/// stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Corruption {
    /// The payload's bytes replaced by bytes no codec wrote (`0xff` repeated: a CBOR
    /// "break" out of place); the serializer id and manifest are kept. The store holds
    /// payloads as opaque bytes, so it returns them; decoding them (`Entity::recover`,
    /// `PersistentEvent::decode_payload`) fails with `Serialization` naming the record.
    Payload,
    /// The tags column or attribute replaced by a value that is not a list of tags.
    Tags,
    /// The metadata's columns or attributes made unreadable (bytes without the serializer
    /// id they need, or a value of the wrong type).
    Metadata,
    /// Another column or attribute of the record, of the factory's choosing (the payload
    /// manifest, a number), replaced by a value of the wrong type or removed where the
    /// driver always writes one.
    Column,
}

/// The page size the paging cases assume when [`StoreFactory::page_size`] says nothing.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// How long one case may run before it fails.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// The outcome of one case in [`run_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The case passed.
    Passed,
    /// The case failed, with the message.
    Failed(String),
    /// The case did not run; the text names the capability the backend lacks.
    Skipped(String),
}

/// What [`run_all`] reports: one row per case.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(case name, outcome)` in the order the cases ran.
    pub cases: Vec<(String, Outcome)>,
}

impl Report {
    /// How many passed, failed and were skipped.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for (_, o) in &self.cases {
            match o {
                Outcome::Passed => c.0 += 1,
                Outcome::Failed(_) => c.1 += 1,
                Outcome::Skipped(_) => c.2 += 1,
            }
        }
        c
    }

    /// One line: passed, failed, and skipped with the capability each skip lacks, by count.
    pub fn summary(&self) -> String {
        let (passed, failed, skipped) = self.counts();
        let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
        for (_, o) in &self.cases {
            if let Outcome::Skipped(missing) = o {
                *reasons.entry(missing).or_default() += 1;
            }
        }
        let mut line = format!("{passed} passed; {failed} failed; {skipped} skipped");
        if !reasons.is_empty() {
            let r: Vec<String> = reasons
                .iter()
                .map(|(r, n)| format!("{n} needs {r}"))
                .collect();
            line.push_str(&format!(" ({})", r.join(", ")));
        }
        line
    }
}

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

async fn run_case(
    factory: Arc<dyn StoreFactory>,
    case: &Case,
    namespace: String,
) -> std::result::Result<Finish, String> {
    let stores = factory.create(&namespace).await.map_err(|e| {
        format!("the factory could not create stores for namespace {namespace}: {e}")
    })?;
    let ctx = Ctx::new(factory.clone(), stores, namespace.clone());
    let fut = AssertUnwindSafe((case.run)(ctx)).catch_unwind();
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, fut).await {
        Err(_) => Err(format!("case timed out after {CASE_TIMEOUT:?}")),
        Ok(Err(panic)) => Err(panic_message(&panic)),
        Ok(Ok(finish)) => Ok(finish),
    };
    if let Err(e) = factory.cleanup(&namespace).await {
        eprintln!("cleanup of namespace {namespace} failed: {e}");
    }
    outcome
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "the case panicked".to_string()
    }
}

/// Runs every case against `factory` and returns the report; for callers that want the
/// kit inside their own harness. `filter` keeps the cases whose name contains it.
pub async fn run_all(factory: Arc<dyn StoreFactory>, filter: Option<&str>) -> Report {
    let id = run_id();
    let mut report = Report::default();
    let probe = factory.create(&format!("t{id}_probe")).await;
    let caps = match probe {
        Ok(stores) => stores.capabilities(),
        Err(e) => {
            report.cases.push((
                "factory".into(),
                Outcome::Failed(format!("cannot create stores: {e}")),
            ));
            return report;
        }
    };
    let _ = factory.cleanup(&format!("t{id}_probe")).await;
    for (i, case) in all_cases().into_iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        if let Some(missing) = case.missing(&caps) {
            report
                .cases
                .push((case.name.to_string(), Outcome::Skipped(missing)));
            continue;
        }
        let outcome = match run_case(factory.clone(), &case, format!("t{id}_{i}")).await {
            Ok(Finish::Passed) => Outcome::Passed,
            Ok(Finish::Skipped(missing)) => Outcome::Skipped(missing),
            Err(e) => Outcome::Failed(e),
        };
        report.cases.push((case.name.to_string(), outcome));
    }
    report
}

/// Reads a server's address from the environment variable `var`.
///
/// Unset: prints a loud notice that the suite is skipped and returns `None`; but when the
/// environment variable `CI` is `true`, a missing server is a failure, so it panics with
/// the reason (a panic, not an exit, so a `#[test]` calling it fails with the message
/// shown instead of ending the process before libtest prints anything). Never a silent
/// pass.
pub fn server_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false);
            if ci {
                panic!(
                    "{var} is not set, so this backend's suite has no server to run against; \
                     with CI=true that is a failure (start the server with scripts/servers/*.sh, or run scripts/test.sh)"
                );
            }
            eprintln!(
                "\n*** SKIPPED: {var} is not set, so this backend's conformance suite did not run. ***\n\
                 *** Run scripts/test.sh (which starts the servers) to run it.                   ***\n"
            );
            None
        }
    }
}

/// Runs the whole kit as a test binary (`harness = false`), with libtest's command line
/// and output: every case is a named trial. A case the backend's capabilities rule out is
/// reported as ignored (never as passed, whatever `--ignored` or `--include-ignored` say),
/// its name ends with `[needs <capability>]`, and the summary line after libtest's names
/// each missing capability with the number of cases it kept from running.
///
/// `make` builds the factory once, inside the kit's tokio runtime.
pub fn run_main<F, Fut, S>(backend: &str, make: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S>>,
    S: StoreFactory,
{
    run_cases(backend, make, all_cases())
}

/// [`run_main`] for the checking layer's own cases ([`layer::layer_cases`]) instead of the
/// backend cases: the kit's own `tests/layer.rs` runs them over the in-memory backend.
pub fn run_layer_main<F, Fut, S>(backend: &str, make: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S>>,
    S: StoreFactory,
{
    run_cases(backend, make, layer::layer_cases())
}

fn run_cases<F, Fut, S>(backend: &str, make: F, cases: Vec<Case>) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S>>,
    S: StoreFactory,
{
    let args = libtest_mimic::Arguments::from_args();
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime"),
    );
    let factory: Arc<dyn StoreFactory> = match runtime.block_on(make()) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("error: could not set up the {backend} backend for the conformance kit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let id = run_id();
    let caps: Capabilities = match runtime.block_on(factory.create(&format!("t{id}_probe"))) {
        Ok(stores) => stores.capabilities(),
        Err(e) => {
            eprintln!("error: the {backend} factory could not create stores: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = runtime.block_on(factory.cleanup(&format!("t{id}_probe")));
    let skips = Skips::default();
    let trials = cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            if let Some(missing) = case.missing(&caps) {
                return skips.trial(
                    backend,
                    format!("{} [needs {missing}]", case.name),
                    format!("needs {missing}"),
                );
            }
            let runtime = runtime.clone();
            let factory = factory.clone();
            let namespace = format!("t{id}_{i}");
            let skips = skips.clone();
            // Ignorable: a case can find out only when it runs that the factory lacks a
            // hook it needs (`StoreFactory::corrupt_event`); it is then reported ignored.
            libtest_mimic::Trial::ignorable_test(case.name, move || {
                match runtime.block_on(run_case(factory, &case, namespace)) {
                    Ok(Finish::Passed) => Ok(libtest_mimic::Completion::Completed),
                    Ok(Finish::Skipped(missing)) => Ok(skips.count(format!("needs {missing}"))),
                    Err(e) => Err(libtest_mimic::Failed::from(e)),
                }
            })
            .with_kind(backend)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    println!(
        "{}",
        skips.summary(backend, &conclusion, caps.live_query_max_delay)
    );
    conclusion.exit_code()
}

/// [`run_main`] for a backend that needs a server whose address is in the environment
/// variable `var`: `make` gets the address.
///
/// With `var` unset, every case is still listed, each reported as ignored with the reason
/// "no server", so the summary line reads "0 passed; 0 failed; N ignored" and names the
/// variable, instead of a green run that tested nothing. With `CI=true`, unset is a
/// failure (see [`server_env`]).
pub fn run_main_server<F, Fut, S>(backend: &str, var: &str, make: F) -> ExitCode
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<S>>,
    S: StoreFactory,
{
    match server_env(var) {
        Some(address) => run_main(backend, move || make(address)),
        None => {
            let args = libtest_mimic::Arguments::from_args();
            let skips = Skips::default();
            let reason = format!("no server: {var} is not set");
            let trials = all_cases()
                .into_iter()
                .map(|case| skips.trial(backend, case.name.to_string(), reason.clone()))
                .collect();
            let conclusion = libtest_mimic::run(&args, trials);
            println!("{}", skips.summary(backend, &conclusion, None));
            conclusion.exit_code()
        }
    }
}

/// The skipped cases of one run, counted by reason as their trials run (so a filter
/// counts only the cases it kept).
#[derive(Clone, Default)]
struct Skips(Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>);

impl Skips {
    /// A trial that reports itself ignored with `reason`, whatever the command line says.
    fn trial(&self, backend: &str, name: String, reason: String) -> libtest_mimic::Trial {
        let skips = self.clone();
        libtest_mimic::Trial::ignorable_test(name, move || Ok(skips.count(reason)))
            .with_kind(backend)
    }

    /// Counts one skip for `reason` and returns the ignored completion that reports it.
    fn count(&self, reason: String) -> libtest_mimic::Completion {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.clone())
            .or_default() += 1;
        libtest_mimic::Completion::ignored_with(reason)
    }

    /// The kit's summary line: passed, failed, and skipped by reason; and the slowest live
    /// delivery beside the declared delay.
    fn summary(
        &self,
        backend: &str,
        conclusion: &libtest_mimic::Conclusion,
        declared: Option<Duration>,
    ) -> String {
        let skips = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let skipped: usize = skips.values().sum();
        let reasons: Vec<String> = skips.iter().map(|(r, n)| format!("{n} {r}")).collect();
        let mut line = format!(
            "kit summary [{backend}]: {} passed; {} failed; {skipped} skipped",
            conclusion.num_passed, conclusion.num_failed
        );
        if !reasons.is_empty() {
            line.push_str(&format!(" ({})", reasons.join(", ")));
        }
        let (worst, timed) = context::live_delivery_stats();
        if timed > 0 {
            line.push_str(&format!(
                "; slowest of {timed} live deliveries {worst:?} after the write (declared {})",
                declared.map_or("nothing".to_string(), |d| format!("{d:?}"))
            ));
        }
        line
    }
}

#[cfg(test)]
mod skip_tests {
    use super::Skips;

    fn run(args: &[&str]) -> libtest_mimic::Conclusion {
        let mut argv = vec!["kit"];
        argv.extend_from_slice(args);
        let args = libtest_mimic::Arguments::from_iter(argv);
        let skips = Skips::default();
        let trials = vec![skips.trial("test", "a::skipped".into(), "needs durable".into())];
        libtest_mimic::run(&args, trials)
    }

    /// A skip is never a pass, whatever the flags: plain, `--include-ignored` and
    /// `--ignored` each report it ignored or leave it out, never passed.
    #[test]
    fn a_skip_never_reports_a_pass() {
        for flags in [&[][..], &["--include-ignored"], &["--ignored"]] {
            let c = run(flags);
            assert_eq!(c.num_passed, 0, "with {flags:?}: {c:?}");
            assert_eq!(c.num_failed, 0, "with {flags:?}: {c:?}");
            assert_eq!(
                c.num_ignored + c.num_filtered_out,
                1,
                "with {flags:?}: ignored or filtered out: {c:?}"
            );
        }
        assert_eq!(run(&["--include-ignored"]).num_ignored, 1);
    }
}

#[cfg(test)]
mod traceability {
    //! Keeps the table in the kit's README honest: every `# Behavior` bullet of
    //! persistence-api's traits, of `Stores` and of `OffsetStore` has a row, every row names a bullet
    //! that exists, and every case (or test file) a row cites exists.

    use std::collections::{BTreeMap, BTreeSet};

    const README: &str = include_str!("../README.md");
    const SOURCES: [(&str, &str); 5] = [
        (
            "persistence-api/src/traits.rs",
            include_str!("../../persistence-api/src/traits.rs"),
        ),
        (
            "persistence-api/src/stores.rs",
            include_str!("../../persistence-api/src/stores.rs"),
        ),
        (
            "persistence-api/src/offsets.rs",
            include_str!("../../persistence-api/src/offsets.rs"),
        ),
        (
            "persistence-api/src/durable_state.rs",
            include_str!("../../persistence-api/src/durable_state.rs"),
        ),
        (
            "persistence-api/src/maintenance.rs",
            include_str!("../../persistence-api/src/maintenance.rs"),
        ),
    ];

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `Owner::method` -> its bullets, whitespace squashed.
    fn bullets() -> BTreeMap<String, Vec<String>> {
        let mut all = BTreeMap::<String, Vec<String>>::new();
        for (file, src) in SOURCES {
            let mut owner = String::new();
            let mut pending: Vec<String> = Vec::new();
            let mut in_behavior = false;
            for line in src.lines() {
                let t = line.trim();
                if let Some(rest) = t
                    .strip_prefix("pub trait ")
                    .or_else(|| t.strip_prefix("impl "))
                {
                    if let Some(name) = rest.split([' ', ':', '<', '{']).next() {
                        owner = name.to_string();
                    }
                }
                if t == "/// # Behavior" {
                    in_behavior = true;
                    continue;
                }
                if in_behavior {
                    if let Some(b) = t.strip_prefix("/// - ") {
                        pending.push(b.to_string());
                        continue;
                    }
                    if let Some(more) = t.strip_prefix("///   ") {
                        let last = pending
                            .last_mut()
                            .expect("a bullet before its continuation");
                        last.push(' ');
                        last.push_str(more);
                        continue;
                    }
                    in_behavior = false;
                }
                if t.starts_with("//") || pending.is_empty() {
                    continue;
                }
                if let Some(i) = t.find("fn ") {
                    let name: String = t[i + 3..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let key = format!("{owner}::{name}");
                    all.entry(key)
                        .or_default()
                        .extend(pending.drain(..).map(|b| squash(&b)));
                }
            }
            assert!(
                pending.is_empty(),
                "{file}: bullets without a method: {pending:?}"
            );
        }
        all
    }

    /// `(method, bullet prefix, cited names)` of the table.
    fn rows() -> Vec<(String, String, Vec<String>)> {
        let start = README
            .find("<!-- traceability:start -->")
            .expect("the table's start marker");
        let end = README
            .find("<!-- traceability:end -->")
            .expect("the table's end marker");
        README[start..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
                assert_eq!(cells.len(), 3, "three cells: {l}");
                let method = cells[0].trim().trim_matches('`').to_string();
                let cited = cells[2]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                (method, squash(cells[1]), cited)
            })
            .collect()
    }

    #[test]
    fn every_bullet_has_a_case_and_every_row_a_bullet() {
        let bullets = bullets();
        let total: usize = bullets.values().map(Vec::len).sum();
        assert!(total >= 40, "bullets found: {total} in {bullets:#?}");
        let cases: BTreeSet<&str> = crate::all_cases()
            .iter()
            .chain(crate::layer::layer_cases().iter())
            .map(|c| c.name)
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut covered = BTreeSet::<(String, usize)>::new();
        for (method, prefix, cited) in rows() {
            let of_method = bullets.get(&method).unwrap_or_else(|| {
                panic!("the table names {method}, which has no # Behavior bullets")
            });
            let matching: Vec<usize> = (0..of_method.len())
                .filter(|&i| of_method[i].starts_with(&prefix))
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "the row {method} \"{prefix}\" must start exactly one of its bullets: {of_method:#?}"
            );
            assert!(
                !cited.is_empty(),
                "the row {method} \"{prefix}\" cites no case"
            );
            for name in &cited {
                if name.contains('/') {
                    assert!(
                        root.join(name).is_file(),
                        "the row {method} \"{prefix}\" cites {name}, which is no file"
                    );
                } else {
                    assert!(
                        cases.contains(name.as_str()),
                        "the row {method} \"{prefix}\" cites {name}, which is no case"
                    );
                }
            }
            covered.insert((method, matching[0]));
        }
        for (method, list) in &bullets {
            for (i, b) in list.iter().enumerate() {
                assert!(
                    covered.contains(&(method.clone(), i)),
                    "{method}: no row of the README's table covers the bullet \"{b}\""
                );
            }
        }
    }
}
