use super::*;

pub(super) fn backend(name: &str, flag: BackendFlag) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5432,
        weight: 1.0,
        flag,
        data_directory: None,
        log_file: None,
        health_check_period: None,
        health_check_timeout: None,
        health_check_max_retries: None,
        health_check_retry_delay: None,
        health_check_connect_timeout: None,
        sslmode: None,
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        auth: None,
        region: None,
    }
}

#[test]
fn primary_is_the_node_that_reports_it() {
    let c = Cluster::new(&[
        backend("a", BackendFlag::AllowToFailover),
        backend("b", BackendFlag::AllowToFailover),
    ]);
    assert!(c.snapshot().primary().is_none());
    c.record_check(0, Ok(Role::Standby));
    c.record_check(1, Ok(Role::Primary));
    assert_eq!(c.snapshot().primary().unwrap().name, "b");
    c.record_check(1, Err("down".into()));
    let s = c.snapshot();
    assert!(s.primary().is_none());
    assert_eq!(s.nodes[1].status, Status::Waiting);
    assert_eq!(s.nodes[1].last_error.as_deref(), Some("down"));
}

#[test]
fn unreachable_always_primary_is_waited_for_never_detached() {
    let c = Cluster::new(&[backend("rds", BackendFlag::AlwaysPrimary)]);
    c.record_check(0, Ok(Role::Standby));
    assert_eq!(c.snapshot().primary().unwrap().name, "rds");
    c.record_check(0, Err("refused".into()));
    assert!(c.snapshot().primary().is_none());
    assert_eq!(c.snapshot().nodes[0].status, Status::Waiting);
    c.record_check(0, Ok(Role::Primary));
    assert_eq!(c.snapshot().primary().unwrap().name, "rds");
}

#[test]
fn unchanged_checks_publish_no_new_snapshot() {
    let c = Cluster::new(&[backend("a", BackendFlag::AllowToFailover)]);
    c.record_check(0, Ok(Role::Primary));
    let g = c.snapshot().generation;
    c.record_check(0, Ok(Role::Primary));
    assert_eq!(c.snapshot().generation, g);
}

#[test]
fn a_detached_node_stays_down_while_it_answers_until_attached() {
    let c = Cluster::new(&[backend("a", BackendFlag::AllowToFailover)]);
    c.record_check(0, Ok(Role::Primary));
    c.detach(0, "fenced");
    c.record_check(0, Ok(Role::Primary));
    let s = c.snapshot();
    assert_eq!(s.nodes[0].status, Status::Down);
    assert!(s.primary().is_none());
    assert_eq!(c.detached().get("a").map(String::as_str), Some("fenced"));
    c.attach(0);
    assert_eq!(c.snapshot().primary().unwrap().name, "a");
    assert!(c.detached().is_empty());
}

#[test]
fn a_held_primary_is_not_routed_to_until_released() {
    let c = Cluster::new(&[backend("a", BackendFlag::AllowToFailover)]);
    c.record_check(0, Ok(Role::Primary));
    c.hold(0, true);
    c.record_check(0, Ok(Role::Primary));
    assert!(c.snapshot().primary().is_none());
    c.hold(0, false);
    assert_eq!(c.snapshot().primary().unwrap().name, "a");
}

#[test]
fn nodes_are_found_by_name_or_index() {
    let c = Cluster::new(&[
        backend("a", BackendFlag::AllowToFailover),
        backend("b", BackendFlag::AllowToFailover),
    ]);
    let s = c.snapshot();
    assert_eq!(s.find("b").unwrap().id, 1);
    assert_eq!(s.find("0").unwrap().name, "a");
    assert!(s.find("c").is_none());
}
