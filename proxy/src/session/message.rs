//! A client message, decoded once: what the session reads of each frame
//! (statement and portal names, query text), beside the frame it
//! forwards unchanged.

use std::borrow::Cow;

use crate::protocol::{FrameRef, messages};

/// What a client frame says, as far as the session reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A simple Query and its text (bytes that are not UTF-8 replaced, for
    /// reading only).
    Query(Cow<'a, str>),
    Parse {
        name: &'a str,
        query: Cow<'a, str>,
        /// The client's kept unnamed Parse, byte for byte, again (known to
        /// the session, which decoded it with what it kept: never set by
        /// [`decode`]).
        again: bool,
    },
    Bind {
        statement: &'a str,
    },
    /// Describe of a statement (`kind` b'S') or portal (b'P').
    Describe {
        kind: u8,
        name: &'a str,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    Execute,
    Sync,
    Flush,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
}

impl Message<'_> {
    /// The SQL a Query or Parse carries.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Message::Query(q) => Some(q),
            Message::Parse { query, .. } => Some(query),
            _ => None,
        }
    }
}

/// Decodes `f`; a malformed or unknown message is a protocol violation
/// (its description). Inlined into its two callers: most messages it
/// reads (Bind, Describe, Execute, Sync) take a few comparisons, less
/// than a call that returns the message through memory.
#[inline]
pub fn decode<'a>(f: impl Into<FrameRef<'a>>) -> Result<Message<'a>, String> {
    let f = f.into();
    let bad = |e: crate::protocol::FrameError| e.to_string();
    Ok(match f.tag {
        b'Q' => Message::Query(messages::read_query(f).map_err(bad)?),
        b'P' => {
            let (name, query) = messages::read_parse(f).map_err(bad)?;
            Message::Parse {
                name,
                query,
                again: false,
            }
        }
        b'B' => Message::Bind {
            statement: messages::read_bind(f).map_err(bad)?.1,
        },
        b'D' | b'C' => {
            let (kind, name) = messages::read_target(f).map_err(bad)?;
            if f.tag == b'D' {
                Message::Describe { kind, name }
            } else {
                Message::Close { kind, name }
            }
        }
        b'E' => Message::Execute,
        b'S' => Message::Sync,
        b'H' => Message::Flush,
        b'F' => Message::FunctionCall,
        b'd' => Message::CopyData,
        b'c' => Message::CopyDone,
        b'f' => Message::CopyFail,
        b'X' => Message::Terminate,
        other => return Err(format!("invalid frontend message type {}", other as char)),
    })
}

/// The length of an unnamed Parse's query text, when that text is valid
/// UTF-8: what [`decode_parse_again`] needs to decode the same Parse again.
/// `None` for a named, malformed or not UTF-8 Parse.
pub fn unnamed_parse_text_len(f: FrameRef<'_>) -> Option<u32> {
    match messages::read_parse(f) {
        Ok(("", Cow::Borrowed(q))) => u32::try_from(q.len()).ok(),
        _ => None,
    }
}

/// Decodes `f`, an unnamed Parse byte for byte the same as one whose
/// [`unnamed_parse_text_len`] was `len`, without searching for its text's
/// end again (a driver sends its unnamed statement at each execution).
pub fn decode_parse_again(f: FrameRef<'_>, len: u32) -> Option<Message<'_>> {
    // The body: the empty name's NUL, then the text.
    let text = f.body().get(1..1 + len as usize)?;
    (f.tag == b'P').then(|| Message::Parse {
        name: "",
        query: crate::protocol::frame::text_lossy(text),
        again: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::messages::message as frame;

    #[test]
    fn each_message_is_read_once_with_what_the_session_needs() {
        assert_eq!(
            decode(&frame(b'Q', b"SELECT 1\0")).unwrap(),
            Message::Query("SELECT 1".into())
        );
        assert_eq!(
            decode(&frame(b'P', b"s1\0SELECT $1\0\0\0")).unwrap(),
            Message::Parse {
                name: "s1",
                query: "SELECT $1".into(),
                again: false,
            }
        );
        assert_eq!(
            decode(&frame(b'B', b"p\0s1\0\0\0\0\0\0\0")).unwrap(),
            Message::Bind { statement: "s1" }
        );
        assert_eq!(
            decode(&frame(b'D', b"Ss1\0")).unwrap(),
            Message::Describe {
                kind: b'S',
                name: "s1"
            }
        );
        assert_eq!(
            decode(&frame(b'C', b"P\0")).unwrap(),
            Message::Close {
                kind: b'P',
                name: ""
            }
        );
        assert_eq!(decode(&frame(b'S', b"")).unwrap(), Message::Sync);
        // Client encodings other than UTF-8 are read, not refused.
        assert_eq!(
            decode(&frame(b'Q', b"SELECT '\xe9'\0")).unwrap().sql(),
            Some("SELECT '\u{fffd}'")
        );
    }

    /// An unnamed Parse decoded again from its kept text length reads as
    /// decoding it afresh does; a Parse whose text is not UTF-8, or that
    /// is named, keeps no length and is always decoded afresh.
    #[test]
    fn an_unnamed_parse_decodes_again_as_afresh() {
        let again = |body: &[u8]| {
            let f = frame(b'P', body);
            let len = unnamed_parse_text_len((&f).into())?;
            let fresh = match decode(&f).unwrap() {
                Message::Parse { name, query, .. } => Message::Parse {
                    name,
                    query,
                    again: true,
                },
                other => panic!("{other:?}"),
            };
            let quick = decode_parse_again((&f).into(), len).unwrap();
            assert_eq!(quick, fresh);
            Some(quick.sql().unwrap().to_string())
        };
        assert_eq!(
            again(b"\0SELECT abalance FROM t WHERE aid = $1\0\0\0").as_deref(),
            Some("SELECT abalance FROM t WHERE aid = $1")
        );
        // Parameter types after the text, a character of several bytes.
        assert_eq!(
            again(b"\0SELECT '\xc3\xa9', $1\0\0\x01\0\0\0\x17").as_deref(),
            Some("SELECT '\u{e9}', $1")
        );
        assert_eq!(again(b"\0\0\0\0").as_deref(), Some(""));
        // Not UTF-8 (a client encoding such as LATIN1): decoded afresh.
        assert_eq!(again(b"\0SELECT '\xe9'\0\0\0"), None);
        // Named, malformed: no length is kept.
        assert_eq!(again(b"s1\0SELECT 1\0\0\0"), None);
        assert_eq!(again(b"\0SELECT 1"), None);
    }

    #[test]
    fn malformed_and_unknown_messages_are_refused() {
        assert!(decode(&frame(b'P', b"no terminator")).is_err());
        assert!(decode(&frame(b'D', b"")).is_err());
        assert!(
            decode(&frame(b'Z', b""))
                .unwrap_err()
                .contains("invalid frontend message type Z")
        );
    }
}
