//! `/metrics`: every counter tidepool keeps, rendered in the Prometheus /
//! OpenMetrics text format at scrape time.
//!
//! The figures live where the hot path bumps them (plain atomics in
//! `crate::metrics`, the pools, the node table), so nothing is mirrored into
//! a second set of metric objects. A scrape first copies them into
//! [`Figures`] (plain data, no locks held afterwards) and then encodes that
//! copy through `prometheus-client`'s collector interface, which takes care
//! of the exposition details (HELP/TYPE lines, `_total` suffixes, escaping).

use std::sync::atomic::Ordering;

use prometheus_client::registry::Registry;

use crate::{
    app::Shared,
    cluster::{Role, Status},
    pool::PoolStats,
};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Process-wide figures.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub clients_active: i64,
    pub clients_starting: i64,
    pub clients_total: u64,
    pub auth_failures: u64,
    pub client_errors: u64,
    pub queries: u64,
    pub cancel_requests: u64,
    pub sessions_pinned: u64,
    pub standby_refusals: u64,
    pub reloads: u64,
    /// Query cache (all zero when it is off).
    pub cache_selects: u64,
    pub cache_hits: u64,
    pub cache_stores: u64,
    pub cache_not_stored: u64,
    pub cache_invalidations: u64,
    pub cache_hit_bytes: u64,
    pub cache_store_errors: u64,
    pub cache_evictions: u64,
}

/// Changes the failover manager made to the node table.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub failovers: u64,
    pub switchovers: u64,
    pub detaches: u64,
    pub attaches: u64,
    pub recoveries: u64,
    pub failbacks: u64,
    pub false_primaries: u64,
    pub failed_actions: u64,
    pub backend_faults: u64,
    pub backend_faults_confirmed: u64,
    pub topology_reads: u64,
    pub topology_errors: u64,
    pub writer_losses: u64,
    pub writer_changes: u64,
    pub instances_joined: u64,
    pub instances_left: u64,
    /// Restarts of each supervised service, by name.
    pub service_restarts: Vec<(String, u64)>,
}

/// One node of the node table, with its counters.
#[derive(Debug, Clone)]
pub struct NodeFigures {
    pub name: String,
    pub status: Status,
    /// The role tidepool acts on (the same as `SHOW POOL_NODES`' `role`).
    pub role: Role,
    pub reachable: bool,
    pub selects: u64,
    pub queries: u64,
    pub health_checks: u64,
    pub health_check_failures: u64,
    pub detaches: u64,
}

/// One pool, labelled by node name rather than index so that dashboards
/// survive a reordering of `[[backends]]`.
#[derive(Debug, Clone)]
pub struct PoolFigures {
    pub node: String,
    pub stats: PoolStats,
}

/// Everything one scrape reports, copied out of the live state.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub process: ProcessFigures,
    pub cluster: ClusterFigures,
    pub nodes: Vec<NodeFigures>,
    pub pools: Vec<PoolFigures>,
}

impl Figures {
    /// Copies the current figures out of `shared`.
    pub fn gather(shared: &Shared) -> Figures {
        let m = &shared.metrics;
        let process = ProcessFigures {
            clients_active: m.clients_active.load(Ordering::Relaxed),
            clients_starting: m.clients_starting.load(Ordering::Relaxed),
            clients_total: m.clients_total.load(Ordering::Relaxed),
            auth_failures: m.auth_failures.load(Ordering::Relaxed),
            client_errors: m.client_errors.load(Ordering::Relaxed),
            queries: m.queries.load(Ordering::Relaxed),
            cancel_requests: m.cancel_requests.load(Ordering::Relaxed),
            sessions_pinned: m.pinned.load(Ordering::Relaxed),
            standby_refusals: m.standby_refusals.load(Ordering::Relaxed),
            reloads: m.reloads.load(Ordering::Relaxed),
            ..ProcessFigures::default()
        };
        let mut process = process;
        if let Some(q) = &shared.query_cache {
            let st = &q.stats;
            process.cache_selects = st.selects.load(Ordering::Relaxed);
            process.cache_hits = st.hits.load(Ordering::Relaxed);
            process.cache_stores = st.stores.load(Ordering::Relaxed);
            process.cache_not_stored = st.not_stored.load(Ordering::Relaxed);
            process.cache_invalidations = st.invalidations.load(Ordering::Relaxed);
            process.cache_hit_bytes = st.hit_bytes.load(Ordering::Relaxed);
            let usage = q.usage();
            process.cache_store_errors = usage.store_errors;
            process.cache_evictions = usage.evictions;
        }
        let c = &shared.cluster.stats;
        let cluster = ClusterFigures {
            failovers: c.failovers.load(Ordering::Relaxed),
            switchovers: c.switchovers.load(Ordering::Relaxed),
            detaches: c.detaches.load(Ordering::Relaxed),
            attaches: c.attaches.load(Ordering::Relaxed),
            recoveries: c.recoveries.load(Ordering::Relaxed),
            failbacks: c.failbacks.load(Ordering::Relaxed),
            false_primaries: c.false_primaries.load(Ordering::Relaxed),
            failed_actions: c.failed_actions.load(Ordering::Relaxed),
            backend_faults: c.backend_faults.load(Ordering::Relaxed),
            backend_faults_confirmed: c.backend_faults_confirmed.load(Ordering::Relaxed),
            topology_reads: c.topology_reads.load(Ordering::Relaxed),
            topology_errors: c.topology_errors.load(Ordering::Relaxed),
            writer_losses: c.writer_losses.load(Ordering::Relaxed),
            writer_changes: c.writer_changes.load(Ordering::Relaxed),
            instances_joined: c.instances_joined.load(Ordering::Relaxed),
            instances_left: c.instances_left.load(Ordering::Relaxed),
            service_restarts: shared
                .services
                .states()
                .into_iter()
                .map(|(name, s)| (name.to_string(), s.restarts))
                .collect(),
        };
        let (snap, views) = super::view::nodes(shared);
        let nodes = views
            .into_iter()
            .map(|v| NodeFigures {
                status: v.node.status,
                role: v.role,
                reachable: v.node.reachable,
                selects: v.selects,
                queries: v.queries,
                health_checks: v.health_checks,
                health_check_failures: v.health_check_failures,
                detaches: v.detaches,
                name: v.node.name,
            })
            .collect();
        let pools = shared
            .pools
            .stats()
            .into_iter()
            .map(|stats| PoolFigures {
                node: snap
                    .node(stats.node)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| stats.node.to_string()),
                stats,
            })
            .collect();
        Figures {
            process,
            cluster,
            nodes,
            pools,
        }
    }
}

/// The text exposition of `shared`'s current figures.
pub fn render(shared: &Shared) -> String {
    encode(Figures::gather(shared))
}

/// The text exposition of `figures`.
pub fn encode(figures: Figures) -> String {
    let mut registry = Registry::with_prefix("tidepool");
    registry.register_collector(Box::new(figures));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;

    fn pool(node: &str, user: &str) -> PoolFigures {
        PoolFigures {
            node: node.into(),
            stats: PoolStats {
                node: 0,
                user: user.into(),
                database: "app".into(),
                total: 3,
                idle: 1,
                waiting: 0,
                max_size: 20,
                checkouts: 9,
                connects: 3,
                connect_errors: 0,
                wait_timeouts: 0,
                queue_full: 0,
                wait_us: 1_500_000,
            },
        }
    }

    #[test]
    fn counters_get_the_total_suffix_and_labels_name_the_node() {
        let text = encode(Figures {
            process: ProcessFigures {
                queries: 42,
                ..Default::default()
            },
            cluster: ClusterFigures {
                failovers: 2,
                failbacks: 1,
                ..Default::default()
            },
            nodes: vec![NodeFigures {
                name: "pg0".into(),
                status: Status::Up,
                role: Role::Primary,
                reachable: true,
                selects: 5,
                queries: 7,
                health_checks: 3,
                health_check_failures: 1,
                detaches: 4,
            }],
            pools: vec![pool("pg0", "app")],
        });
        assert!(text.contains("# TYPE tidepool_queries counter\n"), "{text}");
        assert!(text.contains("tidepool_queries_total 42\n"), "{text}");
        assert!(text.contains("tidepool_failovers_total 2\n"), "{text}");
        assert!(text.contains("tidepool_failbacks_total 1\n"), "{text}");
        assert!(text.contains("tidepool_switchovers_total 0\n"), "{text}");
        assert!(text.contains("tidepool_node_detaches_total{node=\"pg0\"} 4\n"));
        assert!(
            text.contains("tidepool_node_up{node=\"pg0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tidepool_node_role{node=\"pg0\",role=\"primary\"} 1\n"));
        assert!(text.contains("tidepool_node_role{node=\"pg0\",role=\"standby\"} 0\n"));
        assert!(text.contains(
            "tidepool_pool_connections_active{node=\"pg0\",user=\"app\",database=\"app\"} 2\n"
        ));
        assert!(text.contains(
            "tidepool_pool_wait_seconds_total{node=\"pg0\",user=\"app\",database=\"app\"} 1.5\n"
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let text = encode(Figures {
            pools: vec![pool("pg0", "we\"ird")],
            ..Default::default()
        });
        assert!(text.contains("user=\"we\\\"ird\""), "{text}");
    }

    #[test]
    fn a_second_primary_is_reported_as_unknown() {
        assert_eq!(
            Snapshot::effective_role(1, Role::Primary, Some(0)),
            Role::Unknown
        );
        assert_eq!(
            Snapshot::effective_role(0, Role::Primary, Some(0)),
            Role::Primary
        );
        assert_eq!(
            Snapshot::effective_role(2, Role::Standby, Some(0)),
            Role::Standby
        );
    }
}
