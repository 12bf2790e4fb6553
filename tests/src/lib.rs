//! Shared end-to-end test harness.
//!
//! Every end-to-end test builds on the same pieces:
//! - [`PgCluster`]: a real PostgreSQL primary with streaming standbys on free
//!   ports in a temporary directory, created by `scripts/dev-cluster` (the
//!   same script developers and the demo use), torn down on drop;
//! - [`Tidepool`]: a `tidepool run -c FILE` process with its own config file
//!   and log, killed on drop;
//! - [`free_port`] (and [`free_port_on`] for other loopback addresses),
//!   [`wait_until`], [`wait_for`] and their async variants:
//!   tests wait by polling with a deadline, never by a bare sleep.
//!
//! Harness functions that start or stop processes block the calling thread;
//! they are meant to be called from `#[test]` and `#[tokio::test]` bodies.

pub mod certs;
mod cluster;
pub mod moto;
mod netns;
mod paths;
mod ports;
mod tidepool;
mod wait;
pub mod wire;

pub use cluster::{Node, PgCluster, PgClusterOpts, Role};
pub use netns::{Forwarder, NetNs};
pub use paths::{repo_root, scripts_dir, target_dir};
pub use ports::{free_port, free_port_on, free_port_on_all};
pub use tidepool::{Tidepool, TidepoolOpts, minimal_config};
pub use wait::{wait_for, wait_for_async, wait_until, wait_until_async};
