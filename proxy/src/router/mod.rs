//! Choosing the node for a unit of work: pure functions of a node-table
//! snapshot, the statement's class and the session's routing state; no I/O.
//!
//! The unit is a transaction (or a statement outside one): it runs on one
//! node, so its reads see its writes and one snapshot. Writes, write-like
//! reads and read-write transactions go to the primary; plain reads and
//! READ ONLY transactions are spread over the nodes by weight, skipping
//! standbys that lag too far. See `docs/routing.md`.

pub mod catalog;
pub mod classify;
pub mod lag;
mod preference;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use rand::{Rng, RngExt};
use regex::Regex;

use crate::{
    cluster::{Node, Role, Snapshot, Status},
    config::{LoadBalancingConfig, OnWrite},
};
pub use classify::{Class, Classifier};
pub use lag::Lag;
pub use preference::{Preference, Target};

/// The node that takes writes.
pub fn write_node(snapshot: &Snapshot) -> Option<&Node> {
    snapshot.primary()
}

/// Routing memory of one session.
#[derive(Debug, Clone, Default)]
pub struct SessionRouting {
    /// The node chosen for this session's reads (session-level balancing).
    pub read_node: Option<usize>,
    /// The session wrote something (for `always`).
    pub wrote: bool,
    /// The session wrote inside an explicit transaction (`trans_transaction`).
    pub wrote_in_transaction: bool,
    /// Tables the session wrote (for `dml_adaptive`).
    pub written_tables: BTreeSet<String>,
    /// When the session's last write was known committed (for
    /// `session_lsn`): its reads need a standby that covers this instant.
    pub wrote_at: Option<Instant>,
    /// The session's transactions default to SERIALIZABLE, which standbys
    /// cannot run.
    pub serializable_default: bool,
    /// The session's database as the catalog's memos name it
    /// (`catalog::Catalog::tag`; 0: no memo).
    pub catalog_tag: u16,
}

impl SessionRouting {
    /// Whether `lag` shows a standby that has replayed the session's last
    /// write (always, when read-your-writes by position is off or the
    /// session has not written).
    pub fn fresh(&self, cfg: &LoadBalancingConfig, lag: Option<&Lag>) -> bool {
        fresh(cfg, self.wrote_at, lag)
    }
}

/// Whether a standby with `lag` has replayed a write committed at
/// `wrote_at` (always true unless `disable_on_write = "session_lsn"`).
fn fresh(cfg: &LoadBalancingConfig, wrote_at: Option<Instant>, lag: Option<&Lag>) -> bool {
    match (cfg.disable_on_write, wrote_at) {
        (OnWrite::SessionLsn, Some(w)) => lag
            .and_then(|l| l.covers_since)
            .is_some_and(|covered| covered > w),
        _ => true,
    }
}

/// Facts about the unit beyond its class, found by the caller.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// A function it calls may write (catalog or configured lists).
    pub volatile_function: bool,
    /// It touches a temporary or unlogged relation, or one whose kind is
    /// not known yet.
    pub local_relation: bool,
    /// The session holds state only the primary connection has.
    pub pinned: bool,
    /// The unit was not complete when it had to be routed.
    pub incomplete: bool,
}

/// Who is asking: the keys of the redirect preference lists.
#[derive(Debug, Clone, Default)]
pub struct Client<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
}

/// Compiled `[load_balancing]` settings.
#[derive(Debug, Clone)]
pub struct Rules {
    pub cfg: LoadBalancingConfig,
    primary_patterns: Vec<Regex>,
    pub write_functions: Vec<Regex>,
    pub read_only_functions: Vec<Regex>,
    related: BTreeMap<String, Vec<String>>,
    app: Vec<Preference>,
    database: Vec<Preference>,
    user: Vec<Preference>,
}

fn regexes(list: &[String]) -> Vec<Regex> {
    list.iter()
        .filter_map(|r| Regex::new(&format!("(?i){r}")).ok())
        .collect()
}

impl Rules {
    /// Whether any redirect preference names application names (the
    /// session's `application_name` is looked up only then).
    pub fn redirects_by_application(&self) -> bool {
        !self.app.is_empty()
    }

    pub fn new(cfg: &LoadBalancingConfig) -> Rules {
        let related = cfg
            .dml_adaptive_relations
            .iter()
            .filter_map(|s| s.split_once(':'))
            .map(|(t, rel)| {
                (
                    t.trim().to_string(),
                    rel.split(',').map(|r| r.trim().to_string()).collect(),
                )
            })
            .collect();
        Rules {
            primary_patterns: regexes(&cfg.primary_routing_patterns),
            write_functions: regexes(&cfg.write_functions),
            read_only_functions: regexes(&cfg.read_only_functions),
            related,
            app: preference::parse_list(&cfg.app_name_redirect_preference_list).unwrap_or_default(),
            database: preference::parse_list(&cfg.database_redirect_preference_list)
                .unwrap_or_default(),
            user: preference::parse_list(&cfg.user_redirect_preference_list).unwrap_or_default(),
            cfg: cfg.clone(),
        }
    }

    /// Whether `sql` matches a configured primary-routing pattern.
    pub fn forced_primary(&self, sql: &str) -> bool {
        self.primary_patterns.iter().any(|r| r.is_match(sql))
    }

    /// The override for function `name`: Some(true) writes, Some(false)
    /// reads, None: ask the catalog.
    pub fn function_override(&self, name: &str) -> Option<bool> {
        if self.write_functions.iter().any(|r| r.is_match(name)) {
            Some(true)
        } else if self.read_only_functions.iter().any(|r| r.is_match(name)) {
            Some(false)
        } else {
            None
        }
    }
}

/// Errors in `[load_balancing]`, with key paths.
pub fn validate(cfg: &LoadBalancingConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, list) in [
        ("primary_routing_patterns", &cfg.primary_routing_patterns),
        ("write_functions", &cfg.write_functions),
        ("read_only_functions", &cfg.read_only_functions),
    ] {
        for (i, r) in list.iter().enumerate() {
            if let Err(e) = Regex::new(r) {
                out.push((
                    format!("load_balancing.{key}[{i}]"),
                    format!("not a valid regex: {e}"),
                ));
            }
        }
    }
    for (key, text) in [
        (
            "app_name_redirect_preference_list",
            &cfg.app_name_redirect_preference_list,
        ),
        (
            "database_redirect_preference_list",
            &cfg.database_redirect_preference_list,
        ),
        (
            "user_redirect_preference_list",
            &cfg.user_redirect_preference_list,
        ),
    ] {
        if let Err(e) = preference::parse_list(text) {
            out.push((format!("load_balancing.{key}"), e));
        }
    }
    for (i, r) in cfg.dml_adaptive_relations.iter().enumerate() {
        if !r.contains(':') {
            out.push((
                format!("load_balancing.dml_adaptive_relations[{i}]"),
                "expected \"table:related1,related2\"".into(),
            ));
        }
    }
    if cfg.sr_check_period.is_zero() {
        out.push((
            "load_balancing.sr_check_period".into(),
            "must be greater than 0".into(),
        ));
    }
    out
}

/// Where a unit goes, and why (for NOTICEs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: usize,
    pub reason: &'static str,
}

/// Whether the unit must run on the primary, and why.
pub fn primary_reason(
    rules: &Rules,
    class: &Class,
    facts: &Facts,
    session: &SessionRouting,
) -> Option<&'static str> {
    let cfg = &rules.cfg;
    if !cfg.enabled {
        return Some("load balancing is off");
    }
    if let Some(r) = class.write {
        return Some(r);
    }
    if class.hint_primary {
        return Some("hint /* tidepool: primary */");
    }
    if class.leading_comment && !cfg.allow_sql_comments {
        return Some("statement starts with a comment (allow_sql_comments = false)");
    }
    if class.serializable {
        return Some("serializable transactions run on the primary");
    }
    if class.begins && !class.read_only_tx {
        return Some("read-write transaction");
    }
    if facts.incomplete {
        return Some("the unit was not complete when routed");
    }
    if facts.pinned {
        return Some("session state lives on the primary");
    }
    if session.serializable_default {
        return Some("the session's transactions are serializable");
    }
    if facts.volatile_function {
        return Some("calls a function that may write");
    }
    if facts.local_relation {
        return Some("temporary, unlogged or unknown relation");
    }
    match cfg.disable_on_write {
        OnWrite::Always if session.wrote => {
            return Some("session wrote (disable_on_write = always)");
        }
        OnWrite::TransTransaction if session.wrote_in_transaction && class.begins => {
            return Some("session wrote in a transaction (disable_on_write = trans_transaction)");
        }
        OnWrite::DmlAdaptive => {
            let touched = class.tables.iter().any(|t| {
                session.written_tables.contains(t)
                    || session
                        .written_tables
                        .iter()
                        .any(|w| rules.related.get(w).is_some_and(|r| r.contains(t)))
            });
            if touched {
                return Some("reads a table this session wrote (dml_adaptive)");
            }
        }
        _ => {}
    }
    None
}

/// Nodes to choose from: inline, as a cluster has few (a routed unit
/// allocates no list).
type Nodes<'a> = smallvec::SmallVec<[&'a Node; 8]>;

/// Nodes that may take reads now, with their weights.
fn readable<'a>(
    snapshot: &'a Snapshot,
    primary: Option<usize>,
    lags: &BTreeMap<usize, Lag>,
    cfg: &LoadBalancingConfig,
) -> Nodes<'a> {
    snapshot
        .nodes
        .iter()
        .filter(|n| can_read(n, primary, lags, cfg))
        .collect()
}

/// Whether node `n` may take reads now: up, weighted, and the primary or
/// a standby not too far behind.
fn can_read(
    n: &Node,
    primary: Option<usize>,
    lags: &BTreeMap<usize, Lag>,
    cfg: &LoadBalancingConfig,
) -> bool {
    n.status == Status::Up
        && n.weight > 0.0
        && (Some(n.id) == primary
            || (n.role == Role::Standby && lags.get(&n.id).is_none_or(|l| !l.too_far(cfg))))
}

/// Picks a node by weight.
fn weighted<'a>(nodes: &[&'a Node], rng: &mut impl Rng) -> Option<&'a Node> {
    let total: f64 = nodes.iter().map(|n| n.weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = rng.random::<f64>() * total;
    for n in nodes {
        if x < n.weight {
            return Some(n);
        }
        x -= n.weight;
    }
    nodes.last().copied()
}

/// Chooses the node for a unit that may be load-balanced.
pub fn choose_read(
    rules: &Rules,
    snapshot: &Snapshot,
    lags: &BTreeMap<usize, Lag>,
    client: &Client<'_>,
    session: &mut SessionRouting,
    rng: &mut impl Rng,
) -> Option<Decision> {
    let cfg = &rules.cfg;
    let primary = snapshot.primary().map(|p| p.id);
    // Redirect preferences: application name, then database, then user.
    let pref = preference::find(&rules.app, client.application_name)
        .or_else(|| preference::find(&rules.database, client.database))
        .or_else(|| preference::find(&rules.user, client.user));
    if let Some((target, ratio)) = pref
        && rng.random::<f64>() < ratio
    {
        let pick: Nodes = readable(snapshot, primary, lags, cfg)
            .into_iter()
            .filter(|n| match target {
                Target::Primary => Some(n.id) == primary,
                Target::Standby => Some(n.id) != primary,
                Target::Node(id) => n.id == id,
            })
            .collect();
        if let Some(n) = weighted(&pick, rng) {
            return Some(Decision {
                node: n.id,
                reason: "redirect preference list",
            });
        }
    }
    // A standby that has not replayed the session's last write serves this
    // unit from the primary, but stays the session's read node.
    let wrote_at = session.wrote_at;
    let fresh = |id: usize| Some(id) == primary || fresh(cfg, wrote_at, lags.get(&id));
    let behind = |id: usize| {
        primary
            .map(|p| Decision {
                node: p,
                reason: "read-your-writes: no standby has replayed the session's last write",
            })
            .filter(|_| !fresh(id))
    };
    if !cfg.statement_level
        && let Some(id) = session.read_node
        && snapshot
            .node(id)
            .is_some_and(|n| can_read(n, primary, lags, cfg))
    {
        return behind(id).or(Some(Decision {
            node: id,
            reason: "the session's load-balance node",
        }));
    }
    let candidates = readable(snapshot, primary, lags, cfg);
    if cfg.statement_level {
        let fresh_only: Nodes = candidates.iter().copied().filter(|n| fresh(n.id)).collect();
        if fresh_only.len() < candidates.len() {
            return match weighted(&fresh_only, rng) {
                Some(n) => Some(Decision {
                    node: n.id,
                    reason: "load balanced over standbys that have replayed the session's last write",
                }),
                None => primary.map(|p| Decision {
                    node: p,
                    reason: "read-your-writes: no standby has replayed the session's last write",
                }),
            };
        }
    }
    let chosen = match weighted(&candidates, rng) {
        Some(n) => Decision {
            node: n.id,
            reason: "load balanced by weight",
        },
        None if cfg.prefer_lower_delay_standby => {
            let best = snapshot
                .nodes
                .iter()
                .filter(|n| n.status == Status::Up && n.role == Role::Standby && n.weight > 0.0)
                .min_by_key(|n| lags.get(&n.id).map(|l| l.bytes).unwrap_or(u64::MAX))?;
            Decision {
                node: best.id,
                reason: "least-lagged standby (prefer_lower_delay_standby)",
            }
        }
        None => Decision {
            node: primary?,
            reason: "no standby within the delay threshold",
        },
    };
    if !cfg.statement_level {
        session.read_node = Some(chosen.node);
    }
    behind(chosen.node).or(Some(chosen))
}

#[cfg(test)]
mod tests;
