//! TLS towards a backend, with libpq's `sslmode` meanings:
//!
//! | sslmode | TLS | certificate checked against sslrootcert | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | never | – | – |
//! | `prefer` | when the server offers it | no | no |
//! | `require` | always | no | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! `require` protects against eavesdropping only; `verify-ca` also against
//! a server impersonated by someone without a certificate from the CA;
//! `verify-full` also against another server of the same CA (RDS signs
//! every instance with one CA, so only `verify-full` pins the endpoint).

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{ALPN_POSTGRESQL, Stream};
use crate::config::{BackendTlsConfig, SslMode};

/// How tidepool reaches one backend, compiled from its settings.
pub struct BackendTls {
    pub mode: SslMode,
    /// Unused with `sslmode = "disable"`, where it accepts anything (the
    /// `tokio-postgres` connector wants one even for plaintext).
    config: Arc<ClientConfig>,
    /// The `sslrootcert` in force, for error messages.
    rootcert: Option<String>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .field("rootcert", &self.rootcert)
            .finish_non_exhaustive()
    }
}

impl Default for BackendTls {
    /// `sslmode = "prefer"`, libpq's default.
    fn default() -> Self {
        BackendTls {
            mode: SslMode::Prefer,
            config: Arc::new(client_config(Verify::Nothing, None).expect("no files to read")),
            rootcert: None,
        }
    }
}

/// Why a TLS connection to a backend could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the server does not accept TLS, but sslmode is \"{0}\"; set sslmode = \"prefer\" or \"disable\" for this backend, or turn on ssl in its postgresql.conf"
    )]
    NotOffered(&'static str),
    #[error("TLS handshake failed (sslmode \"{mode}\"{root}): {source}")]
    Handshake {
        mode: &'static str,
        root: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the server's certificate must pass.
enum Verify {
    /// `prefer`, `require`: encryption without authentication.
    Nothing,
    /// `verify-ca`.
    Chain(rustls::RootCertStore),
    /// `verify-full`.
    ChainAndName(rustls::RootCertStore),
    /// Settings that could not be loaded: nothing, with the reason.
    Refuse(String),
}

impl BackendTls {
    /// Reads the files `s` names. `s` holds a backend's settings with
    /// `[backend_defaults]` already applied.
    pub fn load(s: &BackendTlsConfig) -> Result<BackendTls, String> {
        let mode = s.sslmode.unwrap_or_default();
        let rootcert = s.sslrootcert.clone();
        let verify = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = super::read_roots(rootcert.as_deref().unwrap_or("system"))?;
                if mode == SslMode::VerifyCa {
                    Verify::Chain(roots)
                } else {
                    Verify::ChainAndName(roots)
                }
            }
        };
        let identity = match (&s.sslcert, &s.sslkey) {
            (Some(c), Some(k)) => Some((super::read_certs(c)?, super::read_key(k)?)),
            (None, None) => None,
            _ => return Err("sslcert and sslkey go together".into()),
        };
        Ok(BackendTls {
            mode,
            config: Arc::new(client_config(verify, identity)?),
            rootcert,
        })
    }

    /// [`BackendTls::load`], or when the files cannot be read (they were
    /// checked when the configuration was loaded, but may have gone since)
    /// settings that refuse every connection with that reason: never a
    /// weaker mode than the one configured.
    pub fn load_or_refusing(s: &BackendTlsConfig) -> BackendTls {
        BackendTls::load(s).unwrap_or_else(|reason| {
            tracing::error!(%reason, "backend TLS settings unusable: connections to this node fail until they are fixed");
            let config = client_config(Verify::Refuse(reason.clone()), None)
                .expect("no files to read");
            BackendTls {
                mode: SslMode::Require,
                config: Arc::new(config),
                rootcert: Some(reason),
            }
        })
    }

    /// Asks the server at the other end of `tcp` for TLS (SSLRequest) as
    /// the mode says, and runs the handshake for `host`.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, TlsError> {
        if self.mode == SslMode::Disable {
            return Ok(Stream::Plain(tcp));
        }
        let mut request = bytes::BytesMut::new();
        crate::protocol::messages::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        // Exactly one byte: anything after it would be plaintext that an
        // attacker slipped in before the handshake.
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => return Err(TlsError::NotOffered(self.mode.as_str())),
            // An ErrorResponse: a server older than TLS support, or one that
            // failed; the caller reads no further.
            other => {
                return Err(TlsError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected answer {other:#04x} to SSLRequest"),
                )));
            }
        }
        let name = server_name(host);
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| TlsError::Handshake {
                mode: self.mode.as_str(),
                root: self
                    .rootcert
                    .as_deref()
                    .filter(|_| matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull))
                    .map(|r| format!(", sslrootcert \"{r}\""))
                    .unwrap_or_default(),
                source,
            })?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }

    /// What to do about a server's refusal `message`, when it is about TLS:
    /// PostgreSQL's `no pg_hba.conf entry … no encryption` to a plaintext
    /// login means the server takes TLS logins only (RDS's default).
    pub fn explain_refusal(&self, message: &str) -> Option<String> {
        let plaintext = matches!(self.mode, SslMode::Disable | SslMode::Prefer);
        (plaintext && message.contains("no encryption")).then(|| {
            format!(
                "tidepool logged in without TLS (sslmode \"{}\") and the server accepts TLS connections only: set sslmode = \"verify-full\" (or \"require\") for this node under [[backends]] or in [backend_defaults]",
                self.mode.as_str()
            )
        })
    }

    /// Sets `cfg`'s sslmode and returns the connector for a
    /// `tokio-postgres` connection with these settings.
    pub fn pg(&self, cfg: &mut tokio_postgres::Config) -> tokio_postgres_rustls::MakeRustlsConnect {
        use tokio_postgres::config::SslMode as PgMode;
        cfg.ssl_mode(match self.mode {
            SslMode::Disable => PgMode::Disable,
            SslMode::Prefer => PgMode::Prefer,
            _ => PgMode::Require,
        });
        tokio_postgres_rustls::MakeRustlsConnect::new(ClientConfig::clone(&self.config))
    }
}

/// One of tidepool's own connections to a node — health checks, the lag
/// sampler, the catalog, failover SQL, topology, the query cache: where,
/// as whom, and how long connecting may take. One builder for all, so
/// every such connection logs in, negotiates TLS and times out alike.
pub struct OwnConnection<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    /// `application_name`, so an operator can tell tidepool's sessions apart.
    pub application: &'a str,
    /// For connecting, TLS and login included (at least 100 ms).
    pub timeout: std::time::Duration,
}

/// The driver task of an [`OwnConnection`]: it ends with the connection,
/// giving the SQLSTATE and message of the error the server ended it with,
/// if any (57P01: the server shuts down).
pub type OwnDriver = tokio::task::JoinHandle<Option<(String, String)>>;

impl BackendTls {
    /// Opens `c` with these TLS settings and spawns its driver. The error
    /// names the sslmode, and what to change when the server refused
    /// plaintext.
    pub async fn connect_own(
        &self,
        c: OwnConnection<'_>,
    ) -> Result<(tokio_postgres::Client, OwnDriver), String> {
        let timeout = c.timeout.max(std::time::Duration::from_millis(100));
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(c.host)
            .port(c.port)
            .user(c.user)
            .dbname(c.database)
            .application_name(c.application)
            .connect_timeout(timeout);
        if let Some(p) = c.password {
            cfg.password(p);
        }
        let connector = self.pg(&mut cfg);
        let mode = self.mode.as_str();
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(connector))
            .await
            .map_err(|_| format!("connect (sslmode \"{mode}\"): timed out after {timeout:?}"))?
            .map_err(|e| {
                let e = super::with_causes(&e);
                match self.explain_refusal(&e) {
                    Some(hint) => format!("connect (sslmode \"{mode}\"): {e} ({hint})"),
                    None => format!("connect (sslmode \"{mode}\"): {e}"),
                }
            })?;
        let driver = tokio::spawn(async move {
            conn.await.err().and_then(|e| {
                e.as_db_error()
                    .map(|d| (d.code().code().to_string(), d.message().to_string()))
            })
        });
        Ok((client, driver))
    }
}

/// The name TLS verifies: an IP address literal, or a DNS name.
fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::try_from("invalid.host.name".to_string()).expect("a valid DNS name")
    })
}

fn client_config(
    verify: Verify,
    identity: Option<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<ClientConfig, String> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let webpki = |roots: rustls::RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())
    };
    let (chain, names, refuse) = match verify {
        Verify::Nothing => (None, false, None),
        Verify::Chain(roots) => (Some(webpki(roots)?), false, None),
        Verify::ChainAndName(roots) => (Some(webpki(roots)?), true, None),
        Verify::Refuse(reason) => (None, false, Some(reason)),
    };
    let verifier = Arc::new(Verifier {
        provider: provider.clone(),
        chain,
        names,
        refuse,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("sslcert and sslkey do not make a usable pair: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// The server certificate check of one `sslmode`. The handshake's
/// signatures are always checked (so the session key is the server's,
/// whatever the mode); the chain only with a root store (`verify-ca`,
/// `verify-full`), the name only for `verify-full`.
#[derive(Debug)]
struct Verifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    /// Refuse everything, with this reason.
    refuse: Option<String>,
}

impl Verifier {
    fn refused(&self) -> Result<(), rustls::Error> {
        match &self.refuse {
            Some(reason) => Err(rustls::Error::General(reason.clone())),
            None => Ok(()),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        self.refused()?;
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refused()?;
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refused()?;
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
