//! Failed logins slow down their source: after a few failures from one
//! address, each further refusal is answered later (a growing delay, up to
//! a bound), so that guessing passwords from one place gets slow while
//! every other client logs in at full speed. A success forgets the
//! address's failures; so does a quiet minute. Pure bookkeeping with the
//! time passed in; the caller sleeps.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures from one address before refusals are delayed.
const FREE_FAILURES: u32 = 3;
/// Added per failure past the free ones.
const STEP: Duration = Duration::from_millis(250);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (a flood of addresses cannot grow the map).
const MAX_SOURCES: usize = 10_000;

#[derive(Default)]
pub struct FailedLogins {
    sources: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailedLogins {
    /// Records a failed login from `ip` at `now`; returns how long to wait
    /// before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
            sources.retain(|_, (_, last)| now.saturating_duration_since(*last) < WINDOW);
            if sources.len() >= MAX_SOURCES {
                // Still full of recent sources: an address flood. Keep the
                // bound; the newcomer is delayed as a repeat offender.
                return MAX_DELAY;
            }
        }
        let entry = sources.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        let over = entry.0.saturating_sub(FREE_FAILURES);
        (STEP * over).min(MAX_DELAY)
    }

    /// A successful login from `ip`: its failures are forgotten.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.is_empty() {
            sources.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_repeated_failures_slow_it_alone() {
        let f = FailedLogins::default();
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let delays: Vec<Duration> = (0..6)
            .map(|i| f.failed(a, t + Duration::from_secs(i)))
            .collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3], STEP);
        assert_eq!(delays[5], STEP * 3);
        // Another address is not slowed.
        assert_eq!(f.failed(b, t), Duration::ZERO);
        // The delay is bounded.
        let last = (0..100)
            .map(|i| f.failed(a, t + Duration::from_secs(10 + i / 10)))
            .last();
        assert_eq!(last, Some(MAX_DELAY));
        // A success forgets; so does a quiet window.
        f.succeeded(a);
        assert_eq!(f.failed(a, t + Duration::from_secs(30)), Duration::ZERO);
        for _ in 0..5 {
            f.failed(b, t + Duration::from_secs(1));
        }
        assert_eq!(f.failed(b, t + Duration::from_secs(200)), Duration::ZERO);
    }

    #[test]
    fn a_flood_of_addresses_cannot_grow_it_without_bound() {
        let f = FailedLogins::default();
        let t = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            f.failed(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(f.sources.lock().unwrap().len() <= MAX_SOURCES);
    }
}
