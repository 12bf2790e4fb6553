//! Parsing that reports every problem at once, each with its key path.

use std::collections::HashSet;

use serde::de::DeserializeOwned;

use super::{Config, PoolMode};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Key path such as `backends[1].port`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// More threads than this is a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

const SECTIONS: &[&str] = &[
    "server",
    "pool",
    "health_check",
    "failover",
    "load_balancing",
    "query_cache",
    "logging",
    "backends",
    "clusters",
    "users",
    "hba",
    "tls",
    "backend_defaults",
    "cert_map",
    "watchdog",
    "escalation",
];

/// Deserializes one value, naming the failing key relative to `prefix`.
fn section<T: DeserializeOwned + Default>(
    value: Option<&toml::Value>,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> T {
    let Some(value) = value else {
        return T::default();
    };
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(v) => v,
        Err(e) => {
            let each = key_errors::<T>(value, prefix);
            if each.is_empty() {
                errors.push(error_at(prefix, &e));
            } else {
                errors.extend(each);
            }
            T::default()
        }
    }
}

/// The error of every key of a table that does not deserialize on its own
/// (deserialization stops at the first bad key; this finds them all).
/// "missing field" errors are left out: a key alone lacks its siblings.
fn key_errors<T: DeserializeOwned>(value: &toml::Value, prefix: &str) -> Vec<ConfigError> {
    let Some(table) = value.as_table() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in table {
        let mut one = toml::Table::new();
        one.insert(k.clone(), v.clone());
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(toml::Value::Table(one))
            && !e.inner().message().starts_with("missing field")
        {
            out.push(error_at(prefix, &e));
        }
    }
    out
}

/// Deserializes every element of an array of tables on its own, so that one
/// bad entry does not hide the errors of the others.
fn entries<T: DeserializeOwned>(
    value: Option<&toml::Value>,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
    positions: &mut Vec<usize>,
) -> Vec<T> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(
            prefix,
            format!("must be an array of tables ([[{prefix}]] entries)"),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{prefix}[{i}]");
        match serde_path_to_error::deserialize::<_, T>(item.clone()) {
            Ok(v) => {
                out.push(v);
                positions.push(i);
            }
            Err(e) => {
                let each = key_errors::<T>(item, &path);
                if each.is_empty() {
                    errors.push(error_at(&path, &e));
                } else {
                    errors.extend(each);
                }
            }
        }
    }
    out
}

fn error_at(prefix: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let inner = e.path().to_string();
    let path = match inner.as_str() {
        "." | "" => prefix.to_string(),
        p => format!("{prefix}.{p}"),
    };
    // toml's message may carry its own position text; keep the first line.
    let msg = e
        .inner()
        .message()
        .lines()
        .next()
        .unwrap_or("invalid value");
    ConfigError::new(path, msg.to_string())
}

/// Parses `text` and checks it, with `more` checks of what a configuration
/// compiles to (they live with the compiler: `app::runtime::checks`).
pub(super) fn parse_and_validate(
    text: &str,
    more: &dyn Fn(&Config) -> Vec<ConfigError>,
) -> Result<Config, Vec<ConfigError>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        vec![ConfigError::new(
            at,
            format!("TOML syntax: {}", e.message()),
        )]
    })?;
    let mut errors = Vec::new();
    let mut positions: [Vec<usize>; 3] = Default::default();
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                key.clone(),
                format!("unknown section; expected one of {}", SECTIONS.join(", ")),
            ));
        }
    }
    let mut config = Config {
        server: section(table.get("server"), "server", &mut errors),
        pool: section(table.get("pool"), "pool", &mut errors),
        health_check: section(table.get("health_check"), "health_check", &mut errors),
        failover: section(table.get("failover"), "failover", &mut errors),
        load_balancing: section(table.get("load_balancing"), "load_balancing", &mut errors),
        query_cache: section(table.get("query_cache"), "query_cache", &mut errors),
        logging: section(table.get("logging"), "logging", &mut errors),
        backends: entries(
            table.get("backends"),
            "backends",
            &mut errors,
            &mut positions[0],
        ),
        clusters: entries(
            table.get("clusters"),
            "clusters",
            &mut errors,
            &mut Vec::new(),
        ),
        users: entries(table.get("users"), "users", &mut errors, &mut positions[1]),
        hba: entries(table.get("hba"), "hba", &mut errors, &mut positions[2]),
        tls: section(table.get("tls"), "tls", &mut errors),
        backend_defaults: section(
            table.get("backend_defaults"),
            "backend_defaults",
            &mut errors,
        ),
        cert_map: entries(
            table.get("cert_map"),
            "cert_map",
            &mut errors,
            &mut Vec::new(),
        ),
        watchdog: section(table.get("watchdog"), "watchdog", &mut errors),
        escalation: section(table.get("escalation"), "escalation", &mut errors),
    };
    // Every backend carries its complete TLS and login settings from here on.
    let defaults = config.backend_defaults.clone();
    for b in &mut config.backends {
        b.apply_defaults(&defaults);
    }
    for c in &mut config.clusters {
        c.apply_defaults(&defaults);
    }
    // Entries that failed to parse are missing from `config`: point the
    // semantic errors at the entries' places in the file.
    // Entries that failed to parse already have their errors: "none at
    // all" would be a second, wrong one.
    let declared = |section: &str| {
        table
            .get(section)
            .and_then(toml::Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let (backends_declared, users_declared) = (declared("backends"), declared("users"));
    for mut e in semantic_errors(&config).into_iter().chain(more(&config)) {
        if (e.path == "backends" && backends_declared) || (e.path == "users" && users_declared) {
            continue;
        }
        for (section, pos) in ["backends", "users", "hba"].iter().zip(&positions) {
            if let Some(rest) = e.path.strip_prefix(&format!("{section}["))
                && let Some((n, tail)) = rest.split_once(']')
                && let Ok(n) = n.parse::<usize>()
                && let Some(orig) = pos.get(n)
            {
                e.path = format!("{section}[{orig}]{tail}");
            }
        }
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Advice that does not stop tidepool: files holding secrets that every
/// user of the machine can read (the configuration when it carries
/// plaintext passwords or a token, private keys, the token file).
pub fn file_warnings(c: &Config, config_path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let world_readable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    };
    let hashed = |p: &str| {
        p.starts_with("SCRAM-SHA-256$")
            || (p.len() == 35
                && p.starts_with("md5")
                && p[3..].chars().all(|c| c.is_ascii_hexdigit()))
    };
    let plaintext =
        c.users.iter().any(|u| {
            (!u.password.is_empty() && !hashed(&u.password)) || u.backend_password.is_some()
        }) || c.health_check.password.is_some()
            || c.server.admin_token.is_some();
    let mut out = Vec::new();
    if plaintext && world_readable(config_path) {
        out.push(format!(
            "{} holds plaintext passwords or tokens and every user can read it: chmod 600 it \
             (or use SCRAM verifiers, password_secret and admin_token_file)",
            config_path.display()
        ));
    }
    let mut secrets: Vec<(&str, &String)> = Vec::new();
    if let Some(f) = &c.server.admin_token_file {
        secrets.push(("server.admin_token_file", f));
    }
    if let Some(f) = &c.tls.key_file {
        secrets.push(("tls.key_file", f));
    }
    for b in &c.backends {
        if let Some(f) = &b.sslkey {
            secrets.push(("backends.sslkey", f));
        }
    }
    for (key, file) in secrets {
        if world_readable(std::path::Path::new(file)) {
            out.push(format!(
                "{key}: {file} is readable by every user: chmod 600 it"
            ));
        }
    }
    out
}

/// Whether tidepool can keep its state file in `dir`: an existing
/// directory it can write, or one it can create.
fn writable_dir(dir: &std::path::Path) -> Result<(), String> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        let probe = dir.join(format!(".tidepool-check-{}", std::process::id()));
        return match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(e) => Err(format!(
                "{} is not writable ({e}): node fences could not be persisted",
                dir.display()
            )),
        };
    }
    // Created at start: the nearest existing parent must take it.
    let parent = dir
        .ancestors()
        .skip(1)
        .map(|a| {
            if a.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists());
    match parent {
        Some(parent) => writable_dir(parent).map_err(|e| {
            format!(
                "{} does not exist and cannot be created: {e}",
                dir.display()
            )
        }),
        None => Err(format!("{} cannot be created", dir.display())),
    }
}

/// Checks that need more than one key, or a value's meaning.
pub fn semantic_errors(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push(ConfigError::new(path, msg));

    if c.backends.is_empty() && c.clusters.is_empty() {
        err(
            "backends".into(),
            "at least one [[backends]] (or a [[clusters]]) entry is required".into(),
        );
    }
    for e in super::clusters::errors(&c.clusters, &c.backends) {
        err(e.path, e.message);
    }
    if c.users.is_empty() {
        err(
            "users".into(),
            "no [[users]] entry: no client could log in (tidepool logs in to the backends as these users)"
                .into(),
        );
    }
    if let Some(dir) = &c.server.state_dir
        && let Err(e) = writable_dir(std::path::Path::new(dir))
    {
        err("server.state_dir".into(), e);
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, b) in c.backends.iter().enumerate() {
        if b.name.trim().is_empty() {
            err(format!("backends[{i}].name"), "must not be empty".into());
        } else if !names.insert(b.name.as_str()) {
            err(
                format!("backends[{i}].name"),
                format!("duplicate backend name {:?}; names must be unique", b.name),
            );
        }
        if b.host.trim().is_empty() {
            err(format!("backends[{i}].host"), "must not be empty".into());
        }
        if b.port == 0 {
            err(format!("backends[{i}].port"), "must be 1..=65535".into());
        }
        if !addrs.insert((b.host.as_str(), b.port)) {
            err(
                format!("backends[{i}]"),
                format!("{}:{} is configured twice", b.host, b.port),
            );
        }
        if !(b.weight.is_finite() && b.weight >= 0.0) {
            err(
                format!("backends[{i}].weight"),
                "must be a finite number >= 0 (0 = never a read target)".into(),
            );
        }
    }
    if c.pool.max_size == 0 {
        err("pool.max_size".into(), "must be at least 1".into());
    }
    if c.pool.mode == PoolMode::Session && c.pool.reset_query.trim().is_empty() {
        // Allowed, but worth knowing: session state leaks between clients.
    }
    if c.server.max_startup_connections == 0 {
        err(
            "server.max_startup_connections".into(),
            "must be at least 1".into(),
        );
    }
    if c.server.max_client_connections == 0 {
        err(
            "server.max_client_connections".into(),
            "must be at least 1".into(),
        );
    }
    if c.server.worker_threads > MAX_WORKER_THREADS {
        err(
            "server.worker_threads".into(),
            format!("must be at most {MAX_WORKER_THREADS} (0 = one per CPU)"),
        );
    }
    if c.server.listen == c.server.admin_listen {
        err(
            "server.admin_listen".into(),
            "must differ from server.listen".into(),
        );
    }
    if !c.server.admin_listen.ip().is_loopback()
        && c.server.admin_token.is_none()
        && c.server.admin_token_file.is_none()
    {
        err(
            "server.admin_token".into(),
            format!(
                "admin_listen {} is not loopback: set admin_token or admin_token_file",
                c.server.admin_listen
            ),
        );
    }
    if c.server.admin_listen.ip().is_loopback()
        && !c.server.admin_allow_unauthenticated_loopback
        && c.server.admin_token.is_none()
        && c.server.admin_token_file.is_none()
    {
        err(
            "server.admin_token".into(),
            "admin_allow_unauthenticated_loopback is false: set admin_token or admin_token_file"
                .into(),
        );
    }
    if (c.server.admin_token.is_some() || c.server.admin_token_file.is_some())
        && let Err(e) = c.admin_token()
    {
        let key = if c.server.admin_token.is_some() {
            "server.admin_token"
        } else {
            "server.admin_token_file"
        };
        err(key.into(), e.to_string());
    }
    if c.server.admin_token.is_some() && c.server.admin_token_file.is_some() {
        err(
            "server.admin_token_file".into(),
            "set admin_token or admin_token_file, not both".into(),
        );
    }
    if c.health_check.period.is_zero() {
        err(
            "health_check.period".into(),
            "must be greater than 0".into(),
        );
    }
    if c.health_check.timeout.is_zero() {
        err(
            "health_check.timeout".into(),
            "must be greater than 0".into(),
        );
    }
    if c.health_check.connect_timeout.is_zero() {
        err(
            "health_check.connect_timeout".into(),
            "must be greater than 0".into(),
        );
    }
    for (i, b) in c.backends.iter().enumerate() {
        for (key, v) in [
            ("health_check_period", b.health_check_period),
            ("health_check_timeout", b.health_check_timeout),
            (
                "health_check_connect_timeout",
                b.health_check_connect_timeout,
            ),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                err(
                    format!("backends[{i}].{key}"),
                    "must be greater than 0".into(),
                );
            }
        }
        if let Some(d) = &b.data_directory
            && !std::path::Path::new(d).is_absolute()
        {
            err(
                format!("backends[{i}].data_directory"),
                "must be an absolute path".into(),
            );
        }
    }
    if c.failover.replication_password.is_some() && c.failover.replication_user.is_none() {
        err(
            "failover.replication_user".into(),
            "replication_password is set: also set replication_user".into(),
        );
    }
    if c.pool.connect_timeout.is_zero() {
        err(
            "pool.connect_timeout".into(),
            "must be greater than 0".into(),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.logging.level) {
        err("logging.level".into(), format!("not a valid filter: {e}"));
    }
    let mut users = HashSet::new();
    for (i, u) in c.users.iter().enumerate() {
        if !users.insert(u.name.as_str()) {
            err(
                format!("users[{i}].name"),
                format!("duplicate user {:?}", u.name),
            );
        }
        if let Some(arn) = &u.password_secret
            && arn.trim().is_empty()
        {
            err(
                format!("users[{i}].password_secret"),
                "must not be empty".into(),
            );
        }
        if u.pool_max_size == Some(0) {
            err(
                format!("users[{i}].pool_max_size"),
                "must be at least 1".into(),
            );
        }
    }
    errors.extend(super::watchdog::validate(
        c.watchdog.as_ref(),
        c.escalation.as_ref(),
    ));
    errors.extend(super::query_cache::validate(
        &c.query_cache,
        c.watchdog.is_some(),
    ));
    errors
}

#[cfg(test)]
mod tests {
    #[test]
    fn empty_admin_tokens_are_refused() {
        let base =
            "[[backends]]\nname = \"a\"\nhost = \"h\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n";
        let errs =
            Config::load_str(&format!("[server]\nadmin_token = \"  \"\n{base}")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path == "server.admin_token" && e.message.contains("empty")),
            "{errs:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\n").unwrap();
        let text = format!(
            "[server]\nadmin_token_file = \"{}\"\n{base}",
            file.display()
        );
        let errs = Config::load_str(&text).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path == "server.admin_token_file" && e.message.contains("empty")),
            "{errs:?}"
        );
        std::fs::remove_file(&file).unwrap();
        let errs = Config::load_str(&text).unwrap_err();
        assert!(
            errs.iter().any(|e| e.path == "server.admin_token_file"),
            "{errs:?}"
        );
        std::fs::write(&file, "s3cret\n").unwrap();
        assert!(Config::load_str(&text).is_ok());
    }

    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:9999"
[[backends]]
name = "pg0"
host = "127.0.0.1"
[[users]]
name = "app"
password = "secret"
"#;

    #[test]
    fn every_bad_key_of_a_section_is_reported_not_only_the_first() {
        let text = format!(
            "{MINIMAL}[pool]\nmax_size = \"many\"\ncheckout_timeout = 7\nmode = \"sometimes\"\n"
        );
        let errs = Config::load_str(&text).unwrap_err();
        for key in ["pool.max_size", "pool.checkout_timeout", "pool.mode"] {
            assert!(errs.iter().any(|e| e.path == key), "{key}: {errs:?}");
        }
        // Within one [[backends]] entry too, and with no spurious "at least
        // one [[backends]]" when the only entry is the one with mistakes.
        let text = "[[backends]]\nname = \"a\"\nhost = \"h\"\nport = \"x\"\nweight = \"heavy\"\n\
                    [[users]]\nname = \"u\"\npassword = \"p\"\n";
        let errs = Config::load_str(text).unwrap_err();
        assert!(
            errs.iter().any(|e| e.path == "backends[0].port"),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.path == "backends[0].weight"),
            "{errs:?}"
        );
        assert!(!errs.iter().any(|e| e.path == "backends"), "{errs:?}");
    }

    #[test]
    fn world_readable_secrets_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidepool.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load_str(MINIMAL).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = file_warnings(&c, &path);
        assert!(w.iter().any(|w| w.contains("plaintext")), "{w:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(file_warnings(&c, &path).is_empty());
        // A SCRAM verifier is not a password.
        let hashed = MINIMAL.replace(
            "password = \"secret\"",
            "password = \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"",
        );
        let c = Config::load_str(&hashed).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(file_warnings(&c, &path).is_empty());
    }

    #[test]
    fn a_config_no_client_can_use_is_refused() {
        let errs = Config::load_str("[[backends]]\nname = \"a\"\nhost = \"h\"\n").unwrap_err();
        assert!(errs.iter().any(|e| e.path == "users"), "{errs:?}");
    }

    #[test]
    fn the_state_dir_must_be_usable() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("state/sub");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let under_file = file.join("state");
        let text = |d: &std::path::Path| {
            format!(
                "[server]\nlisten = \"127.0.0.1:9999\"\nstate_dir = \"{}\"\n{}",
                d.display(),
                MINIMAL.replacen("[server]\nlisten = \"127.0.0.1:9999\"\n", "", 1)
            )
        };
        assert!(Config::load_str(&text(&ok)).is_ok());
        assert!(Config::load_str(&text(dir.path())).is_ok());
        for bad in [&file, &under_file] {
            let errs = Config::load_str(&text(bad)).unwrap_err();
            assert!(
                errs.iter().any(|e| e.path == "server.state_dir"),
                "{}: {errs:?}",
                bad.display()
            );
        }
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::load_str(MINIMAL).unwrap();
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.backends[0].port, 5432);
        assert_eq!(c.backends[0].weight, 1.0);
        assert_eq!(c.server.admin_listen.port(), 9898);
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let text = r#"
bogus = 1
[server]
listen = "127.0.0.1:9999"
[pool]
mode = "statement"
[[backends]]
name = "pg0"
host = "127.0.0.1"
port = "x"
[[backends]]
name = "pg1"
host = "127.0.0.1"
weight = -1.0
colour = "blue"
[[backends]]
name = "pg2"
host = "h"
weight = -2.0
"#;
        let errs = Config::load_str(text).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"bogus"), "{errs:?}");
        assert!(paths.contains(&"pool.mode"), "{errs:?}");
        assert!(paths.contains(&"backends[0].port"), "{errs:?}");
        assert!(
            paths.iter().any(|p| p.starts_with("backends[1]")),
            "{errs:?}"
        );
        assert!(paths.contains(&"backends[2].weight"), "{errs:?}");
    }

    #[test]
    fn worker_threads_defaults_to_one_per_cpu_and_is_bounded() {
        assert_eq!(Config::load_str(MINIMAL).unwrap().server.worker_threads, 0);
        let two = MINIMAL.replace("[server]\n", "[server]\nworker_threads = 2\n");
        assert_eq!(Config::load_str(&two).unwrap().server.worker_threads, 2);
        let absurd = MINIMAL.replace("[server]\n", "[server]\nworker_threads = 100000\n");
        let errs = Config::load_str(&absurd).unwrap_err();
        assert!(
            errs.iter().any(|e| e.path == "server.worker_threads"),
            "{errs:?}"
        );
    }

    #[test]
    fn durations_are_human_readable() {
        let text =
            format!("{MINIMAL}\n[pool]\ncheckout_timeout = \"250ms\"\nidle_timeout = \"2m\"\n");
        let c = Config::load_str(&text).unwrap();
        assert_eq!(c.pool.checkout_timeout.as_millis(), 250);
        assert_eq!(c.pool.idle_timeout.as_secs(), 120);
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let text = MINIMAL.replace("[server]\n", "[server]\nadmin_listen = \"0.0.0.0:9898\"\n");
        let errs = Config::load_str(&text).unwrap_err();
        assert_eq!(errs[0].path, "server.admin_token");
    }

    #[test]
    fn loopback_admin_needs_a_token_once_unauthenticated_access_is_off() {
        assert!(
            Config::load_str(MINIMAL)
                .unwrap()
                .server
                .admin_allow_unauthenticated_loopback
        );
        let off = MINIMAL.replace(
            "[server]\n",
            "[server]\nadmin_allow_unauthenticated_loopback = false\n",
        );
        let errs = Config::load_str(&off).unwrap_err();
        assert_eq!(errs[0].path, "server.admin_token");
        assert!(
            errs[0]
                .message
                .contains("admin_allow_unauthenticated_loopback"),
            "{errs:?}"
        );
        let with_token = off.replace("[server]\n", "[server]\nadmin_token = \"s3cret\"\n");
        assert!(Config::load_str(&with_token).is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errs = Config::load_str("[server\nlisten=1").unwrap_err();
        assert!(errs[0].path.starts_with("line "), "{errs:?}");
    }
}
