//! How the admin API, `ctl` and sessions reach the failover manager: one
//! queue of requests, answered in order by the one manager task.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::executor::ActionError;

/// An operator's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Attach,
    Detach,
    Promote { switchover: bool },
    Recover,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Attach => "attach",
            Action::Detach => "detach",
            Action::Promote { switchover: false } => "promote",
            Action::Promote { switchover: true } => "switchover",
            Action::Recover => "recover",
        }
    }
}

/// What the manager's queue carries.
#[derive(Debug)]
pub enum Request {
    /// A node failed its health check and every retry.
    NodeFailed { node: usize, error: String },
    /// A backend connection to `node` (a session's, or the health check's
    /// kept one) broke, or the server said it shuts down: probe the node
    /// once; if the probe fails, the node is handled as `NodeFailed`.
    BackendFault {
        node: usize,
        fault: super::trigger::Fault,
    },
    /// A detached node answers as a standby again: re-attach it if
    /// `auto_failback` allows.
    Failback { node: usize },
    /// An operator's request, answered on `reply`.
    Action {
        node: String,
        action: Action,
        reply: oneshot::Sender<Result<Value, ControlError>>,
    },
}

/// Why an operator's request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no node {0:?}: give a node's name or index (see GET /v1/nodes)")]
    NoSuchNode(String),
    /// The request does not fit the node's state.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Failed(#[from] ActionError),
    #[error("the failover manager is not running")]
    NotRunning,
}

/// The handle through which the admin API and health checks reach the
/// manager.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::UnboundedSender<Request>,
    /// The manager's queue: it outlives a manager that stops, so the one
    /// started in its place (`supervise`) takes up the requests waiting.
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>>,
}

impl Default for Control {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Control {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

impl Control {
    pub fn sender(&self) -> mpsc::UnboundedSender<Request> {
        self.tx.clone()
    }

    pub(super) fn receiver(&self) -> Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>> {
        self.rx.clone()
    }

    /// Asks the manager to carry out `action` on `node` and waits for it.
    pub async fn request(&self, node: &str, action: Action) -> Result<Value, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Action {
                node: node.to_string(),
                action,
                reply,
            })
            .map_err(|_| ControlError::NotRunning)?;
        answer.await.map_err(|_| ControlError::NotRunning)?
    }
}
