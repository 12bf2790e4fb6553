//! `/metrics`: every counter tidepool keeps, rendered in the Prometheus /
//! OpenMetrics text format at scrape time.
//!
//! The figures live where the hot path bumps them (plain atomics in
//! `admin::metrics`, the pools, the node table), so nothing is mirrored into
//! a second set of metric objects. A scrape first copies them into
//! [`Figures`] (plain data, no locks held afterwards) and then encodes that
//! copy through `prometheus-client`'s collector interface, which takes care
//! of the exposition details (HELP/TYPE lines, `_total` suffixes, escaping).

use std::sync::atomic::Ordering;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    cluster::{Role, Status},
    pool::PoolStats,
    server::Shared,
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
        let snap = shared.cluster.snapshot();
        let primary = snap.primary().map(|n| n.id);
        let nodes = snap
            .nodes
            .iter()
            .map(|n| {
                let c = shared.cluster.counters(n.id).unwrap_or_default();
                NodeFigures {
                    name: n.name.clone(),
                    status: n.status,
                    role: effective_role(n.id, n.role, primary),
                    reachable: n.reachable,
                    selects: c.selects.load(Ordering::Relaxed),
                    queries: c.queries.load(Ordering::Relaxed),
                    health_checks: c.health_checks.load(Ordering::Relaxed),
                    health_check_failures: c.health_check_failures.load(Ordering::Relaxed),
                    detaches: c.detaches.load(Ordering::Relaxed),
                }
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

/// A node that reports itself primary but is not the one tidepool routes
/// writes to (two primaries after a split) is shown as unknown, as in
/// `SHOW POOL_NODES`.
fn effective_role(id: usize, reported: Role, primary: Option<usize>) -> Role {
    if Some(id) == primary {
        Role::Primary
    } else if reported == Role::Primary {
        Role::Unknown
    } else {
        reported
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

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: a descriptor and one sample per label set
/// (or a single unlabelled sample).
fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
    write: impl Fn(V, prometheus_client::encoding::MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // A process-wide figure: one sample, written without `{}`.
            return write(value, metric);
        }
        write(value, metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    family(
        enc,
        name,
        help,
        None,
        MetricType::Counter,
        samples,
        |v, e| ConstCounter::new(v).encode(e),
    )
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> std::fmt::Result {
    family(enc, name, help, None, MetricType::Gauge, samples, |v, e| {
        ConstGauge::new(v).encode(e)
    })
}

fn one<V>(v: V) -> [(Labels, V); 1] {
    [(Vec::new(), v)]
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.encode_process(&mut enc)?;
        self.encode_cluster(&mut enc)?;
        self.encode_pools(&mut enc)?;
        self.encode_nodes(&mut enc)
    }
}

impl Figures {
    fn encode_process(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let p = &self.process;
        gauges(
            enc,
            "clients_active",
            "Client connections open now.",
            one(p.clients_active),
        )?;
        gauges(
            enc,
            "clients_starting",
            "Client connections in startup or authentication now (limited by server.max_startup_connections).",
            one(p.clients_starting),
        )?;
        counters(
            enc,
            "clients",
            "Client connections accepted.",
            one(p.clients_total),
        )?;
        counters(
            enc,
            "auth_failures",
            "Client authentications that failed.",
            one(p.auth_failures),
        )?;
        counters(
            enc,
            "client_errors",
            "Client sessions that ended with a protocol or I/O error.",
            one(p.client_errors),
        )?;
        counters(
            enc,
            "queries",
            "Queries relayed for clients.",
            one(p.queries),
        )?;
        counters(
            enc,
            "cancel_requests",
            "Cancel requests received.",
            one(p.cancel_requests),
        )?;
        counters(
            enc,
            "sessions_pinned",
            "Transaction-mode sessions pinned to one backend connection.",
            one(p.sessions_pinned),
        )?;
        counters(
            enc,
            "standby_refusals",
            "Units of work a standby refused during recovery (SQLSTATE 25006) that the primary then ran.",
            one(p.standby_refusals),
        )?;
        counters(
            enc,
            "reloads",
            "Configuration reloads applied.",
            one(p.reloads),
        )?;
        let cache: [(&str, &str, u64); 8] = [
            (
                "query_cache_evictions",
                "Results the memory store pushed out to make room.",
                p.cache_evictions,
            ),
            (
                "query_cache_lookups",
                "Cacheable SELECTs looked up in the query cache.",
                p.cache_selects,
            ),
            (
                "query_cache_hits",
                "SELECTs answered from the query cache.",
                p.cache_hits,
            ),
            (
                "query_cache_stores",
                "Results kept in the query cache.",
                p.cache_stores,
            ),
            (
                "query_cache_not_stored",
                "Results not kept: over max_entry_size.",
                p.cache_not_stored,
            ),
            (
                "query_cache_invalidations",
                "Writing transactions that ended and moved their tables' cache generations on.",
                p.cache_invalidations,
            ),
            (
                "query_cache_hit_bytes",
                "Bytes of results sent from the query cache.",
                p.cache_hit_bytes,
            ),
            (
                "query_cache_store_errors",
                "Requests to memcached that failed or timed out (the query went to the database).",
                p.cache_store_errors,
            ),
        ];
        for (name, help, v) in cache {
            counters(enc, name, help, one(v))?;
        }
        Ok(())
    }

    fn encode_cluster(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let c = &self.cluster;
        let families: [(&str, &str, u64); 16] = [
            (
                "failovers",
                "Failovers started: a primary fenced and a standby promoted in its place.",
                c.failovers,
            ),
            (
                "switchovers",
                "Planned switchovers completed.",
                c.switchovers,
            ),
            (
                "detaches",
                "Nodes detached, by tidepool or an operator.",
                c.detaches,
            ),
            (
                "attaches",
                "Nodes attached, by an operator, a recovery or auto_failback.",
                c.attaches,
            ),
            ("recoveries", "Online recoveries completed.", c.recoveries),
            (
                "failbacks",
                "Standbys re-attached by auto_failback.",
                c.failbacks,
            ),
            (
                "false_primaries",
                "Nodes detached because another primary was on a newer timeline.",
                c.false_primaries,
            ),
            (
                "failed_actions",
                "Failovers and operator requests that failed.",
                c.failed_actions,
            ),
            (
                "backend_faults",
                "Broken backend connections and shutdowns seen by sessions that made tidepool probe the node.",
                c.backend_faults,
            ),
            (
                "backend_faults_confirmed",
                "Of those, the ones whose probe failed too (handled as a failed health check).",
                c.backend_faults_confirmed,
            ),
            (
                "topology_reads",
                "Topology answers read from a managed cluster's instances ([[clusters]]).",
                c.topology_reads,
            ),
            (
                "topology_errors",
                "Topology reads that failed (no connection, no answer in time, an error).",
                c.topology_errors,
            ),
            (
                "cluster_writer_losses",
                "Times a managed cluster had no confirmed writer (it stopped answering or answered read-only).",
                c.writer_losses,
            ),
            (
                "cluster_writer_changes",
                "Times an instance was confirmed as a managed cluster's writer while it was not the one taking writes.",
                c.writer_changes,
            ),
            (
                "cluster_instances_joined",
                "Managed cluster instances added to the node table (found, or back in the topology).",
                c.instances_joined,
            ),
            (
                "cluster_instances_left",
                "Managed cluster instances retired because the topology no longer lists them.",
                c.instances_left,
            ),
        ];
        for (name, help, value) in families {
            counters(enc, name, help, one(value))?;
        }
        counters(
            enc,
            "service_restarts",
            "Times a background service (failover manager, health checks, ...) stopped unexpectedly and was started again.",
            c.service_restarts
                .iter()
                .map(|(name, n)| (vec![("service", name.clone())], *n)),
        )
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let labelled = |f: fn(&PoolStats) -> u64| {
            self.pools
                .iter()
                .map(move |p| {
                    let labels = vec![
                        ("node", p.node.clone()),
                        ("user", p.stats.user.clone()),
                        ("database", p.stats.database.clone()),
                    ];
                    (labels, f(&p.stats))
                })
                .collect::<Vec<_>>()
        };
        let as_gauge = |v: Vec<(Labels, u64)>| {
            v.into_iter()
                .map(|(l, n)| (l, i64::try_from(n).unwrap_or(i64::MAX)))
        };
        gauges(
            enc,
            "pool_connections",
            "Backend connections of the pool: idle, lent out or being opened.",
            as_gauge(labelled(|s| s.total as u64)),
        )?;
        gauges(
            enc,
            "pool_connections_idle",
            "Idle backend connections of the pool.",
            as_gauge(labelled(|s| s.idle as u64)),
        )?;
        gauges(
            enc,
            "pool_connections_active",
            "Backend connections of the pool lent to clients or being opened.",
            as_gauge(labelled(|s| s.total.saturating_sub(s.idle) as u64)),
        )?;
        gauges(
            enc,
            "pool_max_size",
            "Most backend connections the pool may hold.",
            as_gauge(labelled(|s| s.max_size as u64)),
        )?;
        gauges(
            enc,
            "pool_waiting_clients",
            "Clients waiting for a backend connection of the pool.",
            as_gauge(labelled(|s| s.waiting as u64)),
        )?;
        counters(
            enc,
            "pool_checkouts",
            "Backend connections lent to clients.",
            labelled(|s| s.checkouts),
        )?;
        counters(
            enc,
            "pool_connects",
            "Backend connections opened.",
            labelled(|s| s.connects),
        )?;
        counters(
            enc,
            "pool_connect_errors",
            "Backend connections that failed to open.",
            labelled(|s| s.connect_errors),
        )?;
        counters(
            enc,
            "pool_wait_timeouts",
            "Clients that gave up waiting (pool.checkout_timeout).",
            labelled(|s| s.wait_timeouts),
        )?;
        counters(
            enc,
            "pool_queue_full",
            "Clients refused because the wait queue was full (pool.max_waiting_clients).",
            labelled(|s| s.queue_full),
        )?;
        let wait = self.pools.iter().map(|p| {
            let labels = vec![
                ("node", p.node.clone()),
                ("user", p.stats.user.clone()),
                ("database", p.stats.database.clone()),
            ];
            (labels, p.stats.wait_us as f64 / 1e6)
        });
        family(
            enc,
            "pool_wait",
            "Time clients spent waiting for a backend connection.",
            Some(&Unit::Seconds),
            MetricType::Counter,
            wait,
            |v, e| ConstCounter::new(v).encode(e),
        )
    }

    fn encode_nodes(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let per_node = |f: fn(&NodeFigures) -> u64| {
            self.nodes
                .iter()
                .map(move |n| (vec![("node", n.name.clone())], f(n)))
                .collect::<Vec<_>>()
        };
        gauges(
            enc,
            "node_up",
            "1 when the node is attached and answering health checks.",
            self.nodes.iter().map(|n| {
                (
                    vec![("node", n.name.clone())],
                    i64::from(n.status == Status::Up),
                )
            }),
        )?;
        let statuses = [Status::Up, Status::Waiting, Status::Down];
        gauges(
            enc,
            "node_status",
            "1 for the node's current status (up, waiting, down), 0 for the others.",
            self.nodes.iter().flat_map(|n| {
                statuses.iter().map(|s| {
                    let labels = vec![("node", n.name.clone()), ("status", s.as_str().to_string())];
                    (labels, i64::from(n.status == *s))
                })
            }),
        )?;
        let roles = [Role::Primary, Role::Standby, Role::Unknown];
        gauges(
            enc,
            "node_role",
            "1 for the node's current role (primary, standby, unknown), 0 for the others.",
            self.nodes.iter().flat_map(|n| {
                roles.iter().map(|r| {
                    let labels = vec![("node", n.name.clone()), ("role", r.as_str().to_string())];
                    (labels, i64::from(n.role == *r))
                })
            }),
        )?;
        gauges(
            enc,
            "node_reachable",
            "1 when the last health check reached the server.",
            self.nodes
                .iter()
                .map(|n| (vec![("node", n.name.clone())], i64::from(n.reachable))),
        )?;
        counters(
            enc,
            "node_selects",
            "Read-only statements routed to the node.",
            per_node(|n| n.selects),
        )?;
        counters(
            enc,
            "node_queries",
            "Statements routed to the node.",
            per_node(|n| n.queries),
        )?;
        counters(
            enc,
            "node_health_checks",
            "Health checks run against the node.",
            per_node(|n| n.health_checks),
        )?;
        counters(
            enc,
            "node_health_check_failures",
            "Health checks of the node that failed.",
            per_node(|n| n.health_check_failures),
        )?;
        counters(
            enc,
            "node_detaches",
            "Times the node was detached.",
            per_node(|n| n.detaches),
        )?;
        gauges(
            enc,
            "nodes",
            "Nodes in the node table.",
            one(count(self.nodes.len())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(effective_role(1, Role::Primary, Some(0)), Role::Unknown);
        assert_eq!(effective_role(0, Role::Primary, Some(0)), Role::Primary);
        assert_eq!(effective_role(2, Role::Standby, Some(0)), Role::Standby);
    }
}
