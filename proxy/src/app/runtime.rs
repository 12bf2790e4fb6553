//! What one configuration compiles to — the file's values with the hba
//! rules, routing rules, users' secrets and certificate map made from
//! them — held as one value and swapped as one on reload: a session that
//! reads it sees the old configuration or the new one, never half of each.

use std::{collections::HashMap, ops::Deref, path::Path, sync::Arc};

use crate::{
    auth::{CertMap, Hba, ScramVerifier, Secret},
    config::{Config, ConfigError},
    router::Rules,
};

/// What a configuration must pass besides its own checks: what compiling
/// it needs — hba rules, routing patterns, certificate and key files, and
/// a backend password for every user whose client password is a verifier.
pub fn checks(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, u) in c.users.iter().enumerate() {
        let other_source =
            u.password_secret.is_some() || u.auth == Some(crate::config::BackendAuth::RdsIam);
        if !matches!(Secret::parse(&u.password), Secret::Plain(_))
            && u.backend_password.is_none()
            && !other_source
        {
            errors.push(ConfigError::new(
                format!("users[{i}].backend_password"),
                "password is a verifier, so tidepool cannot log in to the backends \
                 for this user: set backend_password (or password_secret, or auth = \"rds_iam\")",
            ));
        }
    }
    for (path, message) in crate::router::validate(&c.load_balancing) {
        errors.push(ConfigError::new(path, message));
    }
    for issue in Hba::validate(&c.hba) {
        errors.push(ConfigError::new(issue.key, issue.message));
    }
    errors.extend(crate::tls::check::config_errors(c));
    errors
}

/// A configuration and what was compiled from it. Derefs to [`Config`].
pub struct Runtime {
    pub config: Config,
    pub hba: Hba,
    /// Compiled `[load_balancing]` rules.
    pub rules: Rules,
    /// Each configured user's secret, with its SCRAM verifier derived once.
    pub secrets: HashMap<String, Arc<UserSecret>>,
    /// `[[cert_map]]`, for the `cert` method.
    pub cert_map: CertMap,
}

impl AsRef<Config> for Runtime {
    fn as_ref(&self) -> &Config {
        &self.config
    }
}

impl Deref for Runtime {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// A user's stored secret and the SCRAM verifier that serves it.
pub struct UserSecret {
    pub secret: Secret,
    /// Derived once per load: PBKDF2 costs milliseconds, too much to repeat
    /// for every login. `None` when the secret cannot serve SCRAM.
    pub scram: Option<ScramVerifier>,
}

impl Runtime {
    /// Reads a configuration file, checks it whole (every error reported
    /// at once) and compiles it: what `check-config`, start and reload use.
    pub fn load(path: &Path) -> Result<Runtime, Vec<ConfigError>> {
        Runtime::compile(Config::load_with(path, &checks)?, None)
    }

    /// [`Runtime::load`] of TOML text.
    pub fn load_str(text: &str) -> Result<Runtime, Vec<ConfigError>> {
        Runtime::compile(Config::load_str_with(text, &checks)?, None)
    }

    /// Compiles a configuration `Config::load` checked; hba rules that do
    /// not compile all the same (a configuration built by hand) refuse
    /// every client.
    pub fn new(config: Config) -> Runtime {
        match Runtime::compile(config.clone(), None) {
            Ok(r) => r,
            Err(errors) => {
                tracing::error!(
                    ?errors,
                    "the hba rules do not compile: every client is refused"
                );
                Runtime {
                    hba: Hba::new(vec![]),
                    rules: Rules::new(&config.load_balancing),
                    secrets: user_secrets(&config),
                    cert_map: CertMap::new(&config.cert_map),
                    config,
                }
            }
        }
    }

    /// Compiles `config`; `previous` lends its users' secrets when the
    /// users did not change (deriving verifiers costs PBKDF2 rounds).
    pub fn compile(
        config: Config,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, Vec<ConfigError>> {
        let hba = Hba::from_config(&config.hba).map_err(|issues| {
            issues
                .into_iter()
                .map(|i| ConfigError::new(i.key, i.message))
                .collect::<Vec<_>>()
        })?;
        let secrets = match previous {
            Some(p) if p.config.users == config.users => p.secrets.clone(),
            _ => user_secrets(&config),
        };
        Ok(Runtime {
            hba,
            rules: Rules::new(&config.load_balancing),
            secrets,
            cert_map: CertMap::new(&config.cert_map),
            config,
        })
    }
}

fn user_secrets(config: &Config) -> HashMap<String, Arc<UserSecret>> {
    config
        .users
        .iter()
        .map(|u| {
            let secret = Secret::parse(&u.password);
            let scram = secret.scram_verifier().ok();
            (u.name.clone(), Arc::new(UserSecret { secret, scram }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[server]\nlisten = \"127.0.0.1:9999\"\n\
        [[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n\
        [[users]]\nname = \"app\"\npassword = \"secret\"\n";

    #[test]
    fn verifier_without_backend_password_is_refused() {
        let text = MINIMAL.replace("\"secret\"", "\"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"");
        // The file alone is well formed; what it compiles to is not.
        assert!(Config::load_str(&text).is_ok());
        let errs = Runtime::load_str(&text).err().expect("refused");
        assert_eq!(errs[0].path, "users[0].backend_password");
    }

    #[test]
    fn every_error_of_the_file_and_of_compiling_it_is_reported_at_once() {
        let text = MINIMAL.replace("[[users]]", "[pool]\nmax_size = 0\n[[users]]")
            + "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\n\
               address = \"not an address\"\nmethod = \"trust\"\n\
               [tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n";
        let errs = Runtime::load_str(&text).err().expect("refused");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"pool.max_size"), "{errs:?}");
        assert!(paths.iter().any(|p| p.starts_with("hba[0]")), "{errs:?}");
        assert!(paths.iter().any(|p| p.starts_with("tls")), "{errs:?}");
    }
}
