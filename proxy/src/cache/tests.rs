//! The memory store's generations: what a write does to results read
//! before, during and after it.

use super::*;
use std::time::Duration;

fn cache() -> Arc<QueryCache> {
    QueryCache::new(&QueryCacheConfig {
        enabled: true,
        ttl: Duration::from_secs(60),
        ..QueryCacheConfig::default()
    })
    .unwrap()
}

fn tables(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

fn stamp(l: Lookup) -> Vec<u64> {
    match l {
        Lookup::Miss(Some(s)) => s,
        other => panic!("expected a storable miss, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stored_result_is_served_until_a_write_to_its_table_ends() {
    let c = cache();
    let (k, t) = ([1; 32], tables(&["*", "a"]));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"rows"));
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Hit(b) if &b[..] == b"rows"));
    // A write to another table changes nothing.
    c.begin_write("db", &tables(&["b"])).await;
    c.end_write("db", &tables(&["b"]), true, true).await;
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Hit(_)));
    // The same table in another database changes nothing either.
    c.begin_write("other", &tables(&["a"])).await;
    c.end_write("other", &tables(&["a"]), true, true).await;
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Hit(_)));
    // While a write to `a` is in flight: no hit, and nothing may be stored.
    c.begin_write("db", &tables(&["a"])).await;
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Miss(None)));
    c.end_write("db", &tables(&["a"]), true, true).await;
    assert!(matches!(
        c.lookup("db", &k, &t).await,
        Lookup::Miss(Some(_))
    ));
}

#[tokio::test]
async fn a_result_read_before_a_write_ended_is_never_served_after() {
    let c = cache();
    let (k, t) = ([2; 32], tables(&["*", "a"]));
    // Read started (generations taken), then a write runs and ends, then
    // the old result arrives and is stored: it must not be served.
    let old = stamp(c.lookup("db", &k, &t).await);
    c.begin_write("db", &tables(&["a"])).await;
    c.end_write("db", &tables(&["a"]), true, true).await;
    c.store(k, old, Bytes::from_static(b"old rows"));
    assert!(matches!(
        c.lookup("db", &k, &t).await,
        Lookup::Miss(Some(_))
    ));
}

#[tokio::test]
async fn a_rolled_back_write_drops_nothing_but_its_marks() {
    let c = cache();
    let (k, t) = ([6; 32], tables(&["*", "a"]));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"rows"));
    c.begin_write("db", &tables(&["a"])).await;
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Miss(None)));
    c.end_write("db", &tables(&["a"]), true, false).await;
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Hit(_)));
}

#[tokio::test]
async fn a_write_to_every_table_drops_every_result_of_its_database() {
    let c = cache();
    let (k, t) = ([3; 32], tables(&["*", "a"]));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"rows"));
    c.begin_write("db", &tables(&["*"])).await;
    c.end_write("db", &tables(&["*"]), true, true).await;
    assert!(matches!(
        c.lookup("db", &k, &t).await,
        Lookup::Miss(Some(_))
    ));
}

#[tokio::test]
async fn invalidation_by_table_name_and_of_everything() {
    let c = cache();
    let (k, t) = ([4; 32], tables(&["*", "a"]));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"rows"));
    c.invalidate(Some("public.a")).await.unwrap();
    assert!(matches!(
        c.lookup("db", &k, &t).await,
        Lookup::Miss(Some(_))
    ));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"rows"));
    c.invalidate(None).await.unwrap();
    assert!(matches!(
        c.lookup("db", &k, &t).await,
        Lookup::Miss(Some(_))
    ));
}

#[tokio::test]
async fn results_over_the_size_limit_are_not_kept() {
    let c = QueryCache::new(&QueryCacheConfig {
        enabled: true,
        max_entry_size: 8,
        ..QueryCacheConfig::default()
    })
    .unwrap();
    let (k, t) = ([5; 32], tables(&["*", "a"]));
    let s = stamp(c.lookup("db", &k, &t).await);
    c.store(k, s, Bytes::from_static(b"more than eight bytes"));
    assert!(matches!(c.lookup("db", &k, &t).await, Lookup::Miss(_)));
    assert_eq!(c.stats.not_stored.load(Ordering::Relaxed), 1);
}

#[test]
fn entries_survive_the_memcached_encoding() {
    let e = Entry {
        stamp: vec![7, u64::MAX],
        bytes: Bytes::from_static(b"T\0\0\0\x04"),
    };
    let d = Entry::decode(&e.encode()).unwrap();
    assert_eq!(d.stamp, e.stamp);
    assert_eq!(d.bytes, e.bytes);
    assert!(Entry::decode(&[9, 0, 0, 0, 1]).is_none());
}
