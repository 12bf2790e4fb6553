//! SQL the manager runs on the nodes: WAL positions, timelines, promotion,
//! replication slots and repointing a standby. Every call is bounded by a
//! timeout and logs in as the health-check user.

use std::time::Duration;

use super::failover::{Lsn, Position};
use crate::config::HealthCheckConfig;

/// Why an action on the nodes failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot connect to {node}: {reason}")]
    Connect { node: String, reason: String },
    #[error("{what} on {node} failed: {reason}")]
    Sql {
        node: String,
        what: &'static str,
        reason: String,
    },
    #[error("{what} on {node} timed out after {after:?}")]
    Timeout {
        node: String,
        what: &'static str,
        after: Duration,
    },
    #[error("command `{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error("{0}")]
    Refused(String),
}

/// Where a node is and how to log in to it.
#[derive(Debug, Clone)]
pub struct NodeAddress {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: std::sync::Arc<crate::tls::BackendTls>,
    /// The node table, for the password of the check user on this node.
    pub cluster: std::sync::Arc<super::Cluster>,
    pub id: usize,
}

/// An open connection to one node.
pub struct NodeConn {
    pub target: NodeAddress,
    client: tokio_postgres::Client,
    timeout: Duration,
}

/// Connects to `t` as the health-check user.
pub async fn connect(t: &NodeAddress, hc: &HealthCheckConfig) -> Result<NodeConn, ActionError> {
    let failed = |reason: String| ActionError::Connect {
        node: t.name.clone(),
        reason,
    };
    let password = t
        .cluster
        .check_password(t.id, &t.host, t.port, hc)
        .await
        .map_err(failed)?;
    let (client, _driver) = t
        .tls
        .connect_own(crate::tls::OwnConnection {
            host: &t.host,
            port: t.port,
            user: &hc.user,
            password: password.as_deref(),
            database: &hc.database,
            application: "tidepool failover",
            timeout: hc.connect_timeout,
        })
        .await
        .map_err(failed)?;
    Ok(NodeConn {
        target: t.clone(),
        client,
        timeout: hc.timeout.max(Duration::from_secs(5)),
    })
}

impl NodeConn {
    async fn rows(
        &self,
        what: &'static str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<tokio_postgres::SimpleQueryRow>, ActionError> {
        let fut = self.client.simple_query(sql);
        let msgs = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ActionError::Timeout {
                node: self.target.name.clone(),
                what,
                after: timeout,
            })?
            .map_err(|e| ActionError::Sql {
                node: self.target.name.clone(),
                what,
                reason: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row.
    async fn value(&self, what: &'static str, sql: &str) -> Result<Option<String>, ActionError> {
        let rows = self.rows(what, sql, self.timeout).await?;
        Ok(rows.first().and_then(|r| r.get(0)).map(str::to_string))
    }

    fn bad(&self, what: &'static str, reason: String) -> ActionError {
        ActionError::Sql {
            node: self.target.name.clone(),
            what,
            reason,
        }
    }

    /// Whether the node is in recovery and how much WAL it has.
    pub async fn position(&self, node: usize) -> Result<Position, ActionError> {
        let rows = self
            .rows(
                "reading WAL positions",
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
                self.timeout,
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| self.bad("reading WAL positions", "no row".into()))?;
        Ok(Position {
            node,
            in_recovery: r.get(0) == Some("t"),
            receive: r.get(1).and_then(|v| v.parse().ok()),
            replay: r.get(2).and_then(|v| v.parse().ok()),
        })
    }

    /// `pg_current_wal_lsn()` of a primary.
    pub async fn current_lsn(&self) -> Result<Lsn, ActionError> {
        let v = self
            .value("reading the WAL position", "SELECT pg_current_wal_lsn()")
            .await?
            .unwrap_or_default();
        v.parse()
            .map_err(|e| self.bad("reading the WAL position", e))
    }

    /// The timeline a primary writes on (from its current WAL file's name).
    pub async fn timeline(&self) -> Result<u32, ActionError> {
        let v = self
            .value(
                "reading the timeline",
                "SELECT CASE WHEN pg_is_in_recovery() \
                 THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
            )
            .await?
            .unwrap_or_default();
        v.parse()
            .map_err(|e| self.bad("reading the timeline", format!("{v:?}: {e}")))
    }

    /// Promotes a standby and waits (up to `timeout`) until it takes writes.
    /// `pg_promote(wait => true)` polls only every 100 ms, so tidepool asks
    /// without waiting and polls `pg_is_in_recovery()` itself every 10 ms.
    pub async fn promote(&self, timeout: Duration) -> Result<(), ActionError> {
        let rows = self
            .rows(
                "pg_promote()",
                "SELECT pg_promote(wait => false)",
                self.timeout,
            )
            .await?;
        if rows.first().and_then(|r| r.get(0)) != Some("t") {
            return Err(self.bad("pg_promote()", "the promotion request was refused".into()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .value("pg_is_in_recovery()", "SELECT pg_is_in_recovery()")
                .await?
                .as_deref()
                == Some("f")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ActionError::Timeout {
                    node: self.target.name.clone(),
                    what: "promotion",
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The standby's current `primary_slot_name` (empty when none).
    pub async fn slot_name(&self) -> Result<String, ActionError> {
        Ok(self
            .value("reading primary_slot_name", "SHOW primary_slot_name")
            .await?
            .unwrap_or_default())
    }

    /// Creates the physical slot `slot` unless it exists.
    pub async fn ensure_slot(&self, slot: &str) -> Result<(), ActionError> {
        let lit = quote_literal(slot);
        let sql = format!(
            "SELECT pg_create_physical_replication_slot({lit}, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit})"
        );
        self.rows("creating a replication slot", &sql, self.timeout)
            .await
            .map(|_| ())
    }

    /// Points a standby at a new primary: `primary_conninfo`,
    /// `primary_slot_name`, reload. The WAL receiver restarts on its own.
    pub async fn repoint(&self, conninfo: &str, slot: &str) -> Result<(), ActionError> {
        for (what, sql) in [
            (
                "ALTER SYSTEM SET primary_conninfo",
                format!(
                    "ALTER SYSTEM SET primary_conninfo = {}",
                    quote_literal(conninfo)
                ),
            ),
            (
                "ALTER SYSTEM SET primary_slot_name",
                format!(
                    "ALTER SYSTEM SET primary_slot_name = {}",
                    quote_literal(slot)
                ),
            ),
            ("pg_reload_conf()", "SELECT pg_reload_conf()".to_string()),
        ] {
            self.rows(what, &sql, self.timeout).await?;
        }
        Ok(())
    }

    /// `CHECKPOINT`: a freshly promoted primary's control file names its
    /// new timeline only after one, and `pg_rewind` reads it there.
    pub async fn checkpoint(&self) -> Result<(), ActionError> {
        self.rows(
            "CHECKPOINT",
            "CHECKPOINT",
            self.timeout.max(Duration::from_secs(60)),
        )
        .await
        .map(|_| ())
    }

    /// The timeline the WAL receiver streams on, when it streams.
    pub async fn streaming_timeline(&self) -> Result<Option<u32>, ActionError> {
        Ok(self
            .value(
                "reading pg_stat_wal_receiver",
                "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            )
            .await?
            .and_then(|v| v.parse().ok()))
    }

    /// Whether the WAL receiver streams.
    pub async fn streaming(&self) -> Result<bool, ActionError> {
        Ok(self
            .value(
                "reading pg_stat_wal_receiver",
                "SELECT status FROM pg_stat_wal_receiver",
            )
            .await?
            .as_deref()
            == Some("streaming"))
    }

    /// The WAL receiver, when it streams.
    pub async fn receiver(&self) -> Result<Option<Receiver>, ActionError> {
        let rows = self
            .rows(
                "reading pg_stat_wal_receiver",
                "SELECT received_tli, slot_name, sender_host, sender_port \
                 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                self.timeout,
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Receiver {
            timeline: r.get(0).and_then(|v| v.parse().ok()).unwrap_or(0),
            slot_name: r.get(1).filter(|s| !s.is_empty()).map(str::to_string),
            sender_host: r.get(2).unwrap_or_default().to_string(),
            sender_port: r.get(3).and_then(|v| v.parse().ok()).unwrap_or(0),
        }))
    }

    /// Whether a walsender uses replication slot `slot` on this node.
    pub async fn slot_active(&self, slot: &str) -> Result<bool, ActionError> {
        let sql = format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        );
        Ok(self
            .value("reading pg_replication_slots", &sql)
            .await?
            .as_deref()
            == Some("t"))
    }
}

/// A standby's WAL receiver, as `pg_stat_wal_receiver` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// `received_tli`: the timeline it streams on.
    pub timeline: u32,
    pub slot_name: Option<String>,
    pub sender_host: String,
    pub sender_port: u16,
}

pub use crate::backend::quote_literal;

/// A libpq connection string value, quoted.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The `primary_conninfo` of a standby streaming from `host:port`, with
/// the TLS settings tidepool itself uses towards that node (a standby
/// repointed by tidepool checks its primary as strictly as tidepool does).
pub fn conninfo(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    tls: &crate::config::BackendTlsConfig,
) -> String {
    let mut s = format!(
        "host={} port={port} user={}",
        conninfo_value(host),
        conninfo_value(user)
    );
    if let Some(p) = password {
        s.push_str(&format!(" password={}", conninfo_value(p)));
    }
    if let Some(mode) = tls.sslmode {
        s.push_str(&format!(" sslmode={}", mode.as_str()));
    }
    for (key, value) in [
        ("sslrootcert", &tls.sslrootcert),
        ("sslcert", &tls.sslcert),
        ("sslkey", &tls.sslkey),
    ] {
        if let Some(v) = value {
            s.push_str(&format!(" {key}={}", conninfo_value(v)));
        }
    }
    s
}

/// A replication slot name for node `name`: lower case letters, digits
/// and underscores, at most 63 bytes.
pub fn slot_for(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if s.is_empty() { "tidepool".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_sql_and_libpq() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            conninfo("10.0.0.1", 5432, "rep", Some("p'w\\"), &Default::default()),
            r"host='10.0.0.1' port=5432 user='rep' password='p\'w\\'"
        );
        assert_eq!(
            quote_literal(&conninfo("h", 1, "u", None, &Default::default())),
            "'host=''h'' port=1 user=''u'''"
        );
    }

    #[test]
    fn slot_names_are_sanitized() {
        assert_eq!(slot_for("pg1"), "pg1");
        assert_eq!(slot_for("DB-East.2"), "db_east_2");
        assert_eq!(slot_for(""), "tidepool");
        assert_eq!(slot_for(&"x".repeat(80)).len(), 63);
    }
}
