//! What one configuration compiles to — the file's values with the hba
//! rules, routing rules, users' secrets and certificate map made from
//! them — held as one value and swapped as one on reload: a session that
//! reads it sees the old configuration or the new one, never half of each.

use std::{collections::HashMap, ops::Deref, sync::Arc};

use crate::{
    auth::{CertMap, Hba, ScramVerifier, Secret},
    config::{Config, ConfigError},
    router::Rules,
};

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
