//! Cost of classifying a statement for routing, with and without the
//! shape cache. Run: `cargo run --release -p tidepool --example classify_cost`.
//! A measurement, not a test: it asserts nothing about time.

use std::time::Instant;

use tidepool::router::classify::{Classifier, classify_uncached};

const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
    "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = 7",
    "SELECT o.id, sum(l.qty) FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.customer = {} GROUP BY o.id",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, {}, 4, CURRENT_TIMESTAMP)",
    "WITH recent AS (SELECT * FROM events WHERE at > now() - interval '1 hour') SELECT count(*) FROM recent WHERE kind = {}",
    "BEGIN",
    "SELECT * FROM t WHERE id = {} FOR UPDATE",
];

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let texts: Vec<String> = (0..rounds)
        .map(|i| STATEMENTS[i % STATEMENTS.len()].replace("{}", &i.to_string()))
        .collect();

    let started = Instant::now();
    let mut writes = 0usize;
    for t in &texts {
        writes += classify_uncached(t).write.is_some() as usize;
    }
    let uncached = started.elapsed();

    let classifier = Classifier::default();
    let started = Instant::now();
    for t in &texts {
        writes += classifier.classify(t).write.is_some() as usize;
    }
    let cached = started.elapsed();

    let per = |d: std::time::Duration| d.as_nanos() as f64 / rounds as f64 / 1000.0;
    println!(
        "statements: {rounds} ({} shapes), writes seen: {writes}",
        STATEMENTS.len()
    );
    println!(
        "classification without cache: {:.2} µs/statement",
        per(uncached)
    );
    println!(
        "classification with cache:    {:.2} µs/statement",
        per(cached)
    );
    println!(
        "cache hits {} misses {}; speed-up {:.1}x",
        classifier.hits.load(std::sync::atomic::Ordering::Relaxed),
        classifier.misses.load(std::sync::atomic::Ordering::Relaxed),
        uncached.as_secs_f64() / cached.as_secs_f64()
    );
}
