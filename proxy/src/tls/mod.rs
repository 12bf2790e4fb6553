//! TLS on both sides of tidepool, with rustls.
//!
//! - [`serve`]: what tidepool presents to clients (`[tls]`): the acceptor,
//!   re-read on reload, the client mode and the `tls-server-end-point`
//!   value SCRAM-SHA-256-PLUS binds to;
//! - [`connect`]: how tidepool reaches each backend (`sslmode`,
//!   `sslrootcert`, `sslcert`/`sslkey`): the SSLRequest exchange for
//!   tidepool's own connections and the connector for `tokio-postgres`
//!   (health checks, lag, catalog, failover SQL);
//! - [`stream`]: a connection that is plain TCP or TLS, for both.
//!
//! Files are read when the configuration is loaded or reloaded, never on
//! the hot path; a file that cannot be read is an error of that load.

pub mod check;
pub mod connect;
pub mod serve;
pub mod stream;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256, Sha384, Sha512};

pub use connect::{BackendTls, OwnConnection, OwnDriver};
pub use serve::ServeTls;
pub use stream::{READ_CHUNK, Reading, Step, Stream, recycle};

/// The ALPN protocol PostgreSQL 17 names for its wire protocol.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The crypto provider every rustls config here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, in order.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{path}: no PEM private key (PKCS#8, RSA or EC): {e}"))
}

/// A root store from a PEM bundle, or the operating system's store for
/// `"system"`.
pub fn read_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = if path == "system" {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(format!(
                "the system certificate store is empty or unreadable ({} errors)",
                found.errors.len()
            ));
        }
        found.certs
    } else {
        read_certs(path)?
    };
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(format!("{path}: no usable CA certificate"));
    }
    if ignored > 0 {
        tracing::warn!(
            path,
            ignored,
            "some CA certificates could not be parsed and are ignored"
        );
    }
    Ok(roots)
}

/// The `tls-server-end-point` channel-binding value of a certificate
/// (RFC 5929): its hash with the hash function of its signature algorithm,
/// SHA-256 for MD5, SHA-1 and anything not named otherwise.
pub fn end_point_hash(cert: &CertificateDer<'_>) -> Vec<u8> {
    use x509_parser::prelude::*;
    let oid = X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(cert).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(cert).to_vec(),
        _ => Sha256::digest(cert).to_vec(),
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    c.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// An error with its causes, for errors (like `tokio-postgres`'s) whose
/// own text names only the kind: "db error: FATAL: …", "error performing
/// TLS handshake: invalid peer certificate: UnknownIssuer".
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
