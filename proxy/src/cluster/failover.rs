//! Failover decisions: pure functions of a snapshot (and of WAL positions
//! and timelines the manager gathered), no I/O. The manager executes them.

use std::{collections::BTreeMap, fmt, str::FromStr};

use super::{Node, Role, Snapshot, Status, persist::SystemId};
use crate::config::BackendFlag;

/// A WAL position (`pg_lsn`), e.g. `0/3000060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("not an LSN: {s:?}"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|e| format!("LSN {s:?}: {e}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|e| format!("LSN {s:?}: {e}"))?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(format!("LSN {s:?} out of range"));
        }
        Ok(Lsn(hi << 32 | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// How far a standby has come, as it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub node: usize,
    /// `pg_is_in_recovery()`: a node that is no longer in recovery cannot be
    /// promoted (it already was, by someone else).
    pub in_recovery: bool,
    /// `pg_last_wal_receive_lsn()`: WAL on disk (may be ahead of replay).
    pub receive: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay: Option<Lsn>,
}

impl Position {
    /// The WAL the node will have once it replays what it holds.
    fn reach(&self) -> Lsn {
        self.receive.max(self.replay).unwrap_or_default()
    }
}

/// How the detach reason of a node that failed its health checks begins
/// (`auto_failback` brings back only such nodes).
pub const HEALTH_CHECK_FAILED: &str = "health check failed";

/// What to do about a node that failed every health-check retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Not attached (already detached, or never seen answering): nothing.
    Nothing,
    /// Its flag forbids detaching it: keep checking until it answers.
    KeepRetrying,
    /// A standby (or a node tidepool does not write to): detach it.
    Detach,
    /// The primary: detach and fence it, then promote a standby.
    Failover,
    /// The primary, with automatic failover off: detach it only.
    DetachPrimary,
}

/// The decision for `node` failing its checks in `snap`.
pub fn on_failure(snap: &Snapshot, node: usize, auto_failover: bool) -> OnFailure {
    let Some(n) = snap.node(node) else {
        return OnFailure::Nothing;
    };
    if n.flag != BackendFlag::AllowToFailover {
        return OnFailure::KeepRetrying;
    }
    if n.status == Status::Down || !was_attached(n) {
        return OnFailure::Nothing;
    }
    if n.role != Role::Primary {
        return OnFailure::Detach;
    }
    // Another attached primary answering means this one was already
    // replaced; no promotion is needed.
    let other_primary = snap
        .nodes
        .iter()
        .any(|o| o.id != node && o.status == Status::Up && o.role == Role::Primary);
    if other_primary || !auto_failover {
        OnFailure::DetachPrimary
    } else {
        OnFailure::Failover
    }
}

/// Whether the node was ever seen answering since it was attached: a node
/// that never answered has no role to lose.
fn was_attached(n: &Node) -> bool {
    n.role != Role::Unknown
}

/// Standbys that may be promoted, best first: attached, answering,
/// `allow_to_failover`, still in recovery; the most WAL first (received or
/// replayed), then the most replayed, then the lowest index.
pub fn candidates(snap: &Snapshot, positions: &[Position], old_primary: usize) -> Vec<usize> {
    let mut eligible: Vec<&Position> = positions
        .iter()
        .filter(|p| p.node != old_primary && p.in_recovery)
        .filter(|p| {
            snap.node(p.node).is_some_and(|n| {
                n.flag == BackendFlag::AllowToFailover && n.status != Status::Down && n.reachable
            })
        })
        .collect();
    eligible.sort_by(|a, b| {
        b.reach()
            .cmp(&a.reach())
            .then(b.replay.cmp(&a.replay))
            .then(a.node.cmp(&b.node))
    });
    eligible.into_iter().map(|p| p.node).collect()
}

/// Standbys that should follow `new_primary` after a failover: every other
/// attached node that is not the old primary.
pub fn followers(snap: &Snapshot, new_primary: usize, old_primary: usize) -> Vec<usize> {
    snap.nodes
        .iter()
        .filter(|n| n.id != new_primary && n.id != old_primary)
        .filter(|n| n.status != Status::Down && n.flag != BackendFlag::AlwaysPrimary)
        .map(|n| n.id)
        .collect()
}

/// Attached nodes answering as primary; more than one is a split.
pub fn primaries(snap: &Snapshot) -> Vec<usize> {
    snap.nodes
        .iter()
        .filter(|n| n.status == Status::Up && n.role == Role::Primary)
        .map(|n| n.id)
        .collect()
}

/// Given the timelines of every attached primary, the false primaries to
/// detach: those not on the newest timeline. On a tie, the node that has
/// been primary the longest (earliest last status change) stays. Nodes
/// whose flag forbids detaching are never chosen; if such a node is among
/// the primaries, it is the one that stays.
pub fn false_primaries(snap: &Snapshot, timelines: &[(usize, u32)]) -> Vec<usize> {
    let known: Vec<(&Node, u32)> = timelines
        .iter()
        .filter_map(|(id, tli)| snap.node(*id).map(|n| (n, *tli)))
        .collect();
    if known.len() < 2 {
        return Vec::new();
    }
    let keep = known
        .iter()
        .min_by(|(a, ta), (b, tb)| {
            let pinned = |n: &Node| n.flag != BackendFlag::AllowToFailover;
            pinned(b)
                .cmp(&pinned(a))
                .then(tb.cmp(ta))
                .then(a.last_status_change.cmp(&b.last_status_change))
                .then(a.id.cmp(&b.id))
        })
        .map(|(n, _)| n.id);
    known
        .iter()
        .filter(|(n, _)| Some(n.id) != keep && n.flag == BackendFlag::AllowToFailover)
        .map(|(n, _)| n.id)
        .collect()
}

/// Fences that no longer apply: detached nodes (name, the system they
/// report now) whose database system is not the one they were fenced on —
/// rebuilt from scratch, not an old primary come back.
pub fn rebuilt<'a>(
    detached: impl IntoIterator<Item = (&'a str, Option<SystemId>)>,
    fences: &BTreeMap<String, SystemId>,
) -> Vec<String> {
    detached
        .into_iter()
        .filter(|(name, now)| match (fences.get(*name), now) {
            (Some(fenced), Some(now)) => fenced.system_identifier != now.system_identifier,
            _ => false,
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn node(id: usize, role: Role, status: Status) -> Node {
        Node {
            id,
            name: format!("pg{id}"),
            host: "127.0.0.1".into(),
            port: 5432,
            weight: 1.0,
            flag: BackendFlag::AllowToFailover,
            status,
            reachable: status == Status::Up,
            role,
            last_status_change: SystemTime::UNIX_EPOCH + Duration::from_secs(id as u64),
            last_error: None,
            source: crate::cluster::Source::Config,
            held: false,
            detached: None,
        }
    }

    fn three() -> Snapshot {
        Snapshot {
            nodes: vec![
                node(0, Role::Primary, Status::Up),
                node(1, Role::Standby, Status::Up),
                node(2, Role::Standby, Status::Up),
            ],
            generation: 1,
        }
    }

    fn pos(node: usize, receive: &str, replay: &str) -> Position {
        Position {
            node,
            in_recovery: true,
            receive: receive.parse().ok(),
            replay: replay.parse().ok(),
        }
    }

    #[test]
    fn lsns_parse_compare_and_print() {
        let a: Lsn = "0/3000060".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "0/3000060");
        assert_eq!(b.0, 1 << 32);
        assert!("3000060".parse::<Lsn>().is_err());
    }

    #[test]
    fn a_failed_primary_fails_over_and_a_failed_standby_is_detached() {
        let s = three();
        assert_eq!(on_failure(&s, 0, true), OnFailure::Failover);
        assert_eq!(on_failure(&s, 0, false), OnFailure::DetachPrimary);
        assert_eq!(on_failure(&s, 1, true), OnFailure::Detach);
    }

    #[test]
    fn pinned_flags_are_never_detached() {
        let mut s = three();
        s.nodes[0].flag = BackendFlag::AlwaysPrimary;
        s.nodes[1].flag = BackendFlag::DisallowToFailover;
        assert_eq!(on_failure(&s, 0, true), OnFailure::KeepRetrying);
        assert_eq!(on_failure(&s, 1, true), OnFailure::KeepRetrying);
    }

    #[test]
    fn detached_or_never_seen_nodes_need_nothing() {
        let mut s = three();
        s.nodes[1].status = Status::Down;
        s.nodes[2] = node(2, Role::Unknown, Status::Waiting);
        assert_eq!(on_failure(&s, 1, true), OnFailure::Nothing);
        assert_eq!(on_failure(&s, 2, true), OnFailure::Nothing);
    }

    #[test]
    fn the_standby_with_the_most_wal_is_promoted() {
        let s = three();
        let c = candidates(&s, &[pos(1, "0/500", "0/400"), pos(2, "0/600", "0/300")], 0);
        assert_eq!(c, vec![2, 1]);
        // Equal reach: the one that replayed more, then the lower index.
        let c = candidates(&s, &[pos(1, "0/600", "0/500"), pos(2, "0/600", "0/600")], 0);
        assert_eq!(c, vec![2, 1]);
        let c = candidates(&s, &[pos(2, "0/600", "0/600"), pos(1, "0/600", "0/600")], 0);
        assert_eq!(c, vec![1, 2]);
    }

    #[test]
    fn unpromotable_standbys_are_skipped() {
        let mut s = three();
        s.nodes[1].flag = BackendFlag::DisallowToFailover;
        let mut p2 = pos(2, "0/100", "0/100");
        assert_eq!(candidates(&s, &[pos(1, "0/900", "0/900"), p2], 0), vec![2]);
        p2.in_recovery = false;
        assert!(candidates(&s, &[pos(1, "0/900", "0/900"), p2], 0).is_empty());
        s.nodes[2].reachable = false;
        assert!(candidates(&s, &[pos(2, "0/100", "0/100")], 0).is_empty());
    }

    #[test]
    fn the_other_standbys_follow_the_new_primary() {
        let mut s = three();
        assert_eq!(followers(&s, 1, 0), vec![2]);
        s.nodes[2].status = Status::Down;
        assert!(followers(&s, 1, 0).is_empty());
    }

    #[test]
    fn the_primary_on_an_older_timeline_is_false() {
        let mut s = three();
        s.nodes[1].role = Role::Primary;
        assert_eq!(primaries(&s), vec![0, 1]);
        assert_eq!(false_primaries(&s, &[(0, 1), (1, 2)]), vec![0]);
        assert_eq!(false_primaries(&s, &[(0, 3), (1, 2)]), vec![1]);
        // A tie keeps the older primary.
        assert_eq!(false_primaries(&s, &[(0, 2), (1, 2)]), vec![1]);
        // A pinned node is never the false one.
        s.nodes[0].flag = BackendFlag::DisallowToFailover;
        assert_eq!(false_primaries(&s, &[(0, 1), (1, 2)]), vec![1]);
        assert!(false_primaries(&s, &[(1, 2)]).is_empty());
    }

    #[test]
    fn a_fence_belongs_to_the_database_system_it_was_taken_on() {
        let system = |id, timeline| SystemId {
            system_identifier: id,
            timeline,
        };
        let fences: BTreeMap<String, SystemId> = [
            ("pg0".to_string(), system(7, 1)),
            ("pg1".to_string(), system(7, 1)),
            ("pg2".to_string(), system(7, 1)),
        ]
        .into();
        let detached = [
            // The old primary back, on its old timeline or a later one.
            ("pg0", Some(system(7, 1))),
            ("pg1", Some(system(7, 4))),
            // initdb made it again.
            ("pg2", Some(system(9, 1))),
            // Not reached since the start, or fenced before systems were
            // recorded.
            ("pg3", Some(system(9, 1))),
        ];
        assert_eq!(rebuilt(detached, &fences), ["pg2"]);
        assert!(rebuilt([("pg0", None)], &fences).is_empty());
    }
}
