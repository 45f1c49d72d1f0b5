//! Offsets in their string form (what the command-line tool and stored projection offsets
//! read): never a panic; what parses prints back to text that parses to the same offset;
//! what does not is `InvalidInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persistence_api::{ErrorKind, Offset};

fuzz_target!(|text: &str| {
    match text.parse::<Offset>() {
        Ok(offset) => {
            let printed = offset.to_string();
            let again: Offset = printed.parse().expect("a printed offset parses");
            assert_eq!(again, offset, "{text:?} -> {printed:?}");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
    }
});
