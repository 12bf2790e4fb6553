//! A unit of work a standby refuses because it is in recovery (SQLSTATE
//! 25006: a function the routing rules could not know needs a primary) is
//! run again on the primary, and the client never sees the refusal.
//!
//! While a unit routed to a standby has sent no row, its replies are held
//! back ([`StandbyGuard`]); the unit's own messages are kept to be sent
//! again. When the server refuses it with 25006 and the unit ends outside
//! a transaction, the held replies and the refusal are dropped and the
//! unit goes to the primary. The first row, command completion or any
//! other reply lets the held replies through: from then on the unit is the
//! standby's. Pure: the session feeds it messages and acts on its verdict.

use bytes::BytesMut;

use crate::protocol::{FrameRef, messages, sqlstate};

/// What the session does with one backend message of a guarded unit.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept back (its bytes, if it had any for the client, are held).
    Hold,
    /// The guard is over: the held bytes go to the client, then this
    /// message as usual.
    Release,
    /// The standby refused the unit: drop what was held and run the
    /// unit's messages again on the primary.
    Rerun,
}

/// Replies of a unit on a standby, held until it is known that the standby
/// runs it.
#[derive(Debug, Default)]
pub struct StandbyGuard {
    /// The unit's client messages, whole and in order, to send again.
    unit: BytesMut,
    /// The unit's last message (Sync, or the simple Query) was seen.
    complete: bool,
    /// The unit can be sent again as it is: no COPY data, no Flush (whose
    /// replies the client may already act on), no Close answered by
    /// tidepool itself.
    rerunnable: bool,
    /// Bytes due to the client, held.
    held: BytesMut,
    /// The server refused the unit with 25006.
    refused: bool,
}

impl StandbyGuard {
    pub fn new() -> StandbyGuard {
        StandbyGuard {
            rerunnable: true,
            ..StandbyGuard::default()
        }
    }

    /// A client message of the unit (messages after its end belong to the
    /// next unit and are not kept).
    pub fn client(&mut self, f: FrameRef<'_>) {
        if self.complete {
            return;
        }
        match f.tag {
            b'Q' | b'S' => self.complete = true,
            b'P' | b'B' | b'D' | b'E' => {}
            _ => {
                self.rerunnable = false;
                self.unit = BytesMut::new();
            }
        }
        if self.rerunnable {
            self.unit.extend_from_slice(f.bytes);
        }
    }

    /// A backend message of the unit; `bytes` is what would reach the
    /// client for it (empty for a reply tidepool hides).
    pub fn backend(&mut self, f: FrameRef<'_>, bytes: &[u8]) -> Verdict {
        match f.tag {
            // Replies that come before any row: parse, bind, close,
            // descriptions, notices, parameter changes.
            b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'N' | b'S' => {}
            b'E' if !self.refused
                && messages::read_error(f).code == sqlstate::READ_ONLY_SQL_TRANSACTION =>
            {
                self.refused = true;
            }
            b'Z' if self.refused
                && self.rerunnable
                && self.complete
                && messages::ready_status(f) == b'I' =>
            {
                return Verdict::Rerun;
            }
            _ => return Verdict::Release,
        }
        self.held.extend_from_slice(bytes);
        Verdict::Hold
    }

    /// The held bytes, for the client.
    pub fn held(&self) -> &[u8] {
        &self.held
    }

    /// The unit's messages, whole, to send again.
    pub fn into_unit(self) -> BytesMut {
        self.unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::Severity;

    use crate::protocol::{Frame, frame::each, messages::message as frame};

    /// The tags of the unit's messages the guard kept.
    fn kept(g: StandbyGuard) -> Vec<u8> {
        each(&g.into_unit()).map(|f| f.tag).collect()
    }

    fn error(code: &str) -> Frame {
        let mut b = BytesMut::new();
        messages::error_response(&mut b, Severity::Error, code, "refused", None);
        messages::frame_of(&b)
    }

    /// Feeds the client messages, then the backend ones; the verdicts.
    fn run(client: &[u8], backend: &[Frame]) -> (Vec<Verdict>, StandbyGuard) {
        let mut g = StandbyGuard::new();
        for &tag in client {
            g.client((&frame(tag, &[])).into());
        }
        let v = backend
            .iter()
            .map(|f| g.backend(f.into(), &f.bytes))
            .collect();
        (v, g)
    }

    #[test]
    fn a_refused_simple_query_is_run_again() {
        let (v, g) = run(
            b"Q",
            &[frame(b'T', &[0, 0]), error("25006"), frame(b'Z', b"I")],
        );
        assert_eq!(v, [Verdict::Hold, Verdict::Hold, Verdict::Rerun]);
        assert_eq!(kept(g), b"Q");
    }

    #[test]
    fn a_refused_extended_batch_is_run_again_with_all_its_messages() {
        let (v, g) = run(
            b"PBDES",
            &[
                frame(b'1', &[]),
                frame(b'2', &[]),
                frame(b'T', &[0, 0]),
                error("25006"),
                frame(b'Z', b"I"),
            ],
        );
        assert_eq!(v.last(), Some(&Verdict::Rerun));
        assert_eq!(kept(g), b"PBDES");
    }

    #[test]
    fn a_row_lets_the_held_replies_through() {
        let (v, g) = run(b"Q", &[frame(b'T', &[0, 0]), frame(b'D', &[0, 0])]);
        assert_eq!(v, [Verdict::Hold, Verdict::Release]);
        assert_eq!(g.held().len(), 7, "the RowDescription waits for the client");
    }

    #[test]
    fn other_errors_and_refusals_inside_a_transaction_are_the_clients() {
        let (v, _) = run(b"Q", &[error("22012")]);
        assert_eq!(v, [Verdict::Release]);
        let (v, _) = run(b"Q", &[error("25006"), frame(b'Z', b"E")]);
        assert_eq!(v, [Verdict::Hold, Verdict::Release]);
    }

    #[test]
    fn a_unit_with_a_flush_or_a_close_is_not_run_again() {
        for client in [&b"PBEHS"[..], b"PBCES"] {
            let (v, _) = run(client, &[error("25006"), frame(b'Z', b"I")]);
            assert_eq!(v, [Verdict::Hold, Verdict::Release], "{client:?}");
        }
    }

    #[test]
    fn messages_after_the_units_end_are_not_kept() {
        let (_, g) = run(b"PBESQ", &[]);
        assert_eq!(kept(g), b"PBES");
    }

    #[test]
    fn an_unfinished_unit_is_not_run_again() {
        let (v, _) = run(b"PBE", &[error("25006"), frame(b'Z', b"I")]);
        assert_eq!(v[1], Verdict::Release);
    }
}
