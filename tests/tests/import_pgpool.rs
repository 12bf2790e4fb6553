//! `tidepool import-pgpool` on Pgpool-II's own files: the samples Debian
//! ships and the settings of its AWS, Aurora and cluster examples
//! (tests/fixtures/pgpool), each accepted by check-config; the cluster
//! example's settings serve a local cluster.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, free_port};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pgpool")
        .join(name)
}

fn tidepool(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(Tidepool::binary().unwrap())
        .args(args)
        .output()
        .unwrap()
}

/// Imports `conf` (with the sample pool_hba.conf and `passwd`); the TOML
/// and the warnings.
fn import(dir: &Path, conf: &Path, passwd: &str) -> (String, String) {
    let passwd_file = dir.join("pool_passwd");
    std::fs::write(&passwd_file, passwd).unwrap();
    let key = dir.join(".pgpoolkey");
    std::fs::write(&key, "tidepool-key\n").unwrap();
    let out = dir.join("tidepool.toml");
    let o = tidepool(&[
        "import-pgpool".as_ref(),
        conf.as_os_str(),
        "--hba".as_ref(),
        fixture("pool_hba.conf.sample").as_os_str(),
        "--passwd".as_ref(),
        passwd_file.as_os_str(),
        "--pgpoolkey".as_ref(),
        key.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}: {err}", conf.display());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600,
        "the output may hold passwords"
    );
    (std::fs::read_to_string(&out).unwrap(), err)
}

fn check_config(dir: &Path, toml: &str) -> Output {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).unwrap();
    tidepool(&["check-config".as_ref(), "-c".as_ref(), path.as_os_str()])
}

/// pool_passwd as pg_enc and plain entries write it: `app` in plain text,
/// `enc` AES-encrypted with the key "tidepool-key" (`pg_enc` of
/// "s3cret pass").
const PASSWD: &str = "app:TEXTapp\nenc:AESH52hdTpC5kbSPwHQXqlFng==\n";

#[test]
fn every_sample_and_example_imports_to_a_configuration_check_config_accepts() {
    for name in [
        "pgpool.conf.sample",
        "example-aws.conf",
        "example-aurora.conf",
        "example-cluster.conf",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (toml, warnings) = import(dir.path(), &fixture(name), PASSWD);
        let check = check_config(dir.path(), &toml);
        assert!(
            check.status.success(),
            "{name}: {}\n{toml}",
            String::from_utf8_lossy(&check.stdout)
        );
        let cfg: toml::Table = toml.parse().unwrap();
        let users = cfg["users"].as_array().unwrap();
        let enc = users
            .iter()
            .find(|u| u["name"].as_str() == Some("enc"))
            .unwrap();
        assert_eq!(
            enc["password"].as_str(),
            Some("s3cret pass"),
            "{name}: AES entry read"
        );
        // The hba sample's Unix-socket rule has no equivalent and says so.
        assert!(warnings.contains("local"), "{name}: {warnings}");
        assert!(toml.contains("# host    all         all         127.0.0.1/32          trust"));
        match name {
            "example-aurora.conf" => {
                let b = cfg["backends"].as_array().unwrap();
                assert_eq!(b[0]["flag"].as_str(), Some("always_primary"));
                assert_eq!(b[1]["flag"].as_str(), Some("disallow_to_failover"));
                for w in ["health_check_period", "sr_check_period", "not a host name"] {
                    assert!(warnings.contains(w), "{name}: {w}: {warnings}");
                }
            }
            "example-cluster.conf" => {
                let b = cfg["backends"].as_array().unwrap();
                let names: Vec<&str> = b.iter().map(|b| b["name"].as_str().unwrap()).collect();
                assert_eq!(names, ["server1", "server2", "server3"]);
                assert_eq!(cfg["server"]["listen"].as_str(), Some("0.0.0.0:9999"));
                assert!(
                    cfg["failover"]["failover_command"]
                        .as_str()
                        .unwrap()
                        .ends_with("%d %h %p %D %m %H %M %P %r %R %N %S")
                );
                assert_eq!(cfg["health_check"]["period"].as_str(), Some("5s"));
                // Peers named by host names: written for the user to finish.
                assert!(cfg.get("watchdog").is_none());
                assert!(toml.contains("# [watchdog]"), "{toml}");
                assert!(warnings.contains("server2, server3"), "{warnings}");
                assert!(warnings.contains("log_rotation_age"), "{warnings}");
            }
            _ => {}
        }
    }
}

#[test]
fn a_verifier_only_user_is_named_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (toml, warnings) = import(
        dir.path(),
        &fixture("example-cluster.conf"),
        "app:TEXTapp\nbob:md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nlocked:AESbm90IHRoaXMga2V5\n",
    );
    assert!(warnings.contains("bob: a verifier only"), "{warnings}");
    assert!(warnings.contains("locked: AES-encrypted"), "{warnings}");
    let check = check_config(dir.path(), &toml);
    assert!(!check.status.success());
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(out.contains("users[1].backend_password"), "{out}");
}

#[test]
fn aws_escalation_scripts_become_the_built_in_address_moves() {
    let cases = [
        (
            std::fs::read_to_string(fixture("example-aws-escalation.sh")).unwrap(),
            None,
        ),
        (
            "ALLOCATION=eipalloc-0123456789abcdef0\n\
             aws ec2 associate-address --allocation-id $ALLOCATION --instance-id $INSTANCE_ID\n"
                .to_string(),
            Some(("eip", "eip_allocation_id", "eipalloc-0123456789abcdef0")),
        ),
        (
            "aws ec2 replace-route --route-table-id rtb-0a1b2c3d --destination-cidr-block 10.9.0.10/32 \
             --instance-id $INSTANCE_ID\n"
                .to_string(),
            Some(("route_table", "vip_cidr", "10.9.0.10/32")),
        ),
    ];
    for (script, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        // The configuration names the script by a path of the AWS page;
        // it is found beside pgpool.conf.
        let conf = dir.path().join("pgpool.conf");
        std::fs::copy(fixture("example-aws.conf"), &conf).unwrap();
        std::fs::write(dir.path().join("aws-escalation.sh"), &script).unwrap();
        let (toml, warnings) = import(dir.path(), &conf, PASSWD);
        let check = check_config(dir.path(), &toml);
        assert!(
            check.status.success(),
            "{}\n{toml}",
            String::from_utf8_lossy(&check.stdout)
        );
        let cfg: toml::Table = toml.parse().unwrap();
        match expected {
            Some((mode, key, value)) => {
                assert_eq!(cfg["escalation"]["mode"].as_str(), Some(mode), "{toml}");
                let got = &cfg["escalation"][key];
                let got = got
                    .as_str()
                    .or_else(|| got.as_array().and_then(|a| a[0].as_str()));
                assert_eq!(got, Some(value), "{toml}");
            }
            None => {
                // The page's script names the address, not its allocation:
                // the user is told how to find it.
                assert!(cfg.get("escalation").is_none(), "{toml}");
                assert!(toml.contains("# mode = \"eip\""), "{toml}");
                assert!(
                    warnings.contains("describe-addresses --public-ips 35.163.178.3"),
                    "{warnings}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_examples_settings_serve_a_local_cluster() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(2)).unwrap();
    cluster
        .psql(
            cluster.primary().name.as_str(),
            "CREATE ROLE pgpool LOGIN PASSWORD 'pgpool'; GRANT pg_monitor TO pgpool",
        )
        .unwrap();
    // The example's settings, with its servers replaced by the local
    // cluster's and its ports by free ones.
    let (port, pcp) = (free_port(), free_port());
    let mut conf = String::new();
    for line in std::fs::read_to_string(fixture("example-cluster.conf"))
        .unwrap()
        .lines()
    {
        let name = line.split('=').next().unwrap_or("").trim();
        let id = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
        };
        if let Some(i) = id("backend_hostname") {
            conf.push_str(&format!(
                "backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {}\n",
                cluster.nodes()[i].port
            ));
        } else if id("backend_port").is_some() {
        } else if name == "port" {
            conf.push_str(&format!(
                "port = {port}\npcp_listen_addresses = 'localhost'\npcp_port = {pcp}\n"
            ));
        } else if name == "listen_addresses" {
            conf.push_str("listen_addresses = 'localhost'\n");
        } else {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let conf_path = dir.path().join("pgpool.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // health_check_password = '' : Pgpool-II reads pgpool's password from
    // pool_passwd, and so does the import.
    let (toml, _) = import(dir.path(), &conf_path, "pgpool:TEXTpgpool\napp:TEXTapp\n");
    assert!(toml.contains("password = \"pgpool\""), "{toml}");
    let tp = Tidepool::start(&toml).unwrap();
    let c = tidepool_tests::wait_for_async(
        std::time::Duration::from_secs(30),
        "tidepool to serve",
        || async {
            let c = tp.connect("app", "app", "app").await?;
            c.simple_query("SELECT 1").await?;
            Ok(c)
        },
    )
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE imported (n int); INSERT INTO imported VALUES (42)")
        .await
        .unwrap();
    let n: i32 = c
        .query_one("SELECT n FROM imported", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
}
