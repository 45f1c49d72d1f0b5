//! SQL rows (events, snapshots, durable states, projection offsets) of arbitrary column values:
//! never a panic; a row that does not decode is `Corrupt` (the checks are in
//! `persistence_sql::fuzzing`, which the crate's own tests also run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| persistence_sql::fuzzing::rows(data));
