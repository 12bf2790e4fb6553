//! `[load_balancing]`: which statements may run on standbys, and which
//! standby takes them. The rules themselves live in `router`; these are
//! the knobs, with their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a write does to later reads of the same session (Pgpool-II's
/// `disable_load_balance_on_write`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnWrite {
    /// Reads keep going to standbys.
    Off,
    /// Reads after a write in an explicit transaction go to the primary
    /// until the transaction ends.
    Transaction,
    /// As `transaction`, and later explicit transactions of the session
    /// read from the primary too.
    TransTransaction,
    /// After any write, every read of the session goes to the primary.
    Always,
    /// Only reads of tables written in this transaction (or configured as
    /// related to them) go to the primary.
    DmlAdaptive,
    /// Read-your-writes by WAL position: after a session's write commits,
    /// its reads go only to standbys that have replayed the primary's WAL
    /// up to that commit (as the lag sampler measures it), else to the
    /// primary. Sessions that have not written read from standbys as usual.
    SessionLsn,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancingConfig {
    /// Send reads to standbys at all.
    pub enabled: bool,
    /// Choose a standby per statement instead of once per session.
    pub statement_level: bool,
    pub disable_on_write: OnWrite,
    /// When false, a statement that starts with a comment goes to the
    /// primary (Pgpool-II's `allow_sql_comments = off`).
    pub allow_sql_comments: bool,
    /// Regexes: statements matching any go to the primary.
    pub primary_routing_patterns: Vec<String>,
    /// Regexes of function names that write (override the catalog).
    pub write_functions: Vec<String>,
    /// Regexes of function names that only read (override the catalog).
    pub read_only_functions: Vec<String>,
    /// `dml_adaptive`: "table:related1,related2" — writing the table sends
    /// reads of the related tables to the primary too.
    pub dml_adaptive_relations: Vec<String>,
    /// A standby more than this many WAL bytes behind gets no reads (0: off).
    pub delay_threshold: u64,
    /// A standby more than this far behind in replay time gets no reads
    /// (0s: off).
    #[serde(with = "humantime_serde")]
    pub delay_threshold_by_time: Duration,
    /// When every standby is too far behind, send reads to the least-lagged
    /// standby instead of the primary.
    pub prefer_lower_delay_standby: bool,
    /// How often standbys' replication delay is measured.
    #[serde(with = "humantime_serde")]
    pub sr_check_period: Duration,
    /// Send the client a NOTICE naming the node that ran each statement.
    pub notice_per_node_statement: bool,
    /// `"regex:node(ratio),…"` by database name; node is an id, `primary`
    /// or `standby`.
    pub database_redirect_preference_list: String,
    /// The same, by application_name (checked first).
    pub app_name_redirect_preference_list: String,
    /// The same, by user name (checked last).
    pub user_redirect_preference_list: String,
}

impl Default for LoadBalancingConfig {
    fn default() -> Self {
        LoadBalancingConfig {
            enabled: true,
            statement_level: false,
            disable_on_write: OnWrite::SessionLsn,
            allow_sql_comments: false,
            primary_routing_patterns: Vec::new(),
            write_functions: Vec::new(),
            read_only_functions: Vec::new(),
            dml_adaptive_relations: Vec::new(),
            delay_threshold: 0,
            delay_threshold_by_time: Duration::ZERO,
            prefer_lower_delay_standby: false,
            sr_check_period: Duration::from_secs(1),
            notice_per_node_statement: false,
            database_redirect_preference_list: String::new(),
            app_name_redirect_preference_list: String::new(),
            user_redirect_preference_list: String::new(),
        }
    }
}
