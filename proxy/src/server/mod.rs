//! Accepting clients: the listener, startup, authentication, and graceful
//! shutdown. Each client runs in its own task; nothing here blocks another
//! client.

mod authenticate;
pub mod startup;
pub mod workers;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};

use crate::app::Shared;

/// Accepts clients until shutdown, then waits (bounded) for them to finish.
/// Finished clients' tasks are collected when the next client is accepted
/// and once a second, not as each ends: waking the accept loop for every
/// client that leaves costs a connection-heavy workload more than the
/// collecting does.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // One wait for shutdown for the loop's life, not one per turn.
    let shutdown = shutdown.changed();
    tokio::pin!(shutdown);
    let mut collect = tokio::time::interval(Duration::from_secs(1));
    collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                // The task is `handle`'s future itself: an `async` block
                // around it would keep the stream, the address and the
                // shared state for the client's whole life.
                Ok((stream, peer)) => {
                    clients.spawn(startup::handle(stream, peer, shared.clone()));
                    while clients.try_join_next().is_some() {}
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = collect.tick() => while clients.try_join_next().is_some() {},
        }
    }
    drop(listener);
    // Idle sessions end now; busy ones once their work is done.
    shared.cancels.close_all();
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
