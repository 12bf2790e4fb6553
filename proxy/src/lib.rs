//! tidepool: a high-availability controller and pooling proxy for
//! PostgreSQL. See `docs/architecture.md` for the map of this crate.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod cancel;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod ctl;
pub mod import;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod supervise;
pub mod tls;
pub mod watchdog;
pub mod worker;
