//! One client from its first byte to an authenticated session.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::{BufMut, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedReadHalf},
};
use tracing::Instrument;

use super::Shared;
use crate::{
    auth::{
        self, AuthError, Method, SCRAM_SHA_256, ScramServer, effective_method, md5_salt,
        verify_md5_response,
    },
    protocol::{
        StartupPacket,
        frame::{self, Frame, FrameError},
        messages::{self, Severity},
        sqlstate,
    },
    session::{Session, SessionEnd},
};

/// Largest authentication message a client may send.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Ends the startup phase with a FATAL error, as PostgreSQL would.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
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

pub(super) async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    shared.metrics.clients_total.fetch_add(1, Ordering::Relaxed);
    let active = shared
        .metrics
        .clients_active
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let _guard = ClientGuard(shared.clone());
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // Room for a whole startup packet in one read (libpq's is under 100
    // bytes, JDBC's a few hundred); the session drops it once idle.
    let mut buf = BytesMut::with_capacity(512);
    let timeout = shared.config.load().server.startup_timeout;

    let started =
        tokio::time::timeout(timeout, read_startup(&mut rd, &mut wr, &mut buf, &shared)).await;
    let (params, minor_asked, pq_options) = match started {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return, // cancel request, or the client left
        Ok(Err(r)) => {
            shared.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, code = r.code, "startup refused: {}", r.message);
            let mut out = BytesMut::new();
            messages::error_response(&mut out, Severity::Fatal, r.code, &r.message, None);
            let _ = wr.write_all(&out).await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "client did not finish startup within {timeout:?}");
            return;
        }
    };
    let user = param(&params, "user").unwrap_or_default();
    let database = param(&params, "database").unwrap_or_else(|| user.clone());
    let span = tracing::info_span!("session", %peer, user = %user, database = %database);
    let login = async move {
        let mut out = BytesMut::new();
        if minor_asked > 0 || !pq_options.is_empty() {
            messages::negotiate_protocol_version(&mut out, 0, pq_options);
        }
        let max = shared.config.load().server.max_client_connections;
        let outcome = if active > max as i64 {
            Err(refuse(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            ))
        } else {
            let auth = authenticate(
                &mut rd, &mut wr, &mut buf, &mut out, &shared, peer, &user, &database,
            );
            tokio::time::timeout(timeout, auth)
                .await
                .unwrap_or_else(|_| {
                    Err(refuse(
                        sqlstate::PROTOCOL_VIOLATION,
                        "authentication timed out",
                    ))
                })
        };
        if let Err(r) = outcome {
            shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(code = r.code, "login refused: {}", r.message);
            messages::error_response(&mut out, Severity::Fatal, r.code, &r.message, None);
            let _ = wr.write_all(&out).await;
            return None;
        }
        messages::auth_ok(&mut out);

        let registration = shared.cancels.register();
        let settings = session_settings(&params);
        let mut session = Session::new(
            shared.clone(),
            user.clone(),
            database.clone(),
            &settings,
            registration.slot.clone(),
        );
        match session.login().await {
            Ok(reported) => {
                for (k, v) in &reported {
                    messages::parameter_status(&mut out, k, v);
                }
            }
            Err(message) => {
                tracing::info!("no backend for the session: {message}");
                messages::error_response(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::CANNOT_CONNECT_NOW,
                    &message,
                    None,
                );
                let _ = wr.write_all(&out).await;
                return None;
            }
        }
        messages::backend_key_data(&mut out, registration.pid, registration.secret);
        messages::ready_for_query(&mut out, b'I');
        if wr.write_all(&out).await.is_err() {
            return None;
        }
        tracing::debug!("session started");
        Some((session, registration, rd, wr, buf))
    };
    let Some((mut session, registration, rd, wr, buf)) = login.instrument(span.clone()).await
    else {
        return;
    };
    // The session loop runs outside the span: entering it on every poll
    // costs more than the rest of a short transaction's bookkeeping. The
    // session's own log lines name it as their parent.
    session.span = span.clone();
    let result = session.run(rd, wr, buf).await;
    let _entered = span.enter();
    match result {
        Ok(()) | Err(SessionEnd::Terminated | SessionEnd::ClientGone) => {
            tracing::debug!("session ended")
        }
        Err(e) => tracing::info!("session ended: {e}"),
    }
    drop(registration);
}

/// Reads SSLRequest / GSSENCRequest / CancelRequest / StartupMessage until
/// a StartupMessage arrives. `None` means there is no session to run.
async fn read_startup(
    rd: &mut OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<Option<(Vec<(String, String)>, u16, Vec<String>)>, Refusal> {
    loop {
        let packet = match frame::take_startup(buf) {
            Ok(Some(p)) => p,
            Ok(None) => match rd.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => continue,
            },
            Err(e) => {
                return Err(refuse(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {e}"),
                ));
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                // Encryption is not offered on this listener: the client may
                // go on in clear text or give up, as it chooses.
                if wr.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                shared
                    .metrics
                    .cancel_requests
                    .fetch_add(1, Ordering::Relaxed);
                if let Some((addr, backend_pid, backend_secret)) =
                    shared.cancels.lookup(pid, &secret)
                    && let Err(e) =
                        crate::backend::send_cancel(addr, backend_pid, &backend_secret).await
                {
                    tracing::warn!(%addr, error = %e, "could not forward a cancel request");
                }
                return Ok(None);
            }
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                if major != 3 {
                    return Err(refuse(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "unsupported frontend protocol {major}.{minor}: tidepool supports 3.0"
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
                    return Err(refuse(
                        sqlstate::INVALID_AUTHORIZATION,
                        "no PostgreSQL user name specified in startup packet",
                    ));
                }
                if param(&params, "replication")
                    .is_some_and(|r| r != "false" && r != "0" && r != "off")
                {
                    return Err(refuse(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "replication connections are not served through tidepool; connect to the node directly",
                    ));
                }
                return Ok(Some((params, minor, pq)));
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
fn session_settings(params: &[(String, String)]) -> Vec<(String, String)> {
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

#[allow(clippy::too_many_arguments)]
async fn authenticate(
    rd: &mut OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    shared: &Shared,
    peer: SocketAddr,
    user: &str,
    database: &str,
) -> Result<(), Refusal> {
    let hba = shared.hba.load();
    let host = peer.ip();
    let method = hba.lookup(user, database, host, false).ok_or_else(|| {
        refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!("no tidepool hba entry for host \"{host}\", user \"{user}\", database \"{database}\""),
        )
    })?;
    if method == Method::Reject {
        return Err(refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "tidepool hba rejects connection for host \"{host}\", user \"{user}\", database \"{database}\""
            ),
        ));
    }
    let secrets = shared.secrets.load();
    let Some(user_secret) = secrets.get(user) else {
        if method == Method::Trust {
            return Err(refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not configured in tidepool"),
            ));
        }
        // Run the exchange anyway so a client cannot tell unknown users
        // from wrong passwords.
        let mut scram = ScramServer::mock(user, &shared.mock_key);
        let r = scram_exchange(rd, wr, buf, out, &mut scram).await;
        return Err(auth_refusal(
            r.err().unwrap_or(AuthError::InvalidPassword),
            user,
        ));
    };
    let secret = &user_secret.secret;
    let method = effective_method(method, secret).map_err(|e| {
        tracing::warn!(user, "{e}");
        auth_refusal(e, user)
    })?;
    let result = match method {
        Method::Trust => Ok(()),
        Method::Reject => Err(AuthError::InvalidPassword),
        Method::Password => {
            messages::auth_cleartext(out);
            let pw = read_password(rd, wr, buf, out).await?;
            let pw = cstring(&pw)?;
            secret.verify_password(user, &pw)
        }
        Method::Md5 => {
            let salt = md5_salt();
            messages::auth_md5(out, salt);
            let pw = read_password(rd, wr, buf, out).await?;
            let pw = cstring(&pw)?;
            verify_md5_response(secret, user, salt, &pw)
        }
        Method::ScramSha256 => match &user_secret.scram {
            Some(v) => {
                let mut scram = ScramServer::new_random(v.clone());
                scram_exchange(rd, wr, buf, out, &mut scram).await
            }
            None => secret.scram_verifier().map(|_| ()),
        },
    };
    result.map_err(|e| auth_refusal(e, user))
}

fn auth_refusal(e: AuthError, user: &str) -> Refusal {
    let code = match e.sqlstate() {
        auth::SQLSTATE_PROTOCOL_VIOLATION => sqlstate::PROTOCOL_VIOLATION,
        _ => sqlstate::INVALID_PASSWORD,
    };
    refuse(code, e.client_message(user))
}

async fn scram_exchange(
    rd: &mut OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    scram: &mut ScramServer,
) -> Result<(), AuthError> {
    messages::auth_sasl(out, &[SCRAM_SHA_256]);
    let first = read_password(rd, wr, buf, out)
        .await
        .map_err(|r| AuthError::Protocol(r.message))?;
    let (mechanism, data) = sasl_initial(&first).map_err(|e| AuthError::Protocol(e.to_string()))?;
    let server_first = scram.client_first(&mechanism, &data)?;
    messages::auth_sasl_continue(out, &server_first);
    let fin = read_password(rd, wr, buf, out)
        .await
        .map_err(|r| AuthError::Protocol(r.message))?;
    let server_final = scram.client_final(fin.body())?;
    messages::auth_sasl_final(out, &server_final);
    Ok(())
}

/// Sends what is in `out`, then reads the client's next PasswordMessage
/// family frame ('p').
async fn read_password(
    rd: &mut OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<Frame, Refusal> {
    let io = |_| {
        refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "client left during authentication",
        )
    };
    wr.write_all(out).await.map_err(io)?;
    out.clear();
    loop {
        match frame::take(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) if f.tag == b'p' => return Ok(f),
            Ok(Some(f)) => {
                return Err(refuse(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "expected password response, got message type {}",
                        f.tag as char
                    ),
                ));
            }
            Ok(None) => {
                if rd.read_buf(buf).await.map_err(io)? == 0 {
                    return Err(refuse(
                        sqlstate::PROTOCOL_VIOLATION,
                        "client left during authentication",
                    ));
                }
            }
            Err(e) => return Err(refuse(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        }
    }
}

fn cstring(f: &Frame) -> Result<String, Refusal> {
    let mut b = f.body();
    frame::cstr(&mut b).map_err(|e| refuse(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
}

/// Mechanism and data of a SASLInitialResponse.
fn sasl_initial(f: &Frame) -> Result<(String, Vec<u8>), FrameError> {
    let mut b = f.body();
    let mechanism = frame::cstr(&mut b)?;
    if b.len() < 4 {
        return Err(FrameError::BadStartup("short SASLInitialResponse".into()));
    }
    let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let data = &b[4..];
    if len >= 0 && len as usize != data.len() {
        return Err(FrameError::BadStartup(
            "SASLInitialResponse length mismatch".into(),
        ));
    }
    let mut v = Vec::with_capacity(data.len());
    v.put_slice(data);
    Ok((mechanism, v))
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
