//! Every default value of the configuration, in one place.

use std::time::Duration;

use super::{
    FailoverConfig, HealthCheckConfig, LogFormat, LoggingConfig, PoolConfig, PoolMode, ServerConfig,
};

pub const CLIENT_PORT: u16 = 9999;
pub const ADMIN_PORT: u16 = 9898;

pub fn backend_port() -> u16 {
    5432
}

pub fn backend_weight() -> f64 {
    1.0
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], CLIENT_PORT).into(),
            admin_listen: ([127, 0, 0, 1], ADMIN_PORT).into(),
            admin_token: None,
            admin_token_file: None,
            admin_allow_unauthenticated_loopback: true,
            max_client_connections: 10_000,
            max_startup_connections: 1_000,
            startup_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            state_dir: None,
            worker_threads: 0,
            scheduler: Default::default(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            max_size: 20,
            max_waiting_clients: 10_000,
            checkout_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            reset_query: "DISCARD ALL".to_string(),
            primary_wait_timeout: Duration::from_secs(15),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            // A crash closes the check's connection, which wakes the
            // check at once; the period only bounds how late a silent
            // failure (no RST: a lost instance) is noticed.
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            user: "postgres".to_string(),
            password: None,
            password_secret: None,
            database: "postgres".to_string(),
            // Two quick retries: a refused connection fails in
            // microseconds, so a crash is declared ~400 ms after it shows.
            max_retries: 2,
            retry_delay: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            auto_failover: true,
            detach_false_primary: true,
            failover_on_backend_error: true,
            failover_on_backend_shutdown: true,
            auto_failback: false,
            auto_failback_interval: Duration::from_secs(60),
            replication_user: None,
            replication_password: None,
            failover_command: None,
            follow_primary_command: None,
            switchover_command: None,
            recovery_command: None,
            pg_bin_dir: None,
            promote_timeout: Duration::from_secs(30),
            switchover_timeout: Duration::from_secs(30),
            recovery_timeout: Duration::from_secs(600),
            recovery_max_lag_bytes: 16 * 1024 * 1024,
            command_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}
