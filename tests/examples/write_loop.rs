//! A client that inserts into `ticks` every `--every` for `--duration`,
//! reconnecting after errors, and prints the longest gap between two
//! successful writes after `--fault-after` (the outage) as
//! `outage_ms=N writes=N errors=N`.
//!
//! `cargo run -p tidepool-tests --example write_loop -- CONNSTR [--every 100ms]
//!  [--duration 10s] [--fault-after 3s]`

use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn millis(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().expect("a duration like 100ms or 10s");
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        other => panic!("unknown duration unit {other}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let conn = args
        .first()
        .cloned()
        .expect("usage: write_loop CONNSTR [options]");
    let every = millis(&arg(&args, "--every", "100ms"));
    let duration = millis(&arg(&args, "--duration", "10s"));
    let fault = millis(&arg(&args, "--fault-after", "3s"));
    let start = Instant::now();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ok: Vec<Instant> = Vec::new();
    let (mut writes, mut errors) = (0u64, 0u64);
    let mut tick = tokio::time::interval(every);
    let base = std::process::id() as i64 * 1_000_000;
    while start.elapsed() < duration {
        tick.tick().await;
        writes += 1;
        let seq = base + writes as i64;
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client = Some(c);
            }
            client
                .as_ref()
                .unwrap()
                .execute("INSERT INTO ticks (seq) VALUES ($1)", &[&seq])
                .await
        })
        .await;
        match r {
            Ok(Ok(_)) => ok.push(Instant::now()),
            _ => {
                errors += 1;
                client = None;
            }
        }
    }
    let at = start + fault;
    let outage = ok
        .windows(2)
        .filter(|w| w[1] > at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(duration);
    println!(
        "outage_ms={} writes={writes} errors={errors}",
        outage.as_millis()
    );
    Ok(())
}
