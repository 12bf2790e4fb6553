//! RDS IAM tokens compared byte for byte with botocore's
//! `generate_db_auth_token`, run from the test venv with a frozen clock
//! (`botocore_auth_token.py`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use tidepool_failover::auth_token;

/// The venv's Python: scripts/setup makes it, with boto3, at
/// `${TIDEPOOL_VENV:-$HOME/.cache/tidepool/venv}`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("TIDEPOOL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/tidepool/venv")
        });
    let python = venv.join("bin").join("python");
    assert!(
        python.is_file(),
        "{} does not exist: run scripts/setup (it creates the test venv with boto3), \
         or point TIDEPOOL_VENV at a venv that has boto3",
        python.display()
    );
    python
}

struct Case {
    host: &'static str,
    port: u16,
    user: &'static str,
    region: &'static str,
    key_id: &'static str,
    secret: &'static str,
    session_token: Option<&'static str>,
    epoch: u64,
}

fn botocore_token(case: &Case) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/botocore_auth_token.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .args([
            case.host,
            &case.port.to_string(),
            case.user,
            case.region,
            case.key_id,
            case.secret,
            case.session_token.unwrap_or(""),
            &case.epoch.to_string(),
        ])
        // Only the arguments decide: no profile or config file of the
        // machine running the test, and UTF-8 arguments whatever the locale.
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("PYTHONUTF8", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("botocore printed UTF-8")
        .trim_end()
        .to_owned()
}

fn rust_token(case: &Case) -> String {
    let creds = Credentials::new(
        case.key_id,
        case.secret,
        case.session_token.map(str::to_owned),
        None,
        "test",
    );
    let now: SystemTime = UNIX_EPOCH + Duration::from_secs(case.epoch);
    auth_token(case.host, case.port, case.user, case.region, &creds, now).unwrap()
}

fn assert_same_as_botocore(case: &Case) {
    let expected = botocore_token(case);
    assert!(
        expected.starts_with(&format!("{}:{}/?Action=connect&", case.host, case.port)),
        "botocore printed something else than a token: {expected}"
    );
    assert_eq!(rust_token(case), expected);
}

#[test]
fn long_term_keys_give_botocores_token() {
    assert_same_as_botocore(&Case {
        host: "tidepool-db.c9akciq32.us-east-1.rds.amazonaws.com",
        port: 5432,
        user: "app_user",
        region: "us-east-1",
        key_id: "AKIDEXAMPLE",
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
        epoch: 1_709_622_489, // 2024-03-05T07:08:09Z
    });
}

#[test]
fn session_credentials_give_botocores_token() {
    assert_same_as_botocore(&Case {
        host: "orders.cluster-ro-c9akciq32.eu-west-1.rds.amazonaws.com",
        port: 5432,
        user: "iam_reader",
        region: "eu-west-1",
        key_id: "ASIAEXAMPLETEMPKEY",
        secret: "temp/secret+key=",
        session_token: Some("IQoJb3JpZ2luX2VjE/+long//token+with=padding=="),
        epoch: 1_767_225_599, // 2025-12-31T23:59:59Z
    });
}

#[test]
fn unusual_user_host_case_and_port_443_give_botocores_token() {
    assert_same_as_botocore(&Case {
        host: "Orders.Cluster-XYZ.eu-west-1.rds.amazonaws.com",
        port: 443,
        user: "iam user+ops/é@x",
        region: "eu-west-1",
        key_id: "ASIAEXAMPLETEMPKEY",
        secret: "temp/secret+key=",
        session_token: Some("IQoJb3JpZ2luX2VjE/+token=="),
        epoch: 1_709_622_489,
    });
}

#[test]
fn an_ip_address_and_mixed_case_host_on_another_port_give_botocores_token() {
    for host in ["10.0.1.10", "MyDB.Example.Internal"] {
        assert_same_as_botocore(&Case {
            host,
            port: 6432,
            user: "postgres",
            region: "ap-southeast-2",
            key_id: "AKIDEXAMPLE",
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
            epoch: 1_700_000_000,
        });
    }
}
