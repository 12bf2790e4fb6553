//! `tidepool ctl`: the operator's client for the admin HTTP API.
//!
//! It only speaks HTTP to a running tidepool; it never touches node state
//! itself, so whatever it does is exactly what a script calling the API
//! would do. Server refusals (4xx/5xx) become a non-zero exit with the
//! server's own message, so a failed `promote` can never look like success.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use crate::config::{Config, ConfigError};

/// Where the admin API is when nothing else says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9898";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API base URL [default: TIDEPOOL_ADMIN_URL, else the config's
    /// server.admin_listen, else http://127.0.0.1:9898].
    #[arg(long, global = true, env = "TIDEPOOL_ADMIN_URL")]
    pub url: Option<String>,
    /// Configuration file to take server.admin_listen and the admin token from.
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Admin token [default: the config's admin token, if -c is given].
    #[arg(
        long,
        global = true,
        env = "TIDEPOOL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON answer as it is.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on the request after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Show the node table: status, role, counters.
    Nodes,
    /// Attach a node (return it to service).
    Attach { node: String },
    /// Detach a node (stop routing to it).
    Detach { node: String },
    /// Promote a standby to primary.
    Promote {
        node: String,
        /// Planned switchover: demote the current primary cleanly first.
        #[arg(long)]
        switchover: bool,
    },
    /// Rebuild a failed node as a standby of the current primary.
    Recover { node: String },
    /// Show the watchdog's view of the tidepool nodes.
    Watchdog,
    /// Hand the service address to another tidepool node.
    Switchover {
        #[arg(long)]
        to: String,
    },
    /// Re-read the configuration file of the running server.
    Reload,
    /// Drop the query cache's results: of one table, or all of them.
    CacheInvalidate {
        /// Only results that read this table (in every database).
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{}", describe_config_errors(.path, .errors))]
    Config {
        path: PathBuf,
        errors: Vec<ConfigError>,
    },
    #[error("cannot read the admin token: {0}")]
    Token(std::io::Error),
    #[error("bad admin URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// `detail` holds the whole cause chain ("connection refused" sits
    /// several sources below reqwest's own message).
    #[error("cannot reach the admin API at {url}: {detail}")]
    Request { url: String, detail: String },
    /// The server refused; `message` is its own explanation.
    #[error("{status}: {message}")]
    Server { status: StatusCode, message: String },
}

fn describe_config_errors(path: &std::path::Path, errors: &[ConfigError]) -> String {
    let mut s = format!("{}: {} error(s)", path.display(), errors.len());
    for e in errors {
        s.push_str(&format!("\n  {e}"));
    }
    s
}

/// Runs one command and returns what to print on success.
pub async fn run(args: CtlArgs) -> Result<String, CtlError> {
    let config = match &args.config {
        Some(path) => Some(Config::load(path).map_err(|errors| CtlError::Config {
            path: path.clone(),
            errors,
        })?),
        None => None,
    };
    let base = base_url(args.url.as_deref(), config.as_ref())?;
    let token = match (&args.token, &config) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(c)) => c.admin_token().map_err(CtlError::Token)?,
        (None, None) => None,
    };
    let (method, path, body) = request_for(&args.command);
    let url = endpoint(&base, &path)?;
    let answer = call(&url, method, body, token.as_deref(), args.timeout).await?;
    Ok(if args.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        )
    } else {
        render(&args.command, &answer)
    })
}

/// The base URL: the flag or environment, else the configured admin
/// address (a wildcard address is reached over loopback), else the default.
pub fn base_url(flag: Option<&str>, config: Option<&Config>) -> Result<Url, CtlError> {
    let text = match (flag, config) {
        (Some(u), _) => u.to_string(),
        (None, Some(c)) => format!("http://{}", reachable(c.server.admin_listen)),
        (None, None) => DEFAULT_URL.to_string(),
    };
    let url = Url::parse(&text).map_err(|e| CtlError::Url {
        url: text.clone(),
        reason: e.to_string(),
    })?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err(CtlError::Url {
            url: text,
            reason: "expected http://host:port".into(),
        });
    }
    Ok(url)
}

fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The method, path segments and body of the API request for `cmd`.
pub fn request_for(cmd: &CtlCommand) -> (Method, Vec<String>, Option<Value>) {
    let segs = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let node = |n: &str, action: &str| segs(&["v1", "nodes", n, action]);
    match cmd {
        CtlCommand::Nodes => (Method::GET, segs(&["v1", "nodes"]), None),
        CtlCommand::Attach { node: n } => (Method::POST, node(n, "attach"), None),
        CtlCommand::Detach { node: n } => (Method::POST, node(n, "detach"), None),
        CtlCommand::Promote {
            node: n,
            switchover,
        } => (
            Method::POST,
            node(n, "promote"),
            Some(json!({ "switchover": switchover })),
        ),
        CtlCommand::Recover { node: n } => (Method::POST, node(n, "recover"), None),
        CtlCommand::Watchdog => (Method::GET, segs(&["v1", "watchdog"]), None),
        CtlCommand::Switchover { to } => (
            Method::POST,
            segs(&["v1", "watchdog", "switchover"]),
            Some(json!({ "to": to })),
        ),
        CtlCommand::Reload => (Method::POST, segs(&["v1", "reload"]), None),
        CtlCommand::CacheInvalidate { table } => (
            Method::POST,
            segs(&["v1", "cache", "invalidate"]),
            table.as_ref().map(|t| json!({ "table": t })),
        ),
    }
}

/// `base` with `segments` appended, each percent-encoded (node names are
/// user input).
fn endpoint(base: &Url, segments: &[String]) -> Result<Url, CtlError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| CtlError::Url {
            url: base.to_string(),
            reason: "cannot append a path".into(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

async fn call(
    url: &Url,
    method: Method,
    body: Option<Value>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let failed = |e: reqwest::Error| CtlError::Request {
        url: url.to_string(),
        detail: cause_chain(&e),
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(failed)?;
    let mut req = client.request(method, url.clone());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = &body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(failed)?;
    let status = resp.status();
    let text = resp.text().await.map_err(failed)?;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    if status.is_success() {
        Ok(value)
    } else {
        Err(CtlError::Server {
            status,
            message: server_message(&value),
        })
    }
}

fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// The server's explanation of a refusal: its `error` (or `reason`),
/// followed by every itemised `path: message`.
fn server_message(v: &Value) -> String {
    let mut msg = v
        .get("error")
        .or_else(|| v.get("reason"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| match v {
            Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
            Value::String(_) => "(no message)".to_string(),
            other => other.to_string(),
        });
    for e in v
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = e.get("path").and_then(Value::as_str).unwrap_or("");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        if path.is_empty() {
            msg.push_str(&format!("\n  {message}"));
        } else {
            msg.push_str(&format!("\n  {path}: {message}"));
        }
    }
    msg
}

/// Human output for a successful answer.
pub fn render(cmd: &CtlCommand, answer: &Value) -> String {
    match cmd {
        CtlCommand::Nodes => render_nodes(answer),
        CtlCommand::Reload => render_reload(answer),
        _ => match answer.get("message").and_then(Value::as_str) {
            Some(m) => format!("{m}\n"),
            None => format!(
                "{}\n",
                serde_json::to_string_pretty(answer).unwrap_or_default()
            ),
        },
    }
}

fn render_reload(answer: &Value) -> String {
    let o = &answer["outcome"];
    let mut s = format!(
        "configuration reloaded: {} pool(s) updated, backends {}\n",
        o["pools_updated"].as_u64().unwrap_or(0),
        if o["backends_changed"].as_bool().unwrap_or(false) {
            "changed"
        } else {
            "unchanged"
        }
    );
    for key in o["needs_restart"].as_array().into_iter().flatten() {
        if let Some(k) = key.as_str() {
            s.push_str(&format!("needs a restart to take effect: {k}\n"));
        }
    }
    s
}

/// The node table as aligned columns.
pub fn render_nodes(answer: &Value) -> String {
    let header = [
        "id",
        "name",
        "host:port",
        "status",
        "role",
        "reachable",
        "tls",
        "selects",
        "last change",
    ];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let rows: Vec<[String; 9]> = answer["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            [
                text(&n["id"]),
                text(&n["name"]),
                format!("{}:{}", text(&n["host"]), text(&n["port"])),
                text(&n["status"]),
                text(&n["role"]),
                if n["reachable"].as_bool().unwrap_or(false) {
                    "yes".into()
                } else {
                    "no".into()
                },
                match (n["ssl"].as_bool(), n["sslmode"].as_str()) {
                    (Some(true), Some(m)) => format!("on ({m})"),
                    (Some(false), Some(m)) => format!("off ({m})"),
                    (_, Some(m)) => format!("- ({m})"),
                    _ => "-".into(),
                },
                text(&n["selects"]),
                short_time(&n["last_status_change"]),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(&header.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for r in &rows {
        out.push_str(&line(r));
    }
    if rows.is_empty() {
        out.push_str("(no nodes configured)\n");
    }
    out
}

/// An RFC 3339 time to whole seconds; anything else as it came.
fn short_time(v: &Value) -> String {
    match v.as_str() {
        Some(t) => humantime::parse_rfc3339_weak(t)
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|_| t.to_string()),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_prefers_the_flag_then_the_config_then_the_default() {
        let mut c = Config::default();
        c.server.admin_listen = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(
            base_url(Some("http://10.0.0.1:1234"), Some(&c))
                .unwrap()
                .as_str(),
            "http://10.0.0.1:1234/"
        );
        assert_eq!(
            base_url(None, Some(&c)).unwrap().as_str(),
            "http://127.0.0.1:7000/"
        );
        c.server.admin_listen = "[::]:7000".parse().unwrap();
        assert_eq!(
            base_url(None, Some(&c)).unwrap().as_str(),
            "http://[::1]:7000/"
        );
        assert_eq!(
            base_url(None, None).unwrap().as_str(),
            "http://127.0.0.1:9898/"
        );
        assert!(base_url(Some("localhost:9898"), None).is_err());
    }

    #[test]
    fn node_names_are_percent_encoded_into_one_segment() {
        let base = base_url(Some("http://127.0.0.1:9898/admin/"), None).unwrap();
        let (method, path, _) = request_for(&CtlCommand::Detach {
            node: "a/b c".into(),
        });
        assert_eq!(method, Method::POST);
        assert_eq!(
            endpoint(&base, &path).unwrap().as_str(),
            "http://127.0.0.1:9898/admin/v1/nodes/a%2Fb%20c/detach"
        );
    }

    #[test]
    fn server_refusals_list_every_keyed_error() {
        let v = json!({
            "error": "configuration rejected (2 error(s)); nothing was changed",
            "errors": [
                { "path": "pool.max_size", "message": "must be at least 1" },
                { "path": "", "message": "file unreadable" },
            ],
        });
        assert_eq!(
            server_message(&v),
            "configuration rejected (2 error(s)); nothing was changed\n  pool.max_size: must be at least 1\n  file unreadable"
        );
        assert_eq!(server_message(&json!("plain text\n")), "plain text");
    }

    #[test]
    fn the_node_table_is_aligned_with_one_row_per_node() {
        let v = json!({ "nodes": [
            { "id": 0, "name": "pg0", "host": "10.0.1.10", "port": 5432, "status": "up",
              "role": "primary", "reachable": true, "selects": 12,
              "last_status_change": "2024-05-01T10:00:00.123456789Z" },
            { "id": 1, "name": "replica-long", "host": "h", "port": 5433, "status": "waiting",
              "role": "unknown", "reachable": false, "selects": 0,
              "last_status_change": "2024-05-01T10:00:01Z" },
        ]});
        let out = render_nodes(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("id  name          host:port"), "{out}");
        assert!(lines[2].contains("10.0.1.10:5432"));
        assert!(lines[2].contains("yes"));
        assert!(lines[2].ends_with("2024-05-01T10:00:00Z"), "{out}");
        assert!(lines[3].contains("replica-long  h:5433"), "{out}");
        assert_eq!(lines[2].find("up"), lines[3].find("waiting"));
    }
}
