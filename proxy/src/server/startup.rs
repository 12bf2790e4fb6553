//! One client from its first byte to an authenticated session.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::BytesMut;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::authenticate::{ClientConn, authenticate};
use crate::app::Shared;
use crate::{
    protocol::{
        StartupPacket,
        frame::{self, FrameError},
        messages::{self, Severity},
        sqlstate,
    },
    session::{Session, SessionEnd},
    tls::{ServeTls, Stream},
};

/// Largest authentication message a client may send.
pub(super) const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Ends the startup phase with a FATAL error, as PostgreSQL would.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: String,
}

pub(super) fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// One in a gauge of the metrics for as long as it lives; `count` is the
/// gauge with it.
struct Counted {
    shared: Arc<Shared>,
    gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicI64,
    count: i64,
}

impl Counted {
    fn new(
        shared: &Arc<Shared>,
        gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicI64,
    ) -> Self {
        let count = gauge(&shared.metrics).fetch_add(1, Ordering::Relaxed) + 1;
        Counted {
            shared: shared.clone(),
            gauge,
            count,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.gauge)(&self.shared.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a client for as long as it is connected.
struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .clients_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client from its first byte to its last. A plain function
/// around the task's future so that the future captures only the boxed
/// startup and the client's place in the gauge: an `async fn`'s
/// arguments would stay in every client's task for its whole life.
pub(super) fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    shared.metrics.clients_total.fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .clients_active
        .fetch_add(1, Ordering::Relaxed);
    let guard = ClientGuard(shared.clone());
    // Startup and login are boxed: their futures (TLS handshake, SCRAM)
    // are large and done with once the client is in, and an idle client's
    // task should hold only what its session needs.
    // Made in its box (as `Session::run` makes its turns): `Box::pin`
    // would copy the whole future into the box.
    let admit = Box::into_pin(Box::write(Box::new_uninit(), admit(tcp, peer, shared)));
    async move {
        let _guard = guard;
        let Some(mut a) = admit.await else {
            return;
        };
        // Used in place, not taken apart or passed on: a future keeps the
        // room of a local moved into another future it awaits, so that
        // would hold the session twice.
        let result = a.session.run(&mut a.client, &mut a.buf).await;
        // The session's log lines name its span as their parent, made
        // only when a line is logged (`Session::span`): the macros
        // evaluate `parent:` after the level check, and making a span
        // formats its fields, which a client that leaves normally (the
        // line is at debug) would pay on every connection.
        match result {
            Ok(()) | Err(SessionEnd::Terminated | SessionEnd::ClientGone) => {
                tracing::debug!(parent: &a.session.span(), "session ended")
            }
            Err(e) => tracing::info!(parent: &a.session.span(), "session ended: {e}"),
        }
    }
}

/// A client that has logged in: its session, the stream and what it has
/// sent beyond its login, and the places it holds (its cancel key, its
/// count against `max_client_connections`) until it leaves.
struct Admitted {
    session: Session,
    /// Held, not read: the client's cancel key is valid until it leaves.
    _registration: crate::cancel::Registration,
    client: Stream,
    buf: BytesMut,
    /// Held, not read: the client counts against the limit until it leaves.
    _session_slot: Counted,
}

/// Startup (TLS, the startup packet), authentication and login: the client
/// is admitted, or has been told why not.
async fn admit(mut tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> Option<Admitted> {
    let _ = tcp.set_nodelay(true);
    // Sockets that have not logged in yet have a budget of their own: they
    // cannot take the places of logged-in clients, and a flood of silent
    // sockets is turned away at once instead of waiting out startup_timeout.
    let starting = Counted::new(&shared, |m| &m.clients_starting);
    let budget = shared.config.load().server.max_startup_connections;
    if starting.count > budget as i64 {
        shared.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, budget, "too many connections are starting up; refused");
        let mut out = BytesMut::new();
        messages::error_response(
            &mut out,
            Severity::Fatal,
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients are connecting at once (server.max_startup_connections)",
            None,
        );
        let _ = tcp.write_all(&out).await;
        return None;
    }
    // The first read takes one of the worker's spare read buffers
    // (`tls::recycle`); the session gives it back once idle.
    let mut buf = BytesMut::new();
    let timeout = shared.config.load().server.startup_timeout;
    let reading = Box::write(Box::new_uninit(), read_startup(tcp, &mut buf, &shared));
    let started = tokio::time::timeout(timeout, Box::into_pin(reading)).await;
    let (mut client, tls, startup) = match started {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return None, // cancel request, or the client left
        Ok(Err((mut client, r))) => {
            shared.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, code = r.code, "startup refused: {}", r.message);
            let mut out = BytesMut::new();
            messages::error_response(&mut out, Severity::Fatal, r.code, &r.message, None);
            let _ = client.write_all(&out).await;
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "client did not finish startup within {timeout:?}");
            return None;
        }
    };
    let Startup {
        params,
        minor: minor_asked,
        pq_options,
    } = startup;
    let user = param(&params, "user").unwrap_or_default();
    let database = param(&params, "database").unwrap_or_else(|| user.clone());
    let tls_on = client.is_tls();
    let login = async move {
        // The client's span, made only for a line that is logged: making
        // one formats its fields into the subscriber's registry, a cost
        // every connection would pay for lines few of them log.
        let span = || tracing::info_span!("session", %peer, user = %user, database = %database, tls = tls_on);
        // Room for the whole login reply (a dozen ParameterStatus, the key,
        // ReadyForQuery) without growing it message by message.
        let mut out = BytesMut::with_capacity(1024);
        if minor_asked > 0 || !pq_options.is_empty() {
            messages::negotiate_protocol_version(&mut out, 0, pq_options);
        }
        let outcome = {
            let mut conn = ClientConn {
                stream: &mut client,
                buf: &mut buf,
                out: &mut out,
                tls: tls.as_deref(),
            };
            let auth = authenticate(&mut conn, &shared, peer, &user, &database);
            tokio::time::timeout(timeout, auth)
                .await
                .unwrap_or_else(|_| {
                    Err(refuse(
                        sqlstate::PROTOCOL_VIOLATION,
                        "authentication timed out",
                    ))
                })
        };
        // Logged-in clients count against max_client_connections.
        let session_slot = Counted::new(&shared, |m| &m.sessions_active);
        let max = shared.config.load().server.max_client_connections;
        let outcome = match outcome {
            Ok(()) if session_slot.count > max as i64 => Err(refuse(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            )),
            other => other,
        };
        drop(starting);
        if let Err(r) = outcome {
            shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(parent: &span(), code = r.code, "login refused: {}", r.message);
            if r.code == sqlstate::INVALID_PASSWORD {
                // Guessing from one address gets slower; nobody else waits.
                let delay = shared
                    .failed_logins
                    .failed(peer.ip(), std::time::Instant::now());
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            messages::error_response(&mut out, Severity::Fatal, r.code, &r.message, None);
            let _ = client.write_all(&out).await;
            return None;
        }
        messages::auth_ok(&mut out);
        shared.failed_logins.succeeded(peer.ip());

        let mut registration = shared.cancels.register();
        let settings = session_settings(&params);
        let mut session = Session::new(
            shared.clone(),
            user.clone(),
            database.clone(),
            &settings,
            registration.slot.clone(),
        );
        // The session's own lines name the client from here on.
        session.peer = Some((peer, tls_on));
        match session.login(&settings).await {
            Ok(reported) => reported.encode(&mut out),
            Err((code, message)) => {
                tracing::info!(parent: &span(), code, "no backend for the session: {message}");
                messages::error_response(&mut out, Severity::Fatal, code, &message, None);
                let _ = client.write_all(&out).await;
                return None;
            }
        }
        if let Some(pid) = session.own_backend_pid() {
            // Session mode: the client's key names its server process, as
            // on a direct connection (pg_terminate_backend of it works).
            shared.cancels.rekey(&mut registration, pid);
        }
        messages::backend_key_data(&mut out, registration.pid, registration.secret);
        messages::ready_for_query(&mut out, b'I');
        if client.write_all(&out).await.is_err() {
            return None;
        }
        tracing::debug!(parent: &span(), "session started");
        session.client_pid = registration.pid;
        Some(Admitted {
            session,
            _registration: registration,
            client,
            buf,
            _session_slot: session_slot,
        })
    };
    login.await
}

/// What a StartupMessage asked for.
struct Startup {
    params: Vec<(String, String)>,
    /// The protocol's minor version the client asked for.
    minor: u16,
    /// `_pq_.` options, which tidepool does not take.
    pq_options: Vec<String>,
}

/// The first byte of a TLS handshake record: a client that starts TLS at
/// once (`sslnegotiation=direct`) sends it where a startup packet's length
/// would be.
const TLS_HANDSHAKE: u8 = 0x16;

/// A client that has not finished startup: the stream, with TLS in place
/// once negotiated, and what it asked for.
type Started = (Stream, Option<Arc<ServeTls>>, Startup);

/// Negotiates TLS (an SSLRequest, or TLS from the first byte) and reads
/// CancelRequest / StartupMessage until a StartupMessage arrives. `None`
/// means there is no session to run; an error comes with the stream to
/// send it on.
async fn read_startup(
    tcp: TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<Option<Started>, (Stream, Refusal)> {
    let mut tls = None;
    let mut stream = Stream::Plain(tcp);
    // The first read tells a startup packet from a TLS handshake begun at
    // once: the first byte of one is its length's, of the other a TLS
    // record's type.
    match stream.read_more(buf).await {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    if buf[0] == TLS_HANDSHAKE {
        // Nothing can be said in plaintext to a client speaking TLS:
        // without TLS configured, close (PostgreSQL does the same).
        let Some(serve) = shared.tls.load_full() else {
            tracing::info!("a client started TLS directly, but tidepool serves no TLS");
            return Ok(None);
        };
        let Stream::Plain(tcp) = stream else {
            unreachable!("no TLS before the first byte")
        };
        let sent = buf.split();
        stream = match serve.accept(tcp, &sent).await {
            Ok(s) => {
                tls = Some(serve);
                s
            }
            Err(e) => {
                tracing::info!(error = %e, "direct TLS handshake failed");
                return Ok(None);
            }
        };
    }
    loop {
        let packet = match frame::take_startup(buf) {
            Ok(Some(p)) => p,
            Ok(None) => match stream.read_more(buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => continue,
            },
            Err(e @ (FrameError::BadLength(_) | FrameError::TooLong(..))) => {
                // As PostgreSQL: logged, not answered (a port probe that
                // leaves gets nothing to parse).
                tracing::info!("invalid length of startup packet: {e}");
                return Ok(None);
            }
            Err(e) => {
                return Err((
                    stream,
                    refuse(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid startup packet: {e}"),
                    ),
                ));
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                let serve = shared.tls.load_full();
                stream = match (serve, stream) {
                    (Some(serve), Stream::Plain(mut tcp)) => {
                        if !buf.is_empty() {
                            // Bytes sent after the SSLRequest, before the
                            // handshake, would pass as if encrypted.
                            return Err((
                                Stream::Plain(tcp),
                                refuse(
                                    sqlstate::PROTOCOL_VIOLATION,
                                    "received unencrypted data after SSL request",
                                ),
                            ));
                        }
                        if tcp.write_all(b"S").await.is_err() {
                            return Ok(None);
                        }
                        match serve.accept(tcp, &[]).await {
                            Ok(s) => {
                                tls = Some(serve);
                                s
                            }
                            Err(e) => {
                                tracing::info!(error = %e, "TLS handshake failed");
                                return Ok(None);
                            }
                        }
                    }
                    (_, mut s) => {
                        // No TLS here (or already TLS): the client may go on
                        // in clear text or give up, as it chooses.
                        if s.write_all(b"N").await.is_err() {
                            return Ok(None);
                        }
                        s
                    }
                };
            }
            StartupPacket::GssEncRequest => {
                if stream.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                shared
                    .metrics
                    .cancel_requests
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(target) = shared.cancels.lookup(pid, &secret)
                    && let Err(e) = crate::backend::send_cancel(&target).await
                {
                    tracing::warn!(addr = %target.addr, error = %e, "could not forward a cancel request");
                }
                return Ok(None);
            }
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                if major != 3 {
                    return Err((
                        stream,
                        refuse(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!(
                                "unsupported frontend protocol {major}.{minor}: tidepool supports 3.0"
                            ),
                        ),
                    ));
                }
                let pq: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                let params: Vec<_> = params
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                if param(&params, "user").is_none_or(|u| u.is_empty()) {
                    return Err((
                        stream,
                        refuse(
                            sqlstate::INVALID_AUTHORIZATION,
                            "no PostgreSQL user name specified in startup packet",
                        ),
                    ));
                }
                if param(&params, "replication")
                    .is_some_and(|r| r != "false" && r != "0" && r != "off")
                {
                    return Err((
                        stream,
                        refuse(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "replication connections are not served through tidepool; connect to the node directly",
                        ),
                    ));
                }
                return Ok(Some((
                    stream,
                    tls,
                    Startup {
                        params,
                        minor,
                        pq_options: pq,
                    },
                )));
            }
        }
    }
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Startup parameters that become session settings: everything but the
/// connection's identity, with `options` (`-c name=value`) unpacked.
pub fn session_settings(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                let mut words = v.split_whitespace();
                while let Some(w) = words.next() {
                    let setting = match w {
                        "-c" => words.next(),
                        w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
                    };
                    if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
                        out.push((name.replace('-', "_"), value.to_string()));
                    }
                }
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_settings() {
        let params = vec![
            ("user".to_string(), "app".to_string()),
            ("application_name".to_string(), "psql".to_string()),
            (
                "options".to_string(),
                "-c search_path=app --work-mem=4MB -cstatement_timeout=5s".to_string(),
            ),
        ];
        let s = session_settings(&params);
        assert!(s.contains(&("application_name".into(), "psql".into())));
        assert!(s.contains(&("search_path".into(), "app".into())));
        assert!(s.contains(&("work_mem".into(), "4MB".into())));
        assert!(s.contains(&("statement_timeout".into(), "5s".into())));
        assert!(!s.iter().any(|(k, _)| k == "user"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// What a client's task holds between its messages: the session and
    /// the loop waiting for the client. Startup, login, opening a server
    /// connection, the catalog's and the cache's I/O are boxed while they
    /// run, so thousands of idle clients do not each keep room for a TLS
    /// handshake, a SCRAM exchange or a store's request.
    #[tokio::test]
    async fn an_idle_clients_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let cfg = crate::config::Config::load_str(
            "[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n\
             [[users]]\nname = \"app\"\npassword = \"app\"\n",
        )
        .unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let shared = Shared::new(cfg, None, rx);
        let task = handle(s, peer, shared);
        let size = std::mem::size_of_val(&task);
        // Unboxed, they made it ~16 KiB; with each message's work, a
        // cancel's connection and the server connection inline, 4.4 KiB;
        // with futures kept for the waits on the client, the server, the
        // idle timer and shutdown, and the session held twice, 2.4 KiB;
        // with a busy client's work kept while it is idle, 1.4 KiB (debug
        // builds; release ones are about the same). Under 1 KiB, with the
        // runtime's own fields, the task fits mimalloc's 1 KiB class.
        assert!(size <= 896, "a client's task is {size} bytes");
    }
}
