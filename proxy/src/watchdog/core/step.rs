//! Handling one message: votes, pre-votes, heartbeats and their
//! acknowledgements (which renew the leader's lease), transfers.

use super::{Millis, Msg, Node, NodeId, Role};

impl Node {
    /// Handles one message from `from`.
    pub fn step(&mut self, from: NodeId, msg: Msg, now: Millis) {
        if from >= self.members.len() || from == self.id {
            return;
        }
        let p = &mut self.peers[from];
        p.seen = Some(now);
        p.up_since.get_or_insert(now);
        self.step_inner(from, msg, now);
        self.update_escalation(now);
    }

    fn step_inner(&mut self, from: NodeId, msg: Msg, now: Millis) {
        let term = msg.term();
        match msg {
            Msg::PreVote { term } => {
                let granted = term > self.term && !self.in_lease(now) && now >= self.boot_until;
                // A refusal carries this node's own term, so that a
                // candidate behind it catches up and one level with it
                // does not move.
                let term = if granted { term } else { self.term };
                return self.send(from, Msg::PreVoteResp { term, granted });
            }
            Msg::PreVoteResp {
                term,
                granted: true,
            } => {
                if self.role == Role::PreCandidate && term == self.term + 1 {
                    self.granted[from] = true;
                    if self.count_granted() >= self.quorum() {
                        self.campaign(false, now);
                    }
                }
                return;
            }
            _ => {}
        }
        if term > self.term {
            if let Msg::Vote { transfer, .. } = msg
                && !transfer
                && self.in_lease(now)
            {
                return; // a live leader is heard: ignore disruptors
            }
            let leader =
                matches!(msg, Msg::Heartbeat { .. } | Msg::TimeoutNow { .. }).then_some(from);
            self.become_follower(term, leader, now);
        } else if term < self.term {
            match msg {
                Msg::Heartbeat { stamp, .. } => self.send(
                    from,
                    Msg::HeartbeatResp {
                        term: self.term,
                        stamp,
                        healthy: self.healthy,
                    },
                ),
                Msg::Vote { .. } => self.send(
                    from,
                    Msg::VoteResp {
                        term: self.term,
                        granted: false,
                    },
                ),
                _ => {}
            }
            return;
        }
        match msg {
            Msg::Vote { .. } => {
                let can = now >= self.boot_until
                    && (self.voted_for == Some(from)
                        || (self.voted_for.is_none() && self.leader.is_none()));
                if can {
                    self.voted_for = Some(from);
                    self.reset_election(now);
                }
                self.send(from, Msg::VoteResp { term, granted: can });
            }
            Msg::VoteResp { granted: true, .. } if self.role == Role::Candidate => {
                self.granted[from] = true;
                if self.count_granted() >= self.quorum() {
                    self.become_leader(now);
                }
            }
            Msg::Heartbeat { stamp, .. } => self.on_heartbeat(from, stamp, now),
            Msg::HeartbeatResp { stamp, healthy, .. } if self.role == Role::Leader => {
                let p = &mut self.peers[from];
                p.acked = Some(p.acked.map_or(stamp, |a| a.max(stamp)));
                p.healthy = healthy;
                if let Some(s) = self.quorum_stamp(now) {
                    self.lease_until = self.lease_until.max(s + self.s.lease);
                }
            }
            Msg::TimeoutNow { .. } if self.leader == Some(from) && self.role == Role::Follower => {
                self.campaign_pinned = true;
                self.campaign(true, now);
            }
            Msg::TransferRequest { to, .. } if self.role == Role::Leader => {
                if let Err(e) = self.switchover(&to, now) {
                    tracing::info!(error = %e, "switchover request refused");
                }
            }
            _ => {}
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, stamp: Millis, now: Millis) {
        match self.role {
            // Two leaders in one term cannot be; if it seems so, stand back.
            Role::Leader => return self.become_follower(self.term, None, now),
            Role::Candidate | Role::PreCandidate => {
                self.become_follower(self.term, Some(from), now)
            }
            Role::Follower => match self.leader {
                None => self.become_follower(self.term, Some(from), now),
                Some(l) if l == from => {
                    self.heard_leader_at = now;
                    self.reset_election(now);
                }
                // One leader per term: never acknowledge a second one.
                Some(_) => return,
            },
        }
        self.send(
            from,
            Msg::HeartbeatResp {
                term: self.term,
                stamp,
                healthy: self.healthy,
            },
        );
    }
}
