//! `[query_cache]`: SELECT results answered from memory or memcached.
//! The cache itself lives in `cache`; these are the knobs, with their
//! defaults and checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where cached results are kept.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheStore {
    /// In this process (LRU/TinyLFU, bounded by `memory_size`).
    Memory,
    /// In memcached (ElastiCache for Memcached on AWS), shared by every
    /// tidepool node that names the same servers.
    Memcached,
}

/// What invalidates cached results.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Invalidation {
    /// Writes routed through tidepool (every node sharing the store).
    Writes,
    /// Also writes that never pass through tidepool, read from the
    /// primary's WAL.
    Logical,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryCacheConfig {
    pub enabled: bool,
    pub store: CacheStore,
    /// `host:port` of each memcached server (store = "memcached").
    pub memcached_servers: Vec<String>,
    /// How long a result may be served.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Results larger than this (bytes, as sent to the client) are not kept.
    pub max_entry_size: u64,
    /// Memory store: bytes of results kept at most.
    pub memory_size: u64,
    /// Tables (regexes, matched against the name as written, whole) whose
    /// results may be cached; empty: every table not excluded.
    pub cache_tables: Vec<String>,
    /// Tables (regexes, whole name) whose results are never cached; they
    /// win over `cache_tables`.
    pub no_cache_tables: Vec<String>,
    pub invalidation: Invalidation,
    /// memcached: how long one request may take before the store counts as
    /// unavailable (the query goes to the database instead).
    #[serde(with = "humantime_serde")]
    pub memcached_timeout: Duration,
}

impl Default for QueryCacheConfig {
    fn default() -> Self {
        QueryCacheConfig {
            enabled: false,
            store: CacheStore::Memory,
            memcached_servers: Vec::new(),
            ttl: Duration::from_secs(60),
            max_entry_size: 1 << 20,
            memory_size: 64 << 20,
            cache_tables: Vec::new(),
            no_cache_tables: Vec::new(),
            invalidation: Invalidation::Writes,
            memcached_timeout: Duration::from_millis(200),
        }
    }
}

/// Checks of `[query_cache]` that the types cannot express.
pub fn validate(c: &QueryCacheConfig, watchdog: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError::new(format!("query_cache.{key}"), message));
    };
    for (key, list) in [
        ("cache_tables", &c.cache_tables),
        ("no_cache_tables", &c.no_cache_tables),
    ] {
        for (i, pattern) in list.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
                err(&format!("{key}[{i}]"), format!("not a valid regex: {e}"));
            }
        }
    }
    if !c.enabled {
        return errors;
    }
    if c.ttl.is_zero() {
        err("ttl", "must be more than zero".into());
    }
    if c.max_entry_size == 0 {
        err("max_entry_size", "must be at least 1".into());
    }
    match c.store {
        CacheStore::Memory => {
            if c.memory_size < c.max_entry_size {
                err("memory_size", "must be at least max_entry_size".into());
            }
            if watchdog {
                err(
                    "store",
                    "the memory store sees only this node's writes; in a watchdog group \
                     use store = \"memcached\", shared by every node"
                        .into(),
                );
            }
        }
        CacheStore::Memcached => {
            if c.memcached_servers.is_empty() {
                err(
                    "memcached_servers",
                    "store = \"memcached\" needs at least one server (\"host:port\")".into(),
                );
            }
            for (i, s) in c.memcached_servers.iter().enumerate() {
                let ok = s
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    err(
                        &format!("memcached_servers[{i}]"),
                        format!("{s:?} is not \"host:port\""),
                    );
                }
            }
            if c.memcached_timeout.is_zero() {
                err("memcached_timeout", "must be more than zero".into());
            }
        }
    }
    errors
}
