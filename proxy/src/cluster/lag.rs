//! A standby's replication delay as last measured (by `router::lag`'s
//! sampler, or a managed cluster's topology): part of what tidepool knows
//! of each node, read by the router, the admin views and read-your-writes.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::config::LoadBalancingConfig;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Lag {
    pub bytes: u64,
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    /// The standby has replayed every transaction the primary committed
    /// before this instant (None: not known for any kept instant).
    #[serde(skip)]
    pub covers_since: Option<Instant>,
    /// What the primary's pg_stat_replication says of the standby (its
    /// walsender whose application_name is the node's name): `state`
    /// (streaming, catchup, …) and `sync_state` (async, sync, quorum,
    /// potential); empty when no walsender names it.
    pub replication_state: &'static str,
    pub replication_sync_state: &'static str,
}

impl Lag {
    /// Over `delay_threshold` or `delay_threshold_by_time`.
    pub fn too_far(&self, cfg: &LoadBalancingConfig) -> bool {
        (cfg.delay_threshold > 0 && self.bytes > cfg.delay_threshold)
            || (!cfg.delay_threshold_by_time.is_zero() && self.time > cfg.delay_threshold_by_time)
    }
}

/// The latest measurements, per node id.
pub type Lags = ArcSwap<BTreeMap<usize, Lag>>;
