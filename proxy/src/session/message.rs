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
/// (its description).
pub fn decode<'a>(f: impl Into<FrameRef<'a>>) -> Result<Message<'a>, String> {
    let f = f.into();
    let bad = |e: crate::protocol::FrameError| e.to_string();
    Ok(match f.tag {
        b'Q' => Message::Query(messages::read_query(f).map_err(bad)?),
        b'P' => {
            let (name, query) = messages::read_parse(f).map_err(bad)?;
            Message::Parse { name, query }
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
                query: "SELECT $1".into()
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
