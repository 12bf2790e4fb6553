//! Host-based authentication: which method a connection must pass, chosen
//! by ordered rules in the manner of `pg_hba.conf`.
//!
//! ```toml
//! [[hba]]
//! type = "hostssl"                # host | hostssl | hostnossl
//! database = ["app", "reports"]   # "all", "sameuser", a name, or a list
//! user = "all"                    # "all", a name, or a list
//! address = ["10.0.0.0/8", "fd00::/8"]   # "all", CIDRs or single addresses
//! method = "scram-sha-256"        # scram-sha-256 | md5 | password | cert | trust | reject
//! clientcert = "verify-full"      # optional: verify-ca | verify-full
//! ```
//!
//! `hostssl` rules match TLS connections only, `hostnossl` plaintext ones.
//! `cert` lets a client in by its TLS certificate alone: the certificate's
//! common name must be the user (or map to it, see `[[cert_map]]`).
//! `clientcert` adds a certificate check to a password method, as in
//! PostgreSQL: `verify-ca` asks for a certificate signed by `tls.ca_file`,
//! `verify-full` also for its common name to be the user.
//!
//! The first rule that matches decides; when none matches the connection
//! is refused, as in PostgreSQL. The file holds [`HbaRuleConfig`]s, which
//! stay strings so that [`Hba::validate`] can report every mistake with
//! its key at once; [`Hba::from_config`] turns them into typed [`HbaRule`]s.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::error::AuthError;
use super::secret::Secret;
pub use crate::config::{HbaRuleConfig, OneOrMany};

/// Which connections a rule covers by transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// Any TCP connection.
    Host,
    /// TCP connections that negotiated TLS.
    HostSsl,
    /// TCP connections without TLS.
    HostNoSsl,
}

impl ConnType {
    fn matches(self, tls: bool) -> bool {
        match self {
            ConnType::Host => true,
            ConnType::HostSsl => tls,
            ConnType::HostNoSsl => !tls,
        }
    }
}

/// Which database or user names a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    All,
    Only(Vec<Name>),
}

/// One entry of a name list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// The name itself, compared exactly.
    Exact(String),
    /// Databases only: the database named like the connecting user.
    SameUser,
}

impl Matcher {
    fn matches(&self, name: &str, user: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Only(names) => names.iter().any(|entry| match entry {
                Name::Exact(exact) => exact == name,
                Name::SameUser => name == user,
            }),
        }
    }
}

/// Which client addresses a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressMatch {
    All,
    Nets(Vec<IpNet>),
}

impl AddressMatch {
    fn matches(&self, peer: IpAddr) -> bool {
        match self {
            AddressMatch::All => true,
            AddressMatch::Nets(nets) => {
                // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d;
                // IPv4 rules must still apply to them.
                let mapped = match peer {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                    IpAddr::V4(_) => None,
                };
                nets.iter()
                    .any(|net| net.contains(&peer) || mapped.is_some_and(|v4| net.contains(&v4)))
            }
        }
    }
}

/// How a client must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Let in without a password.
    Trust,
    /// MD5 challenge-response (SCRAM instead when the secret is a verifier).
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// Cleartext password; only sensible over TLS.
    Password,
    /// The client's TLS certificate, whose common name names the user.
    Cert,
    /// Refuse.
    Reject,
}

impl Method {
    /// The name used in the config file (and in pg_hba.conf).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::Md5 => "md5",
            Method::ScramSha256 => "scram-sha-256",
            Method::Password => "password",
            Method::Cert => "cert",
            Method::Reject => "reject",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "trust" => Method::Trust,
            "md5" => Method::Md5,
            "scram-sha-256" => Method::ScramSha256,
            "password" => Method::Password,
            "cert" => Method::Cert,
            "reject" => Method::Reject,
            other => {
                return Err(format!(
                    "unsupported method \"{other}\"; use one of scram-sha-256, md5, \
                     password, cert, trust, reject"
                ));
            }
        })
    }
}

/// A client certificate check a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// A certificate signed by `tls.ca_file`.
    VerifyCa,
    /// That, and its common name is the user.
    VerifyFull,
}

/// One typed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    pub conn_type: ConnType,
    pub databases: Matcher,
    pub users: Matcher,
    pub address: AddressMatch,
    pub method: Method,
    /// `cert` always implies `VerifyFull`.
    pub clientcert: Option<ClientCert>,
}

impl HbaRule {
    fn matches(&self, user: &str, database: &str, peer: IpAddr, tls: bool) -> bool {
        self.conn_type.matches(tls)
            && self.databases.matches(database, user)
            && self.users.matches(user, user)
            && self.address.matches(peer)
    }
}

/// A problem in one `[[hba]]` rule, with the key it sits under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaIssue {
    /// Like `hba[2].address` (rules counted from 0).
    pub key: String,
    pub message: String,
}

impl fmt::Display for HbaIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The ordered rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<HbaRule>,
}

impl Hba {
    pub fn new(rules: Vec<HbaRule>) -> Self {
        Hba { rules }
    }

    /// What applies when the config has no `[[hba]]` rules: one rule,
    /// `host all all all scram-sha-256` — every client, from anywhere, must
    /// prove its password with SCRAM. Safe on an open network, and what
    /// PostgreSQL's own default leans to since version 14.
    pub fn default_rules() -> Self {
        Hba::new(vec![HbaRule {
            conn_type: ConnType::Host,
            databases: Matcher::All,
            users: Matcher::All,
            address: AddressMatch::All,
            method: Method::ScramSha256,
            clientcert: None,
        }])
    }

    /// Types the rules from the config file. No rules at all means
    /// [`Hba::default_rules`]. On error, every problem is reported.
    pub fn from_config(rules: &[HbaRuleConfig]) -> Result<Self, Vec<HbaIssue>> {
        if rules.is_empty() {
            return Ok(Self::default_rules());
        }
        let mut issues = Vec::new();
        let mut typed = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let mut field = |name: &str, message: String| {
                issues.push(HbaIssue {
                    key: format!("hba[{index}].{name}"),
                    message,
                })
            };
            let conn_type = parse_conn_type(&rule.conn_type).map_err(|m| field("type", m));
            let databases =
                parse_names(&rule.database, NameKind::Database).map_err(|m| field("database", m));
            let users = parse_names(&rule.user, NameKind::User).map_err(|m| field("user", m));
            let address = parse_address(&rule.address).map_err(|m| field("address", m));
            let method = rule.method.parse().map_err(|m| field("method", m));
            let clientcert = match rule.clientcert.as_deref() {
                None => Ok(None),
                Some("verify-ca") => Ok(Some(ClientCert::VerifyCa)),
                Some("verify-full") => Ok(Some(ClientCert::VerifyFull)),
                Some(other) => {
                    field(
                        "clientcert",
                        format!("unknown value \"{other}\"; use verify-ca or verify-full"),
                    );
                    Err(())
                }
            };
            let clientcert = match (clientcert, &method) {
                (Ok(_), Ok(Method::Cert)) => Ok(Some(ClientCert::VerifyFull)),
                (c, _) => c,
            };
            if rule.conn_type == "hostnossl" && (rule.method == "cert" || rule.clientcert.is_some())
            {
                field(
                    "type",
                    "a client certificate needs TLS: hostnossl can never carry one; use hostssl"
                        .into(),
                );
            }
            if let (
                Ok(conn_type),
                Ok(databases),
                Ok(users),
                Ok(address),
                Ok(method),
                Ok(clientcert),
            ) = (conn_type, databases, users, address, method, clientcert)
            {
                typed.push(HbaRule {
                    conn_type,
                    databases,
                    users,
                    address,
                    method,
                    clientcert,
                });
            }
        }
        if issues.is_empty() {
            Ok(Hba::new(typed))
        } else {
            Err(issues)
        }
    }

    /// Every problem in the configured rules, each with its key; empty
    /// when [`Hba::from_config`] would succeed.
    pub fn validate(rules: &[HbaRuleConfig]) -> Vec<HbaIssue> {
        Self::from_config(rules).err().unwrap_or_default()
    }

    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }

    /// The method of the first rule matching the connection; `None` when
    /// no rule matches, which means refuse (PostgreSQL: "no pg_hba.conf
    /// entry for host …").
    pub fn lookup(&self, user: &str, database: &str, peer: IpAddr, tls: bool) -> Option<Method> {
        self.rule_for(user, database, peer, tls)
            .map(|rule| rule.method)
    }

    /// The first rule matching the connection.
    pub fn rule_for(
        &self,
        user: &str,
        database: &str,
        peer: IpAddr,
        tls: bool,
    ) -> Option<&HbaRule> {
        self.rules
            .iter()
            .find(|rule| rule.matches(user, database, peer, tls))
    }
}

/// The method that actually runs for `method` when the user's secret is
/// `secret`, following PostgreSQL: an `md5` rule runs SCRAM for a user
/// whose secret is a SCRAM verifier (it holds no md5 hash); a
/// `scram-sha-256` rule cannot run for a user whose secret is an md5 hash,
/// which is an error to surface as a config warning and fail the login
/// with. A plaintext secret serves every method.
pub fn effective_method(method: Method, secret: &Secret) -> Result<Method, AuthError> {
    match (method, secret) {
        (Method::Md5, Secret::Scram(_)) => Ok(Method::ScramSha256),
        (Method::ScramSha256, Secret::Md5(_)) => Err(AuthError::UnusableSecret(
            "method scram-sha-256 cannot work with a stored md5 hash; store the \
             plaintext password or a SCRAM-SHA-256 verifier, or use method md5"
                .into(),
        )),
        _ => Ok(method),
    }
}

fn parse_conn_type(text: &str) -> Result<ConnType, String> {
    match text {
        "host" => Ok(ConnType::Host),
        "hostssl" => Ok(ConnType::HostSsl),
        "hostnossl" => Ok(ConnType::HostNoSsl),
        "local" => {
            Err("tidepool accepts TCP connections only; use host, hostssl or hostnossl".into())
        }
        other => Err(format!(
            "unknown connection type \"{other}\"; use host, hostssl or hostnossl"
        )),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum NameKind {
    Database,
    User,
}

fn parse_names(names: &OneOrMany, kind: NameKind) -> Result<Matcher, String> {
    let items = names.items();
    if items.is_empty() {
        return Err("the list is empty, so the rule could never match; use \"all\"".into());
    }
    if items.iter().any(|name| name == "all") {
        return Ok(Matcher::All);
    }
    items
        .iter()
        .map(|name| match (name.as_str(), kind) {
            ("", _) => Err("a name is empty".to_owned()),
            ("sameuser", NameKind::Database) => Ok(Name::SameUser),
            ("sameuser", NameKind::User) => Err("\"sameuser\" applies to database only".to_owned()),
            ("samerole" | "samegroup" | "replication", NameKind::Database) => Err(format!(
                "\"{name}\" is not supported; list the databases by name"
            )),
            (group, _) if group.starts_with('+') || group.starts_with('@') => Err(format!(
                "\"{group}\": group and file references are not supported; list the names"
            )),
            (exact, _) => Ok(Name::Exact(exact.to_owned())),
        })
        .collect::<Result<_, _>>()
        .map(Matcher::Only)
}

fn parse_address(addresses: &OneOrMany) -> Result<AddressMatch, String> {
    let items = addresses.items();
    if items.is_empty() {
        return Err("the list is empty, so the rule could never match; use \"all\"".into());
    }
    if items.iter().any(|address| address == "all") {
        return Ok(AddressMatch::All);
    }
    items
        .iter()
        .map(|address| parse_net(address))
        .collect::<Result<_, _>>()
        .map(AddressMatch::Nets)
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.1.2.3`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    Err(match text {
        "samehost" | "samenet" => format!("\"{text}\" is not supported; write the CIDR"),
        _ => format!(
            "\"{text}\" is not an IP address or CIDR (like \"10.0.0.0/8\" or \"fd00::/8\"); \
             host names are not supported"
        ),
    })
}

#[cfg(test)]
#[path = "hba_tests.rs"]
mod tests;
