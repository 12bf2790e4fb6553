//! The protocol tracker: what the server owes the client, and where the
//! session stands in the protocol, with no I/O.
//!
//! The session tells it what it sent ([`Tracker::client`],
//! [`Tracker::expect`]) and hands it every backend message
//! ([`Tracker::backend`]); it answers whether the message goes on to the
//! client as is, hidden or rewritten, and what it means for the server
//! connection (a statement gone, a setting confirmed, a transaction ended),
//! which the session applies. Whether the connection may be released or a
//! new unit of work routed follows from its state alone.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{
    expect::{self, Expect},
    state::SettingChange,
};
use crate::{
    backend::StatementName,
    protocol::{FrameRef, messages, sqlstate},
};

/// Where the protocol stands between the client and its server connection.
#[derive(Debug)]
pub struct Tracker {
    /// The replies awaited, in order.
    pending: VecDeque<Expect>,
    /// After an error in an extended-protocol batch the server skips
    /// messages until Sync; so does the bookkeeping.
    skipping: bool,
    /// The server is in COPY FROM STDIN: it ignores Sync and Flush until
    /// the client's CopyDone or CopyFail.
    copy_in: bool,
    /// Extended-protocol messages were sent since the last Sync: the
    /// connection holds an unfinished batch (portals, an implicit
    /// transaction) even when every reply so far has arrived.
    unsynced: bool,
    /// The transaction status of the last ReadyForQuery.
    tx_status: u8,
    /// The server sent FATAL (or PANIC): it ends the connection and has
    /// told the client why.
    backend_fatal: bool,
}

/// What becomes of one backend message on its way to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Passed on unchanged.
    As,
    /// A reply to something tidepool sent itself: the client never sees it.
    Hide,
    /// Passed on rewritten.
    Replace(Bytes),
}

/// What a backend message means for the server connection or the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// The statement (tidepool's name) is not prepared on the connection:
    /// its Parse failed or was skipped.
    PreparedGone(StatementName),
    /// The server refused the statement's cached plan ("cached plan must
    /// not change result type"): it must be closed and prepared again.
    PlanStale(StatementName),
    /// A Close tidepool sent for this statement was skipped: the server
    /// still holds it.
    StillPrepared(StatementName),
    /// DEALLOCATE ALL or DISCARD ALL: no statement is prepared any more.
    AllStatementsGone,
    /// A setting the client changed took effect.
    Confirm(SettingChange),
    /// The server shuts down (FATAL 57P01) and says so.
    ServerShutdown(String),
    /// ReadyForQuery with this transaction status.
    Ready(u8),
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: VecDeque::new(),
            skipping: false,
            copy_in: false,
            unsynced: false,
            tx_status: b'I',
            backend_fatal: false,
        }
    }
}

impl Tracker {
    /// The transaction status the client was last told.
    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    /// The extended-protocol batch failed: messages up to Sync are ignored.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    pub fn backend_fatal(&self) -> bool {
        self.backend_fatal
    }

    /// Replies awaited from the server.
    pub fn awaited(&self) -> usize {
        self.pending.len()
    }

    pub fn pending(&self) -> &VecDeque<Expect> {
        &self.pending
    }

    /// A client message of type `tag` is being passed on (or answered):
    /// keeps track of open extended-protocol batches and COPY.
    pub fn client(&mut self, tag: u8) {
        match tag {
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            b'S' => self.unsynced = false,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
    }

    /// An extended-protocol message the client sent failed before reaching
    /// a server (no connection, no route): the rest of its batch is
    /// ignored up to Sync, as the server would.
    pub fn fail_batch(&mut self) {
        self.skipping = true;
    }

    /// A Sync is answered here (nothing reached a server since the batch
    /// failed): the batch is over.
    pub fn sync_answered(&mut self) {
        self.skipping = false;
    }

    /// The client's Sync goes to the server; its ReadyForQuery is awaited
    /// unless the server is in COPY FROM STDIN, which ignores it.
    pub fn sync_sent(&mut self) {
        self.skipping = false;
        if !self.copy_in {
            self.pending.push_back(Expect::Sync);
        }
    }

    /// A simple Query or FunctionCall was sent: its replies end with
    /// ReadyForQuery whatever came before.
    pub fn simple_sent(&mut self, settings: Vec<SettingChange>) {
        self.pending.push_back(Expect::Simple { settings });
    }

    /// Awaits `e` for an extended-protocol message sent (nothing, in a
    /// batch that is being skipped). A reply tidepool makes itself goes to
    /// `out` at once when nothing is awaited before it.
    pub fn expect(&mut self, e: Expect, out: &mut BytesMut) {
        if self.skipping {
            return;
        }
        if let Expect::Synthetic(tag) = e
            && self.pending.is_empty()
        {
            expect::emit_synthetic(out, tag);
            return;
        }
        self.pending.push_back(e);
    }

    /// Nothing awaited and no batch or transaction open: a connection the
    /// session holds only for this could go back to its pool.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.unsynced && self.tx_status == b'I'
    }

    /// The next message starts a new unit of work (a transaction, or a
    /// statement outside one), which may be routed anew.
    pub fn at_boundary(&self) -> bool {
        self.is_idle() && !self.copy_in && !self.skipping
    }

    /// Replies are still awaited for work outside a transaction and
    /// outside a batch: the unit in flight ends with them.
    pub fn unit_in_flight(&self) -> bool {
        self.tx_status == b'I' && !self.unsynced && !self.copy_in && !self.skipping
    }

    /// Handles one backend message: what reaches the client, and `effects`
    /// for the session to apply. Replies tidepool makes itself that are
    /// due afterwards come from [`Tracker::flush_synthetics`].
    pub fn backend<'a>(
        &mut self,
        f: impl Into<FrameRef<'a>>,
        effects: &mut Vec<Effect>,
    ) -> Forward {
        let f = f.into();
        let mut forward = Forward::As;
        match f.tag {
            b'Z' => {
                self.tx_status = messages::ready_status(f);
                effects.push(Effect::Ready(self.tx_status));
                // ReadyForQuery ends a simple query or a Sync.
                while let Some(e) = self.pending.pop_front() {
                    if matches!(e, Expect::Sync | Expect::Simple { .. }) {
                        break;
                    }
                }
            }
            b'1' => match self.pending.front() {
                Some(Expect::Parse { hidden, .. }) => {
                    if *hidden {
                        forward = Forward::Hide;
                    }
                    self.pending.pop_front();
                }
                Some(Expect::Duplicate(_)) => {
                    self.pending.pop_front();
                }
                _ => {}
            },
            b'2' => self.pop_if(|e| matches!(e, Expect::Bind { .. })),
            b'G' => {
                // COPY FROM STDIN: Syncs the client sent before this reply
                // are ignored by the server; it answers only the Sync after
                // CopyDone.
                self.copy_in = true;
                if matches!(self.pending.front(), Some(Expect::Execute)) {
                    while matches!(self.pending.get(1), Some(Expect::Sync)) {
                        self.pending.remove(1);
                    }
                }
            }
            b'3' => {
                if let Some(Expect::Close { stale }) = self.pending.front() {
                    if stale.is_some() {
                        forward = Forward::Hide;
                    }
                    self.pending.pop_front();
                }
            }
            b'n' | b'T' => self.pop_if(|e| matches!(e, Expect::Describe { .. })),
            b'I' | b's' => self.pop_if(|e| matches!(e, Expect::Execute)),
            b'C' => {
                let body = f.body();
                let tag = &body[..body.len().saturating_sub(1)];
                if tag == b"DEALLOCATE ALL" || tag == b"DISCARD ALL" {
                    // Every prepared statement of the connection is gone,
                    // tidepool's renamed ones too.
                    effects.push(Effect::AllStatementsGone);
                }
                if let Some(Expect::Simple { settings }) = self.pending.front_mut() {
                    if (tag == b"SET" || tag == b"RESET" || tag == b"DISCARD ALL")
                        && !settings.is_empty()
                    {
                        effects.push(Effect::Confirm(settings.remove(0)));
                    }
                } else {
                    self.pop_if(|e| matches!(e, Expect::Execute));
                }
            }
            b'E' => {
                let e = messages::read_error(f);
                if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                    self.backend_fatal = true;
                }
                if e.severity == "FATAL" && e.code == sqlstate::ADMIN_SHUTDOWN {
                    effects.push(Effect::ServerShutdown(e.message.clone()));
                }
                if !matches!(self.pending.front(), Some(Expect::Simple { .. })) {
                    forward = self.extended_error(f, &e.code, effects);
                }
            }
            _ => {}
        }
        forward
    }

    /// An ErrorResponse in the extended protocol: the server skips to the
    /// next Sync, and so do the replies awaited.
    fn extended_error(
        &mut self,
        f: FrameRef<'_>,
        code: &str,
        effects: &mut Vec<Effect>,
    ) -> Forward {
        let mut forward = Forward::As;
        match self.pending.front() {
            Some(Expect::Bind { statement: Some(n) } | Expect::Describe { statement: Some(n) })
                if code == sqlstate::FEATURE_NOT_SUPPORTED =>
            {
                // "cached plan must not change result type": the
                // statement's text now means another result; the client
                // prepares it again, and tidepool with it.
                effects.push(Effect::PlanStale(n.clone()));
            }
            Some(Expect::Duplicate(d)) => {
                forward = Forward::Replace(messages::replace_in_error_message(
                    f,
                    &format!("\"{}\"", d.server_name),
                    &format!("\"{}\"", d.client_name),
                ));
            }
            _ => {}
        }
        while let Some(e) = self.pending.front() {
            if matches!(e, Expect::Sync) {
                break;
            }
            match self.pending.pop_front() {
                Some(Expect::Parse {
                    server_name: Some(n),
                    ..
                }) => effects.push(Effect::PreparedGone(n)),
                Some(Expect::Close { stale: Some(n) }) => effects.push(Effect::StillPrepared(n)),
                _ => {}
            }
        }
        if self.pending.is_empty() {
            self.skipping = true;
        }
        forward
    }

    /// Writes the replies tidepool makes itself that are now due.
    pub fn flush_synthetics(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(tag)) = self.pending.front() {
            expect::emit_synthetic(out, *tag);
            self.pending.pop_front();
        }
    }

    fn pop_if(&mut self, f: impl Fn(&Expect) -> bool) {
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front();
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
