//! TLS for clients: the `[tls]` certificate, key and CA, compiled into an
//! acceptor. The server keeps the current one in an `ArcSwap` and swaps it
//! on reload; a client keeps the one it started with.

use std::sync::Arc;

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{ALPN_POSTGRESQL, Stream};
use crate::config::{ClientMode, TlsConfig, TlsVersion};

/// What tidepool serves to clients over TLS.
pub struct ServeTls {
    pub mode: ClientMode,
    acceptor: TlsAcceptor,
    /// `tls-server-end-point` of the certificate presented.
    end_point: Vec<u8>,
    /// Whether client certificates are asked for (`ca_file` is set).
    pub verifies_clients: bool,
}

impl std::fmt::Debug for ServeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeTls")
            .field("mode", &self.mode)
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

impl ServeTls {
    /// Reads the files of `[tls]`. `None` when TLS is not served (no
    /// certificate configured, or `client_mode = "disable"`).
    pub fn load(cfg: &TlsConfig) -> Result<Option<ServeTls>, String> {
        if cfg.client_mode == ClientMode::Disable {
            return Ok(None);
        }
        let (cert_file, key_file) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => return Ok(None),
            _ => return Err("tls.cert_file and tls.key_file go together".into()),
        };
        let chain = super::read_certs(cert_file)?;
        let key = super::read_key(key_file)?;
        let end_point = super::end_point_hash(&chain[0]);
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls.min_version: {e}"))?;
        let builder = match &cfg.ca_file {
            Some(ca) => {
                let roots = super::read_roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
                        // A certificate is checked when presented; whether one is
                        // required is the client mode's and the hba rule's call.
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| format!("tls.ca_file {ca}: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!("tls.cert_file and tls.key_file do not make a usable pair: {e}")
        })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(ServeTls {
            mode: cfg.client_mode,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            end_point,
            verifies_clients: cfg.ca_file.is_some(),
        }))
    }

    /// The TLS handshake on a client connection. `sent` is what the
    /// client has sent of it already (read before it was known to be
    /// TLS): the handshake goes on from there. A non-empty `sent` means
    /// the client started TLS without an SSLRequest (PostgreSQL 17's
    /// `sslnegotiation=direct`), which is only allowed with ALPN
    /// `postgresql`.
    pub async fn accept(&self, tcp: TcpStream, sent: &[u8]) -> std::io::Result<Stream> {
        let direct = !sent.is_empty();
        let tls = self
            .acceptor
            .accept_with(tcp, |conn| {
                // Taken in as if read from the socket, and processed, so
                // that the handshake answers it before reading more. An
                // error stays with the connection and ends the handshake.
                let mut rest = sent;
                while !rest.is_empty() {
                    match conn.read_tls(&mut rest) {
                        Ok(n) if n > 0 && conn.process_new_packets().is_ok() => {}
                        _ => break,
                    }
                }
            })
            .await?;
        if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "direct TLS negotiation without ALPN \"postgresql\"",
            ));
        }
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
    }

    /// The `tls-server-end-point` channel-binding value for SCRAM-PLUS.
    pub fn end_point(&self) -> &[u8] {
        &self.end_point
    }
}
