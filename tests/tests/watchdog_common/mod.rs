//! Shared by the watchdog suites: three tidepool processes in network
//! namespaces, a PostgreSQL reachable from them, every escalation action
//! recorded with a timestamp (mode `command`, or beside another mode), and
//! a replay of that timeline.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tidepool_tests::{
    Forwarder, NetNs, PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, wait_for,
};

pub const KEY: &str = "e2e-watchdog-shared-key-0123456789";
pub const TOKEN: &str = "e2e-admin-token";

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One recorded move: (time ns, action, node).
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub at: u128,
    pub action: String,
    pub node: String,
}

/// Fields drop in order: processes first, then the network, then PostgreSQL.
pub struct Group {
    pub nodes: Vec<Option<Tidepool>>,
    /// `fwd[node][backend]`: node's path to backend.
    pub fwd: Vec<Vec<Forwarder>>,
    pub net: NetNs,
    pub pg: PgCluster,
    configs: Vec<String>,
    moves: PathBuf,
    pub dir: tempfile::TempDir,
    env: Vec<Vec<(String, String)>>,
    /// (time ns, node) of every kill.
    kills: Vec<(u128, String)>,
}

/// `[escalation]` in mode `command`, every move recorded by `record`.
pub fn command_escalation(_node: usize, record: &str) -> String {
    format!(
        "[escalation]\nmode = \"command\"\nescalate_command = '{record}'\nde_escalate_command = '{record}'\n"
    )
}

pub fn name(i: usize) -> String {
    format!("tp{i}")
}

impl Group {
    pub fn start(priorities: [u32; 3]) -> Result<Group> {
        Self::start_in(priorities, NetNs::new(3)?)
    }

    /// Three nodes in the first three namespaces of `net`.
    pub fn start_in(priorities: [u32; 3], net: NetNs) -> Result<Group> {
        Self::start_custom(priorities, net, &command_escalation, vec![Vec::new(); 3])
    }

    /// With node `i`'s `[escalation]` section from `escalation(i, record)`
    /// (`record` is a shell command that records the action) and extra
    /// environment `env[i]`.
    pub fn start_custom(
        priorities: [u32; 3],
        net: NetNs,
        escalation: &dyn Fn(usize, &str) -> String,
        env: Vec<Vec<(String, String)>>,
    ) -> Result<Group> {
        Self::start_full(priorities, net, 0, escalation, env)
    }

    /// A primary and `standbys` standbys as backends `pg0`, `pg1`, …; each
    /// tidepool node reaches each backend through a forwarder of its own
    /// (`fwd[node][backend]`), so a test can cut one node's path to one
    /// backend. A higher-priority node takes leadership back after 1 s
    /// (`priority_failback_after`), so failback is seen within a test.
    pub fn start_full(
        priorities: [u32; 3],
        net: NetNs,
        standbys: usize,
        escalation: &dyn Fn(usize, &str) -> String,
        env: Vec<Vec<(String, String)>>,
    ) -> Result<Group> {
        let pg = PgCluster::start(PgClusterOpts::standbys(standbys))?;
        let dir = tempfile::tempdir()?;
        let moves = dir.path().join("moves.log");
        std::fs::write(&moves, "")?;
        let mut fwd = Vec::new();
        for _ in 0..3 {
            let mut per_node = Vec::new();
            for b in pg.nodes() {
                per_node.push(Forwarder::start(
                    SocketAddr::from((net.root_addr(), 0)),
                    SocketAddr::from(([127, 0, 0, 1], b.port)),
                )?);
            }
            fwd.push(per_node);
        }
        let record = format!(
            "echo \"$(date +%s%N) $TIDEPOOL_ACTION $TIDEPOOL_NODE\" >> {}",
            moves.display()
        );
        let mut configs = Vec::new();
        for i in 0..3 {
            let me = net.addr(i);
            let backends: String = fwd[i]
                .iter()
                .enumerate()
                .map(|(b, f)| {
                    format!(
                        "[[backends]]\nname = \"pg{b}\"\nhost = \"{}\"\nport = {}\n\n",
                        f.addr().ip(),
                        f.addr().port()
                    )
                })
                .collect();
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
                 {backends}\
                 [[users]]\nname = \"app\"\npassword = \"app\"\n\n\
                 [watchdog]\nnode_name = \"{}\"\nlisten = \"{me}:9000\"\nheartbeat_listen = \"{me}:9694\"\n\
                 shared_key = \"{KEY}\"\npriority = {}\npriority_failback_after = \"1s\"\n\n{peers}{}",
                name(i),
                priorities[i],
                escalation(i, &record),
            ));
        }
        let mut g = Group {
            net,
            pg,
            fwd,
            nodes: vec![None, None, None],
            configs,
            moves,
            dir,
            env,
            kills: Vec::new(),
        };
        for i in 0..3 {
            g.launch(i)?;
        }
        Ok(g)
    }

    pub fn launch(&mut self, i: usize) -> Result<()> {
        let opts = TidepoolOpts {
            wrapper: self.net.wrapper(i),
            wait_addr: Some(SocketAddr::from((self.net.addr(i), 9999))),
            wait_ready: false,
            env: [
                ("RUST_LOG".to_string(), "info".to_string()),
                ("NO_COLOR".to_string(), "1".to_string()),
            ]
            .into_iter()
            .chain(self.env[i].iter().cloned())
            .collect(),
            ..TidepoolOpts::default()
        };
        self.nodes[i] = Some(Tidepool::start_with(&self.configs[i], opts)?);
        Ok(())
    }

    /// The last `lines` lines of node `i`'s log (empty once it was killed).
    #[allow(dead_code)]
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.nodes[i]
            .as_ref()
            .map(|t| t.log_tail(lines))
            .unwrap_or_default()
    }

    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut t) = self.nodes[i].take() {
            t.kill()?;
            self.kills.push((now_ns(), name(i)));
        }
        Ok(())
    }

    /// `tidepool ctl ARGS` against node `i` (from the root namespace).
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
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

    pub fn status(&self, i: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl(i, &["watchdog"])?)?)
    }

    pub fn moves(&self) -> Vec<Move> {
        read_moves(&self.moves)
    }

    /// Moves that change the holder (verifications left out).
    pub fn changes(&self) -> Vec<Move> {
        self.moves()
            .into_iter()
            .filter(|m| m.action != "verify")
            .collect()
    }

    /// Waits for a node other than those in `not` to escalate after
    /// `after`; returns it and the time.
    pub fn wait_escalated(&self, after: u128, not: &[&str], within: Duration) -> Result<Move> {
        poll(within, "a new escalation", || {
            self.changes()
                .into_iter()
                .find(|m| m.at > after && m.action == "escalate" && !not.contains(&m.node.as_str()))
        })
        .with_context(|| format!("no new escalation; moves: {:?}", self.moves()))
    }

    /// Replays the timeline: nobody escalates while another holds.
    pub fn assert_never_two_holders(&self) {
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

    /// Node `i`'s view of `backend` in its node table (`GET /v1/nodes`).
    pub fn backend(&self, i: usize, backend: &str) -> Result<Value> {
        let v: Value = serde_json::from_str(&self.ctl(i, &["--json", "nodes"])?)?;
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == backend)
            .cloned()
            .with_context(|| format!("no backend {backend} in {v}"))
    }

    pub fn leaders(&self) -> Vec<String> {
        (0..3)
            .filter(|&i| self.nodes[i].is_some())
            .filter_map(|i| self.status(i).ok())
            .filter(|s| s["role"] == "leader")
            .map(|s| s["node"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Polls `f` until it gives a value, for at most `within`.
pub fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_for(within, what, || f().context("not yet"))
}

pub fn read_moves(path: &Path) -> Vec<Move> {
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

pub fn index(node: &str) -> usize {
    node.trim_start_matches("tp").parse().unwrap()
}

/// Prints `LABEL: min …, median …, max … (ms min=… median=… max=…)`,
/// the line scripts/bench-watchdog reads. Sorts `took`.
pub fn report(label: &str, took: &mut [Duration]) {
    took.sort();
    let (min, median, max) = (took[0], took[took.len() / 2], took[took.len() - 1]);
    eprintln!(
        "{label}: min {min:?}, median {median:?}, max {max:?} (ms min={} median={} max={})",
        min.as_millis(),
        median.as_millis(),
        max.as_millis()
    );
}

/// Stops node `i` with SIGTERM and starts it again; waits until it
/// follows `leader`.
pub fn restart_follower(g: &mut Group, i: usize, leader: &str) -> Result<()> {
    if let Some(t) = g.nodes[i].as_mut() {
        t.terminate(Duration::from_secs(10))?;
    }
    g.launch(i)?;
    poll(
        Duration::from_secs(10),
        "the restarted follower to follow",
        || g.status(i).ok().filter(|s| s["leader"] == leader),
    )?;
    Ok(())
}

pub fn first_leader(g: &Group) -> Result<Move> {
    g.wait_escalated(0, &[], Duration::from_secs(15))
}
