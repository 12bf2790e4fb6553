//! SCRAM-SHA-256 messages from a client: the exchange answers or fails
//! with an error, never a panic, and never accepts a client that does not
//! know the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::auth::{ScramServer, ScramVerifier};

fuzz_target!(|data: &[u8]| {
    // client-first-message, a NUL, client-final-message.
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let verifier = ScramVerifier::from_password("pencil", b"tidepool-fuzz-salt", 16);
    let mut server = ScramServer::new(verifier, "fyko+d2lbbFgONRv9qkxdawL".into());
    if server.client_first("SCRAM-SHA-256", first).is_err() {
        return;
    }
    assert!(
        server.client_final(last).is_err(),
        "a client proof made without the password was accepted"
    );
});
