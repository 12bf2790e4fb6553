//! The watchdog: tidepool nodes as one highly-available service. They
//! elect one leader with a lease; only the leader holds the service
//! address, and it lets go before any other node can take it.
//!
//! `core` is the pure state machine (elections, leases, transfers);
//! everything that touches a socket, a clock or AWS lives beside it.
//! See `docs/watchdog.md`.

pub mod aws;
pub mod core;
pub mod escalate;
pub mod service;
#[cfg(test)]
mod sim;
pub mod status;
pub mod wire;

pub use service::{RequestError, StartError, Watchdog, start};
pub use status::WatchdogStatus;
