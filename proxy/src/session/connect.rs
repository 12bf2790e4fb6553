//! The session's server connections: its pool on each node, the primary
//! (waited for during a failover), checkout and parking, and faults
//! reported to the failover manager.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::{Session, lease_node, state};
use crate::{
    app::Shared,
    backend::BackendError,
    config::PoolMode,
    pool::{Endpoint, PoolError, PoolKeyRef, PoolLimits},
    protocol::{
        messages::{self, Severity},
        sqlstate,
    },
};

impl Session {
    /// This session's pool on node `node`: (user, database) pools live as
    /// long as tidepool, so each is looked up once per session.
    pub(super) fn pool_on(&mut self, node: usize) -> Option<Arc<crate::pool::Pool>> {
        if let Some(Some(p)) = self.pools.get(node) {
            return Some(p.clone());
        }
        let snapshot = self.shared.cluster.snapshot();
        let n = snapshot.node(node)?;
        let key = PoolKeyRef {
            node: n.id,
            user: &self.user,
            database: &self.database,
        };
        let shared = &self.shared;
        let pool = shared
            .pools
            .get_or_create(key, || pool_setup(shared, key, (&n.host, n.port)));
        if self.pools.len() <= node {
            self.pools.resize(node + 1, None);
        }
        self.pools[node] = Some(pool.clone());
        Some(pool)
    }

    /// The primary's id, waiting (bounded by `pool.primary_wait_timeout`)
    /// while there is none, as during a failover.
    pub(super) async fn primary(&self) -> Result<usize, (&'static str, String)> {
        match self.shared.cluster.primary_id() {
            Some(id) => Ok(id),
            // Boxed: rare, and a timer is large for every busy session's
            // future to hold room for.
            None => Box::pin(self.wait_for_primary()).await,
        }
    }

    async fn wait_for_primary(&self) -> Result<usize, (&'static str, String)> {
        let wait = self.shared.config.load().pool.primary_wait_timeout;
        let mut changes = self.shared.cluster.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(id) = self.shared.cluster.primary_id() {
                return Ok(id);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err((
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!(
                            "no primary node is available (waited {wait:?}, pool.primary_wait_timeout)"
                        ),
                    ));
                }
            }
        }
    }

    /// The pool of the primary, without waiting.
    pub(super) fn write_pool(&mut self) -> Result<Arc<crate::pool::Pool>, (&'static str, String)> {
        self.shared
            .cluster
            .primary_id()
            .and_then(|id| self.pool_on(id))
            .ok_or_else(|| {
                (
                    sqlstate::CANNOT_CONNECT_NOW,
                    "no primary node is available".to_string(),
                )
            })
    }

    /// Attaches the session to the primary, unless it is attached.
    /// Errors carry an SQLSTATE and a message.
    pub(super) async fn acquire(&mut self) -> Result<(), (&'static str, String)> {
        if self.lease.is_some() || self.attach_primary_idle() {
            return Ok(());
        }
        let primary = self.primary().await?;
        self.acquire_on(primary).await
    }

    /// As [`Session::attach_idle`], on the primary.
    pub(super) fn attach_primary_idle(&mut self) -> bool {
        self.shared
            .cluster
            .primary_id()
            .is_some_and(|p| self.attach_idle(p))
    }

    /// Attaches the session at once to an idle connection of `node`'s pool
    /// whose settings are the session's (`Pool::checkout_idle`): the
    /// usual checkout, with no future. False, and nothing changed, when
    /// there is none or the session has a connection or parked ones
    /// ([`Session::acquire_on`] then does the rest). Nothing awaits
    /// between choosing the connection and attaching it, so a cancel
    /// request is either made before (kept by `begin_wait`, reported by
    /// `set`) or finds the connection attached.
    pub(super) fn attach_idle(&mut self, node: usize) -> bool {
        if self.lease.is_some() || !self.parked.is_empty() {
            return false;
        }
        let Some(pool) = self.pool_on(node) else {
            return false;
        };
        let settings = &self.settings;
        let Some(mut lease) = pool.checkout_idle(|c| c.settings_match(settings)) else {
            return false;
        };
        self.cancel_after_send |= self.cancel.set(lease.conn().cancel.clone());
        self.lease = Some(lease);
        true
    }

    /// Makes `node` the session's current backend: a parked connection of
    /// the session, or one from the node's pool.
    pub(super) async fn acquire_on(&mut self, node: usize) -> Result<(), (&'static str, String)> {
        if let Some(l) = &self.lease
            && lease_node(l) == node
        {
            return Ok(());
        }
        if let Some(current) = self.lease.take() {
            if self.mode == PoolMode::Session {
                self.parked.push(current);
            } else {
                current.release();
            }
        }
        // A cancel request from here until a connection is attached is
        // kept and forwarded once the work is sent (`flush_backend`).
        self.cancel.wait();
        if let Some(i) = self.parked.iter().position(|l| lease_node(l) == node) {
            let mut lease = self.parked.swap_remove(i);
            let conn = lease.conn();
            if !conn.settings_match(&self.settings) {
                conn.apply_settings(&self.settings)
                    .await
                    .map_err(|e| (sqlstate::CONNECTION_FAILURE, e.to_string()))?;
            }
            self.cancel_after_send |= self.cancel.set(conn.cancel.clone());
            self.lease = Some(lease);
            return Ok(());
        }
        let Some(pool) = self.pool_on(node) else {
            return Err((
                sqlstate::CANNOT_CONNECT_NOW,
                format!("node {node} is not configured"),
            ));
        };
        let checkout = pool.checkout(&[]).await;
        if let Err(PoolError::Backend(e)) = &checkout {
            self.report_fault(node, e);
        }
        let mut lease = checkout.map_err(|e| match &e {
            PoolError::QueueFull(_) | PoolError::Timeout(..) => {
                (sqlstate::TOO_MANY_CONNECTIONS, e.to_string())
            }
            PoolError::Backend(BackendError::Refused(f)) => (code_of(&f.code), f.message.clone()),
            PoolError::Backend(_) => (sqlstate::CANNOT_CONNECT_NOW, e.to_string()),
        })?;
        let conn = lease.conn();
        if !conn.settings_match(&self.settings)
            && let Err(e) = conn.apply_settings(&self.settings).await
        {
            self.report_fault(node, &e);
            return Err(match e {
                BackendError::Server(f) => (code_of(&f.code), f.message),
                other => (sqlstate::CONNECTION_FAILURE, other.to_string()),
            });
        }
        self.cancel_after_send |= self.cancel.set(conn.cancel.clone());
        self.lease = Some(lease);
        Ok(())
    }

    /// Tells the failover manager that the connection to `node` broke or
    /// that the server shuts down (`failover_on_backend_error`,
    /// `failover_on_backend_shutdown`): it probes the node at once.
    pub(super) fn report_fault(&self, node: usize, e: &BackendError) {
        if let Some(fault) = fault_of(e) {
            self.shared.report_fault(node, fault);
        }
    }

    pub(super) fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.cancel.clear();
            lease.release();
        }
    }

    /// Makes sure a backend is attached before `f` is forwarded; on failure
    /// answers the client as PostgreSQL would and returns false. Callers
    /// look at `lease` first: a message with a connection already attached
    /// (every message of a unit but its first) makes no future of this.
    pub(super) async fn ensure_backend(&mut self, simple: bool) -> bool {
        if self.lease.is_some() {
            return true;
        }
        if self.tracker.skipping() && !simple {
            // The batch already failed without a backend: the rest of it,
            // up to Sync, is ignored as the server would ignore it.
            return false;
        }
        match self.acquire().await {
            Ok(()) => true,
            Err((code, msg)) => {
                // Nothing of the client's runs: a cancel request from now
                // on is ignored, as PostgreSQL ignores one for an idle
                // session, not kept for its next work (`acquire_on` left
                // the slot waiting).
                self.cancel.clear();
                self.shared
                    .metrics
                    .client_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.error(Severity::Error, code, &msg, None);
                if simple {
                    messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
                } else {
                    self.tracker.fail_batch();
                }
                false
            }
        }
    }

    /// Closes tidepool's idle connections to a database the statement
    /// needs free of other sessions (DROP DATABASE and the like), on every
    /// node, waiting briefly for sessions that have just left to hand
    /// theirs back, so that only clients still connected can stand in its
    /// way, as on a direct connection.
    pub(super) async fn free_database(&self, e: &state::Effects) {
        if let Some(db) = &e.frees_database {
            // Boxed: rare, and its timer is large (see `primary`).
            Box::pin(self.free_database_named(db)).await
        }
    }

    async fn free_database_named(&self, db: &str) {
        self.shared.catalog.forget_database(db);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let mut in_use = 0;
            self.shared.pools.for_each(|p| {
                if p.key.database == db {
                    p.drain_idle();
                    in_use += p.stats().total;
                }
            });
            if in_use == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a backend error says about the node: its server shuts down
/// (57P01), or the connection broke. Errors of one statement or login say
/// nothing about the node.
fn fault_of(e: &BackendError) -> Option<crate::cluster::Fault> {
    use crate::cluster::Fault;
    match e {
        BackendError::Server(f) | BackendError::Refused(f)
            if f.code == sqlstate::ADMIN_SHUTDOWN =>
        {
            Some(Fault::Shutdown(f.message.clone()))
        }
        BackendError::Connect { .. }
        | BackendError::Timeout(_)
        | BackendError::NoAnswer(_)
        | BackendError::Io(_)
        | BackendError::Closed => Some(Fault::Error(e.to_string())),
        _ => None,
    }
}

/// SQLSTATE from a backend error, or a generic one.
fn code_of(code: &str) -> &'static str {
    match code {
        "28P01" => sqlstate::INVALID_PASSWORD,
        "28000" => sqlstate::INVALID_AUTHORIZATION,
        "3D000" => "3D000",
        "42501" => "42501",
        "42704" => "42704",
        "22023" => "22023",
        "53300" => sqlstate::TOO_MANY_CONNECTIONS,
        "57P03" => sqlstate::CANNOT_CONNECT_NOW,
        _ => sqlstate::CONNECTION_FAILURE,
    }
}

/// Limits and target of a new pool, from the current configuration.
fn pool_setup(
    shared: &Shared,
    key: PoolKeyRef<'_>,
    (host, port): (&str, u16),
) -> (PoolLimits, Endpoint) {
    let config = shared.config.load();
    let user = config.user(key.user);
    let limits = crate::app::pool_limits(&config, key.user);
    // The node's own settings: configured, or a cluster instance's.
    let node = shared
        .cluster
        .backend(key.node)
        .map(|b| b.tls(&config.backend_defaults))
        .unwrap_or_default();
    let target = Endpoint {
        host: host.to_string(),
        port,
        tls: shared.cluster.tls(key.node),
        login: crate::credentials::Login::for_user(user, &node),
        credentials: shared.cluster.credentials().clone(),
    };
    (limits, target)
}
