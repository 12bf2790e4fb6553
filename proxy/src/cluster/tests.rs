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
fn the_primary_word_follows_every_snapshot() {
    // What a statement reads of the node table (one atomic word) says
    // what the snapshot says, through every change of primary.
    let c = Cluster::new(&[
        backend("a", BackendFlag::AllowToFailover),
        backend("b", BackendFlag::AllowToFailover),
        backend("c", BackendFlag::AllowToFailover),
    ]);
    let agrees = |c: &Cluster| {
        let s = c.snapshot();
        let p = s.primary().map(|n| n.id);
        assert_eq!(c.primary_id(), p);
        for id in 0..4 {
            let guarded = p != Some(id) || s.nodes.get(id).is_some_and(|n| n.source.discovered());
            assert_eq!(c.guarded(id), guarded, "node {id}");
        }
    };
    agrees(&c);
    assert_eq!(c.primary_id(), None);
    c.record_check(0, Ok(Role::Standby));
    c.record_check(2, Ok(Role::Primary));
    agrees(&c);
    assert_eq!(c.primary_id(), Some(2));
    assert!(!c.guarded(2) && c.guarded(0) && c.guarded(1));
    c.record_check(2, Err("down".into()));
    agrees(&c);
    c.record_check(1, Ok(Role::Primary));
    agrees(&c);
    assert_eq!(c.primary_id(), Some(1));
    // A newer snapshot's word is the larger, whatever its primary: the
    // newest wins when two updates race.
    let s = c.snapshot();
    let older = PrimaryWord::of(&s);
    let newer = PrimaryWord::of(&Snapshot {
        nodes: vec![],
        generation: s.generation + 1,
    });
    assert!(newer.0 > older.0);
    assert_eq!(newer.id(), None);
    assert_eq!(older.id(), Some(1));
    assert!(!older.discovered());
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
    c.detach(0, Detached::new(DetachCause::Fenced, "fenced"));
    c.record_check(0, Ok(Role::Primary));
    let s = c.snapshot();
    assert_eq!(s.nodes[0].status, Status::Down);
    assert!(s.primary().is_none());
    assert_eq!(
        c.detached().get("a"),
        Some(&Detached::new(DetachCause::Fenced, "fenced"))
    );
    assert_eq!(
        c.snapshot().nodes[0].detached.as_ref().map(|d| d.cause),
        Some(DetachCause::Fenced)
    );
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

#[test]
fn a_detach_racing_health_checks_is_never_lost() {
    // Health-check results and an operator's detach on two threads, the
    // detach landing at every point of the checks' read-and-publish: the
    // node ends detached every time.
    let rounds = 3_000;
    for round in 0..rounds {
        let c = Cluster::new(&[backend("pg0", BackendFlag::AllowToFailover)]);
        c.record_check(0, Ok(Role::Standby));
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let checks = {
            let (c, start) = (c.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..20 {
                    // Alternate so that every check changes the node.
                    let outcome = if i % 2 == 0 {
                        Err("timeout".to_string())
                    } else {
                        Ok(Role::Standby)
                    };
                    c.record_check(0, outcome);
                }
            })
        };
        start.wait();
        for _ in 0..(round % 7) {
            std::hint::spin_loop();
        }
        c.detach(
            0,
            Detached::new(DetachCause::Operator, "detached by the operator"),
        );
        checks.join().unwrap();
        let s = c.snapshot();
        assert_eq!(
            (
                s.nodes[0].status,
                s.nodes[0].detached.as_ref().map(|d| d.cause)
            ),
            (Status::Down, Some(DetachCause::Operator)),
            "round {round}: the detach was lost"
        );
    }
}

#[test]
fn a_held_node_is_not_brought_up_by_a_racing_check() {
    for round in 0..2_000 {
        let c = Cluster::new(&[backend("pg0", BackendFlag::AllowToFailover)]);
        c.record_check(0, Ok(Role::Standby));
        let checks = {
            let c = c.clone();
            std::thread::spawn(move || {
                // Alternate so that every check changes the node; the
                // last one answers.
                for i in 0..10 {
                    let outcome = if i % 2 == 0 {
                        Err("timeout".to_string())
                    } else {
                        Ok(Role::Standby)
                    };
                    c.record_check(0, outcome);
                }
            })
        };
        for _ in 0..(round % 5) {
            std::hint::spin_loop();
        }
        c.hold(0, true);
        checks.join().unwrap();
        assert_eq!(
            c.snapshot().nodes[0].status,
            Status::Waiting,
            "round {round}"
        );
        c.hold(0, false);
        assert_eq!(c.snapshot().nodes[0].status, Status::Up);
    }
}
