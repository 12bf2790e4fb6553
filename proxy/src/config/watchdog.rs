//! `[watchdog]` and `[escalation]`: tidepool nodes as one highly-available
//! service, and how the active node claims the service address.
//! See `docs/watchdog.md`.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::ConfigError;

pub const WATCHDOG_PORT: u16 = 9000;
pub const HEARTBEAT_PORT: u16 = 9694;

/// `[watchdog]`: present means enabled.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// This node's name, unique in the cluster.
    pub node_name: String,
    /// TCP address for cluster messages (votes, transfers).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// UDP address for heartbeats.
    #[serde(default = "default_heartbeat_listen")]
    pub heartbeat_listen: SocketAddr,
    /// Key authenticating every watchdog message (HMAC-SHA256).
    #[serde(default)]
    pub shared_key: Option<String>,
    /// File whose first line is the key (instead of `shared_key`).
    #[serde(default)]
    pub shared_key_file: Option<String>,
    /// Higher wins: elections favour it and leadership moves to the
    /// highest-priority healthy node.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Every other node of the cluster.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// How often the leader stamps a heartbeat.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence from the leader after which a follower campaigns.
    #[serde(default = "default_election_timeout", with = "humantime_serde")]
    pub election_timeout: Duration,
    /// How long a quorum's acknowledgement lets the leader hold the address
    /// (default: 60% of `election_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// With an even number of nodes, half of them form a quorum (as
    /// Pgpool-II's `enable_consensus_with_half_votes`). Trades safety for
    /// availability: two halves that cannot talk both elect a leader.
    #[serde(default)]
    pub half_votes: bool,
    /// Leadership moves back to a higher-priority node only after it has
    /// been healthy and reachable this long ("0s" = never).
    #[serde(default = "default_failback_after", with = "humantime_serde")]
    pub priority_failback_after: Duration,
}

/// One `[[watchdog.peers]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// The peer's `watchdog.listen`.
    pub address: SocketAddr,
    /// The peer's `watchdog.heartbeat_listen` (default: its address with port 9694).
    #[serde(default)]
    pub heartbeat: Option<SocketAddr>,
    /// The peer's priority until it announces its own (every message does).
    #[serde(default)]
    pub priority: Option<u32>,
}

impl PeerConfig {
    pub fn priority_hint(&self) -> u32 {
        self.priority.unwrap_or(0)
    }

    pub fn heartbeat_addr(&self) -> SocketAddr {
        self.heartbeat
            .unwrap_or_else(|| SocketAddr::new(self.address.ip(), HEARTBEAT_PORT))
    }
}

/// Where address moves run.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscalationVia {
    /// The AWS calls run inside tidepool, with the node's own IAM role.
    #[default]
    InProcess,
    /// tidepool invokes the failover Lambda function.
    Lambda,
}

/// How traffic finds the active node.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AddressMode {
    Eip,
    Route53,
    RouteTable,
    /// `escalate_command` / `de_escalate_command` (on-premises VIPs, tests).
    Command,
    /// Elect a leader, move nothing.
    #[default]
    None,
}

impl AddressMode {
    pub fn is_aws(self) -> bool {
        matches!(
            self,
            AddressMode::Eip | AddressMode::Route53 | AddressMode::RouteTable
        )
    }
}

/// `[escalation]`: what the leader does with the service address.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    pub via: EscalationVia,
    pub mode: AddressMode,
    /// ARN of the failover function (`via = "lambda"`).
    pub lambda_function: Option<String>,
    pub eip_allocation_id: Option<String>,
    pub hosted_zone_id: Option<String>,
    pub record_name: Option<String>,
    pub record_ttl: Option<i64>,
    pub route_table_ids: Vec<String>,
    pub vip_cidr: Option<String>,
    /// Shell command run when this node becomes active (mode `command`).
    pub escalate_command: Option<String>,
    /// Shell command run when this node stops being active (mode `command`).
    pub de_escalate_command: Option<String>,
    /// Most time one escalation action may take.
    #[serde(with = "humantime_serde")]
    pub action_timeout: Duration,
    /// While active, re-check (and repair) the address this often.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            via: EscalationVia::InProcess,
            mode: AddressMode::None,
            lambda_function: None,
            eip_allocation_id: None,
            hosted_zone_id: None,
            record_name: None,
            record_ttl: None,
            route_table_ids: Vec::new(),
            vip_cidr: None,
            escalate_command: None,
            de_escalate_command: None,
            action_timeout: Duration::from_secs(30),
            verify_interval: Duration::from_secs(10),
        }
    }
}

fn default_listen() -> SocketAddr {
    ([0, 0, 0, 0], WATCHDOG_PORT).into()
}
fn default_heartbeat_listen() -> SocketAddr {
    ([0, 0, 0, 0], HEARTBEAT_PORT).into()
}
fn default_priority() -> u32 {
    1
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_election_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_failback_after() -> Duration {
    Duration::from_secs(30)
}

impl WatchdogConfig {
    /// The state machine's clock resolution: a quarter heartbeat.
    pub fn tick(&self) -> Duration {
        (self.heartbeat_interval / 4).max(Duration::from_millis(1))
    }

    /// Nodes that make a quorum: a majority of the members, or half of an
    /// even number with `half_votes`.
    pub fn quorum(&self) -> usize {
        let n = self.peers.len() + 1;
        if self.half_votes && n.is_multiple_of(2) {
            n / 2
        } else {
            n / 2 + 1
        }
    }

    /// The lease, configured or derived (60% of the election timeout).
    pub fn lease(&self) -> Duration {
        self.lease.unwrap_or(self.election_timeout * 3 / 5)
    }

    /// The longest safe lease: a follower that last heard the leader at
    /// `t` votes no earlier than `t + election_timeout - tick`; the leader
    /// notices expiry at most a tick late; clocks may run 10% apart.
    pub fn max_lease(&self) -> Duration {
        let et = self.election_timeout;
        et.saturating_sub(self.tick() * 2).saturating_sub(et / 10)
    }

    /// The shared key from `shared_key` or the first line of `shared_key_file`.
    pub fn key(&self) -> std::io::Result<Vec<u8>> {
        if let Some(k) = &self.shared_key {
            return Ok(k.as_bytes().to_vec());
        }
        let file = self.shared_key_file.as_deref().unwrap_or_default();
        let text = std::fs::read_to_string(file)?;
        Ok(text.lines().next().unwrap_or("").trim().as_bytes().to_vec())
    }
}

/// Checks of `[watchdog]` and `[escalation]` that need more than one key.
pub fn validate(
    watchdog: Option<&WatchdogConfig>,
    escalation: Option<&EscalationConfig>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, msg: String| errors.push(ConfigError::new(path, msg));
    if let Some(w) = watchdog {
        if w.node_name.trim().is_empty() {
            err("watchdog.node_name", "must not be empty".into());
        }
        match (&w.shared_key, &w.shared_key_file) {
            (None, None) => err(
                "watchdog.shared_key",
                "set shared_key or shared_key_file: every watchdog message is authenticated with it"
                    .into(),
            ),
            (Some(_), Some(_)) => err(
                "watchdog.shared_key_file",
                "set shared_key or shared_key_file, not both".into(),
            ),
            (Some(k), None) if k.len() < 16 => err(
                "watchdog.shared_key",
                "must be at least 16 characters".into(),
            ),
            _ => {}
        }
        if w.listen == w.heartbeat_listen {
            err(
                "watchdog.heartbeat_listen",
                "must differ from watchdog.listen".into(),
            );
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, p) in w.peers.iter().enumerate() {
            if p.name.trim().is_empty() {
                err(
                    &format!("watchdog.peers[{i}].name"),
                    "must not be empty".into(),
                );
            } else if p.name == w.node_name {
                err(
                    &format!("watchdog.peers[{i}].name"),
                    format!(
                        "{:?} is this node's own node_name; list only the other nodes",
                        p.name
                    ),
                );
            } else if !names.insert(p.name.as_str()) {
                err(
                    &format!("watchdog.peers[{i}].name"),
                    format!("duplicate peer {:?}; names must be unique", p.name),
                );
            }
            if !addrs.insert(p.address) {
                err(
                    &format!("watchdog.peers[{i}].address"),
                    format!("{} is listed twice", p.address),
                );
            }
        }
        if w.heartbeat_interval.is_zero() {
            err(
                "watchdog.heartbeat_interval",
                "must be greater than 0".into(),
            );
        }
        if w.election_timeout < w.heartbeat_interval * 5 {
            err(
                "watchdog.election_timeout",
                format!(
                    "must be at least 5 heartbeat intervals ({:?})",
                    w.heartbeat_interval * 5
                ),
            );
        }
        let lease = w.lease();
        if lease.is_zero() || lease > w.max_lease() {
            err(
                "watchdog.lease",
                format!(
                    "must be between 0 and {:?} (election_timeout minus two ticks and a 10% clock margin), \
                     or a deposed leader could still hold the address when the next one takes it",
                    w.max_lease()
                ),
            );
        }
        if lease <= w.heartbeat_interval * 2 {
            err(
                "watchdog.lease",
                "must exceed two heartbeat intervals, or one lost heartbeat drops the address"
                    .into(),
            );
        }
    }
    if let Some(e) = escalation {
        if watchdog.is_none() {
            err(
                "escalation",
                "needs a [watchdog] section: only the elected node escalates".into(),
            );
        }
        let need = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
        match e.mode {
            AddressMode::Eip if need(&e.eip_allocation_id) => err(
                "escalation.eip_allocation_id",
                "mode \"eip\" needs the Elastic IP's allocation id (eipalloc-…)".into(),
            ),
            AddressMode::Route53 => {
                if need(&e.hosted_zone_id) {
                    err(
                        "escalation.hosted_zone_id",
                        "mode \"route53\" needs the hosted zone id".into(),
                    );
                }
                if need(&e.record_name) {
                    err(
                        "escalation.record_name",
                        "mode \"route53\" needs the record name".into(),
                    );
                }
            }
            AddressMode::RouteTable => {
                if e.route_table_ids.is_empty() {
                    err(
                        "escalation.route_table_ids",
                        "mode \"route_table\" needs at least one route table id".into(),
                    );
                }
                match e.vip_cidr.as_deref().map(str::parse::<ipnet::IpNet>) {
                    None => err(
                        "escalation.vip_cidr",
                        "mode \"route_table\" needs the VIP as a /32 CIDR".into(),
                    ),
                    Some(Err(x)) => err("escalation.vip_cidr", format!("not a CIDR: {x}")),
                    Some(Ok(_)) => {}
                }
            }
            AddressMode::Command if need(&e.escalate_command) => err(
                "escalation.escalate_command",
                "mode \"command\" needs escalate_command (and usually de_escalate_command)".into(),
            ),
            _ => {}
        }
        if let Some(t) = e.record_ttl
            && t < 0
        {
            err("escalation.record_ttl", "must be >= 0".into());
        }
        if e.via == EscalationVia::Lambda {
            if need(&e.lambda_function) {
                err(
                    "escalation.lambda_function",
                    "via \"lambda\" needs the function's name or ARN".into(),
                );
            }
            if !e.mode.is_aws() {
                err(
                    "escalation.via",
                    "via \"lambda\" moves AWS addresses only: use mode eip, route53 or route_table"
                        .into(),
                );
            }
        }
        if e.verify_interval.is_zero() {
            err(
                "escalation.verify_interval",
                "must be greater than 0".into(),
            );
        }
        if e.action_timeout.is_zero() {
            err("escalation.action_timeout", "must be greater than 0".into());
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use crate::config::{AddressMode, Config};

    const BASE: &str = r#"
[[backends]]
name = "pg0"
host = "127.0.0.1"
[[users]]
name = "app"
password = "secret"
"#;

    fn load(extra: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
        Config::load_str(&format!("{BASE}\n{extra}"))
    }

    fn paths(extra: &str) -> Vec<String> {
        load(extra)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    /// What infra's render-config writes for an EC2 node, key for key.
    const RENDERED: &str = r#"
[watchdog]
node_name = "tp-a"
listen = "0.0.0.0:9000"
heartbeat_listen = "0.0.0.0:9694"
shared_key_file = "/etc/tidepool/watchdog.key"
priority = 3

[[watchdog.peers]]
name = "tp-b"
address = "10.0.2.11:9000"
heartbeat = "10.0.2.11:9694"

[[watchdog.peers]]
name = "tp-c"
address = "10.0.3.11:9000"
heartbeat = "10.0.3.11:9694"

[escalation]
via = "lambda"
mode = "route_table"
lambda_function = "arn:aws:lambda:eu-west-1:123456789012:function:tp"
route_table_ids = ["rtb-1", "rtb-2"]
vip_cidr = "192.168.255.10/32"
"#;

    #[test]
    fn the_rendered_infra_layout_is_accepted() {
        let c = load(RENDERED).unwrap();
        let w = c.watchdog.unwrap();
        assert_eq!(w.peers.len(), 2);
        assert_eq!(w.priority, 3);
        assert_eq!(w.lease(), std::time::Duration::from_millis(600));
        assert_eq!(c.escalation.unwrap().mode, AddressMode::RouteTable);
    }

    #[test]
    fn no_watchdog_section_means_no_watchdog() {
        let c = load("").unwrap();
        assert!(c.watchdog.is_none() && c.escalation.is_none());
    }

    #[test]
    fn mode_parameters_are_required_with_their_key_path() {
        let p = paths(
            "[watchdog]\nnode_name = \"a\"\nshared_key = \"0123456789abcdef\"\n\
             [escalation]\nmode = \"eip\"\nvia = \"lambda\"\n",
        );
        assert!(p.contains(&"escalation.eip_allocation_id".into()), "{p:?}");
        assert!(p.contains(&"escalation.lambda_function".into()), "{p:?}");
        let p = paths(
            "[watchdog]\nnode_name = \"a\"\nshared_key = \"0123456789abcdef\"\n\
             [escalation]\nmode = \"command\"\n",
        );
        assert_eq!(p, vec!["escalation.escalate_command".to_string()]);
    }

    #[test]
    fn peers_must_be_unique_and_not_this_node() {
        let p = paths(
            "[watchdog]\nnode_name = \"a\"\n\
             [[watchdog.peers]]\nname = \"a\"\naddress = \"10.0.0.1:9000\"\n\
             [[watchdog.peers]]\nname = \"b\"\naddress = \"10.0.0.2:9000\"\n\
             [[watchdog.peers]]\nname = \"b\"\naddress = \"10.0.0.3:9000\"\n",
        );
        assert!(p.contains(&"watchdog.shared_key".into()), "{p:?}");
        assert!(p.contains(&"watchdog.peers[0].name".into()), "{p:?}");
        assert!(p.contains(&"watchdog.peers[2].name".into()), "{p:?}");
        let p = paths(
            "[watchdog]\nnode_name = \"a\"\nshared_key = \"0123456789abcdef\"\n\
             [[watchdog.peers]]\nname = \"b\"\naddress = \"10.0.0.2:9000\"\ncolour = 1\n",
        );
        assert_eq!(p, vec!["watchdog.peers[0].colour".to_string()]);
    }

    #[test]
    fn a_lease_longer_than_the_election_timeout_allows_is_refused() {
        let p = paths(
            "[watchdog]\nnode_name = \"a\"\nshared_key = \"0123456789abcdef\"\n\
             election_timeout = \"1s\"\nlease = \"950ms\"\n",
        );
        assert_eq!(p, vec!["watchdog.lease".to_string()]);
    }

    #[test]
    fn escalation_needs_a_watchdog() {
        assert_eq!(
            paths("[escalation]\nmode = \"none\"\n"),
            vec!["escalation".to_string()]
        );
    }
}
