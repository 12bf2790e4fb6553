//! CancelRequest routing.
//!
//! Each client gets a key (pid, secret) made by tidepool. A CancelRequest
//! arrives on a new connection carrying that key; tidepool finds the client
//! and forwards a CancelRequest with the real key of the backend connection
//! serving it at that moment, if any.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;

use subtle::ConstantTimeEq;

use crate::backend::CancelTarget;

/// The backend a client is using right now, for cancellation.
#[derive(Debug, Default)]
pub struct CancelSlot {
    state: Mutex<SlotState>,
    /// tidepool is shutting down: the session ends once it is idle.
    closing: AtomicBool,
    /// The session's task, woken when `closing` is set.
    closing_waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct SlotState {
    target: Option<Arc<CancelTarget>>,
    /// The session waits for a server connection for work the client sent.
    waiting: bool,
    /// A cancel request came meanwhile.
    requested: bool,
}

impl CancelSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session has work of the client's in hand and no server
    /// connection for it yet (routing it, waiting for one): a cancel
    /// request meanwhile is kept, not dropped — on a direct connection the
    /// server would already be running that work. Forgets a request kept
    /// for earlier work.
    pub fn begin_wait(&self) {
        *self.lock() = SlotState {
            waiting: true,
            ..SlotState::default()
        };
    }

    /// As `begin_wait`, keeping a request already made while waiting
    /// (routing a unit, then checking out its connection).
    pub fn wait(&self) {
        let mut s = self.lock();
        let requested = s.waiting && s.requested;
        *s = SlotState {
            waiting: true,
            requested,
            target: None,
        };
    }

    /// The backend serving the client now. True when a cancel request came
    /// while the session waited for it: the caller forwards it once the
    /// work is sent.
    pub fn set(&self, target: Arc<CancelTarget>) -> bool {
        let mut s = self.lock();
        let requested = s.waiting && s.requested;
        *s = SlotState {
            target: Some(target),
            ..SlotState::default()
        };
        requested
    }

    pub fn clear(&self) {
        *self.lock() = SlotState::default();
    }

    pub fn get(&self) -> Option<Arc<CancelTarget>> {
        self.lock().target.clone()
    }

    /// A cancel request for this client: the backend to forward it to, or
    /// none — kept for the work in hand when the session is waiting for a
    /// connection (`set` reports it), ignored when the client runs nothing,
    /// as PostgreSQL ignores it.
    pub fn cancel(&self) -> Option<Arc<CancelTarget>> {
        let mut s = self.lock();
        if s.target.is_none() && s.waiting {
            s.requested = true;
        }
        s.target.clone()
    }

    /// Ready once tidepool is shutting down (see
    /// [`CancelRegistry::close_all`]). Polled in place by the session, so
    /// that an idle client's task keeps no future for the wait.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.closing_waker.register(cx.waker());
        if self.closing.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_waker.wake();
    }
}

/// Every live client's cancel key. The process ids are tidepool's own
/// random numbers, or a session-mode client's server process's id, never
/// a client's choice: a fast hash does (one insert and one removal per
/// connection).
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, (i32, Weak<CancelSlot>), foldhash::fast::RandomState>>,
}

/// Removes the client's key when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Gives a new client a unique key.
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot = Arc::new(CancelSlot::default());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let pid: i32 = rand::random::<u32>() as i32 & 0x7fff_ffff;
            if pid == 0 || entries.contains_key(&pid) {
                continue;
            }
            let secret: i32 = rand::random();
            entries.insert(pid, (secret, Arc::downgrade(&slot)));
            return Registration {
                registry: self.clone(),
                pid,
                secret,
                slot,
            };
        }
    }

    /// Tells every registered session that tidepool is shutting down:
    /// each ends once it is idle. A session registered later sees the
    /// shutdown when it starts (`Shared::shutdown` is set first).
    pub fn close_all(&self) {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (_, slot) in entries.values() {
            if let Some(slot) = slot.upgrade() {
                slot.close();
            }
        }
    }

    /// Gives `r` the process id `pid` when no other client has it (a
    /// session-mode client takes its server process's id).
    pub fn rekey(&self, r: &mut Registration, pid: i32) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if pid <= 0 || entries.contains_key(&pid) {
            return;
        }
        if let Some(entry) = entries.remove(&r.pid) {
            entries.insert(pid, entry);
            r.pid = pid;
        }
    }

    /// The backend to cancel for a request with this key, if the key is
    /// right and the client is running something.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<Arc<CancelTarget>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expected, slot) = entries.get(&pid)?;
        if !bool::from(expected.to_be_bytes().ct_eq(secret)) {
            return None;
        }
        slot.upgrade()?.cancel()
    }

    /// The key of the client whose session holds backend process `pid` of
    /// the server at `addr` now, if any: what a notification that backend
    /// sent should name.
    pub fn client_of(&self, addr: SocketAddr, pid: i32) -> Option<i32> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().find_map(|(client, (_, slot))| {
            let target = slot.upgrade()?.get()?;
            (target.pid == pid && target.addr == addr).then_some(*client)
        })
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_the_right_key_finds_the_backend() {
        let reg = Arc::new(CancelRegistry::default());
        let r = reg.register();
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert!(
            reg.lookup(r.pid, &r.secret.to_be_bytes()).is_none(),
            "idle client"
        );
        r.slot.set(Arc::new(CancelTarget {
            addr,
            pid: 77,
            secret: Bytes::from_static(b"abcd"),
            tls: None,
        }));
        let t = reg.lookup(r.pid, &r.secret.to_be_bytes()).unwrap();
        assert_eq!((t.addr, t.pid), (addr, 77));
        assert_eq!(reg.client_of(addr, 77), Some(r.pid));
        assert_eq!(reg.client_of(addr, 78), None);
        assert_eq!(reg.client_of("127.0.0.1:5433".parse().unwrap(), 77), None);
        // A session-mode client takes its server process's id as its key.
        let mut other = reg.register();
        let secret = other.secret;
        reg.rekey(&mut other, 4242);
        assert_eq!(other.pid, 4242);
        assert!(reg.lookup(4242, &secret.to_be_bytes()).is_none(), "idle");
        let mut third = reg.register();
        let before = third.pid;
        reg.rekey(&mut third, 4242);
        assert_eq!(third.pid, before, "an id in use is not taken twice");
        drop(other);
        drop(third);
        assert!(reg.lookup(r.pid, &(r.secret ^ 1).to_be_bytes()).is_none());
        let pid = r.pid;
        drop(r);
        assert!(reg.lookup(pid, &[0; 4]).is_none());
        assert!(reg.is_empty());
    }

    #[test]
    fn a_cancel_while_the_session_waits_for_a_connection_is_kept_for_its_work() {
        let target = Arc::new(CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 77,
            secret: Bytes::from_static(b"abcd"),
            tls: None,
        });
        let slot = CancelSlot::default();
        // Nothing running: ignored, and not kept for later work.
        assert!(slot.cancel().is_none());
        slot.begin_wait();
        assert!(!slot.set(target.clone()), "no cancel came while waiting");
        slot.clear();
        // Work in hand (routed, then checked out), no connection yet: kept
        // through both, and reported when one comes.
        slot.begin_wait();
        assert!(slot.cancel().is_none());
        slot.wait();
        assert!(
            slot.set(target.clone()),
            "the cancel is forwarded after the work"
        );
        assert!(slot.cancel().is_some(), "attached: forwarded at once");
        // Reported once.
        assert!(!slot.set(target.clone()));
        // Given up waiting (an error): the next work starts clean.
        slot.begin_wait();
        assert!(slot.cancel().is_none());
        slot.clear();
        slot.begin_wait();
        slot.wait();
        assert!(!slot.set(target.clone()));
        // A request kept for work that got no connection is not carried
        // to the next work.
        slot.begin_wait();
        assert!(slot.cancel().is_none());
        slot.begin_wait();
        assert!(!slot.set(target));
    }
}
