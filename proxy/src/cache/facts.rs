//! What the primary's catalog says about the relations and functions a
//! cached result depends on, asked once per name and database and kept
//! for `KEEP`: a result is cached only if every relation it reads is a
//! plain table (or a materialized view) — not a view, a partitioned table,
//! a partition, an inheritance parent or child, nor under row-level
//! security — and every function it calls is immutable. A write to a
//! table with triggers (foreign keys included: their cascades are
//! triggers) or to anything but a plain table counts as a write to every
//! table. Unknown names count as the unsafe answer.
//!
//! Names are compared by their last part (see `policy::table_id`), and
//! every schema's relation of that name is taken into account, the most
//! careful answer winning: the generations are kept the same way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use super::Primary;

/// How long an answer is believed (a table later made partitioned, or
/// given a trigger, is seen after this).
const KEEP: Duration = Duration::from_secs(30);
/// Names remembered at most, per kind, all databases together.
const MAX_REMEMBERED: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relation {
    /// A plain table or materialized view, not partitioned, not a
    /// partition, without inheritance, without row-level security.
    cacheable: bool,
    /// Writes to it may change other tables (triggers, foreign keys), or
    /// it is not a plain table.
    writes_spread: bool,
}

type Remembered<T> = RwLock<HashMap<(String, String), (T, Instant)>>;

#[derive(Default)]
pub struct Facts {
    relations: Remembered<Relation>,
    /// (database, function) → immutable.
    functions: Remembered<bool>,
    clients: Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
}

impl Facts {
    /// Whether a read of `tables` calling `functions` may be cached.
    pub async fn read_cacheable(
        &self,
        primary: Primary<'_>,
        db: &str,
        tables: &[String],
        functions: &[String],
    ) -> bool {
        let (rels, funcs) = self.known(primary, db, tables, functions).await;
        rels.iter().all(|r| r.is_some_and(|r| r.cacheable))
            && funcs.iter().all(|f| f.unwrap_or(false))
    }

    /// Whether a write to `tables` (their last parts) may change rows of
    /// other tables.
    pub async fn write_spreads(&self, primary: Primary<'_>, db: &str, tables: &[String]) -> bool {
        let (rels, _) = self.known(primary, db, tables, &[]).await;
        rels.iter().any(|r| r.is_none_or(|r| r.writes_spread))
    }

    /// What is known of each name, asking the primary about the rest.
    async fn known(
        &self,
        primary: Primary<'_>,
        db: &str,
        tables: &[String],
        functions: &[String],
    ) -> (Vec<Option<Relation>>, Vec<Option<bool>>) {
        let tables: Vec<String> = tables.iter().map(|t| super::policy::table_id(t)).collect();
        let functions: Vec<String> = functions.iter().map(|f| last_part(f)).collect();
        let mut rels = lookup(&self.relations, db, &tables);
        let mut funcs = lookup(&self.functions, db, &functions);
        if rels.iter().any(Option::is_none) || funcs.iter().any(Option::is_none) {
            let missing_t: Vec<String> = tables
                .iter()
                .zip(&rels)
                .filter(|(_, r)| r.is_none())
                .map(|(t, _)| t.clone())
                .collect();
            let missing_f: Vec<String> = functions
                .iter()
                .zip(&funcs)
                .filter(|(_, f)| f.is_none())
                .map(|(f, _)| f.clone())
                .collect();
            self.learn(primary, db, &missing_t, &missing_f).await;
            rels = lookup(&self.relations, db, &tables);
            funcs = lookup(&self.functions, db, &functions);
        }
        (rels, funcs)
    }

    async fn learn(&self, primary: Primary<'_>, db: &str, tables: &[String], functions: &[String]) {
        let Some(client) = self.client(primary, db).await else {
            return;
        };
        let timeout = primary.config.current().health_check.timeout;
        let now = Instant::now();
        if !tables.is_empty() {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tables];
            let q = client.query(
                "SELECT c.relname::text, \
                        bool_and(c.relkind IN ('r', 'm') AND NOT c.relispartition \
                                 AND NOT c.relhassubclass AND NOT c.relrowsecurity \
                                 AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)), \
                        bool_or(c.relkind <> 'r' OR c.relhastriggers OR c.relispartition \
                                OR c.relhassubclass OR c.relhasrules \
                                OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)) \
                 FROM pg_class c WHERE c.relname = ANY($1) GROUP BY 1",
                &params,
            );
            if let Ok(Ok(rows)) = tokio::time::timeout(timeout, q).await {
                let mut found: HashMap<String, Relation> = HashMap::new();
                for r in rows {
                    let (name, cacheable, spread): (String, bool, bool) =
                        (r.get(0), r.get(1), r.get(2));
                    found.insert(
                        name,
                        Relation {
                            cacheable,
                            writes_spread: spread,
                        },
                    );
                }
                let mut map = self.relations.write().unwrap_or_else(|e| e.into_inner());
                if map.len() + tables.len() > MAX_REMEMBERED {
                    map.clear();
                }
                for t in tables {
                    // A name no schema has (yet): neither cached nor
                    // trusted, asked again after KEEP.
                    let r = found.get(t).copied().unwrap_or(Relation {
                        cacheable: false,
                        writes_spread: true,
                    });
                    map.insert((db.to_string(), t.clone()), (r, now));
                }
            }
        }
        if !functions.is_empty() {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&functions];
            let q = client.query(
                "SELECT p.proname::text, bool_and(p.provolatile = 'i') \
                 FROM pg_proc p WHERE p.proname = ANY($1) GROUP BY 1",
                &params,
            );
            if let Ok(Ok(rows)) = tokio::time::timeout(timeout, q).await {
                let found: HashMap<String, bool> = rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
                    .collect();
                let mut map = self.functions.write().unwrap_or_else(|e| e.into_inner());
                if map.len() + functions.len() > MAX_REMEMBERED {
                    map.clear();
                }
                for f in functions {
                    let immutable = found.get(f).copied().unwrap_or(false);
                    map.insert((db.to_string(), f.clone()), (immutable, now));
                }
            }
        }
    }

    async fn client(&self, primary: Primary<'_>, db: &str) -> Option<Arc<tokio_postgres::Client>> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(db)
            .filter(|c| !c.is_closed())
        {
            return Some(c.clone());
        }
        let (client, _, _) = super::connect_primary(primary, db, "tidepool query cache facts")
            .await
            .ok()?;
        let client = Arc::new(client);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string(), client.clone());
        Some(client)
    }
}

fn lookup<T: Copy>(map: &Remembered<T>, db: &str, names: &[String]) -> Vec<Option<T>> {
    let map = map.read().unwrap_or_else(|e| e.into_inner());
    names
        .iter()
        .map(|n| {
            map.get(&(db.to_string(), n.clone()))
                .filter(|(_, at)| at.elapsed() < KEEP)
                .map(|(v, _)| *v)
        })
        .collect()
}

/// `schema.name` → `name` (function names as the router lists them).
fn last_part(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}
