use std::{collections::BTreeMap, time::SystemTime};

use rand::{SeedableRng, rngs::StdRng};

use super::*;
use crate::config::BackendFlag;

fn node(id: usize, role: Role, weight: f64) -> Node {
    Node {
        id,
        name: format!("pg{id}"),
        host: "127.0.0.1".into(),
        port: 5432 + id as u16,
        weight,
        flag: BackendFlag::AllowToFailover,
        status: Status::Up,
        reachable: true,
        role,
        last_status_change: SystemTime::now(),
        last_error: None,
        source: crate::cluster::Source::Config,
        held: false,
        detached: None,
    }
}

fn snapshot(weights: &[f64]) -> Snapshot {
    Snapshot {
        nodes: weights
            .iter()
            .enumerate()
            .map(|(i, w)| node(i, if i == 0 { Role::Primary } else { Role::Standby }, *w))
            .collect(),
        generation: 1,
    }
}

fn rules(f: impl FnOnce(&mut LoadBalancingConfig)) -> Rules {
    let mut cfg = LoadBalancingConfig {
        statement_level: true,
        ..LoadBalancingConfig::default()
    };
    f(&mut cfg);
    Rules::new(&cfg)
}

fn counts(r: &Rules, s: &Snapshot, lags: &BTreeMap<usize, Lag>, n: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = vec![0; s.nodes.len()];
    for _ in 0..n {
        let mut sess = SessionRouting::default();
        let d = choose_read(r, s, lags, &Client::default(), &mut sess, &mut rng).unwrap();
        out[d.node] += 1;
    }
    out
}

#[test]
fn reads_spread_by_weight_and_weight_zero_gets_none() {
    let s = snapshot(&[0.0, 1.0, 3.0]);
    let c = counts(&rules(|_| {}), &s, &BTreeMap::new(), 4000);
    assert_eq!(c[0], 0);
    let share = c[2] as f64 / 4000.0;
    assert!((0.70..0.80).contains(&share), "{c:?}");
}

#[test]
fn lagging_standbys_get_no_reads_unless_preferred() {
    let s = snapshot(&[0.0, 1.0, 1.0]);
    let mut lags = BTreeMap::new();
    lags.insert(
        1,
        Lag {
            bytes: 10_000,
            ..Lag::default()
        },
    );
    lags.insert(
        2,
        Lag {
            bytes: 50,
            ..Lag::default()
        },
    );
    let r = rules(|c| c.delay_threshold = 1000);
    let c = counts(&r, &s, &lags, 200);
    assert_eq!(c, vec![0, 0, 200]);
    lags.insert(
        2,
        Lag {
            bytes: 5_000,
            ..Lag::default()
        },
    );
    // Every standby lags: the primary takes the reads…
    assert_eq!(counts(&r, &s, &lags, 50), vec![50, 0, 0]);
    // …or the least-lagged standby, when preferred.
    let r = rules(|c| {
        c.delay_threshold = 1000;
        c.prefer_lower_delay_standby = true;
    });
    assert_eq!(counts(&r, &s, &lags, 50), vec![0, 0, 50]);
}

#[test]
fn session_level_choice_sticks_and_statement_level_does_not() {
    let s = snapshot(&[1.0, 1.0, 1.0]);
    let r = rules(|c| c.statement_level = false);
    let mut rng = StdRng::seed_from_u64(1);
    let mut sess = SessionRouting::default();
    let first = choose_read(
        &r,
        &s,
        &BTreeMap::new(),
        &Client::default(),
        &mut sess,
        &mut rng,
    )
    .unwrap();
    for _ in 0..50 {
        let d = choose_read(
            &r,
            &s,
            &BTreeMap::new(),
            &Client::default(),
            &mut sess,
            &mut rng,
        )
        .unwrap();
        assert_eq!(d.node, first.node);
    }
    let c = counts(&rules(|_| {}), &s, &BTreeMap::new(), 300);
    assert!(c.iter().all(|&n| n > 50), "{c:?}");
}

#[test]
fn redirect_lists_application_before_database_before_user() {
    let s = snapshot(&[1.0, 1.0, 1.0]);
    let r = rules(|c| {
        c.app_name_redirect_preference_list = "batch.*:2".into();
        c.database_redirect_preference_list = "app:primary".into();
        c.user_redirect_preference_list = "app:1".into();
    });
    let mut rng = StdRng::seed_from_u64(3);
    let mut pick = |app: &str| {
        let client = Client {
            user: "app",
            database: "app",
            application_name: app,
        };
        choose_read(
            &r,
            &s,
            &BTreeMap::new(),
            &client,
            &mut SessionRouting::default(),
            &mut rng,
        )
        .unwrap()
        .node
    };
    assert_eq!(pick("batch-7"), 2);
    assert_eq!(pick("web"), 0);
}

#[test]
fn write_like_units_and_session_history_force_the_primary() {
    let r = rules(|_| {});
    let read = classify::classify_uncached("SELECT * FROM t");
    let none = Facts::default();
    let sess = SessionRouting::default();
    assert_eq!(primary_reason(&r, &read, &none, &sess), None);
    let write = classify::classify_uncached("UPDATE t SET a = 1");
    assert!(primary_reason(&r, &write, &none, &sess).is_some());
    let begin = classify::classify_uncached("BEGIN");
    assert!(primary_reason(&r, &begin, &none, &sess).is_some());
    let ro = classify::classify_uncached("BEGIN READ ONLY");
    assert_eq!(primary_reason(&r, &ro, &none, &sess), None);
    let volatile = Facts {
        volatile_function: true,
        ..Facts::default()
    };
    assert!(primary_reason(&r, &read, &volatile, &sess).is_some());
    let hinted = classify::classify_uncached("/* tidepool: primary */ SELECT 1");
    assert!(
        primary_reason(
            &rules(|c| c.allow_sql_comments = true),
            &hinted,
            &none,
            &sess
        )
        .is_some()
    );
    let commented = classify::classify_uncached("/* report */ SELECT 1");
    assert!(primary_reason(&r, &commented, &none, &sess).is_some());
    assert_eq!(
        primary_reason(
            &rules(|c| c.allow_sql_comments = true),
            &commented,
            &none,
            &sess
        ),
        None
    );

    let wrote = SessionRouting {
        wrote: true,
        ..SessionRouting::default()
    };
    let always = rules(|c| c.disable_on_write = OnWrite::Always);
    assert!(primary_reason(&always, &read, &none, &wrote).is_some());
    assert_eq!(primary_reason(&r, &read, &none, &wrote), None);

    let dml = rules(|c| {
        c.disable_on_write = OnWrite::DmlAdaptive;
        c.dml_adaptive_relations = vec!["orders:order_lines".into()];
    });
    let mut sess = SessionRouting::default();
    sess.written_tables.insert("orders".into());
    assert!(
        primary_reason(
            &dml,
            &classify::classify_uncached("SELECT * FROM orders"),
            &none,
            &sess
        )
        .is_some()
    );
    assert!(
        primary_reason(
            &dml,
            &classify::classify_uncached("SELECT * FROM order_lines"),
            &none,
            &sess
        )
        .is_some()
    );
    assert_eq!(
        primary_reason(
            &dml,
            &classify::classify_uncached("SELECT * FROM other"),
            &none,
            &sess
        ),
        None
    );
}

#[test]
fn invalid_settings_are_reported_with_key_paths() {
    let cfg = LoadBalancingConfig {
        primary_routing_patterns: vec!["(".into()],
        app_name_redirect_preference_list: "x:nowhere".into(),
        ..LoadBalancingConfig::default()
    };
    let errs = validate(&cfg);
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"load_balancing.primary_routing_patterns[0]"));
    assert!(paths.contains(&"load_balancing.app_name_redirect_preference_list"));
}

#[test]
fn after_a_write_reads_wait_for_a_standby_that_replayed_it() {
    use std::time::{Duration, Instant};
    let s = snapshot(&[0.0, 1.0, 1.0]);
    let r = rules(|c| c.statement_level = false);
    let t0 = Instant::now();
    let lag = |covers: Option<Instant>| Lag {
        covers_since: covers,
        ..Lag::default()
    };
    let mut lags = BTreeMap::from([(1, lag(Some(t0))), (2, lag(Some(t0)))]);
    let mut rng = StdRng::seed_from_u64(7);
    let pick = |sess: &mut SessionRouting, lags: &BTreeMap<usize, Lag>, rng: &mut StdRng| {
        choose_read(&r, &s, lags, &Client::default(), sess, rng)
            .unwrap()
            .node
    };
    // A session that has not written reads from the standbys.
    let mut reader = SessionRouting::default();
    assert_ne!(pick(&mut reader, &lags, &mut rng), 0);
    // One that wrote after both standbys' last covered instant reads from
    // the primary, and keeps its read node for later.
    let mut writer = SessionRouting {
        wrote_at: Some(t0 + Duration::from_millis(5)),
        ..SessionRouting::default()
    };
    for _ in 0..20 {
        assert_eq!(pick(&mut writer, &lags, &mut rng), 0);
    }
    let kept = writer.read_node.expect("a read node is kept");
    assert_ne!(kept, 0);
    // Once its standby has replayed past the write, it reads there again.
    lags.insert(kept, lag(Some(t0 + Duration::from_millis(10))));
    assert_eq!(pick(&mut writer, &lags, &mut rng), kept);
    // With another rule, the write does not matter.
    let off = rules(|c| {
        c.statement_level = false;
        c.disable_on_write = OnWrite::Off;
    });
    let mut w2 = SessionRouting {
        wrote_at: Some(t0 + Duration::from_secs(60)),
        ..SessionRouting::default()
    };
    let n = choose_read(&off, &s, &lags, &Client::default(), &mut w2, &mut rng)
        .unwrap()
        .node;
    assert_ne!(n, 0);
    // Statement-level balancing picks among the standbys that have it,
    // and the primary when none has.
    let stmt = rules(|_| {});
    for _ in 0..20 {
        let n = choose_read(&stmt, &s, &lags, &Client::default(), &mut writer, &mut rng)
            .unwrap()
            .node;
        assert_eq!(n, kept);
    }
    lags.insert(kept, lag(None));
    let n = choose_read(&stmt, &s, &lags, &Client::default(), &mut writer, &mut rng)
        .unwrap()
        .node;
    assert_eq!(n, 0);
}

#[test]
fn a_serializable_session_reads_from_the_primary() {
    let r = rules(|_| {});
    let sess = SessionRouting {
        serializable_default: true,
        ..SessionRouting::default()
    };
    let class = Class::default();
    assert!(primary_reason(&r, &class, &Facts::default(), &sess).is_some());
    assert!(primary_reason(&r, &class, &Facts::default(), &SessionRouting::default()).is_none());
}

#[test]
fn a_session_keeps_its_read_node_while_it_can_take_reads() {
    let r = rules(|c| {
        c.statement_level = false;
        c.delay_threshold = 1000;
    });
    // The primary takes no reads: the read node is always a standby.
    let mut s = snapshot(&[0.0, 1.0, 1.0]);
    let mut rng = StdRng::seed_from_u64(7);
    let mut sess = SessionRouting::default();
    let mut pick = |s: &Snapshot, lags: &BTreeMap<usize, Lag>, sess: &mut SessionRouting| {
        choose_read(&r, s, lags, &Client::default(), sess, &mut rng).unwrap()
    };
    let none = BTreeMap::new();
    let first = pick(&s, &none, &mut sess);
    assert_eq!(first.reason, "load balanced by weight");
    assert_eq!(sess.read_node, Some(first.node));
    for _ in 0..20 {
        let d = pick(&s, &none, &mut sess);
        assert_eq!(
            (d.node, d.reason),
            (first.node, "the session's load-balance node")
        );
    }
    // Its node goes down: the next unit goes to the other standby, which
    // is kept.
    s.nodes[first.node].status = Status::Down;
    let moved = pick(&s, &none, &mut sess);
    assert_eq!(moved.node, 3 - first.node);
    assert_eq!(moved.reason, "load balanced by weight");
    assert_eq!(sess.read_node, Some(moved.node));
    s.nodes[first.node].status = Status::Up;
    // Its node weighs nothing now, or lags too far: the same.
    for weightless in [true, false] {
        let kept = sess.read_node.expect("kept");
        let mut s = s.clone();
        let mut lags = BTreeMap::new();
        if weightless {
            s.nodes[kept].weight = 0.0;
        } else {
            lags.insert(
                kept,
                Lag {
                    bytes: 10_000,
                    ..Lag::default()
                },
            );
        }
        let d = pick(&s, &lags, &mut sess);
        assert_eq!(d.node, 3 - kept, "weightless: {weightless}");
        assert_eq!(sess.read_node, Some(d.node));
    }
}
