//! One client's session: the state machine between a client and the
//! backend connection serving it.
//!
//! The session forwards frames without re-encoding them. It reads only what
//! pooling needs: statement names (so named prepared statements survive a
//! change of backend connection in transaction mode), the ends of responses
//! (so a connection goes back to its pool at ReadyForQuery 'I'), settings
//! and pinning state (see [`state`]).

mod expect;
mod login;
pub mod state;
mod statements;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::Poll,
    time::Duration,
};

use bytes::{Buf, BytesMut};

use crate::{
    backend::{BackendError, quote_literal},
    config::PoolMode,
    pool::{Lease, PoolError, PoolKey, PoolLimits, Target},
    protocol::{
        frame::{self, Frame},
        messages::{self, Severity},
        sqlstate,
    },
    router,
    server::{CancelSlot, Shared},
    tls::{Step, Stream},
};
use expect::Expect;
use state::{PinReason, SettingChange};
use statements::Statement;

/// Parameters the backend reports that a client may also set; kept per
/// client so that any backend connection serving it is set the same way.
const TRACKED_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
];

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("client closed the connection")]
    ClientGone,
    #[error("client terminated the session")]
    Terminated,
    #[error("client I/O: {0}")]
    ClientIo(#[from] std::io::Error),
    #[error("client protocol violation: {0}")]
    Protocol(String),
    #[error("backend lost: {0}")]
    Backend(String),
    #[error("server shutting down")]
    Shutdown,
    #[error("session idle too long")]
    IdleTimeout,
}

/// Everything one client session holds.
pub struct Session {
    shared: Arc<Shared>,
    pub user: String,
    pub database: String,
    mode: PoolMode,
    /// Settings the client asked for at login (name → SQL value text).
    startup_settings: BTreeMap<String, String>,
    /// The same, as the client wrote them.
    startup_params: Vec<(String, String)>,
    /// Settings in force for this client now.
    settings: BTreeMap<String, String>,
    lease: Option<Lease>,
    /// Session mode: connections to other nodes this session used, kept
    /// with their session state for its next statement there.
    parked: Vec<Lease>,
    routing: router::SessionRouting,
    pins: BTreeSet<PinReason>,
    statements: HashMap<String, Arc<Statement>>,
    /// The client's last unnamed Parse and the connection (node, backend
    /// pid) it was sent to: a Bind or Describe of the unnamed
    /// statement in a later round trip may be served by another
    /// connection, which gets the Parse first.
    unnamed: Option<(Frame, (usize, i32))>,
    pending: VecDeque<Expect>,
    /// After an error in an extended-protocol batch the server skips
    /// messages until Sync; so does the bookkeeping.
    skipping: bool,
    /// Answering a batch of named Parse messages and its Sync without a
    /// server connection (see `defers_prepare`).
    deferring: bool,
    /// The server is in COPY FROM STDIN: it ignores Sync and Flush until
    /// the client's CopyDone or CopyFail.
    copy_in: bool,
    /// Extended-protocol messages were sent since the last Sync: the
    /// connection holds an unfinished batch (portals, an implicit
    /// transaction) even when every reply so far has arrived.
    unsynced: bool,
    /// The server sent FATAL (or PANIC) on this session's connection.
    backend_fatal: bool,
    /// Work that may write was sent and its transaction has not ended yet:
    /// when it ends, the session's reads need a standby that replayed it.
    write_open: bool,
    /// The process id this client was given in BackendKeyData: a
    /// notification its own statements raised carries it, as on a direct
    /// connection.
    pub client_pid: i32,
    tx_status: u8,
    cancel: Arc<CancelSlot>,
    to_client: BytesMut,
    to_backend: BytesMut,
    /// This session's pool on each node, by node id (see `pool_on`).
    pools: Vec<Option<Arc<crate::pool::Pool>>>,
    /// The client's span (peer, user, database): the parent of the
    /// session's log lines. It is not entered around the session loop.
    pub span: tracing::Span,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        user: String,
        database: String,
        startup_params: &[(String, String)],
        cancel: Arc<CancelSlot>,
    ) -> Session {
        let mode = shared.config.load().pool.mode;
        let startup_settings: BTreeMap<String, String> = startup_params
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), quote_literal(v)))
            .collect();
        Session {
            shared,
            user,
            database,
            mode,
            settings: startup_settings.clone(),
            startup_settings,
            startup_params: startup_params.to_vec(),
            lease: None,
            parked: Vec::new(),
            routing: router::SessionRouting::default(),
            pins: BTreeSet::new(),
            statements: HashMap::new(),
            unnamed: None,
            pending: VecDeque::new(),
            skipping: false,
            deferring: false,
            copy_in: false,
            unsynced: false,
            backend_fatal: false,
            write_open: false,
            client_pid: 0,
            tx_status: b'I',
            cancel,
            // Grown on demand: thousands of idle clients must cost little.
            to_client: BytesMut::new(),
            to_backend: BytesMut::new(),
            pools: Vec::new(),
            span: tracing::Span::none(),
        }
    }

    /// Takes a backend connection for login: proves the database and user
    /// work and collects the ParameterStatus values to report.
    /// On failure: the SQLSTATE (the server's, when it refused) and message.
    pub async fn login(&mut self) -> Result<BTreeMap<String, String>, (&'static str, String)> {
        // Settings whose reported form tidepool knows are answered from the
        // pool (see `login`); others (an `options` -c setting, an unknown
        // encoding) are tried on a connection at login, so that a bad one
        // is refused there with the server's SQLSTATE (42704, 22023)
        // rather than failing every statement.
        if self.mode == PoolMode::Transaction {
            // A pool that has logged in once knows the server's parameters:
            // new clients need not wait for a free connection to start.
            let pool = self.write_pool()?;
            if let Some(reported) = pool
                .server_parameters()
                .and_then(|server| login::fast_reported(&server, &self.startup_params))
            {
                return Ok(reported);
            }
        }
        if let Err(e) = self.acquire().await {
            // Refused (a database or role that does not exist, say): the
            // pools this attempt made go again.
            for pool in std::mem::take(&mut self.pools).into_iter().flatten() {
                self.shared.pools.forget_if_unused(pool);
            }
            return Err(e);
        }
        let reported = self.lease.as_mut().map(|l| l.conn().reported.clone());
        if self.mode == PoolMode::Transaction {
            self.release();
        }
        Ok(reported.unwrap_or_default())
    }

    /// Serves the client until it leaves.
    pub async fn run(
        &mut self,
        mut client: Stream,
        mut client_buf: BytesMut,
    ) -> Result<(), SessionEnd> {
        // One wait for shutdown for the whole session, polled in place: a
        // new `changed()` on every turn of the loop would register with
        // the channel shared by every client, under its lock, each time.
        let mut shutdown = self.shared.shutdown.clone();
        let mut shutting_down = *shutdown.borrow_and_update();
        let shutdown_wait = async move {
            if shutdown.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(shutdown_wait);
        let mut backend_frames = Vec::new();
        // Messages of a unit that waits for the one before it to finish.
        let mut held: Vec<Frame> = Vec::new();
        let result = loop {
            // Handle whatever whole client frames are buffered.
            let mut r = Ok(());
            let mut frames = std::mem::take(&mut held);
            loop {
                match frame::take(&mut client_buf, frame::MAX_MESSAGE) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        self.error(
                            Severity::Fatal,
                            sqlstate::PROTOCOL_VIOLATION,
                            &format!("invalid message from client: {e}"),
                            None,
                        );
                        r = Err(SessionEnd::Protocol(e.to_string()));
                        break;
                    }
                }
            }
            // The rest of the batch is visible when a unit of work is routed.
            for i in 0..frames.len() {
                if r.is_ok() && self.waits_for_boundary(&frames[i]) {
                    held = frames.split_off(i);
                    break;
                }
                if r.is_ok() {
                    let (head, rest) = frames.split_at(i + 1);
                    let r2 = {
                        // A message may wait (for a server connection, a
                        // primary, settings): a client that goes away
                        // meanwhile is not served after it left, and its
                        // place in the queue goes to those still there.
                        let work = self.on_client_frame(head[i].clone(), rest);
                        tokio::pin!(work);
                        let mut watch = true;
                        loop {
                            tokio::select! {
                                biased;
                                r = &mut work => break r,
                                read = client.read_more(&mut client_buf), if watch => match read {
                                    Ok(0) | Err(_) => break Err(SessionEnd::ClientGone),
                                    // What it sends meanwhile waits its turn;
                                    // beyond a bound it waits in its socket.
                                    Ok(_) => watch = client_buf.len() < WATCH_BUFFER,
                                },
                            }
                        }
                    };
                    if let Err(SessionEnd::Protocol(m)) = &r2 {
                        // A malformed message ends the session, as in
                        // PostgreSQL, and the client is told why first.
                        self.error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, m, None);
                    }
                    if r2.is_err() {
                        r = r2;
                    }
                }
            }
            if let Err(e) = self.flush_backend(&mut client).await {
                r = Err(e);
            }
            client.write_all(&self.to_client).await?;
            shrink(&mut self.to_client);
            if client_buf.is_empty() {
                client_buf = BytesMut::new();
            }
            if let Err(e) = r {
                break Err(e);
            }
            if shutting_down && self.is_idle() {
                break Err(SessionEnd::Shutdown);
            }
            if held.first().is_some_and(|f| !self.waits_for_boundary(f)) {
                // The replies came in while writing: route the next unit.
                continue;
            }
            // A timer only where one can fire: arming one on every turn
            // costs a clock read and two timer-wheel updates a message.
            let idle_timeout = self.shared.config.load().server.client_idle_timeout;
            let idle = self.is_idle();
            let idle_wait = (idle && !idle_timeout.is_zero()).then_some(idle_timeout);
            tokio::select! {
                // The server's replies first: an error reaches the client
                // before more of what it pipelined is read.
                biased;
                r = read_backend(&mut self.lease, &mut backend_frames), if self.lease.is_some() => {
                    match r {
                        Ok(()) => {
                            for f in backend_frames.drain(..) {
                                self.on_backend_frame(f);
                            }
                            self.after_backend_batch();
                        }
                        Err(e) => {
                            if let Some(l) = &self.lease {
                                self.report_fault(lease_node(l), &e);
                            }
                            self.lease = None;
                            self.cancel.clear();
                            if !self.backend_fatal {
                                self.error(Severity::Fatal, sqlstate::CONNECTION_FAILURE,
                                    &format!("lost the backend connection: {e}"),
                                    Some("reconnect; tidepool serves new sessions from a healthy node"));
                            }
                            client.write_all(&self.to_client).await?;
                            break Err(SessionEnd::Backend(e.to_string()));
                        }
                    }
                }
                // On plain TCP, memory is taken only while there is
                // something to read: an idle client holds no buffer.
                read = client.read_more(&mut client_buf), if self.pending.len() < MAX_IN_FLIGHT && held.is_empty() => {
                    match read {
                        Ok(0) => break Err(SessionEnd::ClientGone),
                        Ok(_) => {}
                        Err(e) => break Err(e.into()),
                    }
                }
                // Shutdown ends only idle sessions; a busy one looks
                // once it is idle again.
                _ = &mut shutdown_wait, if idle && !shutting_down => shutting_down = true,
                _ = idle_sleep(idle_wait), if idle_wait.is_some() => {
                    if self.is_idle() {
                        self.error(Severity::Fatal, "57P05",
                            "terminating connection due to idle-session timeout", None);
                        client.write_all(&self.to_client).await?;
                        break Err(SessionEnd::IdleTimeout);
                    }
                }
            }
        };
        if matches!(result, Err(SessionEnd::Shutdown)) {
            self.error(
                Severity::Fatal,
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to tidepool shutdown",
                None,
            );
            let _ = client.write_all(&self.to_client).await;
        }
        self.finish().await;
        result
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && !self.unsynced
            && self.tx_status == b'I'
            && self.to_backend.is_empty()
    }

    /// Returns the backend connection at the end of the session.
    async fn finish(&mut self) {
        self.cancel.clear();
        let reset = self.shared.config.load().pool.reset_query.clone();
        for mut lease in std::mem::take(&mut self.parked) {
            // Parked connections are idle: reset and return them.
            let conn = lease.conn();
            if reset.trim().is_empty() || conn.run_silent(&reset).await.is_ok() {
                conn.settings.clear();
                conn.forget_statements();
                lease.release();
            }
        }
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        if !self.pending.is_empty() || self.tx_status != b'I' || self.unsynced {
            // The client left mid-statement, mid-transaction, or inside an
            // extended-protocol batch not yet closed by Sync (an implicit
            // transaction the next client's statement would commit, or a
            // server skipping to a Sync that never comes). Cancel what
            // runs so the server notices at once, then close the
            // connection: the server rolls the work back.
            let target = lease.conn().cancel.clone();
            if !self.pending.is_empty() {
                tokio::spawn(async move {
                    let _ = crate::backend::send_cancel(&target).await;
                });
            }
            return;
        }
        let reset = match self.mode {
            PoolMode::Session => self.shared.config.load().pool.reset_query.clone(),
            // A client that held session state on its connection (a
            // temporary table, a session advisory lock, LISTEN, a cursor
            // WITH HOLD, a SQL-level prepared statement) leaves none of it
            // to the next client: DISCARD ALL drops it all, whatever
            // `reset_query` says.
            PoolMode::Transaction if !self.pins.is_empty() => "DISCARD ALL".to_string(),
            PoolMode::Transaction => String::new(),
        };
        if !reset.trim().is_empty() {
            let conn = lease.conn();
            if conn.run_silent(&reset).await.is_err() {
                // Not known clean: closed, not pooled.
                return;
            }
            conn.settings.clear();
            conn.forget_statements();
        }
        lease.release();
    }

    fn error(&mut self, sev: Severity, code: &str, msg: &str, hint: Option<&str>) {
        messages::error_response(&mut self.to_client, sev, code, msg, hint);
    }

    /// Writes what waits for the server. Meanwhile the server's replies
    /// are handled and written on to the client, with at most
    /// `CLIENT_BACKLOG` bytes held for a client that does not read them:
    /// the server then waits to send, stops reading, and the client's own
    /// writes wait, as they would on a direct connection. Memory per
    /// session stays bounded whatever a client pipelines.
    async fn flush_backend(&mut self, client: &mut Stream) -> Result<(), SessionEnd> {
        if self.to_backend.is_empty() {
            return Ok(());
        }
        let Some(lease) = self.lease.as_ref() else {
            self.to_backend.clear();
            return Ok(());
        };
        let node = lease_node(lease);
        let mut sent = 0;
        let mut frames = Vec::new();
        let mut read_any = false;
        let r = loop {
            let step = std::future::poll_fn(|cx| {
                if !self.to_client.is_empty()
                    && let Poll::Ready(r) = tokio::io::AsyncWrite::poll_write(
                        Pin::new(&mut *client),
                        cx,
                        &self.to_client,
                    )
                {
                    return Poll::Ready(Pump::Client(r));
                }
                let Some(l) = self.lease.as_mut() else {
                    return Poll::Ready(Pump::Server(Err(BackendError::Closed)));
                };
                let read = self.to_client.len() < CLIENT_BACKLOG;
                l.conn()
                    .poll_write_reading(cx, &self.to_backend[sent..], read)
                    .map(Pump::Server)
            })
            .await;
            match step {
                Pump::Client(Ok(0)) => return Err(SessionEnd::ClientGone),
                Pump::Client(Ok(n)) => self.to_client.advance(n),
                Pump::Client(Err(e)) => return Err(e.into()),
                Pump::Server(Ok(Step::Wrote(n))) => sent += n,
                Pump::Server(Ok(Step::Flushed)) => break Ok(()),
                Pump::Server(Ok(Step::Read)) => {
                    let l = self.lease.as_mut().expect("polled above");
                    if let Err(e) = l.conn().take_frames(&mut frames) {
                        break Err(e);
                    }
                    for f in frames.drain(..) {
                        self.on_backend_frame(f);
                    }
                    read_any = true;
                }
                Pump::Server(Err(e)) => break Err(e),
            }
        };
        shrink(&mut self.to_backend);
        if let Err(e) = &r {
            self.report_fault(node, e);
        }
        r.map_err(|e| SessionEnd::Backend(e.to_string()))?;
        if read_any {
            self.after_backend_batch();
        }
        Ok(())
    }

    /// Gets a backend connection for this client and brings its settings
    /// to the client's. Errors carry an SQLSTATE and a message.
    /// The pool of `node` for this session's user and database.
    /// This session's pool on node `node`: (user, database) pools live as
    /// long as tidepool, so each is looked up once per session.
    fn pool_on(&mut self, node: usize) -> Option<Arc<crate::pool::Pool>> {
        if let Some(Some(p)) = self.pools.get(node) {
            return Some(p.clone());
        }
        let snapshot = self.shared.cluster.snapshot();
        let n = snapshot.node(node)?;
        let key = PoolKey {
            node: n.id,
            user: self.user.clone(),
            database: self.database.clone(),
        };
        let shared = self.shared.clone();
        let pool = self
            .shared
            .pools
            .get_or_create(&key, || pool_setup(&shared, &key, (&n.host, n.port)));
        if self.pools.len() <= node {
            self.pools.resize(node + 1, None);
        }
        self.pools[node] = Some(pool.clone());
        Some(pool)
    }

    /// The primary's id, waiting (bounded by `pool.primary_wait_timeout`)
    /// while there is none, as during a failover.
    async fn primary(&self) -> Result<usize, (&'static str, String)> {
        if let Some(id) = self.shared.cluster.primary_id() {
            return Ok(id);
        }
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
    fn write_pool(&mut self) -> Result<Arc<crate::pool::Pool>, (&'static str, String)> {
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

    async fn acquire(&mut self) -> Result<(), (&'static str, String)> {
        if self.lease.is_some() {
            return Ok(());
        }
        let primary = self.primary().await?;
        self.acquire_on(primary).await
    }

    /// Makes `node` the session's current backend: a parked connection of
    /// the session, or one from the node's pool.
    async fn acquire_on(&mut self, node: usize) -> Result<(), (&'static str, String)> {
        if let Some(l) = &self.lease
            && lease_node(l) == node
        {
            return Ok(());
        }
        if let Some(current) = self.lease.take() {
            self.cancel.clear();
            if self.mode == PoolMode::Session {
                self.parked.push(current);
            } else {
                current.release();
            }
        }
        if let Some(i) = self.parked.iter().position(|l| lease_node(l) == node) {
            let mut lease = self.parked.swap_remove(i);
            let conn = lease.conn();
            conn.apply_settings(&self.settings)
                .await
                .map_err(|e| (sqlstate::CONNECTION_FAILURE, e.to_string()))?;
            self.cancel.set(conn.cancel.clone());
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
        if let Err(e) = conn.apply_settings(&self.settings).await {
            self.report_fault(node, &e);
            return Err(match e {
                BackendError::Server(f) => (code_of(&f.code), f.message),
                other => (sqlstate::CONNECTION_FAILURE, other.to_string()),
            });
        }
        self.cancel.set(conn.cancel.clone());
        self.lease = Some(lease);
        Ok(())
    }

    /// Tells the failover manager that the connection to `node` broke or
    /// that the server shuts down (`failover_on_backend_error`,
    /// `failover_on_backend_shutdown`): it probes the node at once.
    fn report_fault(&self, node: usize, e: &BackendError) {
        if let Some(fault) = fault_of(e) {
            crate::cluster::report_fault(&self.shared, node, fault);
        }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.cancel.clear();
            lease.release();
        }
    }

    /// Makes sure a backend is attached before `f` is forwarded; on failure
    /// answers the client as PostgreSQL would and returns false.
    async fn ensure_backend(&mut self, simple: bool) -> bool {
        if self.lease.is_some() {
            return true;
        }
        if self.skipping && !simple {
            // The batch already failed without a backend: the rest of it,
            // up to Sync, is ignored as the server would ignore it.
            return false;
        }
        match self.acquire().await {
            Ok(()) => true,
            Err((code, msg)) => {
                self.shared
                    .metrics
                    .client_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.error(Severity::Error, code, &msg, None);
                if simple {
                    messages::ready_for_query(&mut self.to_client, self.tx_status);
                } else {
                    self.skipping = true;
                }
                false
            }
        }
    }

    fn push(&mut self, e: Expect) {
        if self.skipping {
            return;
        }
        if let Expect::Synthetic(tag) = e
            && self.pending.is_empty()
        {
            expect::emit_synthetic(&mut self.to_client, tag);
            return;
        }
        self.pending.push_back(e);
    }

    async fn on_client_frame(&mut self, f: Frame, rest: &[Frame]) -> Result<(), SessionEnd> {
        tracing::trace!(parent: &self.span, tag = %(f.tag as char), pending = ?self.pending, "client message");
        self.note_writes(&f);
        if self.deferring || (f.tag == b'P' && self.defers_prepare(&f, rest)) {
            return self.defer_prepare(&f);
        }
        let batch_open = matches!(f.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H');
        if matches!(f.tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
            && self.at_boundary()
            && !self.is_admin_command(&f)
            && let Err((code, msg)) = self.route_unit(&f, rest).await
        {
            self.shared
                .metrics
                .client_errors
                .fetch_add(1, Ordering::Relaxed);
            self.error(Severity::Error, code, &msg, None);
            if matches!(f.tag, b'Q' | b'F') {
                messages::ready_for_query(&mut self.to_client, self.tx_status);
            } else {
                self.skipping = true;
            }
            return Ok(());
        }
        if batch_open {
            self.unsynced = true;
        } else if f.tag == b'S' {
            self.unsynced = false;
        }
        match f.tag {
            b'X' => return Err(SessionEnd::Terminated),
            b'Q' => {
                let sql =
                    messages::read_query(&f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                if let Some(table) = crate::admin::show::answer_in_session(
                    &sql,
                    &self.shared,
                    self.routing.read_node,
                ) {
                    table.encode(&mut self.to_client);
                    messages::ready_for_query(&mut self.to_client, self.tx_status);
                    return Ok(());
                }
                if let Some(name) = state::deallocates(&sql)
                    && !self.skipping
                    && self.tx_status != b'E'
                    && self.pending.is_empty()
                    && self.statements.remove(&name).is_some()
                {
                    // A statement the client prepared with a Parse: the
                    // server knows it by tidepool's name, shared with other
                    // clients' same statement; the client's name is gone.
                    messages::command_complete(&mut self.to_client, "DEALLOCATE");
                    messages::ready_for_query(&mut self.to_client, self.tx_status);
                    // A connection the unit's routing took goes back.
                    self.after_backend_batch();
                    return Ok(());
                }
                if !self.ensure_backend(true).await {
                    return Ok(());
                }
                self.count_statement(&sql);
                let effects = state::analyze(&sql);
                self.note_pins(&effects);
                self.free_database(&effects).await;
                match self.sql_execute(&sql, false) {
                    Some(text) => messages::query(&mut self.to_backend, &text),
                    None => self.to_backend.extend_from_slice(&f.bytes),
                }
                self.pending.push_back(Expect::Simple {
                    settings: effects.settings,
                });
            }
            b'P' => {
                if !self.ensure_backend(false).await {
                    return Ok(());
                }
                let (name, query) =
                    messages::read_parse(&f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                self.count_statement(&query);
                let effects = state::analyze(&query);
                self.note_pins(&effects);
                self.free_database(&effects).await;
                let (f, query) = match self.sql_execute(&query, true) {
                    Some(text) => {
                        let b = messages::replace_parse_query(&f, &text)
                            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                        (messages::frame_of(&b), text)
                    }
                    None => (f, query),
                };
                let open = match name.is_empty() || self.skipping {
                    true => None,
                    false => self.statements.get(&name).cloned(),
                };
                if let Some(existing) = open {
                    // PostgreSQL refuses a second Parse of a name that is
                    // not closed, and skips the batch to Sync: the server
                    // does the same when it gets the statement twice.
                    self.ensure_prepared(&existing);
                    self.to_backend.extend_from_slice(&existing.parse);
                    self.push(Expect::Duplicate(Box::new(expect::Duplicate {
                        server_name: existing.server_name.clone(),
                        client_name: name,
                    })));
                } else if !name.is_empty() && !self.skipping {
                    let stmt = Arc::new(
                        Statement::from_parse(&f, self.shared.classifier.classify(&query))
                            .map_err(|e| SessionEnd::Protocol(e.to_string()))?,
                    );
                    self.statements.insert(name, stmt.clone());
                    // The client's own Parse reaches the server even when
                    // the connection has the statement: the text may mean
                    // something else now (a table dropped and made again
                    // with other types), as it would on a direct
                    // connection. Parses tidepool injects reuse it.
                    let conn = self.lease.as_mut().expect("attached").conn();
                    if conn.prepared.remove(&stmt.server_name) {
                        conn.stale.insert(stmt.server_name.clone());
                    }
                    conn.prepared.insert(stmt.server_name.clone());
                    self.close_if_stale(&stmt.server_name);
                    self.to_backend.extend_from_slice(&stmt.parse);
                    self.push(Expect::Parse {
                        hidden: false,
                        server_name: Some(stmt.server_name.clone()),
                    });
                } else {
                    if name.is_empty() && !self.skipping {
                        // Kept as is (a reference count): classified only if
                        // a later round trip binds it.
                        let here = self.conn_identity();
                        self.unnamed = Some((f.clone(), here));
                    }
                    self.to_backend.extend_from_slice(&f.bytes);
                    self.push(Expect::Parse {
                        hidden: false,
                        server_name: None,
                    });
                }
            }
            b'B' => {
                if !self.ensure_backend(false).await {
                    return Ok(());
                }
                let (_, stmt_name, _) =
                    messages::read_bind(&f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                match self.mapped(&stmt_name) {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        let b = messages::rename_bind(&f, &stmt.server_name)
                            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                        self.to_backend.extend_from_slice(&b);
                        self.push(Expect::Bind {
                            statement: Some(stmt.server_name.clone()),
                        });
                    }
                    None => {
                        if stmt_name.is_empty() {
                            self.ensure_unnamed();
                        }
                        self.to_backend.extend_from_slice(&f.bytes);
                        self.push(Expect::Bind { statement: None });
                    }
                }
            }
            b'D' | b'C' => {
                if !self.ensure_backend(false).await {
                    return Ok(());
                }
                let (kind, name) =
                    messages::read_target(&f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                let stmt = if kind == b'S' {
                    self.mapped(&name)
                } else {
                    None
                };
                match (f.tag, stmt) {
                    (b'D', Some(stmt)) => {
                        self.ensure_prepared(&stmt);
                        self.to_backend.extend_from_slice(&messages::target_message(
                            b'D',
                            b'S',
                            &stmt.server_name,
                        ));
                        self.push(Expect::Describe {
                            statement: Some(stmt.server_name.clone()),
                        });
                    }
                    (b'C', Some(_)) => {
                        // The server-side statement stays for other clients;
                        // only this client's name goes.
                        if !self.skipping {
                            self.statements.remove(&name);
                        }
                        self.push(Expect::Synthetic(b'3'));
                    }
                    (tag, None) => {
                        if tag == b'D' && kind == b'S' && name.is_empty() {
                            self.ensure_unnamed();
                        }
                        self.to_backend.extend_from_slice(&f.bytes);
                        self.push(if tag == b'D' {
                            Expect::Describe { statement: None }
                        } else {
                            Expect::Close { stale: None }
                        });
                    }
                    _ => unreachable!("tag is D or C"),
                }
            }
            b'E' => {
                if !self.ensure_backend(false).await {
                    return Ok(());
                }
                self.to_backend.extend_from_slice(&f.bytes);
                self.push(Expect::Execute);
            }
            b'S' => {
                if self.lease.is_none() && self.skipping {
                    // Nothing reached a backend since the error: answer here.
                    self.skipping = false;
                    messages::ready_for_query(&mut self.to_client, self.tx_status);
                    return Ok(());
                }
                if !self.ensure_backend(false).await {
                    return Ok(());
                }
                self.skipping = false;
                self.to_backend.extend_from_slice(&f.bytes);
                if !self.copy_in {
                    self.push(Expect::Sync);
                }
            }
            b'H' => {
                if self.lease.is_some() {
                    self.to_backend.extend_from_slice(&f.bytes);
                }
            }
            b'F' => {
                if !self.ensure_backend(true).await {
                    return Ok(());
                }
                self.to_backend.extend_from_slice(&f.bytes);
                self.pending.push_back(Expect::Simple { settings: vec![] });
            }
            b'd' | b'c' | b'f' => {
                if f.tag != b'd' {
                    self.copy_in = false;
                }
                if self.lease.is_some() {
                    self.to_backend.extend_from_slice(&f.bytes);
                }
            }
            other => {
                return Err(SessionEnd::Protocol(format!(
                    "invalid frontend message type {}",
                    other as char
                )));
            }
        }
        Ok(())
    }

    /// Whether `f` starts a batch that only prepares named statements
    /// (`PQprepare`: Parse… Sync) which tidepool answers itself because no
    /// server connection is free now. The statements are prepared on the
    /// connection that first executes them, as any statement is when the
    /// session moves between connections. Waiting for a connection here
    /// could deadlock a client that prepares with a blocking call while
    /// its other connections hold the pool's server connections in open
    /// transactions (pgbench -M prepared -j N does). A syntax error in
    /// such a statement is reported when it is first executed.
    fn defers_prepare(&mut self, f: &Frame, rest: &[Frame]) -> bool {
        if self.mode != PoolMode::Transaction || !self.at_boundary() {
            return false;
        }
        for m in std::iter::once(f).chain(rest.iter()) {
            match m.tag {
                b'P' => match messages::read_parse(m) {
                    Ok((name, _)) if !name.is_empty() && !self.statements.contains_key(&name) => {}
                    _ => return false,
                },
                b'S' => {
                    return self.write_pool().is_ok_and(|p| p.would_wait());
                }
                _ => return false,
            }
        }
        false
    }

    /// Records a named Parse and answers ParseComplete; the Sync that ends
    /// the batch is answered with ReadyForQuery.
    fn defer_prepare(&mut self, f: &Frame) -> Result<(), SessionEnd> {
        match f.tag {
            b'P' => {
                self.deferring = true;
                let (name, query) =
                    messages::read_parse(f).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                let stmt = Statement::from_parse(f, self.shared.classifier.classify(&query))
                    .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                self.statements.insert(name, Arc::new(stmt));
                self.to_client.extend_from_slice(&[b'1', 0, 0, 0, 4]);
            }
            _ => {
                // Sync: `defers_prepare` saw that the batch ends with it.
                self.deferring = false;
                messages::ready_for_query(&mut self.to_client, self.tx_status);
            }
        }
        Ok(())
    }

    /// Whether `f` starts a unit of work that must wait for the unit before
    /// it to finish: the session works on a standby, and the next unit,
    /// pipelined behind, may need another node (a write, a transaction
    /// begun). Routed once the replies are in, it goes where it belongs;
    /// a unit the previous one leaves in a transaction stays with it.
    fn waits_for_boundary(&self, f: &Frame) -> bool {
        matches!(f.tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
            && (!self.pending.is_empty() || !self.to_backend.is_empty())
            && self.tx_status == b'I'
            && !self.unsynced
            && !self.copy_in
            && !self.skipping
            && !self.deferring
            && self.pins.is_empty()
            && self
                .lease
                .as_ref()
                .is_some_and(|l| Some(lease_node(l)) != self.shared.cluster.primary_id())
    }

    /// Whether the next message starts a new unit of work (a transaction,
    /// or a statement outside one), which may be routed anew.
    fn at_boundary(&self) -> bool {
        self.tx_status == b'I'
            && !self.unsynced
            && self.pending.is_empty()
            && !self.copy_in
            && !self.skipping
            && self.pins.is_empty()
            && self.to_backend.is_empty()
    }

    fn is_admin_command(&self, f: &Frame) -> bool {
        f.tag == b'Q'
            && messages::read_query(f)
                .map(|q| crate::admin::show::answer(&q, &self.shared).is_some())
                .unwrap_or(false)
    }

    /// Records writes for the read-your-writes rules.
    fn note_writes(&mut self, f: &Frame) {
        if !matches!(f.tag, b'Q' | b'P') || !self.shared.rules.load().cfg.enabled {
            return;
        }
        let sql = match f.tag {
            b'Q' => messages::read_query(f).ok().map(|q| q.into_owned()),
            b'P' => messages::read_parse(f).ok().map(|(_, q)| q),
            _ => None,
        };
        let Some(sql) = sql else { return };
        let class = self.shared.classifier.classify(&sql);
        if class.write.is_some() {
            self.routing.wrote = true;
            self.write_open = true;
            if self.tx_status == b'T' || class.begins {
                self.routing.wrote_in_transaction = true;
            }
            self.routing
                .written_tables
                .extend(class.written.iter().cloned());
        }
    }

    /// The class of the unit that starts with `f`: every statement up to
    /// the next Sync (extended protocol) or the query string (simple).
    fn unit_class(&self, f: &Frame, rest: &[Frame]) -> (router::Class, bool) {
        let mut merged = router::Class::default();
        let mut first = true;
        let mut add = |c: &router::Class, merged: &mut router::Class| {
            if first {
                merged.begins = c.begins;
                merged.read_only_tx = c.read_only_tx;
                merged.leading_comment = c.leading_comment;
                merged.hint_primary = c.hint_primary;
                merged.select = c.select;
                first = false;
            } else {
                merged.select &= c.select;
            }
            merged.write = merged.write.or(c.write);
            merged.serializable |= c.serializable;
            merged.tables.extend(c.tables.iter().cloned());
            merged.functions.extend(c.functions.iter().cloned());
        };
        match f.tag {
            b'Q' => {
                let sql = messages::read_query(f).unwrap_or_default();
                let c = self.shared.classifier.classify(&sql);
                add(&c, &mut merged);
                return (merged, false);
            }
            b'F' => {
                merged.write = Some("function call message");
                return (merged, false);
            }
            _ => {}
        }
        let mut complete = false;
        for m in std::iter::once(f).chain(rest.iter()) {
            match m.tag {
                b'P' => match messages::read_parse(m) {
                    Ok((_, q)) => add(&self.shared.classifier.classify(&q), &mut merged),
                    Err(_) => merged.write = Some("malformed Parse"),
                },
                b'B' => match messages::read_bind(m) {
                    Ok((_, name, _)) => match self.statements.get(&name) {
                        Some(stmt) => add(&stmt.class, &mut merged),
                        None if name.is_empty()
                            && self.unnamed.is_some()
                            && !rest.iter().any(|p| p.tag == b'P')
                            && f.tag != b'P' =>
                        {
                            match self.unnamed.as_ref().map(|(p, _)| messages::read_parse(p)) {
                                Some(Ok((_, q))) => {
                                    add(&self.shared.classifier.classify(&q), &mut merged)
                                }
                                _ => merged.write = Some("malformed Parse"),
                            }
                        }
                        None if !rest.iter().any(|p| p.tag == b'P') && f.tag != b'P' => {
                            merged.write = Some("statement prepared outside tidepool's view")
                        }
                        None => {}
                    },
                    Err(_) => merged.write = Some("malformed Bind"),
                },
                b'S' => {
                    complete = true;
                    break;
                }
                b'Q' | b'F' => break,
                _ => {}
            }
        }
        (merged, !complete)
    }

    /// Routes the unit of work that starts with `f` and attaches the
    /// session to the chosen node.
    async fn route_unit(
        &mut self,
        f: &Frame,
        rest: &[Frame],
    ) -> Result<(), (&'static str, String)> {
        if !self.shared.rules.load().cfg.enabled {
            // Everything goes to the primary: no need to read the SQL.
            return self.acquire().await;
        }
        let rules = self.shared.rules.load_full();
        let (class, incomplete) = self.unit_class(f, rest);
        let sql = if f.tag == b'Q' {
            messages::read_query(f).unwrap_or_default()
        } else {
            std::borrow::Cow::Borrowed("")
        };
        let mut facts = router::Facts {
            incomplete,
            pinned: !self.pins.is_empty(),
            ..router::Facts::default()
        };
        let mut reason = router::primary_reason(&rules, &class, &facts, &self.routing);
        if reason.is_none() && !sql.is_empty() && rules.forced_primary(&sql) {
            reason = Some("matches a primary_routing_pattern");
        }
        if reason.is_none() {
            self.catalog_facts(&rules, &class, &mut facts).await;
            reason = router::primary_reason(&rules, &class, &facts, &self.routing);
        }
        let snapshot = self.shared.cluster.snapshot();
        if reason.is_some() {
            // On the primary for a reason that may mean a write.
            self.write_open = true;
        }
        let mut decision = match reason {
            Some(r) => router::Decision {
                node: self.primary().await?,
                reason: r,
            },
            None => {
                let lags = self.shared.lags.load_full();
                let app = self
                    .settings
                    .get("application_name")
                    .map(|v| v.trim_matches('\'').to_string())
                    .unwrap_or_default();
                let client = router::Client {
                    user: &self.user,
                    database: &self.database,
                    application_name: &app,
                };
                let chosen = {
                    let mut rng = rand::rng();
                    router::choose_read(
                        &rules,
                        &snapshot,
                        &lags,
                        &client,
                        &mut self.routing,
                        &mut rng,
                    )
                };
                match chosen {
                    Some(d) => d,
                    None => router::Decision {
                        node: self.primary().await?,
                        reason: "no node can take reads",
                    },
                }
            }
        };
        tracing::debug!(parent: &self.span,
            node = decision.node,
            reason = decision.reason,
            "unit routed"
        );
        let mut snapshot = self.shared.cluster.snapshot();
        if snapshot.node(decision.node).is_none() {
            decision.node = self.primary().await?;
            snapshot = self.shared.cluster.snapshot();
        }
        let Some(node) = snapshot.node(decision.node) else {
            return Err((
                sqlstate::CANNOT_CONNECT_NOW,
                "no primary node is available".to_string(),
            ));
        };
        if rules.cfg.notice_per_node_statement {
            messages::notice(
                &mut self.to_client,
                &format!(
                    "tidepool: node {} ({}, {}) runs this: {}",
                    node.id,
                    node.name,
                    node.role.as_str(),
                    decision.reason
                ),
            );
        }
        if class.select {
            self.shared
                .cluster
                .count(decision.node, |c| c.selects.fetch_add(1, Ordering::Relaxed));
        }
        self.acquire_on(decision.node).await
    }

    /// Fills in what the catalog knows about the unit's functions and
    /// relations, asking the primary about names seen for the first time.
    async fn catalog_facts(
        &self,
        rules: &router::Rules,
        class: &router::Class,
        facts: &mut router::Facts,
    ) {
        let catalog = &self.shared.catalog;
        let db = &self.database;
        let mut unknown_functions = Vec::new();
        for name in &class.functions {
            match rules.function_override(name) {
                Some(true) => facts.volatile_function = true,
                Some(false) => {}
                None => unknown_functions.push(name.clone()),
            }
        }
        if facts.volatile_function {
            return;
        }
        let f_known = catalog.known_functions(db, &unknown_functions);
        let r_known = catalog.known_relations(db, &class.tables);
        if f_known.is_none() || r_known.is_none() {
            let cfg = self.shared.config.load();
            if let Some(p) = router::write_node(&self.shared.cluster.snapshot()) {
                let (host, port) = (p.host.clone(), p.port);
                let tls = self.shared.cluster.tls(p.id);
                let password = self
                    .shared
                    .cluster
                    .check_password(p.id, &host, port, &cfg.health_check)
                    .await
                    .ok()
                    .flatten();
                let fs = if f_known.is_none() {
                    unknown_functions.clone()
                } else {
                    vec![]
                };
                let rs = if r_known.is_none() {
                    class.tables.clone()
                } else {
                    vec![]
                };
                catalog
                    .learn(
                        &host,
                        port,
                        (&tls, password.as_deref()),
                        db,
                        &cfg.health_check,
                        &fs,
                        &rs,
                    )
                    .await;
            }
        }
        facts.volatile_function = catalog
            .known_functions(db, &unknown_functions)
            .unwrap_or(true);
        facts.local_relation = catalog.known_relations(db, &class.tables).unwrap_or(true);
    }

    /// The statement `name` stands for, when statements are renamed.
    fn mapped(&self, name: &str) -> Option<Arc<Statement>> {
        if name.is_empty() || self.skipping {
            return None;
        }
        self.statements.get(name).cloned()
    }

    /// Prepares `stmt` on the attached connection if it is not there yet.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        let conn = self.lease.as_mut().expect("attached").conn();
        if conn.prepared.insert(stmt.server_name.clone()) {
            self.close_if_stale(&stmt.server_name);
            self.to_backend.extend_from_slice(&stmt.parse);
            self.push(Expect::Parse {
                hidden: true,
                server_name: Some(stmt.server_name.clone()),
            });
        }
    }

    /// Session mode: the process id of the server connection the session
    /// logged in on and keeps.
    pub fn own_backend_pid(&mut self) -> Option<i32> {
        if self.mode != PoolMode::Session {
            return None;
        }
        self.lease.as_mut().map(|l| l.conn().pid)
    }

    /// SQL `EXECUTE name` of a statement the client prepared with a Parse
    /// message: the server knows it by tidepool's name for it, so the text
    /// is rewritten to that name. Inside an extended-protocol batch
    /// (`inject`) the statement is prepared on the attached connection
    /// first when it lacks it; a simple query is rewritten only when the
    /// connection has it (a Parse there could not be told apart from the
    /// query's own replies if it failed).
    fn sql_execute(&mut self, sql: &str, inject: bool) -> Option<String> {
        if self.skipping {
            return None;
        }
        let (name, at) = state::executes(sql)?;
        let stmt = self.statements.get(&name)?.clone();
        let conn = self.lease.as_mut()?.conn();
        if inject {
            self.ensure_prepared(&stmt);
        } else if !conn.prepared.contains(&stmt.server_name) {
            return None;
        }
        Some(format!(
            "{}{}{}",
            &sql[..at.start],
            stmt.server_name,
            &sql[at.end..]
        ))
    }

    /// Which server connection the session is attached to.
    fn conn_identity(&mut self) -> (usize, i32) {
        self.lease
            .as_mut()
            .map(|l| (lease_node(l), l.conn().pid))
            .unwrap_or((usize::MAX, 0))
    }

    /// Before a Bind or Describe of the unnamed statement: prepares it on
    /// the attached connection when it was parsed on another one.
    fn ensure_unnamed(&mut self) {
        if self.skipping {
            return;
        }
        let here = self.conn_identity();
        if let Some((parse, at)) = self.unnamed.as_mut()
            && *at != here
        {
            *at = here;
            let parse = parse.bytes.clone();
            self.to_backend.extend_from_slice(&parse);
            self.push(Expect::Parse {
                hidden: true,
                server_name: None,
            });
        }
    }

    /// Before preparing `name` again on the attached connection: closes
    /// the server's copy whose plan it refused (see `ServerConn::stale`).
    fn close_if_stale(&mut self, name: &str) {
        let conn = self.lease.as_mut().expect("attached").conn();
        if conn.stale.remove(name) {
            self.to_backend
                .extend_from_slice(&messages::target_message(b'C', b'S', name));
            self.push(Expect::Close {
                stale: Some(name.to_string()),
            });
        }
    }

    /// Closes tidepool's idle connections to a database the statement
    /// needs free of other sessions (DROP DATABASE and the like), on every
    /// node, waiting briefly for sessions that have just left to hand
    /// theirs back, so that only clients still connected can stand in its
    /// way, as on a direct connection.
    async fn free_database(&self, e: &state::Effects) {
        let Some(db) = &e.frees_database else { return };
        self.shared.catalog.forget_database(db);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let mut in_use = 0;
            self.shared.pools.for_each(|p| {
                if &p.key.database == db {
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

    fn note_pins(&mut self, e: &state::Effects) {
        if self.mode != PoolMode::Transaction {
            return;
        }
        for p in &e.unpins {
            self.pins.remove(p);
        }
        for p in &e.pins {
            if self.pins.insert(*p) {
                self.shared.metrics.pinned.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(parent: &self.span,
                    reason = p.as_str(),
                    "session pinned to its backend connection"
                );
            }
        }
    }

    fn count_statement(&self, _sql: &str) {
        let Some(lease) = &self.lease else { return };
        self.shared.cluster.count(lease_node(lease), |c| {
            c.queries.fetch_add(1, Ordering::Relaxed)
        });
    }

    fn on_backend_frame(&mut self, f: Frame) {
        tracing::trace!(parent: &self.span, tag = %(f.tag as char), pending = ?self.pending, "backend message");
        if f.tag == b'E'
            && let Some(l) = &self.lease
        {
            let e = messages::read_error(&f);
            if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                // The server ends the session and says why; the client hears
                // that once, not again in tidepool's words.
                self.backend_fatal = true;
            }
            if e.severity == "FATAL" && e.code == sqlstate::ADMIN_SHUTDOWN {
                let fault = crate::cluster::Fault::Shutdown(e.message);
                crate::cluster::report_fault(&self.shared, lease_node(l), fault);
            }
        }
        let mut forward = true;
        match f.tag {
            b'Z' => {
                self.tx_status = messages::ready_status(&f);
                if self.write_open && self.tx_status == b'I' {
                    // Committed (or rolled back): from now on the
                    // session's reads need a standby that has it.
                    self.write_open = false;
                    self.routing.wrote_at = Some(std::time::Instant::now());
                }
                self.pop_through_end();
            }
            b'1' => match self.pending.front() {
                Some(Expect::Parse { hidden, .. }) => {
                    forward = !hidden;
                    self.pending.pop_front();
                }
                Some(Expect::Duplicate(_)) => {
                    self.pending.pop_front();
                }
                _ => {}
            },
            b'2' => self.pop_if(|e| matches!(e, Expect::Bind { .. })),
            b'A' => {
                // NotificationResponse: it names the sending backend's
                // process id; the client knows its own and other clients'
                // by the keys tidepool gave them.
                let body = f.body();
                if body.len() >= 4
                    && let Some(l) = self.lease.as_mut()
                {
                    let (own, addr) = (l.conn().pid, l.conn().addr);
                    let sender = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let client = if sender == own {
                        Some(self.client_pid)
                    } else {
                        self.shared.cancels.client_of(addr, sender)
                    };
                    if let Some(pid) = client {
                        forward = false;
                        self.to_client.extend_from_slice(&f.bytes[..5]);
                        self.to_client.extend_from_slice(&pid.to_be_bytes());
                        self.to_client.extend_from_slice(&body[4..]);
                    }
                }
            }
            b'G' => {
                // COPY FROM STDIN: Syncs the client sent before this reply
                // are ignored by the server; it answers only the Sync after
                // CopyDone.
                self.copy_in = true;
                if matches!(self.pending.front(), Some(Expect::Execute)) {
                    while matches!(self.pending.get(1), Some(Expect::Sync)) {
                        self.pending.remove(1);
                    }
                }
            }
            b'3' => {
                if let Some(Expect::Close { stale }) = self.pending.front() {
                    forward = stale.is_none();
                    self.pending.pop_front();
                }
            }
            b'n' | b'T' => self.pop_if(|e| matches!(e, Expect::Describe { .. })),
            b'I' | b's' => self.pop_if(|e| matches!(e, Expect::Execute)),
            b'C' => {
                let body = f.body();
                let tag = &body[..body.len().saturating_sub(1)];
                if tag == b"DEALLOCATE ALL" || tag == b"DISCARD ALL" {
                    // Every prepared statement of the connection is gone,
                    // tidepool's renamed ones too: a later Bind must
                    // prepare again.
                    if let Some(l) = self.lease.as_mut() {
                        l.conn().forget_statements();
                    }
                }
                if let Some(Expect::Simple { settings }) = self.pending.front_mut() {
                    if (tag == b"SET" || tag == b"RESET" || tag == b"DISCARD ALL")
                        && !settings.is_empty()
                    {
                        let change = settings.remove(0);
                        self.confirm_setting(&change);
                    }
                } else {
                    self.pop_if(|e| matches!(e, Expect::Execute));
                }
            }
            b'E' if !matches!(self.pending.front(), Some(Expect::Simple { .. })) => {
                if let Some(
                    Expect::Bind { statement: Some(n) } | Expect::Describe { statement: Some(n) },
                ) = self.pending.front()
                    && messages::read_error(&f).code == sqlstate::FEATURE_NOT_SUPPORTED
                    && let Some(l) = self.lease.as_mut()
                {
                    // "cached plan must not change result type": the
                    // statement's text now means another result; the
                    // client prepares it again, and tidepool with it.
                    let conn = l.conn();
                    if conn.prepared.remove(n) {
                        conn.stale.insert(n.clone());
                    }
                }
                if let Some(Expect::Duplicate(d)) = self.pending.front() {
                    let b = messages::replace_in_error_message(
                        &f,
                        &format!("\"{}\"", d.server_name),
                        &format!("\"{}\"", d.client_name),
                    );
                    self.to_client.extend_from_slice(&b);
                    forward = false;
                }
                // Extended protocol: the server skips to the next Sync.
                while let Some(e) = self.pending.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    match (self.pending.pop_front(), self.lease.as_mut()) {
                        (
                            Some(Expect::Parse {
                                server_name: Some(n),
                                ..
                            }),
                            Some(l),
                        ) => {
                            l.conn().prepared.remove(&n);
                        }
                        (Some(Expect::Close { stale: Some(n) }), Some(l)) => {
                            // Skipped: the server still holds it.
                            l.conn().stale.insert(n);
                        }
                        _ => {}
                    }
                }
                if self.pending.is_empty() {
                    self.skipping = true;
                }
            }
            b'S' => {
                if let Ok((k, v)) = messages::read_parameter_status(&f) {
                    let key = k.to_ascii_lowercase();
                    if TRACKED_REPORTED.contains(&key.as_str()) {
                        let value = quote_literal(&v);
                        self.settings.insert(key.clone(), value.clone());
                        if let Some(l) = self.lease.as_mut() {
                            l.conn().settings.insert(key, value);
                        }
                    }
                    if let Some(l) = self.lease.as_mut() {
                        l.conn().reported.insert(k, v);
                    }
                }
            }
            _ => {}
        }
        if forward {
            self.to_client.extend_from_slice(&f.bytes);
        }
        self.emit_ready_synthetics();
    }

    fn confirm_setting(&mut self, change: &SettingChange) {
        state::apply_change(&mut self.settings, &self.startup_settings, change);
        self.routing.serializable_default = self
            .settings
            .get("default_transaction_isolation")
            .is_some_and(|v| v.to_ascii_lowercase().contains("serializable"));
        if let SettingChange::Several(changes) = change {
            for c in changes {
                self.confirm_setting(c);
            }
            return;
        }
        if let Some(l) = self.lease.as_mut() {
            let conn = l.conn();
            match change {
                SettingChange::Set(k, v) => {
                    conn.settings.insert(k.clone(), v.clone());
                }
                SettingChange::Reset(k) => {
                    conn.settings.remove(k);
                }
                SettingChange::ResetAll => {
                    conn.settings.clear();
                }
                SettingChange::Several(_) => {}
            }
        }
    }

    fn pop_if(&mut self, f: impl Fn(&Expect) -> bool) {
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front();
        }
    }

    /// ReadyForQuery ends a simple query or a Sync.
    fn pop_through_end(&mut self) {
        while let Some(e) = self.pending.pop_front() {
            if matches!(e, Expect::Sync | Expect::Simple { .. }) {
                break;
            }
        }
    }

    fn emit_ready_synthetics(&mut self) {
        while let Some(Expect::Synthetic(tag)) = self.pending.front() {
            expect::emit_synthetic(&mut self.to_client, *tag);
            self.pending.pop_front();
        }
    }

    /// In transaction mode, the connection goes back to its pool as soon as
    /// the client is outside a transaction with nothing pending.
    fn after_backend_batch(&mut self) {
        if self.mode == PoolMode::Transaction
            && self.tx_status == b'I'
            && !self.unsynced
            && self.pending.is_empty()
            && self.pins.is_empty()
            && self.to_backend.is_empty()
        {
            self.release();
        }
    }
}

/// Empties a buffer, giving back memory a large result left behind.
/// Sleeps for `wait`; the timer is made on the first poll, so a disabled
/// `select!` branch costs nothing.
async fn idle_sleep(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > 256 * 1024 {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Replies held for a client that does not read them before tidepool stops
/// reading the server: the server's output then waits in its own socket.
const CLIENT_BACKLOG: usize = 256 * 1024;

/// Replies tidepool waits for from the server before it reads more of a
/// client's pipeline: what the client sends next waits in its socket, as
/// it would in PostgreSQL's, instead of in tidepool's bookkeeping.
const MAX_IN_FLIGHT: usize = 4096;

/// Bytes read from a client while one of its messages waits, to notice
/// that it went away; past this, the rest waits in its socket.
const WATCH_BUFFER: usize = 64 * 1024;

/// One step of `flush_backend`.
enum Pump {
    Client(std::io::Result<usize>),
    Server(Result<Step, BackendError>),
}

fn lease_node(lease: &Lease) -> usize {
    lease.pool().key.node
}

async fn read_backend(lease: &mut Option<Lease>, out: &mut Vec<Frame>) -> Result<(), BackendError> {
    match lease {
        Some(l) => l.conn().read_frames(out).await,
        None => std::future::pending().await,
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
fn pool_setup(shared: &Shared, key: &PoolKey, (host, port): (&str, u16)) -> (PoolLimits, Target) {
    let config = shared.config.load();
    let user = config.user(&key.user);
    let limits = crate::server::pool_limits(&config, &key.user);
    let node = config
        .backends
        .get(key.node)
        .map(|b| b.tls(&config.backend_defaults))
        .unwrap_or_default();
    let target = Target {
        host: host.to_string(),
        port,
        tls: shared.cluster.tls(key.node),
        login: crate::credentials::Login::for_user(user, &node),
        credentials: shared.cluster.credentials().clone(),
    };
    (limits, target)
}
