//! Cassandra rows (events, tag rows, snapshots, durable states, projection offsets) of
//! arbitrary column values: never a panic; a row that does not decode is `Corrupt` (the checks
//! are in `persistence_cassandra::fuzzing`, which the crate's own tests also run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| persistence_cassandra::fuzzing::rows(data));
