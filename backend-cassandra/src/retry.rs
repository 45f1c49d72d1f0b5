//! Retries: the scylla driver's own [`DefaultRetryPolicy`] decides (the same decisions as
//! the DataStax drivers' default: a read timeout with enough replicas answering, an
//! unavailable coordinator once on the next node, an idempotent request after a broken
//! connection, ...), and [`CountingRetryPolicy`] around it counts each retry it allows as
//! [`persistence_api::metrics::RETRIES_TOTAL`] with operation `cql_request` (the driver
//! does not know which of the backend's operations a statement serves).

use std::sync::Arc;

use scylla::policies::retry::{
    DefaultRetryPolicy, RequestInfo, RetryDecision, RetryPolicy, RetrySession,
};

/// The `operation` label of the retries the driver makes.
pub(crate) const OPERATION: &str = "cql_request";

/// [`DefaultRetryPolicy`]'s decisions, each retry counted.
#[derive(Debug)]
pub(crate) struct CountingRetryPolicy {
    inner: DefaultRetryPolicy,
}

impl CountingRetryPolicy {
    /// The policy the backend's sessions use.
    pub(crate) fn shared() -> Arc<dyn RetryPolicy> {
        Arc::new(CountingRetryPolicy {
            inner: DefaultRetryPolicy::new(),
        })
    }
}

impl RetryPolicy for CountingRetryPolicy {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(CountingRetrySession {
            inner: self.inner.new_session(),
        })
    }
}

struct CountingRetrySession {
    inner: Box<dyn RetrySession>,
}

impl RetrySession for CountingRetrySession {
    fn decide_should_retry(&mut self, request_info: RequestInfo) -> RetryDecision {
        let decision = self.inner.decide_should_retry(request_info);
        if matches!(
            decision,
            RetryDecision::RetrySameTarget(_) | RetryDecision::RetryNextTarget(_)
        ) {
            persistence_api::metrics::record_retry(crate::Cassandra::NAME, OPERATION);
        }
        decision
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}
