//! State that must survive a restart: which nodes are detached (and why)
//! and which node tidepool made primary. Written atomically (a temporary
//! file renamed over the old one) on every change.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{DetachCause, Detached};

/// File name of the state file inside `server.state_dir`.
pub const FILE_NAME: &str = "tidepool-state.json";

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Detached nodes by name, with the reason.
    #[serde(default)]
    pub detached: BTreeMap<String, String>,
    /// Why each detached node is, by name: what may attach it again. A
    /// file written before causes were kept has none; the reason's words
    /// tell then (`legacy_cause`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub causes: BTreeMap<String, DetachCause>,
    /// The node tidepool last knew as the primary.
    #[serde(default)]
    pub primary: Option<String>,
    /// The database system each detached node belonged to when it was
    /// fenced: a node that reports another one later was rebuilt from
    /// scratch, and the fence does not apply to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub systems: BTreeMap<String, SystemId>,
}

impl State {
    /// The detached nodes, each with its cause and reason.
    pub fn detached_nodes(&self) -> impl Iterator<Item = (&str, Detached)> {
        self.detached.iter().map(|(name, reason)| {
            let cause = self
                .causes
                .get(name)
                .copied()
                .unwrap_or_else(|| legacy_cause(reason));
            (name.as_str(), Detached::new(cause, reason.clone()))
        })
    }
}

/// The cause of a detach recorded before causes were kept, from the words
/// tidepool wrote then; anything else stays fenced (only an operator
/// attaches it).
fn legacy_cause(reason: &str) -> DetachCause {
    // A mirrored detach quotes the leader's reason: look for that first.
    if reason.contains(super::consensus::BY_LEADER) {
        DetachCause::Leader
    } else if reason.starts_with(super::failover::HEALTH_CHECK_FAILED) {
        DetachCause::HealthCheck
    } else if reason == super::instances::LEFT_TOPOLOGY {
        DetachCause::LeftTopology
    } else if reason == super::operator::BY_OPERATOR {
        DetachCause::Operator
    } else {
        DetachCause::Fenced
    }
}

/// Which database system a node runs (`pg_control_system()`): every node
/// of one replicated cluster shares the identifier; `initdb` makes a new
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemId {
    pub system_identifier: u64,
    /// The timeline of the node's last checkpoint, when it was seen.
    pub timeline: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a tidepool state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the state file lives: `state_dir/tidepool-state.json`, else beside
/// the configuration file, else in the working directory.
pub fn path(state_dir: Option<&str>, config_path: Option<&Path>) -> PathBuf {
    let dir = match (state_dir, config_path) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(c)) => c
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        (None, None) => PathBuf::from("."),
    };
    dir.join(FILE_NAME)
}

/// Reads the state; a missing file is the empty state (a first start),
/// but an empty, truncated or unreadable one is an error.
pub fn load(path: &Path) -> Result<State, PersistError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PersistError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(PersistError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state atomically: a temporary file in the same directory,
/// synced, then renamed over the old one.
pub fn save(path: &Path, state: &State) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(state).expect("state serializes");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join(FILE_NAME);
        assert_eq!(load(&p).unwrap(), State::default());
        let mut s = State {
            primary: Some("pg1".into()),
            ..State::default()
        };
        s.detached.insert("pg0".into(), "failed".into());
        s.systems.insert(
            "pg0".into(),
            SystemId {
                system_identifier: u64::MAX - 1,
                timeline: 3,
            },
        );
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), s);
        // A file written before systems were recorded still reads.
        std::fs::write(&p, r#"{"detached":{"pg0":"failed"},"primary":"pg1"}"#).unwrap();
        assert!(load(&p).unwrap().systems.is_empty());
        save(&p, &s).unwrap();
        assert!(!p.with_extension("json.tmp").exists());
        std::fs::write(&p, "{").unwrap();
        assert!(matches!(load(&p), Err(PersistError::Parse { .. })));
        std::fs::write(&p, "").unwrap();
        assert!(
            matches!(load(&p), Err(PersistError::Parse { .. })),
            "an empty file is damage"
        );
    }

    #[test]
    fn a_detach_keeps_its_cause_across_a_restart_and_old_files_read_by_their_words() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        let mut s = State::default();
        s.detached
            .insert("pg0".into(), "health check failed: refused".into());
        s.causes.insert("pg0".into(), DetachCause::Operator);
        save(&p, &s).unwrap();
        let read = load(&p).unwrap();
        // The kept cause wins over what the words would say.
        assert_eq!(
            read.detached_nodes().collect::<Vec<_>>(),
            [(
                "pg0",
                Detached::new(DetachCause::Operator, "health check failed: refused")
            )]
        );
        // Written before causes were kept: the reason's words tell.
        std::fs::write(
            &p,
            r#"{"detached":{"a":"health check failed: refused","b":"detached by the operator","c":"primary failed its health checks (x); fenced by failover","d":"not in the cluster's topology","e":"health check failed (as decided by watchdog leader b)"}}"#,
        )
        .unwrap();
        let causes: Vec<_> = load(&p)
            .unwrap()
            .detached_nodes()
            .map(|(n, d)| (n.to_string(), d.cause))
            .collect();
        assert_eq!(
            causes,
            [
                ("a".to_string(), DetachCause::HealthCheck),
                ("b".to_string(), DetachCause::Operator),
                ("c".to_string(), DetachCause::Fenced),
                ("d".to_string(), DetachCause::LeftTopology),
                ("e".to_string(), DetachCause::Leader),
            ]
        );
    }

    #[test]
    fn the_default_place_is_beside_the_config_file() {
        assert_eq!(
            path(None, Some(Path::new("/etc/tidepool/tidepool.toml"))),
            PathBuf::from("/etc/tidepool/tidepool-state.json")
        );
        assert_eq!(
            path(Some("/var/lib/tidepool"), Some(Path::new("/etc/t.toml"))),
            PathBuf::from("/var/lib/tidepool/tidepool-state.json")
        );
        assert_eq!(
            path(None, Some(Path::new("t.toml"))),
            PathBuf::from("./tidepool-state.json")
        );
    }
}
