//! The background services of a running tidepool, started once the shared
//! state exists: the failover manager, health checks, the topology watcher
//! or the replication-lag sampler, the idle-connection reaper, the query
//! cache's WAL follower and the watchdog. Each is handed the parts of
//! [`Shared`] it uses. They run supervised (`crate::supervise`): one that
//! panics or returns is logged by name, counted and started again.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use anyhow::Context;

use super::Shared;
use crate::cluster;

/// The services running, by name, to be awaited at shutdown.
pub struct Running {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Running {
    /// Waits, once shutdown is signalled, for every service to finish —
    /// the watchdog's leader handing over first — up to `grace`; what is
    /// still running then is named in the log and left to the process's
    /// exit.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for (name, task) in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(service = name, ?grace, "service still running at shutdown");
            }
        }
    }
}

/// Starts every background service.
pub async fn start(shared: &Arc<Shared>) -> anyhow::Result<Running> {
    let shutdown = shared.shutdown.clone();
    let mut tasks = Vec::new();
    // Background services run supervised: one that panics or returns is
    // logged, counted and started again (crate::supervise). The
    // manager restores the persisted state (fenced nodes stay down)
    // before the first health check can bring a node up.
    use crate::supervise::supervise;
    let watch = || (shared.services.clone(), shutdown.clone());
    {
        let s = shared.clone();
        let (services, stop) = watch();
        let task = supervise("failover manager", services, stop, move || {
            cluster::run_manager(s.manager())
        });
        tasks.push(("failover manager", task));
    }
    {
        let (s, shutdown) = (shared.clone(), shutdown.clone());
        let (services, stop) = watch();
        let task = supervise("health checks", services, stop, move || {
            cluster::run_checks(
                s.cluster.clone(),
                s.health_settings.subscribe(),
                shutdown.clone(),
                s.control.sender(),
            )
        });
        tasks.push(("health checks", task));
    }
    for c in shared.config.load().clusters.iter() {
        let c = c.clone();
        // A managed cluster's instances and their lag come from its
        // topology; the streaming-replication delay query is not used.
        let (s, shutdown) = (shared.clone(), shutdown.clone());
        let (services, stop) = watch();
        let task = supervise("topology watcher", services, stop, move || {
            cluster::discovery::run(
                s.cluster.clone(),
                c.clone(),
                s.health_settings.subscribe(),
                s.lags.clone(),
                shutdown.clone(),
            )
        });
        tasks.push(("topology watcher", task));
    }
    if shared.config.load().clusters.is_empty() {
        let (s, shutdown) = (shared.clone(), shutdown.clone());
        let (services, stop) = watch();
        let task = supervise("replication lag sampler", services, stop, move || {
            let config = s.clone();
            crate::router::lag::run(
                s.cluster.clone(),
                move || config.config.load_full(),
                s.lags.clone(),
                shutdown.clone(),
            )
        });
        tasks.push(("replication lag sampler", task));
    }
    {
        let s = shared.clone();
        let (services, stop) = watch();
        let task = supervise("idle connection reaper", services, stop, move || {
            reap_idle(s.clone(), s.shutdown.clone())
        });
        tasks.push(("idle connection reaper", task));
    }
    // Not in `tasks`: it runs through shutdown (see `check_waits`).
    tokio::spawn(check_waits(shared.clone()));
    if let Some(cache) = shared.query_cache.clone()
        && cache.invalidation == crate::config::Invalidation::Logical
    {
        let task = tokio::spawn(crate::cache::logical::run(
            shared.cluster.clone(),
            shared.config.clone(),
            cache,
            shutdown.clone(),
        ));
        tasks.push(("query cache WAL follower", task));
    }
    // Last in the list: awaited last at shutdown, after the others stopped.
    if let Some(task) = start_watchdog(shared, shutdown).await? {
        tasks.push(("watchdog", task));
    }
    Ok(Running { tasks })
}

/// Starts the watchdog when `[watchdog]` is configured. Its health signal
/// is "this node sees a primary".
async fn start_watchdog(
    shared: &Arc<Shared>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let cfg = shared.config.load_full();
    let Some(wd) = &cfg.watchdog else {
        return Ok(None);
    };
    let s = shared.clone();
    let healthy = Box::new(move || s.cluster.snapshot().primary().is_some());
    let (handle, task) = crate::watchdog::start(
        wd,
        cfg.escalation.as_ref(),
        healthy,
        shared.consensus.clone(),
        shutdown,
    )
    .await
    .context("cannot start the watchdog")?;
    let _ = shared.watchdog.set(handle);
    Ok(Some(task))
}

/// Closes idle backend connections past their idle timeout or lifetime,
/// until shutdown.
async fn reap_idle(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.pools.for_each(|p| {
                p.reap();
            }),
            _ = shutdown.changed() => return,
        }
    }
}

/// Turns away checkouts that waited past `checkout_timeout` (see
/// `Pool::expire_waiters`), every `pool::WAIT_CHECK`, for as long as the
/// process runs: busy sessions still finish their work during shutdown,
/// and a checkout they wait for must still end on time. Not a supervised
/// service, which stops at shutdown; it cannot fail (a lock and a list
/// filtered under it), and ends with the runtime.
async fn check_waits(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(crate::pool::WAIT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        shared.pools.for_each(|p| p.expire_waiters(now));
    }
}
