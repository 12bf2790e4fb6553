//! Which worker thread serves clients here (`server.scheduler =
//! "per_core"`): pools keep an idle connection with the worker that opened
//! it, and a connection remembers its worker. A leaf: the threads
//! themselves are started by `server::workers`.

use std::{
    cell::Cell,
    sync::atomic::{AtomicUsize, Ordering},
};

/// Workers serving clients; 1 until `server::workers::serve` starts more.
static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many workers serve clients.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The worker this thread is; `None` off the workers (the control plane,
/// the `work_stealing` scheduler, tests).
pub fn current() -> Option<usize> {
    CURRENT.with(|c| c.get())
}

/// Records that `threads` workers serve clients (before they start).
pub(crate) fn set_count(threads: usize) {
    COUNT.store(threads, Ordering::Relaxed);
}

/// Marks this thread as worker `i`.
pub(crate) fn enter(i: usize) {
    CURRENT.with(|c| c.set(Some(i)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_off_the_workers_is_no_worker() {
        assert_eq!(std::thread::spawn(current).join().unwrap(), None);
    }
}
