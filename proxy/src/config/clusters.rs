//! `[[clusters]]`: a managed cluster — Aurora, or an RDS Multi-AZ DB
//! cluster — given by its cluster (writer) endpoint. tidepool reads the
//! cluster's topology from the database itself and puts each instance in
//! the node table under its own instance endpoint, so that writes follow a
//! new writer before the cluster endpoint's DNS name does. The watcher is
//! `cluster::discovery`; these are the knobs and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BackendAuth, BackendConfig, BackendFlag, BackendTlsConfig, ConfigError, SslMode};

/// Which topology the cluster exposes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    /// Aurora PostgreSQL: `aurora_replica_status()`, instance endpoints
    /// from `instance_host_pattern`.
    Aurora,
    /// An RDS Multi-AZ DB cluster (one writer, two readable standbys):
    /// `rds_tools.show_topology()` with each instance's endpoint.
    MultiAzCluster,
}

impl ClusterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::Aurora => "aurora",
            ClusterKind::MultiAzCluster => "multi_az_cluster",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names the cluster in logs and the admin surface; its instances are
    /// named after their instance identifiers.
    pub name: String,
    /// `None`: told apart at the first connection (`aurora_version()`
    /// answers on Aurora, `rds_tools.show_topology()` on a Multi-AZ DB
    /// cluster).
    #[serde(default)]
    pub kind: Option<ClusterKind>,
    /// The cluster (writer) endpoint: where the topology is read first,
    /// and again whenever no instance answers.
    pub endpoint: String,
    /// Port of the endpoint and of every instance (Aurora instances share
    /// the cluster's port).
    #[serde(default = "super::defaults::backend_port")]
    pub port: u16,
    /// An instance's host name, `?` standing for its instance identifier
    /// (`?.abcdefghijkl.us-east-1.rds.amazonaws.com`). Needed on Aurora,
    /// whose topology names instances only by identifier.
    #[serde(default)]
    pub instance_host_pattern: Option<String>,
    /// The DB cluster identifier: when no instance answers,
    /// `DescribeDBClusters` (if the node may call it) names the members;
    /// `ctl promote INSTANCE --switchover` asks RDS to fail over to it.
    #[serde(default)]
    pub cluster_identifier: Option<String>,
    /// Read weight of each reader instance.
    #[serde(default = "super::defaults::backend_weight")]
    pub reader_weight: f64,
    /// Read weight of the writer (0: reads go to readers while one is up,
    /// to the writer when none is).
    #[serde(default)]
    pub writer_weight: f64,
    /// How often the writer is asked for the topology (members, readers'
    /// lag) while all is well.
    #[serde(default = "topology_period", with = "humantime_serde")]
    pub topology_period: Duration,
    /// While no writer is confirmed (it stopped answering, or answered
    /// read-only), every instance is asked this often.
    #[serde(default = "failover_poll", with = "humantime_serde")]
    pub failover_poll: Duration,
    /// How long the fast polling lasts before it slows to
    /// `topology_period` (writes keep waiting, bounded by
    /// `pool.primary_wait_timeout`, as for any failover).
    #[serde(default = "failover_poll_timeout", with = "humantime_serde")]
    pub failover_poll_timeout: Duration,
    /// TLS and login towards the endpoint and the instances; unset keys
    /// come from `[backend_defaults]`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    #[serde(default)]
    pub sslrootcert: Option<String>,
    #[serde(default)]
    pub sslcert: Option<String>,
    #[serde(default)]
    pub sslkey: Option<String>,
    #[serde(default)]
    pub auth: Option<BackendAuth>,
    #[serde(default)]
    pub region: Option<String>,
}

fn topology_period() -> Duration {
    Duration::from_secs(1)
}

fn failover_poll() -> Duration {
    Duration::from_millis(100)
}

fn failover_poll_timeout() -> Duration {
    Duration::from_secs(120)
}

impl ClusterConfig {
    /// The host of instance `id`: the pattern with `?` replaced, or `None`
    /// without a pattern.
    pub fn instance_host(&self, id: &str) -> Option<String> {
        self.instance_host_pattern
            .as_ref()
            .map(|p| p.replace('?', id))
    }

    /// The endpoint as a node tidepool connects to (settings, TLS, login).
    pub fn endpoint_backend(&self) -> BackendConfig {
        self.instance(&self.endpoint, &self.endpoint, self.port)
    }

    /// Instance `name` at `host:port`, as a node of the table: never
    /// detached or promoted by tidepool (AWS runs the cluster's failover).
    pub fn instance(&self, name: &str, host: &str, port: u16) -> BackendConfig {
        BackendConfig {
            name: name.to_string(),
            host: host.to_string(),
            port,
            weight: self.reader_weight,
            flag: BackendFlag::DisallowToFailover,
            data_directory: None,
            log_file: None,
            health_check_period: None,
            health_check_timeout: None,
            health_check_max_retries: None,
            health_check_retry_delay: None,
            health_check_connect_timeout: None,
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
            auth: self.auth,
            region: self.region.clone(),
        }
    }

    /// Fills the unset TLS and login keys from `defaults`.
    pub fn apply_defaults(&mut self, defaults: &BackendTlsConfig) {
        let t = BackendTlsConfig {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
            auth: self.auth,
            region: self.region.clone(),
        }
        .or(defaults);
        self.sslmode = t.sslmode;
        self.sslrootcert = t.sslrootcert;
        self.sslcert = t.sslcert;
        self.sslkey = t.sslkey;
        self.auth = t.auth;
        self.region = t.region;
    }
}

/// The checks of `[[clusters]]` that need more than one key.
pub fn errors(clusters: &[ClusterConfig], backends: &[BackendConfig]) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut err = |path: String, msg: &str| out.push(ConfigError::new(path, msg));
    if clusters.len() > 1 {
        err(
            "clusters".into(),
            "at most one [[clusters]] entry: tidepool sends writes to one writer",
        );
    }
    if !clusters.is_empty() && !backends.is_empty() {
        err(
            "clusters".into(),
            "[[clusters]] and [[backends]] cannot be combined: the cluster's instances are the \
             nodes (its writer takes the writes)",
        );
    }
    for (i, c) in clusters.iter().enumerate() {
        if c.name.trim().is_empty() {
            err(format!("clusters[{i}].name"), "must not be empty");
        }
        if c.endpoint.trim().is_empty() {
            err(format!("clusters[{i}].endpoint"), "must not be empty");
        }
        if c.port == 0 {
            err(format!("clusters[{i}].port"), "must be 1..=65535");
        }
        match &c.instance_host_pattern {
            Some(p) if p.matches('?').count() != 1 => err(
                format!("clusters[{i}].instance_host_pattern"),
                "must hold exactly one `?` (the instance identifier's place)",
            ),
            None if c.kind == Some(ClusterKind::Aurora) => err(
                format!("clusters[{i}].instance_host_pattern"),
                "is required for kind = \"aurora\": Aurora names its instances only by \
                 identifier (e.g. \"?.abcdefghijkl.us-east-1.rds.amazonaws.com\")",
            ),
            _ => {}
        }
        for (key, w) in [
            ("reader_weight", c.reader_weight),
            ("writer_weight", c.writer_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                err(
                    format!("clusters[{i}].{key}"),
                    "must be a finite number >= 0",
                );
            }
        }
        for (key, d) in [
            ("topology_period", c.topology_period),
            ("failover_poll", c.failover_poll),
        ] {
            if d.is_zero() {
                err(format!("clusters[{i}].{key}"), "must be more than 0");
            }
        }
    }
    out
}
