//! This instance's identity, from instance metadata (IMDSv2).
//!
//! When a node escalates itself it must name itself as the target. The
//! instance id, the primary private IP and the primary interface's ENI id
//! come from IMDSv2 (session token first, then reads carrying it). The
//! ENI is found through the primary MAC address, since metadata lists
//! interfaces by MAC. The endpoint follows the SDK's own override,
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, which is also how tests point it
//! at a local server.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Target;

/// What identifies this instance as a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub local_ipv4: Ipv4Addr,
    pub mac: String,
    /// The ENI of the primary interface (device 0).
    pub eni_id: String,
    pub availability_zone: Option<String>,
    pub region: Option<String>,
}

impl InstanceIdentity {
    /// This instance as a move target, by primary ENI and private IP.
    pub fn target(&self, node: Option<String>) -> Target {
        Target {
            instance_id: Some(self.instance_id.clone()),
            eni_id: Some(self.eni_id.clone()),
            private_ip: Some(self.local_ipv4),
            node,
        }
    }
}

/// Reads instance metadata with short timeouts: on EC2 it answers in
/// milliseconds, and off EC2 we want to find out fast.
#[derive(Debug, Clone)]
pub struct Metadata {
    client: imds::Client,
}

impl Metadata {
    /// The default endpoint, or `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn from_env() -> Metadata {
        Metadata {
            client: builder().build(),
        }
    }

    /// An explicit endpoint such as `http://127.0.0.1:8111`.
    pub fn with_endpoint(endpoint: &str) -> Result<Metadata> {
        let client = builder()
            .endpoint(endpoint)
            .map_err(|e| Error::Imds {
                path: endpoint.to_owned(),
                detail: format!("not a usable endpoint: {e}"),
            })?
            .build();
        Ok(Metadata { client })
    }

    async fn get(&self, path: &str) -> Result<String> {
        self.client
            .get(path)
            .await
            .map(|v| v.as_ref().trim().to_owned())
            .map_err(|e| Error::Imds {
                path: path.to_owned(),
                detail: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            })
    }

    /// Reads the identity of this instance.
    pub async fn identity(&self) -> Result<InstanceIdentity> {
        let instance_id = self.get("/latest/meta-data/instance-id").await?;
        let local_ipv4_text = self.get("/latest/meta-data/local-ipv4").await?;
        let local_ipv4 = local_ipv4_text.parse().map_err(|_| Error::Imds {
            path: "/latest/meta-data/local-ipv4".to_owned(),
            detail: format!("{local_ipv4_text:?} is not an IPv4 address"),
        })?;
        let mac = self.get("/latest/meta-data/mac").await?;
        let eni_id = self
            .get(&format!(
                "/latest/meta-data/network/interfaces/macs/{mac}/interface-id"
            ))
            .await?;
        // Optional facts: a missing one does not stop a move.
        let availability_zone = self
            .get("/latest/meta-data/placement/availability-zone")
            .await
            .ok();
        let region = self.get("/latest/meta-data/placement/region").await.ok();
        Ok(InstanceIdentity {
            instance_id,
            local_ipv4,
            mac,
            eni_id,
            availability_zone,
            region,
        })
    }
}

fn builder() -> imds::client::Builder {
    imds::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .max_attempts(3)
}
