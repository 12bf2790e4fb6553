//! The node table: every configured backend with its role and status.
//!
//! `cluster` is the only writer of node state. It publishes immutable
//! snapshots through an `ArcSwap`; sessions, the router and the admin
//! surface read the current snapshot without locking. The checker task
//! probes every node each `health_check.period` (`pg_is_in_recovery()`), so
//! the table always names the primary that the servers themselves report.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{BackendConfig, BackendFlag, HealthCheckConfig};

/// What the node is, as PostgreSQL reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

/// Whether tidepool uses the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Attached and answering.
    Up,
    /// Attached, not yet checked or not answering.
    Waiting,
    /// Detached: never routed to.
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Waiting => "waiting",
            Status::Down => "down",
        }
    }
}

/// One node, as of one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: usize,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: f64,
    pub flag: BackendFlag,
    pub status: Status,
    /// Whether the last health check reached the server.
    pub reachable: bool,
    pub role: Role,
    #[serde(with = "humantime_serde")]
    pub last_status_change: SystemTime,
    pub last_error: Option<String>,
}

/// An immutable view of every node.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    /// Bumped on every change, so readers can tell snapshots apart.
    pub generation: u64,
}

impl Snapshot {
    /// The node that takes writes: an `always_primary` node, else the one
    /// that reports it is not in recovery.
    pub fn primary(&self) -> Option<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.status != Status::Down)
            .find(|n| n.flag == BackendFlag::AlwaysPrimary)
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| n.status == Status::Up && n.role == Role::Primary)
            })
    }

    pub fn node(&self, id: usize) -> Option<&Node> {
        self.nodes.get(id)
    }
}

/// Per-node counters that change on the hot path, kept out of snapshots.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub selects: AtomicU64,
    pub queries: AtomicU64,
    pub health_checks: AtomicU64,
    pub health_check_failures: AtomicU64,
}

/// Owner of the node table.
pub struct Cluster {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<u64>,
    counters: ArcSwap<Vec<Arc<NodeCounters>>>,
}

impl Cluster {
    pub fn new(backends: &[BackendConfig]) -> Arc<Cluster> {
        let now = SystemTime::now();
        let nodes = backends
            .iter()
            .enumerate()
            .map(|(id, b)| Node {
                id,
                name: b.name.clone(),
                host: b.host.clone(),
                port: b.port,
                weight: b.weight,
                flag: b.flag,
                status: Status::Waiting,
                reachable: false,
                role: if b.flag == BackendFlag::AlwaysPrimary {
                    Role::Primary
                } else {
                    Role::Unknown
                },
                last_status_change: now,
                last_error: None,
            })
            .collect();
        let counters = backends.iter().map(|_| Arc::default()).collect();
        Arc::new(Cluster {
            current: ArcSwap::from_pointee(Snapshot {
                nodes,
                generation: 0,
            }),
            changed: watch::channel(0).0,
            counters: ArcSwap::from_pointee(counters),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Notified with the generation of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn counters(&self, node: usize) -> Option<Arc<NodeCounters>> {
        self.counters.load().get(node).cloned()
    }

    /// Publishes a new snapshot made by `f` from the current one.
    fn update(&self, f: impl Fn(&mut Snapshot)) {
        let mut generation = 0;
        self.current.rcu(|cur| {
            let mut next = Snapshot::clone(cur);
            f(&mut next);
            next.generation = cur.generation + 1;
            generation = next.generation;
            next
        });
        let _ = self.changed.send(generation);
    }

    /// Records the outcome of one health check of `node`.
    pub fn record_check(&self, node: usize, outcome: Result<Role, String>) {
        if let Some(c) = self.counters(node) {
            c.health_checks.fetch_add(1, Ordering::Relaxed);
            if outcome.is_err() {
                c.health_check_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let cur = self.snapshot();
        let Some(n) = cur.node(node) else { return };
        let (reachable, role, error) = match &outcome {
            Ok(r) => (true, *r, None),
            Err(e) => (false, n.role, Some(e.clone())),
        };
        let role = if n.flag == BackendFlag::AlwaysPrimary {
            Role::Primary
        } else {
            role
        };
        let status = match (n.status, reachable) {
            (Status::Down, _) => Status::Down,
            (_, true) => Status::Up,
            (_, false) => Status::Waiting,
        };
        if n.reachable == reachable && n.role == role && n.status == status && n.last_error == error
        {
            return;
        }
        if n.role != role || n.status != status {
            tracing::info!(node = %n.name, role = role.as_str(), status = status.as_str(), "node state changed");
        }
        self.update(|s| {
            let n = &mut s.nodes[node];
            if n.status != status || n.role != role {
                n.last_status_change = SystemTime::now();
            }
            n.reachable = reachable;
            n.role = role;
            n.status = status;
            n.last_error = error.clone();
        });
    }

    /// Replaces the node list after a configuration reload, keeping what is
    /// known of nodes that stay (matched by name).
    pub fn reconfigure(&self, backends: &[BackendConfig]) {
        let cur = self.snapshot();
        let fresh = Cluster::new(backends).snapshot();
        let old_counters = self.counters.load_full();
        let mut counters = Vec::new();
        let nodes: Vec<Node> = fresh
            .nodes
            .iter()
            .map(|f| {
                let old = cur.nodes.iter().find(|o| o.name == f.name);
                counters.push(
                    old.and_then(|o| old_counters.get(o.id).cloned())
                        .unwrap_or_default(),
                );
                match old {
                    Some(o) if o.host == f.host && o.port == f.port => Node {
                        weight: f.weight,
                        flag: f.flag,
                        id: f.id,
                        ..o.clone()
                    },
                    _ => f.clone(),
                }
            })
            .collect();
        self.counters.store(Arc::new(counters));
        self.update(|s| s.nodes = nodes.clone());
    }
}

/// Probes every node forever (until `shutdown` fires), one task per node.
pub async fn run_checks(
    cluster: Arc<Cluster>,
    settings: watch::Receiver<HealthCheckConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut nodes_seen = cluster.subscribe();
    loop {
        let snap = cluster.snapshot();
        for n in &snap.nodes {
            let cluster = cluster.clone();
            let settings = settings.clone();
            let (id, host, port) = (n.id, n.host.clone(), n.port);
            tasks.spawn(async move { check_node(cluster, id, host, port, settings).await });
        }
        // Restart the per-node tasks when the node list itself changes.
        let count = snap.nodes.len();
        let names: Vec<String> = snap
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        loop {
            tokio::select! {
                _ = shutdown.changed() => { tasks.abort_all(); return; }
                r = nodes_seen.changed() => {
                    if r.is_err() { return; }
                    let s = cluster.snapshot();
                    let now: Vec<String> = s.nodes.iter().map(|n| format!("{}:{}", n.host, n.port)).collect();
                    if s.nodes.len() != count || now != names { break; }
                }
            }
        }
        tasks.abort_all();
    }
}

async fn check_node(
    cluster: Arc<Cluster>,
    id: usize,
    host: String,
    port: u16,
    settings: watch::Receiver<HealthCheckConfig>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let hc = settings.borrow().clone();
        let outcome = tokio::time::timeout(hc.timeout, probe(&mut client, &host, port, &hc))
            .await
            .unwrap_or_else(|_| Err(format!("health check timed out after {:?}", hc.timeout)));
        if outcome.is_err() {
            client = None;
        }
        cluster.record_check(id, outcome);
        tokio::time::sleep(hc.period).await;
    }
}

async fn probe(
    client: &mut Option<tokio_postgres::Client>,
    host: &str,
    port: u16,
    hc: &HealthCheckConfig,
) -> Result<Role, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(port)
            .user(&hc.user)
            .dbname(&hc.database)
            .application_name("tidepool health check")
            .connect_timeout(hc.timeout.max(Duration::from_millis(100)));
        if let Some(p) = &hc.password {
            cfg.password(p);
        }
        let (c, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| format!("query: {e}"))?;
    Ok(if row.get::<_, bool>(0) {
        Role::Standby
    } else {
        Role::Primary
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, flag: BackendFlag) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            weight: 1.0,
            flag,
        }
    }

    #[test]
    fn primary_is_the_node_that_reports_it() {
        let c = Cluster::new(&[
            backend("a", BackendFlag::AllowToFailover),
            backend("b", BackendFlag::AllowToFailover),
        ]);
        assert!(c.snapshot().primary().is_none());
        c.record_check(0, Ok(Role::Standby));
        c.record_check(1, Ok(Role::Primary));
        assert_eq!(c.snapshot().primary().unwrap().name, "b");
        c.record_check(1, Err("down".into()));
        let s = c.snapshot();
        assert!(s.primary().is_none());
        assert_eq!(s.nodes[1].status, Status::Waiting);
        assert_eq!(s.nodes[1].last_error.as_deref(), Some("down"));
    }

    #[test]
    fn always_primary_stays_primary_while_unreachable() {
        let c = Cluster::new(&[backend("rds", BackendFlag::AlwaysPrimary)]);
        c.record_check(0, Err("refused".into()));
        assert_eq!(c.snapshot().primary().unwrap().name, "rds");
    }

    #[test]
    fn unchanged_checks_publish_no_new_snapshot() {
        let c = Cluster::new(&[backend("a", BackendFlag::AllowToFailover)]);
        c.record_check(0, Ok(Role::Primary));
        let g = c.snapshot().generation;
        c.record_check(0, Ok(Role::Primary));
        assert_eq!(c.snapshot().generation, g);
    }
}
