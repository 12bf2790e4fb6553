//! The function's event and answer (the contract in DESIGN.md).
//!
//! ```json
//! { "action": "escalate" | "de_escalate" | "switchover" | "status",
//!   "mode": "eip" | "route53" | "route_table",
//!   "target": { "instance_id": "i-…", "private_ip": "10.0.1.11", "node": "tp-b" },
//!   "dry_run": false }
//! ```
//! Any mode parameter may be given too, under the name of its environment
//! variable without the `TIDEPOOL_` prefix, in lower case
//! (`eip_allocation_id`, `hosted_zone_id`, `record_name`, `record_ttl`,
//! `route_table_ids`, `vip_cidr`). Unknown keys are refused rather than
//! ignored: a misspelt `dry_run` must not turn a rehearsal into a move.

use serde::{Deserialize, Serialize};

use crate::config::{ModeName, Settings, split_ids};
use crate::model::{AddressState, Change, Target};

/// What the caller wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Point the address at the target (by default, this instance).
    Escalate,
    /// Stop the address pointing at the target, if it still does.
    DeEscalate,
    /// Planned move to a named node; the answer names it as the active node.
    Switchover,
    /// Read where the address points; with a target, whether it holds it.
    Status,
}

/// Route table ids as a JSON list or one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdList {
    List(Vec<String>),
    Text(String),
}

impl IdList {
    pub fn ids(&self) -> Vec<String> {
        match self {
            IdList::List(ids) => ids.iter().flat_map(|s| split_ids(s)).collect(),
            IdList::Text(text) => split_ids(text),
        }
    }
}

/// One invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub action: Action,
    #[serde(default)]
    pub mode: Option<ModeName>,
    #[serde(default)]
    pub target: Option<Target>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub eip_allocation_id: Option<String>,
    #[serde(default)]
    pub hosted_zone_id: Option<String>,
    #[serde(default)]
    pub record_name: Option<String>,
    #[serde(default)]
    pub record_ttl: Option<i64>,
    #[serde(default)]
    pub route_table_ids: Option<IdList>,
    #[serde(default)]
    pub vip_cidr: Option<String>,
}

impl Event {
    /// The mode parameters this event overrides.
    pub fn overrides(&self) -> Settings {
        Settings {
            mode: self.mode,
            eip_allocation_id: self.eip_allocation_id.clone(),
            hosted_zone_id: self.hosted_zone_id.clone(),
            record_name: self.record_name.clone(),
            record_ttl: self.record_ttl,
            route_table_ids: self.route_table_ids.as_ref().map(IdList::ids),
            vip_cidr: self.vip_cidr.clone(),
        }
    }
}

/// The answer to one invocation. Every field is always present (`null`
/// when it does not apply) so scripts can read it without guessing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// True when the action did what was asked (or, in a dry run, could plan it).
    pub ok: bool,
    pub action: Option<Action>,
    pub mode: Option<ModeName>,
    pub dry_run: bool,
    /// The target as resolved (from the event, or this instance's metadata).
    pub target: Option<Target>,
    /// After a switchover: the node that is now active and holds the address.
    pub active_node: Option<String>,
    /// Whether a mutating AWS call was made.
    pub changed: bool,
    /// The changes made, or in a dry run the changes that would be made.
    pub changes: Vec<Change>,
    /// For status (with a target) and switchover: whether the target holds
    /// the address, from a fresh read.
    pub holds: Option<bool>,
    pub before: Option<AddressState>,
    pub after: Option<AddressState>,
    pub elapsed_ms: u64,
    /// What went wrong and what to fix; `null` when `ok`.
    pub error: Option<String>,
}

impl Answer {
    pub(crate) fn empty() -> Answer {
        Answer {
            ok: false,
            action: None,
            mode: None,
            dry_run: false,
            target: None,
            active_node: None,
            changed: false,
            changes: Vec::new(),
            holds: None,
            before: None,
            after: None,
            elapsed_ms: 0,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_event_parses() {
        let e: Event = serde_json::from_value(json!({
            "action": "switchover", "mode": "eip",
            "target": { "instance_id": "i-1", "private_ip": "10.0.1.11", "node": "tp-b" },
            "dry_run": false
        }))
        .unwrap();
        assert_eq!(e.action, Action::Switchover);
        assert_eq!(e.target.unwrap().node.as_deref(), Some("tp-b"));
    }

    #[test]
    fn misspelt_keys_are_refused() {
        let err = serde_json::from_value::<Event>(json!({"action": "escalate", "dryrun": true}))
            .unwrap_err();
        assert!(err.to_string().contains("dryrun"), "{err}");
    }

    #[test]
    fn route_tables_may_be_a_list_or_text() {
        let e: Event =
            serde_json::from_value(json!({"action": "status", "route_table_ids": "rtb-1,rtb-2"}))
                .unwrap();
        assert_eq!(
            e.overrides().route_table_ids.unwrap(),
            vec!["rtb-1", "rtb-2"]
        );
        let e: Event =
            serde_json::from_value(json!({"action": "status", "route_table_ids": ["rtb-3"]}))
                .unwrap();
        assert_eq!(e.overrides().route_table_ids.unwrap(), vec!["rtb-3"]);
    }
}
