//! Bounded, jittered retries around single AWS calls.
//!
//! A failover that hangs on one API call is worse than one that fails: the
//! caller cannot try the next step. So every call here has its own timeout,
//! the whole retry loop has a deadline, and only errors that a later attempt
//! can fix are retried — throttling (`RequestLimitExceeded`, `Throttling`,
//! `PriorRequestNotComplete`, ...), server-side 5xx, timeouts and network
//! failures. Everything else is turned at once into an [`Error`] that names
//! what to fix.
//!
//! The SDK's own retry loop is switched off on clients this crate builds
//! (see [`crate::clients`]) so that one policy, this one, decides.

use std::future::Future;
use std::time::Instant;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use crate::config::RetryPolicy;
use crate::error::{AwsReply, Error, ResourceKind, Subject};

/// AWS error codes that mean "slow down and try again".
const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "SlowDown",
    "BandwidthLimitExceeded",
];

/// AWS error codes for server-side trouble that usually passes.
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
];

const PERMISSION_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "NotAuthorized",
];

const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "OptInRequired",
];

/// Whether an SDK failure is worth another attempt.
#[derive(Debug)]
enum Verdict {
    Retry(String),
    Fail(Error),
}

/// Runs AWS calls under a [`RetryPolicy`], for one region.
#[derive(Debug, Clone)]
pub struct Caller {
    policy: RetryPolicy,
    region: String,
}

impl Caller {
    pub fn new(policy: RetryPolicy, region: impl Into<String>) -> Self {
        Caller {
            policy,
            region: region.into(),
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Runs `send` until it succeeds, fails for good, or the budget is spent.
    ///
    /// `action` is the IAM action name (`ec2:AssociateAddress`) so that a
    /// permission error says exactly what to allow; `subject` is what the
    /// call is about, so a "not found" error says which id is wrong.
    pub async fn call<T, E, F, Fut>(
        &self,
        action: &str,
        subject: &Subject,
        mut send: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = match tokio::time::timeout(self.policy.call_timeout, send()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => match self.judge(action, subject, &err) {
                    Verdict::Fail(error) => return Err(error),
                    Verdict::Retry(reason) => reason,
                },
                Err(_) => format!("no answer within {:?}", self.policy.call_timeout),
            };
            let delay = self.policy.backoff(attempt);
            let out_of_budget = attempt >= self.policy.max_attempts
                || started.elapsed() + delay > self.policy.deadline;
            if out_of_budget {
                return Err(Error::Exhausted {
                    action: action.to_owned(),
                    region: self.region.clone(),
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            tracing::warn!(action, attempt, ?delay, reason = %last, "AWS call failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn judge<E>(&self, action: &str, subject: &Subject, err: &SdkError<E, HttpResponse>) -> Verdict
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match err {
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or_default().to_owned();
                let message = err.message().unwrap_or_default().to_owned();
                let status = err.raw_response().map(|r| r.status().as_u16());
                self.judge_service(action, subject, code, message, status)
            }
            SdkError::TimeoutError(_) => Verdict::Retry("the SDK timed out".to_owned()),
            SdkError::DispatchFailure(failure) => {
                let detail = DisplayErrorContext(err).to_string();
                if failure.is_io() || failure.is_timeout() {
                    Verdict::Retry(detail)
                } else if let Some(code) = err.code() {
                    // Identity or endpoint resolution failures can carry codes too.
                    let (code, message) = (
                        code.to_owned(),
                        err.message().unwrap_or_default().to_owned(),
                    );
                    self.judge_service(action, subject, code, message, None)
                } else {
                    Verdict::Fail(Error::Unsendable {
                        action: action.to_owned(),
                        detail,
                    })
                }
            }
            SdkError::ResponseError(_) => Verdict::Retry(DisplayErrorContext(err).to_string()),
            SdkError::ConstructionFailure(_) => Verdict::Fail(Error::Unsendable {
                action: action.to_owned(),
                detail: DisplayErrorContext(err).to_string(),
            }),
            _ => Verdict::Fail(Error::Unexpected {
                action: action.to_owned(),
                detail: DisplayErrorContext(err).to_string(),
            }),
        }
    }

    fn judge_service(
        &self,
        action: &str,
        subject: &Subject,
        code: String,
        message: String,
        status: Option<u16>,
    ) -> Verdict {
        let c = code.as_str();
        if THROTTLING_CODES.contains(&c) || status == Some(429) {
            return Verdict::Retry(format!("throttled ({code}: {message})"));
        }
        if TRANSIENT_CODES.contains(&c) || status.is_some_and(|s| s >= 500) {
            return Verdict::Retry(format!("server error ({code}: {message})"));
        }
        let permission = PERMISSION_CODES.contains(&c);
        let credentials = CREDENTIAL_CODES.contains(&c);
        // Services with one generic "not found" code (Secrets Manager, ...)
        // mean the resource the request is about.
        let missing = ResourceKind::from_not_found_code(c)
            .or_else(|| (c == "ResourceNotFoundException").then_some(subject.kind));
        let reply = Box::new(AwsReply {
            action: action.to_owned(),
            region: self.region.clone(),
            code,
            message,
        });
        let error = if permission {
            Error::PermissionDenied { reply }
        } else if credentials {
            Error::Credentials { reply }
        } else if let Some(kind) = missing {
            let subject = if kind == subject.kind {
                subject.to_string()
            } else {
                format!("the {} named in the request", kind.noun())
            };
            Error::NotFound {
                subject,
                hint: kind.hint(),
                reply,
            }
        } else {
            Error::Rejected { reply }
        };
        Verdict::Fail(error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn backoff_stays_under_the_cap_and_grows() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempt in 1..20 {
            let d = policy.backoff(attempt);
            assert!(d <= Duration::from_millis(1000), "attempt {attempt}: {d:?}");
        }
        assert!(policy.backoff(1) <= Duration::from_millis(100));
        assert!(policy.backoff(8) >= Duration::from_millis(500));
    }

    #[test]
    fn throttling_is_retried_and_permissions_are_not() {
        let caller = Caller::new(RetryPolicy::default(), "us-east-1");
        let subject = Subject::new(ResourceKind::ElasticIp, "eipalloc-1");
        let v = caller.judge_service(
            "ec2:AssociateAddress",
            &subject,
            "RequestLimitExceeded".into(),
            "slow down".into(),
            Some(503),
        );
        assert!(matches!(v, Verdict::Retry(_)));
        let v = caller.judge_service(
            "ec2:AssociateAddress",
            &subject,
            "UnauthorizedOperation".into(),
            "no".into(),
            Some(403),
        );
        match v {
            Verdict::Fail(e @ Error::PermissionDenied { .. }) => {
                assert!(e.to_string().contains("ec2:AssociateAddress"))
            }
            other => panic!("unexpected verdict {other:?}"),
        }
    }

    #[test]
    fn a_generic_resource_not_found_names_the_subject() {
        let caller = Caller::new(RetryPolicy::default(), "us-east-1");
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf";
        let subject = Subject::new(ResourceKind::Secret, arn);
        let Verdict::Fail(e) = caller.judge_service(
            "secretsmanager:GetSecretValue",
            &subject,
            "ResourceNotFoundException".into(),
            "Secrets Manager can't find the specified secret.".into(),
            Some(400),
        ) else {
            panic!("not-found must not be retried")
        };
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains(arn), "{e}");
    }

    #[test]
    fn not_found_names_the_subject_only_when_it_is_the_one_missing() {
        let caller = Caller::new(RetryPolicy::default(), "eu-west-1");
        let subject = Subject::new(ResourceKind::ElasticIp, "eipalloc-1");
        let Verdict::Fail(e) = caller.judge_service(
            "ec2:AssociateAddress",
            &subject,
            "InvalidAllocationID.NotFound".into(),
            "gone".into(),
            Some(400),
        ) else {
            panic!("not-found must not be retried")
        };
        let text = e.to_string();
        assert!(
            text.contains("eipalloc-1") && text.contains("eu-west-1"),
            "{text}"
        );
        let Verdict::Fail(e) = caller.judge_service(
            "ec2:AssociateAddress",
            &subject,
            "InvalidInstanceID.NotFound".into(),
            "The instance ID 'i-9' does not exist".into(),
            Some(400),
        ) else {
            panic!("not-found must not be retried")
        };
        let text = e.to_string();
        assert!(
            text.contains("instance named in the request") && text.contains("i-9"),
            "{text}"
        );
    }
}
