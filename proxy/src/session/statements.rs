//! Named prepared statements, in both pool modes.
//!
//! A client's statement name means nothing on another backend connection,
//! so tidepool names statements on the server after their content
//! (`tp_` + a hash of query text and parameter types). Clients preparing the
//! same statement share it; a connection that lacks it gets the Parse
//! injected just before the Bind or Describe that needs it.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Session, SessionEnd, expect::Expect, lease_node, state};
use crate::{
    backend::StatementName,
    config::PoolMode,
    protocol::{FrameError, FrameRef, frame, messages},
};

#[derive(Debug)]
pub struct Statement {
    /// Name of the statement on backend connections.
    pub server_name: StatementName,
    /// The client's Parse, renamed to `server_name`.
    pub parse: Bytes,
    /// How the statement may be routed.
    pub class: std::sync::Arc<crate::router::Class>,
}

impl Statement {
    pub fn from_parse<'a>(
        f: impl Into<FrameRef<'a>>,
        class: std::sync::Arc<crate::router::Class>,
    ) -> Result<Statement, FrameError> {
        let f = f.into();
        let mut body = f.body();
        frame::cstr(&mut body)?; // the client's name
        let digest = Sha256::digest(body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let server_name = format!("tp_{hex}");
        let parse = messages::rename_parse(f, &server_name)?;
        Ok(Statement {
            server_name: server_name.into(),
            parse,
            class,
        })
    }
}

impl Session {
    /// Whether `f` starts a batch that only prepares named statements
    /// (`PQprepare`: Parse… Sync) which tidepool answers itself because no
    /// server connection is free now. The statements are prepared on the
    /// connection that first executes them, as any statement is when the
    /// session moves between connections. Waiting for a connection here
    /// could deadlock a client that prepares with a blocking call while
    /// its other connections hold the pool's server connections in open
    /// transactions (pgbench -M prepared -j N does). A syntax error in
    /// such a statement is reported when it is first executed.
    pub(super) fn defers_prepare(&mut self, f: FrameRef<'_>, rest: &[FrameRef<'_>]) -> bool {
        if self.mode != PoolMode::Transaction || !self.at_boundary() {
            return false;
        }
        for m in std::iter::once(f).chain(rest.iter().copied()) {
            match m.tag {
                b'P' => match messages::parse_name(m) {
                    Ok(name) if !name.is_empty() && !self.statements.contains_key(name) => {}
                    _ => return false,
                },
                b'S' => {
                    return self.write_pool().is_ok_and(|p| p.would_wait());
                }
                _ => return false,
            }
        }
        false
    }

    /// Records a named Parse and answers ParseComplete; the Sync that ends
    /// the batch is answered with ReadyForQuery.
    pub(super) fn defer_prepare(&mut self, f: FrameRef<'_>) -> Result<(), SessionEnd> {
        match f.tag {
            b'P' => {
                self.deferring = true;
                let (name, query) =
                    messages::read_parse(f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                let stmt = Statement::from_parse(f, self.shared.classifier.classify(&query))
                    .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.statements.insert(name.to_string(), Arc::new(stmt));
                self.to_client.extend_from_slice(&[b'1', 0, 0, 0, 4]);
            }
            _ => {
                // Sync: `defers_prepare` saw that the batch ends with it.
                self.deferring = false;
                messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
            }
        }
        Ok(())
    }

    /// The statement `name` stands for, when statements are renamed.
    pub(super) fn mapped(&self, name: &str) -> Option<Arc<Statement>> {
        if name.is_empty() || self.tracker.skipping() {
            return None;
        }
        self.statements.get(name).cloned()
    }

    /// Prepares `stmt` on the attached connection if it is not there yet.
    pub(super) fn ensure_prepared(&mut self, stmt: &Statement) {
        let conn = self.lease.as_mut().expect("attached").conn();
        // Looked up first: most uses find it there, and take no reference.
        if !conn.prepared.contains(&stmt.server_name) {
            conn.prepared.insert(stmt.server_name.clone());
            self.close_if_stale(&stmt.server_name);
            self.to_backend.extend_from_slice(&stmt.parse);
            self.push(Expect::Parse {
                hidden: true,
                server_name: Some(stmt.server_name.clone()),
            });
        }
    }

    /// SQL `EXECUTE name` of a statement the client prepared with a Parse
    /// message: the server knows it by tidepool's name for it, so the text
    /// is rewritten to that name. Inside an extended-protocol batch
    /// (`inject`) the statement is prepared on the attached connection
    /// first when it lacks it; a simple query is rewritten only when the
    /// connection has it (a Parse there could not be told apart from the
    /// query's own replies if it failed).
    pub(super) fn sql_execute(&mut self, sql: &str, inject: bool) -> Option<String> {
        if self.tracker.skipping() {
            return None;
        }
        let (name, at) = state::executes(sql)?;
        let stmt = self.statements.get(&name)?.clone();
        let conn = self.lease.as_mut()?.conn();
        if inject {
            self.ensure_prepared(&stmt);
        } else if !conn.prepared.contains(&stmt.server_name) {
            return None;
        }
        Some(format!(
            "{}{}{}",
            &sql[..at.start],
            stmt.server_name,
            &sql[at.end..]
        ))
    }

    /// Which server connection the session is attached to.
    pub(super) fn conn_identity(&mut self) -> (usize, i32) {
        self.lease
            .as_mut()
            .map(|l| (lease_node(l), l.conn().pid))
            .unwrap_or((usize::MAX, 0))
    }

    /// Before a Bind or Describe of the unnamed statement: prepares it on
    /// the attached connection when it was parsed on another one.
    pub(super) fn ensure_unnamed(&mut self) {
        if self.tracker.skipping() {
            return;
        }
        let here = self.conn_identity();
        if let Some(kept) = self.unnamed.as_deref_mut()
            && kept.at != here
        {
            kept.at = here;
            let parse = kept.parse.bytes.clone();
            self.to_backend.extend_from_slice(&parse);
            self.push(Expect::Parse {
                hidden: true,
                server_name: None,
            });
        }
    }

    /// Before preparing `name` again on the attached connection: closes
    /// the server's copy whose plan it refused (see `ServerConn::stale`).
    pub(super) fn close_if_stale(&mut self, name: &StatementName) {
        let conn = self.lease.as_mut().expect("attached").conn();
        if conn.stale.remove(name) {
            self.to_backend
                .extend_from_slice(&messages::target_message(b'C', b'S', name));
            self.push(Expect::Close {
                stale: Some(name.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, query: &str) -> crate::protocol::Frame {
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
        let parse = messages::frame_of(&a.parse);
        let (name, query) = messages::read_parse(&parse).unwrap();
        assert_eq!((name, &*query), (&*a.server_name, "SELECT 1"));
    }
}
