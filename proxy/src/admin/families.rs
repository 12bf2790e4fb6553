//! The metric families of `/metrics`: each figure of a scrape's
//! [`Figures`] written once, with its name, help text, type and labels,
//! through `prometheus-client`'s collector interface.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::prometheus::*;
use crate::{
    cluster::{Role, Status},
    pool::PoolStats,
};

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
