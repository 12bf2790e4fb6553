//! One client's session: the state machine between a client and the
//! backend connection serving it.
//!
//! The session forwards frames without re-encoding them. It reads only what
//! pooling needs: statement names (so named prepared statements survive a
//! change of backend connection in transaction mode), the ends of responses
//! (so a connection goes back to its pool at ReadyForQuery 'I'), settings
//! and pinning state (see [`state`]).

mod cached;
mod connect;
mod dispatch;
mod expect;
mod login;
mod message;
mod refusal;
mod replies;
mod routing;
pub mod state;
mod statements;
mod tracker;

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::Poll,
};

use bytes::{Buf, BytesMut};

use crate::{
    app::{Runtime, Shared},
    backend::{BackendError, quote_literal},
    cancel::CancelSlot,
    config::PoolMode,
    pool::Lease,
    protocol::{
        frame::{self, Frame, FrameRef, Frames},
        messages::{self, Severity},
        sqlstate,
    },
    router,
    tls::{Reading, Step, Stream},
};
use expect::Expect;
use message::Message;
use refusal::StandbyGuard;
use statements::Statement;
use tracker::{Effect, Tracker};

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

/// The running configuration as a session reads it: the last one it
/// loaded, checked against the current one with a single atomic read
/// (`arc_swap::Cache`) instead of a full load per message.
type ConfigCache = arc_swap::Cache<Arc<arc_swap::ArcSwap<Runtime>>, Arc<Runtime>>;

/// The client's last unnamed Parse (`Session::unnamed`).
struct Unnamed {
    parse: Frame,
    /// The connection (node, backend pid) it was last sent to.
    at: (usize, i32),
    /// Its statement's class, when routing read it.
    class: Option<Arc<router::Class>>,
    /// Its text was read and changes nothing the session carries (no pin,
    /// setting or database to free, no `EXECUTE` to rename): the same
    /// Parse again is forwarded without reading its text again.
    quiet: bool,
    /// The length of its query text when that is valid UTF-8: the same
    /// Parse again is decoded with it, without searching for the text's
    /// end (`Session::parse_again`).
    text_len: Option<u32>,
}

/// Everything one client session holds.
pub struct Session {
    shared: Arc<Shared>,
    /// `shared.config`, cached (see [`ConfigCache`]).
    config: ConfigCache,
    pub user: String,
    pub database: String,
    mode: PoolMode,
    /// Settings the client asked for at login (name → SQL value text).
    startup_settings: crate::backend::Settings,
    /// Settings in force for this client now: the startup settings
    /// themselves (shared, not copied) until the client changes one.
    settings: crate::backend::Settings,
    lease: Option<Lease>,
    /// Session mode: connections to other nodes this session used, kept
    /// with their session state for its next statement there.
    parked: Vec<Lease>,
    routing: router::SessionRouting,
    /// What routing reads of the cluster (snapshot, counters, lags),
    /// cached: made at the first unit load balancing routes, boxed (one
    /// word in a session that never routes).
    views: Option<Box<routing::Views>>,
    pins: state::Pins,
    /// The client's named prepared statements (an ordered map: no
    /// hasher state kept by every client).
    statements: BTreeMap<String, Arc<Statement>>,
    /// The client's last unnamed Parse: a Bind or Describe of the unnamed
    /// statement in a later round trip may be served by another
    /// connection, which gets the Parse first. Boxed (the room is kept
    /// once made, see `set_unnamed`): most idle clients never send one.
    unnamed: Option<Box<Unnamed>>,
    /// Where the protocol stands: replies awaited, batch, COPY,
    /// transaction status.
    tracker: Tracker,
    /// The tracker's effects of one backend message (kept for its room).
    effects: Vec<Effect>,
    /// tidepool is shutting down: the session ends once it is idle.
    shutting_down: bool,
    /// The replies of a unit on a standby, held until it is known that
    /// the standby runs it (see `refusal`).
    guard: Option<Box<StandbyGuard>>,
    /// A unit a standby refused, to run again on the primary (boxed: one
    /// word in every session for what is rare).
    rerun: Option<Box<BytesMut>>,
    /// The refusal came from a managed cluster's writer: the topology
    /// watcher checks it before the unit runs again.
    check_writer: bool,
    /// A refused unit is running again: its replies are the client's,
    /// whatever they are (no second guard).
    rerunning: bool,
    /// The next unit goes to the primary whatever the rules say.
    force_primary: bool,
    /// Answering a batch of named Parse messages and its Sync without a
    /// server connection (see `defers_prepare`).
    deferring: bool,
    /// Query cache: a result being read to keep, the tables the open
    /// transaction writes, and whether this session may use the cache at
    /// all (not after it made a temporary table, which may shadow one).
    capture: Option<Box<cached::Capture>>,
    cache_writes: cached::Writes,
    cache_off: bool,
    /// Messages of a unit answered from the cache still to pass over.
    cache_skip: usize,
    /// Work that may write was sent and its transaction has not ended yet:
    /// when it ends, the session's reads need a standby that replayed it.
    write_open: bool,
    /// The process id this client was given in BackendKeyData: a
    /// notification its own statements raised carries it, as on a direct
    /// connection.
    pub client_pid: i32,
    cancel: Arc<CancelSlot>,
    /// The client asked to cancel while its work waited for a connection:
    /// the request goes to the server once that work is written.
    cancel_after_send: bool,
    to_client: BytesMut,
    to_backend: BytesMut,
    /// This session's pool on each node, by node id (see `pool_on`).
    pools: Vec<Option<Arc<crate::pool::Pool>>>,
    /// Where the client connects from and whether over TLS: with the
    /// user and database, the fields of the session's span (`span`).
    pub peer: Option<(std::net::SocketAddr, bool)>,
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
        let startup_settings = shared.settings.intern(
            startup_params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), quote_literal(v)))
                .collect(),
        );
        Session {
            config: arc_swap::Cache::new(shared.config.clone()),
            shared,
            user,
            database,
            mode,
            settings: startup_settings.clone(),
            startup_settings,
            lease: None,
            parked: Vec::new(),
            routing: router::SessionRouting::default(),
            views: None,
            pins: state::Pins::default(),
            statements: BTreeMap::new(),
            unnamed: None,
            tracker: Tracker::default(),
            effects: Vec::new(),
            shutting_down: false,
            guard: None,
            rerun: None,
            check_writer: false,
            rerunning: false,
            force_primary: false,
            deferring: false,
            write_open: false,
            capture: None,
            cache_writes: cached::Writes::default(),
            cache_off: false,
            cache_skip: 0,
            client_pid: 0,
            cancel,
            cancel_after_send: false,
            // Grown on demand: thousands of idle clients must cost little.
            to_client: BytesMut::new(),
            to_backend: BytesMut::new(),
            pools: Vec::new(),
            peer: None,
        }
    }

    /// Takes a backend connection for login: proves the database and user
    /// work and collects the ParameterStatus values to report.
    /// `startup_params` are the client's, as it wrote them.
    /// On failure: the SQLSTATE (the server's, when it refused) and message.
    pub async fn login(
        &mut self,
        startup_params: &[(String, String)],
    ) -> Result<login::Reported, (&'static str, String)> {
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
                .and_then(|server| login::fast_reported(&server, startup_params))
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
        let reported = self.lease.as_mut().map(|l| {
            login::Reported::of_server(Arc::new(crate::backend::ServerParameters::new(
                l.conn().reported.clone(),
            )))
        });
        if self.mode == PoolMode::Transaction {
            self.release();
        }
        Ok(reported.unwrap_or_default())
    }

    /// The client's span (peer, user, database, TLS): the parent of the
    /// session's log lines, made when one is logged. A span kept for the
    /// session's life would cost every idle client a registry entry with
    /// its formatted fields (about 1 KiB each); it is not entered around
    /// the session loop either (entering it on every poll costs more than
    /// the rest of a short transaction's bookkeeping).
    pub fn span(&self) -> tracing::Span {
        match self.peer {
            Some((peer, tls)) => tracing::info_span!(
                "session",
                %peer,
                user = %self.user,
                database = %self.database,
                tls
            ),
            None => tracing::Span::none(),
        }
    }

    /// Serves the client on `client` until it leaves; `client_buf` holds
    /// what it sent beyond its login. Borrowed, not taken: the caller's
    /// task keeps them once, not also in this future.
    ///
    /// The work of a busy client (`serve`) is boxed and dropped whenever
    /// the client is idle with no server connection: what a client's task
    /// keeps between transactions is its session and the small wait for
    /// its next message (`wait_idle`), not the room of every step of the
    /// work. Thousands of idle clients then cost little each.
    pub async fn run(
        &mut self,
        client: &mut Stream,
        client_buf: &mut BytesMut,
    ) -> Result<(), SessionEnd> {
        // Shutdown reaches the session through its slot in the cancel
        // registry (`CancelRegistry::close_all`), polled in place: a wait
        // on the channel shared by every client would keep a future in
        // each idle client's task, or register under that channel's lock
        // on every turn.
        self.shutting_down = *self.shared.shutdown.borrow();
        if client_buf.is_empty() {
            // The startup packet's room: an idle client holds no buffer.
            *client_buf = BytesMut::new();
        }
        let result = loop {
            // The box is allocated first and the future made in it: its
            // few starting fields are written in place, where `Box::pin`
            // would copy the whole future's size (~1.4 KiB) into the box
            // on every busy turn.
            let serve = Box::write(Box::new_uninit(), self.serve(client, client_buf));
            if let Err(e) = Box::into_pin(serve).await {
                break Err(e);
            }
            if let Err(e) = self.wait_idle(client, client_buf).await {
                break Err(e);
            }
        };
        // Ended by tidepool while idle: the client is told why, as
        // PostgreSQL tells it.
        let farewell = match result {
            Err(SessionEnd::Shutdown) => Some((
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to tidepool shutdown",
            )),
            Err(SessionEnd::IdleTimeout) => Some((
                sqlstate::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout",
            )),
            _ => None,
        };
        if let Some((code, message)) = farewell {
            self.error(Severity::Fatal, code, message, None);
        }
        // What the session had to tell the client last (the farewell, or
        // why its server connection was lost).
        if !self.to_client.is_empty() {
            let _ = client.write_all(&self.to_client).await;
        }
        Box::pin(self.finish()).await;
        result
    }

    /// Waits while the client is idle: for its next message, what its
    /// server connection sends meanwhile (a notification, a parameter's
    /// new value, a FATAL), shutdown, or the idle timeout. All are polled
    /// in place: this wait is what every idle client's task keeps.
    async fn wait_idle(
        &mut self,
        client: &mut Stream,
        client_buf: &mut BytesMut,
    ) -> Result<(), SessionEnd> {
        let idle_timeout = self.config.load().server.client_idle_timeout;
        // Made on the first poll, and only when the timeout is on.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let woke = std::future::poll_fn(|cx| {
            if let Some(l) = self.lease.as_mut()
                && let Poll::Ready(r) = l.conn().poll_replies(cx)
            {
                return Poll::Ready(Woke::Server(r));
            }
            if let Poll::Ready(read) = client.poll_read_more(cx, client_buf) {
                return Poll::Ready(Woke::Session(match read {
                    Ok(0) => Err(SessionEnd::ClientGone),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.into()),
                }));
            }
            if !self.shutting_down && self.cancel.poll_closing(cx).is_ready() {
                return Poll::Ready(Woke::Session(Err(SessionEnd::Shutdown)));
            }
            if !idle_timeout.is_zero() {
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Session(Err(SessionEnd::IdleTimeout)));
                }
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Session(r) => r,
            Woke::Server(read) => self.on_backend_read(read),
        }
    }

    /// Takes what one read of the server connection brought: its frames,
    /// or the connection's loss, which ends the session (the client is
    /// told why by `run`, unless the server's own FATAL already did).
    fn on_backend_read(&mut self, read: Result<(), BackendError>) -> Result<(), SessionEnd> {
        match read.and_then(|()| self.on_replies()) {
            Ok(()) => {
                self.after_backend_batch();
                Ok(())
            }
            Err(e) => {
                if let Some(l) = &self.lease {
                    self.report_fault(lease_node(l), &e);
                }
                self.lease = None;
                self.cancel.clear();
                if !self.tracker.backend_fatal() {
                    self.error(
                        Severity::Fatal,
                        sqlstate::CONNECTION_FAILURE,
                        &format!("lost the backend connection: {e}"),
                        Some("reconnect; tidepool serves new sessions from a healthy node"),
                    );
                }
                Err(SessionEnd::Backend(e.to_string()))
            }
        }
    }

    /// Handles the whole frames the server connection has buffered, in
    /// place in its read buffer (lent out meanwhile, see
    /// [`crate::backend::ServerConn::lend_buffer`]). Handling a reply never
    /// gives the connection up (`after_backend_batch` does, after), so the
    /// buffer goes back to the connection it came from.
    fn on_replies(&mut self) -> Result<(), BackendError> {
        let Some(l) = self.lease.as_mut() else {
            return Ok(());
        };
        let buf = l.conn().lend_buffer();
        let whole = frame::whole(&buf, usize::MAX);
        let n = *whole.as_ref().unwrap_or(&0);
        // Where the run of DataRows being passed on whole started: rows
        // that only the client reads (no guard holds the replies, no
        // result is being kept for the query cache) go to it in one copy
        // with the rows after them, not one by one through
        // `on_backend_frame` (for which a DataRow changes nothing else).
        let mut rows: Option<usize> = None;
        let mut at = 0;
        // Looked at again after each reply handled one by one: handling
        // one may release a guard or stop a capture (never start one).
        let mut plain = self.guard.is_none() && self.capture.is_none();
        for f in frame::each(&buf[..n]) {
            let len = f.bytes.len();
            if f.tag == b'D' && plain {
                rows.get_or_insert(at);
            } else {
                if let Some(start) = rows.take() {
                    self.to_client.extend_from_slice(&buf[start..at]);
                }
                self.on_backend_frame(f);
                plain = self.guard.is_none() && self.capture.is_none();
            }
            at += len;
        }
        if let Some(start) = rows {
            self.to_client.extend_from_slice(&buf[start..n]);
        }
        let l = self
            .lease
            .as_mut()
            .expect("handling a reply keeps the connection");
        l.conn().give_back(buf, n);
        whole.map(drop).map_err(BackendError::from)
    }

    /// The work of a busy client, until it is idle (`Ok`) or the session
    /// ends (`Err`).
    async fn serve(
        &mut self,
        client: &mut Stream,
        client_buf: &mut BytesMut,
    ) -> Result<(), SessionEnd> {
        loop {
            if let Some(unit) = self.rerun.take() {
                Box::pin(self.rerun_on_primary(*unit)).await?;
            }
            // The turn: whatever whole client frames are buffered, read in
            // place. The buffer is taken out of `client_buf` for the turn,
            // so that a message's wait can watch the client (read into
            // `client_buf`) while the frames are borrowed from it.
            let mut turn = std::mem::take(client_buf);
            let mut r = Ok(());
            let whole = match frame::whole(&turn, frame::MAX_MESSAGE) {
                Ok(n) => n,
                Err(e) => {
                    self.error(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid message from client: {e}"),
                        None,
                    );
                    r = Err(SessionEnd::Protocol(e.to_string()));
                    0
                }
            };
            // Inline: `serve` is itself boxed while the client is busy.
            // What the work may await that is large and rare (opening a
            // connection, the catalog, the cache's stores, a cancel's
            // connection) is boxed where it is awaited, so that a busy
            // client's box stays small.
            let mut used = whole;
            if whole > 0 {
                let frames: Frames<'_> = frame::each(&turn[..whole]).collect();
                match self.handle_frames(&frames, client, client_buf).await {
                    Ok(n) => used = n,
                    Err(e) => r = Err(e),
                }
            }
            // A unit pipelined behind one still running on a standby
            // waits at the front of the buffer, read again once the
            // replies are in (see `waits_for_boundary`); no more is read
            // meanwhile.
            let holding = used < whole;
            // What is left of the turn (a unit held, a partial frame)
            // comes before what the client sent during it.
            turn.advance(used);
            if !turn.is_empty() {
                turn.extend_from_slice(client_buf);
                let mut spare = std::mem::replace(client_buf, turn);
                spare.clear();
                crate::tls::recycle(&mut spare);
            } else {
                // Emptied: its room goes back to the worker's spares (see
                // `tls::recycle`), an idle client keeps none.
                crate::tls::recycle(&mut turn);
            }
            if let Err(e) = self.flush_backend(client).await {
                r = Err(e);
            }
            // Nothing to write is no write on plain TCP. On TLS the call
            // also flushes what rustls still holds from a partial write in
            // `flush_backend`, with nothing new to write.
            if !self.to_client.is_empty() || client.is_tls() {
                client.write_all(&self.to_client).await?;
            }
            shrink(&mut self.to_client);
            r?;
            if self.rerun.is_some() {
                continue;
            }
            let idle = self.is_idle();
            if self.shutting_down && idle {
                return Err(SessionEnd::Shutdown);
            }
            if holding && !self.waits_for_boundary(client_buf[0]) {
                // The replies came in while writing: route the next unit.
                continue;
            }
            if idle && !holding {
                // Nothing in flight and nothing held: the wait is `run`'s.
                // An idle client keeps no more room than a small reply
                // takes: a large result's is given back.
                for buf in [&mut self.to_client, &mut self.to_backend] {
                    if buf.capacity() > IDLE_ROOM {
                        *buf = BytesMut::new();
                    }
                }
                // So does its read buffer: room a wait's watch of the
                // client took and did not fill goes to the spares.
                crate::tls::recycle(client_buf);
                // So does a server connection it keeps (session pooling):
                // its idle wait takes a buffer only when the server sends.
                for lease in self.lease.iter_mut().chain(self.parked.iter_mut()) {
                    lease.conn().trim_buffer(0);
                }
                return Ok(());
            }
            tokio::select! {
                // The server's replies first: an error reaches the client
                // before more of what it pipelined is read.
                biased;
                r = read_backend(&mut self.lease), if self.lease.is_some() => {
                    self.on_backend_read(r)?;
                }
                // On plain TCP, memory is taken only while there is
                // something to read: an idle client holds no buffer.
                read = client.read_more(client_buf), if self.tracker.awaited() < MAX_IN_FLIGHT && !holding => {
                    match read {
                        Ok(0) => return Err(SessionEnd::ClientGone),
                        Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Handles the client's whole messages of one turn, in order, and
    /// says how many of the turn's bytes it handled: a unit pipelined
    /// behind one still running on a standby is left unread.
    async fn handle_frames(
        &mut self,
        frames: &[FrameRef<'_>],
        client: &mut Stream,
        client_buf: &mut BytesMut,
    ) -> Result<usize, SessionEnd> {
        let mut handled = 0;
        // The rest of the batch is visible when a unit of work is routed.
        for (i, &f) in frames.iter().enumerate() {
            if self.waits_for_boundary(f.tag) {
                break;
            }
            handled += f.bytes.len();
            let rest = &frames[i + 1..];
            let r = if let Some(r) = self.on_client_frame_now(f) {
                r
            } else {
                // Made in place: a busy session's message future is not
                // moved after it is made.
                let mut work = std::pin::pin!(self.on_client_frame(f, rest));
                // Most messages are handled without a wait: polled once
                // (first, as the watch below would poll it too).
                match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
                    Poll::Ready(r) => r,
                    // A message may wait (for a server connection, a
                    // primary, settings): a client that goes away
                    // meanwhile is not served after it left, and its
                    // place in the queue goes to those still there.
                    Poll::Pending => {
                        let mut watch = true;
                        loop {
                            tokio::select! {
                                biased;
                                r = &mut work => break r,
                                read = client.read_more(client_buf), if watch => match read {
                                    Ok(0) | Err(_) => break Err(SessionEnd::ClientGone),
                                    // What it sends meanwhile waits its turn;
                                    // beyond a bound it waits in its socket.
                                    Ok(_) => watch = client_buf.len() < WATCH_BUFFER,
                                },
                            }
                        }
                    }
                }
            };
            if let Err(SessionEnd::Protocol(m)) = &r {
                // A malformed message ends the session, as in PostgreSQL,
                // and the client is told why first.
                self.error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, m, None);
            }
            r?;
        }
        Ok(handled)
    }

    fn is_idle(&self) -> bool {
        self.tracker.is_idle() && self.to_backend.is_empty()
    }

    /// Returns the backend connection at the end of the session.
    async fn finish(&mut self) {
        self.cancel.clear();
        let reset = self.config.load().pool.reset_query.clone();
        for mut lease in std::mem::take(&mut self.parked) {
            // Parked connections are idle: reset and return them.
            let conn = lease.conn();
            if reset.trim().is_empty() || conn.run_silent(&reset).await.is_ok() {
                conn.settings = Arc::default();
                conn.forget_statements();
                lease.release();
            }
        }
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        if !self.tracker.is_idle() {
            // The client left mid-statement, mid-transaction, or inside an
            // extended-protocol batch not yet closed by Sync (an implicit
            // transaction the next client's statement would commit, or a
            // server skipping to a Sync that never comes). Cancel what
            // runs so the server notices at once, then close the
            // connection: the server rolls the work back.
            let target = lease.conn().cancel.clone();
            if self.tracker.awaited() > 0 {
                tokio::spawn(async move {
                    let _ = crate::backend::send_cancel(&target).await;
                });
            }
            return;
        }
        let reset = match self.mode {
            PoolMode::Session => self.config.load().pool.reset_query.clone(),
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
            conn.settings = Arc::default();
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
        // A cancel that came while the work waited for a connection: the
        // work is written below, then the cancel follows it, as it would
        // have reached the server running it on a direct connection.
        let cancel_after = std::mem::take(&mut self.cancel_after_send);
        if self.to_backend.is_empty() {
            return Ok(());
        }
        let Some(lease) = self.lease.as_ref() else {
            self.to_backend.clear();
            return Ok(());
        };
        let node = lease_node(lease);
        let mut sent = 0;
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
                let reading = match (self.to_client.len() < CLIENT_BACKLOG, sent) {
                    (false, _) => Reading::Off,
                    (true, 0) => Reading::WhenBlocked,
                    (true, _) => Reading::First,
                };
                l.conn()
                    .poll_write_reading(cx, &self.to_backend[sent..], reading)
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
                    if let Err(e) = self.on_replies() {
                        break Err(e);
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
        // Sent before the connection can go back to its pool (the replies
        // are read after), and only while the work is still running: a late
        // cancel must not reach another client's work. Boxed: a new
        // connection (TLS, perhaps) is large and rare.
        if cancel_after
            && self.tracker.awaited() > 0
            && let Some(target) = self.cancel.get()
            && let Err(e) = Box::pin(crate::backend::send_cancel(&target)).await
        {
            tracing::warn!(addr = %target.addr, error = %e, "could not forward a cancel request");
        }
        if read_any {
            self.after_backend_batch();
        }
        Ok(())
    }

    /// Keeps the client's last unnamed Parse, where it was sent and its
    /// class, in the room the last one had. Detached from the read it came
    /// in (16 KiB or more), which an idle client would otherwise hold for
    /// as long as it keeps its unnamed statement. The same Parse again (a
    /// driver's unnamed statement, at each execution) is not copied again.
    /// `quiet`: its text was read and changes nothing (see
    /// [`Unnamed::quiet`]); `text_len`: see [`Unnamed::text_len`] (the
    /// caller has the text decoded).
    fn set_unnamed(
        &mut self,
        parse: FrameRef<'_>,
        at: (usize, i32),
        class: Option<Arc<router::Class>>,
        quiet: bool,
        text_len: Option<u32>,
    ) {
        let new = |parse: FrameRef<'_>, class| Unnamed {
            parse: parse.detached(),
            at,
            class,
            quiet,
            text_len,
        };
        match &mut self.unnamed {
            Some(kept) if kept.parse.bytes == parse.bytes => {
                kept.at = at;
                kept.quiet = quiet;
                if class.is_some() {
                    kept.class = class;
                }
            }
            Some(kept) => **kept = new(parse, class),
            None => self.unnamed = Some(Box::new(new(parse, class))),
        }
    }

    /// `f` decoded with what the session kept of its last unnamed Parse,
    /// when `f` is that Parse again, byte for byte (a driver's unnamed
    /// statement, at each execution): its query text is where it was, so
    /// its end is not searched for again. `None`: `f` is decoded as any
    /// message is.
    fn parse_again<'a>(&self, f: FrameRef<'a>) -> Option<Message<'a>> {
        let kept = self.unnamed.as_deref()?;
        let len = kept.text_len?;
        if f.tag != b'P' || kept.parse.bytes != f.bytes {
            return None;
        }
        message::decode_parse_again(f, len)
    }

    /// Whether the client's kept unnamed Parse was read and found to
    /// change nothing (see [`Unnamed::quiet`]).
    fn unnamed_quiet(&self) -> bool {
        self.unnamed.as_deref().is_some_and(|kept| kept.quiet)
    }

    /// The class kept with the client's last unnamed Parse.
    fn kept_unnamed_class(&self) -> Option<Arc<router::Class>> {
        self.unnamed.as_deref()?.class.clone()
    }

    fn push(&mut self, e: Expect) {
        self.tracker.expect(e, &mut self.to_client);
    }

    /// Session mode: the process id of the server connection the session
    /// logged in on and keeps.
    pub fn own_backend_pid(&mut self) -> Option<i32> {
        if self.mode != PoolMode::Session {
            return None;
        }
        self.lease.as_mut().map(|l| l.conn().pid)
    }

    fn note_pins(&mut self, e: &state::Effects) {
        if self.mode != PoolMode::Transaction {
            return;
        }
        for p in &e.unpins {
            self.pins.remove(*p);
        }
        for p in &e.pins {
            if self.pins.insert(*p) {
                self.shared.metrics.pinned.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(parent: &self.span(),
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
}

/// Empties a buffer, giving back memory a large result left behind.
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > 256 * 1024 {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Room an idle client keeps in each of its write buffers (what an OLTP
/// statement's replies take); more is given back when it goes idle.
const IDLE_ROOM: usize = 1024;

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

/// What ended an idle wait (`wait_idle`): the server connection was read,
/// or the client sent more (`Ok`) or the session is over.
enum Woke {
    Server(Result<(), BackendError>),
    Session(Result<(), SessionEnd>),
}

/// One step of `flush_backend`.
enum Pump {
    Client(std::io::Result<usize>),
    Server(Result<Step, BackendError>),
}

fn lease_node(lease: &Lease) -> usize {
    lease.pool().key.node
}

/// Waits for the server's next whole frames, polled in place (see
/// [`crate::backend::ServerConn::poll_replies`]).
fn read_backend(lease: &mut Option<Lease>) -> impl Future<Output = Result<(), BackendError>> + '_ {
    std::future::poll_fn(move |cx| match lease {
        Some(l) => l.conn().poll_replies(cx),
        None => Poll::Pending,
    })
}
