//! What a statement is, by the real PostgreSQL grammar (`pg_query`).
//!
//! Results are cached by the statement's shape: its text with literals
//! replaced, so `… WHERE aid = 17` and `… WHERE aid = 42` share one parse.
//! Literals never change what a statement does to data, so the shape is a
//! safe key.

use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;
use pg_query::{NodeRef, protobuf::TransactionStmtKind};
use siphasher::sip128::Hasher128;
use std::hash::Hasher;

/// How a statement (or a string of statements) may be routed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Class {
    /// Must run on the primary, whatever else is known; the reason says why.
    pub write: Option<&'static str>,
    /// Starts an explicit transaction (`BEGIN`, `START TRANSACTION`).
    pub begins: bool,
    /// The transaction it starts is declared READ ONLY.
    pub read_only_tx: bool,
    /// Serializable isolation: only the primary can run it.
    pub serializable: bool,
    /// Every statement is a plain read (counted as a SELECT).
    pub select: bool,
    /// Relations it reads or writes (for temporary/unlogged checks and
    /// `dml_adaptive`).
    pub tables: Vec<String>,
    /// Relations it writes.
    pub written: Vec<String>,
    /// It may change data other than by DML on `written` (DDL, TRUNCATE,
    /// COPY FROM, SELECT INTO, two-phase commit, a statement that could
    /// not be parsed): the query cache drops every result on it.
    pub writes_elsewhere: bool,
    /// Functions it calls (for the volatility check).
    pub functions: Vec<String>,
    /// Starts with a comment (Pgpool-II's `allow_sql_comments`).
    pub leading_comment: bool,
    /// Carries the `/* tidepool: primary */` hint.
    pub hint_primary: bool,
    /// What the catalog last said of its functions and relations.
    pub catalog: super::catalog::Memo,
}

/// Parses statements, remembering the results.
pub struct Classifier {
    cache: Mutex<LruCache<u128, Arc<Class>>>,
    /// The shape digest's key, random per process: which statements share
    /// a digest cannot be worked out from outside.
    keys: (u64, u64),
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Classifier {
    pub fn new(capacity: usize) -> Self {
        Classifier {
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            keys: rand::random(),
        }
    }

    /// A 128-bit digest of the statement's shape, computed without
    /// building the shape: one keyed SipHash-1-3 pass.
    pub fn shape_key(&self, sql: &str) -> u128 {
        let mut h = self.digest();
        shape_into(sql, |part| h.write(part));
        h.finish128().as_u128()
    }

    fn digest(&self) -> siphasher::sip128::SipHasher13 {
        siphasher::sip128::SipHasher13::new_with_keys(self.keys.0, self.keys.1)
    }

    /// The class of `sql`, from a cache when its shape was seen before:
    /// first this thread's front cache, which holds shapes (compared
    /// whole, found by a quick unkeyed hash), then the shared cache, which
    /// holds 128-bit keyed digests of shapes, not their text: a client
    /// sending many distinct long statements costs it 16 bytes each.
    /// Statements over `MAX_CLASSIFIED` are not parsed at all.
    pub fn classify(&self, sql: &str) -> Arc<Class> {
        if sql.len() > MAX_CLASSIFIED {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(Class {
                write: Some("statement too long to classify (over 1 MiB)"),
                writes_elsewhere: true,
                ..Class::default()
            });
        }
        if sql.len() > FRONT_SHAPE_MAX {
            return self.shared_class(self.shape_key(sql), sql);
        }
        FRONT.with_borrow_mut(|front| {
            let Front { shape, slots } = front;
            shape.clear();
            shape_into(sql, |part| shape.extend_from_slice(part));
            let slot = &mut slots[(quick_hash(shape) as usize) % FRONT_SLOTS];
            if let Some(s) = slot.as_ref()
                && s.owner == self.keys.0
                && s.shape == *shape
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return s.class.clone();
            }
            let mut h = self.digest();
            h.write(shape);
            let class = self.shared_class(h.finish128().as_u128(), sql);
            match slot {
                // The slot's room is reused.
                Some(s) => {
                    s.owner = self.keys.0;
                    s.shape.clear();
                    s.shape.extend_from_slice(shape);
                    s.class = class.clone();
                }
                None => {
                    *slot = Some(FrontSlot {
                        owner: self.keys.0,
                        shape: shape.clone(),
                        class: class.clone(),
                    })
                }
            }
            class
        })
    }

    /// The class of `sql` (whose shape's digest is `key`) from the shared
    /// cache, parsed and kept there when it is not.
    fn shared_class(&self, key: u128, sql: &str) -> Arc<Class> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        match cached {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let class = Arc::new(classify_uncached(sql));
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(key, class.clone());
                class
            }
        }
    }
}

/// Slots of each thread's front cache.
const FRONT_SLOTS: usize = 64;

/// Longest statement whose shape the front cache keeps (longer ones go to
/// the shared cache by digest): the thread's room for shapes stays small.
const FRONT_SHAPE_MAX: usize = 1024;

/// A front cache slot: a shape, the classifier that classified it, and
/// its class. A class never changes for its shape.
struct FrontSlot {
    owner: u64,
    shape: Vec<u8>,
    class: Arc<Class>,
}

/// Each thread's front cache, and its room for building the shape.
struct Front {
    shape: Vec<u8>,
    slots: [Option<FrontSlot>; FRONT_SLOTS],
}

thread_local! {
    /// The shapes this thread classified last, one per slot, in front of
    /// the shared cache: most statements repeat, and a hit here takes no
    /// lock and no keyed digest. The slot is found by a quick unkeyed
    /// hash and the shape compared whole: statements made to share a
    /// slot only take turns in it.
    static FRONT: std::cell::RefCell<Front> = const {
        std::cell::RefCell::new(Front {
            shape: Vec::new(),
            slots: [const { None }; FRONT_SLOTS],
        })
    };
}

/// The front cache's slot hash (foldhash, fixed seed).
fn quick_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x7469_6465_706f_6f6c).hash_one(bytes)
}

/// Longest statement tidepool parses to route it; a longer one runs on the
/// primary (parsing it would cost more memory than the statement itself).
pub const MAX_CLASSIFIED: usize = 1 << 20;

/// The statement's text with string and number literals replaced by `?`.
pub fn shape(sql: &str) -> String {
    let mut out = Vec::with_capacity(sql.len());
    shape_into(sql, |part| out.extend_from_slice(part));
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes where the shape may differ from the text: quotes and digits.
/// Every other byte is copied as it is, so the scan skips runs of them.
/// The definition `special_mask` follows (and is tested against).
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
static SHAPE_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'\'' as usize] = true;
    t[b'"' as usize] = true;
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = true;
        d += 1;
    }
    t
};

/// The first byte at or after `i` that is a quote or a digit (`b.len()`
/// when none is): sixteen bytes at a time (`special_mask`), the last few
/// through a padded block.
fn next_special(b: &[u8], mut i: usize) -> usize {
    while let Some(block) = b.get(i..i + 16) {
        let m = special_mask(block.try_into().expect("sixteen bytes"));
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    if i >= b.len() {
        return b.len();
    }
    // Zero bytes are not special: the padding is never found.
    let mut block = [0u8; 16];
    block[..b.len() - i].copy_from_slice(&b[i..]);
    match special_mask(&block) {
        0 => b.len(),
        m => i + m.trailing_zeros() as usize,
    }
}

/// Bit `k` set for each byte `block[k]` that is a quote (`'`, `"`) or an
/// ASCII digit: one SSE2 comparison of the whole block per kind (SSE2 is
/// part of every x86_64 processor; the table, byte by byte, elsewhere).
/// Bytes of UTF-8 characters (0x80 and above) compare as negative, below
/// `'0'`, so are never digits.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn special_mask(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: the target enables SSE2 (the x86_64 baseline: every x86_64
    // processor has it), and the unaligned load reads the sixteen bytes
    // `block` borrows.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let digit = _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8(b'0' as i8 - 1)),
            _mm_cmplt_epi8(v, _mm_set1_epi8(b'9' as i8 + 1)),
        );
        let quote = _mm_or_si128(
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\'' as i8)),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8)),
        );
        _mm_movemask_epi8(_mm_or_si128(digit, quote)) as u32
    }
}

/// As above, byte by byte through the table, on other processors.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn special_mask(block: &[u8; 16]) -> u32 {
    block.iter().enumerate().fold(0, |m, (k, &c)| {
        m | (u32::from(SHAPE_SPECIAL[c as usize]) << k)
    })
}

/// Whether a digit after `b` belongs to a name (`t1`, `$1`, `"x"1`, a
/// letter outside ASCII), not to a number. `b` ends a character: a
/// continuation byte of a multi-byte character is at least 0x80 too.
fn ends_a_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80 || b == b'$' || b == b'"'
}

/// Feeds the shape of `sql` to `sink`, piece by piece. Runs of bytes that
/// cannot change are skipped sixteen at a time (`next_special`); only quotes
/// and digits are looked at further.
fn shape_into(sql: &str, mut sink: impl FnMut(&[u8])) {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut run = 0; // start of the verbatim run not yet sunk
    loop {
        i = next_special(b, i);
        let Some(&c) = b.get(i) else { break };
        if c == b'\'' || c == b'"' {
            // A string literal becomes `?`; a quoted identifier is kept
            // verbatim: `"2023_sales"` names a table, its digits are no
            // literal. A doubled quote is one quote inside.
            let literal = c == b'\'';
            if literal {
                sink(&b[run..i]);
            }
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            if literal {
                sink(b"?");
                run = i;
            }
        } else if i > 0 && ends_a_name(b[i - 1]) {
            // A digit inside a name.
            i += 1;
        } else {
            // A number (digits and dots) becomes `?`.
            sink(&b[run..i]);
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            sink(b"?");
            run = i;
        }
    }
    sink(&b[run..]);
}

fn starts_with_comment(sql: &str) -> bool {
    let t = sql.trim_start();
    t.starts_with("/*") || t.starts_with("--")
}

/// Classifies without the cache.
pub fn classify_uncached(sql: &str) -> Class {
    let mut class = Class {
        leading_comment: starts_with_comment(sql),
        hint_primary: has_primary_hint(sql),
        ..Class::default()
    };
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        Err(_) => {
            class.write = Some("statement could not be parsed");
            class.writes_elsewhere = true;
            return class;
        }
    };
    let mut all_select = !parsed.protobuf.stmts.is_empty();
    for stmt in &parsed.protobuf.stmts {
        let Some(node) = stmt.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        use pg_query::NodeEnum as N;
        match node {
            N::SelectStmt(_) => {}
            N::VariableShowStmt(v) if v.name.eq_ignore_ascii_case("transaction_read_only") => {
                // Every standby says "on": the session's answer is the primary's.
                class
                    .write
                    .get_or_insert("reads state of one server (transaction_read_only)");
            }
            N::VariableShowStmt(_) => {}
            N::ExplainStmt(e) => {
                all_select = false;
                let analyze = e.options.iter().any(|o| match o.node.as_ref() {
                    Some(N::DefElem(d)) => d.defname.eq_ignore_ascii_case("analyze"),
                    _ => false,
                });
                if analyze {
                    // EXPLAIN ANALYZE runs the statement: writes found by the
                    // node walk below send it to the primary.
                }
            }
            N::CopyStmt(c) => {
                all_select = false;
                if c.is_from {
                    class.write.get_or_insert("COPY FROM writes");
                    class.writes_elsewhere = true;
                }
            }
            N::VariableSetStmt(_) | N::DiscardStmt(_) | N::DeallocateStmt(_) => {
                all_select = false;
            }
            N::TransactionStmt(t) => {
                all_select = false;
                let kind = TransactionStmtKind::try_from(t.kind).unwrap_or_default();
                match kind {
                    TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart => {
                        class.begins = true;
                        for o in &t.options {
                            if let Some(N::DefElem(d)) = o.node.as_ref() {
                                let v = def_value(d);
                                if d.defname == "transaction_read_only" && v == "1" {
                                    class.read_only_tx = true;
                                }
                                if d.defname == "transaction_isolation" && v == "serializable" {
                                    class.serializable = true;
                                }
                            }
                        }
                    }
                    TransactionStmtKind::TransStmtCommit
                    | TransactionStmtKind::TransStmtRollback
                    | TransactionStmtKind::TransStmtSavepoint
                    | TransactionStmtKind::TransStmtRelease
                    | TransactionStmtKind::TransStmtRollbackTo => {}
                    _ => {
                        class.write.get_or_insert("two-phase commit command");
                        class.writes_elsewhere = true;
                    }
                }
            }
            N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) => {
                all_select = false;
                class
                    .write
                    .get_or_insert("statement writes or changes state");
            }
            _ => {
                all_select = false;
                class
                    .write
                    .get_or_insert("statement writes or changes state");
                class.writes_elsewhere = true;
            }
        }
        if matches!(node, N::VariableSetStmt(_))
            && sql.to_ascii_lowercase().contains("serializable")
        {
            class.serializable = true;
        }
    }
    for (node, _, _, _) in parsed.protobuf.nodes() {
        let reason = match node {
            NodeRef::InsertStmt(_)
            | NodeRef::UpdateStmt(_)
            | NodeRef::DeleteStmt(_)
            | NodeRef::MergeStmt(_) => Some("data-modifying statement"),
            NodeRef::LockingClause(_) => Some("SELECT … FOR UPDATE/SHARE locks rows"),
            NodeRef::SelectStmt(s) if !s.locking_clause.is_empty() => {
                Some("SELECT … FOR UPDATE/SHARE locks rows")
            }
            NodeRef::IntoClause(_) => {
                class.writes_elsewhere = true;
                Some("SELECT INTO creates a table")
            }
            NodeRef::SelectStmt(s) if s.into_clause.is_some() => {
                class.writes_elsewhere = true;
                Some("SELECT INTO creates a table")
            }
            _ => None,
        };
        if let Some(r) = reason {
            class.write.get_or_insert(r);
            all_select = false;
        }
    }
    class.select = all_select && class.write.is_none();
    class.tables = parsed.tables();
    class.written = parsed.dml_tables();
    class.functions = parsed
        .functions
        .iter()
        .filter(|(_, ctx)| *ctx == pg_query::Context::Call)
        .map(|(name, _)| name.clone())
        .collect();
    class.tables.sort();
    class.functions.sort();
    let local_function = class
        .functions
        .iter()
        .any(|f| NODE_LOCAL_FUNCTIONS.contains(&last_part(f)));
    let local_relation = class
        .tables
        .iter()
        .any(|t| NODE_LOCAL_RELATIONS.contains(&last_part(t)));
    if class
        .functions
        .iter()
        .any(|f| primary_only_functions().contains(&last_part(f)))
    {
        class
            .write
            .get_or_insert("calls a function only a primary runs (primary_only_functions.txt)");
        class.select = false;
    }
    if local_function || local_relation {
        class.write.get_or_insert(
            "reads state of one server (its sessions, locks, prepared transactions)",
        );
        class.select = false;
    }
    class
}

/// Non-volatile built-ins a standby refuses (25006), from
/// `primary_only_functions.txt`.
fn primary_only_functions() -> &'static [&'static str] {
    static LIST: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        include_str!("primary_only_functions.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    });
    &LIST
}

/// Functions whose answer belongs to one server and its sessions: a
/// standby's answer would describe another server than the one the
/// session's writes (and `pg_terminate_backend`) run on.
const NODE_LOCAL_FUNCTIONS: &[&str] = &[
    "pg_backend_pid",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_stat_get_activity",
    "pg_stat_get_backend_idset",
    "pg_stat_get_backend_pid",
    "pg_current_xact_id_if_assigned",
    "txid_current_if_assigned",
    "pg_my_temp_schema",
    "pg_listening_channels",
    "pg_notification_queue_usage",
    "pg_prepared_statement",
    "pg_cursor",
    "pg_lock_status",
    "pg_prepared_xact",
];

/// Views of the same kind.
const NODE_LOCAL_RELATIONS: &[&str] = &[
    "pg_stat_activity",
    "pg_prepared_xacts",
    "pg_locks",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_prepared_statements",
    "pg_cursors",
    "pg_backend_memory_contexts",
];

/// `schema.name` → `name`.
fn last_part(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn def_value(d: &pg_query::protobuf::DefElem) -> String {
    use pg_query::NodeEnum as N;
    match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
        Some(N::AConst(c)) => match c.val.as_ref() {
            Some(pg_query::protobuf::a_const::Val::Ival(i)) => i.ival.to_string(),
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => s.sval.to_ascii_lowercase(),
            Some(pg_query::protobuf::a_const::Val::Boolval(b)) => {
                if b.boolval {
                    "1".into()
                } else {
                    "0".into()
                }
            }
            _ => String::new(),
        },
        _ => String::new(),
    }
}

/// `/* tidepool: primary */` in the statement's leading comments.
fn has_primary_hint(sql: &str) -> bool {
    let mut s = sql.trim_start();
    while let Some(rest) = s.strip_prefix("/*") {
        let Some((comment, after)) = rest.split_once("*/") else {
            return false;
        };
        let c: String = comment.split_whitespace().collect::<Vec<_>>().join(" ");
        if c.eq_ignore_ascii_case("tidepool: primary") {
            return true;
        }
        s = after.trim_start();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Class {
        classify_uncached(sql)
    }

    #[test]
    fn plain_reads_may_be_balanced() {
        for sql in [
            "SELECT 1",
            "select a from t where b = 2",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x",
            "SHOW work_mem",
            "SELECT count(*) FROM a JOIN b USING (id)",
        ] {
            assert!(c(sql).write.is_none(), "{sql}");
        }
        assert!(c("EXPLAIN SELECT 1").write.is_none());
        assert!(c("COPY t TO STDOUT").write.is_none());
        assert_eq!(c("select a from t").tables, ["t"]);
        assert!(c("SELECT 1").select);
    }

    #[test]
    fn writes_and_write_like_reads_go_to_the_primary() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE x (a int)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT f() FROM t WHERE id = 1 FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * INTO t2 FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "LOCK TABLE t",
            "VACUUM t",
            "LISTEN c",
            "NOTIFY c",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "COPY t FROM STDIN",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "CALL p()",
            "this is not sql",
        ] {
            assert!(c(sql).write.is_some(), "{sql}");
        }
        assert_eq!(c("UPDATE t SET a = 1").written, ["t"]);
    }

    #[test]
    fn functions_and_transaction_options_are_reported() {
        assert_eq!(c("SELECT nextval('s')").functions, ["nextval"]);
        let b = c("BEGIN READ ONLY");
        assert!(b.begins && b.read_only_tx && b.write.is_none());
        assert!(c("BEGIN ISOLATION LEVEL SERIALIZABLE").serializable);
        assert!(c("START TRANSACTION").begins);
        assert!(!c("BEGIN").read_only_tx);
    }

    #[test]
    fn reads_of_one_servers_own_state_go_where_the_session_writes() {
        for sql in [
            "SELECT pg_backend_pid()",
            "SELECT * FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            "SELECT gid FROM pg_catalog.pg_prepared_xacts",
            "SELECT count(*) FROM pg_locks",
            "SHOW transaction_read_only",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
        ] {
            assert!(c(sql).write.is_some(), "{sql}");
        }
        assert!(c("SELECT pg_is_in_recovery()").write.is_none());
        assert!(c("SELECT txid_current()").write.is_some());
        assert!(c("select pg_catalog.pg_current_xact_id()").write.is_some());
        assert!(c("SHOW work_mem").write.is_none());
    }

    #[test]
    fn comments_and_hints_are_seen() {
        let h = c("/* tidepool: primary */ SELECT 1");
        assert!(h.hint_primary && h.leading_comment);
        assert!(!c("SELECT 1 /* tidepool: primary */").hint_primary);
        assert!(c("-- note\nSELECT 1").leading_comment);
    }

    /// The shape by the plain definition, one character at a time: what
    /// the skipping scan must agree with.
    fn shape_stepwise(sql: &str) -> String {
        let mut out = String::new();
        let mut prev_ident = false;
        let mut chars = sql.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            match c {
                '\'' | '"' => {
                    let mut text = String::from(c);
                    while let Some((_, d)) = chars.next() {
                        text.push(d);
                        if d == c {
                            if chars.peek().map(|p| p.1) == Some(c) {
                                text.push(c);
                                chars.next();
                                continue;
                            }
                            break;
                        }
                    }
                    out.push_str(if c == '\'' { "?" } else { &text });
                    prev_ident = c == '"';
                }
                '0'..='9' if !prev_ident => {
                    while chars
                        .peek()
                        .is_some_and(|p| p.1.is_ascii_digit() || p.1 == '.')
                    {
                        chars.next();
                    }
                    out.push('?');
                    prev_ident = false;
                }
                _ => {
                    out.push(c);
                    prev_ident = c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii();
                }
            }
        }
        out
    }

    #[test]
    fn the_skipping_shape_scan_agrees_with_the_stepwise_definition() {
        let pieces = [
            "'", "\"", "''", "\"\"", "1", "42", "3.5", ".", "a", "t", "_", "$", " ", "é", "日本",
            "=", ",", "x9", "(", "-", "\\", "\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let sql: String = (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            assert_eq!(shape(&sql), shape_stepwise(&sql), "shape of {sql:?}");
        }
    }

    #[test]
    fn the_block_scan_marks_exactly_the_tables_bytes() {
        // Every byte value in every position, beside neighbours of every
        // kind.
        for neighbour in [
            0u8, b'a', b'/', b'0', b'9', b':', b'\'', b'"', 0x7f, 0x80, 0xff,
        ] {
            for pos in 0..16 {
                for v in 0..=255u8 {
                    let mut bytes = [neighbour; 16];
                    bytes[pos] = v;
                    let want = bytes.iter().enumerate().fold(0u32, |m, (i, &b)| {
                        m | (u32::from(SHAPE_SPECIAL[b as usize]) << i)
                    });
                    assert_eq!(special_mask(&bytes), want, "{bytes:?}");
                }
            }
        }
        let text = b"SELECT abalance FROM pgbench_accounts WHERE x = 'y' AND \"z\" > 0";
        for start in 0..text.len() {
            let want = (start..text.len())
                .find(|&i| SHAPE_SPECIAL[text[i] as usize])
                .unwrap_or(text.len());
            assert_eq!(next_special(text, start), want, "from {start}");
        }
    }

    #[test]
    fn shapes_ignore_literals_only() {
        let c = Classifier::default();
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4711"),
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 12")
        );
        assert_eq!(
            shape("select 'it''s', t1.x2 from t1"),
            "select ?, t1.x2 from t1"
        );
        assert_ne!(shape("SELECT * FROM t1"), shape("SELECT * FROM t2"));
        // Quoted identifiers are names, whatever digits they hold.
        assert_ne!(
            c.shape_key(r#"UPDATE "2023_sales" SET x = 1"#),
            c.shape_key(r#"UPDATE "2024_sales" SET x = 1"#)
        );
        assert_eq!(
            shape(r#"SELECT "a""1" FROM t WHERE x = 5"#),
            r#"SELECT "a""1" FROM t WHERE x = ?"#
        );
        assert_eq!(
            c.shape_key("SELECT abalance FROM pgbench_accounts WHERE aid = 4711"),
            c.shape_key("SELECT abalance FROM pgbench_accounts WHERE aid = 12")
        );
        assert_ne!(
            c.shape_key("SELECT * FROM t1"),
            c.shape_key("SELECT * FROM t2")
        );
        assert_eq!(shape("SELECT 'é', x2 FROM t"), "SELECT ?, x2 FROM t");
        assert_eq!(shape("SELECT 'unterminated"), "SELECT ?");
    }

    #[test]
    fn the_cache_answers_repeated_shapes() {
        let k = Classifier::new(16);
        k.classify("SELECT * FROM t WHERE a = 1");
        k.classify("SELECT * FROM t WHERE a = 2");
        assert_eq!(k.misses.load(Ordering::Relaxed), 1);
        assert_eq!(k.hits.load(Ordering::Relaxed), 1);
        // Another thread finds it in the shared cache, and the same class.
        let here = k.classify("SELECT * FROM t WHERE a = 3");
        let there = std::thread::scope(|s| {
            s.spawn(|| k.classify("SELECT * FROM t WHERE a = 4"))
                .join()
                .unwrap()
        });
        assert!(Arc::ptr_eq(&here, &there));
        assert_eq!(k.misses.load(Ordering::Relaxed), 1);
        assert_eq!(k.hits.load(Ordering::Relaxed), 3);
        // Past the size bound: not parsed, not kept, sent to the primary.
        let big = format!("SELECT '{}'", "x".repeat(MAX_CLASSIFIED));
        assert!(k.classify(&big).write.is_some());
        assert_eq!(k.cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_front_cache_and_the_digest_agree_on_shapes() {
        // Short statements are digested from their built shape, long ones
        // as they are scanned: one shape, one digest either way.
        let c = Classifier::default();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711",
            "select 'it''s', t1.x2 from t1 where y = 1.5",
            "SELECT 'é', \"2023\" FROM t",
        ] {
            let mut h = c.digest();
            h.write(shape(sql).as_bytes());
            assert_eq!(h.finish128().as_u128(), c.shape_key(sql), "{sql}");
        }
        // A long statement (past the front cache) and its repeat.
        let long = format!("SELECT {} FROM t WHERE a = 1", "x, ".repeat(400) + "y");
        let long2 = long.replace("a = 1", "a = 22");
        assert!(long.len() > FRONT_SHAPE_MAX);
        assert!(Arc::ptr_eq(&c.classify(&long), &c.classify(&long2)));
        // Another classifier on this thread finds nothing of the first's
        // in the front cache: it parses the statement itself.
        let d = Classifier::default();
        c.classify("SELECT * FROM front_t WHERE a = 1");
        d.classify("SELECT * FROM front_t WHERE a = 2");
        assert_eq!(d.misses.load(Ordering::Relaxed), 1);
        assert_eq!(d.hits.load(Ordering::Relaxed), 0);
        d.classify("SELECT * FROM front_t WHERE a = 3");
        assert_eq!(d.hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_shape_digest_is_keyed_per_classifier() {
        // The same shape digests alike under one key and differently
        // under another (two processes do not share digests).
        let (a, b) = (Classifier::default(), Classifier::default());
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
        assert_eq!(a.shape_key(sql), a.shape_key(sql));
        assert_ne!(a.shape_key(sql), b.shape_key(sql));
    }
}
