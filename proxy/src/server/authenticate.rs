//! A client's authentication exchange, once its startup packet is read:
//! the method its hba rule names (trust, password, md5, SCRAM-SHA-256 with
//! or without channel binding, a certificate), the messages both ways, and
//! the refusal PostgreSQL would give.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use super::startup::{MAX_AUTH_MESSAGE, Refusal, refuse};
use crate::{
    app::Shared,
    auth::{
        self, AuthError, ClientCert, Method, ScramServer, effective_method, md5_salt,
        verify_md5_response,
    },
    config::ClientMode,
    protocol::{
        frame::{self, Frame, FrameError},
        messages, sqlstate,
    },
    tls::{ServeTls, Stream},
};

/// A client during authentication: its stream, what it sent that is not
/// yet taken, and what is to be sent to it.
pub(super) struct ClientConn<'a> {
    pub(super) stream: &'a mut Stream,
    pub(super) buf: &'a mut BytesMut,
    pub(super) out: &'a mut BytesMut,
    /// The TLS the client negotiated, if any.
    pub(super) tls: Option<&'a ServeTls>,
}

impl ClientConn<'_> {
    /// The common name of the client's certificate (verified against
    /// `tls.ca_file` during the handshake), if it presented one.
    fn certificate_name(&self) -> Option<String> {
        self.stream
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::common_name)
    }

    /// Refuses a plaintext client when `[tls] client_mode` requires TLS:
    /// before any hba rule, which could only say "no entry".
    fn check_encrypted(&self, shared: &Shared) -> Result<(), Refusal> {
        let mode = shared.config.load().tls.client_mode;
        if mode.requires_tls() && !self.stream.is_tls() {
            return Err(refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "tidepool accepts TLS connections only (tls.client_mode = \"{}\"): connect with sslmode=require or stronger",
                    mode.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Checks what `[tls] client_mode` and the hba rule's `clientcert`
    /// ask of the client's certificate.
    fn check_tls(
        &self,
        shared: &Shared,
        user: &str,
        clientcert: Option<ClientCert>,
    ) -> Result<(), Refusal> {
        let mode = shared.config.load().tls.client_mode;
        let need = match (mode, clientcert) {
            (_, Some(ClientCert::VerifyFull)) | (ClientMode::VerifyFull, _) => {
                Some(ClientCert::VerifyFull)
            }
            (_, Some(ClientCert::VerifyCa)) | (ClientMode::VerifyCa, _) => {
                Some(ClientCert::VerifyCa)
            }
            _ => None,
        };
        let Some(need) = need else { return Ok(()) };
        let verified = self.tls.is_some_and(|t| t.verifies_clients);
        let Some(cn) = self.certificate_name().filter(|_| verified) else {
            return Err(refuse(
                sqlstate::INVALID_AUTHORIZATION,
                "connection requires a valid client certificate",
            ));
        };
        if need == ClientCert::VerifyFull && !shared.config.load().cert_map.allows(&cn, user) {
            return Err(refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "certificate authentication failed for user \"{user}\": the certificate's common name \"{cn}\" is not that user and no [[cert_map]] entry maps it"
                ),
            ));
        }
        Ok(())
    }

    /// A SCRAM exchange, bound to the TLS channel when there is one.
    fn scram(&self, exchange: ScramServer) -> ScramServer {
        match self.tls {
            Some(t) if self.stream.is_tls() => {
                exchange.with_channel_binding(t.end_point().to_vec())
            }
            _ => exchange,
        }
    }
}

pub(super) async fn authenticate(
    c: &mut ClientConn<'_>,
    shared: &Shared,
    peer: SocketAddr,
    user: &str,
    database: &str,
) -> Result<(), Refusal> {
    c.check_encrypted(shared)?;
    // One configuration for the whole login: rules, secrets and all.
    let rt = shared.config.load_full();
    let hba = &rt.hba;
    let host = peer.ip();
    let tls = c.stream.is_tls();
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let rule = hba.rule_for(user, database, host, tls).ok_or_else(|| {
        refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!("no tidepool hba entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"),
        )
    })?;
    let (method, clientcert) = (rule.method, rule.clientcert);
    if method == Method::Reject {
        return Err(refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "tidepool hba rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
            ),
        ));
    }
    c.check_tls(shared, user, clientcert)?;
    let secrets = &rt.secrets;
    let Some(user_secret) = secrets.get(user) else {
        if matches!(method, Method::Trust | Method::Cert) {
            return Err(refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not configured in tidepool"),
            ));
        }
        // Run the exchange anyway so a client cannot tell unknown users
        // from wrong passwords.
        let mut scram = c.scram(ScramServer::mock(user, &shared.mock_key));
        let r = scram_exchange(c, &mut scram).await;
        return Err(auth_refusal(
            r.err().unwrap_or(AuthError::InvalidPassword),
            user,
        ));
    };
    let secret = &user_secret.secret;
    let method = match effective_method(method, secret) {
        Ok(m) => m,
        Err(e) => {
            // The secret cannot serve the rule (an md5 hash under a
            // scram-sha-256 rule): as PostgreSQL does, the client still
            // gets a whole exchange that fails, so that it cannot tell
            // such a user from an unknown one by the answer or its timing.
            tracing::warn!(%peer, user, "{e}");
            let mut scram = c.scram(ScramServer::mock(user, &shared.mock_key));
            let r = scram_exchange(c, &mut scram).await;
            return Err(auth_refusal(
                r.err().unwrap_or(AuthError::InvalidPassword),
                user,
            ));
        }
    };
    let result = match method {
        // `cert` was decided by check_tls (it implies clientcert=verify-full).
        Method::Trust | Method::Cert => Ok(()),
        Method::Reject => Err(AuthError::InvalidPassword),
        Method::Password => {
            messages::auth_cleartext(c.out);
            let pw = read_password(c).await?;
            let pw = cstring(&pw)?;
            secret.verify_password(user, &pw)
        }
        Method::Md5 => {
            let salt = md5_salt();
            messages::auth_md5(c.out, salt);
            let pw = read_password(c).await?;
            let pw = cstring(&pw)?;
            verify_md5_response(secret, user, salt, &pw)
        }
        Method::ScramSha256 => match &user_secret.scram {
            Some(v) => {
                let mut scram = c.scram(ScramServer::new_random(v.clone()));
                scram_exchange(c, &mut scram).await
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

async fn scram_exchange(c: &mut ClientConn<'_>, scram: &mut ScramServer) -> Result<(), AuthError> {
    messages::auth_sasl(c.out, scram.mechanisms());
    let first = read_password(c)
        .await
        .map_err(|r| AuthError::Protocol(r.message))?;
    let (mechanism, data) = sasl_initial(&first).map_err(|e| AuthError::Protocol(e.to_string()))?;
    let server_first = scram.client_first(&mechanism, &data)?;
    messages::auth_sasl_continue(c.out, &server_first);
    let fin = read_password(c)
        .await
        .map_err(|r| AuthError::Protocol(r.message))?;
    let server_final = scram.client_final(fin.body())?;
    messages::auth_sasl_final(c.out, &server_final);
    Ok(())
}

/// Sends what is in `out`, then reads the client's next PasswordMessage
/// family frame ('p').
async fn read_password(c: &mut ClientConn<'_>) -> Result<Frame, Refusal> {
    let io = |_| {
        refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "client left during authentication",
        )
    };
    c.stream.write_all(c.out).await.map_err(io)?;
    c.out.clear();
    loop {
        match frame::take(c.buf, MAX_AUTH_MESSAGE) {
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
                if c.stream.read_more(c.buf).await.map_err(io)? == 0 {
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
