//! Single-node rules of the state machine; `../sim.rs` checks clusters.

use super::*;

fn settings() -> Settings {
    Settings {
        heartbeat_interval: 100,
        election_timeout: 1000,
        lease: 600,
        verify_interval: 10_000,
        failback_after: 0,
        half_votes: false,
    }
}

fn node(id: NodeId, now: Millis) -> Elector {
    let members = (0..3)
        .map(|i| Member {
            name: format!("n{i}"),
            priority: 1,
        })
        .collect();
    Elector::new(id, members, settings(), now, 7)
}

fn granted(ready: Ready) -> Option<bool> {
    ready.messages.into_iter().find_map(|(_, m)| match m {
        Msg::VoteResp { granted, .. } | Msg::PreVoteResp { granted, .. } => Some(granted),
        _ => None,
    })
}

#[test]
fn a_restarted_node_grants_no_vote_for_one_election_timeout() {
    let mut n = node(0, 5_000);
    n.step(
        1,
        Msg::Vote {
            term: 3,
            transfer: false,
        },
        5_500,
    );
    assert_eq!(granted(n.take_ready()), Some(false));
    n.step(
        2,
        Msg::Vote {
            term: 4,
            transfer: false,
        },
        6_000,
    );
    assert_eq!(granted(n.take_ready()), Some(true));
}

#[test]
fn one_vote_per_term() {
    let mut n = node(0, 0);
    n.step(
        1,
        Msg::Vote {
            term: 2,
            transfer: false,
        },
        2_000,
    );
    assert_eq!(granted(n.take_ready()), Some(true));
    n.step(
        2,
        Msg::Vote {
            term: 2,
            transfer: false,
        },
        2_001,
    );
    assert_eq!(granted(n.take_ready()), Some(false));
}

#[test]
fn a_follower_that_hears_its_leader_ignores_candidates_but_not_transfers() {
    let mut n = node(0, 0);
    n.step(1, Msg::Heartbeat { term: 2, stamp: 1 }, 2_000);
    let _ = n.take_ready();
    n.step(2, Msg::PreVote { term: 3 }, 2_100);
    assert_eq!(granted(n.take_ready()), Some(false));
    n.step(
        2,
        Msg::Vote {
            term: 3,
            transfer: false,
        },
        2_100,
    );
    assert_eq!(granted(n.take_ready()), None, "ignored, not answered");
    n.step(
        2,
        Msg::Vote {
            term: 3,
            transfer: true,
        },
        2_200,
    );
    assert_eq!(granted(n.take_ready()), Some(true));
}

#[test]
fn a_follower_acknowledges_one_leader_per_term() {
    let mut n = node(0, 0);
    n.step(1, Msg::Heartbeat { term: 2, stamp: 1 }, 2_000);
    assert_eq!(n.take_ready().messages.len(), 1);
    n.step(2, Msg::Heartbeat { term: 2, stamp: 1 }, 2_010);
    assert!(n.take_ready().messages.is_empty());
    assert_eq!(n.leader(), Some(1));
}

#[test]
fn the_lease_comes_from_a_quorum_of_acknowledged_stamps() {
    let mut n = node(0, 0);
    // Elected at 2000: pre-vote and vote from node 1.
    n.tick(2_000);
    n.step(
        1,
        Msg::PreVoteResp {
            term: 1,
            granted: true,
        },
        2_000,
    );
    n.step(
        1,
        Msg::VoteResp {
            term: 1,
            granted: true,
        },
        2_001,
    );
    assert_eq!(n.role(), Standing::Leader);
    assert!(!n.escalated(), "no lease before an acknowledgement");
    n.step(
        2,
        Msg::HeartbeatResp {
            term: 1,
            stamp: 2_001,
            healthy: true,
        },
        2_010,
    );
    assert!(n.escalated());
    assert_eq!(n.lease_until(), 2_601);
    let actions = n.take_ready().actions;
    assert_eq!(actions, vec![Action::Escalate { term: 1 }]);
    // No more acknowledgements: it lets go when the lease runs out.
    n.tick(2_600);
    assert!(n.escalated());
    n.tick(2_601);
    assert!(!n.escalated());
    assert!(
        n.take_ready()
            .actions
            .contains(&Action::DeEscalate { term: 1 })
    );
}

#[test]
fn a_hand_over_is_sent_again_until_the_target_campaigns() {
    let mut n = node(0, 0);
    n.tick(2_000);
    n.step(
        1,
        Msg::PreVoteResp {
            term: 1,
            granted: true,
        },
        2_000,
    );
    n.step(
        1,
        Msg::VoteResp {
            term: 1,
            granted: true,
        },
        2_001,
    );
    assert_eq!(n.role(), Standing::Leader);
    let _ = n.take_ready();
    n.switchover("n1", 2_010).unwrap();
    let timeouts = |r: Ready| {
        r.messages
            .into_iter()
            .filter(|(to, m)| *to == 1 && matches!(m, Msg::TimeoutNow { term: 1 }))
            .count()
    };
    assert_eq!(timeouts(n.take_ready()), 1);
    // The first copy is lost: it goes again a heartbeat later, not before.
    n.tick(2_050);
    assert_eq!(timeouts(n.take_ready()), 0);
    n.tick(2_110);
    assert_eq!(timeouts(n.take_ready()), 1);
    // The target campaigns: this term is over here, nothing more is sent.
    n.step(
        1,
        Msg::Vote {
            term: 2,
            transfer: true,
        },
        2_120,
    );
    assert_ne!(n.role(), Standing::Leader);
    n.tick(2_300);
    assert_eq!(timeouts(n.take_ready()), 0);
}

/// A node of this test's cluster as a pre-candidate of round 1 at `now`.
fn pre_candidate(id: NodeId, now: Millis) -> Elector {
    let mut n = node(id, 0);
    n.tick(now);
    assert_eq!(n.role(), Standing::PreCandidate);
    n.take_ready();
    n
}

#[test]
fn of_two_pre_candidates_of_one_round_only_the_first_in_order_goes_on() {
    // n0 goes before n1 (equal priority, lower id).
    let mut n0 = pre_candidate(0, 2_000);
    let mut n1 = pre_candidate(1, 2_000);
    n0.step(1, Msg::PreVote { term: 1 }, 2_001);
    assert_eq!(granted(n0.take_ready()), Some(false));
    assert_eq!(n0.role(), Standing::PreCandidate);
    n1.step(0, Msg::PreVote { term: 1 }, 2_001);
    assert_eq!(granted(n1.take_ready()), Some(true));
    assert_eq!(n1.role(), Standing::Follower);
    // n1 holds its own campaign back while n0 wins.
    n1.tick(2_150);
    assert_eq!(n1.role(), Standing::Follower);
}

#[test]
fn a_pre_candidate_refused_by_a_peer_makes_way_for_it() {
    let mut n0 = pre_candidate(0, 2_000);
    n0.step(
        1,
        Msg::PreVoteResp {
            term: 0,
            granted: false,
        },
        2_002,
    );
    // n1 could not grant n0's round; n0 must not block n1's.
    n0.step(1, Msg::PreVote { term: 1 }, 2_010);
    assert_eq!(granted(n0.take_ready()), Some(true));
    assert_eq!(n0.role(), Standing::Follower);
}

#[test]
fn pre_votes_travel_with_heartbeats_and_votes_on_the_link() {
    assert_eq!(Msg::PreVote { term: 1 }.path(), Path::Heartbeat);
    let resp = Msg::PreVoteResp {
        term: 1,
        granted: true,
    };
    assert_eq!(resp.path(), Path::Heartbeat);
    let vote = Msg::Vote {
        term: 1,
        transfer: false,
    };
    assert_eq!(vote.path(), Path::Link);
    assert_eq!(Msg::TimeoutNow { term: 1 }.path(), Path::Link);
}

#[test]
fn a_leader_without_acknowledgements_steps_down_after_its_lease_and_a_heartbeat() {
    let mut n = node(0, 0);
    n.tick(2_000);
    n.step(
        1,
        Msg::PreVoteResp {
            term: 1,
            granted: true,
        },
        2_001,
    );
    n.step(
        1,
        Msg::VoteResp {
            term: 1,
            granted: true,
        },
        2_002,
    );
    assert_eq!(n.role(), Standing::Leader);
    // No heartbeat is ever acknowledged.
    n.tick(2_002 + 600 + 100 - 1);
    assert_eq!(n.role(), Standing::Leader);
    n.tick(2_002 + 600 + 100);
    assert_eq!(n.role(), Standing::Follower);
}
