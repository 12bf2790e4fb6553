//! The query cache: results of read-only SELECTs answered without the
//! database, from memory or memcached, never stale after a write that
//! passed through tidepool.
//!
//! Invalidation by generations. Every table (per database) has a
//! generation and a count of writes in flight. A write marks its tables
//! before it is sent; when its transaction ends, their generations move on
//! and the marks go. A result is stored with the generations it was read
//! at (read before the query was sent, and only while nothing it reads is
//! being written), and served only while they are still current and no
//! write to its tables is in flight. So a result read before a write
//! committed can never be served after the writer saw its commit: either
//! the write's mark is still there (no hit) or the generation has moved on
//! (no hit). With the memcached store every node shares generations and
//! marks, so this holds across a watchdog group.
//!
//! `policy.rs` decides what may be cached and what a write invalidates;
//! `memory.rs` and `memcached.rs` keep entries and generations.

pub mod facts;
pub mod logical;
mod memcached;
mod memory;
pub mod policy;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;

use crate::config::{CacheStore, QueryCacheConfig};

pub use policy::{Policy, Skip};

/// A stored result: the messages the client got (RowDescription,
/// DataRow…, CommandComplete, as the server sent them) and the
/// generations of the tables it was read at.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stamp: Vec<u64>,
    pub bytes: Bytes,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 8 * self.stamp.len() + self.bytes.len());
        v.extend_from_slice(&(self.stamp.len() as u32).to_le_bytes());
        for g in &self.stamp {
            v.extend_from_slice(&g.to_le_bytes());
        }
        v.extend_from_slice(&self.bytes);
        v
    }

    fn decode(v: &[u8]) -> Option<Entry> {
        let n = u32::from_le_bytes(v.get(..4)?.try_into().ok()?) as usize;
        let end = 4usize.checked_add(n.checked_mul(8)?)?;
        let stamp = v
            .get(4..end)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Some(Entry {
            stamp,
            bytes: Bytes::copy_from_slice(&v[end..]),
        })
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The result, to send as it is.
    Hit(Bytes),
    /// Not there; `Some(stamp)`: the result may be stored with it.
    Miss(Option<Vec<u64>>),
}

enum Store {
    Memory(memory::MemoryStore),
    Memcached(memcached::MemcachedStore),
}

/// Counters (Prometheus, `SHOW POOL_CACHE`).
#[derive(Debug, Default)]
pub struct Stats {
    /// SELECTs the cache was asked about.
    pub selects: AtomicU64,
    pub hits: AtomicU64,
    pub stores: AtomicU64,
    /// Results not kept: over `max_entry_size`, or not a plain result.
    pub not_stored: AtomicU64,
    /// Transactions that wrote and so moved generations on.
    pub invalidations: AtomicU64,
    /// Bytes of results served from the cache.
    pub hit_bytes: AtomicU64,
}

pub struct QueryCache {
    pub policy: Policy,
    store: Store,
    pub stats: Stats,
    /// Databases whose results were looked up (the WAL follower reads
    /// each one's changes).
    databases: Mutex<BTreeSet<String>>,
    pub invalidation: crate::config::Invalidation,
    /// What the primary's catalog says about relations and functions.
    pub facts: facts::Facts,
    /// Stores in flight to memcached (bounded: a full queue drops them).
    storing: Arc<tokio::sync::Semaphore>,
}

/// Stores to memcached in flight at most.
const STORES_IN_FLIGHT: usize = 256;

/// How the cache reaches the primary: the node table (which node it is,
/// its TLS and credentials) and the configuration in force (the
/// `[health_check]` user it connects as).
#[derive(Clone, Copy)]
pub struct Primary<'a> {
    pub cluster: &'a crate::cluster::Cluster,
    pub config: &'a dyn crate::config::Source,
}

/// A connection to the current primary's `db` as the `[health_check]`
/// user, its driver task, and the primary's node id.
pub(crate) async fn connect_primary(
    primary: Primary<'_>,
    db: &str,
    application: &str,
) -> Result<(tokio_postgres::Client, crate::tls::OwnDriver, usize), String> {
    let snapshot = primary.cluster.snapshot();
    let node = crate::router::write_node(&snapshot).ok_or("no primary")?;
    let (id, host, port) = (node.id, node.host.clone(), node.port);
    let hc = primary.config.current().health_check.clone();
    let password = primary
        .cluster
        .check_password(id, &host, port, &hc)
        .await
        .map_err(|e| format!("password: {e}"))?;
    let (client, driver) = primary
        .cluster
        .tls(id)
        .connect_own(crate::tls::OwnConnection {
            host: &host,
            port,
            user: &hc.user,
            password: password.as_deref(),
            database: db,
            application,
            timeout: hc.connect_timeout,
        })
        .await?;
    Ok((client, driver, id))
}

/// Figures for `SHOW POOL_CACHE`.
pub struct Usage {
    pub entries: Option<u64>,
    /// Memory store: results pushed out to make room.
    pub evictions: u64,
    pub used_bytes: Option<u64>,
    pub capacity: Option<u64>,
    pub store_errors: u64,
    pub store_down: bool,
}

impl QueryCache {
    /// The cache `cfg` describes, or None when it is off. Store settings
    /// are read once: changing them takes a restart.
    pub fn new(cfg: &QueryCacheConfig) -> Option<Arc<QueryCache>> {
        if !cfg.enabled {
            return None;
        }
        let store = match cfg.store {
            CacheStore::Memory => Store::Memory(memory::MemoryStore::new(cfg.memory_size, cfg.ttl)),
            CacheStore::Memcached => Store::Memcached(memcached::MemcachedStore::new(
                &cfg.memcached_servers,
                cfg.memcached_timeout,
                cfg.ttl,
            )),
        };
        Some(Arc::new(QueryCache {
            policy: Policy::new(cfg),
            store,
            stats: Stats::default(),
            databases: Mutex::new(BTreeSet::new()),
            invalidation: cfg.invalidation,
            facts: facts::Facts::default(),
            storing: Arc::new(tokio::sync::Semaphore::new(STORES_IN_FLIGHT)),
        }))
    }

    /// Looks up a result (`tables`: the read set, see `policy::read_set`).
    pub async fn lookup(&self, db: &str, key: &[u8; 32], tables: &[String]) -> Lookup {
        self.stats.selects.fetch_add(1, Ordering::Relaxed);
        {
            let mut d = self.databases.lock().unwrap_or_else(|e| e.into_inner());
            if !d.contains(db) {
                d.insert(db.to_string());
            }
        }
        let (entry, stamp) = match &self.store {
            Store::Memory(m) => match m.stamp(db, tables) {
                Some(s) => (m.get(key), Some(s)),
                None => (None, None),
            },
            Store::Memcached(m) => m.lookup(db, key, tables).await,
        };
        match (entry, stamp) {
            (Some(e), Some(s)) if e.stamp == s => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .hit_bytes
                    .fetch_add(e.bytes.len() as u64, Ordering::Relaxed);
                Lookup::Hit(e.bytes)
            }
            (_, stamp) => Lookup::Miss(stamp),
        }
    }

    /// Keeps a result read at `stamp` (memcached: in the background).
    pub fn store(self: &Arc<Self>, key: [u8; 32], stamp: Vec<u64>, bytes: Bytes) {
        if bytes.len() > self.policy.max_entry_size {
            self.stats.not_stored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let entry = Entry { stamp, bytes };
        match &self.store {
            Store::Memory(m) => {
                m.put(key, entry);
                self.stats.stores.fetch_add(1, Ordering::Relaxed);
            }
            Store::Memcached(_) => {
                let Ok(permit) = self.storing.clone().try_acquire_owned() else {
                    // memcached is slower than the misses: this one goes.
                    self.stats.not_stored.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Store::Memcached(m) = &me.store
                        && m.put(&key, &entry).await
                    {
                        me.stats.stores.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
    }

    /// Before a write to `tables` is sent. Returns whether the marks were
    /// recorded (pass it to [`end_write`](Self::end_write)).
    pub async fn begin_write(&self, db: &str, tables: &[String]) -> bool {
        match &self.store {
            Store::Memory(m) => {
                m.begin_write(db, tables);
                true
            }
            Store::Memcached(m) => m.begin_write(db, tables).await,
        }
    }

    /// The writing transaction ended.
    /// `committed`: false when the transaction certainly rolled back
    /// (its marks go, generations stay: nothing changed).
    pub async fn end_write(&self, db: &str, tables: &[String], marked: bool, committed: bool) {
        if committed {
            self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        match &self.store {
            Store::Memory(m) => m.end_write(db, tables, committed),
            Store::Memcached(m) => m.end_write(db, tables, marked, committed).await,
        }
    }

    /// Gives `tables` new generations: a change seen in the WAL.
    pub async fn bump(&self, db: &str, tables: &[String]) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        match &self.store {
            Store::Memory(m) => m.bump(db, tables),
            Store::Memcached(m) => {
                m.bump_generations(db, tables).await;
            }
        }
    }

    /// Databases whose results were looked up.
    pub fn databases(&self) -> Vec<String> {
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Drops the results reading `table`, or every result.
    pub async fn invalidate(&self, table: Option<&str>) -> Result<(), String> {
        let table = table.map(policy::table_id);
        match &self.store {
            Store::Memory(m) => {
                m.invalidate(table.as_deref());
                Ok(())
            }
            Store::Memcached(m) => m
                .invalidate(table.as_deref())
                .await
                .map_err(|_| "memcached is unavailable".to_string()),
        }
    }

    pub fn usage(&self) -> Usage {
        match &self.store {
            Store::Memory(m) => {
                let (entries, used, capacity) = m.usage();
                Usage {
                    entries: Some(entries),
                    evictions: m.evictions.load(Ordering::Relaxed),
                    used_bytes: Some(used),
                    capacity: Some(capacity),
                    store_errors: 0,
                    store_down: false,
                }
            }
            Store::Memcached(m) => Usage {
                entries: None,
                evictions: 0,
                used_bytes: None,
                capacity: None,
                store_errors: m.errors.load(Ordering::Relaxed),
                store_down: m.is_down(),
            },
        }
    }

    pub fn store_name(&self) -> &'static str {
        match self.store {
            Store::Memory(_) => "memory",
            Store::Memcached(_) => "memcached",
        }
    }
}

#[cfg(test)]
mod tests;
