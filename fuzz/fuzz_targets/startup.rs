//! Startup packets: parsed or refused, never a panic; every parameter that
//! becomes a session setting is quoted so that the server reads back exactly
//! the value sent (no way out of the literal, whatever
//! `standard_conforming_strings` says).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidepool::{
    backend::quote_literal,
    protocol::frame::{self, StartupPacket},
    server::startup::session_settings,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(StartupPacket::Startup { params, .. })) = frame::take_startup(&mut buf) else {
        return;
    };
    for (_, value) in session_settings(&params) {
        let quoted = quote_literal(&value);
        assert_eq!(
            unquote(&quoted, true).as_deref(),
            Some(value.as_str()),
            "{quoted}"
        );
        assert_eq!(
            unquote(&quoted, false).as_deref(),
            Some(value.as_str()),
            "{quoted}"
        );
    }
});

/// The value of an SQL string literal as PostgreSQL reads it, with
/// `standard_conforming_strings` on or off; `None` if `lit` is not exactly
/// one literal.
fn unquote(lit: &str, standard: bool) -> Option<String> {
    let (escapes, body) = match lit.strip_prefix("E'") {
        Some(rest) => (true, rest),
        None => (!standard, lit.strip_prefix('\'')?),
    };
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            // The end of the literal: nothing may follow.
            '\'' => return chars.next().is_none().then_some(out),
            '\\' if escapes => match chars.next()? {
                // tidepool doubles backslashes and nothing else.
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}
