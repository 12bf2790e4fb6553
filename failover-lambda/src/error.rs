//! Errors a person can act on.
//!
//! Every AWS failure is turned into one of a few kinds, each saying what to
//! fix: a resource that does not exist (which id, which region, which setting
//! names it), a missing permission (the exact IAM action), credentials the
//! endpoint refused, or an endpoint that stayed unreachable or throttled past
//! the retry budget. The AWS error code is kept so callers can branch on it.

use std::time::Duration;

use crate::config::ConfigError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What AWS answered, and to which call. Boxed inside [`Error`] so that
/// results stay small on the success path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsReply {
    /// The IAM action name of the call, e.g. `ec2:AssociateAddress`.
    pub action: String,
    pub region: String,
    /// The AWS error code, e.g. `InvalidAllocationID.NotFound`.
    pub code: String,
    pub message: String,
}

/// What went wrong while reading or moving the service address.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource named in the configuration or the target does not exist
    /// where we looked (usually a typo or the wrong region).
    #[error(
        "{subject} was not found in region {} ({}: {}); {hint}",
        .reply.region, .reply.code, .reply.message
    )]
    NotFound {
        /// What was looked for, with its id.
        subject: String,
        /// Which setting to check.
        hint: &'static str,
        reply: Box<AwsReply>,
    },

    /// The role we run as may not call this action.
    #[error(
        "permission denied: the role this runs as may not call {} ({}: {}); \
         allow {} in its IAM policy (see docs/aws-address-modes.md)",
        .reply.action, .reply.code, .reply.message, .reply.action
    )]
    PermissionDenied { reply: Box<AwsReply> },

    /// The endpoint refused the credentials themselves.
    #[error(
        "AWS refused the credentials calling {} in region {} ({}: {}); check the role or \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and that the region is enabled for the account",
        .reply.action, .reply.region, .reply.code, .reply.message
    )]
    Credentials { reply: Box<AwsReply> },

    /// AWS understood the request and rejected it for a reason not covered above.
    #[error(
        "{} was rejected in region {} ({}: {})",
        .reply.action, .reply.region, .reply.code, .reply.message
    )]
    Rejected { reply: Box<AwsReply> },

    /// Throttling, timeouts or network errors outlasted the retry budget.
    #[error(
        "{action} did not succeed after {attempts} attempts over {elapsed:?} (last: {last}); \
         check that the endpoint for region {region} is reachable (NAT or VPC endpoint) and not throttled"
    )]
    Exhausted {
        action: String,
        region: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },

    /// The request could not be built or sent for a reason retrying cannot fix
    /// (no credentials found, an invalid endpoint URL, ...).
    #[error(
        "{action} could not be sent: {detail}; check AWS_REGION, AWS_ENDPOINT_URL and the credentials chain"
    )]
    Unsendable { action: String, detail: String },

    /// AWS answered with something we cannot interpret.
    #[error("{action} answered unexpectedly: {detail}")]
    Unexpected { action: String, detail: String },

    /// The change was made but a fresh read does not show it yet.
    #[error("the change was made but {resource} still does not show it after {waited:?}: {detail}")]
    NotConfirmed {
        resource: String,
        waited: Duration,
        detail: String,
    },

    /// The target does not carry what this mode needs.
    #[error("invalid target: {0}")]
    Target(String),

    /// The mode configuration is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// This instance's identity could not be read from instance metadata.
    #[error(
        "instance metadata ({path}) could not be read: {detail}; name the target explicitly, \
         or check that IMDSv2 is reachable (hop limit 2 in containers) or AWS_EC2_METADATA_SERVICE_ENDPOINT"
    )]
    Imds { path: String, detail: String },
}

impl Error {
    /// What AWS answered, when this error is an AWS answer.
    pub fn reply(&self) -> Option<&AwsReply> {
        match self {
            Error::NotFound { reply, .. }
            | Error::PermissionDenied { reply }
            | Error::Credentials { reply }
            | Error::Rejected { reply } => Some(reply),
            _ => None,
        }
    }

    /// The AWS error code behind this error, if AWS answered with one.
    pub fn code(&self) -> Option<&str> {
        self.reply().map(|r| r.code.as_str())
    }

    /// The message AWS sent with the error code, if any.
    pub fn aws_message(&self) -> Option<&str> {
        self.reply().map(|r| r.message.as_str())
    }
}

impl Error {
    /// A "not found" that AWS did not send as an error: the call succeeded
    /// but listed nothing with the id asked for.
    pub(crate) fn listed_nothing(action: &str, subject: &Subject, region: &str) -> Error {
        Error::NotFound {
            subject: subject.to_string(),
            hint: subject.kind.hint(),
            reply: Box::new(AwsReply {
                action: action.to_owned(),
                region: region.to_owned(),
                code: "NotFound".to_owned(),
                message: "the answer listed no such resource".to_owned(),
            }),
        }
    }
}

/// The kind of resource an AWS call is about, so a "not found" answer can
/// name it and the setting that holds its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    ElasticIp,
    Instance,
    NetworkInterface,
    RouteTable,
    Route,
    HostedZone,
    DbCluster,
    DbInstance,
    Secret,
}

impl ResourceKind {
    /// The noun used in messages.
    pub fn noun(self) -> &'static str {
        match self {
            ResourceKind::ElasticIp => "Elastic IP allocation",
            ResourceKind::Instance => "instance",
            ResourceKind::NetworkInterface => "network interface",
            ResourceKind::RouteTable => "route table",
            ResourceKind::Route => "route",
            ResourceKind::HostedZone => "hosted zone",
            ResourceKind::DbCluster => "DB cluster",
            ResourceKind::DbInstance => "DB instance",
            ResourceKind::Secret => "secret",
        }
    }

    /// Where the id came from, so the message says what to correct.
    pub fn hint(self) -> &'static str {
        match self {
            ResourceKind::ElasticIp => {
                "check TIDEPOOL_EIP_ALLOCATION_ID (or the event's eip_allocation_id): it is the allocation id (eipalloc-...), \
                 and AWS_REGION must be the region that holds the address"
            }
            ResourceKind::Instance => {
                "check target.instance_id and that AWS_REGION is the instance's region"
            }
            ResourceKind::NetworkInterface => {
                "check target.eni_id and that AWS_REGION is the interface's region"
            }
            ResourceKind::RouteTable => {
                "check TIDEPOOL_ROUTE_TABLE_IDS (or the event's route_table_ids) and that AWS_REGION is the VPC's region"
            }
            ResourceKind::Route => "check TIDEPOOL_VIP_CIDR",
            ResourceKind::HostedZone => {
                "check TIDEPOOL_HOSTED_ZONE_ID (or the event's hosted_zone_id): it is the zone id (Z...), not the zone name"
            }
            ResourceKind::DbCluster => "check the DB cluster identifier and AWS_REGION",
            ResourceKind::DbInstance => "check the DB instance identifier and AWS_REGION",
            ResourceKind::Secret => {
                "check the secret's ARN (the user's password_secret) and that AWS_REGION is the \
                 region the secret is in: a secret is read through its own region's endpoint"
            }
        }
    }

    /// Which resource kind an AWS "not found" code speaks of, if any.
    pub fn from_not_found_code(code: &str) -> Option<ResourceKind> {
        let kind = match code {
            c if c.starts_with("InvalidAllocationID.") => ResourceKind::ElasticIp,
            "InvalidAddress.NotFound" => ResourceKind::ElasticIp,
            c if c.starts_with("InvalidInstanceID.") => ResourceKind::Instance,
            c if c.starts_with("InvalidNetworkInterfaceID.") => ResourceKind::NetworkInterface,
            c if c.starts_with("InvalidRouteTableID.") => ResourceKind::RouteTable,
            "InvalidRoute.NotFound" => ResourceKind::Route,
            "NoSuchHostedZone" | "InvalidHostedZoneId" => ResourceKind::HostedZone,
            "DBClusterNotFoundFault" => ResourceKind::DbCluster,
            "DBInstanceNotFound" | "DBInstanceNotFoundFault" => ResourceKind::DbInstance,
            _ => return None,
        };
        Some(kind)
    }
}

/// The resource an AWS call is about: used to word errors.
#[derive(Debug, Clone)]
pub struct Subject {
    pub kind: ResourceKind,
    pub id: String,
}

impl Subject {
    pub fn new(kind: ResourceKind, id: impl Into<String>) -> Self {
        Subject {
            kind,
            id: id.into(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.noun(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_codes_map_to_the_resource_they_name() {
        assert_eq!(
            ResourceKind::from_not_found_code("InvalidAllocationID.NotFound"),
            Some(ResourceKind::ElasticIp)
        );
        assert_eq!(
            ResourceKind::from_not_found_code("InvalidRouteTableID.Malformed"),
            Some(ResourceKind::RouteTable)
        );
        assert_eq!(
            ResourceKind::from_not_found_code("NoSuchHostedZone"),
            Some(ResourceKind::HostedZone)
        );
        assert_eq!(ResourceKind::from_not_found_code("Throttling"), None);
    }
}
