//! PostgreSQL protocol v3: framing and the few messages tidepool must read
//! or write itself.
//!
//! Framing is kept apart from meaning: [`frame`] only knows where a message
//! ends, so the hot path forwards whole frames as bytes without decoding.
//! [`messages`] builds what tidepool says on its own (errors, auth requests,
//! admin results) and reads the handful of fields that pooling needs
//! (statement names, ReadyForQuery status, ParameterStatus).

pub mod frame;
pub mod messages;

pub use frame::{Frame, FrameError, FrameRef, StartupPacket};

/// SQLSTATE codes tidepool uses in its own ErrorResponses.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const SYNTAX_ERROR: &str = "42601";
}
