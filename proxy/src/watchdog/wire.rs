//! The watchdog's wire format: one authenticated message per UDP datagram
//! or per length-prefixed TCP frame.
//!
//! A frame is `HMAC-SHA256(key, body) ‖ body`, the body JSON naming the
//! sender, the addressee and the sender's wall-clock time. A node without
//! the shared key cannot forge a vote, a heartbeat or an acknowledgement;
//! one that replays a captured frame is limited to its addressee and to
//! [`MAX_AGE`] (watchdog messages are idempotent within a term, and a stale
//! term is ignored by the state machine).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::core::Msg;
use crate::cluster::consensus::BackendView;

type HmacSha256 = Hmac<Sha256>;

const TAG: usize = 32;
/// Frames older (or newer) than this by the receiver's clock are refused.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Largest frame accepted (messages are a few hundred bytes).
pub const MAX_FRAME: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub to: String,
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub sent_ms: u64,
    /// The sender's `watchdog.priority` (peers learn it from every message).
    #[serde(default)]
    pub priority: u32,
    /// Other nodes' priorities as the sender knows them (a leader's
    /// heartbeats carry them: followers do not talk to each other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relayed: Vec<(String, u32)>,
    /// Backend health and, from the leader, its node table (heartbeats
    /// and their answers carry them; see `cluster::consensus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<BackendView>,
    pub msg: Msg,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is too short or too long")]
    Size(usize),
    #[error("bad signature: the sender does not have this cluster's shared key")]
    Signature,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("message for {0:?}, not this node")]
    NotForMe(String),
    #[error("message {0} s away from this node's clock: replayed, or clocks far apart")]
    Stale(i64),
}

/// Signs and checks frames with the cluster's shared key.
#[derive(Clone)]
pub struct Codec {
    key: Vec<u8>,
    me: String,
    priority: u32,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("me", &self.me).finish()
    }
}

pub use crate::cluster::unix_ms;

impl Codec {
    pub fn new(key: Vec<u8>, me: impl Into<String>) -> Codec {
        Codec {
            key,
            me: me.into(),
            priority: 0,
        }
    }

    /// Announces `priority` in every frame.
    pub fn with_priority(mut self, priority: u32) -> Codec {
        self.priority = priority;
        self
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn encode(&self, to: &str, msg: Msg, now: SystemTime) -> Vec<u8> {
        self.encode_relaying(to, msg, Vec::new(), now)
    }

    pub fn encode_relaying(
        &self,
        to: &str,
        msg: Msg,
        relayed: Vec<(String, u32)>,
        now: SystemTime,
    ) -> Vec<u8> {
        self.encode_with(to, msg, relayed, None, now)
    }

    /// A frame carrying `backends` beside `msg`.
    pub fn encode_with(
        &self,
        to: &str,
        msg: Msg,
        relayed: Vec<(String, u32)>,
        backends: Option<BackendView>,
        now: SystemTime,
    ) -> Vec<u8> {
        let env = Envelope {
            from: self.me.clone(),
            to: to.to_string(),
            sent_ms: unix_ms(now),
            priority: self.priority,
            relayed,
            backends,
            msg,
        };
        let body = serde_json::to_vec(&env).expect("envelopes serialize");
        let mut mac = self.mac();
        mac.update(&body);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(&self, frame: &[u8], now: SystemTime) -> Result<Envelope, WireError> {
        if frame.len() <= TAG || frame.len() > MAX_FRAME {
            return Err(WireError::Size(frame.len()));
        }
        let (tag, body) = frame.split_at(TAG);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| WireError::Signature)?;
        let env: Envelope =
            serde_json::from_slice(body).map_err(|e| WireError::Decode(e.to_string()))?;
        if env.to != self.me {
            return Err(WireError::NotForMe(env.to));
        }
        let skew = unix_ms(now) as i64 - env.sent_ms as i64;
        if skew.unsigned_abs() > MAX_AGE.as_millis() as u64 {
            return Err(WireError::Stale(skew / 1000));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-shared";

    fn hb() -> Msg {
        Msg::Heartbeat { term: 3, stamp: 42 }
    }

    #[test]
    fn a_frame_round_trips_between_key_holders() {
        let now = SystemTime::now();
        let a = Codec::new(KEY.to_vec(), "a");
        let b = Codec::new(KEY.to_vec(), "b");
        let env = b.decode(&a.encode("b", hb(), now), now).unwrap();
        assert_eq!((env.from.as_str(), env.msg), ("a", hb()));
    }

    #[test]
    fn a_stranger_without_the_key_cannot_vote_or_heartbeat() {
        let now = SystemTime::now();
        let stranger = Codec::new(b"guessed-key-guessed-key".to_vec(), "a");
        let b = Codec::new(KEY.to_vec(), "b");
        let frame = stranger.encode(
            "b",
            Msg::Vote {
                term: 99,
                transfer: true,
            },
            now,
        );
        assert_eq!(b.decode(&frame, now), Err(WireError::Signature));
    }

    #[test]
    fn a_tampered_frame_is_refused() {
        let now = SystemTime::now();
        let a = Codec::new(KEY.to_vec(), "a");
        let b = Codec::new(KEY.to_vec(), "b");
        let mut frame = a.encode("b", hb(), now);
        let last = frame.len() - 2;
        frame[last] ^= 1;
        assert!(b.decode(&frame, now).is_err());
    }

    #[test]
    fn frames_for_another_node_or_from_long_ago_are_refused() {
        let now = SystemTime::now();
        let a = Codec::new(KEY.to_vec(), "a");
        let b = Codec::new(KEY.to_vec(), "b");
        assert_eq!(
            b.decode(&a.encode("c", hb(), now), now),
            Err(WireError::NotForMe("c".into()))
        );
        let old = now - Duration::from_secs(120);
        assert!(matches!(
            b.decode(&a.encode("b", hb(), old), now),
            Err(WireError::Stale(_))
        ));
    }
}
