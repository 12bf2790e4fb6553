//! Configuration files: loaded or refused with errors naming their keys,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::{app::runtime::checks, config::Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::load_str_with(text, &checks) {
        assert!(!errors.is_empty());
    }
});
