//! What may be cached, what a write invalidates, and the key of a result.
//! Pure: the session asks, the store keeps.

use std::collections::BTreeMap;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::QueryCacheConfig;
use crate::router::Class;

/// Stands for "every table of the database": a write whose tables are not
/// known (DDL, TRUNCATE, a function that may write) bumps it, and every
/// cached result depends on it.
pub const ALL_TABLES: &str = "*";

/// The compiled table rules.
#[derive(Debug)]
pub struct Policy {
    cache_tables: Vec<Regex>,
    no_cache_tables: Vec<Regex>,
    pub max_entry_size: usize,
}

/// Why a read is not cached (counted, and logged at debug level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotARead,
    NoTables,
    SystemCatalog,
    ExcludedTable,
    VolatileFunction,
    LocalRelation,
}

impl Policy {
    pub fn new(cfg: &QueryCacheConfig) -> Policy {
        // Validation compiled these already; a pattern that fails here
        // anyway matches nothing in `cache_tables` and everything in
        // `no_cache_tables` (the safe side of each).
        let compile = |list: &[String], fallback: &str| -> Vec<Regex> {
            list.iter()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$"))
                        .unwrap_or_else(|_| Regex::new(fallback).expect("a valid regex"))
                })
                .collect()
        };
        let cache_tables = compile(&cfg.cache_tables, "[^\\s\\S]");
        Policy {
            cache_tables,
            no_cache_tables: compile(&cfg.no_cache_tables, ".*"),
            max_entry_size: usize::try_from(cfg.max_entry_size).unwrap_or(usize::MAX),
        }
    }

    /// Whether a statement of this class may be answered from the cache,
    /// as far as its text tells (the catalog's facts come after).
    pub fn admits(&self, class: &Class) -> Result<(), Skip> {
        if !class.select || class.write.is_some() || class.begins {
            return Err(Skip::NotARead);
        }
        if class.tables.is_empty() {
            // Nothing to invalidate it by: `SELECT now()` and friends.
            return Err(Skip::NoTables);
        }
        for t in &class.tables {
            if is_system(t) {
                return Err(Skip::SystemCatalog);
            }
            if self.no_cache_tables.iter().any(|r| r.is_match(t)) {
                return Err(Skip::ExcludedTable);
            }
            if !self.cache_tables.is_empty() && !self.cache_tables.iter().any(|r| r.is_match(t)) {
                return Err(Skip::ExcludedTable);
            }
        }
        Ok(())
    }
}

/// System catalogs and views change under every statement (statistics,
/// activity, locks): never cached.
fn is_system(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    let bare = t.rsplit('.').next().unwrap_or(&t);
    t.starts_with("pg_catalog.")
        || t.starts_with("information_schema.")
        || t.starts_with("pg_toast.")
        || bare.starts_with("pg_")
}

/// The name a table's generation is kept under: its last part,
/// lower-cased. Two schemas' tables of one name share it (a write to one
/// invalidates reads of both: more misses, never a stale answer), so
/// `public.t` and `t` are one table whatever the search_path.
pub fn table_id(table: &str) -> String {
    table.rsplit('.').next().unwrap_or(table).to_string()
}

/// The tables a read depends on: its own, and "every table".
pub fn read_set(class: &Class) -> Vec<String> {
    let mut t: Vec<String> = class.tables.iter().map(|t| table_id(t)).collect();
    t.push(ALL_TABLES.to_string());
    t.sort();
    t.dedup();
    t
}

/// The tables a statement may write, or None when it writes nothing.
/// DML names its tables; anything else that may change data (DDL,
/// TRUNCATE, COPY FROM, a function that may write, a statement tidepool
/// cannot parse) counts as a write to every table. Row locks change
/// nothing.
pub fn write_set(class: &Class, volatile_function: bool) -> Option<Vec<String>> {
    if volatile_function || class.writes_elsewhere {
        return Some(vec![ALL_TABLES.to_string()]);
    }
    if class.written.is_empty() {
        return None;
    }
    let mut t: Vec<String> = class.written.iter().map(|t| table_id(t)).collect();
    t.sort();
    t.dedup();
    Some(t)
}

/// The key of one result: who asked (user, database), the settings that
/// shape the output, and what was asked (the protocol's bytes: query text,
/// or statement, parameters and formats).
pub fn key(
    user: &str,
    database: &str,
    settings: &BTreeMap<String, String>,
    request: &[&[u8]],
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user.as_bytes(), database.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (k, v) in settings {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.update([0xff]);
    for part in request {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Class {
        crate::router::classify::classify_uncached(sql)
    }

    fn policy(cache: &[&str], no_cache: &[&str]) -> Policy {
        Policy::new(&QueryCacheConfig {
            cache_tables: cache.iter().map(|s| s.to_string()).collect(),
            no_cache_tables: no_cache.iter().map(|s| s.to_string()).collect(),
            ..QueryCacheConfig::default()
        })
    }

    #[test]
    fn plain_reads_of_user_tables_are_admitted() {
        let p = policy(&[], &[]);
        assert_eq!(
            p.admits(&class("SELECT * FROM accounts WHERE id = 1")),
            Ok(())
        );
        assert_eq!(
            p.admits(&class("SELECT a.x FROM a JOIN public.b ON a.id = b.id")),
            Ok(())
        );
    }

    #[test]
    fn writes_catalogs_and_table_less_reads_are_not() {
        let p = policy(&[], &[]);
        assert_eq!(p.admits(&class("UPDATE t SET x = 1")), Err(Skip::NotARead));
        assert_eq!(
            p.admits(&class("SELECT * FROM t FOR UPDATE")),
            Err(Skip::NotARead)
        );
        assert_eq!(p.admits(&class("SELECT now()")), Err(Skip::NoTables));
        assert_eq!(
            p.admits(&class("SELECT * FROM pg_namespace")),
            Err(Skip::SystemCatalog)
        );
        assert_eq!(
            p.admits(&class("SELECT * FROM information_schema.tables")),
            Err(Skip::SystemCatalog)
        );
    }

    #[test]
    fn table_lists_choose_and_exclusions_win() {
        let p = policy(&["acc.*", "orders"], &["accounts_audit"]);
        assert_eq!(p.admits(&class("SELECT * FROM accounts")), Ok(()));
        assert_eq!(p.admits(&class("SELECT * FROM orders")), Ok(()));
        assert_eq!(
            p.admits(&class("SELECT * FROM items")),
            Err(Skip::ExcludedTable)
        );
        assert_eq!(
            p.admits(&class("SELECT * FROM accounts_audit")),
            Err(Skip::ExcludedTable)
        );
        // A join is cached only if every table may be.
        assert_eq!(
            p.admits(&class("SELECT * FROM accounts JOIN items USING (id)")),
            Err(Skip::ExcludedTable)
        );
    }

    #[test]
    fn dml_invalidates_its_tables_and_anything_else_every_table() {
        assert_eq!(
            write_set(&class("UPDATE public.accounts SET x = 1"), false),
            Some(vec!["accounts".to_string()])
        );
        assert_eq!(
            write_set(&class("INSERT INTO h SELECT * FROM a"), false),
            Some(vec!["h".to_string()])
        );
        assert_eq!(
            write_set(&class("TRUNCATE accounts"), false),
            Some(vec![ALL_TABLES.to_string()])
        );
        assert_eq!(
            write_set(&class("ALTER TABLE accounts ADD COLUMN y int"), false),
            Some(vec![ALL_TABLES.to_string()])
        );
        // A read that calls a function that may write.
        assert_eq!(
            write_set(&class("SELECT bump() FROM accounts"), true),
            Some(vec![ALL_TABLES.to_string()])
        );
        assert_eq!(write_set(&class("SELECT * FROM accounts"), false), None);
        assert_eq!(
            write_set(&class("SELECT * FROM accounts FOR UPDATE"), false),
            None
        );
        assert_eq!(
            write_set(&class("COMMIT PREPARED 'x'"), false),
            Some(vec![ALL_TABLES.to_string()])
        );
        assert_eq!(write_set(&class("BEGIN"), false), None);
    }

    #[test]
    fn reads_depend_on_their_tables_and_on_every_table() {
        assert_eq!(
            read_set(&class("SELECT * FROM s.accounts JOIN b USING (id)")),
            vec!["*".to_string(), "accounts".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn the_key_covers_who_asked_settings_and_request() {
        let mut s = BTreeMap::new();
        let k = key("u", "d", &s, &[b"SELECT 1"]);
        assert_eq!(k, key("u", "d", &s, &[b"SELECT 1"]));
        assert_ne!(k, key("v", "d", &s, &[b"SELECT 1"]));
        assert_ne!(k, key("u", "e", &s, &[b"SELECT 1"]));
        assert_ne!(k, key("u", "d", &s, &[b"SELECT 2"]));
        // Parts are delimited: moving a byte between them changes the key.
        assert_ne!(key("ud", "", &s, &[b"x"]), key("u", "d", &s, &[b"x"]));
        s.insert("timezone".into(), "'UTC'".into());
        assert_ne!(k, key("u", "d", &s, &[b"SELECT 1"]));
    }
}
