//! The session's side of the query cache: answering a read from it,
//! capturing a result to keep, and marking the tables a write touches
//! until its transaction ends. The rules are in `cache::policy`.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::Ordering},
};

use bytes::BytesMut;

use super::{
    Session,
    message::{self, Message},
    state,
};
use crate::{
    cache::{Lookup, QueryCache, policy},
    protocol::{FrameRef, messages},
};

/// A result being read for the cache.
pub(super) struct Capture {
    key: [u8; 32],
    stamp: Vec<u64>,
    bytes: BytesMut,
    /// An extended-protocol unit: ParseComplete and BindComplete are not
    /// part of the result (a hit makes its own).
    extended: bool,
}

/// How a hit is answered.
enum Reply<'a> {
    Simple,
    /// The unit's Parse (if it had one) and how many of its messages
    /// after the first the session skips.
    Extended {
        parse: Option<FrameRef<'a>>,
        skip: usize,
    },
}

/// An extended-protocol unit the cache can answer: `[Parse ""] Bind ""
/// [Describe] Execute "" (all rows) Sync` — a query with parameters as
/// libpq (Describe of the portal), tokio-postgres (Describe of the
/// statement) and most drivers send it, or a prepared statement run.
struct Unit<'a> {
    parse: Option<FrameRef<'a>>,
    bind: FrameRef<'a>,
    /// The Describe's kind, if there is one (its replies are part of the
    /// result).
    describe: Option<u8>,
    /// Its messages, Sync included.
    len: usize,
}

fn extended_unit<'a>(f: FrameRef<'a>, rest: &[FrameRef<'a>]) -> Option<Unit<'a>> {
    let all: Vec<FrameRef<'a>> = std::iter::once(f)
        .chain(rest.iter().copied())
        .take(5)
        .collect();
    let parse = (all.first()?.tag == b'P').then_some(all[0]);
    let mut it = all[parse.is_some() as usize..].iter().copied();
    let b = it.next().filter(|m| m.tag == b'B')?;
    let mut next = it.next()?;
    let mut describe = None;
    let (portal, statement, _) = messages::read_bind(b).ok()?;
    if !portal.is_empty() || (parse.is_some() && !statement.is_empty()) {
        return None;
    }
    if next.tag == b'D' {
        let (kind, name) = messages::read_target(next).ok()?;
        let ok = match kind {
            b'P' => name.is_empty(),
            b'S' => name == statement,
            _ => false,
        };
        if !ok {
            return None;
        }
        describe = Some(kind);
        next = it.next()?;
    }
    // Execute of the unnamed portal, every row; then Sync.
    if next.tag != b'E' || next.body() != [0, 0, 0, 0, 0] || it.next()?.tag != b'S' {
        return None;
    }
    if let Some(p) = parse
        && !messages::read_parse(p).is_ok_and(|(name, _)| name.is_empty())
    {
        return None;
    }
    Some(Unit {
        parse,
        bind: b,
        describe,
        len: 3 + parse.is_some() as usize + describe.is_some() as usize,
    })
}

/// Tables the session's open transaction has marked as being written.
#[derive(Default)]
pub(super) struct Writes {
    tables: BTreeSet<String>,
    /// Whether the store recorded every mark (else none is taken back).
    marked: bool,
    /// A COMMIT (or PREPARE TRANSACTION) was acknowledged since the first
    /// mark.
    committed: bool,
    /// The last CommandComplete was ROLLBACK.
    last_rollback: bool,
    /// A transaction ended while later work of the session was in flight:
    /// the marks cover several transactions (possibly committed).
    spans: bool,
}

impl Session {
    /// Runs before a client message is handled. Marks what a write will
    /// touch; answers a cacheable read from the cache (true: answered) or
    /// starts capturing its result.
    pub(super) async fn cache_turn(
        &mut self,
        f: FrameRef<'_>,
        msg: &Message<'_>,
        rest: &[FrameRef<'_>],
    ) -> bool {
        let Some(cache) = self.shared.query_cache.clone() else {
            return false;
        };
        if self.capture.is_some() && self.at_boundary() {
            // Its query never reached a server (refused, answered by
            // tidepool): nothing that comes next belongs to it.
            self.capture = None;
        }
        if !self.cache_writes.tables.is_empty()
            && matches!(
                msg,
                Message::Query(_) | Message::Bind { .. } | Message::Execute | Message::FunctionCall
            )
        {
            // Work sent after a ROLLBACK (TO SAVEPOINT): not its end.
            self.cache_writes.last_rollback = false;
        }
        let class = match msg {
            Message::Query(sql) => self.shared.classifier.classify(sql),
            Message::Parse { query, .. } => {
                // Statements take effect when bound; what changes who
                // reads (a role, a temporary table that may shadow a cached
                // one) turns the cache off at once.
                let class = self.shared.classifier.classify(query);
                if changes_what_reads_see(query, &class) {
                    self.cache_off = true;
                }
                let Some(unit) = extended_unit(f, rest) else {
                    return false;
                };
                let facts = self.read_facts(&class).await;
                // The stores' futures are boxed: large, and not on the way
                // of sessions that find nothing to cache.
                return Box::pin(self.cache_read_unit(&cache, &class, &facts, unit)).await;
            }
            Message::Bind { statement } => match self.bound_class(statement) {
                Some(c) => c,
                None => Arc::new(crate::router::Class {
                    write: Some("statement prepared outside tidepool's view"),
                    writes_elsewhere: true,
                    ..Default::default()
                }),
            },
            Message::FunctionCall => Arc::new(crate::router::Class {
                write: Some("function call message"),
                writes_elsewhere: true,
                ..Default::default()
            }),
            _ => return false,
        };
        if let Message::Query(sql) = msg
            && changes_what_reads_see(sql, &class)
        {
            self.cache_off = true;
        }
        let facts = self.read_facts(&class).await;
        if let Some(mut tables) = policy::write_set(&class, facts.volatile_function) {
            if tables.iter().all(|t| t != policy::ALL_TABLES)
                && Box::pin(cache.facts.write_spreads(
                    self.shared.cache_primary(),
                    &self.database,
                    &tables,
                ))
                .await
            {
                // Triggers, foreign keys' cascades, views, partitions,
                // inheritance: other tables may change too.
                tables = vec![policy::ALL_TABLES.to_string()];
            }
            Box::pin(self.mark_writes(&cache, tables)).await;
            return false;
        }
        match msg {
            Message::Query(_) => {
                // The bytes as sent: text in another client encoding is not
                // UTF-8, and two such texts must not share a key.
                let raw = f.body();
                let raw = &raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())];
                let key = policy::key(&self.user, &self.database, &self.settings, &[raw]);
                Box::pin(self.cache_read(&cache, &class, &facts, key, Reply::Simple)).await
            }
            Message::Bind { .. } => match extended_unit(f, rest) {
                Some(unit) => Box::pin(self.cache_read_unit(&cache, &class, &facts, unit)).await,
                None => false,
            },
            _ => false,
        }
    }

    /// An extended-protocol unit that reads: answered from the cache, or
    /// its result captured.
    async fn cache_read_unit(
        &mut self,
        cache: &Arc<QueryCache>,
        class: &crate::router::Class,
        facts: &crate::router::Facts,
        unit: Unit<'_>,
    ) -> bool {
        let Ok((_, bound, offset)) = messages::read_bind(unit.bind) else {
            return false;
        };
        // What the statement is: the Parse's query and parameter types,
        // or the named statement's content-derived name.
        let statement: Vec<u8> = match unit.parse {
            Some(p) => {
                let body = p.body();
                let name_end = body.iter().position(|&c| c == 0).unwrap_or(0);
                body[name_end + 1..].to_vec()
            }
            None => match self.statements.get(bound) {
                Some(s) => s.server_name.as_bytes().to_vec(),
                None => return false,
            },
        };
        let key = policy::key(
            &self.user,
            &self.database,
            &self.settings,
            &[
                b"extended",
                &[unit.describe.unwrap_or(0)],
                &statement,
                &unit.bind.bytes[offset..],
            ],
        );
        let reply = Reply::Extended {
            parse: unit.parse,
            skip: unit.len - 1,
        };
        self.cache_read(cache, class, facts, key, reply).await
    }

    /// What the router's catalog knows of a statement's functions and
    /// relations (asked only when it names any).
    async fn read_facts(&self, class: &crate::router::Class) -> crate::router::Facts {
        let mut facts = crate::router::Facts::default();
        if !class.functions.is_empty() || (class.select && !class.tables.is_empty()) {
            let rt = self.shared.config.load_full();
            // No memo to keep: the key is not read.
            self.catalog_facts(&rt.rules, class, None, 0, &mut facts)
                .await;
        }
        facts
    }

    /// A read at a unit's start: answered from the cache (true), or its
    /// result captured to keep.
    async fn cache_read(
        &mut self,
        cache: &Arc<QueryCache>,
        class: &crate::router::Class,
        facts: &crate::router::Facts,
        key: [u8; 32],
        reply: Reply<'_>,
    ) -> bool {
        if self.cache_off
            || !self.at_boundary()
            || self.tracker.tx_status() != b'I'
            || !self.cache_writes.tables.is_empty()
            || facts.local_relation
            || facts.volatile_function
            || cache.policy.admits(class).is_err()
            || !cache
                .facts
                .read_cacheable(
                    self.shared.cache_primary(),
                    &self.database,
                    &class.tables,
                    &class.functions,
                )
                .await
        {
            return false;
        }
        let tables = policy::read_set(class);
        match cache.lookup(&self.database, &key, &tables).await {
            Lookup::Hit(bytes) => {
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                if self
                    .shared
                    .config
                    .load()
                    .rules
                    .cfg
                    .notice_per_node_statement
                {
                    messages::notice(
                        &mut self.to_client,
                        "tidepool: answered from the query cache",
                    );
                }
                if let Reply::Extended { parse, skip } = reply {
                    if let Some(p) = parse {
                        // ParseComplete; the unnamed statement is this one
                        // now, prepared on no connection yet.
                        self.to_client.extend_from_slice(&[b'1', 0, 0, 0, 4]);
                        let text_len = message::unnamed_parse_text_len(p);
                        self.set_unnamed(p, (usize::MAX, -1), None, false, text_len);
                    }
                    self.to_client.extend_from_slice(&[b'2', 0, 0, 0, 4]);
                    self.cache_skip = skip;
                }
                self.to_client.extend_from_slice(&bytes);
                messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
                true
            }
            Lookup::Miss(Some(stamp)) => {
                self.capture = Some(Box::new(Capture {
                    key,
                    stamp,
                    bytes: BytesMut::new(),
                    extended: matches!(reply, Reply::Extended { .. }),
                }));
                false
            }
            Lookup::Miss(None) => false,
        }
    }

    /// The class of the statement a Bind names.
    fn bound_class(&self, statement: &str) -> Option<Arc<crate::router::Class>> {
        if let Some(s) = self.statements.get(statement) {
            return Some(s.class.clone());
        }
        if statement.is_empty() {
            return self.unnamed_statement_class();
        }
        None
    }

    async fn mark_writes(&mut self, cache: &QueryCache, tables: Vec<String>) {
        let new: Vec<String> = tables
            .into_iter()
            .filter(|t| !self.cache_writes.tables.contains(t))
            .collect();
        if new.is_empty() {
            return;
        }
        let first = self.cache_writes.tables.is_empty();
        let marked = cache.begin_write(&self.database, &new).await;
        self.cache_writes.marked = if first {
            marked
        } else {
            self.cache_writes.marked && marked
        };
        self.cache_writes.tables.extend(new);
    }

    /// A reply forwarded to the client: part of a result being captured,
    /// or its end.
    pub(super) fn cache_reply(&mut self, f: FrameRef<'_>) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        let limit = self
            .shared
            .query_cache
            .as_ref()
            .map_or(0, |q| q.policy.max_entry_size);
        if matches!(f.tag, b'T' | b'D' | b'C' | b't') && c.bytes.len() + f.bytes.len() > limit {
            // Too large to keep: stop holding a copy now, not at the end.
            if let Some(q) = &self.shared.query_cache {
                q.stats.not_stored.fetch_add(1, Ordering::Relaxed);
            }
            self.capture = None;
            return;
        }
        match f.tag {
            b'T' | b'D' | b'C' => c.bytes.extend_from_slice(f.bytes),
            b'1' | b'2' if c.extended => {}
            b't' if c.extended => c.bytes.extend_from_slice(f.bytes),
            b'Z' => {
                let c = self.capture.take().expect("checked above");
                if f.body().first() == Some(&b'I')
                    && let Some(cache) = &self.shared.query_cache
                {
                    cache.store(c.key, c.stamp, c.bytes.freeze());
                }
            }
            // An error, a notice, a setting reported, COPY: not a plain
            // result.
            _ => self.capture = None,
        }
    }

    /// A reply the client does not get as the server sent it.
    pub(super) fn cache_reply_altered(&mut self) {
        self.capture = None;
    }

    /// A CommandComplete while the transaction has marks: whether it
    /// ends in a rollback.
    pub(super) fn cache_command_complete(&mut self, f: FrameRef<'_>) {
        if self.cache_writes.tables.is_empty() {
            return;
        }
        let tag = f.body();
        let w = &mut self.cache_writes;
        w.last_rollback = tag.starts_with(b"ROLLBACK\0");
        w.committed |= tag.starts_with(b"COMMIT\0") || tag.starts_with(b"PREPARE TRANSACTION\0");
    }

    /// The session's transaction ended (ReadyForQuery 'I'): the tables it
    /// wrote get new generations and their marks go. Only a transaction
    /// whose last word was ROLLBACK, with no COMMIT acknowledged since
    /// its first write, counts as rolled back (a failed statement or a
    /// broken connection counts as possibly committed).
    pub(super) fn cache_transaction_ended(&mut self) {
        if self.cache_writes.tables.is_empty() {
            return;
        }
        if self.tracker.awaited() > 0 || !self.to_backend.is_empty() {
            // Pipelined work of the session is still on its way, and may
            // hold marks of its own: they all end with the last of it.
            self.cache_writes.spans = true;
            return;
        }
        let writes = std::mem::take(&mut self.cache_writes);
        self.end_writes(writes);
    }

    fn end_writes(&self, writes: Writes) {
        let Some(cache) = self.shared.query_cache.clone() else {
            return;
        };
        let db = self.database.clone();
        let tables: Vec<String> = writes.tables.into_iter().collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let committed = !writes.last_rollback || writes.committed || writes.spans;
            rt.spawn(async move {
                cache
                    .end_write(&db, &tables, writes.marked, committed)
                    .await
            });
        }
    }
}

/// How long the marks of a session that left with work in flight stay:
/// its server may still commit what it was sent after the connection
/// closed.
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Session {
    /// A transaction the session left open ends with it (after `finish`
    /// gave its server connection back, or closed it). Left with work in
    /// flight, it counts as possibly committed, and its marks stay a while.
    fn drop(&mut self) {
        if self.cache_writes.tables.is_empty() {
            return;
        }
        let mut writes = std::mem::take(&mut self.cache_writes);
        if self.tracker.is_idle() {
            return self.end_writes(writes);
        }
        writes.spans = true;
        let Some(cache) = self.shared.query_cache.clone() else {
            return;
        };
        let db = self.database.clone();
        let tables: Vec<String> = writes.tables.into_iter().collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(IN_FLIGHT_GRACE).await;
                cache.end_write(&db, &tables, writes.marked, true).await
            });
        }
    }
}

/// Whether a statement changes what this session's reads see, so that a
/// shared result may no longer be its answer: a role or session
/// authorization, `set_config` (row-level security keyed by a setting,
/// search_path), a temporary relation (it may shadow a table), or code
/// run by `DO` / `CALL` that may do any of these.
fn changes_what_reads_see(sql: &str, class: &crate::router::Class) -> bool {
    let lower = sql.to_ascii_lowercase();
    let identity = [
        "set role",
        "set session role",
        "set local role",
        "reset role",
        "session authorization",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let set_config = class
        .functions
        .iter()
        .any(|f| f.rsplit('.').next() == Some("set_config"));
    let temp = state::analyze(sql)
        .pins
        .contains(&state::PinReason::TempTable)
        || (class.writes_elsewhere && lower.contains("temp"));
    let code = {
        let t = lower.trim_start();
        t.starts_with("do") || t.starts_with("call")
    };
    identity || set_config || temp || code
}

#[cfg(test)]
mod tests {
    use super::changes_what_reads_see;

    fn changes(sql: &str) -> bool {
        let class = crate::router::classify::classify_uncached(sql);
        changes_what_reads_see(sql, &class)
    }

    #[test]
    fn roles_settings_functions_temporary_relations_and_code_turn_the_cache_off() {
        for sql in [
            "SET ROLE tenant_a",
            "set session authorization bob",
            "RESET ROLE",
            "SELECT set_config('app.tenant', '7', false)",
            "CREATE TEMP TABLE accounts (id int)",
            "SELECT * INTO TEMP accounts FROM src",
            "CREATE TABLE pg_temp.accounts (id int)",
            "DO $$ BEGIN CREATE TEMP TABLE x (i int); END $$",
            "CALL refresh_things()",
        ] {
            assert!(changes(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM accounts WHERE role = 'x'",
            "SET search_path = app",
            "UPDATE accounts SET v = 1",
        ] {
            // search_path is a tracked setting: part of the key, not a reason.
            assert!(!changes(sql), "{sql}");
        }
    }
}
