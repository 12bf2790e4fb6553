//! What each client message does, once decoded: routed, rewritten,
//! answered by tidepool, queued for the server or the end of a session.
//! The async driver (`mod.rs`) reads frames and calls
//! [`Session::on_client_frame`] for each.

use std::sync::atomic::Ordering;

use super::*;

impl Session {
    pub(super) async fn on_client_frame(
        &mut self,
        f: FrameRef<'_>,
        rest: &[FrameRef<'_>],
    ) -> Result<(), SessionEnd> {
        tracing::trace!(parent: &self.span(), tag = %(f.tag as char), pending = ?self.tracker.pending(), "client message");
        if self.cache_skip > 0 {
            // The rest of a unit answered from the query cache.
            self.cache_skip -= 1;
            return Ok(());
        }
        let msg = match self.parse_again(f) {
            Some(msg) => msg,
            None => message::decode(f).map_err(SessionEnd::Protocol)?,
        };
        if self.shared.query_cache.is_some() && self.cache_turn(f, &msg, rest).await {
            return Ok(());
        }
        // One classification per message serves read-your-writes and
        // routing.
        let class = self.message_class(&msg);
        self.note_writes(class.as_deref());
        if self.deferring
            || (matches!(msg, Message::Parse { name, .. } if !name.is_empty())
                && self.defers_prepare(f, rest))
        {
            return self.defer_prepare(f);
        }
        // tidepool's own SHOW commands are answered here, not routed.
        let own_answer = match &msg {
            Message::Query(sql) if crate::admin::show::starts_with_show(sql) => {
                crate::admin::show::answer_in_session(sql, &self.shared, self.routing.read_node)
            }
            _ => None,
        };
        if matches!(f.tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
            && self.at_boundary()
            && own_answer.is_none()
        {
            self.guard = None;
            if let Err((code, text)) = self.route_unit(f, &msg, class.as_ref(), rest).await {
                self.cancel.clear();
                self.shared
                    .metrics
                    .client_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.error(Severity::Error, code, &text, None);
                if matches!(f.tag, b'Q' | b'F') {
                    messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
                } else {
                    self.tracker.fail_batch();
                }
                return Ok(());
            }
            if matches!(f.tag, b'Q' | b'P' | b'B') && !self.rerunning && self.needs_guard() {
                self.guard = Some(Box::new(StandbyGuard::new()));
            }
        }
        if let Some(g) = self.guard.as_mut() {
            g.client(f);
        }
        self.tracker.client(f.tag);
        match msg {
            Message::Terminate => return Err(SessionEnd::Terminated),
            Message::Query(sql) => {
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                if let Some(table) = own_answer {
                    table.encode(&mut self.to_client);
                    messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
                    return Ok(());
                }
                if let Some(name) = state::deallocates(&sql)
                    && !self.tracker.skipping()
                    && self.tracker.tx_status() != b'E'
                    && self.tracker.awaited() == 0
                    && self.statements.remove(&name).is_some()
                {
                    // A statement the client prepared with a Parse: the
                    // server knows it by tidepool's name, shared with other
                    // clients' same statement; the client's name is gone.
                    messages::command_complete(&mut self.to_client, "DEALLOCATE");
                    messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
                    // A connection the unit's routing took goes back.
                    self.after_backend_batch();
                    return Ok(());
                }
                if self.lease.is_none() && !self.ensure_backend(true).await {
                    return Ok(());
                }
                self.count_statement(&sql);
                let effects = state::analyze(&sql);
                self.note_pins(&effects);
                self.free_database(&effects).await;
                match self.sql_execute(&sql, false) {
                    Some(text) => messages::query(&mut self.to_backend, &text),
                    None => self.to_backend.extend_from_slice(f.bytes),
                }
                self.tracker.simple_sent(effects.settings);
            }
            Message::Parse { name, query, again } => {
                if self.lease.is_none() && !self.ensure_backend(false).await {
                    return Ok(());
                }
                self.shared.metrics.queries.fetch_add(1, Ordering::Relaxed);
                self.count_statement(&query);
                // The client's unnamed Parse sent again (a driver's, at
                // each execution) whose text changes nothing: not read
                // again.
                let again = again && self.unnamed_quiet();
                let mut quiet = again;
                let mut replaced = None;
                if !again {
                    let effects = state::analyze(&query);
                    self.note_pins(&effects);
                    self.free_database(&effects).await;
                    // A Parse of `EXECUTE name(…)` names tidepool's statement.
                    if let Some(text) = self.sql_execute(&query, true) {
                        let b = messages::replace_parse_query(f, &text)
                            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                        replaced = Some((messages::frame_of(&b), text));
                    }
                    quiet = effects.is_empty() && state::executes(&query).is_none();
                }
                // What a kept unnamed Parse needs to be decoded again: the
                // client's own text's length, when it is the frame's bytes
                // (valid UTF-8). A rewritten Parse is never sent again by
                // the client as it is.
                let text_len = match (&replaced, &query) {
                    (None, std::borrow::Cow::Borrowed(q)) => u32::try_from(q.len()).ok(),
                    _ => None,
                };
                let (f, query, class) = match &replaced {
                    Some((f, text)) => (FrameRef::from(f), text.as_str(), None),
                    None => (f, &*query, class),
                };
                let open = match name.is_empty() || self.tracker.skipping() {
                    true => None,
                    false => self.statements.get(name).cloned(),
                };
                if let Some(existing) = open {
                    // PostgreSQL refuses a second Parse of a name that is
                    // not closed, and skips the batch to Sync: the server
                    // does the same when it gets the statement twice.
                    self.ensure_prepared(&existing);
                    self.to_backend.extend_from_slice(&existing.parse);
                    self.push(Expect::Duplicate(Box::new(expect::Duplicate {
                        server_name: existing.server_name.clone(),
                        client_name: name.to_string(),
                    })));
                } else if !name.is_empty() && !self.tracker.skipping() {
                    let stmt = Arc::new(
                        Statement::from_parse(
                            f,
                            class.unwrap_or_else(|| self.shared.classifier.classify(query)),
                        )
                        .map_err(|e| SessionEnd::Protocol(e.to_string()))?,
                    );
                    self.statements.insert(name.to_string(), stmt.clone());
                    // The client's own Parse reaches the server even when
                    // the connection has the statement: the text may mean
                    // something else now (a table dropped and made again
                    // with other types), as it would on a direct
                    // connection. Parses tidepool injects reuse it.
                    let conn = self.lease.as_mut().expect("attached").conn();
                    if conn.prepared.remove(&stmt.server_name) {
                        conn.stale.insert(stmt.server_name.clone());
                    }
                    conn.prepared.insert(stmt.server_name.clone());
                    self.close_if_stale(&stmt.server_name);
                    self.to_backend.extend_from_slice(&stmt.parse);
                    self.push(Expect::Parse {
                        hidden: false,
                        server_name: Some(stmt.server_name.clone()),
                    });
                } else {
                    if name.is_empty() && !self.tracker.skipping() {
                        // Kept with its class (when routing read it): a
                        // later round trip may bind it, and the same Parse
                        // again is not read again.
                        let here = self.conn_identity();
                        self.set_unnamed(f, here, class.clone(), quiet, text_len);
                    }
                    self.to_backend.extend_from_slice(f.bytes);
                    self.push(Expect::Parse {
                        hidden: false,
                        server_name: None,
                    });
                }
            }
            Message::Sync if self.lease.is_none() && self.tracker.skipping() => {
                // Nothing reached a backend since the error: answer here.
                self.tracker.sync_answered();
                messages::ready_for_query(&mut self.to_client, self.tracker.tx_status());
            }
            msg => {
                // Flush and COPY messages go to the connection the session
                // has, if any; the others need one.
                let needs = !matches!(
                    msg,
                    Message::Flush | Message::CopyData | Message::CopyDone | Message::CopyFail
                );
                let simple = matches!(msg, Message::FunctionCall);
                if needs && self.lease.is_none() && !self.ensure_backend(simple).await {
                    return Ok(());
                }
                self.forward(f, msg)?;
            }
        }
        Ok(())
    }

    /// Handles `f` at once when nothing about it can wait: a message that
    /// carries no SQL (Bind, Describe, Execute, Close, Sync, Flush) inside
    /// a unit whose connection the session has, with no query cache to
    /// ask. Most of an extended-protocol unit's messages are; each then
    /// makes no future. `None`: [`Session::on_client_frame`] handles it.
    pub(super) fn on_client_frame_now(
        &mut self,
        f: FrameRef<'_>,
    ) -> Option<Result<(), SessionEnd>> {
        if !matches!(f.tag, b'B' | b'D' | b'E' | b'C' | b'S' | b'H')
            || self.lease.is_none()
            || self.cache_skip > 0
            || self.deferring
            || self.shared.query_cache.is_some()
            || self.at_boundary()
        {
            return None;
        }
        tracing::trace!(parent: &self.span(), tag = %(f.tag as char), pending = ?self.tracker.pending(), "client message");
        let msg = match message::decode(f) {
            Ok(msg) => msg,
            Err(e) => return Some(Err(SessionEnd::Protocol(e))),
        };
        // What `on_client_frame` does for such a message: it has no class
        // and starts no unit.
        if let Some(g) = self.guard.as_mut() {
            g.client(f);
        }
        self.tracker.client(f.tag);
        Some(self.forward(f, msg))
    }

    /// What a message other than a Query, Parse or Terminate does once the
    /// session has the connection it needs (Flush and COPY messages need
    /// none: without one they are dropped).
    fn forward(&mut self, f: FrameRef<'_>, msg: Message<'_>) -> Result<(), SessionEnd> {
        match msg {
            Message::Bind {
                statement: stmt_name,
            } => match self.mapped(stmt_name) {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    messages::put_renamed_bind(&mut self.to_backend, f, &stmt.server_name)
                        .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                    self.push(Expect::Bind {
                        statement: Some(stmt.server_name.clone()),
                    });
                }
                None => {
                    if stmt_name.is_empty() {
                        self.ensure_unnamed();
                    }
                    self.to_backend.extend_from_slice(f.bytes);
                    self.push(Expect::Bind { statement: None });
                }
            },
            Message::Describe { kind, name } | Message::Close { kind, name } => {
                let stmt = if kind == b'S' {
                    self.mapped(name)
                } else {
                    None
                };
                match (f.tag, stmt) {
                    (b'D', Some(stmt)) => {
                        self.ensure_prepared(&stmt);
                        self.to_backend.extend_from_slice(&messages::target_message(
                            b'D',
                            b'S',
                            &stmt.server_name,
                        ));
                        self.push(Expect::Describe {
                            statement: Some(stmt.server_name.clone()),
                        });
                    }
                    (b'C', Some(_)) => {
                        // The server-side statement stays for other clients;
                        // only this client's name goes.
                        if !self.tracker.skipping() {
                            self.statements.remove(name);
                        }
                        self.push(Expect::Synthetic(b'3'));
                    }
                    (tag, None) => {
                        if tag == b'D' && kind == b'S' && name.is_empty() {
                            self.ensure_unnamed();
                        }
                        self.to_backend.extend_from_slice(f.bytes);
                        self.push(if tag == b'D' {
                            Expect::Describe { statement: None }
                        } else {
                            Expect::Close { stale: None }
                        });
                    }
                    _ => unreachable!("tag is D or C"),
                }
            }
            Message::Execute => {
                self.to_backend.extend_from_slice(f.bytes);
                self.push(Expect::Execute);
            }
            Message::Sync => {
                self.to_backend.extend_from_slice(f.bytes);
                self.tracker.sync_sent();
            }
            Message::FunctionCall => {
                self.to_backend.extend_from_slice(f.bytes);
                self.tracker.simple_sent(vec![]);
            }
            Message::Flush | Message::CopyData | Message::CopyDone | Message::CopyFail => {
                if self.lease.is_some() {
                    self.to_backend.extend_from_slice(f.bytes);
                }
            }
            Message::Query(_) | Message::Parse { .. } | Message::Terminate => {
                unreachable!("handled by on_client_frame")
            }
        }
        Ok(())
    }
}
