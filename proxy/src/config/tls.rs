//! `[tls]` (what tidepool serves to clients) and `[backend_defaults]`
//! (how tidepool reaches backends, each key overridable per backend).

use serde::{Deserialize, Serialize};

/// What a client must do about TLS, with PgBouncer's `client_tls_sslmode`
/// meanings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientMode {
    /// No TLS: an SSLRequest is answered `N`.
    Disable,
    /// TLS when the client asks for it.
    Allow,
    /// The same as `allow` on the server side (the client decides).
    #[default]
    Prefer,
    /// Every client must use TLS.
    Require,
    /// Every client must use TLS and present a certificate signed by `ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate's common name must be the user
    /// (or map to it through `[[cert_map]]`).
    VerifyFull,
}

impl ClientMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMode::Disable => "disable",
            ClientMode::Allow => "allow",
            ClientMode::Prefer => "prefer",
            ClientMode::Require => "require",
            ClientMode::VerifyCa => "verify-ca",
            ClientMode::VerifyFull => "verify-full",
        }
    }

    /// Whether plaintext clients are refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            ClientMode::Require | ClientMode::VerifyCa | ClientMode::VerifyFull
        )
    }

    /// Whether a client certificate is required.
    pub fn requires_cert(self) -> bool {
        matches!(self, ClientMode::VerifyCa | ClientMode::VerifyFull)
    }
}

/// Oldest TLS version accepted from clients.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[tls]`: TLS for clients. Present with `cert_file` and `key_file`
/// means tidepool answers SSLRequest with `S`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain tidepool presents (leaf first).
    pub cert_file: Option<String>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: Option<String>,
    /// PEM bundle of CAs whose client certificates are accepted.
    pub ca_file: Option<String>,
    pub client_mode: ClientMode,
    pub min_version: TlsVersion,
}

/// How tidepool uses TLS towards a backend, with libpq's `sslmode`
/// meanings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext.
    #[default]
    Prefer,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS with a certificate signed by `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How tidepool logs in to a backend.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendAuth {
    /// The user's password (`password`, `backend_password` or `password_secret`).
    #[default]
    Password,
    /// An RDS IAM authentication token made from the node's AWS credentials.
    RdsIam,
}

/// TLS and login settings of one backend. In `[backend_defaults]` they
/// apply to every backend; a `[[backends]]` entry may set each again.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BackendTlsConfig {
    pub sslmode: Option<SslMode>,
    /// PEM bundle of CAs (e.g. the RDS global bundle), or "system".
    pub sslrootcert: Option<String>,
    /// Client certificate and key for servers that ask for one.
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub auth: Option<BackendAuth>,
    /// AWS region for `rds_iam` tokens (default: the SDK's region).
    pub region: Option<String>,
}

impl BackendTlsConfig {
    /// The libpq environment (`PGSSLMODE`, …) for PostgreSQL's own tools
    /// run against this node (`pg_rewind`, `pg_basebackup`).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(m) = self.sslmode {
            env.push(("PGSSLMODE", m.as_str().to_string()));
        }
        for (key, value) in [
            ("PGSSLROOTCERT", &self.sslrootcert),
            ("PGSSLCERT", &self.sslcert),
            ("PGSSLKEY", &self.sslkey),
        ] {
            if let Some(v) = value {
                env.push((key, v.clone()));
            }
        }
        env
    }

    /// These settings, with `defaults` wherever one is not set.
    pub fn or(&self, defaults: &BackendTlsConfig) -> BackendTlsConfig {
        BackendTlsConfig {
            sslmode: self.sslmode.or(defaults.sslmode),
            sslrootcert: self.sslrootcert.clone().or(defaults.sslrootcert.clone()),
            sslcert: self.sslcert.clone().or(defaults.sslcert.clone()),
            sslkey: self.sslkey.clone().or(defaults.sslkey.clone()),
            auth: self.auth.or(defaults.auth),
            region: self.region.clone().or(defaults.region.clone()),
        }
    }
}

/// One `[[cert_map]]` entry: a client certificate's common name that may
/// log in as `user` under the `cert` method (like pg_ident.conf). A `cn`
/// starting with `/` is a regular expression; `\1` in `user` is replaced
/// by its first capture group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertMapConfig {
    pub cn: String,
    pub user: String,
}
