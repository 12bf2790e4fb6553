//! Accepting clients: the listener, startup, authentication, and graceful
//! shutdown. Each client runs in its own task; nothing here blocks another
//! client.

mod cancel;
pub mod startup;
pub mod throttle;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

pub use cancel::{CancelRegistry, CancelSlot, Registration};

use crate::{
    admin::metrics::Metrics,
    auth::{Hba, ScramVerifier, Secret},
    cluster::Cluster,
    config::{Config, ConfigError, HealthCheckConfig},
    pool::{PoolLimits, Pools},
};

/// What every task shares. Owned by `server`; handed to the admin surface.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub config_path: Option<PathBuf>,
    pub hba: ArcSwap<Hba>,
    /// What tidepool serves to clients over TLS (`None`: no TLS).
    pub tls: arc_swap::ArcSwapOption<crate::tls::ServeTls>,
    /// `[[cert_map]]`, for the `cert` method.
    pub cert_map: ArcSwap<crate::auth::CertMap>,
    /// Each configured user's secret, with its SCRAM verifier derived once.
    pub secrets: ArcSwap<HashMap<String, Arc<UserSecret>>>,
    pub cluster: Arc<Cluster>,
    /// Compiled `[load_balancing]` rules.
    pub rules: ArcSwap<crate::router::Rules>,
    pub classifier: crate::router::Classifier,
    pub catalog: crate::router::catalog::Catalog,
    /// Standbys' replication delay, measured by `router::lag`.
    pub lags: Arc<crate::router::lag::Lags>,
    pub pools: Pools,
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
        let hba = Hba::from_config(&config.hba).unwrap_or_else(|_| Hba::new(vec![]));
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
            hba: ArcSwap::from_pointee(hba),
            tls: arc_swap::ArcSwapOption::new(serve_tls(&config)),
            cert_map: ArcSwap::from_pointee(crate::auth::CertMap::new(&config.cert_map)),
            secrets: ArcSwap::from_pointee(user_secrets(&config)),
            cluster,
            rules: ArcSwap::from_pointee(crate::router::Rules::new(&config.load_balancing)),
            classifier: crate::router::Classifier::default(),
            catalog: crate::router::catalog::Catalog::default(),
            lags: Arc::new(ArcSwap::from_pointee(Default::default())),
            pools: Pools::new(),
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
            config: ArcSwap::from_pointee(config),
        })
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

/// A user's stored secret and the SCRAM verifier that serves it.
pub struct UserSecret {
    pub secret: Secret,
    /// Derived once per load: PBKDF2 costs milliseconds, too much to repeat
    /// for every login. `None` when the secret cannot serve SCRAM.
    pub scram: Option<ScramVerifier>,
}

fn user_secrets(config: &Config) -> HashMap<String, Arc<UserSecret>> {
    config
        .users
        .iter()
        .map(|u| {
            let secret = Secret::parse(&u.password);
            let scram = secret.scram_verifier().ok();
            (u.name.clone(), Arc::new(UserSecret { secret, scram }))
        })
        .collect()
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
    let new = Config::load(path)?;
    Ok(apply(shared, new))
}

fn apply(shared: &Shared, new: Config) -> ReloadOutcome {
    let old = shared.config.load_full();
    let mut needs_restart = Vec::new();
    if old.server.listen != new.server.listen {
        needs_restart.push("server.listen".to_string());
    }
    if old.server.admin_listen != new.server.admin_listen {
        needs_restart.push("server.admin_listen".to_string());
    }
    if old.server.worker_threads != new.server.worker_threads {
        needs_restart.push("server.worker_threads".to_string());
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
        .cert_map
        .store(Arc::new(crate::auth::CertMap::new(&new.cert_map)));
    if let Ok(hba) = Hba::from_config(&new.hba) {
        shared.hba.store(Arc::new(hba));
    }
    if old.load_balancing != new.load_balancing {
        shared
            .rules
            .store(Arc::new(crate::router::Rules::new(&new.load_balancing)));
    }
    if old.users != new.users {
        shared.secrets.store(Arc::new(user_secrets(&new)));
    }
    shared
        .health_settings
        .send_replace(new.health_check.clone());
    let snapshot = shared.cluster.snapshot();
    let mut pools_updated = 0;
    shared.pools.for_each(|p| {
        p.set_limits(pool_limits(&new, &p.key.user));
        if let Some(n) = snapshot.node(p.key.node) {
            p.set_target(crate::pool::Target {
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
    shared.config.store(Arc::new(new));
    shared.metrics.reloads.fetch_add(1, Ordering::Relaxed);
    ReloadOutcome {
        pools_updated,
        backends_changed,
        needs_restart,
    }
}

/// Accepts clients until shutdown, then waits (bounded) for them to finish.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    clients.spawn(async move { startup::handle(stream, peer, shared).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let grace = shared.config.load().server.shutdown_timeout;
    tracing::info!(
        clients = clients.len(),
        ?grace,
        "shutting down: waiting for clients"
    );
    let _ = tokio::time::timeout(grace, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    clients.abort_all();
}

/// Address a listener for `addr` binds, for logs.
pub fn describe(addr: SocketAddr) -> String {
    addr.to_string()
}
