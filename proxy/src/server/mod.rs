//! Accepting clients: the listener, startup, authentication, and graceful
//! shutdown. Each client runs in its own task; nothing here blocks another
//! client.

mod authenticate;
pub mod startup;
pub mod workers;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::Shared;

/// Accepts clients until shutdown, then waits (bounded) for them to finish.
/// Each client is a task of its own, tracked only by a count: no list of
/// tasks is kept and nothing is collected as they end, so a client that
/// leaves wakes nobody and a connection costs the accept loop one spawn.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // One wait for shutdown for the loop's life, not one per turn.
    let shutdown = shutdown.changed();
    tokio::pin!(shutdown);
    let clients = TaskTracker::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                // The task is `handle`'s future itself: an `async` block
                // around it would keep the stream, the address and the
                // shared state for the client's whole life.
                Ok((stream, peer)) => {
                    // Boxed first (the future made in its box, as
                    // `Session::run` makes its turns): spawning then moves
                    // a pointer, where the client's whole future (~860
                    // bytes) was copied into the task and again as its
                    // stage changed.
                    let client = Box::write(Box::new_uninit(), startup::handle(stream, peer, shared.clone()));
                    clients.spawn(Box::into_pin(client));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    clients.close();
    // Idle sessions end now; busy ones once their work is done.
    shared.cancels.close_all();
    let grace = shared.config.load().server.shutdown_timeout;
    tracing::info!(
        clients = clients.len(),
        ?grace,
        "shutting down: waiting for clients"
    );
    // Sessions still busy after the grace period end with the worker's
    // runtime, which drops every task left on it.
    let _ = tokio::time::timeout(grace, clients.wait()).await;
}
