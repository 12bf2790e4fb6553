//! Backend connection pools, one per (node, user, database).
//!
//! A pool owns at most `max_size` connections, idle or lent out. A client
//! that finds none idle and none to open waits in a bounded queue; a
//! returned connection is handed straight to the first waiter. Pools never
//! choose a node: the router does, from a snapshot of the node table.
//!
//! Idle connections are kept by the worker thread that opened them
//! (`server::workers`): a checkout takes one of its own worker's, opens a
//! new one when the pool has room, and only then borrows another worker's.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::backend::{BackendError, ConnectParams, ServerConn, ServerParameters};

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub node: usize,
    pub user: String,
    pub database: String,
}

/// Limits of one pool, changeable at reload.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    pub max_size: usize,
    pub max_waiting: usize,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub connect_timeout: Duration,
}

/// Where a pool connects, and with which password.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// How to log in: a password, a secret, or an RDS IAM token.
    pub login: crate::credentials::Login,
    pub credentials: Arc<crate::credentials::Credentials>,
    pub tls: Arc<crate::tls::BackendTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("too many clients are waiting for a connection to {0} (pool.max_waiting_clients)")]
    QueueFull(String),
    #[error("no backend connection to {0} became free within {1:?} (pool.checkout_timeout)")]
    Timeout(String, Duration),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A checkout waiting in line, until its `deadline` (`checkout_timeout`
/// after it came): past it, the pool's wait check (`expire_waiters`)
/// drops `tx`, which ends the wait as timed out. No timer per waiter: a
/// busy pool's clients all wait, and arming and cancelling a timer for
/// each cost more than the rest of the wait.
struct Queued {
    tx: oneshot::Sender<Handoff>,
    /// `None`: a timeout too large to add to an instant, never reached.
    deadline: Option<Instant>,
}

/// How often waiting checkouts are checked against their deadline.
pub const WAIT_CHECK: Duration = Duration::from_millis(100);

enum Handoff {
    /// An idle connection, ready to use.
    Conn(Box<ServerConn>),
    /// Permission to open a new connection.
    Slot,
}

struct Inner {
    /// Idle connections by the worker that opened them. Boxed, here and in
    /// a lease: a checkout or a check-in moves a pointer, and a session
    /// without a connection keeps no room for one.
    idle: Vec<VecDeque<Box<ServerConn>>>,
    /// Idle connections on every worker.
    idle_count: usize,
    /// Connections that exist: idle, lent out, or being opened.
    total: usize,
    waiters: VecDeque<Queued>,
    limits: PoolLimits,
}

impl Inner {
    fn new(limits: PoolLimits) -> Inner {
        Inner {
            idle: (0..crate::worker::count())
                .map(|_| VecDeque::new())
                .collect(),
            idle_count: 0,
            total: 0,
            waiters: VecDeque::new(),
            limits,
        }
    }

    /// The most recently used idle connection of `worker`, or with
    /// `borrow`, of any worker.
    fn pop_idle(&mut self, worker: usize, borrow: bool) -> Option<Box<ServerConn>> {
        let own = worker.min(self.idle.len() - 1);
        let c = match self.idle[own].pop_back() {
            Some(c) => Some(c),
            None if borrow => self.idle.iter_mut().find_map(|q| q.pop_back()),
            None => None,
        };
        if c.is_some() {
            self.idle_count -= 1;
        }
        c
    }

    fn push_idle(&mut self, c: Box<ServerConn>) {
        let home = c.worker.min(self.idle.len() - 1);
        self.idle[home].push_back(c);
        self.idle_count += 1;
    }

    /// Keeps the idle connections `keep` says to; returns how many went.
    fn retain_idle(&mut self, mut keep: impl FnMut(&ServerConn) -> bool) -> usize {
        let before = self.idle_count;
        for q in &mut self.idle {
            q.retain(|c| keep(c));
        }
        self.idle_count = self.idle.iter().map(VecDeque::len).sum();
        before - self.idle_count
    }

    /// Closes the longest-idle connection of any worker.
    fn close_oldest_idle(&mut self) -> bool {
        let oldest = self
            .idle
            .iter_mut()
            .filter(|q| !q.is_empty())
            .min_by_key(|q| q.front().map(|c| c.last_used));
        match oldest.and_then(|q| q.pop_front()) {
            Some(_) => {
                self.idle_count -= 1;
                true
            }
            None => false,
        }
    }
}

/// Counters shown by `SHOW POOL_POOLS` and `/metrics`.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub checkouts: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub queue_full: AtomicU64,
    /// Total microseconds clients spent waiting for a connection.
    pub wait_us: AtomicU64,
}

pub struct Pool {
    pub key: PoolKey,
    inner: Mutex<Inner>,
    /// What the server reported (ParameterStatus) when a connection of this
    /// pool last logged in.
    server_parameters: Mutex<Option<Arc<ServerParameters>>>,
    target: Mutex<Endpoint>,
    pub counters: PoolCounters,
}

/// A snapshot of a pool for display.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub node: usize,
    pub user: String,
    pub database: String,
    pub total: usize,
    pub idle: usize,
    pub waiting: usize,
    pub max_size: usize,
    pub checkouts: u64,
    pub connects: u64,
    pub connect_errors: u64,
    pub wait_timeouts: u64,
    pub queue_full: u64,
    pub wait_us: u64,
}

/// A connection lent to a client. Dropping it without [`Lease::release`]
/// closes the connection (the client vanished or the connection broke).
pub struct Lease {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
}

impl Lease {
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_deref_mut().expect("lease holds a connection")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Gives the connection back for reuse.
    pub fn release(mut self) {
        if let Some(mut c) = self.conn.take() {
            // A pooled connection keeps the room of one read: the next
            // client's replies take it at once.
            c.trim_buffer(crate::tls::READ_CHUNK);
            let now = Instant::now();
            c.last_used = now;
            self.pool.check_in(c, now);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.discard_one();
        }
    }
}

/// A checkout waiting for a connection to come back.
struct Waiter {
    rx: oneshot::Receiver<Handoff>,
    pool: Arc<Pool>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Handoff::Conn(c)) => self.pool.check_in(c, Instant::now()),
            Ok(Handoff::Slot) => self.pool.discard_one(),
            Err(_) => {}
        }
    }
}

/// A slot taken for a connection being opened: given back unless kept.
struct Slot(Option<Arc<Pool>>);

impl Slot {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.discard_one();
        }
    }
}

impl Pool {
    pub fn new(key: PoolKey, limits: PoolLimits, target: Endpoint) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            inner: Mutex::new(Inner::new(limits)),
            target: Mutex::new(target),
            server_parameters: Mutex::new(None),
            counters: PoolCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> String {
        format!(
            "node {} for user {:?} database {:?}",
            self.key.node, self.key.user, self.key.database
        )
    }

    /// Whether a checkout now would have to wait: nothing idle and no room
    /// for a new connection.
    pub fn would_wait(&self) -> bool {
        let inner = self.lock();
        inner.idle_count == 0 && inner.total >= inner.limits.max_size
    }

    /// This worker's most recently returned idle connection, at once, when
    /// it is alive and `fits` takes it (the caller's settings are its
    /// own): the usual checkout, without a future. `None` leaves the rest
    /// to [`Pool::checkout`] (another worker's connection, a new one, a
    /// wait, a connection whose settings must be changed, which stays
    /// idle); a dead or expired connection found here is dropped, as
    /// `checkout` drops it (its liveness probe may have read a byte).
    pub fn checkout_idle(
        self: &Arc<Self>,
        fits: impl FnOnce(&mut ServerConn) -> bool,
    ) -> Option<Lease> {
        let now = Instant::now();
        let on_worker = crate::worker::current();
        let mut inner = self.lock();
        let mut c = inner.pop_idle(on_worker.unwrap_or(0), false)?;
        if past(c.idle_until, now) || !c.is_alive() {
            inner.total -= 1;
            return None;
        }
        if !fits(&mut c) {
            inner.push_idle(c);
            return None;
        }
        let c = match rehome(c, on_worker) {
            Ok(c) => c,
            Err(_) => {
                inner.total -= 1;
                return None;
            }
        };
        drop(inner);
        self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
        Some(self.lease(c))
    }

    /// Lends a connection: an idle one, a new one, or the next one returned.
    /// `options` are the startup parameters used if a new one is opened.
    pub async fn checkout(
        self: &Arc<Self>,
        options: &[(String, String)],
    ) -> Result<Lease, PoolError> {
        self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Off the workers (control plane, work_stealing) connections stay
        // where they are and are kept on the first worker's list.
        let on_worker = crate::worker::current();
        let worker = on_worker.unwrap_or(0);
        let wait = {
            let mut inner = self.lock();
            let limits = inner.limits.clone();
            // This worker's own idle connections first; another worker's
            // only when the pool has no room for a new one.
            for borrow in [false, true] {
                if borrow && inner.total < limits.max_size {
                    break;
                }
                while let Some(c) = inner.pop_idle(worker, borrow) {
                    // A connection that died while idle (server restart,
                    // pg_terminate_backend, a failover) is dropped here,
                    // not handed to a client to fail on.
                    if past(c.idle_until, now) || !c.is_alive() {
                        inner.total -= 1;
                        continue;
                    }
                    match rehome(c, on_worker) {
                        Ok(c) => return Ok(self.lease(c)),
                        Err(_) => inner.total -= 1,
                    }
                }
            }
            if inner.total < limits.max_size {
                inner.total += 1;
                None
            } else if inner.waiters.len() >= limits.max_waiting {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::QueueFull(self.name()));
            } else if limits.checkout_timeout.is_zero() {
                // No wait at all: timed out at once.
                self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Timeout(self.name(), limits.checkout_timeout));
            } else {
                let (tx, rx) = oneshot::channel();
                inner.waiters.push_back(Queued {
                    tx,
                    deadline: now.checked_add(limits.checkout_timeout),
                });
                Some((rx, limits.checkout_timeout))
            }
        };
        if let Some((rx, timeout)) = wait {
            // Boxed: waiting (a timer, a channel) is rare, and a checkout
            // is part of every busy session's future.
            if let Some(lease) = Box::pin(self.wait_turn(rx, timeout, now, on_worker)).await? {
                return Ok(lease);
            }
        }
        // We hold a slot: open a new connection. The slot is given back
        // if opening fails, or if the caller gives up meanwhile.
        let slot = Slot(Some(self.clone()));
        // Boxed: opening a connection (TLS, SCRAM) takes a large future,
        // and a checkout is part of every session's message handling,
        // whose future would otherwise be that large on every message.
        let r = Box::pin(self.open(options)).await;
        slot.keep();
        match r {
            Ok(c) => Ok(self.lease(Box::new(c))),
            Err(e) => {
                self.discard_one();
                Err(e.into())
            }
        }
    }

    /// Waits for a connection to come back (or a slot to open one in) until
    /// the pool's wait check turns the waiter away (`timeout` after it
    /// came, see [`Pool::expire_waiters`]): `Some` lease, or `None` with a
    /// slot taken.
    async fn wait_turn(
        self: &Arc<Self>,
        rx: oneshot::Receiver<Handoff>,
        timeout: Duration,
        now: Instant,
        on_worker: Option<usize>,
    ) -> Result<Option<Lease>, PoolError> {
        // Dropped with the session's future (its client went away
        // while waiting): whatever was handed over meanwhile goes back.
        let mut waiter = Waiter {
            rx,
            pool: self.clone(),
        };
        // The sender dropped (turned away past its deadline): timed out.
        // Hand-over and turning away both happen under the pool's lock,
        // so nothing is handed to a waiter that was turned away.
        let handoff = (&mut waiter.rx).await.ok();
        self.counters
            .wait_us
            .fetch_add(now.elapsed().as_micros() as u64, Ordering::Relaxed);
        match handoff {
            Some(Handoff::Conn(c)) => match rehome(c, on_worker) {
                Ok(c) => Ok(Some(self.lease(c))),
                Err(e) => {
                    self.discard_one();
                    Err(PoolError::Backend(e.into()))
                }
            },
            Some(Handoff::Slot) => Ok(None),
            None => {
                self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PoolError::Timeout(self.name(), timeout))
            }
        }
    }

    async fn open(&self, options: &[(String, String)]) -> Result<ServerConn, BackendError> {
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        let target = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let timeout = self.lock().limits.connect_timeout;
        let mut refreshed = false;
        let r = loop {
            let password = target
                .credentials
                .password(&target.login, &target.host, target.port, &self.key.user)
                .await
                .map_err(BackendError::Credentials)?;
            let params = ConnectParams {
                host: &target.host,
                port: target.port,
                user: &self.key.user,
                password: password.as_deref(),
                database: &self.key.database,
                options,
                timeout,
                tls: &target.tls,
            };
            let r = ServerConn::connect(self.key.node, &params).await;
            // A refused password from a secret may have been rotated: read
            // the secret again and try once more.
            if let Err(BackendError::Refused(f)) = &r
                && f.code == "28P01"
                && !refreshed
                && target.credentials.refresh(&target.login).await
            {
                refreshed = true;
                continue;
            }
            break r;
        };
        match &r {
            Ok(c) => {
                *self
                    .server_parameters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    Some(Arc::new(ServerParameters::new(c.reported.clone())))
            }
            Err(_) => {
                self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn lease(self: &Arc<Self>, c: Box<ServerConn>) -> Lease {
        Lease {
            conn: Some(c),
            pool: self.clone(),
        }
    }

    fn check_in(&self, mut c: Box<ServerConn>, now: Instant) {
        let mut inner = self.lock();
        if past(retire_at(c.created, &inner.limits), now) || inner.total > inner.limits.max_size {
            drop(inner);
            self.discard_one();
            return;
        }
        if inner.waiters.is_empty() {
            // The common case: no allocation for the hand-over.
            c.idle_until = idle_until(c.created, c.last_used, &inner.limits);
            inner.push_idle(c);
            return;
        }
        while let Some(w) = inner.waiters.pop_front() {
            match w.tx.send(Handoff::Conn(c)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => c = back,
                Err(Handoff::Slot) => unreachable!("sent a connection"),
            }
        }
        c.idle_until = idle_until(c.created, c.last_used, &inner.limits);
        inner.push_idle(c);
    }

    /// Forgets one connection (closed or never opened) and lets a waiter
    /// open one in its place.
    fn discard_one(&self) {
        let mut inner = self.lock();
        inner.total = inner.total.saturating_sub(1);
        if inner.total < inner.limits.max_size {
            while let Some(w) = inner.waiters.pop_front() {
                if w.tx.send(Handoff::Slot).is_ok() {
                    inner.total += 1;
                    break;
                }
            }
        }
    }

    /// Applies new limits; a larger pool lets waiters open connections at
    /// once, a smaller one shrinks as connections come back.
    pub fn set_limits(&self, limits: PoolLimits) {
        let mut inner = self.lock();
        inner.limits = limits;
        let Inner { idle, limits, .. } = &mut *inner;
        for c in idle.iter_mut().flatten() {
            c.idle_until = idle_until(c.created, c.last_used, limits);
        }
        while inner.total < inner.limits.max_size {
            let Some(w) = inner.waiters.pop_front() else {
                break;
            };
            if w.tx.send(Handoff::Slot).is_ok() {
                inner.total += 1;
            }
        }
        while inner.total > inner.limits.max_size && inner.close_oldest_idle() {
            inner.total -= 1;
        }
    }

    /// The server's parameters as last reported to a new connection.
    pub fn server_parameters(&self) -> Option<Arc<ServerParameters>> {
        self.server_parameters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_target(&self, target: Endpoint) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Turns away the checkouts waiting past their deadline
    /// (`checkout_timeout`), whose clients then get the timeout error, and
    /// forgets those whose clients left. Called by the wait check every
    /// [`WAIT_CHECK`] for as long as the process runs (through shutdown
    /// too): a wait ends at most that much after its timeout.
    pub fn expire_waiters(&self, now: Instant) {
        let mut inner = self.lock();
        if !inner.waiters.is_empty() {
            inner
                .waiters
                .retain(|w| !w.tx.is_closed() && w.deadline.is_none_or(|d| d > now));
        }
    }

    /// Closes idle connections past their idle timeout or lifetime.
    pub fn reap(&self) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        let closed = inner.retain_idle(|c| !past(c.idle_until, now));
        inner.total -= closed;
        closed
    }

    /// Closes every idle connection (node detached, settings changed).
    pub fn drain_idle(&self) {
        let mut inner = self.lock();
        let n = inner.retain_idle(|_| false);
        inner.total -= n;
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let c = &self.counters;
        PoolStats {
            node: self.key.node,
            user: self.key.user.clone(),
            database: self.key.database.clone(),
            total: inner.total,
            idle: inner.idle_count,
            waiting: inner.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
            max_size: inner.limits.max_size,
            checkouts: c.checkouts.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            connect_errors: c.connect_errors.load(Ordering::Relaxed),
            wait_timeouts: c.wait_timeouts.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed),
            wait_us: c.wait_us.load(Ordering::Relaxed),
        }
    }
}

/// `c` moved to the worker running this checkout, if it runs on one.
fn rehome(mut c: Box<ServerConn>, worker: Option<usize>) -> std::io::Result<Box<ServerConn>> {
    if let Some(w) = worker {
        c.rehome(w)?;
    }
    Ok(c)
}

/// Whether `deadline` has come at `now` (one clock read per checkout or
/// check-in; a deadline is an instant compared, not a duration computed).
fn past(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| now >= d)
}

/// The end of the lifetime of a connection opened at `created`, under
/// `l` (`None`: never).
fn retire_at(created: Instant, l: &PoolLimits) -> Option<Instant> {
    (!l.max_lifetime.is_zero())
        .then(|| created.checked_add(l.max_lifetime))
        .flatten()
}

/// When a connection opened at `created` and idle since `last_used` is
/// past `l`: its idle timeout or the end of its lifetime, whichever
/// comes first.
fn idle_until(created: Instant, last_used: Instant, l: &PoolLimits) -> Option<Instant> {
    let idle = (!l.idle_timeout.is_zero())
        .then(|| last_used.checked_add(l.idle_timeout))
        .flatten();
    match (idle, retire_at(created, l)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A pool's key as a session holds it: looked up without copying the
/// user's and database's names (they are copied only for a new pool).
/// Hashes as [`PoolKey`] does: the same fields in the same order.
#[derive(Clone, Copy, Hash)]
pub struct PoolKeyRef<'a> {
    pub node: usize,
    pub user: &'a str,
    pub database: &'a str,
}

impl hashbrown::Equivalent<PoolKey> for PoolKeyRef<'_> {
    fn equivalent(&self, key: &PoolKey) -> bool {
        self.node == key.node && self.user == key.user && self.database == key.database
    }
}

impl PoolKeyRef<'_> {
    fn to_key(self) -> PoolKey {
        PoolKey {
            node: self.node,
            user: self.user.to_string(),
            database: self.database.to_string(),
        }
    }
}

/// The map of every pool. A user and a database are names a client
/// chooses (a pool is made before its login is proved), so the hash is
/// foldhash's keyed quality variant, seeded per map.
type PoolMap = hashbrown::HashMap<PoolKey, Arc<Pool>, foldhash::quality::RandomState>;

/// Every pool, created on first use.
pub struct Pools {
    pools: Mutex<PoolMap>,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new()
    }
}

impl Pools {
    pub fn new() -> Self {
        Pools {
            pools: Mutex::new(PoolMap::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolMap> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for `key`, made with `make` if it does not exist yet.
    pub fn get_or_create(
        &self,
        key: PoolKeyRef<'_>,
        make: impl FnOnce() -> (PoolLimits, Endpoint),
    ) -> Arc<Pool> {
        let mut pools = self.lock();
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let (limits, target) = make();
        let key = key.to_key();
        let p = Pool::new(key.clone(), limits, target);
        pools.insert(key, p.clone());
        p
    }

    /// Drops `pool` from the map when nothing uses it: no connection, no
    /// waiter, no other holder (a login to a database that does not exist
    /// leaves no pool, and no metric series, behind).
    pub fn forget_if_unused(&self, pool: Arc<Pool>) {
        let mut pools = self.lock();
        let unused = {
            let inner = pool.lock();
            inner.total == 0 && inner.waiters.iter().all(|w| w.tx.is_closed())
        };
        // Held by the map and by the caller only.
        if unused
            && Arc::strong_count(&pool) == 2
            && pools.get(&pool.key).is_some_and(|p| Arc::ptr_eq(p, &pool))
        {
            pools.remove(&pool.key);
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Applies `f` to every pool (reloads).
    pub fn for_each(&self, mut f: impl FnMut(&Pool)) {
        for p in self.all() {
            f(&p);
        }
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        self.all().iter().map(|p| p.stats()).collect()
    }

    /// Totals per node: (connections, idle).
    pub fn per_node(&self) -> BTreeMap<usize, (usize, usize)> {
        let mut m = BTreeMap::new();
        for s in self.stats() {
            let e = m.entry(s.node).or_insert((0, 0));
            e.0 += s.total;
            e.1 += s.idle;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle_s: u64, lifetime_s: u64) -> PoolLimits {
        PoolLimits {
            max_size: 1,
            max_waiting: 1,
            checkout_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(idle_s),
            max_lifetime: Duration::from_secs(lifetime_s),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A pool whose only connection is lent out: a checkout waits.
    fn full_pool(limits: PoolLimits) -> Arc<Pool> {
        let pool = Pool::new(
            PoolKey {
                node: 0,
                user: "app".into(),
                database: "app".into(),
            },
            limits,
            Endpoint {
                host: "127.0.0.1".into(),
                port: 1,
                login: crate::credentials::Login::Password(None),
                credentials: Arc::default(),
                tls: Arc::default(),
            },
        );
        pool.lock().total = 1;
        pool
    }

    #[tokio::test]
    async fn a_waiting_checkout_is_turned_away_by_the_wait_check_past_its_deadline() {
        let pool = full_pool(PoolLimits {
            max_waiting: 2,
            ..limits(0, 0)
        });
        let came = Instant::now();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.checkout(&[]).await.map(drop) }
        });
        while pool.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        // Before its deadline (checkout_timeout, 1 s) the check keeps it.
        pool.expire_waiters(came);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(pool.stats().waiting, 1);
        // Past it, the wait ends as timed out, and is counted.
        pool.expire_waiters(came + Duration::from_secs(2));
        match waiting.await.unwrap() {
            Err(PoolError::Timeout(_, t)) => assert_eq!(t, Duration::from_secs(1)),
            other => panic!("{:?}", other.err()),
        }
        assert_eq!(pool.stats().waiting, 0);
        assert_eq!(pool.stats().wait_timeouts, 1);
        // The lent connection still counts; the queue has room again.
        assert_eq!(pool.stats().total, 1);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiter_and_the_wait_check_leaves_it_be() {
        let pool = full_pool(limits(0, 0));
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.checkout(&[]).await.map(|l| l.pool().key.node) }
        });
        while pool.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        // A second checkout finds the line full at once.
        assert!(matches!(
            pool.checkout(&[]).await,
            Err(PoolError::QueueFull(_))
        ));
        // The lent connection's slot is given up: the waiter may open one
        // (to a port nothing listens on), and is not turned away after.
        pool.discard_one();
        pool.expire_waiters(Instant::now() + Duration::from_secs(2));
        let r = waiting.await.unwrap();
        assert!(
            matches!(r, Err(PoolError::Backend(_))),
            "the waiter got the slot and tried to connect: {:?}",
            r.err()
        );
    }

    #[tokio::test]
    async fn a_zero_timeout_does_not_wait_and_one_past_any_instant_never_ends() {
        let zero = full_pool(PoolLimits {
            checkout_timeout: Duration::ZERO,
            ..limits(0, 0)
        });
        assert!(matches!(
            zero.checkout(&[]).await,
            Err(PoolError::Timeout(_, t)) if t.is_zero()
        ));
        assert_eq!(zero.stats().wait_timeouts, 1);
        assert_eq!(zero.stats().waiting, 0);
        let huge = full_pool(PoolLimits {
            checkout_timeout: Duration::MAX,
            ..limits(0, 0)
        });
        let waiting = tokio::spawn({
            let pool = huge.clone();
            async move { pool.checkout(&[]).await.map(drop) }
        });
        while huge.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        huge.expire_waiters(Instant::now() + Duration::from_secs(1_000_000_000));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(huge.stats().waiting, 1);
        waiting.abort();
    }

    #[test]
    fn an_idle_connection_expires_at_its_idle_timeout_or_lifetime_whichever_is_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // The deadline set at check-in says, at every instant after it,
        // what comparing durations said: idle at least `idle_timeout`, or
        // open at least `max_lifetime` (0: never).
        for (idle, life) in [(10, 60), (0, 60), (10, 0), (0, 0), (60, 10)] {
            let l = limits(idle, life);
            for used in [0, 5, 49, 55, 70] {
                let last_used = t0 + s(used);
                let until = idle_until(t0, last_used, &l);
                for at in used..used + 80 {
                    let now = t0 + s(at);
                    let by_durations = (idle > 0 && now.duration_since(last_used) >= s(idle))
                        || (life > 0 && now.duration_since(t0) >= s(life));
                    assert_eq!(
                        past(until, now),
                        by_durations,
                        "{idle}/{life} used {used} at {at}"
                    );
                }
            }
        }
        assert_eq!(idle_until(t0, t0 + s(5), &limits(10, 60)), Some(t0 + s(15)));
        assert_eq!(
            idle_until(t0, t0 + s(55), &limits(10, 60)),
            Some(t0 + s(60))
        );
        assert_eq!(idle_until(t0, t0, &limits(0, 0)), None);
        assert_eq!(retire_at(t0, &limits(10, 60)), Some(t0 + s(60)));
        assert!(!past(None, t0 + s(1_000_000)));
    }
}
