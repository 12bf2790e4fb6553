//! Named prepared statements in transaction mode.
//!
//! A client's statement name means nothing on another backend connection,
//! so tidepool names statements on the server after their content
//! (`tp_` + a hash of query text and parameter types). Clients preparing the
//! same statement share it; a connection that lacks it gets the Parse
//! injected just before the Bind or Describe that needs it.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::protocol::{Frame, FrameError, frame, messages};

#[derive(Debug)]
pub struct Statement {
    /// Name of the statement on backend connections.
    pub server_name: String,
    /// The client's Parse, renamed to `server_name`.
    pub parse: Bytes,
    /// How the statement may be routed.
    pub class: std::sync::Arc<crate::router::Class>,
}

impl Statement {
    pub fn from_parse(
        f: &Frame,
        class: std::sync::Arc<crate::router::Class>,
    ) -> Result<Statement, FrameError> {
        let mut body = f.body();
        frame::cstr(&mut body)?; // the client's name
        let digest = Sha256::digest(body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let server_name = format!("tp_{hex}");
        let parse = messages::rename_parse(f, &server_name)?;
        Ok(Statement {
            server_name,
            parse,
            class,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, query: &str) -> Frame {
        let body = format!("{name}\0{query}\0\0\0");
        let mut v = vec![b'P'];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body.as_bytes());
        messages::frame_of(&v)
    }

    #[test]
    fn same_query_gets_the_same_server_name_whatever_the_client_name() {
        let k = std::sync::Arc::new(crate::router::Class::default());
        let a = Statement::from_parse(&parse("s0", "SELECT 1"), k.clone()).unwrap();
        let b = Statement::from_parse(&parse("other", "SELECT 1"), k.clone()).unwrap();
        let c = Statement::from_parse(&parse("s0", "SELECT 2"), k).unwrap();
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        let (name, query) = messages::read_parse(&messages::frame_of(&a.parse)).unwrap();
        assert_eq!((name, query.as_str()), (a.server_name.clone(), "SELECT 1"));
    }
}
