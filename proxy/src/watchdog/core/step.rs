//! Handling one message: votes, pre-votes, heartbeats and their
//! acknowledgements (which renew the leader's lease), transfers.

use super::{Elector, Millis, Msg, NodeId, Standing};

impl Elector {
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
                let mut granted = term > self.term && !self.in_lease(now) && now >= self.boot_until;
                if granted {
                    granted = self.make_way(from, term, now);
                }
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
                if self.role == Standing::PreCandidate && term == self.term + 1 {
                    self.granted[from] = true;
                    if self.count_granted() >= self.quorum() {
                        self.campaign(false, now);
                    }
                }
                return;
            }
            Msg::PreVoteResp { granted: false, .. } if self.role == Standing::PreCandidate => {
                self.refused[from] = true;
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
            Msg::VoteResp { granted: true, .. } if self.role == Standing::Candidate => {
                self.granted[from] = true;
                if self.count_granted() >= self.quorum() {
                    self.become_leader(now);
                }
            }
            Msg::Heartbeat { stamp, .. } => self.on_heartbeat(from, stamp, now),
            Msg::HeartbeatResp { stamp, healthy, .. } if self.role == Standing::Leader => {
                let p = &mut self.peers[from];
                p.acked = Some(p.acked.map_or(stamp, |a| a.max(stamp)));
                p.healthy = healthy;
                if let Some(s) = self.quorum_stamp(now) {
                    self.lease_until = self.lease_until.max(s + self.s.lease);
                }
            }
            Msg::TimeoutNow { .. }
                if self.leader == Some(from) && self.role == Standing::Follower =>
            {
                self.campaign_pinned = true;
                self.campaign(true, now);
            }
            Msg::TransferRequest { to, .. } if self.role == Standing::Leader => {
                if let Err(e) = self.switchover(&to, now) {
                    tracing::info!(error = %e, "switchover request refused");
                }
            }
            _ => {}
        }
    }

    /// Before granting `from` a pre-vote for `term`: a pre-candidate of
    /// the same round, still waiting for its answers (and not refused by
    /// `from`), refuses if it goes first and otherwise steps back; a follower (or a pre-candidate whose
    /// round went unanswered) holds its own campaign back for two
    /// heartbeats, time for `from` to win. So two timers that fire together
    /// do not split the vote. Nothing is promised: if `from` does not
    /// campaign, this node's timer fires again soon.
    fn make_way(&mut self, from: NodeId, term: u64, now: Millis) -> bool {
        let window = 2 * self.s.heartbeat_interval;
        let hold = now + window;
        match self.role {
            Standing::PreCandidate if term == self.term + 1 => {
                let waiting = now < self.pre_vote_at + window && !self.refused[from];
                if waiting && !self.precedes(from) {
                    return false;
                }
                self.role = Standing::Follower;
                self.election_at = hold;
            }
            Standing::Follower => self.election_at = self.election_at.max(hold),
            _ => {}
        }
        true
    }

    fn on_heartbeat(&mut self, from: NodeId, stamp: Millis, now: Millis) {
        match self.role {
            // Two leaders in one term cannot be; if it seems so, stand back.
            Standing::Leader => return self.become_follower(self.term, None, now),
            Standing::Candidate | Standing::PreCandidate => {
                self.become_follower(self.term, Some(from), now)
            }
            Standing::Follower => match self.leader {
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
