//! Moves tidepool's service address on AWS, where there is no floating IP.
//!
//! Traffic reaches the active proxy in one of three ways, each a
//! [`Mover`]: an Elastic IP reassociated to it ([`eip`]), a Route53 A record
//! pointing at its private IP ([`route53`]), or a VPC route for a VIP
//! pointing at its instance or interface ([`route_table`]). Every mover
//! offers the same idempotent operations — `holder`, `acquire`, `release`,
//! `verify` — that read first, change only what is wrong, and read again
//! to confirm, comparing ids and parsed addresses.
//!
//! The proxy's watchdog calls these in-process; the
//! `tidepool-failover-lambda` binary serves the same operations as an AWS
//! Lambda function (and from a shell with `--event`) through [`Handler`].
//! [`rds`] reads RDS/Aurora topology and runs planned switchovers there.
//!
//! Two helpers serve the proxy's logins to managed databases, kept here
//! because this crate owns the AWS SDK and its clients: [`rds_auth`] signs
//! RDS IAM authentication tokens (the node's role instead of a database
//! password), and [`secrets`] reads a user's password from Secrets
//! Manager (so rotating it needs no config change).
//!
//! AWS clients are built by the caller ([`AwsClients`]) so they can point
//! anywhere: the default chain, a test endpoint, or mocks.

pub mod clients;
pub mod config;
pub mod eip;
pub mod error;
pub mod event;
pub mod handler;
pub mod imds;
mod lookup;
mod mode;
pub mod model;
pub mod mover;
pub mod rds;
pub mod rds_auth;
pub mod retry;
pub mod route53;
pub mod route_table;
pub mod secrets;

pub use clients::AwsClients;
pub use config::{ModeConfig, ModeName, MoveOptions, Settings};
pub use error::{Error, Result};
pub use event::{Action, Answer, Event};
pub use handler::Handler;
pub use imds::{InstanceIdentity, Metadata};
pub use model::{
    AddressState, Change, Holder, MoveReport, Operation, Placement, Target, Verification,
};
pub use mover::Mover;
pub use rds::Rds;
pub use rds_auth::{RdsAuthError, TokenSource, auth_token};
pub use retry::RetryPolicy;
pub use secrets::{SecretError, SecretPassword, read_password};
