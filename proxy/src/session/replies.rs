//! What the server's replies do: the protocol tracker's verdict applied
//! to the client's stream, the server connection and the session's
//! settings.

use std::sync::Arc;

use super::{
    Session, TRACKED_REPORTED, lease_node,
    refusal::Verdict,
    state::{self, SettingChange},
    tracker::{Effect, Forward},
};
use crate::{
    backend::quote_literal,
    config::PoolMode,
    protocol::{FrameRef, messages},
};

impl Session {
    pub(super) fn on_backend_frame(&mut self, f: FrameRef<'_>) {
        tracing::trace!(parent: &self.span(), tag = %(f.tag as char), pending = ?self.tracker.pending(), "backend message");
        let forward = self.tracker.backend(f, &mut self.effects);
        if !self.effects.is_empty() {
            // Taken out only when there is something to apply (most
            // replies have no effect): `apply` needs the whole session.
            let mut effects = std::mem::take(&mut self.effects);
            for e in effects.drain(..) {
                self.apply(e);
            }
            self.effects = effects;
        }
        if let Some(g) = self.guard.as_mut() {
            let bytes: &[u8] = match &forward {
                Forward::Hide => &[],
                Forward::Replace(b) => b,
                Forward::As => f.bytes,
            };
            match g.backend(f, bytes) {
                Verdict::Hold => {
                    self.cache_reply_altered();
                    if f.tag == b'S' {
                        self.note_parameter(f);
                    }
                    return;
                }
                Verdict::Rerun => {
                    // A managed cluster's writer that answers read-only may
                    // be one no longer: the watcher checks it before the
                    // unit runs again.
                    self.check_writer = self
                        .lease
                        .as_ref()
                        .is_some_and(|l| self.shared.cluster.is_instance(lease_node(l)));
                    self.rerun = self.guard.take().map(|g| Box::new(g.into_unit()));
                    return;
                }
                Verdict::Release => {
                    if let Some(g) = self.guard.take() {
                        self.to_client.extend_from_slice(g.held());
                    }
                }
            }
        }
        match forward {
            Forward::Hide => {}
            Forward::Replace(b) => {
                self.cache_reply_altered();
                self.to_client.extend_from_slice(&b)
            }
            Forward::As if f.tag == b'A' => {
                self.cache_reply_altered();
                self.forward_notification(f)
            }
            Forward::As => {
                if f.tag == b'S' {
                    self.note_parameter(f);
                }
                self.cache_reply(f);
                if f.tag == b'C' {
                    self.cache_command_complete(f);
                }
                self.to_client.extend_from_slice(f.bytes);
            }
        }
        self.tracker.flush_synthetics(&mut self.to_client);
    }

    /// Applies what a backend message meant to the session and its server
    /// connection.
    pub(super) fn apply(&mut self, e: Effect) {
        match e {
            Effect::Ready(status) => {
                if status == b'I' {
                    self.cache_transaction_ended();
                }
                if self.write_open && status == b'I' {
                    // Committed (or rolled back): from now on the
                    // session's reads need a standby that has it.
                    self.write_open = false;
                    self.routing.wrote_at = Some(std::time::Instant::now());
                }
            }
            Effect::Confirm(change) => self.confirm_setting(&change),
            Effect::ServerShutdown(message) => {
                if let Some(l) = &self.lease {
                    let fault = crate::cluster::Fault::Shutdown(message);
                    self.shared.report_fault(lease_node(l), fault);
                }
            }
            Effect::PreparedGone(n) => {
                if let Some(l) = self.lease.as_mut() {
                    l.conn().prepared.remove(&n);
                }
            }
            Effect::PlanStale(n) => {
                if let Some(l) = self.lease.as_mut() {
                    let conn = l.conn();
                    if conn.prepared.remove(&n) {
                        conn.stale.insert(n);
                    }
                }
            }
            Effect::StillPrepared(n) => {
                if let Some(l) = self.lease.as_mut() {
                    l.conn().stale.insert(n);
                }
            }
            Effect::AllStatementsGone => {
                // A later Bind must prepare again.
                if let Some(l) = self.lease.as_mut() {
                    l.conn().forget_statements();
                }
            }
        }
    }

    /// NotificationResponse: it names the sending backend's process id;
    /// the client knows its own and other clients' by the keys tidepool
    /// gave them.
    pub(super) fn forward_notification(&mut self, f: FrameRef<'_>) {
        let body = f.body();
        if body.len() >= 4
            && let Some(l) = self.lease.as_mut()
        {
            let (own, addr) = (l.conn().pid, l.conn().addr);
            let sender = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let client = if sender == own {
                Some(self.client_pid)
            } else {
                self.shared.cancels.client_of(addr, sender)
            };
            if let Some(pid) = client {
                self.to_client.extend_from_slice(&f.bytes[..5]);
                self.to_client.extend_from_slice(&pid.to_be_bytes());
                self.to_client.extend_from_slice(&body[4..]);
                return;
            }
        }
        self.to_client.extend_from_slice(f.bytes);
    }

    /// ParameterStatus: the server's value is the client's setting too.
    pub(super) fn note_parameter(&mut self, f: FrameRef<'_>) {
        let Ok((k, v)) = messages::read_parameter_status(f) else {
            return;
        };
        let key = k.to_ascii_lowercase();
        if TRACKED_REPORTED.contains(&key.as_str()) {
            let value = quote_literal(&v);
            if self.settings.get(&key) != Some(&value) {
                Arc::make_mut(&mut self.settings).insert(key.clone(), value.clone());
            }
            if let Some(l) = self.lease.as_mut() {
                Arc::make_mut(&mut l.conn().settings).insert(key, value);
            }
        }
        if let Some(l) = self.lease.as_mut() {
            l.conn().reported.insert(k, v);
        }
    }

    pub(super) fn confirm_setting(&mut self, change: &SettingChange) {
        state::apply_change(
            Arc::make_mut(&mut self.settings),
            &self.startup_settings,
            change,
        );
        self.routing.serializable_default = self
            .settings
            .get("default_transaction_isolation")
            .is_some_and(|v| v.to_ascii_lowercase().contains("serializable"));
        if let SettingChange::Several(changes) = change {
            for c in changes {
                self.confirm_setting(c);
            }
            return;
        }
        if let Some(l) = self.lease.as_mut() {
            let settings = Arc::make_mut(&mut l.conn().settings);
            match change {
                SettingChange::Set(k, v) => {
                    settings.insert(k.clone(), v.clone());
                }
                SettingChange::Reset(k) => {
                    settings.remove(k);
                }
                SettingChange::ResetAll => {
                    settings.clear();
                }
                SettingChange::Several(_) => {}
            }
        }
    }

    /// In transaction mode, the connection goes back to its pool as soon as
    /// the client is outside a transaction with nothing pending.
    pub(super) fn after_backend_batch(&mut self) {
        if self.mode == PoolMode::Transaction
            && self.tracker.is_idle()
            && self.pins.is_empty()
            && self.to_backend.is_empty()
        {
            self.release();
        }
    }
}
