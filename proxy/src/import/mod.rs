//! `tidepool import-pgpool`: a Pgpool-II configuration (pgpool.conf,
//! pool_hba.conf, pool_passwd) as the equivalent tidepool TOML.
//!
//! Pure: the caller reads the files. Every setting that has an equivalent
//! is written under its tidepool key with the Pgpool-II line above it as a
//! comment; every setting that has none is a warning naming it and saying
//! why, and is listed at the end of the output.

pub mod conf;
mod escalation;
mod toml_out;
mod unmapped;
mod values;

use std::collections::BTreeMap;

use conf::{Secret, Setting};
use toml_out::{Out, Table, str_value};
use unmapped::{WATCHDOG_PART, no_equivalent};
use values::*;

/// What the import reads.
#[derive(Debug, Default)]
pub struct Input<'a> {
    pub pgpool_conf: &'a str,
    pub pool_hba: Option<&'a str>,
    pub pool_passwd: Option<&'a str>,
    /// The pgpoolkey, for AES-encrypted passwords.
    pub pgpoolkey: Option<&'a str>,
    /// This node's index among `hostnameN` (Pgpool-II's pgpool_node_id).
    pub node_id: usize,
    /// Escalation scripts named by `wd_escalation_command`, by the path
    /// written there, when the caller could read them.
    pub scripts: BTreeMap<String, String>,
}

/// The import's result.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    /// One line per setting not carried over, or carried with a change the
    /// user must know about.
    pub warnings: Vec<String>,
}

/// Converts a Pgpool-II configuration.
pub fn pgpool(input: &Input) -> Imported {
    let settings = conf::settings(input.pgpool_conf);
    let mut m = Mapper {
        get: settings
            .iter()
            .map(|s| (s.name.to_ascii_lowercase(), s))
            .collect(),
        used: Default::default(),
        out: Out::default(),
        warnings: Vec::new(),
        dropped: Vec::new(),
    };
    m.server();
    m.pool();
    m.health_check(input);
    m.failover();
    m.load_balancing();
    m.logging();
    m.tls();
    m.backends();
    m.users(input);
    m.hba(input);
    m.watchdog(input);
    let watchdog_on = m
        .get
        .get("use_watchdog")
        .is_some_and(|s| on(&s.value).unwrap_or(false));
    for s in &settings {
        if !m.used.contains(&s.name.to_ascii_lowercase()) {
            let why = match no_equivalent(&s.name) {
                WATCHDOG_PART if !watchdog_on => "the watchdog is off (use_watchdog)",
                why => why,
            };
            m.drop_setting(s, why);
        }
    }
    let mut toml = m.out.render();
    if !m.dropped.is_empty() {
        toml.push_str(
            "\n# Pgpool-II settings with no tidepool equivalent (each also a warning):\n",
        );
        for d in &m.dropped {
            toml.push_str(&format!("#   {d}\n"));
        }
    }
    Imported {
        toml,
        warnings: m.warnings,
    }
}

struct Mapper<'a> {
    get: BTreeMap<String, &'a Setting>,
    used: std::collections::BTreeSet<String>,
    out: Out,
    warnings: Vec<String>,
    dropped: Vec<String>,
}

impl<'a> Mapper<'a> {
    /// The setting `name`, marked as handled.
    fn take(&mut self, name: &str) -> Option<&'a Setting> {
        let s = self.get.get(name).copied()?;
        self.used.insert(name.to_string());
        Some(s)
    }

    fn warn(&mut self, s: &Setting, why: &str) {
        self.warnings.push(format!("{}: {why}", s.name));
    }

    fn drop_setting(&mut self, s: &Setting, why: &str) {
        self.used.insert(s.name.to_ascii_lowercase());
        self.warnings
            .push(format!("{}: not carried over: {why}", s.name));
        self.dropped.push(format!("{} — {why}", s.line));
    }

    /// Carries `name` to `key` of `table` when `conv` accepts its value.
    fn map(
        &mut self,
        name: &str,
        table: &str,
        key: &str,
        conv: impl Fn(&str) -> Result<String, String>,
    ) {
        let Some(s) = self.take(name) else { return };
        match conv(&s.value) {
            Ok(v) => self.out.table(table).set(key, v, &s.line),
            Err(why) => self.drop_setting(s, &why),
        }
    }

    fn server(&mut self) {
        let port = self.get.get("port").map(|s| s.value.clone());
        if let Some(addrs) = self.take("listen_addresses") {
            let port = port.clone().unwrap_or_else(|| "9999".into());
            let (addr, extra) = listen_address(&addrs.value);
            if extra {
                self.warn(addrs, "tidepool listens on one address: the first is kept");
            }
            let lines = format!(
                "{}{}",
                addrs.line,
                self.get
                    .get("port")
                    .map(|p| format!("; {}", p.line))
                    .unwrap_or_default()
            );
            self.used.insert("port".into());
            self.out
                .table("server")
                .set("listen", str_value(&format!("{addr}:{port}")), &lines);
        } else if let Some(p) = self.take("port") {
            self.out.table("server").set(
                "listen",
                str_value(&format!("0.0.0.0:{}", p.value)),
                &p.line,
            );
        }
        if let Some(pcp) = self.take("pcp_port") {
            let addr = self
                .take("pcp_listen_addresses")
                .map(|a| listen_address(&a.value).0)
                .unwrap_or_else(|| "127.0.0.1".into());
            if addr != "127.0.0.1" && addr != "::1" {
                self.warn(
                    pcp,
                    "tidepool's admin HTTP API (what pcp_* commands become: tidepool ctl) \
                     takes a bearer token off loopback: set [server] admin_token_file",
                );
            }
            self.out.table("server").set(
                "admin_listen",
                str_value(&format!("{addr}:{}", pcp.value)),
                &pcp.line,
            );
        }
        self.map("num_init_children", "server", "max_client_connections", int);
        self.map(
            "client_idle_limit",
            "server",
            "client_idle_timeout",
            seconds,
        );
        self.map(
            "authentication_timeout",
            "server",
            "startup_timeout",
            positive_seconds,
        );
        self.map("logdir", "server", "state_dir", |v| Ok(str_value(v)));
    }

    fn pool(&mut self) {
        self.out
            .table("pool")
            .set("mode", str_value("session"), "Pgpool-II pools by session");
        if let Some(n) = self.get.get("num_init_children").copied() {
            // Each Pgpool-II child serves one client with its own
            // connection to each node: at most num_init_children
            // connections per node.
            if let Ok(v) = int(&n.value) {
                self.out.table("pool").set("max_size", v, &n.line);
            }
        }
        if let Some(s) = self.take("max_pool") {
            self.out.table("pool").comment(&format!(
                "{} — tidepool's pools are shared by all clients: max_size bounds each (node, user, database)",
                s.line
            ));
        }
        self.map("connection_life_time", "pool", "idle_timeout", seconds);
        self.map("reset_query_list", "pool", "reset_query", |v| {
            let kept: Vec<&str> = v
                .split(';')
                .map(str::trim)
                .filter(|q| !q.is_empty() && !q.eq_ignore_ascii_case("abort"))
                .collect();
            Ok(str_value(&kept.join("; ")))
        });
        self.map(
            "search_primary_node_timeout",
            "pool",
            "primary_wait_timeout",
            positive_seconds,
        );
        if let Some(s) = self.take("connection_cache")
            && !on(&s.value).unwrap_or(true)
        {
            self.drop_setting(s, "tidepool always keeps server connections for reuse");
        }
    }

    fn health_check(&mut self, input: &Input) {
        let t = "health_check";
        self.map("health_check_period", t, "period", positive_seconds);
        self.map("health_check_timeout", t, "timeout", positive_seconds);
        self.map("health_check_user", t, "user", |v| Ok(str_value(v)));
        self.map("health_check_database", t, "database", |v| {
            if v.is_empty() {
                Err("empty: tidepool uses its default, postgres".into())
            } else {
                Ok(str_value(v))
            }
        });
        self.map("health_check_max_retries", t, "max_retries", int);
        self.map("health_check_retry_delay", t, "retry_delay", seconds);
        self.map("connect_timeout", t, "connect_timeout", |v| {
            match v.parse::<u64>() {
                Ok(0) | Err(_) => {
                    Err("0 (no limit) is not allowed: tidepool keeps its default".into())
                }
                Ok(ms) => Ok(str_value(&format!("{ms}ms"))),
            }
        });
        if let Some(p) = self.take("health_check_password") {
            // Empty: Pgpool-II looks the user up in pool_passwd.
            let user = self
                .get
                .get("health_check_user")
                .map_or("nobody", |u| u.value.as_str());
            let from_passwd = input
                .pool_passwd
                .map(|text| conf::passwd(text, input.pgpoolkey))
                .into_iter()
                .flatten()
                .find_map(|(name, secret)| match secret {
                    Secret::Plain(pw) if name == user => Some(pw),
                    _ => None,
                });
            match p.value.as_str() {
                "" if from_passwd.is_some() => self.out.table(t).set(
                    "password",
                    str_value(&from_passwd.unwrap_or_default()),
                    &format!("{} (the user's pool_passwd entry)", p.line),
                ),
                "" => self.out.table(t).comment(&format!(
                    "{} — empty: Pgpool-II looks the user up in pool_passwd; tidepool needs [health_check] password when the server asks for one",
                    p.line
                )),
                v if v.starts_with("md5") || v.starts_with("AES") => self.drop_setting(
                    p,
                    "an encrypted password: tidepool needs it in plain text (or password_secret)",
                ),
                v => {
                    let v = v.strip_prefix("TEXT").unwrap_or(v);
                    self.out.table(t).set("password", str_value(v), &p.line)
                }
            }
        }
        for name in ["sr_check_user", "sr_check_password", "sr_check_database"] {
            if let Some(s) = self.take(name) {
                self.out.table(t).comment(&format!(
                    "{} — the lag sampler logs in as the health check does",
                    s.line
                ));
            }
        }
    }

    fn failover(&mut self) {
        let t = "failover";
        for (name, key) in [
            ("failover_on_backend_error", "failover_on_backend_error"),
            (
                "failover_on_backend_shutdown",
                "failover_on_backend_shutdown",
            ),
            ("detach_false_primary", "detach_false_primary"),
            ("auto_failback", "auto_failback"),
        ] {
            self.map(name, t, key, boolean);
        }
        self.map(
            "auto_failback_interval",
            t,
            "auto_failback_interval",
            seconds,
        );
        self.map("recovery_timeout", t, "recovery_timeout", positive_seconds);
        for name in ["failover_command", "follow_primary_command"] {
            let Some(s) = self.take(name) else { continue };
            if s.value.trim().is_empty() {
                continue;
            }
            self.out.table(t).set(name, str_value(&s.value), &s.line);
            if name == "failover_command" {
                self.warn(
                    s,
                    "tidepool runs it to promote a standby when the primary fails (same \
                     placeholders), never when a standby fails",
                );
            }
        }
    }

    fn load_balancing(&mut self) {
        let t = "load_balancing";
        self.map("load_balance_mode", t, "enabled", boolean);
        self.map(
            "statement_level_load_balance",
            t,
            "statement_level",
            boolean,
        );
        self.map("allow_sql_comments", t, "allow_sql_comments", boolean);
        self.map(
            "prefer_lower_delay_standby",
            t,
            "prefer_lower_delay_standby",
            boolean,
        );
        self.map(
            "disable_load_balance_on_write",
            t,
            "disable_on_write",
            |v| match v.to_ascii_lowercase().as_str() {
                w @ ("off" | "transaction" | "trans_transaction" | "always" | "dml_adaptive") => {
                    Ok(str_value(w))
                }
                other => Err(format!("unknown value {other:?}")),
            },
        );
        self.map("delay_threshold", t, "delay_threshold", int);
        self.map(
            "delay_threshold_by_time",
            t,
            "delay_threshold_by_time",
            |v| {
                v.parse::<u64>()
                    .map(|ms| str_value(&format!("{ms}ms")))
                    .map_err(|_| format!("not a number of milliseconds: {v:?}"))
            },
        );
        self.map("sr_check_period", t, "sr_check_period", |v| {
            match v.parse::<u64>() {
                Ok(0) => Err(
                    "0 turns Pgpool-II's lag check off; tidepool always samples lag \
                 (its thresholds, 0 by default, decide whether lag matters)"
                        .into(),
                ),
                _ => seconds(v),
            }
        });
        for (name, key) in [
            ("read_only_function_list", "read_only_functions"),
            ("write_function_list", "write_functions"),
        ] {
            self.map(name, t, key, |v| Ok(anchored_list(v, ',')));
        }
        self.map(
            "primary_routing_query_pattern_list",
            t,
            "primary_routing_patterns",
            |v| Ok(anchored_list(v, ';')),
        );
        self.map(
            "dml_adaptive_object_relationship_list",
            t,
            "dml_adaptive_relations",
            |v| {
                let items: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(str_value)
                    .collect();
                Ok(format!("[{}]", items.join(", ")))
            },
        );
        for name in [
            "database_redirect_preference_list",
            "app_name_redirect_preference_list",
        ] {
            self.map(name, t, name, |v| Ok(str_value(v)));
        }
        if let Some(s) = self.take("log_per_node_statement")
            && on(&s.value).unwrap_or(false)
        {
            self.out
                .table(t)
                .set("notice_per_node_statement", "true".into(), &s.line);
            self.warn(s, "tidepool tells the client in a NOTICE, not the log");
        }
        if let Some(s) = self.take("ignore_leading_white_space") {
            self.out.table(t).comment(&format!(
                "{} — statements are read with PostgreSQL's own grammar",
                s.line
            ));
        }
    }

    fn logging(&mut self) {
        self.map("log_min_messages", "logging", "level", |v| {
            Ok(str_value(match v.to_ascii_lowercase().as_str() {
                "error" | "fatal" | "panic" => "error",
                "warning" => "warn",
                "notice" | "info" | "log" => "info",
                "debug1" | "debug2" => "debug",
                _ => "trace",
            }))
        });
    }

    fn tls(&mut self) {
        let Some(ssl) = self.take("ssl") else { return };
        if !on(&ssl.value).unwrap_or(false) {
            return;
        }
        for (name, key) in [
            ("ssl_cert", "cert_file"),
            ("ssl_key", "key_file"),
            ("ssl_ca_cert", "ca_file"),
        ] {
            self.map(name, "tls", key, |v| Ok(str_value(v)));
        }
        self.out.table("tls").comment(&format!(
            "{} — TLS is on when cert_file and key_file are set",
            ssl.line
        ));
    }

    fn backends(&mut self) {
        let mut ids: Vec<usize> = self
            .get
            .keys()
            .filter_map(|k| k.strip_prefix("backend_hostname"))
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort_unstable();
        for id in ids {
            let host = self.take(&format!("backend_hostname{id}")).expect("listed");
            let name = self
                .take(&format!("backend_application_name{id}"))
                .map(|s| s.value.clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("pg{id}"));
            let mut b = Table::new(&format!("backend {id}"));
            b.set("name", str_value(&name), "");
            b.set("host", str_value(&host.value), &host.line);
            if host.value.contains(' ') {
                self.warn(
                    host,
                    "not a host name: replace it with the node's address before starting tidepool",
                );
            }
            let mut carry =
                |m: &mut Self, pg: &str, key: &str, conv: fn(&str) -> Result<String, String>| {
                    if let Some(s) = m.take(&format!("{pg}{id}")) {
                        match conv(&s.value) {
                            Ok(v) => b.set(key, v, &s.line),
                            Err(why) => m.drop_setting(s, &why),
                        }
                    }
                };
            carry(self, "backend_port", "port", int);
            carry(self, "backend_weight", "weight", |v| {
                v.parse::<f64>()
                    .map(|w| format!("{w:?}"))
                    .map_err(|_| format!("not a weight: {v:?}"))
            });
            carry(self, "backend_data_directory", "data_directory", |v| {
                Ok(str_value(v))
            });
            carry(self, "backend_flag", "flag", |v| {
                let flags: Vec<String> = v
                    .split('|')
                    .map(|f| f.trim().to_ascii_uppercase())
                    .collect();
                Ok(str_value(if flags.iter().any(|f| f == "ALWAYS_PRIMARY") {
                    "always_primary"
                } else if flags.iter().any(|f| f == "DISALLOW_TO_FAILOVER") {
                    "disallow_to_failover"
                } else {
                    "allow_to_failover"
                }))
            });
            carry(
                self,
                "health_check_period",
                "health_check_period",
                positive_seconds,
            );
            carry(
                self,
                "health_check_timeout",
                "health_check_timeout",
                positive_seconds,
            );
            carry(
                self,
                "health_check_max_retries",
                "health_check_max_retries",
                int,
            );
            carry(
                self,
                "health_check_retry_delay",
                "health_check_retry_delay",
                seconds,
            );
            carry(
                self,
                "connect_timeout",
                "health_check_connect_timeout",
                |v| match v.parse::<u64>() {
                    Ok(0) | Err(_) => Err("0 (no limit) is not allowed".into()),
                    Ok(ms) => Ok(str_value(&format!("{ms}ms"))),
                },
            );
            for per_node in [
                "health_check_user",
                "health_check_password",
                "health_check_database",
            ] {
                if let Some(s) = self.take(&format!("{per_node}{id}")) {
                    self.drop_setting(s, "tidepool has one health-check login for every node");
                }
            }
            self.out.push_array("backends", b);
        }
        if self.out.array_len("backends") == 0 {
            // Pgpool-II's default backend is the local server (over a Unix
            // socket, which tidepool does not use).
            let mut b = Table::new("backend 0");
            b.comment("no backend_hostname0: Pgpool-II's default, the local server");
            b.set("name", str_value("pg0"), "");
            b.set("host", str_value("127.0.0.1"), "");
            b.set("port", "5432".into(), "");
            self.out.push_array("backends", b);
            self.warnings.push(
                "backend_hostname0: not set; the backend is Pgpool-II's default, the local server (127.0.0.1:5432)"
                    .into(),
            );
        }
    }

    fn users(&mut self, input: &Input) {
        let Some(text) = input.pool_passwd else {
            let mut u = Table::new("users");
            u.set("name", str_value("USER"), "");
            u.set("password", str_value("PASSWORD"), "");
            self.out.commented("users", u);
            self.warnings.push(
                "pool_passwd: not given (--passwd): tidepool logs clients in itself and needs [[users]] with their passwords"
                    .into(),
            );
            return;
        };
        for (name, secret) in conf::passwd(text, input.pgpoolkey) {
            let mut u = Table::new(&format!("pool_passwd user {name}"));
            u.set("name", str_value(&name), "");
            match secret {
                Secret::Plain(p) => u.set("password", str_value(&p), ""),
                Secret::Verifier(v) => {
                    u.set("password", str_value(&v), "");
                    u.comment(
                        "pool_passwd holds only a verifier: tidepool needs the password it logs in to the servers with",
                    );
                    u.comment("backend_password = \"…\"   (or password_secret = \"…\")");
                    self.warnings.push(format!(
                        "pool_passwd {name}: a verifier only; set backend_password (or password_secret) before starting"
                    ));
                }
                Secret::Unreadable(_) => {
                    self.warnings.push(format!(
                        "pool_passwd {name}: AES-encrypted and no pgpoolkey (or not this one) to read it: pass --pgpoolkey; user left out"
                    ));
                    continue;
                }
            }
            self.out.push_array("users", u);
        }
    }

    fn hba(&mut self, input: &Input) {
        let enabled = self.take("enable_pool_hba");
        let Some(text) = input.pool_hba else {
            if enabled.is_some_and(|s| on(&s.value).unwrap_or(false)) {
                self.warnings.push(
                    "enable_pool_hba: on, but no pool_hba.conf given (--hba): tidepool's default asks every client for a SCRAM password".into(),
                );
            }
            return;
        };
        for l in conf::hba_lines(text) {
            match hba_rule(&l.fields) {
                Ok(fields) => {
                    let mut r = Table::new("hba");
                    let mut first = true;
                    for (k, v) in fields {
                        r.set(k, v, if first { &l.line } else { "" });
                        first = false;
                    }
                    self.out.push_array("hba", r);
                }
                Err(why) => {
                    self.warnings.push(format!(
                        "pool_hba.conf: {}: not carried over: {why}",
                        l.line
                    ));
                    self.dropped
                        .push(format!("pool_hba.conf: {} — {why}", l.line));
                }
            }
        }
    }

    fn watchdog(&mut self, input: &Input) {
        escalation::watchdog(self, input);
    }
}
