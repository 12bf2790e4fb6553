//! What a managed cluster's instances say of its topology, and what
//! tidepool concludes from it. Pure: `discovery` asks the instances and
//! applies the conclusions to the node table.
//!
//! The rule that keeps writes safe: an instance becomes the writer only
//! when its own connection both lists it as the writer in the topology and
//! answers `pg_is_in_recovery() = f` and `transaction_read_only = off`.
//! The cluster endpoint's view, or a reader's, may name the new writer
//! first (so tidepool connects to it), but never crowns it: a reader that
//! still reports itself a reader is never sent a write.

use std::time::Duration;

use crate::config::{ClusterConfig, ClusterKind};

/// One instance as a topology lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The instance identifier (Aurora's `server_id`, the first label of a
    /// Multi-AZ instance endpoint): the node's name.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub writer: bool,
    /// How far the reader is behind the writer (`replica_lag_in_msec`),
    /// and how old that figure was when read.
    pub lag: Option<(Duration, Duration)>,
}

/// What one connection answered.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The instance asked (its node name), `None` for the cluster endpoint.
    pub asked: Option<String>,
    /// In recovery, or read-only (`transaction_read_only`): no writer.
    pub read_only: bool,
    pub members: Vec<Member>,
}

impl View {
    /// The instance asked says it is the writer, on its own connection.
    pub fn confirms_writer(&self) -> bool {
        !self.read_only
            && self
                .asked
                .as_ref()
                .is_some_and(|me| self.members.iter().any(|m| m.writer && &m.name == me))
    }

    /// The writer this view names, if any.
    pub fn named_writer(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.writer)
    }
}

/// The writer the views confirm: exactly one instance that names itself
/// writer and is not in recovery. Two such (a topology caught mid-change)
/// confirm nobody; the next round asks again.
pub fn confirmed_writer(views: &[View]) -> Option<&View> {
    let mut found = views.iter().filter(|v| v.confirms_writer());
    let first = found.next()?;
    match found.find(|v| v.asked != first.asked) {
        Some(_) => None,
        None => Some(first),
    }
}

/// Membership changes from the writer's view: instances to add (or bring
/// back) and names of known instances to retire.
pub fn membership<'a>(
    writer_view: &'a View,
    known: impl IntoIterator<Item = &'a str>,
) -> (Vec<&'a Member>, Vec<&'a str>) {
    let join = writer_view.members.iter().collect();
    let leave = known
        .into_iter()
        .filter(|name| !writer_view.members.iter().any(|m| m.name == *name))
        .collect();
    (join, leave)
}

/// The query that reads the topology on an instance of `kind`: one row
/// always (whether the connection is read-only: in recovery, or
/// `transaction_read_only`), with the members' columns (NULL when
/// the topology is empty).
pub fn query(kind: ClusterKind) -> &'static str {
    match kind {
        // As the AWS drivers read it: rows not updated for five minutes
        // are instances gone.
        ClusterKind::Aurora => {
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool, t.server_id::text, t.writer, t.lag_ms, t.age_s \
             FROM (SELECT 1) AS one LEFT JOIN ( \
               SELECT server_id, session_id = 'MASTER_SESSION_ID' AS writer, \
                 COALESCE(replica_lag_in_msec, 0)::float8 AS lag_ms, \
                 COALESCE(EXTRACT(EPOCH FROM (now() - last_update_timestamp)), 0)::float8 AS age_s \
               FROM aurora_replica_status() \
               WHERE session_id = 'MASTER_SESSION_ID' OR last_update_timestamp IS NULL \
                 OR EXTRACT(EPOCH FROM (now() - last_update_timestamp)) <= 300 \
             ) AS t ON true"
        }
        ClusterKind::MultiAzCluster => {
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool, t.endpoint::text, t.writer, t.port::int \
             FROM (SELECT 1) AS one LEFT JOIN ( \
               SELECT endpoint, port, id = (SELECT max(multi_az_db_cluster_source_dbi_resource_id) \
                 FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id()) AS writer \
               FROM rds_tools.show_topology('tidepool') \
             ) AS t ON true"
        }
    }
}

/// Tells the kind of cluster apart: (has `aurora_version()`, has
/// `rds_tools.show_topology`).
pub const DETECT: &str = "SELECT \
    EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'aurora_version'), \
    EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
            WHERE n.nspname = 'rds_tools' AND p.proname = 'show_topology')";

/// One row of [`query`], as text-or-NULL columns already taken out.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Aurora: server_id; Multi-AZ: the instance endpoint.
    pub id: Option<String>,
    pub writer: Option<bool>,
    pub lag_ms: Option<f64>,
    pub age_s: Option<f64>,
    pub port: Option<i32>,
}

/// A member from one row, for cluster `c` of `kind`; `None` for the empty
/// row of an empty topology, or an Aurora instance without a host pattern.
pub fn member(c: &ClusterConfig, kind: ClusterKind, row: &Row) -> Option<Member> {
    let id = row.id.as_deref().filter(|s| !s.is_empty())?;
    let writer = row.writer.unwrap_or(false);
    match kind {
        ClusterKind::Aurora => Some(Member {
            name: id.to_string(),
            host: c.instance_host(id)?,
            port: c.port,
            writer,
            lag: (!writer).then(|| {
                (
                    Duration::from_secs_f64(row.lag_ms.unwrap_or(0.0).max(0.0) / 1000.0),
                    Duration::from_secs_f64(row.age_s.unwrap_or(0.0).max(0.0)),
                )
            }),
        }),
        ClusterKind::MultiAzCluster => {
            // The instance's name is the first label of its endpoint (as
            // the AWS drivers name it); an address names itself.
            let name = if id.parse::<std::net::IpAddr>().is_ok() {
                id.to_string()
            } else {
                id.split('.').next().unwrap_or(id).to_string()
            };
            Some(Member {
                name,
                host: id.to_string(),
                port: row
                    .port
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(c.port),
                writer,
                lag: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, writer: bool) -> Member {
        Member {
            name: name.into(),
            host: format!("{name}.example"),
            port: 5432,
            writer,
            lag: None,
        }
    }

    fn view(asked: Option<&str>, read_only: bool, writer: &str) -> View {
        View {
            asked: asked.map(str::to_string),
            read_only,
            members: ["a", "b", "c"].iter().map(|n| m(n, *n == writer)).collect(),
        }
    }

    #[test]
    fn only_an_instance_that_names_itself_writer_out_of_recovery_is_confirmed() {
        // The endpoint (stale DNS) and a reader name b: not enough.
        let v = [view(None, false, "b"), view(Some("c"), true, "b")];
        assert!(confirmed_writer(&v).is_none());
        // b says it is the writer but is still in recovery (mid-promotion).
        let v = [view(Some("b"), true, "b")];
        assert!(confirmed_writer(&v).is_none());
        // b names a as the writer: b is no writer.
        let v = [view(Some("b"), false, "a")];
        assert!(confirmed_writer(&v).is_none());
        let v = [view(Some("c"), true, "b"), view(Some("b"), false, "b")];
        assert_eq!(
            confirmed_writer(&v).and_then(|v| v.asked.as_deref()),
            Some("b")
        );
    }

    #[test]
    fn two_self_declared_writers_confirm_nobody() {
        let v = [view(Some("a"), false, "a"), view(Some("b"), false, "b")];
        assert!(confirmed_writer(&v).is_none());
    }

    #[test]
    fn membership_follows_the_writers_view() {
        let mut w = view(Some("a"), false, "a");
        w.members.retain(|m| m.name != "c");
        w.members.push(m("d", false));
        let (join, leave) = membership(&w, ["a", "b", "c"]);
        let joined: Vec<&str> = join.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(joined, ["a", "b", "d"]);
        assert_eq!(leave, ["c"]);
    }

    #[test]
    fn rows_become_members_by_kind() {
        let c: ClusterConfig = toml::from_str(
            "name = \"x\"\nendpoint = \"x.cluster-abc.rds\"\nport = 6432\n\
             instance_host_pattern = \"?.abc.rds\"",
        )
        .unwrap();
        let row = Row {
            id: Some("db-2".into()),
            writer: Some(false),
            lag_ms: Some(1500.0),
            age_s: Some(0.5),
            port: None,
        };
        let a = member(&c, ClusterKind::Aurora, &row).unwrap();
        assert_eq!(a.host, "db-2.abc.rds");
        assert_eq!(a.port, 6432);
        assert_eq!(
            a.lag,
            Some((Duration::from_millis(1500), Duration::from_millis(500)))
        );
        let row = Row {
            id: Some("db-3.abc.rds".into()),
            writer: Some(true),
            port: Some(5433),
            ..Row::default()
        };
        let z = member(&c, ClusterKind::MultiAzCluster, &row).unwrap();
        assert_eq!((z.name.as_str(), z.port, z.writer), ("db-3", 5433, true));
        let row = Row {
            id: Some("10.0.1.7".into()),
            ..Row::default()
        };
        let ip = member(&c, ClusterKind::MultiAzCluster, &row).unwrap();
        assert_eq!((ip.name.as_str(), ip.port), ("10.0.1.7", 6432));
        assert!(member(&c, ClusterKind::Aurora, &Row::default()).is_none());
    }
}
