//! The background services (failover manager, health checks, lag
//! sampler, topology watcher, reaper) run supervised: one that panics or
//! returns while tidepool is not shutting down is logged with its name,
//! counted, shown by `/readyz` and `GET /metrics`, and started again in
//! place after a backoff (100 ms, doubling to 5 s; back to 100 ms once it
//! has run a minute). Restarting in place is safe for each of them: they
//! keep no state of their own that the node table, the state file or the
//! manager's queue do not hold (the manager reads the persisted fences
//! again when it starts; its queue outlives it).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};

/// What supervision saw of each service.
#[derive(Debug, Default)]
pub struct Services {
    seen: Mutex<BTreeMap<&'static str, ServiceState>>,
}

/// One service's restarts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServiceState {
    pub restarts: u64,
    /// Why it stopped last (the panic's message, or "returned").
    pub last_failure: Option<String>,
    #[serde(with = "humantime_serde")]
    pub last_failure_at: Option<SystemTime>,
}

impl Services {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ServiceState>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn started(&self, name: &'static str) {
        self.lock().entry(name).or_default();
    }

    fn failed(&self, name: &'static str, why: String) {
        let mut seen = self.lock();
        let s = seen.entry(name).or_default();
        s.restarts += 1;
        s.last_failure = Some(why);
        s.last_failure_at = Some(SystemTime::now());
    }

    /// Every supervised service, by name.
    pub fn states(&self) -> BTreeMap<&'static str, ServiceState> {
        self.lock().clone()
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the service `make` builds, building and running it again whenever
/// it panics or returns before `shutdown`. The first one is built at once,
/// before this returns (the manager restores the persisted fences there,
/// before any health check can bring a fenced node up).
pub fn supervise<F, Fut>(
    name: &'static str,
    services: std::sync::Arc<Services>,
    mut shutdown: watch::Receiver<bool>,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut first = Some(make());
    services.started(name);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let service = first.take().unwrap_or_else(&mut make);
            let mut run = tokio::spawn(service);
            let outcome = tokio::select! {
                r = &mut run => r,
                _ = shutdown.changed() => {
                    // The service sees the same signal; give it a moment.
                    match tokio::time::timeout(Duration::from_secs(5), &mut run).await {
                        Ok(_) => return,
                        Err(_) => { run.abort(); return; }
                    }
                }
            };
            if *shutdown.borrow() {
                return;
            }
            let why = match outcome {
                Ok(()) => "returned".to_string(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_string());
                    format!("panicked: {msg}")
                }
                Err(_) => return,
            };
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(service = name, %why, restart_in_ms = backoff.as_millis() as u64, "service stopped; restarting it");
            services.failed(name, why);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tracing::info!(service = name, "service started again");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_service_that_panics_runs_again_and_is_counted() {
        let services = Arc::new(Services::default());
        let (stop, shutdown) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let counted = runs.clone();
        let handle = supervise("failover manager", services.clone(), shutdown, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                let _ = tx.send(n);
                if n < 2 {
                    panic!("node id {n} out of range");
                }
                std::future::pending::<()>().await
            }
        });
        for want in 0..3 {
            assert_eq!(rx.recv().await, Some(want));
        }
        let s = &services.states()["failover manager"];
        assert_eq!(s.restarts, 2);
        assert!(
            s.last_failure
                .as_deref()
                .is_some_and(|w| w.contains("node id 1 out of range")),
            "{s:?}"
        );
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not started after shutdown");
    }

    #[tokio::test]
    async fn a_service_that_ends_at_shutdown_is_not_restarted() {
        let services = Arc::new(Services::default());
        let (stop, shutdown) = watch::channel(false);
        let mut inner = shutdown.clone();
        let handle = supervise("reaper", services.clone(), shutdown, move || {
            let mut s = inner.clone();
            inner = s.clone();
            async move {
                let _ = s.changed().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(services.states()["reaper"].restarts, 0);
    }
}
