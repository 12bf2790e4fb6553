//! The TLS side of a configuration checked before it is used: every
//! certificate and key file named is read here, so a missing or unusable
//! one is reported with its key at check-config, start and reload, not at
//! the first connection.

use crate::config::{BackendAuth, ClientMode, Config, ConfigError, SslMode};

/// `[tls]`, the backends' TLS settings and the rules that depend on TLS:
/// every file is read here, so a missing or unusable one is reported with
/// its key at check-config and reload, not at the first connection.
pub fn config_errors(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push(ConfigError::new(path, msg));
    let serving = match super::ServeTls::load(&c.tls) {
        Ok(s) => s.is_some(),
        Err(e) => {
            err("tls".into(), e);
            false
        }
    };
    let t = &c.tls;
    if t.client_mode != ClientMode::Disable && t.cert_file.is_none() && t.ca_file.is_some() {
        err(
            "tls.cert_file".into(),
            "tls.ca_file is set but no certificate is: set cert_file and key_file".into(),
        );
    }
    if t.client_mode.requires_tls() && t.cert_file.is_none() {
        err(
            "tls.client_mode".into(),
            format!(
                "client_mode \"{}\" needs cert_file and key_file",
                t.client_mode.as_str()
            ),
        );
    }
    if t.client_mode.requires_cert() && t.ca_file.is_none() {
        err(
            "tls.ca_file".into(),
            format!(
                "client_mode \"{}\" verifies client certificates: set ca_file to the CA that signs them",
                t.client_mode.as_str()
            ),
        );
    }
    for (i, rule) in c.hba.iter().enumerate() {
        let tls_only =
            rule.conn_type == "hostssl" || rule.method == "cert" || rule.clientcert.is_some();
        if tls_only && !serving {
            err(
                format!("hba[{i}]"),
                "this rule applies to TLS connections only, and tidepool serves no TLS: configure [tls] cert_file and key_file".into(),
            );
        }
        if (rule.method == "cert" || rule.clientcert.is_some()) && c.tls.ca_file.is_none() {
            err(
                format!("hba[{i}]"),
                "client certificates are verified against tls.ca_file: set it".into(),
            );
        }
        if rule.conn_type == "hostnossl" && c.tls.client_mode.requires_tls() {
            err(
                format!("hba[{i}].type"),
                "hostnossl can never match: tls.client_mode refuses plaintext clients".into(),
            );
        }
    }
    for (i, m) in c.cert_map.iter().enumerate() {
        if let Some(re) = m.cn.strip_prefix('/')
            && let Err(e) = regex::Regex::new(re)
        {
            err(
                format!("cert_map[{i}].cn"),
                format!("invalid regular expression: {e}"),
            );
        }
    }
    for (i, b) in c.backends.iter().enumerate() {
        let s = b.tls(&c.backend_defaults);
        if let Err(e) = super::BackendTls::load(&s) {
            err(format!("backends[{i}]"), e);
        }
        if s.auth == Some(BackendAuth::RdsIam) && s.sslmode.unwrap_or_default() == SslMode::Disable
        {
            err(
                format!("backends[{i}].sslmode"),
                "auth = \"rds_iam\" needs TLS (RDS refuses IAM logins in plaintext): use require or verify-full".into(),
            );
        }
    }
    for (i, cl) in c.clusters.iter().enumerate() {
        let s = cl.endpoint_backend().tls(&c.backend_defaults);
        if let Err(e) = super::BackendTls::load(&s) {
            err(format!("clusters[{i}]"), e);
        }
        if s.auth == Some(BackendAuth::RdsIam) && s.sslmode.unwrap_or_default() == SslMode::Disable
        {
            err(
                format!("clusters[{i}].sslmode"),
                "auth = \"rds_iam\" needs TLS (RDS refuses IAM logins in plaintext): use require or verify-full".into(),
            );
        }
    }
    errors
}
