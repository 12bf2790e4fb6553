//! Three tidepool processes in network namespaces elect one leader; the
//! leader holds the "address" (mode `command`, every move recorded with a
//! timestamp). Kills, isolation, heals and planned switchovers must never
//! leave two nodes holding it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tidepool_tests::{
    Forwarder, NetNs, PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, wait_for,
};

/// The tests measure timings and start 3 nodes each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const KEY: &str = "e2e-watchdog-shared-key-0123456789";
const TOKEN: &str = "e2e-admin-token";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One recorded move: (time ns, action, node).
#[derive(Debug, Clone, PartialEq)]
struct Move {
    at: u128,
    action: String,
    node: String,
}

/// Fields drop in order: processes first, then the network, then PostgreSQL.
struct Group {
    nodes: Vec<Option<Tidepool>>,
    _fwd: Vec<Forwarder>,
    net: NetNs,
    _pg: PgCluster,
    configs: Vec<String>,
    moves: PathBuf,
    dir: tempfile::TempDir,
    /// (time ns, node) of every kill.
    kills: Vec<(u128, String)>,
}

fn name(i: usize) -> String {
    format!("tp{i}")
}

impl Group {
    fn start(priorities: [u32; 3]) -> Result<Group> {
        Self::start_in(priorities, NetNs::new(3)?)
    }

    /// Three nodes in the first three namespaces of `net`.
    fn start_in(priorities: [u32; 3], net: NetNs) -> Result<Group> {
        let pg = PgCluster::start(PgClusterOpts::standbys(0))?;
        let dir = tempfile::tempdir()?;
        let moves = dir.path().join("moves.log");
        std::fs::write(&moves, "")?;
        let primary = pg.primary();
        let fwd = Forwarder::start(
            SocketAddr::from((net.root_addr(), 0)),
            SocketAddr::from(([127, 0, 0, 1], primary.port)),
        )?;
        let record = format!(
            "echo \"$(date +%s%N) $TIDEPOOL_ACTION $TIDEPOOL_NODE\" >> {}",
            moves.display()
        );
        let mut configs = Vec::new();
        for i in 0..3 {
            let me = net.addr(i);
            let mut peers = String::new();
            for j in (0..3).filter(|&j| j != i) {
                peers += &format!(
                    "[[watchdog.peers]]\nname = \"{}\"\naddress = \"{}:9000\"\nheartbeat = \"{}:9694\"\npriority = {}\n\n",
                    name(j),
                    net.addr(j),
                    net.addr(j),
                    priorities[j]
                );
            }
            configs.push(format!(
                "[server]\nlisten = \"{me}:9999\"\nadmin_listen = \"{me}:9898\"\nadmin_token = \"{TOKEN}\"\n\n\
                 [health_check]\nuser = \"postgres\"\npassword = \"postgres\"\n\n\
                 [[backends]]\nname = \"pg0\"\nhost = \"{}\"\nport = {}\n\n\
                 [[users]]\nname = \"app\"\npassword = \"app\"\n\n\
                 [watchdog]\nnode_name = \"{}\"\nlisten = \"{me}:9000\"\nheartbeat_listen = \"{me}:9694\"\n\
                 shared_key = \"{KEY}\"\npriority = {}\n\n{peers}\
                 [escalation]\nmode = \"command\"\nescalate_command = '{record}'\nde_escalate_command = '{record}'\n",
                fwd.addr().ip(),
                fwd.addr().port(),
                name(i),
                priorities[i],
            ));
        }
        let mut g = Group {
            net,
            _pg: pg,
            _fwd: vec![fwd],
            nodes: vec![None, None, None],
            configs,
            moves,
            dir,
            kills: Vec::new(),
        };
        for i in 0..3 {
            g.launch(i)?;
        }
        Ok(g)
    }

    fn launch(&mut self, i: usize) -> Result<()> {
        let opts = TidepoolOpts {
            wrapper: self.net.wrapper(i),
            wait_addr: Some(SocketAddr::from((self.net.addr(i), 9999))),
            wait_ready: false,
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            ..TidepoolOpts::default()
        };
        self.nodes[i] = Some(Tidepool::start_with(&self.configs[i], opts)?);
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut t) = self.nodes[i].take() {
            t.kill()?;
            self.kills.push((now_ns(), name(i)));
        }
        Ok(())
    }

    /// `tidepool ctl ARGS` against node `i` (from the root namespace).
    fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let url = format!("http://{}:9898", self.net.addr(i));
        let out = Command::new(Tidepool::binary()?)
            .args(["ctl", "--url", &url, "--token", TOKEN])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self, i: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl(i, &["watchdog"])?)?)
    }

    fn moves(&self) -> Vec<Move> {
        read_moves(&self.moves)
    }

    /// Moves that change the holder (verifications left out).
    fn changes(&self) -> Vec<Move> {
        self.moves()
            .into_iter()
            .filter(|m| m.action != "verify")
            .collect()
    }

    /// Waits for a node other than those in `not` to escalate after
    /// `after`; returns it and the time.
    fn wait_escalated(&self, after: u128, not: &[&str], within: Duration) -> Result<Move> {
        poll(within, "a new escalation", || {
            self.changes()
                .into_iter()
                .find(|m| m.at > after && m.action == "escalate" && !not.contains(&m.node.as_str()))
        })
        .with_context(|| format!("no new escalation; moves: {:?}", self.moves()))
    }

    /// Replays the timeline: nobody escalates while another holds.
    fn assert_never_two_holders(&self) {
        let mut events: Vec<(u128, String, String)> = self
            .changes()
            .into_iter()
            .map(|m| (m.at, m.action, m.node))
            .collect();
        events.extend(
            self.kills
                .iter()
                .map(|(t, n)| (*t, "killed".into(), n.clone())),
        );
        events.sort();
        let mut holder: Option<String> = None;
        for (at, action, node) in &events {
            match action.as_str() {
                "escalate" => {
                    if let Some(h) = &holder {
                        assert_eq!(
                            h, node,
                            "{node} escalated at {at} while {h} held; {events:?}"
                        );
                    }
                    holder = Some(node.clone());
                }
                _ if holder.as_deref() == Some(node.as_str()) => holder = None,
                _ => {}
            }
        }
    }

    fn leaders(&self) -> Vec<String> {
        (0..3)
            .filter(|&i| self.nodes[i].is_some())
            .filter_map(|i| self.status(i).ok())
            .filter(|s| s["role"] == "leader")
            .map(|s| s["node"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Polls `f` until it gives a value, for at most `within`.
fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_for(within, what, || f().context("not yet"))
}

fn read_moves(path: &Path) -> Vec<Move> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Move {
                at: it.next()?.parse().ok()?,
                action: it.next()?.to_string(),
                node: it.next()?.to_string(),
            })
        })
        .collect()
}

fn index(node: &str) -> usize {
    node.trim_start_matches("tp").parse().unwrap()
}

fn first_leader(g: &Group) -> Result<Move> {
    g.wait_escalated(0, &[], Duration::from_secs(15))
}

#[test]
fn a_killed_leader_is_replaced_within_three_seconds() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start([1, 1, 1])?;
    let mut leader = first_leader(&g)?;
    let mut took = Vec::new();
    for _ in 0..3 {
        let old = index(&leader.node);
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
    took.sort();
    eprintln!(
        "watchdog failover after kill -9: min {:?}, median {:?}, max {:?}",
        took[0],
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(took.iter().all(|t| *t < Duration::from_secs(3)), "{took:?}");
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
    // tp0 is preferred: the switchover must stick anyway.
    let g = Group::start([3, 2, 1])?;
    let leader = first_leader(&g)?;
    assert_eq!(leader.node, "tp0", "the highest priority leads first");
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
