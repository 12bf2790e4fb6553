//! The watchdog's state machine: leader election with leases, no I/O.
//!
//! A Raft-style election without a log: terms, one vote per term,
//! pre-vote (a node that cannot win does not disturb the others, and a
//! node that cannot hear heartbeat replies cannot win: pre-votes take the
//! heartbeats' path, see [`Path`]; of two pre-candidates of one round only
//! one goes on, so equal timers do not split the vote),
//! check-quorum (a leader that cannot hear a quorum steps down, and a
//! follower that hears its leader refuses to vote), and leadership
//! transfer. On top of it, a leader **lease**: a heartbeat round stamped
//! with the leader's clock at `s` and acknowledged by a quorum lets it
//! hold the address until `s + lease`. The leader escalates only while it
//! leads with an unexpired lease, and de-escalates as soon as either goes.
//!
//! Why two nodes are never active together (`docs/watchdog.md` has the
//! long form): a new leader needs votes from a quorum; every quorum shares
//! a node `v` with the quorum behind the old lease. `v` acknowledged the
//! old leader's round `s` at some `r ≥ s`, and grants a vote to anyone
//! else no earlier than `r + election_timeout − tick` (it refuses votes
//! while it hears its leader, and a restarted node refuses every vote for
//! one election timeout, so it cannot have forgotten). Validation keeps
//! `lease ≤ election_timeout − 2 ticks − 10%`, so the old lease has run
//! out — and its holder noticed, a tick later at most — before the new
//! leader exists. Per term, a node acknowledges one leader only.
//!
//! The caller owns sockets and clocks: it calls [`Elector::tick`] every tick,
//! [`Elector::step`] for each message, and drains [`Elector::take_ready`].
//! Message handling is in `step.rs`; leadership transfers (switchover,
//! priority failback, health handover) in `transfer.rs`.

mod step;
mod transfer;

use serde::{Deserialize, Serialize};

/// Index of a member in the cluster's member list (sorted by name).
pub type NodeId = usize;
/// Milliseconds of the local monotonic clock.
pub type Millis = u64;

/// Timings, in milliseconds of the local clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat_interval: Millis,
    pub election_timeout: Millis,
    pub lease: Millis,
    pub verify_interval: Millis,
    /// 0 = never move leadership back to a higher priority.
    pub failback_after: Millis,
    pub half_votes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub priority: u32,
}

/// A message between watchdog nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    PreVote {
        term: u64,
    },
    PreVoteResp {
        term: u64,
        granted: bool,
    },
    Vote {
        term: u64,
        transfer: bool,
    },
    VoteResp {
        term: u64,
        granted: bool,
    },
    Heartbeat {
        term: u64,
        stamp: Millis,
    },
    HeartbeatResp {
        term: u64,
        stamp: Millis,
        healthy: bool,
    },
    /// The leader hands over: campaign now (votes bypass the lease check).
    TimeoutNow {
        term: u64,
    },
    /// Asks the leader to hand over to `to` (a planned switchover).
    TransferRequest {
        term: u64,
        to: String,
    },
}

/// How a message travels between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The heartbeat path (UDP): heartbeats, their acknowledgements, and
    /// pre-votes with their answers. A node wins a pre-vote only if it
    /// hears the answers on the path a lease's acknowledgements take, so
    /// a node that cannot hear heartbeat replies (a one-way split) never
    /// starts an election it could win but never hold a lease after.
    Heartbeat,
    /// The peer link (TCP): votes, hand-overs, switchover requests —
    /// rare messages whose loss costs an election.
    Link,
}

impl Msg {
    /// The path this message takes (see [`Path`]).
    pub fn path(&self) -> Path {
        match self {
            Msg::Heartbeat { .. }
            | Msg::HeartbeatResp { .. }
            | Msg::PreVote { .. }
            | Msg::PreVoteResp { .. } => Path::Heartbeat,
            Msg::Vote { .. }
            | Msg::VoteResp { .. }
            | Msg::TimeoutNow { .. }
            | Msg::TransferRequest { .. } => Path::Link,
        }
    }

    pub fn term(&self) -> u64 {
        match self {
            Msg::PreVote { term }
            | Msg::PreVoteResp { term, .. }
            | Msg::Vote { term, .. }
            | Msg::VoteResp { term, .. }
            | Msg::Heartbeat { term, .. }
            | Msg::HeartbeatResp { term, .. }
            | Msg::TimeoutNow { term }
            | Msg::TransferRequest { term, .. } => *term,
        }
    }
}

/// What the caller must do with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Point the address here. Idempotent.
    Escalate { term: u64 },
    /// Stop pointing it here; report completion with [`Elector::deescalated`].
    DeEscalate { term: u64 },
    /// Check (and repair) that it points here.
    Verify { term: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Messages to send and actions to run, drained by the caller.
#[derive(Debug, Default)]
pub struct Ready {
    pub messages: Vec<(NodeId, Msg)>,
    pub actions: Vec<Action>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchoverError {
    #[error("no node named {0:?} in the watchdog cluster")]
    UnknownNode(String),
    #[error("no leader is known yet; retry once one is elected")]
    NoLeader,
    #[error("a switchover to {0} is already under way")]
    InProgress(String),
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    to: NodeId,
    deadline: Millis,
    /// When to send `TimeoutNow` (again): every heartbeat until the
    /// target campaigns or the deadline passes.
    next_send: Millis,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// Latest heartbeat stamp acknowledged in this term (leader only).
    acked: Option<Millis>,
    /// When anything was last heard from it.
    seen: Option<Millis>,
    /// Reachable without a gap since (for failback).
    up_since: Option<Millis>,
    healthy: bool,
}

/// One watchdog node.
#[derive(Debug)]
pub struct Elector {
    id: NodeId,
    members: Vec<Member>,
    s: Settings,
    term: u64,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    role: Standing,
    /// A (re)started node grants no vote before this: it may have voted
    /// or acknowledged a leader before it restarted and forgotten.
    boot_until: Millis,
    heard_leader_at: Millis,
    election_at: Millis,
    /// When the current pre-vote round started.
    pre_vote_at: Millis,
    granted: Vec<bool>,
    /// Peers that refused this node's current pre-vote round.
    refused: Vec<bool>,
    peers: Vec<Peer>,
    leader_since: Millis,
    next_heartbeat: Millis,
    lease_until: Millis,
    transfer: Option<Transfer>,
    /// This leadership came from a planned switchover: no failback.
    pinned: bool,
    campaign_pinned: bool,
    escalated: bool,
    deescalating: bool,
    next_verify: Millis,
    healthy: bool,
    rng: u64,
    ready: Ready,
    last_change: Millis,
}

impl Elector {
    /// A node starting (or restarting) at `now`, knowing nothing.
    pub fn new(id: NodeId, members: Vec<Member>, s: Settings, now: Millis, seed: u64) -> Elector {
        let n = members.len();
        let mut node = Elector {
            id,
            members,
            term: 0,
            voted_for: None,
            leader: None,
            role: Standing::Follower,
            boot_until: now + s.election_timeout,
            heard_leader_at: 0,
            election_at: 0,
            pre_vote_at: 0,
            granted: vec![false; n],
            refused: vec![false; n],
            peers: vec![Peer::default(); n],
            leader_since: 0,
            next_heartbeat: 0,
            lease_until: 0,
            transfer: None,
            pinned: false,
            campaign_pinned: false,
            escalated: false,
            deescalating: false,
            next_verify: 0,
            healthy: true,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            ready: Ready::default(),
            last_change: now,
            s,
        };
        node.reset_election(now);
        node
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn role(&self) -> Standing {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    /// Whether this node holds (or is claiming) the address.
    pub fn escalated(&self) -> bool {
        self.escalated
    }
    pub fn lease_until(&self) -> Millis {
        self.lease_until
    }
    pub fn last_change(&self) -> Millis {
        self.last_change
    }
    pub fn last_seen(&self, peer: NodeId) -> Option<Millis> {
        self.peers[peer].seen
    }
    pub fn peer_healthy(&self, peer: NodeId) -> bool {
        self.peers[peer].healthy
    }

    /// Votes needed to win, and acknowledgements to hold a lease.
    pub fn quorum(&self) -> usize {
        let n = self.members.len();
        if self.s.half_votes && n.is_multiple_of(2) {
            n / 2
        } else {
            n / 2 + 1
        }
    }

    /// Whether this node is in contact with a quorum right now: as leader,
    /// a live lease; as follower, a leader heard within the election timeout.
    pub fn has_quorum(&self, now: Millis) -> bool {
        match self.role {
            Standing::Leader => now < self.lease_until,
            _ => self.leader.is_some() && now < self.heard_leader_at + self.s.election_timeout,
        }
    }

    /// What `peer` says its priority is (learned from its messages).
    pub fn set_priority(&mut self, peer: NodeId, priority: u32) {
        if let Some(m) = self.members.get_mut(peer) {
            m.priority = priority;
        }
    }

    /// Local health (e.g. "I can reach the primary"), shared with the leader.
    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    /// The caller finished a [`Action::DeEscalate`].
    pub fn deescalated(&mut self, now: Millis) {
        self.deescalating = false;
        self.tick(now);
    }

    /// An escalation action failed: verify (and so repair) again soon.
    pub fn action_failed(&mut self, now: Millis) {
        self.next_verify = self.next_verify.min(now + self.s.heartbeat_interval * 10);
    }

    fn rand(&mut self, bound: u64) -> u64 {
        // splitmix64: deterministic per seed, no global state.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound.max(1)
    }

    /// Members of higher priority campaign first.
    fn reset_election(&mut self, now: Millis) {
        let et = self.s.election_timeout;
        let mine = self.members[self.id].priority;
        // Disjoint windows per rank: the highest-priority node that can
        // campaign does so first (ranks past 3 share the last window).
        let rank = self.members.iter().filter(|m| m.priority > mine).count() as u64;
        self.election_at = now + et + rank.min(3) * et / 4 + self.rand(et / 4);
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.ready.messages.push((to, msg));
    }

    fn broadcast(&mut self, msg: Msg) {
        for to in 0..self.members.len() {
            if to != self.id {
                self.send(to, msg.clone());
            }
        }
    }

    fn changed(&mut self, now: Millis) {
        self.last_change = now;
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>, now: Millis) {
        if self.role == Standing::Leader || self.leader != leader {
            self.changed(now);
        }
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        self.role = Standing::Follower;
        self.leader = leader;
        self.transfer = None;
        self.pinned = false;
        if leader.is_some() {
            self.heard_leader_at = now;
        }
        self.reset_election(now);
    }

    /// Does this node refuse to vote because it hears a live leader?
    fn in_lease(&self, now: Millis) -> bool {
        match self.role {
            Standing::Leader => true,
            _ => self.leader.is_some() && now < self.heard_leader_at + self.s.election_timeout,
        }
    }

    /// Whether `peer` goes before this node when both want to lead:
    /// higher priority first, then the lower id.
    fn precedes(&self, peer: NodeId) -> bool {
        let key = |i: NodeId| (self.members[i].priority, std::cmp::Reverse(i));
        key(peer) > key(self.id)
    }

    fn count_granted(&self) -> usize {
        self.granted.iter().filter(|g| **g).count()
    }

    fn start_pre_vote(&mut self, now: Millis) {
        self.role = Standing::PreCandidate;
        self.pre_vote_at = now;
        self.refused.fill(false);
        self.leader = None;
        self.campaign_pinned = false;
        self.granted.fill(false);
        self.granted[self.id] = true;
        self.reset_election(now);
        if self.count_granted() >= self.quorum() {
            return self.campaign(false, now);
        }
        self.broadcast(Msg::PreVote {
            term: self.term + 1,
        });
    }

    fn campaign(&mut self, transfer: bool, now: Millis) {
        self.role = Standing::Candidate;
        self.term += 1;
        self.voted_for = Some(self.id);
        self.leader = None;
        self.granted.fill(false);
        self.granted[self.id] = true;
        self.reset_election(now);
        self.changed(now);
        if self.count_granted() >= self.quorum() {
            return self.become_leader(now);
        }
        self.broadcast(Msg::Vote {
            term: self.term,
            transfer,
        });
    }

    fn become_leader(&mut self, now: Millis) {
        self.role = Standing::Leader;
        self.leader = Some(self.id);
        self.leader_since = now;
        self.lease_until = 0;
        self.transfer = None;
        self.pinned = self.campaign_pinned;
        for p in &mut self.peers {
            p.acked = None;
        }
        self.changed(now);
        self.next_heartbeat = now;
        self.heartbeat(now);
    }

    fn heartbeat(&mut self, now: Millis) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.s.heartbeat_interval;
            self.broadcast(Msg::Heartbeat {
                term: self.term,
                stamp: now,
            });
        }
    }

    /// The stamp a quorum has acknowledged (self counts as `now`).
    fn quorum_stamp(&self, now: Millis) -> Option<Millis> {
        let mut stamps: Vec<Millis> = (0..self.members.len())
            .filter_map(|i| {
                if i == self.id {
                    Some(now)
                } else {
                    self.peers[i].acked
                }
            })
            .collect();
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        stamps.get(self.quorum() - 1).copied()
    }

    /// Advances timers. Call every tick (a quarter heartbeat or finer).
    pub fn tick(&mut self, now: Millis) {
        let stale = now.saturating_sub(self.s.heartbeat_interval * 3);
        for p in &mut self.peers {
            if p.seen.is_none_or(|s| s < stale) {
                p.up_since = None;
            }
        }
        match self.role {
            Standing::Leader => self.tick_leader(now),
            _ => {
                if now >= self.election_at && now >= self.boot_until {
                    self.start_pre_vote(now);
                }
            }
        }
        self.update_escalation(now);
    }

    fn tick_leader(&mut self, now: Millis) {
        let quorum_stamp = self.quorum_stamp(now);
        if let Some(s) = quorum_stamp {
            // Renewed on acknowledgements; also here for a quorum of one.
            self.lease_until = self.lease_until.max(s + self.s.lease);
        }
        let heard = quorum_stamp.unwrap_or(0).max(self.leader_since);
        if now >= heard + self.s.lease + self.s.heartbeat_interval {
            // check-quorum: a leader whose lease ran out and whose next
            // round went unacknowledged too steps down. It holds nothing
            // by then; its heartbeats only keep the followers from
            // electing a leader that can.
            return self.become_follower(self.term, None, now);
        }
        if let Some(t) = self.transfer {
            if now >= t.deadline {
                // The transfer failed; this term stays inactive. Step down
                // and let an ordinary election follow.
                return self.become_follower(self.term, None, now);
            }
            if now >= t.next_send && !self.escalated && !self.deescalating {
                // Again every heartbeat: one lost message must not cost an
                // election. The target's campaign ends this term here, and
                // a copy that arrives after it is of an older term.
                self.send(t.to, Msg::TimeoutNow { term: self.term });
                self.transfer = Some(Transfer {
                    next_send: now + self.s.heartbeat_interval,
                    ..t
                });
            }
        } else if let Some(to) = self.steer_target(now) {
            self.start_transfer(to, false, now);
        }
        self.heartbeat(now);
    }

    /// Escalate while leading with a live lease; otherwise de-escalate.
    fn update_escalation(&mut self, now: Millis) {
        let want =
            self.role == Standing::Leader && now < self.lease_until && self.transfer.is_none();
        if want && !self.escalated && !self.deescalating {
            self.escalated = true;
            self.next_verify = now + self.s.verify_interval;
            self.ready
                .actions
                .push(Action::Escalate { term: self.term });
            self.changed(now);
        } else if !want && self.escalated {
            self.escalated = false;
            self.deescalating = true;
            self.ready
                .actions
                .push(Action::DeEscalate { term: self.term });
            self.changed(now);
        } else if want && now >= self.next_verify {
            self.next_verify = now + self.s.verify_interval;
            self.ready.actions.push(Action::Verify { term: self.term });
        }
    }
}

#[cfg(test)]
mod tests;
