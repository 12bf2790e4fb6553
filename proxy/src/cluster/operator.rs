//! An operator's request on one node (attach, detach, promote, recover),
//! run by the manager between its other work.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{
    DetachCause, Detached, Role, Status,
    control::{Action, ControlError},
    manager::Manager,
};
use crate::config::BackendFlag;

/// Why a node an operator detached is down.
pub const BY_OPERATOR: &str = "detached by the operator";

impl Manager {
    pub(super) async fn action(
        &mut self,
        key: &str,
        action: Action,
    ) -> Result<Value, ControlError> {
        let snap = self.cluster().snapshot();
        let node = snap
            .find(key)
            .ok_or_else(|| ControlError::NoSuchNode(key.to_string()))?
            .clone();
        let id = node.id;
        tracing::info!(node = %node.name, action = action.as_str(), "operator request");
        match action {
            Action::Attach => {
                self.cluster().attach(id);
                self.persist();
            }
            Action::Detach => {
                if node.source.discovered() && snap.primary().map(|p| p.id) == Some(id) {
                    return Err(ControlError::Conflict(format!(
                        "{} is the writer of a managed cluster: AWS runs its failover \
                         (tidepool ctl promote READER --switchover asks RDS to move it)",
                        node.name
                    )));
                }
                if node.flag == BackendFlag::AlwaysPrimary {
                    return Err(ControlError::Conflict(format!(
                        "{} is always_primary: it cannot be detached",
                        node.name
                    )));
                }
                if snap.primary().map(|p| p.id) == Some(id) && self.config().failover.auto_failover
                {
                    self.failover(id, Detached::new(DetachCause::Operator, BY_OPERATOR), None)
                        .await?;
                } else {
                    self.detach(id, Detached::new(DetachCause::Operator, BY_OPERATOR));
                }
            }
            Action::Promote { .. } if node.source.discovered() => {
                self.check_promotable(&node)?;
                return self.cluster_failover(&node).await;
            }
            Action::Promote { switchover: false } => {
                self.check_promotable(&node)?;
                match snap.primary() {
                    Some(p) if p.id == id => {
                        return Err(ControlError::Conflict(format!(
                            "{} is already the primary",
                            node.name
                        )));
                    }
                    Some(p) => {
                        let reason = format!("demoted: the operator promoted {}", node.name);
                        self.failover(p.id, Detached::new(DetachCause::Fenced, reason), Some(id))
                            .await?;
                    }
                    None => {
                        self.promote(id, id, None).await?;
                        self.cluster().set_role(id, Role::Primary);
                        self.persist();
                        self.follow_all(id, id).await;
                    }
                }
            }
            Action::Promote { switchover: true } => {
                self.check_promotable(&node)?;
                super::switchover::run(self, id).await?;
                self.cluster()
                    .stats
                    .switchovers
                    .fetch_add(1, Ordering::Relaxed);
            }
            Action::Recover => {
                super::recovery::run(self, id).await?;
                self.cluster()
                    .stats
                    .recoveries
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let snap = self.cluster().snapshot();
        let Some(n) = snap.node(id) else {
            // A reload removed the node while the request ran.
            return Err(ControlError::NoSuchNode(node.name));
        };
        Ok(json!({
            "node": n.name,
            "action": action.as_str(),
            "status": n.status.as_str(),
            "role": n.role.as_str(),
            "primary": snap.primary().map(|p| p.name.clone()),
        }))
    }

    /// A managed cluster's writer moves only by AWS: `FailoverDBCluster`
    /// to `node`, waiting until RDS reports it the writer. Writes follow
    /// once the topology confirms it (`discovery`).
    async fn cluster_failover(&mut self, node: &super::Node) -> Result<Value, ControlError> {
        let cfg = self.config();
        let Some(c) = cfg.clusters.first() else {
            return Err(ControlError::Conflict(format!(
                "{} is not an instance of a configured cluster",
                node.name
            )));
        };
        let Some(id) = c.cluster_identifier.as_deref() else {
            return Err(ControlError::Conflict(format!(
                "a switchover of cluster {} asks RDS (FailoverDBCluster): set clusters.cluster_identifier",
                c.name
            )));
        };
        let mut rds = self.cluster().credentials().rds().await;
        rds.switchover_timeout = cfg.failover.switchover_timeout;
        let report = rds.switchover_cluster(id, &node.name).await.map_err(|e| {
            ControlError::Failed(super::executor::ActionError::Refused(format!(
                "FailoverDBCluster {id} to {}: {e}",
                node.name
            )))
        })?;
        self.cluster()
            .stats
            .switchovers
            .fetch_add(1, Ordering::Relaxed);
        Ok(json!({
            "node": node.name,
            "action": "switchover",
            "cluster_identifier": id,
            "requested": report.changed,
            "writer_before": report.before.writer_id(),
            "writer_after": report.after.writer_id(),
        }))
    }

    fn check_promotable(&self, node: &super::Node) -> Result<(), ControlError> {
        if node.status != Status::Up || node.role != Role::Standby {
            return Err(ControlError::Conflict(format!(
                "{} is {} {}: only an attached, answering standby can be promoted",
                node.name,
                node.status.as_str(),
                node.role.as_str()
            )));
        }
        Ok(())
    }
}
