//! Why a Pgpool-II setting has no tidepool equivalent, in the words the
//! import's warnings use.

/// The reason given for watchdog settings not carried over.
pub(super) const WATCHDOG_PART: &str =
    "part of a watchdog setting that could not be carried over (see the other warnings)";

/// Why a Pgpool-II setting has no tidepool equivalent.
pub(super) fn no_equivalent(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let base = n.trim_end_matches(|c: char| c.is_ascii_digit());
    match base {
        "backend_clustering_mode"
        | "master_slave_mode"
        | "master_slave_sub_mode"
        | "replication_mode" => {
            "tidepool serves streaming-replication clusters; the mode is implied"
        }
        "replicate_select"
        | "insert_lock"
        | "lobj_lock_table"
        | "replication_stop_on_mismatch"
        | "failover_if_affected_tuples_mismatch"
        | "recovery_2nd_stage_command" => "native replication mode is not supported",
        "socket_dir" | "pcp_socket_dir" | "wd_ipc_socket_dir" | "unix_socket_directories" => {
            "tidepool listens on TCP only"
        }
        "listen_backlog_multiplier"
        | "serialize_accept"
        | "child_life_time"
        | "child_max_connections"
        | "reserved_connections"
        | "process_management_mode"
        | "process_management_strategy"
        | "min_spare_children"
        | "max_spare_children" => {
            "tidepool has no worker processes per client: clients share pooled connections"
        }
        "pid_file_name" => "tidepool runs in the foreground under its service manager",
        "client_idle_limit_in_recovery" => "there is no second recovery stage to wait for",
        "allow_clear_text_frontend_auth" => {
            "tidepool never passes a client's password on; hba method \"password\" is the nearest"
        }
        "pool_passwd" => "users are [[users]] entries: pass the file with --passwd",
        "ssl_ca_cert_dir" => {
            "[tls] ca_file is one PEM bundle: concatenate the directory's certificates"
        }
        "ssl_crl_file" => "certificate revocation lists are not read",
        "ssl_ciphers" | "ssl_prefer_server_ciphers" | "ssl_ecdh_curve" | "ssl_dh_params_file" => {
            "rustls offers only safe suites; [tls] min_version is the one choice"
        }
        "ssl_passphrase_command" => "keys are read unencrypted",
        "log_destination"
        | "syslog_facility"
        | "syslog_ident"
        | "logging_collector"
        | "log_directory"
        | "log_filename"
        | "log_file_mode"
        | "log_truncate_on_rotation"
        | "log_rotation_age"
        | "log_rotation_size" => "tidepool logs to stderr (journald or a log shipper keeps it)",
        "log_line_prefix" | "log_error_verbosity" => {
            "[logging] format (text or json) is the one choice"
        }
        "log_connections"
        | "log_disconnections"
        | "log_hostname"
        | "log_statement"
        | "log_client_messages"
        | "client_min_messages"
        | "log_standby_delay" => "no such switch: see SHOW POOL_NODES, /v1/nodes and /metrics",
        "recovery_user" | "recovery_password" => {
            "online recovery logs in as [health_check] user; streaming uses [failover] replication_user"
        }
        "recovery_1st_stage_command" => {
            "tidepool recovers a node itself (pg_rewind, else pg_basebackup) or runs [failover] recovery_command, a local command with the failover placeholders, not a script in the primary's data directory"
        }
        "failback_command" => "no command runs when a node is attached",
        "relcache_expire"
        | "relcache_size"
        | "enable_shared_relcache"
        | "relcache_query_target" => "tidepool's catalog cache needs no settings",
        "check_temp_table" | "check_unlogged_table" => {
            "always on: temporary and unlogged relations are read on the primary"
        }
        "memory_cache_enabled"
        | "memqcache_method"
        | "memqcache_memcached_host"
        | "memqcache_memcached_port"
        | "memqcache_total_size"
        | "memqcache_max_num_cache"
        | "memqcache_expire"
        | "memqcache_auto_cache_invalidation"
        | "memqcache_maxcache"
        | "memqcache_cache_block_size"
        | "memqcache_oiddir"
        | "cache_safe_memqcache_table_list"
        | "cache_unsafe_memqcache_table_list"
        | "clear_memqcache_on_escalation" => {
            "not carried over: set [query_cache] by hand (docs/query-cache.md maps each memqcache_* setting)"
        }
        "trusted_servers" | "ping_path" | "trusted_server_command" => {
            "the watchdog's quorum decides who holds the address"
        }
        "wd_lifecheck_method"
        | "wd_interval"
        | "wd_life_point"
        | "wd_lifecheck_query"
        | "wd_lifecheck_dbname"
        | "wd_lifecheck_user"
        | "wd_lifecheck_password" => {
            "the watchdog always checks its peers by heartbeats, every quarter heartbeat interval"
        }
        "heartbeat_device" | "wd_monitoring_interfaces_list" => {
            "no network interface is watched or bound"
        }
        "pgpool_port" => "peers need not know each other's client port",
        "failover_when_quorum_exists" | "failover_require_consensus" => {
            "always on: a node is detached only when a quorum sees it fail"
        }
        "allow_multiple_failover_requests_from_node" => "each node's view counts once",
        "wd_remove_shutdown_nodes"
        | "wd_lost_node_removal_timeout"
        | "wd_no_show_node_removal_timeout" => {
            "the watchdog's members are fixed by the configuration"
        }
        "use_watchdog"
        | "wd_authkey"
        | "hostname"
        | "wd_port"
        | "heartbeat_hostname"
        | "heartbeat_port"
        | "wd_priority"
        | "wd_heartbeat_keepalive"
        | "wd_heartbeat_deadtime"
        | "enable_consensus_with_half_votes"
        | "delegate_ip"
        | "if_up_cmd"
        | "if_down_cmd"
        | "arping_cmd"
        | "if_cmd_path"
        | "arping_path"
        | "wd_escalation_command"
        | "wd_de_escalation_command" => WATCHDOG_PART,
        "health_check_user" | "health_check_password" | "health_check_database" => {
            "tidepool has one health-check login for every node"
        }
        _ => "no tidepool equivalent",
    }
}
