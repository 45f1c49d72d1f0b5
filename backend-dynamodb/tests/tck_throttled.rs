//! The whole conformance kit against DynamoDB Local with AWS's transient errors injected at
//! random between the SDK and the server (`tests/support/chaos.rs`): by default 10 % of all
//! attempts throttled (`ThrottlingException`, `ProvisionedThroughputExceededException`),
//! 5 % answered `500 InternalServerError` (half before the request reaches the server, half
//! after the server applied it: the answer is lost, the write is stored), and 5 % of the
//! remaining `TransactWriteItems` cancelled with `TransactionConflict`. Every case must pass
//! as it does without faults: nothing lost, nothing stored twice, no retryable error
//! reaching the caller (the driver retries each up to `max_retries` times).
//!
//! `PERSISTENCE_CHAOS_THROTTLED`, `PERSISTENCE_CHAOS_SERVER_ERRORS`,
//! `PERSISTENCE_CHAOS_TX_CONFLICTS` (shares, 0 to 1) and `PERSISTENCE_CHAOS_SEED` change the
//! plan (`scripts/test.sh --long` runs a heavier one); the injected counts and the seed are
//! printed at the end.
//!
//! `cargo test -p persistence-dynamodb --test tck_throttled` with
//! `PERSISTENCE_DYNAMODB_ENDPOINT` set.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

mod support;

use support::chaos::{self, Plan, Rates};
use support::kit::Factory;

/// What the faults may add to a live delivery: each request of a poll may be retried with
/// back-off, and a tag number skipped by a retried counter update is filled only after the
/// tag gap timeout.
const LIVE_DELAY_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(5);

fn share(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| (0.0..=1.0).contains(v))
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let rates = Rates {
        throttled: share("PERSISTENCE_CHAOS_THROTTLED", 0.10),
        server_errors: share("PERSISTENCE_CHAOS_SERVER_ERRORS", 0.05),
        tx_conflicts: share("PERSISTENCE_CHAOS_TX_CONFLICTS", 0.05),
    };
    let seed = std::env::var("PERSISTENCE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let plan: Arc<Mutex<Option<Arc<Plan>>>> = Arc::default();
    let held = plan.clone();
    let code = persistence_tck::run_main_server(
        "dynamodb (throttled)",
        "PERSISTENCE_DYNAMODB_ENDPOINT",
        move |endpoint| async move {
            let config = persistence_dynamodb::DynamoDbConfig {
                // Tables of its own: the maintenance cases scan the whole journal table.
                journal_table: "tck_throttled_journal".into(),
                snapshot_table: "tck_throttled_snapshot".into(),
                // Short back-offs keep the run short; the number of retries is the
                // default's.
                retry_base_delay: std::time::Duration::from_millis(2),
                retry_max_delay: std::time::Duration::from_millis(50),
                ..Factory::config(endpoint)
            };
            Factory::connect_with(config, |base| {
                let p = Plan::new(rates, seed);
                *held.lock().unwrap() = Some(p.clone());
                Some(chaos::http_client(base, p))
            })
            .await
            .map(|f| f.with_live_delay_allowance(LIVE_DELAY_ALLOWANCE))
        },
    );
    if let Some(plan) = plan.lock().unwrap().as_ref() {
        let counts = plan.counts();
        let attempts = counts.get("attempts").copied().unwrap_or(0);
        let injected: Vec<String> = counts
            .iter()
            .filter(|(k, _)| !matches!(**k, "attempts" | "draws"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "injected faults [dynamodb, seed {}, rates {rates:?}]: {attempts} attempts; {}",
            plan.seed(),
            injected.join(", ")
        );
    }
    code
}
