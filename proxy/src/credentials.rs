//! Where the password tidepool sends to a backend comes from: the
//! configuration, a Secrets Manager secret, or an RDS IAM token.
//!
//! - A secret (`password_secret` on a user or on `[health_check]`) is read
//!   on first use and kept; when a backend refuses the login (28P01) the
//!   caller asks [`Credentials::refresh`] to read it again, so a rotation
//!   needs no restart (at most one read per secret a second).
//! - An RDS IAM token (`auth = "rds_iam"` on a backend or a user) is made
//!   per connection from the SDK's default credentials chain (instance
//!   role, environment, profile) and reused for up to 10 minutes of its
//!   15-minute validity.
//!
//! The AWS SDK is loaded on the first need, never for a configuration
//! that uses neither.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tidepool_failover::{RetryPolicy, TokenSource};
use tokio::sync::OnceCell;

use crate::config::{BackendAuth, BackendTlsConfig, UserConfig};

/// Least time between two reads of one secret after refusals.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How tidepool logs in as one user on one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Login {
    /// A password from the configuration (or none: trust).
    Password(Option<String>),
    /// The password in a Secrets Manager secret (ARN or name).
    Secret(String),
    /// An RDS IAM authentication token, signed for `region` (default: the
    /// SDK's region).
    RdsIam { region: Option<String> },
}

impl Login {
    /// How to log in as `user` (its `[[users]]` entry, if any) on a node
    /// with settings `node`: IAM when either says `rds_iam`, else the
    /// user's secret, else its password.
    pub fn for_user(user: Option<&UserConfig>, node: &BackendTlsConfig) -> Login {
        let iam = user.and_then(|u| u.auth).or(node.auth) == Some(BackendAuth::RdsIam);
        if iam {
            return Login::RdsIam {
                region: node.region.clone(),
            };
        }
        match user {
            Some(u) if u.password_secret.is_some() => {
                Login::Secret(u.password_secret.clone().expect("checked"))
            }
            Some(u) => Login::Password(password_for_backend(u).map(str::to_string)),
            None => Login::Password(None),
        }
    }

    /// How tidepool's own connections (health checks, lag, catalog,
    /// failover SQL) log in as `[health_check]`'s user on a node.
    pub fn for_checks(
        password: Option<&str>,
        secret: Option<&str>,
        node: &BackendTlsConfig,
    ) -> Login {
        if node.auth == Some(BackendAuth::RdsIam) {
            Login::RdsIam {
                region: node.region.clone(),
            }
        } else if let Some(arn) = secret {
            Login::Secret(arn.to_string())
        } else {
            Login::Password(password.map(str::to_string))
        }
    }
}

struct Aws {
    secrets: aws_sdk_secretsmanager::Client,
    rds: aws_sdk_rds::Client,
    tokens: Result<TokenSource, String>,
}

struct Kept {
    password: String,
    read: Instant,
    /// Read again after a refusal (rate-limited), not at a first use.
    after_refusal: bool,
}

/// The process's source of backend passwords. One per process, shared.
#[derive(Default)]
pub struct Credentials {
    aws: OnceCell<Aws>,
    secrets: Mutex<HashMap<String, Kept>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("aws_loaded", &self.aws.initialized())
            .field("secrets_kept", &self.lock().len())
            .finish()
    }
}

impl Credentials {
    async fn aws(&self) -> &Aws {
        self.aws
            .get_or_init(|| async {
                let config = tidepool_failover::clients::tuned(
                    aws_config::defaults(aws_config::BehaviorVersion::latest()),
                    &RetryPolicy::default(),
                )
                .load()
                .await;
                Aws {
                    secrets: aws_sdk_secretsmanager::Client::new(&config),
                    rds: aws_sdk_rds::Client::new(&config),
                    tokens: TokenSource::from_sdk_config(&config).map_err(|e| e.to_string()),
                }
            })
            .await
    }

    /// RDS, with the process's AWS settings (switchovers of a managed
    /// cluster: `FailoverDBCluster`).
    pub async fn rds(&self) -> tidepool_failover::Rds {
        tidepool_failover::Rds::new(self.aws().await.rds.clone(), RetryPolicy::default())
    }

    /// The password to send for `login` as `user` to `host:port`.
    pub async fn password(
        &self,
        login: &Login,
        host: &str,
        port: u16,
        user: &str,
    ) -> Result<Option<String>, String> {
        match login {
            Login::Password(p) => Ok(p.clone()),
            Login::Secret(arn) => {
                if let Some(k) = self.lock().get(arn) {
                    return Ok(Some(k.password.clone()));
                }
                self.read(arn, false).await.map(Some)
            }
            Login::RdsIam { region } => {
                let tokens = self
                    .aws()
                    .await
                    .tokens
                    .as_ref()
                    .map_err(|e| format!("auth = \"rds_iam\" needs AWS credentials: {e}"))?;
                tokens
                    .token(host, port, user, region.as_deref())
                    .await
                    .map(Some)
                    .map_err(|e| {
                        format!("cannot make an RDS IAM token for {user}@{host}:{port}: {e}")
                    })
            }
        }
    }

    /// After a backend refused `login`'s password: reads its secret again
    /// (rotation). True when there is something new to try.
    pub async fn refresh(&self, login: &Login) -> bool {
        let Login::Secret(arn) = login else {
            return false;
        };
        // The first refusal after a read always reads again (a rotation);
        // a password that keeps failing is read at most once a second.
        let (old, recent) = match self.lock().get(arn) {
            Some(k) => (
                Some(k.password.clone()),
                k.after_refusal && k.read.elapsed() < REFRESH_EVERY,
            ),
            None => (None, false),
        };
        if recent {
            return false;
        }
        match self.read(arn, true).await {
            Ok(new) => old.as_ref() != Some(&new),
            Err(_) => false,
        }
    }

    async fn read(&self, arn: &str, after_refusal: bool) -> Result<String, String> {
        let client = &self.aws().await.secrets;
        match tidepool_failover::read_password(client, arn).await {
            Ok(s) => {
                tracing::info!(secret = arn, version = ?s.version_id, "read a backend password from Secrets Manager");
                self.lock().insert(
                    arn.to_string(),
                    Kept {
                        password: s.password.clone(),
                        read: Instant::now(),
                        after_refusal,
                    },
                );
                Ok(s.password)
            }
            Err(e) => {
                tracing::warn!(secret = arn, error = %e, "cannot read a backend password from Secrets Manager");
                Err(format!("cannot read the password secret {arn}: {e}"))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The password tidepool sends to backends for `user`: `backend_password`,
/// or the client password when it is plaintext (not a verifier or hash).
pub fn password_for_backend(user: &crate::config::UserConfig) -> Option<&str> {
    if let Some(p) = &user.backend_password {
        return Some(p);
    }
    match crate::auth::Secret::parse(&user.password) {
        crate::auth::Secret::Plain(_) => Some(user.password.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(toml_text: &str) -> UserConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn iam_on_the_user_or_the_node_wins_over_passwords() {
        let plain = user("name = \"app\"\npassword = \"pw\"");
        let iam_user = user("name = \"app\"\npassword = \"pw\"\nauth = \"rds_iam\"");
        let node = BackendTlsConfig::default();
        let iam_node = BackendTlsConfig {
            auth: Some(BackendAuth::RdsIam),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        assert_eq!(
            Login::for_user(Some(&plain), &node),
            Login::Password(Some("pw".into()))
        );
        assert_eq!(
            Login::for_user(Some(&iam_user), &node),
            Login::RdsIam { region: None }
        );
        assert_eq!(
            Login::for_user(Some(&plain), &iam_node),
            Login::RdsIam {
                region: Some("eu-west-1".into())
            }
        );
        assert_eq!(
            Login::for_checks(Some("x"), None, &iam_node),
            Login::RdsIam {
                region: Some("eu-west-1".into())
            }
        );
    }

    #[test]
    fn a_secret_replaces_the_configured_backend_password() {
        let u = user(
            "name = \"app\"\npassword = \"SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5\"\npassword_secret = \"arn:aws:secretsmanager:eu-west-1:1:secret:db\"",
        );
        assert_eq!(
            Login::for_user(Some(&u), &BackendTlsConfig::default()),
            Login::Secret("arn:aws:secretsmanager:eu-west-1:1:secret:db".into())
        );
        assert_eq!(
            Login::for_checks(Some("pw"), Some("arn:s"), &BackendTlsConfig::default()),
            Login::Secret("arn:s".into())
        );
        assert_eq!(
            Login::for_checks(Some("pw"), None, &BackendTlsConfig::default()),
            Login::Password(Some("pw".into()))
        );
    }
}
