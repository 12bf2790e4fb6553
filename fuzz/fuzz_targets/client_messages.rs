//! What the session reads in and rewrites of a client's messages (Parse,
//! Bind, Describe/Close, Query) and of the server's errors, and how it
//! reads the SQL they carry (effects on session state, `EXECUTE` names,
//! routing class): never a panic; a rewrite keeps a well-formed message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidepool::{
    protocol::{frame, messages},
    router::classify::classify_uncached,
    session::state,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::take(&mut buf, 1 << 16) {
        match f.tag {
            b'Q' => {
                if let Ok(sql) = messages::read_query(&f) {
                    sql_of(&sql);
                }
            }
            b'P' => {
                if let Ok((_, sql)) = messages::read_parse(&f) {
                    sql_of(&sql);
                    let renamed =
                        messages::frame_of(&messages::rename_parse(&f, "tp_0123").unwrap());
                    let (name, again) = messages::read_parse(&renamed).unwrap();
                    assert_eq!((name, &*again), ("tp_0123", &*sql));
                    assert_eq!(messages::parse_name(&renamed).unwrap(), "tp_0123");
                    if let Ok(replaced) = messages::replace_parse_query(&f, "SELECT 1") {
                        let replaced = messages::frame_of(&replaced);
                        let (_, q) = messages::read_parse(&replaced).unwrap();
                        assert_eq!(q, "SELECT 1");
                    }
                }
            }
            b'B' => {
                if let Ok((portal, _, _)) = messages::read_bind(&f) {
                    let renamed =
                        messages::frame_of(&messages::rename_bind(&f, "tp_0123").unwrap());
                    let (p, s, _) = messages::read_bind(&renamed).unwrap();
                    assert_eq!((p, s), (portal, "tp_0123"));
                }
            }
            b'D' | b'C' => {
                let _ = messages::read_target(&f);
            }
            b'E' | b'N' => {
                let e = messages::read_error(&f);
                let b = messages::replace_in_error_message(&f, "\"tp_0123\"", "\"s\"");
                let again = messages::read_error(&messages::frame_of(&b));
                assert_eq!(again.code, e.code);
            }
            _ => {}
        }
    }
});

fn sql_of(sql: &str) {
    let _ = state::analyze(sql);
    if let Some((_, at)) = state::executes(sql) {
        assert!(
            sql.get(at).is_some(),
            "EXECUTE's name lies outside the text"
        );
    }
    let _ = classify_uncached(sql);
}
