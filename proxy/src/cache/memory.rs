//! The memory store: results in a bounded LRU/TinyLFU cache (moka),
//! generations and writes in flight in a map, all in this process.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::sync::Cache;

use super::Entry;

pub struct MemoryStore {
    entries: Cache<[u8; 32], Entry>,
    /// Results pushed out to make room (not expired, not invalidated).
    pub evictions: Arc<AtomicU64>,
    /// (database, table) → (generation, writes in flight).
    tables: Mutex<HashMap<(String, String), (u64, u32)>>,
    capacity: u64,
}

impl MemoryStore {
    pub fn new(capacity: u64, ttl: Duration) -> MemoryStore {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let entries = Cache::builder()
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .max_capacity(capacity)
            .weigher(|_k: &[u8; 32], e: &Entry| {
                u32::try_from(e.bytes.len() + 64 + 8 * e.stamp.len()).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        MemoryStore {
            entries,
            evictions,
            tables: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (u64, u32)>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generations of `tables`, or None while any is being written.
    pub fn stamp(&self, db: &str, tables: &[String]) -> Option<Vec<u64>> {
        // Tables read are remembered, so that an invalidation by name
        // reaches every database that read them.
        let mut map = self.tables();
        let mut stamp = Vec::with_capacity(tables.len());
        for t in tables {
            let (generation, writing) = *map.entry((db.to_string(), t.clone())).or_insert((0, 0));
            if writing > 0 {
                return None;
            }
            stamp.push(generation);
        }
        Some(stamp)
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Entry> {
        self.entries.get(key)
    }

    pub fn put(&self, key: [u8; 32], entry: Entry) {
        self.entries.insert(key, entry);
    }

    pub fn begin_write(&self, db: &str, tables: &[String]) {
        let mut map = self.tables();
        for t in tables {
            map.entry((db.to_string(), t.clone())).or_insert((0, 0)).1 += 1;
        }
    }

    /// The write's transaction ended: if it committed, its tables'
    /// results are stale; either way its marks go.
    pub fn end_write(&self, db: &str, tables: &[String], committed: bool) {
        let mut map = self.tables();
        for t in tables {
            let e = map.entry((db.to_string(), t.clone())).or_insert((0, 0));
            if committed {
                e.0 += 1;
            }
            e.1 = e.1.saturating_sub(1);
        }
    }

    /// New generations for `tables`, marks untouched.
    pub fn bump(&self, db: &str, tables: &[String]) {
        let mut map = self.tables();
        for t in tables {
            map.entry((db.to_string(), t.clone())).or_insert((0, 0)).0 += 1;
        }
    }

    /// Drops results of `table` (in every database), or all results.
    pub fn invalidate(&self, table: Option<&str>) {
        match table {
            Some(t) => {
                let mut map = self.tables();
                let dbs: Vec<String> = map.keys().map(|(d, _)| d.clone()).collect();
                for d in dbs {
                    map.entry((d, t.to_string())).or_insert((0, 0)).0 += 1;
                }
            }
            None => {
                // New generations too: a result being read now, stored
                // after this, must not be served.
                for e in self.tables().values_mut() {
                    e.0 += 1;
                }
                self.entries.invalidate_all()
            }
        }
    }

    /// (entries, bytes used, capacity in bytes).
    pub fn usage(&self) -> (u64, u64, u64) {
        self.entries.run_pending_tasks();
        (
            self.entries.entry_count(),
            self.entries.weighted_size(),
            self.capacity,
        )
    }
}
