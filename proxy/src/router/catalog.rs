//! What the primary's catalog says about functions and relations, asked
//! once per name and database and remembered: whether a function may
//! write (`pg_proc.provolatile = 'v'`), and whether a relation is
//! temporary or unlogged (`pg_class.relpersistence`), which standbys
//! cannot read. Unknown names count as "may write" / "local": the safe
//! answer is the primary.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::config::HealthCheckConfig;

/// Remembered answers, per database.
#[derive(Default)]
pub struct Catalog {
    /// Database → function name → may write.
    functions: RwLock<PerDatabase<bool>>,
    /// Database → relation name → (temporary or unlogged, when learned).
    relations: RwLock<PerDatabase<(bool, Instant)>>,
    clients: Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
    /// Changes whenever an answer is learned or forgotten, and when the
    /// routing rules are reloaded: a statement's memo of "all known, none
    /// volatile, none local" (`Memo`) holds for one generation.
    generation: AtomicU64,
    /// A small number per database name, for memos.
    tags: Mutex<HashMap<String, u16, foldhash::quality::RandomState>>,
}

/// What a statement's class remembers of the catalog's answer for it: the
/// generation and database tag at which every function it calls was known
/// not to write and every relation it reads known to be neither temporary
/// nor unlogged. Saves a routed unit the lookups (two hashes and a lock
/// per name) while nothing changed.
#[derive(Debug, Default)]
pub struct Memo(AtomicU64);

impl Memo {
    pub fn holds(&self, key: u64) -> bool {
        key != 0 && self.0.load(Ordering::Relaxed) == key
    }

    pub fn set(&self, key: u64) {
        self.0.store(key, Ordering::Relaxed);
    }
}

/// A class is copied with an empty memo.
impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

/// Memos do not make two classes differ.
impl PartialEq for Memo {
    fn eq(&self, _: &Memo) -> bool {
        true
    }
}

impl Eq for Memo {}

/// Answers by database, then name: looked up by borrowed names, with no
/// key built per lookup (every routed unit asks).
type PerDatabase<V> = HashMap<String, HashMap<String, V>>;

fn of_database<'a, V>(map: &'a mut PerDatabase<V>, db: &str) -> &'a mut HashMap<String, V> {
    if !map.contains_key(db) {
        map.insert(db.to_string(), HashMap::new());
    }
    map.get_mut(db).expect("inserted above")
}

fn remembered<V>(map: &PerDatabase<V>) -> usize {
    map.values().map(HashMap::len).sum()
}

/// Most answers remembered of each kind (functions, relations), all
/// databases together.
const MAX_REMEMBERED: usize = 50_000;

/// How long "no such relation" is believed: a table created later must
/// become readable on standbys soon after.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

impl Catalog {
    /// The tag of database `db` for memos; 0 (no memo) past 65,535
    /// databases.
    pub fn tag(&self, db: &str) -> u16 {
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tags.get(db) {
            return *t;
        }
        let Ok(t) = u16::try_from(tags.len() + 1) else {
            return 0;
        };
        tags.insert(db.to_string(), t);
        t
    }

    /// The key a memo for database `tag` holds now (0: none can).
    pub fn memo_key(&self, tag: u16) -> u64 {
        match tag {
            0 => 0,
            t => (self.generation.load(Ordering::Acquire) + 1) << 16 | u64::from(t),
        }
    }

    /// Every memo is void from now on (an answer changed, or the rules
    /// that override the catalog's).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Closes the connection to `db` and forgets what it said (the
    /// database is being dropped or renamed).
    pub fn forget_database(&self, db: &str) {
        self.invalidate();
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
        self.functions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
        self.relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }

    /// Known answers for `functions`: Some(any may write) when all known.
    pub fn known_functions(&self, db: &str, names: &[String]) -> Option<bool> {
        if names.is_empty() {
            return Some(false);
        }
        let f = self.functions.read().unwrap_or_else(|e| e.into_inner());
        let f = f.get(db)?;
        let mut any = false;
        for n in names {
            any |= *f.get(n.as_str())?;
        }
        Some(any)
    }

    /// Known answers for `relations`: Some(any is local) when all known.
    pub fn known_relations(&self, db: &str, names: &[String]) -> Option<bool> {
        if names.is_empty() {
            return Some(false);
        }
        let r = self.relations.read().unwrap_or_else(|e| e.into_inner());
        let r = r.get(db)?;
        let mut any = false;
        for n in names {
            let (local, at) = r.get(n.as_str())?;
            if *local && at.elapsed() > NEGATIVE_TTL {
                return None;
            }
            any |= *local;
        }
        Some(any)
    }

    /// Asks the primary about names not known yet. Failures leave them
    /// unknown (and so routed to the primary).
    #[allow(clippy::too_many_arguments)]
    pub async fn learn(
        &self,
        host: &str,
        port: u16,
        (tls, password): (&crate::tls::BackendTls, Option<&str>),
        db: &str,
        hc: &HealthCheckConfig,
        functions: &[String],
        relations: &[String],
    ) {
        let client = match self.client(host, port, (tls, password), db, hc).await {
            Some(c) => c,
            None => return,
        };
        let timeout = hc.timeout;
        if !functions.is_empty() {
            let bare: Vec<String> = functions.iter().map(|f| last_part(f)).collect();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&bare];
            let q = client.query(
                "SELECT p.proname, n.nspname, bool_or(p.provolatile = 'v') \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE p.proname = ANY($1) GROUP BY 1, 2",
                &params,
            );
            if let Ok(Ok(rows)) = tokio::time::timeout(timeout, q).await {
                let mut f = self.functions.write().unwrap_or_else(|e| e.into_inner());
                if remembered(&f) + functions.len() > MAX_REMEMBERED {
                    // A bounded memory: start over (every answer can be
                    // asked again) rather than grow with every new name.
                    f.clear();
                }
                self.invalidate();
                for name in functions {
                    let (schema, bare) = split(name);
                    let mut found = false;
                    let mut volatile = false;
                    for r in &rows {
                        let (p, n, v): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
                        if p == bare && schema.as_deref().is_none_or(|s| s == n) {
                            found = true;
                            volatile |= v;
                        }
                    }
                    // Unknown functions stay "may write".
                    of_database(&mut f, db).insert(name.clone(), volatile || !found);
                }
            } else {
                self.forget(db);
            }
        }
        if !relations.is_empty() {
            let bare: Vec<String> = relations.iter().map(|r| last_part(r)).collect();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&bare];
            let q = client.query(
                "SELECT c.relname, n.nspname, c.relpersistence <> 'p' \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = ANY($1)",
                &params,
            );
            if let Ok(Ok(rows)) = tokio::time::timeout(timeout, q).await {
                let mut map = self.relations.write().unwrap_or_else(|e| e.into_inner());
                if remembered(&map) + relations.len() > MAX_REMEMBERED {
                    map.clear();
                }
                self.invalidate();
                for name in relations {
                    let (schema, bare) = split(name);
                    let mut found = false;
                    let mut local = false;
                    for r in &rows {
                        let (rel, n, l): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
                        if rel == bare && schema.as_deref().is_none_or(|s| s == n) {
                            found = true;
                            local |= l;
                        }
                    }
                    of_database(&mut map, db)
                        .insert(name.clone(), (local || !found, Instant::now()));
                }
            } else {
                self.forget(db);
            }
        }
    }

    fn forget(&self, db: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }

    async fn client(
        &self,
        host: &str,
        port: u16,
        (tls, password): (&crate::tls::BackendTls, Option<&str>),
        db: &str,
        hc: &HealthCheckConfig,
    ) -> Option<Arc<tokio_postgres::Client>> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(db)
            .filter(|c| !c.is_closed())
        {
            return Some(c.clone());
        }
        let (c, _driver) = tls
            .connect_own(crate::tls::OwnConnection {
                host,
                port,
                user: &hc.user,
                password,
                database: db,
                application: "tidepool catalog",
                timeout: hc.connect_timeout,
            })
            .await
            .ok()?;
        let c = Arc::new(c);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string(), c.clone());
        Some(c)
    }
}

fn split(name: &str) -> (Option<String>, String) {
    match name.rsplit_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, name.to_string()),
    }
}

fn last_part(name: &str) -> String {
    split(name).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_holds_until_the_catalog_or_the_rules_change() {
        let catalog = Catalog::default();
        let (a, b) = (catalog.tag("app"), catalog.tag("reports"));
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(catalog.tag("app"), a);
        let memo = Memo::default();
        let key = catalog.memo_key(a);
        assert!(!memo.holds(key), "nothing remembered yet");
        memo.set(key);
        assert!(memo.holds(catalog.memo_key(a)));
        // Another database's sessions do not use this database's answer.
        assert!(!memo.holds(catalog.memo_key(b)));
        // Rules reloaded, or an answer learned: the memo is void.
        catalog.invalidate();
        assert!(!memo.holds(catalog.memo_key(a)));
        memo.set(catalog.memo_key(a));
        catalog.forget_database("reports");
        assert!(!memo.holds(catalog.memo_key(a)));
        // Without a tag there is no memo.
        memo.set(catalog.memo_key(0));
        assert!(!memo.holds(catalog.memo_key(0)));
    }
}
