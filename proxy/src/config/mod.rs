//! Configuration: one TOML file, validated as a whole.
//!
//! Every key is declared here with its default (in `defaults.rs`), so the
//! file and `docs/configuration.md` describe the same thing. Loading never
//! stops at the first problem: [`Config::load_str`] collects every error with
//! its key path (`backends[1].port`) so `tidepool check-config` can list them
//! all at once.

mod clusters;
mod defaults;
mod hba;
mod query_cache;
mod routing;
mod source;
mod tls;
pub mod validate;
mod watchdog;

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

pub use clusters::{ClusterConfig, ClusterKind};
pub use hba::{HbaRuleConfig, OneOrMany};
pub use query_cache::{CacheStore, Invalidation, QueryCacheConfig};
pub use routing::{LoadBalancingConfig, OnWrite};
pub use source::{Current, Source};
pub use tls::{
    BackendAuth, BackendTlsConfig, CertMapConfig, ClientMode, SslMode, TlsConfig, TlsVersion,
};
pub use validate::ConfigError;
pub use watchdog::{AddressMode, EscalationConfig, EscalationVia, PeerConfig, WatchdogConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub pool: PoolConfig,
    pub health_check: HealthCheckConfig,
    pub failover: FailoverConfig,
    pub load_balancing: LoadBalancingConfig,
    /// `[query_cache]`: SELECT results answered without the database.
    pub query_cache: QueryCacheConfig,
    pub logging: LoggingConfig,
    pub backends: Vec<BackendConfig>,
    /// `[[clusters]]`: a managed cluster whose instances tidepool finds
    /// from its topology (instead of `[[backends]]`).
    pub clusters: Vec<ClusterConfig>,
    pub users: Vec<UserConfig>,
    pub hba: Vec<HbaRuleConfig>,
    /// `[tls]`: TLS for clients.
    pub tls: TlsConfig,
    /// `[backend_defaults]`: TLS and login settings every backend takes
    /// unless it sets its own.
    pub backend_defaults: BackendTlsConfig,
    /// `[[cert_map]]`: certificate common names that may log in as a user
    /// under the `cert` method.
    pub cert_map: Vec<CertMapConfig>,
    /// `[watchdog]`: present means this node is one of several tidepools.
    pub watchdog: Option<WatchdogConfig>,
    /// `[escalation]`: what the watchdog's leader does with the address.
    pub escalation: Option<EscalationConfig>,
}

/// `[server]`: where clients and administrators connect.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for PostgreSQL clients.
    pub listen: SocketAddr,
    /// Address of the admin HTTP API (health, metrics, control).
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API; required when `admin_listen` is not loopback.
    pub admin_token: Option<String>,
    /// File holding the admin token (first line), instead of `admin_token`.
    pub admin_token_file: Option<String>,
    /// Whether a loopback `admin_listen` without a token answers whoever
    /// reaches it (requests from web pages are refused either way); `false`
    /// demands a token on loopback too.
    pub admin_allow_unauthenticated_loopback: bool,
    /// Most logged-in clients at once; more are refused with 53300.
    pub max_client_connections: usize,
    /// Most client sockets still in startup or authentication at once; more
    /// are refused at once with 53300 (a flood of silent sockets cannot
    /// lock clients out for `startup_timeout`).
    pub max_startup_connections: usize,
    /// Time a client has to finish startup and authentication.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Close client connections idle this long outside a transaction (0 = never).
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// On shutdown, how long to wait for clients to finish before closing them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Where tidepool keeps state that must survive restarts.
    pub state_dir: Option<String>,
    /// Threads that run client sessions (0 = one per CPU). Read at start.
    pub worker_threads: usize,
    /// How client sessions are spread over those threads. Read at start.
    pub scheduler: Scheduler,
}

/// How client sessions run on the worker threads (`server.scheduler`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// One single-threaded runtime per worker: a client, its server
    /// connections and its timers stay on the worker that accepted it, so
    /// a transaction wakes no other thread (server::workers).
    #[default]
    PerCore,
    /// One runtime whose workers steal each other's tasks: evens out a few
    /// long, busy sessions at the cost of cross-thread wake-ups.
    WorkStealing,
}

/// Pooling modes, as in PgBouncer and Pgpool-II.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A backend connection serves one client for the client's whole session.
    Session,
    /// A backend connection serves a client for one transaction at a time.
    Transaction,
}

/// `[pool]`: backend connection pools, one per (node, user, database).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Most backend connections in one pool.
    pub max_size: usize,
    /// Most clients waiting for a connection of one pool; more get 53300 at once.
    pub max_waiting_clients: usize,
    /// How long a client waits for a backend connection before an error.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Idle backend connections are closed after this long (0 = never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Backend connections are closed at check-in once this old (0 = never).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Time to open a backend connection, authentication included.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Run on a session-mode connection when its client leaves.
    pub reset_query: String,
    /// How long a statement waits for a primary when none is known (during
    /// a failover) before it fails with 57P03.
    #[serde(with = "humantime_serde")]
    pub primary_wait_timeout: Duration,
}

/// `[health_check]`: how tidepool watches every backend.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub user: String,
    pub password: Option<String>,
    /// Secrets Manager secret holding the password instead (plain or
    /// `{"username","password"}` JSON), re-read when a login is refused.
    pub password_secret: Option<String>,
    pub database: String,
    /// Failed checks retried before the node counts as failed.
    pub max_retries: u32,
    /// Pause between a failed check and its retry.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Time to open the check's connection (login included).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// `[failover]`: what tidepool does when a node fails, and how it promotes,
/// repoints and recovers nodes. See `docs/failover.md`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Promote a standby when the primary fails its health checks.
    pub auto_failover: bool,
    /// When two nodes answer as primary, detach the one on the older timeline.
    pub detach_false_primary: bool,
    /// A session whose backend connection fails (connect, read or write
    /// error) makes tidepool probe that node at once, and handle it as a
    /// failed health check if the probe fails too. Applies to
    /// `allow_to_failover` nodes only.
    pub failover_on_backend_error: bool,
    /// The same when a backend ends a session with FATAL 57P01
    /// (admin_shutdown, e.g. `pg_ctl stop -m fast`).
    pub failover_on_backend_shutdown: bool,
    /// Re-attach a standby that was detached after failing its health
    /// checks once it answers again, is in recovery and streams from the
    /// current primary.
    pub auto_failback: bool,
    /// Least time between two automatic failbacks of the same node.
    #[serde(with = "humantime_serde")]
    pub auto_failback_interval: Duration,
    /// Role standbys stream as (built-in follow and recovery).
    pub replication_user: Option<String>,
    pub replication_password: Option<String>,
    /// Shell command that promotes the new primary instead of `pg_promote()`.
    pub failover_command: Option<String>,
    /// Shell command run for each remaining standby instead of the built-in repointing.
    pub follow_primary_command: Option<String>,
    /// Shell command that turns the old primary into a standby of the new one
    /// when its data directory is not reachable.
    pub switchover_command: Option<String>,
    /// Shell command that recovers a node when its data directory is not reachable.
    pub recovery_command: Option<String>,
    /// Directory of `pg_ctl`, `pg_rewind`, `pg_basebackup`, `pg_controldata`.
    pub pg_bin_dir: Option<String>,
    /// Most time a promotion may take.
    #[serde(with = "humantime_serde")]
    pub promote_timeout: Duration,
    /// Most time a switchover waits for the new primary to catch up.
    #[serde(with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// Most time an online recovery may take (copy included).
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// A recovered standby is attached once it lags by at most this many bytes of WAL.
    pub recovery_max_lag_bytes: u64,
    /// Most time one shell command may run.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A `tracing` filter such as `info` or `tidepool=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// What tidepool may do with a backend when it fails.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendFlag {
    /// Self-managed node: tidepool may detach and promote it.
    #[default]
    AllowToFailover,
    /// tidepool never detaches or promotes it.
    DisallowToFailover,
    /// A managed endpoint (RDS, Aurora writer) that is always the primary;
    /// AWS runs its failover and tidepool rides it out.
    AlwaysPrimary,
}

/// One `[[backends]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub host: String,
    #[serde(default = "defaults::backend_port")]
    pub port: u16,
    #[serde(default = "defaults::backend_weight")]
    pub weight: f64,
    #[serde(default)]
    pub flag: BackendFlag,
    /// The node's data directory, when it is on this machine (switchover
    /// and online recovery use it).
    #[serde(default)]
    pub data_directory: Option<String>,
    /// Server log for `pg_ctl start -l` (default: `postgresql.log` beside
    /// the data directory).
    #[serde(default)]
    pub log_file: Option<String>,
    /// Per-node overrides of `[health_check]`.
    #[serde(default, with = "humantime_serde")]
    pub health_check_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub health_check_timeout: Option<Duration>,
    #[serde(default)]
    pub health_check_max_retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub health_check_retry_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub health_check_connect_timeout: Option<Duration>,
    /// TLS and login towards this node; unset keys come from
    /// `[backend_defaults]`.
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

impl BackendConfig {
    /// This node's TLS and login settings, `defaults` filling the gaps.
    pub fn tls(&self, defaults: &BackendTlsConfig) -> BackendTlsConfig {
        BackendTlsConfig {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
            auth: self.auth,
            region: self.region.clone(),
        }
        .or(defaults)
    }

    /// Fills this node's unset TLS and login keys from `defaults`.
    pub fn apply_defaults(&mut self, defaults: &BackendTlsConfig) {
        let t = self.tls(defaults);
        self.sslmode = t.sslmode;
        self.sslrootcert = t.sslrootcert;
        self.sslcert = t.sslcert;
        self.sslkey = t.sslkey;
        self.auth = t.auth;
        self.region = t.region;
    }

    /// The health-check settings of this node: `global` with its overrides.
    pub fn health_check(&self, global: &HealthCheckConfig) -> HealthCheckConfig {
        HealthCheckConfig {
            period: self.health_check_period.unwrap_or(global.period),
            timeout: self.health_check_timeout.unwrap_or(global.timeout),
            max_retries: self.health_check_max_retries.unwrap_or(global.max_retries),
            retry_delay: self.health_check_retry_delay.unwrap_or(global.retry_delay),
            connect_timeout: self
                .health_check_connect_timeout
                .unwrap_or(global.connect_timeout),
            ..global.clone()
        }
    }
}

/// One `[[users]]` entry: who may log in, and how tidepool logs in for them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plaintext, an md5 verifier (`md5…`) or a SCRAM verifier (`SCRAM-SHA-256$…`).
    pub password: String,
    /// Password tidepool uses towards the backends when `password` is a verifier.
    #[serde(default)]
    pub backend_password: Option<String>,
    /// Per-user override of `pool.max_size`.
    #[serde(default)]
    pub pool_max_size: Option<usize>,
    /// Secrets Manager secret (ARN or name) holding the backend password,
    /// as plain text or `{"username", "password"}` JSON; read at start and
    /// again when a backend refuses the login (28P01), so rotation needs
    /// no restart.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// `rds_iam`: log in to the backends as this user with an RDS IAM
    /// token, whatever the backend's own `auth` says.
    #[serde(default)]
    pub auth: Option<BackendAuth>,
}

impl Config {
    /// Reads and validates a file: its syntax, keys and values. What it
    /// compiles to (hba rules, routing patterns, certificates, secrets) is
    /// checked by `app::Runtime::load`, which a server uses.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        Self::load_with(path, &|_| Vec::new())
    }

    /// [`Config::load`] with `more` checks, all errors reported together.
    pub fn load_with(
        path: &Path,
        more: &dyn Fn(&Config) -> Vec<ConfigError>,
    ) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )]
        })?;
        Self::load_str_with(&text, more)
    }

    /// Parses and validates TOML text, collecting every error.
    pub fn load_str(text: &str) -> Result<Config, Vec<ConfigError>> {
        Self::load_str_with(text, &|_| Vec::new())
    }

    /// [`Config::load_str`] with `more` checks, all errors reported together.
    pub fn load_str_with(
        text: &str,
        more: &dyn Fn(&Config) -> Vec<ConfigError>,
    ) -> Result<Config, Vec<ConfigError>> {
        validate::parse_and_validate(text, more)
    }

    /// The backend password for `user`, if tidepool can log in as them.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The admin token, read from `admin_token` or `admin_token_file`
    /// (its first line). `None` only when neither is set; a token that is
    /// set but empty, or a file that cannot be read, is an error: an empty
    /// token must never open the API.
    pub fn admin_token(&self) -> std::io::Result<Option<String>> {
        let empty = |what: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{what} is empty; put a long random token in it"),
            )
        };
        if let Some(t) = &self.server.admin_token {
            let t = t.trim();
            if t.is_empty() {
                return Err(empty("server.admin_token".into()));
            }
            return Ok(Some(t.to_string()));
        }
        match &self.server.admin_token_file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{f}: {e}")))?;
                match text.lines().next().map(str::trim) {
                    Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
                    _ => Err(empty(format!("server.admin_token_file {f}"))),
                }
            }
            None => Ok(None),
        }
    }
}
