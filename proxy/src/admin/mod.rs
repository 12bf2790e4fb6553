//! The admin surface: `SHOW POOL_*` on the client port, the HTTP API
//! (health, readiness, metrics, control) and the counters behind them.
//! Admin code reads snapshots and counters; it changes node state only by
//! asking `cluster`.

mod checks;
mod families;
mod guard;
pub mod http;
pub mod prometheus;
pub mod show;
pub mod view;
