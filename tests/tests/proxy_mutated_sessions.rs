//! Thousands of broken sessions — well-formed ones with a byte flipped, a
//! length changed, a message cut short or doubled, random bytes inserted,
//! clients that vanish before reading or mid-reply — against tidepool,
//! seeded so that a failure can be replayed, with a well-behaved client
//! alongside. That client sees no error and loses no write; afterwards
//! every pooled server connection is back idle and memory stays bounded.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tidepool_tests::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small deterministic generator (xorshift64*): the same seed gives the
/// same sessions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Well-formed messages a client sends after login; the session mutates
/// some of them.
fn templates() -> Vec<Vec<u8>> {
    let q = |s: &str| wire::message(b'Q', format!("{s}\0").as_bytes());
    vec![
        q("SELECT 1"),
        q("BEGIN"),
        q("COMMIT"),
        q("ROLLBACK"),
        q("INSERT INTO junk VALUES (1)"),
        q("SELECT * FROM junk LIMIT 3"),
        q("SET application_name = 'x'"),
        q("SET statement_timeout = 1000"),
        q("LISTEN ch"),
        q("SELECT pg_advisory_lock(7)"),
        q("CREATE TEMP TABLE t (a int)"),
        q("PREPARE s AS SELECT 1"),
        q("DEALLOCATE ALL"),
        q("COPY junk FROM STDIN"),
        q("SELECT pg_sleep(0.01)"),
        q("SELECT 1/0"),
        wire::message(b'P', b"\0INSERT INTO junk VALUES ($1)\0\0\x01\0\0\0\x17"),
        wire::message(b'P', b"s1\0SELECT $1::int\0\0\0"),
        wire::message(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"),
        wire::message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x012\0\0"),
        wire::message(b'D', b"S\0"),
        wire::message(b'D', b"Ss1\0"),
        wire::message(b'E', b"\0\0\0\0\0"),
        wire::message(b'C', b"Ss1\0"),
        wire::message(b'H', b""),
        wire::message(b'S', b""),
        wire::message(b'S', b""),
        wire::message(b'd', b"1\n"),
        wire::message(b'c', b""),
        wire::message(b'f', b"gave up\0"),
        wire::message(b'F', b"\0\0\0\x01\0\0\0\0\0\0"),
        wire::message(b'X', b""),
    ]
}

/// One mutation of `m` in place.
fn mutate(rng: &mut Rng, m: &mut Vec<u8>) {
    match rng.below(6) {
        0 if !m.is_empty() => {
            let i = rng.below(m.len());
            m[i] ^= 1 << rng.below(8);
        }
        1 if m.len() >= 5 => {
            // A length that lies (longer, shorter, negative, huge).
            let len = [
                0u32,
                3,
                4,
                0x7fff_ffff,
                0xffff_ffff,
                rng.next() as u32 % 70_000,
            ][rng.below(6)];
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        2 if !m.is_empty() => m.truncate(rng.below(m.len())),
        3 => {
            let at = rng.below(m.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            m.splice(at..at, junk);
        }
        4 => {
            let copy = m.clone();
            m.extend_from_slice(&copy);
        }
        _ => m.push(rng.next() as u8),
    }
}

/// The bytes of one session: a startup packet (now and then broken or an
/// SSLRequest), then up to eight messages, some of them mutated.
fn session(rng: &mut Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    let mut out = match rng.below(20) {
        0 => vec![0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], // SSLRequest
        1 => wire::startup_packet(&[("user", "app"), ("database", "nosuchdb")]),
        2 => wire::startup_packet(&[
            ("user", "app"),
            ("database", "app"),
            ("options", "-c nosuch=1"),
        ]),
        _ => wire::startup_packet(&[("user", "app"), ("database", "app")]),
    };
    if rng.chance(5) {
        mutate(rng, &mut out);
    }
    for _ in 0..1 + rng.below(8) {
        let mut m = templates[rng.below(templates.len())].clone();
        if rng.chance(30) {
            mutate(rng, &mut m);
        }
        out.extend_from_slice(&m);
    }
    out
}

/// Sends a session, sometimes in pieces, then reads for a while, leaves at
/// once, or leaves mid-reply.
async fn run_session(port: u16, bytes: Vec<u8>, how: usize) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let mut rest = &bytes[..];
    if how.is_multiple_of(2) {
        // In two pieces, the second after the login has been answered.
        let cut = rest
            .len()
            .min(wire::startup_packet(&[("user", "app"), ("database", "app")]).len());
        let _ = s.write_all(&rest[..cut]).await;
        let mut b = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await;
        rest = &rest[cut..];
    }
    let _ = s.write_all(rest).await;
    let mut b = vec![0u8; 16 * 1024];
    match how % 3 {
        0 => {}
        1 => {
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await;
        }
        _ => {
            // Read until the server is done or 500 ms pass.
            let end = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut b)).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

fn rss(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("field in /proc/PID/status")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_sessions_leave_a_well_behaved_client_and_the_pools_unharmed() {
    let sessions: usize = std::env::var("TIDEPOOL_MUTATED_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("TIDEPOOL_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7469_6465_706f_6f6c);
    let trust = "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"all\"\nmethod = \"trust\"\n";
    let bed = common::bed(1, "transaction", "max_size = 20", trust)
        .await
        .unwrap();
    let setup = bed.app().await.unwrap();
    setup
        .batch_execute("CREATE TABLE junk (a int); CREATE TABLE good (id int PRIMARY KEY)")
        .await
        .unwrap();
    let rss_before = rss(bed.tidepool.pid(), "VmRSS:");

    // The well-behaved client: transactions with a write each, and reads.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let client = bed.app().await.unwrap();
        let done = done.clone();
        tokio::spawn(async move {
            let (mut written, mut errors) = (0i32, Vec::new());
            while !done.load(Ordering::Relaxed) && written < 1_000_000 {
                let r = async {
                    client.batch_execute("BEGIN").await?;
                    client
                        .execute("INSERT INTO good VALUES ($1)", &[&(written + 1)])
                        .await?;
                    client.batch_execute("COMMIT").await?;
                    client.query_one("SELECT count(*) FROM good", &[]).await
                }
                .await;
                match r {
                    Ok(_) => written += 1,
                    Err(e) => {
                        errors.push(
                            e.as_db_error()
                                .map(|d| format!("{} {}", d.code().code(), d.message()))
                                .unwrap_or_else(|| e.to_string()),
                        );
                        if errors.len() > 10 {
                            break;
                        }
                    }
                }
            }
            (written, errors)
        })
    };

    let templates = Arc::new(templates());
    let port = bed.tidepool.port();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (templates, next) = (templates.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sessions {
                        break;
                    }
                    let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let bytes = session(&mut rng, &templates);
                    let how = rng.below(6);
                    run_session(port, bytes, how).await;
                }
                w
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (written, errors) = good.await.unwrap();
    assert!(
        errors.is_empty(),
        "the well-behaved client got errors: {errors:?}"
    );
    assert!(written > 0);
    // Every acknowledged write is there.
    let check = bed.direct().await.unwrap();
    let n: i64 = check
        .query_one("SELECT count(*) FROM good", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, written as i64);

    // No server connection is left busy: every pool goes back to idle.
    tidepool_tests::wait_for_async(Duration::from_secs(30), "every pool to be idle", || async {
        let (code, body) = bed.tidepool.http_get("/v1/pools")?;
        anyhow::ensure!(code == 200, "{code} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let busy: Vec<_> = v["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["active"].as_u64() != Some(0))
            .collect();
        anyhow::ensure!(busy.is_empty(), "busy: {busy:?}");
        Ok(())
    })
    .await
    .unwrap();
    let rss_after = rss(bed.tidepool.pid(), "VmRSS:");
    let peak = rss(bed.tidepool.pid(), "VmHWM:");
    eprintln!(
        "{sessions} sessions; {written} transactions of the well-behaved client; RSS {} -> {} KiB (peak {} KiB)",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    assert!(
        rss_after <= rss_before + 64 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_after}"
    );
    // And tidepool still serves.
    let c = bed.app().await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}
