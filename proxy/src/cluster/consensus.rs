//! Backend decisions in a watchdog cluster. Every tidepool node checks
//! every backend, but only the watchdog leader detaches or promotes, and
//! only when a quorum of nodes sees the backend failing: a node cut off
//! from one backend (its own network trouble) cannot take that backend
//! away from everyone. The other nodes mirror the leader's node table, so
//! a client gets the same routing from any tidepool node.
//!
//! The views travel on the watchdog's heartbeats: a follower's answer
//! carries the backends it sees failing, the leader's heartbeat carries
//! its table (detached nodes with their reasons, the primary). A view is
//! counted only while fresh (one election timeout), so a node that goes
//! quiet stops voting.
//!
//! The operator's `tidepool ctl detach` stays local and needs no quorum,
//! deliberately: it is how a node is taken out when the cluster cannot
//! agree.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Cluster, DetachCause, Detached, Status, manager::Manager};

/// Marks, in a detach reason, a node detached because the leader's table
/// says so (and attached again when the table stops saying so).
pub const BY_LEADER: &str = "as decided by watchdog leader";

/// The leader's node table, as it sends it to the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Detached nodes and why.
    pub detached: BTreeMap<String, String>,
    pub primary: Option<String>,
}

/// What one node tells another about the backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// Backends the sender sees failing (every health-check retry failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// The sender's node table, when it leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
}

/// Who sees a backend failing, for `GET /v1/watchdog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Votes {
    pub backend: String,
    pub seen_failing_by: Vec<String>,
    pub quorum: usize,
}

/// The leader's table as this node last received it.
#[derive(Debug, Clone)]
pub struct LeaderTable {
    pub leader: String,
    pub table: Table,
}

struct Inner {
    local_failing: BTreeSet<String>,
    /// Each peer's last report and when it came.
    peers: HashMap<String, (BTreeSet<String>, Instant)>,
    leading: bool,
    leader: Option<String>,
    table: Option<(String, Table, Instant)>,
    /// Per backend, the count of nodes last logged or acted on, so each
    /// change is logged once and a quorum acts once.
    noted: HashMap<String, usize>,
}

/// Shared by the watchdog (which carries the views) and the failover
/// manager (which acts on them).
pub struct Consensus {
    me: String,
    quorum: usize,
    fresh: Duration,
    cluster: Arc<Cluster>,
    inner: Mutex<Inner>,
}

impl Consensus {
    /// `quorum` nodes (this one included) must see a backend failing;
    /// a view older than `fresh` no longer counts.
    pub fn new(me: &str, quorum: usize, fresh: Duration, cluster: Arc<Cluster>) -> Consensus {
        Consensus {
            me: me.to_string(),
            quorum: quorum.max(1),
            fresh,
            cluster,
            inner: Mutex::new(Inner {
                local_failing: BTreeSet::new(),
                peers: HashMap::new(),
                leading: false,
                leader: None,
                table: None,
                noted: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// This node's health checks gave up on `backend`.
    pub fn note_failing(&self, backend: &str) {
        self.lock().local_failing.insert(backend.to_string());
    }

    /// Forgets local failures of backends that answer again (or left the
    /// configuration).
    pub fn prune(&self) {
        let snap = self.cluster.snapshot();
        self.lock().local_failing.retain(|name| {
            snap.nodes
                .iter()
                .find(|n| &n.name == name)
                .is_some_and(|n| !n.reachable)
        });
    }

    /// The watchdog's verdict: whether this node leads with a quorum, and
    /// whom it follows otherwise.
    pub fn set_leadership(&self, leading: bool, leader: Option<&str>) {
        let mut g = self.lock();
        g.leading = leading;
        g.leader = leader.map(str::to_string);
    }

    pub fn leading(&self) -> bool {
        self.lock().leading
    }

    /// The view this node sends: its failures, and its table when it leads.
    pub fn outgoing(&self) -> BackendView {
        let (failing, leading) = {
            let g = self.lock();
            (g.local_failing.iter().cloned().collect(), g.leading)
        };
        BackendView {
            failing,
            table: leading.then(|| self.own_table()),
        }
    }

    /// This node's table, from its node table.
    pub fn own_table(&self) -> Table {
        let snap = self.cluster.snapshot();
        Table {
            detached: self
                .cluster
                .detached()
                .into_iter()
                .map(|(name, why)| (name, why.message))
                .collect(),
            primary: snap.primary().map(|p| p.name.clone()),
        }
    }

    /// A view received from `from` at `now`.
    pub fn received(&self, from: &str, view: BackendView, now: Instant) {
        let mut g = self.lock();
        g.peers
            .insert(from.to_string(), (view.failing.into_iter().collect(), now));
        if let Some(t) = view.table {
            g.table = Some((from.to_string(), t, now));
        }
    }

    /// Who sees each failing backend (this node's view included), for
    /// backends someone sees failing, counting views fresh at `now`.
    pub fn votes(&self, now: Instant) -> Vec<Votes> {
        let g = self.lock();
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in &g.local_failing {
            by.entry(b.clone()).or_default().push(self.me.clone());
        }
        for (peer, (failing, at)) in &g.peers {
            if now.saturating_duration_since(*at) > self.fresh {
                continue;
            }
            for b in failing {
                by.entry(b.clone()).or_default().push(peer.clone());
            }
        }
        by.into_iter()
            .map(|(backend, mut seen)| {
                seen.sort();
                Votes {
                    backend,
                    seen_failing_by: seen,
                    quorum: self.quorum,
                }
            })
            .collect()
    }

    /// Whether `v` is news: its count of nodes changed since last asked.
    /// Backends nobody sees failing any more are forgotten.
    fn news(&self, v: &Votes) -> bool {
        let mut g = self.lock();
        let n = v.seen_failing_by.len();
        g.noted.insert(v.backend.clone(), n) != Some(n)
    }

    fn forget_others(&self, votes: &[Votes]) {
        self.lock()
            .noted
            .retain(|b, _| votes.iter().any(|v| &v.backend == b));
    }

    /// The leader's table, when it is fresh and from the leader this node
    /// follows, fresh at `now`.
    pub fn leader_table(&self, now: Instant) -> Option<LeaderTable> {
        let g = self.lock();
        let (from, table, at) = g.table.as_ref()?;
        let fresh = now.saturating_duration_since(*at) <= self.fresh;
        (g.leader.as_deref() == Some(from.as_str()) && fresh).then(|| LeaderTable {
            leader: from.clone(),
            table: table.clone(),
        })
    }
}

impl Manager {
    /// A watchdog member's backend decisions: the leader detaches (or
    /// fails over from) a backend a quorum sees failing; the others
    /// mirror the leader's table.
    pub(super) async fn decide(&mut self) {
        let Some(c) = self.shared.consensus.clone() else {
            return;
        };
        c.prune();
        let now = Instant::now();
        let votes = c.votes(now);
        c.forget_others(&votes);
        if c.leading() {
            for v in votes {
                if !c.news(&v) {
                    continue;
                }
                let snap = self.cluster().snapshot();
                let Some(n) = snap.nodes.iter().find(|n| n.name == v.backend) else {
                    continue;
                };
                let held = n.held;
                if n.status == Status::Down || held {
                    continue;
                }
                let seen = format!(
                    "seen failing by {} of the watchdog's nodes ({}; quorum {})",
                    v.seen_failing_by.len(),
                    v.seen_failing_by.join(", "),
                    v.quorum
                );
                if v.seen_failing_by.len() < v.quorum {
                    tracing::warn!(node = %n.name, "{seen}: no quorum, the backend stays attached");
                    continue;
                }
                let error = match &n.last_error {
                    Some(e) => format!("{e}; {seen}"),
                    None => seen,
                };
                tracing::warn!(node = %n.name, %error, "a quorum sees the backend failing");
                self.act_on_failure(n.id, error).await;
            }
        } else if let Some(leader) = c.leader_table(now) {
            let snap = self.cluster().snapshot();
            for m in mirror(&snap, &self.cluster().detached(), &leader) {
                match m {
                    Mirror::Detach { node, reason } => {
                        self.detach(node, Detached::new(DetachCause::Leader, reason))
                    }
                    Mirror::Attach { node } => {
                        tracing::info!(node = %self.target(node).name, leader = %leader.leader, "attaching node: the watchdog leader did");
                        self.cluster().attach(node);
                        self.persist();
                    }
                }
            }
        }
    }
}

/// What a follower changes to mirror the leader's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Detach { node: usize, reason: String },
    Attach { node: usize },
}

/// The changes that make the local node table match `leader`'s: detach
/// what it detached, attach again what this node detached on its word
/// and it no longer does. Nodes detached here by the operator stay.
pub fn mirror(
    snap: &super::Snapshot,
    detached_here: &HashMap<String, Detached>,
    leader: &LeaderTable,
) -> Vec<Mirror> {
    let mut out = Vec::new();
    for n in &snap.nodes {
        match (
            leader.table.detached.get(&n.name),
            detached_here.get(&n.name),
        ) {
            (Some(reason), None) if n.status != Status::Down => out.push(Mirror::Detach {
                node: n.id,
                reason: format!("{reason} ({BY_LEADER} {})", leader.leader),
            }),
            (None, Some(why)) if why.cause == DetachCause::Leader => {
                out.push(Mirror::Attach { node: n.id })
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn cluster(names: &[&str]) -> Arc<Cluster> {
        let backends: Vec<BackendConfig> = names
            .iter()
            .map(|n| {
                toml::from_str(&format!(
                    "name = \"{n}\"\nhost = \"127.0.0.1\"\nport = 5432\n"
                ))
                .unwrap()
            })
            .collect();
        Cluster::new(&backends)
    }

    #[test]
    fn a_backend_counts_the_nodes_that_see_it_failing_while_their_views_are_fresh() {
        let t0 = Instant::now();
        let c = Consensus::new("a", 2, Duration::from_secs(60), cluster(&["pg0", "pg1"]));
        c.note_failing("pg1");
        assert_eq!(c.votes(t0)[0].seen_failing_by, vec!["a"]);
        c.received(
            "b",
            BackendView {
                failing: vec!["pg1".into()],
                table: None,
            },
            t0,
        );
        c.received("c", BackendView::default(), t0);
        let v = c.votes(t0 + Duration::from_secs(60));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].seen_failing_by, vec!["a", "b"]);
        // One election timeout later, b's view no longer votes.
        let v = c.votes(t0 + Duration::from_secs(61));
        assert_eq!(
            v[0].seen_failing_by,
            vec!["a"],
            "a stale view does not vote"
        );
    }

    #[test]
    fn only_the_followed_leaders_table_is_mirrored() {
        let c = Consensus::new("a", 2, Duration::from_secs(60), cluster(&["pg0"]));
        let table = Table {
            detached: [("pg0".to_string(), "down".to_string())].into(),
            primary: None,
        };
        let t0 = Instant::now();
        c.received(
            "b",
            BackendView {
                failing: vec![],
                table: Some(table.clone()),
            },
            t0,
        );
        assert!(c.leader_table(t0).is_none(), "b is not the leader followed");
        c.set_leadership(false, Some("b"));
        assert_eq!(c.leader_table(t0).unwrap().table, table);
        let late = t0 + Duration::from_secs(61);
        assert!(
            c.leader_table(late).is_none(),
            "a stale table is not mirrored"
        );
        c.set_leadership(false, Some("c"));
        assert!(c.leader_table(t0).is_none());
    }

    #[test]
    fn mirroring_detaches_what_the_leader_detached_and_keeps_the_operators_own() {
        let cl = cluster(&["pg0", "pg1", "pg2"]);
        cl.detach(
            2,
            Detached::new(DetachCause::Operator, "detached by the operator"),
        );
        let here = cl.detached();
        let leader = LeaderTable {
            leader: "b".into(),
            table: Table {
                detached: [("pg1".to_string(), "health check failed".to_string())].into(),
                primary: Some("pg0".into()),
            },
        };
        let snap = cl.snapshot();
        let m = mirror(&snap, &here, &leader);
        assert_eq!(m.len(), 1, "{m:?}");
        let Mirror::Detach { node, reason } = &m[0] else {
            panic!("{m:?}")
        };
        assert_eq!(*node, 1);
        assert!(reason.contains(BY_LEADER) && reason.contains("health check failed"));

        cl.detach(1, Detached::new(DetachCause::Leader, reason.clone()));
        let leader_again = LeaderTable {
            leader: "b".into(),
            table: Table::default(),
        };
        let m = mirror(&cl.snapshot(), &cl.detached(), &leader_again);
        assert_eq!(
            m,
            vec![Mirror::Attach { node: 1 }],
            "pg2 stays the operator's"
        );
    }
}
