//! An HTTP connector between the SDK and DynamoDB Local that answers a random share of the
//! requests as AWS does under load (DynamoDB Local never throttles): throttling
//! (`ThrottlingException`, `ProvisionedThroughputExceededException`), `500
//! InternalServerError` either before the request reaches the server or after the server
//! applied it (the answer is lost, the write is stored), and `TransactionConflict`
//! cancellations of transactions. Every injection is counted by kind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;

use super::{error_body, operation, response, tx_conflict_body};

/// The share of attempts answered with each fault.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// Throttled (half `ThrottlingException`, half `ProvisionedThroughputExceededException`).
    pub throttled: f64,
    /// `500 InternalServerError` (half before the server, half after it applied the request).
    pub server_errors: f64,
    /// Of the `TransactWriteItems` attempts that got through the above, cancelled with
    /// reason `TransactionConflict` before the server.
    pub tx_conflicts: f64,
}

/// The injections made so far, and the random source.
#[derive(Debug)]
pub struct Plan {
    rates: Rates,
    seed: u64,
    state: Mutex<(u64, BTreeMap<&'static str, u64>)>,
}

impl Plan {
    /// A plan with `rates`, drawing from `seed`.
    pub fn new(rates: Rates, seed: u64) -> Arc<Plan> {
        Arc::new(Plan {
            rates,
            seed,
            state: Mutex::new((seed, BTreeMap::new())),
        })
    }

    /// The seed (print it: the same seed gives the same draws in the same order).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Attempts seen and faults injected, by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.state.lock().unwrap().1.clone()
    }

    /// A uniform draw in [0, 1) (splitmix64) and the counter of `kind` raised.
    fn draw(&self, count: &'static str) -> f64 {
        let mut s = self.state.lock().unwrap();
        *s.1.entry(count).or_default() += 1;
        s.0 = s.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn count(&self, kind: &'static str) {
        *self.state.lock().unwrap().1.entry(kind).or_default() += 1;
    }

    /// What to do with one attempt of `op`.
    fn choose(&self, op: &str) -> Option<&'static str> {
        let r = self.draw("attempts");
        let Rates {
            throttled,
            server_errors,
            tx_conflicts,
        } = self.rates;
        let half = self.draw("draws") < 0.5;
        let kind = if r < throttled {
            Some(if half {
                "ThrottlingException"
            } else {
                "ProvisionedThroughputExceededException"
            })
        } else if r < throttled + server_errors {
            Some(if half {
                "InternalServerError"
            } else {
                "InternalServerError after apply"
            })
        } else if op == "TransactWriteItems" && self.draw("draws") < tx_conflicts {
            Some("TransactionConflict")
        } else {
            None
        };
        if let Some(kind) = kind {
            self.count(kind);
        }
        kind
    }
}

#[derive(Debug)]
struct Chaos {
    inner: SharedHttpConnector,
    plan: Arc<Plan>,
}

impl HttpConnector for Chaos {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let op = operation(request.headers());
        let ready = |r| HttpConnectorFuture::ready(Ok(r));
        match self.plan.choose(&op) {
            None => self.inner.call(request),
            Some(kind @ ("ThrottlingException" | "ProvisionedThroughputExceededException")) => {
                ready(response(400, error_body(kind, "")))
            }
            Some("InternalServerError") => {
                ready(response(500, error_body("InternalServerError", "")))
            }
            Some("TransactionConflict") => ready(response(400, tx_conflict_body())),
            Some(_) => {
                let inner = self.inner.clone();
                HttpConnectorFuture::new(async move {
                    let _applied = inner.call(request).await?;
                    Ok(response(500, error_body("InternalServerError", "")))
                })
            }
        }
    }
}

/// `base` (the driver's own HTTP client) with `plan`'s faults in front of it.
pub fn http_client(base: SharedHttpClient, plan: Arc<Plan>) -> SharedHttpClient {
    http_client_fn(move |settings, components| {
        SharedHttpConnector::new(Chaos {
            inner: aws_smithy_runtime_api::client::http::HttpClient::http_connector(
                &base, settings, components,
            ),
            plan: plan.clone(),
        })
    })
}
