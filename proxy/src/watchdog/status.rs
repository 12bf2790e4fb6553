//! The watchdog's published state: what `GET /v1/watchdog`,
//! `SHOW POOL_WATCHDOG` and `tidepool ctl watchdog` show.

use serde::Serialize;

use super::core::Standing;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WatchdogStatus {
    /// This node's name.
    pub node: String,
    pub term: u64,
    pub role: Standing,
    /// The leader this node knows of.
    pub leader: Option<String>,
    /// Whether this node holds (or is claiming) the service address.
    pub escalated: bool,
    /// Leader: a live lease; follower: its leader heard recently.
    pub quorum: bool,
    /// Milliseconds left on this node's lease (0 unless leader).
    pub lease_remaining_ms: u64,
    /// `eip`, `route53`, `route_table`, `command` or `none`.
    pub address_mode: String,
    pub address: AddressStatus,
    pub nodes: Vec<NodeStatus>,
    /// Wall-clock time of the last change of role, leader or escalation.
    pub last_change_unix_ms: u64,
    /// Frames refused: bad signature, unknown sender, stale or misaddressed.
    pub rejected_frames: u64,
    /// Backends some node sees failing, and who: a backend is detached
    /// only when a quorum does.
    pub backend_failures: Vec<crate::cluster::consensus::Votes>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct AddressStatus {
    /// Who the address points at, as last seen by this node.
    pub holder: Option<String>,
    pub last_action: Option<String>,
    pub last_result: Option<String>,
    pub last_action_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    pub priority: u32,
    /// `leader`, `follower` or `unreachable` (as this node sees it).
    pub state: &'static str,
    pub is_self: bool,
    /// Milliseconds since this node last heard from it (none for itself).
    pub last_seen_ms_ago: Option<u64>,
    /// Its health as it last reported it (a leader hears every node's;
    /// a follower only its own).
    pub healthy: Option<bool>,
}
