//! The whole conformance kit against DynamoDB Local (or any endpoint in
//! `PERSISTENCE_DYNAMODB_ENDPOINT`); each case runs under its own journal name in two shared
//! tables.

use std::process::ExitCode;

mod support;

use support::kit::Factory;

fn main() -> ExitCode {
    persistence_tck::run_main_server(
        "dynamodb",
        "PERSISTENCE_DYNAMODB_ENDPOINT",
        |endpoint| async move { Factory::connect(endpoint).await },
    )
}
