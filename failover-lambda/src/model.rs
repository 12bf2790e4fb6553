//! The values movers read, compare and report.
//!
//! State is always compared field by field (ids, parsed addresses), never
//! by searching text: `10.0.1.1` must not match `10.0.1.10`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where the address should go: an instance, or a network interface, and
/// optionally the private IP on it. `node` is the tidepool node name, carried
/// through so answers can say which node became active.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Target {
    pub fn instance(id: impl Into<String>) -> Self {
        Target {
            instance_id: Some(id.into()),
            ..Target::default()
        }
    }

    pub fn eni(id: impl Into<String>) -> Self {
        Target {
            eni_id: Some(id.into()),
            ..Target::default()
        }
    }

    pub fn with_private_ip(mut self, ip: Ipv4Addr) -> Self {
        self.private_ip = Some(ip);
        self
    }

    /// Whether `holder` is attached to this target. An ENI, when given, is
    /// the sharper identity (an instance may have several interfaces).
    pub fn is_attached_to(&self, holder: &Holder) -> bool {
        match (&self.eni_id, &self.instance_id) {
            (Some(eni), _) => holder.eni_id.as_ref() == Some(eni),
            (None, Some(instance)) => holder.instance_id.as_ref() == Some(instance),
            (None, None) => false,
        }
    }

    /// Whether `holder` carries this target's private IP; true when the
    /// target names none.
    pub fn ip_matches(&self, holder: &Holder) -> bool {
        self.private_ip
            .is_none_or(|ip| holder.private_ip == Some(ip))
    }

    /// A short name for logs and messages.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(node) = &self.node {
            parts.push(format!("node {node}"));
        }
        if let Some(id) = &self.instance_id {
            parts.push(id.clone());
        }
        if let Some(id) = &self.eni_id {
            parts.push(id.clone());
        }
        if let Some(ip) = self.private_ip {
            parts.push(ip.to_string());
        }
        if parts.is_empty() {
            "an empty target".to_owned()
        } else {
            parts.join(" / ")
        }
    }
}

/// What an address currently points at. Only the fields the mode knows are
/// set (a DNS record knows an IP; a route knows an instance or an ENI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
}

impl Holder {
    /// The holder a target describes, as written into AWS.
    pub fn from_target(target: &Target) -> Holder {
        Holder {
            instance_id: target.instance_id.clone(),
            eni_id: target.eni_id.clone(),
            private_ip: target.private_ip,
        }
    }
}

/// One AWS resource that carries the address (the Elastic IP, the record,
/// or one route table) and what it points at now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The resource id: `eipalloc-...`, `Z.../name.`, `rtb-...`.
    pub resource: String,
    /// `None` when the address points nowhere (disassociated, no route, no record).
    pub holder: Option<Holder>,
    /// Facts worth showing that are not the holder (public IP, TTL, route state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where the address is, across every resource of the mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AddressState {
    pub placements: Vec<Placement>,
}

impl AddressState {
    /// The single holder every placement agrees on, if they agree and
    /// point somewhere.
    pub fn single_holder(&self) -> Option<&Holder> {
        let first = self.placements.first()?.holder.as_ref()?;
        self.placements
            .iter()
            .all(|p| p.holder.as_ref() == Some(first))
            .then_some(first)
    }
}

/// A mutating AWS call, made or (in a dry run) planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    AssociateAddress,
    DisassociateAddress,
    UpsertRecord,
    CreateRoute,
    ReplaceRoute,
    DeleteRoute,
}

/// One change to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub resource: String,
    pub operation: Operation,
    pub from: Option<Holder>,
    pub to: Option<Holder>,
    /// E.g. the Route53 change id and whether it reached INSYNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The outcome of an acquire or a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReport {
    pub before: AddressState,
    pub after: AddressState,
    /// Changes made, or in a dry run the changes that would be made.
    pub changes: Vec<Change>,
    /// False for a dry run: nothing was sent.
    pub applied: bool,
}

impl MoveReport {
    /// Whether a mutating AWS call was made.
    pub fn changed(&self) -> bool {
        self.applied && !self.changes.is_empty()
    }
}

/// Whether the address points at a target, from a fresh read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub holds: bool,
    pub state: AddressState,
}

/// Treats the empty strings some APIs return for "no value" as absent.
pub(crate) fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(instance: &str, eni: &str, ip: &str) -> Holder {
        Holder {
            instance_id: Some(instance.into()),
            eni_id: Some(eni.into()),
            private_ip: Some(ip.parse().unwrap()),
        }
    }

    #[test]
    fn addresses_are_compared_whole_not_as_substrings() {
        let h = holder("i-a", "eni-a", "10.0.1.10");
        let t = Target::instance("i-a").with_private_ip("10.0.1.1".parse().unwrap());
        assert!(t.is_attached_to(&h) && !t.ip_matches(&h));
        let t = Target::instance("i-a").with_private_ip("10.0.1.10".parse().unwrap());
        assert!(t.is_attached_to(&h) && t.ip_matches(&h));
        assert!(!Target::instance("i-ab").is_attached_to(&h));
        assert!(!Target::instance("i-").is_attached_to(&h));
    }

    #[test]
    fn eni_is_the_sharper_identity() {
        let h = holder("i-a", "eni-a2", "10.0.2.10");
        let t = Target {
            instance_id: Some("i-a".into()),
            eni_id: Some("eni-a1".into()),
            ..Target::default()
        };
        assert!(!t.is_attached_to(&h));
    }

    #[test]
    fn single_holder_needs_agreement() {
        let a = holder("i-a", "eni-a", "10.0.1.10");
        let mut state = AddressState {
            placements: vec![
                Placement {
                    resource: "rtb-1".into(),
                    holder: Some(a.clone()),
                    detail: None,
                },
                Placement {
                    resource: "rtb-2".into(),
                    holder: Some(a.clone()),
                    detail: None,
                },
            ],
        };
        assert_eq!(state.single_holder(), Some(&a));
        state.placements[1].holder = None;
        assert_eq!(state.single_holder(), None);
    }

    #[test]
    fn empty_strings_are_absent() {
        assert_eq!(non_empty(Some("")), None);
        assert_eq!(non_empty(Some("i-1")), Some("i-1".to_owned()));
        assert_eq!(non_empty(None), None);
    }
}
