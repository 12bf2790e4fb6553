//! The function binary run from a shell with `--event`, against moto and a
//! local IMDSv2 endpoint.

mod common;

use std::time::Duration;

use common::{Imds, Moto, World, two_instances};
use serde_json::{Value, json};
use tidepool_failover::Metadata;

const BIN: &str = env!("CARGO_BIN_EXE_tidepool-failover-lambda");

struct Fixture {
    /// Kept so the server lives as long as the fixture.
    _moto: Moto,
    world: World,
    allocation_id: String,
    env: Vec<(String, String)>,
}

async fn fixture() -> Fixture {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let allocation_id = clients
        .ec2
        .allocate_address()
        .send()
        .await
        .expect("allocate_address")
        .allocation_id
        .expect("allocation id");
    let mut env = moto.env();
    env.push(("TIDEPOOL_MODE".into(), "eip".into()));
    env.push(("TIDEPOOL_EIP_ALLOCATION_ID".into(), allocation_id.clone()));
    Fixture {
        _moto: moto,
        world,
        allocation_id,
        env,
    }
}

/// Runs the binary once with `event` on stdin; returns (exit ok, answer).
async fn run(env: &[(String, String)], event: &Value) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("event.json");
    std::fs::write(&path, serde_json::to_vec(event).unwrap()).unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--event")
        .arg(&path)
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary answered within 60 s")
        .expect("the binary ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON answer ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), answer)
}

fn holder_instance(state: &Value) -> Option<&str> {
    state[0]["holder"]["instance_id"].as_str()
}

#[tokio::test]
async fn every_action_answers_the_documented_json() {
    let f = fixture().await;
    let (a, b) = (&f.world.a, &f.world.b);
    let target_a =
        json!({"instance_id": a.instance_id, "private_ip": a.private_ip, "node": "tp-a"});
    let target_b =
        json!({"instance_id": b.instance_id, "private_ip": b.private_ip, "node": "tp-b"});

    let (ok, status) = run(&f.env, &json!({"action": "status"})).await;
    assert!(ok, "{status}");
    for key in ["ok", "mode", "before", "after", "elapsed_ms", "error"] {
        assert!(status.get(key).is_some(), "answer lacks {key}: {status}");
    }
    assert_eq!(status["mode"], "eip");
    assert_eq!(status["error"], Value::Null);
    assert_eq!(status["before"][0]["resource"], f.allocation_id.as_str());
    assert_eq!(status["before"][0]["holder"], Value::Null);

    let (ok, dry) = run(
        &f.env,
        &json!({"action": "escalate", "target": target_a, "dry_run": true}),
    )
    .await;
    assert!(ok, "{dry}");
    assert_eq!(dry["changed"], false);
    assert_eq!(dry["changes"][0]["operation"], "associate_address");
    let (_, still) = run(&f.env, &json!({"action": "status"})).await;
    assert_eq!(
        still["before"][0]["holder"],
        Value::Null,
        "a dry run changed the address"
    );

    let (ok, up) = run(
        &f.env,
        &json!({"action": "escalate", "mode": "eip", "target": target_a}),
    )
    .await;
    assert!(ok, "{up}");
    assert_eq!(up["changed"], true);
    assert_eq!(holder_instance(&up["after"]), Some(a.instance_id.as_str()));

    let (ok, sw) = run(&f.env, &json!({"action": "switchover", "target": target_b})).await;
    assert!(ok, "{sw}");
    assert_eq!(sw["active_node"], "tp-b");
    assert_eq!(sw["target"]["node"], "tp-b");
    assert_eq!(sw["holds"], true);
    assert_eq!(holder_instance(&sw["before"]), Some(a.instance_id.as_str()));
    assert_eq!(holder_instance(&sw["after"]), Some(b.instance_id.as_str()));
    assert!(sw["elapsed_ms"].as_u64().is_some());

    // A stepping down after the switchover leaves B's address alone.
    let (ok, down) = run(
        &f.env,
        &json!({"action": "de_escalate", "target": target_a}),
    )
    .await;
    assert!(ok, "{down}");
    assert_eq!(down["changed"], false);
    assert_eq!(
        holder_instance(&down["after"]),
        Some(b.instance_id.as_str())
    );

    let (ok, check) = run(&f.env, &json!({"action": "status", "target": target_b})).await;
    assert!(ok);
    assert_eq!(check["holds"], true);
}

#[tokio::test]
async fn failures_answer_ok_false_with_an_actionable_error() {
    let f = fixture().await;
    let (ok, bad) = run(&f.env, &json!({"action": "escalate", "dryrun": true})).await;
    assert!(!ok);
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("dryrun"), "{bad}");

    let target = json!({"instance_id": f.world.a.instance_id});
    let (ok, wrong) = run(
        &f.env,
        &json!({"action": "escalate", "target": target, "eip_allocation_id": "eipalloc-0ffffffffffffffff"}),
    )
    .await;
    assert!(!ok);
    let error = wrong["error"].as_str().unwrap();
    assert!(
        error.contains("eipalloc-0ffffffffffffffff") && error.contains("us-east-1"),
        "{error}"
    );

    let (ok, no_node) = run(&f.env, &json!({"action": "switchover", "target": target})).await;
    assert!(!ok);
    assert!(
        no_node["error"].as_str().unwrap().contains("target.node"),
        "{no_node}"
    );

    let env: Vec<_> = f
        .env
        .iter()
        .filter(|(k, _)| k != "TIDEPOOL_MODE")
        .cloned()
        .collect();
    let (ok, no_mode) = run(&env, &json!({"action": "status"})).await;
    assert!(!ok);
    assert!(
        no_mode["error"].as_str().unwrap().contains("TIDEPOOL_MODE"),
        "{no_mode}"
    );
}

#[tokio::test]
async fn escalate_without_a_target_acts_for_this_instance_from_imdsv2() {
    let f = fixture().await;
    let b = &f.world.b;
    let imds = Imds::start(&b.instance_id, b.private_ip, &b.eni_id).await;

    // The library reads the identity with a session token.
    let identity = Metadata::with_endpoint(&imds.endpoint)
        .unwrap()
        .identity()
        .await
        .unwrap();
    assert_eq!(identity.instance_id, b.instance_id);
    assert_eq!(identity.local_ipv4, b.private_ip);
    assert_eq!(identity.eni_id, b.eni_id);
    assert_eq!(identity.region.as_deref(), Some("us-east-1"));
    assert!(
        imds.token_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // The binary finds it through the SDK's endpoint override.
    let mut env = f.env.clone();
    env.retain(|(k, _)| k != "AWS_EC2_METADATA_DISABLED");
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        imds.endpoint.clone(),
    ));
    let (ok, up) = run(&env, &json!({"action": "escalate"})).await;
    assert!(ok, "{up}");
    assert_eq!(up["target"]["instance_id"], b.instance_id.as_str());
    assert_eq!(up["target"]["eni_id"], b.eni_id.as_str());
    assert_eq!(up["changed"], true);
    // Associated by the primary ENI (moto then reports no instance id).
    assert_eq!(up["after"][0]["holder"]["eni_id"], b.eni_id.as_str());
    assert_eq!(
        up["after"][0]["holder"]["private_ip"],
        b.private_ip.to_string()
    );
}
