//! One connection from tidepool to a PostgreSQL server.
//!
//! tidepool logs in as the client's user (md5, SCRAM-SHA-256 or cleartext,
//! with `postgres-protocol` doing the client side of each), then the session
//! forwards frames both ways. The connection remembers what pooling needs:
//! the server's reported parameters, the settings tidepool applied, and which
//! named statements it has prepared.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::{
    protocol::{
        frame::{self, Frame, FrameError},
        messages::{self, ErrorFields},
    },
    tls::{BackendTls, Stream, connect::TlsError},
};

pub use crate::tls::stream::try_read_drained;

/// Session settings, as SQL value text keyed by lower-case name.
pub type Settings = Arc<BTreeMap<String, String>>;

/// A statement's name on the server (`tp_` + a digest of its content, see
/// `session::statements`): shared, not copied, by the session's statement,
/// the connections that have it and the replies awaited for it.
pub type StatementName = Arc<str>;

/// A connection's statement names: looked up at every Bind of a named
/// statement, with a fast hash (the names are digests tidepool made, and
/// the seed is the process's own).
pub type StatementNames = HashSet<StatementName, foldhash::fast::RandomState>;

/// Most distinct startup settings kept shared (see [`SettingsTable`]).
const SETTINGS_KEPT: usize = 64;

/// Equal startup settings, shared as one map: sessions that log in with
/// the same settings (the clients of one application) hold the same map,
/// so a pooled connection last used by one of them is found equal to the
/// next by pointer (`ServerConn::settings_match`), not map to map at each
/// checkout. A map no session or connection holds any more is dropped
/// when a new one comes in; beyond `SETTINGS_KEPT` distinct maps, a new
/// one is not kept (those sessions compare maps, as before).
#[derive(Default)]
pub struct SettingsTable {
    maps: std::sync::Mutex<Vec<Settings>>,
}

impl SettingsTable {
    /// The table's map equal to `map`, or `map` itself (kept for the next
    /// session while there is room).
    pub fn intern(&self, map: BTreeMap<String, String>) -> Settings {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = maps.iter().find(|m| ***m == map) {
            return m.clone();
        }
        maps.retain(|m| Arc::strong_count(m) > 1);
        let m = Arc::new(map);
        if maps.len() < SETTINGS_KEPT {
            maps.push(m.clone());
        }
        m
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.maps.lock().unwrap().len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr} over TLS: {source}")]
    Tls { addr: String, source: TlsError },
    #[error("timed out after {0:?} connecting to the backend")]
    Timeout(Duration),
    #[error("the backend did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("backend refused the login: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    #[error("backend asks for a password but none is configured for this user")]
    NoPassword,
    #[error("{0}")]
    Credentials(String),
    #[error("backend asks for an authentication method tidepool does not speak ({0})")]
    UnsupportedAuth(String),
    #[error("backend connection closed")]
    Closed,
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend protocol: {0}")]
    Protocol(String),
    #[error("backend error: {} ({})", .0.message, .0.code)]
    Server(ErrorFields),
}

impl From<FrameError> for BackendError {
    fn from(e: FrameError) -> Self {
        BackendError::Protocol(e.to_string())
    }
}

/// Longest wait for a statement tidepool runs itself (settings, the reset
/// query): they take microseconds; a server that does not answer in this
/// time has its connection closed rather than holding the client forever.
const SILENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to connect.
pub struct ConnectParams<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    /// Extra startup parameters (application_name, client_encoding, …).
    pub options: &'a [(String, String)],
    pub timeout: Duration,
    /// The node's TLS settings.
    pub tls: &'a Arc<BackendTls>,
}

/// Where a CancelRequest for one backend connection goes, and how: the
/// way the connection itself went (TLS when it is TLS).
#[derive(Debug)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: Bytes,
    /// The TLS settings and host name, when the connection is TLS.
    pub tls: Option<(Arc<BackendTls>, String)>,
}

/// A server's parameters as it reported them at login, kept by its pool
/// for the clients that log in without a server connection: the values,
/// and their ParameterStatus messages (in name order) encoded once, so a
/// client that asks for nothing of its own is told them with one copy.
#[derive(Debug, Default)]
pub struct ServerParameters {
    values: BTreeMap<String, String>,
    encoded: Vec<u8>,
    /// Where each value's message starts in `encoded`, in name order.
    starts: Vec<usize>,
}

impl ServerParameters {
    pub fn new(values: BTreeMap<String, String>) -> ServerParameters {
        let mut out = BytesMut::new();
        let mut starts = Vec::with_capacity(values.len());
        for (k, v) in &values {
            starts.push(out.len());
            messages::parameter_status(&mut out, k, v);
        }
        ServerParameters {
            values,
            encoded: out.to_vec(),
            starts,
        }
    }

    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// One ParameterStatus per value, in name order.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The encoded message of the `i`th value in name order.
    pub fn message(&self, i: usize) -> std::ops::Range<usize> {
        let end = self
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.encoded.len());
        self.starts[i]..end
    }
}

/// A logged-in backend connection.
pub struct ServerConn {
    stream: Stream,
    buf: BytesMut,
    /// Index of the node in the node table.
    pub node: usize,
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: Bytes,
    /// What a cancel request for this connection needs.
    pub cancel: Arc<CancelTarget>,
    /// Parameters the server reported with ParameterStatus.
    pub reported: BTreeMap<String, String>,
    /// Session settings in force on this connection, as SQL value text,
    /// keyed by lower-case name. Shared with the session whose settings
    /// they were found equal to last (see `settings_match`), copied on
    /// write.
    pub settings: Settings,
    /// Server-side names of statements prepared on this connection.
    pub prepared: StatementNames,
    /// Statements still prepared on the server whose plan the server
    /// refused after a schema change ("cached plan must not change result
    /// type"): closed and prepared again before their next use.
    pub stale: StatementNames,
    pub created: Instant,
    pub last_used: Instant,
    /// When, idle in its pool, it is past the pool's limits (its idle
    /// timeout or the end of its lifetime, whichever is first); set by
    /// the pool at check-in, `None` for never.
    pub idle_until: Option<Instant>,
    /// The worker thread whose runtime the socket is registered with
    /// (`server::workers`); the pool keeps it idle there.
    pub worker: usize,
}

impl ServerConn {
    /// Gives back the read buffer's room beyond `keep` bytes when nothing
    /// is buffered: a large result's room is not kept while the
    /// connection waits (idle in its pool, or kept by an idle session).
    pub fn trim_buffer(&mut self, keep: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep {
            self.buf = BytesMut::new();
        }
    }

    /// Every prepared statement of the connection is gone (DISCARD ALL,
    /// DEALLOCATE ALL).
    pub fn forget_statements(&mut self) {
        self.prepared.clear();
        self.stale.clear();
    }

    /// The connection, its socket registered with the runtime of `worker`
    /// (the current thread's): a worker that takes a connection another
    /// worker opened moves it, so its readiness no longer wakes this
    /// worker from the other's thread. A TLS connection stays where it is
    /// (its session cannot be taken apart and put back).
    pub fn rehome(&mut self, worker: usize) -> std::io::Result<()> {
        if self.worker != worker && !self.stream.is_tls() {
            self.stream.rehome()?;
            self.worker = worker;
        }
        Ok(())
    }

    /// Connects and logs in, within `p.timeout` as a whole.
    pub async fn connect(node: usize, p: &ConnectParams<'_>) -> Result<ServerConn, BackendError> {
        tokio::time::timeout(p.timeout, Self::connect_inner(node, p))
            .await
            .map_err(|_| BackendError::Timeout(p.timeout))?
    }

    async fn connect_inner(node: usize, p: &ConnectParams<'_>) -> Result<ServerConn, BackendError> {
        // Resolved on every connect, so a DNS endpoint that moves (RDS,
        // Aurora) is followed.
        let stream = TcpStream::connect((p.host, p.port))
            .await
            .map_err(|source| BackendError::Connect {
                addr: format!("{}:{}", p.host, p.port),
                source,
            })?;
        stream.set_nodelay(true)?;
        let addr = stream.peer_addr()?;
        let stream = p
            .tls
            .negotiate(stream, p.host)
            .await
            .map_err(|source| BackendError::Tls {
                addr: format!("{}:{}", p.host, p.port),
                source,
            })?;
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            node,
            addr,
            pid: 0,
            secret: Bytes::new(),
            cancel: Arc::new(CancelTarget {
                addr,
                pid: 0,
                secret: Bytes::new(),
                tls: None,
            }),
            reported: BTreeMap::new(),
            settings: Arc::default(),
            prepared: StatementNames::default(),
            stale: StatementNames::default(),
            created: Instant::now(),
            last_used: Instant::now(),
            idle_until: None,
            worker: crate::worker::current().unwrap_or(0),
        };
        let mut startup: Vec<(&str, &str)> = vec![("user", p.user), ("database", p.database)];
        for (k, v) in p.options {
            startup.push((k, v));
        }
        let mut out = BytesMut::new();
        messages::startup(&mut out, &startup);
        conn.stream.write_all(&out).await?;
        if let Err(mut e) = conn.authenticate(p).await {
            if let BackendError::Refused(f) = &mut e
                && !conn.stream.is_tls()
                && let Some(hint) = p.tls.explain_refusal(&f.message)
            {
                f.message = format!("{} ({hint})", f.message);
            }
            return Err(e);
        }
        conn.cancel = Arc::new(CancelTarget {
            addr,
            pid: conn.pid,
            secret: conn.secret.clone(),
            tls: conn
                .stream
                .is_tls()
                .then(|| (p.tls.clone(), p.host.to_string())),
        });
        if !p.options.is_empty() {
            let settings = Arc::make_mut(&mut conn.settings);
            for (k, v) in p.options {
                settings.insert(k.to_ascii_lowercase(), quote_literal(v));
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, p: &ConnectParams<'_>) -> Result<(), BackendError> {
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {
                    let body = f.body();
                    if body.len() < 4 {
                        return Err(BackendError::Protocol(
                            "short authentication message".into(),
                        ));
                    }
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        3 => {
                            let pw = p.password.ok_or(BackendError::NoPassword)?;
                            messages::password(&mut out, pw);
                        }
                        5 => {
                            let pw = p.password.ok_or(BackendError::NoPassword)?;
                            let salt: [u8; 4] = data
                                .try_into()
                                .map_err(|_| BackendError::Protocol("bad md5 salt".into()))?;
                            messages::password(
                                &mut out,
                                &md5_hash(p.user.as_bytes(), pw.as_bytes(), salt),
                            );
                        }
                        10 => {
                            let pw = p.password.ok_or(BackendError::NoPassword)?;
                            let mechs: Vec<&[u8]> =
                                data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            if !mechs.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(BackendError::UnsupportedAuth(
                                    String::from_utf8_lossy(data).replace('\0', " "),
                                ));
                            }
                            // Over TLS, bind the exchange to the server's
                            // certificate when the server offers it.
                            let end_point = self
                                .stream
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(crate::tls::end_point_hash);
                            let plus = mechs.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
                            let (mechanism, binding) = match end_point {
                                Some(h) if plus => (
                                    "SCRAM-SHA-256-PLUS",
                                    sasl::ChannelBinding::tls_server_end_point(h),
                                ),
                                Some(_) => ("SCRAM-SHA-256", sasl::ChannelBinding::unrequested()),
                                None => ("SCRAM-SHA-256", sasl::ChannelBinding::unsupported()),
                            };
                            let s = sasl::ScramSha256::new(pw.as_bytes(), binding);
                            messages::sasl_initial_response(&mut out, mechanism, s.message());
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                BackendError::Protocol("SASL out of order".into())
                            })?;
                            s.update(data)
                                .map_err(|e| BackendError::Protocol(e.to_string()))?;
                            messages::sasl_response(&mut out, s.message());
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                BackendError::Protocol("SASL out of order".into())
                            })?;
                            s.finish(data)
                                .map_err(|e| BackendError::Protocol(e.to_string()))?;
                        }
                        other => {
                            return Err(BackendError::UnsupportedAuth(format!("code {other}")));
                        }
                    }
                    if !out.is_empty() {
                        self.stream.write_all(&out).await?;
                    }
                }
                b'S' => {
                    let (k, v) = messages::read_parameter_status(&f)?;
                    self.reported.insert(k, v);
                }
                b'K' => {
                    if let Some((pid, secret)) = messages::read_backend_key_data(&f) {
                        self.pid = pid;
                        self.secret = secret;
                    }
                }
                b'E' => return Err(BackendError::Refused(messages::read_error(&f))),
                b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(BackendError::Protocol(format!(
                        "unexpected message '{}' during login",
                        other as char
                    )));
                }
            }
        }
    }

    /// Waits for the server to send more and adds it to the buffer.
    async fn fill(&mut self) -> Result<(), BackendError> {
        match self.stream.read_more(&mut self.buf).await? {
            0 => Err(BackendError::Closed),
            _ => Ok(()),
        }
    }

    /// Whether an idle connection is still usable: nothing buffered, and
    /// the socket neither closed nor holding bytes nobody asked for (a
    /// server that terminated the backend sends FATAL, then closes). Costs
    /// no system call for a healthy connection: tokio answers from the
    /// readiness it last saw, which a drained read cleared.
    pub fn is_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.tcp().try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Reads the next whole frame.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            if let Some(f) = frame::take(&mut self.buf, usize::MAX)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Waits until at least one whole frame is buffered (see
    /// [`ServerConn::lend_buffer`]), polled in place: a session waiting
    /// for its server holds no future for the wait. Cancel-safe: bytes
    /// read stay in the buffer.
    pub fn poll_replies(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BackendError>> {
        use std::task::Poll;
        loop {
            if frame::check(&self.buf, usize::MAX)?.is_some() {
                return Poll::Ready(Ok(()));
            }
            match self.stream.poll_read_more(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(BackendError::Closed)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Lends the read buffer out, so that its whole frames are handled in
    /// place (`frame::whole`, `frame::each`: no copy and no reference count
    /// per frame) while the connection is used otherwise; the caller gives
    /// it back with [`ServerConn::give_back`].
    pub fn lend_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Takes back the buffer [`ServerConn::lend_buffer`] lent, past the
    /// `handled` bytes of whole frames its borrower handled; what follows
    /// them (part of a frame) stays for the next read.
    pub fn give_back(&mut self, mut buf: BytesMut, handled: usize) {
        debug_assert!(self.buf.is_empty(), "read while its buffer was lent out");
        buf.advance(handled);
        self.buf = buf;
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// One step of writing `data` to the server while reading what it
    /// sends meanwhile, as `reading` says (see
    /// [`Stream::poll_write_reading`]); frames read wait in the
    /// connection's buffer for [`ServerConn::lend_buffer`].
    pub fn poll_write_reading(
        &mut self,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
        reading: crate::tls::Reading,
    ) -> std::task::Poll<Result<crate::tls::Step, BackendError>> {
        self.stream
            .poll_write_reading(cx, data, &mut self.buf, reading)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => BackendError::Closed,
                _ => e.into(),
            })
    }

    /// Runs `sql` as a simple query and waits for its end, keeping the
    /// results to itself. Used for settings and resets, never for client SQL.
    pub async fn run_silent(&mut self, sql: &str) -> Result<(), BackendError> {
        tokio::time::timeout(SILENT_TIMEOUT, self.run_silent_inner(sql))
            .await
            .map_err(|_| BackendError::NoAnswer(SILENT_TIMEOUT))?
    }

    async fn run_silent_inner(&mut self, sql: &str) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.write_all(&out).await?;
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'E' => error = Some(messages::read_error(&f)),
                b'S' => {
                    let (k, v) = messages::read_parameter_status(&f)?;
                    self.reported.insert(k, v);
                }
                b'Z' => {
                    return match error {
                        Some(e) => Err(BackendError::Server(e)),
                        None if messages::ready_status(&f) != b'I' => Err(BackendError::Protocol(
                            "connection left inside a transaction".into(),
                        )),
                        None => Ok(()),
                    };
                }
                _ => {}
            }
        }
    }

    /// Whether this connection's session settings are `wanted` already:
    /// the usual case, clients of a pool set the same things. Sessions
    /// with equal startup settings hold one map ([`SettingsTable`]), so
    /// this is mostly a pointer comparison; found equal map to map, the
    /// connection shares `wanted`'s map from then on.
    pub fn settings_match(&mut self, wanted: &Settings) -> bool {
        if Arc::ptr_eq(&self.settings, wanted) {
            return true;
        }
        if *self.settings == **wanted {
            self.settings = wanted.clone();
            return true;
        }
        false
    }

    /// Brings this connection's session settings to `wanted` (SQL value text
    /// keyed by lower-case name) with as few statements as possible.
    /// Callers compare first (`settings_match`): an equal connection, the
    /// usual case, makes no future, and the maps are not compared twice.
    pub async fn apply_settings(&mut self, wanted: &Settings) -> Result<(), BackendError> {
        // Boxed: a statement's round trip is a large future, and this is
        // part of every busy session's future.
        Box::pin(self.change_settings(wanted)).await
    }

    /// Runs the SET and RESET statements that make the connection's
    /// settings `wanted`.
    async fn change_settings(&mut self, wanted: &Settings) -> Result<(), BackendError> {
        let mut sql = String::new();
        for (k, v) in wanted.iter() {
            if self.settings.get(k) != Some(v) {
                sql.push_str(&format!("SET {} TO {};", quote_ident(k), v));
            }
        }
        for k in self.settings.keys() {
            if !wanted.contains_key(k) {
                sql.push_str(&format!("RESET {};", quote_ident(k)));
            }
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.run_silent(&sql).await?;
        self.settings = wanted.clone();
        Ok(())
    }
}

/// Sends a CancelRequest to the server a connection is on, the way the
/// connection went (over TLS when it is TLS).
pub async fn send_cancel(target: &CancelTarget) -> Result<(), BackendError> {
    let t = Duration::from_secs(5);
    let addr = target.addr;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        match &target.tls {
            Some((tls, host)) => {
                tls.negotiate(tcp, host)
                    .await
                    .map_err(|source| BackendError::Tls {
                        addr: addr.to_string(),
                        source,
                    })
            }
            None => Ok(Stream::Plain(tcp)),
        }
    };
    let mut stream = tokio::time::timeout(t, connect)
        .await
        .map_err(|_| BackendError::Timeout(t))??;
    let mut out = BytesMut::new();
    messages::cancel_request(&mut out, target.pid, &target.secret);
    stream.write_all(&out).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(t, stream.read(&mut sink)).await;
    Ok(())
}

/// `value` as an SQL string literal that means the same whatever the
/// connection's `standard_conforming_strings` (as PostgreSQL's own
/// `quote_literal()`): with a backslash in it, an escape string `E'…'`
/// with backslashes doubled — in a plain `'…'` a backslash would escape
/// the closing quote when the setting is off, and the rest of the value
/// would run as SQL.
pub fn quote_literal(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        quoted.push('E');
    }
    quoted.push('\'');
    // Quotes and backslashes are ASCII: the text between them is copied
    // as it is.
    let mut rest = value;
    while let Some(i) = rest.find(['\'', '\\']) {
        quoted.push_str(&rest[..=i]);
        quoted.push_str(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    quoted.push_str(rest);
    quoted.push('\'');
    quoted
}

/// `name` as an SQL identifier, quoted only when needed. Dotted names
/// (custom settings such as `app.user_id`) are quoted part by part.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit())
            {
                part.to_string()
            } else {
                format!("\"{}\"", part.replace('"', "\"\""))
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted_safely() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_literal(r"a\'; drop table t; --"),
            r"E'a\\''; drop table t; --'"
        );
        assert_eq!(quote_literal(r"C:\dir"), r"E'C:\\dir'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("''"), "''''''");
        assert_eq!(quote_literal("日本'語\\ü"), "E'日本''語\\\\ü'");
        assert_eq!(quote_ident("search_path"), "search_path");
        assert_eq!(quote_ident("DateStyle"), "\"DateStyle\"");
        assert_eq!(quote_ident("app.user_id"), "app.user_id");
        assert_eq!(quote_ident("x\"y"), "\"x\"\"y\"");
    }

    #[test]
    fn equal_startup_settings_are_one_shared_map() {
        let table = SettingsTable::default();
        let map =
            |app: &str| BTreeMap::from([("application_name".to_string(), quote_literal(app))]);
        let a = table.intern(map("billing"));
        let b = table.intern(map("billing"));
        assert!(Arc::ptr_eq(&a, &b), "equal settings share one map");
        let c = table.intern(map("reports"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, map("reports"));
        // A map no one holds any more is dropped when a new one comes.
        drop(c);
        let _etl = table.intern(map("etl"));
        assert_eq!(table.len(), 2, "billing and etl");
        // Beyond the bound a new map is still the session's own, not kept.
        let _held: Vec<_> = (0..SETTINGS_KEPT)
            .map(|i| table.intern(map(&format!("app{i}"))))
            .collect();
        assert_eq!(table.len(), SETTINGS_KEPT);
        let extra = table.intern(map("one more"));
        assert_eq!(*extra, map("one more"));
        assert_eq!(table.len(), SETTINGS_KEPT);
        assert!(!Arc::ptr_eq(&extra, &table.intern(map("one more"))));
        // A kept map is still found.
        assert!(Arc::ptr_eq(&a, &table.intern(map("billing"))));
    }
}
