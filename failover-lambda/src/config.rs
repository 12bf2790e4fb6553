//! Mode configuration: what address to move, and how patiently.
//!
//! The function reads its defaults from `TIDEPOOL_*` environment variables
//! (the names are a contract, see DESIGN.md) and a single event may override
//! any of them. [`Settings`] is that loose, partly filled form; a
//! [`ModeConfig`] is the checked form a mover is built from. Errors name the
//! environment variable to set, since that is where an operator fixes them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub const ENV_MODE: &str = "TIDEPOOL_MODE";
pub const ENV_EIP_ALLOCATION_ID: &str = "TIDEPOOL_EIP_ALLOCATION_ID";
pub const ENV_HOSTED_ZONE_ID: &str = "TIDEPOOL_HOSTED_ZONE_ID";
pub const ENV_RECORD_NAME: &str = "TIDEPOOL_RECORD_NAME";
pub const ENV_RECORD_TTL: &str = "TIDEPOOL_RECORD_TTL";
pub const ENV_ROUTE_TABLE_IDS: &str = "TIDEPOOL_ROUTE_TABLE_IDS";
pub const ENV_VIP_CIDR: &str = "TIDEPOOL_VIP_CIDR";

/// The record TTL when none is configured: one second, so resolvers that
/// honour it follow a move almost at once.
pub const DEFAULT_RECORD_TTL: i64 = 1;

/// A configuration value that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no address mode given: set {ENV_MODE} to eip, route53 or route_table, or put \"mode\" in the event"
    )]
    NoMode,
    #[error("mode {mode} needs {key}: set it in the environment or give {event_key} in the event")]
    Missing {
        mode: ModeName,
        key: &'static str,
        event_key: &'static str,
    },
    #[error("{key}={value:?} is not valid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The three ways the service address can move on AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    /// Reassociate an Elastic IP.
    Eip,
    /// UPSERT a Route53 A record.
    Route53,
    /// Point a VPC route for the VIP at the active instance.
    RouteTable,
}

impl ModeName {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeName::Eip => "eip",
            ModeName::Route53 => "route53",
            ModeName::RouteTable => "route_table",
        }
    }
}

impl fmt::Display for ModeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModeName {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "eip" => Ok(ModeName::Eip),
            "route53" => Ok(ModeName::Route53),
            "route_table" => Ok(ModeName::RouteTable),
            other => Err(ConfigError::Invalid {
                key: ENV_MODE,
                value: other.to_owned(),
                reason: "expected eip, route53 or route_table".to_owned(),
            }),
        }
    }
}

/// Elastic IP mode: which allocation to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EipConfig {
    /// `eipalloc-...`; the allocation id, because public IPs can be reused.
    pub allocation_id: String,
}

/// Route53 mode: which A record to point at the active node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route53Config {
    pub hosted_zone_id: String,
    /// Fully qualified, stored with a trailing dot and in lower case, the
    /// way Route53 returns names, so comparisons are exact.
    pub record_name: String,
    pub ttl: i64,
    /// How long to wait for the change to reach INSYNC before reporting
    /// success anyway (the change is accepted and will propagate).
    pub insync_wait: Duration,
}

impl Route53Config {
    pub fn new(hosted_zone_id: impl Into<String>, record_name: &str, ttl: i64) -> Self {
        Route53Config {
            hosted_zone_id: normalize_zone_id(&hosted_zone_id.into()),
            record_name: normalize_record_name(record_name),
            ttl,
            insync_wait: Duration::from_secs(60),
        }
    }
}

/// Route-table mode: which tables carry the VIP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableConfig {
    pub route_table_ids: Vec<String>,
    /// The VIP as a CIDR (usually a /32 outside the VPC's own CIDR).
    pub vip_cidr: Ipv4Net,
}

/// A checked configuration for one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeConfig {
    Eip(EipConfig),
    Route53(Route53Config),
    RouteTable(RouteTableConfig),
}

impl ModeConfig {
    pub fn mode(&self) -> ModeName {
        match self {
            ModeConfig::Eip(_) => ModeName::Eip,
            ModeConfig::Route53(_) => ModeName::Route53,
            ModeConfig::RouteTable(_) => ModeName::RouteTable,
        }
    }
}

/// Timing of a move: per-call retries and how long to wait for the new
/// state to show up in a fresh read.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveOptions {
    pub retry: RetryPolicy,
    /// After a change, how long fresh reads may lag before the move is
    /// reported as unconfirmed (EC2 reads are eventually consistent).
    pub confirm_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            retry: RetryPolicy::default(),
            confirm_timeout: Duration::from_secs(15),
        }
    }
}

/// Mode parameters as given: every field optional, from the environment
/// and then from an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub mode: Option<ModeName>,
    pub eip_allocation_id: Option<String>,
    pub hosted_zone_id: Option<String>,
    pub record_name: Option<String>,
    pub record_ttl: Option<i64>,
    pub route_table_ids: Option<Vec<String>>,
    pub vip_cidr: Option<String>,
}

impl Settings {
    /// Reads the `TIDEPOOL_*` variables through `lookup` (so tests need not
    /// touch the process environment). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let get = |key: &str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mode = get(ENV_MODE).map(|m| m.parse()).transpose()?;
        let record_ttl = get(ENV_RECORD_TTL)
            .map(|v| parse_ttl(ENV_RECORD_TTL, &v))
            .transpose()?;
        let route_table_ids = get(ENV_ROUTE_TABLE_IDS).map(|v| split_ids(&v));
        Ok(Settings {
            mode,
            eip_allocation_id: get(ENV_EIP_ALLOCATION_ID),
            hosted_zone_id: get(ENV_HOSTED_ZONE_ID),
            record_name: get(ENV_RECORD_NAME),
            record_ttl,
            route_table_ids,
            vip_cidr: get(ENV_VIP_CIDR),
        })
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Returns these settings with every field `other` sets taking its place.
    pub fn overridden_by(&self, other: &Settings) -> Settings {
        Settings {
            mode: other.mode.or(self.mode),
            eip_allocation_id: other
                .eip_allocation_id
                .clone()
                .or_else(|| self.eip_allocation_id.clone()),
            hosted_zone_id: other
                .hosted_zone_id
                .clone()
                .or_else(|| self.hosted_zone_id.clone()),
            record_name: other
                .record_name
                .clone()
                .or_else(|| self.record_name.clone()),
            record_ttl: other.record_ttl.or(self.record_ttl),
            route_table_ids: other
                .route_table_ids
                .clone()
                .or_else(|| self.route_table_ids.clone()),
            vip_cidr: other.vip_cidr.clone().or_else(|| self.vip_cidr.clone()),
        }
    }

    /// The checked configuration of the selected mode.
    pub fn mode_config(&self) -> Result<ModeConfig, ConfigError> {
        let mode = self.mode.ok_or(ConfigError::NoMode)?;
        let need = |value: &Option<String>, key: &'static str, event_key: &'static str| {
            value
                .clone()
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing {
                    mode,
                    key,
                    event_key,
                })
        };
        match mode {
            ModeName::Eip => Ok(ModeConfig::Eip(EipConfig {
                allocation_id: need(
                    &self.eip_allocation_id,
                    ENV_EIP_ALLOCATION_ID,
                    "eip_allocation_id",
                )?,
            })),
            ModeName::Route53 => {
                let zone = need(&self.hosted_zone_id, ENV_HOSTED_ZONE_ID, "hosted_zone_id")?;
                let name = need(&self.record_name, ENV_RECORD_NAME, "record_name")?;
                let ttl = self.record_ttl.unwrap_or(DEFAULT_RECORD_TTL);
                if !(0..=2_147_483_647).contains(&ttl) {
                    return Err(ConfigError::Invalid {
                        key: ENV_RECORD_TTL,
                        value: ttl.to_string(),
                        reason: "a TTL is 0..2147483647 seconds".to_owned(),
                    });
                }
                Ok(ModeConfig::Route53(Route53Config::new(zone, &name, ttl)))
            }
            ModeName::RouteTable => {
                let ids: Vec<String> = self
                    .route_table_ids
                    .iter()
                    .flatten()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if ids.is_empty() {
                    return Err(ConfigError::Missing {
                        mode,
                        key: ENV_ROUTE_TABLE_IDS,
                        event_key: "route_table_ids",
                    });
                }
                let cidr = need(&self.vip_cidr, ENV_VIP_CIDR, "vip_cidr")?;
                Ok(ModeConfig::RouteTable(RouteTableConfig {
                    route_table_ids: ids,
                    vip_cidr: parse_vip_cidr(&cidr)?,
                }))
            }
        }
    }
}

/// Parses the VIP: `10.99.0.10/32`, or a bare address meaning its /32.
pub fn parse_vip_cidr(value: &str) -> Result<Ipv4Net, ConfigError> {
    let value = value.trim();
    let parsed = if value.contains('/') {
        value.parse::<Ipv4Net>().map_err(|e| e.to_string())
    } else {
        value
            .parse::<std::net::Ipv4Addr>()
            .map(Ipv4Net::from)
            .map_err(|e| e.to_string())
    };
    match parsed {
        // AWS stores the network address; compare in that form.
        Ok(net) => Ok(net.trunc()),
        Err(reason) => Err(ConfigError::Invalid {
            key: ENV_VIP_CIDR,
            value: value.to_owned(),
            reason: format!("expected an IPv4 CIDR such as 10.99.0.10/32 ({reason})"),
        }),
    }
}

fn parse_ttl(key: &'static str, value: &str) -> Result<i64, ConfigError> {
    value.parse::<i64>().map_err(|e| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: format!("expected whole seconds ({e})"),
    })
}

/// Splits a comma-separated id list, dropping blanks.
pub fn split_ids(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Route53 returns zone ids as `/hostedzone/Z123`; the API accepts both.
pub fn normalize_zone_id(id: &str) -> String {
    id.trim().trim_start_matches("/hostedzone/").to_owned()
}

/// Route53 names are case-insensitive and returned fully qualified.
pub fn normalize_record_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// How long one call may take and how hard to retry it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Upper bound for a single attempt (request + response).
    pub call_timeout: Duration,
    /// Attempts including the first.
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per attempt up to `max_delay`.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first one.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// Sized so a whole move (a handful of calls) fits well inside a
    /// 60-second Lambda timeout even when every call is throttled twice.
    fn default() -> Self {
        RetryPolicy {
            call_timeout: Duration::from_secs(5),
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(4),
            deadline: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1`: a uniform draw between half
    /// of and the whole of an exponentially growing ceiling, so that proxies
    /// throttled together do not retry together, yet each waits a while.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(ceiling_ms / 2..=ceiling_ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn route_table_settings_parse_ids_and_bare_vip() {
        let s = Settings::from_lookup(lookup(&[
            ("TIDEPOOL_MODE", "route_table"),
            ("TIDEPOOL_ROUTE_TABLE_IDS", " rtb-1, ,rtb-2 "),
            ("TIDEPOOL_VIP_CIDR", "10.99.0.10"),
        ]))
        .unwrap();
        let ModeConfig::RouteTable(rt) = s.mode_config().unwrap() else {
            panic!("wrong mode")
        };
        assert_eq!(rt.route_table_ids, vec!["rtb-1", "rtb-2"]);
        assert_eq!(rt.vip_cidr.to_string(), "10.99.0.10/32");
    }

    #[test]
    fn missing_values_name_the_variable() {
        let s = Settings::from_lookup(lookup(&[("TIDEPOOL_MODE", "eip")])).unwrap();
        let err = s.mode_config().unwrap_err().to_string();
        assert!(err.contains("TIDEPOOL_EIP_ALLOCATION_ID"), "{err}");
        let err = Settings::default().mode_config().unwrap_err().to_string();
        assert!(err.contains("TIDEPOOL_MODE"), "{err}");
        let err = Settings::from_lookup(lookup(&[("TIDEPOOL_MODE", "vip")])).unwrap_err();
        assert!(err.to_string().contains("route_table"), "{err}");
    }

    #[test]
    fn event_values_override_environment_values() {
        let env = Settings::from_lookup(lookup(&[
            ("TIDEPOOL_MODE", "route53"),
            ("TIDEPOOL_HOSTED_ZONE_ID", "/hostedzone/ZENV"),
            ("TIDEPOOL_RECORD_NAME", "DB.Example.internal"),
        ]))
        .unwrap();
        let event = Settings {
            record_ttl: Some(5),
            ..Settings::default()
        };
        let ModeConfig::Route53(r) = env.overridden_by(&event).mode_config().unwrap() else {
            panic!("wrong mode")
        };
        assert_eq!(r.hosted_zone_id, "ZENV");
        assert_eq!(r.record_name, "db.example.internal.");
        assert_eq!(r.ttl, 5);
        let ModeConfig::Route53(r) = env.mode_config().unwrap() else {
            panic!("wrong mode")
        };
        assert_eq!(r.ttl, DEFAULT_RECORD_TTL);
    }

    #[test]
    fn bad_cidr_is_reported_with_its_key() {
        let err = parse_vip_cidr("10.0.0.300/32").unwrap_err().to_string();
        assert!(err.contains("TIDEPOOL_VIP_CIDR"), "{err}");
    }
}
