//! The process's shared state, assembled once: the configuration in
//! force (compiled as one `Runtime`), the node table, pools, caches,
//! counters and the control plane's handles. `server` serves clients with
//! it, `session` runs each client's work with it, `admin` reads it; the
//! services below it (`cluster`, `router`, `cache`, `watchdog`) are handed
//! only the parts they use. A reload is applied here.

pub mod runtime;
pub mod services;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use runtime::{Runtime, UserSecret};

use crate::{
    auth::throttle,
    cancel::CancelRegistry,
    cluster::Cluster,
    config::{Config, ConfigError, HealthCheckConfig},
    metrics::Metrics,
    pool::{PoolLimits, Pools},
};

/// What every task shares.
pub struct Shared {
    /// The configuration and what was compiled from it (hba, routing
    /// rules, secrets, certificate map), swapped as one value on reload.
    pub config: Arc<ArcSwap<Runtime>>,
    pub config_path: Option<PathBuf>,
    /// What tidepool serves to clients over TLS (`None`: no TLS).
    pub tls: arc_swap::ArcSwapOption<crate::tls::ServeTls>,
    pub cluster: Arc<Cluster>,
    pub classifier: crate::router::Classifier,
    pub catalog: crate::router::catalog::Catalog,
    /// Standbys' replication delay, measured by `router::lag`.
    pub lags: Arc<crate::router::lag::Lags>,
    pub pools: Arc<Pools>,
    /// Sessions' equal startup settings as one shared map each.
    pub settings: crate::backend::SettingsTable,
    pub cancels: Arc<CancelRegistry>,
    /// Failed logins per source address (refusals slow down).
    pub failed_logins: throttle::FailedLogins,
    pub metrics: Metrics,
    pub health_settings: watch::Sender<HealthCheckConfig>,
    /// The failover manager's queue (attach, detach, promote, recover).
    pub control: crate::cluster::Control,
    /// Becomes true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Key for mock SCRAM exchanges of unknown users, fixed for the process.
    pub mock_key: [u8; 32],
    pub started: SystemTime,
    /// The watchdog, when `[watchdog]` is configured (set once at start).
    pub watchdog: std::sync::OnceLock<crate::watchdog::Watchdog>,
    /// In a watchdog cluster, who sees which backend failing and the
    /// leader's node table (`None` without `[watchdog]`).
    pub consensus: Option<Arc<crate::cluster::consensus::Consensus>>,
    /// The query cache, when `[query_cache]` is enabled (fixed at start).
    pub query_cache: Option<Arc<crate::cache::QueryCache>>,
    /// The supervised background services' restarts.
    pub services: Arc<crate::supervise::Services>,
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Shared> {
        let cluster = Cluster::new(&config.backends);
        let (health_settings, _) = watch::channel(config.health_check.clone());
        let consensus = config.watchdog.as_ref().map(|wd| {
            Arc::new(crate::cluster::consensus::Consensus::new(
                &wd.node_name,
                wd.quorum(),
                wd.election_timeout,
                cluster.clone(),
            ))
        });
        Arc::new(Shared {
            tls: arc_swap::ArcSwapOption::new(serve_tls(&config)),
            cluster,
            classifier: crate::router::Classifier::default(),
            catalog: crate::router::catalog::Catalog::default(),
            lags: Arc::new(ArcSwap::from_pointee(Default::default())),
            pools: Arc::new(Pools::new()),
            settings: Default::default(),
            cancels: Arc::new(CancelRegistry::default()),
            failed_logins: throttle::FailedLogins::default(),
            metrics: Metrics::default(),
            health_settings,
            control: crate::cluster::Control::default(),
            shutdown,
            mock_key: rand::random(),
            started: SystemTime::now(),
            watchdog: std::sync::OnceLock::new(),
            consensus,
            query_cache: crate::cache::QueryCache::new(&config.query_cache),
            services: Arc::default(),
            config_path,
            config: Arc::new(ArcSwap::from_pointee(Runtime::new(config))),
        })
    }

    /// What the failover manager is handed.
    pub fn manager(&self) -> crate::cluster::ManagerHandles {
        crate::cluster::ManagerHandles {
            cluster: self.cluster.clone(),
            config: self.config.clone(),
            config_path: self.config_path.clone(),
            pools: self.pools.clone(),
            control: self.control.clone(),
            consensus: self.consensus.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// How the query cache reaches the primary.
    pub fn cache_primary(&self) -> crate::cache::Primary<'_> {
        crate::cache::Primary {
            cluster: &self.cluster,
            config: &*self.config,
        }
    }

    /// Tells the failover manager that a connection to `node` broke or
    /// that its server shuts down: it probes the node at once
    /// (`failover_on_backend_error`, `failover_on_backend_shutdown`).
    pub fn report_fault(&self, node: usize, fault: crate::cluster::Fault) {
        let config = self.config.load();
        crate::cluster::report_fault(&self.cluster, &self.control, &config.failover, node, fault);
    }
}

/// The client-side TLS of `config`; an error (files checked at load but
/// gone since) is logged and serves no TLS, which clients that require it
/// refuse.
fn serve_tls(config: &Config) -> Option<Arc<crate::tls::ServeTls>> {
    match crate::tls::ServeTls::load(&config.tls) {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve TLS to clients");
            None
        }
    }
}

/// Pool limits for `user` under `config`.
pub fn pool_limits(config: &Config, user: &str) -> PoolLimits {
    let p = &config.pool;
    PoolLimits {
        max_size: config
            .user(user)
            .and_then(|u| u.pool_max_size)
            .unwrap_or(p.max_size),
        max_waiting: p.max_waiting_clients,
        checkout_timeout: p.checkout_timeout,
        idle_timeout: p.idle_timeout,
        max_lifetime: p.max_lifetime,
        connect_timeout: p.connect_timeout,
    }
}

/// What a reload changed, for the log and the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub pools_updated: usize,
    pub backends_changed: bool,
    /// Keys whose change needs a restart (listen addresses, pool mode for
    /// sessions already running).
    pub needs_restart: Vec<String>,
}

/// Re-reads the configuration file and applies it without dropping clients.
/// An invalid file changes nothing.
pub fn reload(shared: &Shared) -> Result<ReloadOutcome, Vec<ConfigError>> {
    let Some(path) = &shared.config_path else {
        return Err(vec![ConfigError::new(
            "",
            "no configuration file to reload",
        )]);
    };
    let new = Config::load_with(path, &runtime::checks)?;
    apply(shared, new)
}

/// Applies `new`: compiled first (an error changes nothing), then swapped
/// in as one value, then the node table, TLS and pools follow it.
fn apply(shared: &Shared, new: Config) -> Result<ReloadOutcome, Vec<ConfigError>> {
    let old = shared.config.load_full();
    if old.clusters.is_empty() != new.clusters.is_empty() {
        return Err(vec![ConfigError::new(
            "clusters",
            "switching between [[backends]] and [[clusters]] needs a restart",
        )]);
    }
    let new = Arc::new(Runtime::compile(new, Some(&old))?);
    let mut needs_restart = Vec::new();
    if old.clusters != new.clusters {
        // The topology watcher reads its cluster's settings at start.
        needs_restart.push("clusters".to_string());
    }
    if old.server.listen != new.server.listen {
        needs_restart.push("server.listen".to_string());
    }
    if old.server.admin_listen != new.server.admin_listen {
        needs_restart.push("server.admin_listen".to_string());
    }
    if old.server.worker_threads != new.server.worker_threads {
        needs_restart.push("server.worker_threads".to_string());
    }
    if old.server.scheduler != new.server.scheduler {
        needs_restart.push("server.scheduler".to_string());
    }
    if old.query_cache != new.query_cache {
        // The cache and its store are made at start.
        needs_restart.push("query_cache".to_string());
    }
    if old.watchdog != new.watchdog || old.escalation != new.escalation {
        // The watchdog reads its settings at start (docs/watchdog.md).
        needs_restart.push("watchdog / escalation".to_string());
    }
    if old.pool.mode != new.pool.mode {
        // New sessions use the new mode; running ones keep theirs.
        needs_restart.push("pool.mode (running sessions keep the old mode)".to_string());
    }
    shared.config.store(new.clone());
    // Function overrides may have changed: the catalog's memos go.
    shared.catalog.invalidate();
    let backends_changed = old.backends != new.backends;
    if backends_changed {
        shared.cluster.reconfigure(&new.backends);
    } else {
        // Certificate files may have been replaced under the same names.
        shared.cluster.reload_tls();
    }
    // Clients connected keep the TLS session they have; new ones get the
    // certificate as it is on disk now (load checked it already).
    shared.tls.store(serve_tls(&new));
    shared
        .health_settings
        .send_replace(new.health_check.clone());
    let snapshot = shared.cluster.snapshot();
    let mut pools_updated = 0;
    shared.pools.for_each(|p| {
        p.set_limits(pool_limits(&new, &p.key.user));
        if let Some(n) = snapshot.node(p.key.node) {
            p.set_target(crate::pool::Endpoint {
                host: n.host.clone(),
                port: n.port,
                tls: shared.cluster.tls(n.id),
                login: crate::credentials::Login::for_user(
                    new.user(&p.key.user),
                    &shared
                        .cluster
                        .backend(n.id)
                        .map(|b| b.tls(&new.backend_defaults))
                        .unwrap_or_default(),
                ),
                credentials: shared.cluster.credentials().clone(),
            });
        }
        pools_updated += 1;
    });
    shared.metrics.reloads.fetch_add(1, Ordering::Relaxed);
    Ok(ReloadOutcome {
        pools_updated,
        backends_changed,
        needs_restart,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::*;

    fn config(load_balancing: bool, pool_size: usize) -> Config {
        Config::load_str(&format!(
            "[pool]\nmax_size = {pool_size}\n[load_balancing]\nenabled = {load_balancing}\n\
             [[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n\
             [[users]]\nname = \"app\"\npassword = \"app\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_reload_of_rules_and_pool_sizes_is_seen_whole_or_not_at_all() {
        let (_tx, shutdown) = watch::channel(false);
        let shared = Shared::new(config(true, 5), None, shutdown);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (shared, stop, reads) = (shared.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rt = shared.config.load();
                    let seen = (rt.rules.cfg.enabled, rt.pool.max_size);
                    assert!(
                        seen == (true, 5) || seen == (false, 7),
                        "half a reload: routing enabled = {}, pool size {}",
                        seen.0,
                        seen.1
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        for i in 0..2_000 {
            let next = if i % 2 == 0 {
                config(false, 7)
            } else {
                config(true, 5)
            };
            apply(&shared, next).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn hba_rules_that_do_not_compile_change_nothing() {
        let (_tx, shutdown) = watch::channel(false);
        let shared = Shared::new(config(true, 5), None, shutdown);
        let mut bad = config(false, 7);
        bad.hba = vec![toml::from_str("type = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"not an address\"\nmethod = \"trust\"").unwrap()];
        assert!(apply(&shared, bad).is_err());
        let rt = shared.config.load();
        assert_eq!((rt.rules.cfg.enabled, rt.pool.max_size), (true, 5));
    }
}
