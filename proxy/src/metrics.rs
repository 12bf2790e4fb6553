//! Counters bumped on the hot path (plain atomics, no locks); rendered as
//! Prometheus text by the HTTP API together with pool and node figures.

use std::sync::atomic::{AtomicI64, AtomicU64};

#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_total: AtomicU64,
    pub clients_active: AtomicI64,
    /// Client sockets that have not finished startup and authentication.
    pub clients_starting: AtomicI64,
    /// Clients logged in (what `max_client_connections` limits).
    pub sessions_active: AtomicI64,
    pub queries: AtomicU64,
    pub client_errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub cancel_requests: AtomicU64,
    /// Sessions pinned to one backend connection in transaction mode.
    pub pinned: AtomicU64,
    /// Units a standby refused during recovery (25006) that the primary
    /// ran instead.
    pub standby_refusals: AtomicU64,
    pub reloads: AtomicU64,
}
