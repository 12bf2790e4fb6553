//! `SHOW POOL_*` commands answered by tidepool itself on the client port,
//! with Pgpool-II's names and columns where Pgpool-II has them.

use std::{sync::atomic::Ordering, time::UNIX_EPOCH};

use bytes::BytesMut;

use crate::{app::Shared, protocol::messages};

/// A result set of text columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// RowDescription, DataRows and CommandComplete.
    pub fn encode(&self, out: &mut BytesMut) {
        messages::row_description(out, &self.columns);
        for r in &self.rows {
            messages::data_row(out, r);
        }
        messages::command_complete(out, &format!("SHOW {}", self.rows.len()));
    }
}

/// The answer to `sql` if it is one of tidepool's own SHOW commands.
pub fn answer(sql: &str, shared: &Shared) -> Option<Table> {
    answer_in_session(sql, shared, None)
}

/// Whether `sql` starts with SHOW: what every statement a session runs is
/// checked by, inline, before the commands are looked up.
#[inline]
pub fn starts_with_show(sql: &str) -> bool {
    sql.trim_ascii_start()
        .as_bytes()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"show"))
}

/// As [`answer`], for a session whose load-balance node is `read_node`.
pub fn answer_in_session(sql: &str, shared: &Shared, read_node: Option<usize>) -> Option<Table> {
    if !starts_with_show(sql) {
        return None;
    }
    let cmd = sql.trim().trim_end_matches(';').trim();
    let (show, what) = cmd.split_once(char::is_whitespace)?;
    if !show.eq_ignore_ascii_case("show") {
        return None;
    }
    let what = what.trim().to_ascii_lowercase();
    Some(match what.as_str() {
        "pool_nodes" => pool_nodes(shared, read_node),
        "pool_pools" => pool_pools(shared),
        "pool_processes" => pool_processes(shared),
        "pool_version" => Table {
            columns: vec!["pool_version"],
            rows: vec![vec![Some(format!(
                "tidepool {}",
                env!("CARGO_PKG_VERSION")
            ))]],
        },
        "pool_health_check_stats" => health_check_stats(shared),
        "pool_backend_stats" => backend_stats(shared),
        "pool_watchdog" => pool_watchdog(shared),
        "pool_cache" => pool_cache(shared),
        _ => return None,
    })
}

/// Pgpool-II's `SHOW POOL_CACHE` columns, then tidepool's own. Sizes the
/// memcached store does not tell are NULL.
fn pool_cache(shared: &Shared) -> Table {
    use std::sync::atomic::Ordering::Relaxed;
    let columns = vec![
        "num_cache_hits",
        "num_selects",
        "cache_hit_ratio",
        "num_hash_entries",
        "used_hash_entries",
        "num_cache_entries",
        "used_cache_entries_size",
        "free_cache_entries_size",
        "fragment_cache_entries_size",
        "store",
        "num_stores",
        "num_invalidations",
        "store_errors",
        "store_available",
    ];
    let Some(c) = &shared.query_cache else {
        return Table {
            columns,
            rows: vec![vec![
                s(0),
                s(0),
                s("0.00"),
                None,
                None,
                None,
                None,
                None,
                None,
                s("off"),
                s(0),
                s(0),
                s(0),
                s("false"),
            ]],
        };
    };
    let hits = c.stats.hits.load(Relaxed);
    let selects = c.stats.selects.load(Relaxed);
    let ratio = if selects == 0 {
        0.0
    } else {
        hits as f64 / selects as f64
    };
    let u = c.usage();
    Table {
        columns,
        rows: vec![vec![
            s(hits),
            s(selects),
            s(format!("{ratio:.2}")),
            u.entries.map(|e| e.to_string()),
            u.entries.map(|e| e.to_string()),
            u.entries.map(|e| e.to_string()),
            u.used_bytes.map(|e| e.to_string()),
            u.capacity
                .zip(u.used_bytes)
                .map(|(c, used)| c.saturating_sub(used).to_string()),
            u.entries.map(|_| "0".to_string()),
            s(c.store_name()),
            s(c.stats.stores.load(Relaxed)),
            s(c.stats.invalidations.load(Relaxed)),
            s(u.store_errors),
            s(!u.store_down),
        ]],
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn pool_nodes(shared: &Shared, read_node: Option<usize>) -> Table {
    let (_, views) = super::view::nodes(shared);
    let rows = views
        .iter()
        .map(|v| {
            let n = &v.node;
            let changed = n
                .last_status_change
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            vec![
                s(n.id),
                s(&n.host),
                s(n.port),
                s(n.status.as_str()),
                s(if n.reachable { "up" } else { "down" }),
                s(format!("{:.6}", v.weight_share)),
                s(v.role.as_str()),
                s(n.role.as_str()),
                s(v.selects),
                s(Some(n.id) == read_node),
                // A managed cluster's instances: seconds, from the
                // topology (`replica_lag_in_msec`); otherwise WAL bytes.
                if n.source.discovered() {
                    s(format!("{:.3}", v.lag.time.as_secs_f64()))
                } else {
                    s(v.lag.bytes)
                },
                s(v.lag.replication_state),
                s(v.lag.replication_sync_state),
                s(humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + std::time::Duration::from_secs(changed),
                )),
                s(v.sslmode),
                s(match v.ssl {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "",
                }),
                s(n.source.as_str()),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node_id",
            "hostname",
            "port",
            "status",
            "pg_status",
            "lb_weight",
            "role",
            "pg_role",
            "select_cnt",
            "load_balance_node",
            "replication_delay",
            "replication_state",
            "replication_sync_state",
            "last_status_change",
            "sslmode",
            "ssl",
            "discovered_by",
        ],
        rows,
    }
}

fn pool_pools(shared: &Shared) -> Table {
    let rows = shared
        .pools
        .stats()
        .into_iter()
        .map(|p| {
            vec![
                s(p.node),
                s(&p.database),
                s(&p.user),
                s(p.total),
                s(p.total - p.idle),
                s(p.idle),
                s(p.waiting),
                s(p.max_size),
                s(p.checkouts),
                s(p.connects),
                s(p.wait_us / 1000),
                s(p.wait_timeouts + p.queue_full),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node_id",
            "database",
            "username",
            "connections",
            "active",
            "idle",
            "waiting_clients",
            "max_size",
            "checkouts",
            "connects",
            "wait_ms_total",
            "wait_errors",
        ],
        rows,
    }
}

fn pool_processes(shared: &Shared) -> Table {
    let m = &shared.metrics;
    Table {
        columns: vec![
            "clients_active",
            "clients_total",
            "sessions_pinned",
            "queries",
        ],
        rows: vec![vec![
            s(m.clients_active.load(Ordering::Relaxed)),
            s(m.clients_total.load(Ordering::Relaxed)),
            s(m.pinned.load(Ordering::Relaxed)),
            s(m.queries.load(Ordering::Relaxed)),
        ]],
    }
}

fn health_check_stats(shared: &Shared) -> Table {
    let (_, views) = super::view::nodes(shared);
    let time = |ms: u64| {
        (ms > 0).then(|| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms))
                .to_string()
        })
    };
    let rows = views
        .iter()
        .map(|v| {
            let n = &v.node;
            vec![
                s(n.id),
                s(&n.host),
                s(n.port),
                s(n.status.as_str()),
                s(n.role.as_str()),
                s(v.health_checks),
                s(v.health_checks - v.health_check_failures),
                s(v.health_check_failures),
                n.last_error.clone(),
                s(v.health_check_retries),
                s(format!("{:.3}", v.average_check_ms())),
                time(v.last_health_check_ms),
                time(v.last_health_check_ok_ms),
                time(v.last_health_check_failed_ms),
                n.detached.as_ref().map(|d| d.message.clone()),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node_id",
            "hostname",
            "port",
            "status",
            "role",
            "total_count",
            "success_count",
            "fail_count",
            "last_error",
            "retry_count",
            "average_duration",
            "last_health_check",
            "last_successful_health_check",
            "last_failed_health_check",
            "detach_reason",
        ],
        rows,
    }
}

fn backend_stats(shared: &Shared) -> Table {
    let snap = shared.cluster.snapshot();
    let per_node = shared.pools.per_node();
    let rows = snap
        .nodes
        .iter()
        .map(|n| {
            let c = shared.cluster.counters(n.id).unwrap_or_default();
            let (conns, idle) = per_node.get(&n.id).copied().unwrap_or((0, 0));
            vec![
                s(n.id),
                s(&n.host),
                s(n.port),
                s(n.status.as_str()),
                s(n.role.as_str()),
                s(c.selects.load(Ordering::Relaxed)),
                s(c.queries.load(Ordering::Relaxed)),
                s(conns),
                s(idle),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node_id",
            "hostname",
            "port",
            "status",
            "role",
            "select_cnt",
            "query_cnt",
            "connections",
            "idle_connections",
        ],
        rows,
    }
}

/// `SHOW POOL_WATCHDOG`: one row per watchdog node, as this node sees it
/// (no rows without `[watchdog]`).
fn pool_watchdog(shared: &Shared) -> Table {
    let columns = vec![
        "node_name",
        "priority",
        "state",
        "is_local",
        "healthy",
        "last_seen_ms_ago",
        "leader",
        "term",
        "escalated",
        "address_mode",
        "address_holder",
    ];
    let Some(wd) = shared.watchdog.get() else {
        return Table {
            columns,
            rows: vec![],
        };
    };
    let st = wd.status();
    let rows = st
        .nodes
        .iter()
        .map(|n| {
            vec![
                s(&n.name),
                s(n.priority),
                s(n.state),
                s(n.is_self),
                n.healthy.map(|h| h.to_string()),
                n.last_seen_ms_ago.map(|v| v.to_string()),
                st.leader.clone(),
                s(st.term),
                s(n.is_self && st.escalated),
                s(&st.address_mode),
                st.address.holder.clone(),
            ]
        })
        .collect();
    Table { columns, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> std::sync::Arc<Shared> {
        let cfg = crate::config::Config::load_str(
            "[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n\
             [[users]]\nname = \"app\"\npassword = \"app\"\n",
        )
        .unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        Shared::new(cfg, None, rx)
    }

    /// A session's SHOW of tidepool's own views is told apart from every
    /// other statement by its first word, however it is spaced and cased.
    #[tokio::test]
    async fn show_commands_are_found_by_their_first_word() {
        let shared = shared();
        for sql in [
            "SHOW POOL_VERSION",
            "  show\tpool_version ;",
            "\nShow   Pool_Version;;",
        ] {
            let table = answer_in_session(sql, &shared, None);
            assert_eq!(
                table.map(|t| t.columns),
                Some(vec!["pool_version"]),
                "{sql:?}"
            );
        }
        for sql in [
            "SELECT 1",
            "SHOW search_path",
            "SHOWPOOL_VERSION",
            "sho",
            "",
            "shoW",
            "explain show pool_version",
        ] {
            assert!(answer_in_session(sql, &shared, None).is_none(), "{sql:?}");
        }
    }
}
