//! What the session waits for from the backend, in order.
//!
//! Every forwarded message that the server answers leaves an entry here;
//! the answers arrive in the same order. This is how tidepool knows when a
//! connection is idle, which replies to a Parse it injected must be hidden,
//! and where replies it makes up itself (a Close of a statement that stays
//! prepared server-side) belong in the stream.

use bytes::{BufMut, BytesMut};

use super::state::SettingChange;
use crate::backend::StatementName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    /// Carries the setting changes to confirm on CommandComplete.
    Simple {
        settings: Vec<SettingChange>,
    },
    /// ParseComplete; `hidden` when tidepool injected the Parse.
    Parse {
        hidden: bool,
        server_name: Option<StatementName>,
    },
    /// The refusal (42P05) of a Parse of a name the client has not closed:
    /// the same statement is parsed again under tidepool's name, so the
    /// server refuses it in sequence and skips to Sync as PostgreSQL does
    /// for the client's name; the error names the client's statement.
    /// (Boxed: the queue holds one entry per reply awaited.)
    Duplicate(Box<Duplicate>),
    /// BindComplete; `statement` is the server-side name when tidepool
    /// renamed the statement.
    Bind {
        statement: Option<StatementName>,
    },
    /// ParameterDescription? then RowDescription or NoData.
    Describe {
        statement: Option<StatementName>,
    },
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// CloseComplete; `stale` names the statement when tidepool closed it
    /// itself (the reply is hidden, and if the server skips the Close the
    /// statement is still there).
    Close {
        stale: Option<StatementName>,
    },
    Sync,
    /// A reply tidepool makes itself ('1' ParseComplete, '3' CloseComplete),
    /// sent when it reaches the front.
    Synthetic(u8),
}

/// The names of a refused second Parse: tidepool's, as the server's error
/// says it, and the client's, as the client must read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub server_name: StatementName,
    pub client_name: String,
}

/// Writes a body-less reply such as ParseComplete or CloseComplete.
pub fn emit_synthetic(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}
