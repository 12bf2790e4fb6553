//! How one node's state changes, as a pure function of the node and an
//! event. `Cluster` applies it inside the snapshot's atomic swap, so two
//! events that race — a health check's result and an operator's detach —
//! are applied one after the other to the latest state, and neither is
//! lost.

use std::time::SystemTime;

use super::{Detached, Node, Role, Status};
use crate::config::BackendFlag;

/// What happened to a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A health check's outcome: the role the node answered, or why it
    /// did not.
    Checked(Result<Role, String>),
    /// Detached (by tidepool or an operator), and why: never routed to.
    Detach(Detached),
    /// Attached again: routed to once it answers.
    Attach,
    /// Held back from routing (switchover, recovery), or released.
    Hold(bool),
}

/// The node after `event`, at `now`.
pub fn transition(n: &Node, event: &Event, now: SystemTime) -> Node {
    let mut next = n.clone();
    match event {
        Event::Checked(Ok(role)) => {
            next.reachable = true;
            next.last_error = None;
            next.role = if n.flag == BackendFlag::AlwaysPrimary {
                Role::Primary
            } else if n.source.discovered() && *role == Role::Primary && n.role != Role::Primary {
                // A cluster instance becomes the writer when the topology
                // says so and its own connection agrees (`discovery`),
                // never from a check alone; answering in recovery demotes
                // it at once.
                n.role
            } else {
                *role
            };
            next.status = match n.status {
                Status::Down => Status::Down,
                _ if n.held => Status::Waiting,
                _ => Status::Up,
            };
        }
        Event::Checked(Err(e)) => {
            next.reachable = false;
            next.last_error = Some(e.clone());
            if n.flag == BackendFlag::AlwaysPrimary {
                next.role = Role::Primary;
            }
            if n.status != Status::Down {
                next.status = Status::Waiting;
            }
        }
        Event::Detach(why) => {
            next.status = Status::Down;
            next.detached = Some(why.clone());
        }
        Event::Attach => {
            next.held = false;
            next.detached = None;
            next.status = if n.reachable {
                Status::Up
            } else {
                Status::Waiting
            };
        }
        Event::Hold(held) => {
            next.held = *held;
            next.status = match (held, n.status) {
                (true, Status::Up) => Status::Waiting,
                (false, Status::Waiting) if n.reachable => Status::Up,
                (_, s) => s,
            };
        }
    }
    if next.status != n.status || next.role != n.role {
        next.last_status_change = now;
    }
    next
}

/// Whether `a` and `b` differ in what a snapshot shows.
pub fn changed(a: &Node, b: &Node) -> bool {
    a.status != b.status
        || a.role != b.role
        || a.reachable != b.reachable
        || a.held != b.held
        || a.last_error != b.last_error
        || a.detached != b.detached
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::Source;

    fn node(status: Status, role: Role, reachable: bool, held: bool) -> Node {
        Node {
            id: 0,
            name: "pg0".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            weight: 1.0,
            flag: BackendFlag::AllowToFailover,
            status,
            reachable,
            role,
            last_status_change: SystemTime::UNIX_EPOCH,
            last_error: None,
            source: Source::Config,
            held,
            detached: None,
        }
    }

    fn operator() -> Detached {
        Detached::new(
            super::super::DetachCause::Operator,
            "detached by the operator",
        )
    }

    /// (status, role, reachable, held)
    type State = (Status, Role, bool, bool);
    /// A state, an event, the state after.
    type Case = (State, Event, State);

    #[test]
    fn each_event_from_each_state() {
        use Role::*;
        use Status::*;
        let ok = |r: Role| Event::Checked(Ok(r));
        let err = Event::Checked(Err("refused".into()));
        // (status, role, reachable, held), event → (status, role, reachable, held)
        let table: &[Case] = &[
            (
                (Waiting, Unknown, false, false),
                ok(Standby),
                (Up, Standby, true, false),
            ),
            (
                (Up, Primary, true, false),
                err.clone(),
                (Waiting, Primary, false, false),
            ),
            // A detached node stays down whatever its checks say.
            (
                (Down, Standby, false, false),
                ok(Standby),
                (Down, Standby, true, false),
            ),
            (
                (Down, Standby, true, false),
                err.clone(),
                (Down, Standby, false, false),
            ),
            // A held node answers but is not routed to.
            (
                (Waiting, Standby, true, true),
                ok(Standby),
                (Waiting, Standby, true, true),
            ),
            (
                (Up, Standby, true, false),
                Event::Detach(operator()),
                (Down, Standby, true, false),
            ),
            (
                (Down, Standby, true, true),
                Event::Attach,
                (Up, Standby, true, false),
            ),
            (
                (Down, Standby, false, false),
                Event::Attach,
                (Waiting, Standby, false, false),
            ),
            (
                (Up, Standby, true, false),
                Event::Hold(true),
                (Waiting, Standby, true, true),
            ),
            (
                (Waiting, Standby, true, true),
                Event::Hold(false),
                (Up, Standby, true, false),
            ),
            (
                (Waiting, Standby, false, true),
                Event::Hold(false),
                (Waiting, Standby, false, false),
            ),
            (
                (Down, Standby, true, false),
                Event::Hold(true),
                (Down, Standby, true, true),
            ),
        ];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        for ((s, r, reach, held), e, (s2, r2, reach2, held2)) in table {
            let n = node(*s, *r, *reach, *held);
            let m = transition(&n, e, now);
            assert_eq!(
                (m.status, m.role, m.reachable, m.held),
                (*s2, *r2, *reach2, *held2),
                "{s:?} {r:?} reachable={reach} held={held} after {e:?}"
            );
            let moved = m.status != n.status || m.role != n.role;
            assert_eq!(m.last_status_change == now, moved, "{e:?}");
        }
    }

    #[test]
    fn a_cluster_instance_is_not_crowned_by_its_check() {
        let mut n = node(Status::Up, Role::Standby, true, false);
        n.source = Source::AuroraTopology;
        n.flag = BackendFlag::DisallowToFailover;
        let m = transition(&n, &Event::Checked(Ok(Role::Primary)), SystemTime::now());
        assert_eq!(m.role, Role::Standby);
        n.role = Role::Primary;
        let m = transition(&n, &Event::Checked(Ok(Role::Standby)), SystemTime::now());
        assert_eq!(m.role, Role::Standby, "answering in recovery demotes it");
    }

    #[test]
    fn a_detach_carries_its_cause_until_an_attach() {
        let n = node(Status::Up, Role::Standby, true, false);
        let m = transition(&n, &Event::Detach(operator()), SystemTime::now());
        assert_eq!(m.detached, Some(operator()));
        // A check's result does not clear it.
        let m = transition(&m, &Event::Checked(Ok(Role::Standby)), SystemTime::now());
        assert_eq!(
            (m.status, m.detached.clone()),
            (Status::Down, Some(operator()))
        );
        assert!(changed(&n, &m));
        let m = transition(&m, &Event::Attach, SystemTime::now());
        assert_eq!(m.detached, None);
    }
}
