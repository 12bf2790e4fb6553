//! The AWS clients movers use, built once and passed in.
//!
//! Construction is separate from use so that the proxy, the Lambda and the
//! tests each decide where the clients point: the default credential and
//! region chain, a test endpoint (`AWS_ENDPOINT_URL` or an explicit
//! `endpoint_url`), or fully mocked clients.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::retry::RetryPolicy;

/// EC2, Route53, RDS and Secrets Manager clients for one account and region.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub ec2: aws_sdk_ec2::Client,
    pub route53: aws_sdk_route53::Client,
    pub rds: aws_sdk_rds::Client,
    /// Reads users' passwords ([`crate::secrets`]).
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    /// Loads region, credentials and endpoint from the environment the way
    /// every AWS SDK does (`AWS_REGION`, `AWS_ENDPOINT_URL`, the instance or
    /// Lambda role, ...), with this crate's timeouts.
    pub async fn from_env(policy: &RetryPolicy) -> AwsClients {
        let config = tuned(aws_config::defaults(BehaviorVersion::latest()), policy)
            .load()
            .await;
        AwsClients::from_sdk_config(&config)
    }

    /// Builds the clients from a loaded configuration. Callers that build
    /// their own should switch the SDK retries off (`RetryConfig::disabled()`)
    /// so that [`RetryPolicy`] alone decides, as [`tuned`] does.
    pub fn from_sdk_config(config: &SdkConfig) -> AwsClients {
        AwsClients {
            ec2: aws_sdk_ec2::Client::new(config),
            route53: aws_sdk_route53::Client::new(config),
            rds: aws_sdk_rds::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
        }
    }

    /// The region the EC2 client signs for, for error messages.
    pub fn region(&self) -> String {
        region_of(self.ec2.config().region())
    }
}

/// Applies this crate's timeouts to a config loader and turns the SDK's
/// retries off: one retry loop ([`crate::retry`]) decides, so throttling
/// backoff is not multiplied by a second one hidden inside the SDK.
pub fn tuned(loader: aws_config::ConfigLoader, policy: &RetryPolicy) -> aws_config::ConfigLoader {
    loader.retry_config(RetryConfig::disabled()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3).min(policy.call_timeout))
            .operation_attempt_timeout(policy.call_timeout)
            .build(),
    )
}

/// A region for messages, or a hint that none is set.
pub(crate) fn region_of(region: Option<&aws_config::Region>) -> String {
    region.map_or_else(
        || "<unset: set AWS_REGION>".to_owned(),
        |r| r.as_ref().to_owned(),
    )
}
