//! Persistence ids and projection ids from arbitrary text: never a panic; an accepted id
//! is the text itself within the documented limits, a refused one is `InvalidInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persistence_api::{
    ErrorKind, PersistenceId, ProjectionId, MAX_PERSISTENCE_ID_BYTES, MAX_PROJECTION_ID_PART_BYTES,
};

fuzz_target!(|text: &str| {
    match PersistenceId::new(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert!(!text.is_empty() && text.len() <= MAX_PERSISTENCE_ID_BYTES);
            assert_eq!(id.to_string(), text);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
    }
    let (name, key) = text.split_once('\u{0}').unwrap_or((text, "k"));
    match ProjectionId::new(name, key) {
        Ok(id) => {
            assert!(name.len() <= MAX_PROJECTION_ID_PART_BYTES);
            assert!(key.len() <= MAX_PROJECTION_ID_PART_BYTES);
            assert!(!name.chars().any(char::is_control) && !key.chars().any(char::is_control));
            let _ = id.to_string();
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
    }
});
