//! The state file keeps fences across restarts, so it is read strictly: a
//! damaged one attaches nothing until an operator says so, and a fence
//! that cannot be written is reported as a failure, not a success.

mod failover_support;

use std::time::Duration;

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, wait_until};

fn nodes(tp: &Tidepool) -> serde_json::Value {
    let (_, body) = tp.http_get("/v1/nodes").unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_damaged_state_file_attaches_nothing_until_an_operator_does() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    for damage in ["", "{\"detached\": {\"pg0\": \"fail", "\u{0}\u{1}garbage"] {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("tidepool-state.json"), damage).unwrap();
        let config = failover_support::config(&cluster, state.path(), "", "");
        let tp = Tidepool::start_with(
            &config,
            TidepoolOpts {
                wait_ready: false,
                ..TidepoolOpts::default()
            },
        )
        .unwrap();
        // Health checks run, yet every node stays detached.
        wait_until(Duration::from_secs(10), "health checks", || {
            nodes(&tp)["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["reachable"] == true)
        })
        .unwrap();
        let v = nodes(&tp);
        for n in v["nodes"].as_array().unwrap() {
            assert_eq!(n["status"], "down", "{damage:?}: {n}");
            let reason = n["detach_reason"].as_str().unwrap_or_default();
            assert!(reason.contains("ctl attach"), "{reason}");
        }
        assert_ne!(tp.http_get("/readyz").unwrap().0, 200, "no primary is used");
        // The operator attaches the primary: service resumes.
        let (code, body) = tp.http_post("/v1/nodes/pg0/attach").unwrap();
        assert_eq!(code, 200, "{body}");
        wait_until(Duration::from_secs(10), "ready", || {
            tp.http_get("/readyz").is_ok_and(|(c, _)| c == 200)
        })
        .unwrap();
    }
}

#[test]
fn a_detach_that_cannot_be_persisted_is_an_error() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let config = failover_support::config(&cluster, &dir, "", "");
    let tp = Tidepool::start(&config).unwrap();
    // The state directory becomes something no file can be written in.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let (code, body) = tp.http_post("/v1/nodes/pg1/detach").unwrap();
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("not persisted"), "{body}");
}
