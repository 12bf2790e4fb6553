//! Configuration files: loaded or refused with errors naming their keys,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::load_str(text) {
        assert!(!errors.is_empty());
    }
});
