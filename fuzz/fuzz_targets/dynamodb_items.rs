//! DynamoDB items (events, tag entries, snapshot heads, offsets, durable states, change
//! entries, highest items) of arbitrary attributes: never a panic; a row that does not decode
//! is `Corrupt` (the checks are in `persistence_dynamodb::fuzzing`, which the crate's own tests
//! also run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| persistence_dynamodb::fuzzing::items(data));
