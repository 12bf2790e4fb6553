//! The admin read model: one copy of what tidepool knows of each node —
//! its place in the node table, its counters, its replication delay, its
//! TLS — taken once per request and read by `SHOW POOL_NODES`,
//! `SHOW POOL_HEALTH_CHECK_STATS`, `GET /v1/nodes` and `/metrics` alike, so
//! that the surfaces never disagree on a figure or a rule (which role a
//! node has, what a counter counts).

use std::sync::{Arc, atomic::Ordering};

use crate::{
    app::Shared,
    cluster::{Lag, Node, Role, Snapshot, persist::SystemId},
};

/// One node as the admin surfaces show it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node as of the snapshot the view was taken from.
    pub node: Node,
    /// The role tidepool acts on (`Snapshot::effective_role`); `node.role`
    /// is what PostgreSQL reported (Pgpool's `pg_role`).
    pub role: Role,
    /// The node writes go to.
    pub primary: bool,
    /// Its share of the configured read weights.
    pub weight_share: f64,
    pub selects: u64,
    pub queries: u64,
    pub health_checks: u64,
    pub health_check_failures: u64,
    pub health_check_retries: u64,
    /// Sum of check durations.
    pub health_check_micros: u64,
    /// Unix milliseconds of the last check, success, failure (0: never).
    pub last_health_check_ms: u64,
    pub last_health_check_ok_ms: u64,
    pub last_health_check_failed_ms: u64,
    pub detaches: u64,
    /// The node's configured `sslmode`.
    pub sslmode: &'static str,
    /// Whether its connections are TLS, as the health check last found.
    pub ssl: Option<bool>,
    /// The database system it last reported.
    pub system: Option<SystemId>,
    pub lag: Lag,
}

impl NodeView {
    /// Average health-check duration in milliseconds (0 before any).
    pub fn average_check_ms(&self) -> f64 {
        if self.health_checks == 0 {
            0.0
        } else {
            self.health_check_micros as f64 / self.health_checks as f64 / 1000.0
        }
    }
}

/// The node table now, each node with its figures.
pub fn nodes(shared: &Shared) -> (Arc<Snapshot>, Vec<NodeView>) {
    let snap = shared.cluster.snapshot();
    let lags = shared.lags.load();
    let primary = snap.primary().map(|n| n.id);
    let total_weight: f64 = snap.nodes.iter().map(|n| n.weight).sum();
    let views = snap
        .nodes
        .iter()
        .map(|n| {
            let c = shared.cluster.counters(n.id).unwrap_or_default();
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            NodeView {
                node: n.clone(),
                role: Snapshot::effective_role(n.id, n.role, primary),
                primary: Some(n.id) == primary,
                weight_share: if total_weight > 0.0 {
                    n.weight / total_weight
                } else {
                    0.0
                },
                selects: load(&c.selects),
                queries: load(&c.queries),
                health_checks: load(&c.health_checks),
                health_check_failures: load(&c.health_check_failures),
                health_check_retries: load(&c.health_check_retries),
                health_check_micros: load(&c.health_check_micros),
                last_health_check_ms: load(&c.last_health_check_ms),
                last_health_check_ok_ms: load(&c.last_health_check_ok_ms),
                last_health_check_failed_ms: load(&c.last_health_check_failed_ms),
                detaches: load(&c.detaches),
                sslmode: shared.cluster.tls(n.id).mode.as_str(),
                ssl: c.ssl(),
                system: c.system(),
                lag: lags.get(&n.id).copied().unwrap_or_default(),
            }
        })
        .collect();
    (snap, views)
}
