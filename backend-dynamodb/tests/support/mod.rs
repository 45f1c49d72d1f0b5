//! What several test binaries share: the operation of a request, the SDK responses a test
//! injects, the kit's store factory ([`kit`]) and a connector that injects faults at random
//! ([`chaos`]). Each binary uses part of it.
#![allow(dead_code)]

pub mod chaos;
pub mod kit;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::body::SdkBody;

/// The DynamoDB operation of a request (`PutItem`, `TransactWriteItems`, ...), from its
/// `X-Amz-Target` header.
pub fn operation(headers: &aws_smithy_runtime_api::http::Headers) -> String {
    headers
        .get("x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("?")
        .to_owned()
}

/// A response as DynamoDB sends it: `status` and a JSON `body`.
pub fn response(status: u16, body: String) -> HttpResponse {
    let mut r = HttpResponse::new(status.try_into().unwrap(), SdkBody::from(body));
    r.headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    r
}

/// DynamoDB's error body for the error `kind` (`ThrottlingException`, ...), with `extra`
/// JSON members appended (start it with a comma).
pub fn error_body(kind: &str, extra: &str) -> String {
    format!(
        r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{kind}","message":"injected by the test"{extra}}}"#
    )
}

/// The body of a `TransactionCanceledException` whose reason is `TransactionConflict`.
pub fn tx_conflict_body() -> String {
    error_body(
        "TransactionCanceledException",
        r#","CancellationReasons":[{"Code":"TransactionConflict","Message":"injected"}]"#,
    )
}
