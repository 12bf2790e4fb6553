//! Routing glue: the class of a unit of work from its messages, what the
//! catalog knows of its functions and relations, and the node the
//! router's rules choose. The rules themselves are pure (`crate::router`).

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, atomic::Ordering},
};

use super::{Message, Session, SessionEnd, lease_node};
use crate::{
    protocol::{FrameRef, frame, messages, sqlstate},
    router,
};

/// What routing reads of the cluster, cached for one session (see
/// [`crate::cluster::View`]): the snapshot, the nodes' counters and the
/// standbys' lags, each read with one pointer comparison while it is
/// unchanged.
pub(super) struct Views {
    cluster: crate::cluster::View,
    lags: arc_swap::Cache<Arc<router::lag::Lags>, Arc<BTreeMap<usize, router::lag::Lag>>>,
}

impl Views {
    fn new(shared: &crate::app::Shared) -> Box<Views> {
        Box::new(Views {
            cluster: shared.cluster.view(),
            lags: arc_swap::Cache::new(shared.lags.clone()),
        })
    }
}

impl Session {
    /// Whether `f` starts a unit of work that must wait for the unit before
    /// it to finish: the session works on a standby, and the next unit,
    /// pipelined behind, may need another node (a write, a transaction
    /// begun). Routed once the replies are in, it goes where it belongs;
    /// a unit the previous one leaves in a transaction stays with it.
    pub(super) fn waits_for_boundary(&self, tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
            && (self.tracker.awaited() > 0 || !self.to_backend.is_empty())
            && self.tracker.unit_in_flight()
            && !self.deferring
            && self.pins.is_empty()
            && self.on_standby()
    }

    /// Whether the session's connection is to a node other than the
    /// primary.
    pub(super) fn on_standby(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| Some(lease_node(l)) != self.shared.cluster.primary_id())
    }

    /// Whether the session's connection is to a standby, or to a managed
    /// cluster's writer, which may answer read-only once AWS has moved the
    /// writer elsewhere: the unit it runs is guarded (see `refusal`).
    pub(super) fn needs_guard(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| self.shared.cluster.guarded(lease_node(l)))
    }

    /// Runs on the primary a unit a standby refused during recovery
    /// (25006): its messages go through the session again, routed to the
    /// primary; the client sees only the primary's replies.
    pub(super) async fn rerun_on_primary(
        &mut self,
        unit: bytes::BytesMut,
    ) -> Result<(), SessionEnd> {
        self.shared
            .metrics
            .standby_refusals
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(parent: &self.span(), "a standby refused the unit during recovery; running it on the primary");
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
                "tidepool: a standby refused this during recovery (25006); the primary runs it",
            );
        }
        let unit: Vec<FrameRef<'_>> = frame::each(&unit).collect();
        // The statements the unit's Parse messages named are named again.
        for &f in unit.iter().filter(|f| f.tag == b'P') {
            if let Ok(name) = messages::parse_name(f)
                && !name.is_empty()
            {
                self.statements.remove(name);
            }
        }
        if std::mem::take(&mut self.check_writer) {
            self.shared.cluster.check_writer().await;
        }
        self.force_primary = true;
        self.rerunning = true;
        let mut r = Ok(());
        for (i, &f) in unit.iter().enumerate() {
            r = self.on_client_frame(f, &unit[i + 1..]).await;
            if r.is_err() {
                break;
            }
        }
        self.force_primary = false;
        self.rerunning = false;
        r
    }

    /// Whether the next message starts a new unit of work (a transaction,
    /// or a statement outside one), which may be routed anew.
    pub(super) fn at_boundary(&self) -> bool {
        self.tracker.at_boundary() && self.pins.is_empty() && self.to_backend.is_empty()
    }

    /// The class of the statement `msg` carries, when the routing rules
    /// read statements (load balancing is on). The client's unnamed Parse
    /// sent again is not read again: its class is kept with it
    /// (`set_unnamed`).
    pub(super) fn message_class(&mut self, msg: &Message) -> Option<Arc<router::Class>> {
        let sql = msg.sql()?;
        if !self.config.load().rules.cfg.enabled {
            return None;
        }
        if let Message::Parse { again: true, .. } = msg
            && let Some(class) = self.kept_unnamed_class()
        {
            return Some(class);
        }
        Some(self.shared.classifier.classify(sql))
    }

    /// The class of the client's kept unnamed statement: kept with it, or
    /// read from its Parse (`None` when that is malformed).
    pub(super) fn unnamed_statement_class(&self) -> Option<Arc<router::Class>> {
        let kept = self.unnamed.as_deref()?;
        if let Some(c) = &kept.class {
            return Some(c.clone());
        }
        let (_, q) = messages::read_parse(&kept.parse).ok()?;
        Some(self.shared.classifier.classify(&q))
    }

    /// Records writes for the read-your-writes rules, from the class of
    /// the message's statement (`message_class`).
    pub(super) fn note_writes(&mut self, class: Option<&router::Class>) {
        let Some(class) = class else { return };
        if class.write.is_some() {
            self.routing.wrote = true;
            self.write_open = true;
            if self.tracker.tx_status() == b'T' || class.begins {
                self.routing.wrote_in_transaction = true;
            }
            self.routing
                .written_tables
                .extend(class.written.iter().cloned());
        }
    }

    /// The class of the unit that starts with `f`: every statement up to
    /// the next Sync (extended protocol) or the query string (simple).
    /// `first` is the class of `f`'s own statement, when known.
    pub(super) fn unit_class(
        &self,
        f: FrameRef<'_>,
        msg: &Message,
        first: Option<&Arc<router::Class>>,
        rest: &[FrameRef<'_>],
    ) -> (UnitClass, bool) {
        let mut merged = UnitClass::default();
        match msg {
            Message::Query(sql) => {
                match first {
                    Some(c) => merged.add(c),
                    None => merged.add(&self.shared.classifier.classify(sql)),
                }
                return (merged, false);
            }
            Message::FunctionCall => {
                merged.set_write("function call message");
                return (merged, false);
            }
            _ => {}
        }
        // A Bind of a statement parsed in this unit is covered by that
        // Parse's class.
        let parses = f.tag == b'P' || rest.iter().any(|p| p.tag == b'P');
        match (f.tag, first) {
            (b'P', Some(c)) => merged.add(c),
            (b'P', None) => self.add_parse(&mut merged, f),
            (b'B', _) => match msg {
                Message::Bind { statement } => self.add_bound(&mut merged, statement, parses),
                _ => self.add_bind(&mut merged, f, parses),
            },
            (b'S', _) => return (merged, false),
            _ => {}
        }
        for &m in rest {
            match m.tag {
                b'P' => self.add_parse(&mut merged, m),
                b'B' => self.add_bind(&mut merged, m, parses),
                b'S' => return (merged, false),
                b'Q' | b'F' => break,
                _ => {}
            }
        }
        (merged, true)
    }

    /// Adds to `merged` the class of the statement Parse `m` prepares.
    fn add_parse(&self, merged: &mut UnitClass, m: FrameRef<'_>) {
        match messages::read_parse(m) {
            Ok((_, q)) => merged.add(&self.shared.classifier.classify(&q)),
            Err(_) => merged.set_write("malformed Parse"),
        }
    }

    /// Adds to `merged` the class of the statement Bind `m` binds.
    fn add_bind(&self, merged: &mut UnitClass, m: FrameRef<'_>, parses: bool) {
        if parses && m.body().starts_with(&[0, 0]) {
            // The unnamed portal of the unnamed statement, which the
            // unit's Parse prepares (the most frequent Bind).
            return;
        }
        match messages::read_bind(m) {
            Ok((_, name, _)) => self.add_bound(merged, name, parses),
            Err(_) => merged.set_write("malformed Bind"),
        }
    }

    /// Adds to `merged` the class of statement `name`, which a Bind of the
    /// unit binds; `parses`: the unit has a Parse, whose class covers a
    /// statement it prepares.
    fn add_bound(&self, merged: &mut UnitClass, name: &str, parses: bool) {
        if name.is_empty() {
            // The unnamed statement is never among the named ones.
            if parses {
                return;
            }
            match self.unnamed.is_some() {
                true => match self.unnamed_statement_class() {
                    Some(c) => merged.add(&c),
                    None => merged.set_write("malformed Parse"),
                },
                false => merged.set_write("statement prepared outside tidepool's view"),
            }
            return;
        }
        match self.statements.get(name) {
            Some(stmt) => merged.add(&stmt.class),
            None if parses => {}
            None => merged.set_write("statement prepared outside tidepool's view"),
        }
    }

    /// Routes the unit of work that starts with `f` and attaches the
    /// session to the chosen node.
    pub(super) async fn route_unit(
        &mut self,
        f: FrameRef<'_>,
        msg: &Message<'_>,
        class: Option<&Arc<router::Class>>,
        rest: &[FrameRef<'_>],
    ) -> Result<(), (&'static str, String)> {
        if self.lease.is_none() {
            // The client's work is in hand from here: a cancel request
            // while it is routed and waits for a connection is kept for it.
            self.cancel.begin_wait();
        }
        if std::mem::take(&mut self.force_primary) {
            let primary = self.primary().await?;
            return self.acquire_on(primary).await;
        }
        // One configuration for the whole unit (a reload swaps it whole).
        let rt = self.config.load().clone();
        if !rt.rules.cfg.enabled {
            // Everything goes to the primary: no need to read the SQL.
            // As `acquire`, without its future when an idle connection
            // is taken at once.
            if self.lease.is_some() || self.attach_primary_idle() {
                return Ok(());
            }
            let primary = self.primary().await?;
            return self.acquire_on(primary).await;
        }
        let rules = &rt.rules;
        let (class, incomplete) = self.unit_class(f, msg, class, rest);
        let sql = match msg {
            Message::Query(q) => q.as_ref(),
            _ => "",
        };
        let mut facts = router::Facts {
            incomplete,
            pinned: !self.pins.is_empty(),
            ..router::Facts::default()
        };
        let mut reason = router::primary_reason(rules, &class, &facts, &self.routing);
        if reason.is_none() && !sql.is_empty() && rules.forced_primary(sql) {
            reason = Some("matches a primary_routing_pattern");
        }
        if reason.is_none() {
            if self.routing.catalog_tag == 0 {
                self.routing.catalog_tag = self.shared.catalog.tag(&self.database);
            }
            let memo = class.one().map(|c| &c.catalog);
            // A statement found clear before, with the catalog and rules
            // unchanged since, asks nothing (and awaits nothing).
            let key = self.shared.catalog.memo_key(self.routing.catalog_tag);
            if !memo.is_some_and(|m| m.holds(key)) {
                // Boxed: asked once per statement and catalog change, and
                // large (a lookup may connect to the primary).
                Box::pin(self.catalog_facts(rules, &class, memo, key, &mut facts)).await;
                reason = router::primary_reason(rules, &class, &facts, &self.routing);
            }
        }
        let views = self.views.get_or_insert_with(|| Views::new(&self.shared));
        let snapshot = views.cluster.snapshot().clone();
        if reason.is_some() {
            // On the primary for a reason that may mean a write.
            self.write_open = true;
        }
        let mut decision = match reason {
            Some(r) => router::Decision {
                node: self.primary().await?,
                reason: r,
            },
            None => {
                let app = match rules.redirects_by_application() {
                    true => self
                        .settings
                        .get("application_name")
                        .map_or("", |v| v.trim_matches('\'')),
                    false => "",
                };
                let client = router::Client {
                    user: &self.user,
                    database: &self.database,
                    application_name: app,
                };
                let views = self.views.as_mut().expect("made above");
                let chosen = router::choose_read(
                    rules,
                    &snapshot,
                    views.lags.load(),
                    &client,
                    &mut self.routing,
                    &mut rand::rng(),
                );
                match chosen {
                    Some(d) => d,
                    None => router::Decision {
                        node: self.primary().await?,
                        reason: "no node can take reads",
                    },
                }
            }
        };
        tracing::debug!(parent: &self.span(),
            node = decision.node,
            reason = decision.reason,
            "unit routed"
        );
        // The node as the snapshot the decision was made on knows it.
        let mut snapshot = snapshot;
        if snapshot.node(decision.node).is_none() {
            decision.node = self.primary().await?;
            snapshot = self.shared.cluster.snapshot();
        }
        let Some(node) = snapshot.node(decision.node) else {
            return Err((
                sqlstate::CANNOT_CONNECT_NOW,
                "no primary node is available".to_string(),
            ));
        };
        if rules.cfg.notice_per_node_statement {
            messages::notice(
                &mut self.to_client,
                &format!(
                    "tidepool: node {} ({}, {}) runs this: {}",
                    node.id,
                    node.name,
                    node.role.as_str(),
                    decision.reason
                ),
            );
        }
        if class.select
            && let Some(views) = self.views.as_mut()
        {
            views
                .cluster
                .count(decision.node, |c| c.selects.fetch_add(1, Ordering::Relaxed));
        }
        if self.attach_idle(decision.node) {
            return Ok(());
        }
        self.acquire_on(decision.node).await
    }

    /// Fills in what the catalog knows about the unit's functions and
    /// relations, asking the primary about names seen for the first time.
    /// A statement found clear (no function that may write, no local
    /// relation) is remembered so in its cached class until the catalog
    /// or the rules change (`catalog::Memo`) under `key`, the catalog's
    /// memo key read before the lookups (a change meanwhile voids it); the
    /// caller has found the memo does not already hold.
    pub(super) async fn catalog_facts(
        &self,
        rules: &router::Rules,
        class: &router::Class,
        memo: Option<&router::catalog::Memo>,
        key: u64,
        facts: &mut router::Facts,
    ) {
        let catalog = &self.shared.catalog;
        let db = &self.database;
        let mut unknown_functions = Vec::new();
        for name in &class.functions {
            match rules.function_override(name) {
                Some(true) => facts.volatile_function = true,
                Some(false) => {}
                None => unknown_functions.push(name.clone()),
            }
        }
        if facts.volatile_function {
            return;
        }
        let f_known = catalog.known_functions(db, &unknown_functions);
        let r_known = catalog.known_relations(db, &class.tables);
        if let (Some(volatile), Some(local)) = (f_known, r_known) {
            facts.volatile_function = volatile;
            facts.local_relation = local;
            if !volatile
                && !local
                && let Some(m) = memo
            {
                m.set(key);
            }
            return;
        }
        {
            let cfg = self.shared.config.load();
            if let Some(p) = router::write_node(&self.shared.cluster.snapshot()) {
                let (host, port) = (p.host.clone(), p.port);
                let tls = self.shared.cluster.tls(p.id);
                // Boxed, as is learning: rare, and large futures (AWS
                // credentials, a connection of its own).
                let password = Box::pin(self.shared.cluster.check_password(
                    p.id,
                    &host,
                    port,
                    &cfg.health_check,
                ))
                .await
                .ok()
                .flatten();
                let fs = if f_known.is_none() {
                    unknown_functions.clone()
                } else {
                    vec![]
                };
                let rs = if r_known.is_none() {
                    class.tables.clone()
                } else {
                    vec![]
                };
                Box::pin(catalog.learn(
                    &host,
                    port,
                    (&tls, password.as_deref()),
                    db,
                    &cfg.health_check,
                    &fs,
                    &rs,
                ))
                .await;
            }
        }
        facts.volatile_function = catalog
            .known_functions(db, &unknown_functions)
            .unwrap_or(true);
        facts.local_relation = catalog.known_relations(db, &class.tables).unwrap_or(true);
    }
}

/// The class of a unit of work: its one statement's class, shared with
/// the classifier's cache, or several statements' merged. A unit of one
/// statement (most of them) copies nothing, and the value is small (the
/// merged class, rare, is boxed).
#[derive(Default)]
pub(super) struct UnitClass {
    one: Option<Arc<router::Class>>,
    merged: Option<Box<router::Class>>,
    added: usize,
}

impl UnitClass {
    fn add(&mut self, c: &Arc<router::Class>) {
        self.added += 1;
        if self.added == 1 && self.merged.is_none() {
            self.one = Some(c.clone());
            return;
        }
        let first = self.added == 1;
        merge_into(self.merged(), c, first);
    }

    /// The class of the unit's one statement, as the classifier keeps it.
    pub(super) fn one(&self) -> Option<&Arc<router::Class>> {
        self.one.as_ref().filter(|_| self.merged.is_none())
    }

    /// The unit goes to the primary for `reason`, whatever its statements.
    fn set_write(&mut self, reason: &'static str) {
        self.merged().write = Some(reason);
    }

    fn merged(&mut self) -> &mut router::Class {
        if self.merged.is_none() {
            let mut m = Box::default();
            if let Some(one) = self.one.take() {
                merge_into(&mut m, &one, true);
            }
            self.merged = Some(m);
        }
        self.merged.as_mut().expect("made above")
    }
}

/// Adds the class of one of a unit's statements to the unit's: the first
/// statement says how the unit begins.
fn merge_into(merged: &mut router::Class, c: &router::Class, first: bool) {
    if first {
        merged.begins = c.begins;
        merged.read_only_tx = c.read_only_tx;
        merged.leading_comment = c.leading_comment;
        merged.hint_primary = c.hint_primary;
        merged.select = c.select;
    } else {
        merged.select &= c.select;
    }
    merged.write = merged.write.or(c.write);
    merged.serializable |= c.serializable;
    merged.tables.extend(c.tables.iter().cloned());
    merged.functions.extend(c.functions.iter().cloned());
}

impl std::ops::Deref for UnitClass {
    type Target = router::Class;

    fn deref(&self) -> &router::Class {
        static NONE: LazyLock<router::Class> = LazyLock::new(router::Class::default);
        match (&self.merged, &self.one) {
            (Some(m), _) => m,
            (None, Some(one)) => one,
            (None, None) => &NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::classify_uncached;

    fn class(sql: &str) -> Arc<router::Class> {
        Arc::new(classify_uncached(sql))
    }

    #[test]
    fn a_unit_of_one_statement_is_its_class_and_several_are_merged() {
        // One statement: its cached class itself, nothing copied.
        let read = class("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        let mut one = UnitClass::default();
        one.add(&read);
        assert!(Arc::ptr_eq(one.one().unwrap(), &read));
        assert!(one.select && one.write.is_none());
        assert_eq!(one.tables, ["pgbench_accounts"]);

        // Several: the first says how the unit begins; a write anywhere
        // makes it a write; the relations of all are read.
        let mut unit = UnitClass::default();
        unit.add(&class("BEGIN READ ONLY"));
        unit.add(&read);
        unit.add(&class("SELECT * FROM pgbench_branches"));
        assert!(unit.one().is_none());
        assert!(unit.begins && unit.read_only_tx && !unit.select);
        assert_eq!(unit.tables, ["pgbench_accounts", "pgbench_branches"]);
        let mut writes = UnitClass::default();
        writes.add(&read);
        writes.add(&class("UPDATE pgbench_accounts SET abalance = 0"));
        assert!(writes.write.is_some() && !writes.select);

        // A reason set before any statement stays, and the statement
        // after it still says how the unit begins.
        let mut bound = UnitClass::default();
        bound.set_write("malformed Bind");
        bound.add(&read);
        assert_eq!(bound.write, Some("malformed Bind"));
        assert!(bound.select);
        assert!(bound.one().is_none(), "a merged class is no cached class");

        // Nothing added: the empty class.
        assert_eq!(*UnitClass::default(), router::Class::default());
    }
}
