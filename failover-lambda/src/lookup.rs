//! Filling in a target from EC2, so an operator can name a node by
//! whichever identity they have at hand (instance, ENI or private IP).

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::Filter;

use crate::error::{Error, ResourceKind, Result, Subject};
use crate::model::{Target, non_empty};
use crate::retry::Caller;

/// Returns `target` with an instance or ENI id, looking the ENI up by the
/// private IP when only that is given.
pub(crate) async fn with_attachment(
    ec2: &aws_sdk_ec2::Client,
    caller: &Caller,
    target: &Target,
) -> Result<Target> {
    if target.instance_id.is_some() || target.eni_id.is_some() {
        return Ok(target.clone());
    }
    let Some(ip) = target.private_ip else {
        return Err(Error::Target(
            "name target.instance_id, target.eni_id or target.private_ip".to_owned(),
        ));
    };
    let subject = Subject::new(
        ResourceKind::NetworkInterface,
        format!("with private IP {ip}"),
    );
    let out = caller
        .call("ec2:DescribeNetworkInterfaces", &subject, || {
            ec2.describe_network_interfaces()
                .filters(
                    Filter::builder()
                        .name("addresses.private-ip-address")
                        .values(ip.to_string())
                        .build(),
                )
                .send()
        })
        .await?;
    let matching: Vec<_> = out
        .network_interfaces()
        .iter()
        .filter(|eni| {
            eni.private_ip_addresses()
                .iter()
                .any(|a| a.private_ip_address().and_then(|s| s.parse().ok()) == Some(ip))
        })
        .collect();
    match matching.as_slice() {
        [eni] => Ok(Target {
            eni_id: non_empty(eni.network_interface_id()),
            instance_id: eni.attachment().and_then(|a| non_empty(a.instance_id())),
            ..target.clone()
        }),
        [] => Err(Error::Target(format!(
            "no network interface in region {} has private IP {ip}; name target.instance_id or target.eni_id",
            caller.region()
        ))),
        _ => Err(Error::Target(format!(
            "several network interfaces have private IP {ip} (different VPCs?); name target.eni_id"
        ))),
    }
}

/// Returns `target` with a private IP: the primary IP of its ENI or
/// instance when none is given.
pub(crate) async fn with_private_ip(
    ec2: &aws_sdk_ec2::Client,
    caller: &Caller,
    target: &Target,
) -> Result<Target> {
    if target.private_ip.is_some() {
        return Ok(target.clone());
    }
    let ip = if let Some(eni) = &target.eni_id {
        let subject = Subject::new(ResourceKind::NetworkInterface, eni);
        let out = caller
            .call("ec2:DescribeNetworkInterfaces", &subject, || {
                ec2.describe_network_interfaces()
                    .network_interface_ids(eni)
                    .send()
            })
            .await?;
        out.network_interfaces()
            .iter()
            .find(|n| n.network_interface_id() == Some(eni.as_str()))
            .and_then(|n| n.private_ip_address())
            .map(str::to_owned)
    } else if let Some(instance) = &target.instance_id {
        let subject = Subject::new(ResourceKind::Instance, instance);
        let out = caller
            .call("ec2:DescribeInstances", &subject, || {
                ec2.describe_instances().instance_ids(instance).send()
            })
            .await?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance.as_str()))
            .and_then(|i| i.private_ip_address())
            .map(str::to_owned)
    } else {
        return Err(Error::Target(
            "name target.private_ip (or target.instance_id / target.eni_id to look it up)"
                .to_owned(),
        ));
    };
    let ip: Ipv4Addr = ip.and_then(|s| s.parse().ok()).ok_or_else(|| {
        Error::Target(format!(
            "{} has no private IPv4 address; name target.private_ip",
            target.label()
        ))
    })?;
    Ok(Target {
        private_ip: Some(ip),
        ..target.clone()
    })
}
