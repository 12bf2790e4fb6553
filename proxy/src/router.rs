//! Choosing the node for a statement: pure functions of a node-table
//! snapshot, no I/O.

use crate::cluster::{Node, Snapshot};

/// The node that takes writes (and, until read balancing is configured,
/// every statement).
pub fn write_node(snapshot: &Snapshot) -> Option<&Node> {
    snapshot.primary()
}
