//! Three tidepool processes in network namespaces elect one leader; the
//! leader holds the "address" (mode `command`, every move recorded with a
//! timestamp). Kills, isolation, heals and planned switchovers must never
//! leave two nodes holding it.

mod watchdog_common;

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tidepool_tests::{NetNs, Tidepool, TidepoolOpts};
use watchdog_common::*;

/// The tests measure timings and start 3 nodes each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A node restarted less than an election timeout ago votes for no one (it
/// may have acknowledged a lease it forgot): a leader that goes sooner
/// after its followers restarted costs an extra election whatever else is
/// done, so the rolling tests give each restarted node that long, as a
/// rolling restart that waits for each node to be ready does.
const SETTLE: Duration = Duration::from_millis(1_200);

#[test]
fn a_killed_leader_is_replaced_within_three_seconds() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start([1, 1, 1])?;
    let mut leader = first_leader(&g)?;
    let mut took = Vec::new();
    // scripts/bench-watchdog asks for more kills.
    let kills: usize = std::env::var("TIDEPOOL_WATCHDOG_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..kills {
        let old = index(&leader.node);
        // The followers restart first: the survivors' links to each other
        // (and the old leader's to them) were opened before, and must not
        // lose the votes that elect the next leader.
        for i in (0..3).filter(|&i| i != old) {
            restart_follower(&mut g, i, &leader.node)?;
        }
        std::thread::sleep(SETTLE);
        g.kill(old)?;
        let killed_at = now_ns();
        let next = g.wait_escalated(killed_at, &[&leader.node], Duration::from_secs(10))?;
        took.push(Duration::from_nanos((next.at - killed_at) as u64));
        g.launch(old)?;
        // The restarted node comes back as a follower.
        poll(
            Duration::from_secs(10),
            "the restarted node to follow",
            || {
                g.status(old)
                    .ok()
                    .filter(|s| s["leader"] == next.node.as_str())
            },
        )?;
        leader = next;
    }
    report("watchdog failover after kill -9", &mut took);
    assert!(took.iter().all(|t| *t < Duration::from_secs(3)), "{took:?}");
    g.assert_never_two_holders();
    Ok(())
}

#[test]
fn a_leader_that_cannot_hear_heartbeat_replies_hands_the_address_on() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Group::start([1, 1, 1])?;
    let mut leader = first_leader(&g)?;
    // scripts/bench-watchdog --one-way asks for more rounds.
    let rounds: usize = std::env::var("TIDEPOOL_WATCHDOG_ONE_WAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut took = Vec::new();
    for _ in 0..rounds {
        let old = index(&leader.node);
        // UDP into the leader is dropped; everything else (its own
        // heartbeats out, TCP both ways) still works.
        let cut = now_ns();
        g.net.drop_udp_into(old, 9694)?;
        let next = g.wait_escalated(cut, &[&leader.node], Duration::from_secs(10))?;
        took.push(Duration::from_nanos((next.at - cut) as u64));
        // While the split lasts, the cut-off node never leads again: it
        // cannot hear the answers to its pre-votes.
        let watch_until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < watch_until {
            let s = g.status(old)?;
            assert_ne!(s["role"], "leader", "the cut-off node leads again: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let during: Vec<Move> = g.changes().into_iter().filter(|m| m.at > next.at).collect();
        assert!(during.is_empty(), "the address moved again: {during:?}");
        g.net.accept_udp_into(old)?;
        poll(Duration::from_secs(10), "the healed node to follow", || {
            g.status(old)
                .ok()
                .filter(|s| s["leader"] == next.node.as_str())
        })?;
        let healed = now_ns();
        std::thread::sleep(SETTLE);
        let after: Vec<Move> = g.changes().into_iter().filter(|m| m.at > healed).collect();
        assert!(
            after.is_empty(),
            "the address moved after the heal: {after:?}"
        );
        leader = next;
    }
    report("watchdog failover on a one-way split", &mut took);
    assert!(took.iter().all(|t| *t < Duration::from_secs(4)), "{took:?}");
    g.assert_never_two_holders();
    Ok(())
}

#[test]
fn an_isolated_leader_lets_go_before_the_majority_elects_another() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Group::start([1, 1, 1])?;
    let leader = first_leader(&g)?;
    let old = index(&leader.node);
    let cut = now_ns();
    g.net.isolate(old)?;
    let next = g.wait_escalated(cut, &[&leader.node], Duration::from_secs(10))?;
    let down = g
        .changes()
        .into_iter()
        .find(|m| m.at > cut && m.node == leader.node && m.action == "de_escalate")
        .context("the isolated leader never de-escalated")?;
    eprintln!(
        "isolated leader let go after {:?}; {} took over after {:?} (gap {:?})",
        Duration::from_nanos((down.at - cut) as u64),
        next.node,
        Duration::from_nanos((next.at - cut) as u64),
        Duration::from_nanos((next.at - down.at) as u64),
    );
    assert!(down.at < next.at);

    // Heal: exactly one leader, and it stays.
    g.net.reconnect(old)?;
    let healed = now_ns();
    poll(Duration::from_secs(10), "one leader after the heal", || {
        (g.leaders() == vec![next.node.clone()]).then_some(())
    })?;
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        assert_eq!(g.leaders(), vec![next.node.clone()]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let after: Vec<Move> = g.changes().into_iter().filter(|m| m.at > healed).collect();
    assert!(
        after.is_empty(),
        "leadership flapped after the heal: {after:?}"
    );
    g.assert_never_two_holders();
    Ok(())
}

#[test]
fn a_planned_switchover_moves_leadership_and_the_address() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // tp0 is preferred and fails back after 1 s: the switchover must stick
    // anyway (the 4 s watch below).
    let g = Group::start([3, 2, 1])?;
    let first = first_leader(&g)?;
    // Whoever wins the first election, priority steers leadership to tp0.
    let leader = if first.node == "tp0" {
        first
    } else {
        g.wait_escalated(first.at, &["tp1", "tp2"], Duration::from_secs(10))?
    };
    assert_eq!(leader.node, "tp0", "the highest priority ends up leading");
    let asked = now_ns();
    // Asked on a follower: it forwards to the leader.
    let out = g.ctl(1, &["switchover", "--to", "tp2"])?;
    assert!(out.contains("tp2"), "{out}");
    let next = g.wait_escalated(asked, &["tp0"], Duration::from_secs(5))?;
    assert_eq!(next.node, "tp2");
    eprintln!(
        "switchover took {:?}",
        Duration::from_nanos((next.at - asked) as u64)
    );
    let stay = Instant::now() + Duration::from_secs(4);
    while Instant::now() < stay {
        assert_eq!(g.leaders(), vec!["tp2".to_string()]);
        std::thread::sleep(Duration::from_millis(250));
    }
    g.assert_never_two_holders();
    let s = g.status(0)?;
    assert_eq!(s["leader"], "tp2");
    Ok(())
}

#[test]
fn a_stranger_without_the_key_cannot_join_or_vote() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Group::start_in([1, 1, 1], NetNs::new(4)?)?;
    let leader = first_leader(&g)?;
    // A fourth machine that knows the members' names and addresses, not
    // the key: it poses as a member with the highest priority and
    // campaigns on its own.
    let me = g.net.addr(3);
    let stolen = leader.node.clone();
    let mut peers = String::new();
    for j in 0..3 {
        peers += &format!(
            "[[watchdog.peers]]\nname = \"{}\"\naddress = \"{}:9000\"\nheartbeat = \"{}:9694\"\n\n",
            if name(j) == stolen {
                "tp9".to_string()
            } else {
                name(j)
            },
            g.net.addr(j),
            g.net.addr(j)
        );
    }
    let stranger_moves = g.dir.path().join("stranger.log");
    let config = format!(
        "[server]\nlisten = \"{me}:9999\"\nadmin_listen = \"127.0.0.1:9898\"\n\n\
         [[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\nport = 1\n\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n\n\
         [watchdog]\nnode_name = \"{stolen}\"\nlisten = \"{me}:9000\"\nheartbeat_listen = \"{me}:9694\"\n\
         shared_key = \"not-the-cluster-key-but-long-enough\"\npriority = 100\n\n{peers}\
         [escalation]\nmode = \"command\"\nescalate_command = 'echo up >> {}'\n",
        stranger_moves.display()
    );
    let opts = TidepoolOpts {
        wrapper: g.net.wrapper(3),
        wait_addr: Some(SocketAddr::from((me, 9999))),
        wait_ready: false,
        ..TidepoolOpts::default()
    };
    let _stranger = Tidepool::start_with(&config, opts)?;
    poll(Duration::from_secs(10), "frames refused", || {
        (0..3)
            .filter_map(|i| g.status(i).ok())
            .any(|s| s["rejected_frames"].as_u64() > Some(0))
            .then_some(())
    })?;
    let watch = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch {
        assert_eq!(g.leaders(), vec![leader.node.clone()]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let changes: Vec<Move> = g
        .changes()
        .into_iter()
        .filter(|m| m.at > leader.at)
        .collect();
    assert!(
        changes.is_empty(),
        "the stranger disturbed the cluster: {changes:?}"
    );
    // Alone, it never gets a quorum, so it never escalates either.
    assert_eq!(
        std::fs::read_to_string(&stranger_moves).unwrap_or_default(),
        ""
    );
    Ok(())
}

/// Node `i`'s status of `backend` (`up`, `waiting`, `down`).
fn backend_status(g: &Group, i: usize, backend: &str) -> String {
    g.backend(i, backend)
        .map(|b| b["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn a_backend_failure_seen_by_one_node_does_not_detach_it_but_a_quorum_does() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Group::start_full(
        [1, 1, 1],
        NetNs::new(3)?,
        1,
        &command_escalation,
        vec![Vec::new(); 3],
    )?;
    let leader = first_leader(&g)?;
    let l = index(&leader.node);
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    poll(Duration::from_secs(20), "pg1 up on every node", || {
        (0..3)
            .all(|i| backend_status(&g, i, "pg1") == "up")
            .then_some(())
    })?;

    // The leader alone loses its path to the standby: it would detach it
    // on its own, but one node is no quorum.
    g.fwd[l][1].cut();
    poll(
        Duration::from_secs(10),
        "the leader to see pg1 failing",
        || {
            let s = g.status(l).ok()?;
            let seen = s["backend_failures"]
                .as_array()?
                .iter()
                .find(|v| v["backend"] == "pg1")?["seen_failing_by"]
                .clone();
            (seen == serde_json::json!([leader.node])).then_some(())
        },
    )?;
    let watch = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch {
        for i in 0..3 {
            assert_ne!(
                backend_status(&g, i, "pg1"),
                "down",
                "node tp{i} detached pg1 on one node's word"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // A follower loses it too: two of three is a quorum, and every node,
    // the one that still reaches pg1 included, follows the leader's table.
    g.fwd[followers[0]][1].cut();
    poll(
        Duration::from_secs(15),
        "pg1 detached on every node",
        || {
            (0..3)
                .all(|i| backend_status(&g, i, "pg1") == "down")
                .then_some(())
        },
    )?;
    let reason = |i: usize| -> String {
        g.backend(i, "pg1")
            .map(|b| b["detach_reason"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert!(
        reason(l).contains("seen failing by 2"),
        "leader's reason: {}",
        reason(l)
    );
    let bystander = followers[1];
    assert!(
        reason(bystander).contains(&format!("watchdog leader {}", leader.node)),
        "tp{bystander} reaches pg1 and detached it on the leader's word: {}",
        reason(bystander)
    );
    // The primary was never in question.
    for i in 0..3 {
        assert_eq!(backend_status(&g, i, "pg0"), "up");
    }

    // The operator attaches it on the leader once the paths are back:
    // every node attaches it again.
    g.fwd[l][1].restore();
    g.fwd[followers[0]][1].restore();
    g.ctl(l, &["attach", "pg1"])?;
    poll(
        Duration::from_secs(15),
        "pg1 attached on every node",
        || {
            (0..3)
                .all(|i| backend_status(&g, i, "pg1") == "up")
                .then_some(())
        },
    )?;
    Ok(())
}

#[test]
fn a_rolling_restart_hands_the_address_over_without_an_election() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start([1, 1, 1])?;
    let mut leader = first_leader(&g)?;
    // scripts/bench-watchdog --restarts asks for more rounds.
    let rounds: usize = std::env::var("TIDEPOOL_WATCHDOG_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut gaps = Vec::new();
    let mut stopped_logs = Vec::new();
    let mut started = [Instant::now(); 3];
    for _ in 0..rounds {
        let l = index(&leader.node);
        // Followers first, the leader last, as an operator rolls a group:
        // the leader's links to the restarted followers are stale then,
        // and the restarted followers refuse votes for an election timeout.
        for i in (0..3).filter(|&i| i != l) {
            restart_follower(&mut g, i, &leader.node)?;
            started[i] = Instant::now();
        }
        let youngest = started.iter().max().copied().unwrap_or_else(Instant::now);
        std::thread::sleep(SETTLE.saturating_sub(youngest.elapsed()));
        let stopping = now_ns();
        if let Some(t) = g.nodes[l].as_mut() {
            t.terminate(Duration::from_secs(10))?;
            stopped_logs.push(t.log_tail(40));
        }
        let next = g.wait_escalated(stopping, &[&leader.node], Duration::from_secs(10))?;
        let let_go = g
            .changes()
            .into_iter()
            .filter(|m| m.node == leader.node && m.action != "escalate" && m.at >= stopping)
            .map(|m| m.at)
            .min()
            .context("the stopping leader never let go")?;
        gaps.push(Duration::from_nanos(next.at.saturating_sub(let_go) as u64));
        g.launch(l)?;
        started[l] = Instant::now();
        poll(Duration::from_secs(10), "the old leader to follow", || {
            g.status(l)
                .ok()
                .filter(|s| s["leader"] == next.node.as_str())
        })?;
        leader = next;
    }
    report(
        "watchdog hand-over on a rolling restart, no holder for",
        &mut gaps,
    );
    // A hand-over takes milliseconds; an election after a lost one takes
    // an election timeout or more.
    assert!(
        gaps.iter().all(|t| *t < Duration::from_secs(1)),
        "{gaps:?}; moves: {:?}; stopped leaders' logs:\n{}",
        g.changes(),
        stopped_logs.join("\n---\n")
    );
    g.assert_never_two_holders();
    Ok(())
}
