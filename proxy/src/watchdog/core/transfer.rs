//! Leadership transfer: planned switchovers, failback to a higher
//! priority, and an unhealthy leader handing over. The old leader lets go
//! of the address first and never escalates again in that term.

use super::{Elector, Millis, Msg, NodeId, Peer, Standing, SwitchoverError, Transfer};

impl Elector {
    /// Where leadership should go: a healthy peer when this node is not,
    /// or a higher-priority peer that has been reachable long enough.
    pub(super) fn steer_target(&self, now: Millis) -> Option<NodeId> {
        let fresh = |p: &Peer| p.healthy && p.up_since.is_some();
        if !self.healthy && now >= self.leader_since + self.s.election_timeout {
            return (0..self.members.len())
                .filter(|&i| i != self.id && fresh(&self.peers[i]))
                .max_by_key(|&i| (self.members[i].priority, std::cmp::Reverse(i)));
        }
        if self.pinned || self.s.failback_after == 0 {
            return None;
        }
        let mine = self.members[self.id].priority;
        (0..self.members.len())
            .filter(|&i| {
                i != self.id
                    && self.members[i].priority > mine
                    && fresh(&self.peers[i])
                    && self.peers[i]
                        .up_since
                        .is_some_and(|u| now >= u + self.s.failback_after)
            })
            .max_by_key(|&i| (self.members[i].priority, std::cmp::Reverse(i)))
    }

    pub(super) fn start_transfer(&mut self, to: NodeId, pinned: bool, now: Millis) {
        self.transfer = Some(Transfer {
            to,
            deadline: now + self.s.election_timeout,
            next_send: now,
        });
        self.campaign_pinned = pinned;
        self.update_escalation(now);
        self.tick_leader(now);
    }

    /// A planned switchover to `to` (leadership and the address).
    /// Accepted on any node: a follower forwards it to its leader.
    pub fn switchover(&mut self, to: &str, now: Millis) -> Result<(), SwitchoverError> {
        let target = self
            .members
            .iter()
            .position(|m| m.name == to)
            .ok_or_else(|| SwitchoverError::UnknownNode(to.to_string()))?;
        match self.role {
            Standing::Leader => {
                if let Some(t) = self.transfer {
                    return Err(SwitchoverError::InProgress(self.members[t.to].name.clone()));
                }
                if target == self.id {
                    self.pinned = true;
                } else {
                    self.start_transfer(target, true, now);
                }
                Ok(())
            }
            _ => {
                let leader = self.leader.ok_or(SwitchoverError::NoLeader)?;
                self.send(
                    leader,
                    Msg::TransferRequest {
                        term: self.term,
                        to: to.to_string(),
                    },
                );
                Ok(())
            }
        }
    }
}
