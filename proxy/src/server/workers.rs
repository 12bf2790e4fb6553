//! Client sessions on worker threads, one single-threaded runtime each
//! (`server.scheduler = "per_core"`).
//!
//! Every worker accepts from the same listening socket. A client's
//! session, the server connections it opens and its timers then live on
//! that worker: a transaction wakes nothing on another thread, as in
//! PgBouncer's single event loop, but on every core. Pools keep an idle
//! connection on the worker that opened it and lend it to another worker
//! only when that worker has none and the pool is full
//! ([`crate::pool::Pool::checkout`]). The control plane (failover manager,
//! health checks, watchdog, admin API) runs on a runtime of its own.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::app::Shared;

/// Serves `listener` on `threads` workers until shutdown; returns when
/// every worker has finished with its clients (`server::serve`).
pub async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    threads: usize,
) -> anyhow::Result<()> {
    let threads = threads.max(1);
    crate::worker::set_count(threads);
    listener
        .set_nonblocking(true)
        .context("cannot make the client listener non-blocking")?;
    // A worker keeps driving its runtime until all have finished: a
    // connection it opened may still be lent to another worker, and its
    // readiness comes through this worker's reactor.
    let finished = Arc::new(watch::channel(0usize).0);
    let mut done = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = listener
            .try_clone()
            .context("cannot share the client listener with a worker")?;
        let (shared, finished) = (shared.clone(), finished.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("tidepool-worker-{i}"))
            .spawn(move || {
                crate::worker::enter(i);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                let mut all = finished.subscribe();
                runtime.block_on(async move {
                    tokio::spawn(keep_a_timer_armed());
                    {
                        // Counted also if serving panics.
                        let _counted = Finished(finished);
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => super::serve(l, shared).await,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "worker cannot accept")
                            }
                        }
                    }
                    let _ = all.wait_for(|n| *n >= threads).await;
                });
                drop(tx);
            })
            .context("cannot start a worker thread")?;
        done.push(rx);
    }
    drop(listener);
    for rx in done {
        // Closed when the worker's thread is done (or has panicked).
        let _ = rx.await;
    }
    Ok(())
}

/// Counts a worker done with its clients when dropped.
struct Finished(Arc<watch::Sender<usize>>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// How often a worker's clock tick fires (see `keep_a_timer_armed`).
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps a timer due within `TICK` on the worker's runtime. A timer armed
/// earlier than every other one makes tokio wake the runtime's driver (a
/// write to its eventfd and one more `epoll_wait`), even from the
/// runtime's own thread; every client arms one for its startup and its
/// authentication. With this tick always sooner than those timeouts, a new
/// client's timers never are the earliest, and accepting a client costs
/// no wake-up: half a `write` and an `epoll_wait` less per connection.
async fn keep_a_timer_armed() {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
