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
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // The task is `handle`'s future itself: an `async` block
                // around it would keep the stream, the address and the
                // shared state for the client's whole life.
                Ok((stream, peer)) => {
                    clients.spawn(startup::handle(stream, peer, shared.clone()));
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
