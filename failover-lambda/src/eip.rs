//! Elastic IP mode: reassociate one allocation with the active instance.
//!
//! The address is found by allocation id (public IPs can be released and
//! handed to someone else; the allocation id cannot). Association always
//! sends `AllowReassociation=true`: the move is a single call that takes
//! the address from whoever holds it, with no window where nobody does. A
//! release disassociates only while the address is still the target's, so
//! a node stepping down late cannot take the address from its successor.

use std::time::Duration;

use crate::clients::region_of;
use crate::config::{EipConfig, MoveOptions};
use crate::error::{Error, ResourceKind, Result, Subject};
use crate::lookup;
use crate::mode::{Intent, Mode};
use crate::model::{AddressState, Change, Holder, Operation, Placement, Target, non_empty};
use crate::retry::Caller;

/// Moves an Elastic IP between instances or network interfaces.
#[derive(Debug, Clone)]
pub struct EipMover {
    config: EipConfig,
    ec2: aws_sdk_ec2::Client,
    caller: Caller,
    confirm_timeout: Duration,
}

/// The allocation as read from `DescribeAddresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EipState {
    pub allocation_id: String,
    pub public_ip: Option<String>,
    pub association_id: Option<String>,
    /// `None` when the address is not associated.
    pub holder: Option<Holder>,
}

/// A mutating call this mode makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EipStep {
    Associate {
        from: Option<Holder>,
        to: Target,
    },
    Disassociate {
        association_id: String,
        from: Holder,
    },
}

impl EipMover {
    pub fn new(config: EipConfig, ec2: aws_sdk_ec2::Client, options: &MoveOptions) -> Self {
        let region = region_of(ec2.config().region());
        EipMover {
            config,
            ec2,
            caller: Caller::new(options.retry.clone(), region),
            confirm_timeout: options.confirm_timeout,
        }
    }

    fn subject(&self) -> Subject {
        Subject::new(ResourceKind::ElasticIp, &self.config.allocation_id)
    }
}

impl Mode for EipMover {
    type State = EipState;
    type Step = EipStep;

    async fn prepare(&self, target: &Target) -> Result<Target> {
        lookup::with_attachment(&self.ec2, &self.caller, target).await
    }

    async fn read(&self) -> Result<EipState> {
        let id = &self.config.allocation_id;
        let out = self
            .caller
            .call("ec2:DescribeAddresses", &self.subject(), || {
                self.ec2.describe_addresses().allocation_ids(id).send()
            })
            .await?;
        let address = out
            .addresses()
            .iter()
            .find(|a| a.allocation_id() == Some(id.as_str()))
            .ok_or_else(|| {
                Error::listed_nothing(
                    "ec2:DescribeAddresses",
                    &self.subject(),
                    self.caller.region(),
                )
            })?;
        Ok(state_from_address(id, address))
    }

    fn describe(&self, state: &EipState) -> AddressState {
        AddressState {
            placements: vec![Placement {
                resource: state.allocation_id.clone(),
                holder: state.holder.clone(),
                detail: state.public_ip.as_ref().map(|ip| format!("public_ip {ip}")),
            }],
        }
    }

    fn holds(&self, state: &EipState, target: &Target) -> bool {
        state
            .holder
            .as_ref()
            .is_some_and(|h| target.is_attached_to(h) && target.ip_matches(h))
    }

    fn plan(&self, state: &EipState, target: &Target, intent: Intent) -> Vec<EipStep> {
        let holds = self.holds(state, target);
        match intent {
            Intent::Acquire if !holds => vec![EipStep::Associate {
                from: state.holder.clone(),
                to: target.clone(),
            }],
            Intent::Release if holds => match (&state.association_id, &state.holder) {
                (Some(association_id), Some(from)) => vec![EipStep::Disassociate {
                    association_id: association_id.clone(),
                    from: from.clone(),
                }],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn preview(&self, step: &EipStep) -> Change {
        let resource = self.config.allocation_id.clone();
        match step {
            EipStep::Associate { from, to } => Change {
                resource,
                operation: Operation::AssociateAddress,
                from: from.clone(),
                to: Some(Holder::from_target(to)),
                detail: None,
            },
            EipStep::Disassociate {
                association_id,
                from,
            } => Change {
                resource,
                operation: Operation::DisassociateAddress,
                from: Some(from.clone()),
                to: None,
                detail: Some(format!("association {association_id}")),
            },
        }
    }

    async fn apply(&self, step: EipStep) -> Result<Change> {
        let mut change = self.preview(&step);
        match &step {
            EipStep::Associate { to, .. } => {
                let out = self
                    .caller
                    .call("ec2:AssociateAddress", &self.subject(), || {
                        let mut req = self
                            .ec2
                            .associate_address()
                            .allocation_id(&self.config.allocation_id)
                            .allow_reassociation(true);
                        req = match (&to.eni_id, &to.instance_id) {
                            (Some(eni), _) => req.network_interface_id(eni),
                            (None, Some(instance)) => req.instance_id(instance),
                            (None, None) => req,
                        };
                        if let Some(ip) = to.private_ip {
                            req = req.private_ip_address(ip.to_string());
                        }
                        req.send()
                    })
                    .await?;
                change.detail = out.association_id().map(|a| format!("association {a}"));
            }
            EipStep::Disassociate { association_id, .. } => {
                let result = self
                    .caller
                    .call("ec2:DisassociateAddress", &self.subject(), || {
                        self.ec2
                            .disassociate_address()
                            .association_id(association_id)
                            .send()
                    })
                    .await;
                match result {
                    Ok(_) => {}
                    // Someone else reassociated it between our read and this
                    // call: their association is not ours to remove, and ours
                    // is gone, which is what release wanted.
                    Err(e) if e.code() == Some("InvalidAssociationID.NotFound") => {
                        change.detail =
                            Some(format!("association {association_id} was already gone"));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(change)
    }

    fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }
}

/// Reads the association; the empty strings some endpoints send for a
/// disassociated address count as absent.
fn state_from_address(allocation_id: &str, address: &aws_sdk_ec2::types::Address) -> EipState {
    let association_id = non_empty(address.association_id());
    let instance_id = non_empty(address.instance_id());
    let eni_id = non_empty(address.network_interface_id());
    let private_ip = non_empty(address.private_ip_address()).and_then(|s| s.parse().ok());
    let holder = (instance_id.is_some() || eni_id.is_some()).then_some(Holder {
        instance_id,
        eni_id,
        private_ip,
    });
    EipState {
        allocation_id: allocation_id.to_owned(),
        public_ip: non_empty(address.public_ip()),
        association_id,
        holder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Address;

    #[test]
    fn empty_instance_id_means_unassociated() {
        let address = Address::builder()
            .allocation_id("eipalloc-1")
            .public_ip("198.51.100.7")
            .instance_id("")
            .association_id("")
            .build();
        let state = state_from_address("eipalloc-1", &address);
        assert_eq!(state.holder, None);
        assert_eq!(state.association_id, None);
        assert_eq!(state.public_ip.as_deref(), Some("198.51.100.7"));
    }

    #[test]
    fn association_is_read_as_structured_fields() {
        let address = Address::builder()
            .allocation_id("eipalloc-1")
            .instance_id("i-a")
            .network_interface_id("eni-a")
            .private_ip_address("10.0.1.10")
            .association_id("eipassoc-1")
            .build();
        let state = state_from_address("eipalloc-1", &address);
        let holder = state.holder.unwrap();
        assert_eq!(holder.instance_id.as_deref(), Some("i-a"));
        assert_eq!(holder.private_ip, Some("10.0.1.10".parse().unwrap()));
    }
}
