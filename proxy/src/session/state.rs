//! What a statement does to session state that pooling must carry.
//!
//! In transaction mode a client's statements may run on different backend
//! connections. Settings made with `SET` are carried by re-applying them;
//! state that cannot be carried (temporary tables, session advisory locks,
//! LISTEN, cursors WITH HOLD, SQL-level PREPARE) pins the client to its
//! connection until the state is gone. This is a lexical scan of the
//! statement's leading keywords, deliberately conservative: when it sees
//! such state it pins.

use std::collections::BTreeMap;

/// Session state that keeps a client on one backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PinReason {
    TempTable,
    AdvisoryLock,
    Listen,
    CursorWithHold,
    SqlPrepare,
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::Listen => "listen",
            PinReason::CursorWithHold => "cursor_with_hold",
            PinReason::SqlPrepare => "sql_prepare",
        }
    }
}

/// The reasons a session is pinned now: a set of [`PinReason`]s in one
/// byte (a session keeps one; most hold none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins(u8);

impl Pins {
    fn bit(p: PinReason) -> u8 {
        1 << p as u8
    }

    /// Adds `p`; whether it was new.
    pub fn insert(&mut self, p: PinReason) -> bool {
        let new = self.0 & Self::bit(p) == 0;
        self.0 |= Self::bit(p);
        new
    }

    pub fn remove(&mut self, p: PinReason) {
        self.0 &= !Self::bit(p);
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A change to session settings, applied once the backend confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    /// `SET name TO value` (value as SQL text).
    Set(String, String),
    Reset(String),
    ResetAll,
    /// One statement setting several (`SET SESSION CHARACTERISTICS AS
    /// TRANSACTION ISOLATION LEVEL …, READ ONLY`).
    Several(Vec<SettingChange>),
}

/// Effects of one query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub pins: Vec<PinReason>,
    pub unpins: Vec<PinReason>,
    pub settings: Vec<SettingChange>,
    /// A database the statement needs no other session connected to
    /// (DROP DATABASE, ALTER DATABASE … RENAME, CREATE DATABASE … TEMPLATE):
    /// tidepool's idle pooled connections to it must go first.
    pub frees_database: Option<String>,
}

impl Effects {
    /// The statement changes nothing pooling carries.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
            && self.unpins.is_empty()
            && self.settings.is_empty()
            && self.frees_database.is_none()
    }
}

/// Splits on `;` outside quotes, comments and dollar-quoted strings.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ … $tag$
                if let Some(end) = sql[i + 1..].find('$') {
                    let tag = &sql[i..i + end + 2];
                    if tag[1..tag.len() - 1]
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_')
                    {
                        let body = i + tag.len();
                        if let Some(close) = sql[body..].find(tag) {
                            i = body + close + tag.len() - 1;
                        }
                    }
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter().filter(|s| !strip(s).is_empty()).collect()
}

/// The statement without leading whitespace and comments.
fn strip(mut s: &str) -> &str {
    loop {
        // ASCII whitespace: what PostgreSQL's scanner skips.
        s = s.trim_ascii_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s.trim_ascii_end();
        }
    }
}

/// Lower-cased words of the statement (identifier characters only).
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '*'))
        .filter(|w| !w.is_empty())
        .take(8)
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

/// Scans a query string for pinning state and setting changes.
pub fn analyze(sql: &str) -> Effects {
    let mut e = Effects::default();
    // One statement (most query strings, often with a final `;`):
    // nothing to split. One search finds both a `;` inside and the `y`
    // that every advisory lock function's name has (a statement with
    // neither is neither split nor searched further).
    let one = sql.trim_ascii_end();
    let one = one.strip_suffix(';').unwrap_or(one);
    let b = one.as_bytes();
    let (several, advisory) = match memchr::memchr3(b';', b'y', b'Y', b) {
        None => (false, false),
        Some(i) if b[i] == b';' => (true, true),
        Some(i) => (memchr::memchr(b';', &b[i + 1..]).is_some(), true),
    };
    if !several {
        analyze_one(strip(one), advisory, &mut e);
        return e;
    }
    for stmt in split_statements(sql) {
        analyze_one(strip(stmt), true, &mut e);
    }
    e
}

/// Whether `hay` contains `needle` (lower case ASCII), ignoring ASCII case.
/// Only the places where the needle's last letter occurs are compared: a
/// letter rare in SQL (the `y` of `advisory`) makes most strings one
/// `memchr` pass.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let Some(&last) = n.last() else {
        return true;
    };
    memchr::memchr2_iter(last, last.to_ascii_uppercase(), h).any(|i| {
        (i + 1)
            .checked_sub(n.len())
            .is_some_and(|start| h[start..=i].eq_ignore_ascii_case(n))
    })
}

/// Whether a statement starting with `word` may change session state.
fn is_stateful(word: &[u8]) -> bool {
    let mut lower = [0u8; 10];
    let Some(l) = lower.get_mut(..word.len()) else {
        return false;
    };
    l.copy_from_slice(word);
    l.make_ascii_lowercase();
    matches!(
        &*l,
        b"create"
            | b"drop"
            | b"alter"
            | b"listen"
            | b"unlisten"
            | b"prepare"
            | b"deallocate"
            | b"declare"
            | b"close"
            | b"discard"
            | b"set"
            | b"reset"
    )
}

/// The word a statement starts with: identifier characters (any byte of a
/// non-ASCII character counts as one, so that no keyword is read in a
/// longer word); empty when it starts otherwise (PostgreSQL reads no
/// command there either).
fn first_word(stmt: &str) -> &[u8] {
    let b = stmt.as_bytes();
    let end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
        .unwrap_or(b.len());
    &b[..end]
}

/// Whether `stmt` starts with a word of the stateful commands: most
/// statements (SELECT, INSERT, UPDATE, DELETE, BEGIN…) are told apart by
/// their first three letters.
fn starts_stateful(stmt: &str) -> bool {
    let Some(head) = stmt.as_bytes().get(..3) else {
        return false;
    };
    let mut head = [head[0], head[1], head[2]];
    head.make_ascii_lowercase();
    matches!(
        &head,
        b"cre"
            | b"clo"
            | b"dro"
            | b"dea"
            | b"dec"
            | b"dis"
            | b"alt"
            | b"lis"
            | b"unl"
            | b"pre"
            | b"set"
            | b"res"
    ) && is_stateful(first_word(stmt))
}

/// `advisory`: `stmt` may name an advisory lock function (false only when
/// it has no `y`).
fn analyze_one(stmt: &str, advisory: bool, e: &mut Effects) {
    // Most statements (SELECT, INSERT, BEGIN…) change nothing tracked:
    // look at the first word before allocating anything.
    if starts_stateful(stmt) {
        analyze_stateful(stmt, e);
    }
    if advisory && contains_ci(stmt, "advisory") {
        let lower = stmt.to_ascii_lowercase();
        if lower.contains("pg_advisory_lock") || lower.contains("pg_try_advisory_lock") {
            e.pins.push(PinReason::AdvisoryLock);
        }
        if lower.contains("pg_advisory_unlock_all") {
            e.unpins.push(PinReason::AdvisoryLock);
        }
    }
}

fn analyze_stateful(stmt: &str, e: &mut Effects) {
    let w = words(stmt);
    let lower = stmt.to_ascii_lowercase();
    let w0 = w.first().map(String::as_str).unwrap_or("");
    let w1 = w.get(1).map(String::as_str).unwrap_or("");
    match w0 {
        "create" => {
            let temp = w[1..]
                .iter()
                .take_while(|x| !matches!(x.as_str(), "table" | "sequence" | "view"))
                .any(|x| x == "temp" || x == "temporary");
            if temp {
                e.pins.push(PinReason::TempTable);
            }
            if w1 == "database"
                && let Some(at) = lower.find("template")
            {
                let rest = stmt[at + 8..].trim_start();
                e.frees_database = identifier(rest.strip_prefix('=').unwrap_or(rest));
            }
        }
        "drop" | "alter" if w1 == "database" => {
            let rest = &stmt[stmt.to_ascii_lowercase().find("database").unwrap_or(0) + 8..];
            let rest = rest.trim_start();
            let rest = match rest.get(..9) {
                Some(k) if k.eq_ignore_ascii_case("if exists") => &rest[9..],
                _ => rest,
            };
            let renames = w0 == "alter" && w.iter().any(|x| x == "rename");
            if w0 == "drop" || renames {
                e.frees_database = identifier(rest);
            }
        }
        "listen" => e.pins.push(PinReason::Listen),
        "unlisten" if w1 == "*" || stmt.trim_end().ends_with('*') => {
            e.unpins.push(PinReason::Listen)
        }
        "prepare" if w1 != "transaction" => e.pins.push(PinReason::SqlPrepare),
        "deallocate" if w.iter().any(|x| x == "all") => e.unpins.push(PinReason::SqlPrepare),
        "declare" if lower.contains("with hold") => e.pins.push(PinReason::CursorWithHold),
        "close" if w1 == "all" => e.unpins.push(PinReason::CursorWithHold),
        "discard" => match w1 {
            "all" => {
                e.unpins.extend([
                    PinReason::TempTable,
                    PinReason::AdvisoryLock,
                    PinReason::Listen,
                    PinReason::CursorWithHold,
                    PinReason::SqlPrepare,
                ]);
                e.settings.push(SettingChange::ResetAll);
            }
            "temp" | "temporary" => e.unpins.push(PinReason::TempTable),
            _ => {}
        },
        "set" => {
            if let Some(change) = parse_set(stmt) {
                e.settings.push(change);
            }
        }
        "reset" => match w1 {
            "all" => e.settings.push(SettingChange::ResetAll),
            "" => {}
            name => e.settings.push(SettingChange::Reset(name.to_string())),
        },
        _ => {}
    }
}

/// Parses `SET [SESSION] name {TO|=} value` and `SET TIME ZONE value`.
/// `SET LOCAL` and `SET TRANSACTION …` end with the transaction: not tracked.
fn parse_set(stmt: &str) -> Option<SettingChange> {
    let rest = stmt[3..].trim_start();
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("local ")
        || lower.starts_with("transaction")
        || lower.starts_with("constraints")
        || lower.starts_with("role")
        || lower.starts_with("session authorization")
    {
        return None;
    }
    if let Some(modes) = lower.strip_prefix("session characteristics as transaction") {
        return characteristics(modes);
    }
    let rest = if lower.starts_with("session ") {
        rest[8..].trim_start()
    } else {
        rest
    };
    let lower = rest.to_ascii_lowercase();
    if let Some(v) = lower.strip_prefix("time zone") {
        let value = rest[rest.len() - v.len()..].trim();
        return Some(SettingChange::Set("timezone".into(), value.to_string()));
    }
    let name_end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
    let name = rest[..name_end].trim_matches('"').to_ascii_lowercase();
    let after = rest[name_end..].trim_start();
    let value = if let Some(v) = after.strip_prefix('=') {
        v
    } else if after.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to")) {
        &after[2..]
    } else {
        return None;
    };
    let value = value.trim();
    if value.eq_ignore_ascii_case("default") {
        return Some(SettingChange::Reset(name));
    }
    Some(SettingChange::Set(name, value.to_string()))
}

/// For `EXECUTE name [(args)]` (one statement): the statement name as the
/// server reads it (unquoted names folded to lower case) and the byte range
/// of the name in `sql`, so that it can be replaced.
pub fn executes(sql: &str) -> Option<(String, std::ops::Range<usize>)> {
    let lead = sql.len() - sql.trim_start().len();
    let body = &sql[lead..];
    if !body.get(..7)?.eq_ignore_ascii_case("execute") {
        return None;
    }
    let after = &body[7..];
    let ws = after.len() - after.trim_start().len();
    if ws == 0 {
        return None;
    }
    let name_at = lead + 7 + ws;
    let rest = &sql[name_at..];
    let name = identifier(rest)?;
    let len = if rest.starts_with('"') {
        // The closing quote: doubled quotes are part of the name.
        let mut i = 1;
        let b = rest.as_bytes();
        loop {
            match b.get(i) {
                Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                Some(b'"') => break i + 1,
                Some(_) => i += 1,
                None => return None,
            }
        }
    } else {
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .map(char::len_utf8)
            .sum()
    };
    Some((name, name_at..name_at + len))
}

/// For `DEALLOCATE [PREPARE] name` (one statement, not `ALL`): the
/// statement name as the server reads it.
pub fn deallocates(sql: &str) -> Option<String> {
    // Every query string passes here: most are told apart by their first
    // word.
    if !sql
        .trim_ascii_start()
        .as_bytes()
        .get(..10)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"deallocate"))
    {
        return None;
    }
    let mut words = sql.trim().trim_end_matches(';').split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() || name.eq_ignore_ascii_case("all") || name.contains(';') {
        return None;
    }
    let id = identifier(name)?;
    // The whole word is the name (no quoted name with spaces here).
    let plain = name.starts_with('"')
        || name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    plain.then_some(id)
}

/// The SQL identifier at the start of `s`: as written when quoted,
/// lower-cased when not.
fn identifier(s: &str) -> Option<String> {
    let s = s.trim_start();
    if let Some(quoted) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    return Some(out);
                }
            }
            out.push(c);
        }
        return None;
    }
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// The transaction modes of `SET SESSION CHARACTERISTICS AS TRANSACTION`
/// as the settings they change.
fn characteristics(modes: &str) -> Option<SettingChange> {
    let mut out = Vec::new();
    for mode in modes.split(',') {
        let w: Vec<&str> = mode.split_whitespace().collect();
        let change = match w.as_slice() {
            ["isolation", "level", level @ ..] if !level.is_empty() => (
                "default_transaction_isolation",
                format!("'{}'", level.join(" ")),
            ),
            ["read", "only"] => ("default_transaction_read_only", "on".to_string()),
            ["read", "write"] => ("default_transaction_read_only", "off".to_string()),
            ["deferrable"] => ("default_transaction_deferrable", "on".to_string()),
            ["not", "deferrable"] => ("default_transaction_deferrable", "off".to_string()),
            _ => return None,
        };
        out.push(SettingChange::Set(change.0.to_string(), change.1));
    }
    match out.len() {
        0 => None,
        1 => out.pop(),
        _ => Some(SettingChange::Several(out)),
    }
}

/// Applies a confirmed change to a map of settings (name → SQL value text).
/// `startup` holds the values the client asked for at login, which a reset
/// returns to, as it does on a direct connection.
pub fn apply_change(
    settings: &mut BTreeMap<String, String>,
    startup: &BTreeMap<String, String>,
    change: &SettingChange,
) {
    match change {
        SettingChange::Set(k, v) => {
            settings.insert(k.clone(), v.clone());
        }
        SettingChange::Reset(k) => match startup.get(k) {
            Some(v) => {
                settings.insert(k.clone(), v.clone());
            }
            None => {
                settings.remove(k);
            }
        },
        SettingChange::ResetAll => *settings = startup.clone(),
        SettingChange::Several(changes) => {
            for c in changes {
                apply_change(settings, startup, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_stateful_by_its_first_word_only() {
        for (stmt, stateful) in [
            ("SET x = 1", true),
            ("set\tsearch_path to a", true),
            ("Deallocate all", true),
            ("DISCARD ALL", true),
            ("listen ch", true),
            ("create temp table t (a int)", true),
            ("reset all", true),
            ("settle()", false),
            ("select 1", false),
            ("SELECT set FROM t", false),
            ("deallocated", false),
            ("set_config('a', 'b', false)", false),
            ("SETé = 1", false),
            ("(set)", false),
            ("", false),
        ] {
            assert_eq!(is_stateful(first_word(stmt)), stateful, "{stmt:?}");
            assert_eq!(starts_stateful(stmt), stateful, "{stmt:?}");
        }
        // The quick look at the first three bytes passes every stateful
        // command, in any case.
        for word in [
            "create",
            "drop",
            "alter",
            "listen",
            "unlisten",
            "prepare",
            "deallocate",
            "declare",
            "close",
            "discard",
            "set",
            "reset",
        ] {
            for w in [word.to_string(), word.to_ascii_uppercase()] {
                assert!(starts_stateful(&format!("{w} x")), "{w}");
                assert!(!starts_stateful(&format!("{w}x y")), "{w}x");
            }
        }
        // The needle anywhere, at the very start or end, in any case; a
        // last letter alone is not a match.
        assert!(contains_ci("advisory", "advisory"));
        assert!(contains_ci("x ADVISORY", "advisory"));
        assert!(!contains_ci("y", "advisory"));
        assert!(!contains_ci("ORDER BY key", "advisory"));
    }

    #[test]
    fn words_are_found_in_any_case_anywhere() {
        assert!(contains_ci("SELECT pg_ADVISORY_lock(1)", "advisory"));
        assert!(contains_ci("select 1 -- Advisory", "advisory"));
        assert!(contains_ci("advisory", "advisory"));
        assert!(!contains_ci(
            "SELECT aid, abalance FROM accounts",
            "advisory"
        ));
        assert!(!contains_ci("advisor", "advisory"));
        assert!(!contains_ci("", "advisory"));
        // One statement or several: the same effects.
        assert_eq!(
            analyze("SELECT pg_advisory_lock(1)").pins,
            analyze("SELECT 1; SELECT pg_advisory_lock(1);").pins
        );
        assert_eq!(
            analyze("SELECT pg_advisory_lock(1)").pins,
            vec![PinReason::AdvisoryLock]
        );
        assert_eq!(
            analyze("SELECT pg_advisory_lock(1);\n").pins,
            vec![PinReason::AdvisoryLock]
        );
        assert_eq!(
            analyze("SET a = 1;").settings,
            analyze("SET a = 1").settings
        );
        assert_eq!(analyze("SET a = 1; SET b = 2").settings.len(), 2);
    }

    /// What `analyze` finds with its one search for `;` and `y` is what
    /// reading every statement in full finds: each piece below is joined
    /// to each other, in both orders, with and without a final `;`, so the
    /// `y` of a lock function falls before, after and without a `;`.
    #[test]
    fn one_search_finds_what_reading_every_statement_finds() {
        fn in_full(sql: &str) -> Effects {
            let mut e = Effects::default();
            for stmt in split_statements(sql) {
                analyze_one(strip(stmt), true, &mut e);
            }
            e
        }
        let pieces = [
            "SELECT 1",
            "SELECT pg_advisory_lock(1)",
            "select PG_ADVISORY_LOCK(2)",
            "SELECT pg_try_advisory_lock(3)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT key FROM y",
            "SET x = 'y'",
            "LISTEN y",
            "  /* y */ SELECT pg_advisory_lock(4) ",
            "",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for end in ["", ";", "; "] {
                    for sql in [format!("{a}{end}"), format!("{a};{b}{end}")] {
                        assert_eq!(analyze(&sql), in_full(&sql), "{sql:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, pieces.len() * pieces.len() * 6);
        // The search's fast answer is taken: no `;` and no `y`.
        assert!(analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1").is_empty());
        assert_eq!(
            analyze("SELECT pg_advisory_lock(1)").pins,
            vec![PinReason::AdvisoryLock]
        );
    }

    #[test]
    fn pins_are_a_set_of_reasons() {
        let all = [
            PinReason::TempTable,
            PinReason::AdvisoryLock,
            PinReason::Listen,
            PinReason::CursorWithHold,
            PinReason::SqlPrepare,
        ];
        let mut pins = Pins::default();
        assert!(pins.is_empty());
        for p in all {
            assert!(pins.insert(p), "{p:?} is new");
            assert!(!pins.insert(p), "{p:?} is there already");
        }
        // Each reason is its own: removing all but one leaves it pinned.
        for p in &all[1..] {
            pins.remove(*p);
            assert!(!pins.is_empty());
        }
        pins.remove(all[0]);
        assert!(pins.is_empty());
        pins.remove(PinReason::Listen);
        assert!(pins.is_empty());
    }

    #[test]
    fn a_set_with_a_multibyte_character_after_the_name_is_no_panic() {
        // Found by the client_messages fuzz target (text read lossily).
        let e = analyze("SET SESSION CHARACTERISTICS A\u{FFFD} TRANSACTION ISOLATION LEVEL");
        assert!(e.settings.is_empty());
        assert!(analyze("SET x \u{e9}t\u{e9}").settings.is_empty());
        assert!(analyze("`\u{FFFD}SET LOCAL x = 1").settings.is_empty());
        assert_eq!(
            analyze("SET x TO \u{e9}t\u{e9}").settings,
            vec![SettingChange::Set("x".into(), "\u{e9}t\u{e9}".into())]
        );
    }

    #[test]
    fn deallocate_of_one_named_statement_is_recognised() {
        assert_eq!(deallocates("DEALLOCATE s1").as_deref(), Some("s1"));
        assert_eq!(
            deallocates(" deallocate prepare S1 ; ").as_deref(),
            Some("s1")
        );
        assert_eq!(deallocates("DEALLOCATE \"S1\"").as_deref(), Some("S1"));
        assert_eq!(deallocates("DEALLOCATE ALL"), None);
        assert_eq!(deallocates("DEALLOCATE PREPARE ALL"), None);
        assert_eq!(deallocates("DEALLOCATE s1; SELECT 1"), None);
        assert_eq!(deallocates("DEALLOCATEs1"), None);
        assert_eq!(deallocates("SELECT 1"), None);
    }

    #[test]
    fn session_state_that_cannot_move_pins() {
        assert_eq!(
            analyze("CREATE TEMP TABLE t(a int)").pins,
            [PinReason::TempTable]
        );
        assert_eq!(
            analyze("create local temporary table t(a int)").pins,
            [PinReason::TempTable]
        );
        assert!(analyze("CREATE TABLE temp_x(a int)").pins.is_empty());
        assert_eq!(
            analyze("select pg_advisory_lock(1)").pins,
            [PinReason::AdvisoryLock]
        );
        assert!(analyze("select pg_advisory_xact_lock(1)").pins.is_empty());
        assert_eq!(analyze("LISTEN chan").pins, [PinReason::Listen]);
        assert_eq!(
            analyze("DECLARE c CURSOR WITH HOLD FOR SELECT 1").pins,
            [PinReason::CursorWithHold]
        );
        assert!(analyze("DECLARE c CURSOR FOR SELECT 1").pins.is_empty());
        assert_eq!(
            analyze("PREPARE p AS SELECT 1").pins,
            [PinReason::SqlPrepare]
        );
        assert!(analyze("PREPARE TRANSACTION 'x'").pins.is_empty());
    }

    #[test]
    fn state_going_away_unpins() {
        assert!(analyze("DISCARD ALL").unpins.contains(&PinReason::Listen));
        assert_eq!(analyze("UNLISTEN *").unpins, [PinReason::Listen]);
        assert_eq!(analyze("DEALLOCATE ALL").unpins, [PinReason::SqlPrepare]);
        assert_eq!(
            analyze("select pg_advisory_unlock_all()").unpins,
            [PinReason::AdvisoryLock]
        );
    }

    #[test]
    fn set_and_reset_are_tracked_but_not_set_local() {
        assert_eq!(
            analyze("SET search_path TO app, public").settings,
            [SettingChange::Set(
                "search_path".into(),
                "app, public".into()
            )]
        );
        assert_eq!(
            analyze("set session statement_timeout = '5s';").settings,
            [SettingChange::Set(
                "statement_timeout".into(),
                "'5s'".into()
            )]
        );
        assert_eq!(
            analyze("SET TIME ZONE 'UTC'").settings,
            [SettingChange::Set("timezone".into(), "'UTC'".into())]
        );
        assert!(analyze("SET LOCAL work_mem = '1MB'").settings.is_empty());
        assert!(
            analyze("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .settings
                .is_empty()
        );
        assert_eq!(
            analyze("RESET work_mem").settings,
            [SettingChange::Reset("work_mem".into())]
        );
        assert_eq!(analyze("RESET ALL").settings, [SettingChange::ResetAll]);
        assert_eq!(
            analyze("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .settings,
            [SettingChange::Set(
                "default_transaction_isolation".into(),
                "'serializable'".into()
            )]
        );
        assert_eq!(
            analyze("set session characteristics as transaction isolation level read committed, read only")
                .settings,
            [SettingChange::Several(vec![
                SettingChange::Set(
                    "default_transaction_isolation".into(),
                    "'read committed'".into()
                ),
                SettingChange::Set("default_transaction_read_only".into(), "on".into()),
            ])]
        );
        assert_eq!(
            analyze("SET work_mem TO DEFAULT").settings,
            [SettingChange::Reset("work_mem".into())]
        );
    }

    #[test]
    fn statements_that_need_a_database_free_of_sessions() {
        let db = |sql: &str| analyze(sql).frees_database;
        assert_eq!(db("DROP DATABASE appdb").as_deref(), Some("appdb"));
        assert_eq!(
            db(r#"drop database if exists "My""DB" with (force)"#).as_deref(),
            Some("My\"DB")
        );
        assert_eq!(
            db("ALTER DATABASE Old RENAME TO new").as_deref(),
            Some("old")
        );
        assert_eq!(db("ALTER DATABASE old SET work_mem = '1MB'"), None);
        assert_eq!(
            db("CREATE DATABASE copy TEMPLATE = src").as_deref(),
            Some("src")
        );
        assert_eq!(
            db("CREATE DATABASE x WITH TEMPLATE tpl OWNER app").as_deref(),
            Some("tpl")
        );
        assert_eq!(db("CREATE DATABASE x"), None);
        assert_eq!(db("DROP TABLE database"), None);
    }

    #[test]
    fn execute_names_are_found_where_they_are_written() {
        let (name, r) = executes("EXECUTE foobar").unwrap();
        assert_eq!((name.as_str(), r), ("foobar", 8..14));
        let sql = "  execute  FooBar (1, 'x')";
        let (name, r) = executes(sql).unwrap();
        assert_eq!(name, "foobar");
        assert_eq!(&sql[r], "FooBar");
        let sql = r#"EXECUTE "Mixed""Case"(2)"#;
        let (name, r) = executes(sql).unwrap();
        assert_eq!(name, r#"Mixed"Case"#);
        assert_eq!(&sql[r], r#""Mixed""Case""#);
        assert!(executes("EXECUTED x").is_none());
        assert!(executes("SELECT 1").is_none());
        assert!(executes("EXECUTE").is_none());
    }

    #[test]
    fn statements_split_outside_quotes() {
        let parts = split_statements("SELECT ';'; SET a = 1; SELECT $x$;$x$; -- c;\n");
        assert_eq!(parts.len(), 3, "{parts:?}");
        let e = analyze("SELECT 1; LISTEN x; /* ; */ SET a TO 2");
        assert_eq!(e.pins, [PinReason::Listen]);
        assert_eq!(e.settings, [SettingChange::Set("a".into(), "2".into())]);
    }

    #[test]
    fn resets_return_to_startup_values() {
        let startup = BTreeMap::from([("application_name".to_string(), "'x'".to_string())]);
        let mut s = startup.clone();
        apply_change(
            &mut s,
            &startup,
            &SettingChange::Set("application_name".into(), "'y'".into()),
        );
        apply_change(
            &mut s,
            &startup,
            &SettingChange::Set("work_mem".into(), "'1MB'".into()),
        );
        apply_change(
            &mut s,
            &startup,
            &SettingChange::Reset("application_name".into()),
        );
        assert_eq!(s["application_name"], "'x'");
        apply_change(&mut s, &startup, &SettingChange::ResetAll);
        assert_eq!(s, startup);
    }
}
