//! Configuration: a TOML text and `PERSISTENCE_*` variables (split from the input), read as
//! the facade reads them, then the memory backend's section typed and validated: never a
//! panic; every failure is `ConfigInvalid`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persistence_api::ErrorKind;
use persistence_stores::memory::MemoryConfig;
use persistence_stores::Config;

fuzz_target!(|text: &str| {
    // Before the first NUL: the file; after it, one `NAME=value` variable per line.
    let (file, vars) = text.split_once('\u{0}').unwrap_or((text, ""));
    let vars: Vec<(String, String)> = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (format!("PERSISTENCE_{n}"), v.to_string()))
        .collect();
    let result = Config::from_toml_str(file).and_then(|mut config| {
        config.merge_env(vars)?;
        let _ = config.backend();
        let memory: MemoryConfig = config.section("memory")?;
        memory.validate()
    });
    if let Err(e) = result {
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
    }
});
