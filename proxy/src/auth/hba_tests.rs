use std::net::IpAddr;

use serde::Deserialize;

use super::*;
use crate::auth::secret::{ScramVerifier, md5_hash};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    hba: Vec<HbaRuleConfig>,
}

fn configs(toml_text: &str) -> Vec<HbaRuleConfig> {
    toml::from_str::<File>(toml_text).expect("valid TOML").hba
}

fn hba(toml_text: &str) -> Hba {
    Hba::from_config(&configs(toml_text)).expect("valid rules")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const RULES: &str = r#"
[[hba]]
type = "host"
database = "all"
user = "blocked"
address = "all"
method = "reject"

[[hba]]
type = "hostssl"
database = ["app", "reports"]
user = "all"
address = ["10.0.0.0/8", "fd00::/8"]
method = "password"

[[hba]]
type = "hostnossl"
database = "sameuser"
user = ["alice", "bob"]
address = "192.168.1.7"
method = "md5"

[[hba]]
type = "host"
database = "all"
user = "all"
address = "10.0.0.0/8"
method = "scram-sha-256"
"#;

#[test]
fn toml_rules_deserialize_in_both_forms() {
    let rules = configs(RULES);
    assert_eq!(rules.len(), 4);
    assert_eq!(rules[0].database, OneOrMany::One("all".into()));
    assert_eq!(
        rules[1].address,
        OneOrMany::Many(vec!["10.0.0.0/8".into(), "fd00::/8".into()])
    );
    let typed = hba(RULES);
    assert_eq!(typed.rules()[1].conn_type, ConnType::HostSsl);
    assert_eq!(
        typed.rules()[2].databases,
        Matcher::Only(vec![Name::SameUser])
    );
}

#[test]
fn first_matching_rule_wins() {
    let rules = hba(RULES);
    // "blocked" matches rule 0 before the SCRAM catch-all.
    assert_eq!(
        rules.lookup("blocked", "app", ip("10.1.1.1"), true),
        Some(Method::Reject)
    );
    assert_eq!(
        rules.lookup("carol", "app", ip("10.1.1.1"), true),
        Some(Method::Password)
    );
}

#[test]
fn tls_decides_between_hostssl_and_hostnossl() {
    let rules = hba(RULES);
    assert_eq!(
        rules.lookup("carol", "app", ip("10.1.1.1"), false),
        Some(Method::ScramSha256)
    );
    assert_eq!(
        rules.lookup("alice", "alice", ip("192.168.1.7"), false),
        Some(Method::Md5)
    );
    assert_eq!(
        rules.lookup("alice", "alice", ip("192.168.1.7"), true),
        None
    );
}

#[test]
fn sameuser_matches_the_database_named_like_the_user() {
    let rules = hba(RULES);
    assert_eq!(rules.lookup("bob", "alice", ip("192.168.1.7"), false), None);
    assert_eq!(
        rules.lookup("carol", "carol", ip("192.168.1.7"), false),
        None
    );
}

#[test]
fn addresses_match_by_cidr_for_ipv4_and_ipv6() {
    let rules = hba(RULES);
    assert_eq!(
        rules.lookup("carol", "reports", ip("fd12::1"), true),
        Some(Method::Password)
    );
    assert_eq!(rules.lookup("carol", "reports", ip("fe80::1"), true), None);
    assert_eq!(rules.lookup("carol", "app", ip("11.0.0.1"), true), None);
    assert_eq!(
        rules.lookup("alice", "alice", ip("192.168.1.8"), false),
        None
    );
}

#[test]
fn ipv4_mapped_ipv6_peers_match_ipv4_rules() {
    let rules = hba(RULES);
    assert_eq!(
        rules.lookup("carol", "app", ip("::ffff:10.2.3.4"), false),
        Some(Method::ScramSha256)
    );
}

#[test]
fn no_matching_rule_means_none() {
    let rules = hba(RULES);
    assert_eq!(rules.lookup("carol", "app", ip("8.8.8.8"), false), None);
}

#[test]
fn cidr_with_host_bits_covers_its_network() {
    let rules = hba(r#"
[[hba]]
type = "host"
database = "all"
user = "all"
address = "10.1.2.3/16"
method = "trust"
"#);
    assert_eq!(
        rules.lookup("u", "d", ip("10.1.200.1"), false),
        Some(Method::Trust)
    );
}

#[test]
fn no_rules_means_scram_for_everyone() {
    let rules = Hba::from_config(&[]).unwrap();
    assert_eq!(rules, Hba::default_rules());
    for peer in ["127.0.0.1", "203.0.113.9", "2001:db8::1"] {
        assert_eq!(
            rules.lookup("any", "db", ip(peer), false),
            Some(Method::ScramSha256)
        );
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<File>(
        r#"
[[hba]]
type = "host"
database = "all"
user = "all"
address = "all"
method = "trust"
options = "x"
"#,
    )
    .err()
    .expect("unknown key rejected");
    assert!(err.to_string().contains("options"), "{err}");
}

#[test]
fn validate_reports_every_problem_with_its_key() {
    let rules = configs(
        r#"
[[hba]]
type = "host"
database = "all"
user = "all"
address = "all"
method = "trust"

[[hba]]
type = "local"
database = []
user = "sameuser"
address = ["10.0.0.0/33", "db.example.com"]
method = "ident"

[[hba]]
type = "host"
database = "replication"
user = "+admins"
address = "samenet"
method = "scram-sha-256"
"#,
    );
    let issues = Hba::validate(&rules);
    let keys: Vec<&str> = issues.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "hba[1].type",
            "hba[1].database",
            "hba[1].user",
            "hba[1].address",
            "hba[1].method",
            "hba[2].database",
            "hba[2].user",
            "hba[2].address",
        ]
    );
    assert!(issues[3].message.contains("10.0.0.0/33"), "{}", issues[3]);
    assert!(issues[4].message.contains("unsupported method \"ident\""));
    assert!(issues[4].to_string().starts_with("hba[1].method: "));
    assert!(Hba::from_config(&rules).is_err());
}

#[test]
fn valid_rules_have_no_issues() {
    assert!(Hba::validate(&configs(RULES)).is_empty());
}

#[test]
fn methods_round_trip_through_their_names() {
    for method in [
        Method::Trust,
        Method::Md5,
        Method::ScramSha256,
        Method::Password,
        Method::Reject,
    ] {
        assert_eq!(method.as_str().parse::<Method>(), Ok(method));
    }
}

#[test]
fn md5_rule_runs_scram_for_a_scram_secret() {
    let scram = Secret::Scram(ScramVerifier::from_password("pw", b"salt", 1));
    assert_eq!(
        effective_method(Method::Md5, &scram),
        Ok(Method::ScramSha256)
    );
    assert_eq!(
        effective_method(Method::ScramSha256, &scram),
        Ok(Method::ScramSha256)
    );
}

#[test]
fn scram_rule_cannot_run_with_an_md5_secret() {
    let md5 = Secret::Md5(md5_hash("u", "pw"));
    let err = effective_method(Method::ScramSha256, &md5).unwrap_err();
    assert!(matches!(err, AuthError::UnusableSecret(_)));
    assert_eq!(effective_method(Method::Md5, &md5), Ok(Method::Md5));
}

#[test]
fn plaintext_secret_serves_every_method() {
    let plain = Secret::Plain("pw".into());
    for method in [
        Method::Trust,
        Method::Md5,
        Method::ScramSha256,
        Method::Password,
        Method::Reject,
    ] {
        assert_eq!(effective_method(method, &plain), Ok(method));
    }
}

#[test]
fn cert_implies_verify_full_and_clientcert_is_typed() {
    let rules = configs(
        r#"
[[hba]]
type = "hostssl"
database = "all"
user = "all"
address = "all"
method = "cert"

[[hba]]
type = "hostssl"
database = "all"
user = "all"
address = "all"
method = "scram-sha-256"
clientcert = "verify-ca"

[[hba]]
type = "hostnossl"
database = "all"
user = "all"
address = "all"
method = "md5"
clientcert = "verify-full"

[[hba]]
type = "hostssl"
database = "all"
user = "all"
address = "all"
method = "md5"
clientcert = "maybe"
"#,
    );
    let keys: Vec<String> = Hba::validate(&rules).into_iter().map(|i| i.key).collect();
    assert_eq!(keys, ["hba[2].type", "hba[3].clientcert"]);
    let hba = Hba::from_config(&rules[..2]).unwrap();
    assert_eq!(hba.rules()[0].clientcert, Some(ClientCert::VerifyFull));
    assert_eq!(hba.rules()[1].clientcert, Some(ClientCert::VerifyCa));
    // hostssl rules match TLS connections only.
    assert!(hba.rule_for("app", "app", ip("10.0.0.1"), false).is_none());
    assert_eq!(
        hba.rule_for("app", "app", ip("10.0.0.1"), true)
            .map(|r| r.method),
        Some(Method::Cert)
    );
}
