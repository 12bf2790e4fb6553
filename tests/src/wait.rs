//! Polling with a deadline: the only way tests wait.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often conditions are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it returns true, failing once `timeout` has
/// passed. `what` names the condition in the error.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `attempt` until it returns `Ok`, failing with the last error once
/// `timeout` has passed.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Async [`wait_until`]: awaits `condition()` until it yields true.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Async [`wait_for`]: awaits `attempt()` until it yields `Ok`.
pub async fn wait_for_async<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls == 3
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn wait_until_fails_after_the_deadline() {
        let err = wait_until(Duration::from_millis(50), "never", || false).unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn wait_for_keeps_the_last_error() {
        let err = wait_for::<()>(Duration::from_millis(50), "nothing", || {
            bail!("still broken")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("still broken"), "{err:#}");
    }
}
