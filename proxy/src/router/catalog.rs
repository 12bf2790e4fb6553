//! What the primary's catalog says about functions and relations, asked
//! once per name and database and remembered: whether a function may
//! write (`pg_proc.provolatile = 'v'`), and whether a relation is
//! temporary or unlogged (`pg_class.relpersistence`), which standbys
//! cannot read. Unknown names count as "may write" / "local": the safe
//! answer is the primary.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use crate::config::HealthCheckConfig;

/// Remembered answers, per database.
#[derive(Default)]
pub struct Catalog {
    /// (database, function name) → may write.
    functions: RwLock<HashMap<(String, String), bool>>,
    /// (database, relation name) → (temporary or unlogged, when learned).
    relations: RwLock<HashMap<(String, String), (bool, Instant)>>,
    clients: Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
}

/// Most answers remembered of each kind (functions, relations), all
/// databases together.
const MAX_REMEMBERED: usize = 50_000;

/// How long "no such relation" is believed: a table created later must
/// become readable on standbys soon after.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

impl Catalog {
    /// Closes the connection to `db` and forgets what it said (the
    /// database is being dropped or renamed).
    pub fn forget_database(&self, db: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
        self.functions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(d, _), _| d != db);
        self.relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(d, _), _| d != db);
    }

    /// Known answers for `functions`: Some(any may write) when all known.
    pub fn known_functions(&self, db: &str, names: &[String]) -> Option<bool> {
        let f = self.functions.read().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for n in names {
            any |= *f.get(&(db.to_string(), n.clone()))?;
        }
        Some(any)
    }

    /// Known answers for `relations`: Some(any is local) when all known.
    pub fn known_relations(&self, db: &str, names: &[String]) -> Option<bool> {
        let r = self.relations.read().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for n in names {
            let (local, at) = r.get(&(db.to_string(), n.clone()))?;
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
                if f.len() + functions.len() > MAX_REMEMBERED {
                    // A bounded memory: start over (every answer can be
                    // asked again) rather than grow with every new name.
                    f.clear();
                }
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
                    f.insert((db.to_string(), name.clone()), volatile || !found);
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
                if map.len() + relations.len() > MAX_REMEMBERED {
                    map.clear();
                }
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
                    map.insert(
                        (db.to_string(), name.clone()),
                        (local || !found, Instant::now()),
                    );
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
