//! The memcached store (ElastiCache for Memcached on AWS): results,
//! generations and writes in flight as memcached keys, shared by every
//! tidepool node that names the same servers.
//!
//! Keys: `tp:e:<sha256 of the result's key>` holds a result with the
//! generations it was read at; `tp:g:<table>` a table's generation,
//! `tp:w:<table>` how many writes to it are in flight (tables are named by
//! a digest of database and name). A generation that is missing (never
//! set, or evicted) is created with the current time in nanoseconds, so a
//! re-created one never equals a value an old result was stored with.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_memcached::{AsciiProtocol, Client, Error, Status};
use sha2::{Digest, Sha256};

use super::{Entry, policy::ALL_TABLES};

/// memcached's default item size limit (1 MiB), less room for the key and
/// item header: a larger value would be refused.
const MAX_ITEM: usize = (1 << 20) - 1024;
/// Connections kept to each server.
const CONNECTIONS: usize = 8;
/// A write mark outlives the longest write transaction expected; a node
/// that dies mid-transaction leaves its mark for this long (the table's
/// results are not cached meanwhile, the safe side).
const WRITE_MARK_TTL: i64 = 3_600;

struct Server {
    dsn: String,
    conns: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
}

pub struct MemcachedStore {
    servers: Vec<Server>,
    timeout: Duration,
    ttl: i64,
    /// Set while the store cannot be reached (logged once per outage).
    down: AtomicBool,
    pub errors: AtomicU64,
    /// Databases whose writes could not be recorded: every result of
    /// theirs is dropped before this node serves from the store again.
    owed: Mutex<HashSet<String>>,
    /// Databases this node has seen (for invalidation by table name).
    databases: Mutex<HashSet<String>>,
}

fn table_key(kind: &str, db: &str, table: &str) -> String {
    let mut h = Sha256::new();
    h.update(db.as_bytes());
    h.update([0]);
    h.update(table.as_bytes());
    let d = h.finalize();
    format!("tp:{kind}:{}", hex(&d[..16]))
}

fn entry_key(key: &[u8; 32]) -> String {
    format!("tp:e:{}", hex(key))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fresh_generation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn not_found(e: &Error) -> bool {
    matches!(e, Error::Protocol(Status::NotFound))
}

fn not_stored(e: &Error) -> bool {
    matches!(
        e,
        Error::Protocol(Status::NotStored) | Error::Protocol(Status::Exists)
    )
}

/// One request.
enum Op<'a> {
    GetMulti(&'a [&'a str]),
    Incr(&'a str, u64),
    Decr(&'a str, u64),
    Add(&'a str, &'a [u8], Option<i64>),
    Set(&'a str, &'a [u8], i64),
    FlushAll,
}

enum Reply {
    Values(Vec<async_memcached::Value>),
    Done,
}

/// A failure of the store itself (not "no such key").
#[derive(Debug)]
pub struct Unavailable;

impl MemcachedStore {
    pub fn new(servers: &[String], timeout: Duration, ttl: Duration) -> MemcachedStore {
        MemcachedStore {
            servers: servers
                .iter()
                .map(|s| Server {
                    dsn: format!("tcp://{s}"),
                    conns: (0..CONNECTIONS)
                        .map(|_| tokio::sync::Mutex::new(None))
                        .collect(),
                    next: AtomicUsize::new(0),
                })
                .collect(),
            timeout,
            ttl: ttl.as_secs().max(1) as i64,
            down: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            owed: Mutex::new(HashSet::new()),
            databases: Mutex::new(HashSet::new()),
        }
    }

    fn server_of(&self, key: &str) -> usize {
        let d = Sha256::digest(key.as_bytes());
        (u64::from_le_bytes(d[..8].try_into().unwrap()) % self.servers.len() as u64) as usize
    }

    /// Runs `op` on a connection to the server of `key`, within the
    /// timeout; a connection that failed is replaced next time. The inner
    /// result is memcached's answer ("not found", "not stored").
    async fn with(&self, key: &str, op: Op<'_>) -> Result<Result<Reply, Error>, Unavailable> {
        let server = &self.servers[self.server_of(key)];
        let n = server.conns.len();
        let start = server.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = server.conns[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            // Waiting for a connection counts against the timeout too.
            None => match tokio::time::timeout(self.timeout, server.conns[start].lock()).await {
                Ok(g) => g,
                Err(_) => {
                    self.failed(&server.dsn, &"no connection free in time");
                    return Err(Unavailable);
                }
            },
        };
        if guard.as_ref().is_some_and(|c| c.is_closed()) {
            // Left mid-operation by a session that went away.
            *guard = None;
        }
        let work = async {
            if guard.is_none() {
                *guard = Some(Client::new(&server.dsn).await?);
            }
            let c = guard.as_mut().expect("connected above");
            Ok::<_, Error>(match op {
                Op::GetMulti(keys) => c.get_multi(keys).await.map(Reply::Values),
                Op::Incr(k, n) => c.increment(k, n).await.map(|_| Reply::Done),
                Op::Decr(k, n) => c.decrement(k, n).await.map(|_| Reply::Done),
                Op::Add(k, v, ttl) => c.add(k, v, ttl, None).await.map(|_| Reply::Done),
                Op::Set(k, v, ttl) => c.set(k, v, Some(ttl), None).await.map(|_| Reply::Done),
                Op::FlushAll => c.flush_all().await.map(|_| Reply::Done),
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Ok(v))) => {
                self.reached();
                Ok(Ok(v))
            }
            Ok(Ok(Err(e))) if not_found(&e) || not_stored(&e) => {
                self.reached();
                Ok(Err(e))
            }
            Ok(Ok(Err(e))) | Ok(Err(e)) => {
                *guard = None;
                self.failed(&server.dsn, &e);
                Err(Unavailable)
            }
            Err(_) => {
                *guard = None;
                self.failed(&server.dsn, &"timed out");
                Err(Unavailable)
            }
        }
    }

    /// Values of `keys` (missing ones left out), one request per server.
    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Vec<u8>>, Unavailable> {
        let mut by_server: HashMap<usize, Vec<&str>> = HashMap::new();
        for k in keys {
            by_server
                .entry(self.server_of(k))
                .or_default()
                .push(k.as_str());
        }
        let mut out = HashMap::new();
        for group in by_server.into_values() {
            let values = match self.with(group[0], Op::GetMulti(&group)).await? {
                Ok(Reply::Values(v)) => v,
                _ => Vec::new(),
            };
            for v in values {
                if let (Ok(k), Some(d)) = (String::from_utf8(v.key), v.data) {
                    out.insert(k, d);
                }
            }
        }
        Ok(out)
    }

    /// Adds `amount` to a counter; a missing counter is created at
    /// `initial` (and left alone if another node created it meanwhile,
    /// then incremented).
    async fn bump(
        &self,
        key: &str,
        amount: u64,
        initial: u64,
        ttl: Option<i64>,
    ) -> Result<(), Unavailable> {
        if self.with(key, Op::Incr(key, amount)).await?.is_ok() {
            return Ok(());
        }
        let v = initial.to_string();
        match self.with(key, Op::Add(key, v.as_bytes(), ttl)).await? {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.with(key, Op::Incr(key, amount)).await?;
                Ok(())
            }
        }
    }

    fn note_database(&self, db: &str) {
        let mut d = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        if !d.contains(db) {
            d.insert(db.to_string());
        }
    }

    /// Pays invalidations this node owes (writes it could not record):
    /// true when none is left.
    async fn settle(&self) -> bool {
        let owed: Vec<String> = self
            .owed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for db in owed {
            let g = table_key("g", &db, ALL_TABLES);
            if self.bump(&g, 1, fresh_generation(), None).await.is_err() {
                return false;
            }
            self.owed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&db);
        }
        true
    }

    fn owe(&self, db: &str) {
        self.owed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string());
    }

    /// The stored result of `key` if it was read at the tables' current
    /// generations, and those generations (None while any table is being
    /// written, or a generation was only just created).
    pub async fn lookup(
        &self,
        db: &str,
        key: &[u8; 32],
        tables: &[String],
    ) -> (Option<Entry>, Option<Vec<u64>>) {
        self.note_database(db);
        if !self.settle().await {
            return (None, None);
        }
        let ek = entry_key(key);
        let gks: Vec<String> = tables.iter().map(|t| table_key("g", db, t)).collect();
        let wks: Vec<String> = tables.iter().map(|t| table_key("w", db, t)).collect();
        let mut all = vec![ek.clone()];
        all.extend(gks.iter().cloned());
        all.extend(wks.iter().cloned());
        let Ok(values) = self.get_many(&all).await else {
            return (None, None);
        };
        let num = |k: &String| -> Option<u64> {
            values
                .get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.trim().parse().ok())
        };
        if wks.iter().any(|k| num(k).unwrap_or(0) > 0) {
            return (None, None);
        }
        let mut stamp = Vec::with_capacity(gks.len());
        let mut created = false;
        for k in &gks {
            match num(k) {
                Some(g) => stamp.push(g),
                None => {
                    created = true;
                    let v = fresh_generation().to_string();
                    let _ = self.with(k, Op::Add(k, v.as_bytes(), None)).await;
                }
            }
        }
        if created {
            return (None, None);
        }
        let entry = values.get(&ek).and_then(|v| Entry::decode(v));
        (entry, Some(stamp))
    }

    pub async fn put(&self, key: &[u8; 32], entry: &Entry) -> bool {
        let k = entry_key(key);
        let v = entry.encode();
        if v.len() > MAX_ITEM {
            return false;
        }
        let ttl = self.ttl;
        matches!(self.with(&k, Op::Set(&k, &v, ttl)).await, Ok(Ok(_)))
    }

    /// Marks `tables` as being written (before the write is sent).
    pub async fn begin_write(&self, db: &str, tables: &[String]) -> bool {
        for t in tables {
            let k = table_key("w", db, t);
            if self.bump(&k, 1, 1, Some(WRITE_MARK_TTL)).await.is_err() {
                self.owe(db);
                return false;
            }
        }
        true
    }

    /// New generations for `tables`, marks untouched.
    /// Whether every one moved on.
    pub async fn bump_generations(&self, db: &str, tables: &[String]) -> bool {
        let mut all = true;
        for t in tables {
            let g = table_key("g", db, t);
            if self.bump(&g, 1, fresh_generation(), None).await.is_err() {
                self.owe(db);
                all = false;
            }
        }
        all
    }

    /// The write's transaction ended: new generations, then the marks go.
    /// `marked`: whether `begin_write` recorded the marks.
    pub async fn end_write(&self, db: &str, tables: &[String], marked: bool, committed: bool) {
        // Marks go only once the generations have moved on: a mark left
        // behind keeps the tables uncached until it expires, the safe side.
        if committed && !self.bump_generations(db, tables).await {
            return;
        }
        if !marked {
            return;
        }
        for t in tables {
            let w = table_key("w", db, t);
            let _ = self.with(&w, Op::Decr(&w, 1)).await;
        }
    }

    /// Drops results reading `table` (every database this node has
    /// seen), or every result in the store.
    pub async fn invalidate(&self, table: Option<&str>) -> Result<(), Unavailable> {
        match table {
            Some(t) => {
                let dbs: Vec<String> = self
                    .databases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                for db in dbs {
                    self.bump(&table_key("g", &db, t), 1, fresh_generation(), None)
                        .await?;
                }
                Ok(())
            }
            None => {
                for i in 0..self.servers.len() {
                    // Any key of server i: flush_all empties the server.
                    let probe = (0u64..)
                        .map(|n| format!("tp:probe:{n}"))
                        .find(|k| self.server_of(k) == i)
                        .expect("some key lands on every server");
                    let _ = self.with(&probe, Op::FlushAll).await?;
                }
                Ok(())
            }
        }
    }

    fn failed(&self, server: &str, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, server, "query cache: memcached unavailable; queries go to the database");
        }
    }

    fn reached(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("query cache: memcached reachable again");
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}
